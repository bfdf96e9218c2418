/* The schema parser: JSON text (docs/schema.md) to a theus_schema, through jansson.
 * Every refusal names the JSON path of the problem and its line and column (json_locate.c). */
#include "schema.h"
#include "alloc.h"
#include "dtype.h"
#include "json_kind.h"
#include "json_locate.h"

#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if defined(__GNUC__)
#define SCHEMA_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define SCHEMA_PRINTF(f, a)
#endif

/* Deepest path a refusal can name: $.fields.<name>.audit[i].<key>. */
#define SCHEMA_MAX_DEPTH 5
/* Longest key or string value quoted in a message; longer ones end with "...". */
#define SCHEMA_QUOTE_MAX 64

typedef struct parse_ctx {
    const char *text;          /* the JSON text, for json_locate */
    char *err;                 /* may be NULL */
    size_t errlen;
    jsonloc_step path[SCHEMA_MAX_DEPTH];
    size_t depth;
} parse_ctx;

static void push_key(parse_ctx *c, const char *key)
{
    if (c->depth < SCHEMA_MAX_DEPTH)
        c->path[c->depth] = (jsonloc_step){.key = key, .index = 0};
    c->depth++;
}

static void push_index(parse_ctx *c, size_t i)
{
    if (c->depth < SCHEMA_MAX_DEPTH)
        c->path[c->depth] = (jsonloc_step){.key = NULL, .index = i};
    c->depth++;
}

static void pop(parse_ctx *c)
{
    c->depth--;
}

/* ---- message text ------------------------------------------------------------------- */

/* Bounded string builder: appends what fits, always NUL-terminated. */
typedef struct sbuf {
    char *b;
    size_t cap, len;
} sbuf;

static void sb_putc(sbuf *s, char ch)
{
    if (s->len + 1 < s->cap) {
        s->b[s->len++] = ch;
        s->b[s->len] = '\0';
    }
}

static void sb_puts(sbuf *s, const char *str)
{
    while (*str)
        sb_putc(s, *str++);
}

/* Append @str escaped as inside a JSON string (quotes, backslashes and control characters
 * escaped, so a message never carries raw control bytes), cut after SCHEMA_QUOTE_MAX bytes
 * at a character boundary. */
static void sb_escaped(sbuf *s, const char *str)
{
    size_t i = 0;
    for (; str[i] && (i < SCHEMA_QUOTE_MAX || ((unsigned char)str[i] & 0xC0) == 0x80); i++) {
        unsigned char ch = (unsigned char)str[i];
        if (ch == '"' || ch == '\\') {
            sb_putc(s, '\\');
            sb_putc(s, (char)ch);
        } else if (ch < 0x20 || ch == 0x7f) {
            char hex[8];
            snprintf(hex, sizeof hex, "\\u%04x", ch);
            sb_puts(s, hex);
        } else {
            sb_putc(s, (char)ch);
        }
    }
    if (str[i])
        sb_puts(s, "...");
}

