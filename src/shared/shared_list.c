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
#include <sys/stat.h>
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
    /* A lock word naming a thread that no longer exists is never freed (the kernel frees
     * the locks of threads that die): nothing could open or commit. */
    state_header *hw = (state_header *)s.base;
    const char *stale = shared_lock_stale(&hw->hold_lock)     ? "hold lock"
                        : shared_lock_stale(&hw->commit_lock) ? "commit lock"
                                                                      : NULL;
    munmap(s.base, s.size);
    if (stale)
        rc = out->status = err_set(NULL, THEUS_ECORRUPT, "shared state '%s': its %s is held by "
                                   "a thread that does not exist (a stale lock word)", name,
                                   stale);
    return rc;
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
        /* No lock: its holder may be stopped. Marked first, so that an opener that mapped
         * it already retries, and its last user leaves the name (by then maybe another
         * state's) alone; an opener that checked the mark just before keeps a working
         * handle on the nameless state, as if it had opened it before the remove. */
        shared_area *a = (shared_area *)(s.base + ((state_header *)s.base)->off_shared);
        atomic_store_explicit(&a->unlinked, 1, memory_order_release);
        /* Waits on it, in any process, end now (THEUS_ENOENT) rather than at their timeout. */
        shared_signal_wake_all(a);
        shared_unlink_if_same(segname, &s);
        munmap(s.base, s.size);
        return THEUS_OK;
    }
    if (rc == THEUS_ENOENT)
        return rc;
    /* Not a usable state: remove the name as it is when it is a regular file of this user
     * (never another user's, even for root, and never a FIFO, link, directory...). */
    struct stat sb;
    int fd = shared_seg_open(segname, name, 0, &sb);
    if (fd < 0)
        return fd;
    close(fd);
    s = (seg){.dev = sb.st_dev, .ino = sb.st_ino};
    if (shared_unlink_if_same(segname, &s))
        return THEUS_OK;
    if (errno == ENOENT)
        return err_set(NULL, THEUS_ENOENT, "no shared state '%s'", name);
    return err_set(NULL, THEUS_EPERM, "cannot remove shared state '%s': %s", name,
                   strerror(errno));
}

/* A creator killed before it named its segment left "theus-<uid>.tmp-<pid>-<start>-<n>":
 * remove it if that process is gone and the entry is a regular file of this user. */
static int remove_tmp(const char *entry, const char *tmp_prefix, size_t tlen)
{
    int pid = 0;
    unsigned long long start = 0;
    if (strncmp(entry, tmp_prefix, tlen) != 0 ||
        sscanf(entry + tlen, "%d-%llu-", &pid, &start) != 2 ||
        shared_proc_alive(pid, (uint64_t)start))
        return 0;
    char path[sizeof SHM_DIR + 256];
    struct stat sb;
    snprintf(path, sizeof path, SHM_DIR "/%s", entry);
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_uid != geteuid())
        return 0;
    return shm_unlink(path + strlen(SHM_DIR)) == 0;
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
    size_t count = 0, stuck = 0;
    char why[256] = "";
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = shared_entry_name(e->d_name, prefix, (size_t)plen);
        if (!name) {
            count += (size_t)remove_tmp(e->d_name, tmp_prefix, (size_t)tlen);
            continue;
        }
        char segname[SEG_MAX];
        shared_seg_name(segname, name);
        int gone = 0;
        uint32_t live = 0;
        int rc = shared_remove_if_abandoned(segname, name, &gone, &live);
        if (rc == THEUS_OK && gone)
            count++;
        /* Unusable segments are not the sweep's to judge (theus_shared_list shows them);
         * a lock held past the bound by a live process is reported, after the others. */
        if (rc == THEUS_EBUSY && stuck++ == 0)
            snprintf(why, sizeof why, "%s", theus_last_error_message());
    }
    closedir(d);
    if (removed)
        *removed = count;
    if (stuck)
        return err_set(NULL, THEUS_EBUSY, "theus_shared_cleanup: %zu state%s left unchecked "
                       "(the others were swept): %s", stuck, stuck == 1 ? "" : "s", why);
    return THEUS_OK;
}
