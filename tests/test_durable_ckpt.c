/* Incremental checkpoints: the log segment stays open across them (recovery starts inside
 * it), on the disk and on tmpfs, with fields whose sizes are no multiple of the block size;
 * a process killed right after an incremental checkpoint under each sync policy, a
 * temporary file left by a kill inside one, and a damaged incremental file refused as
 * corruption naming it; full checkpoints of a multi-chunk field while a thread commits; the
 * log synced up to an incremental checkpoint's version. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <theus/theus.h>
#include <theus/theus_durable.h>

#include "durable/durable.h"
#include "durable/stfile.h"
#include "ckpt_while.h"
#include "durable_fixture.h"

static void teardown(void)
{
    dfx_cleanup();
}

TestSuite(durable_ckpt, .fini = teardown);

/* Sizes that are no multiple of a block (small fields get small blocks), a device field
 * (host memory without a GPU: the same staged path), a signal field that is never saved. */
static const char *schema =
    "{\"name\": \"ck\", \"fields\": {"
    "\"tag\": {\"dtype\": \"u64\", \"shape\": []},"
    "\"odd\": {\"dtype\": \"u8\", \"shape\": [4099]},"
    "\"mat\": {\"dtype\": \"f64\", \"shape\": [7, 5]},"
    "\"big\": {\"dtype\": \"f32\", \"shape\": [1000, 1031]},"
    "\"dev\": {\"dtype\": \"u32\", \"shape\": [300, 257], \"placement\": \"device\"},"
    "\"sig\": {\"dtype\": \"f32\", \"shape\": [2], \"zone\": \"signal\"}}}";

#define NFIELDS 5
static const char *const names[NFIELDS] = {"tag", "odd", "mat", "big", "dev"};

static void make_root(const char *base)
{
    cr_assert_eq(dfx_make(base, "test-ckpt", 0), 0, "mkdtemp: %s", strerror(errno));
}

static theus_state *open_dir(const theus_durable_options *o)
{
    theus_state *st = NULL;
    int rc = theus_state_open_durable(dfx_dir, schema, NULL, o, &st);
    cr_assert_eq(rc, THEUS_OK, "open: %s: %s", theus_strerror(rc), theus_last_error_message());
    return st;
}

static size_t field_bytes(theus_state *st, const char *name)
{
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, name, &fi), THEUS_OK);
    return fi.nbytes;
}

static void *read_all(theus_state *st, const char *name)
{
    size_t n = field_bytes(st, name);
    void *p = malloc(n);
    cr_assert_not_null(p);
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, name, NULL, p, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    return p;
}

/* Commit @n: tag = n and a few rows / elements of every field set from n, at places that
 * move with n (some runs cross the fields' ends). */
static uint64_t step(theus_state *st, uint64_t n)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "tag", NULL, &n, THEUS_MEM_HOST), THEUS_OK);
    unsigned char b[300];
    memset(b, (int)(n & 0xff), sizeof b);
    int64_t o = (int64_t)((n * 997) % 4099);
    int64_t oe = o + 300 > 4099 ? 4099 : o + 300;
    theus_region ro = {.ndim = 1, .start = {o}, .stop = {oe}};
    cr_assert_eq(theus_tx_write(tx, "odd", &ro, b, THEUS_MEM_HOST), THEUS_OK);
    double m[5];
    for (int i = 0; i < 5; i++)
        m[i] = (double)n + i * 0.25;
    theus_region rm = {.ndim = 2, .start = {(int64_t)(n % 7), 0}, .stop = {(int64_t)(n % 7) + 1, 5}};
    cr_assert_eq(theus_tx_write(tx, "mat", &rm, m, THEUS_MEM_HOST), THEUS_OK);
    static float row[3 * 1031];
    for (int i = 0; i < 3 * 1031; i++)
        row[i] = (float)n + (float)i;
    int64_t r = (int64_t)((n * 389) % 998);
    theus_region rb = {.ndim = 2, .start = {r, 0}, .stop = {r + 3, 1031}};
    cr_assert_eq(theus_tx_write(tx, "big", &rb, row, THEUS_MEM_HOST), THEUS_OK);
    static uint32_t drow[257];
    for (int i = 0; i < 257; i++)
        drow[i] = (uint32_t)(n * 1000 + (uint64_t)i);
    int64_t dr = (int64_t)((n * 113) % 300);
    theus_region rd = {.ndim = 2, .start = {dr, 0}, .stop = {dr + 1, 257}};
    cr_assert_eq(theus_tx_write(tx, "dev", &rd, drow, THEUS_MEM_HOST), THEUS_OK);
    uint64_t v = 0;
    int rc = theus_tx_commit(tx, &v);
    cr_assert_eq(rc, THEUS_OK, "commit: %s", theus_last_error_message());
    return v;
}

