/* theus-bench on the GPU: replay.copy / replay.add. A batch of f32 region deltas onto a
 * device field much larger than L2: theus's CUDA replay (backend_cuda()->iface->replay, the
 * payloads staged in device memory) and the full commit through the public API, against
 * cudaMemcpyAsync per segment, cudaMemcpyBatchAsync, cub::DeviceMemcpy::Batched, a simple
 * warp-per-segment kernel, and a streaming kernel over the same bytes packed (the ceiling).
 * Timing and checks as described in gpu_common.cuh; every result is checked bit for bit. */
#include "gpu_common.cuh"

#include <cub/device/device_memcpy.cuh>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A simple batched kernel: one warp per segment, 16 bytes a lane. */
template <bool ADD>
static __global__ void k_warp_segs(char *__restrict__ field, const char *__restrict__ pay,
                            const uint64_t *__restrict__ off, const uint64_t *__restrict__ poff,
                            const uint32_t *__restrict__ size, size_t n)
{
    const size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const size_t nwarps = ((size_t)gridDim.x * blockDim.x) / 32;
    const unsigned lane = threadIdx.x & 31u;
    for (size_t s = warp; s < n; s += nwarps) {
        const uint32_t words = size[s] / 16;
        char *d = field + off[s];
        const char *p = pay + poff[s];
        for (uint32_t w = lane; w < words; w += 32) {
            if (ADD)
                ((float4 *)d)[w] = add4(((const float4 *)d)[w], ((const float4 *)p)[w]);
            else
                ((uint4 *)d)[w] = ((const uint4 *)p)[w];
        }
    }
}



typedef struct rctx {
    int add;
    const char *scn;
    size_t field_bytes, nelems, maxcount;
    /* device */
    char *A;            /* theus replay's field */
    char *B;            /* the baselines' field */
    char *O;            /* a saved copy of A, for the baselines' checks */
    char *C;            /* the ceiling's destination */
    char *Pd;           /* the packed payload */
    void **d_src, **d_dst;
    uint32_t *d_size;
    uint64_t *d_off, *d_poff;
    theus_batch_segment *d_bseg;  /* the batch as theus_tx_stage_batch takes it (elements) */
    void *cub_tmp;
    size_t cub_cap, cub_bytes;
    /* host */
    float *H;           /* mirror of A */
    float *HS;          /* mirror of the state's field */
    float *Ph;          /* payload */
    float *R;           /* read-back */
    int R_pinned;
    bench_seg *segs;
    void **h_src, **h_dst;       /* cudaMemcpyBatchAsync's arrays */
    size_t *h_size;
    unsigned char *hp;           /* pinned upload area: src, dst, size / off, poff, size */
    size_t hp_bytes;
    int hp_pinned;
    /* the cell */
    size_t count, payload;
    void *ops;
    theus_state *st;
    theus_tx *tx;
} rctx;

/* Pinned upload area, per segment: source and destination pointers (cub), field and
 * payload offsets (warp kernel), then the sizes twice (cub, warp kernel). */
#define HP_PER_SEG 40

static void **hp_src(rctx *c)
{
    return (void **)(void *)c->hp;
}

static void **hp_dst(rctx *c)
{
    return (void **)(void *)(c->hp + 8 * c->maxcount);
}

static uint64_t *hp_off(rctx *c)
{
    return (uint64_t *)(void *)(c->hp + 16 * c->maxcount);
}

static uint64_t *hp_poff(rctx *c)
{
    return (uint64_t *)(void *)(c->hp + 24 * c->maxcount);
}

static uint32_t *hp_size(rctx *c)
{
    return (uint32_t *)(void *)(c->hp + 32 * c->maxcount);
}

static uint32_t *hp_size2(rctx *c)
{
    return (uint32_t *)(void *)(c->hp + 36 * c->maxcount);
}

/* ---- the timed operations ---- */

static int r_theus(void *p, double *secs)
{
    rctx *c = (rctx *)p;
    if (t_begin_sync(1))
        return -1;
    int rc = glue_replay(c->ops, c->count);
    if (rc != THEUS_OK)
        return theus_fail(rc, "backend_cuda()->iface->replay");
    return t_end(secs);
}

static int r_commit_prep(void *p)
{
    rctx *c = (rctx *)p;
    return gpu_stage_segs(c->st, &c->tx, c->add, c->segs, c->count, c->Pd);
}

