/* Signals and waits across the OS processes of a shared state (issue #11): a child process
 * waits for a signal, a field version or the state version published by its parent's
 * commits; refused, aborted and conflicting attempts signal nothing in any process; a
 * writer killed at every point of its commit signals exactly when its commit was published
 * (by itself, or by the process that finishes it from the redo record); a delivery killed
 * half applied is completed once by the next taker of the commit lock; timeouts; the
 * name-too-long and table-full errors; waits end when the state is removed or the engine
 * destroyed. Processes synchronise through pipes, waitpid and the segment's waiter count
 * (a yield loop that also watches the child); nothing sleeps and nothing is timed. Child
 * processes never call Criterion's asserts: they report through a pipe and their exit
 * status. Every name is "test_sigshm-<pid>-<tag>" and is removed by the suite's fini. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <theus/theus.h>
#include <theus/theus_durable.h>
#include <theus/theus_process.h>
#include <theus/theus_shared.h>

#include "process/process.h"
#include "shared.h"
#include "shared/redo.h"
#include "shared_signal.h"
#include "backend.h"
#include "state.h"

static const char *schema =
    "{\"name\": \"sigshm\", \"fields\": {"
    "\"x\": {\"dtype\": \"f32\", \"shape\": [], \"constraints\": {\"finite\": true}},"
    "\"y\": {\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"max\", \"value\": 1}]},"
    "\"n\": {\"dtype\": \"i64\", \"shape\": []}}}";

/* ---- names, children, clean-up -------------------------------------------------------- */
enum { MAX_NAMES = 8, MAX_KIDS = 16 };
static char g_names[MAX_NAMES][64];
static int g_nnames;
static pid_t g_kids[MAX_KIDS];
static int g_nkids;

static const char *new_name(const char *tag)
{
    cr_assert_lt(g_nnames, MAX_NAMES);
    snprintf(g_names[g_nnames], sizeof g_names[0], "test_sigshm-%d-%s", (int)getpid(), tag);
    return g_names[g_nnames++];
}

static char g_dir[64]; /* a durable test's directory, removed by the fini */

static void rm_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            rm_tree(p);
        }
    closedir(d);
    rmdir(path);
}

static void suite_fini(void)
{
    for (int i = 0; i < g_nkids; i++) {
        kill(g_kids[i], SIGKILL);
        waitpid(g_kids[i], NULL, 0);
    }
    g_nkids = 0;
    for (int i = 0; i < g_nnames; i++)
        theus_shared_remove(g_names[i]); /* THEUS_ENOENT when the test removed it */
    g_nnames = 0;
    if (g_dir[0])
        rm_tree(g_dir);
    g_dir[0] = '\0';
}

TestSuite(signal_shared, .fini = suite_fini);

typedef int (*child_fn)(int fd, void *arg);

/* Fork a child that runs @fn with the write end of a pipe; returns the read end. */
static pid_t spawn(child_fn fn, void *arg, int *rfd)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(99);
        close(p[0]);
        _exit(fn(p[1], arg));
    }
    close(p[1]);
    cr_assert_lt(g_nkids, MAX_KIDS);
    g_kids[g_nkids++] = pid;
    *rfd = p[0];
    return pid;
}

/* Exit code, or 128 + signal. */
static int reap(pid_t pid)
{
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        cr_assert_eq(errno, EINTR, "waitpid: %s", strerror(errno));
    for (int i = 0; i < g_nkids; i++)
        if (g_kids[i] == pid)
            g_kids[i] = g_kids[--g_nkids];
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* What a child saw: one per wait it made. */
typedef struct report {
    int rc;
    uint64_t seen;
    uint64_t version;     /* theus_state_version right after the wait */
    uint64_t count;       /* an extra count the child was asked to read */
    float x;              /* x read right after the wait */
    char msg[160];        /* theus_state_last_error on failure */
} report;

static int child_report(int fd, theus_state *st, int rc, uint64_t seen, uint64_t count)
{
    report r;
    memset(&r, 0, sizeof r);
    r.rc = rc;
    r.seen = seen;
    r.count = count;
    r.version = theus_state_version(st);
    theus_tx *tx = NULL;
    if (theus_tx_begin(st, NULL, &tx) == THEUS_OK) {
        theus_tx_read(tx, "x", NULL, &r.x, THEUS_MEM_HOST);
        theus_tx_abort(tx);
    }
    if (rc != THEUS_OK)
        snprintf(r.msg, sizeof r.msg, "%s", theus_state_last_error(st));
    return write(fd, &r, sizeof r) == (ssize_t)sizeof r ? 0 : 1;
}

static report read_report(int fd)
{
    report r;
    memset(&r, 0, sizeof r);
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = read(fd, (char *)&r + got, sizeof r - got);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert_gt(n, 0, "the child ended before it reported");
        got += (size_t)n;
    }
    return r;
}

/* Until @n threads of any process wait on @st's segment (a yield loop that gives up when
 * @child ends early). */
static void until_waiting(theus_state *st, uint32_t n, pid_t child)
{
    const shared_signal_area *s = &shared_area_of(st)->sig;
    while (atomic_load(&s->waiters) < n) {
        int status;
        cr_assert_eq(waitpid(child, &status, WNOHANG), 0, "the child ended before it waited");
        sched_yield();
    }
}

