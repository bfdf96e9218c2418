#!/usr/bin/env bash
# The `theus` command-line tool, subcommand by subcommand, good and bad input, exit codes.
# usage: cli_test.sh THEUS_BINARY FIXTURE_BINARY [SCHEMA_DIR]
# ctest runs it on the build tree's binary, .ci/test.d/50-cli.sh on the installed one.
set -uo pipefail
theus=$1
fixture=$2
name="clitest-$$-$RANDOM"
tmp=$(mktemp -d)
fails=0
checks=0

cleanup() {
    if [ -n "${FIX_PID:-}" ]; then
        eval "exec ${FIX[1]}>&-" 2>/dev/null
        wait "$FIX_PID" 2>/dev/null
    fi
    "$theus" rm --force "$name" "$name-dead" >/dev/null 2>&1
    rm -f "/dev/shm/theus-$(id -u)-$name" "/dev/shm/theus-$(id -u)-$name-dead"
    rm -rf "$tmp"
}
trap cleanup EXIT

# expect CODE PATTERN -- ARGS...: run theus ARGS, check the exit status and that the
# output (stdout and stderr together) matches the extended regex PATTERN ('' for any).
expect() {
    local code=$1 pattern=$2
    shift 3
    checks=$((checks + 1))
    local out rc
    out=$("$theus" "$@" 2>&1)
    rc=$?
    if [ "$rc" -ne "$code" ]; then
        echo "FAIL: theus $*: exit $rc, expected $code"; echo "$out" | head -20
        fails=$((fails + 1))
    elif [ -n "$pattern" ] && ! grep -Eq -- "$pattern" <<<"$out"; then
        echo "FAIL: theus $*: output does not match /$pattern/"; echo "$out" | head -20
        fails=$((fails + 1))
    fi
}

# JSON output must parse (python3 is part of every Debian-ish CI image here).
expect_json() {
    checks=$((checks + 1))
    local out
    out=$("$theus" "$@" 2>/dev/null)
    if ! python3 -c 'import json,sys; json.loads(sys.stdin.read())' <<<"$out"; then
        echo "FAIL: theus $*: not valid JSON:"; echo "$out" | head -20
        fails=$((fails + 1))
    fi
}

# ---- top level ------------------------------------------------------------------------
expect 0 'commands:' -- --help
expect 0 '^theus [0-9]+\.[0-9]+\.[0-9]+' -- --version
expect 2 'usage' --
expect 2 "no command 'frobnicate'" -- frobnicate
for c in validate ls info dump diff rm cleanup log verify checkpoint; do
    expect 0 "usage: theus $c" -- "$c" --help
    expect 0 "usage: theus $c" -- help "$c"
done
expect 2 "usage: theus ls" -- ls --bogus

# ---- validate -------------------------------------------------------------------------
printf '{"name": "ok", "fields": {"w": {"dtype": "f32", "shape": [2, 3]}}}\n' > "$tmp/good.json"
printf '{"name": "bad",\n "fields": {"w": {"dtype": "f33", "shape": [2]}}}\n' > "$tmp/bad.json"
printf '{"name": "bad", "fields": {"w": {"dtype": "f32", "shape": [-1]}}}\n' > "$tmp/neg.json"
printf '{"name": "x", "fields": {' > "$tmp/trunc.json"
expect 0 "valid: schema 'ok', 1 field, 24 bytes" -- validate "$tmp/good.json"
expect 0 '^$' -- validate --quiet "$tmp/good.json"
expect 1 'bad.json:2:28: error: \$\.fields\.w\.dtype: unknown dtype' -- validate "$tmp/bad.json"
expect 1 'neg.json:1:[0-9]+: error: \$\.fields\.w\.shape' -- validate "$tmp/neg.json"
expect 1 'trunc.json:1:[0-9]+: error: \$: invalid JSON' -- validate "$tmp/trunc.json"
expect 1 'bad.json' -- validate "$tmp/good.json" "$tmp/bad.json"
expect 3 'No such file' -- validate "$tmp/missing.json"
expect 2 'usage' -- validate
expect 0 '"valid": true' -- validate --json "$tmp/good.json"
expect 1 '"line": 2, "column": 28' -- validate --json "$tmp/bad.json"
expect_json validate --json "$tmp/good.json" "$tmp/bad.json"
checks=$((checks + 1))
if ! "$theus" validate - < "$tmp/good.json" >/dev/null; then echo "FAIL: validate -"; fails=$((fails + 1)); fi

