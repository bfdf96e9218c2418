/* Replaying a batch whose ops go to several backends: each backend gets its ops in batch
 * order, in as few calls as the caller's buffer allows. Used by the private commit path and
 * by the redo record of shared states. */
#ifndef THEUS_SRC_BATCH_REPLAY_H
#define THEUS_SRC_BATCH_REPLAY_H
#include "backend.h"
#include <stddef.h>

/* Return the backend op @k of the batch goes to, and fill *op with it (@op NULL: only the
 * backend). */
typedef const theus_backend *(*batch_op_fn)(void *user, size_t k, replay_op *op);

/* Replay ops 0..@n-1: per backend (in address order; any number of backends), its ops in
 * batch order, @cap at a time through @buf. Returns the first backend error (its detail
 * recorded by the backend); earlier groups stay applied. No allocation. */
int batch_replay(size_t n, batch_op_fn get, void *user, replay_op *buf, size_t cap);
/* The same with @run doing each backend's call (NULL: its replay entry): the stream-ordered
 * commit enqueues where a backend can. */
typedef int (*batch_run_fn)(void *run_user, const theus_backend *b, const replay_op *ops,
                            size_t n);
int batch_replay_run(size_t n, batch_op_fn get, void *user, replay_op *buf, size_t cap,
                     batch_run_fn run, void *run_user);

#endif
