/* CPU/GPU parity: the same randomized transactions run on a state whose fields live in host
 * memory (CPU backend) and on states whose fields live in device and in pinned memory (CUDA
 * backend); after every commit every field must read back byte for byte the same. Uses only
 * the public API. The GPU suites skip at run time when no device answers; the harness and
 * the fallback checks run everywhere. Built with -DTHEUS_PARITY_STANDALONE it is a plain
 * program that runs the tests in one process, for compute-sanitizer (docs/gpu.md). */
#ifndef THEUS_PARITY_STANDALONE
#include <criterion/criterion.h>
#else
/* In-process runner with Criterion's names, for compute-sanitizer, which does not follow
 * Criterion's fork+exec'd test workers (see docs/gpu.md for the command line). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
typedef struct standalone_opts {
    bool disabled;
    int timeout;
} standalone_opts;
static void standalone_register(const char *suite, const char *name, void (*fn)(void),
                                standalone_opts o);
static void standalone_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s:%d: assertion failed: %s: ", file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}
static jmp_buf standalone_skip_jmp;
#define Test(suite, name, ...)                                                            \
    static void suite##_##name(void);                                                     \
    __attribute__((constructor)) static void suite##_##name##_register(void)              \
    {                                                                                     \
        standalone_opts o = {__VA_ARGS__};                                                \
        standalone_register(#suite, #name, suite##_##name, o);                            \
    }                                                                                     \
    static void suite##_##name(void)
#define cr_assert(c, ...)                                                                 \
    do {                                                                                  \
        if (!(c))                                                                         \
            standalone_fail(__FILE__, __LINE__, #c, "" __VA_ARGS__);                      \
    } while (0)
#define cr_assert_eq(a, b, ...) cr_assert((a) == (b), __VA_ARGS__)
#define cr_assert_neq(a, b, ...) cr_assert((a) != (b), __VA_ARGS__)
#define cr_assert_null(p, ...) cr_assert((p) == NULL, __VA_ARGS__)
#define cr_assert_not_null(p, ...) cr_assert((p) != NULL, __VA_ARGS__)
#define cr_skip_test(...) longjmp(standalone_skip_jmp, 1)
#endif
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <theus/theus.h>
#include <theus/theus_gpu.h>

/* ---- schemas -------------------------------------------------------------------------- */

typedef struct fdef {
    const char *name;
    theus_dtype dt;
    int ndim;
    int64_t shape[4];
    const char *extra;   /* more JSON members of the field, or NULL */
} fdef;

/* Every dtype, ranks 0 to 4, odd extents (rows that are not 16-byte multiples), and
 * constraints that always pass so that the GPU gatekeeper runs on every commit. */
static const fdef MIXED[] = {
    {"b", THEUS_DTYPE_BOOL, 2, {10, 13}, NULL},
    {"u8", THEUS_DTYPE_U8, 3, {3, 4, 37}, NULL},
    {"i8", THEUS_DTYPE_I8, 1, {301}, NULL},
    {"u16", THEUS_DTYPE_U16, 2, {17, 19}, NULL},
    {"i16", THEUS_DTYPE_I16, 4, {2, 3, 4, 5}, NULL},
    {"u32", THEUS_DTYPE_U32, 1, {1000}, NULL},
    {"i32", THEUS_DTYPE_I32, 2, {64, 64}, NULL},
    {"u64", THEUS_DTYPE_U64, 3, {5, 6, 7}, NULL},
    {"i64", THEUS_DTYPE_I64, 0, {0}, NULL},
    {"h", THEUS_DTYPE_F16, 4, {4, 5, 6, 3}, NULL},
    {"bh", THEUS_DTYPE_BF16, 2, {33, 17}, NULL},
    {"f", THEUS_DTYPE_F32, 3, {9, 31, 17}, NULL},
    {"d", THEUS_DTYPE_F64, 2, {7, 129}, NULL},
    {"loss", THEUS_DTYPE_F32, 1, {8}, "\"constraints\": {\"finite\": true}"},
    {"cnt", THEUS_DTYPE_I32, 1, {16},
     "\"constraints\": {\"min\": -2147483648, \"max\": 2147483647}"},
    {"ucnt", THEUS_DTYPE_U64, 1, {9}, "\"constraints\": {\"min\": 0}"},
    {"hc", THEUS_DTYPE_F16, 1, {40}, "\"constraints\": {\"finite\": true, \"min\": -1e9}"},
};
#define NMIXED (sizeof MIXED / sizeof MIXED[0])

static const char *const DTYPE_NAMES[THEUS_DTYPE_COUNT] = {
    "bool", "u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f16", "bf16", "f32", "f64",
};

static char *schema_json(const fdef *f, size_t n, const char *placement)
{
    size_t cap = 256 + n * 256, len = 0;
    char *s = malloc(cap);
    cr_assert_not_null(s);
    len += (size_t)snprintf(s + len, cap - len, "{\"name\": \"parity\", \"fields\": {");
    for (size_t i = 0; i < n; i++) {
        len += (size_t)snprintf(s + len, cap - len, "%s\"%s\": {\"dtype\": \"%s\", \"shape\": [",
                                i ? ", " : "", f[i].name, DTYPE_NAMES[f[i].dt]);
        for (int d = 0; d < f[i].ndim; d++)
            len += (size_t)snprintf(s + len, cap - len, "%s%lld", d ? ", " : "",
                                    (long long)f[i].shape[d]);
        len += (size_t)snprintf(s + len, cap - len, "], \"placement\": \"%s\"%s%s}", placement,
                                f[i].extra ? ", " : "", f[i].extra ? f[i].extra : "");
    }
    snprintf(s + len, cap - len, "}}");
    return s;
}

static size_t field_nelems(const fdef *f)
{
    size_t n = 1;
    for (int d = 0; d < f->ndim; d++)
        n *= (size_t)f->shape[d];
    return n;
}

