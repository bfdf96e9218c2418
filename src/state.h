/* The state: a header block that holds no pointers (version, field table, commit log,
 * locks, counters — laid out by offsets so that it can move into POSIX shared memory), and
 * the process-local shadow: field base pointers and backends. */
#ifndef THEUS_SRC_STATE_H
#define THEUS_SRC_STATE_H
#include "backend.h"
#include "commit_log.h"
#include "schema.h"
#include <pthread.h>
#include <stdatomic.h>

#define THEUS_STATE_MAGIC 0x5355454854ULL /* "THEUS" */
#define THEUS_LAYOUT_VERSION 1u

/* Field table entry: everything about a field that every process must agree on. */
typedef struct field_desc {
    char name[THEUS_NAME_MAX + 1];
    uint32_t dtype, ndim, requested, placement, zone, pad;
    int64_t shape[THEUS_MAX_DIMS];
    uint64_t nelems, nbytes;
    theus_constraints cons;
    _Atomic uint64_t version;     /* last commit that wrote the field */
    uint64_t data_offset;         /* where the field's bytes live in a shared segment */
} field_desc;

typedef struct state_stats {
    _Atomic uint64_t commits, conflicts, aborts, schema_refusals, retries, priority_runs;
} state_stats;

typedef struct state_header {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t nfields;
    _Atomic uint64_t version;     /* published after replay, under the replay lock */
    uint64_t off_fields;          /* byte offsets from the header */
    uint64_t off_log;
    uint64_t total_bytes;
    commit_log log;               /* guarded by commit_lock (append) and replay_lock */
    pthread_mutex_t commit_lock;  /* serialises commits (CAS guard + replay + publish) */
    pthread_cond_t priority_cond; /* signalled when the priority lease ends */
    uint64_t priority_ticket;     /* holder of the priority lease, 0: none */
    uint64_t priority_deadline_ns;/* CLOCK_MONOTONIC end of the lease */
    uint64_t next_ticket;
    pthread_rwlock_t replay_lock; /* readers copy under rd, replay+publish under wr */
    pthread_mutex_t hold_lock;    /* theus_state_hold_commits: holders keep replays out */
    pthread_cond_t hold_cond;
    uint32_t holds;               /* live holds */
    uint32_t replaying;           /* a commit is between its hold gate and publish */
    state_stats stats;
} state_header;

/* Hooks on the commit path, for the write-ahead log and the audit trail. @before_replay
 * may refuse the commit (state unchanged); @after_publish cannot. Both run under the
 * commit lock. */
typedef struct commit_batch commit_batch;
typedef struct commit_hooks {
    int (*before_replay)(void *user, const commit_batch *b);
    void (*after_publish)(void *user, const commit_batch *b);
    void *user;
} commit_hooks;

struct theus_state {
    state_header *hdr;
    field_desc *fields;            /* = hdr + off_fields */
    log_entry *log_ring;           /* = hdr + off_log */
    void **data;                   /* shadow: base pointer of each field in this process */
    const theus_backend **backend; /* shadow: backend of each field */
    theus_region *frames;          /* shadow: whole-field region of each field */
    theus_schema *schema;
    theus_state_options opts;
    commit_hooks hooks;
    _Atomic int refs;              /* 1 for the owner + 1 per live DLPack export */
};

/* Take / drop a reference; the last drop frees the state (DLPack exports keep it). */
void state_ref(theus_state *st);
void state_unref(theus_state *st);

/* Index of @name, or -1. */
int state_find_field(const theus_state *st, const char *name);
uint64_t state_now_ns(void);

/* Lock the commit lock and wait out another holder's live priority lease; @ticket is the
 * caller's own lease (0: none). */
void state_commit_lock(theus_state *st, uint64_t ticket);
void state_commit_unlock(theus_state *st);
/* Around a replay: wait until no one holds commits, and keep new holds out until the end. */
void state_replay_gate_enter(theus_state *st);
void state_replay_gate_leave(theus_state *st);
/* Take / give back the priority lease (see theus_tx_run). */
uint64_t state_priority_acquire(theus_state *st);
void state_priority_release(theus_state *st, uint64_t ticket);

#endif
