/* The schema parser (src/schema.c) and the JSON locator behind its messages
 * (src/json_locate.c): accepted schemas, defaults, every refusal with its path, line and
 * column, NULL arguments and allocation failures. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "json_locate.h"
#include "schema.h"
#include "theus/theus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The example of docs/schema.md and DESIGN.md. */
static const char *const design_example =
    "{\n"
    "  \"name\": \"mlp-train\",\n"
    "  \"fields\": {\n"
    "    \"w1\":   {\"dtype\": \"f32\", \"shape\": [784, 128], \"placement\": \"device\"},\n"
    "    \"m1\":   {\"dtype\": \"f32\", \"shape\": [784, 128], \"placement\": \"device\"},\n"
    "    \"step\": {\"dtype\": \"i64\", \"shape\": [],          \"placement\": \"host\"},\n"
    "    \"loss\": {\"dtype\": \"f32\", \"shape\": [1], \"placement\": \"host\",\n"
    "             \"constraints\": {\"finite\": true, \"min\": 0}},\n"
    "    \"seed\": {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"}\n"
    "  }\n"
    "}\n";

static theus_schema *parse_ok(const char *json)
{
    char err[512] = "untouched";
    theus_schema *s = NULL;
    int rc = schema_parse(json, &s, err, sizeof err);
    cr_assert_eq(rc, THEUS_OK, "schema_parse refused %s: %d %s", json, rc, err);
    cr_assert_not_null(s);
    cr_expect_str_empty(err, "err is cleared on success, got \"%s\"", err);
    return s;
}

Test(schema, design_example)
{
    theus_schema *s = parse_ok(design_example);
    cr_expect_str_eq(s->name, "mlp-train");
    cr_assert_eq(s->nfields, 5);
    static const char *const order[] = {"w1", "m1", "step", "loss", "seed"};
    for (size_t i = 0; i < 5; i++) {
        cr_expect_str_eq(s->fields[i].name, order[i], "field %zu", i);
        cr_expect_eq(schema_find(s, order[i]), (int)i);
    }

    const schema_field *w1 = &s->fields[0];
    cr_expect_eq(w1->dtype, THEUS_DTYPE_F32);
    cr_expect_eq(w1->ndim, 2);
    cr_expect_eq(w1->shape[0], 784);
    cr_expect_eq(w1->shape[1], 128);
    cr_expect_eq(w1->nelems, 784u * 128u);
    cr_expect_eq(w1->nbytes, 784u * 128u * 4u);
    cr_expect_eq(w1->placement, THEUS_PLACEMENT_DEVICE);
    cr_expect_eq(w1->zone, THEUS_ZONE_DATA);
    cr_expect_eq(w1->cons.has_min, 0);
    cr_expect_eq(w1->cons.has_max, 0);
    cr_expect_eq(w1->cons.finite, 0);

    const schema_field *step = &s->fields[2];
    cr_expect_eq(step->dtype, THEUS_DTYPE_I64);
    cr_expect_eq(step->ndim, 0);
    cr_expect_eq(step->nelems, 1);
    cr_expect_eq(step->nbytes, 8);
    cr_expect_eq(step->placement, THEUS_PLACEMENT_HOST);

    const schema_field *loss = &s->fields[3];
    cr_expect_eq(loss->ndim, 1);
    cr_expect_eq(loss->shape[0], 1);
    cr_expect_eq(loss->nbytes, 4);
    cr_expect_eq(loss->cons.finite, 1);
    cr_expect_eq(loss->cons.has_min, 1);
    cr_expect_eq(loss->cons.min, 0.0);
    cr_expect_eq(loss->cons.has_max, 0);

    const schema_field *seed = &s->fields[4];
    cr_expect_eq(seed->dtype, THEUS_DTYPE_U64);
    cr_expect_eq(seed->zone, THEUS_ZONE_CONST);
    cr_expect_eq(seed->placement, THEUS_PLACEMENT_HOST, "placement defaults to host");

    cr_expect_eq(schema_find(s, "nope"), -1);
    cr_expect_eq(schema_find(s, ""), -1);
    cr_expect_eq(schema_find(s, "w"), -1);
    cr_expect_eq(schema_find(s, NULL), -1);
    cr_expect_eq(schema_find(NULL, "w1"), -1);
    schema_free(s);
}

