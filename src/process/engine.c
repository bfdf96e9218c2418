/* The engine: registered processes of one state, checked against its schema, and runs of
 * them — one transaction through the retry helper per run (snapshot reads for pure ones). */
#include "process.h"
#include "alloc.h"
#include "error.h"
#include "publish_hook.h"
#include <fnmatch.h>
#include <stdint.h>
#include <string.h>

static void destroy_proc(proc_entry *p)
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

/* What engine_parts_init set up, in order; engine_parts_fini undoes the first @n. */
enum { PART_LOCKS = 1, PART_SIGNALS, PART_OUTBOX, PART_AUDIT, PART_LISTENER };

static void engine_parts_fini(theus_engine *e, int n)
{
    if (n >= PART_LISTENER)
        publish_hook_detach(e);
    if (n >= PART_AUDIT)
        audit_fini(&e->audit);
    if (n >= PART_OUTBOX)
        outbox_fini(&e->ob);
    if (n >= PART_SIGNALS)
        sig_fini(&e->sig);
    if (n >= PART_LOCKS) {
        pthread_mutex_destroy(&e->wfs.mu);
        pthread_mutex_destroy(&e->pool_mu);
        pthread_rwlock_destroy(&e->reg_lock);
    }
}

/* THEUS_OK with *done = PART_LISTENER, or the first failure with *done the parts set up. */
static int engine_parts_init(theus_engine *e, int *done)
{
    *done = 0;
    if (pthread_rwlock_init(&e->reg_lock, NULL) != 0)
        return THEUS_ENOMEM;
    pthread_mutex_init(&e->pool_mu, NULL);
    pthread_mutex_init(&e->wfs.mu, NULL);
    *done = PART_LOCKS;
    if (sig_init(&e->sig, e->st) != THEUS_OK)
        return THEUS_ENOMEM;
    *done = PART_SIGNALS;
    if (outbox_init(&e->ob) != THEUS_OK)
        return THEUS_ENOMEM;
    *done = PART_OUTBOX;
    if (audit_init(e, e->opts.audit_ring) != THEUS_OK)
        return THEUS_ENOMEM;
    *done = PART_AUDIT;
    int rc = audit_refill(e);          /* sets its own message */
    if (rc == THEUS_OK)
        rc = publish_hook_attach(e);   /* sets its own message */
    if (rc == THEUS_OK)
        *done = PART_LISTENER;
    return rc;
}

int theus_engine_create(theus_state *st, const theus_engine_options *opts, theus_engine **out)
{
    if (out)
        *out = NULL;
    if (!st || !out)
        return err_set(st, THEUS_EINVAL, "theus_engine_create: NULL state or out");
    theus_engine_options o = THEUS_ENGINE_OPTIONS_INIT;
    if (opts)
        o = *opts;
    if (o.workers == 0)
        o.workers = 2;
    if (o.workers > 256)
        return err_set(st, THEUS_EINVAL, "theus_engine_create: %u workers (at most 256)", o.workers);
    if (o.audit_ring == 0)
        o.audit_ring = 256;
    theus_engine *e = theus_xcalloc(1, sizeof *e);
    if (!e)
        return err_set(st, THEUS_ENOMEM, "theus_engine_create: out of memory");
    e->st = st;
    e->opts = o;
    int done = 0;
    int rc = engine_parts_init(e, &done);
    if (rc != THEUS_OK) {
        engine_parts_fini(e, done);
        theus_xfree(e);
        return rc == THEUS_ENOMEM ? err_set(st, rc, "theus_engine_create: out of memory") : rc;
    }
    *out = e;
    return THEUS_OK;
}

void theus_engine_destroy(theus_engine *e)
{
    if (!e)
        return;
    pool_destroy(e->pool);
    sig_close(&e->sig);
    publish_hook_detach(e);
    outbox_drain(e, UINT64_MAX);
    for (size_t i = 0; i < e->nprocs; i++)
        destroy_proc(e->procs[i]);
    theus_xfree(e->procs);
    theus_xfree(e->wfs.v);
    engine_parts_fini(e, PART_AUDIT);
    theus_xfree(e);
}

theus_state *theus_engine_state(const theus_engine *e)
{
    return e ? e->st : NULL;
}

