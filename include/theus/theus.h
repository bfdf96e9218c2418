/** @file
 * theus: a transactional state runtime for tensors — the public C API.
 * Every name and code here is a contract (see docs/guide.md); nothing in this header
 * depends on CUDA or jansson. */
#ifndef THEUS_THEUS_H
#define THEUS_THEUS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden symbols; what this header and theus_shared.h,
 * theus_dlpack.h declare is what it exports. */
#if defined(__GNUC__)
#define THEUS_API __attribute__((visibility("default")))
#else
#define THEUS_API
#endif

#define THEUS_VERSION_MAJOR 0 /**< major version of this header (incompatible changes) */
#define THEUS_VERSION_MINOR 1 /**< minor version (additions) */
#define THEUS_VERSION_PATCH 0 /**< patch version (fixes) */

/** Most dimensions a field may have (a scalar has 0). */
#define THEUS_MAX_DIMS 8
/** Longest field or state name, in bytes, without the terminating NUL. */
#define THEUS_NAME_MAX 63

/* ---------------------------------------------------------------------------------------
 * Status codes. Every fallible call returns THEUS_OK or one of these; they are never
 * renumbered. THEUS_ECONFLICT is an expected outcome of optimistic concurrency, not a bug.
 * ------------------------------------------------------------------------------------ */
#define THEUS_OK         0  /**< success */
#define THEUS_EINVAL    -1  /**< misuse: bad argument, bad region, wrong rank, unknown option */
#define THEUS_ENOMEM    -2  /**< an allocation failed; nothing was changed */
#define THEUS_ECONFLICT -3  /**< a concurrent commit touched what this transaction relies on */
#define THEUS_ESCHEMA   -4  /**< a schema is malformed, or a commit breaks a field constraint */
#define THEUS_EPERM     -5  /**< a process contract or a const zone forbids the access */
#define THEUS_ENOENT    -6  /**< no such field or file */
#define THEUS_EIO       -7  /**< reading or writing a file failed */
#define THEUS_EDEVICE   -8  /**< the GPU runtime reported an error */
#define THEUS_ENODEV    -9  /**< a GPU placement was asked for, no GPU answers, fallback is off */
#define THEUS_EBUSY    -10  /**< the operation is not allowed now (retry budget spent, state in use) */
#define THEUS_ECORRUPT -11  /**< stored data failed a magic, version or checksum test */

/** @brief Name of a status code ("THEUS_ECONFLICT: ..."); never NULL, static storage.
 *  @param status THEUS_OK or a THEUS_E* code.
 *  @return the name and a short meaning; "unknown theus status" for other values.
 *  @note Thread-safe. */
THEUS_API const char *theus_strerror(int status);

/* ---------------------------------------------------------------------------------------
 * Enumerations (numbered in the order of docs/guide.md, from 0).
 * ------------------------------------------------------------------------------------ */
/** Element types of fields: the safetensors set, in this order (docs/schema.md). */
typedef enum theus_dtype {
    THEUS_DTYPE_BOOL = 0, THEUS_DTYPE_U8, THEUS_DTYPE_I8, THEUS_DTYPE_U16, THEUS_DTYPE_I16,
    THEUS_DTYPE_U32, THEUS_DTYPE_I32, THEUS_DTYPE_U64, THEUS_DTYPE_I64, THEUS_DTYPE_F16,
    THEUS_DTYPE_BF16, THEUS_DTYPE_F32, THEUS_DTYPE_F64,
    THEUS_DTYPE_COUNT   /**< the number of dtypes (not a dtype) */
} theus_dtype;

/** Where a field's memory lives: GPU memory, page-locked host memory, plain host memory. */
typedef enum theus_placement {
    THEUS_PLACEMENT_DEVICE = 0, THEUS_PLACEMENT_PINNED, THEUS_PLACEMENT_HOST
} theus_placement;

/** What a field is for: persisted data (default), transient signals, observability
 *  values, or constants written only at creation or load. */
typedef enum theus_zone {
    THEUS_ZONE_DATA = 0, THEUS_ZONE_SIGNAL, THEUS_ZONE_META, THEUS_ZONE_CONST
} theus_zone;

