/* Durable states: create and recover, every sync policy, const fields through the log,
 * full and incremental checkpoints, retention and time travel (read-only), bad directories,
 * torn logs cut at every byte of the last record, flipped bytes in earlier records, group
 * commit from several threads. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
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

#include "ckpt_while.h"
#include "durable_fixture.h"
#include "publish.h"

static void setup(void)
{
    cr_assert_eq(dfx_make(NULL, "test-dur", 0), 0, "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
    dfx_cleanup();
}

TestSuite(durable, .init = setup, .fini = teardown);

static const char *schema =
    "{\"name\": \"dur\", \"fields\": {"
    "\"counter\": {\"dtype\": \"i64\", \"shape\": []},"
    "\"a\": {\"dtype\": \"u64\", \"shape\": [4]},"
    "\"b\": {\"dtype\": \"u64\", \"shape\": [4]},"
    "\"big\": {\"dtype\": \"f32\", \"shape\": [256, 1024], \"placement\": \"device\"},"
    "\"seed\": {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"},"
    "\"sig\": {\"dtype\": \"f32\", \"shape\": [2], \"zone\": \"signal\"}}}";

static theus_state *open_dir(const theus_durable_options *o)
{
    theus_state *st = NULL;
    int rc = theus_state_open_durable(dfx_dir, schema, NULL, o, &st);
    cr_assert_eq(rc, THEUS_OK, "open: %s: %s", theus_strerror(rc), theus_last_error_message());
    return st;
}

/* counter += 1, a = b = tag, one row of big += 1: one commit. */
static uint64_t step(theus_state *st, uint64_t tag)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    int64_t one = 1;
    uint64_t t[4] = {tag, tag, tag, tag};
    static float row[1024];
    for (int i = 0; i < 1024; i++)
        row[i] = 1.0f;
    theus_region r = {.ndim = 2, .start = {(int64_t)(tag % 256), 0},
                      .stop = {(int64_t)(tag % 256) + 1, 1024}};
    cr_assert_eq(theus_tx_add(tx, "counter", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "a", NULL, t, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "b", NULL, t, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "big", &r, row, THEUS_MEM_HOST), THEUS_OK);
    uint64_t v = 0;
    int rc = theus_tx_commit(tx, &v);
    cr_assert_eq(rc, THEUS_OK, "commit: %s", theus_last_error_message());
    return v;
}

static void read_field(theus_state *st, const char *name, void *dst)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, name, NULL, dst, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
}

/* The invariants of a state built by step(): counter == version - 1, a == b == last tag,
 * big's total == 1024 x counter. */
static void check_consistent(theus_state *st)
{
    uint64_t v = theus_state_version(st);
    int64_t c;
    uint64_t a[4], b[4];
    static float big[256 * 1024];
    read_field(st, "counter", &c);
    read_field(st, "a", a);
    read_field(st, "b", b);
    read_field(st, "big", big);
    cr_assert_eq((uint64_t)c, v - 1, "counter %lld at version %llu", (long long)c,
                 (unsigned long long)v);
    cr_assert_eq(memcmp(a, b, sizeof a), 0);
    if (v > 1)
        cr_assert_eq(a[0], v - 1, "a holds the tag of the last commit");
    double sum = 0;
    for (int i = 0; i < 256 * 1024; i++)
        sum += big[i];
    cr_assert_eq(sum, 1024.0 * (double)c);
}

Test(durable, create_commit_recover_every_policy)
{
    for (int pol = 0; pol < 3; pol++) {
        dfx_rm_tree(dfx_dir);
        theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
        o.sync = (theus_sync)pol;
        theus_state *st = open_dir(&o);
        for (uint64_t i = 1; i <= 20; i++)
            cr_assert_eq(step(st, i), i + 1);
        theus_state_destroy(st);
        st = open_dir(&o);
        cr_assert_eq(theus_state_version(st), 21);
        check_consistent(st);
        theus_durable_info info;
        cr_assert_eq(theus_state_durable_info(st, &info), THEUS_OK);
        cr_assert_eq(info.records_replayed, 20);
        cr_assert_eq(info.torn_bytes, 0);
        cr_assert_eq(info.checkpoint_version, 1);
        step(st, 21);
        theus_state_destroy(st);
        /* What a crash in the middle of a checkpoint leaves: removed at the next open. */
        char tmp[600];
        snprintf(tmp, sizeof tmp, "%s/ckpt-0000000000000016.safetensors.tmp.1.0", dfx_dir);
        FILE *fp = fopen(tmp, "w");
        fputs("partial", fp);
        fclose(fp);
        theus_state *again = NULL;
        cr_assert_eq(theus_state_open_durable(dfx_dir, NULL, NULL, &o, &again), THEUS_OK,
                     "a NULL schema recovers");
        cr_assert_eq(theus_state_version(again), 22);
        check_consistent(again);
        cr_assert_neq(access(tmp, F_OK), 0, "temporary file removed");
        theus_state_destroy(again);
    }
}

Test(durable, const_fields_and_init_through_the_log)
{
    theus_state *st = open_dir(NULL);
    uint64_t seed = 4242;
    cr_assert_eq(theus_state_init_field(st, "seed", &seed, THEUS_MEM_HOST), THEUS_OK);
    step(st, 1);
    theus_state_destroy(st);
    st = open_dir(NULL);
    uint64_t s = 0;
    read_field(st, "seed", &s);
    cr_assert_eq(s, 4242);
    cr_assert_eq(theus_state_version(st), 2);
    theus_state_destroy(st);
}

static size_t count_files(const char *prefix)
{
    DIR *d = opendir(dfx_dir);
    cr_assert_not_null(d);
    struct dirent *e;
    size_t n = 0;
    while ((e = readdir(d)))
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

static off_t file_size(const char *path)
{
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0, "%s", path);
    return sb.st_size;
}

