/* Staging of a transaction's writes and adds: payloads copied into the field's backend
 * memory (theus_tx_write, theus_tx_add), buffers the caller fills (theus_tx_stage_buffer),
 * payloads borrowed from the caller until commit or abort (theus_tx_*_borrowed), and many
 * regions of one field from one packed payload (theus_tx_stage_regions / _segments).
 *
 * Every one of them ends as ordinary deltas: a borrowed payload, or a part of a block that
 * another delta of the same call owns, is a delta with `borrowed` set, which tx_free leaves
 * alone. The commit path (gatekeeper, conflicts, replay, redo) reads `payload` and nothing
 * else, so it needs nothing new. */
#include "tx.h"
#include "error.h"
#include <stdint.h>
#include <string.h>

/* Whether the replay can read the caller's buffer where it is: the field is in host memory
 * under the CPU backend (host placement, or a device/pinned field fallen back to host), the
 * buffer is host memory, and it is aligned for the dtype (the CPU loops load elements in
 * place; a staged payload is always aligned). Anything else is copied as by theus_tx_write. */
static int can_borrow(const theus_state *st, int i, const void *src, theus_mem src_mem)
{
    size_t es = theus_dtype_size((theus_dtype)st->fields[i].dtype);
    return st->backend[i] == backend_cpu() && src_mem == THEUS_MEM_HOST && es &&
           (uintptr_t)src % es == 0;
}

static void delta_init(delta *d, int field, delta_op op, const theus_region *r, size_t n,
                       void *payload, int borrowed)
{
    d->field = (uint32_t)field;
    d->op = op;
    d->r = *r;
    d->nelems = n;
    d->payload = payload;
    d->user_filled = 0;
    d->ref = NULL;
    d->borrowed = borrowed;
    d->batch = NULL;
}

/* Stage a delta; with @src NULL the payload is a zeroed buffer the caller fills. With
 * @borrow, @src itself becomes the payload when can_borrow says the replay can read it. */
static int tx_stage(theus_tx *tx, const char *what, delta_op op, const char *field,
                    const theus_region *r, const void *src, theus_mem src_mem, int borrow,
                    delta **made)
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
    delta *d = &tx->deltas[tx->ndeltas];
    if (borrow && can_borrow(st, i, src, src_mem)) {
        delta_init(d, i, op, &reg, n, (void *)(uintptr_t)src, 1);
        tx->ndeltas++;
        return THEUS_OK;
    }
    const theus_backend *b = st->backend[i];
    void *payload = NULL;
    size_t nbytes = n * theus_dtype_size((theus_dtype)st->fields[i].dtype);
    rc = b->iface->stage(b->ctx, (theus_placement)st->fields[i].placement, src, src_mem, nbytes,
                         &payload);
    if (rc == THEUS_ENOMEM)
        return err_set(st, rc, "%s: out of memory staging %zu bytes", what, nbytes);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "%s: field '%s': the backend cannot stage this buffer", what, field);
    delta_init(d, i, op, &reg, n, payload, 0);
    d->user_filled = src == NULL;
    tx->ndeltas++;
    if (made)
        *made = d;
    return THEUS_OK;
}

int theus_tx_write(theus_tx *tx, const char *field, const theus_region *r, const void *src,
                   theus_mem src_mem)
{
    if (!tx || !field || !src)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "write: NULL argument");
    return tx_stage(tx, "write", DELTA_ASSIGN, field, r, src, src_mem, 0, NULL);
}

int theus_tx_add(theus_tx *tx, const char *field, const theus_region *r, const void *src,
                 theus_mem src_mem)
{
    if (!tx || !field || !src)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "add: NULL argument");
    return tx_stage(tx, "add", DELTA_ADD, field, r, src, src_mem, 0, NULL);
}

int theus_tx_write_borrowed(theus_tx *tx, const char *field, const theus_region *r,
                            const void *src, theus_mem src_mem)
{
    if (!tx || !field || !src)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "write_borrowed: NULL argument");
    return tx_stage(tx, "write_borrowed", DELTA_ASSIGN, field, r, src, src_mem, 1, NULL);
}

int theus_tx_add_borrowed(theus_tx *tx, const char *field, const theus_region *r,
                          const void *src, theus_mem src_mem)
{
    if (!tx || !field || !src)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "add_borrowed: NULL argument");
    return tx_stage(tx, "add_borrowed", DELTA_ADD, field, r, src, src_mem, 1, NULL);
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
                      r, NULL, THEUS_MEM_HOST, 0, &d);
    if (rc != THEUS_OK)
        return rc;
    *buf = d->payload;
    if (mem)
        *mem = tx->st->fields[d->field].placement == THEUS_PLACEMENT_DEVICE ? THEUS_MEM_DEVICE
                                                                           : THEUS_MEM_HOST;
    return THEUS_OK;
}

