/* Shared states: create, open and detach by name; list, info, remove and clean-up; the
 * checks a segment must pass before it is used; leases (pid plus start time); and this
 * process's mappings of segments and of GPU memory, made once per process. */
#include "shared.h"
#include "tx.h"
#include "alloc.h"
#include "error.h"
#include "theus/theus_shared.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Where POSIX shared memory lives on Linux (glibc's shm_open opens files there). */
#define SHM_DIR "/dev/shm"
#define SEG_MAX 128
#define PAGE 4096u
#define DEFAULT_MAX_LEASES 64u
#define MAX_LEASES 4096u
#define MIN_REDO ((uint64_t)16 << 20)
#define REDO_SLACK ((uint64_t)1 << 20)
/* An open that finds the name being removed under it tries again, this many times. */
#define OPEN_TRIES 16

uint64_t shared_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t align_to(uint64_t n, uint64_t a)
{
    return (n + a - 1) / a * a;
}

/* ---- names ------------------------------------------------------------------------ */

static int name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
}

static int check_name(const char *name)
{
    if (!name)
        return err_set(NULL, THEUS_EINVAL, "shared state: NULL name");
    size_t n = strlen(name);
    if (n == 0 || n > THEUS_SHARED_NAME_MAX)
        return err_set(NULL, THEUS_EINVAL, "shared name '%.80s' must have 1 to %d characters",
                       name, THEUS_SHARED_NAME_MAX);
    if (name[0] == '.' || name[0] == '-')
        return err_set(NULL, THEUS_EINVAL, "shared name '%s' must not start with '%c'", name,
                       name[0]);
    for (size_t i = 0; i < n; i++)
        if (!name_char_ok(name[i]))
            return err_set(NULL, THEUS_EINVAL,
                           "shared name '%s': character %zu is not one of A-Z a-z 0-9 . _ -",
                           name, i);
    return THEUS_OK;
}

/* "/theus-<uid>-<name>": names are per user. */
static void seg_name(char *buf, const char *name)
{
    snprintf(buf, SEG_MAX, "/theus-%u-%s", (unsigned)geteuid(), name);
}

/* ---- processes ---------------------------------------------------------------------- */

/* Start time of process @pid (field 22 of /proc/<pid>/stat) plus one, or 0 when it is gone
 * or a zombie: with the pid it names one process, even after the pid is reused. */
static uint64_t proc_start(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name (field 2) may hold spaces and ')' */
    if (!p)
        return 0;
    char *save = NULL, *tok = strtok_r(p + 1, " ", &save); /* field 3: the state */
    if (!tok || tok[0] == 'Z' || tok[0] == 'X' || tok[0] == 'x')
        return 0;
    for (int field = 4; field <= 22 && tok; field++)
        tok = strtok_r(NULL, " ", &save);
    return tok ? strtoull(tok, NULL, 10) + 1 : 0;
}

static int proc_alive(int32_t pid, uint64_t start)
{
    return pid > 0 && start != 0 && proc_start((pid_t)pid) == start;
}

/* ---- leases ------------------------------------------------------------------------- */

static lease_slot *leases_at(unsigned char *base)
{
    const state_header *h = (const state_header *)base;
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    return (lease_slot *)(base + a->off_leases);
}

/* With the hold lock held: free the slots of dead processes; returns the live slots and
 * adds the holds it dropped to *dropped. */
static uint32_t leases_reap(unsigned char *base, uint32_t *dropped)
{
    const state_header *h = (const state_header *)base;
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    lease_slot *l = leases_at(base);
    uint32_t live = 0;
    for (uint32_t i = 0; i < a->max_leases; i++) {
        if (!atomic_load_explicit(&l[i].used, memory_order_acquire))
            continue;
        if (proc_alive(l[i].pid, l[i].start)) {
            live++;
            continue;
        }
        *dropped += l[i].holds;
        l[i].holds = 0;
        atomic_store_explicit(&l[i].used, 0, memory_order_release);
    }
    return live;
}

uint32_t shared_reap(theus_state *st)
{
    uint32_t dropped = 0;
    uint32_t live = leases_reap((unsigned char *)st->hdr, &dropped);
    if (dropped)
        state_futex_wake(&st->hdr->hold_wake, 1);
    return live;
}

uint32_t *shared_hold_slot(theus_state *st)
{
    return &leases_at((unsigned char *)st->hdr)[st->lease].holds;
}

uint32_t shared_holds(const theus_state *st)
{
    const lease_slot *l = leases_at((unsigned char *)st->hdr);
    uint32_t n = 0;
    for (uint32_t i = 0; i < shared_area_of(st)->max_leases; i++)
        if (atomic_load_explicit(&l[i].used, memory_order_relaxed))
            n += l[i].holds;
    return n;
}

/* With the hold lock held (and dead slots reaped): take a slot for this handle. */
static int lease_take(theus_state *st)
{
    const shared_area *a = shared_area_of(st);
    lease_slot *l = leases_at((unsigned char *)st->hdr);
    for (uint32_t i = 0; i < a->max_leases; i++) {
        if (atomic_load_explicit(&l[i].used, memory_order_relaxed))
            continue;
        l[i].pid = (int32_t)getpid();
        l[i].start = proc_start(getpid());
        l[i].holds = 0;
        atomic_store_explicit(&l[i].used, 1, memory_order_release);
        st->lease = i;
        return THEUS_OK;
    }
    return err_set(NULL, THEUS_EBUSY, "shared state '%s': all %u lease slots are taken "
                   "(theus_shared_options.max_processes)", a->name, a->max_leases);
}

