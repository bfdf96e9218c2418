/* replay.plan: what the GPU replay costs on the host, measured on any machine. Before the
 * CUDA backend launches its one kernel for a commit batch it turns the batch's ops into
 * kernel descriptors (cuda/replay_plan.c, called by cuda/replay.c's cuda_run_transfers)
 * and copies them into its pinned upload area; this is that work, without the GPU. A user
 * of cub::DeviceMemcpy::Batched pays the same kind of work to build cub's three argument
 * arrays (sources, destinations, sizes) from a list of regions: the baseline. The figure
 * bounds the GPU replay's segment rate from above on this host: the GPU cannot take
 * segments faster than the host describes them. */
#include "bench.h"
#include "backend.h"
#include "replay_plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct plan_ctx {
    size_t count;
    size_t seg;                   /* bytes */
    replay_op *ops;
    replay_xfer *t;               /* run_transfers' input, rebuilt per run as it is */
    replay_plan plan;
    unsigned char *upload;        /* stands in for the pinned upload area */
    size_t upload_cap;
    void **cub_src, **cub_dst;
    uint32_t *cub_size;
    int rc;
} plan_ctx;

/* What cuda_replay + run_transfers do on the host: ops to transfers, the plan, the copy
 * into the upload area. */
static int run_theus(void *p)
{
    plan_ctx *c = p;
    for (size_t i = 0; i < c->count; i++) {
        const replay_op *o = &c->ops[i];
        c->t[i] = (replay_xfer){o->op, o->dtype, o->base, o->frame, o->payload, &o->sub, &o->sub};
    }
    int rc = replay_plan_build(&c->plan, c->t, c->count);
    if (rc != THEUS_OK)
        return c->rc = rc;
    /* The upload as cuda/replay.c writes it: compact segments and groups, or wide
     * descriptors and dims. */
    const size_t bytes = replay_plan_upload_bytes(&c->plan);
    if (bytes > c->upload_cap)
        return c->rc = THEUS_ENOMEM;
    size_t off2, off3;
    replay_plan_upload(&c->plan, c->upload, &off2, &off3);
    return 0;
}

/* cub's arguments for the same segments, from the same ops. */
static int run_cub_args(void *p)
{
    plan_ctx *c = p;
    for (size_t i = 0; i < c->count; i++) {
        const replay_op *o = &c->ops[i];
        const size_t es = 4;
        const int64_t n = o->sub.stop[0] - o->sub.start[0];
        c->cub_src[i] = (void *)(uintptr_t)o->payload;
        c->cub_dst[i] = (char *)o->base + (size_t)o->sub.start[0] * es;
        c->cub_size[i] = (uint32_t)((size_t)n * es);
    }
    return 0;
}

/* The plan describes every segment once, in batch order: 256 B segments as one 16-byte
 * compact segment each, 64 KiB ones (four chunks) as one wide descriptor each. */
static int plan_is_right(const plan_ctx *c)
{
    const replay_plan *p = &c->plan;
    if (p->nwaves != 1 || p->ndescs != c->count ||
        p->compact != (c->seg <= THEUS_REPLAY_COMPACT_MAX_CHUNKS * THEUS_REPLAY_CHUNK_BYTES))
        return 0;
    for (size_t i = 0; i < c->count; i++) {
        const replay_op *o = &c->ops[i];
        const uint64_t want_dst = (uint64_t)(uintptr_t)((char *)o->base + (size_t)o->sub.start[0] * 4);
        const uint64_t want_src = (uint64_t)(uintptr_t)o->payload;
        const uint64_t want_n = (uint64_t)(o->sub.stop[0] - o->sub.start[0]);
        uint64_t dst, src, n;
        if (p->compact) {
            const theus_replay_seg *sg = &p->segs[i];
            theus_replay_seg_addrs(sg, &p->groups[theus_replay_seg_group(sg)], &dst, &src);
            n = theus_replay_seg_bytes(sg) / 4;
        } else {
            const theus_replay_desc *d = &p->descs[i];
            dst = d->dst;
            src = d->src;
            n = d->run;
            if (c->seg <= THEUS_REPLAY_CHUNK_BYTES && d->first_chunk != i)
                return 0;
        }
        if (dst != want_dst || src != want_src || n != want_n)
            return 0;
        if (c->cub_dst[i] != (void *)(uintptr_t)dst || c->cub_src[i] != (void *)(uintptr_t)src)
            return 0;
    }
    return 1;
}

