/* Element-level operations on every dtype: names and sizes, exact f16/bf16 <-> f32
 * conversions, the ADD of a delta replay on the CPU, and the gatekeeper's constraint checks. */
#include "dtype.h"
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* From this many elements on, f32/f64 adds go to cblas_?axpy. OpenBLAS picks AVX2/AVX-512
 * kernels at run time while the portable -O2 loop gets SSE2 only; on an AVX-512 EPYC the
 * BLAS call was already 1.5-3x faster from 64-128 elements up (below that its call overhead
 * wins), so 256 keeps a margin for machines where the loop does better. Overridable with
 * -D for benchmarking. */
#ifndef THEUS_DTYPE_BLAS_MIN
#define THEUS_DTYPE_BLAS_MIN 256
#endif

/* Largest count handed to one BLAS call: blasint is a plain int in the default (LP64)
 * OpenBLAS build, so longer arrays are added in chunks. Overridable so the chunking can be
 * exercised by a test build without allocating 2^31 elements. */
#ifndef THEUS_DTYPE_BLAS_CHUNK
#define THEUS_DTYPE_BLAS_CHUNK ((size_t)INT_MAX)
#endif

/* ---- names and sizes ------------------------------------------------------------------ */

static const char *const dtype_names[THEUS_DTYPE_COUNT] = {
    [THEUS_DTYPE_BOOL] = "bool", [THEUS_DTYPE_U8] = "u8",     [THEUS_DTYPE_I8] = "i8",
    [THEUS_DTYPE_U16] = "u16",   [THEUS_DTYPE_I16] = "i16",   [THEUS_DTYPE_U32] = "u32",
    [THEUS_DTYPE_I32] = "i32",   [THEUS_DTYPE_U64] = "u64",   [THEUS_DTYPE_I64] = "i64",
    [THEUS_DTYPE_F16] = "f16",   [THEUS_DTYPE_BF16] = "bf16", [THEUS_DTYPE_F32] = "f32",
    [THEUS_DTYPE_F64] = "f64",
};

static const unsigned char dtype_sizes[THEUS_DTYPE_COUNT] = {
    [THEUS_DTYPE_BOOL] = 1, [THEUS_DTYPE_U8] = 1,  [THEUS_DTYPE_I8] = 1,
    [THEUS_DTYPE_U16] = 2,  [THEUS_DTYPE_I16] = 2, [THEUS_DTYPE_U32] = 4,
    [THEUS_DTYPE_I32] = 4,  [THEUS_DTYPE_U64] = 8, [THEUS_DTYPE_I64] = 8,
    [THEUS_DTYPE_F16] = 2,  [THEUS_DTYPE_BF16] = 2, [THEUS_DTYPE_F32] = 4,
    [THEUS_DTYPE_F64] = 8,
};

static int dtype_valid(theus_dtype dt)
{
    /* Through unsigned so that a negative value cast into the enum is out of range too. */
    return (unsigned)dt < (unsigned)THEUS_DTYPE_COUNT;
}

const char *theus_dtype_name(theus_dtype dt)
{
    return dtype_valid(dt) ? dtype_names[dt] : NULL;
}

size_t theus_dtype_size(theus_dtype dt)
{
    return dtype_valid(dt) ? dtype_sizes[dt] : 0;
}

const char *theus_placement_name(theus_placement p)
{
    switch (p) {
    case THEUS_PLACEMENT_DEVICE: return "device";
    case THEUS_PLACEMENT_PINNED: return "pinned";
    case THEUS_PLACEMENT_HOST: return "host";
    }
    return NULL;
}

const char *theus_zone_name(theus_zone z)
{
    switch (z) {
    case THEUS_ZONE_DATA: return "data";
    case THEUS_ZONE_SIGNAL: return "signal";
    case THEUS_ZONE_META: return "meta";
    case THEUS_ZONE_CONST: return "const";
    }
    return NULL;
}

int dtype_is_float(theus_dtype dt)
{
    return dt == THEUS_DTYPE_F16 || dt == THEUS_DTYPE_BF16 || dt == THEUS_DTYPE_F32 ||
           dt == THEUS_DTYPE_F64;
}