/* ---- the parent's processes ------------------------------------------------------------ */
typedef struct plan {
    float x, y;
    int fail;                 /* returned by the body after queueing */
    int interfere;            /* commit a competing write of x during the first attempt */
    const char *signal;       /* queued by "emit" */
} plan;
static plan g_plan;
static theus_state *g_st;

static int emit(theus_run *run, void *user)
{
    (void)user;
    theus_tx *tx = theus_run_tx(run);
    float cur;
    int rc;
    if ((rc = theus_tx_read(tx, "x", NULL, &cur, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "x", NULL, &g_plan.x, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "y", NULL, &g_plan.y, THEUS_MEM_HOST)) ||
        (rc = theus_run_signal(run, g_plan.signal)))
        return rc;
    if (g_plan.interfere) {
        g_plan.interfere = 0;
        theus_tx *other = NULL;
        float z = 0.25f;
        if (theus_tx_begin(g_st, NULL, &other) || theus_tx_write(other, "x", NULL, &z, THEUS_MEM_HOST) ||
            theus_tx_commit(other, NULL))
            return 78;
    }
    return g_plan.fail;
}

/* Signals g_plan.signal and writes nothing. */
static int ping(theus_run *run, void *user)
{
    (void)user;
    return theus_run_signal(run, g_plan.signal);
}

static const char *const g_io[] = {"x", "y", "n"};
static const int g_codes[] = {77, 78};

static void register_procs(theus_engine *e)
{
    theus_process_def d = {.name = "emit", .body = emit, .inputs = g_io, .n_inputs = 2,
                           .outputs = g_io, .n_outputs = 2, .status_codes = g_codes,
                           .n_status_codes = 2};
    cr_assert_eq(theus_engine_register(e, &d), THEUS_OK, "%s",
                 theus_state_last_error(theus_engine_state(e)));
    d = (theus_process_def){.name = "ping", .body = ping, .inputs = g_io + 2, .n_inputs = 1,
                            .outputs = g_io + 2, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(e, &d), THEUS_OK);
}

static theus_state *create(const char *name, theus_engine **e)
{
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create_shared(name, schema, NULL, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_engine_create(st, NULL, e), THEUS_OK);
    register_procs(*e);
    g_st = st;
    g_plan = (plan){.x = 1.0f, .y = 0.5f, .signal = "go"};
    return st;
}

static uint64_t count_of(theus_engine *e, const char *name)
{
    uint64_t n = 99;
    cr_assert_eq(theus_engine_signal_count(e, name, &n), THEUS_OK);
    return n;
}

static int64_t read_n(theus_state *st)
{
    int64_t n = -1;
    for (int attempt = 0;; attempt++) {
        theus_tx *tx = NULL;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        int rc = theus_tx_read(tx, "n", NULL, &n, THEUS_MEM_HOST);
        theus_tx_abort(tx);
        if (rc == THEUS_OK)
            return n;
        cr_assert_eq(rc, THEUS_ECONFLICT, "%s", theus_state_last_error(st));
        cr_assert_lt(attempt, 2);
    }
}

/* ---- what children do -------------------------------------------------------------------- */
#define CHILD_TIMEOUT_MS 20000u /* a failing parent must not leave a child waiting for ever */

typedef struct wait_job {
    const char *name;        /* the shared state */
    const char *signal;      /* NULL: a version wait */
    const char *field;       /* the field of a version wait, NULL: the state's version */
    uint64_t after;
    uint32_t timeout_ms;
    const char *then;        /* a second signal to wait for after the first (after 0), or NULL */
    const char *count;       /* a signal whose count is reported with the last wait, or NULL */
} wait_job;

static int child_wait(int fd, void *arg)
{
    const wait_job *j = arg;
    theus_state *st = NULL;
    theus_engine *e = NULL;
    if (theus_state_open_shared(j->name, NULL, &st) != THEUS_OK)
        return 10;
    if (theus_engine_create(st, NULL, &e) != THEUS_OK)
        return 11;
    uint64_t seen = 0, n = 0;
    int rc = j->signal ? theus_engine_wait_signal(e, j->signal, j->after, j->timeout_ms, &seen)
                       : theus_engine_wait_version(e, j->field, j->after, j->timeout_ms, &seen);
    if (j->count && !j->then)
        theus_engine_signal_count(e, j->count, &n);
    if (child_report(fd, st, rc, seen, n))
        return 12;
    if (j->then) {
        rc = theus_engine_wait_signal(e, j->then, 0, j->timeout_ms, &seen);
        if (j->count)
            theus_engine_signal_count(e, j->count, &n);
        if (child_report(fd, st, rc, seen, n))
            return 13;
    }
    theus_engine_destroy(e);
    theus_state_destroy(st);
    return 0;
}

/* ---- tests -------------------------------------------------------------------------------- */

