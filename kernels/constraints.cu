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
 *   Validated against dtype_check by tests/test_cuda_parity.c. Not yet timed.
 *
 * The audit family (theus_audit_launch) evaluates an audit's rules over the values a commit
 * would write to a device field (src/process/audit.c, cuda/check.c cuda_audit):
 *   v1 (this file) — init kernel (one thread per rule), then a grid-stride pass where each
 *      thread keeps its own count and first violation per rule and adds them with one
 *      atomicAdd / atomicMin per rule at the end, then a one-thread-per-rule kernel that
 *      reads the first bad element's value. Compiled, not yet run on a GPU. */
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

/* ---- the audit ------------------------------------------------------------------------- */

constexpr int AUDIT_BLOCK = 256;

/* Element @i as a double, as src/dtype.c dtype_get reads it. */
template <int DT> __device__ __forceinline__ double as_double(const unsigned char *b, uint64_t i)
{
    typedef typename elem<DT>::T T;
    const T raw = reinterpret_cast<const T *>(b)[i];
    if (DT == THEUS_DTYPE_F16)
        return (double)f16_to_f32((uint16_t)raw);
    if (DT == THEUS_DTYPE_BF16)
        return (double)bf16_to_f32((uint16_t)raw);
    if (DT == THEUS_DTYPE_F32)
        return (double)__uint_as_float((uint32_t)raw);
    if (DT == THEUS_DTYPE_F64)
        return __longlong_as_double((long long)raw);
    if (DT == THEUS_DTYPE_I8)
        return (double)(int8_t)raw;
    if (DT == THEUS_DTYPE_I16)
        return (double)(int16_t)raw;
    if (DT == THEUS_DTYPE_I32)
        return (double)(int32_t)raw;
    if (DT == THEUS_DTYPE_I64)
        return (double)(int64_t)raw;
    if (DT == THEUS_DTYPE_BOOL)
        return raw != 0 ? 1.0 : 0.0;
    return (double)(uint64_t)raw;
}

__device__ __forceinline__ bool audit_breaks(int rule, double bound, double x, double old)
{
    switch (rule) {
    case 0: return !isfinite(x);
    case 1: return !(x >= bound);
    case 2: return !(x <= bound);
    case 3: return !(fabs(x) <= bound);
    case 4: return !(fabs(x - old) <= bound);
    }
    return false;
}

static __global__ void audit_init_kernel(theus_audit_summary *out, int nrules)
{
    const int r = (int)threadIdx.x;
    if (r < nrules) {
        out[r].count = 0ull;
        out[r].first = ~0ull;
        out[r].value = 0.0;
    }
}

template <int DT>
static __global__ void __launch_bounds__(AUDIT_BLOCK)
    audit_kernel(const unsigned char *cur, const unsigned char *old, uint64_t n,
                 theus_audit_params p, theus_audit_summary *out)
{
    unsigned long long count[THEUS_AUDIT_MAX_RULES], first[THEUS_AUDIT_MAX_RULES];
    for (int r = 0; r < THEUS_AUDIT_MAX_RULES; r++) {
        count[r] = 0ull;
        first[r] = ~0ull;
    }
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double x = as_double<DT>(cur, i);
        const double o = old ? as_double<DT>(old, i) : 0.0;
        for (int r = 0; r < p.nrules && r < THEUS_AUDIT_MAX_RULES; r++)
            if (audit_breaks(p.rule[r], p.value[r], x, o)) {
                if (count[r]++ == 0ull)
                    first[r] = (unsigned long long)i;   /* indices grow along the loop */
            }
    }
    for (int r = 0; r < p.nrules && r < THEUS_AUDIT_MAX_RULES; r++)
        if (count[r]) {
            atomicAdd(&out[r].count, count[r]);
            atomicMin(&out[r].first, first[r]);
        }
}

template <int DT>
static __global__ void audit_value_kernel(const unsigned char *cur, theus_audit_summary *out,
                                          int nrules)
{
    const int r = (int)threadIdx.x;
    if (r < nrules && out[r].count)
        out[r].value = as_double<DT>(cur, (uint64_t)out[r].first);
}

template <int DT>
cudaError_t audit_launch(const void *cur, const void *old, uint64_t n,
                         const theus_audit_params *p, theus_audit_summary *d_out, int max_blocks,
                         cudaStream_t stream)
{
    const uint64_t want = (n + AUDIT_BLOCK - 1) / AUDIT_BLOCK;
    const uint64_t cap = max_blocks > 0 ? (uint64_t)max_blocks : 1;
    const unsigned grid = (unsigned)(want < cap ? want : cap);
    const unsigned char *c = (const unsigned char *)cur, *o = (const unsigned char *)old;
    if (n > 0) {
        audit_kernel<DT><<<grid, AUDIT_BLOCK, 0, stream>>>(c, o, n, *p, d_out);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
        audit_value_kernel<DT><<<1, THEUS_AUDIT_MAX_RULES, 0, stream>>>(c, d_out, p->nrules);
    }
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t theus_audit_launch(int dtype, const void *cur, const void *old, uint64_t n,
                                          const theus_audit_params *p,
                                          theus_audit_summary *d_out, int max_blocks,
                                          cudaStream_t stream)
{
    if (!p || p->nrules < 0 || p->nrules > THEUS_AUDIT_MAX_RULES)
        return cudaErrorInvalidValue;
    audit_init_kernel<<<1, THEUS_AUDIT_MAX_RULES, 0, stream>>>(d_out, p->nrules);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return e;
    switch (dtype) {
    case THEUS_DTYPE_BOOL: return audit_launch<THEUS_DTYPE_BOOL>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_U8: return audit_launch<THEUS_DTYPE_U8>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_I8: return audit_launch<THEUS_DTYPE_I8>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_U16: return audit_launch<THEUS_DTYPE_U16>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_I16: return audit_launch<THEUS_DTYPE_I16>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_U32: return audit_launch<THEUS_DTYPE_U32>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_I32: return audit_launch<THEUS_DTYPE_I32>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_U64: return audit_launch<THEUS_DTYPE_U64>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_I64: return audit_launch<THEUS_DTYPE_I64>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_F16: return audit_launch<THEUS_DTYPE_F16>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_BF16: return audit_launch<THEUS_DTYPE_BF16>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_F32: return audit_launch<THEUS_DTYPE_F32>(cur, old, n, p, d_out, max_blocks, stream);
    case THEUS_DTYPE_F64: return audit_launch<THEUS_DTYPE_F64>(cur, old, n, p, d_out, max_blocks, stream);
    default: return cudaErrorInvalidValue;
    }
}

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
