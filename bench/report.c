/* theus-bench report: the rows every scenario records, the checks and skips, and their
 * output as JSON and as gnuplot charts (the human tables are printed by the scenarios as
 * they go). */
#include "bench.h"
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

extern char **environ;

/* ---- storage ----------------------------------------------------------------------------- */

static bench_result **rows;
static size_t nrows, caprows;

typedef struct note {
    char scenario[32];
    char casename[96];
    char target[8];
    int ok;
    char text[256];
} note;

static note *checks, *skips, *errors;
static size_t nchecks, capchecks, nskips, capskips, nerrors, caperrors;

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 64;
    void *p = realloc(*arr, ncap * elem);
    if (!p)
        return -1;
    *arr = p;
    *cap = ncap;
    return 0;
}

static void copy_str(char *dst, size_t len, const char *src)
{
    snprintf(dst, len, "%s", src ? src : "");
}

bench_result *result_add(const char *scenario, const char *target, const char *casename,
                         const char *method)
{
    if (grow((void **)&rows, &caprows, nrows, sizeof *rows))
        return NULL;
    bench_result *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    copy_str(r->scenario, sizeof r->scenario, scenario);
    copy_str(r->target, sizeof r->target, target);
    copy_str(r->casename, sizeof r->casename, casename);
    copy_str(r->method, sizeof r->method, method);
    r->st.median = NAN;
    rows[nrows++] = r;
    return r;
}

void result_set(bench_result *r, const measurement *m, double bytes, double items,
                const char *item_name)
{
    if (!r)
        return;
    r->st = m->st;
    r->bytes = bytes;
    r->items = items;
    r->item_name = item_name;
    r->nsamples = m->st.n <= BENCH_MAX_SAMPLES ? m->st.n : 0;
    memcpy(r->samples, m->samples, r->nsamples * sizeof(double));
    bench_progress_tick();   /* a measured cell: the live progress line may move */
}

/* Returns -1 when @arr is full (the caller reports it: a scenario's bug, never dropped
 * silently). */
static int kv_set(bench_kv *arr, int *n, const char *key, double num, const char *str)
{
    if (*n >= BENCH_MAX_KV)
        return -1;
    bench_kv *kv = &arr[(*n)++];
    copy_str(kv->key, sizeof kv->key, key);
    kv->num = num;
    kv->is_str = str != NULL;
    if (str)
        copy_str(kv->str, sizeof kv->str, str);
    return 0;
}

static void kv_full(const bench_result *r, const char *what, const char *key)
{
    note_error(r->scenario, "%s: more than %d %s (BENCH_MAX_KV): '%s' not recorded",
               r->casename, BENCH_MAX_KV, what, key);
}

void result_param(bench_result *r, const char *key, double num)
{
    if (r && kv_set(r->params, &r->nparams, key, num, NULL))
        kv_full(r, "parameters", key);
}

void result_param_str(bench_result *r, const char *key, const char *str)
{
    if (r && kv_set(r->params, &r->nparams, key, 0, str))
        kv_full(r, "parameters", key);
}

void result_metric(bench_result *r, const char *key, double num)
{
    if (r && kv_set(r->metrics, &r->nmetrics, key, num, NULL))
        kv_full(r, "metrics", key);
}

static note *note_new(note **arr, size_t *n, size_t *cap)
{
    if (grow((void **)arr, cap, *n, sizeof **arr))
        return NULL;
    note *x = &(*arr)[(*n)++];
    memset(x, 0, sizeof *x);
    return x;
}

int note_check(const char *scenario, const char *casename, int ok, const char *fmt, ...)
{
    note *x = note_new(&checks, &nchecks, &capchecks);
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (!ok) {
        bench.failures++;
        fprintf(stderr, "theus-bench: WRONG RESULT in %s [%s]: %s\n", scenario, casename, text);
    }
    if (x) {
        copy_str(x->scenario, sizeof x->scenario, scenario);
        copy_str(x->casename, sizeof x->casename, casename);
        copy_str(x->text, sizeof x->text, text);
        x->ok = ok;
    }
    return ok;
}

void note_error(const char *scenario, const char *fmt, ...)
{
    note *x = note_new(&errors, &nerrors, &caperrors);
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    bench.failures++;
    fprintf(stderr, "theus-bench: ERROR in %s: %s\n", scenario, text);
    if (x) {
        copy_str(x->scenario, sizeof x->scenario, scenario);
        copy_str(x->text, sizeof x->text, text);
    }
}

