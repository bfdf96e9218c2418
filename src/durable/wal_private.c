/* The log listener of a private state: the publish step's prepare writes the commit's
 * record (wal_encode.c) under the commit lock, cancel takes it off again, and published /
 * acknowledge make it durable under the sync policy — per commit, or as a group: one
 * committer leads an fdatasync for every record written so far while the others wait. With
 * the private segment rotation (it must not close a segment a group leader still syncs). */
#include "durable/wal.h"
#include "durable/wal_internal.h"
#include "error.h"

#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the listener -------------------------------------------------------------------- */

/* The committing thread's record number, from prepare to acknowledge (wal_internal.h). */
_Thread_local wal_rec_ticket wal_tls_rec;

int wal_prepare(void *user, const publish_batch *b)
{
    wal *w = user;
    if (w->broken)
        return err_set(w->st, THEUS_EIO, "log: an earlier write or sync failed; the durable "
                       "state refuses commits until it is reopened");
    if (w->segment_bytes && w->seg_size >= w->segment_bytes && !b->init) {
        int rc = wal_rotate_private(w, b->version - 1);
        if (rc != THEUS_OK)
            return rc;
    }
    w->rec_start = w->seg_size;
    wal_prealloc_room(w, w->fd, w->rec_start, wal_record_len(w, b), &w->zero_end, &w->nextends);
    uint64_t end = 0;
    int rc = wal_write_record(w, b, w->rec_start, &end);
    if (rc != THEUS_OK) {
        /* Leave the segment as it was; if even that fails the log is unusable. */
        int z;
        if (wal_cut_back(w->fd, w->rec_start, end, &w->zero_end, &z) != 0)
            w->broken = 1;
        return rc;
    }
    w->seg_size = end;
    wal_count_record(w, 1);
    pthread_mutex_lock(&w->m);
    wal_tls_rec.w = w;
    wal_tls_rec.seq = ++w->written;
    if (w->gathering)
        pthread_cond_signal(&w->gcv);
    pthread_mutex_unlock(&w->m);
    return THEUS_OK;
}

void wal_cancel(void *user, const publish_batch *b)
{
    (void)b;
    wal *w = user;
    /* A group leader may have synced the record meanwhile: its zeros are synced too, so
     * that a power loss cannot bring back a commit that failed. */
    int z;
    if (wal_cut_back(w->fd, w->rec_start, w->seg_size, &w->zero_end, &z) != 0 ||
        (z && w->sync != THEUS_SYNC_NONE && fdatasync(w->fd) != 0))
        w->broken = 1;
    w->seg_size = w->rec_start;
    wal_count_record(w, -1);
    wal_tls_rec.w = NULL;
}

void wal_published(void *user, const publish_batch *b)
{
    (void)b;
    wal *w = user;
    if (w->sync != THEUS_SYNC_COMMIT)
        return;
    pthread_mutex_lock(&w->m);
    uint64_t target = w->written;
    pthread_mutex_unlock(&w->m);
    int ok = fdatasync(w->fd) == 0;
    wal_count_sync(w);
    pthread_mutex_lock(&w->m);
    if (ok && target > w->synced)
        w->synced = target;
    if (!ok)
        w->broken = 1;
    pthread_mutex_unlock(&w->m);
}

/* The group size a leader gathers for next time: the largest group seen, until a window
 * ends without it (then what came). Not simply the last group: with N writers that each
 * wait for their own record, groups of N/2 while the other half commits during the sync
 * would be just as stable, at half the commits per fdatasync. */
uint64_t wal_group_next(uint64_t want, uint64_t covered, int timed_out)
{
    return timed_out || covered > want ? covered : want;
}

static void add_us(struct timespec *ts, uint32_t us)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_nsec += (long)us * 1000;
    while (ts->tv_nsec >= 1000000000L) {
        ts->tv_nsec -= 1000000000L;
        ts->tv_sec++;
    }
}

