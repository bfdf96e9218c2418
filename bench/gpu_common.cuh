/* Shared by theus-bench's GPU scenarios (gpu_scn_*.cu, gpu_machine.cu): the process-wide GPU
 * resources (stream, events, L2 flush buffer), the check macros, event timing, the memory
 * helpers, the reference kernels and the set-up every scenario repeats (a state with one
 * device field, staging a batch of segments, a timed commit). CUDA C++; the C files see only
 * gpu.h. */
#ifndef THEUS_BENCH_GPU_COMMON_CUH
#define THEUS_BENCH_GPU_COMMON_CUH

#include <cuda_runtime.h>

#include "bench.h"
#include "gpu.h"
#include "theus/theus.h"
#include "theus/theus_gpu.h"

#include <stddef.h>
#include <stdint.h>

typedef struct gpu_res {
    int init;                      /* 0: not tried, 1: ready, -1: failed */
    int device;
    int sms;
    cudaStream_t s;
    cudaEvent_t e0, e1;
    void *flush;
    size_t flush_bytes;
    unsigned flush_gen;
    unsigned long long *cmp;       /* device: mismatch count, first mismatching word */
    int batch_na;                  /* cudaMemcpyBatchAsync unusable in this process */
    char batch_why[160];
} gpu_res;

extern gpu_res G;
/* The scenario errors are reported under (each scn_gpu_* sets it first). */
extern const char *gpu_scn;

/* Report a failed CUDA call under gpu_scn; -1. */
int cuda_fail(cudaError_t e, const char *what, const char *file, int line);
/* Report a failed theus call under gpu_scn; -1. */
int theus_fail(int rc, const char *what);

/* Return -1 from the enclosing function when a CUDA call fails (reported). */
#define CK(call)                                                                          \
    do {                                                                                  \
        cudaError_t ck_e_ = (call);                                                       \
        if (ck_e_ != cudaSuccess)                                                         \
            return cuda_fail(ck_e_, #call, __FILE__, __LINE__);                           \
    } while (0)

/* Return -1 from the enclosing function when a theus call fails (reported). */
#define CKT(call, what)                                                                   \
    do {                                                                                  \
        int ckt_rc_ = (call);                                                             \
        if (ckt_rc_ != THEUS_OK)                                                          \
            return theus_fail(ckt_rc_, what);                                             \
    } while (0)

/* Stream, events and buffers, once per process; 0 or -1. */
int gpu_init(void);

/* Sampling for the GPU scenarios: at least 10 samples, few more (the sweep is long). */
typedef struct saved_cfg {
    unsigned mn, mx;
    double sec, tol;
} saved_cfg;
saved_cfg cfg_push(void);
void cfg_pop(saved_cfg s);

/* ---- kernels ---- */
static __device__ __forceinline__ float4 add4(float4 a, float4 b)
{
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
    return a;
}
/* Blocks for @items work items of @per_block a block, at most @max_per_sm a multiprocessor. */
unsigned grid_for(size_t items, unsigned per_block, unsigned max_per_sm);
/* Streaming copy / add (d += s) of @bytes (a multiple of 16) on G.s. */
int launch_copy(void *d, const void *s, size_t bytes);
int launch_add(void *d, const void *s, size_t bytes);
/* launch_add without the error check (the per-segment loop baseline checks once at its end). */
void enqueue_add(void *d, const void *s, size_t bytes);
/* Compare @bytes of two device buffers word by word: the mismatch count (0: identical), and
 * the first mismatching 4-byte word in @first. -1 on a CUDA error. */
long long dev_compare(const void *a, const void *b, size_t bytes, size_t *first);

/* ---- timing (CUDA events on G.s) ---- */
/* Enqueue the L2 flush (when asked) and the start event; the caller enqueues the work. */
int t_begin(int flush);
/* The same, for a synchronous host call: the flush finishes first, then the start event is
 * recorded on the idle stream, so that it is stamped as the call begins. */
int t_begin_sync(int flush);
int t_end(double *secs);
bench_op mkop(void *ctx, int (*prep)(void *), int (*run_timed)(void *, double *));
double gbps(double bytes, double secs);

/* ---- memory ---- */
/* Host buffer for reading fields back: pinned when possible (faster), pageable otherwise. */
void *host_alloc(size_t bytes, int *pinned);
void host_free(void *p, size_t bytes, int pinned);
void dev_free(void *p);
/* The largest field, at most @want, for which @ndev field-sized device buffers (plus 1 GiB of
 * slack for theus's staging, descriptors and cub) fit in the free device memory and @nhost
 * host buffers in the available host memory. 0 when not even 16 MiB fit. */
size_t fit_gpu_field(size_t want, int ndev, int nhost);

/* ---- theus set-up shared by the scenarios ---- */
/* Read @r of @field into host memory @dst in a transaction of its own; 0 or -1. */
int read_field(theus_state *st, const char *field, const theus_region *r, void *dst);
/* A state with one device field "x" of f32[@nelems], set to @init (host; NULL: zeros). */
int device_state(size_t nelems, const float *init, theus_state **st);
/* Abort *@tx if there is one, begin a new transaction on @st and stage the @n segments
 * @segs of field "x" (1-D f32 regions; ADD when @add, else writes) from the device payload
 * @payload. 0, or -1 with *@tx NULL. */
int gpu_stage_segs(theus_state *st, theus_tx **tx, int add, const bench_seg *segs, size_t n,
                   const char *payload);
/* Commit *@tx (taken: *@tx becomes NULL), timed as a synchronous call with L2 flushed. */
int gpu_commit_timed(theus_tx **tx, double *secs);

#endif /* THEUS_BENCH_GPU_COMMON_CUH */
