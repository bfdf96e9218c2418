# Sourced by .ci/test: the libFuzzer targets of fuzz/ (log record reader, safetensors header
# reader) for THEUS_FUZZ_SECONDS each (default 60), seeded with a real log segment and
# checkpoint from st_helper. Skipped with a message when clang has no libFuzzer.
stage "durable: libFuzzer targets (fuzz/)"
fuzz_out=$root/build-ci/fuzz
if fuzz/build.sh "$fuzz_out"; then
    rm -rf "$fuzz_out/seed-dir" "$fuzz_out/corpus-wal" "$fuzz_out/corpus-st"
    mkdir -p "$fuzz_out/corpus-wal" "$fuzz_out/corpus-st"
    "$root/build-ci/release/tests/st_helper" durable "$fuzz_out/seed-dir" > /dev/null
    cp "$fuzz_out"/seed-dir/wal-*.log "$fuzz_out/corpus-wal/"
    cp "$fuzz_out"/seed-dir/ckpt-*.safetensors "$fuzz_out/corpus-st/"
    for t in wal_record:corpus-wal safetensors_header:corpus-st; do
        name=${t%%:*}
        if ! "$fuzz_out/fuzz_$name" -max_total_time="${THEUS_FUZZ_SECONDS:-60}" -print_final_stats=1 \
                "$fuzz_out/${t#*:}" > "$fuzz_out/$name.log" 2>&1; then
            tail -n 60 "$fuzz_out/$name.log"
            echo "fuzz_$name failed (crash or leak above)" >&2
            exit 1
        fi
        echo "fuzz_$name: $(grep -E '^stat::number_of_executed_units' "$fuzz_out/$name.log")"
    done
else
    rc=$?
    [ "$rc" -eq 77 ] || exit "$rc"
    echo "durable fuzz: skipped (clang with libFuzzer not available)"
fi
