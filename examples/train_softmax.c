/* train_softmax: softmax regression whose whole training state lives in a theus state,
 * trained by a workflow of processes (theus/theus_process.h, docs/processes.md).
 *
 * The engine's worker pool runs two gradient processes, each computing the gradient of a
 * batch of its own shard (OpenBLAS sgemm) against the committed weights and adding it to an
 * accumulator as ADD deltas (they never conflict); each publishes the signal "grad". The
 * workflow (examples/workflows/train_softmax.json) waits for both signals, runs the Adam
 * step (reads the accumulator, parameters and moments; writes new parameters and moments,
 * resets the accumulator, bumps the step), and evaluates on held-out data when the step
 * asks for it, while step < max_steps. The schema's audit watches the loss (finite, level
 * S: a NaN stops the engine) and the gradient (max_abs, level B). Side effects that must
 * happen once per commit — a worker's next batch, the training counters, a row of the
 * table — go through the outbox.
 *
 * The program checks what it can see: the loss falls, held-out accuracy is good, no
 * gradient is lost or counted twice, the version counts the commits, and the audit,
 * contracts and the const zone refuse what they must. It exits non-zero otherwise.
 *
 * With --dir PATH the state is durable (theus/theus_durable.h): every commit is in the
 * directory's write-ahead log before it returns, so a run killed at any point is resumed by
 * running the same command again: it recovers the last acknowledged step and goes on to
 * --steps (a checkpoint is written after recovery and at the end). The workflow keeps its
 * position in the state (field wf_next, committed with each step), so the resumed run goes
 * on at the step after the last one committed — an evaluation that was due still runs —
 * instead of starting the workflow over.
 *
 * --kill-at-step N kills the program (SIGKILL, as `kill -9` would) right after the commit of
 * optimizer step N, for the resume test (examples/train_softmax_resume.cmake).
 *
 * usage: train_softmax [--steps N] [--quick] [--seed N] [--schema PATH] [--workflow PATH]
 *                      [--dir PATH] [--kill-at-step N]
 */
#define _POSIX_C_SOURCE 200809L
#include <theus/theus.h>
#include <theus/theus_durable.h>
#include <theus/theus_process.h>

#include "softmax.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef TRAIN_SOFTMAX_SCHEMA
#define TRAIN_SOFTMAX_SCHEMA "examples/schemas/train_softmax.json"
#endif
#ifndef TRAIN_SOFTMAX_WORKFLOW
#define TRAIN_SOFTMAX_WORKFLOW "examples/workflows/train_softmax.json"
#endif

enum { NWORKERS = 2, BATCH = 64 };

/* ---- configuration ------------------------------------------------------------------- */

typedef struct config {
    long steps;
    size_t n_train, n_test;
    uint64_t seed;
    const char *schema, *workflow;
    const char *dir;      /* --dir: durable state directory (NULL: in memory) */
    long kill_at;         /* --kill-at-step: SIGKILL after that step's commit (0: never) */
    float lr;
    double cluster_scale; /* spread of the class centres; noise has unit variance */
} config;

