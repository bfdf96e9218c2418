/* theus-bench on the GPU: the GPU as recorded with every report (gpu_collect, gpu.h), with
 * its streaming-copy and cudaMemcpy bandwidth measured once. */
#include "gpu_common.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void driver_version(char *out, size_t len)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/driver/nvidia/version", "r");
    if (!f)
        return;
    char line[512];
    if (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "Kernel Module");
        if (p) {
            p += strlen("Kernel Module");
            while (*p == ' ' || *p == '\t')
                p++;
            size_t n = strcspn(p, " \t\n");
            snprintf(out, len, "%.*s", (int)(n < len ? n : len - 1), p);
        } else {
            line[strcspn(line, "\n")] = '\0';
            if (len > 1)
                line[len - 1 < sizeof line ? len - 1 : sizeof line - 1] = '\0';
            memcpy(out, line, strlen(line) + 1);
        }
    }
    fclose(f);
}

/* Best of a few streaming copies of @bytes: kernel and cudaMemcpyAsync, GB/s read+write. */
static int measure_copy(size_t bytes, double *kernel_gbps, double *memcpy_gbps)
{
    char *a = NULL, *b = NULL;
    int rc = -1;
    double best_k = 0, best_m = 0;
    if (cudaMalloc((void **)&a, bytes) != cudaSuccess || cudaMalloc((void **)&b, bytes) != cudaSuccess ||
        cudaMemsetAsync(a, 1, bytes, G.s) != cudaSuccess) {
        cuda_fail(cudaGetLastError(), "allocating the bandwidth probe", __FILE__, __LINE__);
        goto out;
    }
    for (int i = 0; i < 6; i++) {
        double t;
        if (t_begin(1) || launch_copy(b, a, bytes) || t_end(&t))
            goto out;
        if (i && 2.0 * bytes / t * 1e-9 > best_k)
            best_k = 2.0 * bytes / t * 1e-9;
        if (t_begin(1))
            goto out;
        if (cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, G.s) != cudaSuccess) {
            cuda_fail(cudaGetLastError(), "cudaMemcpyAsync", __FILE__, __LINE__);
            goto out;
        }
        if (t_end(&t))
            goto out;
        if (i && 2.0 * bytes / t * 1e-9 > best_m)
            best_m = 2.0 * bytes / t * 1e-9;
    }
    *kernel_gbps = best_k;
    *memcpy_gbps = best_m;
    rc = 0;
out:
    dev_free(a);
    dev_free(b);
    return rc;
}

void gpu_collect(gpu_info *g)
{
    memset(g, 0, sizeof *g);
    g->built = 1;
    const char *saved = gpu_scn;
    gpu_scn = "machine";
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        (void)cudaGetLastError();
        snprintf(g->note, sizeof g->note, "no CUDA device (%s)",
                 e != cudaSuccess ? cudaGetErrorName(e) : "count 0");
        gpu_scn = saved;
        return;
    }
    if (!theus_gpu_available()) {
        snprintf(g->note, sizeof g->note, "a CUDA device answers but theus's CUDA backend is off "
                 "(THEUS_DISABLE_GPU, or no kernel image for this device)");
        gpu_scn = saved;
        return;
    }
    if (gpu_init()) {
        gpu_scn = saved;
        return;
    }
    struct cudaDeviceProp p;
    if ((e = cudaGetDeviceProperties(&p, G.device)) != cudaSuccess) {
        cuda_fail(e, "cudaGetDeviceProperties", __FILE__, __LINE__);
        gpu_scn = saved;
        return;
    }
    g->device = G.device;
    snprintf(g->name, sizeof g->name, "%.95s", p.name);
    g->cc_major = p.major;
    g->cc_minor = p.minor;
    g->sms = p.multiProcessorCount;
    g->mem_total = p.totalGlobalMem;
    g->l2_bytes = (size_t)p.l2CacheSize;
    (void)cudaDeviceGetAttribute(&g->mem_clock_khz, cudaDevAttrMemoryClockRate, G.device);
    (void)cudaDeviceGetAttribute(&g->bus_width_bits, cudaDevAttrGlobalMemoryBusWidth, G.device);
    (void)cudaDeviceGetAttribute(&g->ecc, cudaDevAttrEccEnabled, G.device);
    (void)cudaGetLastError();
    if (g->mem_clock_khz > 0 && g->bus_width_bits > 0)
        g->peak_gbps = 2.0 * g->mem_clock_khz * 1e3 * (g->bus_width_bits / 8.0) * 1e-9;
    (void)cudaDriverGetVersion(&g->driver_api);
    (void)cudaRuntimeGetVersion(&g->runtime);
    driver_version(g->driver, sizeof g->driver);
    size_t dfree = 0, dtotal = 0;
    if (cudaMemGetInfo(&dfree, &dtotal) != cudaSuccess)
        (void)cudaGetLastError();
    size_t probe = (size_t)512 << 20;
    while (probe > ((size_t)32 << 20) && 2 * probe > dfree / 2)
        probe /= 2;
    if (measure_copy(probe, &g->copy_gbps, &g->memcpy_gbps) == 0)
        g->present = 1;
    gpu_scn = saved;
}
