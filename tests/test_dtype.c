/* Element-level dtype operations: names and sizes, f16/bf16 conversions, ADD on every
 * dtype (against references computed here independently) and the gatekeeper's checks. */
#include "dtype.h"
#include <cblas.h>
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static void rng_seed(uint64_t s) { rng_state = s; }

static uint64_t rng_next(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float ffrom(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint64_t dbits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }

/* Value of a 16-bit float from its fields, by formula (not by bit shuffling into an f32).
 * The exponent field all ones is decoded as if it were finite: for the largest exponent
 * pattern with a zero mantissa that gives the value just past the largest finite number
 * (2^16 for f16, 2^128 for bf16), which the rounding reference uses as "overflow". */
static long double half_value(uint16_t h, int mant_bits, int bias)
{
    int e = (h & 0x7fff) >> mant_bits;
    long double m = h & ((1 << mant_bits) - 1);
    long double v = e == 0 ? ldexpl(m, 1 - bias - mant_bits)
                           : ldexpl(m + ldexpl(1, mant_bits), e - bias - mant_bits);
    return (h & 0x8000) ? -v : v;
}
static long double f16_value(uint16_t h) { return half_value(h, 10, 15); }
static long double bf16_value(uint16_t h) { return half_value(h, 7, 127); }

static int f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }
static int bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f); }

/* Round x to the nearest 16-bit float by looking at its two neighbours among all encodings:
 * nearest wins, a tie goes to the even encoding, the overflow pseudo-value means infinity.
 * inf_code is 0x7c00 (f16) or 0x7f80 (bf16); encodings 0..inf_code ascend in value. */
static uint16_t ref_round16(long double x, int is_bf16)
{
    uint16_t inf_code = is_bf16 ? 0x7f80 : 0x7c00;
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    long double a = fabsl(x);
    if (isinf(a))
        return sign | inf_code;
    long double (*val)(uint16_t) = is_bf16 ? bf16_value : f16_value;
    if (a >= val(inf_code))
        return sign | inf_code;
    unsigned lo = 0, hi = inf_code; /* invariant: val(lo) <= a < val(hi) */
    while (hi - lo > 1) {
        unsigned mid = (lo + hi) / 2;
        if (val((uint16_t)mid) <= a)
            lo = mid;
        else
            hi = mid;
    }
    long double dl = a - val((uint16_t)lo), dh = val((uint16_t)hi) - a;
    unsigned r = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
    return (uint16_t)(sign | r);
}

/* Is r the round-to-nearest-even double (or float) of the exact value s? Checked against r's
 * neighbours; s must be exact in long double (the callers keep exponent gaps small). */
static int is_rne_double(long double s, double r)
{
    if (isnan(s))
        return isnan(r);
    if (isinf(r) || isinf(s)) {
        long double thresh = (long double)DBL_MAX + ldexpl(1, 1023 - 53);
        return isinf(r) && signbit(r) == signbit(s) && fabsl(s) >= thresh;
    }
    if (s == 0)
        return r == 0;
    long double e0 = fabsl(s - r);
    long double eu = fabsl(s - nextafter(r, INFINITY)), ed = fabsl(s - nextafter(r, -INFINITY));
    if (e0 > eu || e0 > ed)
        return 0;
    if (e0 == eu || e0 == ed)
        return (dbits(r) & 1) == 0;
    return 1;
}

static int is_rne_float(long double s, float r)
{
    if (isnan(s))
        return isnan(r);
    if (isinf(r) || isinf(s)) {
        long double thresh = (long double)FLT_MAX + ldexpl(1, 127 - 24);
        return isinf(r) && signbit(r) == signbit(s) && fabsl(s) >= thresh;
    }
    if (s == 0)
        return r == 0;
    long double e0 = fabsl(s - r);
    long double eu = fabsl(s - nextafterf(r, INFINITY)), ed = fabsl(s - nextafterf(r, -INFINITY));
    if (e0 > eu || e0 > ed)
        return 0;
    if (e0 == eu || e0 == ed)
        return (fbits(r) & 1) == 0;
    return 1;
}

/* ---- names, sizes ----------------------------------------------------------------------- */

static const struct { theus_dtype dt; const char *name; size_t size; int is_float; } all_dtypes[] = {
    {THEUS_DTYPE_BOOL, "bool", 1, 0}, {THEUS_DTYPE_U8, "u8", 1, 0},
    {THEUS_DTYPE_I8, "i8", 1, 0},     {THEUS_DTYPE_U16, "u16", 2, 0},
    {THEUS_DTYPE_I16, "i16", 2, 0},   {THEUS_DTYPE_U32, "u32", 4, 0},
    {THEUS_DTYPE_I32, "i32", 4, 0},   {THEUS_DTYPE_U64, "u64", 8, 0},
    {THEUS_DTYPE_I64, "i64", 8, 0},   {THEUS_DTYPE_F16, "f16", 2, 1},
    {THEUS_DTYPE_BF16, "bf16", 2, 1}, {THEUS_DTYPE_F32, "f32", 4, 1},
    {THEUS_DTYPE_F64, "f64", 8, 1},
};
#define N_DTYPES (sizeof all_dtypes / sizeof all_dtypes[0])

Test(dtype_names, every_dtype_name_size_and_kind)
{
    cr_assert_eq(N_DTYPES, THEUS_DTYPE_COUNT);
    for (size_t i = 0; i < N_DTYPES; i++) {
        cr_assert_eq((int)all_dtypes[i].dt, (int)i, "enum order follows the guide");
        cr_assert_str_eq(theus_dtype_name(all_dtypes[i].dt), all_dtypes[i].name);
        cr_assert_eq(theus_dtype_size(all_dtypes[i].dt), all_dtypes[i].size);
        cr_assert_eq(!!dtype_is_float(all_dtypes[i].dt), all_dtypes[i].is_float);
        theus_dtype got = THEUS_DTYPE_COUNT;
        cr_assert_eq(dtype_from_name(all_dtypes[i].name, &got), 0);
        cr_assert_eq(got, all_dtypes[i].dt);
    }
}

Test(dtype_names, out_of_range_values)
{
    cr_assert_null(theus_dtype_name(THEUS_DTYPE_COUNT));
    cr_assert_null(theus_dtype_name((theus_dtype)-1));
    cr_assert_null(theus_dtype_name((theus_dtype)1000));
    cr_assert_eq(theus_dtype_size(THEUS_DTYPE_COUNT), 0);
    cr_assert_eq(theus_dtype_size((theus_dtype)-1), 0);
    cr_assert_eq(dtype_is_float(THEUS_DTYPE_COUNT), 0);
    cr_assert_eq(dtype_is_float((theus_dtype)-1), 0);
}

Test(dtype_names, from_name_refuses_unknown)
{
    const char *bad[] = {"F32", "Bool", "float32", "f", "", "f32 ", " f32", "i128", "f8", "bf"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        theus_dtype got = THEUS_DTYPE_F64;
        cr_assert_eq(dtype_from_name(bad[i], &got), -1, "'%s'", bad[i]);
        cr_assert_eq(got, THEUS_DTYPE_F64, "out untouched on failure");
    }
    theus_dtype got;
    cr_assert_eq(dtype_from_name(NULL, &got), -1);
    cr_assert_eq(dtype_from_name("f32", NULL), -1);
}

Test(dtype_names, placements_and_zones)
{
    cr_assert_str_eq(theus_placement_name(THEUS_PLACEMENT_DEVICE), "device");
    cr_assert_str_eq(theus_placement_name(THEUS_PLACEMENT_PINNED), "pinned");
    cr_assert_str_eq(theus_placement_name(THEUS_PLACEMENT_HOST), "host");
    cr_assert_null(theus_placement_name((theus_placement)3));
    cr_assert_null(theus_placement_name((theus_placement)-1));
    cr_assert_str_eq(theus_zone_name(THEUS_ZONE_DATA), "data");
    cr_assert_str_eq(theus_zone_name(THEUS_ZONE_SIGNAL), "signal");
    cr_assert_str_eq(theus_zone_name(THEUS_ZONE_META), "meta");
    cr_assert_str_eq(theus_zone_name(THEUS_ZONE_CONST), "const");
    cr_assert_null(theus_zone_name((theus_zone)4));
    cr_assert_null(theus_zone_name((theus_zone)-1));
}

