/* Safetensors files on disk: atomic writing of a set of tensors, opening and validating a
 * file (header read and checked against the file's size). */
#ifndef THEUS_SRC_DURABLE_STFILE_H
#define THEUS_SRC_DURABLE_STFILE_H
#include "durable/safetensors.h"
#include <sys/types.h>

struct snapshot;

/* Metadata key of the tensors' checksums that stfile_write adds: {"name": crc32c, ...}. */
#define STFILE_CRC_KEY "theus.crc32c"

/* Direct transfers (O_DIRECT) need the buffer, the file offset and the length on this
 * boundary. */
#define STFILE_DIRECT_ALIGN 4096u

/* A buffer for stfile_write: @n bytes and room to round them up to STFILE_DIRECT_ALIGN, the
 * returned pointer on that boundary (*raw is what to theus_xfree). NULL when out of
 * memory. */
void *stfile_buf_alloc(size_t n, void **raw);

/* Write @n tensors whose bytes lie back to back in @data (t[0] first; @len bytes in all,
 * @data from stfile_buf_alloc(@len)) and the metadata pairs (at most 15, plus
 * STFILE_CRC_KEY) to @path atomically (fio_atomic_*), with file mode @mode. The data section
 * starts on a STFILE_DIRECT_ALIGN boundary (the header padded with spaces) and the file is
 * written with one pwritev with O_DIRECT where the file system takes it (no copy into the
 * page cache, nothing left to write back at the fsync), else through the page cache. The
 * bytes from @len up to the boundary are cleared (the buffer's own padding). */
int stfile_write(const theus_state *st, const char *path, mode_t mode, const st_out_tensor *t,
                 size_t n, void *data, uint64_t len, const char *const *mkeys,
                 const char *const *mvals, size_t nmeta);

/* The file prefix (8-byte length + header JSON) of tensors @t whose checksums are @crc, with
 * the metadata pairs (at most 15) and STFILE_CRC_KEY, padded to at least @min_len bytes:
 * *prefix theus_xmalloc'd, *plen its size. THEUS_OK, THEUS_EINVAL, THEUS_ENOMEM (message
 * names @path). */
int stfile_prefix(const theus_state *st, const char *path, const st_out_tensor *t,
                  const uint32_t *crc, size_t n, const char *const *mkeys,
                  const char *const *mvals, size_t nmeta, size_t min_len,
                  unsigned char **prefix, size_t *plen);

/* Open @path and parse its header: *fd (the caller closes it) and *h (st_header_free).
 * THEUS_ENOENT, THEUS_EIO, THEUS_ECORRUPT ("'<path>': <reason>"), THEUS_ENOMEM. */
int stfile_open(const theus_state *st, const char *path, int *fd, st_header *h);

/* The theus metadata of a snapshot of @st: keys and values (values theus_xmalloc'd, free
 * with stfile_meta_free). @schema_text NULL: the canonical schema. */
#define STFILE_NMETA 5
int stfile_meta(const theus_state *st, const struct snapshot *s, const char *schema_text,
                const char *keys[STFILE_NMETA], char *vals[STFILE_NMETA]);
void stfile_meta_free(char *vals[STFILE_NMETA]);

/* For the tests: nonzero makes whole-state saves and checkpoints copy host fields through
 * the field's backend too, as they copy device and pinned fields (the staged path, which a
 * machine without a GPU never takes otherwise). 0 by default; set before the calls. */
extern int stfile_test_staged;

/* Bytes [@lo, @hi) of field @i of @st into host memory @dst through the field's backend
 * (the device-to-host copy of device fields); both ends multiples of the element size.
 * The caller keeps commits from writing there if it needs a consistent copy. THEUS_OK or
 * the backend's error (message set). */
int stfile_read_bytes(const theus_state *st, uint32_t i, uint64_t lo, uint64_t hi, void *dst);

/* Where stfile_save_state writes: @path, or (@path NULL) the name that @name gives the
 * version written (checkpoint files are named by their version, known only once the
 * snapshot is taken); file mode @mode. */
#define STFILE_PATH_MAX 4096
typedef struct stfile_target {
    const char *path;
    void (*name)(const void *ctx, uint64_t version, char *buf, size_t len);
    const void *ctx;
    mode_t mode;
} stfile_target;

/* The one writer of whole states (stsave.c): the persisted fields of @st as one committed
 * version with the theus metadata (@schema_text NULL: the canonical schema), written
 * atomically to @to; *@version (if not NULL) gets the version written. Used by
 * theus_state_save_safetensors and by full checkpoints. Straight from the fields' memory
 * (device and pinned fields through double-buffered host staging) while commits go on; at
 * the end commits are held only while the parts written since it began are copied again.
 * Thread-safe against commits (not against another save of the same state to the same
 * path). THEUS_OK, THEUS_EIO, THEUS_ENOMEM, THEUS_EDEVICE, THEUS_EINVAL (messages name the
 * file); on failure the target path is untouched. */
int stfile_save_state(theus_state *st, const stfile_target *to, const char *schema_text,
                      uint64_t *version);

#endif
