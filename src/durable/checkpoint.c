/* Checkpoints of a durable state: full ones (a plain safetensors file of one version,
 * written by stsave.c) and incremental ones (the blocks the block map says were written
 * since the previous checkpoint), then a fresh log segment, then retention (old
 * checkpoints and the log segments only they needed). Formats: docs/durability.md. */
#include "alloc.h"
#include "durable/durable.h"
#include "durable/fileio.h"
#include "durable/snapshot.h"
#include "durable/stfile.h"
#include "error.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Incrementals after a full checkpoint before the next request writes a full one again. */
#define MAX_CHAIN 8u

static void full_name(const void *dir, uint64_t version, char *buf, size_t len)
{
    ckpt_path(dir, version, DUR_FULL, buf, len);
}

static int write_full(theus_state *st, durable *d, uint64_t *version)
{
    stfile_target to = {.name = full_name, .ctx = d->dir, .mode = 0600};
    return stfile_save_state(st, &to, d->schema_text, version);
}

/* One field's changes: runs of changed blocks and their bytes. */
typedef struct inc_field {
    uint32_t index;
    uint64_t *runs;          /* [first, count] pairs */
    uint64_t nruns;
    unsigned char *bytes;
    uint64_t nbytes;
    uint32_t shift;
} inc_field;

static void inc_free(inc_field *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        theus_xfree(f[i].runs);
        theus_xfree(f[i].bytes);
    }
    theus_xfree(f);
}

/* With commits held: the blocks of field @i written after @base. */
static int inc_collect(theus_state *st, uint32_t i, uint64_t base, inc_field *out)
{
    const field_desc *f = &st->fields[i];
    block_map m = state_block_map(st, i);
    out->index = i;
    out->shift = m.shift;
    uint64_t nruns = 0, nbytes = 0;
    for (uint64_t b = 0; b < m.nblocks;) {
        if (atomic_load_explicit(&m.v[b], memory_order_relaxed) <= base) {
            b++;
            continue;
        }
        uint64_t e = b;
        while (e < m.nblocks && atomic_load_explicit(&m.v[e], memory_order_relaxed) > base)
            e++;
        uint64_t hi = e << m.shift;
        nbytes += (hi > f->nbytes ? f->nbytes : hi) - (b << m.shift);
        nruns++;
        b = e;
    }
    if (nruns == 0)
        return THEUS_OK;
    out->runs = theus_xmalloc(nruns * 2 * sizeof *out->runs);
    out->bytes = theus_xmalloc(nbytes);
    if (!out->runs || !out->bytes)
        return err_set(st, THEUS_ENOMEM, "checkpoint: out of memory");
    const unsigned char *src = st->data[i];
    const int staged = f->placement != THEUS_PLACEMENT_HOST;
    uint64_t at = 0;
    for (uint64_t b = 0; b < m.nblocks;) {
        if (atomic_load_explicit(&m.v[b], memory_order_relaxed) <= base) {
            b++;
            continue;
        }
        uint64_t e = b;
        while (e < m.nblocks && atomic_load_explicit(&m.v[e], memory_order_relaxed) > base)
            e++;
        uint64_t lo = b << m.shift, hi = e << m.shift;
        if (hi > f->nbytes)
            hi = f->nbytes;
        if (!staged) {
            memcpy(out->bytes + at, src + lo, hi - lo);
        } else {
            /* Device and pinned fields: only the changed runs to the host. */
            int rc = stfile_read_bytes(st, i, lo, hi, out->bytes + at);
            if (rc != THEUS_OK)
                return rc;
        }
        at += hi - lo;
        out->runs[2 * out->nruns] = b;
        out->runs[2 * out->nruns + 1] = e - b;
        out->nruns++;
        b = e;
    }
    out->nbytes = at;
    return THEUS_OK;
}

static char *dumps_copy(json_t *o)
{
    char *t = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    char *c = t ? theus_xstrdup(t) : NULL;
    free(t);
    return c;
}

