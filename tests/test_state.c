/* State creation (from text and from files), options, field metadata for every dtype,
 * placement fallback, initial values, error text per thread, counters, and the name
 * functions of the public API. */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <theus/theus.h>

/* ---- helpers ------------------------------------------------------------------------ */

static theus_state *make_state(const char *json)
{
    theus_state *st = NULL;
    int rc = theus_state_create(json, NULL, &st);
    cr_assert_eq(rc, THEUS_OK, "create: %s", theus_last_error_message());
    cr_assert_not_null(st);
    return st;
}

/* Write @text to a new temporary file; returns its path (free it, unlink it). */
static char *temp_file(const char *text)
{
    char *path = strdup("/tmp/theus-test-state-XXXXXX");
    cr_assert_not_null(path);
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    cr_assert_eq(close(fd), 0);
    return path;
}

/* Read a whole field through a fresh transaction into @dst (nbytes of the field). */
static void read_field(theus_state *st, const char *field, void *dst)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    int rc = theus_tx_read(tx, field, NULL, dst, THEUS_MEM_HOST);
    cr_assert_eq(rc, THEUS_OK, "read %s: %s", field, theus_state_last_error(st));
    /* A read-only commit: counts neither as a commit nor as an abort. */
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
}

/* Stage a whole-field write and commit it; returns the commit's status. */
static int write_field(theus_state *st, const char *field, const void *src)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    int rc = theus_tx_write(tx, field, NULL, src, THEUS_MEM_HOST);
    if (rc != THEUS_OK) {
        theus_tx_abort(tx);
        return rc;
    }
    return theus_tx_commit(tx, NULL);
}

static const char *const SIMPLE =
    "{\"name\": \"simple\", \"fields\": {"
    "  \"x\": {\"dtype\": \"f32\", \"shape\": [4]},"
    "  \"n\": {\"dtype\": \"i64\", \"shape\": []}"
    "}}";

/* ---- creation --------------------------------------------------------------------- */

Test(state_create, from_string)
{
    theus_state *st = (theus_state *)(uintptr_t)1;
    cr_assert_eq(theus_state_create(SIMPLE, NULL, &st), THEUS_OK);
    cr_assert_not_null(st);
    cr_assert_eq(theus_state_version(st), 1u);
    cr_assert_str_eq(theus_state_name(st), "simple");
    cr_assert_eq(theus_state_field_count(st), 2u);
    theus_state_destroy(st);
}

Test(state_create, from_file)
{
    char *path = temp_file(SIMPLE);
    theus_state *st = NULL;
    int rc = theus_state_create_from_file(path, NULL, &st);
    unlink(path);
    free(path);
    cr_assert_eq(rc, THEUS_OK, "%s", theus_last_error_message());
    cr_assert_not_null(st);
    cr_assert_str_eq(theus_state_name(st), "simple");
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "x", &fi), THEUS_OK);
    cr_assert_eq(fi.dtype, THEUS_DTYPE_F32);
    cr_assert_eq(fi.shape[0], 4);
    theus_state_destroy(st);
}

Test(state_create, missing_file_is_enoent)
{
    char *path = temp_file("");
    unlink(path); /* a name that surely does not exist now */
    theus_state *st = (theus_state *)(uintptr_t)1;
    cr_assert_eq(theus_state_create_from_file(path, NULL, &st), THEUS_ENOENT);
    cr_assert_null(st);
    cr_assert_neq(theus_state_last_error(NULL)[0], '\0');
    cr_assert_not_null(strstr(theus_state_last_error(NULL), path), "the message names the file");
    free(path);
}

Test(state_create, directory_is_eio)
{
    /* A directory opens with fopen(3) but cannot be read as a schema. */
    char dir[] = "/tmp/theus-test-dir-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    theus_state *st = (theus_state *)(uintptr_t)1;
    int rc = theus_state_create_from_file(dir, NULL, &st);
    rmdir(dir);
    cr_assert_eq(rc, THEUS_EIO, "got %s", theus_strerror(rc));
    cr_assert_null(st);
}

