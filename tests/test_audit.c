/* The audit: rules in the schema (refusals located like schema refusals), levels S, A, B
 * (threshold, reset) and C, exactly one evaluation per commit on the values the commit
 * would write, the bounded ring of records, counters per process and field. Rows of issue
 * #11's table: the audit runs once per commit (Theus counted one violation twice) and sees
 * the values the commit writes (Theus never saw returned values). Device fields: this
 * suite runs on the CPU path (a device field without a GPU lives in host memory). */
#include "theus/theus_durable.h"
#include "theus/theus_process.h"
#include "theus/theus_shared.h"
#include "backend.h"
#include "durable_fixture.h"
#include "durable/wal_record.h"
#include "schema.h"
#include "state.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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

/* ---- counters per process, field and level ---------------------------------------------- */

Test(audit, stats_count_per_process_field_and_level)
{
    cr_expect_eq(put1("a", 11.0), THEUS_ESCHEMA);               /* A, refused */
    cr_expect_eq(put1("b", 2.0), THEUS_OK);                     /* B, kept (1 of 2) */
    plan = (put){.field = "c", .v = {-200}, .n = 1, .at = -1};  /* C: max_change and min */
    cr_expect_eq(theus_engine_run(eng, "put", NULL), THEUS_OK);
    cr_expect_eq(put1("s", NAN), THEUS_ESCHEMA);                /* S, refused, stops */
    theus_engine_resume(eng);
    theus_tx *tx = NULL;                                        /* A outside the engine */
    float big = 50.0f;
    theus_region r0 = {.ndim = 1, .start = {1}, .stop = {2}};
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "a", &r0, &big, THEUS_MEM_HOST), THEUS_OK);
    cr_expect_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);

    theus_audit_stats s;
    cr_assert_eq(theus_engine_audit_stats(eng, "put", NULL, &s), THEUS_OK);
    cr_expect_eq(s.violations, 5);
    cr_expect_eq(s.level[0], 1, "S");
    cr_expect_eq(s.level[1], 1, "A");
    cr_expect_eq(s.level[2], 1, "B");
    cr_expect_eq(s.level[3], 2, "C");
    cr_expect_eq(s.refused, 2);
    cr_assert_eq(theus_engine_audit_stats(eng, "put", "c", &s), THEUS_OK);
    cr_expect_eq(s.violations, 2);
    cr_expect_eq(s.level[3], 2);
    cr_expect_eq(s.refused, 0);
    cr_assert_eq(theus_engine_audit_stats(eng, "", "a", &s), THEUS_OK);
    cr_expect_eq(s.violations, 1, "the commit outside the engine");
    cr_expect_eq(s.level[1], 1);
    cr_expect_eq(s.refused, 1);
    cr_assert_eq(theus_engine_audit_stats(eng, NULL, "a", &s), THEUS_OK);
    cr_expect_eq(s.violations, 2, "all: the engine's process and outside");
    cr_assert_eq(theus_engine_audit_stats(eng, NULL, "free", &s), THEUS_OK);
    cr_expect_eq(s.violations, 0);
    uint64_t n = 0;
    cr_expect_eq(theus_engine_audit_count(eng, NULL, NULL, &n), THEUS_OK);
    cr_expect_eq(n, 6, "audit_count is the sum over levels");
    cr_expect_eq(theus_engine_audit_stats(eng, "nope", NULL, &s), THEUS_ENOENT);
    cr_expect_eq(s.violations, 0, "zeroed on failure");
    cr_expect_eq(theus_engine_audit_stats(eng, NULL, "nope", &s), THEUS_ENOENT);
    cr_expect_eq(theus_engine_audit_stats(eng, NULL, NULL, NULL), THEUS_EINVAL);
    cr_expect_eq(theus_engine_audit_stats(NULL, NULL, NULL, &s), THEUS_EINVAL);
}

/* ---- the rules on the backend: one summary per rule -------------------------------------- */

/* The CUDA audit kernel (kernels/constraints.cu audit_breaks) numbers rules with literals 0..4
 * and takes at most 8 per field (THEUS_AUDIT_MAX_RULES); the schema, the host loop and the
 * public enum must keep that numbering, or a device field would be judged by another rule.
 * Pinned here, so that the CPU build catches a renumbering the GPU build would not. */
