/* Described batches (theus_tx_stage_batch) and stream-ordered commits on the CPU backend:
 * random batches of every dtype and rank against a reference that applies the segments one
 * element at a time in array order, read-your-writes through the overlay, the parallel
 * replay, the summary (bounds, touched blocks), refusals that leave the transaction as it
 * was, conflicts, constrained fields, the refusal on shared states, and the contract of
 * stream-ordered commits (the CPU backend replays at once; a replay error that surfaces
 * later is injected through stream_fence's test hook). */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "theus/theus.h"
#include "theus/theus_durable.h"
#include "theus/theus_gpu.h"
#include "theus/theus_shared.h"
#include "theus/theus_dlpack.h"

#include "backend.h"
#include "dtype.h"
#include "error.h"
#include "gatekeeper.h"
#include "seg_batch.h"
#include "stream_fence.h"
#include "tx.h"

#include "../kernels/batch_desc.h"

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Exact small values (multiples of 1/4 in [-8, 8)), or random integers. */
static void fill(theus_dtype dt, void *buf, size_t n, uint64_t *s)
{
    const size_t es = theus_dtype_size(dt);
    unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        const double v = (double)((int)(rnd(s) % 64) - 32) / 4.0;
        uint64_t bits = rnd(s);
        switch (dt) {
        case THEUS_DTYPE_BOOL: b[i] = (unsigned char)(bits & 1); break;
        case THEUS_DTYPE_F16: { uint16_t h = theus_f32_to_f16((float)v); memcpy(b + i * 2, &h, 2); break; }
        case THEUS_DTYPE_BF16: { uint16_t h = theus_f32_to_bf16((float)v); memcpy(b + i * 2, &h, 2); break; }
        case THEUS_DTYPE_F32: { float f = (float)v; memcpy(b + i * 4, &f, 4); break; }
        case THEUS_DTYPE_F64: memcpy(b + i * 8, &v, 8); break;
        default: memcpy(b + i * es, &bits, es); break;
        }
    }
}

static theus_state *make_state(const char *dtype, const char *shape, const char *extra)
{
    char schema[512];
    snprintf(schema, sizeof schema,
             "{\"fields\": {\"x\": {\"dtype\": \"%s\", \"shape\": %s%s}, "
             "\"y\": {\"dtype\": \"f32\", \"shape\": [4]}}}", dtype, shape, extra ? extra : "");
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create(schema, NULL, &st), THEUS_OK, "%s", theus_last_error_message());
    return st;
}

static void read_all(theus_state *st, const char *field, void *out)
{
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, field, NULL, out, THEUS_MEM_HOST), THEUS_OK, "%s",
                 theus_last_error_message());
    theus_tx_abort(tx);
}

/* The reference: segments one element at a time, in array order. */
static void ref_apply(theus_dtype dt, int add, unsigned char *field, const theus_batch_segment *g,
                      size_t n, const unsigned char *pay)
{
    const size_t es = theus_dtype_size(dt);
    for (size_t k = 0; k < n; k++)
        for (int64_t e = 0; e < g[k].length; e++) {
            unsigned char *d = field + (size_t)(g[k].dst + e) * es;
            const unsigned char *p = pay + (size_t)(g[k].src + e) * es;
            if (add)
                dtype_add(dt, d, p, 1);
            else
                memcpy(d, p, es);
        }
}

/* Random segments over @nelems elements from a payload of @pelems: overlapping, adjacent,
 * empty, at both ends. */
static void random_segs(theus_batch_segment *g, size_t n, uint64_t nelems, uint64_t pelems,
                        uint64_t *s)
{
    for (size_t k = 0; k < n; k++) {
        const uint64_t maxlen = nelems < 40 ? nelems : 40;
        uint64_t len = rnd(s) % (maxlen + 1);
        if (len > pelems)
            len = pelems;
        if (rnd(s) % 9 == 0)
            len = 0;
        uint64_t dst = rnd(s) % (nelems - len + 1);
        if (rnd(s) % 7 == 0)
            dst = nelems - len;
        g[k].dst = (int64_t)dst;
        g[k].length = (int64_t)len;
        g[k].src = (int64_t)(rnd(s) % (pelems - len + 1));
    }
}

static const char *const k_shapes[] = {"[]", "[1]", "[97]", "[7, 13]", "[3, 4, 5]", "[2, 1, 3, 8]"};

/* One transaction per case: an ordinary write, a batch, an ordinary add, a second batch,
 * checked after commit and, before it, through read-your-writes of the whole field and of a
 * sub-region. */
