/* Safetensors files: theus_state_save_safetensors / theus_state_load_safetensors and the
 * pieces checkpoints share with them (atomic writer, validating opener, metadata). */
#include "durable/stfile.h"
#include "alloc.h"
#include "durable/crc32c.h"
#include "durable/fileio.h"
#include "durable/snapshot.h"
#include "error.h"
#include "theus/theus_durable.h"
#include "tx.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* {"tensor": crc32c, ...} of the tensors' checksums (jansson text, theus_xmalloc'd). */
static char *crc_json(const st_out_tensor *t, const uint32_t *crc, size_t n)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    for (size_t i = 0; i < n; i++)
        json_object_set_new(o, t[i].name, json_integer(crc[i]));
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    char *c = text ? theus_xstrdup(text) : NULL;
    free(text);
    return c;
}

int stfile_prefix(const theus_state *st, const char *path, const st_out_tensor *t,
                  const uint32_t *crc, size_t n, const char *const *mkeys,
                  const char *const *mvals, size_t nmeta, size_t min_len,
                  unsigned char **prefix, size_t *plen)
{
    char why[256];
    const char *keys[16], *vals[16];
    if (nmeta + 1 > 16)
        return err_set(st, THEUS_EINVAL, "'%s': too many metadata keys", path);
    char *crcs = crc_json(t, crc, n);
    if (!crcs)
        return err_set(st, THEUS_ENOMEM, "out of memory writing '%s'", path);
    for (size_t i = 0; i < nmeta; i++) {
        keys[i] = mkeys[i];
        vals[i] = mvals[i];
    }
    keys[nmeta] = STFILE_CRC_KEY;
    vals[nmeta] = crcs;
    int rc = st_header_build_padded(t, n, keys, vals, nmeta + 1, min_len, prefix, plen, why,
                                    sizeof why);
    theus_xfree(crcs);
    return rc == THEUS_OK ? THEUS_OK : err_set(st, rc, "'%s': %s", path, why);
}

void *stfile_buf_alloc(size_t n, void **raw)
{
    const size_t al = STFILE_DIRECT_ALIGN;
    *raw = NULL;
    if (n > SIZE_MAX - 2 * al)
        return NULL;
    if (!(*raw = theus_xmalloc(n + 2 * al)))
        return NULL;
    return (void *)(((uintptr_t)*raw + al - 1) & ~(uintptr_t)(al - 1));
}

static uint64_t round_up(uint64_t n)
{
    return (n + STFILE_DIRECT_ALIGN - 1) / STFILE_DIRECT_ALIGN * STFILE_DIRECT_ALIGN;
}

/* [prefix | data] at offset 0 of the temporary file: one direct pwritev of both rounded up
 * to the boundary and a cut to the real size, or through the page cache where the file
 * system refuses direct transfers (tmpfs). 0 or -1 (errno set). */
static int write_packed(const fio_atomic *a, const unsigned char *prefix, size_t plen,
                        unsigned char *data, uint64_t len)
{
    uint64_t padded = round_up(len);
    memset(data + len, 0, (size_t)(padded - len));
    int dfd = open(a->tmp, O_WRONLY | O_DIRECT | O_CLOEXEC);
    if (dfd >= 0) {
        struct iovec v[2] = {{.iov_base = (void *)prefix, .iov_len = plen},
                             {.iov_base = data, .iov_len = (size_t)padded}};
        uint64_t want = plen + padded, done = 0;
        int bad = 0;
        while (done < want && !bad) {
            /* A short transfer (rare): the rest one piece at a time, still aligned. */
            ssize_t w = done == 0 ? pwritev(dfd, v, padded ? 2 : 1, 0)
                        : done < plen ? pwrite(dfd, prefix + done, plen - done, (off_t)done)
                                      : pwrite(dfd, data + (done - plen), (size_t)(want - done),
                                               (off_t)done);
            if (w > 0)
                done += (uint64_t)w;
            else if (w < 0 && errno == EINTR)
                continue;
            else
                bad = 1;
        }
        int e = errno;
        close(dfd);
        if (!bad)
            return padded == len || ftruncate(a->fd, (off_t)(plen + len)) == 0 ? 0 : -1;
        if (done > 0 || e != EINVAL) {
            errno = e;
            return -1;
        }
        /* This file system refuses direct transfers: the page cache then. */
    }
    if (fio_pwrite_all(a->fd, prefix, plen, 0) != 0)
        return -1;
    return len ? fio_pwrite_all(a->fd, data, (size_t)len, plen) : 0;
}

