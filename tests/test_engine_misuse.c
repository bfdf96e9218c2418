/* Bad input and misuse of the process layer (issue #11, "Bad input and misuse"): unknown
 * process names, recursion through nested workflows, a body that returns an undeclared
 * code, a condition on a non-scalar field or an element out of range, a signal name too
 * long, waiting on an engine being destroyed or on a shared state that was removed. Each is
 * a clear error — its code and a message naming what was wrong — and leaves the state as it
 * was: the state's version, every field's version and every field's bytes are compared
 * with a fingerprint taken before. Waiting threads are synchronised through the engine's
 * and the segment's waiter counts (a yield loop); nothing sleeps and nothing is timed. */
#include "process/process.h"
#include "shared.h"
#include "state.h"
#include "theus/theus_process.h"
#include "theus/theus_shared.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *schema =
    "{\"name\": \"misuse\", \"fields\": {"
    "\"counter\": {\"dtype\": \"i64\", \"shape\": []},"
    "\"hits\":    {\"dtype\": \"i64\", \"shape\": []},"
    "\"pos\":     {\"dtype\": \"i64\", \"shape\": []},"
    "\"acc\":     {\"dtype\": \"f32\", \"shape\": [4]},"
    "\"W\":       {\"dtype\": \"f64\", \"shape\": [2, 3]}}}";

static theus_state *st;
static theus_engine *eng;
static char shared_name[64]; /* the shared test's state, removed by the fini */

/* ---- fingerprints: everything a failed call must leave as it was ----------------------- */
enum { MAX_FIELDS = 8, MAX_BYTES = 64 };
typedef struct fingerprint {
    uint64_t version;
    size_t nfields;
    uint64_t field_version[MAX_FIELDS];
    unsigned char bytes[MAX_FIELDS][MAX_BYTES];
} fingerprint;

static fingerprint take(theus_state *s)
{
    fingerprint f;
    memset(&f, 0, sizeof f);
    f.version = theus_state_version(s);
    f.nfields = theus_state_field_count(s);
    cr_assert_leq(f.nfields, MAX_FIELDS);
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(s, NULL, &tx), THEUS_OK, "%s", theus_state_last_error(s));
    for (size_t i = 0; i < f.nfields; i++) {
        const char *name = theus_state_field_name(s, i);
        theus_field_info fi;
        cr_assert_eq(theus_state_field_info(s, name, &fi), THEUS_OK);
        cr_assert_leq(fi.nbytes, MAX_BYTES);
        f.field_version[i] = fi.version;
        cr_assert_eq(theus_tx_read(tx, name, NULL, f.bytes[i], THEUS_MEM_HOST), THEUS_OK);
    }
    theus_tx_abort(tx);
    return f;
}

static void expect_unchanged(theus_state *s, const fingerprint *before, const char *what)
{
    fingerprint now = take(s);
    cr_expect_eq(now.version, before->version, "%s: the state's version moved", what);
    for (size_t i = 0; i < before->nfields; i++) {
        cr_expect_eq(now.field_version[i], before->field_version[i], "%s: field '%s' was written",
                     what, theus_state_field_name(s, i));
        cr_expect_eq(memcmp(now.bytes[i], before->bytes[i], MAX_BYTES), 0,
                     "%s: field '%s' changed", what, theus_state_field_name(s, i));
    }
}

#define EXPECT_MSG(s, needle)                                                                  \
    cr_expect(strstr(theus_state_last_error(s), (needle)) != NULL, "message '%s' lacks '%s'",  \
              theus_state_last_error(s), (needle))

/* ---- processes ---------------------------------------------------------------------------- */
static int hit(theus_run *run, void *user)
{
    (void)user;
    int64_t one = 1;
    return theus_tx_add(theus_run_tx(run), "hits", NULL, &one, THEUS_MEM_HOST);
}

/* Writes counter, queues a signal and an outbox entry, then returns *user. */
static int ran, dropped;
static void outbox_fn(void *arg, uint64_t version)
{
    (void)arg;
    (void)version;
    ran++;
}
static void outbox_drop(void *arg)
{
    (void)arg;
    dropped++;
}