int dtype_from_name(const char *name, theus_dtype *out)
{
    if (!name || !out)
        return -1;
    for (int i = 0; i < THEUS_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_names[i]) == 0) {
            *out = (theus_dtype)i;
            return 0;
        }
    }
    return -1;
}

/* ---- f16 / bf16 conversions ----------------------------------------------------------
 * Pure bit manipulation: no _Float16, no dependence on the FPU's rounding mode, so the CPU
 * replay and the GPU kernels (which round with __float2half_rn) agree bit for bit. */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;

    if (exp == 0x1f) /* inf, or NaN made quiet with its payload kept */
        return f32_from_bits(sign | 0x7f800000u | (mant << 13) | (mant ? 0x00400000u : 0));
    if (exp == 0) {
        if (mant == 0)
            return f32_from_bits(sign);
        /* Subnormal: mant * 2^-24. Shift the leading one up to the implicit bit (bit 10);
         * every f16 subnormal is a normal f32. */
        int e = -1;
        do {
            mant <<= 1;
            e++;
        } while (!(mant & 0x400u));
        return f32_from_bits(sign | ((uint32_t)(113 - 1 - e) << 23) | ((mant & 0x3ffu) << 13));
    }
    return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

static inline uint16_t f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;

    if (a > 0x7f800000u) /* NaN: keep the top payload bits, force the quiet bit */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    /* 65520 = 0x477ff000 is halfway between 65504 (the largest f16, odd mantissa) and
     * 2^16: ties go to even, i.e. up, i.e. to infinity. Also catches inf itself. */
    if (a >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) { /* normal f16 range, [2^-14, 65520) */
        uint32_t bits = (a - 0x38000000u) >> 13; /* rebias exponent 127 -> 15 */
        uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (bits & 1u)))
            bits++; /* a carry into the exponent is the correct next binade */
        return (uint16_t)(sign | bits);
    }
    /* Below 2^-14: f16 subnormal (units of 2^-24) or zero. 2^-25 (0x33000000) is the tie
     * between 0 and the smallest subnormal and goes to the even one, zero. */
    if (a <= 0x33000000u)
        return sign;
    uint32_t e = a >> 23;                       /* 102 .. 112 */
    uint32_t m = (a & 0x7fffffu) | 0x800000u;   /* value = m * 2^(e-150) */
    uint32_t shift = 126u - e;                  /* 14 .. 24: to units of 2^-24 */
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++; /* q == 0x400 is exactly the smallest normal's encoding */
    return (uint16_t)(sign | q);
}

static inline float bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u |= 0x00400000u; /* quiet a signalling NaN, as an IEEE conversion does */
    return f32_from_bits(u);
}

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: truncation could clear the payload */
        return (uint16_t)((u >> 16) | 0x0040u);
    /* Round to nearest even on the low 16 bits. Overflow carries into the exponent and
     * gives infinity, which is right: anything at or above the tie past 0x7f7f rounds up. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The public entry points; the static versions above are what the add loops inline. */
float theus_f16_to_f32(uint16_t h) { return f16_to_f32(h); }
uint16_t theus_f32_to_f16(float f) { return f32_to_f16(f); }
float theus_bf16_to_f32(uint16_t b) { return bf16_to_f32(b); }
uint16_t theus_f32_to_bf16(float f) { return f32_to_bf16(f); }

/* ---- ADD --------------------------------------------------------------------------------
 * Loads and stores go through memcpy so that a buffer without natural alignment is still
 * defined behaviour; compilers turn them into plain moves. The loops run in blocks of a
 * constant ADD_BLOCK elements because GCC's -O2 cost model ("very cheap") vectorizes only
 * loops that need no epilogue; the remainder takes the same statement one at a time. */

#define ADD_BLOCK 32

#define ADD_ONE(T, d, s, i)                                                              \
    do {                                                                                 \
        T a_, b_;                                                                        \
        memcpy(&a_, (d) + (i) * sizeof(T), sizeof(T));                                   \
        memcpy(&b_, (s) + (i) * sizeof(T), sizeof(T));                                   \
        a_ = (T)(a_ + b_);                                                               \
        memcpy((d) + (i) * sizeof(T), &a_, sizeof(T));                                   \
    } while (0)

/* Signed integers use the unsigned type of their width: it wraps without UB and gives the
 * same bits as two's complement addition. Floats add in their own type, rounded once. */
