/* Transactions: staged deltas, the read set, the contract. Commit lives in commit.c. */
#ifndef THEUS_SRC_TX_H
#define THEUS_SRC_TX_H
#include "state.h"

/* A staged payload shared with a DLPack export: freed by whoever lets go last. */
typedef struct payload_ref {
    _Atomic int refs;
    const theus_backend *backend;
    void *payload;
} payload_ref;

typedef struct delta {
    uint32_t field;
    delta_op op;
    theus_region r;
    size_t nelems;
    void *payload;          /* staged by the field's backend; C-contiguous in r's shape */
    int user_filled;        /* from theus_tx_stage_buffer */
    payload_ref *ref;       /* non-NULL once exported through DLPack */
    int borrowed;           /* payload is not this delta's to unstage: the caller's memory
                               (theus_tx_*_borrowed, THEUS_STAGE_BORROW), or a part of the block
                               that the first delta of the same multi-region call owns */
    struct seg_batch *batch; /* a described batch (theus_tx_stage_batch, seg_batch.h): payload
                                holds batch->payload_elems elements, r (and nelems) are the
                                bounds of its segments; NULL for every other delta */
} delta;

typedef struct read_rec {
    uint32_t field;
    theus_region r;
} read_rec;

/* An attachment of a layer above (the process layer): embedded first in that layer's own
 * struct; tx_free calls free(ext). */
typedef struct tx_ext {
    void (*free)(struct tx_ext *ext);
} tx_ext;

struct theus_tx {
    theus_state *st;
    tx_ext *ext;                /* NULL by default; owned by the transaction */
    uint64_t base;
    int isolation;
    uint64_t priority_ticket;   /* set by theus_tx_run while it holds the priority lease */
    int has_contract;
    char *contract_blob;        /* one allocation: name, then the globs */
    const char **inputs, **outputs;
    size_t n_inputs, n_outputs;
    delta *deltas;
    size_t ndeltas, cap_deltas;
    read_rec *reads;
    size_t nreads, cap_reads;
};

/* Drop one reference to a shared payload. */
void payload_unref(payload_ref *ref);
/* Free everything a transaction holds, and the transaction. */
void tx_free(theus_tx *tx);
/* Resolve the field and region of a call (@what names it in messages) and check the
 * contract and, when @writing, the const zone; fail fast with the error set. */
int tx_target(theus_tx *tx, const char *what, const char *field, const theus_region *r,
              int writing, int *idx, theus_region *res);
/* Make room for one more element in a growable array; 0 ok, -1 out of memory. */
int tx_grow(void **arr, size_t *cap, size_t need, size_t elem);
/* Apply this transaction's deltas on @field that intersect @frame onto @buf (in @mem, laid
 * out as @frame), in staging order: the read-your-writes overlay. */
int tx_overlay(const theus_tx *tx, uint32_t field, void *buf, const theus_region *frame,
               theus_mem mem);
/* Apply the part of delta @d (of @st) inside @frame onto @buf (in @mem, laid out as @frame):
 * one step of tx_overlay, for code that walks the deltas itself (gatekeeper, audit). Every
 * kind of delta, described batches (d->batch) included. */
int delta_overlay(const theus_state *st, const delta *d, void *buf, const theus_region *frame,
                  theus_mem mem);

/* Described batches (tx_batch.c) on the commit path: whether a commit after @base wrote a
 * block that batch delta @d touches (then *c says how; exact to the block map's blocks), and
 * publishing what @d wrote as @version into the block map and the field's version. */
int tx_batch_conflict(const theus_state *st, uint64_t base, const delta *d, theus_conflict *c);
/* delta_overlay of a batch delta; and freeing what a batch delta holds besides its payload. */
int tx_batch_overlay(const theus_state *st, const delta *d, void *buf, const theus_region *frame,
                     theus_mem mem);
void tx_batch_free(const theus_state *st, const delta *d);
void tx_batch_publish(theus_state *st, const delta *d, uint64_t version);

#endif