static int write_incremental(theus_state *st, durable *d, uint64_t *version)
{
    size_t nf = st->hdr->nfields;
    inc_field *inc = theus_xcalloc(nf ? nf : 1, sizeof *inc);
    if (!inc)
        return err_set(st, THEUS_ENOMEM, "checkpoint: out of memory");
    snapshot s; /* the versions the file records */
    memset(&s, 0, sizeof s);
    size_t ni = 0;
    int rc = theus_state_hold_commits(st);
    if (rc != THEUS_OK) {
        theus_xfree(inc);
        return rc;
    }
    s.version = theus_state_version(st);
    s.f = theus_xcalloc(nf ? nf : 1, sizeof *s.f);
    if (!s.f)
        rc = err_set(st, THEUS_ENOMEM, "checkpoint: out of memory");
    for (uint32_t i = 0; i < nf && rc == THEUS_OK; i++) {
        const field_desc *f = &st->fields[i];
        if (f->zone == THEUS_ZONE_SIGNAL)
            continue;
        s.f[s.n++] = (snap_field){.index = i,
                                  .version = atomic_load_explicit(&f->version, memory_order_acquire)};
        if (s.f[s.n - 1].version <= d->last_ckpt)
            continue;
        rc = inc_collect(st, i, d->last_ckpt, &inc[ni]);
        if (inc[ni].nruns)
            ni++;
    }
    theus_state_release_commits(st);
    *version = s.version;

    /* Two tensors per changed field, and the metadata. */
    st_out_tensor *t = theus_xcalloc(2 * ni + 1, sizeof *t);
    const void **data = theus_xcalloc(2 * ni + 1, sizeof *data);
    int64_t *shapes = theus_xcalloc(3 * ni + 1, sizeof *shapes);
    char **names = theus_xcalloc(ni + 1, sizeof *names);
    json_t *shifts = json_object();
    const char *keys[STFILE_NMETA + 2];
    char *vals[STFILE_NMETA + 2] = {0};
    if (rc == THEUS_OK && (!t || !data || !shapes || !names || !shifts))
        rc = err_set(st, THEUS_ENOMEM, "checkpoint: out of memory");
    for (size_t k = 0; k < ni && rc == THEUS_OK; k++) {
        const field_desc *f = &st->fields[inc[k].index];
        size_t nl = strlen(f->name) + 16;
        if (!(names[k] = theus_xmalloc(nl))) {
            rc = err_set(st, THEUS_ENOMEM, "checkpoint: out of memory");
            break;
        }
        snprintf(names[k], nl, "%s.__blocks__", f->name);
        shapes[3 * k] = (int64_t)inc[k].nbytes;
        shapes[3 * k + 1] = (int64_t)inc[k].nruns;
        shapes[3 * k + 2] = 2;
        t[2 * k] = (st_out_tensor){.name = f->name, .dtype = THEUS_DTYPE_U8, .ndim = 1,
                                   .shape = &shapes[3 * k], .nbytes = inc[k].nbytes};
        data[2 * k] = inc[k].bytes;
        t[2 * k + 1] = (st_out_tensor){.name = names[k], .dtype = THEUS_DTYPE_U64, .ndim = 2,
                                       .shape = &shapes[3 * k + 1],
                                       .nbytes = inc[k].nruns * 16};
        data[2 * k + 1] = inc[k].runs;
        json_object_set_new(shifts, f->name, json_integer(inc[k].shift));
    }
    if (rc == THEUS_OK)
        rc = stfile_meta(st, &s, d->schema_text, keys, vals);
    if (rc == THEUS_OK) {
        char num[32];
        snprintf(num, sizeof num, "%" PRIu64, d->last_ckpt);
        theus_xfree(vals[4]);
        vals[4] = theus_xstrdup("incremental");
        keys[STFILE_NMETA] = "theus.base";
        vals[STFILE_NMETA] = theus_xstrdup(num);
        keys[STFILE_NMETA + 1] = "theus.block_shift";
        vals[STFILE_NMETA + 1] = dumps_copy(shifts);
        if (!vals[4] || !vals[STFILE_NMETA] || !vals[STFILE_NMETA + 1])
            rc = err_set(st, THEUS_ENOMEM, "checkpoint: out of memory");
    }
    if (rc == THEUS_OK) {
        char path[DUR_PATH_MAX];
        ckpt_path(d->dir, s.version, DUR_INCREMENTAL, path, sizeof path);
        rc = stfile_write(st, path, 0600, t, data, 2 * ni, keys, (const char *const *)vals,
                          STFILE_NMETA + 2);
    }
    for (size_t k = 0; k < STFILE_NMETA + 2; k++)
        theus_xfree(vals[k]);
    for (size_t k = 0; k < ni && names; k++)
        theus_xfree(names[k]);
    json_decref(shifts);
    theus_xfree(names);
    theus_xfree(shapes);
    theus_xfree(t);
    theus_xfree(data);
    theus_xfree(s.f);
    inc_free(inc, nf);
    return rc;
}

