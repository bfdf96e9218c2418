/* theus-bench harness: clock, random numbers, LLC flushing, and the sampling loop that
 * warms up and repeats a measurement until its median is stable. */
#include "bench.h"
#include "backend.h"
#include "replay_pool.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double now_s(void)
{
    return (double)now_ns() * 1e-9;
}

uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- memory ------------------------------------------------------------------------------ */

static void *alloc_pages(size_t bytes, int huge)
{
    if (bytes == 0)
        bytes = 1;
    /* mmap, not malloc: large buffers come back to the system at once when freed, and the
     * memset takes every page fault now rather than inside a timed run. */
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (huge)   /* before the first touch, as theus does for its large host fields */
        (void)madvise(p, bytes, MADV_HUGEPAGE);
#else
    (void)huge;
#endif
    memset(p, 0, bytes);
    return p;
}

void *bench_alloc(size_t bytes)
{
    return alloc_pages(bytes, 0);
}

void *bench_alloc_huge(size_t bytes)
{
    return alloc_pages(bytes, 1);
}

void bench_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes ? bytes : 1);
}

/* ---- streaming copy ------------------------------------------------------------------- */

/* theus's own streaming copy (src/backend_cpu.c), ended by a fence as one call. */
void bench_copy_stream(void *dst, const void *src, size_t n)
{
    cpu_copy_stream(dst, src, n);
    cpu_stream_fence();
}

/* ---- LLC flush ------------------------------------------------------------------------- */

static unsigned char *flush_buf;
static size_t flush_bytes;
static volatile uint64_t flush_sink;

int llc_flush_init(void)
{
    flush_bytes = 0;
    if (!bench.llc_flush)
        return 0;
    flush_bytes = 2 * bench.llc_bytes;
    flush_buf = bench_alloc(flush_bytes);
    if (!flush_buf)
        return -1;
    /* Real pages with distinct content: reading untouched anonymous memory would only map
     * the shared zero page and evict nothing. */
    for (size_t i = 0; i < flush_bytes; i += 64)
        flush_buf[i] = (unsigned char)i;
    return 0;
}

void llc_flush_free(void)
{
    if (flush_buf)
        bench_free(flush_buf, flush_bytes);
    flush_buf = NULL;
    flush_bytes = 0;
}

size_t llc_flush_bytes(void)
{
    return flush_buf ? flush_bytes : 0;
}

static void flush_part(void *arg, int t, int nt)
{
    (void)arg;
    (void)t;
    (void)nt;
    /* One load per line is enough: each load brings its line in and pushes an older one out
     * (written back if dirty). */
    uint64_t acc = 0;
    const size_t words = flush_bytes / sizeof(uint64_t);
    const uint64_t *w = (const uint64_t *)(void *)flush_buf;
    for (size_t i = 0; i < words; i += 8)
        acc += w[i];
    flush_sink += acc;
}

/* Threads that timed code may run on: theus's CPU replay and the threaded ceilings use up to
 * replay_pool_threads(), and the cache that any of them filled must be emptied too. */
static int flush_threads(void)
{
    return replay_pool_threads();
}

void llc_flush(void)
{
    if (!flush_buf)
        return;
    /* With several threads, every one streams the whole buffer, at the same time on the
     * pool's workers, so that each CPU's caches are evicted. */
    const int nt = flush_threads();
    if (nt < 2 || replay_pool_run(nt, flush_part, NULL) == 0)
        flush_part(NULL, 0, 1);
}

int llc_would_hold(size_t bytes)
{
    return bytes < 2 * bench.llc_bytes * (size_t)flush_threads();
}

/* ---- statistics -------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct_sorted(const double *s, size_t n, double q)
{
    if (n == 0)
        return NAN;
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)pos;
    if (lo + 1 >= n)
        return s[n - 1];
    double frac = pos - (double)lo;
    return s[lo] + (s[lo + 1] - s[lo]) * frac;
}

void stats_compute(const double *v, size_t n, bstats *out)
{
    memset(out, 0, sizeof *out);
    out->n = n;
    if (n == 0) {
        out->median = out->p10 = out->p90 = out->p99 = out->p999 = NAN;
        out->min = out->max = out->mean = NAN;
        return;
    }
    double *s = malloc(n * sizeof *s);
    if (!s) {
        out->median = NAN;
        return;
    }
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += s[i];
    out->median = pct_sorted(s, n, 0.5);
    out->p10 = pct_sorted(s, n, 0.10);
    out->p90 = pct_sorted(s, n, 0.90);
    out->p99 = pct_sorted(s, n, 0.99);
    out->p999 = pct_sorted(s, n, 0.999);
    out->min = s[0];
    out->max = s[n - 1];
    out->mean = sum / (double)n;
    free(s);
}

static double median_of(const double *v, size_t n)
{
    bstats st;
    stats_compute(v, n, &st);
    return st.median;
}

/* ---- the sampling loop ------------------------------------------------------------------- */