Test(schema, defaults_and_descriptions)
{
    theus_schema *s = parse_ok("{\"description\": \"top\", \"fields\": {\"x\": "
                               "{\"shape\": [3], \"description\": \"a vector\", \"dtype\": \"u8\"}}}");
    cr_expect_str_eq(s->name, "theus", "the name defaults to \"theus\"");
    cr_assert_eq(s->nfields, 1);
    cr_expect_eq(s->fields[0].dtype, THEUS_DTYPE_U8);
    cr_expect_eq(s->fields[0].placement, THEUS_PLACEMENT_HOST);
    cr_expect_eq(s->fields[0].zone, THEUS_ZONE_DATA);
    cr_expect_eq(s->fields[0].nbytes, 3);
    schema_free(s);
}

Test(schema, every_dtype_placement_and_zone)
{
    static const struct { const char *name; theus_dtype dt; size_t size; } dts[] = {
        {"bool", THEUS_DTYPE_BOOL, 1}, {"u8", THEUS_DTYPE_U8, 1},     {"i8", THEUS_DTYPE_I8, 1},
        {"u16", THEUS_DTYPE_U16, 2},   {"i16", THEUS_DTYPE_I16, 2},   {"u32", THEUS_DTYPE_U32, 4},
        {"i32", THEUS_DTYPE_I32, 4},   {"u64", THEUS_DTYPE_U64, 8},   {"i64", THEUS_DTYPE_I64, 8},
        {"f16", THEUS_DTYPE_F16, 2},   {"bf16", THEUS_DTYPE_BF16, 2}, {"f32", THEUS_DTYPE_F32, 4},
        {"f64", THEUS_DTYPE_F64, 8},
    };
    static const char *const placements[] = {"device", "pinned", "host"};
    static const char *const zones[] = {"data", "signal", "meta", "const"};
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"fields\": {\"t\": {\"dtype\": \"%s\", \"shape\": [2, 3, 5], "
                 "\"placement\": \"%s\", \"zone\": \"%s\"}}}",
                 dts[i].name, placements[i % 3], zones[i % 4]);
        theus_schema *s = parse_ok(json);
        cr_expect_eq(s->fields[0].dtype, dts[i].dt, "%s", dts[i].name);
        cr_expect_eq(s->fields[0].nelems, 30, "%s", dts[i].name);
        cr_expect_eq(s->fields[0].nbytes, 30 * dts[i].size, "%s", dts[i].name);
        cr_expect_eq((int)s->fields[0].placement, (int)(i % 3), "%s", json);
        cr_expect_eq((int)s->fields[0].zone, (int)(i % 4), "%s", json);
        schema_free(s);
    }
}

Test(schema, shapes_at_the_limits)
{
    theus_schema *s = parse_ok(
        "{\"fields\": {"
        "\"empty\": {\"dtype\": \"f64\", \"shape\": [4, 0, 3]},"
        "\"eight\": {\"dtype\": \"i16\", \"shape\": [1, 2, 1, 2, 1, 2, 1, 2]},"
        "\"zero1\": {\"dtype\": \"u8\", \"shape\": [0]},"
        "\"neg0\":  {\"dtype\": \"u8\", \"shape\": [-0]},"
        "\"big\":   {\"dtype\": \"u8\", \"shape\": [9223372036854775807]},"
        "\"big8\":  {\"dtype\": \"f64\", \"shape\": [1152921504606846975]}}}");
    cr_assert_eq(s->nfields, 6);
    cr_expect_eq(s->fields[0].ndim, 3);
    cr_expect_eq(s->fields[0].nelems, 0, "a zero dimension makes an empty field");
    cr_expect_eq(s->fields[0].nbytes, 0);
    cr_expect_eq(s->fields[1].ndim, 8);
    cr_expect_eq(s->fields[1].nelems, 16);
    cr_expect_eq(s->fields[1].nbytes, 32);
    cr_expect_eq(s->fields[2].nelems, 0);
    cr_expect_eq(s->fields[3].nelems, 0);
    cr_expect_eq(s->fields[4].nbytes, (size_t)INT64_MAX, "INT64_MAX bytes still fit");
    cr_expect_eq(s->fields[5].nbytes, (size_t)1152921504606846975 * 8);
    schema_free(s);
}

