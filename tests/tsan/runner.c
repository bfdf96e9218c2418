/* The test runner of the ThreadSanitizer build (see tests/tsan/criterion/criterion.h for why
 * Criterion itself is not used there): runs every registered test in its own forked child of
 * this single-threaded process, one at a time, and reports each outcome. A child's exit
 * status says how its test went: 0 passed, 1 a check failed, 77 skipped, TSan's exit code
 * (66 unless TSAN_OPTIONS sets another) a data race or another TSan report; a signal or a
 * timeout is a failure too. The program exits 1 when any test failed.
 *
 * Options: --filter=GLOB (matched against "suite/name"; several: any of them), --list;
 * Criterion's --jobs N is accepted and ignored (tests run one at a time anyway).
 * THEUS_TSAN_SKIP in the environment: GLOB[:GLOB...] of tests to report as skipped without
 * running them (.ci/test.d/20-tsan.sh says which, and why). */
#include <criterion/criterion.h>
#include <criterion/hooks.h>

#include <fnmatch.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_SKIPPED = 77 };

static struct tsan_test *tests;
static struct tsan_suite *suites;
static struct tsan_hook *hooks;

/* The child's state while one test runs (single test per process). */
static pthread_t test_thread;
static jmp_buf test_jump;
static volatile int test_failed;
static volatile int test_skipped;

void tsan_register_test(struct tsan_test *t)
{
    t->next = tests;
    tests = t;
}

void tsan_register_suite(struct tsan_suite *s)
{
    s->next = suites;
    suites = s;
}

void tsan_register_hook(struct tsan_hook *h)
{
    h->next = hooks;
    hooks = h;
}

static void run_hooks(enum tsan_hook_kind kind)
{
    for (struct tsan_hook *h = hooks; h; h = h->next)
        if (h->kind == kind)
            h->call(NULL);
}

static void leave_test(void)
{
    fflush(stdout);
    fflush(stderr);
    /* A check that fails on one of the test's own threads cannot unwind the test thread's
     * stack: end the process now (as a crash would), the runner reports the failure. */
    if (!pthread_equal(pthread_self(), test_thread))
        _exit(1);
    longjmp(test_jump, 1);
}

