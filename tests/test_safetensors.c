/* Safetensors files: save/load round trips of every dtype, the metadata theus writes, the
 * atomic replace, loading as one transaction (dtype/shape checks naming the tensor, unknown
 * names, mapping, const fields), and every malformed header refused with nothing changed. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <theus/theus.h>
#include <theus/theus_durable.h>

#include "durable/safetensors.h"
#include "durable_fixture.h"
#include "st_schema.h"

static void setup(void)
{
    cr_assert_eq(dfx_make(NULL, "test-st", 0), 0, "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
    dfx_cleanup();
}

TestSuite(safetensors, .init = setup, .fini = teardown);

static const char *path_in(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", dfx_root, name);
    return p;
}

static const char *all_dtypes = ST_ALL_DTYPES_SCHEMA("all", "device");

static theus_state *make(const char *schema)
{
    theus_state *st = NULL;
    int rc = theus_state_create(schema, NULL, &st);
    cr_assert_eq(rc, THEUS_OK, "create: %s", theus_last_error_message());
    return st;
}

/* Deterministic pattern bytes for a field (bool: 0/1; floats: finite values). */
static void pattern(theus_dtype dt, unsigned char *buf, size_t n, unsigned seed)
{
    size_t es = theus_dtype_size(dt), ne = n / es;
    for (size_t i = 0; i < ne; i++) {
        unsigned v = seed * 31u + (unsigned)i * 7u + 1u;
        switch (dt) {
        case THEUS_DTYPE_BOOL: buf[i] = v & 1; break;
        case THEUS_DTYPE_F16: { uint16_t h = (uint16_t)(0x3c00 + (v % 512)); memcpy(buf + 2 * i, &h, 2); } break;
        case THEUS_DTYPE_BF16: { uint16_t h = (uint16_t)(0x3f80 + (v % 256)); memcpy(buf + 2 * i, &h, 2); } break;
        case THEUS_DTYPE_F32: { float f = (float)v * 0.25f; memcpy(buf + 4 * i, &f, 4); } break;
        case THEUS_DTYPE_F64: { double f = (double)v * 0.125; memcpy(buf + 8 * i, &f, 8); } break;
        default:
            for (size_t b = 0; b < es; b++)
                buf[i * es + b] = (unsigned char)(v >> (b % 4 * 8)) ^ (unsigned char)b;
        }
    }
}

static void fill_all(theus_state *st, unsigned seed)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    for (size_t i = 0; i < theus_state_field_count(st); i++) {
        const char *name = theus_state_field_name(st, i);
        theus_field_info fi;
        cr_assert_eq(theus_state_field_info(st, name, &fi), THEUS_OK);
        unsigned char buf[256];
        pattern(fi.dtype, buf, fi.nbytes, seed + (unsigned)i);
        cr_assert_eq(theus_tx_write(tx, name, NULL, buf, THEUS_MEM_HOST), THEUS_OK);
    }
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
}

static void read_field(theus_state *st, const char *name, void *dst)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, name, NULL, dst, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
}

/* Every field of @a equals @b's (except signal fields when @skip_signal). */
static void assert_same(theus_state *a, theus_state *b, int skip_signal)
{
    for (size_t i = 0; i < theus_state_field_count(a); i++) {
        const char *name = theus_state_field_name(a, i);
        theus_field_info fi;
        theus_state_field_info(a, name, &fi);
        if (skip_signal && fi.zone == THEUS_ZONE_SIGNAL)
            continue;
        unsigned char x[256], y[256];
        read_field(a, name, x);
        read_field(b, name, y);
        cr_assert_eq(memcmp(x, y, fi.nbytes), 0, "field %s differs", name);
    }
}

static st_header read_header(const char *path)
{
    FILE *fp = fopen(path, "rb");
    cr_assert_not_null(fp);
    unsigned char pre[8];
    cr_assert_eq(fread(pre, 1, 8, fp), 8u);
    fseek(fp, 0, SEEK_END);
    uint64_t size = (uint64_t)ftell(fp), len = 0;
    char err[256];
    cr_assert_eq(st_header_length(pre, size, &len, err, sizeof err), THEUS_OK, "%s", err);
    char *json = malloc(len);
    fseek(fp, 8, SEEK_SET);
    cr_assert_eq(fread(json, 1, len, fp), len);
    fclose(fp);
    st_header h;
    cr_assert_eq(st_header_parse(json, len, size - 8 - len, &h, err, sizeof err), THEUS_OK, "%s", err);
    free(json);
    cr_assert_eq(len % 8, 0, "data section 8-byte aligned");
    return h;
}