/* Every persisted field of @a byte for byte equal to @b's, and the same versions. */
static void same_state(theus_state *a, theus_state *b)
{
    cr_assert_eq(theus_state_version(a), theus_state_version(b));
    for (int k = 0; k < NFIELDS; k++) {
        void *x = read_all(a, names[k]), *y = read_all(b, names[k]);
        cr_assert_eq(memcmp(x, y, field_bytes(a, names[k])), 0, "field %s differs at version %llu",
                     names[k], (unsigned long long)theus_state_version(a));
        free(x);
        free(y);
        theus_field_info fa, fb;
        theus_state_field_info(a, names[k], &fa);
        theus_state_field_info(b, names[k], &fb);
        cr_assert_eq(fa.version, fb.version, "field %s: version %llu vs %llu", names[k],
                     (unsigned long long)fa.version, (unsigned long long)fb.version);
    }
}

static size_t count_files(const char *prefix, const char *suffix)
{
    DIR *d = opendir(dfx_dir);
    cr_assert_not_null(d);
    struct dirent *e;
    size_t n = 0, sl = strlen(suffix);
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0 && l >= sl &&
             strcmp(e->d_name + l - sl, suffix) == 0;
    }
    closedir(d);
    return n;
}

/* A reference: a plain state given the same commits. */
static theus_state *reference(uint64_t upto)
{
    theus_state *ref = NULL;
    cr_assert_eq(theus_state_create(schema, NULL, &ref), THEUS_OK);
    for (uint64_t n = 1; n < upto; n++)
        step(ref, n);
    return ref;
}

/* Full checkpoint, then incremental ones between commits: the segment count stays, reopening
 * gives the same state, and every version since the creation can be rebuilt. */
