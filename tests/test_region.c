/* Unit tests of src/region.h: resolving regions against a shape, overlap and intersection,
 * and region_transfer (the element mover of replay, reads and overlays) checked against a
 * naive element-by-element reference on random frames and sub-regions. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "dtype.h"
#include "region.h"

static theus_region reg(int ndim, const int64_t *start, const int64_t *stop)
{
    theus_region r;
    memset(&r, 0, sizeof r);
    r.ndim = ndim;
    for (int d = 0; d < ndim; d++) {
        r.start[d] = start[d];
        r.stop[d] = stop[d];
    }
    return r;
}

static theus_region reg1(int64_t a, int64_t b)
{
    return reg(1, (int64_t[]){a}, (int64_t[]){b});
}

static theus_region reg2(int64_t a0, int64_t b0, int64_t a1, int64_t b1)
{
    return reg(2, (int64_t[]){a0, a1}, (int64_t[]){b0, b1});
}

/* A region filled with a recognisable pattern, to see that a refused resolve leaves it. */
static theus_region sentinel(void)
{
    theus_region r;
    memset(&r, 0x5a, sizeof r);
    return r;
}

/* ---- region_resolve ----------------------------------------------------------------- */

Test(region_resolve, null_is_the_whole_shape)
{
    const int64_t shape[3] = {4, 5, 6};
    theus_region out = sentinel();
    char why[128] = "";
    cr_assert_eq(region_resolve(3, shape, NULL, &out, why, sizeof why), THEUS_OK);
    cr_assert_eq(out.ndim, 3);
    for (int d = 0; d < 3; d++) {
        cr_assert_eq(out.start[d], 0);
        cr_assert_eq(out.stop[d], shape[d]);
    }
    cr_assert_eq(region_nelems(&out), (size_t)(4 * 5 * 6));
}

Test(region_resolve, scalar_whole_and_explicit)
{
    theus_region out = sentinel();
    char why[128] = "";
    cr_assert_eq(region_resolve(0, NULL, NULL, &out, why, sizeof why), THEUS_OK);
    cr_assert_eq(out.ndim, 0);
    cr_assert_eq(region_nelems(&out), 1u);

    theus_region in;
    memset(&in, 0, sizeof in);
    out = sentinel();
    cr_assert_eq(region_resolve(0, NULL, &in, &out, why, sizeof why), THEUS_OK);
    cr_assert_eq(out.ndim, 0);
    cr_assert_eq(region_nelems(&out), 1u);

    in.ndim = 1;
    in.stop[0] = 1;
    out = sentinel();
    cr_assert_eq(region_resolve(0, NULL, &in, &out, why, sizeof why), THEUS_EINVAL);
}

Test(region_resolve, explicit_region_inside_is_copied)
{
    const int64_t shape[2] = {7, 9};
    theus_region in = reg2(1, 7, 0, 3);
    theus_region out = sentinel();
    char why[128] = "";
    cr_assert_eq(region_resolve(2, shape, &in, &out, why, sizeof why), THEUS_OK);
    cr_assert_eq(out.ndim, 2);
    cr_assert_eq(out.start[0], 1);
    cr_assert_eq(out.stop[0], 7);
    cr_assert_eq(out.start[1], 0);
    cr_assert_eq(out.stop[1], 3);
    /* Dimensions past the rank are cleared, so regions compare equal byte for byte. */
    for (int d = 2; d < THEUS_MAX_DIMS; d++) {
        cr_assert_eq(out.start[d], 0);
        cr_assert_eq(out.stop[d], 0);
    }
    cr_assert_eq(region_nelems(&out), 18u);
}

static void expect_refused(int ndim, const int64_t *shape, theus_region in)
{
    theus_region out = sentinel(), before = sentinel();
    char why[160] = "";
    cr_assert_eq(region_resolve(ndim, shape, &in, &out, why, sizeof why), THEUS_EINVAL);
    cr_assert_neq(why[0], '\0', "a refusal says why");
    cr_assert_eq(memcmp(&out, &before, sizeof out), 0, "a refused region leaves *out alone");
}

Test(region_resolve, rank_mismatch)
{
    const int64_t shape[2] = {4, 4};
    expect_refused(2, shape, reg1(0, 4));
    expect_refused(2, shape, reg(3, (int64_t[]){0, 0, 0}, (int64_t[]){1, 1, 1}));
    expect_refused(2, shape, reg(0, NULL, NULL));
}

