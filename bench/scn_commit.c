/* commit.latency and commit.scaling on host fields, through the public API.
 *   commit.latency: one one-element write per transaction, begin -> commit, against a
 *                   mutex-guarded store of the same element (the least a commit can cost).
 *   commit.scaling: commit cost as the written fraction of a large field grows, against
 *                   copying the whole field (what a snapshot-per-commit design pays) and a
 *                   memcpy of just the delta bytes (the ceiling). */
#include "bench.h"
#include "theus/theus.h"
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static int state_with(const char *scenario, const char *fields_json, theus_state **st)
{
    char schema[512];
    snprintf(schema, sizeof schema, "{\"name\": \"%s\", \"fields\": {%s}}", scenario,
             fields_json);
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    int rc = theus_state_create(schema, &o, st);
    if (rc != THEUS_OK)
        note_error(scenario, "creating the state: %s (%s)", theus_strerror(rc),
                   theus_last_error_message());
    return rc;
}

static int read_whole(const char *scenario, theus_state *st, const char *field, void *dst)
{
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(st, NULL, &tx);
    if (rc == THEUS_OK)
        rc = theus_tx_read(tx, field, NULL, dst, THEUS_MEM_HOST);
    if (tx)
        theus_tx_abort(tx);
    if (rc != THEUS_OK)
        note_error(scenario, "reading '%s' back: %s", field, theus_strerror(rc));
    return rc;
}

static size_t fit_field(size_t want, int buffers)
{
    size_t f = want;
    if (bench.max_field && bench.max_field < f)
        f = bench.max_field;
    while (f > ((size_t)16 << 20) &&
           (size_t)buffers * f + ((size_t)512 << 20) > bench.mem_avail / 10 * 8)
        f /= 2;
    return f;
}

/* ================================ commit.latency ======================================== */

