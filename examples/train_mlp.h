/* train_mlp's model, shared by the C program and its CUDA kernels: a two-layer perceptron
 * (D inputs, H tanh units, one output) whose parameters are one flat f32 vector laid out as
 * w1 [H][D], b1 [H], w2 [H], b2 [1]; Adam's hyper-parameters. The four tensors are the four
 * segments of each step's described batches. */
#ifndef TRAIN_MLP_H
#define TRAIN_MLP_H

#include <theus/theus_gpu.h>

enum { MLP_D = 8, MLP_H = 32, MLP_TEACHER_H = 6, MLP_BATCH = 64 };
enum { MLP_W1 = 0, MLP_B1 = MLP_H * MLP_D, MLP_W2 = MLP_B1 + MLP_H, MLP_B2 = MLP_W2 + MLP_H,
       MLP_P = MLP_B2 + 1, MLP_SEGS = 4 };

#define MLP_LR 0.01f
#define MLP_BETA1 0.9f
#define MLP_BETA2 0.999f
#define MLP_EPS 1e-8f

#ifdef __cplusplus
extern "C" {
#endif

/* The GPU side (train_mlp_gpu.cu, built with the CUDA backend). */
typedef struct mlp_gpu mlp_gpu;
/* Upload @n samples (@x: n * MLP_D, @y: n); NULL on a CUDA error. */
mlp_gpu *mlp_gpu_new(const float *x, const float *y, int n);
void mlp_gpu_free(mlp_gpu *g);
/* Step @t (from 1) on @stream: the gradient of the minibatch @first.. against the field
 * memory @params, then Adam's deltas against @m and @v, written with the segments into
 * device memory; waits for the stream (the segments must be complete when they are
 * staged) and returns the minibatch loss. *@segs, *@pay: device arrays for
 * theus_tx_stage_batch (payload of field k at @pay + k * MLP_P). -1 on a CUDA error. */
int mlp_gpu_step(mlp_gpu *g, const float *params, const float *m, const float *v, int t,
                 int first, void *stream, const theus_batch_segment **segs, const float **pay,
                 float *loss);
/* The mean squared error of all samples against @params (waits for @stream). */
int mlp_gpu_loss(mlp_gpu *g, const float *params, void *stream, float *loss);

#ifdef __cplusplus
}
#endif
#endif