_Static_assert(SCHEMA_AUDIT_FINITE == 0 && SCHEMA_AUDIT_MIN == 1 && SCHEMA_AUDIT_MAX_VALUE == 2 &&
                   SCHEMA_AUDIT_MAX_ABS == 3 && SCHEMA_AUDIT_MAX_CHANGE == 4,
               "kernels/constraints.cu: 0 finite, 1 min, 2 max, 3 max_abs, 4 max_change");
_Static_assert((int)THEUS_AUDIT_FINITE == SCHEMA_AUDIT_FINITE &&
                   (int)THEUS_AUDIT_MIN == SCHEMA_AUDIT_MIN &&
                   (int)THEUS_AUDIT_MAX == SCHEMA_AUDIT_MAX_VALUE &&
                   (int)THEUS_AUDIT_MAX_ABS == SCHEMA_AUDIT_MAX_ABS &&
                   (int)THEUS_AUDIT_MAX_CHANGE == SCHEMA_AUDIT_MAX_CHANGE,
               "the public rule numbers are the schema's");
_Static_assert(SCHEMA_AUDIT_MAX == 8, "kernels/constraints.cuh THEUS_AUDIT_MAX_RULES");

Test(audit_backend, host_loop_counts_first_index_and_value)
{
    float cur[6] = {1, 5, NAN, -7, 2, 9}, old[6] = {1, 1, 1, 1, 1, 1};
    backend_audit_rule rules[5] = {{.rule = SCHEMA_AUDIT_FINITE},
                                   {.rule = SCHEMA_AUDIT_MIN, .value = 0},
                                   {.rule = SCHEMA_AUDIT_MAX_VALUE, .value = 4},
                                   {.rule = SCHEMA_AUDIT_MAX_ABS, .value = 6},
                                   {.rule = SCHEMA_AUDIT_MAX_CHANGE, .value = 3}};
    backend_audit_result res[5];
    cr_assert_eq(backend_audit(backend_cpu(), THEUS_MEM_HOST, THEUS_DTYPE_F32, cur, old, 6,
                               rules, 5, res), THEUS_OK);
    const uint64_t count[5] = {1, 2, 3, 3, 4}, first[5] = {2, 2, 1, 2, 1};
    for (int r = 0; r < 5; r++) {
        cr_expect_eq(res[r].count, count[r], "rule %d: %llu", r, (unsigned long long)res[r].count);
        cr_expect_eq(res[r].first, first[r], "rule %d", r);
    }
    cr_expect(isnan(res[0].value));
    cr_expect_eq(res[2].value, 5.0);
    float ok[2] = {0, 1};
    cr_assert_eq(backend_audit(backend_cpu(), THEUS_MEM_HOST, THEUS_DTYPE_F32, ok, ok, 2, rules,
                               5, res), THEUS_OK);
    for (int r = 0; r < 5; r++)
        cr_expect(res[r].count == 0 && res[r].first == UINT64_MAX, "rule %d", r);
    cr_expect_eq(backend_audit(backend_cpu(), THEUS_MEM_HOST, THEUS_DTYPE_F32, ok, NULL, 2,
                               rules + 4, 1, res), THEUS_EINVAL, "a rate rule needs old values");
    cr_expect_eq(backend_audit(backend_cpu(), THEUS_MEM_DEVICE, THEUS_DTYPE_F32, ok, NULL, 2,
                               rules, 1, res), THEUS_EINVAL, "the CPU has no device entry");
}

/* A stand-in for a GPU backend on a machine without one: the CPU backend's table whose
 * memory counts as device memory (read/overlay accept THEUS_MEM_DEVICE as plain memory) and
 * that has an audit entry. Installed on field "d", it makes the audit take its device
 * branch: the values are built in staged scratch of the backend and only the per-rule
 * summaries come back (what the CUDA backend does with kernels/constraints.cu). */
static theus_backend_iface fake_iface;
static theus_backend fake_backend;
static int fake_audits, fake_scratch, fake_staged, fake_unstaged;

static int fake_read(void *ctx, const void *base, const theus_region *frame, theus_dtype dt,
                     const theus_region *sub, void *dst, theus_mem dst_mem)
{
    (void)dst_mem;
    return backend_cpu()->iface->read(ctx, base, frame, dt, sub, dst, THEUS_MEM_HOST);
}

static int fake_overlay(void *ctx, theus_dtype dt, delta_op op, void *dst,
                        const theus_region *dframe, theus_mem dst_mem, const void *payload,
                        const theus_region *pframe, const theus_region *sub)
{
    (void)dst_mem;
    return backend_cpu()->iface->overlay(ctx, dt, op, dst, dframe, THEUS_MEM_HOST, payload,
                                         pframe, sub);
}

