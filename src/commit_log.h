/* The commit log: a bounded ring of the regions written by recent commits, used by the
 * CAS guard to tell a real conflict from a harmless intervening commit. It holds no
 * pointers (entries name fields by index, the ring is addressed by position) so that it
 * can live in shared memory unchanged. */
#ifndef THEUS_SRC_COMMIT_LOG_H
#define THEUS_SRC_COMMIT_LOG_H
#include "region.h"
#include <stdint.h>

typedef struct log_entry {
    uint64_t version;     /* commit that wrote the region */
    uint32_t field;       /* index in the field table */
    uint32_t op;          /* delta_op, or LOG_OP_BLOCKS */
    theus_region region;
} log_entry;

/* The entry of a batch too large to log region by region: the bounding box of what it wrote
 * in one field; a probe that meets it asks the block map instead (LOG_STALE). */
#define LOG_OP_BLOCKS 2u

typedef struct commit_log {
    uint32_t capacity;    /* entries in the ring */
    uint32_t pad;
    uint64_t head;        /* entries ever appended; the next goes to head % capacity */
    uint64_t floor;       /* commits with version <= floor may have lost entries */
} commit_log;

void commit_log_init(commit_log *log, uint32_t capacity);
/* Append; evicting the oldest entry raises the floor. */
void commit_log_append(commit_log *log, log_entry *ring, const log_entry *e);
/* Append in place: the slot of the next entry, for the caller to fill at once (the oldest
 * entry is evicted, the floor raised and the head moved, as by commit_log_append). */
log_entry *commit_log_next(commit_log *log, log_entry *ring);

/* The floor that appending @n entries of version @version would leave (without appending). */
uint64_t commit_log_floor_after(const commit_log *log, const log_entry *ring, uint64_t n,
                                uint64_t version);
/* Write @n entries at positions @head.. of the ring, then set the log's head past them and
 * its floor to @floor (from commit_log_floor_after, taken before): the same result however
 * often it runs, so that a publish interrupted by a crash can be run again. */
void commit_log_put(commit_log *log, log_entry *ring, uint64_t head, uint64_t floor,
                    const log_entry *e, uint64_t n);

typedef enum log_probe { LOG_CLEAR = 0, LOG_HIT, LOG_STALE } log_probe;

/* Look for a commit after @base that wrote a region of @field overlapping @r. Returns
 * LOG_HIT (and *hit: exact), LOG_CLEAR (exact: nothing since @base wrote there), or
 * LOG_STALE when the log cannot tell — it no longer reaches back to @base, or a block-map
 * entry (LOG_OP_BLOCKS) overlaps @r — and the caller asks the block map (block_map.h).
 * The caller excludes concurrent appends (commit lock), or validates what it found with
 * the replay sequence (state_read_valid). */
log_probe commit_log_probe(const commit_log *log, const log_entry *ring, uint64_t base,
                           uint32_t field, const theus_region *r, const log_entry **hit);

#endif
