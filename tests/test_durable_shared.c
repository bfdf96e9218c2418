/* Durable shared states (theus_shared_open_durable) with real processes: create and join from
 * several processes, every commit in the one log; the directory lock and bad inputs; and the
 * kill storm — worker processes commit (counter += 1 with a = b = tag) under THEUS_SYNC_COMMIT
 * and THEUS_SYNC_GROUP, checkpointing now and then, and report each acknowledged version; the
 * parent SIGKILLs them at random moments (THEUS_CRASH_KILLS, default 200) and respawns them,
 * then checks the live state, that log and state agree exactly, and the state recovered from
 * the directory once the shared segment is gone. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <theus/theus.h>
#include <theus/theus_durable.h>
#include <theus/theus_shared.h>

#include "durable/durable.h"
#include "durable/wal.h"
#include "durable/wal_record.h"
#include "publish.h"
#include "shared/redo.h"
#include "state.h"
#include <fcntl.h>

#define MAX_KIDS 8

static char g_root[64], g_dir[128], g_dir2[128], g_name[64], g_name2[64];
static uint64_t g_prealloc; /* the creator's theus_durable_options.prealloc_bytes */
static pid_t g_kids[MAX_KIDS];

static void rm_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            rm_tree(p);
        }
    closedir(d);
    rmdir(path);
}

static void setup(void)
{
    snprintf(g_root, sizeof g_root, "/tmp/theus-test-dshared-XXXXXX");
    cr_assert_not_null(mkdtemp(g_root));
    snprintf(g_dir, sizeof g_dir, "%s/state", g_root);
    snprintf(g_dir2, sizeof g_dir2, "%s/other", g_root);
    snprintf(g_name, sizeof g_name, "tds-%d-a", (int)getpid());
    snprintf(g_name2, sizeof g_name2, "tds-%d-b", (int)getpid());
    memset(g_kids, 0, sizeof g_kids);
    g_prealloc = 0;
}

static void teardown(void)
{
    for (int i = 0; i < MAX_KIDS; i++)
        if (g_kids[i] > 0) {
            kill(g_kids[i], SIGKILL);
            waitpid(g_kids[i], NULL, 0);
        }
    theus_shared_remove(g_name);
    theus_shared_remove(g_name2);
    rm_tree(g_root);
}

TestSuite(durable_shared, .init = setup, .fini = teardown, .timeout = 600);

static const char *schema = "{\"name\": \"dshared\", \"fields\": {"
                            "\"counter\": {\"dtype\": \"i64\", \"shape\": []},"
                            "\"a\": {\"dtype\": \"u64\", \"shape\": [512]},"
                            "\"b\": {\"dtype\": \"u64\", \"shape\": [512]}}}";

/* One commit: counter += 1, a = b = the base version; retried on conflict. */
static int commit_one(theus_state *st, uint64_t *got)
{
    static _Thread_local uint64_t tag[512];
    for (;;) {
        theus_tx *tx = NULL;
        int64_t one = 1;
        int rc = theus_tx_begin(st, NULL, &tx);
        if (rc != THEUS_OK)
            return rc;
        /* The transaction's own base, not theus_state_version read before the begin: another
         * process may commit between the two, and the tag would then be one version old. */
        uint64_t v = theus_tx_base(tx);
        for (int i = 0; i < 512; i++)
            tag[i] = v;
        theus_tx_add(tx, "counter", NULL, &one, THEUS_MEM_HOST);
        theus_tx_write(tx, "a", NULL, tag, THEUS_MEM_HOST);
        theus_tx_write(tx, "b", NULL, tag, THEUS_MEM_HOST);
        rc = theus_tx_commit(tx, got);
        if (rc != THEUS_ECONFLICT)
            return rc;
    }
}

/* The state is consistent: counter == version - 1, a == b == version - 1 everywhere. Other
 * processes may still be committing: a read that meets a newer commit (THEUS_ECONFLICT)
 * starts again from a newer base. */
