/* Recovery from the log: a segment mapped and walked record by record, each checked
 * against the schema and its place in the version order, commits applied to the fresh state
 * (and published) above the checkpoint's version up to the target; a torn tail of the
 * newest segment reported, and with `repair` cut off. */
#include "durable/recover_internal.h"
#include "error.h"
#include "publish.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the log ----------------------------------------------------------------------------- */

int recover_seg_open(const theus_state *st, const char *path, seg_map *m)
{
    m->p = NULL;
    m->size = 0;
    m->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (m->fd < 0 || fstat(m->fd, &sb) != 0) {
        int e = errno;
        if (m->fd >= 0)
            close(m->fd);
        m->fd = -1;
        return err_set(st, THEUS_EIO, "cannot open log segment '%s': %s", path, strerror(e));
    }
    m->size = (uint64_t)sb.st_size;
    if (m->size) {
        void *p = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, m->fd, 0);
        if (p == MAP_FAILED) {
            close(m->fd);
            m->fd = -1;
            return err_set(st, THEUS_EIO, "cannot map log segment '%s': %s", path, strerror(errno));
        }
        m->p = p;
        madvise(p, m->size, MADV_SEQUENTIAL);
    }
    return THEUS_OK;
}

void recover_seg_close(seg_map *m)
{
    if (m->p)
        munmap(m->p, m->size);
    if (m->fd >= 0)
        close(m->fd);
    m->p = NULL;
    m->fd = -1;
}

static size_t esize_of(void *user, uint32_t field)
{
    const theus_state *st = user;
    return field < st->hdr->nfields ? theus_dtype_size((theus_dtype)st->fields[field].dtype) : 0;
}

/* Check a record's deltas against the schema and, with @apply, apply them. */
static int replay_record(theus_state *st, const char *path, const wal_rec *r, int apply)
{
    wal_cursor c;
    uint32_t n;
    char why[256];
    if (wal_deltas_begin(r, &c, &n, why, sizeof why) != 0)
        return err_set(st, THEUS_ECORRUPT, "'%s': record at byte %llu: %s", path,
                       (unsigned long long)r->offset, why);
    wal_delta d;
    int got, rc = THEUS_OK;
    while (rc == THEUS_OK && (got = wal_delta_next(&c, esize_of, st, &d, why, sizeof why)) == 1) {
        const field_desc *f = &st->fields[d.field];
        int ok = d.r.ndim == (int)f->ndim;
        for (int k = 0; ok && k < d.r.ndim; k++)
            ok = d.r.stop[k] <= f->shape[k];
        if (!ok || (r->kind == WAL_KIND_INIT && d.op != DELTA_ASSIGN)) {
            snprintf(why, sizeof why, "a delta outside field '%s'", f->name);
            got = -1;
            break;
        }
        if (apply) {
            rc = recover_apply_bytes(st, d.field, &d.r, (int)d.op, d.payload, d.nbytes);
            if (rc == THEUS_OK && r->kind == WAL_KIND_COMMIT)
                publish_region(st, d.field, &d.r, r->version);
        }
    }
    if (rc != THEUS_OK)
        return rc;
    if (got < 0)
        return err_set(st, THEUS_ECORRUPT, "'%s': record of version %llu at byte %llu: %s",
                       path, (unsigned long long)r->version, (unsigned long long)r->offset, why);
    if (apply && r->kind == WAL_KIND_COMMIT)
        publish_version(st, r->version);
    return THEUS_OK;
}

/* An audit record (wal_record.h) rebuilds nothing; it must still be well formed and in
 * place: right after its commit (@last), or, refused, before the version it would have
 * created (@last + 1). */
static int check_audit_record(theus_state *st, const char *path, const wal_rec *r,
                              uint64_t last)
{
    wal_cursor c;
    uint32_t n;
    wal_audit_entry e;
    char why[256];
    int got = wal_audit_begin(r, &c, &n, why, sizeof why) == 0 ? 1 : -1;
    while (got == 1 && (got = wal_audit_next(&c, &e, why, sizeof why)) == 1)
        if (r->version != (e.refused ? last + 1 : last)) {
            snprintf(why, sizeof why, "audit record of %s version %llu after version %llu",
                     e.refused ? "refused" : "committed", (unsigned long long)r->version,
                     (unsigned long long)last);
            got = -1;
        }
    return got < 0 ? err_set(st, THEUS_ECORRUPT, "'%s' at byte %llu: %s", path,
                             (unsigned long long)r->offset, why)
                   : THEUS_OK;
}