Test(region_resolve, out_of_bounds)
{
    const int64_t shape[2] = {4, 6};
    expect_refused(2, shape, reg2(0, 5, 0, 6));
    expect_refused(2, shape, reg2(0, 4, 0, 7));
    expect_refused(2, shape, reg2(4, 5, 0, 1));
    expect_refused(2, shape, reg2(0, 4, 2, INT64_MAX));
}

Test(region_resolve, negative_start)
{
    const int64_t shape[2] = {4, 6};
    expect_refused(2, shape, reg2(-1, 2, 0, 6));
    expect_refused(2, shape, reg2(0, 2, -3, -1));
    expect_refused(2, shape, reg2(0, 2, INT64_MIN, 1));
}

Test(region_resolve, start_after_stop)
{
    const int64_t shape[2] = {4, 6};
    expect_refused(2, shape, reg2(3, 2, 0, 6));
    expect_refused(2, shape, reg2(0, 4, 6, 5));
}

Test(region_resolve, empty_regions_are_valid)
{
    const int64_t shape[2] = {4, 6};
    char why[128] = "";
    const theus_region cases[] = {reg2(0, 0, 0, 6), reg2(4, 4, 0, 6), reg2(1, 3, 6, 6),
                                  reg2(2, 2, 3, 3)};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        theus_region out = sentinel();
        cr_assert_eq(region_resolve(2, shape, &cases[i], &out, why, sizeof why), THEUS_OK,
                     "case %zu", i);
        cr_assert_eq(region_nelems(&out), 0u, "case %zu", i);
    }
    /* A zero-sized dimension: the whole field is empty, and [0, 0) is its only range. */
    const int64_t zshape[2] = {3, 0};
    theus_region out = sentinel();
    cr_assert_eq(region_resolve(2, zshape, NULL, &out, why, sizeof why), THEUS_OK);
    cr_assert_eq(region_nelems(&out), 0u);
    theus_region in = reg2(0, 3, 0, 0);
    cr_assert_eq(region_resolve(2, zshape, &in, &out, why, sizeof why), THEUS_OK);
    expect_refused(2, zshape, reg2(0, 3, 0, 1));
}

Test(region_resolve, tiny_why_buffer_is_not_overrun)
{
    const int64_t shape[1] = {4};
    char why[8];
    memset(why, 'x', sizeof why);
    theus_region in = reg1(0, 99);
    theus_region out;
    cr_assert_eq(region_resolve(1, shape, &in, &out, why, 4), THEUS_EINVAL);
    cr_assert_eq(why[3], '\0');
    for (size_t i = 4; i < sizeof why; i++)
        cr_assert_eq(why[i], 'x');
}

/* ---- overlap, intersection, union box, format --------------------------------------- */

Test(region_overlap, basic_1d)
{
    theus_region a = reg1(0, 4), b = reg1(3, 8), c = reg1(4, 8), e = reg1(2, 2);
    cr_assert(region_overlap(&a, &b));
    cr_assert(region_overlap(&b, &a));
    cr_assert_not(region_overlap(&a, &c), "touching edges share no element");
    cr_assert_not(region_overlap(&c, &a));
    cr_assert(region_overlap(&a, &a));
    cr_assert_not(region_overlap(&e, &a), "an empty region overlaps nothing");
    cr_assert_not(region_overlap(&a, &e));
    cr_assert_not(region_overlap(&e, &e));
}

Test(region_overlap, multi_dimensional)
{
    theus_region a = reg2(0, 4, 0, 4);
    theus_region b = reg2(3, 6, 3, 6);   /* corner element [3,3] shared */
    theus_region c = reg2(4, 6, 0, 4);   /* touches along rows */
    theus_region d = reg2(0, 4, 4, 9);   /* touches along columns */
    theus_region e = reg2(4, 6, 4, 6);   /* touches at a corner only */
    theus_region f = reg2(1, 2, 0, 0);   /* empty in dimension 1 */
    theus_region g = reg2(1, 2, 10, 12); /* overlaps in dimension 0 only */
    cr_assert(region_overlap(&a, &b));
    cr_assert_not(region_overlap(&a, &c));
    cr_assert_not(region_overlap(&a, &d));
    cr_assert_not(region_overlap(&a, &e));
    cr_assert_not(region_overlap(&a, &f));
    cr_assert_not(region_overlap(&a, &g));
    cr_assert_not(region_overlap(&g, &a));
}

