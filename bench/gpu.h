/* theus-bench's GPU side, as the C files see it: no CUDA type here. With CUDA (THEUS_WITH_CUDA)
 * gpu_common.cu, gpu_scn_*.cu and gpu_machine.cu implement it; without, gpu_none.c answers "not built" for everything. */
#ifndef THEUS_BENCH_GPU_H
#define THEUS_BENCH_GPU_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The GPU as recorded with every report (machine record, JSON "gpu_detail"). */
typedef struct gpu_info {
    int built;                /* theus-bench compiled with its CUDA scenarios */
    int present;              /* a device answered (and theus_gpu_available() = 1) */
    int device;               /* CUDA ordinal measured */
    char name[96];
    char driver[96];          /* kernel driver version (/proc/driver/nvidia/version) */
    int driver_api;           /* cudaDriverGetVersion, e.g. 13000 */
    int runtime;              /* cudaRuntimeGetVersion */
    int cc_major, cc_minor;
    int sms;
    size_t mem_total;
    size_t l2_bytes;
    int mem_clock_khz, bus_width_bits, ecc;
    double peak_gbps;         /* 2 x memory clock x bus width (DDR), 0 when not reported */
    double copy_gbps;         /* measured: streaming copy kernel, bytes read + written / s */
    double memcpy_gbps;       /* measured: cudaMemcpyAsync device to device, read + written / s */
    char note[160];           /* why the GPU is not used, when it is not */
} gpu_info;

/* Describe the GPU (and measure its copy bandwidth once); safe without one. */
void gpu_collect(gpu_info *g);

/* The GPU variants of the scenarios. Each returns 0, or -1 when it stopped on an error
 * (already reported through note_error). Only called when theus_gpu_available() = 1. */
int scn_gpu_replay(int add);
int scn_gpu_commit_latency(void);
int scn_gpu_commit_scaling(void);
int scn_gpu_stage_h2d(void);

/* Release what the GPU scenarios keep between scenarios (stream, events, flush buffer). */
void gpu_shutdown(void);

/* ---- glue to theus's internal CUDA backend (gpu_glue.c; plain C, no CUDA types) ---- */
/* One segment of a replay batch, for the CPU and the GPU scenarios alike. */
typedef struct bench_seg {
    uint64_t off;             /* byte offset in the field */
    uint64_t poff;            /* byte offset in the packed payload */
    uint32_t size;            /* bytes, a multiple of 64 */
} bench_seg;

/* A batch of f32 replay ops (ASSIGN, or ADD when @add) for backend_cuda(), onto the field at
 * @field (device memory, @nelems floats) from the device payload @payload. NULL when out of
 * memory. */
void *glue_ops_new(int add, void *field, size_t nelems, const bench_seg *segs, size_t n,
                   const void *payload);
void glue_ops_free(void *ops);
/* backend_cuda()->iface->replay of the batch (synchronous: returns when the GPU is done).
 * THEUS_OK, or a theus status (detail in theus_last_error_message()). */
int glue_replay(void *ops, size_t n);

#ifdef __cplusplus
}
#endif
#endif
