/* The CUDA backend: device and pinned field memory, payloads staged in device memory
 * (through pinned bounce buffers from the host), reads with copy-engine copies or a gather
 * kernel, the whole commit batch in one kernel launch, and the gatekeeper's checks on the
 * GPU. A process-wide singleton, created on first use; NULL when no device answers. */
#include "backend.h"
#include "alloc.h"
#include "cuda_common.h"
#include "dtype.h"
#include "region.h"
#include "replay_plan.h"

#include "../kernels/constraints.cuh"
#include "../kernels/replay.cuh"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(theus_replay_desc) == 56, "descriptor layout shared with replay.cu");
_Static_assert(sizeof(theus_replay_dim) == 24, "descriptor layout shared with replay.cu");
_Static_assert(sizeof(theus_replay_wave) == 32, "descriptor layout shared with replay.cu");

/* Independent command queues. Calls from different threads (reads under the replay lock's
 * read side, staging, checks) take different lanes and overlap; a lane is used by one call
 * at a time, and every call waits for its own work before it returns. */
#define CUDA_LANES 4
/* Host payloads reach the GPU through two pinned halves, so that filling one overlaps the
 * copy of the other. */
#define BOUNCE_HALF ((size_t)2 << 20)
/* Device memory the staging pool keeps cached between commits instead of giving it back. */
#define POOL_KEEP_BYTES ((uint64_t)256 << 20)
/* Rows at least this wide go to the copy engine as a 2-D copy; narrower ones are gathered
 * by the replay kernel, which handles millions of tiny rows far better. */
#define COPY2D_MIN_WIDTH 512
/* Planning memory a lane keeps between replays (a bigger batch gives its back). */
#define PLAN_KEEP_BYTES ((size_t)16 << 20)

typedef struct cuda_lane {
    pthread_mutex_t mu;
    cudaStream_t stream;
    cudaEvent_t done;                /* end of a replay's work */
    cudaEvent_t bounce_ev[2];        /* end of the copy out of each bounce half */
    unsigned char *bounce;           /* pinned, 2 * BOUNCE_HALF, allocated on first use */
    unsigned char *desc_host;        /* pinned upload area for replay descriptors */
    size_t desc_cap;
    unsigned long long *d_first;     /* device word for the constraint kernel's answer */
    unsigned long long *h_first;     /* pinned copy of it */
    replay_plan plan;                /* the replay planner's reused buffers */
} cuda_lane;

/* Small host payloads are staged in pinned, mapped host memory: staging is a host memcpy
 * (no copy to the device, no wait), the replay kernel reads them over the bus, and the
 * gatekeeper checks them on the host. Slabs of SMALL_SLAB_BYTES, each cut into blocks of
 * one size class. THEUS_CUDA_SMALL_STAGE=N sets the largest payload staged so (0: off). */
#define SMALL_STAGE_DEFAULT 65536u
#define SMALL_SLAB_BYTES ((size_t)1 << 20)
#define SMALL_SLABS 64
#define SMALL_CLASSES 5
static const uint32_t k_small_class[SMALL_CLASSES] = {256, 1024, 4096, 16384, 65536};

typedef struct small_block {
    struct small_block *next;
} small_block;

typedef struct small_pool {
    pthread_mutex_t mu;
    size_t max;                      /* largest payload staged here; 0: off */
    int nslabs;
    unsigned char *slab[SMALL_SLABS];
    int slab_class[SMALL_SLABS];     /* the size class a slab is cut into */
    small_block *free[SMALL_CLASSES];
} small_pool;

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
    small_pool small;
} cuda_ctx;

static cuda_ctx g_ctx;
static theus_backend g_backend;
static const theus_backend *g_ready;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* ---- calls: the device guard and a lane ------------------------------------------------
 * The CUDA runtime's current device belongs to the calling thread; theus must not change
 * it behind the caller's back, so each call switches to the backend's device and back. */

typedef struct cuda_call {
    cuda_lane *lane;
    int prev_device;                 /* -1: nothing to restore */
} cuda_call;

static cuda_lane *lane_acquire(cuda_ctx *c)
{
    unsigned start = atomic_fetch_add_explicit(&c->next_lane, 1u, memory_order_relaxed);
    for (unsigned i = 0; i < CUDA_LANES; i++) {
        cuda_lane *l = &c->lanes[(start + i) % CUDA_LANES];
        if (pthread_mutex_trylock(&l->mu) == 0)
            return l;
    }
    cuda_lane *l = &c->lanes[start % CUDA_LANES];
    pthread_mutex_lock(&l->mu);
    return l;
}

static int call_begin(cuda_ctx *c, cuda_call *k)
{
    int cur = -1;
    k->prev_device = -1;
    k->lane = NULL;
    if (cudaGetDevice(&cur) != cudaSuccess) {
        (void)cudaGetLastError();
        cur = -1;
    }
    if (cur != c->device) {
        CHECK_CUDA(cudaSetDevice(c->device));
        k->prev_device = cur;
    }
    k->lane = lane_acquire(c);
    return THEUS_OK;
}

