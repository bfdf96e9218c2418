/* theus-bench: is theus fast enough for you? Every figure comes with its baseline and the
 * hardware's ceiling measured in the same run, and every scenario checks its result.
 * This file: the command line, the scenario table, the run and the summary. */
#include "bench.h"
#include "gpu.h"
#include "theus/theus.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bench_cfg bench;

static int run_replay_copy(void)
{
    return scn_replay(0);
}

static int run_replay_add(void)
{
    return scn_replay(1);
}

static int run_gpu_replay_copy(void)
{
    return scn_gpu_replay(0);
}

static int run_gpu_replay_add(void)
{
    return scn_gpu_replay(1);
}

typedef struct scenario {
    const char *name;
    double quick_s;        /* rough seconds of a --quick CPU run on a 2-core VM: the time
                              estimate's starting point, corrected as the run goes */
    const char *desc;
    int (*cpu)(void);      /* NULL: no CPU variant */
    const char *cpu_na;    /* why, when cpu is NULL */
    int (*gpu)(void);      /* the GPU variant (gpu.h; reports "not built" without CUDA) */
    const char *gpu_na;    /* why, when gpu is NULL */
} scenario;

static const scenario scenarios[] = {
    {"replay.copy", 20, "apply a batch of ASSIGN region deltas to a field much larger than the "
                    "caches; sweep segment size x count, random and sorted placement; against "
                    "a per-segment memcpy loop and the fastest packed copy (ceiling: one "
                    "memcpy, 64 KiB calls, streaming stores, on one thread or on as many as "
                    "theus's replay uses); on the GPU "
                    "against cudaMemcpyAsync per segment, cudaMemcpyBatchAsync, "
                    "cub::DeviceMemcpy::Batched and a streaming-copy kernel (ceiling)",
     run_replay_copy, NULL, run_gpu_replay_copy, NULL},
    {"replay.add", 10, "the same sweep with ADD deltas (f32); against a per-segment add loop and "
                   "one packed add (ceiling; also split over theus's replay threads)",
     run_replay_add, NULL, run_gpu_replay_add, NULL},
    {"replay.plan", 2, "the GPU replay's host work (a commit batch -> kernel descriptors -> "
                    "upload area) per segment, measured without a GPU; against building "
                    "cub::DeviceMemcpy::Batched's argument arrays; bounds the GPU replay's "
                    "segment rate on this host",
     scn_replay_plan, NULL, NULL,
     "no GPU variant: the figure is host work (the CPU variant, which needs no GPU)"},
    {"commit.latency", 2, "one small delta per transaction, begin -> commit, p50/p99, on a small "
                       "and a large host field; against a mutex-guarded store",
     scn_commit_latency, NULL, scn_gpu_commit_latency, NULL},
    {"commit.scaling", 20, "commit cost as the written fraction of a large field goes 0.1% -> "
                       "100%, against copying the whole field",
     scn_commit_scaling, NULL, scn_gpu_commit_scaling, NULL},
    {"commit.zerocopy", 6, "whole transactions writing 1% of a large host field as one region "
                        "(theus_tx_write vs theus_tx_write_borrowed) and 1,000 rows of 4 KiB "
                        "(1,000 writes vs one theus_tx_stage_regions, copied and borrowed); "
                        "against a memcpy of the same bytes",
     scn_commit_zerocopy, NULL, NULL,
     "no GPU variant: borrowing applies to host fields (device fields copy as theus_tx_write)"},
    {"commit.contention", 12, "1, 2, 4 threads, and 1, 2, 4 processes on one shared state "
                          "(--quick: 1, 2), committing read-modify-writes to disjoint and to "
                          "overlapping regions: commits/s, conflict rate, p50/p99; against a "
                          "mutex (process-shared for the processes)",
     scn_commit_contention, NULL, NULL,
     "no GPU variant (the scenario is about host threads and processes)"},
    {"process", 5, "the process layer: engine overhead per run against a bare theus_tx_run of "
                "the same body (target <= 1.2x), signal wake-up latency across threads "
                "(a commit+signal ping-pong against a condition variable) and across processes "
                "of a shared state (one way, p50/p99, against a pipe and a raw futex)",
     scn_process, NULL, NULL, "no GPU variant (host-side engine and waits)"},
    {"durable", 7, "durability (theus_durable.h): commits/s under each sync policy with 1, 2, 4 "
                "writers against a write+fdatasync loop; a full checkpoint of 1 GiB against "
                "write+fsync of 1 GiB and Python safetensors.numpy.save_file; an incremental "
                "checkpoint of 1%; recovery seconds per GiB of log ($THEUS_BENCH_DIR, /tmp)",
     scn_durable, NULL, NULL, "no GPU variant yet (device fields go through the host copy)"},
    {"durable.group", 6, "group commit across threads and processes: commits/s with 1, 2, 4, 8 "
                      "writer threads (private durable state) and writer processes (durable "
                      "shared state) per sync policy, against one write+fdatasync per commit",
     scn_durable_group, NULL, NULL, "no GPU variant (host-side log)"},
    {"stage.h2d", 5, "host payloads staged into a device field through theus_tx_write vs "
                  "cudaMemcpy from pageable and from pinned memory (GPU fields)", NULL,
     "not applicable: host fields take payloads without a host-to-device copy",
     scn_gpu_stage_h2d, NULL},
};
#define NSCENARIOS (sizeof scenarios / sizeof scenarios[0])

