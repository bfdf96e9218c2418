/* What a shared state does differently from a private one, as the core's operations table
 * (state.h, state_ops): detach, per-handle holds in the lease table, reaping dead holders,
 * a bounded wait for the commit lock, redo recovery after taking it, and commits through
 * the redo record. */
#include "shared_impl.h"
#include "redo.h"

const state_ops shared_state_ops = {
    .detach = shared_detach,
    .hold_slot = shared_hold_slot,
    .holds = shared_holds,
    .reap = shared_reap,
    .lock = shared_commit_lock,
    .recover = redo_recover,
    .apply = redo_commit,
    .pshared = 1,
};
