/* A snapshot: the versions of one committed state version and of its persisted fields (all
 * zones but `signal`), which a file's theus metadata records; the bytes go to the file
 * straight from the fields (stsave.c). Also the rest of the metadata every file carries. */
#ifndef THEUS_SRC_DURABLE_SNAPSHOT_H
#define THEUS_SRC_DURABLE_SNAPSHOT_H
#include "state.h"

/* Format version of theus's safetensors metadata and of the log (docs/durability.md). */
#define THEUS_DURABLE_FORMAT 1

typedef struct snap_field {
    uint32_t index;      /* field index in the state */
    uint64_t version;    /* field version at the snapshot */
} snap_field;

typedef struct snapshot {
    uint64_t version;    /* state version */
    size_t n;
    snap_field *f;
} snapshot;

/* The schema of @st as canonical JSON (theus_xmalloc'd; NULL when out of memory): same
 * schema, same text, so two schemas compare by their canonical forms. */
char *schema_canonical(const theus_schema *s);

/* Field versions {"name": v, ...} as JSON text (theus_xmalloc'd). */
char *snapshot_versions_json(const theus_state *st, const snapshot *s);

#endif