static void random_case(theus_dtype dt, const char *shape, int add, uint64_t seed)
{
    theus_state *st = make_state(theus_dtype_name(dt), shape, NULL);
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "x", &fi), THEUS_OK);
    const size_t es = theus_dtype_size(dt), n = fi.nbytes / es;
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    unsigned char *ref = calloc(n, es), *got = calloc(n, es), *init = calloc(n, es);
    const size_t pelems = n + 17, nseg = 1 + (size_t)(rnd(&s) % 60);
    unsigned char *pay = malloc(pelems * es), *pay2 = malloc(pelems * es), *row = malloc(n * es);
    theus_batch_segment *g = malloc(nseg * sizeof *g), *g2 = malloc(nseg * sizeof *g2);
    cr_assert(ref && got && init && pay && pay2 && row && g && g2);
    fill(dt, init, n, &s);
    cr_assert_eq(theus_state_init_field(st, "x", init, THEUS_MEM_HOST), THEUS_OK);
    memcpy(ref, init, n * es);
    fill(dt, pay, pelems, &s);
    fill(dt, pay2, pelems, &s);
    random_segs(g, nseg, n, pelems, &s);
    random_segs(g2, nseg, n, pelems, &s);

    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    /* An ordinary write of the whole field first, so that order matters. */
    fill(dt, row, n, &s);
    cr_assert_eq(theus_tx_write(tx, "x", NULL, row, THEUS_MEM_HOST), THEUS_OK);
    memcpy(ref, row, n * es);
    const theus_delta_op op = add ? THEUS_OP_ADD : THEUS_OP_ASSIGN;
    cr_assert_eq(theus_tx_stage_batch(tx, "x", op, g, nseg, pay, pelems, THEUS_MEM_HOST), THEUS_OK,
                 "%s", theus_last_error_message());
    ref_apply(dt, add, ref, g, nseg, pay);
    /* The caller's arrays are free again: scribble on them. */
    memset(g, 0x7f, nseg * sizeof *g);
    memset(pay, 0x55, pelems * es);
    fill(dt, row, n, &s);
    cr_assert_eq(theus_tx_add(tx, "x", NULL, row, THEUS_MEM_HOST), THEUS_OK);
    for (size_t i = 0; i < n; i++)
        dtype_add(dt, ref + i * es, row + i * es, 1);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", add ? THEUS_OP_ASSIGN : THEUS_OP_ADD, g2, nseg, pay2,
                                      pelems, THEUS_MEM_HOST), THEUS_OK, "%s",
                 theus_last_error_message());
    ref_apply(dt, !add, ref, g2, nseg, pay2);

    /* Read your writes: the whole field, and a sub-region (the last dimension cut). */
    cr_assert_eq(theus_tx_read(tx, "x", NULL, got, THEUS_MEM_HOST), THEUS_OK);
    cr_assert(memcmp(got, ref, n * es) == 0, "read-your-writes, %s %s %s", theus_dtype_name(dt),
              shape, add ? "add" : "assign");
    if (fi.ndim > 0 && fi.shape[fi.ndim - 1] > 2) {
        theus_region r = {.ndim = fi.ndim};
        for (int d = 0; d < fi.ndim; d++) {
            r.start[d] = fi.shape[d] > 1 ? 1 : 0;
            r.stop[d] = fi.shape[d];
        }
        r.stop[fi.ndim - 1] = fi.shape[fi.ndim - 1] - 1;
        cr_assert_eq(theus_tx_read(tx, "x", &r, got, THEUS_MEM_HOST), THEUS_OK);
        /* Walk the sub-region in C order against the reference. */
        int64_t idx[THEUS_MAX_DIMS];
        for (int d = 0; d < fi.ndim; d++)
            idx[d] = r.start[d];
        size_t k = 0;
        for (;;) {
            uint64_t flat = 0;
            for (int d = 0; d < fi.ndim; d++)
                flat = flat * (uint64_t)fi.shape[d] + (uint64_t)idx[d];
            cr_assert(memcmp(got + k * es, ref + flat * es, es) == 0,
                      "sub-region read, element %zu (flat %llu), %s %s", k,
                      (unsigned long long)flat, theus_dtype_name(dt), shape);
            k++;
            int d = fi.ndim - 1;
            while (d >= 0 && ++idx[d] == r.stop[d]) {
                idx[d] = r.start[d];
                d--;
            }
            if (d < 0)
                break;
        }
    }
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, NULL), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(theus_state_wait(st, NULL), THEUS_OK);
    read_all(st, "x", got);
    cr_assert(memcmp(got, ref, n * es) == 0, "committed, %s %s %s", theus_dtype_name(dt), shape,
              add ? "add" : "assign");
    free(ref), free(got), free(init), free(pay), free(pay2), free(row), free(g), free(g2);
    theus_state_destroy(st);
}

Test(batch, random_batches_every_dtype_and_rank_match_the_reference)
{
    uint64_t seed = 1;
    for (int dt = 0; dt < THEUS_DTYPE_COUNT; dt++)
        for (size_t sh = 0; sh < sizeof k_shapes / sizeof k_shapes[0]; sh++)
            for (int add = 0; add < 2; add++)
                for (int rep = 0; rep < 3; rep++)
                    random_case((theus_dtype)dt, k_shapes[sh], add, seed++);
}

/* The parallel replay splits a batch's bytes between threads by address: many overlapping
 * ADD segments must still apply in order on every element. */
Test(batch, parallel_replay_keeps_segment_order)
{
    backend_cpu_tuning t = {.parallel_min = 1, .parallel_min_seg = 1};
    backend_cpu_set_tuning(&t);
    for (int pass = 0; pass < 2; pass++) {
        const theus_dtype dt = pass ? THEUS_DTYPE_BF16 : THEUS_DTYPE_F32;
        theus_state *st = make_state(theus_dtype_name(dt), "[300000]", NULL);
        const size_t es = theus_dtype_size(dt), n = 300000, pelems = 200000, nseg = 3000;
        uint64_t s = 77 + (uint64_t)pass;
        unsigned char *ref = calloc(n, es), *got = calloc(n, es), *pay = malloc(pelems * es);
        theus_batch_segment *g = malloc(nseg * sizeof *g);
        cr_assert(ref && got && pay && g);
        fill(dt, pay, pelems, &s);
        for (size_t k = 0; k < nseg; k++) {
            /* Long segments (up to 64 KiB) crossing the replay's 64 KiB stripes, many overlapping. */
            const uint64_t len = 1 + rnd(&s) % 16384;
            g[k].dst = (int64_t)(rnd(&s) % (n - len + 1));
            g[k].length = (int64_t)len;
            g[k].src = (int64_t)(rnd(&s) % (pelems - len + 1));
        }
        for (int op = 0; op < 2; op++) {
            theus_tx *tx;
            cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
            cr_assert_eq(theus_tx_stage_batch(tx, "x", op ? THEUS_OP_ADD : THEUS_OP_ASSIGN, g, nseg,
                                              pay, pelems, THEUS_MEM_HOST), THEUS_OK);
            cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
            ref_apply(dt, op, ref, g, nseg, pay);
        }
        read_all(st, "x", got);
        cr_assert(memcmp(got, ref, n * es) == 0, "parallel replay, %s", theus_dtype_name(dt));
        free(ref), free(got), free(pay), free(g);
        theus_state_destroy(st);
    }
    backend_cpu_set_tuning(NULL);
}

