/* Described batches (theus_tx_stage_batch, theus/theus_gpu.h): one delta whose payload comes
 * with an array of segments (destination element, length, payload element) over the
 * flattened field, applied in array order. This module holds the batch's host record, its
 * summary (bounds and touched blocks, for the version guard and the commit log), and the
 * host loops that apply it (replay on the CPU backend, read-your-writes overlays). */
#ifndef THEUS_SRC_SEG_BATCH_H
#define THEUS_SRC_SEG_BATCH_H

#include "block_map.h"
#include "region.h"
#include "theus/theus_gpu.h"

#include <stddef.h>
#include <stdint.h>

/* The summary's blocks are the block map's (block_map_geometry: 4 KiB, coarser for fields
 * above 1 GiB), so that a batch marks and probes the map block for block. */

typedef struct seg_summary {
    uint64_t lo, hi;           /* element bounds of what the batch writes, [lo, hi); lo == hi:
                                  nothing */
    uint64_t total;            /* elements written, overlaps counted as often as they occur */
    uint64_t nonempty;         /* segments with length > 0 */
    uint32_t shift;            /* log2 of the block size in bytes */
    uint64_t nblocks;          /* blocks of the field */
    uint64_t *touched;         /* nblocks bits: block b holds an element a segment writes */
    int shared_blocks;         /* some block is touched by two segments (they may overlap) */
} seg_summary;

typedef struct seg_batch {
    theus_batch_segment *segs; /* host copy (CPU backend); NULL when staged by the backend */
    void *dev_segs;            /* the segments in the backend's memory (stage_batch), or NULL */
    size_t nsegs;
    uint64_t payload_elems;
    seg_summary sum;
} seg_batch;

/* Check @n host segments against a field of @nelems elements of @esize bytes and a payload of
 * @payload_elems elements. Returns SIZE_MAX when all are valid, else the index of the first
 * invalid one (a negative member, or a range outside the field or the payload). */
size_t seg_validate(const theus_batch_segment *s, size_t n, uint64_t nelems,
                    uint64_t payload_elems);

/* Words of the touched-block bitmap of a field of @nelems elements of @esize bytes. */
size_t seg_summary_words(uint64_t nelems, size_t esize);
/* The summary of @n valid segments into @out, its bitmap in @touched (seg_summary_words of
 * it, the caller's memory; zeroed here). */
void seg_summarize(const theus_batch_segment *s, size_t n, uint64_t nelems, size_t esize,
                   uint64_t *touched, seg_summary *out);

/* The smallest region of a field of rank @ndim and @shape holding the flat elements [lo, hi)
 * (lo < hi; a scalar field: the whole). */
void seg_bounds_region(int ndim, const int64_t *shape, uint64_t lo, uint64_t hi,
                       theus_region *out);

/* A new host record holding a copy of @segs (host memory) and its summary, all in one
 * allocation. NULL when out of memory. */
seg_batch *seg_batch_new(const theus_batch_segment *segs, size_t n, uint64_t payload_elems,
                         uint64_t nelems, size_t esize);
/* A record for a batch that the backend stages itself (stage_batch): no host segments, the
 * summary's geometry set and its bitmap zeroed for the backend to fill; one allocation. */
seg_batch *seg_batch_new_staged(size_t n, uint64_t payload_elems, uint64_t nelems, size_t esize);
/* Free the host record (the caller unstages dev_segs first). */
void seg_batch_free(seg_batch *b);

/* Record in the field's block map @m that @version wrote the blocks batch @b touches (the
 * caller excludes other writers: commit lock). */
void seg_batch_mark(const seg_batch *b, const block_map *m, uint64_t version);
/* Whether a block that batch @b touches was written after @base; then *version is one such
 * version. Exact to the block. */
int seg_batch_probe(const seg_batch *b, const block_map *m, uint64_t base, uint64_t *version);

/* The read-your-writes overlay: apply the part of batch @b that falls inside @frame (a region
 * of a field of rank @ndim and @shape) onto @buf, a host buffer laid out as @frame, in
 * segment order. */
void seg_batch_overlay(const seg_batch *b, theus_dtype dt, delta_op op, int ndim,
                       const int64_t *shape, void *buf, const theus_region *frame,
                       const void *payload);

#endif /* THEUS_SRC_SEG_BATCH_H */