static int one_run(const bench_op *op, double *secs)
{
    int rc = op->prep ? op->prep(op->ctx) : 0;
    if (rc)
        return rc;
    if (op->flush)
        llc_flush();
    if (op->run_timed)
        return op->run_timed(op->ctx, secs);
    uint64_t t0 = now_ns();
    rc = op->run(op->ctx);
    uint64_t t1 = now_ns();
    *secs = (double)(t1 - t0) * 1e-9;
    return rc;
}

static int is_stable(const measurement *m, unsigned n)
{
    /* Stable: dropping the last few samples moves the median by less than the tolerance. */
    unsigned drop = n / 5 > 3 ? n / 5 : 3;
    double all = median_of(m->samples, n);
    double prev = median_of(m->samples, n - drop);
    return fabs(all - prev) <= bench.stable_tol * all;
}

int measure_set(const bench_op *ops, size_t nops, measurement *ms)
{
    unsigned maxs = bench.max_samples;
    if (maxs > BENCH_MAX_SAMPLES)
        maxs = BENCH_MAX_SAMPLES;
    unsigned mins = bench.min_samples < maxs ? bench.min_samples : maxs;
    unsigned n[BENCH_MAX_OPS] = {0};
    int done[BENCH_MAX_OPS] = {0}, stable[BENCH_MAX_OPS] = {0};
    if (nops > BENCH_MAX_OPS)
        return -1;
    for (size_t i = 0; i < nops; i++)
        memset(&ms[i], 0, sizeof ms[i]);
    /* Warm-up: once, and once more when a run is short enough that a second costs nothing. */
    for (size_t i = 0; i < nops; i++) {
        double t;
        int rc = one_run(&ops[i], &t);
        ms[i].runs++;
        if (!rc && t < 0.02) {
            rc = one_run(&ops[i], &t);
            ms[i].runs++;
        }
        if (rc)
            return rc;
    }
    /* Round robin, so that a slow drift of the machine (a neighbour, the clock) touches
     * every method of the set alike. */
    const double start = now_s();
    for (;;) {
        size_t left = 0;
        for (size_t i = 0; i < nops; i++) {
            if (done[i])
                continue;
            measurement *m = &ms[i];
            int rc = one_run(&ops[i], &m->samples[n[i]]);
            m->runs++;
            if (rc)
                return rc;
            n[i]++;
            if (n[i] >= mins && is_stable(m, n[i]))
                done[i] = stable[i] = 1;
            else if (n[i] >= maxs)
                done[i] = 1;
            left += !done[i];
        }
        if (left == 0)
            break;
        int all_min = 1;
        for (size_t i = 0; i < nops; i++)
            all_min &= n[i] >= mins;
        if (all_min && now_s() - start > bench.max_seconds * (double)nops)
            break;
    }
    for (size_t i = 0; i < nops; i++) {
        stats_compute(ms[i].samples, n[i], &ms[i].st);
        ms[i].st.stable = stable[i];
    }
    return 0;
}

int measure(const bench_op *op, measurement *m)
{
    return measure_set(op, 1, m);
}

/* ---- replay batches (the CPU and GPU replay scenarios) --------------------------------- */

/* Segments of @size bytes (0: mixed, log-uniform 64 B .. 64 KiB in 64 B steps), spread over
 * the field in ascending order with random gaps. Returns the payload bytes, or 0 when the
 * batch does not fit the field (or memory ran out). */
size_t bench_batch_layout(bench_seg *segs, size_t count, uint32_t size, size_t field_bytes,
                          uint64_t seed)
{
    uint64_t s = seed;
    size_t payload = 0;
    for (size_t i = 0; i < count; i++) {
        uint32_t sz = size;
        if (sz == 0) {
            double v = 64.0 * pow(2.0, 10.0 * rng_unit(&s));
            sz = (uint32_t)v / 64 * 64;
            if (sz < 64)
                sz = 64;
        }
        segs[i].size = sz;
        payload += sz;
    }
    if (payload > field_bytes)
        return 0;
    /* Gaps in 64-byte units: count + 1 random weights share what the segments leave free. */
    const uint64_t free_units = (field_bytes - payload) / 64;
    double *w = malloc((count + 1) * sizeof *w);
    if (!w)
        return 0;
    double sum = 0;
    for (size_t i = 0; i <= count; i++)
        sum += (w[i] = rng_unit(&s) + 1e-9);
    uint64_t off = 0, used = 0;
    for (size_t i = 0; i < count; i++) {
        uint64_t g = (uint64_t)((double)free_units * w[i] / sum);
        if (used + g > free_units)
            g = free_units - used;
        used += g;
        off += g * 64;
        segs[i].off = off;
        off += segs[i].size;
    }
    free(w);
    return payload;
}