int scn_replay_plan(void)
{
    const char *scenario = "replay.plan";
    static const size_t counts_full[] = {1000, 10000, 100000, 1000000};
    static const size_t counts_quick[] = {1000, 10000, 100000};
    const size_t *counts = bench.quick ? counts_quick : counts_full;
    const size_t ncounts = bench.quick ? 3 : 4;
    static const size_t segs[] = {256, 65536};
    const size_t maxn = counts[ncounts - 1];
    /* Addresses are only described, never touched: a notional 1 GiB f32 field and a
     * payload area, both at fixed addresses no one dereferences. */
    const uint64_t field_elems = (uint64_t)1 << 28;
    theus_region frame = {.ndim = 1};
    frame.stop[0] = (int64_t)field_elems;

    print_header(scenario, "cpu",
                 "host work of the GPU replay (ops -> kernel descriptors -> upload area) "
                 "for a batch of 1-D f32 segments of a 1GiB field, against building "
                 "cub::DeviceMemcpy::Batched's argument arrays; no GPU involved");
    printf("%-6s %8s %-6s | %9s %8s %5s | %9s %8s | %7s | %s\n", "seg", "count", "place",
           "theus ns", "Mseg/s", "B up", "cub-args", "Mseg/s", "theus/", "GPU bound at this rate");
    printf("%-6s %8s %-6s | %9s %8s %5s | %9s %8s | %7s | %s\n", "", "", "", "per seg", "",
           "/seg", "ns/seg", "", "cub", "(copy GB/s, 2 x payload)");

    plan_ctx c;
    memset(&c, 0, sizeof c);
    c.ops = calloc(maxn, sizeof *c.ops);
    c.t = calloc(maxn, sizeof *c.t);
    c.upload_cap = maxn * (sizeof(theus_replay_desc) + sizeof(theus_replay_dim) +
                           THEUS_REPLAY_COMPACT_MAX_CHUNKS * sizeof(theus_replay_seg)) + 4096;
    c.upload = bench_alloc(c.upload_cap);
    c.cub_src = calloc(maxn, sizeof *c.cub_src);
    c.cub_dst = calloc(maxn, sizeof *c.cub_dst);
    c.cub_size = calloc(maxn, sizeof *c.cub_size);
    uint64_t *slot = calloc(maxn, sizeof *slot);
    int rc = 0;
    if (!c.ops || !c.t || !c.upload || !c.cub_src || !c.cub_dst || !c.cub_size || !slot) {
        note_error(scenario, "out of memory for %zu segments", maxn);
        rc = -1;
        goto out;
    }
    for (size_t si = 0; si < sizeof segs / sizeof segs[0]; si++) {
        for (size_t ci = 0; ci < ncounts; ci++) {
            const size_t n = counts[ci], seg = segs[si], ne = seg / 4;
            if ((uint64_t)n * ne > field_elems) {
                char why[96], cn[16];
                snprintf(why, sizeof why, "seg=%zuB count=%s: more payload than the 1GiB field",
                         seg, fmt_count((double)n, cn, sizeof cn));
                note_skip(scenario, "cpu", why);
                continue;
            }
            c.count = n;
            c.seg = seg;
            for (int pl = 0; pl < 2; pl++) {
                /* Distinct slots spread over the field: slot i of n equal strides, with a
                 * random offset inside its stride; "random" shuffles the batch order. */
                uint64_t rs = bench.seed * 0x9e3779b97f4a7c15ull + n * 31 + seg + (uint64_t)pl;
                const uint64_t stride = field_elems / n;
                for (size_t i = 0; i < n; i++)
                    slot[i] = i * stride + rng_next(&rs) % (stride - ne + 1);
                if (pl == 0)
                    for (size_t i = n; i > 1; i--) {
                        const size_t j = (size_t)(rng_next(&rs) % i);
                        const uint64_t x = slot[i - 1];
                        slot[i - 1] = slot[j];
                        slot[j] = x;
                    }
                for (size_t i = 0; i < n; i++) {
                    replay_op *o = &c.ops[i];
                    memset(o, 0, sizeof *o);
                    o->op = DELTA_ASSIGN;
                    o->dtype = THEUS_DTYPE_F32;
                    o->base = (void *)(uintptr_t)0x100000000ull;
                    o->frame = &frame;
                    o->sub.ndim = 1;
                    o->sub.start[0] = (int64_t)slot[i];
                    o->sub.stop[0] = (int64_t)(slot[i] + ne);
                    o->payload = (const void *)(uintptr_t)(0x8000000000ull + i * seg);
                    o->batch = NULL;
                }
                bench_op ops[2] = {{&c, NULL, run_theus, 0, NULL},
                                   {&c, NULL, run_cub_args, 0, NULL}};
                measurement ms[2];
                c.rc = 0;
                if (measure_set(ops, 2, ms) != 0 || c.rc != 0) {
                    note_error(scenario, "replay_plan_build: %s", theus_last_error_message());
                    rc = -1;
                    goto out;
                }
                char casename[64], cn[16];
                const char *place = pl == 0 ? "random" : "sorted";
                snprintf(casename, sizeof casename, "seg=%zuB count=%s %s", seg,
                         fmt_count((double)n, cn, sizeof cn), place);
                note_check(scenario, casename, plan_is_right(&c),
                           "descriptors describe every segment once, in batch order: %s",
                           plan_is_right(&c) ? "yes" : "NO");
                const double ns_t = ms[0].st.median / (double)n * 1e9;
                const double ns_c = ms[1].st.median / (double)n * 1e9;
                const char *methods[2] = {"theus.plan", "baseline.cub_args"};
                for (int k = 0; k < 2; k++) {
                    bench_result *r = result_add(scenario, "cpu", casename, methods[k]);
                    if (!r)
                        continue;
                    result_set(r, &ms[k], 0, (double)n, "segment");
                    result_param(r, "segment_bytes", (double)seg);
                    result_param(r, "count", (double)n);
                    result_param_str(r, "placement", place);
                    result_metric(r, "ns_per_segment", k == 0 ? ns_t : ns_c);
                    if (k == 0) {
                        result_metric(r, "upload_bytes_per_segment",
                                      (double)replay_plan_upload_bytes(&c.plan) / (double)n);
                        result_param_str(r, "form", c.plan.compact ? "compact" : "wide");
                        result_metric(r, "ratio_vs_cub_args", ms[1].st.median / ms[0].st.median);
                        result_metric(r, "gpu_copy_gbps_bound", 2.0 * (double)seg / ns_t);
                    }
                }
                printf("%-6s %8s %-6s | %9.1f %8.2f %5.0f | %9.1f %8.2f | %6.2fx | %.1f GB/s%s\n",
                       seg == 256 ? "256B" : "64KiB", cn, place, ns_t, 1e3 / ns_t,
                       (double)replay_plan_upload_bytes(&c.plan) / (double)n, ns_c,
                       1e3 / ns_c, ns_c / ns_t, 2.0 * (double)seg / ns_t,
                       ms[0].st.stable && ms[1].st.stable ? "" : " ~");
                fflush(stdout);
            }
        }
        replay_plan_release(&c.plan);
    }
    bench_wrap(stdout, "theus: cuda_replay's ops -> transfers, replay_plan_build, the copy into "
               "the upload area (run_transfers without its CUDA calls); B up/seg: bytes uploaded "
               "per segment (16-byte compact segments a chunk, plus waves and groups); cub-args: "
               "cub::DeviceMemcpy::Batched's source, destination and size arrays built from "
               "the same ops; theus/cub: throughput ratio; GPU bound: 2 x segment bytes x the "
               "planning rate\n");
out:
    replay_plan_release(&c.plan);
    free(slot);
    free(c.cub_size);
    free(c.cub_dst);
    free(c.cub_src);
    if (c.upload)
        bench_free(c.upload, c.upload_cap);
    free(c.t);
    free(c.ops);
    return rc;
}