static int fake_stage(void *ctx, theus_placement pl, const void *src, theus_mem src_mem,
                      size_t nbytes, void **out)
{
    fake_scratch += src == NULL;
    fake_staged++;
    (void)src_mem;
    return backend_cpu()->iface->stage(ctx, pl, src, THEUS_MEM_HOST, nbytes, out);
}

static void fake_unstage(void *ctx, void *p)
{
    fake_unstaged++;
    backend_cpu()->iface->unstage(ctx, p);
}

static int fake_audit(void *ctx, theus_dtype dt, const void *cur, const void *old, size_t n,
                      const backend_audit_rule *rules, size_t nrules, backend_audit_result *out)
{
    (void)ctx;
    fake_audits++;
    return backend_audit(backend_cpu(), THEUS_MEM_HOST, dt, cur, old, n, rules, nrules, out);
}

static const char *dev_schema =
    "{\"fields\": {\"d\": {\"dtype\": \"f32\", \"shape\": [4], \"placement\": \"device\","
    " \"audit\": [{\"rule\": \"max\", \"value\": 10, \"level\": \"A\"},"
    "             {\"rule\": \"max_change\", \"value\": 5, \"level\": \"C\"}]}}}";

static int dev_put(theus_run *run, void *user)
{
    (void)user;
    float v[4];
    for (int i = 0; i < 4; i++)
        v[i] = (float)plan.v[0];
    theus_region one = {.ndim = 1, .start = {plan.at}, .stop = {plan.at + 1}};
    const theus_region *r = plan.at >= 0 ? &one : NULL;
    return plan.add[0] ? theus_tx_add(theus_run_tx(run), "d", r, v, THEUS_MEM_HOST)
                       : theus_tx_write(theus_run_tx(run), "d", r, v, THEUS_MEM_HOST);
}

Test(audit_backend, a_device_field_is_audited_by_its_backend_and_only_summaries_come_back)
{
    cr_assert_eq(theus_state_create(dev_schema, NULL, &st), THEUS_OK, "%s", theus_last_error_message());
    int d = state_find_field(st, "d");
    cr_assert_geq(d, 0);
    fake_iface = *backend_cpu()->iface;
    fake_iface.name = "fake-device";
    fake_iface.read = fake_read;
    fake_iface.overlay = fake_overlay;
    fake_iface.stage = fake_stage;
    fake_iface.unstage = fake_unstage;
    fake_iface.audit = fake_audit;
    fake_backend = (theus_backend){.iface = &fake_iface, .ctx = NULL};
    const theus_backend *was = st->backend[d];
    theus_placement pl = (theus_placement)st->fields[d].placement;
    st->backend[d] = &fake_backend;
    st->fields[d].placement = THEUS_PLACEMENT_DEVICE;
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK);
    static const char *const all[] = {"*"};
    theus_process_def def = {.name = "dev", .body = dev_put, .inputs = all, .n_inputs = 1,
                             .outputs = all, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(eng, &def), THEUS_OK);
    fake_audits = fake_scratch = fake_staged = fake_unstaged = 0;

    plan = (put){.v = {3}, .at = -1};
    cr_expect_eq(theus_engine_run(eng, "dev", NULL), THEUS_OK, "%s", theus_state_last_error(st));
    cr_expect_eq(fake_audits, 1, "one evaluation per commit, on the backend");
    cr_expect_eq(fake_scratch, 2, "current and old values built in backend scratch");
    plan = (put){.v = {9}, .at = -1};
    cr_expect_eq(theus_engine_run(eng, "dev", NULL), THEUS_OK, "C: 3 -> 9 changes by 6");
    plan = (put){.add = {1}, .v = {2}, .at = 2};
    cr_expect_eq(theus_engine_run(eng, "dev", NULL), THEUS_ESCHEMA, "9 + 2 = 11 > 10");
    cr_expect_eq(fake_audits, 3);
    cr_expect_eq(fake_unstaged, fake_staged, "every staged buffer, scratch included, released");
    theus_audit_record r[4];
    cr_assert_eq(records(r, 4), 2);
    cr_expect(r[0].rule == THEUS_AUDIT_MAX_CHANGE && r[0].index == 0 && r[0].value == 9.0 &&
              r[0].refused == 0);
    cr_expect(r[1].rule == THEUS_AUDIT_MAX && r[1].index == 2 && r[1].value == 11.0 &&
              r[1].refused == 1);
    theus_engine_destroy(eng);
    st->backend[d] = was;
    st->fields[d].placement = pl;
    theus_state_destroy(st);
    eng = NULL;
    st = NULL;
}

