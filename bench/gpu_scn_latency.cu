/* theus-bench on the GPU: commit.latency. One-element commits into a device field, begin ->
 * commit, from host and from device payloads, synchronous and stream-ordered
 * (theus_tx_commit_on_stream: host time until it returns, the replay still queued), against
 * a plain cudaMemcpy of the element. Targets (#12): stream-ordered p50 <= 5 us, synchronous
 * p50 <= 10 us. The stream-ordered rows are compiled, not yet run on a GPU. */
#include "gpu_common.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lat_ctx {
    theus_state *st;
    size_t nelems;
    float *mirror;      /* host mirror of the field */
    float *plain;       /* device array the baseline writes */
    float *plain_mirror;
    float *dvals;       /* device: the device-payload values */
    float *back;
} lat_ctx;

static int latency_field(lat_ctx *c, size_t ntx, size_t warm, const char *label)
{
    const char *scn = gpu_scn;
    const size_t total = warm + ntx;
    double *tot = (double *)malloc(ntx * sizeof(double));
    double *com = (double *)malloc(ntx * sizeof(double));
    double *dev = (double *)malloc(ntx * sizeof(double));
    double *base = (double *)malloc(ntx * sizeof(double));
    double *ons = (double *)malloc(ntx * sizeof(double));
    float *hv = (float *)malloc(total * sizeof(float));
    int rc = -1;
    if (!tot || !com || !dev || !base || !ons || !hv) {
        note_error(scn, "out of memory for %zu samples", ntx);
        goto out;
    }
    for (size_t i = 0; i < total; i++)
        hv[i] = (float)(i % 65536 + 100001);
    if (cudaMemcpy(c->dvals, hv, total * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess) {
        cuda_fail(cudaGetLastError(), "cudaMemcpy(device payload values)", __FILE__, __LINE__);
        goto out;
    }
    {
        uint64_t s = bench.seed ^ c->nelems;
        for (size_t i = 0; i < total; i++) {
            theus_region r;
            memset(&r, 0, sizeof r);
            r.ndim = 1;
            /* 1. a host payload */
            size_t idx = (size_t)(rng_next(&s) % c->nelems);
            float val = (float)(i % 65536 + 1);
            r.start[0] = (int64_t)idx;
            r.stop[0] = (int64_t)idx + 1;
            theus_tx *tx = NULL;
            uint64_t t0 = now_ns();
            int trc = theus_tx_begin(c->st, NULL, &tx);
            if (trc == THEUS_OK)
                trc = theus_tx_write(tx, "x", &r, &val, THEUS_MEM_HOST);
            uint64_t t1 = now_ns();
            if (trc == THEUS_OK)
                trc = theus_tx_commit(tx, NULL);
            else if (tx)
                theus_tx_abort(tx);
            uint64_t t2 = now_ns();
            if (trc != THEUS_OK) {
                theus_fail(trc, "one-element commit (host payload)");
                goto out;
            }
            c->mirror[idx] = val;
            /* 2. a device payload */
            size_t idx2 = (size_t)(rng_next(&s) % c->nelems);
            r.start[0] = (int64_t)idx2;
            r.stop[0] = (int64_t)idx2 + 1;
            tx = NULL;
            uint64_t t3 = now_ns();
            trc = theus_tx_begin(c->st, NULL, &tx);
            if (trc == THEUS_OK)
                trc = theus_tx_write(tx, "x", &r, c->dvals + i, THEUS_MEM_DEVICE);
            if (trc == THEUS_OK)
                trc = theus_tx_commit(tx, NULL);
            else if (tx)
                theus_tx_abort(tx);
            uint64_t t4 = now_ns();
            if (trc != THEUS_OK) {
                theus_fail(trc, "one-element commit (device payload)");
                goto out;
            }
            c->mirror[idx2] = hv[i];
            /* 2b. a host payload, committed stream-ordered (legacy default stream) */
            size_t idx3 = (size_t)(rng_next(&s) % c->nelems);
            float val3 = (float)(i % 65536 + 200001);
            r.start[0] = (int64_t)idx3;
            r.stop[0] = (int64_t)idx3 + 1;
            tx = NULL;
            uint64_t t7 = now_ns();
            trc = theus_tx_begin(c->st, NULL, &tx);
            if (trc == THEUS_OK)
                trc = theus_tx_write(tx, "x", &r, &val3, THEUS_MEM_HOST);
            if (trc == THEUS_OK)
                trc = theus_tx_commit_on_stream(tx, NULL, NULL);
            else if (tx)
                theus_tx_abort(tx);
            uint64_t t8 = now_ns();
            if (trc != THEUS_OK) {
                theus_fail(trc, "one-element commit (stream-ordered)");
                goto out;
            }
            c->mirror[idx3] = val3;
            /* 3. the baseline: a 4-byte cudaMemcpy from pageable memory */
            uint64_t t5 = now_ns();
            cudaError_t e = cudaMemcpy(c->plain + idx, &val, sizeof val, cudaMemcpyHostToDevice);
            uint64_t t6 = now_ns();
            if (e != cudaSuccess) {
                cuda_fail(e, "cudaMemcpy(4 bytes)", __FILE__, __LINE__);
                goto out;
            }
            c->plain_mirror[idx] = val;
            if (i >= warm) {
                tot[i - warm] = (double)(t2 - t0) * 1e-9;
                com[i - warm] = (double)(t2 - t1) * 1e-9;
                dev[i - warm] = (double)(t4 - t3) * 1e-9;
                base[i - warm] = (double)(t6 - t5) * 1e-9;
                ons[i - warm] = (double)(t8 - t7) * 1e-9;
            }
        }
    }
    {
        char casename[96], fb[16];
        snprintf(casename, sizeof casename, "f32[%zu] device (%s)", c->nelems,
                 fmt_bytes((double)c->nelems * 4, fb, sizeof fb));
        /* The reads wait for the stream-ordered replays; a kept replay error shows here. */
        if (theus_state_wait(c->st, NULL) != THEUS_OK) {
            theus_fail(THEUS_EDEVICE, "theus_state_wait after stream-ordered commits");
            goto out;
        }
        if (read_field(c->st, "x", NULL, c->back))
            goto out;
        size_t bad = bench_first_diff(c->back, c->mirror, c->nelems);
        note_check(scn, casename, bad == SIZE_MAX, "%zu one-element commits vs host mirror: %s",
                   3 * total, bad == SIZE_MAX ? "identical field" : "fields differ");
        if (cudaMemcpy(c->back, c->plain, c->nelems * 4, cudaMemcpyDeviceToHost) != cudaSuccess) {
            cuda_fail(cudaGetLastError(), "cudaMemcpy(read back)", __FILE__, __LINE__);
            goto out;
        }
        bad = bench_first_diff(c->back, c->plain_mirror, c->nelems);
        note_check(scn, casename, bad == SIZE_MAX, "cudaMemcpy baseline vs host mirror: %s",
                   bad == SIZE_MAX ? "identical" : "differ");

        enum { NM = 5, BASE = 3 };
        const char *methods[NM] = {"theus.tx", "theus.commit_call", "theus.tx_device_payload",
                                   "baseline.cudamemcpy_h2d_4B", "theus.tx_on_stream"};
        double *v[NM] = {tot, com, dev, base, ons};
        bstats st[NM];
        measurement m;
        memset(&m, 0, sizeof m);
        for (int k = 0; k < NM; k++) {
            stats_compute(v[k], ntx, &st[k]);
            bstats half;
            stats_compute(v[k], ntx / 2, &half);
            st[k].stable = fabs(half.median - st[k].median) <= 0.05 * st[k].median;
        }
        for (int k = 0; k < NM; k++) {
            bench_result *r = result_add(scn, "gpu", casename, methods[k]);
            m.st = st[k];
            result_set(r, &m, 0, 1, "commit");
            result_param_str(r, "field", label);
            result_param(r, "field_bytes", (double)c->nelems * 4);
            result_param(r, "delta_bytes", 4);
            result_param(r, "transactions", (double)ntx);
            result_param_str(r, "timer", "clock_gettime (host-perceived latency)");
            if (k != BASE)
                result_metric(r, "ratio_p50_vs_baseline", st[k].median / st[BASE].median);
            if (k == 4)
                result_param_str(r, "commit", "theus_tx_commit_on_stream (replay enqueued)");
        }
        printf("%-28s | %6.1f %6.1f %6.1f %7.1f | %6.1f %7.1f | %6.1f %7.1f | %6.1f %7.1f | "
               "%6.1f %7.1f | sync %s, on stream %s\n",
               casename, st[0].p10 * 1e6, st[0].median * 1e6, st[0].p90 * 1e6, st[0].p99 * 1e6,
               st[1].median * 1e6, st[1].p99 * 1e6, st[2].median * 1e6, st[2].p99 * 1e6,
               st[3].median * 1e6, st[3].p99 * 1e6, st[4].median * 1e6, st[4].p99 * 1e6,
               st[0].median <= 10e-6 ? "<= 10 us: met" : "> 10 us: NOT met",
               st[4].median <= 5e-6 ? "<= 5 us: met" : "> 5 us: NOT met");
        fflush(stdout);
    }
    rc = 0;
out:
    free(tot);
    free(com);
    free(dev);
    free(base);
    free(ons);
    free(hv);
    return rc;
}

static int latency_one(size_t nelems, size_t ntx, size_t warm, const char *label)
{
    lat_ctx c;
    memset(&c, 0, sizeof c);
    c.nelems = nelems;
    const size_t bytes = nelems * 4;
    int rc = -1;
    c.mirror = (float *)bench_alloc(bytes);
    c.plain_mirror = (float *)bench_alloc(bytes);
    c.back = (float *)bench_alloc(bytes);
    if (!c.mirror || !c.plain_mirror || !c.back) {
        note_error(gpu_scn, "out of host memory");
        goto out;
    }
    if (cudaMalloc((void **)&c.plain, bytes) != cudaSuccess ||
        cudaMalloc((void **)&c.dvals, (warm + ntx) * sizeof(float)) != cudaSuccess ||
        cudaMemset(c.plain, 0, bytes) != cudaSuccess) {
        cuda_fail(cudaGetLastError(), "cudaMalloc/cudaMemset", __FILE__, __LINE__);
        goto out;
    }
    if (device_state(nelems, c.mirror, &c.st))   /* zeros, as the mirror */
        goto out;
    rc = latency_field(&c, ntx, warm, label);
out:
    theus_state_destroy(c.st);
    dev_free(c.plain);
    dev_free(c.dvals);
    bench_free(c.mirror, bytes);
    bench_free(c.plain_mirror, bytes);
    bench_free(c.back, bytes);
    return rc;
}

int scn_gpu_commit_latency(void)
{
    gpu_scn = "commit.latency";
    if (gpu_init())
        return -1;
    const size_t ntx = bench.quick ? 3000 : 20000, warm = bench.quick ? 300 : 2000;
    const size_t large = fit_gpu_field(bench.quick ? (size_t)64 << 20 : (size_t)1 << 30, 2, 3);
    char what[256];
    snprintf(what, sizeof what,
             "one f32 element per transaction at a random index of a device field, begin -> "
             "commit, %zu transactions after %zu warm-up; host clock; times in us", ntx, warm);
    print_header(gpu_scn, "gpu", what);
    printf("%-28s | %-29s | %-14s | %-14s | %-14s | %-14s |\n", "field",
           "theus begin->commit (host val)", "commit call", "device payload", "cudaMemcpy 4B",
           "on stream");
    printf("%-28s | %6s %6s %6s %7s | %6s %7s | %6s %7s | %6s %7s | %6s %7s |\n", "", "p10", "p50",
           "p90", "p99", "p50", "p99", "p50", "p99", "p50", "p99", "p50", "p99");
    if (latency_one(16384, ntx, warm, "small"))
        return -1;
    if (large == 0) {
        note_skip(gpu_scn, "gpu", "large field: not enough device memory");
        return 0;
    }
    return latency_one(large / 4, ntx, warm, "large");
}
