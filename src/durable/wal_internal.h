/* What the pieces of the log writer share (wal.h is the library's interface to it): the
 * segment helpers (wal_segment.c), the encoder of a commit's record (wal_encode.c) and the
 * two listeners, a private state's (wal_private.c) and a durable shared state's
 * (wal_shared.c), that wal_attach chooses between and wal_rotate dispatches to. All of it
 * runs on the commit path: publish step (prepare / cancel / published / acknowledge) → log. */
#ifndef THEUS_SRC_DURABLE_WAL_INTERNAL_H
#define THEUS_SRC_DURABLE_WAL_INTERNAL_H
#include "publish_listener.h"
#include <stdatomic.h>
#include <stdint.h>

/* struct wal is in wal.h, which each piece includes first (wal.h including this header
 * would make the two include each other). */
typedef struct wal wal;

/* ---- wal_segment.c -------------------------------------------------------------------- */

/* Calls wal_fault_hook(@point) when it is set. */
void wal_fault(int point);
/* Make [at, at + len) lie in the zero-filled part (*zero_end) of the segment on @fd: one
 * more step of zeros from there, synced (unless THEUS_SYNC_NONE). A failed extension is no
 * error: the record grows the file as without preallocation. */
void wal_prealloc_room(wal *w, int fd, uint64_t at, uint64_t len, uint64_t *zero_end,
                       _Atomic uint64_t *extends);
/* Take [from, to) of the segment on @fd off the log again: zeroed where it lies in the
 * zero-filled part, else the file is cut at @from. 0, or -1 (errno). *wrote_zeros: whether
 * it zeroed. */
int wal_cut_back(int fd, uint64_t from, uint64_t to, uint64_t *zero_end, int *wrote_zeros);
/* Count one fdatasync / @n records (negative: taken back) in the statistics of @w's state. */
void wal_count_sync(wal *w);
void wal_count_record(wal *w, int64_t n);
/* Create segment @start (wal_segment_create) and make it @w's open segment. */
int wal_new_segment(wal *w, uint64_t start);

/* ---- wal_encode.c --------------------------------------------------------------------- */

/* Bytes of the record of @b. */
uint64_t wal_record_len(const wal *w, const publish_batch *b);
/* The record of @b, with @claim (wal_record.h), at byte @at of the open segment; *end:
 * where it ends (failed: where it would have ended — bytes up to there may have been
 * written). THEUS_OK, THEUS_ENOMEM, THEUS_EIO or a backend's code (copying a payload to
 * the host). */
int wal_write_record(wal *w, const publish_batch *b, uint64_t at, uint32_t claim,
                     uint64_t *end);
/* The claim of a record of @version written now (under the commit lock): 0 when every
 * record before it is synced, else what the synced version says (both listeners). */
uint32_t wal_claim_now(wal *w, uint64_t version);
/* Raise *@x to @v (both listeners' version and record counters). */
void wal_max_store(_Atomic uint64_t *x, uint64_t v);

/* ---- wal_private.c -------------------------------------------------------------------- */

/* The committing thread's record number, from prepare to acknowledge (both listeners). */
typedef struct wal_rec_ticket {
    const wal *w;
    uint64_t seq;
} wal_rec_ticket;
extern _Thread_local wal_rec_ticket wal_tls_rec;
/* The first step of acknowledge (both listeners): the thread's ticket for @w taken back.
 * 1 with *@seq the record to wait for; 0 when there is nothing to wait for (no record of
 * @w's on this thread, or THEUS_SYNC_NONE). */
int wal_ack_ticket(wal *w, uint64_t *seq);

/* The group-sync counters of @w's log: a private state's in the wal, a durable shared
 * state's in the shared area (both listeners, and audit records). */
typedef struct wal_counters {
    _Atomic uint64_t *written, *synced, *append_version, *synced_version, *last_group;
} wal_counters;
wal_counters wal_counters_of(wal *w);
/* After a group fdatasync that began with records @before < n <= @target written and
 * commit @version's publish step over succeeded: raise synced and synced_version, and the
 * group size wanted (wal_group_next) from the records written since @before — those of
 * the sync and those written during it (their writers are as active as the group's, else
 * a writer that always arrives during the sync would stay in a group of its own). */
void wal_group_synced(const wal_counters *c, uint64_t before, uint64_t target, uint64_t version,
                      int timed_out);

/* Whether a committer of @w whose window ends at @deadline may lead a group sync now (no
 * sync running being the caller's to check): no window, the group complete (as many
 * unsynced records as the size wanted, wal_group_next), or the window over. */
int wal_group_ready(wal *w, uint64_t deadline, uint64_t now);
/* The group size wanted next (both listeners' group sync). */
uint64_t wal_group_next(uint64_t want, uint64_t covered, int timed_out);
/* How long a group waiter spins before it blocks, from the moving average of the group
 * fdatasync's time in *@sync_ns (both listeners); wal_note_sync_ns adds one fdatasync that
 * took @took ns to it. */
uint64_t wal_spin_ns(_Atomic uint64_t *sync_ns);
void wal_note_sync_ns(_Atomic uint64_t *sync_ns, uint64_t took);
/* The listener of a private state (publish_listener's four steps; @user is the wal). */
int wal_prepare(void *user, const publish_batch *b);
void wal_cancel(void *user, const publish_batch *b);
void wal_published(void *user, const publish_batch *b);
int wal_acknowledge(void *user, const publish_batch *b);
/* wal_rotate of a private state: waits for a group leader's fdatasync on the closed segment. */
int wal_rotate_private(wal *w, uint64_t start);

/* ---- wal_shared.c --------------------------------------------------------------------- */

/* Point this process's fd at the segment the shared area names (with w->m held). */
int wal_follow_segment(wal *w);
/* The shared log is broken: every process's later commits are refused. */
void wal_mark_broken(wal *w);
/* wal_rotate of a durable shared state (under the commit lock). */
int wal_rotate_shared(wal *w, uint64_t start);
/* The listener of a durable shared state. */
int wal_shared_prepare(void *user, const publish_batch *b);
void wal_shared_cancel(void *user, const publish_batch *b);
void wal_shared_published(void *user, const publish_batch *b);
int wal_shared_acknowledge(void *user, const publish_batch *b);

#endif