Test(region_overlap, scalars_always_overlap)
{
    theus_region s = reg(0, NULL, NULL), t = reg(0, NULL, NULL);
    cr_assert(region_overlap(&s, &t));
    theus_region out = sentinel();
    cr_assert(region_intersect(&s, &t, &out));
    cr_assert_eq(out.ndim, 0);
    cr_assert_eq(region_nelems(&out), 1u);
}

Test(region_intersect, results)
{
    theus_region out;
    theus_region a = reg2(0, 4, 2, 8), b = reg2(3, 6, 0, 5);
    cr_assert(region_intersect(&a, &b, &out));
    cr_assert_eq(out.ndim, 2);
    cr_assert_eq(out.start[0], 3);
    cr_assert_eq(out.stop[0], 4);
    cr_assert_eq(out.start[1], 2);
    cr_assert_eq(out.stop[1], 5);
    cr_assert_eq(region_nelems(&out), 3u);

    theus_region c = reg2(4, 6, 0, 5); /* touches a */
    cr_assert_not(region_intersect(&a, &c, &out));
    theus_region e = reg2(1, 1, 0, 8);
    cr_assert_not(region_intersect(&a, &e, &out));
    /* Intersecting with itself is itself; containment gives the inner region. */
    cr_assert(region_intersect(&a, &a, &out));
    cr_assert_eq(memcmp(&out, &a, sizeof out), 0);
    theus_region inner = reg2(1, 2, 3, 4);
    cr_assert(region_intersect(&a, &inner, &out));
    cr_assert_eq(memcmp(&out, &inner, sizeof out), 0);
}

Test(region_intersect, agrees_with_overlap_on_random_boxes)
{
    uint64_t s = 0x1234567ull;
    for (int it = 0; it < 2000; it++) {
        int n = 1 + (int)(it % 4);
        theus_region a, b, out;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        a.ndim = b.ndim = n;
        int expect = 1;
        for (int d = 0; d < n; d++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            a.start[d] = (int64_t)((s >> 33) % 6);
            a.stop[d] = a.start[d] + (int64_t)((s >> 40) % 4);
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            b.start[d] = (int64_t)((s >> 33) % 6);
            b.stop[d] = b.start[d] + (int64_t)((s >> 40) % 4);
            /* Brute force: do the ranges share an integer? */
            int share = 0;
            for (int64_t x = 0; x < 12; x++)
                share |= x >= a.start[d] && x < a.stop[d] && x >= b.start[d] && x < b.stop[d];
            expect &= share;
        }
        cr_assert_eq(!!region_overlap(&a, &b), expect, "iteration %d", it);
        cr_assert_eq(!!region_intersect(&a, &b, &out), expect, "iteration %d", it);
    }
}

Test(region_union_box, grows_to_hold_both)
{
    theus_region acc = reg2(2, 4, 5, 6);
    theus_region r = reg2(0, 3, 7, 9);
    region_union_box(&acc, &r);
    cr_assert_eq(acc.start[0], 0);
    cr_assert_eq(acc.stop[0], 4);
    cr_assert_eq(acc.start[1], 5);
    cr_assert_eq(acc.stop[1], 9);
}

Test(region_format, text)
{
    char buf[64];
    theus_region r = reg2(0, 4, 2, 3);
    region_format(&r, buf, sizeof buf);
    cr_assert_str_eq(buf, "[0:4, 2:3]");
    theus_region s = reg(0, NULL, NULL);
    region_format(&s, buf, sizeof buf);
    cr_assert_str_eq(buf, "[]");
    char small[6];
    region_format(&r, small, sizeof small);
    cr_assert_eq(strlen(small), sizeof small - 1, "truncated, still terminated");
    cr_assert_eq(strncmp(small, "[0:4, 2:3]", sizeof small - 1), 0);
}

/* ---- region_transfer against a naive reference -------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_u64(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545f4914f6cdd1dull;
}

static int64_t rand_in(int64_t lo, int64_t hi) /* [lo, hi] */
{
    return lo + (int64_t)(next_u64() % (uint64_t)(hi - lo + 1));
}

/* Offset of the global coordinate @idx inside frame @f laid out C-contiguously. */
static size_t frame_offset(const theus_region *f, const int64_t *idx)
{
    size_t off = 0;
    for (int d = 0; d < f->ndim; d++)
        off = off * (size_t)(f->stop[d] - f->start[d]) + (size_t)(idx[d] - f->start[d]);
    return off;
}

