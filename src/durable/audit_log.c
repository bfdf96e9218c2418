/* Audit records into the write-ahead log (see audit_log.h). */
#include "durable/audit_log.h"
#include "alloc.h"
#include "durable/durable.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int audit_log_on(const theus_state *st)
{
    const durable *d = durable_of(st);
    return d && d->has_wal && !d->read_only;
}

int audit_log_append(theus_state *st, uint64_t version, const wal_audit_entry *e, size_t n,
                     int sync)
{
    durable *d = durable_of(st);
    if (!d || !d->has_wal || d->read_only || n == 0)
        return THEUS_OK;
    uint64_t body = wal_audit_body_size(e, n);
    size_t len = (size_t)(WAL_REC_OVERHEAD + body);
    unsigned char *rec = theus_xmalloc(len);
    int rc;
    if (!rec) {
        rc = err_set(st, THEUS_ENOMEM, "log: out of memory for an audit record");
    } else {
        wal_audit_encode(rec + WAL_REC_HEAD, e, n);
        wal_record_encode(rec, WAL_KIND_AUDIT, version, rec + WAL_REC_HEAD, body);
        rc = wal_append_note(&d->w, rec, len, sync);
        theus_xfree(rec);
    }
    /* The log must not miss audit records silently: like a failed sync, every later commit
     * is refused until the state is reopened. */
    if (rc != THEUS_OK) {
        pthread_mutex_lock(&d->w.m);
        d->w.broken = 1;
        pthread_mutex_unlock(&d->w.m);
    }
    return rc;
}

/* The audit entries of one segment file. */
static int replay_segment(const theus_state *st, const char *path, audit_log_fn fn, void *user)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return err_set(st, THEUS_EIO, "cannot read log segment '%s': %s", path, strerror(e));
    }
    uint64_t size = (uint64_t)sb.st_size;
    void *m = size ? mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (m == MAP_FAILED)
        return err_set(st, THEUS_EIO, "cannot map log segment '%s': %s", path, strerror(errno));
    const unsigned char *p = m;
    char why[256];
    uint64_t start, off = WAL_SEG_HEAD;
    wal_rec r;
    if (p && wal_seg_head_decode(p, size, &start, why, sizeof why) == 0)
        for (uint64_t base = start;
             wal_next(p, size, off, base, &r, why, sizeof why) == WAL_SCAN_RECORD;
             base = r.kind == WAL_KIND_COMMIT ? r.version : base) {
            wal_cursor c;
            uint32_t n;
            wal_audit_entry e;
            if (r.kind == WAL_KIND_AUDIT && wal_audit_begin(&r, &c, &n, why, sizeof why) == 0)
                while (wal_audit_next(&c, &e, why, sizeof why) == 1)
                    fn(user, r.version, &e);
            off += r.size;
        }
    if (m)
        munmap(m, (size_t)size);
    return THEUS_OK;
}

int audit_log_replay(const theus_state *st, audit_log_fn fn, void *user)
{
    const durable *d = durable_of(st);
    if (!d || !d->has_wal)
        return THEUS_OK;
    dir_list l;
    int rc = dir_scan(st, d->dir, &l);
    if (rc != THEUS_OK)
        return rc;
    for (size_t i = 0; rc == THEUS_OK && i < l.nseg; i++) {
        char path[DUR_PATH_MAX];
        wal_segment_path(d->dir, l.seg[i].version, path, sizeof path);
        rc = replay_segment(st, path, fn, user);
    }
    dir_list_free(&l);
    return rc;
}