int wal_ack_ticket(wal *w, uint64_t *seq)
{
    if (wal_tls_rec.w != w)
        return 0;
    *seq = wal_tls_rec.seq;
    wal_tls_rec.w = NULL;
    return w->sync != THEUS_SYNC_NONE;
}

int wal_acknowledge(void *user, const publish_batch *b)
{
    wal *w = user;
    uint64_t seq;
    if (!wal_ack_ticket(w, &seq))
        return THEUS_OK;
    pthread_mutex_lock(&w->m);
    while (w->synced < seq && !w->broken) {
        if (w->sync == THEUS_SYNC_COMMIT || w->syncing) {
            /* COMMIT: published() synced it already unless it failed. GROUP: a leader is
             * syncing; its sync may or may not cover this record. */
            if (w->sync == THEUS_SYNC_COMMIT)
                break;
            pthread_cond_wait(&w->cv, &w->m);
            continue;
        }
        /* Lead: gather records for a moment when the last group was a crowd, then one
         * fdatasync for everything written so far. */
        w->syncing = 1;
        int timed_out = 0;
        if (w->window_us && w->last_group > 1) {
            /* Until as many records as the group size wanted are unsynced (wal_group_next; the
             * appenders signal gcv while it gathers), at most the window. */
            struct timespec ts;
            add_us(&ts, w->window_us);
            w->gathering = 1;
            while (w->written - w->synced < w->last_group && !w->broken)
                if (pthread_cond_timedwait(&w->gcv, &w->m, &ts) != 0) {
                    timed_out = 1;
                    break;
                }
            w->gathering = 0;
        }
        uint64_t target = w->written;
        int fd = w->fd;
        pthread_mutex_unlock(&w->m);
        int ok = fdatasync(fd) == 0;
        wal_count_sync(w);
        pthread_mutex_lock(&w->m);
        w->syncing = 0;
        if (ok) {
            w->last_group = wal_group_next(w->last_group,
                                           target > w->synced ? target - w->synced : 0, timed_out);
            if (target > w->synced)
                w->synced = target;
        } else {
            w->broken = 1;
        }
        pthread_cond_broadcast(&w->cv);
    }
    int rc = w->synced >= seq ? THEUS_OK
                              : err_set(w->st, THEUS_EIO, "log: version %llu is published but "
                                        "its record could not be synced (not durable)",
                                        (unsigned long long)b->version);
    pthread_mutex_unlock(&w->m);
    return rc;
}

/* wal_rotate of a private state. */
int wal_rotate_private(wal *w, uint64_t start)
{
    /* No leader may be inside fdatasync on the segment being closed. */
    pthread_mutex_lock(&w->m);
    while (w->syncing)
        pthread_cond_wait(&w->cv, &w->m);
    /* The closed segment ends at its last record: its zero tail is cut (under the same
     * fdatasync). A crash that leaves it is as good: recovery takes zeros for the end. */
    int ok = w->zero_end <= w->seg_size || ftruncate(w->fd, (off_t)w->seg_size) == 0;
    if (ok)
        w->zero_end = 0;
    ok = ok && (w->sync == THEUS_SYNC_NONE || fdatasync(w->fd) == 0);
    if (ok && w->sync != THEUS_SYNC_NONE)
        wal_count_sync(w);
    if (ok && w->written > w->synced)
        w->synced = w->written;
    pthread_cond_broadcast(&w->cv);
    int old = w->fd;
    uint64_t old_first = w->seg_first, old_size = w->seg_size;
    int rc = ok ? wal_new_segment(w, start)
                : err_set(w->st, THEUS_EIO, "log: cannot close the segment (ftruncate or "
                          "fdatasync failed): %s", strerror(errno));
    if (rc == THEUS_OK) {
        close(old);
    } else {
        w->fd = old;
        w->seg_first = old_first;
        w->seg_size = old_size;
    }
    pthread_mutex_unlock(&w->m);
    return rc;
}
