/** @file
 * theus: states shared between processes — the public C API (see docs/sharing.md).
 * A shared state lives in a POSIX shared memory segment of the calling user (mode 0600);
 * every process that opens it by name works on the same fields, versions and commit log,
 * under the same commit rules as threads of one process. A process killed at any instant,
 * even inside a commit, leaves the state at the old or the new version. */
#ifndef THEUS_THEUS_SHARED_H
#define THEUS_THEUS_SHARED_H

#include <theus/theus.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Longest shared name, in bytes, without the terminating NUL. A name is 1 to
 *  THEUS_SHARED_NAME_MAX characters from [A-Za-z0-9._-] that does not start with '.' or '-';
 *  anything else is THEUS_EINVAL. Names are per user: two users' "train" never meet. */
#define THEUS_SHARED_NAME_MAX THEUS_NAME_MAX
/** Signal names a shared state's signal table holds (theus_run_signal, docs/processes.md):
 *  a signal is entered at its first delivery and stays; a new name beyond this is refused
 *  with THEUS_ENOMEM. Private states have no such bound. */
#define THEUS_SHARED_MAX_SIGNALS 64

/** Options of theus_state_create_shared that only shared states have. Start from
 *  THEUS_SHARED_OPTIONS_INIT. */
typedef struct theus_shared_options {
    /** Bytes of the redo area that every commit goes through (its final bytes, region
     *  table and log entries). A commit that does not fit is refused with THEUS_ENOMEM and
     *  the state unchanged. 0: the total bytes of the fields plus 1 MiB, at least 16 MiB. */
    uint64_t redo_bytes;
    /** Lease slots: how many handles (theus_state_open_shared calls, of any processes) may
     *  be open at once; 0: 64; at most 4096. */
    uint32_t max_processes;
} theus_shared_options;

/** Initializer of theus_shared_options: every member at its default. */
#define THEUS_SHARED_OPTIONS_INIT {0, 0}

/**
 * @brief Create a state shared under @p name, and open it in this process.
 * @param[in]  name        the shared name (see THEUS_SHARED_NAME_MAX); borrowed for the call.
 * @param[in]  schema_json NUL-terminated JSON text (see docs/schema.md); borrowed for the
 *                         call; a copy is kept in the segment so that openers can check theirs.
 * @param[in]  opts        as for theus_state_create, or NULL; every process that opens the
 *                         state uses the creator's options.
 * @param[in]  sopts       sharing options, or NULL for THEUS_SHARED_OPTIONS_INIT.
 * @param[out] out         receives the new handle (owned by the caller: theus_state_destroy
 *                         detaches it), or NULL on any failure.
 * @return THEUS_OK; THEUS_EBUSY when a live shared state of that name exists (a segment of
 *         that name whose processes all died is removed and replaced); THEUS_ESCHEMA for a
 *         malformed schema; THEUS_EINVAL for a bad name, NULL arguments or bad options;
 *         THEUS_ENODEV when a GPU placement cannot be honoured and opts->allow_fallback is 0;
 *         THEUS_ENOMEM (memory, or shared memory, exhausted); THEUS_EDEVICE; THEUS_EIO when
 *         the system refuses the segment.
 * @note Thread-safe. Host and pinned fields live in the segment; device fields in GPU
 *       memory of this process, exported to the others with CUDA IPC, so the creator must
 *       outlive the processes that use device fields (docs/sharing.md). With a GPU
 *       placement, start workers with fork+exec: CUDA does not survive fork.
 */
THEUS_API int theus_state_create_shared(const char *name, const char *schema_json,
                              const theus_state_options *opts, const theus_shared_options *sopts,
                              theus_state **out);

/**
 * @brief Open the shared state @p name created by a process of the same user.
 * @param[in]  name        the shared name; borrowed for the call.
 * @param[in]  schema_json the schema this process expects, or NULL to take the state's own;
 *                         borrowed for the call. Compared field by field (names, dtypes,
 *                         shapes, placements asked for, zones, constraints), not as text.
 * @param[out] out         receives a new handle (owned by the caller: theus_state_destroy
 *                         detaches it), or NULL on any failure.
 * @return THEUS_OK; THEUS_ENOENT when no such state exists (a state whose processes all
 *         died is removed by this call, which then returns THEUS_ENOENT); THEUS_EPERM when
 *         the name is not a regular file (FIFO, directory, symbolic link, socket: refused
 *         at once), or belongs to another user, or its mode is not 0600, or the state is
 *         durable (open it with theus_shared_open_durable, theus/theus_durable.h, so that
 *         this handle's commits are logged too); THEUS_ECORRUPT for a
 *         segment that is not a theus state of this layout version or fails its checksum,
 *         or whose hold lock names a thread that does not exist; THEUS_EBUSY when its hold
 *         lock is held past THEUS_SHARED_WAIT_MS (default 5000 ms) by a live process;
 *         THEUS_ESCHEMA when @p schema_json is malformed or differs from the state's;
 *         THEUS_ENODEV when the state has device fields and this process has no GPU;
 *         THEUS_EBUSY when every lease slot is taken; THEUS_EINVAL; THEUS_ENOMEM;
 *         THEUS_EDEVICE.
 * @note Thread-safe. Never blocks longer than THEUS_SHARED_WAIT_MS on another process
 *       (docs/sharing.md, "What can block"). A process may open the same state more than
 *       once; it maps the segment and the GPU memory once. Each handle takes a lease slot, released by
 *       theus_state_destroy (or reclaimed when its process dies).
 */