/* ---- many regions of one field, one packed payload -------------------------------------
 * Both calls first resolve every region into the free tail of the delta array (grown once),
 * checking bounds and the payload's size, and only then stage (one copy of the whole payload,
 * or none when it is borrowed) and bump ndeltas: a refusal leaves the transaction as it was. */

/* The input of one multi-region call: regions, or 1-D element runs over the flattened field. */
typedef struct region_list {
    const theus_region *regions;
    const theus_segment *segs;
    size_t n;
} region_list;

/* Most hyperrectangles one flat run of a rank-@ndim field splits into (see split_run). */
static size_t boxes_per_run(int ndim)
{
    return ndim > 1 ? (size_t)(2 * ndim - 1) : 1;
}

/* Split the flat element run [a, b) (0 <= a < b <= nelems) of a C-contiguous field of
 * @shape into hyperrectangles in increasing flat order, which is also the order of their
 * elements in a packed payload: a partial first row (recursively), whole rows, a partial
 * last row. @box holds the indices fixed so far (dimensions before @d). Returns the count. */
static size_t split_run(int ndim, const int64_t *shape, int d, uint64_t a, uint64_t b,
                        theus_region *box, theus_region *out)
{
    if (d == ndim - 1) {
        box->start[d] = (int64_t)a;
        box->stop[d] = (int64_t)b;
        *out = *box;
        return 1;
    }
    uint64_t inner = 1;
    for (int k = d + 1; k < ndim; k++)
        inner *= (uint64_t)shape[k];
    uint64_t i0 = a / inner, i1 = b / inner, r0 = a % inner, r1 = b % inner;
    size_t n = 0;
    if (i0 == i1) {
        /* Inside one row of dimension d. */
        box->start[d] = (int64_t)i0;
        box->stop[d] = (int64_t)i0 + 1;
        return split_run(ndim, shape, d + 1, r0, r1, box, out);
    }
    if (r0) {
        box->start[d] = (int64_t)i0;
        box->stop[d] = (int64_t)i0 + 1;
        n += split_run(ndim, shape, d + 1, r0, inner, box, out + n);
        i0++;
    }
    if (i0 < i1) {
        theus_region full = *box;
        full.start[d] = (int64_t)i0;
        full.stop[d] = (int64_t)i1;
        for (int k = d + 1; k < ndim; k++) {
            full.start[k] = 0;
            full.stop[k] = shape[k];
        }
        out[n++] = full;
    }
    if (r1) {
        box->start[d] = (int64_t)i1;
        box->stop[d] = (int64_t)i1 + 1;
        n += split_run(ndim, shape, d + 1, 0, r1, box, out + n);
    }
    return n;
}

/* Resolve the list into @out (room for the worst case), dropping empty regions; sets the
 * count and the total elements. */
static int resolve_list(theus_state *st, const char *what, const field_desc *f,
                        const region_list *l, delta *out, size_t *nout, uint64_t *total)
{
    size_t k = 0;
    uint64_t sum = 0;
    char why[160];
    for (size_t j = 0; j < l->n; j++) {
        if (l->regions) {
            theus_region reg;
            if (region_resolve((int)f->ndim, f->shape, &l->regions[j], &reg, why, sizeof why) !=
                THEUS_OK)
                return err_set(st, THEUS_EINVAL, "%s: field '%s', region %zu: %s", what, f->name,
                               j, why);
            size_t n = region_nelems(&reg);
            if (n == 0)
                continue;
            out[k].r = reg;
            out[k].nelems = n;
            k++;
            sum += n;
            continue;
        }
        const theus_segment *s = &l->segs[j];
        if (s->offset < 0 || s->length < 0 || (uint64_t)s->offset > f->nelems ||
            (uint64_t)s->length > f->nelems - (uint64_t)s->offset)
            return err_set(st, THEUS_EINVAL, "%s: field '%s', segment %zu: elements [%lld, "
                           "%lld + %lld) are outside its %llu elements", what, f->name, j,
                           (long long)s->offset, (long long)s->offset, (long long)s->length,
                           (unsigned long long)f->nelems);
        if (s->length == 0)
            continue;
        if (f->ndim == 0) {
            region_whole(0, f->shape, &out[k].r);
            out[k].nelems = 1;
            k++;
        } else {
            theus_region box, parts[2 * THEUS_MAX_DIMS];
            memset(&box, 0, sizeof box);
            box.ndim = (int)f->ndim;
            size_t np = split_run((int)f->ndim, f->shape, 0, (uint64_t)s->offset,
                                  (uint64_t)(s->offset + s->length), &box, parts);
            for (size_t p = 0; p < np; p++, k++) {
                out[k].r = parts[p];
                out[k].nelems = region_nelems(&parts[p]);
            }
        }
        sum += (uint64_t)s->length;
    }
    *nout = k;
    *total = sum;
    return THEUS_OK;
}

