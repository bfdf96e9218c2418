# Sourced by .ci/test after the install into $prefix: the installed package as a user
# meets it (issue 13 item 5).
#  - theus.pc requires no other pkg-config module and adds no include directory but its own;
#  - the README's C examples, built from the install with the README's pkg-config recipe
#    (rpath included) and with find_package(theus), and run; its C++ example (theus.hpp)
#    likewise, when there is a C++ compiler;
#  - theus/dlpack.h beside Debian's libdlpack-dev <dlpack/dlpack.h>, in both include orders.
stage "packaging: theus.pc, README examples, dlpack.h coexistence"
(
    set -euo pipefail
    pc=$(find "$prefix" -name theus.pc -print -quit)
    export PKG_CONFIG_PATH="$(dirname "$pc")"
    reqs="$(pkg-config --print-requires theus) $(pkg-config --print-requires-private theus)"
    if [ -n "${reqs// /}" ]; then
        echo "theus.pc requires other modules: $reqs" >&2; exit 1
    fi
    cflags=$(pkg-config --cflags theus | xargs)
    if [ "$cflags" != "-I$(pkg-config --variable=includedir theus)" ]; then
        echo "pkg-config --cflags theus gives more than theus's include directory: $cflags" >&2
        exit 1
    fi
    pkg-config --libs theus >/dev/null

    out=$root/build-ci/readme
    rm -rf "$out"
    mkdir -p "$out"
    mapfile -t examples < <(python3 .ci/readme_examples.py README.md c "$out")
    for src in "${examples[@]}"; do
        exe=${src%.c}_pc
        # The README's recipe, word for word (plus warnings as errors).
        # shellcheck disable=SC2046
        cc -std=c11 -Wall -Wextra -Werror -pedantic "$src" $(pkg-config --cflags --libs theus) \
           -Wl,-rpath,"$(pkg-config --variable=libdir theus)" -o "$exe"
        echo "-- $(basename "$src") (pkg-config):"
        env -u LD_LIBRARY_PATH "$exe"
    done
    # The C++ example: the same recipe with the C++ compiler and -std=c++17.
    cxx_examples=()
    if command -v "${CXX:-c++}" >/dev/null; then
        mkdir -p "$out/cpp"
        mapfile -t cxx_examples < <(python3 .ci/readme_examples.py README.md cpp "$out/cpp")
        for src in "${cxx_examples[@]}"; do
            exe=${src%.cpp}_pc
            # shellcheck disable=SC2046
            "${CXX:-c++}" -std=c++17 -Wall -Wextra -Werror -pedantic "$src" \
               $(pkg-config --cflags --libs theus) \
               -Wl,-rpath,"$(pkg-config --variable=libdir theus)" -o "$exe"
            echo "-- cpp/$(basename "$src") (pkg-config):"
            env -u LD_LIBRARY_PATH "$exe"
        done
    else
        echo "-- no C++ compiler (${CXX:-c++}): the README's C++ example is not built"
    fi
    list=$(IFS=';'; echo "${examples[*]}")
    cxx_list=$(IFS=';'; echo "${cxx_examples[*]}")
    cmake -S tests/downstream -B "$out/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
          -DCMAKE_BUILD_TYPE=Release "-DTHEUS_README_EXAMPLES=$list" \
          "-DTHEUS_README_CXX_EXAMPLES=$cxx_list" >/dev/null
    cmake --build "$out/cmake" -j"$jobs" >/dev/null
    for src in "${examples[@]}"; do
        echo "-- $(basename "$src") (find_package):"
        env -u LD_LIBRARY_PATH "$out/cmake/$(basename "${src%.c}")"
    done
    for src in "${cxx_examples[@]}"; do
        echo "-- cpp/$(basename "$src") (find_package):"
        env -u LD_LIBRARY_PATH "$out/cmake/$(basename "${src%.cpp}")_cpp"
    done

    # Debian's dlpack.h is DLPack 0.6: the old ABI without DLManagedTensorVersioned.
    if [ ! -e /usr/include/dlpack/dlpack.h ]; then
        sudo=(); [ "$(id -u)" -ne 0 ] && sudo=(sudo)
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends libdlpack-dev >/dev/null \
          || { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
               "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                   --no-install-recommends libdlpack-dev >/dev/null; }
    fi
    for first in 0 1; do
        # shellcheck disable=SC2046
        cc -std=c11 -Wall -Wextra -Werror -DSYSTEM_DLPACK_FIRST=$first tests/dlpack/order.c \
           $(pkg-config --cflags --libs theus) -Wl,-rpath,"$(pkg-config --variable=libdir theus)" \
           -o "$out/dlpack_order_$first"
        "$out/dlpack_order_$first"
    done
)
