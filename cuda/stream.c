/* The CUDA backend's stream-ordered replays (theus_tx_commit_on_stream): the replay of a
 * commit enqueued on the caller's stream, after the caller's earlier work there and after
 * every earlier enqueued replay (the chain event); a fence (an event) per replay for the
 * core to wait on; lanes order their own work on field memory after the chain. Compiled,
 * not yet run on a GPU. */
#include "cuda_backend.h"
#include "alloc.h"

#include <string.h>

int cuda_async_init(cuda_ctx *c)
{
    if (pthread_mutex_init(&c->async_mu, NULL) != 0)
        return -1;
    if (cudaEventCreateWithFlags(&c->chain, cudaEventDisableTiming) != cudaSuccess) {
        (void)cudaGetLastError();
        pthread_mutex_destroy(&c->async_mu);
        return -1;
    }
    atomic_init(&c->async_seq, 0);
    c->fences = NULL;
    return 0;
}

void cuda_async_destroy(cuda_ctx *c)
{
    while (c->fences) {
        cuda_fence *f = c->fences;
        c->fences = f->next;
        (void)cudaEventDestroy(f->ev);
        theus_xfree(f);
    }
    if (c->chain)
        (void)cudaEventDestroy(c->chain);
    c->chain = NULL;
    (void)cudaGetLastError();
    pthread_mutex_destroy(&c->async_mu);
}

int cuda_lane_order(cuda_ctx *c, cuda_lane *l)
{
    if (atomic_load_explicit(&c->async_seq, memory_order_acquire) == l->seen_seq)
        return THEUS_OK;
    pthread_mutex_lock(&c->async_mu);
    const uint64_t seq = atomic_load_explicit(&c->async_seq, memory_order_relaxed);
    cudaError_t e = cudaStreamWaitEvent(l->stream, c->chain, 0);
    pthread_mutex_unlock(&c->async_mu);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaStreamWaitEvent(lane, chain)", __FILE__, __LINE__);
    l->seen_seq = seq;
    return THEUS_OK;
}

int cuda_async_busy(cuda_ctx *c)
{
    if (atomic_load_explicit(&c->async_seq, memory_order_acquire) == 0)
        return 0;
    pthread_mutex_lock(&c->async_mu);
    cudaError_t e = cudaEventQuery(c->chain);
    pthread_mutex_unlock(&c->async_mu);
    if (e == cudaSuccess)
        return 0;
    if (e != cudaErrorNotReady)
        (void)cudaGetLastError();
    return 1;
}

static int async_idle(void *arg)
{
    return !cuda_async_busy(arg);
}

void cuda_async_attach_pool(cuda_ctx *c)
{
    c->small.idle = async_idle;
    c->small.idle_arg = c;
}

int cuda_async_settle(cuda_ctx *c)
{
    if (atomic_load_explicit(&c->async_seq, memory_order_acquire) == 0)
        return THEUS_OK;
    pthread_mutex_lock(&c->async_mu);
    cudaError_t e = cudaEventSynchronize(c->chain);
    pthread_mutex_unlock(&c->async_mu);
    if (e != cudaSuccess)
        return cuda_fail(e, "waiting for stream-ordered replays", __FILE__, __LINE__);
    return THEUS_OK;
}

/* With async_mu held: a fence from the free list or a new one (NULL: recorded). */
static cuda_fence *fence_take(cuda_ctx *c)
{
    cuda_fence *f = c->fences;
    if (f) {
        c->fences = f->next;
        return f;
    }
    f = theus_xmalloc(sizeof *f);
    if (!f) {
        err_set(NULL, THEUS_ENOMEM, "CUDA: out of memory for a replay fence");
        return NULL;
    }
    cudaError_t e = cudaEventCreateWithFlags(&f->ev, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        theus_xfree(f);
        cuda_fail(e, "cudaEventCreate(fence)", __FILE__, __LINE__);
        return NULL;
    }
    return f;
}

int cuda_replay_on_stream(void *ctx, const replay_op *ops, size_t n, void *stream, void **fence)
{
    cuda_ctx *c = ctx;
    cudaStream_t s = (cudaStream_t)stream;
    cuda_call k;
    *fence = NULL;
    if (n == 0)
        return THEUS_OK;
    /* The replay's own lane only plans and uploads (fresh memory): no ordering needed. */
    int rc = cuda_call_begin_unordered(c, &k);
    if (rc != THEUS_OK)
        return rc;
    replay_xfer *t = cuda_replay_xfers(k.lane, ops, n);
    if (!t) {
        cuda_call_end(&k);
        return THEUS_ENOMEM;
    }
    pthread_mutex_lock(&c->async_mu);
    cuda_fence *f = fence_take(c);
    if (!f) {
        rc = err_code() == THEUS_ENOMEM ? THEUS_ENOMEM : THEUS_EDEVICE;
        goto out;
    }
    /* After every earlier enqueued replay (whatever stream it went to). */
    if (atomic_load_explicit(&c->async_seq, memory_order_relaxed) != 0)
        CHECK_CUDA_GOTO(cudaStreamWaitEvent(s, c->chain, 0), rc, out);
    rc = cuda_replay_runs(c, k.lane, ops, t, n, s, 1);
    if (rc != THEUS_OK) {
        /* What was enqueued before the failure completes before the error is returned. */
        if (cudaStreamSynchronize(s) != cudaSuccess)
            (void)cudaGetLastError();
        goto out;
    }
    CHECK_CUDA_GOTO(cudaEventRecord(c->chain, s), rc, out);
    atomic_fetch_add_explicit(&c->async_seq, 1, memory_order_release);
    CHECK_CUDA_GOTO(cudaEventRecord(f->ev, s), rc, out);
    *fence = f;
    f = NULL;
out:
    if (f) {
        f->next = c->fences;
        c->fences = f;
    }
    pthread_mutex_unlock(&c->async_mu);
    cuda_replay_trim(k.lane);
    cuda_call_end(&k);
    return rc;
}

int cuda_fence_wait(void *ctx, void *fence, void *stream)
{
    (void)ctx;
    cuda_fence *f = fence;
    if (!stream) {
        CHECK_CUDA(cudaEventSynchronize(f->ev));
        return THEUS_OK;
    }
    cudaError_t e = cudaEventQuery(f->ev);
    if (e != cudaSuccess && e != cudaErrorNotReady)
        return cuda_fail(e, "a stream-ordered replay", __FILE__, __LINE__);
    CHECK_CUDA(cudaStreamWaitEvent((cudaStream_t)stream, f->ev, 0));
    return THEUS_OK;
}

void cuda_fence_release(void *ctx, void *fence)
{
    cuda_ctx *c = ctx;
    cuda_fence *f = fence;
    if (!f)
        return;
    /* Re-recording a pending event later is fine: waits already queued keep their record. */
    pthread_mutex_lock(&c->async_mu);
    f->next = c->fences;
    c->fences = f;
    pthread_mutex_unlock(&c->async_mu);
}

int cuda_stream_sync(void *ctx, void *stream)
{
    (void)ctx;
    CHECK_CUDA(cudaStreamSynchronize((cudaStream_t)stream));
    return THEUS_OK;
}
