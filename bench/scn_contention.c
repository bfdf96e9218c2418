/* commit.contention: N threads run read-modify-write transactions (read 16 i64, add one,
 * write them back; serializable isolation) on disjoint and on overlapping regions of one
 * field, retrying on conflict. Reports commits/s, the conflict rate and the latency of a
 * committed increment (retries included), against the same threads doing the same
 * increments under one pthread mutex. Checks that no increment was lost and that disjoint
 * regions never conflict.
 *
 * The multi-process variant does the same with N forked processes on one shared state
 * (theus_state_create_shared by this process, theus_state_open_shared by name in each
 * child), against N processes under one process-shared mutex. The children report through
 * a MAP_SHARED mapping made before the fork (counters and latency samples) and their exit
 * status; they start together when this process closes the "go" pipe they block on, and
 * stop when this process says so (the baseline's: at a common CLOCK_MONOTONIC deadline).
 * Nothing sleeps but the stalled transaction below while it waits.
 *
 * Among theus's writers (threads or processes) a stalled transaction runs over and over
 * from the controlling thread (the parent, for processes): it begins, reads one region,
 * adds to a second and assigns a third, waits until STALL_PAST commits of the others have
 * passed — twice the default commit log of 4,096 entries, so its base has fallen off the
 * log — and commits. Its regions and, in the disjoint rows, the workers' regions each sit
 * in 4 KiB blocks of their own (the block map's granularity, src/block_map.h), so any
 * conflict reported to them is a false conflict: the check wants none. The states use the
 * default commit log. */
#include "bench.h"
#include "theus/theus.h"
#include "theus/theus_shared.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REGION 16          /* elements per transaction */
#define NELEMS 4096
#define MAX_THREADS 4
#define MAX_LAT (1u << 20) /* latency samples kept per thread (the most recent) */
#define BLOCK_ELEMS 512    /* i64 elements in 4 KiB: the block map's granularity */
/* The stalled transaction's regions (REGION elements each, in blocks no worker touches). */
#define STALL_READ (5 * BLOCK_ELEMS)
#define STALL_ADD (6 * BLOCK_ELEMS)
#define STALL_WRITE (7 * BLOCK_ELEMS)
#define STALL_PAST (2 * 4096) /* commits by the others between its begin and its commit */

typedef struct worker {
    int id;
    int overlap;
    int use_mutex;
    theus_state *st;
    int64_t *plain;
    pthread_mutex_t *mu;
    atomic_int *go, *stop;
    atomic_int *live;    /* workers still running (decremented as each one ends) */
    uint64_t deadline;   /* processes: stop at this now_ns() (0: threads, stopped by *stop) */
    uint64_t end_ns;     /* now_ns() when the worker stopped */
    uint64_t commits, attempts, conflicts, false_conflicts, errors;
    /* By kind (theus_last_conflict): what serializable increments can get. Any other kind
     * (strict, or stale base, which theus no longer reports) fails the row's check. */
    uint64_t write_write, read_write, other_kind;
    double *lat;
    size_t nlat;
    char err[160];
} worker;

static int64_t region_start(int id, int overlap)
{
    /* Disjoint: one 4 KiB block each (separate cache lines, log regions and block-map
     * blocks). Overlapping: each thread's region shares half of its neighbour's. */
    return overlap ? (int64_t)id * (REGION / 2) : (int64_t)id * BLOCK_ELEMS;
}

static int time_up(const worker *w, uint64_t now)
{
    return atomic_load_explicit(w->stop, memory_order_relaxed) ||
           (w->deadline && now >= w->deadline);
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
        /* On disjoint regions every conflict is false. */
        if (!w->overlap)
            w->false_conflicts++;
        theus_conflict c;
        if (theus_last_conflict(w->st, &c) != THEUS_OK)
            w->other_kind++;
        else if (c.kind == THEUS_CONFLICT_WRITE_WRITE)
            w->write_write++;
        else if (c.kind == THEUS_CONFLICT_READ_WRITE)
            w->read_write++;
        else
            w->other_kind++;
        if (time_up(w, w->deadline ? now_ns() : 0))
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
    uint64_t t1 = now_ns();
    while (!time_up(w, t1)) {
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
        t1 = now_ns();
        w->commits++;
        w->lat[w->nlat++ % MAX_LAT] = (double)(t1 - t0) * 1e-9;
    }
    w->end_ns = now_ns();
    if (w->live)
        atomic_fetch_sub(w->live, 1);
    return NULL;
}

