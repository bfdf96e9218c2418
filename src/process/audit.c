/* The audit: the schema's per-field rules, evaluated once per commit under the commit lock
 * on the values the commit would write (gate_final_values: committed bytes overlaid with
 * the batch), with Theus's levels S (refuse, stop the engine), A (refuse), B (count; refuse
 * past the threshold), C (record). The rules run on the backend that holds the field
 * (backend_audit): a device field's values stay in device memory and only a summary per
 * rule comes back; host memory is evaluated by the host loop. Violations go to a bounded
 * ring, to counters per process, field and level, and — for a durable state — to the
 * write-ahead log (durable/audit_log.h). */
#include "process.h"
#include "alloc.h"
#include "backend.h"
#include "durable/audit_log.h"
#include "error.h"
#include "gatekeeper.h"
#include <stdio.h>
#include <string.h>

static const char *const rule_names[] = {"finite", "min", "max", "max_abs", "max_change"};

int audit_init(theus_engine *e, uint32_t ring)
{
    audit_state *a = &e->audit;
    memset(a, 0, sizeof *a);
    const theus_schema *s = e->st->schema;
    size_t nf = s->nfields, slots = nf * SCHEMA_AUDIT_MAX;
    for (size_t f = 0; f < nf; f++)
        a->any_rules |= s->fields[f].naudit > 0;
    a->b_count = theus_xcalloc(slots, sizeof *a->b_count);
    a->touched = theus_xcalloc(slots, 1);
    a->violated = theus_xcalloc(slots, 1);
    a->by_field_outside = theus_xcalloc((nf ? nf : 1) * AUDIT_COUNTERS,
                                        sizeof *a->by_field_outside);
    a->log_on = audit_log_on(e->st);
    a->ring = theus_xcalloc(ring, sizeof *a->ring);
    a->ring_cap = ring;
    a->next_seq = 1;
    a->first_seq = 1;
    if (!a->b_count || !a->touched || !a->violated || !a->by_field_outside || !a->ring ||
        pthread_mutex_init(&a->ring_mu, NULL) != 0) {
        theus_xfree(a->b_count);
        theus_xfree(a->touched);
        theus_xfree(a->violated);
        theus_xfree((void *)a->by_field_outside);
        theus_xfree(a->ring);
        return THEUS_ENOMEM;
    }
    return THEUS_OK;
}

/* A record of the log (a reopened durable state): into the ring, seq continued after it. */
static void refill(void *user, uint64_t version, const wal_audit_entry *w)
{
    audit_state *a = user;
    theus_audit_record rec;
    memset(&rec, 0, sizeof rec);
    rec.seq = w->seq;
    rec.version = version;
    memcpy(rec.process, w->process, sizeof rec.process);
    memcpy(rec.field, w->field, sizeof rec.field);
    rec.rule = (theus_audit_rule)w->rule;
    rec.level = w->level;
    rec.refused = w->refused;
    rec.index = w->index;
    rec.value = w->value;
    rec.count = w->count;
    if (rec.seq < a->next_seq || rec.seq == 0)
        return;   /* not after what the ring holds */
    if (rec.seq != a->next_seq)
        a->first_seq = rec.seq;   /* the ring holds this one on, nothing before it */
    a->ring[(rec.seq - 1) % a->ring_cap] = rec;
    a->next_seq = rec.seq + 1;
}

int audit_refill(theus_engine *e)
{
    audit_state *a = &e->audit;
    if (!a->log_on)
        return THEUS_OK;
    pthread_mutex_lock(&a->ring_mu);
    int rc = audit_log_replay(e->st, refill, a);
    pthread_mutex_unlock(&a->ring_mu);
    return rc;
}

void audit_fini(audit_state *a)
{
    theus_xfree(a->b_count);
    theus_xfree(a->touched);
    theus_xfree(a->violated);
    theus_xfree((void *)a->by_field_outside);
    theus_xfree(a->ring);
    theus_xfree(a->pending);
    theus_xfree(a->log_entries);
    pthread_mutex_destroy(&a->ring_mu);
}

