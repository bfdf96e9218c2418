/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of log records: the
 * SSE4.2 crc32 instruction where the CPU has it, else slicing-by-8 tables. */
#ifndef THEUS_SRC_DURABLE_CRC32C_H
#define THEUS_SRC_DURABLE_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/* Extend @crc (0 to start) over @n bytes: crc32c(crc32c(0, a), b) == crc32c(0, a || b). */
uint32_t crc32c(uint32_t crc, const void *buf, size_t n);
/* The portable implementation alone (tests compare the two). */
uint32_t crc32c_portable(uint32_t crc, const void *buf, size_t n);

#endif
