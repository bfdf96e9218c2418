/* The CUDA backend's reads (theus_tx_read, the gatekeeper's reads) and overlays (read your
 * writes): copy-engine copies where the region allows, the replay kernel's gather otherwise. */
#include "cuda_backend.h"
#include "alloc.h"
#include "region.h"

/* Rows at least this wide go to the copy engine as a 2-D copy; narrower ones are gathered
 * by the replay kernel, which handles millions of tiny rows far better. */
#define COPY2D_MIN_WIDTH 512

/* Copy @sub of @src (laid out as @sframe) into @dst, a buffer laid out as @sub in host or
 * device memory; the lane's stream is synchronized before returning. */
static int copy_out(cuda_ctx *c, cuda_lane *l, theus_dtype dt, void *dst, theus_mem dst_mem,
                    const void *src, const theus_region *sframe, const theus_region *sub)
{
    region_folded x;
    const size_t es = theus_dtype_size(dt);
    if (es == 0 || !region_fold(sub, sframe, sub, &x))
        return THEUS_OK;
    const size_t width = (size_t)x.run * es;
    const unsigned char *s = (const unsigned char *)src + x.soff * (int64_t)es;
    unsigned char *d = (unsigned char *)dst + x.doff * (int64_t)es;
    if (dst_mem == THEUS_MEM_HOST && cuda_is_pinned_host(src)) {
        /* A pinned field: the CPU reads it directly once every replay has finished
         * (synchronous ones have; stream-ordered ones are waited for). */
        int rc = cuda_async_settle(c);
        if (rc != THEUS_OK)
            return rc;
        region_transfer(dt, DELTA_ASSIGN, dst, sub, src, sframe, sub);
        return THEUS_OK;
    }
    if (x.nouter == 0) {
        CHECK_CUDA(cudaMemcpyAsync(d, s, width, cudaMemcpyDefault, l->stream));
    } else if (x.nouter == 1 && width >= COPY2D_MIN_WIDTH && (size_t)x.sstr[0] * es <= c->max_pitch &&
               (size_t)x.dstr[0] * es <= c->max_pitch) {
        CHECK_CUDA(cudaMemcpy2DAsync(d, (size_t)x.dstr[0] * es, s, (size_t)x.sstr[0] * es, width,
                                     (size_t)x.ext[0], cudaMemcpyDefault, l->stream));
    } else if (dst_mem == THEUS_MEM_DEVICE) {
        replay_xfer t = {DELTA_ASSIGN, dt, dst, sub, src, sframe, sub};
        return cuda_run_transfers(c, l, &t, 1);
    } else {
        /* Gather into device scratch laid out as @sub, then one contiguous copy. */
        const size_t nbytes = region_nelems(sub) * es;
        void *scratch = NULL;
        cudaError_t e = cuda_dev_alloc(c, l, nbytes, &scratch);
        if (e != cudaSuccess)
            return cuda_alloc_fail(e, "read scratch", nbytes);
        replay_xfer t = {DELTA_ASSIGN, dt, scratch, sub, src, sframe, sub};
        int rc = cuda_run_transfers(c, l, &t, 1);
        if (rc == THEUS_OK) {
            e = cudaMemcpyAsync(dst, scratch, nbytes, cudaMemcpyDeviceToHost, l->stream);
            if (e != cudaSuccess)
                rc = cuda_fail(e, "cudaMemcpyAsync(read scratch)", __FILE__, __LINE__);
        }
        cuda_dev_free(c, l, scratch);
        if (rc != THEUS_OK) {
            if (cudaStreamSynchronize(l->stream) != cudaSuccess)
                (void)cudaGetLastError();
            return rc;
        }
    }
    CHECK_CUDA(cudaStreamSynchronize(l->stream));
    return THEUS_OK;
}

int cuda_read(void *ctx, const void *base, const theus_region *frame, theus_dtype dt,
              const theus_region *sub, void *dst, theus_mem dst_mem)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (dst_mem != THEUS_MEM_HOST && dst_mem != THEUS_MEM_DEVICE)
        return THEUS_EINVAL;
    int rc = cuda_call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    rc = copy_out(c, k.lane, dt, dst, dst_mem, base, frame, sub);
    cuda_call_end(&k);
    return rc;
}

int cuda_overlay(void *ctx, theus_dtype dt, delta_op op, void *dst,
                 const theus_region *dframe, theus_mem dst_mem, const void *payload,
                 const theus_region *pframe, const theus_region *sub)
{
    cuda_ctx *c = ctx;
    cuda_call k;
    if (dst_mem != THEUS_MEM_HOST && dst_mem != THEUS_MEM_DEVICE)
        return THEUS_EINVAL;
    const size_t n = region_nelems(sub);
    if (n == 0)
        return THEUS_OK;
    int rc = cuda_call_begin(c, &k);
    if (rc != THEUS_OK)
        return rc;
    if (dst_mem == THEUS_MEM_DEVICE) {
        replay_xfer t = {op, dt, dst, dframe, payload, pframe, sub};
        rc = cuda_run_transfers(c, k.lane, &t, 1);
    } else {
        /* Bring the payload's part over, then the CPU's own overlay: the host buffer may
         * be pageable memory no kernel can write. */
        void *tmp = theus_xmalloc(n * theus_dtype_size(dt));
        if (!tmp) {
            rc = err_set(NULL, THEUS_ENOMEM, "CUDA overlay: out of memory");
        } else {
            rc = copy_out(c, k.lane, dt, tmp, THEUS_MEM_HOST, payload, pframe, sub);
            if (rc == THEUS_OK)
                region_transfer(dt, op, dst, dframe, tmp, sub, sub);
            theus_xfree(tmp);
        }
    }
    cuda_call_end(&k);
    return rc;
}
