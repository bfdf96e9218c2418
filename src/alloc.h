/* Internal allocation entry points: every host allocation of theus goes through the hooks
 * set with theus_set_alloc_funcs, so the allocation-failure tests can reach all of them. */
#ifndef THEUS_SRC_ALLOC_H
#define THEUS_SRC_ALLOC_H
#include <stddef.h>

void *theus_xmalloc(size_t n);              /* NULL on failure or n == 0 overflow */
void *theus_xcalloc(size_t count, size_t size); /* zeroed; NULL on failure or overflow */
void  theus_xfree(void *p);                 /* NULL is a no-op */
char *theus_xstrdup(const char *s);
/* Whether theus_set_alloc_funcs installed hooks other than libc's. */
int theus_alloc_hooked(void);
/* Ask for transparent huge pages on the 2 MiB-aligned interior of [p, p + n), before
 * anything touches it. Works on whatever the hooks returned; a refusal (not anonymous
 * memory, THP off, no MADV_HUGEPAGE) only means ordinary pages. */
void theus_advise_huge(void *p, size_t n);

#endif
