/* Inspecting and tidying this user's shared states without opening them: info, list,
 * remove, and the clean-up of abandoned states and of half-made segments. */
#include "shared_impl.h"
#include "alloc.h"
#include "tx.h"
#include "error.h"
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int info_of(const char *name, theus_shared_summary *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", name);
    char segname[SEG_MAX];
    shared_seg_name(segname, name);
    seg s;
    int rc = shared_seg_map(segname, name, 0, &s);
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
            shared_proc_alive(l[i].pid, l[i].start))
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
    int rc = shared_check_name(name);
    if (rc != THEUS_OK)
        return rc;
    return info_of(name, out);
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
        const char *name = shared_entry_name(e->d_name, prefix, (size_t)plen);
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
    int rc = shared_check_name(name);
    if (rc != THEUS_OK)
        return rc;
    char segname[SEG_MAX];
    shared_seg_name(segname, name);
    seg s;
    rc = shared_seg_map(segname, name, 1, &s);
    if (rc == THEUS_OK) {
        state_header *h = (state_header *)s.base;
        state_hold_lock(h);
        shared_seg_retire(segname, &s);
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
        const char *name = shared_entry_name(e->d_name, prefix, (size_t)plen);
        if (name) {
            char segname[SEG_MAX];
            shared_seg_name(segname, name);
            int gone = 0;
            uint32_t live = 0;
            if (shared_remove_if_abandoned(segname, name, &gone, &live) == THEUS_OK && gone)
                count++;
            continue;
        }
        /* A creator killed before it named its segment: "theus-<uid>.tmp-<pid>-<start>-<n>". */
        int pid = 0;
        unsigned long long start = 0;
        if (strncmp(e->d_name, tmp_prefix, (size_t)tlen) == 0 &&
            sscanf(e->d_name + tlen, "%d-%llu-", &pid, &start) == 2 &&
            !shared_proc_alive(pid, (uint64_t)start)) {
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