/* Flat index in the field of element @i (C order) of region @r. */
static uint64_t flat_index(const field_desc *f, const theus_region *r, size_t i)
{
    uint64_t flat = 0, stride = 1;
    for (int k = (int)f->ndim - 1; k >= 0; k--) {
        uint64_t ext = (uint64_t)(r->stop[k] - r->start[k]);
        uint64_t c = (uint64_t)r->start[k] + (ext ? i % ext : 0);
        i = ext ? i / ext : 0;
        flat += c * stride;
        stride *= (uint64_t)f->shape[k];
    }
    return flat;
}

static int add_pending(audit_state *a, uint32_t field, uint32_t rule, const theus_audit_record *rec)
{
    if (tx_grow((void **)&a->pending, &a->cap_pending, a->npending + 1, sizeof *a->pending))
        return THEUS_ENOMEM;
    a->pending[a->npending].rec = *rec;
    a->pending[a->npending].field = field;
    a->pending[a->npending].rule = rule;
    a->npending++;
    return THEUS_OK;
}

/* Run the rules @rules (of delta @k's field) over the values its region holds after the
 * batch (@cur) and, for rate rules, before it (@old): in the backend's device memory for a
 * device field (staged scratch; one summary per rule comes back), else on the host. */
static int eval_delta(theus_engine *e, const publish_batch *b, size_t k,
                      const backend_audit_rule *rules, size_t nrules, int rate,
                      backend_audit_result *res)
{
    theus_state *st = e->st;
    const delta *d = &b->tx->deltas[k];
    const field_desc *f = &st->fields[d->field];
    const theus_backend *be = st->backend[d->field];
    theus_dtype dt = (theus_dtype)f->dtype;
    size_t bytes = d->nelems * theus_dtype_size(dt);
    /* (A described batch overlays only into host memory: such a field is read to the host.) */
    int batch = 0;
    for (size_t j = 0; j < b->tx->ndeltas; j++)
        batch |= b->tx->deltas[j].field == d->field && b->tx->deltas[j].batch != NULL;
    const int dev = f->placement == THEUS_PLACEMENT_DEVICE && be->iface->audit && !batch;
    const theus_mem mem = dev ? THEUS_MEM_DEVICE : THEUS_MEM_HOST;
    void *cur = NULL, *old = NULL;
    int rc = THEUS_OK;
    if (dev) {
        rc = be->iface->stage(be->ctx, THEUS_PLACEMENT_DEVICE, NULL, THEUS_MEM_HOST, bytes, &cur);
        if (rc == THEUS_OK && rate)
            rc = be->iface->stage(be->ctx, THEUS_PLACEMENT_DEVICE, NULL, THEUS_MEM_HOST, bytes,
                                  &old);
    } else {
        cur = theus_xmalloc(bytes ? bytes : 1);
        old = rate ? theus_xmalloc(bytes ? bytes : 1) : NULL;
        if (!cur || (rate && !old))
            rc = THEUS_ENOMEM;
    }
    if (rc == THEUS_OK && old)
        rc = be->iface->read(be->ctx, st->data[d->field], &st->frames[d->field], dt, &d->r, old,
                             mem);
    if (rc == THEUS_OK)
        rc = gate_final_values_mem(st, b->tx, k, cur, mem);
    if (rc == THEUS_OK)
        rc = backend_audit(be, mem, dt, cur, old, d->nelems, rules, nrules, res);
    if (dev) {
        if (cur)
            be->iface->unstage(be->ctx, cur);
        if (old)
            be->iface->unstage(be->ctx, old);
    } else {
        theus_xfree(cur);
        theus_xfree(old);
    }
    return rc;
}

