/* Safetensors headers: the strict reader (every check the reference implementation makes,
 * and a few it leaves to the data: overflowing shape products, a section longer than its
 * tensors) and the writer of the 8-byte length + padded JSON prefix. */
#include "durable/safetensors.h"
#include "alloc.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const st_names[THEUS_DTYPE_COUNT] = {
    [THEUS_DTYPE_BOOL] = "BOOL", [THEUS_DTYPE_U8] = "U8",     [THEUS_DTYPE_I8] = "I8",
    [THEUS_DTYPE_U16] = "U16",   [THEUS_DTYPE_I16] = "I16",   [THEUS_DTYPE_U32] = "U32",
    [THEUS_DTYPE_I32] = "I32",   [THEUS_DTYPE_U64] = "U64",   [THEUS_DTYPE_I64] = "I64",
    [THEUS_DTYPE_F16] = "F16",   [THEUS_DTYPE_BF16] = "BF16", [THEUS_DTYPE_F32] = "F32",
    [THEUS_DTYPE_F64] = "F64",
};

const char *st_dtype_name(theus_dtype dt)
{
    return (unsigned)dt < THEUS_DTYPE_COUNT ? st_names[dt] : NULL;
}

int st_dtype_from_name(const char *name, theus_dtype *out)
{
    for (int i = 0; i < THEUS_DTYPE_COUNT; i++)
        if (strcmp(name, st_names[i]) == 0) {
            *out = (theus_dtype)i;
            return 0;
        }
    return -1;
}

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

int st_header_length(const unsigned char prefix[8], uint64_t file_size, uint64_t *len,
                     char *err, size_t errlen)
{
    if (file_size < 8)
        return fail(err, errlen, THEUS_ECORRUPT,
                    "%llu bytes: shorter than the 8-byte header length",
                    (unsigned long long)file_size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | prefix[i];
    if (n < 2)
        return fail(err, errlen, THEUS_ECORRUPT, "header length %llu at byte 0 is too small",
                    (unsigned long long)n);
    if (n > ST_HEADER_MAX)
        return fail(err, errlen, THEUS_ECORRUPT,
                    "header length %llu at byte 0 exceeds the limit of %u bytes",
                    (unsigned long long)n, ST_HEADER_MAX);
    if (n > file_size - 8)
        return fail(err, errlen, THEUS_ECORRUPT,
                    "header length %llu at byte 0 goes beyond the end of the file "
                    "(%llu bytes): truncated header",
                    (unsigned long long)n, (unsigned long long)file_size);
    *len = n;
    return THEUS_OK;
}

void st_header_free(st_header *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->ntensors; i++)
        theus_xfree(h->tensors[i].name);
    theus_xfree(h->tensors);
    for (size_t i = 0; i < h->nmeta; i++) {
        theus_xfree(h->meta_keys[i]);
        theus_xfree(h->meta_vals[i]);
    }
    theus_xfree(h->meta_keys);
    theus_xfree(h->meta_vals);
    memset(h, 0, sizeof *h);
}

/* Printable, bounded copy of a tensor name for messages. */
static const char *quote(const char *s, char *buf, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 4 < len; i++)
        buf[j++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (strlen(s) + 4 >= len && j + 4 <= len) {
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j] = '\0';
    return buf;
}

static int parse_metadata(json_t *m, st_header *h, char *err, size_t errlen)
{
    if (!json_is_object(m))
        return fail(err, errlen, THEUS_ECORRUPT, "__metadata__ is not an object");
    size_t n = json_object_size(m);
    if (n == 0)
        return THEUS_OK;
    h->meta_keys = theus_xcalloc(n, sizeof *h->meta_keys);
    h->meta_vals = theus_xcalloc(n, sizeof *h->meta_vals);
    if (!h->meta_keys || !h->meta_vals)
        return fail(err, errlen, THEUS_ENOMEM, "out of memory reading __metadata__");
    const char *k;
    json_t *v;
    char q[80];
    json_object_foreach(m, k, v) {
        if (!json_is_string(v))
            return fail(err, errlen, THEUS_ECORRUPT, "__metadata__ value of '%s' is not a string",
                        quote(k, q, sizeof q));
        h->meta_keys[h->nmeta] = theus_xstrdup(k);
        h->meta_vals[h->nmeta] = theus_xstrdup(json_string_value(v));
        h->nmeta++;
        if (!h->meta_keys[h->nmeta - 1] || !h->meta_vals[h->nmeta - 1])
            return fail(err, errlen, THEUS_ENOMEM, "out of memory reading __metadata__");
    }
    return THEUS_OK;
}