void tsan_check(bool ok, bool fatal, const char *file, int line, const char *expr,
                const char *fmt, ...)
{
    if (ok)
        return;
    test_failed = 1;
    fprintf(stderr, "%s:%d: check failed: %s", file, line, expr);
    if (fmt[0] != '\0') {
        va_list ap;
        va_start(ap, fmt);
        fputs(": ", stderr);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
    if (fatal)
        leave_test();
}

void tsan_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("skipped: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    test_skipped = 1;
    leave_test();
}

void tsan_log(const char *level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[%s] ", level);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Is @full named by one of the ':'-separated globs of @list? */
static int listed(const char *list, const char *full)
{
    char buf[4096];
    if (!list || snprintf(buf, sizeof buf, "%s", list) >= (int)sizeof buf)
        return 0;
    char *save = NULL;
    for (char *g = strtok_r(buf, ":", &save); g; g = strtok_r(NULL, ":", &save))
        if (fnmatch(g, full, 0) == 0)
            return 1;
    return 0;
}

static const struct tsan_suite *find_suite(const char *name)
{
    for (const struct tsan_suite *s = suites; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

/* In the child. As in Criterion: the suite's init, then the test's; the test's fini, then
 * the suite's; the finis run even when the body (or an init) failed a check. */
static const struct tsan_test *cur_test;
static const struct tsan_suite *cur_suite;

static void run_in_child(const struct tsan_test *t)
{
    static volatile int phase;
    cur_test = t;
    cur_suite = find_suite(t->suite);
    test_thread = pthread_self();
    phase = 0;
    (void)setjmp(test_jump);
    if (phase == 0) {
        phase = 1;
        if (cur_suite && cur_suite->opts.init)
            cur_suite->opts.init();
        if (cur_test->opts.init)
            cur_test->opts.init();
        cur_test->body();
    }
    if (phase == 1) {
        phase = 2;
        if (cur_test->opts.fini)
            cur_test->opts.fini();
        if (cur_suite && cur_suite->opts.fini)
            cur_suite->opts.fini();
    }
    fflush(stdout);
    fflush(stderr);
    exit(test_failed ? 1 : test_skipped ? EXIT_SKIPPED : 0);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int by_name(const void *a, const void *b)
{
    const struct tsan_test *x = *(const struct tsan_test *const *)a;
    const struct tsan_test *y = *(const struct tsan_test *const *)b;
    int c = strcmp(x->suite, y->suite);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv)
{
    const char *filters[64];
    int nfilters = 0, list = 0;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--filter=", 9) == 0 && nfilters < 64)
            filters[nfilters++] = argv[i] + 9;
        else if (strcmp(argv[i], "--list") == 0 || strcmp(argv[i], "-l") == 0)
            list = 1;
        else if (strcmp(argv[i], "--jobs") == 0 || strcmp(argv[i], "-j") == 0)
            i++;
        else if (strncmp(argv[i], "--jobs=", 7) != 0 && strncmp(argv[i], "-j", 2) != 0) {
            fprintf(stderr, "usage: %s [--filter=SUITE/NAME-GLOB] [--list] [--jobs N]\n", argv[0]);
            return 2;
        }
    }

    size_t n = 0;
    for (struct tsan_test *t = tests; t; t = t->next)
        n++;
    struct tsan_test **order = calloc(n ? n : 1, sizeof *order);
    if (!order)
        return 2;
    n = 0;
    for (struct tsan_test *t = tests; t; t = t->next)
        order[n++] = t;
    qsort(order, n, sizeof *order, by_name);

    int passed = 0, failed = 0, skipped = 0;
    if (!list)
        run_hooks(TSAN_PRE_ALL);
    for (size_t i = 0; i < n; i++) {
        const struct tsan_test *t = order[i];
        char full[512];
        snprintf(full, sizeof full, "%s/%s", t->suite, t->name);
        int wanted = nfilters == 0;
        for (int f = 0; f < nfilters && !wanted; f++)
            wanted = fnmatch(filters[f], full, 0) == 0;
        if (!wanted)
            continue;
        if (list) {
            printf("%s\n", full);
            continue;
        }
        const struct tsan_suite *s = find_suite(t->suite);
        if (t->opts.disabled || (s && s->opts.disabled)) {
            printf("[SKIP] %s (disabled)\n", full);
            skipped++;
            continue;
        }
        if (listed(getenv("THEUS_TSAN_SKIP"), full)) {
            printf("[SKIP] %s (THEUS_TSAN_SKIP)\n", full);
            skipped++;
            continue;
        }
        double timeout = t->opts.timeout > 0 ? t->opts.timeout : s ? s->opts.timeout : 0;
        fflush(stdout);
        fflush(stderr);
        double t0 = now_s();
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            if (timeout > 0)
                alarm((unsigned)ceil(timeout));
            run_in_child(t);
        }
        int status = 0;
        while (waitpid(pid, &status, 0) < 0)
            ;
        double dt = now_s() - t0;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            printf("[PASS] %s (%.2f s)\n", full, dt);
            passed++;
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SKIPPED) {
            printf("[SKIP] %s\n", full);
            skipped++;
        } else if (WIFEXITED(status)) {
            printf("[FAIL] %s: exit status %d%s (%.2f s)\n", full, WEXITSTATUS(status),
                   WEXITSTATUS(status) == 1 ? " (a check failed)" : " (ThreadSanitizer report?)", dt);
            failed++;
        } else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
            printf("[FAIL] %s: timed out after %.0f s\n", full, timeout);
            failed++;
        } else {
            printf("[FAIL] %s: killed by signal %d (%.2f s)\n", full,
                   WIFSIGNALED(status) ? WTERMSIG(status) : -1, dt);
            failed++;
        }
    }
    free(order);
    if (!list)
        run_hooks(TSAN_POST_ALL);
    if (!list)
        printf("[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Skipped: %d\n",
               passed + failed, passed, failed, skipped);
    return failed ? 1 : 0;
}
