/* Allocation failure, jansson style: counting hooks fail the N-th allocation for every N
 * that an operation sequence reaches, and each run checks that the failing call says
 * THEUS_ENOMEM, that nothing else changed, and that nothing leaked. The count covers
 * theus's own allocations (jansson allocates through its own malloc). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <theus/theus.h>

/* ---- counting hooks ------------------------------------------------------------------ */

static long g_calls;   /* allocations attempted since the last reset */
static long g_fail_at; /* fail the allocation with this number (1-based); 0: never */
static long g_live;    /* allocations made through the hooks and not yet freed */

static void *count_malloc(size_t n)
{
    long c = ++g_calls;
    if (g_fail_at && c == g_fail_at)
        return NULL;
    void *p = malloc(n);
    if (p)
        g_live++;
    return p;
}

static void count_free(void *p)
{
    if (p) {
        g_live--;
        free(p);
    }
}

static void arm(long n)
{
    g_calls = 0;
    g_fail_at = n;
}

static void disarm(void)
{
    g_fail_at = 0;
}

/* Whether the armed failure happened. */
static int fired(void)
{
    return g_fail_at && g_calls >= g_fail_at;
}

static void hooks_on(void)
{
    g_calls = 0;
    g_fail_at = 0;
    g_live = 0;
    cr_assert_eq(theus_set_alloc_funcs(count_malloc, count_free), THEUS_OK);
}

static void hooks_off(void)
{
    theus_set_alloc_funcs(NULL, NULL);
}

TestSuite(alloc_fail, .init = hooks_on, .fini = hooks_off);

/* ---- the state under test -------------------------------------------------------- */

static const char *const SCHEMA =
    "{\"name\": \"alloc\", \"fields\": {"
    "  \"a\": {\"dtype\": \"f32\", \"shape\": [8, 6]},"
    "  \"b\": {\"dtype\": \"i64\", \"shape\": [5]},"
    "  \"c\": {\"dtype\": \"f64\", \"shape\": [4], \"constraints\": {\"min\": -1000, \"max\": 1000}},"
    "  \"k\": {\"dtype\": \"u64\", \"shape\": [], \"zone\": \"const\"},"
    "  \"g\": {\"dtype\": \"f32\", \"shape\": [3], \"constraints\": {\"finite\": true}}"
    "}}";

#define NFIELDS 5
#define MAX_FIELD_BYTES 192 /* a: 8 * 6 * 4 */
static const char *const FIELD_NAMES[NFIELDS] = {"a", "b", "c", "k", "g"};

typedef struct snapshot {
    uint64_t version;
    uint64_t field_version[NFIELDS];
    unsigned char bytes[NFIELDS][MAX_FIELD_BYTES];
} snapshot;

/* Version and every field's bytes, read through the public API (with no failure armed). */
static void take_snapshot(theus_state *st, snapshot *s)
{
    cr_assert_eq(g_fail_at, 0);
    memset(s, 0, sizeof *s);
    s->version = theus_state_version(st);
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    for (int i = 0; i < NFIELDS; i++) {
        theus_field_info fi;
        cr_assert_eq(theus_state_field_info(st, FIELD_NAMES[i], &fi), THEUS_OK);
        cr_assert_leq(fi.nbytes, (size_t)MAX_FIELD_BYTES);
        s->field_version[i] = fi.version;
        cr_assert_eq(theus_tx_read(tx, FIELD_NAMES[i], NULL, s->bytes[i], THEUS_MEM_HOST),
                     THEUS_OK);
    }
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
}

static void expect_snapshot(theus_state *st, const snapshot *want, const char *what, long n)
{
    snapshot now;
    take_snapshot(st, &now);
    cr_assert_eq(now.version, want->version, "%s, N=%ld: version", what, n);
    for (int i = 0; i < NFIELDS; i++) {
        cr_assert_eq(now.field_version[i], want->field_version[i], "%s, N=%ld: version of %s",
                     what, n, FIELD_NAMES[i]);
        cr_assert_eq(memcmp(now.bytes[i], want->bytes[i], MAX_FIELD_BYTES), 0,
                     "%s, N=%ld: bytes of %s", what, n, FIELD_NAMES[i]);
    }
}

