/* Device helpers shared by the kernel families (device code only, C++): element storage
 * types, the f16/bf16 <-> f32 conversions ported bit for bit from src/dtype.c, and the
 * element ADD of every dtype with the CPU's semantics. */
#ifndef THEUS_KERNELS_COMMON_CUH
#define THEUS_KERNELS_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "theus/theus.h"

namespace theus_kernels {

constexpr int WARP = 32;

/* ---- f16 / bf16 ----------------------------------------------------------------------
 * The same bit manipulation as src/dtype.c rather than __half2float/__float2half_rn: those
 * agree on every finite value, but NaN payloads and the code path are then exactly the
 * CPU's, which is what the parity suite compares. */

__device__ __forceinline__ float f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu)
        return __uint_as_float(sign | 0x7f800000u | (mant << 13) | (mant ? 0x00400000u : 0u));
    if (exp == 0) {
        if (mant == 0)
            return __uint_as_float(sign);
        /* Subnormal: shift the leading one (bit p) up to bit 10, as the CPU's loop does. */
        const int p = 31 - __clz((int)mant);
        const int s = 10 - p;
        mant <<= s;
        return __uint_as_float(sign | ((uint32_t)(113 - s) << 23) | ((mant & 0x3ffu) << 13));
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

__device__ __forceinline__ uint16_t f32_to_f16(float f)
{
    const uint32_t u = __float_as_uint(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) {
        uint32_t bits = (a - 0x38000000u) >> 13;
        const uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (bits & 1u)))
            bits++;
        return (uint16_t)(sign | bits);
    }
    if (a <= 0x33000000u)
        return sign;
    const uint32_t e = a >> 23;
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}

__device__ __forceinline__ float bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u |= 0x00400000u;
    return __uint_as_float(u);
}

__device__ __forceinline__ uint16_t f32_to_bf16(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* ---- elements --------------------------------------------------------------------------
 * elem<DT>::T is the storage type (an unsigned integer of the element's width: integers add
 * in it and wrap exactly like two's complement), elem<DT>::add the ADD of a delta. Float
 * adds use the _rn intrinsics so that no -fmad or fast-math setting can change a bit. */

template <int DT> struct elem;

template <> struct elem<THEUS_DTYPE_BOOL> {
    typedef uint8_t T;
    static __device__ __forceinline__ T add(T a, T b) { return (T)((a | b) != 0); }
};

#define THEUS_INT_ELEM(DT, TYPE)                                                          \
    template <> struct elem<DT> {                                                         \
        typedef TYPE T;                                                                   \
        static __device__ __forceinline__ T add(T a, T b) { return (T)(a + b); }          \
    };
THEUS_INT_ELEM(THEUS_DTYPE_U8, uint8_t)
THEUS_INT_ELEM(THEUS_DTYPE_I8, uint8_t)
THEUS_INT_ELEM(THEUS_DTYPE_U16, uint16_t)
THEUS_INT_ELEM(THEUS_DTYPE_I16, uint16_t)
THEUS_INT_ELEM(THEUS_DTYPE_U32, uint32_t)
THEUS_INT_ELEM(THEUS_DTYPE_I32, uint32_t)
THEUS_INT_ELEM(THEUS_DTYPE_U64, unsigned long long)
THEUS_INT_ELEM(THEUS_DTYPE_I64, unsigned long long)
#undef THEUS_INT_ELEM

template <> struct elem<THEUS_DTYPE_F16> {
    typedef uint16_t T;
    static __device__ __forceinline__ T add(T a, T b)
    {
        return f32_to_f16(__fadd_rn(f16_to_f32(a), f16_to_f32(b)));
    }
};

template <> struct elem<THEUS_DTYPE_BF16> {
    typedef uint16_t T;
    static __device__ __forceinline__ T add(T a, T b)
    {
        return f32_to_bf16(__fadd_rn(bf16_to_f32(a), bf16_to_f32(b)));
    }
};

template <> struct elem<THEUS_DTYPE_F32> {
    typedef uint32_t T;
    static __device__ __forceinline__ T add(T a, T b)
    {
        return __float_as_uint(__fadd_rn(__uint_as_float(a), __uint_as_float(b)));
    }
};

template <> struct elem<THEUS_DTYPE_F64> {
    typedef unsigned long long T;
    static __device__ __forceinline__ T add(T a, T b)
    {
        return (T)__double_as_longlong(
            __dadd_rn(__longlong_as_double((long long)a), __longlong_as_double((long long)b)));
    }
};

/* Loads and stores of one element at an address that may not be aligned to its size (a
 * caller's device buffer can start anywhere); little-endian like every CUDA device. */
template <typename T> __device__ __forceinline__ T load_elem(const unsigned char *p)
{
    if (((uintptr_t)p & (sizeof(T) - 1)) == 0)
        return *reinterpret_cast<const T *>(p);
    T v = 0;
#pragma unroll
    for (unsigned i = 0; i < sizeof(T); i++)
        v = (T)(v | ((T)p[i] << (8 * i)));
    return v;
}

template <typename T> __device__ __forceinline__ void store_elem(unsigned char *p, T v)
{
    if (((uintptr_t)p & (sizeof(T) - 1)) == 0) {
        *reinterpret_cast<T *>(p) = v;
        return;
    }
#pragma unroll
    for (unsigned i = 0; i < sizeof(T); i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* ADD of the 16 / sizeof(T) elements packed in one 16-byte vector. */
template <int DT> __device__ __forceinline__ uint4 add16(uint4 a, uint4 b)
{
    typedef typename elem<DT>::T T;
    constexpr int N = 16 / (int)sizeof(T);
    union {
        uint4 v;
        T e[N];
    } x, y;
    x.v = a;
    y.v = b;
#pragma unroll
    for (int k = 0; k < N; k++)
        x.e[k] = elem<DT>::add(x.e[k], y.e[k]);
    return x.v;
}

} // namespace theus_kernels

#endif /* THEUS_KERNELS_COMMON_CUH */
