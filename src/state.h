/* The state: a header block that holds no pointers (version, field table, commit log,
 * locks, counters — laid out by offsets so that it can move into POSIX shared memory), and
 * the process-local shadow: field base pointers and backends. */
#ifndef THEUS_SRC_STATE_H
#define THEUS_SRC_STATE_H
#include "backend.h"
#include "block_map.h"
#include "commit_log.h"
#include "publish_listener.h"
#include "schema.h"
#include "stream_fence.h"
#include <pthread.h>
#include <stdatomic.h>

#define THEUS_STATE_MAGIC 0x5355454854ULL /* "THEUS" */
#define THEUS_LAYOUT_VERSION 4u

/* Field table entry: everything about a field that every process must agree on. */
typedef struct field_desc {
    char name[THEUS_NAME_MAX + 1];
    uint32_t dtype, ndim, requested, placement, zone;
    uint32_t map_shift;           /* block map: log2 of its block size (block_map.h) */
    uint64_t map_first, map_blocks; /* block map: first entry in the header's map, count */
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
    _Atomic uint64_t version;     /* published after replay */
    uint64_t off_fields;          /* byte offsets from the header */
    uint64_t off_log;
    uint64_t off_map;             /* the block maps of all fields (uint64_t versions) */
    uint64_t off_shared;          /* shared_area of a shared state (shared.h); 0: private */
    uint64_t total_bytes;
    commit_log log;               /* appended under commit_lock; readers validate with replay_seq */
    pthread_mutex_t commit_lock;  /* serialises commits (CAS guard + replay + publish); robust
                                     and process-shared in a shared state */
    uint64_t priority_ticket;     /* holder of the priority lease, 0: none */
    uint64_t priority_deadline_ns;/* CLOCK_MONOTONIC end of the lease */
    uint64_t next_ticket;
    _Atomic uint32_t priority_wake; /* futex word: bumped when the priority lease ends */
    _Atomic uint32_t hold_wake;   /* futex word: bumped when the last hold is released */
    _Atomic uint64_t replay_seq;  /* odd while a replay is applied (seqlock): readers copy
                                     between two equal even values, or retry */
    pthread_mutex_t hold_lock;    /* holds and the replay gate; in a shared state also the
                                     lease table (robust, process-shared) */
    uint32_t holds;               /* live holds of a private state (a shared state counts them
                                     per lease) */
    uint32_t pad;
    state_stats stats;
} state_header;

/* What a state whose header block other processes map too (a shared state) does
 * differently; it fills this table (src/shared/shared_ops.c). NULL for a private state,
 * and the core does the private thing. Entries run as documented, never NULL in a table. */
struct theus_tx;
typedef struct state_ops {
    /* The last reference went (theus_state_destroy): detach, free @st. */
    void (*detach)(theus_state *st);
    /* With the hold lock held: this handle's hold counter; all live holds; free the holds
     * of dead processes (returns the live handles). */
    uint32_t *(*hold_slot)(theus_state *st);
    uint32_t (*holds)(const theus_state *st);
    uint32_t (*reap)(theus_state *st);
    /* Take the commit lock (pthread_mutex_lock for a private state): THEUS_OK, taken; or
     * the error, with a message, when it cannot be taken (a bounded wait gave up). */
    int (*lock)(theus_state *st);
    /* Right after taking the commit lock: finish or drop what a dead holder left. On
     * failure the lock is released and the error returned. */
    int (*recover)(theus_state *st);
    /* Under the commit lock: replay @tx's batch and publish @version (@publish 0: the
     * bytes only, theus_state_init_field), instead of the private path. */
    int (*apply)(theus_state *st, const struct theus_tx *tx, uint64_t version, int publish);
    /* Futex words and mutexes are process-shared. */
    int pshared;
} state_ops;

struct theus_state {
    state_header *hdr;
    field_desc *fields;            /* = hdr + off_fields */
    log_entry *log_ring;           /* = hdr + off_log */
    _Atomic uint64_t *map;         /* = hdr + off_map */
    void **data;                   /* shadow: base pointer of each field in this process */
    const theus_backend **backend; /* shadow: backend of each field */
    theus_region *frames;          /* shadow: whole-field region of each field */
    theus_schema *schema;
    theus_state_options opts;
    publish_list listeners;        /* the publish step's listeners (publish.h) */
    _Atomic int refs;              /* 1 for the owner + 1 per live DLPack export */
    const state_ops *ops;          /* NULL: a private state */
    struct shared_map *shm;        /* the mapping behind ops (shared.h); NULL: private */
    uint32_t lease;                /* this handle's slot in a shared state's lease table */
    stream_fence_slot fence;       /* stream-ordered replays (stream_fence.h) */
    /* Commits try the commit lock a few dozen times (state_lock_spin) before they block:
     * set by a durable state's log under THEUS_SYNC_GROUP, whose committers come in a herd
     * each time a group's fdatasync returns. Off elsewhere: blocking lets a thread that
     * commits in a loop take the lock again at once, which spinning waiters would make
     * alternate (commit.contention: 0.3-0.9x with the spin). */
    int lock_spin;
};