/* On a GPU: the same commits on a host field and on a device field (audited by the CUDA
 * backend's kernels, kernels/constraints.cu) record the same violations. Skipped without a
 * GPU (then both fields live in host memory and the host loop runs for both). */
static const char *gpu_schema_fmt =
    "{\"fields\": {\"x\": {\"dtype\": \"%s\", \"shape\": [3, 1000], \"placement\": \"%s\","
    " \"audit\": [{\"rule\": \"min\", \"value\": -50, \"level\": \"C\"},"
    "   {\"rule\": \"max\", \"value\": 50, \"level\": \"C\"},"
    "   {\"rule\": \"max_abs\", \"value\": 40, \"level\": \"C\"},"
    "   {\"rule\": \"max_change\", \"value\": 30, \"level\": \"C\"}%s]}}}";

static size_t gpu_run(const char *dtype, const char *placement, theus_audit_record *out, size_t cap)
{
    char json[1024];
    int is_float = dtype[0] == 'f';
    snprintf(json, sizeof json, gpu_schema_fmt, dtype, placement,
             is_float ? ", {\"rule\": \"finite\", \"level\": \"C\"}" : "");
    theus_state *s = NULL;
    theus_engine *en = NULL;
    cr_assert_eq(theus_state_create(json, NULL, &s), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(theus_engine_create(s, NULL, &en), THEUS_OK);
    static float fv[3000];
    static int32_t iv[3000];
    for (int step = 0; step < 6; step++) {
        for (int i = 0; i < 3000; i++) {
            double v = ((i * 37 + step * 11) % 120) - 60 + (step == 3 && i == 2500 ? 0.5 : 0);
            fv[i] = (float)v;
            iv[i] = (int32_t)v;
        }
        if (is_float && step == 4)
            fv[1234] = NAN;
        theus_tx *tx = NULL;
        cr_assert_eq(theus_tx_begin(s, NULL, &tx), THEUS_OK);
        theus_region r = {.ndim = 2, .start = {step % 3, 0}, .stop = {3, 1000}};
        const void *src = is_float ? (const void *)(fv + 1000 * (step % 3))
                                   : (const void *)(iv + 1000 * (step % 3));
        int rc = step % 2 ? theus_tx_add(tx, "x", &r, src, THEUS_MEM_HOST)
                          : theus_tx_write(tx, "x", &r, src, THEUS_MEM_HOST);
        cr_assert_eq(rc, THEUS_OK);
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_state_last_error(s));
    }
    size_t n = 0;
    cr_assert_eq(theus_engine_audit_records(en, 0, out, cap, &n), THEUS_OK);
    theus_engine_destroy(en);
    theus_state_destroy(s);
    return n;
}

static void compare_placements(const char *other)
{
    const char *dtypes[] = {"f32", "i32"};
    for (int t = 0; t < 2; t++) {
        theus_audit_record h[64], d[64];
        size_t nh = gpu_run(dtypes[t], "host", h, 64);
        size_t nd = gpu_run(dtypes[t], other, d, 64);
        cr_assert_eq(nd, nh, "%s: %zu vs %zu records", dtypes[t], nd, nh);
        cr_expect_gt(nh, 10, "the plan breaks rules");
        for (size_t i = 0; i < nh; i++) {
            cr_expect(h[i].rule == d[i].rule && h[i].index == d[i].index &&
                          h[i].version == d[i].version &&
                          (h[i].value == d[i].value || (isnan(h[i].value) && isnan(d[i].value))),
                      "%s record %zu: rule %d index %llu value %g vs rule %d index %llu value %g",
                      dtypes[t], i, h[i].rule, (unsigned long long)h[i].index, h[i].value,
                      d[i].rule, (unsigned long long)d[i].index, d[i].value);
        }
    }
}

Test(audit_gpu, device_fields_record_what_host_fields_record)
{
    if (!theus_gpu_available())
        cr_skip_test("no GPU answers: device fields would live in host memory");
    compare_placements("device");
}

/* The harness of the test above, everywhere: a pinned field (host memory: the host loop). */
Test(audit_gpu, harness_pinned_fields_record_what_host_fields_record)
{
    compare_placements("pinned");
}

/* ---- the log form of audit records --------------------------------------------------------- */