static void chain_in_one_segment(const char *base)
{
    make_root(base);
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.keep_checkpoints = 8;
    theus_state *st = open_dir(&o);
    for (uint64_t n = 1; n <= 4; n++)
        step(st, n);
    uint64_t v = 0;
    cr_assert_eq(theus_state_checkpoint(st, 0, &v), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(v, 5);
    size_t segs = count_files("wal-", ".log");
    cr_assert_eq(segs, 2, "a full checkpoint begins a segment");
    uint64_t n = 5;
    for (int k = 0; k < 4; k++) {
        for (int j = 0; j <= k; j++)
            step(st, n++);
        cr_assert_eq(theus_state_checkpoint(st, 1, &v), THEUS_OK, "%s", theus_last_error_message());
        cr_assert_eq(v, n);
        cr_assert_eq(count_files("wal-", ".log"), segs, "an incremental checkpoint keeps the segment");
    }
    cr_assert_eq(count_files("ckpt-", ".inc.safetensors"), 4);
    step(st, n++);
    step(st, n++);
    theus_state_destroy(st);

    theus_state *ref = reference(n);
    st = open_dir(&o);
    same_state(st, ref);
    theus_durable_info info;
    cr_assert_eq(theus_state_durable_info(st, &info), THEUS_OK);
    cr_assert_eq(info.checkpoint_version, v, "recovered from the newest incremental");
    cr_assert_eq(info.records_replayed, 2);
    theus_state_destroy(st);
    theus_state_destroy(ref);

    uint64_t lo, hi;
    cr_assert_eq(theus_state_versions(dfx_dir, &lo, &hi), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(lo, 1);
    cr_assert_eq(hi, n);
    for (uint64_t t = lo; t <= hi; t++) {
        theus_state *old = NULL;
        int rc = theus_state_open_version(dfx_dir, t, &old);
        cr_assert_eq(rc, THEUS_OK, "version %llu: %s", (unsigned long long)t,
                     theus_last_error_message());
        theus_state *r = reference(t);
        same_state(old, r);
        theus_state_destroy(r);
        theus_state_destroy(old);
    }
}

Test(durable_ckpt, incremental_chain_in_one_log_segment)
{
    chain_in_one_segment(NULL);
}

/* The staged path of device and pinned fields (copies through the backend, the full writer's
 * two buffers and second thread), which a machine without a GPU takes only when told. */
Test(durable_ckpt, incremental_chain_through_the_staged_path)
{
    stfile_test_staged = 1; /* this test's process only (each test runs in its own) */
    chain_in_one_segment(NULL);
}

Test(durable_ckpt, incremental_chain_on_tmpfs)
{
    /* Another file system; tmpfs before Linux 6.6 refuses O_DIRECT, and the files then go
     * through the page cache. */
    struct stat sb;
    if (stat("/dev/shm", &sb) != 0 || !S_ISDIR(sb.st_mode) || access("/dev/shm", W_OK) != 0)
        cr_skip_test("no writable /dev/shm");
    chain_in_one_segment("/dev/shm");
}

Test(durable_ckpt, full_checkpoint_after_a_chain_removes_what_it_covers)
{
    make_root(NULL);
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.keep_checkpoints = 1;
    theus_state *st = open_dir(&o);
    uint64_t n = 1;
    for (; n <= 3; n++)
        step(st, n);
    cr_assert_eq(theus_state_checkpoint(st, 0, NULL), THEUS_OK);
    for (int k = 0; k < 3; k++) {
        step(st, n++);
        cr_assert_eq(theus_state_checkpoint(st, 1, NULL), THEUS_OK, "%s", theus_last_error_message());
    }
    /* keep 1: the newest incremental and the full one it chains back to. */
    cr_assert_eq(count_files("ckpt-", ".safetensors"), 4);
    step(st, n++);
    uint64_t v = 0;
    cr_assert_eq(theus_state_checkpoint(st, 0, &v), THEUS_OK);
    cr_assert_eq(count_files("ckpt-", ".safetensors"), 1, "the chain went with its full one");
    cr_assert_eq(count_files("wal-", ".log"), 1, "segments before the full checkpoint went");
    step(st, n++);
    theus_state_destroy(st);
    theus_state *ref = reference(n);
    st = open_dir(&o);
    same_state(st, ref);
    theus_state_destroy(st);
    theus_state_destroy(ref);
    uint64_t lo, hi;
    cr_assert_eq(theus_state_versions(dfx_dir, &lo, &hi), THEUS_OK);
    cr_assert_eq(lo, v);
    cr_assert_eq(hi, n);
}

/* A child commits, checkpoints (full, then incremental), commits on, reports each version
 * it got back through a pipe and kills itself right after an incremental checkpoint or
 * after the commits that follow one; the parent recovers every reported version. */
static void killed_after_incremental(theus_sync sync, int commits_after)
{
    make_root(NULL);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        close(fds[0]);
        theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
        o.sync = sync;
        theus_state *st = NULL;
        if (theus_state_open_durable(dfx_dir, schema, NULL, &o, &st) != THEUS_OK)
            _exit(2);
        uint64_t n = 1, v = 0;
        for (; n <= 3; n++)
            step(st, n);
        if (theus_state_checkpoint(st, 0, NULL) != THEUS_OK)
            _exit(3);
        for (int k = 0; k < 3; k++) {
            step(st, n++);
            step(st, n++);
            if (theus_state_checkpoint(st, 1, &v) != THEUS_OK)
                _exit(4);
        }
        for (int k = 0; k < commits_after; k++)
            v = step(st, n++);
        if (write(fds[1], &v, sizeof v) != (ssize_t)sizeof v)
            _exit(5);
        raise(SIGKILL); /* no destroy: the log is left as a crash leaves it */
        _exit(6);
    }
    close(fds[1]);
    uint64_t acked = 0;
    ssize_t got = read(fds[0], &acked, sizeof acked);
    close(fds[0]);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
    cr_assert_eq(got, (ssize_t)sizeof acked);
    theus_state *st = NULL;
    int rc = theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &st);
    cr_assert_eq(rc, THEUS_OK, "recover: %s", theus_last_error_message());
    cr_assert_eq(theus_state_version(st), acked);
    theus_state *ref = reference(acked);
    same_state(st, ref);
    theus_state_destroy(ref);
    /* And the log goes on from there. */
    step(st, acked);
    theus_state_destroy(st);
    st = open_dir(NULL);
    cr_assert_eq(theus_state_version(st), acked + 1);
    theus_state_destroy(st);
}

