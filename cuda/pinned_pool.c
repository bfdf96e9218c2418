/* The CUDA backend's small pinned staging pool: host payloads of at most 64 KiB are copied by
 * the CPU into blocks of pinned, mapped host memory, which the replay kernel reads over the
 * bus (no copy to the device, no wait at staging time). 1 MiB slabs, each cut into blocks of
 * one size class, at most PINNED_POOL_SLABS of them, kept for the life of the process. */
#include "cuda_backend.h"

#include <stdlib.h>
#include <string.h>

static const uint32_t k_class[PINNED_POOL_CLASSES] = {256, 1024, 4096, 16384, 65536};

void pinned_pool_init(pinned_pool *sp)
{
    memset(sp, 0, sizeof *sp);
    pthread_mutex_init(&sp->mu, NULL);
    sp->max = PINNED_POOL_DEFAULT_MAX;
    const char *sm = getenv("THEUS_CUDA_SMALL_STAGE");
    if (sm && *sm) {
        char *end = NULL;
        unsigned long long v = strtoull(sm, &end, 10);
        if (end && *end == '\0')
            sp->max = v < PINNED_POOL_DEFAULT_MAX ? (size_t)v : PINNED_POOL_DEFAULT_MAX;
    }
}

void *pinned_pool_alloc(pinned_pool *sp, size_t n)
{
    int k = 0;
    while (k < PINNED_POOL_CLASSES && k_class[k] < n)
        k++;
    if (k == PINNED_POOL_CLASSES || n > sp->max)
        return NULL;
    pthread_mutex_lock(&sp->mu);
    if (!sp->free[k] && sp->held[k] && sp->idle && sp->idle(sp->idle_arg)) {
        /* Every stream-ordered replay has finished: what they read is free again. */
        for (int i = 0; i < PINNED_POOL_CLASSES; i++)
            while (sp->held[i]) {
                pinned_block *b = sp->held[i];
                sp->held[i] = b->next;
                b->next = sp->free[i];
                sp->free[i] = b;
            }
    }
    if (!sp->free[k] && sp->nslabs < PINNED_POOL_SLABS) {
        void *p = NULL;
        if (cudaHostAlloc(&p, PINNED_POOL_SLAB_BYTES, cudaHostAllocMapped | cudaHostAllocPortable) !=
            cudaSuccess) {
            (void)cudaGetLastError();
        } else {
            unsigned char *b = p;
            sp->slab_class[sp->nslabs] = k;
            sp->slab[sp->nslabs++] = b;
            for (size_t off = PINNED_POOL_SLAB_BYTES; off >= k_class[k]; off -= k_class[k]) {
                pinned_block *blk = (pinned_block *)(void *)(b + off - k_class[k]);
                blk->next = sp->free[k];
                sp->free[k] = blk;
            }
        }
    }
    pinned_block *blk = sp->free[k];
    if (blk)
        sp->free[k] = blk->next;
    pthread_mutex_unlock(&sp->mu);
    return blk;
}

int pinned_pool_lookup(pinned_pool *sp, const void *p)
{
    const unsigned char *q = p;
    int cls = -1;
    if (!sp->max || !p)
        return -1;
    pthread_mutex_lock(&sp->mu);
    for (int i = 0; i < sp->nslabs; i++)
        if (q >= sp->slab[i] && q < sp->slab[i] + PINNED_POOL_SLAB_BYTES) {
            cls = sp->slab_class[i];
            break;
        }
    pthread_mutex_unlock(&sp->mu);
    return cls;
}

void pinned_pool_free(pinned_pool *sp, void *p, int cls, int later)
{
    pinned_block *blk = p;
    pthread_mutex_lock(&sp->mu);
    pinned_block **list = later ? &sp->held[cls] : &sp->free[cls];
    blk->next = *list;
    *list = blk;
    pthread_mutex_unlock(&sp->mu);
}

void pinned_pool_destroy(pinned_pool *sp)
{
    for (int i = 0; i < sp->nslabs; i++)
        if (cudaFreeHost(sp->slab[i]) != cudaSuccess)
            (void)cudaGetLastError();
    sp->nslabs = 0;
    memset(sp->free, 0, sizeof sp->free);
    memset(sp->held, 0, sizeof sp->held);
}
