/* Zero copy: staging buffers the caller fills, raw field pointers with commit holds, and
 * DLPack export of fields and staging buffers (host placements here; the GPU variants run
 * in test_cuda_parity when a device answers). */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include "theus/theus.h"
#include "theus/theus_dlpack.h"
#include "theus/theus_shared.h"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *SCHEMA =
    "{\"fields\": {"
    "  \"w\":    {\"dtype\": \"f32\", \"shape\": [3, 4]},"
    "  \"n\":    {\"dtype\": \"i32\", \"shape\": [8]},"
    "  \"fin\":  {\"dtype\": \"f64\", \"shape\": [2], \"constraints\": {\"finite\": true}},"
    "  \"k\":    {\"dtype\": \"u8\", \"shape\": [], \"zone\": \"const\"},"
    "  \"b\":    {\"dtype\": \"bf16\", \"shape\": [2, 2, 2]},"
    "  \"dev\":  {\"dtype\": \"f32\", \"shape\": [4], \"placement\": \"device\"}"
    "}}";

static theus_state *st;

static void setup(void)
{
    cr_assert_eq(theus_state_create(SCHEMA, NULL, &st), THEUS_OK, "%s", theus_last_error_message());
}

static void teardown(void)
{
    theus_state_destroy(st);
}

TestSuite(zero_copy, .init = setup, .fini = teardown);

Test(zero_copy, staging_buffer_is_zeroed_filled_in_place_and_committed)
{
    theus_tx *tx;
    theus_region r = {.ndim = 2, .start = {1, 1}, .stop = {3, 3}};
    void *buf = NULL;
    theus_mem mem = THEUS_MEM_DEVICE;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_buffer(tx, "w", &r, THEUS_OP_ASSIGN, &buf, &mem), THEUS_OK);
    cr_assert_eq(mem, THEUS_MEM_HOST);
    float *f = buf;
    for (int i = 0; i < 4; i++)
        cr_assert_eq(f[i], 0.0f);
    for (int i = 0; i < 4; i++)
        f[i] = (float)(i + 1);
    float w[12];
    cr_assert_eq(theus_tx_read(tx, "w", NULL, w, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(w[1 * 4 + 1], 1.0f, "read-your-writes sees the filled buffer");
    cr_assert_eq(w[2 * 4 + 2], 4.0f);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "w", NULL, w, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    const float expect[12] = {0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0};
    cr_assert_eq(memcmp(w, expect, sizeof w), 0);
}

Test(zero_copy, staging_buffer_add_and_refusals)
{
    theus_tx *tx;
    void *buf;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_buffer(tx, "n", NULL, THEUS_OP_ADD, &buf, NULL), THEUS_OK);
    for (int i = 0; i < 8; i++)
        ((int32_t *)buf)[i] = i * 10;
    void *again;
    cr_assert_eq(theus_tx_stage_buffer(tx, "n", NULL, THEUS_OP_ADD, &again, NULL), THEUS_OK);
    for (int i = 0; i < 8; i++)
        ((int32_t *)again)[i] = 1;
    cr_assert_eq(theus_tx_stage_buffer(tx, "k", NULL, THEUS_OP_ASSIGN, &buf, NULL), THEUS_EPERM);
    theus_region empty = {.ndim = 1, .start = {3}, .stop = {3}};
    cr_assert_eq(theus_tx_stage_buffer(tx, "n", &empty, THEUS_OP_ASSIGN, &buf, NULL), THEUS_EINVAL);
    cr_assert_eq(theus_tx_stage_buffer(tx, "n", NULL, (theus_delta_op)5, &buf, NULL), THEUS_EINVAL);
    cr_assert_eq(theus_tx_stage_buffer(tx, "zz", NULL, THEUS_OP_ASSIGN, &buf, NULL), THEUS_ENOENT);
    cr_assert_eq(theus_tx_stage_buffer(tx, "n", NULL, THEUS_OP_ASSIGN, NULL, NULL), THEUS_EINVAL);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    int32_t n[8];
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "n", NULL, n, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    for (int i = 0; i < 8; i++)
        cr_expect_eq(n[i], i * 10 + 1);
}

Test(zero_copy, gatekeeper_checks_filled_buffers_at_commit)
{
    theus_tx *tx;
    void *buf;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_buffer(tx, "fin", NULL, THEUS_OP_ASSIGN, &buf, NULL), THEUS_OK);
    ((double *)buf)[1] = INFINITY;
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);
    cr_assert_eq(theus_state_version(st), 1);
}

