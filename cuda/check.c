/* The CUDA backend's gatekeeper checks: finite/min/max of a staged payload on the GPU
 * (kernels/constraints.cu) with the CPU's rules; payloads in the small pinned pool are
 * checked by the CPU where they are. And the audit's rules over a device field's values
 * (cuda_audit): one summary per rule, copied back in one transfer. */
#include "cuda_backend.h"
#include "dtype.h"

#include "../kernels/constraints.cuh"

#include <stddef.h>
#include <string.h>

static int is_signed_int(theus_dtype dt)
{
    return dt == THEUS_DTYPE_I8 || dt == THEUS_DTYPE_I16 || dt == THEUS_DTYPE_I32 ||
           dt == THEUS_DTYPE_I64;
}

int cuda_check(void *ctx, theus_dtype dt, const void *staged, size_t n,
               const theus_constraints *cons, size_t *bad_index)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    *bad_index = SIZE_MAX;
    /* The cases dtype_check settles without looking at an element. */
    if (n == 0)
        return THEUS_OK;
    if (theus_dtype_size(dt) == 0 || !staged) {
        *bad_index = 0;
        return THEUS_OK;
    }
    if (!cons || (!cons->finite && !cons->has_min && !cons->has_max))
        return THEUS_OK;
    if (pinned_pool_lookup(&c->small, staged) >= 0) {
        /* Staged in host memory: checked where it is, no round trip to the GPU. */
        *bad_index = dtype_check(dt, staged, n, cons);
        return THEUS_OK;
    }
    theus_check_params p;
    memset(&p, 0, sizeof p);
    if (dtype_is_float(dt)) {
        p.kind = THEUS_CHECK_FLOAT;
        p.finite = cons->finite;
        p.has_min = cons->has_min;
        p.has_max = cons->has_max;
        p.min = cons->min;
        p.max = cons->max;
    } else if (!cons->has_min && !cons->has_max) {
        return THEUS_OK;
    } else if (is_signed_int(dt)) {
        p.kind = THEUS_CHECK_SIGNED;
        if (!dtype_signed_range(cons, &p.lo, &p.hi)) {
            *bad_index = 0;
            return THEUS_OK;
        }
    } else {
        p.kind = THEUS_CHECK_UNSIGNED;
        if (!dtype_unsigned_range(cons, &p.ulo, &p.uhi)) {
            *bad_index = 0;
            return THEUS_OK;
        }
    }
    int rc = cuda_call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    cuda_lane *l = k.lane;
    if (!l->d_first) {
        void *dp = NULL, *hp = NULL;
        cudaError_t e = cudaMalloc(&dp, sizeof *l->d_first);
        if (e == cudaSuccess) {
            e = cudaHostAlloc(&hp, sizeof *l->h_first, cudaHostAllocPortable);
            if (e != cudaSuccess && cudaFree(dp) != cudaSuccess)
                (void)cudaGetLastError();
        }
        if (e != cudaSuccess) {
            rc = cuda_alloc_fail(e, "constraint check result", sizeof *l->d_first);
            goto out;
        }
        l->d_first = dp;
        l->h_first = hp;
    }
    CHECK_CUDA_GOTO(theus_check_launch((int)dt, staged, (uint64_t)n, &p, l->d_first,
                                       c->check_blocks, l->stream), rc, out);
    CHECK_CUDA_GOTO(cudaMemcpyAsync(l->h_first, l->d_first, sizeof *l->h_first,
                                    cudaMemcpyDeviceToHost, l->stream), rc, out);
    CHECK_CUDA_GOTO(cudaStreamSynchronize(l->stream), rc, out);
    *bad_index = *l->h_first >= (unsigned long long)n ? SIZE_MAX : (size_t)*l->h_first;
out:
    cuda_call_end(&k);
    return rc;
}

_Static_assert(sizeof(theus_audit_summary) == sizeof(backend_audit_result) &&
                   offsetof(theus_audit_summary, first) == offsetof(backend_audit_result, first) &&
                   offsetof(theus_audit_summary, value) == offsetof(backend_audit_result, value),
               "the kernel's summary is the backend table's result");

int cuda_audit(void *ctx, theus_dtype dt, const void *cur, const void *old, size_t n,
               const backend_audit_rule *rules, size_t nrules, backend_audit_result *out)
{
    cuda_ctx *c = ctx;
    if (nrules == 0 || n == 0)
        return THEUS_OK;   /* backend_audit set every result to "nothing found" */
    if (nrules > THEUS_AUDIT_MAX_RULES || !cur || theus_dtype_size(dt) == 0)
        return THEUS_EINVAL;
    theus_audit_params p;
    memset(&p, 0, sizeof p);
    p.nrules = (int32_t)nrules;
    int rate = 0;
    for (size_t r = 0; r < nrules; r++) {
        p.rule[r] = rules[r].rule;
        p.value[r] = rules[r].value;
        rate |= rules[r].rule == 4;
    }
    if (rate && !old)
        return THEUS_EINVAL;
    cuda_call k;
    int rc = cuda_call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    cuda_lane *l = k.lane;
    void *d_out = NULL;
    size_t bytes = nrules * sizeof(theus_audit_summary);
    cudaError_t e = cuda_dev_alloc(c, l, bytes, &d_out);
    if (e != cudaSuccess) {
        rc = cuda_alloc_fail(e, "audit summaries", bytes);
        d_out = NULL;
        goto out;
    }
    CHECK_CUDA_GOTO(theus_audit_launch((int)dt, cur, rate ? old : NULL, (uint64_t)n, &p,
                                       (theus_audit_summary *)d_out, c->check_blocks, l->stream),
                    rc, out);
    /* The one transfer back: every rule's summary. */
    CHECK_CUDA_GOTO(cudaMemcpyAsync(out, d_out, bytes, cudaMemcpyDeviceToHost, l->stream), rc, out);
    CHECK_CUDA_GOTO(cudaStreamSynchronize(l->stream), rc, out);
out:
    if (d_out)
        cuda_dev_free(c, l, d_out);
    cuda_call_end(&k);
    return rc;
}