static int parse_tensor(const char *name, json_t *v, st_tensor *t, char *err, size_t errlen)
{
    char q[80];
    quote(name, q, sizeof q);
    if (!json_is_object(v))
        return fail(err, errlen, THEUS_ECORRUPT, "tensor '%s' is not an object", q);
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return fail(err, errlen, THEUS_ECORRUPT, "tensor '%s': unknown key", q);
    }
    json_t *dt = json_object_get(v, "dtype");
    json_t *sh = json_object_get(v, "shape");
    json_t *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return fail(err, errlen, THEUS_ECORRUPT, "tensor '%s': dtype missing or not a string", q);
    if (st_dtype_from_name(json_string_value(dt), &t->dtype) != 0) {
        char qd[40];
        return fail(err, errlen, THEUS_ECORRUPT, "tensor '%s': unknown dtype '%s'", q,
                    quote(json_string_value(dt), qd, sizeof qd));
    }
    if (!json_is_array(sh))
        return fail(err, errlen, THEUS_ECORRUPT, "tensor '%s': shape missing or not an array", q);
    if (json_array_size(sh) > THEUS_MAX_DIMS)
        return fail(err, errlen, THEUS_ECORRUPT, "tensor '%s': %zu dimensions (at most %d)", q,
                    json_array_size(sh), THEUS_MAX_DIMS);
    t->ndim = (int)json_array_size(sh);
    uint64_t nel = 1;
    int overflow = 0;
    for (int d = 0; d < t->ndim; d++) {
        json_t *e = json_array_get(sh, (size_t)d);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return fail(err, errlen, THEUS_ECORRUPT,
                        "tensor '%s': shape[%d] is not a non-negative integer", q, d);
        uint64_t ext = (uint64_t)json_integer_value(e);
        t->shape[d] = (int64_t)ext;
        if (ext != 0 && nel > UINT64_MAX / ext)
            overflow = 1;
        else
            nel *= ext;
    }
    uint64_t es = theus_dtype_size(t->dtype);
    if (!overflow && nel != 0 && nel > (uint64_t)INT64_MAX / es)
        overflow = 1;
    /* A zero extent makes the product 0 whatever the others are, but the reference reader
     * computes the product in order and fails on overflow too: refuse such shapes alike. */
    if (overflow)
        return fail(err, errlen, THEUS_ECORRUPT, "tensor '%s': shape product overflows", q);
    t->nbytes = nel * es;
    if (!json_is_array(off) || json_array_size(off) != 2 ||
        !json_is_integer(json_array_get(off, 0)) || !json_is_integer(json_array_get(off, 1)))
        return fail(err, errlen, THEUS_ECORRUPT,
                    "tensor '%s': data_offsets is not a pair of integers", q);
    json_int_t b = json_integer_value(json_array_get(off, 0));
    json_int_t e = json_integer_value(json_array_get(off, 1));
    if (b < 0 || e < b)
        return fail(err, errlen, THEUS_ECORRUPT, "tensor '%s': data_offsets [%lld, %lld] invalid",
                    q, (long long)b, (long long)e);
    t->begin = (uint64_t)b;
    t->end = (uint64_t)e;
    if (t->end - t->begin != t->nbytes)
        return fail(err, errlen, THEUS_ECORRUPT,
                    "tensor '%s': data_offsets [%lld, %lld] hold %llu bytes, its dtype and shape "
                    "need %llu", q, (long long)b, (long long)e,
                    (unsigned long long)(t->end - t->begin), (unsigned long long)t->nbytes);
    return THEUS_OK;
}