#define DEFINE_ADD(name, T)                                                              \
    static void name(unsigned char *restrict d, const unsigned char *restrict s, size_t n) \
    {                                                                                    \
        size_t i = 0;                                                                    \
        for (; n - i >= ADD_BLOCK; i += ADD_BLOCK)                                       \
            for (size_t j = 0; j < ADD_BLOCK; j++)                                       \
                ADD_ONE(T, d, s, i + j);                                                 \
        for (; i < n; i++)                                                               \
            ADD_ONE(T, d, s, i);                                                         \
    }

DEFINE_ADD(add_u8, uint8_t)
DEFINE_ADD(add_u16, uint16_t)
DEFINE_ADD(add_u32, uint32_t)
DEFINE_ADD(add_u64, uint64_t)
DEFINE_ADD(add_f32_loop, float)
DEFINE_ADD(add_f64_loop, double)

/* Logical or; the result is 0 or 1 whatever non-zero bytes the inputs held. */
#define OR_ONE(d, s, i) ((d)[i] = (unsigned char)(((d)[i] | (s)[i]) != 0))

static void add_bool(unsigned char *restrict d, const unsigned char *restrict s, size_t n)
{
    size_t i = 0;
    for (; n - i >= ADD_BLOCK; i += ADD_BLOCK)
        for (size_t j = 0; j < ADD_BLOCK; j++)
            OR_ONE(d, s, i + j);
    for (; i < n; i++)
        OR_ONE(d, s, i);
}

/* With alpha == 1, y + 1*x is y + x rounded once, FMA or not, so the BLAS path gives the
 * same bits as the loop (NaN payloads aside). */
static void add_f32_blas(float *d, const float *s, size_t n)
{
    while (n > 0) {
        size_t k = n < THEUS_DTYPE_BLAS_CHUNK ? n : THEUS_DTYPE_BLAS_CHUNK;
        cblas_saxpy((blasint)k, 1.0f, s, 1, d, 1);
        d += k;
        s += k;
        n -= k;
    }
}

static void add_f64_blas(double *d, const double *s, size_t n)
{
    while (n > 0) {
        size_t k = n < THEUS_DTYPE_BLAS_CHUNK ? n : THEUS_DTYPE_BLAS_CHUNK;
        cblas_daxpy((blasint)k, 1.0, s, 1, d, 1);
        d += k;
        s += k;
        n -= k;
    }
}

static int aligned_to(const void *p, size_t a)
{
    return ((uintptr_t)p & (a - 1)) == 0;
}

static void add_f16(unsigned char *restrict d, const unsigned char *restrict s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t a, b;
        memcpy(&a, d + i * 2, 2);
        memcpy(&b, s + i * 2, 2);
        a = f32_to_f16(f16_to_f32(a) + f16_to_f32(b));
        memcpy(d + i * 2, &a, 2);
    }
}

static void add_bf16(unsigned char *restrict d, const unsigned char *restrict s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t a, b;
        memcpy(&a, d + i * 2, 2);
        memcpy(&b, s + i * 2, 2);
        a = f32_to_bf16(bf16_to_f32(a) + bf16_to_f32(b));
        memcpy(d + i * 2, &a, 2);
    }
}

/* An out-of-range dtype adds nothing: callers validate dtypes long before a replay. */
void dtype_add(theus_dtype dt, void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (n == 0)
        return;
    switch (dt) {
    case THEUS_DTYPE_BOOL: add_bool(d, s, n); break;
    case THEUS_DTYPE_U8:
    case THEUS_DTYPE_I8: add_u8(d, s, n); break;
    case THEUS_DTYPE_U16:
    case THEUS_DTYPE_I16: add_u16(d, s, n); break;
    case THEUS_DTYPE_U32:
    case THEUS_DTYPE_I32: add_u32(d, s, n); break;
    case THEUS_DTYPE_U64:
    case THEUS_DTYPE_I64: add_u64(d, s, n); break;
    case THEUS_DTYPE_F16: add_f16(d, s, n); break;
    case THEUS_DTYPE_BF16: add_bf16(d, s, n); break;
    case THEUS_DTYPE_F32:
        /* BLAS kernels assume element alignment; odd buffers take the loop. */
        if (n >= THEUS_DTYPE_BLAS_MIN && aligned_to(d, sizeof(float)) &&
            aligned_to(s, sizeof(float)))
            add_f32_blas(dst, src, n);
        else
            add_f32_loop(d, s, n);
        break;
    case THEUS_DTYPE_F64:
        if (n >= THEUS_DTYPE_BLAS_MIN && aligned_to(d, sizeof(double)) &&
            aligned_to(s, sizeof(double)))
            add_f64_blas(dst, src, n);
        else
            add_f64_loop(d, s, n);
        break;
    default: break;
    }
}