static const char *g_signal = "done"; /* the name "busy" signals */

static int busy(theus_run *run, void *user)
{
    int64_t v = 42;
    int rc;
    if ((rc = theus_tx_write(theus_run_tx(run), "counter", NULL, &v, THEUS_MEM_HOST)) ||
        (rc = theus_run_outbox(run, outbox_fn, outbox_drop, NULL)) ||
        (rc = theus_run_signal(run, g_signal)))
        return rc;
    return *(const int *)user;
}

enum { DECLARED = 7, UNDECLARED = 1234 };
static int g_status;

static void setup(void)
{
    cr_assert_eq(theus_state_create(schema, NULL, &st), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK, "%s", theus_last_error_message());
    static const char *const hits_io[] = {"hits"};
    static const char *const counter_io[] = {"counter"};
    static const int declared[] = {DECLARED};
    theus_process_def d = {.name = "hit", .body = hit, .inputs = hits_io, .n_inputs = 1,
                           .outputs = hits_io, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK, "%s", theus_state_last_error(st));
    d = (theus_process_def){.name = "busy", .body = busy, .inputs = counter_io, .n_inputs = 1,
                            .outputs = counter_io, .n_outputs = 1, .status_codes = declared,
                            .n_status_codes = 1, .user = &g_status};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK, "%s", theus_state_last_error(st));
    /* Something committed already, so that "unchanged" is not "still at creation". */
    cr_assert_eq(theus_engine_run(eng, "hit", NULL), THEUS_OK);
    g_status = THEUS_OK;
    g_signal = "done";
    ran = dropped = 0;
}

static void teardown(void)
{
    theus_engine_destroy(eng);
    eng = NULL;
    theus_state_destroy(st);
    st = NULL;
    if (shared_name[0])
        theus_shared_remove(shared_name); /* THEUS_ENOENT when the test removed it */
    shared_name[0] = '\0';
}

TestSuite(misuse, .init = setup, .fini = teardown, .timeout = 60);

static theus_workflow *load_ok(const char *json)
{
    theus_workflow *wf = NULL;
    cr_assert_eq(theus_workflow_load(eng, json, &wf), THEUS_OK, "%s", theus_state_last_error(st));
    return wf;
}

/* A workflow that must be refused at load: THEUS_ESCHEMA, no workflow, the path, a line. */
static void expect_refused(const char *json, const char *path, const char *needle)
{
    fingerprint before = take(st);
    theus_workflow *wf = (theus_workflow *)&wf;
    cr_expect_eq(theus_workflow_load(eng, json, &wf), THEUS_ESCHEMA, "%s", json);
    cr_expect_null(wf, "%s", json);
    EXPECT_MSG(st, path);
    EXPECT_MSG(st, needle);
    EXPECT_MSG(st, "(line 1, column ");
    expect_unchanged(st, &before, json);
}

Test(misuse, unknown_process_names)
{
    fingerprint before = take(st);
    cr_expect_eq(theus_engine_run(eng, "nope", NULL), THEUS_ENOENT);
    EXPECT_MSG(st, "'nope'");
    theus_job *j = (theus_job *)&j;
    cr_expect_eq(theus_engine_submit(eng, "nope", &j), THEUS_ENOENT);
    cr_expect_null(j);
    EXPECT_MSG(st, "'nope'");
    theus_process_stats ps;
    cr_expect_eq(theus_engine_process_stats(eng, "nope", &ps), THEUS_ENOENT);
    cr_expect_eq(theus_engine_run(eng, "", NULL), THEUS_ENOENT, "no process has the empty name");
    cr_expect_eq(theus_engine_run(eng, NULL, NULL), THEUS_EINVAL);
    expect_unchanged(st, &before, "run of an unknown process");

    expect_refused("{\"name\": \"w\", \"steps\": [{\"run\": \"nope\"}]}", "$.steps[0].run", "no process 'nope'");
    expect_refused("{\"name\": \"w\", \"steps\": [{\"run\": \"hit\"}, {\"while\": false, \"do\": "
                   "[{\"submit\": \"nope\"}]}]}", "$.steps[1].do[0].submit", "no process 'nope'");

    /* A called workflow that is not loaded: refused when the run starts, before any step. */
    theus_workflow *wf = load_ok("{\"name\": \"w\", \"steps\": [{\"run\": \"hit\"}, "
                                 "{\"call\": \"absent\"}]}");
    theus_workflow_report rep;
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_ENOENT);
    EXPECT_MSG(st, "'absent'");
    cr_expect_eq(rep.runs, 0, "nothing ran");
    expect_unchanged(st, &before, "a call of an unknown workflow");
    theus_workflow_free(wf);
}

