/* Defaults for optional backend entries, and backend discovery. */
#include "backend.h"
#include "dtype.h"
#include <math.h>
#include <stdint.h>

int backend_check(const theus_backend *b, theus_dtype dt, const void *staged, size_t n,
                  const theus_constraints *c, size_t *bad_index)
{
    if (b->iface->check)
        return b->iface->check(b->ctx, dt, staged, n, c, bad_index);
    *bad_index = dtype_check(dt, staged, n, c);
    return THEUS_OK;
}

/* Whether @x (after; @old before) breaks rule @r (audit.c's semantics). */
static int audit_breaks(const backend_audit_rule *r, double x, double old)
{
    switch (r->rule) {
    case SCHEMA_AUDIT_FINITE: return !isfinite(x);
    case SCHEMA_AUDIT_MIN: return !(x >= r->value);
    case SCHEMA_AUDIT_MAX_VALUE: return !(x <= r->value);
    case SCHEMA_AUDIT_MAX_ABS: return !(fabs(x) <= r->value);
    case SCHEMA_AUDIT_MAX_CHANGE: return !(fabs(x - old) <= r->value);
    }
    return 0;
}

int backend_audit(const theus_backend *b, theus_mem mem, theus_dtype dt, const void *cur,
                  const void *old, size_t n, const backend_audit_rule *rules, size_t nrules,
                  backend_audit_result *out)
{
    for (size_t r = 0; r < nrules; r++)
        out[r] = (backend_audit_result){.count = 0, .first = UINT64_MAX, .value = 0.0};
    if (mem == THEUS_MEM_DEVICE)
        return b->iface->audit ? b->iface->audit(b->ctx, dt, cur, old, n, rules, nrules, out)
                               : THEUS_EINVAL;
    for (size_t r = 0; r < nrules; r++) {
        int rate = rules[r].rule == SCHEMA_AUDIT_MAX_CHANGE;
        if (rate && !old)
            return THEUS_EINVAL;
        for (size_t i = 0; i < n; i++) {
            double x = dtype_get(dt, cur, i);
            if (!audit_breaks(&rules[r], x, rate ? dtype_get(dt, old, i) : 0.0))
                continue;
            if (out[r].count++ == 0) {
                out[r].first = i;
                out[r].value = x;
            }
        }
    }
    return THEUS_OK;
}

int backend_get(const theus_backend *b, theus_dtype dt, const void *staged, size_t n, size_t i,
                double *out)
{
    unsigned char elem[8];
    theus_region frame = {.ndim = 1}, one = {.ndim = 1};
    frame.stop[0] = (int64_t)n;
    one.start[0] = (int64_t)i;
    one.stop[0] = (int64_t)i + 1;
    int rc = b->iface->read(b->ctx, staged, &frame, dt, &one, elem, THEUS_MEM_HOST);
    *out = rc == THEUS_OK ? dtype_get(dt, elem, 0) : 0.0;
    return rc;
}

#ifndef THEUS_HAVE_CUDA
const theus_backend *backend_cuda(void)
{
    return NULL;
}
#endif

int theus_gpu_available(void)
{
    return backend_cuda() != NULL;
}
