/**
 * @file theus_gpu.h
 * @brief Batches described in caller memory (segment arrays a kernel can write) and
 *        stream-ordered commits. No CUDA type appears here: a CUDA stream is passed as
 *        `void *` (a `cudaStream_t` cast to a pointer). See docs/gpu.md, "Device-described
 *        batches" and "Stream-ordered commits".
 */
#ifndef THEUS_GPU_H
#define THEUS_GPU_H

#include "theus/theus.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** One segment of a described batch: @c length elements of the field, the field read as one
 *  C-ordered array of all its elements (any rank; a scalar has one element), from element
 *  @c dst on, taken from the payload from element @c src on. Three plain 64-bit integers
 *  (24 bytes, no padding), so that a kernel can write an array of them in device memory. */
typedef struct theus_batch_segment {
    int64_t dst;     /**< first element of the field written */
    int64_t length;  /**< elements; 0 is allowed and stages nothing */
    int64_t src;     /**< first element of the payload read */
} theus_batch_segment;

/**
 * @brief Stage, for one field, a batch of segments described by an array in caller memory:
 *        segment k writes (or adds) payload elements [src, src + length) onto field elements
 *        [dst, dst + length). Segments apply in array order, overlaps included (a later
 *        segment applies over an earlier one, and ADDs accumulate in that order), with the
 *        same arithmetic as theus_tx_write / theus_tx_add (ADD on every dtype; f16/bf16 add in
 *        f32 and round to nearest even), and the whole batch sits in the transaction's order
 *        among its other deltas.
 * @param[in] tx            the transaction.
 * @param[in] field         the field's name.
 * @param[in] op            THEUS_OP_ASSIGN or THEUS_OP_ADD.
 * @param[in] segs          @p nsegs segments, in @p mem. Copied by the call.
 * @param[in] nsegs         number of segments (at least 1).
 * @param[in] payload       @p payload_elems elements of the field's dtype, in @p mem. Copied by
 *                          the call (both buffers are free again when it returns).
 * @param[in] payload_elems elements of @p payload; every segment must lie inside it.
 * @param[in] mem           where @p segs and @p payload live: THEUS_MEM_HOST, or
 *                          THEUS_MEM_DEVICE (device memory, for a field in GPU memory).
 * @return THEUS_OK; THEUS_EINVAL (NULL argument, @p nsegs 0, unknown @p op or @p mem, a
 *         segment with a negative member or outside the field or the payload — the message
 *         names the first such segment —, a shared state (its redo record does not carry
 *         batches yet), or device arrays for a field in host memory); THEUS_EPERM (contract
 *         or const zone);
 *         THEUS_ENOENT; THEUS_ENOMEM; THEUS_EDEVICE (a CUDA error). On failure nothing is
 *         staged and the transaction is unchanged and usable.
 * @note Host work: for a field in host memory, one pass over the segments (validation and
 *       the summary below) and one copy of each array; for a field in GPU memory, none per
 *       segment: the arrays are copied into device memory, validated and summarised there by
 *       a kernel, and the summary comes back in one small transfer (that path is compiled
 *       but has not run on a GPU yet: docs/gpu.md). The summary — element bounds and the
 *       touched blocks, in the block map's geometry (4 KiB, coarser above 1 GiB fields) — is
 *       what the version guard, the commit log and the block map use: conflicts are exact to
 *       the block; ADD batches never conflict. Fields with constraints: the commit checks
 *       the values the batch leaves on the elements its segments write (payload elements no
 *       segment reads are not checked); a refusal (THEUS_ESCHEMA) names the flat element.
 *       Where the field lives in GPU memory and the batch is the field's only delta in the
 *       transaction, those values are computed and checked on the GPU (the constraint
 *       kernels); otherwise on the host, from a read and the batch's overlay. Device arrays
 *       are copied on theus's own stream: they must be complete when the call is made
 *       (synchronize the stream your kernel wrote them on first). Threads and ownership as
 *       theus_tx_write: one thread uses @p tx.
 */
THEUS_API int theus_tx_stage_batch(theus_tx *tx, const char *field, theus_delta_op op,
                                   const theus_batch_segment *segs, size_t nsegs,
                                   const void *payload, size_t payload_elems, theus_mem mem);

/**
 * @brief Commit with the replay ordered on the caller's stream: the gatekeeper and the
 *        version guard decide at once on the host, the version is published, and the replay
 *        of fields in GPU memory is enqueued on @p stream — after the work already queued
 *        there (a payload your kernel writes into a theus_tx_stage_buffer buffer on @p stream
 *        needs no synchronization first) — and the call returns without waiting for it.
 * @param[in]  tx                the transaction; consumed, whatever the outcome.
 * @param[in]  stream            a `cudaStream_t` as `void *`, or NULL (the legacy default
 *                               stream). Ignored by the CPU backend.
 * @param[out] committed_version the version created (NULL ok).
 * @return as theus_tx_commit; also THEUS_EDEVICE when an earlier stream-ordered replay of
 *         this state failed (see below: nothing is committed then).
 * @note Semantics. The version (theus_state_version, the field versions, the commit log and
 *       the block map) is published when the call returns; the bytes arrive in stream order.
 *       Everything theus does with the bytes orders after the replay: work you queue on
 *       @p stream afterwards; theus_tx_read (waits on the host), later commits (their replay
 *       runs after it on the GPU), theus_state_field_ptr, the DLPack exports and
 *       theus_state_hold_commits (and so checkpoints) wait on the host before they return;
 *       theus_state_wait orders another stream or the host. Kernels of yours on *another*
 *       stream that read field memory must be ordered with theus_state_wait(st, stream).
 * @note Errors. A replay error that surfaces only once the stream runs (a fault in the
 *       kernel) is kept by the state for good, since the published version's bytes are then
 *       unknown: every call that waits for the replay (theus_state_wait, theus_tx_read,
 *       theus_state_field_ptr, the DLPack exports, theus_state_hold_commits) returns
 *       THEUS_EDEVICE naming the version, and every later commit is refused with it.
 *       (A CUDA kernel fault also leaves the process's CUDA context unusable.)
 * @note Synchronous fallback: the CPU backend, a shared state (its replay runs through its
 *       redo record) and fields with no GPU replay replay at once, as theus_tx_commit.
 *       When the commit must read the payloads on the host — constrained fields (the
 *       gatekeeper) or a state with publish listeners (durability, audit) — the call first
 *       waits for @p stream, then enqueues the replay. The CUDA path is compiled, not yet
 *       run on a GPU (docs/gpu.md). Threads: as theus_tx_commit.
 */
THEUS_API int theus_tx_commit_on_stream(theus_tx *tx, void *stream, uint64_t *committed_version);

/**
 * @brief Order @p stream (NULL: the calling host thread) after every replay that
 *        theus_tx_commit_on_stream enqueued on @p st so far, and report a replay error.
 * @param[in] st     the state.
 * @param[in] stream a `cudaStream_t` as `void *`, or NULL to wait on the host.
 * @return THEUS_OK; THEUS_EINVAL (NULL @p st); THEUS_EDEVICE (a replay failed: the error is
 *         kept and returned by every later call, see theus_tx_commit_on_stream). With a
 *         stream, only an error that has already surfaced is seen; NULL waits and sees all.
 * @note Returns at once when nothing was enqueued (the CPU backend). Thread-safe.
 */
THEUS_API int theus_state_wait(theus_state *st, void *stream);

#ifdef __cplusplus
}
#endif
#endif /* THEUS_GPU_H */
