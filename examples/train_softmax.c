/* train_softmax: softmax regression whose whole training state lives in a theus state.
 *
 * Two worker threads each compute the gradient of a batch of their own shard (OpenBLAS
 * sgemm) against the current weights, read through a transaction, and commit it as ADD
 * deltas to a gradient accumulator. The main thread is the optimizer: whenever the
 * accumulator holds at least one batch it applies an Adam step as one transaction (reads
 * the accumulator, the parameters and the moments; writes new parameters and moments,
 * resets the accumulator, bumps the step, records the loss). Conflicts between the two
 * sides are real and resolved by theus_tx_run: a worker whose weights went stale recomputes
 * its gradient, an optimizer that missed a late gradient takes it too.
 *
 * The program checks what it can see: the loss falls, held-out accuracy is good, no
 * gradient is lost or counted twice, the version counts the commits, and the gatekeeper,
 * contracts and the const zone refuse what they must. It exits non-zero otherwise.
 *
 * usage: train_softmax [--steps N] [--quick] [--seed N] [--schema PATH]
 */
#define _POSIX_C_SOURCE 200809L
#include <theus/theus.h>

#include "softmax.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef TRAIN_SOFTMAX_SCHEMA
#define TRAIN_SOFTMAX_SCHEMA "examples/schemas/train_softmax.json"
#endif

enum { NWORKERS = 2, BATCH = 64 };

/* ---- configuration ------------------------------------------------------------------- */

typedef struct config {
    long steps;
    size_t n_train, n_test;
    uint64_t seed;
    const char *schema;
    float lr;
    double cluster_scale; /* spread of the class centres; noise has unit variance */
} config;

