/* Bounded commit log of written regions (see commit_log.h). */
#include "commit_log.h"
#include <string.h>

void commit_log_init(commit_log *log, uint32_t capacity)
{
    memset(log, 0, sizeof *log);
    log->capacity = capacity;
}

log_entry *commit_log_next(commit_log *log, log_entry *ring)
{
    log_entry *slot = &ring[log->head % log->capacity];
    if (log->head >= log->capacity && slot->version > log->floor)
        log->floor = slot->version;
    log->head++;
    return slot;
}

void commit_log_append(commit_log *log, log_entry *ring, const log_entry *e)
{
    *commit_log_next(log, ring) = *e;
}

uint64_t commit_log_floor_after(const commit_log *log, const log_entry *ring, uint64_t n,
                                uint64_t version)
{
    uint64_t floor = log->floor;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t pos = log->head + i;
        if (pos < log->capacity)
            continue;
        /* Past one lap the batch evicts its own entries. */
        uint64_t evicted = i >= log->capacity ? version : ring[pos % log->capacity].version;
        if (evicted > floor)
            floor = evicted;
    }
    return floor;
}

void commit_log_put(commit_log *log, log_entry *ring, uint64_t head, uint64_t floor,
                    const log_entry *e, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        ring[(head + i) % log->capacity] = e[i];
    log->floor = floor;
    log->head = head + n;
}

log_probe commit_log_probe(const commit_log *log, const log_entry *ring, uint64_t base,
                           uint32_t field, const theus_region *r, const log_entry **hit)
{
    /* Newest first; entries are appended in version order, so stop at the base. */
    uint64_t n = log->head < log->capacity ? log->head : log->capacity;
    for (uint64_t i = 0; i < n; i++) {
        const log_entry *e = &ring[(log->head - 1 - i) % log->capacity];
        if (e->version <= base)
            return LOG_CLEAR;
        if (e->field != field || !region_overlap(&e->region, r))
            continue;
        if (e->op == LOG_OP_BLOCKS)
            return LOG_STALE;
        *hit = e;
        return LOG_HIT;
    }
    return base < log->floor ? LOG_STALE : LOG_CLEAR;
}
