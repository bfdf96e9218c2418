/* durable.group: group commit across threads and processes (theus/theus_durable.h), against
 * one fdatasync per commit. Commits/s of a 256-byte ADD per commit with 1, 2, 4 and 8 writers
 * (--quick: 1, 2), each writer 64 commits a sample (--quick: 8; 24 until 2026-12-03, when a
 * sample's start — threads created, processes woken — weighed a tenth of it):
 *   theus.threads.sync_commit / .sync_group: writer threads of one private durable state;
 *   theus.procs.sync_commit / .sync_group / .sync_none: writer processes of one durable shared
 *     state (theus_shared_open_durable; each process one handle), forked once and started for
 *     each sample through pipes (their set-up is not timed);
 *   the rows use the default options (the log preallocated under every policy);
 *   *.prealloc_off: the group rows without log preallocation (THEUS_PREALLOC_OFF: the log
 *     grows record by record, so each fdatasync also journals the file's new size);
 *   baseline.write_fdatasync: one thread appending the same record bytes and fdatasync'ing
 *     after each (what one fdatasync per commit costs without theus);
 *   baseline.overwrite_fdatasync: the same into a zero-filled file synced beforehand (what an
 *     fdatasync costs when it has no size change to journal, as a preallocated log's).
 * Each theus row also reports commits per fdatasync of the log, from theus_state_durable_stats
 * over the whole set (warm-up included), and its ratio to the same writers under
 * THEUS_SYNC_COMMIT. With N writers that each wait for their own record, one fdatasync covers
 * at most N commits: against a baseline whose fdatasyncs cost what theus's do, group commit
 * reaches at most N times its rate; against the appending baseline it can go beyond, by what
 * preallocation saves per fdatasync (docs/durability.md, "Group commit"). Files go to
 * $THEUS_BENCH_DIR (default /tmp), which must be on a real disk. */
#include "bench.h"
#include "durable_fixture.h"
#include "theus/theus_durable.h"
#include "theus/theus_shared.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAYLOAD 256
#define MAX_W 8

static const char *schema = "{\"name\": \"bench\", \"fields\": {"
                            "\"acc\": {\"dtype\": \"f32\", \"shape\": [64]}}}";

static int commit_n(theus_state *st, int n)
{
    static const float ones[PAYLOAD / 4] = {1};
    for (int i = 0; i < n; i++) {
        theus_tx *tx = NULL;
        if (theus_tx_begin(st, NULL, &tx) != THEUS_OK ||
            theus_tx_add(tx, "acc", NULL, ones, THEUS_MEM_HOST) != THEUS_OK ||
            theus_tx_commit(tx, NULL) != THEUS_OK)
            return -1;
    }
    return 0;
}

typedef struct grp_ctx {
    int kind;                  /* 0 baseline, 1 threads, 2 processes */
    int overwrite;             /* baseline: into the zero-filled file, wrapping at its end */
    uint64_t pos, file_bytes;
    int writers, per;
    theus_state *st;           /* threads: the state; processes: the creator's handle */
    int fd;                    /* baseline */
    pid_t pid[MAX_W];
    int go[MAX_W], done[MAX_W];
    int failed;
    uint64_t commits;
    unsigned char rec[PAYLOAD + 96];
} grp_ctx;

static void *thread_writer(void *p)
{
    grp_ctx *c = p;
    if (commit_n(c->st, c->per) != 0)
        c->failed = 1;
    return NULL;
}

static int run_threads(void *p)
{
    grp_ctx *c = p;
    pthread_t th[MAX_W];
    for (int i = 0; i < c->writers; i++)
        pthread_create(&th[i], NULL, thread_writer, c);
    for (int i = 0; i < c->writers; i++)
        pthread_join(th[i], NULL);
    c->commits += (uint64_t)c->writers * (uint64_t)c->per;
    return c->failed;
}