Test(zero_copy, field_export_is_read_only_host_view_that_outlives_destroy)
{
    DLManagedTensorVersioned *t = NULL;
    cr_assert_eq(theus_field_export_dlpack(st, "w", &t), THEUS_OK);
    cr_assert_not_null(t);
    cr_assert_eq(t->version.major, 1);
    cr_assert(t->flags & DLPACK_FLAG_BITMASK_READ_ONLY);
    cr_assert_eq(t->dl_tensor.device.device_type, kDLCPU);
    cr_assert_eq(t->dl_tensor.ndim, 2);
    cr_assert_eq(t->dl_tensor.shape[0], 3);
    cr_assert_eq(t->dl_tensor.shape[1], 4);
    cr_assert_null(t->dl_tensor.strides);
    cr_assert_eq(t->dl_tensor.dtype.code, kDLFloat);
    cr_assert_eq(t->dl_tensor.dtype.bits, 32);
    cr_assert_eq(t->dl_tensor.dtype.lanes, 1);
    /* the view follows commits */
    float ones[12];
    for (int i = 0; i < 12; i++)
        ones[i] = 1.5f;
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "w", NULL, ones, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    const float *data = t->dl_tensor.data;
    cr_assert_eq(data[11], 1.5f);
    /* the state goes, the view stays readable until its deleter runs */
    theus_state_destroy(st);
    st = NULL;
    cr_assert_eq(data[0], 1.5f);
    t->deleter(t);
}

Test(zero_copy, dtype_codes_and_device_fallback)
{
    DLManagedTensorVersioned *t;
    cr_assert_eq(theus_field_export_dlpack(st, "b", &t), THEUS_OK);
    cr_assert_eq(t->dl_tensor.dtype.code, kDLBfloat);
    cr_assert_eq(t->dl_tensor.dtype.bits, 16);
    cr_assert_eq(t->dl_tensor.ndim, 3);
    t->deleter(t);
    cr_assert_eq(theus_field_export_dlpack(st, "k", &t), THEUS_OK);
    cr_assert_eq(t->dl_tensor.dtype.code, kDLUInt);
    cr_assert_eq(t->dl_tensor.ndim, 0);
    t->deleter(t);
    cr_assert_eq(theus_field_export_dlpack(st, "dev", &t), THEUS_OK);
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "dev", &fi), THEUS_OK);
    cr_assert_eq(t->dl_tensor.device.device_type,
                 fi.placement == THEUS_PLACEMENT_DEVICE ? kDLCUDA : kDLCPU,
                 "the device type says where the field really lives");
    t->deleter(t);
    cr_assert_eq(theus_field_export_dlpack(st, "nope", &t), THEUS_ENOENT);
    cr_assert_null(t);
    cr_assert_eq(theus_field_export_dlpack(NULL, "w", &t), THEUS_EINVAL);
}

Test(zero_copy, staging_buffer_export_is_writable_and_outlives_commit)
{
    theus_tx *tx;
    void *buf;
    DLManagedTensorVersioned *t;
    theus_region r = {.ndim = 1, .start = {2}, .stop = {6}};
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_buffer(tx, "n", &r, THEUS_OP_ASSIGN, &buf, NULL), THEUS_OK);
    int dummy;
    cr_assert_eq(theus_tx_export_dlpack(tx, &dummy, &t), THEUS_ENOENT);
    cr_assert_eq(theus_tx_export_dlpack(tx, buf, &t), THEUS_OK);
    cr_assert_eq(t->flags & DLPACK_FLAG_BITMASK_READ_ONLY, 0);
    cr_assert_eq(t->dl_tensor.ndim, 1);
    cr_assert_eq(t->dl_tensor.shape[0], 4);
    cr_assert_eq(t->dl_tensor.dtype.code, kDLInt);
    int32_t *p = t->dl_tensor.data;
    for (int i = 0; i < 4; i++)
        p[i] = 100 + i;
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert_eq(p[3], 103, "the buffer stays alive until the deleter");
    t->deleter(t);
    int32_t n[8];
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "n", NULL, n, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    const int32_t expect[8] = {0, 0, 100, 101, 102, 103, 0, 0};
    cr_assert_eq(memcmp(n, expect, sizeof n), 0);
}

/* Under a hold, two looks at the raw field bytes agree even while writers commit. */
typedef struct writer_arg {
    theus_state *st;
    int commits;
} writer_arg;

static void *writer(void *p)
{
    writer_arg *a = p;
    for (int c = 1; c <= a->commits; c++) {
        int32_t v[8];
        for (int i = 0; i < 8; i++)
            v[i] = c;
        theus_tx *tx;
        if (theus_tx_begin(a->st, NULL, &tx) != THEUS_OK)
            return (void *)1;
        theus_tx_write(tx, "n", NULL, v, THEUS_MEM_HOST);
        if (theus_tx_commit(tx, NULL) != THEUS_OK)
            return (void *)1;
    }
    return NULL;
}

