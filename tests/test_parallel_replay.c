/* The CPU backend's parallel replay (src/backend_cpu.c, src/replay_pool.c): random batches
 * of every dtype (1-D, 2-D and 3-D fields, strided sub-regions, assigns and adds of the
 * same elements in one batch, sizes that straddle the 64 KiB striping blocks) give the same
 * bytes with 1, 2 and 3 threads; a forked child replays with its own pool; concurrent
 * callers share the pool; large host fields from the CPU backend are zeroed whatever the
 * allocation hooks return. The thread count is set with replay_pool_set_threads (the test
 * hook of src/replay_pool.h), the thresholds with backend_cpu_set_tuning (src/backend.h):
 * low enough that batches of a few MiB take the parallel path, and streaming stores for
 * every field or for none. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "dtype.h"
#include "replay_pool.h"
#include "theus/theus.h"

/* ---- random batches ------------------------------------------------------------------- */

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static int64_t rnd_in(uint64_t *s, int64_t lo, int64_t hi)   /* [lo, hi] */
{
    return lo + (int64_t)(rnd(s) % (uint64_t)(hi - lo + 1));
}

/* Random values, finite for the float dtypes (so that the sums of every code path, BLAS
 * or loop, are the one correctly rounded value and the comparison can be bit-exact). */
static void fill(theus_dtype dt, void *buf, size_t n, uint64_t *s)
{
    unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rnd(s);
        switch (dt) {
        case THEUS_DTYPE_BOOL: b[i] = (unsigned char)(r & 1); break;
        case THEUS_DTYPE_F16: {
            uint16_t v = (uint16_t)(((r >> 20) & 1) << 15 | (uint64_t)rnd_in(s, 5, 25) << 10 |
                                    (r & 0x3ff));
            memcpy(b + 2 * i, &v, 2);
            break;
        }
        case THEUS_DTYPE_BF16: {
            uint16_t v = (uint16_t)(((r >> 20) & 1) << 15 | (uint64_t)rnd_in(s, 117, 137) << 7 |
                                    (r & 0x7f));
            memcpy(b + 2 * i, &v, 2);
            break;
        }
        case THEUS_DTYPE_F32: {
            uint32_t v = (uint32_t)(((r >> 40) & 1) << 31 | (uint64_t)rnd_in(s, 117, 137) << 23 |
                                    (r & 0x7fffff));
            memcpy(b + 4 * i, &v, 4);
            break;
        }
        case THEUS_DTYPE_F64: {
            uint64_t v = ((r >> 63) & 1) << 63 | (uint64_t)rnd_in(s, 1013, 1033) << 52 |
                         (r & 0xfffffffffffffu);
            memcpy(b + 8 * i, &v, 8);
            break;
        }
        default: {
            const size_t es = theus_dtype_size(dt);
            memcpy(b + es * i, &r, es);
            break;
        }
        }
    }
}

#define MAX_OPS 512

typedef struct batch {
    theus_dtype dt;
    size_t es;
    theus_region frame;
    size_t field_bytes;
    replay_op ops[MAX_OPS];
    void *payload[MAX_OPS];
    size_t n;
    size_t bytes;
} batch;

/* A random sub-region of the frame: per dimension either the whole extent (so that rows
 * fold into long runs) or a random slice (strided rows); in 1-D a run of a few elements up
 * to hundreds of KiB. */
static void random_sub(const batch *b, uint64_t *s, theus_region *r)
{
    memset(r, 0, sizeof *r);
    r->ndim = b->frame.ndim;
    for (int d = 0; d < r->ndim; d++) {
        const int64_t ext = b->frame.stop[d];
        int64_t len;
        if (d > 0 && rnd(s) % 3 == 0) {
            r->start[d] = 0;
            r->stop[d] = ext;
            continue;
        }
        if (r->ndim == 1) {
            const int64_t k = rnd_in(s, 0, 9);
            const int64_t cap = k < 3 ? 40 : k < 7 ? (int64_t)(96 << 10) / (int64_t)b->es
                                                   : (int64_t)(700 << 10) / (int64_t)b->es;
            len = rnd_in(s, 1, cap);
        } else {
            len = rnd_in(s, 1, ext);
        }
        if (len > ext)
            len = ext;
        r->start[d] = rnd_in(s, 0, ext - len);
        r->stop[d] = r->start[d] + len;
    }
}

/* A batch of at least @min_bytes over a field of @ndim dims laid out as @shape: random
 * ops, a third of them followed by another op on the very same region (an ADD after an
 * ASSIGN, or two ADDs...), so that one batch writes elements several times. */
