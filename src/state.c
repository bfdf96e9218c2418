/* State creation and destruction: options, the header block's layout (field table, commit
 * log, block maps), shadow descriptors, field memory, field metadata and counters. The
 * commit lock is state_lock.c, holds and the replay sequence state_hold.c, the priority
 * lease priority.c. */
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

int state_maps_fit(const state_header *h, const field_desc *f, size_t size)
{
    if (h->off_map < h->off_log || h->off_map > size || h->off_map % 8)
        return 0;
    uint64_t room = (size - h->off_map) / sizeof(uint64_t), next = 0;
    for (uint32_t i = 0; i < h->nfields; i++) {
        uint32_t shift;
        uint64_t blocks;
        block_map_geometry(f[i].nbytes, &shift, &blocks);
        if (f[i].map_shift != shift || f[i].map_blocks != blocks || f[i].map_first != next ||
            blocks > room - next)
            return 0;
        next += blocks;
    }
    return 1;
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
    stream_fence_free(&st->fence);
    publish_list_release(&st->listeners);
    if (st->ops) {
        st->ops->detach(st);
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
    int rc = stream_fence_settle(st, &st->fence, "field_ptr");
    if (rc != THEUS_OK)
        return rc;
    *ptr = st->data[i];
    if (mem)
        *mem = st->fields[i].placement == THEUS_PLACEMENT_DEVICE ? THEUS_MEM_DEVICE
                                                                : THEUS_MEM_HOST;
    return THEUS_OK;
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
