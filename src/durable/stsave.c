/* Saving a whole state to a safetensors file without a snapshot copy (stfile_save_state).
 *
 * The file's layout is known before any byte of it: the header is reserved at the size it
 * has with the widest numbers (versions, checksums) and filled in last, padded with spaces.
 *   1. Under a brief commit hold: the version v0 every byte now in the fields has reached.
 *   2. Without a hold: every persisted field, in chunks, straight from its memory (host
 *      fields; their checksums on a second thread meanwhile), or through two host staging
 *      buffers that the backend fills on a second thread while this one writes the other
 *      (device and pinned fields: the copy of chunk k + 1 overlaps the write of chunk k;
 *      page-locked with the backend's host_register when it has one; each chunk's checksum
 *      taken from the same cache-hot bytes). Checksums are per unit (256 KiB or one
 *      block-map block, the larger).
 *   3. Commits went on meanwhile, and the block map says where: every unit holding a block
 *      written after v0 is read, checksummed and written again, still without a hold.
 *   4. Under a hold: the units written after the version step 3 started from, once more,
 *      and the field versions. What the file holds is now exactly the state at the held
 *      version; commits wait only for this last copy of what changed.
 *   5. The tensors' checksums combined from the units', the header, fsync, rename (the
 *      name may carry the version), fsync of the directory (fio_atomic_*).
 * A replay marks the blocks it writes before it leaves the replay gate, and a hold waits
 * for a replay in progress, so a unit whose blocks are all at most the version read under
 * a hold was not written since then. The only writes that mark nothing are the initial
 * values of theus_state_init_field (version 1, before the first commit): when the state is
 * at version 1 and a replay ran meanwhile, every unit is copied again.
 * Steps 2 and 3 read field memory that a replay may be writing: the torn bytes they may
 * copy are always copied again in step 3 or 4 (their blocks are marked), so those reads
 * are told to ThreadSanitizer as intended races (src/tsan_annotate.h). */
#include "alloc.h"
#include "durable/crc32c.h"
#include "durable/fileio.h"
#include "durable/snapshot.h"
#include "durable/stfile.h"
#include "error.h"
#include "tsan_annotate.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Bytes written per call (and per staging buffer), and the smallest checksum unit. */
#define SAVE_CHUNK ((uint64_t)8 << 20)
#define SAVE_UNIT_MIN ((uint64_t)256 << 10)

typedef struct save_field {
    uint32_t index;
    uint64_t nbytes;
    uint64_t at;          /* offset of its bytes in the file */
    uint64_t unit;        /* checksum unit (a multiple of the block-map block) */
    uint64_t nunits;
    uint32_t *crc;        /* per unit */
    int staged;           /* through the backend into host staging (not host; or tests) */
} save_field;

typedef struct saver {
    theus_state *st;
    const char *path;     /* the final path or the one named for v0, for messages */
    int fd;
    int dfd;              /* the same file opened with O_DIRECT, or -1 */
    save_field *f;
    size_t n;
    uint64_t chunk;
    unsigned char *buf[2]; /* staging (aligned interior of raw[]) */
    void *raw[2];
    const theus_backend *registered; /* the backend buf[] are registered with, if any */
} saver;

/* ---- reading and writing pieces --------------------------------------------------------- */

int stfile_test_staged;

int stfile_read_bytes(const theus_state *st, uint32_t i, uint64_t lo, uint64_t hi, void *dst)
{
    const field_desc *f = &st->fields[i];
    const uint64_t es = theus_dtype_size((theus_dtype)f->dtype);
    theus_region frame = {.ndim = 1, .stop = {(int64_t)(f->nbytes / es)}};
    theus_region sub = {.ndim = 1, .start = {(int64_t)(lo / es)}, .stop = {(int64_t)(hi / es)}};
    const theus_backend *b = st->backend[i];
    int rc = b->iface->read(b->ctx, st->data[i], &frame, (theus_dtype)f->dtype, &sub, dst,
                            THEUS_MEM_HOST);
    return rc == THEUS_OK ? THEUS_OK
                          : err_wrap(st, rc, "cannot copy field '%s' to the host", f->name);
}