static uint64_t check_consistent(theus_state *st)
{
    theus_tx *tx = NULL;
    uint64_t v;
    int64_t c;
    static uint64_t a[512], b[512];
    for (;;) {
        int rc = theus_tx_begin(st, NULL, &tx);
        cr_assert_eq(rc, THEUS_OK, "begin: %s: %s", theus_strerror(rc),
                     theus_last_error_message());
        v = theus_tx_base(tx);
        rc = theus_tx_read(tx, "counter", NULL, &c, THEUS_MEM_HOST);
        if (rc == THEUS_OK)
            rc = theus_tx_read(tx, "a", NULL, a, THEUS_MEM_HOST);
        if (rc == THEUS_OK)
            rc = theus_tx_read(tx, "b", NULL, b, THEUS_MEM_HOST);
        if (rc != THEUS_ECONFLICT) {
            cr_assert_eq(rc, THEUS_OK, "read: %s: %s", theus_strerror(rc),
                         theus_last_error_message());
            break;
        }
        theus_tx_abort(tx);
    }
    theus_tx_abort(tx);
    cr_assert_eq((uint64_t)c, v - 1, "counter %lld at version %llu", (long long)c,
                 (unsigned long long)v);
    cr_assert_eq(memcmp(a, b, sizeof a), 0, "a != b at version %llu", (unsigned long long)v);
    for (int i = 0; i < 512; i++)
        cr_assert_eq(a[i], v - 1, "a[%d] = %llu at version %llu", i, (unsigned long long)a[i],
                     (unsigned long long)v);
    return v;
}

static theus_state *open_ds(const char *name, const char *dir, const char *sch, theus_sync sync)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = sync;
    o.segment_bytes = 64 * 1024;
    o.prealloc_bytes = g_prealloc;
    theus_state *st = NULL;
    int rc = theus_shared_open_durable(name, dir, sch, NULL, &o, &st);
    cr_assert_eq(rc, THEUS_OK, "theus_shared_open_durable: %s: %s", theus_strerror(rc),
                 theus_last_error_message());
    return st;
}

/* ---- several processes, one log -------------------------------------------------------- */

static void committer(theus_sync sync, int n, int ckpt_every)
{
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = sync;
    theus_state *st = NULL;
    if (theus_shared_open_durable(g_name, g_dir, NULL, NULL, &o, &st) != THEUS_OK) {
        fprintf(stderr, "child: open: %s\n", theus_last_error_message());
        _exit(3);
    }
    for (int i = 0; i < n; i++) {
        uint64_t got;
        if (commit_one(st, &got) != THEUS_OK) {
            fprintf(stderr, "child: commit: %s\n", theus_last_error_message());
            _exit(4);
        }
        if (ckpt_every && i % ckpt_every == ckpt_every - 1 &&
            theus_state_checkpoint(st, (i / ckpt_every) & 1, NULL) != THEUS_OK) {
            fprintf(stderr, "child: checkpoint: %s\n", theus_last_error_message());
            _exit(5);
        }
    }
    theus_state_destroy(st);
    _exit(0);
}