/** How a commit is checked against the commits since its transaction began. */
typedef enum theus_isolation {
    THEUS_ISOLATION_SERIALIZABLE = 0, /**< write and read sets validated (default) */
    THEUS_ISOLATION_SNAPSHOT,         /**< write-write conflicts only */
    THEUS_ISOLATION_STRICT            /**< any commit after the base version conflicts */
} theus_isolation;

/** Where a caller's buffer lives. THEUS_MEM_DEVICE needs the CUDA backend. */
typedef enum theus_mem { THEUS_MEM_HOST = 0, THEUS_MEM_DEVICE = 1 } theus_mem;

/** @brief Name of a dtype. @param dt a dtype.
 *  @return the lower-case name ("f32"; static storage), or NULL for an out-of-range value.
 *  @note Thread-safe. */
THEUS_API const char *theus_dtype_name(theus_dtype dt);
/** @brief Size of one element. @param dt a dtype.
 *  @return bytes per element (bool is one byte), or 0 for an out-of-range value. */
THEUS_API size_t theus_dtype_size(theus_dtype dt);
/** @brief Name of a placement. @param p a placement.
 *  @return "device", "pinned" or "host" (static storage), or NULL for an out-of-range value. */
THEUS_API const char *theus_placement_name(theus_placement p);
/** @brief Name of a zone. @param z a zone.
 *  @return "data", "signal", "meta" or "const" (static storage), or NULL for an out-of-range
 *          value. */
THEUS_API const char *theus_zone_name(theus_zone z);

/** @brief Whether GPU placements can be honoured.
 *  @return 1 when the CUDA backend is built and a device answers, else 0.
 *  @note Thread-safe; the answer is found once per process (THEUS_DISABLE_GPU=1 makes it 0). */
THEUS_API int theus_gpu_available(void);

/* ---------------------------------------------------------------------------------------
 * Allocation hooks (process-wide, as in jansson). Every host allocation theus makes —
 * states, transactions, staged payloads, host fields — goes through them.
 * ------------------------------------------------------------------------------------ */
/** An allocation function: as malloc(3), NULL when out of memory. */
typedef void *(*theus_malloc_fn)(size_t size);
/** A release function: as free(3), NULL is a no-op. */
typedef void (*theus_free_fn)(void *ptr);

/** @brief Route theus's host allocations through @p m and @p f (NULL, NULL: libc's).
 *  @param m the allocation function, or NULL.
 *  @param f the matching release function, or NULL.
 *  @return THEUS_OK, or THEUS_EINVAL when exactly one of them is NULL.
 *  @note Not thread-safe: call it before any state exists; memory allocated with one pair
 *        is freed with that same pair only if the pair is not changed while it lives. */
THEUS_API int theus_set_alloc_funcs(theus_malloc_fn m, theus_free_fn f);

/* ---------------------------------------------------------------------------------------
 * States
 * ------------------------------------------------------------------------------------ */
/** A state: named fields, a schema and a version (opaque; theus_state_create). */
typedef struct theus_state theus_state;
/** A transaction on a state (opaque; theus_tx_begin, consumed by commit and abort). */
typedef struct theus_tx theus_tx;

/** Options for creating a state. Start from THEUS_STATE_OPTIONS_INIT. */
typedef struct theus_state_options {
    /** 1 (default): a device/pinned field on a machine without a usable GPU lives in host
     *  memory and theus_field_info reports THEUS_PLACEMENT_HOST. 0: creation fails with
     *  THEUS_ENODEV instead. */
    int allow_fallback;
    /** Capacity of the commit log in region entries (0: 4096). A transaction whose base is
     *  older than the log reaches conflicts if a field it touches changed since its base. */
    uint32_t commit_log_capacity;
    /** How long, in milliseconds, a starving transaction of theus_tx_run may hold the
     *  priority lease that keeps other committers waiting (0: 100 ms). */
    uint32_t priority_lease_ms;
} theus_state_options;

/** Initializer of theus_state_options: every member at its default. */
#define THEUS_STATE_OPTIONS_INIT {1, 0, 0}

