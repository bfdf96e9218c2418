/* What a shared state does differently from a private one, as the core's operations table
 * (state.h, state_ops): detach, per-handle holds in the lease table, reaping dead holders,
 * a bounded wait for the commit lock, redo recovery after taking it, and commits through
 * the redo record. */
#include "shared_impl.h"
#include "redo.h"

/* After taking the commit lock: the redo record first (the state is then at the old or the
 * new version), then the log of a durable shared state made to agree with it. */
static int shared_recover(theus_state *st)
{
    int rc = redo_recover(st);
    if (rc == THEUS_OK && shared_area_of(st)->durable.enabled)
        rc = shared_durable_agree(st);
    return rc;
}

const state_ops shared_state_ops = {
    .detach = shared_detach,
    .hold_slot = shared_hold_slot,
    .holds = shared_holds,
    .reap = shared_reap,
    .lock = shared_commit_lock,
    .recover = shared_recover,
    .apply = redo_commit,
    .pshared = 1,
};
