/* The publish step of the commit path and its listeners. Every commit — private, shared
 * (through the redo record), theus_state_init_field — goes through commit.c's one path:
 * gatekeeper, commit lock, version guard, listeners' prepare, replay, publish, listeners'
 * published, unlock, listeners' acknowledge. The write-ahead log, the audit and signals
 * attach here. See docs/internals.md. */
#ifndef THEUS_SRC_PUBLISH_H
#define THEUS_SRC_PUBLISH_H
#include "publish_listener.h"
#include "state.h"

/* Add a listener to @st (*l is copied). Not while a commit of @st runs on another thread:
 * attach listeners right after creating or opening the state. THEUS_OK, THEUS_EINVAL (NULL
 * argument) or THEUS_EBUSY (PUBLISH_MAX_LISTENERS already attached). Listeners are local to
 * this process's handle of a shared state. */
int publish_listen(theus_state *st, const publish_listener *l);
/* As publish_listen, but ahead of every listener attached so far: for a check of the batch
 * that must run before a listener with side effects (the audit before the WAL append). */
int publish_listen_first(theus_state *st, const publish_listener *l);
/* Remove every listener whose user pointer is @user (the others keep their order). */
void publish_unlisten(theus_state *st, void *user);

/* As publish_listen; @release(l->user) runs when the state is destroyed (the listener's
 * context lives as long as its state). */
int publish_listen_owned(theus_state *st, const publish_listener *l, void (*release)(void *user));

/* ---- for the commit path (commit.c, shared/redo.c) ---------------------------------- */

/* Listeners' prepare in order; when one refuses, the earlier ones are cancelled (reverse
 * order) and its code is returned (a message is set when the listener set none). */
int publish_prepare(const publish_batch *b);
/* Every listener's cancel (reverse order): the replay failed after publish_prepare. */
void publish_cancel(const publish_batch *b);
/* Listeners' published, in order. */
void publish_notify(const publish_batch *b);
/* Listeners' acknowledge, in order (all run); the first error, or THEUS_OK. */
int publish_acknowledge(const publish_batch *b);

/* The publish step proper, under the commit lock inside the replay gate, once the bytes are
 * in place. publish_region: field @field's version and block map say @version wrote @r.
 * publish_version: the state is at @version (last: readers see the new version only after
 * everything else). Both give the same result however often they run (redo recovery). */
void publish_region(theus_state *st, uint32_t field, const theus_region *r, uint64_t version);
void publish_version(theus_state *st, uint64_t version);

/* The commit log entries of @tx's batch as version @version, passed to @sink in order (one
 * per delta; a batch too large for the log gets one block-map entry per field, see
 * commit_log.h). */
typedef void (*log_sink)(void *user, const log_entry *e);
void publish_log_entries(const theus_state *st, const struct theus_tx *tx, uint64_t version,
                         log_sink sink, void *user);
/* The same entries appended to @st's commit log (the private path: in place). */
void publish_log_append(theus_state *st, const struct theus_tx *tx, uint64_t version);

#endif
