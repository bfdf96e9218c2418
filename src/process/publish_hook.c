/* The process layer on the commit path: audit (may refuse, commit lock held, before the
 * replay), then after publish the audit's counters and records, the signals and the
 * outbox entries of the run whose transaction this is, and the version waiters. */
#include "publish_hook.h"
#include "error.h"

static int before_replay(void *user, const commit_batch *b)
{
    theus_engine *e = user;
    return audit_prepare(e, b, engine_run_of(e, b));
}

static void after_publish(void *user, const commit_batch *b)
{
    theus_engine *e = user;
    audit_published(e, b);
    theus_run *run = engine_run_of(e, b);
    if (run) {
        run->published = 1;
        run->version = b->version;
        sig_deliver(e, run);
        outbox_publish(e, run, b->version);
    }
    sig_commit_published(e);
}

int publish_hook_attach(theus_engine *e)
{
    theus_state *st = e->st;
    if (st->hooks.before_replay || st->hooks.after_publish || st->hooks.user)
        return err_set(st, THEUS_EBUSY, "theus_engine_create: the state already has an engine");
    st->hooks.before_replay = before_replay;
    st->hooks.after_publish = after_publish;
    st->hooks.user = e;
    return THEUS_OK;
}

void publish_hook_detach(theus_engine *e)
{
    theus_state *st = e->st;
    if (st->hooks.user == e) {
        st->hooks.before_replay = NULL;
        st->hooks.after_publish = NULL;
        st->hooks.user = NULL;
    }
}
