/* commit.contention: N threads run read-modify-write transactions (read 16 i64, add one,
 * write them back; serializable isolation) on disjoint and on overlapping regions of one
 * field, retrying on conflict. Reports commits/s, the conflict rate and the latency of a
 * committed increment (retries included), against the same threads doing the same
 * increments under one pthread mutex. Checks that no increment was lost and that disjoint
 * regions never conflict. */
#include "bench.h"
#include "theus/theus.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REGION 16          /* elements per transaction */
#define NELEMS 4096
#define MAX_THREADS 4
#define MAX_LAT (1u << 20) /* latency samples kept per thread (the most recent) */

typedef struct worker {
    int id;
    int overlap;
    int use_mutex;
    theus_state *st;
    int64_t *plain;
    pthread_mutex_t *mu;
    atomic_int *go, *stop;
    uint64_t commits, attempts, conflicts, false_conflicts, stale, errors;
    double *lat;
    size_t nlat;
    char err[160];
} worker;

static int64_t region_start(int id, int overlap)
{
    /* Disjoint: 256 elements apart (separate cache lines and log regions). Overlapping: each
     * thread's region shares half of its neighbour's. */
    return overlap ? (int64_t)id * (REGION / 2) : (int64_t)id * 256;
}

static int theus_increment(worker *w, const theus_region *r)
{
    int64_t v[REGION];
    for (;;) {
        theus_tx *tx = NULL;
        w->attempts++;
        int rc = theus_tx_begin(w->st, NULL, &tx);
        if (rc == THEUS_OK)
            rc = theus_tx_read(tx, "c", r, v, THEUS_MEM_HOST);
        if (rc == THEUS_OK) {
            for (int k = 0; k < REGION; k++)
                v[k] += 1;
            rc = theus_tx_write(tx, "c", r, v, THEUS_MEM_HOST);
        }
        if (rc == THEUS_OK) {
            rc = theus_tx_commit(tx, NULL);
        } else if (tx) {
            theus_tx_abort(tx);
        }
        if (rc == THEUS_OK)
            return 0;
        if (rc != THEUS_ECONFLICT) {
            snprintf(w->err, sizeof w->err, "%s (%s)", theus_strerror(rc),
                     theus_last_error_message());
            return -1;
        }
        w->conflicts++;
        theus_conflict c;
        if (theus_last_conflict(w->st, &c) == THEUS_OK) {
            if (c.kind == THEUS_CONFLICT_STALE_BASE)
                w->stale++;
            else if (!w->overlap)
                w->false_conflicts++;
        }
        if (atomic_load_explicit(w->stop, memory_order_relaxed))
            return 1;
    }
}

static void *worker_main(void *p)
{
    worker *w = p;
    theus_region r;
    memset(&r, 0, sizeof r);
    r.ndim = 1;
    r.start[0] = region_start(w->id, w->overlap);
    r.stop[0] = r.start[0] + REGION;
    int64_t *mine = w->plain ? w->plain + r.start[0] : NULL;
    while (!atomic_load_explicit(w->go, memory_order_acquire))
        ;
    while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
        uint64_t t0 = now_ns();
        if (w->use_mutex) {
            int64_t v[REGION];
            w->attempts++;
            pthread_mutex_lock(w->mu);
            memcpy(v, mine, sizeof v);
            for (int k = 0; k < REGION; k++)
                v[k] += 1;
            memcpy(mine, v, sizeof v);
            pthread_mutex_unlock(w->mu);
        } else {
            int rc = theus_increment(w, &r);
            if (rc < 0) {
                w->errors++;
                break;
            }
            if (rc > 0)
                break;   /* stopped while retrying: that increment never committed */
        }
        uint64_t t1 = now_ns();
        w->commits++;
        w->lat[w->nlat++ % MAX_LAT] = (double)(t1 - t0) * 1e-9;
    }
    return NULL;
}

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

typedef struct run_out {
    double secs, commits_per_s, conflict_rate;
    double fairness;   /* fewest commits of a thread / most commits of a thread */
    uint64_t commits, attempts, conflicts, false_conflicts, stale;
    bstats lat;
} run_out;

