/* Shared states with real processes: create/open/list/info/remove/cleanup, cross-process
 * isolation (lost updates refused, disjoint writers merged), many processes on one counter
 * (fork+exec'd workers), crashes at every point of a commit and while holding locks or
 * holds, a kill storm of random SIGKILLs, permissions, corrupt and foreign segments, and
 * the GPU variant (skipped without a GPU). Processes synchronise through pipes and waitpid;
 * nothing sleeps. Child processes never call Criterion's asserts: they report through
 * their exit status. */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <theus/theus.h>
#include <theus/theus_shared.h>

#include "shared/redo.h"
#include "shared.h"
#include "state.h"

#ifndef THEUS_SHARED_WORKER
#define THEUS_SHARED_WORKER "shared_worker"
#endif

/* ---- helpers ------------------------------------------------------------------------ */

/* Every name a test makes is "test_shared-<pid>-<tag>", <pid> the test's process:
 * Criterion runs every test in its own. What a test leaves (it failed, or was killed) is
 * removed by the suite's fini in the same process, and by a sweep of the names of dead
 * test processes when a run starts and ends. Nothing else in /dev/shm is looked at. */
#define TEST_PREFIX "test_shared-"

static const char *uname_of(char *buf, size_t n, const char *tag)
{
    snprintf(buf, n, TEST_PREFIX "%d-%s", (int)getpid(), tag);
    return buf;
}

static void seg_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "/dev/shm/theus-%u-%s", (unsigned)geteuid(), name);
}

static int seg_exists(const char *name)
{
    char p[256];
    seg_path(p, sizeof p, name);
    struct stat sb;
    return lstat(p, &sb) == 0;
}

/* The pid of a test process in the /dev/shm entry @e ("theus-<uid>-test_shared-<pid>-..."
 * or a half-made "theus-<uid>.tmp-<pid>-..."), or 0. */
static pid_t entry_pid(const char *e)
{
    char named[64], tmp[64];
    snprintf(named, sizeof named, "theus-%u-" TEST_PREFIX, (unsigned)geteuid());
    snprintf(tmp, sizeof tmp, "theus-%u.tmp-", (unsigned)geteuid());
    const char *p = strncmp(e, named, strlen(named)) == 0 ? e + strlen(named)
                    : strncmp(e, tmp, strlen(tmp)) == 0 ? e + strlen(tmp) : NULL;
    if (!p)
        return 0;
    char *end = NULL;
    long pid = strtol(p, &end, 10);
    return end != p && *end == '-' && pid > 0 ? (pid_t)pid : 0;
}

/* Remove the /dev/shm entries of the processes for which @mine says so, whatever they
 * are (segments, planted FIFOs, links, directories). */
static int sweep(int (*mine)(pid_t))
{
    DIR *d = opendir("/dev/shm");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        pid_t pid = entry_pid(e->d_name);
        if (!pid || !mine(pid))
            continue;
        char path[300];
        snprintf(path, sizeof path, "/dev/shm/%s", e->d_name);
        n += unlink(path) == 0 || rmdir(path) == 0;
    }
    closedir(d);
    return n;
}

/* The children this test process started and has not reaped (killed by the fini), and
 * every child it started (their half-made segments are this test's too). */
enum { KIDS = 1024 };
static pid_t g_live[KIDS], g_ever[KIDS];
static int g_nlive, g_never;

static void kid_started(pid_t p)
{
    if (g_nlive < KIDS)
        g_live[g_nlive++] = p;
    if (g_never < KIDS)
        g_ever[g_never++] = p;
}

static void kid_reaped(pid_t p)
{
    for (int i = 0; i < g_nlive; i++)
        if (g_live[i] == p) {
            g_live[i] = g_live[--g_nlive];
            return;
        }
}

static int this_test(pid_t pid)
{
    if (pid == getpid())
        return 1;
    for (int i = 0; i < g_never; i++)
        if (g_ever[i] == pid)
            return 1;
    return 0;
}

static int dead_process(pid_t pid)
{
    return kill(pid, 0) != 0 && errno == ESRCH;
}

static void suite_fini(void)
{
    for (int i = 0; i < g_nlive; i++) {
        kill(g_live[i], SIGKILL);
        waitpid(g_live[i], NULL, 0);
    }
    g_nlive = 0;
    sweep(this_test);
}

/* No test has a Criterion .timeout: its runner leaks (LeakSanitizer fails the run) when
 * tests with one run in parallel. ctest's TIMEOUT bounds the suite. */
TestSuite(shared, .fini = suite_fini);

/* Before and after the whole run: what killed runs left. */
ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
    (void)set;
    sweep(dead_process);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
    (void)stats;
    sweep(dead_process);
}

/* Entries that this test process's states (named or half-made) left in /dev/shm. */
static int leftovers(void)
{
    DIR *d = opendir("/dev/shm");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += entry_pid(e->d_name) == getpid();
    closedir(d);
    return n;
}

/* Tests that need abandoned states to stay until they look at them, or that leave a lock
 * stuck for a while, must not overlap a theus_shared_cleanup of another test (of this run
 * or of another run of this suite by the same user): they hold this lock, as does every
 * test that calls theus_shared_cleanup. Released by close (or the process's death). */
static int g_lock_fd = -1;
#define SWEEP_LOCK_WAIT_S 240

static void on_sweep_alarm(int sig)
{
    (void)sig;
}

static int sweep_lock(void)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/theus-test_shared-%u.lock", (unsigned)geteuid());
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    /* Bounded: another run that keeps the lock this long is stuck, and this test says so
     * instead of waiting for ctest's timeout. SIGALRM without SA_RESTART interrupts flock. */
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sweep_alarm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, &old);
    alarm(SWEEP_LOCK_WAIT_S);
    int r = flock(fd, LOCK_EX);
    int e = errno;
    alarm(0);
    sigaction(SIGALRM, &old, NULL);
    cr_assert_eq(r, 0, "%s: not free after %d s (%s): another run of this suite holds it",
                 path, SWEEP_LOCK_WAIT_S, strerror(e));
    g_lock_fd = fd;
    return fd;
}

static void sweep_unlock(int fd)
{
    close(fd);
    g_lock_fd = -1;
}

/* In a child, first thing: it must not keep the sweep lock (a flock belongs to the open
 * file, which the child shares), and it dies with the test (even stopped: a test killed
 * while its child is stopped would leave that child, and its locks, for ever). */
static void child_setup(pid_t parent)
{
    if (g_lock_fd >= 0)
        close(g_lock_fd);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(99);
}

/* theus_shared_cleanup, which sweeps all of this user's states: THEUS_OK, or THEUS_EBUSY
 * for a stuck state that is not this test's (the user's other states are not the test's
 * business; what it asserts is what happened to its own). */
static void cleanup_all(size_t *removed)
{
    int rc = theus_shared_cleanup(removed);
    char mine[64];
    snprintf(mine, sizeof mine, TEST_PREFIX "%d-", (int)getpid());
    if (rc == THEUS_EBUSY)
        cr_assert(strstr(theus_last_error_message(), mine) == NULL, "%s",
                  theus_last_error_message());
    else
        cr_assert_eq(rc, THEUS_OK, "%s", theus_last_error_message());
}

typedef int (*child_fn)(void *arg);

static pid_t spawn(child_fn fn, void *arg)
{
    fflush(NULL);
    pid_t parent = getpid();
    pid_t p = fork();
    cr_assert_neq(p, -1, "fork: %s", strerror(errno));
    if (p == 0) {
        child_setup(parent);
        _exit(fn(arg));
    }
    kid_started(p);
    return p;
}