Test(durable, checkpoints_full_incremental_and_recovery)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.keep_checkpoints = 3;
    theus_state *st = open_dir(&o);
    for (uint64_t i = 1; i <= 5; i++)
        step(st, i);
    uint64_t v = 0;
    cr_assert_eq(theus_state_checkpoint(st, 1, &v), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(v, 6, "the first checkpoint is full even when asked incremental");
    char p[512];
    snprintf(p, sizeof p, "%s/ckpt-%016llx.safetensors", dfx_dir, 6ull);
    off_t full = file_size(p);
    cr_assert_gt(full, 1 << 20);
    step(st, 6);
    cr_assert_eq(theus_state_checkpoint(st, 1, &v), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(v, 7);
    snprintf(p, sizeof p, "%s/ckpt-%016llx.inc.safetensors", dfx_dir, 7ull);
    off_t inc = file_size(p);
    cr_assert_lt(inc, full / 20, "incremental %lld vs full %lld", (long long)inc, (long long)full);
    step(st, 7);
    step(st, 8);
    cr_assert_eq(theus_state_checkpoint(st, 1, &v), THEUS_OK);
    cr_assert_eq(v, 9);
    step(st, 9);
    theus_state_destroy(st);

    st = open_dir(&o);
    cr_assert_eq(theus_state_version(st), 10);
    check_consistent(st);
    theus_durable_info info;
    theus_state_durable_info(st, &info);
    cr_assert_eq(info.checkpoint_version, 9);
    cr_assert_eq(info.records_replayed, 1);
    /* An unchanged state: no new file. */
    cr_assert_eq(theus_state_checkpoint(st, 0, &v), THEUS_OK);
    cr_assert_eq(theus_state_checkpoint(st, 0, &v), THEUS_OK);
    cr_assert_eq(v, 10);
    theus_state_destroy(st);
    st = open_dir(&o);
    cr_assert_eq(theus_state_version(st), 10);
    check_consistent(st);
    theus_state_destroy(st);
}

/* A full checkpoint asked for right after an incremental one, nothing committed between:
 * both are of the same version. The incremental file goes once the full one is there; one
 * left behind (a crash between the two) does not stop a recovery, which uses the full one. */
Test(durable, full_checkpoint_at_the_version_of_an_incremental_one)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.keep_checkpoints = 4;
    theus_state *st = open_dir(&o);
    step(st, 1);
    uint64_t v = 0;
    cr_assert_eq(theus_state_checkpoint(st, 0, &v), THEUS_OK, "%s", theus_last_error_message());
    step(st, 2);
    cr_assert_eq(theus_state_checkpoint(st, 1, &v), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(v, 3);
    char inc[512], full[512], keep[512];
    snprintf(inc, sizeof inc, "%s/ckpt-%016llx.inc.safetensors", dfx_dir, 3ull);
    snprintf(full, sizeof full, "%s/ckpt-%016llx.safetensors", dfx_dir, 3ull);
    snprintf(keep, sizeof keep, "%s/../kept.inc", dfx_dir);
    cr_assert_eq(access(inc, F_OK), 0, "the incremental checkpoint of version 3 is written");
    cr_assert_eq(link(inc, keep), 0, "link: %s", strerror(errno));
    cr_assert_eq(theus_state_checkpoint(st, 0, &v), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(v, 3);
    cr_assert_eq(access(full, F_OK), 0, "the full checkpoint of version 3 is written");
    cr_assert_neq(access(inc, F_OK), 0, "the incremental one of the same version is removed");
    step(st, 3);
    theus_state_destroy(st);

    /* As after a crash between the full checkpoint and the removal. */
    cr_assert_eq(rename(keep, inc), 0, "rename: %s", strerror(errno));
    st = open_dir(&o);
    cr_assert_eq(theus_state_version(st), 4);
    check_consistent(st);
    theus_durable_info info;
    theus_state_durable_info(st, &info);
    cr_assert_eq(info.checkpoint_version, 3);
    cr_assert_eq(info.records_replayed, 1);
    uint64_t oldest = 0, newest = 0;
    cr_assert_eq(theus_state_versions(dfx_dir, &oldest, &newest), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(newest, 4);
    step(st, 4);
    cr_assert_eq(theus_state_checkpoint(st, 0, &v), THEUS_OK, "%s", theus_last_error_message());
    theus_state_destroy(st);
    st = open_dir(&o);
    cr_assert_eq(theus_state_version(st), 5);
    check_consistent(st);
    theus_state_destroy(st);
}

Test(durable, retention_and_time_travel)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.keep_checkpoints = 2;
    o.segment_bytes = 4096; /* many segments */
    theus_state *st = open_dir(&o);
    uint64_t lo, hi;
    for (uint64_t i = 1; i <= 30; i++) {
        step(st, i);
        if (i == 10 || i == 20)
            cr_assert_eq(theus_state_checkpoint(st, 0, NULL), THEUS_OK);
    }
    cr_assert_eq(theus_state_versions(dfx_dir, &lo, &hi), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(lo, 1, "nothing removed yet: the log reaches back to the creation");
    cr_assert_eq(hi, 31);
    cr_assert_eq(count_files("ckpt-"), 2);
    for (uint64_t v = lo; v <= hi; v++) {
        theus_state *old = NULL;
        int rc = theus_state_open_version(dfx_dir, v, &old);
        cr_assert_eq(rc, THEUS_OK, "version %llu: %s", (unsigned long long)v, theus_last_error_message());
        cr_assert_eq(theus_state_version(old), v);
        check_consistent(old);
        theus_tx *tx = NULL;
        int64_t one = 1;
        theus_tx_begin(old, NULL, &tx);
        theus_tx_add(tx, "counter", NULL, &one, THEUS_MEM_HOST);
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_EPERM);
        uint64_t seed = 1;
        cr_assert_neq(theus_state_init_field(old, "seed", &seed, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_state_checkpoint(old, 0, NULL), THEUS_EINVAL);
        theus_state_destroy(old);
    }
    theus_state *none = NULL;
    cr_assert_eq(theus_state_open_version(dfx_dir, 99, &none), THEUS_ENOENT);
    cr_assert_null(none);
    /* A third checkpoint: the one of version 11 goes, and the log before version 21. */
    cr_assert_eq(theus_state_checkpoint(st, 0, NULL), THEUS_OK);
    cr_assert_eq(count_files("ckpt-"), 2);
    cr_assert_eq(theus_state_versions(dfx_dir, &lo, &hi), THEUS_OK);
    cr_assert_eq(lo, 21);
    cr_assert_eq(hi, 31);
    cr_assert_eq(theus_state_open_version(dfx_dir, 5, &none), THEUS_ENOENT);
    cr_assert_null(none);
    cr_assert_eq(theus_state_open_version(dfx_dir, 25, &none), THEUS_OK);
    check_consistent(none);
    theus_state_destroy(none);
    theus_state_destroy(st);
    /* The log segments wholly before the oldest checkpoint are gone. */
    DIR *d = opendir(dfx_dir);
    struct dirent *e;
    while ((e = readdir(d))) {
        unsigned long long s;
        if (sscanf(e->d_name, "wal-%16llx.log", &s) == 1)
            cr_assert_geq(s, 15, "segment %s should be gone", e->d_name);
    }
    closedir(d);
}

Test(durable, bad_directories_and_schemas)
{
    theus_state *st = open_dir(NULL);
    theus_state *second = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, schema, NULL, NULL, &second), THEUS_EBUSY);
    step(st, 1);
    theus_state_destroy(st);
    const char *other = "{\"name\": \"dur\", \"fields\": {\"counter\": {\"dtype\": \"i32\", \"shape\": []}}}";
    cr_assert_eq(theus_state_open_durable(dfx_dir, other, NULL, NULL, &second), THEUS_ESCHEMA);
    cr_assert_null(second);
    chmod(dfx_dir, 0770);
    cr_assert_eq(theus_state_open_durable(dfx_dir, schema, NULL, NULL, &second), THEUS_EPERM);
    cr_assert_not_null(strstr(theus_last_error_message(), "writable by group"));
    chmod(dfx_dir, 0700);
    theus_durable_options bad = THEUS_DURABLE_OPTIONS_INIT;
    bad.sync = (theus_sync)7;
    cr_assert_eq(theus_state_open_durable(dfx_dir, schema, NULL, &bad, &second), THEUS_EINVAL);
    /* Not a theus directory. */
    char p[512];
    snprintf(p, sizeof p, "%s/other", dfx_root);
    mkdir(p, 0700);
    char f[600];
    snprintf(f, sizeof f, "%s/notes.txt", p);
    FILE *fp = fopen(f, "w");
    fputs("hello", fp);
    fclose(fp);
    snprintf(f, sizeof f, "%s/wal-0000000000000001.log", p);
    fp = fopen(f, "w");
    fputs("this is not a log at all, not at all", fp);
    fclose(fp);
    cr_assert_eq(theus_state_open_durable(p, schema, NULL, NULL, &second), THEUS_ECORRUPT);
    cr_assert_eq(theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &second), THEUS_OK);
    theus_state_destroy(second);
    /* A log segment that is not a log. */
    snprintf(f, sizeof f, "%s/wal-0000000000000001.log", dfx_dir);
    fp = fopen(f, "r+");
    fputs("NOTALOG!", fp);
    fclose(fp);
    cr_assert_eq(theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &second), THEUS_ECORRUPT);
    cr_assert_not_null(strstr(theus_last_error_message(), "wal-0000000000000001.log"),
                       "%s", theus_last_error_message());
    cr_assert_not_null(strstr(theus_last_error_message(), "byte 0"));
    /* Creating needs a schema; a file is not a directory. */
    snprintf(p, sizeof p, "%s/fresh", dfx_root);
    cr_assert_eq(theus_state_open_durable(p, NULL, NULL, NULL, &second), THEUS_EINVAL);
    cr_assert_eq(theus_state_open_durable(f, schema, NULL, NULL, &second), THEUS_EINVAL);
}