/* One configuration; returns 0, or -1 on an error (reported). */
static int run_config(int nthreads, int overlap, int use_mutex, double secs, run_out *out,
                      const char *casename)
{
    const char *scenario = "commit.contention";
    theus_state *st = NULL;
    int64_t *plain = NULL;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    worker w[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    atomic_int go = 0, stop = 0;
    int rc = -1, started = 0;
    uint64_t t0 = now_ns();
    memset(w, 0, sizeof w);
    memset(out, 0, sizeof *out);
    if (use_mutex) {
        plain = calloc(NELEMS, sizeof *plain);
        if (!plain) {
            note_error(scenario, "out of memory");
            return -1;
        }
    } else {
        char schema[256];
        snprintf(schema, sizeof schema,
                 "{\"name\": \"bench-contention\", \"fields\": {\"c\": {\"dtype\": \"i64\", "
                 "\"shape\": [%d], \"placement\": \"host\"}}}", NELEMS);
        /* A log long enough that a preempted transaction's base does not fall off it. */
        theus_state_options o = THEUS_STATE_OPTIONS_INIT;
        o.commit_log_capacity = 1u << 16;
        int trc = theus_state_create(schema, &o, &st);
        if (trc != THEUS_OK) {
            note_error(scenario, "creating the state: %s", theus_strerror(trc));
            return -1;
        }
    }
    for (int t = 0; t < nthreads; t++) {
        w[t].id = t;
        w[t].overlap = overlap;
        w[t].use_mutex = use_mutex;
        w[t].st = st;
        w[t].plain = plain;
        w[t].mu = &mu;
        w[t].go = &go;
        w[t].stop = &stop;
        w[t].lat = malloc(MAX_LAT * sizeof(double));
        if (!w[t].lat) {
            note_error(scenario, "out of memory for latency samples");
            goto out;
        }
    }
    for (int t = 0; t < nthreads; t++) {
        if (pthread_create(&th[t], NULL, worker_main, &w[t]) != 0) {
            note_error(scenario, "pthread_create failed");
            atomic_store(&stop, 1);
            atomic_store(&go, 1);
            goto join;
        }
        started++;
    }
    t0 = now_ns();
    atomic_store_explicit(&go, 1, memory_order_release);
    sleep_s(secs);
    atomic_store(&stop, 1);
join:
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    out->secs = (double)(now_ns() - t0) * 1e-9;
    if (started < nthreads)
        goto out;

    size_t nlat = 0;
    for (int t = 0; t < nthreads; t++) {
        if (w[t].errors) {
            note_error(scenario, "%s: thread %d: %s", casename, t, w[t].err);
            goto out;
        }
        out->commits += w[t].commits;
        out->attempts += w[t].attempts;
        out->conflicts += w[t].conflicts;
        out->false_conflicts += w[t].false_conflicts;
        out->stale += w[t].stale;
        if (w[t].nlat > MAX_LAT)
            w[t].nlat = MAX_LAT;
        nlat += w[t].nlat;
    }
    double *all = malloc((nlat ? nlat : 1) * sizeof *all);
    if (!all) {
        note_error(scenario, "out of memory");
        goto out;
    }
    size_t k = 0;
    for (int t = 0; t < nthreads; t++) {
        memcpy(all + k, w[t].lat, w[t].nlat * sizeof *all);
        k += w[t].nlat;
    }
    stats_compute(all, nlat, &out->lat);
    free(all);
    out->commits_per_s = (double)out->commits / out->secs;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int t = 0; t < nthreads; t++) {
        lo = w[t].commits < lo ? w[t].commits : lo;
        hi = w[t].commits > hi ? w[t].commits : hi;
    }
    out->fairness = hi ? (double)lo / (double)hi : 1.0;
    out->conflict_rate = out->attempts ? (double)out->conflicts / (double)out->attempts : 0;

    /* Check: every element holds the number of increments committed by the threads whose
     * region covers it. */
    int64_t got[NELEMS];
    if (use_mutex) {
        memcpy(got, plain, sizeof got);
    } else {
        theus_tx *tx = NULL;
        int trc = theus_tx_begin(st, NULL, &tx);
        if (trc == THEUS_OK)
            trc = theus_tx_read(tx, "c", NULL, got, THEUS_MEM_HOST);
        theus_tx_abort(tx);
        if (trc != THEUS_OK) {
            note_error(scenario, "reading the counters back: %s", theus_strerror(trc));
            goto out;
        }
    }
    size_t wrong = 0;
    for (int e = 0; e < NELEMS; e++) {
        int64_t want = 0;
        for (int t = 0; t < nthreads; t++) {
            int64_t s0 = region_start(t, overlap);
            if (e >= s0 && e < s0 + REGION)
                want += (int64_t)w[t].commits;
        }
        if (got[e] != want)
            wrong++;
    }
    note_check(scenario, casename, wrong == 0, "%s: %zu of %d counters differ from the "
               "committed increments", use_mutex ? "mutex baseline" : "theus", wrong, NELEMS);
    if (!use_mutex && !overlap)
        note_check(scenario, casename, out->false_conflicts == 0,
                   "false conflicts on disjoint regions: %llu",
                   (unsigned long long)out->false_conflicts);
    rc = 0;
out:
    for (int t = 0; t < nthreads; t++)
        free(w[t].lat);
    free(plain);
    theus_state_destroy(st);
    return rc;
}