static void make_batch(batch *b, theus_dtype dt, int ndim, const int64_t *shape, void *base,
                       size_t min_bytes, uint64_t seed)
{
    memset(b, 0, sizeof *b);
    uint64_t s = seed;
    b->dt = dt;
    b->es = theus_dtype_size(dt);
    b->frame.ndim = ndim;
    size_t nel = 1;
    for (int d = 0; d < ndim; d++) {
        b->frame.stop[d] = shape[d];
        nel *= (size_t)shape[d];
    }
    b->field_bytes = nel * b->es;
    while (b->n < MAX_OPS - 1 && (b->bytes < min_bytes || b->n < 24)) {
        theus_region r;
        random_sub(b, &s, &r);
        const int twice = rnd(&s) % 3 == 0;
        for (int k = 0; k <= twice; k++) {
            replay_op *o = &b->ops[b->n];
            o->op = rnd(&s) % 2 ? DELTA_ADD : DELTA_ASSIGN;
            o->dtype = dt;
            o->base = base;
            o->frame = &b->frame;
            o->sub = r;
            const size_t pn = region_nelems(&r);
            b->payload[b->n] = malloc(pn * b->es);
            cr_assert_not_null(b->payload[b->n]);
            fill(dt, b->payload[b->n], pn, &s);
            o->payload = b->payload[b->n];
            o->batch = NULL;
            b->bytes += pn * b->es;
            b->n++;
        }
    }
}

static void free_batch(batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->payload[i]);
}

static void rebase(batch *b, void *base)
{
    for (size_t i = 0; i < b->n; i++)
        b->ops[i].base = base;
}

/* aligned_alloc wants a multiple of the alignment. */
static unsigned char *alloc64(size_t n)
{
    return aligned_alloc(64, (n + 63) / 64 * 64);
}

static void replay(const batch *b)
{
    const theus_backend *cpu = backend_cpu();
    cr_assert_eq(cpu->iface->replay(cpu->ctx, b->ops, b->n), THEUS_OK);
}

/* Thresholds low enough that the test batches (a few MiB) take the parallel path, with
 * streaming stores for every field (@stream) or for none. */
static void tune(int stream)
{
    const backend_cpu_tuning t = {.parallel_min = (size_t)1 << 20, .parallel_min_seg = 1,
                                  .stream_min = stream ? 1 : SIZE_MAX};
    backend_cpu_set_tuning(&t);
}

/* Replay @b onto copies of one random field: one thread with ordinary stores (the
 * reference), one thread with streaming stores, 2 threads streaming, 3 threads not, checking
 * that the parallel path is taken, and compare the bytes. @skew: bytes between a 64-byte
 * boundary and the field's base (a multiple of the element size). */
#define NVARIANTS 4
static void check_identical(theus_dtype dt, int ndim, const int64_t *shape, size_t skew,
                            uint64_t seed)
{
    static const struct {
        int threads, stream;
    } var[NVARIANTS] = {{1, 0}, {1, 1}, {2, 1}, {3, 0}};
    static batch b;
    make_batch(&b, dt, ndim, shape, NULL, (size_t)3 << 20, seed);
    unsigned char *init = malloc(b.field_bytes);
    cr_assert_not_null(init);
    uint64_t s = seed ^ 0xf1e1d;
    fill(dt, init, b.field_bytes / b.es, &s);
    unsigned char *buf[NVARIANTS], *field[NVARIANTS];
    for (int v = 0; v < NVARIANTS; v++) {
        buf[v] = alloc64(b.field_bytes + 128);
        cr_assert_not_null(buf[v]);
        field[v] = buf[v] + skew;
        memcpy(field[v], init, b.field_bytes);
        rebase(&b, field[v]);
        replay_pool_set_threads(var[v].threads);
        tune(var[v].stream);
        cr_assert_eq(backend_cpu_replay_threads(b.ops, b.n), var[v].threads,
                     "%s, %d-D: a %zu-byte batch must take the %d-thread path",
                     theus_dtype_name(dt), ndim, b.bytes, var[v].threads);
        replay(&b);
    }
    replay_pool_set_threads(0);
    backend_cpu_set_tuning(NULL);
    for (int v = 1; v < NVARIANTS; v++) {
        size_t i = 0;
        while (i < b.field_bytes && field[0][i] == field[v][i])
            i++;
        cr_assert_eq(i, b.field_bytes,
                     "%s, %d-D, skew %zu: %d thread(s)%s differ from serial at byte %zu of %zu "
                     "(%zu ops, %zu payload bytes)",
                     theus_dtype_name(dt), ndim, skew, var[v].threads,
                     var[v].stream ? " with streaming stores" : "", i, b.field_bytes, b.n,
                     b.bytes);
    }
    cr_assert_neq(memcmp(field[0], init, b.field_bytes), 0, "the batch changed nothing");
    for (int v = 0; v < NVARIANTS; v++)
        free(buf[v]);
    free(init);
    free_batch(&b);
}

