/* Registering a process: its definition checked against the state's schema (names, kinds,
 * status codes, contract globs) and copied into the engine's process table. */
#include "process.h"
#include "alloc.h"
#include "error.h"
#include <fnmatch.h>
#include <string.h>

void destroy_proc(proc_entry *p)
{
    if (!p)
        return;
    for (size_t i = 0; p->globs && i < p->nglobs; i++)
        theus_xfree(p->globs[i]);
    theus_xfree(p->globs);
    theus_xfree(p->codes);
    theus_xfree((void *)p->audit_by_field);
    theus_xfree(p);
}

/* ---- registration ---------------------------------------------------------------------- */

/* Every glob matches a field; outputs match no const field. */
static int check_globs(theus_engine *e, const char *proc, const char *const *globs, size_t n,
                       int outputs)
{
    theus_state *st = e->st;
    size_t nf = theus_state_field_count(st);
    for (size_t i = 0; i < n; i++) {
        if (!globs[i] || !globs[i][0])
            return err_set(st, THEUS_EINVAL, "register '%s': %s %zu is %s", proc,
                           outputs ? "output" : "input", i, globs[i] ? "empty" : "NULL");
        size_t hits = 0;
        for (size_t f = 0; f < nf; f++) {
            const char *fname = theus_state_field_name(st, f);
            if (fnmatch(globs[i], fname, 0) != 0)
                continue;
            hits++;
            theus_field_info fi;
            theus_state_field_info(st, fname, &fi);
            if (outputs && fi.zone == THEUS_ZONE_CONST)
                return err_set(st, THEUS_EPERM,
                               "register '%s': output '%s' matches field '%s', which is const "
                               "(written only at creation)",
                               proc, globs[i], fname);
        }
        if (hits == 0)
            return err_set(st, THEUS_EINVAL, "register '%s': %s '%s' matches no field of the "
                           "schema", proc, outputs ? "output" : "input", globs[i]);
    }
    return THEUS_OK;
}

static char *dup_text(const char *t)
{
    size_t n = strlen(t) + 1;
    char *d = theus_xmalloc(n);
    if (d)
        memcpy(d, t, n);
    return d;
}

/* The engine's own copy of the contract's globs (inputs, then outputs) and status codes;
 * the contract is named after the process. */
static int copy_def(proc_entry *p, const theus_process_def *d)
{
    p->nglobs = d->n_inputs + d->n_outputs;
    if (p->nglobs && !(p->globs = theus_xcalloc(p->nglobs, sizeof *p->globs)))
        return THEUS_ENOMEM;
    for (size_t i = 0; i < p->nglobs; i++)
        if (!(p->globs[i] = dup_text(i < d->n_inputs ? d->inputs[i]
                                                     : d->outputs[i - d->n_inputs])))
            return THEUS_ENOMEM;
    p->contract.name = p->name;
    p->contract.inputs = (const char *const *)p->globs;
    p->contract.n_inputs = d->n_inputs;
    p->contract.outputs = (const char *const *)p->globs + d->n_inputs;
    p->contract.n_outputs = d->n_outputs;
    if (d->n_status_codes) {
        if (!(p->codes = theus_xmalloc(d->n_status_codes * sizeof *p->codes)))
            return THEUS_ENOMEM;
        memcpy(p->codes, d->status_codes, d->n_status_codes * sizeof *p->codes);
        p->ncodes = d->n_status_codes;
    }
    return THEUS_OK;
}

static int check_def(theus_engine *e, const theus_process_def *d)
{
    theus_state *st = e->st;
    if (!d->name || !d->body)
        return err_set(st, THEUS_EINVAL, "register: NULL %s", d->name ? "body" : "name");
    size_t len = strlen(d->name);
    if (len == 0 || len > THEUS_NAME_MAX)
        return err_set(st, THEUS_EINVAL, "register: process name is %zu bytes (1..%d allowed)",
                       len, THEUS_NAME_MAX);
    if (d->kind != THEUS_PROCESS_EFFECT && d->kind != THEUS_PROCESS_PURE)
        return err_set(st, THEUS_EINVAL, "register '%s': unknown kind %d", d->name, (int)d->kind);
    if (d->isolation < THEUS_ISOLATION_SERIALIZABLE || d->isolation > THEUS_ISOLATION_STRICT)
        return err_set(st, THEUS_EINVAL, "register '%s': unknown isolation %d", d->name,
                       d->isolation);
    if ((d->n_inputs && !d->inputs) || (d->n_outputs && !d->outputs) ||
        (d->n_status_codes && !d->status_codes))
        return err_set(st, THEUS_EINVAL, "register '%s': NULL array with a non-zero count",
                       d->name);
    if (d->kind == THEUS_PROCESS_PURE && d->n_outputs)
        return err_set(st, THEUS_EINVAL, "register '%s': a pure process declares no outputs",
                       d->name);
    for (size_t i = 0; i < d->n_status_codes; i++) {
        if (d->status_codes[i] == THEUS_OK)
            return err_set(st, THEUS_EINVAL, "register '%s': THEUS_OK is not a status code to "
                           "declare", d->name);
        for (size_t j = 0; j < i; j++)
            if (d->status_codes[j] == d->status_codes[i])
                return err_set(st, THEUS_EINVAL, "register '%s': status %d declared twice",
                               d->name, d->status_codes[i]);
    }
    int rc = check_globs(e, d->name, d->inputs, d->n_inputs, 0);
    if (rc == THEUS_OK)
        rc = check_globs(e, d->name, d->outputs, d->n_outputs, 1);
    return rc;
}

int theus_engine_register(theus_engine *e, const theus_process_def *def)
{
    if (!e || !def)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_engine_register: NULL argument");
    int rc = check_def(e, def);
    if (rc != THEUS_OK)
        return rc;
    proc_entry *p = theus_xcalloc(1, sizeof *p);
    size_t nf = theus_state_field_count(e->st);
    if (!p || copy_def(p, def) != THEUS_OK ||
        !(p->audit_by_field = theus_xcalloc((nf ? nf : 1) * AUDIT_COUNTERS,
                                            sizeof *p->audit_by_field))) {
        destroy_proc(p);
        return err_set(e->st, THEUS_ENOMEM, "register '%s': out of memory", def->name);
    }
    memcpy(p->name, def->name, strlen(def->name) + 1);
    p->body = def->body;
    p->user = def->user;
    p->kind = def->kind;
    p->isolation = def->isolation;

    pthread_rwlock_wrlock(&e->reg_lock);
    rc = THEUS_OK;
    for (size_t i = 0; i < e->nprocs; i++)
        if (strcmp(e->procs[i]->name, p->name) == 0)
            rc = err_set(e->st, THEUS_EINVAL, "register: process '%s' is already registered",
                         p->name);
    if (rc == THEUS_OK &&
        tx_grow((void **)&e->procs, &e->cap_procs, e->nprocs + 1, sizeof *e->procs))
        rc = err_set(e->st, THEUS_ENOMEM, "register '%s': out of memory", p->name);
    if (rc == THEUS_OK)
        e->procs[e->nprocs++] = p;
    pthread_rwlock_unlock(&e->reg_lock);
    if (rc != THEUS_OK)
        destroy_proc(p);
    return rc;
}
