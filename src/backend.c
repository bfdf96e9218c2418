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

int backend_get(const theus_backend *b, theus_dtype dt, const void *staged, size_t n, size_t i,
                double *out)
{
    unsigned char elem[8];
    theus_region frame = {.ndim = 1}, one = {.ndim = 1};
    frame.stop[0] = (int64_t)n;
    one.start[0] = (int64_t)i;
    one.stop[0] = (int64_t)i + 1;
    int rc = b->iface->read(b->ctx, staged, &frame, dt, &one, elem, THEUS_MEM_HOST);
    *out = rc == THEUS_OK ? dtype_get(dt, elem, 0) : 0.0;
    return rc;
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
