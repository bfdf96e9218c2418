/* Launcher of the replay kernel family (kernels/replay.cu): copy or add many strided
 * sub-regions in one launch. Plain C, so that the C files of cuda/ can include it; the
 * descriptor layout is in replay_desc.h, shared by the host planner and the kernel. */
#ifndef THEUS_KERNELS_REPLAY_CUH
#define THEUS_KERNELS_REPLAY_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "replay_desc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Threads per block of the replay kernel. */
#define THEUS_REPLAY_BLOCK 256

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

/* The compact form (replay_desc.h): @segs (one a chunk, numbered as the waves count
 * chunks) and their @groups; @max_wave_segs is the largest segment count of a wave. The
 * rest as theus_replay_launch. */
cudaError_t theus_replay_compact_launch(const theus_replay_wave *waves, uint32_t nwaves,
                                        const theus_replay_seg *segs,
                                        const theus_replay_group *groups, uint64_t max_wave_segs,
                                        int max_resident_blocks, int cooperative,
                                        cudaStream_t stream);

/* A small single-wave compact batch passed by value (no device memory read but the
 * payloads and fields it names). Asynchronous; returns the launch status. */
cudaError_t theus_replay_inline_launch(const theus_replay_inline *b, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* THEUS_KERNELS_REPLAY_CUH */
