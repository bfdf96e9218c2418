/* Recovery: the newest checkpoint at or below a target version (a full one, or an
 * incremental chain back to a full one), then the log records after it, applied straight to
 * the field memory of a fresh state under the commit lock. Every check that fails is
 * THEUS_ECORRUPT naming the file and the byte offset, except a torn tail of the newest
 * segment, which is dropped (and with `repair` cut off the file) and reported. */
#include "alloc.h"
#include "durable/crc32c.h"
#include "durable/durable.h"
#include "durable/fileio.h"
#include "durable/snapshot.h"
#include "durable/stfile.h"
#include "durable/wal_record.h"
#include "error.h"
#include "publish.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the directory ------------------------------------------------------------------- */

void ckpt_path(const char *dir, uint64_t version, int kind, char *buf, size_t len)
{
    snprintf(buf, len, "%s/ckpt-%016llx%s.safetensors", dir, (unsigned long long)version,
             kind == DUR_INCREMENTAL ? ".inc" : "");
}

static int by_version(const void *a, const void *b)
{
    const dir_entry *x = a, *y = b;
    return x->version < y->version ? -1 : x->version > y->version;
}

/* "<prefix><16 hex digits><suffix>" exactly. */
static int parse_name(const char *name, const char *prefix, const char *suffix, uint64_t *v)
{
    size_t pl = strlen(prefix), sl = strlen(suffix), n = strlen(name);
    if (n != pl + 16 + sl || strncmp(name, prefix, pl) || strcmp(name + pl + 16, suffix))
        return 0;
    uint64_t x = 0;
    for (size_t i = pl; i < pl + 16; i++) {
        char c = name[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return 0;
        x = x << 4 | (uint64_t)d;
    }
    *v = x;
    return 1;
}

static int push(dir_entry **arr, size_t *n, size_t *cap, uint64_t v, int kind)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        dir_entry *a = theus_xmalloc(nc * sizeof *a);
        if (!a)
            return -1;
        if (*n)
            memcpy(a, *arr, *n * sizeof *a);
        theus_xfree(*arr);
        *arr = a;
        *cap = nc;
    }
    (*arr)[(*n)++] = (dir_entry){.version = v, .kind = kind};
    return 0;
}

int dir_scan(const theus_state *st, const char *dir, dir_list *out)
{
    memset(out, 0, sizeof *out);
    DIR *d = opendir(dir);
    if (!d)
        return err_set(st, errno == ENOENT ? THEUS_ENOENT : THEUS_EIO, "cannot list '%s': %s",
                       dir, strerror(errno));
    size_t cs = 0, cc = 0;
    struct dirent *e;
    int bad = 0;
    while (!bad && (e = readdir(d))) {
        uint64_t v;
        if (parse_name(e->d_name, "wal-", ".log", &v))
            bad = push(&out->seg, &out->nseg, &cs, v, DUR_SEGMENT);
        else if (parse_name(e->d_name, "ckpt-", ".safetensors", &v))
            bad = push(&out->ckpt, &out->nckpt, &cc, v, DUR_FULL);
        else if (parse_name(e->d_name, "ckpt-", ".inc.safetensors", &v))
            bad = push(&out->ckpt, &out->nckpt, &cc, v, DUR_INCREMENTAL);
    }
    closedir(d);
    if (bad) {
        dir_list_free(out);
        return err_set(st, THEUS_ENOMEM, "out of memory listing '%s'", dir);
    }
    if (out->nseg)
        qsort(out->seg, out->nseg, sizeof *out->seg, by_version);
    if (out->nckpt)
        qsort(out->ckpt, out->nckpt, sizeof *out->ckpt, by_version);
    /* A full and an incremental checkpoint of one version hold the same state: a full one
     * asked for right after an incremental one with no commit between (the checkpoint
     * removes the incremental file once the full one is durable; a crash may come first).
     * The full one is kept, the incremental one left out. */
    size_t kept = 0;
    for (size_t i = 0; i < out->nckpt; i++) {
        if (kept && out->ckpt[kept - 1].version == out->ckpt[i].version) {
            if (out->ckpt[i].kind == DUR_FULL)
                out->ckpt[kept - 1] = out->ckpt[i];
            continue;
        }
        out->ckpt[kept++] = out->ckpt[i];
    }
    out->nckpt = kept;
    return THEUS_OK;
}