void note_skip(const char *scenario, const char *target, const char *reason)
{
    note *x = note_new(&skips, &nskips, &capskips);
    printf("%-18s [%s] skipped: %s\n", scenario, target, reason);
    if (x) {
        copy_str(x->scenario, sizeof x->scenario, scenario);
        copy_str(x->target, sizeof x->target, target);
        copy_str(x->text, sizeof x->text, reason);
    }
}

/* ---- formatting ------------------------------------------------------------------------- */

const char *fmt_bytes(double bytes, char *buf, size_t len)
{
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    if (bytes == floor(bytes))
        snprintf(buf, len, "%.0f%s", bytes, unit[u]);
    else
        snprintf(buf, len, "%.1f%s", bytes, unit[u]);
    return buf;
}

const char *fmt_count(double n, char *buf, size_t len)
{
    if (n >= 1e6 && fmod(n, 1e6) == 0)
        snprintf(buf, len, "%.0fM", n / 1e6);
    else if (n >= 1e3 && fmod(n, 1e3) == 0)
        snprintf(buf, len, "%.0fk", n / 1e3);
    else
        snprintf(buf, len, "%.0f", n);
    return buf;
}

/* Where a wrapped line's continuation starts: after "label : ", after "== ", or a little
 * deeper than the line's own indentation. */
static size_t wrap_indent(const char *line, size_t len)
{
    if (len > 3 && strncmp(line, "== ", 3) == 0)
        return 3;
    const char *colon = memchr(line, ':', len < 12 ? len : 12);
    if (colon && colon + 1 < line + len && colon[1] == ' ' && colon > line && colon[-1] == ' ')
        return (size_t)(colon - line) + 2;
    size_t lead = 0;
    while (lead < len && line[lead] == ' ')
        lead++;
    return lead + 4;
}

void bench_wrap(FILE *f, const char *text)
{
    while (*text) {
        const char *nl = strchr(text, '\n');
        size_t len = nl ? (size_t)(nl - text) : strlen(text);
        size_t indent = wrap_indent(text, len);
        const char *p = text, *end = text + len;
        int first = 1;
        while (p < end) {
            size_t room = BENCH_COLUMNS - (first ? 0 : indent);
            size_t take = (size_t)(end - p);
            if (take > room) {   /* break at the last space that fits */
                size_t k = room;
                while (k > 0 && p[k] != ' ')
                    k--;
                take = k > 0 ? k : room;
            }
            if (!first)
                fprintf(f, "%*s", (int)indent, "");
            fwrite(p, 1, take, f);
            fputc('\n', f);
            p += take;
            while (p < end && *p == ' ')
                p++;
            first = 0;
        }
        if (len == 0)
            fputc('\n', f);
        text = nl ? nl + 1 : end;
    }
}

void print_header(const char *scenario, const char *target, const char *what)
{
    char line[2048];
    snprintf(line, sizeof line, "\n== %s [%s] — %s", scenario, target, what);
    bench_wrap(stdout, line);
    fflush(stdout);
}

/* ---- JSON ------------------------------------------------------------------------------ */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v)
{
    /* Integers (byte counts, sample counts) exactly; measured values to 9 digits. */
    if (!isfinite(v))
        fputs("null", f);
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        fprintf(f, "%.0f", v);
    else
        fprintf(f, "%.9g", v);
}

static void json_kvs(FILE *f, const bench_kv *kv, int n)
{
    fputc('{', f);
    for (int i = 0; i < n; i++) {
        if (i)
            fputs(", ", f);
        json_str(f, kv[i].key);
        fputs(": ", f);
        if (kv[i].is_str)
            json_str(f, kv[i].str);
        else
            json_num(f, kv[i].num);
    }
    fputc('}', f);
}

static void json_stats(FILE *f, const bstats *s)
{
    fputs("{\"median\": ", f);
    json_num(f, s->median);
    fputs(", \"p10\": ", f);
    json_num(f, s->p10);
    fputs(", \"p90\": ", f);
    json_num(f, s->p90);
    fputs(", \"p99\": ", f);
    json_num(f, s->p99);
    fputs(", \"p999\": ", f);
    json_num(f, s->p999);
    fputs(", \"min\": ", f);
    json_num(f, s->min);
    fputs(", \"max\": ", f);
    json_num(f, s->max);
    fputs(", \"mean\": ", f);
    json_num(f, s->mean);
    fprintf(f, ", \"n\": %zu, \"stable\": %s}", s->n, s->stable ? "true" : "false");
}

