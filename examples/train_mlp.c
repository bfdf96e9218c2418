/* train_mlp: a small MLP trained with its weights and Adam moments in device fields.
 *
 * The state holds three f32 fields of MLP_P elements in GPU memory — "params" (w1, b1, w2,
 * b2 flattened), "m" and "v" (Adam's moments) — and a host counter "step". Every step a
 * "kernel" computes the minibatch gradient against the committed parameters and Adam's
 * update, and writes, for each of the three fields, the segments of a described ADD batch
 * (one per tensor: destination offset, length, payload offset) and its payload; the three
 * batches are staged with theus_tx_stage_batch, the step counter with theus_tx_add, and the
 * transaction is committed with theus_tx_commit_on_stream, whose replay is ordered on the
 * stream the next step's kernels run on.
 *
 * With the CUDA backend and a GPU, the kernels are CUDA (train_mlp_gpu.cu), the segments
 * and payload are written in device memory (THEUS_MEM_DEVICE), and the kernels read the
 * fields where they live (theus_state_field_ptr). Without one — the CPU backend, where the
 * device fields live in host memory — the same steps run as plain C on host arrays through
 * the same calls (theus_tx_read for the parameters). The program prints the loss as it
 * falls and exits non-zero unless the final loss is below a third of the initial one.
 *
 * usage: train_mlp [--steps N] [--quick] [--seed N] [--cpu]
 */
#define _POSIX_C_SOURCE 200809L
#include <theus/theus.h>
#include <theus/theus_gpu.h>

#include "train_mlp.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_SAMPLES = 1024 };

