/* The commit lock: taken by every commit (and by readers that lose the optimistic race),
 * robust in a shared state, followed by the ops' recovery. A commit takes it through
 * state_commit_lock (priority.c), which also waits out another holder's priority lease. */
#include "state.h"
#include "error.h"
#include <errno.h>
#include <sched.h>
#include <string.h>

/* The tries of state_lock_spin: a commit holds the commit lock for microseconds, while
 * blocking on it costs a wake-up — tens of microseconds on a virtual machine whose idle
 * CPUs halt; group commit's writers all come for it at once when their sync returns. */
#define LOCK_SPIN_TRIES 50

int state_lock_spin(pthread_mutex_t *m)
{
    int e = EBUSY;
    for (int i = 0; i < LOCK_SPIN_TRIES && e == EBUSY; i++)
        if ((e = pthread_mutex_trylock(m)) == EBUSY)
            sched_yield();
    return e;
}

int state_lock(theus_state *st)
{
    state_header *h = st->hdr;
    if (st->ops) {
        /* Another process can stop or vanish holding it: the ops' lock gives up after a
         * bound; a holder that died is taken over, and whatever it was doing, recover
         * finishes or drops (and runs again if this process dies too). */
        int rc = st->ops->lock(st);
        if (rc == THEUS_OK && (rc = st->ops->recover(st)) != THEUS_OK)
            pthread_mutex_unlock(&h->commit_lock);
        return rc;
    }
    int e = st->lock_spin ? state_lock_spin(&h->commit_lock) : EBUSY;
    if (e == EBUSY)
        e = pthread_mutex_lock(&h->commit_lock);
    if (e == EOWNERDEAD)
        pthread_mutex_consistent(&h->commit_lock);
    else if (e != 0)
        return err_set(st, THEUS_EBUSY, "cannot take the commit lock: %s", strerror(e));
    return THEUS_OK;
}

void state_unlock(theus_state *st)
{
    pthread_mutex_unlock(&st->hdr->commit_lock);
}
