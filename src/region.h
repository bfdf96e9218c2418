/* Regions: validation against a field's shape, overlap tests, and the one routine that
 * moves elements between two C-contiguous buffers framed by regions (replay, reads and the
 * read-your-writes overlay all use it). */
#ifndef THEUS_SRC_REGION_H
#define THEUS_SRC_REGION_H
#include "theus/theus.h"
#include <stddef.h>

typedef enum delta_op { DELTA_ASSIGN = 0, DELTA_ADD = 1 } delta_op;

/* The whole of a shape as a region. */
void region_whole(int ndim, const int64_t *shape, theus_region *out);
/* Check @in (NULL: whole) against @shape and write the resolved region to @out.
 * Returns THEUS_OK or THEUS_EINVAL with a reason in @why. */
int region_resolve(int ndim, const int64_t *shape, const theus_region *in, theus_region *out,
                   char *why, size_t whylen);
size_t region_nelems(const theus_region *r);
/* Whether @a and @b (same rank) share an element. Empty regions overlap nothing. */
int region_overlap(const theus_region *a, const theus_region *b);
/* Intersection; returns 0 when it is empty. */
int region_intersect(const theus_region *a, const theus_region *b, theus_region *out);
/* Smallest region holding both (same rank). */
void region_union_box(theus_region *acc, const theus_region *r);
/* Format "[0:4, 2:3]" into @buf. */
void region_format(const theus_region *r, char *buf, size_t len);

/* A transfer of @sub between two frames, folded into rows: @nrows rows of @run contiguous
 * elements; row r's offsets are @doff/@soff plus, over the @nouter outer dimensions in C
 * order, idx_d(r) * @dstr[d] / @sstr[d]. Trailing dimensions that @sub spans fully in both
 * frames are folded into the run. Offsets and strides count elements, not bytes. */
typedef struct region_folded {
    int nouter;
    int64_t ext[THEUS_MAX_DIMS];
    int64_t dstr[THEUS_MAX_DIMS];
    int64_t sstr[THEUS_MAX_DIMS];
    int64_t run;
    int64_t doff, soff;
    uint64_t nrows;
} region_folded;

/* Fold @sub (inside both frames @df, @sf; same rank) into rows. Returns 0 when the
 * transfer moves nothing (an empty extent or a bad rank), 1 otherwise. A rank-0 @sub is
 * one row of one element. Only @nouter entries of the arrays are written. */
int region_fold(const theus_region *df, const theus_region *sf, const theus_region *sub,
                region_folded *out);

/* Step through the rows of @x: advance @idx (x->nouter entries, all 0 at the first row) and
 * the element offsets *@doff, *@soff (x->doff, x->soff at the first row) to the next row.
 * Returns 0 when the row just handled was the last. */
static inline int region_next_row(const region_folded *x, int64_t *idx, int64_t *doff,
                                  int64_t *soff)
{
    for (int d = x->nouter - 1; d >= 0; d--) {
        if (++idx[d] < x->ext[d]) {
            *soff += x->sstr[d];
            *doff += x->dstr[d];
            return 1;
        }
        *soff -= (x->ext[d] - 1) * x->sstr[d];
        *doff -= (x->ext[d] - 1) * x->dstr[d];
        idx[d] = 0;
    }
    return 0;
}

/* Move the elements of @sub from @src (laid out C-contiguously as region @sf) into @dst
 * (laid out as region @df): overwrite for DELTA_ASSIGN, element-wise add in @dt for
 * DELTA_ADD. @sub must lie inside both frames. */
void region_transfer(theus_dtype dt, delta_op op, void *dst, const theus_region *df,
                     const void *src, const theus_region *sf, const theus_region *sub);

#endif
