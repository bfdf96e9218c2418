/* Signals, waits and the outbox. Row of issue #11's table: signals are delivered only
 * after publish, never for a refused commit (Theus delivered them before its schema
 * check). Outbox entries run once, after their commit, in commit order; never after an
 * abort or a conflict. Waits across threads (condition variable); cross-process waits on
 * a shared state are not built. */
#include "theus/theus_process.h"
#include "process/process.h"

#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

static const char *schema =
    "{\"fields\": {"
    "\"x\":    {\"dtype\": \"f32\", \"shape\": [], \"constraints\": {\"finite\": true}},"
    "\"y\":    {\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"max\", \"value\": 1}]},"
    "\"n\":    {\"dtype\": \"i64\", \"shape\": []}}}";

static theus_state *st;
static theus_engine *eng;

typedef struct order {
    pthread_mutex_t mu;
    uint64_t v[64];
    size_t n;
    int dropped;
} order;
static order ord = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* What "emit" does: write x (and y), signal "go", queue an outbox entry. */
typedef struct emit_plan {
    float x, y;
    int fail;          /* return this from the body after queueing */
    int interfere;     /* commit a competing write in the first attempt */
} emit_plan;
static emit_plan plan;

static void record(void *arg, uint64_t version)
{
    (void)arg;
    pthread_mutex_lock(&ord.mu);
    if (ord.n < 64)
        ord.v[ord.n++] = version;
    pthread_mutex_unlock(&ord.mu);
}

static void dropped(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&ord.mu);
    ord.dropped++;
    pthread_mutex_unlock(&ord.mu);
}

