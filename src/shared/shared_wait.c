/* Bounded waits on the locks of a shared segment. Another process can leave a lock held for
 * ever: stopped (SIGSTOP, a debugger), stuck, or gone without the kernel's robust-futex
 * clean-up (a lock word overwritten, or a segment copied while locked). These waits give up
 * after a bound and say who holds the lock. See docs/sharing.md, "What can block". */
#include "shared_impl.h"
#include "error.h"
#include "tsan_annotate.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WAIT_DEFAULT_MS 5000u
#define WAIT_MAX_MS 3600000u

uint64_t shared_wait_bound_ms(void)
{
    const char *v = getenv("THEUS_SHARED_WAIT_MS");
    if (!v || !*v)
        return WAIT_DEFAULT_MS;
    char *end = NULL;
    unsigned long long ms = strtoull(v, &end, 10);
    if (*end != '\0' || ms == 0)
        return WAIT_DEFAULT_MS;
    return ms > WAIT_MAX_MS ? WAIT_MAX_MS : ms;
}

/* The thread that the robust futex word of @m names as its owner, 0: none or unknown. The
 * kernel's robust-futex ABI keeps the owner's thread id in the word's low 30 bits. */
static pid_t lock_owner(pthread_mutex_t *m)
{
#if defined(__GLIBC__)
    unsigned w = (unsigned)__atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED);
    return (pid_t)(w & 0x3fffffffu);
#else
    (void)m;
    return 0;
#endif
}

/* Of thread @tid: its process (Tgid) and its run state ('R', 'S', 'T'...), from
 * /proc/<tid>/status. Returns 0 when the thread does not exist (or is a zombie). */
static int thread_of(pid_t tid, pid_t *tgid, char *state)
{
    char buf[1024];
    if (!shared_proc_read(tid, "status", buf, sizeof buf))
        return 0;
    const char *s = strstr(buf, "\nState:");
    const char *g = strstr(buf, "\nTgid:");
    if (!s || !g)
        return 0;
    s += 7;
    while (*s == ' ' || *s == '\t')
        s++;
    *state = *s;
    *tgid = (pid_t)strtol(g + 6, NULL, 10);
    return *state != 'Z' && *state != 'X';
}

/* Whether process @pid holds a lease slot in the segment at @base. */
static int attached(unsigned char *base, pid_t pid)
{
    const state_header *h = (const state_header *)base;
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    const lease_slot *l = shared_leases_at(base);
    for (uint32_t i = 0; i < a->max_leases; i++)
        if (atomic_load_explicit(&l[i].used, memory_order_acquire) && l[i].pid == (int32_t)pid)
            return 1;
    return 0;
}

static void deadline_in(struct timespec *ts, uint64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    uint64_t ns = (uint64_t)ts->tv_nsec + ms % 1000u * 1000000u;
    ts->tv_sec += (time_t)(ms / 1000u + ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
}

/* After a wait of @bound ms timed out: THEUS_OK to wait again (the holder is working, or
 * changed while it was looked at: someone made progress), or the error to give up with. */
static int judge_holder(unsigned char *base, pthread_mutex_t *m, const char *what,
                        const char *name, int wait_for_live, uint64_t bound)
{
    pid_t tid = lock_owner(m), pid = 0;
    char run = '?';
    int exists = tid != 0 && thread_of(tid, &pid, &run);
    int att = exists && attached(base, pid);
    if (lock_owner(m) != tid)
        return THEUS_OK;
    if (tid == 0)
        return err_set(NULL, THEUS_EBUSY, "shared state '%s': its %s was not free within %llu ms "
                       "(THEUS_SHARED_WAIT_MS)", name, what, (unsigned long long)bound);
    if (!exists)
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s': its %s is held by thread %d, "
                       "which does not exist: the lock word is stale (a corrupt or copied "
                       "segment)", name, what, (int)tid);
    if (run == 'T' || run == 't')
        return err_set(NULL, THEUS_EBUSY, "shared state '%s': its %s is held by process %d, "
                       "which is stopped; gave up after %llu ms (THEUS_SHARED_WAIT_MS)", name,
                       what, (int)pid, (unsigned long long)bound);
    if (wait_for_live && att)
        return THEUS_OK;
    return err_set(NULL, THEUS_EBUSY, "shared state '%s': its %s has been held by process %d%s "
                   "for over %llu ms (THEUS_SHARED_WAIT_MS)", name, what, (int)pid,
                   att ? "" : ", which is not attached to it,", (unsigned long long)bound);
}

int shared_lock(unsigned char *base, pthread_mutex_t *m, const char *what, const char *name,
                int wait_for_live, int spin)
{
    int e = spin ? state_lock_spin(m) : pthread_mutex_trylock(m);
    uint64_t bound = 0;
    int freed = 0;
    while (e == EBUSY || e == ETIMEDOUT) {
        /* Freed just as the wait timed out: try again (a word that reads free but cannot
         * be taken is judged after a few tries). */
        if (e == ETIMEDOUT && lock_owner(m) == 0 && freed++ < 3) {
            e = pthread_mutex_trylock(m);
            continue;
        }
        if (e == ETIMEDOUT) {
            /* Who holds it? A live, running process attached to the state is working (a
             * long commit, or one waiting for commit holds): when asked, keep waiting. */
            int rc = judge_holder(base, m, what, name, wait_for_live, bound);
            if (rc != THEUS_OK)
                return rc;
        }
        if (!bound)
            bound = shared_wait_bound_ms();
        struct timespec ts;
        deadline_in(&ts, bound);
        e = pthread_mutex_timedlock(m, &ts);
        if (e == EOWNERDEAD)
            TSAN_MUTEX_TAKEN_OVER(m);
    }
    if (e == EOWNERDEAD) {
        /* Its holder died: what it guarded is for the caller to check (the hold lock's
         * counters need nothing; the commit lock's redo record is recovered). */
        pthread_mutex_consistent(m);
        return THEUS_OK;
    }
    if (e == 0)
        return THEUS_OK;
    if (e == ENOTRECOVERABLE || e == EINVAL)
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s': its %s is unusable (%s): the "
                       "segment is corrupt", name, what, strerror(e));
    return err_set(NULL, THEUS_EBUSY, "shared state '%s': cannot take its %s: %s", name, what,
                   strerror(e));
}

int shared_hold_lock(unsigned char *base, const char *name)
{
    state_header *h = (state_header *)base;
    return shared_lock(base, &h->hold_lock, "hold lock", name, 0, 0);
}

int shared_lock_stale(pthread_mutex_t *m)
{
    pid_t tid = lock_owner(m), pid = 0;
    char run = '?';
    return tid != 0 && !thread_of(tid, &pid, &run);
}

int shared_commit_lock(theus_state *st)
{
    return shared_lock((unsigned char *)st->hdr, &st->hdr->commit_lock, "commit lock",
                       shared_area_of(st)->name, 1, st->lock_spin);
}
