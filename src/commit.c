/* The commit path: schema gatekeeper, CAS version guard with region conflicts under the
 * commit lock, replay of the whole batch, publish (commit log, versions, hooks). */
#include "alloc.h"
#include "dtype.h"
#include "error.h"
#include "shared.h"
#include "tx.h"
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int has_constraints(const field_desc *f)
{
    return f->cons.has_min || f->cons.has_max || f->cons.finite;
}

/* Per field, what the gatekeeper must do: GATE_ASSIGNS checks staged ASSIGN payloads
 * before the lock; GATE_RESULT (the batch adds to a constrained field) checks the values
 * the commit will produce, which depend on the committed state, under the lock. One pass
 * over the batch; *out stays NULL when no constrained field is touched. */
enum { GATE_NONE = 0, GATE_ASSIGNS = 1, GATE_RESULT = 2 };

static int gate_plan(theus_state *st, const theus_tx *tx, unsigned char **out)
{
    *out = NULL;
    unsigned char *plan = NULL;
    for (size_t k = 0; k < tx->ndeltas; k++) {
        const delta *d = &tx->deltas[k];
        if (!has_constraints(&st->fields[d->field]))
            continue;
        if (!plan && !(plan = theus_xcalloc(st->hdr->nfields, 1)))
            return err_set(st, THEUS_ENOMEM, "commit: out of memory");
        if (d->op == DELTA_ADD)
            plan[d->field] = GATE_RESULT;
        else if (plan[d->field] == GATE_NONE)
            plan[d->field] = GATE_ASSIGNS;
    }
    *out = plan;
    return THEUS_OK;
}

static int refuse(theus_state *st, const field_desc *f, size_t bad, double value)
{
    atomic_fetch_add(&st->hdr->stats.schema_refusals, 1);
    char bounds[96] = "";
    if (f->cons.has_min && f->cons.has_max)
        snprintf(bounds, sizeof bounds, " (min %g, max %g)", f->cons.min, f->cons.max);
    else if (f->cons.has_min)
        snprintf(bounds, sizeof bounds, " (min %g)", f->cons.min);
    else if (f->cons.has_max)
        snprintf(bounds, sizeof bounds, " (max %g)", f->cons.max);
    return err_set(st, THEUS_ESCHEMA, "commit refused: field '%s' element %zu would be %g, "
                   "breaking its constraints%s%s", f->name, bad, value,
                   f->cons.finite ? " (finite)" : "", bounds);
}

/* Before the lock: ASSIGN payloads of constrained fields that this transaction does not
 * also add to are the values the commit will write, so they can be checked now. */
static int gatekeep_assigns(theus_state *st, const theus_tx *tx, const unsigned char *plan)
{
    for (size_t k = 0; plan && k < tx->ndeltas; k++) {
        const delta *d = &tx->deltas[k];
        const field_desc *f = &st->fields[d->field];
        if (plan[d->field] != GATE_ASSIGNS)
            continue;
        size_t bad = SIZE_MAX;
        int rc = backend_check(st->backend[d->field], (theus_dtype)f->dtype, d->payload,
                               d->nelems, &f->cons, &bad);
        if (rc != THEUS_OK)
            return err_set(st, rc, "commit: constraint check of '%s' failed to run", f->name);
        if (bad != SIZE_MAX) {
            double value = 0.0;
            backend_get(st->backend[d->field], (theus_dtype)f->dtype, d->payload, d->nelems, bad,
                        &value);
            return refuse(st, f, bad, value);
        }
    }
    return THEUS_OK;
}

/* Under the lock: for constrained fields that receive ADDs, compute the values each
 * delta's region will hold after the commit (committed bytes + this batch) and check them. */
static int gatekeep_adds(theus_state *st, const theus_tx *tx, const unsigned char *plan)
{
    for (size_t k = 0; plan && k < tx->ndeltas; k++) {
        const delta *d = &tx->deltas[k];
        const field_desc *f = &st->fields[d->field];
        if (plan[d->field] != GATE_RESULT)
            continue;
        theus_dtype dt = (theus_dtype)f->dtype;
        const theus_backend *b = st->backend[d->field];
        void *scratch = theus_xmalloc(d->nelems * theus_dtype_size(dt));
        if (!scratch)
            return err_set(st, THEUS_ENOMEM, "commit: out of memory checking '%s'", f->name);
        int rc = b->iface->read(b->ctx, st->data[d->field], &st->frames[d->field], dt, &d->r,
                                scratch, THEUS_MEM_HOST);
        size_t bad = SIZE_MAX;
        if (rc == THEUS_OK)
            rc = tx_overlay(tx, d->field, scratch, &d->r, THEUS_MEM_HOST);
        if (rc == THEUS_OK)
            bad = dtype_check(dt, scratch, d->nelems, &f->cons);
        double value = bad != SIZE_MAX ? dtype_get(dt, scratch, bad) : 0.0;
        theus_xfree(scratch);
        if (rc != THEUS_OK)
            return err_set(st, rc, "commit: cannot read '%s' to check its constraints", f->name);
        if (bad != SIZE_MAX)
            return refuse(st, f, bad, value);
    }
    return THEUS_OK;
}

/* The log records one entry per delta; a batch larger than an eighth of the log is
 * recorded as one bounding box per field instead, which can only add conflicts. */