/* Exit code, or 128 + signal. */
static int wait_code(pid_t p)
{
    int status = 0;
    while (waitpid(p, &status, 0) < 0)
        cr_assert_eq(errno, EINTR, "waitpid: %s", strerror(errno));
    kid_reaped(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void send_byte(int fd)
{
    cr_assert_eq(write(fd, "x", 1), 1);
}

static int recv_byte(int fd)
{
    char c;
    ssize_t n;
    while ((n = read(fd, &c, 1)) < 0 && errno == EINTR)
        ;
    return (int)n;
}

/* In a child: the same, reporting failures through the exit status. */
static int child_send(int fd)
{
    return write(fd, "x", 1) == 1 ? 0 : 1;
}

static int child_recv(int fd)
{
    char c;
    return read(fd, &c, 1) == 1 ? 0 : 1;
}

static theus_state *create(const char *name, const char *schema, const theus_state_options *o,
                           const theus_shared_options *so)
{
    theus_state *st = NULL;
    int rc = theus_state_create_shared(name, schema, o, so, &st);
    cr_assert_eq(rc, THEUS_OK, "create_shared(%s): %s: %s", name, theus_strerror(rc),
                 theus_last_error_message());
    return st;
}

static int64_t read_i64(theus_state *st, const char *field)
{
    theus_tx *tx = NULL;
    int64_t v = 0;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    int rc = theus_tx_read(tx, field, NULL, &v, THEUS_MEM_HOST);
    cr_assert_eq(rc, THEUS_OK, "read %s: %s", field, theus_state_last_error(st));
    theus_tx_abort(tx);
    return v;
}

static int write_i64(theus_state *st, const char *field, int64_t v)
{
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(st, NULL, &tx);
    if (rc == THEUS_OK && (rc = theus_tx_write(tx, field, NULL, &v, THEUS_MEM_HOST)) != THEUS_OK)
        theus_tx_abort(tx);
    if (rc == THEUS_OK)
        rc = theus_tx_commit(tx, NULL);
    return rc;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char COUNTER_SCHEMA[] =
    "{\"name\": \"counter\", \"fields\": {"
    " \"x\": {\"dtype\": \"i64\", \"shape\": []},"
    " \"rmw\": {\"dtype\": \"i64\", \"shape\": []},"
    " \"add\": {\"dtype\": \"i64\", \"shape\": []},"
    " \"m\": {\"dtype\": \"f32\", \"shape\": [4, 8]},"
    " \"probe\": {\"dtype\": \"i64\", \"shape\": []}}}";

static void finish(theus_state *st, const char *name)
{
    theus_state_destroy(st);
    cr_assert_not(seg_exists(name), "segment of '%s' left behind", name);
    cr_assert_eq(leftovers(), 0, "segments left behind");
}

/* ---- create, open, lifetimes -------------------------------------------------------- */

typedef struct open_arg {
    const char *name;
    int to_parent, from_parent;
} open_arg;

/* Open, check what the parent committed, commit x = 42, wait, exit. */
static int child_commit_42(void *p)
{
    open_arg *a = p;
    theus_state *st = NULL;
    if (theus_state_open_shared(a->name, NULL, &st) != THEUS_OK)
        return 10;
    theus_tx *tx = NULL;
    int64_t x = 0;
    if (theus_tx_begin(st, NULL, &tx) || theus_tx_read(tx, "x", NULL, &x, THEUS_MEM_HOST))
        return 11;
    theus_tx_abort(tx);
    if (x != 7 || theus_state_version(st) != 2)
        return 12;
    if (write_i64(st, "x", 42) != THEUS_OK)
        return 13;
    if (child_send(a->to_parent) || child_recv(a->from_parent))
        return 14;
    theus_state_destroy(st);
    return 0;
}

Test(shared, create_open_commit_across_processes)
{
    char name[64];
    uname_of(name, sizeof name, "basic");
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, NULL);
    cr_assert_str_eq(theus_state_shared_name(st), name);
    cr_assert_str_eq(theus_state_name(st), "counter");
    cr_assert(seg_exists(name));
    cr_assert_eq(write_i64(st, "x", 7), THEUS_OK);

    int up[2], down[2];
    cr_assert_eq(pipe(up), 0);
    cr_assert_eq(pipe(down), 0);
    open_arg a = {name, up[1], down[0]};
    pid_t p = spawn(child_commit_42, &a);
    cr_assert_eq(recv_byte(up[0]), 1, "child failed before committing");
    /* The child's commit is visible here at once, with the same versions and stats. */
    cr_assert_eq(theus_state_version(st), 3);
    cr_assert_eq(read_i64(st, "x"), 42);
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "x", &fi), THEUS_OK);
    cr_assert_eq(fi.version, 3);
    theus_stats s;
    theus_state_stats(st, &s);
    cr_assert_eq(s.commits, 2);
    theus_shared_summary info;
    cr_assert_eq(theus_shared_info(name, &info), THEUS_OK);
    cr_assert_eq(info.processes, 2);
    cr_assert_eq(info.version, 3);
    cr_assert_str_eq(info.schema_name, "counter");
    cr_assert_eq(info.creator_pid, getpid());
    cr_assert_eq(info.abandoned, 0);
    send_byte(down[1]);
    cr_assert_eq(wait_code(p), 0);
    cr_assert_eq(theus_shared_info(name, &info), THEUS_OK);
    cr_assert_eq(info.processes, 1);
    finish(st, name);
}

Test(shared, same_process_opens_twice)
{
    char name[64];
    uname_of(name, sizeof name, "twice");
    theus_state *a = create(name, COUNTER_SCHEMA, NULL, NULL);
    theus_state *b = NULL;
    cr_assert_eq(theus_state_open_shared(name, COUNTER_SCHEMA, &b), THEUS_OK);
    cr_assert_eq(write_i64(b, "x", 5), THEUS_OK);
    cr_assert_eq(read_i64(a, "x"), 5);
    theus_state_destroy(a); /* the creator leaves first: the state lives on */
    cr_assert(seg_exists(name));
    cr_assert_eq(read_i64(b, "x"), 5);
    finish(b, name);
}

Test(shared, last_one_out_removes_the_segment)
{
    char name[64];
    uname_of(name, sizeof name, "last");
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, NULL);
    theus_state_destroy(st);
    cr_assert_not(seg_exists(name));
    theus_state *again = NULL;
    cr_assert_eq(theus_state_open_shared(name, NULL, &again), THEUS_ENOENT);
    cr_assert_null(again);
    /* The name is free again. */
    st = create(name, COUNTER_SCHEMA, NULL, NULL);
    cr_assert_eq(theus_state_version(st), 1);
    finish(st, name);
}

Test(shared, names_options_and_duplicates)
{
    theus_state *st = NULL;
    const char *bad[] = {"", ".hidden", "-x", "a/b", "sp ace", "ü",
                         "0123456789012345678901234567890123456789012345678901234567890123"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(theus_state_create_shared(bad[i], COUNTER_SCHEMA, NULL, NULL, &st),
                     THEUS_EINVAL, "name '%s'", bad[i]);
        cr_assert_eq(theus_state_open_shared(bad[i], NULL, &st), THEUS_EINVAL);
    }
    cr_assert_eq(theus_state_create_shared(NULL, COUNTER_SCHEMA, NULL, NULL, &st), THEUS_EINVAL);
    cr_assert_eq(theus_state_open_shared("x", NULL, NULL), THEUS_EINVAL);
    char name[64];
    uname_of(name, sizeof name, "dup_A.b-c");
    theus_shared_options so = THEUS_SHARED_OPTIONS_INIT;
    so.max_processes = 5000;
    cr_assert_eq(theus_state_create_shared(name, COUNTER_SCHEMA, NULL, &so, &st), THEUS_EINVAL);
    cr_assert_eq(theus_state_create_shared(name, "{\"name\": 1}", NULL, NULL, &st), THEUS_ESCHEMA);
    cr_assert_not(seg_exists(name));
    st = create(name, COUNTER_SCHEMA, NULL, NULL);
    theus_state *dup = NULL;
    cr_assert_eq(theus_state_create_shared(name, COUNTER_SCHEMA, NULL, NULL, &dup), THEUS_EBUSY);
    cr_assert_null(dup);
    cr_assert(strstr(theus_last_error_message(), "exists") != NULL);
    cr_assert_null(theus_state_shared_name(NULL));
    finish(st, name);
}

Test(shared, schema_checked_on_open)
{
    char name[64];
    uname_of(name, sizeof name, "schema");
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, NULL);
    theus_state *o = NULL;
    /* The same schema with other white space and key order is the same schema. */
    const char same[] = "{\"fields\": {\"x\": {\"shape\": [], \"dtype\": \"i64\"},"
                        "\"rmw\": {\"dtype\": \"i64\", \"shape\": []},"
                        "\"add\": {\"dtype\": \"i64\", \"shape\": []},"
                        "\"m\": {\"dtype\": \"f32\", \"shape\": [4, 8], \"placement\": \"host\"},"
                        "\"probe\": {\"dtype\": \"i64\", \"shape\": []}}, \"name\": \"counter\"}";
    cr_assert_eq(theus_state_open_shared(name, same, &o), THEUS_OK, "%s",
                 theus_last_error_message());
    theus_state_destroy(o);
    const char *other[] = {
        "{\"name\": \"counter\", \"fields\": {\"x\": {\"dtype\": \"i32\", \"shape\": []}}}",
        "{\"name\": \"other\", \"fields\": {\"x\": {\"dtype\": \"i64\", \"shape\": []},"
        "\"rmw\": {\"dtype\": \"i64\", \"shape\": []}, \"add\": {\"dtype\": \"i64\", \"shape\": []},"
        "\"m\": {\"dtype\": \"f32\", \"shape\": [4, 8]}, \"probe\": {\"dtype\": \"i64\", \"shape\": []}}}",
        "{\"name\": \"counter\", \"fields\": {\"x\": {\"dtype\": \"i64\", \"shape\": []},"
        "\"rmw\": {\"dtype\": \"i64\", \"shape\": []}, \"add\": {\"dtype\": \"i64\", \"shape\": []},"
        "\"m\": {\"dtype\": \"f32\", \"shape\": [4, 9]}, \"probe\": {\"dtype\": \"i64\", \"shape\": []}}}",
        "{\"name\": \"counter\", \"fields\": {\"x\": {\"dtype\": \"i64\", \"shape\": [],"
        " \"constraints\": {\"min\": 0}}, \"rmw\": {\"dtype\": \"i64\", \"shape\": []},"
        "\"add\": {\"dtype\": \"i64\", \"shape\": []}, \"m\": {\"dtype\": \"f32\", \"shape\": [4, 8]},"
        "\"probe\": {\"dtype\": \"i64\", \"shape\": []}}}",
        "{not json",
    };
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        cr_assert_eq(theus_state_open_shared(name, other[i], &o), THEUS_ESCHEMA, "schema %zu", i);
        cr_assert_null(o);
    }
    cr_assert(strstr(theus_last_error_message(), "line") != NULL);
    finish(st, name);
}

/* ---- isolation across processes ----------------------------------------------------- */

/* Read-modify-write of x (x + 1), in two steps the parent interleaves. */
static int child_rmw_when_told(void *p)
{
    open_arg *a = p;
    theus_state *st = NULL;
    if (theus_state_open_shared(a->name, NULL, &st) != THEUS_OK)
        return 10;
    if (child_recv(a->from_parent))
        return 11;
    theus_tx *tx = NULL;
    int64_t x = 0;
    if (theus_tx_begin(st, NULL, &tx) || theus_tx_read(tx, "x", NULL, &x, THEUS_MEM_HOST))
        return 12;
    x++;
    if (theus_tx_write(tx, "x", NULL, &x, THEUS_MEM_HOST) || theus_tx_commit(tx, NULL))
        return 13;
    if (child_send(a->to_parent))
        return 14;
    theus_state_destroy(st);
    return 0;
}

