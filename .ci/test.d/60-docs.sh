# Sourced by .ci/test: the API reference builds from the public headers with no Doxygen
# warning (docs/Doxyfile.in sets WARN_AS_ERROR: an undocumented public function, parameter,
# return value, struct member or enum fails here). Installs doxygen when it is missing.
stage "API reference (Doxygen, warnings are errors)"
(
    set -euo pipefail
    if ! command -v doxygen >/dev/null 2>&1; then
        sudo=(); [ "$(id -u)" -ne 0 ] && sudo=(sudo)
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends doxygen >/dev/null \
          || { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
               "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                   --no-install-recommends doxygen >/dev/null; }
    fi
    cmake build-ci/release >/dev/null   # finds doxygen if it was just installed
    cmake --build build-ci/release --target docs
    [ -s build-ci/release/docs/api/html/index.html ] ||
        { echo "the API reference was not written" >&2; exit 1; }
    echo "API reference: build-ci/release/docs/api/html/index.html"
)