static int latency_field(theus_state *st, const char *field, size_t nelems, float *mirror,
                         float *plain, size_t ntx, size_t warm)
{
    const char *scenario = "commit.latency";
    double *tot = malloc(ntx * sizeof *tot), *com = malloc(ntx * sizeof *com);
    double *base = malloc(ntx * sizeof *base);
    int rc = -1;
    if (!tot || !com || !base) {
        note_error(scenario, "out of memory for %zu samples", ntx);
        goto out;
    }
    uint64_t s = bench.seed ^ nelems;
    for (size_t i = 0; i < warm + ntx; i++) {
        size_t idx = (size_t)(rng_next(&s) % nelems);
        float val = (float)(i % 65536 + 1);
        theus_region r;
        memset(&r, 0, sizeof r);
        r.ndim = 1;
        r.start[0] = (int64_t)idx;
        r.stop[0] = (int64_t)idx + 1;
        theus_tx *tx = NULL;
        uint64_t t0 = now_ns();
        int trc = theus_tx_begin(st, NULL, &tx);
        if (trc == THEUS_OK)
            trc = theus_tx_write(tx, field, &r, &val, THEUS_MEM_HOST);
        uint64_t t1 = now_ns();
        if (trc == THEUS_OK)
            trc = theus_tx_commit(tx, NULL);
        else
            theus_tx_abort(tx);
        uint64_t t2 = now_ns();
        if (trc != THEUS_OK) {
            note_error(scenario, "transaction %zu on '%s': %s (%s)", i, field,
                       theus_strerror(trc), theus_last_error_message());
            goto out;
        }
        mirror[idx] = val;
        if (i >= warm) {
            tot[i - warm] = (double)(t2 - t0) * 1e-9;
            com[i - warm] = (double)(t2 - t1) * 1e-9;
        }
    }
    /* Baseline: the same stores, each under a mutex, one timed sample each. */
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    s = bench.seed ^ nelems;
    for (size_t i = 0; i < warm + ntx; i++) {
        size_t idx = (size_t)(rng_next(&s) % nelems);
        float val = (float)(i % 65536 + 1);
        uint64_t t0 = now_ns();
        pthread_mutex_lock(&mu);
        plain[idx] = val;
        pthread_mutex_unlock(&mu);
        uint64_t t1 = now_ns();
        if (i >= warm)
            base[i - warm] = (double)(t1 - t0) * 1e-9;
    }
    measurement m;
    memset(&m, 0, sizeof m);
    bstats st_tot, st_com, st_base, first_half;
    stats_compute(tot, ntx, &st_tot);
    stats_compute(com, ntx, &st_com);
    stats_compute(base, ntx, &st_base);
    stats_compute(tot, ntx / 2, &first_half);
    st_tot.stable = fabs(first_half.median - st_tot.median) <= bench.stable_tol * st_tot.median;
    st_com.stable = st_base.stable = st_tot.stable;

    /* Check: the field holds what the mirror says, and so does the baseline's array. */
    float *back = malloc(nelems * sizeof *back);
    if (!back) {
        note_error(scenario, "out of memory reading '%s' back", field);
        goto out;
    }
    char casename[96], fb[16];
    snprintf(casename, sizeof casename, "f32[%zu] host (%s)", nelems,
             fmt_bytes((double)nelems * 4, fb, sizeof fb));
    if (read_whole(scenario, st, field, back) == THEUS_OK) {
        size_t bad = bench_first_diff(back, mirror, nelems);
        note_check(scenario, casename, bad == SIZE_MAX, "%zu one-element commits vs mirror: %s",
                   warm + ntx, bad == SIZE_MAX ? "identical field" : "fields differ");
        bad = bench_first_diff(plain, mirror, nelems);
        note_check(scenario, casename, bad == SIZE_MAX, "mutex baseline vs mirror: %s",
                   bad == SIZE_MAX ? "identical" : "differ");
    }
    free(back);

    const char *methods[3] = {"theus.tx", "theus.commit_call", "baseline.mutex_store"};
    const bstats *sts[3] = {&st_tot, &st_com, &st_base};
    for (int k = 0; k < 3; k++) {
        bench_result *r = result_add(scenario, "cpu", casename, methods[k]);
        m.st = *sts[k];
        result_set(r, &m, 0, 1, "commit");
        result_param_str(r, "field", field);
        result_param(r, "field_bytes", (double)nelems * 4);
        result_param(r, "delta_bytes", 4);
        result_param(r, "transactions", (double)ntx);
        if (k < 2)
            result_metric(r, "ratio_p50_vs_baseline", sts[k]->median / st_base.median);
    }
    printf("%-26s | %6.0f %6.0f %6.0f %7.0f | %6.0f %7.0f | %6.0f %7.0f | %6.1fx | %s\n",
           casename, st_tot.p10 * 1e9, st_tot.median * 1e9, st_tot.p90 * 1e9, st_tot.p99 * 1e9,
           st_com.median * 1e9, st_com.p99 * 1e9, st_base.median * 1e9, st_base.p99 * 1e9,
           st_tot.median / st_base.median, st_tot.median <= 1e-6 ? "<= 1 us: met" : "> 1 us: NOT met");
    fflush(stdout);
    rc = 0;
out:
    free(tot);
    free(com);
    free(base);
    return rc;
}

int scn_commit_latency(void)
{
    const char *scenario = "commit.latency";
    const size_t small = 1024;
    const size_t large_bytes = fit_field(bench.quick ? (size_t)64 << 20 : (size_t)1 << 30, 5);
    const size_t large = large_bytes / 4;
    const size_t ntx = bench.quick ? 20000 : 200000, warm = bench.quick ? 2000 : 20000;
    char fb[16], what[256];
    snprintf(what, sizeof what, "one f32 element written per transaction at a random index, "
             "begin -> commit, %zu transactions per field after %zu warm-up; caches warm "
             "(steady state); times in ns", ntx, warm);
    print_header(scenario, "cpu", what);
    printf("%-26s | %-29s | %-14s | %-14s | %-7s |\n", "field", "theus begin->commit",
           "commit call", "mutex+store", "theus/");
    printf("%-26s | %6s %6s %6s %7s | %6s %7s | %6s %7s | %7s |\n", "", "p10", "p50", "p90",
           "p99", "p50", "p99", "p50", "p99", "base");
    char fields[256];
    snprintf(fields, sizeof fields,
             "\"small\": {\"dtype\": \"f32\", \"shape\": [%zu], \"placement\": \"host\"}, "
             "\"large\": {\"dtype\": \"f32\", \"shape\": [%zu], \"placement\": \"host\"}",
             small, large);
    theus_state *st = NULL;
    float *mirror = bench_alloc(large_bytes), *plain = bench_alloc(large_bytes);
    int rc = -1;
    if (!mirror || !plain) {
        note_error(scenario, "out of memory for a %s field", fmt_bytes((double)large_bytes, fb,
                                                                        sizeof fb));
        goto out;
    }
    if (state_with(scenario, fields, &st) != THEUS_OK)
        goto out;
    /* Touch every page of the large field once (as a real user's initial values would). */
    if (theus_state_init_field(st, "large", mirror, THEUS_MEM_HOST) != THEUS_OK) {
        note_error(scenario, "theus_state_init_field: %s", theus_last_error_message());
        goto out;
    }
    if (latency_field(st, "small", small, mirror, plain, ntx, warm) != 0)
        goto out;
    memset(mirror, 0, small * sizeof(float));
    memset(plain, 0, small * sizeof(float));
    if (latency_field(st, "large", large, mirror, plain, ntx, warm) != 0)
        goto out;
    rc = 0;
out:
    theus_state_destroy(st);
    bench_free(mirror, large_bytes);
    bench_free(plain, large_bytes);
    return rc;
}