static void several_processes(theus_sync sync)
{
    const int per = 40, kids = 3;
    theus_state *st = open_ds(g_name, g_dir, schema, sync);
    cr_assert_str_eq(theus_state_shared_name(st), g_name);
    for (int k = 0; k < kids; k++) {
        g_kids[k] = fork();
        cr_assert_geq(g_kids[k], 0);
        if (g_kids[k] == 0)
            committer(sync, per, k == 0 ? 7 : 0);
    }
    for (int i = 0; i < per; i++) {
        uint64_t got;
        cr_assert_eq(commit_one(st, &got), THEUS_OK, "%s", theus_last_error_message());
    }
    for (int k = 0; k < kids; k++) {
        int status;
        cr_assert_eq(waitpid(g_kids[k], &status, 0), g_kids[k]);
        g_kids[k] = 0;
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d: status %d", k, status);
    }
    uint64_t v = check_consistent(st);
    cr_assert_eq(v, 1 + (uint64_t)per * (kids + 1));
    theus_state_destroy(st);
    /* The segment is gone with the last process: the directory has every commit. */
    theus_shared_summary s;
    cr_assert_eq(theus_shared_info(g_name, &s), THEUS_ENOENT);
    st = open_ds(g_name, g_dir, NULL, sync);
    cr_assert_eq(check_consistent(st), v);
    theus_durable_info info;
    cr_assert_eq(theus_state_durable_info(st, &info), THEUS_OK);
    cr_assert_eq(info.version, v);
    cr_assert_eq(info.torn_bytes, 0);
    theus_state_destroy(st);
    /* ... and a private durable state recovers it the same. */
    cr_assert_eq(theus_state_open_durable(g_dir, NULL, NULL, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(check_consistent(st), v);
    theus_state_destroy(st);
}

Test(durable_shared, several_processes_sync_commit) { several_processes(THEUS_SYNC_COMMIT); }
Test(durable_shared, several_processes_sync_group) { several_processes(THEUS_SYNC_GROUP); }
Test(durable_shared, several_processes_sync_none) { several_processes(THEUS_SYNC_NONE); }

/* Group commit across threads of several processes: 2 processes x 3 threads and 3 threads
 * of the creator, each thread committing on its process's handle. */
#include <pthread.h>

typedef struct thr_arg {
    theus_state *st;
    int n, failed;
} thr_arg;

static void *thr_commit(void *p)
{
    thr_arg *a = p;
    for (int i = 0; i < a->n && !a->failed; i++) {
        uint64_t got;
        if (commit_one(a->st, &got) != THEUS_OK)
            a->failed = 1;
    }
    return NULL;
}

static int commit_threads(theus_state *st, int threads, int n)
{
    pthread_t th[4];
    thr_arg a[4];
    for (int t = 0; t < threads; t++) {
        a[t] = (thr_arg){st, n, 0};
        pthread_create(&th[t], NULL, thr_commit, &a[t]);
    }
    int failed = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        failed |= a[t].failed;
    }
    return failed;
}

Test(durable_shared, group_commit_threads_and_processes)
{
    const int per = 20, threads = 3, kids = 2;
    theus_state *st = open_ds(g_name, g_dir, schema, THEUS_SYNC_GROUP);
    for (int k = 0; k < kids; k++) {
        g_kids[k] = fork();
        cr_assert_geq(g_kids[k], 0);
        if (g_kids[k] == 0) {
            theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
            o.sync = THEUS_SYNC_GROUP;
            theus_state *x = NULL;
            if (theus_shared_open_durable(g_name, g_dir, NULL, NULL, &o, &x) != THEUS_OK)
                _exit(3);
            int bad = commit_threads(x, threads, per);
            theus_state_destroy(x);
            _exit(bad ? 4 : 0);
        }
    }
    cr_assert_eq(commit_threads(st, threads, per), 0, "%s", theus_last_error_message());
    for (int k = 0; k < kids; k++) {
        int status;
        cr_assert_eq(waitpid(g_kids[k], &status, 0), g_kids[k]);
        g_kids[k] = 0;
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d: status %d", k, status);
    }
    uint64_t v = check_consistent(st);
    cr_assert_eq(v, 1 + (uint64_t)per * threads * (kids + 1));
    theus_state_destroy(st);
    st = open_ds(g_name, g_dir, NULL, THEUS_SYNC_COMMIT);
    cr_assert_eq(check_consistent(st), v);
    theus_state_destroy(st);
}

/* A private durable directory becomes shared, and back. */
Test(durable_shared, private_then_shared)
{
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(g_dir, schema, NULL, NULL, &st), THEUS_OK);
    uint64_t got;
    for (int i = 0; i < 5; i++)
        cr_assert_eq(commit_one(st, &got), THEUS_OK);
    cr_assert_eq(theus_state_checkpoint(st, 0, NULL), THEUS_OK);
    cr_assert_eq(commit_one(st, &got), THEUS_OK);
    theus_state_destroy(st);
    st = open_ds(g_name, g_dir, schema, THEUS_SYNC_COMMIT);
    cr_assert_eq(check_consistent(st), 7);
    cr_assert_eq(commit_one(st, &got), THEUS_OK);
    cr_assert_eq(got, 8);
    theus_state_destroy(st);
    cr_assert_eq(theus_state_open_durable(g_dir, NULL, NULL, NULL, &st), THEUS_OK);
    cr_assert_eq(check_consistent(st), 8);
    theus_state_destroy(st);
}

/* ---- the directory lock and bad inputs ------------------------------------------------- */

