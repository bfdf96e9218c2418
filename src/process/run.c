/* Runs of a process: one transaction through the retry helper per run (snapshot reads for
 * pure ones), on the caller's thread or the worker pool, and what a run's body may call
 * (its transaction, signals, outbox entries). */
#include "process.h"
#include "alloc.h"
#include "error.h"
#include "publish_hook.h"
#include <stdint.h>
#include <string.h>

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

/* The registered process @process, for a call named @verb ("run", "submit"): THEUS_EBUSY
 * while a level-S audit rule has the engine stopped (@hint ends that message), THEUS_ENOENT
 * when no process of that name is registered. */
static int engine_find_runnable(theus_engine *e, const char *verb, const char *hint,
                                const char *process, proc_entry **out)
{
    if (atomic_load(&e->stopped))
        return err_set(e->st, THEUS_EBUSY, "%s '%s': the engine was stopped by a level-S "
                       "audit rule%s", verb, process, hint);
    *out = engine_find(e, process);
    if (!*out)
        return err_set(e->st, THEUS_ENOENT, "%s: no process '%s' is registered", verb, process);
    return THEUS_OK;
}

int theus_engine_run(theus_engine *e, const char *process, uint64_t *committed_version)
{
    if (!e || !process)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_engine_run: NULL argument");
    proc_entry *p;
    int rc = engine_find_runnable(e, "run", " (theus_engine_resume)", process, &p);
    if (rc != THEUS_OK)
        return rc;
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
    proc_entry *p;
    int rc = engine_find_runnable(e, "submit", "", process, &p);
    if (rc != THEUS_OK)
        return rc;
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