/* A key that needs no quoting in a path: letters, digits, '_' and '-'. */
static int plain_key(const char *k)
{
    if (!*k || strlen(k) > SCHEMA_QUOTE_MAX)
        return 0;
    for (; *k; k++) {
        char ch = *k;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* "$.fields.w1.shape[2]"; keys that are not plain are written ["..."]. */
static void render_path(const parse_ctx *c, char *buf, size_t cap)
{
    sbuf s = {buf, cap, 0};
    buf[0] = '\0';
    sb_putc(&s, '$');
    size_t n = c->depth < SCHEMA_MAX_DEPTH ? c->depth : SCHEMA_MAX_DEPTH;
    for (size_t i = 0; i < n; i++) {
        const jsonloc_step *st = &c->path[i];
        if (!st->key) {
            char idx[32];
            snprintf(idx, sizeof idx, "[%zu]", st->index);
            sb_puts(&s, idx);
        } else if (plain_key(st->key)) {
            sb_putc(&s, '.');
            sb_puts(&s, st->key);
        } else {
            sb_puts(&s, "[\"");
            sb_escaped(&s, st->key);
            sb_puts(&s, "\"]");
        }
    }
}

/* @str quoted for a message, in @buf. */
static const char *quoted(const char *str, char *buf, size_t cap)
{
    sbuf s = {buf, cap, 0};
    buf[0] = '\0';
    sb_putc(&s, '"');
    sb_escaped(&s, str);
    sb_putc(&s, '"');
    return buf;
}

#define QUOTE_BUF (2 * 6 * SCHEMA_QUOTE_MAX + 16)

/* Refuse at the current path: the node's value, or its key when @at_key. */
static int fail(parse_ctx *c, int at_key, const char *fmt, ...) SCHEMA_PRINTF(3, 4);

static int fail(parse_ctx *c, int at_key, const char *fmt, ...)
{
    if (!c->err || c->errlen == 0)
        return THEUS_ESCHEMA;
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    char path[512];
    render_path(c, path, sizeof path);
    int line, col;
    size_t depth = c->depth < SCHEMA_MAX_DEPTH ? c->depth : SCHEMA_MAX_DEPTH;
    if (jsonloc_find(c->text, c->path, depth, at_key, &line, &col) == 0)
        snprintf(c->err, c->errlen, "schema: %s: %s (line %d, column %d)", path, what, line, col);
    else   /* cannot happen for text jansson accepted; keep the message anyway */
        snprintf(c->err, c->errlen, "schema: %s: %s", path, what);
    return THEUS_ESCHEMA;
}

static int fail_nomem(parse_ctx *c)
{
    if (c->err && c->errlen)
        snprintf(c->err, c->errlen, "schema: out of memory");
    return THEUS_ENOMEM;
}

/* ---- checks shared by every level --------------------------------------------------- */

static int in_list(const char *const *list, const char *key)
{
    for (; *list; list++)
        if (strcmp(*list, key) == 0)
            return 1;
    return 0;
}

/* Refuse the first key of @obj (in text order) that is not in @allowed. */
static int check_keys(parse_ctx *c, json_t *obj, const char *const *allowed, const char *shown)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        if (!in_list(allowed, key)) {
            push_key(c, key);
            return fail(c, 1, "unknown key (allowed: %s)", shown);
        }
    }
    return THEUS_OK;
}

static int expect_string(parse_ctx *c, const json_t *v)
{
    if (!json_is_string(v))
        return fail(c, 0, "expected a string, got %s", json_kind_phrase(v));
    return THEUS_OK;
}

/* A state or field name: 1..THEUS_NAME_MAX bytes, no control characters. @what says
 * which, for the messages. */
static int check_name_text(parse_ctx *c, const char *name, int at_key, const char *what)
{
    size_t len = strlen(name);
    if (len == 0)
        return fail(c, at_key, "%s must not be empty", what);
    if (len > THEUS_NAME_MAX)
        return fail(c, at_key, "%s is %zu bytes long; at most %d are allowed", what, len,
                    THEUS_NAME_MAX);
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return fail(c, at_key, "%s must not contain control characters", what);
    return THEUS_OK;
}

/* Optional free text under "description". */
static int parse_description(parse_ctx *c, json_t *obj)
{
    json_t *d = json_object_get(obj, "description");
    if (!d)
        return THEUS_OK;
    push_key(c, "description");
    int rc = expect_string(c, d);
    if (rc == THEUS_OK)
        pop(c);
    return rc;
}

/* ---- one field ---------------------------------------------------------------------- */

