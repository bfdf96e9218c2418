/* The GPU replay's host planner (see replay_plan.h). One pass folds every transfer into a
 * descriptor, numbers its chunks and records its destination byte span; a batch whose spans
 * come in address order without overlap (the usual sorted batch) is done then. Otherwise
 * the spans are radix-sorted: a batch without overlapping spans is still one wave; the
 * transfers whose spans meet another's are compared exactly (up to EXACT_BUDGET neighbours,
 * by span beyond that) and put into waves, each one after every earlier transfer it
 * overlaps. A batch of short contiguous runs then gets its compact form (16 bytes a chunk). */
#include "replay_plan.h"
#include "alloc.h"
#include "dtype.h"
#include "error.h"

#include <string.h>

/* Grow @*arr (of @elem-byte elements, @*cap of them) to hold @need, keeping the first
 * @keep elements. Returns 0, or -1 when out of memory (the array is unchanged). */
static int grow(void **arr, size_t *cap, size_t need, size_t elem, size_t keep)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem)
            return -1;
        c *= 2;
    }
    void *q = theus_xmalloc(c * elem);
    if (!q)
        return -1;
    if (keep)
        memcpy(q, *arr, keep * elem);
    theus_xfree(*arr);
    *arr = q;
    *cap = c;
    return 0;
}

#define GROW(p, field, capf, need, keep) \
    grow((void **)&(p)->field, &(p)->capf, (need), sizeof *(p)->field, (keep))

/* Fill descriptor @d (outer dims appended to the plan's dims) for transfer @t, of elements
 * of @es bytes. Returns its chunk count, 0 when it moves nothing; sets *@err on failure. */
static uint64_t describe(replay_plan *p, const replay_xfer *t, uint64_t es, theus_replay_desc *d,
                         int *err)
{
    region_folded x;
    if (es == 0)
        return 0;
    if (t->sub->ndim == 1) {
        /* region_fold of a 1-D region, without the call: one run, no outer dimension. */
        const int64_t ext = t->sub->stop[0] - t->sub->start[0];
        if (ext <= 0)
            return 0;
        x.nouter = 0;
        x.run = ext;
        x.nrows = 1;
        x.doff = t->sub->start[0] - t->dframe->start[0];
        x.soff = t->sub->start[0] - t->sframe->start[0];
    } else if (!region_fold(t->dframe, t->sframe, t->sub, &x)) {
        return 0;
    }
    if (x.nouter > 0) {
        if (GROW(p, dims, dims_cap, p->ndims + (size_t)x.nouter, p->ndims) != 0) {
            *err = THEUS_ENOMEM;
            return 0;
        }
        if (p->ndims + (size_t)x.nouter > UINT32_MAX) {
            *err = THEUS_EINVAL;
            return 0;
        }
    }
    d->dst = (uint64_t)(uintptr_t)t->dst + (uint64_t)x.doff * es;
    d->src = (uint64_t)(uintptr_t)t->src + (uint64_t)x.soff * es;
    d->run = (uint64_t)x.run;
    d->nrows = x.nrows;
    d->dims = (uint32_t)p->ndims;
    d->nouter = (uint8_t)x.nouter;
    d->dtype = (uint8_t)t->dtype;
    d->op = (uint8_t)t->op;
    d->pad = 0;
    for (int k = 0; k < x.nouter; k++) {
        theus_replay_dim *m = &p->dims[p->ndims + (size_t)k];
        m->ext = x.ext[k];
        m->dst_stride = x.dstr[k] * (int64_t)es;
        m->src_stride = x.sstr[k] * (int64_t)es;
    }
    p->ndims += (size_t)x.nouter;
    const uint64_t per = THEUS_REPLAY_CHUNK_BYTES / es;
    if (d->run >= per) {
        const uint64_t pieces = (d->run + per - 1) / per;
        if (pieces > UINT32_MAX) {
            *err = THEUS_EINVAL;
            return 0;
        }
        d->pieces = (uint32_t)pieces;
        d->rows_per_chunk = 1;
        return d->nrows * pieces;
    }
    const uint64_t rpc = per / d->run;
    d->pieces = 0;
    d->rows_per_chunk = (uint32_t)rpc;
    return (d->nrows + rpc - 1) / rpc;
}