Test(zero_copy, hold_commits_gives_a_stable_view)
{
    const void *ptr;
    theus_mem mem;
    cr_assert_eq(theus_state_field_ptr(st, "n", &ptr, &mem), THEUS_OK);
    cr_assert_eq(mem, THEUS_MEM_HOST);
    cr_assert_eq(theus_state_field_ptr(st, "zz", &ptr, &mem), THEUS_ENOENT);
    writer_arg a = {.st = st, .commits = 2000};
    pthread_t th;
    cr_assert_eq(theus_state_field_ptr(st, "n", &ptr, &mem), THEUS_OK);
    pthread_create(&th, NULL, writer, &a);
    int torn = 0;
    for (int k = 0; k < 2000; k++) {
        int32_t first[8], second[8];
        cr_assert_eq(theus_state_hold_commits(st), THEUS_OK);
        memcpy(first, ptr, sizeof first);
        /* a transaction read under a hold must not deadlock against a waiting commit */
        theus_tx *tx;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        int32_t via_tx[8];
        cr_assert_eq(theus_tx_read(tx, "n", NULL, via_tx, THEUS_MEM_HOST), THEUS_OK);
        theus_tx_abort(tx);
        memcpy(second, ptr, sizeof second);
        theus_state_release_commits(st);
        torn |= memcmp(first, second, sizeof first) != 0 || memcmp(first, via_tx, sizeof first) != 0;
        for (int i = 1; i < 8; i++)
            torn |= first[i] != first[0];
    }
    void *res;
    pthread_join(th, &res);
    cr_assert_null(res);
    cr_assert_eq(torn, 0);
    cr_assert_eq(theus_state_hold_commits(NULL), THEUS_EINVAL);
}

/* ==== Borrowed payloads and multi-region staging =========================================
 * theus_tx_write_borrowed / theus_tx_add_borrowed and theus_tx_stage_regions / _segments:
 * what the commit writes, what abort leaves, the gatekeeper, read-your-writes, order of
 * overlapping regions, refusals that leave the transaction usable, shared states, and
 * allocation failures. */

static const char *BSCHEMA =
    "{\"fields\": {"
    "  \"x\":   {\"dtype\": \"f32\", \"shape\": [4, 6]},"
    "  \"v\":   {\"dtype\": \"i32\", \"shape\": [10]},"
    "  \"fin\": {\"dtype\": \"f64\", \"shape\": [4], \"constraints\": {\"finite\": true, \"max\": 100}},"
    "  \"k\":   {\"dtype\": \"u8\", \"shape\": [2], \"zone\": \"const\"},"
    "  \"s\":   {\"dtype\": \"f32\", \"shape\": []},"
    "  \"c\":   {\"dtype\": \"u16\", \"shape\": [3, 4, 5]},"
    "  \"dev\": {\"dtype\": \"f32\", \"shape\": [8], \"placement\": \"device\"}"
    "}}";

static theus_state *bst;

static void bsetup(void)
{
    cr_assert_eq(theus_state_create(BSCHEMA, NULL, &bst), THEUS_OK, "%s",
                 theus_last_error_message());
}

static void bteardown(void)
{
    theus_state_destroy(bst);
    bst = NULL;
}

TestSuite(borrow, .init = bsetup, .fini = bteardown);

static void read_field(theus_state *s, const char *field, void *dst)
{
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(s, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, field, NULL, dst, THEUS_MEM_HOST), THEUS_OK, "%s",
                 theus_last_error_message());
    theus_tx_abort(tx);
}

static theus_region rows(int64_t r0, int64_t r1, int64_t c0, int64_t c1)
{
    theus_region r = {.ndim = 2, .start = {r0, c0}, .stop = {r1, c1}};
    return r;
}

Test(borrow, borrowed_write_commits_the_callers_bytes)
{
    float *buf = malloc(12 * sizeof *buf);
    cr_assert_not_null(buf);
    for (int i = 0; i < 12; i++)
        buf[i] = (float)(i + 1);
    theus_region r = rows(1, 3, 0, 6);
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write_borrowed(tx, "x", &r, buf, THEUS_MEM_HOST), THEUS_OK, "%s",
                 theus_last_error_message());
    uint64_t v = 0;
    cr_assert_eq(theus_tx_commit(tx, &v), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(v, 2);
    /* After the commit the buffer is the caller's again: changing it changes nothing. */
    for (int i = 0; i < 12; i++)
        buf[i] = -1.0f;
    float x[24];
    read_field(bst, "x", x);
    for (int i = 0; i < 24; i++)
        cr_expect_eq(x[i], i >= 6 && i < 18 ? (float)(i - 5) : 0.0f, "x[%d] = %g", i, x[i]);
    free(buf);
}

