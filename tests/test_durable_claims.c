/* The records' claims (src/durable/wal_record.h): every record says what its writer knew
 * synced when it wrote it, and the reader takes a hole (zero sectors) before records that
 * claim nothing past it for the unsynced part of a group — a torn tail — and anything else
 * before a later record for corruption. The reader on hand-built segments first, then logs
 * written by durable states under each sync policy, damaged as a power cut (or a disk)
 * would. */
#include "durable/wal_record.h"
#include "durable_fixture.h"
#include "theus/theus.h"
#include "theus/theus_durable.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void setup(void)
{
    cr_assert_eq(dfx_make(NULL, "test-claims", 0), 0, "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
    dfx_cleanup();
}

TestSuite(claims, .init = setup, .fini = teardown);

/* ---- the reader on hand-built segments ------------------------------------------------ */

#define SEG_BYTES 16384u
#define BODY 1500u

typedef struct segbuf {
    unsigned char b[SEG_BYTES];
    uint64_t off[8];    /* record offsets */
    uint64_t size[8];
    int n;
    uint64_t end;
} segbuf;

/* A commit record of @version whose body (no deltas: the reader does not parse them) is
 * BODY non-zero bytes, with @claim. */
static void add_rec(segbuf *s, uint64_t version, uint32_t claim)
{
    unsigned char *r = s->b + s->end;
    unsigned char *body = r + WAL_REC_HEAD;
    memset(body, 0, 8);
    for (uint32_t i = 8; i < BODY; i++)
        body[i] = (unsigned char)(((i * 7u + (uint32_t)version) % 255u) + 1u);
    wal_record_encode(r, WAL_KIND_COMMIT, version, body, BODY);
    wal_record_set_claim(r, WAL_REC_OVERHEAD + BODY, claim);
    s->off[s->n] = s->end;
    s->size[s->n++] = WAL_REC_OVERHEAD + BODY;
    s->end += WAL_REC_OVERHEAD + BODY;
}

/* Records of versions 2..5 in a segment starting at 1: the first claims everything before
 * it synced (0), the others claim version @w (wal_claim), as a group whose sync had not
 * returned when they were written. */
static void build(segbuf *s, uint64_t w)
{
    memset(s, 0, sizeof *s);
    wal_seg_head_encode(s->b, 1);
    s->end = WAL_SEG_HEAD;
    add_rec(s, 2, 0);
    for (uint64_t v = 3; v <= 5; v++)
        add_rec(s, v, wal_claim(v, w));
}

/* The first whole sector inside record @k. */
static uint64_t inner_sector(const segbuf *s, int k)
{
    uint64_t at = (s->off[k] + WAL_SECTOR - 1) / WAL_SECTOR * WAL_SECTOR;
    cr_assert_leq(at + WAL_SECTOR, s->off[k] + s->size[k]);
    return at;
}

/* Walk @s as recovery does; the records read in *nread, the offset and result that ended
 * the walk. */
static wal_scan walk(const segbuf *s, int *nread, uint64_t *at, wal_rec *r, char *why, size_t n)
{
    uint64_t off = WAL_SEG_HEAD, base = 1;
    wal_scan sc;
    *nread = 0;
    while ((sc = wal_next(s->b, SEG_BYTES, off, base, r, why, n)) == WAL_SCAN_RECORD) {
        cr_assert_eq(r->offset, off);
        if (r->kind == WAL_KIND_COMMIT)
            base = r->version;
        off += r->size;
        (*nread)++;
    }
    *at = off;
    return sc;
}

Test(claims, claim_encoding)
{
    cr_expect_eq(wal_claim(5, 3), 3, "synced up to version 3: 5 + 1 - 3");
    cr_expect_eq(wal_claim(5, 5), 1);
    cr_expect_eq(wal_claim(5, 9), 1, "never a claim past the record's own version");
    cr_expect_eq(wal_claim(1ull << 40, 0), UINT32_MAX, "saturates: claims less, not more");
    segbuf s;
    build(&s, 2);
    wal_rec r;
    char why[256];
    cr_assert_eq(wal_next(s.b, SEG_BYTES, s.off[0], 1, &r, why, sizeof why), WAL_SCAN_RECORD,
                 "%s", why);
    cr_expect(r.claim_all);
    cr_assert_eq(wal_next(s.b, SEG_BYTES, s.off[2], 3, &r, why, sizeof why), WAL_SCAN_RECORD,
                 "%s", why);
    cr_expect(!r.claim_all);
    cr_expect_eq(r.durable_version, 2);
    cr_expect_eq(r.version, 4);
}

Test(claims, intact_segment_reads_to_its_zero_tail)
{
    segbuf s;
    build(&s, 2);
    int n;
    uint64_t at;
    wal_rec r;
    char why[256];
    cr_assert_eq(walk(&s, &n, &at, &r, why, sizeof why), WAL_SCAN_END, "%s", why);
    cr_expect_eq(n, 4);
    cr_expect_eq(at, s.end);
}

Test(claims, hole_before_records_of_the_unsynced_group_is_a_torn_tail)
{
    for (int variant = 0; variant < 3; variant++) {
        segbuf s;
        build(&s, 2);
        if (variant == 0) {
            memset(s.b + inner_sector(&s, 1), 0, WAL_SECTOR); /* a middle sector of v3 */
        } else if (variant == 1) {
            /* v3's head sector never reached the disk: zeros from its start to the sector's
             * end (the bytes before it, v2's, were synced and are the same either way). */
            uint64_t stop = (s.off[1] / WAL_SECTOR + 1) * WAL_SECTOR;
            memset(s.b + s.off[1], 0, stop - s.off[1]);
        } else {
            /* two holes, v3's and v5's, a whole record (v4) between them */
            memset(s.b + inner_sector(&s, 1), 0, WAL_SECTOR);
            memset(s.b + inner_sector(&s, 3), 0, WAL_SECTOR);
        }
        int n;
        uint64_t at;
        wal_rec r;
        char why[512];
        cr_assert_eq(walk(&s, &n, &at, &r, why, sizeof why), WAL_SCAN_TORN, "variant %d: %s",
                     variant, why);
        cr_expect_eq(n, 1, "variant %d: v2 only", variant);
        cr_expect_eq(at, s.off[1]);
        cr_expect_eq(r.offset, s.off[1]);
        cr_expect_eq(r.offset + r.size, s.end, "variant %d: it covers the group to its end",
                     variant);
        cr_expect_not_null(strstr(why, "unsynced group"), "%s", why);
    }
}

Test(claims, damage_that_was_durable_is_corruption)
{
    for (int variant = 0; variant < 4; variant++) {
        segbuf s;
        build(&s, 2);
        const char *what;
        if (variant == 0) {
            /* a later record claims v3's bytes synced: v4 written after v3's sync returned */
            add_rec(&s, 6, wal_claim(6, 3));
            memset(s.b + inner_sector(&s, 1), 0, WAL_SECTOR);
            what = "claimed synced";
        } else if (variant == 1) {
            /* a later record claims everything before it (a lone writer's) */
            add_rec(&s, 6, 0);
            memset(s.b + inner_sector(&s, 1), 0, WAL_SECTOR);
            what = "claim 0";
        } else if (variant == 2) {
            s.b[s.off[1] + 700] ^= 0x5a; /* a flipped byte: no hole */
            what = "flip";
        } else {
            /* v3's hole is a power cut's, v5's damage (a record follows it) is not */
            add_rec(&s, 6, wal_claim(6, 2));
            memset(s.b + inner_sector(&s, 1), 0, WAL_SECTOR);
            s.b[s.off[3] + 900] ^= 0x01;
            what = "hole then flip";
        }
        int n;
        uint64_t at;
        wal_rec r;
        char why[512];
        cr_assert_eq(walk(&s, &n, &at, &r, why, sizeof why), WAL_SCAN_CORRUPT, "%s: %s", what,
                     why);
        cr_expect_eq(n, 1, "%s", what);
        cr_expect_eq(at, s.off[1], "%s", what);
        cr_expect_not_null(strstr(why, "after it"), "%s: %s", what, why);
    }
}

Test(claims, cut_anywhere_in_the_last_record_is_torn)
{
    segbuf s;
    build(&s, 2);
    static unsigned char copy[SEG_BYTES];
    for (uint64_t cut = s.off[3] + 1; cut < s.end; cut += 37) {
        memcpy(copy, s.b, SEG_BYTES);
        memset(copy + cut, 0, SEG_BYTES - cut);
        wal_rec r;
        char why[256];
        cr_expect_eq(wal_next(copy, SEG_BYTES, s.off[3], 4, &r, why, sizeof why),
                     WAL_SCAN_TORN, "cut at %llu: %s", (unsigned long long)cut, why);
    }
}

/* ---- logs written by durable states ----------------------------------------------------- */

static const char *wide = "{\"name\": \"wide\", \"fields\": {"
                          "\"counter\": {\"dtype\": \"i64\", \"shape\": []},"
                          "\"w\": {\"dtype\": \"u64\", \"shape\": [256]}}}";

/* counter += 1, w = tag * 1000003 + i: a record of about 2 KiB (again on a conflict with
 * another writer's). */
static void wide_step(theus_state *st, uint64_t tag)
{
    uint64_t w[256];
    for (size_t i = 0; i < 256; i++)
        w[i] = tag * 1000003u + i + 1;
    int64_t one = 1;
    int rc;
    do {
        theus_tx *tx = NULL;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_add(tx, "counter", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_write(tx, "w", NULL, w, THEUS_MEM_HOST), THEUS_OK);
        rc = theus_tx_commit(tx, NULL);
    } while (rc == THEUS_ECONFLICT);
    cr_assert_eq(rc, THEUS_OK, "%s", theus_last_error_message());
}

static void read_field(theus_state *st, const char *name, void *out)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, name, NULL, out, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
}

