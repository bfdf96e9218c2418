/* The replay pool: worker threads parked on a condition variable, woken for one job at a
 * time (a large CPU replay), the caller doing part 0 itself. Process-wide, started lazily,
 * reset in a forked child (whose copy has no threads), joined at exit or unload. */
#include "replay_pool.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

/* Everything below is guarded by lock, except run_lock (one job at a time), the thread
 * count settings and the job's part counters (atomics). Workers are numbered 1 ..
 * nworkers. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;      /* a new job (gen moved) or stop */
    pthread_cond_t done;      /* every part of the job finished */
    pthread_t tid[REPLAY_POOL_MAX];
    uint64_t born_gen[REPLAY_POOL_MAX];   /* gen when worker i was started */
    int nworkers;
    int stop;
    uint64_t gen;             /* job counter */
    replay_pool_fn fn;
    void *arg;
    int nparts;
} P = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};

/* Parts are claimed, not assigned: whoever is free takes the next one, so that a worker that
 * wakes late (tens of microseconds on a virtual machine) or is preempted leaves its part to
 * the caller instead of holding it up. A claim ticket is (low 32 bits of gen) << 32 | next
 * part, so a worker that read an older job cannot claim a part of a newer one. */
static _Atomic uint64_t ticket;
static atomic_int finished;   /* parts of the current job done */

/* Held for the whole of a job (and for starting and joining workers): a second caller
 * that finds it taken replays on its own thread instead of waiting. */
static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;

static atomic_int override_threads;   /* replay_pool_set_threads; 0: none */
static int env_threads;               /* from THEUS_REPLAY_THREADS or the default */
static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void read_env(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int n = cpus < 1 ? 1 : cpus > 4 ? 4 : (int)cpus;
    const char *s = getenv("THEUS_REPLAY_THREADS");
    if (s && *s) {
        char *end = NULL;
        long v = strtol(s, &end, 10);
        if (end && *end == '\0' && v >= 1)   /* anything else keeps the default */
            n = v > REPLAY_POOL_MAX ? REPLAY_POOL_MAX : (int)v;
    }
    env_threads = n;
}

int replay_pool_threads(void)
{
    int o = atomic_load_explicit(&override_threads, memory_order_relaxed);
    if (o > 0)
        return o;
    pthread_once(&env_once, read_env);
    return env_threads;
}

void replay_pool_set_threads(int n)
{
    if (n < 0)
        n = 0;
    if (n > REPLAY_POOL_MAX)
        n = REPLAY_POOL_MAX;
    atomic_store_explicit(&override_threads, n, memory_order_relaxed);
}

/* In a forked child only the forking thread exists: the parent's workers are not there,
 * and a lock another parent thread held at the fork would stay taken forever. Start over
 * with an empty pool; the child starts its own workers when it needs them. */
