/* State creation and destruction, shadow descriptors, field metadata, the commit lock with
 * its priority lease, and counters. */
#include "state.h"
#include "alloc.h"
#include "dtype.h"
#include "error.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

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

static int init_locks(state_header *h)
{
    pthread_condattr_t ca;
    pthread_rwlockattr_t ra;
    if (pthread_mutex_init(&h->commit_lock, NULL) != 0)
        return -1;
    if (pthread_condattr_init(&ca) != 0)
        goto fail_mutex;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&h->priority_cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0)
        goto fail_mutex;
    if (pthread_rwlockattr_init(&ra) != 0)
        goto fail_cond;
    /* Replays must not starve behind a stream of readers. */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    rc = pthread_rwlock_init(&h->replay_lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    if (rc != 0)
        goto fail_cond;
    if (pthread_mutex_init(&h->hold_lock, NULL) != 0)
        goto fail_rw;
    if (pthread_cond_init(&h->hold_cond, NULL) != 0)
        goto fail_hold;
    return 0;
fail_hold:
    pthread_mutex_destroy(&h->hold_lock);
fail_rw:
    pthread_rwlock_destroy(&h->replay_lock);
fail_cond:
    pthread_cond_destroy(&h->priority_cond);
fail_mutex:
    pthread_mutex_destroy(&h->commit_lock);
    return -1;
}

static void free_fields(theus_state *st, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (st->data[i])
            st->backend[i]->iface->free(st->backend[i]->ctx, st->fields[i].placement, st->data[i]);
}

/* Choose where field @f lives: a GPU placement goes to the CUDA backend when one
 * answers, otherwise to host memory (or THEUS_ENODEV without fallback). */
