# Sourced by .ci/test: theus's safetensors files against Python's reference implementation
# (numpy + safetensors from PyPI in the test venv). st_helper comes from the release build.
stage "durable: Python safetensors interop (tests/python)"
source .ci/venv
theus_venv
THEUS_ST_HELPER=$root/build-ci/release/tests/st_helper "$THEUS_PY" -m pytest -q -p no:cacheprovider "$root/tests/python"