static int r_commit(void *p, double *secs)
{
    return gpu_commit_timed(&((rctx *)p)->tx, secs);
}

/* The described batch: begin a transaction (untimed) ... */
static int r_desc_prep(void *p)
{
    rctx *c = (rctx *)p;
    return gpu_stage_segs(c->st, &c->tx, 0, NULL, 0, NULL);
}

/* ... then, timed, stage the segment array and payload from device memory in one call
 * (summary kernel, one small copy back) and commit (one replay launch). */
static int r_desc(void *p, double *secs)
{
    rctx *c = (rctx *)p;
    if (t_begin_sync(1))
        return -1;
    int rc = theus_tx_stage_batch(c->tx, "x", c->add ? THEUS_OP_ADD : THEUS_OP_ASSIGN, c->d_bseg,
                                  c->count, c->Pd, c->payload / 4, THEUS_MEM_DEVICE);
    if (rc != THEUS_OK)
        return theus_fail(rc, "theus_tx_stage_batch");
    theus_tx *tx = c->tx;
    c->tx = NULL;
    CKT(theus_tx_commit(tx, NULL), "theus_tx_commit");
    return t_end(secs);
}

static int r_loop(void *p, double *secs)
{
    rctx *c = (rctx *)p;
    if (t_begin(1))
        return -1;
    for (size_t i = 0; i < c->count; i++) {
        const bench_seg *s = &c->segs[i];
        if (c->add) {
            enqueue_add(c->B + s->off, c->Pd + s->poff, s->size);
        } else {
            CK(cudaMemcpyAsync(c->B + s->off, c->Pd + s->poff, s->size, cudaMemcpyDeviceToDevice,
                               G.s));
        }
    }
    CK(cudaGetLastError());
    return t_end(secs);
}

#if CUDART_VERSION >= 12080
static cudaError_t batch_copy(rctx *c)
{
    struct cudaMemcpyAttributes a;
    memset(&a, 0, sizeof a);
    a.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    a.srcLocHint.type = cudaMemLocationTypeDevice;
    a.srcLocHint.id = G.device;
    a.dstLocHint = a.srcLocHint;
    a.flags = 0;
    size_t idx = 0;
#if CUDART_VERSION >= 13000
    return cudaMemcpyBatchAsync(c->h_dst, c->h_src, c->h_size, c->count, &a, &idx, 1, G.s);
#else
    size_t fail = 0;
    return cudaMemcpyBatchAsync(c->h_dst, c->h_src, c->h_size, c->count, &a, &idx, 1, &fail, G.s);
#endif
}
#endif

static int r_batch(void *p, double *secs)
{
#if CUDART_VERSION >= 12080
    rctx *c = (rctx *)p;
    if (t_begin(1))
        return -1;
    CK(batch_copy(c));
    return t_end(secs);
#else
    (void)p;
    (void)secs;
    note_error(gpu_scn, "cudaMemcpyBatchAsync needs CUDA 12.8");
    return -1;
#endif
}

static int r_cub(void *p, double *secs)
{
    rctx *c = (rctx *)p;
    if (t_begin(1))
        return -1;
    /* The batch's description comes from the host, as theus's does. */
    CK(cudaMemcpyAsync(c->d_src, hp_src(c), 8 * c->count, cudaMemcpyHostToDevice, G.s));
    CK(cudaMemcpyAsync(c->d_dst, hp_dst(c), 8 * c->count, cudaMemcpyHostToDevice, G.s));
    CK(cudaMemcpyAsync(c->d_size, hp_size(c), 4 * c->count, cudaMemcpyHostToDevice, G.s));
    size_t bytes = c->cub_bytes;
    CK(cub::DeviceMemcpy::Batched(c->cub_tmp, bytes, c->d_src, c->d_dst, c->d_size,
                                  (::cuda::std::int64_t)c->count, G.s));
    return t_end(secs);
}

/* cub with the batch's description already in device memory (cub's best case). */
static int r_cub_dev(void *p, double *secs)
{
    rctx *c = (rctx *)p;
    if (t_begin(1))
        return -1;
    size_t bytes = c->cub_bytes;
    CK(cub::DeviceMemcpy::Batched(c->cub_tmp, bytes, c->d_src, c->d_dst, c->d_size,
                                  (::cuda::std::int64_t)c->count, G.s));
    return t_end(secs);
}

