# Sourced by .ci/test: no include cycle between modules of src/ (a.c and a.h are one
# module; issue 9 item 1). .ci/include_cycles.py names the circle when there is one. The
# same check is the ctest test include_cycles, so a local ctest fails on it first.
stage "include cycles between modules of src/"
python3 "$root/.ci/include_cycles.py" "$root/src"