static void json_field(FILE *f, const char *key, const char *val, int comma)
{
    fprintf(f, "    ");
    json_str(f, key);
    fputs(": ", f);
    json_str(f, val);
    fputs(comma ? ",\n" : "\n", f);
}

int report_json(const char *path, const machine_info *m, const char *command)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "{\n  \"tool\": \"theus-bench\",\n  \"format\": 1,\n  \"command\": ");
    json_str(f, command);
    fprintf(f, ",\n  \"mode\": \"%s\",\n  \"status\": \"%s\",\n", bench.quick ? "quick" : "full",
            bench.failures ? "failed" : "ok");
    fprintf(f, "  \"machine\": {\n");
    json_field(f, "date", m->date, 1);
    json_field(f, "cpu", m->cpu, 1);
    json_field(f, "cpu_detail", m->cpu_detail, 1);
    fprintf(f, "    \"cores\": %d,\n    \"replay_threads\": %d,\n    \"virtualized\": %s,\n",
            m->cores, m->replay_threads, m->virtualized ? "true" : "false");
    fprintf(f, "    \"llc_bytes\": %zu,\n    \"mem_total_bytes\": %zu,\n"
               "    \"mem_available_bytes\": %zu,\n", m->llc_bytes, m->mem_total, m->mem_avail);
    json_field(f, "kernel", m->kernel, 1);
    json_field(f, "compiler", m->compiler, 1);
    json_field(f, "build_type", m->build_type, 1);
    json_field(f, "cflags", m->cflags, 1);
    json_field(f, "theus_version", m->theus_version, 1);
    json_field(f, "git", m->git, 1);
    json_field(f, "gpu", m->gpu, 1);
    {
        const gpu_info *g = &m->gpu_i;
        fprintf(f, "    \"gpu_detail\": {\"built\": %s, \"present\": %s, \"device\": %d, "
                   "\"name\": ", g->built ? "true" : "false", g->present ? "true" : "false",
                g->device);
        json_str(f, g->name);
        fprintf(f, ", \"driver\": ");
        json_str(f, g->driver);
        fprintf(f, ", \"cuda_driver_api\": %d, \"cuda_runtime\": %d, \"compute_capability\": "
                   "\"%d.%d\", \"sm_count\": %d, \"memory_bytes\": %zu, \"l2_bytes\": %zu, "
                   "\"memory_clock_khz\": %d, \"memory_bus_bits\": %d, \"ecc\": %s, "
                   "\"memory_peak_gbps\": ",
                g->driver_api, g->runtime, g->cc_major, g->cc_minor, g->sms, g->mem_total,
                g->l2_bytes, g->mem_clock_khz, g->bus_width_bits, g->ecc ? "true" : "false");
        json_num(f, g->peak_gbps);
        fprintf(f, ", \"copy_kernel_gbps\": ");
        json_num(f, g->copy_gbps);
        fprintf(f, ", \"cudamemcpy_d2d_gbps\": ");
        json_num(f, g->memcpy_gbps);
        fprintf(f, ", \"note\": ");
        json_str(f, g->note);
        fprintf(f, "},\n");
    }
    json_field(f, "loadavg_start", m->load_start, 1);
    json_field(f, "loadavg_end", m->load_end, 1);
    fprintf(f, "    \"timer\": \"clock_gettime(CLOCK_MONOTONIC)\",\n    \"timer_resolution_ns\": ");
    json_num(f, m->timer_res_ns);
    fprintf(f, ",\n    \"timer_overhead_ns\": ");
    json_num(f, m->timer_overhead_ns);
    fprintf(f, "\n  },\n");
    fprintf(f, "  \"method\": {\"min_samples\": %u, \"max_samples\": %u, \"max_seconds\": ",
            bench.min_samples, bench.max_samples);
    json_num(f, bench.max_seconds);
    fprintf(f, ", \"stable_tolerance\": ");
    json_num(f, bench.stable_tol);
    /* llc_flush_bytes 0: no flush at all (--quick), every figure is a warm-cache one. */
    fprintf(f, ", \"llc_flush\": %s, \"llc_flush_bytes\": %zu, \"seed\": %llu},\n",
            llc_flush_bytes() ? "true" : "false", llc_flush_bytes(),
            (unsigned long long)bench.seed);

    fprintf(f, "  \"results\": [\n");
    for (size_t i = 0; i < nrows; i++) {
        const bench_result *r = rows[i];
        fprintf(f, "    {\"scenario\": ");
        json_str(f, r->scenario);
        fprintf(f, ", \"target\": ");
        json_str(f, r->target);
        fprintf(f, ", \"case\": ");
        json_str(f, r->casename);
        fprintf(f, ", \"method\": ");
        json_str(f, r->method);
        fprintf(f, ",\n     \"params\": ");
        json_kvs(f, r->params, r->nparams);
        fprintf(f, ",\n     \"seconds\": ");
        json_stats(f, &r->st);
        fprintf(f, ",\n     \"bytes_per_run\": ");
        json_num(f, r->bytes);
        if (r->bytes > 0) {
            fprintf(f, ", \"gbps_median\": ");
            json_num(f, r->bytes / r->st.median * 1e-9);
            fprintf(f, ", \"gbps_p10\": ");   /* p10 of time is p90 of bandwidth */
            json_num(f, r->bytes / r->st.p90 * 1e-9);
            fprintf(f, ", \"gbps_p90\": ");
            json_num(f, r->bytes / r->st.p10 * 1e-9);
        }
        if (r->items > 0) {
            fprintf(f, ", \"items_per_run\": ");
            json_num(f, r->items);
            fprintf(f, ", \"item\": ");
            json_str(f, r->item_name ? r->item_name : "item");
            fprintf(f, ", \"items_per_s_median\": ");
            json_num(f, r->items / r->st.median);
        }
        fprintf(f, ",\n     \"metrics\": ");
        json_kvs(f, r->metrics, r->nmetrics);
        fprintf(f, ",\n     \"samples_s\": [");
        for (size_t k = 0; k < r->nsamples; k++) {
            if (k)
                fputs(", ", f);
            json_num(f, r->samples[k]);
        }
        fprintf(f, "]}%s\n", i + 1 < nrows ? "," : "");
    }
    fprintf(f, "  ],\n  \"checks\": [\n");
    for (size_t i = 0; i < nchecks; i++) {
        fprintf(f, "    {\"scenario\": ");
        json_str(f, checks[i].scenario);
        fprintf(f, ", \"case\": ");
        json_str(f, checks[i].casename);
        fprintf(f, ", \"ok\": %s, \"detail\": ", checks[i].ok ? "true" : "false");
        json_str(f, checks[i].text);
        fprintf(f, "}%s\n", i + 1 < nchecks ? "," : "");
    }
    fprintf(f, "  ],\n  \"errors\": [\n");
    for (size_t i = 0; i < nerrors; i++) {
        fprintf(f, "    {\"scenario\": ");
        json_str(f, errors[i].scenario);
        fprintf(f, ", \"detail\": ");
        json_str(f, errors[i].text);
        fprintf(f, "}%s\n", i + 1 < nerrors ? "," : "");
    }
    fprintf(f, "  ],\n  \"skipped\": [\n");
    for (size_t i = 0; i < nskips; i++) {
        fprintf(f, "    {\"scenario\": ");
        json_str(f, skips[i].scenario);
        fprintf(f, ", \"target\": ");
        json_str(f, skips[i].target);
        fprintf(f, ", \"reason\": ");
        json_str(f, skips[i].text);
        fprintf(f, "}%s\n", i + 1 < nskips ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    int bad = ferror(f);
    if (fclose(f) != 0 || bad)
        return -1;
    return 0;
}

/* ---- charts ------------------------------------------------------------------------------ */

typedef struct series {
    char name[64];
    double *x, *y;
    size_t n, cap;
} series;

typedef struct chart {
    char name[64];
    char title[128], xlabel[64], ylabel[64];
    int logx, logy;
    series *s;
    size_t ns, caps;
} chart;

static chart *charts;
static size_t ncharts, capcharts;

static chart *chart_get(const char *name)
{
    for (size_t i = 0; i < ncharts; i++)
        if (strcmp(charts[i].name, name) == 0)
            return &charts[i];
    if (grow((void **)&charts, &capcharts, ncharts, sizeof *charts))
        return NULL;
    chart *c = &charts[ncharts++];
    memset(c, 0, sizeof *c);
    copy_str(c->name, sizeof c->name, name);
    copy_str(c->title, sizeof c->title, name);
    return c;
}

void plot_axes(const char *name, const char *title, const char *xlabel, const char *ylabel,
               int logx, int logy)
{
    chart *c = chart_get(name);
    if (!c)
        return;
    copy_str(c->title, sizeof c->title, title);
    copy_str(c->xlabel, sizeof c->xlabel, xlabel);
    copy_str(c->ylabel, sizeof c->ylabel, ylabel);
    c->logx = logx;
    c->logy = logy;
}

void plot_point(const char *name, const char *sname, double x, double y)
{
    chart *c = chart_get(name);
    if (!c || !isfinite(x) || !isfinite(y))
        return;
    series *s = NULL;
    for (size_t i = 0; i < c->ns; i++)
        if (strcmp(c->s[i].name, sname) == 0)
            s = &c->s[i];
    if (!s) {
        if (grow((void **)&c->s, &c->caps, c->ns, sizeof *c->s))
            return;
        s = &c->s[c->ns++];
        memset(s, 0, sizeof *s);
        copy_str(s->name, sizeof s->name, sname);
    }
    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 16;
        double *nx = realloc(s->x, ncap * sizeof *nx);
        if (!nx)
            return;
        s->x = nx;
        double *ny = realloc(s->y, ncap * sizeof *ny);
        if (!ny)
            return;
        s->y = ny;
        s->cap = ncap;
    }
    s->x[s->n] = x;
    s->y[s->n] = y;
    s->n++;
}