Test(durable_shared, bad_inputs)
{
    theus_state *st = open_ds(g_name, g_dir, schema, THEUS_SYNC_COMMIT), *x = NULL;
    uint64_t got;
    cr_assert_eq(commit_one(st, &got), THEUS_OK);
    /* A private open of the directory, another name on it: the directory is in use. */
    cr_assert_eq(theus_state_open_durable(g_dir, NULL, NULL, NULL, &x), THEUS_EBUSY);
    cr_assert_null(x);
    cr_assert_eq(theus_shared_open_durable(g_name2, g_dir, NULL, NULL, NULL, &x), THEUS_EBUSY);
    cr_assert_null(x);
    /* The name with another directory. */
    cr_assert_eq(theus_shared_open_durable(g_name, g_dir2, schema, NULL, NULL, &x), THEUS_EINVAL);
    cr_assert_not_null(strstr(theus_last_error_message(), "not in"), "%s",
                       theus_last_error_message());
    /* A plain open would commit around the log. */
    cr_assert_eq(theus_state_open_shared(g_name, NULL, &x), THEUS_EPERM);
    cr_assert_null(x);
    /* Another schema. */
    const char *other = "{\"name\": \"o\", \"fields\": {\"z\": {\"dtype\": \"f32\", \"shape\": [2]}}}";
    cr_assert_eq(theus_shared_open_durable(g_name, g_dir, other, NULL, NULL, &x), THEUS_ESCHEMA);
    /* NULL arguments, bad options, bad names. */
    cr_assert_eq(theus_shared_open_durable(NULL, g_dir, NULL, NULL, NULL, &x), THEUS_EINVAL);
    cr_assert_eq(theus_shared_open_durable(g_name, NULL, NULL, NULL, NULL, &x), THEUS_EINVAL);
    cr_assert_eq(theus_shared_open_durable(g_name, g_dir, NULL, NULL, NULL, NULL), THEUS_EINVAL);
    cr_assert_eq(theus_shared_open_durable("bad/name", g_dir2, schema, NULL, NULL, &x),
                 THEUS_EINVAL);
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = (theus_sync)7;
    cr_assert_eq(theus_shared_open_durable(g_name, g_dir, NULL, NULL, &o, &x), THEUS_EINVAL);
    /* A second handle of this process joins. */
    x = open_ds(g_name, g_dir, NULL, THEUS_SYNC_GROUP);
    cr_assert_eq(commit_one(x, &got), THEUS_OK);
    cr_assert_eq(got, 3);
    cr_assert_eq(theus_state_checkpoint(x, 0, NULL), THEUS_OK);
    cr_assert_eq(commit_one(st, &got), THEUS_OK);
    theus_state_destroy(x);
    theus_state_destroy(st);
    /* The name is free again: a non-durable shared state of that name is not joined. */
    cr_assert_eq(theus_state_create_shared(g_name, schema, NULL, NULL, &st), THEUS_OK);
    cr_assert_eq(theus_shared_open_durable(g_name, g_dir, NULL, NULL, NULL, &x), THEUS_EINVAL);
    theus_state_destroy(st);
    /* A directory writable by the group; a directory without a schema. */
    cr_assert_eq(mkdir(g_dir2, 0700), 0);
    cr_assert_eq(chmod(g_dir2, 0770), 0);
    cr_assert_eq(theus_shared_open_durable(g_name2, g_dir2, schema, NULL, NULL, &x), THEUS_EPERM);
    cr_assert_eq(chmod(g_dir2, 0700), 0);
    cr_assert_eq(theus_shared_open_durable(g_name2, g_dir2, NULL, NULL, NULL, &x), THEUS_EINVAL);
    cr_assert_eq(theus_shared_info(g_name2, &(theus_shared_summary){0}), THEUS_ENOENT);
    /* The recovered state has all four commits. */
    st = open_ds(g_name, g_dir, NULL, THEUS_SYNC_COMMIT);
    cr_assert_eq(check_consistent(st), 4);
    theus_state_destroy(st);
}

/* ---- the kill storm ---------------------------------------------------------------------- */

/* A worker: commits forever, reporting each acknowledged version; checkpoints now and then. */
/* One worker in four also kills itself, now and then, at a crash point of the log append
 * or of the redo protocol: the windows random kills from outside rarely hit. */
static void storm_die(int point)
{
    (void)point;
    if (rand() % 24 == 0)
        raise(SIGKILL);
}

static void storm_worker(int wfd, theus_sync sync, unsigned seed)
{
    if (seed % 4 == 3) {
        srand(seed);
        wal_fault_hook = storm_die;
        redo_fault_hook = storm_die;
    }
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = sync;
    theus_state *st = NULL;
    if (theus_shared_open_durable(g_name, g_dir, NULL, NULL, &o, &st) != THEUS_OK) {
        fprintf(stderr, "worker: open: %s\n", theus_last_error_message());
        _exit(3);
    }
    for (unsigned n = 0;; n++) {
        uint64_t got = 0;
        if (commit_one(st, &got) != THEUS_OK) {
            fprintf(stderr, "worker: commit: %s\n", theus_last_error_message());
            _exit(4);
        }
        if (write(wfd, &got, sizeof got) != (ssize_t)sizeof got)
            _exit(6);
        if ((n + seed) % 13 == 12 &&
            theus_state_checkpoint(st, (int)((n / 13) & 1), NULL) != THEUS_OK) {
            fprintf(stderr, "worker: checkpoint: %s\n", theus_last_error_message());
            _exit(7);
        }
    }
}

typedef struct kid {
    int self;        /* kills itself at crash points too */
    int fd;          /* read end of its pipe */
    int quota;       /* acknowledgements before it is killed */
    int seen;
} kid;