void dir_list_free(dir_list *l)
{
    theus_xfree(l->seg);
    theus_xfree(l->ckpt);
    memset(l, 0, sizeof *l);
}

int dur_read_schema(const char *dir, char **out)
{
    *out = NULL;
    char p[DUR_PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, DUR_SCHEMA_FILE);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(NULL, errno == ENOENT ? THEUS_ENOENT : THEUS_EIO, "cannot open '%s': %s",
                       p, strerror(errno));
    struct stat sb;
    int rc = THEUS_OK;
    char *text = NULL;
    if (fstat(fd, &sb) != 0 || sb.st_size > (1 << 26)) {
        rc = err_set(NULL, THEUS_ECORRUPT, "'%s': not a schema file", p);
    } else if (!(text = theus_xmalloc((size_t)sb.st_size + 1))) {
        rc = err_set(NULL, THEUS_ENOMEM, "out of memory reading '%s'", p);
    } else if (fio_pread_all(fd, text, (size_t)sb.st_size, 0) != 0) {
        rc = err_set(NULL, THEUS_EIO, "cannot read '%s': %s", p, strerror(errno));
    } else {
        text[sb.st_size] = '\0';
        *out = text;
        text = NULL;
    }
    theus_xfree(text);
    close(fd);
    return rc;
}

/* ---- applying bytes to a fresh state --------------------------------------------------- */

/* Apply @payload (laid out as @r, host memory) onto field @f: assign or add. */
static int apply_bytes(theus_state *st, uint32_t f, const theus_region *r, int op,
                       const void *payload, uint64_t nbytes)
{
    const field_desc *fd = &st->fields[f];
    const theus_backend *b = st->backend[f];
    size_t es = theus_dtype_size((theus_dtype)fd->dtype);
    void *staged = NULL;
    const void *src = payload;
    int rc = THEUS_OK;
    if (nbytes == 0)
        return THEUS_OK;
    if (fd->placement != THEUS_PLACEMENT_HOST || (uintptr_t)payload % es) {
        rc = b->iface->stage(b->ctx, (theus_placement)fd->placement, payload, THEUS_MEM_HOST,
                             nbytes, &staged);
        if (rc != THEUS_OK)
            return err_wrap(st, rc, "recovery: cannot stage bytes of '%s'", fd->name);
        src = staged;
    }
    replay_op o = {.op = (delta_op)op, .dtype = (theus_dtype)fd->dtype, .base = st->data[f],
                   .frame = &st->frames[f], .sub = *r, .payload = src};
    rc = b->iface->replay(b->ctx, &o, 1);
    if (staged)
        b->iface->unstage(b->ctx, staged);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "recovery: cannot write field '%s'", fd->name);
    return THEUS_OK;
}

/* ---- checkpoints ----------------------------------------------------------------------- */

static int parse_u64(const char *s, uint64_t *v)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-')
        return -1;
    *v = x;
    return 0;
}

/* The checks every checkpoint's metadata must pass: format, version, schema. *crcs and
 * *fv are the parsed checksum and field-version objects (json_decref them). */
