/* The host side of the GPU replay: turn a batch of transfers into the replay kernel's
 * descriptors (kernels/replay_desc.h), ordered into waves where transfers overlap. Plain C
 * with no CUDA dependency, so that it is built and tested on every machine; the CUDA
 * backend uploads what it produces.
 *
 * Cost: O(n) for a batch whose destinations are disjoint and in address order; an LSD
 * radix sort of the destination spans (O(n)) otherwise; exact overlap tests only between
 * transfers whose byte spans meet, and at most O(n log n) however many meet (beyond a few
 * dozen candidates a transfer is ordered after every earlier one whose span meets it, which
 * may cost a wave but never correctness). No allocation when the plan's buffers are large enough
 * already (a plan is reused from call to call). */
#ifndef THEUS_CUDA_REPLAY_PLAN_H
#define THEUS_CUDA_REPLAY_PLAN_H

#include "region.h"
#include "../kernels/replay_desc.h"

#include <stddef.h>
#include <stdint.h>

/* One element move: @sub of @src (laid out as @sframe) onto @dst (laid out as @dframe).
 * Addresses are only stored, never dereferenced: they may be device addresses. */
typedef struct replay_xfer {
    delta_op op;
    theus_dtype dtype;
    void *dst;
    const theus_region *dframe;
    const void *src;
    const theus_region *sframe;
    const theus_region *sub;
} replay_xfer;

/* A plan and the buffers it reuses. Zero-initialise before the first build. The arrays
 * below are valid after a successful build until the next build, trim or release. */
typedef struct replay_plan {
    /* Input: nonzero plans every batch wide (tests compare the two forms). */
    int wide_only;
    /* Output. */
    theus_replay_wave *waves;
    uint32_t nwaves;             /* 0: nothing to move */
    theus_replay_desc *descs;    /* in wave order; first_chunk numbered across waves (only
                                    when !compact) */
    size_t ndescs;               /* transfers planned (those that move something) */
    theus_replay_dim *dims;
    size_t ndims;
    uint64_t total_chunks;
    uint64_t max_wave_chunks;
    /* The compact form (replay_desc.h), when @compact (then descs and dims are not
     * written): one 16-byte segment per transfer and chunk (segs[c] is chunk c, in the
     * waves' numbering; a wave's desc and chunk ranges are the same) and the groups they
     * name. */
    int compact;
    theus_replay_seg *segs;
    theus_replay_group *groups;
    size_t ngroups;
    /* Reused buffers (private). */
    size_t waves_cap, descs_cap, dims_cap, tmp_cap, segs_cap, groups_cap, segs_tmp_cap;
    theus_replay_seg *segs_tmp;  /* segments in batch order when waves reorder them */
    theus_replay_desc *tmp;      /* descriptors in batch order when waves reorder them */
    void *scratch;               /* one block for the per-transfer arrays below */
    size_t scratch_cap;          /* transfers it has room for */
    uint64_t *lo, *hi;           /* destination byte spans, batch order */
    uint64_t *key, *key2;        /* radix sort */
    uint32_t *idx, *idx2;
    uint32_t *live;              /* transfer index of each descriptor, batch order */
    uint32_t *wave;
    uint32_t *pos;
    uint32_t *tree_at, *tree_over; /* segment trees of waves (2 n entries each) */
} replay_plan;

/* Plan the @n transfers @t (in batch order: where destinations overlap, a later transfer
 * must see the earlier one's result). Transfers that move nothing are dropped. The plan is
 * compact (and only compact) when every transfer is one contiguous run of at most
 * THEUS_REPLAY_COMPACT_MAX_CHUNKS chunks and the groups fit, unless @wide_only; otherwise
 * wide (a batch found not to fit is planned again, wide). Returns
 * THEUS_OK, THEUS_ENOMEM (the plan's output is then empty, its buffers valid), or
 * THEUS_EINVAL for a batch beyond the descriptors' limits (over 2^32 - 1 transfers, or a
 * row of over 2^32 - 1 chunks); errors are also set as the thread's last error. Not
 * thread-safe for one plan; distinct plans are independent. */
int replay_plan_build(replay_plan *p, const replay_xfer *t, size_t n);

/* Fill @out with plan @p when it is compact, one wave, and small enough to be the kernel's
 * argument (THEUS_REPLAY_INLINE_SEGS segments, THEUS_REPLAY_INLINE_GROUPS groups): returns
 * 1, else 0 (@out untouched). */
int replay_plan_inline(const replay_plan *p, theus_replay_inline *out);

/* Bytes the plan's upload takes: waves, then segments and groups (compact) or descriptors
 * and dims (wide). */
size_t replay_plan_upload_bytes(const replay_plan *p);
/* Write the upload (replay_plan_upload_bytes of it) into @dst: waves, then the compact
 * segments and groups, or the descriptors and dims; the offsets of the second and third
 * arrays from @dst go to *@off2 and *@off3. */
void replay_plan_upload(const replay_plan *p, unsigned char *dst, size_t *off2, size_t *off3);

/* Bytes of buffers the plan holds. */
size_t replay_plan_footprint(const replay_plan *p);

/* Give the buffers back when they hold more than @keep bytes (a big batch should not pin
 * its planning memory forever). The output arrays become invalid. */
void replay_plan_trim(replay_plan *p, size_t keep);

/* Free everything; the plan is zero afterwards (but for @wide_only) and can be built
 * again. */
void replay_plan_release(replay_plan *p);

#endif /* THEUS_CUDA_REPLAY_PLAN_H */
