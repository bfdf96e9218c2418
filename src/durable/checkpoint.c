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

#include <errno.h>
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

/* One field's changes: its runs of changed blocks and their bytes, both in the one buffer
 * the file is written from (all runs first, then all bytes). */
typedef struct inc_field {
    uint32_t index;
    uint32_t shift;
    uint64_t nruns, nbytes;
    uint64_t runs_at, bytes_at;  /* offsets in the buffer */
} inc_field;

/* The next run of blocks of @m written after @base, from block *b on: [*lo, *hi) blocks,
 * 0 when there is none. */
static int next_run(const block_map *m, uint64_t base, uint64_t *b, uint64_t *lo, uint64_t *hi)
{
    uint64_t k = *b;
    while (k < m->nblocks && atomic_load_explicit(&m->v[k], memory_order_relaxed) <= base)
        k++;
    if (k == m->nblocks) {
        *b = k;
        return 0;
    }
    uint64_t e = k;
    while (e < m->nblocks && atomic_load_explicit(&m->v[e], memory_order_relaxed) > base)
        e++;
    *lo = k;
    *hi = e;
    *b = e;
    return 1;
}

/* With commits held: how many runs and bytes field @i has written after @base. */
static void inc_count(theus_state *st, uint32_t i, uint64_t base, inc_field *out)
{
    const field_desc *f = &st->fields[i];
    block_map m = state_block_map(st, i);
    *out = (inc_field){.index = i, .shift = m.shift};
    uint64_t lo, hi;
    for (uint64_t b = 0; next_run(&m, base, &b, &lo, &hi);) {
        uint64_t end = hi << m.shift;
        out->nbytes += (end > f->nbytes ? f->nbytes : end) - (lo << m.shift);
        out->nruns++;
    }
}

/* With commits held (the block map as inc_count saw it): the runs and bytes of @out's field
 * into @buf. */
static int inc_copy(theus_state *st, uint64_t base, const inc_field *out, unsigned char *buf)
{
    const uint32_t i = out->index;
    const field_desc *f = &st->fields[i];
    block_map m = state_block_map(st, i);
    const unsigned char *src = st->data[i];
    unsigned char *runs = buf + out->runs_at, *bytes = buf + out->bytes_at;
    uint64_t lo, hi, at = 0, k = 0;
    for (uint64_t b = 0; k < out->nruns && next_run(&m, base, &b, &lo, &hi); k++) {
        uint64_t blo = lo << m.shift, bhi = hi << m.shift;
        if (bhi > f->nbytes)
            bhi = f->nbytes;
        if (f->placement == THEUS_PLACEMENT_HOST && !stfile_test_staged) {
            memcpy(bytes + at, src + blo, bhi - blo);
        } else {
            /* Device and pinned fields: only the changed runs to the host. */
            int rc = stfile_read_bytes(st, i, blo, bhi, bytes + at);
            if (rc != THEUS_OK)
                return rc;
        }
        at += bhi - blo;
        uint64_t pair[2] = {lo, hi - lo};
        memcpy(runs + 16 * k, pair, sizeof pair); /* little-endian host (durable.h) */
    }
    return THEUS_OK;
}

/* Every record up to the version a checkpoint holds must be durable before the file can be
 * found: else a power loss could leave a checkpoint of version v and a log that ends before
 * v, which the next commits would continue with a gap. Under THEUS_SYNC_COMMIT they are (a
 * commit's fdatasync ends before it lets the commit lock go); under THEUS_SYNC_GROUP the
 * sync of the last group may still be due, and this runs it; THEUS_SYNC_NONE promises
 * nothing across a power loss. A durable shared state closes its segment after the
 * checkpoint instead (wal_rotate syncs what it closes). */
static int log_durable(theus_state *st, durable *d)
{
    wal *w = &d->w;
    if (d->shared || w->sync == THEUS_SYNC_NONE)
        return THEUS_OK;
    int rc = state_commit_lock(st, 0); /* the segment's fd changes only under it */
    if (rc != THEUS_OK)
        return rc;
    rc = wal_sync_written(w);
    state_commit_unlock(st);
    return rc;
}

static char *dumps_copy(json_t *o)
{
    char *t = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    char *c = t ? theus_xstrdup(t) : NULL;
    free(t);
    return c;
}

/* Under the commit hold: the versions the file records and every changed block, counted
 * then copied into one buffer (*raw to free) of *len bytes: the runs of every changed field,
 * then their bytes. */
