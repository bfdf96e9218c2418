/* The described-batch kernel family: a batch whose segments (destination element, length,
 * payload element) and payload live in device memory, summarised and replayed on the GPU
 * without any per-segment host work.
 *
 * Build: compiled by CMake into libtheus when the CUDA backend is on
 *   cmake -S . -B build -DTHEUS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build build
 * or alone, as a syntax and warning check:
 *   nvcc -std=c++17 -arch=sm_90 -Xcompiler -Wall,-Wextra -Iinclude -c kernels/batch.cu
 *
 * Versions:
 *   v1 (this file) — summary: a thread per segment (grid-stride), validity and bounds by
 *      64-bit atomics, touched blocks by atomicOr on the bitmap, whose old value tells
 *      whether another segment touched the block first. Replay: segments that share no
 *      block are disjoint, so a warp per segment runs them in parallel; otherwise one block
 *      of threads runs them one after the other (a barrier between segments), which keeps
 *      array order on every element. Validated on the CPU through batch_desc.h (the
 *      decoding), not yet run on a GPU.
 */
#include "batch.cuh"
#include "common.cuh"

using namespace theus_kernels;

namespace {

constexpr int BATCH_BLOCK = 256;

__global__ void summary_kernel(const theus_batch_segment *__restrict__ segs, uint64_t n,
                               uint64_t nelems, uint64_t pelems, uint32_t esize, uint32_t shift,
                               unsigned long long *__restrict__ bits, theus_batch_result *res)
{
    unsigned long long *r = reinterpret_cast<unsigned long long *>(res);
    const uint64_t step = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += step) {
        const theus_batch_segment s = segs[k];
        if (!theus_batch_seg_ok(&s, nelems, pelems)) {
            atomicMin(&r[0], (unsigned long long)k);
            continue;
        }
        if (s.length == 0)
            continue;
        atomicMin(&r[1], (unsigned long long)s.dst);
        atomicMax(&r[2], (unsigned long long)(s.dst + s.length));
        atomicAdd(&r[3], (unsigned long long)s.length);
        atomicAdd(&r[4], 1ull);
        uint64_t b0, b1;
        theus_batch_seg_blocks(&s, esize, shift, &b0, &b1);
        int seen = 0;
        for (uint64_t w = b0 >> 6; w <= b1 >> 6; w++) {
            const unsigned long long m = theus_batch_word_mask(w, b0, b1);
            seen |= (atomicOr(&bits[w], m) & m) != 0;
        }
        if (seen)
            atomicOr(&r[5], 1ull);
    }
}

template <int DT, int OP>
__device__ __forceinline__ void apply(unsigned char *d, const unsigned char *s)
{
    typedef typename elem<DT>::T T;
    T b = load_elem<T>(s);
    if (OP == 1)
        b = elem<DT>::add(load_elem<T>(d), b);
    store_elem<T>(d, b);
}

/* Disjoint segments: a warp per segment, lanes over its elements. */
template <int DT, int OP>
__global__ void apply_parallel(unsigned char *field, const unsigned char *payload,
                               const theus_batch_segment *__restrict__ segs, uint64_t n)
{
    typedef typename elem<DT>::T T;
    const uint64_t warp = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    const uint64_t nwarps = ((uint64_t)gridDim.x * blockDim.x) / WARP;
    const unsigned lane = threadIdx.x % WARP;
    for (uint64_t k = warp; k < n; k += nwarps) {
        const theus_batch_segment s = segs[k];
        unsigned char *d = field + (uint64_t)s.dst * sizeof(T);
        const unsigned char *p = payload + (uint64_t)s.src * sizeof(T);
        for (uint64_t e = lane; e < (uint64_t)s.length; e += WARP)
            apply<DT, OP>(d + e * sizeof(T), p + e * sizeof(T));
    }
}