int stfile_write(const theus_state *st, const char *path, mode_t mode, const st_out_tensor *t,
                 size_t n, void *data, uint64_t len, const char *const *mkeys,
                 const char *const *mvals, size_t nmeta)
{
    unsigned char *prefix = NULL, *aligned = NULL;
    void *raw = NULL;
    size_t plen = 0;
    uint32_t *crc = theus_xcalloc(n ? n : 1, sizeof *crc);
    if (!crc)
        return err_set(st, THEUS_ENOMEM, "out of memory writing '%s'", path);
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = (const unsigned char *)data + at;
        crc[i] = t[i].nbytes ? crc32c(0, p, (size_t)t[i].nbytes) : 0;
        at += t[i].nbytes;
    }
    if (at != len) {
        theus_xfree(crc);
        return err_set(st, THEUS_EINVAL, "'%s': tensors of %llu bytes in a buffer of %llu", path,
                       (unsigned long long)at, (unsigned long long)len);
    }
    /* The data section on the boundary: the header padded up to it. */
    int rc = stfile_prefix(st, path, t, crc, n, mkeys, mvals, nmeta, 0, &prefix, &plen);
    if (rc == THEUS_OK && plen % STFILE_DIRECT_ALIGN) {
        size_t want = (size_t)round_up(plen);
        theus_xfree(prefix);
        prefix = NULL;
        rc = stfile_prefix(st, path, t, crc, n, mkeys, mvals, nmeta, want, &prefix, &plen);
        if (rc == THEUS_OK && plen != want)
            rc = err_set(st, THEUS_EINVAL, "'%s': header of %zu bytes, %zu wanted", path, plen, want);
    }
    theus_xfree(crc);
    /* The prefix on the boundary too, for the direct transfer. */
    if (rc == THEUS_OK && !(aligned = stfile_buf_alloc(plen, &raw)))
        rc = err_set(st, THEUS_ENOMEM, "out of memory writing '%s'", path);
    if (rc == THEUS_OK)
        memcpy(aligned, prefix, plen);
    theus_xfree(prefix);
    fio_atomic a;
    if (rc == THEUS_OK)
        rc = fio_atomic_open(st, path, mode, &a);
    if (rc != THEUS_OK) {
        theus_xfree(raw);
        return rc;
    }
    int bad = write_packed(&a, aligned, plen, data, len);
    theus_xfree(raw);
    if (bad) {
        int e = errno;
        fio_atomic_abort(&a);
        return err_set(st, THEUS_EIO, "cannot write '%s': %s", path, strerror(e));
    }
    return fio_atomic_commit(st, &a);
}

int stfile_open(const theus_state *st, const char *path, int *fd, st_header *h)
{
    memset(h, 0, sizeof *h);
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0)
        return err_set(st, errno == ENOENT ? THEUS_ENOENT : THEUS_EIO, "cannot open '%s': %s",
                       path, strerror(errno));
    struct stat sb;
    char why[512];
    unsigned char pre[8];
    uint64_t len = 0;
    int rc;
    if (fstat(*fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = err_set(st, THEUS_EIO, "'%s' is not a regular file", path);
        goto fail;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size >= 8 && fio_pread_all(*fd, pre, 8, 0) != 0) {
        rc = err_set(st, THEUS_EIO, "cannot read '%s': %s", path, strerror(errno));
        goto fail;
    }
    rc = st_header_length(pre, size, &len, why, sizeof why);
    if (rc != THEUS_OK) {
        rc = err_set(st, rc, "'%s': %s", path, why);
        goto fail;
    }
    char *json = theus_xmalloc((size_t)len);
    if (!json) {
        rc = err_set(st, THEUS_ENOMEM, "out of memory reading the header of '%s'", path);
        goto fail;
    }
    if (fio_pread_all(*fd, json, (size_t)len, 8) != 0) {
        theus_xfree(json);
        rc = err_set(st, THEUS_EIO, "cannot read the header of '%s': %s", path, strerror(errno));
        goto fail;
    }
    rc = st_header_parse(json, (size_t)len, size - 8 - len, h, why, sizeof why);
    theus_xfree(json);
    if (rc != THEUS_OK) {
        rc = err_set(st, rc, "'%s': %s", path, why);
        goto fail;
    }
    return THEUS_OK;
fail:
    close(*fd);
    *fd = -1;
    return rc;
}