/* Naive element-wise reference of one element, per dtype, without dtype_add. */
static void ref_apply(theus_dtype dt, delta_op op, unsigned char *dst, const unsigned char *src)
{
    size_t es = theus_dtype_size(dt);
    if (op == DELTA_ASSIGN) {
        memcpy(dst, src, es);
        return;
    }
    switch (dt) {
    case THEUS_DTYPE_BOOL: *dst = (unsigned char)((*dst != 0) || (*src != 0)); break;
    case THEUS_DTYPE_U8: *dst = (uint8_t)(*dst + *src); break;
    case THEUS_DTYPE_I16: {
        int16_t a, b;
        memcpy(&a, dst, 2);
        memcpy(&b, src, 2);
        uint16_t c = (uint16_t)((uint16_t)a + (uint16_t)b);
        memcpy(dst, &c, 2);
        break;
    }
    case THEUS_DTYPE_I32: {
        uint32_t a, b;
        memcpy(&a, dst, 4);
        memcpy(&b, src, 4);
        a += b;
        memcpy(dst, &a, 4);
        break;
    }
    case THEUS_DTYPE_U64: {
        uint64_t a, b;
        memcpy(&a, dst, 8);
        memcpy(&b, src, 8);
        a += b;
        memcpy(dst, &a, 8);
        break;
    }
    case THEUS_DTYPE_F32: {
        float a, b;
        memcpy(&a, dst, 4);
        memcpy(&b, src, 4);
        a += b;
        memcpy(dst, &a, 4);
        break;
    }
    case THEUS_DTYPE_F64: {
        double a, b;
        memcpy(&a, dst, 8);
        memcpy(&b, src, 8);
        a += b;
        memcpy(dst, &a, 8);
        break;
    }
    default: cr_assert_fail("no reference ADD for dtype %d", (int)dt);
    }
}

/* Fill @n elements of @dt with values whose sums are exact (small integers for floats,
 * any bits for integers). */
static void fill_values(theus_dtype dt, void *buf, size_t n)
{
    unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        uint64_t x = next_u64();
        switch (dt) {
        case THEUS_DTYPE_BOOL: b[i] = (unsigned char)(x & 1); break;
        case THEUS_DTYPE_F32: {
            float v = (float)((int64_t)(x % 2001) - 1000);
            memcpy(b + 4 * i, &v, 4);
            break;
        }
        case THEUS_DTYPE_F64: {
            double v = (double)((int64_t)(x % 200001) - 100000) * 0.5;
            memcpy(b + 8 * i, &v, 8);
            break;
        }
        default: memcpy(b + theus_dtype_size(dt) * i, &x, theus_dtype_size(dt)); break;
        }
    }
}

typedef enum fold_mode {
    FOLD_RANDOM = 0,   /* frames and sub independent */
    FOLD_TRAILING,     /* trailing dimensions spanned fully by sub in both frames */
    FOLD_SRC_ONLY,     /* trailing dimensions full in the source frame only */
    FOLD_ALL           /* sub == both frames: one run */
} fold_mode;

/* Random frames @sf and @df in a global box, and @sub inside both. */
static void random_case(int n, fold_mode mode, theus_region *sf, theus_region *df,
                        theus_region *sub)
{
    memset(sf, 0, sizeof *sf);
    memset(df, 0, sizeof *df);
    memset(sub, 0, sizeof *sub);
    sf->ndim = df->ndim = sub->ndim = n;
    int cut = (int)rand_in(0, n - 1); /* dimensions >= cut are "full" in fold modes */
    for (int d = 0; d < n; d++) {
        int64_t ext = rand_in(1, n >= 4 ? 5 : 9);
        int full = (mode == FOLD_ALL) || (mode != FOLD_RANDOM && d >= cut);
        /* sub = [a, b); frames contain it. */
        int64_t a = rand_in(0, 4), b = a + rand_in(1, ext);
        sub->start[d] = a;
        sub->stop[d] = b;
        if (full && mode != FOLD_SRC_ONLY) {
            sf->start[d] = df->start[d] = a;
            sf->stop[d] = df->stop[d] = b;
        } else if (full) {
            sf->start[d] = a;
            sf->stop[d] = b;
            df->start[d] = a - rand_in(0, 2);
            df->stop[d] = b + rand_in(1, 3); /* strictly larger: cannot fold */
        } else {
            sf->start[d] = a - rand_in(0, 3);
            sf->stop[d] = b + rand_in(0, 3);
            df->start[d] = a - rand_in(0, 3);
            df->stop[d] = b + rand_in(0, 3);
        }
    }
}

