/* Log segment heads and records: encoding of heads, and the checking reader. */
#include "durable/wal_record.h"
#include "durable/crc32c.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char seg_magic[8] = {'T', 'H', 'E', 'U', 'S', 'W', 'A', 'L'};

static void why_set(char *why, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void why_set(char *why, size_t len, const char *fmt, ...)
{
    if (!why || !len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, len, fmt, ap);
    va_end(ap);
}

void wal_seg_head_encode(unsigned char out[WAL_SEG_HEAD], uint64_t start)
{
    memset(out, 0, WAL_SEG_HEAD);
    memcpy(out, seg_magic, 8);
    wal_put32(out + 8, WAL_FORMAT);
    wal_put32(out + 12, WAL_SEG_HEAD);
    wal_put64(out + 16, start);
    wal_put32(out + 24, 0);
    wal_put32(out + 28, crc32c(0, out, 28));
}

int wal_seg_head_decode(const unsigned char *buf, uint64_t size, uint64_t *start, char *why,
                        size_t whylen)
{
    if (size < WAL_SEG_HEAD) {
        why_set(why, whylen, "%llu bytes: shorter than a segment head", (unsigned long long)size);
        return -1;
    }
    if (memcmp(buf, seg_magic, 8) != 0) {
        why_set(why, whylen, "not a theus log (bad magic)");
        return -1;
    }
    if (wal_get32(buf + 28) != crc32c(0, buf, 28)) {
        why_set(why, whylen, "segment head checksum mismatch");
        return -1;
    }
    if (wal_get32(buf + 8) != WAL_FORMAT || wal_get32(buf + 12) != WAL_SEG_HEAD) {
        why_set(why, whylen, "log format %u is not %u", wal_get32(buf + 8), WAL_FORMAT);
        return -1;
    }
    *start = wal_get64(buf + 16);
    return 0;
}

static int all_zero(const unsigned char *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* Whether a valid record head (magic, head checksum, known kind) starts at @p (@n bytes
 * available). */
static int head_valid(const unsigned char *p, uint64_t n)
{
    if (n < WAL_REC_HEAD || wal_get32(p) != WAL_REC_MAGIC || wal_get32(p + 24) != crc32c(0, p, 24))
        return 0;
    uint32_t kind = wal_get32(p + 4);
    return kind == WAL_KIND_COMMIT || kind == WAL_KIND_INIT || kind == WAL_KIND_AUDIT;
}

/* The first valid record head at or after @from, or @size when there is none. */
static uint64_t next_head(const unsigned char *buf, uint64_t size, uint64_t from)
{
    for (uint64_t at = from; at + WAL_REC_HEAD <= size; at++) {
        const unsigned char *q = memchr(buf + at, WAL_REC_MAGIC & 0xffu, size - at);
        if (!q)
            break;
        at = (uint64_t)(q - buf);
        if (head_valid(q, size - at))
            return at;
    }
    return size;
}

uint32_t wal_claim(uint64_t version, uint64_t synced_version)
{
    if (synced_version > version)
        return 1; /* claims `version` only: less than the truth, which is allowed */
    uint64_t n = version + 1 - synced_version;
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

void wal_record_set_claim(unsigned char *rec, uint64_t len, uint32_t claim)
{
    uint64_t body = wal_get64(rec + 16);
    if (len < WAL_REC_OVERHEAD || body != len - WAL_REC_OVERHEAD || body < 8)
        return;
    wal_put32(rec + WAL_REC_HEAD + 4, claim);
    wal_put32(rec + WAL_REC_HEAD + body, crc32c(0, rec + WAL_REC_HEAD, (size_t)body));
}

/* What starts at @off, before the torn-or-corrupt judgement. */
typedef enum rec_state {
    REC_OK,        /* *r: a valid record */
    REC_END,       /* only zeros from @off on */
    REC_CUT,       /* the buffer ends inside it: r->offset / r->size cover what is there */
    REC_DAMAGED,   /* a failed check: its bytes end at *from as far as it can tell */
    REC_UNKNOWN    /* a valid head of an unknown kind */
} rec_state;

static rec_state decode_at(const unsigned char *buf, uint64_t size, uint64_t off, wal_rec *r,
                           uint64_t *from, char *why, size_t whylen)
{
    memset(r, 0, sizeof *r);
    uint64_t left = size - off;
    const unsigned char *p = buf + off;
    if (all_zero(p, left)) {
        /* A preallocated segment's zero-filled tail (or a file grown by a crash before its
         * record reached the disk: the same thing, nothing of a record there). */
        why_set(why, whylen, "%llu zero bytes at the end", (unsigned long long)left);
        return REC_END;
    }
    if (left < WAL_REC_HEAD) {
        why_set(why, whylen, "record head cut after %llu bytes", (unsigned long long)left);
        r->offset = off;
        r->size = left;
        return REC_CUT;
    }
    *from = off + WAL_REC_HEAD;
    if (wal_get32(p) != WAL_REC_MAGIC) {
        why_set(why, whylen, "bad record magic");
        return REC_DAMAGED;
    }
    if (wal_get32(p + 24) != crc32c(0, p, 24)) {
        why_set(why, whylen, "record head checksum mismatch");
        return REC_DAMAGED;
    }
    uint32_t kind = wal_get32(p + 4);
    if (kind != WAL_KIND_COMMIT && kind != WAL_KIND_INIT && kind != WAL_KIND_AUDIT) {
        why_set(why, whylen, "unknown record kind %u", kind);
        return REC_UNKNOWN;
    }
    uint64_t body_len = wal_get64(p + 16);
    if (body_len > left - WAL_REC_HEAD || left - WAL_REC_HEAD - body_len < 4) {
        why_set(why, whylen, "record of version %llu cut (%llu body bytes, %llu left)",
                (unsigned long long)wal_get64(p + 8), (unsigned long long)body_len,
                (unsigned long long)(left - WAL_REC_HEAD));
        r->offset = off;
        r->size = left;
        return REC_CUT;
    }
    const unsigned char *body = p + WAL_REC_HEAD;
    uint64_t total = WAL_REC_OVERHEAD + body_len;
    if (wal_get32(body + body_len) != crc32c(0, body, (size_t)body_len)) {
        why_set(why, whylen, "record of version %llu: body checksum mismatch",
                (unsigned long long)wal_get64(p + 8));
        *from = off + total;
        return REC_DAMAGED;
    }
    r->kind = kind;
    r->version = wal_get64(p + 8);
    r->offset = off;
    r->size = total;
    r->body = body;
    r->body_len = body_len;
    uint32_t n = body_len >= 8 ? wal_get32(body + 4) : 0;
    r->claim_all = n == 0;
    r->durable_version = n && r->version + 1 >= n ? r->version + 1 - n : 0;
    return REC_OK;
}

/* Whether the damaged span [from, to) holds a hole: the bytes from @from to the end of its
 * sector (or @to) all zero, or a whole sector inside it all zero. */
static int span_has_hole(const unsigned char *buf, uint64_t from, uint64_t to)
{
    uint64_t first_end = (from / WAL_SECTOR + 1) * WAL_SECTOR;
    if (all_zero(buf + from, (first_end < to ? first_end : to) - from))
        return 1;
    for (uint64_t s = first_end; s + WAL_SECTOR <= to; s += WAL_SECTOR)
        if (all_zero(buf + s, WAL_SECTOR))
            return 1;
    return 0;
}

static void why_add(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void why_add(char *why, size_t whylen, const char *fmt, ...)
{
    size_t n = why ? strlen(why) : 0;
    if (!why || n >= whylen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why + n, whylen - n, fmt, ap);
    va_end(ap);
}

/* A record at @off failed a check; @from is where its bytes end as far as it can tell (its
 * head, or the whole record). Torn or corrupt as wal_next says: the torn last write when
 * no valid record head follows it, the unsynced part of a group when everything after it
 * claims nothing durable past @base and every damaged span holds a hole; then it covers
 * @off to the end of its bytes or of the non-zero data after it, whichever is further. */
static wal_scan torn_or_corrupt(const unsigned char *buf, uint64_t size, uint64_t off,
                                uint64_t from, uint64_t base, wal_rec *r, char *why,
                                size_t whylen)
{
    if (from > size)
        from = size;
    uint64_t at = next_head(buf, size, off + 1), damaged = off;
    int group = at < size;
    while (at < size) {
        if (!span_has_hole(buf, damaged, at)) {
            why_add(why, whylen, ", with a valid record at byte %llu after it",
                    (unsigned long long)at);
            return WAL_SCAN_CORRUPT;
        }
        /* The records from here on, up to the next damaged one (or the end). */
        for (;;) {
            wal_rec q;
            uint64_t qfrom = at;
            rec_state d = decode_at(buf, size, at, &q, &qfrom, NULL, 0);
            if (d == REC_END || d == REC_CUT) {
                at = size;
                break;
            }
            if (d == REC_OK) {
                if (q.claim_all || q.durable_version > base) {
                    why_add(why, whylen, ", with a valid record at byte %llu after it "
                            "(version %llu) written when the bytes at %llu were durable",
                            (unsigned long long)at, (unsigned long long)q.version,
                            (unsigned long long)off);
                    return WAL_SCAN_CORRUPT;
                }
                at += q.size;
                continue;
            }
            /* Damaged too (REC_UNKNOWN cannot start at a valid head): its span runs to the
             * next valid head; none means it is the torn last write. */
            damaged = at;
            at = next_head(buf, size, at + 1);
            break;
        }
    }
    uint64_t end = size;
    while (end > from && buf[end - 1] == 0)
        end--;
    r->offset = off;
    r->size = end - off;
    if (group)
        why_add(why, whylen, "; the records after it are of the same unsynced group (none "
                "claims a sync past version %llu)", (unsigned long long)base);
    return WAL_SCAN_TORN;
}

wal_scan wal_next(const unsigned char *buf, uint64_t size, uint64_t off, uint64_t base_version,
                  wal_rec *r, char *why, size_t whylen)
{
    memset(r, 0, sizeof *r);
    if (off >= size)
        return off == size ? WAL_SCAN_END : WAL_SCAN_CORRUPT;
    uint64_t from = off;
    switch (decode_at(buf, size, off, r, &from, why, whylen)) {
    case REC_OK:
        return WAL_SCAN_RECORD;
    case REC_END:
        return WAL_SCAN_END;
    case REC_CUT:
        return WAL_SCAN_TORN;
    case REC_UNKNOWN:
        return WAL_SCAN_CORRUPT;
    case REC_DAMAGED:
        break;
    }
    return torn_or_corrupt(buf, size, off, from, base_version, r, why, whylen);
}

/* A body is a count, 4 bytes of padding, then the items: start @c at the first. */
static uint32_t cursor_start(const wal_rec *r, wal_cursor *c)
{
    c->p = r->body + 8;
    c->end = r->body + r->body_len;
    c->left = wal_get32(r->body);
    return c->left;
}

/* Before an item of at least @head bytes: 0 when all items were read and nothing follows,
 * 1 when the next item's @head bytes are there (*@avail: the bytes left), -1 with @why on
 * bytes after the last @item, or @cut when the head is cut short. */
static int cursor_next_head(const wal_cursor *c, uint64_t head, const char *item,
                            const char *cut, uint64_t *avail, char *why, size_t whylen)
{
    *avail = (uint64_t)(c->end - c->p);
    if (c->left == 0) {
        if (*avail != 0) {
            why_set(why, whylen, "%llu bytes after the last %s", (unsigned long long)*avail,
                    item);
            return -1;
        }
        return 0;
    }
    if (*avail < head) {
        why_set(why, whylen, "%s", cut);
        return -1;
    }
    return 1;
}

int wal_deltas_begin(const wal_rec *r, wal_cursor *c, uint32_t *ndeltas, char *why,
                     size_t whylen)
{
    if (r->body_len < 8) {
        why_set(why, whylen, "record body of %llu bytes is too short",
                (unsigned long long)r->body_len);
        return -1;
    }
    *ndeltas = cursor_start(r, c);
    return 0;
}

int wal_delta_next(wal_cursor *c, size_t (*esize_of)(void *user, uint32_t field), void *user,
                   wal_delta *d, char *why, size_t whylen)
{
    memset(d, 0, sizeof *d);
    uint64_t avail;
    int at = cursor_next_head(c, WAL_DELTA_HEAD, "delta", "delta head cut", &avail, why, whylen);
    if (at <= 0)
        return at;
    d->field = wal_get32(c->p);
    d->op = wal_get32(c->p + 4);
    uint32_t ndim = wal_get32(c->p + 8);
    if (d->op > 1 || ndim > THEUS_MAX_DIMS) {
        why_set(why, whylen, "delta with op %u, rank %u", d->op, ndim);
        return -1;
    }
    uint64_t need = WAL_DELTA_HEAD + 16ull * ndim + 8;
    if (avail < need) {
        why_set(why, whylen, "delta region cut");
        return -1;
    }
    const unsigned char *q = c->p + WAL_DELTA_HEAD;
    d->r.ndim = (int)ndim;
    uint64_t nel = 1;
    for (uint32_t k = 0; k < ndim; k++) {
        d->r.start[k] = (int64_t)wal_get64(q + 16 * k);
        d->r.stop[k] = (int64_t)wal_get64(q + 16 * k + 8);
        if (d->r.start[k] < 0 || d->r.stop[k] < d->r.start[k]) {
            why_set(why, whylen, "delta region dimension %u is [%lld, %lld)", k,
                    (long long)d->r.start[k], (long long)d->r.stop[k]);
            return -1;
        }
        uint64_t ext = (uint64_t)(d->r.stop[k] - d->r.start[k]);
        if (ext && nel > UINT64_MAX / ext) {
            why_set(why, whylen, "delta region too large");
            return -1;
        }
        nel *= ext;
    }
    d->nbytes = wal_get64(q + 16 * ndim);
    size_t es = esize_of(user, d->field);
    if (es == 0) {
        why_set(why, whylen, "delta of unknown field %u", d->field);
        return -1;
    }
    if (nel > UINT64_MAX / es || d->nbytes != nel * es || d->nbytes > avail - need) {
        why_set(why, whylen, "delta payload of %llu bytes does not match its region",
                (unsigned long long)d->nbytes);
        return -1;
    }
    d->payload = c->p + need;
    c->p += need + d->nbytes;
    c->left--;
    return 1;
}

/* ---- audit records ------------------------------------------------------------------ */

uint64_t wal_audit_body_size(const wal_audit_entry *e, size_t n)
{
    uint64_t size = 8;
    for (size_t i = 0; i < n; i++)
        size += WAL_AUDIT_ENTRY + strnlen(e[i].process, THEUS_NAME_MAX) +
                strnlen(e[i].field, THEUS_NAME_MAX);
    return size;
}

void wal_audit_encode(unsigned char *out, const wal_audit_entry *e, size_t n)
{
    wal_put32(out, (uint32_t)n);
    wal_put32(out + 4, 0);
    unsigned char *p = out + 8;
    for (size_t i = 0; i < n; i++) {
        size_t pl = strnlen(e[i].process, THEUS_NAME_MAX), fl = strnlen(e[i].field, THEUS_NAME_MAX);
        uint64_t bits;
        memcpy(&bits, &e[i].value, sizeof bits);
        wal_put64(p, e[i].seq);
        wal_put64(p + 8, e[i].index);
        wal_put64(p + 16, bits);
        wal_put64(p + 24, e[i].count);
        wal_put32(p + 32, e[i].rule);
        p[36] = (unsigned char)e[i].level;
        p[37] = e[i].refused ? 1 : 0;
        p[38] = (unsigned char)pl;
        p[39] = (unsigned char)fl;
        memcpy(p + WAL_AUDIT_ENTRY, e[i].process, pl);
        memcpy(p + WAL_AUDIT_ENTRY + pl, e[i].field, fl);
        p += WAL_AUDIT_ENTRY + pl + fl;
    }
}

int wal_audit_begin(const wal_rec *r, wal_cursor *c, uint32_t *n, char *why, size_t whylen)
{
    if (r->body_len < 8 || wal_get32(r->body) == 0) {
        why_set(why, whylen, "audit record body of %llu bytes holds no entry",
                (unsigned long long)r->body_len);
        return -1;
    }
    *n = cursor_start(r, c);
    return 0;
}

static int name_ok(const unsigned char *p, size_t n)
{
    return memchr(p, 0, n) == NULL;
}

int wal_audit_next(wal_cursor *c, wal_audit_entry *e, char *why, size_t whylen)
{
    memset(e, 0, sizeof *e);
    uint64_t avail;
    int at = cursor_next_head(c, WAL_AUDIT_ENTRY, "audit entry", "audit entry cut", &avail, why,
                              whylen);
    if (at <= 0)
        return at;
    const unsigned char *p = c->p;
    size_t pl = p[38], fl = p[39];
    uint64_t bits = wal_get64(p + 16);
    e->seq = wal_get64(p);
    e->index = wal_get64(p + 8);
    memcpy(&e->value, &bits, sizeof bits);
    e->count = wal_get64(p + 24);
    e->rule = wal_get32(p + 32);
    e->level = (char)p[36];
    e->refused = p[37];
    if (e->rule > 4 || !strchr("SABC", e->level) || e->level == 0 || p[37] > 1 ||
        pl > THEUS_NAME_MAX || fl > THEUS_NAME_MAX || fl == 0) {
        why_set(why, whylen, "audit entry with rule %u, level %u, refused %u, names of %zu and "
                "%zu bytes", e->rule, (unsigned)p[36], (unsigned)p[37], pl, fl);
        return -1;
    }
    if (avail - WAL_AUDIT_ENTRY < pl + fl) {
        why_set(why, whylen, "audit entry names cut");
        return -1;
    }
    if (!name_ok(p + WAL_AUDIT_ENTRY, pl) || !name_ok(p + WAL_AUDIT_ENTRY + pl, fl)) {
        why_set(why, whylen, "audit entry name holding a NUL byte");
        return -1;
    }
    memcpy(e->process, p + WAL_AUDIT_ENTRY, pl);
    memcpy(e->field, p + WAL_AUDIT_ENTRY + pl, fl);
    c->p += WAL_AUDIT_ENTRY + pl + fl;
    c->left--;
    return 1;
}

void wal_record_encode(unsigned char *out, uint32_t kind, uint64_t version,
                       const unsigned char *body, uint64_t len)
{
    wal_put32(out, WAL_REC_MAGIC);
    wal_put32(out + 4, kind);
    wal_put64(out + 8, version);
    wal_put64(out + 16, len);
    wal_put32(out + 24, crc32c(0, out, 24));
    if (len && body != out + WAL_REC_HEAD)
        memmove(out + WAL_REC_HEAD, body, (size_t)len);
    wal_put32(out + WAL_REC_HEAD + len, crc32c(0, out + WAL_REC_HEAD, (size_t)len));
}