static void call_end(cuda_call *k)
{
    if (k->lane)
        pthread_mutex_unlock(&k->lane->mu);
    if (k->prev_device >= 0 && cudaSetDevice(k->prev_device) != cudaSuccess)
        (void)cudaGetLastError();
}

/* ---- device scratch: the stream-ordered pool when the device has one ---------------- */

static cudaError_t dev_alloc(cuda_ctx *c, cuda_lane *l, size_t n, void **out)
{
    *out = NULL;
    if (c->pool)
        return cudaMallocFromPoolAsync(out, n ? n : 1, c->pool, l->stream);
    return cudaMalloc(out, n ? n : 1);
}

static void dev_free(cuda_ctx *c, cuda_lane *l, void *p)
{
    if (!p)
        return;
    cudaError_t e = c->pool ? cudaFreeAsync(p, l->stream) : cudaFree(p);
    if (e != cudaSuccess)
        (void)cudaGetLastError();
}

/* An allocation failure is THEUS_ENOMEM, anything else THEUS_EDEVICE. */
static int alloc_fail(cudaError_t e, const char *what, size_t nbytes)
{
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return err_set(NULL, THEUS_ENOMEM, "CUDA: out of memory allocating %zu bytes (%s)",
                       nbytes, what);
    }
    return cuda_fail(e, what, __FILE__, __LINE__);
}

/* Whether @p is host memory the GPU can reach directly (pinned or registered). */
static int is_pinned_host(const void *p)
{
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return a.type == cudaMemoryTypeHost;
}

/* ---- transfers: planned by src/replay_plan.c, run by the replay kernel --------------- */

typedef replay_xfer transfer;

/* Grow the lane's pinned upload area to @need bytes. */
static int desc_reserve(cuda_lane *l, size_t need)
{
    if (need <= l->desc_cap)
        return THEUS_OK;
    size_t cap = l->desc_cap ? l->desc_cap : 4096;
    while (cap < need)
        cap *= 2;
    if (l->desc_host) {
        if (cudaFreeHost(l->desc_host) != cudaSuccess)
            (void)cudaGetLastError();
        l->desc_host = NULL;
        l->desc_cap = 0;
    }
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, cap, cudaHostAllocPortable);
    if (e != cudaSuccess)
        return alloc_fail(e, "pinned descriptor buffer", cap);
    l->desc_host = p;
    l->desc_cap = cap;
    return THEUS_OK;
}

/* Run @n transfers (in order where they overlap) in one launch on lane @l and wait for
 * them. Everything that can fail for want of memory fails before the launch. */
static int run_transfers(cuda_ctx *c, cuda_lane *l, const transfer *t, size_t n)
{
    replay_plan *p = &l->plan;
    void *dbuf = NULL;
    int rc = replay_plan_build(p, t, n);
    if (rc != THEUS_OK || p->nwaves == 0)
        goto out;
    const size_t bytes_w = (size_t)p->nwaves * sizeof(theus_replay_wave);
    const size_t bytes_d = p->ndescs * sizeof(theus_replay_desc);
    const size_t bytes_m = p->ndims * sizeof(theus_replay_dim);
    const size_t total = bytes_w + bytes_d + bytes_m;
    rc = desc_reserve(l, total);
    if (rc != THEUS_OK)
        goto out;
    memcpy(l->desc_host, p->waves, bytes_w);
    memcpy(l->desc_host + bytes_w, p->descs, bytes_d);
    if (bytes_m)
        memcpy(l->desc_host + bytes_w + bytes_d, p->dims, bytes_m);
    cudaError_t e = dev_alloc(c, l, total, &dbuf);
    if (e != cudaSuccess) {
        rc = alloc_fail(e, "replay descriptors", total);
        goto out;
    }
    CHECK_CUDA_GOTO(cudaMemcpyAsync(dbuf, l->desc_host, total, cudaMemcpyHostToDevice, l->stream),
                    rc, out);
    const unsigned char *db = dbuf;
    CHECK_CUDA_GOTO(theus_replay_launch((const theus_replay_wave *)(const void *)db, p->nwaves,
                                        (const theus_replay_desc *)(const void *)(db + bytes_w),
                                        (const theus_replay_dim *)(const void *)(db + bytes_w + bytes_d),
                                        p->max_wave_chunks, c->max_blocks, c->cooperative, l->stream),
                    rc, out);
    CHECK_CUDA_GOTO(cudaEventRecord(l->done, l->stream), rc, out);
    CHECK_CUDA_GOTO(cudaEventSynchronize(l->done), rc, out);
out:
    if (dbuf) {
        dev_free(c, l, dbuf);
        /* The upload area is reused by the next call: never leave a copy out of it
         * running (on success the event above already covered it). */
        if (rc != THEUS_OK && cudaStreamSynchronize(l->stream) != cudaSuccess)
            (void)cudaGetLastError();
    }
    /* A huge batch should not keep its planning memory. */
    replay_plan_trim(p, PLAN_KEEP_BYTES);
    return rc;
}

