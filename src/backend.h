/* The backend interface: a table of functions plus a context, one per kind of memory
 * (ggml style), its entries grouped by role (memory, transfers, the commit, sharing). The
 * core calls only this table; the CPU backend is always present, the CUDA backend (cuda/)
 * fills the same table when a device answers. Optional entries may be NULL; backend.c
 * supplies the default or the caller checks. Every entry waits for its own work before it
 * returns (nothing is left queued), so the table has no sync or teardown entry: backends are
 * process-lifetime singletons. */
#ifndef THEUS_SRC_BACKEND_H
#define THEUS_SRC_BACKEND_H
#include "region.h"
#include "schema.h"
#include "theus/theus_gpu.h"

struct seg_batch;
struct seg_summary;

/* One element move of a commit batch: @sub of a field whose memory starts at @base and is
 * laid out as @frame, from/to the C-contiguous @payload laid out as @sub. With @batch set (a
 * described batch, seg_batch.h, staged by this backend) the op is instead the batch's
 * segments over the whole field (@frame), in order, from @payload; @sub is their bounds. */
typedef struct replay_op {
    delta_op op;
    theus_dtype dtype;
    void *base;
    const theus_region *frame;
    theus_region sub;
    const void *payload;
    const struct seg_batch *batch;
} replay_op;

/* One audit rule of a field as a backend evaluates it (schema_audit's rule and bound), and
 * what it found over the values of one written region: how many elements break it, the
 * first of them (element of the region, C order; UINT64_MAX: none) and its value. Rules
 * break as in src/process/audit.c: on the value as a double, NaN breaking every bound;
 * max_change compares |new - old|. */
typedef struct backend_audit_rule {
    int32_t rule;                /* SCHEMA_AUDIT_* */
    int32_t reserved;
    double value;
} backend_audit_rule;

typedef struct backend_audit_result {
    uint64_t count;
    uint64_t first;
    double value;
} backend_audit_result;

typedef struct theus_backend_iface {
    const char *name;
    /* ---- memory: fields and staged payloads ---- */
    /* Field memory of @nbytes for placement @pl, zeroed. */
    int  (*alloc)(void *ctx, theus_placement pl, size_t nbytes, void **out);
    void (*free)(void *ctx, theus_placement pl, void *p);
    /* Staging: memory for a payload of @nbytes that replay can read, filled from @src (a
     * buffer in @src_mem), or zeroed when @src is NULL (theus_tx_stage_buffer: the caller
     * fills it; device memory for a device field). */
    int  (*stage)(void *ctx, theus_placement pl, const void *src, theus_mem src_mem,
                  size_t nbytes, void **out);
    void (*unstage)(void *ctx, void *staged);
    /* Optional: the CUDA device ordinal of this backend's memory (NULL: 0). */
    int  (*device_id)(void *ctx);
    /* ---- transfers out of field memory ---- */
    /* Copy @sub of a field (@base laid out as @frame) into @dst, a buffer in @dst_mem laid
     * out as @sub. */
    int  (*read)(void *ctx, const void *base, const theus_region *frame, theus_dtype dt,
                 const theus_region *sub, void *dst, theus_mem dst_mem);
    /* Apply @sub of a staged @payload (laid out as @pframe) onto @dst, a buffer in
     * @dst_mem laid out as @dframe: the read-your-writes overlay and the gatekeeper's
     * post-commit values. */
    int  (*overlay)(void *ctx, theus_dtype dt, delta_op op, void *dst, const theus_region *dframe,
                    theus_mem dst_mem, const void *payload, const theus_region *pframe,
                    const theus_region *sub);
    /* ---- the commit: replay and the gatekeeper's checks ---- */
    /* Apply a whole commit batch, in order. Must not fail half-way: a backend that can fail
     * reports before it changes anything, or the core treats the state as broken. */
    int  (*replay)(void *ctx, const replay_op *ops, size_t n);
    /* Optional: constraint check of @n staged elements; NULL means dtype_check on host. */
    int  (*check)(void *ctx, theus_dtype dt, const void *staged, size_t n,
                  const theus_constraints *c, size_t *bad_index);
    /* Optional (NULL: the core's host loop, for values in host memory): evaluate @nrules
     * audit rules on @n elements of @dt at @cur — the values a commit would write, in this
     * backend's device memory (staged with stage(NULL)), C-contiguous — and, for rate
     * rules, @old (same layout: the committed values; NULL when no rule needs it). One
     * result per rule into @out (host memory): the only transfer back. */
    int  (*audit)(void *ctx, theus_dtype dt, const void *cur, const void *old, size_t n,
                  const backend_audit_rule *rules, size_t nrules, backend_audit_result *out);
    /* ---- described batches (theus_tx_stage_batch) ---- */
    /* Optional (NULL: the core's host path, for backends whose memory the CPU reaches): copy
     * @nsegs segments and @pelems payload elements of @dt, both in @mem, into this backend's
     * memory, and validate and summarise them there for a field of @nelems elements. The
     * caller sets up @sum (block geometry and a zeroed touched bitmap); the backend fills
     * the rest. *@bad: the first invalid segment, or SIZE_MAX; when there is one, nothing
     * stays staged. The staged segments and payload are freed with unstage. */
    int  (*stage_batch)(void *ctx, theus_dtype dt, uint64_t nelems,
                        const theus_batch_segment *segs, size_t nsegs, const void *payload,
                        size_t pelems, theus_mem mem, struct seg_summary *sum, size_t *bad,
                        void **staged_segs, void **staged_payload);
    /* Optional (NULL: the gatekeeper computes them on the host, from a read and the batch's
     * overlay): the values the described batch @b (staged by stage_batch, payload @payload)
     * with @op leaves on the flat elements [b->sum.lo, b->sum.hi) of the field at @field,
     * starting from the field's bytes now, written to memory this backend's check entry
     * reads (*@out, freed with unstage). For constrained fields. */
    int  (*batch_result)(void *ctx, theus_dtype dt, delta_op op, const void *field,
                         const struct seg_batch *b, const void *payload, void **out);
    /* ---- stream-ordered commits (theus_tx_commit_on_stream) ---- */
    /* Optional (NULL: the core replays synchronously). Enqueue the replay of @ops on
     * @stream (a cudaStream_t as void *; NULL the legacy default stream), after the work the
     * caller queued there and after every replay this backend enqueued before, and return
     * without waiting. *@fence completes with the replay (release it with fence_release).
     * Like replay, it reports what it can before anything is enqueued; what fails once the
     * stream runs surfaces at fence_wait. While enqueued replays may be unfinished, this
     * backend orders its own later work on field memory after them. */
    int  (*replay_on_stream)(void *ctx, const replay_op *ops, size_t n, void *stream,
                             void **fence);
    /* @stream NULL: wait on the host until @fence completed, THEUS_EDEVICE (detail recorded)
     * when its replay failed. Otherwise order @stream after @fence and return at once
     * (THEUS_EDEVICE only for an error that has already surfaced). */
    int  (*fence_wait)(void *ctx, void *fence, void *stream);
    void (*fence_release)(void *ctx, void *fence);
    /* Wait on the host for the work queued on @stream so far (the payload a caller's kernel
     * writes before a commit that must read it on the host: gatekeeper, WAL). */
    int  (*stream_sync)(void *ctx, void *stream);
    /* ---- sharing between processes ---- */
    /* Optional, for states shared between processes (NULL: not supported, and the core
     * places such fields in host memory instead, or refuses them without fallback). */
    /* Export device field memory from alloc (the whole allocation) as an IPC handle of
     * THEUS_IPC_HANDLE_BYTES bytes that another process can open. */
    int  (*ipc_export)(void *ctx, void *ptr, void *handle);
    /* Map, in this process, memory exported by another process; once per handle and
     * process (the core keeps the mapping); ipc_close unmaps it. */
    int  (*ipc_open)(void *ctx, const void *handle, void **ptr);
    void (*ipc_close)(void *ctx, void *ptr);
    /* Make @nbytes of host memory at @ptr (shared memory, page aligned) page-locked and
     * reachable by kernels at the same address, as pinned memory from alloc is. */
    int  (*host_register)(void *ctx, void *ptr, size_t nbytes);
    void (*host_unregister)(void *ctx, void *ptr);
} theus_backend_iface;

