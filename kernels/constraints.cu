/* The constraint-check kernel family: the schema gatekeeper's finite/min/max test over a
 * staged device payload, with the CPU's semantics (src/dtype.c dtype_check): floats are
 * compared as doubles with negated tests so that NaN fails every constraint; integers are
 * compared exactly against a range the host derived from the bounds.
 *
 * Build: compiled by CMake into libtheus when the CUDA backend is on (see replay.cu), or
 *   nvcc -std=c++17 -arch=sm_90 -Xcompiler -Wall,-Wextra -Iinclude -c kernels/constraints.cu
 *
 * Versions:
 *   v1 (this file) — grid-stride loop, one element per thread and step; a violation lowers
 *      the answer with atomicMin, and threads stop once they are past the lowest violation
 *      found so far (indices only grow along a thread's loop, so nothing smaller is lost).
 *   Validated against dtype_check by tests/test_cuda_parity.c. Not yet timed. */
#include "constraints.cuh"
#include "common.cuh"

using namespace theus_kernels;

namespace {

constexpr int CHECK_BLOCK = 256;

template <int DT> __device__ __forceinline__ bool violates(const unsigned char *b, uint64_t i,
                                                           const theus_check_params &p)
{
    typedef typename elem<DT>::T T;
    const T raw = reinterpret_cast<const T *>(b)[i];
    if (DT == THEUS_DTYPE_F16 || DT == THEUS_DTYPE_BF16 || DT == THEUS_DTYPE_F32 ||
        DT == THEUS_DTYPE_F64) {
        double v;
        if (DT == THEUS_DTYPE_F16)
            v = (double)f16_to_f32((uint16_t)raw);
        else if (DT == THEUS_DTYPE_BF16)
            v = (double)bf16_to_f32((uint16_t)raw);
        else if (DT == THEUS_DTYPE_F32)
            v = (double)__uint_as_float((uint32_t)raw);
        else
            v = __longlong_as_double((long long)raw);
        return (p.finite && !isfinite(v)) || (p.has_min && !(v >= p.min)) ||
               (p.has_max && !(v <= p.max));
    }
    if (DT == THEUS_DTYPE_I8 || DT == THEUS_DTYPE_I16 || DT == THEUS_DTYPE_I32 ||
        DT == THEUS_DTYPE_I64) {
        int64_t v;
        if (DT == THEUS_DTYPE_I8)
            v = (int8_t)raw;
        else if (DT == THEUS_DTYPE_I16)
            v = (int16_t)raw;
        else if (DT == THEUS_DTYPE_I32)
            v = (int32_t)raw;
        else
            v = (int64_t)raw;
        return v < p.lo || v > p.hi;
    }
    const uint64_t v = DT == THEUS_DTYPE_BOOL ? (uint64_t)(raw != 0) : (uint64_t)raw;
    return v < p.ulo || v > p.uhi;
}

template <int DT>
static __global__ void __launch_bounds__(CHECK_BLOCK)
    check_kernel(const unsigned char *buf, uint64_t n, theus_check_params p,
                 unsigned long long *first)
{
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        if (i > *(volatile unsigned long long *)first)
            return;
        if (violates<DT>(buf, i, p)) {
            atomicMin(first, (unsigned long long)i);
            return;
        }
    }
}

template <int DT>
cudaError_t launch(const void *buf, uint64_t n, const theus_check_params *p,
                   unsigned long long *d_first, int max_blocks, cudaStream_t stream)
{
    const uint64_t want = (n + CHECK_BLOCK - 1) / CHECK_BLOCK;
    const uint64_t cap = max_blocks > 0 ? (uint64_t)max_blocks : 1;
    const unsigned grid = (unsigned)(want < cap ? want : cap);
    check_kernel<DT><<<grid, CHECK_BLOCK, 0, stream>>>((const unsigned char *)buf, n, *p,
                                                        d_first);
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t theus_check_probe(void)
{
    cudaFuncAttributes attr;
    cudaError_t e = cudaFuncGetAttributes(&attr, check_kernel<THEUS_DTYPE_F32>);
    if (e != cudaSuccess)
        cudaGetLastError();
    return e;
}

extern "C" cudaError_t theus_check_launch(int dtype, const void *buf, uint64_t n,
                                          const theus_check_params *p,
                                          unsigned long long *d_first, int max_blocks,
                                          cudaStream_t stream)
{
    cudaError_t e = cudaMemsetAsync(d_first, 0xff, sizeof *d_first, stream);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return e;
    }
    if (n == 0)
        return cudaSuccess;
    switch (dtype) {
    case THEUS_DTYPE_BOOL: return launch<THEUS_DTYPE_BOOL>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_U8: return launch<THEUS_DTYPE_U8>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_I8: return launch<THEUS_DTYPE_I8>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_U16: return launch<THEUS_DTYPE_U16>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_I16: return launch<THEUS_DTYPE_I16>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_U32: return launch<THEUS_DTYPE_U32>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_I32: return launch<THEUS_DTYPE_I32>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_U64: return launch<THEUS_DTYPE_U64>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_I64: return launch<THEUS_DTYPE_I64>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_F16: return launch<THEUS_DTYPE_F16>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_BF16: return launch<THEUS_DTYPE_BF16>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_F32: return launch<THEUS_DTYPE_F32>(buf, n, p, d_first, max_blocks, stream);
    case THEUS_DTYPE_F64: return launch<THEUS_DTYPE_F64>(buf, n, p, d_first, max_blocks, stream);
    default: return cudaErrorInvalidValue;
    }
}
