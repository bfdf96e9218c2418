/* Region arithmetic and the strided element mover shared by replay, reads and overlays. */
#include "region.h"
#include "dtype.h"
#include <stdio.h>
#include <string.h>

void region_whole(int ndim, const int64_t *shape, theus_region *out)
{
    memset(out, 0, sizeof *out);
    out->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        out->stop[d] = shape[d];
}

int region_resolve(int ndim, const int64_t *shape, const theus_region *in, theus_region *out,
                   char *why, size_t whylen)
{
    if (!in) {
        region_whole(ndim, shape, out);
        return THEUS_OK;
    }
    if (in->ndim != ndim) {
        snprintf(why, whylen, "region has %d dimensions, field has %d", in->ndim, ndim);
        return THEUS_EINVAL;
    }
    theus_region r;
    memset(&r, 0, sizeof r);
    r.ndim = ndim;
    for (int d = 0; d < ndim; d++) {
        if (in->start[d] < 0 || in->start[d] > in->stop[d] || in->stop[d] > shape[d]) {
            snprintf(why, whylen, "dimension %d: [%lld, %lld) is outside [0, %lld)", d,
                     (long long)in->start[d], (long long)in->stop[d], (long long)shape[d]);
            return THEUS_EINVAL;
        }
        r.start[d] = in->start[d];
        r.stop[d] = in->stop[d];
    }
    *out = r;
    return THEUS_OK;
}

size_t region_nelems(const theus_region *r)
{
    size_t n = 1;
    for (int d = 0; d < r->ndim; d++)
        n *= (size_t)(r->stop[d] - r->start[d]);
    return n;
}

int region_overlap(const theus_region *a, const theus_region *b)
{
    for (int d = 0; d < a->ndim; d++) {
        int64_t lo = a->start[d] > b->start[d] ? a->start[d] : b->start[d];
        int64_t hi = a->stop[d] < b->stop[d] ? a->stop[d] : b->stop[d];
        if (lo >= hi)
            return 0;
    }
    return 1;
}

int region_intersect(const theus_region *a, const theus_region *b, theus_region *out)
{
    memset(out, 0, sizeof *out);
    out->ndim = a->ndim;
    for (int d = 0; d < a->ndim; d++) {
        out->start[d] = a->start[d] > b->start[d] ? a->start[d] : b->start[d];
        out->stop[d] = a->stop[d] < b->stop[d] ? a->stop[d] : b->stop[d];
        if (out->start[d] >= out->stop[d])
            return 0;
    }
    return 1;
}

void region_union_box(theus_region *acc, const theus_region *r)
{
    for (int d = 0; d < acc->ndim; d++) {
        if (r->start[d] < acc->start[d])
            acc->start[d] = r->start[d];
        if (r->stop[d] > acc->stop[d])
            acc->stop[d] = r->stop[d];
    }
}

void region_format(const theus_region *r, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < r->ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld:%lld", d ? ", " : "",
                                 (long long)r->start[d], (long long)r->stop[d]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

int region_fold(const theus_region *df, const theus_region *sf, const theus_region *sub,
                region_folded *x)
{
    const int n = sub->ndim;
    x->nouter = 0;
    x->run = 1;
    x->doff = x->soff = 0;
    x->nrows = 1;
    if (n < 0 || n > THEUS_MAX_DIMS)
        return 0;
    if (n == 0)
        return 1;
    int64_t ext[THEUS_MAX_DIMS], ss[THEUS_MAX_DIMS], ds[THEUS_MAX_DIMS];
    for (int d = 0; d < n; d++) {
        ext[d] = sub->stop[d] - sub->start[d];
        if (ext[d] <= 0)
            return 0;
    }
    int64_t s = 1, t = 1;
    for (int d = n - 1; d >= 0; d--) {
        ss[d] = s;
        ds[d] = t;
        s *= sf->stop[d] - sf->start[d];
        t *= df->stop[d] - df->start[d];
    }
    /* Fold trailing dimensions the sub-region spans fully in both frames into one run. */
    int k = n - 1;
    int64_t run = ext[k];
    while (k > 0 && ext[k] == sf->stop[k] - sf->start[k] && ext[k] == df->stop[k] - df->start[k]) {
        k--;
        run *= ext[k];
    }
    int64_t soff = 0, doff = 0;
    for (int d = 0; d < n; d++) {
        soff += (sub->start[d] - sf->start[d]) * ss[d];
        doff += (sub->start[d] - df->start[d]) * ds[d];
    }
    x->run = run;
    x->soff = soff;
    x->doff = doff;
    x->nouter = k;
    for (int d = 0; d < k; d++) {
        x->ext[d] = ext[d];
        x->dstr[d] = ds[d];
        x->sstr[d] = ss[d];
        x->nrows *= (uint64_t)ext[d];
    }
    return 1;
}

void region_transfer(theus_dtype dt, delta_op op, void *dst, const theus_region *df,
                     const void *src, const theus_region *sf, const theus_region *sub)
{
    const size_t es = theus_dtype_size(dt);
    region_folded x;
    if (es == 0 || !region_fold(df, sf, sub, &x))
        return;
    int64_t soff = x.soff, doff = x.doff;
    int64_t idx[THEUS_MAX_DIMS] = {0};
    const size_t runbytes = (size_t)x.run * es;
    char *dp = dst;
    const char *sp = src;
    do {
        if (op == DELTA_ASSIGN)
            memcpy(dp + (size_t)doff * es, sp + (size_t)soff * es, runbytes);
        else
            dtype_add(dt, dp + (size_t)doff * es, sp + (size_t)soff * es, (size_t)x.run);
    } while (region_next_row(&x, idx, &doff, &soff));
}
