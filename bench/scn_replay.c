/* replay.copy / replay.add on the CPU: apply a batch of region deltas to an f32 field much
 * larger than the LLC. Each cell of the sweep (segment size x count x placement) times
 *   theus.replay   the CPU backend's replay of the batch (backend_cpu()->iface->replay),
 *   theus.commit   theus_tx_commit of the same batch staged through the public API,
 *   baseline       a per-segment memcpy (copy) or add loop (add) over the same segments,
 *   ceiling        one packed memcpy / add of the same bytes: the fastest of one call, 64 KiB
 *                  calls and streaming stores (copy), and of the same split over as many
 *                  threads as theus's replay may use (replay_pool_threads(), on theus's own
 *                  worker pool),
 * and checks theus's field against the baseline's (replay) and against a mirror (commit).
 * The replay field is allocated by the CPU backend itself (huge pages for large fields);
 * the baseline and ceiling buffers get the same huge-page advice, so that ratios compare
 * code, not page sizes. */
#include "bench.h"
#include "backend.h"
#include "replay_pool.h"
#include "theus/theus.h"
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef bench_seg seg;

typedef struct replay_ctx {
    int add;
    size_t field_bytes, nelems;
    float *ref, *rep, *mirror, *scratch;   /* baseline field, replay field, commit mirror */
    int threads;                           /* replay_pool_threads() for this run */
    float *packed, *dst;                   /* payload, ceiling destination */
    float *dst_base;                       /* dst's buffer (dst is BENCH_DST_SKEW into it) */
    theus_state *st;
    theus_region frame;
    seg *segs;
    size_t count;
    size_t payload;
    replay_op *ops;
    theus_tx *tx;                           /* staged by prep, committed by run */
    bench_stage_times stage;
    const char *scenario;
} replay_ctx;

static void add_f32(float *restrict d, const float *restrict s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] += s[i];
}

/* ---- the timed operations ------------------------------------------------------------- */

static int run_replay(void *p)
{
    replay_ctx *c = p;
    const theus_backend *b = backend_cpu();
    return b->iface->replay(b->ctx, c->ops, c->count);
}

static int run_loop(void *p)
{
    replay_ctx *c = p;
    char *f = (char *)c->ref;
    const char *src = (const char *)c->packed;
    if (c->add) {
        for (size_t i = 0; i < c->count; i++)
            add_f32((float *)(void *)(f + c->segs[i].off),
                    (const float *)(const void *)(src + c->segs[i].poff), c->segs[i].size / 4);
    } else {
        for (size_t i = 0; i < c->count; i++)
            memcpy(f + c->segs[i].off, src + c->segs[i].poff, c->segs[i].size);
    }
    return 0;
}

static int run_ceiling(void *p)
{
    replay_ctx *c = p;
    if (c->add)
        add_f32(c->dst, c->packed, c->payload / 4);
    else
        memcpy(c->dst, c->packed, c->payload);
    return 0;
}

/* The same packed copy in 64 KiB calls: glibc's memcpy switches to non-temporal stores for
 * large calls, and which of the two is faster depends on the machine, so the ceiling is the
 * faster of both. */
#define CHUNK ((size_t)64 << 10)
static int run_ceiling_chunked(void *p)
{
    replay_ctx *c = p;
    char *d = (char *)c->dst;
    const char *s = (const char *)c->packed;
    for (size_t o = 0; o < c->payload; o += CHUNK)
        memcpy(d + o, s + o, c->payload - o < CHUNK ? c->payload - o : CHUNK);
    return 0;
}

/* The packed copy with streaming (non-temporal) stores for whole destination lines, as
 * theus's replay writes large fields: the copy without write-allocate traffic. */
static int run_ceiling_stream(void *p)
{
    replay_ctx *c = p;
    bench_copy_stream(c->dst, c->packed, c->payload);
    return 0;
}

/* The packed copy or add split over the replay pool's threads: part t of nt takes a
 * contiguous 1/nt of the payload (cut at 64-byte boundaries); copies in 64 KiB memcpy calls
 * (@how 1) or with streaming stores (@how 2). */
