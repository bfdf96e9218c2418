/* durable.commit, durable.checkpoint, durable.recovery: the costs of durability
 * (theus/theus_durable.h), each against its baseline in the same run.
 *   durable.commit:     commits/s of a 256-byte ADD per commit under THEUS_SYNC_COMMIT,
 *                       _GROUP and _NONE with 1, 2 and 4 writer threads; against a bare
 *                       write + fdatasync loop of the same record bytes on one thread.
 *   durable.checkpoint: a full checkpoint of a state of one f32 field (1 GiB; --quick 8 MiB)
 *                       against a sequential write + fsync of the same bytes (the ceiling;
 *                       also with O_DIRECT, as checkpoints write, where the disk takes it)
 *                       and Python's safetensors.numpy.save_file of an array of the same
 *                       shape, followed by an os.fsync (when a python3 with numpy and
 *                       safetensors is found: $THEUS_PY, else python3; one process kept
 *                       running, sampled in the same round robin as theus, so both get
 *                       as many samples under the same drift; save_file alone is reported
 *                       too); an incremental checkpoint after writing 1% of the field.
 *   durable.recovery:   opening a directory whose log holds 1 GiB (--quick 8 MiB) of 1 MiB
 *                       commit records after the creation: seconds per GiB of log (page
 *                       cache warm: the file system's read speed is not part of it).
 * Files go to $THEUS_BENCH_DIR (default /tmp), which must be on a real disk for the sync
 * figures to mean anything (not tmpfs). */
