/* The audit: the schema's per-field rules, evaluated once per commit under the commit lock
 * on the values the commit would write (committed bytes overlaid with the batch), with
 * Theus's levels S (refuse, stop the engine), A (refuse), B (count; refuse past the
 * threshold), C (record). Violations go to a bounded ring and to counters per process and
 * field. The values are compared on the host: a device field's region is copied first. */
#include "process.h"
#include "alloc.h"
#include "dtype.h"
#include "error.h"
#include "gatekeeper.h"
#include <math.h>
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
    a->by_field_outside = theus_xcalloc(nf, sizeof *a->by_field_outside);
    a->ring = theus_xcalloc(ring, sizeof *a->ring);
    a->ring_cap = ring;
    a->next_seq = 1;
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

void audit_fini(audit_state *a)
{
    theus_xfree(a->b_count);
    theus_xfree(a->touched);
    theus_xfree(a->violated);
    theus_xfree((void *)a->by_field_outside);
    theus_xfree(a->ring);
    theus_xfree(a->pending);
    pthread_mutex_destroy(&a->ring_mu);
}

/* Whether @x (after the commit; @old before it) breaks @r. NaN breaks every bound. */
static int breaks(const schema_audit *r, double x, double old)
{
    switch (r->rule) {
    case SCHEMA_AUDIT_FINITE: return !isfinite(x);
    case SCHEMA_AUDIT_MIN: return !(x >= r->value);
    case SCHEMA_AUDIT_MAX_VALUE: return !(x <= r->value);
    case SCHEMA_AUDIT_MAX_ABS: return !(fabs(x) <= r->value);
    case SCHEMA_AUDIT_MAX_CHANGE: return !(fabs(x - old) <= r->value);
    }
    return 0;
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

/* The values delta @k's region holds after the batch (@cur: gate_final_values) and, when
 * @old is not NULL (a rate rule needs it), before. */
static int final_values(theus_engine *e, const publish_batch *b, size_t k, void *old, void *cur)
{
    theus_state *st = e->st;
    const delta *d = &b->tx->deltas[k];
    if (old) {
        const theus_backend *be = st->backend[d->field];
        int rc = be->iface->read(be->ctx, st->data[d->field], &st->frames[d->field],
                                 (theus_dtype)st->fields[d->field].dtype, &d->r, old,
                                 THEUS_MEM_HOST);
        if (rc != THEUS_OK)
            return rc;
    }
    return gate_final_values(st, b->tx, k, cur);
}

/* Evaluate the rules of delta @k's field on its region; one violation per rule a commit. */
static int check_delta(theus_engine *e, const publish_batch *b, size_t k)
{
    audit_state *a = &e->audit;
    theus_state *st = e->st;
    const delta *d = &b->tx->deltas[k];
    const schema_field *sf = &st->schema->fields[d->field];
    const field_desc *f = &st->fields[d->field];
    theus_dtype dt = (theus_dtype)f->dtype;
    size_t bytes = d->nelems * theus_dtype_size(dt);
    int rate = 0;
    for (size_t r = 0; r < sf->naudit; r++)
        rate |= sf->audit[r].rule == SCHEMA_AUDIT_MAX_CHANGE;
    void *old = rate ? theus_xmalloc(bytes ? bytes : 1) : NULL;
    void *cur = theus_xmalloc(bytes ? bytes : 1);
    int rc = cur && (old || !rate) ? final_values(e, b, k, old, cur) : THEUS_ENOMEM;
    for (size_t r = 0; rc == THEUS_OK && r < sf->naudit; r++) {
        size_t slot = d->field * SCHEMA_AUDIT_MAX + r;
        a->touched[slot] = 1;
        if (a->violated[slot])
            continue;
        const schema_audit *rule = &sf->audit[r];
        for (size_t i = 0; i < d->nelems; i++) {
            double x = dtype_get(dt, cur, i);
            if (!breaks(rule, x, rule->rule == SCHEMA_AUDIT_MAX_CHANGE ? dtype_get(dt, old, i) : 0))
                continue;
            theus_audit_record rec;
            memset(&rec, 0, sizeof rec);
            rec.version = b->version;
            snprintf(rec.process, sizeof rec.process, "%s", a->process);
            memcpy(rec.field, f->name, sizeof rec.field);
            rec.rule = (theus_audit_rule)rule->rule;
            rec.level = rule->level;
            rec.index = flat_index(f, &d->r, i);
            rec.value = x;
            a->violated[slot] = 1;
            rc = add_pending(a, d->field, (uint32_t)r, &rec);
            break;
        }
    }
    theus_xfree(old);
    theus_xfree(cur);
    if (rc == THEUS_ENOMEM)
        return err_set(st, rc, "audit: out of memory checking field '%s'", f->name);
    if (rc != THEUS_OK)
        return err_wrap(st, rc, "audit: cannot read field '%s'", f->name);
    return THEUS_OK;
}

static void ring_push(audit_state *a, theus_audit_record *rec)
{
    pthread_mutex_lock(&a->ring_mu);
    rec->seq = a->next_seq++;
    a->ring[(rec->seq - 1) % a->ring_cap] = *rec;
    pthread_mutex_unlock(&a->ring_mu);
}

/* Keep the pending violations: counters, records (and level-B counts when @counted). */
static void keep_pending(theus_engine *e, int refused)
{
    audit_state *a = &e->audit;
    for (size_t i = 0; i < a->npending; i++) {
        audit_pending *p = &a->pending[i];
        size_t slot = p->field * SCHEMA_AUDIT_MAX + p->rule;
        if (p->rec.level == 'B')
            a->b_count[slot]++;
        p->rec.count = p->rec.level == 'B' ? a->b_count[slot] : 0;
        p->rec.refused = refused;
        if (a->proc) {
            atomic_fetch_add_explicit(&a->proc->audit, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&a->proc->audit_by_field[p->field], 1, memory_order_relaxed);
        } else {
            atomic_fetch_add_explicit(&a->by_field_outside[p->field], 1, memory_order_relaxed);
        }
        ring_push(a, &p->rec);
    }
    a->npending = 0;
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
    keep_pending(e, 1);
    if (stop)
        atomic_store(&e->stopped, 1);   /* runs and workflows check it */
    return err_set(st, THEUS_ESCHEMA, "%s: commit refused%s", msg,
                   stop ? "; the engine is stopped" : "");
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
    (void)b;
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
    keep_pending(e, 0);
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
    uint64_t s = from_seq > oldest ? from_seq : oldest;
    size_t k = 0;
    for (; s < end && k < cap; s++, k++)
        out[k] = a->ring[(s - 1) % a->ring_cap];
    pthread_mutex_unlock(&a->ring_mu);
    *n = k;
    return THEUS_OK;
}

int theus_engine_audit_count(theus_engine *e, const char *process, const char *field,
                             uint64_t *count)
{
    if (!e || !count)
        return err_set(e ? e->st : NULL, THEUS_EINVAL, "theus_engine_audit_count: NULL argument");
    *count = 0;
    int f = -1;
    if (field && (f = state_find_field(e->st, field)) < 0)
        return err_set(e->st, THEUS_ENOENT, "audit count: no field '%s'", field);
    size_t nf = e->st->schema->nfields;
    uint64_t sum = 0;
    if (!process || !process[0]) {
        for (size_t i = 0; i < nf; i++)
            if (f < 0 || (size_t)f == i)
                sum += atomic_load(&e->audit.by_field_outside[i]);
    }
    pthread_rwlock_rdlock(&e->reg_lock);
    int found = !process || !process[0];
    for (size_t p = 0; process && process[0] && p < e->nprocs; p++)
        found |= strcmp(e->procs[p]->name, process) == 0;
    for (size_t p = 0; (!process || process[0]) && p < e->nprocs; p++) {
        if (process && strcmp(e->procs[p]->name, process) != 0)
            continue;
        for (size_t i = 0; i < nf; i++)
            if (f < 0 || (size_t)f == i)
                sum += atomic_load(&e->procs[p]->audit_by_field[i]);
    }
    pthread_rwlock_unlock(&e->reg_lock);
    if (!found)
        return err_set(e->st, THEUS_ENOENT, "audit count: no process '%s' is registered", process);
    *count = sum;
    return THEUS_OK;
}
