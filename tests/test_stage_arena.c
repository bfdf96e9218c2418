/* The staging arena (src/stage_arena.c): alignment, contents that stay put while other
 * payloads come and go, blocks that go back to the cache and come out again, frees from
 * other threads and from threads that ended, the allocation hooks, and a fork. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <theus/theus.h>

#include "stage_arena.h"

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed * 31u + i * 7u);
}

static int holds(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed * 31u + i * 7u))
            return 0;
    return 1;
}

static size_t size_of(unsigned i)
{
    static const size_t sizes[] = {0, 1, 7, 64, 100, 4096, 65536, 65537, 300000,
                                   STAGE_ARENA_MAX, STAGE_ARENA_MAX + 1, 3u << 20};
    return sizes[i % (sizeof sizes / sizeof sizes[0])];
}

Test(stage_arena, aligned_and_kept)
{
    enum { N = 240 };
    unsigned char *p[N];
    for (unsigned i = 0; i < N; i++) {
        p[i] = stage_alloc(size_of(i));
        cr_assert_not_null(p[i]);
        cr_assert_eq((uintptr_t)p[i] % 64, 0, "payload %u is not 64-byte aligned", i);
        fill(p[i], size_of(i), i);
        if (i > 0)
            cr_assert_neq(p[i], p[i - 1]);
    }
    /* Free every other one, allocate again, and every survivor still holds its bytes. */
    for (unsigned i = 0; i < N; i += 2)
        stage_free(p[i]);
    for (unsigned i = 0; i < N; i += 2) {
        p[i] = stage_alloc(size_of(i));
        cr_assert_not_null(p[i]);
        fill(p[i], size_of(i), i + 1000);
    }
    for (unsigned i = 0; i < N; i++)
        cr_assert(holds(p[i], size_of(i), i % 2 ? i : i + 1000), "payload %u changed", i);
    for (unsigned i = 0; i < N; i++)
        stage_free(p[i]);
    stage_free(NULL);
}

Test(stage_arena, blocks_are_cached_and_trimmed)
{
    stage_trim();
    cr_assert_eq(stage_cached_bytes(), 0);
    enum { N = 200 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = stage_alloc(65536);   /* 12.5 MiB: several blocks */
        cr_assert_not_null(p[i]);
    }
    for (int i = 0; i < N; i++)
        stage_free(p[i]);
    /* Every block but this thread's current one is free again, and cached. */
    const size_t cached = stage_cached_bytes();
    cr_assert_geq(cached, (size_t)8 << 20, "only %zu bytes cached", cached);
    /* The same load again takes its blocks from the cache. */
    for (int i = 0; i < N; i++)
        p[i] = stage_alloc(65536);
    cr_assert_lt(stage_cached_bytes(), cached);
    for (int i = 0; i < N; i++)
        stage_free(p[i]);
    stage_trim();
    cr_assert_eq(stage_cached_bytes(), 0);
}

/* ---- threads -------------------------------------------------------------------------- */

typedef struct batch {
    unsigned char *p[64];
    unsigned seed;
} batch;

static void *make_batch(void *arg)
{
    batch *b = arg;
    for (unsigned i = 0; i < 64; i++) {
        b->p[i] = stage_alloc(size_of(i + b->seed));
        if (b->p[i])
            fill(b->p[i], size_of(i + b->seed), i + b->seed);
    }
    return NULL;   /* the thread ends with a current block that payloads still use */
}

Test(stage_arena, freed_by_another_thread_after_the_maker_ended)
{
    batch b[4];
    pthread_t t[4];
    for (unsigned k = 0; k < 4; k++) {
        b[k].seed = 100 * k;
        cr_assert_eq(pthread_create(&t[k], NULL, make_batch, &b[k]), 0);
    }
    for (unsigned k = 0; k < 4; k++)
        cr_assert_eq(pthread_join(t[k], NULL), 0);
    stage_trim();
    for (unsigned k = 0; k < 4; k++)
        for (unsigned i = 0; i < 64; i++) {
            cr_assert_not_null(b[k].p[i]);
            cr_assert(holds(b[k].p[i], size_of(i + b[k].seed), i + b[k].seed));
            stage_free(b[k].p[i]);
        }
    stage_trim();
}

