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

wal_scan wal_next(const unsigned char *buf, uint64_t size, uint64_t off, wal_rec *r, char *why,
                  size_t whylen)
{
    memset(r, 0, sizeof *r);
    if (off >= size)
        return off == size ? WAL_SCAN_END : WAL_SCAN_CORRUPT;
    uint64_t left = size - off;
    const unsigned char *p = buf + off;
    if (all_zero(p, left)) {
        why_set(why, whylen, "%llu zero bytes at the end", (unsigned long long)left);
        return WAL_SCAN_TORN;
    }
    if (left < WAL_REC_HEAD) {
        why_set(why, whylen, "record head cut after %llu bytes", (unsigned long long)left);
        return WAL_SCAN_TORN;
    }
    if (wal_get32(p) != WAL_REC_MAGIC) {
        why_set(why, whylen, "bad record magic");
        return WAL_SCAN_CORRUPT;
    }
    if (wal_get32(p + 24) != crc32c(0, p, 24)) {
        why_set(why, whylen, "record head checksum mismatch");
        return WAL_SCAN_CORRUPT;
    }
    uint32_t kind = wal_get32(p + 4);
    if (kind != WAL_KIND_COMMIT && kind != WAL_KIND_INIT) {
        why_set(why, whylen, "unknown record kind %u", kind);
        return WAL_SCAN_CORRUPT;
    }
    uint64_t body_len = wal_get64(p + 16);
    if (body_len > left - WAL_REC_HEAD || left - WAL_REC_HEAD - body_len < 4) {
        why_set(why, whylen, "record of version %llu cut (%llu body bytes, %llu left)",
                (unsigned long long)wal_get64(p + 8), (unsigned long long)body_len,
                (unsigned long long)(left - WAL_REC_HEAD));
        return WAL_SCAN_TORN;
    }
    const unsigned char *body = p + WAL_REC_HEAD;
    uint64_t total = WAL_REC_OVERHEAD + body_len;
    if (wal_get32(body + body_len) != crc32c(0, body, (size_t)body_len)) {
        why_set(why, whylen, "record of version %llu: body checksum mismatch",
                (unsigned long long)wal_get64(p + 8));
        return total == left ? WAL_SCAN_TORN : WAL_SCAN_CORRUPT;
    }
    r->kind = kind;
    r->version = wal_get64(p + 8);
    r->offset = off;
    r->size = total;
    r->body = body;
    r->body_len = body_len;
    return WAL_SCAN_RECORD;
}

int wal_deltas_begin(const wal_rec *r, wal_cursor *c, uint32_t *ndeltas, char *why,
                     size_t whylen)
{
    if (r->body_len < 8) {
        why_set(why, whylen, "record body of %llu bytes is too short",
                (unsigned long long)r->body_len);
        return -1;
    }
    c->p = r->body + 8;
    c->end = r->body + r->body_len;
    c->left = wal_get32(r->body);
    *ndeltas = c->left;
    return 0;
}

int wal_delta_next(wal_cursor *c, size_t (*esize_of)(void *user, uint32_t field), void *user,
                   wal_delta *d, char *why, size_t whylen)
{
    memset(d, 0, sizeof *d);
    uint64_t avail = (uint64_t)(c->end - c->p);
    if (c->left == 0) {
        if (avail != 0) {
            why_set(why, whylen, "%llu bytes after the last delta", (unsigned long long)avail);
            return -1;
        }
        return 0;
    }
    if (avail < WAL_DELTA_HEAD) {
        why_set(why, whylen, "delta head cut");
        return -1;
    }
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