/* ---- torn and corrupt logs ----------------------------------------------------------- */

static void copy_file(const char *from, const char *to, off_t n)
{
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(in >= 0 && out >= 0);
    char *buf = malloc((size_t)n + 1);
    cr_assert_eq(read(in, buf, (size_t)n), n);
    cr_assert_eq(write(out, buf, (size_t)n), n);
    free(buf);
    close(in);
    close(out);
}

/* A small state (no big field) so that cutting at every byte stays quick. */
static const char *tiny = "{\"name\": \"tiny\", \"fields\": {"
                          "\"counter\": {\"dtype\": \"i64\", \"shape\": []},"
                          "\"a\": {\"dtype\": \"u64\", \"shape\": [4]},"
                          "\"b\": {\"dtype\": \"u64\", \"shape\": [4]}}}";

static uint64_t tiny_step(theus_state *st, uint64_t tag)
{
    theus_tx *tx = NULL;
    theus_tx_begin(st, NULL, &tx);
    int64_t one = 1;
    uint64_t t[4] = {tag, tag, tag, tag};
    theus_tx_add(tx, "counter", NULL, &one, THEUS_MEM_HOST);
    theus_tx_write(tx, "a", NULL, t, THEUS_MEM_HOST);
    theus_tx_write(tx, "b", NULL, t, THEUS_MEM_HOST);
    uint64_t v = 0;
    cr_assert_eq(theus_tx_commit(tx, &v), THEUS_OK);
    return v;
}

static void tiny_check(theus_state *st, uint64_t want)
{
    cr_assert_eq(theus_state_version(st), want);
    int64_t c;
    uint64_t a[4], b[4];
    read_field(st, "counter", &c);
    read_field(st, "a", a);
    read_field(st, "b", b);
    cr_assert_eq((uint64_t)c, want - 1);
    cr_assert_eq(memcmp(a, b, sizeof a), 0);
    cr_assert_eq(a[0], want - 1);
}

Test(durable, torn_tail_cut_at_every_byte_of_the_last_record)
{
    /* Written without preallocation (the log grows record by record: sizes measured while
     * it is open are its records'), recovered with the defaults (preallocation on). */
    theus_durable_options off = THEUS_DURABLE_OPTIONS_INIT;
    off.prealloc_bytes = THEUS_PREALLOC_OFF;
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, tiny, NULL, &off, &st), THEUS_OK);
    for (uint64_t i = 1; i <= 4; i++)
        tiny_step(st, i);
    char seg[512], saved[600];
    snprintf(seg, sizeof seg, "%s/wal-0000000000000001.log", dfx_dir);
    off_t before = file_size(seg);
    tiny_step(st, 5);
    off_t after = file_size(seg);
    theus_state_destroy(st);
    snprintf(saved, sizeof saved, "%s/saved.log", dfx_root);
    copy_file(seg, saved, after);
    for (off_t cut = before; cut < after; cut++) {
        copy_file(saved, seg, cut);
        theus_state *r = NULL;
        int rc = theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &r);
        cr_assert_eq(rc, THEUS_OK, "cut at %lld: %s", (long long)cut, theus_last_error_message());
        tiny_check(r, 5);
        theus_durable_info info;
        theus_state_durable_info(r, &info);
        cr_assert_eq(info.torn_bytes, (uint64_t)(cut - before), "cut at %lld", (long long)cut);
        cr_assert_eq(info.torn_offset, (uint64_t)(cut == before ? 0 : before));
        theus_state_destroy(r);
        cr_assert_eq(file_size(seg), before, "the torn tail is cut off the file");
    }
    /* A torn tail is cut, and the next commits go on after it. */
    copy_file(saved, seg, after - 3);
    cr_assert_eq(theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &st), THEUS_OK);
    tiny_step(st, 5);
    theus_state_destroy(st);
    cr_assert_eq(theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &st), THEUS_OK);
    tiny_check(st, 6);
    theus_state_destroy(st);
}