/** What theus_state_field_info reports; everything comes from the host shadow descriptor. */
typedef struct theus_field_info {
    theus_dtype dtype;           /**< element type */
    int ndim;                    /**< number of dimensions (0: a scalar) */
    int64_t shape[THEUS_MAX_DIMS]; /**< extent of each of the @c ndim dimensions */
    size_t nbytes;               /**< size of the field in bytes */
    theus_placement placement;   /**< where it really lives (after any fallback) */
    theus_zone zone;             /**< the field's zone */
    uint64_t version;            /**< version of the last commit that wrote it (1: never written) */
    theus_placement requested;   /**< the placement the schema asked for */
    int has_min;                 /**< 1: the schema sets a minimum (@c min) */
    int has_max;                 /**< 1: the schema sets a maximum (@c max) */
    int finite;                  /**< 1: values must be finite (no NaN or infinity) */
    double min;                  /**< the minimum, when @c has_min */
    double max;                  /**< the maximum, when @c has_max */
} theus_field_info;

/**
 * @brief Create a state from a JSON schema (see docs/schema.md).
 * @param[in]  schema_json NUL-terminated JSON text; borrowed for the call.
 * @param[in]  opts        options, or NULL for THEUS_STATE_OPTIONS_INIT.
 * @param[out] out         receives the new state (owned by the caller: theus_state_destroy),
 *                         or NULL on any failure.
 * @return THEUS_OK; THEUS_ESCHEMA for a malformed schema (the detail, with the JSON path,
 *         line and column, is in theus_last_error_message()); THEUS_ENODEV when a GPU
 *         placement cannot be honoured and opts->allow_fallback is 0; THEUS_ENOMEM;
 *         THEUS_EINVAL for NULL arguments or bad options.
 * @note Thread-safe. Fields start zeroed, every field version and the state version are 1.
 */
THEUS_API int theus_state_create(const char *schema_json, const theus_state_options *opts,
                       theus_state **out);

/** @brief As theus_state_create, reading the schema from the file at @p schema_path.
 *  @param[in]  schema_path path of a JSON schema file; borrowed for the call.
 *  @param[in]  opts        as for theus_state_create, or NULL.
 *  @param[out] out         as for theus_state_create.
 *  @return as theus_state_create, plus THEUS_ENOENT / THEUS_EIO when the file cannot be read. */
THEUS_API int theus_state_create_from_file(const char *schema_path, const theus_state_options *opts,
                                 theus_state **out);

/** @brief Destroy a state and every field's memory. NULL is a no-op. For a shared state
 *  (theus/theus_shared.h) it detaches this handle only: the state lives on for the other
 *  handles and processes, and goes with the last of them.
 *  @param st the state (consumed), or NULL.
 *  @note No other thread may use the state, and every transaction on it must have been
 *        committed or aborted before. */
THEUS_API void theus_state_destroy(theus_state *st);

/** @brief Current version of a state. @param st the state.
 *  @return the version: 1 after creation; each successful commit adds 1 (0 for NULL).
 *  @note Thread-safe. */
THEUS_API uint64_t theus_state_version(const theus_state *st);

/** @brief The schema's "name". @param st the state.
 *  @return the name (borrowed; lives as long as the state). */
THEUS_API const char *theus_state_name(const theus_state *st);

/** @brief Number of fields. @param st the state.
 *  @return how many fields the schema declares. @note Thread-safe. */
THEUS_API size_t theus_state_field_count(const theus_state *st);
/** @brief Name of a field, in the order of the schema.
 *  @param st the state.
 *  @param i  index from 0 to theus_state_field_count() - 1.
 *  @return the name (borrowed; lives as long as the state), or NULL when @p i is out of
 *          range. @note Thread-safe. */
THEUS_API const char *theus_state_field_name(const theus_state *st, size_t i);

/** @brief Describe a field.
 *  @param[in]  st    the state.
 *  @param[in]  field the field's name; borrowed for the call.
 *  @param[out] out   receives the description.
 *  @return THEUS_OK, THEUS_ENOENT for an unknown field, THEUS_EINVAL for NULL arguments.
 *  @note Thread-safe; answers from the host shadow descriptor without touching a GPU. */
THEUS_API int theus_state_field_info(const theus_state *st, const char *field, theus_field_info *out);

