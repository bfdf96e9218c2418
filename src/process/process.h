/* The process layer's internal types: the engine, its processes, runs, and the pieces each
 * file of src/process/ owns (audit.c, signal.c, outbox.c, pool.c). */
#ifndef THEUS_SRC_PROCESS_H
#define THEUS_SRC_PROCESS_H
#include "theus/theus_process.h"
#include "publish.h"
#include "tx.h"
#include <pthread.h>
#include <stdatomic.h>

/* ---- processes ------------------------------------------------------------------------ */
typedef struct proc_entry {
    char name[THEUS_NAME_MAX + 1];
    theus_process_fn body;
    void *user;
    theus_process_kind kind;
    int isolation;
    theus_contract contract;      /* named after the process; globs below */
    char **globs;                 /* inputs, then outputs */
    size_t nglobs;
    int *codes;
    size_t ncodes;
    _Atomic uint64_t runs, commits, failures, attempts, retries, conflicts, undeclared, audit;
    _Atomic uint64_t *audit_by_field; /* nfields x AUDIT_COUNTERS counters */
} proc_entry;

/* Free a process entry and what it owns (registration.c); NULL is a no-op. */
void destroy_proc(proc_entry *p);

/* ---- signals and outbox entries queued by one run ------------------------------------- */
typedef struct outbox_item {
    theus_outbox_fn fn;
    theus_outbox_drop_fn drop;
    void *arg;
    uint64_t version;
    uint64_t seq;                 /* place in the engine queue */
    struct outbox_item *next;
} outbox_item;

struct theus_run {
    theus_engine *e;
    proc_entry *p;
    theus_tx *tx;                 /* current attempt */
    char (*signals)[THEUS_NAME_MAX + 1];
    size_t nsignals, cap_signals;
    outbox_item *ob_head, *ob_tail;
    int published;                /* the commit of this run went through the publish hook */
    uint64_t version;
    uint64_t ob_seq;              /* seq of its last outbox entry in the queue; 0: none */
    uint64_t attempts;            /* bodies run for this run */
    const struct run_extra *extra; /* staged after a body that returned THEUS_OK, or NULL */
};

/* ---- signals (signal.c) ---------------------------------------------------------------- */
typedef struct sig_entry {
    char name[THEUS_NAME_MAX + 1];
    uint64_t count;
} sig_entry;

typedef struct sig_table {
    pthread_mutex_t mu;
    pthread_cond_t cv;            /* every delivery and every commit broadcast */
    sig_entry *v;                 /* a private state's signals (a shared state's are in its
                                     segment: shared_signal.h) */
    size_t n, cap;
    uint32_t waiters;             /* threads of this engine in a wait */
    _Atomic int closing;
    pthread_cond_t left;          /* destroy waits here for waiters to leave */
    theus_state *st;
    int shared;                   /* st is a shared state: signals and waits go through its
                                     segment, across processes */
} sig_table;

int sig_init(sig_table *t, theus_state *st);
void sig_fini(sig_table *t);
/* Deliver a run's queued signals and wake waiters. Private state: in the publish step
 * (commit lock held), cannot fail. Shared state: for a run that wrote nothing (takes the
 * commit lock; THEUS_ENOMEM when the table is full, or the lock's error); a shared state's
 * commit delivers its signals through sig_stage and sig_published. */
int sig_deliver(theus_engine *e, const theus_run *run);
/* Shared state, under the commit lock before the replay: stage the run's signals for the
 * commit creating @version (THEUS_ENOMEM: the table is full); unstage when it is cancelled.
 * No-ops for a private state. */
int sig_stage(theus_engine *e, const theus_run *run, uint64_t version);
void sig_unstage(theus_engine *e);
/* Shared state, in the engine's published listener (after the write-ahead log's): deliver
 * what was staged for @version. No-op for a private state. */
void sig_published(theus_engine *e, uint64_t version);
/* Wake version waiters after a commit (publish step). */
void sig_commit_published(theus_engine *e);
/* Wake all waiters for good (destroy) and wait until they have left. */
void sig_close(sig_table *t);
int sig_check_name(theus_engine *e, const char *name);
/* theus_run_signal's check that @name fits a shared state's signal table with the names
 * @run queued already (THEUS_ENOMEM with a message); THEUS_OK for a private state. */
int sig_check_room(const theus_run *run, const char *name);

/* ---- outbox (outbox.c) ------------------------------------------------------------------ */
typedef struct outbox_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    outbox_item *head, *tail;     /* in commit order */
    uint64_t next_seq;            /* seq of the next queued entry (from 1) */
    uint64_t done_seq;            /* every entry with seq <= this has run */
    int draining;
} outbox_queue;

