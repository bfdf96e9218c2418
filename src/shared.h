/* Sharing a state between processes: the layout of a shared segment (the state header
 * block, then the shared area, the schema text, the IPC handles of device fields, the lease
 * table, the redo area and the field data, all addressed by offsets) and leases. The redo
 * protocol that makes commits crash-safe is redo.{c,h}. See docs/sharing.md. */
#ifndef THEUS_SRC_SHARED_H
#define THEUS_SRC_SHARED_H
#include "shared_durable_area.h"
#include "shared_signal.h"
#include "state.h"
#include <sys/types.h>

#define THEUS_SHARED_MAGIC 0x4d48535355454854ULL /* "THEUSSHM" */

/* One open handle: a process (pid and start time, so that a reused pid is not taken for
 * the same process) and its commit holds. Slots of dead processes are reclaimed. */
typedef struct lease_slot {
    _Atomic uint32_t used;
    int32_t pid;
    uint64_t start;       /* /proc/<pid>/stat field 22 */
    uint32_t holds;       /* theus_state_hold_commits of this handle */
    uint32_t pad;
} lease_slot;

/* Follows the header block (state_header.off_shared). Everything before `checksum`, the
 * static part of the header and field table, the schema text and the IPC handles are
 * covered by the checksum; they never change after creation. */
typedef struct shared_area {
    uint64_t magic;
    uint32_t sizes[4];             /* of state_header, field_desc, log_entry, shared_area */
    char name[THEUS_NAME_MAX + 1]; /* the shared name */
    char schema_name[THEUS_NAME_MAX + 1];
    uint64_t off_schema, schema_len;   /* the creator's schema text, NUL included */
    uint64_t off_ipc;              /* nfields handles of THEUS_IPC_HANDLE_BYTES */
    uint64_t off_leases;
    uint32_t max_leases;
    uint32_t priority_lease_ms;
    uint64_t off_redo, redo_bytes;
    uint64_t off_data, data_bytes;
    uint64_t gpu_end;              /* [off_redo, gpu_end) is host-registered by GPU processes
                                      (the redo area, then the pinned fields); off_redo: none */
    int32_t creator_pid;
    uint32_t allow_fallback;
    uint64_t creator_start;
    uint64_t checksum;
    _Atomic uint32_t unlinked;     /* the name is gone: openers retry, leavers leave it */
    uint32_t pad;
    _Atomic uint64_t recovered;    /* commits of dead processes finished by others */
    _Atomic uint64_t dropped;      /* commits of dead processes dropped (not READY yet) */
    shared_signal_area sig;        /* signals and waits across processes (shared_signal.h) */
    shared_durable_area durable;   /* a durable shared state's log (shared_durable_area.h);
                                      not covered by the checksum */
} shared_area;

static inline shared_area *shared_area_of(const theus_state *st)
{
    return (shared_area *)((char *)st->hdr + st->hdr->off_shared);
}

/* The layout and redo checksums: FNV-1a's step (xor, multiply by its 64-bit prime) over
 * 8-byte words, each product folded (h ^= h >> 32), then the tail byte by byte. Word-wise
 * since 2026-12-03: byte by byte it was a fifth of a shared commit's time (the redo record
 * of a one-delta commit is ~370 bytes). Only ever compared within one build (shared
 * segments, never files). */
uint64_t shared_hash(uint64_t h, const void *p, size_t n);
#define SHARED_HASH_INIT 0xcbf29ce484222325ull

/* The operations table a shared state's handle carries (st->ops, with st->shm). */
extern const state_ops shared_state_ops;

/* Detach a handle whose last reference went (theus_state_destroy): release its lease,
 * remove the segment's name when no live process is left, unmap. Frees @st. */
void shared_detach(theus_state *st);
/* With the hold lock held: this handle's hold counter, and the holds of all handles. */
uint32_t *shared_hold_slot(theus_state *st);
uint32_t shared_holds(const theus_state *st);
/* With the hold lock held: free the lease slots of dead processes (dropping their holds);
 * returns the number of live slots. */
uint32_t shared_reap(theus_state *st);

/* Take the commit lock of a shared state. Waits as long as its holder is a running process
 * attached to the state; a holder that is stopped, gone without the robust-futex clean-up,
 * or not attached is given up on after THEUS_SHARED_WAIT_MS (THEUS_EBUSY or THEUS_ECORRUPT,
 * with a message). A holder that died is taken over (THEUS_OK; redo_recover follows). */
int shared_commit_lock(theus_state *st);

/* ---- for durable shared states (src/durable/, shared_durable_area.h) ---------------- */
/* theus_state_create_shared with a hook: @init(st, user) runs on the new state after it is
 * built and before its name exists (no other process can see it yet); its failure fails
 * the creation. @sopts may be NULL. */
struct theus_shared_options;
typedef int (*shared_init_fn)(theus_state *st, void *user);
int shared_create(const char *name, const char *schema_json, const theus_state_options *opts,
                  const struct theus_shared_options *sopts, shared_init_fn init, void *user,
                  theus_state **out);
/* theus_state_open_shared; with @durable 0 a durable shared state is refused (THEUS_EPERM:
 * a handle without the log would commit around it), with 1 any state is opened. */
int shared_open(const char *name, const char *schema_json, int durable, theus_state **out);
/* Under the commit lock, after redo recovery: make the log of a durable shared state agree
 * with the state after a process died appending to it (the invariant in
 * shared_durable_area.h). THEUS_OK, or THEUS_EIO when the log cannot be cut. */
int shared_durable_agree(theus_state *st);
/* (shared_impl.h has these too.) Start time of process @pid plus one, 0 when it is gone;
 * whether the process @pid with that start time lives; the bound of waits on other
 * processes (THEUS_SHARED_WAIT_MS, ms). */
uint64_t shared_proc_start(pid_t pid);
int shared_proc_alive(int32_t pid, uint64_t start);
uint64_t shared_wait_bound_ms(void);

#endif