/* ---- progress on a terminal ------------------------------------------------------------ */
/* Each variant that will run (scenario x target) is a step weighted by its rough cost;
 * the estimate of the time left scales the remaining weights by how fast the finished
 * steps went compared to their weights. Shown only on a terminal: a line before each step
 * when stdout is one, and a live line on stderr (updated as cells finish) when stderr is a
 * terminal and stdout is not (output sent to a file). */
static struct {
    int lines, live;
    size_t step, steps;
    double weight_total, weight_done, weight_cur;
    double t0, step_t0, last_live;
    const char *name, *target;
} prog;

static void fmt_duration(double s, char *buf, size_t len)
{
    if (s < 0)
        s = 0;
    if (s < 60)
        snprintf(buf, len, "%.0f s", s);
    else if (s < 3600)
        snprintf(buf, len, "%d min %02d s", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, len, "%d h %02d min", (int)s / 3600, ((int)s % 3600) / 60);
}

static double time_left(double now)
{
    double in_step = now - prog.step_t0;
    /* seconds per weight unit: from the finished steps, else the weights as they are */
    double rate = prog.weight_done > 0 ? (prog.step_t0 - prog.t0) / prog.weight_done
                                       : (bench.quick ? 1.0 : 2.0);
    double cur_left = prog.weight_cur * rate - in_step;
    if (cur_left < 0)
        cur_left = 0;
    return cur_left + (prog.weight_total - prog.weight_done - prog.weight_cur) * rate;
}

static void progress_line(char *buf, size_t len, double now)
{
    char el[32], left[32];
    fmt_duration(now - prog.t0, el, sizeof el);
    fmt_duration(time_left(now), left, sizeof left);
    snprintf(buf, len, "[%zu/%zu] %s [%s]: %s elapsed, about %s left", prog.step, prog.steps,
             prog.name, prog.target, el, left);
}

static void progress_step(const char *name, const char *target, double weight)
{
    double now = now_s();
    if (prog.step > 0) {
        prog.weight_done += prog.weight_cur;
    }
    prog.step++;
    prog.step_t0 = now;
    prog.weight_cur = weight;
    prog.name = name;
    prog.target = target;
    char line[256];
    progress_line(line, sizeof line, now);
    if (prog.lines) {
        printf("\n-- %s\n", line);
        fflush(stdout);
    }
    if (prog.live) {
        fprintf(stderr, "\r\033[K%s", line);
        prog.last_live = now;
    }
}

void bench_progress_tick(void)
{
    if (!prog.live || prog.step == 0)
        return;
    double now = now_s();
    if (now - prog.last_live < 0.5)
        return;
    prog.last_live = now;
    char line[256];
    progress_line(line, sizeof line, now);
    fprintf(stderr, "\r\033[K%s", line);
}

static void progress_end(void)
{
    if (prog.live)
        fprintf(stderr, "\r\033[K");
}

/* --plot DIR is checked before anything runs: a run of minutes must not end in "no
 * gnuplot". The directory is created now (it must be writable). 0 ok, else a message. */
static int check_plot(const char *dir)
{
    if (!report_gnuplot_present()) {
        fprintf(stderr, "theus-bench: --plot needs gnuplot, which is not on PATH (Debian: "
                "apt-get install gnuplot-nox); nothing was run\n");
        return -1;
    }
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "theus-bench: --plot: cannot create %s: %s; nothing was run\n", dir,
                strerror(errno));
        return -1;
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "theus-bench: --plot: %s is not a writable directory; nothing was "
                "run\n", dir);
        return -1;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: theus-bench [options] [scenario ...]\n"
            "\n"
            "Measure theus against baselines and the hardware's ceiling, all in the same run.\n"
            "Without scenario names every scenario runs; a name may be a prefix ending before\n"
            "a dot (\"replay\", \"commit\").\n"
            "\n"
            "options:\n"
            "  --quick              short pass (CI): smaller fields, fewer sweep cells, no\n"
            "                       LLC flush (warm caches: it checks results)\n"
            "  --json FILE          write every measurement, check and the machine as JSON\n"
            "  --plot DIR           write PNG charts of the sweeps into DIR (needs gnuplot,\n"
            "                       checked before the run: missing, exit status 2)\n"
            "  --no-progress        no progress lines (default: shown on a terminal, with an\n"
            "                       estimate of the time left)\n"
            "  --list               list the scenarios and exit\n"
            "  --seed N             seed of the random placements (default 1)\n"
            "  --max-field-mib N    cap the large fields at N MiB (default: 1024, or 128/64\n"
            "                       with --quick, 256 on the GPU; reduced further to fit\n"
            "                       available host and device memory)\n"
            "  --target T           run only the cpu or the gpu variants (default: all)\n"
            "  --help               this text\n"
            "\n"
            "Exit status: 0 when every check passed, 1 when a result was wrong or a scenario\n"
            "failed (a CUDA error included), 2 on a usage error (--plot without gnuplot\n"
            "included). Speed never fails the run.\n"
            "GPU variants run when theus_gpu_available() = 1 and print \"skipped: no GPU\"\n"
            "otherwise.\n");
}

