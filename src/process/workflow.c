/* Workflows: JSON programs of process runs (run, if/else, while, call, submit, await) with
 * per-step failure policies and a max_ops safety trip. Parsed and checked against the
 * engine at load (JSON path, line and column on refusal); run on the caller's thread, each
 * condition evaluated on the committed state after the previous step. */
#include "process.h"
#include "alloc.h"
#include "error.h"
#include "expr.h"
#include "wf_parse.h"
#include <stdio.h>
#include <string.h>

enum { ST_RUN, ST_IF, ST_WHILE, ST_CALL, ST_SUBMIT, ST_AWAIT };
enum { ON_STOP, ON_CONTINUE, ON_RETRY };

#define WF_DEFAULT_MAX_OPS 100000u
#define WF_MAX_CALL_DEPTH 32
#define WF_NO_RESUME UINT32_MAX

typedef struct wf_step wf_step;
typedef struct wf_block {
    wf_step *v;
    size_t n;
} wf_block;

struct wf_step {
    int kind;
    uint32_t id;               /* pre-order index in its workflow: a value of the position */
    uint32_t end;              /* one past the last id of its nested steps */
    uint32_t next;             /* the id that follows it when it succeeds; 0: the end */
    char where[128];           /* JSON path, for reports */
    proc_entry *proc;          /* run, submit */
    int on_error;
    uint32_t retries;
    expr *cond;                /* if, while */
    wf_block then, els;        /* if: then/else; while: then is "do" */
    char name[THEUS_NAME_MAX + 1]; /* call: the workflow; await: the signal */
    uint64_t count;            /* await */
    uint32_t timeout_ms;       /* await */
};

struct theus_workflow {
    theus_engine *e;
    char name[THEUS_NAME_MAX + 1];
    uint64_t max_ops;
    int position;              /* field that keeps the id of the next step; -1: none */
    uint32_t nsteps;           /* steps, nested ones included */
    wf_block body;
    _Atomic int running;
};

/* ---- freeing ----------------------------------------------------------------------------- */

static void block_free(wf_block *b)
{
    for (size_t i = 0; i < b->n; i++) {
        expr_free(b->v[i].cond);
        block_free(&b->v[i].then);
        block_free(&b->v[i].els);
    }
    theus_xfree(b->v);
    b->v = NULL;
    b->n = 0;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static int parse_block(wf_ctx *c, theus_engine *e, json_t *arr, wf_block *out);

static int check_keys(wf_ctx *c, json_t *obj, const char *const *allowed, const char *shown)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            ok |= strcmp(*a, key) == 0;
        if (!ok) {
            int rc = wfp_key(c, key);
            return rc ? rc : wfp_fail(c, 1, "unknown key (allowed: %s)", shown);
        }
    }
    return THEUS_OK;
}

/* A member that must be a string naming something of at most THEUS_NAME_MAX bytes. */
static int get_name(wf_ctx *c, json_t *obj, const char *key, char *out)
{
    json_t *v = json_object_get(obj, key);
    int rc = wfp_key(c, key);
    if (rc)
        return rc;
    if (!json_is_string(v))
        return wfp_fail(c, 0, "expected a name (a string), got %s", json_kind_phrase(v));
    size_t len = strlen(json_string_value(v));
    if (len == 0 || len > THEUS_NAME_MAX)
        return wfp_fail(c, 0, "a name is 1..%d bytes, got %zu", THEUS_NAME_MAX, len);
    memcpy(out, json_string_value(v), len + 1);
    wfp_pop(c);
    return THEUS_OK;
}

static int get_uint(wf_ctx *c, json_t *obj, const char *key, uint64_t lo, uint64_t hi,
                    uint64_t dflt, uint64_t *out)
{
    json_t *v = json_object_get(obj, key);
    *out = dflt;
    if (!v)
        return THEUS_OK;
    int rc = wfp_key(c, key);
    if (rc)
        return rc;
    if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)lo ||
        (uint64_t)json_integer_value(v) > hi)
        return wfp_fail(c, 0, "expected an integer in [%llu, %llu]", (unsigned long long)lo,
                        (unsigned long long)hi);
    *out = (uint64_t)json_integer_value(v);
    wfp_pop(c);
    return THEUS_OK;
}