/* Segments that may overlap: one block, segment after segment. */
template <int DT, int OP>
__global__ void apply_ordered(unsigned char *field, const unsigned char *payload,
                              const theus_batch_segment *__restrict__ segs, uint64_t n)
{
    typedef typename elem<DT>::T T;
    for (uint64_t k = 0; k < n; k++) {
        const theus_batch_segment s = segs[k];
        unsigned char *d = field + (uint64_t)s.dst * sizeof(T);
        const unsigned char *p = payload + (uint64_t)s.src * sizeof(T);
        for (uint64_t e = threadIdx.x; e < (uint64_t)s.length; e += blockDim.x)
            apply<DT, OP>(d + e * sizeof(T), p + e * sizeof(T));
        __syncthreads();
    }
}

template <int DT, int OP>
cudaError_t launch(void *field, const void *payload, const theus_batch_segment *segs, uint64_t n,
                   int ordered, int max_blocks, cudaStream_t stream)
{
    unsigned char *f = static_cast<unsigned char *>(field);
    const unsigned char *p = static_cast<const unsigned char *>(payload);
    if (ordered) {
        apply_ordered<DT, OP><<<1, BATCH_BLOCK, 0, stream>>>(f, p, segs, n);
    } else {
        const uint64_t per_block = BATCH_BLOCK / WARP;
        uint64_t want = (n + per_block - 1) / per_block;
        const uint64_t cap = max_blocks > 0 ? (uint64_t)max_blocks : 1;
        const unsigned grid = (unsigned)(want < cap ? (want ? want : 1) : cap);
        apply_parallel<DT, OP><<<grid, BATCH_BLOCK, 0, stream>>>(f, p, segs, n);
    }
    return cudaGetLastError();
}

template <int OP>
cudaError_t launch_op(int dtype, void *field, const void *payload, const theus_batch_segment *segs,
                      uint64_t n, int ordered, int max_blocks, cudaStream_t stream)
{
    switch (dtype) {
    case THEUS_DTYPE_BOOL: return launch<THEUS_DTYPE_BOOL, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_U8: return launch<THEUS_DTYPE_U8, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_I8: return launch<THEUS_DTYPE_I8, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_U16: return launch<THEUS_DTYPE_U16, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_I16: return launch<THEUS_DTYPE_I16, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_U32: return launch<THEUS_DTYPE_U32, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_I32: return launch<THEUS_DTYPE_I32, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_U64: return launch<THEUS_DTYPE_U64, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_I64: return launch<THEUS_DTYPE_I64, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_F16: return launch<THEUS_DTYPE_F16, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_BF16: return launch<THEUS_DTYPE_BF16, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_F32: return launch<THEUS_DTYPE_F32, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    case THEUS_DTYPE_F64: return launch<THEUS_DTYPE_F64, OP>(field, payload, segs, n, ordered, max_blocks, stream);
    default: return cudaErrorInvalidValue;
    }
}

} // namespace

extern "C" cudaError_t theus_batch_summary_launch(const theus_batch_segment *segs, uint64_t n,
                                                  uint64_t nelems, uint64_t pelems,
                                                  uint32_t esize, uint32_t shift,
                                                  unsigned long long *bits,
                                                  theus_batch_result *res, int max_blocks,
                                                  cudaStream_t stream)
{
    if (n == 0)
        return cudaSuccess;
    uint64_t want = (n + BATCH_BLOCK - 1) / BATCH_BLOCK;
    const uint64_t cap = max_blocks > 0 ? (uint64_t)max_blocks : 1;
    const unsigned grid = (unsigned)(want < cap ? want : cap);
    summary_kernel<<<grid, BATCH_BLOCK, 0, stream>>>(segs, n, nelems, pelems, esize, shift, bits,
                                                     res);
    return cudaGetLastError();
}

extern "C" cudaError_t theus_batch_apply_launch(int dtype, int add, void *field,
                                                const void *payload,
                                                const theus_batch_segment *segs, uint64_t n,
                                                int ordered, int max_blocks, cudaStream_t stream)
{
    if (n == 0)
        return cudaSuccess;
    return add ? launch_op<1>(dtype, field, payload, segs, n, ordered, max_blocks, stream)
               : launch_op<0>(dtype, field, payload, segs, n, ordered, max_blocks, stream);
}