/* Take / drop a reference; the last drop frees the state (DLPack exports keep it). */
void state_ref(theus_state *st);
void state_unref(theus_state *st);

/* Field @i's view of the block map. */
static inline block_map state_block_map(const theus_state *st, uint32_t i)
{
    const field_desc *f = &st->fields[i];
    block_map m = {.v = st->map + f->map_first, .nblocks = f->map_blocks, .shift = f->map_shift,
                   .esize = (uint32_t)theus_dtype_size((theus_dtype)f->dtype),
                   .ndim = (int)f->ndim, .shape = f->shape};
    return m;
}

/* Index of @name, or -1. */
int state_find_field(const theus_state *st, const char *name);
uint64_t state_now_ns(void);

/* ---- creation pieces, shared by private and shared states --------------------------- */
/* Check @in (NULL: defaults) and fill in the defaults; THEUS_EINVAL with the reason set. */
int state_options_resolve(const theus_state_options *in, theus_state_options *out);
/* Offsets of the field table and the log ring, and the header block's size (the block maps
 * last), for @schema's fields and a log of @log_capacity entries. */
void state_layout(const theus_schema *schema, uint32_t log_capacity, size_t *off_fields,
                  size_t *off_log, size_t *bytes);
/* A new state shadow for @schema (stolen on success), without a header; NULL when out of
 * memory. */
theus_state *state_shadow_new(theus_schema *schema, const theus_state_options *o);
/* Free a shadow made by state_shadow_new (not its header or field memory). */
void state_shadow_free(theus_state *st);
/* Point the shadow at the header block @h (fields, log ring). */
void state_bind(theus_state *st, state_header *h);
/* Fill a zeroed header block of @total bytes from the shadow's schema: layout, field table
 * (placements not chosen yet), log, locks (process-shared and robust when @pshared). */
int state_header_init(theus_state *st, size_t total, int pshared);
void state_header_fini(state_header *h);
/* Whether the block maps of the @h->nfields fields @f have the geometry their sizes give
 * and lie inside a header block of @size bytes, apart from the rest of the header (for a
 * segment another process laid out). */
int state_maps_fit(const state_header *h, const field_desc *f, size_t size);
/* Where field @f would live: a GPU placement goes to the CUDA backend when @gpu is given,
 * otherwise to host memory (THEUS_ENODEV without fallback). Sets f->placement. */
int state_place_field(const theus_state *st, field_desc *f, const theus_backend *gpu,
                      const theus_backend **out);

/* The hold lock (robust in a shared state: taken over from a dead owner as it is). */
void state_hold_lock(state_header *h);
void state_hold_unlock(state_header *h);
/* Bump a futex word and wake everyone waiting on it (hold_wake, priority_wake; futex.c). */
void state_futex_wake(_Atomic uint32_t *word, int pshared);
/* Wait while *word == @seen, at most @timeout_ns (0: no limit); spurious returns happen. */
void state_futex_wait(_Atomic uint32_t *word, uint32_t seen, int pshared, uint64_t timeout_ns);
/* Whether the state's futex words and mutexes are process-shared. */
static inline int state_pshared(const theus_state *st)
{
    return st->ops && st->ops->pshared;
}

/* ---- the commit lock (state_lock.c) ---------------------------------------------------
 * state_lock takes the commit lock; then, when the state has ops, their recover (a shared
 * state finishes a commit a dead process left half done), and fails only when that fails. */
int state_lock(theus_state *st);
void state_unlock(theus_state *st);
/* pthread_mutex_trylock of @m again, yielding the CPU between tries, a few dozen times
 * before it gives up: its result (0, EBUSY, EOWNERDEAD, ...). The commit lock's first step,
 * private and shared, when theus_state.lock_spin is set. */
int state_lock_spin(pthread_mutex_t *m);
/* ---- holds, the replay gate and the read sequence (state_hold.c) -------------------- */
/* Around a replay, with the commit lock held: wait until no one holds commits, make the
 * replay sequence odd (readers retry, new holds wait); leave makes it even again. */
void state_replay_gate_enter(theus_state *st);
void state_replay_gate_leave(theus_state *st);
/* Readers: a copy made after state_read_begin returned @seq is a single version when
 * state_read_valid(st, seq) says so afterwards. state_read_begin returns 0 while a replay
 * is running (the caller waits for it with state_lock / state_unlock and tries again). */
int state_read_begin(const theus_state *st, uint64_t *seq);
int state_read_valid(const theus_state *st, uint64_t seq);
/* ---- the priority lease (priority.c) ------------------------------------------------ */
/* The commit lock as a commit takes it: state_lock, then wait out another holder's live
 * priority lease (an expired one is dropped); @ticket is the caller's own lease (0: none). */
int state_commit_lock(theus_state *st, uint64_t ticket);
void state_commit_unlock(theus_state *st);
/* Take / give back the priority lease (see theus_tx_run). */
uint64_t state_priority_acquire(theus_state *st);
void state_priority_release(theus_state *st, uint64_t ticket);

#endif
