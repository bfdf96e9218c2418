/* State creation and destruction, shadow descriptors, field metadata, the commit lock with
 * its priority lease, commit holds and the replay sequence readers validate with, and
 * counters. */
#include "state.h"
#include "alloc.h"
#include "dtype.h"
#include "error.h"
#include "redo.h"
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_LOG_CAPACITY 4096u
#define DEFAULT_LEASE_MS 100u

uint64_t state_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int state_find_field(const theus_state *st, const char *name)
{
    return schema_find(st->schema, name);
}

static size_t align_up(size_t n, size_t a)
{
    return (n + a - 1) / a * a;
}

int state_options_resolve(const theus_state_options *in, theus_state_options *out)
{
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    if (in)
        o = *in;
    if (o.allow_fallback != 0 && o.allow_fallback != 1)
        return err_set(NULL, THEUS_EINVAL, "allow_fallback must be 0 or 1");
    if (o.commit_log_capacity == 0)
        o.commit_log_capacity = DEFAULT_LOG_CAPACITY;
    if (o.commit_log_capacity > (1u << 24))
        return err_set(NULL, THEUS_EINVAL, "commit_log_capacity %u exceeds 2^24",
                       o.commit_log_capacity);
    if (o.priority_lease_ms == 0)
        o.priority_lease_ms = DEFAULT_LEASE_MS;
    *out = o;
    return THEUS_OK;
}

static uint64_t map_entries(const theus_schema *schema)
{
    uint64_t n = 0;
    for (size_t i = 0; i < schema->nfields; i++) {
        uint32_t shift;
        uint64_t blocks;
        block_map_geometry(schema->fields[i].nbytes, &shift, &blocks);
        n += blocks;
    }
    return n;
}

static size_t map_offset(size_t off_log, uint32_t log_capacity)
{
    return align_up(off_log + (size_t)log_capacity * sizeof(log_entry), 64);
}

void state_layout(const theus_schema *schema, uint32_t log_capacity, size_t *off_fields,
                  size_t *off_log, size_t *bytes)
{
    *off_fields = align_up(sizeof(state_header), 64);
    *off_log = align_up(*off_fields + schema->nfields * sizeof(field_desc), 64);
    *bytes = map_offset(*off_log, log_capacity) + (size_t)map_entries(schema) * sizeof(uint64_t);
}

/* A shared state's mutexes are robust: a process that dies holding one does not block the
 * others (state_lock and hold_lock take over). */
static int mutex_init(pthread_mutex_t *m, int pshared)
{
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a) != 0)
        return -1;
    int rc = 0;
    if (pshared)
        rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) ||
             pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return rc ? -1 : 0;
}

theus_state *state_shadow_new(theus_schema *schema, const theus_state_options *o)
{
    theus_state *st = theus_xcalloc(1, sizeof *st);
    if (!st)
        return NULL;
    size_t nf = schema->nfields;
    st->schema = schema;
    st->opts = *o;
    st->data = theus_xcalloc(nf, sizeof *st->data);
    st->backend = theus_xcalloc(nf, sizeof *st->backend);
    st->frames = theus_xcalloc(nf, sizeof *st->frames);
    if (!st->data || !st->backend || !st->frames) {
        st->schema = NULL; /* the caller keeps it on failure */
        state_shadow_free(st);
        return NULL;
    }
    for (size_t i = 0; i < nf; i++)
        region_whole(schema->fields[i].ndim, schema->fields[i].shape, &st->frames[i]);
    atomic_init(&st->refs, 1);
    return st;
}

void state_shadow_free(theus_state *st)
{
    theus_xfree(st->frames);
    theus_xfree(st->backend);
    theus_xfree(st->data);
    schema_free(st->schema);
    theus_xfree(st);
}

void state_bind(theus_state *st, state_header *h)
{
    st->hdr = h;
    st->fields = (field_desc *)((char *)h + h->off_fields);
    st->log_ring = (log_entry *)((char *)h + h->off_log);
    st->map = (_Atomic uint64_t *)(void *)((char *)h + h->off_map);
}

