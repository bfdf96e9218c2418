/* Described batches: validation, summary, bounds, and the host loops that apply them (see
 * seg_batch.h). */
#include "seg_batch.h"
#include "alloc.h"
#include "dtype.h"

#include <string.h>

size_t seg_validate(const theus_batch_segment *s, size_t n, uint64_t nelems,
                    uint64_t payload_elems)
{
    for (size_t k = 0; k < n; k++) {
        if (s[k].dst < 0 || s[k].length < 0 || s[k].src < 0)
            return k;
        const uint64_t d = (uint64_t)s[k].dst, l = (uint64_t)s[k].length,
                       p = (uint64_t)s[k].src;
        if (d > nelems || l > nelems - d || p > payload_elems || l > payload_elems - p)
            return k;
    }
    return SIZE_MAX;
}

/* Set bits [b0, b1] of @bits; returns whether one of them was set already. */
static int mark_blocks(uint64_t *bits, uint64_t b0, uint64_t b1)
{
    int seen = 0;
    for (uint64_t w = b0 >> 6; w <= b1 >> 6; w++) {
        uint64_t m = ~(uint64_t)0;
        if (w == b0 >> 6)
            m &= ~(uint64_t)0 << (b0 & 63);
        if (w == b1 >> 6 && (b1 & 63) != 63)
            m &= ((uint64_t)1 << ((b1 & 63) + 1)) - 1;
        seen |= (bits[w] & m) != 0;
        bits[w] |= m;
    }
    return seen;
}

/* The summary's geometry, its bitmap (@touched, seg_summary_words of it) zeroed. */
static void summary_init(seg_summary *out, uint64_t nelems, size_t esize, uint64_t *touched)
{
    memset(out, 0, sizeof *out);
    block_map_geometry(nelems * esize, &out->shift, &out->nblocks);
    out->touched = touched;
    memset(touched, 0, seg_summary_words(nelems, esize) * sizeof *touched);
}

size_t seg_summary_words(uint64_t nelems, size_t esize)
{
    uint32_t shift;
    uint64_t nblocks;
    block_map_geometry(nelems * esize, &shift, &nblocks);
    return (size_t)(nblocks / 64 + 1);
}

void seg_summarize(const theus_batch_segment *s, size_t n, uint64_t nelems, size_t esize,
                   uint64_t *touched, seg_summary *out)
{
    summary_init(out, nelems, esize, touched);
    out->lo = UINT64_MAX;
    for (size_t k = 0; k < n; k++) {
        if (s[k].length <= 0)
            continue;
        const uint64_t a = (uint64_t)s[k].dst, b = a + (uint64_t)s[k].length;
        out->nonempty++;
        out->total += b - a;
        if (a < out->lo)
            out->lo = a;
        if (b > out->hi)
            out->hi = b;
        if (esize && mark_blocks(out->touched, (a * esize) >> out->shift,
                                 (b * esize - 1) >> out->shift))
            out->shared_blocks = 1;
    }
    if (out->nonempty == 0)
        out->lo = out->hi = 0;
}

void seg_bounds_region(int ndim, const int64_t *shape, uint64_t lo, uint64_t hi,
                       theus_region *out)
{
    memset(out, 0, sizeof *out);
    out->ndim = ndim;
    if (ndim == 0)
        return;
    int64_t a[THEUS_MAX_DIMS], b[THEUS_MAX_DIMS];
    uint64_t x = lo, y = hi - 1;
    for (int d = ndim - 1; d >= 0; d--) {
        const uint64_t e = (uint64_t)shape[d];
        a[d] = (int64_t)(x % e);
        b[d] = (int64_t)(y % e);
        x /= e;
        y /= e;
    }
    int d = 0;
    for (; d < ndim && a[d] == b[d]; d++) {
        out->start[d] = a[d];
        out->stop[d] = a[d] + 1;
    }
    if (d < ndim) {
        out->start[d] = a[d];
        out->stop[d] = b[d] + 1;
        for (d++; d < ndim; d++) {
            out->start[d] = 0;
            out->stop[d] = shape[d];
        }
    }
}

/* One block for the record, the summary's bitmap and @nhost host segments, in that order
 * (each part 8-byte aligned); NULL when out of memory or too large. */
static seg_batch *batch_block(size_t nhost, uint64_t nelems, size_t esize)
{
    const size_t words = seg_summary_words(nelems, esize);
    const size_t head = (sizeof(seg_batch) + 7) & ~(size_t)7;
    if (words > (SIZE_MAX - head) / 8 / 2 ||
        nhost > (SIZE_MAX - head - words * 8) / sizeof(theus_batch_segment))
        return NULL;
    unsigned char *blk = theus_xmalloc(head + words * 8 + nhost * sizeof(theus_batch_segment));
    if (!blk)
        return NULL;
    seg_batch *b = (seg_batch *)(void *)blk;
    memset(b, 0, sizeof *b);
    b->sum.touched = (uint64_t *)(void *)(blk + head);
    b->segs = nhost ? (theus_batch_segment *)(void *)(blk + head + words * 8) : NULL;
    return b;
}

seg_batch *seg_batch_new(const theus_batch_segment *segs, size_t n, uint64_t payload_elems,
                         uint64_t nelems, size_t esize)
{
    seg_batch *b = batch_block(n, nelems, esize);
    if (!b)
        return NULL;
    memcpy(b->segs, segs, n * sizeof *segs);
    seg_summarize(segs, n, nelems, esize, b->sum.touched, &b->sum);
    b->nsegs = n;
    b->payload_elems = payload_elems;
    return b;
}