Test(durable_ckpt, killed_right_after_an_incremental_checkpoint_sync_commit)
{
    killed_after_incremental(THEUS_SYNC_COMMIT, 0);
}

Test(durable_ckpt, killed_after_commits_past_an_incremental_checkpoint_sync_commit)
{
    killed_after_incremental(THEUS_SYNC_COMMIT, 5);
}

Test(durable_ckpt, killed_after_an_incremental_checkpoint_sync_group)
{
    killed_after_incremental(THEUS_SYNC_GROUP, 0);
    dfx_cleanup();
    killed_after_incremental(THEUS_SYNC_GROUP, 3);
}

Test(durable_ckpt, killed_after_an_incremental_checkpoint_sync_none)
{
    killed_after_incremental(THEUS_SYNC_NONE, 0);
    dfx_cleanup();
    killed_after_incremental(THEUS_SYNC_NONE, 3);
}

static void copy_file(const char *from, const char *to, off_t keep)
{
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(in >= 0 && out >= 0);
    static char buf[1 << 16];
    off_t done = 0;
    ssize_t r;
    while (done < keep && (r = read(in, buf, sizeof buf)) > 0) {
        size_t w = (size_t)(keep - done < r ? keep - done : r);
        cr_assert_eq(write(out, buf, w), (ssize_t)w);
        done += (off_t)w;
    }
    close(in);
    close(out);
}

/* Killed inside an incremental checkpoint, before its rename: a part-written temporary is
 * left, which the next open removes; the state is the one the log holds. */
Test(durable_ckpt, temporary_of_an_interrupted_incremental_is_removed)
{
    make_root(NULL);
    theus_state *st = open_dir(NULL);
    uint64_t n = 1, v = 0;
    for (; n <= 3; n++)
        step(st, n);
    cr_assert_eq(theus_state_checkpoint(st, 0, NULL), THEUS_OK);
    step(st, n++);
    cr_assert_eq(theus_state_checkpoint(st, 1, &v), THEUS_OK);
    step(st, n++);
    theus_state_destroy(st);
    char inc[600], tmp[700];
    snprintf(inc, sizeof inc, "%s/ckpt-%016llx.inc.safetensors", dfx_dir, (unsigned long long)v);
    snprintf(tmp, sizeof tmp, "%s/ckpt-%016llx.inc.safetensors.tmp.%d.7", dfx_dir,
             (unsigned long long)(v + 1), (int)getpid());
    copy_file(inc, tmp, 5000);
    st = open_dir(NULL);
    cr_assert_eq(theus_state_version(st), n);
    cr_assert_eq(access(tmp, F_OK), -1, "the temporary is gone");
    theus_state *ref = reference(n);
    same_state(st, ref);
    theus_state_destroy(ref);
    theus_state_destroy(st);
}