int state_header_init(theus_state *st, size_t total, int pshared)
{
    state_header *h = st->hdr;
    const theus_schema *schema = st->schema;
    size_t off_fields, off_log, bytes;
    state_layout(schema, st->opts.commit_log_capacity, &off_fields, &off_log, &bytes);
    h->magic = THEUS_STATE_MAGIC;
    h->layout_version = THEUS_LAYOUT_VERSION;
    h->nfields = (uint32_t)schema->nfields;
    h->off_fields = off_fields;
    h->off_log = off_log;
    h->off_map = map_offset(off_log, st->opts.commit_log_capacity);
    h->total_bytes = total;
    atomic_init(&h->version, 1);
    atomic_init(&h->replay_seq, 0);
    commit_log_init(&h->log, st->opts.commit_log_capacity);
    state_bind(st, h);
    uint64_t map_next = 0;
    for (size_t i = 0; i < schema->nfields; i++) {
        const schema_field *sf = &schema->fields[i];
        field_desc *f = &st->fields[i];
        memcpy(f->name, sf->name, sizeof f->name);
        f->dtype = sf->dtype;
        f->ndim = (uint32_t)sf->ndim;
        memcpy(f->shape, sf->shape, sizeof f->shape);
        f->nelems = sf->nelems;
        f->nbytes = sf->nbytes;
        f->requested = sf->placement;
        f->zone = sf->zone;
        f->cons = sf->cons;
        atomic_init(&f->version, 1);
        block_map_geometry(f->nbytes, &f->map_shift, &f->map_blocks);
        f->map_first = map_next;
        map_next += f->map_blocks; /* the entries are zero (older than any base) */
    }
    if (mutex_init(&h->commit_lock, pshared) != 0)
        return err_set(NULL, THEUS_ENOMEM, "cannot initialise the state's locks");
    if (mutex_init(&h->hold_lock, pshared) != 0) {
        pthread_mutex_destroy(&h->commit_lock);
        return err_set(NULL, THEUS_ENOMEM, "cannot initialise the state's locks");
    }
    return THEUS_OK;
}

void state_header_fini(state_header *h)
{
    pthread_mutex_destroy(&h->hold_lock);
    pthread_mutex_destroy(&h->commit_lock);
}

static void free_fields(theus_state *st, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (st->data[i])
            st->backend[i]->iface->free(st->backend[i]->ctx, st->fields[i].placement, st->data[i]);
}

int state_place_field(const theus_state *st, field_desc *f, const theus_backend *gpu,
                      const theus_backend **out)
{
    if (f->requested == THEUS_PLACEMENT_HOST) {
        *out = backend_cpu();
        f->placement = THEUS_PLACEMENT_HOST;
        return THEUS_OK;
    }
    if (gpu) {
        *out = gpu;
        f->placement = f->requested;
        return THEUS_OK;
    }
    if (!st->opts.allow_fallback)
        return err_set(NULL, THEUS_ENODEV,
                       "field '%s' asks for %s memory, no GPU answers and fallback is off",
                       f->name, theus_placement_name((theus_placement)f->requested));
    *out = backend_cpu();
    f->placement = THEUS_PLACEMENT_HOST;
    return THEUS_OK;
}

int theus_state_create(const char *schema_json, const theus_state_options *opts,
                       theus_state **out)
{
    if (out)
        *out = NULL;
    if (!schema_json || !out)
        return err_set(NULL, THEUS_EINVAL, "theus_state_create: NULL schema or out");
    theus_state_options o;
    int rc = state_options_resolve(opts, &o);
    if (rc != THEUS_OK)
        return rc;

    char why[512];
    theus_schema *schema = NULL;
    rc = schema_parse(schema_json, &schema, why, sizeof why);
    if (rc != THEUS_OK)
        return err_set(NULL, rc, "%s", why);

    theus_state *st = state_shadow_new(schema, &o);
    if (!st) {
        schema_free(schema);
        return err_set(NULL, THEUS_ENOMEM, "out of memory creating the state");
    }
    size_t nf = schema->nfields, off_fields, off_log, total;
    state_layout(schema, o.commit_log_capacity, &off_fields, &off_log, &total);
    st->hdr = theus_xcalloc(1, total);
    if (!st->hdr) {
        rc = err_set(NULL, THEUS_ENOMEM, "out of memory creating the state");
        goto fail;
    }
    rc = state_header_init(st, total, 0);
    if (rc != THEUS_OK)
        goto fail;
    for (size_t i = 0; i < nf; i++) {
        field_desc *f = &st->fields[i];
        rc = state_place_field(st, f, backend_cuda(), &st->backend[i]);
        if (rc == THEUS_OK)
            rc = st->backend[i]->iface->alloc(st->backend[i]->ctx, f->placement, f->nbytes,
                                              &st->data[i]);
        if (rc != THEUS_OK) {
            if (rc == THEUS_ENOMEM)
                err_set(NULL, rc, "out of memory allocating field '%s' (%zu bytes)", f->name,
                        (size_t)f->nbytes);
            free_fields(st, i);
            state_header_fini(st->hdr);
            goto fail;
        }
    }
    *out = st;
    return THEUS_OK;

fail:
    theus_xfree(st->hdr);
    state_shadow_free(st);
    return rc;
}