/* Sort positions 0..n-1 by lo (LSD radix, 11-bit digits, only the digits that differ).
 * Result: p->key (lo - min) and p->idx (transfer index) in ascending order. */
static void sort_spans(replay_plan *p, size_t n)
{
    uint64_t min = UINT64_MAX, max = 0;
    for (size_t i = 0; i < n; i++) {
        if (p->lo[i] < min)
            min = p->lo[i];
        if (p->lo[i] > max)
            max = p->lo[i];
    }
    for (size_t i = 0; i < n; i++) {
        p->key[i] = p->lo[i] - min;
        p->idx[i] = (uint32_t)i;
    }
    const uint64_t range = max - min;
    enum { BITS = 11, BUCKETS = 1 << BITS };
    size_t count[BUCKETS];
    for (unsigned shift = 0; shift < 64 && (range >> shift) != 0; shift += BITS) {
        memset(count, 0, sizeof count);
        for (size_t i = 0; i < n; i++)
            count[(p->key[i] >> shift) & (BUCKETS - 1)]++;
        size_t sum = 0;
        for (size_t b = 0; b < BUCKETS; b++) {
            const size_t c = count[b];
            count[b] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) {
            const size_t at = count[(p->key[i] >> shift) & (BUCKETS - 1)]++;
            p->key2[at] = p->key[i];
            p->idx2[at] = p->idx[i];
        }
        uint64_t *tk = p->key;
        p->key = p->key2;
        p->key2 = tk;
        uint32_t *ti = p->idx;
        p->idx = p->idx2;
        p->idx2 = ti;
    }
}

/* Whether transfers @i and @j (spans known to meet) share an element. Distinct
 * allocations never share bytes; a base or frame that differs is ordered anyway. */
static int overlap_exact(const replay_xfer *t, const uint32_t *live, size_t i, size_t j)
{
    const replay_xfer *a = &t[live[i]], *b = &t[live[j]];
    if (a->dst != b->dst || a->dframe != b->dframe)
        return 1;
    return region_overlap(a->sub, b->sub);
}

/* Exact candidates examined for one transfer before it falls back to its span alone. */
#define EXACT_BUDGET 64

static inline uint32_t max_u32(uint32_t a, uint32_t b)
{
    return a > b ? a : b;
}

/* First sorted position whose key (lo - min) is at least @k. */
static size_t lower_bound(const uint64_t *key, size_t n, uint64_t k)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (key[mid] < k)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Two iterative segment trees over the n sorted positions, holding wave + 1 (0: none):
 * "at" keeps each placed transfer at its own position (range maximum: the transfers that
 * start inside a span), "over" keeps it over the positions its span covers (point maximum:
 * the transfers whose span covers a start). */
static void at_set(uint32_t *t, size_t n, size_t q, uint32_t v)
{
    size_t k = q + n;
    t[k] = v;
    for (k >>= 1; k >= 1; k >>= 1)
        t[k] = max_u32(t[2 * k], t[2 * k + 1]);
}

static uint32_t at_max(const uint32_t *t, size_t n, size_t l, size_t r)
{
    uint32_t m = 0;
    for (l += n, r += n; l < r; l >>= 1, r >>= 1) {
        if (l & 1)
            m = max_u32(m, t[l++]);
        if (r & 1)
            m = max_u32(m, t[--r]);
    }
    return m;
}

static void over_raise(uint32_t *t, size_t n, size_t l, size_t r, uint32_t v)
{
    for (l += n, r += n; l < r; l >>= 1, r >>= 1) {
        if (l & 1) {
            t[l] = max_u32(t[l], v);
            l++;
        }
        if (r & 1) {
            --r;
            t[r] = max_u32(t[r], v);
        }
    }
}