static int ckpt_meta(theus_state *st, const char *path, const st_header *h, uint64_t version,
                     int kind, json_t **crcs, json_t **fv, uint64_t *base)
{
    *crcs = *fv = NULL;
    const char *fmt = st_header_meta(h, "theus.format");
    const char *ver = st_header_meta(h, "theus.version");
    const char *knd = st_header_meta(h, "theus.kind");
    const char *sch = st_header_meta(h, "theus.schema");
    uint64_t v = 0;
    if (!fmt || strcmp(fmt, "1") != 0)
        return err_set(st, THEUS_ECORRUPT, "'%s': not a theus checkpoint of format 1 "
                       "(__metadata__ theus.format at byte 8)", path);
    if (parse_u64(ver, &v) != 0 || v != version)
        return err_set(st, THEUS_ECORRUPT, "'%s': theus.version '%s' does not match the file "
                       "name (byte 8)", path, ver ? ver : "");
    if (!knd || strcmp(knd, kind == DUR_FULL ? "full" : "incremental") != 0)
        return err_set(st, THEUS_ECORRUPT, "'%s': theus.kind '%s' does not match the file "
                       "name (byte 8)", path, knd ? knd : "");
    if (kind == DUR_INCREMENTAL &&
        parse_u64(st_header_meta(h, "theus.base"), base) != 0)
        return err_set(st, THEUS_ECORRUPT, "'%s': incremental checkpoint without theus.base "
                       "(byte 8)", path);
    char why[256];
    theus_schema *s = NULL;
    int same = 0;
    if (sch && schema_parse(sch, &s, why, sizeof why) == THEUS_OK) {
        char *a = schema_canonical(s), *b = schema_canonical(st->schema);
        same = a && b && strcmp(a, b) == 0;
        theus_xfree(a);
        theus_xfree(b);
        schema_free(s);
    }
    if (!same)
        return err_set(st, THEUS_ECORRUPT, "'%s': theus.schema is not the directory's schema "
                       "(byte 8)", path);
    json_error_t je;
    const char *c = st_header_meta(h, STFILE_CRC_KEY), *f = st_header_meta(h, "theus.field_versions");
    *crcs = c ? json_loads(c, 0, &je) : NULL;
    *fv = f ? json_loads(f, 0, &je) : NULL;
    if (!json_is_object(*crcs) || !json_is_object(*fv)) {
        json_decref(*crcs);
        json_decref(*fv);
        *crcs = *fv = NULL;
        return err_set(st, THEUS_ECORRUPT, "'%s': theus.crc32c or theus.field_versions "
                       "missing or malformed (byte 8)", path);
    }
    return THEUS_OK;
}

/* Read tensor @t of an open checkpoint into @dst and check its CRC32C. */
static int ckpt_read(theus_state *st, const char *path, int fd, const st_header *h,
                     const st_tensor *t, json_t *crcs, void *dst)
{
    uint64_t at = h->data_start + t->begin;
    if (t->nbytes && fio_pread_all(fd, dst, t->nbytes, at) != 0)
        return err_set(st, THEUS_EIO, "'%s': cannot read tensor '%s' at byte %llu: %s", path,
                       t->name, (unsigned long long)at, strerror(errno));
    json_t *c = json_object_get(crcs, t->name);
    if (!json_is_integer(c) ||
        (uint32_t)json_integer_value(c) != (t->nbytes ? crc32c(0, dst, t->nbytes) : 0))
        return err_set(st, THEUS_ECORRUPT, "'%s': tensor '%s' (bytes %llu..%llu) fails its "
                       "checksum", path, t->name, (unsigned long long)at,
                       (unsigned long long)(at + t->nbytes));
    return THEUS_OK;
}

static int set_field_versions(theus_state *st, const char *path, json_t *fv, uint64_t version)
{
    for (uint32_t i = 0; i < st->hdr->nfields; i++) {
        const field_desc *f = &st->fields[i];
        if (f->zone == THEUS_ZONE_SIGNAL)
            continue;
        json_t *v = json_object_get(fv, f->name);
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            (uint64_t)json_integer_value(v) > version)
            return err_set(st, THEUS_ECORRUPT, "'%s': bad version of field '%s' in "
                           "theus.field_versions (byte 8)", path, f->name);
        publish_region(st, i, &st->frames[i], (uint64_t)json_integer_value(v));
    }
    publish_version(st, version);
    return THEUS_OK;
}

