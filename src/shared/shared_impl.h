/* What the files of a shared state (src/shared/) say to each other: segment names, the
 * segment checks and mappings, leases and process liveness, this process's mappings. Not
 * for the rest of the library, which sees only src/shared.h. */
#ifndef THEUS_SRC_SHARED_IMPL_H
#define THEUS_SRC_SHARED_IMPL_H
#include "../shared.h"
#include "theus/theus_shared.h"
#include <pthread.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Where POSIX shared memory lives on Linux (glibc's shm_open opens files there). */
#define SHM_DIR "/dev/shm"
#define SEG_MAX 128
#define PAGE 4096u
#define DEFAULT_MAX_LEASES 64u
#define MAX_LEASES 4096u
/* An open that finds the name being removed under it tries again, this many times. */
#define OPEN_TRIES 16

/* ---- names (shared_name.c) ---- */

/* THEUS_OK, or THEUS_EINVAL with a message: 1 to 63 of A-Z a-z 0-9 . _ -, not starting
 * with '.' or '-'. */
int shared_check_name(const char *name);
/* "/theus-<uid>-<name>" into @buf (SEG_MAX bytes): names are per user. */
void shared_seg_name(char *buf, const char *name);
/* The shared name in the /dev/shm entry @entry of this user's states ("theus-<uid>-"
 * @prefix of @plen characters), or NULL. */
const char *shared_entry_name(const char *entry, const char *prefix, size_t plen);

/* ---- processes and leases (shared_lease.c) ---- */

/* /proc/<pid>/<file> into @buf (@size bytes, NUL-terminated): its length, 0 when it cannot
 * be read (the process or thread is gone). */
size_t shared_proc_read(pid_t pid, const char *file, char *buf, size_t size);
/* Start time of process @pid plus one, or 0 when it is gone or a zombie. */
uint64_t shared_proc_start(pid_t pid);
int shared_proc_alive(int32_t pid, uint64_t start);
lease_slot *shared_leases_at(unsigned char *base);
/* With the hold lock held: free the slots of dead processes; returns the live slots and
 * adds the holds it dropped to *dropped. */
uint32_t shared_leases_reap(unsigned char *base, uint32_t *dropped);
/* Lease slots held by live processes, read without the hold lock (a snapshot). */
uint32_t shared_leases_live(const unsigned char *base);
/* With the hold lock held (and dead slots reaped): take a slot for this handle. */
int shared_lease_take(theus_state *st);

/* ---- segments (shared_check.c) ---- */

typedef struct seg {
    unsigned char *base;
    size_t size;
    dev_t dev;
    ino_t ino;
} seg;

static inline uint64_t shared_align(uint64_t n, uint64_t a)
{
    return (n + a - 1) / a * a;
}

/* Over everything that never changes after creation. */
uint64_t shared_layout_checksum(const unsigned char *base);
/* Open the entry @segname (of the shared name @name) without blocking or following links:
 * a file descriptor (*sb its fstat), or THEUS_ENOENT, or THEUS_EPERM when it is not a
 * regular file (FIFO, directory, symbolic link, socket, device) or not owned by this
 * process's effective uid, or THEUS_EIO; with a message. */
int shared_seg_open(const char *segname, const char *name, int writable, struct stat *sb);
/* Open, check (as shared_seg_open, then mode 0600 and the contents) and map the segment
 * @segname. */
int shared_seg_map(const char *segname, const char *name, int writable, seg *s);
/* Remove the name @segname if it still names the segment @s (and not a newer state that
 * took the name since); 1 if removed. */
int shared_unlink_if_same(const char *segname, const seg *s);
/* With the hold lock held: mark the state unlinked and remove its name. */
void shared_seg_retire(const char *segname, const seg *s);
/* If no live process holds the state @segname, remove its name: *removed = 1. Also when
 * the name is already gone, or was left by a process that died removing it, or when its
 * hold lock names a thread that no longer exists and no live process holds a lease.
 * Otherwise as shared_seg_map and shared_hold_lock (bounded). */
int shared_remove_if_abandoned(const char *segname, const char *name, int *removed,
                               uint32_t *live);

/* ---- bounded waits (shared_wait.c) ---- */

/* The bound of a wait on another process's lock, in ms: THEUS_SHARED_WAIT_MS from the
 * environment (1 to 3600000), 5000 by default. */
uint64_t shared_wait_bound_ms(void);
/* Take the robust mutex @m (@what, "hold lock" or "commit lock") of the segment at @base,
 * of the shared name @name. A holder that died is taken over (THEUS_OK). Gives up after the
 * bound with a message saying who holds it: THEUS_ECORRUPT when the lock word names a
 * thread that does not exist (or is not a lock), THEUS_EBUSY when a live process holds it
 * (stopped, stuck, or not attached to the state). With @wait_for_live, a holder that is a
 * running process holding a lease in the segment is waited for as long as it holds it. With
 * @spin the first try is state_lock_spin's (theus_state.lock_spin). */
int shared_lock(unsigned char *base, pthread_mutex_t *m, const char *what, const char *name,
                int wait_for_live, int spin);
/* shared_lock of the segment's hold lock, without waiting for live holders. */
int shared_hold_lock(unsigned char *base, const char *name);
/* Whether the lock word of @m names a thread that does not exist (no wait). */
int shared_lock_stale(pthread_mutex_t *m);

/* ---- this process's mappings (shared_map.c) ----
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

shared_map *shared_map_new(const seg *s, const char *segname);
/* Unmaps the segment, frees or closes any device memory, frees @m. */
void shared_map_free(shared_map *m);
/* Enter @m into, or take it out of, this process's list of mappings. */
void shared_map_insert(shared_map *m);
void shared_map_remove(shared_map *m);
/* A backend that can share device memory (or register pinned memory), or NULL. */
const theus_backend *shared_gpu_for_device(const theus_backend *gpu);
const theus_backend *shared_gpu_for_pinned(const theus_backend *gpu);
/* This process's mapping of the segment @segname, made on first use. */
int shared_map_open(const char *segname, const char *name, shared_map **out);
/* Drop a handle's reference. The creator keeps its device memory while other processes
 * may use it (@last_out 0), until it is the last to leave or exits. */
void shared_map_release(shared_map *m, int last_out);
/* Point the handle @st's data and backends at the mapping @m. */
void shared_bind_fields(theus_state *st, const shared_map *m);

#endif