/* x values that are all integers (thread or process counts, segment counts), few enough
 * to label each: ticks at exactly those values, so that a log axis reads 1 2 4, not 10^0. */
static void put_integer_xtics(FILE *f, const chart *c)
{
    double v[16];
    size_t n = 0;
    for (size_t k = 0; k < c->ns; k++)
        for (size_t j = 0; j < c->s[k].n; j++) {
            double x = c->s[k].x[j];
            if (x != floor(x) || fabs(x) > 1e15)
                return;
            size_t q = 0;
            while (q < n && v[q] != x)
                q++;
            if (q == n) {
                if (n == 16)
                    return;
                v[n++] = x;
            }
        }
    if (n == 0)
        return;
    fprintf(f, "set xtics (");
    for (size_t q = 0; q < n; q++)
        fprintf(f, "%s%.0f", q ? ", " : "", v[q]);
    fprintf(f, ")\nset mxtics 1\n");
}

/* gnuplot strings in single quotes: a quote is doubled. */
static void gp_str(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'')
            fputc('\'', f);
        fputc(*s, f);
    }
    fputc('\'', f);
}

/* Series are named "what, where": one colour per "what", one dash pattern per "where". */
static size_t name_part(const char *name, int second, char *out, size_t len)
{
    const char *comma = strstr(name, ", ");
    if (second)
        snprintf(out, len, "%s", comma ? comma + 2 : "");
    else
        snprintf(out, len, "%.*s", comma ? (int)(comma - name) : (int)strlen(name), name);
    return strlen(out);
}