/* ---- the harness: one state per placement, same operations on each ------------------- */

#define MAX_STATES 3

typedef struct harness {
    theus_state *st[MAX_STATES];
    const char *placement[MAX_STATES];
    int n;
    const fdef *fields;
    size_t nfields;
    uint64_t rng;
    int step;
} harness;

static uint64_t next_u64(harness *h)
{
    uint64_t z = (h->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t below(harness *h, uint64_t n)
{
    return n ? next_u64(h) % n : 0;
}

static void open_states(harness *h, const fdef *fields, size_t nfields,
                        const char *const *placements, int n, uint64_t seed)
{
    memset(h, 0, sizeof *h);
    h->fields = fields;
    h->nfields = nfields;
    h->n = n;
    h->rng = seed;
    for (int s = 0; s < n; s++) {
        char *json = schema_json(fields, nfields, placements[s]);
        int rc = theus_state_create(json, NULL, &h->st[s]);
        free(json);
        cr_assert_eq(rc, THEUS_OK, "create (%s): %s", placements[s], theus_last_error_message());
        h->placement[s] = placements[s];
        /* With a GPU the placement must be real, or the test compares the CPU with itself. */
        if (theus_gpu_available()) {
            for (size_t i = 0; i < nfields; i++) {
                theus_field_info fi;
                cr_assert_eq(theus_state_field_info(h->st[s], fields[i].name, &fi), THEUS_OK);
                cr_assert_eq(fi.placement, fi.requested, "field %s (%s) fell back to host",
                             fields[i].name, placements[s]);
            }
        }
    }
}

static void close_states(harness *h)
{
    for (int s = 0; s < h->n; s++)
        theus_state_destroy(h->st[s]);
}

/* Values that stay finite under a few hundred adds (no inf - inf, whose NaN payload is
 * the one thing the CPU and the GPU may legitimately spell differently), with subnormals
 * now and then to exercise the rounding paths. */
static void gen_values(harness *h, theus_dtype dt, void *buf, size_t n)
{
    unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = next_u64(h);
        int sub = (r >> 60) == 0; /* 1 in 16 */
        switch (dt) {
        case THEUS_DTYPE_BOOL: b[i] = (unsigned char)(r % 3); break; /* 2: a non-canonical true */
        case THEUS_DTYPE_U8: case THEUS_DTYPE_I8: b[i] = (unsigned char)r; break;
        case THEUS_DTYPE_U16: case THEUS_DTYPE_I16: {
            uint16_t v = (uint16_t)r;
            memcpy(b + 2 * i, &v, 2);
            break;
        }
        case THEUS_DTYPE_U32: case THEUS_DTYPE_I32: {
            uint32_t v = (uint32_t)r;
            memcpy(b + 4 * i, &v, 4);
            break;
        }
        case THEUS_DTYPE_U64: case THEUS_DTYPE_I64: memcpy(b + 8 * i, &r, 8); break;
        case THEUS_DTYPE_F16: {
            uint16_t e = sub ? 0 : (uint16_t)(1 + (r >> 8) % 17); /* below 8 */
            uint16_t v = (uint16_t)(((r & 1u) << 15) | (e << 10) | ((r >> 20) & 0x3ffu));
            memcpy(b + 2 * i, &v, 2);
            break;
        }
        case THEUS_DTYPE_BF16: {
            uint16_t e = sub ? 0 : (uint16_t)(100 + (r >> 8) % 31);
            uint16_t v = (uint16_t)(((r & 1u) << 15) | (e << 7) | ((r >> 20) & 0x7fu));
            memcpy(b + 2 * i, &v, 2);
            break;
        }
        case THEUS_DTYPE_F32: {
            uint32_t e = sub ? 0 : (uint32_t)(90 + (r >> 8) % 51);
            uint32_t v = (uint32_t)(((r & 1u) << 31) | (e << 23) | ((r >> 24) & 0x7fffffu));
            memcpy(b + 4 * i, &v, 4);
            break;
        }
        case THEUS_DTYPE_F64: {
            uint64_t e = sub ? 0 : 1000 + (r >> 8) % 51;
            uint64_t v = ((r & 1u) << 63) | (e << 52) | ((next_u64(h) >> 12) & 0xfffffffffffffull);
            memcpy(b + 8 * i, &v, 8);
            break;
        }
        default: break;
        }
    }
}

/* A random region of @f (NULL: the whole field, now and then); *n its element count. */
static const theus_region *rand_region(harness *h, const fdef *f, theus_region *r, size_t *n)
{
    *n = field_nelems(f);
    if (below(h, 8) == 0)
        return NULL;
    memset(r, 0, sizeof *r);
    r->ndim = f->ndim;
    size_t cnt = 1;
    for (int d = 0; d < f->ndim; d++) {
        int64_t ext = f->shape[d];
        if (below(h, 4) == 0) { /* a full extent, which the replay folds into its runs */
            r->start[d] = 0;
            r->stop[d] = ext;
        } else {
            r->start[d] = (int64_t)below(h, (uint64_t)ext);
            r->stop[d] = r->start[d] + 1 + (int64_t)below(h, (uint64_t)(ext - r->start[d]));
        }
        cnt *= (size_t)(r->stop[d] - r->start[d]);
    }
    *n = cnt;
    return r;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    cr_assert_not_null(p);
    return p;
}

/* Read region @r of @field from every state through @tx (or a fresh transaction when @tx
 * is NULL) and require the same status and the same bytes. */
static void same_read(harness *h, theus_tx **tx, const fdef *f, const theus_region *r, size_t n,
                      const char *when)
{
    const size_t nbytes = n * theus_dtype_size(f->dt);
    unsigned char *buf[MAX_STATES];
    int rc[MAX_STATES];
    for (int s = 0; s < h->n; s++) {
        buf[s] = xmalloc(nbytes);
        memset(buf[s], 0xa5, nbytes);
        theus_tx *t = tx ? tx[s] : NULL;
        if (!t)
            cr_assert_eq(theus_tx_begin(h->st[s], NULL, &t), THEUS_OK);
        rc[s] = theus_tx_read(t, f->name, r, buf[s], THEUS_MEM_HOST);
        if (!tx)
            theus_tx_abort(t);
    }
    for (int s = 1; s < h->n; s++) {
        cr_assert_eq(rc[s], rc[0], "step %d, %s: read of '%s' returned %d on %s but %d on %s",
                     h->step, when, f->name, rc[s], h->placement[s], rc[0], h->placement[0]);
        if (rc[0] != THEUS_OK)
            continue;
        for (size_t i = 0; i < nbytes; i++)
            cr_assert_eq(buf[s][i], buf[0][i],
                         "step %d, %s: field '%s' (%s) differs at byte %zu of %zu: %s 0x%02x, "
                         "%s 0x%02x", h->step, when, f->name, DTYPE_NAMES[f->dt], i, nbytes,
                         h->placement[s], buf[s][i], h->placement[0], buf[0][i]);
    }
    for (int s = 0; s < h->n; s++)
        free(buf[s]);
}

static void same_fields(harness *h, const char *when)
{
    for (size_t i = 0; i < h->nfields; i++)
        same_read(h, NULL, &h->fields[i], NULL, field_nelems(&h->fields[i]), when);
    uint64_t v0 = theus_state_version(h->st[0]);
    for (int s = 1; s < h->n; s++)
        cr_assert_eq(theus_state_version(h->st[s]), v0, "step %d: versions differ", h->step);
}

/* Stage the same delta in every transaction; all must succeed. */
static void same_stage(harness *h, theus_tx **tx, const fdef *f, const theus_region *r,
                       const void *payload, int add)
{
    for (int s = 0; s < h->n; s++) {
        int rc = add ? theus_tx_add(tx[s], f->name, r, payload, THEUS_MEM_HOST)
                     : theus_tx_write(tx[s], f->name, r, payload, THEUS_MEM_HOST);
        cr_assert_eq(rc, THEUS_OK, "step %d: %s of '%s' on %s: %s", h->step, add ? "add" : "write",
                     f->name, h->placement[s], theus_state_last_error(h->st[s]));
    }
}

static void same_commit(harness *h, theus_tx **tx, int expect)
{
    int rc0 = 0;
    for (int s = 0; s < h->n; s++) {
        uint64_t v = 0;
        int rc = theus_tx_commit(tx[s], &v);
        if (s == 0)
            rc0 = rc;
        cr_assert_eq(rc, rc0, "step %d: commit returned %d on %s but %d on %s (%s)", h->step, rc,
                     h->placement[s], rc0, h->placement[0], theus_state_last_error(h->st[s]));
        tx[s] = NULL;
    }
    cr_assert_eq(rc0, expect, "step %d: commit returned %d, expected %d: %s", h->step, rc0, expect,
                 theus_state_last_error(h->st[0]));
}

/* Initial values of a few fields (the creation-time path: stage, check, replay). */
static void init_some(harness *h)
{
    for (int k = 0; k < 3; k++) {
        const fdef *f = &h->fields[below(h, h->nfields)];
        size_t n = field_nelems(f);
        void *vals = xmalloc(n * theus_dtype_size(f->dt));
        gen_values(h, f->dt, vals, n);
        for (int s = 0; s < h->n; s++)
            cr_assert_eq(theus_state_init_field(h->st[s], f->name, vals, THEUS_MEM_HOST), THEUS_OK,
                         "init '%s' on %s: %s", f->name, h->placement[s],
                         theus_state_last_error(h->st[s]));
        free(vals);
    }
    same_fields(h, "after init");
}

/* One randomized step: a transaction of 1-6 writes and adds on random regions (so they
 * overlap each other and earlier commits), reads in between (read your writes), and then
 * an abort, a commit, or a competing commit that makes it conflict. */
static void random_step(harness *h)
{
    theus_tx *tx[MAX_STATES];
    theus_tx_options o = THEUS_TX_OPTIONS_INIT;
    o.isolation = below(h, 4) == 0 ? THEUS_ISOLATION_SNAPSHOT : THEUS_ISOLATION_SERIALIZABLE;
    for (int s = 0; s < h->n; s++)
        cr_assert_eq(theus_tx_begin(h->st[s], &o, &tx[s]), THEUS_OK);
    const fdef *first = NULL;
    theus_region first_r;
    const theus_region *first_rp = NULL;
    size_t first_n = 0;
    int nops = 1 + (int)below(h, 6);
    for (int k = 0; k < nops; k++) {
        const fdef *f = &h->fields[below(h, h->nfields)];
        theus_region r;
        size_t n;
        const theus_region *rp = rand_region(h, f, &r, &n);
        void *payload = xmalloc(n * theus_dtype_size(f->dt));
        gen_values(h, f->dt, payload, n);
        /* The first delta is an ASSIGN: a competing write over it must conflict (an ADD
         * never conflicts, whatever was committed since the base). */
        int add = (int)below(h, 2);
        same_stage(h, tx, f, rp, payload, first ? add : 0);
        free(payload);
        if (!first) {
            first = f;
            first_r = r;
            first_rp = rp ? &first_r : NULL;
            first_n = n;
        }
        if (below(h, 3) == 0) {
            const fdef *g = &h->fields[below(h, h->nfields)];
            theus_region q;
            size_t m;
            const theus_region *qp = rand_region(h, g, &q, &m);
            same_read(h, tx, g, qp, m, "read inside a transaction");
        }
    }
    uint64_t what = below(h, 10);
    if (what == 0) {
        for (int s = 0; s < h->n; s++)
            theus_tx_abort(tx[s]);
        return;
    }
    int expect = THEUS_OK;
    if (what == 1) {
        /* A competing transaction overwrites the first delta's region and commits first. */
        size_t n = first_rp ? first_n : field_nelems(first);
        void *payload = xmalloc(n * theus_dtype_size(first->dt));
        gen_values(h, first->dt, payload, n);
        theus_tx *other[MAX_STATES];
        for (int s = 0; s < h->n; s++)
            cr_assert_eq(theus_tx_begin(h->st[s], NULL, &other[s]), THEUS_OK);
        same_stage(h, other, first, first_rp, payload, 0);
        free(payload);
        same_commit(h, other, THEUS_OK);
        same_fields(h, "after the competing commit");
        expect = THEUS_ECONFLICT;
    }
    same_commit(h, tx, expect);
    same_fields(h, expect == THEUS_OK ? "after a commit" : "after a conflict");
}

static int env_steps(int dflt)
{
    const char *v = getenv("THEUS_PARITY_STEPS");
    int n = v ? atoi(v) : 0;
    return n > 0 ? n : dflt;
}

static void run_random(const char *const *placements, int nstates, uint64_t seed)
{
    harness h;
    open_states(&h, MIXED, NMIXED, placements, nstates, seed);
    init_some(&h);
    const int steps = env_steps(150);
    for (h.step = 0; h.step < steps; h.step++)
        random_step(&h);
    close_states(&h);
}

static const char *const GPU_PLACEMENTS[] = {"host", "device", "pinned"};

static void need_gpu(void)
{
    if (!theus_gpu_available())
        cr_skip_test("no GPU answers: device and pinned fields would live in host memory");
}

/* ---- GPU parity ----------------------------------------------------------------------- */

Test(cuda_parity, random_seed_1) { need_gpu(); run_random(GPU_PLACEMENTS, 3, 1); }
Test(cuda_parity, random_seed_2) { need_gpu(); run_random(GPU_PLACEMENTS, 3, 0x5eed0002); }
Test(cuda_parity, random_seed_3) { need_gpu(); run_random(GPU_PLACEMENTS, 3, 0xdeadbeefcafe); }

/* Large and extreme shapes: a million one-element rows, a 16 MiB contiguous run, narrow
 * and wide sub-regions, a 3-D gather. */
static const fdef BIG[] = {
    {"col", THEUS_DTYPE_U8, 2, {1 << 20, 2}, NULL},
    {"wide", THEUS_DTYPE_F32, 2, {2048, 2048}, NULL},
    {"cube", THEUS_DTYPE_F64, 3, {64, 64, 64}, NULL},
    {"hh", THEUS_DTYPE_BF16, 2, {1000, 1001}, NULL},
};

static theus_region reg2(int64_t a0, int64_t b0, int64_t a1, int64_t b1)
{
    theus_region r = {.ndim = 2};
    r.start[0] = a0;
    r.stop[0] = b0;
    r.start[1] = a1;
    r.stop[1] = b1;
    return r;
}

static theus_region reg3(int64_t a0, int64_t b0, int64_t a1, int64_t b1, int64_t a2, int64_t b2)
{
    theus_region r = {.ndim = 3};
    r.start[0] = a0;
    r.stop[0] = b0;
    r.start[1] = a1;
    r.stop[1] = b1;
    r.start[2] = a2;
    r.stop[2] = b2;
    return r;
}

static size_t reg_nelems(const theus_region *r)
{
    size_t n = 1;
    for (int d = 0; d < r->ndim; d++)
        n *= (size_t)(r->stop[d] - r->start[d]);
    return n;
}

static void one_delta(harness *h, const fdef *f, const theus_region *r, int add)
{
    size_t n = r ? reg_nelems(r) : field_nelems(f);
    void *payload = xmalloc(n * theus_dtype_size(f->dt));
    gen_values(h, f->dt, payload, n);
    theus_tx *tx[MAX_STATES];
    for (int s = 0; s < h->n; s++)
        cr_assert_eq(theus_tx_begin(h->st[s], NULL, &tx[s]), THEUS_OK);
    same_stage(h, tx, f, r, payload, add);
    free(payload);
    same_commit(h, tx, THEUS_OK);
    h->step++;
}

Test(cuda_parity, large_and_narrow_regions, .timeout = 300)
{
    need_gpu();
    harness h;
    open_states(&h, BIG, sizeof BIG / sizeof BIG[0], GPU_PLACEMENTS, 3, 42);
    const fdef *col = &BIG[0], *wide = &BIG[1], *cube = &BIG[2], *hh = &BIG[3];
    theus_region r;
    r = reg2(0, 1 << 20, 1, 2);            /* a million one-byte rows */
    one_delta(&h, col, &r, 0);
    one_delta(&h, col, NULL, 1);
    r = reg2(3, 1000003, 0, 1);
    one_delta(&h, col, &r, 1);
    one_delta(&h, wide, NULL, 0);          /* one 16 MiB run */
    r = reg2(1, 2047, 5, 2000);
    one_delta(&h, wide, &r, 1);
    r = reg2(0, 2048, 7, 8);
    one_delta(&h, wide, &r, 1);
    one_delta(&h, cube, NULL, 0);
    r = reg3(1, 63, 2, 60, 5, 6);
    one_delta(&h, cube, &r, 1);
    one_delta(&h, hh, NULL, 0);
    r = reg2(10, 990, 1, 1000);
    one_delta(&h, hh, &r, 1);
    same_fields(&h, "after the large deltas");
    /* Reads through each copy path: narrow gather, 2-D copy, 3-D gather, contiguous. */
    r = reg2(0, 2048, 3, 4);
    same_read(&h, NULL, wide, &r, reg_nelems(&r), "narrow column read");
    r = reg2(0, 2048, 0, 1000);
    same_read(&h, NULL, wide, &r, reg_nelems(&r), "wide rows read");
    r = reg3(1, 63, 2, 60, 5, 6);
    same_read(&h, NULL, cube, &r, reg_nelems(&r), "3-D read");
    r = reg2(100, 900, 0, 1001);
    same_read(&h, NULL, hh, &r, reg_nelems(&r), "contiguous read");
    r = reg2(5, (1 << 20) - 5, 1, 2);
    same_read(&h, NULL, col, &r, reg_nelems(&r), "a million one-byte rows read");
    close_states(&h);
}

/* Deltas of one transaction that overlap each other: the replay must apply them in order
 * (they fall into successive waves of the single launch). */
static const fdef OVER[] = {
    {"v", THEUS_DTYPE_I32, 1, {100}, NULL},
    {"h", THEUS_DTYPE_F16, 2, {16, 16}, NULL},
    {"c", THEUS_DTYPE_F32, 2, {300, 70}, NULL},
};

Test(cuda_parity, overlapping_deltas_in_one_commit)
{
    need_gpu();
    harness h;
    open_states(&h, OVER, 3, GPU_PLACEMENTS, 3, 7);
    const fdef *v = &OVER[0], *hf = &OVER[1], *c = &OVER[2];
    for (int round = 0; round < 4; round++) {
        theus_tx *tx[MAX_STATES];
        for (int s = 0; s < h.n; s++)
            cr_assert_eq(theus_tx_begin(h.st[s], NULL, &tx[s]), THEUS_OK);
        struct {
            const fdef *f;
            theus_region r;
            int whole, add;
        } ops[] = {
            {v, {.ndim = 1, .start = {0}, .stop = {50}}, 0, 0},
            {v, {.ndim = 1, .start = {25}, .stop = {75}}, 0, 1},
            {v, {.ndim = 1, .start = {25}, .stop = {75}}, 0, 1},
            {v, {.ndim = 1, .start = {70}, .stop = {80}}, 0, 0},
            {v, {0}, 1, 1},
            {hf, {0}, 1, 1},
            {hf, reg2(2, 5, 3, 9), 0, 0},
            {hf, reg2(0, 16, 4, 5), 0, 1},
            {c, reg2(0, 300, 10, 11), 0, 0},   /* columns interleave in memory but do */
            {c, reg2(0, 300, 11, 12), 0, 1},   /* not overlap: same wave */
            {c, reg2(0, 300, 10, 12), 0, 1},   /* overlaps both: next wave */
        };
        for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
            const theus_region *rp = ops[k].whole ? NULL : &ops[k].r;
            size_t n = rp ? reg_nelems(rp) : field_nelems(ops[k].f);
            void *payload = xmalloc(n * theus_dtype_size(ops[k].f->dt));
            gen_values(&h, ops[k].f->dt, payload, n);
            same_stage(&h, tx, ops[k].f, rp, payload, ops[k].add);
            free(payload);
        }
        same_read(&h, tx, v, NULL, 100, "read your overlapping writes");
        same_commit(&h, tx, THEUS_OK);
        same_fields(&h, "after overlapping deltas");
        h.step++;
    }
    close_states(&h);
}

