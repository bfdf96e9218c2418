/* The replay kernel family: apply a whole commit batch (copies and adds of strided
 * sub-regions, every dtype) in one launch. Also serves the backend's gathers (reads of a
 * sub-region into a contiguous buffer) and device-side read-your-writes overlays.
 *
 * Build: compiled by CMake into libtheus when the CUDA backend is on
 *   cmake -S . -B build -DTHEUS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build build
 * or alone, as a syntax and warning check:
 *   nvcc -std=c++17 -arch=sm_90 -Xcompiler -Wall,-Wextra -Iinclude -c kernels/replay.cu
 *
 * Versions:
 *   v1 — the host cuts every transfer into chunks of at most THEUS_REPLAY_CHUNK_BYTES
 *      (long rows split into pieces, short rows grouped, so one launch handles a million
 *      one-element rows or a few gigabyte-sized runs alike) and numbers them by a prefix
 *      sum; each warp takes a chunk at a time and finds its transfer by binary search. Rows
 *      copy/add with 16-byte vectors when both addresses are 16-byte aligned (the tail and
 *      unaligned rows element by element). Transfers that overlap an earlier one of the
 *      batch go to a later wave; waves are separated by a grid-wide barrier (cooperative
 *      launch). Measured on an H100 (docs/benchmarks.md, run G1): 1.5-7 M transfers/s
 *      whatever their size, the host planning (qsort, per-call allocations) being the cost.
 *   v2 (this file) — the same kernel; planning moved to cuda/replay_plan.c (one pass, radix
 *      sort only for unsorted batches: 11-45 ns per transfer on a 2.6 GHz EPYC against
 *      54-380 for v1, side by side; 13-56 in theus-bench replay.plan), chunk decoding
 *      shared with the planner's CPU tests (replay_desc.h), and a wave of one chunk per
 *      transfer finds its transfer without a search.
 *      Not yet run on a GPU.
 *   v3 — batches of short contiguous runs (every transfer at most
 *      THEUS_REPLAY_COMPACT_MAX_CHUNKS chunks, the usual commit) in the compact form: a
 *      16-byte segment per chunk instead of a 56-byte descriptor per transfer, a warp per
 *      segment, no search, no chunk decoding; up to THEUS_REPLAY_INLINE_SEGS segments of
 *      one wave go as the kernel's argument (no upload). Other batches keep v2.
 *      Compiled, not yet run on a GPU.
 *   Validated against the CPU backend by tests/test_cuda_parity.c (byte-identical fields).  */
#include "replay.cuh"
#include "common.cuh"

#include <cooperative_groups.h>

namespace cg = cooperative_groups;
using namespace theus_kernels;