Test(durable, flipped_bytes_in_earlier_records_are_corruption)
{
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, tiny, NULL, NULL, &st), THEUS_OK);
    for (uint64_t i = 1; i <= 6; i++)
        tiny_step(st, i);
    theus_state_destroy(st);
    char seg[512], saved[600];
    snprintf(seg, sizeof seg, "%s/wal-0000000000000001.log", dfx_dir);
    snprintf(saved, sizeof saved, "%s/saved.log", dfx_root);
    off_t size = file_size(seg);
    copy_file(seg, saved, size);
    /* Every byte of the segment head and of the first five records (the sixth is the last:
     * a damaged last record is a torn tail by definition). */
    int fd = open(saved, O_RDONLY);
    unsigned char *orig = malloc((size_t)size);
    cr_assert_eq(read(fd, orig, (size_t)size), size);
    close(fd);
    off_t last_start = size;
    {
        /* Find the last record: records are equal-sized here. */
        off_t rec = (size - 32) / 6;
        last_start = 32 + 5 * rec;
    }
    int corrupt = 0, same = 0;
    for (off_t at = 0; at < last_start; at++) {
        copy_file(saved, seg, size);
        fd = open(seg, O_WRONLY);
        unsigned char x = orig[at] ^ 0x5a;
        cr_assert_eq(pwrite(fd, &x, 1, at), 1);
        close(fd);
        theus_state *r = NULL;
        int rc = theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &r);
        if (rc == THEUS_OK) {
            tiny_check(r, 7); /* no effect: never an older state */
            theus_state_destroy(r);
            same++;
        } else {
            cr_assert_eq(rc, THEUS_ECORRUPT, "flip at %lld: %s", (long long)at,
                         theus_last_error_message());
            cr_assert_not_null(strstr(theus_last_error_message(), "byte "));
            corrupt++;
        }
    }
    cr_assert_gt(corrupt, 0);
    free(orig);
    copy_file(saved, seg, size);
    (void)same;
}

/* ---- preallocated logs ----------------------------------------------------------------------
 * With preallocation (the default) the open segment is extended with written zeros ahead of
 * its records: a zero tail is the clean end of the log, a record cut by zeros is a torn tail,
 * a cancelled record is zeroed, closed segments are cut to their last record. */

#define TEST_PREALLOC (16u * 1024u)

static unsigned char *read_all(const char *path, size_t *size)
{
    int fd = open(path, O_RDONLY);
    cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
    struct stat sb;
    cr_assert_eq(fstat(fd, &sb), 0);
    *size = (size_t)sb.st_size;
    unsigned char *p = malloc(*size + 1);
    cr_assert_not_null(p);
    cr_assert_eq(read(fd, p, *size), (ssize_t)*size);
    close(fd);
    return p;
}

static void write_all(const char *path, const unsigned char *p, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, p, size), (ssize_t)size);
    close(fd);
}

/* The record offsets of a segment image (heads only; stops at the first byte that does not
 * start a whole record): their count, the end of the last in *end. */
static int record_offsets(const unsigned char *p, size_t size, size_t *offs, int max,
                          size_t *end)
{
    size_t off = 32;
    int n = 0;
    while (off + 32 <= size && n < max) {
        uint32_t magic;
        uint64_t body;
        memcpy(&magic, p + off, 4);
        memcpy(&body, p + off + 16, 8);
        if (magic != 0x31525754u || body > size - off - 32)
            break;
        offs[n++] = off;
        off += 32 + (size_t)body;
    }
    *end = off;
    return n;
}

static int all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* A writer killed with its log open (no theus_state_destroy): 5 commits under @o, then
 * _exit. The segment keeps its preallocated zero tail. */
static void killed_writer(const theus_durable_options *o, int commits)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        theus_state *st = NULL;
        if (theus_state_open_durable(dfx_dir, tiny, NULL, o, &st) != THEUS_OK)
            _exit(3);
        for (int i = 1; i <= commits; i++)
            tiny_step(st, (uint64_t)i);
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer status %d", status);
}

static theus_state *reopen_ok(const theus_durable_options *o, uint64_t want, uint64_t torn_at,
                              uint64_t torn_bytes, const char *what, long long at)
{
    theus_state *r = NULL;
    int rc = theus_state_open_durable(dfx_dir, NULL, NULL, o, &r);
    cr_assert_eq(rc, THEUS_OK, "%s %lld: %s", what, at, theus_last_error_message());
    tiny_check(r, want);
    theus_durable_info info;
    cr_assert_eq(theus_state_durable_info(r, &info), THEUS_OK);
    cr_assert_eq(info.torn_bytes, torn_bytes, "%s %lld: torn bytes %llu", what, at,
                 (unsigned long long)info.torn_bytes);
    if (torn_bytes)
        cr_assert_eq(info.torn_offset, torn_at, "%s %lld", what, at);
    return r;
}

Test(durable, prealloc_zero_tail_after_a_clean_end_is_no_torn_tail)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.prealloc_bytes = TEST_PREALLOC;
    killed_writer(&o, 5);
    char seg[512];
    snprintf(seg, sizeof seg, "%s/wal-0000000000000001.log", dfx_dir);
    size_t size, end, offs[16];
    unsigned char *img = read_all(seg, &size);
    cr_assert_eq(record_offsets(img, size, offs, 16, &end), 5);
    cr_assert_gt(size, end, "the segment is preallocated ahead of its records");
    cr_assert_eq(size % 4096, 0);
    cr_assert(all_zero(img + end, size - end), "past the last record: zeros");
    free(img);
    theus_state *r = reopen_ok(NULL, 6, 0, 0, "zero tail", 0);
    theus_durable_stats ds;
    cr_assert_eq(theus_state_durable_stats(r, &ds), THEUS_OK);
    cr_assert_eq(ds.log_records, 0);
    tiny_step(r, 6);
    cr_assert_eq(theus_state_durable_stats(r, &ds), THEUS_OK);
    cr_assert_eq(ds.log_records, 1);
    cr_assert_eq(ds.log_syncs, 1, "THEUS_SYNC_COMMIT: one fdatasync per commit");
    theus_state_destroy(r);
    img = read_all(seg, &size);
    cr_assert_eq(record_offsets(img, size, offs, 16, &end), 6);
    cr_assert_eq(size, end, "a closed log is cut to its last record");
    free(img);
    r = reopen_ok(NULL, 7, 0, 0, "closed", 0);
    theus_state_destroy(r);
}