static void spawn(kid *k, int slot, unsigned *rng, int round)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    *rng = *rng * 1103515245u + 12345u;
    theus_sync sync = round & 1 ? THEUS_SYNC_GROUP : THEUS_SYNC_COMMIT;
    g_kids[slot] = fork();
    cr_assert_geq(g_kids[slot], 0);
    if (g_kids[slot] == 0) {
        close(p[0]);
        storm_worker(p[1], sync, (unsigned)round);
    }
    close(p[1]);
    k->fd = p[0];
    k->self = round % 4 == 3;
    k->quota = 1 + (int)((*rng >> 16) % 6);
    k->seen = 0;
}

static void reap(kid *k, int slot, uint64_t *acked)
{
    kill(g_kids[slot], SIGKILL);
    int status;
    cr_assert_eq(waitpid(g_kids[slot], &status, 0), g_kids[slot]);
    cr_assert(WIFSIGNALED(status), "worker exited by itself (status %d)", status);
    g_kids[slot] = 0;
    uint64_t v;
    while (read(k->fd, &v, sizeof v) == (ssize_t)sizeof v)
        if (v > *acked)
            *acked = v;
    close(k->fd);
}

Test(durable_shared, kill_storm)
{
    const char *env = getenv("THEUS_CRASH_KILLS");
    int kills = env ? atoi(env) : 200;
    cr_assert_gt(kills, 0);
    enum { WORKERS = 3 };
    theus_state *st = open_ds(g_name, g_dir, schema, THEUS_SYNC_COMMIT);
    unsigned rng = (unsigned)getpid();
    uint64_t acked = 1;
    kid k[WORKERS];
    int round = 0, done = 0, self_kills = 0;
    for (int i = 0; i < WORKERS; i++)
        spawn(&k[i], i, &rng, round++);
    while (done < kills) {
        struct pollfd pf[WORKERS];
        for (int i = 0; i < WORKERS; i++)
            pf[i] = (struct pollfd){.fd = k[i].fd, .events = POLLIN};
        int n = poll(pf, WORKERS, -1);
        cr_assert_geq(n, 0);
        for (int i = 0; i < WORKERS && done < kills; i++) {
            if (!(pf[i].revents & (POLLIN | POLLHUP)))
                continue;
            uint64_t v;
            ssize_t r = read(k[i].fd, &v, sizeof v);
            if (r == 0 && k[i].self) {
                /* It killed itself at a crash point. */
                reap(&k[i], i, &acked);
                done++;
                self_kills++;
                spawn(&k[i], i, &rng, round++);
                continue;
            }
            cr_assert_eq(r, (ssize_t)sizeof v, "worker %d died by itself", i);
            if (v > acked)
                acked = v;
            if (++k[i].seen < k[i].quota)
                continue;
            /* Somewhere in its next commit, checkpoint, or the recovery of another's. */
            rng = rng * 1103515245u + 12345u;
            for (volatile unsigned spin = (rng >> 8) % 100000; spin > 0; spin--)
                ;
            reap(&k[i], i, &acked);
            done++;
            spawn(&k[i], i, &rng, round++);
        }
    }
    for (int i = 0; i < WORKERS; i++)
        reap(&k[i], i, &acked);
    /* The live state: every acknowledged version, consistent. */
    uint64_t v = check_consistent(st);
    cr_assert_geq(v, acked, "acknowledged version %llu lost (state at %llu)",
                  (unsigned long long)acked, (unsigned long long)v);
    /* One more commit takes the lock (log and state agree after it), then the log must
     * rebuild exactly the live version. */
    uint64_t got;
    cr_assert_eq(commit_one(st, &got), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(got, v + 1);
    uint64_t lo, hi;
    cr_assert_eq(theus_state_versions(g_dir, &lo, &hi), THEUS_OK);
    cr_assert_eq(hi, got, "the log ends at %llu, the state is at %llu", (unsigned long long)hi,
                 (unsigned long long)got);
    theus_shared_summary s;
    cr_assert_eq(theus_shared_info(g_name, &s), THEUS_OK);
    const shared_durable_area *da = &shared_area_of(st)->durable;
    uint64_t cut = da->truncated, kept = da->kept, recovered = s.recovered, dropped = s.dropped;
    theus_state_destroy(st);
    cr_assert_eq(theus_shared_info(g_name, &s), THEUS_ENOENT);
    /* Recovered from the directory alone. */
    st = open_ds(g_name, g_dir, NULL, THEUS_SYNC_COMMIT);
    cr_assert_eq(check_consistent(st), got);
    theus_state_destroy(st);
    cr_log_info("%d kills over %d workers (%d at crash points), acknowledged up to %llu, "
                "state at %llu; redo: %llu finished by others, %llu dropped; log: %llu "
                "in-flight records cut off, %llu kept", done, WORKERS, self_kills,
                (unsigned long long)acked, (unsigned long long)got,
                (unsigned long long)recovered, (unsigned long long)dropped,
                (unsigned long long)cut, (unsigned long long)kept);
}

/* ---- deterministic crash points ------------------------------------------------------------
 * A worker joins and is killed (by itself) at one point of its commit: inside the log append
 * (a partial record, a whole record before or after the append position moved, a segment
 * rotation) or inside the redo protocol. The parent then takes the commit lock (a commit) and
 * checks that the state is whole and that the log ends exactly at the state's version. */

static int g_point, g_redo;

static void die_at(int point)
{
    if (point == g_point)
        raise(SIGKILL);
}

static void crash_worker(int point, int redo)
{
    theus_state *st = NULL;
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    if (theus_shared_open_durable(g_name, g_dir, NULL, NULL, &o, &st) != THEUS_OK)
        _exit(3);
    g_point = point;
    g_redo = redo;
    if (redo)
        redo_fault_hook = die_at;
    else
        wal_fault_hook = die_at;
    for (int i = 0; i < 64; i++) { /* enough to fill a 64 KiB segment: rotation */
        uint64_t got;
        if (commit_one(st, &got) != THEUS_OK)
            _exit(4);
    }
    _exit(5);
}

/* Past the valid end of the log (the shared append position) the live segment holds zeros
 * only (preallocation), or nothing (without it): no byte of an unfinished append is left. */
static void expect_clean_tail(theus_state *st, const char *what)
{
    const shared_durable_area *da = &shared_area_of(st)->durable;
    char p[SHARED_DURABLE_DIR_MAX + 64];
    snprintf(p, sizeof p, DUR_SEGMENT_FMT, da->dir,
             (unsigned long long)atomic_load(&da->seg_first));
    int fd = open(p, O_RDONLY);
    cr_assert(fd >= 0, "%s: %s: %s", what, p, strerror(errno));
    struct stat sb;
    cr_assert_eq(fstat(fd, &sb), 0);
    uint64_t size = (uint64_t)sb.st_size, at = da->append_off;
    if (g_prealloc == THEUS_PREALLOC_OFF)
        cr_assert_eq(size, at, "%s: %llu bytes, the log ends at %llu", what,
                     (unsigned long long)size, (unsigned long long)at);
    static unsigned char buf[1 << 16];
    while (at < size) {
        ssize_t n = pread(fd, buf, sizeof buf, (off_t)at);
        cr_assert_gt(n, 0);
        for (ssize_t i = 0; i < n; i++)
            cr_assert_eq(buf[i], 0, "%s: byte %llu past the end of the log (%llu) is %u", what,
                         (unsigned long long)(at + (uint64_t)i),
                         (unsigned long long)da->append_off, buf[i]);
        at += (uint64_t)n;
    }
    close(fd);
}

static void crash_at(int point, int redo, int new_expected)
{
    theus_state *st = open_ds(g_name, g_dir, schema, THEUS_SYNC_COMMIT);
    uint64_t got;
    cr_assert_eq(commit_one(st, &got), THEUS_OK);
    uint64_t before = theus_state_version(st);
    g_kids[0] = fork();
    cr_assert_geq(g_kids[0], 0);
    if (g_kids[0] == 0)
        crash_worker(point, redo);
    int status;
    cr_assert_eq(waitpid(g_kids[0], &status, 0), g_kids[0]);
    g_kids[0] = 0;
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "point %d: status %d", point,
              status);
    /* The next taker of the commit lock makes the log agree. */
    cr_assert_eq(state_lock(st), THEUS_OK, "%s", theus_last_error_message());
    expect_clean_tail(st, "after the agreement");
    state_unlock(st);
    cr_assert_eq(commit_one(st, &got), THEUS_OK, "%s", theus_last_error_message());
    expect_clean_tail(st, "after the next commit");
    uint64_t v = check_consistent(st);
    cr_assert_eq(v, got);
    if (new_expected >= 0 && point != WAL_POINT_ROTATING)
        cr_assert_eq(got, before + (new_expected ? 2 : 1), "point %d/%d: version %llu after %llu",
                     point, redo, (unsigned long long)got, (unsigned long long)before);
    uint64_t lo, hi;
    cr_assert_eq(theus_state_versions(g_dir, &lo, &hi), THEUS_OK);
    cr_assert_eq(hi, v, "point %d/%d: the log ends at %llu, the state is at %llu", point, redo,
                 (unsigned long long)hi, (unsigned long long)v);
    theus_state_destroy(st);
    st = open_ds(g_name, g_dir, NULL, THEUS_SYNC_COMMIT);
    cr_assert_eq(check_consistent(st), v);
    theus_durable_info info;
    cr_assert_eq(theus_state_durable_info(st, &info), THEUS_OK);
    cr_assert_eq(info.torn_bytes, 0, "point %d/%d: torn bytes left in the log", point, redo);
    theus_state_destroy(st);
}

