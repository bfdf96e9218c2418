/* The engine: registration checked against the schema, runs through the retry helper,
 * the worker pool, declared status codes, pure processes. Rows of issue #11's table:
 * four concurrent increments end at 4; an undeclared status is reported; a pure process
 * never waits for the commit lock. */
#include "durable_fixture.h"
#include "theus/theus_durable.h"
#include "theus/theus_process.h"
#include "theus/theus_shared.h"
#include "state.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *schema =
    "{\"name\": \"engine-test\", \"fields\": {"
    "\"counter\": {\"dtype\": \"i64\", \"shape\": []},"
    "\"adds\":    {\"dtype\": \"i64\", \"shape\": []},"
    "\"acc\":     {\"dtype\": \"f32\", \"shape\": [4]},"
    "\"seed\":    {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"}}}";

static theus_state *st;
static theus_engine *eng;

static void setup(void)
{
    cr_assert_eq(theus_state_create(schema, NULL, &st), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK, "%s", theus_last_error_message());
}

static void teardown(void)
{
    theus_engine_destroy(eng);
    theus_state_destroy(st);
}

static int64_t read_i64(const char *field)
{
    theus_tx *tx = NULL;
    int64_t v = -1;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, field, NULL, &v, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    return v;
}

/* Read-modify-write: conflicts between concurrent runs are real and retried. On a thread
 * started by run_thread (the four-increments test), the first attempt is held after its read
 * until all four threads have read: they all read the same value, so without a version
 * check all four would commit 1 (Theus 3.0.25's result). Retries are not held. */
static pthread_barrier_t all_read;
static _Thread_local int first_attempt;

static int increment(theus_run *run, void *user)
{
    (void)user;
    theus_tx *tx = theus_run_tx(run);
    int64_t v;
    int rc = theus_tx_read(tx, "counter", NULL, &v, THEUS_MEM_HOST);
    if (rc)
        return rc;
    if (first_attempt) {
        first_attempt = 0;
        pthread_barrier_wait(&all_read);
    }
    v++;
    return theus_tx_write(tx, "counter", NULL, &v, THEUS_MEM_HOST);
}

/* ADD only: never conflicts. */
static int add_one(theus_run *run, void *user)
{
    (void)user;
    int64_t one = 1;
    return theus_tx_add(theus_run_tx(run), "adds", NULL, &one, THEUS_MEM_HOST);
}

static const char *const counter_io[] = {"counter"};
static const char *const adds_io[] = {"adds"};

static void reg(const char *name, theus_process_fn body, const char *const *out, size_t nout,
                theus_process_kind kind)
{
    theus_process_def d = {.name = name, .body = body, .inputs = out, .n_inputs = nout,
                           .outputs = kind == THEUS_PROCESS_PURE ? NULL : out,
                           .n_outputs = kind == THEUS_PROCESS_PURE ? 0 : nout, .kind = kind};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK, "%s", theus_state_last_error(st));
}

typedef struct runner {
    const char *proc;
    int rc;
} runner;

static void *run_thread(void *arg)
{
    runner *r = arg;
    first_attempt = 1;
    r->rc = theus_engine_run(eng, r->proc, NULL);
    return NULL;
}

TestSuite(engine, .init = setup, .fini = teardown, .timeout = 60);

