/* The replay kernel's batch description: descriptors, outer dimensions and waves, and the
 * decoding of a chunk number into rows and bytes. Plain C99, no CUDA headers: the host
 * planner (cuda/replay_plan.c) builds these, the kernel (kernels/replay.cu) runs them, and
 * the planner's tests (tests/test_replay_plan.c) run them on the CPU with the very same
 * decoding functions, so that a plan is checked without a GPU. */
#ifndef THEUS_KERNELS_REPLAY_DESC_H
#define THEUS_KERNELS_REPLAY_DESC_H

#include <stdint.h>

#if defined(__CUDACC__)
#define THEUS_RD_FN static __host__ __device__ __forceinline__
#else
#define THEUS_RD_FN static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Work is cut into chunks of at most this many bytes; one warp handles one chunk at a
 * time. A multiple of 16 (the vector width) and of every element size. */
#define THEUS_REPLAY_CHUNK_BYTES 16384u

/* One outer (non-folded) dimension of a transfer; strides in bytes. */
typedef struct theus_replay_dim {
    int64_t ext;
    int64_t dst_stride;
    int64_t src_stride;
} theus_replay_dim;

/* One transfer: @nrows rows of @run contiguous elements, row r at
 * dst + sum_d idx_d(r) * dims[d].dst_stride (same for src), idx in C order over the
 * @nouter dims starting at dims[@dims]. Rows of at least a chunk are split into @pieces
 * chunks; shorter rows are grouped, @rows_per_chunk to a chunk (then @pieces is 0). */
typedef struct theus_replay_desc {
    uint64_t dst;            /* device-visible byte address of the first element */
    uint64_t src;
    uint64_t run;            /* elements per contiguous row */
    uint64_t nrows;
    uint64_t first_chunk;    /* global index of this transfer's first chunk */
    uint32_t pieces;
    uint32_t rows_per_chunk;
    uint32_t dims;
    uint8_t nouter;          /* 0 .. THEUS_MAX_DIMS - 1 */
    uint8_t dtype;           /* theus_dtype */
    uint8_t op;              /* 0: assign, 1: add (delta_op) */
    uint8_t pad;
} theus_replay_desc;

/* Transfers [desc_begin, desc_end) touch pairwise disjoint elements and run concurrently;
 * waves run one after the other. Their chunks are [chunk_begin, chunk_end), numbered
 * contiguously across the batch in wave order. */
typedef struct theus_replay_wave {
    uint64_t desc_begin, desc_end;
    uint64_t chunk_begin, chunk_end;
} theus_replay_wave;

/* What one chunk of a transfer covers: rows [row0, row0 + nrows), elements
 * [col, col + n) of each (n == run unless the row is split into pieces). */
typedef struct theus_replay_span {
    uint64_t row0;
    uint64_t nrows;
    uint64_t col;
    uint64_t n;
} theus_replay_span;

/* Chunk @c (counted from the transfer's first chunk) of @d, elements of @es bytes. */
THEUS_RD_FN theus_replay_span theus_replay_chunk(const theus_replay_desc *d, uint64_t c,
                                                 uint64_t es)
{
    theus_replay_span s;
    if (d->pieces) {
        const uint64_t per = THEUS_REPLAY_CHUNK_BYTES / es;
        s.row0 = c / d->pieces;
        s.nrows = 1;
        s.col = (c % d->pieces) * per;
        s.n = d->run - s.col < per ? d->run - s.col : per;
    } else {
        s.row0 = c * d->rows_per_chunk;
        s.nrows = d->nrows - s.row0 < d->rows_per_chunk ? d->nrows - s.row0 : d->rows_per_chunk;
        s.col = 0;
        s.n = d->run;
    }
    return s;
}

/* Byte offsets of row @row of @d in dst and src (C order over the outer dimensions). */
THEUS_RD_FN void theus_replay_row_offsets(const theus_replay_desc *d,
                                          const theus_replay_dim *dims, uint64_t row,
                                          int64_t *doff, int64_t *soff)
{
    int64_t dd = 0, ss = 0;
    if (d->nouter != 0) {
        const theus_replay_dim *m = dims + d->dims;
        for (int k = (int)d->nouter - 1; k > 0; k--) {
            const uint64_t ext = (uint64_t)m[k].ext;
            const uint64_t i = row % ext;
            row /= ext;
            dd += (int64_t)i * m[k].dst_stride;
            ss += (int64_t)i * m[k].src_stride;
        }
        dd += (int64_t)row * m[0].dst_stride;
        ss += (int64_t)row * m[0].src_stride;
    }
    *doff = dd;
    *soff = ss;
}

/* The transfer of [@lo, @hi) (descriptor indices, @lo's first chunk at or before @c)
 * holding global chunk @c: the last one whose first chunk is at or before @c. */