Test(schema, names_at_the_limits)
{
    char json[512];
    char n63[64];
    memset(n63, 'n', 63);
    n63[63] = '\0';
    snprintf(json, sizeof json,
             "{\"name\": \"%s\", \"fields\": {\"%s\": {\"dtype\": \"u8\", \"shape\": []},"
             " \"w\\u00e9.layer-1/x y\": {\"dtype\": \"u8\", \"shape\": []}}}",
             n63, n63);
    theus_schema *s = parse_ok(json);
    cr_expect_str_eq(s->name, n63);
    cr_expect_str_eq(s->fields[0].name, n63);
    cr_expect_str_eq(s->fields[1].name, "w\xc3\xa9.layer-1/x y", "escapes are decoded");
    cr_expect_eq(schema_find(s, "w\xc3\xa9.layer-1/x y"), 1);
    schema_free(s);
}

Test(schema, accepted_constraints)
{
    theus_schema *s = parse_ok(
        "{\"fields\": {"
        "\"h\": {\"dtype\": \"f16\", \"shape\": [2], \"constraints\": {\"finite\": true}},"
        "\"b\": {\"dtype\": \"bf16\", \"shape\": [2], \"constraints\": {\"finite\": false}},"
        "\"i\": {\"dtype\": \"i32\", \"shape\": [2], \"constraints\": {\"max\": 10, \"min\": -2.5}},"
        "\"e\": {\"dtype\": \"f64\", \"shape\": [], \"constraints\": {\"min\": 1e300, \"max\": 1e300}},"
        "\"flag\": {\"dtype\": \"bool\", \"shape\": [], \"constraints\": {}}}}");
    cr_assert_eq(s->nfields, 5);
    cr_expect_eq(s->fields[0].cons.finite, 1);
    cr_expect_eq(s->fields[1].cons.finite, 0);
    cr_expect_eq(s->fields[2].cons.has_min, 1);
    cr_expect_eq(s->fields[2].cons.min, -2.5);
    cr_expect_eq(s->fields[2].cons.has_max, 1);
    cr_expect_eq(s->fields[2].cons.max, 10.0);
    cr_expect_eq(s->fields[2].cons.finite, 0);
    cr_expect_eq(s->fields[3].cons.min, 1e300, "min == max is allowed");
    cr_expect_eq(s->fields[4].cons.has_min + s->fields[4].cons.has_max + s->fields[4].cons.finite,
                 0, "an empty constraints object is no constraint, even on bool");
    schema_free(s);
}

/* ---- refusals ---------------------------------------------------------------------- */

/* Each schema is refused with THEUS_ESCHEMA; the message starts "schema: <path>: ", holds
 * <what> and ends "(line L, column C)". Positions were computed independently of the
 * locator (the first character of the offending value, or of the key for an unknown key);
 * for invalid JSON they are jansson's (the end of the offending token). */
struct bad_case {   /* by value: Criterion runs each case in a fresh worker process */
    char json[192];
    char path[96];
    int line, column;
    char what[48];
};

