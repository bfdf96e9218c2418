/* Creating a shared state: where everything goes in the segment, building it under a
 * temporary name (header, shared area, GPU memory, the creator's lease) and linking it to
 * its real name in one step, so that no process ever opens a half-made state. */
#include "shared_impl.h"
#include "alloc.h"
#include "error.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIN_REDO ((uint64_t)16 << 20)
#define REDO_SLACK ((uint64_t)1 << 20)

/* Where everything goes in a new segment. */
typedef struct seg_layout {
    uint64_t off_shared, off_schema, schema_len, off_ipc, off_leases, off_redo, redo_bytes,
        off_data, data_bytes, gpu_end, total;
} seg_layout;

static void layout_segment(const theus_state *st, const uint32_t *place, size_t schema_len,
                           uint32_t max_leases, uint64_t redo_bytes, uint64_t *data_off,
                           seg_layout *L)
{
    size_t nf = st->schema->nfields, off_fields, off_log, hdr_bytes;
    state_layout(st->schema, st->opts.commit_log_capacity, &off_fields, &off_log, &hdr_bytes);
    L->off_shared = shared_align(hdr_bytes, 64);
    L->off_schema = shared_align(L->off_shared + sizeof(shared_area), 64);
    L->schema_len = schema_len;
    L->off_ipc = shared_align(L->off_schema + schema_len, 64);
    L->off_leases = shared_align(L->off_ipc + (uint64_t)nf * THEUS_IPC_HANDLE_BYTES, 64);
    L->off_redo = shared_align(L->off_leases + (uint64_t)max_leases * sizeof(lease_slot), PAGE);
    L->redo_bytes = redo_bytes;
    L->off_data = L->off_redo + redo_bytes;
    /* Pinned fields first, each on its own pages, so that [off_redo, gpu_end) is one range
     * to register; then host fields. Device fields take no room here. */
    uint64_t off = L->off_data;
    int gpu = 0;
    for (size_t i = 0; i < nf; i++) {
        data_off[i] = 0;
        gpu |= place[i] != THEUS_PLACEMENT_HOST;
        if (place[i] != THEUS_PLACEMENT_PINNED)
            continue;
        data_off[i] = off;
        off = shared_align(off + st->schema->fields[i].nbytes, PAGE);
    }
    L->gpu_end = gpu ? off : L->off_redo;
    for (size_t i = 0; i < nf; i++) {
        if (place[i] != THEUS_PLACEMENT_HOST)
            continue;
        off = shared_align(off, 64);
        data_off[i] = off;
        off += st->schema->fields[i].nbytes;
    }
    L->data_bytes = off - L->off_data;
    L->total = shared_align(off > L->off_data ? off : L->off_data + 1, PAGE);
}

/* The creator's GPU view of a new segment: the redo area and pinned fields registered,
 * device fields allocated here and exported. */
static int map_gpu_create(shared_map *m, const theus_state *st, const uint32_t *place,
                          const seg_layout *L, const char *name)
{
    unsigned char *base = m->s.base;
    const theus_backend *g = NULL;
    for (uint32_t i = 0; i < m->nfields; i++)
        if (place[i] != THEUS_PLACEMENT_HOST)
            g = st->backend[i];
    int rc = g->iface->host_register(g->ctx, base + L->off_redo, L->gpu_end - L->off_redo);
    if (rc != THEUS_OK)
        return err_wrap(NULL, rc, "shared state '%s': cannot register its memory with the GPU",
                        name);
    m->gpu = g;
    m->registered = base + L->off_redo;
    for (uint32_t i = 0; i < m->nfields; i++) {
        if (place[i] != THEUS_PLACEMENT_DEVICE)
            continue;
        const field_desc *f = &st->fields[i];
        m->owns_device = 1;
        rc = g->iface->alloc(g->ctx, THEUS_PLACEMENT_DEVICE, f->nbytes, &m->dev[i]);
        if (rc == THEUS_OK)
            rc = g->iface->ipc_export(g->ctx, m->dev[i],
                                      base + L->off_ipc + (size_t)i * THEUS_IPC_HANDLE_BYTES);
        if (rc != THEUS_OK)
            return err_wrap(NULL, rc, "shared state '%s': cannot allocate and export field '%s' "
                            "(%zu bytes of GPU memory)", name, f->name, (size_t)f->nbytes);
    }
    return THEUS_OK;
}