THEUS_API int theus_state_open_shared(const char *name, const char *schema_json, theus_state **out);

/** @brief The shared name of a state.
 *  @param st the state.
 *  @return its shared name (borrowed; lives as long as the handle), or NULL for a private
 *          state. @note Thread-safe. */
THEUS_API const char *theus_state_shared_name(const theus_state *st);

/** What theus_shared_info and theus_shared_list report about a shared state. */
typedef struct theus_shared_summary {
    char name[THEUS_SHARED_NAME_MAX + 1];   /**< the shared name */
    int status;           /**< THEUS_OK, or why the segment is unusable (THEUS_ECORRUPT,
                               THEUS_EPERM; THEUS_ENOENT when it went away while listed);
                               then only @c name is set */
    char schema_name[THEUS_NAME_MAX + 1];   /**< the schema's "name" */
    uint64_t version;     /**< the state version */
    uint32_t nfields;     /**< number of fields */
    uint32_t processes;   /**< live handles (lease slots held by live processes) */
    uint32_t max_processes; /**< lease slots (see theus_shared_options) */
    int32_t creator_pid;  /**< the process that created it (it owns device field memory) */
    uint64_t segment_bytes; /**< size of the shared memory segment */
    uint64_t redo_bytes;  /**< size of its redo area */
    int abandoned;        /**< 1: no live process holds it; the next open of the name, a
                               create of it, or theus_shared_cleanup removes it */
    uint64_t recovered;   /**< commits of processes that died after making them durable in
                               the redo area, finished by another process */
    uint64_t dropped;     /**< commits of processes that died before that, dropped */
} theus_shared_summary;

/**
 * @brief Describe the shared state @p name without opening it (no lease, no lock, nothing
 *        changed).
 * @param[in]  name the shared name; borrowed for the call.
 * @param[out] out  receives the description.
 * @return THEUS_OK; THEUS_ENOENT; THEUS_EPERM (not a regular file of this user, or mode
 *         not 0600); THEUS_ECORRUPT (bad contents, or a lock word naming a thread that does
 *         not exist: then the other members are filled in too); out->status says the same;
 *         THEUS_EINVAL for a bad name or NULL @p out.
 * @note Thread-safe; never waits; the counts may be outdated by the time they are read.
 */
THEUS_API int theus_shared_info(const char *name, theus_shared_summary *out);

/**
 * @brief List this user's shared states, sorted by name, unusable segments included (with
 *        their @c status).
 * @param[out] out   array of @p cap entries to fill (may be NULL when @p cap is 0).
 * @param[in]  cap   number of entries of @p out.
 * @param[out] count receives the number of shared states found (may exceed @p cap: call
 *                   again with a larger array).
 * @return THEUS_OK; THEUS_EINVAL (NULL @p count, or NULL @p out with @p cap > 0);
 *         THEUS_EIO when the shared memory directory cannot be read; THEUS_ENOMEM.
 * @note Thread-safe; never waits (planted FIFOs and the like are listed as THEUS_EPERM).
 */
THEUS_API int theus_shared_list(theus_shared_summary *out, size_t cap, size_t *count);

/**
 * @brief Remove the name @p name now. Processes that have the state open keep working on
 *        it; its memory goes when the last of them detaches. The name can be created again
 *        at once (as a new, separate state).
 * @param name the shared name; borrowed for the call.
 * @return THEUS_OK; THEUS_ENOENT; THEUS_EPERM when the name is another user's file (also
 *         for root) or not a regular file (FIFO, directory, link, socket): it is left as it
 *         is; THEUS_EINVAL.
 * @note Thread-safe; takes no lock, never waits. Works on unusable (corrupt) segments of
 *       the user too.
 */
THEUS_API int theus_shared_remove(const char *name);

/**
 * @brief Remove every shared state of this user whose processes all died, and segments
 *        left by creators killed half-way through theus_state_create_shared.
 * @param[out] removed receives how many segments were removed; may be NULL.
 * @return THEUS_OK; THEUS_EBUSY when the hold lock of some state was held past
 *         THEUS_SHARED_WAIT_MS by a live (e.g. stopped) process: that state was left, every
 *         other one swept, *removed counts those removed; THEUS_EIO when the shared memory
 *         directory cannot be read.
 * @note Thread-safe. Waits at most THEUS_SHARED_WAIT_MS (default 5000 ms) per stuck state.
 *       States in use, and unusable segments, are left alone (see theus_shared_remove); an
 *       abandoned state whose hold lock is stale (names a thread that does not exist) is
 *       removed.
 */
THEUS_API int theus_shared_cleanup(size_t *removed);

#ifdef __cplusplus
}
#endif
#endif /* THEUS_THEUS_SHARED_H */