/* A fresh state (hooks on, nothing armed) with non-zero committed content. */
static theus_state *fresh_state(void)
{
    cr_assert_eq(g_fail_at, 0);
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create(SCHEMA, NULL, &st), THEUS_OK, "%s",
                 theus_last_error_message());
    const uint64_t k = 0xfeedull;
    cr_assert_eq(theus_state_init_field(st, "k", &k, THEUS_MEM_HOST), THEUS_OK);
    float a[48];
    int64_t b[5];
    double c[4];
    for (int i = 0; i < 48; i++)
        a[i] = (float)i * 0.5f;
    for (int i = 0; i < 5; i++)
        b[i] = 1000 + i;
    for (int i = 0; i < 4; i++)
        c[i] = (double)i - 2.0;
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "a", NULL, a, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "b", NULL, b, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_write(tx, "c", NULL, c, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    return st;
}

/* ---- the operation sequence ------------------------------------------------------- */

typedef enum op_kind { OP_WRITE, OP_ADD, OP_READ } op_kind;

typedef struct op {
    op_kind kind;
    const char *field;
    int whole;
    theus_region r;
} op;

#define R1(a, b) {.ndim = 1, .start = {a}, .stop = {b}}
#define R2(a0, b0, a1, b1) {.ndim = 2, .start = {a0, a1}, .stop = {b0, b1}}

/* More than eight deltas and more than eight reads, so that the staging arrays grow;
 * overlapping regions on several fields, so reads overlay staged writes and adds. */
static const op OPS[] = {
    {OP_WRITE, "a", 0, R2(0, 4, 0, 6)},
    {OP_ADD, "a", 0, R2(2, 8, 1, 4)},
    {OP_READ, "a", 0, R2(1, 6, 0, 5)},
    {OP_WRITE, "b", 0, R1(1, 4)},
    {OP_ADD, "c", 1, R1(0, 0)},
    {OP_READ, "b", 1, R1(0, 0)},
    {OP_ADD, "b", 0, R1(0, 2)},
    {OP_READ, "c", 0, R1(1, 3)},
    {OP_WRITE, "a", 0, R2(3, 4, 0, 6)},
    {OP_ADD, "a", 0, R2(0, 8, 5, 6)},
    {OP_READ, "a", 1, R2(0, 0, 0, 0)},
    {OP_WRITE, "b", 0, R1(4, 5)},
    {OP_ADD, "c", 0, R1(0, 1)},
    {OP_READ, "a", 0, R2(0, 1, 0, 6)},
    {OP_READ, "a", 0, R2(1, 2, 0, 6)},
    {OP_READ, "a", 0, R2(2, 3, 0, 6)},
    {OP_READ, "a", 0, R2(7, 8, 2, 5)},
    {OP_READ, "g", 1, R1(0, 0)},
    {OP_READ, "k", 1, R1(0, 0)},
    {OP_READ, "c", 1, R1(0, 0)},
};
#define NOPS (sizeof OPS / sizeof OPS[0])

static size_t field_elem_size(const char *f)
{
    return (f[0] == 'a' || f[0] == 'g') ? 4 : 8;
}

static size_t op_nelems(const op *o)
{
    if (o->whole) {
        switch (o->field[0]) {
        case 'a': return 48;
        case 'b': return 5;
        case 'c': return 4;
        case 'g': return 3;
        default: return 1;
        }
    }
    size_t n = 1;
    for (int d = 0; d < o->r.ndim; d++)
        n *= (size_t)(o->r.stop[d] - o->r.start[d]);
    return n;
}