Test(borrow, abort_leaves_buffer_and_state_and_does_not_free)
{
    int32_t *buf = malloc(10 * sizeof *buf), keep[10];
    cr_assert_not_null(buf);
    for (int i = 0; i < 10; i++)
        buf[i] = keep[i] = 7 * i - 3;
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write_borrowed(tx, "v", NULL, buf, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_add_borrowed(tx, "v", NULL, buf, THEUS_MEM_HOST), THEUS_OK);
    theus_segment seg = {.offset = 2, .length = 5};
    cr_assert_eq(theus_tx_stage_segments(tx, "v", THEUS_OP_ADD, &seg, 1, buf, 5 * sizeof *buf,
                                         THEUS_MEM_HOST, THEUS_STAGE_BORROW), THEUS_OK);
    theus_tx_abort(tx);
    cr_assert_eq(memcmp(buf, keep, sizeof keep), 0, "abort does not touch the caller's buffer");
    cr_assert_eq(theus_state_version(bst), 1);
    int32_t v[10];
    read_field(bst, "v", v);
    for (int i = 0; i < 10; i++)
        cr_expect_eq(v[i], 0);
    free(buf); /* theus did not free it: under ASan a double free would fail here */
}

Test(borrow, gatekeeper_refuses_a_borrowed_payload_that_breaks_a_constraint)
{
    double bad[4] = {1, 2, INFINITY, 4}, big[2] = {60, 60}, ok[4] = {50, 50, 50, 50};
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write_borrowed(tx, "fin", NULL, bad, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);
    cr_assert_eq(theus_state_version(bst), 1);

    /* An add whose result passes max: checked on the values the commit would produce. */
    cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write_borrowed(tx, "fin", NULL, ok, THEUS_MEM_HOST), THEUS_OK);
    theus_segment seg = {.offset = 1, .length = 2};
    cr_assert_eq(theus_tx_stage_segments(tx, "fin", THEUS_OP_ADD, &seg, 1, big, sizeof big,
                                         THEUS_MEM_HOST, THEUS_STAGE_BORROW), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);
    cr_assert_eq(theus_state_version(bst), 1);
    double fin[4];
    read_field(bst, "fin", fin);
    for (int i = 0; i < 4; i++)
        cr_expect_eq(fin[i], 0.0);

    /* The same payloads within bounds commit. */
    big[0] = big[1] = 10;
    cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write_borrowed(tx, "fin", NULL, ok, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_stage_segments(tx, "fin", THEUS_OP_ADD, &seg, 1, big, sizeof big,
                                         THEUS_MEM_HOST, THEUS_STAGE_BORROW), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
    read_field(bst, "fin", fin);
    cr_expect(fin[0] == 50 && fin[1] == 60 && fin[2] == 60 && fin[3] == 50);
}

Test(borrow, read_your_writes_over_borrowed_deltas)
{
    int32_t a[4] = {1, 2, 3, 4}, b[4] = {10, 10, 10, 10};
    theus_region ra = {.ndim = 1, .start = {2}, .stop = {6}};
    theus_region rb = {.ndim = 1, .start = {4}, .stop = {8}};
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write_borrowed(tx, "v", &ra, a, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_add_borrowed(tx, "v", &rb, b, THEUS_MEM_HOST), THEUS_OK);
    const int32_t want[10] = {0, 0, 1, 2, 13, 14, 10, 10, 0, 0};
    int32_t v[10];
    cr_assert_eq(theus_tx_read(tx, "v", NULL, v, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(memcmp(v, want, sizeof v), 0, "the transaction sees its borrowed deltas");
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    read_field(bst, "v", v);
    cr_assert_eq(memcmp(v, want, sizeof v), 0);
}

/* x as a flat reference: apply @op of @src over region @r (rank 2, [4, 6]). */
static void ref_apply(float *x, const theus_region *r, const float *src, int add)
{
    size_t k = 0;
    for (int64_t i = r->start[0]; i < r->stop[0]; i++)
        for (int64_t j = r->start[1]; j < r->stop[1]; j++, k++)
            x[i * 6 + j] = add ? x[i * 6 + j] + src[k] : src[k];
}

Test(borrow, overlapping_regions_apply_in_order_copied_and_borrowed)
{
    for (unsigned flags = 0; flags <= THEUS_STAGE_BORROW; flags += THEUS_STAGE_BORROW) {
        float ref[24];
        read_field(bst, "x", ref);
        theus_region regs[4] = {rows(0, 2, 0, 6), rows(1, 3, 2, 4), rows(3, 3, 0, 6),
                                rows(0, 4, 3, 4)};
        /* 12 + 4 + 0 + 4 elements, packed. */
        float payload[20];
        for (int i = 0; i < 20; i++)
            payload[i] = (float)(i + 1 + 100 * (int)flags);
        float adds[20];
        for (int i = 0; i < 20; i++)
            adds[i] = 0.5f;
        theus_tx *tx;
        cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, regs, 4, payload,
                                            sizeof payload, THEUS_MEM_HOST, flags),
                     THEUS_OK, "%s", theus_last_error_message());
        cr_assert_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ADD, regs, 4, adds, sizeof adds,
                                            THEUS_MEM_HOST, flags), THEUS_OK);
        size_t off = 0;
        for (int k = 0; k < 4; k++) {
            ref_apply(ref, &regs[k], payload + off, 0);
            off += (size_t)((regs[k].stop[0] - regs[k].start[0]) *
                            (regs[k].stop[1] - regs[k].start[1]));
        }
        off = 0;
        for (int k = 0; k < 4; k++) {
            ref_apply(ref, &regs[k], adds + off, 1);
            off += (size_t)((regs[k].stop[0] - regs[k].start[0]) *
                            (regs[k].stop[1] - regs[k].start[1]));
        }
        float x[24];
        cr_assert_eq(theus_tx_read(tx, "x", NULL, x, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(memcmp(x, ref, sizeof x), 0, "flags %u: read-your-writes", flags);
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
        read_field(bst, "x", x);
        for (int i = 0; i < 24; i++)
            cr_expect_eq(x[i], ref[i], "flags %u: x[%d] = %g, want %g", flags, i, x[i], ref[i]);
    }
}