Test(misuse, recursion_through_nested_workflows)
{
    fingerprint before = take(st);
    theus_workflow *self = load_ok("{\"name\": \"self\", \"steps\": [{\"run\": \"hit\"}, "
                                   "{\"call\": \"self\"}]}");
    theus_workflow_report rep;
    cr_expect_eq(theus_workflow_run(self, &rep), THEUS_EINVAL);
    EXPECT_MSG(st, "recursion");
    EXPECT_MSG(st, "'self' -> 'self'");
    cr_expect_eq(rep.runs, 0);
    expect_unchanged(st, &before, "a workflow calling itself");

    /* Three deep, the call inside an if inside a while, through a workflow with a position
     * field (refused before the position is looked at or moved). */
    theus_workflow *a = load_ok("{\"name\": \"a\", \"position\": \"pos\", \"steps\": "
                                "[{\"run\": \"hit\"}, {\"call\": \"b\"}]}");
    theus_workflow *b = load_ok("{\"name\": \"b\", \"steps\": [{\"while\": {\"lt\": [\"hits\", "
                                "100]}, \"do\": [{\"if\": true, \"then\": [{\"call\": \"c\"}]}]}]}");
    theus_workflow *c = load_ok("{\"name\": \"c\", \"steps\": [{\"run\": \"hit\"}, "
                                "{\"call\": \"a\"}]}");
    theus_workflow *runs[] = {a, b, c};
    const char *chains[] = {"'a' -> 'b' -> 'c' -> 'a'", "'b' -> 'c' -> 'a' -> 'b'",
                            "'c' -> 'a' -> 'b' -> 'c'"};
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(theus_workflow_run(runs[i], &rep), THEUS_EINVAL, "%s",
                     theus_workflow_name(runs[i]));
        EXPECT_MSG(st, chains[i]);
        cr_expect_eq(rep.runs, 0);
        expect_unchanged(st, &before, chains[i]);
    }
    /* Freeing one link ends the cycle: a then runs into the missing call, still before any step. */
    theus_workflow_free(c);
    cr_expect_eq(theus_workflow_run(a, &rep), THEUS_ENOENT);
    EXPECT_MSG(st, "'c'");
    expect_unchanged(st, &before, "a call chain with a freed link");
    theus_workflow_free(b);
    theus_workflow_free(a);
    theus_workflow_free(self);
}

Test(misuse, a_body_returning_an_undeclared_code)
{
    fingerprint before = take(st);
    g_status = UNDECLARED;
    cr_expect_eq(theus_engine_run(eng, "busy", NULL), THEUS_EUNDECLARED);
    EXPECT_MSG(st, "status 1234");
    EXPECT_MSG(st, "'busy'");
    expect_unchanged(st, &before, "an undeclared status");
    uint64_t n = 99;
    cr_expect_eq(theus_engine_signal_count(eng, "done", &n), THEUS_OK);
    cr_expect_eq(n, 0, "its signal was not delivered");
    cr_expect_eq(ran, 0, "its outbox entry did not run");
    cr_expect_eq(dropped, 1, "it was dropped, once");

    /* On the pool, and as a workflow step: the workflow stops there. */
    theus_job *j = NULL;
    cr_assert_eq(theus_engine_submit(eng, "busy", &j), THEUS_OK);
    cr_expect_eq(theus_job_wait(j, NULL), THEUS_EUNDECLARED);
    theus_workflow *wf = load_ok("{\"name\": \"w\", \"steps\": [{\"run\": \"busy\", "
                                 "\"on_error\": \"retry\", \"retries\": 2}, {\"run\": \"hit\"}]}");
    theus_workflow_report rep;
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_EUNDECLARED);
    cr_expect_str_eq(rep.where, "$.steps[0]");
    EXPECT_MSG(st, "status 1234");
    expect_unchanged(st, &before, "an undeclared status on the pool and in a workflow");
    theus_process_stats ps;
    cr_assert_eq(theus_engine_process_stats(eng, "busy", &ps), THEUS_OK);
    cr_expect_eq(ps.undeclared, 1 + 1 + 3, "each run counted: one, the job, three tries");
    cr_expect_eq(ps.commits, 0);
    cr_expect_eq(ran, 0);
    cr_expect_eq(dropped, 5);

    /* The declared code is the body's own answer, also without a commit. */
    g_status = DECLARED;
    cr_expect_eq(theus_engine_run(eng, "busy", NULL), DECLARED);
    expect_unchanged(st, &before, "a declared status");
    theus_workflow_free(wf);
}

