/* Crash-safe commits of shared states (redo logging). Under the commit lock the batch's
 * final bytes — an ASSIGN's payload, an ADD's current value plus payload — go to the redo
 * area with their regions, the log entries and the versions to publish; the record is
 * marked READY, copied onto the fields as plain assigns, published, and marked IDLE. A
 * process killed before READY changed nothing; one killed after it left a record that the
 * next taker of the commit lock applies and publishes again (both idempotent). */
#include "batch_replay.h"
#include "error.h"
#include "gatekeeper.h"
#include "publish.h"
#include "redo.h"
#include "shared_signal.h"
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ALIGN 64u
/* Regions per backend call when a record is applied. */
#define APPLY_CHUNK 64

void (*redo_fault_hook)(int point);

static void fault_point(int point)
{
    if (redo_fault_hook)
        redo_fault_hook(point);
}

static size_t align_up(size_t n)
{
    return (n + ALIGN - 1) / ALIGN * ALIGN;
}

static redo_record *record_of(const theus_state *st)
{
    return (redo_record *)((char *)st->hdr + shared_area_of(st)->off_redo);
}

static redo_desc *descs_of(redo_record *r)
{
    return (redo_desc *)((char *)r + align_up(sizeof *r));
}

static log_entry *log_of(redo_record *r)
{
    return (log_entry *)(descs_of(r) + r->ndesc);
}

static uint64_t record_checksum(redo_record *r)
{
    uint64_t h = shared_hash(SHARED_HASH_INIT, &r->publish,
                             offsetof(redo_record, checksum) - offsetof(redo_record, publish));
    h = shared_hash(h, descs_of(r), (size_t)r->ndesc * sizeof(redo_desc));
    return shared_hash(h, log_of(r), (size_t)r->nlog * sizeof(log_entry));
}

typedef struct log_writer {
    log_entry *out;   /* NULL: count only */
    uint32_t n;
} log_writer;

static void log_sink_fn(void *user, const log_entry *e)
{
    log_writer *w = user;
    if (w->out)
        w->out[w->n] = *e;
    w->n++;
}

typedef struct record_ops {
    const theus_state *st;
    const redo_record *r;
    const redo_desc *d;
} record_ops;

/* The record's regions hold final values: applied as assigns, in any order. */
static const theus_backend *record_op(void *user, size_t k, replay_op *op)
{
    const record_ops *x = user;
    uint32_t f = x->d[k].field;
    if (op) {
        op->op = DELTA_ASSIGN;
        op->dtype = (theus_dtype)x->st->fields[f].dtype;
        op->base = x->st->data[f];
        op->frame = &x->st->frames[f];
        op->sub = x->d[k].r;
        op->payload = (const char *)x->r + x->d[k].offset;
        op->batch = NULL;
    }
    return x->st->backend[f];
}

static int apply(theus_state *st, redo_record *r)
{
    replay_op ops[APPLY_CHUNK];
    record_ops src = {st, r, descs_of(r)};
    return batch_replay(r->ndesc, record_op, &src, ops, APPLY_CHUNK);
}

/* The publish step from the record (the committing process, or a recovering one). */
static void publish(theus_state *st, redo_record *r)
{
    state_header *h = st->hdr;
    const redo_desc *d = descs_of(r);
    for (uint32_t k = 0; k < r->ndesc; k++)
        publish_region(st, d[k].field, &d[k].r, r->version);
    commit_log_put(&h->log, st->log_ring, r->log_head, r->log_floor, log_of(r), r->nlog);
    atomic_store_explicit(&h->stats.commits, r->commits, memory_order_relaxed);
    publish_version(st, r->version);
}

/* READY -> applied, published, IDLE. On failure the record stays READY and the replay
 * sequence odd: readers and holds wait at the commit lock, whose next taker tries again. */
static int finish(theus_state *st, redo_record *r)
{
    state_replay_gate_enter(st);
    fault_point(REDO_POINT_REPLAYING);
    int rc = apply(st, r);
    fault_point(REDO_POINT_APPLIED);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "shared state '%s': a commit could not be applied; it stays in "
                        "the redo area and is applied by the next taker of the commit lock",
                        shared_area_of(st)->name);
    if (r->publish)
        publish(st, r);
    state_replay_gate_leave(st);
    /* Version waiters of every process (the commit's signals are delivered by the engine's
     * listener after the others, or by shared_signal_recover when this holder dies). */
    if (r->publish)
        shared_signal_version_published(st);
    fault_point(REDO_POINT_PUBLISHED);
    atomic_store_explicit(&r->status, REDO_IDLE, memory_order_release);
    return THEUS_OK;
}