static int load_full(theus_state *st, const char *path, uint64_t version)
{
    int fd;
    st_header h;
    int rc = stfile_open(st, path, &fd, &h);
    if (rc != THEUS_OK)
        return rc == THEUS_ENOENT ? rc : (rc == THEUS_ECORRUPT ? rc : rc);
    json_t *crcs, *fv;
    uint64_t base = 0;
    rc = ckpt_meta(st, path, &h, version, DUR_FULL, &crcs, &fv, &base);
    for (uint32_t i = 0; i < st->hdr->nfields && rc == THEUS_OK; i++) {
        const field_desc *f = &st->fields[i];
        if (f->zone == THEUS_ZONE_SIGNAL)
            continue;
        long k = st_header_find(&h, f->name);
        const st_tensor *t = k >= 0 ? &h.tensors[k] : NULL;
        int ok = t && t->dtype == (theus_dtype)f->dtype && t->ndim == (int)f->ndim;
        for (int d = 0; ok && d < t->ndim; d++)
            ok = t->shape[d] == f->shape[d];
        if (!ok) {
            rc = err_set(st, THEUS_ECORRUPT, "'%s': field '%s' missing or of the wrong dtype or "
                         "shape (header at byte 8)", path, f->name);
            break;
        }
        if (f->placement == THEUS_PLACEMENT_HOST) {
            rc = ckpt_read(st, path, fd, &h, t, crcs, st->data[i]);
        } else {
            void *tmp = theus_xmalloc(t->nbytes ? t->nbytes : 1);
            rc = tmp ? ckpt_read(st, path, fd, &h, t, crcs, tmp)
                     : err_set(st, THEUS_ENOMEM, "out of memory reading '%s'", path);
            if (rc == THEUS_OK)
                rc = apply_bytes(st, i, &st->frames[i], DELTA_ASSIGN, tmp, t->nbytes);
            theus_xfree(tmp);
        }
    }
    if (rc == THEUS_OK)
        rc = set_field_versions(st, path, fv, version);
    json_decref(crcs);
    json_decref(fv);
    st_header_free(&h);
    close(fd);
    return rc;
}

/* An incremental checkpoint: per changed field a U8 tensor "<field>" of the changed blocks'
 * bytes, and a U64 tensor "<field>.__blocks__" of [first block, block count] runs; the
 * block size per field in "theus.block_shift". */