/* ================================ commit.scaling ========================================= */

typedef struct scaling_ctx {
    theus_state *st;
    float *payload, *mirror, *scratch;
    size_t field_bytes;
    size_t nseg;
    uint64_t seg_bytes, stride, off0;
    theus_tx *tx;
    bench_stage_times stage;
} scaling_ctx;

static void scaling_region(const scaling_ctx *c, size_t i, theus_region *r, uint64_t *off)
{
    *off = c->off0 + i * c->stride;
    memset(r, 0, sizeof *r);
    r->ndim = 1;
    r->start[0] = (int64_t)(*off / 4);
    r->stop[0] = (int64_t)((*off + c->seg_bytes) / 4);
}

static int scaling_prep(void *p)
{
    scaling_ctx *c = p;
    uint64_t t0 = now_ns();
    int rc = theus_tx_begin(c->st, NULL, &c->tx);
    for (size_t i = 0; i < c->nseg && rc == THEUS_OK; i++) {
        theus_region r;
        uint64_t off;
        scaling_region(c, i, &r, &off);
        rc = theus_tx_write(c->tx, "x", &r, (const char *)c->payload + i * c->seg_bytes,
                            THEUS_MEM_HOST);
    }
    if (rc != THEUS_OK) {
        note_error("commit.scaling", "staging: %s (%s)", theus_strerror(rc),
                   theus_last_error_message());
        theus_tx_abort(c->tx);
        c->tx = NULL;
        return -1;
    }
    bench_stage_add(&c->stage, t0);
    return 0;
}

int bench_commit_staged(const char *scenario, struct theus_tx **tx)
{
    theus_tx *t = *tx;
    *tx = NULL;
    int rc = theus_tx_commit(t, NULL);
    if (rc != THEUS_OK) {
        note_error(scenario, "theus_tx_commit: %s (%s)", theus_strerror(rc),
                   theus_last_error_message());
        return -1;
    }
    return 0;
}

static int scaling_commit(void *p)
{
    scaling_ctx *c = p;
    return bench_commit_staged("commit.scaling", &c->tx);
}

static int scaling_delta_copy(void *p)
{
    scaling_ctx *c = p;
    for (size_t i = 0; i < c->nseg; i++)
        memcpy((char *)c->scratch + BENCH_DST_SKEW + c->off0 + i * c->stride,
               (const char *)c->payload + i * c->seg_bytes, c->seg_bytes);
    return 0;
}

static int scaling_whole_copy(void *p)
{
    scaling_ctx *c = p;
    memcpy((char *)c->scratch + BENCH_DST_SKEW, c->mirror, c->field_bytes);
    return 0;
}

/* The same copy in 64 KiB memcpy calls (regular stores instead of glibc's non-temporal
 * ones for large calls); the baseline is the faster of the two. */
static int scaling_whole_copy_chunked(void *p)
{
    scaling_ctx *c = p;
    const size_t chunk = (size_t)64 << 10;
    char *d = (char *)c->scratch + BENCH_DST_SKEW;
    const char *s = (const char *)c->mirror;
    for (size_t o = 0; o < c->field_bytes; o += chunk)
        memcpy(d + o, s + o, c->field_bytes - o < chunk ? c->field_bytes - o : chunk);
    return 0;
}