Test(audit_wal, records_encode_and_decode_and_malformed_ones_are_refused)
{
    wal_audit_entry e[2];
    memset(e, 0, sizeof e);
    e[0] = (wal_audit_entry){.seq = 7, .index = 3, .count = 0, .value = NAN, .rule = 0,
                             .level = 'S', .refused = 1};
    strcpy(e[0].process, "put");
    strcpy(e[0].field, "s");
    e[1] = (wal_audit_entry){.seq = 8, .index = 1, .count = 2, .value = -4.5, .rule = 4,
                             .level = 'B', .refused = 0};
    strcpy(e[1].field, "bb");
    uint64_t body = wal_audit_body_size(e, 2);
    cr_assert_eq(body, 8 + 2 * WAL_AUDIT_ENTRY + 3 + 1 + 2);
    unsigned char buf[512];
    wal_audit_encode(buf + WAL_REC_HEAD, e, 2);
    wal_record_encode(buf, WAL_KIND_AUDIT, 12, buf + WAL_REC_HEAD, body);
    wal_rec r;
    char why[256];
    uint64_t size = WAL_REC_OVERHEAD + body;
    cr_assert_eq(wal_next(buf, size, 0, 11, &r, why, sizeof why), WAL_SCAN_RECORD, "%s", why);
    cr_expect_eq(r.kind, WAL_KIND_AUDIT);
    cr_expect_eq(r.version, 12);
    wal_cursor c;
    uint32_t n;
    cr_assert_eq(wal_audit_begin(&r, &c, &n, why, sizeof why), 0);
    cr_expect_eq(n, 2);
    wal_audit_entry got;
    cr_assert_eq(wal_audit_next(&c, &got, why, sizeof why), 1, "%s", why);
    cr_expect(got.seq == 7 && got.index == 3 && isnan(got.value) && got.level == 'S' &&
              got.refused == 1 && strcmp(got.process, "put") == 0 && strcmp(got.field, "s") == 0);
    cr_assert_eq(wal_audit_next(&c, &got, why, sizeof why), 1, "%s", why);
    cr_expect(got.seq == 8 && got.count == 2 && got.value == -4.5 && got.rule == 4 &&
              got.level == 'B' && got.process[0] == 0 && strcmp(got.field, "bb") == 0);
    cr_expect_eq(wal_audit_next(&c, &got, why, sizeof why), 0);
    /* Cut at every byte: torn, never a record. */
    for (uint64_t cut = 1; cut < size; cut++)
        cr_expect_eq(wal_next(buf, cut, 0, 11, &r, why, sizeof why), WAL_SCAN_TORN, "cut %llu",
                     (unsigned long long)cut);
    /* A bad level with a good checksum: the record reads, its entry is refused. */
    unsigned char broken[512];
    memcpy(broken, buf, (size_t)size);
    broken[WAL_REC_HEAD + 8 + 36] = (unsigned char)'X';
    wal_record_encode(broken, WAL_KIND_AUDIT, 12, broken + WAL_REC_HEAD, body);
    cr_assert_eq(wal_next(broken, size, 0, 11, &r, why, sizeof why), WAL_SCAN_RECORD);
    cr_assert_eq(wal_audit_begin(&r, &c, &n, why, sizeof why), 0);
    cr_expect_eq(wal_audit_next(&c, &got, why, sizeof why), -1);
    cr_expect(strstr(why, "level") != NULL, "%s", why);
}

/* ---- a durable state: audit records in the write-ahead log ---------------------------------- */

static void open_durable(void)
{
    st = NULL;
    eng = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, schema, NULL, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK);
    static const char *const all[] = {"*"};
    theus_process_def d = {.name = "put", .body = put_body, .inputs = all, .n_inputs = 1,
                           .outputs = all, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK, "%s", theus_state_last_error(st));
}

static void close_durable(void)
{
    theus_engine_destroy(eng);
    theus_state_destroy(st);
    eng = NULL;
    st = NULL;
}

static void dur_setup(void)
{
    cr_assert_eq(dfx_make(NULL, "test-audit", 0), 0);
    st = NULL;
    eng = NULL;
}

static void dur_teardown(void)
{
    if (eng || st)
        close_durable();
    dfx_cleanup();
}

