/* What the pieces of recovery share (durable.h holds its entry points for the library): the
 * write of bytes into a fresh state (recover_apply.c), the checkpoint chain
 * (recover_ckpt.c) and the log's segments (recover_log.c), which recover.c's dur_rebuild and
 * dur_versions run in turn: directory scan → checkpoint chain → log replay. */
#ifndef THEUS_SRC_DURABLE_RECOVER_INTERNAL_H
#define THEUS_SRC_DURABLE_RECOVER_INTERNAL_H
#include "durable/durable.h"
#include "durable/wal_record.h"
#include <stdint.h>

/* ---- recover_apply.c ------------------------------------------------------------------ */

/* Apply @payload (laid out as @r, host memory) onto field @f: assign or add. */
int recover_apply_bytes(theus_state *st, uint32_t f, const theus_region *r, int op,
                        const void *payload, uint64_t nbytes);

/* ---- recover_ckpt.c ------------------------------------------------------------------- */

/* Load checkpoint l->ckpt[idx] with its chain (back to the nearest full one); *chain: the
 * incremental checkpoints in it. */
int recover_load_chain(theus_state *st, const char *dir, const dir_list *l, size_t idx,
                       uint32_t *chain);

/* ---- recover_log.c -------------------------------------------------------------------- */

/* A log segment mapped read-only (p is NULL for an empty file). */
typedef struct seg_map {
    int fd;
    unsigned char *p;
    uint64_t size;
} seg_map;

/* Map segment @path. THEUS_OK or THEUS_EIO. */
int recover_seg_open(const theus_state *st, const char *path, seg_map *m);
void recover_seg_close(seg_map *m);
/* Walk segment @path (start version @start, the newest when @newest) from *last on,
 * applying commits above @base up to @target. Returns the end of valid data in *valid. */
int recover_replay_segment(theus_state *st, const char *path, uint64_t start, int newest,
                           uint64_t base, uint64_t target, int repair, uint64_t *last,
                           rebuild_result *res, uint64_t *valid);

#endif
