/* The log writer: encodes each commit's deltas as one record (wal_record.h) in the publish
 * step's prepare, under the commit lock, so records are in version order; then makes it
 * durable: THEUS_SYNC_COMMIT fdatasyncs in `published` (still under the lock: the commit
 * returns only once its record is on disk), THEUS_SYNC_GROUP in `acknowledge` after the
 * lock is released — one committer leads an fdatasync that covers every record written so
 * far while the others wait on a condition variable — and THEUS_SYNC_NONE leaves the
 * record in the page cache (it survives the process, not the machine).
 *
 * This file: opening and closing the log, rotation and attaching the listener (the front
 * that durable.c calls) and audit notes. The segment files are in wal_segment.c, a commit's
 * record in wal_encode.c, the listener of a private state in wal_private.c, that of a
 * durable shared state in wal_shared.c; wal_internal.h joins them. */
#include "durable/wal.h"
#include "alloc.h"
#include "durable/fileio.h"
#include "durable/wal_internal.h"
#include "durable/wal_record.h"
#include "error.h"
#include "publish.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int wal_open(wal *w, theus_state *st, const char *dir, const theus_durable_options *o,
             uint64_t start, int create, uint64_t size)
{
    memset(w, 0, sizeof *w);
    w->fd = -1;
    w->st = st;
    w->sync = o->sync;
    w->window_us = o->group_window_us;
    w->segment_bytes = o->segment_bytes;
    w->prealloc = wal_prealloc_step(o);
    if (!(w->dir = theus_xstrdup(dir)))
        return err_set(st, THEUS_ENOMEM, "out of memory opening the log");
    pthread_mutex_init(&w->m, NULL);
    pthread_cond_init(&w->cv, NULL);
    int rc;
    if (create) {
        rc = wal_new_segment(w, start);
    } else {
        char path[4096];
        wal_segment_path(dir, start, path, sizeof path);
        w->fd = open(path, O_WRONLY | O_CLOEXEC);
        /* Appends go after what recovery found valid (a torn tail was cut already; what
         * follows the valid end is zeros, which preallocation keeps as its zero-filled
         * part and which are cut off without it). */
        struct stat sb;
        /* Synced once (what recovery read may be in the page cache only, left by a process
         * under THEUS_SYNC_NONE): the first record's claim says everything before it is. */
        rc = w->fd >= 0 && fstat(w->fd, &sb) == 0 &&
                     (w->prealloc || ftruncate(w->fd, (off_t)size) == 0) &&
                     lseek(w->fd, (off_t)size, SEEK_SET) == (off_t)size &&
                     (w->sync == THEUS_SYNC_NONE || fdatasync(w->fd) == 0)
                 ? THEUS_OK
                 : err_set(st, THEUS_EIO, "cannot open log segment '%s': %s", path,
                           strerror(errno));
        w->seg_first = start;
        w->seg_size = size;
        if (rc == THEUS_OK && w->prealloc && (uint64_t)sb.st_size > size)
            w->zero_end = (uint64_t)sb.st_size;
    }
    /* The state is rebuilt: its version is the newest commit on disk. */
    atomic_store(&w->append_version, theus_state_version(st));
    atomic_store(&w->synced_version, theus_state_version(st));
    if (rc != THEUS_OK)
        wal_close(w);
    return rc;
}

