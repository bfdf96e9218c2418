/* File helpers of the durability layer: whole reads and writes that retry short transfers
 * and EINTR, directory fsync, and the atomic-replace writer (temporary file in the same
 * directory, fsync, rename, fsync of the directory). All report errors through err_set. */
#ifndef THEUS_SRC_DURABLE_FILEIO_H
#define THEUS_SRC_DURABLE_FILEIO_H
#include "theus/theus.h"
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* 0 on success, -1 with errno set. */
int fio_write_all(int fd, const void *buf, size_t n);
int fio_pwrite_all(int fd, const void *buf, size_t n, uint64_t off);
/* Reads exactly @n bytes at @off: 0, or -1 (errno set; EIO-like 0 for a short file). */
int fio_pread_all(int fd, void *buf, size_t n, uint64_t off);
/* fsync the directory holding @path (@path itself when @is_dir). THEUS_OK or THEUS_EIO. */
int fio_fsync_dir(const theus_state *st, const char *path, int is_dir);

typedef struct fio_atomic {
    int fd;
    char *tmp;      /* theus_xmalloc'd */
    char *final;
} fio_atomic;

/* Create "<path>.tmp.<pid>.<n>" with @mode (O_EXCL). THEUS_OK / THEUS_EIO / THEUS_ENOMEM. */
int fio_atomic_open(const theus_state *st, const char *path, mode_t mode, fio_atomic *a);
/* fsync, close, rename over the final path, fsync the directory. On failure the temporary
 * file is removed and the final path is untouched. */
int fio_atomic_commit(const theus_state *st, fio_atomic *a);
/* Make @path the final path that fio_atomic_commit renames over (a file named after what
 * is known only once it is written); the temporary keeps its name. THEUS_OK or
 * THEUS_ENOMEM (nothing changed). */
int fio_atomic_retarget(const theus_state *st, fio_atomic *a, const char *path);
/* Close and remove the temporary file. */
void fio_atomic_abort(fio_atomic *a);



/* Put "@what: " in front of the calling thread's last error detail (copied first: the
 * detail and the new message share one buffer) and return @code. A THEUS_ECONFLICT is
 * left as it is so that theus_last_conflict keeps its detail. */
int dur_wrap(const theus_state *st, int code, const char *what);
#endif