/* ---- f16 / bf16 conversions -------------------------------------------------------------- */

Test(dtype_f16, all_bit_patterns_round_trip)
{
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = theus_f16_to_f32(h);
        if (f16_is_nan(h)) {
            cr_assert(isnan(f), "0x%04x", h);
            cr_assert_eq(!!signbit(f), !!(h & 0x8000), "NaN sign kept 0x%04x", h);
            cr_assert(fbits(f) & 0x00400000u, "quiet bit 0x%04x", h);
            uint16_t back = theus_f32_to_f16(f);
            cr_assert(f16_is_nan(back), "0x%04x -> 0x%04x", h, back);
            cr_assert(back & 0x0200, "quiet bit after round trip 0x%04x", h);
            cr_assert_eq(back & 0x8000, h & 0x8000);
            continue;
        }
        long double want = (h & 0x7c00) == 0x7c00 ? ((h & 0x8000) ? -INFINITY : INFINITY)
                                                  : f16_value(h);
        cr_assert((long double)f == want, "0x%04x: %a", h, (double)f);
        cr_assert_eq(!!signbit(f), !!(h & 0x8000), "sign of 0x%04x", h);
        cr_assert_eq(theus_f32_to_f16(f), h, "round trip 0x%04x", h);
    }
}

Test(dtype_bf16, all_bit_patterns_round_trip)
{
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t b = (uint16_t)i;
        float f = theus_bf16_to_f32(b);
        if (bf16_is_nan(b)) {
            cr_assert(isnan(f), "0x%04x", b);
            cr_assert_eq(!!signbit(f), !!(b & 0x8000));
            cr_assert(fbits(f) & 0x00400000u, "quiet bit 0x%04x", b);
            uint16_t back = theus_f32_to_bf16(f);
            cr_assert(bf16_is_nan(back), "0x%04x -> 0x%04x", b, back);
            cr_assert(back & 0x0040);
            cr_assert_eq(back & 0x8000, b & 0x8000);
            continue;
        }
        long double want = (b & 0x7f80) == 0x7f80 ? ((b & 0x8000) ? -INFINITY : INFINITY)
                                                  : bf16_value(b);
        cr_assert((long double)f == want, "0x%04x: %a", b, (double)f);
        cr_assert_eq(!!signbit(f), !!(b & 0x8000), "sign of 0x%04x", b);
        cr_assert_eq(theus_f32_to_bf16(f), b, "round trip 0x%04x", b);
    }
}

/* Every pair of neighbouring finite values (and the last one with infinity): the exact
 * midpoint goes to the even encoding, one f32 ulp either side goes to the nearer one. */
static void check_all_ties(int is_bf16)
{
    uint16_t inf_code = is_bf16 ? 0x7f80 : 0x7c00;
    long double (*val)(uint16_t) = is_bf16 ? bf16_value : f16_value;
    uint16_t (*conv)(float) = is_bf16 ? theus_f32_to_bf16 : theus_f32_to_f16;
    int odd_seen = 0, even_seen = 0;
    for (uint16_t lo = 0; lo < inf_code; lo++) {
        uint16_t hi = lo + 1;
        long double mid = (val(lo) + val(hi)) / 2;
        float m = (float)mid;
        cr_assert((long double)m == mid, "midpoint exact in f32");
        uint16_t even = (lo & 1) ? hi : lo;
        (lo & 1) ? odd_seen++ : even_seen++;
        for (int s = 0; s < 2; s++) {
            uint16_t sg = s ? 0x8000 : 0;
            float ms = s ? -m : m;
            cr_assert_eq(conv(ms), sg | even, "tie %Lg between 0x%04x and 0x%04x", mid, lo, hi);
            float below = nextafterf(ms, 0.0f), above = nextafterf(ms, s ? -INFINITY : INFINITY);
            cr_assert_eq(conv(below), sg | lo, "just below the tie 0x%04x", lo);
            cr_assert_eq(conv(above), sg | hi, "just above the tie 0x%04x", lo);
        }
    }
    cr_assert(odd_seen > 1000 && even_seen > 1000);
}

Test(dtype_f16, ties_round_to_even) { check_all_ties(0); }
Test(dtype_bf16, ties_round_to_even) { check_all_ties(1); }

Test(dtype_f16, overflow_subnormals_and_signed_zero)
{
    cr_assert_eq(theus_f32_to_f16(65504.0f), 0x7bff);
    cr_assert_eq(theus_f32_to_f16(65519.996f), 0x7bff);
    cr_assert_eq(theus_f32_to_f16(65520.0f), 0x7c00, "tie past the max goes to inf");
    cr_assert_eq(theus_f32_to_f16(-65520.0f), 0xfc00);
    cr_assert_eq(theus_f32_to_f16(1e10f), 0x7c00);
    cr_assert_eq(theus_f32_to_f16(FLT_MAX), 0x7c00);
    cr_assert_eq(theus_f32_to_f16(INFINITY), 0x7c00);
    cr_assert_eq(theus_f32_to_f16(-INFINITY), 0xfc00);
    cr_assert_eq(theus_f32_to_f16(0.0f), 0x0000);
    cr_assert_eq(theus_f32_to_f16(-0.0f), 0x8000);
    cr_assert_eq(theus_f32_to_f16(ldexpf(1, -24)), 0x0001, "smallest subnormal");
    cr_assert_eq(theus_f32_to_f16(ldexpf(1, -25)), 0x0000, "half of it: tie to even zero");
    cr_assert_eq(theus_f32_to_f16(-ldexpf(1, -25)), 0x8000, "negative tie keeps the sign");
    cr_assert_eq(theus_f32_to_f16(nextafterf(ldexpf(1, -25), 1)), 0x0001);
    cr_assert_eq(theus_f32_to_f16(ldexpf(3, -25)), 0x0002, "1.5 ulp: tie to even 2");
    cr_assert_eq(theus_f32_to_f16(ldexpf(5, -25)), 0x0002, "2.5 ulp: tie to even 2");
    cr_assert_eq(theus_f32_to_f16(ldexpf(1, -30)), 0x0000);
    cr_assert_eq(theus_f32_to_f16(-1e-30f), 0x8000);
    cr_assert_eq(theus_f32_to_f16(FLT_TRUE_MIN), 0x0000, "f32 subnormal underflows");
    cr_assert_eq(theus_f32_to_f16(ldexpf(1023, -24)), 0x03ff, "largest subnormal");
    cr_assert_eq(theus_f32_to_f16(ldexpf(2047, -25)), 0x0400, "tie up into the normals");
    cr_assert_eq(theus_f32_to_f16(ldexpf(1, -14)), 0x0400, "smallest normal");
    cr_assert_eq(theus_f16_to_f32(0x0001), ldexpf(1, -24));
    cr_assert_eq(theus_f16_to_f32(0x8001), -ldexpf(1, -24));
    cr_assert_eq(theus_f16_to_f32(0x03ff), ldexpf(1023, -24));
    cr_assert(signbit(theus_f16_to_f32(0x8000)) && theus_f16_to_f32(0x8000) == 0);
    cr_assert_eq(theus_f16_to_f32(0x3c00), 1.0f);
    cr_assert_eq(theus_f16_to_f32(0xc000), -2.0f);
}