int scn_commit_scaling(void)
{
    const char *scenario = "commit.scaling";
    /* Field, mirror, read-back, payload, staged copy: five field-sized buffers. */
    const size_t want = bench.quick ? (size_t)64 << 20 : (size_t)1 << 30;
    const size_t fbytes = fit_field(want, 6);
    const size_t nelems = fbytes / 4;
    static const double fracs[] = {0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0};
    char fb[16], what[320];
    snprintf(what, sizeof what,
             "commit cost as the written fraction of a %s f32 host field grows, against "
             "copying the whole field; staged payload and field %s before "
             "each timed commit; times in ms%s",
             fmt_bytes((double)fbytes, fb, sizeof fb),
             bench.llc_flush ? "flushed from the LLC" : "NOT flushed from the LLC (--quick)",
             fbytes < want ? " (field reduced to fit memory)" : "");
    print_header(scenario, "cpu", what);

    scaling_ctx c;
    memset(&c, 0, sizeof c);
    c.field_bytes = fbytes;
    int rc = -1;
    char fields[160];
    snprintf(fields, sizeof fields,
             "\"x\": {\"dtype\": \"f32\", \"shape\": [%zu], \"placement\": \"host\"}", nelems);
    c.payload = bench_alloc(fbytes);
    c.mirror = bench_alloc(fbytes);
    c.scratch = bench_alloc(fbytes + 2 * BENCH_DST_SKEW);
    if (!c.payload || !c.mirror || !c.scratch) {
        note_error(scenario, "out of memory for a %s field", fb);
        goto out;
    }
    for (size_t i = 0; i < nelems; i++)
        c.mirror[i] = (float)(i % 1000);
    if (state_with(scenario, fields, &c.st) != THEUS_OK)
        goto out;
    if (theus_state_init_field(c.st, "x", c.mirror, THEUS_MEM_HOST) != THEUS_OK) {
        note_error(scenario, "theus_state_init_field: %s", theus_last_error_message());
        goto out;
    }

    /* The baseline every row is compared with: copy the whole field once. */
    measurement m_wholes[2];
    const int wflush = llc_would_hold(2 * fbytes);
    const bench_op op_whole[2] = {
        {.ctx = &c, .run = scaling_whole_copy, .flush = wflush},
        {.ctx = &c, .run = scaling_whole_copy_chunked, .flush = wflush},
    };
    if (measure_set(op_whole, 2, m_wholes))
        goto out;
    const int wbest = m_wholes[1].st.median < m_wholes[0].st.median;
    const measurement *m_whole = &m_wholes[wbest];
    bench_result *r = NULL;
    for (int k = 0; k < 2; k++) {
        r = result_add(scenario, "cpu", "whole field",
                       k ? "baseline.whole_field_copy_64KiB_calls" : "baseline.whole_field_copy");
        result_set(r, &m_wholes[k], 2.0 * (double)fbytes, 1, "copy");
        result_param(r, "field_bytes", (double)fbytes);
        result_metric(r, "is_baseline", k == wbest);
    }
    const double whole = m_whole->st.median;
    char line[512];
    snprintf(line, sizeof line,
             "baseline: copy of the whole %s field (%s): %.3f ms (p10 %.3f, p90 %.3f), %.2f GB/s\n",
             fb, wbest ? "memcpy in 64 KiB calls, faster here than one call"
                       : "one memcpy call, faster here than 64 KiB calls",
             whole * 1e3, m_whole->st.p10 * 1e3, m_whole->st.p90 * 1e3,
             2.0 * (double)fbytes / whole * 1e-9);
    bench_wrap(stdout, line);
    printf("%-13s %7s %8s %6s | %-23s | %-8s | %-16s | %-16s | %s\n", "layout", "written",
           "delta", "deltas", "theus commit ms", "% whole", "delta memcpy ms", "tx stage+commit",
           "check");
    printf("%-13s %7s %8s %6s | %7s %7s %7s | %8s | %7s %8s | %7s %8s |\n", "", "", "", "",
           "p10", "p50", "p90", "", "p50", "commit/", "p50 ms", "% whole");
    plot_axes(scenario, "commit.scaling: commit cost vs written fraction of the field (CPU)",
              "written fraction of the field (%)", "milliseconds", 1, 1);

    uint64_t s = bench.seed ^ 0xca1e;
    for (int layout = 0; layout < 2; layout++) {
        const char *lname = layout == 0 ? "1 region" : "4KiB segments";
        for (size_t fi = 0; fi < sizeof fracs / sizeof fracs[0]; fi++) {
            uint64_t delta = (uint64_t)((double)fbytes * fracs[fi]) / 4096 * 4096;
            if (delta < 4096)
                delta = 4096;
            if (layout == 0) {
                c.nseg = 1;
                c.seg_bytes = delta;
                c.stride = 0;
                c.off0 = (rng_next(&s) % ((fbytes - delta) / 64 + 1)) * 64;
            } else {
                c.nseg = delta / 4096;
                c.seg_bytes = 4096;
                c.stride = (fbytes / c.nseg) / 64 * 64;
                c.off0 = 0;
            }
            const size_t pn = delta / 4;
            for (size_t j = 0; j < pn; j++)
                c.payload[j] = (float)((j + fi * 13 + (size_t)layout * 101) % 1000 + 1);
            const int failures_before = bench.failures;
            const int flush = llc_would_hold(2 * delta);
            measurement ms[2];
            const bench_op ops[2] = {
                {.ctx = &c, .prep = scaling_prep, .run = scaling_commit, .flush = flush},
                {.ctx = &c, .run = scaling_delta_copy, .flush = flush},
            };
            c.stage.n = 0;
            if (measure_set(ops, 2, ms))
                goto out;
            const measurement *m_commit = &ms[0], *m_delta = &ms[1];
            /* Check: the field equals the mirror with the delta written into it. */
            for (size_t i = 0; i < c.nseg; i++)
                memcpy((char *)c.mirror + c.off0 + i * c.stride,
                       (const char *)c.payload + i * c.seg_bytes, c.seg_bytes);
            char casename[96], db[16];
            snprintf(casename, sizeof casename, "%s, %.1f%% (%s)", lname, fracs[fi] * 100,
                     fmt_bytes((double)delta, db, sizeof db));
            if (read_whole(scenario, c.st, "x", c.scratch) != THEUS_OK)
                goto out;
            size_t bad = bench_first_diff(c.scratch, c.mirror, nelems);
            note_check(scenario, casename, bad == SIZE_MAX, "field after %u commits vs mirror: %s",
                       m_commit->runs, bad == SIZE_MAX ? "identical" : "differ");

            measurement m_tx;
            bench_stage_split(&c.stage, m_commit, NULL, &m_tx);

            const double cm = m_commit->st.median;
            r = result_add(scenario, "cpu", casename, "theus.commit");
            result_set(r, m_commit, 2.0 * (double)delta, (double)c.nseg, "delta");
            result_param_str(r, "layout", lname);
            result_param(r, "fraction", fracs[fi]);
            result_param(r, "delta_bytes", (double)delta);
            result_param(r, "field_bytes", (double)fbytes);
            result_metric(r, "pct_of_whole_copy", 100 * cm / whole);
            result_metric(r, "ratio_vs_delta_memcpy", cm / m_delta->st.median);
            r = result_add(scenario, "cpu", casename, "theus.tx");
            result_set(r, &m_tx, 2.0 * (double)delta, (double)c.nseg, "delta");
            result_param_str(r, "layout", lname);
            result_param(r, "fraction", fracs[fi]);
            result_metric(r, "pct_of_whole_copy", 100 * m_tx.st.median / whole);
            r = result_add(scenario, "cpu", casename, "ceiling.delta_memcpy");
            result_set(r, m_delta, 2.0 * (double)delta, (double)c.nseg, "delta");
            result_param_str(r, "layout", lname);
            result_param(r, "fraction", fracs[fi]);

            char series[64];
            snprintf(series, sizeof series, "theus commit, %s", lname);
            plot_point(scenario, series, fracs[fi] * 100, cm * 1e3);
            snprintf(series, sizeof series, "theus stage+commit, %s", lname);
            plot_point(scenario, series, fracs[fi] * 100, m_tx.st.median * 1e3);
            snprintf(series, sizeof series, "delta memcpy, %s", lname);
            plot_point(scenario, series, fracs[fi] * 100, m_delta->st.median * 1e3);
            if (layout == 0)
                plot_point(scenario, "whole-field copy", fracs[fi] * 100, whole * 1e3);

            printf("%-13s %6.1f%% %8s %6zu | %7.3f %7.3f %7.3f | %7.2f%% | %7.3f %7.2fx | "
                   "%7.3f %7.2f%% | %s\n",
                   lname, fracs[fi] * 100, db, c.nseg, m_commit->st.p10 * 1e3, cm * 1e3,
                   m_commit->st.p90 * 1e3, 100 * cm / whole, m_delta->st.median * 1e3,
                   cm / m_delta->st.median, m_tx.st.median * 1e3, 100 * m_tx.st.median / whole,
                   bench.failures != failures_before ? "CHECK FAILED" : "ok");
            fflush(stdout);
        }
    }
    rc = 0;
out:
    if (c.tx)
        theus_tx_abort(c.tx);
    theus_state_destroy(c.st);
    bench_free(c.payload, fbytes);
    bench_free(c.mirror, fbytes);
    bench_free(c.scratch, fbytes + 2 * BENCH_DST_SKEW);
    return rc;
}

