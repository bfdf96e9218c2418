/* Durable states: opening a directory (create or recover), the read-only states of time
 * travel, theus_state_durable_info / theus_state_versions, and the context's lifetime (it
 * goes with the state: the log listener's release). Checkpoints are in checkpoint.c,
 * recovery in recover.c, the log writer in wal.c (and the wal_*.c beside it). */
#include "alloc.h"
#include "durable/durable.h"
#include "durable/fileio.h"
#include "durable/snapshot.h"
#include "error.h"
#include "publish.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_SEGMENT_BYTES (64ull << 20)
#define DEFAULT_KEEP 2u
#define DEFAULT_PREALLOC_BYTES (1ull << 20)

void dur_free(durable *d)
{
    if (!d)
        return;
    if (d->has_wal)
        wal_close(&d->w);
    if (d->lock_fd >= 0)
        close(d->lock_fd);
    if (d->ckpt_fd >= 0)
        close(d->ckpt_fd);
    pthread_mutex_destroy(&d->ckpt_lock);
    theus_xfree(d->dir);
    theus_xfree(d->schema_text);
    theus_xfree(d);
}

int dur_dir_lock(int fd, int exclusive)
{
    struct flock l = {.l_type = exclusive ? F_WRLCK : F_RDLCK, .l_whence = SEEK_SET,
                      .l_start = 0, .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &l) == 0 ? 0 : -1;
}

_Static_assert(offsetof(durable, w) == 0, "the log listener's user pointer is the durable");

void dur_release(void *user)
{
    dur_free(user);
}

durable *durable_of(const theus_state *st)
{
    for (uint32_t i = 0; i < st->listeners.n; i++)
        if (st->listeners.release[i] == dur_release)
            return st->listeners.l[i].user;
    return NULL;
}

static int read_only_prepare(void *user, const publish_batch *b)
{
    const durable *d = user;
    return err_set(b->st, THEUS_EPERM, "state opened read-only from '%s' at version %llu "
                   "(theus_state_open_version): commits are refused", d->dir,
                   (unsigned long long)d->info.version);
}

/* The directory must be ours and not writable by others. */
int dur_check_dir(const char *dir, int *exists, int *empty)
{
    struct stat sb;
    *exists = *empty = 0;
    if (stat(dir, &sb) != 0) {
        if (errno == ENOENT)
            return THEUS_OK;
        return err_set(NULL, THEUS_EIO, "cannot stat '%s': %s", dir, strerror(errno));
    }
    if (!S_ISDIR(sb.st_mode))
        return err_set(NULL, THEUS_EINVAL, "'%s' is not a directory", dir);
    if (sb.st_uid != geteuid())
        return err_set(NULL, THEUS_EPERM, "'%s' belongs to user %u, not to this user (%u)", dir,
                       (unsigned)sb.st_uid, (unsigned)geteuid());
    if (sb.st_mode & (S_IWGRP | S_IWOTH))
        return err_set(NULL, THEUS_EPERM, "'%s' has mode %04o: writable by group or others "
                       "(a durable directory must not be; chmod go-w)", dir,
                       (unsigned)(sb.st_mode & 07777));
    *exists = 1;
    dir_list l;
    int rc = dir_scan(NULL, dir, &l);
    if (rc != THEUS_OK)
        return rc;
    char p[DUR_PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, DUR_FORMAT_FILE);
    int has_format = access(p, F_OK) == 0;
    snprintf(p, sizeof p, "%s/%s", dir, DUR_SCHEMA_FILE);
    int has_schema = access(p, F_OK) == 0;
    *empty = !has_format && !has_schema && l.nseg == 0 && l.nckpt == 0;
    dir_list_free(&l);
    if (!*empty && !has_format)
        return err_set(NULL, THEUS_ECORRUPT, "'%s' is not a theus durable directory (no %s)",
                       dir, DUR_FORMAT_FILE);
    return THEUS_OK;
}

/* Temporary files of writes a crash interrupted ("<name>.tmp.<pid>.<n>", fileio.c): with
 * the directory locked, nobody else is writing them. */