Test(dtype_bf16, overflow_subnormals_and_signed_zero)
{
    cr_assert_eq(theus_f32_to_bf16(FLT_MAX), 0x7f80, "FLT_MAX is past the tie above 0x7f7f");
    cr_assert_eq(theus_f32_to_bf16(-FLT_MAX), 0xff80);
    cr_assert_eq(theus_f32_to_bf16(ffrom(0x7f7f7fffu)), 0x7f7f);
    cr_assert_eq(theus_f32_to_bf16(ffrom(0x7f7f8000u)), 0x7f80, "tie, odd: up to inf");
    cr_assert_eq(theus_f32_to_bf16(ffrom(0x7f7e8000u)), 0x7f7e, "tie, even: stays");
    cr_assert_eq(theus_f32_to_bf16(INFINITY), 0x7f80);
    cr_assert_eq(theus_f32_to_bf16(-INFINITY), 0xff80);
    cr_assert_eq(theus_f32_to_bf16(0.0f), 0x0000);
    cr_assert_eq(theus_f32_to_bf16(-0.0f), 0x8000);
    cr_assert_eq(theus_f32_to_bf16(-FLT_TRUE_MIN), 0x8000);
    cr_assert_eq(theus_f32_to_bf16(ffrom(0x00008000u)), 0x0000, "subnormal tie to even 0");
    cr_assert_eq(theus_f32_to_bf16(ffrom(0x00018000u)), 0x0002, "subnormal tie to even 2");
    cr_assert_eq(theus_f32_to_bf16(ffrom(0x00008001u)), 0x0001);
    cr_assert_eq(theus_f32_to_bf16(ffrom(0x007fffffu)), 0x0080, "into the normals");
    cr_assert_eq(theus_f32_to_bf16(1.0f), 0x3f80);
    cr_assert_eq(theus_bf16_to_f32(0x0001), ldexpf(1, -133));
    cr_assert(signbit(theus_bf16_to_f32(0x8000)));
}

Test(dtype_f16, nan_inputs_stay_nan)
{
    const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u,
                             0x7fffffffu, 0x7f802000u, 0x7fa00000u, 0x7f801fffu};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        float f = ffrom(nans[i]);
        uint16_t h = theus_f32_to_f16(f), b = theus_f32_to_bf16(f);
        cr_assert(f16_is_nan(h) && (h & 0x0200), "f16 of 0x%08x: 0x%04x", nans[i], h);
        cr_assert(bf16_is_nan(b) && (b & 0x0040), "bf16 of 0x%08x: 0x%04x", nans[i], b);
        cr_assert_eq(h >> 15, nans[i] >> 31);
        cr_assert_eq(b >> 15, nans[i] >> 31);
    }
    /* Signalling 16-bit NaNs come back quiet. */
    cr_assert(isnan(theus_f16_to_f32(0x7c01)) && (fbits(theus_f16_to_f32(0x7c01)) & 0x400000));
    cr_assert(isnan(theus_bf16_to_f32(0x7f81)) && (fbits(theus_bf16_to_f32(0x7f81)) & 0x400000));
}

/* Random f32 bit patterns over the whole range, against the neighbour-search reference. */
Test(dtype_f16, random_f32_against_reference)
{
    rng_seed(1);
    for (int i = 0; i < 300000; i++) {
        uint32_t u = (uint32_t)rng_next();
        if (i & 1) /* half of them near the f16 range, where the interesting cases are */
            u = (u & 0x807fffffu) | ((uint32_t)(96 + (rng_next() % 50)) << 23);
        float f = ffrom(u);
        if (isnan(f))
            continue;
        uint16_t want = ref_round16(f, 0), got = theus_f32_to_f16(f);
        cr_assert_eq(got, want, "%a (0x%08x): got 0x%04x want 0x%04x", (double)f, u, got, want);
    }
}

Test(dtype_bf16, random_f32_against_reference)
{
    rng_seed(2);
    for (int i = 0; i < 300000; i++) {
        uint32_t u = (uint32_t)rng_next();
        if (i & 1) /* low bits at or near the tie pattern */
            u = (u & 0xffff0000u) | (0x8000u + (uint32_t)(rng_next() % 3) - 1u);
        float f = ffrom(u);
        if (isnan(f))
            continue;
        uint16_t want = ref_round16(f, 1), got = theus_f32_to_bf16(f);
        cr_assert_eq(got, want, "%a (0x%08x): got 0x%04x want 0x%04x", (double)f, u, got, want);
    }
}

/* ---- ADD: integers ------------------------------------------------------------------------ */

Test(dtype_add, bool_is_logical_or)
{
    /* Every pair of bytes, including non-canonical "true" bytes. */
    enum { N = 65536 };
    unsigned char *d = malloc(N), *s = malloc(N);
    for (int i = 0; i < N; i++) {
        d[i] = (unsigned char)(i >> 8);
        s[i] = (unsigned char)i;
    }
    dtype_add(THEUS_DTYPE_BOOL, d, s, N);
    for (int i = 0; i < N; i++)
        cr_assert_eq(d[i], ((i >> 8) || (i & 0xff)) ? 1 : 0, "pair %d", i);
    free(d);
    free(s);
}

Test(dtype_add, u8_and_i8_every_pair_wraps)
{
    enum { N = 65536 };
    uint8_t *d = malloc(N), *s = malloc(N);
    int8_t *di = malloc(N), *si = malloc(N);
    for (int i = 0; i < N; i++) {
        d[i] = (uint8_t)(i >> 8);
        s[i] = (uint8_t)i;
        di[i] = (int8_t)((i >> 8) - 128);
        si[i] = (int8_t)((i & 0xff) - 128);
    }
    dtype_add(THEUS_DTYPE_U8, d, s, N);
    dtype_add(THEUS_DTYPE_I8, di, si, N);
    for (int i = 0; i < N; i++) {
        int su = (i >> 8) + (i & 0xff);
        cr_assert_eq(d[i], su % 256, "u8 %d", i);
        int ss = ((i >> 8) - 128) + ((i & 0xff) - 128); /* in [-256, 254] */
        int want = ss < -128 ? ss + 256 : ss > 127 ? ss - 256 : ss;
        cr_assert_eq(di[i], want, "i8 %d + %d", (i >> 8) - 128, (i & 0xff) - 128);
    }
    free(d); free(s); free(di); free(si);
}

/* Reference for wider integers: the exact sum in 128-bit arithmetic, brought back into the
 * type's range by adding or subtracting 2^bits. */
static __int128 wrap_ref(__int128 a, __int128 b, int bits, int is_signed)
{
    __int128 m = (__int128)1 << bits, r = a + b;
    __int128 lo = is_signed ? -(m / 2) : 0, hi = is_signed ? m / 2 - 1 : m - 1;
    while (r > hi) r -= m;
    while (r < lo) r += m;
    return r;
}