/**
 * @brief Set the whole content of a field before the state's first commit (creation time):
 *        the only way a `const` field gets its value.
 * @param[in] st      the state.
 * @param[in] field   the field's name; borrowed for the call.
 * @param[in] src     C-contiguous buffer of the field's shape and dtype; borrowed for the call.
 * @param[in] src_mem where @p src lives (THEUS_MEM_DEVICE needs the CUDA backend).
 * @return THEUS_OK; THEUS_EBUSY once a commit has happened; THEUS_ENOENT; THEUS_EINVAL;
 *         THEUS_ESCHEMA when the values break the field's constraints (field unchanged).
 * @note Not to be called while another thread uses the state.
 */
THEUS_API int theus_state_init_field(theus_state *st, const char *field, const void *src, theus_mem src_mem);

/** @brief Detail text of the last failed call the calling thread made on @p st.
 *  @param st the state, or NULL for the last failed state creation.
 *  @return the text, "" if none. Borrowed: valid until that thread's next theus call.
 *  @note Thread-safe: each thread sees its own last error. */
THEUS_API const char *theus_state_last_error(const theus_state *st);
/** @brief Detail text of the calling thread's last failed theus call, on any state.
 *  @return the text, "" if none; borrowed until that thread's next theus call.
 *  @note Never format this text into a new theus error message yourself while calling
 *        theus: copy it first. */
THEUS_API const char *theus_last_error_message(void);

/** Counters, for observability. */
typedef struct theus_stats {
    uint64_t commits;        /**< successful commits that wrote something */
    uint64_t conflicts;      /**< commits and reads refused with THEUS_ECONFLICT */
    uint64_t aborts;         /**< transactions aborted (explicitly or by a failed commit) */
    uint64_t schema_refusals;/**< commits refused by the gatekeeper */
    uint64_t retries;        /**< extra attempts made by theus_tx_run */
    uint64_t priority_runs;  /**< attempts theus_tx_run made under the priority lease */
} theus_stats;

/** @brief Copy the state's counters into @p out (of all processes, for a shared state).
 *  @param[in]  st  the state.
 *  @param[out] out receives the counters.
 *  @return THEUS_OK or THEUS_EINVAL. Thread-safe. */
THEUS_API int theus_state_stats(const theus_state *st, theus_stats *out);

/* ---------------------------------------------------------------------------------------
 * Regions and conflicts
 * ------------------------------------------------------------------------------------ */
/** A hyperrectangle: per dimension [start, stop). ndim must equal the field's rank. */
typedef struct theus_region {
    int ndim;                        /**< number of dimensions used */
    int64_t start[THEUS_MAX_DIMS];   /**< first index of each dimension (inclusive) */
    int64_t stop[THEUS_MAX_DIMS];    /**< end of each dimension (exclusive) */
} theus_region;

/** Why a commit or a read was refused with THEUS_ECONFLICT. */
typedef enum theus_conflict_kind {
    THEUS_CONFLICT_NONE = 0,    /**< no conflict */
    THEUS_CONFLICT_WRITE_WRITE, /**< a staged ASSIGN overlaps a region written since the base */
    THEUS_CONFLICT_READ_WRITE,  /**< a read region was written since the base (serializable) */
    THEUS_CONFLICT_STRICT,      /**< strict isolation: some commit happened since the base */
    THEUS_CONFLICT_STALE_BASE   /**< no longer reported (a base older than the commit log is
                                     decided by the per-field block map); kept for numbering */
} theus_conflict_kind;

/** What a THEUS_ECONFLICT was about. */
typedef struct theus_conflict {
    theus_conflict_kind kind;       /**< what kind of conflict */
    char field[THEUS_NAME_MAX + 1]; /**< "" for STRICT */
    theus_region region;            /**< the region written by the intervening commit */
    uint64_t version;               /**< the version of that commit */
    uint64_t base;                  /**< the transaction's base version */
} theus_conflict;

/** @brief The conflict behind the calling thread's last THEUS_ECONFLICT on @p st.
 *  @param[in]  st  the state.
 *  @param[out] out receives the conflict.
 *  @return THEUS_OK, or THEUS_ENOENT when the thread's last failed call on @p st was not a
 *          conflict. @note Thread-safe (per thread, like theus_state_last_error). */