/* Direct transfers need the buffer, the offset and the length on this boundary. */
#define SAVE_DIRECT_ALIGN 4096u

static int put(saver *w, const void *p, uint64_t len, uint64_t off)
{
    if (w->dfd >= 0 && ((uintptr_t)p | off | len) % SAVE_DIRECT_ALIGN == 0) {
        /* Straight from the fields' (or the staging) memory to the disk: no copy into the
         * page cache and no write-back to wait for at the fsync. */
        if (fio_pwrite_all(w->dfd, p, (size_t)len, off) == 0)
            return THEUS_OK;
        if (errno != EINVAL)
            return err_set(w->st, THEUS_EIO, "cannot write '%s': %s", w->path, strerror(errno));
        close(w->dfd); /* this file system refuses these transfers: the page cache then */
        w->dfd = -1;
    }
    if (fio_pwrite_all(w->fd, p, (size_t)len, off) != 0)
        return err_set(w->st, THEUS_EIO, "cannot write '%s': %s", w->path, strerror(errno));
    /* Start the write-back now: the disk works while the next chunk is prepared, and the
     * final fsync has little left. */
    if (len >= ((uint64_t)1 << 20))
        (void)sync_file_range(w->fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
    return THEUS_OK;
}

/* Checksums of the units of [lo, lo + len) of @f, whose bytes are at @p. */
static void sum_units(save_field *f, const unsigned char *p, uint64_t lo, uint64_t len)
{
    for (uint64_t o = 0; o < len; o += f->unit) {
        uint64_t n = len - o < f->unit ? len - o : f->unit;
        f->crc[(lo + o) / f->unit] = crc32c(0, p + o, (size_t)n);
    }
}

/* ---- step 2: the pass over all bytes ---------------------------------------------------- */

/* A staged field's pipeline: the filler thread copies chunk k into buf[k & 1] while the
 * writer writes chunk k - 1 from the other. */
typedef struct pipeline {
    saver *w;
    save_field *f;
    uint64_t nchunks;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t filled, written; /* chunks done by each side */
    int stop;                 /* the writer gave up */
    int rc;                   /* the filler's failure */
    char msg[512];
} pipeline;

static void *filler(void *arg)
{
    pipeline *p = arg;
    saver *w = p->w;
    for (uint64_t k = 0; k < p->nchunks; k++) {
        pthread_mutex_lock(&p->mu);
        while (k >= p->written + 2 && !p->stop)
            pthread_cond_wait(&p->cv, &p->mu);
        int stop = p->stop;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            break;
        uint64_t lo = k * w->chunk;
        uint64_t hi = lo + w->chunk > p->f->nbytes ? p->f->nbytes : lo + w->chunk;
        TSAN_IGNORE_BEGIN(); /* may race with a replay: copied again later (top) */
        int rc = stfile_read_bytes(w->st, p->f->index, lo, hi, w->buf[k & 1]);
        TSAN_IGNORE_END();
        pthread_mutex_lock(&p->mu);
        if (rc != THEUS_OK) {
            p->rc = rc;
            snprintf(p->msg, sizeof p->msg, "%s", theus_last_error_message());
        } else {
            p->filled = k + 1;
        }
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        if (rc != THEUS_OK)
            break;
    }
    return NULL;
}

static int pass_staged(saver *w, save_field *f)
{
    pipeline p = {.w = w, .f = f, .nchunks = (f->nbytes + w->chunk - 1) / w->chunk};
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    pthread_t th;
    int threaded = pthread_create(&th, NULL, filler, &p) == 0;
    int rc = THEUS_OK;
    for (uint64_t k = 0; k < p.nchunks && rc == THEUS_OK; k++) {
        uint64_t lo = k * w->chunk, len = f->nbytes - lo < w->chunk ? f->nbytes - lo : w->chunk;
        if (threaded) {
            pthread_mutex_lock(&p.mu);
            while (p.filled <= k && p.rc == THEUS_OK)
                pthread_cond_wait(&p.cv, &p.mu);
            if (p.filled <= k)
                rc = err_set(w->st, p.rc, "%s", p.msg);
            pthread_mutex_unlock(&p.mu);
        } else {
            /* No second thread: the same steps one after the other. */
            TSAN_IGNORE_BEGIN();
            rc = stfile_read_bytes(w->st, f->index, lo, lo + len, w->buf[k & 1]);
            TSAN_IGNORE_END();
        }
        if (rc == THEUS_OK) {
            sum_units(f, w->buf[k & 1], lo, len);
            rc = put(w, w->buf[k & 1], len, f->at + lo);
        }
        if (threaded) {
            pthread_mutex_lock(&p.mu);
            if (rc == THEUS_OK)
                p.written = k + 1;
            else
                p.stop = 1;
            pthread_cond_broadcast(&p.cv);
            pthread_mutex_unlock(&p.mu);
        }
    }
    if (threaded)
        pthread_join(th, NULL);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);
    return rc;
}