static void series_style(const chart *c, size_t k, int *color, int *dash)
{
    char mine[2][64], other[64];
    name_part(c->s[k].name, 0, mine[0], sizeof mine[0]);
    name_part(c->s[k].name, 1, mine[1], sizeof mine[1]);
    int idx[2] = {0, 0};
    for (int part = 0; part < 2; part++) {
        char seen[16][64];
        int nseen = 0;
        for (size_t j = 0; j <= k; j++) {
            name_part(c->s[j].name, part, other, sizeof other);
            int found = -1;
            for (int q = 0; q < nseen; q++)
                if (strcmp(seen[q], other) == 0)
                    found = q;
            if (found < 0 && nseen < 16) {
                snprintf(seen[nseen], sizeof seen[nseen], "%s", other);
                found = nseen++;
            }
            if (j == k)
                idx[part] = found < 0 ? 0 : found;
        }
    }
    *color = idx[0] + 1;
    *dash = idx[1] + 1;
}

static int run_gnuplot(const char *script)
{
    char *argv[] = {"gnuplot", (char *)script, NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ);
    if (rc != 0)
        return rc == ENOENT ? 1 : -1;
    int status = 0;
    if (waitpid(pid, &status, 0) < 0)
        return -1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
        return 1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int report_gnuplot_present(void)
{
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/bin:/bin";
    char buf[4096];
    const char *p = path;
    while (*p) {
        const char *e = strchr(p, ':');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        snprintf(buf, sizeof buf, "%.*s/gnuplot", (int)len, p);
        struct stat sb;
        if (stat(buf, &sb) == 0 && (sb.st_mode & S_IXUSR))
            return 1;
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

int report_plots(const char *dir)
{
    if (!report_gnuplot_present()) {   /* theus-bench checks before the run; it went away */
        fprintf(stderr, "theus-bench: --plot: gnuplot not found, no charts written (Debian: "
                "apt-get install gnuplot-nox)\n");
        return -1;
    }
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "theus-bench: cannot create %s: %s\n", dir, strerror(errno));
        return -1;
    }
    int written = 0, failed = 0;
    for (size_t i = 0; i < ncharts; i++) {
        const chart *c = &charts[i];
        if (c->ns == 0)
            continue;
        char dat[4096], gp[4096], png[4096];
        snprintf(dat, sizeof dat, "%s/%s.dat", dir, c->name);
        snprintf(gp, sizeof gp, "%s/%s.gp", dir, c->name);
        snprintf(png, sizeof png, "%s/%s.png", dir, c->name);
        FILE *f = fopen(dat, "w");
        if (!f) {
            fprintf(stderr, "theus-bench: cannot write %s: %s\n", dat, strerror(errno));
            return -1;
        }
        for (size_t k = 0; k < c->ns; k++) {
            fprintf(f, "# %s\n", c->s[k].name);
            for (size_t j = 0; j < c->s[k].n; j++)
                fprintf(f, "%.9g %.9g\n", c->s[k].x[j], c->s[k].y[j]);
            fprintf(f, "\n\n");
        }
        fclose(f);
        f = fopen(gp, "w");
        if (!f) {
            fprintf(stderr, "theus-bench: cannot write %s: %s\n", gp, strerror(errno));
            return -1;
        }
        fprintf(f, "set terminal pngcairo size 1000,600 noenhanced\nset output ");
        gp_str(f, png);
        fprintf(f, "\nset title ");
        gp_str(f, c->title);
        fprintf(f, "\nset xlabel ");
        gp_str(f, c->xlabel);
        fprintf(f, "\nset ylabel ");
        gp_str(f, c->ylabel);
        fprintf(f, "\nset grid\nset key outside right top\n");
        if (c->logx)
            fprintf(f, "set logscale x\n");
        if (c->logy)
            fprintf(f, "set logscale y\n");
        else
            fprintf(f, "set yrange [0:*]\n");
        double xlo = INFINITY, xhi = -INFINITY;
        for (size_t k = 0; k < c->ns; k++)
            for (size_t j = 0; j < c->s[k].n; j++) {
                xlo = fmin(xlo, c->s[k].x[j]);
                xhi = fmax(xhi, c->s[k].x[j]);
            }
        if (xlo == xhi)
            fprintf(f, "set xrange [%.9g:%.9g]\n", c->logx ? xlo / 2 : xlo - 1,
                    c->logx ? xhi * 2 : xhi + 1);
        else if (c->logx)   /* room around the end points on a log axis */
            fprintf(f, "set xrange [%.9g:%.9g]\n", xlo / 1.25, xhi * 1.25);
        put_integer_xtics(f, c);
        fprintf(f, "plot ");
        for (size_t k = 0; k < c->ns; k++) {
            int color, dash;
            series_style(c, k, &color, &dash);
            fprintf(f, "%s", k ? ", \\\n     " : "");
            gp_str(f, dat);
            fprintf(f, " index %zu using 1:2 with linespoints lc %d dt %d pt %d lw 1.5 title ", k,
                    color, dash, color);
            gp_str(f, c->s[k].name);
        }
        fprintf(f, "\n");
        fclose(f);
        int rc = run_gnuplot(gp);
        if (rc == 0)
            written++;
        else
            failed++;
    }
    printf("--plot: %d chart(s) written to %s%s\n", written, dir,
           failed ? " (gnuplot failed on some; see its messages above)" : "");
    return failed ? -1 : 0;
}

void report_free(void)
{
    for (size_t i = 0; i < nrows; i++)
        free(rows[i]);
    free(rows);
    free(checks);
    free(skips);
    free(errors);
    for (size_t i = 0; i < ncharts; i++) {
        for (size_t k = 0; k < charts[i].ns; k++) {
            free(charts[i].s[k].x);
            free(charts[i].s[k].y);
        }
        free(charts[i].s);
    }
    free(charts);
}

/* ---- targets ------------------------------------------------------------------------------ */

static const bench_kv *kv_find(const bench_kv *kv, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(kv[i].key, key) == 0)
            return &kv[i];
    return NULL;
}