/* ---- copies ------------------------------------------------------------------------- */

/* Copy @sub of @src (laid out as @sframe) into @dst, a buffer laid out as @sub in host or
 * device memory; the lane's stream is synchronized before returning. */
static int copy_out(cuda_ctx *c, cuda_lane *l, theus_dtype dt, void *dst, theus_mem dst_mem,
                    const void *src, const theus_region *sframe, const theus_region *sub)
{
    region_folded x;
    const size_t es = theus_dtype_size(dt);
    if (es == 0 || !region_fold(sub, sframe, sub, &x))
        return THEUS_OK;
    const size_t width = (size_t)x.run * es;
    const unsigned char *s = (const unsigned char *)src + x.soff * (int64_t)es;
    unsigned char *d = (unsigned char *)dst + x.doff * (int64_t)es;
    if (dst_mem == THEUS_MEM_HOST && is_pinned_host(src)) {
        /* A pinned field: every replay has finished, the CPU reads it directly. */
        region_transfer(dt, DELTA_ASSIGN, dst, sub, src, sframe, sub);
        return THEUS_OK;
    }
    if (x.nouter == 0) {
        CHECK_CUDA(cudaMemcpyAsync(d, s, width, cudaMemcpyDefault, l->stream));
    } else if (x.nouter == 1 && width >= COPY2D_MIN_WIDTH && (size_t)x.sstr[0] * es <= c->max_pitch &&
               (size_t)x.dstr[0] * es <= c->max_pitch) {
        CHECK_CUDA(cudaMemcpy2DAsync(d, (size_t)x.dstr[0] * es, s, (size_t)x.sstr[0] * es, width,
                                     (size_t)x.ext[0], cudaMemcpyDefault, l->stream));
    } else if (dst_mem == THEUS_MEM_DEVICE) {
        transfer t = {DELTA_ASSIGN, dt, dst, sub, src, sframe, sub};
        return run_transfers(c, l, &t, 1);
    } else {
        /* Gather into device scratch laid out as @sub, then one contiguous copy. */
        const size_t nbytes = region_nelems(sub) * es;
        void *scratch = NULL;
        cudaError_t e = dev_alloc(c, l, nbytes, &scratch);
        if (e != cudaSuccess)
            return alloc_fail(e, "read scratch", nbytes);
        transfer t = {DELTA_ASSIGN, dt, scratch, sub, src, sframe, sub};
        int rc = run_transfers(c, l, &t, 1);
        if (rc == THEUS_OK) {
            e = cudaMemcpyAsync(dst, scratch, nbytes, cudaMemcpyDeviceToHost, l->stream);
            if (e != cudaSuccess)
                rc = cuda_fail(e, "cudaMemcpyAsync(read scratch)", __FILE__, __LINE__);
        }
        dev_free(c, l, scratch);
        if (rc != THEUS_OK) {
            if (cudaStreamSynchronize(l->stream) != cudaSuccess)
                (void)cudaGetLastError();
            return rc;
        }
    }
    CHECK_CUDA(cudaStreamSynchronize(l->stream));
    return THEUS_OK;
}

/* Host memory to device memory through the lane's pinned bounce halves. Asynchronous: the
 * caller synchronizes the stream. */
static int h2d_bounce(cuda_lane *l, void *dst, const void *src, size_t n)
{
    if (!l->bounce) {
        void *p = NULL;
        if (cudaHostAlloc(&p, 2 * BOUNCE_HALF, cudaHostAllocPortable) != cudaSuccess) {
            /* No pinned memory to spare: the driver stages pageable copies itself. */
            (void)cudaGetLastError();
            CHECK_CUDA(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, l->stream));
            return THEUS_OK;
        }
        l->bounce = p;
    }
    int used[2] = {0, 0};
    int h = 0;
    for (size_t off = 0; off < n; h ^= 1) {
        size_t len = n - off < BOUNCE_HALF ? n - off : BOUNCE_HALF;
        unsigned char *b = l->bounce + (size_t)h * BOUNCE_HALF;
        if (used[h])
            CHECK_CUDA(cudaEventSynchronize(l->bounce_ev[h]));
        memcpy(b, (const unsigned char *)src + off, len);
        CHECK_CUDA(cudaMemcpyAsync((unsigned char *)dst + off, b, len, cudaMemcpyHostToDevice,
                                   l->stream));
        CHECK_CUDA(cudaEventRecord(l->bounce_ev[h], l->stream));
        used[h] = 1;
        off += len;
    }
    return THEUS_OK;
}

/* ---- the interface ------------------------------------------------------------------ */

/* ---- small pinned staging ------------------------------------------------------------ */

/* A block for @n bytes (n <= pool max), NULL when none can be had (the caller stages in
 * device memory instead). The caller holds a device call (cudaHostAlloc may run). */
