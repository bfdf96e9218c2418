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

/* Run @fn(@arg, p, @nparts) once for every part p = 0 .. nparts-1 and return @nparts once
 * all have returned. Parts are claimed by whichever thread is free: the calling thread and
 * up to nparts-1 pool workers (started here when fewer exist), so a part may run on any of
 * them, and the caller may run several. Returns 0, having run nothing, when @nparts < 2,
 * when the pool is busy with another caller's job, or when no worker could be started: the
 * caller then does the work itself. @fn must not call replay_pool_run. */
int replay_pool_run(int nparts, replay_pool_fn fn, void *arg);

#endif
