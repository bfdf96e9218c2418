/* The GPU replay planner (cuda/replay_plan.c), checked without a GPU: a plan is run on the
 * CPU by an interpreter that decodes chunks with the kernel's own functions
 * (kernels/replay_desc.h) — waves one after the other, the chunks of a wave in reverse or
 * shuffled order, as a GPU may run them — and the result must be byte-identical to
 * region_transfer applying the batch in order. Each wave is also checked to write every
 * byte at most once (the GPU runs a wave's chunks concurrently). */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <theus/theus.h>

#include "dtype.h"
#include "region.h"
#include "replay_plan.h"

/* ---- a deterministic generator ------------------------------------------------------- */

static uint64_t g_rng;

static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static int64_t rnd_in(int64_t lo, int64_t hi) /* [lo, hi] */
{
    return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1));
}

/* ---- the interpreter ----------------------------------------------------------------- */

enum order { IN_ORDER, REVERSED, SHUFFLED };

static void run_chunk(const replay_plan *p, uint64_t c, const theus_replay_wave *wv)
{
    const uint64_t k = theus_replay_locate(wv, p->descs, c);
    cr_assert(k >= wv->desc_begin && k < wv->desc_end);
    cr_assert_eq(k, theus_replay_find(p->descs, wv->desc_begin, wv->desc_end, c),
                 "the shortcut and the search disagree on chunk %llu", (unsigned long long)c);
    const theus_replay_desc *d = &p->descs[k];
    cr_assert(c >= d->first_chunk, "chunk %llu found descriptor %llu starting at %llu",
              (unsigned long long)c, (unsigned long long)k,
              (unsigned long long)d->first_chunk);
    const uint64_t es = theus_dtype_size((theus_dtype)d->dtype);
    const theus_replay_span sp = theus_replay_chunk(d, c - d->first_chunk, es);
    cr_assert(sp.nrows >= 1 && sp.n >= 1 && sp.row0 + sp.nrows <= d->nrows);
    cr_assert(sp.nrows * sp.n * es <= THEUS_REPLAY_CHUNK_BYTES || sp.nrows == 1,
              "a chunk holds more than THEUS_REPLAY_CHUNK_BYTES");
    for (uint64_t r = 0; r < sp.nrows; r++) {
        int64_t doff, soff;
        theus_replay_row_offsets(d, p->dims, sp.row0 + r, &doff, &soff);
        unsigned char *dst = (unsigned char *)(uintptr_t)d->dst + doff + sp.col * es;
        const unsigned char *src = (const unsigned char *)(uintptr_t)d->src + soff + sp.col * es;
        if (d->op == DELTA_ASSIGN)
            memcpy(dst, src, sp.n * es);
        else
            dtype_add((theus_dtype)d->dtype, dst, src, sp.n);
    }
}

static void execute_compact(const replay_plan *p, enum order ord);

static void execute(const replay_plan *p, enum order ord)
{
    if (p->compact) {
        execute_compact(p, ord);
        return;
    }
    for (uint32_t w = 0; w < p->nwaves; w++) {
        const theus_replay_wave *wv = &p->waves[w];
        const uint64_t n = wv->chunk_end - wv->chunk_begin;
        uint64_t *perm = malloc((n ? n : 1) * sizeof *perm);
        cr_assert_not_null(perm);
        for (uint64_t i = 0; i < n; i++)
            perm[i] = ord == REVERSED ? wv->chunk_end - 1 - i : wv->chunk_begin + i;
        if (ord == SHUFFLED)
            for (uint64_t i = n; i > 1; i--) {
                uint64_t j = rnd() % i, t = perm[i - 1];
                perm[i - 1] = perm[j];
                perm[j] = t;
            }
        for (uint64_t i = 0; i < n; i++)
            run_chunk(p, perm[i], wv);
        free(perm);
    }
}

/* The compact form, run as the compact kernel does: segment c of a wave decoded with the
 * kernel's own functions, its group giving dtype and op. */
static void run_seg(const theus_replay_seg *sg, const theus_replay_group *groups, size_t ngroups)
{
    const uint32_t g = theus_replay_seg_group(sg);
    cr_assert_lt(g, ngroups, "segment names group %u of %zu", g, ngroups);
    const theus_replay_group *gr = &groups[g];
    const uint64_t es = theus_dtype_size((theus_dtype)gr->dtype);
    const uint32_t bytes = theus_replay_seg_bytes(sg);
    cr_assert(bytes >= 1 && bytes <= THEUS_REPLAY_CHUNK_BYTES && bytes % es == 0,
              "segment of %u bytes", bytes);
    uint64_t d, s;
    theus_replay_seg_addrs(sg, gr, &d, &s);
    if (gr->op == DELTA_ASSIGN)
        memcpy((void *)(uintptr_t)d, (const void *)(uintptr_t)s, bytes);
    else
        dtype_add((theus_dtype)gr->dtype, (void *)(uintptr_t)d, (const void *)(uintptr_t)s,
                  bytes / es);
}

static void execute_compact(const replay_plan *p, enum order ord)
{
    cr_assert(p->compact);
    for (uint32_t w = 0; w < p->nwaves; w++) {
        const theus_replay_wave *wv = &p->waves[w];
        const uint64_t n = wv->chunk_end - wv->chunk_begin;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t c = ord == REVERSED ? wv->chunk_end - 1 - i : wv->chunk_begin + i;
            if (ord == SHUFFLED && n > 1) /* a fixed odd stride visits every one once */
                c = wv->chunk_begin + (i * 7919u + 13u) % n;
            run_seg(&p->segs[c], p->groups, p->ngroups);
        }
    }
}

/* Compact plan @pc moves exactly what the wide plan @pw of the same batch moves, in the
 * same waves and order (one segment a descriptor). */