/* Evaluate the rules of delta @k's field on its region; one violation per rule a commit. */
static int check_delta(theus_engine *e, const publish_batch *b, size_t k)
{
    audit_state *a = &e->audit;
    theus_state *st = e->st;
    const delta *d = &b->tx->deltas[k];
    const schema_field *sf = &st->schema->fields[d->field];
    const field_desc *f = &st->fields[d->field];
    backend_audit_rule rules[SCHEMA_AUDIT_MAX];
    backend_audit_result res[SCHEMA_AUDIT_MAX];
    size_t idx[SCHEMA_AUDIT_MAX], nr = 0;
    int rate = 0;
    for (size_t r = 0; r < sf->naudit; r++) {
        size_t slot = d->field * SCHEMA_AUDIT_MAX + r;
        a->touched[slot] = 1;
        if (a->violated[slot])
            continue;   /* an earlier delta of this commit broke it already */
        rules[nr] = (backend_audit_rule){.rule = sf->audit[r].rule, .value = sf->audit[r].value};
        rate |= sf->audit[r].rule == SCHEMA_AUDIT_MAX_CHANGE;
        idx[nr++] = r;
    }
    if (nr == 0 || d->nelems == 0)
        return THEUS_OK;
    int rc = eval_delta(e, b, k, rules, nr, rate, res);
    for (size_t i = 0; rc == THEUS_OK && i < nr; i++) {
        if (res[i].count == 0)
            continue;
        const schema_audit *rule = &sf->audit[idx[i]];
        theus_audit_record rec;
        memset(&rec, 0, sizeof rec);
        rec.version = b->version;
        snprintf(rec.process, sizeof rec.process, "%s", a->process);
        memcpy(rec.field, f->name, sizeof rec.field);
        rec.rule = (theus_audit_rule)rule->rule;
        rec.level = rule->level;
        rec.index = flat_index(f, &d->r, (size_t)res[i].first);
        rec.value = res[i].value;
        a->violated[d->field * SCHEMA_AUDIT_MAX + idx[i]] = 1;
        rc = add_pending(a, d->field, (uint32_t)idx[i], &rec);
    }
    if (rc == THEUS_ENOMEM)
        return err_set(st, rc, "audit: out of memory checking field '%s'", f->name);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "audit: cannot evaluate the rules of field '%s'", f->name);
    return THEUS_OK;
}

static void ring_push(audit_state *a, theus_audit_record *rec)
{
    pthread_mutex_lock(&a->ring_mu);
    rec->seq = a->next_seq++;
    a->ring[(rec->seq - 1) % a->ring_cap] = *rec;
    pthread_mutex_unlock(&a->ring_mu);
}

static int level_index(char level)
{
    return level == 'S' ? 0 : level == 'A' ? 1 : level == 'B' ? 2 : 3;
}

/* Keep the pending violations of the commit creating (or refused at) @version: counters,
 * records in the ring and, for a durable state, one audit record in the log (@sync: now,
 * for a refused commit). THEUS_OK, or the log's error (the violations are kept anyway). */
static int keep_pending(theus_engine *e, int refused, uint64_t version, int sync)
{
    audit_state *a = &e->audit;
    for (size_t i = 0; i < a->npending; i++) {
        audit_pending *p = &a->pending[i];
        size_t slot = p->field * SCHEMA_AUDIT_MAX + p->rule;
        if (p->rec.level == 'B')
            a->b_count[slot]++;
        p->rec.count = p->rec.level == 'B' ? a->b_count[slot] : 0;
        p->rec.refused = refused;
        _Atomic uint64_t *c = (a->proc ? a->proc->audit_by_field : a->by_field_outside) +
                              (size_t)p->field * AUDIT_COUNTERS;
        if (a->proc)
            atomic_fetch_add_explicit(&a->proc->audit, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c[level_index(p->rec.level)], 1, memory_order_relaxed);
        if (refused)
            atomic_fetch_add_explicit(&c[4], 1, memory_order_relaxed);
        ring_push(a, &p->rec);
        if (a->log_on) {
            wal_audit_entry *w = &a->log_entries[i];
            memset(w, 0, sizeof *w);
            w->seq = p->rec.seq;
            w->index = p->rec.index;
            w->count = p->rec.count;
            w->value = p->rec.value;
            w->rule = (uint32_t)p->rec.rule;
            w->level = p->rec.level;
            w->refused = refused;
            memcpy(w->process, p->rec.process, sizeof w->process);
            memcpy(w->field, p->rec.field, sizeof w->field);
        }
    }
    int rc = a->log_on && a->npending
                 ? audit_log_append(e->st, version, a->log_entries, a->npending, sync)
                 : THEUS_OK;
    a->npending = 0;
    return rc;
}

