/* theus-bench on the GPU: stage.h2d. theus_tx_write of pageable host payloads into a device
 * field (and write + commit), against cudaMemcpy from pageable and from pinned memory. */
#include "gpu_common.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


typedef struct h2d_ctx {
    theus_state *st;
    size_t n;           /* bytes of this row */
    float *pageable;
    float *pinned;
    char *D;            /* device destination of the baselines */
    theus_tx *tx;
} h2d_ctx;

static int h2d_prep(void *p)
{
    h2d_ctx *c = (h2d_ctx *)p;
    return gpu_stage_segs(c->st, &c->tx, 0, NULL, 0, NULL);
}

static void h2d_region(const h2d_ctx *c, theus_region *r)
{
    memset(r, 0, sizeof *r);
    r->ndim = 1;
    r->stop[0] = (int64_t)(c->n / 4);
}

static int h2d_stage(void *p, double *secs)
{
    h2d_ctx *c = (h2d_ctx *)p;
    theus_region r;
    h2d_region(c, &r);
    if (t_begin_sync(0))
        return -1;
    CKT(theus_tx_write(c->tx, "x", &r, c->pageable, THEUS_MEM_HOST), "theus_tx_write");
    return t_end(secs);
}

static int h2d_stage_commit(void *p, double *secs)
{
    h2d_ctx *c = (h2d_ctx *)p;
    theus_region r;
    h2d_region(c, &r);
    if (t_begin_sync(0))
        return -1;
    theus_tx *tx = c->tx;
    c->tx = NULL;
    int rc = theus_tx_write(tx, "x", &r, c->pageable, THEUS_MEM_HOST);
    if (rc != THEUS_OK) {
        theus_tx_abort(tx);
        return theus_fail(rc, "theus_tx_write");
    }
    CKT(theus_tx_commit(tx, NULL), "theus_tx_commit");
    return t_end(secs);
}

static int h2d_pageable(void *p, double *secs)
{
    h2d_ctx *c = (h2d_ctx *)p;
    if (t_begin_sync(0))
        return -1;
    CK(cudaMemcpy(c->D, c->pageable, c->n, cudaMemcpyHostToDevice));
    return t_end(secs);
}

static int h2d_pinned(void *p, double *secs)
{
    h2d_ctx *c = (h2d_ctx *)p;
    if (t_begin(0))
        return -1;
    CK(cudaMemcpyAsync(c->D, c->pinned, c->n, cudaMemcpyHostToDevice, G.s));
    return t_end(secs);
}