static void check_compact_matches_wide(const replay_plan *pc, const replay_plan *pw)
{
    cr_assert(pc->compact && !pw->compact);
    cr_assert_eq(pc->nwaves, pw->nwaves, "%u compact waves, %u wide", pc->nwaves, pw->nwaves);
    cr_assert_eq(pc->ndescs, pw->ndescs);
    cr_assert_eq(pc->total_chunks, pw->total_chunks);
    cr_assert_eq(pc->max_wave_chunks, pw->max_wave_chunks);
    for (uint32_t w = 0; w < pc->nwaves; w++)
        cr_assert_eq(memcmp(&pc->waves[w], &pw->waves[w], sizeof pc->waves[w]), 0, "wave %u", w);
    for (size_t k = 0; k < pw->ndescs; k++) {
        const theus_replay_desc *d = &pw->descs[k];
        const uint64_t es = theus_dtype_size((theus_dtype)d->dtype);
        const theus_replay_seg *sg = &pc->segs[d->first_chunk];
        cr_assert_lt(theus_replay_seg_group(sg), pc->ngroups);
        const theus_replay_group *g = &pc->groups[theus_replay_seg_group(sg)];
        uint64_t dst, src;
        theus_replay_seg_addrs(sg, g, &dst, &src);
        cr_assert_eq(dst, d->dst, "segment %zu: destination", k);
        cr_assert_eq(src, d->src, "segment %zu: source", k);
        cr_assert_eq(theus_replay_seg_bytes(sg), d->run * es, "segment %zu: length", k);
        cr_assert_eq(g->dtype, d->dtype);
        cr_assert_eq(g->op, d->op);
    }
}

/* Plan @t wide as well and compare (the plan @pc must be compact). */
static void check_against_wide(const replay_plan *pc, const replay_xfer *t, size_t n)
{
    replay_plan pw = {.wide_only = 1};
    cr_assert_eq(replay_plan_build(&pw, t, n), THEUS_OK);
    check_compact_matches_wide(pc, &pw);
    replay_plan_release(&pw);
}

/* Structure: waves tile the descriptors and chunks contiguously; within a wave, first
 * chunks ascend. */
static void check_structure(const replay_plan *p)
{
    uint64_t d = 0, c = 0;
    if (p->compact) {
        /* A wave's segments are its descriptors and its chunks. */
        for (uint32_t w = 0; w < p->nwaves; w++) {
            const theus_replay_wave *wv = &p->waves[w];
            cr_assert_eq(wv->desc_begin, c, "wave %u starts at segment %llu, expected %llu", w,
                         (unsigned long long)wv->desc_begin, (unsigned long long)c);
            cr_assert_eq(wv->chunk_begin, wv->desc_begin);
            cr_assert_eq(wv->chunk_end, wv->desc_end);
            cr_assert(wv->desc_end > wv->desc_begin, "wave %u is empty", w);
            c = wv->desc_end;
        }
        cr_assert_eq(c, p->total_chunks);
        cr_assert_eq(c, p->ndescs);
        return;
    }
    for (uint32_t w = 0; w < p->nwaves; w++) {
        const theus_replay_wave *wv = &p->waves[w];
        cr_assert_eq(wv->desc_begin, d, "wave %u starts at descriptor %llu, expected %llu", w,
                     (unsigned long long)wv->desc_begin, (unsigned long long)d);
        cr_assert_eq(wv->chunk_begin, c);
        cr_assert(wv->desc_end > wv->desc_begin, "wave %u is empty", w);
        for (uint64_t k = wv->desc_begin; k < wv->desc_end; k++) {
            const theus_replay_desc *x = &p->descs[k];
            const uint64_t next = k + 1 < wv->desc_end ? p->descs[k + 1].first_chunk : wv->chunk_end;
            cr_assert_eq(x->first_chunk, k == wv->desc_begin ? wv->chunk_begin : x->first_chunk);
            cr_assert(next > x->first_chunk, "descriptor %llu has no chunk", (unsigned long long)k);
        }
        d = wv->desc_end;
        c = wv->chunk_end;
    }
    cr_assert_eq(d, p->ndescs);
    cr_assert_eq(c, p->total_chunks);
}

/* Every byte is written by at most one descriptor of a wave: each byte of the arena at
 * @base records the wave and descriptor that wrote it last. */
static void check_disjoint_waves(const replay_plan *p, const unsigned char *base, size_t len)
{
    int64_t *wave_of = malloc(len * sizeof *wave_of);
    uint64_t *desc_of = malloc(len * sizeof *desc_of);
    cr_assert(wave_of && desc_of);
    for (size_t i = 0; i < len; i++)
        wave_of[i] = -1;
    for (uint32_t w = 0; p->compact && w < p->nwaves; w++) {
        const theus_replay_wave *wv = &p->waves[w];
        for (uint64_t k = wv->chunk_begin; k < wv->chunk_end; k++) {
            const theus_replay_seg *sg = &p->segs[k];
            uint64_t d, s;
            theus_replay_seg_addrs(sg, &p->groups[theus_replay_seg_group(sg)], &d, &s);
            const uint64_t at = d - (uint64_t)(uintptr_t)base;
            cr_assert(at + theus_replay_seg_bytes(sg) <= len, "segment %llu writes outside the arena",
                      (unsigned long long)k);
            for (uint64_t b = at; b < at + theus_replay_seg_bytes(sg); b++) {
                if (wave_of[b] == (int64_t)w && desc_of[b] != k)
                    cr_assert_fail("wave %u: byte %llu written by segments %llu and %llu", w,
                                   (unsigned long long)b, (unsigned long long)desc_of[b],
                                   (unsigned long long)k);
                wave_of[b] = (int64_t)w;
                desc_of[b] = k;
            }
        }
    }
    for (uint32_t w = 0; !p->compact && w < p->nwaves; w++) {
        const theus_replay_wave *wv = &p->waves[w];
        for (uint64_t k = wv->desc_begin; k < wv->desc_end; k++) {
            const theus_replay_desc *d = &p->descs[k];
            const uint64_t es = theus_dtype_size((theus_dtype)d->dtype);
            for (uint64_t r = 0; r < d->nrows; r++) {
                int64_t doff, soff;
                theus_replay_row_offsets(d, p->dims, r, &doff, &soff);
                const uint64_t at = d->dst + (uint64_t)doff - (uint64_t)(uintptr_t)base;
                cr_assert(at + d->run * es <= len, "descriptor %llu writes outside the arena",
                          (unsigned long long)k);
                for (uint64_t b = at; b < at + d->run * es; b++) {
                    if (wave_of[b] == (int64_t)w && desc_of[b] != k)
                        cr_assert_fail("wave %u: byte %llu written by descriptors %llu and %llu",
                                       w, (unsigned long long)b,
                                       (unsigned long long)desc_of[b], (unsigned long long)k);
                    wave_of[b] = (int64_t)w;
                    desc_of[b] = k;
                }
            }
        }
    }
    free(desc_of);
    free(wave_of);
}