Test(durable_shared, crash_partial_record) { crash_at(WAL_POINT_PARTIAL, 0, 0); }
Test(durable_shared, crash_record_written) { crash_at(WAL_POINT_WRITTEN, 0, 0); }
Test(durable_shared, crash_record_appended) { crash_at(WAL_POINT_APPENDED, 0, 0); }
Test(durable_shared, crash_rotating) { crash_at(WAL_POINT_ROTATING, 0, -1); }
Test(durable_shared, crash_redo_writing) { crash_at(REDO_POINT_WRITING, 1, 0); }
Test(durable_shared, crash_redo_ready) { crash_at(REDO_POINT_READY, 1, 1); }
Test(durable_shared, crash_redo_replaying) { crash_at(REDO_POINT_REPLAYING, 1, 1); }
Test(durable_shared, crash_redo_applied) { crash_at(REDO_POINT_APPLIED, 1, 1); }
Test(durable_shared, crash_redo_published) { crash_at(REDO_POINT_PUBLISHED, 1, 1); }
/* The same without preallocation (the log is cut, not zeroed). */
Test(durable_shared, crash_partial_record_prealloc_off)
{
    g_prealloc = THEUS_PREALLOC_OFF;
    crash_at(WAL_POINT_PARTIAL, 0, 0);
}
Test(durable_shared, crash_record_written_prealloc_off)
{
    g_prealloc = THEUS_PREALLOC_OFF;
    crash_at(WAL_POINT_WRITTEN, 0, 0);
}
Test(durable_shared, crash_rotating_prealloc_off)
{
    g_prealloc = THEUS_PREALLOC_OFF;
    crash_at(WAL_POINT_ROTATING, 0, -1);
}
Test(durable_shared, crash_redo_ready_prealloc_off)
{
    g_prealloc = THEUS_PREALLOC_OFF;
    crash_at(REDO_POINT_READY, 1, 1);
}