static void *make_one(void *arg)
{
    *(void **)arg = stage_alloc(1000);
    return NULL;   /* ends while its block (its only one) holds the payload */
}

Test(stage_arena, block_of_an_ended_thread_comes_back)
{
    void *p[4];
    pthread_t t[4];
    for (int k = 0; k < 4; k++)
        cr_assert_eq(pthread_create(&t[k], NULL, make_one, &p[k]), 0);
    for (int k = 0; k < 4; k++)
        cr_assert_eq(pthread_join(t[k], NULL), 0);
    stage_trim();
    for (int k = 0; k < 4; k++) {
        cr_assert_not_null(p[k]);
        stage_free(p[k]);
    }
    cr_assert_eq(stage_cached_bytes(), 4 * STAGE_ARENA_BLOCK,
                 "%zu bytes cached after the four threads' payloads went",
                 stage_cached_bytes());
    stage_trim();
}

static void *churn(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    unsigned char *live[16] = {0};
    size_t len[16] = {0};
    for (unsigned i = 0; i < 4000; i++) {
        seed = seed * 1103515245u + 12345u;
        const unsigned k = (seed >> 8) % 16;
        if (live[k]) {
            if (!holds(live[k], len[k], k + (unsigned)len[k]))
                return (void *)1;
            stage_free(live[k]);
        }
        len[k] = (seed >> 12) % 20000;
        live[k] = stage_alloc(len[k]);
        if (!live[k])
            return (void *)1;
        fill(live[k], len[k], k + (unsigned)len[k]);
    }
    for (unsigned k = 0; k < 16; k++)
        stage_free(live[k]);
    return NULL;
}

Test(stage_arena, concurrent_churn)
{
    pthread_t t[4];
    for (uintptr_t k = 0; k < 4; k++)
        cr_assert_eq(pthread_create(&t[k], NULL, churn, (void *)(k + 1)), 0);
    for (int k = 0; k < 4; k++) {
        void *r = NULL;
        cr_assert_eq(pthread_join(t[k], &r), 0);
        cr_assert_null(r, "thread %d saw a payload change under it", k);
    }
}

/* ---- hooks and fork ------------------------------------------------------------------- */

static long g_live, g_calls;

static void *count_malloc(size_t n)
{
    g_calls++;
    void *p = malloc(n);
    if (p)
        g_live++;
    return p;
}

static void count_free(void *p)
{
    if (p) {
        g_live--;
        free(p);
    }
}

Test(stage_arena, hooks_see_every_payload)
{
    cr_assert_eq(theus_set_alloc_funcs(count_malloc, count_free), THEUS_OK);
    g_live = g_calls = 0;
    void *a = stage_alloc(100), *b = stage_alloc(1 << 16);
    cr_assert(a && b);
    cr_assert_eq(g_calls, 2);
    cr_assert_eq(g_live, 2);
    stage_free(a);
    stage_free(b);
    cr_assert_eq(g_live, 0);
    cr_assert_eq(theus_set_alloc_funcs(NULL, NULL), THEUS_OK);
}

Test(stage_arena, fork_child_allocates)
{
    void *keep = stage_alloc(1000);   /* this thread has a current block */
    cr_assert_not_null(keep);
    fill(keep, 1000, 5);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int ok = holds(keep, 1000, 5);
        void *q[100];
        for (int i = 0; i < 100; i++) {
            q[i] = stage_alloc(50000);
            ok = ok && q[i] != NULL;
            if (q[i])
                fill(q[i], 50000, (unsigned)i);
        }
        for (int i = 0; i < 100; i++) {
            ok = ok && q[i] && holds(q[i], 50000, (unsigned)i);
            stage_free(q[i]);
        }
        stage_free(keep);
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's arena failed");
    cr_assert(holds(keep, 1000, 5));
    stage_free(keep);
}