Test(shared, lost_update_refused_across_processes)
{
    char name[64];
    uname_of(name, sizeof name, "lost");
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, NULL);
    int isolations[] = {THEUS_ISOLATION_SERIALIZABLE, THEUS_ISOLATION_SNAPSHOT,
                        THEUS_ISOLATION_STRICT};
    int64_t expect = 0;
    for (int k = 0; k < 3; k++) {
        int up[2], down[2];
        cr_assert_eq(pipe(up), 0);
        cr_assert_eq(pipe(down), 0);
        open_arg a = {name, up[1], down[0]};
        pid_t p = spawn(child_rmw_when_told, &a);
        /* This process reads x, then the child increments it, then this process writes its
         * own x + 1: the second writer must conflict, or the child's update is lost. */
        theus_tx_options to = THEUS_TX_OPTIONS_INIT;
        to.isolation = isolations[k];
        theus_tx *tx = NULL;
        int64_t x = -1;
        cr_assert_eq(theus_tx_begin(st, &to, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_read(tx, "x", NULL, &x, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(x, expect);
        send_byte(down[1]);
        cr_assert_eq(recv_byte(up[0]), 1, "child failed");
        cr_assert_eq(wait_code(p), 0);
        expect++;
        x++;
        cr_assert_eq(theus_tx_write(tx, "x", NULL, &x, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ECONFLICT, "isolation %d", isolations[k]);
        theus_conflict c;
        cr_assert_eq(theus_last_conflict(st, &c), THEUS_OK);
        if (isolations[k] != THEUS_ISOLATION_STRICT)
            cr_assert_str_eq(c.field, "x");
        cr_assert_eq(read_i64(st, "x"), expect, "the child's increment must survive");
        for (int i = 0; i < 2; i++) {
            close(up[i]);
            close(down[i]);
        }
    }
    finish(st, name);
}

typedef struct row_arg {
    const char *name;
    int row, to_parent, from_parent;
} row_arg;

/* Begin, report the base, wait, write row @row of m, commit. */
static int child_write_row(void *p)
{
    row_arg *a = p;
    theus_state *st = NULL;
    if (theus_state_open_shared(a->name, NULL, &st) != THEUS_OK)
        return 10;
    theus_tx *tx = NULL;
    if (theus_tx_begin(st, NULL, &tx) != THEUS_OK)
        return 11;
    float row[8];
    for (int i = 0; i < 8; i++)
        row[i] = (float)(a->row * 10 + i);
    theus_region r = {.ndim = 2, .start = {a->row, 0}, .stop = {a->row + 1, 8}};
    if (theus_tx_write(tx, "m", &r, row, THEUS_MEM_HOST) != THEUS_OK)
        return 12;
    if (child_send(a->to_parent) || child_recv(a->from_parent))
        return 13;
    int rc = theus_tx_commit(tx, NULL);
    theus_state_destroy(st);
    return rc == THEUS_OK ? 0 : 20;
}

Test(shared, disjoint_writers_from_one_base_all_commit)
{
    char name[64];
    uname_of(name, sizeof name, "disjoint");
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, NULL);
    enum { N = 4 };
    int up[2], down[2];
    cr_assert_eq(pipe(up), 0);
    cr_assert_eq(pipe(down), 0);
    row_arg a[N];
    pid_t p[N];
    for (int i = 0; i < N; i++) {
        a[i] = (row_arg){name, i, up[1], down[0]};
        p[i] = spawn(child_write_row, &a[i]);
    }
    for (int i = 0; i < N; i++) /* all have begun at version 1 and staged their row */
        cr_assert_eq(recv_byte(up[0]), 1);
    for (int i = 0; i < N; i++)
        send_byte(down[1]);
    for (int i = 0; i < N; i++)
        cr_assert_eq(wait_code(p[i]), 0, "writer %d", i);
    cr_assert_eq(theus_state_version(st), 1 + N);
    float m[4][8];
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "m", NULL, m, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 8; c++)
            cr_assert_eq(m[r][c], (float)(r * 10 + c));
    finish(st, name);
}

/* Start the helper program (fork+exec): nothing is inherited but the arguments. */
static pid_t exec_worker(const char *cmd, const char *name, const char *n, int out_fd)
{
    fflush(NULL);
    pid_t parent = getpid();
    pid_t p = fork();
    cr_assert_neq(p, -1);
    if (p == 0) {
        child_setup(parent);
        if (out_fd >= 0)
            dup2(out_fd, 1);
        execl(THEUS_SHARED_WORKER, "shared_worker", cmd, name, n, (char *)NULL);
        _exit(127);
    }
    kid_started(p);
    return p;
}

Test(shared, many_processes_increment_one_counter)
{
    char name[64];
    uname_of(name, sizeof name, "many");
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    o.priority_lease_ms = 20;
    theus_state *st = create(name, COUNTER_SCHEMA, &o, NULL);
    enum { P = 6, N = 150 };
    pid_t p[P];
    for (int i = 0; i < P; i++)
        p[i] = exec_worker("incr", name, "150", -1);
    for (int i = 0; i < P; i++)
        cr_assert_eq(wait_code(p[i]), 0, "worker %d", i);
    cr_assert_eq(read_i64(st, "rmw"), P * N, "read-modify-write increments lost or doubled");
    cr_assert_eq(read_i64(st, "add"), P * N, "ADD increments lost or doubled");
    theus_stats s;
    theus_state_stats(st, &s);
    cr_assert_eq(s.commits, 2 * P * N);
    cr_assert_eq(theus_state_version(st), 1 + 2 * P * N);
    finish(st, name);
}

/* ---- crashes ---------------------------------------------------------------------------- */

static const char CRASH_SCHEMA[] =
    "{\"name\": \"crash\", \"fields\": {"
    " \"rows\": {\"dtype\": \"i64\", \"shape\": [4, 64]},"
    " \"big\": {\"dtype\": \"f32\", \"shape\": [4096]},"
    " \"total\": {\"dtype\": \"i64\", \"shape\": []},"
    " \"probe\": {\"dtype\": \"i64\", \"shape\": []}}}";

static int g_point;
static theus_state *g_crash_st;

static void crash_hook(int point)
{
    if (point != g_point)
        return;
    if (point == REDO_POINT_REPLAYING) {
        /* A replay torn half-way: garbage in the regions being written. */
        const void *p = NULL;
        theus_state_field_ptr(g_crash_st, "big", &p, NULL);
        memset((void *)p, 0xff, 4096 * sizeof(float) / 2);
        theus_state_field_ptr(g_crash_st, "rows", &p, NULL);
        memset((void *)p, 0xab, 64 * sizeof(int64_t));
    }
    raise(SIGKILL);
}

/* One commit: rows[0] = 7, big += 1, total += 1, killed at g_point. */
static int child_crash_commit(void *p)
{
    const char *name = p;
    theus_state *st = NULL;
    if (theus_state_open_shared(name, NULL, &st) != THEUS_OK)
        return 10;
    g_crash_st = st;
    static int64_t row[64];
    static float ones[4096];
    for (int i = 0; i < 64; i++)
        row[i] = 7;
    for (int i = 0; i < 4096; i++)
        ones[i] = 1.0f;
    const int64_t one = 1;
    theus_region r0 = {.ndim = 2, .start = {0, 0}, .stop = {1, 64}};
    theus_tx *tx = NULL;
    if (theus_tx_begin(st, NULL, &tx) || theus_tx_write(tx, "rows", &r0, row, THEUS_MEM_HOST) ||
        theus_tx_add(tx, "big", NULL, ones, THEUS_MEM_HOST) ||
        theus_tx_add(tx, "total", NULL, &one, THEUS_MEM_HOST))
        return 11;
    redo_fault_hook = crash_hook;
    theus_tx_commit(tx, NULL);
    return 12; /* the hook should have killed this process */
}

/* Read everything in one transaction and check that it is one whole version: the child's
 * commit entirely present or entirely absent. A read that finds a replay under way waits
 * for it (and, when its process died, finishes it): then the transaction, begun before,
 * conflicts and is run again from the new version. Returns the total it read. */
static int64_t check_crash_state(theus_state *st, int64_t total0)
{
    static int64_t rows[4][64];
    static float big[4096];
    int64_t total = -1;
    for (int attempt = 0;; attempt++) {
        theus_tx *tx = NULL;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        int rc = theus_tx_read(tx, "rows", NULL, rows, THEUS_MEM_HOST);
        if (rc == THEUS_OK)
            rc = theus_tx_read(tx, "big", NULL, big, THEUS_MEM_HOST);
        if (rc == THEUS_OK)
            rc = theus_tx_read(tx, "total", NULL, &total, THEUS_MEM_HOST);
        theus_tx_abort(tx);
        if (rc == THEUS_OK)
            break;
        cr_assert_eq(rc, THEUS_ECONFLICT, "%s", theus_state_last_error(st));
        cr_assert_lt(attempt, 2);
    }
    cr_assert(total == total0 || total == total0 + 1, "total %lld after %lld", (long long)total,
              (long long)total0);
    for (int i = 0; i < 64; i++)
        cr_assert_eq(rows[0][i], total ? 7 : 0, "rows[0][%d] = %lld", i, (long long)rows[0][i]);
    for (int i = 0; i < 4096; i++)
        cr_assert_eq(big[i], (float)total, "big[%d] = %g, total %lld", i, (double)big[i],
                     (long long)total);
    return total;
}

Test(shared, killed_at_every_point_of_a_commit)
{
    char name[64];
    uname_of(name, sizeof name, "points");
    theus_state *st = create(name, CRASH_SCHEMA, NULL, NULL);
    const struct { int point; int applied; } cases[] = {
        {REDO_POINT_WRITING, 0},   /* before READY: undone */
        {REDO_POINT_READY, 1},     /* READY: the next lock taker finishes it */
        {REDO_POINT_REPLAYING, 1}, /* torn replay: finished from the redo record */
        {REDO_POINT_APPLIED, 1},   /* applied, not published */
        {REDO_POINT_PUBLISHED, 1}, /* published, record not closed: applied again, same bytes */
    };
    int64_t total = 0;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        uint64_t v0 = theus_state_version(st);
        g_point = cases[k].point;
        pid_t p = spawn(child_crash_commit, name);
        cr_assert_eq(wait_code(p), 128 + SIGKILL, "point %d", cases[k].point);
        /* A reader sees one whole version, whatever the point (a torn replay makes it
         * wait for the commit lock, which repairs the state). */
        check_crash_state(st, total);
        /* The next commit (it takes the commit lock, left owner-dead) completes or drops
         * the interrupted one first. */
        cr_assert_eq(write_i64(st, "probe", (int64_t)k), THEUS_OK, "%s",
                     theus_state_last_error(st));
        cr_assert_eq(theus_state_version(st), v0 + 1 + (uint64_t)cases[k].applied,
                     "point %d", cases[k].point);
        cr_assert_eq(check_crash_state(st, total), total + cases[k].applied);
        total += cases[k].applied;
        theus_stats s;
        theus_state_stats(st, &s);
        cr_assert_eq(s.commits + 1, theus_state_version(st), "commits counted exactly");
        theus_shared_summary info;
        cr_assert_eq(theus_shared_info(name, &info), THEUS_OK);
        cr_assert_eq(info.processes, 1, "the dead process's lease is reclaimed");
    }
    finish(st, name);
}