static int stage_list(theus_tx *tx, const char *what, const char *field, theus_delta_op op,
                      const region_list *l, const void *payload, size_t payload_bytes,
                      theus_mem src_mem, unsigned flags)
{
    theus_state *st = tx->st;
    if (op != THEUS_OP_ASSIGN && op != THEUS_OP_ADD)
        return err_set(st, THEUS_EINVAL, "%s: unknown op %d", what, (int)op);
    if (flags & ~(unsigned)THEUS_STAGE_BORROW)
        return err_set(st, THEUS_EINVAL, "%s: unknown flags 0x%x", what, flags);
    if (src_mem != THEUS_MEM_HOST && src_mem != THEUS_MEM_DEVICE)
        return err_set(st, THEUS_EINVAL, "%s: unknown buffer kind %d", what, (int)src_mem);
    if (l->n == 0)
        return err_set(st, THEUS_EINVAL, "%s: no regions", what);
    int i = -1;
    theus_region whole;
    int rc = tx_target(tx, what, field, NULL, 1, &i, &whole);
    if (rc != THEUS_OK)
        return rc;
    const field_desc *f = &st->fields[i];
    const size_t per = l->segs ? boxes_per_run((int)f->ndim) : 1;
    if (l->n > (SIZE_MAX / sizeof(delta) - tx->ndeltas) / per)
        return err_set(st, THEUS_EINVAL, "%s: %zu regions are too many", what, l->n);
    if (tx_grow((void **)&tx->deltas, &tx->cap_deltas, tx->ndeltas + l->n * per,
                sizeof *tx->deltas))
        return err_set(st, THEUS_ENOMEM, "%s: out of memory for %zu deltas", what, l->n * per);
    delta *out = tx->deltas + tx->ndeltas;
    size_t nd = 0;
    uint64_t total = 0;
    if ((rc = resolve_list(st, what, f, l, out, &nd, &total)) != THEUS_OK)
        return rc;
    const size_t es = theus_dtype_size((theus_dtype)f->dtype);
    if (total > SIZE_MAX / es || total * es != payload_bytes)
        return err_set(st, THEUS_EINVAL, "%s: field '%s': the regions hold %llu elements "
                       "(%llu bytes of %s), the payload has %zu bytes", what, field,
                       (unsigned long long)total, (unsigned long long)(total * es),
                       theus_dtype_name((theus_dtype)f->dtype), payload_bytes);
    if (nd == 0)
        return THEUS_OK;

    char *base = (char *)(uintptr_t)payload;
    int borrowed = (flags & THEUS_STAGE_BORROW) && can_borrow(st, i, payload, src_mem);
    if (!borrowed) {
        const theus_backend *b = st->backend[i];
        void *block = NULL;
        rc = b->iface->stage(b->ctx, (theus_placement)f->placement, payload, src_mem,
                             payload_bytes, &block);
        if (rc == THEUS_ENOMEM)
            return err_set(st, rc, "%s: out of memory staging %zu bytes", what, payload_bytes);
        if (rc != THEUS_OK)
            return err_wrap(st, rc, "%s: field '%s': the backend cannot stage this buffer",
                            what, field);
        base = block;
    }
    /* The first delta's payload is the start of the block: it owns it (unless borrowed). */
    const delta_op dop = op == THEUS_OP_ADD ? DELTA_ADD : DELTA_ASSIGN;
    size_t off = 0;
    for (size_t k = 0; k < nd; k++) {
        theus_region r = out[k].r;
        size_t n = out[k].nelems;
        delta_init(&out[k], i, dop, &r, n, base + off, borrowed || k > 0);
        off += n * es;
    }
    tx->ndeltas += nd;
    return THEUS_OK;
}

int theus_tx_stage_regions(theus_tx *tx, const char *field, theus_delta_op op,
                           const theus_region *regions, size_t nregions, const void *payload,
                           size_t payload_bytes, theus_mem src_mem, unsigned flags)
{
    if (!tx || !field || !regions || !payload)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "stage_regions: NULL argument");
    region_list l = {.regions = regions, .n = nregions};
    return stage_list(tx, "stage_regions", field, op, &l, payload, payload_bytes, src_mem, flags);
}

int theus_tx_stage_segments(theus_tx *tx, const char *field, theus_delta_op op,
                            const theus_segment *segs, size_t nsegs, const void *payload,
                            size_t payload_bytes, theus_mem src_mem, unsigned flags)
{
    if (!tx || !field || !segs || !payload)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "stage_segments: NULL argument");
    region_list l = {.segs = segs, .n = nsegs};
    return stage_list(tx, "stage_segments", field, op, &l, payload, payload_bytes, src_mem,
                      flags);
}