/* ---- the stalled transaction ------------------------------------------------------------ */

typedef struct staller {
    theus_state *st;
    atomic_int *live;
    uint64_t commits, false_conflicts;
    uint64_t gap_min;          /* fewest commits of the others between a begin and its commit */
    int64_t last_written;      /* the value the last committed round assigned (0: none) */
    int errors;
    char err[200];
} staller;

static void pause_us(long us)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = us * 1000};
    nanosleep(&ts, NULL);
}

/* One stalled transaction. Returns 1 when it committed or conflicted, 0 when it gave up
 * waiting (the workers ended, or @give_up_ns passed), -1 on an error (in s->err). */
static int stall_round(staller *s, uint64_t give_up_ns)
{
    theus_region rr = {.ndim = 1, .start = {STALL_READ}, .stop = {STALL_READ + REGION}};
    theus_region ra = {.ndim = 1, .start = {STALL_ADD}, .stop = {STALL_ADD + REGION}};
    theus_region rw = {.ndim = 1, .start = {STALL_WRITE}, .stop = {STALL_WRITE + REGION}};
    int64_t buf[REGION], ones[REGION], val[REGION];
    const int64_t value = (int64_t)(s->commits + s->false_conflicts + 1);
    for (int k = 0; k < REGION; k++) {
        ones[k] = 1;
        val[k] = value;
    }
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(s->st, NULL, &tx);
    const uint64_t from = theus_state_version(s->st);   /* >= the base */
    if (rc == THEUS_OK)
        rc = theus_tx_read(tx, "c", &rr, buf, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = theus_tx_add(tx, "c", &ra, ones, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = theus_tx_write(tx, "c", &rw, val, THEUS_MEM_HOST);
    if (rc != THEUS_OK) {
        snprintf(s->err, sizeof s->err, "stalled transaction: %s (%s)", theus_strerror(rc),
                 theus_last_error_message());
        theus_tx_abort(tx);
        return -1;
    }
    uint64_t v;
    while ((v = theus_state_version(s->st)) < from + STALL_PAST) {
        if (atomic_load(s->live) == 0 || now_ns() >= give_up_ns) {
            theus_tx_abort(tx);
            return 0;
        }
        pause_us(20);
    }
    rc = theus_tx_commit(tx, NULL);
    if (s->gap_min == 0 || v - from < s->gap_min)
        s->gap_min = v - from;
    if (rc == THEUS_OK) {
        s->commits++;
        s->last_written = value;
        return 1;
    }
    if (rc == THEUS_ECONFLICT) {
        s->false_conflicts++;
        theus_conflict c;
        if (theus_last_conflict(s->st, &c) == THEUS_OK)
            snprintf(s->err, sizeof s->err, "kind %d on '%s' [%lld, %lld) at version %llu, base "
                     "%llu", (int)c.kind, c.field, (long long)c.region.start[0],
                     (long long)c.region.stop[0], (unsigned long long)c.version,
                     (unsigned long long)c.base);
        return 1;
    }
    snprintf(s->err, sizeof s->err, "stalled transaction's commit: %s (%s)", theus_strerror(rc),
             theus_last_error_message());
    return -1;
}

/* Run stalled transactions from @t0 for @secs, and past that until one has finished (for at
 * most 30 s more); the workers run meanwhile. Returns -1 on an error (in s->err). */
static int run_staller(staller *s, uint64_t t0, double secs)
{
    const uint64_t end = t0 + (uint64_t)(secs * 1e9);
    const uint64_t give_up = end + 30000000000ull;
    while (now_ns() < end || s->commits + s->false_conflicts == 0) {
        int r = stall_round(s, give_up);
        if (r < 0) {
            s->errors++;
            return -1;
        }
        if (r == 0)
            break;
    }
    return 0;
}

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

typedef struct run_out {
    double secs, commits_per_s, conflict_rate;
    double fairness;   /* fewest commits of a worker / most commits of a worker */
    uint64_t commits, attempts, conflicts, false_conflicts;
    uint64_t write_write, read_write, other_kind;   /* conflicts by kind */
    uint64_t stalled_commits, stalled_false, stalled_gap_min;   /* theus only */
    bstats lat;
} run_out;

static const char *const scenario = "commit.contention";

#define SCHEMA_FMT                                                                          \
    "{\"name\": \"bench-contention\", \"fields\": {\"c\": {\"dtype\": \"i64\", "            \
    "\"shape\": [%d], \"placement\": \"host\"}}}"

/* After a run of @n workers: add up their counters and latencies into @out, then check the
 * counters (theus's field read through @st, or @plain for the mutex baseline). Returns 0, or
 * -1 on an error (reported); a wrong result is a failed check, not an error. */
static int summarize(worker *w, int n, int overlap, int use_mutex, theus_state *st,
                     const int64_t *plain, const staller *sl, run_out *out,
                     const char *casename, const char *who)
{
    if (sl && sl->errors) {
        note_error(scenario, "%s: %s", casename, sl->err);
        return -1;
    }
    size_t nlat = 0;
    for (int t = 0; t < n; t++) {
        if (w[t].errors) {
            note_error(scenario, "%s: %s %d: %s", casename, who, t, w[t].err);
            return -1;
        }
        out->commits += w[t].commits;
        out->attempts += w[t].attempts;
        out->conflicts += w[t].conflicts;
        out->false_conflicts += w[t].false_conflicts;
        out->write_write += w[t].write_write;
        out->read_write += w[t].read_write;
        out->other_kind += w[t].other_kind;
        if (w[t].nlat > MAX_LAT)
            w[t].nlat = MAX_LAT;
        nlat += w[t].nlat;
    }
    double *all = calloc(nlat ? nlat : 1, sizeof *all);
    if (!all) {
        note_error(scenario, "out of memory");
        return -1;
    }
    size_t k = 0;
    for (int t = 0; t < n; t++) {
        memcpy(all + k, w[t].lat, w[t].nlat * sizeof *all);
        k += w[t].nlat;
    }
    stats_compute(all, nlat, &out->lat);
    free(all);
    out->commits_per_s = out->secs > 0 ? (double)out->commits / out->secs : 0;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int t = 0; t < n; t++) {
        lo = w[t].commits < lo ? w[t].commits : lo;
        hi = w[t].commits > hi ? w[t].commits : hi;
    }
    out->fairness = hi ? (double)lo / (double)hi : 1.0;
    out->conflict_rate = out->attempts ? (double)out->conflicts / (double)out->attempts : 0;

    /* Check: every element holds the number of increments committed by the workers whose
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
            return -1;
        }
    }
    size_t wrong = 0;
    for (int e = 0; e < NELEMS; e++) {
        int64_t want = 0;
        for (int t = 0; t < n; t++) {
            int64_t s0 = region_start(t, overlap);
            if (e >= s0 && e < s0 + REGION)
                want += (int64_t)w[t].commits;
        }
        if (sl && e >= STALL_ADD && e < STALL_ADD + REGION)
            want += (int64_t)sl->commits;
        if (sl && e >= STALL_WRITE && e < STALL_WRITE + REGION)
            want += sl->last_written;
        if (got[e] != want)
            wrong++;
    }
    note_check(scenario, casename, wrong == 0, "%s: %zu of %d counters differ from the "
               "committed increments", use_mutex ? "mutex baseline" : "theus", wrong, NELEMS);
    if (!use_mutex)
        note_check(scenario, casename, out->other_kind == 0,
                   "%llu conflicts were neither write-write nor read-write (serializable "
                   "increments get no other kind)", (unsigned long long)out->other_kind);
    if (sl) {
        out->stalled_commits = sl->commits;
        out->stalled_false = sl->false_conflicts;
        out->stalled_gap_min = sl->gap_min;
        note_check(scenario, casename, sl->commits + sl->false_conflicts > 0,
                   "the stalled transaction never saw %d commits of the others", STALL_PAST);
        note_check(scenario, casename, out->false_conflicts + sl->false_conflicts == 0,
                   "false conflicts: %llu on disjoint regions, %llu of %llu stalled transactions"
                   "%s%s", (unsigned long long)out->false_conflicts,
                   (unsigned long long)sl->false_conflicts,
                   (unsigned long long)(sl->commits + sl->false_conflicts),
                   sl->false_conflicts ? "; the last: " : "", sl->false_conflicts ? sl->err : "");
    }
    return 0;
}

/* One configuration with threads; returns 0, or -1 on an error (reported). */
static int run_threads(int nthreads, int overlap, int use_mutex, double secs, run_out *out,
                       const char *casename)
{
    theus_state *st = NULL;
    int64_t *plain = NULL;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    worker w[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    atomic_int go = 0, stop = 0, live = nthreads;
    staller sl;
    memset(&sl, 0, sizeof sl);
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
        snprintf(schema, sizeof schema, SCHEMA_FMT, NELEMS);
        int trc = theus_state_create(schema, NULL, &st);   /* the default commit log */
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
        w[t].live = &live;
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
    if (use_mutex) {
        sleep_s(secs);
    } else {
        sl.st = st;
        sl.live = &live;
        (void)run_staller(&sl, t0, secs);   /* an error is in sl, reported by summarize */
    }
    atomic_store(&stop, 1);
join:
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    out->secs = (double)(now_ns() - t0) * 1e-9;
    if (started < nthreads)
        goto out;
    rc = summarize(w, nthreads, overlap, use_mutex, st, plain, use_mutex ? NULL : &sl, out,
                   casename, "thread");
out:
    for (int t = 0; t < nthreads; t++)
        free(w[t].lat);
    free(plain);
    theus_state_destroy(st);
    return rc;
}

/* ---- processes ---------------------------------------------------------------------- */

/* What the parent and its children share: a MAP_SHARED anonymous mapping made before the
 * fork, so that every pointer into it is the same in every process. The latency samples
 * follow it, MAX_LAT per worker. */
typedef struct proc_shm {
    atomic_int go, stop, abort_run, live;
    _Atomic uint64_t deadline;
    pthread_mutex_t mu;              /* process-shared: the baseline's lock */
    int64_t plain[NELEMS];           /* the baseline's counters */
    worker w[MAX_THREADS];
} proc_shm;

static void write_byte(int fd, char c)
{
    ssize_t k;
    do
        k = write(fd, &c, 1);
    while (k < 0 && errno == EINTR);
}

/* A child: open the state by name, say ready (or failed), block until the parent closes
 * the go pipe, run to the deadline, leave the counters in the mapping. Never returns. */
static void proc_child(proc_shm *sh, int t, const char *name, int ready_fd, int go_fd)
{
    worker *w = &sh->w[t];
    theus_state *st = NULL;
    char c = 'R';
    if (!w->use_mutex) {
        int rc = theus_state_open_shared(name, NULL, &st);
        if (rc != THEUS_OK) {
            snprintf(w->err, sizeof w->err, "opening shared state '%s': %s (%s)", name,
                     theus_strerror(rc), theus_last_error_message());
            w->errors++;
            c = 'E';
        }
    }
    w->st = st;
    write_byte(ready_fd, c);
    close(ready_fd);
    if (c == 'R') {
        char b;
        ssize_t k;
        do
            k = read(go_fd, &b, 1);   /* 0 (end of file) when the parent closes its end */
        while (k < 0 && errno == EINTR);
        if (!atomic_load(&sh->abort_run)) {
            w->deadline = atomic_load(&sh->deadline);
            worker_main(w);
        }
    }
    close(go_fd);
    theus_state_destroy(st);
    _exit(w->errors ? 1 : 0);
}

/* One configuration with @nprocs forked processes on one shared state (or, @use_mutex, on
 * counters in shared memory under a process-shared mutex). Returns 0, or -1 on an error
 * (reported). The shared state is removed on every path. */
static int run_procs(int nprocs, int overlap, int use_mutex, double secs, run_out *out,
                     const char *casename)
{
    static unsigned seq;
    char name[THEUS_SHARED_NAME_MAX + 1];
    snprintf(name, sizeof name, "bench-contention-%d-%u", (int)getpid(), seq++);
    memset(out, 0, sizeof *out);
    const size_t hdr = (sizeof(proc_shm) + 4095) & ~(size_t)4095;
    const size_t bytes = hdr + (size_t)nprocs * MAX_LAT * sizeof(double);
    proc_shm *sh = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (sh == MAP_FAILED) {
        note_error(scenario, "mmap of %zu shared bytes: %s", bytes, strerror(errno));
        return -1;
    }
    theus_state *st = NULL;
    int rc = -1, mu_inited = 0, started = 0;
    int ready[2] = {-1, -1}, go[2] = {-1, -1};
    pid_t pids[MAX_THREADS];
    if (use_mutex) {
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        int e = pthread_mutex_init(&sh->mu, &a);
        pthread_mutexattr_destroy(&a);
        if (e != 0) {
            note_error(scenario, "process-shared mutex: %s", strerror(e));
            goto out;
        }
        mu_inited = 1;
    } else {
        char schema[256];
        snprintf(schema, sizeof schema, SCHEMA_FMT, NELEMS);
        int trc = theus_state_create_shared(name, schema, NULL, NULL, &st);
        if (trc != THEUS_OK) {
            note_error(scenario, "creating shared state '%s': %s (%s)", name,
                       theus_strerror(trc), theus_last_error_message());
            goto out;
        }
    }
    for (int t = 0; t < nprocs; t++) {
        worker *w = &sh->w[t];
        w->id = t;
        w->overlap = overlap;
        w->use_mutex = use_mutex;
        w->plain = sh->plain;
        w->mu = &sh->mu;
        w->go = &sh->go;
        w->stop = &sh->stop;
        w->live = &sh->live;
        w->lat = (double *)((char *)sh + hdr) + (size_t)t * MAX_LAT;
    }
    atomic_store(&sh->live, nprocs);
    staller sl;
    memset(&sl, 0, sizeof sl);
    sl.st = st;
    sl.live = &sh->live;
    if (pipe(ready) != 0 || pipe(go) != 0) {
        note_error(scenario, "pipe: %s", strerror(errno));
        goto out;
    }
    fflush(NULL);   /* nothing buffered is written twice by a child */
    for (int t = 0; t < nprocs; t++) {
        pid_t p = fork();
        if (p < 0) {
            note_error(scenario, "fork: %s", strerror(errno));
            break;
        }
        if (p == 0) {
            close(ready[0]);
            close(go[1]);   /* else the go pipe would never reach end of file */
            proc_child(sh, t, name, ready[1], go[0]);
        }
        pids[started++] = p;
    }
    close(ready[1]);
    ready[1] = -1;
    close(go[0]);
    go[0] = -1;
    /* Every child says 'R' (ready) or 'E'; one that died first closes its end unsaid. */
    int nready = 0, bad = started < nprocs, told = 0;
    while (!bad && nready < nprocs) {
        char c;
        ssize_t k = read(ready[0], &c, 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0 || c != 'R')
            bad = 1;
        else
            nready++;
    }
    uint64_t t0 = now_ns();
    if (bad) {
        atomic_store(&sh->abort_run, 1);
    } else {
        /* theus's workers stop when the stalled transactions here are done (*stop). */
        atomic_store(&sh->deadline, use_mutex ? t0 + (uint64_t)(secs * 1e9) : 0);
        atomic_store_explicit(&sh->go, 1, memory_order_release);
    }
    close(go[1]);   /* the start: every child's read returns at once */
    go[1] = -1;
    if (!bad && !use_mutex) {
        (void)run_staller(&sl, t0, secs);   /* an error is in sl, reported by summarize */
        atomic_store(&sh->stop, 1);
    }
    for (int t = 0; t < started; t++) {
        int status = 0;
        while (waitpid(pids[t], &status, 0) < 0 && errno == EINTR)
            ;
        if (WIFSIGNALED(status)) {
            note_error(scenario, "%s: process %d died of signal %d (%s)", casename, t,
                       WTERMSIG(status), strsignal(WTERMSIG(status)));
            bad = told = 1;
        } else if (WEXITSTATUS(status) != 0 && !sh->w[t].errors) {
            note_error(scenario, "%s: process %d exited with status %d", casename, t,
                       WEXITSTATUS(status));
            bad = told = 1;
        }
    }
    uint64_t t_end = t0;
    for (int t = 0; t < started; t++)
        t_end = sh->w[t].end_ns > t_end ? sh->w[t].end_ns : t_end;
    out->secs = (double)(t_end - t0) * 1e-9;
    if (started < nprocs)
        goto out;
    if (bad) {
        /* A child's own error (it could not open the state, say) is in its slot. */
        for (int t = 0; t < nprocs; t++)
            if (sh->w[t].errors) {
                note_error(scenario, "%s: process %d: %s", casename, t, sh->w[t].err);
                told = 1;
            }
        if (!told)
            note_error(scenario, "%s: a process failed before the start", casename);
        goto out;
    }
    /* summarize reports a commit that failed in a child (its slot holds the message). */
    if (summarize(sh->w, nprocs, overlap, use_mutex, st, sh->plain, use_mutex ? NULL : &sl,
                  out, casename, "process"))
        goto out;
    rc = 0;
out:
    for (int i = 0; i < 2; i++) {
        if (ready[i] >= 0)
            close(ready[i]);
        if (go[i] >= 0)
            close(go[i]);
    }
    if (st) {
        theus_shared_remove(name);   /* on every path; ENOENT when already gone */
        theus_state_destroy(st);
        theus_shared_summary info;
        note_check(scenario, casename, theus_shared_info(name, &info) == THEUS_ENOENT,
                   "shared state '%s' still exists after the run", name);
    }
    if (mu_inited)
        pthread_mutex_destroy(&sh->mu);
    munmap(sh, bytes);
    return rc;
}

/* ---- the scenario ----------------------------------------------------------------------- */

/* 120 columns. "false": false conflicts (workers on disjoint regions + stalled
 * transactions); "stall": stalled transactions committed. */
static void print_table_header(const char *workers)
{
    printf("%-7s %-8s | %-50s | %-27s | %-6s | %s\n", workers, "regions", "theus",
           "mutex baseline", "theus/", "check");
    printf("%-7s %-8s | %10s %6s %5s %5s %7s %7s %4s | %10s %5s %5s %4s | %6s |\n", "", "",
           "commits/s", "confl%", "false", "stall", "p50 us", "p99 us", "fair", "commits/s",
           "p50", "p99", "fair", "mutex");
}

/* One row: theus and the mutex baseline, with threads (@procs = 0) or processes. */
static int contention_row(int procs, int n, int overlap, double secs)
{
    const char *kind = procs ? "process" : "thread";
    char casename[64];
    snprintf(casename, sizeof casename, "%d %s%s, %s", n, procs ? "process" : "thread",
             n > 1 ? (procs ? "es" : "s") : "", overlap ? "overlapping" : "disjoint");
    const int failures_before = bench.failures;
    run_out th, mx;
    int (*run)(int, int, int, double, run_out *, const char *) = procs ? run_procs : run_threads;
    if (run(n, overlap, 0, secs, &th, casename) || run(n, overlap, 1, secs, &mx, casename))
        return -1;
    const char *workers = procs ? "processes" : "threads";
    measurement m;
    memset(&m, 0, sizeof m);
    m.st = th.lat;
    bench_result *r = result_add(scenario, "cpu", casename, "theus.rmw_commit");
    result_set(r, &m, 0, 1, "commit");
    result_param(r, workers, n);
    result_param_str(r, "workers", kind);
    result_param_str(r, "regions", overlap ? "overlapping" : "disjoint");
    result_param(r, "region_elems", REGION);
    result_param(r, "seconds", th.secs);
    result_metric(r, "commits_per_s", th.commits_per_s);
    result_metric(r, "conflict_rate", th.conflict_rate);
    result_metric(r, "commits", (double)th.commits);
    result_metric(r, "conflicts", (double)th.conflicts);
    result_metric(r, "false_conflicts", (double)th.false_conflicts);
    result_metric(r, "write_write_conflicts", (double)th.write_write);
    result_metric(r, "read_write_conflicts", (double)th.read_write);
    result_metric(r, "stalled_commits", (double)th.stalled_commits);
    result_metric(r, "stalled_false_conflicts", (double)th.stalled_false);
    result_metric(r, "stalled_min_commits_passed", (double)th.stalled_gap_min);
    result_metric(r, "false_conflicts_total", (double)(th.false_conflicts + th.stalled_false));
    result_metric(r, "ratio_vs_baseline", th.commits_per_s / mx.commits_per_s);
    result_metric(r, "fairness_min_over_max", th.fairness);
    m.st = mx.lat;
    r = result_add(scenario, "cpu", casename, "baseline.mutex_rmw");
    result_set(r, &m, 0, 1, "commit");
    result_param(r, workers, n);
    result_param_str(r, "workers", kind);
    result_param_str(r, "regions", overlap ? "overlapping" : "disjoint");
    result_param(r, "seconds", mx.secs);
    result_metric(r, "commits_per_s", mx.commits_per_s);
    result_metric(r, "fairness_min_over_max", mx.fairness);

    char series[64];
    snprintf(series, sizeof series, "theus, %s, %s", overlap ? "overlapping" : "disjoint",
             workers);
    plot_point(scenario, series, n, th.commits_per_s);
    snprintf(series, sizeof series, "mutex, %s, %s", overlap ? "overlapping" : "disjoint",
             workers);
    plot_point(scenario, series, n, mx.commits_per_s);
    printf("%-7d %-8s | %10.0f %5.2f%% %5llu %5llu %7.2f %7.2f %4.2f | %10.0f %5.2f %5.2f "
           "%4.2f | %5.2fx | %s\n",
           n, overlap ? "overlap" : "disjoint", th.commits_per_s, 100 * th.conflict_rate,
           (unsigned long long)(th.false_conflicts + th.stalled_false),
           (unsigned long long)th.stalled_commits, th.lat.median * 1e6, th.lat.p99 * 1e6,
           th.fairness, mx.commits_per_s, mx.lat.median * 1e6, mx.lat.p99 * 1e6, mx.fairness,
           th.commits_per_s / mx.commits_per_s,
           bench.failures != failures_before ? "CHECK FAILED" : "ok");
    fflush(stdout);
    return 0;
}

int scn_commit_contention(void)
{
    const double secs = bench.quick ? 0.3 : 2.0;
    char what[400];
    snprintf(what, sizeof what, "threads, then processes on one shared state, increment %d "
             "i64 each (read, add 1, write; serializable; retry at once on conflict) for "
             "%.1f s per row, beside a stalled transaction (commits after %d others; false "
             "conflicts wanted: 0); latency of a committed increment, retries included; %ld "
             "CPU cores here", REGION, secs, STALL_PAST, sysconf(_SC_NPROCESSORS_ONLN));
    print_header(scenario, "cpu", what);
    static const int counts[] = {1, 2, 4};
    const size_t nprocs_counts = bench.quick ? 2 : 3;   /* --quick: 1 and 2 processes */
    for (int procs = 0; procs < 2; procs++) {
        if (procs)
            printf("processes (fork; the parent creates the shared state, each child opens "
                   "it by name; baseline: a process-shared mutex):\n");
        print_table_header(procs ? "procs" : "threads");
        for (int overlap = 0; overlap < 2; overlap++)
            for (size_t i = 0; i < (procs ? nprocs_counts : 3); i++)
                if (contention_row(procs, counts[i], overlap, secs))
                    return -1;
    }
    plot_axes(scenario, "commit.contention: read-modify-write commits per second (CPU)",
              "threads or processes", "commits/s", 1, 1);
    return 0;
}