static int place_field(theus_state *st, field_desc *f, const theus_backend **out)
{
    if (f->requested == THEUS_PLACEMENT_HOST) {
        *out = backend_cpu();
        f->placement = THEUS_PLACEMENT_HOST;
        return THEUS_OK;
    }
    const theus_backend *gpu = backend_cuda();
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
    theus_state_options o = THEUS_STATE_OPTIONS_INIT;
    if (opts)
        o = *opts;
    if (o.allow_fallback != 0 && o.allow_fallback != 1)
        return err_set(NULL, THEUS_EINVAL, "allow_fallback must be 0 or 1");
    if (o.commit_log_capacity == 0)
        o.commit_log_capacity = DEFAULT_LOG_CAPACITY;
    if (o.commit_log_capacity > (1u << 24))
        return err_set(NULL, THEUS_EINVAL, "commit_log_capacity %u exceeds 2^24",
                       o.commit_log_capacity);
    if (o.priority_lease_ms == 0)
        o.priority_lease_ms = DEFAULT_LEASE_MS;

    char why[512];
    theus_schema *schema = NULL;
    int rc = schema_parse(schema_json, &schema, why, sizeof why);
    if (rc != THEUS_OK)
        return err_set(NULL, rc, "%s", why);

    theus_state *st = theus_xcalloc(1, sizeof *st);
    if (!st) {
        schema_free(schema);
        return err_set(NULL, THEUS_ENOMEM, "out of memory creating the state");
    }
    st->schema = schema;
    st->opts = o;
    size_t nf = schema->nfields;
    size_t off_fields = align_up(sizeof(state_header), 64);
    size_t off_log = align_up(off_fields + nf * sizeof(field_desc), 64);
    size_t total = off_log + (size_t)o.commit_log_capacity * sizeof(log_entry);
    st->hdr = theus_xcalloc(1, total);
    st->data = theus_xcalloc(nf, sizeof *st->data);
    st->backend = theus_xcalloc(nf, sizeof *st->backend);
    st->frames = theus_xcalloc(nf, sizeof *st->frames);
    if (!st->hdr || !st->data || !st->backend || !st->frames) {
        rc = err_set(NULL, THEUS_ENOMEM, "out of memory creating the state");
        goto fail;
    }
    state_header *h = st->hdr;
    h->magic = THEUS_STATE_MAGIC;
    h->layout_version = THEUS_LAYOUT_VERSION;
    h->nfields = (uint32_t)nf;
    h->off_fields = off_fields;
    h->off_log = off_log;
    h->total_bytes = total;
    atomic_init(&h->version, 1);
    commit_log_init(&h->log, o.commit_log_capacity);
    st->fields = (field_desc *)((char *)h + off_fields);
    st->log_ring = (log_entry *)((char *)h + off_log);
    if (init_locks(h) != 0) {
        rc = err_set(NULL, THEUS_ENOMEM, "cannot initialise the state's locks");
        goto fail;
    }
    for (size_t i = 0; i < nf; i++) {
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
        region_whole(sf->ndim, sf->shape, &st->frames[i]);
        rc = place_field(st, f, &st->backend[i]);
        if (rc == THEUS_OK)
            rc = st->backend[i]->iface->alloc(st->backend[i]->ctx, f->placement, f->nbytes,
                                              &st->data[i]);
        if (rc != THEUS_OK) {
            if (rc == THEUS_ENOMEM)
                err_set(NULL, rc, "out of memory allocating field '%s' (%zu bytes)", f->name,
                        (size_t)f->nbytes);
            free_fields(st, i);
            goto fail_locks;
        }
    }
    atomic_init(&st->refs, 1);
    *out = st;
    return THEUS_OK;

fail_locks:
    pthread_cond_destroy(&h->hold_cond);
    pthread_mutex_destroy(&h->hold_lock);
    pthread_rwlock_destroy(&h->replay_lock);
    pthread_cond_destroy(&h->priority_cond);
    pthread_mutex_destroy(&h->commit_lock);
fail:
    theus_xfree(st->frames);
    theus_xfree(st->backend);
    theus_xfree(st->data);
    theus_xfree(st->hdr);
    schema_free(st->schema);
    theus_xfree(st);
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
    free_fields(st, st->hdr->nfields);
    pthread_cond_destroy(&st->hdr->hold_cond);
    pthread_mutex_destroy(&st->hdr->hold_lock);
    pthread_rwlock_destroy(&st->hdr->replay_lock);
    pthread_cond_destroy(&st->hdr->priority_cond);
    pthread_mutex_destroy(&st->hdr->commit_lock);
    theus_xfree(st->frames);
    theus_xfree(st->backend);
    theus_xfree(st->data);
    theus_xfree(st->hdr);
    schema_free(st->schema);
    theus_xfree(st);
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

/* Holds are a gate of their own rather than the replay lock's read side: a writer-
 * preferring rwlock would deadlock a holder whose own reads queue behind a waiting replay. */
int theus_state_hold_commits(theus_state *st)
{
    if (!st)
        return err_set(NULL, THEUS_EINVAL, "theus_state_hold_commits: NULL state");
    state_header *h = st->hdr;
    pthread_mutex_lock(&h->hold_lock);
    while (h->replaying)
        pthread_cond_wait(&h->hold_cond, &h->hold_lock);
    h->holds++;
    pthread_mutex_unlock(&h->hold_lock);
    return THEUS_OK;
}

void theus_state_release_commits(theus_state *st)
{
    if (!st)
        return;
    state_header *h = st->hdr;
    pthread_mutex_lock(&h->hold_lock);
    if (h->holds > 0 && --h->holds == 0)
        pthread_cond_broadcast(&h->hold_cond);
    pthread_mutex_unlock(&h->hold_lock);
}

void state_replay_gate_enter(theus_state *st)
{
    state_header *h = st->hdr;
    pthread_mutex_lock(&h->hold_lock);
    while (h->holds > 0)
        pthread_cond_wait(&h->hold_cond, &h->hold_lock);
    h->replaying = 1;
    pthread_mutex_unlock(&h->hold_lock);
}

void state_replay_gate_leave(theus_state *st)
{
    state_header *h = st->hdr;
    pthread_mutex_lock(&h->hold_lock);
    h->replaying = 0;
    pthread_cond_broadcast(&h->hold_cond);
    pthread_mutex_unlock(&h->hold_lock);
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

int theus_state_init_field(theus_state *st, const char *field, const void *src, theus_mem src_mem)
{
    if (!st || !field || !src)
        return err_set(st, THEUS_EINVAL, "theus_state_init_field: NULL argument");
    int i = state_find_field(st, field);
    if (i < 0)
        return err_set(st, THEUS_ENOENT, "no field '%s'", field);
    field_desc *f = &st->fields[i];
    const theus_backend *b = st->backend[i];
    void *staged = NULL;
    int rc = b->iface->stage(b->ctx, (theus_placement)f->placement, src, src_mem, f->nbytes,
                             &staged);
    if (rc != THEUS_OK)
        return err_set(st, rc, "cannot stage the initial value of '%s'", field);
    size_t bad = SIZE_MAX;
    rc = backend_check(b, (theus_dtype)f->dtype, staged, f->nelems, &f->cons, &bad);
    if (rc == THEUS_OK && bad != SIZE_MAX) {
        double value = 0.0;
        backend_get(b, (theus_dtype)f->dtype, staged, f->nelems, bad, &value);
        rc = err_set(st, THEUS_ESCHEMA, "field '%s': element %zu = %g breaks its constraints",
                     field, bad, value);
    }
    if (rc != THEUS_OK) {
        b->iface->unstage(b->ctx, staged);
        return rc;
    }
    pthread_mutex_lock(&st->hdr->commit_lock);
    if (atomic_load(&st->hdr->version) != 1) {
        pthread_mutex_unlock(&st->hdr->commit_lock);
        b->iface->unstage(b->ctx, staged);
        return err_set(st, THEUS_EBUSY, "field '%s': initial values only before the first commit",
                       field);
    }
    replay_op op = {.op = DELTA_ASSIGN, .dtype = (theus_dtype)f->dtype, .base = st->data[i],
                    .frame = &st->frames[i], .sub = st->frames[i], .payload = staged};
    state_replay_gate_enter(st);
    pthread_rwlock_wrlock(&st->hdr->replay_lock);
    rc = b->iface->replay(b->ctx, &op, 1);
    pthread_rwlock_unlock(&st->hdr->replay_lock);
    state_replay_gate_leave(st);
    pthread_mutex_unlock(&st->hdr->commit_lock);
    b->iface->unstage(b->ctx, staged);
    if (rc != THEUS_OK)
        return err_set(st, rc, "field '%s': cannot write the initial value", field);
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

static struct timespec ns_to_ts(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                          .tv_nsec = (long)(ns % 1000000000ull)};
    return ts;
}

/* With the commit lock held: wait while someone else holds a live lease; an expired
 * lease is dropped so that a stuck priority holder cannot hang everyone. */
static void wait_out_lease(state_header *h, uint64_t ticket)
{
    while (h->priority_ticket != 0 && h->priority_ticket != ticket) {
        uint64_t now = state_now_ns();
        if (now >= h->priority_deadline_ns) {
            h->priority_ticket = 0;
            pthread_cond_broadcast(&h->priority_cond);
            break;
        }
        struct timespec ts = ns_to_ts(h->priority_deadline_ns);
        pthread_cond_timedwait(&h->priority_cond, &h->commit_lock, &ts);
    }
}

void state_commit_lock(theus_state *st, uint64_t ticket)
{
    pthread_mutex_lock(&st->hdr->commit_lock);
    wait_out_lease(st->hdr, ticket);
}

void state_commit_unlock(theus_state *st)
{
    pthread_mutex_unlock(&st->hdr->commit_lock);
}

uint64_t state_priority_acquire(theus_state *st)
{
    state_header *h = st->hdr;
    pthread_mutex_lock(&h->commit_lock);
    wait_out_lease(h, 0);
    uint64_t ticket = ++h->next_ticket;
    h->priority_ticket = ticket;
    h->priority_deadline_ns = state_now_ns() + (uint64_t)st->opts.priority_lease_ms * 1000000ull;
    pthread_mutex_unlock(&h->commit_lock);
    return ticket;
}

void state_priority_release(theus_state *st, uint64_t ticket)
{
    state_header *h = st->hdr;
    pthread_mutex_lock(&h->commit_lock);
    if (h->priority_ticket == ticket) {
        h->priority_ticket = 0;
        pthread_cond_broadcast(&h->priority_cond);
    }
    pthread_mutex_unlock(&h->commit_lock);
}
