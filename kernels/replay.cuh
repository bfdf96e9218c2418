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

#ifdef __cplusplus
}
#endif

#endif /* THEUS_KERNELS_REPLAY_CUH */