static const char *verdict(int met)
{
    return met ? "met" : "NOT met";
}

static void target_replay_seg(FILE *f, const char *target, const char *scenario,
                              const char *method, const char *ceiling, double seg_lo,
                              double seg_hi, double goal)
{
    double lo = INFINITY, hi = -INFINITY;
    const char *worst = NULL;
    size_t n = 0;
    for (size_t i = 0; i < nrows; i++) {
        const bench_result *r = rows[i];
        if (strcmp(r->target, target) != 0 || strcmp(r->scenario, scenario) != 0 ||
            strcmp(r->method, method) != 0)
            continue;
        const bench_kv *seg = kv_find(r->params, r->nparams, "seg_bytes");
        const bench_kv *pct = kv_find(r->metrics, r->nmetrics, "pct_of_ceiling");
        if (!seg || seg->is_str || seg->num < seg_lo || seg->num > seg_hi || !pct)
            continue;
        n++;
        if (pct->num < lo) {
            lo = pct->num;
            worst = r->casename;
        }
        if (pct->num > hi)
            hi = pct->num;
    }
    if (n == 0)
        return;
    char which[32];
    if (seg_lo == seg_hi)
        snprintf(which, sizeof which, "segments of %.0fB:", seg_lo);
    else
        snprintf(which, sizeof which, "segments >= %.0fKiB:", seg_lo / 1024);
    fprintf(f, "  %-12s %-13s %-20s %3.0f%% .. %3.0f%% of %s over %zu cells "
            "(worst: %s); target >= %.0f%%: %s\n", scenario, method, which, lo, hi, ceiling, n,
            worst, goal, verdict(lo >= goal));
}

