/* The log writer: encodes each commit's deltas as one record (wal_record.h) in the publish
 * step's prepare, under the commit lock, so records are in version order; then makes it
 * durable: THEUS_SYNC_COMMIT fdatasyncs in `published` (still under the lock: the commit
 * returns only once its record is on disk), THEUS_SYNC_GROUP in `acknowledge` after the
 * lock is released — one committer leads an fdatasync that covers every record written so
 * far while the others wait on a condition variable — and THEUS_SYNC_NONE leaves the
 * record in the page cache (it survives the process, not the machine). */
#include "durable/wal.h"
#include "alloc.h"
#include "durable/crc32c.h"
#include "durable/fileio.h"
#include "durable/wal_record.h"
#include "error.h"
#include "gatekeeper.h"
#include "publish.h"
#include "shared/redo.h"
#include "tx.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void (*wal_fault_hook)(int point);

static void wal_fault(int point)
{
    if (wal_fault_hook)
        wal_fault_hook(point);
}

/* Payloads at least this large are written from where they are, not copied. */
#define WAL_DIRECT_MIN (64u * 1024u)

/* ---- preallocation --------------------------------------------------------------------
 * The open segment is extended ahead of its records with written zeros, fdatasync'ed once
 * per step: a record then overwrites allocated, initialised blocks, and the commit's
 * fdatasync has no size or extent change to journal (on ext4 and XFS that is most of its
 * cost for a small record). Not fallocate: its unwritten extents still journal their
 * conversion on the first write. Everything past the last record is zeros or the end of the
 * file — the reader takes a zero tail for the end of the log — so a cancelled or failed
 * record is zeroed, never left behind. */

static const unsigned char zero_block[64 * 1024];

static int write_zeros(int fd, uint64_t from, uint64_t to)
{
    while (from < to) {
        size_t n = to - from < sizeof zero_block ? (size_t)(to - from) : sizeof zero_block;
        if (fio_pwrite_all(fd, zero_block, n, from) != 0)
            return -1;
        from += n;
    }
    return 0;
}

/* Make [at, at + len) lie in the zero-filled part (*zero_end) of the segment on @fd: one
 * more step of zeros from there, synced (unless THEUS_SYNC_NONE: nothing would be gained).
 * A record larger than the step is not preallocated — zeroing it first would write it twice
 * to spare one journal commit — it grows the file itself. A failed extension is no error:
 * *zero_end stays, and the record grows the file as without preallocation (zeros written
 * past it are a zero tail). */
static void prealloc_room(wal *w, int fd, uint64_t at, uint64_t len, uint64_t *zero_end,
                          _Atomic uint64_t *extends)
{
    if (!w->prealloc || at + len <= *zero_end || len > w->prealloc)
        return;
    uint64_t from = *zero_end > at ? *zero_end : at;
    uint64_t end = (from + w->prealloc + 4095u) & ~(uint64_t)4095u;
    if (write_zeros(fd, from, end) != 0 || (w->sync != THEUS_SYNC_NONE && fdatasync(fd) != 0))
        return;
    *zero_end = end;
    atomic_fetch_add_explicit(extends, 1, memory_order_relaxed);
}

/* Take [from, to) of the segment on @fd off the log again (a cancelled or failed record, or
 * one a crash interrupted): zeroed where it lies in the zero-filled part, else the file is
 * cut at @from. 0, or -1 (errno). *wrote_zeros: whether it zeroed. */
static int cut_back(int fd, uint64_t from, uint64_t to, uint64_t *zero_end, int *wrote_zeros)
{
    *wrote_zeros = 0;
    if (*zero_end > from && *zero_end >= to) {
        *wrote_zeros = to > from;
        return write_zeros(fd, from, to);
    }
    if (ftruncate(fd, (off_t)from) != 0)
        return -1;
    *zero_end = from;
    return 0;
}

static void count_sync(wal *w)
{
    if (w->sa)
        atomic_fetch_add_explicit(&w->sa->log_syncs, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&w->nsyncs, 1, memory_order_relaxed);
}

static void count_record(wal *w, int64_t n)
{
    if (w->sa)
        atomic_fetch_add_explicit(&w->sa->log_records, (uint64_t)n, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&w->nrecords, (uint64_t)n, memory_order_relaxed);
}