int wal_open_shared(wal *w, theus_state *st, const char *dir, const theus_durable_options *o)
{
    memset(w, 0, sizeof *w);
    w->fd = -1;
    w->st = st;
    w->sync = o->sync;
    w->window_us = o->group_window_us;
    w->sa = &shared_area_of(st)->durable;
    w->segment_bytes = w->sa->segment_bytes;
    w->prealloc = w->sa->prealloc;
    if (!(w->dir = theus_xstrdup(dir)))
        return err_set(st, THEUS_ENOMEM, "out of memory opening the log");
    pthread_mutex_init(&w->m, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_mutex_lock(&w->m);
    int rc = wal_follow_segment(w);
    pthread_mutex_unlock(&w->m);
    if (rc != THEUS_OK)
        wal_close(w);
    return rc;
}

void wal_close(wal *w)
{
    /* A private state's segment is left exact (its zero tail cut); a shared one's stays
     * with the state's other processes. Unsynced: a zero tail left by a crash is as good. */
    if (w->fd >= 0 && !w->sa && !w->broken && w->zero_end > w->seg_size &&
        ftruncate(w->fd, (off_t)w->seg_size) != 0)
        w->broken = 1;
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    if (w->dir) {
        pthread_mutex_destroy(&w->m);
        pthread_cond_destroy(&w->cv);
    }
    theus_xfree(w->dir);
    theus_xfree(w->buf);
    w->dir = NULL;
    w->buf = NULL;
}

int wal_rotate(wal *w, uint64_t start)
{
    if (w->sa)
        return wal_rotate_shared(w, start);
    return wal_rotate_private(w, start);
}

int wal_attach(wal *w, void (*release)(void *user), void *user)
{
    (void)user;
    /* A group's committers all come for the commit lock when its fdatasync returns. */
    w->st->lock_spin = w->sync == THEUS_SYNC_GROUP;
    publish_listener l = {.prepare = w->sa ? wal_shared_prepare : wal_prepare,
                          .cancel = w->sa ? wal_shared_cancel : wal_cancel,
                          .published = w->sa ? wal_shared_published : wal_published,
                          .acknowledge = w->sa ? wal_shared_acknowledge : wal_acknowledge,
                          .user = w};
    return publish_listen_owned(w->st, &l, release);
}

int wal_append_note(wal *w, unsigned char *rec, size_t len, int sync)
{
    int broken = w->sa ? (int)atomic_load_explicit(&w->sa->broken, memory_order_acquire)
                       : w->broken;
    if (broken || w->fd < 0)
        return err_set(w->st, THEUS_EIO, "log: an earlier write or sync failed; audit record "
                       "not written");
    /* A durable shared state: another process may have begun a new segment since this one
     * last wrote (a refused commit's audit record comes without a prepare of this process). */
    if (w->sa) {
        pthread_mutex_lock(&w->m);
        int rc = wal_follow_segment(w);
        pthread_mutex_unlock(&w->m);
        if (rc != THEUS_OK)
            return rc;
    }
    /* Records are written at their position (pwrite): the end of the open segment, which
     * for a durable shared state is the shared append position. */
    uint64_t at = w->sa ? w->sa->append_off : w->seg_size;
    wal_record_set_claim(rec, len, wal_claim_now(w, wal_get64(rec + 8)));
    uint64_t *zero_end = w->sa ? &w->sa->zero_end : &w->zero_end;
    wal_prealloc_room(w, w->fd, at, len, zero_end, w->sa ? &w->sa->log_extends : &w->nextends);
    /* A process killed while writing it leaves bytes past append_off: the agreement zeroes
     * them up to dirty_end. */
    if (w->sa && w->sa->dirty_end < at + len)
        w->sa->dirty_end = at + len;
    if (w->sa && wal_fault_hook && fio_pwrite_all(w->fd, rec, len / 2, at) == 0)
        wal_fault(WAL_POINT_NOTE_PARTIAL);
    if (fio_pwrite_all(w->fd, rec, len, at) != 0) {
        int e = errno, z;
        if (wal_cut_back(w->fd, at, at + len, zero_end, &z) != 0) {
            if (w->sa)
                wal_mark_broken(w);
            else
                w->broken = 1;
        }
        if (w->sa)
            w->sa->dirty_end = at;
        return err_set(w->st, THEUS_EIO, "log: cannot write an audit record: %s", strerror(e));
    }
    wal_count_record(w, 1);
    if (w->sa)
        w->sa->append_off = at + len;
    else
        w->seg_size = at + len;
    /* Numbered as a record (nobody waits for it): the claims of the records after it know
     * whether a sync covers it. */
    wal_counters c = wal_counters_of(w);
    uint64_t target = atomic_fetch_add(c.written, 1) + 1;
    uint64_t version = atomic_load(c.append_version);
    if (sync && w->sync != THEUS_SYNC_NONE)
        wal_count_sync(w);
    if (sync && w->sync != THEUS_SYNC_NONE && fdatasync(w->fd) == 0) {
        wal_max_store(c.synced, target);
        wal_max_store(c.synced_version, version);
    } else if (sync && w->sync != THEUS_SYNC_NONE) {
        /* as for a commit record whose sync failed */
        if (w->sa)
            wal_mark_broken(w);
        else
            w->broken = 1;
        return err_set(w->st, THEUS_EIO, "log: cannot sync an audit record: %s", strerror(errno));
    }
    return THEUS_OK;
}
