/* The log listener of a durable shared state: every process that commits appends the
 * record (wal_encode.c) at the shared append position in the publish step's prepare, and
 * acknowledge syncs it in a group across threads and processes; with this process's
 * following of the shared segment and the shared rotation. */
#include "durable/wal.h"
#include "durable/wal_internal.h"
#include "durable/wal_record.h"
#include "error.h"
#include "shared/redo.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- durable shared states ------------------------------------------------------------
 * The append position, the segment and the record numbers are in the shared area; records
 * are appended under the commit lock by whichever process commits (pwrite at append_off).
 * Group sync across threads and processes: a committer whose record is not synced yet
 * becomes the leader when the group is ready (complete, or its window over) and there is
 * none (CAS on leader_pid), fdatasyncs everything written so far and wakes the others
 * (futex sync_wake, called only when one sleeps); the others spin, then wait on
 * sync_wake. A waiter that finds the leader dead — or, after THEUS_SHARED_WAIT_MS, stuck —
 * takes over: two concurrent fdatasyncs are harmless. */

/* Shared: point this process's fd at the segment the shared area names (with w->m held). */
int wal_follow_segment(wal *w)
{
    uint64_t first = atomic_load_explicit(&w->sa->seg_first, memory_order_acquire);
    if (w->fd >= 0 && w->seg_first == first)
        return THEUS_OK;
    char path[4096];
    wal_segment_path(w->dir, first, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(w->st, THEUS_EIO, "cannot open log segment '%s': %s", path,
                       strerror(errno));
    if (w->fd >= 0)
        close(w->fd);
    w->fd = fd;
    w->seg_first = first;
    return THEUS_OK;
}

void wal_mark_broken(wal *w)
{
    atomic_store_explicit(&w->sa->broken, 1, memory_order_release);
    state_futex_wake(&w->sa->sync_wake, 1);
}

/* Under the commit lock: close the segment (synced: a group leader that still syncs the old
 * one may count on it) and start segment @start. */
int wal_rotate_shared(wal *w, uint64_t start)
{
    shared_durable_area *sa = w->sa;
    pthread_mutex_lock(&w->m);
    int rc = wal_follow_segment(w);
    if (rc != THEUS_OK || atomic_load_explicit(&sa->seg_first, memory_order_relaxed) >= start) {
        pthread_mutex_unlock(&w->m);
        return rc;
    }
    uint64_t written = atomic_load_explicit(&sa->written, memory_order_relaxed);
    /* The closed segment ends at its last record (its zero tail cut; a crash that leaves
     * the tail is as good: recovery takes zeros for the end). */
    if (sa->zero_end > sa->append_off) {
        sa->zero_end = sa->append_off;
        if (ftruncate(w->fd, (off_t)sa->append_off) != 0) {
            pthread_mutex_unlock(&w->m);
            wal_mark_broken(w);
            return err_set(w->st, THEUS_EIO, "log: cannot cut the closed segment's "
                           "preallocated tail: %s", strerror(errno));
        }
    }
    if (fdatasync(w->fd) != 0) {
        pthread_mutex_unlock(&w->m);
        wal_mark_broken(w);
        return err_set(w->st, THEUS_EIO, "log: fdatasync failed: %s", strerror(errno));
    }
    wal_count_sync(w);
    wal_max_store(&sa->synced, written);
    wal_max_store(&sa->synced_version, atomic_load(&sa->append_version));
    sa->rotating = start;
    int fd;
    rc = wal_segment_create(w->st, w->dir, start, THEUS_SYNC_COMMIT, &fd);
    if (rc == THEUS_OK) {
        wal_fault(WAL_POINT_ROTATING);
        close(w->fd);
        w->fd = fd;
        w->seg_first = start;
        /* seg_first first: the agreement after a crash from here on resets the positions
         * of a segment that `rotating` names (shared_durable_agree). */
        atomic_store_explicit(&sa->seg_first, start, memory_order_release);
        sa->append_off = WAL_SEG_HEAD;
        sa->zero_end = 0;
        sa->dirty_end = WAL_SEG_HEAD;
    }
    sa->rotating = 0;
    pthread_mutex_unlock(&w->m);
    state_futex_wake(&sa->sync_wake, 1);
    return rc;
}

int wal_shared_prepare(void *user, const publish_batch *b)
{
    wal *w = user;
    shared_durable_area *sa = w->sa;
    if (atomic_load_explicit(&sa->broken, memory_order_acquire) || w->broken)
        return err_set(w->st, THEUS_EIO, "log: an earlier write or sync of this durable shared "
                       "state failed; it refuses commits until all its processes reopen it");
    pthread_mutex_lock(&w->m);
    int rc = wal_follow_segment(w);
    pthread_mutex_unlock(&w->m);
    if (rc != THEUS_OK)
        return rc;
    if (w->segment_bytes && sa->append_off >= w->segment_bytes && !b->init &&
        (rc = wal_rotate_shared(w, b->version - 1)) != THEUS_OK)
        return rc;
    uint64_t len = wal_record_len(w, b);
    wal_prealloc_room(w, w->fd, sa->append_off, len, &sa->zero_end, &sa->log_extends);
    sa->inflight_off = sa->append_off;
    sa->inflight_version = b->version;
    sa->inflight_init = (uint32_t)b->init;
    sa->dirty_end = sa->inflight_off + len;
    sa->inflight = 1;
    uint64_t end = 0;
    rc = wal_write_record(w, b, sa->inflight_off, wal_claim_now(w, b->version), &end);
    if (rc != THEUS_OK) {
        int z;
        if (wal_cut_back(w->fd, sa->inflight_off, sa->dirty_end, &sa->zero_end, &z) != 0)
            wal_mark_broken(w);
        sa->dirty_end = sa->inflight_off;
        sa->inflight = 0;
        return rc;
    }
    wal_fault(WAL_POINT_WRITTEN);
    wal_count_record(w, 1);
    sa->append_off = end;
    wal_fault(WAL_POINT_APPENDED);
    wal_tls_rec.w = w;
    wal_tls_rec.seq = atomic_fetch_add_explicit(&sa->written, 1, memory_order_acq_rel) + 1;
    return THEUS_OK;
}

void wal_shared_cancel(void *user, const publish_batch *b)
{
    (void)b;
    wal *w = user;
    shared_durable_area *sa = w->sa;
    wal_tls_rec.w = NULL;
    /* Past the redo record's point of no return the commit will be finished by the next
     * taker of the commit lock: its record stays (shared_durable_agree keeps it then). */
    if (redo_pending(w->st))
        return;
    uint64_t to = sa->dirty_end > sa->append_off ? sa->dirty_end : sa->append_off;
    int z;
    if (wal_cut_back(w->fd, sa->inflight_off, to, &sa->zero_end, &z) != 0 ||
        (z && w->sync != THEUS_SYNC_NONE && fdatasync(w->fd) != 0))
        wal_mark_broken(w);
    sa->append_off = sa->inflight_off;
    sa->dirty_end = sa->inflight_off;
    sa->inflight = 0;
    wal_count_record(w, -1);
}

void wal_shared_published(void *user, const publish_batch *b)
{
    wal *w = user;
    shared_durable_area *sa = w->sa;
    sa->inflight = 0;
    wal_max_store(&sa->append_version, b->version);
    if (w->sync != THEUS_SYNC_COMMIT)
        return;
    uint64_t target = atomic_load_explicit(&sa->written, memory_order_relaxed);
    wal_count_sync(w);
    if (fdatasync(w->fd) == 0) {
        wal_max_store(&sa->synced, target);
        wal_max_store(&sa->synced_version, b->version);
    } else {
        wal_mark_broken(w);
    }
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The leader's fdatasync of every record written so far; @timed_out: its window ended
 * before the group was complete. */
static void lead_sync(wal *w, int timed_out)
{
    shared_durable_area *sa = w->sa;
    uint64_t before = atomic_load_explicit(&sa->synced, memory_order_acquire);
    /* Records up to target are in segments up to first; older ones were synced when they
     * were closed. */
    uint64_t target = atomic_load_explicit(&sa->written, memory_order_acquire);
    uint64_t version = atomic_load_explicit(&sa->append_version, memory_order_acquire);
    uint64_t first = atomic_load_explicit(&sa->seg_first, memory_order_acquire);
    int ok = 1;
    uint64_t t0 = mono_ns();
    pthread_mutex_lock(&w->m);
    if (w->fd >= 0 && w->seg_first == first) {
        ok = fdatasync(w->fd) == 0;
        wal_count_sync(w);
    } else if (w->fd < 0 || w->seg_first < first) {
        char path[4096];
        wal_segment_path(w->dir, first, path, sizeof path);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            ok = fdatasync(fd) == 0;
            wal_count_sync(w);
            close(fd);
        } else {
            /* Gone only if a rotation since (which synced it) and a retention removed it. */
            ok = atomic_load_explicit(&sa->seg_first, memory_order_acquire) > first;
        }
    } /* else: this process already moved past `first`, whose rotation synced it */
    pthread_mutex_unlock(&w->m);
    wal_note_sync_ns(&sa->sync_ns, mono_ns() - t0);
    atomic_fetch_add_explicit(&sa->syncs, 1, memory_order_relaxed);
    if (ok) {
        wal_counters c = wal_counters_of(w);
        wal_group_synced(&c, before, target, version, timed_out);
    } else {
        atomic_store_explicit(&sa->broken, 1, memory_order_release);
    }
}

/* Bump sync_wake, and wake the waiters blocked on it if there are any: sync_sleepers is
 * raised before a waiter blocks and read after the bump (both sequentially consistent), so
 * either the leader sees the sleeper or the sleeper's futex wait sees the bump. */
static void wake_waiters(shared_durable_area *sa)
{
    atomic_fetch_add(&sa->sync_wake, 1u);
    if (atomic_load(&sa->sync_sleepers))
        state_futex_wake(&sa->sync_wake, 1);
}

static void sleep_on(shared_durable_area *sa, uint32_t seen, uint64_t timeout_ns)
{
    atomic_fetch_add(&sa->sync_sleepers, 1u);
    state_futex_wait(&sa->sync_wake, seen, 1, timeout_ns);
    atomic_fetch_sub(&sa->sync_sleepers, 1u);
}

/* How often a waiter looks whether the leader still lives. */
#define LEADER_CHECK_NS (20ull * 1000000ull)

int wal_shared_acknowledge(void *user, const publish_batch *b)
{
    wal *w = user;
    shared_durable_area *sa = w->sa;
    uint64_t seq;
    if (!wal_ack_ticket(w, &seq))
        return THEUS_OK;
    int32_t self = (int32_t)getpid();
    uint64_t bound_ns = shared_wait_bound_ms() * 1000000ull, stuck_since = 0;
    /* This committer's window: it leads when the group is complete (usually as the last
     * writer of it, already on a CPU) or when the window is over. */
    uint64_t deadline = mono_ns() + (uint64_t)w->window_us * 1000u;
    while (w->sync == THEUS_SYNC_GROUP &&
           atomic_load_explicit(&sa->synced, memory_order_acquire) < seq &&
           !atomic_load_explicit(&sa->broken, memory_order_acquire)) {
        uint32_t seen = atomic_load_explicit(&sa->sync_wake, memory_order_acquire);
        if (atomic_load_explicit(&sa->synced, memory_order_acquire) >= seq)
            break;
        int32_t leader = atomic_load_explicit(&sa->leader_pid, memory_order_acquire);
        uint64_t now = mono_ns();
        if (leader == 0 && wal_group_ready(w, deadline, now)) {
            int32_t none = 0;
            if (atomic_compare_exchange_strong(&sa->leader_pid, &none, self)) {
                atomic_store_explicit(&sa->leader_start, shared_proc_start(getpid()),
                                      memory_order_release);
                lead_sync(w, now >= deadline);
                atomic_store_explicit(&sa->leader_start, 0, memory_order_relaxed);
                atomic_store_explicit(&sa->leader_pid, 0, memory_order_release);
                wake_waiters(sa);
                stuck_since = 0;
            }
            continue;
        }
        /* Wait for the leader's sync, or (none) for the group to fill: spinning first
         * (wal_spin_ns), then on the futex — until the window's end when there is no leader,
         * since then the window is this committer's to act on. */
        uint64_t spin_end = now + wal_spin_ns(&sa->sync_ns);
        int moved = 0;
        for (; now < spin_end; now = mono_ns()) {
            if (atomic_load_explicit(&sa->synced, memory_order_acquire) >= seq ||
                atomic_load_explicit(&sa->sync_wake, memory_order_acquire) != seen ||
                atomic_load_explicit(&sa->broken, memory_order_acquire) ||
                (leader == 0 && wal_group_ready(w, deadline, now))) {
                moved = 1;
                break;
            }
            sched_yield();
        }
        if (moved)
            continue;
        if (leader == 0) {
            if (now < deadline)
                sleep_on(sa, seen, deadline - now);
            continue;
        }
        sleep_on(sa, seen, LEADER_CHECK_NS);
        if (atomic_load_explicit(&sa->sync_wake, memory_order_acquire) != seen) {
            stuck_since = 0;
            continue;
        }
        /* Nothing moved for a while: is the leader still there? */
        now = mono_ns();
        if (!stuck_since)
            stuck_since = now;
        uint64_t start = atomic_load_explicit(&sa->leader_start, memory_order_acquire);
        int dead = leader != self && start != 0 && !shared_proc_alive(leader, start);
        if ((dead || now - stuck_since >= bound_ns) &&
            atomic_compare_exchange_strong(&sa->leader_pid, &leader, 0)) {
            /* Take over: the next round elects a new leader (maybe this thread). */
            state_futex_wake(&sa->sync_wake, 1);
            stuck_since = 0;
        }
    }
    if (atomic_load_explicit(&sa->synced, memory_order_acquire) >= seq)
        return THEUS_OK;
    return err_set(w->st, THEUS_EIO, "log: version %llu is published but its record could not "
                   "be synced (not durable)", (unsigned long long)b->version);
}
