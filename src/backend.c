/* Defaults for optional backend entries, and backend discovery. */
#include "backend.h"
#include "dtype.h"
#include <stdint.h>

int backend_check(const theus_backend *b, theus_dtype dt, const void *staged, size_t n,
                  const theus_constraints *c, size_t *bad_index)
{
    if (b->iface->check)
        return b->iface->check(b->ctx, dt, staged, n, c, bad_index);
    *bad_index = dtype_check(dt, staged, n, c);
    return THEUS_OK;
}

int backend_sync(const theus_backend *b)
{
    return b->iface->sync ? b->iface->sync(b->ctx) : THEUS_OK;
}

#ifndef THEUS_HAVE_CUDA
const theus_backend *backend_cuda(void)
{
    return NULL;
}
#endif

int theus_gpu_available(void)
{
    return backend_cuda() != NULL;
}
