/* The audit: rules in the schema (refusals located like schema refusals), levels S, A, B
 * (threshold, reset) and C, exactly one evaluation per commit on the values the commit
 * would write, the bounded ring of records, counters per process and field. Rows of issue
 * #11's table: the audit runs once per commit (Theus counted one violation twice) and sees
 * the values the commit writes (Theus never saw returned values). Device fields: this
 * suite runs on the CPU path (a device field without a GPU lives in host memory). */
#include "theus/theus_process.h"
#include "schema.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *schema =
    "{\"fields\": {"
    "\"s\":  {\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"finite\", \"level\": \"S\"}]},"
    "\"a\":  {\"dtype\": \"f32\", \"shape\": [2], \"placement\": \"device\","
    "         \"audit\": [{\"rule\": \"max\", \"value\": 10, \"level\": \"A\"}]},"
    "\"b\":  {\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"max_abs\", \"value\": 1,"
    "         \"level\": \"B\", \"threshold\": 2}]},"
    "\"bn\": {\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"min\", \"value\": 0,"
    "         \"level\": \"B\", \"threshold\": 1, \"reset\": false}]},"
    "\"c\":  {\"dtype\": \"i32\", \"shape\": [3], \"audit\": [{\"rule\": \"max_change\", \"value\": 3,"
    "         \"level\": \"C\"}, {\"rule\": \"min\", \"value\": -100, \"level\": \"C\"}]},"
    "\"free\": {\"dtype\": \"f32\", \"shape\": []}}}";

static theus_state *st;
static theus_engine *eng;

/* What the "put" process stages: up to two deltas. */
typedef struct put {
    const char *field;
    int add[2];
    double v[2];
    int n;
    int64_t at;     /* element, -1: whole field (scalars) */
} put;
static put plan;

static int stage(theus_tx *tx, int k)
{
    theus_field_info fi;
    theus_state_field_info(st, plan.field, &fi);
    unsigned char buf[64];
    size_t n = plan.at >= 0 ? 1 : (fi.ndim ? (size_t)fi.shape[0] : 1);
    for (size_t i = 0; i < n; i++) {
        if (fi.dtype == THEUS_DTYPE_F32)
            ((float *)buf)[i] = (float)plan.v[k];
        else
            ((int32_t *)buf)[i] = (int32_t)plan.v[k];
    }
    theus_region r = {.ndim = 1, .start = {plan.at}, .stop = {plan.at + 1}};
    const theus_region *rp = plan.at >= 0 ? &r : NULL;
    return plan.add[k] ? theus_tx_add(tx, plan.field, rp, buf, THEUS_MEM_HOST)
                       : theus_tx_write(tx, plan.field, rp, buf, THEUS_MEM_HOST);
}

static int put_body(theus_run *run, void *user)
{
    (void)user;
    int rc = THEUS_OK;
    for (int k = 0; k < plan.n && rc == THEUS_OK; k++)
        rc = stage(theus_run_tx(run), k);
    return rc;
}

static void setup_ring(uint32_t ring)
{
    cr_assert_eq(theus_state_create(schema, NULL, &st), THEUS_OK, "%s", theus_last_error_message());
    theus_engine_options o = THEUS_ENGINE_OPTIONS_INIT;
    o.audit_ring = ring;
    cr_assert_eq(theus_engine_create(st, &o, &eng), THEUS_OK);
    static const char *const all[] = {"*"};
    theus_process_def d = {.name = "put", .body = put_body, .inputs = all, .n_inputs = 1,
                           .outputs = all, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK, "%s", theus_state_last_error(st));
}

static void setup(void)
{
    setup_ring(0);
}

static void teardown(void)
{
    theus_engine_destroy(eng);
    theus_state_destroy(st);
}

static int put1(const char *field, double v)
{
    plan = (put){.field = field, .v = {v}, .n = 1, .at = -1};
    return theus_engine_run(eng, "put", NULL);
}

static double get(const char *field, int64_t at)
{
    theus_field_info fi;
    theus_state_field_info(st, field, &fi);
    theus_tx *tx = NULL;
    unsigned char buf[16];
    theus_region r = {.ndim = fi.ndim, .start = {at}, .stop = {at + 1}};
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, field, fi.ndim ? &r : NULL, buf, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    return fi.dtype == THEUS_DTYPE_F32 ? (double)*(float *)buf : (double)*(int32_t *)buf;
}

