/* The CPU backend: host memory (cache-line aligned, large fields on transparent huge
 * pages), replay as tight loops (memcpy or streaming stores, BLAS axpy for float adds
 * through dtype_add), large batches spread over the replay pool by destination address. */
#include "backend.h"
#include "alloc.h"
#include "dtype.h"
#include "replay_pool.h"
#include "seg_batch.h"
#include "stage_arena.h"
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Fields from this size on ask for transparent huge pages: scattered segments over a large
 * field miss the TLB on nearly every 4 KiB page otherwise (4 KiB segments onto 1 GiB: 47% ->
 * 59% of a packed copy on the machine of docs/benchmarks.md). */
#define CPU_HUGE_MIN ((size_t)2 << 20)


/* Field memory starts on a cache line, so that segments at 64-byte offsets fill whole lines
 * (what streaming stores need, and SIMD likes); fields from CPU_HUGE_MIN on start on a page,
 * so that checkpoints can write them to disk directly (O_DIRECT, src/durable/stsave.c).
 * The hooks' block is CPU_FIELD_PAD bytes larger; the pointer they returned is kept in the
 * bytes just before the field. */
#define CPU_FIELD_ALIGN ((uintptr_t)64)
#define CPU_PAGE_ALIGN ((uintptr_t)4096)
#define CPU_FIELD_PAD (CPU_PAGE_ALIGN + sizeof(void *))

static int cpu_alloc(void *ctx, theus_placement pl, size_t nbytes, void **out)
{
    (void)ctx;
    (void)pl;
    if (nbytes > SIZE_MAX - CPU_FIELD_PAD)
        return THEUS_ENOMEM;
    char *raw = theus_xmalloc(nbytes + CPU_FIELD_PAD);
    if (!raw)
        return THEUS_ENOMEM;
    const uintptr_t align = nbytes >= CPU_HUGE_MIN ? CPU_PAGE_ALIGN : CPU_FIELD_ALIGN;
    const uintptr_t at = ((uintptr_t)raw + sizeof(void *) + align - 1) & ~(align - 1);
    char *p = raw + (at - (uintptr_t)raw);
    memcpy(p - sizeof(void *), &raw, sizeof raw);
    if (nbytes >= CPU_HUGE_MIN)
        theus_advise_huge(p, nbytes);
    memset(p, 0, nbytes);   /* the first touch: after the advice */
    *out = p;
    return THEUS_OK;
}