static const theus_dtype all_dtypes[] = {
    THEUS_DTYPE_BOOL, THEUS_DTYPE_U8,  THEUS_DTYPE_I8,  THEUS_DTYPE_U16, THEUS_DTYPE_I16,
    THEUS_DTYPE_U32,  THEUS_DTYPE_I32, THEUS_DTYPE_U64, THEUS_DTYPE_I64, THEUS_DTYPE_F16,
    THEUS_DTYPE_BF16, THEUS_DTYPE_F32, THEUS_DTYPE_F64,
};
#define NDTYPES (sizeof all_dtypes / sizeof all_dtypes[0])

/* About 2.5 MiB of elements, an odd count so that nothing lines up with the blocks. */
static int64_t elems_for(theus_dtype dt)
{
    return (int64_t)(((size_t)5 << 19) / theus_dtype_size(dt)) | 1;
}

/* ---- bit-identical results -------------------------------------------------------------- */

Test(parallel_replay, one_dim_every_dtype_identical_to_serial)
{
    for (size_t i = 0; i < NDTYPES; i++) {
        const theus_dtype dt = all_dtypes[i];
        const int64_t shape[1] = {elems_for(dt)};
        check_identical(dt, 1, shape, 0, 100 + i);
        /* A base an element past a 16-byte boundary (bases need element alignment only). */
        check_identical(dt, 1, shape, theus_dtype_size(dt) == 16 ? 0 : theus_dtype_size(dt),
                        200 + i);
    }
}

Test(parallel_replay, two_dim_strided_every_dtype_identical_to_serial)
{
    for (size_t i = 0; i < NDTYPES; i++) {
        const theus_dtype dt = all_dtypes[i];
        const int64_t cols = 1531;
        const int64_t shape[2] = {elems_for(dt) / cols, cols};
        check_identical(dt, 2, shape, 0, 300 + i);
    }
}

Test(parallel_replay, three_dim_strided_every_dtype_identical_to_serial)
{
    for (size_t i = 0; i < NDTYPES; i++) {
        const theus_dtype dt = all_dtypes[i];
        const int64_t shape[3] = {elems_for(dt) / (37 * 61), 37, 61};
        check_identical(dt, 3, shape, 2 * theus_dtype_size(dt), 400 + i);
    }
}

Test(parallel_replay, many_seeds_f32_and_f16)
{
    for (uint64_t seed = 1; seed <= 12; seed++) {
        const int64_t shape[1] = {elems_for(THEUS_DTYPE_F32)};
        check_identical(THEUS_DTYPE_F32, 1, shape, 4 * (seed % 16), 1000 + seed);
        const int64_t shape2[2] = {elems_for(THEUS_DTYPE_F16) / 4099, 4099};
        check_identical(THEUS_DTYPE_F16, 2, shape2, 2 * (seed % 32), 2000 + seed);
    }
}

/* ---- when the pool is not used -------------------------------------------------------- */