static int h2d_body(h2d_ctx *c, size_t maxb, float *back)
{
    const char *scn = gpu_scn;
    static const size_t sizes_full[] = {4096, 65536, 1 << 20, 16 << 20, 256 << 20};
    static const size_t sizes_quick[] = {4096, 65536, 1 << 20, 16 << 20, 64 << 20};
    const size_t *sizes = bench.quick ? sizes_quick : sizes_full;
    if (device_state(maxb / 4, NULL, &c->st))
        return -1;
    CK(cudaMalloc((void **)&c->D, maxb));
    printf("%9s | %-16s | %-16s | %-9s | %-9s | %-13s |\n", "bytes", "theus_tx_write",
           "write+commit", "pageable", "pinned", "stage/");
    printf("%9s | %7s %8s | %7s %8s | %9s | %9s | %6s %6s |\n", "", "GB/s", "us", "GB/s", "us",
           "GB/s", "GB/s", "pageab", "pinned");
    for (size_t si = 0; si < 5; si++) {
        const size_t n = sizes[si];
        if (n > maxb)
            break;
        c->n = n;
        for (size_t j = 0; j < n / 4; j++)
            c->pageable[j] = c->pinned[j] = (float)((j + n / 4096) % 1000 + 1);
        measurement ms[4];
        bench_op ops[4] = {mkop(c, h2d_prep, h2d_stage), mkop(c, h2d_prep, h2d_stage_commit),
                           mkop(c, NULL, h2d_pageable), mkop(c, NULL, h2d_pinned)};
        const int failures_before = bench.failures;
        if (measure_set(ops, 4, ms))
            return -1;
        if (c->tx) {
            theus_tx_abort(c->tx);
            c->tx = NULL;
        }
        char casename[64], nb[16];
        snprintf(casename, sizeof casename, "%s", fmt_bytes((double)n, nb, sizeof nb));
        theus_region r;
        h2d_region(c, &r);
        if (read_field(c->st, "x", &r, back))
            return -1;
        size_t bad = bench_first_diff(back, c->pageable, n / 4);
        note_check(scn, casename, bad == SIZE_MAX, "committed region vs host payload: %s",
                   bad == SIZE_MAX ? "identical" : "differ");
        CK(cudaMemcpy(back, c->D, n, cudaMemcpyDeviceToHost));
        bad = bench_first_diff(back, c->pinned, n / 4);
        note_check(scn, casename, bad == SIZE_MAX, "cudaMemcpy baselines vs host payload: %s",
                   bad == SIZE_MAX ? "identical" : "differ");
        const char *methods[4] = {"theus.stage", "theus.stage_commit",
                                  "baseline.cudamemcpy_pageable", "baseline.cudamemcpy_pinned"};
        double g[4];
        for (int k = 0; k < 4; k++)   /* all four first: the ratios need the baselines' */
            g[k] = gbps((double)n, ms[k].st.median);
        for (int k = 0; k < 4; k++) {
            bench_result *rr = result_add(scn, "gpu", casename, methods[k]);
            result_set(rr, &ms[k], (double)n, 1, "transfer");
            result_param(rr, "bytes", (double)n);
            result_param_str(rr, "source", k == 3 ? "pinned" : "pageable");
            if (k < 2) {
                result_metric(rr, "ratio_vs_pageable_cudamemcpy", g[k] / g[2]);
                result_metric(rr, "ratio_vs_pinned_cudamemcpy", g[k] / g[3]);
            }
        }
        plot_axes("stage.h2d-gpu", "stage.h2d: host payload into a device field (GPU)",
                  "bytes", "GB/s (bytes transferred)", 1, 0);
        for (int k = 0; k < 4; k++)
            plot_point("stage.h2d-gpu", methods[k], (double)n, g[k]);
        printf("%9s | %7.2f %8.1f | %7.2f %8.1f | %9.2f | %9.2f | %5.2fx %5.2fx | %s\n", casename,
               g[0], ms[0].st.median * 1e6, g[1], ms[1].st.median * 1e6, g[2], g[3], g[0] / g[2],
               g[0] / g[3], bench.failures != failures_before ? "CHECK FAILED" : "ok");
        fflush(stdout);
    }
    return 0;
}

int scn_gpu_stage_h2d(void)
{
    gpu_scn = "stage.h2d";
    if (gpu_init())
        return -1;
    size_t maxb = bench.quick ? (size_t)64 << 20 : (size_t)256 << 20;
    if (bench.max_field && bench.max_field < maxb)
        maxb = bench.max_field;
    print_header(gpu_scn, "gpu", "one region of a device field written from a pageable host "
                 "buffer through theus_tx_write (staged), and written + committed, against "
                 "cudaMemcpy from pageable and from pinned memory; GB/s = bytes / time");
    saved_cfg sc = cfg_push();
    h2d_ctx c;
    memset(&c, 0, sizeof c);
    int back_pinned = 0, rc = -1;
    float *back = NULL;
    c.pageable = (float *)bench_alloc(maxb);
    if (cudaHostAlloc((void **)&c.pinned, maxb, cudaHostAllocDefault) != cudaSuccess) {
        cuda_fail(cudaGetLastError(), "cudaHostAlloc", __FILE__, __LINE__);
        c.pinned = NULL;
        goto out;
    }
    back = (float *)host_alloc(maxb, &back_pinned);
    if (!c.pageable || !back) {
        note_error(gpu_scn, "out of host memory");
        goto out;
    }
    rc = h2d_body(&c, maxb, back);
out:
    if (c.tx)
        theus_tx_abort(c.tx);
    theus_state_destroy(c.st);
    dev_free(c.D);
    bench_free(c.pageable, maxb);
    if (c.pinned && cudaFreeHost(c.pinned) != cudaSuccess)
        (void)cudaGetLastError();
    host_free(back, maxb, back_pinned);
    cfg_pop(sc);
    return rc;
}