/* The newest log segment's path. */
static void newest_segment(char *out, size_t len)
{
    DIR *d = opendir(dfx_dir);
    cr_assert_not_null(d);
    struct dirent *e;
    char best[256] = "";
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "wal-", 4) == 0 && strcmp(e->d_name, best) > 0)
            snprintf(best, sizeof best, "%s", e->d_name);
    closedir(d);
    cr_assert(best[0], "no log segment");
    snprintf(out, len, "%s/%s", dfx_dir, best);
}

/* Every record of the newest segment: kind, version, offset; audit entries in @ent. */
typedef struct log_view {
    uint32_t kind[64];
    uint64_t version[64], offset[64], size[64];
    size_t n;
    wal_audit_entry ent[32];
    size_t nent;
    uint64_t file_size;
} log_view;

static void read_log(log_view *v)
{
    memset(v, 0, sizeof *v);
    char path[600];
    newest_segment(path, sizeof path);
    FILE *fp = fopen(path, "rb");
    cr_assert_not_null(fp);
    static unsigned char buf[1 << 16];
    size_t size = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    v->file_size = size;
    char why[256];
    uint64_t start, off = WAL_SEG_HEAD;
    cr_assert_eq(wal_seg_head_decode(buf, size, &start, why, sizeof why), 0, "%s", why);
    wal_rec r;
    uint64_t base = start;
    while (v->n < 64 && wal_next(buf, size, off, base, &r, why, sizeof why) == WAL_SCAN_RECORD) {
        if (r.kind == WAL_KIND_COMMIT)
            base = r.version;
        v->kind[v->n] = r.kind;
        v->version[v->n] = r.version;
        v->offset[v->n] = r.offset;
        v->size[v->n++] = r.size;
        if (r.kind == WAL_KIND_AUDIT) {
            wal_cursor c;
            uint32_t n;
            cr_assert_eq(wal_audit_begin(&r, &c, &n, why, sizeof why), 0, "%s", why);
            while (v->nent < 32 && wal_audit_next(&c, &v->ent[v->nent], why, sizeof why) == 1)
                v->nent++;
        }
        off += r.size;
    }
}

TestSuite(audit_durable, .init = dur_setup, .fini = dur_teardown, .timeout = 120);

