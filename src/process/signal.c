/* Signals and waits: named counters bumped by published commits, and waiters that sleep
 * until a signal's count or a version passes a value. Delivery happens in the publish step
 * only, so a refused commit never signals. A private state keeps its counters here and its
 * waiters sleep on a condition variable (CLOCK_MONOTONIC deadlines); a shared state keeps
 * them in its segment and its waiters, in any process, sleep on futex words there
 * (shared_signal.h): its commits stage their signals before the replay and deliver them
 * after publish, in the engine's published listener (after the log's sync). */
#include "process.h"
#include "alloc.h"
#include "error.h"
#include "shared.h"
#include "shared_signal.h"
#include <errno.h>
#include <string.h>
#include <time.h>

int sig_init(sig_table *t, theus_state *st)
{
    memset(t, 0, sizeof *t);
    t->st = st;
    t->shared = state_pshared(st);
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        return THEUS_ENOMEM;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int ok = pthread_cond_init(&t->cv, &ca) == 0;
    if (ok && pthread_cond_init(&t->left, NULL) != 0) {
        pthread_cond_destroy(&t->cv);
        ok = 0;
    }
    pthread_condattr_destroy(&ca);
    if (!ok)
        return THEUS_ENOMEM;
    pthread_mutex_init(&t->mu, NULL);
    return THEUS_OK;
}

void sig_fini(sig_table *t)
{
    theus_xfree(t->v);
    pthread_cond_destroy(&t->left);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
}

void sig_close(sig_table *t)
{
    pthread_mutex_lock(&t->mu);
    t->closing = 1;
    pthread_cond_broadcast(&t->cv);
    /* This engine's waiters on a shared state sleep on the segment's words: bump them all
     * (waiters of other processes look again and sleep on). */
    if (t->shared && t->waiters)
        shared_signal_wake_all(shared_area_of(t->st));
    while (t->waiters)
        pthread_cond_wait(&t->left, &t->mu);
    pthread_mutex_unlock(&t->mu);
}

int sig_check_name(theus_engine *e, const char *name)
{
    if (!name || !name[0])
        return err_set(e->st, THEUS_EINVAL, "signal: %s name", name ? "empty" : "NULL");
    size_t len = strnlen(name, THEUS_NAME_MAX + 1);
    if (len > THEUS_NAME_MAX)
        return err_set(e->st, THEUS_EINVAL, "signal: name longer than %d bytes", THEUS_NAME_MAX);
    return THEUS_OK;
}

static sig_entry *find(sig_table *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].name, name) == 0)
            return &t->v[i];
    return NULL;
}

int sig_check_room(const theus_run *run, const char *name)
{
    theus_state *st = run->e->st;
    if (!run->e->sig.shared || shared_signal_known(st, name))
        return THEUS_OK;
    /* New names: this one and the distinct ones queued before it that the table lacks. */
    uint32_t fresh = 1;
    for (size_t i = 0; i < run->nsignals; i++) {
        if (strcmp(run->signals[i], name) == 0)
            return THEUS_OK;
        size_t j = 0;
        while (j < i && strcmp(run->signals[j], run->signals[i]) != 0)
            j++;
        fresh += j == i && !shared_signal_known(st, run->signals[i]);
    }
    if (shared_signal_named(st) + fresh > THEUS_SHARED_MAX_SIGNALS)
        return err_set(st, THEUS_ENOMEM, "signal '%s': the signal table of shared state '%s' "
                       "is full (%d names, THEUS_SHARED_MAX_SIGNALS)", name,
                       theus_state_shared_name(st), THEUS_SHARED_MAX_SIGNALS);
    return THEUS_OK;
}

int sig_stage(theus_engine *e, const theus_run *run, uint64_t version)
{
    if (!e->sig.shared || !run || run->nsignals == 0)
        return THEUS_OK;
    return shared_signal_stage(e->st, (const char (*)[THEUS_NAME_MAX + 1])run->signals,
                               run->nsignals, version);
}

void sig_unstage(theus_engine *e)
{
    if (e->sig.shared)
        shared_signal_unstage(e->st);
}

void sig_published(theus_engine *e, uint64_t version)
{
    if (e->sig.shared)
        shared_signal_published(e->st, version);
}

int sig_deliver(theus_engine *e, const theus_run *run)
{
    sig_table *t = &e->sig;
    if (run->nsignals == 0)
        return THEUS_OK;
    if (t->shared)
        return shared_signal_deliver(e->st, (const char (*)[THEUS_NAME_MAX + 1])run->signals,
                                     run->nsignals);
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < run->nsignals; i++) {
        sig_entry *s = find(t, run->signals[i]);
        if (!s && tx_grow((void **)&t->v, &t->cap, t->n + 1, sizeof *t->v) == 0) {
            s = &t->v[t->n++];
            memset(s, 0, sizeof *s);
            memcpy(s->name, run->signals[i], sizeof s->name);
        }
        /* Out of memory for a first delivery: the count cannot be kept; waiters on it keep
         * waiting until their timeout (the only failure this step cannot report). */
        if (s)
            s->count++;
    }
    if (t->waiters)
        pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return THEUS_OK;
}

