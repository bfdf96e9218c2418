/* The CUDA backend's shared context and the functions its C files give each other:
 * the lanes and the device guard (lane.c), the small pinned staging pool (pinned_pool.c),
 * field memory and staging (memory.c), reads and overlays (read.c), replay driving
 * (replay.c), described batches (batch.c), constraint checks (check.c), CUDA IPC (ipc.c), the table and discovery
 * (backend_cuda.c). Internal: no public header includes it. */
#ifndef THEUS_CUDA_BACKEND_H
#define THEUS_CUDA_BACKEND_H

#include "backend.h"
#include "cuda_common.h"
#include "replay_plan.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Independent command queues. Calls from different threads (reads under the replay lock's
 * read side, staging, checks) take different lanes and overlap; a lane is used by one call
 * at a time, and every call waits for its own work before it returns. */
#define CUDA_LANES 4
/* Host payloads reach the GPU through two pinned halves, so that filling one overlaps the
 * copy of the other. */
#define BOUNCE_HALF ((size_t)2 << 20)

typedef struct cuda_lane {
    pthread_mutex_t mu;
    cudaStream_t stream;
    cudaEvent_t bounce_ev[2];        /* end of the copy out of each bounce half */
    unsigned char *bounce;           /* pinned, 2 * BOUNCE_HALF, allocated on first use */
    unsigned char *desc_host;        /* pinned upload area for replay descriptors */
    size_t desc_cap;
    unsigned long long *d_first;     /* device word for the constraint kernel's answer */
    unsigned long long *h_first;     /* pinned copy of it */
    replay_plan plan;                /* the replay planner's reused buffers */
    replay_xfer *xfers;              /* a replay's transfers (cuda_replay_xfers), reused */
    size_t xfers_cap;
    void *desc_dev;                  /* device copy of the descriptors of synchronous replays
                                        (at most DESC_DEV_KEEP bytes; larger ones use the pool) */
    size_t desc_dev_cap;
    cudaEvent_t desc_ev;             /* end of the last upload out of desc_host */
    int desc_busy;                   /* desc_ev recorded and maybe not reached yet */
    uint64_t seen_seq;               /* enqueued replays this lane's stream is ordered after */
} cuda_lane;

/* Small host payloads are staged in pinned, mapped host memory: staging is a host memcpy
 * (no copy to the device, no wait), the replay kernel reads them over the bus, and the
 * gatekeeper checks them on the host. Slabs of PINNED_POOL_SLAB_BYTES, each cut into blocks
 * of one size class. THEUS_CUDA_SMALL_STAGE=N sets the largest payload staged so (0: off). */
#define PINNED_POOL_DEFAULT_MAX 65536u
#define PINNED_POOL_SLAB_BYTES ((size_t)1 << 20)
#define PINNED_POOL_SLABS 64
#define PINNED_POOL_CLASSES 5

typedef struct pinned_block {
    struct pinned_block *next;
} pinned_block;

typedef struct pinned_pool {
    pthread_mutex_t mu;
    size_t max;                      /* largest payload staged here; 0: off */
    int nslabs;
    unsigned char *slab[PINNED_POOL_SLABS];
    int slab_class[PINNED_POOL_SLABS];  /* the size class a slab is cut into */
    pinned_block *free[PINNED_POOL_CLASSES];
    /* Blocks given back while a stream-ordered replay that reads them may still run: reused
     * once @idle (the backend's "every enqueued replay finished") says so, asked under @mu. */
    pinned_block *held[PINNED_POOL_CLASSES];
    int (*idle)(void *arg);
    void *idle_arg;
} pinned_pool;

typedef struct cuda_ctx {
    int device;
    int max_blocks;                  /* resident replay blocks (cooperative grid bound) */
    int check_blocks;
    int cooperative;
    size_t max_pitch;
    cudaMemPool_t pool;              /* staging pool; NULL: plain cudaMalloc */
    atomic_uint next_lane;
    int nlanes;                      /* lanes initialised (for teardown) */
    cuda_lane lanes[CUDA_LANES];
    pinned_pool small;
    /* Stream-ordered replays (replay_on_stream): @chain is recorded on the caller's stream
     * after each one, @async_seq counts them; a lane orders its stream after @chain before
     * it touches field memory. Fences come from @fences (free list). All under @async_mu. */
    pthread_mutex_t async_mu;
    cudaEvent_t chain;
    _Atomic uint64_t async_seq;
    struct cuda_fence *fences;
} cuda_ctx;

