/* Exact conflicts and the one commit path: ADD-only transactions never conflict, whatever
 * their base; a base older than the commit log and a batch of thousands of deltas are
 * decided by the block map (exact to 4 KiB blocks) instead of refused wholesale; true
 * conflicts are still found however far back; theus_state_init_field and commits of
 * private and shared states go through the publish step's listeners. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "theus/theus.h"
#include "theus/theus_shared.h"
#include "publish.h"
#include "tx.h"

/* "rows": 2,048 rows of 1,024 f32 — one row is one 4 KiB block. "small": 2,048 f32, two
 * blocks. "n": a counter. */
static const char *SCHEMA =
    "{\"name\": \"conflicts\", \"fields\": {"
    "  \"rows\":  {\"dtype\": \"f32\", \"shape\": [2048, 1024], \"placement\": \"host\"},"
    "  \"small\": {\"dtype\": \"f32\", \"shape\": [2048], \"placement\": \"host\"},"
    "  \"n\":     {\"dtype\": \"i64\", \"shape\": [], \"placement\": \"host\"},"
    "  \"seed\":  {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"}"
    "}}";

#define ROW 1024

static theus_state *st;

static void setup(void)
{
    cr_assert_eq(theus_state_create(SCHEMA, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
}

static void teardown(void)
{
    theus_state_destroy(st);
    st = NULL;
}

TestSuite(conflicts, .init = setup, .fini = teardown);

static theus_region rows(int64_t a, int64_t b)
{
    theus_region r = {.ndim = 2};
    r.start[0] = a;
    r.stop[0] = b;
    r.start[1] = 0;
    r.stop[1] = ROW;
    return r;
}

static theus_region elems(int64_t a, int64_t b)
{
    theus_region r = {.ndim = 1};
    r.start[0] = a;
    r.stop[0] = b;
    return r;
}

static void commit_add_n(int times)
{
    int64_t one = 1;
    for (int i = 0; i < times; i++) {
        theus_tx *tx = NULL;
        cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
        cr_assert_eq(theus_tx_add(tx, "n", NULL, &one, THEUS_MEM_HOST), THEUS_OK);
        cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    }
}

/* Commit one ASSIGN of @value over row @row. */
static void write_row(int64_t row, float value)
{
    static float buf[ROW];
    for (int i = 0; i < ROW; i++)
        buf[i] = value;
    theus_region r = rows(row, row + 1);
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "rows", &r, buf, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
}

static float read_elem(const char *field, const theus_region *r)
{
    theus_tx *tx = NULL;
    float v = -1;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, field, r, &v, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    return v;
}

/* ---- ADD-only transactions --------------------------------------------------------- */

Test(conflicts, add_only_tx_commits_after_the_log_wrapped)
{
    theus_tx *slow = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &slow), THEUS_OK);
    int64_t ten = 10;
    cr_assert_eq(theus_tx_add(slow, "n", NULL, &ten, THEUS_MEM_HOST), THEUS_OK);
    /* more commits to the very same element than the default log (4,096 entries) holds */
    commit_add_n(5000);
    uint64_t v = 0;
    cr_assert_eq(theus_tx_commit(slow, &v), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(v, 5002);
    theus_tx *tx = NULL;
    int64_t n = 0;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "n", NULL, &n, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    cr_assert_eq(n, 5010);
}

Test(conflicts, add_only_tx_commits_over_an_assign_since_its_base)
{
    theus_tx *slow = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &slow), THEUS_OK);
    float one[ROW];
    for (int i = 0; i < ROW; i++)
        one[i] = 1.0f;
    theus_region r = rows(7, 8);
    cr_assert_eq(theus_tx_add(slow, "rows", &r, one, THEUS_MEM_HOST), THEUS_OK);
    write_row(7, 5.0f);
    cr_assert_eq(theus_tx_commit(slow, NULL), THEUS_OK, "%s", theus_last_error_message());
    theus_region e = {.ndim = 2, .start = {7, 3}, .stop = {8, 4}};
    cr_assert_eq(read_elem("rows", &e), 6.0f);
}