/* Described batches (theus_tx_stage_batch, host arrays): on device and pinned fields the
 * arrays are uploaded, summarised and replayed by kernels; the result must match the CPU
 * backend byte for byte. Random batches (segments sharing blocks: the ordered kernel) and
 * batches of one segment per 4 KiB block (the parallel kernel), mixed with ordinary deltas. */
static const fdef BATCHF[] = {
    {"bf", THEUS_DTYPE_F32, 1, {70000}, NULL},
    {"bh", THEUS_DTYPE_BF16, 2, {300, 70}, NULL},
    {"bi", THEUS_DTYPE_I64, 1, {5000}, NULL},
    {"bu", THEUS_DTYPE_U8, 3, {10, 20, 30}, NULL},
    {"bb", THEUS_DTYPE_BOOL, 1, {999}, NULL},
};

static void same_batch(harness *h, theus_tx **tx, const fdef *f, int add, int spread)
{
    const size_t n = field_nelems(f), es = theus_dtype_size(f->dt);
    const size_t nseg = 1 + below(h, 200), pelems = n + 64;
    theus_batch_segment *g = xmalloc(nseg * sizeof *g);
    void *pay = xmalloc(pelems * es);
    gen_values(h, f->dt, pay, pelems);
    const uint64_t per_block = 4096 / es;
    for (size_t k = 0; k < nseg; k++) {
        uint64_t len = 1 + below(h, spread ? (per_block < 64 ? per_block : 64) : 300);
        if (len > n)
            len = n;
        uint64_t dst = below(h, n - len + 1);
        if (spread) {
            const uint64_t blocks = n / per_block;
            dst = blocks ? (k % blocks) * per_block : 0;
            if (dst + len > n)
                len = n - dst;
        }
        g[k] = (theus_batch_segment){.dst = (int64_t)dst, .length = (int64_t)len,
                                     .src = (int64_t)below(h, pelems - len + 1)};
    }
    for (int s = 0; s < h->n; s++) {
        int rc = theus_tx_stage_batch(tx[s], f->name, add ? THEUS_OP_ADD : THEUS_OP_ASSIGN, g, nseg,
                                      pay, pelems, THEUS_MEM_HOST);
        cr_assert_eq(rc, THEUS_OK, "step %d: batch on '%s' on %s: %s", h->step, f->name,
                     h->placement[s], theus_state_last_error(h->st[s]));
    }
    free(g);
    free(pay);
}

