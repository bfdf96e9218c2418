/* The replay pool: a small process-wide set of worker threads that the CPU backend uses to
 * apply large commit batches (backend_cpu.c), started on the first large replay only.
 * See docs/threading.md, "The replay pool". */
#ifndef THEUS_SRC_REPLAY_POOL_H
#define THEUS_SRC_REPLAY_POOL_H

/* Most threads a replay may use (the caller included). */
#define REPLAY_POOL_MAX 64

/* One share of a parallel job: part @t of @nt (0 <= t < nt). */
typedef void (*replay_pool_fn)(void *arg, int t, int nt);

/* Threads a large replay should use, the calling thread included: the test override when
 * one is set, else THEUS_REPLAY_THREADS (read once; 1 means serial), else the smaller of
 * the online CPUs and 4. Never starts a thread. */
int replay_pool_threads(void);

/* For tests and the benchmark: use @n threads from now on (clamped to REPLAY_POOL_MAX);
 * 0 goes back to THEUS_REPLAY_THREADS or the default. Safe from any thread; a replay
 * already running keeps the count it started with. */
void replay_pool_set_threads(int n);

/* Run @fn(@arg, t, nt) for t = 0 .. nt-1 and return nt once every part has returned: part
 * 0 on the calling thread, the others on pool workers, started here when fewer exist.
 * nt <= @want; it is smaller when some threads could not be started. Returns 0, having
 * run nothing, when @want < 2, when the pool is busy with another caller's job, or when
 * no worker could be started: the caller then does the work itself. Never fails
 * otherwise; @fn must not call replay_pool_run. */
int replay_pool_run(int want, replay_pool_fn fn, void *arg);

#endif