#define WIDE_ADD_TEST(name, T, DT, BITS, SIGNED, MINV, MAXV)                               \
    Test(dtype_add, name)                                                                  \
    {                                                                                      \
        enum { N = 4096 };                                                                 \
        const T edge[] = {MINV, (T)(MINV + 1), (T)-1, 0, 1, (T)(MAXV - 1), MAXV};          \
        const size_t ne = sizeof edge / sizeof edge[0];                                    \
        T *d = malloc(N * sizeof(T)), *s = malloc(N * sizeof(T)), *d0 = malloc(N * sizeof(T)); \
        rng_seed(BITS * 2 + SIGNED);                                                       \
        for (size_t i = 0; i < N; i++) {                                                   \
            if (i < ne * ne) {                                                             \
                d[i] = edge[i / ne];                                                       \
                s[i] = edge[i % ne];                                                       \
            } else {                                                                       \
                uint64_t r1 = rng_next(), r2 = rng_next();                                 \
                memcpy(&d[i], &r1, sizeof(T));                                             \
                memcpy(&s[i], &r2, sizeof(T));                                             \
            }                                                                              \
        }                                                                                  \
        memcpy(d0, d, N * sizeof(T));                                                      \
        dtype_add(DT, d, s, N);                                                            \
        size_t wraps = 0;                                                                  \
        for (size_t i = 0; i < N; i++) {                                                   \
            __int128 want = wrap_ref(d0[i], s[i], BITS, SIGNED);                           \
            wraps += want != (__int128)d0[i] + s[i];                                       \
            cr_assert((__int128)d[i] == want, #T " element %zu", i);                       \
        }                                                                                  \
        cr_assert(wraps > 100, "the cases include wrap-around");                           \
        free(d); free(s); free(d0);                                                        \
    }

WIDE_ADD_TEST(u16_wraps, uint16_t, THEUS_DTYPE_U16, 16, 0, 0, UINT16_MAX)
WIDE_ADD_TEST(i16_wraps, int16_t, THEUS_DTYPE_I16, 16, 1, INT16_MIN, INT16_MAX)
WIDE_ADD_TEST(u32_wraps, uint32_t, THEUS_DTYPE_U32, 32, 0, 0, UINT32_MAX)
WIDE_ADD_TEST(i32_wraps, int32_t, THEUS_DTYPE_I32, 32, 1, INT32_MIN, INT32_MAX)
WIDE_ADD_TEST(u64_wraps, uint64_t, THEUS_DTYPE_U64, 64, 0, 0, UINT64_MAX)
WIDE_ADD_TEST(i64_wraps, int64_t, THEUS_DTYPE_I64, 64, 1, INT64_MIN, INT64_MAX)

Test(dtype_add, integer_extremes_spelled_out)
{
    int8_t a8[] = {INT8_MAX, INT8_MIN, -1}, b8[] = {1, -1, -128};
    dtype_add(THEUS_DTYPE_I8, a8, b8, 3);
    cr_assert(a8[0] == INT8_MIN && a8[1] == INT8_MAX && a8[2] == 127);
    int64_t a64[] = {INT64_MAX, INT64_MIN, INT64_MIN}, b64[] = {1, -1, INT64_MIN};
    dtype_add(THEUS_DTYPE_I64, a64, b64, 3);
    cr_assert(a64[0] == INT64_MIN && a64[1] == INT64_MAX && a64[2] == 0);
    uint64_t u64[] = {UINT64_MAX}, v64[] = {2};
    dtype_add(THEUS_DTYPE_U64, u64, v64, 1);
    cr_assert_eq(u64[0], 1);
    uint16_t u16[] = {65535}, v16[] = {65535};
    dtype_add(THEUS_DTYPE_U16, u16, v16, 1);
    cr_assert_eq(u16[0], 65534);
}

/* ---- ADD: 16-bit floats ------------------------------------------------------------------- */

/* Reference: exact sum (long double holds every f16 sum exactly, and every bf16 sum that
 * could matter), rounded to f32 by the hardware conversion, then to 16 bits by the
 * neighbour-search reference. */
static uint16_t ref_add16(uint16_t a, uint16_t b, int is_bf16)
{
    long double (*val)(uint16_t) = is_bf16 ? bf16_value : f16_value;
    int (*is_nan)(uint16_t) = is_bf16 ? bf16_is_nan : f16_is_nan;
    uint16_t inf_code = is_bf16 ? 0x7f80 : 0x7c00;
    if (is_nan(a) || is_nan(b))
        return 0xffff; /* marker: expect some NaN */
    long double x = (a & 0x7fff) == inf_code ? ((a & 0x8000) ? -INFINITY : INFINITY) : val(a);
    long double y = (b & 0x7fff) == inf_code ? ((b & 0x8000) ? -INFINITY : INFINITY) : val(b);
    long double s = x + y;
    if (isnan(s))
        return 0xffff;
    return ref_round16((float)s, is_bf16);
}

static void check_add16(int is_bf16, const uint16_t *a, const uint16_t *b, size_t n)
{
    uint16_t *d = malloc(n * 2);
    memcpy(d, a, n * 2);
    dtype_add(is_bf16 ? THEUS_DTYPE_BF16 : THEUS_DTYPE_F16, d, b, n);
    for (size_t i = 0; i < n; i++) {
        uint16_t want = ref_add16(a[i], b[i], is_bf16);
        if (want == 0xffff)
            cr_assert(is_bf16 ? bf16_is_nan(d[i]) : f16_is_nan(d[i]),
                      "0x%04x + 0x%04x -> 0x%04x, want NaN", a[i], b[i], d[i]);
        else
            cr_assert_eq(d[i], want, "0x%04x + 0x%04x -> 0x%04x, want 0x%04x", a[i], b[i],
                         d[i], want);
    }
    free(d);
}

static void add16_cases(int is_bf16)
{
    const uint16_t sp16[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x3c00, 0xbc00,
                             0x3c01, 0x1000, 0x7bff, 0xfbff, 0x7bfe, 0x7c00, 0xfc00, 0x7e00,
                             0x7c01, 0x5400, 0x0200, 0x1400};
    const uint16_t spbf[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x007f, 0x0080, 0x3f80, 0xbf80,
                             0x3f81, 0x3b80, 0x7f7f, 0xff7f, 0x7f7e, 0x7f80, 0xff80, 0x7fc0,
                             0x7f81, 0x4b00, 0x0040, 0x3c00};
    const uint16_t *sp = is_bf16 ? spbf : sp16;
    enum { NS = 20, NR = 200000 };
    size_t n = NS * NS + NR;
    uint16_t *a = malloc(n * 2), *b = malloc(n * 2);
    for (size_t i = 0; i < NS * NS; i++) {
        a[i] = sp[i / NS];
        b[i] = sp[i % NS];
    }
    rng_seed(10 + (uint64_t)is_bf16);
    for (size_t i = NS * NS; i < n; i++) {
        uint64_t r = rng_next();
        a[i] = (uint16_t)r;
        /* Half the time the second operand sits within a few binades of the first, where
         * sums need rounding and hit ties. */
        if (r & (1ull << 40)) {
            int shift = is_bf16 ? 7 : 10;
            int ea = (a[i] >> shift) & (is_bf16 ? 0xff : 0x1f);
            int eb = ea - (int)((r >> 41) % 12);
            if (eb < 0) eb = 0;
            b[i] = (uint16_t)(((r >> 16) & 0x8000) | ((unsigned)eb << shift) |
                              ((r >> 24) & ((1u << shift) - 1)));
        } else {
            b[i] = (uint16_t)(r >> 16);
        }
    }
    check_add16(is_bf16, a, b, n);
    free(a);
    free(b);
}

Test(dtype_add, f16_against_reference) { add16_cases(0); }
Test(dtype_add, bf16_against_reference) { add16_cases(1); }

Test(dtype_add, f16_spelled_out)
{
    uint16_t d[] = {0x3c00, 0x3c00, 0x3c00, 0x7bff, 0x7c00, 0x8000, 0x0001, 0x3c00};
    uint16_t s[] = {0x1000, 0x1001, 0x3c00, 0x5000, 0xfc00, 0x8000, 0x03ff, 0xbc00};
    dtype_add(THEUS_DTYPE_F16, d, s, 8);
    cr_assert_eq(d[0], 0x3c00, "1 + 2^-11 ties to even 1");
    cr_assert_eq(d[1], 0x3c01, "1 + a bit more than half ulp rounds up");
    cr_assert_eq(d[2], 0x4000, "1 + 1 = 2");
    cr_assert_eq(d[3], 0x7c00, "65504 + 32 overflows to inf");
    cr_assert(f16_is_nan(d[4]), "inf + -inf is NaN");
    cr_assert_eq(d[5], 0x8000, "-0 + -0 = -0");
    cr_assert_eq(d[6], 0x0400, "subnormals add into the normals");
    cr_assert_eq(d[7], 0x0000, "1 - 1 = +0");
}

Test(dtype_add, bf16_spelled_out)
{
    uint16_t d[] = {0x3f80, 0x3f80, 0x7f7f, 0x8000, 0x3f80};
    uint16_t s[] = {0x3b80, 0x3b81, 0x7f7f, 0x8000, 0x3c00};
    dtype_add(THEUS_DTYPE_BF16, d, s, 5);
    cr_assert_eq(d[0], 0x3f80, "1 + 2^-8 ties to even 1");
    cr_assert_eq(d[1], 0x3f81);
    cr_assert_eq(d[2], 0x7f80, "max + max overflows");
    cr_assert_eq(d[3], 0x8000);
    cr_assert_eq(d[4], 0x3f81, "1 + 2^-7 = next");
}

/* ---- ADD: f32 / f64 ------------------------------------------------------------------------ */

static float rand_f32(void)
{
    uint64_t r = rng_next();
    switch (r % 4) {
    case 0: /* any finite bit pattern, subnormals included */
        for (;;) {
            float f = ffrom((uint32_t)(r >> 8));
            if (isfinite(f))
                return f;
            r = rng_next();
        }
    case 1: return ldexpf((float)((r >> 8) & 0xffffff) - 8388608.0f, -23); /* [-1, 1) */
    case 2: return ldexpf((float)((r >> 8) & 0xffffff), (int)((r >> 40) % 20) - 10);
    default: {
        static const float sp[] = {0.0f, -0.0f, INFINITY, -INFINITY, FLT_MAX, -FLT_MAX,
                                   FLT_TRUE_MIN, -FLT_MIN, 1.0f, -1.0f};
        return sp[(r >> 8) % 10];
    }
    }
}

static double rand_f64(void)
{
    uint64_t r = rng_next();
    switch (r % 4) {
    case 0:
        for (;;) {
            double d;
            memcpy(&d, &r, 8);
            if (isfinite(d))
                return d;
            r = rng_next();
        }
    case 1: return ldexp((double)(r >> 11) - 4503599627370496.0, -52);
    case 2: return ldexp((double)(r >> 11), (int)((r >> 3) % 40) - 20);
    default: {
        static const double sp[] = {0.0, -0.0, INFINITY, -INFINITY, DBL_MAX, -DBL_MAX,
                                    DBL_TRUE_MIN, -DBL_MIN, 1.0, -1.0};
        return sp[(r >> 8) % 10];
    }
    }
}

static int same_f32(float a, float b) { return isnan(a) ? isnan(b) : fbits(a) == fbits(b); }
static int same_f64(double a, double b) { return isnan(a) ? isnan(b) : dbits(a) == dbits(b); }

/* The library (BLAS path for the large size), cblas_saxpy called directly, a plain loop, the
 * library in short chunks (loop path) and the library on misaligned copies (loop path) must
 * all give the same bits. */
static void f32_paths(size_t n)
{
    float *a = malloc(n * 4), *b = malloc(n * 4), *lib = malloc(n * 4), *blas = malloc(n * 4);
    float *plain = malloc(n * 4), *chunked = malloc(n * 4);
    unsigned char *mis = malloc(n * 4 + 1), *mis_src = malloc(n * 4 + 1);
    rng_seed(100 + n);
    for (size_t i = 0; i < n; i++) {
        a[i] = rand_f32();
        b[i] = rand_f32();
    }
    memcpy(lib, a, n * 4); memcpy(blas, a, n * 4); memcpy(plain, a, n * 4);
    memcpy(chunked, a, n * 4); memcpy(mis + 1, a, n * 4); memcpy(mis_src + 1, b, n * 4);
    dtype_add(THEUS_DTYPE_F32, lib, b, n);
    cblas_saxpy((int)n, 1.0f, b, 1, blas, 1);
    for (size_t i = 0; i < n; i++)
        plain[i] = plain[i] + b[i];
    for (size_t i = 0; i < n; i += 7)
        dtype_add(THEUS_DTYPE_F32, chunked + i, b + i, n - i < 7 ? n - i : 7);
    dtype_add(THEUS_DTYPE_F32, mis + 1, mis_src + 1, n);
    for (size_t i = 0; i < n; i++) {
        float m;
        memcpy(&m, mis + 1 + i * 4, 4);
        cr_assert(same_f32(lib[i], plain[i]), "lib vs plain at %zu: %a + %a", i, (double)a[i], (double)b[i]);
        cr_assert(same_f32(blas[i], plain[i]), "blas vs plain at %zu", i);
        cr_assert(same_f32(chunked[i], plain[i]), "chunked vs plain at %zu", i);
        cr_assert(same_f32(m, plain[i]), "misaligned vs plain at %zu", i);
    }
    free(a); free(b); free(lib); free(blas); free(plain); free(chunked); free(mis); free(mis_src);
}

static void f64_paths(size_t n)
{
    double *a = malloc(n * 8), *b = malloc(n * 8), *lib = malloc(n * 8), *blas = malloc(n * 8);
    double *plain = malloc(n * 8), *chunked = malloc(n * 8);
    unsigned char *mis = malloc(n * 8 + 3), *mis_src = malloc(n * 8 + 5);
    rng_seed(200 + n);
    for (size_t i = 0; i < n; i++) {
        a[i] = rand_f64();
        b[i] = rand_f64();
    }
    memcpy(lib, a, n * 8); memcpy(blas, a, n * 8); memcpy(plain, a, n * 8);
    memcpy(chunked, a, n * 8); memcpy(mis + 3, a, n * 8); memcpy(mis_src + 5, b, n * 8);
    dtype_add(THEUS_DTYPE_F64, lib, b, n);
    cblas_daxpy((int)n, 1.0, b, 1, blas, 1);
    for (size_t i = 0; i < n; i++)
        plain[i] = plain[i] + b[i];
    for (size_t i = 0; i < n; i += 5)
        dtype_add(THEUS_DTYPE_F64, chunked + i, b + i, n - i < 5 ? n - i : 5);
    dtype_add(THEUS_DTYPE_F64, mis + 3, mis_src + 5, n);
    for (size_t i = 0; i < n; i++) {
        double m;
        memcpy(&m, mis + 3 + i * 8, 8);
        cr_assert(same_f64(lib[i], plain[i]), "lib vs plain at %zu: %a + %a", i, a[i], b[i]);
        cr_assert(same_f64(blas[i], plain[i]), "blas vs plain at %zu", i);
        cr_assert(same_f64(chunked[i], plain[i]), "chunked vs plain at %zu", i);
        cr_assert(same_f64(m, plain[i]), "misaligned vs plain at %zu", i);
    }
    free(a); free(b); free(lib); free(blas); free(plain); free(chunked); free(mis); free(mis_src);
}

Test(dtype_add, f32_blas_and_loop_paths_bit_identical)
{
    f32_paths(10000);
    f32_paths(3);
    f32_paths(257);
}

Test(dtype_add, f64_blas_and_loop_paths_bit_identical)
{
    f64_paths(10000);
    f64_paths(3);
    f64_paths(257);
}

/* Correct rounding checked independently: operands within a few binades of each other, so
 * the long double sum is exact, and the result compared with its neighbours. */
Test(dtype_add, f32_f64_round_to_nearest_even)
{
    enum { N = 20000 };
    float *fa = malloc(N * 4), *fb = malloc(N * 4), *fd = malloc(N * 4);
    double *da = malloc(N * 8), *db = malloc(N * 8), *dd = malloc(N * 8);
    rng_seed(300);
    for (size_t i = 0; i < N; i++) {
        uint64_t r = rng_next();
        int e = (int)(r % 60) - 30, g = (int)((r >> 8) % 10);
        fa[i] = ldexpf((float)(rng_next() >> 40), e) * ((r >> 20) & 1 ? -1 : 1);
        fb[i] = ldexpf((float)(rng_next() >> 40), e - g) * ((r >> 21) & 1 ? -1 : 1);
        da[i] = ldexp((double)(rng_next() >> 11), e) * ((r >> 22) & 1 ? -1 : 1);
        db[i] = ldexp((double)(rng_next() >> 11), e - g) * ((r >> 23) & 1 ? -1 : 1);
    }
    /* Ties and overflow, spelled out. */
    fa[0] = 1.0f; fb[0] = ldexpf(1, -24);                      /* tie, even: 1 */
    fa[1] = nextafterf(1.0f, 2); fb[1] = ldexpf(1, -24);       /* tie, odd: up */
    fa[2] = FLT_MAX; fb[2] = ldexpf(1, 103);                   /* tie past max: inf */
    fa[3] = FLT_MAX; fb[3] = nextafterf(ldexpf(1, 103), 0);    /* stays FLT_MAX */
    da[0] = 1.0; db[0] = ldexp(1, -53);
    da[1] = nextafter(1.0, 2); db[1] = ldexp(1, -53);
    da[2] = DBL_MAX; db[2] = ldexp(1, 970);
    da[3] = DBL_MAX; db[3] = nextafter(ldexp(1, 970), 0);
    memcpy(fd, fa, N * 4);
    memcpy(dd, da, N * 8);
    dtype_add(THEUS_DTYPE_F32, fd, fb, N);
    dtype_add(THEUS_DTYPE_F64, dd, db, N);
    for (size_t i = 0; i < N; i++) {
        cr_assert(is_rne_float((long double)fa[i] + fb[i], fd[i]), "f32 %zu: %a + %a = %a", i,
                  (double)fa[i], (double)fb[i], (double)fd[i]);
        cr_assert(is_rne_double((long double)da[i] + db[i], dd[i]), "f64 %zu: %a + %a = %a", i,
                  da[i], db[i], dd[i]);
    }
    cr_assert_eq(fd[0], 1.0f);
    cr_assert_eq(fd[1], nextafterf(nextafterf(1.0f, 2), 2));
    cr_assert(isinf(fd[2]) && fd[3] == FLT_MAX);
    cr_assert(isinf(dd[2]) && dd[3] == DBL_MAX);
    free(fa); free(fb); free(fd); free(da); free(db); free(dd);
}

Test(dtype_add, zero_elements_and_bad_dtype_touch_nothing)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        dtype_add(all_dtypes[i].dt, NULL, NULL, 0);
    uint8_t d[4] = {1, 2, 3, 4}, s[4] = {1, 1, 1, 1};
    dtype_add(THEUS_DTYPE_COUNT, d, s, 4);
    dtype_add((theus_dtype)-1, d, s, 4);
    cr_assert(d[0] == 1 && d[1] == 2 && d[2] == 3 && d[3] == 4);
}

