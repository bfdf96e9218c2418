/* Criterion's report hooks for the ThreadSanitizer build (see criterion.h beside this file):
 * only PRE_ALL and POST_ALL, which tests/tsan/runner.c calls in the runner process before
 * the first test and after the last. Their argument is NULL there (the suites' hooks do not
 * look at it); any other hook kind fails to compile. */
#ifndef THEUS_TSAN_CRITERION_HOOKS_H
#define THEUS_TSAN_CRITERION_HOOKS_H

#include <criterion/criterion.h>

struct criterion_test_set;
struct criterion_global_stats;

enum tsan_hook_kind { TSAN_PRE_ALL, TSAN_POST_ALL };

struct tsan_hook {
    enum tsan_hook_kind kind;
    void (*call)(void *arg);
    struct tsan_hook *next;
};

void tsan_register_hook(struct tsan_hook *h);

#define TSAN_HOOK_ARG_PRE_ALL struct criterion_test_set *
#define TSAN_HOOK_ARG_POST_ALL struct criterion_global_stats *

#define ReportHook(kind) TSAN_HOOK_(kind, __LINE__)
#define TSAN_HOOK_(kind, line) TSAN_HOOK__(kind, line)
#define TSAN_HOOK__(kind, line)                                                     \
    static void tsan_hook_##line(TSAN_HOOK_ARG_##kind);                             \
    static void tsan_hook_call_##line(void *arg)                                    \
    {                                                                               \
        tsan_hook_##line(arg);                                                      \
    }                                                                               \
    __attribute__((constructor)) static void tsan_hook_reg_##line(void)             \
    {                                                                               \
        static struct tsan_hook h = {TSAN_##kind, tsan_hook_call_##line, NULL};     \
        tsan_register_hook(&h);                                                     \
    }                                                                               \
    static void tsan_hook_##line

#endif