/* The checksums of a host field's units, on a thread of their own. */
typedef struct sum_job {
    save_field *f;
    const unsigned char *base;
} sum_job;

static void *sum_thread(void *arg)
{
    sum_job *j = arg;
    TSAN_IGNORE_BEGIN(); /* may race with a replay: copied again later (top) */
    sum_units(j->f, j->base, 0, j->f->nbytes);
    TSAN_IGNORE_END();
    return NULL;
}

static int pass_host(saver *w, save_field *f)
{
    const unsigned char *base = w->st->data[f->index];
    /* A field of several chunks: its checksums on a second thread while this one writes
     * (the disk then works while the CPU sums). The two read the field at different moments
     * — as the single-threaded order does too: a unit a replay changes between the reads is
     * marked in the block map and written again with a fresh checksum in step 3 or 4. */
    sum_job job = {.f = f, .base = base};
    pthread_t th;
    int threaded = f->nbytes > w->chunk && pthread_create(&th, NULL, sum_thread, &job) == 0;
    int rc = THEUS_OK;
    for (uint64_t lo = 0; lo < f->nbytes && rc == THEUS_OK; lo += w->chunk) {
        uint64_t len = f->nbytes - lo < w->chunk ? f->nbytes - lo : w->chunk;
        /* The sum and the write's read of the field may race with a replay: copied again
         * later (top). */
        TSAN_IGNORE_BEGIN();
        if (!threaded)
            sum_units(f, base + lo, lo, len);
        rc = put(w, base + lo, len, f->at + lo);
        TSAN_IGNORE_END();
    }
    if (threaded)
        pthread_join(th, NULL);
    return rc;
}

/* ---- steps 3 and 4: again what changed -------------------------------------------------- */

/* Write again, with fresh checksums, every unit holding a block written after @base (every
 * unit when @all). @tmp: one unit of host memory for staged fields. @held: commits are
 * held (else the reads may race with a replay, and are copied again with commits held). */
static int rewrite_changed(saver *w, uint64_t base, int all, int held, unsigned char *tmp)
{
    if (!held)
        TSAN_IGNORE_BEGIN();
    int rc = THEUS_OK;
    for (size_t k = 0; k < w->n; k++) {
        save_field *f = &w->f[k];
        block_map m = state_block_map(w->st, f->index);
        const uint64_t per = f->unit >> m.shift;
        for (uint64_t u = 0; u < f->nunits; u++) {
            int dirty = all;
            for (uint64_t b = u * per; !dirty && b < (u + 1) * per && b < m.nblocks; b++)
                dirty = atomic_load_explicit(&m.v[b], memory_order_relaxed) > base;
            if (!dirty)
                continue;
            uint64_t lo = u * f->unit, len = f->nbytes - lo < f->unit ? f->nbytes - lo : f->unit;
            const unsigned char *p = (const unsigned char *)w->st->data[f->index] + lo;
            if (f->staged) {
                if ((rc = stfile_read_bytes(w->st, f->index, lo, lo + len, tmp)) != THEUS_OK)
                    goto out;
                p = tmp;
            }
            f->crc[u] = crc32c(0, p, (size_t)len);
            if ((rc = put(w, p, len, f->at + lo)) != THEUS_OK)
                goto out;
        }
    }
out:
    if (!held)
        TSAN_IGNORE_END();
    return rc;
}

