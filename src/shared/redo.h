/* Crash-safe commits of shared states: the redo record in a shared segment's redo area
 * (its layout, the commit and the recovery), and fault points for the tests. */
#ifndef THEUS_SRC_REDO_H
#define THEUS_SRC_REDO_H
#include "../shared.h"
#include "tx.h"

/* The redo record at the start of the redo area, followed by ndesc redo_desc, nlog
 * log_entry and the final bytes of each region. */
enum { REDO_IDLE = 0, REDO_WRITING = 1, REDO_READY = 2 };

typedef struct redo_record {
    _Atomic uint32_t status;
    uint32_t publish;              /* 1: a commit (publish the version); 0: init_field */
    uint64_t version;              /* the version the commit creates */
    uint64_t log_head, log_floor;  /* the log before, and its floor after, the publish */
    uint64_t commits;              /* stats.commits after the publish */
    uint32_t ndesc, nlog;
    uint64_t bytes;                /* of the whole record */
    uint64_t checksum;             /* of the above (but status) and the descriptors and log */
} redo_record;

typedef struct redo_desc {
    uint32_t field;
    uint32_t op;                   /* the delta's op; the bytes are always assigned */
    theus_region r;
    uint64_t offset, nbytes;       /* of the final bytes, from the record's start */
} redo_desc;

/* Fault injection for the tests: when set, called at these points of a commit in a shared
 * state (the tests kill the process there). NULL otherwise. */
enum {
    REDO_POINT_WRITING = 1,   /* part of the record written, not READY */
    REDO_POINT_READY,         /* READY, nothing applied */
    REDO_POINT_REPLAYING,     /* replay sequence odd, nothing applied yet */
    REDO_POINT_APPLIED,       /* bytes applied, nothing published */
    REDO_POINT_PUBLISHED      /* published, record not yet IDLE */
};
extern void (*redo_fault_hook)(int point);

/* Under the commit lock: write @tx's batch to the redo area as the final bytes of every
 * delta region, mark it ready, apply it, publish version @version (@publish 0: write the
 * bytes only, for theus_state_init_field) and mark it done. A batch that does not fit is
 * refused (THEUS_ENOMEM) with the state unchanged. */
int redo_commit(theus_state *st, const theus_tx *tx, uint64_t version, int publish);
/* Under the commit lock: finish the commit of a process that died with its record ready
 * (apply and publish again: both are idempotent), or forget an unfinished record. */
int redo_recover(theus_state *st);
/* Under the commit lock: whether the redo record is READY (a commit passed its point of no
 * return and was not finished: the next taker of the lock finishes it). */
int redo_pending(const theus_state *st);

#endif