static int parse_dtype(parse_ctx *c, json_t *fobj, schema_field *f)
{
    json_t *v = json_object_get(fobj, "dtype");
    if (!v)
        return fail(c, 0, "missing required key \"dtype\"");
    push_key(c, "dtype");
    int rc = expect_string(c, v);
    if (rc)
        return rc;
    char q[QUOTE_BUF];
    if (dtype_from_name(json_string_value(v), &f->dtype) != 0 || theus_dtype_size(f->dtype) == 0)
        return fail(c, 0,
                    "unknown dtype %s (expected bool, u8, i8, u16, i16, u32, i32, u64, i64, "
                    "f16, bf16, f32 or f64)",
                    quoted(json_string_value(v), q, sizeof q));
    pop(c);
    return THEUS_OK;
}

static int parse_shape(parse_ctx *c, json_t *fobj, schema_field *f)
{
    json_t *v = json_object_get(fobj, "shape");
    if (!v)
        return fail(c, 0, "missing required key \"shape\" ([] for a scalar)");
    push_key(c, "shape");
    if (!json_is_array(v))
        return fail(c, 0, "expected an array of dimensions, got %s", json_kind_phrase(v));
    size_t n = json_array_size(v);
    if (n > THEUS_MAX_DIMS)
        return fail(c, 0, "at most %d dimensions are allowed, got %zu", THEUS_MAX_DIMS, n);
    for (size_t i = 0; i < n; i++) {
        json_t *d = json_array_get(v, i);
        push_index(c, i);
        if (!json_is_integer(d))
            return fail(c, 0, "expected a non-negative integer, got %s", json_kind_phrase(d));
        json_int_t x = json_integer_value(d);
        if (x < 0)
            return fail(c, 0, "dimension must be non-negative, got %" JSON_INTEGER_FORMAT, x);
        f->shape[i] = (int64_t)x;
        pop(c);
    }
    f->ndim = (int)n;

    /* Byte size in size_t and in int64_t. The product of the non-zero dimensions is
     * checked even when some dimension is 0: strides are computed from it. */
    const uint64_t limit =
        (uint64_t)SIZE_MAX < (uint64_t)INT64_MAX ? (uint64_t)SIZE_MAX : (uint64_t)INT64_MAX;
    size_t esize = theus_dtype_size(f->dtype);
    uint64_t total = esize;
    int has_zero = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t d = (uint64_t)f->shape[i];
        if (d == 0) {
            has_zero = 1;
            continue;
        }
        if (total > limit / d) {
            push_index(c, i);
            return fail(c, 0,
                        "shape too large: the product of the dimensions times the element "
                        "size (%zu) exceeds %" PRIu64 " bytes",
                        esize, limit);
        }
        total *= d;
    }
    f->nelems = has_zero ? 0 : (size_t)(total / esize);
    f->nbytes = f->nelems * esize;
    pop(c);
    return THEUS_OK;
}

/* Optional enum-valued key: index of the value in @names, @dflt when absent. */
static int parse_choice(parse_ctx *c, json_t *fobj, const char *key, const char *const *names,
                        const char *shown, int dflt, int *out)
{
    json_t *v = json_object_get(fobj, key);
    *out = dflt;
    if (!v)
        return THEUS_OK;
    push_key(c, key);
    int rc = expect_string(c, v);
    if (rc)
        return rc;
    for (int i = 0; names[i]; i++) {
        if (strcmp(names[i], json_string_value(v)) == 0) {
            *out = i;
            pop(c);
            return THEUS_OK;
        }
    }
    char q[QUOTE_BUF];
    return fail(c, 0, "unknown %s %s (expected %s)", key, quoted(json_string_value(v), q, sizeof q),
                shown);
}