static int parse_run(wf_ctx *c, theus_engine *e, json_t *obj, wf_step *s, const char *kindkey)
{
    static const char *const run_keys[] = {"run", "on_error", "retries", "description", NULL};
    static const char *const submit_keys[] = {"submit", "on_error", "description", NULL};
    int submit = s->kind == ST_SUBMIT;
    int rc = check_keys(c, obj, submit ? submit_keys : run_keys,
                        submit ? "submit, on_error, description"
                               : "run, on_error, retries, description");
    if (rc || (rc = get_name(c, obj, kindkey, s->name)))
        return rc;
    if (!(s->proc = engine_find(e, s->name))) {
        if ((rc = wfp_key(c, kindkey)))
            return rc;
        return wfp_fail(c, 0, "no process '%s' is registered in the engine", s->name);
    }
    json_t *v = json_object_get(obj, "on_error");
    s->on_error = ON_STOP;
    if (v) {
        if ((rc = wfp_key(c, "on_error")))
            return rc;
        const char *t = json_is_string(v) ? json_string_value(v) : "";
        if (strcmp(t, "stop") == 0)
            s->on_error = ON_STOP;
        else if (strcmp(t, "continue") == 0)
            s->on_error = ON_CONTINUE;
        else if (strcmp(t, "retry") == 0 && !submit)
            s->on_error = ON_RETRY;
        else
            return wfp_fail(c, 0, "on_error is %s", submit ? "\"stop\" or \"continue\""
                                                           : "\"stop\", \"continue\" or \"retry\"");
        wfp_pop(c);
    }
    if (json_object_get(obj, "retries") && s->on_error != ON_RETRY) {
        if ((rc = wfp_key(c, "retries")))
            return rc;
        return wfp_fail(c, 1, "retries needs \"on_error\": \"retry\"");
    }
    uint64_t n = 0;
    if ((rc = get_uint(c, obj, "retries", 1, 1000, 1, &n)))
        return rc;
    s->retries = s->on_error == ON_RETRY ? (uint32_t)n : 0;
    return THEUS_OK;
}

static int parse_cond_block(wf_ctx *c, theus_engine *e, json_t *obj, const char *key,
                            int required, wf_block *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (required)
            return wfp_fail(c, 0, "missing required key \"%s\"", key);
        return THEUS_OK;
    }
    int rc = wfp_key(c, key);
    if (rc || (rc = parse_block(c, e, v, out)))
        return rc;
    wfp_pop(c);
    return THEUS_OK;
}

static int parse_step(wf_ctx *c, theus_engine *e, json_t *obj, wf_step *s)
{
    static const char *const kinds[] = {"run", "if", "while", "call", "submit", "await", NULL};
    if (!json_is_object(obj))
        return wfp_fail(c, 0, "a step is an object, got %s", json_kind_phrase(obj));
    int found = -1;
    for (int k = 0; kinds[k]; k++)
        if (json_object_get(obj, kinds[k])) {
            if (found >= 0)
                return wfp_fail(c, 0, "a step has one of run, if, while, call, submit, await; "
                                "this one has \"%s\" and \"%s\"", kinds[found], kinds[k]);
            found = k;
        }
    if (found < 0)
        return wfp_fail(c, 0, "a step needs one of run, if, while, call, submit, await");
    s->kind = found;
    wfp_path(c, s->where, sizeof s->where);
    int rc;
    switch (found) {
    case ST_RUN:
    case ST_SUBMIT:
        return parse_run(c, e, obj, s, kinds[found]);
    case ST_IF: {
        static const char *const keys[] = {"if", "then", "else", "description", NULL};
        if ((rc = check_keys(c, obj, keys, "if, then, else, description")))
            return rc;
        if ((rc = wfp_key(c, "if")) || (rc = expr_parse(c, json_object_get(obj, "if"), &s->cond)))
            return rc;
        wfp_pop(c);
        if ((rc = parse_cond_block(c, e, obj, "then", 1, &s->then)))
            return rc;
        return parse_cond_block(c, e, obj, "else", 0, &s->els);
    }
    case ST_WHILE: {
        static const char *const keys[] = {"while", "do", "description", NULL};
        if ((rc = check_keys(c, obj, keys, "while, do, description")))
            return rc;
        if ((rc = wfp_key(c, "while")) ||
            (rc = expr_parse(c, json_object_get(obj, "while"), &s->cond)))
            return rc;
        wfp_pop(c);
        return parse_cond_block(c, e, obj, "do", 1, &s->then);
    }
    case ST_CALL: {
        static const char *const keys[] = {"call", "description", NULL};
        if ((rc = check_keys(c, obj, keys, "call, description")))
            return rc;
        return get_name(c, obj, "call", s->name);
    }
    default: {
        static const char *const keys[] = {"await", "count", "timeout_ms", "description", NULL};
        if ((rc = check_keys(c, obj, keys, "await, count, timeout_ms, description")) ||
            (rc = get_name(c, obj, "await", s->name)))
            return rc;
        uint64_t t = 0;
        if ((rc = get_uint(c, obj, "count", 1, 1000000, 1, &s->count)) ||
            (rc = get_uint(c, obj, "timeout_ms", 0, UINT32_MAX - 1u, 10000, &t)))
            return rc;
        s->timeout_ms = (uint32_t)t;
        return THEUS_OK;
    }
    }
}

