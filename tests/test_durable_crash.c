/* Crash tests with real processes: a child commits (counter += 1 with a = b = tag) on a
 * durable state under THEUS_SYNC_COMMIT, checkpointing (full and incremental) now and then,
 * and reports every acknowledged version through a pipe; the parent SIGKILLs it at a random
 * point, reopens the directory and checks that every acknowledged version is there and that
 * the state is consistent (a == b, counter == version - 1). THEUS_CRASH_KILLS sets the
 * number of kills (default 200; the soak in docs/durability.md runs 10,000). */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <theus/theus.h>
#include <theus/theus_durable.h>

#include "durable_fixture.h"

static pid_t g_child = -1;

static void setup(void)
{
    cr_assert_eq(dfx_make(NULL, "test-crash", 0), 0, "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
    if (g_child > 0) {
        kill(g_child, SIGKILL);
        waitpid(g_child, NULL, 0);
    }
    dfx_cleanup();
}

TestSuite(durable_crash, .init = setup, .fini = teardown, .timeout = 3600);

static const char *schema = "{\"name\": \"crash\", \"fields\": {"
                            "\"counter\": {\"dtype\": \"i64\", \"shape\": []},"
                            "\"a\": {\"dtype\": \"u64\", \"shape\": [512]},"
                            "\"b\": {\"dtype\": \"u64\", \"shape\": [512]}}}";

/* The child: commit forever, report each acknowledged version. Never returns. */
static void child(int wfd, unsigned seed)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.segment_bytes = 64 * 1024;
    theus_state *st = NULL;
    if (theus_state_open_durable(dfx_dir, NULL, NULL, &o, &st) != THEUS_OK) {
        fprintf(stderr, "child: open: %s\n", theus_last_error_message());
        _exit(3);
    }
    static uint64_t tag[512];
    for (unsigned n = 0;; n++) {
        uint64_t v = theus_state_version(st);
        for (int i = 0; i < 512; i++)
            tag[i] = v;
        theus_tx *tx = NULL;
        int64_t one = 1;
        if (theus_tx_begin(st, NULL, &tx) != THEUS_OK)
            _exit(4);
        theus_tx_add(tx, "counter", NULL, &one, THEUS_MEM_HOST);
        theus_tx_write(tx, "a", NULL, tag, THEUS_MEM_HOST);
        theus_tx_write(tx, "b", NULL, tag, THEUS_MEM_HOST);
        uint64_t got = 0;
        if (theus_tx_commit(tx, &got) != THEUS_OK) {
            fprintf(stderr, "child: commit: %s\n", theus_last_error_message());
            _exit(5);
        }
        if (write(wfd, &got, sizeof got) != (ssize_t)sizeof got)
            _exit(6);
        if ((n + seed) % 13 == 12 && theus_state_checkpoint(st, (int)((n / 13) & 1), NULL) != THEUS_OK) {
            fprintf(stderr, "child: checkpoint: %s\n", theus_last_error_message());
            _exit(7);
        }
    }
}

static void check_state(uint64_t acked, uint64_t *version)
{
    theus_state *st = NULL;
    int rc = theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &st);
    cr_assert_eq(rc, THEUS_OK, "reopen: %s: %s", theus_strerror(rc), theus_last_error_message());
    uint64_t v = theus_state_version(st);
    cr_assert_geq(v, acked, "acknowledged version %llu lost (recovered %llu)",
                  (unsigned long long)acked, (unsigned long long)v);
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    int64_t c;
    static uint64_t a[512], b[512];
    cr_assert_eq(theus_tx_read(tx, "counter", NULL, &c, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "a", NULL, a, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "b", NULL, b, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    cr_assert_eq((uint64_t)c, v - 1, "counter %lld at version %llu", (long long)c,
                 (unsigned long long)v);
    cr_assert_eq(memcmp(a, b, sizeof a), 0, "a != b at version %llu", (unsigned long long)v);
    for (int i = 0; i < 512; i++)
        cr_assert_eq(a[i], v - 1);
    theus_state_destroy(st);
    *version = v;
}

Test(durable_crash, sigkill_at_random_points)
{
    const char *env = getenv("THEUS_CRASH_KILLS");
    int kills = env ? atoi(env) : 200;
    cr_assert_gt(kills, 0);
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, schema, NULL, NULL, &st), THEUS_OK);
    theus_state_destroy(st);
    unsigned rng = (unsigned)getpid();
    uint64_t acked = 1, version = 1;
    int torn = 0;
    for (int k = 0; k < kills; k++) {
        int p[2];
        cr_assert_eq(pipe(p), 0);
        g_child = fork();
        cr_assert_geq(g_child, 0);
        if (g_child == 0) {
            close(p[0]);
            child(p[1], (unsigned)k);
        }
        close(p[1]);
        /* Let it acknowledge 1..8 commits, then kill it after a random spin: somewhere in
         * the next commit, checkpoint or recovery. */
        rng = rng * 1103515245u + 12345u;
        int want = 1 + (int)((rng >> 16) % 8);
        uint64_t v;
        for (int got = 0; got < want; got++) {
            ssize_t n = read(p[0], &v, sizeof v);
            cr_assert_eq(n, (ssize_t)sizeof v, "child died early");
            acked = v;
        }
        rng = rng * 1103515245u + 12345u;
        for (volatile unsigned spin = (rng >> 8) % 200000; spin > 0; spin--)
            ;
        kill(g_child, SIGKILL);
        int status;
        cr_assert_eq(waitpid(g_child, &status, 0), g_child);
        g_child = -1;
        cr_assert(WIFSIGNALED(status), "child exited by itself (status %d)", status);
        while (read(p[0], &v, sizeof v) == (ssize_t)sizeof v)
            acked = v;
        close(p[0]);
        check_state(acked, &version);
        theus_durable_info info;
        (void)info;
        torn += version > acked;
    }
    cr_log_info("%d kills, last version %llu, %d rounds ended with an unacknowledged commit "
                "on disk", kills, (unsigned long long)version, torn);
}