Test(signal_shared, a_child_process_wakes_on_the_parents_signal)
{
    theus_engine *e = NULL;
    const char *name = new_name("wake");
    theus_state *st = create(name, &e);
    wait_job j = {.name = name, .signal = "go", .after = 0, .timeout_ms = CHILD_TIMEOUT_MS,
                  .then = "ping"};
    int fd;
    pid_t kid = spawn(child_wait, &j, &fd);
    until_waiting(st, 1, kid);
    g_plan.x = 3.0f;
    uint64_t v = 0;
    cr_assert_eq(theus_engine_run(e, "emit", &v), THEUS_OK, "%s", theus_state_last_error(st));
    report r = read_report(fd);
    cr_expect_eq(r.rc, THEUS_OK, "%s", r.msg);
    cr_expect_eq(r.seen, 1);
    cr_expect_geq(r.version, v, "woken after the commit was published");
    cr_expect_eq(r.x, 3.0f, "the woken process reads the published value");

    /* A run that writes nothing delivers its signal too (outside a commit). */
    until_waiting(st, 1, kid);
    g_plan.signal = "ping";
    cr_assert_eq(theus_engine_run(e, "ping", NULL), THEUS_OK, "%s", theus_state_last_error(st));
    r = read_report(fd);
    cr_expect_eq(r.rc, THEUS_OK, "%s", r.msg);
    cr_expect_eq(r.seen, 1);
    cr_expect_eq(reap(kid), 0);
    close(fd);
    cr_expect_eq(count_of(e, "go"), 1);
    cr_expect_eq(count_of(e, "ping"), 1);
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

/* Theus delivered signals before its schema check, even for refused commits. */
Test(signal_shared, refused_aborted_and_conflicting_attempts_signal_nothing_across_processes)
{
    theus_engine *e = NULL;
    const char *name = new_name("refused");
    theus_state *st = create(name, &e);
    wait_job j = {.name = name, .signal = "done", .after = 0, .timeout_ms = CHILD_TIMEOUT_MS,
                  .count = "go"};
    int fd;
    pid_t kid = spawn(child_wait, &j, &fd);
    until_waiting(st, 1, kid);
    uint64_t v0 = theus_state_version(st);
    g_plan.x = NAN;
    cr_expect_eq(theus_engine_run(e, "emit", NULL), THEUS_ESCHEMA, "gatekeeper refusal");
    g_plan.x = 1.0f;
    g_plan.y = 5.0f;
    cr_expect_eq(theus_engine_run(e, "emit", NULL), THEUS_ESCHEMA, "audit refusal");
    g_plan.y = 0.5f;
    g_plan.fail = 77;
    cr_expect_eq(theus_engine_run(e, "emit", NULL), 77, "the body's own abort");
    g_plan.fail = THEUS_OK;
    cr_expect_eq(theus_state_version(st), v0, "nothing was published");
    cr_expect_eq(count_of(e, "go"), 0);
    g_plan.interfere = 1;
    cr_expect_eq(theus_engine_run(e, "emit", NULL), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(count_of(e, "go"), 1, "the conflicting attempt did not signal; its retry did");
    g_plan.signal = "done";
    cr_assert_eq(theus_engine_run(e, "emit", NULL), THEUS_OK);
    report r = read_report(fd);
    cr_expect_eq(r.rc, THEUS_OK, "%s", r.msg);
    cr_expect_eq(r.seen, 1);
    cr_expect_eq(r.count, 1, "the child saw 'go' once: from the retry only");
    cr_expect_eq(reap(kid), 0);
    close(fd);
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

Test(signal_shared, version_waits_across_processes_see_plain_commits)
{
    theus_engine *e = NULL;
    const char *name = new_name("version");
    theus_state *st = create(name, &e);
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "x", &fi), THEUS_OK);
    wait_job jx = {.name = name, .field = "x", .after = fi.version,
                   .timeout_ms = CHILD_TIMEOUT_MS};
    wait_job jv = {.name = name, .field = NULL, .after = theus_state_version(st) + 1,
                   .timeout_ms = CHILD_TIMEOUT_MS};
    int fx, fv;
    pid_t kx = spawn(child_wait, &jx, &fx);
    until_waiting(st, 1, kx);
    pid_t kv = spawn(child_wait, &jv, &fv);
    until_waiting(st, 2, kv);
    /* Plain transactions, no engine in this process's commit path needed: a commit of n
     * passes the state version once (not enough for jv) and leaves x alone. */
    int64_t one = 1;
    float x = 2.0f;
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "n", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "x", NULL, &x, THEUS_MEM_HOST), THEUS_OK);
    uint64_t v = 0;
    cr_assert_eq(theus_tx_commit(tx, &v), THEUS_OK);
    report rx = read_report(fx), rv = read_report(fv);
    cr_expect_eq(rx.rc, THEUS_OK, "%s", rx.msg);
    cr_expect_eq(rx.seen, v, "x's version is the commit that wrote it");
    cr_expect_eq(rx.x, 2.0f);
    cr_expect_eq(rv.rc, THEUS_OK, "%s", rv.msg);
    cr_expect_eq(rv.seen, v);
    cr_expect_eq(reap(kx), 0);
    cr_expect_eq(reap(kv), 0);
    close(fx);
    close(fv);
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