static void *small_alloc(small_pool *sp, size_t n)
{
    int k = 0;
    while (k < SMALL_CLASSES && k_small_class[k] < n)
        k++;
    if (k == SMALL_CLASSES || n > sp->max)
        return NULL;
    pthread_mutex_lock(&sp->mu);
    if (!sp->free[k] && sp->nslabs < SMALL_SLABS) {
        void *p = NULL;
        if (cudaHostAlloc(&p, SMALL_SLAB_BYTES, cudaHostAllocMapped | cudaHostAllocPortable) !=
            cudaSuccess) {
            (void)cudaGetLastError();
        } else {
            unsigned char *b = p;
            sp->slab_class[sp->nslabs] = k;
            sp->slab[sp->nslabs++] = b;
            for (size_t off = SMALL_SLAB_BYTES; off >= k_small_class[k]; off -= k_small_class[k]) {
                small_block *blk = (small_block *)(void *)(b + off - k_small_class[k]);
                blk->next = sp->free[k];
                sp->free[k] = blk;
            }
        }
    }
    small_block *blk = sp->free[k];
    if (blk)
        sp->free[k] = blk->next;
    pthread_mutex_unlock(&sp->mu);
    return blk;
}

/* The size class of small block @p, -1 when @p is not one. */
static int small_lookup(small_pool *sp, const void *p)
{
    const unsigned char *q = p;
    int cls = -1;
    if (!sp->max || !p)
        return -1;
    pthread_mutex_lock(&sp->mu);
    for (int i = 0; i < sp->nslabs; i++)
        if (q >= sp->slab[i] && q < sp->slab[i] + SMALL_SLAB_BYTES) {
            cls = sp->slab_class[i];
            break;
        }
    pthread_mutex_unlock(&sp->mu);
    return cls;
}

static void small_free(small_pool *sp, void *p, int cls)
{
    small_block *blk = p;
    pthread_mutex_lock(&sp->mu);
    blk->next = sp->free[cls];
    sp->free[cls] = blk;
    pthread_mutex_unlock(&sp->mu);
}

static void small_destroy(small_pool *sp)
{
    for (int i = 0; i < sp->nslabs; i++)
        if (cudaFreeHost(sp->slab[i]) != cudaSuccess)
            (void)cudaGetLastError();
    sp->nslabs = 0;
    memset(sp->free, 0, sizeof sp->free);
}

static int cuda_alloc(void *ctx, theus_placement pl, size_t nbytes, void **out)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (pl != THEUS_PLACEMENT_DEVICE && pl != THEUS_PLACEMENT_PINNED)
        return err_set(NULL, THEUS_EINVAL, "CUDA backend: placement %d is not a GPU placement",
                       (int)pl);
    int rc = call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    const size_t n = nbytes ? nbytes : 1;
    void *p = NULL;
    cudaError_t e;
    if (pl == THEUS_PLACEMENT_PINNED) {
        e = cudaHostAlloc(&p, n, cudaHostAllocMapped | cudaHostAllocPortable);
        if (e != cudaSuccess) {
            rc = alloc_fail(e, "cudaHostAlloc(pinned field)", n);
            goto out;
        }
        /* Kernels use the host address itself (unified addressing); check that they can. */
        void *dp = NULL;
        e = cudaHostGetDevicePointer(&dp, p, 0);
        if (e != cudaSuccess || dp != p) {
            rc = e != cudaSuccess ? cuda_fail(e, "cudaHostGetDevicePointer", __FILE__, __LINE__)
                                  : err_set(NULL, THEUS_EDEVICE,
                                            "CUDA: pinned memory has a different device address");
            if (cudaFreeHost(p) != cudaSuccess)
                (void)cudaGetLastError();
            goto out;
        }
        memset(p, 0, n);
    } else {
        e = cudaMalloc(&p, n);
        if (e != cudaSuccess) {
            rc = alloc_fail(e, "cudaMalloc(device field)", n);
            goto out;
        }
        e = cudaMemsetAsync(p, 0, n, k.lane->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(k.lane->stream);
        if (e != cudaSuccess) {
            rc = cuda_fail(e, "zeroing a device field", __FILE__, __LINE__);
            if (cudaFree(p) != cudaSuccess)
                (void)cudaGetLastError();
            goto out;
        }
    }
    *out = p;
out:
    call_end(&k);
    return rc;
}

static void cuda_free(void *ctx, theus_placement pl, void *p)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (!p)
        return;
    int guarded = call_begin(c, &k) == THEUS_OK;
    cudaError_t e = pl == THEUS_PLACEMENT_PINNED ? cudaFreeHost(p) : cudaFree(p);
    if (e != cudaSuccess)
        (void)cudaGetLastError();
    if (guarded)
        call_end(&k);
}