static void target_replay(FILE *f, const char *scenario, const char *method, const char *ceiling)
{
    target_replay_seg(f, "cpu", scenario, method, ceiling, 4096, INFINITY, 80);
}

/* The commit.latency target line for each theus.tx row on `target`; the target is
 * a p50 of at most `p50_max_s` seconds. */
static void target_commit_latency(FILE *f, const char *target, double p50_max_s)
{
    for (size_t i = 0; i < nrows; i++) {
        const bench_result *r = rows[i];
        if (strcmp(r->target, target) == 0 && strcmp(r->scenario, "commit.latency") == 0 &&
            strcmp(r->method, "theus.tx") == 0)
            fprintf(f, "  commit.latency one-element delta, %s: p50 %.2f us (p99 %.2f us); "
                    "target p50 <= %g us: %s\n", r->casename, r->st.median * 1e6,
                    r->st.p99 * 1e6, p50_max_s * 1e6, verdict(r->st.median <= p50_max_s));
    }
}

/* The commit.scaling target line (1% of a field written) for each theus.commit row on
 * `target`; `field_kind` (" device" or "") and `copy` name what the commit is set against. */
static void target_commit_scaling(FILE *f, const char *target, const char *field_kind,
                                  const char *copy)
{
    for (size_t i = 0; i < nrows; i++) {
        const bench_result *r = rows[i];
        if (strcmp(r->target, target) != 0 || strcmp(r->scenario, "commit.scaling") != 0 ||
            strcmp(r->method, "theus.commit") != 0)
            continue;
        const bench_kv *fr = kv_find(r->params, r->nparams, "fraction");
        const bench_kv *lay = kv_find(r->params, r->nparams, "layout");
        const bench_kv *pct = kv_find(r->metrics, r->nmetrics, "pct_of_whole_copy");
        const bench_kv *fb = kv_find(r->params, r->nparams, "field_bytes");
        if (!fr || fr->num != 0.01 || !pct || !fb || !lay)
            continue;
        char b[16];
        fprintf(f, "  commit.scaling writing 1%% of a %s%s field (%s): commit takes %.2f%% of a "
                "whole-field %s; target <= 3%%: %s%s\n", fmt_bytes(fb->num, b, sizeof b),
                field_kind, lay->str, pct->num, copy, verdict(pct->num <= 3.0),
                fb->num < (double)(1u << 30) ? " (the target is stated for 1 GiB)" : "");
    }
}

