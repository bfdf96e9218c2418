/* theus-bench's GPU helpers (gpu_common.cuh): the process-wide resources, reference kernels,
 * event timing, memory helpers and the theus set-up the GPU scenarios share. */
#include "gpu_common.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

gpu_res G;
const char *gpu_scn = "gpu";

int cuda_fail(cudaError_t e, const char *what, const char *file, int line)
{
    (void)cudaGetLastError();
    note_error(gpu_scn, "CUDA: %s: %s (%s) at %s:%d", what, cudaGetErrorName(e),
               cudaGetErrorString(e), file, line);
    return -1;
}

int theus_fail(int rc, const char *what)
{
    note_error(gpu_scn, "%s: %s (%s)", what, theus_strerror(rc), theus_last_error_message());
    return -1;
}

int gpu_init(void)
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

saved_cfg cfg_push(void)
{
    saved_cfg s = {bench.min_samples, bench.max_samples, bench.max_seconds, bench.stable_tol};
    bench.min_samples = 10;
    bench.max_samples = bench.quick ? 12 : 20;
    bench.max_seconds = bench.quick ? 0.05 : 0.25;
    bench.stable_tol = bench.quick ? 0.03 : 0.02;
    return s;
}

void cfg_pop(saved_cfg s)
{
    bench.min_samples = s.mn;
    bench.max_samples = s.mx;
    bench.max_seconds = s.sec;
    bench.stable_tol = s.tol;
}

/* ---- kernels --------------------------------------------------------------------------- */

static __global__ void k_copy16(uint4 *__restrict__ d, const uint4 *__restrict__ s, size_t n)
{
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        d[i] = s[i];
}

/* d += s, 16 bytes a thread (c = a + b with c = a: reads 2P, writes P). */
static __global__ void k_add16(float4 *__restrict__ d, const float4 *__restrict__ s, size_t n)
{
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        d[i] = add4(d[i], s[i]);
}

static __global__ void k_cmp(const uint32_t *__restrict__ a, const uint32_t *__restrict__ b, size_t n,
                      unsigned long long *out)
{
    const size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        if (a[i] != b[i]) {
            atomicAdd(&out[0], 1ull);
            atomicMin(&out[1], (unsigned long long)i);
        }
}

unsigned grid_for(size_t items, unsigned per_block, unsigned max_per_sm)
{
    size_t g = (items + per_block - 1) / per_block;
    size_t cap = (size_t)G.sms * max_per_sm;
    if (g > cap)
        g = cap;
    return g ? (unsigned)g : 1u;
}

int launch_copy(void *d, const void *s, size_t bytes)
{
    const size_t n = bytes / 16;
    k_copy16<<<grid_for(n, 256, 8), 256, 0, G.s>>>((uint4 *)d, (const uint4 *)s, n);
    CK(cudaGetLastError());
    return 0;
}

void enqueue_add(void *d, const void *s, size_t bytes)
{
    const size_t n = bytes / 16;
    k_add16<<<grid_for(n, 256, 8), 256, 0, G.s>>>((float4 *)d, (const float4 *)s, n);
}

int launch_add(void *d, const void *s, size_t bytes)
{
    enqueue_add(d, s, bytes);
    CK(cudaGetLastError());
    return 0;
}

long long dev_compare(const void *a, const void *b, size_t bytes, size_t *first)
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
int t_begin(int flush)
{
    if (flush)
        CK(cudaMemsetAsync(G.flush, (int)(G.flush_gen++ & 0xff), G.flush_bytes, G.s));
    CK(cudaEventRecord(G.e0, G.s));
    return 0;
}

/* The same, for a synchronous host call: the flush finishes first (nothing of ours runs
 * while the call works), then the start event is recorded on the idle stream, so that it is
 * stamped as the call begins. */
int t_begin_sync(int flush)
{
    if (flush) {
        CK(cudaMemsetAsync(G.flush, (int)(G.flush_gen++ & 0xff), G.flush_bytes, G.s));
        CK(cudaStreamSynchronize(G.s));
    }
    CK(cudaEventRecord(G.e0, G.s));
    return 0;
}

int t_end(double *secs)
{
    CK(cudaEventRecord(G.e1, G.s));
    CK(cudaEventSynchronize(G.e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, G.e0, G.e1));
    *secs = (double)ms * 1e-3;
    return 0;
}

bench_op mkop(void *ctx, int (*prep)(void *), int (*run_timed)(void *, double *))
{
    bench_op o;
    memset(&o, 0, sizeof o);
    o.ctx = ctx;
    o.prep = prep;
    o.run_timed = run_timed;
    o.flush = 0;    /* the CPU's LLC: irrelevant here; the L2 flush is inside run_timed */
    return o;
}

double gbps(double bytes, double secs)
{
    return secs > 0 ? bytes / secs * 1e-9 : NAN;
}

/* ---- memory helpers ---------------------------------------------------------------------- */

/* Host buffer for reading fields back: pinned when possible (faster), pageable otherwise. */
void *host_alloc(size_t bytes, int *pinned)
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

void host_free(void *p, size_t bytes, int pinned)
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

void dev_free(void *p)
{
    if (p && cudaFree(p) != cudaSuccess)
        (void)cudaGetLastError();
}

/* The largest field, at most @want, for which @ndev field-sized device buffers (plus 1 GiB of
 * slack for theus's staging, descriptors and cub) fit in the free device memory and @nhost
 * host buffers in the available host memory. 0 when not even 16 MiB fit. */
size_t fit_gpu_field(size_t want, int ndev, int nhost)
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

int read_field(theus_state *st, const char *field, const theus_region *r, void *dst)
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
int device_state(size_t nelems, const float *init, theus_state **st)
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
        note_error(gpu_scn, "the field was placed in %s memory, not on the device",
                   theus_placement_name(fi.placement));
        return -1;
    }
    if (init)
        CKT(theus_state_init_field(*st, "x", init, THEUS_MEM_HOST), "theus_state_init_field");
    return 0;
}
int gpu_stage_segs(theus_state *st, theus_tx **tx, int add, const bench_seg *segs, size_t n,
                   const char *payload)
{
    if (*tx) {
        theus_tx_abort(*tx);
        *tx = NULL;
    }
    CKT(theus_tx_begin(st, NULL, tx), "theus_tx_begin");
    for (size_t i = 0; i < n; i++) {
        theus_region r;
        memset(&r, 0, sizeof r);
        r.ndim = 1;
        r.start[0] = (int64_t)(segs[i].off / 4);
        r.stop[0] = (int64_t)((segs[i].off + segs[i].size) / 4);
        const void *pl = payload + segs[i].poff;
        int rc = add ? theus_tx_add(*tx, "x", &r, pl, THEUS_MEM_DEVICE)
                     : theus_tx_write(*tx, "x", &r, pl, THEUS_MEM_DEVICE);
        if (rc != THEUS_OK) {
            theus_tx_abort(*tx);
            *tx = NULL;
            return theus_fail(rc, "staging a device payload");
        }
    }
    return 0;
}

int gpu_commit_timed(theus_tx **tx, double *secs)
{
    if (t_begin_sync(1))
        return -1;
    theus_tx *t = *tx;
    *tx = NULL;
    CKT(theus_tx_commit(t, NULL), "theus_tx_commit");
    return t_end(secs);
}
