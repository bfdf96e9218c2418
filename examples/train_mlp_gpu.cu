// train_mlp's CUDA kernels (built when theus has its CUDA backend): the minibatch gradient
// against the parameters where theus keeps them (device field memory), Adam's update written
// as the payloads and segments of three described ADD batches in device memory, and the loss
// over all samples. Compiled, not yet run on a GPU.
#include "train_mlp.h"

#include <cuda_runtime.h>

#include <math.h>
#include <stdlib.h>

struct mlp_gpu {
    float *x, *y;                  // samples
    int n;
    float *grad;                   // MLP_P
    float *loss;                   // one word (device) ...
    float *loss_host;              // ... and its pinned copy
    float *pay;                    // 3 * MLP_P: the three batches' payloads
    theus_batch_segment *segs;     // MLP_SEGS
};

__device__ static float forward(const float *p, const float *x, float *h)
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

// One thread per sample of the minibatch; gradients summed with atomics.
__global__ static void grad_kernel(const float *p, const float *x, const float *y, int n, int first,
                                   float *grad, float *loss)
{
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= MLP_BATCH)
        return;
    const int i = (first + b) % n;
    const float *xi = x + i * MLP_D;
    float h[MLP_H];
    const float e = forward(p, xi, h) - y[i];
    atomicAdd(loss, e * e / MLP_BATCH);
    const float de = 2.0f * e / MLP_BATCH;
    atomicAdd(&grad[MLP_B2], de);
    for (int j = 0; j < MLP_H; j++) {
        atomicAdd(&grad[MLP_W2 + j], de * h[j]);
        const float dh = de * p[MLP_W2 + j] * (1.0f - h[j] * h[j]);
        atomicAdd(&grad[MLP_B1 + j], dh);
        for (int k = 0; k < MLP_D; k++)
            atomicAdd(&grad[MLP_W1 + j * MLP_D + k], dh * xi[k]);
    }
}

// One thread per parameter: Adam's new moments and step, as ADD deltas; thread 0 writes
// the segments (one per tensor), which the three batches share.
__global__ static void adam_kernel(const float *g, const float *m, const float *v, float c1, float c2,
                                   float *pay, theus_batch_segment *segs)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i == 0) {
        const int64_t start[MLP_SEGS + 1] = {MLP_W1, MLP_B1, MLP_W2, MLP_B2, MLP_P};
        for (int k = 0; k < MLP_SEGS; k++) {
            segs[k].dst = start[k];
            segs[k].length = start[k + 1] - start[k];
            segs[k].src = start[k];
        }
    }
    if (i >= MLP_P)
        return;
    const float mn = MLP_BETA1 * m[i] + (1.0f - MLP_BETA1) * g[i];
    const float vn = MLP_BETA2 * v[i] + (1.0f - MLP_BETA2) * g[i] * g[i];
    pay[i] = -MLP_LR * (mn / c1) / (sqrtf(vn / c2) + MLP_EPS);
    pay[MLP_P + i] = mn - m[i];
    pay[2 * MLP_P + i] = vn - v[i];
}

__global__ static void loss_kernel(const float *p, const float *x, const float *y, int n, float *loss)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    float h[MLP_H];
    const float e = forward(p, x + i * MLP_D, h) - y[i];
    atomicAdd(loss, e * e / n);
}

extern "C" mlp_gpu *mlp_gpu_new(const float *x, const float *y, int n)
{
    mlp_gpu *g = static_cast<mlp_gpu *>(calloc(1, sizeof *g));
    if (!g)
        return NULL;
    g->n = n;
    const size_t xb = (size_t)n * MLP_D * sizeof(float), yb = (size_t)n * sizeof(float);
    if (cudaMalloc(&g->x, xb) != cudaSuccess || cudaMalloc(&g->y, yb) != cudaSuccess ||
        cudaMalloc(&g->grad, MLP_P * sizeof(float)) != cudaSuccess ||
        cudaMalloc(&g->loss, sizeof(float)) != cudaSuccess ||
        cudaMallocHost(&g->loss_host, sizeof(float)) != cudaSuccess ||
        cudaMalloc(&g->pay, 3 * MLP_P * sizeof(float)) != cudaSuccess ||
        cudaMalloc(&g->segs, MLP_SEGS * sizeof(theus_batch_segment)) != cudaSuccess ||
        cudaMemcpy(g->x, x, xb, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(g->y, y, yb, cudaMemcpyHostToDevice) != cudaSuccess) {
        mlp_gpu_free(g);
        return NULL;
    }
    return g;
}

extern "C" void mlp_gpu_free(mlp_gpu *g)
{
    if (!g)
        return;
    cudaFree(g->x);
    cudaFree(g->y);
    cudaFree(g->grad);
    cudaFree(g->loss);
    cudaFreeHost(g->loss_host);
    cudaFree(g->pay);
    cudaFree(g->segs);
    (void)cudaGetLastError();
    free(g);
}

extern "C" int mlp_gpu_step(mlp_gpu *g, const float *params, const float *m, const float *v,
                            int t, int first, void *stream, const theus_batch_segment **segs,
                            const float **pay, float *loss)
{
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    // The kernels run after the previous step's replay: it was enqueued on this stream.
    if (cudaMemsetAsync(g->grad, 0, MLP_P * sizeof(float), s) != cudaSuccess ||
        cudaMemsetAsync(g->loss, 0, sizeof(float), s) != cudaSuccess)
        return -1;
    grad_kernel<<<1, MLP_BATCH, 0, s>>>(params, g->x, g->y, g->n, first, g->grad, g->loss);
    const float c1 = 1.0f - powf(MLP_BETA1, (float)t), c2 = 1.0f - powf(MLP_BETA2, (float)t);
    adam_kernel<<<(MLP_P + 127) / 128, 128, 0, s>>>(g->grad, m, v, c1, c2, g->pay, g->segs);
    if (cudaGetLastError() != cudaSuccess ||
        cudaMemcpyAsync(g->loss_host, g->loss, sizeof(float), cudaMemcpyDeviceToHost, s) !=
            cudaSuccess ||
        cudaStreamSynchronize(s) != cudaSuccess)
        return -1;
    *loss = *g->loss_host;
    *segs = g->segs;
    *pay = g->pay;
    return 0;
}

extern "C" int mlp_gpu_loss(mlp_gpu *g, const float *params, void *stream, float *loss)
{
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (cudaMemsetAsync(g->loss, 0, sizeof(float), s) != cudaSuccess)
        return -1;
    loss_kernel<<<(g->n + 127) / 128, 128, 0, s>>>(params, g->x, g->y, g->n, g->loss);
    if (cudaGetLastError() != cudaSuccess ||
        cudaMemcpyAsync(g->loss_host, g->loss, sizeof(float), cudaMemcpyDeviceToHost, s) !=
            cudaSuccess ||
        cudaStreamSynchronize(s) != cudaSuccess)
        return -1;
    *loss = *g->loss_host;
    return 0;
}