/* A stream-ordered replay's fence (the table's fence_* entries). */
typedef struct cuda_fence {
    cudaEvent_t ev;
    struct cuda_fence *next;
} cuda_fence;

/* ---- lane.c: a call holds the backend's device and one lane ---------------------------
 * The CUDA runtime's current device belongs to the calling thread; theus must not change
 * it behind the caller's back, so each call switches to the backend's device and back. */
typedef struct cuda_call {
    cuda_lane *lane;
    int prev_device;                 /* -1: nothing to restore */
} cuda_call;

int  cuda_call_begin(cuda_ctx *c, cuda_call *k);
/* The same without ordering the lane after enqueued replays (for work on memory no replay
 * touches: staging into fresh memory, uploads). */
int  cuda_call_begin_unordered(cuda_ctx *c, cuda_call *k);
/* The device only, no lane (k->lane NULL): for host work that may allocate pinned memory
 * (the small pinned pool), so that it never waits for a lane a long replay holds. */
int  cuda_call_begin_device(cuda_ctx *c, cuda_call *k);
/* Take a lane (unordered) for a call begun with cuda_call_begin_device. */
void cuda_call_take_lane(cuda_ctx *c, cuda_call *k);
/* ---- stream.c: stream-ordered replays ------------------------------------------------- */
/* Order lane @l's stream after every replay enqueued so far (nothing when none is). */
int  cuda_lane_order(cuda_ctx *c, cuda_lane *l);
/* 1 when an enqueued replay may still run (a failed query counts as running). */
int  cuda_async_busy(cuda_ctx *c);
/* Wait on the host for every enqueued replay (before the CPU touches pinned field memory
 * or frees a pinned buffer a replay reads). */
int  cuda_async_settle(cuda_ctx *c);
int  cuda_async_init(cuda_ctx *c);       /* 0, or -1 */
/* Let the small pinned pool ask whether enqueued replays finished (pinned_pool.idle). */
void cuda_async_attach_pool(cuda_ctx *c);
void cuda_async_destroy(cuda_ctx *c);
void cuda_call_end(cuda_call *k);
int  cuda_lane_init(cuda_lane *l);       /* 0, or -1 (the lane is left zeroed) */
void cuda_lane_destroy(cuda_lane *l);
/* Device scratch in lane @l's stream order (the stream-ordered pool when there is one). */
cudaError_t cuda_dev_alloc(cuda_ctx *c, cuda_lane *l, size_t n, void **out);
void cuda_dev_free(cuda_ctx *c, cuda_lane *l, void *p);
/* An allocation failure is THEUS_ENOMEM, anything else THEUS_EDEVICE. */
int  cuda_alloc_fail(cudaError_t e, const char *what, size_t nbytes);
/* Whether @p is host memory the GPU can reach directly (pinned or registered). */
int  cuda_is_pinned_host(const void *p);

/* ---- pinned_pool.c ------------------------------------------------------------------- */
/* Set up an empty pool; @max from THEUS_CUDA_SMALL_STAGE (default PINNED_POOL_DEFAULT_MAX). */
void  pinned_pool_init(pinned_pool *sp);
/* A block for @n bytes, NULL when none can be had (the caller stages in device memory
 * instead). The caller holds a device call (cudaHostAlloc may run). */
void *pinned_pool_alloc(pinned_pool *sp, size_t n);
/* The size class of block @p, -1 when @p is not one of the pool's blocks. */
int   pinned_pool_lookup(pinned_pool *sp, const void *p);
/* @later: a stream-ordered replay may still read the block (keep it until idle says so). */
void  pinned_pool_free(pinned_pool *sp, void *p, int cls, int later);
void  pinned_pool_destroy(pinned_pool *sp);

