/* Commit holds (theus_state_hold_commits), the hold lock, the replay gate and the replay
 * sequence that readers validate their copies with. */
#include "state.h"
#include "error.h"
#include <errno.h>

/* The hold lock guards single counters (and a shared state's lease slots), each consistent
 * on its own: taking it over from a dead owner needs no repair. */
void state_hold_lock(state_header *h)
{
    if (pthread_mutex_lock(&h->hold_lock) == EOWNERDEAD)
        pthread_mutex_consistent(&h->hold_lock);
}

void state_hold_unlock(state_header *h)
{
    pthread_mutex_unlock(&h->hold_lock);
}

/* With the hold lock held: the calling handle's hold counter, and all live holds. */
static uint32_t *hold_counter(theus_state *st)
{
    return st->ops ? st->ops->hold_slot(st) : &st->hdr->holds;
}

static uint32_t holds_live(theus_state *st)
{
    return st->ops ? st->ops->holds(st) : st->hdr->holds;
}

/* Holds are a gate of their own rather than a lock's read side: a holder's reads must go
 * on while a commit waits for it. A replay in progress (odd sequence) holds the commit
 * lock, so a new hold waits for it there, which also recovers the replay of a dead process. */
static int hold_take(theus_state *st)
{
    state_header *h = st->hdr;
    state_hold_lock(h);
    if (!(atomic_load_explicit(&h->replay_seq, memory_order_relaxed) & 1u)) {
        (*hold_counter(st))++;
        state_hold_unlock(h);
        return THEUS_OK;
    }
    state_hold_unlock(h);
    int rc = state_lock(st);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "theus_state_hold_commits");
    state_hold_lock(h);
    (*hold_counter(st))++;
    state_hold_unlock(h);
    state_unlock(st);
    return THEUS_OK;
}

int theus_state_hold_commits(theus_state *st)
{
    if (!st)
        return err_set(NULL, THEUS_EINVAL, "theus_state_hold_commits: NULL state");
    int rc = hold_take(st);
    /* No replay starts now; one that a stream-ordered commit enqueued may still run: wait
     * for it, so that the held bytes are the published version's. */
    if (rc == THEUS_OK && (rc = stream_fence_settle(st, &st->fence, "hold_commits")) != THEUS_OK)
        theus_state_release_commits(st);
    return rc;
}

void theus_state_release_commits(theus_state *st)
{
    if (!st)
        return;
    state_header *h = st->hdr;
    state_hold_lock(h);
    uint32_t *c = hold_counter(st);
    if (*c > 0 && (--*c, holds_live(st) == 0))
        state_futex_wake(&h->hold_wake, state_pshared(st));
    state_hold_unlock(h);
}

/* How often a commit waiting for holds looks for holders that died (states with ops). */
#define REAP_PERIOD_NS 20000000ull

void state_replay_gate_enter(theus_state *st)
{
    state_header *h = st->hdr;
    state_hold_lock(h);
    while (holds_live(st) > 0) {
        uint32_t seen = atomic_load_explicit(&h->hold_wake, memory_order_acquire);
        state_hold_unlock(h);
        state_futex_wait(&h->hold_wake, seen, state_pshared(st), st->ops ? REAP_PERIOD_NS : 0);
        state_hold_lock(h);
        if (st->ops)
            st->ops->reap(st);
    }
    uint64_t s = atomic_load_explicit(&h->replay_seq, memory_order_relaxed);
    atomic_store_explicit(&h->replay_seq, s | 1u, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    state_hold_unlock(h);
}

void state_replay_gate_leave(theus_state *st)
{
    state_header *h = st->hdr;
    uint64_t s = atomic_load_explicit(&h->replay_seq, memory_order_relaxed);
    atomic_store_explicit(&h->replay_seq, (s | 1u) + 1u, memory_order_release);
}

int state_read_begin(const theus_state *st, uint64_t *seq)
{
    *seq = atomic_load_explicit(&st->hdr->replay_seq, memory_order_acquire);
    return !(*seq & 1u);
}

int state_read_valid(const theus_state *st, uint64_t seq)
{
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&st->hdr->replay_seq, memory_order_relaxed) == seq;
}
