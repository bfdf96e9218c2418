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

#ifdef __cplusplus
}
#endif

#endif /* THEUS_KERNELS_REPLAY_DESC_H */