static uint32_t over_max(const uint32_t *t, size_t n, size_t q)
{
    uint32_t m = 0;
    for (size_t k = q + n; k >= 1; k >>= 1)
        m = max_u32(m, t[k]);
    return m;
}

/* Waves for a batch whose spans are not in address order: 1 when no two spans meet,
 * otherwise each transfer's wave is one more than the largest wave of the earlier
 * transfers it overlaps. Neighbours in address order whose spans meet are compared
 * exactly, up to EXACT_BUDGET of them; a transfer with more is placed after every earlier
 * transfer whose span meets its own (the trees answer that in O(log n)). */
static uint32_t assign_waves(replay_plan *p, const replay_xfer *t, size_t n)
{
    const uint32_t *live = p->live;
    sort_spans(p, n);
    /* key2 now holds the prefix maximum of hi in sorted order. */
    uint64_t *pmax = p->key2;
    uint64_t run = 0;
    int any = 0;
    for (size_t q = 0; q < n; q++) {
        const uint64_t h = p->hi[p->idx[q]];
        if (q > 0 && p->lo[p->idx[q]] < run)
            any = 1;
        run = h > run ? h : run;
        pmax[q] = run;
    }
    memset(p->wave, 0, n * sizeof *p->wave);
    if (!any)
        return 1;
    for (size_t q = 0; q < n; q++)
        p->pos[p->idx[q]] = (uint32_t)q;
    memset(p->tree_at, 0, 2 * n * sizeof *p->tree_at);
    memset(p->tree_over, 0, 2 * n * sizeof *p->tree_over);
    const uint64_t min = p->lo[p->idx[0]];
    uint32_t nwaves = 1;
    for (size_t i = 0; i < n; i++) {
        const size_t q = p->pos[i];
        const uint64_t lo = p->lo[i], hi = p->hi[i];
        uint32_t w = 0;
        size_t seen = 0;
        for (size_t r = q + 1; r < n && p->lo[p->idx[r]] < hi && seen <= EXACT_BUDGET; r++, seen++) {
            const size_t j = p->idx[r];
            if (j < i && p->wave[j] + 1 > w && overlap_exact(t, live, i, j))
                w = p->wave[j] + 1;
        }
        for (size_t l = q; l-- > 0 && pmax[l] > lo && seen <= EXACT_BUDGET; seen++) {
            const size_t j = p->idx[l];
            if (j < i && p->hi[j] > lo && p->wave[j] + 1 > w && overlap_exact(t, live, i, j))
                w = p->wave[j] + 1;
        }
        const size_t first = lower_bound(p->key, n, lo - min);
        const size_t end = lower_bound(p->key, n, hi - min);
        if (seen > EXACT_BUDGET)
            w = max_u32(at_max(p->tree_at, n, first, end), over_max(p->tree_over, n, q));
        p->wave[i] = w;
        at_set(p->tree_at, n, q, w + 1);
        over_raise(p->tree_over, n, first, end, w + 1);
        if (w + 1 > nwaves)
            nwaves = w + 1;
    }
    return nwaves;
}

/* Scratch bytes per transfer: lo, hi, key, key2 (u64); idx, idx2, live, wave, pos (u32);
 * and the two trees' 2 entries each (u32). */
#define SCRATCH_PER_XFER (4 * sizeof(uint64_t) + 9 * sizeof(uint32_t))

