/* Bounded commit log of written regions (see commit_log.h). */
#include "commit_log.h"
#include <string.h>

void commit_log_init(commit_log *log, uint32_t capacity)
{
    memset(log, 0, sizeof *log);
    log->capacity = capacity;
}

void commit_log_append(commit_log *log, log_entry *ring, const log_entry *e)
{
    log_entry *slot = &ring[log->head % log->capacity];
    if (log->head >= log->capacity && slot->version > log->floor)
        log->floor = slot->version;
    *slot = *e;
    log->head++;
}

log_probe commit_log_probe(const commit_log *log, const log_entry *ring, uint64_t base,
                           uint32_t field, const theus_region *r, int adds_commute,
                           const log_entry **hit)
{
    /* Newest first; entries are appended in version order, so stop at the base. */
    uint64_t n = log->head < log->capacity ? log->head : log->capacity;
    for (uint64_t i = 0; i < n; i++) {
        const log_entry *e = &ring[(log->head - 1 - i) % log->capacity];
        if (e->version <= base)
            return LOG_CLEAR;
        if (e->field != field)
            continue;
        if (adds_commute && e->op == DELTA_ADD)
            continue;
        if (region_overlap(&e->region, r)) {
            *hit = e;
            return LOG_HIT;
        }
    }
    return base < log->floor ? LOG_STALE : LOG_CLEAR;
}
