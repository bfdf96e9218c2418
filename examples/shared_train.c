/* shared_train: the softmax regression of train_softmax, with its training state shared by
 * a trainer process and N worker processes.
 *
 * The trainer creates a shared state from the schema (examples/schemas/train_softmax.json),
 * sets its const seed, and starts the workers with fork+exec of this program (a process
 * that uses CUDA cannot fork a CUDA worker). Each worker opens the state by name, builds
 * the data set from the seed it reads there, and, whenever the trainer lets it, computes
 * the gradient of a batch of its own shard against the current weights and commits it as
 * ADD deltas to the accumulator (theus_tx_run: if the trainer replaced the weights
 * meanwhile, the commit conflicts and the gradient is computed again). The trainer applies
 * an Adam step as soon as a batch is in. Pipes only say "a batch is in" and "go on"; all
 * data goes through the state. Device fields live in GPU memory shared through CUDA IPC
 * when a GPU answers, in the shared segment otherwise.
 *
 * The trainer checks that the loss falls, the held-out accuracy, that no gradient was lost
 * or counted twice, and that the state's version counts every process's commits; it exits
 * non-zero otherwise.
 *
 * usage: shared_train [--workers N] [--steps N] [--quick] [--seed N] [--schema PATH]
 *        (the trainer starts its workers as: shared_train --worker NAME ID N ROWS)
 */
#define _POSIX_C_SOURCE 200809L
#define _GNU_SOURCE /* pipe2 */
#include <theus/theus.h>
#include <theus/theus_shared.h>

#include "softmax.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SHARED_TRAIN_SCHEMA
#define SHARED_TRAIN_SCHEMA "examples/schemas/train_softmax.json"
#endif

enum { BATCH = 64, MAX_WORKERS = 16 };
/* The worker's end of its pipes after exec. */
enum { GO_FD = 3, DONE_FD = 4 };

static void report(theus_state *st, const char *who, const char *what, int rc)
{
    fprintf(stderr, "shared_train: %s: %s failed: %s\n  %s\n", who, what, theus_strerror(rc),
            st ? theus_state_last_error(st) : theus_last_error_message());
}

static char *read_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *text = NULL;
    long n = -1;
    if (fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)n + 1)) != NULL) {
        if (fread(text, 1, (size_t)n, fp) == (size_t)n) {
            text[n] = '\0';
        } else {
            free(text);
            text = NULL;
        }
    }
    fclose(fp);
    return text;
}

/* ---- the worker process ---------------------------------------------------------------- */

static const char *const worker_inputs[] = {"W", "b", "step"};
static const char *const worker_outputs[] = {"grad_*"};
static const theus_contract worker_contract = {
    .name = "grad-worker",
    .inputs = worker_inputs, .n_inputs = 3,
    .outputs = worker_outputs, .n_outputs = 1,
};

typedef struct worker {
    float x[BATCH * FEAT];
    int32_t y[BATCH];
    float W[FEAT * CLASSES], b[CLASSES], Z[BATCH * CLASSES], dW[FEAT * CLASSES], db[CLASSES];
} worker;

/* Read the weights at the transaction's base and stage the batch's gradient as ADDs; the
 * reads make the commit conflict if the trainer changed the weights meanwhile. */
static int worker_body(theus_tx *tx, void *user)
{
    worker *w = user;
    int rc;
    if ((rc = theus_tx_read(tx, "W", NULL, w->W, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "b", NULL, w->b, THEUS_MEM_HOST)))
        return rc;
    float loss = loss_and_grad(w->x, w->y, BATCH, w->W, w->b, w->Z, w->dW, w->db);
    return add_gradient(tx, w->dW, w->db, loss);
}