static int cuda_read(void *ctx, const void *base, const theus_region *frame, theus_dtype dt,
                     const theus_region *sub, void *dst, theus_mem dst_mem)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (dst_mem != THEUS_MEM_HOST && dst_mem != THEUS_MEM_DEVICE)
        return THEUS_EINVAL;
    int rc = call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    rc = copy_out(c, k.lane, dt, dst, dst_mem, base, frame, sub);
    call_end(&k);
    return rc;
}

static int cuda_overlay(void *ctx, theus_dtype dt, delta_op op, void *dst,
                        const theus_region *dframe, theus_mem dst_mem, const void *payload,
                        const theus_region *pframe, const theus_region *sub)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (dst_mem != THEUS_MEM_HOST && dst_mem != THEUS_MEM_DEVICE)
        return THEUS_EINVAL;
    const size_t n = region_nelems(sub);
    if (n == 0)
        return THEUS_OK;
    int rc = call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    if (dst_mem == THEUS_MEM_DEVICE) {
        transfer t = {op, dt, dst, dframe, payload, pframe, sub};
        rc = run_transfers(c, k.lane, &t, 1);
    } else {
        /* Bring the payload's part over, then the CPU's own overlay: the host buffer may
         * be pageable memory no kernel can write. */
        void *tmp = theus_xmalloc(n * theus_dtype_size(dt));
        if (!tmp) {
            rc = err_set(NULL, THEUS_ENOMEM, "CUDA overlay: out of memory");
        } else {
            rc = copy_out(c, k.lane, dt, tmp, THEUS_MEM_HOST, payload, pframe, sub);
            if (rc == THEUS_OK)
                region_transfer(dt, op, dst, dframe, tmp, sub, sub);
            theus_xfree(tmp);
        }
    }
    call_end(&k);
    return rc;
}

static int cuda_stage(void *ctx, theus_placement pl, const void *src, theus_mem src_mem,
                      size_t nbytes, void **out)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (src_mem != THEUS_MEM_HOST && src_mem != THEUS_MEM_DEVICE)
        return THEUS_EINVAL;
    int rc = call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    cuda_lane *l = k.lane;
    void *p = NULL;
    if (src && src_mem == THEUS_MEM_HOST && nbytes > 0 &&
        (p = small_alloc(&c->small, nbytes)) != NULL) {
        memcpy(p, src, nbytes);
        *out = p;
        call_end(&k);
        return THEUS_OK;
    }
    if (!src && pl != THEUS_PLACEMENT_DEVICE) {
        /* A buffer the caller fills in place (theus_tx_stage_buffer) for a pinned field:
         * mapped pinned memory, written by host code or by kernels through unified
         * addressing. */
        cudaError_t e = cudaHostAlloc(&p, nbytes ? nbytes : 1,
                                      cudaHostAllocMapped | cudaHostAllocPortable);
        if (e != cudaSuccess) {
            rc = alloc_fail(e, "cudaHostAlloc(staging buffer)", nbytes);
        } else {
            memset(p, 0, nbytes ? nbytes : 1);
            *out = p;
        }
        call_end(&k);
        return rc;
    }
    cudaError_t e = dev_alloc(c, l, nbytes, &p);
    if (e != cudaSuccess) {
        p = NULL;
        rc = alloc_fail(e, "staging buffer", nbytes);
        goto out;
    }
    if (!src) {
        /* A device buffer the caller's kernels fill in place: zeroed, in stream order. */
        CHECK_CUDA_GOTO(cudaMemsetAsync(p, 0, nbytes ? nbytes : 1, l->stream), rc, out);
    } else if (nbytes) {
        if (src_mem == THEUS_MEM_DEVICE || is_pinned_host(src))
            CHECK_CUDA_GOTO(cudaMemcpyAsync(p, src, nbytes, cudaMemcpyDefault, l->stream), rc, out);
        else if ((rc = h2d_bounce(l, p, src, nbytes)) != THEUS_OK)
            goto out;
    }
    CHECK_CUDA_GOTO(cudaStreamSynchronize(l->stream), rc, out);
    *out = p;
    p = NULL;
out:
    if (p) {
        dev_free(c, l, p);
        if (cudaStreamSynchronize(l->stream) != cudaSuccess)
            (void)cudaGetLastError();
    }
    call_end(&k);
    return rc;
}

static void cuda_unstage(void *ctx, void *staged)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (!staged)
        return;
    /* A small pinned block: whoever read it (replay, overlay, check) waited for it. */
    const int cls = small_lookup(&c->small, staged);
    if (cls >= 0) {
        small_free(&c->small, staged, cls);
        return;
    }
    if (call_begin(c, &k) != THEUS_OK) {
        /* Cannot reach the device: leaking the buffer beats freeing it wrongly. */
        return;
    }
    /* Whoever read the payload (replay, overlay, check) waited for it: free in stream order
     * (pinned host memory: a caller-filled buffer from cuda_stage). */
    if (is_pinned_host(staged)) {
        if (cudaFreeHost(staged) != cudaSuccess)
            (void)cudaGetLastError();
    } else {
        dev_free(c, k.lane, staged);
    }
    call_end(&k);
}