/* Keep the newest keep_checkpoints checkpoints and what they depend on: the full one the
 * oldest kept one chains back to, and the log from there on. */
static void retention(durable *d)
{
    dir_list l;
    if (dir_scan(NULL, d->dir, &l) != THEUS_OK)
        return;
    if (l.nckpt > d->o.keep_checkpoints) {
        size_t root = l.nckpt - d->o.keep_checkpoints;
        while (root > 0 && l.ckpt[root].kind == DUR_INCREMENTAL)
            root--;
        char p[DUR_PATH_MAX];
        int removed = 0;
        for (size_t k = 0; k < root; k++) {
            ckpt_path(d->dir, l.ckpt[k].version, l.ckpt[k].kind, p, sizeof p);
            removed += unlink(p) == 0;
        }
        uint64_t covered = l.ckpt[root].version;
        for (size_t k = 0; k + 1 < l.nseg && l.seg[k + 1].version <= covered; k++) {
            wal_segment_path(d->dir, l.seg[k].version, p, sizeof p);
            removed += unlink(p) == 0;
        }
        /* An fsync of the directory only when something went (an incremental checkpoint
         * whose chain is all kept removes nothing). */
        if (removed)
            fio_fsync_dir(NULL, d->dir, 1);
    }
    dir_list_free(&l);
}

int theus_state_checkpoint(theus_state *st, int incremental, uint64_t *version)
{
    if (version)
        *version = 0;
    if (!st || (incremental != 0 && incremental != 1))
        return err_set(st, THEUS_EINVAL, "theus_state_checkpoint: NULL state or bad flag");
    durable *d = durable_of(st);
    if (!d || d->read_only)
        return err_set(st, THEUS_EINVAL, "theus_state_checkpoint: not a writable durable state");
    pthread_mutex_lock(&d->ckpt_lock);
    int rc0 = dur_ckpt_enter(d); /* durable shared states: across processes */
    if (rc0 != THEUS_OK) {
        pthread_mutex_unlock(&d->ckpt_lock);
        return rc0;
    }
    int inc = incremental && d->last_ckpt && d->chain < MAX_CHAIN;
    uint64_t v = theus_state_version(st);
    int rc = THEUS_OK;
    if (v == d->last_ckpt && (inc || d->chain == 0)) {
        /* Nothing committed since the last checkpoint, which is what was asked for. */
    } else {
        rc = inc ? write_incremental(st, d, &v) : write_full(st, d, &v);
        if (rc == THEUS_OK) {
            /* A fresh segment, so that the one holding the records up to here can go once
             * a later checkpoint covers it. */
            rc = state_commit_lock(st, 0);
            if (rc == THEUS_OK) {
                uint64_t now = theus_state_version(st);
                if (d->w.seg_first < now)
                    rc = wal_rotate(&d->w, now);
                state_commit_unlock(st);
            }
            d->last_ckpt = v;
            d->chain = inc ? d->chain + 1 : 0;
            retention(d);
        }
    }
    dur_ckpt_leave(d);
    pthread_mutex_unlock(&d->ckpt_lock);
    if (rc == THEUS_OK && version)
        *version = v;
    return rc;
}
