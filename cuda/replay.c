/* The CUDA backend's replay driving: a batch of transfers is planned on the host
 * (replay_plan.c), its descriptors (compact or wide) uploaded with one copy into the lane's
 * own device area, or passed as the kernel's argument when the batch is small, run by one
 * launch of the replay kernel (kernels/replay.cu), and waited for with one
 * cudaStreamSynchronize. Compiled, not yet run on a GPU. */
#include "cuda_backend.h"
#include "alloc.h"

#include "../kernels/replay.cuh"

#include <string.h>

_Static_assert(sizeof(theus_replay_desc) == 56, "descriptor layout shared with replay.cu");
_Static_assert(sizeof(theus_replay_dim) == 24, "descriptor layout shared with replay.cu");
_Static_assert(sizeof(theus_replay_wave) == 32, "descriptor layout shared with replay.cu");
_Static_assert(sizeof(theus_replay_seg) == 16, "compact layout shared with replay.cu");

/* Planning memory a lane keeps between replays (a bigger batch gives its back). */
#define PLAN_KEEP_BYTES ((size_t)16 << 20)
/* Largest device descriptor area a lane keeps for synchronous replays. */
#define DESC_DEV_KEEP ((size_t)1 << 20)

/* Grow the lane's pinned upload area to @need bytes. */
static int desc_reserve(cuda_lane *l, size_t need)
{
    /* A stream-ordered replay's upload may still read the area. */
    if (l->desc_busy) {
        CHECK_CUDA(cudaEventSynchronize(l->desc_ev));
        l->desc_busy = 0;
    }
    if (need <= l->desc_cap)
        return THEUS_OK;
    size_t cap = l->desc_cap ? l->desc_cap : 4096;
    while (cap < need)
        cap *= 2;
    if (l->desc_host) {
        if (cudaFreeHost(l->desc_host) != cudaSuccess)
            (void)cudaGetLastError();
        l->desc_host = NULL;
        l->desc_cap = 0;
    }
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, cap, cudaHostAllocPortable);
    if (e != cudaSuccess)
        return cuda_alloc_fail(e, "pinned descriptor buffer", cap);
    l->desc_host = p;
    l->desc_cap = cap;
    return THEUS_OK;
}

/* The lane's own device area for the descriptors of a synchronous replay: kept between
 * replays (each is waited for before the next can use the lane), so a commit allocates and
 * frees no device memory for its descriptors. Grown to @need (at most DESC_DEV_KEEP). */
static int desc_dev_reserve(cuda_lane *l, size_t need)
{
    if (need <= l->desc_dev_cap)
        return THEUS_OK;
    size_t cap = l->desc_dev_cap ? l->desc_dev_cap : 4096;
    while (cap < need)
        cap *= 2;
    if (l->desc_dev) {
        if (cudaFree(l->desc_dev) != cudaSuccess)
            (void)cudaGetLastError();
        l->desc_dev = NULL;
        l->desc_dev_cap = 0;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, cap);
    if (e != cudaSuccess)
        return cuda_alloc_fail(e, "replay descriptor area", cap);
    l->desc_dev = p;
    l->desc_dev_cap = cap;
    return THEUS_OK;
}

/* Plan, upload and launch; @s NULL: on the lane's stream, waited for; otherwise the launch
 * goes to @s after the upload (on the lane) and nothing is waited for. A small single-wave
 * batch in the compact form is the kernel's argument: no upload, one launch (and one wait). */