static struct bad_case bad_cases[] = {
    {"",
     "$", 1, 1, "invalid JSON"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1]}}",
     "$", 1, 48, "invalid JSON"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1],}}}",
     "$", 1, 48, "invalid JSON"},
    {"{\n"
      "  \"fields\": {\n"
      "    \"w\": {\"dtype\": \"f32\", \"shape\": [1]},\n"
      "    \"w\": {\"dtype\": \"f64\", \"shape\": [2]}\n"
      "  }\n"
      "}",
     "$", 4, 7, "duplicate object key"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [99999999999999999999]}}}",
     "$", 1, 64, "too big integer"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [], \"constraints\": {\"max\": 1e999}}}}",
     "$", 1, 75, "real number overflow"},
    {"[1, 2]",
     "$", 1, 1, "expected an object, got an array"},
    {"  \"schema\"",
     "$", 1, 3, "expected an object, got a string"},
    {"\n"
      "\n"
      "null",
     "$", 3, 1, "expected an object, got null"},
    {"{\"name\": \"x\"}",
     "$", 1, 1, "missing required key \"fields\""},
    {"{\"fields\": []}",
     "$.fields", 1, 12, "expected an object, got an array"},
    {"{\"fields\": true}",
     "$.fields", 1, 12, "expected an object, got true"},
    {"{\"fields\": {}}",
     "$.fields", 1, 12, "at least one field is required"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1]}}, \"version\": 2}",
     "$.version", 1, 51, "unknown key"},
    {"{\n"
      "  \"fields\": {\n"
      "    \"w1\": {\"dtype\": \"f32\", \"shape\": [784, 128],\n"
      "           \"colour\": \"red\"}\n"
      "  }\n"
      "}",
     "$.fields.w1.colour", 4, 12, "unknown key"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [], \"col\\u006fur\": 1}}}",
     "$.fields.a.colour", 1, 48, "unknown key"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [], \"constraints\": {\"finite\": true, \"nonneg\": true}}}}",
     "$.fields.a.constraints.nonneg", 1, 80, "unknown key"},
    {"{\"name\": 7, \"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1]}}}",
     "$.name", 1, 10, "expected a string, got an integer"},
    {"{\"name\": \"\", \"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1]}}}",
     "$.name", 1, 10, "must not be empty"},
    {"{\"name\": \"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\", \"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1]}}}",
     "$.name", 1, 10, "64 bytes long"},
    {"{\"name\": \"a\\nb\", \"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1]}}}",
     "$.name", 1, 10, "control characters"},
    {"{\"description\": [\"x\"], \"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1]}}}",
     "$.description", 1, 17, "expected a string, got an array"},
    {"{\"fields\": {\"a\": [1]}}",
     "$.fields.a", 1, 18, "expected an object, got an array"},
    {"{\"fields\": {\"a\": {\"shape\": [1]}}}",
     "$.fields.a", 1, 18, "missing required key \"dtype\""},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\"}}}",
     "$.fields.a", 1, 18, "missing required key \"shape\""},
    {"{\"fields\": {\"a\": {\"dtype\": \"float32\", \"shape\": [1]}}}",
     "$.fields.a.dtype", 1, 28, "unknown dtype \"float32\""},
    {"{\"fields\": {\"a\": {\"dtype\": 4, \"shape\": [1]}}}",
     "$.fields.a.dtype", 1, 28, "expected a string, got an integer"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": 3}}}",
     "$.fields.a.shape", 1, 44, "expected an array"},
    {"{\n"
      "  \"fields\": {\n"
      "    \"w\": {\"dtype\": \"f32\",\n"
      "          \"shape\": [2, -1]}\n"
      "  }\n"
      "}",
     "$.fields.w.shape[1]", 4, 24, "non-negative, got -1"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [2.0]}}}",
     "$.fields.a.shape[0]", 1, 45, "got a real number"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [4, \"4\"]}}}",
     "$.fields.a.shape[1]", 1, 48, "got a string"},
    {"{\"fields\": {\"a\": {\"dtype\": \"u8\", \"shape\": [1, 1, 1, 1, 1, 1, 1, 1, 1]}}}",
     "$.fields.a.shape", 1, 43, "at most 8 dimensions"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f64\", \"shape\": [4294967296, 4294967296]}}}",
     "$.fields.a.shape[1]", 1, 57, "shape too large"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f64\", \"shape\": [0, 3037000500, 3037000500]}}}",
     "$.fields.a.shape[2]", 1, 60, "shape too large"},
    {"{\"fields\": {\"a\": {\"dtype\": \"u8\", \"shape\": [9223372036854775807, 2]}}}",
     "$.fields.a.shape[1]", 1, 65, "shape too large"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1], \"placement\": \"gpu\"}}}",
     "$.fields.a.placement", 1, 62, "unknown placement \"gpu\""},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1], \"placement\": true}}}",
     "$.fields.a.placement", 1, 62, "expected a string, got true"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1], \"zone\": \"persistent\"}}}",
     "$.fields.a.zone", 1, 57, "unknown zone \"persistent\""},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1], \"constraints\": [0, 1]}}}",
     "$.fields.a.constraints", 1, 64, "expected an object, got an array"},
    {"{\"fields\": {\"a\": {\"dtype\": \"i32\", \"shape\": [], \"constraints\": {\"finite\": true}}}}",
     "$.fields.a.constraints.finite", 1, 74, "applies only to"},
    {"{\"fields\": {\"a\": {\"dtype\": \"bool\", \"shape\": [], \"constraints\": {\"max\": 1}}}}",
     "$.fields.a.constraints.max", 1, 72, "not allowed on a bool field"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1], \"constraints\": {\"finite\": 1}}}}",
     "$.fields.a.constraints.finite", 1, 75, "expected true or false"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1], \"constraints\": {\"min\": \"0\"}}}}",
     "$.fields.a.constraints.min", 1, 72, "expected a number, got a string"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1],\n"
      "  \"constraints\": {\"min\": 1,\n"
      "                  \"max\": -1.5}}}}",
     "$.fields.a.constraints.max", 3, 26, "less than min"},
    {"{\"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [1], \"description\": null}}}",
     "$.fields.a.description", 1, 64, "expected a string, got null"},
    {"{\"fields\": {\"\": {\"dtype\": \"f32\", \"shape\": [1]}}}",
     "$.fields[\"\"]", 1, 13, "must not be empty"},
    {"{\"fields\": {\"w*\": {\"dtype\": \"f32\", \"shape\": [1]}}}",
     "$.fields[\"w*\"]", 1, 13, "must not contain '*'"},
    {"{\"fields\": {\"w[0]\": {\"dtype\": \"f32\", \"shape\": [1]}}}",
     "$.fields[\"w[0]\"]", 1, 13, "must not contain '['"},
    {"{\"fields\": {\"w\\u0009x\": {\"dtype\": \"f32\", \"shape\": [1]}}}",
     "$.fields[\"w\\u0009x\"]", 1, 13, "control characters"},
    {"{\"fields\": {\"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\": {\"dtype\": \"f32\", \"shape\": [1]}}}",
     "$.fields.nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", 1, 13, "at most 63"},
    {"{\"description\": \"héllo wörld ☃\", \"fields\": {\"a\": {\"dtype\": \"f33\", \"shape\": []}}}",
     "$.fields.a.dtype", 1, 60, "unknown dtype"},
    {"{\"fields\": {\"w\\u00e9\": {\"dtype\": \"f32\", \"shape\": [-3]}}}",
     "$.fields[\"wé\"].shape[0]", 1, 51, "non-negative"},
    {"{\"description\": \"{\\\"fields\\\": {\\\"a\\\": {\\\"shape\\\": [\\\"x\\\"]}}}\",\n"
      " \"fields\": {\"a\": {\"dtype\": \"f32\", \"shape\": [\"x\"]}}}",
     "$.fields.a.shape[0]", 2, 45, "got a string"},
    {"{\n"
      "  \"fields\": {\n"
      "    \"ok\": {\"dtype\": \"f32\", \"shape\": [3]},\n"
      "    \"bad\": {\"dtype\": \"f32\", \"shape\": [3], \"zone\": \"Data\"}\n"
      "  }\n"
      "}",
     "$.fields.bad.zone", 4, 51, "unknown zone"},
};