static void report_targets_gpu(FILE *f)
{
    int any = 0;
    for (size_t i = 0; i < nrows; i++)
        any |= strcmp(rows[i]->target, "gpu") == 0;
    if (!any)
        return;
    fprintf(f, "\n== targets (GPU)\n");
    static const char *const scns[2] = {"replay.copy", "replay.add"};
    static const char *const ceils[2] = {"streaming copy", "streaming add"};
    for (int k = 0; k < 2; k++) {
        target_replay_seg(f, "gpu", scns[k], "theus.replay", ceils[k], 4096, INFINITY, 90);
        target_replay_seg(f, "gpu", scns[k], "theus.replay", ceils[k], 256, 256, 60);
    }
    for (size_t i = 0; i < nrows; i++) {
        const bench_result *r = rows[i];
        if (strcmp(r->target, "gpu") != 0 || strcmp(r->scenario, "replay.copy") != 0 ||
            strcmp(r->method, "theus.replay") != 0)
            continue;
        const bench_kv *seg = kv_find(r->params, r->nparams, "seg_bytes");
        const bench_kv *cnt = kv_find(r->params, r->nparams, "count");
        const bench_kv *rb = kv_find(r->metrics, r->nmetrics, "ratio_vs_best_batched");
        if (!seg || seg->is_str || seg->num != 256 || !cnt || cnt->num != 100000)
            continue;
        if (rb)
            fprintf(f, "  replay.copy  theus.replay  %s: %.2fx the better of "
                    "cub::DeviceMemcpy::Batched and cudaMemcpyBatchAsync; target >= 1.5x: %s\n",
                    r->casename, rb->num, verdict(rb->num >= 1.5));
        else
            fprintf(f, "  replay.copy  theus.replay  %s: no batched baseline measured\n",
                    r->casename);
    }
    target_commit_latency(f, "gpu", 10e-6);
    target_commit_scaling(f, "gpu", " device", "cudaMemcpy");
}

static void report_targets_lines(FILE *f);

void report_targets(FILE *out)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        report_targets_lines(out);
        return;
    }
    report_targets_lines(f);
    fclose(f);
    bench_wrap(out, text);
    free(text);
}

static void report_targets_lines(FILE *f)
{
    int any = 0;
    for (size_t i = 0; i < nrows; i++)
        any |= strcmp(rows[i]->target, "cpu") == 0;
    if (!any) {
        report_targets_gpu(f);
        return;
    }
    fprintf(f, "\n== targets (CPU)\n");
    target_replay(f, "replay.copy", "theus.replay", "packed memcpy");
    target_replay(f, "replay.copy", "theus.commit", "packed memcpy");
    target_replay(f, "replay.add", "theus.replay", "packed add");
    target_replay(f, "replay.add", "theus.commit", "packed add");
    target_commit_latency(f, "cpu", 1e-6);
    target_commit_scaling(f, "cpu", "", "copy");
    for (size_t i = 0; i < nrows; i++) {
        const bench_result *r = rows[i];
        if (strcmp(r->scenario, "commit.contention") != 0 ||
            strcmp(r->method, "theus.rmw_commit") != 0)
            continue;
        /* Workers on disjoint regions plus the stalled transaction (any row). */
        const bench_kv *fc = kv_find(r->metrics, r->nmetrics, "false_conflicts_total");
        const bench_kv *sc = kv_find(r->metrics, r->nmetrics, "stalled_commits");
        const bench_kv *sf = kv_find(r->metrics, r->nmetrics, "stalled_false_conflicts");
        if (!fc || !sc || !sf)
            continue;
        fprintf(f, "  commit.contention %s: %.0f false conflicts (%.0f of %.0f stalled "
                "transactions); target 0: %s\n", r->casename, fc->num, sf->num,
                sc->num + sf->num, verdict(fc->num == 0));
    }
    report_targets_gpu(f);
}