Test(state_create, invalid_schema_file_and_text)
{
    const char *bad = "{\"fields\": {\"x\": {\"dtype\": \"f33\", \"shape\": [1]}}}";
    char *path = temp_file(bad);
    theus_state *st = (theus_state *)(uintptr_t)1;
    cr_assert_eq(theus_state_create_from_file(path, NULL, &st), THEUS_ESCHEMA);
    cr_assert_null(st);
    unlink(path);
    free(path);

    st = (theus_state *)(uintptr_t)1;
    cr_assert_eq(theus_state_create(bad, NULL, &st), THEUS_ESCHEMA);
    cr_assert_null(st);
    cr_assert_not_null(strstr(theus_state_last_error(NULL), "f33"), "detail: %s",
                       theus_state_last_error(NULL));

    char *empty = temp_file("");
    st = (theus_state *)(uintptr_t)1;
    cr_assert_eq(theus_state_create_from_file(empty, NULL, &st), THEUS_ESCHEMA);
    cr_assert_null(st);
    unlink(empty);
    free(empty);
}

Test(state_create, null_arguments)
{
    theus_state *st = (theus_state *)(uintptr_t)1;
    cr_assert_eq(theus_state_create(NULL, NULL, &st), THEUS_EINVAL);
    cr_assert_null(st);
    cr_assert_eq(theus_state_create(SIMPLE, NULL, NULL), THEUS_EINVAL);
    st = (theus_state *)(uintptr_t)1;
    cr_assert_eq(theus_state_create_from_file(NULL, NULL, &st), THEUS_EINVAL);
    cr_assert_null(st);
    char *path = temp_file(SIMPLE);
    cr_assert_eq(theus_state_create_from_file(path, NULL, NULL), THEUS_EINVAL);
    unlink(path);
    free(path);
    /* NULL is a no-op for destroy, and the getters answer something harmless. */
    theus_state_destroy(NULL);
    cr_assert_eq(theus_state_version(NULL), 0u);
    cr_assert_eq(theus_state_field_count(NULL), 0u);
    cr_assert_null(theus_state_field_name(NULL, 0));
}

Test(state_create, bad_options)
{
    char *path = temp_file(SIMPLE);
    theus_state_options bad[4];
    for (int i = 0; i < 4; i++)
        bad[i] = (theus_state_options)THEUS_STATE_OPTIONS_INIT;
    bad[0].allow_fallback = 2;
    bad[1].allow_fallback = -1;
    bad[2].commit_log_capacity = (1u << 24) + 1;
    bad[3].commit_log_capacity = UINT32_MAX;
    for (int i = 0; i < 4; i++) {
        theus_state *st = (theus_state *)(uintptr_t)1;
        cr_assert_eq(theus_state_create(SIMPLE, &bad[i], &st), THEUS_EINVAL, "options %d", i);
        cr_assert_null(st);
        cr_assert_neq(theus_state_last_error(NULL)[0], '\0');
        st = (theus_state *)(uintptr_t)1;
        cr_assert_eq(theus_state_create_from_file(path, &bad[i], &st), THEUS_EINVAL, "options %d",
                     i);
        cr_assert_null(st);
    }
    unlink(path);
    free(path);
}

Test(state_create, good_options)
{
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    o.allow_fallback = 0;          /* only host fields: nothing to fall back */
    o.commit_log_capacity = 1;     /* smallest log */
    o.priority_lease_ms = 1;
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create(SIMPLE, &o, &st), THEUS_OK, "%s", theus_last_error_message());
    const float v[4] = {1, 2, 3, 4};
    cr_assert_eq(write_field(st, "x", v), THEUS_OK);
    cr_assert_eq(write_field(st, "x", v), THEUS_OK);
    cr_assert_eq(theus_state_version(st), 3u);
    float back[4];
    read_field(st, "x", back);
    cr_assert_eq(memcmp(back, v, sizeof v), 0);
    theus_state_destroy(st);
}

/* ---- field metadata for every dtype ------------------------------------------------ */

typedef struct field_spec {
    theus_dtype dtype;
    int ndim;
    int64_t shape[THEUS_MAX_DIMS];
    theus_zone zone;
    int has_min, has_max, finite;
    double min, max;
} field_spec;

/* One field per dtype, with ranks 0..5, a zero-sized shape, every zone and the constraint
 * kinds each dtype accepts. */
static void spec_for(theus_dtype dt, field_spec *s)
{
    memset(s, 0, sizeof *s);
    s->dtype = dt;
    s->ndim = (int)dt % 6;
    for (int d = 0; d < s->ndim; d++)
        s->shape[d] = 1 + (d + (int)dt) % 4;
    if (dt == THEUS_DTYPE_U16) { /* a zero-sized field */
        s->ndim = 2;
        s->shape[0] = 3;
        s->shape[1] = 0;
    }
    s->zone = (theus_zone)((int)dt % 4);
    if (dt != THEUS_DTYPE_BOOL && (int)dt % 3 == 0) {
        s->has_min = 1;
        s->min = -(double)dt;
    }
    if (dt != THEUS_DTYPE_BOOL && (int)dt % 2 == 1) {
        s->has_max = 1;
        s->max = 100.0 + (double)dt;
    }
    if (dt == THEUS_DTYPE_F16 || dt == THEUS_DTYPE_BF16 || dt == THEUS_DTYPE_F32 ||
        dt == THEUS_DTYPE_F64)
        s->finite = (int)dt % 2 == 0;
}