static int parse_block(wf_ctx *c, theus_engine *e, json_t *arr, wf_block *out)
{
    if (!json_is_array(arr))
        return wfp_fail(c, 0, "expected an array of steps, got %s", json_kind_phrase(arr));
    size_t n = json_array_size(arr);
    out->v = n ? theus_xcalloc(n, sizeof *out->v) : NULL;
    if (n && !out->v)
        return err_set(c->st, THEUS_ENOMEM, "workflow: out of memory");
    out->n = n;
    for (size_t i = 0; i < n; i++) {
        int rc = wfp_index(c, i);
        if (rc || (rc = parse_step(c, e, json_array_get(arr, i), &out->v[i])))
            return rc;
        wfp_pop(c);
    }
    return THEUS_OK;
}

/* "position": a non-const integer scalar field that keeps where the workflow stands. */
static int parse_position(wf_ctx *c, json_t *root, theus_workflow *wf)
{
    char name[THEUS_NAME_MAX + 1];
    int rc = get_name(c, root, "position", name);
    if (rc || (rc = wfp_key(c, "position")))
        return rc;
    theus_field_info fi;
    if (theus_state_field_info(c->st, name, &fi) != THEUS_OK)
        return wfp_fail(c, 0, "no field '%s' in the state", name);
    int integer = fi.dtype == THEUS_DTYPE_I32 || fi.dtype == THEUS_DTYPE_I64 ||
                  fi.dtype == THEUS_DTYPE_U32 || fi.dtype == THEUS_DTYPE_U64;
    size_t n = 1;
    for (int d = 0; d < fi.ndim; d++)
        n *= (size_t)fi.shape[d];
    if (!integer || n != 1 || fi.zone == THEUS_ZONE_CONST || fi.zone == THEUS_ZONE_SIGNAL)
        return wfp_fail(c, 0, "the position field '%s' must be an i32, i64, u32 or u64 scalar "
                        "outside the const and signal zones", name);
    wf->position = state_find_field(c->st, name);
    wfp_pop(c);
    return THEUS_OK;
}

/* Number the steps in pre-order: these are the values of the position field. */
static void number_block(wf_block *b, uint32_t *id)
{
    for (size_t i = 0; i < b->n; i++) {
        wf_step *s = &b->v[i];
        s->id = (*id)++;
        number_block(&s->then, id);
        number_block(&s->els, id);
        s->end = *id;
    }
}

/* What follows each step that succeeds: its next sibling, else what follows its block —
 * a while's body goes back to the while (its condition), an if's branch to what follows
 * the if, the top level to 0 (the end, which is also the start). */
static void link_block(wf_block *b, uint32_t after)
{
    for (size_t i = 0; i < b->n; i++) {
        wf_step *s = &b->v[i];
        s->next = i + 1 < b->n ? b->v[i + 1].id : after;
        if (s->kind == ST_WHILE)
            link_block(&s->then, s->id);
        else if (s->kind == ST_IF) {
            link_block(&s->then, s->next);
            link_block(&s->els, s->next);
        }
    }
}

