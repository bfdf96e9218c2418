/* Field selectors (FIELD[REGION]) and the text and JSON form of element values for
 * theus dump: integers exact, floats in the shortest form that reads back to the same
 * value, NaN and infinities as the strings "NaN", "Infinity", "-Infinity" in JSON. */
#include "cli.h"
#include "dtype.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int cli_parse_selector(const char *sel, char *field, size_t fieldlen, char *region, size_t regionlen)
{
    const char *br = strchr(sel, '[');
    size_t n = br ? (size_t)(br - sel) : strlen(sel);
    if (n == 0 || n >= fieldlen)
        return THEUS_EINVAL;
    memcpy(field, sel, n);
    field[n] = '\0';
    region[0] = '\0';
    if (!br)
        return THEUS_OK;
    size_t len = strlen(br);
    if (len < 2 || br[len - 1] != ']' || len - 2 >= regionlen)
        return THEUS_EINVAL;
    memcpy(region, br + 1, len - 2);
    region[len - 2] = '\0';
    return THEUS_OK;
}

static int parse_index(const char **p, int64_t *out)
{
    while (isspace((unsigned char)**p))
        (*p)++;
    if (!(**p == '-' || isdigit((unsigned char)**p)))
        return 0;
    char *end;
    errno = 0;
    long long v = strtoll(*p, &end, 10);
    if (errno || end == *p)
        return -1;
    *p = end;
    while (isspace((unsigned char)**p))
        (*p)++;
    *out = v;
    return 1;
}

int cli_parse_region(const char *text, const cli_field *f, theus_region *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->ndim = f->ndim;
    for (int d = 0; d < f->ndim; d++)
        r->stop[d] = f->shape[d];
    const char *p = text;
    int d = 0;
    while (*p) {
        if (d >= f->ndim) {
            snprintf(err, errlen, "region [%s]: more indices than %s's %d dimension%s", text,
                     f->name, f->ndim, f->ndim == 1 ? "" : "s");
            return THEUS_EINVAL;
        }
        int64_t dim = f->shape[d], a = 0, b = dim;
        int ha = parse_index(&p, &a);
        if (ha < 0)
            goto bad;
        if (*p == ':') {
            p++;
            int hb = parse_index(&p, &b);
            if (hb < 0)
                goto bad;
            if (!ha)
                a = 0;
            if (!hb)
                b = dim;
        } else if (ha) {
            if (a < 0)
                a += dim;
            b = a + 1;
            if (a < 0 || a >= dim) {
                snprintf(err, errlen, "region [%s]: index %lld is out of range for dimension %d "
                         "(size %lld)", text, (long long)a, d, (long long)dim);
                return THEUS_EINVAL;
            }
        } else {
            goto bad;
        }
        if (a < 0)
            a += dim;
        if (b < 0)
            b += dim;
        if (a < 0 || b > dim || a > b) {
            snprintf(err, errlen, "region [%s]: %lld:%lld is out of range for dimension %d "
                     "(size %lld)", text, (long long)a, (long long)b, d, (long long)dim);
            return THEUS_EINVAL;
        }
        r->start[d] = a;
        r->stop[d] = b;
        d++;
        if (*p == ',')
            p++;
        else if (*p)
            goto bad;
    }
    return THEUS_OK;
bad:
    snprintf(err, errlen, "region [%s]: expected comma-separated i, a:b, a:, :b or : per "
             "dimension", text);
    return THEUS_EINVAL;
}

void cli_put_json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", out);
        else if (*p == '\t')
            fputs("\\t", out);
        else if (*p < 0x20)
            fprintf(out, "\\u%04x", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

/* The shortest %.*g form of @v that reads back as the same value of the dtype. */
static void put_float(FILE *out, int dtype, double v, int json)
{
    if (isnan(v)) {
        fputs(json ? "\"NaN\"" : "nan", out);
        return;
    }
    if (isinf(v)) {
        fputs(v > 0 ? (json ? "\"Infinity\"" : "inf") : (json ? "\"-Infinity\"" : "-inf"), out);
        return;
    }
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        double back = strtod(buf, NULL);
        int same;
        switch (dtype) {
        case THEUS_DTYPE_F16: same = theus_f32_to_f16((float)back) == theus_f32_to_f16((float)v); break;
        case THEUS_DTYPE_BF16: same = theus_f32_to_bf16((float)back) == theus_f32_to_bf16((float)v); break;
        case THEUS_DTYPE_F32: same = (float)back == (float)v; break;
        default: same = back == v; break;
        }
        if (same)
            break;
    }
    fputs(buf, out);
}

void cli_put_value(FILE *out, int dtype, const void *buf, size_t i, int json)
{
    const unsigned char *b = buf;
    switch (dtype) {
    case THEUS_DTYPE_BOOL: fputs(b[i] ? "true" : "false", out); break;
    case THEUS_DTYPE_U8: fprintf(out, "%u", (unsigned)b[i]); break;
    case THEUS_DTYPE_I8: fprintf(out, "%d", (int)((const int8_t *)buf)[i]); break;
    case THEUS_DTYPE_U16: fprintf(out, "%u", (unsigned)((const uint16_t *)buf)[i]); break;
    case THEUS_DTYPE_I16: fprintf(out, "%d", (int)((const int16_t *)buf)[i]); break;
    case THEUS_DTYPE_U32: fprintf(out, "%" PRIu32, ((const uint32_t *)buf)[i]); break;
    case THEUS_DTYPE_I32: fprintf(out, "%" PRId32, ((const int32_t *)buf)[i]); break;
    case THEUS_DTYPE_U64: fprintf(out, "%" PRIu64, ((const uint64_t *)buf)[i]); break;
    case THEUS_DTYPE_I64: fprintf(out, "%" PRId64, ((const int64_t *)buf)[i]); break;
    case THEUS_DTYPE_F16:
        put_float(out, dtype, theus_f16_to_f32(((const uint16_t *)buf)[i]), json);
        break;
    case THEUS_DTYPE_BF16:
        put_float(out, dtype, theus_bf16_to_f32(((const uint16_t *)buf)[i]), json);
        break;
    case THEUS_DTYPE_F32: put_float(out, dtype, ((const float *)buf)[i], json); break;
    case THEUS_DTYPE_F64: put_float(out, dtype, ((const double *)buf)[i], json); break;
    default: fputs(json ? "null" : "?", out); break;
    }
}