/* Misaligned buffers for every dtype give the same result as aligned ones. */
Test(dtype_add, misaligned_buffers_every_dtype)
{
    enum { N = 600 };
    for (size_t k = 0; k < N_DTYPES; k++) {
        size_t es = all_dtypes[k].size, nb = N * es;
        unsigned char *a = malloc(nb), *b = malloc(nb), *ma = malloc(nb + 1), *mb = malloc(nb + 3);
        rng_seed(400 + k);
        for (size_t i = 0; i < nb; i++) {
            a[i] = (unsigned char)rng_next();
            b[i] = (unsigned char)rng_next();
        }
        memcpy(ma + 1, a, nb);
        memcpy(mb + 3, b, nb);
        dtype_add(all_dtypes[k].dt, a, b, N);
        dtype_add(all_dtypes[k].dt, ma + 1, mb + 3, N);
        for (size_t i = 0; i < N; i++) {
            double x = dtype_get(all_dtypes[k].dt, a, i), y = dtype_get(all_dtypes[k].dt, ma + 1, i);
            cr_assert(isnan(x) ? isnan(y) : memcmp(a + i * es, ma + 1 + i * es, es) == 0,
                      "%s element %zu", all_dtypes[k].name, i);
        }
        free(a); free(b); free(ma); free(mb);
    }
}

