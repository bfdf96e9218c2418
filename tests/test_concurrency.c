/* Concurrency: read-modify-write counters under every isolation level, commuting ADDs,
 * disjoint writers from one base, the retry helper under heavy contention (it must end,
 * and count exactly), and readers that must never see a torn commit. Threads start
 * together at a barrier; nothing sleeps, nothing is timed. Worker threads do not call
 * Criterion's asserts: they record the first failure and the test thread checks it. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <theus/theus.h>

#define NTHREADS 8

/* ---- helpers ------------------------------------------------------------------------ */

typedef struct worker {
    theus_state *st;
    pthread_barrier_t *start;
    int id;
    /* outcome */
    long ok, busy;
    char error[256]; /* first failure, "" if none */
} worker;

static void fail(worker *w, const char *fmt, ...)
{
    if (w->error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof w->error, fmt, ap);
    va_end(ap);
}

static theus_state *make_state(const char *json, const theus_state_options *o)
{
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create(json, o, &st), THEUS_OK, "%s", theus_last_error_message());
    return st;
}

/* Run @fn on NTHREADS threads sharing @st, started together at a barrier. */
static void run_workers(theus_state *st, void *(*fn)(void *), worker *w, int n)
{
    pthread_barrier_t start;
    pthread_t t[NTHREADS];
    cr_assert_leq(n, NTHREADS);
    cr_assert_eq(pthread_barrier_init(&start, NULL, (unsigned)n), 0);
    for (int i = 0; i < n; i++) {
        w[i].st = st;
        w[i].start = &start;
        w[i].id = i;
        w[i].ok = w[i].busy = 0;
        w[i].error[0] = '\0';
        cr_assert_eq(pthread_create(&t[i], NULL, fn, &w[i]), 0);
    }
    for (int i = 0; i < n; i++)
        cr_assert_eq(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < n; i++)
        cr_assert_str_eq(w[i].error, "", "thread %d: %s", i, w[i].error);
}

static int64_t read_i64(theus_state *st, const char *field)
{
    theus_tx *tx = NULL;
    int64_t v = 0;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, field, NULL, &v, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    return v;
}

static theus_stats stats_of(theus_state *st)
{
    theus_stats s;
    cr_assert_eq(theus_state_stats(st, &s), THEUS_OK);
    return s;
}

/* Every conflict of a theus_tx_run that ended in THEUS_OK was retried exactly once, and
 * each conflicting attempt was aborted. */
static void expect_conflicts_all_retried(theus_state *st)
{
    theus_stats s = stats_of(st);
    cr_assert_eq(s.retries, s.conflicts, "retries %llu, conflicts %llu",
                 (unsigned long long)s.retries, (unsigned long long)s.conflicts);
    cr_assert_eq(s.aborts, s.conflicts, "aborts %llu, conflicts %llu",
                 (unsigned long long)s.aborts, (unsigned long long)s.conflicts);
    cr_log_info("conflicts %llu, retries %llu, priority runs %llu",
                (unsigned long long)s.conflicts, (unsigned long long)s.retries,
                (unsigned long long)s.priority_runs);
}

/* ---- (a, b) read-modify-write counters --------------------------------------------- */

static const char *const COUNTER = "{\"fields\": {\"n\": {\"dtype\": \"i64\", \"shape\": []}}}";

#define RMW_ITERS 500

/* Increment n. Between the read and the write the thread gives up its CPU, so that on a
 * small machine other threads commit in between and the conflict paths run often. */
static int increment_body(theus_tx *tx, void *user)
{
    (void)user;
    int64_t n;
    int rc = theus_tx_read(tx, "n", NULL, &n, THEUS_MEM_HOST);
    if (rc != THEUS_OK)
        return rc;
    sched_yield();
    n++;
    return theus_tx_write(tx, "n", NULL, &n, THEUS_MEM_HOST);
}

static int g_isolation;

