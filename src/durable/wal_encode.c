/* The encoding of a commit's record from its publish batch: the listeners' prepare
 * (publish step, under the commit lock) streams the record of the batch's deltas into the
 * open segment at its position — the bytes laid out as wal_record.h says, large payloads
 * written from where they lie, device payloads and described batches copied to the host. */
#include "durable/wal.h"
#include "durable/wal_internal.h"
#include "alloc.h"
#include "durable/crc32c.h"
#include "durable/fileio.h"
#include "durable/wal_record.h"
#include "error.h"
#include "gatekeeper.h"
#include "tx.h"

#include <errno.h>
#include <string.h>

/* Payloads at least this large are written from where they are, not copied. */
#define WAL_DIRECT_MIN (64u * 1024u)

/* ---- encoding ------------------------------------------------------------------------ */

/* The record is streamed: small pieces gather in w->buf, large payloads are written from
 * their own memory; the CRC runs over the pieces in order. */
typedef struct rec_writer {
    wal *w;
    size_t used;
    uint32_t crc;
    int bad;
    uint64_t off;              /* where the next byte goes in the segment */
} rec_writer;

static int rw_out(rec_writer *rw, const void *p, size_t n)
{
    if (fio_pwrite_all(rw->w->fd, p, n, rw->off) != 0)
        return errno ? errno : EIO;
    rw->off += n;
    return 0;
}

static int rw_flush(rec_writer *rw)
{
    if (rw->used && !rw->bad)
        rw->bad = rw_out(rw, rw->w->buf, rw->used);
    rw->used = 0;
    return rw->bad;
}

static void rw_put(rec_writer *rw, const void *p, size_t n, int in_crc)
{
    if (in_crc)
        rw->crc = crc32c(rw->crc, p, n);
    if (n >= WAL_DIRECT_MIN) {
        if (rw_flush(rw) == 0)
            rw->bad = rw_out(rw, p, n);
        return;
    }
    if (rw->used + n > rw->w->buf_cap && rw_flush(rw))
        return;
    memcpy(rw->w->buf + rw->used, p, n);
    rw->used += n;
}

static size_t region_bytes(const theus_state *st, const delta *d)
{
    return d->nelems * theus_dtype_size((theus_dtype)st->fields[d->field].dtype);
}

/* A payload on the host: where it is for host memory, else copied through the backend. A
 * described batch (delta k of @tx, seg_batch.h) is logged as an assign of its region's final
 * values (gate_final_values, valid under the commit lock), which recovery applies as any. */
static int payload_host(const theus_state *st, const theus_tx *tx, size_t di, const void **out,
                        void **tmp)
{
    const delta *d = &tx->deltas[di];
    *tmp = NULL;
    const field_desc *f = &st->fields[d->field];
    if (d->batch) {
        size_t n = region_bytes(st, d);
        if (!(*tmp = theus_xmalloc(n ? n : 1)))
            return err_set(st, THEUS_ENOMEM, "log: out of memory for a batch of '%s'", f->name);
        int rc = gate_final_values((theus_state *)(uintptr_t)st, tx, di, *tmp);
        if (rc != THEUS_OK) {
            theus_xfree(*tmp);
            *tmp = NULL;
            return err_wrap(st, rc, "log: cannot compute the values of a batch of '%s'", f->name);
        }
        *out = *tmp;
        return THEUS_OK;
    }
    if (f->placement == THEUS_PLACEMENT_HOST) {
        *out = d->payload;
        return THEUS_OK;
    }
    size_t n = region_bytes(st, d);
    if (!(*tmp = theus_xmalloc(n ? n : 1)))
        return err_set(st, THEUS_ENOMEM, "log: out of memory copying a payload of '%s'", f->name);
    theus_region frame;
    memset(&frame, 0, sizeof frame);
    frame.ndim = d->r.ndim;
    for (int k = 0; k < d->r.ndim; k++) {
        frame.start[k] = 0;
        frame.stop[k] = d->r.stop[k] - d->r.start[k];
    }
    const theus_backend *b = st->backend[d->field];
    int rc = b->iface->read(b->ctx, d->payload, &frame, (theus_dtype)f->dtype, &frame, *tmp,
                            THEUS_MEM_HOST);
    if (rc != THEUS_OK) {
        theus_xfree(*tmp);
        *tmp = NULL;
        return err_wrap(st, rc, "log: cannot copy a payload of '%s' to the host", f->name);
    }
    *out = *tmp;
    return THEUS_OK;
}