int redo_commit(theus_state *st, const theus_tx *tx, uint64_t version, int publish_version)
{
    shared_area *a = shared_area_of(st);
    redo_record *r = record_of(st);
    log_writer count = {NULL, 0};
    if (publish_version)
        publish_log_entries(st, tx, version, log_sink_fn, &count);
    size_t bytes = align_up(sizeof *r) + tx->ndeltas * sizeof(redo_desc) +
                   count.n * sizeof(log_entry);
    for (size_t k = 0; k < tx->ndeltas; k++) {
        size_t n = tx->deltas[k].nelems *
                   theus_dtype_size((theus_dtype)st->fields[tx->deltas[k].field].dtype);
        bytes = align_up(bytes) + n;
    }
    if (tx->ndeltas > UINT32_MAX || bytes > a->redo_bytes)
        return err_set(st, THEUS_ENOMEM,
                       "commit refused: its batch needs %zu bytes of redo space and shared "
                       "state '%s' has %llu (theus_shared_options.redo_bytes)", bytes, a->name,
                       (unsigned long long)a->redo_bytes);

    atomic_store_explicit(&r->status, REDO_WRITING, memory_order_relaxed);
    r->ndesc = (uint32_t)tx->ndeltas;
    r->nlog = count.n;
    redo_desc *d = descs_of(r);
    size_t off = align_up(sizeof *r) + r->ndesc * sizeof(redo_desc) + r->nlog * sizeof(log_entry);
    for (size_t k = 0; k < tx->ndeltas; k++) {
        const delta *x = &tx->deltas[k];
        off = align_up(off);
        d[k].field = x->field;
        d[k].op = x->op;
        d[k].r = x->r;
        d[k].offset = off;
        d[k].nbytes = x->nelems * theus_dtype_size((theus_dtype)st->fields[x->field].dtype);
        int rc = gate_final_values(st, tx, k, (char *)r + off);
        if (rc != THEUS_OK) {
            atomic_store_explicit(&r->status, REDO_IDLE, memory_order_relaxed);
            return err_wrap(st, rc, "commit: cannot compute the bytes of field '%s'",
                            st->fields[x->field].name);
        }
        off += d[k].nbytes;
        fault_point(REDO_POINT_WRITING);
    }
    log_writer w = {log_of(r), 0};
    if (publish_version)
        publish_log_entries(st, tx, version, log_sink_fn, &w);
    state_header *h = st->hdr;
    r->publish = (uint32_t)publish_version;
    r->version = version;
    r->log_head = h->log.head;
    r->log_floor = commit_log_floor_after(&h->log, st->log_ring, r->nlog, version);
    r->commits = atomic_load_explicit(&h->stats.commits, memory_order_relaxed) +
                 (uint64_t)publish_version;
    r->bytes = off;
    r->checksum = record_checksum(r);
    atomic_store_explicit(&r->status, REDO_READY, memory_order_release);
    fault_point(REDO_POINT_READY);
    return finish(st, r);
}

/* Whether a READY record can be applied as it stands: its checksum, and every region and
 * byte range inside the state and the redo area. */
static int record_sane(const theus_state *st, redo_record *r)
{
    const shared_area *a = shared_area_of(st);
    size_t head = align_up(sizeof *r);
    if (r->bytes > a->redo_bytes || r->ndesc > (a->redo_bytes - head) / sizeof(redo_desc) ||
        r->nlog > (a->redo_bytes - head) / sizeof(log_entry) ||
        head + r->ndesc * sizeof(redo_desc) + r->nlog * sizeof(log_entry) > r->bytes)
        return 0;
    if (record_checksum(r) != r->checksum)
        return 0;
    const redo_desc *d = descs_of(r);
    for (uint32_t k = 0; k < r->ndesc; k++) {
        if (d[k].field >= st->hdr->nfields)
            return 0;
        const field_desc *f = &st->fields[d[k].field];
        theus_region ok;
        char why[8];
        if (region_resolve((int)f->ndim, f->shape, &d[k].r, &ok, why, sizeof why) != THEUS_OK ||
            d[k].nbytes != region_nelems(&ok) * theus_dtype_size((theus_dtype)f->dtype) ||
            d[k].offset > r->bytes || d[k].nbytes > r->bytes - d[k].offset)
            return 0;
    }
    const log_entry *e = log_of(r);
    for (uint32_t k = 0; k < r->nlog; k++)
        if (e[k].field >= st->hdr->nfields)
            return 0;
    return 1;
}

int redo_recover(theus_state *st)
{
    redo_record *r = record_of(st);
    uint32_t status = atomic_load_explicit(&r->status, memory_order_acquire);
    if (status == REDO_READY) {
        if (!record_sane(st, r))
            return err_set(st, THEUS_ECORRUPT,
                           "shared state '%s': the redo record of an interrupted commit is "
                           "corrupt; the state cannot be recovered", shared_area_of(st)->name);
        int rc = finish(st, r);
        if (rc == THEUS_OK) {
            atomic_fetch_add_explicit(&shared_area_of(st)->recovered, 1, memory_order_relaxed);
            shared_signal_recover(st); /* the finished commit's signals */
        }
        return rc;
    }
    if (status != REDO_IDLE) {
        atomic_store_explicit(&r->status, REDO_IDLE, memory_order_relaxed);
        atomic_fetch_add_explicit(&shared_area_of(st)->dropped, 1, memory_order_relaxed);
    }
    /* Nothing replays without a READY record; an odd sequence here is a leftover. */
    if (atomic_load_explicit(&st->hdr->replay_seq, memory_order_relaxed) & 1u)
        state_replay_gate_leave(st);
    /* Signals staged by a commit that never became READY are dropped, those of one that
     * its holder published but died before delivering are delivered; a delivery outside a
     * commit that its writer left half applied is applied again. */
    shared_signal_recover(st);
    return THEUS_OK;
}

int redo_pending(const theus_state *st)
{
    return atomic_load_explicit(&record_of(st)->status, memory_order_acquire) == REDO_READY;
}