Test(cuda_parity, described_batches)
{
    need_gpu();
    harness h;
    const size_t nf = sizeof BATCHF / sizeof BATCHF[0];
    open_states(&h, BATCHF, nf, GPU_PLACEMENTS, 3, 11);
    for (int round = 0; round < 6; round++) {
        theus_tx *tx[MAX_STATES];
        for (int s = 0; s < h.n; s++)
            cr_assert_eq(theus_tx_begin(h.st[s], NULL, &tx[s]), THEUS_OK);
        for (size_t i = 0; i < nf; i++) {
            const fdef *f = &BATCHF[i];
            theus_region r;
            size_t n = 0;
            const theus_region *rp = rand_region(&h, f, &r, &n);
            void *payload = xmalloc(n * theus_dtype_size(f->dt) + 1);
            gen_values(&h, f->dt, payload, n);
            same_stage(&h, tx, f, rp, payload, round % 2);
            free(payload);
            same_batch(&h, tx, f, (round + (int)i) % 2, round >= 3);
            same_batch(&h, tx, f, 1, round >= 3);
            same_read(&h, tx, f, NULL, field_nelems(f), "read your batches");
        }
        same_commit(&h, tx, THEUS_OK);
        same_fields(&h, "after described batches");
        h.step++;
    }
    close_states(&h);
}