static int worker_main(const char *name, int id, int nworkers, size_t rows)
{
    char who[32];
    snprintf(who, sizeof who, "worker %d", id);
    theus_state *st = NULL;
    int rc = theus_state_open_shared(name, NULL, &st);
    if (rc != THEUS_OK) {
        report(NULL, who, "opening the shared state", rc);
        return 1;
    }
    int status = 1;
    uint64_t seed = 0;
    theus_tx *tx = NULL;
    dataset train = {.n = rows}, test = {.n = 1};
    worker *w = calloc(1, sizeof *w);
    size_t *perm = NULL;
    if ((rc = theus_tx_begin(st, NULL, &tx)) == THEUS_OK) {
        rc = theus_tx_read(tx, "seed", NULL, &seed, THEUS_MEM_HOST);
        theus_tx_abort(tx);
    }
    if (rc != THEUS_OK) {
        report(st, who, "reading the seed", rc);
        goto done;
    }
    /* The same data as the trainer's: it comes from the seed in the state. */
    const size_t n = rows / (size_t)nworkers, lo = (size_t)id * n;
    if (!w || make_data(seed, 0.45, &train, &test) != 0 || !(perm = malloc(n * sizeof *perm))) {
        fprintf(stderr, "shared_train: %s: out of memory\n", who);
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    rng r = {seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(id + 1))};
    size_t cursor = 0;
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.tx.contract = &worker_contract;
    char go;
    while (read(GO_FD, &go, 1) == 1) {
        for (int i = 0; i < BATCH; i++) { /* the next batch of the shard, reshuffled per epoch */
            if (cursor == 0)
                for (size_t k = n - 1; k > 0; k--) {
                    size_t j = (size_t)(rng_next(&r) % (k + 1)), t = perm[k];
                    perm[k] = perm[j];
                    perm[j] = t;
                }
            size_t row = lo + perm[cursor];
            cursor = (cursor + 1) % n;
            memcpy(&w->x[i * FEAT], &train.x[row * FEAT], FEAT * sizeof(float));
            w->y[i] = train.y[row];
        }
        if ((rc = theus_tx_run(st, &ro, worker_body, w, NULL)) != THEUS_OK) {
            report(st, who, "committing a gradient", rc);
            goto done;
        }
        unsigned char me = (unsigned char)id;
        if (write(DONE_FD, &me, 1) != 1) {
            fprintf(stderr, "shared_train: %s: the trainer is gone\n", who);
            goto done;
        }
    }
    status = 0; /* the trainer closed our pipe: training is over */
done:
    free(perm);
    free(w);
    free_data(&train);
    free_data(&test);
    theus_state_destroy(st);
    return status;
}

/* ---- the trainer ------------------------------------------------------------------------ */

/* Held-out loss and accuracy of the committed weights. */
static int evaluate(theus_state *st, const dataset *d, float *Z, double *loss, double *acc)
{
    float W[FEAT * CLASSES], b[CLASSES];
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(st, NULL, &tx);
    if (rc == THEUS_OK && !(rc = theus_tx_read(tx, "W", NULL, W, THEUS_MEM_HOST)))
        rc = theus_tx_read(tx, "b", NULL, b, THEUS_MEM_HOST);
    if (tx)
        theus_tx_abort(tx);
    if (rc == THEUS_OK)
        model_eval(d, W, b, Z, loss, acc);
    return rc;
}

typedef struct config {
    int workers;
    long steps;
    int quick;
    uint64_t seed;
    const char *schema;
} config;

