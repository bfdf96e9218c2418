/* The softmax regression shared by the examples: a generated data set (Gaussian clusters),
 * the model's loss and gradient (OpenBLAS sgemm), the Adam update, and the optimizer's
 * transaction on the training state (examples/schemas/train_softmax.json). Header-only:
 * each example is one program. */
#ifndef THEUS_EXAMPLES_SOFTMAX_H
#define THEUS_EXAMPLES_SOFTMAX_H

#include <theus/theus.h>

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { FEAT = 64, CLASSES = 10 };

/* ---- data ---------------------------------------------------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static inline uint64_t rng_next(rng *r) /* splitmix64 */
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline double rng_normal(rng *r) /* Box-Muller */
{
    double u1 = ((double)(rng_next(r) >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] */
    double u2 = (double)(rng_next(r) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

typedef struct dataset {
    size_t n;
    float *x;   /* n x FEAT, row-major */
    int32_t *y; /* n labels in [0, CLASSES) */
} dataset;

/* Gaussian clusters: one centre per class, unit-variance noise around it. Train and
 * held-out sets come from the same centres and different draws. */
static inline int make_data(uint64_t seed, double scale, dataset *train, dataset *test)
{
    rng r = {seed};
    float centre[CLASSES][FEAT];
    for (int c = 0; c < CLASSES; c++)
        for (int j = 0; j < FEAT; j++)
            centre[c][j] = (float)(scale * rng_normal(&r));
    dataset *sets[2] = {train, test};
    for (int k = 0; k < 2; k++) {
        dataset *d = sets[k];
        d->x = malloc(d->n * FEAT * sizeof *d->x);
        d->y = malloc(d->n * sizeof *d->y);
        if (!d->x || !d->y)
            return -1;
        for (size_t i = 0; i < d->n; i++) {
            int c = (int)(rng_next(&r) % CLASSES);
            d->y[i] = c;
            for (int j = 0; j < FEAT; j++)
                d->x[i * FEAT + j] = centre[c][j] + (float)rng_normal(&r);
        }
    }
    return 0;
}

static inline void free_data(dataset *d)
{
    free(d->x);
    free(d->y);
}

/* ---- the model ----------------------------------------------------------------------- */

/* Z = X W + b for @n rows. */
static inline void forward(const float *x, int n, const float *W, const float *b, float *Z)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, CLASSES, FEAT, 1.0f, x, FEAT, W,
                CLASSES, 0.0f, Z, CLASSES);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < CLASSES; c++)
            Z[i * CLASSES + c] += b[c];
}

/* Cross-entropy of row @z (logits) for label @y; turns @z into softmax probabilities. */
static inline double softmax_row(float *z, int32_t y)
{
    float mx = z[0];
    for (int c = 1; c < CLASSES; c++)
        mx = z[c] > mx ? z[c] : mx;
    float zy = z[y] - mx, sum = 0.0f;
    for (int c = 0; c < CLASSES; c++) {
        z[c] = expf(z[c] - mx);
        sum += z[c];
    }
    for (int c = 0; c < CLASSES; c++)
        z[c] /= sum;
    return log((double)sum) - (double)zy; /* >= 0: sum >= 1 and zy <= 0 */
}

/* Batch-mean loss of (x, y) under (W, b), and its gradient in dW (FEAT x CLASSES), db. */
static inline float loss_and_grad(const float *x, const int32_t *y, int n, const float *W,
                           const float *b, float *Z, float *dW, float *db)
{
    forward(x, n, W, b, Z);
    double loss = 0.0;
    memset(db, 0, CLASSES * sizeof *db);
    for (int i = 0; i < n; i++) {
        float *z = Z + (size_t)i * CLASSES;
        loss += softmax_row(z, y[i]);
        z[y[i]] -= 1.0f;
        for (int c = 0; c < CLASSES; c++) {
            z[c] /= (float)n; /* now dLoss/dlogits */
            db[c] += z[c];
        }
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, FEAT, CLASSES, n, 1.0f, x, FEAT, Z,
                CLASSES, 0.0f, dW, CLASSES);
    return (float)(loss / n);
}

/* Mean loss and accuracy of (W, b) on @d; @Z has room for d->n x CLASSES floats. */
static inline void model_eval(const dataset *d, const float *W, const float *b, float *Z,
                              double *loss_out, double *accuracy)
{
    forward(d->x, (int)d->n, W, b, Z);
    double loss = 0.0;
    size_t correct = 0;
    for (size_t i = 0; i < d->n; i++) {
        float *z = Z + i * CLASSES;
        int best = 0;
        for (int c = 1; c < CLASSES; c++)
            best = z[c] > z[best] ? c : best;
        correct += best == d->y[i];
        loss += softmax_row(z, d->y[i]);
    }
    *loss_out = loss / (double)d->n;
    *accuracy = (double)correct / (double)d->n;
}

