/* Host staging memory for transaction payloads (the CPU backend's stage/unstage).
 *
 * Payloads of up to STAGE_ARENA_MAX bytes are cut from 4 MiB blocks, one block at a time
 * per thread (a bump pointer); a block goes back to a small process-wide cache when its
 * last payload is freed, and the cache hands it out again with its pages already mapped.
 * Without it every transaction's staging paid a page fault per 4 KiB and a heap trim at
 * its end (64 KiB x 1k segments, docs/benchmarks.md: stage+commit 2.6 GB/s in run A,
 * 14 GB/s in run D, which has the arena and the replay changes). Larger payloads, and every payload while
 * theus_set_alloc_funcs hooks are installed (whose users count and own allocations), are
 * separate allocations.
 *
 * Thread-safe: any thread may free a payload another thread allocated. Fork-safe: the
 * child starts with the parent's blocks as they were (its own copy) and a usable lock. */
#ifndef THEUS_SRC_STAGE_ARENA_H
#define THEUS_SRC_STAGE_ARENA_H

#include <stddef.h>

#define STAGE_ARENA_MAX ((size_t)1 << 20)
/* Bytes of one block. */
#define STAGE_ARENA_BLOCK ((size_t)4 << 20)

/* @n bytes (n may be 0), 64-byte aligned, uninitialised; NULL when out of memory. */
void *stage_alloc(size_t n);
/* Free a pointer from stage_alloc (NULL: nothing). */
void stage_free(void *p);
/* Bytes of blocks the cache holds now (for tests and stats). */
size_t stage_cached_bytes(void);
/* Give every cached block back (blocks in use stay). */
void stage_trim(void);

#endif /* THEUS_SRC_STAGE_ARENA_H */