static int parse_constraints(parse_ctx *c, json_t *fobj, schema_field *f)
{
    static const char *const keys[] = {"finite", "min", "max", NULL};
    json_t *obj = json_object_get(fobj, "constraints");
    if (!obj)
        return THEUS_OK;
    push_key(c, "constraints");
    if (!json_is_object(obj))
        return fail(c, 0, "expected an object, got %s", json_kind_phrase(obj));
    int rc = check_keys(c, obj, keys, "finite, min, max");
    if (rc)
        return rc;
    const char *key;
    json_t *v;
    theus_constraints *k = &f->cons;
    json_object_foreach(obj, key, v) {
        push_key(c, key);
        if (f->dtype == THEUS_DTYPE_BOOL)
            return fail(c, 0, "constraints are not allowed on a bool field");
        if (strcmp(key, "finite") == 0) {
            if (!dtype_is_float(f->dtype))
                return fail(c, 0, "\"finite\" applies only to f16, bf16, f32 and f64 fields");
            if (!json_is_boolean(v))
                return fail(c, 0, "expected true or false, got %s", json_kind_phrase(v));
            k->finite = json_is_true(v);
        } else {
            if (!json_is_number(v))
                return fail(c, 0, "expected a number, got %s", json_kind_phrase(v));
            double x = json_number_value(v);
            if (!isfinite(x))
                return fail(c, 0, "must be a finite number");
            if (strcmp(key, "min") == 0) {
                k->has_min = 1;
                k->min = x;
            } else {
                k->has_max = 1;
                k->max = x;
            }
        }
        pop(c);
    }
    if (k->has_min && k->has_max && k->min > k->max) {
        push_key(c, "max");
        return fail(c, 0, "max (%.17g) is less than min (%.17g)", k->max, k->min);
    }
    pop(c);
    return THEUS_OK;
}

/* One audit rule; @c's path ends at the rule. */
static int parse_audit_rule(parse_ctx *c, json_t *obj, schema_field *f, schema_audit *a)
{
    static const char *const keys[] = {"rule", "value", "level", "threshold", "reset",
                                       "description", NULL};
    static const char *const rules[] = {"finite", "min", "max", "max_abs", "max_change", NULL};
    static const char *const levels[] = {"S", "A", "B", "C", NULL};
    if (!json_is_object(obj))
        return fail(c, 0, "expected an object, got %s", json_kind_phrase(obj));
    int rc = check_keys(c, obj, keys, "rule, value, level, threshold, reset, description");
    if (rc)
        return rc;
    if (!json_object_get(obj, "rule"))
        return fail(c, 0, "missing required key \"rule\"");
    int choice;
    if ((rc = parse_choice(c, obj, "rule", rules, "finite, min, max, max_abs or max_change", 0,
                           &choice)))
        return rc;
    a->rule = choice;
    if ((rc = parse_choice(c, obj, "level", levels, "S, A, B or C", 1, &choice)))
        return rc;
    a->level = levels[choice][0];
    a->reset = 1;
    if (f->dtype == THEUS_DTYPE_BOOL)
        return fail(c, 0, "audit rules are not allowed on a bool field");
    json_t *v = json_object_get(obj, "value");
    if (a->rule == SCHEMA_AUDIT_FINITE) {
        if (!dtype_is_float(f->dtype)) {
            push_key(c, "rule");
            return fail(c, 0, "\"finite\" applies only to f16, bf16, f32 and f64 fields");
        }
        if (v) {
            push_key(c, "value");
            return fail(c, 1, "the finite rule takes no value");
        }
    } else {
        if (!v)
            return fail(c, 0, "missing required key \"value\" (the rule's bound)");
        push_key(c, "value");
        if (!json_is_number(v))
            return fail(c, 0, "expected a number, got %s", json_kind_phrase(v));
        a->value = json_number_value(v);
        if (!isfinite(a->value))
            return fail(c, 0, "must be a finite number");
        if ((a->rule == SCHEMA_AUDIT_MAX_ABS || a->rule == SCHEMA_AUDIT_MAX_CHANGE) &&
            a->value < 0)
            return fail(c, 0, "must not be negative for %s", rules[a->rule]);
        pop(c);
    }
    json_t *t = json_object_get(obj, "threshold");
    json_t *r = json_object_get(obj, "reset");
    if (a->level != 'B' && (t || r)) {
        push_key(c, t ? "threshold" : "reset");
        return fail(c, 1, "only level B rules take %s", t ? "a threshold" : "reset");
    }
    if (a->level == 'B') {
        if (!t)
            return fail(c, 0, "missing required key \"threshold\" (level B: violations "
                              "accepted before commits are refused)");
        push_key(c, "threshold");
        if (!json_is_integer(t) || json_integer_value(t) < 0 ||
            json_integer_value(t) > (json_int_t)UINT32_MAX)
            return fail(c, 0, "expected an integer in [0, %u]", (unsigned)UINT32_MAX);
        a->threshold = (uint32_t)json_integer_value(t);
        pop(c);
        if (r) {
            push_key(c, "reset");
            if (!json_is_boolean(r))
                return fail(c, 0, "expected true or false, got %s", json_kind_phrase(r));
            a->reset = json_is_true(r);
            pop(c);
        }
    }
    return parse_description(c, obj);
}