/* Adam's hyper-parameters. */
typedef struct adam_hp {
    float lr, beta1, beta2, eps;
} adam_hp;

/* One Adam step at time @t on @n parameters, from the sum @gsum of @1/inv_count gradients. */
static inline void adam(float *p, float *m, float *v, const float *gsum, size_t n, float inv_count,
                 const adam_hp *o, int64_t t)
{
    const float c1 = 1.0f - powf(o->beta1, (float)t), c2 = 1.0f - powf(o->beta2, (float)t);
    for (size_t i = 0; i < n; i++) {
        float g = gsum[i] * inv_count;
        m[i] = o->beta1 * m[i] + (1.0f - o->beta1) * g;
        v[i] = o->beta2 * v[i] + (1.0f - o->beta2) * g * g;
        p[i] -= o->lr * (m[i] / c1) / (sqrtf(v[i] / c2) + o->eps);
    }
}

/* ---- the optimizer's transaction -------------------------------------------------- */

/* Returned by the optimizer's body when the accumulator is empty (never a theus code). */
#define NOTHING_TO_APPLY 1

/* A worker's part of a step: the gradient of its batch, added into the shared accumulator
 * (ADDs never conflict with each other; the reads of W and b are what can conflict). */
static inline int add_gradient(theus_tx *tx, const float *dW, const float *db, float loss)
{
    const int64_t one = 1;
    int rc;
    if ((rc = theus_tx_add(tx, "grad_W", NULL, dW, THEUS_MEM_HOST)) ||
        (rc = theus_tx_add(tx, "grad_b", NULL, db, THEUS_MEM_HOST)) ||
        (rc = theus_tx_add(tx, "grad_count", NULL, &one, THEUS_MEM_HOST)) ||
        (rc = theus_tx_add(tx, "grad_loss", NULL, &loss, THEUS_MEM_HOST)))
        return rc;
    return THEUS_OK;
}

static const char *const opt_inputs[] = {"grad_*"};
static const char *const opt_outputs[] = {"W", "b", "adam_*", "grad_*", "step", "loss"};
static const theus_contract optimizer_contract = {
    .name = "adam",
    .inputs = opt_inputs, .n_inputs = 1,
    .outputs = opt_outputs, .n_outputs = 6,
};

typedef struct optimizer {
    adam_hp hp;
    float W[FEAT * CLASSES], b[CLASSES];
    float mW[FEAT * CLASSES], vW[FEAT * CLASSES], mb[CLASSES], vb[CLASSES];
    float gW[FEAT * CLASSES], gb[CLASSES];
    int64_t count, step;
    float gloss, loss;
} optimizer;

static inline int optimizer_body(theus_tx *tx, void *user)
{
    static const float zeros[FEAT * CLASSES];
    static const int64_t zero64;
    optimizer *o = user;
    int rc;
    if ((rc = theus_tx_read(tx, "grad_count", NULL, &o->count, THEUS_MEM_HOST)))
        return rc;
    if (o->count <= 0)
        return NOTHING_TO_APPLY;
    if ((rc = theus_tx_read(tx, "grad_loss", NULL, &o->gloss, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "grad_W", NULL, o->gW, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "grad_b", NULL, o->gb, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "step", NULL, &o->step, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "W", NULL, o->W, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "b", NULL, o->b, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "adam_mW", NULL, o->mW, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "adam_vW", NULL, o->vW, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "adam_mb", NULL, o->mb, THEUS_MEM_HOST)) ||
        (rc = theus_tx_read(tx, "adam_vb", NULL, o->vb, THEUS_MEM_HOST)))
        return rc;
    const float inv = 1.0f / (float)o->count;
    const int64_t t = o->step + 1;
    adam(o->W, o->mW, o->vW, o->gW, FEAT * CLASSES, inv, &o->hp, t);
    adam(o->b, o->mb, o->vb, o->gb, CLASSES, inv, &o->hp, t);
    o->loss = o->gloss * inv;
    if ((rc = theus_tx_write(tx, "W", NULL, o->W, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "b", NULL, o->b, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "adam_mW", NULL, o->mW, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "adam_vW", NULL, o->vW, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "adam_mb", NULL, o->mb, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "adam_vb", NULL, o->vb, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "grad_W", NULL, zeros, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "grad_b", NULL, zeros, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "grad_count", NULL, &zero64, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "grad_loss", NULL, zeros, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "step", NULL, &t, THEUS_MEM_HOST)) ||
        (rc = theus_tx_write(tx, "loss", NULL, &o->loss, THEUS_MEM_HOST)))
        return rc;
    return THEUS_OK;
}

#endif