static int run_procs(void *p)
{
    grp_ctx *c = p;
    char b = 1;
    for (int i = 0; i < c->writers; i++)
        if (write(c->go[i], &b, 1) != 1)
            return -1;
    for (int i = 0; i < c->writers; i++)
        if (read(c->done[i], &b, 1) != 1 || b != 1)
            return -1;
    c->commits += (uint64_t)c->writers * (uint64_t)c->per;
    return 0;
}

static int run_bare(void *p)
{
    grp_ctx *c = p;
    size_t n = 32 + 8 + 16 + 16 + 8 + PAYLOAD;
    for (int i = 0; i < c->per * c->writers; i++) {
        if (c->overwrite) {
            if (c->pos + n > c->file_bytes)
                c->pos = 0;
            if (pwrite(c->fd, c->rec, n, (off_t)c->pos) != (ssize_t)n || fdatasync(c->fd) != 0)
                return -1;
            c->pos += n;
        } else if (write(c->fd, c->rec, n) != (ssize_t)n || fdatasync(c->fd) != 0) {
            return -1;
        }
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* The overwrite baseline's file: @bytes of written zeros, synced (its directory by the
 * caller). */
static int zero_file(const char *path, uint64_t bytes)
{
    static const unsigned char z[64 * 1024];
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    for (uint64_t at = 0; at < bytes; at += sizeof z)
        if (write(fd, z, sizeof z) != (ssize_t)sizeof z) {
            close(fd);
            return -1;
        }
    if (fsync(fd) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A writer process: joins the shared state, then one batch of commits per "go". */
static void proc_writer(const char *name, const char *dir, theus_sync sync, int per, int go,
                        int done)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = sync; /* preallocation is the creator's */
    theus_state *st = NULL;
    char b = 0;
    if (theus_shared_open_durable(name, dir, NULL, NULL, &o, &st) != THEUS_OK) {
        fprintf(stderr, "durable.group writer: %s\n", theus_last_error_message());
        _exit(3);
    }
    while (read(go, &b, 1) == 1) {
        b = commit_n(st, per) == 0 ? 1 : 2;
        if (write(done, &b, 1) != 1)
            break;
    }
    theus_state_destroy(st);
    _exit(0);
}

static int start_procs(grp_ctx *c, const char *name, const char *dir, theus_sync sync,
                       uint64_t prealloc)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = sync;
    o.prealloc_bytes = prealloc;
    if (theus_shared_open_durable(name, dir, schema, NULL, &o, &c->st) != THEUS_OK)
        return -1;
    for (int i = 0; i < c->writers; i++) {
        int g[2], d[2];
        if (pipe(g) != 0 || pipe(d) != 0)
            return -1;
        fflush(NULL);
        c->pid[i] = fork();
        if (c->pid[i] < 0)
            return -1;
        if (c->pid[i] == 0) {
            /* Only its own pipe ends: the others' (inherited) would keep their pipes open. */
            for (int fd = 3; fd < 1024; fd++)
                if (fd != g[0] && fd != d[1])
                    close(fd);
            proc_writer(name, dir, sync, c->per, g[0], d[1]);
        }
        close(g[0]);
        close(d[1]);
        c->go[i] = g[1];
        c->done[i] = d[0];
    }
    return 0;
}

static void stop_procs(grp_ctx *c)
{
    for (int i = 0; i < c->writers; i++) {
        if (c->pid[i] <= 0)
            continue;
        close(c->go[i]);  /* the writer's read ends: it leaves */
        close(c->done[i]);
        int st;
        waitpid(c->pid[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            c->failed = 1;
        c->pid[i] = 0;
    }
}

typedef struct grp_method {
    const char *name;
    int kind;                  /* 0 baseline, 1 threads, 2 processes */
    theus_sync sync;
    uint64_t prealloc;         /* theus_durable_options.prealloc_bytes */
    int overwrite;             /* baseline into a zero-filled file */
    int commit_row;            /* the row of the same writers under THEUS_SYNC_COMMIT */
} grp_method;

/* The group rows' preallocation: the default (1 MiB). */
#define GROUP_PREALLOC 0

enum { BASE, BASE_OVER, T_COMMIT, T_GROUP, T_GROUP_OFF, P_COMMIT, P_GROUP, P_GROUP_OFF, P_NONE,
       NOPS };
static const grp_method method[NOPS] = {
    [BASE] = {"baseline.write_fdatasync", 0, THEUS_SYNC_COMMIT, 0, 0, -1},
    [BASE_OVER] = {"baseline.overwrite_fdatasync", 0, THEUS_SYNC_COMMIT, 0, 1, -1},
    [T_COMMIT] = {"theus.threads.sync_commit", 1, THEUS_SYNC_COMMIT, 0, 0, T_COMMIT},
    [T_GROUP] = {"theus.threads.sync_group", 1, THEUS_SYNC_GROUP, GROUP_PREALLOC, 0,
                 T_COMMIT},
    [T_GROUP_OFF] = {"theus.threads.sync_group.prealloc_off", 1, THEUS_SYNC_GROUP,
                     THEUS_PREALLOC_OFF, 0, T_COMMIT},
    [P_COMMIT] = {"theus.procs.sync_commit", 2, THEUS_SYNC_COMMIT, 0, 0, P_COMMIT},
    [P_GROUP] = {"theus.procs.sync_group", 2, THEUS_SYNC_GROUP, GROUP_PREALLOC, 0,
                 P_COMMIT},
    [P_GROUP_OFF] = {"theus.procs.sync_group.prealloc_off", 2, THEUS_SYNC_GROUP,
                     THEUS_PREALLOC_OFF, 0, P_COMMIT},
    [P_NONE] = {"theus.procs.sync_none", 2, THEUS_SYNC_NONE, 0, 0, P_COMMIT},
};

/* The overwrite baseline's file: larger than what a set writes, so that it wraps rarely. */
#define OVERWRITE_BYTES (8ull << 20)

int scn_durable_group(void)
{
    const char *scenario = "durable.group";
    print_header(scenario, "cpu", "group commit: commits/s with 1-8 writer threads and "
                 "processes per sync policy vs one write+fdatasync per commit");
    if (dfx_make(NULL, "bench-dgroup", 1) != 0) {
        note_error(scenario, "mkdtemp: %s", strerror(errno));
        return -1;
    }
    int wmax = bench.quick ? 2 : MAX_W, per = bench.quick ? 8 : 64, rc = 0;
    for (int w = 1; w <= wmax && rc == 0; w *= 2) {
        grp_ctx c[NOPS];
        memset(c, 0, sizeof c);
        char dirs[NOPS][600], names[NOPS][64];
        bench_op ops[NOPS];
        int bad = 0;
        for (int k = 0; k < NOPS; k++) {
            c[k] = (grp_ctx){.kind = method[k].kind, .writers = w, .per = per, .fd = -1,
                             .overwrite = method[k].overwrite};
            snprintf(dirs[k], sizeof dirs[k], "%s/k%d-w%d", dfx_root, k, w);
            snprintf(names[k], sizeof names[k], "bench-dg-%d-%d-%d", (int)getpid(), k, w);
            ops[k] = (bench_op){.ctx = &c[k], .run = method[k].kind == 0   ? run_bare
                                                   : method[k].kind == 1 ? run_threads
                                                                         : run_procs};
        }
        snprintf(dirs[BASE], sizeof dirs[BASE], "%s/bare-%d.log", dfx_root, w);
        c[BASE].fd = open(dirs[BASE], O_WRONLY | O_CREAT | O_TRUNC, 0600);
        snprintf(dirs[BASE_OVER], sizeof dirs[BASE_OVER], "%s/zeroed-%d.log", dfx_root, w);
        c[BASE_OVER].fd = zero_file(dirs[BASE_OVER], OVERWRITE_BYTES);
        c[BASE_OVER].file_bytes = OVERWRITE_BYTES;
        memset(c[BASE].rec, 0xab, sizeof c[BASE].rec);
        memset(c[BASE_OVER].rec, 0xab, sizeof c[BASE_OVER].rec);
        bad |= c[BASE].fd < 0 || c[BASE_OVER].fd < 0 || fsync_dir(dfx_root) != 0;
        for (int k = 0; k < NOPS && !bad; k++) {
            if (method[k].kind != 1)
                continue;
            theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
            o.sync = method[k].sync;
            o.prealloc_bytes = method[k].prealloc;
            bad |= theus_state_open_durable(dirs[k], schema, NULL, &o, &c[k].st) != THEUS_OK;
        }
        for (int k = 0; k < NOPS && !bad; k++)
            if (method[k].kind == 2)
                bad |= start_procs(&c[k], names[k], dirs[k], method[k].sync,
                                   method[k].prealloc) != 0;
        if (bad)
            note_error(scenario, "set-up with %d writers: %s", w, theus_last_error_message());
        measurement m[NOPS];
        int failed = bad || measure_set(ops, NOPS, m) != 0;
        for (int k = 0; k < NOPS; k++)
            if (method[k].kind == 2)
                stop_procs(&c[k]);
        for (int k = BASE; k <= BASE_OVER; k++)
            if (c[k].fd >= 0)
                close(c[k].fd);
        char cname[32];
        snprintf(cname, sizeof cname, "%d writer%s", w, w > 1 ? "s" : "");
        double base = failed ? 0 : (double)w * per / m[BASE].st.median;
        for (int k = 0; k < NOPS; k++) {
            theus_durable_stats ds = {0, 0, 0};
            if (k > BASE_OVER && c[k].st) {
                /* The log's counters, then the check: every commit is in the directory. */
                theus_state_durable_stats(c[k].st, &ds);
                uint64_t v = theus_state_version(c[k].st);
                theus_state_destroy(c[k].st);
                theus_state *again = NULL;
                int ok = !failed && !c[k].failed &&
                         theus_state_open_durable(dirs[k], NULL, NULL, NULL, &again) == THEUS_OK &&
                         theus_state_version(again) == v && v == 1 + c[k].commits;
                theus_state_destroy(again);
                note_check(scenario, cname, ok, "%s: version %llu after %llu commits, reopened",
                           method[k].name, (unsigned long long)v,
                           (unsigned long long)c[k].commits);
            }
            if (failed)
                continue;
            double rate = (double)w * per / m[k].st.median;
            int cr = method[k].commit_row;
            double vs_commit = cr >= 0 ? rate / ((double)w * per / m[cr].st.median) : 0;
            double per_sync = ds.log_syncs ? (double)ds.log_records / (double)ds.log_syncs : 0;
            bench_result *r = result_add(scenario, "cpu", cname, method[k].name);
            if (r) {
                result_set(r, &m[k], 0, (double)w * per, "commit");
                result_param(r, "writers", w);
                result_metric(r, "commits_per_s", rate);
                result_metric(r, "ratio_vs_baseline", rate / base);
                if (cr >= 0) {
                    result_metric(r, "ratio_vs_sync_commit", vs_commit);
                    result_metric(r, "commits_per_fdatasync", per_sync);
                    result_metric(r, "log_fdatasyncs", (double)ds.log_syncs);
                    result_metric(r, "log_extends", (double)ds.log_extends);
                }
            }
            printf("  %-38s %d writer%s: %9.0f commits/s (%5.2fx write+fdatasync", method[k].name,
                   w, w > 1 ? "s" : " ", rate, rate / base);
            if (cr >= 0 && cr != k)
                printf(", %5.2fx sync_commit", vs_commit);
            if (cr >= 0 && ds.log_syncs)
                printf(", %.2f commits/fdatasync", per_sync);
            printf(")\n");
        }
        if (failed)
            rc = -1;
    }
    dfx_cleanup();
    return rc;
}
