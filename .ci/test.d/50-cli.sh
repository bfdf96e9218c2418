# Sourced by .ci/test after the install into $prefix: the INSTALLED `theus` tool and its
# man page (issue 13 item 1), and the installed theus-bench (item 2). tests/cli/cli_test.sh checks every subcommand, good and bad
# input and exit codes; its fixture comes from the release build tree.
stage "command-line tool: installed $prefix/bin/theus"
(
    set -euo pipefail
    [ -x "$prefix/bin/theus" ] || { echo "theus was not installed in $prefix/bin" >&2; exit 1; }
    man1=$(find "$prefix" -path '*/man1/theus.1' -print -quit)
    [ -n "$man1" ] || { echo "the man page theus.1 was not installed" >&2; exit 1; }
    if command -v man >/dev/null 2>&1; then
        warnings=$(MANWIDTH=100 man --warnings -l "$man1" 2>&1 >/dev/null || true)
        [ -z "$warnings" ] || { echo "theus.1: $warnings" >&2; exit 1; }
    fi
    env -u LD_LIBRARY_PATH bash tests/cli/cli_test.sh "$prefix/bin/theus" \
        build-ci/release/tests/theus_cli_fixture
    # theus-bench is installed too; --plot without gnuplot fails at once (status 2).
    "$prefix/bin/theus-bench" --help | grep -q -- '--plot DIR'
    rc=0
    PATH=/nonexistent "$prefix/bin/theus-bench" --plot "$root/build-ci/plot-check" 2>/dev/null || rc=$?
    [ "$rc" -eq 2 ] || { echo "theus-bench --plot without gnuplot: exit $rc, expected 2" >&2; exit 1; }
    echo "installed theus-bench: --help, --plot check: OK"
)