/* ---- element access ---------------------------------------------------------------------- */

#define LOAD_AT(T, b, i, v) memcpy(&(v), (b) + (i) * sizeof(T), sizeof(T))

static int dtype_is_signed_int(theus_dtype dt)
{
    return dt == THEUS_DTYPE_I8 || dt == THEUS_DTYPE_I16 || dt == THEUS_DTYPE_I32 ||
           dt == THEUS_DTYPE_I64;
}

/* Rounded to the nearest double for 64-bit integers beyond 2^53; NaN for a bad dtype. */
double dtype_get(theus_dtype dt, const void *buf, size_t i)
{
    const unsigned char *b = buf;
    if (!b)
        return NAN;
    switch (dt) {
    case THEUS_DTYPE_BOOL: return b[i] != 0; /* any non-zero byte reads as true */
    case THEUS_DTYPE_U8: return b[i];
    case THEUS_DTYPE_I8: { int8_t v; LOAD_AT(int8_t, b, i, v); return v; }
    case THEUS_DTYPE_U16: { uint16_t v; LOAD_AT(uint16_t, b, i, v); return v; }
    case THEUS_DTYPE_I16: { int16_t v; LOAD_AT(int16_t, b, i, v); return v; }
    case THEUS_DTYPE_U32: { uint32_t v; LOAD_AT(uint32_t, b, i, v); return v; }
    case THEUS_DTYPE_I32: { int32_t v; LOAD_AT(int32_t, b, i, v); return v; }
    case THEUS_DTYPE_U64: { uint64_t v; LOAD_AT(uint64_t, b, i, v); return (double)v; }
    case THEUS_DTYPE_I64: { int64_t v; LOAD_AT(int64_t, b, i, v); return (double)v; }
    case THEUS_DTYPE_F16: { uint16_t v; LOAD_AT(uint16_t, b, i, v); return f16_to_f32(v); }
    case THEUS_DTYPE_BF16: { uint16_t v; LOAD_AT(uint16_t, b, i, v); return bf16_to_f32(v); }
    case THEUS_DTYPE_F32: { float v; LOAD_AT(float, b, i, v); return v; }
    case THEUS_DTYPE_F64: { double v; LOAD_AT(double, b, i, v); return v; }
    default: return NAN;
    }
}

/* ---- constraint checks -------------------------------------------------------------------
 * Integer elements are compared with the double bounds exactly: each bound becomes an
 * integer range [lo, hi] first (ceil of min, floor of max, clamped to the type), so a value
 * near 2^53 or at INT64_MAX is never misjudged by rounding it to a double. A NaN bound is
 * unsatisfiable, like a NaN element. */

#define TWO63 9223372036854775808.0  /* 2^63, exact as a double */
#define TWO64 18446744073709551616.0 /* 2^64, exact as a double */

/* Returns 0 when no integer satisfies the bounds, else 1 with [*lo, *hi] set. */
int dtype_signed_range(const theus_constraints *c, int64_t *lo, int64_t *hi)
{
    *lo = INT64_MIN;
    *hi = INT64_MAX;
    if (c->has_min) {
        if (isnan(c->min) || c->min >= TWO63)
            return 0;
        if (c->min > -TWO63)
            *lo = (int64_t)ceil(c->min); /* in (-2^63, 2^63): exact */
    }
    if (c->has_max) {
        if (isnan(c->max) || c->max < -TWO63)
            return 0;
        if (c->max < TWO63)
            *hi = (int64_t)floor(c->max); /* in [-2^63, 2^63): exact */
    }
    return *lo <= *hi;
}