/* ---- segments: mapping and checks --------------------------------------------------- */

typedef struct seg {
    unsigned char *base;
    size_t size;
    dev_t dev;
    ino_t ino;
} seg;

static int range_ok(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

/* Over everything that never changes after creation. */
static uint64_t layout_checksum(const unsigned char *base)
{
    const state_header *h = (const state_header *)base;
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    const field_desc *f = (const field_desc *)(base + h->off_fields);
    uint64_t x = SHARED_HASH_INIT;
    x = shared_hash(x, &h->magic, sizeof h->magic);
    x = shared_hash(x, &h->layout_version, sizeof h->layout_version);
    x = shared_hash(x, &h->nfields, sizeof h->nfields);
    x = shared_hash(x, &h->off_fields, sizeof h->off_fields);
    x = shared_hash(x, &h->off_log, sizeof h->off_log);
    x = shared_hash(x, &h->off_shared, sizeof h->off_shared);
    x = shared_hash(x, &h->total_bytes, sizeof h->total_bytes);
    x = shared_hash(x, &h->log.capacity, sizeof h->log.capacity);
    for (uint32_t i = 0; i < h->nfields; i++) {
        x = shared_hash(x, &f[i], offsetof(field_desc, version));
        x = shared_hash(x, &f[i].data_offset, sizeof f[i].data_offset);
    }
    x = shared_hash(x, a, offsetof(shared_area, checksum));
    x = shared_hash(x, base + a->off_schema, a->schema_len);
    return shared_hash(x, base + a->off_ipc, (size_t)h->nfields * THEUS_IPC_HANDLE_BYTES);
}

/* Whether the mapped segment is a theus shared state of this layout, whole and intact. */
static int seg_check(const seg *s, const char *name)
{
    const unsigned char *base = s->base;
    const state_header *h = (const state_header *)base;
    if (h->magic != THEUS_STATE_MAGIC)
        return err_set(NULL, THEUS_ECORRUPT, "shared memory '%s' is not a theus shared state "
                       "(bad magic)", name);
    if (h->layout_version != THEUS_LAYOUT_VERSION)
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s' has layout version %u; this "
                       "library reads version %u", name, h->layout_version, THEUS_LAYOUT_VERSION);
    if (h->total_bytes != s->size || !h->off_shared ||
        !range_ok(h->off_shared, sizeof(shared_area), s->size))
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s': the header does not match the "
                       "segment's size (%zu bytes)", name, s->size);
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    if (a->magic != THEUS_SHARED_MAGIC || a->sizes[0] != sizeof(state_header) ||
        a->sizes[1] != sizeof(field_desc) || a->sizes[2] != sizeof(log_entry) ||
        a->sizes[3] != sizeof(shared_area))
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s' was laid out by a different "
                       "build of theus (or is corrupt)", name);
    uint64_t nf = h->nfields, cap = h->log.capacity;
    int ok = nf <= s->size / sizeof(field_desc) && range_ok(h->off_fields, nf * sizeof(field_desc), s->size) &&
             cap >= 1 && cap <= s->size / sizeof(log_entry) &&
             range_ok(h->off_log, cap * sizeof(log_entry), s->size) &&
             a->schema_len >= 1 && range_ok(a->off_schema, a->schema_len, s->size) &&
             range_ok(a->off_ipc, nf * THEUS_IPC_HANDLE_BYTES, s->size) &&
             a->max_leases >= 1 && a->max_leases <= MAX_LEASES &&
             range_ok(a->off_leases, (uint64_t)a->max_leases * sizeof(lease_slot), s->size) &&
             a->redo_bytes >= PAGE && range_ok(a->off_redo, a->redo_bytes, s->size) &&
             range_ok(a->off_data, a->data_bytes, s->size) && a->gpu_end >= a->off_redo &&
             a->gpu_end <= s->size;
    if (!ok)
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s': the header's offsets point "
                       "outside the segment", name);
    if (layout_checksum(base) != a->checksum)
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s' fails its checksum: the segment "
                       "is corrupt", name);
    const field_desc *f = (const field_desc *)(base + h->off_fields);
    for (uint64_t i = 0; i < nf; i++) {
        int fok = f[i].dtype < THEUS_DTYPE_COUNT && f[i].ndim <= THEUS_MAX_DIMS &&
                  f[i].placement <= THEUS_PLACEMENT_HOST &&
                  (f[i].placement == THEUS_PLACEMENT_DEVICE ||
                   (f[i].data_offset >= a->off_data &&
                    range_ok(f[i].data_offset - a->off_data, f[i].nbytes, a->data_bytes)));
        if (!fok)
            return err_set(NULL, THEUS_ECORRUPT, "shared state '%s': field %llu is malformed",
                           name, (unsigned long long)i);
    }
    if (((const char *)base)[a->off_schema + a->schema_len - 1] != '\0')
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s': the schema text is not "
                       "terminated", name);
    return THEUS_OK;
}