/* Give the new segment @tmp its name @segname; a state of that name whose processes all
 * died is removed first. */
static int publish_name(const char *tmp, const char *segname, const char *name)
{
    char from[SEG_MAX + 16], to[SEG_MAX + 16];
    snprintf(from, sizeof from, SHM_DIR "%s", tmp);
    snprintf(to, sizeof to, SHM_DIR "%s", segname);
    for (int tries = 0; tries < OPEN_TRIES; tries++) {
        if (link(from, to) == 0)
            return THEUS_OK;
        if (errno != EEXIST)
            return err_set(NULL, THEUS_EIO, "cannot name shared state '%s': %s", name,
                           strerror(errno));
        int removed = 0;
        uint32_t live = 0;
        int rc = shared_remove_if_abandoned(segname, name, &removed, &live);
        if (rc != THEUS_OK) {
            char why[256]; /* a copy: the message is rewritten from the same buffer */
            snprintf(why, sizeof why, "%s", theus_last_error_message());
            return err_set(NULL, THEUS_EBUSY, "a segment named '%s' exists and is not a usable "
                           "shared state (%s); theus_shared_remove removes it", name, why);
        }
        if (!removed)
            return err_set(NULL, THEUS_EBUSY, "shared state '%s' exists (%u live handle%s)", name,
                           live, live == 1 ? "" : "s");
    }
    return err_set(NULL, THEUS_EBUSY, "shared state '%s' keeps being created by others", name);
}

/* The creator's options, checked: the state's, and the lease slots and redo bytes asked for
 * (0: the default). */
static int create_options(const theus_state_options *opts, const theus_shared_options *sopts,
                          theus_state_options *o, uint32_t *max_leases, uint64_t *redo_bytes)
{
    int rc = state_options_resolve(opts, o);
    if (rc != THEUS_OK)
        return rc;
    theus_shared_options so = THEUS_SHARED_OPTIONS_INIT;
    if (sopts)
        so = *sopts;
    *max_leases = so.max_processes ? so.max_processes : DEFAULT_MAX_LEASES;
    if (*max_leases > MAX_LEASES)
        return err_set(NULL, THEUS_EINVAL, "max_processes %u exceeds %u", *max_leases, MAX_LEASES);
    *redo_bytes = so.redo_bytes;
    return THEUS_OK;
}

/* Placements: GPU fields need a backend that can share them across processes. Fills
 * place[] and st->backend[], and *field_bytes with the bytes of all fields. */
static int place_fields(theus_state *st, uint32_t *place, uint64_t *field_bytes)
{
    const theus_schema *schema = st->schema;
    const theus_backend *gpu = NULL;
    *field_bytes = 0;
    for (size_t i = 0; i < schema->nfields; i++) {
        *field_bytes += schema->fields[i].nbytes;
        if (schema->fields[i].placement != THEUS_PLACEMENT_HOST)
            gpu = backend_cuda();
    }
    for (size_t i = 0; i < schema->nfields; i++) {
        field_desc f;
        memset(&f, 0, sizeof f);
        memcpy(f.name, schema->fields[i].name, sizeof f.name);
        f.requested = schema->fields[i].placement;
        int rc = state_place_field(st, &f, f.requested == THEUS_PLACEMENT_DEVICE
                                               ? shared_gpu_for_device(gpu)
                                               : shared_gpu_for_pinned(gpu),
                                   &st->backend[i]);
        if (rc != THEUS_OK)
            return rc;
        place[i] = f.placement;
    }
    return THEUS_OK;
}

