/** @file
 * theus process layer: processes with contracts run by an engine, JSON workflows, the
 * audit (rules in the schema, levels S/A/B/C), signals and waits, and the outbox.
 * See docs/processes.md. Nothing here depends on CUDA or jansson. */
#ifndef THEUS_THEUS_PROCESS_H
#define THEUS_THEUS_PROCESS_H

#include "theus.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------
 * Status codes of the process layer (numbered after theus.h's; never renumbered).
 * ------------------------------------------------------------------------------------ */
#define THEUS_EUNDECLARED -12 /**< a process body returned a status it did not declare */
#define THEUS_ETIMEDOUT   -13 /**< a wait ended at its timeout before its condition held */

/* ---------------------------------------------------------------------------------------
 * Engines and processes
 * ------------------------------------------------------------------------------------ */
/** An engine: the registered processes of one state, and what runs them (opaque). */
typedef struct theus_engine theus_engine;
/** One run of a process: what its body sees (the transaction, signals, the outbox). */
typedef struct theus_run theus_run;
/** A handle on a process run submitted to the engine's worker pool. */
typedef struct theus_job theus_job;

/** Whether a process writes. */
typedef enum theus_process_kind {
    THEUS_PROCESS_EFFECT = 0, /**< reads and writes; commits through the retry helper */
    THEUS_PROCESS_PURE = 1    /**< reads only: a snapshot, never takes the commit lock */
} theus_process_kind;

/** A process body: read and stage through theus_run_tx(@p run); return THEUS_OK to commit.
 *  Any other value aborts the attempt. THEUS_ECONFLICT is retried; theus's own codes
 *  (THEUS_EINVAL .. THEUS_ETIMEDOUT) are passed up as they are; any other code must be
 *  declared in theus_process_def.status_codes, else the run fails with THEUS_EUNDECLARED.
 *  The body may run several times (one per attempt) and must not commit or abort. */
typedef int (*theus_process_fn)(theus_run *run, void *user);

/** What theus_engine_register needs. All pointers are borrowed for the call (the engine
 *  keeps its own copies), except @p user, which is passed to every run of the body. */
typedef struct theus_process_def {
    const char *name;                 /**< 1..THEUS_NAME_MAX bytes, unique in the engine */
    theus_process_fn body;            /**< the body, run once per attempt */
    const char *const *inputs;        /**< readable fields: names or fnmatch(3) globs */
    size_t n_inputs;                  /**< entries of @c inputs */
    const char *const *outputs;       /**< writable fields (none for pure) */
    size_t n_outputs;                 /**< entries of @c outputs */
    theus_process_kind kind;          /**< effect (default) or pure */
    const int *status_codes;          /**< the body's own non-zero codes */
    size_t n_status_codes;            /**< entries of @c status_codes */
    int isolation;                    /**< theus_isolation of every attempt (default 0) */
    void *user;                       /**< passed to every run of @c body */
} theus_process_def;

/** Engine options. Start from THEUS_ENGINE_OPTIONS_INIT. */
typedef struct theus_engine_options {
    uint32_t workers;        /**< threads of the worker pool, started at the first submit; 0: 2 */
    uint32_t audit_ring;     /**< audit records kept (oldest dropped first); 0: 256 */
    theus_retry_options retry; /**< retry policy of every effect run (tx member ignored) */
} theus_engine_options;

/** Initializer of theus_engine_options: every member at its default. */
#define THEUS_ENGINE_OPTIONS_INIT {0, 0, THEUS_RETRY_OPTIONS_INIT}

/**
 * @brief Create an engine on @p st: it holds the processes, evaluates the schema's audit
 *        rules on every commit of @p st and delivers signals and outbox entries.
 * @param[in]  st   the state; borrowed: it must outlive the engine.
 * @param[in]  opts options, or NULL for THEUS_ENGINE_OPTIONS_INIT.
 * @param[out] out  the new engine (theus_engine_destroy), NULL on failure.
 * @return THEUS_OK; THEUS_EINVAL (NULL argument, bad option); THEUS_EBUSY when another
 *         engine is attached to @p st; THEUS_ENOMEM; THEUS_EIO (a durable state's log
 *         could not be read to refill the audit ring).
 * @note Thread-safe with respect to other states. One engine per state. On a durable
 *       state the audit ring is refilled from the audit records of the log (every segment
 *       still in the directory) and sequence numbers continue after them; counters start
 *       at 0. The audit listens on the commit path ahead of every other listener.
 */
THEUS_API int theus_engine_create(theus_state *st, const theus_engine_options *opts,
                                  theus_engine **out);

/**
 * @brief Destroy an engine: stops its worker pool (queued jobs end with THEUS_EBUSY), wakes
 *        every waiter (they return THEUS_EBUSY), detaches from the state. NULL is a no-op.
 * @param e the engine (consumed), or NULL.
 * @note No run of the engine may be in progress and no other thread may call into it
 *       afterwards; threads blocked in theus_engine_wait_* are woken and waited for.
 */
THEUS_API void theus_engine_destroy(theus_engine *e);

/** @brief The state the engine runs on. @param e the engine.
 *  @return the state (borrowed). */
THEUS_API theus_state *theus_engine_state(const theus_engine *e);

/**
 * @brief Register a process. Its contract is checked against the schema now: every input
 *        and output name or glob must match at least one field, and no output may match a
 *        const field; a pure process declares no outputs.
 * @param e   the engine.
 * @param def the process; borrowed for the call (see theus_process_def).
 * @return THEUS_OK; THEUS_EINVAL (NULL body or name, name too long, duplicate name, empty
 *         glob, a glob that matches no field, a pure process with outputs, THEUS_OK or a
 *         duplicate among status_codes); THEUS_EPERM (an output matches a const field);
 *         THEUS_ENOMEM. The detail is in theus_state_last_error(theus_engine_state(e)).
 * @note Thread-safe (also while other threads run processes).
 */
THEUS_API int theus_engine_register(theus_engine *e, const theus_process_def *def);

/**
 * @brief Run a process by name: one transaction through theus_tx_run (retried on
 *        conflict); a pure process reads a snapshot and its transaction is released without
 *        commit. After the commit, its signals are delivered and its outbox entries have run.
 * @param[in]  e       the engine.
 * @param[in]  process the process's name; borrowed for the call.
 * @param[out] committed_version the version the run committed (its base when it wrote
 *             nothing); may be NULL.
 * @return THEUS_OK; THEUS_ENOENT (no such process); THEUS_EBUSY (the engine was stopped by
 *         a level-S audit rule, or retries ran out); THEUS_EUNDECLARED (the body returned a
 *         code it did not declare); a declared code of the body; THEUS_ESCHEMA (gatekeeper
 *         or audit refusal); any error of the transaction calls.
 * @note Thread-safe: many threads may run processes of one engine at once.
 */
THEUS_API int theus_engine_run(theus_engine *e, const char *process, uint64_t *committed_version);

/**
 * @brief Run a process on the engine's worker pool.
 * @param[in]  e       the engine.
 * @param[in]  process the process's name; borrowed for the call.
 * @param[out] job a handle to wait on (theus_job_wait consumes it); NULL on failure.
 * @return THEUS_OK; THEUS_ENOENT; THEUS_EINVAL; THEUS_ENOMEM; THEUS_EBUSY (engine stopped).
 * @note Thread-safe.
 */
THEUS_API int theus_engine_submit(theus_engine *e, const char *process, theus_job **job);

/**
 * @brief Wait for a submitted run to finish and release the handle.
 * @param[in]  job the handle (consumed).
 * @param[out] committed_version as theus_engine_run; may be NULL.
 * @return the run's status, as theus_engine_run; THEUS_EINVAL for a NULL job.
 * @note Any thread may wait, once per job. Its error detail is copied to the waiting
 *       thread (theus_state_last_error).
 */
THEUS_API int theus_job_wait(theus_job *job, uint64_t *committed_version);

/** @brief The transaction of the current attempt. @param run the run.
 *  @return the transaction (borrowed: valid during the body only). */
THEUS_API theus_tx *theus_run_tx(theus_run *run);
/** @brief The name of the running process. @param run the run.
 *  @return the name (borrowed). */
THEUS_API const char *theus_run_process(const theus_run *run);
/** @brief The engine of the run. @param run the run. @return the engine (borrowed). */
THEUS_API theus_engine *theus_run_engine(theus_run *run);

/** Counters of one process. */
typedef struct theus_process_stats {
    uint64_t runs;        /**< theus_engine_run / submit calls that reached the body */
    uint64_t commits;     /**< runs that ended THEUS_OK */
    uint64_t failures;    /**< runs that ended with an error */
    uint64_t attempts;    /**< body invocations */
    uint64_t retries;     /**< extra attempts after a conflict */
    uint64_t conflicts;   /**< attempts that ended in THEUS_ECONFLICT */
    uint64_t undeclared;  /**< runs failed with THEUS_EUNDECLARED */
    uint64_t audit;       /**< audit violations recorded for this process's commits */
} theus_process_stats;

/** @brief Copy a process's counters.
 *  @param[in]  e       the engine.
 *  @param[in]  process the process's name; borrowed for the call.
 *  @param[out] out     receives the counters.
 *  @return THEUS_OK, THEUS_ENOENT, THEUS_EINVAL.
 *  @note Thread-safe; counters of concurrent runs may be mid-update. */
THEUS_API int theus_engine_process_stats(theus_engine *e, const char *process,
                                         theus_process_stats *out);

/** @brief Whether a level-S audit rule stopped the engine. @param e the engine.
 *  @return 1 when stopped (runs and workflows then refuse with THEUS_EBUSY), else 0.
 *  @note Thread-safe. */
THEUS_API int theus_engine_stopped(const theus_engine *e);
/** @brief Let a stopped engine run again (after the cause is dealt with).
 *  @param e the engine. @note Thread-safe. */
THEUS_API void theus_engine_resume(theus_engine *e);

/* ---------------------------------------------------------------------------------------
 * Signals, waits and the outbox
 * ------------------------------------------------------------------------------------ */
/**
 * @brief Queue signal @p name on the run's transaction: it is delivered (its count goes up
 *        by one, waiters wake) after the commit is published, and never when the attempt
 *        aborts, conflicts or is refused.
 *        On a shared state the delivery is seen by the waiters of every process that has
 *        it open (docs/processes.md, "Across processes"); when the committing process dies
 *        inside the commit, the process that finishes the commit delivers the signals.
 * @param run  the run.
 * @param name the signal's name; copied.
 * @return THEUS_OK; THEUS_EINVAL (NULL, empty name, name longer than THEUS_NAME_MAX);
 *         THEUS_EPERM (a pure process); THEUS_ENOMEM (out of memory, or — shared state —
 *         @p name is new and the state's signal table already holds
 *         THEUS_SHARED_MAX_SIGNALS names, counting the new ones this run queued). On a
 *         shared state the table can also fill between this call and the commit (another
 *         handle's new names): the commit is then refused with THEUS_ENOMEM, state unchanged.
 */
THEUS_API int theus_run_signal(theus_run *run, const char *name);

/** A side effect: runs once, after its commit, with the version that commit created. */
typedef void (*theus_outbox_fn)(void *arg, uint64_t version);
/** Releases an entry's argument when it is dropped without running (abort, conflict). */
typedef void (*theus_outbox_drop_fn)(void *arg);

/**
 * @brief Queue a side effect on the run's transaction. After the commit is published the
 *        engine runs it exactly once, in commit order with the other runs' entries, before
 *        theus_engine_run returns; on abort, conflict or refusal it is dropped (@p drop, if
 *        not NULL, is called with @p arg) and never runs.
 * @param run  the run.
 * @param fn   the side effect.
 * @param drop releases @p arg when the entry is dropped; may be NULL.
 * @param arg  passed to @p fn or @p drop; owned by the entry until one of them runs.
 * @return THEUS_OK; THEUS_EINVAL (NULL run or fn); THEUS_EPERM (a pure process); THEUS_ENOMEM
 *         (@p drop has been called).
 * @note @p fn may run on another thread that committed later and drains the outbox first;
 *       it must not wait for a run that has not committed yet.
 */
THEUS_API int theus_run_outbox(theus_run *run, theus_outbox_fn fn, theus_outbox_drop_fn drop,
                               void *arg);

/** @brief How often signal @p name was delivered (0 if never); on a shared state, by the
 *         commits of every process.
 *  @param[in]  e     the engine.
 *  @param[in]  name  the signal's name; borrowed for the call.
 *  @param[out] count receives the count.
 *  @return THEUS_OK, THEUS_EINVAL. */
THEUS_API int theus_engine_signal_count(theus_engine *e, const char *name, uint64_t *count);

/**
 * @brief Block until signal @p name has been delivered more than @p after times.
 * @param[in]  e          the engine.
 * @param[in]  name       the signal's name; borrowed for the call.
 * @param[in]  after      the count to pass.
 * @param[in]  timeout_ms 0: do not wait (test only); UINT32_MAX: no timeout.
 * @param[out] count      the count seen last; may be NULL.
 * @return THEUS_OK (also when the count had passed @p after already); THEUS_ETIMEDOUT;
 *         THEUS_EBUSY (the engine is being destroyed); THEUS_EINVAL (NULL, empty or too
 *         long name); THEUS_ENOENT (shared state: its name was removed with
 *         theus_shared_remove, before or during the wait, and the count has not passed
 *         @p after; the handle itself keeps working). With a message.
 * @note Thread-safe; no polling. A private state's waiters sleep on a condition variable;
 *       a shared state's, in any process, on futex words in its segment, woken by the
 *       commits of every process that has it open (docs/processes.md).
 */
THEUS_API int theus_engine_wait_signal(theus_engine *e, const char *name, uint64_t after,
                                       uint32_t timeout_ms, uint64_t *count);

/**
 * @brief Block until the version of field @p field (NULL: the state's version) is greater
 *        than @p after.
 * @param[in]  e          the engine.
 * @param[in]  field      the field's name (borrowed for the call), or NULL.
 * @param[in]  after      the version to pass.
 * @param[in]  timeout_ms as for theus_engine_wait_signal.
 * @param[out] version    the version seen last; may be NULL.
 * @return as theus_engine_wait_signal, plus THEUS_ENOENT for an unknown field.
 * @note Private state: woken by the commits of this handle. Shared state: by every commit
 *       of any process (plain transactions included, engine or not).
 */
THEUS_API int theus_engine_wait_version(theus_engine *e, const char *field, uint64_t after,
                                        uint32_t timeout_ms, uint64_t *version);

/* ---------------------------------------------------------------------------------------
 * Audit
 * ------------------------------------------------------------------------------------ */
/** What an audit rule checks (docs/processes.md). */
typedef enum theus_audit_rule {
    THEUS_AUDIT_FINITE = 0, /**< no NaN or infinity */
    THEUS_AUDIT_MIN,        /**< every element >= value */
    THEUS_AUDIT_MAX,        /**< every element <= value */
    THEUS_AUDIT_MAX_ABS,    /**< every |element| <= value */
    THEUS_AUDIT_MAX_CHANGE  /**< every |new - old| <= value, per commit */
} theus_audit_rule;

/** One audit violation. */
typedef struct theus_audit_record {
    uint64_t seq;                      /**< 1, 2, ... over the engine's life */
    uint64_t version;                  /**< the version the commit creates (or would have) */
    char process[THEUS_NAME_MAX + 1];  /**< "" for a commit made outside the engine */
    char field[THEUS_NAME_MAX + 1];    /**< the field that broke the rule */
    theus_audit_rule rule;             /**< the rule it broke */
    char level;                        /**< 'S', 'A', 'B' or 'C' */
    int refused;                       /**< 1: the commit was refused */
    uint64_t index;                    /**< first bad element (flat, C order, in the field) */
    double value;                      /**< its value after the commit */
    uint64_t count;                    /**< level B: the violation count after this one */
} theus_audit_record;

/**
 * @brief Copy the audit records with seq >= @p from_seq that are still in the ring (on a
 *        durable state, also those of earlier engines, refilled from the log).
 * @param[in]  e        the engine.
 * @param[in]  from_seq the first sequence number wanted.
 * @param[in]  cap      room in @p out, in records.
 * @param[out] out  room for @p cap records, oldest first.
 * @param[out] n    records copied.
 * @return THEUS_OK or THEUS_EINVAL. @note Thread-safe.
 */
THEUS_API int theus_engine_audit_records(theus_engine *e, uint64_t from_seq,
                                         theus_audit_record *out, size_t cap, size_t *n);

/**
 * @brief Number of audit violations recorded for @p process (NULL: all, "" : commits made
 *        outside the engine) on @p field (NULL: all fields).
 * @param[in]  e       the engine.
 * @param[in]  process the process's name, "" or NULL; borrowed for the call.
 * @param[in]  field   the field's name or NULL; borrowed for the call.
 * @param[out] count   receives the count.
 * @return THEUS_OK; THEUS_ENOENT (unknown process or field); THEUS_EINVAL.
 */
THEUS_API int theus_engine_audit_count(theus_engine *e, const char *process, const char *field,
                                       uint64_t *count);

/** Audit counters of a process (or all, or commits made outside the engine) on a field (or
 *  all fields). They count what the ring dropped, too. */
typedef struct theus_audit_stats {
    uint64_t violations;  /**< every level */
    uint64_t level[4];    /**< by level: [0] S, [1] A, [2] B, [3] C */
    uint64_t refused;     /**< violations recorded for commits that were refused */
} theus_audit_stats;

/**
 * @brief The audit counters of @p process (NULL: all, "": commits made outside the engine)
 *        on @p field (NULL: all fields), by level.
 * @param[in]  e       the engine.
 * @param[in]  process the process's name, "" or NULL; borrowed for the call.
 * @param[in]  field   the field's name or NULL; borrowed for the call.
 * @param[out] out     receives the counters (zeroed on failure).
 * @return THEUS_OK; THEUS_ENOENT (unknown process or field); THEUS_EINVAL (NULL e or out).
 * @note Thread-safe; counters of a commit being published may be mid-update.
 */
THEUS_API int theus_engine_audit_stats(theus_engine *e, const char *process, const char *field,
                                       theus_audit_stats *out);

/* ---------------------------------------------------------------------------------------
 * Workflows (JSON, docs/processes.md)
 * ------------------------------------------------------------------------------------ */
/** A parsed workflow of an engine (opaque). */
typedef struct theus_workflow theus_workflow;

/**
 * @brief Parse a workflow and check it against the engine: process names exist, conditions
 *        name scalar fields or elements in range.
 * @param[in]  e    the engine.
 * @param[in]  json NUL-terminated JSON text; borrowed.
 * @param[out] out  the workflow (theus_workflow_free; before the engine), NULL on failure.
 * @return THEUS_OK; THEUS_ESCHEMA for a malformed workflow (the JSON path, line and column
 *         are in theus_state_last_error); THEUS_EINVAL (NULL, a name already loaded);
 *         THEUS_ENOMEM.
 * @note Thread-safe.
 */
THEUS_API int theus_workflow_load(theus_engine *e, const char *json, theus_workflow **out);
/** @brief As theus_workflow_load, from a file.
 *  @param[in]  e    the engine.
 *  @param[in]  path the workflow file; borrowed for the call.
 *  @param[out] out  as for theus_workflow_load.
 *  @return as theus_workflow_load, plus THEUS_ENOENT / THEUS_EIO. */
THEUS_API int theus_workflow_load_file(theus_engine *e, const char *path, theus_workflow **out);
/** @brief Release a workflow (not while it runs). NULL is a no-op.
 *  @param wf the workflow (consumed), or NULL. */
THEUS_API void theus_workflow_free(theus_workflow *wf);
/** @brief The workflow's "name". @param wf the workflow. @return the name (borrowed). */
THEUS_API const char *theus_workflow_name(const theus_workflow *wf);

/** What a workflow run did. */
typedef struct theus_workflow_report {
    uint64_t ops;        /**< steps and loop turns counted against max_ops */
    uint64_t runs;       /**< process runs started (retries included) */
    uint64_t failures;   /**< failed runs (also those passed over by on_error continue) */
    uint64_t resumed_at; /**< the step the run started at (the "position" field: steps
                              numbered in document order, nested ones included; 0: the start) */
    int status;          /**< the status the run returned */
    char where[128];     /**< JSON path of the step that ended it with an error, or "" */
} theus_workflow_report;

/**
 * @brief Run a workflow on its engine, on the calling thread. Conditions are evaluated on
 *        the committed state after the previous step. With a "position" field the run
 *        starts at the step the state holds, and each run step commits the id of the next
 *        step in its own transaction (so a recovered state resumes after the last step it
 *        holds; docs/processes.md, "Resuming"); a finished run leaves 0 there.
 * @param[in]  wf  the workflow.
 * @param[out] rep receives what the run did; may be NULL.
 * @return THEUS_OK; the status of a failed step (on_error stop or retries spent);
 *         THEUS_EBUSY (max_ops passed, or the engine stopped by a level-S audit rule);
 *         THEUS_EINVAL (recursion through called workflows); THEUS_ENOENT (a called
 *         workflow is not loaded, or an await step on a shared state whose name was removed);
 *         THEUS_ETIMEDOUT (an await step).
 * @note One thread per workflow at a time; different workflows may run concurrently.
 */
THEUS_API int theus_workflow_run(theus_workflow *wf, theus_workflow_report *rep);

#ifdef __cplusplus
}
#endif
#endif /* THEUS_THEUS_PROCESS_H */