ParameterizedTestParameters(schema, refusals)
{
    return cr_make_param_array(struct bad_case, bad_cases, sizeof bad_cases / sizeof bad_cases[0]);
}

ParameterizedTest(struct bad_case *c, schema, refusals)
{
    char err[1024];
    char prefix[256], where[64];
    theus_schema *s = (theus_schema *)&err; /* any non-NULL value: must be reset */
    int rc = schema_parse(c->json, &s, err, sizeof err);
    cr_expect_eq(rc, THEUS_ESCHEMA, "[%s] rc %d for:\n%s", c->path, rc, c->json);
    cr_expect_null(s, "[%s] *out must be NULL", c->path);
    snprintf(prefix, sizeof prefix, "schema: %s: ", c->path);
    snprintf(where, sizeof where, " (line %d, column %d)", c->line, c->column);
    cr_expect(strncmp(err, prefix, strlen(prefix)) == 0, "[%s] message \"%s\" should start \"%s\"",
              c->path, err, prefix);
    size_t n = strlen(err), w = strlen(where);
    cr_expect(n >= w && strcmp(err + n - w, where) == 0, "[%s] message \"%s\" should end \"%s\"",
              c->path, err, where);
    cr_expect(strstr(err, c->what) != NULL, "[%s] message \"%s\" should say \"%s\"", c->path, err,
              c->what);
}

