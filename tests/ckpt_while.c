/* Checkpoints while committing (tests/ckpt_while.h). */
#include "ckpt_while.h"
#include "theus/theus_durable.h"

#include <sched.h>

int ckpt_while_committing(ckpt_writer *w, int keep, uint64_t during, int max,
                          uint64_t *versions, int *taken, uint64_t *landed)
{
    /* However fast this machine is: the writer is under way first. */
    while (atomic_load(&w->commits) < during && !atomic_load(&w->stop))
        sched_yield();
    *landed = 0;
    int k = 0;
    for (; k < keep || (*landed < during && k < max); k++) {
        uint64_t before = theus_state_version(w->st);
        int rc = theus_state_checkpoint(w->st, 0, &versions[k % keep]);
        if (rc != THEUS_OK) {
            *taken = k;
            return rc;
        }
        *landed += theus_state_version(w->st) - before;
    }
    *taken = k;
    return THEUS_OK;
}
