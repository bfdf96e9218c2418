/* process.overhead and process.signal: the process layer (theus/theus_process.h).
 *   process.overhead: one read-modify-write of a scalar per run, through theus_engine_run,
 *                     against a bare theus_tx_run of the same body with the same contract
 *                     (the baseline; target: the engine at most 1.2x it) and without one.
 *   process.signal:   wake-up across threads: a ping-pong of two processes that each commit
 *                     and signal, the other thread waiting for the signal; against the same
 *                     two commits without waiting (what the wake-ups add to) and a
 *                     ping-pong over a bare condition variable.
 *   process.signal_xproc: wake-up across OS processes of a shared state: process A runs a
 *                     process that adds to a field and signals, process B sleeps in
 *                     theus_engine_wait_signal; one-way latency from just before A's
 *                     theus_engine_run to B's return (CLOCK_MONOTONIC in both), p50/p99;
 *                     against a pipe (write -> read returns) and a raw futex (bump + wake
 *                     -> FUTEX_WAIT returns) between the same two processes, interleaved
 *                     in blocks in the same run. */
#include "bench.h"
#include "theus/theus_process.h"
#include "theus/theus_shared.h"
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* ---- process.signal_xproc ------------------------------------------------------------------ */

enum { XP_THEUS = 0, XP_PIPE, XP_FUTEX, XP_METHODS };
#define XP_BLOCK 50                 /* events of one method in a row */
#define XP_EVENTS 2000              /* per method (200 --quick) */
#define XP_GAP_NS 100000ull         /* between events, so that the waiter is asleep again */

/* Shared with the child (MAP_SHARED | MAP_ANONYMOUS, made before the fork). */
typedef struct xp_shm {
    _Atomic uint32_t word;          /* the raw futex baseline */
    uint64_t t1[XP_METHODS][XP_EVENTS]; /* CLOCK_MONOTONIC when the child woke */
} xp_shm;

typedef struct xp_pipes {
    int ctl[2], ack[2], p2c[2];
} xp_pipes;

static void xp_futex_wait(_Atomic uint32_t *w, uint32_t seen)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, seen, NULL, NULL, 0);
}