/* Take the commit lock (as a commit does) and die holding it. */
static int child_die_holding_lock(void *p)
{
    theus_state *st = NULL;
    if (theus_state_open_shared(p, NULL, &st) != THEUS_OK)
        return 10;
    if (state_lock(st) != THEUS_OK)
        return 11;
    raise(SIGKILL);
    return 12;
}

typedef struct hold_arg {
    const char *name;
    int to_parent;
} hold_arg;

/* Hold commits, tell the parent, and wait to be killed. */
static int child_hold_forever(void *p)
{
    hold_arg *a = p;
    theus_state *st = NULL;
    if (theus_state_open_shared(a->name, NULL, &st) != THEUS_OK)
        return 10;
    if (theus_state_hold_commits(st) != THEUS_OK || child_send(a->to_parent))
        return 11;
    for (;;)
        pause();
}

Test(shared, dead_lock_holder_and_dead_holder_do_not_block)
{
    char name[64];
    uname_of(name, sizeof name, "dead");
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, NULL);
    pid_t p = spawn(child_die_holding_lock, (void *)name);
    cr_assert_eq(wait_code(p), 128 + SIGKILL);
    cr_assert_eq(write_i64(st, "x", 1), THEUS_OK, "robust commit lock taken over");

    int up[2];
    cr_assert_eq(pipe(up), 0);
    hold_arg a = {name, up[1]};
    p = spawn(child_hold_forever, &a);
    cr_assert_eq(recv_byte(up[0]), 1);
    kill(p, SIGKILL);
    cr_assert_eq(wait_code(p), 128 + SIGKILL);
    /* The dead process's hold goes with its lease; this commit would wait forever. */
    cr_assert_eq(write_i64(st, "x", 2), THEUS_OK);
    cr_assert_eq(read_i64(st, "x"), 2);
    /* Holds of this process still work as before. */
    cr_assert_eq(theus_state_hold_commits(st), THEUS_OK);
    cr_assert_eq(read_i64(st, "x"), 2);
    theus_state_release_commits(st);
    cr_assert_eq(write_i64(st, "x", 3), THEUS_OK);
    finish(st, name);
}

/* ---- the kill storm ---------------------------------------------------------------- */

/* big is large enough that its replay is a good part of a commit: many kills land in it. */
enum { SW = 4, SROW = 256, SBIG = 1 << 18, KILLS = 200 };

static const char STORM_SCHEMA[] =
    "{\"name\": \"storm\", \"fields\": {"
    " \"rows\": {\"dtype\": \"i64\", \"shape\": [4, 256]},"
    " \"mirror\": {\"dtype\": \"i64\", \"shape\": [4]},"
    " \"count\": {\"dtype\": \"i64\", \"shape\": [4]},"
    " \"total\": {\"dtype\": \"i64\", \"shape\": []},"
    " \"last\": {\"dtype\": \"i64\", \"shape\": []},"
    " \"big\": {\"dtype\": \"f32\", \"shape\": [262144]},"
    " \"wide\": {\"dtype\": \"f32\", \"shape\": [262144]},"
    " \"probe\": {\"dtype\": \"i64\", \"shape\": []}}}";

typedef struct storm_msg {
    int32_t kind; /* 'A': about to commit seq; 'C': seq committed */
    int32_t seq;
} storm_msg;

typedef struct storm_arg {
    const char *name;
    int slot, fd;
    int32_t seq0;
    int64_t tag;
} storm_arg;

static int64_t g_row[SROW];
static float g_ones[SBIG];

/* The value a commit tagged @tag assigns to every element of wide (exact in f32). */
static float wide_value(int64_t tag)
{
    return (float)(((tag >> 32) << 20) | (tag & 0xfffff));
}

/* One commit of worker @slot: its row and mirror entry get the tag, `last` too (so workers
 * conflict write-write and retry), wide the tag's value, and count[slot], total and every
 * element of big get +1. */
static int storm_body(theus_tx *tx, void *user)
{
    storm_arg *a = user;
    const int64_t one = 1;
    for (int i = 0; i < SROW; i++)
        g_row[i] = a->tag;
    theus_region row = {.ndim = 2, .start = {a->slot, 0}, .stop = {a->slot + 1, SROW}};
    theus_region slot = {.ndim = 1, .start = {a->slot}, .stop = {a->slot + 1}};
    int rc;
    if ((rc = theus_tx_write(tx, "rows", &row, g_row, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "mirror", &slot, &a->tag, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "last", NULL, &a->tag, THEUS_MEM_HOST)) ||
        (rc = theus_tx_add(tx, "count", &slot, &one, THEUS_MEM_HOST)) ||
        (rc = theus_tx_add(tx, "total", NULL, &one, THEUS_MEM_HOST)) ||
        (rc = theus_tx_add(tx, "big", NULL, g_ones, THEUS_MEM_HOST)))
        return rc;
    float *w = NULL;
    if ((rc = theus_tx_stage_buffer(tx, "wide", NULL, THEUS_OP_ASSIGN, (void **)&w, NULL)))
        return rc;
    const float v = wide_value(a->tag);
    for (int i = 0; i < SBIG; i++)
        w[i] = v;
    return THEUS_OK;
}

static int storm_worker(void *p)
{
    storm_arg *a = p;
    theus_state *st = NULL;
    int rc = theus_state_open_shared(a->name, NULL, &st);
    if (rc != THEUS_OK) {
        fprintf(stderr, "storm worker: open: %s\n", theus_last_error_message());
        return 10;
    }
    for (int i = 0; i < SBIG; i++)
        g_ones[i] = 1.0f;
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.max_attempts = 1000000;
    ro.max_time_ms = 100000;
    for (int32_t seq = a->seq0;; seq++) {
        a->tag = ((int64_t)a->slot << 32) | seq;
        storm_msg m = {'A', seq};
        if (write(a->fd, &m, sizeof m) != sizeof m)
            return 11;
        rc = theus_tx_run(st, &ro, storm_body, a, NULL);
        if (rc != THEUS_OK) {
            fprintf(stderr, "storm worker %d: commit: %s\n", a->slot, theus_state_last_error(st));
            return 12;
        }
        m.kind = 'C';
        if (write(a->fd, &m, sizeof m) != sizeof m)
            return 13;
    }
}

typedef struct storm_slot {
    pid_t pid;
    int fd;                       /* read end of its pipe, non-blocking */
    int32_t next_seq;             /* first seq not announced yet */
    int64_t announced, committed; /* over all incarnations */
} storm_slot;

static void storm_drain(storm_slot *s)
{
    storm_msg m[64];
    ssize_t n;
    while ((n = read(s->fd, m, sizeof m)) > 0) {
        cr_assert_eq(n % (ssize_t)sizeof m[0], 0);
        for (ssize_t i = 0; i < n / (ssize_t)sizeof m[0]; i++) {
            if (m[i].kind == 'A') {
                s->announced++;
                s->next_seq = m[i].seq + 1;
            } else {
                s->committed++;
            }
        }
    }
}

static void storm_spawn(storm_slot *s, const char *name, int slot)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    storm_arg a = {name, slot, fds[1], s->next_seq, 0};
    s->pid = spawn(storm_worker, &a);
    close(fds[1]);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    s->fd = fds[0];
}

/* Kill worker @s, collect its status and its last messages. */
static void storm_reap(storm_slot *s)
{
    kill(s->pid, SIGKILL);
    int code = wait_code(s->pid);
    cr_assert_eq(code, 128 + SIGKILL, "storm worker exited by itself with %d", code);
    fcntl(s->fd, F_SETFL, 0);
    storm_drain(s); /* to EOF: the writer is dead */
    close(s->fd);
}

