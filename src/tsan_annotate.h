/* ThreadSanitizer annotations for the places where theus races on purpose; they compile to
 * nothing unless the build uses -fsanitize=thread (THEUS_SANITIZE=thread).
 *
 * The first such place is the optimistic read of theus_tx_read: it copies a field and
 * probes the commit log while a commit may be replaying into them, and keeps the copy only
 * when the replay sequence (a seqlock, src/state.c) shows that no replay overlapped it. The
 * torn copies it throws away are data races by the letter of C11 and are reported as such;
 * TSAN_IGNORE_BEGIN/END around that window tell TSan not to record the window's memory
 * accesses. The second place is the whole-state writer (src/durable/stsave.c): it copies
 * fields to a file while commits go on, and copies again, with commits held, every block
 * the block map shows written since. Synchronization (atomics, locks) is still seen, and the writer side is still
 * checked against every other access. Do not use them anywhere else without the same kind
 * of argument, written next to the use. */
#ifndef THEUS_TSAN_ANNOTATE_H
#define THEUS_TSAN_ANNOTATE_H

#if defined(__SANITIZE_THREAD__)
#define THEUS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define THEUS_TSAN 1
#endif
#endif

#ifdef THEUS_TSAN
/* From TSan's runtime (dynamic annotations): ignore this thread's memory accesses
 * between Begin and End (they nest). */
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
#define TSAN_IGNORE_BEGIN() AnnotateIgnoreReadsBegin(__FILE__, __LINE__)
#define TSAN_IGNORE_END()   AnnotateIgnoreReadsEnd(__FILE__, __LINE__)
/* TSan's pthread_mutex_timedlock interceptor records the lock only when it returns 0: a
 * robust mutex taken over from a dead owner (EOWNERDEAD) is announced by hand, as its
 * pthread_mutex_lock interceptor does (else the unlock is reported). */
void __tsan_mutex_pre_lock(void *addr, unsigned flags);
void __tsan_mutex_post_lock(void *addr, unsigned flags, int recursion);
#define TSAN_MUTEX_TAKEN_OVER(m)                                                           \
    (__tsan_mutex_pre_lock((m), 1u << 4 /* try_lock */),                                   \
     __tsan_mutex_post_lock((m), 1u << 4, 0))
#else
#define TSAN_MUTEX_TAKEN_OVER(m) ((void)0)
#define TSAN_IGNORE_BEGIN() ((void)0)
#define TSAN_IGNORE_END()   ((void)0)
#endif

#endif