void dur_remove_temporaries(const char *dir)
{
    DIR *dd = opendir(dir);
    if (!dd)
        return;
    struct dirent *e;
    char p[DUR_PATH_MAX];
    while ((e = readdir(dd)))
        if (strstr(e->d_name, ".tmp.")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(dd);
}

int dur_write_small(const char *dir, const char *name, const char *text)
{
    char p[DUR_PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    fio_atomic a;
    int rc = fio_atomic_open(NULL, p, 0600, &a);
    if (rc != THEUS_OK)
        return rc;
    if (fio_write_all(a.fd, text, strlen(text)) != 0) {
        int e = errno;
        fio_atomic_abort(&a);
        return err_set(NULL, THEUS_EIO, "cannot write '%s': %s", p, strerror(e));
    }
    return fio_atomic_commit(NULL, &a);
}

int dur_check_format(const char *dir)
{
    char p[DUR_PATH_MAX], buf[64] = "";
    snprintf(p, sizeof p, "%s/%s", dir, DUR_FORMAT_FILE);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(NULL, THEUS_EIO, "cannot open '%s': %s", p, strerror(errno));
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0 || strncmp(buf, "theus-durable 1\n", 16) != 0 || n != 16)
        return err_set(NULL, THEUS_ECORRUPT, "'%s' at byte 0: not \"theus-durable 1\"", p);
    return THEUS_OK;
}

int dur_same_schema(const char *a, const char *b, int *same)
{
    char why[512];
    theus_schema *x = NULL, *y = NULL;
    int rc = schema_parse(a, &x, why, sizeof why);
    if (rc != THEUS_OK)
        return err_set(NULL, rc, "%s", why);
    rc = schema_parse(b, &y, why, sizeof why);
    if (rc != THEUS_OK) {
        schema_free(x);
        return err_set(NULL, THEUS_ECORRUPT, "the stored schema does not parse: %s", why);
    }
    char *cx = schema_canonical(x), *cy = schema_canonical(y);
    *same = cx && cy && strcmp(cx, cy) == 0;
    rc = cx && cy ? THEUS_OK : err_set(NULL, THEUS_ENOMEM, "out of memory comparing schemas");
    theus_xfree(cx);
    theus_xfree(cy);
    schema_free(x);
    schema_free(y);
    return rc;
}

int dur_resolve_options(const theus_durable_options *in, theus_durable_options *o)
{
    theus_durable_options def = THEUS_DURABLE_OPTIONS_INIT;
    *o = in ? *in : def;
    if ((unsigned)o->sync > THEUS_SYNC_NONE)
        return err_set(NULL, THEUS_EINVAL, "durable options: unknown sync policy %d", (int)o->sync);
    if (o->group_window_us > 1000000)
        return err_set(NULL, THEUS_EINVAL, "durable options: group_window_us above 1 s");
    if (o->segment_bytes == 0)
        o->segment_bytes = DEFAULT_SEGMENT_BYTES;
    if (o->keep_checkpoints == 0)
        o->keep_checkpoints = DEFAULT_KEEP;
    /* Preallocated under every policy: a group's fdatasync over preallocated blocks can
     * persist a later record's sectors without an earlier one's, and the records' claims
     * (wal_record.h) let recovery read that hole as the unsynced group it is. */
    if (o->prealloc_bytes == 0)
        o->prealloc_bytes = DEFAULT_PREALLOC_BYTES;
    return THEUS_OK;
}

durable *dur_new(const char *dir, const theus_durable_options *o)
{
    durable *d = theus_xcalloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->lock_fd = -1;
    d->ckpt_fd = -1;
    d->o = *o;
    pthread_mutex_init(&d->ckpt_lock, NULL);
    if (!(d->dir = theus_xstrdup(dir))) {
        theus_xfree(d);
        return NULL;
    }
    return d;
}

int dur_open_begin(const char *dir, const theus_durable_options *dopts, theus_durable_options *o,
                   int *exists, int *empty)
{
    int rc = dur_resolve_options(dopts, o);
    if (rc != THEUS_OK)
        return rc;
    return dur_check_dir(dir, exists, empty);
}

int dur_make_dir(const char *dir)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return err_set(NULL, errno == ENOENT ? THEUS_ENOENT : THEUS_EIO,
                       "cannot create '%s': %s", dir, strerror(errno));
    return THEUS_OK;
}

