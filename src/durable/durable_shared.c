/* Durable shared states: theus_shared_open_durable creates a shared state from a durable
 * directory (recovering it) or opens the live one and attaches this process to the same
 * log; checkpoints of such a state, one at a time across its processes.
 *
 * The directory lock (LOCK, an open file description lock on byte 0): a private durable
 * state holds it exclusively; every process of a durable shared state holds it shared. The
 * creator takes it exclusively, builds and recovers the state before its name exists, names
 * it, then turns its lock into a shared one (atomically) and sets `ready`. An opener that
 * finds the name takes the lock shared; if the creator is between naming and turning its
 * lock, it waits for `ready` (a futex, at most THEUS_SHARED_WAIT_MS). So a private open, a
 * second shared state of another name, or a second creator all find the lock taken. */
#include "alloc.h"
#include "durable/durable.h"
#include "durable/fileio.h"
#include "durable/wal_record.h"
#include "error.h"
#include "shared.h"
#include "theus/theus_shared.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct create_ctx {
    durable *d;
    const char *schema_text;
    int fresh;                 /* the directory was empty: write schema.json and FORMAT */
    dev_t dev;
    ino_t ino;
} create_ctx;

/* fdatasync the file at @path: what recovery read may be in the page cache only (left by a
 * process under THEUS_SYNC_NONE), and the first record's claim says everything before it
 * is synced. 0, or -1 (errno). */
