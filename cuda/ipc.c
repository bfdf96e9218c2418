/* The CUDA backend's part in shared states: device field memory exported and mapped through
 * CUDA IPC, and shared memory registered so that kernels reach it at its host address. */
#include "cuda_backend.h"

#include <string.h>

_Static_assert(sizeof(cudaIpcMemHandle_t) == THEUS_IPC_HANDLE_BYTES, "IPC handle size");

int cuda_ipc_export(void *ctx, void *ptr, void *handle)
{
    cuda_call k;
    int rc = cuda_call_begin(ctx, &k);
    if (rc != THEUS_OK)
        return rc;
    cudaIpcMemHandle_t h;
    cudaError_t e = cudaIpcGetMemHandle(&h, ptr);
    cuda_call_end(&k);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaIpcGetMemHandle", __FILE__, __LINE__);
    memcpy(handle, &h, sizeof h);
    return THEUS_OK;
}

int cuda_ipc_open(void *ctx, const void *handle, void **ptr)
{
    cuda_call k;
    int rc = cuda_call_begin(ctx, &k);
    if (rc != THEUS_OK)
        return rc;
    cudaIpcMemHandle_t h;
    memcpy(&h, handle, sizeof h);
    cudaError_t e = cudaIpcOpenMemHandle(ptr, h, cudaIpcMemLazyEnablePeerAccess);
    cuda_call_end(&k);
    if (e != cudaSuccess)
        return cuda_fail(e, "cudaIpcOpenMemHandle", __FILE__, __LINE__);
    return THEUS_OK;
}

void cuda_ipc_close(void *ctx, void *ptr)
{
    cuda_call k;
    if (cuda_call_begin(ctx, &k) != THEUS_OK)
        return;
    if (cudaIpcCloseMemHandle(ptr) != cudaSuccess)
        (void)cudaGetLastError();
    cuda_call_end(&k);
}

/* As cuda_alloc's pinned memory: mapped, portable, and reached by kernels at its host
 * address (unified addressing). */
int cuda_host_register(void *ctx, void *ptr, size_t nbytes)
{
    cuda_call k;
    int rc = cuda_call_begin(ctx, &k);
    if (rc != THEUS_OK)
        return rc;
    cudaError_t e = cudaHostRegister(ptr, nbytes, cudaHostRegisterMapped | cudaHostRegisterPortable);
    void *dp = NULL;
    if (e != cudaSuccess) {
        rc = cuda_fail(e, "cudaHostRegister", __FILE__, __LINE__);
    } else if ((e = cudaHostGetDevicePointer(&dp, ptr, 0)) != cudaSuccess || dp != ptr) {
        rc = e != cudaSuccess ? cuda_fail(e, "cudaHostGetDevicePointer", __FILE__, __LINE__)
                              : err_set(NULL, THEUS_EDEVICE,
                                        "CUDA: registered memory has a different device address");
        if (cudaHostUnregister(ptr) != cudaSuccess)
            (void)cudaGetLastError();
    }
    cuda_call_end(&k);
    return rc;
}

void cuda_host_unregister(void *ctx, void *ptr)
{
    cuda_call k;
    if (cuda_call_begin(ctx, &k) != THEUS_OK)
        return;
    if (cudaHostUnregister(ptr) != cudaSuccess)
        (void)cudaGetLastError();
    cuda_call_end(&k);
}