static void storm_verify(theus_state *st, const storm_slot *s, uint64_t extra)
{
    static int64_t rows[SW][SROW];
    static float big[SBIG], wide[SBIG];
    int64_t mirror[SW], count[SW], total = -1, last = -1;
    uint64_t version = 0;
    /* The first read may find a replay left half-done and finish it: the transaction,
     * begun before, then conflicts and runs again. */
    for (int attempt = 0;; attempt++) {
        theus_tx *tx = NULL;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        version = theus_tx_base(tx);
        int rc;
        if ((rc = theus_tx_read(tx, "rows", NULL, rows, THEUS_MEM_HOST)) == THEUS_OK &&
            (rc = theus_tx_read(tx, "mirror", NULL, mirror, THEUS_MEM_HOST)) == THEUS_OK &&
            (rc = theus_tx_read(tx, "count", NULL, count, THEUS_MEM_HOST)) == THEUS_OK &&
            (rc = theus_tx_read(tx, "total", NULL, &total, THEUS_MEM_HOST)) == THEUS_OK &&
            (rc = theus_tx_read(tx, "last", NULL, &last, THEUS_MEM_HOST)) == THEUS_OK &&
            (rc = theus_tx_read(tx, "big", NULL, big, THEUS_MEM_HOST)) == THEUS_OK)
            rc = theus_tx_read(tx, "wide", NULL, wide, THEUS_MEM_HOST);
        theus_tx_abort(tx);
        if (rc == THEUS_OK)
            break;
        cr_assert_eq(rc, THEUS_ECONFLICT, "%s", theus_state_last_error(st));
        cr_assert_lt(attempt, 2);
    }
    int64_t sum = 0;
    for (int w = 0; w < SW; w++) {
        for (int i = 0; i < SROW; i++)
            cr_assert_eq(rows[w][i], mirror[w], "row %d torn at %d: %llx vs mirror %llx", w, i,
                         (unsigned long long)rows[w][i], (unsigned long long)mirror[w]);
        if (mirror[w]) {
            cr_assert_eq(mirror[w] >> 32, w);
            cr_assert_lt((int32_t)mirror[w], s[w].next_seq);
        }
        cr_assert_geq(count[w], s[w].committed, "worker %d: %lld commits reported OK, %lld in",
                      w, (long long)s[w].committed, (long long)count[w]);
        cr_assert_leq(count[w], s[w].announced, "worker %d: %lld attempted, %lld in", w,
                      (long long)s[w].announced, (long long)count[w]);
        sum += count[w];
    }
    cr_assert_eq(total, sum);
    cr_assert_eq(version, 1 + (uint64_t)total + extra, "version %llu, total %lld",
                 (unsigned long long)version, (long long)total);
    for (int i = 0; i < SBIG; i++)
        cr_assert_eq(big[i], (float)total, "big[%d] = %g, total %lld", i, (double)big[i],
                     (long long)total);
    for (int i = 0; i < SBIG; i++)
        cr_assert_eq(wide[i], total ? wide_value(last) : 0.0f, "wide[%d] = %g, last %llx", i,
                     (double)wide[i], (unsigned long long)last);
    if (total)
        cr_assert_eq(last, mirror[last >> 32], "the last commit's writes are not all there");
}

Test(shared, kill_storm)
{
    char name[64];
    uname_of(name, sizeof name, "storm");
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    o.priority_lease_ms = 5;
    theus_state *st = create(name, STORM_SCHEMA, &o, NULL);
    uint64_t seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(now_s() * 1e6);
    storm_slot s[SW];
    memset(s, 0, sizeof s);
    for (int w = 0; w < SW; w++)
        storm_spawn(&s[w], name, w);
    /* This process's view of the redo record and of the commit lock, to aim half of the
     * kills at commits that are past the point of no return. */
    const redo_record *rec = (const redo_record *)((const char *)st->hdr +
                                                   shared_area_of(st)->off_redo);
    double t0 = now_s();
    int aimed = 0, k = 0;
    /* KILLS kills, then more (at most 20 x KILLS) until the storm has meant something on
     * this machine however fast it is: KILLS / 4 commits reported and one interrupted
     * commit finished by another process. The assertions below are then about
     * correctness, not speed. */
    for (;; k++) {
        if (k >= KILLS) {
            int64_t done = 0;
            for (int i = 0; i < SW; i++)
                done += s[i].committed;
            theus_shared_summary now;
            int meant = done >= KILLS / 4 && theus_shared_info(name, &now) == THEUS_OK &&
                        now.recovered > 0;
            if (meant || k >= 20 * KILLS)
                break;
        }
        /* Let the workers run for a random while (draining their reports), then kill one
         * at whatever point it has reached: staging, the lock, the redo record, the
         * replay, the publish, its report, or its own open after a respawn. Every other
         * kill waits for a READY record instead, lets a random few microseconds pass,
         * and kills the commit lock's owner (the robust futex word holds its thread id):
         * before, during or after its replay. */
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        int w = (int)((seed >> 20) % SW);
        if (k % 2) {
            double give_up = now_s() + 0.05;
            while (atomic_load(&rec->status) != REDO_READY && now_s() < give_up)
                for (int i = 0; i < SW; i++)
                    storm_drain(&s[i]);
            double until = now_s() + (double)(seed % 150) * 1e-6;
            while (now_s() < until)
                ;
            pid_t owner = (pid_t)(st->hdr->commit_lock.__data.__lock & 0x3fffffff);
            for (int i = 0; i < SW; i++)
                if (s[i].pid == owner) {
                    w = i;
                    aimed++;
                }
        } else {
            double until = now_s() + (double)(seed % 8000) * 1e-6;
            do
                for (int i = 0; i < SW; i++)
                    storm_drain(&s[i]);
            while (now_s() < until);
        }
        storm_reap(&s[w]);
        storm_spawn(&s[w], name, w);
    }
    for (int w = 0; w < SW; w++)
        storm_reap(&s[w]);
    int64_t announced = 0, committed = 0;
    for (int w = 0; w < SW; w++) {
        announced += s[w].announced;
        committed += s[w].committed;
    }
    cr_log_info("kill storm: %d kills (%d aimed at a lock holder) in %.2f s, %lld commits "
                "reported, %lld attempted", k, aimed, now_s() - t0, (long long)committed,
                (long long)announced);
    theus_shared_summary info;
    cr_assert_eq(theus_shared_info(name, &info), THEUS_OK);
    cr_log_info("kill storm: %llu interrupted commits finished by others, %llu dropped",
                (unsigned long long)info.recovered, (unsigned long long)info.dropped);
    cr_assert_geq(committed, KILLS / 4, "too few commits to mean anything");
    cr_assert_gt(info.recovered, 0, "no kill landed after a commit's point of no return");
    /* As the killed processes left it... */
    storm_verify(st, s, 0);
    /* ...and after the next commit, which finishes or drops an interrupted one. */
    uint64_t v = theus_state_version(st);
    cr_assert_eq(write_i64(st, "probe", 1), THEUS_OK, "%s", theus_state_last_error(st));
    uint64_t recovered = theus_state_version(st) - v - 1;
    cr_assert_leq(recovered, 1);
    storm_verify(st, s, 1);
    cr_assert_eq(theus_shared_info(name, &info), THEUS_OK);
    cr_assert_eq(info.processes, 1, "dead workers' leases not reclaimed");
    finish(st, name);
}

/* ---- permissions, corruption ---------------------------------------------------------- */

static int child_open_as_nobody(void *p)
{
    if (setgid(65534) != 0 || setuid(65534) != 0)
        return 10;
    theus_state *st = NULL;
    int rc = theus_state_open_shared(p, NULL, &st);
    return rc == THEUS_EPERM || rc == THEUS_ENOENT ? 0 : 20;
}

Test(shared, other_users_and_wrong_modes_are_refused)
{
    char name[64], path[256];
    uname_of(name, sizeof name, "perm");
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, NULL);
    seg_path(path, sizeof path, name);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(sb.st_mode & 07777, 0600);
    cr_assert_eq(sb.st_uid, geteuid());
    theus_state *o = NULL;

    /* A segment of this user's name space whose mode was widened. */
    cr_assert_eq(chmod(path, 0644), 0);
    cr_assert_eq(theus_state_open_shared(name, NULL, &o), THEUS_EPERM);
    cr_assert(strstr(theus_last_error_message(), "0644") != NULL, "%s",
              theus_last_error_message());
    cr_assert_eq(chmod(path, 0600), 0);

    if (geteuid() == 0) {
        /* Another user cannot open it (its name space is separate, and the file is 0600)... */
        pid_t p = spawn(child_open_as_nobody, name);
        cr_assert_eq(wait_code(p), 0);
        /* ...and a segment owned by another user is refused even where it can be read. */
        cr_assert_eq(chown(path, 65534, 65534), 0);
        cr_assert_eq(theus_state_open_shared(name, NULL, &o), THEUS_EPERM);
        cr_assert(strstr(theus_last_error_message(), "uid") != NULL);
        cr_assert_eq(chown(path, 0, 0), 0);
    } else {
        cr_log_info("not root: the other-user check runs only as root");
    }
    cr_assert_eq(theus_state_open_shared(name, NULL, &o), THEUS_OK);
    theus_state_destroy(o);
    finish(st, name);
}

/* Map the segment of @name read-write, for tampering. */
static unsigned char *tamper_map(const char *name, size_t *size)
{
    char path[256];
    seg_path(path, sizeof path, name);
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    struct stat sb;
    cr_assert_eq(fstat(fd, &sb), 0);
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    cr_assert_neq(p, MAP_FAILED);
    *size = (size_t)sb.st_size;
    return p;
}

Test(shared, corrupt_and_foreign_segments_are_refused)
{
    char name[64];
    uname_of(name, sizeof name, "corrupt");
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, NULL);
    size_t size;
    unsigned char *base = tamper_map(name, &size);
    state_header *h = (state_header *)base;
    shared_area *a = (shared_area *)(base + h->off_shared);
    theus_state *o = NULL;

    /* One byte of each checked part, flipped and restored. */
    struct { unsigned char *p; const char *what; } spots[] = {
        {(unsigned char *)&h->magic, "magic"},
        {(unsigned char *)&h->layout_version, "layout version"},
        {(unsigned char *)&h->nfields, "field count"},
        {base + h->off_fields + 3, "field name"},
        {base + h->off_fields + offsetof(field_desc, shape), "field shape"},
        {(unsigned char *)&a->magic, "shared magic"},
        {(unsigned char *)&a->redo_bytes + 6, "redo size"},
        {base + a->off_schema + 20, "schema text"},
    };
    for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
        spots[i].p[0] ^= 0x5a;
        cr_assert_eq(theus_state_open_shared(name, NULL, &o), THEUS_ECORRUPT, "%s not detected",
                     spots[i].what);
        cr_assert_null(o);
        theus_shared_summary info;
        cr_assert_eq(theus_shared_info(name, &info), THEUS_ECORRUPT);
        cr_assert_eq(info.status, THEUS_ECORRUPT);
        spots[i].p[0] ^= 0x5a;
    }
    cr_assert_eq(theus_state_open_shared(name, NULL, &o), THEUS_OK, "%s",
                 theus_last_error_message());
    theus_state_destroy(o);

    /* A READY redo record that fails its checksum cannot be recovered: commits refuse. */
    redo_record *r = (redo_record *)(base + a->off_redo);
    r->checksum = 1;
    atomic_store(&r->status, REDO_READY);
    uint64_t v = theus_state_version(st);
    cr_assert_eq(write_i64(st, "x", 9), THEUS_ECORRUPT);
    cr_assert_eq(theus_state_version(st), v);
    atomic_store(&r->status, REDO_IDLE);
    cr_assert_eq(write_i64(st, "x", 9), THEUS_OK);
    munmap(base, size);

    /* Foreign segments in this user's name space. */
    char foreign[64], path[256];
    uname_of(foreign, sizeof foreign, "foreign");
    seg_path(path, sizeof path, foreign);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0);
    char junk[8192];
    memset(junk, 'J', sizeof junk);
    cr_assert_eq(write(fd, junk, 16), 16);
    cr_assert_eq(theus_state_open_shared(foreign, NULL, &o), THEUS_ECORRUPT); /* too small */
    cr_assert_eq(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    close(fd);
    cr_assert_eq(theus_state_open_shared(foreign, NULL, &o), THEUS_ECORRUPT);
    cr_assert(strstr(theus_last_error_message(), "not a theus") != NULL);
    /* Creating over it is refused too; cleanup leaves it; remove takes it away. */
    cr_assert_eq(theus_state_create_shared(foreign, COUNTER_SCHEMA, NULL, NULL, &o), THEUS_EBUSY);
    size_t removed = 99;
    int lk = sweep_lock();
    cleanup_all(&removed);
    sweep_unlock(lk);
    cr_assert(seg_exists(foreign));
    cr_assert_eq(theus_shared_remove(foreign), THEUS_OK);
    cr_assert_not(seg_exists(foreign));
    finish(st, name);
}