Test(parallel_replay, small_batches_and_unaligned_bases_stay_serial)
{
    static batch b;
    const int64_t shape[1] = {elems_for(THEUS_DTYPE_F32)};
    replay_pool_set_threads(2);
    tune(0);
    make_batch(&b, THEUS_DTYPE_F32, 1, shape, NULL, (size_t)3 << 20, 7);
    unsigned char *buf = alloc64(b.field_bytes + 128);
    cr_assert_not_null(buf);
    memset(buf, 0, b.field_bytes + 128);
    rebase(&b, buf + 64);
    cr_assert_eq(backend_cpu_replay_threads(b.ops, b.n), 2);
    /* The same batch on a base that is not element-aligned: serial, and still applied. */
    rebase(&b, buf + 65);
    cr_assert_eq(backend_cpu_replay_threads(b.ops, b.n), 1);
    replay(&b);
    /* One small op: never worth waking a thread, whatever the thresholds. */
    replay_op one = b.ops[0];
    one.sub.start[0] = 0;
    one.sub.stop[0] = 16;
    cr_assert_eq(backend_cpu_replay_threads(&one, 1), 1);
    cr_assert_eq(backend_cpu_replay_threads(b.ops, 0), 1);
    backend_cpu_set_tuning(NULL);
    cr_assert_eq(backend_cpu_replay_threads(&one, 1), 1);
    /* Many ops of 16 bytes: below the default average segment size. */
    replay_op *many = calloc(1 << 20, sizeof *many);
    cr_assert_not_null(many);
    for (size_t i = 0; i < (1 << 20); i++) {
        many[i] = one;
        many[i].sub.start[0] = (int64_t)(4 * (i % 1000));
        many[i].sub.stop[0] = many[i].sub.start[0] + 4;
    }
    cr_assert_eq(backend_cpu_replay_threads(many, 1 << 20), 1);
    free(many);
    replay_pool_set_threads(1);
    tune(0);
    rebase(&b, buf + 64);
    cr_assert_eq(backend_cpu_replay_threads(b.ops, b.n), 1, "THEUS_REPLAY_THREADS=1: serial");
    backend_cpu_set_tuning(NULL);
    replay_pool_set_threads(0);
    free(buf);
    free_batch(&b);
}

Test(parallel_replay, env_sets_the_thread_count)
{
    /* Criterion runs each test in its own process, where nothing has read it yet. */
    cr_assert_eq(setenv("THEUS_REPLAY_THREADS", "3", 1), 0);
    cr_assert_eq(replay_pool_threads(), 3);
    replay_pool_set_threads(2);
    cr_assert_eq(replay_pool_threads(), 2, "the test override wins");
    replay_pool_set_threads(0);
    cr_assert_eq(replay_pool_threads(), 3);
}

/* ---- the pool itself ---------------------------------------------------------------------- */

static int part_hits[REPLAY_POOL_MAX];
static int part_nt[REPLAY_POOL_MAX];

static void count_part(void *arg, int t, int nt)
{
    (void)arg;
    part_hits[t]++;
    part_nt[t] = nt;
}

Test(parallel_replay, pool_runs_every_part_once_and_grows)
{
    cr_assert_eq(replay_pool_run(1, count_part, NULL), 0, "one thread: the caller's job");
    for (int want = 2; want <= 5; want++) {
        for (int k = want; k >= 2; k--) {   /* fewer parts than workers, too */
            memset(part_hits, 0, sizeof part_hits);
            const int nt = replay_pool_run(k, count_part, NULL);
            cr_assert_eq(nt, k);
            for (int t = 0; t < REPLAY_POOL_MAX; t++) {
                cr_assert_eq(part_hits[t], t < nt ? 1 : 0, "part %d of %d ran %d times", t, nt,
                             part_hits[t]);
                if (t < nt)
                    cr_assert_eq(part_nt[t], nt);
            }
        }
    }
}

/* ---- concurrent callers ------------------------------------------------------------------ */

typedef struct caller {
    batch *b;
    const unsigned char *expect;
    unsigned char *field;
    const unsigned char *init;
    int rounds, bad;
} caller;

static void *caller_main(void *p)
{
    caller *c = p;
    for (int r = 0; r < c->rounds; r++) {
        memcpy(c->field, c->init, c->b->field_bytes);
        const theus_backend *cpu = backend_cpu();
        if (cpu->iface->replay(cpu->ctx, c->b->ops, c->b->n) != THEUS_OK ||
            memcmp(c->field, c->expect, c->b->field_bytes) != 0)
            c->bad++;
    }
    return NULL;
}

