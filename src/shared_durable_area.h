/* The durable part of a shared segment (shared_area.durable, shared.h): what every process
 * of a durable shared state needs to append to the one write-ahead log at the right place
 * and to share its fdatasyncs. Written by src/durable/wal_shared.c (the appender, under the
 * commit lock; the group sync, lock-free) and read by src/shared/shared_durable.c (the
 * agreement of log and state after a crash, under the commit lock). Layout only: no code
 * depends on anything here but <stdint.h> and <stdatomic.h>.
 *
 * THE INVARIANT (docs/durability.md, "Durable shared states"): whenever the commit lock is
 * free, the log's valid records end at `append_off` of segment `seg_first` and its last
 * record is the state's version. A commit keeps it so: under the commit lock it writes its
 * record at append_off with `inflight` = 1 (the record's offset and version), then moves
 * append_off past it, then goes through the redo record (READY is the point of no return),
 * then clears `inflight`. A process killed anywhere in between leaves `inflight` set; the
 * next taker of the commit lock first finishes or drops the redo record (shared/redo.c) and
 * then makes the log agree: if the state reached the record's version the record stays (it is
 * complete: it was written before READY); otherwise it is cut off at its offset (whole, half
 * written or not written at all). A rotation in flight (`rotating`) is finished the same way:
 * a segment whose creation did not complete is removed. Bytes past append_off are zeros
 * (the preallocated part of the segment) or the end of the file; the agreement restores that
 * too (dirty_end below). */
#ifndef THEUS_SRC_SHARED_DURABLE_AREA_H
#define THEUS_SRC_SHARED_DURABLE_AREA_H
#include <stdatomic.h>
#include <stdint.h>

/* The segment file of start version V in directory D: printf(DUR_SEGMENT_FMT, D, V). */
#define DUR_SEGMENT_FMT "%s/wal-%016llx.log"
#define SHARED_DURABLE_DIR_MAX 1024

typedef struct shared_durable_area {
    /* Set at creation (before the name exists), never changed. */
    uint32_t enabled;              /* 1: a durable shared state */
    uint32_t pad0;
    uint64_t dir_dev, dir_ino;     /* identity of the directory */
    uint64_t segment_bytes;        /* the creator's theus_durable_options.segment_bytes */
    char dir[SHARED_DURABLE_DIR_MAX]; /* its absolute path */
    _Atomic uint32_t ready;        /* the creator holds the directory lock as a reader now */
    _Atomic uint32_t broken;       /* a write or sync of the log failed: commits are refused */
    /* Under the commit lock. seg_first is also read without it (group sync: atomic). */
    _Atomic uint64_t seg_first;    /* start version of the segment records go to */
    uint64_t append_off;           /* where the next record goes in it */
    uint64_t rotating;             /* start version of a segment being created (0: none) */
    uint32_t inflight;             /* 1: a record is being appended / published */
    uint32_t inflight_init;        /* that record is an init record (version 1) */
    uint64_t inflight_off, inflight_version;
    uint64_t truncated, kept;      /* in-flight records cut off / kept by recovery */
    /* Group sync, lock-free. Records are numbered in append order. */
    _Atomic uint64_t written;      /* records appended */
    _Atomic uint64_t synced;       /* every record up to this number is on disk */
    _Atomic uint32_t sync_wake;    /* futex: bumped when synced moves or the leader leaves */
    _Atomic uint32_t sync_sleepers; /* waiters blocked on sync_wake (a leader skips the futex
                                       call when none; a killed one only costs that) */
    uint32_t unused;               /* (a leader's gathering before 2026-12-03) */
    _Atomic int32_t leader_pid;    /* the process whose thread leads a group sync (0: none) */
    _Atomic uint64_t leader_start; /* its start time (shared_proc_start), for liveness */
    _Atomic uint64_t last_group;   /* the group size wanted (wal_group_next) */
    _Atomic uint64_t syncs;        /* fdatasyncs of group leaders (statistics) */
    /* The records' claims (wal_record.h): the newest commit whose publish step is over, and
     * the newest known synced with everything before it. */
    _Atomic uint64_t append_version, synced_version;
    /* Moving average of the group fdatasync's time, of every process's leaders: how long a
     * waiter spins before it blocks (wal_spin_ns). */
    _Atomic uint64_t sync_ns;
    /* Preallocation (wal_segment.c). prealloc: the creator's step, set at creation (0: off). Under
     * the commit lock: [append_off, zero_end) of segment seg_first is written zeros (empty
     * when zero_end <= append_off); dirty_end: where the bytes written (or about to be) past
     * the valid end stop — the appender raises it before it writes a record or an audit
     * record, and the agreement after a crash zeroes (or cuts) [append_off, dirty_end) so
     * that no stale byte of an unfinished record stays past the end. */
    uint64_t prealloc;
    uint64_t zero_end;
    uint64_t dirty_end;
    _Atomic uint64_t log_records;  /* records appended by all processes (statistics) */
    _Atomic uint64_t log_syncs;    /* fdatasyncs that made records durable (statistics) */
    _Atomic uint64_t log_extends;  /* preallocation steps (statistics) */
} shared_durable_area;

#endif
