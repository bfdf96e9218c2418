/* The priority lease (theus_tx_run's fallback for a starving transaction): one holder at a
 * time, for a bounded time, so that it can neither starve nor hang the others; and the
 * commit lock as commits take it, which waits out another holder's lease. */
#include "state.h"

/* With the commit lock held: wait while someone else holds a live lease; an expired
 * lease is dropped so that a stuck (or dead) priority holder cannot hang everyone. */
static int wait_out_lease(theus_state *st, uint64_t ticket)
{
    state_header *h = st->hdr;
    while (h->priority_ticket != 0 && h->priority_ticket != ticket) {
        uint64_t now = state_now_ns();
        if (now >= h->priority_deadline_ns) {
            h->priority_ticket = 0;
            state_futex_wake(&h->priority_wake, state_pshared(st));
            break;
        }
        uint32_t seen = atomic_load_explicit(&h->priority_wake, memory_order_acquire);
        uint64_t left = h->priority_deadline_ns - now;
        state_unlock(st);
        state_futex_wait(&h->priority_wake, seen, state_pshared(st), left);
        int rc = state_lock(st);
        if (rc != THEUS_OK)
            return rc;
    }
    return THEUS_OK;
}

int state_commit_lock(theus_state *st, uint64_t ticket)
{
    int rc = state_lock(st);
    if (rc == THEUS_OK)
        rc = wait_out_lease(st, ticket);
    return rc;
}

void state_commit_unlock(theus_state *st)
{
    state_unlock(st);
}

uint64_t state_priority_acquire(theus_state *st)
{
    state_header *h = st->hdr;
    if (state_lock(st) != THEUS_OK)
        return 0;
    if (wait_out_lease(st, 0) != THEUS_OK)
        return 0;
    uint64_t ticket = ++h->next_ticket;
    h->priority_ticket = ticket;
    h->priority_deadline_ns = state_now_ns() + (uint64_t)st->opts.priority_lease_ms * 1000000ull;
    state_unlock(st);
    return ticket;
}

void state_priority_release(theus_state *st, uint64_t ticket)
{
    state_header *h = st->hdr;
    if (state_lock(st) != THEUS_OK)
        return;
    if (h->priority_ticket == ticket) {
        h->priority_ticket = 0;
        state_futex_wake(&h->priority_wake, state_pshared(st));
    }
    state_unlock(st);
}