static char *all_dtypes_schema(void)
{
    size_t cap = 8192, len = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    len += (size_t)snprintf(buf + len, cap - len, "{\"name\": \"every-dtype\", \"fields\": {");
    for (int dt = 0; dt < THEUS_DTYPE_COUNT; dt++) {
        field_spec s;
        spec_for((theus_dtype)dt, &s);
        len += (size_t)snprintf(buf + len, cap - len, "%s\"f_%s\": {\"dtype\": \"%s\", \"shape\": [",
                                dt ? ", " : "", theus_dtype_name((theus_dtype)dt),
                                theus_dtype_name((theus_dtype)dt));
        for (int d = 0; d < s.ndim; d++)
            len += (size_t)snprintf(buf + len, cap - len, "%s%lld", d ? ", " : "",
                                    (long long)s.shape[d]);
        len += (size_t)snprintf(buf + len, cap - len, "], \"zone\": \"%s\"",
                                theus_zone_name(s.zone));
        if (s.has_min || s.has_max || s.finite) {
            const char *sep = "";
            len += (size_t)snprintf(buf + len, cap - len, ", \"constraints\": {");
            if (s.has_min) {
                len += (size_t)snprintf(buf + len, cap - len, "%s\"min\": %g", sep, s.min);
                sep = ", ";
            }
            if (s.has_max) {
                len += (size_t)snprintf(buf + len, cap - len, "%s\"max\": %g", sep, s.max);
                sep = ", ";
            }
            if (s.finite)
                len += (size_t)snprintf(buf + len, cap - len, "%s\"finite\": true", sep);
            len += (size_t)snprintf(buf + len, cap - len, "}");
        }
        len += (size_t)snprintf(buf + len, cap - len, "}");
    }
    len += (size_t)snprintf(buf + len, cap - len, "}}");
    cr_assert_lt(len, cap);
    return buf;
}

Test(field_info, every_dtype_shape_zone_and_constraints)
{
    char *json = all_dtypes_schema();
    theus_state *st = make_state(json);
    free(json);
    cr_assert_eq(theus_state_field_count(st), (size_t)THEUS_DTYPE_COUNT);
    for (int dt = 0; dt < THEUS_DTYPE_COUNT; dt++) {
        field_spec s;
        spec_for((theus_dtype)dt, &s);
        char name[32];
        snprintf(name, sizeof name, "f_%s", theus_dtype_name((theus_dtype)dt));
        cr_assert_str_eq(theus_state_field_name(st, (size_t)dt), name, "schema order");

        theus_field_info fi;
        memset(&fi, 0xa5, sizeof fi);
        cr_assert_eq(theus_state_field_info(st, name, &fi), THEUS_OK, "%s", name);
        cr_assert_eq(fi.dtype, (theus_dtype)dt, "%s", name);
        cr_assert_eq(fi.ndim, s.ndim, "%s", name);
        size_t nelems = 1;
        for (int d = 0; d < s.ndim; d++) {
            cr_assert_eq(fi.shape[d], s.shape[d], "%s dim %d", name, d);
            nelems *= (size_t)s.shape[d];
        }
        cr_assert_eq(fi.nbytes, nelems * theus_dtype_size((theus_dtype)dt), "%s", name);
        cr_assert_eq(fi.placement, THEUS_PLACEMENT_HOST, "%s: default placement", name);
        cr_assert_eq(fi.requested, THEUS_PLACEMENT_HOST, "%s", name);
        cr_assert_eq(fi.zone, s.zone, "%s", name);
        cr_assert_eq(fi.version, 1u, "%s", name);
        cr_assert_eq(!!fi.has_min, s.has_min, "%s", name);
        cr_assert_eq(!!fi.has_max, s.has_max, "%s", name);
        cr_assert_eq(!!fi.finite, s.finite, "%s", name);
        if (s.has_min)
            cr_assert_eq(fi.min, s.min, "%s", name);
        if (s.has_max)
            cr_assert_eq(fi.max, s.max, "%s", name);
    }
    cr_assert_null(theus_state_field_name(st, (size_t)THEUS_DTYPE_COUNT));
    cr_assert_null(theus_state_field_name(st, SIZE_MAX));
    theus_state_destroy(st);
}

