/* The per-field block version map (see block_map.h). */
#include "block_map.h"

void block_map_geometry(uint64_t nbytes, uint32_t *shift, uint64_t *nblocks)
{
    uint32_t s = BLOCK_MAP_MIN_SHIFT;
    while (s < 63 && (nbytes + ((uint64_t)1 << s) - 1) >> s > BLOCK_MAP_CAP)
        s++;
    uint64_t n = (nbytes + ((uint64_t)1 << s) - 1) >> s;
    *shift = s;
    *nblocks = n ? n : 1;
}

/* Calls @fn on every maximal contiguous byte run of @r inside the field, in address order,
 * until it returns nonzero (returned). */
typedef int (*run_fn)(const block_map *m, uint64_t first, uint64_t last, void *user);

static int for_each_run(const block_map *m, const theus_region *r, run_fn fn, void *user)
{
    int nd = m->ndim;
    if (nd == 0)
        return fn(m, 0, (uint64_t)m->esize - 1, user);
    uint64_t stride[THEUS_MAX_DIMS] = {0};
    uint64_t s = m->esize;
    for (int d = nd - 1; d >= 0; d--) {
        if (r->stop[d] <= r->start[d])
            return 0;
        stride[d] = s;
        s *= (uint64_t)m->shape[d];
    }
    /* Dimensions after @c are whole: one run per index of dimensions [0, c). */
    int c = nd - 1;
    while (c > 0 && r->start[c] == 0 && r->stop[c] == m->shape[c])
        c--;
    uint64_t len = (uint64_t)(r->stop[c] - r->start[c]) * stride[c];
    int64_t idx[THEUS_MAX_DIMS];
    for (int d = 0; d < c; d++)
        idx[d] = r->start[d];
    for (;;) {
        uint64_t off = (uint64_t)r->start[c] * stride[c];
        for (int d = 0; d < c; d++)
            off += (uint64_t)idx[d] * stride[d];
        int rc = fn(m, off, off + len - 1, user);
        if (rc)
            return rc;
        int d = c - 1;
        while (d >= 0 && ++idx[d] == r->stop[d]) {
            idx[d] = r->start[d];
            d--;
        }
        if (d < 0)
            return 0;
    }
}

typedef struct mark_ctx {
    uint64_t version;
    uint64_t last;   /* last block marked + 1 (0: none): runs of one block in a row */
} mark_ctx;

static int mark_run(const block_map *m, uint64_t first, uint64_t last, void *user)
{
    mark_ctx *c = user;
    uint64_t b = first >> m->shift, e = last >> m->shift;
    if (c->last && b < c->last)
        b = c->last;
    for (; b <= e && b < m->nblocks; b++)
        atomic_store_explicit(&m->v[b], c->version, memory_order_relaxed);
    c->last = e + 1;
    return 0;
}

/* The blocks of @r's first and last bytes (C order: every byte of @r lies between them);
 * 0 when @r is empty. */
static int span(const block_map *m, const theus_region *r, uint64_t *first, uint64_t *last)
{
    uint64_t lo = 0, hi = 0, stride = m->esize;
    for (int d = m->ndim - 1; d >= 0; d--) {
        if (r->stop[d] <= r->start[d])
            return 0;
        lo += (uint64_t)r->start[d] * stride;
        hi += (uint64_t)(r->stop[d] - 1) * stride;
        stride *= (uint64_t)m->shape[d];
    }
    *first = lo >> m->shift;
    *last = (hi + m->esize - 1) >> m->shift;
    return 1;
}

void block_map_mark(const block_map *m, const theus_region *r, uint64_t version)
{
    uint64_t first, last;
    if (!span(m, r, &first, &last))
        return;
    if (first == last) { /* the common small delta: one store */
        if (first < m->nblocks)
            atomic_store_explicit(&m->v[first], version, memory_order_relaxed);
        return;
    }
    mark_ctx c = {version, 0};
    for_each_run(m, r, mark_run, &c);
}

typedef struct probe_ctx {
    uint64_t base, found, last;
} probe_ctx;

static int probe_run(const block_map *m, uint64_t first, uint64_t last, void *user)
{
    probe_ctx *c = user;
    uint64_t b = first >> m->shift, e = last >> m->shift;
    if (c->last && b < c->last)
        b = c->last;
    for (; b <= e && b < m->nblocks; b++) {
        uint64_t v = atomic_load_explicit(&m->v[b], memory_order_relaxed);
        if (v > c->base) {
            c->found = v;
            return 1;
        }
    }
    c->last = e + 1;
    return 0;
}

int block_map_probe(const block_map *m, const theus_region *r, uint64_t base, uint64_t *version)
{
    uint64_t first, last;
    if (!span(m, r, &first, &last))
        return 0;
    if (first == last) {
        uint64_t v = first < m->nblocks
                         ? atomic_load_explicit(&m->v[first], memory_order_relaxed) : 0;
        if (v <= base)
            return 0;
        *version = v;
        return 1;
    }
    probe_ctx c = {base, 0, 0};
    if (!for_each_run(m, r, probe_run, &c))
        return 0;
    *version = c.found;
    return 1;
}