/* ================================ commit.zerocopy ======================================== */
/* Whole transactions (begin -> stage -> commit) on a large 2-D f32 host field of 4 KiB rows,
 * copying calls against borrowed and multi-region ones, each against a memcpy of the same
 * bytes to the same places (the ceiling) measured in the same rounds:
 *   - 1% of the field as one region: theus_tx_write vs theus_tx_write_borrowed;
 *   - 1,000 rows of 4 KiB spread over the field: 1,000 theus_tx_write calls vs one
 *     theus_tx_stage_regions (copied, and borrowed with THEUS_STAGE_BORROW). */

enum { ZC_ROW_ELEMS = 1024, ZC_ROWS_SCATTERED = 1000 };

typedef enum zc_kind {
    ZC_WRITE,             /* one theus_tx_write per region */
    ZC_WRITE_BORROWED,    /* one theus_tx_write_borrowed per region */
    ZC_REGIONS,           /* one theus_tx_stage_regions, copied */
    ZC_REGIONS_BORROWED,  /* one theus_tx_stage_regions, THEUS_STAGE_BORROW */
} zc_kind;

typedef struct zc_ctx {
    theus_state *st;
    float *payload, *scratch;
    theus_region *regs;      /* the case's regions (rows or one block of rows) */
    size_t nregs;
    size_t region_bytes;     /* bytes per region */
    zc_kind kind;
} zc_ctx;