static int parse_root(wf_ctx *c, theus_engine *e, json_t *root, theus_workflow *wf)
{
    static const char *const keys[] = {"name", "max_ops", "position", "steps", "description",
                                       NULL};
    if (!json_is_object(root))
        return wfp_fail(c, 0, "a workflow is an object, got %s", json_kind_phrase(root));
    int rc = check_keys(c, root, keys, "name, max_ops, position, steps, description");
    if (rc)
        return rc;
    if (!json_object_get(root, "name"))
        return wfp_fail(c, 0, "missing required key \"name\"");
    if ((rc = get_name(c, root, "name", wf->name)) ||
        (rc = get_uint(c, root, "max_ops", 1, UINT64_C(1) << 53, WF_DEFAULT_MAX_OPS, &wf->max_ops)))
        return rc;
    wf->position = -1;
    if (json_object_get(root, "position") && (rc = parse_position(c, root, wf)))
        return rc;
    json_t *steps = json_object_get(root, "steps");
    if (!steps)
        return wfp_fail(c, 0, "missing required key \"steps\"");
    if ((rc = wfp_key(c, "steps")) || (rc = parse_block(c, e, steps, &wf->body)))
        return rc;
    wfp_pop(c);
    number_block(&wf->body, &wf->nsteps);
    link_block(&wf->body, 0);
    return THEUS_OK;
}

int theus_workflow_load(theus_engine *e, const char *json, theus_workflow **out)
{
    if (out)
        *out = NULL;
    if (!e || !json || !out)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_workflow_load: NULL argument");
    json_error_t je;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!root) {
        /* jansson's text may quote raw bytes of the input: keep printable ASCII only. */
        char text[JSON_ERROR_TEXT_LENGTH];
        size_t i = 0;
        for (; je.text[i] && i + 1 < sizeof text; i++)
            text[i] = (je.text[i] < 0x20 || je.text[i] == 0x7f) ? '?' : je.text[i];
        text[i] = '\0';
        return err_set(e->st, THEUS_ESCHEMA, "workflow: $: invalid JSON: %s (line %d, column %d)",
                       text, je.line < 1 ? 1 : je.line, je.column < 1 ? 1 : je.column);
    }
    theus_workflow *wf = theus_xcalloc(1, sizeof *wf);
    if (!wf) {
        json_decref(root);
        return err_set(e->st, THEUS_ENOMEM, "workflow: out of memory");
    }
    wf->e = e;
    wf_ctx c = {.text = json, .st = e->st, .depth = 0};
    int rc = parse_root(&c, e, root, wf);
    json_decref(root);
    if (rc == THEUS_OK) {
        pthread_mutex_lock(&e->wfs.mu);
        for (size_t i = 0; i < e->wfs.n && rc == THEUS_OK; i++)
            if (strcmp(e->wfs.v[i]->name, wf->name) == 0)
                rc = err_set(e->st, THEUS_EINVAL, "workflow '%s' is already loaded", wf->name);
        if (rc == THEUS_OK &&
            tx_grow((void **)&e->wfs.v, &e->wfs.cap, e->wfs.n + 1, sizeof *e->wfs.v))
            rc = err_set(e->st, THEUS_ENOMEM, "workflow: out of memory");
        if (rc == THEUS_OK)
            e->wfs.v[e->wfs.n++] = wf;
        pthread_mutex_unlock(&e->wfs.mu);
    }
    if (rc != THEUS_OK) {
        block_free(&wf->body);
        theus_xfree(wf);
        return rc;
    }
    *out = wf;
    return THEUS_OK;
}