/* The redo area: as asked, or the fields' bytes plus slack, at least MIN_REDO. */
static uint64_t redo_size(uint64_t asked, uint64_t field_bytes)
{
    uint64_t redo = asked ? asked
                          : (field_bytes + REDO_SLACK > MIN_REDO ? field_bytes + REDO_SLACK
                                                                 : MIN_REDO);
    return shared_align(redo, PAGE);
}

/* A new zero-filled segment of @total bytes under the temporary name @tmp (made here; ""
 * when no name was created), mapped. */
static int seg_build(char *tmp, uint64_t self_start, uint64_t total, const char *name, seg *s)
{
    static _Atomic uint32_t counter;
    memset(s, 0, sizeof *s);
    snprintf(tmp, SEG_MAX, "/theus-%u.tmp-%d-%llu-%u", (unsigned)geteuid(), (int)getpid(),
             (unsigned long long)self_start, atomic_fetch_add(&counter, 1u));
    int fd = shm_open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        tmp[0] = '\0';
        return err_set(NULL, THEUS_EIO, "cannot create shared memory for '%s': %s", name,
                       strerror(errno));
    }
    struct stat sb;
    if (fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)total) != 0 || fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return err_set(NULL, e == ENOSPC || e == ENOMEM || e == EFBIG ? THEUS_ENOMEM : THEUS_EIO,
                       "cannot size shared memory for '%s' (%llu bytes): %s", name,
                       (unsigned long long)total, strerror(e));
    }
    void *p = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return err_set(NULL, THEUS_ENOMEM, "cannot map shared memory for '%s': %s", name,
                       strerror(errno));
    *s = (seg){.base = p, .size = (size_t)total, .dev = sb.st_dev, .ino = sb.st_ino};
    return THEUS_OK;
}

/* The shared area of a new segment (all but its checksum). */
static void area_fill(unsigned char *base, const seg_layout *L, const char *name,
                      const theus_state *st, const char *schema_json, uint32_t max_leases,
                      uint64_t self_start)
{
    shared_area *a = (shared_area *)(base + L->off_shared);
    a->magic = THEUS_SHARED_MAGIC;
    a->sizes[0] = sizeof(state_header);
    a->sizes[1] = sizeof(field_desc);
    a->sizes[2] = sizeof(log_entry);
    a->sizes[3] = sizeof(shared_area);
    snprintf(a->name, sizeof a->name, "%s", name);
    snprintf(a->schema_name, sizeof a->schema_name, "%s", st->schema->name);
    a->off_schema = L->off_schema;
    a->schema_len = L->schema_len;
    memcpy(base + L->off_schema, schema_json, L->schema_len);
    a->off_ipc = L->off_ipc;
    a->off_leases = L->off_leases;
    a->max_leases = max_leases;
    a->priority_lease_ms = st->opts.priority_lease_ms;
    a->off_redo = L->off_redo;
    a->redo_bytes = L->redo_bytes;
    a->off_data = L->off_data;
    a->data_bytes = L->data_bytes;
    a->gpu_end = L->gpu_end;
    a->creator_pid = (int32_t)getpid();
    a->creator_start = self_start;
    a->allow_fallback = (uint32_t)st->opts.allow_fallback;
}

/* Build the segment of the shadow @st (placements in @place, data offsets in @data_off)
 * under the temporary name @tmp, with this process's mapping in *out and the creator's
 * lease taken. */
