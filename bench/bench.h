/* theus-bench: what the harness (stats.c), the report (report.c, machine.c) and the
 * scenarios (scn_*.c) share. Every figure is a timed measurement with its baseline and its
 * ceiling measured in the same run, and every scenario checks its result. */
#ifndef THEUS_BENCH_H
#define THEUS_BENCH_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gpu.h"

#ifdef __cplusplus
extern "C" {   /* the GPU scenarios (gpu_*.cu) are C++ */
#endif

/* ---- run configuration and outcome (one per process; filled by main) ---------------- */
typedef struct bench_cfg {
    int quick;                 /* --quick: short pass for CI */
    unsigned min_samples;      /* at least this many timed samples per measurement */
    unsigned max_samples;      /* stop here even if the median still moves */
    double max_seconds;        /* stop after this much sampling once min_samples are in */
    double stable_tol;         /* median considered stable when it moves less than this */
    size_t llc_bytes;          /* last-level cache size (sysfs index3, default 32 MiB) */
    int llc_flush;             /* flush the LLC before cold-cache samples (off with --quick:
                                  the quick pass checks results, it is not a measurement) */
    size_t mem_avail;          /* MemAvailable at start, bytes */
    size_t max_field;          /* --max-field-mib override, bytes (0: automatic) */
    uint64_t seed;
    int failures;              /* wrong results and errors seen so far */
} bench_cfg;

extern bench_cfg bench;

/* ---- time, random numbers, cache flushing -------------------------------------------- */
uint64_t now_ns(void);
double now_s(void);
uint64_t rng_next(uint64_t *s);            /* splitmix64 */
double rng_unit(uint64_t *s);              /* uniform in [0, 1) */
/* Allocate the flush buffer (twice the LLC; nothing when bench.llc_flush is 0, and
 * llc_flush() then does nothing); 0 ok, -1 out of memory. */
int llc_flush_init(void);
void llc_flush_free(void);
/* Evict the caches by streaming over a buffer larger than the LLC. */
/* Bytes streamed per flush and thread (0: flushing is off). */
size_t llc_flush_bytes(void);
void llc_flush(void);
/* Whether a working set of @bytes could still sit in the LLC after a pass over it. */
int llc_would_hold(size_t bytes);
/* Where a baseline or ceiling puts its destination relative to a page-aligned source: with
 * source and destination at the same offset within a page (or a few hundred bytes apart),
 * streaming copies and adds run up to 40% slower on some machines (address aliasing).
 * A ceiling must not be pessimised by such an address accident, so it writes this many
 * bytes past the start of its (page-aligned) destination buffer. */
#define BENCH_DST_SKEW ((size_t)65536 + 320)

/* Page-aligned allocation, every page touched (so timings never see first-touch faults). */
void *bench_alloc(size_t bytes);
/* The same, advised for transparent huge pages (madvise MADV_HUGEPAGE) before the first
 * touch, as theus's own large host fields are. */
void *bench_alloc_huge(size_t bytes);
void bench_free(void *p, size_t bytes);
/* memcpy with streaming (non-temporal) stores for the destination's whole 64-byte lines, as
 * theus's CPU replay copies into large fields, then a store fence (plain memcpy off x86-64). */
void bench_copy_stream(void *dst, const void *src, size_t n);

/* ---- replay batches --------------------------------------------------------------------- */
/* @count segments of @size bytes (0: mixed, log-uniform 64 B .. 64 KiB in 64 B steps) spread
 * over a field of @field_bytes in ascending order with random gaps (same @seed, same
 * batch). Returns the payload bytes, or 0 when the batch does not fit (or memory ran out). */
size_t bench_batch_layout(bench_seg *segs, size_t count, uint32_t size, size_t field_bytes,
                          uint64_t seed);
/* Shuffle for random placement (the same set of segments) when @random, then lay out the
 * payload in batch order (poff). */
void bench_batch_order(bench_seg *segs, size_t count, int random, uint64_t seed);
/* The grid of replay.copy / replay.add, written once for the CPU (scn_replay.c) and the GPU
 * (gpu_scn_replay.cu): segment sizes 64 B, 256 B, 1 KiB, 4 KiB, 64 KiB and mixed, times
 * counts 1k, 10k, 100k, 1M (the first @nquick of them with --quick). For each cell the batch
 * is laid out in @segs for a field of @field_bytes (@field_name in messages) and @cell runs
 * for the random, then the sorted placement of the same segments; a batch that does not fit
 * the field is noted as skipped for @scn and @target. Returns 0, or the first non-zero
 * return of @cell (the grid stops there). */
typedef int (*bench_cell_fn)(void *user, size_t count, size_t payload, uint32_t size,
                             const char *sizename, const char *place, uint64_t cellseed);
int bench_replay_grid(const char *scn, const char *target, int add, size_t nquick,
                      bench_seg *segs, size_t field_bytes, const char *field_name,
                      bench_cell_fn cell, void *user);
/* The largest count of that grid (room to give bench_replay_grid's @segs). */
size_t bench_replay_grid_max(size_t nquick);

/* ---- statistics ------------------------------------------------------------------------ */
typedef struct bstats {
    double median, p10, p90, p99, p999, min, max, mean;
    size_t n;
    int stable;                /* the median settled within stable_tol */
} bstats;

/* Statistics of @n values (a sorted copy is made; @v is left as it is). */
void stats_compute(const double *v, size_t n, bstats *out);

/* One measured operation. @prep runs untimed before every run (build a transaction, say),
 * then the LLC is flushed when @flush is set, then @run is timed. A callback returns 0, or
 * non-zero to stop the measurement with an error. */
typedef struct bench_op {
    void *ctx;
    int (*prep)(void *ctx);
    int (*run)(void *ctx);
    int flush;
    /* Instead of @run: a run that times itself (CUDA events, say) and stores the seconds. */
    int (*run_timed)(void *ctx, double *secs);
} bench_op;

#define BENCH_MAX_SAMPLES 64

typedef struct measurement {
    bstats st;                        /* seconds per run */
    double samples[BENCH_MAX_SAMPLES];
    unsigned runs;                    /* every call of @run, warm-up included */
} measurement;

/* The staging times of a commit measurement's prep calls (the transaction's writes), kept
 * for the begin -> commit figure; calls past the room are not kept. */
typedef struct bench_stage_times {
    double s[BENCH_MAX_SAMPLES + 4];
    unsigned n;
} bench_stage_times;
/* Keep the time since @t0_ns (now_ns) as one prep call's staging time. */
void bench_stage_add(bench_stage_times *t, uint64_t t0_ns);
/* The staging times of the prep calls that preceded @commit's timed runs, sample by sample
 * with their statistics: *@stage (NULL: not wanted) those times, *@tx staging plus commit. */
void bench_stage_split(const bench_stage_times *t, const measurement *commit,
                       measurement *stage, measurement *tx);

/* Warm up, then sample until the median is stable (bench.min_samples at least). Returns 0,
 * or the first non-zero value a callback returned. */
int measure(const bench_op *op, measurement *m);
#define BENCH_MAX_OPS 12
/* The same for up to BENCH_MAX_OPS operations sampled in turn (round robin), so that a drift of the
 * machine during the measurement affects all of them alike. */
int measure_set(const bench_op *ops, size_t nops, measurement *ms);

/* ---- results --------------------------------------------------------------------------- */
#define BENCH_MAX_KV 16

typedef struct bench_kv {
    char key[32];
    char str[48];
    double num;
    int is_str;
} bench_kv;

typedef struct bench_result {
    char scenario[32];
    char target[8];       /* "cpu" or "gpu" */
    char casename[96];
    char method[40];
    bench_kv params[BENCH_MAX_KV];
    int nparams;
    bench_kv metrics[BENCH_MAX_KV];
    int nmetrics;
    bstats st;            /* seconds per run */
    double bytes;         /* bytes read plus written per run (0: not a bandwidth figure) */
    double items;         /* segments, commits... per run */
    const char *item_name;
    double samples[BENCH_MAX_SAMPLES];
    size_t nsamples;      /* samples kept (0 when there were too many to keep) */
} bench_result;

/* A new result row (owned by the report; lives until exit). NULL when out of memory. */
bench_result *result_add(const char *scenario, const char *target, const char *casename,
                         const char *method);
/* Fill a row's statistics from a measurement (and keep its samples). */
void result_set(bench_result *r, const measurement *m, double bytes, double items,
                const char *item_name);
void result_param(bench_result *r, const char *key, double num);
void result_param_str(bench_result *r, const char *key, const char *str);
void result_metric(bench_result *r, const char *key, double num);

/* A check of a scenario's result against its reference. A failed check makes the run exit
 * non-zero. Returns @ok. */
int note_check(const char *scenario, const char *casename, int ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* An error that stops a scenario (a theus call failed, memory ran out). */
void note_error(const char *scenario, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A scenario or variant that did not run, and why. */
void note_skip(const char *scenario, const char *target, const char *reason);

/* One point of a chart for --plot. Charts and series are created on first use. */
void plot_point(const char *chart, const char *series, double x, double y);
void plot_axes(const char *chart, const char *title, const char *xlabel, const char *ylabel,
               int logx, int logy);

/* ---- the machine ----------------------------------------------------------------------- */
typedef struct machine_info {
    char cpu[128];
    char cpu_detail[160];      /* family, model, MHz, memcpy-relevant ISA flags */
    int cores;
    int replay_threads;        /* threads theus's CPU replay uses for large batches */
    int virtualized;
    size_t llc_bytes;
    size_t mem_total, mem_avail;
    char kernel[256];
    char compiler[96];
    char cflags[256];
    char build_type[32];
    char theus_version[32];
    char git[128];
    char gpu[512];             /* one line: what GPU, or why none */
    gpu_info gpu_i;            /* the GPU in detail (gpu.h) */
    char date[32];             /* UTC, ISO 8601 */
    char load_start[64];       /* /proc/loadavg when the run began */
    char load_end[64];         /* ... and when it ended */
    double timer_overhead_ns;
    double timer_res_ns;
} machine_info;

void machine_collect(machine_info *m);
void machine_print(const machine_info *m, FILE *f);
size_t machine_llc_bytes(void);
size_t machine_mem_avail(void);
/* The first three fields of /proc/loadavg ("" when unreadable). */
void machine_load(char *buf, size_t len);

/* Write everything measured as JSON; 0 ok, -1 when the file cannot be written. */
int report_json(const char *path, const machine_info *m, const char *command);
/* Write PNG charts through gnuplot into @dir; 0 ok (or gnuplot missing: a message), -1 on
 * an I/O error. */
int report_plots(const char *dir);
/* Print where the run stands against the CPU and GPU targets of the benchmark issue. */
void report_targets(FILE *f);
void report_free(void);

/* The index of the first float that differs (bitwise) between @a and @b, or SIZE_MAX. */
size_t bench_first_diff(const float *a, const float *b, size_t n);

/* ---- formatting ------------------------------------------------------------------------ */
/* "64B", "4KiB", "1MiB"; returns @buf. */
const char *fmt_bytes(double bytes, char *buf, size_t len);
/* "1k", "10k", "1M"; returns @buf. */
const char *fmt_count(double n, char *buf, size_t len);
/* Output is kept readable in this many columns: longer prose lines are wrapped. */
#define BENCH_COLUMNS 120
/* Write @text, wrapping each line longer than BENCH_COLUMNS at spaces (continuations
 * indented under the line's label). */
void bench_wrap(FILE *f, const char *text);
/* A measured cell is done (report.c calls it): moves the progress line (theus-bench.c). */
void bench_progress_tick(void);
/* 1 when a gnuplot executable is on PATH. */
int report_gnuplot_present(void);
/* Print a section header for a scenario. */
void print_header(const char *scenario, const char *target, const char *what);

/* ---- scenarios ------------------------------------------------------------------------- */
struct theus_tx;
/* Commit the transaction a scenario staged in *@tx (consumed: *@tx is NULL afterwards, even
 * on failure); a failed commit is reported under @scenario. 0, or -1 on failure. */
int bench_commit_staged(const char *scenario, struct theus_tx **tx);
/* Each returns 0, or -1 when it stopped on an error (already reported). */
int scn_replay(int add);            /* replay.copy (add = 0) and replay.add (add = 1) */
int scn_commit_latency(void);
int scn_replay_plan(void);          /* replay.plan: the GPU replay's host work */
int scn_commit_scaling(void);
int scn_commit_zerocopy(void);    /* commit.zerocopy: borrowed and multi-region staging */
int scn_commit_contention(void);
int scn_process(void);           /* process.overhead and process.signal */
int scn_durable(void);           /* durable.commit, durable.checkpoint, durable.recovery */
int scn_durable_group(void);     /* durable.group: group commit across threads and processes */
/* The GPU variants are declared in gpu.h. */

#ifdef __cplusplus
}
#endif
#endif