static int inc_collect(theus_state *st, durable *d, snapshot *s, inc_field *inc, size_t *ni,
                       unsigned char **buf, void **raw, uint64_t *len)
{
    const size_t nf = st->hdr->nfields;
    int rc = theus_state_hold_commits(st);
    if (rc != THEUS_OK)
        return rc;
    s->version = theus_state_version(st);
    for (uint32_t i = 0; i < nf; i++) {
        const field_desc *f = &st->fields[i];
        if (f->zone == THEUS_ZONE_SIGNAL)
            continue;
        uint64_t fv = atomic_load_explicit(&f->version, memory_order_acquire);
        s->f[s->n++] = (snap_field){.index = i, .version = fv};
        if (s->f[s->n - 1].version <= d->last_ckpt)
            continue;
        inc_count(st, i, d->last_ckpt, &inc[*ni]);
        if (inc[*ni].nruns)
            (*ni)++;
    }
    uint64_t runs = 0, bytes = 0;
    for (size_t k = 0; k < *ni; k++) {
        inc[k].runs_at = runs;
        runs += 16 * inc[k].nruns;
    }
    for (size_t k = 0; k < *ni; k++) {
        inc[k].bytes_at = runs + bytes;
        bytes += inc[k].nbytes;
    }
    *len = runs + bytes;
    if (!(*buf = stfile_buf_alloc((size_t)*len, raw)))
        rc = err_set(st, THEUS_ENOMEM, "checkpoint: out of memory for %llu changed bytes",
                     (unsigned long long)*len);
    for (size_t k = 0; k < *ni && rc == THEUS_OK; k++)
        rc = inc_copy(st, d->last_ckpt, &inc[k], *buf);
    theus_state_release_commits(st);
    return rc;
}

static int write_incremental(theus_state *st, durable *d, uint64_t *version)
{
    size_t nf = st->hdr->nfields, ni = 0;
    inc_field *inc = theus_xcalloc(nf ? nf : 1, sizeof *inc);
    snapshot s = {.f = theus_xcalloc(nf ? nf : 1, sizeof *s.f)}; /* the versions recorded */
    unsigned char *buf = NULL;
    void *raw = NULL;
    uint64_t len = 0;
    int rc = inc && s.f ? inc_collect(st, d, &s, inc, &ni, &buf, &raw, &len)
                        : err_set(st, THEUS_ENOMEM, "checkpoint: out of memory");
    *version = s.version;

    /* Two tensors per changed field, the runs first (8-byte aligned), and the metadata. */
    st_out_tensor *t = theus_xcalloc(2 * ni + 1, sizeof *t);
    int64_t *shapes = theus_xcalloc(3 * ni + 1, sizeof *shapes);
    char **names = theus_xcalloc(ni + 1, sizeof *names);
    json_t *shifts = json_object();
    const char *keys[STFILE_NMETA + 2];
    char *vals[STFILE_NMETA + 2] = {0};
    if (rc == THEUS_OK && (!t || !shapes || !names || !shifts))
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
        t[k] = (st_out_tensor){.name = names[k], .dtype = THEUS_DTYPE_U64, .ndim = 2,
                               .shape = &shapes[3 * k + 1], .nbytes = inc[k].nruns * 16};
        t[ni + k] = (st_out_tensor){.name = f->name, .dtype = THEUS_DTYPE_U8, .ndim = 1,
                                    .shape = &shapes[3 * k], .nbytes = inc[k].nbytes};
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
    /* The log holds every record up to this version durably before the file can be found. */
    if (rc == THEUS_OK)
        rc = log_durable(st, d);
    if (rc == THEUS_OK) {
        char path[DUR_PATH_MAX];
        ckpt_path(d->dir, s.version, DUR_INCREMENTAL, path, sizeof path);
        rc = stfile_write(st, path, 0600, t, 2 * ni, buf, len, keys, (const char *const *)vals,
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
    theus_xfree(raw);
    theus_xfree(s.f);
    theus_xfree(inc);
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
            /* The file is there: the next checkpoint chains to it, whatever follows. */
            d->last_ckpt = v;
            d->chain = inc ? d->chain + 1 : 0;
        }
        if (rc == THEUS_OK && (!inc || d->shared)) {
            /* After a full checkpoint a fresh segment, so that the one holding the records
             * up to here can go once a later checkpoint covers it. An incremental one
             * leaves the segment open: recovery starts inside the segment that holds the
             * checkpoint's version, and the next full checkpoint (at most MAX_CHAIN
             * incrementals later) or a full segment closes it. */
            rc = state_commit_lock(st, 0);
            if (rc == THEUS_OK) {
                uint64_t now = theus_state_version(st);
                if (d->w.seg_first < now)
                    rc = wal_rotate(&d->w, now);
                state_commit_unlock(st);
            }
        }
        if (rc == THEUS_OK && !inc) {
            /* A full checkpoint of the version of the last incremental one (nothing
             * committed between): the incremental file is now redundant. */
            char p[DUR_PATH_MAX];
            ckpt_path(d->dir, v, DUR_INCREMENTAL, p, sizeof p);
            if (unlink(p) == 0)
                fio_fsync_dir(NULL, d->dir, 1);
        }
        if (rc == THEUS_OK)
            retention(d);
    }
    dur_ckpt_leave(d);
    pthread_mutex_unlock(&d->ckpt_lock);
    if (rc == THEUS_OK && version)
        *version = v;
    return rc;
}
