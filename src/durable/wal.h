/* The write-ahead log writer: appends one record per commit from the publish step
 * (publish.h listener), in version order, into segment files "wal-<start version>.log" of
 * a durable directory, and makes them durable under the sync policy. A segment's start
 * version is the state version when it was begun: its commit records create start+1,
 * start+2, ... (init records carry version 1 and appear only while the state is at 1). */
#ifndef THEUS_SRC_DURABLE_WAL_H
#define THEUS_SRC_DURABLE_WAL_H
#include "shared.h"
#include "state.h"
#include "theus/theus_durable.h"
#include <pthread.h>

typedef struct wal {
    theus_state *st;
    char *dir;                 /* owned */
    theus_sync sync;
    uint32_t window_us;
    uint64_t segment_bytes;
    /* Under the commit lock: the open segment. */
    int fd;
    uint64_t seg_first;        /* start version of the open segment */
    uint64_t seg_size;         /* bytes in it */
    uint64_t rec_start;        /* where the record of the commit in flight starts (cancel) */
    /* Preallocation: the step (0: off; at most segment_bytes) and, for a private state,
     * under the commit lock: [seg_size, zero_end) of the open segment is written zeros
     * (empty when zero_end <= seg_size). A durable shared state keeps its zero_end in the
     * shared area. */
    uint64_t prealloc;
    uint64_t zero_end;
    /* Statistics of a private state (theus_state_durable_stats). */
    _Atomic uint64_t nrecords, nsyncs, nextends;
    unsigned char *buf;        /* encoding scratch */
    size_t buf_cap;
    /* Group sync (a private state): changed under m (written: under the commit lock),
     * read without it by spinning waiters. Records are numbered in write order (seq); a
     * committer returns once synced >= its record's number. */
    pthread_mutex_t m;
    pthread_cond_t cv;         /* broadcast when a sync ends */
    _Atomic uint64_t written, synced; /* record numbers */
    _Atomic int syncing;       /* a leader is in fdatasync */
    _Atomic uint64_t sync_ends; /* syncs ended so far (a waiter's "something changed") */
    _Atomic uint64_t last_group; /* the group size wanted (wal_group_next) */
    _Atomic uint64_t sync_ns;  /* moving average of the group fdatasync's time (spinning; a
                                  durable shared state keeps its own in the shared area) */
    /* The claims records carry (wal_record.h): the newest commit whose publish step is
     * over (its record and audit records written), and the newest known synced with all
     * before it. */
    _Atomic uint64_t append_version, synced_version;
    _Atomic int broken;        /* a write or sync failed: every later commit is refused */
    /* A durable shared state: the append position, segment and group sync live in the
     * shared segment (shared_durable_area.h); this process's fd follows sa->seg_first (fd and
     * seg_first change under m). NULL for a private state. */
    shared_durable_area *sa;
} wal;

/* Fault injection for the tests (the tests kill the process there): called, when set, at
 * these points of an append to a durable shared state's log. NULL otherwise. */
enum {
    WAL_POINT_PARTIAL = 1,   /* part of the record written (its head) */
    WAL_POINT_WRITTEN,       /* the whole record written, append_off not moved yet */
    WAL_POINT_APPENDED,      /* append_off moved, the redo record not begun */
    WAL_POINT_ROTATING,      /* a new segment created, the shared area not pointing at it */
    WAL_POINT_NOTE_PARTIAL   /* half of an audit record written (wal_append_note) */
};
extern void (*wal_fault_hook)(int point);

/* Open (create when absent) the segment starting at @start for appending at its
 * end (@size bytes, as recovery found them). THEUS_OK / THEUS_EIO / THEUS_ENOMEM. */
int wal_open(wal *w, theus_state *st, const char *dir, const theus_durable_options *o,
             uint64_t start, int create, uint64_t size);
void wal_close(wal *w);
/* The log of the durable shared state @st (the shared area says where it is): this
 * process's fd on its current segment. */
int wal_open_shared(wal *w, theus_state *st, const char *dir, const theus_durable_options *o);
/* Create segment @start in @dir (head written and, unless @sync is THEUS_SYNC_NONE,
 * synced with the directory): its fd in *fd. */
int wal_segment_create(const theus_state *st, const char *dir, uint64_t start, theus_sync sync,
                       int *fd);
/* Attach the listener to w->st. */
int wal_attach(wal *w, void (*release)(void *user), void *user);
/* Close the open segment (synced unless THEUS_SYNC_NONE) and start a new one at
 * @start. Under the commit lock. */
int wal_rotate(wal *w, uint64_t start);
/* Append a whole record (@len bytes, wal_record_encode's output; its claim, wal_record.h,
 * is set here) of a kind that changes no state (WAL_KIND_AUDIT) at the end of the open
 * segment, under the commit lock: after the
 * record of the commit in flight, if any (a cancel of that commit then drops it too). With
 * @sync (and a sync policy other than NONE) it is fdatasync'ed before the call returns;
 * else it reaches the disk with the next sync. A failed write is cut off again; when even
 * that fails the log is broken (later commits refused). THEUS_OK or THEUS_EIO. */
int wal_append_note(wal *w, unsigned char *rec, size_t len, int sync);
/* A private state's log, under the commit lock: fdatasync every record written so far
 * unless a sync covers it already (after waiting out a group leader's). THEUS_OK, or
 * THEUS_EIO (the log is broken then). */
int wal_sync_written(wal *w);
/* The preallocation step of resolved options (dur_resolve_options): 0 when off. */
uint64_t wal_prealloc_step(const theus_durable_options *o);
/* The counters of theus_state_durable_stats. */
void wal_stats(const wal *w, theus_durable_stats *out);
/* Segment file name of @start in @dir into @buf. */
void wal_segment_path(const char *dir, uint64_t start, char *buf, size_t len);

#endif
