/* This process's mappings of shared segments, one per segment whatever the number of
 * handles, with this process's GPU view of it (registered memory, opened device fields);
 * binding handles to them, and detaching handles. */
#include "shared_impl.h"
#include "alloc.h"
#include "error.h"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static pthread_mutex_t g_maps_mu = PTHREAD_MUTEX_INITIALIZER;
static shared_map *g_maps;

void shared_map_free(shared_map *m)
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

shared_map *shared_map_new(const seg *s, const char *segname)
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
static void maps_insert(shared_map *m)
{
    m->next = g_maps;
    g_maps = m;
}

static void maps_remove(shared_map *m)
{
    for (shared_map **p = &g_maps; *p; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            return;
        }
}

void shared_map_insert(shared_map *m)
{
    pthread_mutex_lock(&g_maps_mu);
    maps_insert(m);
    pthread_mutex_unlock(&g_maps_mu);
}

void shared_map_remove(shared_map *m)
{
    pthread_mutex_lock(&g_maps_mu);
    maps_remove(m);
    pthread_mutex_unlock(&g_maps_mu);
}

/* A backend that can share device memory, or NULL. */
const theus_backend *shared_gpu_for_device(const theus_backend *gpu)
{
    if (!gpu)
        return NULL;
    const theus_backend_iface *i = gpu->iface;
    return i->ipc_export && i->ipc_open && i->ipc_close && i->host_register && i->host_unregister
               ? gpu : NULL;
}

const theus_backend *shared_gpu_for_pinned(const theus_backend *gpu)
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
        gpu = shared_gpu_for_device(gpu);
        for (uint32_t i = 0; !gpu && i < h->nfields; i++)
            if (f[i].placement == THEUS_PLACEMENT_DEVICE)
                return err_set(NULL, THEUS_ENODEV, "field '%s' of shared state '%s' lives in GPU "
                               "memory, and this process has no GPU with CUDA IPC", f[i].name,
                               a->name);
        if (!shared_proc_alive(a->creator_pid, a->creator_start))
            return err_set(NULL, THEUS_EDEVICE, "the device fields of shared state '%s' lived in "
                           "the GPU memory of its creator (pid %d), which has exited", a->name,
                           (int)a->creator_pid);
    } else {
        gpu = shared_gpu_for_pinned(gpu);
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
int shared_map_open(const char *segname, const char *name, shared_map **out)
{
    seg s;
    int rc = shared_seg_map(segname, name, 1, &s);
    if (rc != THEUS_OK)
        return rc;
    pthread_mutex_lock(&g_maps_mu);
    shared_map *m = g_maps;
    while (m && !(m->pid == getpid() && m->s.dev == s.dev && m->s.ino == s.ino))
        m = m->next;
    if (m) {
        m->refs++;
        munmap(s.base, s.size);
    } else if ((m = shared_map_new(&s, segname)) != NULL) {
        maps_insert(m);
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
            maps_remove(m);
        pthread_mutex_unlock(&g_maps_mu);
        if (last)
            shared_map_free(m);
        return rc;
    }
    *out = m;
    return THEUS_OK;
}

/* Drop a handle's reference. The creator keeps its device memory while other processes
 * may use it (@last_out 0), until it is the last to leave or exits. */
void shared_map_release(shared_map *m, int last_out)
{
    pthread_mutex_lock(&g_maps_mu);
    int drop = --m->refs == 0 && (!m->owns_device || last_out);
    if (drop)
        maps_remove(m);
    pthread_mutex_unlock(&g_maps_mu);
    if (drop)
        shared_map_free(m);
}

void shared_bind_fields(theus_state *st, const shared_map *m)
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

void shared_detach(theus_state *st)
{
    shared_map *m = st->shm;
    state_header *h = st->hdr;
    shared_area *a = shared_area_of(st);
    lease_slot *l = &shared_leases_at((unsigned char *)h)[st->lease];
    int locked = shared_hold_lock((unsigned char *)h, a->name);
    uint32_t held = l->holds;
    l->holds = 0;
    atomic_store_explicit(&l->used, 0, memory_order_release);
    if (held)
        state_futex_wake(&h->hold_wake, 1);
    uint32_t live;
    if (locked == THEUS_OK) {
        live = shared_reap(st);
        if (live == 0 && !atomic_load_explicit(&a->unlinked, memory_order_acquire))
            shared_seg_retire(m->segname, &m->s);
        state_hold_unlock(h);
    } else {
        /* The hold lock is stuck (its holder stopped, or a stale lock word): the slot is
         * released all the same; the name goes only when nobody can ever take the lock. */
        live = shared_leases_live((unsigned char *)h);
        if (live == 0 && locked == THEUS_ECORRUPT) {
            atomic_store_explicit(&a->unlinked, 1, memory_order_release);
            shared_unlink_if_same(m->segname, &m->s);
        }
    }
    state_shadow_free(st);
    shared_map_release(m, live == 0);
}

const char *theus_state_shared_name(const theus_state *st)
{
    return st && st->shm ? shared_area_of(st)->name : NULL;
}
