/* The process layer on the commit path, as two listeners: the audit, ahead of every other
 * listener (it may refuse, commit lock held, before the replay and before the write-ahead
 * log writes anything; after publish it keeps its counters and records, and logs them
 * right after the commit's record and before the log's sync), and, in attach order, the
 * signals and outbox entries of the run whose transaction this is, and the version
 * waiters. On a shared state the second one stages the run's signals in the segment
 * before the replay and delivers them in its published (shared_signal.h). */
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
    return audit_prepare(e, b, run_of(e, b));
}

static void cancel(void *user, const publish_batch *b)
{
    if (!b->init)
        audit_cancel(user);
}

/* A shared state's signals are staged in its segment now (the audit accepted the commit)
 * and delivered in after_publish — or by the next taker of the commit lock, if this process
 * dies after the publish. THEUS_ENOMEM: the signal table is full. */
static int stage_signals(void *user, const publish_batch *b)
{
    theus_engine *e = user;
    return b->init ? THEUS_OK : sig_stage(e, run_of(e, b), b->version);
}

static void unstage_signals(void *user, const publish_batch *b)
{
    if (!b->init)
        sig_unstage(user);
}

static void audit_after_publish(void *user, const publish_batch *b)
{
    if (!b->init)
        audit_published(user, b);
}

static void after_publish(void *user, const publish_batch *b)
{
    theus_engine *e = user;
    if (b->init)
        return;
    theus_run *run = run_of(e, b);
    if (run) {
        run->published = 1;
        run->version = b->version;
        if (!e->sig.shared)
            sig_deliver(e, run);
        outbox_publish(e, run, b->version);
    }
    sig_published(e, b->version); /* a shared state's staged signals */
    sig_commit_published(e);
}

int publish_hook_attach(theus_engine *e)
{
    theus_state *st = e->st;
    for (uint32_t i = 0; i < st->listeners.n; i++)
        if (st->listeners.l[i].prepare == before_replay)
            return err_set(st, THEUS_EBUSY, "theus_engine_create: the state already has an engine");
    publish_listener a = {.prepare = before_replay, .cancel = cancel,
                          .published = audit_after_publish, .user = e};
    publish_listener l = {.prepare = stage_signals, .cancel = unstage_signals,
                          .published = after_publish, .user = e};
    int rc = publish_listen_first(st, &a);
    if (rc == THEUS_OK && (rc = publish_listen(st, &l)) != THEUS_OK)
        publish_unlisten(st, e);
    return rc;
}

void publish_hook_detach(theus_engine *e)
{
    publish_unlisten(e->st, e);
}
