/* The process layer on the commit path: audit (may refuse, commit lock held, before the
 * replay) and, for a shared state, the staging of the run's signals; then after publish
 * the audit's counters and records, the signals (private state) and the outbox entries of
 * the run whose transaction this is, and the version waiters. */
#include "publish_hook.h"
#include "error.h"

/* The run the calling thread is inside, so that the publish step can find the signals and
 * outbox entries of the commit it publishes. */
static _Thread_local theus_run *tls_run;

theus_run *publish_hook_enter(theus_run *run)
{
    theus_run *prev = tls_run;
    tls_run = run;
    return prev;
}

void publish_hook_leave(theus_run *prev)
{
    tls_run = prev;
}

/* The run whose attempt made @b: only that attempt's own transaction, on this thread. */
static theus_run *run_of(theus_engine *e, const publish_batch *b)
{
    theus_run *r = tls_run;
    return r && r->e == e && r->tx && r->tx == b->tx ? r : NULL;
}

static int before_replay(void *user, const publish_batch *b)
{
    theus_engine *e = user;
    if (b->init)
        return THEUS_OK;
    theus_run *run = run_of(e, b);
    int rc = audit_prepare(e, b, run);
    /* A shared state's signals are staged in its segment now and delivered by the redo
     * path after publish (also by a process that finishes this commit if this one dies). */
    if (rc == THEUS_OK && (rc = sig_stage(e, run, b->version)) != THEUS_OK)
        audit_cancel(e);
    return rc;
}

static void cancel(void *user, const publish_batch *b)
{
    if (!b->init) {
        audit_cancel(user);
        sig_unstage(user);
    }
}

static void after_publish(void *user, const publish_batch *b)
{
    theus_engine *e = user;
    if (b->init)
        return;
    audit_published(e, b);
    theus_run *run = run_of(e, b);
    if (run) {
        run->published = 1;
        run->version = b->version;
        if (!e->sig.shared)
            sig_deliver(e, run); /* a shared state's: delivered by the redo path */
        outbox_publish(e, run, b->version);
    }
    sig_commit_published(e);
}

int publish_hook_attach(theus_engine *e)
{
    theus_state *st = e->st;
    for (uint32_t i = 0; i < st->listeners.n; i++)
        if (st->listeners.l[i].prepare == before_replay)
            return err_set(st, THEUS_EBUSY, "theus_engine_create: the state already has an engine");
    publish_listener l = {.prepare = before_replay, .cancel = cancel, .published = after_publish,
                         .user = e};
    return publish_listen(st, &l);
}

void publish_hook_detach(theus_engine *e)
{
    publish_unlisten(e->st, e);
}