Test(field_info, unknown_field_and_null_arguments)
{
    theus_state *st = make_state(SIMPLE);
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "nope", &fi), THEUS_ENOENT);
    cr_assert_not_null(strstr(theus_state_last_error(st), "nope"));
    cr_assert_eq(theus_state_field_info(st, "", &fi), THEUS_ENOENT);
    cr_assert_eq(theus_state_field_info(st, "X", &fi), THEUS_ENOENT, "names are case-sensitive");
    cr_assert_eq(theus_state_field_info(st, NULL, &fi), THEUS_EINVAL);
    cr_assert_eq(theus_state_field_info(st, "x", NULL), THEUS_EINVAL);
    cr_assert_eq(theus_state_field_info(NULL, "x", &fi), THEUS_EINVAL);
    theus_state_destroy(st);
}

Test(field_info, field_order_follows_the_schema)
{
    const char *json = "{\"fields\": {\"zeta\": {\"dtype\": \"u8\", \"shape\": [1]},"
                       " \"alpha\": {\"dtype\": \"u8\", \"shape\": [1]},"
                       " \"mid\": {\"dtype\": \"u8\", \"shape\": [1]}}}";
    theus_state *st = make_state(json);
    const char *expect[] = {"zeta", "alpha", "mid"};
    cr_assert_eq(theus_state_field_count(st), 3u);
    for (size_t i = 0; i < 3; i++)
        cr_assert_str_eq(theus_state_field_name(st, i), expect[i]);
    cr_assert_null(theus_state_field_name(st, 3));
    theus_state_destroy(st);
}

Test(state, fields_start_zeroed_and_versions_at_one)
{
    char *json = all_dtypes_schema();
    theus_state *st = make_state(json);
    free(json);
    cr_assert_eq(theus_state_version(st), 1u);
    for (size_t i = 0; i < theus_state_field_count(st); i++) {
        const char *name = theus_state_field_name(st, i);
        theus_field_info fi;
        cr_assert_eq(theus_state_field_info(st, name, &fi), THEUS_OK);
        cr_assert_eq(fi.version, 1u);
        unsigned char *buf = malloc(fi.nbytes + 1);
        cr_assert_not_null(buf);
        memset(buf, 0xa5, fi.nbytes + 1);
        read_field(st, name, buf);
        for (size_t b = 0; b < fi.nbytes; b++)
            cr_assert_eq(buf[b], 0, "%s byte %zu", name, b);
        cr_assert_eq(buf[fi.nbytes], 0xa5, "%s: read past the field", name);
        free(buf);
    }
    theus_state_destroy(st);
}

/* ---- placement and fallback -------------------------------------------------------- */

static const char *const PLACED =
    "{\"fields\": {"
    "  \"d\": {\"dtype\": \"f32\", \"shape\": [8], \"placement\": \"device\"},"
    "  \"p\": {\"dtype\": \"i32\", \"shape\": [2, 2], \"placement\": \"pinned\"},"
    "  \"h\": {\"dtype\": \"f64\", \"shape\": [], \"placement\": \"host\"}"
    "}}";

Test(placement, fallback_or_real_placement)
{
    theus_state *st = make_state(PLACED);
    theus_field_info d, p, h;
    cr_assert_eq(theus_state_field_info(st, "d", &d), THEUS_OK);
    cr_assert_eq(theus_state_field_info(st, "p", &p), THEUS_OK);
    cr_assert_eq(theus_state_field_info(st, "h", &h), THEUS_OK);
    cr_assert_eq(d.requested, THEUS_PLACEMENT_DEVICE);
    cr_assert_eq(p.requested, THEUS_PLACEMENT_PINNED);
    cr_assert_eq(h.requested, THEUS_PLACEMENT_HOST);
    cr_assert_eq(h.placement, THEUS_PLACEMENT_HOST);
    if (theus_gpu_available()) {
        cr_assert_eq(d.placement, THEUS_PLACEMENT_DEVICE);
        cr_assert_eq(p.placement, THEUS_PLACEMENT_PINNED);
    } else {
        cr_assert_eq(d.placement, THEUS_PLACEMENT_HOST);
        cr_assert_eq(p.placement, THEUS_PLACEMENT_HOST);
    }
    /* Wherever they live, they start zeroed and read back what was committed. */
    float dv[8], back[8];
    read_field(st, "d", back);
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(back[i], 0.0f);
        dv[i] = (float)i * 1.5f;
    }
    cr_assert_eq(write_field(st, "d", dv), THEUS_OK);
    read_field(st, "d", back);
    cr_assert_eq(memcmp(back, dv, sizeof dv), 0);
    theus_state_destroy(st);
}