static int cuda_replay(void *ctx, const replay_op *ops, size_t n)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (n == 0)
        return THEUS_OK;
    transfer *t = theus_xmalloc(n * sizeof *t);
    if (!t)
        return err_set(NULL, THEUS_ENOMEM, "CUDA replay: out of memory");
    for (size_t i = 0; i < n; i++) {
        t[i].op = ops[i].op;
        t[i].dtype = ops[i].dtype;
        t[i].dst = ops[i].base;
        t[i].dframe = ops[i].frame;
        t[i].src = ops[i].payload;
        t[i].sframe = &ops[i].sub;
        t[i].sub = &ops[i].sub;
    }
    int rc = call_begin(c, &k);
    if (rc == THEUS_OK) {
        rc = run_transfers(c, k.lane, t, n);
        call_end(&k);
    }
    theus_xfree(t);
    return rc;
}

static int is_signed_int(theus_dtype dt)
{
    return dt == THEUS_DTYPE_I8 || dt == THEUS_DTYPE_I16 || dt == THEUS_DTYPE_I32 ||
           dt == THEUS_DTYPE_I64;
}

static int cuda_check(void *ctx, theus_dtype dt, const void *staged, size_t n,
                      const theus_constraints *cons, size_t *bad_index)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    *bad_index = SIZE_MAX;
    /* The cases dtype_check settles without looking at an element. */
    if (n == 0)
        return THEUS_OK;
    if (theus_dtype_size(dt) == 0 || !staged) {
        *bad_index = 0;
        return THEUS_OK;
    }
    if (!cons || (!cons->finite && !cons->has_min && !cons->has_max))
        return THEUS_OK;
    if (small_lookup(&c->small, staged) >= 0) {
        /* Staged in host memory: checked where it is, no round trip to the GPU. */
        *bad_index = dtype_check(dt, staged, n, cons);
        return THEUS_OK;
    }
    theus_check_params p;
    memset(&p, 0, sizeof p);
    if (dtype_is_float(dt)) {
        p.kind = THEUS_CHECK_FLOAT;
        p.finite = cons->finite;
        p.has_min = cons->has_min;
        p.has_max = cons->has_max;
        p.min = cons->min;
        p.max = cons->max;
    } else if (!cons->has_min && !cons->has_max) {
        return THEUS_OK;
    } else if (is_signed_int(dt)) {
        p.kind = THEUS_CHECK_SIGNED;
        if (!dtype_signed_range(cons, &p.lo, &p.hi)) {
            *bad_index = 0;
            return THEUS_OK;
        }
    } else {
        p.kind = THEUS_CHECK_UNSIGNED;
        if (!dtype_unsigned_range(cons, &p.ulo, &p.uhi)) {
            *bad_index = 0;
            return THEUS_OK;
        }
    }
    int rc = call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    cuda_lane *l = k.lane;
    if (!l->d_first) {
        void *dp = NULL, *hp = NULL;
        cudaError_t e = cudaMalloc(&dp, sizeof *l->d_first);
        if (e == cudaSuccess) {
            e = cudaHostAlloc(&hp, sizeof *l->h_first, cudaHostAllocPortable);
            if (e != cudaSuccess && cudaFree(dp) != cudaSuccess)
                (void)cudaGetLastError();
        }
        if (e != cudaSuccess) {
            rc = alloc_fail(e, "constraint check result", sizeof *l->d_first);
            goto out;
        }
        l->d_first = dp;
        l->h_first = hp;
    }
    CHECK_CUDA_GOTO(theus_check_launch((int)dt, staged, (uint64_t)n, &p, l->d_first,
                                       c->check_blocks, l->stream), rc, out);
    CHECK_CUDA_GOTO(cudaMemcpyAsync(l->h_first, l->d_first, sizeof *l->h_first,
                                    cudaMemcpyDeviceToHost, l->stream), rc, out);
    CHECK_CUDA_GOTO(cudaStreamSynchronize(l->stream), rc, out);
    *bad_index = *l->h_first >= (unsigned long long)n ? SIZE_MAX : (size_t)*l->h_first;
out:
    call_end(&k);
    return rc;
}

static int cuda_sync(void *ctx)
{
    cuda_ctx *c = ctx;
    int prev = -1, rc = THEUS_OK;
    if (cudaGetDevice(&prev) != cudaSuccess) {
        (void)cudaGetLastError();
        prev = -1;
    }
    if (prev != c->device)
        CHECK_CUDA(cudaSetDevice(c->device));
    for (int i = 0; i < c->nlanes; i++) {
        cuda_lane *l = &c->lanes[i];
        pthread_mutex_lock(&l->mu);
        cudaError_t e = cudaStreamSynchronize(l->stream);
        pthread_mutex_unlock(&l->mu);
        if (e != cudaSuccess && rc == THEUS_OK)
            rc = cuda_fail(e, "cudaStreamSynchronize", __FILE__, __LINE__);
    }
    if (prev >= 0 && prev != c->device && cudaSetDevice(prev) != cudaSuccess)
        (void)cudaGetLastError();
    return rc;
}