/* Reads into a buffer the GPU writes (THEUS_MEM_DEVICE): the staging buffer of a device
 * field is one. The read goes through the device-side gather and read-your-writes overlay;
 * the buffer is then committed, so the result shows in the parity of the fields. */
static const fdef DEVREAD[] = {
    {"src", THEUS_DTYPE_F32, 2, {50, 40}, NULL},
    {"dst", THEUS_DTYPE_F32, 2, {30, 20}, NULL},
    {"s3", THEUS_DTYPE_F64, 3, {8, 9, 10}, NULL},
    {"d3", THEUS_DTYPE_F64, 3, {6, 6, 1}, NULL},
    {"sh", THEUS_DTYPE_F16, 1, {4000}, NULL},
    {"dh", THEUS_DTYPE_F16, 1, {3000}, NULL},
};

static void read_into_staging(harness *h, theus_tx **tx, const fdef *from, const theus_region *r,
                              const fdef *to)
{
    for (int s = 0; s < h->n; s++) {
        void *buf = NULL;
        theus_mem mem = THEUS_MEM_HOST;
        cr_assert_eq(theus_tx_stage_buffer(tx[s], to->name, NULL, THEUS_OP_ASSIGN, &buf, &mem),
                     THEUS_OK, "%s", theus_state_last_error(h->st[s]));
        int rc = theus_tx_read(tx[s], from->name, r, buf, mem);
        cr_assert_eq(rc, THEUS_OK, "read of '%s' into a %s buffer on %s: %s", from->name,
                     mem == THEUS_MEM_DEVICE ? "device" : "host", h->placement[s],
                     theus_state_last_error(h->st[s]));
    }
}

