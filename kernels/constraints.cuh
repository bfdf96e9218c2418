/* Launcher of the constraint-check kernel family (kernels/constraints.cu): the schema
 * gatekeeper's finite/min/max test of a staged payload on the GPU. Plain C, so that
 * the C files of cuda/ can include it. */
#ifndef THEUS_KERNELS_CONSTRAINTS_CUH
#define THEUS_KERNELS_CONSTRAINTS_CUH

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How elements are compared. The host resolves integer bounds to an exact integer range
 * first (as src/dtype.c does), so the kernel never rounds an integer through a double. */
typedef enum theus_check_kind {
    THEUS_CHECK_FLOAT = 0,   /* finite / min / max on the value as a double; NaN fails all */
    THEUS_CHECK_SIGNED = 1,  /* lo <= v <= hi in int64 */
    THEUS_CHECK_UNSIGNED = 2 /* ulo <= v <= uhi in uint64 (bool reads as 0 or 1) */
} theus_check_kind;

typedef struct theus_check_params {
    int32_t kind;
    int32_t finite, has_min, has_max;
    double min, max;
    int64_t lo, hi;
    uint64_t ulo, uhi;
} theus_check_params;

/* Whether the kernel can run on the current device. */
cudaError_t theus_check_probe(void);

/* Find the first of @n elements of dtype @dtype at device address @buf that breaks @p;
 * its index (or UINT64_MAX when all pass) lands in *@d_first, a device word, in stream
 * order. Asynchronous; returns the launch status (the runtime's error state is cleared). */
cudaError_t theus_check_launch(int dtype, const void *buf, uint64_t n,
                               const theus_check_params *p, unsigned long long *d_first,
                               int max_blocks, cudaStream_t stream);

/* ---- the audit's rules (src/process/audit.c) on a device field's values ---------------- */
#define THEUS_AUDIT_MAX_RULES 8

/* Rules as src/schema.h numbers them: 0 finite, 1 min, 2 max, 3 max_abs, 4 max_change
 * (|cur - old| <= value; the only rule that reads @old). Every rule compares the element as
 * a double, NaN breaking every bound — as the host loop (src/backend.c backend_audit). */
typedef struct theus_audit_params {
    int32_t nrules;
    int32_t rule[THEUS_AUDIT_MAX_RULES];
    double value[THEUS_AUDIT_MAX_RULES];
} theus_audit_params;

/* What one rule found: elements breaking it, the first of them (UINT64_MAX: none) and its
 * value. Same layout as src/backend.h's backend_audit_result. */
typedef struct theus_audit_summary {
    unsigned long long count;
    unsigned long long first;
    double value;
} theus_audit_summary;

/* Evaluate @p's rules over @n elements of dtype @dtype at device addresses @cur (and @old,
 * NULL unless a rule is max_change): @d_out (nrules summaries in device memory) is
 * initialised, filled and its values fetched, all in stream order on @stream. Asynchronous;
 * returns the launch status (the runtime's error state is cleared on failure). */
cudaError_t theus_audit_launch(int dtype, const void *cur, const void *old, uint64_t n,
                               const theus_audit_params *p, theus_audit_summary *d_out,
                               int max_blocks, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* THEUS_KERNELS_CONSTRAINTS_CUH */
