/* theus-bench: what machine and build a run measured (recorded with every report). */
#include "bench.h"
#include "backend.h"
#include "replay_pool.h"
#include "theus/theus.h"
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#ifndef THEUS_BENCH_CFLAGS
#define THEUS_BENCH_CFLAGS "unknown"
#endif
#ifndef THEUS_BENCH_BUILD_TYPE
#define THEUS_BENCH_BUILD_TYPE "unknown"
#endif
#ifndef THEUS_BENCH_GIT
#define THEUS_BENCH_GIT "unknown"
#endif

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
}

/* The value after "key" and a colon in the first line of @path that starts with @key. */
static int file_value(const char *path, const char *key, char *out, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[1024];
    int found = -1;
    size_t klen = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) != 0)
            continue;
        const char *c = strchr(line, ':');
        if (!c)
            continue;
        c++;
        while (*c == ' ' || *c == '\t')
            c++;
        snprintf(out, len, "%s", c);
        trim(out);
        found = 0;
        break;
    }
    fclose(f);
    return found;
}

size_t machine_llc_bytes(void)
{
    return cpu_llc_bytes();   /* what theus's CPU replay sizes its streaming by */
}

static size_t meminfo_bytes(const char *key)
{
    char buf[128];
    if (file_value("/proc/meminfo", key, buf, sizeof buf) != 0)
        return 0;
    return (size_t)strtoull(buf, NULL, 10) << 10;   /* reported in kB */
}

size_t machine_mem_avail(void)
{
    size_t a = meminfo_bytes("MemAvailable");
    return a ? a : meminfo_bytes("MemFree");
}

void machine_load(char *buf, size_t len)
{
    buf[0] = '\0';
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f)
        return;
    double a, b, c;
    if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3)
        snprintf(buf, len, "%.2f %.2f %.2f", a, b, c);
    fclose(f);
}

static double timer_overhead_ns(void)
{
    /* Median of back-to-back readings: what each timed sample carries on top. */
    double best[9];
    for (int k = 0; k < 9; k++) {
        uint64_t t0 = now_ns();
        for (int i = 0; i < 1000; i++)
            (void)now_ns();
        best[k] = (double)(now_ns() - t0) / 1001.0;
    }
    bstats st;
    stats_compute(best, 9, &st);
    return st.median;
}