Test(safetensors, round_trip_every_dtype)
{
    theus_state *a = make(all_dtypes), *b = make(all_dtypes);
    fill_all(a, 3);
    fill_all(a, 5); /* version 3 */
    const char *p = path_in("all.safetensors");
    cr_assert_eq(theus_state_save_safetensors(a, p), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(theus_state_load_safetensors(b, p), THEUS_OK, "%s", theus_last_error_message());
    assert_same(a, b, 1);
    cr_assert_eq(theus_state_version(b), 2, "one transaction");
    float zero[2] = {0, 0}, sig[2];
    read_field(b, "sig", sig);
    cr_assert_eq(memcmp(sig, zero, sizeof sig), 0, "signal zone not saved");

    st_header h = read_header(p);
    cr_assert_eq(h.ntensors, 13u);
    cr_assert_eq(st_header_find(&h, "sig"), -1);
    cr_assert_str_eq(st_header_meta(&h, "theus.format"), "1");
    cr_assert_str_eq(st_header_meta(&h, "theus.version"), "3");
    cr_assert_not_null(strstr(st_header_meta(&h, "theus.field_versions"), "\"bf16\":3"));
    cr_assert_not_null(strstr(st_header_meta(&h, "theus.schema"), "\"bf16\""));
    long k = st_header_find(&h, "bf16");
    cr_assert_geq(k, 0);
    cr_assert_eq(h.tensors[k].dtype, THEUS_DTYPE_BF16);
    st_header_free(&h);
    theus_state_destroy(a);
    theus_state_destroy(b);
}

Test(safetensors, save_replaces_atomically_and_leaves_no_temporary)
{
    theus_state *a = make(all_dtypes);
    const char *p = path_in("x.safetensors");
    FILE *fp = fopen(p, "w");
    fputs("old", fp);
    fclose(fp);
    fill_all(a, 1);
    cr_assert_eq(theus_state_save_safetensors(a, p), THEUS_OK);
    DIR *d = opendir(dfx_root);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    cr_assert_eq(n, 1, "only the final file");
    st_header h = read_header(p);
    st_header_free(&h);
    /* A directory that does not exist: an error, no file. */
    cr_assert_eq(theus_state_save_safetensors(a, path_in("no/such/dir.st")), THEUS_ENOENT);
    cr_assert_neq(theus_last_error_message()[0], '\0');
    theus_state_destroy(a);
}

/* ---- loading foreign files ------------------------------------------------------------ */

static void write_raw(const char *path, const char *json, uint64_t hdr_len, const void *data,
                      size_t ndata)
{
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    unsigned char pre[8];
    for (int i = 0; i < 8; i++)
        pre[i] = (unsigned char)(hdr_len >> (8 * i));
    fwrite(pre, 1, 8, fp);
    fwrite(json, 1, strlen(json), fp);
    if (ndata)
        fwrite(data, 1, ndata, fp);
    fclose(fp);
}

static void write_file(const char *path, const char *json, const void *data, size_t ndata)
{
    write_raw(path, json, strlen(json), data, ndata);
}

static const char *small =
    "{\"name\": \"small\", \"fields\": {"
    "\"w\": {\"dtype\": \"f32\", \"shape\": [2, 2]},"
    "\"step\": {\"dtype\": \"i64\", \"shape\": []},"
    "\"seed\": {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"}}}";

static void assert_untouched(theus_state *st)
{
    cr_assert_eq(theus_state_version(st), 1);
    float w[4];
    int64_t s;
    read_field(st, "w", w);
    read_field(st, "step", &s);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(w[i], 0.0f);
    cr_assert_eq(s, 0);
}

static const float W[4] = {1, 2, 3, 4};

Test(safetensors, foreign_file_loads_as_one_transaction)
{
    theus_state *st = make(small);
    unsigned char data[24];
    int64_t step = 42;
    memcpy(data, W, 16);
    memcpy(data + 16, &step, 8);
    /* Tensors in any order, padding spaces after the JSON. */
    write_file(path_in("f.st"),
               "{\"step\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[16,24]},"
               "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
               "\"__metadata__\":{\"format\":\"pt\"}}   ",
               data, sizeof data);
    cr_assert_eq(theus_state_load_safetensors(st, path_in("f.st")), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_state_version(st), 2);
    float w[4];
    int64_t s;
    read_field(st, "w", w);
    read_field(st, "step", &s);
    cr_assert_eq(memcmp(w, W, 16), 0);
    cr_assert_eq(s, 42);
    theus_state_destroy(st);
}

/* A bad file: the code, a message holding @needle, and the state untouched. */
static void expect_refused(const char *json, uint64_t hdr_len, const void *data, size_t n,
                           int code, const char *needle)
{
    theus_state *st = make(small);
    write_raw(path_in("bad.st"), json, hdr_len, data, n);
    int rc = theus_state_load_safetensors(st, path_in("bad.st"));
    const char *msg = theus_last_error_message();
    cr_assert_eq(rc, code, "got %d (%s) for %s", rc, msg, json);
    cr_assert_not_null(strstr(msg, needle), "message '%s' lacks '%s'", msg, needle);
    assert_untouched(st);
    theus_state_destroy(st);
}