THEUS_RD_FN uint64_t theus_replay_find(const theus_replay_desc *descs, uint64_t lo,
                                       uint64_t hi, uint64_t c)
{
    while (hi - lo > 1) {
        const uint64_t mid = lo + (hi - lo) / 2;
        if (descs[mid].first_chunk <= c)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* The descriptor of wave @wv holding global chunk @c. A wave with as many chunks as
 * descriptors has one chunk per descriptor (each has at least one): no search. */
THEUS_RD_FN uint64_t theus_replay_locate(const theus_replay_wave *wv,
                                         const theus_replay_desc *descs, uint64_t c)
{
    if (wv->chunk_end - wv->chunk_begin == wv->desc_end - wv->desc_begin)
        return wv->desc_begin + (c - wv->chunk_begin);
    return theus_replay_find(descs, wv->desc_begin, wv->desc_end, c);
}

/* ---- the compact form -------------------------------------------------------------------
 * A batch whose every transfer is one contiguous run of at most
 * THEUS_REPLAY_COMPACT_MAX_CHUNKS chunks (the usual commit of 1-D segments and whole small
 * regions) is also described by 16-byte segments of one chunk each, against 56 bytes a
 * descriptor: a chunk is a segment, so the kernel needs neither a search nor the chunk
 * decoding above. (One chunk: a longer run would take more bytes than its wide descriptor,
 * and its chunks' copying dwarfs the search anyway.) Transfers with the same dtype and op whose addresses lie within 2^47 bytes
 * of a group's first ones share that group, which holds the base addresses, the dtype and the
 * op. Waves are the same theus_replay_wave, their chunk numbers being segment numbers. */

/* Longest transfer (in chunks) the compact form takes; a longer one keeps the batch wide. */
#define THEUS_REPLAY_COMPACT_MAX_CHUNKS 1u
/* Groups a compact batch may have (the segment's 16-bit group number). */
#define THEUS_REPLAY_COMPACT_MAX_GROUPS 65536u
/* Signed byte offsets of a segment from its group's bases: 48 bits. */
#define THEUS_REPLAY_OFF_BITS 48
#define THEUS_REPLAY_OFF_MASK ((UINT64_C(1) << THEUS_REPLAY_OFF_BITS) - 1)
#define THEUS_REPLAY_OFF_SIGN (UINT64_C(1) << (THEUS_REPLAY_OFF_BITS - 1))

/* One chunk: w0 = destination offset (48-bit two's complement) | group << 48;
 * w1 = source offset (the same) | (bytes - 1) << 48, bytes in [1, THEUS_REPLAY_CHUNK_BYTES]. */
typedef struct theus_replay_seg {
    uint64_t w0;
    uint64_t w1;
} theus_replay_seg;

typedef struct theus_replay_group {
    uint64_t dst;            /* device-visible byte addresses the offsets start from */
    uint64_t src;
    uint8_t dtype;           /* theus_dtype */
    uint8_t op;              /* 0: assign, 1: add (delta_op) */
    uint8_t pad[6];
} theus_replay_group;

/* Small single-wave batches go to the kernel as its argument: no upload, no device buffer
 * (a one-element commit is one launch and one wait). */
#define THEUS_REPLAY_INLINE_SEGS 8u
#define THEUS_REPLAY_INLINE_GROUPS 2u
typedef struct theus_replay_inline {
    uint32_t nsegs;
    uint32_t ngroups;
    theus_replay_group groups[THEUS_REPLAY_INLINE_GROUPS];
    theus_replay_seg segs[THEUS_REPLAY_INLINE_SEGS];
} theus_replay_inline;

#if !defined(__cplusplus)
_Static_assert(sizeof(theus_replay_seg) == 16, "compact segment layout shared with replay.cu");
_Static_assert(sizeof(theus_replay_group) == 24, "group layout shared with replay.cu");
_Static_assert(sizeof(theus_replay_inline) == 184, "inline batch layout shared with replay.cu");
#endif

/* Whether the signed byte offset @off fits a segment. */
THEUS_RD_FN int theus_replay_off_fits(int64_t off)
{
    return off >= -(int64_t)THEUS_REPLAY_OFF_SIGN && off < (int64_t)THEUS_REPLAY_OFF_SIGN;
}

/* The segment of @bytes at @doff / @soff from group @group's bases (offsets that fit). */
THEUS_RD_FN theus_replay_seg theus_replay_seg_make(uint32_t group, int64_t doff, int64_t soff,
                                                   uint32_t bytes)
{
    theus_replay_seg s;
    s.w0 = ((uint64_t)doff & THEUS_REPLAY_OFF_MASK) | ((uint64_t)group << THEUS_REPLAY_OFF_BITS);
    s.w1 = ((uint64_t)soff & THEUS_REPLAY_OFF_MASK) |
           ((uint64_t)(bytes - 1) << THEUS_REPLAY_OFF_BITS);
    return s;
}

/* 48-bit two's complement to int64 (no implementation-defined shift of a negative value). */
THEUS_RD_FN int64_t theus_replay_off(uint64_t w)
{
    return (int64_t)((w & THEUS_REPLAY_OFF_MASK) ^ THEUS_REPLAY_OFF_SIGN) -
           (int64_t)THEUS_REPLAY_OFF_SIGN;
}

THEUS_RD_FN uint32_t theus_replay_seg_group(const theus_replay_seg *s)
{
    return (uint32_t)(s->w0 >> THEUS_REPLAY_OFF_BITS);
}

THEUS_RD_FN uint32_t theus_replay_seg_bytes(const theus_replay_seg *s)
{
    return (uint32_t)(s->w1 >> THEUS_REPLAY_OFF_BITS) + 1u;
}

/* The addresses segment @s of group @g moves between. */
THEUS_RD_FN void theus_replay_seg_addrs(const theus_replay_seg *s, const theus_replay_group *g,
                                        uint64_t *dst, uint64_t *src)
{
    *dst = g->dst + (uint64_t)theus_replay_off(s->w0);
    *src = g->src + (uint64_t)theus_replay_off(s->w1);
}

#ifdef __cplusplus
}
#endif

#endif /* THEUS_KERNELS_REPLAY_DESC_H */