typedef struct ceil_job {
    replay_ctx *c;
    int how;
} ceil_job;

static void ceiling_part(void *arg, int t, int nt)
{
    const ceil_job *j = arg;
    const replay_ctx *c = j->c;
    const size_t n = c->payload;
    const size_t lo = n / 64 * (size_t)t / (size_t)nt * 64;
    const size_t hi = t + 1 == nt ? n : n / 64 * (size_t)(t + 1) / (size_t)nt * 64;
    char *d = (char *)c->dst;
    const char *s = (const char *)c->packed;
    if (c->add)
        add_f32((float *)(void *)(d + lo), (const float *)(const void *)(s + lo), (hi - lo) / 4);
    else if (j->how == 2)
        bench_copy_stream(d + lo, s + lo, hi - lo);
    else
        for (size_t o = lo; o < hi; o += CHUNK)
            memcpy(d + o, s + o, hi - o < CHUNK ? hi - o : CHUNK);
}

static int run_ceiling_threads_(replay_ctx *c, int how)
{
    ceil_job j = {.c = c, .how = how};
    if (replay_pool_run(c->threads, ceiling_part, &j) != c->threads) {
        note_error(c->scenario, "the threaded ceiling could not start %d threads", c->threads);
        return -1;
    }
    return 0;
}

static int run_ceiling_threads(void *p)   /* add: the add loop; copy: 64 KiB calls */
{
    return run_ceiling_threads_(p, 1);
}

static int run_ceiling_threads_stream(void *p)
{
    return run_ceiling_threads_(p, 2);
}

static void seg_region(const seg *s, theus_region *r)
{
    memset(r, 0, sizeof *r);
    r->ndim = 1;
    r->start[0] = (int64_t)(s->off / 4);
    r->stop[0] = (int64_t)((s->off + s->size) / 4);
}

static int prep_commit(void *p)
{
    replay_ctx *c = p;
    uint64_t t0 = now_ns();
    int rc = theus_tx_begin(c->st, NULL, &c->tx);
    if (rc != THEUS_OK) {
        note_error(c->scenario, "theus_tx_begin: %s", theus_strerror(rc));
        return -1;
    }
    const char *src = (const char *)c->packed;
    for (size_t i = 0; i < c->count; i++) {
        theus_region r;
        seg_region(&c->segs[i], &r);
        const void *pl = src + c->segs[i].poff;
        rc = c->add ? theus_tx_add(c->tx, "x", &r, pl, THEUS_MEM_HOST)
                    : theus_tx_write(c->tx, "x", &r, pl, THEUS_MEM_HOST);
        if (rc != THEUS_OK) {
            note_error(c->scenario, "staging delta %zu: %s (%s)", i, theus_strerror(rc),
                       theus_last_error_message());
            theus_tx_abort(c->tx);
            c->tx = NULL;
            return -1;
        }
    }
    bench_stage_add(&c->stage, t0);
    return 0;
}

static int run_commit(void *p)
{
    replay_ctx *c = p;
    return bench_commit_staged(c->scenario, &c->tx);
}

/* ---- batches ------------------------------------------------------------------------------ */


/* ---- one cell ---------------------------------------------------------------------------- */

static double gbps(double bytes, const measurement *m)
{
    return bytes / m->st.median * 1e-9;
}

static int read_field(replay_ctx *c, float *dst)
{
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(c->st, NULL, &tx);
    if (rc == THEUS_OK)
        rc = theus_tx_read(tx, "x", NULL, dst, THEUS_MEM_HOST);
    if (tx)
        theus_tx_abort(tx);
    if (rc != THEUS_OK)
        note_error(c->scenario, "reading the field back: %s", theus_strerror(rc));
    return rc == THEUS_OK ? 0 : -1;
}

