/* Conflict questions of the version guard and of reads: did a commit after a base write a
 * region? Exact from the commit log while it reaches back, exact to the block from the
 * block map beyond it (block_map.h). See docs/guide.md, "Conflicts". */
#ifndef THEUS_SRC_CONFLICT_H
#define THEUS_SRC_CONFLICT_H
#include "state.h"

/* Whether a commit after @base wrote (ASSIGN or ADD) a region of field @i overlapping @r;
 * then *c says how (@kind, the field, the version that wrote it, and the region: the log
 * entry's, or @r itself when the block map answered). Under the commit lock, or validated
 * afterwards with the replay sequence. */
int conflict_check_region(const theus_state *st, uint64_t base, uint32_t i,
                          const theus_region *r, theus_conflict_kind kind, theus_conflict *c);

#endif
