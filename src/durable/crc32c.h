/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of log records and of
 * checkpoint tensors: the SSE4.2 crc32 instruction where the CPU has it (three interleaved
 * streams on long buffers), else slicing-by-8 tables; and the combination of the CRCs of
 * two pieces into the CRC of both, so that a file's checksum can be built from pieces
 * computed apart (and some of them recomputed). */
#ifndef THEUS_SRC_DURABLE_CRC32C_H
#define THEUS_SRC_DURABLE_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/* Extend @crc (0 to start) over @n bytes: crc32c(crc32c(0, a), b) == crc32c(0, a || b). */
uint32_t crc32c(uint32_t crc, const void *buf, size_t n);
/* The portable implementation alone (tests compare the two). */
uint32_t crc32c_portable(uint32_t crc, const void *buf, size_t n);

/* The operator that appends @len zero bytes to a CRC register (a 32x32 matrix over GF(2)):
 * built once for a length used often, applied in 32 steps. */
typedef struct crc32c_shift {
    uint32_t m[32];
} crc32c_shift;
void crc32c_shift_init(crc32c_shift *op, uint64_t len);
uint32_t crc32c_shift_apply(const crc32c_shift *op, uint32_t crc);
/* The CRC of a || b from crc32c(0, a), crc32c(0, b) and b's length (as zlib's
 * crc32_combine). With @op built for @len_b (crc32c_shift_init), the cheap form. */
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
uint32_t crc32c_combine_op(const crc32c_shift *op, uint32_t crc_a, uint32_t crc_b);

#endif
