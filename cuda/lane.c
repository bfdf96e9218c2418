/* The CUDA backend's lanes (a stream, events and pinned buffers each) and the device guard
 * every call takes; device scratch in a lane's stream order. */
#include "cuda_backend.h"
#include "alloc.h"

#include <string.h>

static cuda_lane *lane_acquire(cuda_ctx *c)
{
    unsigned start = atomic_fetch_add_explicit(&c->next_lane, 1u, memory_order_relaxed);
    for (unsigned i = 0; i < CUDA_LANES; i++) {
        cuda_lane *l = &c->lanes[(start + i) % CUDA_LANES];
        if (pthread_mutex_trylock(&l->mu) == 0)
            return l;
    }
    cuda_lane *l = &c->lanes[start % CUDA_LANES];
    pthread_mutex_lock(&l->mu);
    return l;
}

int cuda_call_begin_device(cuda_ctx *c, cuda_call *k)
{
    int cur = -1;
    k->prev_device = -1;
    k->lane = NULL;
    if (cudaGetDevice(&cur) != cudaSuccess) {
        (void)cudaGetLastError();
        cur = -1;
    }
    if (cur != c->device) {
        CHECK_CUDA(cudaSetDevice(c->device));
        k->prev_device = cur;
    }
    return THEUS_OK;
}

int cuda_call_begin_unordered(cuda_ctx *c, cuda_call *k)
{
    int rc = cuda_call_begin_device(c, k);
    if (rc == THEUS_OK)
        k->lane = lane_acquire(c);
    return rc;
}

void cuda_call_take_lane(cuda_ctx *c, cuda_call *k)
{
    if (!k->lane)
        k->lane = lane_acquire(c);
}

int cuda_call_begin(cuda_ctx *c, cuda_call *k)
{
    int rc = cuda_call_begin_unordered(c, k);
    if (rc == THEUS_OK && (rc = cuda_lane_order(c, k->lane)) != THEUS_OK)
        cuda_call_end(k);
    return rc;
}

void cuda_call_end(cuda_call *k)
{
    if (k->lane)
        pthread_mutex_unlock(&k->lane->mu);
    if (k->prev_device >= 0 && cudaSetDevice(k->prev_device) != cudaSuccess)
        (void)cudaGetLastError();
}

cudaError_t cuda_dev_alloc(cuda_ctx *c, cuda_lane *l, size_t n, void **out)
{
    *out = NULL;
    if (c->pool)
        return cudaMallocFromPoolAsync(out, n ? n : 1, c->pool, l->stream);
    return cudaMalloc(out, n ? n : 1);
}

void cuda_dev_free(cuda_ctx *c, cuda_lane *l, void *p)
{
    if (!p)
        return;
    cudaError_t e = c->pool ? cudaFreeAsync(p, l->stream) : cudaFree(p);
    if (e != cudaSuccess)
        (void)cudaGetLastError();
}

int cuda_alloc_fail(cudaError_t e, const char *what, size_t nbytes)
{
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return err_set(NULL, THEUS_ENOMEM, "CUDA: out of memory allocating %zu bytes (%s)",
                       nbytes, what);
    }
    return cuda_fail(e, what, __FILE__, __LINE__);
}

int cuda_is_pinned_host(const void *p)
{
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return a.type == cudaMemoryTypeHost;
}

int cuda_lane_init(cuda_lane *l)
{
    memset(l, 0, sizeof *l);
    if (pthread_mutex_init(&l->mu, NULL) != 0)
        return -1;
    if (cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&l->bounce_ev[0], cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&l->bounce_ev[1], cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&l->desc_ev, cudaEventDisableTiming) != cudaSuccess) {
        (void)cudaGetLastError();
        cuda_lane_destroy(l);
        return -1;
    }
    return 0;
}

void cuda_lane_destroy(cuda_lane *l)
{
    if (l->stream && cudaStreamSynchronize(l->stream) != cudaSuccess)
        (void)cudaGetLastError();
    if (l->d_first)
        (void)cudaFree(l->d_first);
    if (l->h_first)
        (void)cudaFreeHost(l->h_first);
    if (l->desc_host)
        (void)cudaFreeHost(l->desc_host);
    replay_plan_release(&l->plan);
    theus_xfree(l->xfers);
    if (l->desc_dev)
        (void)cudaFree(l->desc_dev);
    if (l->bounce)
        (void)cudaFreeHost(l->bounce);
    for (int h = 0; h < 2; h++)
        if (l->bounce_ev[h])
            (void)cudaEventDestroy(l->bounce_ev[h]);
    if (l->desc_ev)
        (void)cudaEventDestroy(l->desc_ev);
    if (l->stream)
        (void)cudaStreamDestroy(l->stream);
    (void)cudaGetLastError();
    pthread_mutex_destroy(&l->mu);
    memset(l, 0, sizeof *l);
}
