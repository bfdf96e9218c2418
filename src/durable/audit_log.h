/* The audit's records in a durable state's write-ahead log: one WAL_KIND_AUDIT record per
 * commit that had violations (wal_record.h), appended through the log writer's one hook
 * (wal_append_note). The audit (src/process/audit.c) calls it under the commit lock. */
#ifndef THEUS_SRC_DURABLE_AUDIT_LOG_H
#define THEUS_SRC_DURABLE_AUDIT_LOG_H
#include "durable/wal_record.h"
#include "state.h"

/* Whether @st writes a log (a durable state opened for writing). */
int audit_log_on(const theus_state *st);

/* Append one audit record of @n entries (n >= 1) for version @version to @st's log; a
 * no-op (THEUS_OK) when @st writes none. Under the commit lock: from the publish step, after
 * the commit's own record (the record then goes with it, also when it is cancelled), or for
 * a refused commit, before anything of it was written (@sync: synced now, as no commit
 * record follows to carry it). THEUS_OK, THEUS_ENOMEM or THEUS_EIO (message set; a failed
 * write breaks the log like a failed commit record: later commits are refused). */
int audit_log_append(theus_state *st, uint64_t version, const wal_audit_entry *e, size_t n,
                     int sync);

/* Call @fn for every audit entry in @st's log, oldest first (every segment still in the
 * directory; a torn tail ends the walk): an engine attached to a reopened durable state
 * refills its ring and continues the sequence numbers. A no-op for a state without a log.
 * THEUS_OK, THEUS_EIO (a segment cannot be read; message set). Reads the files: no lock is
 * needed beyond what keeps the state open. */
typedef void (*audit_log_fn)(void *user, uint64_t version, const wal_audit_entry *e);
int audit_log_replay(const theus_state *st, audit_log_fn fn, void *user);

#endif
