/* Workflows: each control form, failure policies, the max_ops safety trip, recursion
 * through called workflows, and a table of malformed files refused with JSON path, line
 * and column. Rows of issue #11's table: a while loop sees its own writes; conditions are
 * a small expression language (no eval). */
#include "durable_fixture.h"
#include "theus/theus_durable.h"
#include "theus/theus_process.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *schema =
    "{\"fields\": {"
    "\"step\":  {\"dtype\": \"i64\", \"shape\": []},"
    "\"hits\":  {\"dtype\": \"i64\", \"shape\": []},"
    "\"loss\":  {\"dtype\": \"f32\", \"shape\": [1]},"
    "\"W\":     {\"dtype\": \"f32\", \"shape\": [2, 3]},"
    "\"acc\":   {\"dtype\": \"i64\", \"shape\": []},"
    "\"pos\":   {\"dtype\": \"i64\", \"shape\": []}}}";

static theus_state *st;
static theus_engine *eng;
static int fail_left;    /* "flaky" fails this many more times */

static int64_t get(const char *field)
{
    theus_tx *tx = NULL;
    int64_t v = -1;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, field, NULL, &v, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    return v;
}

static int bump(theus_run *run, void *user)
{
    const char *field = user;
    int64_t one = 1;
    return theus_tx_add(theus_run_tx(run), field, NULL, &one, THEUS_MEM_HOST);
}

static int set_loss(theus_run *run, void *user)
{
    (void)user;
    float l = 7.5f;
    return theus_tx_write(theus_run_tx(run), "loss", NULL, &l, THEUS_MEM_HOST);
}

enum { FLAKY = 5 };

static int flaky(theus_run *run, void *user)
{
    (void)user;
    if (fail_left > 0) {
        fail_left--;
        return FLAKY;
    }
    return bump(run, "hits");
}

/* Where a forked child stops to be killed (the kill tests below): in the body of "acc" at
 * that step, before its commit, or in an outbox entry of that run, after its commit. */
typedef struct kill_point {
    int armed;
    int64_t step;
    int after_commit;
    int report_fd, hold_fd;   /* the child writes one byte to report_fd, then blocks */
} kill_point;
static kill_point kp;

static void stop_here(void)
{
    char c = 'k';
    if (write(kp.report_fd, &c, 1) != 1)
        _exit(4);
    if (read(kp.hold_fd, &c, 1) <= 0)   /* the parent's end closed: it is gone */
        _exit(5);
    _exit(6);
}

static void stop_after_commit(void *arg, uint64_t version)
{
    (void)arg;
    (void)version;
    stop_here();
}

/* acc = 2 acc + 1: a read-modify-write, so that running it twice shows. */
static int double_acc(theus_run *run, void *user)
{
    (void)user;
    theus_tx *tx = theus_run_tx(run);
    int64_t acc, step;
    int rc;
    if ((rc = theus_tx_read(tx, "acc", NULL, &acc, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "step", NULL, &step, THEUS_MEM_HOST)))
        return rc;
    acc = 2 * acc + 1;
    if ((rc = theus_tx_write(tx, "acc", NULL, &acc, THEUS_MEM_HOST)))
        return rc;
    if (kp.armed && step == kp.step) {
        if (!kp.after_commit)
            stop_here();
        return theus_run_outbox(run, stop_after_commit, NULL, NULL);
    }
    return THEUS_OK;
}

static int signal_tick(theus_run *run, void *user)
{
    (void)user;
    int rc = bump(run, "hits");
    return rc ? rc : theus_run_signal(run, "tick");
}

static void reg(const char *name, theus_process_fn body, void *user, const char *out)
{
    static const int codes[] = {FLAKY};
    const char *io[] = {out};
    theus_process_def d = {.name = name, .body = body, .user = user, .inputs = io,
                           .n_inputs = 1, .outputs = io, .n_outputs = 1,
                           .status_codes = codes, .n_status_codes = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK, "%s", theus_state_last_error(st));
}