void batch_log(const theus_state *st, const theus_tx *tx, uint64_t version, log_sink sink,
               void *user)
{
    log_entry e;
    memset(&e, 0, sizeof e);
    e.version = version;
    if (tx->ndeltas <= st->hdr->log.capacity / 8) {
        for (size_t k = 0; k < tx->ndeltas; k++) {
            e.field = tx->deltas[k].field;
            e.op = tx->deltas[k].op;
            e.region = tx->deltas[k].r;
            sink(user, &e);
        }
        return;
    }
    for (uint32_t f = 0; f < st->hdr->nfields; f++) {
        int any = 0;
        for (size_t k = 0; k < tx->ndeltas; k++) {
            const delta *d = &tx->deltas[k];
            if (d->field != f)
                continue;
            if (!any) {
                e.field = f;
                e.op = d->op;
                e.region = d->r;
                any = 1;
            } else {
                region_union_box(&e.region, &d->r);
                if (d->op != (delta_op)e.op)
                    e.op = DELTA_ASSIGN;
            }
        }
        if (any)
            sink(user, &e);
    }
}

static void append_to_log(void *user, const log_entry *e)
{
    theus_state *st = user;
    commit_log_append(&st->hdr->log, st->log_ring, e);
}

/* Replay the batch, grouped by backend so that each backend sees one call. */
static int replay_batch(theus_state *st, const theus_tx *tx, replay_op *ops)
{
    const theus_backend *done[4] = {0};
    size_t ndone = 0;
    for (size_t k = 0; k < tx->ndeltas; k++) {
        const theus_backend *b = st->backend[tx->deltas[k].field];
        int seen = 0;
        for (size_t j = 0; j < ndone; j++)
            seen |= done[j] == b;
        if (seen)
            continue;
        size_t n = 0;
        for (size_t j = k; j < tx->ndeltas; j++) {
            const delta *d = &tx->deltas[j];
            if (st->backend[d->field] != b)
                continue;
            ops[n].op = d->op;
            ops[n].dtype = (theus_dtype)st->fields[d->field].dtype;
            ops[n].base = st->data[d->field];
            ops[n].frame = &st->frames[d->field];
            ops[n].sub = d->r;
            ops[n].payload = d->payload;
            n++;
        }
        int rc = b->iface->replay(b->ctx, ops, n);
        if (rc != THEUS_OK)
            return rc;
        if (ndone < 4)
            done[ndone++] = b;
    }
    return THEUS_OK;
}

static int fail_commit(theus_tx *tx, int rc)
{
    atomic_fetch_add(&tx->st->hdr->stats.aborts, 1);
    tx_free(tx);
    return rc;
}

int theus_tx_commit(theus_tx *tx, uint64_t *committed_version)
{
    if (!tx)
        return err_set(NULL, THEUS_EINVAL, "theus_tx_commit: NULL transaction");
    theus_state *st = tx->st;
    state_header *h = st->hdr;
    if (tx->ndeltas == 0) {
        /* Every read was checked against the base when it was made: nothing to publish. */
        if (committed_version)
            *committed_version = tx->base;
        tx_free(tx);
        return THEUS_OK;
    }
    unsigned char *plan = NULL;
    int rc = gate_plan(st, tx, &plan);
    if (rc == THEUS_OK)
        rc = gatekeep_assigns(st, tx, plan);
    replay_op *ops = NULL;
    if (rc == THEUS_OK && !(ops = theus_xmalloc(tx->ndeltas * sizeof *ops)))
        rc = err_set(st, THEUS_ENOMEM, "commit: out of memory");
    if (rc != THEUS_OK) {
        theus_xfree(plan);
        return fail_commit(tx, rc);
    }

    rc = state_commit_lock(st, tx->priority_ticket);
    if (rc != THEUS_OK) {
        theus_xfree(plan);
        theus_xfree(ops);
        return fail_commit(tx, rc);
    }
    uint64_t now = atomic_load_explicit(&h->version, memory_order_relaxed);
    theus_conflict c;
    if (tx_check_conflicts(tx, now, &c)) {
        state_commit_unlock(st);
        theus_xfree(plan);
        theus_xfree(ops);
        atomic_fetch_add(&h->stats.conflicts, 1);
        return fail_commit(tx, err_conflict(st, &c));
    }
    rc = gatekeep_adds(st, tx, plan);
    theus_xfree(plan);
    const uint64_t next = now + 1;
    struct commit_batch batch = {.st = st, .version = next, .deltas = tx->deltas,
                                 .ndeltas = tx->ndeltas};
    if (rc == THEUS_OK && st->hooks.before_replay)
        rc = st->hooks.before_replay(st->hooks.user, &batch);
    if (rc != THEUS_OK) {
        state_commit_unlock(st);
        theus_xfree(ops);
        return fail_commit(tx, rc);
    }

    if (st->shm) {
        /* Shared: through the redo area, so that a process killed at any point leaves the
         * commit wholly undone or finishable (redo.c); it publishes and counts too. */
        rc = redo_commit(st, tx, next, 1);
    } else {
        state_replay_gate_enter(st);
        rc = replay_batch(st, tx, ops);
        if (rc == THEUS_OK) {
            for (size_t k = 0; k < tx->ndeltas; k++)
                atomic_store_explicit(&st->fields[tx->deltas[k].field].version, next,
                                      memory_order_release);
            batch_log(st, tx, next, append_to_log, st);
            atomic_store_explicit(&h->version, next, memory_order_release);
            atomic_fetch_add(&h->stats.commits, 1);
        }
        state_replay_gate_leave(st);
    }
    if (rc == THEUS_OK && st->hooks.after_publish)
        st->hooks.after_publish(st->hooks.user, &batch);
    state_commit_unlock(st);
    theus_xfree(ops);
    if (rc != THEUS_OK)
        return fail_commit(tx, st->shm ? rc : err_wrap(st, rc, "commit: replay failed"));
    if (committed_version)
        *committed_version = next;
    tx_free(tx);
    return THEUS_OK;
}
