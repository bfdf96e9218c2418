/* Transactions: begin, read (committed bytes at the base plus read-your-writes overlay),
 * the fail-fast target checks staging shares (tx_stage.c stages), contracts, abort. */
#include "tx.h"
#include "alloc.h"
#include "conflict.h"
#include "error.h"
#include "tsan_annotate.h"
#include <fnmatch.h>
#include <stdint.h>
#include <string.h>

int tx_grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    while (ncap < need)
        ncap *= 2;
    if (ncap > SIZE_MAX / elem)
        return -1;
    void *p = theus_xmalloc(ncap * elem);
    if (!p)
        return -1;
    if (*arr && *cap)
        memcpy(p, *arr, *cap * elem);
    theus_xfree(*arr);
    *arr = p;
    *cap = ncap;
    return 0;
}

void payload_unref(payload_ref *ref)
{
    if (atomic_fetch_sub(&ref->refs, 1) == 1) {
        ref->backend->iface->unstage(ref->backend->ctx, ref->payload);
        theus_xfree(ref);
    }
}

void tx_free(theus_tx *tx)
{
    if (tx->ext && tx->ext->free)
        tx->ext->free(tx->ext);
    for (size_t i = 0; i < tx->ndeltas; i++) {
        const delta *d = &tx->deltas[i];
        if (d->ref) {
            payload_unref(d->ref);
        } else if (!d->borrowed) {
            const theus_backend *b = tx->st->backend[d->field];
            b->iface->unstage(b->ctx, d->payload);
        }
        tx_batch_free(tx->st, d);
    }
    theus_xfree(tx->deltas);
    theus_xfree(tx->reads);
    theus_xfree(tx->contract_blob);
    theus_xfree(tx);
}

/* Copy the contract's strings into one block owned by the transaction. */
static int copy_contract(theus_tx *tx, const theus_contract *c)
{
    size_t n = c->n_inputs + c->n_outputs;
    size_t bytes = (n + 1) * sizeof(char *) + strlen(c->name ? c->name : "") + 1;
    for (size_t i = 0; i < c->n_inputs; i++)
        bytes += strlen(c->inputs[i]) + 1;
    for (size_t i = 0; i < c->n_outputs; i++)
        bytes += strlen(c->outputs[i]) + 1;
    char *blob = theus_xmalloc(bytes);
    if (!blob)
        return THEUS_ENOMEM;
    const char **ptrs = (const char **)(void *)blob;
    char *s = blob + (n + 1) * sizeof(char *);
    for (size_t i = 0; i < n; i++) {
        const char *src = i < c->n_inputs ? c->inputs[i] : c->outputs[i - c->n_inputs];
        size_t len = strlen(src) + 1;
        memcpy(s, src, len);
        ptrs[i] = s;
        s += len;
    }
    strcpy(s, c->name ? c->name : "");
    ptrs[n] = s;
    tx->contract_blob = blob;
    tx->inputs = ptrs;
    tx->n_inputs = c->n_inputs;
    tx->outputs = ptrs + c->n_inputs;
    tx->n_outputs = c->n_outputs;
    tx->has_contract = 1;
    return THEUS_OK;
}

static int contract_valid(const theus_contract *c)
{
    if ((c->n_inputs && !c->inputs) || (c->n_outputs && !c->outputs))
        return 0;
    for (size_t i = 0; i < c->n_inputs; i++)
        if (!c->inputs[i])
            return 0;
    for (size_t i = 0; i < c->n_outputs; i++)
        if (!c->outputs[i])
            return 0;
    return 1;
}