int theus_state_create_from_file(const char *schema_path, const theus_state_options *opts,
                                 theus_state **out)
{
    if (out)
        *out = NULL;
    if (!schema_path || !out)
        return err_set(NULL, THEUS_EINVAL, "theus_state_create_from_file: NULL path or out");
    FILE *fp = fopen(schema_path, "rb");
    if (!fp)
        return err_set(NULL, errno == ENOENT ? THEUS_ENOENT : THEUS_EIO, "cannot open '%s': %s",
                       schema_path, strerror(errno));
    int rc = THEUS_OK;
    char *text = NULL;
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < 0) {
        rc = err_set(NULL, THEUS_EIO, "'%s' is not a readable regular file", schema_path);
        goto done;
    }
    size_t len = (size_t)sb.st_size;
    text = theus_xmalloc(len + 1);
    if (!text) {
        rc = err_set(NULL, THEUS_ENOMEM, "out of memory reading '%s'", schema_path);
        goto done;
    }
    if (fread(text, 1, len, fp) != len) {
        rc = err_set(NULL, THEUS_EIO, "cannot read '%s'", schema_path);
        goto done;
    }
    text[len] = '\0';
    rc = theus_state_create(text, opts, out);
done:
    theus_xfree(text);
    fclose(fp);
    return rc;
}

void state_ref(theus_state *st)
{
    atomic_fetch_add(&st->refs, 1);
}

void state_unref(theus_state *st)
{
    if (atomic_fetch_sub(&st->refs, 1) != 1)
        return;
    if (st->shm) {
        shared_detach(st);
        return;
    }
    free_fields(st, st->hdr->nfields);
    state_header_fini(st->hdr);
    theus_xfree(st->hdr);
    state_shadow_free(st);
}

void theus_state_destroy(theus_state *st)
{
    if (st)
        state_unref(st);
}

int theus_state_field_ptr(const theus_state *st, const char *field, const void **ptr,
                          theus_mem *mem)
{
    if (!st || !field || !ptr)
        return err_set(st, THEUS_EINVAL, "theus_state_field_ptr: NULL argument");
    int i = state_find_field(st, field);
    if (i < 0)
        return err_set(st, THEUS_ENOENT, "no field '%s'", field);
    *ptr = st->data[i];
    if (mem)
        *mem = st->fields[i].placement == THEUS_PLACEMENT_DEVICE ? THEUS_MEM_DEVICE
                                                                : THEUS_MEM_HOST;
    return THEUS_OK;
}

/* ---- futex words: wake-ups that work between processes and survive a waiter's death
 * (a process-shared condition variable does not: glibc's can hang its next signaller when
 * a waiter is killed). */

static void futex_wait(_Atomic uint32_t *word, uint32_t seen, int pshared, uint64_t timeout_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(timeout_ns / 1000000000ull),
                          .tv_nsec = (long)(timeout_ns % 1000000000ull)};
    syscall(SYS_futex, (uint32_t *)word, pshared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE, seen,
            timeout_ns ? &ts : NULL, NULL, 0);
}

void state_futex_wake(_Atomic uint32_t *word, int pshared)
{
    atomic_fetch_add_explicit(word, 1u, memory_order_release);
    syscall(SYS_futex, (uint32_t *)word, pshared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE, INT_MAX,
            NULL, NULL, 0);
}

/* The hold lock guards single counters (and a shared state's lease slots), each consistent
 * on its own: taking it over from a dead owner needs no repair. */