# ---- a live shared state --------------------------------------------------------------
coproc FIX { "$fixture" hold "$name"; }
FIX_PID=$FIX_PID
read -r ready <&"${FIX[0]}"
if [ "$ready" != "ready" ]; then echo "FAIL: the fixture did not start"; exit 1; fi

expect 0 "^$name +cli-fixture +2 +1/64 +5 .* live" -- ls
expect 0 "\"name\": \"$name\", \"status\": \"ok\", \"schema\": \"cli-fixture\", \"version\": 2" -- ls --json
expect_json ls --json
expect 0 "shared state '$name': schema 'cli-fixture', version 2" -- info "$name"
expect 0 'w +f32 +\[2, 3\] +24 +host +data +2' -- info "$name"
expect 0 'dev +f32 +\[1\] +4 +(pinned|host \(asked pinned\)) +data +1' -- info "$name"
expect 0 '"kind": "shared"' -- info --json "$name"
expect_json info --json "$name"
expect 3 'no such file or shared state' -- info "$name-nope"
expect 2 'usage' -- info
expect 2 'usage' -- info a b

expect 0 'step: i64 \[\]' -- dump "$name" step
expect 0 '^42$' -- dump "$name" step
expect 0 '\[\[1, 2\.5, -3\],' -- dump "$name" w
expect 0 ' \[4, 0\.1, nan\]\]' -- dump "$name" w
expect 0 '^\[\[2\.5, -3\]\]$' -- dump "$name" 'w[0,1:]'
expect 0 '^\[\[-3\],' -- dump "$name" 'w[:, -1]'
expect 0 '^\[1, inf\]$' -- dump "$name" h
expect 0 '^\[true, false\]$' -- dump "$name" flag
expect 0 '"values": \[\[1, 2\.5, -3\],' -- dump --json "$name" w
expect 0 '"NaN"' -- dump --json "$name" w
expect 0 '"values": \[1, "Infinity"\]' -- dump --json "$name" h
expect 0 '"values": 42' -- dump --json "$name" step
expect 0 '"version": 2' -- dump --json "$name"
expect_json dump --json "$name"
expect_json dump --json "$name" 'w[1]' step h
expect 3 "no field 'nope'" -- dump "$name" nope
expect 2 'out of range' -- dump "$name" 'w[2]'
expect 2 'out of range' -- dump "$name" 'w[0:4]'
expect 2 'more indices' -- dump "$name" 'w[0,0,0]'
expect 2 'expected comma-separated' -- dump "$name" 'w[x]'
expect 2 'FIELD or FIELD\[REGION\]' -- dump "$name" 'w[0'
expect 3 'no such file or shared state' -- dump "$name-nope"

expect 1 'in use by 1 process' -- rm "$name"
expect 0 "^$name " -- ls

# ---- an abandoned state: cleanup ------------------------------------------------------
# `theus cleanup` sweeps all of this user's abandoned states: hold the lock test_shared's
# sweeping tests hold (tests/test_shared.c, sweep_lock), so that neither run removes the
# other's abandoned state while it is being looked at (ctest -j, or two runs at once).
exec 9>"/tmp/theus-test_shared-$(id -u).lock"
checks=$((checks + 1))
if ! flock -w 240 9; then echo "FAIL: the sweep lock stayed taken for 240 s"; fails=$((fails + 1)); fi
checks=$((checks + 1))
if ! "$fixture" abandon "$name-dead"; then echo "FAIL: fixture abandon"; fails=$((fails + 1)); fi
expect 0 "^$name-dead .* abandoned" -- ls
expect 0 "would remove $name-dead" -- cleanup --dry-run
expect 0 "^$name-dead " -- ls
expect 0 "removing $name-dead" -- cleanup
expect 0 "^$name " -- ls
checks=$((checks + 1))
if "$theus" ls | grep -q "^$name-dead "; then echo "FAIL: cleanup left $name-dead"; fails=$((fails + 1)); fi
exec 9>&-
expect 2 'usage' -- cleanup extra

