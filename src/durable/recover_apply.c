/* Recovery's one write into a fresh state: bytes of a checkpoint or of a log record's delta
 * applied to a field's memory through its backend (staged when the field is not on the host),
 * under the commit lock that dur_rebuild holds. */
#include "durable/recover_internal.h"
#include "error.h"
#include "publish.h"

/* ---- applying bytes to a fresh state --------------------------------------------------- */

/* Apply @payload (laid out as @r, host memory) onto field @f: assign or add. */
int recover_apply_bytes(theus_state *st, uint32_t f, const theus_region *r, int op,
                        const void *payload, uint64_t nbytes)
{
    const field_desc *fd = &st->fields[f];
    const theus_backend *b = st->backend[f];
    size_t es = theus_dtype_size((theus_dtype)fd->dtype);
    void *staged = NULL;
    const void *src = payload;
    int rc = THEUS_OK;
    if (nbytes == 0)
        return THEUS_OK;
    if (fd->placement != THEUS_PLACEMENT_HOST || (uintptr_t)payload % es) {
        rc = b->iface->stage(b->ctx, (theus_placement)fd->placement, payload, THEUS_MEM_HOST,
                             nbytes, &staged);
        if (rc != THEUS_OK)
            return err_wrap(st, rc, "recovery: cannot stage bytes of '%s'", fd->name);
        src = staged;
    }
    replay_op o = {.op = (delta_op)op, .dtype = (theus_dtype)fd->dtype, .base = st->data[f],
                   .frame = &st->frames[f], .sub = *r, .payload = src};
    rc = b->iface->replay(b->ctx, &o, 1);
    if (staged)
        b->iface->unstage(b->ctx, staged);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "recovery: cannot write field '%s'", fd->name);
    return THEUS_OK;
}