/* ---- random batches ------------------------------------------------------------------ */

#define NFIELDS 4

typedef struct fieldinfo {
    theus_dtype dt;
    theus_region frame;    /* whole fieldinfo */
    size_t off;            /* byte offset in the arena */
    size_t nbytes;
} fieldinfo;

typedef struct batch {
    unsigned char *arena;  /* all fields, back to back */
    size_t arena_len;
    fieldinfo f[NFIELDS];
    size_t n;
    replay_xfer *t;
    theus_region *sub, *sframe, *dframe;
    unsigned char **payload;
} batch;

static const theus_dtype k_dtypes[] = {
    THEUS_DTYPE_F32, THEUS_DTYPE_F16, THEUS_DTYPE_BF16, THEUS_DTYPE_F64, THEUS_DTYPE_I32,
    THEUS_DTYPE_U8,  THEUS_DTYPE_I64, THEUS_DTYPE_U16,  THEUS_DTYPE_BOOL, THEUS_DTYPE_I8,
};

static void random_sub(const theus_region *frame, int big, theus_region *sub)
{
    memset(sub, 0, sizeof *sub);
    sub->ndim = frame->ndim;
    for (int d = 0; d < frame->ndim; d++) {
        const int64_t ext = frame->stop[d];
        int64_t len = big ? rnd_in(1, ext) : rnd_in(1, ext < 3 ? ext : 3);
        if (rnd() % 4 == 0)
            len = ext; /* whole dimension: folds */
        const int64_t s = rnd_in(0, ext - len);
        sub->start[d] = s;
        sub->stop[d] = s + len;
    }
}

/* Nonzero: every field is 1-D (batches of contiguous runs, which plan compact). */
static int g_flat;

/* @overlap: percent chance a transfer reuses (part of) an earlier one's region. */
static void make_batch(batch *b, size_t n, int overlap, int big)
{
    memset(b, 0, sizeof *b);
    size_t off = 0;
    for (int i = 0; i < NFIELDS; i++) {
        fieldinfo *f = &b->f[i];
        f->dt = k_dtypes[rnd() % (sizeof k_dtypes / sizeof k_dtypes[0])];
        memset(&f->frame, 0, sizeof f->frame);
        f->frame.ndim = g_flat ? 1 : (int)rnd_in(1, 4);
        size_t ne = 1;
        for (int d = 0; d < f->frame.ndim; d++) {
            const int64_t e = f->frame.ndim == 1 ? rnd_in(1, big ? 40000 : 300)
                                                 : rnd_in(1, f->frame.ndim == 2 ? 200 : 12);
            f->frame.stop[d] = e;
            ne *= (size_t)e;
        }
        f->nbytes = ne * theus_dtype_size(f->dt);
        f->off = off;
        off += (f->nbytes + 63) & ~(size_t)63;
    }
    b->arena_len = off;
    b->arena = malloc(off);
    cr_assert_not_null(b->arena);
    for (size_t i = 0; i < off; i++)
        b->arena[i] = (unsigned char)rnd();
    b->n = n;
    b->t = calloc(n, sizeof *b->t);
    b->sub = calloc(n, sizeof *b->sub);
    b->sframe = calloc(n, sizeof *b->sframe);
    b->dframe = calloc(n, sizeof *b->dframe);
    b->payload = calloc(n, sizeof *b->payload);
    cr_assert(b->t && b->sub && b->sframe && b->dframe && b->payload);
    for (size_t i = 0; i < n; i++) {
        size_t fi = rnd() % NFIELDS;
        int reuse = i > 0 && (int)(rnd() % 100) < overlap;
        if (reuse) {
            size_t j = rnd() % i;
            for (fi = 0; fi < NFIELDS; fi++)
                if (b->t[j].dst == b->arena + b->f[fi].off)
                    break;
            b->sub[i] = b->sub[j];
            if (rnd() % 2) /* a neighbour that shares part of it */
                for (int d = 0; d < b->sub[i].ndim; d++)
                    if (b->sub[i].stop[d] < b->f[fi].frame.stop[d] && rnd() % 2) {
                        b->sub[i].start[d]++;
                        b->sub[i].stop[d]++;
                    }
        } else {
            random_sub(&b->f[fi].frame, big && rnd() % 3 == 0, &b->sub[i]);
        }
        const fieldinfo *f = &b->f[fi];
        /* The payload: laid out as the sub-region (a commit's staging), or sometimes as a
         * bigger frame around it (a gather's source). */
        b->sframe[i] = b->sub[i];
        if (rnd() % 4 == 0)
            for (int d = 0; d < f->frame.ndim; d++) {
                if (b->sframe[i].start[d] > 0)
                    b->sframe[i].start[d]--;
                b->sframe[i].stop[d] += (int64_t)(rnd() % 3);
            }
        const size_t pn = region_nelems(&b->sframe[i]) * theus_dtype_size(f->dt);
        b->payload[i] = malloc(pn ? pn : 1);
        cr_assert_not_null(b->payload[i]);
        for (size_t k = 0; k < pn; k++)
            b->payload[i][k] = (unsigned char)rnd();
        b->dframe[i] = f->frame;
        b->t[i].op = rnd() % 2 ? DELTA_ADD : DELTA_ASSIGN;
        b->t[i].dtype = f->dt;
        b->t[i].dst = b->arena + f->off;
        b->t[i].dframe = &f->frame;
        b->t[i].src = b->payload[i];
        b->t[i].sframe = &b->sframe[i];
        b->t[i].sub = &b->sub[i];
    }
}

