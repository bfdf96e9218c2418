/* process.overhead and process.signal: the process layer (theus/theus_process.h).
 *   process.overhead: one read-modify-write of a scalar per run, through theus_engine_run,
 *                     against a bare theus_tx_run of the same body with the same contract
 *                     (the baseline; target: the engine at most 1.2x it) and without one.
 *   process.signal:   wake-up across threads: a ping-pong of two processes that each commit
 *                     and signal, the other thread waiting for the signal; against the same
 *                     two commits without waiting (what the wake-ups add to) and a
 *                     ping-pong over a bare condition variable. */
#include "bench.h"
#include "theus/theus_process.h"
#include <pthread.h>
#include <string.h>

#define RUNS_PER_SAMPLE 256

static const char *const counter_io[] = {"counter"};
static const theus_contract counter_contract = {
    .name = "inc", .inputs = counter_io, .n_inputs = 1, .outputs = counter_io, .n_outputs = 1};

static int increment_tx(theus_tx *tx)
{
    int64_t v = 0;
    int rc = theus_tx_read(tx, "counter", NULL, &v, THEUS_MEM_HOST);
    if (rc)
        return rc;
    v++;
    return theus_tx_write(tx, "counter", NULL, &v, THEUS_MEM_HOST);
}

static int bare_body(theus_tx *tx, void *user)
{
    (void)user;
    return increment_tx(tx);
}

static int proc_body(theus_run *run, void *user)
{
    (void)user;
    return increment_tx(theus_run_tx(run));
}

typedef struct ov_ctx {
    theus_state *st;
    theus_engine *e;
    const theus_contract *contract;
    uint64_t runs;
} ov_ctx;

static int run_bare(void *p)
{
    ov_ctx *c = p;
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.tx.contract = c->contract;
    for (int i = 0; i < RUNS_PER_SAMPLE; i++)
        if (theus_tx_run(c->st, &ro, bare_body, NULL, NULL) != THEUS_OK)
            return -1;
    c->runs += RUNS_PER_SAMPLE;
    return 0;
}

static int run_engine(void *p)
{
    ov_ctx *c = p;
    for (int i = 0; i < RUNS_PER_SAMPLE; i++)
        if (theus_engine_run(c->e, "inc", NULL) != THEUS_OK)
            return -1;
    c->runs += RUNS_PER_SAMPLE;
    return 0;
}

static const char *schema =
    "{\"name\": \"process-bench\", \"fields\": {"
    "\"counter\": {\"dtype\": \"i64\", \"shape\": []},"
    "\"ping\":    {\"dtype\": \"i64\", \"shape\": []},"
    "\"pong\":    {\"dtype\": \"i64\", \"shape\": []}}}";

static int setup(const char *scenario, theus_state **st, theus_engine **e)
{
    int rc = theus_state_create(schema, NULL, st);
    if (rc == THEUS_OK && (rc = theus_engine_create(*st, NULL, e)) != THEUS_OK) {
        theus_state_destroy(*st);
        *st = NULL;
    }
    if (rc != THEUS_OK)
        note_error(scenario, "creating the state and engine: %s (%s)", theus_strerror(rc),
                   theus_last_error_message());
    return rc;
}

static int64_t read_i64(theus_state *st, const char *field)
{
    theus_tx *tx = NULL;
    int64_t v = -1;
    if (theus_tx_begin(st, NULL, &tx) == THEUS_OK) {
        theus_tx_read(tx, field, NULL, &v, THEUS_MEM_HOST);
        theus_tx_abort(tx);
    }
    return v;
}

