/* The log of a durable shared state after a process died holding the commit lock: made to
 * agree with the state by the next taker of the lock (the invariant in
 * shared_durable_area.h). Runs after redo recovery, so the state is at the old version or the
 * new one already. Works on the files by name: any process of the state can do it. */
#include "shared_impl.h"
#include "error.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int shared_durable_agree(theus_state *st)
{
    shared_area *a = shared_area_of(st);
    shared_durable_area *d = &a->durable;
    char path[SHARED_DURABLE_DIR_MAX + 64];
    if (d->rotating) {
        /* Died starting a segment: finished if the area names it, else removed. */
        if (atomic_load_explicit(&d->seg_first, memory_order_relaxed) != d->rotating) {
            snprintf(path, sizeof path, DUR_SEGMENT_FMT, d->dir, (unsigned long long)d->rotating);
            if (unlink(path) != 0 && errno != ENOENT)
                return err_set(st, THEUS_EIO, "durable shared state '%s': cannot remove the "
                               "unfinished log segment '%s': %s", a->name, path, strerror(errno));
        }
        d->rotating = 0;
    }
    if (!d->inflight)
        return THEUS_OK;
    uint64_t now = atomic_load_explicit(&st->hdr->version, memory_order_relaxed);
    /* An init record (version 1) leaves no version behind: it is kept when it was written
     * whole (append_off moved past it), which may keep one whose redo record was dropped. */
    int keep = d->inflight_init ? d->append_off > d->inflight_off : now >= d->inflight_version;
    if (keep) {
        d->kept++;
    } else {
        snprintf(path, sizeof path, DUR_SEGMENT_FMT, d->dir,
                 (unsigned long long)atomic_load_explicit(&d->seg_first, memory_order_relaxed));
        if (truncate(path, (off_t)d->inflight_off) != 0)
            return err_set(st, THEUS_EIO, "durable shared state '%s': cannot cut the record of "
                           "an interrupted commit off '%s' at byte %llu: %s", a->name, path,
                           (unsigned long long)d->inflight_off, strerror(errno));
        d->append_off = d->inflight_off;
        d->truncated++;
    }
    d->inflight = 0;
    return THEUS_OK;
}