Test(engine, four_concurrent_increments_end_at_four)
{
    reg("increment", increment, counter_io, 1, THEUS_PROCESS_EFFECT);
    cr_assert_eq(pthread_barrier_init(&all_read, NULL, 4), 0);
    pthread_t t[4];
    runner r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (runner){.proc = "increment", .rc = -99};
        cr_assert_eq(pthread_create(&t[i], NULL, run_thread, &r[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(r[i].rc, THEUS_OK, "run %d: %s", i, theus_strerror(r[i].rc));
    }
    cr_expect_eq(read_i64("counter"), 4);
    theus_process_stats ps;
    cr_assert_eq(theus_engine_process_stats(eng, "increment", &ps), THEUS_OK);
    cr_expect_eq(ps.runs, 4);
    cr_expect_eq(ps.commits, 4);
    cr_expect_eq(ps.attempts, 4 + ps.retries);
    cr_expect_eq(ps.conflicts, ps.retries);
    cr_expect_geq(ps.conflicts, 3, "all four read 1 before any committed: three conflicted");
    cr_expect_eq(theus_state_version(st), 5);
    pthread_barrier_destroy(&all_read);
}

Test(engine, four_adds_on_the_pool_end_at_four_without_conflicts)
{
    reg("add", add_one, adds_io, 1, THEUS_PROCESS_EFFECT);
    theus_job *j[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(theus_engine_submit(eng, "add", &j[i]), THEUS_OK);
    uint64_t versions[4];
    for (int i = 0; i < 4; i++)
        cr_expect_eq(theus_job_wait(j[i], &versions[i]), THEUS_OK);
    cr_expect_eq(read_i64("adds"), 4);
    theus_process_stats ps;
    cr_assert_eq(theus_engine_process_stats(eng, "add", &ps), THEUS_OK);
    cr_expect_eq(ps.commits, 4);
    cr_expect_eq(ps.conflicts, 0, "ADD deltas never conflict");
    for (int i = 0; i < 4; i++)
        cr_expect(versions[i] >= 2 && versions[i] <= 5);
}

/* Read-modify-write of its own field, held after the read until the other body has read
 * too: both bodies are inside their transactions at once, on the pool's two workers. */
static pthread_barrier_t both_read;

static int bump_own(theus_run *run, void *user)
{
    const char *field = user;
    theus_tx *tx = theus_run_tx(run);
    int64_t v;
    int rc = theus_tx_read(tx, field, NULL, &v, THEUS_MEM_HOST);
    if (rc)
        return rc;
    pthread_barrier_wait(&both_read);
    v += 10;
    return theus_tx_write(tx, field, NULL, &v, THEUS_MEM_HOST);
}

Test(engine, independent_processes_run_at_once_on_the_pool_and_commit_without_conflicts)
{
    static const char *const c_io[] = {"counter"}, *const a_io[] = {"adds"};
    theus_process_def d = {.name = "own_counter", .body = bump_own, .inputs = c_io,
                           .n_inputs = 1, .outputs = c_io, .n_outputs = 1, .user = "counter"};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    d = (theus_process_def){.name = "own_adds", .body = bump_own, .inputs = a_io, .n_inputs = 1,
                            .outputs = a_io, .n_outputs = 1, .user = "adds"};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    cr_assert_eq(pthread_barrier_init(&both_read, NULL, 2), 0);
    /* The pool's default two workers: the second body reaches the barrier only if it runs
     * while the first waits there (one at a time, this test would not end). */
    theus_job *j[2];
    cr_assert_eq(theus_engine_submit(eng, "own_counter", &j[0]), THEUS_OK);
    cr_assert_eq(theus_engine_submit(eng, "own_adds", &j[1]), THEUS_OK);
    uint64_t v[2];
    for (int i = 0; i < 2; i++)
        cr_expect_eq(theus_job_wait(j[i], &v[i]), THEUS_OK);
    cr_expect_neq(v[0], v[1]);
    cr_expect_eq(read_i64("counter"), 10);
    cr_expect_eq(read_i64("adds"), 10);
    const char *names[] = {"own_counter", "own_adds"};
    for (int i = 0; i < 2; i++) {
        theus_process_stats ps;
        cr_assert_eq(theus_engine_process_stats(eng, names[i], &ps), THEUS_OK);
        cr_expect_eq(ps.attempts, 1, "%s: disjoint fields, no conflict, no retry", names[i]);
        cr_expect_eq(ps.conflicts, 0);
        cr_expect_eq(ps.commits, 1);
    }
    pthread_barrier_destroy(&both_read);
}

Test(engine, unknown_process_is_enoent_and_changes_nothing)
{
    cr_expect_eq(theus_engine_run(eng, "nope", NULL), THEUS_ENOENT);
    cr_expect(strstr(theus_state_last_error(st), "'nope'") != NULL);
    theus_job *j = (theus_job *)&j;
    cr_expect_eq(theus_engine_submit(eng, "nope", &j), THEUS_ENOENT);
    cr_expect_null(j);
    theus_process_stats ps;
    cr_expect_eq(theus_engine_process_stats(eng, "nope", &ps), THEUS_ENOENT);
    cr_expect_eq(theus_state_version(st), 1);
}

enum { MY_NOT_READY = 7, MY_OTHER = 8 };

static int returns_user(theus_run *run, void *user)
{
    int64_t v = 42;
    int rc = theus_tx_write(theus_run_tx(run), "counter", NULL, &v, THEUS_MEM_HOST);
    return rc ? rc : *(int *)user;
}

Test(engine, undeclared_status_is_reported_as_such)
{
    static int code;
    static const int declared[] = {MY_NOT_READY};
    theus_process_def d = {.name = "picky", .body = returns_user, .inputs = counter_io,
                           .n_inputs = 1, .outputs = counter_io, .n_outputs = 1,
                           .status_codes = declared, .n_status_codes = 1, .user = &code};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK, "%s", theus_state_last_error(st));
    code = MY_NOT_READY;
    cr_expect_eq(theus_engine_run(eng, "picky", NULL), MY_NOT_READY);
    code = MY_OTHER;
    cr_expect_eq(theus_engine_run(eng, "picky", NULL), THEUS_EUNDECLARED);
    cr_expect(strstr(theus_state_last_error(st), "status 8") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect(strstr(theus_strerror(THEUS_EUNDECLARED), "EUNDECLARED") != NULL);
    theus_process_stats ps;
    cr_assert_eq(theus_engine_process_stats(eng, "picky", &ps), THEUS_OK);
    cr_expect_eq(ps.undeclared, 1);
    cr_expect_eq(ps.failures, 2);
    cr_expect_eq(ps.commits, 0);
    cr_expect_eq(theus_state_version(st), 1, "a failed run leaves the state unchanged");
    cr_expect_eq(read_i64("counter"), 0);
    code = THEUS_OK;
    cr_expect_eq(theus_engine_run(eng, "picky", NULL), THEUS_OK);
    cr_expect_eq(read_i64("counter"), 42);
}

static int noop(theus_run *run, void *user)
{
    (void)run;
    (void)user;
    return THEUS_OK;
}

Test(engine, contracts_are_checked_at_registration)
{
    static const char *const nothing[] = {"wei*"};
    static const char *const seed[] = {"se?d"};
    static const char *const ok[] = {"a*"};
    theus_process_def d = {.name = "p", .body = noop, .inputs = nothing, .n_inputs = 1};
    cr_expect_eq(theus_engine_register(eng, &d), THEUS_EINVAL);
    cr_expect(strstr(theus_state_last_error(st), "'wei*' matches no field") != NULL, "%s",
              theus_state_last_error(st));
    d = (theus_process_def){.name = "p", .body = noop, .outputs = seed, .n_outputs = 1};
    cr_expect_eq(theus_engine_register(eng, &d), THEUS_EPERM);
    cr_expect(strstr(theus_state_last_error(st), "const") != NULL);
    d = (theus_process_def){.name = "p", .body = noop, .outputs = ok, .n_outputs = 1,
                            .kind = THEUS_PROCESS_PURE};
    cr_expect_eq(theus_engine_register(eng, &d), THEUS_EINVAL, "pure with outputs");
    d = (theus_process_def){.name = "p", .body = NULL};
    cr_expect_eq(theus_engine_register(eng, &d), THEUS_EINVAL);
    static const int zero[] = {THEUS_OK};
    d = (theus_process_def){.name = "p", .body = noop, .status_codes = zero, .n_status_codes = 1};
    cr_expect_eq(theus_engine_register(eng, &d), THEUS_EINVAL);
    char longname[THEUS_NAME_MAX + 2];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    d = (theus_process_def){.name = longname, .body = noop};
    cr_expect_eq(theus_engine_register(eng, &d), THEUS_EINVAL);
    d = (theus_process_def){.name = "p", .body = noop, .outputs = ok, .n_outputs = 1};
    cr_expect_eq(theus_engine_register(eng, &d), THEUS_OK);
    cr_expect_eq(theus_engine_register(eng, &d), THEUS_EINVAL, "duplicate name");
}

static int writes_outside(theus_run *run, void *user)
{
    (void)user;
    int64_t v = 1;
    return theus_tx_write(theus_run_tx(run), "adds", NULL, &v, THEUS_MEM_HOST);
}

Test(engine, contract_refuses_at_the_call)
{
    theus_process_def d = {.name = "sneaky", .body = writes_outside, .inputs = counter_io,
                           .n_inputs = 1, .outputs = counter_io, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    cr_expect_eq(theus_engine_run(eng, "sneaky", NULL), THEUS_EPERM);
    cr_expect_eq(theus_state_version(st), 1);
}

static int pure_read(theus_run *run, void *user)
{
    int64_t *out = user;
    int rc = theus_tx_read(theus_run_tx(run), "counter", NULL, out, THEUS_MEM_HOST);
    if (rc)
        return rc;
    int64_t v = 5;
    if (theus_tx_write(theus_run_tx(run), "counter", NULL, &v, THEUS_MEM_HOST) != THEUS_EPERM)
        return 99;
    if (theus_run_signal(run, "nope") != THEUS_EPERM)
        return 98;
    return THEUS_OK;
}

/* The commit lock is held by this very thread: a pure run that took it would deadlock
 * (and the suite's timeout would fail the test). */
Test(engine, pure_process_never_takes_the_commit_lock)
{
    static int64_t seen = -1;
    theus_process_def d = {.name = "look", .body = pure_read, .inputs = counter_io,
                           .n_inputs = 1, .kind = THEUS_PROCESS_PURE, .user = &seen};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    reg("increment", increment, counter_io, 1, THEUS_PROCESS_EFFECT);
    cr_assert_eq(theus_engine_run(eng, "increment", NULL), THEUS_OK);
    cr_assert_eq(state_commit_lock(st, 0), THEUS_OK);
    int rc = theus_engine_run(eng, "look", NULL);
    state_commit_unlock(st);
    cr_expect_eq(rc, THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(seen, 1);
    cr_expect_eq(theus_state_version(st), 2);
}

/* The first attempt commits a competing write itself: its commit conflicts, the retry
 * helper runs it again, and the engine counts that against the process. */
static int interfered(theus_run *run, void *user)
{
    int *first = user;
    theus_tx *tx = theus_run_tx(run);
    int64_t v;
    int rc = theus_tx_read(tx, "counter", NULL, &v, THEUS_MEM_HOST);
    if (rc)
        return rc;
    if (*first) {
        *first = 0;
        theus_tx *other = NULL;
        int64_t x = 100;
        cr_assert_eq(theus_tx_begin(theus_engine_state(theus_run_engine(run)), NULL, &other),
                     THEUS_OK);
        cr_assert_eq(theus_tx_write(other, "counter", NULL, &x, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_commit(other, NULL), THEUS_OK);
    }
    v++;
    return theus_tx_write(tx, "counter", NULL, &v, THEUS_MEM_HOST);
}

Test(engine, retries_and_conflicts_counted_per_process)
{
    static int first = 1;
    theus_process_def d = {.name = "contended", .body = interfered, .inputs = counter_io,
                           .n_inputs = 1, .outputs = counter_io, .n_outputs = 1, .user = &first};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    uint64_t v = 0;
    cr_expect_eq(theus_engine_run(eng, "contended", &v), THEUS_OK);
    cr_expect_eq(read_i64("counter"), 101);
    cr_expect_eq(v, 3);
    theus_process_stats ps;
    cr_assert_eq(theus_engine_process_stats(eng, "contended", &ps), THEUS_OK);
    cr_expect_eq(ps.attempts, 2);
    cr_expect_eq(ps.retries, 1);
    cr_expect_eq(ps.conflicts, 1);
    cr_expect_eq(ps.commits, 1);
}

Test(engine, one_engine_per_state)
{
    theus_engine *second = (theus_engine *)&second;
    cr_expect_eq(theus_engine_create(st, NULL, &second), THEUS_EBUSY);
    cr_expect_null(second);
    cr_expect_eq(theus_engine_create(NULL, NULL, &second), THEUS_EINVAL);
}

/* ---- the engine on a shared state and on a durable state ----------------------------------- */

enum { RUNS = 40 };

/* Register increment and add_one on @e; run RUNS increments on the calling thread while
 * RUNS adds run on the engine's pool. Returns the first failure, or THEUS_OK. Used by the parent and by a forked
 * child (which must not call Criterion's asserts), so it asserts nothing. */
static int register_and_run(theus_engine *e)
{
    theus_process_def inc = {.name = "increment", .body = increment, .inputs = counter_io,
                             .n_inputs = 1, .outputs = counter_io, .n_outputs = 1};
    theus_process_def add = {.name = "add", .body = add_one, .inputs = adds_io, .n_inputs = 1,
                             .outputs = adds_io, .n_outputs = 1};
    int rc = theus_engine_register(e, &inc);
    if (rc || (rc = theus_engine_register(e, &add)))
        return rc;
    theus_job *jobs[RUNS];
    size_t njobs = 0;
    for (; njobs < RUNS && rc == THEUS_OK; njobs++)
        rc = theus_engine_submit(e, "add", &jobs[njobs]);
    if (rc != THEUS_OK)
        njobs--;
    for (int i = 0; i < RUNS && rc == THEUS_OK; i++)
        rc = theus_engine_run(e, "increment", NULL);
    for (size_t i = 0; i < njobs; i++) {
        int jr = theus_job_wait(jobs[i], NULL);
        if (rc == THEUS_OK)
            rc = jr;
    }
    return rc;
}

static char shared_name[64];
static pid_t shared_child = -1;

static void shared_fini(void)
{
    if (shared_child > 0) {   /* a failed assert left it running */
        kill(shared_child, SIGKILL);
        waitpid(shared_child, NULL, 0);
        shared_child = -1;
    }
    theus_engine_destroy(eng);
    eng = NULL;
    theus_state_destroy(st);
    st = NULL;
    if (shared_name[0])
        theus_shared_remove(shared_name);   /* gone already when the test passed */
}

/* Two OS processes, each with its own engine on its own handle of one shared state, run
 * read-modify-write increments and ADDs at once: nothing is lost (the counter ends at the
 * sum of both), conflicts are retried, ADD-only runs never conflict. */
Test(engine_shared, two_processes_with_an_engine_each, .fini = shared_fini, .timeout = 60)
{
    snprintf(shared_name, sizeof shared_name, "test_engine-%d", (int)getpid());
    cr_assert_eq(theus_state_create_shared(shared_name, schema, NULL, NULL, &st), THEUS_OK,
                 "%s", theus_last_error_message());
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK, "%s", theus_state_last_error(st));
    int go[2];
    cr_assert_eq(pipe(go), 0);
    shared_child = fork();
    cr_assert(shared_child >= 0);
    if (shared_child == 0) {
        /* The child: its own handle and engine; starts when the parent closes the pipe. */
        close(go[1]);
        char c;
        if (read(go[0], &c, 1) != 0)
            _exit(9);
        theus_state *cst = NULL;
        theus_engine *ce = NULL;
        if (theus_state_open_shared(shared_name, schema, &cst) != THEUS_OK ||
            theus_engine_create(cst, NULL, &ce) != THEUS_OK)
            _exit(10);
        int rc = register_and_run(ce);
        theus_process_stats ps;
        if (rc == THEUS_OK && (theus_engine_process_stats(ce, "add", &ps) != THEUS_OK ||
                               ps.conflicts != 0))
            rc = 11;
        theus_engine_destroy(ce);
        theus_state_destroy(cst);
        _exit(rc == THEUS_OK ? 0 : 12);
    }
    close(go[0]);
    close(go[1]);   /* both start now */
    cr_expect_eq(register_and_run(eng), THEUS_OK, "%s", theus_state_last_error(st));
    int status = 0;
    cr_assert_eq(waitpid(shared_child, &status, 0), shared_child);
    shared_child = -1;
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    cr_expect_eq(read_i64("counter"), 2 * RUNS, "no increment lost across processes");
    cr_expect_eq(read_i64("adds"), 2 * RUNS);
    theus_process_stats ps;
    cr_assert_eq(theus_engine_process_stats(eng, "add", &ps), THEUS_OK);
    cr_expect_eq(ps.commits, RUNS);
    cr_expect_eq(ps.conflicts, 0, "ADD deltas never conflict");
    cr_assert_eq(theus_engine_process_stats(eng, "increment", &ps), THEUS_OK);
    cr_expect_eq(ps.commits, RUNS);
    cr_expect_eq(ps.attempts, RUNS + ps.retries);
    cr_expect_eq(theus_state_version(st), 1 + 4 * RUNS);
}

static void durable_fini(void)
{
    theus_engine_destroy(eng);
    eng = NULL;
    theus_state_destroy(st);
    st = NULL;
    dfx_cleanup();
}

static void open_durable(const char *dir)
{
    cr_assert_eq(theus_state_open_durable(dir, schema, NULL, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK, "%s", theus_state_last_error(st));
}

/* Runs on a durable state commit through its log: closed and recovered, the state holds
 * every committed run and none of a refused one; a new engine goes on from there. */
Test(engine_durable, runs_are_in_the_log_and_survive_reopening, .fini = durable_fini,
     .timeout = 60)
{
    cr_assert_eq(dfx_make(NULL, "engine-durable", 0), 0);
    const char *dir = dfx_dir;
    open_durable(dir);
    cr_expect_eq(register_and_run(eng), THEUS_OK, "%s", theus_state_last_error(st));
    static int code = 8;   /* undeclared: the run fails, nothing is logged */
    theus_process_def d = {.name = "picky", .body = returns_user, .inputs = counter_io,
                           .n_inputs = 1, .outputs = counter_io, .n_outputs = 1, .user = &code};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    cr_expect_eq(theus_engine_run(eng, "picky", NULL), THEUS_EUNDECLARED);
    const uint64_t v = theus_state_version(st);
    cr_expect_eq(v, 1 + 2 * RUNS);
    theus_engine_destroy(eng);
    eng = NULL;
    theus_state_destroy(st);
    st = NULL;

    open_durable(dir);
    cr_expect_eq(theus_state_version(st), v, "recovered from the log");
    cr_expect_eq(read_i64("counter"), RUNS);
    cr_expect_eq(read_i64("adds"), RUNS);
    reg("increment", increment, counter_io, 1, THEUS_PROCESS_EFFECT);
    cr_expect_eq(theus_engine_run(eng, "increment", NULL), THEUS_OK);
    cr_expect_eq(read_i64("counter"), RUNS + 1);
}

/* ---- every allocation of the process layer failing in turn ------------------------------- */

static long fail_at, calls;

static void *failing_malloc(size_t n)
{
    return ++calls == fail_at ? NULL : malloc(n);
}

static const char *const adds_only[] = {"adds"};

/* Engine, registration, workflow load and run with allocation number @n failing: each
 * step fails cleanly (ASan's leak check runs over the suite) or the whole goes through.
 * Returns 1 when nothing failed. */
static int engine_pass(long n)
{
    fail_at = 0;
    cr_assert_eq(theus_state_create(schema, NULL, &st), THEUS_OK);
    fail_at = n;
    calls = 0;
    theus_engine *e = NULL;
    theus_workflow *wf = NULL;
    int ok = 0;
    if (theus_engine_create(st, NULL, &e) != THEUS_OK)
        goto out;
    theus_process_def d = {.name = "add", .body = add_one, .inputs = adds_only, .n_inputs = 1,
                           .outputs = adds_only, .n_outputs = 1};
    if (theus_engine_register(e, &d) != THEUS_OK)
        goto out;
    if (theus_workflow_load(e, "{\"name\": \"w\", \"steps\": [{\"while\": {\"lt\": [\"adds\", "
                               "2]}, \"do\": [{\"run\": \"add\"}]}]}", &wf) != THEUS_OK)
        goto out;
    ok = theus_workflow_run(wf, NULL) == THEUS_OK;
out:
    theus_workflow_free(wf);
    theus_engine_destroy(e);
    fail_at = 0;
    /* Whatever failed, the state holds whole commits only. */
    int64_t v = read_i64("adds");
    cr_assert(v >= 0 && v <= 2, "allocation %ld: adds = %lld", n, (long long)v);
    cr_assert(!ok || v == 2, "allocation %ld: the workflow ended at adds = %lld", n, (long long)v);
    theus_state_destroy(st);
    st = NULL;
    return ok && calls < n;
}

Test(engine_alloc, every_allocation_failing_in_turn, .timeout = 120)
{
    cr_assert_eq(theus_set_alloc_funcs(failing_malloc, free), THEUS_OK);
    long n = 1;
    while (n < 10000 && !engine_pass(n))
        n++;
    theus_set_alloc_funcs(NULL, NULL);
    cr_expect(n > 10 && n < 10000, "the sequence went through once no allocation failed "
              "(after %ld)", n);
}
