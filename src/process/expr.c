/* Workflow conditions: parsed from JSON into a small tree (comparisons of numbers, scalar
 * fields and elements; and, or, not), checked against the schema at load, evaluated on one
 * committed version through a read-only transaction. */
#include "expr.h"
#include "alloc.h"
#include "dtype.h"
#include "error.h"
#include "tx.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { EX_TRUE, EX_FALSE, EX_CMP, EX_AND, EX_OR, EX_NOT };
enum { OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE };
static const char *const cmp_names[] = {"eq", "ne", "lt", "le", "gt", "ge", NULL};

/* A comparison operand: a number, or one element of a field. */
typedef struct operand {
    int field;          /* -1: the number */
    double num;
    theus_region r;     /* the element */
} operand;

struct expr {
    int kind;
    int op;
    operand a, b;
    expr **kids;
    size_t nkids;
};

void expr_free(expr *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->nkids; i++)
        expr_free(e->kids[i]);
    theus_xfree(e->kids);
    theus_xfree(e);
}

/* "name", or "name[i][j]..." with one index per dimension. */
static int parse_ref(wf_ctx *c, const char *text, operand *o)
{
    const theus_state *st = c->st;
    const char *br = strchr(text, '[');
    size_t nlen = br ? (size_t)(br - text) : strlen(text);
    char name[THEUS_NAME_MAX + 1];
    if (nlen == 0 || nlen > THEUS_NAME_MAX)
        return wfp_fail(c, 0, "\"%.80s\" is not a field name or element", text);
    memcpy(name, text, nlen);
    name[nlen] = '\0';
    int f = state_find_field(st, name);
    if (f < 0)
        return wfp_fail(c, 0, "no field '%s' in the state", name);
    const field_desc *fd = &st->fields[f];
    o->field = f;
    o->r.ndim = (int)fd->ndim;
    int k = 0;
    const char *p = br;
    while (p && *p == '[') {
        char *end = NULL;
        errno = 0;
        if (p[1] < '0' || p[1] > '9')
            return wfp_fail(c, 0, "\"%.80s\": an index is a non-negative integer", text);
        unsigned long long i = strtoull(p + 1, &end, 10);
        if (errno || *end != ']')
            return wfp_fail(c, 0, "\"%.80s\": malformed index (expected name[i] or name[i][j])",
                            text);
        if (k >= (int)fd->ndim)
            return wfp_fail(c, 0, "\"%.80s\": field '%s' has %u dimension(s)", text, name,
                            fd->ndim);
        if (i >= (unsigned long long)fd->shape[k])
            return wfp_fail(c, 0, "\"%.80s\": index %llu is out of range for dimension %d of "
                            "'%s' (size %lld)", text, i, k, name, (long long)fd->shape[k]);
        o->r.start[k] = (int64_t)i;
        o->r.stop[k] = (int64_t)i + 1;
        k++;
        p = end + 1;
    }
    if (p && *p)
        return wfp_fail(c, 0, "\"%.80s\": unexpected text after the element", text);
    if (k == 0) {
        if (fd->nelems != 1)
            return wfp_fail(c, 0, "field '%s' is not a scalar (%llu elements): name an element, "
                            "e.g. \"%s[0]\"", name, (unsigned long long)fd->nelems, name);
        for (int d = 0; d < (int)fd->ndim; d++) {
            o->r.start[d] = 0;
            o->r.stop[d] = 1;
        }
    } else if (k != (int)fd->ndim) {
        return wfp_fail(c, 0, "\"%.80s\": field '%s' has %u dimensions; give one index each",
                        text, name, fd->ndim);
    }
    return THEUS_OK;
}

static int parse_operand(wf_ctx *c, json_t *j, operand *o)
{
    memset(o, 0, sizeof *o);
    o->field = -1;
    if (json_is_number(j)) {
        o->num = json_number_value(j);
        if (!isfinite(o->num))
            return wfp_fail(c, 0, "must be a finite number");
        return THEUS_OK;
    }
    if (json_is_boolean(j)) {
        o->num = json_is_true(j);
        return THEUS_OK;
    }
    if (json_is_string(j))
        return parse_ref(c, json_string_value(j), o);
    return wfp_fail(c, 0, "an operand is a number, true, false or a field (\"step\", "
                    "\"loss[0]\"), got %s", json_kind_phrase(j));
}

static int new_node(wf_ctx *c, int kind, size_t nkids, expr **out)
{
    expr *e = theus_xcalloc(1, sizeof *e);
    if (e && nkids && !(e->kids = theus_xcalloc(nkids, sizeof *e->kids))) {
        theus_xfree(e);
        e = NULL;
    }
    if (!e)
        return err_set(c->st, THEUS_ENOMEM, "workflow: out of memory");
    e->kind = kind;
    *out = e;
    return THEUS_OK;
}

