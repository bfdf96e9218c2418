/* theus-bench on the GPU (built when CMake finds CUDA; the C files see only gpu.h).
 *
 *   replay.copy / replay.add   a batch of f32 region deltas onto a device field much larger
 *                              than L2: theus's CUDA replay (backend_cuda()->iface->replay, the
 *                              payloads staged in device memory) and the full commit through
 *                              the public API, against cudaMemcpyAsync per segment,
 *                              cudaMemcpyBatchAsync, cub::DeviceMemcpy::Batched, a simple
 *                              warp-per-segment kernel, and a streaming kernel over the same
 *                              bytes packed (the ceiling);
 *   commit.latency             one-element commits into a device field, begin -> commit;
 *   commit.scaling             commit cost as the written fraction of a device field grows,
 *                              against a device-to-device cudaMemcpy of the whole field;
 *   stage.h2d                  theus_tx_write of pageable host payloads into a device field
 *                              against cudaMemcpy from pageable and from pinned memory.
 *
 * Times come from CUDA events on the benchmark's own stream; L2 is flushed (a memset of twice
 * its size) before every timed sample. theus's calls are synchronous (they return when the
 * GPU is done): their samples run from an event recorded on the idle stream just before
 * the call to one recorded just after it returns, so host work (planning, descriptor
 * upload) counts.
 * Every result is checked bit for bit against a host reference; a CUDA error is reported,
 * makes the run fail, and stops the scenario (never the process). */
#include <cuda_runtime.h>

#include <cub/device/device_memcpy.cuh>

#include "bench.h"
#include "gpu.h"
#include "theus/theus.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- process-wide GPU resources ------------------------------------------------------ */

static struct {
    int init;                      /* 0: not tried, 1: ready, -1: failed */
    int device;
    int sms;
    cudaStream_t s;
    cudaEvent_t e0, e1;
    void *flush;
    size_t flush_bytes;
    unsigned flush_gen;
    unsigned long long *cmp;       /* device: mismatch count, first mismatching word */
    int batch_na;                  /* cudaMemcpyBatchAsync unusable in this process */
    char batch_why[160];
} G;

static const char *g_scn = "gpu";

static int cuda_fail(cudaError_t e, const char *what, int line)
{
    (void)cudaGetLastError();
    note_error(g_scn, "CUDA: %s: %s (%s) at bench/gpu_bench.cu:%d", what, cudaGetErrorName(e),
               cudaGetErrorString(e), line);
    return -1;
}

#define CK(call)                                                                          \
    do {                                                                                  \
        cudaError_t ck_e_ = (call);                                                       \
        if (ck_e_ != cudaSuccess)                                                         \
            return cuda_fail(ck_e_, #call, __LINE__);                                     \
    } while (0)

static int theus_fail(int rc, const char *what)
{
    note_error(g_scn, "%s: %s (%s)", what, theus_strerror(rc), theus_last_error_message());
    return -1;
}

#define CKT(call, what)                                                                   \
    do {                                                                                  \
        int ckt_rc_ = (call);                                                             \
        if (ckt_rc_ != THEUS_OK)                                                          \
            return theus_fail(ckt_rc_, what);                                             \
    } while (0)

static int gpu_init(void)
{
    if (G.init)
        return G.init > 0 ? 0 : -1;
    G.init = -1;
    CK(cudaGetDevice(&G.device));
    CK(cudaDeviceGetAttribute(&G.sms, cudaDevAttrMultiProcessorCount, G.device));
    if (G.sms <= 0)
        G.sms = 1;
    CK(cudaStreamCreateWithFlags(&G.s, cudaStreamNonBlocking));
    CK(cudaEventCreate(&G.e0));
    CK(cudaEventCreate(&G.e1));
    int l2 = 0;
    CK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, G.device));
    G.flush_bytes = 2 * (size_t)(l2 > 0 ? l2 : 64 << 20);
    CK(cudaMalloc(&G.flush, G.flush_bytes));
    CK(cudaMalloc((void **)&G.cmp, 2 * sizeof(unsigned long long)));
    G.init = 1;
    return 0;
}

void gpu_shutdown(void)
{
    if (G.init <= 0)
        return;
    (void)cudaStreamSynchronize(G.s);
    (void)cudaFree(G.flush);
    (void)cudaFree(G.cmp);
    (void)cudaEventDestroy(G.e0);
    (void)cudaEventDestroy(G.e1);
    (void)cudaStreamDestroy(G.s);
    (void)cudaGetLastError();
    memset(&G, 0, sizeof G);
}

/* Sampling for the GPU scenarios: at least 10 samples, few more (the sweep is long). */
typedef struct saved_cfg {
    unsigned mn, mx;
    double sec, tol;
} saved_cfg;

static saved_cfg cfg_push(void)
{
    saved_cfg s = {bench.min_samples, bench.max_samples, bench.max_seconds, bench.stable_tol};
    bench.min_samples = 10;
    bench.max_samples = bench.quick ? 12 : 20;
    bench.max_seconds = bench.quick ? 0.05 : 0.25;
    bench.stable_tol = bench.quick ? 0.03 : 0.02;
    return s;
}

static void cfg_pop(saved_cfg s)
{
    bench.min_samples = s.mn;
    bench.max_samples = s.mx;
    bench.max_seconds = s.sec;
    bench.stable_tol = s.tol;
}

/* ---- kernels --------------------------------------------------------------------------- */

__global__ void k_copy16(uint4 *__restrict__ d, const uint4 *__restrict__ s, size_t n)
{
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        d[i] = s[i];
}

__device__ __forceinline__ float4 add4(float4 a, float4 b)
{
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
    return a;
}

/* d += s, 16 bytes a thread (c = a + b with c = a: reads 2P, writes P). */
__global__ void k_add16(float4 *__restrict__ d, const float4 *__restrict__ s, size_t n)
{
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        d[i] = add4(d[i], s[i]);
}