int dur_open_lock_file(durable *d, const char *path)
{
    d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d->lock_fd < 0)
        return err_set(NULL, THEUS_EIO, "cannot open '%s': %s", path, strerror(errno));
    return THEUS_OK;
}

int dur_open_finish(durable *d, theus_state *st, int rc, theus_state **out)
{
    if (rc == THEUS_OK && (rc = wal_attach(&d->w, dur_release, d)) == THEUS_OK) {
        *out = st;
        return THEUS_OK;
    }
    theus_state_destroy(st);
    dur_free(d);
    return rc;
}

/* *@st made from the stored schema (d->schema_text) and rebuilt from d->dir up to @target
 * (dur_rebuild), with d->info set from what was found; @what names the rebuild in errors. */
static int rebuild_stored(durable *d, const theus_state_options *opts, uint64_t target,
                          int repair, const char *what, theus_state **st, rebuild_result *r)
{
    int rc = theus_state_create(d->schema_text, opts, st);
    if (rc != THEUS_OK)
        return dur_wrap(NULL, THEUS_ECORRUPT, "the stored schema.json");
    /* Messages were set against the scratch state: keep them for the caller. */
    if ((rc = dur_rebuild(*st, d->dir, target, repair, r)) != THEUS_OK)
        return dur_wrap(NULL, rc, what);
    d->info = (theus_durable_info){.version = r->version,
                                   .checkpoint_version = r->ckpt_version,
                                   .records_replayed = r->records,
                                   .torn_bytes = r->torn_bytes,
                                   .torn_offset = r->torn_offset};
    return THEUS_OK;
}

/* THEUS_ENOENT unless @dir exists and holds something (what the read-only entry points need). */
static int check_holds_state(const char *dir)
{
    int exists, empty;
    int rc = dur_check_dir(dir, &exists, &empty);
    if (rc != THEUS_OK)
        return rc;
    if (!exists || empty)
        return err_set(NULL, THEUS_ENOENT, "'%s' holds no durable state", dir);
    return THEUS_OK;
}

int theus_state_open_durable(const char *dir, const char *schema_json,
                             const theus_state_options *opts, const theus_durable_options *dopts,
                             theus_state **out)
{
    if (out)
        *out = NULL;
    if (!dir || !out || !*dir)
        return err_set(NULL, THEUS_EINVAL, "theus_state_open_durable: NULL argument");
    theus_durable_options o;
    int exists, empty;
    int rc = dur_open_begin(dir, dopts, &o, &exists, &empty);
    if (rc != THEUS_OK)
        return rc;
    int create = !exists || empty;
    if (create && !schema_json)
        return err_set(NULL, THEUS_EINVAL, "'%s' holds no state: a schema is needed to create one",
                       dir);
    if (!exists && (rc = dur_make_dir(dir)) != THEUS_OK)
        return rc;

    durable *d = dur_new(dir, &o);
    if (!d)
        return err_set(NULL, THEUS_ENOMEM, "out of memory opening '%s'", dir);
    theus_state *st = NULL;
    char p[DUR_PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, DUR_LOCK_FILE);
    if ((rc = dur_open_lock_file(d, p)) != THEUS_OK)
        goto done;
    if (dur_dir_lock(d->lock_fd, 1) != 0) {
        rc = err_set(NULL, THEUS_EBUSY, "'%s' is open in another process or handle (a durable "
                     "state, or the processes of a durable shared state)", dir);
        goto done;
    }
    dur_remove_temporaries(dir);
    if (create) {
        /* Validate the schema before anything is written. */
        if ((rc = theus_state_create(schema_json, opts, &st)) != THEUS_OK)
            goto done;
        if (!(d->schema_text = theus_xstrdup(schema_json))) {
            rc = err_set(NULL, THEUS_ENOMEM, "out of memory");
            goto done;
        }
        if ((rc = dur_write_small(dir, DUR_SCHEMA_FILE, schema_json)) != THEUS_OK ||
            (rc = dur_write_small(dir, DUR_FORMAT_FILE, "theus-durable 1\n")) != THEUS_OK)
            goto done;
        if ((rc = wal_open(&d->w, st, dir, &o, 1, 1, 0)) != THEUS_OK)
            goto done;
        d->has_wal = 1;
        d->info.version = d->info.checkpoint_version = 1;
    } else {
        if ((rc = dur_check_format(dir)) != THEUS_OK || (rc = dur_read_schema(dir, &d->schema_text)))
            goto done;
        if (schema_json) {
            int same = 0;
            if ((rc = dur_same_schema(schema_json, d->schema_text, &same)) != THEUS_OK)
                goto done;
            if (!same) {
                rc = err_set(NULL, THEUS_ESCHEMA, "'%s': the schema given differs from the "
                             "one stored in %s", dir, DUR_SCHEMA_FILE);
                goto done;
            }
        }
        rebuild_result r;
        if ((rc = rebuild_stored(d, opts, UINT64_MAX, 1, "recovery", &st, &r)) != THEUS_OK)
            goto done;
        d->last_ckpt = r.ckpt_version > 1 ? r.ckpt_version : 0;
        d->chain = r.chain;
        if (r.have_seg)
            rc = wal_open(&d->w, st, dir, &o, r.last_seg_start, 0, r.last_seg_size);
        else
            rc = wal_open(&d->w, st, dir, &o, r.version, 1, 0);
        if (rc != THEUS_OK)
            goto done;
        d->has_wal = 1;
    }
done:
    return dur_open_finish(d, st, rc, out);
}