/* The state at @want: counter want - 1, and w the values some commit wrote as a whole. */
static void wide_check(theus_state *st, uint64_t want)
{
    cr_assert_eq(theus_state_version(st), want);
    int64_t c;
    uint64_t w[256];
    read_field(st, "counter", &c);
    read_field(st, "w", w);
    cr_assert_eq((uint64_t)c, want - 1);
    uint64_t tag = (w[0] - 1) / 1000003u;
    for (size_t i = 0; i < 256; i++)
        cr_assert_eq(w[i], tag * 1000003u + i + 1, "w[%zu] torn at version %llu", i,
                     (unsigned long long)want);
}

static unsigned char *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(n > 0 ? (size_t)n : 1);
    cr_assert_not_null(p);
    cr_assert_eq(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return p;
}

static void write_all(const char *path, const unsigned char *p, size_t size)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fwrite(p, 1, size, f), size);
    cr_assert_eq(fclose(f), 0);
}

typedef struct logrec {
    uint64_t off, size, version, durable_version;
    int claim_all, kind;
} logrec;

/* The records of segment @img as the reader returns them (all valid: the walk must end at
 * the zero tail). */
static int log_records(const unsigned char *img, size_t size, logrec *out, int max)
{
    uint64_t start, off = WAL_SEG_HEAD;
    char why[256];
    cr_assert_eq(wal_seg_head_decode(img, size, &start, why, sizeof why), 0, "%s", why);
    uint64_t base = start;
    int n = 0;
    wal_rec r;
    wal_scan sc;
    while ((sc = wal_next(img, size, off, base, &r, why, sizeof why)) == WAL_SCAN_RECORD) {
        cr_assert_lt(n, max);
        out[n++] = (logrec){.off = off, .size = r.size, .version = r.version,
                            .durable_version = r.durable_version, .claim_all = r.claim_all,
                            .kind = (int)r.kind};
        if (r.kind == WAL_KIND_COMMIT)
            base = r.version;
        off += r.size;
    }
    cr_assert_eq(sc, WAL_SCAN_END, "%s", why);
    return n;
}