/* Shuffle for random placement (the same set of segments), then lay out the payload in
 * batch order. */
void bench_batch_order(bench_seg *segs, size_t count, int random, uint64_t seed)
{
    uint64_t s = seed ^ 0x5eed;
    if (random)
        for (size_t i = count - 1; i > 0; i--) {
            size_t j = (size_t)(rng_next(&s) % (i + 1));
            bench_seg t = segs[i];
            segs[i] = segs[j];
            segs[j] = t;
        }
    uint64_t poff = 0;
    for (size_t i = 0; i < count; i++) {
        segs[i].poff = poff;
        poff += segs[i].size;
    }
}

static const uint32_t grid_sizes[] = {64, 256, 1024, 4096, 65536, 0};
static const char *const grid_size_names[] = {"64B", "256B", "1KiB", "4KiB", "64KiB", "mixed"};
static const size_t grid_counts[] = {1000, 10000, 100000, 1000000};
#define GRID_NCOUNTS (sizeof grid_counts / sizeof grid_counts[0])

static size_t grid_ncounts(size_t nquick)
{
    return bench.quick && nquick && nquick < GRID_NCOUNTS ? nquick : GRID_NCOUNTS;
}

size_t bench_replay_grid_max(size_t nquick)
{
    return grid_counts[grid_ncounts(nquick) - 1];
}

int bench_replay_grid(const char *scn, const char *target, int add, size_t nquick,
                      bench_seg *segs, size_t field_bytes, const char *field_name,
                      bench_cell_fn cell, void *user)
{
    const size_t ncounts = grid_ncounts(nquick);
    for (size_t si = 0; si < sizeof grid_sizes / sizeof grid_sizes[0]; si++) {
        for (size_t ci = 0; ci < ncounts; ci++) {
            const size_t count = grid_counts[ci];
            const uint64_t cellseed = bench.seed + si * 1000003u + ci * 7919u + (uint64_t)add;
            const size_t payload = bench_batch_layout(segs, count, grid_sizes[si], field_bytes,
                                                      cellseed);
            if (payload == 0) {
                char cnt[16], why[160];
                snprintf(why, sizeof why, "seg=%s count=%s: payload larger than the %s field",
                         grid_size_names[si], fmt_count((double)count, cnt, sizeof cnt),
                         field_name);
                note_skip(scn, target, why);
                continue;
            }
            for (int pl = 0; pl < 2; pl++) {
                /* The same set of segments in both placements: sort, or shuffle. */
                if (pl == 1)
                    bench_batch_layout(segs, count, grid_sizes[si], field_bytes, cellseed);
                bench_batch_order(segs, count, pl == 0, cellseed);
                int rc = cell(user, count, payload, grid_sizes[si], grid_size_names[si],
                              pl == 0 ? "random" : "sorted", cellseed);
                if (rc != 0)
                    return rc;
            }
        }
    }
    return 0;
}

size_t bench_first_diff(const float *a, const float *b, size_t n)
{
    if (memcmp(a, b, n * sizeof *a) == 0)
        return SIZE_MAX;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof *a) != 0)
            return i;
    return SIZE_MAX;
}

void bench_stage_add(bench_stage_times *t, uint64_t t0_ns)
{
    if (t->n < sizeof t->s / sizeof t->s[0])
        t->s[t->n++] = (double)(now_ns() - t0_ns) * 1e-9;
}

void bench_stage_split(const bench_stage_times *t, const measurement *commit,
                       measurement *stage, measurement *tx)
{
    if (stage)
        memset(stage, 0, sizeof *stage);
    memset(tx, 0, sizeof *tx);
    const size_t n = commit->st.n, skip = t->n >= n ? t->n - n : 0;
    for (size_t i = 0; i < n && skip + i < t->n; i++) {
        if (stage)
            stage->samples[i] = t->s[skip + i];
        tx->samples[i] = t->s[skip + i] + commit->samples[i];
    }
    if (stage)
        stats_compute(stage->samples, n, &stage->st);
    stats_compute(tx->samples, n, &tx->st);
}