/* ---- list, info, remove, cleanup, leases ---------------------------------------------- */

static int child_create_and_die(void *p)
{
    theus_state *st = NULL;
    if (theus_state_create_shared(p, COUNTER_SCHEMA, NULL, NULL, &st) != THEUS_OK)
        return 10;
    raise(SIGKILL);
    return 11;
}

Test(shared, list_info_remove_cleanup)
{
    char a[64], b[64], dead[64], dead2[64];
    uname_of(a, sizeof a, "list-a");
    uname_of(b, sizeof b, "list-b");
    uname_of(dead, sizeof dead, "list-dead");
    uname_of(dead2, sizeof dead2, "list-dead2");
    /* Another test's clean-up would take the abandoned states away before they are seen. */
    int lk = sweep_lock();
    theus_state *sa = create(a, COUNTER_SCHEMA, NULL, NULL);
    theus_state *sb = create(b, CRASH_SCHEMA, NULL, NULL);
    cr_assert_eq(wait_code(spawn(child_create_and_die, dead)), 128 + SIGKILL);
    cr_assert_eq(wait_code(spawn(child_create_and_die, dead2)), 128 + SIGKILL);

    size_t n = 0;
    cr_assert_eq(theus_shared_list(NULL, 0, &n), THEUS_OK);
    cr_assert_geq(n, 4);
    theus_shared_summary *all = calloc(n + 8, sizeof *all);
    size_t m = 0;
    cr_assert_eq(theus_shared_list(all, n + 8, &m), THEUS_OK);
    int seen = 0;
    for (size_t i = 0; i < m && i < n + 8; i++) {
        if (i)
            cr_assert_lt(strcmp(all[i - 1].name, all[i].name), 0, "sorted by name");
        if (strcmp(all[i].name, a) == 0) {
            seen |= 1;
            cr_assert_eq(all[i].status, THEUS_OK);
            cr_assert_str_eq(all[i].schema_name, "counter");
            cr_assert_eq(all[i].nfields, 5);
            cr_assert_eq(all[i].processes, 1);
            cr_assert_eq(all[i].max_processes, 64);
            cr_assert_geq(all[i].redo_bytes, 16u << 20);
            cr_assert_eq(all[i].abandoned, 0);
        } else if (strcmp(all[i].name, b) == 0) {
            seen |= 2;
            cr_assert_str_eq(all[i].schema_name, "crash");
        } else if (strcmp(all[i].name, dead) == 0) {
            seen |= 4;
            cr_assert_eq(all[i].abandoned, 1);
            cr_assert_eq(all[i].processes, 0);
        }
    }
    free(all);
    cr_assert_eq(seen, 7);
    cr_assert_eq(theus_shared_list(NULL, 1, &n), THEUS_EINVAL);
    cr_assert_eq(theus_shared_list(NULL, 0, NULL), THEUS_EINVAL);

    /* An abandoned state is removed by the next open of its name... */
    theus_state *o = NULL;
    cr_assert_eq(theus_state_open_shared(dead, NULL, &o), THEUS_ENOENT);
    cr_assert(strstr(theus_last_error_message(), "abandoned") != NULL);
    cr_assert_not(seg_exists(dead));
    /* ...or by the clean-up, with a segment left by a creator killed half-way. */
    char tmp[128];
    snprintf(tmp, sizeof tmp, "/dev/shm/theus-%u.tmp-%d-1-0", (unsigned)geteuid(), (int)getpid());
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL, 0600); /* this pid, wrong start time: dead */
    cr_assert_geq(fd, 0);
    close(fd);
    size_t removed = 0;
    cleanup_all(&removed);
    cr_assert_geq(removed, 2);
    cr_assert_not(seg_exists(dead2));
    cr_assert_neq(access(tmp, F_OK), 0);
    cr_assert(seg_exists(a) && seg_exists(b), "live states must survive the clean-up");

    /* Remove while open: the handle keeps working, the name is free at once. */
    cr_assert_eq(theus_shared_remove(b), THEUS_OK);
    cr_assert_not(seg_exists(b));
    cr_assert_eq(theus_shared_remove(b), THEUS_ENOENT);
    cr_assert_eq(write_i64(sb, "probe", 3), THEUS_OK);
    theus_state *nb = create(b, COUNTER_SCHEMA, NULL, NULL);
    cr_assert_eq(read_i64(nb, "probe"), 0, "a new, separate state");
    theus_state_destroy(sb); /* must not remove the new state's name */
    cr_assert(seg_exists(b));
    theus_state_destroy(nb);
    theus_shared_summary info;
    cr_assert_eq(theus_shared_info(b, &info), THEUS_ENOENT);
    cr_assert_eq(theus_shared_info(NULL, &info), THEUS_EINVAL);
    cr_assert_eq(theus_shared_info(a, NULL), THEUS_EINVAL);
    cr_assert_eq(theus_shared_remove("bad/name"), THEUS_EINVAL);
    finish(sa, a);
    sweep_unlock(lk);
}

static int child_open_and_die(void *p)
{
    theus_state *st = NULL;
    if (theus_state_open_shared(p, NULL, &st) != THEUS_OK)
        return 10;
    raise(SIGKILL);
    return 11;
}

Test(shared, lease_slots_are_bounded_and_reclaimed)
{
    char name[64];
    uname_of(name, sizeof name, "leases");
    theus_shared_options so = THEUS_SHARED_OPTIONS_INIT;
    so.max_processes = 2;
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, &so);
    for (int i = 0; i < 5; i++) /* each takes the second slot and dies with it */
        cr_assert_eq(wait_code(spawn(child_open_and_die, name)), 128 + SIGKILL);
    theus_state *o = NULL, *o2 = NULL;
    cr_assert_eq(theus_state_open_shared(name, NULL, &o), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_state_open_shared(name, NULL, &o2), THEUS_EBUSY);
    cr_assert_null(o2);
    theus_state_destroy(o);
    finish(st, name);
}

Test(shared, redo_area_bounds_a_commit)
{
    char name[64];
    uname_of(name, sizeof name, "redo");
    theus_shared_options so = THEUS_SHARED_OPTIONS_INIT;
    so.redo_bytes = 32768; /* one ADD of big (16 KiB) fits, two do not */
    theus_state *st = create(name, CRASH_SCHEMA, NULL, &so);
    theus_shared_summary info;
    cr_assert_eq(theus_shared_info(name, &info), THEUS_OK);
    cr_assert_eq(info.redo_bytes, 32768);
    static float ones[4096];
    for (int i = 0; i < 4096; i++)
        ones[i] = 1.0f;
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "big", NULL, ones, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "big", NULL, ones, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ENOMEM);
    cr_assert(strstr(theus_last_error_message(), "redo") != NULL);
    cr_assert_eq(theus_state_version(st), 1);
    /* One that fits goes through. */
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "big", NULL, ones, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    finish(st, name);
}