static int parse_args(int argc, char **argv, config *cfg)
{
    *cfg = (config){.workers = 3, .steps = 0, .seed = 42, .schema = SHARED_TRAIN_SCHEMA};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char *end = NULL;
        if (strcmp(a, "--quick") == 0) {
            cfg->quick = 1;
        } else if (strcmp(a, "--workers") == 0 && i + 1 < argc) {
            cfg->workers = (int)strtol(argv[++i], &end, 10);
            if (*end || cfg->workers < 1 || cfg->workers > MAX_WORKERS) {
                fprintf(stderr, "shared_train: --workers wants 1 to %d\n", MAX_WORKERS);
                return -1;
            }
        } else if (strcmp(a, "--steps") == 0 && i + 1 < argc) {
            cfg->steps = strtol(argv[++i], &end, 10);
            if (*end || cfg->steps < 1 || cfg->steps > 1000000) {
                fprintf(stderr, "shared_train: --steps wants 1 to 1000000\n");
                return -1;
            }
        } else if (strcmp(a, "--seed") == 0 && i + 1 < argc) {
            cfg->seed = strtoull(argv[++i], &end, 10);
            if (*end) {
                fprintf(stderr, "shared_train: --seed wants an integer\n");
                return -1;
            }
        } else if (strcmp(a, "--schema") == 0 && i + 1 < argc) {
            cfg->schema = argv[++i];
        } else {
            fprintf(stderr, "usage: shared_train [--workers N] [--steps N] [--quick] [--seed N] "
                            "[--schema PATH]\n");
            return -1;
        }
    }
    if (cfg->steps == 0)
        cfg->steps = cfg->quick ? 150 : 400;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Start worker @id: fork, then exec this program with its pipe ends as fds 3 and 4. */
static pid_t start_worker(const char *self, const char *name, int id, int nworkers, size_t rows,
                          int go_fd, int done_fd)
{
    char sid[16], sn[16], srows[32];
    snprintf(sid, sizeof sid, "%d", id);
    snprintf(sn, sizeof sn, "%d", nworkers);
    snprintf(srows, sizeof srows, "%zu", rows);
    fflush(NULL);
    pid_t p = fork();
    if (p != 0)
        return p;
    /* Out of the way first, so that neither dup2 clobbers the other's source; dup2 clears
     * close-on-exec on its copy. */
    int g = fcntl(go_fd, F_DUPFD_CLOEXEC, 10), d = fcntl(done_fd, F_DUPFD_CLOEXEC, 10);
    if (g < 0 || d < 0 || dup2(g, GO_FD) < 0 || dup2(d, DONE_FD) < 0)
        _exit(126);
    execl(self, "shared_train", "--worker", name, sid, sn, srows, (char *)NULL);
    _exit(127);
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "--worker") == 0)
        return worker_main(argv[2], atoi(argv[3]), atoi(argv[4]), (size_t)strtoull(argv[5], NULL, 10));
#ifdef OPENBLAS_VERSION
    openblas_set_num_threads(1); /* the processes are the parallelism */
