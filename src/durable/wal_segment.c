/* The log's segment files: their names, creating one (its head), and the preallocation
 * that extends the open segment ahead of its records; the counters of
 * theus_state_durable_stats and the tests' fault hook. The bottom of the log writer: the
 * open/rotate front (wal.c), the record encoder and both listeners build on it. */
#include "durable/wal.h"
#include "durable/wal_internal.h"
#include "durable/fileio.h"
#include "durable/wal_record.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void (*wal_fault_hook)(int point);

void wal_fault(int point)
{
    if (wal_fault_hook)
        wal_fault_hook(point);
}

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
void wal_prealloc_room(wal *w, int fd, uint64_t at, uint64_t len, uint64_t *zero_end,
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
int wal_cut_back(int fd, uint64_t from, uint64_t to, uint64_t *zero_end, int *wrote_zeros)
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

void wal_count_sync(wal *w)
{
    if (w->sa)
        atomic_fetch_add_explicit(&w->sa->log_syncs, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&w->nsyncs, 1, memory_order_relaxed);
}

void wal_count_record(wal *w, int64_t n)
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

int wal_new_segment(wal *w, uint64_t start)
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