int expr_parse(wf_ctx *c, json_t *j, expr **out)
{
    *out = NULL;
    if (json_is_boolean(j))
        return new_node(c, json_is_true(j) ? EX_TRUE : EX_FALSE, 0, out);
    if (!json_is_object(j) || json_object_size(j) != 1)
        return wfp_fail(c, 0, "a condition is an object with one operator (eq ne lt le gt ge "
                        "and or not), or true or false; got %s",
                        json_is_object(j) ? "an object with several keys" : json_kind_phrase(j));
    const char *op = json_object_iter_key(json_object_iter(j));
    json_t *arg = json_object_get(j, op);
    int rc = wfp_key(c, op);
    if (rc)
        return rc;
    expr *e = NULL;
    for (int i = 0; cmp_names[i]; i++) {
        if (strcmp(op, cmp_names[i]) != 0)
            continue;
        if (!json_is_array(arg) || json_array_size(arg) != 2)
            return wfp_fail(c, 0, "\"%s\" takes an array of two operands", op);
        if ((rc = new_node(c, EX_CMP, 0, &e)))
            return rc;
        e->op = i;
        for (size_t k = 0; k < 2 && rc == THEUS_OK; k++) {
            if ((rc = wfp_index(c, k)) == THEUS_OK) {
                rc = parse_operand(c, json_array_get(arg, k), k ? &e->b : &e->a);
                wfp_pop(c);
            }
        }
        goto done;
    }
    if (strcmp(op, "not") == 0) {
        if ((rc = new_node(c, EX_NOT, 1, &e)))
            return rc;
        e->nkids = 1;
        rc = expr_parse(c, arg, &e->kids[0]);
        goto done;
    }
    if (strcmp(op, "and") == 0 || strcmp(op, "or") == 0) {
        if (!json_is_array(arg) || json_array_size(arg) == 0)
            return wfp_fail(c, 0, "\"%s\" takes a non-empty array of conditions", op);
        size_t n = json_array_size(arg);
        if ((rc = new_node(c, op[0] == 'a' ? EX_AND : EX_OR, n, &e)))
            return rc;
        for (size_t k = 0; k < n && rc == THEUS_OK; k++) {
            if ((rc = wfp_index(c, k)) == THEUS_OK) {
                rc = expr_parse(c, json_array_get(arg, k), &e->kids[k]);
                e->nkids = k + 1;
                wfp_pop(c);
            }
        }
        goto done;
    }
    return wfp_fail(c, 1, "unknown operator \"%.40s\" (expected eq, ne, lt, le, gt, ge, and, "
                    "or, not)", op);
done:
    if (rc != THEUS_OK) {
        expr_free(e);
        return rc;
    }
    wfp_pop(c);
    *out = e;
    return THEUS_OK;
}

static int value_of(theus_tx *tx, const operand *o, double *out)
{
    if (o->field < 0) {
        *out = o->num;
        return THEUS_OK;
    }
    const theus_state *st = tx->st;
    const field_desc *f = &st->fields[o->field];
    unsigned char buf[16];
    int rc = theus_tx_read(tx, f->name, &o->r, buf, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        *out = dtype_get((theus_dtype)f->dtype, buf, 0);
    return rc;
}

static int eval_node(const expr *e, theus_tx *tx, int *truth)
{
    double a, b;
    int rc, t;
    switch (e->kind) {
    case EX_TRUE: *truth = 1; return THEUS_OK;
    case EX_FALSE: *truth = 0; return THEUS_OK;
    case EX_NOT:
        rc = eval_node(e->kids[0], tx, &t);
        *truth = !t;
        return rc;
    case EX_AND:
    case EX_OR:
        /* Short-circuit, as the reader expects. */
        for (size_t i = 0; i < e->nkids; i++) {
            if ((rc = eval_node(e->kids[i], tx, &t)))
                return rc;
            if (t == (e->kind == EX_OR)) {
                *truth = t;
                return THEUS_OK;
            }
        }
        *truth = e->kind == EX_AND;
        return THEUS_OK;
    }
    if ((rc = value_of(tx, &e->a, &a)) || (rc = value_of(tx, &e->b, &b)))
        return rc;
    switch (e->op) {
    case OP_EQ: *truth = a == b; break;
    case OP_NE: *truth = a != b; break;
    case OP_LT: *truth = a < b; break;
    case OP_LE: *truth = a <= b; break;
    case OP_GT: *truth = a > b; break;
    default: *truth = a >= b; break;
    }
    return THEUS_OK;
}

typedef struct eval_job {
    const expr *e;
    int truth;
} eval_job;

static int eval_body(theus_tx *tx, void *user)
{
    eval_job *j = user;
    return eval_node(j->e, tx, &j->truth);
}

int expr_eval(const expr *e, theus_state *st, int *truth)
{
    /* A read-only transaction: all operands from one version; it stages nothing, so its
     * commit takes no lock. A read that meets a newer commit is retried. */
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.tx.isolation = THEUS_ISOLATION_SNAPSHOT;
    ro.priority_after = UINT32_MAX;
    eval_job j = {.e = e, .truth = 0};
    int rc = theus_tx_run(st, &ro, eval_body, &j, NULL);
    if (rc != THEUS_OK)
        return rc;   /* the detail of the failed read or of the retry helper stays */
    *truth = j.truth;
    return THEUS_OK;
}