static void free_batch(batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->payload[i]);
    free(b->payload);
    free(b->t);
    free(b->sub);
    free(b->sframe);
    free(b->dframe);
    free(b->arena);
}

/* Plans check_batch found compact (the generator must make some). */
static int g_compact_plans;

/* Plan @b, run it with @ord on a copy of the arena and compare with the reference (the
 * compact form too, when the plan has one). */
static void check_batch(replay_plan *p, batch *b, enum order ord, uint32_t *nwaves)
{
    unsigned char *ref = malloc(b->arena_len);
    unsigned char *saved = malloc(b->arena_len);
    cr_assert(ref && saved);
    memcpy(saved, b->arena, b->arena_len);
    memcpy(ref, b->arena, b->arena_len);
    for (size_t i = 0; i < b->n; i++) {
        const replay_xfer *t = &b->t[i];
        region_transfer(t->dtype, t->op, ref + ((unsigned char *)t->dst - b->arena), t->dframe,
                        t->src, t->sframe, t->sub);
    }
    cr_assert_eq(replay_plan_build(p, b->t, b->n), THEUS_OK, "%s", theus_last_error_message());
    check_structure(p);
    check_disjoint_waves(p, b->arena, b->arena_len);
    execute(p, ord);
    size_t first = b->arena_len;
    for (size_t i = 0; i < b->arena_len && first == b->arena_len; i++)
        if (ref[i] != b->arena[i])
            first = i;
    cr_assert_eq(first, b->arena_len,
                 "%s plan run (%u waves, %zu descriptors) differs from region_transfer at byte %zu",
                 p->compact ? "compact" : "wide", p->nwaves, p->ndescs, first);
    if (p->compact) {
        /* The same batch planned wide, run on a fresh copy: the same bytes, and the same
         * waves and moves as the compact plan. */
        g_compact_plans++;
        replay_plan pw = {.wide_only = 1};
        cr_assert_eq(replay_plan_build(&pw, b->t, b->n), THEUS_OK);
        check_structure(&pw);
        check_compact_matches_wide(p, &pw);
        memcpy(b->arena, saved, b->arena_len);
        execute(&pw, ord);
        cr_assert_eq(memcmp(ref, b->arena, b->arena_len), 0,
                     "wide plan run (%u waves) of a compact batch differs from region_transfer",
                     pw.nwaves);
        replay_plan_release(&pw);
    }
    if (nwaves)
        *nwaves = p->nwaves;
    memcpy(b->arena, saved, b->arena_len);
    free(saved);
    free(ref);
}

Test(replay_plan, random_batches_match_region_transfer)
{
    replay_plan p = {0};
    uint32_t max_waves = 0;
    for (int round = 0; round < 120; round++) {
        g_rng = 0x9e3779b97f4a7c15ull + (uint64_t)round * 7919u;
        batch b;
        const size_t n = (size_t)rnd_in(1, round % 10 == 0 ? 400 : 40);
        make_batch(&b, n, round % 3 == 0 ? 0 : 30, round % 4 == 0);
        uint32_t nw = 0;
        check_batch(&p, &b, (enum order)(round % 3), &nw);
        if (nw > max_waves)
            max_waves = nw;
        free_batch(&b);
    }
    /* The generator does produce overlapping batches (else waves went untested). */
    cr_assert_gt(max_waves, 2);
    replay_plan_release(&p);
}

/* Batches of 1-D runs (a commit's usual shape) plan compact: both forms, run on the CPU with
 * the kernel's decoding, give region_transfer's bytes, waves and mixed dtypes and ops
 * included; batches with a run longer than THEUS_REPLAY_COMPACT_MAX_CHUNKS stay wide. */
Test(replay_plan, flat_batches_plan_compact_and_match)
{
    replay_plan p = {0};
    uint32_t max_waves = 0;
    int wide = 0;
    g_flat = 1;
    g_compact_plans = 0;
    for (int round = 0; round < 150; round++) {
        g_rng = 0x2545f4914f6cdd1dull + (uint64_t)round * 6151u;
        batch b;
        const size_t n = (size_t)rnd_in(1, round % 10 == 0 ? 600 : 40);
        make_batch(&b, n, round % 3 == 0 ? 0 : 30, round % 5 == 0);
        uint32_t nw = 0;
        check_batch(&p, &b, (enum order)(round % 3), &nw);
        if (!p.compact)
            wide++;
        if (p.compact && nw > max_waves)
            max_waves = nw;
        free_batch(&b);
    }
    g_flat = 0;
    cr_assert_gt(g_compact_plans, 100, "only %d of 150 flat batches planned compact",
                 g_compact_plans);
    cr_assert_gt(wide, 0, "no flat batch had a run too long for the compact form");
    cr_assert_gt(max_waves, 2, "no compact plan had several waves");
    replay_plan_release(&p);
}

/* Where the compact form starts and stops: a run of THEUS_REPLAY_COMPACT_MAX_CHUNKS chunks is
 * cut into that many segments, one chunk longer keeps the plan wide; a small batch fits the
 * kernel's argument; groups change with dtype and op, and with addresses too far apart. */