static int load_incremental(theus_state *st, const char *path, uint64_t version, uint64_t expect_base)
{
    int fd;
    st_header h;
    int rc = stfile_open(st, path, &fd, &h);
    if (rc != THEUS_OK)
        return rc;
    json_t *crcs, *fv, *shifts = NULL;
    uint64_t base = 0;
    rc = ckpt_meta(st, path, &h, version, DUR_INCREMENTAL, &crcs, &fv, &base);
    if (rc == THEUS_OK && base != expect_base)
        rc = err_set(st, THEUS_ECORRUPT, "'%s': its base is version %llu, the checkpoint before "
                     "it is %llu (byte 8)", path, (unsigned long long)base,
                     (unsigned long long)expect_base);
    if (rc == THEUS_OK) {
        json_error_t je;
        const char *s = st_header_meta(&h, "theus.block_shift");
        shifts = s ? json_loads(s, 0, &je) : NULL;
        if (!json_is_object(shifts))
            rc = err_set(st, THEUS_ECORRUPT, "'%s': theus.block_shift missing (byte 8)", path);
    }
    for (uint32_t i = 0; i < st->hdr->nfields && rc == THEUS_OK; i++) {
        const field_desc *f = &st->fields[i];
        char bname[THEUS_NAME_MAX + 16];
        snprintf(bname, sizeof bname, "%s.__blocks__", f->name);
        long kd = st_header_find(&h, f->name), kb = st_header_find(&h, bname);
        if (kd < 0 && kb < 0)
            continue;
        const st_tensor *td = kd >= 0 ? &h.tensors[kd] : NULL, *tb = kb >= 0 ? &h.tensors[kb] : NULL;
        json_t *js = json_object_get(shifts, f->name);
        if (!td || !tb || f->zone == THEUS_ZONE_SIGNAL || td->dtype != THEUS_DTYPE_U8 ||
            td->ndim != 1 || tb->dtype != THEUS_DTYPE_U64 || tb->ndim != 2 ||
            tb->shape[1] != 2 || !json_is_integer(js) || json_integer_value(js) < 0 ||
            json_integer_value(js) > 40) {
            rc = err_set(st, THEUS_ECORRUPT, "'%s': malformed changes of field '%s' (header at "
                         "byte 8)", path, f->name);
            break;
        }
        uint32_t shift = (uint32_t)json_integer_value(js);
        uint64_t *runs = theus_xmalloc(tb->nbytes ? tb->nbytes : 1);
        unsigned char *bytes = theus_xmalloc(td->nbytes ? td->nbytes : 1);
        unsigned char *field = NULL, *tmp = NULL;
        rc = runs && bytes ? THEUS_OK : err_set(st, THEUS_ENOMEM, "out of memory reading '%s'", path);
        if (rc == THEUS_OK)
            rc = ckpt_read(st, path, fd, &h, tb, crcs, runs);
        if (rc == THEUS_OK)
            rc = ckpt_read(st, path, fd, &h, td, crcs, bytes);
        if (rc == THEUS_OK) {
            if (f->placement == THEUS_PLACEMENT_HOST) {
                field = st->data[i];
            } else if (!(field = tmp = theus_xmalloc(f->nbytes))) {
                rc = err_set(st, THEUS_ENOMEM, "out of memory reading '%s'", path);
            } else {
                const theus_backend *b = st->backend[i];
                rc = b->iface->read(b->ctx, st->data[i], &st->frames[i], (theus_dtype)f->dtype,
                                    &st->frames[i], tmp, THEUS_MEM_HOST);
            }
        }
        uint64_t at = 0, nruns = (uint64_t)tb->shape[0];
        for (uint64_t k = 0; k < nruns && rc == THEUS_OK; k++) {
            uint64_t first = runs[2 * k], count = runs[2 * k + 1];
            uint64_t lo = first << shift, hi = (first + count) << shift;
            if (count == 0 || first > (UINT64_MAX >> shift) || (first + count) > (UINT64_MAX >> shift) ||
                lo >= f->nbytes) {
                rc = err_set(st, THEUS_ECORRUPT, "'%s': block run %llu of field '%s' is outside "
                             "the field", path, (unsigned long long)k, f->name);
                break;
            }
            if (hi > f->nbytes)
                hi = f->nbytes;
            if (hi - lo > td->nbytes - at) {
                rc = err_set(st, THEUS_ECORRUPT, "'%s': changes of field '%s' shorter than their "
                             "block runs", path, f->name);
                break;
            }
            memcpy(field + lo, bytes + at, hi - lo);
            at += hi - lo;
        }
        if (rc == THEUS_OK && at != td->nbytes)
            rc = err_set(st, THEUS_ECORRUPT, "'%s': changes of field '%s' longer than their "
                         "block runs", path, f->name);
        if (rc == THEUS_OK && tmp)
            rc = apply_bytes(st, i, &st->frames[i], DELTA_ASSIGN, tmp, f->nbytes);
        theus_xfree(tmp);
        theus_xfree(runs);
        theus_xfree(bytes);
    }
    if (rc == THEUS_OK)
        rc = set_field_versions(st, path, fv, version);
    json_decref(shifts);
    json_decref(crcs);
    json_decref(fv);
    st_header_free(&h);
    close(fd);
    return rc;
}

