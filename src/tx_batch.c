/* Described batches (theus/theus_gpu.h; the stream-ordered commit is commit.c with
 * commit_stream.c and stream_fence.c). A batch is one delta:
 * its payload is staged by the field's backend as any other, its segments and summary live
 * in a seg_batch record (seg_batch.h) that the delta points at; its region is the bounds of
 * the segments. The commit log records it as a block-map entry over those bounds, and the
 * version guard and the block map use its touched blocks: conflicts are exact to the block. */
#include "alloc.h"
#include "error.h"
#include "seg_batch.h"
#include "tx.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

static delta_op dop_of(theus_delta_op op)
{
    return op == THEUS_OP_ADD ? DELTA_ADD : DELTA_ASSIGN;
}

/* Append the batch's delta (room was made by the caller). */
static void push_delta(theus_tx *tx, int i, delta_op op, seg_batch *sb, void *staged)
{
    const field_desc *f = &tx->st->fields[i];
    delta *d = &tx->deltas[tx->ndeltas++];
    memset(d, 0, sizeof *d);
    d->field = (uint32_t)i;
    d->op = op;
    seg_bounds_region((int)f->ndim, f->shape, sb->sum.lo, sb->sum.hi, &d->r);
    d->nelems = region_nelems(&d->r);
    d->payload = staged;
    d->batch = sb;
}

/* A backend with its own stage_batch (the CUDA backend: arrays in device memory) copies,
 * validates and summarises the batch where it lives; the host sees only the summary. */
static int stage_on_backend(theus_tx *tx, const char *what, int i, delta_op op,
                            const theus_batch_segment *segs, size_t nsegs, const void *payload,
                            size_t payload_elems, theus_mem mem)
{
    theus_state *st = tx->st;
    const field_desc *f = &st->fields[i];
    const theus_backend *b = st->backend[i];
    const size_t es = theus_dtype_size((theus_dtype)f->dtype);
    if (tx_grow((void **)&tx->deltas, &tx->cap_deltas, tx->ndeltas + 1, sizeof *tx->deltas))
        return err_set(st, THEUS_ENOMEM, "%s: out of memory staging a delta", what);
    seg_batch *sb = seg_batch_new_staged(nsegs, payload_elems, f->nelems, es);
    if (!sb)
        return err_set(st, THEUS_ENOMEM, "%s: out of memory for a batch summary", what);
    size_t bad = SIZE_MAX;
    void *staged = NULL;
    int rc = b->iface->stage_batch(b->ctx, (theus_dtype)f->dtype, f->nelems, segs, nsegs, payload,
                                   payload_elems, mem, &sb->sum, &bad, &sb->dev_segs, &staged);
    if (rc == THEUS_OK && bad != SIZE_MAX)
        rc = err_set(st, THEUS_EINVAL, "%s: field '%s', segment %zu: outside the field's %llu "
                     "elements or the payload's %zu, or negative", what, f->name, bad,
                     (unsigned long long)f->nelems, payload_elems);
    else if (rc != THEUS_OK)
        rc = err_wrap(st, rc, "%s: field '%s': the backend cannot stage this batch", what, f->name);
    else if (sb->sum.nonempty == 0) {
        b->iface->unstage(b->ctx, staged);
        b->iface->unstage(b->ctx, sb->dev_segs);
        seg_batch_free(sb);
        return THEUS_OK;
    }
    if (rc != THEUS_OK) {
        seg_batch_free(sb);
        return rc;
    }
    push_delta(tx, i, op, sb, staged);
    return THEUS_OK;
}