static void atfork_child(void)
{
    pthread_mutex_init(&P.lock, NULL);
    pthread_cond_init(&P.wake, NULL);
    pthread_cond_init(&P.done, NULL);
    pthread_mutex_init(&run_lock, NULL);
    P.nworkers = 0;
    P.stop = 0;
    P.fn = NULL;
    P.arg = NULL;
    P.nparts = 0;
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

/* Claim and run parts of job @gen until none is left. */
static void run_parts(uint64_t gen, replay_pool_fn fn, void *arg, int nparts)
{
    const uint64_t tag = (gen & 0xffffffffu) << 32;
    uint64_t t = atomic_load(&ticket);
    for (;;) {
        if ((t & ~(uint64_t)0xffffffffu) != tag || (int)(t & 0xffffffffu) >= nparts)
            return;
        if (!atomic_compare_exchange_weak(&ticket, &t, t + 1))
            continue;   /* t holds the current ticket again */
        fn(arg, (int)(t & 0xffffffffu), nparts);
        if (atomic_fetch_add(&finished, 1) + 1 == nparts) {
            pthread_mutex_lock(&P.lock);
            pthread_cond_signal(&P.done);
            pthread_mutex_unlock(&P.lock);
            return;
        }
        t = atomic_load(&ticket);
    }
}

static void *worker(void *p)
{
    const int id = (int)(intptr_t)p;
    pthread_mutex_lock(&P.lock);
    uint64_t seen = P.born_gen[id];
    for (;;) {
        while (P.gen == seen && !P.stop)
            pthread_cond_wait(&P.wake, &P.lock);
        if (P.stop)
            break;
        seen = P.gen;
        replay_pool_fn fn = P.fn;
        void *arg = P.arg;
        const int nparts = P.nparts;
        pthread_mutex_unlock(&P.lock);
        run_parts(seen, fn, arg, nparts);
        pthread_mutex_lock(&P.lock);
    }
    pthread_mutex_unlock(&P.lock);
    return NULL;
}

/* Start workers until there are @want - 1 of them (run_lock held). Workers block every
 * signal, so that the application's handlers run on its own threads. */
static void grow(int want)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (P.nworkers < want - 1) {
        const int id = P.nworkers + 1;
        pthread_mutex_lock(&P.lock);
        P.born_gen[id] = P.gen;
        pthread_mutex_unlock(&P.lock);
        if (pthread_create(&P.tid[id], NULL, worker, (void *)(intptr_t)id) != 0)
            break;               /* run with the workers we have */
        P.nworkers = id;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* How long the caller spins for the last parts before it sleeps: a sleeping caller is
 * woken late too. */
#define DONE_SPIN 20000

int replay_pool_run(int nparts, replay_pool_fn fn, void *arg)
{
    if (nparts > REPLAY_POOL_MAX)
        nparts = REPLAY_POOL_MAX;
    if (nparts < 2)
        return 0;
    if (pthread_mutex_trylock(&run_lock) != 0)
        return 0;
    pthread_once(&atfork_once, register_atfork);
    if (P.nworkers < nparts - 1)
        grow(nparts);
    if (P.nworkers < 1) {
        pthread_mutex_unlock(&run_lock);
        return 0;
    }
    pthread_mutex_lock(&P.lock);
    P.fn = fn;
    P.arg = arg;
    P.nparts = nparts;
    P.gen++;
    const uint64_t gen = P.gen;
    atomic_store(&finished, 0);
    atomic_store(&ticket, (gen & 0xffffffffu) << 32);
    /* Wake only as many workers as there are parts besides the caller's. */
    if (nparts - 1 >= P.nworkers)
        pthread_cond_broadcast(&P.wake);
    else
        for (int i = 0; i < nparts - 1; i++)
            pthread_cond_signal(&P.wake);
    pthread_mutex_unlock(&P.lock);

    run_parts(gen, fn, arg, nparts);

    for (int i = 0; i < DONE_SPIN && atomic_load(&finished) < nparts; i++)
        ;
    if (atomic_load(&finished) < nparts) {
        pthread_mutex_lock(&P.lock);
        while (atomic_load(&finished) < nparts)
            pthread_cond_wait(&P.done, &P.lock);
        pthread_mutex_unlock(&P.lock);
    }
    pthread_mutex_unlock(&run_lock);
    return nparts;
}

/* At exit, or when the shared library is unloaded (its code must not vanish under parked
 * workers): stop and join them. Skipped when another thread is inside a job. */
__attribute__((destructor)) static void replay_pool_shutdown(void)
{
    if (pthread_mutex_trylock(&run_lock) != 0)
        return;
    if (P.nworkers > 0) {
        pthread_mutex_lock(&P.lock);
        P.stop = 1;
        pthread_cond_broadcast(&P.wake);
        pthread_mutex_unlock(&P.lock);
        for (int i = 1; i <= P.nworkers; i++)
            pthread_join(P.tid[i], NULL);
        P.nworkers = 0;
        P.stop = 0;
    }
    pthread_mutex_unlock(&run_lock);
}