static int by_begin(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Sorted by begin, the tensors must tile [0, data_bytes) exactly. */
static int check_layout(st_header *h, uint64_t data_bytes, char *err, size_t errlen)
{
    h->data_bytes = 0;
    if (h->ntensors == 0)
        return data_bytes == 0 ? THEUS_OK
                               : fail(err, errlen, THEUS_ECORRUPT,
                                      "no tensors, but %llu bytes of data follow the header",
                                      (unsigned long long)data_bytes);
    st_tensor **order = theus_xmalloc(h->ntensors * sizeof *order);
    if (!order)
        return fail(err, errlen, THEUS_ENOMEM, "out of memory checking data_offsets");
    for (size_t i = 0; i < h->ntensors; i++)
        order[i] = &h->tensors[i];
    qsort(order, h->ntensors, sizeof *order, by_begin);
    uint64_t at = 0;
    int rc = THEUS_OK;
    char q[80];
    for (size_t i = 0; i < h->ntensors && rc == THEUS_OK; i++) {
        const st_tensor *t = order[i];
        if (t->begin < at)
            rc = fail(err, errlen, THEUS_ECORRUPT,
                      "tensor '%s': data_offsets [%llu, %llu] overlap the previous tensor's "
                      "(which ends at %llu)", quote(t->name, q, sizeof q),
                      (unsigned long long)t->begin, (unsigned long long)t->end,
                      (unsigned long long)at);
        else if (t->begin > at)
            rc = fail(err, errlen, THEUS_ECORRUPT,
                      "tensor '%s': data_offsets [%llu, %llu] leave a hole after byte %llu",
                      quote(t->name, q, sizeof q), (unsigned long long)t->begin,
                      (unsigned long long)t->end, (unsigned long long)at);
        else if (t->end > data_bytes)
            rc = fail(err, errlen, THEUS_ECORRUPT,
                      "tensor '%s': data_offsets [%llu, %llu] go beyond the data section "
                      "(%llu bytes)", quote(t->name, q, sizeof q), (unsigned long long)t->begin,
                      (unsigned long long)t->end, (unsigned long long)data_bytes);
        at = t->end;
    }
    if (rc == THEUS_OK && at != data_bytes)
        rc = fail(err, errlen, THEUS_ECORRUPT,
                  "the tensors end at byte %llu of a %llu-byte data section",
                  (unsigned long long)at, (unsigned long long)data_bytes);
    theus_xfree(order);
    h->data_bytes = at;
    return rc;
}

int st_header_parse(const char *json, size_t len, uint64_t data_bytes, st_header *out,
                    char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (len == 0 || json[0] != '{')
        return fail(err, errlen, THEUS_ECORRUPT, "header does not start with '{'");
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return fail(err, errlen, THEUS_ECORRUPT, "header is not valid JSON: %s (byte %d)",
                    je.text, je.position);
    int rc = THEUS_OK;
    if (!json_is_object(root)) {
        rc = fail(err, errlen, THEUS_ECORRUPT, "header is not a JSON object");
        goto done;
    }
    size_t n = json_object_size(root);
    if (n > 0 && !(out->tensors = theus_xcalloc(n, sizeof *out->tensors))) {
        rc = fail(err, errlen, THEUS_ENOMEM, "out of memory reading the header");
        goto done;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (strcmp(k, "__metadata__") == 0) {
            rc = parse_metadata(v, out, err, errlen);
        } else {
            st_tensor *t = &out->tensors[out->ntensors];
            if (!(t->name = theus_xstrdup(k))) {
                rc = fail(err, errlen, THEUS_ENOMEM, "out of memory reading the header");
                break;
            }
            out->ntensors++;
            rc = parse_tensor(k, v, t, err, errlen);
        }
        if (rc != THEUS_OK)
            break;
    }
    if (rc == THEUS_OK)
        rc = check_layout(out, data_bytes, err, errlen);
done:
    json_decref(root);
    out->data_start = 8 + len;
    if (rc != THEUS_OK)
        st_header_free(out);
    return rc;
}

long st_header_find(const st_header *h, const char *name)
{
    for (size_t i = 0; i < h->ntensors; i++)
        if (strcmp(h->tensors[i].name, name) == 0)
            return (long)i;
    return -1;
}

const char *st_header_meta(const st_header *h, const char *key)
{
    for (size_t i = 0; i < h->nmeta; i++)
        if (strcmp(h->meta_keys[i], key) == 0)
            return h->meta_vals[i];
    return NULL;
}

int st_header_build(const st_out_tensor *t, size_t n, const char *const *meta_keys,
                    const char *const *meta_vals, size_t nmeta, unsigned char **out,
                    size_t *outlen, char *err, size_t errlen)
{
    return st_header_build_padded(t, n, meta_keys, meta_vals, nmeta, 0, out, outlen, err,
                                  errlen);
}

int st_header_build_padded(const st_out_tensor *t, size_t n, const char *const *meta_keys,
                           const char *const *meta_vals, size_t nmeta, size_t min_len,
                           unsigned char **out, size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    int rc = THEUS_ENOMEM;
    json_t *root = json_object();
    if (!root)
        return fail(err, errlen, THEUS_ENOMEM, "out of memory building a header");
    if (nmeta > 0) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m) != 0)
            goto oom;
        for (size_t i = 0; i < nmeta; i++)
            if (json_object_set_new(m, meta_keys[i], json_string(meta_vals[i])) != 0)
                goto oom;
    }
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const char *dn = st_dtype_name(t[i].dtype);
        if (!dn) {
            json_decref(root);
            return fail(err, errlen, THEUS_EINVAL, "tensor '%s': bad dtype", t[i].name);
        }
        json_t *o = json_object(), *sh = json_array(), *off = json_array();
        if (!o || !sh || !off) {
            json_decref(o);
            json_decref(sh);
            json_decref(off);
            goto oom;
        }
        for (int d = 0; d < t[i].ndim; d++)
            json_array_append_new(sh, json_integer((json_int_t)t[i].shape[d]));
        json_array_append_new(off, json_integer((json_int_t)at));
        json_array_append_new(off, json_integer((json_int_t)(at + t[i].nbytes)));
        at += t[i].nbytes;
        json_object_set_new(o, "dtype", json_string(dn));
        json_object_set_new(o, "shape", sh);
        json_object_set_new(o, "data_offsets", off);
        if (json_object_set_new(root, t[i].name, o) != 0)
            goto oom;
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    root = NULL;
    if (!text)
        return fail(err, errlen, THEUS_ENOMEM, "out of memory building a header");
    size_t jl = strlen(text);
    size_t padded = (jl + 7) / 8 * 8;
    if (min_len > 8 && padded < min_len - 8)
        padded = (min_len - 8 + 7) / 8 * 8;
    unsigned char *buf = theus_xmalloc(8 + padded);
    if (!buf) {
        free(text);
        return fail(err, errlen, THEUS_ENOMEM, "out of memory building a header");
    }
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, text, jl);
    memset(buf + 8 + jl, ' ', padded - jl);
    free(text);
    *out = buf;
    *outlen = 8 + padded;
    return THEUS_OK;
oom:
    json_decref(root);
    return fail(err, errlen, rc, "out of memory building a header");
}
