/* The CUDA backend's memory: device and pinned field memory, and staged payloads (device
 * memory from the stream-ordered pool, filled through the lane's pinned bounce halves from
 * pageable host memory; small host payloads in the pinned pool). */
#include "cuda_backend.h"

#include <string.h>

/* Host memory to device memory through the lane's pinned bounce halves. Asynchronous: the
 * caller synchronizes the stream. */
static int h2d_bounce(cuda_lane *l, void *dst, const void *src, size_t n)
{
    if (!l->bounce) {
        void *p = NULL;
        if (cudaHostAlloc(&p, 2 * BOUNCE_HALF, cudaHostAllocPortable) != cudaSuccess) {
            /* No pinned memory to spare: the driver stages pageable copies itself. */
            (void)cudaGetLastError();
            CHECK_CUDA(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, l->stream));
            return THEUS_OK;
        }
        l->bounce = p;
    }
    int used[2] = {0, 0};
    int h = 0;
    for (size_t off = 0; off < n; h ^= 1) {
        size_t len = n - off < BOUNCE_HALF ? n - off : BOUNCE_HALF;
        unsigned char *b = l->bounce + (size_t)h * BOUNCE_HALF;
        if (used[h])
            CHECK_CUDA(cudaEventSynchronize(l->bounce_ev[h]));
        memcpy(b, (const unsigned char *)src + off, len);
        CHECK_CUDA(cudaMemcpyAsync((unsigned char *)dst + off, b, len, cudaMemcpyHostToDevice,
                                   l->stream));
        CHECK_CUDA(cudaEventRecord(l->bounce_ev[h], l->stream));
        used[h] = 1;
        off += len;
    }
    return THEUS_OK;
}

int cuda_alloc(void *ctx, theus_placement pl, size_t nbytes, void **out)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (pl != THEUS_PLACEMENT_DEVICE && pl != THEUS_PLACEMENT_PINNED)
        return err_set(NULL, THEUS_EINVAL, "CUDA backend: placement %d is not a GPU placement",
                       (int)pl);
    int rc = cuda_call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    const size_t n = nbytes ? nbytes : 1;
    void *p = NULL;
    cudaError_t e;
    if (pl == THEUS_PLACEMENT_PINNED) {
        e = cudaHostAlloc(&p, n, cudaHostAllocMapped | cudaHostAllocPortable);
        if (e != cudaSuccess) {
            rc = cuda_alloc_fail(e, "cudaHostAlloc(pinned field)", n);
            goto out;
        }
        /* Kernels use the host address itself (unified addressing); check that they can. */
        void *dp = NULL;
        e = cudaHostGetDevicePointer(&dp, p, 0);
        if (e != cudaSuccess || dp != p) {
            rc = e != cudaSuccess ? cuda_fail(e, "cudaHostGetDevicePointer", __FILE__, __LINE__)
                                  : err_set(NULL, THEUS_EDEVICE,
                                            "CUDA: pinned memory has a different device address");
            if (cudaFreeHost(p) != cudaSuccess)
                (void)cudaGetLastError();
            goto out;
        }
        memset(p, 0, n);
    } else {
        e = cudaMalloc(&p, n);
        if (e != cudaSuccess) {
            rc = cuda_alloc_fail(e, "cudaMalloc(device field)", n);
            goto out;
        }
        e = cudaMemsetAsync(p, 0, n, k.lane->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(k.lane->stream);
        if (e != cudaSuccess) {
            rc = cuda_fail(e, "zeroing a device field", __FILE__, __LINE__);
            if (cudaFree(p) != cudaSuccess)
                (void)cudaGetLastError();
            goto out;
        }
    }
    *out = p;
out:
    cuda_call_end(&k);
    return rc;
}

void cuda_free(void *ctx, theus_placement pl, void *p)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (!p)
        return;
    int guarded = cuda_call_begin(c, &k) == THEUS_OK;
    cudaError_t e = pl == THEUS_PLACEMENT_PINNED ? cudaFreeHost(p) : cudaFree(p);
    if (e != cudaSuccess)
        (void)cudaGetLastError();
    if (guarded)
        cuda_call_end(&k);
}

