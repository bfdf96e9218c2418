#!/usr/bin/env bash
# Build the libFuzzer targets with clang (Debian's clang ships libFuzzer):
#   fuzz/build.sh OUT_DIR        -> OUT_DIR/fuzz_wal_record, OUT_DIR/fuzz_safetensors_header
# Exits 77 when clang or its libFuzzer runtime is missing.
set -euo pipefail
out=${1:?usage: fuzz/build.sh OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$here/../src
cc=${CLANG:-clang}
command -v "$cc" >/dev/null || { echo "fuzz: no $cc" >&2; exit 77; }
mkdir -p "$out"
probe=$out/probe.c
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }' > "$probe"
if ! "$cc" -fsanitize=fuzzer "$probe" -o "$out/probe" 2>/dev/null; then
    echo "fuzz: $cc has no libFuzzer runtime (-fsanitize=fuzzer)" >&2
    exit 77
fi
rm -f "$probe" "$out/probe"
flags=(-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -I"$here/../include" -I"$src" -Wall -Wextra -Werror)
common=("$src/durable/crc32c.c" "$src/alloc.c" "$src/dtype.c")
"$cc" "${flags[@]}" "$here/fuzz_wal_record.c" "$src/durable/wal_record.c" "${common[@]}" \
      $(pkg-config --libs openblas 2>/dev/null || echo -lopenblas) -o "$out/fuzz_wal_record" -lpthread -lm
"$cc" "${flags[@]}" "$here/fuzz_safetensors_header.c" "$src/durable/safetensors.c" "${common[@]}" \
      $(pkg-config --cflags --libs jansson) $(pkg-config --libs openblas 2>/dev/null || echo -lopenblas) -o "$out/fuzz_safetensors_header" -lpthread -lm
echo "fuzz: built $out/fuzz_wal_record $out/fuzz_safetensors_header"