Test(cuda_parity, reads_into_device_buffers)
{
    need_gpu();
    harness h;
    open_states(&h, DEVREAD, 6, GPU_PLACEMENTS, 3, 11);
    for (int round = 0; round < 3; round++) {
        theus_tx *tx[MAX_STATES];
        for (int s = 0; s < h.n; s++)
            cr_assert_eq(theus_tx_begin(h.st[s], NULL, &tx[s]), THEUS_OK);
        for (size_t k = 0; k < 6; k += 2) {
            const fdef *f = &DEVREAD[k];
            size_t n = field_nelems(f);
            void *payload = xmalloc(n * theus_dtype_size(f->dt));
            gen_values(&h, f->dt, payload, n);
            same_stage(&h, tx, f, NULL, payload, round > 0); /* then overlaid by the read */
            free(payload);
        }
        theus_region r = reg2(10, 40, 5, 25);              /* 2-D rows: copy engine or gather */
        read_into_staging(&h, tx, &DEVREAD[0], &r, &DEVREAD[1]);
        r = reg3(1, 7, 2, 8, 3, 4);                        /* 3-D: gather kernel */
        read_into_staging(&h, tx, &DEVREAD[2], &r, &DEVREAD[3]);
        theus_region r1 = {.ndim = 1, .start = {500}, .stop = {3500}}; /* contiguous */
        read_into_staging(&h, tx, &DEVREAD[4], &r1, &DEVREAD[5]);
        same_commit(&h, tx, THEUS_OK);
        same_fields(&h, "after committing buffers filled by reads");
        h.step++;
    }
    close_states(&h);
}

/* Threads commit ADDs and read concurrently on a device field: every commit adds one to
 * every element, so a read that is not torn sees all elements equal, never decreasing. */
#define CONC_THREADS 4
#define CONC_ADDS 200
#define CONC_N 4096

typedef struct conc_arg {
    theus_state *st;
    int reader;
    int failed;
} conc_arg;

static int add_ones(theus_tx *tx, void *user)
{
    (void)user;
    int64_t ones[CONC_N];
    for (int i = 0; i < CONC_N; i++)
        ones[i] = 1;
    return theus_tx_add(tx, "ctr", NULL, ones, THEUS_MEM_HOST);
}

static void *conc_main(void *p)
{
    conc_arg *a = p;
    int64_t *buf = malloc(CONC_N * sizeof *buf);
    int64_t last = 0;
    for (int k = 0; k < CONC_ADDS && !a->failed; k++) {
        if (!a->reader) {
            if (theus_tx_run(a->st, NULL, add_ones, NULL, NULL) != THEUS_OK)
                a->failed = 1;
            continue;
        }
        theus_tx *tx = NULL;
        int rc = theus_tx_begin(a->st, NULL, &tx);
        if (rc == THEUS_OK)
            rc = theus_tx_read(tx, "ctr", NULL, buf, THEUS_MEM_HOST);
        if (rc == THEUS_ECONFLICT) {
            /* A commit landed between begin and read: the read refuses, as it should. */
        } else if (rc != THEUS_OK) {
            a->failed = 2;
        } else {
            for (int i = 1; i < CONC_N; i++)
                if (buf[i] != buf[0])
                    a->failed = 3;
            if (buf[0] < last)
                a->failed = 4;
            last = buf[0];
        }
        theus_tx_abort(tx);
    }
    free(buf);
    return NULL;
}