#include "bench.h"
#include "theus/theus_durable.h"
#include "durable_fixture.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The scratch root of the scenario running now (tests/durable_fixture.h: dfx_root). */
static int make_root(const char *scenario)
{
    if (dfx_make(NULL, "bench-durable", 1) != 0) {
        note_error(scenario, "mkdtemp under %s: %s",
                   getenv("THEUS_BENCH_DIR") ? getenv("THEUS_BENCH_DIR") : "/tmp", strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- durable.commit --------------------------------------------------------------------- */

#define PAYLOAD 256

typedef struct commit_ctx {
    theus_state *st;
    int writers;
    int per_writer;
    int failed;
    uint64_t commits;
    int fd;                    /* baseline */
    unsigned char rec[PAYLOAD + 96];
} commit_ctx;

static void *writer(void *p)
{
    commit_ctx *c = p;
    static const float ones[PAYLOAD / 4] = {1};
    for (int i = 0; i < c->per_writer; i++) {
        theus_tx *tx = NULL;
        if (theus_tx_begin(c->st, NULL, &tx) != THEUS_OK ||
            theus_tx_add(tx, "acc", NULL, ones, THEUS_MEM_HOST) != THEUS_OK ||
            theus_tx_commit(tx, NULL) != THEUS_OK)
            c->failed = 1;
    }
    return NULL;
}

static int run_commits(void *p)
{
    commit_ctx *c = p;
    pthread_t th[4];
    for (int i = 0; i < c->writers; i++)
        pthread_create(&th[i], NULL, writer, c);
    for (int i = 0; i < c->writers; i++)
        pthread_join(th[i], NULL);
    c->commits += (uint64_t)c->writers * (uint64_t)c->per_writer;
    return c->failed;
}

/* What the log writes per commit (record head + delta head + payload + CRCs), written and
 * fdatasync'ed once per commit: the cost of a durable commit without theus. */
static int run_bare(void *p)
{
    commit_ctx *c = p;
    size_t n = 32 + 8 + 16 + 16 + 8 + PAYLOAD;
    for (int i = 0; i < c->per_writer * c->writers; i++)
        if (write(c->fd, c->rec, n) != (ssize_t)n || fdatasync(c->fd) != 0)
            return -1;
    return 0;
}

static int scn_commit(void)
{
    const char *scenario = "durable.commit";
    print_header(scenario, "cpu", "commits/s per sync policy and writer count vs write+fdatasync");
    if (make_root(scenario))
        return -1;
    static const char *schema = "{\"name\": \"bench\", \"fields\": {"
                                "\"acc\": {\"dtype\": \"f32\", \"shape\": [64]}}}";
    static const char *const pol_name[3] = {"theus.sync_commit", "theus.sync_group",
                                            "theus.sync_none"};
    int writers_max = bench.quick ? 2 : 4;
    int per = bench.quick ? 8 : 32;
    int rc = 0;
    for (int w = 1; w <= writers_max && rc == 0; w *= 2) {
        /* The baseline and the three policies sampled in turn, so that the disk's (and a
         * shared machine's) drift hits them alike. */
        commit_ctx c[4];
        memset(c, 0, sizeof c);
        char path[600];
        snprintf(path, sizeof path, "%s/bare-%d.log", dfx_root, w);
        c[0] = (commit_ctx){.writers = w, .per_writer = per};
        c[0].fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        memset(c[0].rec, 0xab, sizeof c[0].rec);
        bench_op ops[4] = {{.ctx = &c[0], .run = run_bare}};
        char dirs[3][600];
        for (int pol = 0; pol < 3; pol++) {
            snprintf(dirs[pol], sizeof dirs[pol], "%s/p%d-w%d", dfx_root, pol, w);
            theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
            o.sync = (theus_sync)pol;
            c[pol + 1] = (commit_ctx){.writers = w, .per_writer = per, .fd = -1};
            if (theus_state_open_durable(dirs[pol], schema, NULL, &o, &c[pol + 1].st) != THEUS_OK) {
                note_error(scenario, "open_durable: %s", theus_last_error_message());
                rc = -1;
            }
            ops[pol + 1] = (bench_op){.ctx = &c[pol + 1], .run = run_commits};
        }
        measurement m[4];
        int failed = rc != 0 || c[0].fd < 0 || measure_set(ops, 4, m) != 0;
        if (c[0].fd >= 0)
            close(c[0].fd);
        char cname[32];
        snprintf(cname, sizeof cname, "%d writer%s", w, w > 1 ? "s" : "");
        double base_rate = failed ? 0 : (double)w * per / m[0].st.median;
        bench_result *r = failed ? NULL : result_add(scenario, "cpu", cname, "baseline.write_fdatasync");
        if (r) {
            result_set(r, &m[0], 0, (double)w * per, "commit");
            result_metric(r, "commits_per_s", base_rate);
        }
        if (!failed)
            printf("  %d writer%s: baseline write+fdatasync (one thread) %.0f/s\n", w,
                   w > 1 ? "s" : "", base_rate);
        for (int pol = 0; pol < 3; pol++) {
            if (!c[pol + 1].st)
                continue;
            uint64_t v = theus_state_version(c[pol + 1].st);
            theus_state_destroy(c[pol + 1].st);
            /* The check: everything acknowledged is in the directory. */
            theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
            o.sync = (theus_sync)pol;
            theus_state *again = NULL;
            int ok = !failed && theus_state_open_durable(dirs[pol], NULL, NULL, &o, &again) == THEUS_OK &&
                     theus_state_version(again) == v && v == 1 + c[pol + 1].commits;
            theus_state_destroy(again);
            note_check(scenario, cname, ok, "%s: version %llu after %llu commits, reopened",
                       pol_name[pol], (unsigned long long)v,
                       (unsigned long long)c[pol + 1].commits);
            if (failed)
                continue;
            double rate = (double)w * per / m[pol + 1].st.median;
            r = result_add(scenario, "cpu", cname, pol_name[pol]);
            if (r) {
                result_set(r, &m[pol + 1], 0, (double)w * per, "commit");
                result_param(r, "writers", w);
                result_metric(r, "commits_per_s", rate);
                result_metric(r, "ratio_vs_baseline", rate / base_rate);
            }
            printf("  %-18s %d writer%s: %9.0f commits/s (%.2fx write+fdatasync)\n",
                   pol_name[pol], w, w > 1 ? "s" : " ", rate, rate / base_rate);
        }
        if (failed)
            rc = -1;
    }
    dfx_cleanup();
    return rc;
}

/* ---- durable.checkpoint ------------------------------------------------------------------ */

typedef struct ckpt_ctx {
    theus_state *st;
    int incremental;
    int direct;                /* ceiling with O_DIRECT (what full checkpoints use) */
    size_t bytes;
    void *buf;                 /* ceiling */
    char path[600];
    int failed;
    uint64_t tag;
} ckpt_ctx;

/* 1% of the field (one contiguous region) changes between incremental checkpoints. */
static int prep_incremental(void *p)
{
    ckpt_ctx *c = p;
    size_t n = c->bytes / 4, rows = n / 1024, part = rows / 100 ? rows / 100 : 1;
    static float row[1024];
    theus_tx *tx = NULL;
    if (theus_tx_begin(c->st, NULL, &tx) != THEUS_OK)
        return -1;
    size_t first = (size_t)(c->tag++ * 7919 % (rows - part + 1));
    float *buf = NULL;
    theus_region r = {.ndim = 2, .start = {(int64_t)first, 0},
                      .stop = {(int64_t)(first + part), 1024}};
    theus_mem mem;
    if (theus_tx_stage_buffer(tx, "w", &r, THEUS_OP_ASSIGN, (void **)&buf, &mem) != THEUS_OK) {
        theus_tx_abort(tx);
        return -1;
    }
    for (size_t i = 0; i < part * 1024; i++)
        buf[i] = (float)(c->tag + i);
    (void)row;
    return theus_tx_commit(tx, NULL) == THEUS_OK ? 0 : -1;
}

static int prep_full(void *p)
{
    /* A change, so that each full checkpoint is a new version (and a new file). */
    ckpt_ctx *c = p;
    theus_tx *tx = NULL;
    float one = 1;
    theus_region r = {.ndim = 2, .start = {0, 0}, .stop = {1, 1}};
    if (theus_tx_begin(c->st, NULL, &tx) != THEUS_OK ||
        theus_tx_add(tx, "w", &r, &one, THEUS_MEM_HOST) != THEUS_OK)
        return -1;
    return theus_tx_commit(tx, NULL) == THEUS_OK ? 0 : -1;
}

static int run_ckpt(void *p)
{
    ckpt_ctx *c = p;
    return theus_state_checkpoint(c->st, c->incremental, NULL) == THEUS_OK ? 0 : -1;
}

static int run_ceiling(void *p)
{
    ckpt_ctx *c = p;
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC | (c->direct ? O_DIRECT : 0), 0600);
    if (fd < 0)
        return -1;
    const char *q = c->buf;
    size_t left = c->bytes, chunk = c->direct ? (8u << 20) : (64u << 20);
    while (left) {
        ssize_t w = write(fd, q, left > chunk ? chunk : left);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        q += w;
        left -= (size_t)w;
    }
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Python's writer, sampled in the same round robin as theus: a python3 with numpy and
 * safetensors ($THEUS_PY, else python3) kept running, holding an f32 array of the field's
 * shape; each sample asks it for one safetensors.numpy.save_file to the same file system
 * (over its previous file, which open truncates: it pays the removal of the old 1 GiB as
 * theus's retention does) and an os.fsync of the file, timed in Python (perf_counter) both
 * without and with the fsync. save_file does not fsync: without it the bytes are in the
 * page cache, not on the disk, so the durable comparison is with the fsync. */
static const char py_writer[] =
    "import os, sys, time\n"
    "import numpy as np\n"
    "from safetensors.numpy import save_file\n"
    "rows, path = int(sys.argv[1]), sys.argv[2]\n"
    "a = {'w': np.ones((rows, 1024), dtype=np.float32)}\n"
    "print('ready', flush=True)\n"
    "for line in sys.stdin:\n"
    "    t0 = time.perf_counter()\n"
    "    save_file(a, path)\n"
    "    t1 = time.perf_counter()\n"
    "    fd = os.open(path, os.O_RDONLY)\n"
    "    os.fsync(fd)\n"
    "    os.close(fd)\n"
    "    t2 = time.perf_counter()\n"
    "    print('%.9f %.9f' % (t1 - t0, t2 - t0), flush=True)\n";

#define PY_MAX_RUNS (BENCH_MAX_SAMPLES + 4)

typedef struct py_ctx {
    pid_t pid;
    FILE *to, *from;
    void (*old_pipe)(int);       /* SIGPIPE ignored while it runs: a dead Python is an error */
    unsigned runs;
    double save[PY_MAX_RUNS];    /* save_file alone, every run (warm-up first) */
} py_ctx;

static void py_stop(py_ctx *c)
{
    if (c->to)
        fclose(c->to); /* end of its stdin: it leaves its loop */
    if (c->from)
        fclose(c->from);
    if (c->pid > 0)
        waitpid(c->pid, NULL, 0);
    if (c->pid)
        signal(SIGPIPE, c->old_pipe);
    c->to = c->from = NULL;
    c->pid = 0;
}

/* Start the writer; 0 once it holds its array, -1 when there is no usable Python. */
static int py_start(py_ctx *c, size_t bytes, const char *dir)
{
    memset(c, 0, sizeof *c);
    const char *py = getenv("THEUS_PY");
    if (!py || !*py)
        py = "python3";
    char rows[32], path[700];
    snprintf(rows, sizeof rows, "%zu", bytes / 4096);
    snprintf(path, sizeof path, "%s/py.safetensors", dir);
    int in[2], out[2];
    if (pipe(in) != 0)
        return -1;
    if (pipe(out) != 0) {
        close(in[0]);
        close(in[1]);
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 2);
        close(in[1]);
        close(out[0]);
        execlp(py, py, "-c", py_writer, rows, path, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    if (pid < 0) {
        close(in[1]);
        close(out[0]);
        return -1;
    }
    c->pid = pid;
    c->old_pipe = signal(SIGPIPE, SIG_IGN);
    c->to = fdopen(in[1], "w");
    c->from = fdopen(out[0], "r");
    char line[64];
    if (!c->to || !c->from || !fgets(line, sizeof line, c->from) || strncmp(line, "ready", 5)) {
        if (!c->to)
            close(in[1]);
        if (!c->from)
            close(out[0]);
        py_stop(c);
        return -1;
    }
    return 0;
}

static int run_python(void *p, double *secs)
{
    py_ctx *c = p;
    char line[128];
    double save = 0, total = 0;
    if (fputs("go\n", c->to) == EOF || fflush(c->to) != 0 || !fgets(line, sizeof line, c->from) ||
        sscanf(line, "%lf %lf", &save, &total) != 2)
        return -1;
    if (c->runs < PY_MAX_RUNS)
        c->save[c->runs] = save;
    c->runs++;
    *secs = total;
    return 0;
}

static int scn_checkpoint(void)
{
    const char *scenario = "durable.checkpoint";
    print_header(scenario, "cpu", "full checkpoint vs write+fsync ceiling vs Python "
                                  "safetensors; incremental after 1% written");
    if (make_root(scenario))
        return -1;
    size_t bytes = bench.quick ? (8u << 20) : (1u << 30);
    if (!bench.quick && bench.mem_avail && bench.mem_avail < 4 * bytes) {
        bytes = 256u << 20;
        printf("  (not enough memory for 1 GiB: %s)\n", "256 MiB instead");
    }
    char schema[256], dir[600];
    snprintf(schema, sizeof schema,
             "{\"name\": \"ckpt\", \"fields\": {\"w\": {\"dtype\": \"f32\", \"shape\": [%zu, 1024]}}}",
             bytes / 4096);
    snprintf(dir, sizeof dir, "%s/state", dfx_root);
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.keep_checkpoints = 1;
    ckpt_ctx full = {.bytes = bytes}, inc = {.bytes = bytes, .incremental = 1}, ceil = {.bytes = bytes},
             dceil = {.bytes = bytes, .direct = 1};
    if (theus_state_open_durable(dir, schema, NULL, &o, &full.st) != THEUS_OK) {
        note_error(scenario, "open_durable: %s", theus_last_error_message());
        dfx_cleanup();
        return -1;
    }
    inc.st = full.st;
    ceil.buf = bench_alloc_huge(bytes);
    snprintf(ceil.path, sizeof ceil.path, "%s/ceiling.bin", dfx_root);
    snprintf(dceil.path, sizeof dceil.path, "%s/ceiling-direct.bin", dfx_root);
    dceil.buf = ceil.buf;
    /* The direct ceiling where the file system takes O_DIRECT (not tmpfs) and the buffer is
     * page-aligned. */
    int fd = ceil.buf && (uintptr_t)ceil.buf % 4096 == 0
                 ? open(dceil.path, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0600) : -1;
    int have_direct = fd >= 0;
    if (fd >= 0)
        close(fd);
    if (!ceil.buf) {
        note_error(scenario, "out of memory");
        theus_state_destroy(full.st);
        dfx_cleanup();
        return -1;
    }
    memset(ceil.buf, 1, bytes);
    prep_incremental(&full); /* some content, and a first full checkpoint for the chain */
    theus_state_checkpoint(full.st, 0, NULL);
    /* Python's writer in the same round robin (as many samples, the same drift). */
    py_ctx py;
    int have_py = py_start(&py, bytes, dfx_root) == 0;
    bench_op ops[5] = {{.ctx = &ceil, .run = run_ceiling},
                       {.ctx = &full, .prep = prep_full, .run = run_ckpt},
                       {.ctx = &inc, .prep = prep_incremental, .run = run_ckpt}};
    size_t nops = 3, idir = 0, ipy = 0;
    if (have_direct) {
        idir = nops;
        ops[nops++] = (bench_op){.ctx = &dceil, .run = run_ceiling};
    }
    if (have_py) {
        ipy = nops;
        ops[nops++] = (bench_op){.ctx = &py, .run_timed = run_python};
    }
    measurement m[5];
    int failed = measure_set(ops, nops, m) != 0;
    if (have_py)
        py_stop(&py);
    uint64_t v = theus_state_version(full.st);
    theus_state_destroy(full.st);
    bench_free(ceil.buf, bytes);
    theus_state *again = NULL;
    int ok = !failed && theus_state_open_durable(dir, NULL, NULL, &o, &again) == THEUS_OK &&
             theus_state_version(again) == v;
    theus_state_destroy(again);
    note_check(scenario, "1 field", ok, "reopened at version %llu", (unsigned long long)v);
    static const char *const methods[4] = {"ceiling.write_fsync", "theus.checkpoint_full",
                                           "theus.checkpoint_incremental_1pct",
                                           "ceiling.write_direct_fsync"};
    char cname[32], b[16];
    snprintf(cname, sizeof cname, "f32 %s", fmt_bytes((double)bytes, b, sizeof b));
    for (size_t k = 0; k < (have_direct ? 4u : 3u) && !failed; k++) {
        bench_result *r = result_add(scenario, "cpu", cname, methods[k]);
        if (!r)
            continue;
        result_set(r, &m[k], (double)bytes, 1, "checkpoint");
        result_metric(r, "ratio_vs_ceiling", m[0].st.median / m[k].st.median);
        result_metric(r, "ratio_vs_full", m[k].st.median / m[1].st.median);
        result_metric(r, "ratio_vs_full_min", m[k].st.min / m[1].st.min);
    }
    if (!failed) {
        printf("  write+fsync %.3f s, full checkpoint %.3f s (%.0f%% of the ceiling's speed), "
               "incremental 1%% %.4f s (%.1f%% of a full one; minima %.4f s, %.1f%%)\n",
               m[0].st.median, m[1].st.median, 100 * m[0].st.median / m[1].st.median,
               m[2].st.median, 100 * m[2].st.median / m[1].st.median, m[2].st.min,
               100 * m[2].st.min / m[1].st.min);
        if (have_direct)
            printf("  write+fsync with O_DIRECT (8 MiB writes) %.3f s: the full checkpoint at "
                   "%.0f%% of its speed\n", m[idir].st.median,
                   100 * m[idir].st.median / m[1].st.median);
        if (have_py) {
            /* save_file alone: the samples are the last n runs (warm-ups come first). */
            const measurement *mp = &m[ipy];
            size_t n = mp->st.n, first = py.runs - n;
            measurement ms = {.st.n = 0};
            for (size_t k = 0; k < n && first + k < PY_MAX_RUNS; k++)
                ms.samples[ms.st.n++] = py.save[first + k];
            if (ms.st.n)
                stats_compute(ms.samples, ms.st.n, &ms.st);
            bench_result *r = result_add(scenario, "cpu", cname, "baseline.python_safetensors");
            if (r) {
                result_set(r, mp, (double)bytes, 1, "save");
                result_param_str(r, "what", "save_file + os.fsync (durable)");
                result_metric(r, "theus_speedup", mp->st.median / m[1].st.median);
                result_metric(r, "theus_speedup_min", mp->st.min / m[1].st.min);
            }
            r = result_add(scenario, "cpu", cname, "baseline.python_safetensors_nofsync");
            if (r) {
                result_set(r, &ms, (double)bytes, 1, "save");
                result_param_str(r, "what", "save_file alone (not durable)");
                result_metric(r, "theus_speedup", ms.st.median / m[1].st.median);
                result_metric(r, "theus_speedup_min", ms.st.min / m[1].st.min);
            }
            printf("  Python safetensors.numpy.save_file + fsync (%zu samples, round robin with "
                   "theus): median %.3f s, min %.3f s: theus %.2fx faster (median vs median), "
                   "%.2fx (min vs min)\n", n, mp->st.median, mp->st.min,
                   mp->st.median / m[1].st.median, mp->st.min / m[1].st.min);
            printf("  save_file alone (no fsync: not durable): median %.3f s, min %.3f s: "
                   "theus %.2fx, %.2fx\n", ms.st.median, ms.st.min,
                   ms.st.median / m[1].st.median, ms.st.min / m[1].st.min);
        } else {
            note_skip(scenario, "cpu", "Python safetensors baseline: no python3 with numpy and "
                                       "safetensors (set THEUS_PY)");
        }
        /* Issue #10's targets, medians; they are stated for 1 GiB (small states are
         * dominated by the fixed costs: fsyncs, the segment, retention). */
        double pct_ceil = 100 * m[0].st.median / m[1].st.median;
        double pct_inc = 100 * m[2].st.median / m[1].st.median;
        if (bytes < (1u << 30)) {
            printf("  targets: stated for 1 GiB, not judged at %s\n", b);
        } else {
            printf("  targets: full checkpoint >= 80%% of write+fsync: %s (%.0f%%); incremental "
                   "1%% <= 3%% of a full one: %s (%.1f%%)", pct_ceil >= 80 ? "met" : "MISSED",
                   pct_ceil, pct_inc <= 3 ? "met" : "MISSED", pct_inc);
            if (have_py)
                printf("; faster than Python save_file + fsync: %s (%.2fx)",
                       m[ipy].st.median > m[1].st.median ? "met" : "MISSED",
                       m[ipy].st.median / m[1].st.median);
            printf("\n");
        }
    }
    dfx_cleanup();
    return failed ? -1 : 0;
}

/* ---- durable.recovery -------------------------------------------------------------------- */

typedef struct rec_ctx {
    const char *dir;
    uint64_t version;
    int failed;
} rec_ctx;

static int run_recover(void *p)
{
    rec_ctx *c = p;
    theus_state *st = NULL;
    if (theus_state_open_durable(c->dir, NULL, NULL, NULL, &st) != THEUS_OK)
        return -1;
    int ok = theus_state_version(st) == c->version;
    theus_state_destroy(st);
    return ok ? 0 : -1;
}

static int scn_recovery(void)
{
    const char *scenario = "durable.recovery";
    print_header(scenario, "cpu", "reopen a directory: seconds per GiB of log replayed");
    if (make_root(scenario))
        return -1;
    size_t log_bytes = bench.quick ? (8u << 20) : (1u << 30), rec = 1u << 20;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/state", dfx_root);
    static const char *schema = "{\"name\": \"rec\", \"fields\": {"
                                "\"w\": {\"dtype\": \"f32\", \"shape\": [4096, 1024]}}}";
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = THEUS_SYNC_NONE;
    theus_state *st = NULL;
    if (theus_state_open_durable(dir, schema, NULL, &o, &st) != THEUS_OK) {
        note_error(scenario, "open_durable: %s", theus_last_error_message());
        dfx_cleanup();
        return -1;
    }
    float *row = malloc(rec);
    for (size_t i = 0; i < rec / 4; i++)
        row[i] = (float)i;
    size_t n = log_bytes / rec;
    for (size_t k = 0; k < n; k++) {
        theus_tx *tx = NULL;
        theus_region r = {.ndim = 2, .start = {(int64_t)(k % 16) * 256, 0},
                          .stop = {(int64_t)(k % 16) * 256 + 256, 1024}};
        if (theus_tx_begin(st, NULL, &tx) != THEUS_OK ||
            theus_tx_add(tx, "w", &r, row, THEUS_MEM_HOST) != THEUS_OK ||
            theus_tx_commit(tx, NULL) != THEUS_OK) {
            note_error(scenario, "commit: %s", theus_last_error_message());
            break;
        }
    }
    free(row);
    rec_ctx c = {.dir = dir, .version = theus_state_version(st)};
    theus_state_destroy(st);
    measurement m;
    bench_op op = {.ctx = &c, .run = run_recover};
    int failed = measure(&op, &m) != 0;
    note_check(scenario, "1 MiB records", !failed, "reopened at version %llu",
               (unsigned long long)c.version);
    char cname[32], b[16];
    snprintf(cname, sizeof cname, "%s of 1 MiB records", fmt_bytes((double)log_bytes, b, sizeof b));
    bench_result *r = result_add(scenario, "cpu", cname, "theus.open_durable");
    if (r && !failed) {
        result_set(r, &m, (double)log_bytes, (double)n, "record");
        result_metric(r, "seconds_per_gib", m.st.median * (double)(1u << 30) / (double)log_bytes);
    }
    if (!failed)
        printf("  recovery: %.3f s for %s of log = %.2f s per GiB\n", m.st.median, b,
               m.st.median * (double)(1u << 30) / (double)log_bytes);
    dfx_cleanup();
    return failed ? -1 : 0;
}

int scn_durable(void)
{
    int rc = scn_commit();
    rc |= scn_checkpoint();
    rc |= scn_recovery();
    return rc ? -1 : 0;
}
