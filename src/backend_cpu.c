/* The CPU backend: host memory (large fields on transparent huge pages), replay as tight
 * loops (memcpy runs, BLAS axpy for float adds through dtype_add), large batches spread
 * over the replay pool by destination address. */
#include "backend.h"
#include "alloc.h"
#include "dtype.h"
#include "replay_pool.h"
#include "stage_arena.h"
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

/* Fields from this size on ask for transparent huge pages: scattered segments over a large
 * field miss the TLB on nearly every 4 KiB page otherwise (4 KiB segments onto 1 GiB: 47% ->
 * 59% of a packed copy on the machine of docs/benchmarks.md). */
#define CPU_HUGE_MIN ((size_t)2 << 20)
#define CPU_HUGE_PAGE ((uintptr_t)2 << 20)

/* madvise the 2 MiB-aligned interior of [p, p + n), before anything touches it. Works on
 * whatever the allocation hooks returned; a refusal (not anonymous memory, THP off) only
 * means ordinary pages. */
static void advise_huge(void *p, size_t n)
{
#ifdef MADV_HUGEPAGE
    const uintptr_t lo = ((uintptr_t)p + CPU_HUGE_PAGE - 1) & ~(CPU_HUGE_PAGE - 1);
    const uintptr_t hi = ((uintptr_t)p + n) & ~(CPU_HUGE_PAGE - 1);
    if (hi > lo)
        (void)madvise((char *)p + (lo - (uintptr_t)p), hi - lo, MADV_HUGEPAGE);
#else
    (void)p;
    (void)n;
#endif
}

static int cpu_alloc(void *ctx, theus_placement pl, size_t nbytes, void **out)
{
    (void)ctx;
    (void)pl;
    void *p = theus_xmalloc(nbytes);
    if (!p)
        return THEUS_ENOMEM;
    if (nbytes >= CPU_HUGE_MIN)
        advise_huge(p, nbytes);
    memset(p, 0, nbytes);   /* the first touch: after the advice */
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
    /* Staging memory comes from the arena (reused blocks, pages already mapped). */
    void *p = stage_alloc(nbytes);
    if (!p)
        return THEUS_ENOMEM;
    if (src)
        memcpy(p, src, nbytes);
    else
        memset(p, 0, nbytes);
    *out = p;
    return THEUS_OK;
}

static void cpu_unstage(void *ctx, void *staged)
{
    (void)ctx;
    stage_free(staged);
}

/* ---- parallel replay -------------------------------------------------------------------
 * Address striping: part t of nt applies, for every op in batch order, only the bytes whose
 * destination address lies in a 64 KiB block b with b % nt == t. Each byte is written by one
 * thread, in batch order, so an ASSIGN followed by an ADD of the same elements (or any
 * overlap) gives what the serial loop gives, bit for bit: copies and adds are element-wise,
 * and block boundaries fall between elements as long as every base is element-aligned
 * (checked; an unaligned base replays serially). Ops are not split between threads, so no
 * thread waits for another. */
#define STRIPE_SHIFT 16
/* Batches of fewer bytes replay on the calling thread: waking the workers costs tens of
 * microseconds. Measured: see docs/benchmarks.md, "Method", parallel replay. */
#ifndef CPU_REPLAY_PARALLEL_MIN
#define CPU_REPLAY_PARALLEL_MIN ((size_t)1 << 20)
#endif
/* ... and batches whose segments average fewer bytes than this too: there every thread
 * walks the whole op table, which costs more than the copies it shares out. */
#ifndef CPU_REPLAY_PARALLEL_MIN_SEG
#define CPU_REPLAY_PARALLEL_MIN_SEG ((size_t)0)
#endif
/* Adds go to dtype_add in pieces of at most this many bytes: OpenBLAS threads an axpy of
 * more than 10,000 elements itself, which would only oversubscribe the CPUs here. */
#define ADD_PIECE ((size_t)32 << 10)

typedef struct stripe_job {
    const replay_op *ops;
    size_t n;
} stripe_job;