/* Open, check and map the segment @segname (of the shared name @name). */
static int seg_map(const char *segname, const char *name, int writable, seg *s)
{
    memset(s, 0, sizeof *s);
    int fd = shm_open(segname, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return err_set(NULL, THEUS_ENOENT, "no shared state '%s'", name);
        if (e == EACCES || e == EPERM)
            return err_set(NULL, THEUS_EPERM, "shared state '%s' is not accessible to this "
                           "process (%s): it belongs to another user", name, strerror(e));
        return err_set(NULL, THEUS_EIO, "cannot open shared state '%s': %s", name, strerror(e));
    }
    struct stat sb;
    int rc = THEUS_OK;
    if (fstat(fd, &sb) != 0) {
        rc = err_set(NULL, THEUS_EIO, "cannot stat shared state '%s': %s", name, strerror(errno));
    } else if (sb.st_uid != geteuid()) {
        rc = err_set(NULL, THEUS_EPERM, "shared state '%s' belongs to uid %u, not to this "
                     "process's uid %u", name, (unsigned)sb.st_uid, (unsigned)geteuid());
    } else if (!S_ISREG(sb.st_mode) || (sb.st_mode & 07777) != 0600) {
        rc = err_set(NULL, THEUS_EPERM, "shared state '%s' has mode %04o; theus uses only "
                     "segments of mode 0600", name, (unsigned)(sb.st_mode & 07777));
    } else if ((uint64_t)sb.st_size < sizeof(state_header) + sizeof(shared_area)) {
        rc = err_set(NULL, THEUS_ECORRUPT, "shared memory '%s' (%lld bytes) is too small to be "
                     "a theus shared state", name, (long long)sb.st_size);
    }
    if (rc == THEUS_OK) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ | (writable ? PROT_WRITE : 0),
                       MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
            rc = err_set(NULL, errno == ENOMEM ? THEUS_ENOMEM : THEUS_EIO,
                         "cannot map shared state '%s': %s", name, strerror(errno));
        else
            *s = (seg){.base = p, .size = (size_t)sb.st_size, .dev = sb.st_dev, .ino = sb.st_ino};
    }
    close(fd);
    if (rc == THEUS_OK && (rc = seg_check(s, name)) != THEUS_OK) {
        munmap(s->base, s->size);
        s->base = NULL;
    }
    return rc;
}

/* Remove the name @segname if it still names the segment @s (and not a newer state that
 * took the name since). */
static void unlink_if_same(const char *segname, const seg *s)
{
    int fd = shm_open(segname, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0)
        return;
    struct stat sb;
    if (fstat(fd, &sb) == 0 && sb.st_dev == s->dev && sb.st_ino == s->ino)
        shm_unlink(segname);
    close(fd);
}

/* With the hold lock held: mark the state unlinked and remove its name. */
static void seg_retire(const char *segname, const seg *s)
{
    const state_header *h = (const state_header *)s->base;
    shared_area *a = (shared_area *)(s->base + h->off_shared);
    atomic_store_explicit(&a->unlinked, 1, memory_order_release);
    unlink_if_same(segname, s);
}

/* If no live process holds the state @segname, remove its name: *removed = 1. Also when
 * the name is already gone, or was left by a process that died removing it. */
static int remove_if_abandoned(const char *segname, const char *name, int *removed,
                               uint32_t *live)
{
    seg s;
    *removed = 0;
    *live = 0;
    int rc = seg_map(segname, name, 1, &s);
    if (rc == THEUS_ENOENT) {
        *removed = 1;
        return THEUS_OK;
    }
    if (rc != THEUS_OK)
        return rc;
    state_header *h = (state_header *)s.base;
    const shared_area *a = (const shared_area *)(s.base + h->off_shared);
    uint32_t dropped = 0;
    state_hold_lock(h);
    if (!atomic_load_explicit(&a->unlinked, memory_order_acquire))
        *live = leases_reap(s.base, &dropped);
    if (*live == 0) {
        seg_retire(segname, &s);
        *removed = 1;
    }
    if (dropped)
        state_futex_wake(&h->hold_wake, 1);
    state_hold_unlock(h);
    munmap(s.base, s.size);
    return THEUS_OK;
}

/* ---- this process's mappings -------------------------------------------------------- *
 * One per segment and process, whatever the number of handles: GPU memory is opened (or,
 * by the creator, allocated) and shared memory host-registered once. A forked child sees
 * its parent's entries but not as its own (pid). */

typedef struct shared_map {
    struct shared_map *next;
    pid_t pid;
    seg s;
    char segname[SEG_MAX];
    int refs;                   /* handles of this process */
    uint32_t nfields;
    void **dev;                 /* per field: its device memory in this process, or NULL */
    int owns_device;            /* allocated here: lives until the last process leaves */
    const theus_backend *gpu;   /* the backend that holds dev[] and the registration */
    void *registered;           /* host-registered range, NULL: none */
    int ready;                  /* GPU set-up done */
} shared_map;

static pthread_mutex_t g_maps_mu = PTHREAD_MUTEX_INITIALIZER;
static shared_map *g_maps;

static void map_free(shared_map *m)
{
    if (m->gpu) {
        for (uint32_t i = 0; i < m->nfields; i++) {
            if (!m->dev[i])
                continue;
            if (m->owns_device)
                m->gpu->iface->free(m->gpu->ctx, THEUS_PLACEMENT_DEVICE, m->dev[i]);
            else
                m->gpu->iface->ipc_close(m->gpu->ctx, m->dev[i]);
        }
        if (m->registered)
            m->gpu->iface->host_unregister(m->gpu->ctx, m->registered);
    }
    if (m->s.base)
        munmap(m->s.base, m->s.size);
    theus_xfree(m->dev);
    theus_xfree(m);
}

static shared_map *map_new(const seg *s, const char *segname)
{
    const state_header *h = (const state_header *)s->base;
    shared_map *m = theus_xcalloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->dev = theus_xcalloc(h->nfields, sizeof *m->dev);
    if (!m->dev) {
        theus_xfree(m);
        return NULL;
    }
    m->pid = getpid();
    m->s = *s;
    m->nfields = h->nfields;
    m->refs = 1;
    snprintf(m->segname, sizeof m->segname, "%s", segname);
    return m;
}

