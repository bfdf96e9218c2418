/* Transactions: begin, read (committed bytes at the base plus read-your-writes overlay),
 * staging of writes and adds with fail-fast checks, contracts, abort. */
#include "tx.h"
#include "alloc.h"
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
    for (size_t i = 0; i < tx->ndeltas; i++) {
        const delta *d = &tx->deltas[i];
        if (d->ref) {
            payload_unref(d->ref);
        } else {
            const theus_backend *b = tx->st->backend[d->field];
            b->iface->unstage(b->ctx, d->payload);
        }
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

/* Resolve the field and region of a call and check the contract; fail fast. */
static int tx_target(theus_tx *tx, const char *what, const char *field, const theus_region *r,
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
    theus_dtype dt = (theus_dtype)tx->st->fields[field].dtype;
    const theus_backend *b = tx->st->backend[field];
    for (size_t k = 0; k < tx->ndeltas; k++) {
        const delta *d = &tx->deltas[k];
        theus_region sub;
        if (d->field != field || !region_intersect(&d->r, frame, &sub))
            continue;
        int rc = b->iface->overlay(b->ctx, dt, d->op, buf, frame, mem, d->payload, &d->r, &sub);
        if (rc != THEUS_OK)
            return rc;
    }
    return THEUS_OK;
}

/* Fill @c if a commit after @base wrote a region of field @i overlapping @r. */
static int check_region(const theus_state *st, uint64_t base, uint32_t i, const theus_region *r,
                        int adds_commute, theus_conflict_kind kind, theus_conflict *c)
{
    const field_desc *f = &st->fields[i];
    if (atomic_load_explicit(&f->version, memory_order_acquire) <= base)
        return 0;
    const log_entry *hit = NULL;
    log_probe p = commit_log_probe(&st->hdr->log, st->log_ring, base, i, r, adds_commute, &hit);
    if (p == LOG_CLEAR)
        return 0;
    memset(c, 0, sizeof *c);
    c->base = base;
    memcpy(c->field, f->name, sizeof c->field);
    if (p == LOG_HIT) {
        c->kind = kind;
        c->region = hit->region;
        c->version = hit->version;
    } else {
        c->kind = THEUS_CONFLICT_STALE_BASE;
        c->region = *r;
        c->version = atomic_load(&f->version);
    }
    return 1;
}

int tx_check_conflicts(const theus_tx *tx, uint64_t now, theus_conflict *c)
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
        if (check_region(st, tx->base, d->field, &d->r, d->op == DELTA_ADD,
                         THEUS_CONFLICT_WRITE_WRITE, c))
            return 1;
    }
    if (tx->isolation == THEUS_ISOLATION_SERIALIZABLE)
        for (size_t k = 0; k < tx->nreads; k++)
            if (check_region(st, tx->base, tx->reads[k].field, &tx->reads[k].r, 0,
                             THEUS_CONFLICT_READ_WRITE, c))
                return 1;
    return 0;
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
                return err_set(st, rc, "read: %s", theus_last_error_message());
        } else if (!state_read_begin(st, &seq)) {
            if ((rc = state_lock(st)) != THEUS_OK)
                return err_set(st, rc, "read: %s", theus_last_error_message());
            state_unlock(st);
            continue;
        }
        rc = THEUS_OK;
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
            conflict = check_region(st, tx->base, (uint32_t)i, &reg, 0, THEUS_CONFLICT_READ_WRITE,
                                    &c);
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

/* Stage a delta; with @src NULL the payload is a zeroed buffer the caller fills. */
static int tx_stage(theus_tx *tx, const char *what, delta_op op, const char *field,
                    const theus_region *r, const void *src, theus_mem src_mem, delta **made)
{
    theus_state *st = tx->st;
    int i = -1;
    theus_region reg;
    int rc = tx_target(tx, what, field, r, 1, &i, &reg);
    if (rc != THEUS_OK)
        return rc;
    if (src_mem != THEUS_MEM_HOST && src_mem != THEUS_MEM_DEVICE)
        return err_set(st, THEUS_EINVAL, "%s: unknown buffer kind %d", what, (int)src_mem);
    size_t n = region_nelems(&reg);
    if (n == 0) {
        if (made)
            return err_set(st, THEUS_EINVAL, "%s: the region of '%s' is empty", what, field);
        return THEUS_OK;
    }
    if (tx_grow((void **)&tx->deltas, &tx->cap_deltas, tx->ndeltas + 1, sizeof *tx->deltas))
        return err_set(st, THEUS_ENOMEM, "%s: out of memory staging a delta", what);
    const theus_backend *b = st->backend[i];
    void *payload = NULL;
    size_t nbytes = n * theus_dtype_size((theus_dtype)st->fields[i].dtype);
    rc = b->iface->stage(b->ctx, (theus_placement)st->fields[i].placement, src, src_mem, nbytes,
                         &payload);
    if (rc == THEUS_ENOMEM)
        return err_set(st, rc, "%s: out of memory staging %zu bytes", what, nbytes);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "%s: field '%s': the backend cannot stage this buffer", what, field);
    delta *d = &tx->deltas[tx->ndeltas++];
    d->field = (uint32_t)i;
    d->op = op;
    d->r = reg;
    d->nelems = n;
    d->payload = payload;
    d->user_filled = src == NULL;
    d->ref = NULL;
    if (made)
        *made = d;
    return THEUS_OK;
}

int theus_tx_write(theus_tx *tx, const char *field, const theus_region *r, const void *src,
                   theus_mem src_mem)
{
    if (!tx || !field || !src)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "write: NULL argument");
    return tx_stage(tx, "write", DELTA_ASSIGN, field, r, src, src_mem, NULL);
}

int theus_tx_add(theus_tx *tx, const char *field, const theus_region *r, const void *src,
                 theus_mem src_mem)
{
    if (!tx || !field || !src)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "add: NULL argument");
    return tx_stage(tx, "add", DELTA_ADD, field, r, src, src_mem, NULL);
}

int theus_tx_stage_buffer(theus_tx *tx, const char *field, const theus_region *r,
                          theus_delta_op op, void **buf, theus_mem *mem)
{
    if (!tx || !field || !buf)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "stage_buffer: NULL argument");
    if (op != THEUS_OP_ASSIGN && op != THEUS_OP_ADD)
        return err_set(tx->st, THEUS_EINVAL, "stage_buffer: unknown op %d", (int)op);
    delta *d = NULL;
    int rc = tx_stage(tx, "stage_buffer", op == THEUS_OP_ADD ? DELTA_ADD : DELTA_ASSIGN, field,
                      r, NULL, THEUS_MEM_HOST, &d);
    if (rc != THEUS_OK)
        return rc;
    *buf = d->payload;
    if (mem)
        *mem = tx->st->fields[d->field].placement == THEUS_PLACEMENT_DEVICE ? THEUS_MEM_DEVICE
                                                                           : THEUS_MEM_HOST;
    return THEUS_OK;
}

void theus_tx_abort(theus_tx *tx)
{
    if (!tx)
        return;
    atomic_fetch_add(&tx->st->hdr->stats.aborts, 1);
    tx_free(tx);
}