void sig_commit_published(theus_engine *e)
{
    sig_table *t = &e->sig;
    if (t->shared)
        return; /* the redo path bumped the segment's version word */
    pthread_mutex_lock(&t->mu);
    if (t->waiters)
        pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

int theus_engine_signal_count(theus_engine *e, const char *name, uint64_t *count)
{
    if (!e || !count)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_engine_signal_count: NULL argument");
    int rc = sig_check_name(e, name);
    if (rc != THEUS_OK)
        return rc;
    if (e->sig.shared) {
        *count = shared_signal_count(e->st, name);
        return THEUS_OK;
    }
    pthread_mutex_lock(&e->sig.mu);
    sig_entry *s = find(&e->sig, name);
    *count = s ? s->count : 0;
    pthread_mutex_unlock(&e->sig.mu);
    return THEUS_OK;
}

/* What a wait waits for: a signal's count, or a field's (or the state's) version. */
typedef struct wait_for {
    const char *signal;
    int field;           /* -1: the state version */
} wait_for;

static uint64_t current(theus_engine *e, const wait_for *w)
{
    if (w->signal) {
        sig_entry *s = find(&e->sig, w->signal);
        return s ? s->count : 0;
    }
    if (w->field < 0)
        return theus_state_version(e->st);
    return atomic_load_explicit(&e->st->fields[w->field].version, memory_order_acquire);
}

/* A shared state: sleep on the segment's futex words, counted among this engine's waiters
 * (sig_close waits for them to leave). */
static int wait_shared(theus_engine *e, const wait_for *w, uint64_t after, uint32_t timeout_ms,
                       uint64_t *seen)
{
    sig_table *t = &e->sig;
    /* Once this waiter has left, theus_engine_destroy may free @e: after that, only the
     * state (which outlives the engine) is used. */
    theus_state *st = e->st;
    uint64_t now = 0;
    pthread_mutex_lock(&t->mu);
    int closing = t->closing;
    if (!closing)
        t->waiters++;
    pthread_mutex_unlock(&t->mu);
    int rc = THEUS_EBUSY;
    if (!closing) {
        shared_wait sw = {.signal = w->signal, .field = w->field, .after = after,
                          .timeout_ns = timeout_ms == UINT32_MAX ? UINT64_MAX
                                                                 : (uint64_t)timeout_ms * 1000000u,
                          .closing = &t->closing};
        rc = shared_signal_wait(st, &sw, &now);
        pthread_mutex_lock(&t->mu);
        if (--t->waiters == 0 && t->closing)
            pthread_cond_broadcast(&t->left);
        pthread_mutex_unlock(&t->mu);
    }
    if (seen)
        *seen = now;
    const char *what = w->signal ? "the signal's count" : "the version";
    switch (rc) {
    case THEUS_OK:
        return THEUS_OK;
    case THEUS_ETIMEDOUT:
        return err_set(st, rc, "wait: %u ms passed and %s is still %llu", timeout_ms, what,
                       (unsigned long long)now);
    case THEUS_ENOENT:
        return err_set(st, rc, "wait: shared state '%s' was removed (theus_shared_remove) "
                       "while %s was %llu; its handles still work, its waits end",
                       theus_state_shared_name(st), what, (unsigned long long)now);
    default:
        return err_set(st, THEUS_EBUSY, "wait: the engine is being destroyed");
    }
}

static int wait_until(theus_engine *e, const wait_for *w, uint64_t after, uint32_t timeout_ms,
                      uint64_t *seen)
{
    if (e->sig.shared)
        return wait_shared(e, w, after, timeout_ms, seen);
    sig_table *t = &e->sig;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)(timeout_ms / 1000u);
    deadline.tv_nsec += (long)(timeout_ms % 1000u) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    int rc = THEUS_OK;
    pthread_mutex_lock(&t->mu);
    t->waiters++;
    uint64_t now;
    for (;;) {
        now = current(e, w);
        if (now > after)
            break;
        if (t->closing) {
            rc = err_set(e->st, THEUS_EBUSY, "wait: the engine is being destroyed");
            break;
        }
        int r = timeout_ms == UINT32_MAX ? pthread_cond_wait(&t->cv, &t->mu)
                                         : pthread_cond_timedwait(&t->cv, &t->mu, &deadline);
        if (r == ETIMEDOUT) {
            now = current(e, w);
            if (now <= after)
                rc = err_set(e->st, THEUS_ETIMEDOUT, "wait: %u ms passed and %s is still %llu",
                             timeout_ms, w->signal ? "the signal's count" : "the version",
                             (unsigned long long)now);
            break;
        }
    }
    if (--t->waiters == 0 && t->closing)
        pthread_cond_broadcast(&t->left);
    pthread_mutex_unlock(&t->mu);
    if (seen)
        *seen = now;
    return rc;
}

int theus_engine_wait_signal(theus_engine *e, const char *name, uint64_t after,
                             uint32_t timeout_ms, uint64_t *count)
{
    if (!e)
        return err_set(NULL, THEUS_EINVAL, "theus_engine_wait_signal: NULL engine");
    int rc = sig_check_name(e, name);
    if (rc != THEUS_OK)
        return rc;
    wait_for w = {.signal = name, .field = -1};
    return wait_until(e, &w, after, timeout_ms, count);
}

int theus_engine_wait_version(theus_engine *e, const char *field, uint64_t after,
                              uint32_t timeout_ms, uint64_t *version)
{
    if (!e)
        return err_set(NULL, THEUS_EINVAL, "theus_engine_wait_version: NULL engine");
    wait_for w = {.signal = NULL, .field = -1};
    if (field && (w.field = state_find_field(e->st, field)) < 0)
        return err_set(e->st, THEUS_ENOENT, "wait: no field '%s'", field);
    return wait_until(e, &w, after, timeout_ms, version);
}