static void list(void)
{
    for (size_t i = 0; i < NSCENARIOS; i++)
        printf("%-18s %s%s\n", scenarios[i].name, scenarios[i].desc,
               scenarios[i].cpu && scenarios[i].gpu ? " [cpu, gpu]"
               : scenarios[i].cpu                   ? " [cpu]"
                                                    : " [gpu]");
}

static int name_matches(const char *pattern, const char *name)
{
    size_t n = strlen(pattern);
    return strcmp(pattern, name) == 0 || (strncmp(pattern, name, n) == 0 && name[n] == '.');
}

/* argv as one shell-readable line (arguments with spaces or quotes are single-quoted). */
static char *join_command(int argc, char **argv)
{
    size_t len = 1;
    for (int i = 0; i < argc; i++)
        len += 4 * strlen(argv[i]) + 3;
    char *s = malloc(len), *p = s;
    if (!s)
        return NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = i == 0 ? "theus-bench" : argv[i];
        if (i)
            *p++ = ' ';
        int quote = a[0] == '\0' || strpbrk(a, " \t'\"$\\") != NULL;
        if (quote)
            *p++ = '\'';
        for (; *a; a++) {
            if (*a == '\'') {
                memcpy(p, "'\\''", 4);
                p += 4;
            } else {
                *p++ = *a;
            }
        }
        if (quote)
            *p++ = '\'';
    }
    *p = '\0';
    return s;
}

