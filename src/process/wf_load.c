/* Loading a workflow: its JSON parsed into blocks and steps (run, if/else, while, call,
 * submit, await) with per-step failure policies, checked against the engine at load (JSON
 * path, line and column on refusal: wf_parse.c), numbered and linked for the position;
 * then registered in the engine until it is freed. */
#include "workflow.h"
#include "alloc.h"
#include "error.h"
#include "wf_parse.h"
#include <stdio.h>
#include <string.h>

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