Test(replay_plan, compact_limits_and_groups)
{
    enum { MAXB = THEUS_REPLAY_COMPACT_MAX_CHUNKS * THEUS_REPLAY_CHUNK_BYTES };
    static uint8_t field[MAXB + 64], src[MAXB + 64];
    theus_region frame = {.ndim = 1}, sub = {.ndim = 1};
    frame.stop[0] = MAXB + 64;
    sub.stop[0] = MAXB - 5;
    replay_xfer t = {DELTA_ASSIGN, THEUS_DTYPE_U8, field, &frame, src, &sub, &sub};
    replay_plan p = {0};
    cr_assert_eq(replay_plan_build(&p, &t, 1), THEUS_OK);
    cr_assert(p.compact);
    cr_assert_eq(p.total_chunks, THEUS_REPLAY_COMPACT_MAX_CHUNKS);
    cr_assert_eq(p.ngroups, 1);
    for (uint32_t k = 0; k + 1 < THEUS_REPLAY_COMPACT_MAX_CHUNKS; k++)
        cr_assert_eq(theus_replay_seg_bytes(&p.segs[k]), THEUS_REPLAY_CHUNK_BYTES);
    cr_assert_eq(theus_replay_seg_bytes(&p.segs[THEUS_REPLAY_COMPACT_MAX_CHUNKS - 1]),
                 THEUS_REPLAY_CHUNK_BYTES - 5);
    theus_replay_inline in;
    cr_assert_eq(replay_plan_inline(&p, &in), 1);
    cr_assert_eq(in.nsegs, THEUS_REPLAY_COMPACT_MAX_CHUNKS);
    sub.stop[0] = MAXB + 1;
    cr_assert_eq(replay_plan_build(&p, &t, 1), THEUS_OK);
    cr_assert(!p.compact, "a run of %u chunks planned compact", (unsigned)p.total_chunks);
    cr_assert_eq(replay_plan_inline(&p, &in), 0);

    /* One element, the synchronous commit's usual batch: one segment, inline, run by the
     * inline decoding. */
    float f[16] = {0}, v = 2.5f;
    theus_region ff = {.ndim = 1}, one = {.ndim = 1};
    ff.stop[0] = 16;
    one.start[0] = 7;
    one.stop[0] = 8;
    replay_xfer u = {DELTA_ADD, THEUS_DTYPE_F32, f, &ff, &v, &one, &one};
    cr_assert_eq(replay_plan_build(&p, &u, 1), THEUS_OK);
    cr_assert(p.compact);
    cr_assert_eq(replay_plan_inline(&p, &in), 1);
    cr_assert_eq(in.nsegs, 1);
    cr_assert_eq(in.ngroups, 1);
    for (int rep = 0; rep < 2; rep++)
        for (uint32_t k = 0; k < in.nsegs; k++)
            run_seg(&in.segs[k], in.groups, in.ngroups);
    cr_assert_eq(f[7], 5.0f);
    cr_assert_eq(replay_plan_upload_bytes(&p),
                 sizeof(theus_replay_wave) + sizeof(theus_replay_seg) + sizeof(theus_replay_group));

    /* Groups: same dtype and op share one; an op change starts one; so does an address
     * 2^47 bytes away (described, never touched), and its offsets decode right. */
    theus_region big = {.ndim = 1}, a = {.ndim = 1}, b = {.ndim = 1};
    big.stop[0] = (int64_t)1 << 40;
    a.start[0] = 0;
    a.stop[0] = 4;
    b.start[0] = 100;
    b.stop[0] = 104;
    char *base0 = (char *)(uintptr_t)((uint64_t)1 << 20);
    char *base1 = (char *)(uintptr_t)((uint64_t)1 << 48);
    replay_xfer g[4] = {
        {DELTA_ASSIGN, THEUS_DTYPE_U8, base0, &big, base0, &a, &a},
        {DELTA_ASSIGN, THEUS_DTYPE_U8, base0, &big, base0 + 4096, &b, &b},
        {DELTA_ADD, THEUS_DTYPE_U8, base0, &big, base0, &b, &b},
        {DELTA_ADD, THEUS_DTYPE_U8, base1, &big, base0 + 8192, &a, &a},
    };
    cr_assert_eq(replay_plan_build(&p, g, 4), THEUS_OK);
    cr_assert(p.compact);
    cr_assert_eq(p.ngroups, 3, "%zu groups", p.ngroups);
    check_against_wide(&p, g, 4);
    uint64_t d, sa;
    theus_replay_seg_addrs(&p.segs[p.waves[p.nwaves - 1].chunk_end - 1],
                           &p.groups[theus_replay_seg_group(&p.segs[p.waves[p.nwaves - 1].chunk_end - 1])],
                           &d, &sa);
    cr_assert(d == (uint64_t)(uintptr_t)base1 || d == (uint64_t)(uintptr_t)(base0 + 100));
    /* A negative offset: a later transfer below the group's first address. */
    replay_xfer r[2] = {
        {DELTA_ASSIGN, THEUS_DTYPE_U8, base0, &big, base0 + 4096, &b, &b},
        {DELTA_ASSIGN, THEUS_DTYPE_U8, base0, &big, base0, &a, &a},
    };
    cr_assert_eq(replay_plan_build(&p, r, 2), THEUS_OK);
    cr_assert(p.compact);
    cr_assert_eq(p.ngroups, 1);
    check_against_wide(&p, r, 2);
    replay_plan_release(&p);
}

/* What goes to the kernel as its argument: one wave of at most THEUS_REPLAY_INLINE_SEGS
 * segments in at most THEUS_REPLAY_INLINE_GROUPS groups, nothing else. */
