/* DLPack export of committed fields (read-only views) and staging buffers (writable),
 * with deleters that keep the memory alive past theus_state_destroy or the commit. */
#include "theus/theus_dlpack.h"
#include "alloc.h"
#include "error.h"
#include "tx.h"
#include <string.h>

typedef struct export_ctx {
    DLManagedTensorVersioned t;   /* first: the deleter gets this pointer back */
    DLManagedTensor legacy;       /* the unversioned view of the same tensor, when asked for */
    int64_t shape[THEUS_MAX_DIMS];
    theus_state *st;              /* set for field views */
    payload_ref *ref;             /* set for staging buffers */
} export_ctx;

static int dl_dtype(theus_dtype dt, DLDataType *out)
{
    static const struct { uint8_t code, bits; } map[THEUS_DTYPE_COUNT] = {
        [THEUS_DTYPE_BOOL] = {kDLBool, 8},  [THEUS_DTYPE_U8] = {kDLUInt, 8},
        [THEUS_DTYPE_I8] = {kDLInt, 8},     [THEUS_DTYPE_U16] = {kDLUInt, 16},
        [THEUS_DTYPE_I16] = {kDLInt, 16},   [THEUS_DTYPE_U32] = {kDLUInt, 32},
        [THEUS_DTYPE_I32] = {kDLInt, 32},   [THEUS_DTYPE_U64] = {kDLUInt, 64},
        [THEUS_DTYPE_I64] = {kDLInt, 64},   [THEUS_DTYPE_F16] = {kDLFloat, 16},
        [THEUS_DTYPE_BF16] = {kDLBfloat, 16}, [THEUS_DTYPE_F32] = {kDLFloat, 32},
        [THEUS_DTYPE_F64] = {kDLFloat, 64},
    };
    if ((unsigned)dt >= THEUS_DTYPE_COUNT)
        return -1;
    out->code = map[dt].code;
    out->bits = map[dt].bits;
    out->lanes = 1;
    return 0;
}

/* Committed fields and their staging buffers live in the same kind of memory: device memory
 * for device fields, page-locked host memory for pinned ones, plain host memory otherwise. */
static DLDevice dl_device(const field_desc *f, const theus_backend *b)
{
    DLDevice d = {kDLCPU, 0};
    if (f->placement == THEUS_PLACEMENT_DEVICE)
        d.device_type = kDLCUDA;
    else if (f->placement == THEUS_PLACEMENT_PINNED)
        d.device_type = kDLCUDAHost;
    if (d.device_type == kDLCUDA && b->iface->device_id)
        d.device_id = b->iface->device_id(b->ctx);
    return d;
}

static void export_delete(DLManagedTensorVersioned *self)
{
    if (!self)
        return;
    export_ctx *x = (export_ctx *)self->manager_ctx;
    if (x->st)
        state_unref(x->st);
    if (x->ref)
        payload_unref(x->ref);
    theus_xfree(x);
}

static void export_delete_legacy(DLManagedTensor *self)
{
    if (self)
        export_delete(&((export_ctx *)self->manager_ctx)->t);
}

static export_ctx *export_new(const field_desc *f, const theus_backend *b, void *data, int ndim,
                              const int64_t *shape, uint64_t flags)
{
    export_ctx *x = theus_xcalloc(1, sizeof *x);
    if (!x)
        return NULL;
    memcpy(x->shape, shape, (size_t)ndim * sizeof *shape);
    x->t.version.major = DLPACK_MAJOR_VERSION;
    x->t.version.minor = DLPACK_MINOR_VERSION;
    x->t.manager_ctx = x;
    x->t.deleter = export_delete;
    x->t.flags = flags;
    x->t.dl_tensor.data = data;
    x->t.dl_tensor.device = dl_device(f, b);
    x->t.dl_tensor.ndim = ndim;
    dl_dtype((theus_dtype)f->dtype, &x->t.dl_tensor.dtype);
    x->t.dl_tensor.shape = x->shape;
    x->t.dl_tensor.strides = NULL;
    x->t.dl_tensor.byte_offset = 0;
    return x;
}

int theus_field_export_dlpack(theus_state *st, const char *field, DLManagedTensorVersioned **out)
{
    if (out)
        *out = NULL;
    if (!st || !field || !out)
        return err_set(st, THEUS_EINVAL, "theus_field_export_dlpack: NULL argument");
    int i = state_find_field(st, field);
    if (i < 0)
        return err_set(st, THEUS_ENOENT, "no field '%s'", field);
    int rc = stream_fence_settle(st, &st->fence, "export_dlpack");
    if (rc != THEUS_OK)
        return rc;
    const field_desc *f = &st->fields[i];
    export_ctx *x = export_new(f, st->backend[i], st->data[i], (int)f->ndim, f->shape,
                               DLPACK_FLAG_BITMASK_READ_ONLY);
    if (!x)
        return err_set(st, THEUS_ENOMEM, "out of memory exporting '%s'", field);
    state_ref(st);
    x->st = st;
    *out = &x->t;
    return THEUS_OK;
}

int theus_field_export_dlpack_unversioned(theus_state *st, const char *field, DLManagedTensor **out)
{
    if (out)
        *out = NULL;
    if (!out)
        return err_set(st, THEUS_EINVAL, "theus_field_export_dlpack_unversioned: NULL argument");
    DLManagedTensorVersioned *v = NULL;
    int rc = theus_field_export_dlpack(st, field, &v);
    if (rc != THEUS_OK)
        return rc;
    export_ctx *x = (export_ctx *)v->manager_ctx;
    x->legacy.dl_tensor = x->t.dl_tensor;
    x->legacy.manager_ctx = x;
    x->legacy.deleter = export_delete_legacy;
    *out = &x->legacy;
    return THEUS_OK;
}

int theus_tx_export_dlpack(theus_tx *tx, void *buf, DLManagedTensorVersioned **out)
{
    if (out)
        *out = NULL;
    if (!tx || !buf || !out)
        return err_set(tx ? tx->st : NULL, THEUS_EINVAL, "theus_tx_export_dlpack: NULL argument");
    theus_state *st = tx->st;
    delta *d = NULL;
    for (size_t k = 0; k < tx->ndeltas && !d; k++)
        if (tx->deltas[k].user_filled && tx->deltas[k].payload == buf)
            d = &tx->deltas[k];
    if (!d)
        return err_set(st, THEUS_ENOENT, "theus_tx_export_dlpack: not a staging buffer of this transaction");
    const field_desc *f = &st->fields[d->field];
    int64_t shape[THEUS_MAX_DIMS];
    for (int k = 0; k < d->r.ndim; k++)
        shape[k] = d->r.stop[k] - d->r.start[k];
    if (!d->ref) {
        payload_ref *ref = theus_xmalloc(sizeof *ref);
        if (!ref)
            return err_set(st, THEUS_ENOMEM, "out of memory exporting a staging buffer");
        atomic_init(&ref->refs, 1);
        ref->backend = st->backend[d->field];
        ref->payload = d->payload;
        d->ref = ref;
    }
    export_ctx *x = export_new(f, st->backend[d->field], buf, d->r.ndim, shape, 0);
    if (!x)
        return err_set(st, THEUS_ENOMEM, "out of memory exporting a staging buffer");
    atomic_fetch_add(&d->ref->refs, 1);
    x->ref = d->ref;
    *out = &x->t;
    return THEUS_OK;
}
