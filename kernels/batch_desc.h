/* Described batches on the device: the summary's layout and the decoding of one segment
 * (validity, the blocks it touches), plain C99 shared by the kernels (kernels/batch.cu) and
 * the CPU tests (tests/test_batch.c runs these very functions against the CPU backend's
 * summary), so that the device's answer is checked without a GPU. */
#ifndef THEUS_KERNELS_BATCH_DESC_H
#define THEUS_KERNELS_BATCH_DESC_H

#include <stdint.h>

#include "theus/theus_gpu.h"

#if defined(__CUDACC__)
#define THEUS_BD_FN static __host__ __device__ __forceinline__
#else
#define THEUS_BD_FN static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* What the summary kernel leaves in device memory (copied back in one transfer with the
 * touched-block bitmap). Every member is a 64-bit word so that the kernel updates it with
 * 64-bit atomics. */
typedef struct theus_batch_result {
    uint64_t bad;        /* first invalid segment (atomic min); UINT64_MAX: none */
    uint64_t lo, hi;     /* element bounds of the non-empty segments (atomic min / max) */
    uint64_t total;      /* elements written */
    uint64_t nonempty;   /* non-empty segments */
    uint64_t shared;     /* nonzero: two segments touch one block */
} theus_batch_result;

#if !defined(__cplusplus)
_Static_assert(sizeof(theus_batch_segment) == 24, "segment layout read by the kernels");
_Static_assert(sizeof(theus_batch_result) == 48, "summary layout shared with batch.cu");
#endif

THEUS_BD_FN void theus_batch_result_init(theus_batch_result *r)
{
    r->bad = UINT64_MAX;
    r->lo = UINT64_MAX;
    r->hi = 0;
    r->total = 0;
    r->nonempty = 0;
    r->shared = 0;
}

/* Whether segment @s fits a field of @nelems elements and a payload of @pelems. */
THEUS_BD_FN int theus_batch_seg_ok(const theus_batch_segment *s, uint64_t nelems, uint64_t pelems)
{
    if (s->dst < 0 || s->length < 0 || s->src < 0)
        return 0;
    const uint64_t d = (uint64_t)s->dst, l = (uint64_t)s->length, p = (uint64_t)s->src;
    return d <= nelems && l <= nelems - d && p <= pelems && l <= pelems - p;
}

/* The blocks (of 1 << @shift bytes) a valid non-empty segment touches: [*b0, *b1]. */
THEUS_BD_FN void theus_batch_seg_blocks(const theus_batch_segment *s, uint32_t esize,
                                        uint32_t shift, uint64_t *b0, uint64_t *b1)
{
    const uint64_t a = (uint64_t)s->dst * esize;
    *b0 = a >> shift;
    *b1 = (a + (uint64_t)s->length * esize - 1) >> shift;
}

/* The bits of bitmap word @w that blocks [b0, b1] cover. */
THEUS_BD_FN uint64_t theus_batch_word_mask(uint64_t w, uint64_t b0, uint64_t b1)
{
    uint64_t m = ~(uint64_t)0;
    if (w == b0 >> 6)
        m &= ~(uint64_t)0 << (b0 & 63);
    if (w == b1 >> 6 && (b1 & 63) != 63)
        m &= ((uint64_t)1 << ((b1 & 63) + 1)) - 1;
    return m;
}

#ifdef __cplusplus
}
#endif

#endif /* THEUS_KERNELS_BATCH_DESC_H */