typedef struct zc_op {
    zc_ctx *c;
    zc_kind kind;
} zc_op;

static int zc_tx(void *p)
{
    const zc_op *o = p;
    zc_ctx *c = o->c;
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(c->st, NULL, &tx);
    const char *pl = (const char *)c->payload;
    switch (o->kind) {
    case ZC_WRITE:
    case ZC_WRITE_BORROWED:
        for (size_t i = 0; i < c->nregs && rc == THEUS_OK; i++)
            rc = (o->kind == ZC_WRITE ? theus_tx_write : theus_tx_write_borrowed)(
                tx, "x", &c->regs[i], pl + i * c->region_bytes, THEUS_MEM_HOST);
        break;
    case ZC_REGIONS:
    case ZC_REGIONS_BORROWED:
        if (rc == THEUS_OK)
            rc = theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, c->regs, c->nregs, pl,
                                        c->nregs * c->region_bytes, THEUS_MEM_HOST,
                                        o->kind == ZC_REGIONS ? 0 : THEUS_STAGE_BORROW);
        break;
    }
    if (rc != THEUS_OK) {
        note_error("commit.zerocopy", "staging: %s (%s)", theus_strerror(rc),
                   theus_last_error_message());
        theus_tx_abort(tx);
        return -1;
    }
    rc = theus_tx_commit(tx, NULL);
    if (rc != THEUS_OK) {
        note_error("commit.zerocopy", "theus_tx_commit: %s (%s)", theus_strerror(rc),
                   theus_last_error_message());
        return -1;
    }
    return 0;
}

/* The ceiling: the same bytes to the same offsets of a field-sized buffer, one memcpy per
 * region. */
static int zc_memcpy(void *p)
{
    const zc_op *o = p;
    const zc_ctx *c = o->c;
    char *dst = (char *)c->scratch + BENCH_DST_SKEW;
    for (size_t i = 0; i < c->nregs; i++)
        memcpy(dst + (size_t)c->regs[i].start[0] * ZC_ROW_ELEMS * 4,
               (const char *)c->payload + i * c->region_bytes, c->region_bytes);
    return 0;
}