void state_hold_lock(state_header *h)
{
    if (pthread_mutex_lock(&h->hold_lock) == EOWNERDEAD)
        pthread_mutex_consistent(&h->hold_lock);
}

void state_hold_unlock(state_header *h)
{
    pthread_mutex_unlock(&h->hold_lock);
}

/* With the hold lock held: the calling handle's hold counter, and all live holds. */
static uint32_t *hold_counter(theus_state *st)
{
    return st->shm ? shared_hold_slot(st) : &st->hdr->holds;
}

static uint32_t holds_live(theus_state *st)
{
    return st->shm ? shared_holds(st) : st->hdr->holds;
}

/* Holds are a gate of their own rather than a lock's read side: a holder's reads must go
 * on while a commit waits for it. A replay in progress (odd sequence) holds the commit
 * lock, so a new hold waits for it there, which also recovers the replay of a dead process. */
int theus_state_hold_commits(theus_state *st)
{
    if (!st)
        return err_set(NULL, THEUS_EINVAL, "theus_state_hold_commits: NULL state");
    state_header *h = st->hdr;
    state_hold_lock(h);
    if (!(atomic_load_explicit(&h->replay_seq, memory_order_relaxed) & 1u)) {
        (*hold_counter(st))++;
        state_hold_unlock(h);
        return THEUS_OK;
    }
    state_hold_unlock(h);
    int rc = state_lock(st);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "theus_state_hold_commits");
    state_hold_lock(h);
    (*hold_counter(st))++;
    state_hold_unlock(h);
    state_unlock(st);
    return THEUS_OK;
}

void theus_state_release_commits(theus_state *st)
{
    if (!st)
        return;
    state_header *h = st->hdr;
    state_hold_lock(h);
    uint32_t *c = hold_counter(st);
    if (*c > 0 && (--*c, holds_live(st) == 0))
        state_futex_wake(&h->hold_wake, st->shm != NULL);
    state_hold_unlock(h);
}

/* How often a commit waiting for holds looks for holders that died (shared states). */
#define REAP_PERIOD_NS 20000000ull

void state_replay_gate_enter(theus_state *st)
{
    state_header *h = st->hdr;
    state_hold_lock(h);
    while (holds_live(st) > 0) {
        uint32_t seen = atomic_load_explicit(&h->hold_wake, memory_order_acquire);
        state_hold_unlock(h);
        futex_wait(&h->hold_wake, seen, st->shm != NULL, st->shm ? REAP_PERIOD_NS : 0);
        state_hold_lock(h);
        if (st->shm)
            shared_reap(st);
    }
    uint64_t s = atomic_load_explicit(&h->replay_seq, memory_order_relaxed);
    atomic_store_explicit(&h->replay_seq, s | 1u, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    state_hold_unlock(h);
}

void state_replay_gate_leave(theus_state *st)
{
    state_header *h = st->hdr;
    uint64_t s = atomic_load_explicit(&h->replay_seq, memory_order_relaxed);
    atomic_store_explicit(&h->replay_seq, (s | 1u) + 1u, memory_order_release);
}

int state_read_begin(const theus_state *st, uint64_t *seq)
{
    *seq = atomic_load_explicit(&st->hdr->replay_seq, memory_order_acquire);
    return !(*seq & 1u);
}

int state_read_valid(const theus_state *st, uint64_t seq)
{
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&st->hdr->replay_seq, memory_order_relaxed) == seq;
}

uint64_t theus_state_version(const theus_state *st)
{
    return st ? atomic_load_explicit(&st->hdr->version, memory_order_acquire) : 0;
}

const char *theus_state_name(const theus_state *st)
{
    return st ? st->schema->name : NULL;
}

size_t theus_state_field_count(const theus_state *st)
{
    return st ? st->hdr->nfields : 0;
}

const char *theus_state_field_name(const theus_state *st, size_t i)
{
    return st && i < st->hdr->nfields ? st->fields[i].name : NULL;
}

