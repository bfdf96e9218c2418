/* DLPack (https://dmlc.github.io/dlpack/latest/c_api.html) ABI 1.x, written from the public
 * specification: the structs theus exports committed fields and staging buffers with.
 *
 * It coexists with any other dlpack.h in either include order. The first one included wins
 * and the other adds only what is missing, so the types are defined once and agree:
 *  - nothing DLPack-ish included before: everything below is defined under the official
 *    include guard (DLPACK_DLPACK_H_), and a dlpack.h included later is a no-op;
 *  - an official dlpack.h 1.x included before (it defines DLPACK_MAJOR_VERSION): nothing
 *    is defined here;
 *  - an older official dlpack.h (0.x, such as Debian's libdlpack-dev 0.6, which has no
 *    DLManagedTensorVersioned) included before: only the 1.x additions are defined here
 *    (DLPackVersion, DLManagedTensorVersioned, the flag bits, the version macros).
 * The shared parts (DLDevice, DLDataType, DLTensor, DLManagedTensor) have the same layout
 * in every DLPack version. kDLBool (code 6, DLPack 0.8 and later) is missing when a 0.x
 * header came first; bool fields are exported with code 6 all the same. */
#ifndef THEUS_DLPACK_H
#define THEUS_DLPACK_H

#include <stdint.h>

#ifndef DLPACK_DLPACK_H_
#define DLPACK_DLPACK_H_

#ifdef __cplusplus
#define DLPACK_EXTERN_C extern "C"
#else
#define DLPACK_EXTERN_C
#endif
#ifndef DLPACK_DLL
#define DLPACK_DLL
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    kDLCPU = 1,
    kDLCUDA = 2,
    kDLCUDAHost = 3,
    kDLOpenCL = 4,
    kDLVulkan = 7,
    kDLMetal = 8,
    kDLVPI = 9,
    kDLROCM = 10,
    kDLROCMHost = 11,
    kDLExtDev = 12,
    kDLCUDAManaged = 13,
    kDLOneAPI = 14,
    kDLWebGPU = 15,
    kDLHexagon = 16,
    kDLMAIA = 17
} DLDeviceType;

typedef struct {
    DLDeviceType device_type;
    int32_t device_id;
} DLDevice;

typedef enum {
    kDLInt = 0U,
    kDLUInt = 1U,
    kDLFloat = 2U,
    kDLOpaqueHandle = 3U,
    kDLBfloat = 4U,
    kDLComplex = 5U,
    kDLBool = 6U
} DLDataTypeCode;

typedef struct {
    uint8_t code;   /* a DLDataTypeCode */
    uint8_t bits;
    uint16_t lanes;
} DLDataType;

typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides;     /* NULL: C-contiguous */
    uint64_t byte_offset;
} DLTensor;

/* The legacy (unversioned) managed tensor of DLPack 0.x, still part of 1.x. */
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;

#ifdef __cplusplus
}
#endif
#endif /* DLPACK_DLPACK_H_ */

/* The versioned ABI of DLPack 1.x: defined here unless an official 1.x header came first
 * (with this file first, or after a 0.x header that lacks it). */
#ifndef DLPACK_MAJOR_VERSION
#ifdef __cplusplus
extern "C" {
#endif
#define DLPACK_MAJOR_VERSION 1
#define DLPACK_MINOR_VERSION 1
#define DLPACK_FLAG_BITMASK_READ_ONLY (1UL << 0UL)
#define DLPACK_FLAG_BITMASK_IS_COPIED (1UL << 1UL)

typedef struct {
    uint32_t major;
    uint32_t minor;
} DLPackVersion;

typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;
#ifdef __cplusplus
}
#endif
#endif /* !DLPACK_MAJOR_VERSION */
#endif /* THEUS_DLPACK_H */