int audit_prepare(theus_engine *e, const publish_batch *b, const theus_run *run)
{
    audit_state *a = &e->audit;
    if (!a->any_rules)
        return THEUS_OK;
    theus_state *st = e->st;
    size_t slots = st->schema->nfields * SCHEMA_AUDIT_MAX;
    memset(a->touched, 0, slots);
    memset(a->violated, 0, slots);
    a->npending = 0;
    a->process = run ? run->p->name : "";
    a->proc = run ? run->p : NULL;
    for (size_t k = 0; k < b->tx->ndeltas; k++) {
        if (st->schema->fields[b->tx->deltas[k].field].naudit == 0)
            continue;
        int rc = check_delta(e, b, k);
        if (rc != THEUS_OK) {
            a->npending = 0;
            return rc;
        }
    }
    if (a->log_on && a->npending > a->cap_log_entries) {
        if (tx_grow((void **)&a->log_entries, &a->cap_log_entries, a->npending,
                    sizeof *a->log_entries)) {
            a->npending = 0;
            return err_set(st, THEUS_ENOMEM, "audit: out of memory");
        }
    }
    /* The verdict: the first violation that refuses names the refusal. */
    const audit_pending *why = NULL;
    int stop = 0;
    for (size_t i = 0; i < a->npending; i++) {
        const audit_pending *p = &a->pending[i];
        const schema_audit *rule = &st->schema->fields[p->field].audit[p->rule];
        size_t slot = p->field * SCHEMA_AUDIT_MAX + p->rule;
        int refuse = rule->level == 'S' || rule->level == 'A' ||
                     (rule->level == 'B' && a->b_count[slot] + 1 > rule->threshold);
        stop |= rule->level == 'S';
        if (refuse && (!why || (rule->level == 'S' && why->rec.level != 'S')))
            why = p;
    }
    if (!why)
        return THEUS_OK;
    char msg[400];
    const schema_audit *rule = &st->schema->fields[why->field].audit[why->rule];
    int n = snprintf(msg, sizeof msg, "audit: field '%s' element %llu would be %g, breaking rule "
                     "%s", why->rec.field, (unsigned long long)why->rec.index, why->rec.value,
                     rule_names[rule->rule]);
    if (n > 0 && (size_t)n < sizeof msg && rule->rule != SCHEMA_AUDIT_FINITE)
        n += snprintf(msg + n, sizeof msg - (size_t)n, " %g", rule->value);
    if (n > 0 && (size_t)n < sizeof msg && rule->level == 'B')
        n += snprintf(msg + n, sizeof msg - (size_t)n, " (level B: violation %llu, threshold %u)",
                      (unsigned long long)a->b_count[why->field * SCHEMA_AUDIT_MAX + why->rule] + 1,
                      rule->threshold);
    else if (n > 0 && (size_t)n < sizeof msg)
        n += snprintf(msg + n, sizeof msg - (size_t)n, " (level %c)", rule->level);
    /* Nothing of this commit is in the log (the audit listens first): its audit record
     * goes where the log stands, synced now. */
    int logged = keep_pending(e, 1, b->version, 1);
    if (stop)
        atomic_store(&e->stopped, 1);   /* runs and workflows check it */
    return err_set(st, THEUS_ESCHEMA, "%s: commit refused%s%s", msg,
                   stop ? "; the engine is stopped" : "",
                   logged != THEUS_OK ? "; its audit record could not be written to the log "
                                        "(the log refuses commits from now on)" : "");
}

void audit_cancel(theus_engine *e)
{
    audit_state *a = &e->audit;
    if (!a->any_rules)
        return;
    a->npending = 0;
    memset(a->touched, 0, e->st->schema->nfields * SCHEMA_AUDIT_MAX);
}