int theus_state_field_info(const theus_state *st, const char *field, theus_field_info *out)
{
    if (!st || !field || !out)
        return err_set(st, THEUS_EINVAL, "theus_state_field_info: NULL argument");
    int i = state_find_field(st, field);
    if (i < 0)
        return err_set(st, THEUS_ENOENT, "no field '%s'", field);
    const field_desc *f = &st->fields[i];
    memset(out, 0, sizeof *out);
    out->dtype = (theus_dtype)f->dtype;
    out->ndim = (int)f->ndim;
    memcpy(out->shape, f->shape, sizeof out->shape);
    out->nbytes = (size_t)f->nbytes;
    out->placement = (theus_placement)f->placement;
    out->requested = (theus_placement)f->requested;
    out->zone = (theus_zone)f->zone;
    out->version = atomic_load_explicit(&f->version, memory_order_acquire);
    out->has_min = f->cons.has_min;
    out->has_max = f->cons.has_max;
    out->finite = f->cons.finite;
    out->min = f->cons.min;
    out->max = f->cons.max;
    return THEUS_OK;
}

int theus_state_stats(const theus_state *st, theus_stats *out)
{
    if (!st || !out)
        return THEUS_EINVAL;
    const state_stats *s = &st->hdr->stats;
    out->commits = atomic_load(&s->commits);
    out->conflicts = atomic_load(&s->conflicts);
    out->aborts = atomic_load(&s->aborts);
    out->schema_refusals = atomic_load(&s->schema_refusals);
    out->retries = atomic_load(&s->retries);
    out->priority_runs = atomic_load(&s->priority_runs);
    return THEUS_OK;
}

/* ---- commit lock and priority lease ------------------------------------------------- */

int state_lock(theus_state *st)
{
    state_header *h = st->hdr;
    int e = pthread_mutex_lock(&h->commit_lock);
    if (e == EOWNERDEAD) {
        /* Its holder died. Whatever it was doing, redo_recover below finishes or drops it
         * (and runs again if this process dies too). */
        pthread_mutex_consistent(&h->commit_lock);
    } else if (e != 0) {
        return err_set(st, THEUS_EBUSY, "cannot take the commit lock: %s", strerror(e));
    }
    if (st->shm) {
        int rc = redo_recover(st);
        if (rc != THEUS_OK) {
            pthread_mutex_unlock(&h->commit_lock);
            return rc;
        }
    }
    return THEUS_OK;
}

void state_unlock(theus_state *st)
{
    pthread_mutex_unlock(&st->hdr->commit_lock);
}

/* With the commit lock held: wait while someone else holds a live lease; an expired
 * lease is dropped so that a stuck (or dead) priority holder cannot hang everyone. */
static int wait_out_lease(theus_state *st, uint64_t ticket)
{
    state_header *h = st->hdr;
    while (h->priority_ticket != 0 && h->priority_ticket != ticket) {
        uint64_t now = state_now_ns();
        if (now >= h->priority_deadline_ns) {
            h->priority_ticket = 0;
            state_futex_wake(&h->priority_wake, st->shm != NULL);
            break;
        }
        uint32_t seen = atomic_load_explicit(&h->priority_wake, memory_order_acquire);
        uint64_t left = h->priority_deadline_ns - now;
        state_unlock(st);
        futex_wait(&h->priority_wake, seen, st->shm != NULL, left);
        int rc = state_lock(st);
        if (rc != THEUS_OK)
            return rc;
    }
    return THEUS_OK;
}

int state_commit_lock(theus_state *st, uint64_t ticket)
{
    int rc = state_lock(st);
    if (rc == THEUS_OK)
        rc = wait_out_lease(st, ticket);
    return rc;
}

void state_commit_unlock(theus_state *st)
{
    state_unlock(st);
}

uint64_t state_priority_acquire(theus_state *st)
{
    state_header *h = st->hdr;
    if (state_lock(st) != THEUS_OK)
        return 0;
    if (wait_out_lease(st, 0) != THEUS_OK)
        return 0;
    uint64_t ticket = ++h->next_ticket;
    h->priority_ticket = ticket;
    h->priority_deadline_ns = state_now_ns() + (uint64_t)st->opts.priority_lease_ms * 1000000ull;
    state_unlock(st);
    return ticket;
}

void state_priority_release(theus_state *st, uint64_t ticket)
{
    state_header *h = st->hdr;
    if (state_lock(st) != THEUS_OK)
        return;
    if (h->priority_ticket == ticket) {
        h->priority_ticket = 0;
        state_futex_wake(&h->priority_wake, st->shm != NULL);
    }
    state_unlock(st);
}
