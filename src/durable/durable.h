/* A durable state's context: its directory, log writer, options and what recovery found;
 * the directory's file names; recovery (checkpoint chain + log replay) shared by opening
 * a state and time travel. Internal to src/durable/. */
#ifndef THEUS_SRC_DURABLE_DURABLE_H
#define THEUS_SRC_DURABLE_DURABLE_H
#include "durable/wal.h"
#include "state.h"
#include "theus/theus_durable.h"

typedef struct durable {
    wal w;                       /* first: the log listener's user pointer is the durable */
    char *dir;                   /* owned */
    char *schema_text;           /* schema.json as stored (owned) */
    theus_durable_options o;
    theus_durable_info info;
    int lock_fd;                 /* flock'ed LOCK file; -1 for a read-only state */
    int read_only;               /* theus_state_open_version: every commit refused */
    int has_wal;
    uint64_t last_ckpt;          /* version of the newest checkpoint (0: none) */
    uint32_t chain;              /* incremental checkpoints since the newest full one */
    pthread_mutex_t ckpt_lock;   /* one checkpoint at a time */
    int shared;                  /* a durable shared state (durable_shared.c) */
    int ckpt_fd;                 /* shared: the CKPT file, flock'ed by the checkpointing process */
} durable;

/* The durable context of @st, or NULL when @st is not durable. */
durable *durable_of(const theus_state *st);

/* ---- opening (durable.c), for durable_shared.c too ---- */
void dur_free(durable *d);
/* The release of the log listener: dur_free; durable_of finds the context by it. */
void dur_release(void *user);
durable *dur_new(const char *dir, const theus_durable_options *o);
int dur_resolve_options(const theus_durable_options *in, theus_durable_options *o);
/* @dir must be ours and not writable by others; whether it exists, and is empty. */
int dur_check_dir(const char *dir, int *exists, int *empty);
void dur_remove_temporaries(const char *dir);
/* The first steps of opening, private or shared: @dopts resolved into @o, and whether @dir
 * exists and is empty (dur_check_dir). */
int dur_open_begin(const char *dir, const theus_durable_options *dopts, theus_durable_options *o,
                   int *exists, int *empty);
/* mkdir @dir (0700); one that appeared meanwhile is fine. */
int dur_make_dir(const char *dir);
/* Open (creating) the LOCK file at @path into d->lock_fd. */
int dur_open_lock_file(durable *d, const char *path);
/* How opening a durable state ends (its `done:` label): with @rc THEUS_OK the log listener
 * is attached (it owns @d from then on) and *@out is @st; otherwise (@rc an error, or
 * attaching fails) @st and @d are freed and the error is returned. */
int dur_open_finish(durable *d, theus_state *st, int rc, theus_state **out);
int dur_write_small(const char *dir, const char *name, const char *text);
int dur_check_format(const char *dir);
int dur_same_schema(const char *a, const char *b, int *same);
/* The directory lock: an open file description lock on byte 0 of LOCK, taken without
 * waiting; @exclusive 1 for one private state (or a shared state's creator), 0 for each
 * process of a durable shared state. Taking the other kind on the same fd converts the lock
 * atomically (F_OFD_SETLK). 0, or -1 when another holder conflicts. */
int dur_dir_lock(int fd, int exclusive);

/* Around a checkpoint (checkpoint.c, under ckpt_lock): for a durable shared state, take
 * the CKPT file's lock (one checkpoint at a time across its processes; waits while another
 * process checkpoints) and read last_ckpt / chain from the directory. No-ops otherwise. */
int dur_ckpt_enter(durable *d);
void dur_ckpt_leave(durable *d);

/* ---- the directory ------------------------------------------------------------------- */
#define DUR_SCHEMA_FILE "schema.json"
#define DUR_FORMAT_FILE "FORMAT"
#define DUR_LOCK_FILE "LOCK"
/* Longest path theus builds inside a durable directory. */
#define DUR_PATH_MAX 4096

enum { DUR_SEGMENT = 0, DUR_FULL = 1, DUR_INCREMENTAL = 2 };

typedef struct dir_entry {
    uint64_t version;            /* a segment's start version, a checkpoint's version */
    int kind;
} dir_entry;

typedef struct dir_list {
    dir_entry *seg, *ckpt;       /* each sorted by version, ascending */
    size_t nseg, nckpt;
} dir_list;

int dir_scan(const theus_state *st, const char *dir, dir_list *out);
void dir_list_free(dir_list *l);
void ckpt_path(const char *dir, uint64_t version, int kind, char *buf, size_t len);

/* ---- recovery -------------------------------------------------------------------------- */
typedef struct rebuild_result {
    uint64_t version, ckpt_version, records;
    uint64_t torn_bytes, torn_offset;
    uint64_t last_seg_start, last_seg_size; /* the segment to append to (have_seg) */
    int have_seg;
    uint32_t chain;              /* incrementals in the chain loaded */
} rebuild_result;

/* Rebuild @st (fresh, at version 1) from @dir up to version @target (UINT64_MAX: the
 * newest): the newest checkpoint at or below it with its chain, then the log. With
 * @repair, a torn tail of the newest segment is cut off the file. THEUS_ECORRUPT names
 * file and offset; THEUS_ENOENT when @target cannot be reached. */
int dur_rebuild(theus_state *st, const char *dir, uint64_t target, int repair,
                rebuild_result *r);

/* Scan only: the versions @dir can rebuild. */
int dur_versions(const char *dir, uint64_t *oldest, uint64_t *newest);

/* The schema stored in @dir (theus_xmalloc'd text). THEUS_ENOENT when @dir holds none. */
int dur_read_schema(const char *dir, char **out);

#endif