int dtype_unsigned_range(const theus_constraints *c, uint64_t *lo, uint64_t *hi)
{
    *lo = 0;
    *hi = UINT64_MAX;
    if (c->has_min) {
        if (isnan(c->min) || c->min >= TWO64)
            return 0;
        if (c->min > 0)
            *lo = (uint64_t)ceil(c->min); /* in (0, 2^64): exact */
    }
    if (c->has_max) {
        if (isnan(c->max) || c->max < 0)
            return 0;
        if (c->max < TWO64)
            *hi = (uint64_t)floor(c->max); /* in [0, 2^64): exact */
    }
    return *lo <= *hi;
}

/* Every float element is exact in a double, so one double comparison decides. The negated
 * forms make a NaN element (or a NaN bound) fail. */
#define SCAN_FLOAT(T, TO_F)                                                              \
    for (size_t i = 0; i < n; i++) {                                                     \
        T raw_;                                                                          \
        LOAD_AT(T, b, i, raw_);                                                          \
        double v = TO_F(raw_);                                                           \
        if ((fin && !isfinite(v)) || (hmin && !(v >= mn)) || (hmax && !(v <= mx)))       \
            return i;                                                                    \
    }                                                                                    \
    return SIZE_MAX

#define AS_IS(x) (x)

static size_t check_float(theus_dtype dt, const unsigned char *b, size_t n,
                          const theus_constraints *c)
{
    const int fin = c->finite, hmin = c->has_min, hmax = c->has_max;
    const double mn = c->min, mx = c->max;
    switch (dt) {
    case THEUS_DTYPE_F16: SCAN_FLOAT(uint16_t, f16_to_f32);
    case THEUS_DTYPE_BF16: SCAN_FLOAT(uint16_t, bf16_to_f32);
    case THEUS_DTYPE_F32: SCAN_FLOAT(float, AS_IS);
    default: SCAN_FLOAT(double, AS_IS);
    }
}

#define SCAN_RANGE(T)                                                                    \
    for (size_t i = 0; i < n; i++) {                                                     \
        T v_;                                                                            \
        LOAD_AT(T, b, i, v_);                                                            \
        if (v_ < lo || v_ > hi)                                                          \
            return i;                                                                    \
    }                                                                                    \
    return SIZE_MAX

static size_t check_signed(theus_dtype dt, const unsigned char *b, size_t n, int64_t lo,
                           int64_t hi)
{
    switch (dt) {
    case THEUS_DTYPE_I8: SCAN_RANGE(int8_t);
    case THEUS_DTYPE_I16: SCAN_RANGE(int16_t);
    case THEUS_DTYPE_I32: SCAN_RANGE(int32_t);
    default: SCAN_RANGE(int64_t);
    }
}

static size_t check_unsigned(theus_dtype dt, const unsigned char *b, size_t n, uint64_t lo,
                             uint64_t hi)
{
    switch (dt) {
    case THEUS_DTYPE_BOOL:
        for (size_t i = 0; i < n; i++) {
            uint64_t v = b[i] != 0;
            if (v < lo || v > hi)
                return i;
        }
        return SIZE_MAX;
    case THEUS_DTYPE_U8: SCAN_RANGE(uint8_t);
    case THEUS_DTYPE_U16: SCAN_RANGE(uint16_t);
    case THEUS_DTYPE_U32: SCAN_RANGE(uint32_t);
    default: SCAN_RANGE(uint64_t);
    }
}

/* An out-of-range dtype or a NULL buffer fails at element 0: refuse rather than wave
 * through something that was never checked. A NULL @c means no constraints. */
size_t dtype_check(theus_dtype dt, const void *buf, size_t n, const theus_constraints *c)
{
    if (n == 0)
        return SIZE_MAX;
    if (!dtype_valid(dt) || !buf)
        return 0;
    if (!c || (!c->finite && !c->has_min && !c->has_max))
        return SIZE_MAX;
    if (dtype_is_float(dt))
        return check_float(dt, buf, n, c);
    /* Integers are always finite; only the bounds matter. */
    if (!c->has_min && !c->has_max)
        return SIZE_MAX;
    if (dtype_is_signed_int(dt)) {
        int64_t lo, hi;
        if (!dtype_signed_range(c, &lo, &hi))
            return 0;
        return check_signed(dt, buf, n, lo, hi);
    }
    uint64_t lo, hi;
    if (!dtype_unsigned_range(c, &lo, &hi))
        return 0;
    return check_unsigned(dt, buf, n, lo, hi);
}