static uint64_t body_len(const theus_state *st, const theus_tx *tx)
{
    uint64_t body = 8;
    for (size_t k = 0; k < tx->ndeltas; k++)
        body += WAL_DELTA_HEAD + 16u * (uint64_t)tx->deltas[k].r.ndim + 8 +
                region_bytes(st, &tx->deltas[k]);
    return body;
}

uint32_t wal_claim_now(wal *w, uint64_t version)
{
    wal_counters c = wal_counters_of(w);
    if (atomic_load(c.written) == atomic_load(c.synced))
        return 0;
    return wal_claim(version, atomic_load(c.synced_version));
}

void wal_max_store(_Atomic uint64_t *x, uint64_t v)
{
    uint64_t cur = atomic_load_explicit(x, memory_order_relaxed);
    while (cur < v && !atomic_compare_exchange_weak_explicit(x, &cur, v, memory_order_release,
                                                             memory_order_relaxed))
        ;
}

/* Bytes of the record of @b. */
uint64_t wal_record_len(const wal *w, const publish_batch *b)
{
    return WAL_REC_OVERHEAD + body_len(w->st, b->tx);
}

/* The record of @b at byte @at of the open segment; *end: where it ends (failed: where it
 * would have ended — bytes up to there may have been written). */
int wal_write_record(wal *w, const publish_batch *b, uint64_t at, uint32_t claim,
                     uint64_t *end)
{
    const theus_tx *tx = b->tx;
    const theus_state *st = w->st;
    uint64_t body = body_len(st, tx);
    *end = at + WAL_REC_OVERHEAD + body;
    if (!w->buf) {
        w->buf_cap = 256u * 1024u;
        if (!(w->buf = theus_xmalloc(w->buf_cap)))
            return err_set(st, THEUS_ENOMEM, "log: out of memory");
    }
    unsigned char head[WAL_REC_HEAD];
    wal_put32(head, WAL_REC_MAGIC);
    wal_put32(head + 4, b->init ? WAL_KIND_INIT : WAL_KIND_COMMIT);
    wal_put64(head + 8, b->version);
    wal_put64(head + 16, body);
    wal_put32(head + 24, crc32c(0, head, 24));
    rec_writer rw = {.w = w, .off = at};
    rw_put(&rw, head, sizeof head, 0);
    if (w->sa && wal_fault_hook) {
        rw_flush(&rw);
        wal_fault(WAL_POINT_PARTIAL);
    }
    rw.crc = 0;
    unsigned char tmp[WAL_DELTA_HEAD + 16 * THEUS_MAX_DIMS + 8];
    wal_put32(tmp, (uint32_t)tx->ndeltas);
    wal_put32(tmp + 4, claim);
    rw_put(&rw, tmp, 8, 1);
    int rc = THEUS_OK;
    for (size_t k = 0; k < tx->ndeltas && rc == THEUS_OK && !rw.bad; k++) {
        const delta *d = &tx->deltas[k];
        wal_put32(tmp, d->field);
        wal_put32(tmp + 4, (uint32_t)(d->batch ? DELTA_ASSIGN : d->op));
        wal_put32(tmp + 8, (uint32_t)d->r.ndim);
        wal_put32(tmp + 12, 0);
        unsigned char *q = tmp + WAL_DELTA_HEAD;
        for (int i = 0; i < d->r.ndim; i++) {
            wal_put64(q, (uint64_t)d->r.start[i]);
            wal_put64(q + 8, (uint64_t)d->r.stop[i]);
            q += 16;
        }
        size_t n = region_bytes(st, d);
        wal_put64(q, n);
        rw_put(&rw, tmp, (size_t)(q + 8 - tmp), 1);
        const void *src = NULL;
        void *copy;
        if ((rc = payload_host(st, tx, k, &src, &copy)) == THEUS_OK) {
            rw_put(&rw, src, n, 1);
            theus_xfree(copy);
        }
    }
    unsigned char trailer[4];
    wal_put32(trailer, rw.crc);
    if (rc == THEUS_OK) {
        rw_put(&rw, trailer, 4, 0);
        rw_flush(&rw);
    }
    if (rc == THEUS_OK && rw.bad)
        rc = err_set(st, THEUS_EIO, "log: cannot write the record of version %llu: %s",
                     (unsigned long long)b->version, strerror(rw.bad));
    if (rc == THEUS_OK)
        *end = rw.off;
    return rc;
}