Test(shared, init_field_overlaps_and_constraints)
{
    char name[64];
    uname_of(name, sizeof name, "init");
    const char schema[] =
        "{\"name\": \"init\", \"fields\": {"
        " \"seed\": {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"},"
        " \"v\": {\"dtype\": \"i32\", \"shape\": [8], \"constraints\": {\"min\": 0}}}}";
    theus_state *st = create(name, schema, NULL, NULL);
    uint64_t seed = 42;
    cr_assert_eq(theus_state_init_field(st, "seed", &seed, THEUS_MEM_HOST), THEUS_OK);
    theus_state *o = NULL;
    cr_assert_eq(theus_state_open_shared(name, NULL, &o), THEUS_OK);
    theus_tx *tx = NULL;
    uint64_t got = 0;
    cr_assert_eq(theus_tx_begin(o, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "seed", NULL, &got, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(got, 42);
    /* Overlapping deltas in one batch: write [0:8] = 5, add [2:6] += 1, write [4:5] = 9. */
    int32_t fives[8] = {5, 5, 5, 5, 5, 5, 5, 5}, ones[4] = {1, 1, 1, 1}, nine = 9;
    theus_region r26 = {.ndim = 1, .start = {2}, .stop = {6}};
    theus_region r45 = {.ndim = 1, .start = {4}, .stop = {5}};
    cr_assert_eq(theus_tx_write(tx, "v", NULL, fives, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "v", &r26, ones, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "v", &r45, &nine, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    int32_t v[8];
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "v", NULL, v, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    int32_t want[8] = {5, 5, 6, 6, 9, 6, 5, 5};
    cr_assert_arr_eq(v, want, sizeof v);
    /* The gatekeeper works on shared states too. */
    int32_t minus[8] = {-6, -6, -6, -6, -6, -6, -6, -6};
    cr_assert_eq(theus_tx_begin(o, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "v", NULL, minus, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);
    cr_assert_eq(theus_state_version(st), 2);
    cr_assert_eq(theus_state_init_field(o, "seed", &seed, THEUS_MEM_HOST), THEUS_EBUSY);
    theus_state_destroy(o);
    finish(st, name);
}

/* ---- GPU variant ------------------------------------------------------------------------ */

Test(shared, gpu_workers_add_to_a_device_field)
{
    if (!theus_gpu_available())
        cr_skip_test("no GPU answers: the device-field variant runs on a GPU host");
    char name[64];
    uname_of(name, sizeof name, "gpu");
    const char schema[] = "{\"name\": \"gpu\", \"fields\": {"
                          " \"acc\": {\"dtype\": \"f32\", \"shape\": [65536], \"placement\": \"device\"},"
                          " \"pin\": {\"dtype\": \"f32\", \"shape\": [16], \"placement\": \"pinned\"},"
                          " \"count\": {\"dtype\": \"i64\", \"shape\": []}}}";
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    o.allow_fallback = 0;
    theus_state *st = create(name, schema, &o, NULL);
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "acc", &fi), THEUS_OK);
    cr_assert_eq(fi.placement, THEUS_PLACEMENT_DEVICE);

    /* Three exec'd workers, each opening the device memory through CUDA IPC. */
    enum { P = 3 };
    pid_t p[P];
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    cr_assert_geq(devnull, 0);
    for (int i = 0; i < P; i++)
        p[i] = exec_worker("add", name, "100", devnull);
    close(devnull);
    for (int i = 0; i < P; i++)
        cr_assert_eq(wait_code(p[i]), 0, "GPU worker %d", i);
    cr_assert_eq(read_i64(st, "count"), P * 100);

    /* Then GPU workers killed at random points of their commits. */
    int64_t reported = 0, kills = 0;
    uint64_t seed = (uint64_t)getpid();
    for (int round = 0; round < 20; round++) {
        int fds[2];
        cr_assert_eq(pipe(fds), 0);
        pid_t w = exec_worker("add", name, "-1", fds[1]);
        close(fds[1]);
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        int want = 1 + (int)((seed >> 33) % 20);
        char buf[64];
        for (int got = 0; got < want;) {
            ssize_t n = read(fds[0], buf, sizeof buf < (size_t)(want - got) ? sizeof buf
                                                                             : (size_t)(want - got));
            cr_assert_gt(n, 0, "GPU worker stopped early");
            got += (int)n;
            reported += n;
        }
        double until = now_s() + (double)((seed >> 13) % 2000) * 1e-6;
        while (now_s() < until)
            ;
        kill(w, SIGKILL);
        cr_assert_eq(wait_code(w), 128 + SIGKILL);
        kills++;
        ssize_t n;
        while ((n = read(fds[0], buf, sizeof buf)) > 0)
            reported += n;
        close(fds[0]);
    }
    cr_assert_eq(write_i64(st, "count", read_i64(st, "count")), THEUS_OK); /* recovery */
    int64_t count = read_i64(st, "count");
    cr_assert_geq(count, P * 100 + reported);
    cr_assert_leq(count, P * 100 + reported + kills);
    static float acc[65536];
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "acc", NULL, acc, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    for (int i = 0; i < 65536; i++)
        cr_assert_eq(acc[i], (float)count, "acc[%d] = %g, count %lld", i, (double)acc[i],
                     (long long)count);
    finish(st, name);
}

/* ---- nothing can hang or fool the shared calls ---------------------------------------- */

/* Waits on other processes' locks give up after this (THEUS_SHARED_WAIT_MS), so that the
 * tests of stuck locks run fast. Nothing asserts how long anything took. */
static void short_bound(void)
{
    cr_assert_eq(setenv("THEUS_SHARED_WAIT_MS", "150", 1), 0);
}

/* Every shared call on @name refuses it at once as THEUS_EPERM, saying what it is. */
static void refused_as(const char *name, const char *kind)
{
    theus_shared_summary info;
    theus_state *o = NULL;
    cr_assert_eq(theus_shared_info(name, &info), THEUS_EPERM, "info of %s", kind);
    cr_assert_eq(info.status, THEUS_EPERM);
    cr_assert(strstr(theus_last_error_message(), kind) != NULL, "%s: %s", kind,
              theus_last_error_message());
    cr_assert_eq(theus_state_open_shared(name, NULL, &o), THEUS_EPERM, "open of %s", kind);
    cr_assert_null(o);
    cr_assert(strstr(theus_last_error_message(), "regular files") != NULL, "%s",
              theus_last_error_message());
    cr_assert_eq(theus_shared_remove(name), THEUS_EPERM, "remove of %s", kind);
    cr_assert(seg_exists(name), "remove took the %s away", kind);
    cr_assert_eq(theus_state_create_shared(name, COUNTER_SCHEMA, NULL, NULL, &o), THEUS_EBUSY);
    cr_assert_null(o);
    /* list reports it, with its status, and goes on. */
    size_t n = 0;
    cr_assert_eq(theus_shared_list(NULL, 0, &n), THEUS_OK);
    theus_shared_summary *all = calloc(n + 8, sizeof *all);
    size_t m = 0;
    cr_assert_eq(theus_shared_list(all, n + 8, &m), THEUS_OK);
    int seen = 0;
    for (size_t i = 0; i < m && i < n + 8; i++)
        if (strcmp(all[i].name, name) == 0) {
            seen = 1;
            cr_assert_eq(all[i].status, THEUS_EPERM, "%s listed with %d", kind, all[i].status);
        }
    free(all);
    cr_assert(seen, "%s not listed", kind);
}

Test(shared, planted_files_are_refused_at_once)
{
    char live[64], name[64], path[256], target[256];
    uname_of(live, sizeof live, "plant-live");
    theus_state *st = create(live, COUNTER_SCHEMA, NULL, NULL);
    seg_path(target, sizeof target, live);

    /* A FIFO: opening it for reading would wait for a writer for ever. */
    uname_of(name, sizeof name, "plant-fifo");
    seg_path(path, sizeof path, name);
    cr_assert_eq(mkfifo(path, 0600), 0, "%s", strerror(errno));
    refused_as(name, "FIFO");
    cr_assert_eq(unlink(path), 0);

    /* A symbolic link, even to a live segment of this user. */
    uname_of(name, sizeof name, "plant-link");
    seg_path(path, sizeof path, name);
    cr_assert_eq(symlink(target, path), 0);
    refused_as(name, "symbolic link");
    cr_assert_eq(unlink(path), 0);

    /* A directory. */
    uname_of(name, sizeof name, "plant-dir");
    seg_path(path, sizeof path, name);
    cr_assert_eq(mkdir(path, 0700), 0);
    refused_as(name, "directory");
    cr_assert_eq(rmdir(path), 0);

    /* A socket. */
    uname_of(name, sizeof name, "plant-sock");
    seg_path(path, sizeof path, name);
    int sfd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_geq(sfd, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    cr_assert_lt(strlen(path), sizeof sa.sun_path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    cr_assert_eq(bind(sfd, (struct sockaddr *)&sa, sizeof sa), 0, "%s", strerror(errno));
    refused_as(name, "socket");
    close(sfd);
    cr_assert_eq(unlink(path), 0);

    if (geteuid() == 0) {
        /* Another user's file in this user's name space: refused, and not removed, even
         * though root could remove it. */
        uname_of(name, sizeof name, "plant-other");
        seg_path(path, sizeof path, name);
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(ftruncate(fd, 1 << 16), 0);
        cr_assert_eq(fchown(fd, 65534, 65534), 0);
        close(fd);
        theus_shared_summary info;
        cr_assert_eq(theus_shared_info(name, &info), THEUS_EPERM);
        cr_assert_eq(theus_shared_remove(name), THEUS_EPERM);
        cr_assert(strstr(theus_last_error_message(), "uid 65534") != NULL, "%s",
                  theus_last_error_message());
        cr_assert(seg_exists(name));
        cr_assert_eq(unlink(path), 0);
    }
    /* The live state was never disturbed. */
    cr_assert_eq(write_i64(st, "x", 5), THEUS_OK);
    finish(st, name);
}

/* A copy of the segment of @from under the name @to, its leases cleared (no process holds
 * it: abandoned) unless @keep_leases. Returns the copy's mapping (for tampering). */
static unsigned char *copy_segment(const char *from, const char *to, int keep_leases,
                                   size_t *size)
{
    size_t n;
    unsigned char *src = tamper_map(from, &n);
    char path[256];
    seg_path(path, sizeof path, to);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, (off_t)n), 0);
    unsigned char *dst = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    cr_assert_neq(dst, MAP_FAILED);
    memcpy(dst, src, n);
    munmap(src, n);
    state_header *h = (state_header *)dst;
    shared_area *a = (shared_area *)(dst + h->off_shared);
    if (!keep_leases)
        memset(dst + a->off_leases, 0, (size_t)a->max_leases * sizeof(lease_slot));
    *size = n;
    return dst;
}

/* What a lock word holds when a thread that cannot exist (ids stop below 2^22) holds it. */
#define GHOST_TID 0x3ffffff0

static void ghost_owns(pthread_mutex_t *m)
{
    __atomic_store_n(&m->__data.__lock, GHOST_TID, __ATOMIC_RELEASE);
}

Test(shared, stale_lock_words_do_not_hang_anything)
{
    short_bound();
    int lk = sweep_lock();
    char src[64], held[64], hold_abandoned[64], commit_stale[64], dead[64];
    uname_of(src, sizeof src, "stale-src");
    uname_of(held, sizeof held, "stale-held");
    uname_of(hold_abandoned, sizeof hold_abandoned, "stale-aband");
    uname_of(commit_stale, sizeof commit_stale, "stale-commit");
    uname_of(dead, sizeof dead, "stale-dead");
    theus_state *st = create(src, COUNTER_SCHEMA, NULL, NULL);
    cr_assert_eq(write_i64(st, "x", 3), THEUS_OK);

    /* A copy that this (live) process still holds a lease in, its hold lock stale. */
    size_t n1, n2, n3;
    unsigned char *c1 = copy_segment(src, held, 1, &n1);
    ghost_owns(&((state_header *)c1)->hold_lock);
    /* An abandoned copy with a stale hold lock: nothing can ever use it. */
    unsigned char *c2 = copy_segment(src, hold_abandoned, 0, &n2);
    ghost_owns(&((state_header *)c2)->hold_lock);
    /* A copy whose commit lock is stale. */
    unsigned char *c3 = copy_segment(src, commit_stale, 1, &n3);
    ghost_owns(&((state_header *)c3)->commit_lock);
    /* And an ordinary abandoned state, for the sweep to reach after the others. */
    cr_assert_eq(wait_code(spawn(child_create_and_die, dead)), 128 + SIGKILL);

    theus_shared_summary info;
    theus_state *o = NULL;
    cr_assert_eq(theus_shared_info(held, &info), THEUS_ECORRUPT);
    cr_assert(strstr(theus_last_error_message(), "hold lock") != NULL, "%s",
              theus_last_error_message());
    cr_assert_eq(theus_shared_info(commit_stale, &info), THEUS_ECORRUPT);
    cr_assert(strstr(theus_last_error_message(), "commit lock") != NULL);
    cr_assert_eq(theus_state_open_shared(held, NULL, &o), THEUS_ECORRUPT);
    cr_assert(strstr(theus_last_error_message(), "does not exist") != NULL, "%s",
              theus_last_error_message());
    cr_assert_null(o);

    /* A commit waits for the commit lock a bounded time, and the state is unchanged. */
    cr_assert_eq(theus_state_open_shared(commit_stale, NULL, &o), THEUS_OK, "%s",
                 theus_last_error_message());
    uint64_t v = theus_state_version(o);
    cr_assert_eq(write_i64(o, "x", 4), THEUS_ECORRUPT);
    cr_assert(strstr(theus_last_error_message(), "commit lock") != NULL, "%s",
              theus_last_error_message());
    cr_assert_eq(theus_state_version(o), v);
    cr_assert_eq(read_i64(o, "x"), 3);
    theus_state_destroy(o);

    /* The sweep: the stale abandoned copy and the dead state go; the copy held by a live
     * lease stays (it is not abandoned) without holding the sweep up. */
    size_t removed = 0;
    cleanup_all(&removed);
    cr_assert_geq(removed, 2);
    cr_assert_not(seg_exists(hold_abandoned));
    cr_assert_not(seg_exists(dead));
    cr_assert(seg_exists(held));
    cr_assert(seg_exists(commit_stale));
    cr_assert(seg_exists(src));
    /* Remove needs no lock. */
    cr_assert_eq(theus_shared_remove(held), THEUS_OK);
    cr_assert_not(seg_exists(held));
    cr_assert_eq(theus_shared_remove(commit_stale), THEUS_OK);
    cr_assert_not(seg_exists(commit_stale));
    munmap(c1, n1);
    munmap(c2, n2);
    munmap(c3, n3);
    cr_assert_eq(write_i64(st, "x", 5), THEUS_OK);
    finish(st, src);
    sweep_unlock(lk);
}

typedef struct lock_arg {
    const char *name;
    int to_parent, from_parent;
    int commit_lock; /* 1: the commit lock; 0: the hold lock */
} lock_arg;

/* Open, take a lock, tell the parent, stop (SIGSTOP); when continued, wait for the
 * parent's word, release, detach. */
static int child_stop_holding(void *p)
{
    lock_arg *a = p;
    theus_state *st = NULL;
    if (theus_state_open_shared(a->name, NULL, &st) != THEUS_OK)
        return 10;
    if (a->commit_lock ? state_lock(st) != THEUS_OK : (state_hold_lock(st->hdr), 0))
        return 11;
    if (child_send(a->to_parent))
        return 12;
    raise(SIGSTOP);
    if (child_recv(a->from_parent))
        return 13;
    if (a->commit_lock)
        state_unlock(st);
    else
        state_hold_unlock(st->hdr);
    theus_state_destroy(st);
    return 0;
}

/* Wait until child @p has stopped (waitpid reports it). */
static void wait_stopped(pid_t p)
{
    int status = 0;
    while (waitpid(p, &status, WUNTRACED) < 0)
        cr_assert_eq(errno, EINTR);
    cr_assert(WIFSTOPPED(status), "child did not stop (status %#x)", status);
}

/* A child (child_stop_holding) stopped while it holds a lock of a shared state, and the
 * pipes to it. */
typedef struct holder {
    lock_arg a;
    int up[2], down[2];
    pid_t pid;
} holder;

/* Start a child that takes the commit lock (@commit_lock 1) or the hold lock (0) of state
 * @name; return once it has stopped holding it. */
static void holder_start(holder *h, const char *name, int commit_lock)
{
    cr_assert_eq(pipe(h->up), 0);
    cr_assert_eq(pipe(h->down), 0);
    h->a = (lock_arg){name, h->up[1], h->down[0], commit_lock};
    h->pid = spawn(child_stop_holding, &h->a);
    cr_assert_eq(recv_byte(h->up[0]), 1);
    wait_stopped(h->pid);
}

static void holder_close(holder *h)
{
    for (int i = 0; i < 2; i++) {
        close(h->up[i]);
        close(h->down[i]);
    }
}

/* Tell the (continued) holder to release its lock; it exits 0; close the pipes. */
static void holder_release(holder *h)
{
    send_byte(h->down[1]);
    cr_assert_eq(wait_code(h->pid), 0);
    holder_close(h);
}

/* The last failed call said that a lock holder is stopped. */
static void assert_says_stopped(void)
{
    cr_assert(strstr(theus_last_error_message(), "stopped") != NULL, "%s",
              theus_last_error_message());
}

Test(shared, stopped_lock_holders_give_bounded_ebusy)
{
    short_bound();
    int lk = sweep_lock();
    char name[64], dead[64];
    uname_of(name, sizeof name, "stopped");
    uname_of(dead, sizeof dead, "stopped-dead");
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, NULL);

    /* The commit lock's holder stops: a commit gives up with THEUS_EBUSY, state unchanged. */
    holder h;
    holder_start(&h, name, 1);
    uint64_t v = theus_state_version(st);
    cr_assert_eq(write_i64(st, "x", 1), THEUS_EBUSY);
    assert_says_stopped();
    cr_assert_eq(theus_state_version(st), v);
    /* Continued, it releases the lock and commits go on. */
    kill(h.pid, SIGCONT);
    holder_release(&h);
    cr_assert_eq(write_i64(st, "x", 2), THEUS_OK, "%s", theus_last_error_message());

    /* The hold lock's holder stops: open and the sweep give up on this state with
     * THEUS_EBUSY, and the sweep still removes the abandoned state after it. */
    holder_start(&h, name, 0);
    cr_assert_eq(wait_code(spawn(child_create_and_die, dead)), 128 + SIGKILL);
    theus_state *o = NULL;
    cr_assert_eq(theus_state_open_shared(name, NULL, &o), THEUS_EBUSY);
    assert_says_stopped();
    cr_assert_null(o);
    theus_shared_summary info;
    cr_assert_eq(theus_shared_info(name, &info), THEUS_OK, "info never waits");
    cr_assert_eq(info.processes, 2);
    size_t removed = 0;
    cr_assert_eq(theus_shared_cleanup(&removed), THEUS_EBUSY);
    cr_assert_geq(removed, 1);
    cr_assert_not(seg_exists(dead), "the sweep stopped at the stuck state");
    cr_assert(seg_exists(name));

    /* Killed while stopped: its robust lock is taken over, its lease reclaimed. */
    kill(h.pid, SIGKILL);
    cr_assert_eq(wait_code(h.pid), 128 + SIGKILL);
    holder_close(&h);
    cr_assert_eq(theus_state_open_shared(name, NULL, &o), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(write_i64(o, "x", 3), THEUS_OK);
    theus_state_destroy(o);
    cleanup_all(&removed);
    cr_assert(seg_exists(name), "a live state survives the clean-up");
    cr_assert_eq(read_i64(st, "x"), 3);
    finish(st, name);
    sweep_unlock(lk);
}

typedef struct slow_arg {
    theus_state *st;
    _Atomic pid_t tid;
    int rc;
    char msg[512];
} slow_arg;

static void *commit_thread(void *p)
{
    slow_arg *s = p;
    atomic_store(&s->tid, (pid_t)syscall(SYS_gettid));
    s->rc = write_i64(s->st, "x", 9);
    snprintf(s->msg, sizeof s->msg, "%s", theus_last_error_message());
    return NULL;
}

/* Whether thread @tid of this process is blocked in a futex wait (a lock). */
static int in_futex(pid_t tid)
{
    char path[64], buf[64] = "";
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 && atoi(buf) == SYS_futex;
}

Test(shared, live_slow_commit_lock_holder_is_waited_for)
{
    /* The bound is tiny: a holder that runs (here: waits on a pipe) is waited for beyond it. */
    cr_assert_eq(setenv("THEUS_SHARED_WAIT_MS", "1", 1), 0);
    char name[64];
    uname_of(name, sizeof name, "slow");
    theus_state *st = create(name, COUNTER_SCHEMA, NULL, NULL);
    holder h;
    holder_start(&h, name, 1);
    kill(h.pid, SIGCONT); /* running again, holding the commit lock until told */
    slow_arg s = {.st = st};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, commit_thread, &s), 0);
    while (!atomic_load(&s.tid) || !in_futex(atomic_load(&s.tid)))
        sched_yield(); /* the commit is waiting for the lock */
    holder_release(&h);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(s.rc, THEUS_OK, "%s: %s", theus_strerror(s.rc), s.msg);
    cr_assert_eq(read_i64(st, "x"), 9);
    finish(st, name);
}