static size_t records(theus_audit_record *out, size_t cap)
{
    size_t n = 0;
    cr_assert_eq(theus_engine_audit_records(eng, 0, out, cap, &n), THEUS_OK);
    return n;
}

TestSuite(audit, .init = setup, .fini = teardown, .timeout = 60);

Test(audit, level_a_refuses_and_records_exactly_once)
{
    plan = (put){.field = "a", .v = {11.0}, .n = 1, .at = -1};
    uint64_t v0 = theus_state_version(st);
    cr_expect_eq(theus_engine_run(eng, "put", NULL), THEUS_ESCHEMA);
    cr_expect(strstr(theus_state_last_error(st), "rule max 10 (level A)") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect_eq(theus_state_version(st), v0, "refused: state unchanged");
    theus_audit_record r[8];
    cr_assert_eq(records(r, 8), 1, "two bad elements, one rule, one commit: one record");
    cr_expect_str_eq(r[0].field, "a");
    cr_expect_str_eq(r[0].process, "put");
    cr_expect_eq(r[0].rule, THEUS_AUDIT_MAX);
    cr_expect_eq(r[0].level, 'A');
    cr_expect_eq(r[0].refused, 1);
    cr_expect_eq(r[0].index, 0);
    cr_expect_eq(r[0].value, 11.0);
    cr_expect_eq(r[0].version, v0 + 1);
    uint64_t n = 0;
    cr_expect_eq(theus_engine_audit_count(eng, "put", "a", &n), THEUS_OK);
    cr_expect_eq(n, 1);
    cr_expect_eq(theus_engine_audit_count(eng, NULL, NULL, &n), THEUS_OK);
    cr_expect_eq(n, 1);
    theus_process_stats ps;
    theus_engine_process_stats(eng, "put", &ps);
    cr_expect_eq(ps.audit, 1);
    cr_expect_eq(theus_engine_stopped(eng), 0, "level A does not stop the engine");
    cr_expect_eq(put1("a", 9.0), THEUS_OK);
}

/* Theus's output audit never saw the values a commit returns; this one checks what the
 * commit will write: committed bytes plus the batch's ADDs, in order. */
Test(audit, sees_the_values_the_commit_writes)
{
    cr_assert_eq(put1("a", 8.0), THEUS_OK);
    plan = (put){.field = "a", .add = {1}, .v = {3.0}, .n = 1, .at = 1};
    cr_expect_eq(theus_engine_run(eng, "put", NULL), THEUS_ESCHEMA, "8 + 3 = 11 > 10");
    theus_audit_record r[4];
    cr_assert_eq(records(r, 4), 1);
    cr_expect_eq(r[0].index, 1);
    cr_expect_eq(r[0].value, 11.0);
    /* A bad staged value that a later ADD of the same commit repairs is not a violation. */
    plan = (put){.field = "a", .add = {0, 1}, .v = {20.0, -15.0}, .n = 2, .at = -1};
    cr_expect_eq(theus_engine_run(eng, "put", NULL), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(get("a", 0), 5.0);
    cr_expect_eq(records(r, 4), 1);
}

Test(audit, two_bad_deltas_in_one_commit_count_once)
{
    plan = (put){.field = "c", .add = {0, 0}, .v = {-200, -300}, .n = 2, .at = -1};
    cr_expect_eq(theus_engine_run(eng, "put", NULL), THEUS_OK, "level C only records");
    theus_audit_record r[8];
    size_t n = records(r, 8);
    cr_expect_eq(n, 2, "max_change and min, once each");
    uint64_t cnt = 0;
    cr_expect_eq(theus_engine_audit_count(eng, "put", "c", &cnt), THEUS_OK);
    cr_expect_eq(cnt, 2);
    cr_expect_eq(get("c", 0), -300.0);
    for (size_t i = 0; i < n; i++)
        cr_expect_eq(r[i].refused, 0);
}

Test(audit, level_s_refuses_and_stops_the_engine_and_its_workflows)
{
    cr_expect_eq(put1("s", NAN), THEUS_ESCHEMA);
    cr_expect(strstr(theus_state_last_error(st), "the engine is stopped") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect_eq(theus_engine_stopped(eng), 1);
    cr_expect_eq(put1("free", 1.0), THEUS_EBUSY, "a stopped engine runs nothing");
    theus_workflow *wf = NULL;
    cr_assert_eq(theus_workflow_load(eng, "{\"name\": \"w\", \"steps\": [{\"run\": \"put\"}]}", &wf),
                 THEUS_OK);
    theus_workflow_report rep;
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_EBUSY);
    cr_expect_eq(rep.runs, 0);
    theus_engine_resume(eng);
    cr_expect_eq(theus_engine_stopped(eng), 0);
    cr_expect_eq(theus_workflow_run(wf, &rep), THEUS_OK);   /* plan still puts "free" */
    theus_workflow_free(wf);
    cr_expect_eq(put1("s", 1.0), THEUS_OK);
}

Test(audit, level_b_counts_then_refuses_and_resets_on_a_clean_commit)
{
    cr_expect_eq(put1("b", 2.0), THEUS_OK, "violation 1 of threshold 2: accepted");
    cr_expect_eq(put1("b", 3.0), THEUS_OK, "violation 2: accepted");
    cr_expect_eq(put1("b", 4.0), THEUS_ESCHEMA, "violation 3 passes the threshold");
    cr_expect(strstr(theus_state_last_error(st), "violation 3, threshold 2") != NULL, "%s",
              theus_state_last_error(st));
    cr_expect_eq(get("b", 0), 3.0);
    theus_audit_record r[8];
    cr_assert_eq(records(r, 8), 3);
    cr_expect_eq(r[0].count, 1);
    cr_expect_eq(r[1].count, 2);
    cr_expect_eq(r[2].count, 3);
    cr_expect_eq(r[2].refused, 1);
    cr_expect_eq(put1("b", 0.5), THEUS_OK, "a clean commit resets the count");
    cr_expect_eq(put1("b", 2.0), THEUS_OK, "violation 1 again");
    cr_assert_eq(records(r, 8), 4);
    cr_expect_eq(r[3].count, 1);
}

Test(audit, level_b_without_reset_keeps_counting)
{
    cr_expect_eq(put1("bn", -1.0), THEUS_OK, "violation 1 of threshold 1");
    cr_expect_eq(put1("bn", 1.0), THEUS_OK, "clean, but reset is false");
    cr_expect_eq(put1("bn", -1.0), THEUS_ESCHEMA, "violation 2 passes the threshold");
    cr_expect_eq(get("bn", 0), 1.0);
}

Test(audit, level_c_records_only_and_rates_compare_with_the_committed_value)
{
    plan = (put){.field = "c", .v = {2}, .n = 1, .at = 1};
    cr_expect_eq(theus_engine_run(eng, "put", NULL), THEUS_OK);
    theus_audit_record r[4];
    cr_expect_eq(records(r, 4), 0, "0 -> 2 is within max_change 3");
    plan.v[0] = 6;
    cr_expect_eq(theus_engine_run(eng, "put", NULL), THEUS_OK, "level C never refuses");
    cr_assert_eq(records(r, 4), 1, "2 -> 6 changes by 4");
    cr_expect_eq(r[0].rule, THEUS_AUDIT_MAX_CHANGE);
    cr_expect_eq(r[0].index, 1);
    cr_expect_eq(r[0].value, 6.0);
    cr_expect_eq(get("c", 1), 6.0);
}

Test(audit, commits_outside_the_engine_are_audited_too)
{
    theus_tx *tx = NULL;
    float big = 50.0f;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    theus_region r0 = {.ndim = 1, .start = {0}, .stop = {1}};
    cr_assert_eq(theus_tx_write(tx, "a", &r0, &big, THEUS_MEM_HOST), THEUS_OK);
    cr_expect_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);
    theus_audit_record r[2];
    cr_assert_eq(records(r, 2), 1);
    cr_expect_str_eq(r[0].process, "");
    uint64_t n = 0;
    cr_expect_eq(theus_engine_audit_count(eng, "", "a", &n), THEUS_OK);
    cr_expect_eq(n, 1);
    cr_expect_eq(theus_engine_audit_count(eng, "put", NULL, &n), THEUS_OK);
    cr_expect_eq(n, 0);
    cr_expect_eq(theus_engine_audit_count(eng, "nope", NULL, &n), THEUS_ENOENT);
    cr_expect_eq(theus_engine_audit_count(eng, NULL, "nope", &n), THEUS_ENOENT);
}

Test(audit_ring, the_ring_keeps_the_newest_records, .fini = teardown, .timeout = 60)
{
    setup_ring(4);
    for (int i = 0; i < 6; i++) {
        plan = (put){.field = "c", .v = {(double)(i % 2 ? 0 : 10)}, .n = 1, .at = 0};
        cr_assert_eq(theus_engine_run(eng, "put", NULL), THEUS_OK);
    }
    theus_audit_record r[8];
    size_t n = records(r, 8);
    cr_assert_eq(n, 4);
    for (size_t i = 0; i < n; i++)
        cr_expect_eq(r[i].seq, 3 + i);
    cr_expect_eq(theus_engine_audit_records(eng, 6, r, 8, &n), THEUS_OK);
    cr_expect_eq(n, 1);
    cr_expect_eq(r[0].seq, 6);
    uint64_t cnt = 0;
    cr_expect_eq(theus_engine_audit_count(eng, NULL, "c", &cnt), THEUS_OK);
    cr_expect_eq(cnt, 6, "counters keep what the ring dropped");
}

/* ---- the rules in the schema ------------------------------------------------------------ */

typedef struct bad_rule {
    const char *field;   /* the field's JSON text */
    const char *message;
} bad_rule;

static const bad_rule bad[] = {
    {"{\"dtype\": \"f32\", \"shape\": [], \"audit\": {}}",
     "$.fields.x.audit: expected an array of rules, got an object (line 1, column 57)"},
    {"{\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"level\": \"A\"}]}",
     "$.fields.x.audit[0]: missing required key \"rule\" (line 1, column 58)"},
    {"{\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"sane\"}]}",
     "$.fields.x.audit[0].rule: unknown rule \"sane\" (expected finite, min, max, max_abs or max_change) (line 1, column 67)"},
    {"{\"dtype\": \"i32\", \"shape\": [], \"audit\": [{\"rule\": \"finite\"}]}",
     "$.fields.x.audit[0].rule: \"finite\" applies only to f16, bf16, f32 and f64 fields (line 1, column 67)"},
    {"{\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"max\"}]}",
     "$.fields.x.audit[0]: missing required key \"value\" (the rule's bound) (line 1, column 58)"},
    {"{\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"max_abs\", \"value\": -1}]}",
     "$.fields.x.audit[0].value: must not be negative for max_abs (line 1, column 87)"},
    {"{\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"finite\", \"value\": 1}]}",
     "$.fields.x.audit[0].value: the finite rule takes no value (line 1, column 77)"},
    {"{\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"max\", \"value\": 1, \"level\": \"B\"}]}",
     "$.fields.x.audit[0]: missing required key \"threshold\" (level B: violations accepted before commits are refused) (line 1, column 58)"},
    {"{\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"max\", \"value\": 1, \"threshold\": 2}]}",
     "$.fields.x.audit[0].threshold: only level B rules take a threshold (line 1, column 86)"},
    {"{\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"max\", \"value\": 1, \"level\": \"X\"}]}",
     "$.fields.x.audit[0].level: unknown level \"X\" (expected S, A, B or C) (line 1, column 95)"},
    {"{\"dtype\": \"bool\", \"shape\": [], \"audit\": [{\"rule\": \"max\", \"value\": 1}]}",
     "$.fields.x.audit[0]: audit rules are not allowed on a bool field (line 1, column 59)"},
    {"{\"dtype\": \"f32\", \"shape\": [], \"audit\": [{\"rule\": \"max\", \"value\": 1, \"when\": 1}]}",
     "$.fields.x.audit[0].when: unknown key (allowed: rule, value, level, threshold, reset, description) (line 1, column 86)"},
};

Test(audit_schema, malformed_rules_are_refused_with_path_line_and_column)
{
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char json[512], err[512];
        snprintf(json, sizeof json, "{\"fields\": {\"x\": %s}}", bad[i].field);
        theus_schema *s = NULL;
        cr_expect_eq(schema_parse(json, &s, err, sizeof err), THEUS_ESCHEMA, "case %zu", i);
        char want[600];
        snprintf(want, sizeof want, "schema: %s", bad[i].message);
        cr_expect_str_eq(err, want, "case %zu: got %s", i, err);
    }
    theus_schema *s = NULL;
    char err[256];
    cr_expect_eq(schema_parse(schema, &s, err, sizeof err), THEUS_OK, "%s", err);
    cr_assert_not_null(s);
    int b = schema_find(s, "b");
    cr_expect_eq(s->fields[b].naudit, 1);
    cr_expect_eq(s->fields[b].audit[0].level, 'B');
    cr_expect_eq(s->fields[b].audit[0].threshold, 2);
    cr_expect_eq(s->fields[b].audit[0].reset, 1);
    schema_free(s);
}