/* A simple batched kernel: one warp per segment, 16 bytes a lane. */
template <bool ADD>
__global__ void k_warp_segs(char *__restrict__ field, const char *__restrict__ pay,
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

__global__ void k_cmp(const uint32_t *__restrict__ a, const uint32_t *__restrict__ b, size_t n,
                      unsigned long long *out)
{
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        if (a[i] != b[i]) {
            atomicAdd(&out[0], 1ull);
            atomicMin(&out[1], (unsigned long long)i);
        }
}

static unsigned grid_for(size_t items, unsigned per_block, unsigned max_per_sm)
{
    size_t g = (items + per_block - 1) / per_block;
    size_t cap = (size_t)G.sms * max_per_sm;
    if (g > cap)
        g = cap;
    return g ? (unsigned)g : 1u;
}

static int launch_copy(void *d, const void *s, size_t bytes)
{
    const size_t n = bytes / 16;
    k_copy16<<<grid_for(n, 256, 8), 256, 0, G.s>>>((uint4 *)d, (const uint4 *)s, n);
    CK(cudaGetLastError());
    return 0;
}

static int launch_add(void *d, const void *s, size_t bytes)
{
    const size_t n = bytes / 16;
    k_add16<<<grid_for(n, 256, 8), 256, 0, G.s>>>((float4 *)d, (const float4 *)s, n);
    CK(cudaGetLastError());
    return 0;
}

/* Compare @bytes of two device buffers word by word: the mismatch count (0: identical), and
 * the first mismatching 4-byte word in @first. -1 on a CUDA error. */
static long long dev_compare(const void *a, const void *b, size_t bytes, size_t *first)
{
    unsigned long long h[2] = {0, ~0ull};
    CK(cudaMemcpyAsync(G.cmp, h, sizeof h, cudaMemcpyHostToDevice, G.s));
    const size_t n = bytes / 4;
    k_cmp<<<grid_for(n, 256, 8), 256, 0, G.s>>>((const uint32_t *)a, (const uint32_t *)b, n, G.cmp);
    CK(cudaGetLastError());
    CK(cudaMemcpyAsync(h, G.cmp, sizeof h, cudaMemcpyDeviceToHost, G.s));
    CK(cudaStreamSynchronize(G.s));
    *first = (size_t)h[1];
    return (long long)h[0];
}

/* ---- timing ------------------------------------------------------------------------------ */

/* Enqueue the L2 flush (when asked) and the start event; the caller enqueues the work. */
static int t_begin(int flush)
{
    if (flush)
        CK(cudaMemsetAsync(G.flush, (int)(G.flush_gen++ & 0xff), G.flush_bytes, G.s));
    CK(cudaEventRecord(G.e0, G.s));
    return 0;
}

/* The same, for a synchronous host call: the flush finishes first (nothing of ours runs
 * while the call works), then the start event is recorded on the idle stream, so that it is
 * stamped as the call begins. */
static int t_begin_sync(int flush)
{
    if (flush) {
        CK(cudaMemsetAsync(G.flush, (int)(G.flush_gen++ & 0xff), G.flush_bytes, G.s));
        CK(cudaStreamSynchronize(G.s));
    }
    CK(cudaEventRecord(G.e0, G.s));
    return 0;
}

static int t_end(double *secs)
{
    CK(cudaEventRecord(G.e1, G.s));
    CK(cudaEventSynchronize(G.e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, G.e0, G.e1));
    *secs = (double)ms * 1e-3;
    return 0;
}

static bench_op mkop(void *ctx, int (*prep)(void *), int (*run_timed)(void *, double *))
{
    bench_op o;
    memset(&o, 0, sizeof o);
    o.ctx = ctx;
    o.prep = prep;
    o.run_timed = run_timed;
    o.flush = 0;    /* the CPU's LLC: irrelevant here; the L2 flush is inside run_timed */
    return o;
}

static double gbps(double bytes, double secs)
{
    return secs > 0 ? bytes / secs * 1e-9 : NAN;
}

/* ---- memory helpers ---------------------------------------------------------------------- */

/* Host buffer for reading fields back: pinned when possible (faster), pageable otherwise. */
static void *host_alloc(size_t bytes, int *pinned)
{
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) == cudaSuccess) {
        *pinned = 1;
        return p;
    }
    (void)cudaGetLastError();
    *pinned = 0;
    return bench_alloc(bytes);
}

static void host_free(void *p, size_t bytes, int pinned)
{
    if (!p)
        return;
    if (pinned) {
        if (cudaFreeHost(p) != cudaSuccess)
            (void)cudaGetLastError();
    } else {
        bench_free(p, bytes);
    }
}

static void dev_free(void *p)
{
    if (p && cudaFree(p) != cudaSuccess)
        (void)cudaGetLastError();
}

/* The largest field, at most @want, for which @ndev field-sized device buffers (plus 1 GiB of
 * slack for theus's staging, descriptors and cub) fit in the free device memory and @nhost
 * host buffers in the available host memory. 0 when not even 16 MiB fit. */
static size_t fit_gpu_field(size_t want, int ndev, int nhost)
{
    size_t f = want;
    if (bench.max_field && bench.max_field < f)
        f = bench.max_field;
    size_t dfree = 0, dtotal = 0;
    if (cudaMemGetInfo(&dfree, &dtotal) != cudaSuccess) {
        (void)cudaGetLastError();
        dfree = 0;
    }
    const size_t slack = (size_t)1 << 30;
    while (f > ((size_t)16 << 20) &&
           ((size_t)ndev * f + slack > dfree / 10 * 9 ||
            (size_t)nhost * f + slack > bench.mem_avail / 10 * 8))
        f /= 2;
    if ((size_t)ndev * f + ((size_t)256 << 20) > dfree)
        return 0;
    return f;
}

static size_t first_diff_f(const float *a, const float *b, size_t n)
{
    if (memcmp(a, b, n * sizeof *a) == 0)
        return SIZE_MAX;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof *a) != 0)
            return i;
    return SIZE_MAX;
}

static int read_field(theus_state *st, const char *field, const theus_region *r, void *dst)
{
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(st, NULL, &tx);
    if (rc == THEUS_OK)
        rc = theus_tx_read(tx, field, r, dst, THEUS_MEM_HOST);
    if (tx)
        theus_tx_abort(tx);
    if (rc != THEUS_OK)
        return theus_fail(rc, "reading the field back");
    return 0;
}

/* A state with one device field "x" of f32[@nelems], set to @init (host). */
static int device_state(size_t nelems, const float *init, theus_state **st)
{
    char schema[256];
    snprintf(schema, sizeof schema,
             "{\"name\": \"bench-gpu\", \"fields\": {\"x\": {\"dtype\": \"f32\", "
             "\"shape\": [%zu], \"placement\": \"device\"}}}", nelems);
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    o.allow_fallback = 0;
    CKT(theus_state_create(schema, &o, st), "creating a state with a device field");
    theus_field_info fi;
    CKT(theus_state_field_info(*st, "x", &fi), "theus_state_field_info");
    if (fi.placement != THEUS_PLACEMENT_DEVICE) {
        note_error(g_scn, "the field was placed in %s memory, not on the device",
                   theus_placement_name(fi.placement));
        return -1;
    }
    if (init)
        CKT(theus_state_init_field(*st, "x", init, THEUS_MEM_HOST), "theus_state_init_field");
    return 0;
}