int stfile_meta(const theus_state *st, const snapshot *s, const char *schema_text,
                const char *keys[STFILE_NMETA], char *vals[STFILE_NMETA])
{
    keys[0] = "theus.format";
    keys[1] = "theus.version";
    keys[2] = "theus.schema";
    keys[3] = "theus.field_versions";
    keys[4] = "theus.kind";
    for (int i = 0; i < STFILE_NMETA; i++)
        vals[i] = NULL;
    char num[32];
    snprintf(num, sizeof num, "%d", THEUS_DURABLE_FORMAT);
    vals[0] = theus_xstrdup(num);
    snprintf(num, sizeof num, "%" PRIu64, s->version);
    vals[1] = theus_xstrdup(num);
    vals[2] = schema_text ? theus_xstrdup(schema_text) : schema_canonical(st->schema);
    vals[3] = snapshot_versions_json(st, s);
    vals[4] = theus_xstrdup("full");
    for (int i = 0; i < STFILE_NMETA; i++)
        if (!vals[i]) {
            stfile_meta_free(vals);
            return err_set(st, THEUS_ENOMEM, "out of memory writing metadata");
        }
    return THEUS_OK;
}

void stfile_meta_free(char *vals[STFILE_NMETA])
{
    for (int i = 0; i < STFILE_NMETA; i++) {
        theus_xfree(vals[i]);
        vals[i] = NULL;
    }
}

int theus_state_save_safetensors(theus_state *st, const char *path)
{
    if (!st || !path)
        return err_set(st, THEUS_EINVAL, "theus_state_save_safetensors: NULL argument");
    stfile_target to = {.path = path, .mode = 0644};
    return stfile_save_state(st, &to, NULL, NULL);
}

/* ---- loading --------------------------------------------------------------------------- */

typedef struct load_item {
    long tensor;     /* index in the header */
    int field;
} load_item;

static int shape_equal(const st_tensor *t, const field_desc *f)
{
    if (t->ndim != (int)f->ndim)
        return 0;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] != f->shape[d])
            return 0;
    return 1;
}

static void shape_format(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t at = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && at < len; d++)
        at += (size_t)snprintf(buf + at, len - at, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (at < len)
        snprintf(buf + at, len - at, "]");
}