static void refused(const char *json, const void *data, size_t n, int code, const char *needle)
{
    expect_refused(json, strlen(json), data, n, code, needle);
}

static unsigned char zeros[64];

Test(safetensors, bad_lengths)
{
    theus_state *st = make(small);
    FILE *fp = fopen(path_in("short.st"), "wb");
    fwrite("\x05\x00\x00", 1, 3, fp);
    fclose(fp);
    cr_assert_eq(theus_state_load_safetensors(st, path_in("short.st")), THEUS_ECORRUPT);
    cr_assert_eq(theus_state_load_safetensors(st, path_in("missing.st")), THEUS_ENOENT);
    assert_untouched(st);
    theus_state_destroy(st);
    const char *j = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    expect_refused(j, strlen(j) + 100, zeros, 16, THEUS_ECORRUPT, "beyond the end");
    expect_refused(j, strlen(j) + 17, zeros, 16, THEUS_ECORRUPT, "truncated header");
    expect_refused(j, (uint64_t)1 << 62, zeros, 16, THEUS_ECORRUPT, "exceeds the limit");
    expect_refused(j, 0, zeros, 16, THEUS_ECORRUPT, "too small");
    expect_refused(j, strlen(j) - 3, zeros, 16, THEUS_ECORRUPT, "not valid JSON");
}

Test(safetensors, bad_json)
{
    refused("[1, 2]", NULL, 0, THEUS_ECORRUPT, "start with '{'");
    refused("{\"w\": 3}", NULL, 0, THEUS_ECORRUPT, "'w' is not an object");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
            "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
            zeros, 16, THEUS_ECORRUPT, "duplicate");
    refused("{\"__metadata__\":{\"a\":1}}", NULL, 0, THEUS_ECORRUPT, "not a string");
    refused("{\"__metadata__\":[]}", NULL, 0, THEUS_ECORRUPT, "not an object");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16],\"x\":1}}",
            zeros, 16, THEUS_ECORRUPT, "unknown key");
}

Test(safetensors, bad_dtypes_and_shapes)
{
    refused("{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", zeros, 4,
            THEUS_ECORRUPT, "unknown dtype 'F8_E4M3'");
    refused("{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 4,
            THEUS_ECORRUPT, "unknown dtype");
    refused("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 4, THEUS_ECORRUPT,
            "dtype missing");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", zeros, 4,
            THEUS_ECORRUPT, "non-negative");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", zeros, 4,
            THEUS_ECORRUPT, "non-negative");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
            zeros, 4, THEUS_ECORRUPT, "overflows");
    refused("{\"w\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,4]}}",
            zeros, 4, THEUS_ECORRUPT, "overflows");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
            zeros, 4, THEUS_ECORRUPT, "dimensions");
}

Test(safetensors, bad_data_offsets)
{
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
            "\"step\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[8,16]}}",
            zeros, 16, THEUS_ECORRUPT, "overlap");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
            "\"step\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[24,32]}}",
            zeros, 32, THEUS_ECORRUPT, "hole");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", zeros, 8,
            THEUS_ECORRUPT, "beyond the data section");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", zeros, 24,
            THEUS_ECORRUPT, "the tensors end at byte 16 of a 24-byte data section");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", zeros, 12,
            THEUS_ECORRUPT, "need 16");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[16,0]}}", zeros, 16,
            THEUS_ECORRUPT, "invalid");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0]}}", zeros, 16,
            THEUS_ECORRUPT, "pair");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[-16,0]}}", zeros, 16,
            THEUS_ECORRUPT, "invalid");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,99999999999999999999]}}",
            zeros, 16, THEUS_ECORRUPT, "JSON");
}

Test(safetensors, mismatches_name_the_tensor_and_change_nothing)
{
    unsigned char data[24] = {0};
    memcpy(data, W, 16);
    /* A valid tensor first, a wrong one after: the first must not be applied either. */
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
            "\"step\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
            data, 24, THEUS_ESCHEMA, "tensor 'step' is I32, field 'step' is I64");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", data, 16,
            THEUS_ESCHEMA, "tensor 'w' has shape [4], field 'w' has shape [2, 2]");
    refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
            "\"extra\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
            data, 24, THEUS_ENOENT, "tensor 'extra' names no field");
}

static const char *rename_map(const char *tensor, void *user)
{
    (void)user;
    if (strcmp(tensor, "model.weight") == 0)
        return "w";
    if (strcmp(tensor, "drop.me") == 0)
        return NULL;
    return tensor;
}

