/* Allocation hooks (theus_set_alloc_funcs) and the internal wrappers that use them. */
#include "alloc.h"
#include "theus/theus.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static theus_malloc_fn g_malloc = malloc;
static theus_free_fn g_free = free;

int theus_set_alloc_funcs(theus_malloc_fn m, theus_free_fn f)
{
    if ((m == NULL) != (f == NULL))
        return THEUS_EINVAL;
    g_malloc = m ? m : malloc;
    g_free = f ? f : free;
    return THEUS_OK;
}

int theus_alloc_hooked(void)
{
    return g_malloc != malloc;
}

void theus_advise_huge(void *p, size_t n)
{
#ifdef MADV_HUGEPAGE
    const uintptr_t page = (uintptr_t)2 << 20;
    const uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1);
    const uintptr_t hi = ((uintptr_t)p + n) & ~(page - 1);
    if (hi > lo)
        (void)madvise((char *)p + (lo - (uintptr_t)p), hi - lo, MADV_HUGEPAGE);
#else
    (void)p;
    (void)n;
#endif
}

void *theus_xmalloc(size_t n)
{
    return g_malloc(n ? n : 1);
}

void *theus_xcalloc(size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size)
        return NULL;
    size_t n = count * size;
    void *p = g_malloc(n ? n : 1);
    if (p)
        memset(p, 0, n ? n : 1);
    return p;
}

void theus_xfree(void *p)
{
    if (p)
        g_free(p);
}

char *theus_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = theus_xmalloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}