/* Walk segment @path (start version @start, the newest when @newest) from *last on,
 * applying commits above @base up to @target. Returns the end of valid data in *valid. */
int recover_replay_segment(theus_state *st, const char *path, uint64_t start, int newest,
                           uint64_t base, uint64_t target, int repair, uint64_t *last,
                           rebuild_result *res, uint64_t *valid)
{
    seg_map m;
    int rc = recover_seg_open(st, path, &m);
    if (rc != THEUS_OK)
        return rc;
    char why[256];
    uint64_t hs;
    *valid = 0;
    if (wal_seg_head_decode(m.p, m.size, &hs, why, sizeof why) != 0) {
        int unwritten = m.size < WAL_SEG_HEAD;
        for (uint64_t i = 0; !unwritten && i < m.size && m.p[i] == 0; i++)
            unwritten = i + 1 == m.size;
        recover_seg_close(&m);
        if (newest && unwritten) {
            /* Created, never written: a crash while starting this segment. */
            res->torn_bytes = m.size;
            res->torn_offset = 0;
            return THEUS_OK;
        }
        return err_set(st, THEUS_ECORRUPT, "'%s' at byte 0: %s", path, why);
    }
    if (hs != start) {
        recover_seg_close(&m);
        return err_set(st, THEUS_ECORRUPT, "'%s' at byte 16: start version %llu does not match "
                       "the file name", path, (unsigned long long)hs);
    }
    if (start != *last) {
        recover_seg_close(&m);
        return err_set(st, THEUS_ECORRUPT, "'%s': the log before it ends at version %llu, this "
                       "segment starts at %llu (missing records)", path,
                       (unsigned long long)*last, (unsigned long long)start);
    }
    uint64_t off = WAL_SEG_HEAD;
    wal_rec r;
    for (;;) {
        wal_scan s = wal_next(m.p, m.size, off, *last, &r, why, sizeof why);
        if (s == WAL_SCAN_END)
            break;
        if (s == WAL_SCAN_TORN && newest) {
            /* The torn record's bytes (a preallocated zero tail after it is no part of it). */
            res->torn_bytes = r.size;
            res->torn_offset = off;
            break;
        }
        if (s != WAL_SCAN_RECORD) {
            rc = err_set(st, THEUS_ECORRUPT, "'%s' at byte %llu: %s", path,
                         (unsigned long long)off, why);
            break;
        }
        if (r.kind == WAL_KIND_AUDIT) {
            if ((rc = check_audit_record(st, path, &r, *last)) != THEUS_OK)
                break;
            off += r.size;
            continue;
        }
        int in_order = r.kind == WAL_KIND_COMMIT ? r.version == *last + 1
                                                 : r.version == 1 && *last == 1;
        if (!in_order) {
            rc = err_set(st, THEUS_ECORRUPT, "'%s' at byte %llu: record of version %llu after "
                         "version %llu", path, (unsigned long long)off,
                         (unsigned long long)r.version, (unsigned long long)*last);
            break;
        }
        if (r.version > target)
            break;
        int apply = r.kind == WAL_KIND_COMMIT ? r.version > base : base == 1;
        rc = replay_record(st, path, &r, apply);
        if (rc != THEUS_OK)
            break;
        res->records += apply;
        *last = r.version;
        off += r.size;
    }
    *valid = off;
    recover_seg_close(&m);
    /* Cut, not zeroed: the writer preallocates afresh from the end (wal_open). */
    if (rc == THEUS_OK && res->torn_bytes && repair) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t)off) != 0 || fsync(fd) != 0)
            rc = err_set(st, THEUS_EIO, "cannot cut the torn tail of '%s' at byte %llu: %s",
                         path, (unsigned long long)off, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    return rc;
}