Test(cuda_parity, concurrent_commits_and_reads)
{
    need_gpu();
    for (int p = 1; p < 3; p++) {
        char json[160];
        snprintf(json, sizeof json,
                 "{\"fields\": {\"ctr\": {\"dtype\": \"i64\", \"shape\": [%d], \"placement\": "
                 "\"%s\"}}}", CONC_N, GPU_PLACEMENTS[p]);
        theus_state *st = NULL;
        cr_assert_eq(theus_state_create(json, NULL, &st), THEUS_OK);
        pthread_t th[2 * CONC_THREADS];
        conc_arg args[2 * CONC_THREADS];
        for (int t = 0; t < 2 * CONC_THREADS; t++) {
            args[t] = (conc_arg){.st = st, .reader = t >= CONC_THREADS};
            cr_assert_eq(pthread_create(&th[t], NULL, conc_main, &args[t]), 0);
        }
        for (int t = 0; t < 2 * CONC_THREADS; t++)
            pthread_join(th[t], NULL);
        for (int t = 0; t < 2 * CONC_THREADS; t++)
            cr_assert_eq(args[t].failed, 0, "%s thread %d failed (%d)", GPU_PLACEMENTS[p], t,
                         args[t].failed);
        int64_t *buf = xmalloc(CONC_N * sizeof *buf);
        theus_tx *tx = NULL;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_read(tx, "ctr", NULL, buf, THEUS_MEM_HOST), THEUS_OK);
        theus_tx_abort(tx);
        for (int i = 0; i < CONC_N; i++)
            cr_assert_eq(buf[i], (int64_t)CONC_THREADS * CONC_ADDS, "%s: element %d is %lld",
                         GPU_PLACEMENTS[p], i, (long long)buf[i]);
        free(buf);
        theus_state_destroy(st);
    }
}

/* A constraint refusal on a device field: the gatekeeper reads the offending element
 * through the backend (the staged payload is device memory). */
Test(cuda_parity, refusal_on_device_field)
{
    need_gpu();
    const char *json = "{\"fields\": {\"x\": {\"dtype\": \"f32\", \"shape\": [64], "
                       "\"placement\": \"device\", \"constraints\": {\"min\": 0}}}}";
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create(json, NULL, &st), THEUS_OK);
    float v[64];
    for (int i = 0; i < 64; i++)
        v[i] = (float)i;
    v[37] = -1.0f;
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "x", NULL, v, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);
    cr_assert(strstr(theus_state_last_error(st), "element 37") != NULL, "%s",
              theus_state_last_error(st));
    theus_state_destroy(st);
}

/* ---- everywhere: the harness itself, and the fallback -------------------------------- */

/* The randomized sequence on three host states: checks the harness (and gives the CPU
 * backend the same workout) on machines without a GPU. */
Test(parity_harness, host_states_agree)
{
    static const char *const hosts[] = {"host", "host", "host"};
    run_random(hosts, 3, 99);
}

Test(cuda_fallback, disable_gpu_env)
{
    /* Before anything asks for the GPU in this test process. */
    cr_assert_eq(setenv("THEUS_DISABLE_GPU", "1", 1), 0);
    cr_assert_eq(theus_gpu_available(), 0);
    const char *json = "{\"fields\": {\"d\": {\"dtype\": \"f32\", \"shape\": [4], "
                       "\"placement\": \"device\"}}}";
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create(json, NULL, &st), THEUS_OK);
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "d", &fi), THEUS_OK);
    cr_assert_eq(fi.placement, THEUS_PLACEMENT_HOST);
    cr_assert_eq(fi.requested, THEUS_PLACEMENT_DEVICE);
    theus_state_destroy(st);
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    o.allow_fallback = 0;
    st = NULL;
    cr_assert_eq(theus_state_create(json, &o, &st), THEUS_ENODEV);
    cr_assert_null(st);
}

Test(cuda_fallback, availability_is_stable)
{
    int a = theus_gpu_available();
    cr_assert(a == 0 || a == 1);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(theus_gpu_available(), a);
}

/* ---- stream-ordered commits and constrained batches (compiled, not yet run on a GPU) ---- */

static void same_commit_on_stream(harness *h, theus_tx **tx, int expect)
{
    for (int s = 0; s < h->n; s++) {
        int rc = theus_tx_commit_on_stream(tx[s], NULL, NULL);
        tx[s] = NULL;
        cr_assert_eq(rc, expect, "step %d: commit_on_stream returned %d on %s, expected %d (%s)",
                     h->step, rc, h->placement[s], expect, theus_state_last_error(h->st[s]));
    }
}

/* Stream-ordered commits on the legacy default stream, several in a row with no wait,
 * mixed with synchronous commits and with reads (which wait for the replay): the same bytes
 * as the host state, whose CPU backend replays at once. */
Test(cuda_parity, stream_ordered_commits)
{
    need_gpu();
    harness h;
    const size_t nf = sizeof BATCHF / sizeof BATCHF[0];
    open_states(&h, BATCHF, nf, GPU_PLACEMENTS, 3, 21);
    for (int round = 0; round < 9; round++) {
        theus_tx *tx[MAX_STATES];
        for (int s = 0; s < h.n; s++)
            cr_assert_eq(theus_tx_begin(h.st[s], NULL, &tx[s]), THEUS_OK);
        for (size_t i = 0; i < nf; i++) {
            const fdef *f = &BATCHF[i];
            theus_region r;
            size_t n = 0;
            const theus_region *rp = rand_region(&h, f, &r, &n);
            void *payload = xmalloc(n * theus_dtype_size(f->dt) + 1);
            gen_values(&h, f->dt, payload, n);
            same_stage(&h, tx, f, rp, payload, round % 2);
            free(payload);
            same_batch(&h, tx, f, 1, round >= 4);
        }
        if (round % 3 == 2)
            same_commit(&h, tx, THEUS_OK);
        else
            same_commit_on_stream(&h, tx, THEUS_OK);
        if (round % 2)
            same_fields(&h, "after stream-ordered commits");
        h.step++;
    }
    for (int s = 0; s < h.n; s++)
        cr_assert_eq(theus_state_wait(h.st[s], NULL), THEUS_OK, "%s",
                     theus_state_last_error(h.st[s]));
    same_fields(&h, "after theus_state_wait");
    close_states(&h);
}

