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

/* Everything below is guarded by lock, except run_lock (one job at a time) and the thread
 * count settings (atomics). Workers are numbered 1 .. nworkers; part t of a job runs on
 * worker t. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;      /* a new job (gen moved) or stop */
    pthread_cond_t done;      /* running reached 0 */
    pthread_t tid[REPLAY_POOL_MAX];
    uint64_t born_gen[REPLAY_POOL_MAX];   /* gen when worker i was started */
    int nworkers;
    int stop;
    uint64_t gen;             /* job counter */
    replay_pool_fn fn;
    void *arg;
    int nt;
    int running;              /* workers still busy with job gen */
} P = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};

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
    P.running = 0;
    P.fn = NULL;
    P.arg = NULL;
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
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
        if (id >= P.nt)
            continue;            /* a job with fewer parts than workers */
        replay_pool_fn fn = P.fn;
        void *arg = P.arg;
        const int nt = P.nt;
        pthread_mutex_unlock(&P.lock);
        fn(arg, id, nt);
        pthread_mutex_lock(&P.lock);
        if (--P.running == 0)
            pthread_cond_signal(&P.done);
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

int replay_pool_run(int want, replay_pool_fn fn, void *arg)
{
    if (want > REPLAY_POOL_MAX)
        want = REPLAY_POOL_MAX;
    if (want < 2)
        return 0;
    if (pthread_mutex_trylock(&run_lock) != 0)
        return 0;
    pthread_once(&atfork_once, register_atfork);
    if (P.nworkers < want - 1)
        grow(want);
    const int nt = P.nworkers + 1 < want ? P.nworkers + 1 : want;
    if (nt < 2) {
        pthread_mutex_unlock(&run_lock);
        return 0;
    }
    pthread_mutex_lock(&P.lock);
    P.fn = fn;
    P.arg = arg;
    P.nt = nt;
    P.running = nt - 1;
    P.gen++;
    pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.lock);

    fn(arg, 0, nt);

    pthread_mutex_lock(&P.lock);
    while (P.running > 0)
        pthread_cond_wait(&P.done, &P.lock);
    pthread_mutex_unlock(&P.lock);
    pthread_mutex_unlock(&run_lock);
    return nt;
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