static int sync_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fdatasync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* Runs on the new shared state before its name exists. */
static int init_new(theus_state *st, void *user)
{
    create_ctx *c = user;
    durable *d = c->d;
    shared_durable_area *sa = &shared_area_of(st)->durable;
    sa->enabled = 1;
    sa->dir_dev = (uint64_t)c->dev;
    sa->dir_ino = (uint64_t)c->ino;
    sa->segment_bytes = d->o.segment_bytes;
    sa->prealloc = wal_prealloc_step(&d->o);
    snprintf(sa->dir, sizeof sa->dir, "%s", d->dir);
    uint64_t seg = 1, off = 0;
    int rc;
    if (c->fresh) {
        if ((rc = dur_write_small(d->dir, DUR_SCHEMA_FILE, c->schema_text)) != THEUS_OK ||
            (rc = dur_write_small(d->dir, DUR_FORMAT_FILE, "theus-durable 1\n")) != THEUS_OK)
            return rc;
        d->info.version = d->info.checkpoint_version = 1;
    } else {
        rebuild_result r;
        if ((rc = dur_rebuild(st, d->dir, UINT64_MAX, 1, &r)) != THEUS_OK)
            return dur_wrap(NULL, rc, "recovery");
        d->info = (theus_durable_info){.version = r.version,
                                       .checkpoint_version = r.ckpt_version,
                                       .records_replayed = r.records,
                                       .torn_bytes = r.torn_bytes,
                                       .torn_offset = r.torn_offset};
        d->last_ckpt = r.ckpt_version > 1 ? r.ckpt_version : 0;
        d->chain = r.chain;
        seg = r.have_seg ? r.last_seg_start : r.version;
        off = r.have_seg ? r.last_seg_size : 0;
    }
    uint64_t zero_end = 0;
    if (off == 0) {
        int fd;
        if ((rc = wal_segment_create(st, d->dir, seg, THEUS_SYNC_COMMIT, &fd)) != THEUS_OK)
            return rc;
        close(fd);
        off = WAL_SEG_HEAD;
    } else {
        /* Past the valid end recovery found only zeros: the zero-filled part with
         * preallocation, cut off without it. */
        char p[DUR_PATH_MAX];
        wal_segment_path(d->dir, seg, p, sizeof p);
        struct stat sb;
        if (stat(p, &sb) != 0 || (!sa->prealloc && (uint64_t)sb.st_size > off &&
                                  truncate(p, (off_t)off) != 0) ||
            sync_file(p) != 0)
            return err_set(NULL, THEUS_EIO, "cannot open log segment '%s': %s", p,
                           strerror(errno));
        if (sa->prealloc && (uint64_t)sb.st_size > off)
            zero_end = (uint64_t)sb.st_size;
    }
    atomic_store_explicit(&sa->seg_first, seg, memory_order_relaxed);
    atomic_store(&sa->append_version, d->info.version);
    atomic_store(&sa->synced_version, d->info.version);
    sa->append_off = off;
    sa->zero_end = zero_end;
    sa->dirty_end = off;
    return THEUS_OK;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* This process joins the live durable shared state @st: same directory, the directory lock
 * shared, its own log handle. */
static int join(theus_state *st, durable *d, const char *name, dev_t dev, ino_t ino)
{
    shared_durable_area *sa = &shared_area_of(st)->durable;
    if (!sa->enabled)
        return err_set(NULL, THEUS_EINVAL, "shared state '%s' exists and is not durable (it was "
                       "made with theus_state_create_shared)", name);
    if (sa->dir_dev != (uint64_t)dev || sa->dir_ino != (uint64_t)ino)
        return err_set(NULL, THEUS_EINVAL, "shared state '%s' is durable in '%s', not in '%s'",
                       name, sa->dir, d->dir);
    if (dur_dir_lock(d->lock_fd, 0) != 0) {
        /* Its creator may be between naming it and sharing the lock. */
        uint64_t end = mono_ns() + shared_wait_bound_ms() * 1000000ull, now;
        while (!atomic_load_explicit(&sa->ready, memory_order_acquire) && (now = mono_ns()) < end)
            state_futex_wait(&sa->ready, 0, 1, end - now);
        if (dur_dir_lock(d->lock_fd, 0) != 0)
            return err_set(NULL, THEUS_EBUSY, "'%s' is locked by another process (a private "
                           "durable state?) although shared state '%s' uses it", d->dir, name);
    }
    int rc = dur_check_format(d->dir);
    if (rc == THEUS_OK)
        rc = dur_read_schema(d->dir, &d->schema_text);
    if (rc != THEUS_OK)
        return rc;
    d->info.version = d->info.checkpoint_version = theus_state_version(st);
    return THEUS_OK;
}

/* This process creates the shared state from the directory (the lock is exclusive). */
static int create(const char *name, durable *d, const char *schema_json, int fresh,
                  const theus_state_options *opts, dev_t dev, ino_t ino, theus_state **out)
{
    dur_remove_temporaries(d->dir);
    int rc;
    if (!fresh) {
        if ((rc = dur_check_format(d->dir)) != THEUS_OK ||
            (rc = dur_read_schema(d->dir, &d->schema_text)) != THEUS_OK)
            return rc;
        if (schema_json) {
            int same = 0;
            if ((rc = dur_same_schema(schema_json, d->schema_text, &same)) != THEUS_OK)
                return rc;
            if (!same)
                return err_set(NULL, THEUS_ESCHEMA, "'%s': the schema given differs from the "
                               "one stored in %s", d->dir, DUR_SCHEMA_FILE);
        }
    } else if (!(d->schema_text = theus_xstrdup(schema_json))) {
        return err_set(NULL, THEUS_ENOMEM, "out of memory");
    }
    create_ctx c = {.d = d, .schema_text = d->schema_text, .fresh = fresh, .dev = dev, .ino = ino};
    theus_state *st = NULL;
    rc = shared_create(name, d->schema_text, opts, NULL, init_new, &c, &st);
    if (rc != THEUS_OK)
        return rc;
    /* Named: share the lock (an atomic conversion), then let openers in. */
    dur_dir_lock(d->lock_fd, 0);
    state_futex_wake(&shared_area_of(st)->durable.ready, 1);
    *out = st;
    return THEUS_OK;
}

int theus_shared_open_durable(const char *name, const char *dir, const char *schema_json,
                              const theus_state_options *opts, const theus_durable_options *dopts,
                              theus_state **out)
{
    if (out)
        *out = NULL;
    if (!name || !dir || !*dir || !out)
        return err_set(NULL, THEUS_EINVAL, "theus_shared_open_durable: NULL argument");
    theus_durable_options o;
    int exists, empty;
    int rc = dur_open_begin(dir, dopts, &o, &exists, &empty);
    if (rc != THEUS_OK)
        return rc;
    if (!exists && !schema_json)
        return err_set(NULL, THEUS_EINVAL, "'%s' holds no state: a schema is needed to create one",
                       dir);
    /* A bad name, or a live state of that name that cannot be in a directory that does not
     * exist yet, is refused before anything is created. */
    theus_shared_summary sum;
    rc = theus_shared_info(name, &sum);
    if (rc == THEUS_EINVAL)
        return rc;
    if (!exists && rc == THEUS_OK)
        return err_set(NULL, THEUS_EINVAL, "shared state '%s' exists and is not in '%s' (which "
                       "does not exist)", name, dir);
    if (!exists && (rc = dur_make_dir(dir)) != THEUS_OK)
        return rc;
    char abs[PATH_MAX];
    struct stat sb;
    if (!realpath(dir, abs) || stat(abs, &sb) != 0)
        return err_set(NULL, THEUS_EIO, "cannot resolve '%s': %s", dir, strerror(errno));
    if (strlen(abs) >= SHARED_DURABLE_DIR_MAX)
        return err_set(NULL, THEUS_EINVAL, "'%s': a durable shared state's directory path must "
                       "be shorter than %d bytes", abs, SHARED_DURABLE_DIR_MAX);
    durable *d = dur_new(abs, &o);
    if (!d)
        return err_set(NULL, THEUS_ENOMEM, "out of memory opening '%s'", dir);
    d->shared = 1;
    theus_state *st = NULL;
    char p[DUR_PATH_MAX];
    int pn = snprintf(p, sizeof p, "%s/%s", abs, DUR_LOCK_FILE);
    if (pn < 0 || (size_t)pn >= sizeof p) {
        rc = err_set(NULL, THEUS_EINVAL, "'%s': path too long", abs);
        goto done;
    }
    if ((rc = dur_open_lock_file(d, p)) != THEUS_OK)
        goto done;
    rc = shared_open(name, schema_json, 1, &st);
    if (rc == THEUS_OK) {
        rc = join(st, d, name, sb.st_dev, sb.st_ino);
    } else if (rc == THEUS_ENOENT) {
        if (dur_dir_lock(d->lock_fd, 1) != 0) {
            rc = err_set(NULL, THEUS_EBUSY, "'%s' is in use: open by a private durable state, "
                         "by the processes of another durable shared state, or a process is "
                         "creating shared state '%s' from it right now (then retry)", abs, name);
            goto done;
        }
        rc = dur_check_dir(abs, &exists, &empty);
        if (rc == THEUS_OK && empty && !schema_json)
            rc = err_set(NULL, THEUS_EINVAL, "'%s' holds no state: a schema is needed to create "
                         "one", dir);
        if (rc == THEUS_OK)
            rc = create(name, d, schema_json, empty, opts, sb.st_dev, sb.st_ino, &st);
    }
    if (rc != THEUS_OK)
        goto done;
    if ((rc = wal_open_shared(&d->w, st, abs, &o)) != THEUS_OK)
        goto done;
    d->has_wal = 1;
done:
    return dur_open_finish(d, st, rc, out);
}

/* ---- checkpoints across processes ------------------------------------------------------ */

int dur_ckpt_enter(durable *d)
{
    if (!d->shared)
        return THEUS_OK;
    if (d->ckpt_fd < 0) {
        char p[DUR_PATH_MAX];
        snprintf(p, sizeof p, "%s/CKPT", d->dir);
        d->ckpt_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (d->ckpt_fd < 0)
            return err_set(NULL, THEUS_EIO, "cannot open '%s': %s", p, strerror(errno));
    }
    int e;
    while ((e = flock(d->ckpt_fd, LOCK_EX)) != 0 && errno == EINTR)
        ;
    if (e != 0)
        return err_set(NULL, THEUS_EIO, "cannot lock '%s/CKPT': %s", d->dir, strerror(errno));
    /* Another process may have checkpointed: the directory says where the chain stands. */
    dir_list l;
    int rc = dir_scan(NULL, d->dir, &l);
    if (rc != THEUS_OK) {
        flock(d->ckpt_fd, LOCK_UN);
        return rc;
    }
    d->last_ckpt = 0;
    d->chain = 0;
    if (l.nckpt > 0) {
        d->last_ckpt = l.ckpt[l.nckpt - 1].version;
        for (size_t k = l.nckpt; k-- > 0 && l.ckpt[k].kind == DUR_INCREMENTAL;)
            d->chain++;
    }
    dir_list_free(&l);
    return THEUS_OK;
}

void dur_ckpt_leave(durable *d)
{
    if (d->shared && d->ckpt_fd >= 0)
        flock(d->ckpt_fd, LOCK_UN);
}