/* ---- dtype_get -------------------------------------------------------------------------- */

Test(dtype_get, every_dtype)
{
    unsigned char bo[] = {0, 1, 7};
    cr_assert(dtype_get(THEUS_DTYPE_BOOL, bo, 0) == 0 && dtype_get(THEUS_DTYPE_BOOL, bo, 1) == 1 &&
              dtype_get(THEUS_DTYPE_BOOL, bo, 2) == 1);
    uint8_t u8[] = {0, 255};
    cr_assert_eq(dtype_get(THEUS_DTYPE_U8, u8, 1), 255.0);
    int8_t i8[] = {-128, 127};
    cr_assert_eq(dtype_get(THEUS_DTYPE_I8, i8, 0), -128.0);
    uint16_t u16[] = {1, 65535};
    cr_assert_eq(dtype_get(THEUS_DTYPE_U16, u16, 1), 65535.0);
    int16_t i16[] = {1, -32768};
    cr_assert_eq(dtype_get(THEUS_DTYPE_I16, i16, 1), -32768.0);
    uint32_t u32[] = {1, UINT32_MAX};
    cr_assert_eq(dtype_get(THEUS_DTYPE_U32, u32, 1), 4294967295.0);
    int32_t i32[] = {1, INT32_MIN};
    cr_assert_eq(dtype_get(THEUS_DTYPE_I32, i32, 1), -2147483648.0);
    uint64_t u64[] = {1, UINT64_MAX, (1ull << 53) + 1};
    cr_assert_eq(dtype_get(THEUS_DTYPE_U64, u64, 1), 18446744073709551616.0);
    cr_assert_eq(dtype_get(THEUS_DTYPE_U64, u64, 2), 9007199254740992.0, "nearest double");
    int64_t i64[] = {1, INT64_MIN, -5};
    cr_assert_eq(dtype_get(THEUS_DTYPE_I64, i64, 1), -9223372036854775808.0);
    cr_assert_eq(dtype_get(THEUS_DTYPE_I64, i64, 2), -5.0);
    uint16_t f16[] = {0x3c00, 0xc200, 0x0001};
    cr_assert_eq(dtype_get(THEUS_DTYPE_F16, f16, 1), -3.0);
    cr_assert_eq(dtype_get(THEUS_DTYPE_F16, f16, 2), ldexp(1, -24));
    uint16_t bf[] = {0x3f80, 0x4040};
    cr_assert_eq(dtype_get(THEUS_DTYPE_BF16, bf, 1), 3.0);
    float f32[] = {0.5f, -0.1f};
    cr_assert_eq(dtype_get(THEUS_DTYPE_F32, f32, 1), (double)-0.1f);
    double f64[] = {0.5, 0.1};
    cr_assert_eq(dtype_get(THEUS_DTYPE_F64, f64, 1), 0.1);
    cr_assert(isnan(dtype_get(THEUS_DTYPE_COUNT, f64, 0)));
    cr_assert(isnan(dtype_get(THEUS_DTYPE_F64, NULL, 0)));
}

/* ---- dtype_check -------------------------------------------------------------------------- */

static theus_constraints cons(int has_min, double mn, int has_max, double mx, int finite)
{
    theus_constraints c = {.has_min = has_min, .has_max = has_max, .finite = finite,
                           .min = mn, .max = mx};
    return c;
}

#define NOC (-1.0) /* placeholder for an absent bound */

Test(dtype_check, empty_null_and_no_constraints)
{
    float f[] = {NAN, INFINITY};
    theus_constraints none = cons(0, NOC, 0, NOC, 0), fin = cons(0, NOC, 0, NOC, 1);
    cr_assert_eq(dtype_check(THEUS_DTYPE_F32, f, 2, &none), SIZE_MAX);
    cr_assert_eq(dtype_check(THEUS_DTYPE_F32, f, 2, NULL), SIZE_MAX);
    cr_assert_eq(dtype_check(THEUS_DTYPE_F32, f, 0, &fin), SIZE_MAX);
    cr_assert_eq(dtype_check(THEUS_DTYPE_F32, NULL, 0, &fin), SIZE_MAX);
    cr_assert_eq(dtype_check(THEUS_DTYPE_F32, f, 2, &fin), 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_COUNT, f, 2, &fin), 0, "bad dtype is refused");
    cr_assert_eq(dtype_check(THEUS_DTYPE_F32, NULL, 2, &fin), 0, "NULL buffer is refused");
}