Test(audit_durable, violations_are_logged_with_their_commit_and_refusals_too)
{
    open_durable();
    uint64_t v0 = theus_state_version(st);
    cr_expect_eq(put1("a", 11.0), THEUS_ESCHEMA, "level A refuses");
    plan = (put){.field = "c", .v = {-200}, .n = 1, .at = -1};
    cr_expect_eq(theus_engine_run(eng, "put", NULL), THEUS_OK, "level C keeps");
    cr_expect_eq(put1("a", 9.0), THEUS_OK, "clean");
    cr_expect_eq(put1("b", 2.0), THEUS_OK, "level B: 1 of 2");
    cr_assert_eq(theus_state_version(st), v0 + 3);
    close_durable();

    log_view v;
    read_log(&v);
    /* audit(refused, v0+1) commit(v0+1) audit(v0+1) commit(v0+2) commit(v0+3) audit(v0+3) */
    cr_assert_eq(v.n, 6, "%zu records", v.n);
    const uint32_t kinds[6] = {WAL_KIND_AUDIT, WAL_KIND_COMMIT, WAL_KIND_AUDIT, WAL_KIND_COMMIT,
                               WAL_KIND_COMMIT, WAL_KIND_AUDIT};
    const uint64_t vers[6] = {v0 + 1, v0 + 1, v0 + 1, v0 + 2, v0 + 3, v0 + 3};
    for (int i = 0; i < 6; i++) {
        cr_expect_eq(v.kind[i], kinds[i], "record %d", i);
        cr_expect_eq(v.version[i], vers[i], "record %d", i);
    }
    cr_assert_eq(v.nent, 4);
    cr_expect(v.ent[0].refused == 1 && v.ent[0].level == 'A' && strcmp(v.ent[0].field, "a") == 0 &&
              strcmp(v.ent[0].process, "put") == 0 && v.ent[0].value == 11.0 && v.ent[0].seq == 1);
    cr_expect(v.ent[1].refused == 0 && v.ent[1].level == 'C' && strcmp(v.ent[1].field, "c") == 0 &&
              v.ent[1].seq == 2);
    cr_expect(v.ent[2].level == 'C' && v.ent[2].seq == 3);
    cr_expect(v.ent[3].level == 'B' && v.ent[3].count == 1 && v.ent[3].value == 2.0 &&
              v.ent[3].seq == 4);

    /* Reopen: recovery skips the audit records; the state is what was committed. */
    open_durable();
    cr_expect_eq(theus_state_version(st), v0 + 3);
    cr_expect_eq(get("a", 0), 9.0);
    cr_expect_eq(get("c", 2), -200.0);
    theus_durable_info info;
    cr_assert_eq(theus_state_durable_info(st, &info), THEUS_OK);
    cr_expect_eq(info.torn_bytes, 0);
    /* The engine refilled its ring from the log; seq goes on after the newest. */
    theus_audit_record rr[8];
    cr_assert_eq(records(rr, 8), 4);
    cr_expect(rr[0].seq == 1 && rr[0].refused == 1 && rr[0].version == v0 + 1 &&
              strcmp(rr[0].field, "a") == 0 && rr[0].value == 11.0);
    cr_expect(rr[3].seq == 4 && rr[3].level == 'B' && rr[3].count == 1 && rr[3].version == v0 + 3);
    cr_expect_eq(put1("a", 12.0), THEUS_ESCHEMA, "appending after the recovered log");
    cr_assert_eq(records(rr, 8), 5);
    cr_expect_eq(rr[4].seq, 5);
    close_durable();
    read_log(&v);
    cr_expect_eq(v.n, 7);
    cr_expect_eq(v.kind[6], WAL_KIND_AUDIT);
    cr_expect_eq(v.version[6], v0 + 4);

#ifdef THEUS_CLI
    char cmd[512], out[8192];
    snprintf(cmd, sizeof cmd, "'%s' log '%s' 2>&1", THEUS_CLI, dfx_dir);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = 0;
    cr_expect_eq(pclose(p), 0, "%s", out);
    cr_expect(strstr(out, "audit   1 violation") != NULL, "%s", out);
    cr_expect(strstr(out, "A refused  a [0] = 11  rule max  seq 1  process put") != NULL, "%s", out);
    cr_expect(strstr(out, "B kept     b [0] = 2  rule max_abs  seq 4  count 1") != NULL, "%s", out);
    cr_expect(strstr(out, "3 records and 4 audit records (5 violations)") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' log --json '%s' 2>&1", THEUS_CLI, dfx_dir);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    got = fread(out, 1, sizeof out - 1, p);
    out[got] = 0;
    cr_expect_eq(pclose(p), 0, "%s", out);
    cr_expect(strstr(out, "\"kind\": \"audit\"") != NULL, "%s", out);
    cr_expect(strstr(out, "\"rule\": \"max\", \"level\": \"A\", \"refused\": true") != NULL, "%s", out);
    cr_expect(strstr(out, "\"audit_records\": 4") != NULL, "%s", out);
#endif
}

Test(audit_durable, a_torn_audit_record_at_the_tail_is_dropped_like_any_torn_tail)
{
    open_durable();
    uint64_t v0 = theus_state_version(st);
    plan = (put){.field = "c", .v = {-200}, .n = 1, .at = -1};
    cr_expect_eq(theus_engine_run(eng, "put", NULL), THEUS_OK);
    close_durable();
    log_view v;
    read_log(&v);
    cr_assert_eq(v.n, 2);
    cr_assert_eq(v.kind[1], WAL_KIND_AUDIT);
    char path[600];
    newest_segment(path, sizeof path);
    /* Cut inside the audit record: its commit stays, the audit record is a torn tail. */
    uint64_t cut = v.offset[1] + v.size[1] / 2;
    cr_assert_eq(truncate(path, (off_t)cut), 0);
    open_durable();
    cr_expect_eq(theus_state_version(st), v0 + 1, "the commit before it is kept");
    cr_expect_eq(get("c", 0), -200.0);
    theus_durable_info info;
    cr_assert_eq(theus_state_durable_info(st, &info), THEUS_OK);
    cr_expect_eq(info.torn_offset, v.offset[1]);
    cr_expect_eq(info.torn_bytes, cut - v.offset[1]);
    cr_expect_eq(put1("free", 1.0), THEUS_OK, "the log goes on after the cut");
    close_durable();
    read_log(&v);
    cr_expect_eq(v.n, 2, "commit, then the new commit where the torn record was");
    cr_expect_eq(v.kind[1], WAL_KIND_COMMIT);
    cr_expect_eq(v.file_size, v.offset[1] + v.size[1]);

    /* A flipped byte in an audit record with records after it: corrupt, not torn. */
    open_durable();
    cr_expect_eq(put1("a", 11.0), THEUS_ESCHEMA);
    cr_expect_eq(put1("free", 2.0), THEUS_OK);
    close_durable();
    read_log(&v);
    cr_assert_eq(v.n, 4);
    cr_assert_eq(v.kind[2], WAL_KIND_AUDIT);
    newest_segment(path, sizeof path);
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    unsigned char byte;
    off_t at = (off_t)(v.offset[2] + WAL_REC_HEAD + 10);
    cr_assert_eq(pread(fd, &byte, 1, at), 1);
    byte ^= 0x40;
    cr_assert_eq(pwrite(fd, &byte, 1, at), 1);
    close(fd);
    theus_state *again = NULL;
    cr_expect_eq(theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &again), THEUS_ECORRUPT);
    char want[64];
    snprintf(want, sizeof want, "at byte %llu", (unsigned long long)v.offset[2]);
    cr_expect(strstr(theus_last_error_message(), want) != NULL, "%s", theus_last_error_message());
}

