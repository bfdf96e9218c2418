/* Safetensors files on disk: atomic writing of a set of tensors, opening and validating a
 * file (header read and checked against the file's size). */
#ifndef THEUS_SRC_DURABLE_STFILE_H
#define THEUS_SRC_DURABLE_STFILE_H
#include "durable/safetensors.h"
#include <sys/types.h>

struct snapshot;

/* Metadata key of the tensors' checksums that stfile_write adds: {"name": crc32c, ...}. */
#define STFILE_CRC_KEY "theus.crc32c"

/* Write @n tensors whose bytes are @data[i] (t[i].nbytes each) and the metadata pairs (at
 * most 15, plus STFILE_CRC_KEY) to @path atomically (fio_atomic_*), with file mode @mode. */
int stfile_write(const theus_state *st, const char *path, mode_t mode, const st_out_tensor *t,
                 const void *const *data, size_t n, const char *const *mkeys,
                 const char *const *mvals, size_t nmeta);

/* Open @path and parse its header: *fd (the caller closes it) and *h (st_header_free).
 * THEUS_ENOENT, THEUS_EIO, THEUS_ECORRUPT ("'<path>': <reason>"), THEUS_ENOMEM. */
int stfile_open(const theus_state *st, const char *path, int *fd, st_header *h);

/* The theus metadata of a snapshot of @st: keys and values (values theus_xmalloc'd, free
 * with stfile_meta_free). @schema_text NULL: the canonical schema. */
#define STFILE_NMETA 5
int stfile_meta(const theus_state *st, const struct snapshot *s, const char *schema_text,
                const char *keys[STFILE_NMETA], char *vals[STFILE_NMETA]);
void stfile_meta_free(char *vals[STFILE_NMETA]);

#endif
