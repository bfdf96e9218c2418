/* Whole-buffer file transfers, directory fsync, and atomic replacement of a file. */
#include "durable/fileio.h"
#include "alloc.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int fio_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int fio_pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

int fio_pread_all(int fd, void *buf, size_t n, uint64_t off)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = ENODATA;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

int fio_fsync_dir(const theus_state *st, const char *path, int is_dir)
{
    char dir[4096];
    if (is_dir) {
        snprintf(dir, sizeof dir, "%s", path);
    } else {
        const char *slash = strrchr(path, '/');
        if (!slash)
            snprintf(dir, sizeof dir, ".");
        else if (slash == path)
            snprintf(dir, sizeof dir, "/");
        else
            snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return err_set(st, THEUS_EIO, "cannot open directory '%s': %s", dir, strerror(errno));
    int rc = fsync(fd) == 0 ? THEUS_OK
                            : err_set(st, THEUS_EIO, "fsync of directory '%s': %s", dir,
                                      strerror(errno));
    close(fd);
    return rc;
}

static _Atomic unsigned tmp_counter;

int fio_atomic_open(const theus_state *st, const char *path, mode_t mode, fio_atomic *a)
{
    a->fd = -1;
    a->tmp = a->final = NULL;
    size_t n = strlen(path) + 48;
    a->tmp = theus_xmalloc(n);
    a->final = theus_xstrdup(path);
    if (!a->tmp || !a->final) {
        fio_atomic_abort(a);
        return err_set(st, THEUS_ENOMEM, "out of memory");
    }
    snprintf(a->tmp, n, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&tmp_counter, 1));
    a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (a->fd < 0) {
        int e = errno;
        theus_xfree(a->tmp);
        theus_xfree(a->final);
        a->tmp = a->final = NULL;
        return err_set(st, e == ENOENT ? THEUS_ENOENT : THEUS_EIO, "cannot create '%s': %s",
                       path, strerror(e));
    }
    return THEUS_OK;
}

int fio_atomic_commit(const theus_state *st, fio_atomic *a)
{
    int rc = THEUS_OK;
    if (fsync(a->fd) != 0)
        rc = err_set(st, THEUS_EIO, "fsync of '%s': %s", a->tmp, strerror(errno));
    if (close(a->fd) != 0 && rc == THEUS_OK)
        rc = err_set(st, THEUS_EIO, "close of '%s': %s", a->tmp, strerror(errno));
    a->fd = -1;
    if (rc == THEUS_OK && rename(a->tmp, a->final) != 0)
        rc = err_set(st, THEUS_EIO, "rename '%s' -> '%s': %s", a->tmp, a->final, strerror(errno));
    if (rc != THEUS_OK) {
        fio_atomic_abort(a);
        return rc;
    }
    rc = fio_fsync_dir(st, a->final, 0);
    theus_xfree(a->tmp);
    theus_xfree(a->final);
    a->tmp = a->final = NULL;
    return rc;
}

int fio_atomic_retarget(const theus_state *st, fio_atomic *a, const char *path)
{
    char *p = theus_xstrdup(path);
    if (!p)
        return err_set(st, THEUS_ENOMEM, "out of memory");
    theus_xfree(a->final);
    a->final = p;
    return THEUS_OK;
}

void fio_atomic_abort(fio_atomic *a)
{
    if (a->fd >= 0)
        close(a->fd);
    if (a->tmp)
        unlink(a->tmp);
    a->fd = -1;
    theus_xfree(a->tmp);
    theus_xfree(a->final);
    a->tmp = a->final = NULL;
}

int dur_wrap(const theus_state *st, int code, const char *what)
{
    if (code == THEUS_ECONFLICT)
        return code;
    char inner[512];
    snprintf(inner, sizeof inner, "%s", theus_last_error_message());
    return err_set(st, code, "%s: %s", what, inner);
}