static void usage(FILE *fp)
{
    fprintf(fp, "usage: train_softmax [--steps N] [--quick] [--seed N] [--schema PATH]\n"
                "  --steps N      optimizer steps (default 400, 150 with --quick)\n"
                "  --quick        smaller data set and fewer steps (for CI)\n"
                "  --seed N       seed of the data set and batch order (default 42)\n"
                "  --schema PATH  state schema (default " TRAIN_SOFTMAX_SCHEMA ")\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (!s || *s == '-' || *s == '\0')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, config *cfg)
{
    long steps = -1;
    int quick = 0;
    cfg->seed = 42;
    cfg->schema = TRAIN_SOFTMAX_SCHEMA;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint64_t v;
        if (strcmp(a, "--quick") == 0) {
            quick = 1;
        } else if (strcmp(a, "--steps") == 0 && i + 1 < argc) {
            if (parse_u64(argv[++i], &v) || v == 0 || v > 1000000) {
                fprintf(stderr, "train_softmax: --steps wants an integer in [1, 1000000]\n");
                return -1;
            }
            steps = (long)v;
        } else if (strcmp(a, "--seed") == 0 && i + 1 < argc) {
            if (parse_u64(argv[++i], &cfg->seed)) {
                fprintf(stderr, "train_softmax: --seed wants a non-negative integer\n");
                return -1;
            }
        } else if (strcmp(a, "--schema") == 0 && i + 1 < argc) {
            cfg->schema = argv[++i];
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else {
            fprintf(stderr, "train_softmax: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return -1;
        }
    }
    cfg->steps = steps > 0 ? steps : quick ? 150 : 400;
    cfg->n_train = quick ? 4096 : 8192;
    cfg->n_test = quick ? 1024 : 2048;
    cfg->lr = 0.01f;
    cfg->cluster_scale = 0.45;
    return 0;
}

/* ---- coordination between the workers and the optimizer ------------------------------ */

typedef struct shared {
    theus_state *st;
    pthread_mutex_t mu;
    pthread_cond_t work_ready; /* the optimizer waits for pending > 0 */
    pthread_cond_t step_done;  /* workers wait for applied_step to pass their batch's step */
    int64_t pending;           /* batches committed by workers and not yet seen consumed */
    int64_t applied_step;      /* the state's step after the optimizer's last commit */
    int done, failed;
} shared;

static void shared_fail(shared *sh)
{
    pthread_mutex_lock(&sh->mu);
    sh->failed = 1;
    sh->done = 1;
    pthread_cond_broadcast(&sh->work_ready);
    pthread_cond_broadcast(&sh->step_done);
    pthread_mutex_unlock(&sh->mu);
}

/* Print a failed theus call with this thread's error detail (it is kept per thread). */
static void report(theus_state *st, const char *who, const char *what, int rc)
{
    fprintf(stderr, "train_softmax: %s: %s failed: %s\n  %s\n", who, what, theus_strerror(rc),
            theus_state_last_error(st));
    theus_conflict c;
    if (theus_last_conflict(st, &c) == THEUS_OK)
        fprintf(stderr, "  last conflict: field '%s', version %llu after base %llu\n", c.field,
                (unsigned long long)c.version, (unsigned long long)c.base);
}

/* ---- workers ------------------------------------------------------------------------- */

static const char *const worker_inputs[] = {"W", "b", "step"};
static const char *const worker_outputs[] = {"grad_*"};
static const theus_contract worker_contract = {
    .name = "grad-worker",
    .inputs = worker_inputs, .n_inputs = 3,
    .outputs = worker_outputs, .n_outputs = 1,
};

typedef struct worker {
    int id;
    shared *sh;
    const dataset *train;
    size_t lo, n;        /* this worker's shard: rows [lo, lo + n) */
    size_t *perm, cursor;
    rng r;
    float x[BATCH * FEAT];
    int32_t y[BATCH];
    float W[FEAT * CLASSES], b[CLASSES], Z[BATCH * CLASSES], dW[FEAT * CLASSES], db[CLASSES];
    int64_t step_seen;   /* the step the committed gradient was computed at */
    uint64_t commits, attempts;
} worker;

/* Copy the next batch of the shard (reshuffled every epoch) into w->x, w->y. The batch is
 * fixed before the transaction, so a retried attempt recomputes the same batch. */
static void next_batch(worker *w)
{
    for (int i = 0; i < BATCH; i++) {
        if (w->cursor == 0)
            for (size_t k = w->n - 1; k > 0; k--) { /* Fisher-Yates */
                size_t j = (size_t)(rng_next(&w->r) % (k + 1));
                size_t t = w->perm[k];
                w->perm[k] = w->perm[j];
                w->perm[j] = t;
            }
        size_t row = w->lo + w->perm[w->cursor];
        w->cursor = (w->cursor + 1) % w->n;
        memcpy(&w->x[i * FEAT], &w->train->x[row * FEAT], FEAT * sizeof(float));
        w->y[i] = w->train->y[row];
    }
}

/* One attempt: read the parameters at the transaction's base, stage the gradient as ADDs.
 * Serializable isolation records the reads, so the commit fails (and theus_tx_run retries)
 * if the optimizer changed W or b, or reset the accumulator, in the meantime. */
static int worker_body(theus_tx *tx, void *user)
{
    worker *w = user;
    int rc;
    w->attempts++;
    if ((rc = theus_tx_read(tx, "step", NULL, &w->step_seen, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "W", NULL, w->W, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "b", NULL, w->b, THEUS_MEM_HOST)))
        return rc;
    float loss = loss_and_grad(w->x, w->y, BATCH, w->W, w->b, w->Z, w->dW, w->db);
    return add_gradient(tx, w->dW, w->db, loss);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    shared *sh = w->sh;
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.tx.contract = &worker_contract;
    char who[32];
    snprintf(who, sizeof who, "worker %d", w->id);
    for (;;) {
        pthread_mutex_lock(&sh->mu);
        int stop = sh->done;
        pthread_mutex_unlock(&sh->mu);
        if (stop)
            break;
        next_batch(w);
        int rc = theus_tx_run(sh->st, &ro, worker_body, w, NULL);
        if (rc != THEUS_OK) {
            report(sh->st, who, "committing a gradient", rc);
            shared_fail(sh);
            break;
        }
        w->commits++;
        /* One batch per step and worker: wait until the optimizer has consumed this one. */
        pthread_mutex_lock(&sh->mu);
        sh->pending++;
        pthread_cond_signal(&sh->work_ready);
        while (!sh->done && sh->applied_step <= w->step_seen)
            pthread_cond_wait(&sh->step_done, &sh->mu);
        pthread_mutex_unlock(&sh->mu);
    }
    return NULL;
}

/* ---- the optimizer ------------------------------------------------------------------- */

/* ---- evaluation (a read-only transaction) -------------------------------------------- */

static const char *const eval_inputs[] = {"W", "b", "step"};
static const theus_contract eval_contract = {
    .name = "evaluator", .inputs = eval_inputs, .n_inputs = 3, .outputs = NULL, .n_outputs = 0,
};

typedef struct eval_result {
    int64_t step;
    double loss, accuracy;
} eval_result;

static int evaluate(theus_state *st, const dataset *d, float *Z, eval_result *out)
{
    float W[FEAT * CLASSES], b[CLASSES];
    theus_tx_options to = THEUS_TX_OPTIONS_INIT;
    to.contract = &eval_contract;
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(st, &to, &tx);
    if (rc == THEUS_OK && ((rc = theus_tx_read(tx, "step", NULL, &out->step, THEUS_MEM_HOST)) ||
                           (rc = theus_tx_read(tx, "W", NULL, W, THEUS_MEM_HOST)) ||
                           (rc = theus_tx_read(tx, "b", NULL, b, THEUS_MEM_HOST)))) {
        theus_tx_abort(tx);
        return rc;
    }
    /* Nothing staged: commit publishes nothing and just releases the transaction. */
    if (rc == THEUS_OK)
        rc = theus_tx_commit(tx, NULL);
    if (rc != THEUS_OK)
        return rc;
    model_eval(d, W, b, Z, &out->loss, &out->accuracy);
    return THEUS_OK;
}

/* ---- setup checks -------------------------------------------------------------------- */

/* The program's shapes are compiled in; make sure the schema agrees before training. */
static int check_shapes(theus_state *st)
{
    static const struct { const char *name; theus_dtype dt; int ndim; int64_t d0, d1; } want[] = {
        {"W", THEUS_DTYPE_F32, 2, FEAT, CLASSES},       {"b", THEUS_DTYPE_F32, 1, CLASSES, 0},
        {"adam_mW", THEUS_DTYPE_F32, 2, FEAT, CLASSES}, {"adam_vW", THEUS_DTYPE_F32, 2, FEAT, CLASSES},
        {"adam_mb", THEUS_DTYPE_F32, 1, CLASSES, 0},    {"adam_vb", THEUS_DTYPE_F32, 1, CLASSES, 0},
        {"grad_W", THEUS_DTYPE_F32, 2, FEAT, CLASSES},  {"grad_b", THEUS_DTYPE_F32, 1, CLASSES, 0},
        {"grad_count", THEUS_DTYPE_I64, 0, 0, 0},       {"grad_loss", THEUS_DTYPE_F32, 0, 0, 0},
        {"step", THEUS_DTYPE_I64, 0, 0, 0},             {"loss", THEUS_DTYPE_F32, 1, 1, 0},
        {"seed", THEUS_DTYPE_U64, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        theus_field_info fi;
        int rc = theus_state_field_info(st, want[i].name, &fi);
        if (rc != THEUS_OK) {
            fprintf(stderr, "train_softmax: schema: %s\n", theus_state_last_error(st));
            return -1;
        }
        int ok = fi.dtype == want[i].dt && fi.ndim == want[i].ndim &&
                 (fi.ndim < 1 || fi.shape[0] == want[i].d0) &&
                 (fi.ndim < 2 || fi.shape[1] == want[i].d1);
        if (!ok) {
            fprintf(stderr, "train_softmax: schema: field '%s' is not %s with %d dimension(s) "
                            "of this program's shape (%d features, %d classes)\n",
                    want[i].name, theus_dtype_name(want[i].dt), want[i].ndim, FEAT, CLASSES);
            return -1;
        }
    }
    theus_field_info fi;
    theus_state_field_info(st, "seed", &fi);
    if (fi.zone != THEUS_ZONE_CONST) {
        fprintf(stderr, "train_softmax: schema: field 'seed' must be in the const zone\n");
        return -1;
    }
    return 0;
}

/* After training: the runtime must refuse what the schema, contracts and zones forbid,
 * and leave the state unchanged. Returns the number of failed checks. */
static int check_refusals(theus_state *st)
{
    int failures = 0;
    uint64_t v0 = theus_state_version(st);
    theus_tx *tx = NULL;

    /* 1. The gatekeeper refuses a NaN loss ("finite") at commit. */
    float nan_loss = NAN;
    int rc = theus_tx_begin(st, NULL, &tx);
    if (rc == THEUS_OK && (rc = theus_tx_write(tx, "loss", NULL, &nan_loss, THEUS_MEM_HOST)))
        theus_tx_abort(tx);
    if (rc == THEUS_OK)
        rc = theus_tx_commit(tx, NULL);
    int ok = rc == THEUS_ESCHEMA && theus_state_version(st) == v0;
    printf("  gatekeeper  NaN loss refused at commit: %s\n      %s\n", ok ? "yes" : "NO",
           theus_state_last_error(st));
    failures += !ok;

    /* 2. A worker's contract does not let it write the weights (refused at the call). */
    theus_tx_options to = THEUS_TX_OPTIONS_INIT;
    to.contract = &worker_contract;
    float w[FEAT * CLASSES] = {0};
    rc = theus_tx_begin(st, &to, &tx);
    if (rc == THEUS_OK) {
        rc = theus_tx_write(tx, "W", NULL, w, THEUS_MEM_HOST);
        theus_tx_abort(tx);
    }
    ok = rc == THEUS_EPERM;
    printf("  contract    grad-worker writing W refused: %s\n      %s\n", ok ? "yes" : "NO",
           theus_state_last_error(st));
    failures += !ok;

    /* 3. The const seed refuses writes from any transaction, and init_field after the
     *    first commit. */
    uint64_t seed = 0;
    rc = theus_tx_begin(st, NULL, &tx);
    if (rc == THEUS_OK) {
        rc = theus_tx_write(tx, "seed", NULL, &seed, THEUS_MEM_HOST);
        theus_tx_abort(tx);
    }
    int rc2 = theus_state_init_field(st, "seed", &seed, THEUS_MEM_HOST);
    ok = rc == THEUS_EPERM && rc2 == THEUS_EBUSY;
    printf("  const zone  writing seed refused (%s), init_field refused (%s): %s\n",
           theus_strerror(rc), theus_strerror(rc2), ok ? "yes" : "NO");
    failures += !ok;

    if (theus_state_version(st) != v0) {
        printf("  a refused call changed the state version\n");
        failures++;
    }
    return failures;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- main ---------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    config cfg;
    if (parse_args(argc, argv, &cfg) != 0)
        return 2;
#ifdef OPENBLAS_VERSION
    /* The two workers are the parallelism; small GEMMs gain nothing from BLAS threads. */
    openblas_set_num_threads(1);
#endif
    int status = 1;
    theus_state *st = NULL;
    dataset train = {.n = cfg.n_train}, test = {.n = cfg.n_test};
    worker *workers[NWORKERS] = {0};
    pthread_t tids[NWORKERS];
    int nstarted = 0;
    float *Z = NULL;
    shared sh = {0};
    pthread_mutex_init(&sh.mu, NULL);
    pthread_cond_init(&sh.work_ready, NULL);
    pthread_cond_init(&sh.step_done, NULL);

    /* 1. The state, from its schema; fields start zeroed (W = 0 is a fine start for a
     *    convex problem), versions start at 1. */
    int rc = theus_state_create_from_file(cfg.schema, NULL, &st);
    if (rc != THEUS_OK) {
        fprintf(stderr, "train_softmax: cannot create the state from %s: %s\n  %s\n",
                cfg.schema, theus_strerror(rc), theus_last_error_message());
        goto done;
    }
    if (check_shapes(st) != 0)
        goto done;
    sh.st = st;
    theus_field_info wi;
    theus_state_field_info(st, "W", &wi);
    printf("theus %d.%d.%d  state '%s': %zu fields, version %llu; W asked for %s memory, "
           "lives in %s memory%s\n",
           THEUS_VERSION_MAJOR, THEUS_VERSION_MINOR, THEUS_VERSION_PATCH, theus_state_name(st),
           theus_state_field_count(st), (unsigned long long)theus_state_version(st),
           theus_placement_name(wi.requested), theus_placement_name(wi.placement),
           wi.placement != wi.requested ? " (no GPU: fallback)" : "");

    /* 2. The const seed gets its value before the first commit; everything random below
     *    derives from the value read back from the state. */
    rc = theus_state_init_field(st, "seed", &cfg.seed, THEUS_MEM_HOST);
    if (rc != THEUS_OK) {
        report(st, "main", "theus_state_init_field(seed)", rc);
        goto done;
    }
    uint64_t seed = 0;
    theus_tx *tx = NULL;
    if ((rc = theus_tx_begin(st, NULL, &tx)) == THEUS_OK) {
        rc = theus_tx_read(tx, "seed", NULL, &seed, THEUS_MEM_HOST);
        theus_tx_abort(tx);
    }
    if (rc != THEUS_OK) {
        report(st, "main", "reading the seed", rc);
        goto done;
    }
    if (make_data(seed, cfg.cluster_scale, &train, &test) != 0 ||
        !(Z = malloc(test.n * CLASSES * sizeof *Z))) {
        fprintf(stderr, "train_softmax: out of memory\n");
        goto done;
    }
    printf("data: %d classes, %d features, %zu train rows (%d shards), %zu held-out rows, "
           "seed %llu\n", CLASSES, FEAT, train.n, NWORKERS, test.n, (unsigned long long)seed);
    printf("training: %ld Adam steps, batches of %d rows, lr %g\n\n", cfg.steps, BATCH,
           (double)cfg.lr);

    eval_result ev0;
    if ((rc = evaluate(st, &test, Z, &ev0)) != THEUS_OK) {
        report(st, "main", "evaluating", rc);
        goto done;
    }
    printf("%6s %8s %12s %14s %13s\n", "step", "batches", "train loss", "held-out loss",
           "held-out acc");
    printf("%6lld %8s %12s %14.4f %12.1f%%\n", (long long)ev0.step, "-", "-", ev0.loss,
           100.0 * ev0.accuracy);

    /* Filled by the training loop below, read after the workers are joined. */
    double elapsed = 0.0, first_loss = -1.0, last_window = 0.0;
    int64_t consumed = 0;
    eval_result ev = ev0;
    int train_ok = 0;

    /* 3. Workers. */
    for (int k = 0; k < NWORKERS; k++) {
        worker *w = calloc(1, sizeof *w);
        if (!w || !(w->perm = malloc(train.n / NWORKERS * sizeof *w->perm))) {
            free(w);
            fprintf(stderr, "train_softmax: out of memory\n");
            shared_fail(&sh);
            goto join;
        }
        w->id = k;
        w->sh = &sh;
        w->train = &train;
        w->n = train.n / NWORKERS;
        w->lo = (size_t)k * w->n;
        for (size_t i = 0; i < w->n; i++)
            w->perm[i] = i;
        w->r.s = seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(k + 1));
        workers[k] = w;
        if (pthread_create(&tids[k], NULL, worker_main, w) != 0) {
            fprintf(stderr, "train_softmax: cannot start worker %d\n", k);
            shared_fail(&sh);
            goto join;
        }
        nstarted++;
    }

    /* 4. The optimizer: one Adam step per transaction, as soon as a batch is in. */
    optimizer *opt = calloc(1, sizeof *opt);
    if (!opt) {
        shared_fail(&sh);
        goto join;
    }
    opt->hp = (adam_hp){.lr = cfg.lr, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.tx.contract = &optimizer_contract;
    const long log_every = cfg.steps >= 10 ? cfg.steps / 10 : 1;
    double t0 = now_s(), window_loss = 0.0;
    int64_t window_batches = 0;
    long window_steps = 0;
    ev = ev0;
    train_ok = 1;
    for (long s = 0; s < cfg.steps; s++) {
        pthread_mutex_lock(&sh.mu);
        while (sh.pending <= 0 && !sh.failed)
            pthread_cond_wait(&sh.work_ready, &sh.mu);
        int failed = sh.failed;
        pthread_mutex_unlock(&sh.mu);
        if (failed) {
            train_ok = 0;
            break;
        }
        rc = theus_tx_run(st, &ro, optimizer_body, opt, NULL);
        if (rc != THEUS_OK) {
            if (rc == NOTHING_TO_APPLY)
                fprintf(stderr, "train_softmax: optimizer: accumulator empty although a "
                                "worker committed a batch\n");
            else
                report(st, "optimizer", "applying a step", rc);
            shared_fail(&sh);
            train_ok = 0;
            break;
        }
        consumed += opt->count;
        if (first_loss < 0.0)
            first_loss = opt->loss;
        window_loss += opt->loss;
        window_batches += opt->count;
        window_steps++;
        pthread_mutex_lock(&sh.mu);
        sh.pending -= opt->count;
        sh.applied_step = opt->step + 1;
        pthread_cond_broadcast(&sh.step_done);
        pthread_mutex_unlock(&sh.mu);

        if ((s + 1) % log_every == 0 || s + 1 == cfg.steps) {
            if ((rc = evaluate(st, &test, Z, &ev)) != THEUS_OK) {
                report(st, "main", "evaluating", rc);
                shared_fail(&sh);
                train_ok = 0;
                break;
            }
            last_window = window_loss / (double)window_steps;
            printf("%6lld %8lld %12.4f %14.4f %12.1f%%\n", (long long)ev.step,
                   (long long)window_batches, last_window, ev.loss, 100.0 * ev.accuracy);
            window_loss = 0.0;
            window_batches = 0;
            window_steps = 0;
        }
    }
    elapsed = now_s() - t0;
    pthread_mutex_lock(&sh.mu);
    sh.done = 1;
    pthread_cond_broadcast(&sh.step_done);
    pthread_mutex_unlock(&sh.mu);
    free(opt);

join:
    for (int k = 0; k < nstarted; k++)
        pthread_join(tids[k], NULL);
    if (nstarted < NWORKERS || sh.failed)
        goto done;

    /* 5. What the runtime saw, and invariants a broken runtime would break. */
    theus_stats stats;
    theus_state_stats(st, &stats);
    uint64_t worker_commits = 0, worker_attempts = 0;
    for (int k = 0; k < NWORKERS; k++) {
        worker_commits += workers[k]->commits;
        worker_attempts += workers[k]->attempts;
    }
    int64_t left = -1, final_step = -1;
    if ((rc = theus_tx_begin(st, NULL, &tx)) == THEUS_OK) {
        if ((rc = theus_tx_read(tx, "grad_count", NULL, &left, THEUS_MEM_HOST)) == THEUS_OK)
            rc = theus_tx_read(tx, "step", NULL, &final_step, THEUS_MEM_HOST);
        theus_tx_abort(tx);
    }
    if (rc != THEUS_OK) {
        report(st, "main", "reading the final state", rc);
        goto done;
    }
    uint64_t version = theus_state_version(st);
    printf("\ntrained %ld steps in %.2f s: %llu gradient batches committed by %d workers "
           "(%llu attempts)\n",
           cfg.steps, elapsed, (unsigned long long)worker_commits, NWORKERS,
           (unsigned long long)worker_attempts);
    printf("stats: commits %llu, conflicts %llu, retries %llu, priority runs %llu, aborts %llu, "
           "schema refusals %llu\n",
           (unsigned long long)stats.commits, (unsigned long long)stats.conflicts,
           (unsigned long long)stats.retries, (unsigned long long)stats.priority_runs,
           (unsigned long long)stats.aborts, (unsigned long long)stats.schema_refusals);
    printf("final state version: %llu\n", (unsigned long long)version);

    int failures = 0;
    if (final_step != cfg.steps) {
        printf("FAIL: the state's step is %lld, expected %ld\n", (long long)final_step, cfg.steps);
        failures++;
    }
    if ((int64_t)worker_commits != consumed + left) {
        printf("FAIL: %llu batches committed but %lld consumed + %lld left in the accumulator\n",
               (unsigned long long)worker_commits, (long long)consumed, (long long)left);
        failures++;
    }
    if (version != 1 + stats.commits || stats.commits != worker_commits + (uint64_t)cfg.steps) {
        printf("FAIL: version %llu, %llu commits; expected 1 + %llu worker + %ld optimizer\n",
               (unsigned long long)version, (unsigned long long)stats.commits,
               (unsigned long long)worker_commits, cfg.steps);
        failures++;
    }
    printf("invariants: step = %lld, batches committed %llu = consumed %lld + left %lld, "
           "version = 1 + commits: %s\n",
           (long long)final_step, (unsigned long long)worker_commits, (long long)consumed,
           (long long)left, failures ? "NO" : "yes");

    printf("refusals:\n");
    failures += check_refusals(st);

    /* 6. The verdict. */
    const double min_accuracy = 0.85;
    int fell = train_ok && first_loss > 0.0 && last_window < 0.5 * first_loss &&
               ev.loss < 0.5 * ev0.loss;
    int accurate = ev.accuracy >= min_accuracy;
    if (!fell)
        printf("FAIL: the loss did not fall enough (train %.4f -> %.4f, held-out %.4f -> %.4f)\n",
               first_loss, last_window, ev0.loss, ev.loss);
    if (!accurate)
        printf("FAIL: held-out accuracy %.1f%% is below %.0f%%\n", 100.0 * ev.accuracy,
               100.0 * min_accuracy);
    if (fell && accurate && failures == 0) {
        printf("OK: train loss %.4f -> %.4f, held-out loss %.4f -> %.4f, held-out accuracy "
               "%.1f%%\n", first_loss, last_window, ev0.loss, ev.loss, 100.0 * ev.accuracy);
        status = 0;
    }

done:
    for (int k = 0; k < NWORKERS; k++)
        if (workers[k]) {
            free(workers[k]->perm);
            free(workers[k]);
        }
    free(Z);
    free_data(&train);
    free_data(&test);
    theus_state_destroy(st);
    pthread_cond_destroy(&sh.step_done);
    pthread_cond_destroy(&sh.work_ready);
    pthread_mutex_destroy(&sh.mu);
    return status;
}