Test(batch, summary_bounds_blocks_and_geometry)
{
    theus_batch_segment g[] = {{.dst = 5000, .length = 10, .src = 0},
                               {.dst = 0, .length = 0, .src = 0},
                               {.dst = 1024, .length = 2048, .src = 3},
                               {.dst = 5005, .length = 1, .src = 0}};
    seg_summary s;
    uint64_t *bm = malloc(seg_summary_words(1 << 20, 4) * sizeof *bm);
    cr_assert_not_null(bm);
    seg_summarize(g, 4, 1 << 20, 4, bm, &s);
    cr_assert_eq(s.lo, 1024);
    cr_assert_eq(s.hi, 5010);
    cr_assert_eq(s.total, 2059);
    cr_assert_eq(s.nonempty, 3);
    cr_assert_eq(s.shift, 12);
    cr_assert_eq(s.nblocks, 1024);
    /* Bytes [4096, 12288) are blocks 1 and 2; bytes [20000, 20040) block 4. */
    for (uint64_t b = 0; b < s.nblocks; b++) {
        const int want = b == 1 || b == 2 || b == 4;
        cr_assert_eq((s.touched[b / 64] >> (b % 64)) & 1, (uint64_t)want, "block %llu",
                     (unsigned long long)b);
    }
    cr_assert(s.shared_blocks, "segments 0 and 3 share block 4");
    theus_batch_segment apart[] = {{.dst = 0, .length = 1024, .src = 0},
                                   {.dst = 1024, .length = 1024, .src = 0}};
    cr_assert_leq(seg_summary_words(4096, 4), seg_summary_words(1 << 20, 4));
    seg_summarize(apart, 2, 4096, 4, bm, &s);
    cr_assert_not(s.shared_blocks, "one 4 KiB block each");
    free(bm);

    uint32_t shift;
    uint64_t nb;
    block_map_geometry((uint64_t)1 << 30, &shift, &nb);
    cr_assert_eq(shift, 12);
    cr_assert_eq(nb, (uint64_t)1 << 18);
    block_map_geometry(((uint64_t)1 << 30) + 1, &shift, &nb);
    cr_assert_eq(shift, 13);
    cr_assert(nb <= BLOCK_MAP_CAP);

    /* Bounds as regions. */
    const int64_t shape[3] = {4, 5, 6};
    theus_region r;
    seg_bounds_region(3, shape, 31, 34, &r); /* [1,0,1] .. [1,0,3] */
    cr_assert(r.start[0] == 1 && r.stop[0] == 2 && r.start[1] == 0 && r.stop[1] == 1 &&
              r.start[2] == 1 && r.stop[2] == 4);
    seg_bounds_region(3, shape, 31, 40, &r); /* [1,0,1] .. [1,1,3]: rows 0..1 whole */
    cr_assert(r.start[0] == 1 && r.stop[0] == 2 && r.start[1] == 0 && r.stop[1] == 2 &&
              r.start[2] == 0 && r.stop[2] == 6);
    seg_bounds_region(3, shape, 29, 31, &r); /* [0,4,5] .. [1,0,0] */
    cr_assert(r.start[0] == 0 && r.stop[0] == 2 && r.start[1] == 0 && r.stop[1] == 5 &&
              r.start[2] == 0 && r.stop[2] == 6);
}

Test(batch, refusals_leave_the_transaction_unchanged)
{
    theus_state *st = make_state("i32", "[10]", NULL);
    int32_t pay[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    const theus_batch_segment ok = {.dst = 2, .length = 3, .src = 1};
    const theus_batch_segment bad[] = {
        {.dst = -1, .length = 1, .src = 0}, {.dst = 0, .length = -1, .src = 0},
        {.dst = 0, .length = 1, .src = -1}, {.dst = 8, .length = 3, .src = 0},
        {.dst = 0, .length = 3, .src = 6},  {.dst = INT64_MAX, .length = INT64_MAX, .src = 0}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        theus_batch_segment two[2] = {ok, bad[k]};
        cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ASSIGN, two, 2, pay, 8, THEUS_MEM_HOST),
                     THEUS_EINVAL, "bad segment %zu", k);
        cr_assert(strstr(theus_last_error_message(), "segment 1"), "%s", theus_last_error_message());
    }
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ASSIGN, &ok, 0, pay, 8, THEUS_MEM_HOST),
                 THEUS_EINVAL);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", (theus_delta_op)7, &ok, 1, pay, 8, THEUS_MEM_HOST),
                 THEUS_EINVAL);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ADD, &ok, 1, pay, 8, (theus_mem)5),
                 THEUS_EINVAL);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ADD, &ok, 1, pay, 8, THEUS_MEM_DEVICE),
                 THEUS_EINVAL, "host field, device arrays");
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ADD, NULL, 1, pay, 8, THEUS_MEM_HOST),
                 THEUS_EINVAL);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ADD, &ok, 1, NULL, 8, THEUS_MEM_HOST),
                 THEUS_EINVAL);
    cr_assert_eq(theus_tx_stage_batch(tx, "nope", THEUS_OP_ADD, &ok, 1, pay, 8, THEUS_MEM_HOST),
                 THEUS_ENOENT);
    cr_assert_eq(theus_tx_stage_batch(NULL, "x", THEUS_OP_ADD, &ok, 1, pay, 8, THEUS_MEM_HOST),
                 THEUS_EINVAL);
    /* Only empty segments: nothing staged. */
    const theus_batch_segment empty = {.dst = 9, .length = 0, .src = 8};
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ASSIGN, &empty, 1, pay, 8, THEUS_MEM_HOST),
                 THEUS_OK);
    uint64_t v = 0;
    cr_assert_eq(theus_tx_commit(tx, &v), THEUS_OK);
    cr_assert_eq(v, 1, "nothing was staged: no new version");
    cr_assert_eq(theus_state_wait(NULL, NULL), THEUS_EINVAL);
    theus_state_destroy(st);

    const theus_batch_segment one = {.dst = 0, .length = 1, .src = 0};
    float f = 1.0f;
    st = make_state("f32", "[4]", ", \"zone\": \"const\"");
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ASSIGN, &one, 1, &f, 1, THEUS_MEM_HOST),
                 THEUS_EPERM);
    theus_tx_abort(tx);
    theus_state_destroy(st);
}

