/** @file
 * theus durability and interop (docs/durability.md): durable states in a directory — a
 * write-ahead log of committed batches and safetensors checkpoints, recovery, time travel —
 * and standalone safetensors files. Nothing in this header depends on CUDA or jansson. */
#ifndef THEUS_THEUS_DURABLE_H
#define THEUS_THEUS_DURABLE_H

#include "theus.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------
 * Durable states
 * ------------------------------------------------------------------------------------ */

/** When a commit's log record must be on disk before the commit returns THEUS_OK. */
typedef enum theus_sync {
    /** fdatasync of the log before each commit returns: survives a process crash and a
     *  power loss (as far as the disk honours fdatasync). */
    THEUS_SYNC_COMMIT = 0,
    /** Commits of several threads share one fdatasync; each still returns only once its
     *  own record is synced. Survives what THEUS_SYNC_COMMIT survives. */
    THEUS_SYNC_GROUP = 1,
    /** The record is written (page cache) before the commit returns, never synced by the
     *  commit: survives a crash of the process, NOT a power loss or kernel crash. */
    THEUS_SYNC_NONE = 2
} theus_sync;

/** Options of a durable state. Start from THEUS_DURABLE_OPTIONS_INIT. */
typedef struct theus_durable_options {
    theus_sync sync;             /**< when a commit's log record is synced (default COMMIT) */
    /** THEUS_SYNC_GROUP: how long a committer waits, from its record on, for the group to
     *  complete (as many unsynced records as the groups have held) before it leads the
     *  fdatasync of what is there (microseconds; 0: never waits; default 200). */
    uint32_t group_window_us;
    /** A log segment is closed once it holds this many bytes (0: 64 MiB). */
    uint64_t segment_bytes;
    /** Checkpoints kept by theus_state_checkpoint (0: 2); older ones, and the log segments
     *  only they need, are removed. Time travel reaches back to the oldest one kept. */
    uint32_t keep_checkpoints;
    /** Log preallocation: the open segment is extended ahead of its records in steps of this
     *  many bytes (rounded up to 4 KiB, at most @c segment_bytes), written as zeros and
     *  fdatasync'ed once, so that a commit's fdatasync overwrites allocated blocks and has
     *  no file size or extent change to journal (docs/durability.md, "Log format"). 0: the
     *  default, 1 MiB; THEUS_PREALLOC_OFF: no preallocation (the log grows record by record).
     *  Under THEUS_SYNC_GROUP a power cut during a group's fdatasync can persist a later
     *  record's sectors and not an earlier one's: every record says what was synced when it
     *  was written, and recovery reads such a hole before records that were never
     *  acknowledged as a torn tail (docs/durability.md, "Power cuts and preallocation").
     *  A durable shared state uses its creator's value for every process. Segments are cut
     *  to their last record when closed; a zero-filled tail is the clean end of a log. */
    uint64_t prealloc_bytes;
} theus_durable_options;

/** theus_durable_options.prealloc_bytes: no log preallocation. */
#define THEUS_PREALLOC_OFF UINT64_MAX

/** Initializer of theus_durable_options: every member at its default. */
#define THEUS_DURABLE_OPTIONS_INIT { THEUS_SYNC_COMMIT, 200, 0, 0, 0 }

/**
 * @brief Open a durable state in directory @p dir: create it, or recover it.
 * @param[in] dir         the directory; missing or empty: created (mode 0700) holding
 *                        @p schema_json. Holding a state: recovered from its newest checkpoint
 *                        and the log after it. Borrowed for the call.
 * @param[in] schema_json the schema (needed to create); when recovering, NULL or a schema equal
 *                        to the stored one (compared field by field, not as text).
 * @param[in] opts        state options, or NULL.
 * @param[in] dopts       durability options, or NULL for THEUS_DURABLE_OPTIONS_INIT.
 * @param[out] out        the state (theus_state_destroy closes the log), or NULL on failure.
 * @return THEUS_OK (a torn last record is dropped and reported by theus_state_durable_info);
 *         THEUS_ECORRUPT (a record, segment or checkpoint failed a check: the message names
 *         the file and the byte offset — never a silently older state); THEUS_ESCHEMA (the
 *         schema differs from the stored one, or is invalid); THEUS_EPERM (the directory
 *         belongs to another user, or is writable by group or others); THEUS_EINVAL (NULL
 *         arguments, bad options, @p dir not a directory, creating without a schema);
 *         THEUS_EIO; THEUS_ENOMEM; the codes of theus_state_create.
 * @note One process opens a directory at a time (it is locked; THEUS_EBUSY otherwise, also
 *       while a durable shared state uses it: theus_shared_open_durable). Every
 *       commit then writes a log record before it returns; with THEUS_SYNC_COMMIT/GROUP a
 *       commit that returns THEUS_EIO is published in memory but not durable, and the state
 *       refuses further commits. Thread-safe as any state.
 */