static int child_timeouts(int fd, void *arg)
{
    theus_state *st = NULL;
    theus_engine *e = NULL;
    if (theus_state_open_shared(arg, NULL, &st) != THEUS_OK ||
        theus_engine_create(st, NULL, &e) != THEUS_OK)
        return 10;
    uint64_t seen = 0;
    int rc = theus_engine_wait_signal(e, "never", 0, 20, &seen);
    if (child_report(fd, st, rc, seen, 0))
        return 11;
    rc = theus_engine_wait_version(e, "n", 1000, 20, &seen);
    if (child_report(fd, st, rc, seen, 0))
        return 12;
    rc = theus_engine_wait_version(e, NULL, 1000, 0, &seen);
    if (child_report(fd, st, rc, seen, 0))
        return 13;
    theus_engine_destroy(e);
    theus_state_destroy(st);
    return 0;
}

Test(signal_shared, waits_time_out_in_another_process)
{
    theus_engine *e = NULL;
    const char *name = new_name("timeout");
    theus_state *st = create(name, &e);
    int fd;
    pid_t kid = spawn(child_timeouts, (void *)name, &fd);
    for (int i = 0; i < 3; i++) {
        report r = read_report(fd);
        cr_expect_eq(r.rc, THEUS_ETIMEDOUT, "wait %d: %d", i, r.rc);
        cr_expect(strstr(r.msg, "ms passed") != NULL, "wait %d: %s", i, r.msg);
    }
    cr_expect_eq(reap(kid), 0);
    close(fd);
    cr_expect_eq(atomic_load(&shared_area_of(st)->sig.waiters), 0, "nobody left counted");
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

/* ---- the table's bounds ------------------------------------------------------------------ */
static char g_many[THEUS_SHARED_MAX_SIGNALS + 2][THEUS_NAME_MAX + 1];
static int g_from, g_to;            /* "many" signals g_many[g_from..g_to) */
static theus_engine *g_other;       /* "late" runs "fill" on it inside its body */
static int g_inner_rc;

static int many(theus_run *run, void *user)
{
    (void)user;
    int64_t one = 1;
    int rc = theus_tx_add(theus_run_tx(run), "n", NULL, &one, THEUS_MEM_HOST);
    for (int i = g_from; rc == THEUS_OK && i < g_to; i++)
        rc = theus_run_signal(run, g_many[i]);
    return rc;
}

/* As many, without writing anything. */
static int quiet_pair(theus_run *run, void *user)
{
    (void)user;
    int rc = THEUS_OK;
    for (int i = g_from; rc == THEUS_OK && i < g_to; i++)
        rc = theus_run_signal(run, g_many[i]);
    return rc;
}

/* Queues a new name while there is room, then lets another handle take the last slot. */
static int late(theus_run *run, void *user)
{
    (void)user;
    int64_t one = 1;
    int rc = theus_tx_add(theus_run_tx(run), "n", NULL, &one, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = theus_run_signal(run, g_many[THEUS_SHARED_MAX_SIGNALS]);
    if (rc == THEUS_OK && g_other)
        g_inner_rc = theus_engine_run(g_other, "fill", NULL);
    g_other = NULL; /* a retry does not fill again */
    return rc;
}

static int fill(theus_run *run, void *user)
{
    (void)user;
    return theus_run_signal(run, g_many[THEUS_SHARED_MAX_SIGNALS - 1]);
}

Test(signal_shared, name_too_long_and_full_table_are_clear_errors)
{
    theus_engine *e = NULL;
    const char *name = new_name("table");
    theus_state *st = create(name, &e);
    theus_process_def d = {.name = "many", .body = many, .inputs = g_io + 2, .n_inputs = 1,
                           .outputs = g_io + 2, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(e, &d), THEUS_OK);
    d.name = "late";
    d.body = late;
    cr_assert_eq(theus_engine_register(e, &d), THEUS_OK);
    for (int i = 0; i < THEUS_SHARED_MAX_SIGNALS + 2; i++)
        snprintf(g_many[i], sizeof g_many[i], "sig-%03d", i);

    /* Too long: refused in the body, nothing committed. */
    char longname[THEUS_NAME_MAX + 2];
    memset(longname, 's', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    memcpy(g_many[0], longname, THEUS_NAME_MAX); /* exactly THEUS_NAME_MAX: fine */
    g_many[0][THEUS_NAME_MAX] = '\0';
    uint64_t v0 = theus_state_version(st);
    g_plan.signal = longname;
    cr_expect_eq(theus_engine_run(e, "emit", NULL), THEUS_EINVAL);
    cr_expect(strstr(theus_state_last_error(st), "longer than") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect_eq(theus_state_version(st), v0);

    /* All but one slot, in one commit. */
    g_from = 0;
    g_to = THEUS_SHARED_MAX_SIGNALS - 1;
    cr_assert_eq(theus_engine_run(e, "many", NULL), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(count_of(e, g_many[0]), 1, "a name of THEUS_NAME_MAX bytes is kept whole");
    /* Two new names with room for one: refused at the second theus_run_signal. */
    v0 = theus_state_version(st);
    g_from = THEUS_SHARED_MAX_SIGNALS - 1;
    g_to = THEUS_SHARED_MAX_SIGNALS + 1;
    cr_expect_eq(theus_engine_run(e, "many", NULL), THEUS_ENOMEM);
    cr_expect(strstr(theus_state_last_error(st), "is full") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect_eq(theus_state_version(st), v0, "state unchanged");
    cr_expect_eq(count_of(e, g_many[THEUS_SHARED_MAX_SIGNALS - 1]), 0);

    /* Room checked in the body, the last slot taken by another handle before the commit:
     * the commit is refused under the commit lock (after the audit), state unchanged but
     * for the other handle's commit. */
    theus_state *st2 = NULL;
    theus_engine *e2 = NULL;
    cr_assert_eq(theus_state_open_shared(name, NULL, &st2), THEUS_OK);
    cr_assert_eq(theus_engine_create(st2, NULL, &e2), THEUS_OK);
    d = (theus_process_def){.name = "fill", .body = fill, .inputs = g_io + 2, .n_inputs = 1,
                            .outputs = g_io + 2, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(e2, &d), THEUS_OK);
    g_other = e2;
    g_inner_rc = -99;
    int64_t n0 = -1, n1 = -1;
    n0 = read_n(st);
    cr_expect_eq(theus_engine_run(e, "late", NULL), THEUS_ENOMEM);
    cr_expect(strstr(theus_state_last_error(st), "is full") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect_eq(g_inner_rc, THEUS_OK, "%s", theus_state_last_error(st2));
    n1 = read_n(st);
    cr_expect_eq(n1, n0, "the refused commit changed nothing");
    cr_expect_eq(count_of(e, g_many[THEUS_SHARED_MAX_SIGNALS - 1]), 1, "the filler's signal");
    cr_expect_eq(count_of(e, g_many[THEUS_SHARED_MAX_SIGNALS]), 0);
    /* Known names still work in a full table. */
    g_from = 0;
    g_to = 2;
    cr_expect_eq(theus_engine_run(e, "many", NULL), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(count_of(e, g_many[1]), 2);
    uint64_t c = 0;
    cr_expect_eq(theus_engine_wait_signal(e2, g_many[1], 1, 0, &c), THEUS_OK);
    cr_expect_eq(c, 2, "the other handle sees the same table");
    theus_engine_destroy(e2);
    theus_state_destroy(st2);
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

/* ---- removal and destruction ------------------------------------------------------------- */
Test(signal_shared, removing_the_state_ends_waits_in_every_process)
{
    theus_engine *e = NULL;
    const char *name = new_name("removed");
    theus_state *st = create(name, &e);
    wait_job js = {.name = name, .signal = "never", .timeout_ms = UINT32_MAX};
    wait_job jv = {.name = name, .field = "n", .after = 1000, .timeout_ms = UINT32_MAX};
    int fs, fv;
    pid_t ks = spawn(child_wait, &js, &fs);
    until_waiting(st, 1, ks);
    pid_t kv = spawn(child_wait, &jv, &fv);
    until_waiting(st, 2, kv);
    cr_assert_eq(theus_shared_remove(name), THEUS_OK);
    report rs = read_report(fs), rv = read_report(fv);
    cr_expect_eq(rs.rc, THEUS_ENOENT, "%d %s", rs.rc, rs.msg);
    cr_expect(strstr(rs.msg, "removed") != NULL, "%s", rs.msg);
    cr_expect_eq(rv.rc, THEUS_ENOENT, "%d %s", rv.rc, rv.msg);
    cr_expect_eq(reap(ks), 0);
    cr_expect_eq(reap(kv), 0);
    close(fs);
    close(fv);
    /* In this process too, at once; the handle itself keeps working. */
    uint64_t seen = 9;
    cr_expect_eq(theus_engine_wait_signal(e, "never", 0, UINT32_MAX, &seen), THEUS_ENOENT);
    cr_expect_eq(seen, 0);
    cr_expect(strstr(theus_state_last_error(st), "removed") != NULL, "%s",
              theus_state_last_error(st));
    uint64_t v = 0;
    cr_expect_eq(theus_engine_run(e, "emit", &v), THEUS_OK);
    cr_expect_eq(theus_engine_wait_signal(e, "go", 0, UINT32_MAX, &seen), THEUS_OK,
                 "a condition that holds is reported as such");
    cr_expect_eq(seen, 1);
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

typedef struct thread_wait {
    theus_engine *e;
    int rc;
} thread_wait;

static void *wait_for_never(void *arg)
{
    thread_wait *w = arg;
    w->rc = theus_engine_wait_signal(w->e, "never", 0, UINT32_MAX, NULL);
    return NULL;
}

Test(signal_shared, destroying_the_engine_ends_its_waits_only)
{
    theus_engine *e = NULL;
    const char *name = new_name("destroy");
    theus_state *st = create(name, &e);
    /* A child waits on the same state; destroying this process's engine must not end it. */
    wait_job j = {.name = name, .signal = "go", .timeout_ms = CHILD_TIMEOUT_MS};
    int fd;
    pid_t kid = spawn(child_wait, &j, &fd);
    until_waiting(st, 1, kid);
    thread_wait w = {.e = e, .rc = -99};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, wait_for_never, &w), 0);
    for (;;) {
        pthread_mutex_lock(&e->sig.mu);
        uint32_t n = e->sig.waiters;
        pthread_mutex_unlock(&e->sig.mu);
        if (n >= 1)
            break;
        sched_yield();
    }
    theus_engine_destroy(e);
    pthread_join(t, NULL);
    cr_expect_eq(w.rc, THEUS_EBUSY);
    /* A new engine on the same handle: the child's wait is still there and wakes. */
    cr_assert_eq(theus_engine_create(st, NULL, &e), THEUS_OK);
    register_procs(e);
    cr_assert_eq(theus_engine_run(e, "emit", NULL), THEUS_OK);
    report r = read_report(fd);
    cr_expect_eq(r.rc, THEUS_OK, "%s", r.msg);
    cr_expect_eq(r.seen, 1);
    cr_expect_eq(reap(kid), 0);
    close(fd);
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

/* ---- a writer killed inside its commit ---------------------------------------------------- */
static int g_point;

static void crash_hook(int point)
{
    if (point == g_point)
        raise(SIGKILL);
}

static int child_crash(int fd, void *arg)
{
    (void)fd;
    theus_state *st = NULL;
    theus_engine *e = NULL;
    if (theus_state_open_shared(arg, NULL, &st) != THEUS_OK ||
        theus_engine_create(st, NULL, &e) != THEUS_OK)
        return 10;
    theus_process_def d = {.name = "many", .body = many, .inputs = g_io + 2, .n_inputs = 1,
                           .outputs = g_io + 2, .n_outputs = 1};
    if (theus_engine_register(e, &d) != THEUS_OK)
        return 11;
    snprintf(g_many[0], sizeof g_many[0], "crash");
    g_from = 0;
    g_to = 1;
    redo_fault_hook = crash_hook;
    theus_engine_run(e, "many", NULL);
    return 12; /* the hook should have killed this process */
}

Test(signal_shared, a_writer_killed_in_its_commit_signals_exactly_when_it_published)
{
    theus_engine *e = NULL;
    const char *name = new_name("crash");
    theus_state *st = create(name, &e);
    const struct { int point; int published; } cases[] = {
        {REDO_POINT_WRITING, 0},   /* before READY: dropped, and so are its signals */
        {REDO_POINT_READY, 1},     /* READY: the next lock taker finishes it and signals */
        {REDO_POINT_REPLAYING, 1},
        {REDO_POINT_APPLIED, 1},
        {REDO_POINT_PUBLISHED, 1}, /* published, not signalled: the next taker signals */
    };
    uint64_t expect = 0;
    int64_t n = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        g_point = cases[i].point;
        int fd;
        pid_t kid = spawn(child_crash, (void *)name, &fd);
        cr_assert_eq(reap(kid), 128 + SIGKILL, "point %d", g_point);
        close(fd);
        /* What the dead writer left is finished (or dropped) by the next taker of the
         * commit lock: here a plain transaction, with no signals of its own. */
        uint64_t seen = 0;
        cr_expect_eq(theus_engine_wait_signal(e, "crash", expect, 0, &seen), THEUS_ETIMEDOUT,
                     "point %d: nothing delivered before the recovery", g_point);
        float x = (float)i;
        theus_tx *tx = NULL;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_write(tx, "x", NULL, &x, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "point %d: %s", g_point,
                     theus_state_last_error(st));
        expect += (uint64_t)cases[i].published;
        n += cases[i].published;
        int64_t got = read_n(st);
        cr_expect_eq(got, n, "point %d", g_point);
        cr_expect_eq(count_of(e, "crash"), expect, "point %d: one signal per published commit",
                     g_point);
        const shared_signal_area *s = &shared_area_of(st)->sig;
        cr_expect_eq(atomic_load(&s->staged_state), SIG_STAGED_NONE, "point %d", g_point);
    }
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

/* A delivery killed half applied (one count stored, the other not): outside a commit (a run
 * that wrote nothing) and inside one. The next taker of the commit lock applies it again,
 * whole, and nothing is counted twice. */
static void crash_applying(int point)
{
    if (point == SIG_POINT_APPLYING)
        raise(SIGKILL);
}

static int child_half_delivery(int fd, void *arg)
{
    (void)fd;
    const char *const *a = arg; /* name, process */
    theus_state *st = NULL;
    theus_engine *e = NULL;
    if (theus_state_open_shared(a[0], NULL, &st) != THEUS_OK ||
        theus_engine_create(st, NULL, &e) != THEUS_OK)
        return 10;
    theus_process_def d = {.name = "pair", .body = many, .inputs = g_io + 2, .n_inputs = 1,
                           .outputs = g_io + 2, .n_outputs = 1};
    if (strcmp(a[1], "quiet") == 0) {
        d.name = "quiet";
        d.body = quiet_pair;
    }
    if (theus_engine_register(e, &d) != THEUS_OK)
        return 11;
    snprintf(g_many[0], sizeof g_many[0], "half-a");
    snprintf(g_many[1], sizeof g_many[1], "half-b");
    g_from = 0;
    g_to = 2;
    shared_signal_fault_hook = crash_applying;
    theus_engine_run(e, d.name, NULL);
    return 12; /* the hook should have killed this process */
}

Test(signal_shared, a_delivery_killed_half_applied_is_completed_once)
{
    theus_engine *e = NULL;
    const char *name = new_name("half");
    theus_state *st = create(name, &e);
    const char *procs[2] = {"quiet", "pair"}; /* writes nothing; commits an ADD */
    for (int i = 0; i < 2; i++) {
        const char *arg[2] = {name, procs[i]};
        int fd;
        pid_t kid = spawn(child_half_delivery, arg, &fd);
        cr_assert_eq(reap(kid), 128 + SIGKILL, "%s", procs[i]);
        close(fd);
        /* The first time the names are new: not visible until the delivery names them
         * (after every count), so nothing shows; the second time one count moved. */
        cr_expect_eq(count_of(e, "half-a") + count_of(e, "half-b"), (uint64_t)(i ? 3 : 0),
                     "%s: half applied before the recovery", procs[i]);
        theus_tx *tx = NULL;
        float x = 1.0f;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_write(tx, "x", NULL, &x, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_state_last_error(st));
        cr_expect_eq(count_of(e, "half-a"), (uint64_t)(i + 1), "%s", procs[i]);
        cr_expect_eq(count_of(e, "half-b"), (uint64_t)(i + 1), "%s", procs[i]);
        cr_expect_eq(read_n(st), i, "%s: the commit's ADD is there once", procs[i]);
    }
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

/* A durable shared state (every commit logged in one directory): the same cross-process
 * signals, delivered by the engine's listener after the log's (THEUS_SYNC_COMMIT: after
 * the record's fdatasync). */
static int child_wait_durable(int fd, void *arg)
{
    const wait_job *j = arg;
    theus_state *st = NULL;
    theus_engine *e = NULL;
    if (theus_shared_open_durable(j->name, g_dir, NULL, NULL, NULL, &st) != THEUS_OK)
        return 10;
    if (theus_engine_create(st, NULL, &e) != THEUS_OK)
        return 11;
    uint64_t seen = 0;
    int rc = theus_engine_wait_signal(e, j->signal, j->after, j->timeout_ms, &seen);
    if (child_report(fd, st, rc, seen, 0))
        return 12;
    theus_engine_destroy(e);
    theus_state_destroy(st);
    return 0;
}

Test(signal_shared, a_durable_shared_state_signals_across_processes)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/theus-test-sigshm-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    const char *name = new_name("durable");
    theus_state *st = NULL;
    theus_engine *e = NULL;
    cr_assert_eq(theus_shared_open_durable(name, g_dir, schema, NULL, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_engine_create(st, NULL, &e), THEUS_OK);
    register_procs(e);
    g_st = st;
    g_plan = (plan){.x = 4.0f, .y = 0.5f, .signal = "go"};
    wait_job j = {.name = name, .signal = "go", .timeout_ms = CHILD_TIMEOUT_MS};
    int fd;
    pid_t kid = spawn(child_wait_durable, &j, &fd);
    until_waiting(st, 1, kid);
    uint64_t v = 0;
    cr_assert_eq(theus_engine_run(e, "emit", &v), THEUS_OK, "%s", theus_state_last_error(st));
    report r = read_report(fd);
    cr_expect_eq(r.rc, THEUS_OK, "%s", r.msg);
    cr_expect_eq(r.seen, 1);
    cr_expect_geq(r.version, v);
    cr_expect_eq(r.x, 4.0f);
    cr_expect_eq(reap(kid), 0);
    close(fd);
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

/* ---- a waiter killed while it waits ------------------------------------------------------ */
typedef struct sleeper {
    theus_engine *e;
    int rc;
} sleeper;

static void *sleeper_thread(void *arg)
{
    sleeper *s = arg;
    uint64_t seen = 0;
    s->rc = theus_engine_wait_signal(s->e, "never", 0, CHILD_TIMEOUT_MS, &seen);
    return NULL;
}

/* Two threads wait for a signal nobody sends; the parent kills the process under them. */
static int child_two_sleepers(int fd, void *arg)
{
    (void)fd;
    theus_state *st = NULL;
    theus_engine *e = NULL;
    if (theus_state_open_shared(arg, NULL, &st) != THEUS_OK)
        return 10;
    if (theus_engine_create(st, NULL, &e) != THEUS_OK)
        return 11;
    sleeper s[2] = {{.e = e, .rc = -1}, {.e = e, .rc = -1}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, sleeper_thread, &s[i]) != 0)
            return 12;
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    return 13; /* only a timeout gets here: the parent kills this process first */
}

static int slot_of(const shared_signal_area *s, pid_t pid)
{
    for (int i = 0; i < SIG_WAITER_SLOTS; i++)
        if (atomic_load(&s->w[i].pid) == (int32_t)pid)
            return i;
    return -1;
}

Test(signal_shared, a_waiter_killed_while_it_waits_is_taken_back_by_the_next_wait)
{
    theus_engine *e = NULL;
    const char *name = new_name("deadwaiter");
    theus_state *st = create(name, &e);
    const shared_signal_area *s = &shared_area_of(st)->sig;
    int fd;
    pid_t kid = spawn(child_two_sleepers, (void *)name, &fd);
    until_waiting(st, 2, kid);
    /* A waiter counts itself in `waiters` first, then in its process's slot: wait for the
     * slot too (the second thread may be between the two). */
    int slot;
    while ((slot = slot_of(s, kid)) < 0 || atomic_load(&s->w[slot].n) < 2) {
        int status;
        cr_assert_eq(waitpid(kid, &status, WNOHANG), 0, "the child ended before it waited");
        sched_yield();
    }
    cr_expect_eq(atomic_load(&s->w[slot].n), 2);
    cr_assert_eq(kill(kid, SIGKILL), 0);
    cr_expect_eq(reap(kid), 128 + SIGKILL);
    close(fd);
    cr_expect_eq(atomic_load(&s->waiters), 2, "dead waiters cannot count themselves out");
    uint64_t v_before = theus_state_version(st);

    /* Any wait that begins takes them back: a check-once wait here. */
    uint64_t seen = 99;
    cr_expect_eq(theus_engine_wait_signal(e, "go", 0, 0, &seen), THEUS_ETIMEDOUT);
    cr_expect_eq(seen, 0);
    cr_expect_eq(atomic_load(&s->waiters), 0, "the dead process's waiters are not counted");
    cr_expect_eq(slot_of(s, kid), -1, "its slot is free again");
    cr_expect_eq(shared_signal_reap_waiters(st), 0, "taken back once");
    cr_expect_eq(theus_state_version(st), v_before, "nothing else changed");

    /* The count is right again: a new waiter in another process is seen as it waits, and
     * woken by the signal it waits for. */
    wait_job j = {.name = name, .signal = "go", .after = 0, .timeout_ms = CHILD_TIMEOUT_MS};
    pid_t kid2 = spawn(child_wait, &j, &fd);
    until_waiting(st, 1, kid2);
    uint64_t v = 0;
    cr_assert_eq(theus_engine_run(e, "emit", &v), THEUS_OK, "%s", theus_state_last_error(st));
    report r = read_report(fd);
    cr_expect_eq(r.rc, THEUS_OK, "%s", r.msg);
    cr_expect_eq(r.seen, 1);
    cr_expect_geq(r.version, v);
    cr_expect_eq(reap(kid2), 0);
    close(fd);
    cr_expect_eq(atomic_load(&s->waiters), 0);
    theus_engine_destroy(e);
    theus_state_destroy(st);
}

/* ---- a commit whose replay fails after its redo record was complete ---------------------- */
static theus_backend_iface g_failing_iface;
static theus_backend g_failing;
static int g_replay_failures; /* replays of the failing backend that fail, then it works */

static int failing_replay(void *ctx, const replay_op *ops, size_t n)
{
    if (g_replay_failures > 0) {
        g_replay_failures--;
        return THEUS_EIO; /* before anything changed, as a backend must */
    }
    return backend_cpu()->iface->replay(ctx, ops, n);
}

static float read_x(theus_state *st)
{
    float x = -1;
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK, "%s", theus_state_last_error(st));
    cr_assert_eq(theus_tx_read(tx, "x", NULL, &x, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    return x;
}

Test(signal_shared, a_commit_whose_replay_fails_signals_when_it_is_finished)
{
    theus_engine *e = NULL;
    const char *name = new_name("replayfail");
    theus_state *st = create(name, &e);
    wait_job j = {.name = name, .signal = "go", .after = 0, .timeout_ms = CHILD_TIMEOUT_MS};
    int fd;
    pid_t kid = spawn(child_wait, &j, &fd);
    until_waiting(st, 1, kid);

    int fx = state_find_field(st, "x");
    cr_assert_geq(fx, 0);
    const theus_backend *was = st->backend[fx];
    g_failing_iface = *backend_cpu()->iface;
    g_failing_iface.name = "failing-replay";
    g_failing_iface.replay = failing_replay;
    g_failing = (theus_backend){.iface = &g_failing_iface, .ctx = backend_cpu()->ctx};
    st->backend[fx] = &g_failing;
    g_replay_failures = 1;

    uint64_t v0 = theus_state_version(st);
    g_plan.x = 2.0f;
    cr_expect_eq(theus_engine_run(e, "emit", NULL), THEUS_EIO);
    cr_expect(strstr(theus_state_last_error(st), "applied by the next taker") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect_eq(theus_state_version(st), v0, "not published yet");
    cr_expect_eq(count_of(e, "go"), 0, "nor signalled");
    cr_expect(redo_pending(st), "its record waits for the next taker of the commit lock");

    /* The next commit takes the lock: the failed one is finished first, with its signal,
     * which wakes the child; then this one commits after it. */
    theus_tx *tx = NULL;
    int64_t n = 5;
    uint64_t v = 0;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "n", NULL, &n, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, &v), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(v, v0 + 2, "the finished commit is v0 + 1, this one after it");
    cr_expect_eq(count_of(e, "go"), 1, "delivered once, when its commit was published");
    cr_expect_eq(read_x(st), 2.0f);
    report r = read_report(fd);
    cr_expect_eq(r.rc, THEUS_OK, "%s", r.msg);
    cr_expect_eq(r.seen, 1);
    cr_expect_geq(r.version, v0 + 1);
    cr_expect_eq(r.x, 2.0f, "the child sees the commit its signal came with");
    cr_expect_eq(reap(kid), 0);
    close(fd);
    st->backend[fx] = was;
    cr_expect_eq(count_of(e, "go"), 1, "and only once");
    theus_engine_destroy(e);
    theus_state_destroy(st);
}