/* Conflicts with a committed batch are exact to the block: an old-base assign (or read) of a
 * row that a segment wrote conflicts; of a row inside the batch's bounds that no segment
 * touched, it does not. ADD batches never conflict. Rows here are 4 KiB: one block each. */
Test(batch, conflicts_are_exact_to_the_block_and_adds_never_conflict)
{
    theus_state *st = make_state("f32", "[64, 1024]", NULL);
    static float pay[1024], got[64 * 1024];
    for (int i = 0; i < 1024; i++)
        pay[i] = (float)i;
    const theus_batch_segment g[2] = {{.dst = 1024 * 10 + 3, .length = 5, .src = 0},
                                      {.dst = 1024 * 12, .length = 1024, .src = 0}};
    theus_tx *w11, *w12, *r10, *r11, *tx, *adder;
    cr_assert_eq(theus_tx_begin(st, NULL, &w11), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &w12), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &r10), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &r11), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &adder), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ASSIGN, g, 2, pay, 1024, THEUS_MEM_HOST),
                 THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    theus_region row[64];
    for (int i = 0; i < 64; i++)
        row[i] = (theus_region){.ndim = 2, .start = {i, 0}, .stop = {i + 1, 1024}};
    cr_assert_eq(theus_tx_write(w11, "x", &row[11], pay, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(w11, NULL), THEUS_OK, "row 11 is inside the bounds, untouched: %s",
                 theus_last_error_message());
    cr_assert_eq(theus_tx_write(w12, "x", &row[12], pay, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(w12, NULL), THEUS_ECONFLICT, "row 12 was written by the batch");
    cr_assert_eq(theus_tx_read(r10, "x", &row[10], got, THEUS_MEM_HOST), THEUS_ECONFLICT,
                 "a read of what the batch wrote since the base");
    theus_tx_abort(r10);
    cr_assert_eq(theus_tx_read(r11, "x", &row[11], got, THEUS_MEM_HOST), THEUS_ECONFLICT,
                 "row 11 was written by w11 since r11's base");
    theus_tx_abort(r11);
    cr_assert_eq(theus_tx_begin(st, NULL, &r11), THEUS_OK);
    cr_assert_eq(theus_tx_read(r11, "x", &row[20], got, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(r11);
    /* An ADD batch from the oldest base onto the same elements commits. */
    cr_assert_eq(theus_tx_stage_batch(adder, "x", THEUS_OP_ADD, g, 2, pay, 1024, THEUS_MEM_HOST),
                 THEUS_OK);
    cr_assert_eq(theus_tx_commit(adder, NULL), THEUS_OK, "%s", theus_last_error_message());
    /* Later assigns from a base after both see both. */
    read_all(st, "x", got);
    cr_assert_eq(got[1024 * 10 + 3], 0.0f);
    cr_assert_eq(got[1024 * 10 + 7], 8.0f);
    cr_assert_eq(got[1024 * 12 + 1023], 2046.0f);
    cr_assert_eq(got[1024 * 11 + 5], 5.0f, "w11's row");
    cr_assert_eq(got[1024 * 13], 0.0f);
    theus_state_destroy(st);
}

/* The device summary's decoding (kernels/batch_desc.h, the very functions the summary kernel
 * calls) run here in the kernel's way — every segment independently, blocks word by word,
 * "shared" from the bits already set — against the CPU backend's validation and summary. */
Test(batch, device_summary_decoding_matches_the_cpu_summary)
{
    uint64_t s = 4242;
    for (int rep = 0; rep < 300; rep++) {
        const uint64_t nelems = 1 + rnd(&s) % 20000, pelems = 1 + rnd(&s) % 5000;
        const uint32_t esize = 1u << (rnd(&s) % 4);
        const size_t n = 1 + (size_t)(rnd(&s) % 40);
        theus_batch_segment g[40];
        for (size_t k = 0; k < n; k++) {
            g[k].dst = (int64_t)(rnd(&s) % (nelems + 2));
            g[k].length = (int64_t)(rnd(&s) % 3000);
            g[k].src = (int64_t)(rnd(&s) % (pelems + 2));
            if (rnd(&s) % 5 == 0)
                g[k].length = 0;
            if (rep % 3 == 0 && rnd(&s) % 40 == 0)
                g[k].dst = -1;
        }
        /* The kernel, sequentially. */
        theus_batch_result res;
        theus_batch_result_init(&res);
        uint32_t shift;
        uint64_t nblocks;
        block_map_geometry(nelems * esize, &shift, &nblocks);
        uint64_t *bits = calloc(nblocks / 64 + 1, sizeof *bits);
        cr_assert_not_null(bits);
        for (size_t k = 0; k < n; k++) {
            if (!theus_batch_seg_ok(&g[k], nelems, pelems)) {
                if (k < res.bad)
                    res.bad = k;
                continue;
            }
            if (g[k].length == 0)
                continue;
            if ((uint64_t)g[k].dst < res.lo)
                res.lo = (uint64_t)g[k].dst;
            if ((uint64_t)(g[k].dst + g[k].length) > res.hi)
                res.hi = (uint64_t)(g[k].dst + g[k].length);
            res.total += (uint64_t)g[k].length;
            res.nonempty++;
            uint64_t b0, b1;
            theus_batch_seg_blocks(&g[k], esize, shift, &b0, &b1);
            for (uint64_t w = b0 >> 6; w <= b1 >> 6; w++) {
                const uint64_t m = theus_batch_word_mask(w, b0, b1);
                if (bits[w] & m)
                    res.shared = 1;
                bits[w] |= m;
            }
        }
        const size_t bad = seg_validate(g, n, nelems, pelems);
        cr_assert_eq(res.bad, bad == SIZE_MAX ? UINT64_MAX : (uint64_t)bad, "rep %d", rep);
        if (bad != SIZE_MAX) {
            free(bits);
            continue;
        }
        seg_summary sum;
        uint64_t *sbits = malloc(seg_summary_words(nelems, esize) * sizeof *sbits);
        cr_assert_not_null(sbits);
        seg_summarize(g, n, nelems, esize, sbits, &sum);
        cr_assert_eq(sum.shift, shift);
        cr_assert_eq(sum.nonempty, res.nonempty);
        cr_assert_eq(sum.total, res.total);
        if (res.nonempty) {
            cr_assert_eq(sum.lo, res.lo);
            cr_assert_eq(sum.hi, res.hi);
        }
        cr_assert_eq(sum.shared_blocks, (int)res.shared, "rep %d", rep);
        cr_assert_eq(seg_summary_words(nelems, esize), nblocks / 64 + 1);
        cr_assert(memcmp(sum.touched, bits, (nblocks / 64 + 1) * sizeof *bits) == 0, "rep %d", rep);
        free(sbits);
        free(bits);
    }
}

/* The final values of a batch delta's region (its bounds), as the audit and the redo record
 * see them: committed bytes, then every delta of the transaction in order — earlier deltas
 * included, since a batch does not cover its bounds. */
Test(batch, final_values_of_a_batch_region)
{
    theus_state *st = make_state("i32", "[4, 8]", NULL);
    int32_t init[32], w[8], pay[4] = {100, 200, 300, 400}, out[32], ref[32];
    for (int i = 0; i < 32; i++)
        init[i] = i;
    cr_assert_eq(theus_state_init_field(st, "x", init, THEUS_MEM_HOST), THEUS_OK);
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    theus_region row1 = {.ndim = 2, .start = {1, 0}, .stop = {2, 8}};
    for (int i = 0; i < 8; i++)
        w[i] = -1 - i;
    cr_assert_eq(theus_tx_write(tx, "x", &row1, w, THEUS_MEM_HOST), THEUS_OK);
    const theus_batch_segment g[2] = {{.dst = 6, .length = 2, .src = 0},   /* row 0, cols 6..7 */
                                      {.dst = 17, .length = 2, .src = 2}}; /* row 2, cols 1..2 */
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ASSIGN, g, 2, pay, 4, THEUS_MEM_HOST),
                 THEUS_OK);
    const delta *d = &tx->deltas[1];
    cr_assert_not_null(d->batch);
    cr_assert(d->r.start[0] == 0 && d->r.stop[0] == 3 && d->r.start[1] == 0 && d->r.stop[1] == 8,
              "bounds of flat [6, 19) in a [4, 8] field: rows 0..2, all columns");
    cr_assert_eq(d->nelems, 24);
    cr_assert_eq(gate_final_values(st, tx, 1, out), THEUS_OK);
    memcpy(ref, init, sizeof ref);
    memcpy(ref + 8, w, sizeof w);
    ref[6] = 100, ref[7] = 200, ref[17] = 300, ref[18] = 400;
    cr_assert(memcmp(out, ref, 24 * sizeof *out) == 0, "row 1 from the earlier write");
    theus_tx_abort(tx);
    theus_state_destroy(st);
}

/* A durable state logs a batch as the final values of its region: recovery rebuilds them. */
Test(batch, durable_state_recovers_batches)
{
    char dir[] = "/tmp/theus-test-batch-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[512];
    snprintf(path, sizeof path, "%s/state", dir);
    static const char *schema = "{\"fields\": {\"x\": {\"dtype\": \"f32\", \"shape\": [8, 16]}}}";
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(path, schema, NULL, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    float pay[40], want[128], got[128];
    for (int i = 0; i < 40; i++)
        pay[i] = (float)(i + 1) / 4.0f;
    memset(want, 0, sizeof want);
    const theus_batch_segment g[3] = {{.dst = 3, .length = 20, .src = 0},
                                      {.dst = 10, .length = 5, .src = 30},
                                      {.dst = 100, .length = 10, .src = 5}};
    for (int op = 0; op < 2; op++) {
        theus_tx *tx;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_stage_batch(tx, "x", op ? THEUS_OP_ADD : THEUS_OP_ASSIGN, g, 3, pay,
                                          40, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
        ref_apply(THEUS_DTYPE_F32, op, (unsigned char *)want, g, 3, (const unsigned char *)pay);
    }
    read_all(st, "x", got);
    cr_assert(memcmp(got, want, sizeof got) == 0);
    theus_state_destroy(st);
    st = NULL;
    cr_assert_eq(theus_state_open_durable(path, NULL, NULL, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    read_all(st, "x", got);
    cr_assert(memcmp(got, want, sizeof got) == 0, "recovered from the log");
    theus_state_destroy(st);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* Constrained fields: the gatekeeper checks the values a batch leaves (on the CPU backend
 * from a read and the batch's overlay): a payload element no segment reads is not checked;
 * the refusal names the flat element and leaves the state as it was. */
Test(batch, constrained_fields_check_what_the_batch_writes)
{
    theus_state *st = make_state("f32", "[16]",
                                 ", \"constraints\": {\"finite\": true, \"min\": -4, \"max\": 4}");
    const float nan = __builtin_nanf("");
    float pay[6] = {1, 2, nan, 3, 10, -1};
    const theus_batch_segment ok[2] = {{.dst = 2, .length = 2, .src = 0},
                                       {.dst = 9, .length = 1, .src = 3}};
    theus_tx *tx;
    uint64_t v = 0;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ASSIGN, ok, 2, pay, 6, THEUS_MEM_HOST),
                 THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, &v), THEUS_OK, "NaN and 10 are not read: %s",
                 theus_last_error_message());
    float got[16], want[16] = {0};
    want[2] = 1, want[3] = 2, want[9] = 3;
    read_all(st, "x", got);
    cr_assert(memcmp(got, want, sizeof got) == 0);
    /* A segment that reads the NaN: refused, element 12 named. */
    const theus_batch_segment bad[2] = {{.dst = 0, .length = 1, .src = 0},
                                        {.dst = 12, .length = 1, .src = 2}};
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ASSIGN, bad, 2, pay, 6, THEUS_MEM_HOST),
                 THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);
    cr_assert(strstr(theus_last_error_message(), "element 12"), "%s", theus_last_error_message());
    /* An ADD batch whose sum breaks max (3 + 3 + 3 > 4 on element 9, the overlap counted). */
    const theus_batch_segment add[2] = {{.dst = 9, .length = 1, .src = 3},
                                        {.dst = 9, .length = 1, .src = 3}};
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ADD, add, 2, pay, 6, THEUS_MEM_HOST),
                 THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);
    cr_assert(strstr(theus_last_error_message(), "element 9"), "%s", theus_last_error_message());
    /* Within bounds: -1 added twice onto 3. */
    const theus_batch_segment add_ok[2] = {{.dst = 9, .length = 1, .src = 5},
                                           {.dst = 9, .length = 1, .src = 5}};
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ADD, add_ok, 2, pay, 6, THEUS_MEM_HOST),
                 THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
    want[9] = 1;
    read_all(st, "x", got);
    cr_assert(memcmp(got, want, sizeof got) == 0, "refusals left the state unchanged");
    theus_state_destroy(st);
}