/* Per-transfer scratch for @n transfers, in one block. */
static int scratch_reserve(replay_plan *p, size_t n)
{
    if (n <= p->scratch_cap)
        return 0;
    size_t cap = p->scratch_cap ? p->scratch_cap : 256;
    while (cap < n)
        cap *= 2;
    const size_t per = SCRATCH_PER_XFER;
    if (cap > SIZE_MAX / per)
        return -1;
    unsigned char *b = theus_xmalloc(cap * per);
    if (!b)
        return -1;
    theus_xfree(p->scratch);
    p->scratch = b;
    p->scratch_cap = cap;
    p->lo = (uint64_t *)(void *)b;
    p->hi = p->lo + cap;
    p->key = p->hi + cap;
    p->key2 = p->key + cap;
    p->idx = (uint32_t *)(void *)(p->key2 + cap);
    p->idx2 = p->idx + cap;
    p->live = p->idx2 + cap;
    p->wave = p->live + cap;
    p->pos = p->wave + cap;
    p->tree_at = p->pos + cap;
    p->tree_over = p->tree_at + 2 * cap;
    return 0;
}

static void clear_output(replay_plan *p)
{
    p->nwaves = 0;
    p->ndescs = 0;
    p->ndims = 0;
    p->total_chunks = p->max_wave_chunks = 0;
    p->compact = 0;
    p->ngroups = 0;
}

/* The compact form: append descriptor @d's segments (one a chunk, at its chunk numbers) to
 * the plan's, in group *@ng or a new one when the dtype or the op changes or an address is
 * too far from the group's bases. Returns THEUS_OK, 1 when the groups ran out (the plan
 * stays wide), or THEUS_ENOMEM. */
/* Whether [off, off + bytes) lies within the offsets a segment holds, @diff being off in
 * two's complement (an address minus a base, modulo 2^64: no signed overflow anywhere). */
static inline int span_fits(uint64_t diff, uint64_t bytes)
{
    return diff + THEUS_REPLAY_OFF_SIGN <= 2 * THEUS_REPLAY_OFF_SIGN - bytes;
}

/* Open group @*ng (the next) with @d's bases, dtype and op. Returns THEUS_OK, 1 when the
 * groups ran out (the batch stays wide), or THEUS_ENOMEM. */
static int group_open(replay_plan *p, const theus_replay_desc *d, size_t *ng)
{
    if (*ng == THEUS_REPLAY_COMPACT_MAX_GROUPS)
        return 1;
    if (GROW(p, groups, groups_cap, *ng + 1, *ng))
        return THEUS_ENOMEM;
    theus_replay_group *g = &p->groups[(*ng)++];
    memset(g, 0, sizeof *g);
    g->dst = d->dst;
    g->src = d->src;
    g->dtype = d->dtype;
    g->op = d->op;
    return THEUS_OK;
}

/* The compact pass: each transfer described into a local descriptor and turned into its
 * segment at once (no wide descriptor is written), its span and batch position recorded for
 * the waves. Returns 1 when the whole batch is compact (p->ndescs, total_chunks and ngroups
 * set), else 0: with *@err THEUS_OK when a transfer does not fit the compact form (the
 * caller plans the batch wide), or the error. */
_Static_assert(THEUS_REPLAY_COMPACT_MAX_CHUNKS == 1,
               "the compact pass and its wave sort take one segment per transfer");

