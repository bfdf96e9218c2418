/* The part of Criterion's API the threaded suites use, for the ThreadSanitizer build only
 * (THEUS_SANITIZE=thread, .ci/test.d/20-tsan.sh); tests/tsan/runner.c runs the tests.
 *
 * Why not Criterion itself: it cannot start under TSan. Its BoxFort sandbox puts an
 * inheritable arena at random fixed addresses that TSan reserves for its shadow memory
 * ("Could not initialize inheritable arena", Snaipe/Criterion#274, open), and re-executes
 * the test program for every test. This header keeps the suites' source unchanged: the
 * TSan build puts tests/tsan first on the include path, so <criterion/criterion.h> is this
 * file. Each test runs in its own forked child of a single-threaded runner, as Criterion
 * does; a failed cr_assert ends the test (its .fini still runs), a failed cr_expect marks it
 * failed and goes on, and a TSan report fails it (TSan's exit code).
 *
 * Supported: Test(suite, name, .init, .fini, .timeout, .disabled, .description),
 * TestSuite(suite, same options), cr_assert / cr_assert_not / cr_expect, the comparisons
 * cr_{assert,expect}_{eq,neq,lt,leq,gt,geq}, _null, _not_null, _str_eq, _str_neq, _arr_eq,
 * cr_log_info / cr_log_warn / cr_log_error, cr_skip_test; ReportHook(PRE_ALL / POST_ALL) in
 * hooks.h. A suite that needs more fails to compile in the TSan build: add it here (or
 * leave that suite out of THEUS_TSAN_SUITES). */
#ifndef THEUS_TSAN_CRITERION_H
#define THEUS_TSAN_CRITERION_H

/* "" is the format when a check has no message: not a mistake here. */
#pragma GCC diagnostic ignored "-Wformat-zero-length"

/* What Criterion's header brings in, which the suites rely on. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tsan_test_options {
    int tsan_unused_; /* lets Test(s, n) with no options expand to a valid initializer */
    void (*init)(void);
    void (*fini)(void);
    double timeout;   /* seconds; 0: none (ctest's TIMEOUT still applies) */
    bool disabled;
    const char *description;
};

struct tsan_test {
    const char *suite;
    const char *name;
    void (*body)(void);
    struct tsan_test_options opts;
    struct tsan_test *next;
};

struct tsan_suite {
    const char *name;
    struct tsan_test_options opts;
    struct tsan_suite *next;
};

void tsan_register_test(struct tsan_test *t);
void tsan_register_suite(struct tsan_suite *s);
/* ok == false: report "file:line: expr: message" and, when fatal, end the test. */
void tsan_check(bool ok, bool fatal, const char *file, int line, const char *expr,
                const char *fmt, ...) __attribute__((format(printf, 6, 7)));
void tsan_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tsan_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define Test(suite, name, ...)                                                              \
    static void tsan_body_##suite##_##name(void);                                           \
    static struct tsan_test tsan_test_##suite##_##name = {                                  \
        #suite, #name, tsan_body_##suite##_##name, {.tsan_unused_ = 0, __VA_ARGS__}, NULL}; \
    __attribute__((constructor)) static void tsan_reg_##suite##_##name(void)                \
    {                                                                                       \
        tsan_register_test(&tsan_test_##suite##_##name);                                    \
    }                                                                                       \
    static void tsan_body_##suite##_##name(void)

#define TestSuite(suite, ...)                                                              \
    static struct tsan_suite tsan_suite_##suite = {#suite, {.tsan_unused_ = 0, __VA_ARGS__}, \
                                                   NULL};                                   \
    __attribute__((constructor)) static void tsan_reg_suite_##suite(void)                   \
    {                                                                                       \
        tsan_register_suite(&tsan_suite_##suite);                                           \
    }

/* The optional message: `"" __VA_ARGS__` is "" when none is given, and otherwise the
 * caller's format string (a literal, as with Criterion) with its arguments. */
#define TSAN_CHECK_(fatal, cond, expr, ...) \
    tsan_check((cond) ? true : false, fatal, __FILE__, __LINE__, expr, "" __VA_ARGS__)

#define cr_assert(c, ...)          TSAN_CHECK_(true, (c), #c, __VA_ARGS__)
#define cr_expect(c, ...)          TSAN_CHECK_(false, (c), #c, __VA_ARGS__)
#define cr_assert_not(c, ...)      TSAN_CHECK_(true, !(c), "!(" #c ")", __VA_ARGS__)
#define cr_expect_not(c, ...)      TSAN_CHECK_(false, !(c), "!(" #c ")", __VA_ARGS__)
#define TSAN_CMP_(f, a, op, b, ...) TSAN_CHECK_(f, (a) op (b), #a " " #op " " #b, __VA_ARGS__)
#define cr_assert_eq(a, b, ...)    TSAN_CMP_(true, a, ==, b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...)   TSAN_CMP_(true, a, !=, b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...)    TSAN_CMP_(true, a, <, b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...)   TSAN_CMP_(true, a, <=, b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...)    TSAN_CMP_(true, a, >, b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...)   TSAN_CMP_(true, a, >=, b, __VA_ARGS__)
#define cr_expect_eq(a, b, ...)    TSAN_CMP_(false, a, ==, b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...)   TSAN_CMP_(false, a, !=, b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...)    TSAN_CMP_(false, a, <, b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...)   TSAN_CMP_(false, a, <=, b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...)    TSAN_CMP_(false, a, >, b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...)   TSAN_CMP_(false, a, >=, b, __VA_ARGS__)
#define cr_assert_null(p, ...)     TSAN_CHECK_(true, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) TSAN_CHECK_(true, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_expect_null(p, ...)     TSAN_CHECK_(false, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_expect_not_null(p, ...) TSAN_CHECK_(false, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) \
    TSAN_CHECK_(true, strcmp((a), (b)) == 0, #a " equals " #b, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...) \
    TSAN_CHECK_(true, strcmp((a), (b)) != 0, #a " differs from " #b, __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...) \
    TSAN_CHECK_(false, strcmp((a), (b)) == 0, #a " equals " #b, __VA_ARGS__)
#define cr_assert_arr_eq(a, b, size, ...) \
    TSAN_CHECK_(true, memcmp((a), (b), (size)) == 0, #a " equals " #b, __VA_ARGS__)
#define cr_expect_arr_eq(a, b, size, ...) \
    TSAN_CHECK_(false, memcmp((a), (b), (size)) == 0, #a " equals " #b, __VA_ARGS__)

#define cr_skip_test(...)  tsan_skip("" __VA_ARGS__)
#define cr_log_info(...)   tsan_log("LOG", __VA_ARGS__)
#define cr_log_warn(...)   tsan_log("WARN", __VA_ARGS__)
#define cr_log_error(...)  tsan_log("ERR", __VA_ARGS__)

#endif
