/* The log listener of a private state: the publish step's prepare writes the commit's
 * record (wal_encode.c) with its claim under the commit lock, cancel takes it off again,
 * and published / acknowledge make it durable under the sync policy — per commit, or as a
 * group: the committer that completes a group (or whose window ends) leads one fdatasync
 * for every record written so far while the others spin, then block, until it ends. With
 * the group counters both listeners share, and the private segment rotation (it must not
 * close a segment a group leader still syncs). */
#include "durable/wal.h"
#include "durable/wal_internal.h"
#include "error.h"

#include <errno.h>
#include <sched.h>
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
    int rc = wal_write_record(w, b, w->rec_start, wal_claim_now(w, b->version), &end);
    if (rc != THEUS_OK) {
        /* Leave the segment as it was; if even that fails the log is unusable. */
        int z;
        if (wal_cut_back(w->fd, w->rec_start, end, &w->zero_end, &z) != 0)
            w->broken = 1;
        return rc;
    }
    w->seg_size = end;
    wal_count_record(w, 1);
    /* Record numbers change under the commit lock; group waiters read them without it. */
    wal_tls_rec.w = w;
    wal_tls_rec.seq = atomic_fetch_add(&w->written, 1) + 1;
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
    wal *w = user;
    wal_max_store(&w->append_version, b->version);
    if (w->sync != THEUS_SYNC_COMMIT)
        return;
    uint64_t target = atomic_load(&w->written);
    int ok = fdatasync(w->fd) == 0;
    wal_count_sync(w);
    if (ok) {
        wal_max_store(&w->synced, target);
        wal_max_store(&w->synced_version, b->version);
    } else {
        w->broken = 1;
    }
}

/* The group size a leader gathers for next time: the largest group seen, until a window
 * ends without it (then what came). Not simply the last group: with N writers that each
 * wait for their own record, groups of N/2 while the other half commits during the sync
 * would be just as stable, at half the commits per fdatasync. */
uint64_t wal_group_next(uint64_t want, uint64_t covered, int timed_out)
{
    return timed_out || covered > want ? covered : want;
}

wal_counters wal_counters_of(wal *w)
{
    if (w->sa)
        return (wal_counters){&w->sa->written, &w->sa->synced, &w->sa->append_version,
                              &w->sa->synced_version, &w->sa->last_group};
    return (wal_counters){&w->written, &w->synced, &w->append_version, &w->synced_version,
                          &w->last_group};
}

void wal_group_synced(const wal_counters *c, uint64_t before, uint64_t target, uint64_t version,
                      int timed_out)
{
    uint64_t seen = atomic_load(c->written);
    uint64_t want = atomic_load_explicit(c->last_group, memory_order_relaxed);
    atomic_store_explicit(c->last_group,
                          wal_group_next(want, seen > before ? seen - before : 0, timed_out),
                          memory_order_relaxed);
    wal_max_store(c->synced, target);
    wal_max_store(c->synced_version, version);
}

/* How long a committer spins (yielding the CPU between looks) before it blocks, waiting
 * for a group's fdatasync or for the rest of a group to write their records: about two
 * fdatasyncs, at most WAL_SPIN_MAX_NS. Blocking at once costs a wake-up per waiter on every
 * group — tens of microseconds on a virtual machine whose idle CPUs halt, a quarter of an
 * fdatasync; spinning with sched_yield keeps the CPU awake for the one wake-up that matters
 * and still gives it to any thread that has work. */
#define WAL_SPIN_MAX_NS (1000ull * 1000ull)
#define WAL_SPIN_FIRST_NS (200ull * 1000ull)

uint64_t wal_spin_ns(_Atomic uint64_t *sync_ns)
{
    uint64_t s = 2 * atomic_load_explicit(sync_ns, memory_order_relaxed);
    if (s == 0)
        return WAL_SPIN_FIRST_NS; /* no fdatasync timed yet */
    return s < WAL_SPIN_MAX_NS ? s : WAL_SPIN_MAX_NS;
}

void wal_note_sync_ns(_Atomic uint64_t *sync_ns, uint64_t took)
{
    /* A moving average (1/4 of the newest): one slow fdatasync does not set the spin. */
    uint64_t old = atomic_load_explicit(sync_ns, memory_order_relaxed);
    atomic_store_explicit(sync_ns, old ? old - old / 4 + took / 4 : took, memory_order_relaxed);
}

