/* The one commit path. Every commit — theus_tx_commit, theus_state_init_field, private or
 * shared — runs commit_run: gatekeeper (before the lock), commit lock, version guard,
 * gatekeeper on results, listeners' prepare, replay, publish (log, block map, versions),
 * listeners' published, unlock, listeners' acknowledge. A state with ops (a shared state)
 * replays and publishes through them (its redo record, shared/redo.c), a private one here. */
#include "alloc.h"
#include "batch_replay.h"
#include "commit_stream.h"
#include "conflict.h"
#include "error.h"
#include "gatekeeper.h"
#include "publish.h"
#include "stream_fence.h"
#include "tx.h"
#include <stdint.h>
#include <string.h>

/* The version guard, with the commit lock held and the state at version @now: whether a
 * commit after the base conflicts with @tx under its isolation level (then *c says how).
 * ADD deltas never conflict (they commute with every commit: the sum lands on whatever is
 * there); ASSIGN deltas conflict with any write since the base to their region; reads,
 * under serializable isolation, likewise. */
static int version_guard(const theus_tx *tx, uint64_t now, theus_conflict *c)
{
    const theus_state *st = tx->st;
    if (now == tx->base)
        return 0;
    if (tx->isolation == THEUS_ISOLATION_STRICT) {
        memset(c, 0, sizeof *c);
        c->kind = THEUS_CONFLICT_STRICT;
        c->base = tx->base;
        c->version = tx->base + 1;
        return 1;
    }
    for (size_t k = 0; k < tx->ndeltas; k++) {
        const delta *d = &tx->deltas[k];
        if (d->op == DELTA_ASSIGN &&
            (d->batch ? tx_batch_conflict(st, tx->base, d, c)
                      : conflict_check_region(st, tx->base, d->field, &d->r,
                                              THEUS_CONFLICT_WRITE_WRITE, c)))
            return 1;
    }
    if (tx->isolation == THEUS_ISOLATION_SERIALIZABLE)
        for (size_t k = 0; k < tx->nreads; k++)
            if (conflict_check_region(st, tx->base, tx->reads[k].field, &tx->reads[k].r,
                                      THEUS_CONFLICT_READ_WRITE, c))
                return 1;
    return 0;
}

typedef struct tx_ops {
    const theus_state *st;
    const theus_tx *tx;
} tx_ops;

static const theus_backend *tx_op(void *user, size_t k, replay_op *op)
{
    const tx_ops *t = user;
    const delta *d = &t->tx->deltas[k];
    if (op) {
        op->op = d->op;
        op->dtype = (theus_dtype)t->st->fields[d->field].dtype;
        op->base = t->st->data[d->field];
        op->frame = &t->st->frames[d->field];
        op->sub = d->r;
        op->payload = d->payload;
        op->batch = d->batch;
    }
    return t->st->backend[d->field];
}

/* A private state's replay and publish, inside the replay gate. With @cs (a stream-ordered
 * commit) the replay may only be enqueued: its fence is recorded before the gate is left,
 * so that a reader that sees the new version finds the fence and waits for it. */
static int apply_private(theus_state *st, const theus_tx *tx, uint64_t version, int init,
                         replay_op *ops, commit_stream *cs)
{
    state_replay_gate_enter(st);
    tx_ops src = {st, tx};
    /* The whole batch of a backend in one call (one kernel launch on the GPU). */
    int rc = cs ? commit_stream_replay(tx, tx_op, &src, ops, cs)
                : batch_replay(tx->ndeltas, tx_op, &src, ops, tx->ndeltas);
    if (rc != THEUS_OK)
        rc = err_wrap(st, rc, "commit: replay failed");
    if (rc == THEUS_OK && cs && cs->fence) {
        /* Out of memory for the record: the fence was waited for (the commit is complete). */
        int frc = stream_fence_set(st, &st->fence, cs->fb, cs->fence, version);
        cs->fence = NULL;
        if (frc != THEUS_OK && frc != THEUS_ENOMEM)
            rc = frc;
    }
    if (rc == THEUS_OK && !init) {
        for (size_t k = 0; k < tx->ndeltas; k++) {
            if (tx->deltas[k].batch)
                tx_batch_publish(st, &tx->deltas[k], version);
            else
                publish_region(st, tx->deltas[k].field, &tx->deltas[k].r, version);
        }
        publish_log_append(st, tx, version);
        atomic_fetch_add(&st->hdr->stats.commits, 1);
        publish_version(st, version);
    }
    state_replay_gate_leave(st);
    return rc;
}

static int fail_commit(theus_tx *tx, int init, int rc)
{
    if (!init)
        atomic_fetch_add(&tx->st->hdr->stats.aborts, 1);
    tx_free(tx);
    return rc;
}

/* The one path (see the top of the file). Consumes @tx. @init: theus_state_init_field
 * (the state must still be at version 1; nothing is versioned or logged). */