static int build_state(theus_state *st, const char *name, const char *schema_json,
                       uint32_t max_leases, uint64_t redo, const uint32_t *place,
                       uint64_t *data_off, char *tmp, const char *segname, shared_map **out)
{
    const size_t nf = st->schema->nfields;
    seg_layout L;
    layout_segment(st, place, strlen(schema_json) + 1, max_leases, redo, data_off, &L);
    uint64_t self_start = shared_proc_start(getpid());
    seg s;
    int rc = seg_build(tmp, self_start, L.total, name, &s);
    if (rc != THEUS_OK)
        return rc;
    st->hdr = (state_header *)s.base; /* zero-filled by ftruncate */
    if ((rc = state_header_init(st, L.total, 1)) != THEUS_OK) {
        munmap(s.base, s.size);
        return rc;
    }
    st->hdr->off_shared = L.off_shared;
    shared_map *m = shared_map_new(&s, segname);
    if (!m) {
        munmap(s.base, s.size);
        return err_set(NULL, THEUS_ENOMEM, "out of memory creating shared state '%s'", name);
    }
    *out = m;
    st->shm = m;
    st->ops = &shared_state_ops;
    area_fill(s.base, &L, name, st, schema_json, max_leases,
              self_start);
    for (size_t i = 0; i < nf; i++) {
        st->fields[i].placement = place[i];
        st->fields[i].data_offset = data_off[i];
    }
    if (L.gpu_end > L.off_redo && (rc = map_gpu_create(m, st, place, &L, name)) != THEUS_OK)
        return rc;
    m->ready = 1;
    shared_bind_fields(st, m);
    shared_lease_take(st); /* slot 0 of an empty table */
    shared_area_of(st)->checksum = shared_layout_checksum(s.base);
    return THEUS_OK;
}

int theus_state_create_shared(const char *name, const char *schema_json,
                              const theus_state_options *opts, const theus_shared_options *sopts,
                              theus_state **out)
{
    return shared_create(name, schema_json, opts, sopts, NULL, NULL, out);
}

int shared_create(const char *name, const char *schema_json, const theus_state_options *opts,
                  const theus_shared_options *sopts, shared_init_fn init, void *user,
                  theus_state **out)
{
    if (out)
        *out = NULL;
    if (!schema_json || !out)
        return err_set(NULL, THEUS_EINVAL, "theus_state_create_shared: NULL schema or out");
    int rc = shared_check_name(name);
    if (rc != THEUS_OK)
        return rc;
    theus_state_options o;
    uint32_t max_leases = 0;
    uint64_t redo_asked = 0;
    if ((rc = create_options(opts, sopts, &o, &max_leases, &redo_asked)) != THEUS_OK)
        return rc;

    char why[512];
    theus_schema *schema = NULL;
    rc = schema_parse(schema_json, &schema, why, sizeof why);
    if (rc != THEUS_OK)
        return err_set(NULL, rc, "%s", why);
    theus_state *st = state_shadow_new(schema, &o);
    if (!st) {
        schema_free(schema);
        return err_set(NULL, THEUS_ENOMEM, "out of memory creating shared state '%s'", name);
    }
    const size_t nf = schema->nfields;
    uint32_t *place = theus_xcalloc(nf, sizeof *place);
    uint64_t *data_off = theus_xcalloc(nf, sizeof *data_off);
    shared_map *m = NULL;
    char tmp[SEG_MAX], segname[SEG_MAX];
    tmp[0] = '\0';
    shared_seg_name(segname, name);
    uint64_t field_bytes = 0;
    if (!place || !data_off) {
        rc = err_set(NULL, THEUS_ENOMEM, "out of memory creating shared state '%s'", name);
        goto fail;
    }
    if ((rc = place_fields(st, place, &field_bytes)) != THEUS_OK)
        goto fail;
    rc = build_state(st, name, schema_json, max_leases, redo_size(redo_asked, field_bytes), place,
                     data_off, tmp, segname, &m);
    if (rc != THEUS_OK)
        goto fail;
    if (init && (rc = init(st, user)) != THEUS_OK)
        goto fail;

    /* In this process's mappings before the name exists, so that an open of the name from
     * another thread finds this mapping (and this process's device memory). */
    shared_map_insert(m);
    rc = publish_name(tmp, segname, name);
    shm_unlink(tmp);
    tmp[0] = '\0';
    if (rc != THEUS_OK) {
        shared_map_remove(m);
        goto fail;
    }
    theus_xfree(data_off);
    theus_xfree(place);
    *out = st;
    return THEUS_OK;

fail:
    if (tmp[0])
        shm_unlink(tmp);
    if (m)
        shared_map_free(m); /* unmaps the segment, frees any device memory */
    st->shm = NULL;
    st->ops = NULL;
    theus_xfree(data_off);
    theus_xfree(place);
    state_shadow_free(st);
    return rc;
}