# ---- rm -------------------------------------------------------------------------------
expect 0 '' -- rm --force "$name"
expect 3 'no such shared state' -- rm "$name"
expect 2 'usage' -- rm
eval "exec ${FIX[1]}>&-"   # end of its standard input: the fixture detaches and exits
wait "$FIX_PID"
FIX_PID=

# ---- safetensors files ----------------------------------------------------------------
"$fixture" file "$tmp/t.safetensors"
expect 0 "safetensors file '.*t.safetensors': 4 tensors" -- info "$tmp/t.safetensors"
expect 0 'metadata: \{"format": ?"pt"\}' -- info "$tmp/t.safetensors"
expect 0 'b +bf16 +\[3\] +6' -- info "$tmp/t.safetensors"
expect 0 'd +F8_E4M3 +\[1\] +1' -- info "$tmp/t.safetensors"
expect_json info --json "$tmp/t.safetensors"
expect 0 '^\[\[0\.5, -1\],' -- dump "$tmp/t.safetensors" a
expect 0 '^ \[3\.25, 1e\+30\]\]$' -- dump "$tmp/t.safetensors" a
expect 0 '^\[1\.5, -inf, nan\]$' -- dump "$tmp/t.safetensors" b
expect 0 '"values": \[1\.5, "-Infinity", "NaN"\]' -- dump --json "$tmp/t.safetensors" b
expect 0 '^9223372036854775809$' -- dump "$tmp/t.safetensors" c
expect 0 '^\[\[3\.25\]\]$' -- dump "$tmp/t.safetensors" 'a[1:,0:1]'
expect 4 'F8_E4M3 has no theus equivalent' -- dump "$tmp/t.safetensors" d
expect 0 "d: dtype F8_E4M3 skipped" -- dump "$tmp/t.safetensors"
expect_json dump --json "$tmp/t.safetensors" a b c
expect 0 'would refuse it: .*F8_E4M3' -- info "$tmp/t.safetensors"
"$fixture" save "$tmp/saved.safetensors"
expect 0 'theus_state_load_safetensors accepts it' -- info "$tmp/saved.safetensors"
expect 0 "written by theus: state version 2, schema 'cli-fixture'" -- info "$tmp/saved.safetensors"
expect 0 'flag +bool +\[2\] +2 +[0-9]+ +meta +2' -- info "$tmp/saved.safetensors"
expect 0 '"version": 2' -- dump --json "$tmp/saved.safetensors" step
expect 0 'w +f32 +\[2, 3\] +24' -- info "$tmp/saved.safetensors"
expect 0 '"theus_loadable": true' -- info --json "$tmp/saved.safetensors"
expect 0 '^\[\[4, 0\.1, nan\]\]$' -- dump "$tmp/saved.safetensors" 'w[1]'
expect 0 '^42$' -- dump "$tmp/saved.safetensors" step
printf 'garbage!' > "$tmp/junk.safetensors"
expect 1 'header length' -- info "$tmp/junk.safetensors"
head -c 40 "$tmp/t.safetensors" > "$tmp/cut.safetensors"
expect 1 '' -- info "$tmp/cut.safetensors"
expect 3 'No such file' -- info "$tmp/none.safetensors"
expect 3 'not a durable state directory' -- info "$tmp"

# ---- diff between files and a live state ------------------------------------------------
expect 0 'no differences \(5 fields compared\)' -- diff "$tmp/saved.safetensors" "$tmp/saved.safetensors"
expect 1 '^a: only in A' -- diff "$tmp/t.safetensors" "$tmp/saved.safetensors"
expect 1 '^w: only in B' -- diff "$tmp/t.safetensors" "$tmp/saved.safetensors"
expect 3 "no field 'zz'" -- diff "$tmp/saved.safetensors" "$tmp/saved.safetensors" zz
expect 2 'usage' -- diff "$tmp/saved.safetensors"
expect 3 'No such file' -- diff "$tmp/saved.safetensors" "$tmp/none.safetensors"