/* Three device fields of MLP_P elements (they fall back to host memory without a GPU). */
static void make_schema(char *out, size_t cap)
{
    snprintf(out, cap,
             "{\"fields\": {"
             "\"params\": {\"dtype\": \"f32\", \"shape\": [%d], \"placement\": \"device\"},"
             "\"m\": {\"dtype\": \"f32\", \"shape\": [%d], \"placement\": \"device\"},"
             "\"v\": {\"dtype\": \"f32\", \"shape\": [%d], \"placement\": \"device\"},"
             "\"step\": {\"dtype\": \"i64\", \"shape\": []}}}",
             MLP_P, MLP_P, MLP_P);
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Uniform in [-1, 1). */
static float uni(uint64_t *s)
{
    return (float)((double)(rnd(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Samples of a smaller random tanh network (the teacher), which the student can fit. */
static void make_data(uint64_t seed, float *x, float *y)
{
    uint64_t s = seed * 2654435761u + 1;
    float tw[MLP_TEACHER_H][MLP_D], ta[MLP_TEACHER_H];
    for (int j = 0; j < MLP_TEACHER_H; j++) {
        for (int k = 0; k < MLP_D; k++)
            tw[j][k] = uni(&s);
        ta[j] = uni(&s);
    }
    for (int i = 0; i < N_SAMPLES; i++) {
        float out = 0;
        for (int k = 0; k < MLP_D; k++)
            x[i * MLP_D + k] = uni(&s);
        for (int j = 0; j < MLP_TEACHER_H; j++) {
            float a = 0;
            for (int k = 0; k < MLP_D; k++)
                a += tw[j][k] * x[i * MLP_D + k];
            out += ta[j] * tanhf(a);
        }
        y[i] = out;
    }
}

/* ---- the plain-C "kernels" (the CPU path) -------------------------------------------- */

static float forward(const float *p, const float *x, float *h)
{
    float out = p[MLP_B2];
    for (int j = 0; j < MLP_H; j++) {
        float a = p[MLP_B1 + j];
        for (int k = 0; k < MLP_D; k++)
            a += p[MLP_W1 + j * MLP_D + k] * x[k];
        h[j] = tanhf(a);
        out += p[MLP_W2 + j] * h[j];
    }
    return out;
}

static float loss_all(const float *p, const float *x, const float *y)
{
    float h[MLP_H];
    double sum = 0;
    for (int i = 0; i < N_SAMPLES; i++) {
        const float e = forward(p, x + i * MLP_D, h) - y[i];
        sum += (double)e * e;
    }
    return (float)(sum / N_SAMPLES);
}

/* The batch's segments: one per tensor, payload laid out as the field. */
static void write_segments(theus_batch_segment *segs)
{
    static const int64_t start[MLP_SEGS + 1] = {MLP_W1, MLP_B1, MLP_W2, MLP_B2, MLP_P};
    for (int k = 0; k < MLP_SEGS; k++)
        segs[k] = (theus_batch_segment){.dst = start[k], .length = start[k + 1] - start[k],
                                        .src = start[k]};
}

/* Gradient of the minibatch and Adam's deltas for step @t: pay[0..P) params, [P..2P) m,
 * [2P..3P) v. Returns the minibatch loss. */
static float step_cpu(const float *p, const float *m, const float *v, int t, const float *x,
                      const float *y, int first, float *pay, theus_batch_segment *segs)
{
    float g[MLP_P], h[MLP_H];
    double loss = 0;
    memset(g, 0, sizeof g);
    for (int b = 0; b < MLP_BATCH; b++) {
        const int i = (first + b) % N_SAMPLES;
        const float *xi = x + i * MLP_D;
        const float e = forward(p, xi, h) - y[i];
        loss += (double)e * e;
        const float de = 2.0f * e / MLP_BATCH;
        g[MLP_B2] += de;
        for (int j = 0; j < MLP_H; j++) {
            g[MLP_W2 + j] += de * h[j];
            const float dh = de * p[MLP_W2 + j] * (1.0f - h[j] * h[j]);
            g[MLP_B1 + j] += dh;
            for (int k = 0; k < MLP_D; k++)
                g[MLP_W1 + j * MLP_D + k] += dh * xi[k];
        }
    }
    const float c1 = 1.0f - powf(MLP_BETA1, (float)t), c2 = 1.0f - powf(MLP_BETA2, (float)t);
    for (int i = 0; i < MLP_P; i++) {
        const float mn = MLP_BETA1 * m[i] + (1.0f - MLP_BETA1) * g[i];
        const float vn = MLP_BETA2 * v[i] + (1.0f - MLP_BETA2) * g[i] * g[i];
        pay[i] = -MLP_LR * (mn / c1) / (sqrtf(vn / c2) + MLP_EPS);
        pay[MLP_P + i] = mn - m[i];
        pay[2 * MLP_P + i] = vn - v[i];
    }
    write_segments(segs);
    return (float)(loss / MLP_BATCH);
}

/* ---- the program ---------------------------------------------------------------------- */

static int fail(const char *what, int rc)
{
    fprintf(stderr, "train_mlp: %s: %s (%s)\n", what, theus_strerror(rc),
            theus_last_error_message());
    return 1;
}

static int read_field(theus_tx *tx, const char *name, float *out)
{
    return theus_tx_read(tx, name, NULL, out, THEUS_MEM_HOST);
}

int main(int argc, char **argv)
{
    long steps = 600;
    uint64_t seed = 7;
    int force_cpu = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--quick"))
            steps = 300;
        else if (!strcmp(argv[i], "--cpu"))
            force_cpu = 1;
        else {
            fprintf(stderr, "usage: train_mlp [--steps N] [--quick] [--seed N] [--cpu]\n");
            return 2;
        }
    }
    if (steps < 1)
        steps = 1;
    static float x[N_SAMPLES * MLP_D], y[N_SAMPLES];
    make_data(seed, x, y);

    theus_state *st = NULL;
    char schema[512];
    make_schema(schema, sizeof schema);
    int rc = theus_state_create(schema, NULL, &st);
    if (rc != THEUS_OK)
        return fail("create", rc);
    float init[MLP_P];
    uint64_t s = seed + 99;
    for (int i = 0; i < MLP_P; i++)
        init[i] = uni(&s) * (i < MLP_B1 ? 0.5f : i >= MLP_W2 && i < MLP_B2 ? 0.2f : 0.0f);
    if ((rc = theus_state_init_field(st, "params", init, THEUS_MEM_HOST)) != THEUS_OK)
        return fail("init params", rc);

    theus_field_info fi;
    theus_state_field_info(st, "params", &fi);
    const int on_gpu = !force_cpu && fi.placement == THEUS_PLACEMENT_DEVICE;
    printf("train_mlp: %d parameters in %s memory, %ld steps, replays %s\n", MLP_P,
           on_gpu ? "GPU" : "host", steps, on_gpu ? "stream-ordered" : "at once (CPU backend)");

#ifdef TRAIN_MLP_CUDA
    mlp_gpu *gpu = on_gpu ? mlp_gpu_new(x, y, N_SAMPLES) : NULL;
    if (on_gpu && !gpu) {
        fprintf(stderr, "train_mlp: CUDA set-up failed\n");
        return 1;
    }
    const void *dp = NULL, *dm = NULL, *dv = NULL;
    if (on_gpu && ((rc = theus_state_field_ptr(st, "params", &dp, NULL)) ||
                   (rc = theus_state_field_ptr(st, "m", &dm, NULL)) ||
                   (rc = theus_state_field_ptr(st, "v", &dv, NULL))))
        return fail("field_ptr", rc);
#else
    if (on_gpu) {
        fprintf(stderr, "train_mlp: device fields without the CUDA kernels (built without "
                        "CUDA): run with --cpu\n");
        return 1;
    }
#endif
    void *stream = NULL; /* the legacy default stream */
    float first_loss = -1, last_loss = -1;
    static float p[MLP_P], m[MLP_P], v[MLP_P], pay[3 * MLP_P];
    theus_batch_segment segs[MLP_SEGS];
    static const char *const fields[3] = {"params", "m", "v"};
    for (long t = 1; t <= steps; t++) {
        theus_tx *tx = NULL;
        if ((rc = theus_tx_begin(st, NULL, &tx)) != THEUS_OK)
            return fail("begin", rc);
        const int first = (int)(((t - 1) * MLP_BATCH) % N_SAMPLES);
        float loss = 0;
        const theus_batch_segment *bs = segs;
        const float *bp = pay;
        theus_mem mem = THEUS_MEM_HOST;
        if (!on_gpu) {
            if ((rc = read_field(tx, "params", p)) || (rc = read_field(tx, "m", m)) ||
                (rc = read_field(tx, "v", v)))
                return fail("read", rc);
            if (t == 1)
                first_loss = loss_all(p, x, y);
            loss = step_cpu(p, m, v, (int)t, x, y, first, pay, segs);
        }
#ifdef TRAIN_MLP_CUDA
        else {
            if (t == 1 && mlp_gpu_loss(gpu, dp, stream, &first_loss) != 0)
                return fail("loss kernel", THEUS_EDEVICE);
            if (mlp_gpu_step(gpu, dp, dm, dv, (int)t, first, stream, &bs, &bp, &loss) != 0)
                return fail("gradient kernels", THEUS_EDEVICE);
            mem = THEUS_MEM_DEVICE;
        }
#endif
        for (int k = 0; k < 3; k++)
            if ((rc = theus_tx_stage_batch(tx, fields[k], THEUS_OP_ADD, bs, MLP_SEGS,
                                           bp + (size_t)k * MLP_P, MLP_P, mem)) != THEUS_OK)
                return fail("stage_batch", rc);
        const int64_t one = 1;
        if ((rc = theus_tx_add(tx, "step", NULL, &one, THEUS_MEM_HOST)) != THEUS_OK)
            return fail("add step", rc);
        /* ADD batches never conflict: the commit is decided at once, the replay queued. */
        if ((rc = theus_tx_commit_on_stream(tx, stream, NULL)) != THEUS_OK)
            return fail("commit_on_stream", rc);
        if (t == 1 || t % 100 == 0 || t == steps)
            printf("step %5ld  minibatch loss %.5f\n", t, loss);
    }
    /* Host view of the end: wait for the replays (a replay error would surface here). */
    if ((rc = theus_state_wait(st, NULL)) != THEUS_OK)
        return fail("state_wait", rc);
    theus_tx *tx = NULL;
    int64_t nstep = 0;
    if ((rc = theus_tx_begin(st, NULL, &tx)) != THEUS_OK ||
        (rc = theus_tx_read(tx, "params", NULL, p, THEUS_MEM_HOST)) != THEUS_OK ||
        (rc = theus_tx_read(tx, "step", NULL, &nstep, THEUS_MEM_HOST)) != THEUS_OK)
        return fail("final read", rc);
    theus_tx_abort(tx);
    last_loss = loss_all(p, x, y);
    printf("loss over all %d samples: %.5f -> %.5f after %lld steps (version %llu)\n", N_SAMPLES,
           first_loss, last_loss, (long long)nstep,
           (unsigned long long)theus_state_version(st));
#ifdef TRAIN_MLP_CUDA
    mlp_gpu_free(gpu);
#endif
    theus_state_destroy(st);
    if (nstep != steps) {
        fprintf(stderr, "train_mlp: the step counter is %lld, not %ld\n", (long long)nstep, steps);
        return 1;
    }
    if (!(last_loss < first_loss / 3.0f)) {
        fprintf(stderr, "train_mlp: the loss did not fall enough\n");
        return 1;
    }
    printf("train_mlp: OK\n");
    return 0;
}
