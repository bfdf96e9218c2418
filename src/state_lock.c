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
    int e = pthread_mutex_lock(&h->commit_lock);
    if (e == EOWNERDEAD) {
        /* Its holder died. Whatever it was doing, the ops' recover below finishes or drops
         * it (and runs again if this process dies too). */
        pthread_mutex_consistent(&h->commit_lock);
    } else if (e != 0) {
        return err_set(st, THEUS_EBUSY, "cannot take the commit lock: %s", strerror(e));
    }
    if (st->ops) {
        int rc = st->ops->recover(st);
        if (rc != THEUS_OK) {
            pthread_mutex_unlock(&h->commit_lock);
            return rc;
        }
    }
    return THEUS_OK;
}

void state_unlock(theus_state *st)
{
    pthread_mutex_unlock(&st->hdr->commit_lock);
}