static const char *zc_method(zc_kind k)
{
    static const char *const names[] = {"theus.write", "theus.write_borrowed",
                                        "theus.stage_regions", "theus.stage_regions_borrowed"};
    return names[k];
}

/* One case: @nkinds transaction kinds and the memcpy ceiling, sampled round robin; checks the
 * field against @mirror afterwards; prints one line per kind. */
static int zc_case(zc_ctx *c, const char *casename, const zc_kind *kinds, size_t nkinds,
                   double target, zc_kind target_kind, float *mirror, size_t fbytes)
{
    const char *scenario = "commit.zerocopy";
    const size_t delta = c->nregs * c->region_bytes;
    zc_op ops_ctx[8];
    bench_op ops[8];
    measurement ms[8];
    const int flush = llc_would_hold(2 * delta);
    for (size_t k = 0; k <= nkinds; k++) {
        ops_ctx[k].c = c;
        ops_ctx[k].kind = k < nkinds ? kinds[k] : ZC_WRITE;
        memset(&ops[k], 0, sizeof ops[k]);
        ops[k].ctx = &ops_ctx[k];
        ops[k].run = k < nkinds ? zc_tx : zc_memcpy;
        ops[k].flush = flush;
    }
    if (measure_set(ops, nkinds + 1, ms))
        return -1;
    const measurement *base = &ms[nkinds];
    /* Check: every transaction wrote the same payload to the same rows. */
    for (size_t i = 0; i < c->nregs; i++)
        memcpy((char *)mirror + (size_t)c->regs[i].start[0] * ZC_ROW_ELEMS * 4,
               (const char *)c->payload + i * c->region_bytes, c->region_bytes);
    if (read_whole(scenario, c->st, "x", c->scratch) != THEUS_OK)
        return -1;
    size_t bad = bench_first_diff(c->scratch, mirror, fbytes / 4);
    note_check(scenario, casename, bad == SIZE_MAX, "field after every kind of transaction vs "
               "mirror: %s", bad == SIZE_MAX ? "identical" : "differ");
    char db[16];
    fmt_bytes((double)delta, db, sizeof db);
    for (size_t k = 0; k <= nkinds; k++) {
        const char *method = k < nkinds ? zc_method(kinds[k]) : "ceiling.delta_memcpy";
        bench_result *r = result_add(scenario, "cpu", casename, method);
        result_set(r, &ms[k], 2.0 * (double)delta, (double)c->nregs, "region");
        result_param(r, "delta_bytes", (double)delta);
        result_param(r, "regions", (double)c->nregs);
        result_param(r, "field_bytes", (double)fbytes);
        const double ratio = ms[k].st.median / base->st.median;
        if (k < nkinds)
            result_metric(r, "ratio_vs_delta_memcpy", ratio);
        char verdict[48] = "";
        if (k < nkinds && kinds[k] == target_kind)
            snprintf(verdict, sizeof verdict, "target <= %.1fx: %s", target,
                     ratio <= target ? "met" : "NOT met");
        printf("%-17s %7s %5zu | %-28s | %7.3f %7.3f %7.3f | %6.2fx | %s\n", casename, db,
               c->nregs, method, ms[k].st.p10 * 1e3, ms[k].st.median * 1e3, ms[k].st.p90 * 1e3,
               ratio, verdict);
    }
    fflush(stdout);
    return 0;
}