/* Shared states: described batches are refused (their redo record does not carry batches),
 * and the transaction stays usable. */
Test(batch, shared_states_refuse_batches)
{
    char name[64];
    snprintf(name, sizeof name, "theus-test-batch-%d", (int)getpid());
    theus_shared_remove(name);
    theus_state *st = NULL;
    int rc = theus_state_create_shared(name, "{\"fields\": {\"x\": {\"dtype\": \"f32\", "
                                       "\"shape\": [4]}}}", NULL, NULL, &st);
    cr_assert_eq(rc, THEUS_OK, "%s", theus_last_error_message());
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    const theus_batch_segment one = {.dst = 0, .length = 1, .src = 0};
    float f = 1.0f;
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ADD, &one, 1, &f, 1, THEUS_MEM_HOST),
                 THEUS_EINVAL);
    cr_assert(strstr(theus_last_error_message(), "shared"), "%s", theus_last_error_message());
    cr_assert_eq(theus_tx_add(tx, "x", NULL, (float[4]){1, 2, 3, 4}, THEUS_MEM_HOST), THEUS_OK);
    /* A shared state's stream-ordered commit replays synchronously. */
    uint64_t v = 0;
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, &v), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(v, 2);
    cr_assert_eq(theus_state_wait(st, NULL), THEUS_OK);
    float got[4];
    read_all(st, "x", got);
    cr_assert(got[0] == 1 && got[3] == 4);
    theus_state_destroy(st);
    theus_shared_remove(name); /* the name may be gone with its last handle */
}