void wal_stats(const wal *w, theus_durable_stats *out)
{
    _Atomic uint64_t *r = w->sa ? &w->sa->log_records : (_Atomic uint64_t *)&w->nrecords;
    _Atomic uint64_t *s = w->sa ? &w->sa->log_syncs : (_Atomic uint64_t *)&w->nsyncs;
    _Atomic uint64_t *e = w->sa ? &w->sa->log_extends : (_Atomic uint64_t *)&w->nextends;
    out->log_records = atomic_load_explicit(r, memory_order_relaxed);
    out->log_syncs = atomic_load_explicit(s, memory_order_relaxed);
    out->log_extends = atomic_load_explicit(e, memory_order_relaxed);
}

uint64_t wal_prealloc_step(const theus_durable_options *o)
{
    if (o->prealloc_bytes == THEUS_PREALLOC_OFF || o->prealloc_bytes == 0)
        return 0;
    uint64_t step = o->prealloc_bytes;
    if (o->segment_bytes && step > o->segment_bytes)
        step = o->segment_bytes;
    return (step + 4095u) & ~(uint64_t)4095u;
}

void wal_segment_path(const char *dir, uint64_t start, char *buf, size_t len)
{
    snprintf(buf, len, DUR_SEGMENT_FMT, dir, (unsigned long long)start);
}