Test(schema, refusal_count)
{
    cr_expect_geq(sizeof bad_cases / sizeof bad_cases[0], 30);
}

Test(schema, exact_messages)
{
    char err[512];
    theus_schema *s = NULL;
    const char *json = "{\n"
                       "  \"fields\": {\n"
                       "    \"w1\": {\"dtype\": \"f32\", \"shape\": [784, 128, 2.5]}\n"
                       "  }\n"
                       "}";
    cr_assert_eq(schema_parse(json, &s, err, sizeof err), THEUS_ESCHEMA);
    cr_expect_str_eq(err, "schema: $.fields.w1.shape[2]: expected a non-negative integer, got a "
                          "real number (line 3, column 48)");
    json = "{\"fields\": {\"w1\": {\"dtype\": \"f32\", \"shape\": [1], \"colour\": \"red\"}}}";
    cr_assert_eq(schema_parse(json, &s, err, sizeof err), THEUS_ESCHEMA);
    cr_expect_str_eq(err, "schema: $.fields.w1.colour: unknown key (allowed: dtype, shape, "
                          "placement, zone, constraints, audit, description) (line 1, column 50)");
}

Test(schema, long_and_odd_keys_in_paths)
{
    char json[512], key[101];
    memset(key, 'k', 100);
    key[99] = '?';
    key[100] = '\0';
    snprintf(json, sizeof json, "{\"fields\": {\"%s\": {}}}", key);
    char err[512];
    theus_schema *s = NULL;
    cr_assert_eq(schema_parse(json, &s, err, sizeof err), THEUS_ESCHEMA);
    cr_expect(strstr(err, "$.fields[\"kkkk") != NULL, "%s", err);
    cr_expect(strstr(err, "kkk...\"]: field name is 100 bytes long") != NULL,
              "a long key is cut in the path: %s", err);
    cr_expect(strstr(err, "(line 1, column 13)") != NULL, "%s", err);

    /* quotes and backslashes in a key are escaped in the path */
    cr_assert_eq(schema_parse("{\"fields\": {\"a\\\"b\\\\\": {}}}", &s, err, sizeof err),
                 THEUS_ESCHEMA);
    const char *want = "schema: $.fields[\"a\\\"b\\\\\"]: ";
    cr_expect(strncmp(err, want, strlen(want)) == 0, "%s", err);
    cr_expect(strstr(err, "must not contain '\\'") != NULL, "%s", err);
}