Test(replay_plan, inline_batches)
{
    enum { N = THEUS_REPLAY_INLINE_SEGS + 1 };
    int32_t field[64] = {0}, pay[N];
    theus_region frame = {.ndim = 1}, sub[N];
    frame.stop[0] = 64;
    replay_xfer t[N];
    for (int i = 0; i < N; i++) {
        pay[i] = i + 1;
        sub[i] = (theus_region){.ndim = 1};
        sub[i].start[0] = 3 * i;
        sub[i].stop[0] = 3 * i + 1;
        t[i] = (replay_xfer){DELTA_ADD, THEUS_DTYPE_I32, field, &frame, &pay[i], &sub[i], &sub[i]};
    }
    replay_plan p = {0};
    theus_replay_inline in;
    /* The largest that fits (payloads are separate, so their offsets differ; one group). */
    cr_assert_eq(replay_plan_build(&p, t, THEUS_REPLAY_INLINE_SEGS), THEUS_OK);
    cr_assert_eq(replay_plan_inline(&p, &in), 1);
    cr_assert_eq(in.nsegs, THEUS_REPLAY_INLINE_SEGS);
    for (uint32_t k = 0; k < in.nsegs; k++)
        run_seg(&in.segs[k], in.groups, in.ngroups);
    for (int i = 0; i < (int)THEUS_REPLAY_INLINE_SEGS; i++)
        cr_assert_eq(field[3 * i], i + 1);
    /* One segment more: uploaded. */
    cr_assert_eq(replay_plan_build(&p, t, N), THEUS_OK);
    cr_assert(p.compact);
    cr_assert_eq(replay_plan_inline(&p, &in), 0);
    /* Three groups (the op changes twice): uploaded. */
    t[1].op = DELTA_ASSIGN;
    cr_assert_eq(replay_plan_build(&p, t, 3), THEUS_OK);
    cr_assert_eq(p.ngroups, 3);
    cr_assert_eq(replay_plan_inline(&p, &in), 0);
    t[1].op = DELTA_ADD;
    /* Two waves (the same element twice): uploaded. */
    t[1].sub = t[1].sframe = &sub[0];
    cr_assert_eq(replay_plan_build(&p, t, 2), THEUS_OK);
    cr_assert_eq(p.nwaves, 2);
    cr_assert_eq(replay_plan_inline(&p, &in), 0);
    replay_plan_release(&p);
}

/* More groups than a segment can name: the plan stays wide (and right). */
Test(replay_plan, too_many_groups_stay_wide)
{
    enum { N = THEUS_REPLAY_COMPACT_MAX_GROUPS + 10 };
    int32_t *field = calloc(N, sizeof *field), *ref = calloc(N, sizeof *ref);
    int32_t *pay = malloc(N * sizeof *pay);
    theus_region *sub = calloc(N, sizeof *sub);
    replay_xfer *t = calloc(N, sizeof *t);
    cr_assert(field && ref && pay && sub && t);
    theus_region frame = {.ndim = 1};
    frame.stop[0] = N;
    for (int i = 0; i < N; i++) {
        pay[i] = i * 3 + 1;
        sub[i].ndim = 1;
        sub[i].start[0] = i;
        sub[i].stop[0] = i + 1;
        /* alternating ops: a group each */
        t[i] = (replay_xfer){i % 2 ? DELTA_ADD : DELTA_ASSIGN, THEUS_DTYPE_I32, field, &frame,
                             &pay[i], &sub[i], &sub[i]};
        region_transfer(THEUS_DTYPE_I32, t[i].op, ref, &frame, t[i].src, &sub[i], &sub[i]);
    }
    replay_plan p = {0};
    cr_assert_eq(replay_plan_build(&p, t, N), THEUS_OK);
    cr_assert(!p.compact);
    execute(&p, SHUFFLED);
    cr_assert_eq(memcmp(field, ref, N * sizeof *field), 0);
    /* One fewer transfer than the limit allows: compact. */
    cr_assert_eq(replay_plan_build(&p, t, THEUS_REPLAY_COMPACT_MAX_GROUPS), THEUS_OK);
    cr_assert(p.compact);
    cr_assert_eq(p.ngroups, THEUS_REPLAY_COMPACT_MAX_GROUPS);
    replay_plan_release(&p);
    free(t);
    free(sub);
    free(pay);
    free(ref);
    free(field);
}

/* Batches where most transfers meet many others: past a few dozen candidates the planner
 * orders a transfer by its span alone, which must still give the serial result. */
Test(replay_plan, crowded_batches_stay_correct)
{
    replay_plan p = {0};
    uint32_t max_waves = 0;
    for (int round = 0; round < 6; round++) {
        g_rng = 0x5151u + (uint64_t)round * 104729u;
        batch b;
        make_batch(&b, 1500, 60, 0);
        uint32_t nw = 0;
        check_batch(&p, &b, (enum order)(round % 3), &nw);
        if (nw > max_waves)
            max_waves = nw;
        free_batch(&b);
    }
    cr_assert_gt(max_waves, 10);
    replay_plan_release(&p);
}

/* Thousands of adds onto the same elements: one wave each, and their sum. */
Test(replay_plan, thousands_of_adds_onto_one_counter)
{
    enum { K = 3000 };
    int64_t field[8] = {0};
    int64_t *one = malloc(K * sizeof *one);
    replay_xfer *t = malloc((K + 1) * sizeof *t);
    cr_assert(one && t);
    theus_region frame = {.ndim = 1}, sub = {.ndim = 1}, other = {.ndim = 1};
    frame.stop[0] = 8;
    sub.start[0] = 2;
    sub.stop[0] = 3;
    other.start[0] = 6;
    other.stop[0] = 7;
    for (int i = 0; i < K; i++) {
        one[i] = i + 1;
        t[i] = (replay_xfer){DELTA_ADD, THEUS_DTYPE_I64, field, &frame, &one[i], &sub, &sub};
    }
    int64_t seven = 7;
    t[K] = (replay_xfer){DELTA_ASSIGN, THEUS_DTYPE_I64, field, &frame, &seven, &other, &other};
    replay_plan p = {0};
    cr_assert_eq(replay_plan_build(&p, t, K + 1), THEUS_OK);
    cr_assert_eq(p.nwaves, K, "%u waves for %d adds onto one element", p.nwaves, K);
    check_structure(&p);
    execute(&p, REVERSED);
    cr_assert_eq(field[2], (int64_t)K * (K + 1) / 2);
    cr_assert_eq(field[6], 7);
    replay_plan_release(&p);
    free(t);
    free(one);
}

/* 1-D batches that look like a commit: many disjoint segments of one big field, in
 * address order (one wave, the O(n) path) and shuffled (the radix sort path). */