/* Match every tensor to a field and check it; fills @items (one per tensor loaded). */
static int load_plan(theus_state *st, const char *path, const st_header *h,
                     const theus_load_options *o, load_item *items, size_t *nitems,
                     int *has_const)
{
    *nitems = 0;
    *has_const = 0;
    unsigned char *seen = theus_xcalloc(st->hdr->nfields ? st->hdr->nfields : 1, 1);
    if (!seen)
        return err_set(st, THEUS_ENOMEM, "out of memory loading '%s'", path);
    int rc = THEUS_OK;
    for (size_t i = 0; i < h->ntensors && rc == THEUS_OK; i++) {
        const st_tensor *t = &h->tensors[i];
        const char *name = o->map ? o->map(t->name, o->map_user) : t->name;
        if (!name)
            continue;
        int fi = state_find_field(st, name);
        if (fi < 0) {
            if (o->skip_unknown)
                continue;
            rc = err_set(st, THEUS_ENOENT, "load '%s': tensor '%s' names no field (field '%s')",
                         path, t->name, name);
            break;
        }
        const field_desc *f = &st->fields[fi];
        if (f->zone == THEUS_ZONE_SIGNAL && !o->load_signal)
            continue;
        char a[160], b[160];
        if (t->dtype != (theus_dtype)f->dtype) {
            rc = err_set(st, THEUS_ESCHEMA,
                         "load '%s': tensor '%s' is %s, field '%s' is %s", path, t->name,
                         st_dtype_name(t->dtype), f->name,
                         st_dtype_name((theus_dtype)f->dtype));
        } else if (!shape_equal(t, f)) {
            shape_format(t->ndim, t->shape, a, sizeof a);
            shape_format((int)f->ndim, f->shape, b, sizeof b);
            rc = err_set(st, THEUS_ESCHEMA,
                         "load '%s': tensor '%s' has shape %s, field '%s' has shape %s", path,
                         t->name, a, f->name, b);
        } else if (seen[fi]) {
            rc = err_set(st, THEUS_EINVAL, "load '%s': two tensors go to field '%s' ('%s')",
                         path, f->name, t->name);
        } else {
            seen[fi] = 1;
            if (f->zone == THEUS_ZONE_CONST)
                *has_const = 1;
            items[(*nitems)++] = (load_item){.tensor = (long)i, .field = fi};
        }
    }
    theus_xfree(seen);
    return rc;
}

static int read_tensor(const theus_state *st, const char *path, int fd, const st_header *h,
                       const st_tensor *t, void *dst)
{
    if (fio_pread_all(fd, dst, t->nbytes, h->data_start + t->begin) != 0)
        return err_set(st, THEUS_EIO, "load '%s': cannot read tensor '%s': %s", path, t->name,
                       strerror(errno));
    return THEUS_OK;
}

/* Const fields: their old values, kept to put back if the transaction then fails. */
typedef struct const_undo {
    int field;
    void *old;
} const_undo;

static void undo_consts(theus_state *st, const_undo *u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (u[i].old)
            theus_state_init_field(st, st->fields[u[i].field].name, u[i].old, THEUS_MEM_HOST);
}

static int load_consts(theus_state *st, const char *path, int fd, const st_header *h,
                       const load_item *items, size_t n, const_undo *u, size_t *nu)
{
    *nu = 0;
    for (size_t k = 0; k < n; k++) {
        const field_desc *f = &st->fields[items[k].field];
        if (f->zone != THEUS_ZONE_CONST || f->nbytes == 0)
            continue;
        const theus_backend *b = st->backend[items[k].field];
        void *old = theus_xmalloc(f->nbytes), *val = theus_xmalloc(f->nbytes);
        int rc = old && val ? THEUS_OK : err_set(st, THEUS_ENOMEM, "out of memory loading '%s'", path);
        if (rc == THEUS_OK) {
            rc = b->iface->read(b->ctx, st->data[items[k].field], &st->frames[items[k].field],
                                (theus_dtype)f->dtype, &st->frames[items[k].field], old,
                                THEUS_MEM_HOST);
            if (rc != THEUS_OK)
                rc = dur_wrap(st, rc, "load: cannot read a const field");
        }
        if (rc == THEUS_OK)
            rc = read_tensor(st, path, fd, h, &h->tensors[items[k].tensor], val);
        if (rc == THEUS_OK) {
            rc = theus_state_init_field(st, f->name, val, THEUS_MEM_HOST);
            if (rc == THEUS_EBUSY)
                rc = err_set(st, THEUS_EPERM, "load '%s': const field '%s' can be loaded only "
                             "before the state's first commit", path, f->name);
            else if (rc != THEUS_OK)
                rc = dur_wrap(st, rc, "load");
        }
        theus_xfree(val);
        if (rc != THEUS_OK) {
            theus_xfree(old);
            return rc;
        }
        u[(*nu)++] = (const_undo){.field = items[k].field, .old = old};
    }
    return THEUS_OK;
}