int theus_workflow_load_file(theus_engine *e, const char *path, theus_workflow **out)
{
    if (out)
        *out = NULL;
    if (!e || !path || !out)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_workflow_load_file: NULL argument");
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return err_set(e->st, THEUS_ENOENT, "workflow: cannot open '%s'", path);
    char *text = NULL;
    size_t len = 0, cap = 0;
    int rc = THEUS_OK;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            size_t ncap = cap ? cap * 2 : 8192;
            char *n = theus_xmalloc(ncap);
            if (!n) {
                rc = err_set(e->st, THEUS_ENOMEM, "workflow: out of memory reading '%s'", path);
                break;
            }
            if (text)
                memcpy(n, text, len);
            theus_xfree(text);
            text = n;
            cap = ncap;
        }
        size_t got = fread(text + len, 1, 4096, fp);
        len += got;
        if (got < 4096) {
            if (ferror(fp))
                rc = err_set(e->st, THEUS_EIO, "workflow: cannot read '%s'", path);
            break;
        }
    }
    fclose(fp);
    if (rc == THEUS_OK) {
        text[len] = '\0';
        rc = theus_workflow_load(e, text, out);
    }
    theus_xfree(text);
    return rc;
}

void theus_workflow_free(theus_workflow *wf)
{
    if (!wf)
        return;
    theus_engine *e = wf->e;
    pthread_mutex_lock(&e->wfs.mu);
    for (size_t i = 0; i < e->wfs.n; i++)
        if (e->wfs.v[i] == wf) {
            e->wfs.v[i] = e->wfs.v[--e->wfs.n];
            break;
        }
    pthread_mutex_unlock(&e->wfs.mu);
    block_free(&wf->body);
    theus_xfree(wf);
}

const char *theus_workflow_name(const theus_workflow *wf)
{
    return wf ? wf->name : "";
}

/* ---- running ---------------------------------------------------------------------------- */

typedef struct pending_job {
    theus_job *job;
    const wf_step *step;
} pending_job;

typedef struct sig_cursor {
    char name[THEUS_NAME_MAX + 1];
    uint64_t seen;
} sig_cursor;

typedef struct wf_exec {
    theus_engine *e;
    uint64_t max_ops;
    theus_workflow_report *rep;
    pending_job *jobs;
    size_t njobs, cap_jobs;
    sig_cursor *cursors;
    size_t ncursors, cap_cursors;
    const theus_workflow *stack[WF_MAX_CALL_DEPTH];
    size_t depth;
    const theus_workflow *top;   /* the workflow run: its position is kept */
    uint32_t resume;             /* the step a resume goes to; WF_NO_RESUME: none (or done) */
    uint64_t pos_last;           /* the position the state holds */
} wf_exec;

static theus_workflow *find_wf(theus_engine *e, const char *name)
{
    theus_workflow *w = NULL;
    pthread_mutex_lock(&e->wfs.mu);
    for (size_t i = 0; i < e->wfs.n; i++)
        if (strcmp(e->wfs.v[i]->name, name) == 0)
            w = e->wfs.v[i];
    pthread_mutex_unlock(&e->wfs.mu);
    return w;
}

/* Before anything runs: every called workflow is loaded, no call chain comes back to a
 * workflow already on it, and the signals of await steps get their starting counts. */
static int check_calls(wf_exec *x, const theus_workflow *wf, const wf_block *b)
{
    for (size_t i = 0; i < b->n; i++) {
        const wf_step *s = &b->v[i];
        int rc = THEUS_OK;
        if (s->kind == ST_CALL) {
            theus_workflow *callee = find_wf(x->e, s->name);
            if (!callee)
                return err_set(x->e->st, THEUS_ENOENT, "workflow '%s': %s calls '%s', which is "
                               "not loaded", wf->name, s->where, s->name);
            for (size_t d = 0; d < x->depth; d++)
                if (x->stack[d] == callee) {
                    char chain[512] = "";
                    size_t len = 0;
                    for (size_t k = d; k < x->depth; k++) {
                        int n = snprintf(chain + len, sizeof chain - len, "'%s' -> ",
                                         x->stack[k]->name);
                        if (n > 0 && (size_t)n < sizeof chain - len)
                            len += (size_t)n;
                    }
                    snprintf(chain + len, sizeof chain - len, "'%s'", callee->name);
                    return err_set(x->e->st, THEUS_EINVAL, "workflow: recursion through called "
                                   "workflows (%s) at %s of '%s'", chain, s->where, wf->name);
                }
            if (x->depth >= WF_MAX_CALL_DEPTH)
                return err_set(x->e->st, THEUS_EINVAL, "workflow: calls nested deeper than %d",
                               WF_MAX_CALL_DEPTH);
            x->stack[x->depth++] = callee;
            rc = check_calls(x, callee, &callee->body);
            x->depth--;
        } else if (s->kind == ST_AWAIT) {
            int known = 0;
            for (size_t k = 0; k < x->ncursors; k++)
                known |= strcmp(x->cursors[k].name, s->name) == 0;
            if (!known) {
                if (tx_grow((void **)&x->cursors, &x->cap_cursors, x->ncursors + 1,
                            sizeof *x->cursors))
                    return err_set(x->e->st, THEUS_ENOMEM, "workflow: out of memory");
                sig_cursor *cur = &x->cursors[x->ncursors++];
                memcpy(cur->name, s->name, sizeof cur->name);
                theus_engine_signal_count(x->e, s->name, &cur->seen);
            }
        }
        if (rc == THEUS_OK)
            rc = check_calls(x, wf, &s->then);
        if (rc == THEUS_OK)
            rc = check_calls(x, wf, &s->els);
        if (rc != THEUS_OK)
            return rc;
    }
    return THEUS_OK;
}