proc_entry *engine_find(theus_engine *e, const char *name)
{
    proc_entry *p = NULL;
    pthread_rwlock_rdlock(&e->reg_lock);
    for (size_t i = 0; i < e->nprocs; i++)
        if (strcmp(e->procs[i]->name, name) == 0) {
            p = e->procs[i];
            break;
        }
    pthread_rwlock_unlock(&e->reg_lock);
    return p;
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

/* ---- runs -------------------------------------------------------------------------------- */

static int theus_code(int rc)
{
    return rc <= THEUS_EINVAL && rc >= THEUS_ETIMEDOUT;
}

static int declared(const proc_entry *p, int rc)
{
    for (size_t i = 0; i < p->ncodes; i++)
        if (p->codes[i] == rc)
            return 1;
    return 0;
}

static int run_attempt(theus_tx *tx, void *user)
{
    theus_run *run = user;
    proc_entry *p = run->p;
    /* What an earlier attempt queued went with its transaction. */
    run->nsignals = 0;
    outbox_drop_run(run);
    run->tx = tx;
    run->attempts++;
    atomic_fetch_add_explicit(&p->attempts, 1, memory_order_relaxed);
    int rc = p->body(run, p->user);
    if (rc == THEUS_OK && run->extra) {
        /* The engine's own write, not the process's: outside its contract. */
        int had = tx->has_contract;
        tx->has_contract = 0;
        rc = theus_tx_write(tx, run->extra->field, NULL, run->extra->bytes, THEUS_MEM_HOST);
        tx->has_contract = had;
    }
    if (rc == THEUS_OK || rc == THEUS_ECONFLICT || theus_code(rc) || declared(p, rc))
        return rc;
    atomic_fetch_add_explicit(&p->undeclared, 1, memory_order_relaxed);
    return err_set(run->e->st, THEUS_EUNDECLARED,
                   "process '%s' returned status %d, which it does not declare", p->name, rc);
}

int engine_run_proc(theus_engine *e, proc_entry *p, const run_extra *extra,
                    uint64_t *committed_version)
{
    theus_run run;
    memset(&run, 0, sizeof run);
    run.e = e;
    run.p = p;
    run.extra = p->kind == THEUS_PROCESS_PURE ? NULL : extra;
    atomic_fetch_add_explicit(&p->runs, 1, memory_order_relaxed);
    theus_retry_options ro = e->opts.retry;
    ro.tx.isolation = p->isolation;
    ro.tx.contract = &p->contract;
    if (p->kind == THEUS_PROCESS_PURE)
        ro.priority_after = UINT32_MAX;  /* the priority lease would hold other commits */
    uint64_t version = 0;
    theus_run *prev = publish_hook_enter(&run);
    int rc = theus_tx_run(e->st, &ro, run_attempt, &run, &version);
    publish_hook_leave(prev);
    run.tx = NULL;
    uint64_t extra_attempts = run.attempts ? run.attempts - 1 : 0;
    atomic_fetch_add_explicit(&p->retries, extra_attempts, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->conflicts, extra_attempts + (rc == THEUS_EBUSY), memory_order_relaxed);
    if (rc != THEUS_OK) {
        outbox_drop_run(&run);
        theus_xfree(run.signals);
        atomic_fetch_add_explicit(&p->failures, 1, memory_order_relaxed);
        return rc;
    }
    if (!run.published) {
        /* Wrote nothing: no version was published, nothing could refuse it; deliver now
         * (a shared state's table can be full, or its commit lock out of reach: then the
         * run fails and its outbox entries are dropped). */
        run.version = version;
        if ((rc = sig_deliver(e, &run)) != THEUS_OK) {
            outbox_drop_run(&run);
            theus_xfree(run.signals);
            atomic_fetch_add_explicit(&p->failures, 1, memory_order_relaxed);
            return rc;
        }
        outbox_publish(e, &run, version);
    }
    theus_xfree(run.signals);
    if (run.ob_seq)
        outbox_drain(e, run.ob_seq);
    atomic_fetch_add_explicit(&p->commits, 1, memory_order_relaxed);
    if (committed_version)
        *committed_version = version;
    return THEUS_OK;
}

int theus_engine_run(theus_engine *e, const char *process, uint64_t *committed_version)
{
    if (!e || !process)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_engine_run: NULL argument");
    if (atomic_load(&e->stopped))
        return err_set(e->st, THEUS_EBUSY, "run '%s': the engine was stopped by a level-S "
                       "audit rule (theus_engine_resume)", process);
    proc_entry *p = engine_find(e, process);
    if (!p)
        return err_set(e->st, THEUS_ENOENT, "run: no process '%s' is registered", process);
    return engine_run_proc(e, p, NULL, committed_version);
}

/* A pool job: @a the engine, @b the process. */
static int pool_job(void *a, void *b, uint64_t *version)
{
    theus_engine *e = a;
    proc_entry *p = b;
    if (atomic_load(&e->stopped))
        return err_set(e->st, THEUS_EBUSY, "run '%s': the engine was stopped by a level-S audit "
                       "rule", p->name);
    return engine_run_proc(e, p, NULL, version);
}

int theus_engine_submit(theus_engine *e, const char *process, theus_job **job)
{
    if (job)
        *job = NULL;
    if (!e || !process || !job)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_engine_submit: NULL argument");
    if (atomic_load(&e->stopped))
        return err_set(e->st, THEUS_EBUSY, "submit '%s': the engine was stopped by a level-S "
                       "audit rule", process);
    proc_entry *p = engine_find(e, process);
    if (!p)
        return err_set(e->st, THEUS_ENOENT, "submit: no process '%s' is registered", process);
    pthread_mutex_lock(&e->pool_mu);
    if (!e->pool)
        e->pool = pool_start(e->opts.workers);
    pool *pl = e->pool;
    pthread_mutex_unlock(&e->pool_mu);
    if (!pl)
        return err_set(e->st, THEUS_ENOMEM, "submit '%s': cannot start the worker pool", process);
    if (pool_submit(pl, e->st, pool_job, e, p, job) != THEUS_OK)
        return err_set(e->st, THEUS_ENOMEM, "submit '%s': out of memory", process);
    return THEUS_OK;
}

theus_tx *theus_run_tx(theus_run *run)
{
    return run ? run->tx : NULL;
}

const char *theus_run_process(const theus_run *run)
{
    return run ? run->p->name : "";
}

theus_engine *theus_run_engine(theus_run *run)
{
    return run ? run->e : NULL;
}

int theus_run_signal(theus_run *run, const char *name)
{
    if (!run)
        return err_set(NULL, THEUS_EINVAL, "theus_run_signal: NULL run");
    int rc = sig_check_name(run->e, name);
    if (rc != THEUS_OK)
        return rc;
    if (run->p->kind == THEUS_PROCESS_PURE)
        return err_set(run->e->st, THEUS_EPERM, "signal '%s': process '%s' is pure", name,
                       run->p->name);
    if ((rc = sig_check_room(run, name)) != THEUS_OK)
        return rc;
    if (tx_grow((void **)&run->signals, &run->cap_signals, run->nsignals + 1,
                sizeof *run->signals))
        return err_set(run->e->st, THEUS_ENOMEM, "signal '%s': out of memory", name);
    memcpy(run->signals[run->nsignals++], name, strlen(name) + 1);
    return THEUS_OK;
}

int theus_run_outbox(theus_run *run, theus_outbox_fn fn, theus_outbox_drop_fn drop, void *arg)
{
    if (!run || !fn)
        return err_set(run ? run->e->st : NULL, THEUS_EINVAL, "theus_run_outbox: NULL argument");
    if (run->p->kind == THEUS_PROCESS_PURE)
        return err_set(run->e->st, THEUS_EPERM, "outbox: process '%s' is pure", run->p->name);
    outbox_item *it = theus_xcalloc(1, sizeof *it);
    if (!it) {
        if (drop)
            drop(arg);
        return err_set(run->e->st, THEUS_ENOMEM, "outbox: out of memory");
    }
    it->fn = fn;
    it->drop = drop;
    it->arg = arg;
    if (run->ob_tail)
        run->ob_tail->next = it;
    else
        run->ob_head = it;
    run->ob_tail = it;
    return THEUS_OK;
}

int theus_engine_process_stats(theus_engine *e, const char *process, theus_process_stats *out)
{
    if (!e || !process || !out)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_engine_process_stats: NULL argument");
    proc_entry *p = engine_find(e, process);
    if (!p)
        return err_set(e->st, THEUS_ENOENT, "stats: no process '%s' is registered", process);
    out->runs = atomic_load(&p->runs);
    out->commits = atomic_load(&p->commits);
    out->failures = atomic_load(&p->failures);
    out->attempts = atomic_load(&p->attempts);
    out->retries = atomic_load(&p->retries);
    out->conflicts = atomic_load(&p->conflicts);
    out->undeclared = atomic_load(&p->undeclared);
    out->audit = atomic_load(&p->audit);
    return THEUS_OK;
}

int theus_engine_stopped(const theus_engine *e)
{
    return e ? atomic_load(&((theus_engine *)e)->stopped) : 0;
}

void theus_engine_resume(theus_engine *e)
{
    if (e)
        atomic_store(&e->stopped, 0);
}
