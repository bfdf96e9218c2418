/* libFuzzer target: the write-ahead log reader (src/durable/wal_record.c) on arbitrary
 * bytes taken as one log segment: head, records, deltas. Inputs of odd length get their
 * checksums recomputed first, so that mutations reach the record and delta parsers behind
 * the CRCs. Built by fuzz/build.sh. */
#include "durable/crc32c.h"
#include "durable/wal_record.h"
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static size_t esize(void *user, uint32_t field)
{
    (void)user;
    return field < THEUS_DTYPE_COUNT ? theus_dtype_size((theus_dtype)field) : 0;
}

static void fix_crcs(unsigned char *p, size_t size)
{
    if (size >= WAL_SEG_HEAD)
        wal_put32(p + 28, crc32c(0, p, 28));
    size_t off = WAL_SEG_HEAD;
    while (off + WAL_REC_HEAD <= size) {
        wal_put32(p + off + 24, crc32c(0, p + off, 24));
        uint64_t body = wal_get64(p + off + 16);
        if (body > size - off - WAL_REC_HEAD || size - off - WAL_REC_HEAD - body < 4)
            return;
        wal_put32(p + off + WAL_REC_HEAD + body, crc32c(0, p + off + WAL_REC_HEAD, (size_t)body));
        off += WAL_REC_OVERHEAD + (size_t)body;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    if (size % 2)
        fix_crcs(buf, size);
    char why[256];
    uint64_t start, off = 0;
    if (wal_seg_head_decode(buf, size, &start, why, sizeof why) == 0)
        off = WAL_SEG_HEAD;
    wal_rec r;
    while (wal_next(buf, size, off, &r, why, sizeof why) == WAL_SCAN_RECORD) {
        wal_cursor c;
        uint32_t n;
        if (r.kind == WAL_KIND_AUDIT) {
            wal_audit_entry e;
            if (wal_audit_begin(&r, &c, &n, why, sizeof why) == 0)
                while (wal_audit_next(&c, &e, why, sizeof why) == 1)
                    ;
        } else if (wal_deltas_begin(&r, &c, &n, why, sizeof why) == 0) {
            wal_delta d;
            volatile unsigned sum = 0;
            while (wal_delta_next(&c, esize, NULL, &d, why, sizeof why) == 1)
                for (uint64_t i = 0; i < d.nbytes; i += 97)
                    sum += d.payload[i]; /* every payload byte claimed must be readable */
            (void)sum;
        }
        off += r.size;
    }
    free(buf);
    return 0;
}