Test(durable, prealloc_torn_tail_zeroed_from_every_byte_of_the_last_record)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.prealloc_bytes = TEST_PREALLOC;
    killed_writer(&o, 5);
    char seg[512];
    snprintf(seg, sizeof seg, "%s/wal-0000000000000001.log", dfx_dir);
    size_t size, end, offs[16];
    unsigned char *orig = read_all(seg, &size);
    cr_assert_eq(record_offsets(orig, size, offs, 16, &end), 5);
    size_t last = offs[4];
    unsigned char *img = malloc(size);
    cr_assert_not_null(img);
    int torn = 0;
    for (size_t k = last; k < end; k++) {
        memcpy(img, orig, size);
        memset(img + k, 0, end - k);
        write_all(seg, img, size);
        int changed = !all_zero(orig + k, end - k);
        uint64_t want_torn = !changed || k == last ? 0 : k - last < 28 ? 28 : end - last;
        theus_state *r = reopen_ok(NULL, changed ? 5 : 6, last, want_torn, "zeroed from",
                                   (long long)k);
        theus_state_destroy(r);
        torn += want_torn > 0;
        off_t after = file_size(seg);
        cr_assert_eq(after, (off_t)(changed ? last : end), "zeroed from %zu: closed log of "
                     "%lld bytes", k, (long long)after);
    }
    cr_assert_gt(torn, 0);
    /* The log goes on after a zeroed tail. */
    memcpy(img, orig, size);
    memset(img + last + 40, 0, end - last - 40);
    write_all(seg, img, size);
    theus_state *r = reopen_ok(NULL, 5, last, end - last, "zeroed from", (long long)last + 40);
    tiny_step(r, 5);
    theus_state_destroy(r);
    r = reopen_ok(NULL, 6, 0, 0, "appended after the torn tail", 0);
    theus_state_destroy(r);
    free(img);
    free(orig);
}

Test(durable, prealloc_flipped_bytes_before_a_zero_tail_never_give_an_older_state)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.prealloc_bytes = TEST_PREALLOC;
    killed_writer(&o, 6);
    char seg[512];
    snprintf(seg, sizeof seg, "%s/wal-0000000000000001.log", dfx_dir);
    size_t size, end, offs[16];
    unsigned char *orig = read_all(seg, &size);
    cr_assert_eq(record_offsets(orig, size, offs, 16, &end), 6);
    unsigned char *img = malloc(size);
    cr_assert_not_null(img);
    int corrupt = 0, same = 0;
    /* Every byte of the head and of the five records before the last (a valid record
     * follows each); the last record's first byte (nothing valid after it: a torn last
     * record, dropped); then bytes of the zero tail (a torn "record" after the last one). */
    for (size_t at = 0; at < size; at += at < offs[5] ? 1 : at < end ? end - at : 61) {
        memcpy(img, orig, size);
        img[at] ^= 0x5a;
        write_all(seg, img, size);
        theus_state *r = NULL;
        int rc = theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &r);
        cr_assert(rc != THEUS_OK || at >= offs[5], "flip at %zu: not refused", at);
        if (rc == THEUS_OK) {
            tiny_check(r, at < end ? 6 : 7); /* never older than the log's valid records */
            theus_state_destroy(r);
            same++;
        } else {
            cr_assert_eq(rc, THEUS_ECORRUPT, "flip at %zu: %s", at, theus_last_error_message());
            cr_assert_not_null(strstr(theus_last_error_message(), "byte "));
            corrupt++;
        }
    }
    cr_assert_gt(corrupt, 0);
    cr_assert_gt(same, 0);
    free(img);
    free(orig);
}

/* ---- a power cut during the fdatasync of a preallocated log --------------------------------
 * The pages of one fdatasync reach the disk in any order: the last record (synced alone
 * under THEUS_SYNC_COMMIT) can have a later page on the disk and an earlier one still zeros
 * or stale. Nothing valid follows it, so it is a torn tail, not corruption. */

/* A field of 16 KiB: each commit's record spans five 4 KiB pages. */
static const char *wide = "{\"name\": \"wide\", \"fields\": {"
                          "\"counter\": {\"dtype\": \"i64\", \"shape\": []},"
                          "\"w\": {\"dtype\": \"u64\", \"shape\": [2048]}}}";

#define WIDE_N 2048

static void wide_step(theus_state *st, uint64_t tag)
{
    static uint64_t w[WIDE_N];
    for (size_t i = 0; i < WIDE_N; i++)
        w[i] = tag * 1000003u + i;
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    int64_t one = 1;
    cr_assert_eq(theus_tx_add(tx, "counter", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "w", NULL, w, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
}

static void wide_check(theus_state *st, uint64_t want)
{
    static uint64_t w[WIDE_N];
    cr_assert_eq(theus_state_version(st), want);
    int64_t c;
    read_field(st, "counter", &c);
    read_field(st, "w", w);
    cr_assert_eq((uint64_t)c, want - 1);
    for (size_t i = 0; i < WIDE_N; i++)
        cr_assert_eq(w[i], (want - 1) * 1000003u + i, "w[%zu] at version %llu", i,
                     (unsigned long long)want);
}

/* @commits commits of the wide state under the defaults (THEUS_SYNC_COMMIT, preallocated),
 * then _exit with the log open: the segment keeps its zero tail, as after a power cut. */
static void killed_wide_writer(int commits)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        theus_state *st = NULL;
        if (theus_state_open_durable(dfx_dir, wide, NULL, NULL, &st) != THEUS_OK)
            _exit(3);
        for (int i = 1; i <= commits; i++)
            wide_step(st, (uint64_t)i);
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer status %d", status);
}

/* Reopen after the segment was damaged: the version before the last record, that record
 * reported torn (from @last, at most @end - @last bytes), the file cut there; then one
 * more commit and a clean reopen. */
static void reopen_wide_torn(size_t last, size_t end, uint64_t want, const char *what)
{
    theus_state *r = NULL;
    int rc = theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &r);
    cr_assert_eq(rc, THEUS_OK, "%s: %s: %s", what, theus_strerror(rc),
                 theus_last_error_message());
    wide_check(r, want);
    theus_durable_info info;
    cr_assert_eq(theus_state_durable_info(r, &info), THEUS_OK);
    cr_assert_eq(info.torn_offset, last, "%s", what);
    cr_assert(info.torn_bytes > 0 && info.torn_bytes <= end - last, "%s: %llu torn bytes", what,
              (unsigned long long)info.torn_bytes);
    wide_step(r, want);
    theus_state_destroy(r);
    cr_assert_eq(theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &r), THEUS_OK);
    wide_check(r, want + 1);
    theus_state_destroy(r);
}