/* With g_maps_mu held. */
static void map_insert(shared_map *m)
{
    m->next = g_maps;
    g_maps = m;
}

static void map_remove(shared_map *m)
{
    for (shared_map **p = &g_maps; *p; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            return;
        }
}

/* A backend that can share device memory, or NULL. */
static const theus_backend *gpu_for_device(const theus_backend *gpu)
{
    if (!gpu)
        return NULL;
    const theus_backend_iface *i = gpu->iface;
    return i->ipc_export && i->ipc_open && i->ipc_close && i->host_register && i->host_unregister
               ? gpu : NULL;
}

static const theus_backend *gpu_for_pinned(const theus_backend *gpu)
{
    return gpu && gpu->iface->host_register && gpu->iface->host_unregister ? gpu : NULL;
}

/* With g_maps_mu held: this process's GPU view of the segment — register the redo area
 * and pinned fields, open the device fields' memory. Only when the state has GPU fields,
 * so that processes of host-only states never start CUDA. */
static int map_gpu_setup(shared_map *m)
{
    unsigned char *base = m->s.base;
    const state_header *h = (const state_header *)base;
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    const field_desc *f = (const field_desc *)(base + h->off_fields);
    int ndev = 0, npin = 0;
    for (uint32_t i = 0; i < h->nfields; i++) {
        ndev += f[i].placement == THEUS_PLACEMENT_DEVICE;
        npin += f[i].placement == THEUS_PLACEMENT_PINNED;
    }
    if (ndev == 0 && npin == 0) {
        m->ready = 1;
        return THEUS_OK;
    }
    const theus_backend *gpu = backend_cuda();
    if (ndev) {
        gpu = gpu_for_device(gpu);
        for (uint32_t i = 0; !gpu && i < h->nfields; i++)
            if (f[i].placement == THEUS_PLACEMENT_DEVICE)
                return err_set(NULL, THEUS_ENODEV, "field '%s' of shared state '%s' lives in GPU "
                               "memory, and this process has no GPU with CUDA IPC", f[i].name,
                               a->name);
        if (!proc_alive(a->creator_pid, a->creator_start))
            return err_set(NULL, THEUS_EDEVICE, "the device fields of shared state '%s' lived in "
                           "the GPU memory of its creator (pid %d), which has exited", a->name,
                           (int)a->creator_pid);
    } else {
        gpu = gpu_for_pinned(gpu);
    }
    if (!gpu) {
        m->ready = 1; /* pinned fields are host memory to a process without a GPU */
        return THEUS_OK;
    }
    int rc = gpu->iface->host_register(gpu->ctx, base + a->off_redo, a->gpu_end - a->off_redo);
    if (rc != THEUS_OK)
        return err_wrap(NULL, rc, "shared state '%s': cannot register its memory with the GPU",
                        a->name);
    m->gpu = gpu;
    m->registered = base + a->off_redo;
    for (uint32_t i = 0; i < h->nfields; i++) {
        if (f[i].placement != THEUS_PLACEMENT_DEVICE)
            continue;
        rc = gpu->iface->ipc_open(gpu->ctx, base + a->off_ipc + (size_t)i * THEUS_IPC_HANDLE_BYTES,
                                  &m->dev[i]);
        if (rc != THEUS_OK) {
            for (uint32_t j = 0; j < i; j++)
                if (m->dev[j]) {
                    gpu->iface->ipc_close(gpu->ctx, m->dev[j]);
                    m->dev[j] = NULL;
                }
            gpu->iface->host_unregister(gpu->ctx, m->registered);
            m->registered = NULL;
            m->gpu = NULL;
            return err_wrap(NULL, rc, "shared state '%s': cannot open the GPU memory of field '%s'",
                            a->name, f[i].name);
        }
    }
    m->ready = 1;
    return THEUS_OK;
}

/* This process's mapping of the segment @segname, made on first use. */
static int map_open(const char *segname, const char *name, shared_map **out)
{
    seg s;
    int rc = seg_map(segname, name, 1, &s);
    if (rc != THEUS_OK)
        return rc;
    pthread_mutex_lock(&g_maps_mu);
    shared_map *m = g_maps;
    while (m && !(m->pid == getpid() && m->s.dev == s.dev && m->s.ino == s.ino))
        m = m->next;
    if (m) {
        m->refs++;
        munmap(s.base, s.size);
    } else if ((m = map_new(&s, segname)) != NULL) {
        map_insert(m);
    } else {
        munmap(s.base, s.size);
        pthread_mutex_unlock(&g_maps_mu);
        return err_set(NULL, THEUS_ENOMEM, "out of memory opening shared state '%s'", name);
    }
    rc = m->ready ? THEUS_OK : map_gpu_setup(m);
    pthread_mutex_unlock(&g_maps_mu);
    if (rc != THEUS_OK) {
        /* Not the last out: nothing of another process's is freed. */
        pthread_mutex_lock(&g_maps_mu);
        int last = --m->refs == 0 && !m->owns_device;
        if (last)
            map_remove(m);
        pthread_mutex_unlock(&g_maps_mu);
        if (last)
            map_free(m);
        return rc;
    }
    *out = m;
    return THEUS_OK;
}

/* Drop a handle's reference. The creator keeps its device memory while other processes
 * may use it (@last_out 0), until it is the last to leave or exits. */
static void map_release(shared_map *m, int last_out)
{
    pthread_mutex_lock(&g_maps_mu);
    int drop = --m->refs == 0 && (!m->owns_device || last_out);
    if (drop)
        map_remove(m);
    pthread_mutex_unlock(&g_maps_mu);
    if (drop)
        map_free(m);
}

