/* The engine of one state: the parts it sets up at creation and takes down at destroy
 * (signals, outbox, audit, the commit path's listeners), the lookup of a registered process
 * by name, per-process counters, and the stop a level-S audit rule sets. Registering
 * processes: registration.c; running them: run.c. */
#include "process.h"
#include "alloc.h"
#include "error.h"
#include "publish_hook.h"
#include <stdint.h>
#include <string.h>

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