THEUS_API int theus_last_conflict(const theus_state *st, theus_conflict *out);

/* ---------------------------------------------------------------------------------------
 * Process contracts
 * ------------------------------------------------------------------------------------ */
/** A process's declared access: field names or fnmatch(3) globs. All borrowed for the call
 *  to theus_tx_begin (the transaction keeps its own copy). */
typedef struct theus_contract {
    const char *name;                /**< the process's name (in messages and the audit) */
    const char *const *inputs;       /**< fields it may read (names or globs) */
    size_t n_inputs;                 /**< entries of @c inputs */
    const char *const *outputs;      /**< fields it may read and write */
    size_t n_outputs;                /**< entries of @c outputs */
} theus_contract;

/* ---------------------------------------------------------------------------------------
 * Transactions
 * ------------------------------------------------------------------------------------ */
/** Options of theus_tx_begin. Start from THEUS_TX_OPTIONS_INIT. */
typedef struct theus_tx_options {
    int isolation;                     /**< theus_isolation; default serializable */
    const theus_contract *contract;    /**< NULL: no contract (all non-const fields writable) */
} theus_tx_options;

/** Initializer of theus_tx_options: serializable, no contract. */
#define THEUS_TX_OPTIONS_INIT {THEUS_ISOLATION_SERIALIZABLE, NULL}

/**
 * @brief Begin a transaction at the state's current version.
 * @param[in]  st   the state.
 * @param[in]  opts options, or NULL for THEUS_TX_OPTIONS_INIT; borrowed for the call.
 * @param[out] out the transaction, owned by the caller until theus_tx_commit/abort consume it.
 * @return THEUS_OK, THEUS_EINVAL (NULL argument, bad isolation, bad contract), THEUS_ENOMEM.
 * @note Thread-safe; the transaction itself must be used by one thread at a time.
 */
THEUS_API int theus_tx_begin(theus_state *st, const theus_tx_options *opts, theus_tx **out);

/** @brief Base version of a transaction. @param tx the transaction.
 *  @return the state version when it began. */
THEUS_API uint64_t theus_tx_base(const theus_tx *tx);

/**
 * @brief Read a region: the bytes of the committed version at the base, overlaid with this
 *        transaction's own staged writes and adds (read your writes). Never torn.
 * @param[in]  tx      the transaction.
 * @param[in]  field   the field's name; borrowed for the call.
 * @param[in]  r       region, or NULL for the whole field.
 * @param[out] dst     C-contiguous buffer of the region's shape in the field's dtype.
 * @param[in]  dst_mem where @p dst lives (THEUS_MEM_DEVICE needs the CUDA backend).
 * @return THEUS_OK; THEUS_ECONFLICT when the region was written after the base (details in
 *         theus_last_conflict); THEUS_EPERM (contract); THEUS_ENOENT; THEUS_EINVAL (bad or
 *         rank-mismatched region, NULL buffer, dst_mem unsupported); THEUS_ENOMEM.
 * @note On failure the transaction is unchanged and still usable.
 */
THEUS_API int theus_tx_read(theus_tx *tx, const char *field, const theus_region *r, void *dst,
                  theus_mem dst_mem);

/** @brief Stage an overwrite of a region with @p src (copied now; borrowed for the call).
 *  @param tx      the transaction.
 *  @param field   the field's name; borrowed for the call.
 *  @param r       region, or NULL for the whole field.
 *  @param src     C-contiguous buffer of the region's shape in the field's dtype.
 *  @param src_mem where @p src lives (THEUS_MEM_DEVICE needs the CUDA backend).
 *  @return THEUS_OK; THEUS_EPERM (contract or const zone); THEUS_ENOENT; THEUS_EINVAL;
 *          THEUS_ENOMEM. Bounds, rank, contract and zone are checked here, not at commit.
 *  @note On failure the transaction is unchanged and still usable. */
THEUS_API int theus_tx_write(theus_tx *tx, const char *field, const theus_region *r, const void *src,
                   theus_mem src_mem);