#define MAXREC 1024

/* The first segment of the directory: its path in @seg, its bytes (the caller frees them)
 * and its records in @rec (*n of them). */
static unsigned char *first_segment(char *seg, size_t cap, size_t *size, logrec *rec, int *n)
{
    snprintf(seg, cap, "%s/wal-0000000000000001.log", dfx_dir);
    unsigned char *img = read_all(seg, size);
    *n = log_records(img, *size, rec, MAXREC);
    return img;
}

/* Damage a whole sector inside record @k of the first segment and reopen: torn (the state
 * of the record before it, the torn offset reported) or THEUS_ECORRUPT naming the file. */
static void damage_and_reopen(int k, int flip, int expect_torn, const char *what)
{
    char seg[600];
    size_t size;
    static logrec rec[MAXREC];
    int n;
    unsigned char *img = first_segment(seg, sizeof seg, &size, rec, &n);
    cr_assert_lt(k, n);
    uint64_t at = (rec[k].off + WAL_SECTOR - 1) / WAL_SECTOR * WAL_SECTOR;
    cr_assert_leq(at + WAL_SECTOR, rec[k].off + rec[k].size, "%s: a sector inside", what);
    if (flip)
        img[at + 100] ^= 0x5a;
    else
        memset(img + at, 0, WAL_SECTOR);
    write_all(seg, img, size);
    free(img);
    theus_state *r = NULL;
    int rc = theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &r);
    if (!expect_torn) {
        cr_assert_eq(rc, THEUS_ECORRUPT, "%s: %s", what, theus_last_error_message());
        cr_expect_not_null(strstr(theus_last_error_message(), "wal-0000000000000001.log"));
        cr_expect_not_null(strstr(theus_last_error_message(), "byte "));
        return;
    }
    cr_assert_eq(rc, THEUS_OK, "%s: %s", what, theus_last_error_message());
    uint64_t want = k ? rec[k - 1].version : 1;
    wide_check(r, want);
    theus_durable_info info;
    cr_assert_eq(theus_state_durable_info(r, &info), THEUS_OK);
    cr_expect_eq(info.torn_offset, rec[k].off, "%s", what);
    cr_expect_gt(info.torn_bytes, 0);
    /* The log goes on from there, and reopens clean. */
    wide_step(r, 7777);
    theus_state_destroy(r);
    cr_assert_eq(theus_state_open_durable(dfx_dir, NULL, NULL, NULL, &r), THEUS_OK, "%s: %s",
                 what, theus_last_error_message());
    wide_check(r, want + 1);
    theus_durable_info again;
    cr_assert_eq(theus_state_durable_info(r, &again), THEUS_OK);
    cr_expect_eq(again.torn_bytes, 0);
    theus_state_destroy(r);
}