static int compact_pass(replay_plan *p, const replay_xfer *t, size_t n, int *ordered, int *err)
{
    uint64_t maxhi = 0;
    size_t ng = 0, m = 0;
    /* The open group, kept in locals: most batches have one or a few. */
    uint64_t gdst = 0, gsrc = 0;
    unsigned gkey = ~0u;         /* dtype | op << 8; none open yet */
    *ordered = 1;
    if (GROW(p, segs, segs_cap, n, 0)) {
        *err = THEUS_ENOMEM;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        theus_replay_desc d;
        const uint64_t es = theus_dtype_size(t[i].dtype);
        const uint64_t nch = describe(p, &t[i], es, &d, err);
        if (*err != THEUS_OK)
            return 0;
        if (nch == 0)
            continue;
        if (d.nouter != 0 || d.nrows != 1 || nch != 1)
            return 0;
        const uint64_t bytes = d.run * es;
        /* Differences modulo 2^64: a base above the address gives a negative offset. */
        const uint64_t ddiff = d.dst - gdst, sdiff = d.src - gsrc;
        int64_t doff = 0, soff = 0;
        if (gkey == ((unsigned)d.dtype | (unsigned)d.op << 8) && span_fits(ddiff, bytes) &&
            span_fits(sdiff, bytes)) {
            /* Both fit 48 bits, so the conversion keeps the value. */
            doff = theus_replay_off(ddiff);
            soff = theus_replay_off(sdiff);
        } else {
            const int rc = group_open(p, &d, &ng);
            if (rc != THEUS_OK) {
                if (rc == THEUS_ENOMEM)
                    *err = rc;
                return 0;
            }
            gdst = d.dst;
            gsrc = d.src;
            gkey = (unsigned)d.dtype | (unsigned)d.op << 8;
        }
        p->segs[m] = theus_replay_seg_make((uint32_t)(ng - 1), doff, soff, (uint32_t)bytes);
        const uint64_t hi = d.dst + bytes;
        p->lo[m] = d.dst;
        p->hi[m] = hi;
        if (d.dst < maxhi)
            *ordered = 0;
        if (hi > maxhi)
            maxhi = hi;
        p->live[m] = (uint32_t)i;
        m++;
    }
    p->ndescs = m;
    p->total_chunks = m;
    p->ngroups = ng;
    return 1;
}

/* Waves of a compact plan: a stable counting sort of the segments by wave (into the other
 * segment buffer); a wave's descriptor and chunk ranges are its segments. Returns THEUS_OK
 * or THEUS_ENOMEM. */
static int compact_waves(replay_plan *p, uint32_t nwaves)
{
    const size_t m = p->ndescs;
    if (GROW(p, waves, waves_cap, nwaves, 0) || GROW(p, segs_tmp, segs_tmp_cap, m, 0))
        return THEUS_ENOMEM;
    for (uint32_t w = 0; w < nwaves; w++)
        p->waves[w].desc_end = 0;
    for (size_t j = 0; j < m; j++)
        p->waves[p->wave[j]].desc_end++;
    uint64_t at = 0;
    for (uint32_t w = 0; w < nwaves; w++) {
        theus_replay_wave *wv = &p->waves[w];
        const uint64_t nd = wv->desc_end;
        if (nd > p->max_wave_chunks)
            p->max_wave_chunks = nd;
        wv->desc_begin = wv->desc_end = at;
        at += nd;
    }
    for (size_t j = 0; j < m; j++)
        p->segs_tmp[p->waves[p->wave[j]].desc_end++] = p->segs[j];
    for (uint32_t w = 0; w < nwaves; w++) {
        p->waves[w].chunk_begin = p->waves[w].desc_begin;
        p->waves[w].chunk_end = p->waves[w].desc_end;
    }
    theus_replay_seg *x = p->segs;
    p->segs = p->segs_tmp;
    p->segs_tmp = x;
    const size_t c = p->segs_cap;
    p->segs_cap = p->segs_tmp_cap;
    p->segs_tmp_cap = c;
    p->nwaves = nwaves;
    return THEUS_OK;
}

static int fail(replay_plan *p, int code, size_t n)
{
    clear_output(p);
    if (code == THEUS_ENOMEM)
        return err_set(NULL, code, "GPU replay: out of memory planning %zu transfers", n);
    return err_set(NULL, code, "GPU replay: a batch of %zu transfers is beyond the replay "
                               "kernel's limits (2^32 - 1 transfers, rows of 2^32 - 1 chunks)", n);
}