/* theus_tx_commit_on_stream through the CPU backend (which runs the replay at once): the
 * contract a user sees — the version is published when it returns, later reads see the
 * bytes, errors and conflicts as theus_tx_commit, the transaction consumed either way. */
Test(batch, commit_on_stream_contract)
{
    theus_state *st = make_state("f32", "[8]", NULL);
    cr_assert_eq(theus_tx_commit_on_stream(NULL, NULL, NULL), THEUS_EINVAL);
    theus_tx *tx, *old;
    uint64_t v = 0;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, &v), THEUS_OK, "empty");
    cr_assert_eq(v, 1);
    cr_assert_eq(theus_tx_begin(st, NULL, &old), THEUS_OK);
    const theus_batch_segment g[2] = {{.dst = 0, .length = 4, .src = 0},
                                      {.dst = 2, .length = 4, .src = 4}};
    float pay[8] = {1, 2, 3, 4, 10, 20, 30, 40};
    void *stream = (void *)(uintptr_t)0x1234; /* ignored by the CPU backend */
    for (int round = 0; round < 2; round++) {
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ADD, g, 2, pay, 8, THEUS_MEM_HOST),
                     THEUS_OK);
        cr_assert_eq(theus_tx_commit_on_stream(tx, stream, &v), THEUS_OK, "%s",
                     theus_last_error_message());
        cr_assert_eq(v, (uint64_t)round + 2);
        cr_assert_eq(theus_state_version(st), v, "published at once");
        cr_assert_eq(theus_state_wait(st, stream), THEUS_OK);
        cr_assert_eq(theus_state_wait(st, NULL), THEUS_OK);
    }
    float got[8];
    read_all(st, "x", got);
    const float want[8] = {2, 4, 26, 48, 60, 80, 0, 0};
    cr_assert(memcmp(got, want, sizeof got) == 0);
    /* A conflict: refused at once, the transaction consumed, nothing changed. */
    cr_assert_eq(theus_tx_write(old, "x", NULL, pay, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit_on_stream(old, stream, &v), THEUS_ECONFLICT);
    cr_assert_eq(theus_state_version(st), 3);
    read_all(st, "x", got);
    cr_assert(memcmp(got, want, sizeof got) == 0);
    /* A gatekeeper refusal through the same path. */
    theus_state_destroy(st);
    st = make_state("f32", "[4]", ", \"constraints\": {\"max\": 1}");
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_batch(tx, "x", THEUS_OP_ASSIGN, g, 1, pay, 8, THEUS_MEM_HOST),
                 THEUS_OK);
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, NULL), THEUS_ESCHEMA);
    cr_assert_eq(theus_state_version(st), 1);
    theus_state_destroy(st);
}