void audit_published(theus_engine *e, const publish_batch *b)
{
    audit_state *a = &e->audit;
    if (!a->any_rules)
        return;
    const theus_schema *s = e->st->schema;
    for (size_t f = 0; f < s->nfields; f++)
        for (size_t r = 0; r < s->fields[f].naudit; r++) {
            size_t slot = f * SCHEMA_AUDIT_MAX + r;
            const schema_audit *rule = &s->fields[f].audit[r];
            if (a->touched[slot] && !a->violated[slot] && rule->level == 'B' && rule->reset)
                a->b_count[slot] = 0;
        }
    /* Right after the commit's record and before the log's sync (the audit's published runs
     * first); a failure breaks the log, so later commits are refused. */
    (void)keep_pending(e, 0, b->version, 0);
    memset(a->touched, 0, s->nfields * SCHEMA_AUDIT_MAX);
}

int theus_engine_audit_records(theus_engine *e, uint64_t from_seq, theus_audit_record *out,
                               size_t cap, size_t *n)
{
    if (n)
        *n = 0;
    if (!e || !n || (cap && !out))
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_engine_audit_records: NULL argument");
    audit_state *a = &e->audit;
    pthread_mutex_lock(&a->ring_mu);
    uint64_t end = a->next_seq;   /* one past the newest */
    uint64_t oldest = end > a->ring_cap ? end - a->ring_cap : 1;
    if (oldest < a->first_seq)
        oldest = a->first_seq;
    uint64_t s = from_seq > oldest ? from_seq : oldest;
    size_t k = 0;
    for (; s < end && k < cap; s++, k++)
        out[k] = a->ring[(s - 1) % a->ring_cap];
    pthread_mutex_unlock(&a->ring_mu);
    *n = k;
    return THEUS_OK;
}

int theus_engine_audit_stats(theus_engine *e, const char *process, const char *field,
                             theus_audit_stats *out)
{
    if (!e || !out)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_engine_audit_stats: NULL argument");
    memset(out, 0, sizeof *out);
    int f = -1;
    if (field && (f = state_find_field(e->st, field)) < 0)
        return err_set(e->st, THEUS_ENOENT, "audit stats: no field '%s'", field);
    size_t nf = e->st->schema->nfields;
    uint64_t sum[AUDIT_COUNTERS] = {0};
    const int outside = !process || !process[0];
    if (outside)
        for (size_t i = 0; i < nf; i++)
            for (size_t c = 0; (f < 0 || (size_t)f == i) && c < AUDIT_COUNTERS; c++)
                sum[c] += atomic_load(&e->audit.by_field_outside[i * AUDIT_COUNTERS + c]);
    pthread_rwlock_rdlock(&e->reg_lock);
    int found = outside;
    for (size_t p = 0; (!process || process[0]) && p < e->nprocs; p++) {
        if (process && strcmp(e->procs[p]->name, process) != 0)
            continue;
        found = 1;
        for (size_t i = 0; i < nf; i++)
            for (size_t c = 0; (f < 0 || (size_t)f == i) && c < AUDIT_COUNTERS; c++)
                sum[c] += atomic_load(&e->procs[p]->audit_by_field[i * AUDIT_COUNTERS + c]);
    }
    pthread_rwlock_unlock(&e->reg_lock);
    if (!found)
        return err_set(e->st, THEUS_ENOENT, "audit stats: no process '%s' is registered", process);
    for (int l = 0; l < 4; l++) {
        out->level[l] = sum[l];
        out->violations += sum[l];
    }
    out->refused = sum[4];
    return THEUS_OK;
}

int theus_engine_audit_count(theus_engine *e, const char *process, const char *field,
                             uint64_t *count)
{
    if (!e || !count)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_engine_audit_count: NULL argument");
    *count = 0;
    theus_audit_stats s;
    int rc = theus_engine_audit_stats(e, process, field, &s);
    if (rc == THEUS_OK)
        *count = s.violations;
    return rc;
}