Test(parallel_replay, concurrent_callers_share_the_pool)
{
    /* Two threads replay large batches at once: one gets the pool, the other replays on its
     * own thread (or both in turn); every result must be the serial one. */
    static batch b[2];
    caller c[2];
    unsigned char *mem[2][3];
    for (int k = 0; k < 2; k++) {
        const theus_dtype dt = k ? THEUS_DTYPE_BF16 : THEUS_DTYPE_I32;
        const int64_t shape[2] = {elems_for(dt) / 999, 999};
        make_batch(&b[k], dt, 2, shape, NULL, (size_t)2 << 20, 77 + k);
        for (int j = 0; j < 3; j++) {
            mem[k][j] = malloc(b[k].field_bytes);
            cr_assert_not_null(mem[k][j]);
        }
        uint64_t s = 99 + k;
        fill(dt, mem[k][0], b[k].field_bytes / b[k].es, &s);   /* init */
        memcpy(mem[k][1], mem[k][0], b[k].field_bytes);       /* expected: serial */
        rebase(&b[k], mem[k][1]);
        replay_pool_set_threads(1);
        replay(&b[k]);
        rebase(&b[k], mem[k][2]);
        c[k] = (caller){.b = &b[k], .expect = mem[k][1], .field = mem[k][2],
                        .init = mem[k][0], .rounds = 20};
    }
    replay_pool_set_threads(2);
    tune(1);
    pthread_t tid[2];
    for (int k = 0; k < 2; k++)
        cr_assert_eq(pthread_create(&tid[k], NULL, caller_main, &c[k]), 0);
    for (int k = 0; k < 2; k++)
        pthread_join(tid[k], NULL);
    replay_pool_set_threads(0);
    backend_cpu_set_tuning(NULL);
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(c[k].bad, 0, "caller %d: %d of %d replays differ from serial", k, c[k].bad,
                     c[k].rounds);
        for (int j = 0; j < 3; j++)
            free(mem[k][j]);
        free_batch(&b[k]);
    }
}

/* ---- fork ------------------------------------------------------------------------------------ */

Test(parallel_replay, forked_child_replays_with_its_own_pool, .timeout = 120)
{
    static batch b;
    const int64_t shape[1] = {elems_for(THEUS_DTYPE_F32)};
    make_batch(&b, THEUS_DTYPE_F32, 1, shape, NULL, (size_t)3 << 20, 4242);
    unsigned char *init = malloc(b.field_bytes), *expect = malloc(b.field_bytes);
    unsigned char *field = malloc(b.field_bytes);
    cr_assert(init && expect && field);
    uint64_t s = 5;
    fill(THEUS_DTYPE_F32, init, b.field_bytes / 4, &s);
    memcpy(expect, init, b.field_bytes);
    rebase(&b, expect);
    replay_pool_set_threads(1);
    replay(&b);
    /* The parent starts its pool with a parallel replay... */
    replay_pool_set_threads(3);
    tune(1);
    memcpy(field, init, b.field_bytes);
    rebase(&b, field);
    cr_assert_eq(backend_cpu_replay_threads(b.ops, b.n), 3);
    replay(&b);
    cr_assert_eq(memcmp(field, expect, b.field_bytes), 0);
    /* ... and the child, which has none of the parent's threads, replays in parallel too (a
     * child that waited for the parent's workers would hang until the timeout). */
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        int ok = 1;
        for (int r = 0; r < 3 && ok; r++) {
            memcpy(field, init, b.field_bytes);
            const theus_backend *cpu = backend_cpu();
            ok = backend_cpu_replay_threads(b.ops, b.n) == 3 &&
                 cpu->iface->replay(cpu->ctx, b.ops, b.n) == THEUS_OK &&
                 memcmp(field, expect, b.field_bytes) == 0;
        }
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "the child did not exit normally (status %#x)", status);
    cr_assert_eq(WEXITSTATUS(status), 0, "the child's parallel replay differs from serial");
    /* The parent's pool still works after the fork. */
    memcpy(field, init, b.field_bytes);
    replay(&b);
    cr_assert_eq(memcmp(field, expect, b.field_bytes), 0);
    replay_pool_set_threads(0);
    backend_cpu_set_tuning(NULL);
    free(init);
    free(expect);
    free(field);
    free_batch(&b);
}

/* ---- through the public API ------------------------------------------------------------------ */

/* One transaction of overlapping writes and adds over a 2-D f32 and a 1-D i16 field;
 * returns the committed bytes of both, read back. */