/* A replay error that surfaces only once the stream runs (injected through the test hook,
 * since the CPU backend replays at once): kept for good and reported by every call that
 * waits for the replay, and every commit is refused; the state stays as it was. */
Test(batch, deferred_replay_error_is_reported_by_every_wait)
{
    theus_state *st = make_state("f32", "[4]", NULL);
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "x", NULL, (float[4]){1, 2, 3, 4}, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, NULL), THEUS_OK);
    cr_assert_eq(stream_fence_inject_error(&st->fence, THEUS_EDEVICE, 2, "illegal address (injected)"),
                 THEUS_OK);
    for (int rep = 0; rep < 2; rep++) {
        cr_assert_eq(theus_state_wait(st, NULL), THEUS_EDEVICE);
        cr_assert(strstr(theus_last_error_message(), "version 2"), "%s",
                  theus_last_error_message());
        cr_assert(strstr(theus_last_error_message(), "injected"), "%s",
                  theus_last_error_message());
        cr_assert_eq(theus_state_wait(st, (void *)(uintptr_t)1), THEUS_EDEVICE);
    }
    float got[4];
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "x", NULL, got, THEUS_MEM_HOST), THEUS_EDEVICE);
    cr_assert_eq(theus_tx_add(tx, "x", NULL, got, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_EDEVICE, "commits are refused");
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "x", NULL, got, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, NULL), THEUS_EDEVICE);
    cr_assert_eq(theus_state_version(st), 2, "nothing published after the error");
    const void *ptr = NULL;
    cr_assert_eq(theus_state_field_ptr(st, "x", &ptr, NULL), THEUS_EDEVICE);
    cr_assert_null(ptr);
    DLManagedTensorVersioned *t = NULL;
    cr_assert_eq(theus_field_export_dlpack(st, "x", &t), THEUS_EDEVICE);
    cr_assert_null(t);
    cr_assert_eq(theus_state_hold_commits(st), THEUS_EDEVICE);
    theus_state_destroy(st);
}

/* ---- the stream-ordered path with a stand-in for an asynchronous backend ---------------
 * The CPU backend's table whose replay_on_stream only queues the replay (payload copied,
 * as a GPU stream would still read it) and whose fence_wait runs the queue up to the
 * fence: what the CUDA backend does, observable without a GPU. Its synchronous replay runs
 * the queue first (the CUDA backend's lanes wait for the chain event). */
#define Q_MAX 16
static theus_backend_iface q_iface;
static theus_backend q_backend;
static struct q_item {
    replay_op op;
    void *payload;
    int fence;
} q_items[Q_MAX];
static int q_n, q_next_fence, q_fail, q_enqueued, q_waits_stream;

static void q_run(int upto)
{
    int k = 0;
    while (k < q_n && q_items[k].fence <= upto) {
        cr_assert_eq(backend_cpu()->iface->replay(backend_cpu()->ctx, &q_items[k].op, 1), THEUS_OK);
        free(q_items[k].payload);
        k++;
    }
    memmove(q_items, q_items + k, (size_t)(q_n - k) * sizeof q_items[0]);
    q_n -= k;
}

static int q_replay(void *ctx, const replay_op *ops, size_t n)
{
    q_run(INT32_MAX);
    return backend_cpu()->iface->replay(ctx, ops, n);
}