static const fdef CONSF[] = {
    {"cf", THEUS_DTYPE_F32, 1, {5000}, "\"constraints\": {\"finite\": true, \"min\": -4, \"max\": 4}"},
    {"ci", THEUS_DTYPE_I32, 2, {50, 70}, "\"constraints\": {\"min\": -40, \"max\": 40}"},
};

/* A batch on a constrained field: the values it leaves are checked (on the GPU for device
 * and pinned fields when the batch is the field's only delta, on the host otherwise); the
 * outcome and the bytes agree with the host state. @bad: put an out-of-range value in a
 * payload element a segment reads (2) or in one none reads (1), or not at all (0). */
static void cons_batch(harness *h, theus_tx **tx, const fdef *f, int add, int bad)
{
    const size_t n = field_nelems(f), nseg = 1 + below(h, 50), pelems = 400;
    theus_batch_segment g[64];
    float pf[400];
    int32_t pi[400];
    for (size_t k = 0; k < pelems; k++) {
        pf[k] = (float)((int)below(h, 9) - 4) / 8.0f;
        pi[k] = (int32_t)below(h, 5) - 2;
    }
    for (size_t k = 0; k < nseg; k++) {
        const uint64_t len = 1 + below(h, 100);
        g[k] = (theus_batch_segment){.dst = (int64_t)below(h, n - len + 1), .length = (int64_t)len,
                                     .src = (int64_t)below(h, pelems - 1 - len)};
    }
    if (bad) {
        const size_t at = bad == 2 ? (size_t)g[nseg - 1].src : pelems - 1;
        pf[at] = 1e6f;
        pi[at] = 1000000;
    }
    const void *pay = f->dt == THEUS_DTYPE_F32 ? (const void *)pf : (const void *)pi;
    for (int s = 0; s < h->n; s++)
        cr_assert_eq(theus_tx_stage_batch(tx[s], f->name, add ? THEUS_OP_ADD : THEUS_OP_ASSIGN, g,
                                          nseg, pay, pelems, THEUS_MEM_HOST), THEUS_OK, "%s",
                     theus_state_last_error(h->st[s]));
}

Test(cuda_parity, constrained_batches)
{
    need_gpu();
    harness h;
    open_states(&h, CONSF, 2, GPU_PLACEMENTS, 3, 31);
    for (int round = 0; round < 12; round++) {
        const int bad = round % 3, mixed = round >= 6;
        theus_tx *tx[MAX_STATES];
        for (int s = 0; s < h.n; s++)
            cr_assert_eq(theus_tx_begin(h.st[s], NULL, &tx[s]), THEUS_OK);
        const fdef *f = &CONSF[round % 2];
        if (mixed) {
            /* Another delta on the field: the host path on every placement. */
            theus_region r;
            size_t n = 0;
            const theus_region *rp = rand_region(&h, f, &r, &n);
            void *payload = calloc(n + 1, 4);
            same_stage(&h, tx, f, rp, payload, 0);
            free(payload);
        }
        const int add = round % 4 == 1;
        cons_batch(&h, tx, f, add, bad);
        if (bad == 2 || !add) {
            same_commit(&h, tx, bad == 2 ? THEUS_ESCHEMA : THEUS_OK);
        } else {
            /* An add may leave the range where segments pile up: the outcome must agree. */
            int rc0 = 0;
            for (int s = 0; s < h.n; s++) {
                int rc = theus_tx_commit(tx[s], NULL);
                if (s == 0)
                    rc0 = rc;
                cr_assert_eq(rc, rc0, "round %d: %d on %s, %d on %s (%s)", round, rc,
                             h.placement[s], rc0, h.placement[0], theus_state_last_error(h.st[s]));
            }
        }
        same_fields(&h, "after a constrained batch");
        h.step++;
    }
    close_states(&h);
}

#ifdef THEUS_PARITY_STANDALONE
typedef struct standalone_test {
    const char *suite, *name;
    void (*fn)(void);
    standalone_opts o;
} standalone_test;
static standalone_test standalone_tests[32];
static int standalone_ntests;

static void standalone_register(const char *suite, const char *name, void (*fn)(void),
                                standalone_opts o)
{
    if (standalone_ntests < 32)
        standalone_tests[standalone_ntests++] =
            (standalone_test){.suite = suite, .name = name, .fn = fn, .o = o};
}

/* Runs the tests of the suite named by argv[1] (default cuda_parity) in this process.
 * The cuda_fallback suite needs a process that has not probed the GPU yet. */
int main(int argc, char **argv)
{
    const char *suite = argc > 1 ? argv[1] : "cuda_parity";
    volatile int ran = 0, skipped = 0;
    for (volatile int i = 0; i < standalone_ntests; i++) {
        if (strcmp(standalone_tests[i].suite, suite) != 0 || standalone_tests[i].o.disabled)
            continue;
        if (setjmp(standalone_skip_jmp) == 0) {
            standalone_tests[i].fn();
            printf("[PASS] %s::%s\n", suite, standalone_tests[i].name);
            ran++;
        } else {
            printf("[SKIP] %s::%s\n", suite, standalone_tests[i].name);
            skipped++;
        }
    }
    printf("%d passed, %d skipped\n", ran, skipped);
    return 0;
}
#endif