static int parse_audit(parse_ctx *c, json_t *fobj, schema_field *f)
{
    json_t *arr = json_object_get(fobj, "audit");
    if (!arr)
        return THEUS_OK;
    push_key(c, "audit");
    if (!json_is_array(arr))
        return fail(c, 0, "expected an array of rules, got %s", json_kind_phrase(arr));
    size_t n = json_array_size(arr);
    if (n > SCHEMA_AUDIT_MAX)
        return fail(c, 0, "at most %d audit rules per field, got %zu", SCHEMA_AUDIT_MAX, n);
    for (size_t i = 0; i < n; i++) {
        push_index(c, i);
        int rc = parse_audit_rule(c, json_array_get(arr, i), f, &f->audit[i]);
        if (rc)
            return rc;
        pop(c);
    }
    f->naudit = n;
    pop(c);
    return THEUS_OK;
}

/* @c's path ends at the field's member; @name is its key. */
static int parse_field(parse_ctx *c, const char *name, json_t *fobj, schema_field *f)
{
    static const char *const keys[] = {"dtype", "shape", "placement", "zone",
                                       "constraints", "audit", "description", NULL};
    static const char *const placements[] = {"device", "pinned", "host", NULL};
    static const char *const zones[] = {"data", "signal", "meta", "const", NULL};

    int rc = check_name_text(c, name, 1, "field name");
    if (rc)
        return rc;
    const char *glob = strpbrk(name, "*?[]\\");
    if (glob)
        return fail(c, 1,
                    "field name must not contain '%c' (* ? [ ] \\ are glob characters of "
                    "process contracts)",
                    *glob);
    if (!json_is_object(fobj))
        return fail(c, 0, "expected an object, got %s", json_kind_phrase(fobj));
    rc = check_keys(c, fobj, keys,
                    "dtype, shape, placement, zone, constraints, audit, description");
    if (rc)
        return rc;

    memcpy(f->name, name, strlen(name) + 1);
    int choice;
    if ((rc = parse_dtype(c, fobj, f)) || (rc = parse_shape(c, fobj, f)))
        return rc;
    rc = parse_choice(c, fobj, "placement", placements, "device, pinned or host",
                      THEUS_PLACEMENT_HOST, &choice);
    if (rc)
        return rc;
    f->placement = (theus_placement)choice;
    rc = parse_choice(c, fobj, "zone", zones, "data, signal, meta or const", THEUS_ZONE_DATA,
                      &choice);
    if (rc)
        return rc;
    f->zone = (theus_zone)choice;
    if ((rc = parse_constraints(c, fobj, f)) || (rc = parse_audit(c, fobj, f)))
        return rc;
    return parse_description(c, fobj);
}

/* ---- the whole schema --------------------------------------------------------------- */