int wal_segment_create(const theus_state *st, const char *dir, uint64_t start, theus_sync sync,
                       int *out)
{
    char path[4096];
    wal_segment_path(dir, start, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return err_set(st, THEUS_EIO, "cannot create log segment '%s': %s", path,
                       strerror(errno));
    unsigned char head[WAL_SEG_HEAD];
    wal_seg_head_encode(head, start);
    if (fio_write_all(fd, head, sizeof head) != 0 ||
        (sync != THEUS_SYNC_NONE && fdatasync(fd) != 0)) {
        int e = errno;
        close(fd);
        unlink(path);
        return err_set(st, THEUS_EIO, "cannot write log segment '%s': %s", path, strerror(e));
    }
    if (sync != THEUS_SYNC_NONE) {
        int rc = fio_fsync_dir(st, dir, 1);
        if (rc != THEUS_OK) {
            close(fd);
            return rc;
        }
    }
    *out = fd;
    return THEUS_OK;
}

static int create_segment(wal *w, uint64_t start)
{
    int fd;
    int rc = wal_segment_create(w->st, w->dir, start, w->sync, &fd);
    if (rc != THEUS_OK)
        return rc;
    w->fd = fd;
    w->seg_first = start;
    w->seg_size = WAL_SEG_HEAD;
    w->zero_end = 0;
    return THEUS_OK;
}

int wal_open(wal *w, theus_state *st, const char *dir, const theus_durable_options *o,
             uint64_t start, int create, uint64_t size)
{
    memset(w, 0, sizeof *w);
    w->fd = -1;
    w->st = st;
    w->sync = o->sync;
    w->window_us = o->group_window_us;
    w->segment_bytes = o->segment_bytes;
    w->prealloc = wal_prealloc_step(o);
    if (!(w->dir = theus_xstrdup(dir)))
        return err_set(st, THEUS_ENOMEM, "out of memory opening the log");
    pthread_mutex_init(&w->m, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_cond_init(&w->gcv, NULL);
    int rc;
    if (create) {
        rc = create_segment(w, start);
    } else {
        char path[4096];
        wal_segment_path(dir, start, path, sizeof path);
        w->fd = open(path, O_WRONLY | O_CLOEXEC);
        /* Appends go after what recovery found valid (a torn tail was cut already; what
         * follows the valid end is zeros, which preallocation keeps as its zero-filled
         * part and which are cut off without it). */
        struct stat sb;
        rc = w->fd >= 0 && fstat(w->fd, &sb) == 0 &&
                     (w->prealloc || ftruncate(w->fd, (off_t)size) == 0) &&
                     lseek(w->fd, (off_t)size, SEEK_SET) == (off_t)size
                 ? THEUS_OK
                 : err_set(st, THEUS_EIO, "cannot open log segment '%s': %s", path,
                           strerror(errno));
        w->seg_first = start;
        w->seg_size = size;
        if (rc == THEUS_OK && w->prealloc && (uint64_t)sb.st_size > size)
            w->zero_end = (uint64_t)sb.st_size;
    }
    if (rc != THEUS_OK)
        wal_close(w);
    return rc;
}

/* Shared: point this process's fd at the segment the shared area names (with w->m held). */
static int follow_segment(wal *w)
{
    uint64_t first = atomic_load_explicit(&w->sa->seg_first, memory_order_acquire);
    if (w->fd >= 0 && w->seg_first == first)
        return THEUS_OK;
    char path[4096];
    wal_segment_path(w->dir, first, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(w->st, THEUS_EIO, "cannot open log segment '%s': %s", path,
                       strerror(errno));
    if (w->fd >= 0)
        close(w->fd);
    w->fd = fd;
    w->seg_first = first;
    return THEUS_OK;
}

int wal_open_shared(wal *w, theus_state *st, const char *dir, const theus_durable_options *o)
{
    memset(w, 0, sizeof *w);
    w->fd = -1;
    w->st = st;
    w->sync = o->sync;
    w->window_us = o->group_window_us;
    w->sa = &shared_area_of(st)->durable;
    w->segment_bytes = w->sa->segment_bytes;
    w->prealloc = w->sa->prealloc;
    if (!(w->dir = theus_xstrdup(dir)))
        return err_set(st, THEUS_ENOMEM, "out of memory opening the log");
    pthread_mutex_init(&w->m, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_cond_init(&w->gcv, NULL);
    pthread_mutex_lock(&w->m);
    int rc = follow_segment(w);
    pthread_mutex_unlock(&w->m);
    if (rc != THEUS_OK)
        wal_close(w);
    return rc;
}

void wal_close(wal *w)
{
    /* A private state's segment is left exact (its zero tail cut); a shared one's stays
     * with the state's other processes. Unsynced: a zero tail left by a crash is as good. */
    if (w->fd >= 0 && !w->sa && !w->broken && w->zero_end > w->seg_size &&
        ftruncate(w->fd, (off_t)w->seg_size) != 0)
        w->broken = 1;
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    if (w->dir) {
        pthread_mutex_destroy(&w->m);
        pthread_cond_destroy(&w->cv);
        pthread_cond_destroy(&w->gcv);
    }
    theus_xfree(w->dir);
    theus_xfree(w->buf);
    w->dir = NULL;
    w->buf = NULL;
}

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

/* Bytes of the record of @b. */
static uint64_t record_len(const wal *w, const publish_batch *b)
{
    return WAL_REC_OVERHEAD + body_len(w->st, b->tx);
}

/* The record of @b at byte @at of the open segment; *end: where it ends (failed: where it
 * would have ended — bytes up to there may have been written). */
static int write_record(wal *w, const publish_batch *b, uint64_t at, uint64_t *end)
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
    wal_put32(tmp + 4, 0);
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

/* ---- the listener -------------------------------------------------------------------- */

/* The committing thread's record number, from prepare to acknowledge. */
static _Thread_local struct {
    const wal *w;
    uint64_t seq;
} tls_rec;

static int wal_prepare(void *user, const publish_batch *b)
{
    wal *w = user;
    if (w->broken)
        return err_set(w->st, THEUS_EIO, "log: an earlier write or sync failed; the durable "
                       "state refuses commits until it is reopened");
    if (w->segment_bytes && w->seg_size >= w->segment_bytes && !b->init) {
        int rc = wal_rotate(w, b->version - 1);
        if (rc != THEUS_OK)
            return rc;
    }
    w->rec_start = w->seg_size;
    prealloc_room(w, w->fd, w->rec_start, record_len(w, b), &w->zero_end, &w->nextends);
    uint64_t end = 0;
    int rc = write_record(w, b, w->rec_start, &end);
    if (rc != THEUS_OK) {
        /* Leave the segment as it was; if even that fails the log is unusable. */
        int z;
        if (cut_back(w->fd, w->rec_start, end, &w->zero_end, &z) != 0)
            w->broken = 1;
        return rc;
    }
    w->seg_size = end;
    count_record(w, 1);
    pthread_mutex_lock(&w->m);
    tls_rec.w = w;
    tls_rec.seq = ++w->written;
    if (w->gathering)
        pthread_cond_signal(&w->gcv);
    pthread_mutex_unlock(&w->m);
    return THEUS_OK;
}

static void wal_cancel(void *user, const publish_batch *b)
{
    (void)b;
    wal *w = user;
    /* A group leader may have synced the record meanwhile: its zeros are synced too, so
     * that a power loss cannot bring back a commit that failed. */
    int z;
    if (cut_back(w->fd, w->rec_start, w->seg_size, &w->zero_end, &z) != 0 ||
        (z && w->sync != THEUS_SYNC_NONE && fdatasync(w->fd) != 0))
        w->broken = 1;
    w->seg_size = w->rec_start;
    count_record(w, -1);
    tls_rec.w = NULL;
}

static void wal_published(void *user, const publish_batch *b)
{
    (void)b;
    wal *w = user;
    if (w->sync != THEUS_SYNC_COMMIT)
        return;
    pthread_mutex_lock(&w->m);
    uint64_t target = w->written;
    pthread_mutex_unlock(&w->m);
    int ok = fdatasync(w->fd) == 0;
    count_sync(w);
    pthread_mutex_lock(&w->m);
    if (ok && target > w->synced)
        w->synced = target;
    if (!ok)
        w->broken = 1;
    pthread_mutex_unlock(&w->m);
}

/* The group size a leader gathers for next time: the largest group seen, until a window
 * ends without it (then what came). Not simply the last group: with N writers that each
 * wait for their own record, groups of N/2 while the other half commits during the sync
 * would be just as stable, at half the commits per fdatasync. */
static uint64_t group_next(uint64_t want, uint64_t covered, int timed_out)
{
    return timed_out || covered > want ? covered : want;
}

static void add_us(struct timespec *ts, uint32_t us)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_nsec += (long)us * 1000;
    while (ts->tv_nsec >= 1000000000L) {
        ts->tv_nsec -= 1000000000L;
        ts->tv_sec++;
    }
}

static int wal_acknowledge(void *user, const publish_batch *b)
{
    wal *w = user;
    if (tls_rec.w != w)
        return THEUS_OK;
    uint64_t seq = tls_rec.seq;
    tls_rec.w = NULL;
    if (w->sync == THEUS_SYNC_NONE)
        return THEUS_OK;
    pthread_mutex_lock(&w->m);
    while (w->synced < seq && !w->broken) {
        if (w->sync == THEUS_SYNC_COMMIT || w->syncing) {
            /* COMMIT: published() synced it already unless it failed. GROUP: a leader is
             * syncing; its sync may or may not cover this record. */
            if (w->sync == THEUS_SYNC_COMMIT)
                break;
            pthread_cond_wait(&w->cv, &w->m);
            continue;
        }
        /* Lead: gather records for a moment when the last group was a crowd, then one
         * fdatasync for everything written so far. */
        w->syncing = 1;
        int timed_out = 0;
        if (w->window_us && w->last_group > 1) {
            /* Until as many records as the group size wanted are unsynced (group_next; the
             * appenders signal gcv while it gathers), at most the window. */
            struct timespec ts;
            add_us(&ts, w->window_us);
            w->gathering = 1;
            while (w->written - w->synced < w->last_group && !w->broken)
                if (pthread_cond_timedwait(&w->gcv, &w->m, &ts) != 0) {
                    timed_out = 1;
                    break;
                }
            w->gathering = 0;
        }
        uint64_t target = w->written;
        int fd = w->fd;
        pthread_mutex_unlock(&w->m);
        int ok = fdatasync(fd) == 0;
        count_sync(w);
        pthread_mutex_lock(&w->m);
        w->syncing = 0;
        if (ok) {
            w->last_group = group_next(w->last_group, target > w->synced ? target - w->synced : 0,
                                       timed_out);
            if (target > w->synced)
                w->synced = target;
        } else {
            w->broken = 1;
        }
        pthread_cond_broadcast(&w->cv);
    }
    int rc = w->synced >= seq ? THEUS_OK
                              : err_set(w->st, THEUS_EIO, "log: version %llu is published but "
                                        "its record could not be synced (not durable)",
                                        (unsigned long long)b->version);
    pthread_mutex_unlock(&w->m);
    return rc;
}

/* ---- durable shared states ------------------------------------------------------------
 * The append position, the segment and the record numbers are in the shared area; records
 * are appended under the commit lock by whichever process commits (pwrite at append_off).
 * Group sync across threads and processes: a committer whose record is not synced yet
 * becomes the leader if there is none (CAS on leader_pid), fdatasyncs everything written so
 * far and wakes the others (futex sync_wake); the others wait on sync_wake. A waiter that
 * finds the leader dead — or, after THEUS_SHARED_WAIT_MS, stuck — takes over: two
 * concurrent fdatasyncs are harmless. */

static void max_store(_Atomic uint64_t *x, uint64_t v)
{
    uint64_t cur = atomic_load_explicit(x, memory_order_relaxed);
    while (cur < v && !atomic_compare_exchange_weak_explicit(x, &cur, v, memory_order_release,
                                                             memory_order_relaxed))
        ;
}

static void mark_broken(wal *w)
{
    atomic_store_explicit(&w->sa->broken, 1, memory_order_release);
    state_futex_wake(&w->sa->sync_wake, 1);
}

/* Under the commit lock: close the segment (synced: a group leader that still syncs the old
 * one may count on it) and start segment @start. */
static int rotate_shared(wal *w, uint64_t start)
{
    shared_durable_area *sa = w->sa;
    pthread_mutex_lock(&w->m);
    int rc = follow_segment(w);
    if (rc != THEUS_OK || atomic_load_explicit(&sa->seg_first, memory_order_relaxed) >= start) {
        pthread_mutex_unlock(&w->m);
        return rc;
    }
    uint64_t written = atomic_load_explicit(&sa->written, memory_order_relaxed);
    /* The closed segment ends at its last record (its zero tail cut; a crash that leaves
     * the tail is as good: recovery takes zeros for the end). */
    if (sa->zero_end > sa->append_off) {
        sa->zero_end = sa->append_off;
        if (ftruncate(w->fd, (off_t)sa->append_off) != 0) {
            pthread_mutex_unlock(&w->m);
            mark_broken(w);
            return err_set(w->st, THEUS_EIO, "log: cannot cut the closed segment's "
                           "preallocated tail: %s", strerror(errno));
        }
    }
    if (fdatasync(w->fd) != 0) {
        pthread_mutex_unlock(&w->m);
        mark_broken(w);
        return err_set(w->st, THEUS_EIO, "log: fdatasync failed: %s", strerror(errno));
    }
    count_sync(w);
    max_store(&sa->synced, written);
    sa->rotating = start;
    int fd;
    rc = wal_segment_create(w->st, w->dir, start, THEUS_SYNC_COMMIT, &fd);
    if (rc == THEUS_OK) {
        wal_fault(WAL_POINT_ROTATING);
        close(w->fd);
        w->fd = fd;
        w->seg_first = start;
        /* seg_first first: the agreement after a crash from here on resets the positions
         * of a segment that `rotating` names (shared_durable_agree). */
        atomic_store_explicit(&sa->seg_first, start, memory_order_release);
        sa->append_off = WAL_SEG_HEAD;
        sa->zero_end = 0;
        sa->dirty_end = WAL_SEG_HEAD;
    }
    sa->rotating = 0;
    pthread_mutex_unlock(&w->m);
    state_futex_wake(&sa->sync_wake, 1);
    return rc;
}

static int shared_prepare(void *user, const publish_batch *b)
{
    wal *w = user;
    shared_durable_area *sa = w->sa;
    if (atomic_load_explicit(&sa->broken, memory_order_acquire) || w->broken)
        return err_set(w->st, THEUS_EIO, "log: an earlier write or sync of this durable shared "
                       "state failed; it refuses commits until all its processes reopen it");
    pthread_mutex_lock(&w->m);
    int rc = follow_segment(w);
    pthread_mutex_unlock(&w->m);
    if (rc != THEUS_OK)
        return rc;
    if (w->segment_bytes && sa->append_off >= w->segment_bytes && !b->init &&
        (rc = rotate_shared(w, b->version - 1)) != THEUS_OK)
        return rc;
    uint64_t len = record_len(w, b);
    prealloc_room(w, w->fd, sa->append_off, len, &sa->zero_end, &sa->log_extends);
    sa->inflight_off = sa->append_off;
    sa->inflight_version = b->version;
    sa->inflight_init = (uint32_t)b->init;
    sa->dirty_end = sa->inflight_off + len;
    sa->inflight = 1;
    uint64_t end = 0;
    rc = write_record(w, b, sa->inflight_off, &end);
    if (rc != THEUS_OK) {
        int z;
        if (cut_back(w->fd, sa->inflight_off, sa->dirty_end, &sa->zero_end, &z) != 0)
            mark_broken(w);
        sa->dirty_end = sa->inflight_off;
        sa->inflight = 0;
        return rc;
    }
    wal_fault(WAL_POINT_WRITTEN);
    count_record(w, 1);
    sa->append_off = end;
    wal_fault(WAL_POINT_APPENDED);
    tls_rec.w = w;
    tls_rec.seq = atomic_fetch_add_explicit(&sa->written, 1, memory_order_acq_rel) + 1;
    if (atomic_load_explicit(&sa->gathering, memory_order_acquire))
        state_futex_wake(&sa->write_wake, 1);
    return THEUS_OK;
}

static void shared_cancel(void *user, const publish_batch *b)
{
    (void)b;
    wal *w = user;
    shared_durable_area *sa = w->sa;
    tls_rec.w = NULL;
    /* Past the redo record's point of no return the commit will be finished by the next
     * taker of the commit lock: its record stays (shared_durable_agree keeps it then). */
    if (redo_pending(w->st))
        return;
    uint64_t to = sa->dirty_end > sa->append_off ? sa->dirty_end : sa->append_off;
    int z;
    if (cut_back(w->fd, sa->inflight_off, to, &sa->zero_end, &z) != 0 ||
        (z && w->sync != THEUS_SYNC_NONE && fdatasync(w->fd) != 0))
        mark_broken(w);
    sa->append_off = sa->inflight_off;
    sa->dirty_end = sa->inflight_off;
    sa->inflight = 0;
    count_record(w, -1);
}

static void shared_published(void *user, const publish_batch *b)
{
    (void)b;
    wal *w = user;
    shared_durable_area *sa = w->sa;
    sa->inflight = 0;
    if (w->sync != THEUS_SYNC_COMMIT)
        return;
    uint64_t target = atomic_load_explicit(&sa->written, memory_order_relaxed);
    count_sync(w);
    if (fdatasync(w->fd) == 0)
        max_store(&sa->synced, target);
    else
        mark_broken(w);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The leader's fdatasync of every record written so far. */
static void lead_sync(wal *w)
{
    shared_durable_area *sa = w->sa;
    uint64_t before = atomic_load_explicit(&sa->synced, memory_order_acquire);
    uint64_t group = atomic_load_explicit(&sa->last_group, memory_order_relaxed);
    int timed_out = 0;
    if (w->window_us && group > 1) {
        /* Gather: wait (at most the window) until as many records as the group size wanted
         * (group_next) are in. */
        atomic_store_explicit(&sa->gathering, 1, memory_order_release);
        uint64_t end = mono_ns() + (uint64_t)w->window_us * 1000u;
        for (;;) {
            uint32_t seen = atomic_load_explicit(&sa->write_wake, memory_order_acquire);
            uint64_t now = mono_ns();
            if (atomic_load_explicit(&sa->written, memory_order_acquire) - before >= group)
                break;
            if (now >= end) {
                timed_out = 1;
                break;
            }
            state_futex_wait(&sa->write_wake, seen, 1, end - now);
        }
        atomic_store_explicit(&sa->gathering, 0, memory_order_release);
    }
    /* Records up to target are in segments up to first; older ones were synced when they
     * were closed. */
    uint64_t target = atomic_load_explicit(&sa->written, memory_order_acquire);
    uint64_t first = atomic_load_explicit(&sa->seg_first, memory_order_acquire);
    int ok = 1;
    pthread_mutex_lock(&w->m);
    if (w->fd >= 0 && w->seg_first == first) {
        ok = fdatasync(w->fd) == 0;
        count_sync(w);
    } else if (w->fd < 0 || w->seg_first < first) {
        char path[4096];
        wal_segment_path(w->dir, first, path, sizeof path);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            ok = fdatasync(fd) == 0;
            count_sync(w);
            close(fd);
        } else {
            /* Gone only if a rotation since (which synced it) and a retention removed it. */
            ok = atomic_load_explicit(&sa->seg_first, memory_order_acquire) > first;
        }
    } /* else: this process already moved past `first`, whose rotation synced it */
    pthread_mutex_unlock(&w->m);
    atomic_fetch_add_explicit(&sa->syncs, 1, memory_order_relaxed);
    if (ok) {
        uint64_t prev = atomic_load_explicit(&sa->synced, memory_order_acquire);
        atomic_store_explicit(&sa->last_group,
                              group_next(group, target > prev ? target - prev : 0, timed_out),
                              memory_order_relaxed);
        max_store(&sa->synced, target);
    } else {
        atomic_store_explicit(&sa->broken, 1, memory_order_release);
    }
}

/* How often a waiter looks whether the leader still lives. */
#define LEADER_CHECK_NS (20ull * 1000000ull)

static int shared_acknowledge(void *user, const publish_batch *b)
{
    wal *w = user;
    shared_durable_area *sa = w->sa;
    if (tls_rec.w != w)
        return THEUS_OK;
    uint64_t seq = tls_rec.seq;
    tls_rec.w = NULL;
    if (w->sync == THEUS_SYNC_NONE)
        return THEUS_OK;
    int32_t self = (int32_t)getpid();
    uint64_t bound_ns = shared_wait_bound_ms() * 1000000ull, stuck_since = 0;
    while (w->sync == THEUS_SYNC_GROUP &&
           atomic_load_explicit(&sa->synced, memory_order_acquire) < seq &&
           !atomic_load_explicit(&sa->broken, memory_order_acquire)) {
        uint32_t seen = atomic_load_explicit(&sa->sync_wake, memory_order_acquire);
        if (atomic_load_explicit(&sa->synced, memory_order_acquire) >= seq)
            break;
        int32_t leader = atomic_load_explicit(&sa->leader_pid, memory_order_acquire);
        if (leader == 0) {
            int32_t none = 0;
            if (atomic_compare_exchange_strong(&sa->leader_pid, &none, self)) {
                atomic_store_explicit(&sa->leader_start, shared_proc_start(getpid()),
                                      memory_order_release);
                lead_sync(w);
                atomic_store_explicit(&sa->leader_start, 0, memory_order_relaxed);
                atomic_store_explicit(&sa->leader_pid, 0, memory_order_release);
                state_futex_wake(&sa->sync_wake, 1);
                stuck_since = 0;
            }
            continue;
        }
        state_futex_wait(&sa->sync_wake, seen, 1, LEADER_CHECK_NS);
        if (atomic_load_explicit(&sa->sync_wake, memory_order_acquire) != seen) {
            stuck_since = 0;
            continue;
        }
        /* Nothing moved for a while: is the leader still there? */
        uint64_t now = mono_ns();
        if (!stuck_since)
            stuck_since = now;
        uint64_t start = atomic_load_explicit(&sa->leader_start, memory_order_acquire);
        int dead = leader != self && start != 0 && !shared_proc_alive(leader, start);
        if ((dead || now - stuck_since >= bound_ns) &&
            atomic_compare_exchange_strong(&sa->leader_pid, &leader, 0)) {
            /* Take over: the next round elects a new leader (maybe this thread). */
            state_futex_wake(&sa->sync_wake, 1);
            stuck_since = 0;
        }
    }
    if (atomic_load_explicit(&sa->synced, memory_order_acquire) >= seq)
        return THEUS_OK;
    return err_set(w->st, THEUS_EIO, "log: version %llu is published but its record could not "
                   "be synced (not durable)", (unsigned long long)b->version);
}

int wal_rotate(wal *w, uint64_t start)
{
    if (w->sa)
        return rotate_shared(w, start);
    /* No leader may be inside fdatasync on the segment being closed. */
    pthread_mutex_lock(&w->m);
    while (w->syncing)
        pthread_cond_wait(&w->cv, &w->m);
    /* The closed segment ends at its last record: its zero tail is cut (under the same
     * fdatasync). A crash that leaves it is as good: recovery takes zeros for the end. */
    int ok = w->zero_end <= w->seg_size || ftruncate(w->fd, (off_t)w->seg_size) == 0;
    if (ok)
        w->zero_end = 0;
    ok = ok && (w->sync == THEUS_SYNC_NONE || fdatasync(w->fd) == 0);
    if (ok && w->sync != THEUS_SYNC_NONE)
        count_sync(w);
    if (ok && w->written > w->synced)
        w->synced = w->written;
    pthread_cond_broadcast(&w->cv);
    int old = w->fd;
    uint64_t old_first = w->seg_first, old_size = w->seg_size;
    int rc = ok ? create_segment(w, start)
                : err_set(w->st, THEUS_EIO, "log: cannot close the segment (ftruncate or "
                          "fdatasync failed): %s", strerror(errno));
    if (rc == THEUS_OK) {
        close(old);
    } else {
        w->fd = old;
        w->seg_first = old_first;
        w->seg_size = old_size;
    }
    pthread_mutex_unlock(&w->m);
    return rc;
}

int wal_attach(wal *w, void (*release)(void *user), void *user)
{
    (void)user;
    publish_listener l = {.prepare = w->sa ? shared_prepare : wal_prepare,
                          .cancel = w->sa ? shared_cancel : wal_cancel,
                          .published = w->sa ? shared_published : wal_published,
                          .acknowledge = w->sa ? shared_acknowledge : wal_acknowledge,
                          .user = w};
    return publish_listen_owned(w->st, &l, release);
}

int wal_append_note(wal *w, const unsigned char *rec, size_t len, int sync)
{
    int broken = w->sa ? (int)atomic_load_explicit(&w->sa->broken, memory_order_acquire)
                       : w->broken;
    if (broken || w->fd < 0)
        return err_set(w->st, THEUS_EIO, "log: an earlier write or sync failed; audit record "
                       "not written");
    /* A durable shared state: another process may have begun a new segment since this one
     * last wrote (a refused commit's audit record comes without a prepare of this process). */
    if (w->sa) {
        pthread_mutex_lock(&w->m);
        int rc = follow_segment(w);
        pthread_mutex_unlock(&w->m);
        if (rc != THEUS_OK)
            return rc;
    }
    /* Records are written at their position (pwrite): the end of the open segment, which
     * for a durable shared state is the shared append position. */
    uint64_t at = w->sa ? w->sa->append_off : w->seg_size;
    uint64_t *zero_end = w->sa ? &w->sa->zero_end : &w->zero_end;
    prealloc_room(w, w->fd, at, len, zero_end, w->sa ? &w->sa->log_extends : &w->nextends);
    /* A process killed while writing it leaves bytes past append_off: the agreement zeroes
     * them up to dirty_end. */
    if (w->sa && w->sa->dirty_end < at + len)
        w->sa->dirty_end = at + len;
    if (w->sa && wal_fault_hook && fio_pwrite_all(w->fd, rec, len / 2, at) == 0)
        wal_fault(WAL_POINT_NOTE_PARTIAL);
    if (fio_pwrite_all(w->fd, rec, len, at) != 0) {
        int e = errno, z;
        if (cut_back(w->fd, at, at + len, zero_end, &z) != 0) {
            if (w->sa)
                mark_broken(w);
            else
                w->broken = 1;
        }
        if (w->sa)
            w->sa->dirty_end = at;
        return err_set(w->st, THEUS_EIO, "log: cannot write an audit record: %s", strerror(e));
    }
    count_record(w, 1);
    if (w->sa)
        w->sa->append_off = at + len;
    else
        w->seg_size = at + len;
    if (sync && w->sync != THEUS_SYNC_NONE)
        count_sync(w);
    if (sync && w->sync != THEUS_SYNC_NONE && fdatasync(w->fd) != 0) {
        /* as for a commit record whose sync failed */
        if (w->sa)
            mark_broken(w);
        else
            w->broken = 1;
        return err_set(w->st, THEUS_EIO, "log: cannot sync an audit record: %s", strerror(errno));
    }
    return THEUS_OK;
}