# ---- durable state directories: info, dump, diff, log, verify, checkpoint -------------
dd="$tmp/durable"
"$fixture" durable "$dd"
expect 0 "durable state '.*durable': schema 'cli-fixture', version 4 \(the directory can rebuild versions 1 to 4\)" -- info "$dd"
expect 0 'step +i64 +\[\] +8 +host +data +4' -- info "$dd"
expect 0 '"kind": "durable"' -- info --json "$dd"
expect_json info --json "$dd"
expect 0 '^44$' -- dump "$dd" step
expect 0 '^43$' -- dump "$dd@3" step
expect 0 '^0$' -- dump "$dd@1" step
expect 3 'outside what' -- dump "$dd@9" step
expect 2 'DIR@VERSION' -- info "$dd@x"
expect 1 '^step: 1 of 1 element differ: 42 vs 44$' -- diff "$dd@2" "$dd"
expect 0 'no differences' -- diff "$dd@2" "$tmp/saved.safetensors" w h step flag
expect 1 '"field": "step", "status": "values"' -- diff --json "$dd@3" "$dd@4"
expect 0 '^version 3  commit  1 delta' -- log "$dd"
expect 0 '^    add    step \[\]  8 bytes' -- log "$dd"
expect 0 '^3 records in 2 segments, versions 2..4$' -- log "$dd"
expect 0 'version 4' -- log --from 4 "$dd"
expect_json log --json "$dd"
expect 0 '^version 4 rebuilds$' -- verify "$dd"
expect 0 "durable: ok" -- verify "$dd"
expect 0 'incremental checkpoint of version 4 written' -- checkpoint --incremental "$dd"
expect 0 'ckpt-0000000000000004.inc.safetensors \(incremental, version 4\): ok' -- verify "$dd"
expect 0 'full checkpoint of version 4 written' -- checkpoint "$dd"
expect 3 'not a durable state directory' -- log "$tmp"
expect 3 'not a durable state directory' -- verify "$tmp"
expect 3 'not a durable state directory' -- checkpoint "$tmp"
expect 3 '' -- verify "$tmp/nope"
# A torn tail: the last record cut short. Recovery drops it; verify and log say so.
"$fixture" durable "$tmp/torn"
last=$(ls "$tmp/torn"/wal-*.log | sort | tail -1)
truncate -s -5 "$last"
expect 0 'torn last record' -- log "$tmp/torn"
expect 0 'note: .*torn last record' -- verify "$tmp/torn"
# A preallocated log: zeros after the last record are its clean end; a cut record with
# zeros after it is a torn tail.
"$fixture" durable "$tmp/zeros"
last=$(ls "$tmp/zeros"/wal-*.log | sort | tail -1)
truncate -s +8192 "$last"
expect 0 '^3 records in 2 segments, versions 2..4$' -- log "$tmp/zeros"
expect 0 '^version 4 rebuilds$' -- verify "$tmp/zeros"
size=$(stat -c %s "$last")
truncate -s $((size - 8192 - 5)) "$last"
truncate -s +8192 "$last"
expect 0 'torn last record' -- log "$tmp/zeros"
expect 0 'note: .*torn last record' -- verify "$tmp/zeros"
# Corruption: a flipped byte inside a record that is not the last one.
"$fixture" durable "$tmp/bad"
seg=$(ls "$tmp/bad"/wal-*.log | sort | head -1)
printf '\xff' | dd of="$seg" bs=1 seek=40 conv=notrunc status=none
expect 1 'wal-0000000000000001.log: offset 32' -- verify "$tmp/bad"
expect 1 'offset 32' -- log "$tmp/bad"

echo "cli_test: $checks checks, $fails failed ($theus)"
[ "$fails" -eq 0 ]