static int scn_overhead(void)
{
    const char *scenario = "process.overhead";
    print_header(scenario, "cpu", "one read-modify-write per run: engine vs bare theus_tx_run");
    theus_state *st = NULL;
    theus_engine *e = NULL;
    if (setup(scenario, &st, &e) != THEUS_OK)
        return -1;
    theus_process_def d = {.name = "inc", .body = proc_body, .inputs = counter_io, .n_inputs = 1,
                           .outputs = counter_io, .n_outputs = 1};
    int rc = theus_engine_register(e, &d);
    if (rc != THEUS_OK) {
        note_error(scenario, "register: %s", theus_last_error_message());
        theus_engine_destroy(e);
        theus_state_destroy(st);
        return -1;
    }
    ov_ctx c[3] = {{st, e, &counter_contract, 0}, {st, e, NULL, 0}, {st, e, NULL, 0}};
    const bench_op ops[3] = {{.ctx = &c[0], .run = run_bare}, {.ctx = &c[1], .run = run_bare},
                             {.ctx = &c[2], .run = run_engine}};
    measurement m[3];
    int failed = measure_set(ops, 3, m) != 0;
    uint64_t total = c[0].runs + c[1].runs + c[2].runs;
    int64_t counter = read_i64(st, "counter");
    note_check(scenario, "rmw", !failed && counter == (int64_t)total,
               "counter %lld after %llu runs", (long long)counter, (unsigned long long)total);
    static const char *const methods[3] = {"baseline.tx_run_contract", "tx_run_no_contract",
                                           "theus.engine_run"};
    for (int k = 0; k < 3 && !failed; k++) {
        bench_result *r = result_add(scenario, "cpu", "rmw i64 scalar", methods[k]);
        if (!r)
            continue;
        result_set(r, &m[k], 0, RUNS_PER_SAMPLE, "run");
        result_param(r, "runs_per_sample", RUNS_PER_SAMPLE);
        result_metric(r, "ratio_vs_baseline", m[k].st.median / m[0].st.median);
        result_metric(r, "ns_per_run", 1e9 * m[k].st.median / RUNS_PER_SAMPLE);
    }
    if (!failed)
        printf("  engine run %.0f ns, bare theus_tx_run %.0f ns (no contract %.0f ns): %.2fx "
               "(target <= 1.2x)\n",
               1e9 * m[2].st.median / RUNS_PER_SAMPLE, 1e9 * m[0].st.median / RUNS_PER_SAMPLE,
               1e9 * m[1].st.median / RUNS_PER_SAMPLE, m[2].st.median / m[0].st.median);
    theus_engine_destroy(e);
    theus_state_destroy(st);
    return failed ? -1 : 0;
}

/* ---- process.signal ---------------------------------------------------------------------- */

#define PINGS_PER_SAMPLE 64

/* Add one to a field and signal: @user is {field, signal}. */
static int ping_body(theus_run *run, void *user)
{
    const char *const *fs = user;
    int64_t one = 1;
    int rc = theus_tx_add(theus_run_tx(run), fs[0], NULL, &one, THEUS_MEM_HOST);
    return rc ? rc : theus_run_signal(run, fs[1]);
}

typedef struct pp_ctx {
    theus_engine *e;
    pthread_t t;
    int stop;
    uint64_t rounds;          /* ping-pongs the partner answered */
    int failed;
    /* the condition-variable baseline */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t ping, pong;
} pp_ctx;

/* Partner of the theus ping-pong: waits for each ping, answers with a pong. */
static void *ponger(void *arg)
{
    pp_ctx *c = arg;
    uint64_t seen = 0;
    for (;;) {
        uint64_t n = 0;
        int rc = theus_engine_wait_signal(c->e, "ping", seen, UINT32_MAX, &n);
        if (rc != THEUS_OK || c->stop)
            break;
        seen = n;
        if (theus_engine_run(c->e, "pong", NULL) != THEUS_OK) {
            c->failed = 1;
            break;
        }
    }
    return NULL;
}

static int run_pingpong(void *p)
{
    pp_ctx *c = p;
    for (int i = 0; i < PINGS_PER_SAMPLE; i++) {
        uint64_t n = 0;
        if (theus_engine_run(c->e, "ping", NULL) != THEUS_OK ||
            theus_engine_wait_signal(c->e, "pong", c->rounds, 10000, &n) != THEUS_OK)
            return -1;
        c->rounds = n;
    }
    return 0;
}

static int run_commits_only(void *p)
{
    pp_ctx *c = p;
    for (int i = 0; i < PINGS_PER_SAMPLE; i++)
        if (theus_engine_run(c->e, "solo_a", NULL) != THEUS_OK ||
            theus_engine_run(c->e, "solo_b", NULL) != THEUS_OK)
            return -1;
    return 0;
}