/* ---- handles -------------------------------------------------------------------------- */

static void bind_fields(theus_state *st, const shared_map *m)
{
    for (uint32_t i = 0; i < st->hdr->nfields; i++) {
        const field_desc *f = &st->fields[i];
        if (f->placement == THEUS_PLACEMENT_DEVICE) {
            st->data[i] = m->dev[i];
            st->backend[i] = m->gpu;
        } else {
            st->data[i] = m->s.base + f->data_offset;
            st->backend[i] = f->placement == THEUS_PLACEMENT_PINNED && m->gpu ? m->gpu
                                                                               : backend_cpu();
        }
    }
}

static int cons_same(const theus_constraints *a, const theus_constraints *b)
{
    return a->has_min == b->has_min && a->has_max == b->has_max && a->finite == b->finite &&
           (!a->has_min || a->min == b->min) && (!a->has_max || a->max == b->max);
}

/* Whether schema field @a and field @b agree; otherwise *why says how. */
static int field_same(const schema_field *a, const schema_field *b, char *why, size_t len)
{
    const char *what = strcmp(a->name, b->name) ? "name"
                       : a->dtype != b->dtype ? "dtype"
                       : a->ndim != b->ndim || memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape)
                           ? "shape"
                       : a->placement != b->placement ? "placement"
                       : a->zone != b->zone ? "zone"
                       : !cons_same(&a->cons, &b->cons) ? "constraints" : NULL;
    if (what)
        snprintf(why, len, "field '%s' differs in its %s", b->name, what);
    return what == NULL;
}

static int schema_same(const theus_schema *have, const theus_schema *want, char *why, size_t len)
{
    if (strcmp(have->name, want->name) != 0) {
        snprintf(why, len, "its schema is named '%s', not '%s'", have->name, want->name);
        return 0;
    }
    if (have->nfields != want->nfields) {
        snprintf(why, len, "it has %zu fields, not %zu", have->nfields, want->nfields);
        return 0;
    }
    for (size_t i = 0; i < have->nfields; i++)
        if (!field_same(&have->fields[i], &want->fields[i], why, len))
            return 0;
    return 1;
}

/* Whether the field table says what the stored schema says. */
static int table_matches(const theus_schema *s, const field_desc *f, size_t nf)
{
    if (s->nfields != nf)
        return 0;
    for (size_t i = 0; i < nf; i++) {
        const schema_field *sf = &s->fields[i];
        if (strcmp(sf->name, f[i].name) != 0 || (uint32_t)sf->dtype != f[i].dtype ||
            (uint32_t)sf->ndim != f[i].ndim ||
            memcmp(sf->shape, f[i].shape, sizeof f[i].shape) != 0 ||
            (uint32_t)sf->placement != f[i].requested || (uint32_t)sf->zone != f[i].zone ||
            sf->nbytes != f[i].nbytes || !cons_same(&sf->cons, &f[i].cons))
            return 0;
    }
    return 1;
}

/* A handle on the mapping @m: its own schema and shadow, checked against @want. */
static int handle_new(shared_map *m, const char *name, const theus_schema *want,
                      theus_state **out)
{
    unsigned char *base = m->s.base;
    state_header *h = (state_header *)base;
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    char why[512];
    theus_schema *schema = NULL;
    int rc = schema_parse((const char *)base + a->off_schema, &schema, why, sizeof why);
    if (rc == THEUS_ENOMEM)
        return err_set(NULL, rc, "out of memory reading the schema of shared state '%s'", name);
    if (rc != THEUS_OK)
        return err_set(NULL, THEUS_ECORRUPT, "the schema stored in shared state '%s' is "
                       "invalid: %s", name, why);
    if (!table_matches(schema, (const field_desc *)(base + h->off_fields), h->nfields)) {
        schema_free(schema);
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s': its field table does not match "
                       "its schema", name);
    }
    if (want && !schema_same(schema, want, why, sizeof why)) {
        schema_free(schema);
        return err_set(NULL, THEUS_ESCHEMA, "the schema differs from shared state '%s': %s",
                       name, why);
    }
    theus_state_options o = {.allow_fallback = (int)a->allow_fallback,
                             .commit_log_capacity = h->log.capacity,
                             .priority_lease_ms = a->priority_lease_ms};
    theus_state *st = state_shadow_new(schema, &o);
    if (!st) {
        schema_free(schema);
        return err_set(NULL, THEUS_ENOMEM, "out of memory opening shared state '%s'", name);
    }
    state_bind(st, h);
    st->shm = m;
    bind_fields(st, m);
    *out = st;
    return THEUS_OK;
}