static void segments(int shuffle)
{
    enum { N = 5000, SEG = 37 };
    const size_t len = (size_t)N * SEG * 3;
    float *field = calloc(len, sizeof *field);
    float *ref = calloc(len, sizeof *ref);
    float *pay = malloc((size_t)N * SEG * sizeof *pay);
    theus_region frame = {.ndim = 1};
    frame.stop[0] = (int64_t)len;
    theus_region *sub = calloc(N, sizeof *sub);
    replay_xfer *t = calloc(N, sizeof *t);
    cr_assert(field && ref && pay && sub && t);
    for (size_t i = 0; i < (size_t)N * SEG; i++)
        pay[i] = (float)(i % 1000);
    for (int i = 0; i < N; i++) {
        sub[i].ndim = 1;
        sub[i].start[0] = (int64_t)i * SEG * 3 + (i % 5);
        sub[i].stop[0] = sub[i].start[0] + SEG;
    }
    if (shuffle)
        for (int i = N; i > 1; i--) {
            int j = (int)(rnd() % (uint64_t)i);
            theus_region x = sub[i - 1];
            sub[i - 1] = sub[j];
            sub[j] = x;
        }
    for (int i = 0; i < N; i++) {
        t[i] = (replay_xfer){i % 2 ? DELTA_ADD : DELTA_ASSIGN, THEUS_DTYPE_F32, field, &frame,
                             pay + (size_t)i * SEG, &sub[i], &sub[i]};
        region_transfer(THEUS_DTYPE_F32, t[i].op, ref, &frame, t[i].src, &sub[i], &sub[i]);
    }
    replay_plan p = {0};
    cr_assert_eq(replay_plan_build(&p, t, N), THEUS_OK);
    cr_assert_eq(p.nwaves, 1, "disjoint segments took %u waves", p.nwaves);
    cr_assert_eq(p.ndescs, (size_t)N);
    /* Compact: one segment a transfer, a group per change of op (they alternate); one
     * wave keeps the batch order. */
    cr_assert(p.compact);
    cr_assert_eq(p.total_chunks, (uint64_t)N);
    cr_assert_eq(p.ngroups, (size_t)N);
    for (int i = 0; i < N; i++) {
        uint64_t d, s;
        theus_replay_seg_addrs(&p.segs[i], &p.groups[theus_replay_seg_group(&p.segs[i])], &d, &s);
        cr_assert_eq(d, (uint64_t)(uintptr_t)(field + sub[i].start[0]));
    }
    check_structure(&p);
    check_against_wide(&p, t, N);
    execute(&p, SHUFFLED);
    cr_assert_eq(memcmp(field, ref, len * sizeof *field), 0);
    replay_plan_release(&p);
    free(t);
    free(sub);
    free(pay);
    free(ref);
    free(field);
}

Test(replay_plan, sorted_segments_one_wave) { segments(0); }
Test(replay_plan, shuffled_segments_one_wave) { g_rng = 42; segments(1); }

/* k adds onto one element: k waves, and the sum of all of them. */
Test(replay_plan, repeated_adds_serialize)
{
    enum { K = 9 };
    int64_t field[16] = {0}, one[K];
    theus_region frame = {.ndim = 1}, sub = {.ndim = 1};
    frame.stop[0] = 16;
    sub.start[0] = 5;
    sub.stop[0] = 6;
    replay_xfer t[K + 1];
    for (int i = 0; i < K; i++) {
        one[i] = i + 1;
        t[i] = (replay_xfer){DELTA_ADD, THEUS_DTYPE_I64, field, &frame, &one[i], &sub, &sub};
    }
    /* and one disjoint assign, which joins the first wave */
    int64_t seven = 7;
    theus_region other = {.ndim = 1};
    other.start[0] = 9;
    other.stop[0] = 10;
    t[K] = (replay_xfer){DELTA_ASSIGN, THEUS_DTYPE_I64, field, &frame, &seven, &other, &other};
    replay_plan p = {0};
    cr_assert_eq(replay_plan_build(&p, t, K + 1), THEUS_OK);
    cr_assert_eq(p.nwaves, K);
    cr_assert_eq(p.waves[0].desc_end - p.waves[0].desc_begin, 2);
    check_structure(&p);
    execute(&p, REVERSED);
    cr_assert_eq(field[5], K * (K + 1) / 2);
    cr_assert_eq(field[9], 7);
    replay_plan_release(&p);
}

/* Strided regions whose bounding spans interleave but share no element: one wave. */
Test(replay_plan, interleaved_columns_one_wave)
{
    float field[8 * 8] = {0}, a[8], b2[8];
    for (int i = 0; i < 8; i++) {
        a[i] = (float)i;
        b2[i] = (float)(10 + i);
    }
    theus_region frame = {.ndim = 2}, c0 = {.ndim = 2}, c1 = {.ndim = 2};
    frame.stop[0] = frame.stop[1] = 8;
    c0.stop[0] = c1.stop[0] = 8;
    c0.start[1] = 2;
    c0.stop[1] = 3;
    c1.start[1] = 5;
    c1.stop[1] = 6;
    replay_xfer t[2] = {
        {DELTA_ASSIGN, THEUS_DTYPE_F32, field, &frame, a, &c0, &c0},
        {DELTA_ASSIGN, THEUS_DTYPE_F32, field, &frame, b2, &c1, &c1},
    };
    replay_plan p = {0};
    cr_assert_eq(replay_plan_build(&p, t, 2), THEUS_OK);
    cr_assert_eq(p.nwaves, 1);
    cr_assert_eq(p.ndims, 2);
    execute(&p, REVERSED);
    for (int r = 0; r < 8; r++) {
        cr_assert_eq(field[r * 8 + 2], (float)r);
        cr_assert_eq(field[r * 8 + 5], (float)(10 + r));
    }
    replay_plan_release(&p);
}