Test(schema, small_or_missing_error_buffer)
{
    theus_schema *s = (theus_schema *)&s;
    cr_expect_eq(schema_parse("{\"fields\": 1}", &s, NULL, 0), THEUS_ESCHEMA);
    cr_expect_null(s);
    char err[8];
    memset(err, 'x', sizeof err);
    cr_expect_eq(schema_parse("{\"fields\": 1}", &s, err, sizeof err), THEUS_ESCHEMA);
    cr_expect_str_eq(err, "schema:", "the message is cut to the buffer");
    s = NULL;
    cr_expect_eq(schema_parse("{\"fields\": {\"a\": {\"dtype\": \"u8\", \"shape\": []}}}", &s,
                              NULL, 0),
                 THEUS_OK);
    cr_expect_not_null(s);
    schema_free(s);
}

Test(schema, null_arguments)
{
    char err[128];
    theus_schema *s = (theus_schema *)&s;
    cr_expect_eq(schema_parse(NULL, &s, err, sizeof err), THEUS_EINVAL);
    cr_expect_null(s);
    cr_expect(strstr(err, "NULL") != NULL, "%s", err);
    cr_expect_eq(schema_parse(design_example, NULL, err, sizeof err), THEUS_EINVAL);
    cr_expect_eq(schema_parse(NULL, NULL, NULL, 0), THEUS_EINVAL);
    schema_free(NULL); /* no-op */
}

/* ---- allocation failures ----------------------------------------------------------- */

static long g_fail_at, g_calls, g_live;

static void *counting_malloc(size_t n)
{
    if (++g_calls == g_fail_at)
        return NULL;
    void *p = malloc(n);
    if (p)
        g_live++;
    return p;
}

static void counting_free(void *p)
{
    g_live--;
    free(p);
}

Test(schema, every_allocation_failure)
{
    cr_assert_eq(theus_set_alloc_funcs(counting_malloc, counting_free), THEUS_OK);
    int done = 0;
    for (g_fail_at = 1; !done && g_fail_at < 100; g_fail_at++) {
        char err[256];
        theus_schema *s = (theus_schema *)&s;
        g_calls = 0;
        g_live = 0;
        int rc = schema_parse(design_example, &s, err, sizeof err);
        if (rc == THEUS_OK) {
            cr_expect_not_null(s);
            cr_expect_eq(s->nfields, 5);
            schema_free(s);
            done = 1;
        } else {
            cr_expect_eq(rc, THEUS_ENOMEM, "failing allocation %ld: rc %d", g_fail_at, rc);
            cr_expect_null(s, "failing allocation %ld", g_fail_at);
            cr_expect_str_eq(err, "schema: out of memory");
        }
        cr_expect_eq(g_live, 0, "failing allocation %ld leaks %ld blocks", g_fail_at, g_live);
    }
    cr_expect(done, "parsing never succeeded");
    cr_expect_gt(g_fail_at, 2, "at least one allocation was failed");
    cr_assert_eq(theus_set_alloc_funcs(NULL, NULL), THEUS_OK);
}

/* ---- the locator ------------------------------------------------------------------- */

static void expect_at(const char *text, const jsonloc_step *path, size_t depth, int at_key,
                      int line, int column)
{
    int l = -7, c = -7;
    int rc = jsonloc_find(text, path, depth, at_key, &l, &c);
    cr_expect_eq(rc, 0, "not found (depth %zu) in %s", depth, text);
    cr_expect(l == line && c == column, "depth %zu at_key %d: got %d:%d, want %d:%d in\n%s", depth,
              at_key, l, c, line, column, text);
}

