/* Futex words: wake-ups between threads or processes (state_futex_wait/_wake, state.h). */
#include "state.h"
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Wake-ups that work between processes and survive a waiter's death
 * (a process-shared condition variable does not: glibc's can hang its next signaller when
 * a waiter is killed). */

void state_futex_wait(_Atomic uint32_t *word, uint32_t seen, int pshared, uint64_t timeout_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000ull),
                          .tv_nsec = (long)(timeout_ns % 1000000000ull)};
    syscall(SYS_futex, (uint32_t *)word, pshared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE, seen,
            timeout_ns ? &ts : NULL, NULL, 0);
}

void state_futex_wake(_Atomic uint32_t *word, int pshared)
{
    atomic_fetch_add_explicit(word, 1u, memory_order_release);
    syscall(SYS_futex, (uint32_t *)word, pshared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE, INT_MAX,
            NULL, NULL, 0);
}