/* A damaged incremental checkpoint is THEUS_ECORRUPT naming it, never an older state. */
Test(durable_ckpt, damaged_incremental_is_corruption_naming_the_file)
{
    make_root(NULL);
    theus_state *st = open_dir(NULL);
    uint64_t n = 1, v = 0;
    for (; n <= 3; n++)
        step(st, n);
    cr_assert_eq(theus_state_checkpoint(st, 0, NULL), THEUS_OK);
    step(st, n++);
    cr_assert_eq(theus_state_checkpoint(st, 1, &v), THEUS_OK);
    theus_state_destroy(st);
    char inc[600], save[700];
    snprintf(inc, sizeof inc, "%s/ckpt-%016llx.inc.safetensors", dfx_dir, (unsigned long long)v);
    snprintf(save, sizeof save, "%s/saved", dfx_root);
    struct stat sb;
    cr_assert_eq(stat(inc, &sb), 0);
    copy_file(inc, save, sb.st_size);
    /* A flipped byte in the last tensor's bytes, then a file cut short. */
    int fd = open(inc, O_RDWR);
    cr_assert(fd >= 0);
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, sb.st_size - 3), 1);
    c ^= 0x40;
    cr_assert_eq(pwrite(fd, &c, 1, sb.st_size - 3), 1);
    close(fd);
    const char *base = strrchr(inc, '/') + 1;
    for (int k = 0; k < 2; k++) {
        theus_state *bad = NULL;
        int rc = theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &bad);
        cr_assert_eq(rc, THEUS_ECORRUPT, "case %d: %s", k, theus_strerror(rc));
        cr_assert_null(bad);
        cr_assert_not_null(strstr(theus_last_error_message(), base), "case %d: %s", k,
                           theus_last_error_message());
        copy_file(save, inc, sb.st_size - 4096);
    }
    copy_file(save, inc, sb.st_size);
    st = open_dir(NULL);
    cr_assert_eq(theus_state_version(st), n);
    theus_state_destroy(st);
}

/* Full checkpoints of a field of several write chunks (its checksums taken on a second
 * thread while the chunks are written) while a thread commits: each file is exactly one
 * committed version — row r of "wide" holds rows[r] everywhere. */
#define W_ROWS 1024
#define W_COLS 6144 /* 24 MiB of f32: three 8 MiB chunks */
static const char *wide_schema =
    "{\"name\": \"wide\", \"fields\": {"
    "\"rows\": {\"dtype\": \"u32\", \"shape\": [1024]},"
    "\"wide\": {\"dtype\": \"f32\", \"shape\": [1024, 6144]}}}";

typedef ckpt_writer wide_writer;

static void *wide_loop(void *arg)
{
    wide_writer *w = arg;
    static float row[W_COLS];
    unsigned rng = 777;
    for (uint32_t tag = 1; !atomic_load(&w->stop); tag++) {
        rng = rng * 1103515245u + 12345u;
        int64_t r = (int64_t)((rng >> 8) % W_ROWS);
        for (int i = 0; i < W_COLS; i++)
            row[i] = (float)tag;
        theus_region rr = {.ndim = 1, .start = {r}, .stop = {r + 1}};
        theus_region rw = {.ndim = 2, .start = {r, 0}, .stop = {r + 1, W_COLS}};
        theus_tx *tx = NULL;
        if (theus_tx_begin(w->st, NULL, &tx) != THEUS_OK ||
            theus_tx_write(tx, "rows", &rr, &tag, THEUS_MEM_HOST) != THEUS_OK ||
            theus_tx_write(tx, "wide", &rw, row, THEUS_MEM_HOST) != THEUS_OK ||
            theus_tx_commit(tx, NULL) != THEUS_OK) {
            theus_tx_abort(tx);
            if (atomic_fetch_add(&w->failures, 1) > 100)
                atomic_store(&w->stop, 1);
            continue;
        }
        atomic_fetch_add(&w->commits, 1);
    }
    return NULL;
}