/* The payload of write/add number @i: small values, exact in every dtype. */
static void payload(size_t i, const op *o, void *buf)
{
    size_t n = op_nelems(o);
    for (size_t e = 0; e < n; e++) {
        int v = (int)(i * 7 + e * 3) % 19 - 9;
        if (o->field[0] == 'a') {
            float x = (float)v;
            memcpy((char *)buf + 4 * e, &x, 4);
        } else if (o->field[0] == 'b') {
            int64_t x = v;
            memcpy((char *)buf + 8 * e, &x, 8);
        } else {
            double x = v;
            memcpy((char *)buf + 8 * e, &x, 8);
        }
    }
}

static int do_op(theus_tx *tx, size_t i, void *out)
{
    const op *o = &OPS[i];
    const theus_region *r = o->whole ? NULL : &o->r;
    if (o->kind == OP_READ)
        return theus_tx_read(tx, o->field, r, out, THEUS_MEM_HOST);
    unsigned char buf[MAX_FIELD_BYTES];
    payload(i, o, buf);
    return o->kind == OP_WRITE ? theus_tx_write(tx, o->field, r, buf, THEUS_MEM_HOST)
                               : theus_tx_add(tx, o->field, r, buf, THEUS_MEM_HOST);
}

/* What a run without failures produced: the result of every read, the final state, and
 * how many allocations the sequence made. */
typedef struct reference {
    unsigned char reads[NOPS][MAX_FIELD_BYTES];
    snapshot before, after;
    long allocs;
} reference;

static theus_tx_options tx_opts(int with_contract)
{
    static const char *const inputs[] = {"*"};
    static const char *const outputs[] = {"a", "b", "c"};
    static const theus_contract contract = {.name = "alloc-test",
                                            .inputs = inputs,
                                            .n_inputs = 1,
                                            .outputs = outputs,
                                            .n_outputs = 3};
    theus_tx_options o = THEUS_TX_OPTIONS_INIT;
    if (with_contract)
        o.contract = &contract;
    return o;
}

static void check_read(const reference *ref, size_t i, const unsigned char *got, long n)
{
    size_t nbytes = op_nelems(&OPS[i]) * field_elem_size(OPS[i].field);
    cr_assert_eq(memcmp(got, ref->reads[i], nbytes), 0, "N=%ld: read %zu differs", n, i);
}

static void build_reference(int with_contract, reference *ref)
{
    memset(ref, 0, sizeof *ref);
    theus_state *st = fresh_state();
    take_snapshot(st, &ref->before);
    theus_tx_options o = tx_opts(with_contract);
    arm(0);
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, &o, &tx), THEUS_OK);
    for (size_t i = 0; i < NOPS; i++)
        cr_assert_eq(do_op(tx, i, ref->reads[i]), THEUS_OK, "op %zu: %s", i,
                     theus_state_last_error(st));
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK, "%s", theus_state_last_error(st));
    ref->allocs = g_calls;
    take_snapshot(st, &ref->after);
    cr_assert_eq(ref->after.version, ref->before.version + 1);
    theus_state_destroy(st);
    cr_assert_eq(g_live, 0, "the reference run leaks");
    cr_assert_gt(ref->allocs, (long)NOPS / 2, "the sequence allocates");
}

/* Fail allocation @n of begin + ops + commit. With @resume, a failed step is retried
 * with failures off and the sequence goes on (a failed call leaves the transaction
 * usable); otherwise the transaction is aborted at the first failure. */
