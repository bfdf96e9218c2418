/* Launcher of the replay kernel family (kernels/replay.cu): copy or add many strided
 * sub-regions in one launch. Plain C, so that cuda/backend_cuda.c can include it; the
 * descriptor layout below is shared by the host packing code and the kernel. */
#ifndef THEUS_KERNELS_REPLAY_CUH
#define THEUS_KERNELS_REPLAY_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Work is cut into chunks of at most this many bytes; one warp handles one chunk at a
 * time. A multiple of 16 (the vector width) and of every element size. */
#define THEUS_REPLAY_CHUNK_BYTES 16384u
/* Threads per block of the replay kernel. */
#define THEUS_REPLAY_BLOCK 256

/* One outer (non-folded) dimension of a transfer; strides in bytes. */
typedef struct theus_replay_dim {
    int64_t ext;
    int64_t dst_stride;
    int64_t src_stride;
} theus_replay_dim;

/* One transfer: @nrows rows of @run contiguous elements, row r at
 * dst + sum_d idx_d(r) * dims[d].dst_stride (same for src), idx in C order over the
 * @nouter dims starting at dims[@dims]. Rows of at least a chunk are split into @pieces
 * chunks; shorter rows are grouped, @rows_per_chunk to a chunk (then @pieces is 0). */
typedef struct theus_replay_desc {
    uint64_t dst;            /* device-visible byte address of the first element */
    uint64_t src;
    uint64_t run;            /* elements per contiguous row */
    uint64_t nrows;
    uint64_t first_chunk;    /* global index of this transfer's first chunk */
    uint32_t pieces;
    uint32_t rows_per_chunk;
    uint32_t dims;
    uint8_t nouter;          /* 0 .. THEUS_MAX_DIMS - 1 */
    uint8_t dtype;           /* theus_dtype */
    uint8_t op;              /* 0: assign, 1: add (delta_op) */
    uint8_t pad;
} theus_replay_desc;

/* Transfers [desc_begin, desc_end) touch pairwise disjoint elements and run concurrently;
 * waves run one after the other. Their chunks are [chunk_begin, chunk_end). */
typedef struct theus_replay_wave {
    uint64_t desc_begin, desc_end;
    uint64_t chunk_begin, chunk_end;
} theus_replay_wave;

/* Whether the kernel can run on the current device (a missing kernel image shows here, not
 * at the first commit), and how many of its blocks fit on the device at once. */
cudaError_t theus_replay_probe(int *max_resident_blocks);

/* Run @nwaves waves (device arrays @waves, @descs, @dims) on @stream, in order. One
 * launch: several waves are separated by grid-wide barriers of a cooperative launch when
 * @cooperative is non-zero, otherwise each wave gets its own launch. @max_wave_chunks (the
 * largest chunk count of a wave) and @max_resident_blocks size the grid. Asynchronous;
 * returns the launch status (the runtime's error state is cleared). */
cudaError_t theus_replay_launch(const theus_replay_wave *waves, uint32_t nwaves,
                                const theus_replay_desc *descs, const theus_replay_dim *dims,
                                uint64_t max_wave_chunks, int max_resident_blocks,
                                int cooperative, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* THEUS_KERNELS_REPLAY_CUH */