static void *rmw_worker(void *p)
{
    worker *w = p;
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.tx.isolation = g_isolation;
    ro.max_attempts = 100000; /* enough that no increment can give up */
    ro.max_time_ms = 600000;
    pthread_barrier_wait(w->start);
    for (int i = 0; i < RMW_ITERS; i++) {
        int rc = theus_tx_run(w->st, &ro, increment_body, NULL, NULL);
        if (rc != THEUS_OK) {
            fail(w, "iteration %d: %s (%s)", i, theus_strerror(rc),
                 theus_state_last_error(w->st));
            return NULL;
        }
        w->ok++;
    }
    return NULL;
}

static void rmw_counter(int isolation)
{
    theus_state *st = make_state(COUNTER, NULL);
    worker w[NTHREADS];
    g_isolation = isolation;
    run_workers(st, rmw_worker, w, NTHREADS);
    cr_assert_eq(read_i64(st, "n"), (int64_t)NTHREADS * RMW_ITERS);
    cr_assert_eq(theus_state_version(st), 1u + NTHREADS * RMW_ITERS);
    theus_stats s = stats_of(st);
    cr_assert_eq(s.commits, (uint64_t)NTHREADS * RMW_ITERS);
    cr_assert_leq(s.priority_runs, s.retries);
    expect_conflicts_all_retried(st);
    theus_state_destroy(st);
}

Test(concurrency, rmw_counter_serializable)
{
    rmw_counter(THEUS_ISOLATION_SERIALIZABLE);
}

Test(concurrency, rmw_counter_snapshot)
{
    rmw_counter(THEUS_ISOLATION_SNAPSHOT);
}

Test(concurrency, rmw_counter_strict)
{
    rmw_counter(THEUS_ISOLATION_STRICT);
}

/* ---- (c) commuting ADDs ------------------------------------------------------------ */

static const char *const ADDERS =
    "{\"fields\": {\"f\": {\"dtype\": \"f64\", \"shape\": []},"
    "              \"i\": {\"dtype\": \"i32\", \"shape\": []}}}";

#define ADD_ITERS 500

