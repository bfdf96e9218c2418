/* The log of a durable shared state after a process died holding the commit lock: made to
 * agree with the state by the next taker of the lock (the invariant in
 * shared_durable_area.h). Runs after redo recovery, so the state is at the old version or the
 * new one already. Works on the files by name: any process of the state can do it. */
#include "shared_impl.h"
#include "error.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Take [from, to) of segment @path off the log: zeroed (and synced) inside the zero-filled
 * part, else the file is cut at @from. */
static int cut_tail(theus_state *st, shared_durable_area *d, const char *path, uint64_t from,
                    uint64_t to)
{
    static const unsigned char zeros[16 * 1024];
    const char *what = "cut";
    int ok;
    if (d->zero_end > from && d->zero_end >= to) {
        what = "zero";
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        ok = fd >= 0;
        for (uint64_t at = from; ok && at < to;) {
            size_t n = to - at < sizeof zeros ? (size_t)(to - at) : sizeof zeros;
            ssize_t k = pwrite(fd, zeros, n, (off_t)at);
            ok = k > 0 || (k < 0 && errno == EINTR);
            if (k > 0)
                at += (uint64_t)k;
        }
        if (ok)
            ok = fdatasync(fd) == 0;
        int e = errno;
        if (fd >= 0)
            close(fd);
        errno = e;
    } else {
        ok = truncate(path, (off_t)from) == 0;
        if (ok)
            d->zero_end = from;
    }
    if (!ok)
        return err_set(st, THEUS_EIO, "durable shared state '%s': cannot %s the bytes of an "
                       "interrupted append in '%s' from byte %llu: %s", shared_area_of(st)->name,
                       what, path, (unsigned long long)from, strerror(errno));
    return THEUS_OK;
}

int shared_durable_agree(theus_state *st)
{
    shared_area *a = shared_area_of(st);
    shared_durable_area *d = &a->durable;
    char path[SHARED_DURABLE_DIR_MAX + 64];
    if (d->rotating) {
        /* Died starting a segment: finished if the area names it (then it holds its head
         * only), else removed. */
        if (atomic_load_explicit(&d->seg_first, memory_order_relaxed) != d->rotating) {
            snprintf(path, sizeof path, DUR_SEGMENT_FMT, d->dir, (unsigned long long)d->rotating);
            if (unlink(path) != 0 && errno != ENOENT)
                return err_set(st, THEUS_EIO, "durable shared state '%s': cannot remove the "
                               "unfinished log segment '%s': %s", a->name, path, strerror(errno));
        } else {
            d->append_off = d->dirty_end = 32; /* WAL_SEG_HEAD */
            d->zero_end = 0;
        }
        d->rotating = 0;
    }
    /* The valid end of the log and how far bytes may have been written past it. */
    uint64_t from = d->append_off, to = d->dirty_end;
    int keep = 1;
    if (d->inflight) {
        uint64_t now = atomic_load_explicit(&st->hdr->version, memory_order_relaxed);
        /* An init record (version 1) leaves no version behind: it is kept when it was
         * written whole (append_off moved past it), which may keep one whose redo record
         * was dropped. */
        keep = d->inflight_init ? d->append_off > d->inflight_off : now >= d->inflight_version;
        if (!keep) {
            from = d->inflight_off;
            if (to < d->append_off)
                to = d->append_off;
        }
    }
    /* Cut (or zero) what an interrupted append left past the end: the record in flight when
     * it is not kept, and any part of a record — an audit record too — past append_off. */
    if (to > from || !keep) {
        snprintf(path, sizeof path, DUR_SEGMENT_FMT, d->dir,
                 (unsigned long long)atomic_load_explicit(&d->seg_first, memory_order_relaxed));
        int rc = cut_tail(st, d, path, from, to > from ? to : from);
        if (rc != THEUS_OK)
            return rc;
    }
    if (d->inflight) {
        if (keep)
            d->kept++;
        else
            d->truncated++;
    }
    d->append_off = from;
    d->dirty_end = from;
    d->inflight = 0;
    return THEUS_OK;
}