seg_batch *seg_batch_new_staged(size_t n, uint64_t payload_elems, uint64_t nelems, size_t esize)
{
    seg_batch *b = batch_block(0, nelems, esize);
    if (!b)
        return NULL;
    summary_init(&b->sum, nelems, esize, b->sum.touched);
    b->nsegs = n;
    b->payload_elems = payload_elems;
    return b;
}

void seg_batch_free(seg_batch *b)
{
    /* One block: the record, its bitmap and its host segments. */
    theus_xfree(b);
}

/* Calls @fn on every block batch @b touches, in address order, until it returns nonzero. */
static int for_each_block(const seg_batch *b, const block_map *m,
                          int (*fn)(const block_map *m, uint64_t blk, void *user), void *user)
{
    const seg_summary *s = &b->sum;
    const uint64_t n = s->nblocks < m->nblocks ? s->nblocks : m->nblocks;
    for (uint64_t w = 0; w < (n + 63) / 64; w++) {
        uint64_t bits = s->touched[w];
        while (bits) {
            const uint64_t blk = (w << 6) + (uint64_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            if (blk < n && fn(m, blk, user))
                return 1;
        }
    }
    return 0;
}

static int mark_one(const block_map *m, uint64_t blk, void *user)
{
    atomic_store_explicit(&m->v[blk], *(const uint64_t *)user, memory_order_relaxed);
    return 0;
}

void seg_batch_mark(const seg_batch *b, const block_map *m, uint64_t version)
{
    for_each_block(b, m, mark_one, &version);
}

typedef struct probe_ctx {
    uint64_t base, found;
} probe_ctx;

static int probe_one(const block_map *m, uint64_t blk, void *user)
{
    probe_ctx *c = user;
    const uint64_t v = atomic_load_explicit(&m->v[blk], memory_order_relaxed);
    if (v <= c->base)
        return 0;
    c->found = v;
    return 1;
}

int seg_batch_probe(const seg_batch *b, const block_map *m, uint64_t base, uint64_t *version)
{
    probe_ctx c = {base, 0};
    if (!for_each_block(b, m, probe_one, &c))
        return 0;
    *version = c.found;
    return 1;
}

static void apply_run(theus_dtype dt, delta_op op, char *d, const char *s, size_t n, size_t es)
{
    if (op == DELTA_ASSIGN)
        memcpy(d, s, n * es);
    else
        dtype_add(dt, d, s, n);
}

void seg_batch_overlay(const seg_batch *b, theus_dtype dt, delta_op op, int ndim,
                       const int64_t *shape, void *buf, const theus_region *frame,
                       const void *payload)
{
    const size_t es = theus_dtype_size(dt);
    if (es == 0)
        return;
    /* A scalar is a field of one row of one element. */
    static const int64_t one = 1;
    theus_region f1;
    if (ndim == 0) {
        memset(&f1, 0, sizeof f1);
        f1.ndim = 1;
        f1.stop[0] = 1;
        frame = &f1;
        shape = &one;
        ndim = 1;
    }
    const int last = ndim - 1;
    const uint64_t W = (uint64_t)shape[last];
    if (W == 0)
        return;
    /* Strides of @buf (laid out as @frame) and the frame's first and last rows. */
    int64_t bstr[THEUS_MAX_DIMS];
    int64_t acc = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        bstr[d] = acc;
        acc *= frame->stop[d] - frame->start[d];
    }
    if (acc == 0)
        return;
    uint64_t rmin = 0, rmax = 0;
    for (int d = 0; d < last; d++) {
        rmin = rmin * (uint64_t)shape[d] + (uint64_t)frame->start[d];
        rmax = rmax * (uint64_t)shape[d] + (uint64_t)(frame->stop[d] - 1);
    }
    const uint64_t c0 = (uint64_t)frame->start[last], c1 = (uint64_t)frame->stop[last];
    const char *pay = payload;
    char *out = buf;
    for (size_t k = 0; k < b->nsegs; k++) {
        const theus_batch_segment *s = &b->segs[k];
        if (s->length <= 0)
            continue;
        const uint64_t a = (uint64_t)s->dst, e = a + (uint64_t)s->length;
        uint64_t r0 = a / W, r1 = (e - 1) / W;
        if (r0 < rmin)
            r0 = rmin;
        if (r1 > rmax)
            r1 = rmax;
        for (uint64_t r = r0; r <= r1; r++) {
            /* The row's outer indices, and whether the frame holds them. */
            int64_t boff = 0;
            uint64_t q = r;
            int inside = 1;
            for (int d = last - 1; d >= 0; d--) {
                const int64_t i = (int64_t)(q % (uint64_t)shape[d]);
                q /= (uint64_t)shape[d];
                if (i < frame->start[d] || i >= frame->stop[d]) {
                    inside = 0;
                    break;
                }
                boff += (i - frame->start[d]) * bstr[d];
            }
            if (!inside)
                continue;
            uint64_t lo = r == a / W ? a % W : 0, hi = r == (e - 1) / W ? (e - 1) % W + 1 : W;
            if (lo < c0)
                lo = c0;
            if (hi > c1)
                hi = c1;
            if (lo >= hi)
                continue;
            const uint64_t psrc = (uint64_t)s->src + (r * W + lo - a);
            apply_run(dt, op, out + (size_t)(boff + (int64_t)(lo - c0)) * es,
                      pay + (size_t)psrc * es, (size_t)(hi - lo), es);
        }
    }
}
