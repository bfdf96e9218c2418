/* The types of the publish step's listeners (publish.h), apart so that the state can hold
 * its listener list without depending on the commit path. */
#ifndef THEUS_SRC_PUBLISH_LISTENER_H
#define THEUS_SRC_PUBLISH_LISTENER_H
#include "theus/theus.h"
#include <stdint.h>

struct theus_tx;

/* One commit as its listeners see it. Borrowed: valid only during the listener call. */
typedef struct publish_batch {
    theus_state *st;
    uint64_t version;            /* the version this commit creates (init_field: 1, no bump) */
    uint64_t base;               /* the transaction's base */
    const struct theus_tx *tx;   /* its deltas (tx->deltas[0..ndeltas), staging order; payloads
                                    in the field's backend memory), tx->ext, contract name */
    int init;                    /* 1: theus_state_init_field (no new version) */
} publish_batch;

/* Any member may be NULL. Listeners run in the order they were added. */
typedef struct publish_listener {
    /* Under the commit lock, after the guard and the gatekeeper, before the replay; may
     * refuse with a THEUS_E* code (the commit fails, state unchanged): audit, WAL append. */
    int  (*prepare)(void *user, const publish_batch *b);
    /* Under the commit lock: a later listener's prepare or the replay failed after this
     * prepare succeeded: undo it (the WAL drops its record). */
    void (*cancel)(void *user, const publish_batch *b);
    /* Under the commit lock, right after the version is published; cannot fail. */
    void (*published)(void *user, const publish_batch *b);
    /* After the commit lock is released, on the committing thread (group fsync wait,
     * signals, outbox). An error is returned by theus_tx_commit although the commit is
     * published (documented as such, e.g. THEUS_EIO: published, not durable). */
    int  (*acknowledge)(void *user, const publish_batch *b);
    void *user;
} publish_listener;

/* Listeners one state can hold. */
#define PUBLISH_MAX_LISTENERS 8

typedef struct publish_list {
    publish_listener l[PUBLISH_MAX_LISTENERS];
    /* Per listener: called with its user pointer when the state is destroyed (NULL: none);
     * set by publish_listen_owned. */
    void (*release[PUBLISH_MAX_LISTENERS])(void *user);
    uint32_t n;
} publish_list;

/* State destruction (state.c): every listener's release (reverse order), then none is
 * attached. Here, with the list, so that the state does not depend on the commit path
 * (publish.h); publish_listener.c. */
void publish_list_release(publish_list *p);

#endif