static bench_result *row(const replay_ctx *c, const char *casename, const char *method,
                         const measurement *m, double bytes, uint32_t size, const char *place,
                         int threads)
{
    bench_result *r = result_add(c->scenario, "cpu", casename, method);
    result_set(r, m, bytes, (double)c->count, "segment");
    if (size)
        result_param(r, "seg_bytes", size);
    else
        result_param_str(r, "seg_bytes", "mixed");
    result_param(r, "count", (double)c->count);
    result_param_str(r, "placement", place);
    result_param(r, "payload_bytes", (double)c->payload);
    result_param(r, "field_bytes", (double)c->field_bytes);
    result_param_str(r, "dtype", "f32");
    result_param(r, "threads", threads);
    return r;
}

static int run_cell(replay_ctx *c, uint32_t size, const char *sizename, const char *place,
                    uint64_t cellseed)
{
    char casename[96], cnt[16], pay[16];
    fmt_count((double)c->count, cnt, sizeof cnt);
    snprintf(casename, sizeof casename, "seg=%s count=%s %s", sizename, cnt, place);
    const double bytes = (double)c->payload * (c->add ? 3.0 : 2.0);
    const int failures_before = bench.failures;

    /* Payload: small integers, exact in f32 however many times they are added. */
    const size_t pn = c->payload / 4;
    for (size_t j = 0; j < pn; j++)
        c->packed[j] = (float)((j + cellseed) % 7 + 1);
    for (size_t i = 0; i < c->count; i++) {
        const seg *s = &c->segs[i];
        c->ops[i].op = c->add ? DELTA_ADD : DELTA_ASSIGN;
        c->ops[i].dtype = THEUS_DTYPE_F32;
        c->ops[i].base = c->rep;
        c->ops[i].frame = &c->frame;
        seg_region(s, &c->ops[i].sub);
        c->ops[i].payload = (const char *)c->packed + s->poff;
        c->ops[i].batch = NULL;
    }

    /* Check replay against the baseline: both fields were equal before this cell. */
    run_replay(c);
    run_loop(c);
    size_t bad = bench_first_diff(c->rep, c->ref, c->nelems);
    if (!note_check(c->scenario, casename, bad == SIZE_MAX,
                    "theus replay vs %s baseline: %s", c->add ? "add-loop" : "memcpy-loop",
                    bad == SIZE_MAX ? "identical field" : "fields differ"))
        fprintf(stderr, "  first difference at element %zu: theus %g, baseline %g\n", bad,
                (double)c->rep[bad], (double)c->ref[bad]);

    const size_t ws = 2 * c->payload + c->count * (sizeof(replay_op) + sizeof(seg));
    const int flush = llc_would_hold(ws);
    /* The threads theus's replay uses for this batch (the commit's batch has the same
     * segments, so the same count). */
    const int used = backend_cpu_replay_threads(c->ops, c->count);
    enum { REP, LOOP, CEIL, COMMIT, CEIL2, CEILNT, CEILT, CEILTNT, NOPS };
    measurement ms[NOPS];
    bench_op all[NOPS] = {
        [REP] = {.ctx = c, .run = run_replay, .flush = flush},
        [LOOP] = {.ctx = c, .run = run_loop, .flush = flush},
        [CEIL] = {.ctx = c, .run = run_ceiling, .flush = flush},
        [COMMIT] = {.ctx = c, .prep = prep_commit, .run = run_commit, .flush = flush},
        [CEIL2] = {.ctx = c, .run = run_ceiling_chunked, .flush = flush},
        [CEILNT] = {.ctx = c, .run = run_ceiling_stream, .flush = flush},
        [CEILT] = {.ctx = c, .run = run_ceiling_threads, .flush = flush},
        [CEILTNT] = {.ctx = c, .run = run_ceiling_threads_stream, .flush = flush},
    };
    /* The ceilings of this cell: one packed call; copies also in 64 KiB calls and with
     * streaming stores; with more than one replay thread, the add and the copy (64 KiB
     * calls, streaming) split over that many threads. */
    int have[NOPS] = {[REP] = 1, [LOOP] = 1, [CEIL] = 1, [COMMIT] = 1};
    have[CEIL2] = have[CEILNT] = !c->add;
    have[CEILT] = c->threads > 1;
    have[CEILTNT] = !c->add && c->threads > 1;
    bench_op ops[NOPS];
    measurement got[NOPS];
    size_t nops = 0, slot[NOPS] = {0};
    for (int i = 0; i < NOPS; i++)
        if (have[i]) {
            slot[i] = nops;
            ops[nops++] = all[i];
        }
    c->stage.n = 0;
    if (measure_set(ops, nops, got))
        return -1;
    memset(ms, 0, sizeof ms);
    for (int i = 0; i < NOPS; i++)
        if (have[i])
            ms[i] = got[slot[i]];
    const measurement *m_rep = &ms[REP], *m_loop = &ms[LOOP], *m_ceil = &ms[CEIL];
    const measurement *m_commit = &ms[COMMIT];
    for (int i = CEIL2; i < NOPS; i++)
        if (have[i] && ms[i].st.median < m_ceil->st.median)
            m_ceil = &ms[i];

    /* The replay field takes the baseline's segments again, so that both agree for the next
     * cell (they were added to a different number of times). */
    for (size_t i = 0; i < c->count; i++)
        memcpy((char *)c->rep + c->segs[i].off, (char *)c->ref + c->segs[i].off, c->segs[i].size);
    /* Check the state: the mirror receives what the commits applied. */
    const float k = (float)m_commit->runs;
    for (size_t i = 0; i < c->count; i++) {
        const seg *s = &c->segs[i];
        float *d = c->mirror + s->off / 4;
        const float *src = c->packed + s->poff / 4;
        if (c->add)
            for (size_t j = 0; j < s->size / 4; j++)
                d[j] += k * src[j];
        else
            memcpy(d, src, s->size);
    }
    if (read_field(c, c->scratch) != 0)
        return -1;
    bad = bench_first_diff(c->scratch, c->mirror, c->nelems);
    if (!note_check(c->scenario, casename, bad == SIZE_MAX,
                    "theus_tx_commit x%u vs mirror: %s", m_commit->runs,
                    bad == SIZE_MAX ? "identical field" : "fields differ"))
        fprintf(stderr, "  first difference at element %zu: theus %g, expected %g\n", bad,
                (double)c->scratch[bad], (double)c->mirror[bad]);

    /* Staging time: the prep calls that preceded the timed commits. */
    measurement m_stage, m_tx;
    bench_stage_split(&c->stage, m_commit, &m_stage, &m_tx);

    const double g_rep = gbps(bytes, m_rep), g_loop = gbps(bytes, m_loop);
    const double g_ceil = gbps(bytes, m_ceil), g_commit = gbps(bytes, m_commit);
    const double g_tx = gbps(bytes, &m_tx);
    bench_result *r;
    r = row(c, casename, "theus.replay", m_rep, bytes, size, place, used);
    result_metric(r, "pct_of_ceiling", 100 * g_rep / g_ceil);
    result_metric(r, "ratio_vs_baseline", g_rep / g_loop);
    row(c, casename, c->add ? "baseline.add_loop" : "baseline.memcpy_loop", m_loop, bytes, size,
        place, 1);
    static const char *const ceil_name[2][NOPS] = {
        {[CEIL] = "ceiling.packed_memcpy", [CEIL2] = "ceiling.packed_memcpy_64KiB_calls",
         [CEILNT] = "ceiling.packed_stream", [CEILT] = "ceiling.packed_memcpy_64KiB_threads",
         [CEILTNT] = "ceiling.packed_stream_threads"},
        {[CEIL] = "ceiling.packed_add", [CEILT] = "ceiling.packed_add_threads"},
    };
    for (int i = CEIL; i < NOPS; i++) {
        if (!have[i] || i == COMMIT)
            continue;
        r = row(c, casename, ceil_name[c->add][i], &ms[i], bytes, size, place,
                i >= CEILT ? c->threads : 1);
        result_metric(r, "is_ceiling", m_ceil == &ms[i]);
    }
    r = row(c, casename, "theus.commit", m_commit, bytes, size, place, used);
    result_metric(r, "pct_of_ceiling", 100 * g_commit / g_ceil);
    result_metric(r, "ratio_vs_baseline", g_commit / g_loop);
    result_metric(r, "ratio_vs_replay", g_commit / g_rep);
    r = row(c, casename, "theus.stage", &m_stage, 0, size, place, 1);
    r = row(c, casename, "theus.tx", &m_tx, bytes, size, place, used);
    result_metric(r, "ratio_vs_baseline", g_tx / g_loop);

    char chart[64], series[64];
    snprintf(chart, sizeof chart, "%s-%s", c->scenario, sizename);
    char title[128];
    snprintf(title, sizeof title, "%s, %s segments, f32 field of %s (CPU)", c->scenario,
             sizename, fmt_bytes((double)c->field_bytes, pay, sizeof pay));
    plot_axes(chart, title, "segments per batch", c->add ? "GB/s (read+write, 3P)"
                                                         : "GB/s (read+write, 2P)", 1, 0);
    snprintf(series, sizeof series, "theus replay, %s", place);
    plot_point(chart, series, (double)c->count, g_rep);
    snprintf(series, sizeof series, "theus commit, %s", place);
    plot_point(chart, series, (double)c->count, g_commit);
    snprintf(series, sizeof series, "per-segment loop, %s", place);
    plot_point(chart, series, (double)c->count, g_loop);
    snprintf(series, sizeof series, "packed ceiling, %s", place);
    plot_point(chart, series, (double)c->count, g_ceil);

    printf("%-6s %5s %-6s %8s | %6.2f %5.0f%% %7.1f%s %3d | %6.2f %5.2fx | %6.2f%s | %6.2f "
           "%5.0f%% %5.2fx | %6.2f | %s\n",
           sizename, cnt, place, fmt_bytes((double)c->payload, pay, sizeof pay), g_rep,
           100 * g_rep / g_ceil, (double)c->count / m_rep->st.median * 1e-6,
           m_rep->st.stable ? " " : "~", used, g_loop, g_rep / g_loop, g_ceil,
           m_ceil >= &ms[CEILT] ? "t" : " ", g_commit,
           100 * g_commit / g_ceil, g_commit / g_loop, g_tx,
           bench.failures != failures_before ? "CHECK FAILED" : "ok");
    fflush(stdout);
    return 0;
}