static int parse_root(parse_ctx *c, json_t *root, theus_schema **res)
{
    static const char *const keys[] = {"name", "fields", "description", NULL};
    if (!json_is_object(root))
        return fail(c, 0, "expected an object, got %s", json_kind_phrase(root));
    int rc = check_keys(c, root, keys, "name, fields, description");
    if (rc)
        return rc;

    const char *name = "theus";
    json_t *v = json_object_get(root, "name");
    if (v) {
        push_key(c, "name");
        if ((rc = expect_string(c, v)) || (rc = check_name_text(c, json_string_value(v), 0, "name")))
            return rc;
        name = json_string_value(v);
        pop(c);
    }
    if ((rc = parse_description(c, root)))
        return rc;

    json_t *fields = json_object_get(root, "fields");
    if (!fields)
        return fail(c, 0, "missing required key \"fields\"");
    push_key(c, "fields");
    if (!json_is_object(fields))
        return fail(c, 0, "expected an object, got %s", json_kind_phrase(fields));
    size_t n = json_object_size(fields);
    if (n == 0)
        return fail(c, 0, "at least one field is required");

    theus_schema *s = theus_xcalloc(1, sizeof *s);
    if (!s)
        return fail_nomem(c);
    s->fields = theus_xcalloc(n, sizeof *s->fields);
    if (!s->fields) {
        theus_xfree(s);
        return fail_nomem(c);
    }
    memcpy(s->name, name, strlen(name) + 1);

    /* jansson keeps object members in insertion order: fields follow the text. */
    const char *key;
    size_t i = 0;
    json_object_foreach(fields, key, v) {
        push_key(c, key);
        rc = parse_field(c, key, v, &s->fields[i]);
        if (rc) {
            schema_free(s);
            return rc;
        }
        pop(c);
        i++;
    }
    s->nfields = i;
    pop(c);
    *res = s;
    return THEUS_OK;
}

/* jansson's own message, minus any raw control bytes it quotes from the text. */
static void syntax_error(parse_ctx *c, const json_error_t *je)
{
    if (!c->err || c->errlen == 0)
        return;
    char text[JSON_ERROR_TEXT_LENGTH];
    size_t i = 0;
    for (; je->text[i] && i + 1 < sizeof text; i++) {
        unsigned char ch = (unsigned char)je->text[i];
        text[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    text[i] = '\0';
    snprintf(c->err, c->errlen, "schema: $: invalid JSON: %s (line %d, column %d)", text,
             je->line < 1 ? 1 : je->line, je->column < 1 ? 1 : je->column);
}

static int out_of_memory(const json_error_t *je)
{
#if JANSSON_VERSION_HEX >= 0x020b00
    return json_error_code(je) == json_error_out_of_memory;
#else
    return strstr(je->text, "out of memory") != NULL;
#endif
}

int schema_parse(const char *json, theus_schema **out, char *err, size_t errlen)
{
    if (out)
        *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!json || !out) {
        if (err && errlen)
            snprintf(err, errlen, "schema: NULL %s", json ? "out" : "json");
        return THEUS_EINVAL;
    }
    parse_ctx c = {.text = json, .err = err, .errlen = errlen, .depth = 0};

    /* JSON_DECODE_ANY so that a top-level scalar gets the same "expected an object" refusal
     * (with its position) as a top-level array. */
    json_error_t je;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!root) {
        if (out_of_memory(&je))
            return fail_nomem(&c);
        syntax_error(&c, &je);
        return THEUS_ESCHEMA;
    }
    theus_schema *s = NULL;
    int rc = parse_root(&c, root, &s);
    json_decref(root);
    if (rc == THEUS_OK)
        *out = s;
    return rc;
}

void schema_free(theus_schema *s)
{
    if (!s)
        return;
    theus_xfree(s->fields);
    theus_xfree(s);
}

int schema_find(const theus_schema *s, const char *name)
{
    if (!s || !name)
        return -1;
    for (size_t i = 0; i < s->nfields && i < (size_t)INT_MAX; i++)
        if (strcmp(s->fields[i].name, name) == 0)
            return (int)i;
    return -1;
}