static int fail_at(wf_exec *x, const wf_step *s, int rc)
{
    if (x->rep && !x->rep->where[0])
        snprintf(x->rep->where, sizeof x->rep->where, "%s", s->where);
    return rc;
}

/* One op against max_ops; the engine's stop also ends every workflow. */
static int count_op(wf_exec *x, const theus_workflow *wf, const wf_step *s)
{
    if (atomic_load(&x->e->stopped))
        return fail_at(x, s, err_set(x->e->st, THEUS_EBUSY, "workflow '%s': the engine was "
                                     "stopped by a level-S audit rule (before %s)", wf->name,
                                     s->where));
    if (++x->rep->ops > x->max_ops)
        return fail_at(x, s, err_set(x->e->st, THEUS_EBUSY, "workflow '%s': max_ops (%llu) "
                                     "passed at %s: the safety trip stopped it", wf->name,
                                     (unsigned long long)x->max_ops, s->where));
    return THEUS_OK;
}

/* ---- the position ------------------------------------------------------------------------
 * With "position", the state holds the id of the next step to run (number_block). A run
 * step commits the id that follows it in its own transaction (run_extra), so a step's
 * writes and the position move together: a state recovered after any crash resumes at the
 * first step whose commit it does not hold, and no committed step runs twice. Steps that
 * commit nothing of their own (a pure run, a failed run passed over by "continue", a call)
 * move the position with a commit of its own; submit and await steps do not move it (their
 * runs commit on the pool), so a resume repeats them from the last run step's commit. */

/* The one element of the position field holding @v. */
static void pos_encode(const theus_workflow *wf, uint64_t v, unsigned char out[8])
{
    theus_field_info fi;
    theus_state_field_info(wf->e->st, wf->e->st->fields[wf->position].name, &fi);
    memset(out, 0, 8);
    if (fi.dtype == THEUS_DTYPE_I32 || fi.dtype == THEUS_DTYPE_U32) {
        uint32_t w = (uint32_t)v;
        memcpy(out, &w, 4);
    } else {
        memcpy(out, &v, 8);
    }
}

typedef struct pos_io {
    const char *field;
    int write;
    uint64_t value;
    unsigned char bytes[8];
} pos_io;

static int pos_body(theus_tx *tx, void *user)
{
    pos_io *p = user;
    if (p->write)
        return theus_tx_write(tx, p->field, NULL, p->bytes, THEUS_MEM_HOST);
    unsigned char buf[8];
    theus_field_info fi;
    theus_state_field_info(tx->st, p->field, &fi);
    int rc = theus_tx_read(tx, p->field, NULL, buf, THEUS_MEM_HOST);
    if (rc == THEUS_OK) {
        if (fi.dtype == THEUS_DTYPE_I32 || fi.dtype == THEUS_DTYPE_U32) {
            int32_t v;
            memcpy(&v, buf, 4);
            p->value = fi.dtype == THEUS_DTYPE_I32 && v < 0 ? 0 : (uint64_t)(uint32_t)v;
        } else {
            int64_t v;
            memcpy(&v, buf, 8);
            p->value = fi.dtype == THEUS_DTYPE_I64 && v < 0 ? 0 : (uint64_t)v;
        }
    }
    return rc;
}

