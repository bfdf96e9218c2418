/* Leases: one slot per open handle, naming its process by pid and start time so that a
 * reused pid is not taken for the same process; reaping the slots of dead processes (with
 * their commit holds), and removing states whose processes are all gone. */
#include "shared_impl.h"
#include "error.h"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Start time of process @pid (field 22 of /proc/<pid>/stat) plus one, or 0 when it is gone
 * or a zombie: with the pid it names one process, even after the pid is reused. */
size_t shared_proc_read(pid_t pid, const char *file, char *buf, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return (size_t)n;
}

uint64_t shared_proc_start(pid_t pid)
{
    char buf[1024];
    if (!shared_proc_read(pid, "stat", buf, sizeof buf))
        return 0;
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

int shared_proc_alive(int32_t pid, uint64_t start)
{
    return pid > 0 && start != 0 && shared_proc_start((pid_t)pid) == start;
}

/* ---- leases ------------------------------------------------------------------------- */

lease_slot *shared_leases_at(unsigned char *base)
{
    const state_header *h = (const state_header *)base;
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    return (lease_slot *)(base + a->off_leases);
}

/* With the hold lock held: free the slots of dead processes; returns the live slots and
 * adds the holds it dropped to *dropped. */
uint32_t shared_leases_reap(unsigned char *base, uint32_t *dropped)
{
    const state_header *h = (const state_header *)base;
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    lease_slot *l = shared_leases_at(base);
    uint32_t live = 0;
    for (uint32_t i = 0; i < a->max_leases; i++) {
        if (!atomic_load_explicit(&l[i].used, memory_order_acquire))
            continue;
        if (shared_proc_alive(l[i].pid, l[i].start)) {
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
    uint32_t live = shared_leases_reap((unsigned char *)st->hdr, &dropped);
    if (dropped)
        state_futex_wake(&st->hdr->hold_wake, 1);
    return live;
}

uint32_t *shared_hold_slot(theus_state *st)
{
    return &shared_leases_at((unsigned char *)st->hdr)[st->lease].holds;
}

uint32_t shared_holds(const theus_state *st)
{
    const lease_slot *l = shared_leases_at((unsigned char *)st->hdr);
    uint32_t n = 0;
    for (uint32_t i = 0; i < shared_area_of(st)->max_leases; i++)
        if (atomic_load_explicit(&l[i].used, memory_order_relaxed))
            n += l[i].holds;
    return n;
}

/* With the hold lock held (and dead slots reaped): take a slot for this handle. */
int shared_lease_take(theus_state *st)
{
    const shared_area *a = shared_area_of(st);
    lease_slot *l = shared_leases_at((unsigned char *)st->hdr);
    for (uint32_t i = 0; i < a->max_leases; i++) {
        if (atomic_load_explicit(&l[i].used, memory_order_relaxed))
            continue;
        l[i].pid = (int32_t)getpid();
        l[i].start = shared_proc_start(getpid());
        l[i].holds = 0;
        atomic_store_explicit(&l[i].used, 1, memory_order_release);
        st->lease = i;
        return THEUS_OK;
    }
    return err_set(NULL, THEUS_EBUSY, "shared state '%s': all %u lease slots are taken "
                   "(theus_shared_options.max_processes)", a->name, a->max_leases);
}

/* If no live process holds the state @segname, remove its name: *removed = 1. Also when
 * the name is already gone, or was left by a process that died removing it. */
int shared_remove_if_abandoned(const char *segname, const char *name, int *removed,
                               uint32_t *live)
{
    seg s;
    *removed = 0;
    *live = 0;
    int rc = shared_seg_map(segname, name, 1, &s);
    if (rc == THEUS_ENOENT) {
        *removed = 1;
        return THEUS_OK;
    }
    if (rc != THEUS_OK)
        return rc;
    state_header *h = (state_header *)s.base;
    shared_area *a = (shared_area *)(s.base + h->off_shared);
    rc = shared_hold_lock(s.base, name);
    if (rc != THEUS_OK) {
        /* A hold lock whose word names a thread that no longer exists is never freed: if
         * no live process holds a lease either, nobody can use the state again. */
        if (rc == THEUS_ECORRUPT && shared_leases_live(s.base) == 0) {
            atomic_store_explicit(&a->unlinked, 1, memory_order_release);
            shared_unlink_if_same(segname, &s);
            *removed = 1;
            rc = THEUS_OK;
        }
        munmap(s.base, s.size);
        return rc;
    }
    uint32_t dropped = 0;
    if (!atomic_load_explicit(&a->unlinked, memory_order_acquire))
        *live = shared_leases_reap(s.base, &dropped);
    if (*live == 0) {
        shared_seg_retire(segname, &s);
        *removed = 1;
    }
    if (dropped)
        state_futex_wake(&h->hold_wake, 1);
    state_hold_unlock(h);
    munmap(s.base, s.size);
    return THEUS_OK;
}

uint32_t shared_leases_live(const unsigned char *base)
{
    const state_header *h = (const state_header *)base;
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    const lease_slot *l = (const lease_slot *)(base + a->off_leases);
    uint32_t n = 0;
    for (uint32_t i = 0; i < a->max_leases; i++)
        if (atomic_load_explicit(&l[i].used, memory_order_acquire) &&
            shared_proc_alive(l[i].pid, l[i].start))
            n++;
    return n;
}