static void *cv_ponger(void *arg)
{
    pp_ctx *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (c->ping == c->pong && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop)
            break;
        c->pong = c->ping;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static int run_cv(void *p)
{
    pp_ctx *c = p;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < PINGS_PER_SAMPLE; i++) {
        c->ping++;
        pthread_cond_broadcast(&c->cv);
        while (c->pong != c->ping)
            pthread_cond_wait(&c->cv, &c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return 0;
}

static int scn_signal(void)
{
    const char *scenario = "process.signal";
    print_header(scenario, "cpu", "signal wake-up across threads: commit+signal ping-pong");
    theus_state *st = NULL;
    theus_engine *e = NULL;
    if (setup(scenario, &st, &e) != THEUS_OK)
        return -1;
    static const char *const ping_io[] = {"ping"}, *const pong_io[] = {"pong"};
    static const char *ping_fs[2] = {"ping", "ping"}, *pong_fs[2] = {"pong", "pong"};
    static const char *solo_a[2] = {"ping", "solo"}, *solo_b[2] = {"pong", "solo"};
    theus_process_def defs[4] = {
        {.name = "ping", .body = ping_body, .user = ping_fs, .outputs = ping_io, .n_outputs = 1},
        {.name = "pong", .body = ping_body, .user = pong_fs, .outputs = pong_io, .n_outputs = 1},
        {.name = "solo_a", .body = ping_body, .user = solo_a, .outputs = ping_io, .n_outputs = 1},
        {.name = "solo_b", .body = ping_body, .user = solo_b, .outputs = pong_io, .n_outputs = 1},
    };
    for (int k = 0; k < 4; k++)
        if (theus_engine_register(e, &defs[k]) != THEUS_OK) {
            note_error(scenario, "register: %s", theus_last_error_message());
            theus_engine_destroy(e);
            theus_state_destroy(st);
            return -1;
        }
    pp_ctx c = {.e = e}, cv = {.e = e};
    pthread_mutex_init(&cv.mu, NULL);
    pthread_cond_init(&cv.cv, NULL);
    int failed = pthread_create(&c.t, NULL, ponger, &c) != 0;
    int cv_started = !failed && pthread_create(&cv.t, NULL, cv_ponger, &cv) == 0;
    failed |= !cv_started;
    measurement m[3];
    if (!failed) {
        const bench_op ops[3] = {{.ctx = &c, .run = run_pingpong},
                                 {.ctx = &c, .run = run_commits_only},
                                 {.ctx = &cv, .run = run_cv}};
        failed = measure_set(ops, 3, m) != 0;
    }
    /* Stop the partners: the theus one wakes on one more ping. */
    c.stop = 1;
    if (c.t) {
        theus_engine_run(e, "ping", NULL);
        pthread_join(c.t, NULL);
    }
    if (cv_started) {
        pthread_mutex_lock(&cv.mu);
        cv.stop = 1;
        pthread_cond_broadcast(&cv.cv);
        pthread_mutex_unlock(&cv.mu);
        pthread_join(cv.t, NULL);
    }
    uint64_t pongs = 0, solo = 0;
    theus_engine_signal_count(e, "pong", &pongs);
    theus_engine_signal_count(e, "solo", &solo);
    solo /= 2;   /* solo_a and solo_b: one of each to the pong field */
    note_check(scenario, "threads", !failed && !c.failed && pongs == c.rounds &&
                                        read_i64(st, "pong") == (int64_t)(pongs + solo),
               "%llu pongs answered, %llu seen", (unsigned long long)pongs,
               (unsigned long long)c.rounds);
    static const char *const methods[3] = {"theus.signal_pingpong", "commits_only",
                                           "baseline.condvar_pingpong"};
    for (int k = 0; k < 3 && !failed; k++) {
        bench_result *r = result_add(scenario, "cpu", "threads", methods[k]);
        if (!r)
            continue;
        result_set(r, &m[k], 0, PINGS_PER_SAMPLE, "round trip");
        result_metric(r, "us_per_round_trip", 1e6 * m[k].st.median / PINGS_PER_SAMPLE);
    }
    if (!failed) {
        double rt = 1e6 * m[0].st.median / PINGS_PER_SAMPLE;
        double commits = 1e6 * m[1].st.median / PINGS_PER_SAMPLE;
        double base = 1e6 * m[2].st.median / PINGS_PER_SAMPLE;
        printf("  round trip %.2f us (two commits alone %.2f us): wake-up ~%.2f us each; "
               "bare condition variable round trip %.2f us\n",
               rt, commits, (rt - commits) / 2, base);
    }
    pthread_cond_destroy(&cv.cv);
    pthread_mutex_destroy(&cv.mu);
    theus_engine_destroy(e);
    theus_state_destroy(st);
    return failed ? -1 : 0;
}

int scn_process(void)
{
    int rc = scn_overhead();
    return scn_signal() || rc ? -1 : 0;
}