/* Run region_transfer and the reference on the same inputs and compare all dst bytes. */
static void check_transfer(theus_dtype dt, delta_op op, const theus_region *sf,
                           const theus_region *df, const theus_region *sub, const char *what)
{
    size_t es = theus_dtype_size(dt);
    size_t ns = region_nelems(sf), nd = region_nelems(df), nsub = region_nelems(sub);
    unsigned char *src = malloc(ns * es + 1);
    unsigned char *dst = malloc(nd * es + 1);
    unsigned char *ref = malloc(nd * es + 1);
    cr_assert(src && dst && ref);
    fill_values(dt, src, ns);
    fill_values(dt, dst, nd);
    memcpy(ref, dst, nd * es);

    if (nsub) {
        int64_t idx[THEUS_MAX_DIMS];
        for (int d = 0; d < sub->ndim; d++)
            idx[d] = sub->start[d];
        for (size_t k = 0; k < nsub; k++) {
            ref_apply(dt, op, ref + frame_offset(df, idx) * es, src + frame_offset(sf, idx) * es);
            for (int d = sub->ndim - 1; d >= 0; d--) {
                if (++idx[d] < sub->stop[d])
                    break;
                idx[d] = sub->start[d];
            }
        }
    }
    region_transfer(dt, op, dst, df, src, sf, sub);
    for (size_t i = 0; i < nd * es; i++)
        cr_assert_eq(dst[i], ref[i], "%s: dtype %s op %d rank %d: byte %zu differs", what,
                     theus_dtype_name(dt), (int)op, sub->ndim, i);
    free(src);
    free(dst);
    free(ref);
}

Test(region_transfer, assign_random_all_ranks_and_sizes)
{
    static const theus_dtype dts[] = {THEUS_DTYPE_U8, THEUS_DTYPE_I16, THEUS_DTYPE_I32,
                                      THEUS_DTYPE_F64, THEUS_DTYPE_BF16};
    for (int n = 1; n <= 4; n++)
        for (int mode = FOLD_RANDOM; mode <= FOLD_ALL; mode++)
            for (int it = 0; it < 60; it++) {
                theus_region sf, df, sub;
                random_case(n, (fold_mode)mode, &sf, &df, &sub);
                check_transfer(dts[it % 5], DELTA_ASSIGN, &sf, &df, &sub, "assign");
            }
}

Test(region_transfer, add_random_all_ranks)
{
    static const theus_dtype dts[] = {THEUS_DTYPE_I32, THEUS_DTYPE_F64, THEUS_DTYPE_U8,
                                      THEUS_DTYPE_F32, THEUS_DTYPE_U64, THEUS_DTYPE_I16,
                                      THEUS_DTYPE_BOOL};
    for (int n = 1; n <= 4; n++)
        for (int mode = FOLD_RANDOM; mode <= FOLD_ALL; mode++)
            for (int it = 0; it < 70; it++) {
                theus_region sf, df, sub;
                random_case(n, (fold_mode)mode, &sf, &df, &sub);
                check_transfer(dts[it % 7], DELTA_ADD, &sf, &df, &sub, "add");
            }
}

Test(region_transfer, long_runs_take_the_vector_path)
{
    /* Runs long enough for the BLAS / vector add kernels, at odd offsets in the frames. */
    theus_region sf = reg2(0, 3, 0, 1000), df = reg2(1, 5, 3, 1003), sub = reg2(1, 3, 3, 1000);
    check_transfer(THEUS_DTYPE_F32, DELTA_ADD, &sf, &df, &sub, "long f32");
    check_transfer(THEUS_DTYPE_F64, DELTA_ADD, &sf, &df, &sub, "long f64");
    check_transfer(THEUS_DTYPE_I32, DELTA_ADD, &sf, &df, &sub, "long i32");
    theus_region whole = reg1(0, 4096);
    check_transfer(THEUS_DTYPE_F32, DELTA_ADD, &whole, &whole, &whole, "whole f32");
    check_transfer(THEUS_DTYPE_F64, DELTA_ASSIGN, &whole, &whole, &whole, "whole f64");
}

