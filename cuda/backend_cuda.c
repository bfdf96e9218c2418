/* The CUDA backend: its table, and discovery. Device and pinned field memory, payloads
 * staged in device memory (through pinned bounce buffers from the host), reads with
 * copy-engine copies or a gather kernel, the whole commit batch in one kernel launch, and the
 * gatekeeper's checks on the GPU. A process-wide singleton, created on first use; NULL when
 * no device answers. The entries live in the files named in cuda_backend.h. */
#include "cuda_backend.h"

#include "../kernels/constraints.cuh"
#include "../kernels/replay.cuh"

#include <stdlib.h>
#include <string.h>

/* Device memory the staging pool keeps cached between commits instead of giving it back. */
#define POOL_KEEP_BYTES ((uint64_t)256 << 20)

static cuda_ctx g_ctx;
static theus_backend g_backend;
static const theus_backend *g_ready;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static int cuda_device_id(void *ctx)
{
    return ((const cuda_ctx *)ctx)->device;
}

static const theus_backend_iface cuda_iface = {
    .name = "cuda",
    .alloc = cuda_alloc,
    .free = cuda_free,
    .read = cuda_read,
    .overlay = cuda_overlay,
    .stage = cuda_stage,
    .unstage = cuda_unstage,
    .replay = cuda_replay,
    .check = cuda_check,
    .audit = cuda_audit,
    .device_id = cuda_device_id,
    .stage_batch = cuda_stage_batch,
    .batch_result = cuda_batch_result,
    .replay_on_stream = cuda_replay_on_stream,
    .fence_wait = cuda_fence_wait,
    .fence_release = cuda_fence_release,
    .stream_sync = cuda_stream_sync,
    .ipc_export = cuda_ipc_export,
    .ipc_open = cuda_ipc_open,
    .ipc_close = cuda_ipc_close,
    .host_register = cuda_host_register,
    .host_unregister = cuda_host_unregister,
};

/* Release what a failed discovery set up (the backend is never used then). */
static void ctx_teardown(cuda_ctx *c)
{
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess)
        prev = -1;
    if (cudaSetDevice(c->device) != cudaSuccess)
        (void)cudaGetLastError();
    for (int i = 0; i < c->nlanes; i++)
        cuda_lane_destroy(&c->lanes[i]);
    c->nlanes = 0;
    pinned_pool_destroy(&c->small);
    if (c->chain)
        cuda_async_destroy(c);
    if (c->pool) {
        (void)cudaMemPoolDestroy(c->pool);
        c->pool = NULL;
    }
    if (prev >= 0)
        (void)cudaSetDevice(prev);
    (void)cudaGetLastError();
}

static int gpu_disabled_by_env(void)
{
    const char *v = getenv("THEUS_DISABLE_GPU");
    return v && v[0] && strcmp(v, "0") != 0;
}

static int attr(enum cudaDeviceAttr a, int dev, int *out)
{
    *out = 0;
    if (cudaDeviceGetAttribute(out, a, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    return 0;
}

static void cuda_init_once(void)
{
    if (gpu_disabled_by_env())
        return;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count <= 0) {
        (void)cudaGetLastError();
        return;
    }
    cuda_ctx *c = &g_ctx;
    memset(c, 0, sizeof *c);
    /* The device current on the first thread that asks (0 unless it chose another). */
    if (cudaGetDevice(&c->device) != cudaSuccess) {
        (void)cudaGetLastError();
        c->device = 0;
    }
    int uva = 0, mode = 0, sms = 0, coop = 0, pools = 0, pitch = 0;
    if (attr(cudaDevAttrUnifiedAddressing, c->device, &uva) || !uva ||
        attr(cudaDevAttrComputeMode, c->device, &mode) || mode == cudaComputeModeProhibited ||
        attr(cudaDevAttrMultiProcessorCount, c->device, &sms) || sms <= 0)
        return;
    attr(cudaDevAttrCooperativeLaunch, c->device, &coop);
    attr(cudaDevAttrMemoryPoolsSupported, c->device, &pools);
    attr(cudaDevAttrMaxPitch, c->device, &pitch);
    c->cooperative = coop;
    c->max_pitch = pitch > 0 ? (size_t)pitch : 0;
    c->check_blocks = sms * 8;
    /* The kernels must have an image for this device (built for CMAKE_CUDA_ARCHITECTURES):
     * find out now and fall back to host memory instead of failing every commit. */
    if (theus_replay_probe(&c->max_blocks) != cudaSuccess || theus_check_probe() != cudaSuccess) {
        (void)cudaGetLastError();
        return;
    }
    if (pools) {
        struct cudaMemPoolProps props;
        memset(&props, 0, sizeof props);
        props.allocType = cudaMemAllocationTypePinned;
        props.handleTypes = cudaMemHandleTypeNone;
        props.location.type = cudaMemLocationTypeDevice;
        props.location.id = c->device;
        if (cudaMemPoolCreate(&c->pool, &props) == cudaSuccess) {
            uint64_t keep = POOL_KEEP_BYTES;
            if (cudaMemPoolSetAttribute(c->pool, cudaMemPoolAttrReleaseThreshold, &keep) !=
                cudaSuccess)
                (void)cudaGetLastError();
        } else {
            (void)cudaGetLastError();
            c->pool = NULL;
        }
    }
    for (int i = 0; i < CUDA_LANES; i++) {
        if (cuda_lane_init(&c->lanes[i]) != 0) {
            ctx_teardown(c);
            return;
        }
        c->nlanes = i + 1;
    }
    atomic_init(&c->next_lane, 0u);
    pinned_pool_init(&c->small);
    if (cuda_async_init(c) != 0) {
        ctx_teardown(c);
        return;
    }
    cuda_async_attach_pool(c);
    g_backend.iface = &cuda_iface;
    g_backend.ctx = c;
    g_ready = &g_backend;
}

const theus_backend *backend_cuda(void)
{
    pthread_once(&g_once, cuda_init_once);
    return g_ready;
}