static void wide_while_committing(void)
{
    make_root(NULL);
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = THEUS_SYNC_NONE;
    o.keep_checkpoints = 4;
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, wide_schema, NULL, &o, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    wide_writer w = {.st = st};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, wide_loop, &w), 0);
    uint64_t versions[4], during = 0;
    int k = 0;
    cr_assert_eq(ckpt_while_committing(&w, 4, 10, 32, versions, &k, &during), THEUS_OK,
                 "checkpoint: %s", theus_last_error_message());
    atomic_store(&w.stop, 1);
    pthread_join(th, NULL);
    cr_assert_eq(w.failures, 0);
    theus_state_destroy(st);
    static uint32_t rows[W_ROWS];
    static float wide[W_ROWS * W_COLS];
    for (k = 0; k < 4; k++) {
        theus_state *old = NULL;
        int rc = theus_state_open_version(dfx_dir, versions[k], &old);
        cr_assert_eq(rc, THEUS_OK, "open version %llu: %s", (unsigned long long)versions[k],
                     theus_last_error_message());
        theus_tx *tx = NULL;
        cr_assert_eq(theus_tx_begin(old, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_read(tx, "rows", NULL, rows, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_read(tx, "wide", NULL, wide, THEUS_MEM_HOST), THEUS_OK);
        theus_tx_abort(tx);
        for (int r = 0; r < W_ROWS; r++)
            for (int i = 0; i < W_COLS; i += 97)
                cr_assert_eq(wide[(size_t)r * W_COLS + (size_t)i], (float)rows[r],
                             "version %llu: row %d", (unsigned long long)versions[k], r);
        theus_state_destroy(old);
    }
}

/* The log at an incremental checkpoint: under THEUS_SYNC_COMMIT every record is synced
 * already, and the checkpoint adds no log fdatasync; under THEUS_SYNC_GROUP a group whose
 * sync is still due (made so here by hand: a group leader between its write and its sync)
 * is synced before the checkpoint's file exists. */
Test(durable_ckpt, log_synced_up_to_an_incremental_checkpoint)
{
    make_root(NULL);
    theus_state *st = open_dir(NULL);
    uint64_t n = 1;
    for (; n <= 3; n++)
        step(st, n);
    cr_assert_eq(theus_state_checkpoint(st, 0, NULL), THEUS_OK);
    step(st, n++);
    theus_durable_stats a, b;
    cr_assert_eq(theus_state_durable_stats(st, &a), THEUS_OK);
    cr_assert_eq(theus_state_checkpoint(st, 1, NULL), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(theus_state_durable_stats(st, &b), THEUS_OK);
    cr_assert_eq(b.log_syncs, a.log_syncs, "SYNC_COMMIT: nothing left to sync");
    theus_state_destroy(st);
    dfx_cleanup();

    make_root(NULL);
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = THEUS_SYNC_GROUP;
    st = open_dir(&o);
    for (n = 1; n <= 3; n++)
        step(st, n);
    cr_assert_eq(theus_state_checkpoint(st, 0, NULL), THEUS_OK);
    step(st, n++);
    durable *d = durable_of(st);
    cr_assert_not_null(d);
    pthread_mutex_lock(&d->w.m);
    cr_assert_eq(d->w.synced, d->w.written, "a group commit returns once synced");
    d->w.synced--; /* the last record's sync is due */
    pthread_mutex_unlock(&d->w.m);
    cr_assert_eq(theus_state_durable_stats(st, &a), THEUS_OK);
    cr_assert_eq(theus_state_checkpoint(st, 1, NULL), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(theus_state_durable_stats(st, &b), THEUS_OK);
    pthread_mutex_lock(&d->w.m);
    cr_assert_eq(d->w.synced, d->w.written, "the checkpoint synced the due group");
    pthread_mutex_unlock(&d->w.m);
    cr_assert_eq(b.log_syncs, a.log_syncs + 1);
    step(st, n++);
    theus_state_destroy(st);
    theus_state *ref = reference(n);
    st = open_dir(&o);
    same_state(st, ref);
    theus_state_destroy(st);
    theus_state_destroy(ref);
}

Test(durable_ckpt, full_checkpoints_of_a_multi_chunk_field_while_committing)
{
    wide_while_committing();
}

Test(durable_ckpt, full_checkpoints_while_committing_through_the_staged_path)
{
    stfile_test_staged = 1;
    wide_while_committing();
}