/* A durable shared state: the audit of one handle logs into the shared log, also after
 * another handle began a new segment (the refused commit's record goes to the segment the
 * shared area points at, not to the one this handle wrote last). */
static char g_shm[64];

static void shm_teardown(void)
{
    dur_teardown();
    theus_shared_remove(g_shm);
}

static int commit_free(theus_state *s, float v)
{
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(s, NULL, &tx);
    if (rc == THEUS_OK && (rc = theus_tx_write(tx, "free", NULL, &v, THEUS_MEM_HOST)) != THEUS_OK)
        theus_tx_abort(tx);
    return rc == THEUS_OK ? theus_tx_commit(tx, NULL) : rc;
}

Test(audit_durable, shared_state_logs_into_the_segment_the_shared_area_points_at,
     .fini = shm_teardown)
{
    snprintf(g_shm, sizeof g_shm, "taud-%d", (int)getpid());
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.segment_bytes = 256;   /* every few records a new segment */
    cr_assert_eq(theus_shared_open_durable(g_shm, dfx_dir, schema, NULL, &o, &st), THEUS_OK,
                 "%s", theus_last_error_message());
    theus_state *other = NULL;
    cr_assert_eq(theus_shared_open_durable(g_shm, dfx_dir, NULL, NULL, &o, &other), THEUS_OK,
                 "%s", theus_last_error_message());
    cr_assert_eq(theus_engine_create(st, NULL, &eng), THEUS_OK);
    static const char *const all[] = {"*"};
    theus_process_def d = {.name = "put", .body = put_body, .inputs = all, .n_inputs = 1,
                           .outputs = all, .n_outputs = 1};
    cr_assert_eq(theus_engine_register(eng, &d), THEUS_OK);
    cr_expect_eq(put1("a", 11.0), THEUS_ESCHEMA);          /* audit record in segment 1 */
    for (int i = 0; i < 8; i++)                            /* the other handle rotates */
        cr_assert_eq(commit_free(other, (float)i), THEUS_OK, "%s", theus_state_last_error(other));
    uint64_t v = theus_state_version(st);
    cr_expect_eq(put1("a", 12.0), THEUS_ESCHEMA, "refused after the other handle rotated");
    plan = (put){.field = "c", .v = {-200}, .n = 1, .at = -1};
    cr_expect_eq(theus_engine_run(eng, "put", NULL), THEUS_OK, "kept with violations");
    theus_engine_destroy(eng);
    eng = NULL;
    theus_state_destroy(other);
    theus_state_destroy(st);
    st = NULL;

    log_view lv;
    read_log(&lv);
    /* The newest segment: audit(refused, v+1), commit(v+1), audit(v+1). */
    cr_assert_geq(lv.n, 3, "%zu records", lv.n);
    size_t k = lv.n - 3;
    cr_expect(lv.kind[k] == WAL_KIND_AUDIT && lv.version[k] == v + 1);
    cr_expect(lv.kind[k + 1] == WAL_KIND_COMMIT && lv.version[k + 1] == v + 1);
    cr_expect(lv.kind[k + 2] == WAL_KIND_AUDIT && lv.version[k + 2] == v + 1);
    cr_assert_geq(lv.nent, 3);
    cr_expect(lv.ent[lv.nent - 3].refused == 1 && lv.ent[lv.nent - 3].value == 12.0);
    /* Recovery (private, the shared state is gone) accepts every segment. */
    cr_assert_eq(theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    cr_expect_eq(theus_state_version(st), v + 1);
    cr_expect_eq(get("c", 1), -200.0);
    theus_state_destroy(st);
    st = NULL;
}