static int emit(theus_run *run, void *user)
{
    (void)user;
    theus_tx *tx = theus_run_tx(run);
    int rc;
    float cur;
    if ((rc = theus_tx_read(tx, "x", NULL, &cur, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "x", NULL, &plan.x, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "y", NULL, &plan.y, THEUS_MEM_HOST)) ||
        (rc = theus_run_signal(run, "go")) ||
        (rc = theus_run_outbox(run, record, dropped, NULL)))
        return rc;
    if (plan.interfere) {
        plan.interfere = 0;
        theus_tx *other = NULL;
        float z = 0.25f;
        cr_assert_eq(theus_tx_begin(st, NULL, &other), THEUS_OK);
        cr_assert_eq(theus_tx_write(other, "x", NULL, &z, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_commit(other, NULL), THEUS_OK);
    }
    return plan.fail;
}

static int add_n(theus_run *run, void *user)
{
    (void)user;
    int64_t one = 1;
    int rc = theus_tx_add(theus_run_tx(run), "n", NULL, &one, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = theus_run_signal(run, "n");
    return rc ? rc : theus_run_outbox(run, record, dropped, NULL);
}

static void setup(void)
{
    ord.n = 0;
    ord.dropped = 0;
    plan = (emit_plan){.x = 1.0f, .y = 0.5f};
    cr_assert_eq(theus_state_create(schema, NULL, &st), THEUS_OK);
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK);
    static const char *const io[] = {"x", "y"};
    static const int codes[] = {77};
    theus_process_def d = {.name = "emit", .body = emit, .inputs = io, .n_inputs = 2,
                           .outputs = io, .n_outputs = 2, .status_codes = codes,
                           .n_status_codes = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    static const char *const nio[] = {"n"};
    d = (theus_process_def){.name = "add", .body = add_n, .inputs = nio, .n_inputs = 1,
                            .outputs = nio, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
}

static void teardown(void)
{
    theus_engine_destroy(eng);
    theus_state_destroy(st);
}

TestSuite(signal, .init = setup, .fini = teardown, .timeout = 60);

static uint64_t count(const char *name)
{
    uint64_t n = 99;
    cr_assert_eq(theus_engine_signal_count(eng, name, &n), THEUS_OK);
    return n;
}

typedef struct waiter {
    const char *signal;    /* NULL: wait on the version of field */
    const char *field;
    uint64_t after;
    uint32_t timeout_ms;
    int rc;
    uint64_t seen;
    float x_at_wake;
} waiter;

static void *wait_thread(void *arg)
{
    waiter *w = arg;
    w->rc = w->signal ? theus_engine_wait_signal(eng, w->signal, w->after, w->timeout_ms, &w->seen)
                      : theus_engine_wait_version(eng, w->field, w->after, w->timeout_ms, &w->seen);
    if (w->rc == THEUS_OK) {
        theus_tx *tx = NULL;
        if (theus_tx_begin(st, NULL, &tx) == THEUS_OK) {
            theus_tx_read(tx, "x", NULL, &w->x_at_wake, THEUS_MEM_HOST);
            theus_tx_abort(tx);
        }
    }
    return NULL;
}

/* Wait until @n threads sleep in the engine's waits (a yield loop, not a timed sleep). */
static void until_waiting(uint32_t n)
{
    for (;;) {
        pthread_mutex_lock(&eng->sig.mu);
        uint32_t w = eng->sig.waiters;
        pthread_mutex_unlock(&eng->sig.mu);
        if (w >= n)
            return;
        sched_yield();
    }
}

Test(signal, delivered_after_publish_to_a_waiting_thread)
{
    waiter w = {.signal = "go", .after = 0, .timeout_ms = UINT32_MAX};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, wait_thread, &w), 0);
    until_waiting(1);
    plan.x = 3.0f;
    uint64_t v = 0;
    cr_expect_eq(theus_engine_run(eng, "emit", &v), THEUS_OK, "%s", theus_state_last_error(st));
    pthread_join(t, NULL);
    cr_expect_eq(w.rc, THEUS_OK);
    cr_expect_eq(w.seen, 1);
    cr_expect_eq(w.x_at_wake, 3.0f, "the woken thread sees the published commit");
    cr_expect_eq(ord.n, 1);
    cr_expect_eq(ord.v[0], v, "the outbox entry ran with its commit's version");
}

/* Theus delivered signals before its schema check, even for a refused commit. */
Test(signal, never_for_a_refused_aborted_or_conflicting_attempt)
{
    plan.x = NAN;
    cr_expect_eq(theus_engine_run(eng, "emit", NULL), THEUS_ESCHEMA, "gatekeeper");
    plan.x = 1.0f;
    plan.y = 5.0f;
    cr_expect_eq(theus_engine_run(eng, "emit", NULL), THEUS_ESCHEMA, "audit");
    plan.y = 0.5f;
    plan.fail = 77;
    cr_expect_eq(theus_engine_run(eng, "emit", NULL), 77, "the body's own abort");
    plan.fail = THEUS_OK;
    cr_expect_eq(count("go"), 0);
    cr_expect_eq(ord.n, 0, "no outbox entry ran");
    cr_expect_eq(ord.dropped, 3, "each was dropped once");

    plan.interfere = 1;
    cr_expect_eq(theus_engine_run(eng, "emit", NULL), THEUS_OK);
    cr_expect_eq(count("go"), 1, "the conflicting attempt did not signal; the retry did");
    cr_expect_eq(ord.n, 1, "the outbox entry ran once");
    cr_expect_eq(ord.dropped, 4);
}

Test(signal, wait_times_out_and_names_are_checked)
{
    uint64_t seen = 9;
    cr_expect_eq(theus_engine_wait_signal(eng, "go", 0, 0, &seen), THEUS_ETIMEDOUT);
    cr_expect_eq(seen, 0);
    cr_expect_eq(theus_engine_wait_signal(eng, "go", 0, 5, &seen), THEUS_ETIMEDOUT);
    char longname[THEUS_NAME_MAX + 2];
    memset(longname, 's', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    cr_expect_eq(theus_engine_wait_signal(eng, longname, 0, 0, NULL), THEUS_EINVAL);
    cr_expect_eq(theus_engine_wait_signal(eng, "", 0, 0, NULL), THEUS_EINVAL);
    cr_expect_eq(theus_engine_signal_count(eng, longname, &seen), THEUS_EINVAL);
    cr_expect_eq(theus_engine_wait_version(eng, "nope", 0, 0, NULL), THEUS_ENOENT);
    cr_expect_eq(theus_engine_run(eng, "emit", NULL), THEUS_OK);
    cr_expect_eq(theus_engine_wait_signal(eng, "go", 0, 0, &seen), THEUS_OK, "already there");
    cr_expect_eq(seen, 1);
}

static char *toolong;

static int long_signal(theus_run *run, void *user)
{
    (void)user;
    return theus_run_signal(run, toolong);
}

Test(signal, a_signal_name_too_long_is_refused_in_the_body)
{
    char name[THEUS_NAME_MAX + 2];
    memset(name, 's', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    toolong = name;
    static const char *const io[] = {"n"};
    theus_process_def d = {.name = "long", .body = long_signal, .inputs = io, .n_inputs = 1,
                           .outputs = io, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    cr_expect_eq(theus_engine_run(eng, "long", NULL), THEUS_EINVAL);
    cr_expect(strstr(theus_state_last_error(st), "longer than") != NULL);
}

Test(signal, waiting_for_a_field_version)
{
    theus_field_info fi;
    theus_state_field_info(st, "x", &fi);
    waiter w = {.field = "x", .after = fi.version, .timeout_ms = UINT32_MAX};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, wait_thread, &w), 0);
    until_waiting(1);
    cr_expect_eq(theus_engine_run(eng, "add", NULL), THEUS_OK, "n is not x: no wake-up condition");
    uint64_t v = 0;
    cr_expect_eq(theus_engine_run(eng, "emit", &v), THEUS_OK);
    pthread_join(t, NULL);
    cr_expect_eq(w.rc, THEUS_OK);
    cr_expect_eq(w.seen, v);
    uint64_t sv = 0;
    cr_expect_eq(theus_engine_wait_version(eng, NULL, v - 1, 0, &sv), THEUS_OK);
    cr_expect_eq(sv, v);
}

Test(signal, destroying_the_engine_wakes_its_waiters)
{
    waiter w[2] = {{.signal = "never", .timeout_ms = UINT32_MAX},
                   {.field = "n", .after = 1000, .timeout_ms = UINT32_MAX}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, wait_thread, &w[i]), 0);
    until_waiting(2);
    theus_engine_destroy(eng);
    eng = NULL;
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(w[i].rc, THEUS_EBUSY);
    }
}