static int commit_run(theus_tx *tx, int init, commit_stream *cs, uint64_t *committed_version)
{
    theus_state *st = tx->st;
    state_header *h = st->hdr;
    gate_plan *plan = NULL;
    /* A replay error a stream-ordered commit left refuses every commit (the state's bytes
     * are unknown); the synchronous replay orders after enqueued ones in its backend. */
    int rc = cs ? commit_stream_prepare(tx, cs) : stream_fence_error(st, &st->fence, "commit");
    if (rc != THEUS_OK)
        return fail_commit(tx, init, rc);
    rc = gate_begin(st, tx, &plan);
    replay_op *ops = NULL;
    if (rc == THEUS_OK && !st->ops && !(ops = theus_xmalloc(tx->ndeltas * sizeof *ops)))
        rc = err_set(st, THEUS_ENOMEM, "commit: out of memory");
    if (rc == THEUS_OK)
        rc = state_commit_lock(st, tx->priority_ticket);
    if (rc != THEUS_OK) {
        gate_end(plan);
        theus_xfree(ops);
        return fail_commit(tx, init, rc);
    }

    uint64_t now = atomic_load_explicit(&h->version, memory_order_relaxed);
    theus_conflict c;
    if (init && now != 1) {
        rc = err_set(st, THEUS_EBUSY, "field '%s': initial values only before the first commit",
                     st->fields[tx->deltas[0].field].name);
    } else if (!init && version_guard(tx, now, &c)) {
        atomic_fetch_add(&h->stats.conflicts, 1);
        rc = err_conflict(st, &c);
    }
    if (rc == THEUS_OK)
        rc = gate_finish(st, tx, plan);
    gate_end(plan);
    publish_batch batch = {.st = st, .version = init ? 1 : now + 1, .base = tx->base, .tx = tx,
                           .init = init};
    if (rc == THEUS_OK)
        rc = publish_prepare(&batch);
    if (rc == THEUS_OK) {
        rc = st->ops ? st->ops->apply(st, tx, batch.version, !init)
                     : apply_private(st, tx, batch.version, init, ops, cs);
        if (rc != THEUS_OK)
            publish_cancel(&batch);
        else
            publish_notify(&batch);
    }
    state_commit_unlock(st);
    theus_xfree(ops);
    if (rc != THEUS_OK)
        return fail_commit(tx, init, rc);
    rc = publish_acknowledge(&batch);
    if (committed_version)
        *committed_version = batch.version;
    tx_free(tx);
    return rc;
}

int theus_tx_commit(theus_tx *tx, uint64_t *committed_version)
{
    if (!tx)
        return err_set(NULL, THEUS_EINVAL, "theus_tx_commit: NULL transaction");
    if (tx->ndeltas == 0) {
        /* Every read was checked against the base when it was made: nothing to publish. */
        if (committed_version)
            *committed_version = tx->base;
        tx_free(tx);
        return THEUS_OK;
    }
    return commit_run(tx, 0, NULL, committed_version);
}

int theus_state_init_field(theus_state *st, const char *field, const void *src, theus_mem src_mem)
{
    if (!st || !field || !src)
        return err_set(st, THEUS_EINVAL, "theus_state_init_field: NULL argument");
    int i = state_find_field(st, field);
    if (i < 0)
        return err_set(st, THEUS_ENOENT, "no field '%s'", field);
    if (src_mem != THEUS_MEM_HOST && src_mem != THEUS_MEM_DEVICE)
        return err_set(st, THEUS_EINVAL, "theus_state_init_field: unknown buffer kind %d",
                       (int)src_mem);
    /* A transaction of one whole-field ASSIGN (const fields included: this is creation). */
    theus_tx *tx = theus_xcalloc(1, sizeof *tx);
    if (!tx || tx_grow((void **)&tx->deltas, &tx->cap_deltas, 1, sizeof *tx->deltas)) {
        theus_xfree(tx);
        return err_set(st, THEUS_ENOMEM, "field '%s': out of memory", field);
    }
    tx->st = st;
    tx->base = 1;
    const field_desc *f = &st->fields[i];
    const theus_backend *b = st->backend[i];
    void *staged = NULL;
    int rc = b->iface->stage(b->ctx, (theus_placement)f->placement, src, src_mem, f->nbytes,
                             &staged);
    if (rc != THEUS_OK) {
        tx_free(tx);
        return err_wrap(st, rc, "cannot stage the initial value of '%s'", field);
    }
    tx->deltas[0] = (delta){.field = (uint32_t)i, .op = DELTA_ASSIGN, .r = st->frames[i],
                            .nelems = f->nelems, .payload = staged};
    tx->ndeltas = 1;
    return commit_run(tx, 1, NULL, NULL);
}

int theus_tx_commit_on_stream(theus_tx *tx, void *stream, uint64_t *committed_version)
{
    if (!tx)
        return err_set(NULL, THEUS_EINVAL, "theus_tx_commit_on_stream: NULL transaction");
    if (tx->ndeltas == 0) {
        if (committed_version)
            *committed_version = tx->base;
        tx_free(tx);
        return THEUS_OK;
    }
    commit_stream cs = {.stream = stream};
    return commit_run(tx, 0, &cs, committed_version);
}

int theus_state_wait(theus_state *st, void *stream)
{
    if (!st)
        return err_set(NULL, THEUS_EINVAL, "state_wait: NULL state");
    return stream_fence_order(st, &st->fence, stream);
}