namespace {

constexpr int OP_ASSIGN = 0;
constexpr int OP_ADD = 1;

__device__ __forceinline__ unsigned dtype_bytes(unsigned dt)
{
    switch (dt) {
    case THEUS_DTYPE_BOOL: case THEUS_DTYPE_U8: case THEUS_DTYPE_I8: return 1;
    case THEUS_DTYPE_U16: case THEUS_DTYPE_I16: case THEUS_DTYPE_F16: case THEUS_DTYPE_BF16:
        return 2;
    case THEUS_DTYPE_U32: case THEUS_DTYPE_I32: case THEUS_DTYPE_F32: return 4;
    case THEUS_DTYPE_U64: case THEUS_DTYPE_I64: case THEUS_DTYPE_F64: return 8;
    default: return 0;
    }
}

template <int DT, int OP>
__device__ __forceinline__ void apply(unsigned char *d, const unsigned char *s)
{
    typedef typename elem<DT>::T T;
    T b = load_elem<T>(s);
    if (OP == OP_ADD)
        b = elem<DT>::add(load_elem<T>(d), b);
    store_elem<T>(d, b);
}

/* One warp moves @n contiguous elements. */
template <int DT, int OP>
__device__ __forceinline__ void span(unsigned char *d, const unsigned char *s, uint64_t n,
                                     int lane)
{
    typedef typename elem<DT>::T T;
    constexpr uint64_t S = sizeof(T);
    uint64_t done = 0;
    if ((((uintptr_t)d | (uintptr_t)s) & 15u) == 0) {
        const uint64_t nv = (n * S) >> 4;
        uint4 *dv = reinterpret_cast<uint4 *>(d);
        const uint4 *sv = reinterpret_cast<const uint4 *>(s);
        for (uint64_t i = (uint64_t)lane; i < nv; i += WARP) {
            uint4 b = sv[i];
            if (OP == OP_ADD)
                b = add16<DT>(dv[i], b);
            dv[i] = b;
        }
        done = (nv << 4) / S;
    }
    for (uint64_t i = done + (uint64_t)lane; i < n; i += WARP)
        apply<DT, OP>(d + i * S, s + i * S);
}

/* One warp handles chunk @c (relative to the transfer) of transfer @d; the chunk's rows
 * and bytes come from replay_desc.h, the decoding the host planner's tests also run. */
template <int DT, int OP>
__device__ void run_chunk(const theus_replay_desc &d, const theus_replay_dim *dims, uint64_t c,
                          int lane)
{
    typedef typename elem<DT>::T T;
    constexpr uint64_t S = sizeof(T);
    unsigned char *dst = reinterpret_cast<unsigned char *>(d.dst);
    const unsigned char *src = reinterpret_cast<const unsigned char *>(d.src);
    const theus_replay_span sp = theus_replay_chunk(&d, c, S);
    int64_t doff, soff;
    if (d.pieces) {
        theus_replay_row_offsets(&d, dims, sp.row0, &doff, &soff);
        span<DT, OP>(dst + doff + sp.col * S, src + soff + sp.col * S, sp.n, lane);
        return;
    }
    if (d.run >= (uint64_t)WARP) {
        for (uint64_t r = 0; r < sp.nrows; r++) {
            theus_replay_row_offsets(&d, dims, sp.row0 + r, &doff, &soff);
            span<DT, OP>(dst + doff, src + soff, d.run, lane);
        }
        return;
    }
    /* Short rows: the lanes spread over rows and columns together. nrows * run is at most
     * a chunk's elements, so 32-bit arithmetic is enough. */
    const uint32_t run = (uint32_t)d.run;
    const uint32_t total = (uint32_t)sp.nrows * run;
    for (uint32_t t = (uint32_t)lane; t < total; t += WARP) {
        const uint32_t r = t / run;
        const uint32_t col = t - r * run;
        theus_replay_row_offsets(&d, dims, sp.row0 + r, &doff, &soff);
        apply<DT, OP>(dst + doff + (uint64_t)col * S, src + soff + (uint64_t)col * S);
    }
}

__device__ void run_desc_chunk(const theus_replay_desc &d, const theus_replay_dim *dims,
                               uint64_t c, int lane)
{
    if (d.op == OP_ASSIGN) {
        /* A copy only cares about the element width. */
        switch (dtype_bytes(d.dtype)) {
        case 1: run_chunk<THEUS_DTYPE_U8, OP_ASSIGN>(d, dims, c, lane); break;
        case 2: run_chunk<THEUS_DTYPE_U16, OP_ASSIGN>(d, dims, c, lane); break;
        case 4: run_chunk<THEUS_DTYPE_U32, OP_ASSIGN>(d, dims, c, lane); break;
        case 8: run_chunk<THEUS_DTYPE_U64, OP_ASSIGN>(d, dims, c, lane); break;
        default: break;
        }
        return;
    }
    switch (d.dtype) {
    case THEUS_DTYPE_BOOL: run_chunk<THEUS_DTYPE_BOOL, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_U8: run_chunk<THEUS_DTYPE_U8, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_I8: run_chunk<THEUS_DTYPE_I8, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_U16: run_chunk<THEUS_DTYPE_U16, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_I16: run_chunk<THEUS_DTYPE_I16, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_U32: run_chunk<THEUS_DTYPE_U32, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_I32: run_chunk<THEUS_DTYPE_I32, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_U64: run_chunk<THEUS_DTYPE_U64, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_I64: run_chunk<THEUS_DTYPE_I64, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_F16: run_chunk<THEUS_DTYPE_F16, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_BF16: run_chunk<THEUS_DTYPE_BF16, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_F32: run_chunk<THEUS_DTYPE_F32, OP_ADD>(d, dims, c, lane); break;
    case THEUS_DTYPE_F64: run_chunk<THEUS_DTYPE_F64, OP_ADD>(d, dims, c, lane); break;
    default: break;
    }
}

/* Warp-per-chunk over each wave; a wave waits for the one before at a grid barrier, which
 * is only reached when the launch is cooperative (nwaves > 1 is launched that way). */
static __global__ void __launch_bounds__(THEUS_REPLAY_BLOCK)
    replay_kernel(const theus_replay_wave *waves, uint32_t nwaves,
                  const theus_replay_desc *descs, const theus_replay_dim *dims)
{
    const int lane = (int)(threadIdx.x & (WARP - 1));
    const uint64_t warp = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    const uint64_t nwarps = ((uint64_t)gridDim.x * blockDim.x) / WARP;
    for (uint32_t w = 0; w < nwaves; w++) {
        const theus_replay_wave wv = waves[w];
        for (uint64_t c = wv.chunk_begin + warp; c < wv.chunk_end; c += nwarps) {
            const uint64_t lo = theus_replay_locate(&wv, descs, c);
            const theus_replay_desc d = descs[lo];
            run_desc_chunk(d, dims, c - d.first_chunk, lane);
        }
        if (w + 1 < nwaves)
            cg::this_grid().sync();
    }
}

/* ---- the compact form (replay_desc.h): a warp per 16-byte segment ---------------------- */

template <int DT, int OP>
__device__ __forceinline__ void seg_span(uint64_t d, uint64_t s, uint32_t bytes, int lane)
{
    typedef typename elem<DT>::T T;
    span<DT, OP>(reinterpret_cast<unsigned char *>(d), reinterpret_cast<const unsigned char *>(s),
                 bytes / sizeof(T), lane);
}

__device__ void run_seg(const theus_replay_seg &sg, const theus_replay_group *groups, int lane)
{
    const theus_replay_group g = groups[theus_replay_seg_group(&sg)];
    uint64_t d, s;
    theus_replay_seg_addrs(&sg, &g, &d, &s);
    const uint32_t n = theus_replay_seg_bytes(&sg);
    if (g.op == OP_ASSIGN) {
        switch (dtype_bytes(g.dtype)) {
        case 1: seg_span<THEUS_DTYPE_U8, OP_ASSIGN>(d, s, n, lane); break;
        case 2: seg_span<THEUS_DTYPE_U16, OP_ASSIGN>(d, s, n, lane); break;
        case 4: seg_span<THEUS_DTYPE_U32, OP_ASSIGN>(d, s, n, lane); break;
        case 8: seg_span<THEUS_DTYPE_U64, OP_ASSIGN>(d, s, n, lane); break;
        default: break;
        }
        return;
    }
    switch (g.dtype) {
    case THEUS_DTYPE_BOOL: seg_span<THEUS_DTYPE_BOOL, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_U8: seg_span<THEUS_DTYPE_U8, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_I8: seg_span<THEUS_DTYPE_I8, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_U16: seg_span<THEUS_DTYPE_U16, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_I16: seg_span<THEUS_DTYPE_I16, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_U32: seg_span<THEUS_DTYPE_U32, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_I32: seg_span<THEUS_DTYPE_I32, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_U64: seg_span<THEUS_DTYPE_U64, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_I64: seg_span<THEUS_DTYPE_I64, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_F16: seg_span<THEUS_DTYPE_F16, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_BF16: seg_span<THEUS_DTYPE_BF16, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_F32: seg_span<THEUS_DTYPE_F32, OP_ADD>(d, s, n, lane); break;
    case THEUS_DTYPE_F64: seg_span<THEUS_DTYPE_F64, OP_ADD>(d, s, n, lane); break;
    default: break;
    }
}

/* Warp-per-segment over each wave (segment c is chunk c); waves as in replay_kernel. */
static __global__ void __launch_bounds__(THEUS_REPLAY_BLOCK)
    replay_compact_kernel(const theus_replay_wave *waves, uint32_t nwaves,
                          const theus_replay_seg *segs, const theus_replay_group *groups)
{
    const int lane = (int)(threadIdx.x & (WARP - 1));
    const uint64_t warp = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    const uint64_t nwarps = ((uint64_t)gridDim.x * blockDim.x) / WARP;
    for (uint32_t w = 0; w < nwaves; w++) {
        const theus_replay_wave wv = waves[w];
        for (uint64_t c = wv.chunk_begin + warp; c < wv.chunk_end; c += nwarps)
            run_seg(segs[c], groups, lane);
        if (w + 1 < nwaves)
            cg::this_grid().sync();
    }
}

/* A small single-wave batch passed by value: one block, a warp per segment. */
static __global__ void __launch_bounds__(THEUS_REPLAY_INLINE_SEGS * WARP)
    replay_inline_kernel(const theus_replay_inline b)
{
    const uint32_t w = threadIdx.x / WARP;
    if (w < b.nsegs)
        run_seg(b.segs[w], b.groups, (int)(threadIdx.x & (WARP - 1)));
}

} // namespace

