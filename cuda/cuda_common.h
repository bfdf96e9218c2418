/* Shared by the host side of the CUDA backend (the C files in cuda/): the CUDA runtime's C API and the
 * check macros that turn a failed CUDA call into a theus status. Internal: no public header
 * includes it, so users of theus never see a CUDA type. */
#ifndef THEUS_CUDA_COMMON_H
#define THEUS_CUDA_COMMON_H

#include <cuda_runtime_api.h>

#include "error.h"

/* Record a failed CUDA call and return THEUS_EDEVICE. cudaGetLastError clears the runtime's
 * error so that the next call starts clean; a sticky error (an illegal address in a kernel)
 * cannot be cleared and makes every later call of this process fail the same way. The
 * detail goes to the calling thread's last error (no state: the backend serves them all). */
static inline int cuda_fail(cudaError_t e, const char *what, const char *file, int line)
{
    (void)cudaGetLastError();
    return err_set(NULL, THEUS_EDEVICE, "CUDA: %s: %s (%s) at %s:%d", what, cudaGetErrorName(e),
                   cudaGetErrorString(e), file, line);
}

/* Return THEUS_EDEVICE from the enclosing function when @call fails. */
#define CHECK_CUDA(call)                                                                  \
    do {                                                                                  \
        cudaError_t check_e_ = (call);                                                    \
        if (check_e_ != cudaSuccess)                                                      \
            return cuda_fail(check_e_, #call, __FILE__, __LINE__);                        \
    } while (0)

/* Set @rc to THEUS_EDEVICE and jump to @label when @call fails (for cleanup paths). */
#define CHECK_CUDA_GOTO(call, rc, label)                                                  \
    do {                                                                                  \
        cudaError_t check_e_ = (call);                                                    \
        if (check_e_ != cudaSuccess) {                                                    \
            (rc) = cuda_fail(check_e_, #call, __FILE__, __LINE__);                        \
            goto label;                                                                   \
        }                                                                                 \
    } while (0)

#endif /* THEUS_CUDA_COMMON_H */