static void abs_time(struct timespec *ts, uint64_t mono_deadline)
{
    /* pthread_cond_timedwait's clock is CLOCK_REALTIME: the same distance from now. */
    uint64_t now = state_now_ns(), left = mono_deadline > now ? mono_deadline - now : 0;
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += (time_t)(left / 1000000000ull);
    ts->tv_nsec += (long)(left % 1000000000ull);
    if (ts->tv_nsec >= 1000000000L) {
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

int wal_group_ready(wal *w, uint64_t deadline, uint64_t now)
{
    wal_counters c = wal_counters_of(w);
    uint64_t want = atomic_load_explicit(c.last_group, memory_order_relaxed);
    return !w->window_us || want <= 1 ||
           atomic_load(c.written) - atomic_load(c.synced) >= want || now >= deadline;
}

/* Lead, with w->m held and no sync running: one fdatasync for everything written so far
 * (w->m released around it), then wake the waiters. */
static void lead_sync(wal *w, int timed_out)
{
    atomic_store(&w->syncing, 1);
    uint64_t target = atomic_load(&w->written), before = atomic_load(&w->synced);
    uint64_t version = atomic_load(&w->append_version);
    int fd = w->fd;
    pthread_mutex_unlock(&w->m);
    uint64_t t0 = state_now_ns();
    int ok = fdatasync(fd) == 0;
    wal_note_sync_ns(&w->sync_ns, state_now_ns() - t0);
    wal_count_sync(w);
    pthread_mutex_lock(&w->m);
    if (ok) {
        wal_counters c = wal_counters_of(w);
        wal_group_synced(&c, before, target, version, timed_out);
    } else {
        w->broken = 1;
    }
    atomic_store(&w->syncing, 0);
    atomic_fetch_add(&w->sync_ends, 1);
    pthread_cond_broadcast(&w->cv);
}

int wal_acknowledge(void *user, const publish_batch *b)
{
    wal *w = user;
    uint64_t seq;
    if (!wal_ack_ticket(w, &seq))
        return THEUS_OK;
    /* THEUS_SYNC_COMMIT: published() synced it already unless that failed. GROUP: one
     * committer leads a group's fdatasync while the others wait; the leader is the one that
     * finds the group complete — the last writer of it usually, already on a CPU — or whose
     * window is over, whichever first. Waiting spins (wal_spin_ns) before it blocks, and a
     * waiter whose record is synced returns without taking w->m. */
    uint64_t now = state_now_ns(), deadline = now + (uint64_t)w->window_us * 1000u;
    uint64_t spin_end = now + wal_spin_ns(&w->sync_ns);
    while (w->sync == THEUS_SYNC_GROUP && atomic_load(&w->synced) < seq && !w->broken) {
        uint64_t ends = atomic_load(&w->sync_ends);
        int syncing = atomic_load(&w->syncing);
        now = state_now_ns();
        if (!syncing && wal_group_ready(w, deadline, now)) {
            /* Lead, unless another committer is electing itself right now: w->m is held
             * for moments only, but for a rotation's or a checkpoint's sync (then block). */
            if (now < spin_end ? pthread_mutex_trylock(&w->m) != 0
                               : pthread_mutex_lock(&w->m) != 0) {
                sched_yield();
                continue;
            }
            if (!w->syncing && atomic_load(&w->synced) < seq && !w->broken)
                lead_sync(w, now >= deadline);
            pthread_mutex_unlock(&w->m);
            continue;
        }
        if (now < spin_end) {
            /* Until the record is synced, a sync ends or (none running) the group is ready:
             * the next round sees which. */
            while (now < spin_end && atomic_load(&w->synced) < seq && !w->broken &&
                   atomic_load(&w->sync_ends) == ends &&
                   (syncing || !wal_group_ready(w, deadline, now))) {
                sched_yield();
                now = state_now_ns();
            }
            continue;
        }
        /* Spun long enough: block until a sync ends (or, none running, the window does). */
        pthread_mutex_lock(&w->m);
        if (atomic_load(&w->synced) < seq && !w->broken && atomic_load(&w->sync_ends) == ends) {
            if (w->syncing) {
                pthread_cond_wait(&w->cv, &w->m);
            } else if (!wal_group_ready(w, deadline, state_now_ns())) {
                struct timespec ts;
                abs_time(&ts, deadline);
                pthread_cond_timedwait(&w->cv, &w->m, &ts);
            }
        }
        pthread_mutex_unlock(&w->m);
    }
    if (atomic_load(&w->synced) >= seq)
        return THEUS_OK;
    return err_set(w->st, THEUS_EIO, "log: version %llu is published but its record could not "
                   "be synced (not durable)", (unsigned long long)b->version);
}

int wal_sync_written(wal *w)
{
    int rc = THEUS_OK;
    pthread_mutex_lock(&w->m);
    while (w->syncing)
        pthread_cond_wait(&w->cv, &w->m);
    if (atomic_load(&w->synced) < atomic_load(&w->written)) {
        uint64_t target = atomic_load(&w->written), version = atomic_load(&w->append_version);
        if (fdatasync(w->fd) == 0) {
            wal_count_sync(w);
            wal_max_store(&w->synced, target);
            wal_max_store(&w->synced_version, version);
        } else {
            w->broken = 1;
            rc = err_set(w->st, THEUS_EIO, "log: fdatasync failed: %s", strerror(errno));
        }
        atomic_fetch_add(&w->sync_ends, 1);
        pthread_cond_broadcast(&w->cv);
    }
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
    if (ok) {
        wal_max_store(&w->synced, atomic_load(&w->written));
        wal_max_store(&w->synced_version, atomic_load(&w->append_version));
    }
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