THEUS_API int theus_state_open_durable(const char *dir, const char *schema_json,
                                       const theus_state_options *opts,
                                       const theus_durable_options *dopts, theus_state **out);

/**
 * @brief Open a durable SHARED state: shared under @p name between processes of this user
 *        (theus/theus_shared.h), logged in directory @p dir by every process that commits.
 * @param[in] name        the shared name (as theus_state_create_shared); borrowed.
 * @param[in] dir         the durable directory (as theus_state_open_durable); borrowed.
 *                        When no live shared state has @p name, it is created from @p dir:
 *                        created empty (with @p schema_json) or recovered (newest checkpoint +
 *                        log). When one lives, this process joins it and appends to the same
 *                        log; @p dir must then be the directory it was created from.
 * @param[in] schema_json the schema (needed to create in an empty directory); otherwise NULL,
 *                        or equal to the stored one (compared field by field).
 * @param[in] opts        state options of a state created here (NULL: defaults); a joining
 *                        process uses the creator's.
 * @param[in] dopts       durability options of this process's handle, or NULL (defaults):
 *                        @c sync and @c group_window_us are this handle's (processes may
 *                        differ); @c segment_bytes is the creator's for everyone;
 *                        @c keep_checkpoints applies to this handle's checkpoints.
 * @param[out] out        the handle (theus_state_destroy detaches it and closes its log; the
 *                        segment goes when the last process leaves), or NULL on failure.
 * @return THEUS_OK; THEUS_EINVAL (NULL or bad arguments and options; a live shared state
 *         @p name that is not durable, or durable in another directory: the message names
 *         it); THEUS_EBUSY (@p dir is in use by a private durable state, by the processes of
 *         a shared state of another name, or is being turned into shared state @p name by
 *         another process at this moment — retry); THEUS_EPERM, THEUS_ECORRUPT, THEUS_ESCHEMA,
 *         THEUS_EIO, THEUS_ENOMEM as theus_state_open_durable; the codes of
 *         theus_state_create_shared and theus_state_open_shared.
 * @note Every commit of any process appends its record under the commit lock; a process
 *       killed at any instant leaves log and state agreeing (docs/durability.md, "Durable
 *       shared states"). THEUS_SYNC_GROUP shares fdatasyncs across the threads and processes
 *       of the state. theus_state_checkpoint works from any process, one at a time.
 *       theus_state_open_shared refuses a durable shared state (THEUS_EPERM), so that no
 *       handle commits without logging. A write or sync failure makes every process's
 *       commits fail with THEUS_EIO until all have closed it. Thread-safe.
 */
THEUS_API int theus_shared_open_durable(const char *name, const char *dir,
                                        const char *schema_json, const theus_state_options *opts,
                                        const theus_durable_options *dopts, theus_state **out);

/**
 * @brief Write a checkpoint of the state's current committed version into its directory.
 * @param[in]  st          a state from theus_state_open_durable.
 * @param[in]  incremental 0: a full checkpoint (a plain safetensors file of every field but
 *                         the signal zone); 1: only the blocks written since the previous
 *                         checkpoint (docs/durability.md) — written as a full one when there
 *                         is no previous checkpoint or the chain already holds 8 incrementals.
 * @param[out] version     the version checkpointed; may be NULL.
 * @return THEUS_OK; THEUS_EINVAL (NULL, not a durable state, read-only state, bad flag);
 *         THEUS_EIO; THEUS_ENOMEM; THEUS_EDEVICE.
 * @note A full checkpoint writes the fields while commits go on, then again what they
 *       changed meanwhile; commits wait only while the last of that is copied (the file is
 *       then exactly the version returned). An incremental one holds commits while the
 *       changed bytes are copied to host memory, and writes the file after. Afterwards
 *       checkpoints beyond keep_checkpoints (with the log segments only they needed) are
 *       removed. Thread-safe; one checkpoint at a time per state (a
 *       second concurrent call waits). Must not be called holding theus_state_hold_commits.
 */