static int q_replay_on_stream(void *ctx, const replay_op *ops, size_t n, void *stream, void **fence)
{
    (void)ctx;
    (void)stream;
    const int f = ++q_next_fence;
    for (size_t i = 0; i < n; i++) {
        cr_assert_lt(q_n, Q_MAX);
        cr_assert_null(ops[i].batch, "the stand-in queues ordinary deltas only");
        const size_t bytes = (size_t)region_nelems(&ops[i].sub) *
                             theus_dtype_size(ops[i].dtype);
        void *p = malloc(bytes + 1);
        cr_assert_not_null(p);
        memcpy(p, ops[i].payload, bytes);
        q_items[q_n] = (struct q_item){.op = ops[i], .payload = p, .fence = f};
        q_items[q_n].op.payload = p;
        q_n++;
    }
    q_enqueued++;
    *fence = (void *)(intptr_t)f;
    return THEUS_OK;
}

static int q_fence_wait(void *ctx, void *fence, void *stream)
{
    (void)ctx;
    if (stream) {
        q_waits_stream++;
        return THEUS_OK;
    }
    q_run((int)(intptr_t)fence);
    if (q_fail)
        return err_set(NULL, THEUS_EDEVICE, "stand-in: the replay faulted");
    return THEUS_OK;
}

static void q_fence_release(void *ctx, void *fence)
{
    (void)ctx;
    (void)fence;
}

static void q_install(theus_state *st, const char *field)
{
    q_iface = *backend_cpu()->iface;
    q_iface.name = "queued";
    q_iface.replay = q_replay;
    q_iface.replay_on_stream = q_replay_on_stream;
    q_iface.fence_wait = q_fence_wait;
    q_iface.fence_release = q_fence_release;
    q_iface.stage_batch = NULL;
    q_backend.iface = &q_iface;
    q_backend.ctx = backend_cpu()->ctx;
    q_n = q_next_fence = q_fail = q_enqueued = q_waits_stream = 0;
    st->backend[state_find_field(st, field)] = &q_backend;
}

/* The version is published when commit_on_stream returns, the bytes come when the queue
 * runs; reads, holds, field pointers and later commits wait for them; several commits queue
 * in order; theus_state_wait orders a stream without running anything. */
Test(batch, stream_ordered_commits_queue_and_every_reader_waits)
{
    theus_state *st = make_state("f32", "[8]", NULL);
    q_install(st, "x");
    const float *field = st->data[state_find_field(st, "x")];
    theus_tx *tx;
    uint64_t v = 0;
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_add(tx, "x", NULL, (float[8]){1, 1, 1, 1, 1, 1, 1, 1},
                                  THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_commit_on_stream(tx, (void *)(uintptr_t)7, &v), THEUS_OK, "%s",
                     theus_last_error_message());
    }
    cr_assert_eq(v, 4);
    cr_assert_eq(theus_state_version(st), 4, "published at once");
    cr_assert_eq(q_enqueued, 3);
    cr_assert(field[0] == 0.0f, "the replays are still queued");
    cr_assert_eq(theus_state_wait(st, (void *)(uintptr_t)9), THEUS_OK);
    cr_assert_eq(q_waits_stream, 1);
    cr_assert(field[0] == 0.0f, "ordering a stream runs nothing on the host");
    float got[8];
    read_all(st, "x", got);
    cr_assert(got[0] == 3.0f && got[7] == 3.0f, "the read waited for all three: %g", got[0]);
    /* A hold waits too; so does a field pointer. */
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "x", NULL, got, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, NULL), THEUS_OK);
    cr_assert(field[0] == 3.0f);
    cr_assert_eq(theus_state_hold_commits(st), THEUS_OK);
    cr_assert(field[0] == 6.0f, "held bytes are the published version's");
    theus_state_release_commits(st);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "x", NULL, got, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, NULL), THEUS_OK);
    const void *ptr = NULL;
    cr_assert_eq(theus_state_field_ptr(st, "x", &ptr, NULL), THEUS_OK);
    cr_assert(field[0] == 9.0f);
    /* A synchronous commit replays after the queued ones. */
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "x", NULL, got, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "x", NULL, (float[8]){5, 5, 5, 5, 5, 5, 5, 5},
                                THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert(field[0] == 5.0f, "the assign landed after the queued add");
    cr_assert_eq(theus_state_wait(st, NULL), THEUS_OK);
    cr_assert(field[0] == 5.0f);
    /* Destruction waits for what is queued (nothing must leak or run late). */
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "x", NULL, got, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, NULL), THEUS_OK);
    cr_assert_eq(q_n, 1);
    theus_state_destroy(st);
    cr_assert_eq(q_n, 0, "destroy ran the queue");
}

/* A replay that fails once its stream runs: reported by the first wait, kept, and every
 * commit refused afterwards. */
Test(batch, stream_ordered_replay_error_after_the_fact)
{
    theus_state *st = make_state("f32", "[4]", NULL);
    q_install(st, "x");
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "x", NULL, (float[4]){1, 2, 3, 4}, THEUS_MEM_HOST), THEUS_OK);
    q_fail = 1;
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, NULL), THEUS_OK, "the enqueue succeeds");
    cr_assert_eq(theus_state_version(st), 2);
    float got[4];
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "x", NULL, got, THEUS_MEM_HOST), THEUS_EDEVICE);
    cr_assert(strstr(theus_last_error_message(), "version 2"), "%s", theus_last_error_message());
    cr_assert(strstr(theus_last_error_message(), "faulted"), "%s", theus_last_error_message());
    theus_tx_abort(tx);
    cr_assert_eq(theus_state_wait(st, NULL), THEUS_EDEVICE, "kept");
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "x", NULL, got, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit_on_stream(tx, NULL, NULL), THEUS_EDEVICE);
    cr_assert_eq(q_enqueued, 1, "nothing enqueued after the error");
    cr_assert_eq(theus_state_version(st), 2);
    theus_state_destroy(st);
}
