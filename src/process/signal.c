/* Signals and waits: named counters bumped by published commits, and waiters that sleep on
 * a condition variable (CLOCK_MONOTONIC deadlines) until a signal's count or a version
 * passes a value. Delivery happens in the publish step only, so a refused commit never
 * signals. */
#include "process.h"
#include "alloc.h"
#include "error.h"
#include <errno.h>
#include <string.h>
#include <time.h>

int sig_init(sig_table *t)
{
    memset(t, 0, sizeof *t);
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

void sig_deliver(theus_engine *e, const theus_run *run)
{
    sig_table *t = &e->sig;
    if (run->nsignals == 0)
        return;
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
}

void sig_commit_published(theus_engine *e)
{
    sig_table *t = &e->sig;
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

static int wait_until(theus_engine *e, const wait_for *w, uint64_t after, uint32_t timeout_ms,
                      uint64_t *seen)
{
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