extern "C" cudaError_t theus_replay_probe(int *max_resident_blocks)
{
    cudaFuncAttributes attr;
    cudaError_t e = cudaFuncGetAttributes(&attr, replay_kernel);
    if (e != cudaSuccess)
        return e;
    int dev = 0, sms = 0, per_sm = 0;
    if ((e = cudaGetDevice(&dev)) != cudaSuccess)
        return e;
    if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess)
        return e;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, replay_kernel, THEUS_REPLAY_BLOCK,
                                                      0);
    if (e != cudaSuccess)
        return e;
    /* The cooperative grid must fit for both forms of the kernel. */
    int per_sm_compact = 0;
    if ((e = cudaFuncGetAttributes(&attr, replay_compact_kernel)) != cudaSuccess)
        return e;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_compact, replay_compact_kernel,
                                                      THEUS_REPLAY_BLOCK, 0);
    if (e != cudaSuccess)
        return e;
    if (per_sm_compact < per_sm)
        per_sm = per_sm_compact;
    *max_resident_blocks = per_sm * sms > 0 ? per_sm * sms : 1;
    return cudaSuccess;
}

extern "C" cudaError_t theus_replay_launch(const theus_replay_wave *waves, uint32_t nwaves,
                                           const theus_replay_desc *descs,
                                           const theus_replay_dim *dims,
                                           uint64_t max_wave_chunks, int max_resident_blocks,
                                           int cooperative, cudaStream_t stream)
{
    if (nwaves == 0 || max_wave_chunks == 0)
        return cudaSuccess;
    constexpr uint64_t warps_per_block = THEUS_REPLAY_BLOCK / WARP;
    uint64_t want = (max_wave_chunks + warps_per_block - 1) / warps_per_block;
    const uint64_t cap = max_resident_blocks > 0 ? (uint64_t)max_resident_blocks : 1;
    const unsigned grid = (unsigned)(want < cap ? want : cap);
    if (nwaves == 1) {
        replay_kernel<<<grid, THEUS_REPLAY_BLOCK, 0, stream>>>(waves, 1, descs, dims);
        return cudaGetLastError();
    }
    if (cooperative) {
        void *args[] = {(void *)&waves, (void *)&nwaves, (void *)&descs, (void *)&dims};
        cudaError_t e = cudaLaunchCooperativeKernel((const void *)replay_kernel, dim3(grid),
                                                    dim3(THEUS_REPLAY_BLOCK), args, 0, stream);
        cudaGetLastError();
        return e;
    }
    /* No cooperative launch on this device: stream order separates the waves. */
    for (uint32_t w = 0; w < nwaves; w++) {
        replay_kernel<<<grid, THEUS_REPLAY_BLOCK, 0, stream>>>(waves + w, 1, descs, dims);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

extern "C" cudaError_t theus_replay_compact_launch(const theus_replay_wave *waves, uint32_t nwaves,
                                                   const theus_replay_seg *segs,
                                                   const theus_replay_group *groups,
                                                   uint64_t max_wave_segs,
                                                   int max_resident_blocks, int cooperative,
                                                   cudaStream_t stream)
{
    if (nwaves == 0 || max_wave_segs == 0)
        return cudaSuccess;
    constexpr uint64_t warps_per_block = THEUS_REPLAY_BLOCK / WARP;
    uint64_t want = (max_wave_segs + warps_per_block - 1) / warps_per_block;
    const uint64_t cap = max_resident_blocks > 0 ? (uint64_t)max_resident_blocks : 1;
    const unsigned grid = (unsigned)(want < cap ? want : cap);
    if (nwaves == 1) {
        replay_compact_kernel<<<grid, THEUS_REPLAY_BLOCK, 0, stream>>>(waves, 1, segs, groups);
        return cudaGetLastError();
    }
    if (cooperative) {
        void *args[] = {(void *)&waves, (void *)&nwaves, (void *)&segs, (void *)&groups};
        cudaError_t e = cudaLaunchCooperativeKernel((const void *)replay_compact_kernel,
                                                    dim3(grid), dim3(THEUS_REPLAY_BLOCK), args,
                                                    0, stream);
        cudaGetLastError();
        return e;
    }
    for (uint32_t w = 0; w < nwaves; w++) {
        replay_compact_kernel<<<grid, THEUS_REPLAY_BLOCK, 0, stream>>>(waves + w, 1, segs, groups);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

extern "C" cudaError_t theus_replay_inline_launch(const theus_replay_inline *b, cudaStream_t stream)
{
    if (b->nsegs == 0)
        return cudaSuccess;
    replay_inline_kernel<<<1, b->nsegs * WARP, 0, stream>>>(*b);
    return cudaGetLastError();
}