/* ---- huge batches ------------------------------------------------------------------ */

Test(conflicts, a_write_next_to_a_1000_delta_batch_commits)
{
    theus_tx *mid = NULL, *next = NULL, *hit = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &mid), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &next), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &hit), THEUS_OK);
    /* one commit of 1,000 deltas: the even rows 0, 2, ..., 1998 */
    static float buf[ROW];
    theus_tx *big = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &big), THEUS_OK);
    for (int64_t i = 0; i < 1000; i++) {
        theus_region r = rows(2 * i, 2 * i + 1);
        cr_assert_eq(theus_tx_write(big, "rows", &r, buf, THEUS_MEM_HOST), THEUS_OK);
    }
    cr_assert_eq(theus_tx_commit(big, NULL), THEUS_OK);
    /* an odd row inside the batch's bounding box, and the row right after its last one */
    theus_region odd = rows(1001, 1002), after = rows(1999, 2000), even = rows(500, 501);
    cr_assert_eq(theus_tx_write(mid, "rows", &odd, buf, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(mid, NULL), THEUS_OK, "%s", theus_last_error_message());
    cr_assert_eq(theus_tx_write(next, "rows", &after, buf, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(next, NULL), THEUS_OK, "%s", theus_last_error_message());
    /* a row the batch did write still conflicts */
    cr_assert_eq(theus_tx_write(hit, "rows", &even, buf, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(hit, NULL), THEUS_ECONFLICT);
    theus_conflict c;
    cr_assert_eq(theus_last_conflict(st, &c), THEUS_OK);
    cr_assert_eq(c.kind, THEUS_CONFLICT_WRITE_WRITE);
    cr_assert_str_eq(c.field, "rows");
    cr_assert_eq(c.version, 2);
}

/* ---- true conflicts beyond the log -------------------------------------------------- */

Test(conflicts, a_read_overwritten_10k_commits_ago_conflicts_under_serializable)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    theus_region e = {.ndim = 2, .start = {5, 0}, .stop = {6, 1}};
    float v;
    cr_assert_eq(theus_tx_read(tx, "rows", &e, &v, THEUS_MEM_HOST), THEUS_OK);
    write_row(5, 2.0f); /* overwrites what tx read */
    commit_add_n(10000);
    theus_region other = rows(900, 901);
    static float buf[ROW];
    cr_assert_eq(theus_tx_write(tx, "rows", &other, buf, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ECONFLICT);
    theus_conflict c;
    cr_assert_eq(theus_last_conflict(st, &c), THEUS_OK);
    cr_assert_eq(c.kind, THEUS_CONFLICT_READ_WRITE);
    cr_assert_str_eq(c.field, "rows");
    cr_assert_eq(c.version, 2, "the commit that wrote the row");
    cr_assert_eq(c.base, 1);
}

Test(conflicts, a_read_of_an_untouched_row_is_fine_beyond_the_log)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    theus_region e = {.ndim = 2, .start = {6, 0}, .stop = {7, 1}};
    float v;
    cr_assert_eq(theus_tx_read(tx, "rows", &e, &v, THEUS_MEM_HOST), THEUS_OK);
    write_row(5, 2.0f); /* the row before: another block */
    commit_add_n(5000);
    theus_region other = rows(900, 901);
    static float buf[ROW];
    cr_assert_eq(theus_tx_write(tx, "rows", &other, buf, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_last_error_message());
}

Test(conflicts, an_assign_overwritten_beyond_the_log_conflicts_under_snapshot)
{
    theus_tx_options o = THEUS_TX_OPTIONS_INIT;
    o.isolation = THEUS_ISOLATION_SNAPSHOT;
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, &o, &tx), THEUS_OK);
    static float buf[ROW];
    theus_region r = rows(42, 43);
    cr_assert_eq(theus_tx_write(tx, "rows", &r, buf, THEUS_MEM_HOST), THEUS_OK);
    write_row(42, 3.0f);
    commit_add_n(10000);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_ECONFLICT);
    theus_conflict c;
    cr_assert_eq(theus_last_conflict(st, &c), THEUS_OK);
    cr_assert_eq(c.kind, THEUS_CONFLICT_WRITE_WRITE);
    cr_assert_eq(c.version, 2);
    theus_region e = {.ndim = 2, .start = {42, 0}, .stop = {43, 1}};
    cr_assert_eq(read_elem("rows", &e), 3.0f, "the refused commit changed nothing");
}

