/* Transactions and commits as a user sees them: isolation levels, conflicts and their
 * details, read-your-writes, partial writes, aborts, the gatekeeper, contracts, regions. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>
#include "theus/theus.h"
#include "dtype.h"

static const char *SCHEMA =
    "{\"name\": \"tx-test\", \"fields\": {"
    "  \"m\":    {\"dtype\": \"f32\", \"shape\": [4, 6]},"
    "  \"v\":    {\"dtype\": \"i64\", \"shape\": [16]},"
    "  \"x\":    {\"dtype\": \"i64\", \"shape\": []},"
    "  \"y\":    {\"dtype\": \"i64\", \"shape\": []},"
    "  \"loss\": {\"dtype\": \"f32\", \"shape\": [1], \"constraints\": {\"finite\": true, \"min\": 0}},"
    "  \"h\":    {\"dtype\": \"f16\", \"shape\": [8]},"
    "  \"seed\": {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"},"
    "  \"grad.a\": {\"dtype\": \"f32\", \"shape\": [3]},"
    "  \"grad.b\": {\"dtype\": \"f32\", \"shape\": [3]}"
    "}}";

static theus_state *st;

static void setup(void)
{
    cr_assert_eq(theus_state_create(SCHEMA, NULL, &st), THEUS_OK, "%s", theus_last_error_message());
}

static void teardown(void)
{
    theus_state_destroy(st);
    st = NULL;
}

static theus_region r1(int64_t a, int64_t b)
{
    theus_region r = {.ndim = 1};
    r.start[0] = a;
    r.stop[0] = b;
    return r;
}

static theus_region r2(int64_t a0, int64_t b0, int64_t a1, int64_t b1)
{
    theus_region r = {.ndim = 2};
    r.start[0] = a0;
    r.stop[0] = b0;
    r.start[1] = a1;
    r.stop[1] = b1;
    return r;
}

static int64_t get_i64(const char *field)
{
    theus_tx *tx;
    int64_t v = -1;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, field, NULL, &v, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    return v;
}

static void put_i64(const char *field, int64_t v)
{
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, field, NULL, &v, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_state_last_error(st));
}

static void read_all_f32(const char *field, float *out)
{
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, field, NULL, out, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
}

TestSuite(tx, .init = setup, .fini = teardown);

Test(tx, commit_bumps_versions)
{
    uint64_t v0 = theus_state_version(st), got = 0;
    cr_assert_eq(v0, 1);
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_base(tx), v0);
    int64_t seven = 7;
    cr_assert_eq(theus_tx_write(tx, "x", NULL, &seven, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, &got), THEUS_OK);
    cr_assert_eq(got, v0 + 1);
    cr_assert_eq(theus_state_version(st), v0 + 1);
    theus_field_info fx, fy;
    cr_assert_eq(theus_state_field_info(st, "x", &fx), THEUS_OK);
    cr_assert_eq(theus_state_field_info(st, "y", &fy), THEUS_OK);
    cr_assert_eq(fx.version, v0 + 1);
    cr_assert_eq(fy.version, v0, "an unwritten field keeps its version");
    cr_assert_eq(get_i64("x"), 7);
}

Test(tx, lost_update_is_prevented)
{
    put_i64("x", 10);
    theus_tx *a, *b;
    int64_t va, vb;
    cr_assert_eq(theus_tx_begin(st, NULL, &a), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &b), THEUS_OK);
    cr_assert_eq(theus_tx_read(a, "x", NULL, &va, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_read(b, "x", NULL, &vb, THEUS_MEM_HOST), THEUS_OK);
    va += 1;
    vb += 1;
    cr_assert_eq(theus_tx_write(a, "x", NULL, &va, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(b, "x", NULL, &vb, THEUS_MEM_HOST), THEUS_OK);
    uint64_t va_ver;
    cr_assert_eq(theus_tx_commit(a, &va_ver), THEUS_OK);
    cr_assert_eq(theus_tx_commit(b, NULL), THEUS_ECONFLICT);
    cr_assert_eq(get_i64("x"), 11, "the second increment must not overwrite the first");
    theus_conflict c;
    /* get_i64 succeeded after the conflict, but the conflict stays the thread's last error */
    cr_assert_eq(theus_last_conflict(st, &c), THEUS_OK);
    cr_assert_str_eq(c.field, "x");
    cr_assert_eq(c.version, va_ver);
    cr_assert(c.kind == THEUS_CONFLICT_WRITE_WRITE || c.kind == THEUS_CONFLICT_READ_WRITE);
    theus_stats s;
    cr_assert_eq(theus_state_stats(st, &s), THEUS_OK);
    cr_assert_eq(s.conflicts, 1);
}