/* Load checkpoint l->ckpt[idx] with its chain (back to the nearest full one). */
static int load_chain(theus_state *st, const char *dir, const dir_list *l, size_t idx,
                      uint32_t *chain)
{
    size_t root = idx;
    while (l->ckpt[root].kind == DUR_INCREMENTAL) {
        if (root == 0) {
            char p[DUR_PATH_MAX];
            ckpt_path(dir, l->ckpt[idx].version, DUR_INCREMENTAL, p, sizeof p);
            return err_set(st, THEUS_ECORRUPT, "'%s': the full checkpoint its chain starts from "
                           "is missing", p);
        }
        root--;
    }
    *chain = (uint32_t)(idx - root);
    char p[DUR_PATH_MAX];
    ckpt_path(dir, l->ckpt[root].version, DUR_FULL, p, sizeof p);
    int rc = load_full(st, p, l->ckpt[root].version);
    for (size_t k = root + 1; k <= idx && rc == THEUS_OK; k++) {
        ckpt_path(dir, l->ckpt[k].version, DUR_INCREMENTAL, p, sizeof p);
        rc = load_incremental(st, p, l->ckpt[k].version, l->ckpt[k - 1].version);
    }
    return rc;
}

/* ---- the log ----------------------------------------------------------------------------- */

typedef struct seg_map {
    int fd;
    unsigned char *p;
    uint64_t size;
} seg_map;

static int seg_open(const theus_state *st, const char *path, seg_map *m)
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

