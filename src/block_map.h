/* The block map: per field, the version of the last commit that wrote each block of its
 * bytes. It answers the conflict questions the commit log cannot (a base older than the
 * log, a batch too large to log region by region) exactly to the block: a region conflicts
 * when a block it touches was written after the base. Pointer-free (an array of versions
 * in the state's header block, addressed per field by index), so shared states have it too.
 *
 * Granularity: blocks of 4 KiB (BLOCK_MAP_MIN_SHIFT) for fields up to BLOCK_MAP_CAP blocks
 * (1 GiB); a larger field gets blocks of nbytes / BLOCK_MAP_CAP rounded up to a power of
 * two (2 GiB: 8 KiB, 4 GiB: 16 KiB ...). Memory: 8 bytes per block, so at most 1/512 of the
 * field's bytes plus 8, and never more than 2 MiB per field. Cost: marking or probing a
 * region is O(contiguous runs of the region + blocks it touches). */
#ifndef THEUS_SRC_BLOCK_MAP_H
#define THEUS_SRC_BLOCK_MAP_H
#include "region.h"
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define BLOCK_MAP_MIN_SHIFT 12u          /* 4 KiB */
#define BLOCK_MAP_CAP ((uint64_t)1 << 18) /* blocks per field at most */

/* One field's view of the map. */
typedef struct block_map {
    _Atomic uint64_t *v;   /* nblocks versions */
    uint64_t nblocks;
    uint32_t shift;        /* log2 of the block size in bytes */
    uint32_t esize;        /* element size in bytes */
    int ndim;
    const int64_t *shape;
} block_map;

/* Block size (as a shift) and number of blocks for a field of @nbytes bytes. */
void block_map_geometry(uint64_t nbytes, uint32_t *shift, uint64_t *nblocks);
/* Record that @version wrote @r (the same result however often it runs). The caller
 * excludes other writers (commit lock). */
void block_map_mark(const block_map *m, const theus_region *r, uint64_t version);
/* Whether a block that @r touches was written after @base; then *version is one such
 * version (the first found in address order). Safe against a concurrent mark (relaxed atomics): a reader validates what
 * it saw with the replay sequence, as for the field bytes. */
int block_map_probe(const block_map *m, const theus_region *r, uint64_t base, uint64_t *version);

#endif