/* Segments that cross rows of a rank-3 field, random and overlapping, against a flat
 * reference: each is staged as several region deltas, in order. */
Test(borrow, segments_cross_rows_of_any_rank)
{
    uint16_t ref[60];
    memset(ref, 0, sizeof ref);
    uint64_t s = 12345;
    for (int round = 0; round < 40; round++) {
        theus_segment seg[6];
        uint16_t payload[6 * 60];
        size_t total = 0;
        for (int k = 0; k < 6; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            int64_t a = (int64_t)((s >> 33) % 61);
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            int64_t len = (int64_t)((s >> 33) % (uint64_t)(61 - a));
            seg[k].offset = a;
            seg[k].length = len;
            for (int64_t e = 0; e < len; e++)
                payload[total + (size_t)e] = (uint16_t)(round * 100 + k * 10 + e);
            total += (size_t)len;
        }
        const int add = round % 3 == 2;
        size_t off = 0;
        for (int k = 0; k < 6; k++)
            for (int64_t e = 0; e < seg[k].length; e++, off++)
                ref[seg[k].offset + e] = (uint16_t)(add ? ref[seg[k].offset + e] + payload[off]
                                                        : payload[off]);
        theus_tx *tx;
        cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_stage_segments(tx, "c", add ? THEUS_OP_ADD : THEUS_OP_ASSIGN, seg,
                                             6, payload, total * sizeof(uint16_t),
                                             THEUS_MEM_HOST, round & 1 ? THEUS_STAGE_BORROW : 0),
                     THEUS_OK, "%s", theus_last_error_message());
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
        uint16_t c[60];
        read_field(bst, "c", c);
        cr_assert_eq(memcmp(c, ref, sizeof c), 0, "round %d", round);
    }
    /* A scalar field is one element long. */
    float one = 2.5f;
    theus_segment s0 = {.offset = 0, .length = 1};
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_stage_segments(tx, "s", THEUS_OP_ASSIGN, &s0, 1, &one, sizeof one,
                                         THEUS_MEM_HOST, THEUS_STAGE_BORROW), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    float got = 0;
    read_field(bst, "s", &got);
    cr_assert_eq(got, 2.5f);
}