int theus_state_durable_info(const theus_state *st, theus_durable_info *out)
{
    if (!st || !out)
        return err_set(st, THEUS_EINVAL, "theus_state_durable_info: NULL argument");
    const durable *d = durable_of(st);
    if (!d)
        return err_set(st, THEUS_EINVAL, "theus_state_durable_info: not a durable state");
    *out = d->info;
    return THEUS_OK;
}

int theus_state_durable_stats(const theus_state *st, theus_durable_stats *out)
{
    if (!st || !out)
        return err_set(st, THEUS_EINVAL, "theus_state_durable_stats: NULL argument");
    const durable *d = durable_of(st);
    if (!d)
        return err_set(st, THEUS_EINVAL, "theus_state_durable_stats: not a durable state");
    memset(out, 0, sizeof *out);
    if (d->has_wal)
        wal_stats(&d->w, out);
    return THEUS_OK;
}

int theus_state_versions(const char *dir, uint64_t *oldest, uint64_t *newest)
{
    if (!dir || !oldest || !newest)
        return err_set(NULL, THEUS_EINVAL, "theus_state_versions: NULL argument");
    int rc = check_holds_state(dir);
    if (rc != THEUS_OK)
        return rc;
    return dur_versions(dir, oldest, newest);
}

int theus_state_open_version(const char *dir, uint64_t version, theus_state **out)
{
    if (out)
        *out = NULL;
    if (!dir || !out || version == 0)
        return err_set(NULL, THEUS_EINVAL, "theus_state_open_version: NULL argument or version 0");
    int rc = check_holds_state(dir);
    if (rc != THEUS_OK)
        return rc;
    uint64_t lo, hi;
    if ((rc = dur_versions(dir, &lo, &hi)) != THEUS_OK)
        return rc;
    if (version < lo || version > hi)
        return err_set(NULL, THEUS_ENOENT, "'%s' can rebuild versions %llu to %llu, not %llu",
                       dir, (unsigned long long)lo, (unsigned long long)hi,
                       (unsigned long long)version);
    theus_durable_options o;
    dur_resolve_options(NULL, &o);
    durable *d = dur_new(dir, &o);
    if (!d)
        return err_set(NULL, THEUS_ENOMEM, "out of memory opening '%s'", dir);
    theus_state *st = NULL;
    if ((rc = dur_check_format(dir)) != THEUS_OK || (rc = dur_read_schema(dir, &d->schema_text)))
        goto fail;
    rebuild_result r;
    if ((rc = rebuild_stored(d, NULL, version, 0, "time travel", &st, &r)) != THEUS_OK)
        goto fail;
    d->read_only = 1;
    publish_listener l = {.prepare = read_only_prepare, .user = d};
    if ((rc = publish_listen_owned(st, &l, dur_release)) != THEUS_OK)
        goto fail;
    *out = st;
    return THEUS_OK;
fail:
    theus_state_destroy(st);
    dur_free(d);
    return rc;
}