static int stage_items(theus_state *st, theus_tx *tx, const char *path, int fd,
                       const st_header *h, const load_item *items, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        const field_desc *f = &st->fields[items[k].field];
        const st_tensor *t = &h->tensors[items[k].tensor];
        if (f->zone == THEUS_ZONE_CONST || f->nbytes == 0)
            continue;
        void *buf = NULL;
        theus_mem mem = THEUS_MEM_HOST;
        int rc = theus_tx_stage_buffer(tx, f->name, NULL, THEUS_OP_ASSIGN, &buf, &mem);
        if (rc != THEUS_OK)
            return dur_wrap(st, rc, "load");
        if (mem == THEUS_MEM_HOST)
            rc = read_tensor(st, path, fd, h, t, buf);
        else {
            /* A device field: through a host buffer, then a second staging over the first. */
            void *tmp = theus_xmalloc(t->nbytes);
            rc = tmp ? read_tensor(st, path, fd, h, t, tmp)
                     : err_set(st, THEUS_ENOMEM, "out of memory loading '%s'", path);
            if (rc == THEUS_OK && (rc = theus_tx_write(tx, f->name, NULL, tmp, THEUS_MEM_HOST)))
                rc = dur_wrap(st, rc, "load");
            theus_xfree(tmp);
        }
        if (rc != THEUS_OK)
            return rc;
    }
    return THEUS_OK;
}

int theus_state_load_safetensors_ex(theus_state *st, const char *path,
                                    const theus_load_options *opts)
{
    if (!st || !path)
        return err_set(st, THEUS_EINVAL, "theus_state_load_safetensors: NULL argument");
    theus_load_options o = THEUS_LOAD_OPTIONS_INIT;
    if (opts)
        o = *opts;
    if ((o.skip_unknown != 0 && o.skip_unknown != 1) || (o.load_signal != 0 && o.load_signal != 1))
        return err_set(st, THEUS_EINVAL, "load options: skip_unknown and load_signal are 0 or 1");
    int fd = -1;
    st_header h;
    int rc = stfile_open(st, path, &fd, &h);
    if (rc != THEUS_OK)
        return rc;
    load_item *items = theus_xcalloc(h.ntensors ? h.ntensors : 1, sizeof *items);
    const_undo *undo = theus_xcalloc(h.ntensors ? h.ntensors : 1, sizeof *undo);
    size_t n = 0, nu = 0;
    int has_const = 0;
    theus_tx *tx = NULL;
    if (!items || !undo) {
        rc = err_set(st, THEUS_ENOMEM, "out of memory loading '%s'", path);
        goto done;
    }
    rc = load_plan(st, path, &h, &o, items, &n, &has_const);
    if (rc == THEUS_OK && has_const && theus_state_version(st) != 1)
        for (size_t k = 0; k < n && rc == THEUS_OK; k++)
            if (st->fields[items[k].field].zone == THEUS_ZONE_CONST)
                rc = err_set(st, THEUS_EPERM, "load '%s': const field '%s' can be loaded only "
                             "before the state's first commit", path,
                             st->fields[items[k].field].name);
    if (rc == THEUS_OK && (rc = theus_tx_begin(st, NULL, &tx)) != THEUS_OK)
        rc = dur_wrap(st, rc, "load");
    if (rc == THEUS_OK)
        rc = stage_items(st, tx, path, fd, &h, items, n);
    if (rc == THEUS_OK && has_const)
        rc = load_consts(st, path, fd, &h, items, n, undo, &nu);
    if (rc == THEUS_OK) {
        theus_tx *t = tx;
        tx = NULL;
        rc = theus_tx_commit(t, NULL);
        if (rc != THEUS_OK)
            rc = dur_wrap(st, rc, "load: commit");
    }
    if (rc != THEUS_OK)
        undo_consts(st, undo, nu);
done:
    theus_tx_abort(tx);
    for (size_t i = 0; i < nu; i++)
        theus_xfree(undo[i].old);
    theus_xfree(undo);
    theus_xfree(items);
    st_header_free(&h);
    close(fd);
    return rc;
}

int theus_state_load_safetensors(theus_state *st, const char *path)
{
    return theus_state_load_safetensors_ex(st, path, NULL);
}