static void cpu_free(void *ctx, theus_placement pl, void *p)
{
    (void)ctx;
    (void)pl;
    if (!p)
        return;
    void *raw;
    memcpy(&raw, (char *)p - sizeof(void *), sizeof raw);
    theus_xfree(raw);
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

/* ---- replay ------------------------------------------------------------------------------
 * Copies onto fields larger than the last-level cache use streaming (non-temporal) stores
 * for whole cache lines: a scattered segment written with ordinary stores first reads every
 * destination line it overwrites (write-allocate), a third more memory traffic, and its
 * lines would only evict others. On the machine of docs/benchmarks.md this took random
 * 4 KiB segments onto a 1 GiB field from about half of a packed memcpy's speed to about
 * all of it, on one thread. Smaller fields may sit in the cache, and keep ordinary stores.
 *
 * Large batches are spread over the replay pool by address striping: part t of nt applies,
 * for every op in batch order, only the bytes whose destination address lies in a 64 KiB
 * block b with b % nt == t. Each byte is written by one thread, in batch order, so an
 * ASSIGN followed by an ADD of the same elements (or any overlap) gives what the serial
 * loop gives, bit for bit: copies and adds are element-wise, and block boundaries fall
 * between elements as long as every base is element-aligned (checked; an unaligned base
 * replays serially). No thread ever waits for another within a batch. */
#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define CPU_HAVE_STREAM 1
#else
#define CPU_HAVE_STREAM 0
#endif

#define STRIPE_SHIFT 16
/* Batches of fewer bytes replay on the calling thread: waking a worker costs tens of
 * microseconds on a virtual machine, and one thread with streaming stores already runs near
 * the memory's speed. Measured (docs/threading.md, "The replay pool"): random 4 KiB
 * segments onto a 1 GiB field broke even at about 8 MiB on the 2-vCPU machine. */
#define CPU_REPLAY_PARALLEL_MIN ((size_t)8 << 20)
/* ... and batches whose segments average fewer bytes than this too: every part walks the
 * whole op table, which costs more than the small copies it shares out. */
#define CPU_REPLAY_PARALLEL_MIN_SEG ((size_t)256)
/* Adds go to dtype_add in pieces of at most this many bytes in the parallel path: OpenBLAS
 * threads an axpy of more than 10,000 elements itself, which would oversubscribe the CPUs. */
#define ADD_PIECE ((size_t)32 << 10)

/* The thresholds in force (backend_cpu_set_tuning); 0: the default. */
static _Atomic size_t tune_parallel_min, tune_parallel_min_seg, tune_stream_min;

void backend_cpu_set_tuning(const backend_cpu_tuning *t)
{
    atomic_store_explicit(&tune_parallel_min, t ? t->parallel_min : 0, memory_order_relaxed);
    atomic_store_explicit(&tune_parallel_min_seg, t ? t->parallel_min_seg : 0,
                          memory_order_relaxed);
    atomic_store_explicit(&tune_stream_min, t ? t->stream_min : 0, memory_order_relaxed);
}

static size_t tuned(_Atomic size_t *v, size_t dflt)
{
    const size_t x = atomic_load_explicit(v, memory_order_relaxed);
    return x ? x : dflt;
}

size_t cpu_llc_bytes(void)
{
    size_t v = 0;
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    if (f) {
        char buf[32] = "";
        if (fgets(buf, sizeof buf, f)) {
            char *end = NULL;
            unsigned long long k = strtoull(buf, &end, 10);
            if (end && (*end == 'K' || *end == 'k'))
                k <<= 10;
            else if (end && (*end == 'M' || *end == 'm'))
                k <<= 20;
            v = (size_t)k;
        }
        fclose(f);
    }
#ifdef _SC_LEVEL3_CACHE_SIZE
    if (v < ((size_t)1 << 20)) {
        const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
        v = l3 > 0 ? (size_t)l3 : 0;
    }
#endif
    return v >= ((size_t)1 << 20) ? v : (size_t)32 << 20;
}

/* Fields of at least this many bytes get streaming stores: by default the last-level cache
 * (read once), since a smaller field may be in it and be read again soon. */
static size_t stream_min_bytes(void)
{
    static _Atomic size_t llc;
    size_t v = atomic_load_explicit(&llc, memory_order_relaxed);
    if (v == 0) {
        v = cpu_llc_bytes();
        atomic_store_explicit(&llc, v, memory_order_relaxed);
    }
    return tuned(&tune_stream_min, v);
}

/* Whether copies into the field of @o take streaming stores. */
static int field_streams(const replay_op *o, size_t es, size_t stream_min)
{
    return CPU_HAVE_STREAM && region_nelems(o->frame) * es >= stream_min;
}

/* memcpy, with the destination's whole cache lines written by streaming stores. The caller
 * ends its batch with cpu_stream_fence(). */
void cpu_copy_stream(void *dst, const void *src, size_t n)
{
    char *d = dst;
    const char *s = src;
#if CPU_HAVE_STREAM
    const size_t head = (size_t)(-(uintptr_t)d & 63);
    if (n < head + 64) {
        memcpy(d, s, n);
        return;
    }
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    for (; n >= 64; n -= 64, d += 64, s += 64) {
        const __m128i a = _mm_loadu_si128((const __m128i *)(const void *)s);
        const __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(s + 16));
        const __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(s + 32));
        const __m128i e = _mm_loadu_si128((const __m128i *)(const void *)(s + 48));
        _mm_stream_si128((__m128i *)(void *)d, a);
        _mm_stream_si128((__m128i *)(void *)(d + 16), b);
        _mm_stream_si128((__m128i *)(void *)(d + 32), c);
        _mm_stream_si128((__m128i *)(void *)(d + 48), e);
    }
    memcpy(d, s, n);
#else
    memcpy(d, s, n);
#endif
}

/* Streaming stores are weakly ordered: make them visible before the commit publishes. */
void cpu_stream_fence(void)
{
#if CPU_HAVE_STREAM
    _mm_sfence();
#endif
}

typedef struct stripe_job {
    const replay_op *ops;
    size_t n;
} stripe_job;

/* @bytes of one row of @o, from @s to @d. @stream: copies take streaming stores. @piece:
 * the most bytes handed to one dtype_add call (0: no limit). */
static void apply_row(const replay_op *o, size_t es, char *d, const char *s, size_t bytes,
                      int stream, size_t piece)
{
    if (o->op == DELTA_ASSIGN) {
        if (stream)
            cpu_copy_stream(d, s, bytes);
        else
            memcpy(d, s, bytes);
        return;
    }
    if (piece == 0) {
        dtype_add(o->dtype, d, s, bytes / es);
        return;
    }
    while (bytes) {
        const size_t k = bytes < piece ? bytes : piece;
        dtype_add(o->dtype, d, s, k / es);
        d += k;
        s += k;
        bytes -= k;
    }
}

/* The bytes [d, d + bytes) of a row that lie in part t's blocks. */
static void stripe_row(const replay_op *o, size_t es, char *d, const char *s, size_t bytes,
                       int stream, uintptr_t t, uintptr_t nt)
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
        apply_row(o, es, d + (lo - a), s + (lo - a), hi - lo, stream, ADD_PIECE);
    }
}

/* One contiguous span of @o from @s to @d, or the part of it in part t's blocks. */
static void apply_span(const replay_op *o, size_t es, char *d, const char *s, size_t bytes,
                       int stream, uintptr_t t, uintptr_t nt)
{
    if (nt == 1) {
        apply_row(o, es, d, s, bytes, stream, 0);
        return;
    }
    const uintptr_t b0 = (uintptr_t)d >> STRIPE_SHIFT;
    if (b0 == ((uintptr_t)d + bytes - 1) >> STRIPE_SHIFT) {
        if (b0 % nt == t)
            apply_row(o, es, d, s, bytes, stream, ADD_PIECE);
    } else {
        stripe_row(o, es, d, s, bytes, stream, t, nt);
    }
}

