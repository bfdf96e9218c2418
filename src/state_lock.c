/* The commit lock: taken by every commit (and by readers that lose the optimistic race),
 * robust in a shared state, followed by the ops' recovery. A commit takes it through
 * state_commit_lock (priority.c), which also waits out another holder's priority lease. */
#include "state.h"
#include "error.h"
#include <errno.h>
#include <string.h>

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
    int e = pthread_mutex_lock(&h->commit_lock);
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
