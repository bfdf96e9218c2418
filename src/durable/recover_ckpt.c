/* Recovery from checkpoints: a full checkpoint, or an incremental one with its chain back
 * to the full one it starts from, checked (format, version, schema, CRC32C per tensor) and
 * loaded into a fresh state; the log records after it are recover_log.c's. */
#include "durable/recover_internal.h"
#include "alloc.h"
#include "durable/crc32c.h"
#include "durable/fileio.h"
#include "durable/snapshot.h"
#include "durable/stfile.h"
#include "error.h"
#include "publish.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
                rc = recover_apply_bytes(st, i, &st->frames[i], DELTA_ASSIGN, tmp, t->nbytes);
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
            rc = recover_apply_bytes(st, i, &st->frames[i], DELTA_ASSIGN, tmp, f->nbytes);
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
int recover_load_chain(theus_state *st, const char *dir, const dir_list *l, size_t idx,
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