static void register_all(void)
{
    reg("step", bump, "step", "step");
    reg("hit", bump, "hits", "hits");
    reg("set_loss", set_loss, NULL, "loss");
    reg("flaky", flaky, NULL, "hits");
    reg("tick", signal_tick, NULL, "hits");
    static const char *const acc_in[] = {"step"};
    static const char *const acc_out[] = {"acc"};
    theus_process_def d = {.name = "acc", .body = double_acc, .inputs = acc_in, .n_inputs = 1,
                           .outputs = acc_out, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK, "%s", theus_state_last_error(st));
}

static void setup(void)
{
    cr_assert_eq(theus_state_create(schema, NULL, &st), THEUS_OK);
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK);
    register_all();
}

static void teardown(void)
{
    theus_engine_destroy(eng);
    theus_state_destroy(st);
}

TestSuite(workflow, .init = setup, .fini = teardown, .timeout = 60);

static theus_workflow *load(const char *json)
{
    theus_workflow *wf = NULL;
    cr_assert_eq(theus_workflow_load(eng, json, &wf), THEUS_OK, "%s", theus_state_last_error(st));
    return wf;
}

/* Theus 3.0.22's while never saw its own writes and ran into its 10,000-op trip. */
Test(workflow, while_loop_sees_its_own_writes)
{
    theus_workflow *wf = load("{\"name\": \"count\", \"max_ops\": 100, \"steps\": ["
                              "{\"while\": {\"lt\": [\"step\", 10]}, \"do\": [{\"run\": \"step\"}]}]}");
    theus_workflow_report rep;
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(get("step"), 10);
    cr_expect_eq(rep.runs, 10);
    cr_expect_eq(rep.ops, 1 + 10 + 10, "the while step, 10 runs, 10 loop turns");
    theus_workflow_free(wf);
}

Test(workflow, if_else_and_logic)
{
    theus_workflow *wf = load(
        "{\"name\": \"branches\", \"steps\": ["
        " {\"run\": \"set_loss\"},"
        " {\"if\": {\"and\": [{\"ge\": [\"loss[0]\", 5.0]}, {\"not\": {\"eq\": [\"step\", 1]}}]},"
        "  \"then\": [{\"run\": \"step\"}], \"else\": [{\"run\": \"hit\"}]},"
        " {\"if\": {\"or\": [{\"gt\": [\"W[1][2]\", 0]}, {\"le\": [\"step\", 0]}]},"
        "  \"then\": [{\"run\": \"step\"}], \"else\": [{\"run\": \"hit\"}]},"
        " {\"if\": false, \"then\": [{\"run\": \"step\"}]},"
        " {\"if\": {\"ne\": [\"step\", \"hits\"]}, \"then\": [{\"run\": \"hit\"}]}]}");
    cr_expect_eq(theus_workflow_run(wf, NULL), THEUS_OK, "%s", theus_state_last_error(st));
    /* then (step=1), else (hits=1), nothing, step == hits: nothing */
    cr_expect_eq(get("step"), 1);
    cr_expect_eq(get("hits"), 1);
    theus_workflow_free(wf);
}

