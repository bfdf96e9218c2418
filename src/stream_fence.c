/* A state's stream-ordered replays (see stream_fence.h). */
#include "stream_fence.h"
#include "alloc.h"
#include "error.h"
#include <pthread.h>
#include <stdio.h>
#include <string.h>

struct stream_fence {
    pthread_mutex_t mu;
    const theus_backend *b;  /* backend of @fence */
    void *fence;             /* the latest enqueued replay's fence; NULL: all waited for */
    uint64_t version;        /* the version it replays */
    int err;                 /* kept replay error; THEUS_OK: none */
    uint64_t err_version;
    char msg[256];
};

/* The record, made on first use (NULL when out of memory). */
static struct stream_fence *fence_get(stream_fence_slot *slot)
{
    struct stream_fence *sf = atomic_load_explicit(&slot->p, memory_order_acquire);
    if (sf)
        return sf;
    struct stream_fence *n = theus_xcalloc(1, sizeof *n);
    if (!n)
        return NULL;
    if (pthread_mutex_init(&n->mu, NULL) != 0) {
        theus_xfree(n);
        return NULL;
    }
    struct stream_fence *expected = NULL;
    if (atomic_compare_exchange_strong_explicit(&slot->p, &expected, n, memory_order_acq_rel,
                                                memory_order_acquire))
        return n;
    pthread_mutex_destroy(&n->mu);
    theus_xfree(n);
    return expected;
}

/* With sf->mu held: record the kept error for @st. */
static int report(const theus_state *st, const struct stream_fence *sf, const char *what)
{
    return err_set(st, sf->err, "%s: the stream-ordered replay of version %llu failed, so the "
                   "published bytes are unknown: %s", what, (unsigned long long)sf->err_version,
                   sf->msg);
}

/* With sf->mu held: wait on the host for the fence, keep its error. */
static void wait_host(struct stream_fence *sf)
{
    if (!sf->fence)
        return;
    err_clear();
    int rc = sf->b->iface->fence_wait(sf->b->ctx, sf->fence, NULL);
    if (rc != THEUS_OK && sf->err == THEUS_OK) {
        sf->err = rc;
        sf->err_version = sf->version;
        snprintf(sf->msg, sizeof sf->msg, "%s", theus_last_error_message());
    }
    sf->b->iface->fence_release(sf->b->ctx, sf->fence);
    sf->fence = NULL;
}

int stream_fence_set(const theus_state *st, stream_fence_slot *slot, const theus_backend *b,
                     void *fence, uint64_t version)
{
    struct stream_fence *sf = fence_get(slot);
    if (!sf) {
        int rc = b->iface->fence_wait(b->ctx, fence, NULL);
        b->iface->fence_release(b->ctx, fence);
        if (rc != THEUS_OK)
            return err_wrap(st, rc, "commit_on_stream: the replay failed");
        return THEUS_ENOMEM;
    }
    pthread_mutex_lock(&sf->mu);
    if (sf->fence) {
        if (sf->b == b) {
            /* The new replay runs after the old one (the backend orders its replays). */
            b->iface->fence_release(b->ctx, sf->fence);
            sf->fence = NULL;
        } else {
            wait_host(sf);
        }
    }
    sf->b = b;
    sf->fence = fence;
    sf->version = version;
    pthread_mutex_unlock(&sf->mu);
    return THEUS_OK;
}

/* The record, or NULL (the slot's member is atomic: loading it through a const slot is a
 * read). */
static struct stream_fence *fence_peek(const stream_fence_slot *slot)
{
    return atomic_load_explicit(&((stream_fence_slot *)slot)->p, memory_order_acquire);
}

int stream_fence_settle(const theus_state *st, const stream_fence_slot *slot, const char *what)
{
    struct stream_fence *sf = fence_peek(slot);
    if (!sf)
        return THEUS_OK;
    pthread_mutex_lock(&sf->mu);
    wait_host(sf);
    int rc = sf->err != THEUS_OK ? report(st, sf, what) : THEUS_OK;
    pthread_mutex_unlock(&sf->mu);
    return rc;
}

int stream_fence_error(const theus_state *st, const stream_fence_slot *slot, const char *what)
{
    struct stream_fence *sf = fence_peek(slot);
    if (!sf)
        return THEUS_OK;
    pthread_mutex_lock(&sf->mu);
    int rc = sf->err != THEUS_OK ? report(st, sf, what) : THEUS_OK;
    pthread_mutex_unlock(&sf->mu);
    return rc;
}

int stream_fence_order(const theus_state *st, const stream_fence_slot *slot, void *stream)
{
    if (!stream)
        return stream_fence_settle(st, slot, "state_wait");
    struct stream_fence *sf = fence_peek(slot);
    if (!sf)
        return THEUS_OK;
    pthread_mutex_lock(&sf->mu);
    if (sf->err == THEUS_OK && sf->fence) {
        err_clear();
        int rc = sf->b->iface->fence_wait(sf->b->ctx, sf->fence, stream);
        if (rc != THEUS_OK) {
            sf->err = rc;
            sf->err_version = sf->version;
            snprintf(sf->msg, sizeof sf->msg, "%s", theus_last_error_message());
        }
    }
    int rc = sf->err != THEUS_OK ? report(st, sf, "state_wait") : THEUS_OK;
    pthread_mutex_unlock(&sf->mu);
    return rc;
}

void stream_fence_free(stream_fence_slot *slot)
{
    struct stream_fence *sf = atomic_exchange_explicit(&slot->p, NULL, memory_order_acq_rel);
    if (!sf)
        return;
    wait_host(sf);
    pthread_mutex_destroy(&sf->mu);
    theus_xfree(sf);
}

int stream_fence_inject_error(stream_fence_slot *slot, int code, uint64_t version,
                              const char *msg)
{
    struct stream_fence *sf = fence_get(slot);
    if (!sf)
        return THEUS_ENOMEM;
    pthread_mutex_lock(&sf->mu);
    sf->err = code;
    sf->err_version = version;
    snprintf(sf->msg, sizeof sf->msg, "%s", msg ? msg : "injected");
    pthread_mutex_unlock(&sf->mu);
    return THEUS_OK;
}