int theus_state_open_shared(const char *name, const char *schema_json, theus_state **out)
{
    if (out)
        *out = NULL;
    if (!out)
        return err_set(NULL, THEUS_EINVAL, "theus_state_open_shared: NULL out");
    int rc = check_name(name);
    if (rc != THEUS_OK)
        return rc;
    theus_schema *want = NULL;
    if (schema_json) {
        char why[512];
        rc = schema_parse(schema_json, &want, why, sizeof why);
        if (rc != THEUS_OK)
            return err_set(NULL, rc, "%s", why);
    }
    char segname[SEG_MAX];
    seg_name(segname, name);
    for (int attempt = 0;; attempt++) {
        shared_map *m = NULL;
        theus_state *st = NULL;
        rc = map_open(segname, name, &m);
        if (rc != THEUS_OK)
            break;
        rc = handle_new(m, name, want, &st);
        if (rc != THEUS_OK) {
            map_release(m, 0);
            break;
        }
        shared_area *a = shared_area_of(st);
        int retry = 0, abandoned = 0;
        state_hold_lock(st->hdr);
        if (atomic_load_explicit(&a->unlinked, memory_order_acquire)) {
            /* Its last user removed the name just now (or died doing so). */
            unlink_if_same(segname, &m->s);
            retry = 1;
        } else if (shared_reap(st) == 0) {
            seg_retire(segname, &m->s);
            abandoned = 1;
            rc = err_set(NULL, THEUS_ENOENT, "shared state '%s' was abandoned (all its processes "
                         "died); it has been removed", name);
        } else {
            rc = lease_take(st);
        }
        state_hold_unlock(st->hdr);
        if (rc == THEUS_OK && !retry) {
            schema_free(want);
            *out = st;
            return THEUS_OK;
        }
        st->shm = NULL;
        state_shadow_free(st);
        map_release(m, abandoned);
        if (!retry)
            break;
        if (attempt + 1 >= OPEN_TRIES) {
            rc = err_set(NULL, THEUS_ENOENT, "no shared state '%s' (it is being removed)", name);
            break;
        }
    }
    schema_free(want);
    return rc;
}

void shared_detach(theus_state *st)
{
    shared_map *m = st->shm;
    state_header *h = st->hdr;
    const shared_area *a = shared_area_of(st);
    lease_slot *l = &leases_at((unsigned char *)h)[st->lease];
    state_hold_lock(h);
    uint32_t held = l->holds;
    l->holds = 0;
    atomic_store_explicit(&l->used, 0, memory_order_release);
    if (held)
        state_futex_wake(&h->hold_wake, 1);
    uint32_t live = shared_reap(st);
    if (live == 0 && !atomic_load_explicit(&a->unlinked, memory_order_acquire))
        seg_retire(m->segname, &m->s);
    state_hold_unlock(h);
    state_shadow_free(st);
    map_release(m, live == 0);
}

const char *theus_state_shared_name(const theus_state *st)
{
    return st && st->shm ? shared_area_of(st)->name : NULL;
}

/* ---- creation ------------------------------------------------------------------------ */

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
    L->off_shared = align_to(hdr_bytes, 64);
    L->off_schema = align_to(L->off_shared + sizeof(shared_area), 64);
    L->schema_len = schema_len;
    L->off_ipc = align_to(L->off_schema + schema_len, 64);
    L->off_leases = align_to(L->off_ipc + (uint64_t)nf * THEUS_IPC_HANDLE_BYTES, 64);
    L->off_redo = align_to(L->off_leases + (uint64_t)max_leases * sizeof(lease_slot), PAGE);
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
        off = align_to(off + st->schema->fields[i].nbytes, PAGE);
    }
    L->gpu_end = gpu ? off : L->off_redo;
    for (size_t i = 0; i < nf; i++) {
        if (place[i] != THEUS_PLACEMENT_HOST)
            continue;
        off = align_to(off, 64);
        data_off[i] = off;
        off += st->schema->fields[i].nbytes;
    }
    L->data_bytes = off - L->off_data;
    L->total = align_to(off > L->off_data ? off : L->off_data + 1, PAGE);
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
        int rc = remove_if_abandoned(segname, name, &removed, &live);
        if (rc != THEUS_OK)
            return err_set(NULL, THEUS_EBUSY, "a segment named '%s' exists and is not a usable "
                           "shared state (%s); theus_shared_remove removes it", name,
                           theus_last_error_message());
        if (!removed)
            return err_set(NULL, THEUS_EBUSY, "shared state '%s' exists (%u live handle%s)", name,
                           live, live == 1 ? "" : "s");
    }
    return err_set(NULL, THEUS_EBUSY, "shared state '%s' keeps being created by others", name);
}