int outbox_init(outbox_queue *q);
void outbox_fini(outbox_queue *q);
/* Drop (call drop on) every entry of @run. */
void outbox_drop_run(theus_run *run);
/* Move @run's entries to the engine queue as version @version (publish step). */
void outbox_publish(theus_engine *e, theus_run *run, uint64_t version);
/* Run queued entries in commit order until the one with seq @seq has run (0: nothing to
 * wait for; UINT64_MAX: everything queued). */
void outbox_drain(theus_engine *e, uint64_t seq);

/* ---- audit (audit.c) -------------------------------------------------------------------- */
/* Violation counters per field: one per level (S, A, B, C), then the refused ones. */
#define AUDIT_COUNTERS 5

typedef struct audit_pending {
    theus_audit_record rec;
    uint32_t field, rule;
} audit_pending;

typedef struct audit_state {
    int any_rules;
    uint64_t *b_count;            /* per field x SCHEMA_AUDIT_MAX: level-B counters */
    unsigned char *touched;       /* per field x rule: evaluated in the pending commit */
    unsigned char *violated;
    audit_pending *pending;       /* violations of the commit being prepared */
    size_t npending, cap_pending;
    const char *process;          /* of the commit being prepared */
    proc_entry *proc;
    _Atomic uint64_t *by_field_outside; /* nfields x AUDIT_COUNTERS: commits made outside
                                           the engine */
    int log_on;                   /* the state writes a log: violations go to it too */
    struct wal_audit_entry *log_entries; /* their log form, grown in prepare */
    size_t cap_log_entries;
    pthread_mutex_t ring_mu;
    theus_audit_record *ring;
    size_t ring_cap;
    uint64_t next_seq;            /* seq of the next record */
    uint64_t first_seq;           /* the oldest seq the ring may hold (refilled from a log) */
} audit_state;

int audit_init(theus_engine *e, uint32_t ring);
/* A durable state: the records of its log into the ring; seq continues after the newest.
 * Before the engine is attached. THEUS_OK or THEUS_EIO. */
int audit_refill(theus_engine *e);
void audit_fini(audit_state *a);
/* Under the commit lock, before the replay: evaluate every rule of the fields the batch
 * writes on the values it would write; THEUS_ESCHEMA refuses the commit. */
int audit_prepare(theus_engine *e, const struct publish_batch *b, const theus_run *run);
/* Under the commit lock: the commit prepared last will not be published; forget it. */
void audit_cancel(theus_engine *e);
/* Under the commit lock, after publish: keep the counters and records of that commit. */
void audit_published(theus_engine *e, const struct publish_batch *b);

/* ---- worker pool (pool.c) --------------------------------------------------------------- */
/* A fixed set of threads serving a FIFO of jobs; a job runs fn(a, b, &version) and its
 * status and error detail are handed to whoever waits on its theus_job handle. */
typedef struct pool pool;
typedef int (*pool_fn)(void *a, void *b, uint64_t *version);
pool *pool_start(uint32_t threads);
/* THEUS_OK or THEUS_ENOMEM; @st names the state whose error messages the job sets. */
int pool_submit(pool *p, const theus_state *st, pool_fn fn, void *a, void *b, theus_job **job);
/* Stop the threads after the job each runs; queued jobs end with THEUS_EBUSY. */
void pool_destroy(pool *p);

/* ---- workflows registered in the engine (wf_load.c) --------------------------------------- */
typedef struct wf_list {
    pthread_mutex_t mu;
    struct theus_workflow **v;
    size_t n, cap;
} wf_list;

/* ---- the engine ------------------------------------------------------------------------- */
struct theus_engine {
    theus_state *st;
    theus_engine_options opts;
    pthread_rwlock_t reg_lock;    /* the process table */
    proc_entry **procs;
    size_t nprocs, cap_procs;
    _Atomic int stopped;
    pthread_mutex_t pool_mu;
    pool *pool;
    audit_state audit;
    sig_table sig;
    outbox_queue ob;
    wf_list wfs;
};

/* The registered process named @name, or NULL (engine.c). */
proc_entry *engine_find(theus_engine *e, const char *name);

/* One write the engine stages in a run's own transaction after its body returned THEUS_OK,
 * outside the process's contract, so that it commits with the body's writes or not at all:
 * a workflow's position (wf_run.c). @bytes holds the one element of @field. */
typedef struct run_extra {
    const char *field;
    unsigned char bytes[8];
} run_extra;

/* One run of @p (theus_engine_run without the lookup; run.c); @extra may be NULL. A pure
 * process stages nothing, so @extra must be NULL for one. */
int engine_run_proc(theus_engine *e, proc_entry *p, const run_extra *extra,
                    uint64_t *committed_version);

#endif