static void apply_piece(const replay_op *o, size_t es, char *d, const char *s, size_t bytes)
{
    if (o->op == DELTA_ASSIGN) {
        memcpy(d, s, bytes);
        return;
    }
    while (bytes) {
        const size_t k = bytes < ADD_PIECE ? bytes : ADD_PIECE;
        dtype_add(o->dtype, d, s, k / es);
        d += k;
        s += k;
        bytes -= k;
    }
}

/* The bytes [d, d + bytes) of a row that lie in part t's blocks. */
static void stripe_row(const replay_op *o, size_t es, char *d, const char *s, size_t bytes,
                       uintptr_t t, uintptr_t nt)
{
    const uintptr_t a = (uintptr_t)d, e = a + bytes;
    uintptr_t blk = a >> STRIPE_SHIFT;
    blk += (t + nt - blk % nt) % nt;
    for (; (blk << STRIPE_SHIFT) < e; blk += nt) {
        uintptr_t lo = blk << STRIPE_SHIFT, hi = (blk + 1) << STRIPE_SHIFT;
        if (lo < a)
            lo = a;
        if (hi > e)
            hi = e;
        apply_piece(o, es, d + (lo - a), s + (lo - a), hi - lo);
    }
}

static void stripe_part(void *arg, int ti, int nti)
{
    const stripe_job *j = arg;
    const uintptr_t t = (uintptr_t)ti, nt = (uintptr_t)nti;
    for (size_t i = 0; i < j->n; i++) {
        const replay_op *o = &j->ops[i];
        const size_t es = theus_dtype_size(o->dtype);
        region_folded x;
        if (es == 0 || !region_fold(o->frame, &o->sub, &o->sub, &x))
            continue;
        char *base = o->base;
        const char *src = o->payload;
        const size_t runbytes = (size_t)x.run * es;
        /* An op inside one block (most small segments) belongs to one part whole. */
        int64_t last = x.doff + x.run;
        for (int d = 0; d < x.nouter; d++)
            last += (x.ext[d] - 1) * x.dstr[d];
        const uintptr_t b0 = (uintptr_t)(base + (size_t)x.doff * es) >> STRIPE_SHIFT;
        const uintptr_t b1 = ((uintptr_t)(base + (size_t)last * es) - 1) >> STRIPE_SHIFT;
        const int whole = b0 == b1;
        if (whole && b0 % nt != t)
            continue;
        int64_t soff = x.soff, doff = x.doff;
        int64_t idx[THEUS_MAX_DIMS] = {0};
        for (;;) {
            char *dp = base + (size_t)doff * es;
            const char *sp = src + (size_t)soff * es;
            if (whole)
                apply_piece(o, es, dp, sp, runbytes);
            else
                stripe_row(o, es, dp, sp, runbytes, t, nt);
            int d = x.nouter - 1;
            for (; d >= 0; d--) {
                if (++idx[d] < x.ext[d]) {
                    soff += x.sstr[d];
                    doff += x.dstr[d];
                    break;
                }
                soff -= (x.ext[d] - 1) * x.sstr[d];
                doff -= (x.ext[d] - 1) * x.dstr[d];
                idx[d] = 0;
            }
            if (d < 0)
                break;
        }
    }
}

int backend_cpu_replay_threads(const replay_op *ops, size_t n)
{
    const int want = replay_pool_threads();
    if (want < 2 || n == 0)
        return 1;
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        const size_t es = theus_dtype_size(ops[i].dtype);
        if (es == 0 || (uintptr_t)ops[i].base % es != 0)
            return 1;
        bytes += region_nelems(&ops[i].sub) * es;
    }
    if (bytes < CPU_REPLAY_PARALLEL_MIN || bytes < n * CPU_REPLAY_PARALLEL_MIN_SEG)
        return 1;
    return want;
}

static int cpu_replay(void *ctx, const replay_op *ops, size_t n)
{
    (void)ctx;
    const int want = backend_cpu_replay_threads(ops, n);
    if (want > 1) {
        stripe_job j = {.ops = ops, .n = n};
        if (replay_pool_run(want, stripe_part, &j) > 0)
            return THEUS_OK;
    }
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
