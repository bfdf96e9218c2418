/* A state's stream-ordered replays (theus_tx_commit_on_stream, theus/theus_gpu.h): the fence
 * of the latest replay a backend enqueued without waiting, and the error one of them left.
 * The version is published when the replay is enqueued; every call that reads field bytes
 * on the host settles first (waits for the fence), and the first replay error that surfaces
 * is kept for good: the state's published bytes are then unknown, so every later call that
 * settles, and every commit, fails with it (THEUS_EDEVICE). Process-local (the shadow). */
#ifndef THEUS_SRC_STREAM_FENCE_H
#define THEUS_SRC_STREAM_FENCE_H
#include "backend.h"
#include "theus/theus.h"
#include <stdatomic.h>
#include <stdint.h>

struct stream_fence;
/* The state's slot (a member of the state's shadow, state.h): NULL until a replay is
 * enqueued or an error kept. @st in the calls below only names the state in errors. */
typedef struct stream_fence_slot {
    _Atomic(struct stream_fence *) p;
} stream_fence_slot;

/* Under the commit lock, before the replay gate is left: the replay of @version was enqueued
 * on backend @b with @fence (owned from now on; the previous fence, which the new replay is
 * ordered after, is released). THEUS_ENOMEM when the record cannot be made: then the fence
 * was waited for on the host and released (the commit stays correct, only synchronous). */
int stream_fence_set(const theus_state *st, stream_fence_slot *slot, const theus_backend *b, void *fence,
                     uint64_t version);
/* Wait on the host for the state's enqueued replays; THEUS_OK, or the kept replay error
 * (THEUS_EDEVICE, recorded for @st with @what as context). One atomic load when nothing was
 * ever enqueued. Thread-safe. */
int stream_fence_settle(const theus_state *st, const stream_fence_slot *slot, const char *what);
/* The kept replay error (THEUS_OK: none), recorded for @st with @what; waits for nothing. */
int stream_fence_error(const theus_state *st, const stream_fence_slot *slot, const char *what);
/* theus_state_wait: order @stream (NULL: the host) after the enqueued replays. */
int stream_fence_order(const theus_state *st, const stream_fence_slot *slot, void *stream);
/* State destruction: wait for the last fence (its error is dropped), release the record. */
void stream_fence_free(stream_fence_slot *slot);
/* Test hook (tests/test_batch.c): keep @code with @msg as if a replay of @version had failed
 * once its stream ran. THEUS_ENOMEM when the record cannot be made. */
int stream_fence_inject_error(stream_fence_slot *slot, int code, uint64_t version,
                              const char *msg);

#endif
