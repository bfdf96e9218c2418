/* theus-bench without CUDA (THEUS_WITH_CUDA off): the GPU scenarios are not built. */
#include "gpu.h"
#include "bench.h"
#include <string.h>

void gpu_collect(gpu_info *g)
{
    memset(g, 0, sizeof *g);
    snprintf(g->note, sizeof g->note, "theus-bench built without CUDA");
}

static int not_built(const char *scenario)
{
    note_skip(scenario, "gpu", "no GPU (theus-bench built without CUDA)");
    return 0;
}

int scn_gpu_replay(int add)
{
    return not_built(add ? "replay.add" : "replay.copy");
}

int scn_gpu_commit_latency(void)
{
    return not_built("commit.latency");
}

int scn_gpu_commit_scaling(void)
{
    return not_built("commit.scaling");
}

int scn_gpu_stage_h2d(void)
{
    return not_built("stage.h2d");
}

void gpu_shutdown(void)
{
}