int theus_tx_stage_batch(theus_tx *tx, const char *field, theus_delta_op op,
                         const theus_batch_segment *segs, size_t nsegs, const void *payload,
                         size_t payload_elems, theus_mem mem)
{
    static const char what[] = "stage_batch";
    if (!tx || !field || !segs || !payload)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "%s: NULL argument", what);
    theus_state *st = tx->st;
    if (op != THEUS_OP_ASSIGN && op != THEUS_OP_ADD)
        return err_set(st, THEUS_EINVAL, "%s: unknown op %d", what, (int)op);
    if (mem != THEUS_MEM_HOST && mem != THEUS_MEM_DEVICE)
        return err_set(st, THEUS_EINVAL, "%s: unknown buffer kind %d", what, (int)mem);
    if (nsegs == 0 || nsegs > SIZE_MAX / sizeof *segs / 2)
        return err_set(st, THEUS_EINVAL, "%s: %zu segments", what, nsegs);
    int i = -1;
    theus_region whole;
    int rc = tx_target(tx, what, field, NULL, 1, &i, &whole);
    if (rc != THEUS_OK)
        return rc;
    const field_desc *f = &st->fields[i];
    const theus_backend *b = st->backend[i];
    if (st->shm)
        return err_set(st, THEUS_EINVAL, "%s: field '%s': described batches are not supported "
                       "on shared states yet", what, field);
    const size_t es = theus_dtype_size((theus_dtype)f->dtype);
    if (payload_elems > SIZE_MAX / (es ? es : 1))
        return err_set(st, THEUS_EINVAL, "%s: a payload of %zu elements is too large", what,
                       payload_elems);
    if (b->iface->stage_batch)
        return stage_on_backend(tx, what, i, dop_of(op), segs, nsegs, payload, payload_elems, mem);
    if (b != backend_cpu())
        return err_set(st, THEUS_ENODEV, "%s: field '%s': its backend cannot stage described "
                       "batches", what, field);
    if (mem != THEUS_MEM_HOST)
        return err_set(st, THEUS_EINVAL, "%s: field '%s' lives in host memory; its segments and "
                       "payload must be host memory", what, field);
    const size_t bad = seg_validate(segs, nsegs, f->nelems, payload_elems);
    if (bad != SIZE_MAX)
        return err_set(st, THEUS_EINVAL, "%s: field '%s', segment %zu: elements [%lld, %lld + "
                       "%lld) from payload element %lld do not fit the field's %llu elements "
                       "and the payload's %zu", what, field, bad, (long long)segs[bad].dst,
                       (long long)segs[bad].dst, (long long)segs[bad].length,
                       (long long)segs[bad].src, (unsigned long long)f->nelems, payload_elems);
    if (tx_grow((void **)&tx->deltas, &tx->cap_deltas, tx->ndeltas + 1, sizeof *tx->deltas))
        return err_set(st, THEUS_ENOMEM, "%s: out of memory staging a delta", what);
    seg_batch *sb = seg_batch_new(segs, nsegs, payload_elems, f->nelems, es);
    if (!sb)
        return err_set(st, THEUS_ENOMEM, "%s: out of memory for %zu segments", what, nsegs);
    if (sb->sum.nonempty == 0) {
        seg_batch_free(sb);
        return THEUS_OK;
    }
    void *staged = NULL;
    rc = b->iface->stage(b->ctx, (theus_placement)f->placement, payload, mem,
                         payload_elems * es, &staged);
    if (rc != THEUS_OK) {
        seg_batch_free(sb);
        if (rc == THEUS_ENOMEM)
            return err_set(st, rc, "%s: out of memory staging %zu bytes", what, payload_elems * es);
        return err_wrap(st, rc, "%s: field '%s': the backend cannot stage this buffer", what,
                        field);
    }
    push_delta(tx, i, dop_of(op), sb, staged);
    return THEUS_OK;
}

void tx_batch_free(const theus_state *st, const delta *d)
{
    if (!d->batch)
        return;
    if (d->batch->dev_segs) {
        const theus_backend *b = st->backend[d->field];
        b->iface->unstage(b->ctx, d->batch->dev_segs);
    }
    seg_batch_free(d->batch);
}

int tx_batch_overlay(const theus_state *st, const delta *d, void *buf, const theus_region *frame,
                     theus_mem mem)
{
    const field_desc *f = &st->fields[d->field];
    const theus_dtype dt = (theus_dtype)f->dtype;
    const seg_batch *sb = d->batch;
    if (mem != THEUS_MEM_HOST)
        return err_set(NULL, THEUS_EINVAL, "a described batch overlays host buffers only (a read "
                       "into device memory of a field with a staged batch is not supported yet)");
    if (sb->segs) {
        seg_batch_overlay(sb, dt, d->op, (int)f->ndim, f->shape, buf, frame, d->payload);
        return THEUS_OK;
    }
    /* Staged by the backend (device memory): bring the arrays over once for this overlay
     * (reads only; the commit path never does this). */
    const theus_backend *b = st->backend[d->field];
    const size_t es = theus_dtype_size(dt), sbytes = sb->nsegs * sizeof(theus_batch_segment);
    seg_batch view = *sb;
    void *pay = theus_xmalloc(sb->payload_elems * es + 1);
    view.segs = theus_xmalloc(sbytes + 1);
    int rc = pay && view.segs ? THEUS_OK : THEUS_ENOMEM;
    theus_region fs = {.ndim = 1}, fp = {.ndim = 1};
    fs.stop[0] = (int64_t)sbytes;
    fp.stop[0] = (int64_t)sb->payload_elems;
    if (rc == THEUS_OK)
        rc = b->iface->read(b->ctx, sb->dev_segs, &fs, THEUS_DTYPE_U8, &fs, view.segs,
                            THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = b->iface->read(b->ctx, d->payload, &fp, dt, &fp, pay, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        seg_batch_overlay(&view, dt, d->op, (int)f->ndim, f->shape, buf, frame, pay);
    theus_xfree(view.segs);
    theus_xfree(pay);
    return rc == THEUS_ENOMEM ? err_set(NULL, rc, "overlay of a described batch: out of memory")
                              : rc;
}

int tx_batch_conflict(const theus_state *st, uint64_t base, const delta *d, theus_conflict *c)
{
    const field_desc *f = &st->fields[d->field];
    if (atomic_load_explicit(&f->version, memory_order_acquire) <= base)
        return 0;
    block_map m = state_block_map(st, d->field);
    uint64_t version = 0;
    if (!seg_batch_probe(d->batch, &m, base, &version))
        return 0;
    memset(c, 0, sizeof *c);
    c->kind = THEUS_CONFLICT_WRITE_WRITE;
    c->base = base;
    memcpy(c->field, f->name, sizeof c->field);
    c->region = d->r;
    c->version = version;
    return 1;
}

void tx_batch_publish(theus_state *st, const delta *d, uint64_t version)
{
    block_map m = state_block_map(st, d->field);
    seg_batch_mark(d->batch, &m, version);
    atomic_store_explicit(&st->fields[d->field].version, version, memory_order_release);
}