void machine_collect(machine_info *m)
{
    memset(m, 0, sizeof *m);
    if (file_value("/proc/cpuinfo", "model name", m->cpu, sizeof m->cpu) != 0)
        snprintf(m->cpu, sizeof m->cpu, "unknown");
    char flags[8192] = "", fam[32] = "?", model[32] = "?", mhz[32] = "?";
    file_value("/proc/cpuinfo", "cpu family", fam, sizeof fam);
    file_value("/proc/cpuinfo", "model\t", model, sizeof model);
    file_value("/proc/cpuinfo", "cpu MHz", mhz, sizeof mhz);
    if (file_value("/proc/cpuinfo", "flags", flags, sizeof flags) == 0) {
        strcat(flags, " ");
        m->virtualized = strstr(flags, " hypervisor ") != NULL;
    }
    /* The instruction-set features that decide how fast memcpy and the add loops can go. */
    static const char *const isa[] = {"sse4_2", "avx2", "avx512f", "erms", "fsrm"};
    char have[64] = "";
    for (size_t i = 0; i < sizeof isa / sizeof isa[0]; i++) {
        char pat[24];
        snprintf(pat, sizeof pat, " %s ", isa[i]);
        if (strstr(flags, pat))
            snprintf(have + strlen(have), sizeof have - strlen(have), "%s%s", have[0] ? " " : "",
                     isa[i]);
    }
    snprintf(m->cpu_detail, sizeof m->cpu_detail, "family %s, model %s, %.0f MHz; %s", fam, model,
             atof(mhz), have);
    m->cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    m->replay_threads = replay_pool_threads();
    m->llc_bytes = machine_llc_bytes();
    m->mem_total = meminfo_bytes("MemTotal");
    m->mem_avail = machine_mem_avail();
    struct utsname u;
    if (uname(&u) == 0)
        snprintf(m->kernel, sizeof m->kernel, "%s %s %s", u.sysname, u.release, u.machine);
#if defined(__clang__)
    snprintf(m->compiler, sizeof m->compiler, "clang %s", __clang_version__);
#elif defined(__GNUC__)
    snprintf(m->compiler, sizeof m->compiler, "gcc %s", __VERSION__);
#else
    snprintf(m->compiler, sizeof m->compiler, "unknown");
#endif
    snprintf(m->cflags, sizeof m->cflags, "%s", THEUS_BENCH_CFLAGS);
    snprintf(m->build_type, sizeof m->build_type, "%s", THEUS_BENCH_BUILD_TYPE);
    snprintf(m->theus_version, sizeof m->theus_version, "%d.%d.%d", THEUS_VERSION_MAJOR,
             THEUS_VERSION_MINOR, THEUS_VERSION_PATCH);
    snprintf(m->git, sizeof m->git, "%s", THEUS_BENCH_GIT);
    gpu_collect(&m->gpu_i);
    const gpu_info *g = &m->gpu_i;
    if (g->present) {
        char mem[16], l2[16];
        snprintf(m->gpu, sizeof m->gpu,
                 "%s (sm_%d%d, %d SMs, %s, L2 %s), driver %s (CUDA %d.%d), runtime %d.%d; "
                 "memory peak %.0f GB/s, measured copy %.0f GB/s (kernel) / %.0f GB/s "
                 "(cudaMemcpy)",
                 g->name, g->cc_major, g->cc_minor, g->sms,
                 fmt_bytes((double)g->mem_total, mem, sizeof mem),
                 fmt_bytes((double)g->l2_bytes, l2, sizeof l2), g->driver[0] ? g->driver : "?",
                 g->driver_api / 1000, g->driver_api % 1000 / 10, g->runtime / 1000,
                 g->runtime % 1000 / 10, g->peak_gbps, g->copy_gbps, g->memcpy_gbps);
    } else {
        snprintf(m->gpu, sizeof m->gpu, "none (theus_gpu_available() = %d%s%s)",
                 theus_gpu_available(), g->note[0] ? "; " : "", g->note);
    }
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(m->date, sizeof m->date, "%Y-%m-%dT%H:%M:%SZ", &tm);
    struct timespec res;
    clock_getres(CLOCK_MONOTONIC, &res);
    m->timer_res_ns = (double)res.tv_sec * 1e9 + (double)res.tv_nsec;
    m->timer_overhead_ns = timer_overhead_ns();
    machine_load(m->load_start, sizeof m->load_start);
}

void machine_print(const machine_info *m, FILE *f)
{
    char a[32], b[32], c[32];
    fprintf(f, "machine : %s (%s), %d cores%s, LLC %s, memory %s (%s available)\n", m->cpu,
            m->cpu_detail, m->cores,
            m->virtualized ? " (virtual machine)" : "", fmt_bytes((double)m->llc_bytes, a, sizeof a),
            fmt_bytes((double)m->mem_total, b, sizeof b), fmt_bytes((double)m->mem_avail, c, sizeof c));
    fprintf(f, "system  : %s\n", m->kernel);
    fprintf(f, "theus   : CPU replay of large batches on %d thread%s (THEUS_REPLAY_THREADS %s)\n",
            m->replay_threads, m->replay_threads == 1 ? "" : "s",
            getenv("THEUS_REPLAY_THREADS") ? getenv("THEUS_REPLAY_THREADS") : "unset");
    fprintf(f, "build   : theus %s (git %s when configured), %s, %s, flags \"%s\"\n",
            m->theus_version, m->git,
            m->compiler, m->build_type, m->cflags);
    fprintf(f, "gpu     : %s\n", m->gpu);
    fprintf(f, "timer   : clock_gettime(CLOCK_MONOTONIC), resolution %.0f ns, overhead %.0f ns\n",
            m->timer_res_ns, m->timer_overhead_ns);
    fprintf(f, "date    : %s; load average at start %s (1, 5, 15 min)\n", m->date,
            m->load_start);
}
