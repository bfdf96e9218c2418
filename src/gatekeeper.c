/* The schema gatekeeper: constraint checks of a batch's values before and under the commit
 * lock, and the final values of a delta's region (see gatekeeper.h). */
#include "gatekeeper.h"
#include "alloc.h"
#include "dtype.h"
#include "error.h"
#include "seg_batch.h"
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Per field: GATE_ASSIGNS checks staged ASSIGN payloads before the lock; GATE_RESULT (the
 * batch adds to a constrained field, or stages a described batch there) checks the values
 * the commit will produce, which depend on the committed state, under the lock; GATE_BATCH
 * (a described batch that is the field's only delta, on a backend with batch_result: a
 * device field) has those values computed and checked by the backend (on the GPU). */
enum { GATE_NONE = 0, GATE_ASSIGNS = 1, GATE_RESULT = 2, GATE_BATCH = 3 };

struct gate_plan {
    unsigned char what[1]; /* one entry per field */
};

static int has_constraints(const field_desc *f)
{
    return f->cons.has_min || f->cons.has_max || f->cons.finite;
}

/* The one refusal message of the commit path. */
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

static int check_assigns(theus_state *st, const theus_tx *tx, const gate_plan *plan)
{
    for (size_t k = 0; k < tx->ndeltas; k++) {
        const delta *d = &tx->deltas[k];
        const field_desc *f = &st->fields[d->field];
        if (plan->what[d->field] != GATE_ASSIGNS)
            continue;
        size_t bad = SIZE_MAX;
        int rc = backend_check(st->backend[d->field], (theus_dtype)f->dtype, d->payload,
                               d->nelems, &f->cons, &bad);
        if (rc != THEUS_OK)
            return err_wrap(st, rc, "commit: constraint check of '%s' failed to run", f->name);
        if (bad != SIZE_MAX) {
            double value = 0.0;
            backend_get(st->backend[d->field], (theus_dtype)f->dtype, d->payload, d->nelems, bad,
                        &value);
            return refuse(st, f, bad, value);
        }
    }
    return THEUS_OK;
}

/* The flat element of field @f that element @i of region @r (C order) is: a described
 * batch's refusal names the element as its segments do. */
static size_t flat_index(const field_desc *f, const theus_region *r, size_t i)
{
    size_t flat = 0, stride = 1;
    for (int k = r->ndim - 1; k >= 0; k--) {
        const size_t ext = (size_t)(r->stop[k] - r->start[k]);
        flat += ((size_t)r->start[k] + (ext ? i % ext : 0)) * stride;
        i = ext ? i / ext : 0;
        stride *= (size_t)f->shape[k];
    }
    return flat;
}

/* Whether delta @k is the only one of its field in @tx. */
static int only_delta(const theus_tx *tx, size_t k)
{
    for (size_t j = 0; j < tx->ndeltas; j++)
        if (j != k && tx->deltas[j].field == tx->deltas[k].field)
            return 0;
    return 1;
}

/* GATE_BATCH: the batch's values computed and checked where the field lives. */
static int check_batch_on_backend(theus_state *st, const delta *d)
{
    const field_desc *f = &st->fields[d->field];
    const theus_backend *b = st->backend[d->field];
    const theus_dtype dt = (theus_dtype)f->dtype;
    const size_t n = (size_t)(d->batch->sum.hi - d->batch->sum.lo);
    void *vals = NULL;
    int rc = b->iface->batch_result(b->ctx, dt, d->op, st->data[d->field], d->batch, d->payload,
                                    &vals);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "commit: cannot compute the values of the batch on '%s'", f->name);
    size_t bad = SIZE_MAX;
    rc = backend_check(b, dt, vals, n, &f->cons, &bad);
    double value = 0.0;
    if (rc == THEUS_OK && bad != SIZE_MAX)
        backend_get(b, dt, vals, n, bad, &value);
    b->iface->unstage(b->ctx, vals);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "commit: constraint check of '%s' failed to run", f->name);
    return bad != SIZE_MAX ? refuse(st, f, (size_t)d->batch->sum.lo + bad, value) : THEUS_OK;
}

