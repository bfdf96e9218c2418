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
#include "tx.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Payloads at least this large are written from where they are, not copied. */
#define WAL_DIRECT_MIN (64u * 1024u)

void wal_segment_path(const char *dir, uint64_t start, char *buf, size_t len)
{
    snprintf(buf, len, "%s/wal-%016llx.log", dir, (unsigned long long)start);
}

static int create_segment(wal *w, uint64_t start)
{
    char path[4096];
    wal_segment_path(w->dir, start, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return err_set(w->st, THEUS_EIO, "cannot create log segment '%s': %s", path,
                       strerror(errno));
    unsigned char head[WAL_SEG_HEAD];
    wal_seg_head_encode(head, start);
    if (fio_write_all(fd, head, sizeof head) != 0 ||
        (w->sync != THEUS_SYNC_NONE && fdatasync(fd) != 0)) {
        int e = errno;
        close(fd);
        unlink(path);
        return err_set(w->st, THEUS_EIO, "cannot write log segment '%s': %s", path, strerror(e));
    }
    if (w->sync != THEUS_SYNC_NONE) {
        int rc = fio_fsync_dir(w->st, w->dir, 1);
        if (rc != THEUS_OK) {
            close(fd);
            return rc;
        }
    }
    w->fd = fd;
    w->seg_first = start;
    w->seg_size = WAL_SEG_HEAD;
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
    if (!(w->dir = theus_xstrdup(dir)))
        return err_set(st, THEUS_ENOMEM, "out of memory opening the log");
    pthread_mutex_init(&w->m, NULL);
    pthread_cond_init(&w->cv, NULL);
    int rc;
    if (create) {
        rc = create_segment(w, start);
    } else {
        char path[4096];
        wal_segment_path(dir, start, path, sizeof path);
        w->fd = open(path, O_WRONLY | O_CLOEXEC);
        /* Appends go after what recovery found valid (a torn tail was cut already). */
        rc = w->fd >= 0 && ftruncate(w->fd, (off_t)size) == 0 &&
                     lseek(w->fd, (off_t)size, SEEK_SET) == (off_t)size
                 ? THEUS_OK
                 : err_set(st, THEUS_EIO, "cannot open log segment '%s': %s", path,
                           strerror(errno));
        w->seg_first = start;
        w->seg_size = size;
    }
    if (rc != THEUS_OK)
        wal_close(w);
    return rc;
}

void wal_close(wal *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    if (w->dir) {
        pthread_mutex_destroy(&w->m);
        pthread_cond_destroy(&w->cv);
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
} rec_writer;

static int rw_flush(rec_writer *rw)
{
    if (rw->used && !rw->bad && fio_write_all(rw->w->fd, rw->w->buf, rw->used) != 0)
        rw->bad = errno ? errno : EIO;
    rw->used = 0;
    return rw->bad;
}

static void rw_put(rec_writer *rw, const void *p, size_t n, int in_crc)
{
    if (in_crc)
        rw->crc = crc32c(rw->crc, p, n);
    if (n >= WAL_DIRECT_MIN) {
        if (rw_flush(rw) == 0 && fio_write_all(rw->w->fd, p, n) != 0)
            rw->bad = errno ? errno : EIO;
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

static int write_record(wal *w, const publish_batch *b)
{
    const theus_tx *tx = b->tx;
    const theus_state *st = w->st;
    if (!w->buf) {
        w->buf_cap = 256u * 1024u;
        if (!(w->buf = theus_xmalloc(w->buf_cap)))
            return err_set(st, THEUS_ENOMEM, "log: out of memory");
    }
    uint64_t body = 8;
    for (size_t k = 0; k < tx->ndeltas; k++)
        body += WAL_DELTA_HEAD + 16u * (uint64_t)tx->deltas[k].r.ndim + 8 +
                region_bytes(st, &tx->deltas[k]);
    unsigned char head[WAL_REC_HEAD];
    wal_put32(head, WAL_REC_MAGIC);
    wal_put32(head + 4, b->init ? WAL_KIND_INIT : WAL_KIND_COMMIT);
    wal_put64(head + 8, b->version);
    wal_put64(head + 16, body);
    wal_put32(head + 24, crc32c(0, head, 24));
    rec_writer rw = {.w = w};
    rw_put(&rw, head, sizeof head, 0);
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
    int rc = write_record(w, b);
    off_t end = lseek(w->fd, 0, SEEK_CUR);
    if (rc != THEUS_OK || end < 0) {
        /* Leave the segment as it was; if even that fails the log is unusable. */
        if (ftruncate(w->fd, (off_t)w->rec_start) != 0 ||
            lseek(w->fd, (off_t)w->rec_start, SEEK_SET) < 0)
            w->broken = 1;
        return rc != THEUS_OK ? rc : err_set(w->st, THEUS_EIO, "log: lseek failed");
    }
    w->seg_size = (uint64_t)end;
    pthread_mutex_lock(&w->m);
    tls_rec.w = w;
    tls_rec.seq = ++w->written;
    pthread_mutex_unlock(&w->m);
    return THEUS_OK;
}

static void wal_cancel(void *user, const publish_batch *b)
{
    (void)b;
    wal *w = user;
    if (ftruncate(w->fd, (off_t)w->rec_start) != 0 ||
        lseek(w->fd, (off_t)w->rec_start, SEEK_SET) < 0)
        w->broken = 1;
    w->seg_size = w->rec_start;
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
    pthread_mutex_lock(&w->m);
    if (ok && target > w->synced)
        w->synced = target;
    if (!ok)
        w->broken = 1;
    pthread_mutex_unlock(&w->m);
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
        if (w->window_us && w->last_group > 1) {
            struct timespec ts;
            add_us(&ts, w->window_us);
            pthread_cond_timedwait(&w->cv, &w->m, &ts);
        }
        uint64_t target = w->written;
        int fd = w->fd;
        pthread_mutex_unlock(&w->m);
        int ok = fdatasync(fd) == 0;
        pthread_mutex_lock(&w->m);
        w->syncing = 0;
        if (ok) {
            w->last_group = target - w->synced;
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

int wal_rotate(wal *w, uint64_t start)
{
    /* No leader may be inside fdatasync on the segment being closed. */
    pthread_mutex_lock(&w->m);
    while (w->syncing)
        pthread_cond_wait(&w->cv, &w->m);
    int ok = w->sync == THEUS_SYNC_NONE || fdatasync(w->fd) == 0;
    if (ok && w->written > w->synced)
        w->synced = w->written;
    pthread_cond_broadcast(&w->cv);
    int old = w->fd;
    uint64_t old_first = w->seg_first, old_size = w->seg_size;
    int rc = ok ? create_segment(w, start)
                : err_set(w->st, THEUS_EIO, "log: fdatasync failed: %s", strerror(errno));
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
    publish_listener l = {.prepare = wal_prepare,
                          .cancel = wal_cancel,
                          .published = wal_published,
                          .acknowledge = wal_acknowledge,
                          .user = w};
    return publish_listen_owned(w->st, &l, release);
}

int wal_append_note(wal *w, const unsigned char *rec, size_t len, int sync)
{
    if (w->broken || w->fd < 0)
        return err_set(w->st, THEUS_EIO, "log: an earlier write or sync failed; audit record "
                       "not written");
    if (fio_write_all(w->fd, rec, len) != 0) {
        int e = errno;
        if (ftruncate(w->fd, (off_t)w->seg_size) != 0 ||
            lseek(w->fd, (off_t)w->seg_size, SEEK_SET) < 0)
            w->broken = 1;
        return err_set(w->st, THEUS_EIO, "log: cannot write an audit record: %s", strerror(e));
    }
    w->seg_size += len;
    if (sync && w->sync != THEUS_SYNC_NONE && fdatasync(w->fd) != 0) {
        w->broken = 1;   /* as for a commit record whose sync failed */
        return err_set(w->st, THEUS_EIO, "log: cannot sync an audit record: %s", strerror(errno));
    }
    return THEUS_OK;
}