static void lane_destroy(cuda_lane *l)
{
    if (l->stream && cudaStreamSynchronize(l->stream) != cudaSuccess)
        (void)cudaGetLastError();
    if (l->d_first)
        (void)cudaFree(l->d_first);
    if (l->h_first)
        (void)cudaFreeHost(l->h_first);
    if (l->desc_host)
        (void)cudaFreeHost(l->desc_host);
    replay_plan_release(&l->plan);
    if (l->bounce)
        (void)cudaFreeHost(l->bounce);
    for (int h = 0; h < 2; h++)
        if (l->bounce_ev[h])
            (void)cudaEventDestroy(l->bounce_ev[h]);
    if (l->done)
        (void)cudaEventDestroy(l->done);
    if (l->stream)
        (void)cudaStreamDestroy(l->stream);
    (void)cudaGetLastError();
    pthread_mutex_destroy(&l->mu);
    memset(l, 0, sizeof *l);
}

/* Release the backend's own resources (field memory belongs to the states). Process
 * exit does not need it; the core keeps the singleton for the life of the process. */
static void cuda_destroy(void *ctx)
{
    cuda_ctx *c = ctx;
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess)
        prev = -1;
    if (cudaSetDevice(c->device) != cudaSuccess)
        (void)cudaGetLastError();
    for (int i = 0; i < c->nlanes; i++)
        lane_destroy(&c->lanes[i]);
    c->nlanes = 0;
    small_destroy(&c->small);
    if (c->pool) {
        (void)cudaMemPoolDestroy(c->pool);
        c->pool = NULL;
    }
    if (prev >= 0)
        (void)cudaSetDevice(prev);
    (void)cudaGetLastError();
}

static int cuda_device_id(void *ctx)
{
    return ((const cuda_ctx *)ctx)->device;
}

/* ---- shared states: device memory through CUDA IPC, shared memory registered -------- */

_Static_assert(sizeof(cudaIpcMemHandle_t) == THEUS_IPC_HANDLE_BYTES, "IPC handle size");

static int cuda_ipc_export(void *ctx, void *ptr, void *handle)
{
    cuda_call k;
    int rc = call_begin(ctx, &k);
    if (rc != THEUS_OK)
        return rc;
    cudaIpcMemHandle_t h;
    cudaError_t e = cudaIpcGetMemHandle(&h, ptr);
    call_end(&k);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaIpcGetMemHandle", __FILE__, __LINE__);
    memcpy(handle, &h, sizeof h);
    return THEUS_OK;
}

static int cuda_ipc_open(void *ctx, const void *handle, void **ptr)
{
    cuda_call k;
    int rc = call_begin(ctx, &k);
    if (rc != THEUS_OK)
        return rc;
    cudaIpcMemHandle_t h;
    memcpy(&h, handle, sizeof h);
    cudaError_t e = cudaIpcOpenMemHandle(ptr, h, cudaIpcMemLazyEnablePeerAccess);
    call_end(&k);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaIpcOpenMemHandle", __FILE__, __LINE__);
    return THEUS_OK;
}

static void cuda_ipc_close(void *ctx, void *ptr)
{
    cuda_call k;
    if (call_begin(ctx, &k) != THEUS_OK)
        return;
    if (cudaIpcCloseMemHandle(ptr) != cudaSuccess)
        (void)cudaGetLastError();
    call_end(&k);
}

/* As cuda_alloc's pinned memory: mapped, portable, and reached by kernels at its host
 * address (unified addressing). */
static int cuda_host_register(void *ctx, void *ptr, size_t nbytes)
{
    cuda_call k;
    int rc = call_begin(ctx, &k);
    if (rc != THEUS_OK)
        return rc;
    cudaError_t e = cudaHostRegister(ptr, nbytes, cudaHostRegisterMapped | cudaHostRegisterPortable);
    void *dp = NULL;
    if (e != cudaSuccess) {
        rc = cuda_fail(e, "cudaHostRegister", __FILE__, __LINE__);
    } else if ((e = cudaHostGetDevicePointer(&dp, ptr, 0)) != cudaSuccess || dp != ptr) {
        rc = e != cudaSuccess ? cuda_fail(e, "cudaHostGetDevicePointer", __FILE__, __LINE__)
                              : err_set(NULL, THEUS_EDEVICE,
                                        "CUDA: registered memory has a different device address");
        if (cudaHostUnregister(ptr) != cudaSuccess)
            (void)cudaGetLastError();
    }
    call_end(&k);
    return rc;
}

static void cuda_host_unregister(void *ctx, void *ptr)
{
    cuda_call k;
    if (call_begin(ctx, &k) != THEUS_OK)
        return;
    if (cudaHostUnregister(ptr) != cudaSuccess)
        (void)cudaGetLastError();
    call_end(&k);
}