/* A commit hold and what it sees: the version and the replay sequence (any replay since a
 * previous look moves it). The caller releases the hold. */
static int hold_and_look(theus_state *st, uint64_t *version, uint64_t *seq)
{
    int rc = theus_state_hold_commits(st);
    if (rc != THEUS_OK)
        return rc;
    /* The hold saw the replay gate closed: what the last replay wrote (bytes and block
     * map) is visible from here on. ThreadSanitizer has no fences (GCC refuses them under
     * -fsanitize=thread, -Werror=tsan); for it the acquire loads below, which pair with
     * the replay gate's release, order the reads. */
#if !defined(THEUS_TSAN)
    atomic_thread_fence(memory_order_acquire);
#endif
    *version = atomic_load_explicit(&st->hdr->version, memory_order_acquire);
    *seq = atomic_load_explicit(&st->hdr->replay_seq, memory_order_acquire);
    return THEUS_OK;
}

/* ---- the file ----------------------------------------------------------------------------- */

/* The header with these checksums and versions (@s), padded to @min_len. */
static int header(const saver *w, const st_out_tensor *t, const snapshot *s,
                  const char *schema_text, const uint32_t *crc, size_t min_len,
                  unsigned char **prefix, size_t *plen)
{
    const char *keys[STFILE_NMETA];
    char *vals[STFILE_NMETA] = {0};
    int rc = stfile_meta(w->st, s, schema_text, keys, vals);
    if (rc == THEUS_OK)
        rc = stfile_prefix(w->st, w->path, t, crc, w->n, keys, (const char *const *)vals,
                           STFILE_NMETA, min_len, prefix, plen);
    stfile_meta_free(vals);
    return rc;
}

static uint32_t field_crc(const save_field *f)
{
    if (f->nunits == 0)
        return 0;
    crc32c_shift op;
    crc32c_shift_init(&op, f->unit);
    uint32_t c = f->crc[0];
    for (uint64_t u = 1; u + 1 < f->nunits; u++)
        c = crc32c_combine_op(&op, c, f->crc[u]);
    if (f->nunits > 1) {
        uint64_t last = f->nbytes - (f->nunits - 1) * f->unit;
        c = last == f->unit ? crc32c_combine_op(&op, c, f->crc[f->nunits - 1])
                            : crc32c_combine(c, f->crc[f->nunits - 1], last);
    }
    return c;
}

static int staging_alloc(saver *w)
{
    const theus_backend *reg = NULL;
    int any = 0;
    for (size_t k = 0; k < w->n; k++) {
        if (!w->f[k].staged)
            continue;
        any = 1;
        const field_desc *fd = &w->st->fields[w->f[k].index];
        const theus_backend *b = w->st->backend[w->f[k].index];
        if (fd->placement == THEUS_PLACEMENT_DEVICE && b->iface->host_register &&
            b->iface->host_unregister)
            reg = b;
    }
    if (!any)
        return THEUS_OK;
    const size_t page = 4096;
    for (int i = 0; i < 2; i++) {
        if (!(w->raw[i] = theus_xmalloc((size_t)w->chunk + page)))
            return err_set(w->st, THEUS_ENOMEM, "out of memory saving '%s'", w->path);
        w->buf[i] = (unsigned char *)(((uintptr_t)w->raw[i] + page - 1) & ~(uintptr_t)(page - 1));
    }
    /* Page-locked staging lets the device's copy engine fill it at full speed; refused,
     * the copies still work (through the driver's own bounce buffers). */
    if (reg && reg->iface->host_register(reg->ctx, w->buf[0], (size_t)w->chunk) == THEUS_OK) {
        if (reg->iface->host_register(reg->ctx, w->buf[1], (size_t)w->chunk) == THEUS_OK)
            w->registered = reg;
        else
            reg->iface->host_unregister(reg->ctx, w->buf[0]);
    }
    err_clear();
    return THEUS_OK;
}

