/* A snapshot: the bytes of every persisted field (all zones but `signal`) of one committed
 * version, copied to host memory while commits are held, so that files are written
 * without holding anyone up. Also the theus metadata every file carries. */
#ifndef THEUS_SRC_DURABLE_SNAPSHOT_H
#define THEUS_SRC_DURABLE_SNAPSHOT_H
#include "state.h"

/* Format version of theus's safetensors metadata and of the log (docs/durability.md). */
#define THEUS_DURABLE_FORMAT 1

typedef struct snap_field {
    uint32_t index;      /* field index in the state */
    void *bytes;         /* host copy (theus_xmalloc'd; NULL for a zero-byte field) */
    uint64_t nbytes;
    uint64_t version;    /* field version at the snapshot */
} snap_field;

typedef struct snapshot {
    uint64_t version;    /* state version of the copy */
    size_t n;
    snap_field *f;
} snapshot;

/* Copy the persisted fields of @st as one version. With @only (a per-field flag array, or
 * NULL for all), only flagged fields are copied (the others get bytes NULL). THEUS_OK,
 * THEUS_ENOMEM, THEUS_EDEVICE (message set). */
int snapshot_take(theus_state *st, const unsigned char *only, snapshot *out);
void snapshot_free(snapshot *s);

/* The schema of @st as canonical JSON (theus_xmalloc'd; NULL when out of memory): same
 * schema, same text, so two schemas compare by their canonical forms. */
char *schema_canonical(const theus_schema *s);

/* Field versions {"name": v, ...} as JSON text (theus_xmalloc'd). */
char *snapshot_versions_json(const theus_state *st, const snapshot *s);

#endif