Test(placement, no_fallback)
{
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    o.allow_fallback = 0;
    theus_state *st = (theus_state *)(uintptr_t)1;
    int rc = theus_state_create(PLACED, &o, &st);
    if (theus_gpu_available()) {
        cr_assert_eq(rc, THEUS_OK, "%s", theus_last_error_message());
        theus_field_info d;
        cr_assert_eq(theus_state_field_info(st, "d", &d), THEUS_OK);
        cr_assert_eq(d.placement, THEUS_PLACEMENT_DEVICE);
        theus_state_destroy(st);
    } else {
        cr_assert_eq(rc, THEUS_ENODEV);
        cr_assert_null(st);
        cr_assert_neq(theus_state_last_error(NULL)[0], '\0');
    }
    /* Each GPU placement on its own behaves the same way. */
    const char *pinned_only =
        "{\"fields\": {\"p\": {\"dtype\": \"u8\", \"shape\": [3], \"placement\": \"pinned\"}}}";
    st = (theus_state *)(uintptr_t)1;
    rc = theus_state_create(pinned_only, &o, &st);
    cr_assert_eq(rc, theus_gpu_available() ? THEUS_OK : THEUS_ENODEV);
    if (rc == THEUS_OK)
        theus_state_destroy(st);
    else
        cr_assert_null(st);
}

/* ---- initial values ---------------------------------------------------------------- */

static const char *const INIT =
    "{\"fields\": {"
    "  \"seed\": {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"},"
    "  \"lim\": {\"dtype\": \"f32\", \"shape\": [3],"
    "            \"constraints\": {\"min\": 0, \"max\": 10, \"finite\": true}},"
    "  \"x\": {\"dtype\": \"i64\", \"shape\": [2]}"
    "}}";

Test(init_field, const_field_before_first_commit)
{
    theus_state *st = make_state(INIT);
    const uint64_t seed = 0x0123456789abcdefull;
    cr_assert_eq(theus_state_init_field(st, "seed", &seed, THEUS_MEM_HOST), THEUS_OK, "%s",
                 theus_state_last_error(st));
    const float lim[3] = {1, 2, 3};
    cr_assert_eq(theus_state_init_field(st, "lim", lim, THEUS_MEM_HOST), THEUS_OK);
    /* Initial values are creation-time content: no commit happened. */
    cr_assert_eq(theus_state_version(st), 1u);
    uint64_t got = 0;
    read_field(st, "seed", &got);
    cr_assert_eq(got, seed);
    float lback[3];
    read_field(st, "lim", lback);
    cr_assert_eq(memcmp(lback, lim, sizeof lim), 0);
    /* A const field refuses transaction writes and adds. */
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    uint64_t other = 7;
    cr_assert_eq(theus_tx_write(tx, "seed", NULL, &other, THEUS_MEM_HOST), THEUS_EPERM);
    cr_assert_eq(theus_tx_add(tx, "seed", NULL, &other, THEUS_MEM_HOST), THEUS_EPERM);
    theus_tx_abort(tx);
    /* A second init before any commit replaces the value. */
    const uint64_t seed2 = 99;
    cr_assert_eq(theus_state_init_field(st, "seed", &seed2, THEUS_MEM_HOST), THEUS_OK);
    read_field(st, "seed", &got);
    cr_assert_eq(got, seed2);
    theus_state_destroy(st);
}

Test(init_field, refused_after_a_commit)
{
    theus_state *st = make_state(INIT);
    const uint64_t seed = 5;
    cr_assert_eq(theus_state_init_field(st, "seed", &seed, THEUS_MEM_HOST), THEUS_OK);
    const int64_t xv[2] = {3, 4};
    cr_assert_eq(write_field(st, "x", xv), THEUS_OK);
    cr_assert_eq(theus_state_version(st), 2u);
    const uint64_t late = 6;
    cr_assert_eq(theus_state_init_field(st, "seed", &late, THEUS_MEM_HOST), THEUS_EBUSY);
    cr_assert_neq(theus_state_last_error(st)[0], '\0');
    const int64_t xlate[2] = {8, 9};
    cr_assert_eq(theus_state_init_field(st, "x", xlate, THEUS_MEM_HOST), THEUS_EBUSY);
    uint64_t got = 0;
    read_field(st, "seed", &got);
    cr_assert_eq(got, seed);
    int64_t xback[2];
    read_field(st, "x", xback);
    cr_assert_eq(memcmp(xback, xv, sizeof xv), 0);
    cr_assert_eq(theus_state_version(st), 2u);
    theus_state_destroy(st);
}