Test(region_transfer, folding_cases)
{
    /* Fully folded (contiguous copy of a whole 3-D frame). */
    theus_region w = reg(3, (int64_t[]){0, 0, 0}, (int64_t[]){3, 4, 5});
    check_transfer(THEUS_DTYPE_I32, DELTA_ASSIGN, &w, &w, &w, "whole 3d");
    /* Rows of the sub span both frames: dims 1..2 fold into one run per dim-0 index. */
    theus_region f = reg(3, (int64_t[]){0, 0, 0}, (int64_t[]){6, 4, 5});
    theus_region s = reg(3, (int64_t[]){2, 0, 0}, (int64_t[]){5, 4, 5});
    check_transfer(THEUS_DTYPE_F64, DELTA_ASSIGN, &f, &f, &s, "rows 3d");
    check_transfer(THEUS_DTYPE_F64, DELTA_ADD, &f, &f, &s, "rows 3d add");
    /* Last dim full in both, middle dim partial: run = last dim only, times middle ext. */
    theus_region m = reg(3, (int64_t[]){0, 1, 0}, (int64_t[]){6, 3, 5});
    check_transfer(THEUS_DTYPE_U8, DELTA_ASSIGN, &f, &f, &m, "middle partial");
    /* Last dim full in the source frame only: no folding. */
    theus_region sfr = reg(3, (int64_t[]){0, 0, 0}, (int64_t[]){6, 4, 5});
    theus_region dfr = reg(3, (int64_t[]){0, 0, 0}, (int64_t[]){6, 4, 7});
    check_transfer(THEUS_DTYPE_I16, DELTA_ASSIGN, &sfr, &dfr, &s, "src-only full");
    check_transfer(THEUS_DTYPE_I16, DELTA_ADD, &dfr, &sfr, &s, "dst-only full");
    /* Sub spans a full middle dim but not the last: folding must stop at the last dim. */
    theus_region p = reg(3, (int64_t[]){0, 0, 1}, (int64_t[]){6, 4, 4});
    check_transfer(THEUS_DTYPE_I32, DELTA_ADD, &f, &f, &p, "last partial");
    /* A region read out into its own frame (what backend reads do). */
    check_transfer(THEUS_DTYPE_F32, DELTA_ASSIGN, &f, &p, &p, "read out");
    /* Size-1 dimensions everywhere. */
    theus_region one = reg(4, (int64_t[]){0, 2, 0, 7}, (int64_t[]){1, 3, 1, 8});
    check_transfer(THEUS_DTYPE_U64, DELTA_ADD, &one, &one, &one, "all ones");
}

Test(region_transfer, scalars)
{
    theus_region s = reg(0, NULL, NULL);
    check_transfer(THEUS_DTYPE_F64, DELTA_ASSIGN, &s, &s, &s, "scalar assign");
    check_transfer(THEUS_DTYPE_I32, DELTA_ADD, &s, &s, &s, "scalar add i32");
    check_transfer(THEUS_DTYPE_F64, DELTA_ADD, &s, &s, &s, "scalar add f64");
}

Test(region_transfer, empty_sub_touches_nothing)
{
    theus_region f = reg2(0, 4, 0, 4);
    const theus_region empties[] = {reg2(1, 1, 0, 4), reg2(0, 4, 3, 3)};
    for (size_t i = 0; i < 2; i++) {
        int32_t dst[16], src[16], before[16];
        for (int k = 0; k < 16; k++) {
            dst[k] = before[k] = k;
            src[k] = 100 + k;
        }
        region_transfer(THEUS_DTYPE_I32, DELTA_ASSIGN, dst, &f, src, &f, &empties[i]);
        region_transfer(THEUS_DTYPE_I32, DELTA_ADD, dst, &f, src, &f, &empties[i]);
        cr_assert_eq(memcmp(dst, before, sizeof dst), 0);
    }
}

Test(region_transfer, add_wraps_and_rounds_half_floats)
{
    /* Integer adds wrap in the field's dtype. */
    uint8_t a[3] = {250, 1, 128}, b[3] = {10, 2, 128};
    theus_region r = reg1(0, 3);
    region_transfer(THEUS_DTYPE_U8, DELTA_ADD, a, &r, b, &r, &r);
    cr_assert_eq(a[0], (uint8_t)(250 + 10));
    cr_assert_eq(a[1], 3);
    cr_assert_eq(a[2], 0);
    /* f16 adds go through f32 and round back: 1 + 2^-11 is a tie that rounds to even (1). */
    uint16_t h[2] = {theus_f32_to_f16(1.0f), theus_f32_to_f16(2.0f)};
    uint16_t g[2] = {theus_f32_to_f16(0.00048828125f), theus_f32_to_f16(0.5f)};
    theus_region r2 = reg1(0, 2);
    region_transfer(THEUS_DTYPE_F16, DELTA_ADD, h, &r2, g, &r2, &r2);
    cr_assert_eq(theus_f16_to_f32(h[0]), 1.0f);
    cr_assert_eq(theus_f16_to_f32(h[1]), 2.5f);
}