/* The same value sequence checked as each float dtype (all values exact in each). */
#define FLOAT_CHECK_CASES(T, DT, ENC)                                                       \
    do {                                                                                    \
        T v[] = {ENC(0.0f), ENC(-0.0f), ENC(1.0f), ENC(-2.0f), ENC(0.5f)};                  \
        theus_constraints c;                                                                \
        c = cons(0, NOC, 0, NOC, 1);                                                        \
        cr_assert_eq(dtype_check(DT, v, 5, &c), SIZE_MAX, #DT " finite ok");                \
        c = cons(1, -2.0, 1, 1.0, 1);                                                       \
        cr_assert_eq(dtype_check(DT, v, 5, &c), SIZE_MAX, #DT " edge bounds pass");         \
        c = cons(1, -1.5, 0, NOC, 0);                                                       \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 3, #DT " below min");                       \
        c = cons(0, NOC, 1, 0.75, 0);                                                       \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 2, #DT " above max");                       \
        c = cons(1, 0.0, 0, NOC, 0);                                                        \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 3, #DT " -0 passes min 0");                 \
        c = cons(0, NOC, 1, -0.0, 0);                                                       \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 2, #DT " +0 passes max -0");                \
        c = cons(1, nextafter(-2.0, 0), 0, NOC, 0);                                         \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 3, #DT " just above -2");                   \
        c = cons(0, NOC, 1, nextafter(1.0, 0), 0);                                          \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 2, #DT " just below 1");                    \
        T w[] = {ENC(1.0f), ENC(NAN), ENC(INFINITY), ENC(-INFINITY)};                       \
        c = cons(0, NOC, 0, NOC, 1);                                                        \
        cr_assert_eq(dtype_check(DT, w, 4, &c), 1, #DT " NaN fails finite");                \
        cr_assert_eq(dtype_check(DT, w + 2, 2, &c), 0, #DT " inf fails finite");            \
        cr_assert_eq(dtype_check(DT, w + 3, 1, &c), 0, #DT " -inf fails finite");           \
        c = cons(1, 0.0, 0, NOC, 0);                                                        \
        cr_assert_eq(dtype_check(DT, w, 4, &c), 1, #DT " NaN fails min");                   \
        cr_assert_eq(dtype_check(DT, w + 2, 2, &c), 1, #DT " inf passes min, -inf fails");  \
        c = cons(0, NOC, 1, 10.0, 0);                                                       \
        cr_assert_eq(dtype_check(DT, w, 4, &c), 1, #DT " NaN fails max");                   \
        cr_assert_eq(dtype_check(DT, w + 2, 2, &c), 0, #DT " inf fails max");               \
        cr_assert_eq(dtype_check(DT, w + 3, 1, &c), SIZE_MAX, #DT " -inf passes max");      \
        c = cons(1, -INFINITY, 1, INFINITY, 0);                                             \
        cr_assert_eq(dtype_check(DT, w, 4, &c), 1, #DT " infinite bounds: only NaN fails"); \
        c = cons(1, NAN, 0, NOC, 0);                                                        \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 0, #DT " a NaN bound fails everything");    \
    } while (0)

#define ENC_F32(x) (x)
#define ENC_F64(x) ((double)(x))

Test(dtype_check, f32) { FLOAT_CHECK_CASES(float, THEUS_DTYPE_F32, ENC_F32); }
Test(dtype_check, f64) { FLOAT_CHECK_CASES(double, THEUS_DTYPE_F64, ENC_F64); }
Test(dtype_check, f16) { FLOAT_CHECK_CASES(uint16_t, THEUS_DTYPE_F16, theus_f32_to_f16); }
Test(dtype_check, bf16) { FLOAT_CHECK_CASES(uint16_t, THEUS_DTYPE_BF16, theus_f32_to_bf16); }

Test(dtype_check, f16_and_bf16_compare_their_exact_values)
{
    uint16_t h[] = {0x3c00, 0x3c01}; /* 1, 1 + 2^-10 */
    theus_constraints c = cons(0, NOC, 1, 1.0 + ldexp(1, -11), 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_F16, h, 2, &c), 1);
    c = cons(0, NOC, 1, 1.0 + ldexp(1, -10), 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_F16, h, 2, &c), SIZE_MAX);
    uint16_t b[] = {0x3f80, 0x3f81}; /* 1, 1 + 2^-7 */
    c = cons(0, NOC, 1, 1.0 + ldexp(1, -8), 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_BF16, b, 2, &c), 1);
    double big[] = {1e300, DBL_MAX};
    c = cons(0, NOC, 0, NOC, 1);
    cr_assert_eq(dtype_check(THEUS_DTYPE_F64, big, 2, &c), SIZE_MAX, "DBL_MAX is finite");
}

Test(dtype_check, integers_are_always_finite)
{
    theus_constraints c = cons(0, NOC, 0, NOC, 1);
    uint64_t u[] = {UINT64_MAX};
    int64_t s[] = {INT64_MIN};
    uint8_t b[] = {255};
    cr_assert_eq(dtype_check(THEUS_DTYPE_U64, u, 1, &c), SIZE_MAX);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, s, 1, &c), SIZE_MAX);
    cr_assert_eq(dtype_check(THEUS_DTYPE_BOOL, b, 1, &c), SIZE_MAX);
}

/* The same small values checked as every integer dtype; the signed ones also get -3. */
#define INT_CHECK_CASES(T, DT, SIGNED)                                                      \
    do {                                                                                    \
        T v[] = {5, 3, 0, 9, (T)(SIGNED ? -3 : 4)};                                         \
        theus_constraints c;                                                                \
        c = cons(1, SIGNED ? -3.0 : 0.0, 1, 9.0, 0);                                        \
        cr_assert_eq(dtype_check(DT, v, 5, &c), SIZE_MAX, #DT " edge bounds pass");         \
        c = cons(1, 0.5, 0, NOC, 0);                                                        \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 2, #DT " 0 < 0.5");                         \
        c = cons(1, 3.0, 0, NOC, 0);                                                        \
        cr_assert_eq(dtype_check(DT, v, 5, &c), SIGNED ? 2 : 2, #DT " min 3");              \
        c = cons(1, -0.5, 0, NOC, 0);                                                       \
        cr_assert_eq(dtype_check(DT, v, 5, &c), SIGNED ? 4 : SIZE_MAX, #DT " min -0.5");    \
        c = cons(0, NOC, 1, 8.999, 0);                                                      \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 3, #DT " 9 > 8.999");                       \
        c = cons(0, NOC, 1, 4.5, 0);                                                        \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 0, #DT " 5 > 4.5");                         \
        c = cons(0, NOC, 1, -0.5, 0);                                                       \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 0, #DT " max -0.5");                        \
        c = cons(1, -INFINITY, 1, INFINITY, 0);                                             \
        cr_assert_eq(dtype_check(DT, v, 5, &c), SIZE_MAX, #DT " infinite bounds");          \
        c = cons(1, INFINITY, 0, NOC, 0);                                                   \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 0, #DT " min +inf");                        \
        c = cons(0, NOC, 1, -INFINITY, 0);                                                  \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 0, #DT " max -inf");                        \
        c = cons(1, 1e30, 0, NOC, 0);                                                       \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 0, #DT " min beyond the type");             \
        c = cons(1, -1e30, 1, 1e30, 0);                                                     \
        cr_assert_eq(dtype_check(DT, v, 5, &c), SIZE_MAX, #DT " bounds beyond the type");   \
        c = cons(1, NAN, 0, NOC, 0);                                                        \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 0, #DT " NaN min");                         \
        c = cons(0, NOC, 1, NAN, 0);                                                        \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 0, #DT " NaN max");                         \
        c = cons(1, 6.0, 1, 5.0, 0);                                                        \
        cr_assert_eq(dtype_check(DT, v, 5, &c), 0, #DT " empty range");                     \
        c = cons(1, 4.5, 1, 5.5, 0);                                                        \
        cr_assert_eq(dtype_check(DT, v, 1, &c), SIZE_MAX, #DT " 5 in [4.5, 5.5]");          \
        cr_assert_eq(dtype_check(DT, v, 2, &c), 1, #DT " 3 not in [4.5, 5.5]");             \
    } while (0)

Test(dtype_check, u8) { INT_CHECK_CASES(uint8_t, THEUS_DTYPE_U8, 0); }
Test(dtype_check, i8) { INT_CHECK_CASES(int8_t, THEUS_DTYPE_I8, 1); }
Test(dtype_check, u16) { INT_CHECK_CASES(uint16_t, THEUS_DTYPE_U16, 0); }
Test(dtype_check, i16) { INT_CHECK_CASES(int16_t, THEUS_DTYPE_I16, 1); }
Test(dtype_check, u32) { INT_CHECK_CASES(uint32_t, THEUS_DTYPE_U32, 0); }
Test(dtype_check, i32) { INT_CHECK_CASES(int32_t, THEUS_DTYPE_I32, 1); }
Test(dtype_check, u64) { INT_CHECK_CASES(uint64_t, THEUS_DTYPE_U64, 0); }
Test(dtype_check, i64) { INT_CHECK_CASES(int64_t, THEUS_DTYPE_I64, 1); }

Test(dtype_check, narrow_type_extremes)
{
    int8_t i8[] = {INT8_MIN, INT8_MAX};
    theus_constraints c = cons(1, -128.0, 1, 127.0, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I8, i8, 2, &c), SIZE_MAX);
    c = cons(1, -127.5, 0, NOC, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I8, i8, 2, &c), 0);
    c = cons(0, NOC, 1, 126.9, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I8, i8, 2, &c), 1);
    uint32_t u32[] = {0, UINT32_MAX};
    c = cons(0, NOC, 1, 4294967294.5, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_U32, u32, 2, &c), 1);
    c = cons(0, NOC, 1, 4294967295.0, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_U32, u32, 2, &c), SIZE_MAX);
    int32_t i32[] = {INT32_MIN, INT32_MAX};
    c = cons(1, -2147483648.0, 1, 2147483647.0, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I32, i32, 2, &c), SIZE_MAX);
    c = cons(1, -2147483647.5, 0, NOC, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I32, i32, 2, &c), 0);
}

Test(dtype_check, bool_reads_any_nonzero_byte_as_one)
{
    unsigned char b[] = {0, 1, 0, 200};
    theus_constraints c = cons(0, NOC, 1, 0.0, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_BOOL, b, 4, &c), 1);
    c = cons(0, NOC, 1, 1.0, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_BOOL, b, 4, &c), SIZE_MAX, "200 is true, i.e. 1");
    c = cons(1, 0.5, 0, NOC, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_BOOL, b, 4, &c), 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_BOOL, b + 1, 1, &c), SIZE_MAX);
    c = cons(1, 2.0, 0, NOC, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_BOOL, b + 3, 1, &c), 0);
}

Test(dtype_check, i64_near_two_pow_53)
{
    const int64_t p53 = (int64_t)1 << 53;
    int64_t v[] = {p53 - 1, p53, p53 + 1, p53 + 2};
    /* (double)(2^53 + 1) == 2^53: a check through doubles would let the third one pass. */
    theus_constraints c = cons(0, NOC, 1, 9007199254740992.0, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, v, 4, &c), 2);
    c = cons(1, 9007199254740994.0, 0, NOC, 0); /* 2^53 + 2 */
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, v, 4, &c), 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, v + 3, 1, &c), SIZE_MAX);
    int64_t w[] = {p53 + 1};
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, w, 1, &c), 0, "2^53+1 < 2^53+2");
    int64_t n[] = {-p53 - 1};
    c = cons(1, -9007199254740992.0, 0, NOC, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, n, 1, &c), 0, "-2^53-1 < -2^53");
    uint64_t u[] = {(uint64_t)p53, (uint64_t)p53 + 1};
    c = cons(0, NOC, 1, 9007199254740992.0, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_U64, u, 2, &c), 1);
}