static void usage(FILE *fp)
{
    fprintf(fp, "usage: train_softmax [--steps N] [--quick] [--seed N] [--schema PATH] "
                "[--workflow PATH]\n"
                "  --steps N      optimizer steps (default 400, 150 with --quick)\n"
                "  --quick        smaller data set and fewer steps (for CI)\n"
                "  --seed N       seed of the data set and batch order (default 42)\n"
                "  --schema PATH  state schema (default " TRAIN_SOFTMAX_SCHEMA ")\n"
                "  --workflow PATH  the training workflow (default " TRAIN_SOFTMAX_WORKFLOW ")\n"
                "  --dir PATH     keep the state durable in PATH: created, or resumed\n"
                "  --kill-at-step N  die (SIGKILL) right after step N commits (to test --dir)\n");
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
    cfg->dir = NULL;
    cfg->kill_at = 0;
    cfg->schema = TRAIN_SOFTMAX_SCHEMA;
    cfg->workflow = TRAIN_SOFTMAX_WORKFLOW;
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
        } else if (strcmp(a, "--workflow") == 0 && i + 1 < argc) {
            cfg->workflow = argv[++i];
        } else if (strcmp(a, "--kill-at-step") == 0 && i + 1 < argc) {
            if (parse_u64(argv[++i], &v) || v == 0 || v > 1000000) {
                fprintf(stderr, "train_softmax: --kill-at-step wants an integer in [1, 1000000]\n");
                return -1;
            }
            cfg->kill_at = (long)v;
        } else if (strcmp(a, "--dir") == 0 && i + 1 < argc) {
            cfg->dir = argv[++i];
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

/* --dir: the state from (or into) a durable directory; the schema file is read only to
 * create it. Commits of the two workers share fsyncs (THEUS_SYNC_GROUP). */
static int open_durable(const config *cfg, theus_state **st)
{
    FILE *fp = fopen(cfg->schema, "rb");
    char *text = NULL;
    long n = -1;
    if (fp && fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0 &&
        (text = calloc(1, (size_t)n + 1)) && fread(text, 1, (size_t)n, fp) != (size_t)n)
        n = -1;
    if (fp)
        fclose(fp);
    if (n < 0 || !text) {
        fprintf(stderr, "train_softmax: cannot read %s\n", cfg->schema);
        free(text);
        return THEUS_EIO;
    }
    theus_durable_options o = THEUS_DURABLE_OPTIONS_INIT;
    o.sync = THEUS_SYNC_GROUP;
    int rc = theus_state_open_durable(cfg->dir, text, NULL, &o, st);
    free(text);
    return rc;
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

/* ---- the processes --------------------------------------------------------------------
 * Every body may run several times (a conflict retries it): what must happen once per
 * commit (advancing a worker's batch, the training counters, printing a row) is queued in
 * the outbox, which runs after the commit, once, in commit order. */

/* load: the run's step budget, the loop bound of the workflow. */
typedef struct run_info {
    const config *cfg;
    long log_every;
} run_info;

static int load_body(theus_run *run, void *user)
{
    const run_info *ri = user;
    int64_t steps = ri->cfg->steps;
    return theus_tx_write(theus_run_tx(run), "max_steps", NULL, &steps, THEUS_MEM_HOST);
}

/* grad0, grad1: the gradient of this worker's current batch, added to the accumulator. */
typedef struct worker {
    int id;
    const dataset *train;
    size_t lo, n;        /* this worker's shard: rows [lo, lo + n) */
    size_t *perm, cursor;
    rng r;
    float x[BATCH * FEAT];
    int32_t y[BATCH];
    float W[FEAT * CLASSES], b[CLASSES], Z[BATCH * CLASSES], dW[FEAT * CLASSES], db[CLASSES];
    uint64_t commits;    /* counted by the outbox: once per committed gradient */
} worker;

/* Copy the next batch of the shard (reshuffled every epoch) into w->x, w->y. */
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

/* After the gradient's commit: the next batch for the next step. */
static void worker_committed(void *arg, uint64_t version)
{
    (void)version;
    worker *w = arg;
    w->commits++;
    next_batch(w);
}

static int worker_body(theus_run *run, void *user)
{
    worker *w = user;
    theus_tx *tx = theus_run_tx(run);
    int rc;
    if ((rc = theus_tx_read(tx, "W", NULL, w->W, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "b", NULL, w->b, THEUS_MEM_HOST)))
        return rc;
    float loss = loss_and_grad(w->x, w->y, BATCH, w->W, w->b, w->Z, w->dW, w->db);
    if ((rc = add_gradient(tx, w->dW, w->db, loss)) || (rc = theus_run_signal(run, "grad")))
        return rc;
    return theus_run_outbox(run, worker_committed, NULL, w);
}

/* adam: one optimizer step over the accumulator (softmax.h), and whether to evaluate. */
typedef struct trainer {
    optimizer opt;
    const run_info *ri;
    int64_t max_steps;
    /* Kept by the outbox, once per committed step. */
    int64_t consumed, steps_done;
    double first_loss, window_loss, last_window;
    int64_t window_batches;
    long window_steps;
    /* What the attempt that committed computed (copied by the outbox). */
    float step_loss;
    int64_t step_count;
} trainer;

static void step_committed(void *arg, uint64_t version)
{
    (void)version;
    trainer *t = arg;
    t->consumed += t->step_count;
    t->steps_done++;
    if (t->first_loss < 0.0)
        t->first_loss = t->step_loss;
    t->window_loss += t->step_loss;
    t->window_batches += t->step_count;
    t->window_steps++;
    if (t->ri->cfg->kill_at && t->opt.step + 1 == t->ri->cfg->kill_at) {
        /* The step is committed (and, with --dir, in the log): die as kill -9 would. */
        printf("killed after step %ld (--kill-at-step)\n", t->ri->cfg->kill_at);
        fflush(stdout);
        raise(SIGKILL);
    }
}

static int adam_body(theus_run *run, void *user)
{
    trainer *t = user;
    theus_tx *tx = theus_run_tx(run);
    int rc = theus_tx_read(tx, "max_steps", NULL, &t->max_steps, THEUS_MEM_HOST);
    if (rc || (rc = optimizer_body(tx, &t->opt)))
        return rc;
    const int64_t step = t->opt.step + 1;
    int32_t due = step % t->ri->log_every == 0 || step >= t->max_steps;
    if ((rc = theus_tx_write(tx, "eval_due", NULL, &due, THEUS_MEM_HOST)))
        return rc;
    t->step_loss = t->opt.loss;
    t->step_count = t->opt.count;
    return theus_run_outbox(run, step_committed, NULL, t);
}

/* evaluate: held-out loss and accuracy of the committed weights, into the state; the row of
 * the progress table is printed by the outbox, once. */
typedef struct evaluator {
    const dataset *test;
    trainer *tr;
    float *Z;
    float W[FEAT * CLASSES], b[CLASSES];
    int64_t step;
    double loss, accuracy;
    double first_loss;   /* at step 0 */
    int rows;
} evaluator;

static void print_row(void *arg, uint64_t version)
{
    (void)version;
    evaluator *ev = arg;
    trainer *t = ev->tr;
    if (ev->rows++ == 0) {
        ev->first_loss = ev->loss;
        printf("%6s %8s %12s %14s %13s\n", "step", "batches", "train loss", "held-out loss",
               "held-out acc");
    }
    if (t->window_steps == 0) { /* the starting point (a resumed run may have steps already) */
        printf("%6lld %8s %12s %14.4f %12.1f%%\n", (long long)ev->step, "-", "-", ev->loss,
               100.0 * ev->accuracy);
        return;
    }
    t->last_window = t->window_steps ? t->window_loss / (double)t->window_steps : 0.0;
    printf("%6lld %8lld %12.4f %14.4f %12.1f%%\n", (long long)ev->step,
           (long long)t->window_batches, t->last_window, ev->loss, 100.0 * ev->accuracy);
    t->window_loss = 0.0;
    t->window_batches = 0;
    t->window_steps = 0;
}

static int evaluate_body(theus_run *run, void *user)
{
    evaluator *ev = user;
    theus_tx *tx = theus_run_tx(run);
    int rc;
    if ((rc = theus_tx_read(tx, "step", NULL, &ev->step, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "W", NULL, ev->W, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "b", NULL, ev->b, THEUS_MEM_HOST)))
        return rc;
    model_eval(ev->test, ev->W, ev->b, ev->Z, &ev->loss, &ev->accuracy);
    float l = (float)ev->loss, a = (float)ev->accuracy;
    int32_t not_due = 0;
    if ((rc = theus_tx_write(tx, "eval_loss", NULL, &l, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "eval_acc", NULL, &a, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "eval_due", NULL, &not_due, THEUS_MEM_HOST)))
        return rc;
    return theus_run_outbox(run, print_row, NULL, ev);
}

static const char *const load_out[] = {"max_steps"};
static const char *const worker_in[] = {"W", "b"};
static const char *const worker_out[] = {"grad_*"};
static const char *const adam_in[] = {"grad_*", "max_steps"};
static const char *const adam_out[] = {"W", "b", "adam_*", "grad_*", "step", "loss", "eval_due"};
static const char *const eval_in[] = {"W", "b", "step"};
static const char *const eval_out[] = {"eval_*"};
static const int adam_codes[] = {NOTHING_TO_APPLY};

/* The worker's contract, for the refusal check below (the engine keeps its own copy). */
static const theus_contract worker_contract = {
    .name = "grad-worker",
    .inputs = worker_in, .n_inputs = 2,
    .outputs = worker_out, .n_outputs = 1,
};

static int register_all(theus_engine *e, run_info *ri, worker **workers, trainer *tr,
                        evaluator *ev)
{
    theus_process_def defs[] = {
        {.name = "load", .body = load_body, .outputs = load_out, .n_outputs = 1, .user = ri},
        {.name = "grad0", .body = worker_body, .inputs = worker_in, .n_inputs = 2,
         .outputs = worker_out, .n_outputs = 1, .user = workers[0]},
        {.name = "grad1", .body = worker_body, .inputs = worker_in, .n_inputs = 2,
         .outputs = worker_out, .n_outputs = 1, .user = workers[1]},
        {.name = "adam", .body = adam_body, .inputs = adam_in, .n_inputs = 2,
         .outputs = adam_out, .n_outputs = 7, .status_codes = adam_codes, .n_status_codes = 1,
         .user = tr},
        {.name = "evaluate", .body = evaluate_body, .inputs = eval_in, .n_inputs = 3,
         .outputs = eval_out, .n_outputs = 1, .user = ev},
    };
    for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++) {
        int rc = theus_engine_register(e, &defs[i]);
        if (rc != THEUS_OK) {
            report(theus_engine_state(e), "main", "registering a process", rc);
            return -1;
        }
    }
    return 0;
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
        {"seed", THEUS_DTYPE_U64, 0, 0, 0},             {"max_steps", THEUS_DTYPE_I64, 0, 0, 0},
        {"eval_due", THEUS_DTYPE_I32, 0, 0, 0},         {"eval_loss", THEUS_DTYPE_F32, 0, 0, 0},
        {"eval_acc", THEUS_DTYPE_F32, 0, 0, 0},
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

/* After training: the runtime must refuse what the schema, its audit, contracts and zones
 * forbid, and leave the state unchanged. Returns the number of failed checks. */
static int check_refusals(theus_engine *e)
{
    theus_state *st = theus_engine_state(e);
    int failures = 0;
    uint64_t v0 = theus_state_version(st);
    theus_tx *tx = NULL;

    /* 1. The audit refuses a NaN loss (finite, level S) and stops the engine. */
    float nan_loss = NAN;
    int rc = theus_tx_begin(st, NULL, &tx);
    if (rc == THEUS_OK && (rc = theus_tx_write(tx, "loss", NULL, &nan_loss, THEUS_MEM_HOST)))
        theus_tx_abort(tx);
    if (rc == THEUS_OK)
        rc = theus_tx_commit(tx, NULL);
    char why[512];
    snprintf(why, sizeof why, "%s", theus_state_last_error(st));
    int stopped = theus_engine_stopped(e);
    int rc_run = theus_engine_run(e, "evaluate", NULL);
    int ok = rc == THEUS_ESCHEMA && stopped && rc_run == THEUS_EBUSY &&
             theus_state_version(st) == v0;
    printf("  audit S     NaN loss refused, engine stopped, runs refused: %s\n      %s\n",
           ok ? "yes" : "NO", why);
    theus_engine_resume(e);
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

    /* 4. Level B: oversized gradients (max_abs 10, threshold 3) pass three times, are
     *    recorded, and the fourth in a row is refused. */
    int accepted = 0, refused = 0;
    for (int k = 0; k < 4; k++) {
        w[0] = 100.0f;
        rc = theus_tx_begin(st, NULL, &tx);
        if (rc == THEUS_OK && (rc = theus_tx_write(tx, "grad_W", NULL, w, THEUS_MEM_HOST)))
            theus_tx_abort(tx);
        if (rc == THEUS_OK)
            rc = theus_tx_commit(tx, NULL);
        accepted += rc == THEUS_OK;
        refused += rc == THEUS_ESCHEMA;
    }
    uint64_t recorded = 0;
    theus_engine_audit_count(e, "", "grad_W", &recorded);
    ok = accepted == 3 && refused == 1 && recorded == 4;
    printf("  audit B     oversized gradients: %d accepted, %d refused, %llu recorded: %s\n",
           accepted, refused, (unsigned long long)recorded, ok ? "yes" : "NO");
    failures += !ok;
    return failures;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void print_process(theus_engine *e, const char *name)
{
    theus_process_stats ps;
    if (theus_engine_process_stats(e, name, &ps) != THEUS_OK)
        return;
    printf("  %-9s runs %5llu, commits %5llu, attempts %5llu, conflicts %3llu, audit %llu\n",
           name, (unsigned long long)ps.runs, (unsigned long long)ps.commits,
           (unsigned long long)ps.attempts, (unsigned long long)ps.conflicts,
           (unsigned long long)ps.audit);
}

/* ---- main ---------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    config cfg;
    if (parse_args(argc, argv, &cfg) != 0)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0); /* a killed run leaves every line it printed */
#ifdef OPENBLAS_VERSION
    /* The two workers are the parallelism; small GEMMs gain nothing from BLAS threads. */
    openblas_set_num_threads(1);
#endif
    int status = 1;
    theus_state *st = NULL;
    theus_engine *eng = NULL;
    theus_workflow *wf = NULL;
    dataset train = {.n = cfg.n_train}, test = {.n = cfg.n_test};
    worker *workers[NWORKERS] = {0};
    trainer *tr = NULL;
    evaluator ev = {0};
    run_info ri = {.cfg = &cfg, .log_every = cfg.steps >= 10 ? cfg.steps / 10 : 1};

    /* 1. The state, from its schema; fields start zeroed (W = 0 is a fine start for a
     *    convex problem), versions start at 1. */
    int rc = cfg.dir ? open_durable(&cfg, &st) : theus_state_create_from_file(cfg.schema, NULL, &st);
    if (rc != THEUS_OK) {
        fprintf(stderr, "train_softmax: cannot create the state from %s: %s\n  %s\n",
                cfg.schema, theus_strerror(rc), theus_last_error_message());
        goto done;
    }
    if (check_shapes(st) != 0)
        goto done;
    theus_field_info wi;
    theus_state_field_info(st, "W", &wi);
    printf("theus %d.%d.%d  state '%s': %zu fields, version %llu; W asked for %s memory, "
           "lives in %s memory%s\n",
           THEUS_VERSION_MAJOR, THEUS_VERSION_MINOR, THEUS_VERSION_PATCH, theus_state_name(st),
           theus_state_field_count(st), (unsigned long long)theus_state_version(st),
           theus_placement_name(wi.requested), theus_placement_name(wi.placement),
           wi.placement != wi.requested ? " (no GPU: fallback)" : "");

    /* A resumed durable state: where it stopped (the seed is in it already). */
    const uint64_t v0 = theus_state_version(st);
    int64_t step0 = 0, left0 = 0;
    if (v0 > 1) {
        theus_tx *t0 = NULL;
        if ((rc = theus_tx_begin(st, NULL, &t0)) == THEUS_OK) {
            if ((rc = theus_tx_read(t0, "step", NULL, &step0, THEUS_MEM_HOST)) == THEUS_OK)
                rc = theus_tx_read(t0, "grad_count", NULL, &left0, THEUS_MEM_HOST);
            theus_tx_abort(t0);
        }
        printf("resumed from %s at version %llu, step %lld\n", cfg.dir,
               (unsigned long long)v0, (long long)step0);
        if (rc == THEUS_OK)
            rc = theus_state_checkpoint(st, 0, NULL);
        if (rc != THEUS_OK) {
            report(st, "main", "resuming", rc);
            goto done;
        }
    }

    /* 2. The const seed gets its value before the first commit; everything random below
     *    derives from the value read back from the state. */
    rc = v0 > 1 ? THEUS_OK : theus_state_init_field(st, "seed", &cfg.seed, THEUS_MEM_HOST);
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
        !(ev.Z = malloc(test.n * CLASSES * sizeof *ev.Z)) || !(tr = calloc(1, sizeof *tr))) {
        fprintf(stderr, "train_softmax: out of memory\n");
        goto done;
    }
    printf("data: %d classes, %d features, %zu train rows (%d shards), %zu held-out rows, "
           "seed %llu\n", CLASSES, FEAT, train.n, NWORKERS, test.n, (unsigned long long)seed);
    printf("training: %ld Adam steps, batches of %d rows, lr %g; workflow %s\n\n", cfg.steps,
           BATCH, (double)cfg.lr, cfg.workflow);

    /* 3. The engine (its pool runs the two workers), the processes, the workflow. */
    for (int k = 0; k < NWORKERS; k++) {
        worker *w = calloc(1, sizeof *w);
        if (!w || !(w->perm = malloc(train.n / NWORKERS * sizeof *w->perm))) {
            free(w);
            fprintf(stderr, "train_softmax: out of memory\n");
            goto done;
        }
        w->id = k;
        w->train = &train;
        w->n = train.n / NWORKERS;
        w->lo = (size_t)k * w->n;
        for (size_t i = 0; i < w->n; i++)
            w->perm[i] = i;
        w->r.s = seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(k + 1));
        next_batch(w);
        workers[k] = w;
    }
    tr->opt.hp = (adam_hp){.lr = cfg.lr, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    tr->ri = &ri;
    tr->first_loss = -1.0;
    ev.test = &test;
    ev.tr = tr;
    theus_engine_options eo = THEUS_ENGINE_OPTIONS_INIT;
    eo.workers = NWORKERS;
    if ((rc = theus_engine_create(st, &eo, &eng)) != THEUS_OK) {
        report(st, "main", "creating the engine", rc);
        goto done;
    }
    if (register_all(eng, &ri, workers, tr, &ev) != 0)
        goto done;
    if ((rc = theus_workflow_load_file(eng, cfg.workflow, &wf)) != THEUS_OK) {
        report(st, "main", "loading the workflow", rc);
        goto done;
    }

    /* 4. Training is the workflow: load, then while step < max_steps: both gradients on
     *    the pool, the optimizer once the "grad" signal came twice, an evaluation when due. */
    double t0 = now_s();
    theus_workflow_report rep;
    rc = theus_workflow_run(wf, &rep);
    double elapsed = now_s() - t0;
    if (rc != THEUS_OK) {
        report(st, "workflow", rep.where[0] ? rep.where : "running", rc);
        goto done;
    }

    if (rep.resumed_at)
        printf("the workflow resumed at its step %llu (field wf_next)\n",
               (unsigned long long)rep.resumed_at);

    /* 5. What the runtime saw, and invariants a broken runtime would break. */
    theus_stats stats;
    theus_state_stats(st, &stats);
    uint64_t worker_commits = 0;
    for (int k = 0; k < NWORKERS; k++)
        worker_commits += workers[k]->commits;
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
    uint64_t grads = 0, audit_loss = 0, audit_grad = 0, evals = (uint64_t)ev.rows;
    theus_engine_signal_count(eng, "grad", &grads);
    theus_engine_audit_count(eng, NULL, "loss", &audit_loss);
    theus_engine_audit_count(eng, NULL, "grad_W", &audit_grad);
    printf("\ntrained %ld steps in %.2f s: %llu gradient batches committed by %d workers; "
           "workflow: %llu ops, %llu runs, %llu failures\n",
           cfg.steps, elapsed, (unsigned long long)worker_commits, NWORKERS,
           (unsigned long long)rep.ops, (unsigned long long)rep.runs,
           (unsigned long long)rep.failures);
    printf("stats: commits %llu, conflicts %llu, retries %llu, priority runs %llu, aborts %llu, "
           "schema refusals %llu\n",
           (unsigned long long)stats.commits, (unsigned long long)stats.conflicts,
           (unsigned long long)stats.retries, (unsigned long long)stats.priority_runs,
           (unsigned long long)stats.aborts, (unsigned long long)stats.schema_refusals);
    printf("signals: grad delivered %llu times; audit violations: loss (finite, S) %llu, "
           "grad_W (max_abs, B) %llu\n",
           (unsigned long long)grads, (unsigned long long)audit_loss,
           (unsigned long long)audit_grad);
    printf("processes:\n");
    static const char *const names[] = {"load", "grad0", "grad1", "adam", "evaluate"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        print_process(eng, names[i]);
    printf("final state version: %llu\n", (unsigned long long)version);

    int failures = 0;
    if (cfg.dir && (rc = theus_state_checkpoint(st, 0, NULL)) != THEUS_OK) {
        report(st, "main", "the final checkpoint", rc);
        failures++;
    }
    if (final_step != cfg.steps || tr->steps_done != cfg.steps - step0) {
        printf("FAIL: the state's step is %lld (%lld steps committed), expected %ld\n",
               (long long)final_step, (long long)tr->steps_done, cfg.steps);
        failures++;
    }
    if ((int64_t)worker_commits + left0 != tr->consumed + left || grads != worker_commits) {
        printf("FAIL: %llu batches committed (%llu signals) but %lld consumed + %lld left\n",
               (unsigned long long)worker_commits, (unsigned long long)grads,
               (long long)tr->consumed, (long long)left);
        failures++;
    }
    /* load (unless resumed past it) + gradients + optimizer steps + evaluations: one commit
     * each, the workflow's position riding in each; and one for the position's reset at the
     * end (the last step committed is inside the loop). */
    uint64_t expect = (rep.resumed_at == 0) + worker_commits + (uint64_t)tr->steps_done +
                      evals + 1;
    if (version != v0 + stats.commits || stats.commits != expect) {
        printf("FAIL: version %llu, %llu commits; expected %llu\n",
               (unsigned long long)version, (unsigned long long)stats.commits,
               (unsigned long long)expect);
        failures++;
    }
    printf("invariants: step = %lld, batches committed %llu = consumed %lld + left %lld, "
           "version = 1 + commits: %s\n",
           (long long)final_step, (unsigned long long)worker_commits, (long long)tr->consumed,
           (long long)left, failures ? "NO" : "yes");

    printf("refusals:\n");
    failures += check_refusals(eng);

    /* 6. The verdict. */
    const double min_accuracy = 0.85;
    /* A resumed run starts where the loss has fallen already: only accuracy counts. */
    int fell = step0 > 0 || (tr->first_loss > 0.0 && tr->last_window < 0.5 * tr->first_loss &&
                             ev.loss < 0.5 * ev.first_loss);
    int accurate = ev.accuracy >= min_accuracy;
    if (!fell)
        printf("FAIL: the loss did not fall enough (train %.4f -> %.4f, held-out %.4f -> %.4f)\n",
               tr->first_loss, tr->last_window, ev.first_loss, ev.loss);
    if (!accurate)
        printf("FAIL: held-out accuracy %.1f%% is below %.0f%%\n", 100.0 * ev.accuracy,
               100.0 * min_accuracy);
    if (fell && accurate && failures == 0) {
        printf("OK: train loss %.4f -> %.4f, held-out loss %.4f -> %.4f, held-out accuracy "
               "%.1f%%\n", tr->first_loss, tr->last_window, ev.first_loss, ev.loss,
               100.0 * ev.accuracy);
        status = 0;
    }

done:
    theus_workflow_free(wf);
    theus_engine_destroy(eng);
    for (int k = 0; k < NWORKERS; k++)
        if (workers[k]) {
            free(workers[k]->perm);
            free(workers[k]);
        }
    free(tr);
    free(ev.Z);
    free_data(&train);
    free_data(&test);
    theus_state_destroy(st);
    return status;
}