Test(workflow, calls_nested_workflows_and_refuses_recursion)
{
    theus_workflow *inner = load("{\"name\": \"inner\", \"steps\": [{\"run\": \"hit\"}]}");
    theus_workflow *outer = load("{\"name\": \"outer\", \"steps\": [{\"call\": \"inner\"}, "
                                 "{\"call\": \"inner\"}]}");
    cr_expect_eq(theus_workflow_run(outer, NULL), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(get("hits"), 2);

    theus_workflow *a = load("{\"name\": \"a\", \"steps\": [{\"run\": \"hit\"}, {\"call\": \"b\"}]}");
    theus_workflow_report rep;
    cr_expect_eq(theus_workflow_run(a, &rep), THEUS_ENOENT, "b is not loaded yet");
    theus_workflow *b = load("{\"name\": \"b\", \"steps\": [{\"if\": true, \"then\": "
                             "[{\"call\": \"a\"}]}]}");
    cr_expect_eq(theus_workflow_run(a, &rep), THEUS_EINVAL);
    cr_expect(strstr(theus_state_last_error(st), "recursion") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect(strstr(theus_state_last_error(st), "'a' -> 'b' -> 'a'") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect_eq(get("hits"), 2, "refused before anything ran");
    theus_workflow *dup = (theus_workflow *)&dup;
    cr_expect_eq(theus_workflow_load(eng, "{\"name\": \"a\", \"steps\": []}", &dup), THEUS_EINVAL);
    cr_expect_null(dup);
    theus_workflow_free(b);
    theus_workflow_free(a);
    theus_workflow_free(outer);
    theus_workflow_free(inner);
}

Test(workflow, max_ops_safety_trip)
{
    theus_workflow *wf = load("{\"name\": \"forever\", \"max_ops\": 50, \"steps\": ["
                              "{\"while\": true, \"do\": [{\"run\": \"hit\"}]}]}");
    theus_workflow_report rep;
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_EBUSY);
    cr_expect(strstr(theus_state_last_error(st), "max_ops (50)") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect_eq(rep.ops, 51);
    cr_expect_str_eq(rep.where, "$.steps[0]", "the 51st op is the 25th loop turn");
    cr_expect_eq(get("hits"), 25);
    theus_workflow_free(wf);
}

Test(workflow, on_error_stop_continue_retry)
{
    theus_workflow *stop = load("{\"name\": \"stop\", \"steps\": [{\"run\": \"flaky\"}, "
                                "{\"run\": \"step\"}]}");
    theus_workflow_report rep;
    fail_left = 1;
    cr_expect_eq(theus_workflow_run(stop, &rep), FLAKY);
    cr_expect_str_eq(rep.where, "$.steps[0]");
    cr_expect_eq(get("step"), 0, "stop: the next step did not run");

    theus_workflow *cont = load("{\"name\": \"cont\", \"steps\": [{\"run\": \"flaky\", "
                                "\"on_error\": \"continue\"}, {\"run\": \"step\"}]}");
    fail_left = 1;
    cr_expect_eq(theus_workflow_run(cont, &rep), THEUS_OK);
    cr_expect_eq(rep.failures, 1);
    cr_expect_eq(get("step"), 1);

    theus_workflow *retry = load("{\"name\": \"retry\", \"steps\": [{\"run\": \"flaky\", "
                                 "\"on_error\": \"retry\", \"retries\": 3}]}");
    fail_left = 3;
    cr_expect_eq(theus_workflow_run(retry, &rep), THEUS_OK);
    cr_expect_eq(rep.runs, 4);
    cr_expect_eq(get("hits"), 1);
    fail_left = 4;
    cr_expect_eq(theus_workflow_run(retry, &rep), FLAKY, "retries spent");
    cr_expect_eq(get("hits"), 1);
    theus_workflow_free(retry);
    theus_workflow_free(cont);
    theus_workflow_free(stop);
}

Test(workflow, submit_and_await_a_signal)
{
    theus_workflow *wf = load("{\"name\": \"fanout\", \"steps\": ["
                              "{\"submit\": \"tick\"}, {\"submit\": \"tick\"}, {\"submit\": \"tick\"},"
                              "{\"await\": \"tick\", \"count\": 3, \"timeout_ms\": 60000},"
                              "{\"if\": {\"eq\": [\"hits\", 3]}, \"then\": [{\"run\": \"step\"}]}]}");
    cr_expect_eq(theus_workflow_run(wf, NULL), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(get("step"), 1, "after the await every tick had committed");
    uint64_t n = 0;
    cr_expect_eq(theus_engine_signal_count(eng, "tick", &n), THEUS_OK);
    cr_expect_eq(n, 3);
    theus_workflow_free(wf);

    /* Nobody ticks: the await ends at its timeout. */
    wf = load("{\"name\": \"lonely\", \"steps\": [{\"await\": \"tick\", \"timeout_ms\": 1}]}");
    cr_expect_eq(theus_workflow_run(wf, NULL), THEUS_ETIMEDOUT);
    theus_workflow_free(wf);
}

Test(workflow, load_from_file)
{
    char path[] = "/tmp/theus-wf-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    const char *text = "{\"name\": \"f\", \"steps\": [{\"run\": \"hit\"}]}";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    theus_workflow *wf = NULL;
    int rc = theus_workflow_load_file(eng, path, &wf);
    unlink(path);
    cr_assert_eq(rc, THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_str_eq(theus_workflow_name(wf), "f");
    cr_expect_eq(theus_workflow_run(wf, NULL), THEUS_OK);
    theus_workflow_free(wf);
    cr_expect_eq(theus_workflow_load_file(eng, "/nonexistent/wf.json", &wf), THEUS_ENOENT);
}

/* ---- malformed files --------------------------------------------------------------------- */

typedef struct bad_case {
    const char *json;
    const char *message;   /* the whole refusal */
} bad_case;

static const bad_case bad[] = {
    {"{\"name\": \"x\", \"steps\": [", "workflow: $: invalid JSON: ']' expected near end of file (line 1, column 24)"},
    {"[]", "workflow: $: a workflow is an object, got an array (line 1, column 1)"},
    {"{\"steps\": []}", "workflow: $: missing required key \"name\" (line 1, column 1)"},
    {"{\"name\": \"x\"}", "workflow: $: missing required key \"steps\" (line 1, column 1)"},
    {"{\"name\": \"x\", \"steps\": [], \"colour\": 1}",
     "workflow: $.colour: unknown key (allowed: name, max_ops, position, steps, description) (line 1, column 28)"},
    {"{\"name\": \"x\", \"max_ops\": 0, \"steps\": []}",
     "workflow: $.max_ops: expected an integer in [1, 9007199254740992] (line 1, column 26)"},
    {"{\"name\": \"x\", \"steps\": {}}",
     "workflow: $.steps: expected an array of steps, got an object (line 1, column 24)"},
    {"{\"name\": \"x\", \"steps\": [{\"run\": \"nope\"}]}",
     "workflow: $.steps[0].run: no process 'nope' is registered in the engine (line 1, column 33)"},
    {"{\"name\": \"x\", \"steps\": [{\"run\": \"hit\", \"if\": true}]}",
     "workflow: $.steps[0]: a step has one of run, if, while, call, submit, await; this one has \"run\" and \"if\" (line 1, column 25)"},
    {"{\"name\": \"x\", \"steps\": [{\"jump\": 3}]}",
     "workflow: $.steps[0]: a step needs one of run, if, while, call, submit, await (line 1, column 25)"},
    {"{\"name\": \"x\", \"steps\": [{\"run\": \"hit\", \"on_error\": \"ignore\"}]}",
     "workflow: $.steps[0].on_error: on_error is \"stop\", \"continue\" or \"retry\" (line 1, column 52)"},
    {"{\"name\": \"x\", \"steps\": [{\"run\": \"hit\", \"retries\": 2}]}",
     "workflow: $.steps[0].retries: retries needs \"on_error\": \"retry\" (line 1, column 40)"},
    {"{\"name\": \"x\", \"steps\": [{\"if\": {\"lt\": [\"step\"]}, \"then\": []}]}",
     "workflow: $.steps[0].if.lt: \"lt\" takes an array of two operands (line 1, column 39)"},
    {"{\"name\": \"x\", \"steps\": [{\"if\": {\"lt\": [\"W\", 1]}, \"then\": []}]}",
     "workflow: $.steps[0].if.lt[0]: field 'W' is not a scalar (6 elements): name an element, e.g. \"W[0]\" (line 1, column 40)"},
    {"{\"name\": \"x\", \"steps\": [{\"if\": {\"lt\": [\"loss[1]\", 1]}, \"then\": []}]}",
     "workflow: $.steps[0].if.lt[0]: \"loss[1]\": index 1 is out of range for dimension 0 of 'loss' (size 1) (line 1, column 40)"},
    {"{\"name\": \"x\", \"steps\": [{\"if\": {\"lt\": [\"W[0]\", 1]}, \"then\": []}]}",
     "workflow: $.steps[0].if.lt[0]: \"W[0]\": field 'W' has 2 dimensions; give one index each (line 1, column 40)"},
    {"{\"name\": \"x\", \"steps\": [{\"if\": {\"lt\": [\"nope\", 1]}, \"then\": []}]}",
     "workflow: $.steps[0].if.lt[0]: no field 'nope' in the state (line 1, column 40)"},
    {"{\"name\": \"x\", \"steps\": [{\"while\": {\"eval\": \"step < 3\"}, \"do\": []}]}",
     "workflow: $.steps[0].while.eval: unknown operator \"eval\" (expected eq, ne, lt, le, gt, ge, and, or, not) (line 1, column 36)"},
    {"{\"name\": \"x\", \"steps\": [{\"while\": \"step < 3\", \"do\": []}]}",
     "workflow: $.steps[0].while: a condition is an object with one operator (eq ne lt le gt ge and or not), or true or false; got a string (line 1, column 35)"},
    {"{\"name\": \"x\", \"steps\": [{\"while\": true}]}",
     "workflow: $.steps[0]: missing required key \"do\" (line 1, column 25)"},
    {"{\"name\": \"x\", \"steps\": [{\"if\": {\"and\": []}, \"then\": []}]}",
     "workflow: $.steps[0].if.and: \"and\" takes a non-empty array of conditions (line 1, column 40)"},
    {"{\"name\": \"x\", \"steps\": [{\"if\": {\"eq\": [\"step\", null]}, \"then\": []}]}",
     "workflow: $.steps[0].if.eq[1]: an operand is a number, true, false or a field (\"step\", \"loss[0]\"), got null (line 1, column 48)"},
    {"{\"name\": \"x\", \"steps\": [{\"await\": \"tick\", \"count\": 0}]}",
     "workflow: $.steps[0].count: expected an integer in [1, 1000000] (line 1, column 52)"},
    {"{\"name\": \"x\",\n \"steps\": [\n  {\"while\": true, \"do\": [\n    {\"run\": \"hit\", \"on_error\": 3}]}]}",
     "workflow: $.steps[0].do[0].on_error: on_error is \"stop\", \"continue\" or \"retry\" (line 4, column 32)"},
};

Test(workflow, malformed_files_are_refused_with_path_line_and_column)
{
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        theus_workflow *wf = (theus_workflow *)&wf;
        int rc = theus_workflow_load(eng, bad[i].json, &wf);
        cr_expect_eq(rc, THEUS_ESCHEMA, "case %zu: %s", i, theus_strerror(rc));
        cr_expect_null(wf, "case %zu", i);
        cr_expect_str_eq(theus_state_last_error(st), bad[i].message, "case %zu: got %s", i,
                         theus_state_last_error(st));
    }
}

Test(workflow, nesting_too_deep_is_refused)
{
    char json[4096];
    size_t len = (size_t)snprintf(json, sizeof json, "{\"name\": \"deep\", \"steps\": [");
    for (int i = 0; i < 40; i++)
        len += (size_t)snprintf(json + len, sizeof json - len, "{\"if\": true, \"then\": [");
    for (int i = 0; i < 40; i++)
        len += (size_t)snprintf(json + len, sizeof json - len, "]}");
    snprintf(json + len, sizeof json - len, "]}");
    theus_workflow *wf = NULL;
    cr_expect_eq(theus_workflow_load(eng, json, &wf), THEUS_ESCHEMA);
    cr_expect(strstr(theus_state_last_error(st), "nested more than") != NULL, "%s",
              theus_state_last_error(st));
}

/* ---- the position in the state ---------------------------------------------------------- */

static const char *resumable =
    "{\"name\": \"resumable\", \"position\": \"pos\", \"steps\": ["
    "{\"run\": \"hit\"}, {\"run\": \"flaky\"}, {\"run\": \"step\"}]}";

Test(workflow, resumes_at_the_step_it_stopped)
{
    theus_workflow *wf = load(resumable);
    theus_workflow_report rep;
    fail_left = 1;
    cr_expect_eq(theus_workflow_run(wf, &rep), FLAKY);
    cr_expect_eq(get("pos"), 1, "the failed step is where it resumes");
    cr_expect_eq(get("hits"), 1);
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_OK);
    cr_expect_eq(rep.resumed_at, 1);
    cr_expect_eq(get("hits"), 2, "the first step did not run again");
    cr_expect_eq(get("step"), 1);
    cr_expect_eq(get("pos"), 0, "a finished run starts over next time");
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_OK);
    cr_expect_eq(rep.resumed_at, 0);
    cr_expect_eq(get("hits"), 4);
    theus_workflow_free(wf);
}

/* A checkpoint (theus/theus_durable.h) taken after a failed step, loaded into a new state
 * with a new engine: the workflow goes on where it stopped. */
Test(workflow, a_checkpointed_state_resumes_its_workflow)
{
    theus_workflow *wf = load(resumable);
    fail_left = 1;
    cr_expect_eq(theus_workflow_run(wf, NULL), FLAKY);
    theus_workflow_free(wf);
    char dir[] = "/tmp/theus-wf-ckpt-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/state.safetensors", dir);
    int rc = theus_state_save_safetensors(st, path);
    teardown();
    setup();
    if (rc == THEUS_OK)
        rc = theus_state_load_safetensors(st, path);
    unlink(path);
    rmdir(dir);
    cr_assert_eq(rc, THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(get("pos"), 1);
    cr_expect_eq(get("hits"), 1);
    wf = load(resumable);
    theus_workflow_report rep;
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(rep.resumed_at, 1);
    cr_expect_eq(get("hits"), 2);
    cr_expect_eq(get("step"), 1);
    theus_workflow_free(wf);
}

Test(workflow, the_position_field_is_checked)
{
    theus_workflow *wf = NULL;
    cr_expect_eq(theus_workflow_load(eng, "{\"name\": \"p\", \"position\": \"W\", \"steps\": []}",
                                     &wf), THEUS_ESCHEMA);
    cr_expect_str_eq(theus_state_last_error(st),
                     "workflow: $.position: the position field 'W' must be an i32, i64, u32 or "
                     "u64 scalar outside the const and signal zones (line 1, column 27)");
    cr_expect_eq(theus_workflow_load(eng, "{\"name\": \"p\", \"position\": \"nope\", \"steps\": []}",
                                     &wf), THEUS_ESCHEMA);
    cr_expect(strstr(theus_state_last_error(st), "no field 'nope'") != NULL);
}

/* A failure inside a loop's body, inside an if's branch: the next run resumes at that very
 * step (ids in pre-order: hit 0, while 1, if 2, acc 3, flaky 4, hit 5, step 6), not at the
 * top of the loop, and ends where one uninterrupted run ends. */
static const char *nested =
    "{\"name\": \"nested\", \"position\": \"pos\", \"steps\": ["
    "{\"run\": \"hit\"},"
    "{\"while\": {\"lt\": [\"step\", 3]}, \"do\": ["
    " {\"if\": {\"ge\": [\"step\", 1]}, \"then\": [{\"run\": \"acc\"}, {\"run\": \"flaky\"}],"
    "  \"else\": [{\"run\": \"hit\"}]},"
    " {\"run\": \"step\"}]}]}";

Test(workflow, resumes_inside_nested_blocks_where_it_stopped)
{
    theus_workflow *wf = load(nested);
    theus_workflow_report rep;
    fail_left = 0;
    cr_assert_eq(theus_workflow_run(wf, &rep), THEUS_OK, "%s", theus_state_last_error(st));
    const int64_t hits = get("hits"), acc = get("acc"), step = get("step");
    cr_expect_eq(hits, 4);
    cr_expect_eq(acc, 3);
    cr_expect_eq(step, 3);
    cr_expect_eq(get("pos"), 0);
    theus_workflow_free(wf);
    teardown();
    setup();

    wf = load(nested);
    fail_left = 1;   /* the first flaky run fails: at step 1, inside the then branch */
    cr_expect_eq(theus_workflow_run(wf, &rep), FLAKY);
    cr_expect_str_eq(rep.where, "$.steps[1].do[0].then[1]");
    cr_expect_eq(get("pos"), 4, "the failed step is where it resumes");
    cr_expect_eq(get("acc"), 1);
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(rep.resumed_at, 4);
    cr_expect_eq(get("hits"), hits);
    cr_expect_eq(get("acc"), acc, "acc did not run again on resume");
    cr_expect_eq(get("step"), step);
    cr_expect_eq(get("pos"), 0);
    theus_workflow_free(wf);
}

/* The position is committed in the run step's own transaction: one commit per step. */
Test(workflow, the_position_moves_with_the_steps_own_commit)
{
    theus_workflow *wf = load(resumable);
    uint64_t v0 = theus_state_version(st);
    cr_assert_eq(theus_workflow_run(wf, NULL), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(theus_state_version(st), v0 + 3, "three steps, three commits");
    cr_expect_eq(get("pos"), 0);
    theus_workflow_free(wf);
}

static void open_durable(const char *dir)
{
    cr_assert_eq(theus_state_open_durable(dir, schema, NULL, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK, "%s", theus_state_last_error(st));
    register_all();
}

static void durable_fini(void)
{
    teardown();
    dfx_cleanup();
}

/* A durable state (theus_state_open_durable: log and recovery) closed after a failed step
 * and opened again: the recovered state, with a new engine, resumes the workflow. */
Test(workflow_durable, a_recovered_durable_state_resumes_its_workflow, .fini = durable_fini,
     .timeout = 60)
{
    cr_assert_eq(dfx_make(NULL, "wf-durable", 0), 0);
    const char *dir = dfx_dir;
    open_durable(dir);
    theus_workflow *wf = load(resumable);
    fail_left = 1;
    cr_expect_eq(theus_workflow_run(wf, NULL), FLAKY);
    theus_workflow_free(wf);
    cr_expect_eq(get("pos"), 1);
    teardown();
    st = NULL;
    eng = NULL;
    open_durable(dir);
    cr_expect_eq(get("pos"), 1, "recovered from the log");
    cr_expect_eq(get("hits"), 1);
    wf = load(resumable);
    theus_workflow_report rep;
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(rep.resumed_at, 1);
    cr_expect_eq(get("hits"), 2);
    cr_expect_eq(get("step"), 1);
    theus_workflow_free(wf);
}

/* ---- killed mid-workflow ---------------------------------------------------------------- */

/* ids: hit 0, while 1, if 2, acc 3, hit 4, acc 5, step 6. */
static const char *loop_wf =
    "{\"name\": \"loop\", \"position\": \"pos\", \"steps\": ["
    "{\"run\": \"hit\"},"
    "{\"while\": {\"lt\": [\"step\", 4]}, \"do\": ["
    " {\"if\": {\"ge\": [\"step\", 2]}, \"then\": [{\"run\": \"acc\"}], \"else\": [{\"run\": \"hit\"}]},"
    " {\"run\": \"acc\"},"
    " {\"run\": \"step\"}]}]}";

typedef struct kill_case {
    int64_t step;         /* the step at which the child stops in "acc" */
    int after_commit;     /* 0: inside the body, before the commit; 1: after it */
    uint64_t resumed_at;  /* where the recovered run resumes */
} kill_case;

static const kill_case kill_cases[] = {
    {0, 1, 6},   /* "acc" of the first turn committed: resume at "step" */
    {1, 0, 5},   /* killed inside "acc" of the second turn: it runs (once) on resume */
    {2, 1, 5},   /* the first "acc" of the third turn (then branch) committed */
    {3, 0, 1},   /* killed inside "acc" of the last turn: resume at the while, its condition */
};

/* In the child: open the durable state, run the workflow until the kill point stops it.
 * Exits non-zero (never returns) when anything fails first. */
static void child_run(const char *dir, int report_fd, int hold_fd, const kill_case *k)
{
    kp = (kill_point){.armed = 1, .step = k->step, .after_commit = k->after_commit,
                      .report_fd = report_fd, .hold_fd = hold_fd};
    if (theus_state_open_durable(dir, schema, NULL, NULL, &st) != THEUS_OK ||
        theus_engine_create(st, NULL, &eng) != THEUS_OK)
        _exit(2);
    register_all();
    theus_workflow *wf = NULL;
    if (theus_workflow_load(eng, loop_wf, &wf) != THEUS_OK)
        _exit(2);
    theus_workflow_run(wf, NULL);
    _exit(3);   /* it ran to the end: the kill point was never reached */
}

/* A forked child runs the workflow on a durable state and is SIGKILLed at the point it
 * reports (inside a body, or right after a commit, turn by turn); the state recovered from
 * the log resumes the workflow at the step after the last one it holds, and ends where one
 * uninterrupted run ends: no committed step ran twice, none was lost. */
Test(workflow_durable, killed_mid_workflow_resumes_and_ends_like_one_run, .fini = durable_fini,
     .timeout = 60)
{
    /* The uninterrupted run, on a private state. */
    setup();
    theus_workflow *wf = load(loop_wf);
    cr_assert_eq(theus_workflow_run(wf, NULL), THEUS_OK, "%s", theus_state_last_error(st));
    const int64_t want_hits = get("hits"), want_acc = get("acc"), want_step = get("step");
    cr_assert_eq(want_step, 4);
    theus_workflow_free(wf);
    teardown();
    st = NULL;
    eng = NULL;

    cr_assert_eq(dfx_make(NULL, "wf-kill", 0), 0);
    for (size_t i = 0; i < sizeof kill_cases / sizeof kill_cases[0]; i++) {
        const kill_case *k = &kill_cases[i];
        char dir[300];
        snprintf(dir, sizeof dir, "%s/state%zu", dfx_root, i);
        int report[2], hold[2];
        cr_assert_eq(pipe(report), 0);
        cr_assert_eq(pipe(hold), 0);
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            close(report[0]);
            close(hold[1]);
            child_run(dir, report[1], hold[0], k);
        }
        close(report[1]);
        close(hold[0]);
        char c = 0;
        ssize_t got = read(report[0], &c, 1);   /* the child is at its kill point */
        kill(pid, SIGKILL);
        int status = 0;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        close(report[0]);
        close(hold[1]);
        cr_assert_eq(got, 1, "case %zu: the child exited (status %d) before its kill point",
                     i, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "case %zu", i);

        open_durable(dir);
        wf = load(loop_wf);
        theus_workflow_report rep;
        cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_OK, "case %zu: %s", i,
                     theus_state_last_error(st));
        cr_expect_eq(rep.resumed_at, k->resumed_at, "case %zu: resumed at %llu", i,
                     (unsigned long long)rep.resumed_at);
        cr_expect_eq(get("hits"), want_hits, "case %zu", i);
        cr_expect_eq(get("acc"), want_acc, "case %zu: acc %lld, one run gives %lld", i,
                     (long long)get("acc"), (long long)want_acc);
        cr_expect_eq(get("step"), want_step, "case %zu", i);
        cr_expect_eq(get("pos"), 0, "case %zu", i);
        theus_workflow_free(wf);
        teardown();
        st = NULL;
        eng = NULL;
    }
}