/* A process killed while it writes an audit record (wal_append_note, under the commit lock,
 * no commit in flight): the half record past the append position is cut off (zeroed) by the
 * next taker of the lock — recovery from the directory then finds no torn tail. */
static void note_worker(void)
{
    theus_state *st = NULL;
    if (theus_shared_open_durable(g_name, g_dir, NULL, NULL, NULL, &st) != THEUS_OK)
        _exit(3);
    durable *d = durable_of(st);
    wal_audit_entry e = {.seq = 1, .value = 2.0, .rule = 2, .level = 'A', .refused = 1};
    snprintf(e.field, sizeof e.field, "a");
    unsigned char body[256], rec[512];
    uint64_t n = wal_audit_body_size(&e, 1);
    wal_audit_encode(body, &e, 1);
    wal_record_encode(rec, WAL_KIND_AUDIT, theus_state_version(st) + 1, body, n);
    g_point = WAL_POINT_NOTE_PARTIAL;
    wal_fault_hook = die_at;
    if (!d || state_lock(st) != THEUS_OK)
        _exit(4);
    wal_append_note(&d->w, rec, (size_t)(WAL_REC_OVERHEAD + n), 1);
    _exit(5);
}

static void partial_audit_record(void)
{
    theus_state *st = open_ds(g_name, g_dir, schema, THEUS_SYNC_COMMIT);
    uint64_t got;
    cr_assert_eq(commit_one(st, &got), THEUS_OK);
    g_kids[0] = fork();
    cr_assert_geq(g_kids[0], 0);
    if (g_kids[0] == 0)
        note_worker();
    int status;
    cr_assert_eq(waitpid(g_kids[0], &status, 0), g_kids[0]);
    g_kids[0] = 0;
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "status %d", status);
    cr_assert_eq(state_lock(st), THEUS_OK, "%s", theus_last_error_message());
    expect_clean_tail(st, "after the agreement");
    state_unlock(st);
    uint64_t v = check_consistent(st), lo, hi;
    cr_assert_eq(v, got);
    cr_assert_eq(theus_state_versions(g_dir, &lo, &hi), THEUS_OK);
    cr_assert_eq(hi, v);
    theus_state_destroy(st);
    st = open_ds(g_name, g_dir, NULL, THEUS_SYNC_COMMIT);
    cr_assert_eq(check_consistent(st), v);
    theus_durable_info info;
    cr_assert_eq(theus_state_durable_info(st, &info), THEUS_OK);
    cr_assert_eq(info.torn_bytes, 0, "the half audit record was left in the log");
    theus_state_destroy(st);
}

