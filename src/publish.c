/* The publish step of the commit path and its listeners (see publish.h). */
#include "publish.h"
#include "error.h"
#include "tx.h"
#include <string.h>

int publish_listen(theus_state *st, const publish_listener *l)
{
    if (!st || !l)
        return err_set(st, THEUS_EINVAL, "publish_listen: NULL argument");
    publish_list *p = &st->listeners;
    if (p->n == PUBLISH_MAX_LISTENERS)
        return err_set(st, THEUS_EBUSY, "publish_listen: the state already has %d listeners",
                       PUBLISH_MAX_LISTENERS);
    p->release[p->n] = NULL;
    p->l[p->n++] = *l;
    return THEUS_OK;
}

int publish_listen_first(theus_state *st, const publish_listener *l)
{
    int rc = publish_listen(st, l);
    if (rc != THEUS_OK)
        return rc;
    publish_list *p = &st->listeners;
    for (uint32_t i = p->n - 1; i > 0; i--) {
        p->l[i] = p->l[i - 1];
        p->release[i] = p->release[i - 1];
    }
    p->l[0] = *l;
    p->release[0] = NULL;
    return THEUS_OK;
}

int publish_listen_owned(theus_state *st, const publish_listener *l, void (*release)(void *user))
{
    int rc = publish_listen(st, l);
    if (rc == THEUS_OK)
        st->listeners.release[st->listeners.n - 1] = release;
    return rc;
}

void publish_unlisten(theus_state *st, void *user)
{
    if (!st)
        return;
    publish_list *p = &st->listeners;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < p->n; i++)
        if (p->l[i].user != user) {
            p->release[kept] = p->release[i];
            p->l[kept++] = p->l[i];
        }
    p->n = kept;
}

static void cancel_first(const publish_batch *b, uint32_t n)
{
    const publish_list *p = &b->st->listeners;
    while (n-- > 0)
        if (p->l[n].cancel)
            p->l[n].cancel(p->l[n].user, b);
}

int publish_prepare(const publish_batch *b)
{
    const publish_list *p = &b->st->listeners;
    for (uint32_t i = 0; i < p->n; i++) {
        if (!p->l[i].prepare)
            continue;
        err_clear();
        int rc = p->l[i].prepare(p->l[i].user, b);
        if (rc == THEUS_OK)
            continue;
        if (rc > 0)
            rc = THEUS_EINVAL; /* a listener must refuse with a THEUS_E* code */
        if (err_code() != rc)
            err_set(b->st, rc, "commit refused by a publish listener (%s)", theus_strerror(rc));
        cancel_first(b, i);
        return rc;
    }
    return THEUS_OK;
}

void publish_cancel(const publish_batch *b)
{
    cancel_first(b, b->st->listeners.n);
}

void publish_notify(const publish_batch *b)
{
    const publish_list *p = &b->st->listeners;
    for (uint32_t i = 0; i < p->n; i++)
        if (p->l[i].published)
            p->l[i].published(p->l[i].user, b);
}

int publish_acknowledge(const publish_batch *b)
{
    const publish_list *p = &b->st->listeners;
    int first = THEUS_OK;
    for (uint32_t i = 0; i < p->n; i++) {
        if (!p->l[i].acknowledge)
            continue;
        if (first == THEUS_OK)
            err_clear(); /* keep the first failure's message */
        int rc = p->l[i].acknowledge(p->l[i].user, b);
        if (rc == THEUS_OK || first != THEUS_OK)
            continue;
        first = rc > 0 ? THEUS_EINVAL : rc;
        if (err_code() != first)
            err_set(b->st, first, "commit published as version %llu, but a publish listener "
                    "could not acknowledge it (%s)", (unsigned long long)b->version,
                    theus_strerror(first));
    }
    return first;
}

void publish_region(theus_state *st, uint32_t field, const theus_region *r, uint64_t version)
{
    block_map m = state_block_map(st, field);
    block_map_mark(&m, r, version);
    atomic_store_explicit(&st->fields[field].version, version, memory_order_release);
}

void publish_version(theus_state *st, uint64_t version)
{
    atomic_store_explicit(&st->hdr->version, version, memory_order_release);
}

/* Whether a batch of @n deltas is logged one entry per delta (else one block-map entry per
 * field). */
static int log_per_delta(const theus_state *st, size_t n)
{
    return n <= st->hdr->log.capacity / 8;
}

void publish_log_entries(const theus_state *st, const struct theus_tx *tx, uint64_t version,
                         log_sink sink, void *user)
{
    log_entry e;
    memset(&e, 0, sizeof e);
    e.version = version;
    if (log_per_delta(st, tx->ndeltas)) {
        for (size_t k = 0; k < tx->ndeltas; k++) {
            e.field = tx->deltas[k].field;
            /* A described batch: its bounds send probes to the block map (exact to the block). */
            e.op = tx->deltas[k].batch ? LOG_OP_BLOCKS : tx->deltas[k].op;
            e.region = tx->deltas[k].r;
            sink(user, &e);
        }
        return;
    }
    /* Too many regions to log one by one: one entry per field that sends probes to the
     * block map (exact to the block) wherever the batch's bounding box reaches. */
    for (uint32_t f = 0; f < st->hdr->nfields; f++) {
        int any = 0;
        for (size_t k = 0; k < tx->ndeltas; k++) {
            const delta *d = &tx->deltas[k];
            if (d->field != f)
                continue;
            if (!any) {
                e.field = f;
                e.op = LOG_OP_BLOCKS;
                e.region = d->r;
                any = 1;
            } else {
                region_union_box(&e.region, &d->r);
            }
        }
        if (any)
            sink(user, &e);
    }
}

static void append_entry(void *user, const log_entry *e)
{
    theus_state *st = user;
    commit_log_append(&st->hdr->log, st->log_ring, e);
}

void publish_log_append(theus_state *st, const struct theus_tx *tx, uint64_t version)
{
    commit_log *log = &st->hdr->log;
    if (!log_per_delta(st, tx->ndeltas)) {
        publish_log_entries(st, tx, version, append_entry, st);
        return;
    }
    for (size_t k = 0; k < tx->ndeltas; k++) {
        log_entry *e = commit_log_next(log, st->log_ring);
        e->version = version;
        e->field = tx->deltas[k].field;
        /* A described batch: its bounds send probes to the block map (exact to the block). */
        e->op = tx->deltas[k].batch ? LOG_OP_BLOCKS : tx->deltas[k].op;
        e->region = tx->deltas[k].r;
    }
}
