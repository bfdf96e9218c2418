/* The CUDA backend's described batches: segments and payload copied into device memory (from
 * device or host memory alike), validated and summarised there by a kernel
 * (kernels/batch.cu), the summary and the touched-block bitmap copied back in one small
 * transfer each; no per-segment work on the host. Compiled, not yet run on a GPU. */
#include "cuda_backend.h"
#include "seg_batch.h"

#include "../kernels/batch.cuh"

#include <string.h>

int cuda_stage_batch(void *ctx, theus_dtype dt, uint64_t nelems, const theus_batch_segment *segs,
                     size_t nsegs, const void *payload, size_t pelems, theus_mem mem,
                     struct seg_summary *sum, size_t *bad, void **staged_segs,
                     void **staged_payload)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    *bad = SIZE_MAX;
    *staged_segs = *staged_payload = NULL;
    if (mem != THEUS_MEM_HOST && mem != THEUS_MEM_DEVICE)
        return THEUS_EINVAL;
    const size_t es = theus_dtype_size(dt);
    const size_t sbytes = nsegs * sizeof *segs, pbytes = pelems * es;
    const size_t wbytes = (sum->nblocks / 64 + 1) * sizeof *sum->touched;
    int rc = cuda_call_begin_unordered(c, &k);
    if (rc != THEUS_OK)
        return rc;
    cuda_lane *l = k.lane;
    void *dsegs = NULL, *dpay = NULL, *scratch = NULL;
    cudaError_t e;
    if ((e = cuda_dev_alloc(c, l, sbytes, &dsegs)) != cudaSuccess ||
        (e = cuda_dev_alloc(c, l, pbytes, &dpay)) != cudaSuccess ||
        (e = cuda_dev_alloc(c, l, wbytes + sizeof(theus_batch_result), &scratch)) != cudaSuccess) {
        rc = cuda_alloc_fail(e, "described batch", sbytes + pbytes + wbytes);
        goto fail;
    }
    unsigned char *dbits = scratch;
    theus_batch_result *dres = (theus_batch_result *)(void *)(dbits + wbytes);
    theus_batch_result res;
    theus_batch_result_init(&res);
    CHECK_CUDA_GOTO(cudaMemcpyAsync(dsegs, segs, sbytes, cudaMemcpyDefault, l->stream), rc, fail);
    if (pbytes)
        CHECK_CUDA_GOTO(cudaMemcpyAsync(dpay, payload, pbytes, cudaMemcpyDefault, l->stream), rc,
                        fail);
    CHECK_CUDA_GOTO(cudaMemsetAsync(dbits, 0, wbytes, l->stream), rc, fail);
    CHECK_CUDA_GOTO(cudaMemcpyAsync(dres, &res, sizeof res, cudaMemcpyHostToDevice, l->stream), rc,
                    fail);
    CHECK_CUDA_GOTO(theus_batch_summary_launch(dsegs, nsegs, nelems, pelems, (uint32_t)es,
                                               sum->shift, (unsigned long long *)(void *)dbits,
                                               dres, c->check_blocks, l->stream), rc, fail);
    CHECK_CUDA_GOTO(cudaMemcpyAsync(&res, dres, sizeof res, cudaMemcpyDeviceToHost, l->stream), rc,
                    fail);
    CHECK_CUDA_GOTO(cudaMemcpyAsync(sum->touched, dbits, wbytes, cudaMemcpyDeviceToHost, l->stream),
                    rc, fail);
    CHECK_CUDA_GOTO(cudaStreamSynchronize(l->stream), rc, fail);
    cuda_dev_free(c, l, scratch);
    scratch = NULL;
    if (res.bad != UINT64_MAX) {
        *bad = (size_t)res.bad;
        goto fail;
    }
    sum->lo = res.nonempty ? res.lo : 0;
    sum->hi = res.nonempty ? res.hi : 0;
    sum->total = res.total;
    sum->nonempty = res.nonempty;
    sum->shared_blocks = res.shared != 0;
    *staged_segs = dsegs;
    *staged_payload = dpay;
    cuda_call_end(&k);
    return THEUS_OK;
fail:
    cuda_dev_free(c, l, scratch);
    cuda_dev_free(c, l, dpay);
    cuda_dev_free(c, l, dsegs);
    if (cudaStreamSynchronize(l->stream) != cudaSuccess)
        (void)cudaGetLastError();
    cuda_call_end(&k);
    return rc;
}

int cuda_enqueue_batch(cuda_ctx *c, const replay_op *op, cudaStream_t s)
{
    const seg_batch *b = op->batch;
    CHECK_CUDA(theus_batch_apply_launch((int)op->dtype, op->op == DELTA_ADD, op->base, op->payload,
                                        b->dev_segs, b->nsegs, b->sum.shared_blocks,
                                        c->check_blocks, s));
    return THEUS_OK;
}

int cuda_replay_batch(cuda_ctx *c, cuda_lane *l, const replay_op *op)
{
    const seg_batch *b = op->batch;
    CHECK_CUDA(theus_batch_apply_launch((int)op->dtype, op->op == DELTA_ADD, op->base, op->payload,
                                        b->dev_segs, b->nsegs, b->sum.shared_blocks,
                                        c->check_blocks, l->stream));
    CHECK_CUDA(cudaStreamSynchronize(l->stream));
    return THEUS_OK;
}

int cuda_batch_result(void *ctx, theus_dtype dt, delta_op op, const void *field,
                      const struct seg_batch *b, const void *payload, void **out)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    *out = NULL;
    const size_t es = theus_dtype_size(dt);
    const uint64_t lo = b->sum.lo, n = b->sum.hi - b->sum.lo;
    /* Ordered: the field's bytes must be those of every replay enqueued before. */
    int rc = cuda_call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    cuda_lane *l = k.lane;
    void *vals = NULL;
    cudaError_t e = cuda_dev_alloc(c, l, (size_t)n * es, &vals);
    if (e != cudaSuccess) {
        rc = cuda_alloc_fail(e, "constraint check of a described batch", (size_t)n * es);
        goto out;
    }
    CHECK_CUDA_GOTO(cudaMemcpyAsync(vals, (const unsigned char *)field + lo * es, (size_t)n * es,
                                    cudaMemcpyDefault, l->stream), rc, out);
    /* The batch's kernel writes element e of the field at base + e: with the base moved back
     * by lo elements it writes element e at vals + (e - lo), and every e lies in [lo, hi). */
    void *base = (void *)((uintptr_t)vals - (uintptr_t)(lo * es));
    CHECK_CUDA_GOTO(theus_batch_apply_launch((int)dt, op == DELTA_ADD, base, payload, b->dev_segs,
                                             b->nsegs, b->sum.shared_blocks, c->check_blocks,
                                             l->stream), rc, out);
    /* The check runs on another lane: complete here. */
    CHECK_CUDA_GOTO(cudaStreamSynchronize(l->stream), rc, out);
    *out = vals;
    vals = NULL;
out:
    if (vals) {
        cuda_dev_free(c, l, vals);
        if (cudaStreamSynchronize(l->stream) != cudaSuccess)
            (void)cudaGetLastError();
    }
    cuda_call_end(&k);
    return rc;
}
