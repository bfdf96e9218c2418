/* The stream-ordered commit's pieces (see commit_stream.h). */
#include "commit_stream.h"
#include "error.h"
#include "stream_fence.h"
#include "tx.h"

static int needs_host_payloads(const theus_tx *tx)
{
    const theus_state *st = tx->st;
    if (st->listeners.n)
        return 1;
    for (size_t k = 0; k < tx->ndeltas; k++) {
        const field_desc *f = &st->fields[tx->deltas[k].field];
        if (f->cons.finite || f->cons.has_min || f->cons.has_max)
            return 1;
    }
    return 0;
}

int commit_stream_prepare(theus_tx *tx, commit_stream *cs)
{
    theus_state *st = tx->st;
    cs->fb = NULL;
    cs->fence = NULL;
    int rc = stream_fence_error(st, &st->fence, "commit_on_stream");
    if (rc != THEUS_OK)
        return rc;
    cs->enqueue = st->ops == NULL;
    if (needs_host_payloads(tx)) {
        const theus_backend *g = backend_cuda();
        if (g && g->iface->stream_sync && (rc = g->iface->stream_sync(g->ctx, cs->stream)))
            return err_wrap(st, rc, "commit_on_stream: waiting for the caller's stream");
    }
    return THEUS_OK;
}

typedef struct run_ctx {
    commit_stream *cs;
} run_ctx;

static int run(void *user, const theus_backend *b, const replay_op *ops, size_t n)
{
    commit_stream *cs = ((run_ctx *)user)->cs;
    if (!cs->enqueue || !b->iface->replay_on_stream)
        return b->iface->replay(b->ctx, ops, n);
    void *fence = NULL;
    int rc = b->iface->replay_on_stream(b->ctx, ops, n, cs->stream, &fence);
    if (rc != THEUS_OK)
        return rc;
    if (cs->fence) {
        /* A backend orders its replays; another backend's fence is waited for here. */
        if (cs->fb != b)
            rc = cs->fb->iface->fence_wait(cs->fb->ctx, cs->fence, NULL);
        cs->fb->iface->fence_release(cs->fb->ctx, cs->fence);
    }
    cs->fb = b;
    cs->fence = fence;
    return rc;
}

int commit_stream_replay(const theus_tx *tx, batch_op_fn get, void *user, replay_op *ops,
                         commit_stream *cs)
{
    run_ctx r = {cs};
    int rc = batch_replay_run(tx->ndeltas, get, user, ops, tx->ndeltas, run, &r);
    if (rc != THEUS_OK && cs->fence) {
        /* What was enqueued before the failure finishes before the error is returned, as a
         * synchronous replay's earlier groups would have. */
        (void)cs->fb->iface->fence_wait(cs->fb->ctx, cs->fence, NULL);
        cs->fb->iface->fence_release(cs->fb->ctx, cs->fence);
        cs->fence = NULL;
        cs->fb = NULL;
    }
    return rc;
}