/** @brief Stage an element-wise add of @p src to a region (in the field's dtype; f16/bf16
 *  in f32 rounded to nearest even; integers wrap; bool is logical or).
 *  @param tx, field, r, src, src_mem as for theus_tx_write.
 *  @return as theus_tx_write. */
THEUS_API int theus_tx_add(theus_tx *tx, const char *field, const theus_region *r, const void *src,
                 theus_mem src_mem);

/**
 * @brief Commit: gatekeeper, CAS version guard with region conflicts, replay, publish.
 *        Consumes @p tx whatever the outcome.
 * @param[in]  tx the transaction (consumed).
 * @param[out] committed_version the new state version (the base for a transaction that wrote
 *             nothing); may be NULL.
 * @return THEUS_OK; THEUS_ECONFLICT (theus_last_conflict tells why); THEUS_ESCHEMA (a
 *         constraint failed); THEUS_ENOMEM; THEUS_EINVAL for a NULL tx. On any failure the
 *         state is unchanged.
 */
THEUS_API int theus_tx_commit(theus_tx *tx, uint64_t *committed_version);

/** @brief Drop a transaction and everything it staged. NULL is a no-op.
 *  @param tx the transaction (consumed), or NULL. */
THEUS_API void theus_tx_abort(theus_tx *tx);

/* ---------------------------------------------------------------------------------------
 * Zero copy for GPU code
 * ------------------------------------------------------------------------------------ */
/** The operation a staging buffer will be committed as. */
typedef enum theus_delta_op { THEUS_OP_ASSIGN = 0, THEUS_OP_ADD = 1 } theus_delta_op;

/**
 * @brief Stage a delta whose payload the caller fills in place: returns a zeroed buffer of
 *        the region's shape in the field's dtype, in the field's memory (device memory for a
 *        device field, host memory otherwise), for example for the caller's own kernel.
 * @param[in]  tx    the transaction.
 * @param[in]  field the field's name; borrowed for the call.
 * @param[in]  r     region, or NULL for the whole field.
 * @param[in]  op    THEUS_OP_ASSIGN or THEUS_OP_ADD: how the buffer will be committed.
 * @param[out] buf receives the buffer; owned by the transaction, valid until commit/abort
 *             (or longer while a DLPack export of it lives).
 * @param[out] mem receives THEUS_MEM_DEVICE or THEUS_MEM_HOST; may be NULL.
 * @return THEUS_OK; THEUS_EPERM; THEUS_ENOENT; THEUS_EINVAL (bad region or op, empty region);
 *         THEUS_ENOMEM; THEUS_EDEVICE.
 * @note Work that fills the buffer must be complete (synchronize its stream) before the
 *       transaction reads that region or commits; the gatekeeper checks the contents then.
 */
THEUS_API int theus_tx_stage_buffer(theus_tx *tx, const char *field, const theus_region *r,
                          theus_delta_op op, void **buf, theus_mem *mem);

/**
 * @brief Stage an overwrite of a region whose payload is borrowed from the caller until the
 *        transaction is committed or aborted: no copy at staging, one copy (the replay) at
 *        commit.
 * @param[in] tx      the transaction.
 * @param[in] field   the field's name; borrowed for the call.
 * @param[in] r       region, or NULL for the whole field.
 * @param[in] src_mem where @p src lives.
 * @param[in] src C-contiguous buffer of the region's shape in the field's dtype, in
 *            @p src_mem. Borrowed: it must stay allocated and unchanged until theus_tx_commit
 *            or theus_tx_abort of @p tx returns (theus never frees it). Reads of the region in
 *            this transaction, the gatekeeper and the replay all read it there.
 * @return THEUS_OK; THEUS_EPERM (contract or const zone); THEUS_ENOENT; THEUS_EINVAL (NULL
 *         argument, bad region, unknown @p src_mem); THEUS_ENOMEM; THEUS_EDEVICE. On failure
 *         the transaction is unchanged and nothing is borrowed.
 * @note Borrowing applies when the replay can read the buffer in place: the field lives in
 *       host memory under the CPU backend (a host field, or a device/pinned field fallen back
 *       to host memory), @p src is host memory and is aligned to the dtype's size. Otherwise
 *       (a field in GPU or pinned memory, a device buffer, an unaligned buffer) the payload is
 *       copied now, exactly as by theus_tx_write, and @p src is free again when the call
 *       returns. Either way the caller's obligation above is the same, so code need not know
 *       which happened. Another thread may read @p src meanwhile; none may write it. See
 *       docs/threading.md, "Borrowed payloads".
 */