Test(borrow, bad_inputs_fail_and_leave_the_transaction_usable)
{
    theus_tx *tx;
    float p[24] = {0};
    theus_region good = rows(0, 1, 0, 6), oob = rows(0, 5, 0, 6), rank1 = {.ndim = 1, .stop = {2}};
    theus_region two[2] = {good, oob};
    theus_segment sg[2] = {{.offset = 0, .length = 6}, {.offset = 20, .length = 5}};
    theus_segment neg = {.offset = -1, .length = 2}, neglen = {.offset = 1, .length = -2};
    cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
    const theus_mem H = THEUS_MEM_HOST;
    cr_expect_eq(theus_tx_write_borrowed(NULL, "x", NULL, p, H), THEUS_EINVAL);
    cr_expect_eq(theus_tx_write_borrowed(tx, NULL, NULL, p, H), THEUS_EINVAL);
    cr_expect_eq(theus_tx_add_borrowed(tx, "x", NULL, NULL, H), THEUS_EINVAL);
    cr_expect_eq(theus_tx_write_borrowed(tx, "x", &oob, p, H), THEUS_EINVAL);
    cr_expect_eq(theus_tx_write_borrowed(tx, "x", &rank1, p, H), THEUS_EINVAL);
    cr_expect_eq(theus_tx_write_borrowed(tx, "x", NULL, p, (theus_mem)7), THEUS_EINVAL);
    cr_expect_eq(theus_tx_write_borrowed(tx, "k", NULL, p, H), THEUS_EPERM);
    cr_expect_eq(theus_tx_add_borrowed(tx, "nope", NULL, p, H), THEUS_ENOENT);

    cr_expect_eq(theus_tx_stage_regions(NULL, "x", THEUS_OP_ASSIGN, &good, 1, p, 24, H, 0),
                 THEUS_EINVAL);
    cr_expect_eq(theus_tx_stage_regions(tx, NULL, THEUS_OP_ASSIGN, &good, 1, p, 24, H, 0),
                 THEUS_EINVAL);
    cr_expect_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, NULL, 1, p, 24, H, 0),
                 THEUS_EINVAL);
    cr_expect_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, &good, 1, NULL, 24, H, 0),
                 THEUS_EINVAL);
    cr_expect_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, &good, 0, p, 0, H, 0),
                 THEUS_EINVAL, "zero regions");
    cr_expect_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, two, 2, p, 24 * 4, H, 0),
                 THEUS_EINVAL, "second region out of bounds");
    cr_expect(strstr(theus_last_error_message(), "region 1") != NULL, "%s",
              theus_last_error_message());
    cr_expect_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, &rank1, 1, p, 8, H, 0),
                 THEUS_EINVAL, "rank mismatch");
    cr_expect_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, &good, 1, p, 23, H, 0),
                 THEUS_EINVAL, "payload too small");
    cr_expect_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, &good, 1, p, 28,
                                        H, THEUS_STAGE_BORROW), THEUS_EINVAL, "payload too big");
    cr_expect_eq(theus_tx_stage_regions(tx, "x", (theus_delta_op)9, &good, 1, p, 24, H, 0),
                 THEUS_EINVAL, "unknown op");
    cr_expect_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, &good, 1, p, 24, H, 0x80),
                 THEUS_EINVAL, "unknown flag");
    cr_expect_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, &good, 1, p, 24,
                                        (theus_mem)3, 0), THEUS_EINVAL, "unknown memory");
    theus_region kreg = {.ndim = 1, .start = {0}, .stop = {2}};
    cr_expect_eq(theus_tx_stage_regions(tx, "k", THEUS_OP_ASSIGN, &kreg, 1, p, 2, H, 0),
                 THEUS_EPERM, "const field");
    cr_expect_eq(theus_tx_stage_regions(tx, "nope", THEUS_OP_ASSIGN, &kreg, 1, p, 2, H, 0),
                 THEUS_ENOENT);
    cr_expect_eq(theus_tx_stage_segments(tx, "x", THEUS_OP_ADD, sg, 2, p, 11 * 4, H, 0),
                 THEUS_EINVAL, "segment past the end");
    cr_expect(strstr(theus_last_error_message(), "segment 1") != NULL, "%s",
              theus_last_error_message());
    cr_expect_eq(theus_tx_stage_segments(tx, "x", THEUS_OP_ADD, &neg, 1, p, 8, H, 0),
                 THEUS_EINVAL);
    cr_expect_eq(theus_tx_stage_segments(tx, "x", THEUS_OP_ADD, &neglen, 1, p, 0, H, 0),
                 THEUS_EINVAL);
    cr_expect_eq(theus_tx_stage_segments(tx, "x", THEUS_OP_ADD, sg, 1, p, 5 * 4, H, 0),
                 THEUS_EINVAL, "size mismatch");
    cr_expect_eq(theus_tx_stage_segments(tx, "x", THEUS_OP_ADD, NULL, 1, p, 24, H, 0),
                 THEUS_EINVAL);
    cr_expect_eq(theus_tx_stage_segments(tx, "k", THEUS_OP_ASSIGN, sg, 1, p, 6 * 4, H, 0),
                 THEUS_EPERM);
    /* Only empty regions: nothing staged, no error (as theus_tx_write of an empty region). */
    theus_region empty = rows(2, 2, 0, 6);
    cr_expect_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, &empty, 1, p, 0, H, 0),
                 THEUS_OK);

    /* The transaction staged nothing and still works. */
    float one[6] = {1, 1, 1, 1, 1, 1};
    cr_assert_eq(theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, &good, 1, one, sizeof one, H,
                                        THEUS_STAGE_BORROW), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(theus_state_version(bst), 2);
    float x[24];
    read_field(bst, "x", x);
    for (int i = 0; i < 24; i++)
        cr_expect_eq(x[i], i < 6 ? 1.0f : 0.0f);
    theus_stats stats;
    cr_assert_eq(theus_state_stats(bst, &stats), THEUS_OK);
    cr_expect_eq(stats.commits, 1);
}