static void run_sequence(const reference *ref, int with_contract, int resume, long n)
{
    theus_state *st = fresh_state();
    snapshot snap;
    take_snapshot(st, &snap);
    cr_assert_eq(memcmp(&snap, &ref->before, sizeof snap), 0);
    const long live_before = g_live;
    theus_tx_options o = tx_opts(with_contract);
    unsigned char out[MAX_FIELD_BYTES];

    arm(n);
    theus_tx *tx = (theus_tx *)(uintptr_t)1;
    long c0 = g_calls;
    int rc = theus_tx_begin(st, &o, &tx);
    if (fired() && g_fail_at > c0) {
        cr_assert_eq(rc, THEUS_ENOMEM, "N=%ld: begin", n);
        cr_assert_null(tx, "N=%ld: a failed begin sets *out to NULL", n);
        disarm();
        cr_assert_eq(g_live, live_before, "N=%ld: begin leaks", n);
        if (!resume)
            goto check_unchanged;
        rc = theus_tx_begin(st, &o, &tx);
    }
    cr_assert_eq(rc, THEUS_OK, "N=%ld: begin", n);

    for (size_t i = 0; i < NOPS; i++) {
        c0 = g_calls;
        int was_armed = g_fail_at != 0;
        rc = do_op(tx, i, out);
        if (was_armed && fired() && g_fail_at > c0) {
            cr_assert_eq(rc, THEUS_ENOMEM, "N=%ld: op %zu returned %s", n, i, theus_strerror(rc));
            cr_assert_neq(theus_state_last_error(st)[0], '\0');
            disarm();
            if (!resume) {
                theus_tx_abort(tx);
                cr_assert_eq(g_live, live_before, "N=%ld: op %zu leaks", n, i);
                goto check_unchanged;
            }
            rc = do_op(tx, i, out); /* the transaction is as it was: the step works now */
        }
        cr_assert_eq(rc, THEUS_OK, "N=%ld: op %zu: %s", n, i, theus_state_last_error(st));
        if (OPS[i].kind == OP_READ)
            check_read(ref, i, out, n);
    }

    c0 = g_calls;
    int commit_armed = g_fail_at != 0;
    uint64_t cv = 0;
    rc = theus_tx_commit(tx, &cv);
    if (commit_armed && fired() && g_fail_at > c0) {
        cr_assert_eq(rc, THEUS_ENOMEM, "N=%ld: commit returned %s", n, theus_strerror(rc));
        disarm();
        cr_assert_eq(g_live, live_before, "N=%ld: failed commit leaks", n);
        goto check_unchanged;
    }
    disarm();
    cr_assert_eq(rc, THEUS_OK, "N=%ld: commit: %s", n, theus_state_last_error(st));
    cr_assert_eq(cv, ref->after.version);
    cr_assert_eq(g_live, live_before, "N=%ld: commit leaks", n);
    expect_snapshot(st, &ref->after, "committed", n);
    theus_state_destroy(st);
    cr_assert_eq(g_live, 0, "N=%ld: leak after destroy", n);
    return;

check_unchanged:
    expect_snapshot(st, &snap, "after a failure", n);
    theus_state_destroy(st);
    cr_assert_eq(g_live, 0, "N=%ld: leak after destroy", n);
}

static void sequence_scenario(int with_contract, int resume)
{
    reference *ref = malloc(sizeof *ref);
    cr_assert_not_null(ref);
    build_reference(with_contract, ref);
    for (long n = 1; n <= ref->allocs + 1; n++)
        run_sequence(ref, with_contract, resume, n);
    free(ref);
}

Test(alloc_fail, tx_sequence_abort_on_failure)
{
    sequence_scenario(0, 0);
}

Test(alloc_fail, tx_sequence_resume_after_failure)
{
    sequence_scenario(0, 1);
}

Test(alloc_fail, tx_sequence_with_contract)
{
    sequence_scenario(1, 0);
    sequence_scenario(1, 1);
}

/* ---- state creation ---------------------------------------------------------------- */

