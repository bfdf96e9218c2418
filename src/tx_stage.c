/* Staging of a transaction's writes and adds: payloads copied into the field's backend
 * memory (theus_tx_write, theus_tx_add), and buffers the caller fills (theus_tx_stage_buffer). */
#include "tx.h"
#include "error.h"
#include <string.h>

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