int gate_begin(theus_state *st, const theus_tx *tx, gate_plan **out)
{
    *out = NULL;
    gate_plan *plan = NULL;
    for (size_t k = 0; k < tx->ndeltas; k++) {
        const delta *d = &tx->deltas[k];
        if (!has_constraints(&st->fields[d->field]))
            continue;
        if (!plan && !(plan = theus_xcalloc(1, sizeof *plan + st->hdr->nfields)))
            return err_set(st, THEUS_ENOMEM, "commit: out of memory");
        if (d->batch)
            plan->what[d->field] = only_delta(tx, k) &&
                                   st->backend[d->field]->iface->batch_result ? GATE_BATCH
                                                                             : GATE_RESULT;
        else if (d->op == DELTA_ADD)
            plan->what[d->field] = GATE_RESULT;
        else if (plan->what[d->field] == GATE_NONE)
            plan->what[d->field] = GATE_ASSIGNS;
    }
    if (!plan)
        return THEUS_OK;
    int rc = check_assigns(st, tx, plan);
    if (rc != THEUS_OK) {
        theus_xfree(plan);
        return rc;
    }
    *out = plan;
    return THEUS_OK;
}

int gate_finish(theus_state *st, const theus_tx *tx, const gate_plan *plan)
{
    for (size_t k = 0; plan && k < tx->ndeltas; k++) {
        const delta *d = &tx->deltas[k];
        const field_desc *f = &st->fields[d->field];
        if (plan->what[d->field] == GATE_BATCH) {
            int rc = check_batch_on_backend(st, d);
            if (rc != THEUS_OK)
                return rc;
            continue;
        }
        if (plan->what[d->field] != GATE_RESULT)
            continue;
        theus_dtype dt = (theus_dtype)f->dtype;
        void *scratch = theus_xmalloc(d->nelems * theus_dtype_size(dt));
        if (!scratch)
            return err_set(st, THEUS_ENOMEM, "commit: out of memory checking '%s'", f->name);
        int rc = gate_final_values(st, tx, k, scratch);
        size_t bad = rc == THEUS_OK ? dtype_check(dt, scratch, d->nelems, &f->cons) : SIZE_MAX;
        double value = bad != SIZE_MAX ? dtype_get(dt, scratch, bad) : 0.0;
        theus_xfree(scratch);
        if (rc != THEUS_OK)
            return err_wrap(st, rc, "commit: cannot read '%s' to check its constraints", f->name);
        if (bad != SIZE_MAX)
            return refuse(st, f, d->batch ? flat_index(f, &d->r, bad) : bad, value);
    }
    return THEUS_OK;
}

void gate_end(gate_plan *plan)
{
    theus_xfree(plan);
}

int gate_final_values(theus_state *st, const struct theus_tx *tx, size_t k, void *host_out)
{
    return gate_final_values_mem(st, tx, k, host_out, THEUS_MEM_HOST);
}

int gate_final_values_mem(theus_state *st, const struct theus_tx *tx, size_t k, void *out,
                          theus_mem mem)
{
    const delta *d = &tx->deltas[k];
    const theus_backend *b = st->backend[d->field];
    theus_dtype dt = (theus_dtype)st->fields[d->field].dtype;
    /* An ASSIGN starts from its own payload and only later deltas matter; an ADD starts from
     * the committed bytes and every delta of the batch on the region applies. */
    /* (A described batch covers only parts of its region, the bounds of its segments: like an
     * ADD it starts from the committed bytes and every delta of the batch applies.) */
    const int own = d->op == DELTA_ASSIGN && !d->batch;
    int rc = own ? b->iface->read(b->ctx, d->payload, &d->r, dt, &d->r, out, mem)
                 : b->iface->read(b->ctx, st->data[d->field], &st->frames[d->field], dt, &d->r,
                                  out, mem);
    const size_t first = own ? k + 1 : 0;
    for (size_t j = first; rc == THEUS_OK && j < tx->ndeltas; j++)
        if (tx->deltas[j].field == d->field)
            rc = delta_overlay(st, &tx->deltas[j], out, &d->r, mem);
    return rc;
}