/* Long rows are split into pieces, short rows grouped: chunk counts as documented. */
Test(replay_plan, chunking)
{
    static uint8_t big[100000], src[100000];
    theus_region frame = {.ndim = 1}, whole = {.ndim = 1};
    frame.stop[0] = whole.stop[0] = 100000;
    replay_xfer t = {DELTA_ASSIGN, THEUS_DTYPE_U8, big, &frame, src, &whole, &whole};
    replay_plan p = {0};
    cr_assert_eq(replay_plan_build(&p, &t, 1), THEUS_OK);
    cr_assert_eq(p.descs[0].pieces, (100000 + THEUS_REPLAY_CHUNK_BYTES - 1) / THEUS_REPLAY_CHUNK_BYTES);
    cr_assert_eq(p.total_chunks, p.descs[0].pieces);
    /* 1000 rows of 3 f32 (a column block of a [1000, 25] field): grouped. */
    static float m[1000 * 25], s3[3000];
    theus_region mf = {.ndim = 2}, blk = {.ndim = 2};
    mf.stop[0] = 1000;
    mf.stop[1] = 25;
    blk.stop[0] = 1000;
    blk.start[1] = 4;
    blk.stop[1] = 7;
    replay_xfer u = {DELTA_ADD, THEUS_DTYPE_F32, m, &mf, s3, &blk, &blk};
    cr_assert_eq(replay_plan_build(&p, &u, 1), THEUS_OK);
    const uint32_t rpc = THEUS_REPLAY_CHUNK_BYTES / 4 / 3;
    cr_assert_eq(p.descs[0].pieces, 0);
    cr_assert_eq(p.descs[0].rows_per_chunk, rpc);
    cr_assert_eq(p.total_chunks, (1000 + rpc - 1) / rpc);
    replay_plan_release(&p);
}

/* What moves nothing is dropped; an empty batch plans nothing. */
Test(replay_plan, empty_and_dropped)
{
    replay_plan p = {0};
    cr_assert_eq(replay_plan_build(&p, NULL, 0), THEUS_OK);
    cr_assert_eq(p.nwaves, 0);
    float f[4] = {0}, v = 3.0f;
    theus_region frame = {.ndim = 1}, empty = {.ndim = 1}, scalar = {.ndim = 0};
    frame.stop[0] = 4;
    empty.start[0] = empty.stop[0] = 2;
    replay_xfer t[3] = {
        {DELTA_ASSIGN, THEUS_DTYPE_F32, f, &frame, &v, &empty, &empty},
        {DELTA_ASSIGN, (theus_dtype)99, f, &frame, &v, &frame, &frame},
        {DELTA_ASSIGN, THEUS_DTYPE_F32, f, &scalar, &v, &scalar, &scalar},
    };
    cr_assert_eq(replay_plan_build(&p, t, 2), THEUS_OK);
    cr_assert_eq(p.nwaves, 0);
    cr_assert_eq(p.ndescs, 0);
    cr_assert_eq(replay_plan_build(&p, t, 3), THEUS_OK);
    cr_assert_eq(p.ndescs, 1);
    execute(&p, IN_ORDER);
    cr_assert_eq(f[0], 3.0f);
    replay_plan_release(&p);
}

/* A row of 2^32 chunks cannot be described: EINVAL with a reason, nothing planned. The
 * addresses are never touched, so no memory backs this field. */
Test(replay_plan, row_beyond_limits)
{
    theus_region frame = {.ndim = 1};
    frame.stop[0] = (int64_t)1 << 47;
    replay_xfer t = {DELTA_ASSIGN, THEUS_DTYPE_U8, (void *)(uintptr_t)4096, &frame,
                     (void *)(uintptr_t)4096, &frame, &frame};
    replay_plan p = {0};
    cr_assert_eq(replay_plan_build(&p, &t, 1), THEUS_EINVAL);
    cr_assert_not_null(strstr(theus_last_error_message(), "limits"), "%s", theus_last_error_message());
    cr_assert_eq(p.nwaves, 0);
    cr_assert_eq(p.ndescs, 0);
    replay_plan_release(&p);
}

/* ---- allocation failure -------------------------------------------------------------- */

static long g_calls, g_fail_at;

static void *failing_malloc(size_t n)
{
    return ++g_calls == g_fail_at ? NULL : malloc(n);
}

/* Every allocation the planner makes can fail: THEUS_ENOMEM, an empty plan, and the same
 * plan builds once memory is back. */
Test(replay_plan, allocation_failure)
{
    g_rng = 7;
    batch b;
    make_batch(&b, 60, 40, 0);
    int failures = 0;
    for (long k = 1; k < 40; k++) {
        replay_plan p = {0};
        g_calls = 0;
        g_fail_at = k;
        cr_assert_eq(theus_set_alloc_funcs(failing_malloc, free), THEUS_OK);
        int rc = replay_plan_build(&p, b.t, b.n);
        const int fired = g_calls >= k;
        cr_assert_eq(theus_set_alloc_funcs(NULL, NULL), THEUS_OK);
        if (fired) {
            cr_assert_eq(rc, THEUS_ENOMEM, "allocation %ld failed, build said %d", k, rc);
            cr_assert_eq(p.nwaves, 0);
            failures++;
        } else {
            cr_assert_eq(rc, THEUS_OK);
        }
        check_batch(&p, &b, IN_ORDER, NULL);
        replay_plan_release(&p);
        if (!fired)
            break;
    }
    cr_assert_gt(failures, 2);
    free_batch(&b);
}

Test(replay_plan, trim_and_release)
{
    g_rng = 11;
    batch b;
    make_batch(&b, 200, 20, 0);
    replay_plan p = {0};
    cr_assert_eq(replay_plan_build(&p, b.t, b.n), THEUS_OK);
    const size_t fp = replay_plan_footprint(&p);
    cr_assert_gt(fp, 0);
    replay_plan_trim(&p, fp);
    cr_assert_eq(replay_plan_footprint(&p), fp);
    replay_plan_trim(&p, fp - 1);
    cr_assert_eq(replay_plan_footprint(&p), 0);
    check_batch(&p, &b, SHUFFLED, NULL);
    replay_plan_release(&p);
    cr_assert_eq(replay_plan_footprint(&p), 0);
    free_batch(&b);
}
