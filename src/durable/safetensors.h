/* The safetensors container: an 8-byte little-endian header length, a JSON header
 * (dtype, shape, data_offsets per tensor; an optional "__metadata__" map of strings), then
 * the tensors' bytes. This module parses and builds headers only; it never touches state. */
#ifndef THEUS_SRC_DURABLE_SAFETENSORS_H
#define THEUS_SRC_DURABLE_SAFETENSORS_H
#include "theus/theus.h"
#include <stddef.h>
#include <stdint.h>

/* Headers longer than this are refused (the reference reader's own bound is 100 MB). */
#define ST_HEADER_MAX (100u * 1000u * 1000u)

typedef struct st_tensor {
    char *name;                     /* owned */
    theus_dtype dtype;
    int ndim;
    int64_t shape[THEUS_MAX_DIMS];
    uint64_t nbytes;                /* product of shape x dtype size (checked for overflow) */
    uint64_t begin, end;            /* data_offsets, relative to the data section */
} st_tensor;

typedef struct st_header {
    st_tensor *tensors;             /* in the order of the JSON text */
    size_t ntensors;
    char **meta_keys, **meta_vals;  /* "__metadata__", owned; NULL when absent */
    size_t nmeta;
    uint64_t data_start;            /* 8 + header length */
    uint64_t data_bytes;            /* bytes of the data section (end of the last tensor) */
} st_header;

/* Safetensors' dtype names ("F32", "BF16", "BOOL"); 0 ok, -1 unknown. */
const char *st_dtype_name(theus_dtype dt);
int st_dtype_from_name(const char *name, theus_dtype *out);

/* The header length from the first 8 bytes of a file of @file_size bytes: THEUS_OK, or
 * THEUS_ECORRUPT with the reason in @err (too short, zero, beyond the file, above
 * ST_HEADER_MAX). */
int st_header_length(const unsigned char prefix[8], uint64_t file_size, uint64_t *len,
                     char *err, size_t errlen);

/* Parse and check the JSON header @json (@len bytes, not NUL-terminated) of a file whose
 * data section holds @data_bytes bytes: every tensor's dtype, shape (rank <= 8, no
 * negative extent, no overflowing product), data_offsets (in range, begin <= end, length =
 * nbytes, and — sorted by begin — contiguous from 0 to @data_bytes, so no overlap and no
 * hole), metadata values strings. THEUS_OK and *out (st_header_free), or THEUS_ECORRUPT /
 * THEUS_ENOMEM with the reason (naming the tensor) in @err; *out is zeroed on failure. */
int st_header_parse(const char *json, size_t len, uint64_t data_bytes, st_header *out,
                    char *err, size_t errlen);
void st_header_free(st_header *h);

/* Index of the tensor called @name, or -1; value of metadata key @key, or NULL. */
long st_header_find(const st_header *h, const char *name);
const char *st_header_meta(const st_header *h, const char *key);

/* A header to write: the tensors' names, dtypes, shapes, laid out contiguously in the
 * order given; metadata pairs. */
typedef struct st_out_tensor {
    const char *name;
    theus_dtype dtype;
    int ndim;
    const int64_t *shape;
    uint64_t nbytes;
} st_out_tensor;

/* Build the file prefix (8-byte length + JSON padded with spaces to a multiple of 8 bytes,
 * so the data section starts 8-byte aligned): *out is theus_xmalloc'd, *outlen its size.
 * THEUS_OK or THEUS_ENOMEM / THEUS_EINVAL (bad dtype) with the reason in @err. */
int st_header_build(const st_out_tensor *t, size_t n, const char *const *meta_keys,
                    const char *const *meta_vals, size_t nmeta, unsigned char **out,
                    size_t *outlen, char *err, size_t errlen);
/* The same, padded with more spaces so that the prefix is at least @min_len bytes: a
 * header reserved before its numbers are known is filled in later at the same size. */
int st_header_build_padded(const st_out_tensor *t, size_t n, const char *const *meta_keys,
                           const char *const *meta_vals, size_t nmeta, size_t min_len,
                           unsigned char **out, size_t *outlen, char *err, size_t errlen);

#endif