/* ---- replay.c: plan, upload, one launch ---------------------------------------------- */
/* Run @n transfers (in order where they overlap) in one launch on lane @l and wait for
 * them. Everything that can fail for want of memory fails before the launch. */
int cuda_run_transfers(cuda_ctx *c, cuda_lane *l, const replay_xfer *t, size_t n);
/* The transfers of @n replay ops, in lane @l's reused buffer (valid until the lane's next
 * call; NULL, recorded, when out of memory). */
replay_xfer *cuda_replay_xfers(cuda_lane *l, const replay_op *ops, size_t n);
/* Give back a lane's replay buffers when a big batch grew them past what a lane keeps. */
void cuda_replay_trim(cuda_lane *l);
/* Replay @n ops: runs of ordinary ops through the planner, described batches by their
 * kernel, in order; on lane @l waited for, or (@enqueue) enqueued on @s. */
int cuda_replay_runs(cuda_ctx *c, cuda_lane *l, const replay_op *ops, const replay_xfer *t,
                     size_t n, cudaStream_t s, int enqueue);
/* The same enqueued on @s (descriptors uploaded on the lane, the launch on @s after that
 * upload); no wait. The caller has ordered @s after earlier replays. */
int cuda_enqueue_transfers(cuda_ctx *c, cuda_lane *l, const replay_xfer *t, size_t n,
                           cudaStream_t s);

/* ---- batch.c: described batches -------------------------------------------------------- */
/* Replay one described-batch op (staged by cuda_stage_batch) on lane @l and wait for it. */
int cuda_replay_batch(cuda_ctx *c, cuda_lane *l, const replay_op *op);
/* The same enqueued on @s, no wait. */
int cuda_enqueue_batch(cuda_ctx *c, const replay_op *op, cudaStream_t s);

/* ---- the table's entries (see theus_backend_iface) ----------------------------------- */
int  cuda_alloc(void *ctx, theus_placement pl, size_t nbytes, void **out);
void cuda_free(void *ctx, theus_placement pl, void *p);
int  cuda_stage(void *ctx, theus_placement pl, const void *src, theus_mem src_mem,
                size_t nbytes, void **out);
void cuda_unstage(void *ctx, void *staged);
int  cuda_read(void *ctx, const void *base, const theus_region *frame, theus_dtype dt,
               const theus_region *sub, void *dst, theus_mem dst_mem);
int  cuda_overlay(void *ctx, theus_dtype dt, delta_op op, void *dst, const theus_region *dframe,
                  theus_mem dst_mem, const void *payload, const theus_region *pframe,
                  const theus_region *sub);
int  cuda_replay(void *ctx, const replay_op *ops, size_t n);
int  cuda_batch_result(void *ctx, theus_dtype dt, delta_op op, const void *field,
                       const struct seg_batch *b, const void *payload, void **out);
int  cuda_replay_on_stream(void *ctx, const replay_op *ops, size_t n, void *stream, void **fence);
int  cuda_fence_wait(void *ctx, void *fence, void *stream);
void cuda_fence_release(void *ctx, void *fence);
int  cuda_stream_sync(void *ctx, void *stream);
int  cuda_check(void *ctx, theus_dtype dt, const void *staged, size_t n,
                const theus_constraints *cons, size_t *bad_index);
int  cuda_audit(void *ctx, theus_dtype dt, const void *cur, const void *old, size_t n,
                const backend_audit_rule *rules, size_t nrules, backend_audit_result *out);
int  cuda_stage_batch(void *ctx, theus_dtype dt, uint64_t nelems, const theus_batch_segment *segs,
                      size_t nsegs, const void *payload, size_t pelems, theus_mem mem,
                      struct seg_summary *sum, size_t *bad, void **staged_segs,
                      void **staged_payload);
int  cuda_ipc_export(void *ctx, void *ptr, void *handle);
int  cuda_ipc_open(void *ctx, const void *handle, void **ptr);
void cuda_ipc_close(void *ctx, void *ptr);
int  cuda_host_register(void *ctx, void *ptr, size_t nbytes);
void cuda_host_unregister(void *ctx, void *ptr);

#endif /* THEUS_CUDA_BACKEND_H */