int theus_state_create_shared(const char *name, const char *schema_json,
                              const theus_state_options *opts, const theus_shared_options *sopts,
                              theus_state **out)
{
    if (out)
        *out = NULL;
    if (!schema_json || !out)
        return err_set(NULL, THEUS_EINVAL, "theus_state_create_shared: NULL schema or out");
    int rc = check_name(name);
    if (rc != THEUS_OK)
        return rc;
    theus_state_options o;
    if ((rc = state_options_resolve(opts, &o)) != THEUS_OK)
        return rc;
    theus_shared_options so = THEUS_SHARED_OPTIONS_INIT;
    if (sopts)
        so = *sopts;
    uint32_t max_leases = so.max_processes ? so.max_processes : DEFAULT_MAX_LEASES;
    if (max_leases > MAX_LEASES)
        return err_set(NULL, THEUS_EINVAL, "max_processes %u exceeds %u", max_leases, MAX_LEASES);

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
    seg_name(segname, name);
    if (!place || !data_off) {
        rc = err_set(NULL, THEUS_ENOMEM, "out of memory creating shared state '%s'", name);
        goto fail;
    }

    /* Placements: GPU fields need a backend that can share them across processes. */
    const theus_backend *gpu = NULL;
    uint64_t field_bytes = 0;
    for (size_t i = 0; i < nf; i++) {
        field_bytes += schema->fields[i].nbytes;
        if (schema->fields[i].placement != THEUS_PLACEMENT_HOST)
            gpu = backend_cuda();
    }
    for (size_t i = 0; i < nf; i++) {
        field_desc f;
        memset(&f, 0, sizeof f);
        memcpy(f.name, schema->fields[i].name, sizeof f.name);
        f.requested = schema->fields[i].placement;
        rc = state_place_field(st, &f, f.requested == THEUS_PLACEMENT_DEVICE ? gpu_for_device(gpu)
                                                                             : gpu_for_pinned(gpu),
                               &st->backend[i]);
        if (rc != THEUS_OK)
            goto fail;
        place[i] = f.placement;
    }
    uint64_t redo = so.redo_bytes ? so.redo_bytes
                                  : (field_bytes + REDO_SLACK > MIN_REDO ? field_bytes + REDO_SLACK
                                                                         : MIN_REDO);
    redo = align_to(redo, PAGE);
    const size_t schema_len = strlen(schema_json) + 1;
    seg_layout L;
    layout_segment(st, place, schema_len, max_leases, redo, data_off, &L);

    /* The segment is built under a temporary name and linked to its real one when whole,
     * so that no process ever opens a half-made state. */
    static _Atomic uint32_t counter;
    uint64_t self_start = proc_start(getpid());
    snprintf(tmp, sizeof tmp, "/theus-%u.tmp-%d-%llu-%u", (unsigned)geteuid(), (int)getpid(),
             (unsigned long long)self_start, atomic_fetch_add(&counter, 1u));
    int fd = shm_open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        rc = err_set(NULL, THEUS_EIO, "cannot create shared memory for '%s': %s", name,
                     strerror(errno));
        tmp[0] = '\0';
        goto fail;
    }
    struct stat sb;
    seg s = {0};
    if (fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)L.total) != 0 || fstat(fd, &sb) != 0) {
        int e = errno;
        rc = err_set(NULL, e == ENOSPC || e == ENOMEM || e == EFBIG ? THEUS_ENOMEM : THEUS_EIO,
                     "cannot size shared memory for '%s' (%llu bytes): %s", name,
                     (unsigned long long)L.total, strerror(e));
        close(fd);
        goto fail;
    }
    void *p = mmap(NULL, (size_t)L.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        rc = err_set(NULL, THEUS_ENOMEM, "cannot map shared memory for '%s': %s", name,
                     strerror(errno));
        goto fail;
    }
    s = (seg){.base = p, .size = (size_t)L.total, .dev = sb.st_dev, .ino = sb.st_ino};
    st->hdr = p; /* zero-filled by ftruncate */
    if ((rc = state_header_init(st, L.total, 1)) != THEUS_OK) {
        munmap(p, L.total);
        goto fail;
    }
    state_header *h = st->hdr;
    h->off_shared = L.off_shared;
    shared_area *a = (shared_area *)((char *)p + L.off_shared);
    m = map_new(&s, segname);
    if (!m) {
        munmap(p, L.total);
        rc = err_set(NULL, THEUS_ENOMEM, "out of memory creating shared state '%s'", name);
        goto fail;
    }
    st->shm = m;
    a->magic = THEUS_SHARED_MAGIC;
    a->sizes[0] = sizeof(state_header);
    a->sizes[1] = sizeof(field_desc);
    a->sizes[2] = sizeof(log_entry);
    a->sizes[3] = sizeof(shared_area);
    snprintf(a->name, sizeof a->name, "%s", name);
    snprintf(a->schema_name, sizeof a->schema_name, "%s", schema->name);
    a->off_schema = L.off_schema;
    a->schema_len = L.schema_len;
    memcpy((char *)p + L.off_schema, schema_json, schema_len);
    a->off_ipc = L.off_ipc;
    a->off_leases = L.off_leases;
    a->max_leases = max_leases;
    a->priority_lease_ms = o.priority_lease_ms;
    a->off_redo = L.off_redo;
    a->redo_bytes = L.redo_bytes;
    a->off_data = L.off_data;
    a->data_bytes = L.data_bytes;
    a->gpu_end = L.gpu_end;
    a->creator_pid = (int32_t)getpid();
    a->creator_start = self_start;
    a->allow_fallback = (uint32_t)o.allow_fallback;
    for (size_t i = 0; i < nf; i++) {
        st->fields[i].placement = place[i];
        st->fields[i].data_offset = data_off[i];
    }

    if (L.gpu_end > L.off_redo && (rc = map_gpu_create(m, st, place, &L, name)) != THEUS_OK)
        goto fail;
    m->ready = 1;
    bind_fields(st, m);
    lease_take(st); /* slot 0 of an empty table */
    a->checksum = layout_checksum(p);

    /* In this process's mappings before the name exists, so that an open of the name from
     * another thread finds this mapping (and this process's device memory). */
    pthread_mutex_lock(&g_maps_mu);
    map_insert(m);
    pthread_mutex_unlock(&g_maps_mu);
    rc = publish_name(tmp, segname, name);
    shm_unlink(tmp);
    tmp[0] = '\0';
    if (rc != THEUS_OK) {
        pthread_mutex_lock(&g_maps_mu);
        map_remove(m);
        pthread_mutex_unlock(&g_maps_mu);
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
        map_free(m); /* unmaps the segment, frees any device memory */
    st->shm = NULL;
    theus_xfree(data_off);
    theus_xfree(place);
    state_shadow_free(st);
    return rc;
}

/* ---- list, info, remove, clean-up ------------------------------------------------------ */