#endif
    config cfg;
    if (parse_args(argc, argv, &cfg) != 0)
        return 2;
    const size_t n_train = cfg.quick ? 4096 : 8192, n_test = cfg.quick ? 1024 : 2048;
    char name[64];
    snprintf(name, sizeof name, "shared-train-%d", (int)getpid());

    int status = 1, nstarted = 0;
    pid_t pids[MAX_WORKERS];
    int go[MAX_WORKERS];
    int done_pipe[2] = {-1, -1};
    theus_state *st = NULL;
    dataset train = {.n = n_train}, test = {.n = n_test};
    float *Z = NULL;
    optimizer *opt = calloc(1, sizeof *opt);
    long steps = 0, reported = 0, consumed = 0, window_batches = 0, window_steps = 0;
    double first_loss = -1.0, window = 0.0, last_window = 0.0, t0 = 0.0, elapsed = 0.0;
    double loss0 = 0.0, acc0 = 0.0, loss = 0.0, acc = 0.0;
    char *schema = read_file(cfg.schema);
    if (!schema) {
        fprintf(stderr, "shared_train: cannot read the schema %s: %s\n", cfg.schema,
                strerror(errno));
        goto out;
    }

    /* 1. The shared state, and its const seed before the first commit. */
    int rc = theus_state_create_shared(name, schema, NULL, NULL, &st);
    if (rc != THEUS_OK) {
        report(NULL, "trainer", "creating the shared state", rc);
        goto out;
    }
    if ((rc = theus_state_init_field(st, "seed", &cfg.seed, THEUS_MEM_HOST)) != THEUS_OK) {
        report(st, "trainer", "setting the seed", rc);
        goto out;
    }
    theus_field_info wi;
    theus_state_field_info(st, "W", &wi);
    printf("shared state '%s': %zu fields; W asked for %s memory, lives in %s memory%s\n", name,
           theus_state_field_count(st), theus_placement_name(wi.requested),
           theus_placement_name(wi.placement),
           wi.placement == THEUS_PLACEMENT_DEVICE ? " (shared through CUDA IPC)"
                                                  : " (in the shared segment)");
    if (make_data(cfg.seed, 0.45, &train, &test) != 0 ||
        !(Z = malloc(test.n * CLASSES * sizeof *Z)) || !opt) {
        fprintf(stderr, "shared_train: out of memory\n");
        goto out;
    }

    /* 2. The workers, fork+exec'd, each with its own "go" pipe and one shared "done" pipe;
     *    every pipe end is close-on-exec except the two a worker gets as fds 3 and 4. */
    if (pipe2(done_pipe, O_CLOEXEC) != 0)
        goto out;
    for (int i = 0; i < cfg.workers; i++) {
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) != 0)
            goto stop;
        pids[i] = start_worker("/proc/self/exe", name, i, cfg.workers, n_train, fds[0],
                               done_pipe[1]);
        close(fds[0]);
        if (pids[i] < 0) {
            close(fds[1]);
            goto stop;
        }
        go[i] = fds[1];
        nstarted++;
    }
    close(done_pipe[1]);
    done_pipe[1] = -1;
    printf("%d worker processes, %ld Adam steps, batches of %d rows\n\n", cfg.workers, cfg.steps,
           BATCH);

    if ((rc = evaluate(st, &test, Z, &loss0, &acc0)) != THEUS_OK) {
        report(st, "trainer", "evaluating", rc);
        goto stop;
    }
    printf("%6s %8s %12s %14s %13s\n", "step", "batches", "train loss", "held-out loss",
           "held-out acc");
    printf("%6d %8s %12s %14.4f %12.1f%%\n", 0, "-", "-", loss0, 100.0 * acc0);

    /* 3. Training. Each worker holds two tokens, so it computes its next batch while the
     *    trainer applies a step (and conflicts when the weights change under it); each
     *    reported batch gives its worker a token back once a step has run. */
    for (int i = 0; i < nstarted; i++)
        if (write(go[i], "gg", 2) != 2)
            goto stop;
    opt->hp = (adam_hp){.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.tx.contract = &optimizer_contract;
    t0 = now_s();
    const long log_every = cfg.steps >= 10 ? cfg.steps / 10 : 1;
    while (steps < cfg.steps) {
        unsigned char ids[MAX_WORKERS * 4];
        ssize_t got = read(done_pipe[0], ids, sizeof ids);
        if (got <= 0) {
            fprintf(stderr, "shared_train: the workers stopped\n");
            goto stop;
        }
        reported += got;
        rc = theus_tx_run(st, &ro, optimizer_body, opt, NULL);
        if (rc == THEUS_OK) {
            steps++;
            consumed += opt->count;
            if (first_loss < 0.0)
                first_loss = opt->loss;
            window += opt->loss;
            window_batches += opt->count;
            window_steps++;
        } else if (rc != NOTHING_TO_APPLY) { /* an earlier step took those batches */
            report(st, "trainer", "applying a step", rc);
            goto stop;
        }
        for (ssize_t i = 0; i < got; i++)
            if (ids[i] < nstarted && write(go[ids[i]], "g", 1) != 1)
                goto stop;
        if (rc == THEUS_OK && (steps % log_every == 0 || steps == cfg.steps)) {
            if ((rc = evaluate(st, &test, Z, &loss, &acc)) != THEUS_OK) {
                report(st, "trainer", "evaluating", rc);
                goto stop;
            }
            last_window = window / (double)window_steps;
            printf("%6ld %8ld %12.4f %14.4f %12.1f%%\n", steps, window_batches, last_window, loss,
                   100.0 * acc);
            window = 0.0;
            window_batches = window_steps = 0;
        }
    }
    elapsed = now_s() - t0;
    status = 2; /* training ran: the checks below decide */

stop:
    /* 4. Closing the go pipes ends the workers; their last reports are drained. */
    for (int i = 0; i < nstarted; i++)
        close(go[i]);
    if (done_pipe[0] >= 0) {
        unsigned char ids[64];
        ssize_t got;
        while ((got = read(done_pipe[0], ids, sizeof ids)) > 0)
            reported += status == 2 ? got : 0;
    }
    int workers_ok = 1;
    for (int i = 0; i < nstarted; i++) {
        int ws = 0;
        if (waitpid(pids[i], &ws, 0) < 0 || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
            fprintf(stderr, "shared_train: worker %d failed\n", i);
            workers_ok = 0;
        }
    }
    if (status != 2)
        goto out;
    status = 1;

    /* 5. What every process did, as the shared state counts it. */
    theus_stats stats;
    theus_state_stats(st, &stats);
    int64_t left = -1;
    theus_tx *tx = NULL;
    if ((rc = theus_tx_begin(st, NULL, &tx)) == THEUS_OK) {
        rc = theus_tx_read(tx, "grad_count", NULL, &left, THEUS_MEM_HOST);
        theus_tx_abort(tx);
    }
    if (rc != THEUS_OK) {
        report(st, "trainer", "reading the accumulator", rc);
        goto out;
    }
    uint64_t version = theus_state_version(st);
    printf("\n%ld steps in %.2f s; %ld gradient batches from %d worker processes\n", steps,
           elapsed, reported, nstarted);
    printf("commits %llu, conflicts %llu, retries %llu, priority runs %llu (all processes)\n",
           (unsigned long long)stats.commits, (unsigned long long)stats.conflicts,
           (unsigned long long)stats.retries, (unsigned long long)stats.priority_runs);
    int failures = !workers_ok;
    if (reported != consumed + left) {
        printf("FAIL: %ld batches committed, %ld consumed + %lld left\n", reported, consumed,
               (long long)left);
        failures++;
    }
    if (version != 1 + stats.commits || stats.commits != (uint64_t)(reported + steps)) {
        printf("FAIL: version %llu, %llu commits; expected 1 + %ld worker + %ld trainer\n",
               (unsigned long long)version, (unsigned long long)stats.commits, reported, steps);
        failures++;
    }
    int fell = first_loss > 0.0 && last_window < 0.5 * first_loss && loss < 0.5 * loss0;
    if (!fell)
        printf("FAIL: the loss did not fall enough (train %.4f -> %.4f, held-out %.4f -> %.4f)\n",
               first_loss, last_window, loss0, loss);
    if (acc < 0.85)
        printf("FAIL: held-out accuracy %.1f%% is below 85%%\n", 100.0 * acc);
    if (fell && acc >= 0.85 && failures == 0) {
        printf("OK: train loss %.4f -> %.4f, held-out loss %.4f -> %.4f, accuracy %.1f%%; "
               "batches committed %ld = consumed %ld + left %lld\n", first_loss, last_window,
               loss0, loss, 100.0 * acc, reported, consumed, (long long)left);
        status = 0;
    }

out:
    if (done_pipe[0] >= 0)
        close(done_pipe[0]);
    if (done_pipe[1] >= 0)
        close(done_pipe[1]);
    theus_state_destroy(st); /* the last process out: the segment goes */
    if (st) {
        theus_shared_summary info;
        if (theus_shared_info(name, &info) != THEUS_ENOENT) {
            printf("FAIL: shared state '%s' outlived its processes\n", name);
            status = 1;
        }
    }
    free(Z);
    free(opt);
    free(schema);
    free_data(&train);
    free_data(&test);
    return status;
}