Test(json_locate, escaped_keys)
{
    /* the wanted members sit after decoys whose raw text differs but whose decoded keys do not
     * match, and after decoys whose raw text matches inside strings */
    const char *text = "{\"a\\\"b\": 1, \"x\": \"\\\"ab\\\": 2\", \"a\\u0062c\": [10, 20],"
                       " \"s\\/l\\\\\": true, \"\\ud83d\\ude00\": null, \"\\u00e9t\\u00E9\": 5}";
    jsonloc_step p1[] = {{.key = "a\"b"}};
    expect_at(text, p1, 1, 0, 1, 10);
    expect_at(text, p1, 1, 1, 1, 2);
    jsonloc_step p2[] = {{.key = "abc"}, {.key = NULL, .index = 1}};
    expect_at(text, p2, 2, 0, 1, 48);
    expect_at(text, p2, 1, 1, 1, 31);
    jsonloc_step p3[] = {{.key = "s/l\\"}};
    expect_at(text, p3, 1, 0, 1, 63);
    jsonloc_step p4[] = {{.key = "\xf0\x9f\x98\x80"}};  /* U+1F600 from a surrogate pair */
    expect_at(text, p4, 1, 0, 1, 85);
    jsonloc_step p5[] = {{.key = "\xc3\xa9t\xc3\xa9"}};
    expect_at(text, p5, 1, 1, 1, 91);

    int l = 0, c = 0;
    jsonloc_step miss[] = {{.key = "ab"}};
    cr_expect_eq(jsonloc_find(text, miss, 1, 0, &l, &c), -1, "\"ab\" only occurs inside a string");
    jsonloc_step miss2[] = {{.key = "abc"}, {.key = NULL, .index = 2}};
    cr_expect_eq(jsonloc_find(text, miss2, 2, 0, &l, &c), -1);
    jsonloc_step miss3[] = {{.key = "abc"}, {.key = "x"}};
    cr_expect_eq(jsonloc_find(text, miss3, 2, 0, &l, &c), -1, "an array is not an object");
}

Test(json_locate, multi_line_and_nesting)
{
    const char *text = "\r\n"
                       "  {\r\n"
                       "\t\"skip\": {\"deep\": [[1, {\"x\": \"]}\"}], {}], \"k\": \"v\"},\n"
                       "    \"x\":\n"
                       "      [ 1,\n"
                       "        {\"y\" : \"caf\xc3\xa9\", \"z\": [true, false,\n"
                       "                                 null]}\n"
                       "      ]\n"
                       "  }\n";
    expect_at(text, NULL, 0, 0, 2, 3);
    jsonloc_step x[] = {{.key = "x"}, {.key = NULL, .index = 1}, {.key = "z"}, {.key = NULL, .index = 2}};
    expect_at(text, x, 1, 0, 5, 7);
    expect_at(text, x, 1, 1, 4, 5);
    expect_at(text, x, 2, 0, 6, 9);
    expect_at(text, x, 3, 0, 6, 29);
    expect_at(text, x, 3, 1, 6, 24);
    expect_at(text, x, 4, 0, 7, 34);
    jsonloc_step k[] = {{.key = "skip"}, {.key = "k"}};
    expect_at(text, k, 2, 1, 3, 43);
    expect_at(text, k, 2, 0, 3, 48);
    jsonloc_step d[] = {{.key = "skip"}, {.key = "deep"}, {.key = NULL, .index = 1}};
    expect_at(text, d, 3, 0, 3, 38);
}

Test(json_locate, bad_arguments_and_bad_text)
{
    int l = 0, c = 0;
    jsonloc_step a[] = {{.key = "a"}};
    cr_expect_eq(jsonloc_find(NULL, a, 1, 0, &l, &c), -1);
    cr_expect_eq(jsonloc_find("{}", NULL, 1, 0, &l, &c), -1);
    cr_expect_eq(jsonloc_find("{}", a, 1, 0, NULL, &c), -1);
    cr_expect_eq(jsonloc_find("{}", a, 1, 0, &l, NULL), -1);
    cr_expect_eq(jsonloc_find("   ", NULL, 0, 0, &l, &c), -1, "no value at all");
    /* truncated or broken text is never read past its end */
    static const char *const broken[] = {"{\"a", "{\"a\": ", "{\"b\": \"x", "{\"b\": [1, {",
                                         "{\"b\\", "{\"\\u12", "{\"\\ud800\\u0041\": 1, \"a\": 2}",
                                         "{\"b\" 1}", "[", "{\"b\": 1 \"a\": 2}"};
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++)
        cr_expect_eq(jsonloc_find(broken[i], a, 1, 0, &l, &c), -1, "%s", broken[i]);
}