static int info_of(const char *name, theus_shared_summary *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", name);
    char segname[SEG_MAX];
    seg_name(segname, name);
    seg s;
    int rc = seg_map(segname, name, 0, &s);
    out->status = rc;
    if (rc != THEUS_OK)
        return rc;
    const state_header *h = (const state_header *)s.base;
    const shared_area *a = (const shared_area *)(s.base + h->off_shared);
    const lease_slot *l = (const lease_slot *)(s.base + a->off_leases);
    snprintf(out->schema_name, sizeof out->schema_name, "%s", a->schema_name);
    out->version = atomic_load_explicit(&h->version, memory_order_acquire);
    out->nfields = h->nfields;
    out->max_processes = a->max_leases;
    for (uint32_t i = 0; i < a->max_leases; i++)
        if (atomic_load_explicit(&l[i].used, memory_order_acquire) &&
            proc_alive(l[i].pid, l[i].start))
            out->processes++;
    out->creator_pid = a->creator_pid;
    out->segment_bytes = s.size;
    out->redo_bytes = a->redo_bytes;
    out->abandoned = out->processes == 0;
    out->recovered = atomic_load_explicit(&a->recovered, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&a->dropped, memory_order_relaxed);
    munmap(s.base, s.size);
    return THEUS_OK;
}

int theus_shared_info(const char *name, theus_shared_summary *out)
{
    if (!out)
        return err_set(NULL, THEUS_EINVAL, "theus_shared_info: NULL out");
    int rc = check_name(name);
    if (rc != THEUS_OK)
        return rc;
    return info_of(name, out);
}

/* The shared name in a /dev/shm entry of this user's states, or NULL. */
static const char *entry_name(const char *entry, const char *prefix, size_t plen)
{
    if (strncmp(entry, prefix, plen) != 0)
        return NULL;
    const char *name = entry + plen;
    return check_name(name) == THEUS_OK ? name : NULL;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int theus_shared_list(theus_shared_summary *out, size_t cap, size_t *count)
{
    if (!count || (!out && cap))
        return err_set(NULL, THEUS_EINVAL, "theus_shared_list: NULL count, or NULL out with cap %zu",
                       cap);
    *count = 0;
    DIR *d = opendir(SHM_DIR);
    if (!d)
        return err_set(NULL, THEUS_EIO, "cannot read " SHM_DIR ": %s", strerror(errno));
    char prefix[32];
    int plen = snprintf(prefix, sizeof prefix, "theus-%u-", (unsigned)geteuid());
    char **names = NULL;
    size_t n = 0, ncap = 0;
    int rc = THEUS_OK;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = entry_name(e->d_name, prefix, (size_t)plen);
        if (!name)
            continue;
        char *copy = NULL;
        if (tx_grow((void **)&names, &ncap, n + 1, sizeof *names) != 0 ||
            !(copy = theus_xstrdup(name))) {
            rc = err_set(NULL, THEUS_ENOMEM, "theus_shared_list: out of memory");
            break;
        }
        names[n++] = copy;
    }
    closedir(d);
    if (rc == THEUS_OK) {
        if (n)
            qsort(names, n, sizeof *names, cmp_names);
        for (size_t i = 0; i < n && i < cap; i++)
            info_of(names[i], &out[i]);
        *count = n;
    }
    for (size_t i = 0; i < n; i++)
        theus_xfree(names[i]);
    theus_xfree(names);
    return rc;
}

int theus_shared_remove(const char *name)
{
    int rc = check_name(name);
    if (rc != THEUS_OK)
        return rc;
    char segname[SEG_MAX];
    seg_name(segname, name);
    seg s;
    rc = seg_map(segname, name, 1, &s);
    if (rc == THEUS_OK) {
        state_header *h = (state_header *)s.base;
        state_hold_lock(h);
        seg_retire(segname, &s);
        state_hold_unlock(h);
        munmap(s.base, s.size);
        return THEUS_OK;
    }
    if (rc == THEUS_ENOENT)
        return rc;
    /* Not a usable state: remove the name as it is, if the system lets this user. */
    if (shm_unlink(segname) == 0)
        return THEUS_OK;
    if (errno == ENOENT)
        return err_set(NULL, THEUS_ENOENT, "no shared state '%s'", name);
    return err_set(NULL, THEUS_EPERM, "cannot remove shared state '%s': %s", name,
                   strerror(errno));
}

int theus_shared_cleanup(size_t *removed)
{
    if (removed)
        *removed = 0;
    DIR *d = opendir(SHM_DIR);
    if (!d)
        return err_set(NULL, THEUS_EIO, "cannot read " SHM_DIR ": %s", strerror(errno));
    char prefix[32], tmp_prefix[40];
    int plen = snprintf(prefix, sizeof prefix, "theus-%u-", (unsigned)geteuid());
    int tlen = snprintf(tmp_prefix, sizeof tmp_prefix, "theus-%u.tmp-", (unsigned)geteuid());
    size_t count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = entry_name(e->d_name, prefix, (size_t)plen);
        if (name) {
            char segname[SEG_MAX];
            seg_name(segname, name);
            int gone = 0;
            uint32_t live = 0;
            if (remove_if_abandoned(segname, name, &gone, &live) == THEUS_OK && gone)
                count++;
            continue;
        }
        /* A creator killed before it named its segment: "theus-<uid>.tmp-<pid>-<start>-<n>". */
        int pid = 0;
        unsigned long long start = 0;
        if (strncmp(e->d_name, tmp_prefix, (size_t)tlen) == 0 &&
            sscanf(e->d_name + tlen, "%d-%llu-", &pid, &start) == 2 &&
            !proc_alive(pid, (uint64_t)start)) {
            char path[sizeof e->d_name + 1];
            snprintf(path, sizeof path, "/%s", e->d_name);
            if (shm_unlink(path) == 0)
                count++;
        }
    }
    closedir(d);
    if (removed)
        *removed = count;
    return THEUS_OK;
}
