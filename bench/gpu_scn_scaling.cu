/* theus-bench on the GPU: commit.scaling. Commit cost as the written fraction of a device
 * field grows (one region, or 4 KiB segments), against a device-to-device cudaMemcpy of the
 * whole field and of the delta alone. */
#include "gpu_common.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


typedef struct sc_ctx {
    theus_state *st;
    size_t field_bytes;
    char *Pd;           /* device payload */
    char *W;            /* device destination of the whole-field and delta copies */
    size_t nseg;
    uint64_t seg_bytes, stride, off0, delta;
    bench_seg *segs;    /* the nseg segments of this row */
    theus_tx *tx;
} sc_ctx;

static int sc_prep(void *p)
{
    sc_ctx *c = (sc_ctx *)p;
    return gpu_stage_segs(c->st, &c->tx, 0, c->segs, c->nseg, c->Pd);
}

static int sc_commit(void *p, double *secs)
{
    return gpu_commit_timed(&((sc_ctx *)p)->tx, secs);
}

static int sc_whole(void *p, double *secs)
{
    sc_ctx *c = (sc_ctx *)p;
    if (t_begin(1))
        return -1;
    CK(cudaMemcpyAsync(c->W, c->Pd, c->field_bytes, cudaMemcpyDeviceToDevice, G.s));
    return t_end(secs);
}

static int sc_delta(void *p, double *secs)
{
    sc_ctx *c = (sc_ctx *)p;
    if (t_begin(1))
        return -1;
    CK(cudaMemcpyAsync(c->W, c->Pd, c->delta, cudaMemcpyDeviceToDevice, G.s));
    return t_end(secs);
}

static int scaling_body(sc_ctx *c, float *mirror, float *Ph, float *back)
{
    const char *scn = gpu_scn;
    const size_t fbytes = c->field_bytes, nelems = fbytes / 4;
    static const double fracs[] = {0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0};
    const size_t max_nseg = bench.quick ? 4096 : 32768;   /* as c->segs is allocated */
    for (size_t i = 0; i < nelems; i++)
        mirror[i] = (float)(i % 1000);
    if (device_state(nelems, mirror, &c->st))
        return -1;
    CK(cudaMalloc((void **)&c->Pd, fbytes));
    CK(cudaMalloc((void **)&c->W, fbytes));
    CK(cudaMemsetAsync(c->Pd, 0, fbytes, G.s));
    CK(cudaStreamSynchronize(G.s));

    measurement m_whole;
    bench_op op_whole = mkop(c, NULL, sc_whole);
    if (measure(&op_whole, &m_whole))
        return -1;
    const double whole = m_whole.st.median;
    char fb[16];
    fmt_bytes((double)fbytes, fb, sizeof fb);
    bench_result *r = result_add(scn, "gpu", "whole field", "baseline.whole_field_cudamemcpy_d2d");
    result_set(r, &m_whole, 2.0 * (double)fbytes, 1, "copy");
    result_param(r, "field_bytes", (double)fbytes);
    printf("baseline: cudaMemcpyAsync of the whole %s field, device to device: %.3f ms (p10 %.3f, "
           "p90 %.3f), %.0f GB/s\n", fb, whole * 1e3, m_whole.st.p10 * 1e3, m_whole.st.p90 * 1e3,
           2.0 * (double)fbytes / whole * 1e-9);
    printf("%-13s %8s %9s %7s | %-26s | %-8s | %-16s |\n", "layout", "fraction", "delta", "deltas",
           "theus commit ms", "% whole", "delta cudaMemcpy");
    printf("%-13s %8s %9s %7s | %8s %8s %8s | %8s | %8s %7s |\n", "", "", "", "", "p10", "p50",
           "p90", "", "ms", "commit/");
    plot_axes("commit.scaling-gpu", "commit.scaling: commit cost vs written fraction of a device "
              "field (GPU)", "written fraction of the field (%)", "milliseconds", 1, 1);

    uint64_t s = bench.seed ^ 0xca1e;
    for (int layout = 0; layout < 2; layout++) {
        const char *lname = layout == 0 ? "1 region" : "4KiB segments";
        for (size_t fi = 0; fi < sizeof fracs / sizeof fracs[0]; fi++) {
            uint64_t delta = (uint64_t)((double)fbytes * fracs[fi]) / 4096 * 4096;
            if (delta < 4096)
                delta = 4096;
            char casename[96], db[16];
            snprintf(casename, sizeof casename, "%s, %.1f%% (%s)", lname, fracs[fi] * 100,
                     fmt_bytes((double)delta, db, sizeof db));
            if (layout == 0) {
                c->nseg = 1;
                c->seg_bytes = delta;
                c->stride = 0;
                c->off0 = (rng_next(&s) % ((fbytes - delta) / 64 + 1)) * 64;
            } else {
                c->nseg = delta / 4096;
                c->seg_bytes = 4096;
                c->stride = (fbytes / c->nseg) / 64 * 64;
                c->off0 = 0;
                if (c->nseg > max_nseg) {
                    char why[256];
                    snprintf(why, sizeof why, "%s: %zu deltas, more than the %zu staged through "
                             "the API in this pass", casename, c->nseg, max_nseg);
                    note_skip(scn, "gpu", why);
                    continue;
                }
            }
            c->delta = delta;
            for (size_t i = 0; i < c->nseg; i++) {
                c->segs[i].off = c->off0 + i * c->stride;
                c->segs[i].poff = i * c->seg_bytes;
                c->segs[i].size = (uint32_t)c->seg_bytes;
            }
            const size_t pn = delta / 4;
            for (size_t j = 0; j < pn; j++)
                Ph[j] = (float)((j + fi * 13 + (size_t)layout * 101) % 1000 + 1);
            CK(cudaMemcpyAsync(c->Pd, Ph, delta, cudaMemcpyHostToDevice, G.s));
            CK(cudaStreamSynchronize(G.s));
            const int failures_before = bench.failures;
            measurement ms[2];
            bench_op ops[2] = {mkop(c, sc_prep, sc_commit), mkop(c, NULL, sc_delta)};
            if (measure_set(ops, 2, ms))
                return -1;
            for (size_t i = 0; i < c->nseg; i++)
                memcpy((char *)mirror + c->segs[i].off, (const char *)Ph + c->segs[i].poff,
                       c->segs[i].size);
            if (read_field(c->st, "x", NULL, back))
                return -1;
            size_t bad = bench_first_diff(back, mirror, nelems);
            note_check(scn, casename, bad == SIZE_MAX, "device field after %u commits vs host "
                       "mirror: %s", ms[0].runs, bad == SIZE_MAX ? "identical" : "differ");
            const double cm = ms[0].st.median;
            r = result_add(scn, "gpu", casename, "theus.commit");
            result_set(r, &ms[0], 2.0 * (double)delta, (double)c->nseg, "delta");
            result_param_str(r, "layout", lname);
            result_param(r, "fraction", fracs[fi]);
            result_param(r, "delta_bytes", (double)delta);
            result_param(r, "field_bytes", (double)fbytes);
            result_metric(r, "pct_of_whole_copy", 100 * cm / whole);
            result_metric(r, "ratio_vs_delta_memcpy", cm / ms[1].st.median);
            r = result_add(scn, "gpu", casename, "ceiling.delta_cudamemcpy_d2d");
            result_set(r, &ms[1], 2.0 * (double)delta, 1, "copy");
            result_param_str(r, "layout", lname);
            result_param(r, "fraction", fracs[fi]);
            result_param(r, "delta_bytes", (double)delta);
            char series[64];
            snprintf(series, sizeof series, "theus commit, %s", lname);
            plot_point("commit.scaling-gpu", series, fracs[fi] * 100, cm * 1e3);
            if (layout == 0) {
                plot_point("commit.scaling-gpu", "delta cudaMemcpy", fracs[fi] * 100,
                           ms[1].st.median * 1e3);
                plot_point("commit.scaling-gpu", "whole-field cudaMemcpy", fracs[fi] * 100,
                           whole * 1e3);
            }
            printf("%-13s %7.1f%% %9s %7zu | %8.4f %8.4f %8.4f | %7.2f%% | %8.4f %6.2fx | %s\n",
                   lname, fracs[fi] * 100, db, c->nseg, ms[0].st.p10 * 1e3, cm * 1e3,
                   ms[0].st.p90 * 1e3, 100 * cm / whole, ms[1].st.median * 1e3,
                   cm / ms[1].st.median, bench.failures != failures_before ? "CHECK FAILED" : "ok");
            fflush(stdout);
        }
    }
    return 0;
}