int replay_plan_build(replay_plan *p, const replay_xfer *t, size_t n)
{
    clear_output(p);
    if (n == 0)
        return THEUS_OK;
    if (n > UINT32_MAX)
        return fail(p, THEUS_EINVAL, n);
    if (GROW(p, waves, waves_cap, 1, 0) || scratch_reserve(p, n))
        return fail(p, THEUS_ENOMEM, n);
    int ordered = 1, err = THEUS_OK;
    if (!p->wide_only) {
        if (compact_pass(p, t, n, &ordered, &err)) {
            const size_t m = p->ndescs;
            if (m == 0)
                return THEUS_OK;
            p->compact = 1;
            const uint32_t nwaves = ordered ? 1 : assign_waves(p, t, m);
            if (nwaves == 1) {
                p->nwaves = 1;
                p->waves[0] = (theus_replay_wave){0, m, 0, m};
                p->max_wave_chunks = m;
                return THEUS_OK;
            }
            if ((err = compact_waves(p, nwaves)) != THEUS_OK)
                return fail(p, err, n);
            return THEUS_OK;
        }
        if (err != THEUS_OK)
            return fail(p, err, n);
        /* A transfer the compact form cannot take: the whole batch again, wide. */
        clear_output(p);
    }
    if (GROW(p, descs, descs_cap, n, 0))
        return fail(p, THEUS_ENOMEM, n);
    uint64_t chunk = 0, maxhi = 0;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        theus_replay_desc *d = &p->descs[m];
        const uint64_t es = theus_dtype_size(t[i].dtype);
        const uint64_t nch = describe(p, &t[i], es, d, &err);
        if (err != THEUS_OK)
            return fail(p, err, n);
        if (nch == 0)
            continue;
        d->first_chunk = chunk;
        chunk += nch;
        uint64_t span = d->run * es;
        const theus_replay_dim *dm = p->dims + d->dims;
        for (unsigned k = 0; k < d->nouter; k++)
            span += (uint64_t)(dm[k].ext - 1) * (uint64_t)dm[k].dst_stride;
        p->lo[m] = d->dst;
        p->hi[m] = d->dst + span;
        if (d->dst < maxhi)
            ordered = 0;
        if (p->hi[m] > maxhi)
            maxhi = p->hi[m];
        p->live[m] = (uint32_t)i;
        m++;
    }
    p->ndescs = m;
    p->total_chunks = chunk;
    if (m == 0)
        return THEUS_OK;
    const uint32_t nwaves = ordered ? 1 : assign_waves(p, t, m);
    if (nwaves == 1) {
        p->nwaves = 1;
        p->waves[0].desc_begin = 0;
        p->waves[0].desc_end = m;
        p->waves[0].chunk_begin = 0;
        p->waves[0].chunk_end = chunk;
        p->max_wave_chunks = chunk;
        return THEUS_OK;
    }
    /* Several waves: a stable counting sort of the descriptors by wave (into the other
     * descriptor buffer), chunks renumbered in the new order. */
    if (GROW(p, waves, waves_cap, nwaves, 0) || GROW(p, tmp, tmp_cap, m, 0))
        return fail(p, THEUS_ENOMEM, n);
    theus_replay_desc *batch = p->descs;
    p->descs = p->tmp;
    p->tmp = batch;
    size_t c = p->descs_cap;
    p->descs_cap = p->tmp_cap;
    p->tmp_cap = c;
    /* Per wave: descriptor count in desc_end and chunk count in chunk_end, then their
     * prefix sums, then the scatter (desc_end and chunk_end as cursors). */
    for (uint32_t w = 0; w < nwaves; w++) {
        p->waves[w].desc_end = 0;
        p->waves[w].chunk_end = 0;
    }
    for (size_t j = 0; j < m; j++) {
        const uint64_t next = j + 1 < m ? batch[j + 1].first_chunk : p->total_chunks;
        theus_replay_wave *wv = &p->waves[p->wave[j]];
        wv->desc_end++;
        wv->chunk_end += next - batch[j].first_chunk;
    }
    uint64_t dat = 0, cat = 0;
    for (uint32_t w = 0; w < nwaves; w++) {
        theus_replay_wave *wv = &p->waves[w];
        const uint64_t nd = wv->desc_end, nc = wv->chunk_end;
        if (nc > p->max_wave_chunks)
            p->max_wave_chunks = nc;
        wv->desc_begin = wv->desc_end = dat;
        wv->chunk_begin = wv->chunk_end = cat;
        dat += nd;
        cat += nc;
    }
    for (size_t j = 0; j < m; j++) {
        const uint64_t next = j + 1 < m ? batch[j + 1].first_chunk : p->total_chunks;
        theus_replay_wave *wv = &p->waves[p->wave[j]];
        theus_replay_desc *d = &p->descs[wv->desc_end++];
        *d = batch[j];
        d->first_chunk = wv->chunk_end;
        wv->chunk_end += next - batch[j].first_chunk;
    }
    p->nwaves = nwaves;
    return THEUS_OK;
}

