/* libFuzzer target: the write-ahead log reader (src/durable/wal_record.c) on arbitrary
 * bytes taken as one log segment: head, records, deltas — and again with a preallocated zero
 * tail behind them, which must read the same (a zero tail is the clean end of a log). Inputs
 * of odd length get their checksums recomputed first, so that mutations reach the record and
 * delta parsers behind the CRCs. Built by fuzz/build.sh. */
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

/* Walk the records of @buf: their count and a digest of their offsets and sizes; the scan
 * result that ended the walk, and where (*end). */
static wal_scan walk(const unsigned char *buf, size_t size, uint64_t *n, uint64_t *digest,
                     uint64_t *end)
{
    char why[256];
    uint64_t start = 0, off = 0;
    *n = *digest = 0;
    if (wal_seg_head_decode(buf, size, &start, why, sizeof why) == 0)
        off = WAL_SEG_HEAD;
    wal_rec r;
    wal_scan sc;
    uint64_t base = start;
    while ((sc = wal_next(buf, size, off, base, &r, why, sizeof why)) == WAL_SCAN_RECORD) {
        if (r.kind == WAL_KIND_COMMIT)
            base = r.version;
        wal_cursor c;
        uint32_t k;
        if (r.kind == WAL_KIND_AUDIT) {
            wal_audit_entry e;
            if (wal_audit_begin(&r, &c, &k, why, sizeof why) == 0)
                while (wal_audit_next(&c, &e, why, sizeof why) == 1)
                    ;
        } else if (wal_deltas_begin(&r, &c, &k, why, sizeof why) == 0) {
            wal_delta d;
            volatile unsigned sum = 0;
            while (wal_delta_next(&c, esize, NULL, &d, why, sizeof why) == 1)
                for (uint64_t i = 0; i < d.nbytes; i += 97)
                    sum += d.payload[i]; /* every payload byte claimed must be readable */
            (void)sum;
        }
        (*n)++;
        *digest = (*digest ^ r.offset) * 0x100000001b3ull ^ r.size;
        off += r.size;
    }
    if (sc == WAL_SCAN_TORN && (r.offset != off || r.size == 0 || r.size > size - off))
        abort(); /* a torn record covers bytes of the buffer from where it starts */
    *end = off;
    return sc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The input, then the same with a preallocated zero tail behind it. */
    enum { TAIL = 4096 };
    unsigned char *buf = calloc(1, size + TAIL);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    if (size % 2)
        fix_crcs(buf, size);
    uint64_t n1, d1, n2, d2, e1, e2;
    wal_scan s1 = walk(buf, size, &n1, &d1, &e1);
    wal_scan s2 = walk(buf, size + TAIL, &n2, &d2, &e2);
    /* Zeros after the data change nothing in it: the same records, ended the same way —
     * except after a torn record, which zeros may complete (its missing bytes were zeros). */
    if (s1 != WAL_SCAN_TORN ? n1 != n2 || d1 != d2 || s1 != s2 : n2 < n1)
        abort();
    /* Dropping a torn record (the buffer cut where it starts) leaves a log that ends cleanly
     * with the same records: nothing valid was behind it. */
    if (s1 == WAL_SCAN_TORN && e1 >= WAL_SEG_HEAD) {
        uint64_t n3, d3, e3;
        if (walk(buf, e1, &n3, &d3, &e3) != WAL_SCAN_END || n3 != n1 || d3 != d1)
            abort();
    }
    free(buf);
    return 0;
}
