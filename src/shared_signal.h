/* Signals and waits across the processes of a shared state: the signal area of the shared
 * segment (shared_area.sig, shared.h) — a bounded table of named signals with their counts,
 * process-shared futex words, and the signals staged by the commit being made — and what
 * the commit path, redo recovery, the process layer and theus_shared_remove do with it.
 * See docs/processes.md, "Across processes". Implemented in src/shared/shared_signal.c. */
#ifndef THEUS_SRC_SHARED_SIGNAL_H
#define THEUS_SRC_SHARED_SIGNAL_H
#include "theus/theus_shared.h"
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct theus_state;
struct shared_area;

/* One named signal. Slots [0, n) of the table are named; a name is written once, under the
 * commit lock, before n covers it, and never changes. */
typedef struct shared_signal_entry {
    char name[THEUS_NAME_MAX + 1];
    _Atomic uint64_t count;          /* deliveries so far */
    _Atomic uint64_t last_version;   /* the version of the commit that delivered it last */
    _Atomic uint32_t wake;           /* futex word: bumped when count changes */
    uint32_t pad;
} shared_signal_entry;

/* A staged delivery: slot @slot's count becomes @count (a value, not an increment, so that
 * recovery can apply it again). */
typedef struct shared_signal_staged {
    uint32_t slot;
    uint32_t pad;
    uint64_t count;
} shared_signal_staged;

/* What the staged set is for. */
enum {
    SIG_STAGED_NONE = 0,
    SIG_STAGED_COMMIT = 1, /* delivered by the commit creating staged_version once it is
                              published (or by the next taker of the commit lock when its
                              holder died after publishing it, recovery included); dropped
                              when that commit is not published */
    SIG_STAGED_READY = 2   /* a delivery outside a commit (a run that wrote nothing): complete,
                              applied again by the next taker of the commit lock if its writer
                              died while applying it */
};

/* Processes with a waiter slot: a waiting process beyond them is counted in `waiters` only
 * (and, killed while it waits, stays counted: a futex wake per commit, nothing else). */
#define SIG_WAITER_SLOTS 64
/* pid of a waiter slot being claimed or taken back (no process has it). */
#define SIG_WAITER_BUSY (-1)

/* One process's waiting threads, named by pid and start time (shared_proc_start) so that a
 * reused pid is not taken for the same process. A slot stays with its process while it
 * lives; the slot of a dead process is taken back, with its count, by the next wait that
 * begins in any process. */
typedef struct shared_signal_waiter {
    _Atomic int32_t pid;             /* 0: free; SIG_WAITER_BUSY: being claimed or taken back */
    _Atomic uint32_t n;              /* threads of that process in a wait now */
    _Atomic uint64_t start;
} shared_signal_waiter;

/* The signal area: one member of shared_area, after its checksum (it changes). Everything
 * but the futex words, `waiters` and the waiter slots is written under the commit lock. */
typedef struct shared_signal_area {
    _Atomic uint32_t n;              /* named slots */
    _Atomic uint32_t waiters;        /* threads in a wait now, all processes: the sum of the
                                        slots' counts, plus the waiters without a slot; never
                                        less than the threads really waiting (see
                                        shared_signal.c), at most one more per process killed
                                        in the few instructions between its two counts */
    _Atomic uint32_t version_wake;   /* futex word: bumped after a commit publishes */
    _Atomic uint32_t table_wake;     /* futex word: bumped when names are added, and for every
                                        wake-all (removal, a local engine closing) */
    _Atomic uint32_t staged_state;   /* SIG_STAGED_* */
    uint32_t staged_n;               /* n after the staged delivery */
    uint32_t nstaged;
    uint32_t pad;
    uint64_t staged_version;
    shared_signal_staged staged[THEUS_SHARED_MAX_SIGNALS];
    shared_signal_entry e[THEUS_SHARED_MAX_SIGNALS];
    shared_signal_waiter w[SIG_WAITER_SLOTS];
} shared_signal_area;

/* ---- the writer side: under the commit lock ------------------------------------------- */

/* Stage the signals @names[0..@n) (duplicates count once each) to be delivered by the
 * commit that creates @version. THEUS_OK; THEUS_ENOMEM with a message when a new name finds
 * the table full (nothing staged). */
int shared_signal_stage(struct theus_state *st, const char (*names)[THEUS_NAME_MAX + 1],
                        size_t n, uint64_t version);
/* Forget what is staged (the commit was cancelled or refused) — unless its redo record is
 * complete (its replay failed): that commit is finished by the next taker of the commit lock
 * and delivers its signals then. */
void shared_signal_unstage(struct theus_state *st);
/* The commit creating @version is published and the listeners before the engine's have
 * run (the write-ahead log's sync under THEUS_SYNC_COMMIT): deliver what is staged for it,
 * forget the rest, wake its waiters. Idempotent. */
void shared_signal_published(struct theus_state *st, uint64_t version);
/* A commit published a new version (redo.c, every commit, by the committing process or one
 * finishing its commit): wake the version waiters. */
void shared_signal_version_published(struct theus_state *st);
/* At recovery (redo_recover, after a dead holder's READY commit was finished or its
 * unfinished one dropped): a commit's staged signals are delivered if its version was
 * published (the holder died between the publish and the delivery), dropped otherwise; a
 * complete delivery outside a commit is applied again. */
void shared_signal_recover(struct theus_state *st);
/* Deliver @names[0..@n) now, outside a commit (a run that wrote nothing): takes and releases
 * the commit lock. THEUS_OK; THEUS_ENOMEM (table full); the lock's errors (THEUS_EBUSY,
 * THEUS_ECORRUPT). With a message. */
int shared_signal_deliver(struct theus_state *st, const char (*names)[THEUS_NAME_MAX + 1],
                          size_t n);

/* Fault injection for the tests: when set, called while a delivery is applied, after the
 * first count was stored and before the rest (the tests kill the process there). */
enum { SIG_POINT_APPLYING = 1 };
extern void (*shared_signal_fault_hook)(int point);

/* ---- the reader side: any thread, no lock --------------------------------------------- */

/* Whether signal @name is in the table (delivered at least once); named slots. */
int shared_signal_known(const struct theus_state *st, const char *name);
uint32_t shared_signal_named(const struct theus_state *st);
/* Deliveries of @name so far (0: never). */
uint64_t shared_signal_count(const struct theus_state *st, const char *name);

/* What a wait waits for: signal @signal's count, or (@signal NULL) field @field's version
 * (-1: the state's version), to pass @after. */
typedef struct shared_wait {
    const char *signal;
    int field;
    uint64_t after;
    uint64_t timeout_ns;             /* UINT64_MAX: none; 0: check once */
    const _Atomic int *closing;      /* ends the wait with THEUS_EBUSY when set; may be NULL */
} shared_wait;
/* Sleep on the futex words until the condition holds (THEUS_OK), the state's name is removed
 * (THEUS_ENOENT), *closing is set (THEUS_EBUSY) or the timeout passes (THEUS_ETIMEDOUT);
 * *seen receives the count or version seen last. No message is set (the caller sets it). */
int shared_signal_wait(struct theus_state *st, const shared_wait *w, uint64_t *seen);
/* Take back the waiter slots of dead processes (killed while they waited) and their counts
 * from `waiters`. Any thread, no lock; called by every wait as it begins. Returns the
 * waiting threads it took back. */
uint32_t shared_signal_reap_waiters(struct theus_state *st);
/* Wake every waiter of the area, in every process (they look again at what they wait for). */
void shared_signal_wake_all(struct shared_area *a);

#endif