int scn_commit_zerocopy(void)
{
    const char *scenario = "commit.zerocopy";
    /* Field, mirror, scratch (ceiling destination and read-back): three field-sized buffers. */
    const size_t want = bench.quick ? (size_t)64 << 20 : (size_t)1 << 30;
    const size_t fbytes = fit_field(want, 4);
    const size_t row_bytes = ZC_ROW_ELEMS * 4, nrows = fbytes / row_bytes;
    const size_t block_rows = nrows / 100 ? nrows / 100 : 1;
    const size_t payload_bytes = (block_rows > ZC_ROWS_SCATTERED ? block_rows
                                                                  : ZC_ROWS_SCATTERED) * row_bytes;
    char fb[16], what[360];
    snprintf(what, sizeof what,
             "whole transactions (begin -> stage -> commit) on a %s f32 host field of 4 KiB "
             "rows, against a memcpy of the same bytes to the same places (ceiling), sampled "
             "in the same rounds; %s; times in ms%s",
             fmt_bytes((double)fbytes, fb, sizeof fb),
             bench.llc_flush ? "LLC flushed before each sample when it could hold the delta"
                             : "LLC NOT flushed (--quick)",
             fbytes < want ? " (field reduced to fit memory)" : "");
    print_header(scenario, "cpu", what);
    printf("%-17s %7s %5s | %-28s | %7s %7s %7s | %7s |\n", "case", "delta", "rgns",
           "method", "p10", "p50", "p90", "/memcpy");

    zc_ctx c;
    memset(&c, 0, sizeof c);
    int rc = -1;
    float *mirror = bench_alloc(fbytes);
    c.scratch = bench_alloc(fbytes + 2 * BENCH_DST_SKEW);
    c.payload = bench_alloc(payload_bytes);
    c.regs = calloc(ZC_ROWS_SCATTERED, sizeof *c.regs);
    theus_region *scattered = c.regs;
    if (!mirror || !c.scratch || !c.payload || !c.regs) {
        note_error(scenario, "out of memory for a %s field", fb);
        goto out;
    }
    char fields[160];
    snprintf(fields, sizeof fields,
             "\"x\": {\"dtype\": \"f32\", \"shape\": [%zu, %d], \"placement\": \"host\"}", nrows,
             (int)ZC_ROW_ELEMS);
    for (size_t i = 0; i < fbytes / 4; i++)
        mirror[i] = (float)(i % 1000);
    if (state_with(scenario, fields, &c.st) != THEUS_OK)
        goto out;
    if (theus_state_init_field(c.st, "x", mirror, THEUS_MEM_HOST) != THEUS_OK) {
        note_error(scenario, "theus_state_init_field: %s", theus_last_error_message());
        goto out;
    }
    for (size_t j = 0; j < payload_bytes / 4; j++)
        c.payload[j] = (float)(j % 997 + 1);
    uint64_t s = bench.seed ^ 0x2e40c0b1;

    /* 1% of the field as one region of whole rows at a random place. */
    theus_region block;
    memset(&block, 0, sizeof block);
    block.ndim = 2;
    block.start[0] = (int64_t)(rng_next(&s) % (nrows - block_rows + 1));
    block.stop[0] = block.start[0] + (int64_t)block_rows;
    block.stop[1] = ZC_ROW_ELEMS;
    c.regs = &block;
    c.nregs = 1;
    c.region_bytes = block_rows * row_bytes;
    const zc_kind one_kinds[] = {ZC_WRITE, ZC_WRITE_BORROWED};
    if (zc_case(&c, "1 region, 1%", one_kinds, 2, 1.1, ZC_WRITE_BORROWED, mirror, fbytes))
        goto out;

    /* 1,000 rows of 4 KiB, one per stretch of the field, in ascending order. */
    const size_t nscat = nrows < ZC_ROWS_SCATTERED ? nrows : ZC_ROWS_SCATTERED;
    const size_t stretch = nrows / nscat;
    for (size_t i = 0; i < nscat; i++) {
        theus_region *r = &scattered[i];
        memset(r, 0, sizeof *r);
        r->ndim = 2;
        r->start[0] = (int64_t)(i * stretch + rng_next(&s) % stretch);
        r->stop[0] = r->start[0] + 1;
        r->stop[1] = ZC_ROW_ELEMS;
    }
    c.regs = scattered;
    c.nregs = nscat;
    c.region_bytes = row_bytes;
    const zc_kind row_kinds[] = {ZC_WRITE, ZC_WRITE_BORROWED, ZC_REGIONS, ZC_REGIONS_BORROWED};
    char casename[48];
    snprintf(casename, sizeof casename, "%zu rows of 4KiB", nscat);
    if (zc_case(&c, casename, row_kinds, 4, 1.2, ZC_REGIONS_BORROWED, mirror, fbytes))
        goto out;
    rc = 0;
out:
    theus_state_destroy(c.st);
    free(scattered);
    bench_free(mirror, fbytes);
    bench_free(c.scratch, fbytes + 2 * BENCH_DST_SKEW);
    bench_free(c.payload, payload_bytes);
    return rc;
}