Test(init_field, constraint_violations_leave_the_field)
{
    theus_state *st = make_state(INIT);
    const float good[3] = {0, 5, 10};
    cr_assert_eq(theus_state_init_field(st, "lim", good, THEUS_MEM_HOST), THEUS_OK);
    const float bad[4][3] = {{1, -1, 3}, {1, 2, 10.5f}, {NAN, 1, 1}, {1, 1, INFINITY}};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(theus_state_init_field(st, "lim", bad[i], THEUS_MEM_HOST), THEUS_ESCHEMA,
                     "case %d", i);
        cr_assert_not_null(strstr(theus_state_last_error(st), "lim"), "case %d: %s", i,
                           theus_state_last_error(st));
        float back[3];
        read_field(st, "lim", back);
        cr_assert_eq(memcmp(back, good, sizeof good), 0, "case %d", i);
    }
    cr_assert_eq(theus_state_version(st), 1u);
    theus_state_destroy(st);
}

Test(init_field, bad_arguments)
{
    theus_state *st = make_state(INIT);
    const int64_t v[2] = {1, 2};
    cr_assert_eq(theus_state_init_field(st, "nope", v, THEUS_MEM_HOST), THEUS_ENOENT);
    cr_assert_eq(theus_state_init_field(st, NULL, v, THEUS_MEM_HOST), THEUS_EINVAL);
    cr_assert_eq(theus_state_init_field(st, "x", NULL, THEUS_MEM_HOST), THEUS_EINVAL);
    cr_assert_eq(theus_state_init_field(NULL, "x", v, THEUS_MEM_HOST), THEUS_EINVAL);
    cr_assert_eq(theus_state_init_field(st, "x", v, (theus_mem)7), THEUS_EINVAL);
    int64_t back[2] = {-1, -1};
    read_field(st, "x", back);
    cr_assert_eq(back[0], 0);
    cr_assert_eq(back[1], 0);
    theus_state_destroy(st);
}

/* ---- status names ------------------------------------------------------------------ */

Test(strerror, every_code_and_unknown)
{
    static const struct {
        int code;
        const char *name;
    } codes[] = {
        {THEUS_OK, "THEUS_OK"},           {THEUS_EINVAL, "THEUS_EINVAL"},
        {THEUS_ENOMEM, "THEUS_ENOMEM"},   {THEUS_ECONFLICT, "THEUS_ECONFLICT"},
        {THEUS_ESCHEMA, "THEUS_ESCHEMA"}, {THEUS_EPERM, "THEUS_EPERM"},
        {THEUS_ENOENT, "THEUS_ENOENT"},   {THEUS_EIO, "THEUS_EIO"},
        {THEUS_EDEVICE, "THEUS_EDEVICE"}, {THEUS_ENODEV, "THEUS_ENODEV"},
        {THEUS_EBUSY, "THEUS_EBUSY"},     {THEUS_ECORRUPT, "THEUS_ECORRUPT"},
    };
    const size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(codes[i].code, -(int)i, "codes are never renumbered");
        const char *s = theus_strerror(codes[i].code);
        cr_assert_not_null(s);
        size_t len = strlen(codes[i].name);
        cr_assert_eq(strncmp(s, codes[i].name, len), 0, "%d -> %s", codes[i].code, s);
        /* "THEUS_E" is a prefix of longer names: the name must end where the text says. */
        cr_assert(s[len] == '\0' || s[len] == ':' || s[len] == ' ', "%s", s);
        for (size_t j = 0; j < i; j++)
            cr_assert_str_neq(s, theus_strerror(codes[j].code));
    }
    const int unknown[] = {1, 42, -1000, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        cr_assert_str_eq(theus_strerror(unknown[i]), "unknown theus status");
}

