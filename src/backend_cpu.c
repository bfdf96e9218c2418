/* The CPU backend: host memory, replay as tight loops (memcpy runs, BLAS axpy for float
 * adds through dtype_add). */
#include "backend.h"
#include "alloc.h"
#include "dtype.h"
#include <string.h>

static int cpu_alloc(void *ctx, theus_placement pl, size_t nbytes, void **out)
{
    (void)ctx;
    (void)pl;
    void *p = theus_xcalloc(1, nbytes);
    if (!p)
        return THEUS_ENOMEM;
    *out = p;
    return THEUS_OK;
}

static void cpu_free(void *ctx, theus_placement pl, void *p)
{
    (void)ctx;
    (void)pl;
    theus_xfree(p);
}

static int cpu_read(void *ctx, const void *base, const theus_region *frame, theus_dtype dt,
                    const theus_region *sub, void *dst, theus_mem dst_mem)
{
    (void)ctx;
    if (dst_mem != THEUS_MEM_HOST)
        return THEUS_EINVAL;
    region_transfer(dt, DELTA_ASSIGN, dst, sub, base, frame, sub);
    return THEUS_OK;
}

static int cpu_overlay(void *ctx, theus_dtype dt, delta_op op, void *dst,
                       const theus_region *dframe, theus_mem dst_mem, const void *payload,
                       const theus_region *pframe, const theus_region *sub)
{
    (void)ctx;
    if (dst_mem != THEUS_MEM_HOST)
        return THEUS_EINVAL;
    region_transfer(dt, op, dst, dframe, payload, pframe, sub);
    return THEUS_OK;
}

static int cpu_stage(void *ctx, theus_placement pl, const void *src, theus_mem src_mem,
                     size_t nbytes, void **out)
{
    (void)ctx;
    (void)pl;
    if (src_mem != THEUS_MEM_HOST)
        return THEUS_EINVAL;
    void *p = src ? theus_xmalloc(nbytes) : theus_xcalloc(1, nbytes);
    if (!p)
        return THEUS_ENOMEM;
    if (src && nbytes)
        memcpy(p, src, nbytes);
    *out = p;
    return THEUS_OK;
}

static void cpu_unstage(void *ctx, void *staged)
{
    (void)ctx;
    theus_xfree(staged);
}

static int cpu_replay(void *ctx, const replay_op *ops, size_t n)
{
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        region_transfer(ops[i].dtype, ops[i].op, ops[i].base, ops[i].frame, ops[i].payload,
                        &ops[i].sub, &ops[i].sub);
    return THEUS_OK;
}

static const theus_backend_iface cpu_iface = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .read = cpu_read,
    .overlay = cpu_overlay,
    .stage = cpu_stage,
    .unstage = cpu_unstage,
    .replay = cpu_replay,
    .check = NULL,
    .sync = NULL,
    .destroy = NULL,
};

static const theus_backend cpu_backend = {.iface = &cpu_iface, .ctx = NULL};

const theus_backend *backend_cpu(void)
{
    return &cpu_backend;
}
