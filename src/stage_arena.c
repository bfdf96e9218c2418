/* Staging memory (see stage_arena.h). Every payload has a 64-byte header just before it
 * that says where it came from: a block (counted reference), its own libc allocation, or
 * the user's allocation hooks. A block holds one reference for every live payload plus one
 * while it is some thread's current block; whoever drops the last one recycles it. */
#include "stage_arena.h"
#include "alloc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Under AddressSanitizer a block's free space is poisoned, so that a use of a payload
 * after its unstage is still caught although its memory stays mapped. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define BLOCK_BYTES STAGE_ARENA_BLOCK
#define ALIGN 64u
/* Payloads from this size on ask for transparent huge pages. */
#define HUGE_PAYLOAD ((size_t)4 << 20)
/* Blocks the cache keeps (64 MiB). */
#define CACHE_BLOCKS 16

enum { FROM_BLOCK = 1, FROM_LIBC = 2, FROM_HOOKS = 3 };

typedef struct block {
    atomic_size_t refs;
    size_t used;                 /* bump offset into data */
    struct block *next;          /* in the cache */
    unsigned char *data;         /* 64-byte aligned, BLOCK_BYTES */
    void *raw;                   /* what malloc returned */
} block;

typedef struct hdr {
    block *blk;                  /* FROM_BLOCK */
    void *raw;                   /* FROM_LIBC, FROM_HOOKS */
    size_t need;                 /* FROM_BLOCK: bytes of the block it took, header included */
    uint32_t from;
    unsigned char pad[ALIGN - sizeof(uint32_t) - 2 * sizeof(void *) - sizeof(size_t)];
} hdr;
_Static_assert(sizeof(hdr) == ALIGN, "the header keeps payloads aligned");

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static block *g_cache;
static int g_ncache;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_key;
static int g_key_ok;
static _Thread_local block *t_cur;

static void block_destroy(block *b)
{
    UNPOISON(b->data, BLOCK_BYTES);
    free(b->raw);
}

static void block_unref(block *b)
{
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1)
        return;
    POISON(b->data, BLOCK_BYTES);
    pthread_mutex_lock(&g_mu);
    if (g_ncache < CACHE_BLOCKS) {
        b->used = 0;
        b->next = g_cache;
        g_cache = b;
        g_ncache++;
        b = NULL;
    }
    pthread_mutex_unlock(&g_mu);
    if (b)
        block_destroy(b);
}

/* A thread that ends gives up its current block. */
static void thread_gone(void *v)
{
    block *b = v;
    if (b)
        block_unref(b);
}

static void at_fork_prepare(void)
{
    pthread_mutex_lock(&g_mu);
}

static void at_fork_release(void)
{
    pthread_mutex_unlock(&g_mu);
}

static void init_once(void)
{
    g_key_ok = pthread_key_create(&g_key, thread_gone) == 0;
    (void)pthread_atfork(at_fork_prepare, at_fork_release, at_fork_release);
}

static block *block_take(void)
{
    pthread_mutex_lock(&g_mu);
    block *b = g_cache;
    if (b) {
        g_cache = b->next;
        g_ncache--;
    }
    pthread_mutex_unlock(&g_mu);
    if (!b) {
        void *raw = malloc(sizeof(block) + BLOCK_BYTES + 2 * ALIGN);
        if (!raw)
            return NULL;
        b = raw;
        b->raw = raw;
        b->data = (unsigned char *)(((uintptr_t)(b + 1) + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1));
        POISON(b->data, BLOCK_BYTES);
    }
    atomic_init(&b->refs, 1);   /* the owning thread's reference */
    b->used = 0;
    b->next = NULL;
    return b;
}

static void *single(size_t n, int hooked)
{
    if (n > SIZE_MAX - 2 * ALIGN)
        return NULL;
    void *raw = hooked ? theus_xmalloc(n + 2 * ALIGN) : malloc(n + 2 * ALIGN);
    if (!raw)
        return NULL;
    /* A big payload is fresh memory that its copy faults in: 2 MiB pages fault 512 times
     * less often. */
    if (n >= HUGE_PAYLOAD)
        theus_advise_huge(raw, n + 2 * ALIGN);
    hdr *h = (hdr *)(((uintptr_t)raw + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1));
    h->from = hooked ? FROM_HOOKS : FROM_LIBC;
    h->blk = NULL;
    h->raw = raw;
    h->need = 0;
    return h + 1;
}

void *stage_alloc(size_t n)
{
    const int hooked = theus_alloc_hooked();
    if (hooked || n > STAGE_ARENA_MAX)
        return single(n, hooked);
    pthread_once(&g_once, init_once);
    const size_t need = sizeof(hdr) + ((n + ALIGN - 1) & ~(size_t)(ALIGN - 1));
    block *b = t_cur;
    if (!b || b->used + need > BLOCK_BYTES) {
        block *nb = g_key_ok ? block_take() : NULL;
        if (!nb)
            return single(n, 0);
        if (pthread_setspecific(g_key, nb) != 0) {
            block_unref(nb);
            return single(n, 0);
        }
        t_cur = nb;
        if (b)
            block_unref(b);
        b = nb;
    }
    hdr *h = (hdr *)(void *)(b->data + b->used);
    UNPOISON(h, need);
    b->used += need;
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    h->from = FROM_BLOCK;
    h->blk = b;
    h->raw = NULL;
    h->need = need;
    return h + 1;
}

void stage_free(void *p)
{
    if (!p)
        return;
    hdr *h = (hdr *)p - 1;
    switch (h->from) {
    case FROM_BLOCK: {
        block *b = h->blk;
        /* Poisoned now: the block lives on while other payloads use it. */
        POISON(h, h->need);
        block_unref(b);
        break;
    }
    case FROM_LIBC:
        free(h->raw);
        break;
    default:
        theus_xfree(h->raw);
        break;
    }
}

size_t stage_cached_bytes(void)
{
    pthread_mutex_lock(&g_mu);
    size_t n = (size_t)g_ncache * BLOCK_BYTES;
    pthread_mutex_unlock(&g_mu);
    return n;
}

void stage_trim(void)
{
    pthread_mutex_lock(&g_mu);
    block *b = g_cache;
    g_cache = NULL;
    g_ncache = 0;
    pthread_mutex_unlock(&g_mu);
    while (b) {
        block *next = b->next;
        block_destroy(b);
        b = next;
    }
}