static void commit_batch(int threads, float *out_w, int16_t *out_c, size_t wn, size_t cn)
{
    static const char *schema =
        "{\"name\": \"par\", \"fields\": {"
        "\"w\": {\"dtype\": \"f32\", \"shape\": [1024, 777], \"placement\": \"host\"},"
        "\"c\": {\"dtype\": \"i16\", \"shape\": [1500001], \"placement\": \"host\"}}}";
    replay_pool_set_threads(threads);
    tune(threads > 1);
    theus_state *st = NULL;
    cr_assert_eq(theus_state_create(schema, NULL, &st), THEUS_OK);
    theus_tx *tx = NULL;
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    uint64_t s = 31337;
    float *pw = malloc(wn * sizeof *pw);
    int16_t *pc = malloc(cn * sizeof *pc);
    cr_assert(pw && pc);
    for (int k = 0; k < 12; k++) {
        theus_region r = {.ndim = 2};
        r.start[0] = rnd_in(&s, 0, 600);
        r.stop[0] = r.start[0] + rnd_in(&s, 1, 424);
        r.start[1] = k % 3 ? rnd_in(&s, 0, 300) : 0;
        r.stop[1] = k % 3 ? r.start[1] + rnd_in(&s, 1, 477) : 777;
        fill(THEUS_DTYPE_F32, pw, region_nelems(&r), &s);
        cr_assert_eq((k % 2 ? theus_tx_add : theus_tx_write)(tx, "w", &r, pw, THEUS_MEM_HOST),
                     THEUS_OK);
        theus_region q = {.ndim = 1};
        q.start[0] = rnd_in(&s, 0, 700000);
        q.stop[0] = q.start[0] + rnd_in(&s, 1, 800000);
        fill(THEUS_DTYPE_I16, pc, region_nelems(&q), &s);
        cr_assert_eq((k % 3 ? theus_tx_add : theus_tx_write)(tx, "c", &q, pc, THEUS_MEM_HOST),
                     THEUS_OK);
    }
    cr_assert_eq(theus_tx_commit(tx, NULL), THEUS_OK);
    cr_assert_eq(theus_tx_begin(st, NULL, &tx), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "w", NULL, out_w, THEUS_MEM_HOST), THEUS_OK);
    cr_assert_eq(theus_tx_read(tx, "c", NULL, out_c, THEUS_MEM_HOST), THEUS_OK);
    theus_tx_abort(tx);
    theus_state_destroy(st);
    free(pw);
    free(pc);
    replay_pool_set_threads(0);
    backend_cpu_set_tuning(NULL);
}

Test(parallel_replay, commits_through_the_api_identical_to_serial)
{
    const size_t wn = 1024 * 777, cn = 1500001;
    float *w[2] = {malloc(wn * sizeof(float)), malloc(wn * sizeof(float))};
    int16_t *c[2] = {malloc(cn * sizeof(int16_t)), malloc(cn * sizeof(int16_t))};
    cr_assert(w[0] && w[1] && c[0] && c[1]);
    commit_batch(1, w[0], c[0], wn, cn);
    commit_batch(2, w[1], c[1], wn, cn);
    cr_assert_eq(memcmp(w[0], w[1], wn * sizeof(float)), 0, "f32 field differs");
    cr_assert_eq(memcmp(c[0], c[1], cn * sizeof(int16_t)), 0, "i16 field differs");
    for (int k = 0; k < 2; k++) {
        free(w[k]);
        free(c[k]);
    }
}

/* ---- host field memory -------------------------------------------------------------------- */

/* Allocation hooks that hand out blocks 8 bytes past malloc's alignment, so that the huge
 * page advice sees a pointer that is neither page- nor 16-byte aligned. */
static size_t hook_calls;
static void *odd_malloc(size_t n)
{
    hook_calls++;
    unsigned char *p = malloc(n + 8);
    if (!p)
        return NULL;
    memset(p, 0xa5, n + 8);   /* stale bytes: the backend must zero the block itself */
    return p + 8;
}
static void odd_free(void *p)
{
    free((unsigned char *)p - 8);
}

Test(parallel_replay, large_host_fields_are_zeroed_through_the_hooks)
{
    cr_assert_eq(theus_set_alloc_funcs(odd_malloc, odd_free), THEUS_OK);
    static const size_t sizes[] = {1, 4095, ((size_t)2 << 20) - 1, (size_t)2 << 20,
                                   ((size_t)2 << 20) + 1, ((size_t)9 << 20) + 24};
    const theus_backend *cpu = backend_cpu();
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = NULL;
        const size_t before = hook_calls;
        cr_assert_eq(cpu->iface->alloc(cpu->ctx, THEUS_PLACEMENT_HOST, sizes[i], &p), THEUS_OK);
        cr_assert_eq(hook_calls, before + 1, "field memory goes through the hooks");
        const unsigned char *b = p;
        size_t nz = 0;
        for (size_t k = 0; k < sizes[i]; k++)
            nz += b[k] != 0;
        cr_assert_eq(nz, 0, "%zu-byte field: %zu non-zero bytes", sizes[i], nz);
        memset(p, 1, sizes[i]);
        cpu->iface->free(cpu->ctx, THEUS_PLACEMENT_HOST, p);
    }
    cr_assert_eq(theus_set_alloc_funcs(NULL, NULL), THEUS_OK);
}