static int add_body(theus_tx *tx, void *user)
{
    const worker *w = user;
    const double df = 0.5 * (w->id + 1);
    const int32_t di = w->id + 1;
    int rc = theus_tx_add(tx, "f", NULL, &df, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = theus_tx_add(tx, "i", NULL, &di, THEUS_MEM_HOST);
    return rc;
}

static void *add_worker(void *p)
{
    worker *w = p;
    pthread_barrier_wait(w->start);
    for (int k = 0; k < ADD_ITERS; k++) {
        int rc;
        if (w->id % 2 == 0) {
            /* ADD never conflicts with ADD: one attempt must do. */
            theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
            ro.max_attempts = 1;
            rc = theus_tx_run(w->st, &ro, add_body, w, NULL);
        } else {
            theus_tx *tx = NULL;
            rc = theus_tx_begin(w->st, NULL, &tx);
            if (rc == THEUS_OK) {
                rc = add_body(tx, w);
                if (rc == THEUS_OK)
                    rc = theus_tx_commit(tx, NULL);
                else
                    theus_tx_abort(tx);
            }
        }
        if (rc != THEUS_OK) {
            fail(w, "add %d: %s (%s)", k, theus_strerror(rc), theus_state_last_error(w->st));
            return NULL;
        }
    }
    return NULL;
}

Test(concurrency, adds_never_conflict)
{
    /* The log holds every commit of the test, so no base can fall out of it. */
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    o.commit_log_capacity = 1u << 16;
    theus_state *st = make_state(ADDERS, &o);
    worker w[NTHREADS];
    run_workers(st, add_worker, w, NTHREADS);

    double want_f = 0;
    int64_t want_i = 0;
    for (int t = 0; t < NTHREADS; t++) {
        want_f += 0.5 * (t + 1) * ADD_ITERS;
        want_i += (int64_t)(t + 1) * ADD_ITERS;
    }
    theus_tx *tx = NULL;
    double f = -1;
    int32_t i = -1;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "f", NULL, &f, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "i", NULL, &i, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    cr_assert_eq(f, want_f, "f = %.17g, want %.17g", f, want_f);
    cr_assert_eq(i, (int32_t)want_i);
    theus_stats s = stats_of(st);
    cr_assert_eq(s.conflicts, 0u);
    cr_assert_eq(s.retries, 0u);
    cr_assert_eq(s.commits, (uint64_t)NTHREADS * ADD_ITERS);
    cr_assert_eq(theus_state_version(st), 1u + NTHREADS * ADD_ITERS);
    theus_state_destroy(st);
}

/* ---- (d) disjoint rows from one base ----------------------------------------------- */

#define ROWS NTHREADS
#define COLS 64
#define ROUNDS 100

static const char *const MATRIX =
    "{\"fields\": {\"m\": {\"dtype\": \"i64\", \"shape\": [8, 64]}}}";

static pthread_barrier_t g_round;

static void *row_worker(void *p)
{
    worker *w = p;
    const theus_region row = {.ndim = 2, .start = {w->id, 0}, .stop = {w->id + 1, COLS}};
    pthread_barrier_wait(w->start);
    for (int r = 0; r < ROUNDS; r++) {
        theus_tx *tx = NULL;
        int rc = theus_tx_begin(w->st, NULL, &tx);
        /* Nobody commits until every thread has begun: one base for all. */
        pthread_barrier_wait(&g_round);
        if (rc != THEUS_OK) {
            fail(w, "round %d: begin: %s", r, theus_strerror(rc));
            pthread_barrier_wait(&g_round);
            continue;
        }
        int64_t v[COLS];
        rc = theus_tx_read(tx, "m", &row, v, THEUS_MEM_HOST);
        if (rc == THEUS_OK) {
            for (int j = 0; j < COLS; j++)
                v[j] += (int64_t)(w->id + 1) * (j + 1);
            rc = theus_tx_write(tx, "m", &row, v, THEUS_MEM_HOST);
        }
        if (rc == THEUS_OK) {
            rc = theus_tx_commit(tx, NULL);
        } else {
            theus_tx_abort(tx);
        }
        if (rc != THEUS_OK)
            fail(w, "round %d: %s (%s)", r, theus_strerror(rc), theus_state_last_error(w->st));
        /* Every commit of this round is done before the next round begins. */
        pthread_barrier_wait(&g_round);
    }
    return NULL;
}

Test(concurrency, disjoint_rows_from_one_base)
{
    theus_state *st = make_state(MATRIX, NULL);
    cr_assert_eq(pthread_barrier_init(&g_round, NULL, NTHREADS), 0);
    worker w[NTHREADS];
    run_workers(st, row_worker, w, NTHREADS);
    pthread_barrier_destroy(&g_round);

    int64_t m[ROWS][COLS];
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "m", NULL, m, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    for (int i = 0; i < ROWS; i++)
        for (int j = 0; j < COLS; j++)
            cr_assert_eq(m[i][j], (int64_t)ROUNDS * (i + 1) * (j + 1), "m[%d][%d]", i, j);
    theus_stats s = stats_of(st);
    cr_assert_eq(s.conflicts, 0u);
    cr_assert_eq(s.commits, (uint64_t)NTHREADS * ROUNDS);
    cr_assert_eq(theus_state_version(st), 1u + NTHREADS * ROUNDS);
    theus_state_destroy(st);
}

/* ---- (e) the retry helper under contention ----------------------------------------- */

#define BUSY_ITERS 300

static void *budget_worker(void *p)
{
    worker *w = p;
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    switch (w->id % 4) {
    case 0: ro.max_attempts = 1; break;                       /* no retry at all */
    case 1: ro.max_attempts = 2; ro.priority_after = 1; break; /* one retry, with priority */
    case 2: ro.max_time_ms = 1; ro.priority_after = 2; break;  /* tiny time budget */
    case 3:
        ro.max_attempts = 3;
        ro.priority_after = UINT32_MAX; /* never priority */
        ro.backoff_min_us = 1;
        ro.backoff_max_us = 4;
        break;
    }
    pthread_barrier_wait(w->start);
    for (int k = 0; k < BUSY_ITERS; k++) {
        int rc = theus_tx_run(w->st, &ro, increment_body, NULL, NULL);
        if (rc == THEUS_OK) {
            w->ok++;
        } else if (rc == THEUS_EBUSY) {
            w->busy++;
            theus_conflict c;
            if (theus_last_conflict(w->st, &c) != THEUS_OK || c.kind == THEUS_CONFLICT_NONE)
                fail(w, "EBUSY without the last conflict (%s)", theus_state_last_error(w->st));
        } else {
            fail(w, "call %d: %s (%s)", k, theus_strerror(rc), theus_state_last_error(w->st));
            return NULL;
        }
    }
    return NULL;
}

Test(concurrency, retry_budgets_end_and_count_exactly)
{
    theus_state *st = make_state(COUNTER, NULL);
    worker w[NTHREADS];
    run_workers(st, budget_worker, w, NTHREADS);
    long ok = 0, busy = 0;
    for (int i = 0; i < NTHREADS; i++) {
        ok += w[i].ok;
        busy += w[i].busy;
    }
    cr_assert_eq(ok + busy, (long)NTHREADS * BUSY_ITERS);
    cr_assert_eq(read_i64(st, "n"), (int64_t)ok, "the counter equals the successful calls");
    cr_assert_eq(theus_state_version(st), 1u + (uint64_t)ok);
    theus_stats s = stats_of(st);
    cr_assert_eq(s.commits, (uint64_t)ok);
    /* A call that gave up had a conflict it did not retry. */
    cr_assert_eq(s.conflicts, s.retries + (uint64_t)busy);
    cr_log_info("ok %ld, busy %ld, conflicts %llu", ok, busy, (unsigned long long)s.conflicts);
    theus_state_destroy(st);
}

static void *priority_worker(void *p)
{
    worker *w = p;
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.priority_after = 1;    /* every retry runs under the priority lease */
    ro.max_attempts = 100000;
    ro.max_time_ms = 600000;
    pthread_barrier_wait(w->start);
    for (int k = 0; k < RMW_ITERS; k++) {
        int rc = theus_tx_run(w->st, &ro, increment_body, NULL, NULL);
        if (rc != THEUS_OK) {
            fail(w, "call %d: %s (%s)", k, theus_strerror(rc), theus_state_last_error(w->st));
            return NULL;
        }
    }
    return NULL;
}

Test(concurrency, priority_on_every_retry)
{
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    o.priority_lease_ms = 5000; /* long enough that a lease never lapses mid-run */
    theus_state *st = make_state(COUNTER, &o);
    worker w[NTHREADS];
    run_workers(st, priority_worker, w, NTHREADS);
    cr_assert_eq(read_i64(st, "n"), (int64_t)NTHREADS * RMW_ITERS);
    theus_stats s = stats_of(st);
    cr_assert_eq(s.commits, (uint64_t)NTHREADS * RMW_ITERS);
    cr_assert_eq(s.priority_runs, s.retries, "each retry is one priority run");
    expect_conflicts_all_retried(st);
    theus_state_destroy(st);
}

typedef struct failing_body {
    int calls;
    int ret;
} failing_body;

static int body_stages_then_fails(theus_tx *tx, void *user)
{
    failing_body *b = user;
    b->calls++;
    const int64_t v = 77;
    int rc = theus_tx_write(tx, "n", NULL, &v, THEUS_MEM_HOST);
    return rc != THEUS_OK ? rc : b->ret;
}

Test(concurrency, body_error_is_returned_without_commit)
{
    theus_state *st = make_state(COUNTER, NULL);
    const int rets[] = {THEUS_EINVAL, THEUS_EPERM, 7};
    for (size_t i = 0; i < sizeof rets / sizeof rets[0]; i++) {
        failing_body b = {.calls = 0, .ret = rets[i]};
        uint64_t cv = 12345;
        cr_assert_eq(theus_tx_run(st, NULL, body_stages_then_fails, &b, &cv), rets[i]);
        cr_assert_eq(b.calls, 1, "an error other than a conflict is not retried");
        cr_assert_eq(theus_state_version(st), 1u);
        cr_assert_eq(read_i64(st, "n"), 0);
    }
    theus_stats s = stats_of(st);
    cr_assert_eq(s.commits, 0u);
    cr_assert_eq(s.retries, 0u);
    cr_assert_eq(s.aborts, 3u);
    /* Misuse of the helper itself. */
    cr_assert_eq(theus_tx_run(NULL, NULL, increment_body, NULL, NULL), THEUS_EINVAL);
    cr_assert_eq(theus_tx_run(st, NULL, NULL, NULL, NULL), THEUS_EINVAL);
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.backoff_min_us = 100;
    ro.backoff_max_us = 10;
    cr_assert_eq(theus_tx_run(st, &ro, increment_body, NULL, NULL), THEUS_EINVAL);
    ro = (theus_retry_options)THEUS_RETRY_OPTIONS_INIT;
    ro.tx.isolation = 42;
    cr_assert_eq(theus_tx_run(st, &ro, increment_body, NULL, NULL), THEUS_EINVAL);
    cr_assert_eq(theus_state_version(st), 1u);
    theus_state_destroy(st);
}

/* ---- (f) readers never see a torn commit ------------------------------------------- */

#define WRITERS 2
#define READERS (NTHREADS - WRITERS)
#define WRITER_COMMITS 150
#define READER_MIN_ITERS 200
#define MDIM 64

static const char *const TORN =
    "{\"fields\": {\"pa\": {\"dtype\": \"i64\", \"shape\": []},"
    "              \"m\": {\"dtype\": \"i64\", \"shape\": [64, 64]},"
    "              \"pb\": {\"dtype\": \"i64\", \"shape\": []}}}";

static atomic_int g_writers_left;

static int64_t commit_value(int writer, int i)
{
    return (int64_t)(writer + 1) * 1000000 + i + 1;
}

static int valid_value(int64_t v)
{
    if (v == 0)
        return 1;
    int64_t wr = v / 1000000, i = v % 1000000;
    return wr >= 1 && wr <= WRITERS && i >= 1 && i <= WRITER_COMMITS;
}

static int pattern_body(theus_tx *tx, void *user)
{
    const int64_t v = *(const int64_t *)user;
    int64_t *buf = malloc(sizeof(int64_t) * MDIM * MDIM);
    if (!buf)
        return THEUS_ENOMEM;
    for (int k = 0; k < MDIM * MDIM; k++)
        buf[k] = v;
    int rc = theus_tx_write(tx, "pa", NULL, &v, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = theus_tx_write(tx, "m", NULL, buf, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = theus_tx_write(tx, "pb", NULL, &v, THEUS_MEM_HOST);
    free(buf);
    return rc;
}

static void *pattern_writer(void *p)
{
    worker *w = p;
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.max_attempts = 100000;
    ro.max_time_ms = 600000;
    pthread_barrier_wait(w->start);
    for (int i = 0; i < WRITER_COMMITS && !w->error[0]; i++) {
        int64_t v = commit_value(w->id, i);
        int rc = theus_tx_run(w->st, &ro, pattern_body, &v, NULL);
        if (rc != THEUS_OK)
            fail(w, "commit %d: %s (%s)", i, theus_strerror(rc), theus_state_last_error(w->st));
    }
    atomic_fetch_sub(&g_writers_left, 1);
    return NULL;
}

/* One reading transaction: a large region of m, then the two scalars. Every read that
 * succeeds shows the transaction's base version, so all of them show one value. */
static void read_once(worker *w, int64_t *buf)
{
    static const theus_region part = {.ndim = 2, .start = {3, 5}, .stop = {61, 50}};
    const size_t n = (size_t)(61 - 3) * (50 - 5);
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(w->st, NULL, &tx);
    if (rc != THEUS_OK) {
        fail(w, "begin: %s", theus_strerror(rc));
        return;
    }
    int have = 0;
    int64_t seen = 0;
    for (int step = 0; step < 3; step++) {
        int64_t scalar = -1;
        size_t count = 1;
        int64_t *dst = &scalar;
        const char *field = step == 1 ? "m" : step == 0 ? "pa" : "pb";
        if (step == 1) {
            dst = buf;
            count = n;
            memset(buf, 0xee, n * sizeof *buf);
        }
        rc = theus_tx_read(tx, field, step == 1 ? &part : NULL, dst, THEUS_MEM_HOST);
        if (rc == THEUS_ECONFLICT) {
            w->busy++;
            continue;
        }
        if (rc != THEUS_OK) {
            fail(w, "read %s: %s", field, theus_strerror(rc));
            break;
        }
        w->ok++;
        for (size_t k = 0; k < count; k++) {
            if (!valid_value(dst[k])) {
                fail(w, "read %s: element %zu = %lld was never written", field, k,
                     (long long)dst[k]);
                break;
            }
            if (!have) {
                have = 1;
                seen = dst[k];
            } else if (dst[k] != seen) {
                fail(w, "torn read: %s element %zu = %lld, earlier %lld", field, k,
                     (long long)dst[k], (long long)seen);
                break;
            }
        }
    }
    /* Reading only: the commit publishes nothing and always succeeds. */
    rc = theus_tx_commit(tx, NULL);
    if (rc != THEUS_OK)
        fail(w, "read-only commit: %s", theus_strerror(rc));
}

static void *pattern_reader(void *p)
{
    worker *w = p;
    int64_t *buf = malloc(sizeof(int64_t) * MDIM * MDIM);
    if (!buf) {
        fail(w, "out of memory");
        return NULL;
    }
    pthread_barrier_wait(w->start);
    for (long it = 0; (it < READER_MIN_ITERS || atomic_load(&g_writers_left) > 0) &&
                      !w->error[0];
         it++)
        read_once(w, buf);
    free(buf);
    return NULL;
}

static void *torn_worker(void *p)
{
    worker *w = p;
    if (w->id < WRITERS)
        return pattern_writer(w);
    return pattern_reader(w);
}

Test(concurrency, readers_never_see_torn_commits)
{
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    o.commit_log_capacity = 1u << 14;
    theus_state *st = make_state(TORN, &o);
    atomic_store(&g_writers_left, WRITERS);
    worker w[NTHREADS];
    run_workers(st, torn_worker, w, NTHREADS);
    long reads_ok = 0, reads_conflicted = 0;
    for (int i = WRITERS; i < NTHREADS; i++) {
        reads_ok += w[i].ok;
        reads_conflicted += w[i].busy;
    }
    cr_log_info("reads ok %ld, conflicted %ld", reads_ok, reads_conflicted);
    cr_assert_eq(theus_state_version(st), 1u + WRITERS * WRITER_COMMITS);
    /* The last commit's value is everywhere. */
    int64_t last = read_i64(st, "pa");
    cr_assert(valid_value(last) && last != 0);
    cr_assert_eq(read_i64(st, "pb"), last);
    theus_tx *tx = NULL;
    int64_t *m = malloc(sizeof(int64_t) * MDIM * MDIM);
    cr_assert_not_null(m);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "m", NULL, m, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    for (int k = 0; k < MDIM * MDIM; k++)
        cr_assert_eq(m[k], last, "m element %d", k);
    free(m);
    theus_state_destroy(st);
}
