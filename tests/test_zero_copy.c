/* Zero copy: staging buffers the caller fills, raw field pointers with commit holds, and
 * DLPack export of fields and staging buffers (host placements here; the GPU variants run
 * in test_cuda_parity when a device answers). */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include "theus/theus.h"
#include "theus/theus_dlpack.h"

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