static void *run_adds(void *arg)
{
    int *rc = arg;
    for (int i = 0; i < 8 && *rc == THEUS_OK; i++)
        *rc = theus_engine_run(eng, "add", NULL);
    return NULL;
}

Test(signal, outbox_runs_once_in_commit_order)
{
    pthread_t t[4];
    int rc[4] = {0};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, run_adds, &rc[i]), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(rc[i], THEUS_OK);
    }
    cr_assert_eq(ord.n, 32, "once per commit");
    for (size_t i = 1; i < ord.n; i++)
        cr_expect(ord.v[i] > ord.v[i - 1], "commit order: %llu after %llu",
                  (unsigned long long)ord.v[i], (unsigned long long)ord.v[i - 1]);
    cr_expect_eq(ord.dropped, 0);
    cr_expect_eq(count("n"), 32);
}

static int nested_runs;

static void run_nested(void *arg, uint64_t version)
{
    (void)arg;
    (void)version;
    /* An entry that runs a process itself: its own entry runs after this one returns. */
    if (nested_runs++ == 0)
        cr_expect_eq(theus_engine_run(eng, "add", NULL), THEUS_OK);
}

static int add_and_nest(theus_run *run, void *user)
{
    (void)user;
    int rc = add_n(run, NULL);
    return rc ? rc : theus_run_outbox(run, run_nested, NULL, NULL);
}

Test(signal, an_outbox_entry_may_run_a_process)
{
    static const char *const io[] = {"n"};
    theus_process_def d = {.name = "nest", .body = add_and_nest, .inputs = io, .n_inputs = 1,
                           .outputs = io, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    nested_runs = 0;
    uint64_t v = 0;
    cr_expect_eq(theus_engine_run(eng, "nest", &v), THEUS_OK);
    cr_expect_eq(nested_runs, 1);
    cr_assert_eq(ord.n, 2, "the outer commit's entry, then the nested commit's");
    cr_expect_eq(ord.v[0], v);
    cr_expect_eq(ord.v[1], v + 1);
}

static int pure_outbox(theus_run *run, void *user)
{
    (void)user;
    return theus_run_outbox(run, record, dropped, NULL) == THEUS_EPERM ? THEUS_OK : 1;
}

Test(signal, a_pure_process_queues_nothing)
{
    static const char *const io[] = {"n"};
    theus_process_def d = {.name = "pure", .body = pure_outbox, .inputs = io, .n_inputs = 1,
                           .kind = THEUS_PROCESS_PURE};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    cr_expect_eq(theus_engine_run(eng, "pure", NULL), THEUS_OK);
    cr_expect_eq(ord.n, 0);
    cr_expect_eq(ord.dropped, 0, "refused, so never queued (and never dropped)");
}