static void seg_close(seg_map *m)
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
            rc = apply_bytes(st, d.field, &d.r, (int)d.op, d.payload, d.nbytes);
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
static int replay_segment(theus_state *st, const char *path, uint64_t start, int newest,
                          uint64_t base, uint64_t target, int repair, uint64_t *last,
                          rebuild_result *res, uint64_t *valid)
{
    seg_map m;
    int rc = seg_open(st, path, &m);
    if (rc != THEUS_OK)
        return rc;
    char why[256];
    uint64_t hs;
    *valid = 0;
    if (wal_seg_head_decode(m.p, m.size, &hs, why, sizeof why) != 0) {
        int unwritten = m.size < WAL_SEG_HEAD;
        for (uint64_t i = 0; !unwritten && i < m.size && m.p[i] == 0; i++)
            unwritten = i + 1 == m.size;
        seg_close(&m);
        if (newest && unwritten) {
            /* Created, never written: a crash while starting this segment. */
            res->torn_bytes = m.size;
            res->torn_offset = 0;
            return THEUS_OK;
        }
        return err_set(st, THEUS_ECORRUPT, "'%s' at byte 0: %s", path, why);
    }
    if (hs != start) {
        seg_close(&m);
        return err_set(st, THEUS_ECORRUPT, "'%s' at byte 16: start version %llu does not match "
                       "the file name", path, (unsigned long long)hs);
    }
    if (start != *last) {
        seg_close(&m);
        return err_set(st, THEUS_ECORRUPT, "'%s': the log before it ends at version %llu, this "
                       "segment starts at %llu (missing records)", path,
                       (unsigned long long)*last, (unsigned long long)start);
    }
    uint64_t off = WAL_SEG_HEAD;
    wal_rec r;
    for (;;) {
        wal_scan s = wal_next(m.p, m.size, off, &r, why, sizeof why);
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
    seg_close(&m);
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

int dur_rebuild(theus_state *st, const char *dir, uint64_t target, int repair, rebuild_result *r)
{
    memset(r, 0, sizeof *r);
    dir_list l;
    int rc = dir_scan(st, dir, &l);
    if (rc != THEUS_OK)
        return rc;
    rc = state_commit_lock(st, 0);
    if (rc != THEUS_OK) {
        dir_list_free(&l);
        return rc;
    }
    state_replay_gate_enter(st);
    uint64_t base = 1;
    size_t ci = l.nckpt;
    while (ci > 0 && l.ckpt[ci - 1].version > target)
        ci--;
    if (ci > 0) {
        rc = load_chain(st, dir, &l, ci - 1, &r->chain);
        base = l.ckpt[ci - 1].version;
    }
    r->ckpt_version = base;
    /* The first segment needed: the last one starting at or before the base. */
    size_t si = 0;
    while (si + 1 < l.nseg && l.seg[si + 1].version <= base)
        si++;
    uint64_t last = base;
    if (rc == THEUS_OK && l.nseg > 0 && l.seg[si].version > base)
        rc = err_set(st, THEUS_ECORRUPT, "'%s': the log starts at version %llu, the newest "
                     "checkpoint is version %llu (records missing)", dir,
                     (unsigned long long)l.seg[si].version, (unsigned long long)base);
    if (rc == THEUS_OK && l.nseg > 0)
        last = l.seg[si].version;
    for (size_t k = si; k < l.nseg && rc == THEUS_OK; k++) {
        char p[DUR_PATH_MAX];
        wal_segment_path(dir, l.seg[k].version, p, sizeof p);
        int newest = k + 1 == l.nseg;
        uint64_t valid = 0;
        rc = replay_segment(st, p, l.seg[k].version, newest, base, target, repair, &last, r,
                            &valid);
        if (newest && rc == THEUS_OK) {
            r->have_seg = valid >= WAL_SEG_HEAD;
            r->last_seg_start = l.seg[k].version;
            r->last_seg_size = valid;
            if (!r->have_seg && repair)
                unlink(p);
        }
        if (last >= target)
            break;
    }
    state_replay_gate_leave(st);
    state_commit_unlock(st);
    r->version = theus_state_version(st);
    if (rc == THEUS_OK && target != UINT64_MAX && r->version != target)
        rc = err_set(st, THEUS_ENOENT, "'%s': version %llu cannot be rebuilt (the directory "
                     "reaches version %llu from checkpoint %llu)", dir,
                     (unsigned long long)target, (unsigned long long)r->version,
                     (unsigned long long)base);
    dir_list_free(&l);
    return rc;
}

int dur_versions(const char *dir, uint64_t *oldest, uint64_t *newest)
{
    dir_list l;
    int rc = dir_scan(NULL, dir, &l);
    if (rc != THEUS_OK)
        return rc;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t i = 0; i < l.nckpt; i++) {
        if (l.ckpt[i].kind == DUR_FULL && l.ckpt[i].version < lo)
            lo = l.ckpt[i].version;
        if (l.ckpt[i].version > hi)
            hi = l.ckpt[i].version;
    }
    if (l.nseg > 0 && l.seg[0].version == 1)
        lo = 1;
    /* The newest version: the last record of the newest readable segment. */
    for (size_t k = l.nseg; k-- > 0 && rc == THEUS_OK;) {
        char p[DUR_PATH_MAX];
        wal_segment_path(dir, l.seg[k].version, p, sizeof p);
        seg_map m;
        if ((rc = seg_open(NULL, p, &m)) != THEUS_OK)
            break;
        char why[256];
        uint64_t s;
        if (wal_seg_head_decode(m.p, m.size, &s, why, sizeof why) == 0) {
            uint64_t off = WAL_SEG_HEAD, v = s;
            wal_rec r;
            while (wal_next(m.p, m.size, off, &r, why, sizeof why) == WAL_SCAN_RECORD) {
                if (r.kind == WAL_KIND_COMMIT)
                    v = r.version;
                off += r.size;
            }
            if (v > hi)
                hi = v;
            seg_close(&m);
            break;
        }
        seg_close(&m);
    }
    dir_list_free(&l);
    if (rc != THEUS_OK)
        return rc;
    if (lo == UINT64_MAX || hi == 0)
        return err_set(NULL, THEUS_ENOENT, "'%s' holds no rebuildable version", dir);
    if (hi < lo)
        hi = lo;
    *oldest = lo;
    *newest = hi;
    return THEUS_OK;
}