Test(names, dtypes_placements_zones)
{
    static const char *const dnames[] = {"bool", "u8",  "i8",  "u16", "i16",  "u32", "i32",
                                         "u64",  "i64", "f16", "bf16", "f32", "f64"};
    static const size_t dsizes[] = {1, 1, 1, 2, 2, 4, 4, 8, 8, 2, 2, 4, 8};
    cr_assert_eq(sizeof dnames / sizeof dnames[0], (size_t)THEUS_DTYPE_COUNT);
    for (int i = 0; i < THEUS_DTYPE_COUNT; i++) {
        cr_assert_str_eq(theus_dtype_name((theus_dtype)i), dnames[i]);
        cr_assert_eq(theus_dtype_size((theus_dtype)i), dsizes[i], "%s", dnames[i]);
    }
    cr_assert_null(theus_dtype_name(THEUS_DTYPE_COUNT));
    cr_assert_null(theus_dtype_name((theus_dtype)-1));
    cr_assert_eq(theus_dtype_size(THEUS_DTYPE_COUNT), 0u);
    cr_assert_eq(theus_dtype_size((theus_dtype)-1), 0u);

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

/* ---- last error per thread --------------------------------------------------------- */

typedef struct thread_b_args {
    theus_state *st;
    char seen_before[512];   /* what thread B saw before failing itself */
    char own[512];           /* thread B's own error */
} thread_b_args;

static void *thread_b(void *p)
{
    thread_b_args *a = p;
    snprintf(a->seen_before, sizeof a->seen_before, "%s", theus_state_last_error(a->st));
    theus_field_info fi;
    if (theus_state_field_info(a->st, "field_of_thread_b", &fi) == THEUS_ENOENT)
        snprintf(a->own, sizeof a->own, "%s", theus_state_last_error(a->st));
    return NULL;
}

Test(last_error, per_thread)
{
    theus_state *st = make_state(SIMPLE);
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "field_of_thread_a", &fi), THEUS_ENOENT);
    char mine[512];
    snprintf(mine, sizeof mine, "%s", theus_state_last_error(st));
    cr_assert_not_null(strstr(mine, "field_of_thread_a"), "%s", mine);

    thread_b_args a = {.st = st};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, thread_b, &a), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_str_eq(a.seen_before, "", "thread B must not see thread A's error");
    cr_assert_not_null(strstr(a.own, "field_of_thread_b"), "%s", a.own);
    cr_assert_null(strstr(a.own, "field_of_thread_a"));
    cr_assert_str_eq(theus_state_last_error(st), mine, "thread A's error survives B's");

    /* Errors are per state too: another state has no error on this thread. */
    theus_state *other = make_state(SIMPLE);
    cr_assert_str_eq(theus_state_last_error(other), "");
    theus_state_destroy(other);
    theus_state_destroy(st);
}

/* ---- counters ---------------------------------------------------------------------- */

static const char *const STATS =
    "{\"fields\": {"
    "  \"x\": {\"dtype\": \"i64\", \"shape\": [4]},"
    "  \"pos\": {\"dtype\": \"f64\", \"shape\": [2], \"constraints\": {\"min\": 0, \"max\": 10}}"
    "}}";

static void expect_stats(theus_state *st, const theus_stats *want, const char *when)
{
    theus_stats got;
    memset(&got, 0xff, sizeof got);
    cr_assert_eq(theus_state_stats(st, &got), THEUS_OK);
    cr_assert_eq(got.commits, want->commits, "%s: commits", when);
    cr_assert_eq(got.conflicts, want->conflicts, "%s: conflicts", when);
    cr_assert_eq(got.aborts, want->aborts, "%s: aborts %llu want %llu", when, (unsigned long long)got.aborts, (unsigned long long)want->aborts);
    cr_assert_eq(got.schema_refusals, want->schema_refusals, "%s: schema_refusals", when);
    cr_assert_eq(got.retries, want->retries, "%s: retries", when);
    cr_assert_eq(got.priority_runs, want->priority_runs, "%s: priority_runs", when);
}

typedef struct sneaky {
    theus_state *st;
    int calls;
} sneaky;

/* A body that, on its first run, lets another transaction commit to x before it reads x:
 * the read conflicts and theus_tx_run retries. */
static int sneaky_body(theus_tx *tx, void *user)
{
    sneaky *s = user;
    if (s->calls++ == 0) {
        const int64_t v = 100;
        const theus_region r = {.ndim = 1, .start = {0}, .stop = {1}};
        theus_tx *other = NULL;
        if (theus_tx_begin(s->st, NULL, &other) != THEUS_OK ||
            theus_tx_write(other, "x", &r, &v, THEUS_MEM_HOST) != THEUS_OK ||
            theus_tx_commit(other, NULL) != THEUS_OK)
            return THEUS_EINVAL;
    }
    int64_t x[4];
    int rc = theus_tx_read(tx, "x", NULL, x, THEUS_MEM_HOST);
    if (rc != THEUS_OK)
        return rc;
    x[3] = x[0] + 1;
    return theus_tx_write(tx, "x", NULL, x, THEUS_MEM_HOST);
}