/* ---- the scenario ------------------------------------------------------------------------ */

/* One cell of the grid (bench_replay_grid). */
static int grid_cell(void *user, size_t count, size_t payload, uint32_t size, const char *sizename,
                     const char *place, uint64_t cellseed)
{
    replay_ctx *c = user;
    c->count = count;
    c->payload = payload;
    return run_cell(c, size, sizename, place, cellseed);
}

static size_t pick_field_bytes(void)
{
    size_t f = bench.quick ? (size_t)128 << 20 : (size_t)1 << 30;
    if (bench.max_field && bench.max_field < f)
        f = bench.max_field;
    /* Five field-sized buffers (baseline, replay, mirror, read-back, the state's own), three
     * payload-sized ones at most (payload, ceiling destination, staged copies) and the op
     * table must fit in 80% of the available memory. */
    while (f > ((size_t)64 << 20) && 8 * f + ((size_t)512 << 20) > bench.mem_avail / 10 * 8)
        f /= 2;
    return f;
}

int scn_replay(int add)
{
    const char *scenario = add ? "replay.add" : "replay.copy";
    /* The grid (bench_replay_grid, shared with the GPU side): 1k and 10k with --quick. */
    const size_t nquick = 2;
    size_t maxcount = bench_replay_grid_max(nquick);

    replay_ctx c;
    memset(&c, 0, sizeof c);
    c.add = add;
    c.scenario = scenario;
    c.field_bytes = pick_field_bytes();
    c.threads = replay_pool_threads();
    c.nelems = c.field_bytes / 4;
    memset(&c.frame, 0, sizeof c.frame);
    c.frame.ndim = 1;
    c.frame.stop[0] = (int64_t)c.nelems;

    char fb[16], what[192];
    snprintf(what, sizeof what, "%s a batch of f32 region deltas into a %s host field; "
             "GB/s count %s", add ? "add" : "copy", fmt_bytes((double)c.field_bytes, fb, sizeof fb),
             add ? "3 x payload (read field, read payload, write field)"
                 : "2 x payload (read payload, write field)");
    print_header(scenario, "cpu", what);
    printf("%-6s %5s %-6s %8s | %-25s | %-13s | %-7s | %-20s | %-6s |\n", "seg", "count", "place",
           "payload", "theus replay", add ? "add loop" : "memcpy loop", "ceil", "theus commit (API)",
           "tx");
    printf("%-6s %5s %-6s %8s | %6s %6s %7s  %3s | %6s %6s | %6s  | %6s %6s %6s | %6s |\n", "",
           "", "", "", "GB/s", "%ceil", "Mseg/s", "thr", "GB/s", "theus/", "GB/s", "GB/s",
           "%ceil", "/loop", "GB/s");
    printf("(thr: threads of theus's replay for the batch; ceil t: the threaded packed %s was "
           "fastest)\n", add ? "add" : "copy");

    int rc = -1;
    char schema[256];
    snprintf(schema, sizeof schema,
             "{\"name\": \"bench-replay\", \"fields\": {\"x\": {\"dtype\": \"f32\", "
             "\"shape\": [%zu], \"placement\": \"host\"}}}", c.nelems);
    /* The replay field is host field memory from the CPU backend, as a state's field is. */
    const theus_backend *cpu = backend_cpu();
    void *repmem = NULL;
    if (cpu->iface->alloc(cpu->ctx, THEUS_PLACEMENT_HOST, c.field_bytes, &repmem) == THEUS_OK)
        c.rep = repmem;
    c.ref = bench_alloc_huge(c.field_bytes);
    c.mirror = bench_alloc(c.field_bytes);
    c.scratch = bench_alloc(c.field_bytes);
    c.packed = bench_alloc_huge(c.field_bytes);
    c.dst_base = bench_alloc_huge(c.field_bytes + 2 * BENCH_DST_SKEW);
    c.dst = c.dst_base ? c.dst_base + BENCH_DST_SKEW / sizeof(float) : NULL;
    c.segs = malloc(maxcount * sizeof *c.segs);
    c.ops = malloc(maxcount * sizeof *c.ops);
    if (!c.ref || !c.rep || !c.mirror || !c.scratch || !c.packed || !c.dst || !c.segs || !c.ops) {
        note_error(scenario, "out of memory for a %s field", fb);
        goto out;
    }
    for (size_t i = 0; i < c.nelems; i++)
        c.ref[i] = (float)(i % 1000);
    memcpy(c.rep, c.ref, c.field_bytes);
    memcpy(c.mirror, c.ref, c.field_bytes);
    int trc = theus_state_create(schema, NULL, &c.st);
    if (trc == THEUS_OK)
        trc = theus_state_init_field(c.st, "x", c.ref, THEUS_MEM_HOST);
    if (trc != THEUS_OK) {
        note_error(scenario, "creating the state: %s (%s)", theus_strerror(trc),
                   theus_last_error_message());
        goto out;
    }

    if (bench_replay_grid(scenario, "cpu", add, nquick, c.segs, c.field_bytes, fb, grid_cell, &c))
        goto out;
    rc = 0;
out:
    if (c.tx)
        theus_tx_abort(c.tx);
    theus_state_destroy(c.st);
    bench_free(c.ref, c.field_bytes);
    if (c.rep)
        cpu->iface->free(cpu->ctx, THEUS_PLACEMENT_HOST, c.rep);
    bench_free(c.mirror, c.field_bytes);
    bench_free(c.scratch, c.field_bytes);
    bench_free(c.packed, c.field_bytes);
    bench_free(c.dst_base, c.field_bytes + 2 * BENCH_DST_SKEW);
    free(c.segs);
    free(c.ops);
    return rc;
}