static int r_warp(void *p, double *secs)
{
    rctx *c = (rctx *)p;
    if (t_begin(1))
        return -1;
    CK(cudaMemcpyAsync(c->d_off, hp_off(c), 8 * c->count, cudaMemcpyHostToDevice, G.s));
    CK(cudaMemcpyAsync(c->d_poff, hp_poff(c), 8 * c->count, cudaMemcpyHostToDevice, G.s));
    CK(cudaMemcpyAsync(c->d_size + c->maxcount, hp_size2(c), 4 * c->count,
                       cudaMemcpyHostToDevice, G.s));
    const unsigned grid = grid_for(c->count * 32, 256, 8);
    if (c->add)
        k_warp_segs<true><<<grid, 256, 0, G.s>>>(c->B, c->Pd, c->d_off, c->d_poff,
                                                 c->d_size + c->maxcount, c->count);
    else
        k_warp_segs<false><<<grid, 256, 0, G.s>>>(c->B, c->Pd, c->d_off, c->d_poff,
                                                  c->d_size + c->maxcount, c->count);
    CK(cudaGetLastError());
    return t_end(secs);
}

static int r_ceil_kernel(void *p, double *secs)
{
    rctx *c = (rctx *)p;
    if (t_begin(1))
        return -1;
    if ((c->add ? launch_add(c->C, c->Pd, c->payload) : launch_copy(c->C, c->Pd, c->payload)))
        return -1;
    return t_end(secs);
}

static int r_ceil_memcpy(void *p, double *secs)
{
    rctx *c = (rctx *)p;
    if (t_begin(1))
        return -1;
    CK(cudaMemcpyAsync(c->C, c->Pd, c->payload, cudaMemcpyDeviceToDevice, G.s));
    return t_end(secs);
}

/* ---- one cell ---- */

/* Apply the batch @k times to a host mirror. All values stay small integers (exact in f32),
 * so k adds equal one add of k times the payload. */
static void mirror_apply(const rctx *c, float *m, unsigned k)
{
    for (size_t i = 0; i < c->count; i++) {
        const bench_seg *s = &c->segs[i];
        float *d = m + s->off / 4;
        const float *src = c->Ph + s->poff / 4;
        if (c->add) {
            const float fk = (float)k;
            for (size_t j = 0; j < s->size / 4; j++)
                d[j] += fk * src[j];
        } else {
            memcpy(d, src, s->size);
        }
    }
}

enum { M_REP, M_COMMIT, M_DESC, M_LOOP, M_BATCH, M_CUB, M_CUB_DEV, M_WARP, M_CEIL, M_CEIL2, M_N };

static const char *method_name(int add, int m)
{
    switch (m) {
    case M_REP: return "theus.replay";
    case M_COMMIT: return "theus.commit";
    case M_DESC: return "theus.batch_commit";
    case M_LOOP: return add ? "baseline.add_kernel_per_segment" : "baseline.memcpy_async_loop";
    case M_BATCH: return "baseline.memcpy_batch_async";
    case M_CUB: return "baseline.cub_memcpy_batched";
    case M_CUB_DEV: return "baseline.cub_memcpy_batched_device_args";
    case M_WARP: return "baseline.warp_per_segment_kernel";
    case M_CEIL: return add ? "ceiling.stream_add_kernel" : "ceiling.stream_copy_kernel";
    default: return "ceiling.memcpy_async_packed";
    }
}

static int check_host(rctx *c, const char *casename, const char *what, const float *expect)
{
    size_t bad = bench_first_diff(c->R, expect, c->nelems);
    if (!note_check(c->scn, casename, bad == SIZE_MAX, "%s vs host reference: %s", what,
                    bad == SIZE_MAX ? "identical field" : "fields differ"))
        fprintf(stderr, "  first difference at element %zu: GPU %g, expected %g\n", bad,
                (double)c->R[bad], (double)expect[bad]);
    return 0;
}