Test(dtype_check, int64_and_uint64_extremes)
{
    const double two63 = 9223372036854775808.0, below63 = 9223372036854774784.0; /* 2^63-1024 */
    int64_t s[] = {INT64_MIN, INT64_MAX};
    theus_constraints c = cons(1, -two63, 1, two63, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, s, 2, &c), SIZE_MAX);
    c = cons(1, (double)INT64_MIN, 1, (double)INT64_MAX, 0); /* -2^63, 2^63 as doubles */
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, s, 2, &c), SIZE_MAX);
    c = cons(0, NOC, 1, below63, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, s, 2, &c), 1, "INT64_MAX > 2^63-1024");
    int64_t s2[] = {9223372036854774784, 9223372036854774785};
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, s2, 2, &c), 1);
    c = cons(1, -below63, 0, NOC, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, s, 2, &c), 0, "INT64_MIN < -(2^63-1024)");
    c = cons(1, -two63 * 2, 1, two63 * 2, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, s, 2, &c), SIZE_MAX);
    c = cons(1, two63, 0, NOC, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, s + 1, 1, &c), 0, "INT64_MAX < 2^63");
    c = cons(0, NOC, 1, nextafter(-two63, -INFINITY), 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I64, s, 1, &c), 0, "INT64_MIN > below -2^63");

    const double two64 = 18446744073709551616.0, below64 = 18446744073709549568.0;
    uint64_t u[] = {0, UINT64_MAX};
    c = cons(1, 0.0, 1, two64, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_U64, u, 2, &c), SIZE_MAX);
    c = cons(1, -0.0, 1, (double)UINT64_MAX, 0); /* == 2^64 */
    cr_assert_eq(dtype_check(THEUS_DTYPE_U64, u, 2, &c), SIZE_MAX);
    c = cons(0, NOC, 1, below64, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_U64, u, 2, &c), 1, "UINT64_MAX > 2^64-2048");
    uint64_t u2[] = {18446744073709549568u, 18446744073709549569u};
    cr_assert_eq(dtype_check(THEUS_DTYPE_U64, u2, 2, &c), 1);
    c = cons(1, two64, 0, NOC, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_U64, u + 1, 1, &c), 0, "UINT64_MAX < 2^64");
    c = cons(1, below64, 0, NOC, 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_U64, u, 2, &c), 0);
    cr_assert_eq(dtype_check(THEUS_DTYPE_U64, u + 1, 1, &c), SIZE_MAX);
}

Test(dtype_check, first_violation_in_a_long_array)
{
    enum { N = 100000 };
    float *f = calloc(N, sizeof *f);
    int32_t *v = calloc(N, sizeof *v);
    theus_constraints c = cons(1, -1.0, 1, 1.0, 1);
    cr_assert_eq(dtype_check(THEUS_DTYPE_F32, f, N, &c), SIZE_MAX);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I32, v, N, &c), SIZE_MAX);
    f[77777] = NAN;
    f[88888] = 2.0f;
    v[55555] = -2;
    v[66666] = 2;
    cr_assert_eq(dtype_check(THEUS_DTYPE_F32, f, N, &c), 77777);
    cr_assert_eq(dtype_check(THEUS_DTYPE_I32, v, N, &c), 55555);
    free(f);
    free(v);
}