THEUS_API int theus_tx_write_borrowed(theus_tx *tx, const char *field, const theus_region *r,
                                      const void *src, theus_mem src_mem);

/** @brief Stage an element-wise add of a borrowed @p src to a region: theus_tx_add's
 *  arithmetic with theus_tx_write_borrowed's ownership, errors and conditions.
 *  @param tx, field, r, src, src_mem as for theus_tx_write_borrowed.
 *  @return as theus_tx_write_borrowed. */
THEUS_API int theus_tx_add_borrowed(theus_tx *tx, const char *field, const theus_region *r,
                                    const void *src, theus_mem src_mem);

/** Flag of theus_tx_stage_regions / theus_tx_stage_segments: borrow the packed payload
 *  (same rules as theus_tx_write_borrowed) instead of copying it. */
#define THEUS_STAGE_BORROW 1u

/** A run of @c length elements of a field from element @c offset, the field read as one
 *  C-ordered array of all its elements (any rank; a scalar has one element). The layout
 *  is plain integers so that a list of segments can equally be written by a kernel into
 *  device memory (device-described batches). */
typedef struct theus_segment {
    int64_t offset;   /**< first element of the run */
    int64_t length;   /**< number of elements */
} theus_segment;

/**
 * @brief Stage writes (or adds) of many regions of one field from one packed payload: the
 *        regions' bytes one after the other, each C-contiguous in its region's shape, in the
 *        order of @p regions. Each region becomes an ordinary delta, so the batch behaves
 *        exactly as that many theus_tx_write / theus_tx_add calls in that order (overlaps
 *        included: later regions apply over earlier ones), at the cost of one call.
 * @param[in] tx            the transaction.
 * @param[in] field         the field's name; borrowed for the call.
 * @param[in] op            THEUS_OP_ASSIGN (writes) or THEUS_OP_ADD (adds).
 * @param[in] nregions      number of regions, at least 1.
 * @param[in] src_mem       where @p payload lives.
 * @param[in] regions       @p nregions regions of @p field (borrowed for the call); empty
 *                          regions are allowed and stage nothing.
 * @param[in] payload       the packed bytes, @p payload_bytes of them, in @p src_mem; copied
 *                          now in one piece, or borrowed with THEUS_STAGE_BORROW.
 * @param[in] payload_bytes must equal the regions' elements times the dtype's size.
 * @param[in] flags         0 or THEUS_STAGE_BORROW.
 * @return THEUS_OK; THEUS_EINVAL (NULL argument, @p nregions 0, a region out of bounds or of
 *         the wrong rank, a size mismatch, unknown @p op, flags or @p src_mem; the message
 *         names the region); THEUS_EPERM (contract or const zone); THEUS_ENOENT;
 *         THEUS_ENOMEM; THEUS_EDEVICE. On failure nothing is staged and the transaction is
 *         unchanged and usable.
 * @note Host work: one growth of the transaction's delta array and at most one staging copy
 *       per call, whatever @p nregions. Threads and ownership as theus_tx_write (copied) or
 *       theus_tx_write_borrowed (THEUS_STAGE_BORROW).
 */
THEUS_API int theus_tx_stage_regions(theus_tx *tx, const char *field, theus_delta_op op,
                                     const theus_region *regions, size_t nregions,
                                     const void *payload, size_t payload_bytes,
                                     theus_mem src_mem, unsigned flags);

/**
 * @brief As theus_tx_stage_regions, with the targets given as element runs of the flattened
 *        field (@p segs, a host array of @p nsegs, borrowed for the call). The packed payload
 *        holds each segment's @c length elements in turn. A segment that crosses rows of a
 *        multi-dimensional field is staged as up to 2·ndim−1 region deltas.
 * @param tx, field, op, payload, payload_bytes, src_mem, flags as for theus_tx_stage_regions.
 * @param segs  the element runs; borrowed for the call.
 * @param nsegs number of runs, at least 1.
 * @return as theus_tx_stage_regions (a segment with a negative offset or length, or past the
 *         field's last element, is THEUS_EINVAL naming it).
 */
