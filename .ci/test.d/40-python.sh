# Sourced by .ci/test after the install into $prefix: the Python package (python/, import
# theusrt) installed with pip into the test venv from a copy of python/ (so that the source
# tree stays clean), and its pytest suite run against the installed package and the libtheus
# in $prefix — through THEUS_LIBRARY, then an import through LD_LIBRARY_PATH alone.
stage "python: pip install ./python (theus-runtime), pytest python/tests against $prefix"
(
    set -euo pipefail
    source .ci/venv
    theus_venv
    out=$root/build-ci/python
    rm -rf "$out"
    mkdir -p "$out"
    cp -r python "$out/src"
    "$THEUS_PY" -m pip install -q --force-reinstall --no-deps "$out/src"
    lib=$(find "$prefix" -name libtheus.so -print -quit)
    [ -n "$lib" ] || { echo "libtheus.so was not installed under $prefix" >&2; exit 1; }
    cd "$out"
    THEUS_LIBRARY=$lib "$THEUS_PY" -m pytest -q -p no:cacheprovider "$root/python/tests"
    env -u THEUS_LIBRARY LD_LIBRARY_PATH="$(dirname "$lib")" "$THEUS_PY" -c \
        'import theusrt, sys; st = theusrt.State({"fields": {"x": {"dtype": "u8", "shape": [1]}}}); st.close(); print("theusrt from", theusrt.library_path(), "at", theusrt.__file__)'
)