int scn_commit_contention(void)
{
    const char *scenario = "commit.contention";
    const double secs = bench.quick ? 0.3 : 2.0;
    char what[256];
    snprintf(what, sizeof what, "threads increment %d i64 each (read, add 1, write; "
             "serializable; retry at once on conflict) for %.1f s per row; latency of a "
             "committed increment, retries included; %ld CPU cores here", REGION, secs,
             sysconf(_SC_NPROCESSORS_ONLN));
    print_header(scenario, "cpu", what);
    printf("%-7s %-11s | %-52s | %-29s | %-7s | %s\n", "threads", "regions",
           "theus", "mutex baseline", "theus/", "check");
    printf("%-7s %-11s | %10s %9s %6s %8s %8s %5s | %10s %5s %5s %5s | %7s |\n", "", "",
           "commits/s", "conflict%", "stale", "p50 us", "p99 us", "fair", "commits/s", "p50",
           "p99", "fair", "mutex");
    static const int threads[] = {1, 2, 4};
    for (int overlap = 0; overlap < 2; overlap++) {
        for (size_t ti = 0; ti < sizeof threads / sizeof threads[0]; ti++) {
            const int n = threads[ti];
            char casename[64];
            snprintf(casename, sizeof casename, "%d thread%s, %s", n, n > 1 ? "s" : "",
                     overlap ? "overlapping" : "disjoint");
            const int failures_before = bench.failures;
            run_out th, mx;
            if (run_config(n, overlap, 0, secs, &th, casename) ||
                run_config(n, overlap, 1, secs, &mx, casename))
                return -1;
            measurement m;
            memset(&m, 0, sizeof m);
            m.st = th.lat;
            bench_result *r = result_add(scenario, "cpu", casename, "theus.rmw_commit");
            result_set(r, &m, 0, 1, "commit");
            result_param(r, "threads", n);
            result_param_str(r, "regions", overlap ? "overlapping" : "disjoint");
            result_param(r, "region_elems", REGION);
            result_param(r, "seconds", th.secs);
            result_metric(r, "commits_per_s", th.commits_per_s);
            result_metric(r, "conflict_rate", th.conflict_rate);
            result_metric(r, "commits", (double)th.commits);
            result_metric(r, "conflicts", (double)th.conflicts);
            result_metric(r, "false_conflicts", (double)th.false_conflicts);
            result_metric(r, "stale_base_conflicts", (double)th.stale);
            result_metric(r, "ratio_vs_baseline", th.commits_per_s / mx.commits_per_s);
            result_metric(r, "fairness_min_over_max", th.fairness);
            m.st = mx.lat;
            r = result_add(scenario, "cpu", casename, "baseline.mutex_rmw");
            result_set(r, &m, 0, 1, "commit");
            result_param(r, "threads", n);
            result_param_str(r, "regions", overlap ? "overlapping" : "disjoint");
            result_param(r, "seconds", mx.secs);
            result_metric(r, "commits_per_s", mx.commits_per_s);
            result_metric(r, "fairness_min_over_max", mx.fairness);

            char series[64];
            snprintf(series, sizeof series, "theus, %s", overlap ? "overlapping" : "disjoint");
            plot_point(scenario, series, n, th.commits_per_s);
            snprintf(series, sizeof series, "mutex, %s", overlap ? "overlapping" : "disjoint");
            plot_point(scenario, series, n, mx.commits_per_s);
            printf("%-7d %-11s | %10.0f %8.2f%% %6llu %8.2f %8.2f %5.2f | %10.0f %5.2f %5.2f "
                   "%5.2f | %6.2fx | %s\n",
                   n, overlap ? "overlapping" : "disjoint", th.commits_per_s,
                   100 * th.conflict_rate, (unsigned long long)th.stale, th.lat.median * 1e6,
                   th.lat.p99 * 1e6, th.fairness, mx.commits_per_s, mx.lat.median * 1e6,
                   mx.lat.p99 * 1e6, mx.fairness, th.commits_per_s / mx.commits_per_s,
                   bench.failures != failures_before ? "CHECK FAILED" : "ok");
            fflush(stdout);
        }
    }
    plot_axes(scenario, "commit.contention: read-modify-write commits per second (CPU)",
              "threads", "commits/s", 0, 0);
    return 0;
}