typedef struct writer_arg {
    theus_state *st;
    int per, id;
} writer_arg;

static void *writer(void *p)
{
    writer_arg *a = p;
    for (int i = 0; i < a->per; i++)
        wide_step(a->st, (uint64_t)(a->id * 100000 + i));
    return NULL;
}

/* @threads writers of @per commits each on a fresh durable state under @sync, closed. */
static void write_log(theus_sync sync, int threads, int per)
{
    dfx_rm_tree(dfx_dir);
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = sync;
    theus_state *st = NULL;
    cr_assert_eq(theus_state_open_durable(dfx_dir, wide, NULL, &o, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    pthread_t th[8];
    writer_arg a[8];
    for (int i = 0; i < threads; i++) {
        a[i] = (writer_arg){.st = st, .per = per, .id = i + 1};
        cr_assert_eq(pthread_create(&th[i], NULL, writer, &a[i]), 0);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(theus_state_version(st), 1 + (uint64_t)threads * (uint64_t)per);
    theus_state_destroy(st);
}

Test(claims, a_lone_writer_claims_everything_before_each_record)
{
    /* Under THEUS_SYNC_COMMIT, and under THEUS_SYNC_GROUP with one writer, each record is
     * written after the previous one's sync returned: a hole in the middle is corruption. */
    theus_sync pol[2] = {THEUS_SYNC_COMMIT, THEUS_SYNC_GROUP};
    for (int p = 0; p < 2; p++) {
        write_log(pol[p], 1, 6);
        char seg[600];
        size_t size;
        static logrec rec[MAXREC];
        int n;
        unsigned char *img = first_segment(seg, sizeof seg, &size, rec, &n);
        free(img);
        cr_assert_eq(n, 6);
        for (int i = 0; i < n; i++)
            cr_expect(rec[i].claim_all, "policy %d, record %d", (int)pol[p], i);
        damage_and_reopen(2, 0, 0, pol[p] == THEUS_SYNC_COMMIT ? "commit" : "group, alone");
    }
}

Test(claims, sync_none_records_claim_nothing_synced)
{
    /* Nothing is synced by a commit under THEUS_SYNC_NONE: a hole in the middle reads as
     * the torn tail a power cut leaves (NONE promises nothing across one); a flipped byte is
     * still corruption. */
    write_log(THEUS_SYNC_NONE, 1, 6);
    damage_and_reopen(3, 0, 1, "none, hole");
    write_log(THEUS_SYNC_NONE, 1, 6);
    damage_and_reopen(3, 1, 0, "none, flip");
}

Test(claims, group_log_of_four_writers_says_where_its_last_group_begins)
{
    write_log(THEUS_SYNC_GROUP, 4, 40);
    char seg[600];
    size_t size;
    static logrec rec[MAXREC];
    int n;
    unsigned char *img = first_segment(seg, sizeof seg, &size, rec, &n);
    cr_assert_eq(n, 160);
    /* Claims only ever grow, and never reach the record's own version. */
    uint64_t seen = 0;
    for (int i = 0; i < n; i++) {
        if (rec[i].claim_all)
            continue;
        cr_expect_lt(rec[i].durable_version, rec[i].version, "record %d", i);
        cr_expect_geq(rec[i].durable_version, seen, "record %d", i);
        seen = rec[i].durable_version;
    }
    /* The earliest record k from which no later record claims past the commit before k: a
     * power cut's hole there is the unsynced group's torn tail; one record earlier (when
     * some record after it claims it synced) it is corruption. Computed from the log
     * itself: which records formed groups depends on the scheduling. */
    int k = n - 1;
    for (int c = n - 2; c >= 1; c--) {
        int ok = 1;
        for (int j = c + 1; j < n && ok; j++)
            ok = !rec[j].claim_all && rec[j].durable_version <= rec[c - 1].version;
        if (!ok)
            break;
        k = c;
    }
    if (k >= 2) {
        damage_and_reopen(k - 1, 0, 0, "group, a record a later one claims synced");
        write_all(seg, img, size);
    }
    damage_and_reopen(k, 0, 1, "group, last group");
    free(img);
}