Test(alloc_fail, state_create)
{
    arm(0);
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create(SCHEMA, NULL, &st), THEUS_OK);
    const long k = g_calls;
    theus_state_destroy(st);
    cr_assert_eq(g_live, 0);
    cr_assert_gt(k, 0);
    for (long n = 1; n <= k + 1; n++) {
        arm(n);
        st = (theus_state *)(uintptr_t)1;
        int rc = theus_state_create(SCHEMA, NULL, &st);
        int f = fired();
        disarm();
        if (f) {
            cr_assert_eq(rc, THEUS_ENOMEM, "N=%ld: %s", n, theus_strerror(rc));
            cr_assert_null(st, "N=%ld", n);
            cr_assert_neq(theus_state_last_error(NULL)[0], '\0');
        } else {
            cr_assert_eq(rc, THEUS_OK, "N=%ld", n);
            cr_assert_eq(theus_state_version(st), 1u);
            theus_state_destroy(st);
        }
        cr_assert_eq(g_live, 0, "N=%ld: leak", n);
    }
}

Test(alloc_fail, state_create_from_file)
{
    char path[] = "/tmp/theus-test-alloc-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "%s", strerror(errno));
    size_t len = strlen(SCHEMA);
    cr_assert_eq(write(fd, SCHEMA, len), (ssize_t)len);
    cr_assert_eq(close(fd), 0);

    arm(0);
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create_from_file(path, NULL, &st), THEUS_OK);
    const long k = g_calls;
    theus_state_destroy(st);
    cr_assert_eq(g_live, 0);
    for (long n = 1; n <= k + 1; n++) {
        arm(n);
        st = (theus_state *)(uintptr_t)1;
        int rc = theus_state_create_from_file(path, NULL, &st);
        int f = fired();
        disarm();
        if (f) {
            cr_assert_eq(rc, THEUS_ENOMEM, "N=%ld: %s", n, theus_strerror(rc));
            cr_assert_null(st, "N=%ld", n);
        } else {
            cr_assert_eq(rc, THEUS_OK, "N=%ld", n);
            cr_assert_eq(theus_state_field_count(st), (size_t)NFIELDS);
            theus_state_destroy(st);
        }
        cr_assert_eq(g_live, 0, "N=%ld: leak", n);
    }
    unlink(path);
}

/* ---- initial values ---------------------------------------------------------------- */

static void init_field_scenario(const char *field, const void *value)
{
    /* Count on a state that has not committed yet (init_field needs that). */
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create(SCHEMA, NULL, &st), THEUS_OK);
    arm(0);
    cr_assert_eq(theus_state_init_field(st, field, value, THEUS_MEM_HOST), THEUS_OK);
    const long k = g_calls;
    theus_state_destroy(st);
    cr_assert_eq(g_live, 0);
    cr_assert_gt(k, 0, "staging an initial value allocates");

    for (long n = 1; n <= k + 1; n++) {
        cr_assert_eq(theus_state_create(SCHEMA, NULL, &st), THEUS_OK);
        snapshot snap;
        take_snapshot(st, &snap);
        const long live_before = g_live;
        arm(n);
        int rc = theus_state_init_field(st, field, value, THEUS_MEM_HOST);
        int f = fired();
        disarm();
        cr_assert_eq(g_live, live_before, "N=%ld: leak", n);
        if (f) {
            cr_assert_eq(rc, THEUS_ENOMEM, "N=%ld: %s", n, theus_strerror(rc));
            expect_snapshot(st, &snap, "init_field failed", n);
        } else {
            cr_assert_eq(rc, THEUS_OK, "N=%ld", n);
            snapshot now;
            take_snapshot(st, &now);
            int i = field[0] == 'k' ? 3 : 4;
            size_t nbytes = field[0] == 'k' ? 8 : 12;
            cr_assert_eq(memcmp(now.bytes[i], value, nbytes), 0);
        }
        theus_state_destroy(st);
        cr_assert_eq(g_live, 0, "N=%ld: leak after destroy", n);
    }
}

Test(alloc_fail, init_field)
{
    const uint64_t k = 0x1234;
    init_field_scenario("k", &k);
    const float g[3] = {1.5f, -2.0f, 3.25f}; /* constrained: the check runs too */
    init_field_scenario("g", g);
}