Test(durable, power_cut_later_page_of_the_last_record_persisted_is_a_torn_tail)
{
    char seg[512];
    snprintf(seg, sizeof seg, "%s/wal-0000000000000001.log", dfx_dir);
    for (int variant = 0; variant < 3; variant++) {
        dfx_rm_tree(dfx_dir);
        killed_wide_writer(3);
        size_t size, end, offs[8];
        unsigned char *img = read_all(seg, &size);
        cr_assert_eq(record_offsets(img, size, offs, 8, &end), 3);
        cr_assert_gt(size, end, "preallocated under THEUS_SYNC_COMMIT by default");
        size_t last = offs[2], block = last & ~(size_t)4095, stop = block + 4096;
        cr_assert_gt(end, stop + 4096, "the last record spans several pages");
        const char *what;
        if (variant == 0) {
            /* Its part in its first page never reached the disk: zeros (the head too). */
            memset(img + last, 0, stop - last);
            what = "first page zeros";
        } else if (variant == 1) {
            /* ... or stale bytes that are no record. */
            for (size_t i = last; i < stop; i++)
                img[i] = (unsigned char)(0xa5 ^ i);
            what = "first page garbage";
        } else {
            /* Its head's page persisted, a middle page not, the last page did. */
            memset(img + stop, 0, 4096);
            what = "middle page zeros";
        }
        write_all(seg, img, size);
        free(img);
        reopen_wide_torn(last, end, 3, what);
    }
}

Test(durable, power_cut_hole_before_a_valid_record_is_still_corruption)
{
    char seg[512];
    snprintf(seg, sizeof seg, "%s/wal-0000000000000001.log", dfx_dir);
    killed_wide_writer(3);
    size_t size, end, offs[8];
    unsigned char *orig = read_all(seg, &size);
    cr_assert_eq(record_offsets(orig, size, offs, 8, &end), 3);
    unsigned char *img = malloc(size);
    cr_assert_not_null(img);
    /* A zeroed page in the second record, a flipped byte in the first record's head and in
     * its body: a valid record follows each, so never a torn tail, never an older state. */
    size_t second_page = (offs[1] & ~(size_t)4095) + 4096;
    size_t at[3] = {second_page, offs[0] + 9, offs[0] + 5000};
    for (int k = 0; k < 3; k++) {
        memcpy(img, orig, size);
        if (k == 0)
            memset(img + at[k], 0, 4096);
        else
            img[at[k]] ^= 0x5a;
        write_all(seg, img, size);
        theus_state *r = NULL;
        int rc = theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &r);
        cr_assert_eq(rc, THEUS_ECORRUPT, "damage at %zu: %s", at[k], theus_last_error_message());
        cr_assert_not_null(strstr(theus_last_error_message(), "wal-0000000000000001.log"));
        cr_assert_not_null(strstr(theus_last_error_message(), "byte "));
    }
    write_all(seg, orig, size);
    theus_state *r = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &r), THEUS_OK);
    wide_check(r, 4);
    theus_state_destroy(r);
    free(img);
    free(orig);
}

Test(durable, sync_group_preallocates_by_default_and_appends_when_off)
{
    char seg[512];
    snprintf(seg, sizeof seg, "%s/wal-0000000000000001.log", dfx_dir);
    for (int off = 0; off < 2; off++) {
        dfx_rm_tree(dfx_dir);
        theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
        o.sync = THEUS_SYNC_GROUP;
        o.prealloc_bytes = off ? THEUS_PREALLOC_OFF : 0;
        theus_state *st = NULL;
        cr_assert_eq(theus_state_open_durable(dfx_dir, tiny, NULL, &o, &st), THEUS_OK);
        for (uint64_t i = 1; i <= 3; i++)
            tiny_step(st, i);
        size_t size, end, offs[8];
        unsigned char *img = read_all(seg, &size);
        cr_assert_eq(record_offsets(img, size, offs, 8, &end), 3);
        free(img);
        struct stat sb;
        cr_assert_eq(stat(seg, &sb), 0);
        cr_assert_eq((uint64_t)sb.st_size, size);
        theus_durable_stats ds;
        cr_assert_eq(theus_state_durable_stats(st, &ds), THEUS_OK);
        if (!off) {
            cr_assert_gt(size, end, "THEUS_SYNC_GROUP by default: zeros ahead of the records");
            cr_assert_gt(ds.log_extends, 0);
        } else {
            cr_assert_eq(size, end, "THEUS_PREALLOC_OFF: the log ends at its record");
            cr_assert_eq(ds.log_extends, 0);
        }
        theus_state_destroy(st);
        st = reopen_ok(&o, 4, 0, 0, "group", !off);
        theus_state_destroy(st);
    }
}

/* A listener after the log's that refuses every prepare while armed: the log's record of
 * that commit is cancelled. */
static int refuse_armed;

static int refuse_prepare(void *user, const publish_batch *b)
{
    (void)user;
    (void)b;
    return refuse_armed ? THEUS_ECONFLICT : THEUS_OK;
}

Test(durable, prealloc_cancelled_record_leaves_zeros)
{
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, tiny, NULL, NULL, &st), THEUS_OK);
    tiny_step(st, 1);
    tiny_step(st, 2);
    publish_listener l = {.prepare = refuse_prepare};
    cr_assert_eq(publish_listen(st, &l), THEUS_OK);
    char seg[512];
    snprintf(seg, sizeof seg, "%s/wal-0000000000000001.log", dfx_dir);
    size_t size0, end0, offs[16];
    unsigned char *img = read_all(seg, &size0);
    cr_assert_eq(record_offsets(img, size0, offs, 16, &end0), 2);
    free(img);
    refuse_armed = 1;
    theus_tx *tx = NULL;
    uint64_t t[4] = {9, 9, 9, 9};
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "a", NULL, t, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ECONFLICT);
    refuse_armed = 0;
    cr_assert_eq(theus_state_version(st), 3);
    size_t size, end;
    img = read_all(seg, &size);
    cr_assert_eq(record_offsets(img, size, offs, 16, &end), 2, "the cancelled record is gone");
    cr_assert_eq(end, end0);
    cr_assert_gt(size, end, "still preallocated");
    cr_assert(all_zero(img + end, size - end), "no byte of the cancelled record is left");
    free(img);
    tiny_step(st, 3);
    theus_state_destroy(st);
    st = reopen_ok(NULL, 4, 0, 0, "after a cancel", 0);
    theus_state_destroy(st);
}

