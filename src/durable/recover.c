/* Recovery: the newest checkpoint at or below a target version (a full one, or an
 * incremental chain back to a full one), then the log records after it, applied straight to
 * the field memory of a fresh state under the commit lock. Every check that fails is
 * THEUS_ECORRUPT naming the file and the byte offset, except a torn tail of the newest
 * segment, which is dropped (and with `repair` cut off the file) and reported.
 *
 * This file: the two entry points, dur_rebuild and dur_versions. The directory scan is in
 * durable_dir.c, applying bytes to the state in recover_apply.c, checkpoints and their
 * chain in recover_ckpt.c, the log in recover_log.c; recover_internal.h joins them. */
#include "durable/recover_internal.h"
#include "durable/durable.h"
#include "error.h"
#include "publish.h"

#include <string.h>
#include <unistd.h>

int dur_rebuild(theus_state *st, const char *dir, uint64_t target, int repair, rebuild_result *r)
{
    memset(r, 0, sizeof *r);
    dir_list l;
    int rc = dir_scan(st, dir, &l);
    if (rc != THEUS_OK)
        return rc;
    rc = state_commit_lock(st, 0);
    if (rc != THEUS_OK) {
        dir_list_free(&l);
        return rc;
    }
    state_replay_gate_enter(st);
    uint64_t base = 1;
    size_t ci = l.nckpt;
    while (ci > 0 && l.ckpt[ci - 1].version > target)
        ci--;
    if (ci > 0) {
        rc = recover_load_chain(st, dir, &l, ci - 1, &r->chain);
        base = l.ckpt[ci - 1].version;
    }
    r->ckpt_version = base;
    /* The first segment needed: the last one starting at or before the base. */
    size_t si = 0;
    while (si + 1 < l.nseg && l.seg[si + 1].version <= base)
        si++;
    uint64_t last = base;
    if (rc == THEUS_OK && l.nseg > 0 && l.seg[si].version > base)
        rc = err_set(st, THEUS_ECORRUPT, "'%s': the log starts at version %llu, the newest "
                     "checkpoint is version %llu (records missing)", dir,
                     (unsigned long long)l.seg[si].version, (unsigned long long)base);
    if (rc == THEUS_OK && l.nseg > 0)
        last = l.seg[si].version;
    for (size_t k = si; k < l.nseg && rc == THEUS_OK; k++) {
        char p[DUR_PATH_MAX];
        wal_segment_path(dir, l.seg[k].version, p, sizeof p);
        int newest = k + 1 == l.nseg;
        uint64_t valid = 0;
        rc = recover_replay_segment(st, p, l.seg[k].version, newest, base, target, repair,
                                    &last, r, &valid);
        if (newest && rc == THEUS_OK) {
            r->have_seg = valid >= WAL_SEG_HEAD;
            r->last_seg_start = l.seg[k].version;
            r->last_seg_size = valid;
            if (!r->have_seg && repair)
                unlink(p);
        }
        if (last >= target)
            break;
    }
    state_replay_gate_leave(st);
    state_commit_unlock(st);
    r->version = theus_state_version(st);
    if (rc == THEUS_OK && target != UINT64_MAX && r->version != target)
        rc = err_set(st, THEUS_ENOENT, "'%s': version %llu cannot be rebuilt (the directory "
                     "reaches version %llu from checkpoint %llu)", dir,
                     (unsigned long long)target, (unsigned long long)r->version,
                     (unsigned long long)base);
    dir_list_free(&l);
    return rc;
}

int dur_versions(const char *dir, uint64_t *oldest, uint64_t *newest)
{
    dir_list l;
    int rc = dir_scan(NULL, dir, &l);
    if (rc != THEUS_OK)
        return rc;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t i = 0; i < l.nckpt; i++) {
        if (l.ckpt[i].kind == DUR_FULL && l.ckpt[i].version < lo)
            lo = l.ckpt[i].version;
        if (l.ckpt[i].version > hi)
            hi = l.ckpt[i].version;
    }
    if (l.nseg > 0 && l.seg[0].version == 1)
        lo = 1;
    /* The newest version: the last record of the newest readable segment. */
    for (size_t k = l.nseg; k-- > 0 && rc == THEUS_OK;) {
        char p[DUR_PATH_MAX];
        wal_segment_path(dir, l.seg[k].version, p, sizeof p);
        seg_map m;
        if ((rc = recover_seg_open(NULL, p, &m)) != THEUS_OK)
            break;
        char why[256];
        uint64_t s;
        if (wal_seg_head_decode(m.p, m.size, &s, why, sizeof why) == 0) {
            uint64_t off = WAL_SEG_HEAD, v = s;
            wal_rec r;
            while (wal_next(m.p, m.size, off, v, &r, why, sizeof why) == WAL_SCAN_RECORD) {
                if (r.kind == WAL_KIND_COMMIT)
                    v = r.version;
                off += r.size;
            }
            if (v > hi)
                hi = v;
            recover_seg_close(&m);
            break;
        }
        recover_seg_close(&m);
    }
    dir_list_free(&l);
    if (rc != THEUS_OK)
        return rc;
    if (lo == UINT64_MAX || hi == 0)
        return err_set(NULL, THEUS_ENOENT, "'%s' holds no rebuildable version", dir);
    if (hi < lo)
        hi = lo;
    *oldest = lo;
    *newest = hi;
    return THEUS_OK;
}
