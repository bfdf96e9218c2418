/* The stream-ordered commit's pieces of the one commit path (commit.c): what has to happen
 * before the gatekeeper, and the replay that enqueues on the caller's stream where the
 * field's backend can (theus_tx_commit_on_stream, theus/theus_gpu.h). */
#ifndef THEUS_SRC_COMMIT_STREAM_H
#define THEUS_SRC_COMMIT_STREAM_H
#include "backend.h"
#include "batch_replay.h"
#include <stddef.h>

struct theus_tx;

typedef struct commit_stream {
    void *stream;              /* the caller's stream (NULL: the legacy default stream) */
    int enqueue;               /* 1: replay on the stream without waiting; 0: synchronously */
    const theus_backend *fb;   /* after the replay: the backend that holds @fence */
    void *fence;               /* after the replay: the enqueued replay's fence, or NULL */
} commit_stream;

/* Before the gatekeeper (no lock held): refuse when a kept replay error says the state's
 * bytes are unknown; decide whether the replay can be enqueued (not on a shared state, whose
 * replay runs through its redo record); when the gatekeeper or a publish listener will read
 * the payloads on the host (constraints, durability, audit), wait for the caller's stream
 * first, so that a payload its kernels write is complete. */
int commit_stream_prepare(struct theus_tx *tx, commit_stream *cs);
/* The replay of the private path: batch_replay, with the backends that can enqueue doing
 * so on cs->stream (cs->fb, cs->fence set). On failure nothing stays enqueued unwaited. */
int commit_stream_replay(const struct theus_tx *tx, batch_op_fn get, void *user,
                         replay_op *ops, commit_stream *cs);

#endif