int main(int argc, char **argv)
{
    const char *json = NULL, *plot = NULL;
    int selected[NSCENARIOS] = {0}, any_selected = 0;
    int want_cpu = 1, want_gpu = 1, progress = 1;
    bench.seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--list") == 0) {
            list();
            return 0;
        } else if (strcmp(a, "--no-progress") == 0) {
            progress = 0;
        } else if (strcmp(a, "--quick") == 0) {
            bench.quick = 1;
        } else if (strcmp(a, "--target") == 0) {
            const char *v = i + 1 < argc ? argv[++i] : "";
            if (strcmp(v, "cpu") == 0) {
                want_gpu = 0;
            } else if (strcmp(v, "gpu") == 0) {
                want_cpu = 0;
            } else if (strcmp(v, "all") != 0) {
                fprintf(stderr, "theus-bench: --target takes cpu, gpu or all\n");
                return 2;
            }
        } else if ((strcmp(a, "--json") == 0 || strcmp(a, "--plot") == 0 ||
                    strcmp(a, "--seed") == 0 || strcmp(a, "--max-field-mib") == 0)) {
            if (i + 1 >= argc) {
                fprintf(stderr, "theus-bench: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (strcmp(a, "--json") == 0) {
                json = v;
            } else if (strcmp(a, "--plot") == 0) {
                plot = v;
            } else {
                char *end = NULL;
                unsigned long long n = strtoull(v, &end, 10);
                if (!end || *end || end == v || (a[2] == 'm' && (n == 0 || n > (1ull << 20)))) {
                    fprintf(stderr, "theus-bench: bad value for %s: %s\n", a, v);
                    return 2;
                }
                if (a[2] == 's')
                    bench.seed = n;
                else
                    bench.max_field = (size_t)n << 20;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "theus-bench: unknown option %s\n", a);
            usage(stderr);
            return 2;
        } else {
            int hit = 0;
            for (size_t k = 0; k < NSCENARIOS; k++)
                if (name_matches(a, scenarios[k].name)) {
                    selected[k] = 1;
                    hit = 1;
                }
            if (!hit) {
                fprintf(stderr, "theus-bench: no scenario named %s (see --list)\n", a);
                return 2;
            }
            any_selected = 1;
        }
    }
    if (!any_selected)
        for (size_t k = 0; k < NSCENARIOS; k++)
            selected[k] = 1;
    if (plot && check_plot(plot) != 0)
        return 2;

    /* The quick pass (CI) checks results, it measures nothing that is published: streaming
     * twice the LLC before each sample (520 MiB a sample on a VM reporting a 260 MiB LLC)
     * was most of its time, and under load replay.copy came near its ctest bound. */
    bench.llc_flush = !bench.quick;
    if (bench.quick) {
        bench.min_samples = 10;
        bench.max_samples = 20;
        bench.max_seconds = 0.25;
        bench.stable_tol = 0.03;
    } else {
        bench.min_samples = 10;
        bench.max_samples = 50;
        bench.max_seconds = 3.0;
        bench.stable_tol = 0.01;
    }
    bench.llc_bytes = machine_llc_bytes();
    bench.mem_avail = machine_mem_avail();
    if (bench.mem_avail == 0)
        bench.mem_avail = (size_t)4 << 30;

    char *command = join_command(argc, argv);
    machine_info mi;
    machine_collect(&mi);
    {
        char *text = NULL;
        size_t textlen = 0;
        FILE *mf = open_memstream(&text, &textlen);
        FILE *o = mf ? mf : stdout;
        fprintf(o, "theus-bench %s (%s pass): %s\n", mi.theus_version,
                bench.quick ? "quick" : "full", command ? command : "");
        machine_print(&mi, o);
        fprintf(o, "method  : warm-up, then at least %u samples until the median moves < %.0f%% "
                "(at most %u, or %.2f s); median reported, p10/p90 in --json; ",
                bench.min_samples, bench.stable_tol * 100, bench.max_samples, bench.max_seconds);
        if (bench.llc_flush)
            fprintf(o, "LLC flushed (%zu MiB stream) before each sample whose working set fits "
                    "in it\n", 2 * bench.llc_bytes >> 20);
        else
            fprintf(o, "LLC NOT flushed (--quick): warm-cache figures, for checking results, "
                    "not for publishing\n");
        fprintf(o, "ratios  : theus/baseline is a throughput ratio (above 1: theus faster); "
                "%%ceil = theus throughput / ceiling throughput; '~' marks a median that did "
                "not settle\n");
        if (mf) {
            fclose(mf);
            bench_wrap(stdout, text);
            free(text);
        }
        fflush(stdout);
    }
    if (llc_flush_init() != 0) {
        fprintf(stderr, "theus-bench: out of memory for the LLC flush buffer\n");
        free(command);
        return 1;
    }

    const int gpu = theus_gpu_available();
    double t0 = now_s();
    const int run_gpu = gpu && mi.gpu_i.built;
    if (progress) {
        prog.lines = isatty(STDOUT_FILENO);
        prog.live = !prog.lines && isatty(STDERR_FILENO);
    }
    prog.t0 = t0;
    for (size_t k = 0; k < NSCENARIOS; k++) {
        if (!selected[k])
            continue;
        if (want_cpu && scenarios[k].cpu) {
            prog.steps++;
            prog.weight_total += scenarios[k].quick_s;
        }
        if (want_gpu && scenarios[k].gpu && run_gpu) {
            prog.steps++;
            prog.weight_total += scenarios[k].quick_s;
        }
    }
    for (size_t k = 0; k < NSCENARIOS; k++) {
        if (!selected[k])
            continue;
        const scenario *s = &scenarios[k];
        /* Errors and wrong results are counted in bench.failures. */
        if (want_cpu) {
            if (s->cpu) {
                progress_step(s->name, "cpu", s->quick_s);
                s->cpu();
            } else {
                note_skip(s->name, "cpu", s->cpu_na);
            }
        }
        if (want_gpu) {
            if (!s->gpu)
                note_skip(s->name, "gpu", s->gpu_na);
            else if (run_gpu && (progress_step(s->name, "gpu", s->quick_s), 1))
                s->gpu();
            else if (!mi.gpu_i.built)
                note_skip(s->name, "gpu", "no GPU (theus-bench built without CUDA)");
            else
                note_skip(s->name, "gpu", "no GPU");
        }
    }
    progress_end();
    gpu_shutdown();
    const double elapsed = now_s() - t0;
    machine_load(mi.load_end, sizeof mi.load_end);
    report_targets(stdout);

    int rc = bench.failures ? 1 : 0;
    if (json) {
        if (report_json(json, &mi, command ? command : "") != 0) {
            fprintf(stderr, "theus-bench: cannot write %s\n", json);
            rc = 1;
        } else {
            printf("--json: results written to %s\n", json);
        }
    }
    if (plot && report_plots(plot) != 0)
        rc = 1;
    printf("\ntheus-bench: %s in %.1f s (load average at start %s, at end %s)%s\n",
           bench.failures ? "FAILED" : "all checks passed", elapsed, mi.load_start, mi.load_end,
           bench.failures ? " (see WRONG RESULT / ERROR above)" : "");
    llc_flush_free();
    report_free();
    free(command);
    return rc;
}