Test(misuse, conditions_on_non_scalar_fields_or_elements_out_of_range)
{
    static const struct {
        const char *operand;
        const char *needle;
    } bad[] = {
        {"acc", "field 'acc' is not a scalar"},          /* four elements, no index */
        {"W", "field 'W' is not a scalar"},              /* a matrix, no index */
        {"acc[4]", "index 4 is out of range for dimension 0"},
        {"acc[-1]", "an index is a non-negative integer"},
        {"W[2][0]", "index 2 is out of range for dimension 0"},
        {"W[0][3]", "index 3 is out of range for dimension 1"},
        {"W[1]", "give one index each"},                 /* one index for two dimensions */
        {"acc[0][0]", "has 1 dimension"},                /* two for one */
        {"acc[x]", "an index is a non-negative integer"},
        {"acc[0", "malformed index"},
        {"nofield", "no field 'nofield'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"name\": \"w\", \"steps\": [{\"run\": \"hit\"}, "
                 "{\"while\": {\"lt\": [\"%s\", 1]}, \"do\": [{\"run\": \"hit\"}]}]}",
                 bad[i].operand);
        expect_refused(json, "$.steps[1].while.lt[0]", bad[i].needle);
        snprintf(json, sizeof json, "{\"name\": \"w\", \"steps\": [{\"if\": {\"and\": [true, "
                 "{\"ge\": [2, \"%s\"]}]}, \"then\": []}]}", bad[i].operand);
        expect_refused(json, "$.steps[0].if.and[1].ge[1]", bad[i].needle);
    }
    /* The same elements in range load and run. */
    theus_workflow *wf = load_ok("{\"name\": \"w\", \"steps\": [{\"if\": {\"and\": "
                                 "[{\"lt\": [\"acc[3]\", 1]}, {\"eq\": [\"W[1][2]\", 0]}]}, "
                                 "\"then\": [{\"run\": \"hit\"}]}]}");
    cr_expect_eq(theus_workflow_run(wf, NULL), THEUS_OK, "%s", theus_state_last_error(st));
    theus_workflow_free(wf);
}