int theus_tx_begin(theus_state *st, const theus_tx_options *opts, theus_tx **out)
{
    if (out)
        *out = NULL;
    if (!st || !out)
        return err_set(st, THEUS_EINVAL, "theus_tx_begin: NULL state or out");
    theus_tx_options o = THEUS_TX_OPTIONS_INIT;
    if (opts)
        o = *opts;
    if (o.isolation < THEUS_ISOLATION_SERIALIZABLE || o.isolation > THEUS_ISOLATION_STRICT)
        return err_set(st, THEUS_EINVAL, "theus_tx_begin: unknown isolation %d", o.isolation);
    if (o.contract && !contract_valid(o.contract))
        return err_set(st, THEUS_EINVAL, "theus_tx_begin: contract has NULL globs");
    theus_tx *tx = theus_xcalloc(1, sizeof *tx);
    if (!tx)
        return err_set(st, THEUS_ENOMEM, "out of memory beginning a transaction");
    tx->st = st;
    tx->isolation = o.isolation;
    if (o.contract && copy_contract(tx, o.contract) != THEUS_OK) {
        theus_xfree(tx);
        return err_set(st, THEUS_ENOMEM, "out of memory copying the contract");
    }
    tx->base = atomic_load_explicit(&st->hdr->version, memory_order_acquire);
    *out = tx;
    return THEUS_OK;
}

uint64_t theus_tx_base(const theus_tx *tx)
{
    return tx ? tx->base : 0;
}

static int glob_any(const char *const *globs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (fnmatch(globs[i], name, 0) == 0)
            return 1;
    return 0;
}

static const char *contract_name(const theus_tx *tx)
{
    return tx->inputs[tx->n_inputs + tx->n_outputs];
}

int tx_target(theus_tx *tx, const char *what, const char *field, const theus_region *r,
              int writing, int *idx, theus_region *res)
{
    theus_state *st = tx->st;
    int i = state_find_field(st, field);
    if (i < 0)
        return err_set(st, THEUS_ENOENT, "%s: no field '%s'", what, field);
    const field_desc *f = &st->fields[i];
    if (tx->has_contract) {
        int ok = glob_any(tx->outputs, tx->n_outputs, field) ||
                 (!writing && glob_any(tx->inputs, tx->n_inputs, field));
        if (!ok)
            return err_set(st, THEUS_EPERM, "%s: process '%s' may not %s field '%s'", what,
                           contract_name(tx), writing ? "write" : "read", field);
    }
    if (writing && f->zone == THEUS_ZONE_CONST)
        return err_set(st, THEUS_EPERM, "%s: field '%s' is const", what, field);
    char why[160];
    if (region_resolve((int)f->ndim, f->shape, r, res, why, sizeof why) != THEUS_OK)
        return err_set(st, THEUS_EINVAL, "%s: field '%s': %s", what, field, why);
    *idx = i;
    return THEUS_OK;
}

int tx_overlay(const theus_tx *tx, uint32_t field, void *buf, const theus_region *frame,
               theus_mem mem)
{
    for (size_t k = 0; k < tx->ndeltas; k++) {
        if (tx->deltas[k].field != field)
            continue;
        int rc = delta_overlay(tx->st, &tx->deltas[k], buf, frame, mem);
        if (rc != THEUS_OK)
            return rc;
    }
    return THEUS_OK;
}

int delta_overlay(const theus_state *st, const delta *d, void *buf, const theus_region *frame,
                  theus_mem mem)
{
    theus_region sub;
    if (!region_intersect(&d->r, frame, &sub))
        return THEUS_OK;
    const field_desc *f = &st->fields[d->field];
    const theus_dtype dt = (theus_dtype)f->dtype;
    if (d->batch)
        return tx_batch_overlay(st, d, buf, frame, mem);
    const theus_backend *b = st->backend[d->field];
    return b->iface->overlay(b->ctx, dt, d->op, buf, frame, mem, d->payload, &d->r, &sub);
}

/* Optimistic attempts of a read before it copies under the commit lock. */
#define READ_OPTIMISTIC_TRIES 4