/* ======================================== replay ========================================= */


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
    if (c->tx) {
        theus_tx_abort(c->tx);
        c->tx = NULL;
    }
    CKT(theus_tx_begin(c->st, NULL, &c->tx), "theus_tx_begin");
    for (size_t i = 0; i < c->count; i++) {
        const bench_seg *s = &c->segs[i];
        theus_region r;
        memset(&r, 0, sizeof r);
        r.ndim = 1;
        r.start[0] = (int64_t)(s->off / 4);
        r.stop[0] = (int64_t)((s->off + s->size) / 4);
        const void *pl = c->Pd + s->poff;
        int rc = c->add ? theus_tx_add(c->tx, "x", &r, pl, THEUS_MEM_DEVICE)
                        : theus_tx_write(c->tx, "x", &r, pl, THEUS_MEM_DEVICE);
        if (rc != THEUS_OK) {
            theus_tx_abort(c->tx);
            c->tx = NULL;
            return theus_fail(rc, "staging a device payload");
        }
    }
    return 0;
}

static int r_commit(void *p, double *secs)
{
    rctx *c = (rctx *)p;
    if (t_begin_sync(1))
        return -1;
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
            const size_t n = s->size / 16;
            k_add16<<<grid_for(n, 256, 8), 256, 0, G.s>>>((float4 *)(void *)(c->B + s->off),
                                                          (const float4 *)(const void *)(c->Pd + s->poff), n);
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
    note_error(g_scn, "cudaMemcpyBatchAsync needs CUDA 12.8");
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

enum { M_REP, M_COMMIT, M_LOOP, M_BATCH, M_CUB, M_CUB_DEV, M_WARP, M_CEIL, M_CEIL2, M_N };

static const char *method_name(int add, int m)
{
    switch (m) {
    case M_REP: return "theus.replay";
    case M_COMMIT: return "theus.commit";
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
    size_t bad = first_diff_f(c->R, expect, c->nelems);
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

    int use[M_N];
    memset(use, 0, sizeof use);
    use[M_REP] = use[M_WARP] = use[M_CEIL] = 1;
    use[M_COMMIT] = c->count <= commit_max;
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

    int (*const fns[M_N])(void *, double *) = {r_theus, r_commit,  r_loop,
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
        ops[nops++] = mkop(c, m == M_COMMIT ? r_commit_prep : NULL, fns[m]);
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
    /* theus commit: the state's field after all the commits, against its mirror. */
    if (mm[M_COMMIT]) {
        mirror_apply(c, c->HS, mm[M_COMMIT]->runs);
        if (read_field(c->st, "x", NULL, c->R))
            return -1;
        snprintf(what, sizeof what, "theus_tx_commit x%u", mm[M_COMMIT]->runs);
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
        if (m == M_REP || m == M_COMMIT) {
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
            if (m == M_COMMIT)
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
    printf("%-6s %5s %-6s %8s | %s %5.0f%% %7.2f | %s | %s | %s | %s | %s | %s | %7.1f | %s | "
           "%s\n",
           sizename, cnt, place, fmt_bytes((double)c->payload, pay, sizeof pay), col[M_REP],
           100 * g[M_REP] / g_ceil, (double)c->count / mm[M_REP]->st.median * 1e-6, col[M_COMMIT],
           col[M_LOOP], col[M_BATCH], col[M_CUB], col[M_CUB_DEV], col[M_WARP], g_ceil, ratio,
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

static int replay_body(rctx *c)
{
    static const uint32_t sizes[] = {64, 256, 1024, 4096, 65536, 0};
    static const char *const size_names[] = {"64B", "256B", "1KiB", "4KiB", "64KiB", "mixed"};
    static const size_t counts_full[] = {1000, 10000, 100000, 1000000};
    static const size_t counts_quick[] = {1000, 10000, 100000};
    const size_t *counts = bench.quick ? counts_quick : counts_full;
    const size_t ncounts = bench.quick ? 3 : 4;
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
    c->maxcount = counts[ncounts - 1];
    char fb[16], what[320];
    snprintf(what, sizeof what,
             "%s a batch of f32 region deltas into a %s device field%s; GB/s count %s; L2 "
             "flushed before every sample; CUDA events",
             c->add ? "add" : "copy", fmt_bytes((double)c->field_bytes, fb, sizeof fb),
             c->field_bytes < want ? " (reduced to fit memory)" : "",
             c->add ? "3 x payload" : "2 x payload");
    print_header(c->scn, "gpu", what);
    printf("%-6s %5s %-6s %8s | %-8s %6s %7s | %-8s | %-8s | %-8s | %-8s | %-8s | %-8s | %-7s "
           "| %-6s |\n",
           "seg", "count", "place", "payload", "theus", "%ceil", "Mseg/s", "commit",
           c->add ? "add/seg" : "cpy/seg", "batchAs", "cub", "cub dev", "warp/seg", "ceil",
           "theus/");
    printf("%-6s %5s %-6s %8s | %-8s %6s %7s | %-8s | %-8s | %-8s | %-8s | %-8s | %-8s | %-7s "
           "| %-6s |\n",
           "", "", "", "", "GB/s", "", "", "GB/s", "GB/s", "GB/s", "GB/s", "GB/s", "GB/s", "GB/s",
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

    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        for (size_t ci = 0; ci < ncounts; ci++) {
            c->count = counts[ci];
            uint64_t cellseed = bench.seed + si * 1000003u + ci * 7919u + (uint64_t)c->add;
            c->payload = bench_batch_layout(c->segs, c->count, sizes[si], c->field_bytes, cellseed);
            if (c->payload == 0) {
                char cn[16], why[160];
                snprintf(why, sizeof why, "seg=%s count=%s: payload larger than the %s field",
                         size_names[si], fmt_count((double)c->count, cn, sizeof cn), fb);
                note_skip(c->scn, "gpu", why);
                continue;
            }
            for (int pl = 0; pl < 2; pl++) {
                if (pl == 1)
                    bench_batch_layout(c->segs, c->count, sizes[si], c->field_bytes, cellseed);
                bench_batch_order(c->segs, c->count, pl == 0, cellseed);
                if (run_cell(c, sizes[si], size_names[si], pl == 0 ? "random" : "sorted",
                             cellseed, loop_max, batch_max, commit_max) != 0)
                    return -1;
            }
        }
    }
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
    g_scn = add ? "replay.add" : "replay.copy";
    if (gpu_init())
        return -1;
    saved_cfg sc = cfg_push();
    rctx c;
    memset(&c, 0, sizeof c);
    c.add = add;
    c.scn = g_scn;
    int rc = replay_body(&c);
    rctx_free(&c);
    cfg_pop(sc);
    cudaError_t e = cudaStreamSynchronize(G.s);
    if (e != cudaSuccess)
        rc = cuda_fail(e, "cudaStreamSynchronize after the scenario", __LINE__);
    return rc;
}

/* ===================================== commit.latency ===================================== */

typedef struct lat_ctx {
    theus_state *st;
    size_t nelems;
    float *mirror;      /* host mirror of the field */
    float *plain;       /* device array the baseline writes */
    float *plain_mirror;
    float *dvals;       /* device: the device-payload values */
    float *back;
} lat_ctx;

static int latency_field(lat_ctx *c, size_t ntx, size_t warm, const char *label)
{
    const char *scn = g_scn;
    const size_t total = warm + ntx;
    double *tot = (double *)malloc(ntx * sizeof(double));
    double *com = (double *)malloc(ntx * sizeof(double));
    double *dev = (double *)malloc(ntx * sizeof(double));
    double *base = (double *)malloc(ntx * sizeof(double));
    float *hv = (float *)malloc(total * sizeof(float));
    int rc = -1;
    if (!tot || !com || !dev || !base || !hv) {
        note_error(scn, "out of memory for %zu samples", ntx);
        goto out;
    }
    for (size_t i = 0; i < total; i++)
        hv[i] = (float)(i % 65536 + 100001);
    if (cudaMemcpy(c->dvals, hv, total * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess) {
        cuda_fail(cudaGetLastError(), "cudaMemcpy(device payload values)", __LINE__);
        goto out;
    }
    {
        uint64_t s = bench.seed ^ c->nelems;
        for (size_t i = 0; i < total; i++) {
            theus_region r;
            memset(&r, 0, sizeof r);
            r.ndim = 1;
            /* 1. a host payload */
            size_t idx = (size_t)(rng_next(&s) % c->nelems);
            float val = (float)(i % 65536 + 1);
            r.start[0] = (int64_t)idx;
            r.stop[0] = (int64_t)idx + 1;
            theus_tx *tx = NULL;
            uint64_t t0 = now_ns();
            int trc = theus_tx_begin(c->st, NULL, &tx);
            if (trc == THEUS_OK)
                trc = theus_tx_write(tx, "x", &r, &val, THEUS_MEM_HOST);
            uint64_t t1 = now_ns();
            if (trc == THEUS_OK)
                trc = theus_tx_commit(tx, NULL);
            else if (tx)
                theus_tx_abort(tx);
            uint64_t t2 = now_ns();
            if (trc != THEUS_OK) {
                theus_fail(trc, "one-element commit (host payload)");
                goto out;
            }
            c->mirror[idx] = val;
            /* 2. a device payload */
            size_t idx2 = (size_t)(rng_next(&s) % c->nelems);
            r.start[0] = (int64_t)idx2;
            r.stop[0] = (int64_t)idx2 + 1;
            tx = NULL;
            uint64_t t3 = now_ns();
            trc = theus_tx_begin(c->st, NULL, &tx);
            if (trc == THEUS_OK)
                trc = theus_tx_write(tx, "x", &r, c->dvals + i, THEUS_MEM_DEVICE);
            if (trc == THEUS_OK)
                trc = theus_tx_commit(tx, NULL);
            else if (tx)
                theus_tx_abort(tx);
            uint64_t t4 = now_ns();
            if (trc != THEUS_OK) {
                theus_fail(trc, "one-element commit (device payload)");
                goto out;
            }
            c->mirror[idx2] = hv[i];
            /* 3. the baseline: a 4-byte cudaMemcpy from pageable memory */
            uint64_t t5 = now_ns();
            cudaError_t e = cudaMemcpy(c->plain + idx, &val, sizeof val, cudaMemcpyHostToDevice);
            uint64_t t6 = now_ns();
            if (e != cudaSuccess) {
                cuda_fail(e, "cudaMemcpy(4 bytes)", __LINE__);
                goto out;
            }
            c->plain_mirror[idx] = val;
            if (i >= warm) {
                tot[i - warm] = (double)(t2 - t0) * 1e-9;
                com[i - warm] = (double)(t2 - t1) * 1e-9;
                dev[i - warm] = (double)(t4 - t3) * 1e-9;
                base[i - warm] = (double)(t6 - t5) * 1e-9;
            }
        }
    }
    {
        char casename[96], fb[16];
        snprintf(casename, sizeof casename, "f32[%zu] device (%s)", c->nelems,
                 fmt_bytes((double)c->nelems * 4, fb, sizeof fb));
        if (read_field(c->st, "x", NULL, c->back))
            goto out;
        size_t bad = first_diff_f(c->back, c->mirror, c->nelems);
        note_check(scn, casename, bad == SIZE_MAX, "%zu one-element commits vs host mirror: %s",
                   2 * total, bad == SIZE_MAX ? "identical field" : "fields differ");
        if (cudaMemcpy(c->back, c->plain, c->nelems * 4, cudaMemcpyDeviceToHost) != cudaSuccess) {
            cuda_fail(cudaGetLastError(), "cudaMemcpy(read back)", __LINE__);
            goto out;
        }
        bad = first_diff_f(c->back, c->plain_mirror, c->nelems);
        note_check(scn, casename, bad == SIZE_MAX, "cudaMemcpy baseline vs host mirror: %s",
                   bad == SIZE_MAX ? "identical" : "differ");

        const char *methods[4] = {"theus.tx", "theus.commit_call", "theus.tx_device_payload",
                                  "baseline.cudamemcpy_h2d_4B"};
        double *v[4] = {tot, com, dev, base};
        bstats st[4];
        measurement m;
        memset(&m, 0, sizeof m);
        for (int k = 0; k < 4; k++) {
            stats_compute(v[k], ntx, &st[k]);
            bstats half;
            stats_compute(v[k], ntx / 2, &half);
            st[k].stable = fabs(half.median - st[k].median) <= 0.05 * st[k].median;
        }
        for (int k = 0; k < 4; k++) {
            bench_result *r = result_add(scn, "gpu", casename, methods[k]);
            m.st = st[k];
            result_set(r, &m, 0, 1, "commit");
            result_param_str(r, "field", label);
            result_param(r, "field_bytes", (double)c->nelems * 4);
            result_param(r, "delta_bytes", 4);
            result_param(r, "transactions", (double)ntx);
            result_param_str(r, "timer", "clock_gettime (host-perceived latency)");
            if (k != 3)
                result_metric(r, "ratio_p50_vs_baseline", st[k].median / st[3].median);
        }
        printf("%-28s | %6.1f %6.1f %6.1f %7.1f | %6.1f %7.1f | %6.1f %7.1f | %6.1f %7.1f | %s\n",
               casename, st[0].p10 * 1e6, st[0].median * 1e6, st[0].p90 * 1e6, st[0].p99 * 1e6,
               st[1].median * 1e6, st[1].p99 * 1e6, st[2].median * 1e6, st[2].p99 * 1e6,
               st[3].median * 1e6, st[3].p99 * 1e6,
               st[0].median <= 10e-6 ? "<= 10 us: met" : "> 10 us: NOT met");
        fflush(stdout);
    }
    rc = 0;
out:
    free(tot);
    free(com);
    free(dev);
    free(base);
    free(hv);
    return rc;
}

static int latency_one(size_t nelems, size_t ntx, size_t warm, const char *label)
{
    lat_ctx c;
    memset(&c, 0, sizeof c);
    c.nelems = nelems;
    const size_t bytes = nelems * 4;
    int rc = -1;
    c.mirror = (float *)bench_alloc(bytes);
    c.plain_mirror = (float *)bench_alloc(bytes);
    c.back = (float *)bench_alloc(bytes);
    if (!c.mirror || !c.plain_mirror || !c.back) {
        note_error(g_scn, "out of host memory");
        goto out;
    }
    if (cudaMalloc((void **)&c.plain, bytes) != cudaSuccess ||
        cudaMalloc((void **)&c.dvals, (warm + ntx) * sizeof(float)) != cudaSuccess ||
        cudaMemset(c.plain, 0, bytes) != cudaSuccess) {
        cuda_fail(cudaGetLastError(), "cudaMalloc/cudaMemset", __LINE__);
        goto out;
    }
    if (device_state(nelems, c.mirror, &c.st))   /* zeros, as the mirror */
        goto out;
    rc = latency_field(&c, ntx, warm, label);
out:
    theus_state_destroy(c.st);
    dev_free(c.plain);
    dev_free(c.dvals);
    bench_free(c.mirror, bytes);
    bench_free(c.plain_mirror, bytes);
    bench_free(c.back, bytes);
    return rc;
}

int scn_gpu_commit_latency(void)
{
    g_scn = "commit.latency";
    if (gpu_init())
        return -1;
    const size_t ntx = bench.quick ? 3000 : 20000, warm = bench.quick ? 300 : 2000;
    const size_t large = fit_gpu_field(bench.quick ? (size_t)64 << 20 : (size_t)1 << 30, 2, 3);
    char what[256];
    snprintf(what, sizeof what,
             "one f32 element per transaction at a random index of a device field, begin -> "
             "commit, %zu transactions after %zu warm-up; host clock; times in us", ntx, warm);
    print_header(g_scn, "gpu", what);
    printf("%-28s | %-29s | %-14s | %-14s | %-14s |\n", "field", "theus begin->commit (host val)",
           "commit call", "device payload", "cudaMemcpy 4B");
    printf("%-28s | %6s %6s %6s %7s | %6s %7s | %6s %7s | %6s %7s |\n", "", "p10", "p50", "p90",
           "p99", "p50", "p99", "p50", "p99", "p50", "p99");
    if (latency_one(16384, ntx, warm, "small"))
        return -1;
    if (large == 0) {
        note_skip(g_scn, "gpu", "large field: not enough device memory");
        return 0;
    }
    return latency_one(large / 4, ntx, warm, "large");
}

/* ===================================== commit.scaling ===================================== */

typedef struct sc_ctx {
    theus_state *st;
    size_t field_bytes;
    char *Pd;           /* device payload */
    char *W;            /* device destination of the whole-field and delta copies */
    size_t nseg;
    uint64_t seg_bytes, stride, off0, delta;
    theus_tx *tx;
} sc_ctx;

static int sc_prep(void *p)
{
    sc_ctx *c = (sc_ctx *)p;
    if (c->tx) {
        theus_tx_abort(c->tx);
        c->tx = NULL;
    }
    CKT(theus_tx_begin(c->st, NULL, &c->tx), "theus_tx_begin");
    for (size_t i = 0; i < c->nseg; i++) {
        theus_region r;
        memset(&r, 0, sizeof r);
        r.ndim = 1;
        const uint64_t off = c->off0 + i * c->stride;
        r.start[0] = (int64_t)(off / 4);
        r.stop[0] = (int64_t)((off + c->seg_bytes) / 4);
        int rc = theus_tx_write(c->tx, "x", &r, c->Pd + i * c->seg_bytes, THEUS_MEM_DEVICE);
        if (rc != THEUS_OK) {
            theus_tx_abort(c->tx);
            c->tx = NULL;
            return theus_fail(rc, "staging");
        }
    }
    return 0;
}

static int sc_commit(void *p, double *secs)
{
    sc_ctx *c = (sc_ctx *)p;
    if (t_begin_sync(1))
        return -1;
    theus_tx *tx = c->tx;
    c->tx = NULL;
    CKT(theus_tx_commit(tx, NULL), "theus_tx_commit");
    return t_end(secs);
}

static int sc_whole(void *p, double *secs)
{
    sc_ctx *c = (sc_ctx *)p;
    if (t_begin(1))
        return -1;
    CK(cudaMemcpyAsync(c->W, c->Pd, c->field_bytes, cudaMemcpyDeviceToDevice, G.s));
    return t_end(secs);
}

static int sc_delta(void *p, double *secs)
{
    sc_ctx *c = (sc_ctx *)p;
    if (t_begin(1))
        return -1;
    CK(cudaMemcpyAsync(c->W, c->Pd, c->delta, cudaMemcpyDeviceToDevice, G.s));
    return t_end(secs);
}

static int scaling_body(sc_ctx *c, float *mirror, float *Ph, float *back)
{
    const char *scn = g_scn;
    const size_t fbytes = c->field_bytes, nelems = fbytes / 4;
    static const double fracs[] = {0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0};
    const size_t max_nseg = bench.quick ? 4096 : 32768;
    for (size_t i = 0; i < nelems; i++)
        mirror[i] = (float)(i % 1000);
    if (device_state(nelems, mirror, &c->st))
        return -1;
    CK(cudaMalloc((void **)&c->Pd, fbytes));
    CK(cudaMalloc((void **)&c->W, fbytes));
    CK(cudaMemsetAsync(c->Pd, 0, fbytes, G.s));
    CK(cudaStreamSynchronize(G.s));

    measurement m_whole;
    bench_op op_whole = mkop(c, NULL, sc_whole);
    if (measure(&op_whole, &m_whole))
        return -1;
    const double whole = m_whole.st.median;
    char fb[16];
    fmt_bytes((double)fbytes, fb, sizeof fb);
    bench_result *r = result_add(scn, "gpu", "whole field", "baseline.whole_field_cudamemcpy_d2d");
    result_set(r, &m_whole, 2.0 * (double)fbytes, 1, "copy");
    result_param(r, "field_bytes", (double)fbytes);
    printf("baseline: cudaMemcpyAsync of the whole %s field, device to device: %.3f ms (p10 %.3f, "
           "p90 %.3f), %.0f GB/s\n", fb, whole * 1e3, m_whole.st.p10 * 1e3, m_whole.st.p90 * 1e3,
           2.0 * (double)fbytes / whole * 1e-9);
    printf("%-13s %8s %9s %7s | %-26s | %-8s | %-16s |\n", "layout", "fraction", "delta", "deltas",
           "theus commit ms", "% whole", "delta cudaMemcpy");
    printf("%-13s %8s %9s %7s | %8s %8s %8s | %8s | %8s %7s |\n", "", "", "", "", "p10", "p50",
           "p90", "", "ms", "commit/");
    plot_axes("commit.scaling-gpu", "commit.scaling: commit cost vs written fraction of a device "
              "field (GPU)", "written fraction of the field (%)", "milliseconds", 1, 1);

    uint64_t s = bench.seed ^ 0xca1e;
    for (int layout = 0; layout < 2; layout++) {
        const char *lname = layout == 0 ? "1 region" : "4KiB segments";
        for (size_t fi = 0; fi < sizeof fracs / sizeof fracs[0]; fi++) {
            uint64_t delta = (uint64_t)((double)fbytes * fracs[fi]) / 4096 * 4096;
            if (delta < 4096)
                delta = 4096;
            char casename[96], db[16];
            snprintf(casename, sizeof casename, "%s, %.1f%% (%s)", lname, fracs[fi] * 100,
                     fmt_bytes((double)delta, db, sizeof db));
            if (layout == 0) {
                c->nseg = 1;
                c->seg_bytes = delta;
                c->stride = 0;
                c->off0 = (rng_next(&s) % ((fbytes - delta) / 64 + 1)) * 64;
            } else {
                c->nseg = delta / 4096;
                c->seg_bytes = 4096;
                c->stride = (fbytes / c->nseg) / 64 * 64;
                c->off0 = 0;
                if (c->nseg > max_nseg) {
                    char why[256];
                    snprintf(why, sizeof why, "%s: %zu deltas, more than the %zu staged through "
                             "the API in this pass", casename, c->nseg, max_nseg);
                    note_skip(scn, "gpu", why);
                    continue;
                }
            }
            c->delta = delta;
            const size_t pn = delta / 4;
            for (size_t j = 0; j < pn; j++)
                Ph[j] = (float)((j + fi * 13 + (size_t)layout * 101) % 1000 + 1);
            CK(cudaMemcpyAsync(c->Pd, Ph, delta, cudaMemcpyHostToDevice, G.s));
            CK(cudaStreamSynchronize(G.s));
            const int failures_before = bench.failures;
            measurement ms[2];
            bench_op ops[2] = {mkop(c, sc_prep, sc_commit), mkop(c, NULL, sc_delta)};
            if (measure_set(ops, 2, ms))
                return -1;
            for (size_t i = 0; i < c->nseg; i++)
                memcpy((char *)mirror + c->off0 + i * c->stride, (const char *)Ph + i * c->seg_bytes,
                       c->seg_bytes);
            if (read_field(c->st, "x", NULL, back))
                return -1;
            size_t bad = first_diff_f(back, mirror, nelems);
            note_check(scn, casename, bad == SIZE_MAX, "device field after %u commits vs host "
                       "mirror: %s", ms[0].runs, bad == SIZE_MAX ? "identical" : "differ");
            const double cm = ms[0].st.median;
            r = result_add(scn, "gpu", casename, "theus.commit");
            result_set(r, &ms[0], 2.0 * (double)delta, (double)c->nseg, "delta");
            result_param_str(r, "layout", lname);
            result_param(r, "fraction", fracs[fi]);
            result_param(r, "delta_bytes", (double)delta);
            result_param(r, "field_bytes", (double)fbytes);
            result_metric(r, "pct_of_whole_copy", 100 * cm / whole);
            result_metric(r, "ratio_vs_delta_memcpy", cm / ms[1].st.median);
            r = result_add(scn, "gpu", casename, "ceiling.delta_cudamemcpy_d2d");
            result_set(r, &ms[1], 2.0 * (double)delta, 1, "copy");
            result_param_str(r, "layout", lname);
            result_param(r, "fraction", fracs[fi]);
            result_param(r, "delta_bytes", (double)delta);
            char series[64];
            snprintf(series, sizeof series, "theus commit, %s", lname);
            plot_point("commit.scaling-gpu", series, fracs[fi] * 100, cm * 1e3);
            if (layout == 0) {
                plot_point("commit.scaling-gpu", "delta cudaMemcpy", fracs[fi] * 100,
                           ms[1].st.median * 1e3);
                plot_point("commit.scaling-gpu", "whole-field cudaMemcpy", fracs[fi] * 100,
                           whole * 1e3);
            }
            printf("%-13s %7.1f%% %9s %7zu | %8.4f %8.4f %8.4f | %7.2f%% | %8.4f %6.2fx | %s\n",
                   lname, fracs[fi] * 100, db, c->nseg, ms[0].st.p10 * 1e3, cm * 1e3,
                   ms[0].st.p90 * 1e3, 100 * cm / whole, ms[1].st.median * 1e3,
                   cm / ms[1].st.median, bench.failures != failures_before ? "CHECK FAILED" : "ok");
            fflush(stdout);
        }
    }
    return 0;
}

int scn_gpu_commit_scaling(void)
{
    g_scn = "commit.scaling";
    if (gpu_init())
        return -1;
    const size_t want = bench.quick ? (size_t)256 << 20 : (size_t)1 << 30;
    const size_t fbytes = fit_gpu_field(want, 4, 3);
    if (fbytes == 0) {
        note_error(g_scn, "not enough device memory for the smallest field");
        return -1;
    }
    char fb[16], what[320];
    snprintf(what, sizeof what,
             "commit cost as the written fraction of a %s f32 device field grows (device "
             "payloads staged before each commit), against cudaMemcpy of the whole field device "
             "to device; L2 flushed; CUDA events%s", fmt_bytes((double)fbytes, fb, sizeof fb),
             fbytes < want ? " (field reduced to fit memory)" : "");
    print_header(g_scn, "gpu", what);
    saved_cfg sc = cfg_push();
    sc_ctx c;
    memset(&c, 0, sizeof c);
    c.field_bytes = fbytes;
    float *mirror = (float *)bench_alloc(fbytes), *Ph = (float *)bench_alloc(fbytes);
    int back_pinned = 0;
    float *back = (float *)host_alloc(fbytes, &back_pinned);
    int rc = -1;
    if (!mirror || !Ph || !back)
        note_error(g_scn, "out of host memory for a %s field", fb);
    else
        rc = scaling_body(&c, mirror, Ph, back);
    if (c.tx)
        theus_tx_abort(c.tx);
    theus_state_destroy(c.st);
    dev_free(c.Pd);
    dev_free(c.W);
    bench_free(mirror, fbytes);
    bench_free(Ph, fbytes);
    host_free(back, fbytes, back_pinned);
    cfg_pop(sc);
    return rc;
}

/* ======================================== stage.h2d ======================================= */

typedef struct h2d_ctx {
    theus_state *st;
    size_t n;           /* bytes of this row */
    float *pageable;
    float *pinned;
    char *D;            /* device destination of the baselines */
    theus_tx *tx;
} h2d_ctx;

static int h2d_prep(void *p)
{
    h2d_ctx *c = (h2d_ctx *)p;
    if (c->tx) {
        theus_tx_abort(c->tx);
        c->tx = NULL;
    }
    CKT(theus_tx_begin(c->st, NULL, &c->tx), "theus_tx_begin");
    return 0;
}

static void h2d_region(const h2d_ctx *c, theus_region *r)
{
    memset(r, 0, sizeof *r);
    r->ndim = 1;
    r->stop[0] = (int64_t)(c->n / 4);
}

static int h2d_stage(void *p, double *secs)
{
    h2d_ctx *c = (h2d_ctx *)p;
    theus_region r;
    h2d_region(c, &r);
    if (t_begin_sync(0))
        return -1;
    CKT(theus_tx_write(c->tx, "x", &r, c->pageable, THEUS_MEM_HOST), "theus_tx_write");
    return t_end(secs);
}

static int h2d_stage_commit(void *p, double *secs)
{
    h2d_ctx *c = (h2d_ctx *)p;
    theus_region r;
    h2d_region(c, &r);
    if (t_begin_sync(0))
        return -1;
    theus_tx *tx = c->tx;
    c->tx = NULL;
    int rc = theus_tx_write(tx, "x", &r, c->pageable, THEUS_MEM_HOST);
    if (rc != THEUS_OK) {
        theus_tx_abort(tx);
        return theus_fail(rc, "theus_tx_write");
    }
    CKT(theus_tx_commit(tx, NULL), "theus_tx_commit");
    return t_end(secs);
}

static int h2d_pageable(void *p, double *secs)
{
    h2d_ctx *c = (h2d_ctx *)p;
    if (t_begin_sync(0))
        return -1;
    CK(cudaMemcpy(c->D, c->pageable, c->n, cudaMemcpyHostToDevice));
    return t_end(secs);
}

static int h2d_pinned(void *p, double *secs)
{
    h2d_ctx *c = (h2d_ctx *)p;
    if (t_begin(0))
        return -1;
    CK(cudaMemcpyAsync(c->D, c->pinned, c->n, cudaMemcpyHostToDevice, G.s));
    return t_end(secs);
}

static int h2d_body(h2d_ctx *c, size_t maxb, float *back)
{
    const char *scn = g_scn;
    static const size_t sizes_full[] = {4096, 65536, 1 << 20, 16 << 20, 256 << 20};
    static const size_t sizes_quick[] = {4096, 65536, 1 << 20, 16 << 20, 64 << 20};
    const size_t *sizes = bench.quick ? sizes_quick : sizes_full;
    if (device_state(maxb / 4, NULL, &c->st))
        return -1;
    CK(cudaMalloc((void **)&c->D, maxb));
    printf("%9s | %-16s | %-16s | %-9s | %-9s | %-13s |\n", "bytes", "theus_tx_write",
           "write+commit", "pageable", "pinned", "stage/");
    printf("%9s | %7s %8s | %7s %8s | %9s | %9s | %6s %6s |\n", "", "GB/s", "us", "GB/s", "us",
           "GB/s", "GB/s", "pageab", "pinned");
    for (size_t si = 0; si < 5; si++) {
        const size_t n = sizes[si];
        if (n > maxb)
            break;
        c->n = n;
        for (size_t j = 0; j < n / 4; j++)
            c->pageable[j] = c->pinned[j] = (float)((j + n / 4096) % 1000 + 1);
        measurement ms[4];
        bench_op ops[4] = {mkop(c, h2d_prep, h2d_stage), mkop(c, h2d_prep, h2d_stage_commit),
                           mkop(c, NULL, h2d_pageable), mkop(c, NULL, h2d_pinned)};
        const int failures_before = bench.failures;
        if (measure_set(ops, 4, ms))
            return -1;
        if (c->tx) {
            theus_tx_abort(c->tx);
            c->tx = NULL;
        }
        char casename[64], nb[16];
        snprintf(casename, sizeof casename, "%s", fmt_bytes((double)n, nb, sizeof nb));
        theus_region r;
        h2d_region(c, &r);
        if (read_field(c->st, "x", &r, back))
            return -1;
        size_t bad = first_diff_f(back, c->pageable, n / 4);
        note_check(scn, casename, bad == SIZE_MAX, "committed region vs host payload: %s",
                   bad == SIZE_MAX ? "identical" : "differ");
        CK(cudaMemcpy(back, c->D, n, cudaMemcpyDeviceToHost));
        bad = first_diff_f(back, c->pinned, n / 4);
        note_check(scn, casename, bad == SIZE_MAX, "cudaMemcpy baselines vs host payload: %s",
                   bad == SIZE_MAX ? "identical" : "differ");
        const char *methods[4] = {"theus.stage", "theus.stage_commit",
                                  "baseline.cudamemcpy_pageable", "baseline.cudamemcpy_pinned"};
        double g[4];
        for (int k = 0; k < 4; k++)   /* all four first: the ratios need the baselines' */
            g[k] = gbps((double)n, ms[k].st.median);
        for (int k = 0; k < 4; k++) {
            bench_result *rr = result_add(scn, "gpu", casename, methods[k]);
            result_set(rr, &ms[k], (double)n, 1, "transfer");
            result_param(rr, "bytes", (double)n);
            result_param_str(rr, "source", k == 3 ? "pinned" : "pageable");
            if (k < 2) {
                result_metric(rr, "ratio_vs_pageable_cudamemcpy", g[k] / g[2]);
                result_metric(rr, "ratio_vs_pinned_cudamemcpy", g[k] / g[3]);
            }
        }
        plot_axes("stage.h2d-gpu", "stage.h2d: host payload into a device field (GPU)",
                  "bytes", "GB/s (bytes transferred)", 1, 0);
        for (int k = 0; k < 4; k++)
            plot_point("stage.h2d-gpu", methods[k], (double)n, g[k]);
        printf("%9s | %7.2f %8.1f | %7.2f %8.1f | %9.2f | %9.2f | %5.2fx %5.2fx | %s\n", casename,
               g[0], ms[0].st.median * 1e6, g[1], ms[1].st.median * 1e6, g[2], g[3], g[0] / g[2],
               g[0] / g[3], bench.failures != failures_before ? "CHECK FAILED" : "ok");
        fflush(stdout);
    }
    return 0;
}

int scn_gpu_stage_h2d(void)
{
    g_scn = "stage.h2d";
    if (gpu_init())
        return -1;
    size_t maxb = bench.quick ? (size_t)64 << 20 : (size_t)256 << 20;
    if (bench.max_field && bench.max_field < maxb)
        maxb = bench.max_field;
    print_header(g_scn, "gpu", "one region of a device field written from a pageable host "
                 "buffer through theus_tx_write (staged), and written + committed, against "
                 "cudaMemcpy from pageable and from pinned memory; GB/s = bytes / time");
    saved_cfg sc = cfg_push();
    h2d_ctx c;
    memset(&c, 0, sizeof c);
    int back_pinned = 0, rc = -1;
    float *back = NULL;
    c.pageable = (float *)bench_alloc(maxb);
    if (cudaHostAlloc((void **)&c.pinned, maxb, cudaHostAllocDefault) != cudaSuccess) {
        cuda_fail(cudaGetLastError(), "cudaHostAlloc", __LINE__);
        c.pinned = NULL;
        goto out;
    }
    back = (float *)host_alloc(maxb, &back_pinned);
    if (!c.pageable || !back) {
        note_error(g_scn, "out of host memory");
        goto out;
    }
    rc = h2d_body(&c, maxb, back);
out:
    if (c.tx)
        theus_tx_abort(c.tx);
    theus_state_destroy(c.st);
    dev_free(c.D);
    bench_free(c.pageable, maxb);
    if (c.pinned && cudaFreeHost(c.pinned) != cudaSuccess)
        (void)cudaGetLastError();
    host_free(back, maxb, back_pinned);
    cfg_pop(sc);
    return rc;
}

/* ======================================== machine ========================================= */

static void driver_version(char *out, size_t len)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/driver/nvidia/version", "r");
    if (!f)
        return;
    char line[512];
    if (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "Kernel Module");
        if (p) {
            p += strlen("Kernel Module");
            while (*p == ' ' || *p == '\t')
                p++;
            size_t n = strcspn(p, " \t\n");
            snprintf(out, len, "%.*s", (int)(n < len ? n : len - 1), p);
        } else {
            line[strcspn(line, "\n")] = '\0';
            if (len > 1)
                line[len - 1 < sizeof line ? len - 1 : sizeof line - 1] = '\0';
            memcpy(out, line, strlen(line) + 1);
        }
    }
    fclose(f);
}

/* Best of a few streaming copies of @bytes: kernel and cudaMemcpyAsync, GB/s read+write. */
static int measure_copy(size_t bytes, double *kernel_gbps, double *memcpy_gbps)
{
    char *a = NULL, *b = NULL;
    int rc = -1;
    double best_k = 0, best_m = 0;
    if (cudaMalloc((void **)&a, bytes) != cudaSuccess || cudaMalloc((void **)&b, bytes) != cudaSuccess ||
        cudaMemsetAsync(a, 1, bytes, G.s) != cudaSuccess) {
        cuda_fail(cudaGetLastError(), "allocating the bandwidth probe", __LINE__);
        goto out;
    }
    for (int i = 0; i < 6; i++) {
        double t;
        if (t_begin(1) || launch_copy(b, a, bytes) || t_end(&t))
            goto out;
        if (i && 2.0 * bytes / t * 1e-9 > best_k)
            best_k = 2.0 * bytes / t * 1e-9;
        if (t_begin(1))
            goto out;
        if (cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, G.s) != cudaSuccess) {
            cuda_fail(cudaGetLastError(), "cudaMemcpyAsync", __LINE__);
            goto out;
        }
        if (t_end(&t))
            goto out;
        if (i && 2.0 * bytes / t * 1e-9 > best_m)
            best_m = 2.0 * bytes / t * 1e-9;
    }
    *kernel_gbps = best_k;
    *memcpy_gbps = best_m;
    rc = 0;
out:
    dev_free(a);
    dev_free(b);
    return rc;
}

void gpu_collect(gpu_info *g)
{
    memset(g, 0, sizeof *g);
    g->built = 1;
    const char *saved = g_scn;
    g_scn = "machine";
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        (void)cudaGetLastError();
        snprintf(g->note, sizeof g->note, "no CUDA device (%s)",
                 e != cudaSuccess ? cudaGetErrorName(e) : "count 0");
        g_scn = saved;
        return;
    }
    if (!theus_gpu_available()) {
        snprintf(g->note, sizeof g->note, "a CUDA device answers but theus's CUDA backend is off "
                 "(THEUS_DISABLE_GPU, or no kernel image for this device)");
        g_scn = saved;
        return;
    }
    if (gpu_init()) {
        g_scn = saved;
        return;
    }
    struct cudaDeviceProp p;
    if ((e = cudaGetDeviceProperties(&p, G.device)) != cudaSuccess) {
        cuda_fail(e, "cudaGetDeviceProperties", __LINE__);
        g_scn = saved;
        return;
    }
    g->device = G.device;
    snprintf(g->name, sizeof g->name, "%.95s", p.name);
    g->cc_major = p.major;
    g->cc_minor = p.minor;
    g->sms = p.multiProcessorCount;
    g->mem_total = p.totalGlobalMem;
    g->l2_bytes = (size_t)p.l2CacheSize;
    (void)cudaDeviceGetAttribute(&g->mem_clock_khz, cudaDevAttrMemoryClockRate, G.device);
    (void)cudaDeviceGetAttribute(&g->bus_width_bits, cudaDevAttrGlobalMemoryBusWidth, G.device);
    (void)cudaDeviceGetAttribute(&g->ecc, cudaDevAttrEccEnabled, G.device);
    (void)cudaGetLastError();
    if (g->mem_clock_khz > 0 && g->bus_width_bits > 0)
        g->peak_gbps = 2.0 * g->mem_clock_khz * 1e3 * (g->bus_width_bits / 8.0) * 1e-9;
    (void)cudaDriverGetVersion(&g->driver_api);
    (void)cudaRuntimeGetVersion(&g->runtime);
    driver_version(g->driver, sizeof g->driver);
    size_t dfree = 0, dtotal = 0;
    if (cudaMemGetInfo(&dfree, &dtotal) != cudaSuccess)
        (void)cudaGetLastError();
    size_t probe = (size_t)512 << 20;
    while (probe > ((size_t)32 << 20) && 2 * probe > dfree / 2)
        probe /= 2;
    if (measure_copy(probe, &g->copy_gbps, &g->memcpy_gbps) == 0)
        g->present = 1;
    g_scn = saved;
}