Test(misuse, a_signal_name_too_long)
{
    char name[THEUS_NAME_MAX + 2];
    memset(name, 's', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    fingerprint before = take(st);
    g_signal = name;
    cr_expect_eq(theus_engine_run(eng, "busy", NULL), THEUS_EINVAL);
    EXPECT_MSG(st, "longer than");
    expect_unchanged(st, &before, "a run signalling a name too long");
    cr_expect_eq(ran, 0);
    cr_expect_eq(dropped, 1);
    uint64_t n = 99;
    cr_expect_eq(theus_engine_signal_count(eng, name, &n), THEUS_EINVAL);
    cr_expect_eq(theus_engine_wait_signal(eng, name, 0, 0, &n), THEUS_EINVAL);
    cr_expect_eq(theus_engine_wait_signal(eng, "", 0, 0, &n), THEUS_EINVAL);
    char json[256];
    snprintf(json, sizeof json, "{\"name\": \"w\", \"steps\": [{\"await\": \"%s\"}]}", name);
    expect_refused(json, "$.steps[0].await", "a name is 1..63 bytes");
    expect_unchanged(st, &before, "waits on a name too long");

    /* THEUS_NAME_MAX bytes is a name. */
    name[THEUS_NAME_MAX] = '\0';
    cr_expect_eq(theus_engine_run(eng, "busy", NULL), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(theus_engine_signal_count(eng, name, &n), THEUS_OK);
    cr_expect_eq(n, 1);
    cr_expect_eq(ran, 1);
}

/* ---- waits on an engine being destroyed, on a removed shared state --------------------- */
typedef struct waiter {
    theus_engine *e;
    theus_state *st;    /* read after the wait: the engine may be gone by then */
    const char *signal; /* NULL: the state's version */
    uint64_t after;
    int rc;
    char msg[160];
} waiter;

static void *wait_thread(void *arg)
{
    waiter *w = arg;
    uint64_t seen = 0;
    w->rc = w->signal ? theus_engine_wait_signal(w->e, w->signal, w->after, UINT32_MAX, &seen)
                      : theus_engine_wait_version(w->e, NULL, w->after, UINT32_MAX, &seen);
    snprintf(w->msg, sizeof w->msg, "%s", theus_state_last_error(w->st));
    return NULL;
}

static void until_engine_waiting(theus_engine *e, uint32_t n)
{
    for (;;) {
        pthread_mutex_lock(&e->sig.mu);
        uint32_t w = e->sig.waiters;
        pthread_mutex_unlock(&e->sig.mu);
        if (w >= n)
            return;
        sched_yield();
    }
}

Test(misuse, waiting_on_an_engine_being_destroyed)
{
    fingerprint before = take(st);
    waiter w[2] = {{.e = eng, .st = st, .signal = "never", .rc = -1},
                   {.e = eng, .st = st, .after = before.version + 100, .rc = -1}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, wait_thread, &w[i]), 0);
    until_engine_waiting(eng, 2);
    theus_engine_destroy(eng);
    eng = NULL;
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(w[i].rc, THEUS_EBUSY, "wait %d: %s", i, theus_strerror(w[i].rc));
        cr_expect(strstr(w[i].msg, "destroyed") != NULL, "wait %d: '%s'", i, w[i].msg);
    }
    expect_unchanged(st, &before, "waits ended by the engine's destruction");
    /* The state goes on without it, and takes a new engine. */
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK, "%s", theus_state_last_error(st));
}

Test(misuse, waiting_on_a_removed_shared_state)
{
    theus_engine_destroy(eng);
    eng = NULL;
    theus_state_destroy(st);
    snprintf(shared_name, sizeof shared_name, "test_misuse-%d", (int)getpid());
    cr_assert_eq(theus_state_create_shared(shared_name, schema, NULL, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK);
    theus_tx *tx = NULL;
    int64_t seven = 7;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "counter", NULL, &seven, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    fingerprint before = take(st);

    waiter w[2] = {{.e = eng, .st = st, .signal = "never", .rc = -1},
                   {.e = eng, .st = st, .after = before.version + 100, .rc = -1}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, wait_thread, &w[i]), 0);
    const shared_signal_area *s = &shared_area_of(st)->sig;
    while (atomic_load(&s->waiters) < 2)
        sched_yield();
    cr_assert_eq(theus_shared_remove(shared_name), THEUS_OK, "%s", theus_last_error_message());
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(w[i].rc, THEUS_ENOENT, "wait %d: %s", i, theus_strerror(w[i].rc));
        cr_expect(strstr(w[i].msg, "was removed") != NULL, "wait %d: '%s'", i, w[i].msg);
    }
    expect_unchanged(st, &before, "waits ended by the state's removal");
    uint64_t seen = 0;
    cr_expect_eq(theus_engine_wait_signal(eng, "never", 0, UINT32_MAX, &seen), THEUS_ENOENT,
                 "a later wait ends at once");
    EXPECT_MSG(st, "was removed");
    cr_expect_eq(theus_engine_wait_version(eng, NULL, before.version - 1, 0, &seen), THEUS_OK,
                 "a condition that holds still answers");
    cr_expect_eq(seen, before.version);
    cr_expect_eq(atomic_load(&s->waiters), 0);
    expect_unchanged(st, &before, "later waits on the removed state");
}