int cuda_stage(void *ctx, theus_placement pl, const void *src, theus_mem src_mem,
               size_t nbytes, void **out)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (src_mem != THEUS_MEM_HOST && src_mem != THEUS_MEM_DEVICE)
        return THEUS_EINVAL;
    /* A small host payload needs the device (the pool may allocate a slab) but no lane. */
    int rc = cuda_call_begin_device(c, &k);
    if (rc != THEUS_OK)
        return rc;
    void *p = NULL;
    if (src && src_mem == THEUS_MEM_HOST && nbytes > 0 &&
        (p = pinned_pool_alloc(&c->small, nbytes)) != NULL) {
        memcpy(p, src, nbytes);
        *out = p;
        cuda_call_end(&k);
        return THEUS_OK;
    }
    cuda_call_take_lane(c, &k);
    cuda_lane *l = k.lane;
    if (!src && pl != THEUS_PLACEMENT_DEVICE) {
        /* A buffer the caller fills in place (theus_tx_stage_buffer) for a pinned field:
         * mapped pinned memory, written by host code or by kernels through unified
         * addressing. */
        cudaError_t e = cudaHostAlloc(&p, nbytes ? nbytes : 1,
                                      cudaHostAllocMapped | cudaHostAllocPortable);
        if (e != cudaSuccess) {
            rc = cuda_alloc_fail(e, "cudaHostAlloc(staging buffer)", nbytes);
        } else {
            memset(p, 0, nbytes ? nbytes : 1);
            *out = p;
        }
        cuda_call_end(&k);
        return rc;
    }
    cudaError_t e = cuda_dev_alloc(c, l, nbytes, &p);
    if (e != cudaSuccess) {
        p = NULL;
        rc = cuda_alloc_fail(e, "staging buffer", nbytes);
        goto out;
    }
    if (!src) {
        /* A device buffer the caller's kernels fill in place: zeroed, in stream order. */
        CHECK_CUDA_GOTO(cudaMemsetAsync(p, 0, nbytes ? nbytes : 1, l->stream), rc, out);
    } else if (nbytes) {
        if (src_mem == THEUS_MEM_DEVICE || cuda_is_pinned_host(src))
            CHECK_CUDA_GOTO(cudaMemcpyAsync(p, src, nbytes, cudaMemcpyDefault, l->stream), rc, out);
        else if ((rc = h2d_bounce(l, p, src, nbytes)) != THEUS_OK)
            goto out;
    }
    CHECK_CUDA_GOTO(cudaStreamSynchronize(l->stream), rc, out);
    *out = p;
    p = NULL;
out:
    if (p) {
        cuda_dev_free(c, l, p);
        if (cudaStreamSynchronize(l->stream) != cudaSuccess)
            (void)cudaGetLastError();
    }
    cuda_call_end(&k);
    return rc;
}

void cuda_unstage(void *ctx, void *staged)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (!staged)
        return;
    /* A small pinned block: whoever read it (replay, overlay, check) waited for it. */
    const int cls = pinned_pool_lookup(&c->small, staged);
    if (cls >= 0) {
        /* A stream-ordered replay may still read it: held until every one has finished. */
        pinned_pool_free(&c->small, staged, cls, cuda_async_busy(c));
        return;
    }
    if (cuda_call_begin(c, &k) != THEUS_OK) {
        /* Cannot reach the device: leaking the buffer beats freeing it wrongly. */
        return;
    }
    /* Whoever read the payload (replay, overlay, check) waited for it: free in stream order
     * (pinned host memory: a caller-filled buffer from cuda_stage). */
    if (cuda_is_pinned_host(staged)) {
        if (cuda_async_settle(c) != THEUS_OK)
            (void)cudaGetLastError();
        if (cudaFreeHost(staged) != cudaSuccess)
            (void)cudaGetLastError();
    } else {
        cuda_dev_free(c, k.lane, staged);
    }
    cuda_call_end(&k);
}