THEUS_API int theus_state_checkpoint(theus_state *st, int incremental, uint64_t *version);

/**
 * @brief The range of versions directory @p dir can still rebuild (theus_state_open_version).
 * @param[in]  dir    the durable state's directory; borrowed for the call.
 * @param[out] oldest receives the oldest version it can rebuild.
 * @param[out] newest receives the newest (the last logged commit).
 * @return THEUS_OK; THEUS_ENOENT (no state there); THEUS_EPERM / THEUS_EINVAL as
 *         theus_state_open_durable; THEUS_EIO.
 * @note Reads the directory only; may run while a process has it open. @p oldest is 1 while
 *       the log still starts at the state's creation, else the oldest full checkpoint kept.
 */
THEUS_API int theus_state_versions(const char *dir, uint64_t *oldest, uint64_t *newest);

/**
 * @brief Rebuild version @p version of the durable state in @p dir, read-only: every commit
 *        (and theus_state_init_field) on it is refused with THEUS_EPERM.
 * @param[in]  dir     the durable state's directory; borrowed for the call.
 * @param[in]  version the version to rebuild, within theus_state_versions' range.
 * @param[out] out the state (theus_state_destroy), or NULL on failure.
 * @return THEUS_OK; THEUS_ENOENT (the version is outside theus_state_versions' range);
 *         THEUS_ECORRUPT (as recovery); THEUS_EPERM; THEUS_EINVAL; THEUS_EIO; THEUS_ENOMEM.
 * @note Reads the directory only (no lock): it may run while another process has the state
 *       open, but a checkpoint's retention running at the same time may remove files it needs
 *       (then THEUS_ECORRUPT or THEUS_EIO; retry).
 */
THEUS_API int theus_state_open_version(const char *dir, uint64_t version, theus_state **out);

/** What recovery did when the durable state was opened. */
typedef struct theus_durable_info {
    uint64_t version;            /**< state version after recovery */
    uint64_t checkpoint_version; /**< version of the checkpoint it started from (1: none) */
    uint64_t records_replayed;   /**< log records applied after the checkpoint */
    uint64_t torn_bytes;         /**< bytes of a torn last record dropped (0: none) */
    uint64_t torn_offset;        /**< where in the newest segment they started */
} theus_durable_info;

/** @brief What opening a durable state recovered.
 *  @param[in]  st  a state from theus_state_open_durable.
 *  @param[out] out receives the recovery summary.
 *  @return THEUS_OK; THEUS_EINVAL for NULL arguments or a state that is not durable. */
THEUS_API int theus_state_durable_info(const theus_state *st, theus_durable_info *out);

/** Counters of a durable state's log since it was opened (for benchmarks and monitoring). */
typedef struct theus_durable_stats {
    /** Records appended (commits, init and audit records). A durable shared state: by all
     *  of its processes since the shared state was created. */
    uint64_t log_records;
    /** fdatasyncs of the log that made records durable (per commit under
     *  THEUS_SYNC_COMMIT, one per group under THEUS_SYNC_GROUP, one per closed segment);
     *  log_records / log_syncs is the commits per fdatasync. Shared: all processes. */
    uint64_t log_syncs;
    /** Preallocation steps (zero-filled extensions of the open segment, each synced once,
     *  not counted in @c log_syncs). Shared: all processes. */
    uint64_t log_extends;
} theus_durable_stats;

/** @brief The log counters of a durable state.
 *  @param[in]  st  a state from theus_state_open_durable or theus_shared_open_durable.
 *  @param[out] out receives the counters.
 *  @return THEUS_OK; THEUS_EINVAL for NULL arguments or a state that is not durable (a
 *          read-only state of theus_state_open_version has no log: all counters 0).
 *  @note Thread-safe; the counters are read without the commit lock (each is exact, the
 *        three are not one snapshot). */
