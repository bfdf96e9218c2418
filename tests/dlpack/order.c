/* theus/theus_dlpack.h next to an official dlpack.h, in the include order picked by
 * SYSTEM_DLPACK_FIRST (1: <dlpack/dlpack.h> first, 0: theus first). Built against Debian's
 * libdlpack-dev (DLPack 0.6) when it is installed; the build itself is half the test (both
 * orders must compile), the run checks that both export calls give usable tensors. */
#if SYSTEM_DLPACK_FIRST
#include <dlpack/dlpack.h>
#include <theus/theus_dlpack.h>
#else
#include <theus/theus_dlpack.h>
#include <dlpack/dlpack.h>
#endif

#include <stddef.h>
#include <stdio.h>

/* The layouts every DLPack version agrees on. */
_Static_assert(offsetof(DLManagedTensor, dl_tensor) == 0, "DLManagedTensor layout");
_Static_assert(offsetof(DLManagedTensorVersioned, dl_tensor) == 32, "versioned layout");
_Static_assert(offsetof(DLTensor, byte_offset) == 40, "DLTensor layout");
_Static_assert(sizeof(DLDataType) == 4, "DLDataType layout");

#define EXPECT(cond)                                                                     \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "dlpack order test: %s failed (%s)\n", #cond,               \
                    theus_last_error_message());                                         \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

int main(void)
{
    theus_state *st = NULL;
    EXPECT(theus_state_create("{\"name\": \"dl\", \"fields\": {\"w\": {\"dtype\": \"f32\", "
                              "\"shape\": [2, 3], \"placement\": \"host\"}}}",
                              NULL, &st) == THEUS_OK);
    const float v[6] = {1, 2, 3, 4, 5, 6};
    theus_tx *tx = NULL;
    EXPECT(theus_tx_begin(st, NULL, &tx) == THEUS_OK);
    EXPECT(theus_tx_write(tx, "w", NULL, v, THEUS_MEM_HOST) == THEUS_OK);
    EXPECT(theus_tx_commit(tx, NULL) == THEUS_OK);

    DLManagedTensorVersioned *t = NULL;
    EXPECT(theus_field_export_dlpack(st, "w", &t) == THEUS_OK);
    EXPECT(t->version.major == 1 && (t->flags & DLPACK_FLAG_BITMASK_READ_ONLY));
    EXPECT(t->dl_tensor.device.device_type == kDLCPU && t->dl_tensor.ndim == 2);
    EXPECT(t->dl_tensor.dtype.code == kDLFloat && t->dl_tensor.dtype.bits == 32);
    EXPECT(((const float *)t->dl_tensor.data)[4] == 5.0f);

    DLManagedTensor *u = NULL, *none = NULL;
    EXPECT(theus_field_export_dlpack_unversioned(st, "w", &u) == THEUS_OK);
    EXPECT(u->dl_tensor.shape[0] == 2 && u->dl_tensor.shape[1] == 3);
    EXPECT(u->dl_tensor.data == t->dl_tensor.data && u->dl_tensor.strides == NULL);
    EXPECT(theus_field_export_dlpack_unversioned(st, "nope", &none) == THEUS_ENOENT && !none);
    EXPECT(theus_field_export_dlpack_unversioned(NULL, "w", &none) == THEUS_EINVAL && !none);

    /* Both views keep the field alive past the state (ASan catches a use after free). */
    theus_state_destroy(st);
    EXPECT(((const float *)u->dl_tensor.data)[5] == 6.0f);
    u->deleter(u);
    EXPECT(((const float *)t->dl_tensor.data)[0] == 1.0f);
    t->deleter(t);
    printf("dlpack order test (%s first): OK\n", SYSTEM_DLPACK_FIRST ? "dlpack/dlpack.h" : "theus");
    return 0;
}
