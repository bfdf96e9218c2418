/* Region conflicts since a base: the commit log first, then the block map (conflict.h). */
#include "conflict.h"
#include <string.h>

int conflict_check_region(const theus_state *st, uint64_t base, uint32_t i,
                          const theus_region *r, theus_conflict_kind kind, theus_conflict *c)
{
    const field_desc *f = &st->fields[i];
    if (atomic_load_explicit(&f->version, memory_order_acquire) <= base)
        return 0;
    const log_entry *hit = NULL;
    log_probe p = commit_log_probe(&st->hdr->log, st->log_ring, base, i, r, &hit);
    if (p == LOG_CLEAR)
        return 0;
    uint64_t version = 0;
    if (p == LOG_STALE) {
        block_map m = state_block_map(st, i);
        if (!block_map_probe(&m, r, base, &version))
            return 0;
    }
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->base = base;
    memcpy(c->field, f->name, sizeof c->field);
    if (p == LOG_HIT) {
        c->region = hit->region;
        c->version = hit->version;
    } else {
        c->region = *r;
        c->version = version;
    }
    return 1;
}