THEUS_API int theus_state_durable_stats(const theus_state *st, theus_durable_stats *out);

/* ---------------------------------------------------------------------------------------
 * Standalone safetensors files
 * ------------------------------------------------------------------------------------ */

/**
 * @brief Write every field of the state except the `signal` zone to one safetensors file,
 *        as one committed version, atomically (a temporary file in the same directory,
 *        fsynced, renamed over @p path, directory fsynced).
 * @param[in] st   the state; the fields are written while commits go on, then again what
 *                 they changed meanwhile, the last of it with commits held (they wait only
 *                 for that copy).
 * @param[in] path destination; borrowed for the call.
 * @return THEUS_OK; THEUS_EINVAL (NULL argument); THEUS_ENOMEM (two 8 MiB staging buffers
 *         for device and pinned fields, a few bytes per 256 KiB); THEUS_ENOENT (the
 *         directory of @p path does not exist); THEUS_EIO (the file could not be written;
 *         no file is left behind, an existing @p path is untouched); THEUS_EDEVICE.
 * @note Thread-safe against commits on other threads. Must not be called by a thread that
 *       holds theus_state_hold_commits. The file's `__metadata__` holds "theus.format",
 *       "theus.version" (the state version saved), "theus.schema" and
 *       "theus.field_versions" (docs/durability.md).
 */
THEUS_API int theus_state_save_safetensors(theus_state *st, const char *path);

/** Which field a tensor of a loaded file goes to: return a field name (borrowed until the
 *  load returns), or NULL to skip the tensor. */
typedef const char *(*theus_tensor_map_fn)(const char *tensor, void *user);

/** Options of theus_state_load_safetensors_ex. Start from THEUS_LOAD_OPTIONS_INIT. */
typedef struct theus_load_options {
    /** 1: tensors that name no field (after @ref map) are skipped; 0 (default): an error. */
    int skip_unknown;
    /** NULL: a tensor loads into the field of the same name. Otherwise called once per
     *  tensor. */
    theus_tensor_map_fn map;
    void *map_user;       /**< passed to @c map as is */
    /** 1: also load tensors into `signal` fields (default 0: skipped, as checkpoints do). */
    int load_signal;
} theus_load_options;

/** Initializer of theus_load_options: every member at its default. */
#define THEUS_LOAD_OPTIONS_INIT {0, NULL, NULL, 0}

/**
 * @brief Load a safetensors file (written by theus, Python `safetensors`, PyTorch ...) into
 *        the fields its tensors name, as one transaction.
 * @param[in] st   the state.
 * @param[in] path the file; borrowed for the call.
 * @return THEUS_OK; THEUS_ENOENT (no such file); THEUS_ECORRUPT (the file is not a valid
 *         safetensors file: header length, JSON, dtype names, shapes, data_offsets — the
 *         message names the tensor and what is wrong); THEUS_ESCHEMA (a tensor's dtype or
 *         shape differs from its field's, or the values break a constraint; the message names
 *         the tensor); THEUS_ENOENT also for a tensor that names no field; THEUS_EPERM (a
 *         `const` field after the state's first commit); THEUS_ECONFLICT (a concurrent commit
 *         wrote a loaded field); THEUS_EIO; THEUS_ENOMEM. On any failure no field is changed.
 * @note Thread-safe. `const` fields are written with theus_state_init_field, so a file that
 *       holds one loads only while the state is at version 1. Fields the file does not name
 *       keep their values. Tensors of the `signal` zone are skipped (see the _ex options).
 */
THEUS_API int theus_state_load_safetensors(theus_state *st, const char *path);

/** @brief As theus_state_load_safetensors, with options.
 *  @param st, path as for theus_state_load_safetensors.
 *  @param opts options, or NULL for THEUS_LOAD_OPTIONS_INIT; borrowed for the call.
 *  @return as theus_state_load_safetensors; THEUS_EINVAL for bad options. */
THEUS_API int theus_state_load_safetensors_ex(theus_state *st, const char *path,
                                              const theus_load_options *opts);

#ifdef __cplusplus
}
#endif
#endif /* THEUS_THEUS_DURABLE_H */