int theus_tx_read(theus_tx *tx, const char *field, const theus_region *r, void *dst,
                  theus_mem dst_mem)
{
    if (!tx || !field || !dst)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "theus_tx_read: NULL argument");
    theus_state *st = tx->st;
    int i = -1;
    theus_region reg;
    int rc = tx_target(tx, "read", field, r, 0, &i, &reg);
    if (rc != THEUS_OK)
        return rc;
    if (dst_mem != THEUS_MEM_HOST && dst_mem != THEUS_MEM_DEVICE)
        return err_set(st, THEUS_EINVAL, "read: unknown buffer kind %d", (int)dst_mem);
    int track = tx->isolation == THEUS_ISOLATION_SERIALIZABLE;
    if (track && tx_grow((void **)&tx->reads, &tx->cap_reads, tx->nreads + 1, sizeof *tx->reads))
        return err_set(st, THEUS_ENOMEM, "read: out of memory recording the read set");
    if (region_nelems(&reg) == 0)
        return THEUS_OK;

    /* Optimistic: check and copy between two equal even replay sequences (a replay makes
     * it odd), so that the bytes are one committed version. A reader that keeps losing the
     * race, or finds a replay running, waits at the commit lock: no replay starts while it
     * is held, and a replay whose process died is finished there. */
    theus_conflict c;
    int conflict = 0;
    for (int attempt = 0;; attempt++) {
        const int locked = attempt >= READ_OPTIMISTIC_TRIES;
        uint64_t seq = 0;
        if (locked) {
            rc = state_lock(st);
            if (rc != THEUS_OK)
                return err_wrap(st, rc, "read");
        } else if (!state_read_begin(st, &seq)) {
            if ((rc = state_lock(st)) != THEUS_OK)
                return err_wrap(st, rc, "read");
            state_unlock(st);
            continue;
        }
        /* A stream-ordered replay published before this point may still be running: wait
         * for it (one atomic load when there is none), and report the error it left. */
        rc = stream_fence_settle(st, &st->fence, "read");
        if (rc != THEUS_OK) {
            if (locked)
                state_unlock(st);
            return rc;
        }
        /* Optimistic: a replay may race with this copy, which is then thrown away
         * (src/tsan_annotate.h). */
        if (!locked)
            TSAN_IGNORE_BEGIN();
        uint64_t now = atomic_load_explicit(&st->hdr->version, memory_order_acquire);
        if (tx->isolation == THEUS_ISOLATION_STRICT && now != tx->base) {
            memset(&c, 0, sizeof c);
            c.kind = THEUS_CONFLICT_STRICT;
            c.base = tx->base;
            c.version = tx->base + 1;
            conflict = 1;
        } else {
            conflict = conflict_check_region(st, tx->base, (uint32_t)i, &reg,
                                             THEUS_CONFLICT_READ_WRITE, &c);
        }
        if (!conflict)
            rc = st->backend[i]->iface->read(st->backend[i]->ctx, st->data[i], &st->frames[i],
                                             (theus_dtype)st->fields[i].dtype, &reg, dst, dst_mem);
        if (!locked)
            TSAN_IGNORE_END();
        if (locked) {
            state_unlock(st);
            break;
        }
        if (state_read_valid(st, seq))
            break;
    }
    if (conflict) {
        atomic_fetch_add(&st->hdr->stats.conflicts, 1);
        return err_conflict(st, &c);
    }
    if (rc == THEUS_OK)
        rc = tx_overlay(tx, (uint32_t)i, dst, &reg, dst_mem);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "read: field '%s': the backend cannot fill this buffer", field);
    if (track) {
        /* Consecutive reads of the same region need one record. */
        read_rec *last = tx->nreads ? &tx->reads[tx->nreads - 1] : NULL;
        if (!last || last->field != (uint32_t)i || memcmp(&last->r, &reg, sizeof reg) != 0) {
            tx->reads[tx->nreads].field = (uint32_t)i;
            tx->reads[tx->nreads].r = reg;
            tx->nreads++;
        }
    }
    return THEUS_OK;
}

void theus_tx_abort(theus_tx *tx)
{
    if (!tx)
        return;
    atomic_fetch_add(&tx->st->hdr->stats.aborts, 1);
    tx_free(tx);
}
