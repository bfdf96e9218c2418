/* theus-bench: the GPU replay scenarios time the CUDA backend's replay alone, which only the
 * internal header src/backend.h reaches; this C file is the bridge (the gpu_*.cu files stay free
 * of theus's internal headers). */
#include "gpu.h"
#include "backend.h"
#include "theus/theus.h"
#include <stdlib.h>
#include <string.h>

typedef struct glue_batch {
    theus_region frame;
    replay_op ops[];
} glue_batch;

void *glue_ops_new(int add, void *field, size_t nelems, const bench_seg *segs, size_t n,
                   const void *payload)
{
    glue_batch *b = malloc(sizeof *b + (n ? n : 1) * sizeof(replay_op));
    if (!b)
        return NULL;
    memset(&b->frame, 0, sizeof b->frame);
    b->frame.ndim = 1;
    b->frame.stop[0] = (int64_t)nelems;
    for (size_t i = 0; i < n; i++) {
        replay_op *o = &b->ops[i];
        memset(o, 0, sizeof *o);
        o->op = add ? DELTA_ADD : DELTA_ASSIGN;
        o->dtype = THEUS_DTYPE_F32;
        o->base = field;
        o->frame = &b->frame;
        o->sub.ndim = 1;
        o->sub.start[0] = (int64_t)(segs[i].off / 4);
        o->sub.stop[0] = (int64_t)((segs[i].off + segs[i].size) / 4);
        o->payload = (const char *)payload + segs[i].poff;
        o->batch = NULL;
    }
    return b;
}

void glue_ops_free(void *ops)
{
    free(ops);
}

int glue_replay(void *ops, size_t n)
{
    const theus_backend *be = backend_cuda();
    if (!be)
        return THEUS_ENODEV;
    glue_batch *b = ops;
    return be->iface->replay(be->ctx, b->ops, n);
}