/* A described batch: its segments in order, each a span of the flattened field. Every part
 * walks them all in order, so overlapping segments keep their order on every byte. */
static void replay_segments(const replay_op *o, size_t es, int stream, uintptr_t t, uintptr_t nt)
{
    const seg_batch *b = o->batch;
    char *base = o->base;
    const char *pay = o->payload;
    for (size_t k = 0; k < b->nsegs; k++) {
        const theus_batch_segment *g = &b->segs[k];
        if (g->length > 0)
            apply_span(o, es, base + (size_t)g->dst * es, pay + (size_t)g->src * es,
                       (size_t)g->length * es, stream, t, nt);
    }
}

/* Part t of nt of a batch; nt == 1 is the serial replay. */
static void replay_part(const replay_op *ops, size_t n, uintptr_t t, uintptr_t nt)
{
    theus_dtype last_dt = (theus_dtype)-1;
    size_t es = 0;
    const theus_region *last_frame = NULL;
    int field_stream = 0, streamed = 0;
    const size_t stream_min = stream_min_bytes();
    for (size_t i = 0; i < n; i++) {
        const replay_op *o = &ops[i];
        if (o->dtype != last_dt || o->frame != last_frame) {
            last_dt = o->dtype;
            last_frame = o->frame;
            es = theus_dtype_size(o->dtype);
            field_stream = field_streams(o, es, stream_min);
        }
        if (es == 0)
            continue;
        const int stream = field_stream && o->op == DELTA_ASSIGN;
        streamed |= stream;
        /* 1-D ops (scattered segments, the common case) skip the general row folding, which
         * costs more than a 64-byte copy; in the parallel replay every part looks at every
         * op, so one that is not this part's is skipped with as little work as possible. */
        if (o->batch) {
            replay_segments(o, es, stream, t, nt);
            continue;
        }
        if (o->sub.ndim == 1) {
            const int64_t len = o->sub.stop[0] - o->sub.start[0];
            if (len <= 0)
                continue;
            char *d = (char *)o->base + (size_t)(o->sub.start[0] - o->frame->start[0]) * es;
            apply_span(o, es, d, o->payload, (size_t)len * es, stream, t, nt);
            continue;
        }
        region_folded x;
        if (!region_fold(o->frame, &o->sub, &o->sub, &x))
            continue;
        char *base = o->base;
        const char *src = o->payload;
        const size_t runbytes = (size_t)x.run * es;
        int whole = nt == 1;
        if (!whole) {
            /* An op inside one block belongs to one part whole. */
            int64_t last = x.doff + x.run;
            for (int d = 0; d < x.nouter; d++)
                last += (x.ext[d] - 1) * x.dstr[d];
            const uintptr_t b0 = (uintptr_t)(base + (size_t)x.doff * es) >> STRIPE_SHIFT;
            const uintptr_t b1 = ((uintptr_t)(base + (size_t)last * es) - 1) >> STRIPE_SHIFT;
            if (b0 == b1 && b0 % nt != t)
                continue;
            whole = b0 == b1;
        }
        const size_t piece = nt == 1 ? 0 : ADD_PIECE;
        int64_t soff = x.soff, doff = x.doff;
        int64_t idx[THEUS_MAX_DIMS] = {0};
        do {
            char *dp = base + (size_t)doff * es;
            const char *sp = src + (size_t)soff * es;
            if (whole)
                apply_row(o, es, dp, sp, runbytes, stream, piece);
            else
                stripe_row(o, es, dp, sp, runbytes, stream, t, nt);
        } while (region_next_row(&x, idx, &doff, &soff));
    }
    if (streamed)
        cpu_stream_fence();
}

static void stripe_part(void *arg, int t, int nt)
{
    const stripe_job *j = arg;
    replay_part(j->ops, j->n, (uintptr_t)t, (uintptr_t)nt);
}

int backend_cpu_replay_threads(const replay_op *ops, size_t n)
{
    const int want = replay_pool_threads();
    if (want < 2 || n == 0)
        return 1;
    size_t bytes = 0, nseg = 0;
    for (size_t i = 0; i < n; i++) {
        const size_t es = theus_dtype_size(ops[i].dtype);
        if (es == 0 || (uintptr_t)ops[i].base % es != 0)
            return 1;
        if (ops[i].batch) {
            bytes += ops[i].batch->sum.total * es;
            nseg += ops[i].batch->sum.nonempty;
        } else {
            bytes += region_nelems(&ops[i].sub) * es;
            nseg++;
        }
    }
    if (bytes < tuned(&tune_parallel_min, CPU_REPLAY_PARALLEL_MIN) ||
        bytes < nseg * tuned(&tune_parallel_min_seg, CPU_REPLAY_PARALLEL_MIN_SEG))
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
    replay_part(ops, n, 0, 1);
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
};

static const theus_backend cpu_backend = {.iface = &cpu_iface, .ctx = NULL};

const theus_backend *backend_cpu(void)
{
    return &cpu_backend;
}