Test(tx, disjoint_regions_from_one_base_both_commit)
{
    theus_tx *a, *b;
    float rowa[6], rowb[6], before[6];
    for (int i = 0; i < 6; i++) {
        rowa[i] = (float)i + 1;
        rowb[i] = -(float)i - 1;
    }
    theus_region ra = r2(0, 1, 0, 6), rb = r2(3, 4, 0, 6);
    cr_assert_eq(theus_tx_begin(st, NULL, &a), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &b), THEUS_OK);
    /* each also reads what it writes: serializable validation must still find no conflict */
    cr_assert_eq(theus_tx_read(a, "m", &ra, before, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_read(b, "m", &rb, before, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(a, "m", &ra, rowa, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(b, "m", &rb, rowb, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(a, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_commit(b, NULL), THEUS_OK, "%s", theus_state_last_error(st));
    float m[24];
    read_all_f32("m", m);
    for (int i = 0; i < 6; i++) {
        cr_expect_eq(m[0 * 6 + i], rowa[i]);
        cr_expect_eq(m[3 * 6 + i], rowb[i]);
        cr_expect_eq(m[1 * 6 + i], 0.0f);
        cr_expect_eq(m[2 * 6 + i], 0.0f);
    }
    cr_assert_eq(theus_state_version(st), 3);
}

Test(tx, overlapping_column_and_row_conflict_with_region_detail)
{
    theus_tx *a, *b;
    float col[4] = {1, 2, 3, 4}, row[6] = {5, 5, 5, 5, 5, 5};
    theus_region rc = r2(0, 4, 2, 3), rr = r2(1, 2, 0, 6);
    cr_assert_eq(theus_tx_begin(st, NULL, &a), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &b), THEUS_OK);
    cr_assert_eq(theus_tx_write(a, "m", &rc, col, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(b, "m", &rr, row, THEUS_MEM_HOST), THEUS_OK);
    uint64_t v;
    cr_assert_eq(theus_tx_commit(a, &v), THEUS_OK);
    cr_assert_eq(theus_tx_commit(b, NULL), THEUS_ECONFLICT);
    theus_conflict c;
    cr_assert_eq(theus_last_conflict(st, &c), THEUS_OK);
    cr_assert_eq(c.kind, THEUS_CONFLICT_WRITE_WRITE);
    cr_assert_str_eq(c.field, "m");
    cr_assert_eq(c.version, v);
    cr_assert_eq(c.base, 1);
    cr_assert_eq(c.region.ndim, 2);
    cr_assert(memcmp(c.region.start, rc.start, sizeof rc.start) == 0 &&
              memcmp(c.region.stop, rc.stop, sizeof rc.stop) == 0);
    cr_assert_neq(strstr(theus_state_last_error(st), "'m'"), NULL);
}

/* Write skew: x + y must stay >= 0; each transaction checks it and lowers one of them. */
static int skew_commit(theus_isolation iso, int *second_rc)
{
    put_i64("x", 1);
    put_i64("y", 1);
    theus_tx_options o = THEUS_TX_OPTIONS_INIT;
    o.isolation = iso;
    theus_tx *a, *b;
    int64_t ax, ay, bx, by, minus = -1;
    cr_assert_eq(theus_tx_begin(st, &o, &a), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, &o, &b), THEUS_OK);
    cr_assert_eq(theus_tx_read(a, "x", NULL, &ax, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_read(a, "y", NULL, &ay, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_read(b, "x", NULL, &bx, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_read(b, "y", NULL, &by, THEUS_MEM_HOST), THEUS_OK);
    cr_assert(ax + ay - 2 >= 0 && bx + by - 2 >= 0);
    cr_assert_eq(theus_tx_write(a, "x", NULL, &minus, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(b, "y", NULL, &minus, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(a, NULL), THEUS_OK);
    *second_rc = theus_tx_commit(b, NULL);
    return (int)(get_i64("x") + get_i64("y"));
}

Test(tx, write_skew_refused_under_serializable)
{
    int rc;
    int sum = skew_commit(THEUS_ISOLATION_SERIALIZABLE, &rc);
    cr_assert_eq(rc, THEUS_ECONFLICT);
    cr_assert_eq(sum, 0, "only the first transaction landed");
    theus_conflict c;
    cr_assert_eq(theus_last_conflict(st, &c), THEUS_OK);
    cr_assert_eq(c.kind, THEUS_CONFLICT_READ_WRITE);
    cr_assert_str_eq(c.field, "x");
}

Test(tx, write_skew_allowed_under_snapshot)
{
    int rc;
    int sum = skew_commit(THEUS_ISOLATION_SNAPSHOT, &rc);
    cr_assert_eq(rc, THEUS_OK, "snapshot validates write sets only");
    cr_assert_eq(sum, -2, "both landed: the anomaly snapshot isolation allows");
}

Test(tx, strict_refuses_any_intervening_commit)
{
    theus_tx_options o = THEUS_TX_OPTIONS_INIT;
    o.isolation = THEUS_ISOLATION_STRICT;
    theus_tx *a;
    cr_assert_eq(theus_tx_begin(st, &o, &a), THEUS_OK);
    int64_t one = 1;
    cr_assert_eq(theus_tx_write(a, "x", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
    put_i64("y", 5); /* a disjoint commit */
    cr_assert_eq(theus_tx_commit(a, NULL), THEUS_ECONFLICT);
    theus_conflict c;
    cr_assert_eq(theus_last_conflict(st, &c), THEUS_OK);
    cr_assert_eq(c.kind, THEUS_CONFLICT_STRICT);
    cr_assert_eq(get_i64("x"), 0);

    /* the same under snapshot commits */
    o.isolation = THEUS_ISOLATION_SNAPSHOT;
    cr_assert_eq(theus_tx_begin(st, &o, &a), THEUS_OK);
    cr_assert_eq(theus_tx_write(a, "x", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
    put_i64("y", 6);
    cr_assert_eq(theus_tx_commit(a, NULL), THEUS_OK);
    cr_assert_eq(get_i64("x"), 1);
}

Test(tx, strict_read_after_commit_fails_early)
{
    theus_tx_options o = THEUS_TX_OPTIONS_INIT;
    o.isolation = THEUS_ISOLATION_STRICT;
    theus_tx *a;
    int64_t v;
    cr_assert_eq(theus_tx_begin(st, &o, &a), THEUS_OK);
    put_i64("y", 5);
    cr_assert_eq(theus_tx_read(a, "x", NULL, &v, THEUS_MEM_HOST), THEUS_ECONFLICT);
    theus_tx_abort(a);
}

Test(tx, read_of_region_changed_after_base_fails_early)
{
    theus_tx *a;
    float buf[6];
    cr_assert_eq(theus_tx_begin(st, NULL, &a), THEUS_OK);
    /* another transaction writes row 2 */
    theus_tx *b;
    float row[6] = {1, 1, 1, 1, 1, 1};
    theus_region r_row2 = r2(2, 3, 0, 6), r_row0 = r2(0, 1, 0, 6), r_col = r2(0, 4, 1, 2);
    cr_assert_eq(theus_tx_begin(st, NULL, &b), THEUS_OK);
    cr_assert_eq(theus_tx_write(b, "m", &r_row2, row, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(b, NULL), THEUS_OK);
    /* an untouched region still reads (as of the base) */
    cr_assert_eq(theus_tx_read(a, "m", &r_row0, buf, THEUS_MEM_HOST), THEUS_OK);
    /* a region crossing row 2 fails early, and the tx stays usable */
    float col[4];
    cr_assert_eq(theus_tx_read(a, "m", &r_col, col, THEUS_MEM_HOST), THEUS_ECONFLICT);
    theus_conflict c;
    cr_assert_eq(theus_last_conflict(st, &c), THEUS_OK);
    cr_assert_eq(c.kind, THEUS_CONFLICT_READ_WRITE);
    cr_assert_eq(c.region.start[0], 2);
    cr_assert_eq(theus_tx_read(a, "m", &r_row0, buf, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(a);
}

Test(tx, read_your_writes_with_overlapping_partial_writes_and_adds)
{
    /* committed base: v[i] = 100 + i */
    int64_t base[16], expect[16], got[16];
    for (int i = 0; i < 16; i++)
        base[i] = expect[i] = 100 + i;
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "v", NULL, base, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);

    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    int64_t w1[8], a1[6], w2[3], a2[16];
    for (int i = 0; i < 8; i++)
        w1[i] = -i; /* assign [2, 10) */
    for (int i = 0; i < 6; i++)
        a1[i] = 1000; /* add [6, 12) */
    for (int i = 0; i < 3; i++)
        w2[i] = 7; /* assign [8, 11) */
    for (int i = 0; i < 16; i++)
        a2[i] = i; /* add everything */
    theus_region q1 = r1(2, 10), q2 = r1(6, 12), q3 = r1(8, 11);
    cr_assert_eq(theus_tx_write(tx, "v", &q1, w1, THEUS_MEM_HOST), THEUS_OK);
    for (int i = 2; i < 10; i++)
        expect[i] = w1[i - 2];
    cr_assert_eq(theus_tx_add(tx, "v", &q2, a1, THEUS_MEM_HOST), THEUS_OK);
    for (int i = 6; i < 12; i++)
        expect[i] += 1000;
    cr_assert_eq(theus_tx_write(tx, "v", &q3, w2, THEUS_MEM_HOST), THEUS_OK);
    for (int i = 8; i < 11; i++)
        expect[i] = 7;
    cr_assert_eq(theus_tx_add(tx, "v", NULL, a2, THEUS_MEM_HOST), THEUS_OK);
    for (int i = 0; i < 16; i++)
        expect[i] += i;

    /* whole read and a partial read both see the overlay */
    cr_assert_eq(theus_tx_read(tx, "v", NULL, got, THEUS_MEM_HOST), THEUS_OK);
    for (int i = 0; i < 16; i++)
        cr_expect_eq(got[i], expect[i], "v[%d] = %lld, expected %lld", i, (long long)got[i],
                     (long long)expect[i]);
    theus_region q4 = r1(5, 9);
    int64_t part[4];
    cr_assert_eq(theus_tx_read(tx, "v", &q4, part, THEUS_MEM_HOST), THEUS_OK);
    for (int i = 0; i < 4; i++)
        cr_expect_eq(part[i], expect[5 + i]);
    /* not visible to others before commit */
    cr_assert_eq(get_i64("x"), 0);
    theus_tx *other;
    int64_t seen[16];
    cr_assert_eq(theus_tx_begin(st, NULL, &other), THEUS_OK);
    cr_assert_eq(theus_tx_read(other, "v", NULL, seen, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(other);
    cr_assert_eq(memcmp(seen, base, sizeof base), 0);
    /* and exactly the overlay after commit */
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &other), THEUS_OK);
    cr_assert_eq(theus_tx_read(other, "v", NULL, seen, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(other);
    cr_assert_eq(memcmp(seen, expect, sizeof expect), 0);
}

Test(tx, partial_writes_preserve_the_rest)
{
    float all[24], block[4] = {9, 8, 7, 6};
    for (int i = 0; i < 24; i++)
        all[i] = (float)i * 0.5f;
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "m", NULL, all, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    theus_region blk = r2(1, 3, 2, 4);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "m", &blk, block, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    float m[24];
    read_all_f32("m", m);
    int k = 0;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 6; j++) {
            int inside = i >= 1 && i < 3 && j >= 2 && j < 4;
            cr_expect_eq(m[i * 6 + j], inside ? block[k++] : all[i * 6 + j], "m[%d][%d]", i, j);
        }
}

Test(tx, abort_leaves_state_and_version_untouched)
{
    put_i64("x", 3);
    uint64_t v = theus_state_version(st);
    theus_tx *tx;
    int64_t nine = 9;
    float ones[24];
    for (int i = 0; i < 24; i++)
        ones[i] = 1;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "x", NULL, &nine, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "m", NULL, ones, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    cr_assert_eq(theus_state_version(st), v);
    cr_assert_eq(get_i64("x"), 3);
    float m[24];
    read_all_f32("m", m);
    for (int i = 0; i < 24; i++)
        cr_expect_eq(m[i], 0.0f);
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "m", &fi), THEUS_OK);
    cr_assert_eq(fi.version, 1);
    theus_tx_abort(NULL); /* no-op */
}

Test(tx, read_only_commit_returns_base_and_changes_nothing)
{
    theus_tx *tx;
    int64_t v;
    uint64_t got = 0;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "x", NULL, &v, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, &got), THEUS_OK);
    cr_assert_eq(got, 1);
    cr_assert_eq(theus_state_version(st), 1);
}

Test(tx, schema_refusals_leave_state_untouched)
{
    float good = 2.5f, nan = NAN, neg = -1.0f, inf = INFINITY;
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "loss", NULL, &good, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    uint64_t v = theus_state_version(st);
    const float bad[] = {nan, neg, inf};
    for (int k = 0; k < 3; k++) {
        int64_t one = 1;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_write(tx, "x", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_write(tx, "loss", NULL, &bad[k], THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA, "value %g", bad[k]);
        cr_assert_neq(strstr(theus_state_last_error(st), "loss"), NULL);
    }
    /* an ADD that would make the committed value negative is refused too */
    float minus3 = -3.0f, minus1 = -1.0f;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "loss", NULL, &minus3, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ESCHEMA);
    cr_assert_eq(theus_state_version(st), v);
    cr_assert_eq(get_i64("x"), 0, "the whole batch was refused");
    float loss;
    read_all_f32("loss", &loss);
    cr_assert_eq(loss, good);
    /* while an ADD that keeps it in range commits */
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "loss", NULL, &minus1, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    read_all_f32("loss", &loss);
    cr_assert_eq(loss, 1.5f);
    theus_stats s;
    theus_state_stats(st, &s);
    cr_assert_eq(s.schema_refusals, 4);
}

Test(tx, adds_commute_and_an_assign_over_fresh_adds_conflicts)
{
    theus_tx *a, *b, *c;
    float one[3] = {1, 1, 1}, two[3] = {2, 2, 2};
    cr_assert_eq(theus_tx_begin(st, NULL, &a), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &b), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &c), THEUS_OK);
    cr_assert_eq(theus_tx_add(a, "grad.a", NULL, one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_add(b, "grad.a", NULL, two, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(c, "grad.a", NULL, two, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(a, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_commit(b, NULL), THEUS_OK, "ADD never conflicts with ADD");
    cr_assert_eq(theus_tx_commit(c, NULL), THEUS_ECONFLICT, "an ASSIGN over fresh adds conflicts");
    float g[3];
    read_all_f32("grad.a", g);
    for (int i = 0; i < 3; i++)
        cr_expect_eq(g[i], 3.0f);
    /* an ADD staged before someone's ASSIGN committed lands on the assigned values: an
     * ADD-only transaction never conflicts */
    cr_assert_eq(theus_tx_begin(st, NULL, &a), THEUS_OK);
    cr_assert_eq(theus_tx_add(a, "grad.a", NULL, one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &b), THEUS_OK);
    cr_assert_eq(theus_tx_write(b, "grad.a", NULL, one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(b, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_commit(a, NULL), THEUS_OK);
    read_all_f32("grad.a", g);
    for (int i = 0; i < 3; i++)
        cr_expect_eq(g[i], 2.0f);
}

Test(tx, f16_add_rounds_to_nearest_even_like_f32_reference)
{
    uint16_t start[8], inc[8], got[8];
    const float sv[8] = {1.0f, 2048.0f, 0.1f, -3.5f, 65504.0f, 1e-7f, 0.0f, 1000.0f};
    const float iv[8] = {0.0004f, 1.0f, 0.2f, 3.5f, 65504.0f, 1e-7f, -0.0f, 0.3333f};
    for (int i = 0; i < 8; i++) {
        start[i] = theus_f32_to_f16(sv[i]);
        inc[i] = theus_f32_to_f16(iv[i]);
    }
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "h", NULL, start, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_add(tx, "h", NULL, inc, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "h", NULL, got, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    for (int i = 0; i < 8; i++) {
        float sum = theus_f16_to_f32(start[i]) + theus_f16_to_f32(inc[i]);
        cr_expect_eq(got[i], theus_f32_to_f16(sum), "h[%d]", i);
    }
    cr_expect_eq(got[1], theus_f32_to_f16(2048.0f), "2048 + 1 ties to even in f16");
    cr_expect_eq(got[4], 0x7c00, "65504 + 65504 overflows to +inf");
}

Test(tx, contracts_limit_reads_and_writes)
{
    const char *ins[] = {"m", "x"};
    const char *outs[] = {"grad.*"};
    theus_contract k = {.name = "worker", .inputs = ins, .n_inputs = 2, .outputs = outs,
                        .n_outputs = 1};
    theus_tx_options o = THEUS_TX_OPTIONS_INIT;
    o.contract = &k;
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, &o, &tx), THEUS_OK);
    float m[24], g[3] = {1, 2, 3}, gb[3];
    int64_t v;
    cr_assert_eq(theus_tx_read(tx, "m", NULL, m, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "grad.b", NULL, gb, THEUS_MEM_HOST), THEUS_OK, "outputs are readable");
    cr_assert_eq(theus_tx_read(tx, "y", NULL, &v, THEUS_MEM_HOST), THEUS_EPERM);
    cr_assert_neq(strstr(theus_state_last_error(st), "worker"), NULL);
    cr_assert_eq(theus_tx_write(tx, "x", NULL, &v, THEUS_MEM_HOST), THEUS_EPERM, "inputs are read-only");
    cr_assert_eq(theus_tx_add(tx, "m", NULL, m, THEUS_MEM_HOST), THEUS_EPERM);
    cr_assert_eq(theus_tx_add(tx, "grad.a", NULL, g, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "grad.b", NULL, g, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "the refused calls left the tx usable");
    float ga[3];
    read_all_f32("grad.a", ga);
    cr_assert_eq(ga[2], 3.0f);
}

Test(tx, const_fields_refuse_writes)
{
    uint64_t seed = 42, got = 0;
    theus_tx *tx;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "seed", NULL, &seed, THEUS_MEM_HOST), THEUS_EPERM);
    cr_assert_eq(theus_tx_add(tx, "seed", NULL, &seed, THEUS_MEM_HOST), THEUS_EPERM);
    cr_assert_eq(theus_tx_read(tx, "seed", NULL, &got, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    cr_assert_eq(theus_state_init_field(st, "seed", &seed, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "seed", NULL, &got, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    cr_assert_eq(got, 42);
}

Test(tx, bad_regions_and_arguments_are_refused_and_tx_stays_usable)
{
    theus_tx *tx;
    float buf[64] = {0};
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    theus_region oob = r2(0, 5, 0, 6), neg = r2(-1, 2, 0, 6), inv = r2(3, 2, 0, 6),
                 rank1 = r1(0, 2), wide = r2(0, 1, 0, 7);
    const theus_region *bad[] = {&oob, &neg, &inv, &rank1, &wide};
    for (int k = 0; k < 5; k++) {
        cr_expect_eq(theus_tx_write(tx, "m", bad[k], buf, THEUS_MEM_HOST), THEUS_EINVAL, "region %d", k);
        cr_expect_eq(theus_tx_add(tx, "m", bad[k], buf, THEUS_MEM_HOST), THEUS_EINVAL, "region %d", k);
        cr_expect_eq(theus_tx_read(tx, "m", bad[k], buf, THEUS_MEM_HOST), THEUS_EINVAL, "region %d", k);
    }
    cr_assert_neq(strstr(theus_state_last_error(st), "'m'"), NULL);
    theus_region scalar_rank = r1(0, 1);
    int64_t one = 1;
    cr_expect_eq(theus_tx_write(tx, "x", &scalar_rank, &one, THEUS_MEM_HOST), THEUS_EINVAL);
    cr_expect_eq(theus_tx_write(tx, "nope", NULL, buf, THEUS_MEM_HOST), THEUS_ENOENT);
    cr_expect_eq(theus_tx_write(tx, "m", NULL, NULL, THEUS_MEM_HOST), THEUS_EINVAL);
    cr_expect_eq(theus_tx_read(tx, NULL, NULL, buf, THEUS_MEM_HOST), THEUS_EINVAL);
    cr_expect_eq(theus_tx_write(tx, "m", NULL, buf, (theus_mem)7), THEUS_EINVAL);
    cr_expect_eq(theus_tx_write(NULL, "m", NULL, buf, THEUS_MEM_HOST), THEUS_EINVAL);
    /* an empty region is a no-op, not an error */
    theus_region empty = r2(2, 2, 0, 6);
    cr_expect_eq(theus_tx_write(tx, "m", &empty, buf, THEUS_MEM_HOST), THEUS_OK);
    /* still usable */
    cr_assert_eq(theus_tx_write(tx, "x", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert_eq(get_i64("x"), 1);
    theus_tx_options o = THEUS_TX_OPTIONS_INIT;
    o.isolation = 9;
    cr_assert_eq(theus_tx_begin(st, &o, &tx), THEUS_EINVAL);
    cr_assert_null(tx);
    cr_assert_eq(theus_tx_begin(NULL, NULL, &tx), THEUS_EINVAL);
    cr_assert_eq(theus_tx_commit(NULL, NULL), THEUS_EINVAL);
}

Test(tx, base_older_than_the_log_is_decided_by_the_block_map)
{
    theus_state *small;
    theus_state_options so = THEUS_STATE_OPTIONS_INIT;
    so.commit_log_capacity = 4;
    cr_assert_eq(theus_state_create(SCHEMA, &so, &small), THEUS_OK);
    theus_tx *old, *tx;
    cr_assert_eq(theus_tx_begin(small, NULL, &old), THEUS_OK);
    theus_tx *keep;
    cr_assert_eq(theus_tx_begin(small, NULL, &keep), THEUS_OK);
    int64_t one = 1;
    /* six commits to v[0] push the log past old's base */
    for (int i = 0; i < 6; i++) {
        theus_region q = r1(0, 1);
        cr_assert_eq(theus_tx_begin(small, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_add(tx, "v", &q, &one, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    }
    /* a disjoint element in the same 4 KiB block: the log no longer reaches back, and the
     * block map is exact to the block only (the documented granularity) */
    theus_region q5 = r1(5, 6);
    cr_assert_eq(theus_tx_write(old, "v", &q5, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(old, NULL), THEUS_ECONFLICT);
    theus_conflict c;
    cr_assert_eq(theus_last_conflict(small, &c), THEUS_OK);
    cr_assert_eq(c.kind, THEUS_CONFLICT_WRITE_WRITE);
    cr_assert_eq(c.version, 7, "the last commit that wrote the block");
    /* a field nobody wrote since the base is still fine, however old the base */
    cr_assert_eq(theus_tx_write(keep, "x", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(keep, NULL), THEUS_OK);
    theus_state_destroy(small);
}

Test(tx, large_batches_are_decided_by_the_block_map)
{
    /* with a 16-entry log, a batch of more than 2 deltas is logged as one block-map entry
     * per field (see test_conflicts.c for fields larger than a block) */
    theus_state *s2;
    theus_state_options so = THEUS_STATE_OPTIONS_INIT;
    so.commit_log_capacity = 16;
    cr_assert_eq(theus_state_create(SCHEMA, &so, &s2), THEUS_OK);
    theus_tx *a, *b, *d;
    cr_assert_eq(theus_tx_begin(s2, NULL, &a), THEUS_OK);
    cr_assert_eq(theus_tx_begin(s2, NULL, &b), THEUS_OK);
    cr_assert_eq(theus_tx_begin(s2, NULL, &d), THEUS_OK);
    int64_t one = 1;
    for (int i = 0; i < 4; i++) { /* elements 0, 2, 4, 6 */
        theus_region q = r1(2 * i, 2 * i + 1);
        cr_assert_eq(theus_tx_write(a, "v", &q, &one, THEUS_MEM_HOST), THEUS_OK);
    }
    cr_assert_eq(theus_tx_commit(a, NULL), THEUS_OK);
    /* element 3 shares its 4 KiB block with written elements: a conflict at the documented
     * granularity */
    theus_region q3 = r1(3, 4), q9 = r1(9, 10);
    cr_assert_eq(theus_tx_write(b, "v", &q3, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(b, NULL), THEUS_ECONFLICT);
    /* outside the box, no conflict */
    cr_assert_eq(theus_tx_write(d, "v", &q9, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(d, NULL), THEUS_OK);
    theus_state_destroy(s2);
}