static void saver_free(saver *w)
{
    if (w->registered)
        for (int i = 0; i < 2; i++)
            w->registered->iface->host_unregister(w->registered->ctx, w->buf[i]);
    for (int i = 0; i < 2; i++)
        theus_xfree(w->raw[i]);
    for (size_t k = 0; k < w->n && w->f; k++)
        theus_xfree(w->f[k].crc);
    theus_xfree(w->f);
}

int stfile_save_state(theus_state *st, const stfile_target *to, const char *schema_text,
                      uint64_t *version)
{
    const size_t nf = st->hdr->nfields;
    saver w = {.st = st, .fd = -1, .dfd = -1, .chunk = SAVE_CHUNK};
    snapshot s = {0};
    st_out_tensor *t = theus_xcalloc(nf ? nf : 1, sizeof *t);
    uint32_t *crc = theus_xcalloc(nf ? nf : 1, sizeof *crc);
    unsigned char *tmp = NULL, *prefix = NULL;
    size_t reserve = 0, plen = 0;
    char named[STFILE_PATH_MAX];
    fio_atomic a = {.fd = -1};
    int rc = THEUS_OK, opened = 0;
    w.f = theus_xcalloc(nf ? nf : 1, sizeof *w.f);
    s.f = theus_xcalloc(nf ? nf : 1, sizeof *s.f);
    w.path = to->path ? to->path : "checkpoint";
    if (!t || !crc || !w.f || !s.f) {
        rc = err_set(st, THEUS_ENOMEM, "out of memory saving '%s'", w.path);
        goto done;
    }
    /* The layout: persisted fields in order, each at its offset after the header. */
    uint64_t at = 0, unit_max = 0;
    for (uint32_t i = 0; i < nf && rc == THEUS_OK; i++) {
        const field_desc *fd = &st->fields[i];
        if (fd->zone == THEUS_ZONE_SIGNAL)
            continue;
        save_field *f = &w.f[w.n];
        block_map m = state_block_map(st, i);
        f->index = i;
        f->nbytes = fd->nbytes;
        f->at = at;
        f->unit = ((uint64_t)1 << m.shift) > SAVE_UNIT_MIN ? (uint64_t)1 << m.shift : SAVE_UNIT_MIN;
        f->nunits = (f->nbytes + f->unit - 1) / f->unit;
        f->staged = fd->placement != THEUS_PLACEMENT_HOST || stfile_test_staged;
        if (f->nunits && !(f->crc = theus_xcalloc(f->nunits, sizeof *f->crc)))
            rc = err_set(st, THEUS_ENOMEM, "out of memory saving '%s'", w.path);
        if (f->unit > unit_max)
            unit_max = f->unit;
        t[w.n] = (st_out_tensor){.name = fd->name, .dtype = (theus_dtype)fd->dtype,
                                 .ndim = (int)fd->ndim, .shape = fd->shape, .nbytes = fd->nbytes};
        /* The widest numbers the header can hold: its size once they are known fits. */
        s.f[w.n] = (snap_field){.index = i, .version = (uint64_t)INT64_MAX};
        crc[w.n] = UINT32_MAX;
        at += fd->nbytes;
        w.n++;
    }
    s.n = w.n;
    s.version = (uint64_t)INT64_MAX;
    if (rc == THEUS_OK && unit_max > w.chunk)
        w.chunk = unit_max; /* units never straddle chunks */
    if (rc == THEUS_OK)
        rc = header(&w, t, &s, schema_text, crc, 0, &prefix, &reserve);
    /* The data section on a page boundary, for direct transfers. */
    reserve = (reserve + SAVE_DIRECT_ALIGN - 1) / SAVE_DIRECT_ALIGN * SAVE_DIRECT_ALIGN;
    theus_xfree(prefix);
    prefix = NULL;
    if (rc == THEUS_OK && !(tmp = theus_xmalloc((size_t)unit_max + 1)))
        rc = err_set(st, THEUS_ENOMEM, "out of memory saving '%s'", w.path);
    if (rc == THEUS_OK)
        rc = staging_alloc(&w);

    /* 1. The version the fields' bytes have reached; the file is named after it for now. */
    uint64_t v0 = 0, seq0 = 0, v1 = 0, seq1 = 0, vf = 0, seqf = 0;
    if (rc == THEUS_OK && (rc = hold_and_look(st, &v0, &seq0)) == THEUS_OK)
        theus_state_release_commits(st);
    if (rc == THEUS_OK && !to->path) {
        to->name(to->ctx, v0, named, sizeof named);
        w.path = named;
    }
    if (rc == THEUS_OK && (rc = fio_atomic_open(st, w.path, to->mode, &a)) == THEUS_OK) {
        opened = 1;
        w.fd = a.fd;
        /* A second descriptor for direct transfers, where the file system takes them; the
         * fsync of the first covers the file's data whichever wrote it. */
        w.dfd = open(a.tmp, O_WRONLY | O_DIRECT | O_CLOEXEC);
    }
    /* 2. Every byte, while commits go on. */
    for (size_t k = 0; k < w.n && rc == THEUS_OK; k++) {
        save_field *f = &w.f[k];
        f->at += reserve;
        rc = f->staged ? pass_staged(&w, f) : pass_host(&w, f);
    }
    /* 3. What commits wrote meanwhile, still while they go on. */
    if (rc == THEUS_OK && (rc = hold_and_look(st, &v1, &seq1)) == THEUS_OK) {
        theus_state_release_commits(st);
        if (seq1 != seq0)
            rc = rewrite_changed(&w, v0, v0 == 1, 0, tmp);
    }
    /* 4. The rest with commits held: the file is now the state at version vf. */
    if (rc == THEUS_OK && (rc = hold_and_look(st, &vf, &seqf)) == THEUS_OK) {
        if (seqf != seq1)
            rc = rewrite_changed(&w, v1, v1 == 1, 1, tmp);
        s.version = vf;
        for (size_t k = 0; k < s.n; k++)
            s.f[k].version = atomic_load_explicit(&st->fields[s.f[k].index].version,
                                                  memory_order_acquire);
        theus_state_release_commits(st);
    }
    /* 5. The header at its reserved size, then fsync, rename, fsync of the directory. */
    for (size_t k = 0; k < w.n && rc == THEUS_OK; k++)
        crc[k] = field_crc(&w.f[k]);
    if (rc == THEUS_OK)
        rc = header(&w, t, &s, schema_text, crc, reserve, &prefix, &plen);
    if (rc == THEUS_OK && plen != reserve)
        rc = err_set(st, THEUS_EINVAL, "'%s': header of %zu bytes where %zu were reserved",
                     w.path, plen, reserve);
    if (rc == THEUS_OK)
        rc = put(&w, prefix, plen, 0);
    if (rc == THEUS_OK && !to->path && vf != v0) {
        to->name(to->ctx, vf, named, sizeof named);
        rc = fio_atomic_retarget(st, &a, named);
    }
    if (w.dfd >= 0) {
        close(w.dfd);
        w.dfd = -1;
    }
    if (rc == THEUS_OK) {
        opened = 0;
        rc = fio_atomic_commit(st, &a);
    }
    if (rc == THEUS_OK && version)
        *version = vf;
done:
    if (w.dfd >= 0)
        close(w.dfd);
    if (opened)
        fio_atomic_abort(&a);
    saver_free(&w);
    theus_xfree(prefix);
    theus_xfree(tmp);
    theus_xfree(t);
    theus_xfree(crc);
    theus_xfree(s.f);
    return rc;
}