static int run_cell(rctx *c, uint32_t size, const char *sizename, const char *place,
                    uint64_t cellseed, size_t loop_max, size_t batch_max, size_t commit_max)
{
    char casename[96], cnt[16], pay[16];
    fmt_count((double)c->count, cnt, sizeof cnt);
    snprintf(casename, sizeof casename, "seg=%s count=%s %s", sizename, cnt, place);
    const double bytes = (double)c->payload * (c->add ? 3.0 : 2.0);
    const int failures_before = bench.failures;

    /* Payload: small integers, exact in f32 however many times they are added. */
    const size_t pn = c->payload / 4;
    for (size_t j = 0; j < pn; j++)
        c->Ph[j] = (float)((j + cellseed) % 7 + 1);
    CK(cudaMemcpyAsync(c->Pd, c->Ph, c->payload, cudaMemcpyHostToDevice, G.s));
    glue_ops_free(c->ops);
    c->ops = glue_ops_new(c->add, c->A, c->nelems, c->segs, c->count, c->Pd);
    if (!c->ops) {
        note_error(c->scn, "out of memory for %zu replay ops", c->count);
        return -1;
    }
    for (size_t i = 0; i < c->count; i++) {
        const bench_seg *s = &c->segs[i];
        c->h_dst[i] = c->B + s->off;
        c->h_src[i] = c->Pd + s->poff;
        c->h_size[i] = s->size;
        hp_src(c)[i] = c->Pd + s->poff;
        hp_dst(c)[i] = c->B + s->off;
        hp_size(c)[i] = s->size;
        hp_off(c)[i] = s->off;
        hp_poff(c)[i] = s->poff;
        hp_size2(c)[i] = s->size;
    }
    CK(cudaStreamSynchronize(G.s));
    {
        /* The same segments as theus_tx_stage_batch takes them: f32 elements. */
        theus_batch_segment *bs = (theus_batch_segment *)malloc(c->count * sizeof *bs + 1);
        if (!bs) {
            note_error(c->scn, "out of memory for %zu batch segments", c->count);
            return -1;
        }
        for (size_t i = 0; i < c->count; i++) {
            bs[i].dst = (int64_t)(c->segs[i].off / 4);
            bs[i].length = (int64_t)(c->segs[i].size / 4);
            bs[i].src = (int64_t)(c->segs[i].poff / 4);
        }
        cudaError_t e = cudaMemcpy(c->d_bseg, bs, c->count * sizeof *bs, cudaMemcpyHostToDevice);
        free(bs);
        CK(e);
    }

    int use[M_N];
    memset(use, 0, sizeof use);
    use[M_REP] = use[M_WARP] = use[M_CEIL] = 1;
    use[M_COMMIT] = c->count <= commit_max;
    use[M_DESC] = 1;
    use[M_LOOP] = c->count <= loop_max;
    if (!c->add) {
        use[M_CEIL2] = 1;
        /* cub: temporary storage for this count. */
        size_t tb = 0;
        CK(cub::DeviceMemcpy::Batched(NULL, tb, c->d_src, c->d_dst, c->d_size,
                                      (::cuda::std::int64_t)c->count, G.s));
        if (tb > c->cub_cap) {
            dev_free(c->cub_tmp);
            c->cub_tmp = NULL;
            c->cub_cap = 0;
            CK(cudaMalloc(&c->cub_tmp, tb));
            c->cub_cap = tb;
        }
        c->cub_bytes = tb;
        use[M_CUB] = use[M_CUB_DEV] = 1;
        CK(cudaMemcpyAsync(c->d_src, hp_src(c), 8 * c->count, cudaMemcpyHostToDevice, G.s));
        CK(cudaMemcpyAsync(c->d_dst, hp_dst(c), 8 * c->count, cudaMemcpyHostToDevice, G.s));
        CK(cudaMemcpyAsync(c->d_size, hp_size(c), 4 * c->count, cudaMemcpyHostToDevice, G.s));
        CK(cudaStreamSynchronize(G.s));
#if CUDART_VERSION >= 12080
        if (!G.batch_na && c->count <= batch_max) {
            /* Probe: a failure here means n/a (driver, platform or batch size), reported with
             * its reason; not a wrong result. */
            cudaError_t e = batch_copy(c);
            if (e == cudaSuccess)
                e = cudaStreamSynchronize(G.s);
            if (e == cudaSuccess) {
                use[M_BATCH] = 1;
            } else {
                (void)cudaGetLastError();
                snprintf(G.batch_why, sizeof G.batch_why, "cudaMemcpyBatchAsync: %s (%s)",
                         cudaGetErrorName(e), cudaGetErrorString(e));
                printf("  n/a: %s at %s\n", G.batch_why, casename);
                if (e == cudaErrorNotSupported || e == cudaErrorCallRequiresNewerDriver ||
                    e == cudaErrorNotYetImplemented)
                    G.batch_na = 1;   /* not for this process at all */
                /* A sticky error would show here: then the device is lost, and that is an
                 * error of the run. */
                CK(cudaDeviceSynchronize());
            }
        }
#else
        if (!G.batch_na) {
            G.batch_na = 1;
            snprintf(G.batch_why, sizeof G.batch_why,
                     "cudaMemcpyBatchAsync: built with CUDA %d.%d (needs 12.8)",
                     CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
        }
#endif
    }

    int (*const fns[M_N])(void *, double *) = {r_theus, r_commit,  r_desc, r_loop,
                                               r_batch, r_cub,     r_cub_dev,
                                               r_warp,  r_ceil_kernel, r_ceil_memcpy};
    bench_op ops[M_N];
    int idx[M_N];
    size_t nops = 0;
    for (int m = 0; m < M_N; m++) {
        idx[m] = -1;
        if (!use[m])
            continue;
        idx[m] = (int)nops;
        ops[nops++] = mkop(c, m == M_COMMIT ? r_commit_prep : m == M_DESC ? r_desc_prep : NULL,
                           fns[m]);
    }
    measurement ms[M_N];
    if (measure_set(ops, nops, ms))
        return -1;
    const measurement *mm[M_N];
    for (int m = 0; m < M_N; m++)
        mm[m] = idx[m] >= 0 ? &ms[idx[m]] : NULL;

    /* ---- checks ---- */
    /* theus replay: A after all its runs, against the host mirror. */
    mirror_apply(c, c->H, mm[M_REP]->runs);
    CK(cudaMemcpyAsync(c->R, c->A, c->field_bytes, cudaMemcpyDeviceToHost, G.s));
    CK(cudaStreamSynchronize(G.s));
    char what[96];
    snprintf(what, sizeof what, "theus replay x%u", mm[M_REP]->runs);
    check_host(c, casename, what, c->H);
    /* theus commit and the described batch (the same segments, the same state): the
     * state's field after all the commits, against its mirror. */
    if (mm[M_COMMIT] || mm[M_DESC]) {
        const unsigned nc = mm[M_COMMIT] ? mm[M_COMMIT]->runs : 0;
        const unsigned nd = mm[M_DESC] ? mm[M_DESC]->runs : 0;
        mirror_apply(c, c->HS, nc + nd);
        if (read_field(c->st, "x", NULL, c->R))
            return -1;
        snprintf(what, sizeof what, "theus_tx_commit x%u, described batch x%u", nc, nd);
        check_host(c, casename, what, c->HS);
    }
    /* Baselines: each one, once, from the same field as one more theus replay (whose result
     * the host mirror checked just above, so the comparison is with a checked reference). */
    CK(cudaMemcpyAsync(c->O, c->A, c->field_bytes, cudaMemcpyDeviceToDevice, G.s));
    CK(cudaStreamSynchronize(G.s));
    int rc = glue_replay(c->ops, c->count);
    if (rc != THEUS_OK)
        return theus_fail(rc, "backend_cuda()->iface->replay");
    mirror_apply(c, c->H, 1);
    for (int m = M_LOOP; m <= M_WARP; m++) {
        if (!mm[m])
            continue;
        double dummy;
        CK(cudaMemcpyAsync(c->B, c->O, c->field_bytes, cudaMemcpyDeviceToDevice, G.s));
        if (fns[m](c, &dummy))
            return -1;
        size_t first = 0;
        long long nbad = dev_compare(c->B, c->A, c->field_bytes, &first);
        if (nbad < 0)
            return -1;
        if (!note_check(c->scn, casename, nbad == 0, "%s vs theus replay: %s", method_name(c->add, m),
                        nbad == 0 ? "identical field" : "fields differ"))
            fprintf(stderr, "  %lld words differ, the first at element %zu\n", nbad, first);
    }
    if (!c->add) {
        size_t first = 0;
        long long nbad = dev_compare(c->C, c->Pd, c->payload, &first);
        if (nbad < 0)
            return -1;
        note_check(c->scn, casename, nbad == 0, "packed copy ceiling vs payload: %s",
                   nbad == 0 ? "identical" : "differ");
    }

    /* ---- rows ---- */
    double g[M_N];
    for (int m = 0; m < M_N; m++)
        g[m] = mm[m] ? gbps(bytes, mm[m]->st.median) : NAN;
    int ceil_m = M_CEIL;
    if (mm[M_CEIL2] && g[M_CEIL2] > g[M_CEIL])
        ceil_m = M_CEIL2;
    const double g_ceil = g[ceil_m];
    /* The better of cudaMemcpyBatchAsync and cub, cub at its best (arguments already in
     * device memory, although theus's figure includes uploading its own). */
    double g_best_batched = NAN;
    for (int m = M_BATCH; m <= M_CUB_DEV; m++)
        if (mm[m] && !(g_best_batched >= g[m]))
            g_best_batched = g[m];
    for (int m = 0; m < M_N; m++) {
        if (!mm[m])
            continue;
        bench_result *r = result_add(c->scn, "gpu", casename, method_name(c->add, m));
        result_set(r, mm[m], bytes, (double)c->count, "segment");
        if (size)
            result_param(r, "seg_bytes", size);
        else
            result_param_str(r, "seg_bytes", "mixed");
        result_param(r, "count", (double)c->count);
        result_param_str(r, "placement", place);
        result_param(r, "payload_bytes", (double)c->payload);
        result_param(r, "field_bytes", (double)c->field_bytes);
        result_param_str(r, "dtype", "f32");
        if (m == M_REP || m == M_COMMIT || m == M_DESC) {
            result_metric(r, "pct_of_ceiling", 100 * g[m] / g_ceil);
            if (mm[M_LOOP])
                result_metric(r, "ratio_vs_per_segment_loop", g[m] / g[M_LOOP]);
            if (mm[M_BATCH])
                result_metric(r, "ratio_vs_memcpy_batch_async", g[m] / g[M_BATCH]);
            if (mm[M_CUB])
                result_metric(r, "ratio_vs_cub_batched", g[m] / g[M_CUB]);
            if (mm[M_CUB_DEV])
                result_metric(r, "ratio_vs_cub_device_args", g[m] / g[M_CUB_DEV]);
            if (!isnan(g_best_batched))
                result_metric(r, "ratio_vs_best_batched", g[m] / g_best_batched);
            result_metric(r, "ratio_vs_warp_kernel", g[m] / g[M_WARP]);
            if (m == M_COMMIT || m == M_DESC)
                result_metric(r, "ratio_vs_replay", g[m] / g[M_REP]);
        }
        if (m == M_CEIL || m == M_CEIL2)
            result_metric(r, "is_ceiling", m == ceil_m);
    }

    char chart[64], series[64], title[160];
    snprintf(chart, sizeof chart, "%s-gpu-%s", c->scn, sizename);
    snprintf(title, sizeof title, "%s, %s segments, f32 device field of %s (GPU)", c->scn,
             sizename, fmt_bytes((double)c->field_bytes, pay, sizeof pay));
    plot_axes(chart, title, "segments per batch",
              c->add ? "GB/s (read+write, 3P)" : "GB/s (read+write, 2P)", 1, 0);
    for (int m = 0; m < M_N; m++) {
        if (!mm[m] || m == M_CEIL2)
            continue;
        snprintf(series, sizeof series, "%s, %s", m == M_CEIL ? "ceiling" : method_name(c->add, m),
                 place);
        plot_point(chart, series, (double)c->count, m == M_CEIL ? g_ceil : g[m]);
    }

    /* One line: GB/s of each method, n/a where it did not run. */
    char col[M_N][16];
    for (int m = 0; m < M_N; m++) {
        if (mm[m])
            snprintf(col[m], sizeof col[m], "%7.1f%s", g[m], mm[m]->st.stable ? " " : "~");
        else
            snprintf(col[m], sizeof col[m], "%8s", "n/a");
    }
    char ratio[16];
    if (isnan(g_best_batched))
        snprintf(ratio, sizeof ratio, "%6s", "n/a");
    else
        snprintf(ratio, sizeof ratio, "%5.2fx", g[M_REP] / g_best_batched);
    printf("%-6s %5s %-6s %8s | %s %5.0f%% %7.2f | %s | %s | %s | %s | %s | %s | %s | %7.1f | %s | "
           "%s\n",
           sizename, cnt, place, fmt_bytes((double)c->payload, pay, sizeof pay), col[M_REP],
           100 * g[M_REP] / g_ceil, (double)c->count / mm[M_REP]->st.median * 1e-6, col[M_COMMIT],
           col[M_DESC], col[M_LOOP], col[M_BATCH], col[M_CUB], col[M_CUB_DEV], col[M_WARP], g_ceil, ratio,
           bench.failures != failures_before ? "CHECK FAILED" : "ok");
    fflush(stdout);
    return 0;
}

static void rctx_free(rctx *c)
{
    if (c->tx)
        theus_tx_abort(c->tx);
    c->tx = NULL;
    theus_state_destroy(c->st);
    c->st = NULL;
    glue_ops_free(c->ops);
    dev_free(c->A);
    dev_free(c->B);
    dev_free(c->O);
    dev_free(c->C);
    dev_free(c->Pd);
    dev_free(c->d_src);
    dev_free(c->d_dst);
    dev_free(c->d_size);
    dev_free(c->d_off);
    dev_free(c->d_poff);
    dev_free(c->d_bseg);
    dev_free(c->cub_tmp);
    bench_free(c->H, c->field_bytes);
    bench_free(c->HS, c->field_bytes);
    bench_free(c->Ph, c->field_bytes);
    host_free(c->R, c->field_bytes, c->R_pinned);
    host_free(c->hp, c->hp_bytes, c->hp_pinned);
    free(c->segs);
    free(c->h_src);
    free(c->h_dst);
    free(c->h_size);
}

/* One cell of the grid (bench_replay_grid), with the slow baselines' bounds. */
typedef struct grid_limits {
    rctx *c;
    size_t loop_max, batch_max, commit_max;
} grid_limits;

static int grid_cell(void *user, size_t count, size_t payload, uint32_t size, const char *sizename,
                     const char *place, uint64_t cellseed)
{
    const grid_limits *g = (const grid_limits *)user;
    g->c->count = count;
    g->c->payload = payload;
    return run_cell(g->c, size, sizename, place, cellseed, g->loop_max, g->batch_max,
                    g->commit_max);
}

static int replay_body(rctx *c)
{
    /* The grid (bench_replay_grid, shared with the CPU side): up to 100k with --quick, the
     * count the 1.5x-cub target is stated at. */
    const size_t nquick = 3;
    /* The API loops (one call per segment) and staging every segment through the public API
     * cost microseconds per segment on the host: bounded to keep the run short. On the H100
     * (run G2's attempt) cudaMemcpyBatchAsync moved 0.1 GB/s of 256 B segments, 5 s per call
     * at 1M: it runs up to 100k segments (where the target compares with it), the
     * per-segment loop, which says nothing new beyond that, up to 10k. */
    const size_t loop_max = 10000;
    const size_t batch_max = 100000;
    const size_t commit_max = bench.quick ? 1000 : 10000;
    const size_t want = bench.quick ? (size_t)256 << 20 : (size_t)1 << 30;

    c->field_bytes = fit_gpu_field(want, 6, 5);
    if (c->field_bytes == 0) {
        note_error(c->scn, "not enough device memory for the smallest field");
        return -1;
    }
    c->nelems = c->field_bytes / 4;
    c->maxcount = bench_replay_grid_max(nquick);
    char fb[16], what[320];
    snprintf(what, sizeof what,
             "%s a batch of f32 region deltas into a %s device field%s; GB/s count %s; L2 "
             "flushed before every sample; CUDA events",
             c->add ? "add" : "copy", fmt_bytes((double)c->field_bytes, fb, sizeof fb),
             c->field_bytes < want ? " (reduced to fit memory)" : "",
             c->add ? "3 x payload" : "2 x payload");
    print_header(c->scn, "gpu", what);
    printf("%-6s %5s %-6s %8s | %-8s %6s %7s | %-8s | %-8s | %-8s | %-8s | %-8s | %-8s | %-8s | "
           "%-7s | %-6s |\n",
           "seg", "count", "place", "payload", "theus", "%ceil", "Mseg/s", "commit", "desc",
           c->add ? "add/seg" : "cpy/seg", "batchAs", "cub", "cub dev", "warp/seg", "ceil",
           "theus/");
    printf("%-6s %5s %-6s %8s | %-8s %6s %7s | %-8s | %-8s | %-8s | %-8s | %-8s | %-8s | %-8s | "
           "%-7s | %-6s |\n",
           "", "", "", "", "GB/s", "", "", "GB/s", "GB/s", "GB/s", "GB/s", "GB/s", "GB/s", "GB/s", "GB/s",
           "batch");

    /* Device buffers. */
    CK(cudaMalloc((void **)&c->A, c->field_bytes));
    CK(cudaMalloc((void **)&c->B, c->field_bytes));
    CK(cudaMalloc((void **)&c->O, c->field_bytes));
    CK(cudaMalloc((void **)&c->C, c->field_bytes));
    CK(cudaMalloc((void **)&c->Pd, c->field_bytes));
    CK(cudaMalloc((void **)&c->d_src, 8 * c->maxcount));
    CK(cudaMalloc((void **)&c->d_dst, 8 * c->maxcount));
    CK(cudaMalloc((void **)&c->d_size, 8 * c->maxcount));   /* two arrays of uint32 */
    CK(cudaMalloc((void **)&c->d_off, 8 * c->maxcount));
    CK(cudaMalloc((void **)&c->d_bseg, sizeof(theus_batch_segment) * c->maxcount));
    CK(cudaMalloc((void **)&c->d_poff, 8 * c->maxcount));
    /* Host buffers. */
    c->H = (float *)bench_alloc(c->field_bytes);
    c->HS = (float *)bench_alloc(c->field_bytes);
    c->Ph = (float *)bench_alloc(c->field_bytes);
    c->R = (float *)host_alloc(c->field_bytes, &c->R_pinned);
    c->hp_bytes = HP_PER_SEG * c->maxcount;
    c->hp = (unsigned char *)host_alloc(c->hp_bytes, &c->hp_pinned);
    c->segs = (bench_seg *)malloc(c->maxcount * sizeof *c->segs);
    c->h_src = (void **)malloc(c->maxcount * sizeof *c->h_src);
    c->h_dst = (void **)malloc(c->maxcount * sizeof *c->h_dst);
    c->h_size = (size_t *)malloc(c->maxcount * sizeof *c->h_size);
    if (!c->H || !c->HS || !c->Ph || !c->R || !c->hp || !c->segs || !c->h_src || !c->h_dst ||
        !c->h_size) {
        note_error(c->scn, "out of host memory for a %s field", fb);
        return -1;
    }
    for (size_t i = 0; i < c->nelems; i++)
        c->H[i] = (float)(i % 1000);
    memcpy(c->HS, c->H, c->field_bytes);
    CK(cudaMemcpyAsync(c->A, c->H, c->field_bytes, cudaMemcpyHostToDevice, G.s));
    CK(cudaMemsetAsync(c->C, 0, c->field_bytes, G.s));
    CK(cudaStreamSynchronize(G.s));
    if (device_state(c->nelems, c->H, &c->st))
        return -1;

    grid_limits lim = {c, loop_max, batch_max, commit_max};
    if (bench_replay_grid(c->scn, "gpu", c->add, nquick, c->segs, c->field_bytes, fb, grid_cell,
                          &lim))
        return -1;
    if (G.batch_na)
        printf("batchAs n/a: %s\n", G.batch_why);
    printf("cpy/seg, add/seg: one cudaMemcpyAsync / add kernel per segment (up to %zu "
           "segments); batchAs: cudaMemcpyBatchAsync (up to %zu segments); commit: "
           "theus_tx_commit of device payloads (up to %zu segments); cub "
           "and warp/seg include uploading the batch's description from pinned memory, as "
           "theus's figure does, cub dev has it in device memory already; theus/batch: theus "
           "replay / the best of batchAs, cub, cub dev\n",
           loop_max, batch_max, commit_max);
    return 0;
}

int scn_gpu_replay(int add)
{
    gpu_scn = add ? "replay.add" : "replay.copy";
    if (gpu_init())
        return -1;
    saved_cfg sc = cfg_push();
    rctx c;
    memset(&c, 0, sizeof c);
    c.add = add;
    c.scn = gpu_scn;
    int rc = replay_body(&c);
    rctx_free(&c);
    cfg_pop(sc);
    cudaError_t e = cudaStreamSynchronize(G.s);
    if (e != cudaSuccess)
        rc = cuda_fail(e, "cudaStreamSynchronize after the scenario", __FILE__, __LINE__);
    return rc;
}
