/* The write-ahead log's on-disk format (docs/durability.md, "Log format"): segment heads,
 * records, and the reader that walks them and tells a clean end, a torn tail and real
 * corruption apart. Pure functions on memory: no state, no files (the fuzz target calls
 * them on arbitrary bytes). Integers are little-endian. */
#ifndef THEUS_SRC_DURABLE_WAL_RECORD_H
#define THEUS_SRC_DURABLE_WAL_RECORD_H
#include "theus/theus.h"
#include <stddef.h>
#include <stdint.h>

/* Segment head, 32 bytes: "THEUSWAL", u32 format (1), u32 head size (32), u64 start version
 * (the state version when the segment was begun: its commit records follow it), u32
 * reserved (0), u32 CRC32C of bytes 0..27. */
#define WAL_SEG_HEAD 32u
#define WAL_FORMAT 1u

/* Record: head of 28 bytes — u32 magic "TWR1", u32 kind, u64 version, u64 body length,
 * u32 CRC32C of the 24 bytes before it — then the body, then u32 CRC32C of the body. */
#define WAL_REC_MAGIC 0x31525754u
#define WAL_REC_HEAD 28u
#define WAL_REC_OVERHEAD (WAL_REC_HEAD + 4u)
#define WAL_KIND_COMMIT 1u   /* a commit creating `version` */
#define WAL_KIND_INIT 2u     /* theus_state_init_field (version 1, no new version) */
#define WAL_KIND_AUDIT 3u    /* audit records of one commit; never changes the state (below) */

/* Body: u32 delta count, u32 claim (below), then per delta: u32 field, u32 op (0 assign,
 * 1 add), u32 ndim, u32 reserved, ndim x (i64 start, i64 stop), u64 payload bytes, payload
 * (C-contiguous in the region's shape, the field's dtype). */
#define WAL_DELTA_HEAD 16u

/* The claim (u32 at body byte 4 of every kind): what its writer knew durable when it wrote
 * the record — it lets the reader tell the unsynced part of a group commit, which a power
 * cut may persist with holes, from damage to what was durable.
 *   0: every byte before the record in its segment was synced (what a writer before
 *      2026-12-03 wrote in this field, then "reserved 0": its logs keep the strict reading);
 *   n >= 1: the log was synced up to the end of the publish step of commit version
 *      version + 1 - n (version: the record's own), and not known synced after it; n is
 *      at most UINT32_MAX (a claim of an older version than the truth, never a newer one).
 * wal_claim computes it; a reader decodes it into wal_rec.claim_all / durable_version. */
uint32_t wal_claim(uint64_t version, uint64_t synced_version);
/* Set the claim of the whole record at @rec (@len bytes, wal_record_encode's output) to
 * @claim, its body checksum again. */
void wal_record_set_claim(unsigned char *rec, uint64_t len, uint32_t claim);
/* Disk writes are atomic per sector at most: a power cut leaves each 512-byte sector of an
 * unfinished write either old or new (the torn-group reading in wal_next). */
#define WAL_SECTOR 512u

void wal_seg_head_encode(unsigned char out[WAL_SEG_HEAD], uint64_t start);
/* 0 ok (start version in *start), -1 not a theus log segment (reason in @why). */
int wal_seg_head_decode(const unsigned char *buf, uint64_t size, uint64_t *start, char *why,
                        size_t whylen);

typedef struct wal_rec {
    uint32_t kind;
    uint64_t version;
    uint64_t offset;              /* of the record in the segment */
    uint64_t size;                /* whole record, head to trailer */
    const unsigned char *body;    /* borrowed from the buffer */
    uint64_t body_len;
    /* Its claim (above): 1 — every byte before it was synced; else the version up to whose
     * publish step the log was synced (0 when the body is too short to hold a claim: then
     * claim_all). */
    int claim_all;
    uint64_t durable_version;
} wal_rec;

typedef enum wal_scan {
    WAL_SCAN_RECORD = 1,          /* *r holds the record at @off */
    WAL_SCAN_END = 0,             /* @off is the end of the log: the end of the buffer, or
                                     only zero bytes from there on (a preallocated tail) */
    WAL_SCAN_TORN = -1,           /* what starts at @off is a cut or half-written last record */
    WAL_SCAN_CORRUPT = -2         /* a check failed at @off and a valid record follows it */
} wal_scan;