Test(safetensors, unknown_names_skipped_or_mapped)
{
    unsigned char data[32] = {0};
    memcpy(data, W, 16);
    const char *j = "{\"model.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                    "\"drop.me\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]},"
                    "\"other\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[24,32]}}";
    write_file(path_in("m.st"), j, data, 32);
    theus_state *st = make(small);
    cr_assert_eq(theus_state_load_safetensors(st, path_in("m.st")), THEUS_ENOENT);
    theus_load_options o = THEUS_LOAD_OPTIONS_INIT;
    o.map = rename_map;
    cr_assert_eq(theus_state_load_safetensors_ex(st, path_in("m.st"), &o), THEUS_ENOENT,
                 "'other' still unknown");
    assert_untouched(st);
    o.skip_unknown = 1;
    cr_assert_eq(theus_state_load_safetensors_ex(st, path_in("m.st"), &o), THEUS_OK, "%s",
                 theus_last_error_message());
    float w[4];
    read_field(st, "w", w);
    cr_assert_eq(memcmp(w, W, 16), 0);
    o.skip_unknown = 7;
    cr_assert_eq(theus_state_load_safetensors_ex(st, path_in("m.st"), &o), THEUS_EINVAL);
    theus_state_destroy(st);
}

Test(safetensors, const_fields_only_before_the_first_commit)
{
    unsigned char data[24];
    uint64_t seed = 77;
    memcpy(data, W, 16);
    memcpy(data + 16, &seed, 8);
    const char *j = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                    "\"seed\":{\"dtype\":\"U64\",\"shape\":[],\"data_offsets\":[16,24]}}";
    write_file(path_in("c.st"), j, data, 24);
    theus_state *st = make(small);
    cr_assert_eq(theus_state_load_safetensors(st, path_in("c.st")), THEUS_OK, "%s",
                 theus_last_error_message());
    uint64_t s = 0;
    read_field(st, "seed", &s);
    cr_assert_eq(s, 77);
    /* Now at version 2: the const field refuses, and w is not touched either. */
    float w2[4] = {9, 9, 9, 9};
    theus_tx *tx;
    theus_tx_begin(st, NULL, &tx);
    theus_tx_write(tx, "w", NULL, w2, THEUS_MEM_HOST);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert_eq(theus_state_load_safetensors(st, path_in("c.st")), THEUS_EPERM);
    cr_assert_not_null(strstr(theus_last_error_message(), "const field 'seed'"));
    float w[4];
    read_field(st, "w", w);
    cr_assert_eq(memcmp(w, w2, 16), 0);
    cr_assert_eq(theus_state_version(st), 3);
    theus_state_destroy(st);
}

Test(safetensors, constraint_violation_leaves_const_fields_as_they_were)
{
    const char *schema = "{\"name\": \"c\", \"fields\": {"
                         "\"w\": {\"dtype\": \"f32\", \"shape\": [2], \"constraints\": {\"max\": 1}},"
                         "\"seed\": {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"}}}";
    unsigned char data[16];
    float w[2] = {5, 5};
    uint64_t seed = 9;
    memcpy(data, w, 8);
    memcpy(data + 8, &seed, 8);
    write_file(path_in("v.st"),
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"seed\":{\"dtype\":\"U64\",\"shape\":[],\"data_offsets\":[8,16]}}",
               data, 16);
    theus_state *st = make(schema);
    cr_assert_eq(theus_state_load_safetensors(st, path_in("v.st")), THEUS_ESCHEMA);
    uint64_t s = 1;
    read_field(st, "seed", &s);
    cr_assert_eq(s, 0, "const field put back");
    cr_assert_eq(theus_state_version(st), 1);
    theus_state_destroy(st);
}

/* The parser on its own: sizes at the edges. */
Test(safetensors, parser_edges)
{
    char err[256];
    st_header h;
    cr_assert_eq(st_header_parse("{}", 2, 0, &h, err, sizeof err), THEUS_OK);
    st_header_free(&h);
    cr_assert_eq(st_header_parse("{}", 2, 1, &h, err, sizeof err), THEUS_ECORRUPT);
    const char *zero = "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]}}";
    cr_assert_eq(st_header_parse(zero, strlen(zero), 0, &h, err, sizeof err), THEUS_OK, "%s", err);
    cr_assert_eq(h.tensors[0].nbytes, 0u);
    st_header_free(&h);
    for (int dt = 0; dt < THEUS_DTYPE_COUNT; dt++) {
        theus_dtype back;
        cr_assert_eq(st_dtype_from_name(st_dtype_name((theus_dtype)dt), &back), 0);
        cr_assert_eq((int)back, dt);
    }
}