int replay_plan_inline(const replay_plan *p, theus_replay_inline *out)
{
    if (!p->compact || p->nwaves != 1 || p->total_chunks > THEUS_REPLAY_INLINE_SEGS ||
        p->ngroups > THEUS_REPLAY_INLINE_GROUPS)
        return 0;
    memset(out, 0, sizeof *out);
    out->nsegs = (uint32_t)p->total_chunks;
    out->ngroups = (uint32_t)p->ngroups;
    memcpy(out->groups, p->groups, p->ngroups * sizeof *p->groups);
    memcpy(out->segs, p->segs, (size_t)p->total_chunks * sizeof *p->segs);
    return 1;
}

size_t replay_plan_upload_bytes(const replay_plan *p)
{
    const size_t w = (size_t)p->nwaves * sizeof(theus_replay_wave);
    if (p->compact)
        return w + (size_t)p->total_chunks * sizeof(theus_replay_seg) +
               p->ngroups * sizeof(theus_replay_group);
    return w + p->ndescs * sizeof(theus_replay_desc) + p->ndims * sizeof(theus_replay_dim);
}

void replay_plan_upload(const replay_plan *p, unsigned char *dst, size_t *off2, size_t *off3)
{
    const size_t w = (size_t)p->nwaves * sizeof(theus_replay_wave);
    const void *a2 = p->compact ? (const void *)p->segs : (const void *)p->descs;
    const void *a3 = p->compact ? (const void *)p->groups : (const void *)p->dims;
    const size_t b2 = p->compact ? (size_t)p->total_chunks * sizeof(theus_replay_seg)
                                 : p->ndescs * sizeof(theus_replay_desc);
    const size_t b3 = p->compact ? p->ngroups * sizeof(theus_replay_group)
                                 : p->ndims * sizeof(theus_replay_dim);
    memcpy(dst, p->waves, w);
    memcpy(dst + w, a2, b2);
    if (b3)
        memcpy(dst + w + b2, a3, b3);
    *off2 = w;
    *off3 = w + b2;
}

size_t replay_plan_footprint(const replay_plan *p)
{
    return p->waves_cap * sizeof *p->waves + p->descs_cap * sizeof *p->descs +
           p->dims_cap * sizeof *p->dims + p->tmp_cap * sizeof *p->tmp +
           (p->segs_cap + p->segs_tmp_cap) * sizeof *p->segs +
           p->groups_cap * sizeof *p->groups +
           p->scratch_cap * SCRATCH_PER_XFER;
}

void replay_plan_trim(replay_plan *p, size_t keep)
{
    if (replay_plan_footprint(p) > keep)
        replay_plan_release(p);
}

void replay_plan_release(replay_plan *p)
{
    theus_xfree(p->waves);
    theus_xfree(p->descs);
    theus_xfree(p->dims);
    theus_xfree(p->tmp);
    theus_xfree(p->scratch);
    theus_xfree(p->segs);
    theus_xfree(p->segs_tmp);
    theus_xfree(p->groups);
    const int wide_only = p->wide_only;
    memset(p, 0, sizeof *p);
    p->wide_only = wide_only;
}
