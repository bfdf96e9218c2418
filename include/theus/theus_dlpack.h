/** @file
 * DLPack export of theus fields and staging buffers, for PyTorch, CuPy, JAX and NumPy. */
#ifndef THEUS_THEUS_DLPACK_H
#define THEUS_THEUS_DLPACK_H

#include "theus/dlpack.h"
#include "theus/theus.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * @brief Export a committed field as a read-only DLPack tensor without copying.
 *        Device type: kDLCUDA for device fields, kDLCUDAHost for pinned, kDLCPU for host
 *        (including GPU placements that fell back to host memory). flags has
 *        DLPACK_FLAG_BITMASK_READ_ONLY set. The view follows later commits in place.
 * @param[in]  st    the state; borrowed.
 * @param[in]  field the field's name; borrowed for the call.
 * @param[out] out new tensor owned by the caller: call (*out)->deleter(*out) exactly once.
 *             The deleter keeps the field memory alive: the state's memory is released at
 *             the later of theus_state_destroy and the last deleter.
 * @return THEUS_OK, THEUS_ENOENT, THEUS_EINVAL (NULL argument, dtype without a DLPack code),
 *         THEUS_ENOMEM.
 * @note Thread-safe. The deleter may run on any thread.
 */
THEUS_API int theus_field_export_dlpack(theus_state *st, const char *field, DLManagedTensorVersioned **out);

/**
 * @brief As theus_field_export_dlpack, as a legacy unversioned DLManagedTensor (DLPack
 *        0.x), for consumers that predate DLPack 1.0 (the "dltensor" capsule). That struct
 *        has no flags: the consumer must treat the view as read-only by convention.
 * @param[in]  st    the state; borrowed.
 * @param[in]  field the field's name; borrowed for the call.
 * @param[out] out   new tensor owned by the caller: call (*out)->deleter(*out) exactly
 *                   once; NULL on failure. Lifetime rules as theus_field_export_dlpack.
 * @return THEUS_OK, THEUS_ENOENT, THEUS_EINVAL, THEUS_ENOMEM.
 * @note Thread-safe. The deleter may run on any thread.
 */
THEUS_API int theus_field_export_dlpack_unversioned(theus_state *st, const char *field,
                                                    DLManagedTensor **out);

/**
 * @brief Export a buffer from theus_tx_stage_buffer as a writable DLPack tensor in the
 *        region's shape, so another framework can fill it. The deleter keeps the buffer
 *        alive after the transaction is committed or aborted.
 * @param[in]  tx  the transaction.
 * @param[in]  buf a buffer theus_tx_stage_buffer returned for @p tx.
 * @param[out] out new tensor owned by the caller: call (*out)->deleter(*out) exactly once;
 *                 NULL on failure.
 * @return THEUS_OK; THEUS_ENOENT when @p buf is not a staging buffer of @p tx; THEUS_EINVAL;
 *         THEUS_ENOMEM.
 * @note Same thread rules as the transaction.
 */
THEUS_API int theus_tx_export_dlpack(theus_tx *tx, void *buf, DLManagedTensorVersioned **out);

/**
 * @brief A CPython capsule destructor (`PyCapsule_Destructor`) for capsules that wrap a
 *        tensor from the exports above, for Python bindings without a compiled extension
 *        (ctypes: `PyCapsule_New(tensor, "dltensor_versioned", <address of this function>)`).
 *        As the DLPack Python specification says: a capsule still named
 *        "dltensor_versioned" (or "dltensor", for a legacy DLManagedTensor) was never
 *        consumed, and its tensor's deleter is called; a consumed one (renamed
 *        "used_dltensor_versioned" / "used_dltensor") is left to its consumer. An exception
 *        pending while the capsule dies is kept, and none is raised.
 * @param[in] capsule the dying capsule (a `PyObject *`).
 * @note Called by Python with the GIL held. The capsule's name must be a string that
 *       outlives it (a static or module-level buffer: PyCapsule keeps the pointer). The few
 *       Python functions it calls are found in the running process at the first call; in a
 *       process without them it does nothing. No Python header is needed to use it.
 */
THEUS_API void theus_dlpack_capsule_destructor(void *capsule);

#ifdef __cplusplus
}
#endif
#endif