Test(durable, prealloc_off_and_on_read_each_others_logs)
{
    theus_durable_options off = THEUS_DURABLE_OPTIONS_INIT;
    off.prealloc_bytes = THEUS_PREALLOC_OFF;
    char seg[512];
    snprintf(seg, sizeof seg, "%s/wal-0000000000000001.log", dfx_dir);
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, tiny, NULL, &off, &st), THEUS_OK);
    tiny_step(st, 1);
    tiny_step(st, 2);
    size_t size, end, offs[16];
    unsigned char *img = read_all(seg, &size);
    cr_assert_eq(record_offsets(img, size, offs, 16, &end), 2);
    cr_assert_eq(size, end, "no preallocation: the file ends at its last record");
    free(img);
    theus_durable_stats ds;
    cr_assert_eq(theus_state_durable_stats(st, &ds), THEUS_OK);
    cr_assert_eq(ds.log_extends, 0);
    theus_state_destroy(st);
    /* Preallocation on over a log written without it. */
    st = reopen_ok(NULL, 3, 0, 0, "on after off", 0);
    tiny_step(st, 3);
    img = read_all(seg, &size);
    cr_assert_eq(record_offsets(img, size, offs, 16, &end), 3);
    cr_assert_gt(size, end, "preallocated");
    free(img);
    cr_assert_eq(theus_state_durable_stats(st, &ds), THEUS_OK);
    cr_assert_eq(ds.log_extends, 1);
    theus_state_destroy(st);
    /* Off over a log a killed writer left preallocated: read, its zero tail cut. */
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.prealloc_bytes = TEST_PREALLOC;
    dfx_rm_tree(dfx_dir);
    killed_writer(&o, 3);
    st = reopen_ok(&off, 4, 0, 0, "off after a killed preallocating writer", 0);
    img = read_all(seg, &size);
    cr_assert_eq(record_offsets(img, size, offs, 16, &end), 3);
    cr_assert_eq(size, end, "the zero tail is cut when preallocation is off");
    free(img);
    tiny_step(st, 4);
    theus_state_destroy(st);
    st = reopen_ok(NULL, 5, 0, 0, "on again", 0);
    theus_state_destroy(st);
    /* Bad option values are not refused: any step is rounded up to 4 KiB. */
    o.prealloc_bytes = 1;
    cr_assert_eq(theus_state_open_durable(dfx_dir, NULL, NULL, &o, &st), THEUS_OK);
    tiny_step(st, 5);
    theus_state_destroy(st);
    st = reopen_ok(NULL, 6, 0, 0, "step of one byte", 0);
    theus_state_destroy(st);
}

Test(durable, prealloc_closed_segments_are_exact_and_a_zero_tail_on_one_is_accepted)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.segment_bytes = 4096; /* the step is capped at the segment size */
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, tiny, NULL, &o, &st), THEUS_OK);
    for (uint64_t i = 1; i <= 60; i++)
        tiny_step(st, i);
    theus_state_destroy(st);
    DIR *d = opendir(dfx_dir);
    cr_assert_not_null(d);
    struct dirent *e;
    char first_closed[600] = "";
    int segs = 0;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "wal-", 4) != 0)
            continue;
        char p[600];
        snprintf(p, sizeof p, "%s/%s", dfx_dir, e->d_name);
        size_t size, end, offs[64];
        unsigned char *img = read_all(p, &size);
        record_offsets(img, size, offs, 64, &end);
        cr_assert_eq(size, end, "%s: %zu bytes, records end at %zu", e->d_name, size, end);
        free(img);
        if (strcmp(e->d_name, "wal-0000000000000001.log") == 0)
            snprintf(first_closed, sizeof first_closed, "%s", p);
        segs++;
    }
    closedir(d);
    cr_assert_gt(segs, 2);
    cr_assert_neq(first_closed[0], 0);
    /* A rotation killed before it cut the tail of the segment it closed. */
    size_t size;
    unsigned char *img = read_all(first_closed, &size);
    unsigned char *grown = calloc(1, size + 8192);
    cr_assert_not_null(grown);
    memcpy(grown, img, size);
    write_all(first_closed, grown, size + 8192);
    free(grown);
    free(img);
    st = reopen_ok(&o, 61, 0, 0, "zero tail on a closed segment", 0);
    theus_state_destroy(st);
}

/* ---- group commit from several threads ------------------------------------------------- */

typedef struct worker {
    theus_state *st;
    int n;
    int failures;
} worker;

static void *commit_loop(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < w->n; i++) {
        theus_tx *tx = NULL;
        if (theus_tx_begin(w->st, NULL, &tx) != THEUS_OK) {
            w->failures++;
            continue;
        }
        int64_t one = 1;
        theus_tx_add(tx, "counter", NULL, &one, THEUS_MEM_HOST);
        if (theus_tx_commit(tx, NULL) != THEUS_OK)
            w->failures++;
    }
    return NULL;
}

Test(durable, group_commit_from_threads)
{
    for (int pol = 0; pol < 3; pol++) {
        dfx_rm_tree(dfx_dir);
        theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
        o.sync = (theus_sync)pol;
        theus_state *st = NULL;
        cr_assert_eq(theus_state_open_durable(dfx_dir, tiny, NULL, &o, &st), THEUS_OK);
        pthread_t th[4];
        worker w[4];
        for (int i = 0; i < 4; i++) {
            w[i] = (worker){.st = st, .n = 50};
            pthread_create(&th[i], NULL, commit_loop, &w[i]);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            cr_assert_eq(w[i].failures, 0, "ADDs never conflict");
        }
        theus_state_destroy(st);
        cr_assert_eq(theus_state_open_durable(dfx_dir, tiny, NULL, &o, &st), THEUS_OK);
        int64_t c;
        read_field(st, "counter", &c);
        cr_assert_eq(c, 200);
        cr_assert_eq(theus_state_version(st), 201);
        theus_state_destroy(st);
    }
}

/* ---- the log's checksum ------------------------------------------------------------------ */
#include "durable/crc32c.h"

Test(durable, crc32c_known_values_and_both_implementations_agree)
{
    cr_assert_eq(crc32c(0, "123456789", 9), 0xE3069283u);
    cr_assert_eq(crc32c_portable(0, "123456789", 9), 0xE3069283u);
    cr_assert_eq(crc32c(0, "", 0), 0u);
    static unsigned char buf[4099];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 131 + 7);
    for (size_t n = 0; n < sizeof buf; n += 37) {
        uint32_t a = crc32c(0, buf, n), b = crc32c_portable(0, buf, n);
        cr_assert_eq(a, b, "length %zu", n);
        cr_assert_eq(crc32c(crc32c(0, buf, n / 3), buf + n / 3, n - n / 3), a, "chained");
    }
}