static int position_read(const theus_workflow *wf, uint64_t *value)
{
    theus_state *st = wf->e->st;
    pos_io p = {.field = st->fields[wf->position].name};
    int rc = theus_tx_run(st, NULL, pos_body, &p, NULL);
    *value = p.value;
    return rc;
}

/* Whether the position of @x's workflow is kept and @wf is that workflow (the steps of a
 * called workflow do not move the caller's position). */
static int pos_kept(const wf_exec *x, const theus_workflow *wf)
{
    return x->top == wf && wf->position >= 0;
}

/* Commit position @v on its own (nothing when the state holds it already). */
static int pos_commit(wf_exec *x, const theus_workflow *wf, const wf_step *s, uint64_t v)
{
    if (!pos_kept(x, wf) || v == x->pos_last)
        return THEUS_OK;
    theus_state *st = wf->e->st;
    pos_io p = {.field = st->fields[wf->position].name, .write = 1};
    pos_encode(wf, v, p.bytes);
    int rc = theus_tx_run(st, NULL, pos_body, &p, NULL);
    if (rc != THEUS_OK)
        return s ? fail_at(x, s, rc) : rc;
    x->pos_last = v;
    return THEUS_OK;
}

static int run_step(wf_exec *x, const theus_workflow *wf, const wf_step *s)
{
    int rc = THEUS_OK;
    run_extra extra, *ex = NULL;
    if (pos_kept(x, wf) && s->proc->kind == THEUS_PROCESS_EFFECT) {
        extra.field = wf->e->st->fields[wf->position].name;
        pos_encode(wf, s->next, extra.bytes);
        ex = &extra;
    }
    uint32_t tries = 1 + s->retries;
    for (uint32_t t = 0; t < tries; t++) {
        x->rep->runs++;
        rc = engine_run_proc(x->e, s->proc, ex, NULL);
        if (rc == THEUS_OK) {
            if (ex) {
                x->pos_last = s->next;   /* committed with the run */
                return THEUS_OK;
            }
            return pos_commit(x, wf, s, s->next);
        }
        x->rep->failures++;
        if (atomic_load(&x->e->stopped))
            break;
    }
    return s->on_error == ON_CONTINUE ? pos_commit(x, wf, s, s->next) : fail_at(x, s, rc);
}

static int exec_block(wf_exec *x, const theus_workflow *wf, const wf_block *b);

/* Whether step id @id is one of the steps of block @b (nested ones included). */
static int block_holds(const wf_block *b, uint32_t id)
{
    return b->n && id >= b->v[0].id && id < b->v[b->n - 1].end;
}

/* Run step @s. @inside: a resume goes to a step nested in @s (a while's body or an if's
 * branch): the condition is not evaluated again, the block that holds it runs. */