Test(conflicts, a_read_beyond_the_log_fails_early)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    write_row(9, 1.0f);
    commit_add_n(5000);
    theus_region e = {.ndim = 2, .start = {9, 0}, .stop = {10, 1}};
    float v;
    cr_assert_eq(theus_tx_read(tx, "rows", &e, &v, THEUS_MEM_HOST), THEUS_ECONFLICT);
    theus_region f = {.ndim = 2, .start = {10, 0}, .stop = {11, 1}};
    cr_assert_eq(theus_tx_read(tx, "rows", &f, &v, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
}

/* ---- the granularity ---------------------------------------------------------------- */

/* Two writes to different elements of one 4 KiB block: exact (no conflict) while the log
 * reaches back to the base; once it does not, the block map decides, and the block is the
 * unit — a conflict, as documented in docs/guide.md. Another block never conflicts. */
Test(conflicts, two_writes_in_one_block)
{
    float one = 1.0f;
    theus_region e0 = elems(0, 1), e1 = elems(1, 2), e1024 = elems(1024, 1025);
    theus_tx *a = NULL, *b = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &a), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &b), THEUS_OK);
    cr_assert_eq(theus_tx_write(a, "small", &e0, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(b, "small", &e1, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(a, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_commit(b, NULL), THEUS_OK, "the log is exact: %s",
                 theus_last_error_message());

    theus_tx *c = NULL, *d = NULL, *far = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &c), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &d), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &far), THEUS_OK);
    cr_assert_eq(theus_tx_write(c, "small", &e0, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(d, "small", &e1, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(far, "small", &e1024, &one, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(c, NULL), THEUS_OK);
    commit_add_n(5000); /* the log no longer reaches back to d's base */
    cr_assert_eq(theus_tx_commit(d, NULL), THEUS_ECONFLICT, "same block beyond the log");
    cr_assert_eq(theus_tx_commit(far, NULL), THEUS_OK, "another block: %s",
                 theus_last_error_message());
}

/* ---- the publish step and its listeners --------------------------------------------- */

typedef struct recorder {
    char log[64][32];
    int n;
    int refuse_prepare;   /* code prepare returns */
    int ack;              /* code acknowledge returns */
    uint64_t version, base;
    int init;
    size_t ndeltas;
} recorder;

static recorder rec_a, rec_b;

static void note(recorder *r, const char *what)
{
    if (r->n < 64)
        snprintf(r->log[r->n++], sizeof r->log[0], "%s", what);
}

/* Both recorders write into rec_a's log, so that the order across listeners shows. */
static int prep(void *user, const publish_batch *b)
{
    recorder *r = user;
    note(&rec_a, r == &rec_a ? "a.prepare" : "b.prepare");
    r->version = b->version;
    r->base = b->base;
    r->init = b->init;
    r->ndeltas = b->tx->ndeltas;
    return r->refuse_prepare;
}

static void cancel(void *user, const publish_batch *b)
{
    (void)b;
    note(&rec_a, user == &rec_a ? "a.cancel" : "b.cancel");
}

static void published(void *user, const publish_batch *b)
{
    cr_assert_eq(theus_state_version(b->st), b->init ? 1 : b->version,
                 "published runs once the version is visible");
    note(&rec_a, user == &rec_a ? "a.published" : "b.published");
}

static int ack(void *user, const publish_batch *b)
{
    (void)b;
    recorder *r = user;
    note(&rec_a, r == &rec_a ? "a.ack" : "b.ack");
    return r->ack;
}

static void listen_both(theus_state *s)
{
    memset(&rec_a, 0, sizeof rec_a);
    memset(&rec_b, 0, sizeof rec_b);
    publish_listener la = {prep, cancel, published, ack, &rec_a};
    publish_listener lb = {prep, cancel, published, ack, &rec_b};
    cr_assert_eq(publish_listen(s, &la), THEUS_OK);
    cr_assert_eq(publish_listen(s, &lb), THEUS_OK);
}

static void expect_log(const char *const *want, int n)
{
    cr_assert_eq(rec_a.n, n, "%d listener calls, expected %d", rec_a.n, n);
    for (int i = 0; i < n; i++)
        cr_assert_str_eq(rec_a.log[i], want[i], "call %d", i);
}

static int64_t read_n(theus_state *s)
{
    theus_tx *tx = NULL;
    int64_t n = -1;
    cr_assert_eq(theus_tx_begin(s, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "n", NULL, &n, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    return n;
}

static int commit_n(theus_state *s, int64_t value)
{
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(s, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "n", NULL, &value, THEUS_MEM_HOST), THEUS_OK);
    return theus_tx_commit(tx, NULL);
}

Test(conflicts, listeners_run_in_order)
{
    listen_both(st);
    cr_assert_eq(commit_n(st, 4), THEUS_OK);
    static const char *const want[] = {"a.prepare", "b.prepare", "a.published", "b.published",
                                       "a.ack", "b.ack"};
    expect_log(want, 6);
    cr_assert_eq(rec_a.version, 2);
    cr_assert_eq(rec_a.base, 1);
    cr_assert_eq(rec_a.init, 0);
    cr_assert_eq(rec_a.ndeltas, 1);
}

Test(conflicts, a_refused_prepare_leaves_the_state_unchanged)
{
    cr_assert_eq(commit_n(st, 4), THEUS_OK);
    listen_both(st);
    rec_b.refuse_prepare = THEUS_EIO;
    cr_assert_eq(commit_n(st, 9), THEUS_EIO);
    cr_assert_neq(theus_last_error_message()[0], '\0', "a message is set");
    static const char *const want[] = {"a.prepare", "b.prepare", "a.cancel"};
    expect_log(want, 3);
    cr_assert_eq(theus_state_version(st), 2);
    cr_assert_eq(read_n(st), 4);
    theus_field_info fi;
    cr_assert_eq(theus_state_field_info(st, "n", &fi), THEUS_OK);
    cr_assert_eq(fi.version, 2);
    /* unlisten b: commits go through again */
    publish_unlisten(st, &rec_b);
    rec_a.n = 0;
    cr_assert_eq(commit_n(st, 9), THEUS_OK);
    static const char *const again[] = {"a.prepare", "a.published", "a.ack"};
    expect_log(again, 3);
    cr_assert_eq(read_n(st), 9);
}

Test(conflicts, an_acknowledge_error_is_returned_after_publishing)
{
    listen_both(st);
    rec_a.ack = THEUS_EIO;
    cr_assert_eq(commit_n(st, 6), THEUS_EIO);
    cr_assert(strstr(theus_last_error_message(), "published as version 2") != NULL, "%s",
              theus_last_error_message());
    cr_assert_eq(theus_state_version(st), 2, "published, though not acknowledged");
    cr_assert_eq(read_n(st), 6);
    static const char *const want[] = {"a.prepare", "b.prepare", "a.published", "b.published",
                                       "a.ack", "b.ack"};
    expect_log(want, 6);
}

Test(conflicts, conflicts_and_refusals_never_reach_the_listeners)
{
    listen_both(st);
    theus_tx *old = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &old), THEUS_OK);
    int64_t v = 1;
    cr_assert_eq(theus_tx_write(old, "n", NULL, &v, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(commit_n(st, 2), THEUS_OK);
    rec_a.n = 0;
    cr_assert_eq(theus_tx_commit(old, NULL), THEUS_ECONFLICT);
    cr_assert_eq(rec_a.n, 0);
}

Test(conflicts, the_listener_list_is_bounded)
{
    publish_listener l = {.user = &rec_a};
    for (int i = 0; i < PUBLISH_MAX_LISTENERS; i++)
        cr_assert_eq(publish_listen(st, &l), THEUS_OK);
    cr_assert_eq(publish_listen(st, &l), THEUS_EBUSY);
    publish_unlisten(st, &rec_a);
    cr_assert_eq(publish_listen(st, &l), THEUS_OK);
    cr_assert_eq(publish_listen(NULL, &l), THEUS_EINVAL);
}

Test(conflicts, init_field_goes_through_the_publish_step)
{
    listen_both(st);
    uint64_t seed = 77;
    cr_assert_eq(theus_state_init_field(st, "seed", &seed, THEUS_MEM_HOST), THEUS_OK);
    static const char *const want[] = {"a.prepare", "b.prepare", "a.published", "b.published",
                                       "a.ack", "b.ack"};
    expect_log(want, 6);
    cr_assert_eq(rec_a.init, 1);
    cr_assert_eq(rec_a.version, 1);
    cr_assert_eq(theus_state_version(st), 1, "no new version");
    /* a refusal leaves the field as it was */
    rec_a.n = 0;
    rec_a.refuse_prepare = THEUS_EPERM;
    uint64_t other = 5;
    cr_assert_eq(theus_state_init_field(st, "seed", &other, THEUS_MEM_HOST), THEUS_EPERM);
    theus_tx *tx = NULL;
    uint64_t got = 0;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "seed", NULL, &got, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    cr_assert_eq(got, 77);
}

static char shared_name[64];

static void remove_shared(void)
{
    theus_shared_remove(shared_name); /* in case the test failed before destroying it */
    teardown();
}

/* A shared state: the same path, through the redo record. */
Test(conflicts, shared_commits_and_init_field_reach_the_listeners, .fini = remove_shared)
{
    char *name = shared_name;
    snprintf(shared_name, sizeof shared_name, "t%d-publish", (int)getpid());
    theus_state *sh = NULL;
    cr_assert_eq(theus_state_create_shared(name, SCHEMA, NULL, NULL, &sh), THEUS_OK, "%s",
                 theus_last_error_message());
    listen_both(sh);
    uint64_t seed = 3;
    int rc = theus_state_init_field(sh, "seed", &seed, THEUS_MEM_HOST);
    int init = rec_a.init;
    rec_a.n = 0;
    int rc2 = commit_n(sh, 11);
    uint64_t version = rec_b.version;
    int n = rec_a.n;
    rec_b.refuse_prepare = THEUS_EIO;
    int rc3 = commit_n(sh, 12);
    int64_t after = read_n(sh);
    theus_state_destroy(sh); /* removes the segment: nothing else has it open */
    cr_assert_eq(rc, THEUS_OK);
    cr_assert_eq(init, 1);
    cr_assert_eq(rc2, THEUS_OK);
    cr_assert_eq(version, 2);
    cr_assert_eq(n, 6);
    cr_assert_eq(rc3, THEUS_EIO);
    cr_assert_eq(after, 11);
}

/* ---- transaction attachments (tx_ext) -------------------------------------------------- */

typedef struct counted_ext {
    tx_ext ext;
    int *freed;
} counted_ext;

static void counted_free(tx_ext *e)
{
    counted_ext *c = (counted_ext *)e;
    (*c->freed)++;
}

Test(conflicts, tx_ext_is_freed_by_commit_abort_and_a_failed_commit)
{
    int freed = 0;
    counted_ext ce[3] = {{{counted_free}, &freed}, {{counted_free}, &freed},
                         {{counted_free}, &freed}};
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_null(tx->ext, "NULL by default");
    tx->ext = &ce[0].ext;
    int64_t v = 1;
    cr_assert_eq(theus_tx_write(tx, "n", NULL, &v, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert_eq(freed, 1);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    tx->ext = &ce[1].ext;
    theus_tx_abort(tx);
    cr_assert_eq(freed, 2);
    theus_tx *old = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &old), THEUS_OK);
    old->ext = &ce[2].ext;
    cr_assert_eq(theus_tx_write(old, "n", NULL, &v, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(commit_n(st, 2), THEUS_OK);
    cr_assert_eq(theus_tx_commit(old, NULL), THEUS_ECONFLICT);
    cr_assert_eq(freed, 3);
}