THEUS_API int theus_tx_stage_segments(theus_tx *tx, const char *field, theus_delta_op op,
                                      const theus_segment *segs, size_t nsegs,
                                      const void *payload, size_t payload_bytes,
                                      theus_mem src_mem, unsigned flags);

/**
 * @brief Raw read-only pointer to a committed field, for kernels (device fields), or host
 *        code (host and pinned fields). The bytes change in place at every commit that writes
 *        the field: bracket use with theus_state_hold_commits / theus_state_release_commits
 *        to see a single version.
 * @param[in]  st    the state.
 * @param[in]  field the field's name; borrowed for the call.
 * @param[out] ptr base of the C-contiguous field; borrowed, valid while the state lives.
 * @param[out] mem where it lives (THEUS_MEM_DEVICE for device fields); may be NULL.
 * @return THEUS_OK, THEUS_ENOENT, THEUS_EINVAL. @note Thread-safe.
 */
THEUS_API int theus_state_field_ptr(const theus_state *st, const char *field, const void **ptr,
                          theus_mem *mem);

/** @brief Keep commits from replaying until theus_state_release_commits (reads go on).
 *  Shared: many threads may hold it at once. Work launched on a field while held must have
 *  completed before release. Must not be held by a thread that commits (it would deadlock).
 *  @param st the state.
 *  @return THEUS_OK or THEUS_EINVAL. */
THEUS_API int theus_state_hold_commits(theus_state *st);
/** @brief Undo one theus_state_hold_commits of the calling thread. @param st the state. */
THEUS_API void theus_state_release_commits(theus_state *st);

/* ---------------------------------------------------------------------------------------
 * Retry helper
 * ------------------------------------------------------------------------------------ */
/** A transaction body: read and stage through @p tx, return THEUS_OK to commit. Any other
 *  value aborts; THEUS_ECONFLICT from a read is retried, anything else is returned. The
 *  body must not commit or abort @p tx itself, and may run several times. */
typedef int (*theus_tx_body)(theus_tx *tx, void *user);

/** Options of theus_tx_run. Start from THEUS_RETRY_OPTIONS_INIT. */
typedef struct theus_retry_options {
    theus_tx_options tx;       /**< options of every attempt */
    uint32_t max_attempts;     /**< 0: 64 */
    uint32_t max_time_ms;      /**< wall-clock bound over all attempts; 0: 10000 */
    uint32_t backoff_min_us;   /**< first backoff; 0: 2 */
    uint32_t backoff_max_us;   /**< cap of the exponential backoff; 0: 2000 */
    uint32_t priority_after;   /**< failed attempts before running under the priority
                                    lease; 0: 8; UINT32_MAX: never */
} theus_retry_options;

/** Initializer of theus_retry_options: every member at its default. */
#define THEUS_RETRY_OPTIONS_INIT {THEUS_TX_OPTIONS_INIT, 0, 0, 0, 0, 0}

/**
 * @brief Run @p body in a transaction until it commits, retrying on THEUS_ECONFLICT with
 *        exponential backoff and full jitter. After opts->priority_after failed attempts the
 *        body runs under the state's priority lease: other commits wait (at most the lease)
 *        so a starving transaction gets through.
 * @param[in]  st   the state.
 * @param[in]  opts options, or NULL for THEUS_RETRY_OPTIONS_INIT; borrowed for the call.
 * @param[in]  body the transaction body; may run several times.
 * @param[in]  user passed to @p body as is.
 * @param[out] committed_version as theus_tx_commit; may be NULL.
 * @return THEUS_OK; the body's own error; THEUS_EBUSY when attempts or time ran out (the
 *         last conflict stays in theus_last_conflict); any error of begin/commit.
 * @note Thread-safe; each call uses its own transactions.
 */
THEUS_API int theus_tx_run(theus_state *st, const theus_retry_options *opts, theus_tx_body body,
                 void *user, uint64_t *committed_version);

#ifdef __cplusplus
}
#endif
#endif /* THEUS_THEUS_H */
