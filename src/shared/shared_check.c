/* Segments: opening one by name and checking it before anything else reads it (owner,
 * mode, size, magic numbers, layout, offsets, checksum), mapping it, and retiring its name. */
#include "shared_impl.h"
#include "error.h"
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

uint64_t shared_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 32;
    }
    for (; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static int range_ok(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

/* Over everything that never changes after creation. */
uint64_t shared_layout_checksum(const unsigned char *base)
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
    x = shared_hash(x, &h->off_map, sizeof h->off_map);
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
    if (shared_layout_checksum(base) != a->checksum)
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
    if (!state_maps_fit(h, f, s->size))
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s': the block maps do not match "
                       "the field table", name);
    if (((const char *)base)[a->off_schema + a->schema_len - 1] != '\0')
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s': the schema text is not "
                       "terminated", name);
    return THEUS_OK;
}

static const char *file_kind(mode_t m)
{
    return S_ISFIFO(m) ? "a FIFO" : S_ISDIR(m) ? "a directory" : S_ISLNK(m) ? "a symbolic link"
           : S_ISSOCK(m) ? "a socket" : S_ISCHR(m) ? "a character device"
           : S_ISBLK(m) ? "a block device" : "not a regular file";
}

/* Why the entry of @segname could not be opened (errno @e), from what it is. */
static int open_failed(const char *path, const char *name, int e)
{
    struct stat lb;
    if (e == ENOENT)
        return err_set(NULL, THEUS_ENOENT, "no shared state '%s'", name);
    if (lstat(path, &lb) == 0 && !S_ISREG(lb.st_mode))
        return err_set(NULL, THEUS_EPERM, "'%s' is %s, not a theus segment: theus uses only "
                       "regular files", path, file_kind(lb.st_mode));
    if (e == EACCES || e == EPERM)
        return err_set(NULL, THEUS_EPERM, "shared state '%s' is not accessible to this process "
                       "(%s): it belongs to another user", name, strerror(e));
    if (e == ELOOP || e == ENXIO || e == EISDIR)
        return err_set(NULL, THEUS_EPERM, "'%s' is not a theus segment (%s): theus uses only "
                       "regular files", path, strerror(e));
    return err_set(NULL, THEUS_EIO, "cannot open shared state '%s': %s", name, strerror(e));
}

int shared_seg_open(const char *segname, const char *name, int writable, struct stat *sb)
{
    char path[SEG_MAX + 16];
    snprintf(path, sizeof path, SHM_DIR "%s", segname);
    /* Never blocks (a FIFO opens at once with O_NONBLOCK) and never follows a link; what it
     * is, is decided from the open file, so that it cannot change in between. */
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK |
                            O_NOCTTY);
    if (fd < 0)
        return open_failed(path, name, errno);
    int rc = THEUS_OK;
    if (fstat(fd, sb) != 0)
        rc = err_set(NULL, THEUS_EIO, "cannot stat shared state '%s': %s", name, strerror(errno));
    else if (!S_ISREG(sb->st_mode))
        rc = err_set(NULL, THEUS_EPERM, "'%s' is %s, not a theus segment: theus uses only "
                     "regular files", path, file_kind(sb->st_mode));
    else if (sb->st_uid != geteuid())
        rc = err_set(NULL, THEUS_EPERM, "shared state '%s' belongs to uid %u, not to this "
                     "process's uid %u", name, (unsigned)sb->st_uid, (unsigned)geteuid());
    if (rc != THEUS_OK) {
        close(fd);
        return rc;
    }
    return fd;
}

int shared_seg_map(const char *segname, const char *name, int writable, seg *s)
{
    memset(s, 0, sizeof *s);
    struct stat sb;
    int fd = shared_seg_open(segname, name, writable, &sb);
    if (fd < 0)
        return fd;
    int rc = THEUS_OK;
    if ((sb.st_mode & 07777) != 0600) {
        rc = err_set(NULL, THEUS_EPERM, "shared state '%s' has mode %04o; theus uses only "
                     "segments of mode 0600", name, (unsigned)(sb.st_mode & 07777));
    } else if ((uint64_t)sb.st_size < sizeof(state_header) + sizeof(shared_area)) {
        rc = err_set(NULL, THEUS_ECORRUPT, "shared memory '%s' (%lld bytes) is too small: not "
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

int shared_unlink_if_same(const char *segname, const seg *s)
{
    char path[SEG_MAX + 16];
    snprintf(path, sizeof path, SHM_DIR "%s", segname);
    struct stat sb;
    if (lstat(path, &sb) == 0 && sb.st_dev == s->dev && sb.st_ino == s->ino)
        return shm_unlink(segname) == 0;
    return 0;
}

/* With the hold lock held: mark the state unlinked and remove its name. */
void shared_seg_retire(const char *segname, const seg *s)
{
    const state_header *h = (const state_header *)s->base;
    shared_area *a = (shared_area *)(s->base + h->off_shared);
    atomic_store_explicit(&a->unlinked, 1, memory_order_release);
    shared_unlink_if_same(segname, s);
}