/* A device field: copied when it lives on a GPU, borrowed once fallen back to host memory;
 * either way the commit writes the same values. An unaligned buffer is copied. */
Test(borrow, device_field_and_unaligned_buffer)
{
    float vals[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write_borrowed(tx, "dev", NULL, vals, THEUS_MEM_HOST), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
    float back[8];
    read_field(bst, "dev", back);
    cr_assert_eq(memcmp(back, vals, sizeof vals), 0);

    unsigned char raw[4 * 6 + 1];
    float row[6] = {9, 8, 7, 6, 5, 4};
    memcpy(raw + 1, row, sizeof row);
    theus_region r = rows(3, 4, 0, 6);
    cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write_borrowed(tx, "x", &r, raw + 1, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    float x[24];
    read_field(bst, "x", x);
    cr_assert_eq(memcmp(x + 18, row, sizeof row), 0);
}

/* ---- a shared state: the redo path reads borrowed payloads and blocks like any other ---- */

static char shname[64];
static theus_state *sha, *shb;

static void shared_fini(void)
{
    theus_state_destroy(shb);
    theus_state_destroy(sha);
    sha = shb = NULL;
    if (shname[0])
        (void)theus_shared_remove(shname); /* gone already unless a check failed half-way */
}

Test(borrow_shared, commit_with_borrowed_payloads, .fini = shared_fini)
{
    snprintf(shname, sizeof shname, "t%d-zerocopy", (int)getpid());
    cr_assert_eq(theus_state_create_shared(shname, BSCHEMA, NULL, NULL, &sha), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_state_open_shared(shname, NULL, &shb), THEUS_OK, "%s",
                 theus_last_error_message());
    float row[6] = {1, 2, 3, 4, 5, 6}, packed[8];
    for (int i = 0; i < 8; i++)
        packed[i] = 10.0f * (float)i;
    theus_region r = rows(0, 1, 0, 6);
    theus_segment seg[2] = {{.offset = 4, .length = 4}, {.offset = 20, .length = 4}};
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(sha, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write_borrowed(tx, "x", &r, row, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_stage_segments(tx, "x", THEUS_OP_ADD, seg, 2, packed, sizeof packed,
                                         THEUS_MEM_HOST, THEUS_STAGE_BORROW), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
    float want[24] = {1, 2, 3, 4, 5 + 0, 6 + 10, 20, 30};
    want[20] = 40, want[21] = 50, want[22] = 60, want[23] = 70;
    float x[24];
    read_field(shb, "x", x);
    for (int i = 0; i < 24; i++)
        cr_expect_eq(x[i], want[i], "x[%d] = %g, want %g", i, x[i], want[i]);
    cr_assert_eq(theus_state_version(shb), 2);
}

/* ---- allocation failures: every N-th allocation of the new calls, as test_alloc_fail --- */

static long a_calls, a_fail_at, a_live;

static void *count_malloc(size_t n)
{
    if (a_fail_at && ++a_calls == a_fail_at)
        return NULL;
    void *p = malloc(n);
    if (p)
        a_live++;
    return p;
}

static void count_free(void *p)
{
    if (p) {
        a_live--;
        free(p);
    }
}

static void hooks_fini(void)
{
    theus_set_alloc_funcs(NULL, NULL);
}

/* One staging call per kind, with the N-th allocation failing: ENOMEM or OK, and after an
 * ENOMEM the transaction commits what it had staged before, the state holding exactly that. */
static int stage_kind(theus_tx *tx, int kind, float *payload)
{
    theus_region regs[3] = {rows(0, 1, 0, 6), rows(1, 3, 1, 3), rows(3, 4, 0, 6)};
    theus_segment seg[2] = {{.offset = 2, .length = 9}, {.offset = 13, .length = 7}};
    switch (kind) {
    case 0:
        return theus_tx_write_borrowed(tx, "x", &regs[1], payload, THEUS_MEM_HOST);
    case 1:
        return theus_tx_stage_regions(tx, "x", THEUS_OP_ASSIGN, regs, 3, payload, 16 * 4,
                                      THEUS_MEM_HOST, 0);
    case 2:
        return theus_tx_stage_regions(tx, "x", THEUS_OP_ADD, regs, 3, payload, 16 * 4,
                                      THEUS_MEM_HOST, THEUS_STAGE_BORROW);
    default:
        return theus_tx_stage_segments(tx, "x", THEUS_OP_ASSIGN, seg, 2, payload, 16 * 4,
                                       THEUS_MEM_HOST, kind == 3 ? 0 : THEUS_STAGE_BORROW);
    }
}

Test(borrow_alloc, every_failing_allocation_leaves_the_transaction_usable, .fini = hooks_fini)
{
    cr_assert_eq(theus_set_alloc_funcs(count_malloc, count_free), THEUS_OK);
    float payload[16];
    for (int i = 0; i < 16; i++)
        payload[i] = (float)(i + 1);
    for (int kind = 0; kind < 5; kind++) {
        for (long n = 1;; n++) {
            theus_state *s = NULL;
            a_fail_at = 0;
            cr_assert_eq(theus_state_create(BSCHEMA, NULL, &s), THEUS_OK);
            theus_tx *tx;
            cr_assert_eq(theus_tx_begin(s, NULL, &tx), THEUS_OK);
            /* One delta staged before, so that the array must grow in the call under test. */
            float first[6] = {5, 5, 5, 5, 5, 5};
            theus_region r0 = rows(2, 3, 0, 6);
            for (int j = 0; j < 8; j++)
                cr_assert_eq(theus_tx_write(tx, "x", &r0, first, THEUS_MEM_HOST), THEUS_OK);
            a_calls = 0;
            a_fail_at = n;
            int rc = stage_kind(tx, kind, payload);
            const int failed = a_calls >= n;
            a_fail_at = 0;
            if (failed)
                cr_assert_eq(rc, THEUS_ENOMEM, "kind %d, N=%ld: %s", kind, n,
                             theus_strerror(rc));
            else
                cr_assert_eq(rc, THEUS_OK, "kind %d, N=%ld: %s", kind, n,
                             theus_last_error_message());
            cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
            float x[24];
            read_field(s, "x", x);
            if (failed)
                for (int i = 0; i < 24; i++)
                    cr_assert_eq(x[i], i >= 12 && i < 18 ? 5.0f : 0.0f,
                                 "kind %d, N=%ld: x[%d] = %g", kind, n, i, x[i]);
            theus_state_destroy(s);
            cr_assert_eq(a_live, 0, "kind %d, N=%ld: %ld allocations leaked", kind, n, a_live);
            if (!failed)
                break;
        }
    }
}

/* White box: on a host field the payload really is the caller's memory, read at commit
 * (a caller must not do this; the test does it to see that nothing was copied), and
 * without THEUS_STAGE_BORROW it really is a copy made at the call. */
Test(borrow, host_payload_is_read_in_place_at_commit)
{
    for (int borrow = 0; borrow < 2; borrow++) {
        int32_t a[2] = {1, 2}, b[3] = {3, 4, 5};
        theus_region r = {.ndim = 1, .start = {0}, .stop = {2}};
        theus_segment seg = {.offset = 5, .length = 3};
        theus_tx *tx;
        cr_assert_eq(theus_tx_begin(bst, NULL, &tx), THEUS_OK);
        if (borrow)
            cr_assert_eq(theus_tx_write_borrowed(tx, "v", &r, a, THEUS_MEM_HOST), THEUS_OK);
        else
            cr_assert_eq(theus_tx_write(tx, "v", &r, a, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_stage_segments(tx, "v", THEUS_OP_ASSIGN, &seg, 1, b, sizeof b,
                                             THEUS_MEM_HOST, borrow ? THEUS_STAGE_BORROW : 0),
                     THEUS_OK);
        a[1] = 20;
        b[2] = 50;
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
        int32_t v[10];
        read_field(bst, "v", v);
        cr_expect_eq(v[1], borrow ? 20 : 2, "borrow %d", borrow);
        cr_expect_eq(v[7], borrow ? 50 : 5, "borrow %d", borrow);
    }
}

/* The capsule destructor for Python bindings looks Python up in the process: in a process
 * without it (this one) it must leave whatever it is given alone. */
Test(zero_copy, capsule_destructor_without_python_does_nothing)
{
    unsigned char not_a_capsule[64];
    memset(not_a_capsule, 0xab, sizeof not_a_capsule);
    theus_dlpack_capsule_destructor(not_a_capsule);
    theus_dlpack_capsule_destructor(NULL);
    for (size_t i = 0; i < sizeof not_a_capsule; i++)
        cr_assert_eq(not_a_capsule[i], 0xab);
}
