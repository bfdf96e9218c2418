# Sourced by .ci/test (root, jobs, stage() set): the threaded suites under ThreadSanitizer.
# Its own build (TSan cannot be combined with ASan), without CUDA, examples or theus-bench,
# and only the suites below, run by tests/tsan/runner.c (Criterion cannot start under TSan:
# tests/tsan/criterion/criterion.h says why). The pass must be clean: any TSan report fails
# the test that produced it. tsan_reports_a_planted_race shows that TSan is really on.
#
# Races theus makes on purpose are annotated where they happen (src/tsan_annotate.h), not
# suppressed; .ci/tsan.supp holds suppressions, each with its reason (none today).
tsan_suites=(test_concurrency test_tx test_parallel_replay test_stage_arena test_zero_copy
             test_shared test_state test_engine test_signal test_signal_shared test_workflow
             test_audit test_durable_shared test_engine_misuse
             test_durable test_durable_ckpt test_durable_claims)
# Left out under TSan (they still run in the release and ASan builds), because:
# - shared/kill_storm kills worker processes every few milliseconds and asserts that enough
#   commits got through; TSan-instrumented workers take longer to start than that, and the
#   test is about crash recovery across processes, which TSan does not see (one process at
#   a time) — it has nothing to find there;
# - parallel_replay's *_every_dtype_identical_to_serial and many_seeds variants compare
#   replays of every dtype and shape with the serial result: large single-threaded-per-part
#   data work, 6 minutes under TSan on an idle 2-core machine, through the same pool hand-off
#   that concurrent_callers_share_the_pool, commits_through_the_api_identical_to_serial and
#   the fork test (which run) exercise.
tsan_skip="shared/kill_storm:parallel_replay/*_every_dtype_identical_to_serial"
tsan_skip+=":parallel_replay/many_seeds_f32_and_f16"

stage "ThreadSanitizer build of the threaded suites (-DTHEUS_SANITIZE=thread)"
cmake -S . -B build-ci/tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTHEUS_SANITIZE=thread \
      -DTHEUS_WERROR=ON -DTHEUS_CUDA=OFF -DTHEUS_BUILD_EXAMPLES=OFF -DTHEUS_BUILD_BENCH=OFF \
      "-DTHEUS_TSAN_SUITES=$(IFS=';'; echo "${tsan_suites[*]}")"
cmake --build build-ci/tsan -j"$jobs" --target "${tsan_suites[@]}" shared_worker tsan_canary
stage "ThreadSanitizer ctest"
tsan_regex="^($(IFS='|'; echo "${tsan_suites[*]}")|tsan_reports_a_planted_race)\$"
# die_after_fork=0: test_parallel_replay and test_stage_arena check that a forked child of a
# threaded process starts threads of its own (the library supports it; TSan stops such a
# child by default because it cannot vouch for locks held at the fork in general).
THEUS_TSAN_SKIP="$tsan_skip" \
TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 die_after_fork=0 suppressions=$root/.ci/tsan.supp ${TSAN_OPTIONS:-}" \
    ctest --test-dir build-ci/tsan --output-on-failure --no-tests=error -R "$tsan_regex"