static const theus_backend_iface cuda_iface = {
    .name = "cuda",
    .alloc = cuda_alloc,
    .free = cuda_free,
    .read = cuda_read,
    .overlay = cuda_overlay,
    .stage = cuda_stage,
    .unstage = cuda_unstage,
    .replay = cuda_replay,
    .check = cuda_check,
    .sync = cuda_sync,
    .destroy = cuda_destroy,
    .device_id = cuda_device_id,
    .ipc_export = cuda_ipc_export,
    .ipc_open = cuda_ipc_open,
    .ipc_close = cuda_ipc_close,
    .host_register = cuda_host_register,
    .host_unregister = cuda_host_unregister,
};

/* ---- discovery ---------------------------------------------------------------------- */

static int gpu_disabled_by_env(void)
{
    const char *v = getenv("THEUS_DISABLE_GPU");
    return v && v[0] && strcmp(v, "0") != 0;
}

static int attr(enum cudaDeviceAttr a, int dev, int *out)
{
    *out = 0;
    if (cudaDeviceGetAttribute(out, a, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    return 0;
}

static int lane_init(cuda_lane *l)
{
    memset(l, 0, sizeof *l);
    if (pthread_mutex_init(&l->mu, NULL) != 0)
        return -1;
    if (cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&l->done, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&l->bounce_ev[0], cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&l->bounce_ev[1], cudaEventDisableTiming) != cudaSuccess) {
        (void)cudaGetLastError();
        lane_destroy(l);
        return -1;
    }
    return 0;
}

static void cuda_init_once(void)
{
    if (gpu_disabled_by_env())
        return;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count <= 0) {
        (void)cudaGetLastError();
        return;
    }
    cuda_ctx *c = &g_ctx;
    memset(c, 0, sizeof *c);
    /* The device current on the first thread that asks (0 unless it chose another). */
    if (cudaGetDevice(&c->device) != cudaSuccess) {
        (void)cudaGetLastError();
        c->device = 0;
    }
    int uva = 0, mode = 0, sms = 0, coop = 0, pools = 0, pitch = 0;
    if (attr(cudaDevAttrUnifiedAddressing, c->device, &uva) || !uva ||
        attr(cudaDevAttrComputeMode, c->device, &mode) || mode == cudaComputeModeProhibited ||
        attr(cudaDevAttrMultiProcessorCount, c->device, &sms) || sms <= 0)
        return;
    attr(cudaDevAttrCooperativeLaunch, c->device, &coop);
    attr(cudaDevAttrMemoryPoolsSupported, c->device, &pools);
    attr(cudaDevAttrMaxPitch, c->device, &pitch);
    c->cooperative = coop;
    c->max_pitch = pitch > 0 ? (size_t)pitch : 0;
    c->check_blocks = sms * 8;
    /* The kernels must have an image for this device (built for CMAKE_CUDA_ARCHITECTURES):
     * find out now and fall back to host memory instead of failing every commit. */
    if (theus_replay_probe(&c->max_blocks) != cudaSuccess || theus_check_probe() != cudaSuccess) {
        (void)cudaGetLastError();
        return;
    }
    if (pools) {
        struct cudaMemPoolProps props;
        memset(&props, 0, sizeof props);
        props.allocType = cudaMemAllocationTypePinned;
        props.handleTypes = cudaMemHandleTypeNone;
        props.location.type = cudaMemLocationTypeDevice;
        props.location.id = c->device;
        if (cudaMemPoolCreate(&c->pool, &props) == cudaSuccess) {
            uint64_t keep = POOL_KEEP_BYTES;
            if (cudaMemPoolSetAttribute(c->pool, cudaMemPoolAttrReleaseThreshold, &keep) !=
                cudaSuccess)
                (void)cudaGetLastError();
        } else {
            (void)cudaGetLastError();
            c->pool = NULL;
        }
    }
    for (int i = 0; i < CUDA_LANES; i++) {
        if (lane_init(&c->lanes[i]) != 0) {
            cuda_destroy(c);
            return;
        }
        c->nlanes = i + 1;
    }
    atomic_init(&c->next_lane, 0u);
    pthread_mutex_init(&c->small.mu, NULL);
    c->small.max = SMALL_STAGE_DEFAULT;
    const char *sm = getenv("THEUS_CUDA_SMALL_STAGE");
    if (sm && *sm) {
        char *end = NULL;
        unsigned long long v = strtoull(sm, &end, 10);
        if (end && *end == '\0')
            c->small.max = v < SMALL_STAGE_DEFAULT ? (size_t)v : SMALL_STAGE_DEFAULT;
    }
    g_backend.iface = &cuda_iface;
    g_backend.ctx = c;
    g_ready = &g_backend;
}

const theus_backend *backend_cuda(void)
{
    pthread_once(&g_once, cuda_init_once);
    return g_ready;
}