Test(stats, counts)
{
    theus_state *st = make_state(STATS);
    theus_stats want = {0};
    expect_stats(st, &want, "fresh");
    cr_assert_eq(theus_state_stats(st, NULL), THEUS_EINVAL);
    theus_stats dummy;
    cr_assert_eq(theus_state_stats(NULL, &dummy), THEUS_EINVAL);

    /* A commit that writes. */
    const int64_t xv[4] = {1, 2, 3, 4};
    cr_assert_eq(write_field(st, "x", xv), THEUS_OK);
    want.commits++;
    expect_stats(st, &want, "one commit");

    /* A read-only commit writes nothing. */
    theus_tx *tx = NULL;
    int64_t xb[4];
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "x", NULL, xb, THEUS_MEM_HOST), THEUS_OK);
    uint64_t cv = 0;
    cr_assert_eq(theus_tx_commit(tx, &cv), THEUS_OK);
    cr_assert_eq(cv, theus_state_version(st), "a read-only commit reports its base");
    expect_stats(st, &want, "read-only commit");

    /* An explicit abort. */
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "x", NULL, xv, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    want.aborts++;
    expect_stats(st, &want, "abort");

    /* A conflicting commit: t1 reads and writes x, t2 writes x first. */
    theus_tx *t1 = NULL, *t2 = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &t1), THEUS_OK);
    cr_assert_eq(theus_tx_read(t1, "x", NULL, xb, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &t2), THEUS_OK);
    cr_assert_eq(theus_tx_write(t2, "x", NULL, xv, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(t2, NULL), THEUS_OK);
    want.commits++;
    cr_assert_eq(theus_tx_write(t1, "x", NULL, xv, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(t1, NULL), THEUS_ECONFLICT);
    want.conflicts++;
    want.aborts++; /* a failed commit counts as an abort */
    expect_stats(st, &want, "conflict");

    /* A read that conflicts early is counted too. */
    cr_assert_eq(theus_tx_begin(st, NULL, &t1), THEUS_OK);
    cr_assert_eq(write_field(st, "x", xv), THEUS_OK);
    want.commits++;
    cr_assert_eq(theus_tx_read(t1, "x", NULL, xb, THEUS_MEM_HOST), THEUS_ECONFLICT);
    want.conflicts++;
    theus_tx_abort(t1);
    want.aborts++;
    expect_stats(st, &want, "read conflict");

    /* The gatekeeper: an ASSIGN out of range, and an ADD that would leave the range. */
    const double neg[2] = {-1, 1};
    cr_assert_eq(write_field(st, "pos", neg), THEUS_ESCHEMA);
    want.schema_refusals++;
    want.aborts++;
    expect_stats(st, &want, "assign refused");
    const double nine[2] = {9, 9};
    cr_assert_eq(write_field(st, "pos", nine), THEUS_OK);
    want.commits++;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    const double two[2] = {0, 2};
    cr_assert_eq(theus_tx_add(tx, "pos", NULL, two, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);
    want.schema_refusals++;
    want.aborts++;
    expect_stats(st, &want, "add refused");
    double pos[2];
    read_field(st, "pos", pos);
    cr_assert_eq(pos[0], 9.0);
    cr_assert_eq(pos[1], 9.0);

    /* theus_tx_run: one conflict, one retry, run under the priority lease. */
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.priority_after = 1;
    sneaky s = {.st = st, .calls = 0};
    uint64_t before = theus_state_version(st);
    cr_assert_eq(theus_tx_run(st, &ro, sneaky_body, &s, &cv), THEUS_OK, "%s",
                 theus_state_last_error(st));
    cr_assert_eq(s.calls, 2);
    cr_assert_eq(cv, before + 2, "the body's own commit, then the retried one");
    want.commits += 2;
    want.conflicts++;
    want.aborts++;
    want.retries++;
    want.priority_runs++;
    expect_stats(st, &want, "tx_run");
    int64_t x[4];
    read_field(st, "x", x);
    cr_assert_eq(x[0], 100);
    cr_assert_eq(x[3], 101);
    theus_state_destroy(st);
}