Test(durable_shared, crash_partial_audit_record) { partial_audit_record(); }
Test(durable_shared, crash_partial_audit_record_prealloc_off)
{
    g_prealloc = THEUS_PREALLOC_OFF;
    partial_audit_record();
}

/* A commit cancelled after the log's prepare (a later listener refuses): its record is
 * zeroed in the live segment, the log ends at the state's version. */
static int refuse_prepare(void *user, const publish_batch *b)
{
    (void)user;
    (void)b;
    return THEUS_ECONFLICT;
}

Test(durable_shared, cancelled_record_leaves_zeros)
{
    g_prealloc = 1u << 20; /* THEUS_SYNC_GROUP preallocates only when asked */
    theus_state *st = open_ds(g_name, g_dir, schema, THEUS_SYNC_GROUP);
    uint64_t got;
    cr_assert_eq(commit_one(st, &got), THEUS_OK);
    publish_listener l = {.prepare = refuse_prepare};
    cr_assert_eq(publish_listen(st, &l), THEUS_OK);
    theus_tx *tx = NULL;
    int64_t one = 1;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "counter", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ECONFLICT);
    expect_clean_tail(st, "after a cancel");
    cr_assert_eq(theus_state_version(st), got);
    uint64_t lo, hi;
    cr_assert_eq(theus_state_versions(g_dir, &lo, &hi), THEUS_OK);
    cr_assert_eq(hi, got);
    theus_durable_stats ds;
    cr_assert_eq(theus_state_durable_stats(st, &ds), THEUS_OK);
    cr_assert_eq(ds.log_records, 1);
    cr_assert_geq(ds.log_extends, 1);
    theus_state_destroy(st);
}

/* The creator's options decide preallocation for every process of the state: by default on
 * under THEUS_SYNC_COMMIT, off under THEUS_SYNC_GROUP (a group's fdatasync over preallocated
 * blocks can leave a hole before unacknowledged records after a power cut); an explicit
 * prealloc_bytes preallocates under any policy. */
Test(durable_shared, prealloc_is_the_creators_for_every_process)
{
    const struct {
        theus_sync creator, joiner;
        uint64_t prealloc;
        int want;
    } c[] = {
        {THEUS_SYNC_GROUP, THEUS_SYNC_GROUP, 0, 1},
        {THEUS_SYNC_GROUP, THEUS_SYNC_COMMIT, 0, 1},
        {THEUS_SYNC_COMMIT, THEUS_SYNC_GROUP, THEUS_PREALLOC_OFF, 0},
        {THEUS_SYNC_GROUP, THEUS_SYNC_GROUP, 1u << 20, 1},
    };
    for (size_t k = 0; k < sizeof c / sizeof c[0]; k++) {
        theus_shared_remove(g_name);
        rm_tree(g_dir);
        g_prealloc = c[k].prealloc;
        theus_state *st = open_ds(g_name, g_dir, schema, c[k].creator);
        g_prealloc = 0;
        theus_state *x = open_ds(g_name, g_dir, NULL, c[k].joiner);
        uint64_t got;
        cr_assert_eq(commit_one(x, &got), THEUS_OK);
        cr_assert_eq(commit_one(st, &got), THEUS_OK);
        const shared_durable_area *da = &shared_area_of(st)->durable;
        char p[SHARED_DURABLE_DIR_MAX + 64];
        snprintf(p, sizeof p, DUR_SEGMENT_FMT, da->dir,
                 (unsigned long long)atomic_load(&da->seg_first));
        struct stat sb;
        cr_assert_eq(stat(p, &sb), 0);
        theus_durable_stats ds;
        cr_assert_eq(theus_state_durable_stats(st, &ds), THEUS_OK);
        if (c[k].want) {
            cr_assert_gt((uint64_t)sb.st_size, da->append_off, "case %zu: preallocated", k);
            cr_assert_geq(ds.log_extends, 1, "case %zu", k);
        } else {
            cr_assert_eq((uint64_t)sb.st_size, da->append_off, "case %zu: appending", k);
            cr_assert_eq(ds.log_extends, 0, "case %zu", k);
        }
        theus_state_destroy(x);
        theus_state_destroy(st);
    }
}
