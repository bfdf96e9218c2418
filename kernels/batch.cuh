/* Launchers of the described-batch kernel family (kernels/batch.cu): the summary of a segment
 * array in device memory, and its replay. Plain C, so that the C files of cuda/ can include
 * it; the layouts are in batch_desc.h. */
#ifndef THEUS_KERNELS_BATCH_CUH
#define THEUS_KERNELS_BATCH_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "batch_desc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Summarise the @n segments at device address @segs for a field of @nelems elements of
 * @esize bytes and a payload of @pelems elements: *@res (device memory, set by
 * theus_batch_result_init beforehand) and the touched-block bitmap @bits (device memory,
 * (nblocks + 63) / 64 zeroed words, blocks of 1 << @shift bytes). Asynchronous on @stream;
 * returns the launch status. */
cudaError_t theus_batch_summary_launch(const theus_batch_segment *segs, uint64_t n,
                                       uint64_t nelems, uint64_t pelems, uint32_t esize,
                                       uint32_t shift, unsigned long long *bits,
                                       theus_batch_result *res, int max_blocks,
                                       cudaStream_t stream);

/* Apply the @n valid segments at device address @segs onto @field (device-visible, dtype
 * @dtype) from @payload, ADD when @add, else copies. @ordered: the segments may overlap (two
 * touch one block), so they run one after the other in one block of threads; otherwise
 * they run in parallel, a warp per segment. Asynchronous on @stream. */
cudaError_t theus_batch_apply_launch(int dtype, int add, void *field, const void *payload,
                                     const theus_batch_segment *segs, uint64_t n, int ordered,
                                     int max_blocks, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* THEUS_KERNELS_BATCH_CUH */