static int transfers(cuda_ctx *c, cuda_lane *l, const replay_xfer *t, size_t n, cudaStream_t s,
                     int enqueue)
{
    replay_plan *p = &l->plan;
    cudaStream_t ls = enqueue ? s : l->stream;
    void *dbuf = NULL;
    int own = 0;             /* dbuf is l->desc_dev */
    theus_replay_inline inl;
    size_t total = 0, off2 = 0, off3 = 0;
    int rc = replay_plan_build(p, t, n);
    if (rc != THEUS_OK || p->nwaves == 0)
        goto out;
    if (replay_plan_inline(p, &inl)) {
        CHECK_CUDA_GOTO(theus_replay_inline_launch(&inl, ls), rc, out);
        goto wait;
    }
    total = replay_plan_upload_bytes(p);
    rc = desc_reserve(l, total);
    if (rc != THEUS_OK)
        goto out;
    replay_plan_upload(p, l->desc_host, &off2, &off3);
    if (!enqueue && total <= DESC_DEV_KEEP) {
        if ((rc = desc_dev_reserve(l, total)) != THEUS_OK)
            goto out;
        dbuf = l->desc_dev;
        own = 1;
    } else {
        cudaError_t e = cuda_dev_alloc(c, l, total, &dbuf);
        if (e != cudaSuccess) {
            rc = cuda_alloc_fail(e, "replay descriptors", total);
            goto out;
        }
    }
    CHECK_CUDA_GOTO(cudaMemcpyAsync(dbuf, l->desc_host, total, cudaMemcpyHostToDevice, l->stream),
                    rc, out);
    if (enqueue) {
        CHECK_CUDA_GOTO(cudaEventRecord(l->desc_ev, l->stream), rc, out);
        l->desc_busy = 1;
        CHECK_CUDA_GOTO(cudaStreamWaitEvent(ls, l->desc_ev, 0), rc, out);
    }
    const unsigned char *db = dbuf;
    const theus_replay_wave *waves = (const theus_replay_wave *)(const void *)db;
    if (p->compact)
        CHECK_CUDA_GOTO(theus_replay_compact_launch(
                            waves, p->nwaves, (const theus_replay_seg *)(const void *)(db + off2),
                            (const theus_replay_group *)(const void *)(db + off3),
                            p->max_wave_chunks, c->max_blocks, c->cooperative, ls),
                        rc, out);
    else
        CHECK_CUDA_GOTO(theus_replay_launch(waves, p->nwaves,
                                            (const theus_replay_desc *)(const void *)(db + off2),
                                            (const theus_replay_dim *)(const void *)(db + off3),
                                            p->max_wave_chunks, c->max_blocks, c->cooperative, ls),
                        rc, out);
wait:
    /* One wait for the whole replay: the lane's stream holds nothing else of this call's. */
    if (!enqueue)
        CHECK_CUDA_GOTO(cudaStreamSynchronize(l->stream), rc, out);
out:
    if (own) {
        /* Reused by the next replay on this lane: nothing may still read it. */
        if (rc != THEUS_OK && cudaStreamSynchronize(l->stream) != cudaSuccess)
            (void)cudaGetLastError();
        dbuf = NULL;
    }
    if (dbuf && enqueue && rc == THEUS_OK) {
        /* Freed in @s's order, after the launch that reads it. */
        cudaError_t fe = c->pool ? cudaFreeAsync(dbuf, ls) : cudaFree(dbuf);
        if (fe != cudaSuccess)
            (void)cudaGetLastError();
        dbuf = NULL;
    }
    if (dbuf) {
        cuda_dev_free(c, l, dbuf);
        /* The upload area is reused by the next call: never leave a copy out of it
         * running (on success the wait above already covered it). */
        if (rc != THEUS_OK && cudaStreamSynchronize(l->stream) != cudaSuccess)
            (void)cudaGetLastError();
    }
    /* A huge batch should not keep its planning memory. */
    replay_plan_trim(p, PLAN_KEEP_BYTES);
    return rc;
}

int cuda_run_transfers(cuda_ctx *c, cuda_lane *l, const replay_xfer *t, size_t n)
{
    return transfers(c, l, t, n, NULL, 0);
}

int cuda_enqueue_transfers(cuda_ctx *c, cuda_lane *l, const replay_xfer *t, size_t n,
                           cudaStream_t s)
{
    return transfers(c, l, t, n, s, 1);
}

replay_xfer *cuda_replay_xfers(cuda_lane *l, const replay_op *ops, size_t n)
{
    if (n > l->xfers_cap) {
        size_t cap = l->xfers_cap ? l->xfers_cap : 16;
        while (cap < n && cap <= SIZE_MAX / 4 / sizeof *l->xfers)
            cap *= 2;
        replay_xfer *t = cap >= n ? theus_xmalloc(cap * sizeof *t) : NULL;
        if (!t) {
            err_set(NULL, THEUS_ENOMEM, "CUDA replay: out of memory");
            return NULL;
        }
        theus_xfree(l->xfers);
        l->xfers = t;
        l->xfers_cap = cap;
    }
    replay_xfer *t = l->xfers;
    for (size_t i = 0; i < n; i++) {
        t[i].op = ops[i].op;
        t[i].dtype = ops[i].dtype;
        t[i].dst = ops[i].base;
        t[i].dframe = ops[i].frame;
        t[i].src = ops[i].payload;
        t[i].sframe = &ops[i].sub;
        t[i].sub = &ops[i].sub;
    }
    return t;
}

void cuda_replay_trim(cuda_lane *l)
{
    if (l->xfers_cap * sizeof *l->xfers > PLAN_KEEP_BYTES) {
        theus_xfree(l->xfers);
        l->xfers = NULL;
        l->xfers_cap = 0;
    }
}

int cuda_replay_runs(cuda_ctx *c, cuda_lane *l, const replay_op *ops, const replay_xfer *t,
                     size_t n, cudaStream_t s, int enqueue)
{
    /* Described batches run by their own kernel; the ordinary ops between them go to the
     * planner, run by run, so that the batch's order is kept. (A failure after the first run
     * leaves the earlier runs applied: batches mixed with other deltas on a device field are
     * the one case where this replay can fail half-way.) */
    int rc = THEUS_OK;
    size_t start = 0;
    for (size_t i = 0; i <= n && rc == THEUS_OK; i++) {
        if (i < n && !ops[i].batch)
            continue;
        if (i > start)
            rc = enqueue ? cuda_enqueue_transfers(c, l, t + start, i - start, s)
                         : cuda_run_transfers(c, l, t + start, i - start);
        if (rc == THEUS_OK && i < n)
            rc = enqueue ? cuda_enqueue_batch(c, &ops[i], s) : cuda_replay_batch(c, l, &ops[i]);
        start = i + 1;
    }
    return rc;
}

int cuda_replay(void *ctx, const replay_op *ops, size_t n)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (n == 0)
        return THEUS_OK;
    int rc = cuda_call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    replay_xfer *t = cuda_replay_xfers(k.lane, ops, n);
    rc = t ? cuda_replay_runs(c, k.lane, ops, t, n, NULL, 0) : THEUS_ENOMEM;
    cuda_replay_trim(k.lane);
    cuda_call_end(&k);
    return rc;
}