int scn_gpu_commit_scaling(void)
{
    gpu_scn = "commit.scaling";
    if (gpu_init())
        return -1;
    const size_t want = bench.quick ? (size_t)256 << 20 : (size_t)1 << 30;
    const size_t fbytes = fit_gpu_field(want, 4, 3);
    if (fbytes == 0) {
        note_error(gpu_scn, "not enough device memory for the smallest field");
        return -1;
    }
    char fb[16], what[320];
    snprintf(what, sizeof what,
             "commit cost as the written fraction of a %s f32 device field grows (device "
             "payloads staged before each commit), against cudaMemcpy of the whole field device "
             "to device; L2 flushed; CUDA events%s", fmt_bytes((double)fbytes, fb, sizeof fb),
             fbytes < want ? " (field reduced to fit memory)" : "");
    print_header(gpu_scn, "gpu", what);
    saved_cfg sc = cfg_push();
    sc_ctx c;
    memset(&c, 0, sizeof c);
    c.field_bytes = fbytes;
    const size_t max_nseg = bench.quick ? 4096 : 32768;
    c.segs = (bench_seg *)calloc(max_nseg, sizeof *c.segs);
    float *mirror = (float *)bench_alloc(fbytes), *Ph = (float *)bench_alloc(fbytes);
    int back_pinned = 0;
    float *back = (float *)host_alloc(fbytes, &back_pinned);
    int rc = -1;
    if (!mirror || !Ph || !back || !c.segs)
        note_error(gpu_scn, "out of host memory for a %s field", fb);
    else
        rc = scaling_body(&c, mirror, Ph, back);
    if (c.tx)
        theus_tx_abort(c.tx);
    theus_state_destroy(c.st);
    dev_free(c.Pd);
    dev_free(c.W);
    free(c.segs);
    bench_free(mirror, fbytes);
    bench_free(Ph, fbytes);
    host_free(back, fbytes, back_pinned);
    cfg_pop(sc);
    return rc;
}