static void xp_futex_wake(_Atomic uint32_t *w)
{
    atomic_fetch_add(w, 1u);
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* The waiting process: per block, the method from the control pipe, then XP_BLOCK waits,
 * each acknowledged on the ack pipe. */
static int xp_child(const char *name, xp_shm *m, const xp_pipes *p)
{
    theus_state *st = NULL;
    theus_engine *e = NULL;
    if (theus_state_open_shared(name, NULL, &st) != THEUS_OK)
        return 10;
    if (theus_engine_create(st, NULL, &e) != THEUS_OK)
        return 11;
    if (write(p->ack[1], "r", 1) != 1)
        return 12;
    uint64_t seen_sig = 0;
    uint32_t seen_word = 0;
    unsigned idx[XP_METHODS] = {0};
    char method;
    int rc = 0;
    while (rc == 0 && read(p->ctl[0], &method, 1) == 1 && method != 'q') {
        int k = method - '0';
        if (k < 0 || k >= XP_METHODS) {
            rc = 13;
            break;
        }
        for (int i = 0; i < XP_BLOCK && rc == 0; i++) {
            if (k == XP_THEUS) {
                uint64_t n = 0;
                if (theus_engine_wait_signal(e, "xping", seen_sig, 10000, &n) != THEUS_OK)
                    rc = 14;
                seen_sig = n;
            } else if (k == XP_PIPE) {
                char c;
                if (read(p->p2c[0], &c, 1) != 1)
                    rc = 15;
            } else {
                while (atomic_load(&m->word) == seen_word)
                    xp_futex_wait(&m->word, seen_word);
                seen_word = atomic_load(&m->word);
            }
            if (idx[k] < XP_EVENTS)
                m->t1[k][idx[k]++] = now_ns();
            if (rc == 0 && write(p->ack[1], "a", 1) != 1)
                rc = 16;
        }
    }
    theus_engine_destroy(e);
    theus_state_destroy(st);
    return rc;
}

static int xp_recv(int fd)
{
    char c;
    ssize_t n;
    while ((n = read(fd, &c, 1)) < 0 && errno == EINTR)
        ;
    return n == 1 ? 0 : -1;
}

static double xp_t0[XP_METHODS][XP_EVENTS], xp_lat[XP_METHODS][XP_EVENTS], xp_run[XP_EVENTS];

/* The parent's side: @events per method, in blocks, the methods rotating. */
static int xp_drive(theus_engine *e, xp_shm *m, const xp_pipes *p, unsigned events)
{
    unsigned idx[XP_METHODS] = {0};
    uint64_t last = now_ns();
    for (unsigned b = 0; b < events / XP_BLOCK; b++) {
        for (int j = 0; j < XP_METHODS; j++) {
            int k = (int)((b + (unsigned)j) % XP_METHODS);
            char c = (char)('0' + k);
            if (write(p->ctl[1], &c, 1) != 1)
                return -1;
            for (int i = 0; i < XP_BLOCK; i++) {
                while (now_ns() < last + XP_GAP_NS)
                    ; /* the child is back asleep (busy: no timer slack) */
                uint64_t t0 = now_ns();
                if (k == XP_THEUS) {
                    if (theus_engine_run(e, "xping", NULL) != THEUS_OK)
                        return -1;
                    xp_run[idx[k]] = (double)(now_ns() - t0) * 1e-9;
                } else if (k == XP_PIPE) {
                    if (write(p->p2c[1], "x", 1) != 1)
                        return -1;
                } else {
                    xp_futex_wake(&m->word);
                }
                xp_t0[k][idx[k]++] = (double)t0;
                if (xp_recv(p->ack[0]) != 0)
                    return -1;
                last = now_ns();
            }
        }
    }
    return 0;
}

static int scn_signal_xproc(void)
{
    const char *scenario = "process.signal_xproc";
    print_header(scenario, "cpu", "signal wake-up across processes of a shared state: one way");
    unsigned events = bench.quick ? 200 : XP_EVENTS;
    char name[64];
    snprintf(name, sizeof name, "bench-signal-%d", (int)getpid());
    theus_state *st = NULL;
    theus_engine *e = NULL;
    int rc = theus_state_create_shared(name, schema, NULL, NULL, &st);
    if (rc == THEUS_OK && (rc = theus_engine_create(st, NULL, &e)) != THEUS_OK) {
        theus_state_destroy(st);
        st = NULL;
    }
    if (rc != THEUS_OK) {
        note_error(scenario, "creating the shared state and engine: %s (%s)", theus_strerror(rc),
                   theus_last_error_message());
        theus_shared_remove(name);
        return -1;
    }
    static const char *const ping_io[] = {"ping"};
    static const char *xping_fs[2] = {"ping", "xping"};
    theus_process_def d = {.name = "xping", .body = ping_body, .user = xping_fs,
                           .outputs = ping_io, .n_outputs = 1};
    xp_shm *m = mmap(NULL, sizeof *m, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    xp_pipes p;
    int npipes = 0;
    int failed = theus_engine_register(e, &d) != THEUS_OK || m == MAP_FAILED;
    for (; !failed && npipes < 3; npipes++)
        failed = pipe(npipes == 0 ? p.ctl : npipes == 1 ? p.ack : p.p2c) != 0;
    pid_t kid = -1;
    if (!failed) {
        fflush(NULL);
        kid = fork();
        if (kid == 0) {
            close(p.ctl[1]);
            close(p.ack[0]);
            close(p.p2c[1]);
            _exit(xp_child(name, m, &p));
        }
        failed = kid < 0;
    }
    if (!failed) {
        close(p.ctl[0]);
        close(p.ack[1]);
        close(p.p2c[0]);
        p.ctl[0] = p.ack[1] = p.p2c[0] = -1;
        failed = xp_recv(p.ack[0]) != 0 || xp_drive(e, m, &p, events) != 0;
        if (failed)
            note_error(scenario, "the ping-pong failed: %s", theus_last_error_message());
    } else {
        note_error(scenario, "setting up: %s", theus_last_error_message());
    }
    int status = 0;
    if (kid > 0) {
        if (write(p.ctl[1], "q", 1) != 1 || failed)
            kill(kid, SIGKILL);
        while (waitpid(kid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    for (int i = 0; i < npipes; i++) {
        int *fds = i == 0 ? p.ctl : i == 1 ? p.ack : p.p2c;
        for (int j = 0; j < 2; j++)
            if (fds[j] >= 0)
                close(fds[j]);
    }
    uint64_t count = 0;
    theus_engine_signal_count(e, "xping", &count);
    int child_ok = kid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    note_check(scenario, "wake-ups", !failed && child_ok && count == events &&
                                         read_i64(st, "ping") == (int64_t)events,
               "child exit %d, %llu signals for %u events", WIFEXITED(status) ?
               WEXITSTATUS(status) : -1, (unsigned long long)count, events);
    static const char *const methods[XP_METHODS] = {"theus.signal_wait", "baseline.pipe",
                                                    "baseline.futex"};
    bstats s[XP_METHODS], run;
    for (int k = 0; k < XP_METHODS && !failed && child_ok; k++) {
        for (unsigned i = 0; i < events; i++)
            xp_lat[k][i] = ((double)m->t1[k][i] - xp_t0[k][i]) * 1e-9;
        stats_compute(xp_lat[k], events, &s[k]);
        bench_result *r = result_add(scenario, "cpu", "one-way wake-up, 2 processes", methods[k]);
        if (!r)
            continue;
        measurement mm;
        memset(&mm, 0, sizeof mm);
        mm.st = s[k];
        result_set(r, &mm, 0, 1, "wake-up");
        result_param(r, "events", events);
        result_param(r, "gap_us", XP_GAP_NS / 1000.0);
        result_metric(r, "p50_us", 1e6 * s[k].median);
        result_metric(r, "p99_us", 1e6 * s[k].p99);
        if (k == XP_THEUS) {
            stats_compute(xp_run, events, &run);
            result_metric(r, "run_p50_us", 1e6 * run.median);
        }
    }
    if (!failed && child_ok)
        printf("  one-way wake-up p50/p99, us: theus signal %.1f/%.1f (its run %.1f p50), "
               "pipe %.1f/%.1f, raw futex %.1f/%.1f\n",
               1e6 * s[0].median, 1e6 * s[0].p99, 1e6 * run.median, 1e6 * s[1].median,
               1e6 * s[1].p99, 1e6 * s[2].median, 1e6 * s[2].p99);
    if (m != MAP_FAILED)
        munmap(m, sizeof *m);
    theus_engine_destroy(e);
    theus_state_destroy(st);
    theus_shared_remove(name); /* gone already unless a child outlived it */
    return failed || !child_ok ? -1 : 0;
}

int scn_process(void)
{
    int rc = scn_overhead();
    rc |= scn_signal();
    return scn_signal_xproc() || rc ? -1 : 0;
}