/* Bytes of an IPC handle (cudaIpcMemHandle_t's size). */
#define THEUS_IPC_HANDLE_BYTES 64

typedef struct theus_backend {
    const theus_backend_iface *iface;
    void *ctx;
} theus_backend;

/* The CPU backend (always available; a static singleton). */
const theus_backend *backend_cpu(void);
/* Threads the CPU backend's replay of this batch would use (1: the calling thread alone):
 * replay_pool_threads() for a batch large enough to share out, else 1. */
int backend_cpu_replay_threads(const replay_op *ops, size_t n);
/* memcpy whose whole destination cache lines are written with streaming (non-temporal)
 * stores on x86-64 (plain memcpy elsewhere); cpu_stream_fence() makes them visible. The
 * CPU replay's copy into fields larger than the LLC, and theus-bench's streaming ceiling. */
void cpu_copy_stream(void *dst, const void *src, size_t n);
void cpu_stream_fence(void);
/* The last-level cache one core can use: sysfs's cpu0 index3 (per CCX on AMD, where sysconf
 * reports the whole socket's), else sysconf, else 32 MiB. Reads the files on every call. */
size_t cpu_llc_bytes(void);
/* The CPU replay's thresholds, for tests and measurements (0 in a member: its default). */
typedef struct backend_cpu_tuning {
    size_t parallel_min;       /* batches of fewer payload bytes replay on one thread */
    size_t parallel_min_seg;   /* ... and batches whose ops average fewer bytes */
    size_t stream_min;         /* copies into fields of this many bytes take streaming stores
                                  (default: the last-level cache size) */
} backend_cpu_tuning;
/* Set the thresholds (NULL: all defaults). Process-wide; not for use while a replay runs. */
void backend_cpu_set_tuning(const backend_cpu_tuning *t);
/* The CUDA backend, or NULL when it is not built or no device answers. */
const theus_backend *backend_cuda(void);

/* Element @i of @n staged elements (in this backend's staging memory) as a double. */
int backend_get(const theus_backend *b, theus_dtype dt, const void *staged, size_t n, size_t i,
                double *out);

/* The wrapper that supplies the default for the optional check entry. */
int backend_check(const theus_backend *b, theus_dtype dt, const void *staged, size_t n,
                  const theus_constraints *c, size_t *bad_index);

/* The audit evaluation of @n values at @cur (and @old) in @mem: THEUS_MEM_DEVICE goes to the
 * backend's audit entry (THEUS_EINVAL when it has none), THEUS_MEM_HOST to the host loop.
 * THEUS_OK or the backend's error. */
int backend_audit(const theus_backend *b, theus_mem mem, theus_dtype dt, const void *cur,
                  const void *old, size_t n, const backend_audit_rule *rules, size_t nrules,
                  backend_audit_result *out);

#endif