static int exec_step(wf_exec *x, const theus_workflow *wf, const wf_step *s, int inside)
{
    int rc = count_op(x, wf, s);
    if (rc)
        return rc;
    int truth = 0;
    switch (s->kind) {
    case ST_RUN:
        return run_step(x, wf, s);
    case ST_SUBMIT: {
        if (tx_grow((void **)&x->jobs, &x->cap_jobs, x->njobs + 1, sizeof *x->jobs))
            return fail_at(x, s, err_set(x->e->st, THEUS_ENOMEM, "workflow: out of memory"));
        theus_job *j = NULL;
        x->rep->runs++;
        rc = theus_engine_submit(x->e, s->proc->name, &j);
        if (rc != THEUS_OK) {
            x->rep->failures++;
            return s->on_error == ON_CONTINUE ? THEUS_OK : fail_at(x, s, rc);
        }
        x->jobs[x->njobs++] = (pending_job){.job = j, .step = s};
        return THEUS_OK;
    }
    case ST_AWAIT: {
        sig_cursor *cur = NULL;
        for (size_t k = 0; k < x->ncursors; k++)
            if (strcmp(x->cursors[k].name, s->name) == 0)
                cur = &x->cursors[k];
        uint64_t want = cur->seen + s->count, seen = 0;
        rc = theus_engine_wait_signal(x->e, s->name, want - 1, s->timeout_ms, &seen);
        if (rc != THEUS_OK)
            return fail_at(x, s, rc);
        cur->seen = want;
        return THEUS_OK;
    }
    case ST_IF:
        if (inside)
            truth = block_holds(&s->then, x->resume);
        else if ((rc = expr_eval(s->cond, x->e->st, &truth)))
            return fail_at(x, s, rc);
        return exec_block(x, wf, truth ? &s->then : &s->els);
    case ST_WHILE:
        for (;;) {
            if (!inside) {
                if ((rc = expr_eval(s->cond, x->e->st, &truth)))
                    return fail_at(x, s, rc);
                if (!truth)
                    return THEUS_OK;
            }
            inside = 0;
            if ((rc = exec_block(x, wf, &s->then)))
                return rc;
            if ((rc = count_op(x, wf, s)))   /* a loop turn */
                return rc;
        }
    default: {
        theus_workflow *callee = find_wf(x->e, s->name);
        if (!callee)
            return fail_at(x, s, err_set(x->e->st, THEUS_ENOENT, "workflow: '%s' is no longer "
                                         "loaded", s->name));
        if ((rc = exec_block(x, callee, &callee->body)))
            return rc;
        return pos_commit(x, wf, s, s->next);
    }
    }
}

/* Run block @b. While a resume is under way (x->resume), the steps before the one it goes
 * to are passed over, and the step that holds it is entered without its condition. */
static int exec_block(wf_exec *x, const theus_workflow *wf, const wf_block *b)
{
    for (size_t i = 0; i < b->n; i++) {
        const wf_step *s = &b->v[i];
        int inside = 0;
        if (x->resume != WF_NO_RESUME && x->top == wf) {
            if (x->resume < s->id || x->resume >= s->end)
                continue;
            if (x->resume == s->id)
                x->resume = WF_NO_RESUME;
            else
                inside = 1;
        }
        int rc = exec_step(x, wf, s, inside);
        if (rc)
            return rc;
    }
    return THEUS_OK;
}

int theus_workflow_run(theus_workflow *wf, theus_workflow_report *rep)
{
    theus_workflow_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (!wf)
        return rep->status = err_set(NULL, THEUS_EINVAL, "theus_workflow_run: NULL workflow");
    theus_engine *e = wf->e;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&wf->running, &expected, 1))
        return rep->status = err_set(e->st, THEUS_EBUSY, "workflow '%s' is already running",
                                     wf->name);
    wf_exec x = {.e = e, .max_ops = wf->max_ops, .rep = rep, .top = wf,
                 .resume = WF_NO_RESUME};
    x.stack[x.depth++] = wf;
    int rc = check_calls(&x, wf, &wf->body);
    uint64_t start = 0;
    if (rc == THEUS_OK && wf->position >= 0 && (rc = position_read(wf, &start)) == THEUS_OK) {
        x.pos_last = start;
        if (start >= wf->nsteps)
            start = 0;   /* not one of this workflow's steps: start over */
    }
    rep->resumed_at = start;
    if (start)
        x.resume = (uint32_t)start;
    if (rc == THEUS_OK)
        rc = exec_block(&x, wf, &wf->body);
    /* Submitted runs end before the workflow does; the first failure of one whose step
     * stops on error is the workflow's status if nothing failed before. */
    for (size_t i = 0; i < x.njobs; i++) {
        int jr = theus_job_wait(x.jobs[i].job, NULL);
        if (jr != THEUS_OK) {
            rep->failures++;
            if (rc == THEUS_OK && x.jobs[i].step->on_error != ON_CONTINUE)
                rc = fail_at(&x, x.jobs[i].step, jr);
        }
    }
    /* Done: the next run starts over. */
    if (rc == THEUS_OK)
        rc = pos_commit(&x, wf, NULL, 0);
    theus_xfree(x.jobs);
    theus_xfree(x.cursors);
    atomic_store(&wf->running, 0);
    rep->status = rc;
    return rc;
}