/* ---- theus_tx_run ------------------------------------------------------------------ */

typedef struct body_ctx {
    const reference *ref;
    long n;
    int calls;
    int failed_op;    /* index of the op that hit the failure, or -1 */
} body_ctx;

static int sequence_body(theus_tx *tx, void *user)
{
    body_ctx *b = user;
    b->calls++;
    unsigned char out[MAX_FIELD_BYTES];
    for (size_t i = 0; i < NOPS; i++) {
        long c0 = g_calls;
        int rc = do_op(tx, i, out);
        if (fired() && g_fail_at > c0) {
            b->failed_op = (int)i;
            cr_assert_eq(rc, THEUS_ENOMEM, "N=%ld: op %zu returned %s", b->n, i,
                         theus_strerror(rc));
            return rc;
        }
        cr_assert_eq(rc, THEUS_OK, "N=%ld: op %zu", b->n, i);
        if (OPS[i].kind == OP_READ)
            check_read(b->ref, i, out, b->n);
    }
    return THEUS_OK;
}

Test(alloc_fail, tx_run)
{
    reference *ref = malloc(sizeof *ref);
    cr_assert_not_null(ref);
    build_reference(1, ref);
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.tx = tx_opts(1);

    /* Count: theus_tx_run adds nothing of its own on a run without conflicts. */
    theus_state *st = fresh_state();
    body_ctx b = {.ref = ref, .n = 0, .calls = 0, .failed_op = -1};
    arm(0);
    cr_assert_eq(theus_tx_run(st, &ro, sequence_body, &b, NULL), THEUS_OK);
    const long k = g_calls;
    expect_snapshot(st, &ref->after, "tx_run reference", 0);
    theus_state_destroy(st);
    cr_assert_eq(g_live, 0);

    for (long n = 1; n <= k + 1; n++) {
        st = fresh_state();
        snapshot snap;
        take_snapshot(st, &snap);
        const long live_before = g_live;
        b = (body_ctx){.ref = ref, .n = n, .calls = 0, .failed_op = -1};
        arm(n);
        uint64_t cv = 0;
        int rc = theus_tx_run(st, &ro, sequence_body, &b, &cv);
        int f = fired();
        disarm();
        cr_assert_leq(b.calls, 1, "N=%ld: an out-of-memory failure is not retried", n);
        cr_assert_eq(g_live, live_before, "N=%ld: leak", n);
        if (f) {
            cr_assert_eq(rc, THEUS_ENOMEM, "N=%ld: %s", n, theus_strerror(rc));
            expect_snapshot(st, &snap, "tx_run failed", n);
        } else {
            cr_assert_eq(rc, THEUS_OK, "N=%ld", n);
            cr_assert_eq(cv, ref->after.version);
            expect_snapshot(st, &ref->after, "tx_run committed", n);
        }
        theus_state_destroy(st);
        cr_assert_eq(g_live, 0, "N=%ld: leak after destroy", n);
    }
    free(ref);
}

/* ---- the hooks themselves ---------------------------------------------------------- */

Test(alloc_fail, hooks_route_every_allocation)
{
    arm(0);
    theus_state *st = fresh_state();
    cr_assert_gt(g_live, 0, "the state's memory goes through the hooks");
    theus_state_destroy(st);
    cr_assert_eq(g_live, 0);
}

Test(alloc_hooks, half_a_pair_is_refused)
{
    cr_assert_eq(theus_set_alloc_funcs(count_malloc, NULL), THEUS_EINVAL);
    cr_assert_eq(theus_set_alloc_funcs(NULL, count_free), THEUS_EINVAL);
    /* The refused calls changed nothing: libc's allocator is still in use. */
    g_calls = 0;
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create(SCHEMA, NULL, &st), THEUS_OK);
    cr_assert_eq(g_calls, 0);
    theus_state_destroy(st);
    cr_assert_eq(theus_set_alloc_funcs(NULL, NULL), THEUS_OK);
}