Test(durable, crc32c_long_buffers_and_combined_pieces)
{
    /* Long enough for the three-stream path (3 x 4 KiB lanes and more), odd offsets. */
    size_t n = 200000;
    unsigned char *buf = malloc(n);
    cr_assert_not_null(buf);
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)((i * 2654435761u) >> 13);
    for (size_t len = 12000; len < n; len += 24571) {
        size_t off = len % 7;
        cr_assert_eq(crc32c(0, buf + off, len - off), crc32c_portable(0, buf + off, len - off),
                     "length %zu", len - off);
    }
    for (size_t a = 0; a < n; a += 33331) {
        size_t b = n - a;
        uint32_t whole = crc32c(0, buf, n), ca = crc32c(0, buf, a), cb = crc32c(0, buf + a, b);
        cr_assert_eq(crc32c_combine(ca, cb, b), whole, "split at %zu", a);
        crc32c_shift op;
        crc32c_shift_init(&op, b);
        cr_assert_eq(crc32c_combine_op(&op, ca, cb), whole);
    }
    cr_assert_eq(crc32c_combine(0x12345678u, 0, 0), 0x12345678u, "nothing appended");
    free(buf);
}

/* ---- a full checkpoint while commits go on ----------------------------------------------- */

/* Every commit writes one row of "big" (host) and of "dev" (device placement: the staged
 * path) with a new tag, and the tag into rows[row]: a file is a committed version exactly
 * when every row of both equals its rows[] entry. */
#define CK_ROWS 2048
static const char *busy =
    "{\"name\": \"busy\", \"fields\": {"
    "\"rows\": {\"dtype\": \"u32\", \"shape\": [2048]},"
    "\"big\": {\"dtype\": \"f32\", \"shape\": [2048, 1024]},"
    "\"dev\": {\"dtype\": \"u32\", \"shape\": [2048, 256], \"placement\": \"device\"}}}";

typedef ckpt_writer busy_writer;

static void *busy_loop(void *arg)
{
    busy_writer *w = arg;
    static float row[1024];
    static uint32_t drow[256];
    unsigned rng = 12345;
    for (uint32_t tag = 1; !atomic_load(&w->stop); tag++) {
        rng = rng * 1103515245u + 12345u;
        int64_t r = (int64_t)((rng >> 8) % CK_ROWS);
        for (int i = 0; i < 1024; i++)
            row[i] = (float)tag;
        for (int i = 0; i < 256; i++)
            drow[i] = tag;
        theus_region rr = {.ndim = 1, .start = {r}, .stop = {r + 1}};
        theus_region rb = {.ndim = 2, .start = {r, 0}, .stop = {r + 1, 1024}};
        theus_region rd = {.ndim = 2, .start = {r, 0}, .stop = {r + 1, 256}};
        theus_tx *tx = NULL;
        if (theus_tx_begin(w->st, NULL, &tx) != THEUS_OK ||
            theus_tx_write(tx, "rows", &rr, &tag, THEUS_MEM_HOST) != THEUS_OK ||
            theus_tx_write(tx, "big", &rb, row, THEUS_MEM_HOST) != THEUS_OK ||
            theus_tx_write(tx, "dev", &rd, drow, THEUS_MEM_HOST) != THEUS_OK ||
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

static void check_busy(theus_state *st)
{
    static uint32_t rows[CK_ROWS], dev[CK_ROWS * 256];
    static float big[CK_ROWS * 1024];
    read_field(st, "rows", rows);
    read_field(st, "big", big);
    read_field(st, "dev", dev);
    for (int r = 0; r < CK_ROWS; r++) {
        for (int i = 0; i < 1024; i++)
            cr_assert_eq(big[r * 1024 + i], (float)rows[r], "version %llu: big row %d",
                         (unsigned long long)theus_state_version(st), r);
        for (int i = 0; i < 256; i++)
            cr_assert_eq(dev[r * 256 + i], rows[r], "version %llu: dev row %d",
                         (unsigned long long)theus_state_version(st), r);
    }
}

Test(durable, full_checkpoint_while_committing_is_one_version)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = THEUS_SYNC_NONE;
    o.keep_checkpoints = 6;
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, busy, NULL, &o, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    busy_writer w = {.st = st};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, busy_loop, &w), 0);
    /* Checkpoints until commits ran during some of them (a few dozen at most), then the
     * last six are checked. */
    uint64_t versions[6], during = 0;
    int k = 0;
    cr_assert_eq(ckpt_while_committing(&w, 6, 20, 64, versions, &k, &during), THEUS_OK,
                 "checkpoint: %s", theus_last_error_message());
    /* A save (the same writer) to a file of its own; one that cannot be made fails and
     * leaves nothing behind. */
    char saved[600];
    snprintf(saved, sizeof saved, "%s/saved.safetensors", dfx_root);
    cr_assert_eq(theus_state_save_safetensors(st, "/nonexistent-dir/x.safetensors"), THEUS_ENOENT);
    cr_assert_eq(theus_state_save_safetensors(st, saved), THEUS_OK, "%s",
                 theus_last_error_message());
    atomic_store(&w.stop, 1);
    pthread_join(th, NULL);
    cr_assert_eq(w.failures, 0);
    cr_log_info("%d checkpoints, %llu commits, %llu of them while checkpoints ran", k,
                (unsigned long long)atomic_load(&w.commits), (unsigned long long)during);
    theus_state_destroy(st);
    /* Each checkpoint alone (its checksums checked on the way) is one committed version. */
    for (k = 0; k < 6; k++) {
        theus_state *old = NULL;
        int rc = theus_state_open_version(dfx_dir, versions[k], &old);
        cr_assert_eq(rc, THEUS_OK, "open version %llu: %s", (unsigned long long)versions[k],
                     theus_last_error_message());
        cr_assert_eq(theus_state_version(old), versions[k]);
        check_busy(old);
        theus_state_destroy(old);
    }
    theus_state *plain = NULL;
    cr_assert_eq(theus_state_create(busy, NULL, &plain), THEUS_OK);
    cr_assert_eq(theus_state_load_safetensors(plain, saved), THEUS_OK, "%s",
                 theus_last_error_message());
    check_busy(plain);
    theus_state_destroy(plain);
}