/* Decode the record at @off of a segment of @size bytes; @base_version: the version of the
 * last commit record before @off in the segment (its start version when there is none).
 * Everything from @off on being zero bytes is the END (segments are preallocated with zeros
 * ahead of their records). A record is TORN when the buffer ends inside it, or when it
 * fails its magic, head checksum or body checksum and
 *   - no valid record head (magic, head checksum, known kind) starts anywhere after @off
 *     in the buffer: a last write persisted in part — the rest of it still the
 *     preallocated zeros, past the end of the file, or an earlier sector of it still zeros
 *     and a later one on disk (a power cut during an fdatasync persists the sectors of the
 *     unsynced bytes in any order); or
 *   - records follow, but it is the unsynced part of a group: every valid record after @off
 *     claims nothing durable after base_version's publish step (claim n >= 1 with
 *     version + 1 - n <= @base_version: none was written after a sync of these bytes had
 *     returned, so none was acknowledged), and every damaged span from @off on (a record
 *     that fails a check, up to the next valid head) holds a hole — the bytes from its start
 *     to the end of that sector, or a whole 512-byte sector inside it, all zero: what the
 *     preallocated zeros under a sector that did not reach the disk look like.
 * Then r->offset = @off and r->size (> 0, <= @size - @off) says which bytes it covered: the
 * record's length as its head says, or its head when the head failed, extended to the last
 * non-zero byte after it, cut at the end of the buffer; the caller drops all of it.
 * CORRUPT: a failed check that is neither (bytes that were durable, damaged), an unknown
 * kind. @why says what. Whether a TORN record may be dropped (only at the end of the
 * newest segment) is the caller's decision. */
wal_scan wal_next(const unsigned char *buf, uint64_t size, uint64_t off, uint64_t base_version,
                  wal_rec *r, char *why, size_t whylen);

typedef struct wal_delta {
    uint32_t field, op;
    theus_region r;
    uint64_t nbytes;
    const unsigned char *payload; /* borrowed */
} wal_delta;

typedef struct wal_cursor {
    const unsigned char *p, *end;
    uint32_t left;
} wal_cursor;

/* Start walking a record's deltas: 0, or -1 when the body is too short. */
int wal_deltas_begin(const wal_rec *r, wal_cursor *c, uint32_t *ndeltas, char *why,
                     size_t whylen);
/* The next delta: 1 (in *d), 0 when all were read and the body is used up exactly, -1 for
 * a malformed body (a rank above 8, start > stop, a payload length that is not the
 * region's element count times @esize — the caller's dtype size for field d->field, looked
 * up through @esize_of, which returns 0 for an unknown field — or bytes left over). */
int wal_delta_next(wal_cursor *c, size_t (*esize_of)(void *user, uint32_t field), void *user,
                   wal_delta *d, char *why, size_t whylen);

/* An audit record (kind 3) holds the audit violations of one commit: right after that
 * commit's record (`version` = the commit's version, refused 0), or, for a commit the audit
 * refused, where the log stood (`version` = the version it would have created, refused 1;
 * no commit record of it exists). Recovery checks and skips them; they rebuild nothing.
 * Body: u32 entry count (>= 1), u32 reserved (0), then per entry WAL_AUDIT_ENTRY bytes —
 * u64 seq, u64 element index, u64 value (IEEE-754 double bits), u64 level-B count, u32 rule
 * (0 finite, 1 min, 2 max, 3 max_abs, 4 max_change), u8 level ('S' 'A' 'B' 'C'), u8
 * refused (0/1), u8 process name length, u8 field name length (each <= 63) — then the two
 * names (no NUL). */
#define WAL_AUDIT_ENTRY 40u

typedef struct wal_audit_entry {
    uint64_t seq, index, count;
    double value;
    uint32_t rule;
    char level;
    int refused;
    char process[THEUS_NAME_MAX + 1];  /* NUL-terminated */
    char field[THEUS_NAME_MAX + 1];
} wal_audit_entry;

/* Bytes of the body holding @n entries with these names (wal_audit_encode's output). */
uint64_t wal_audit_body_size(const wal_audit_entry *e, size_t n);
/* Encode @n entries into @out (wal_audit_body_size bytes). */
void wal_audit_encode(unsigned char *out, const wal_audit_entry *e, size_t n);
/* Start walking an audit record's entries: 0, or -1 when the body is too short or holds
 * none. */
int wal_audit_begin(const wal_rec *r, wal_cursor *c, uint32_t *n, char *why, size_t whylen);
/* The next entry: 1 (in *e), 0 when all were read and the body is used up exactly, -1 for
 * a malformed entry (unknown rule or level, refused not 0/1, a name longer than 63 bytes or
 * holding a NUL, bytes cut or left over). */
int wal_audit_next(wal_cursor *c, wal_audit_entry *e, char *why, size_t whylen);

/* A whole record of @kind at @out (WAL_REC_OVERHEAD + @len bytes): head, @body, trailer. */
void wal_record_encode(unsigned char *out, uint32_t kind, uint64_t version,
                       const unsigned char *body, uint64_t len);

/* Little-endian stores and loads. */
static inline void wal_put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline void wal_put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint32_t wal_get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}
static inline uint64_t wal_get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

#endif
