/* Opening a shared state by name: the stored schema checked against the field table and
 * against the opener's, a per-process handle on the mapping, and a lease for it. */
#include "shared_impl.h"
#include "error.h"
#include <stdio.h>
#include <string.h>

static int cons_same(const theus_constraints *a, const theus_constraints *b)
{
    return a->has_min == b->has_min && a->has_max == b->has_max && a->finite == b->finite &&
           (!a->has_min || a->min == b->min) && (!a->has_max || a->max == b->max);
}

/* Whether schema field @a and field @b agree; otherwise *why says how. */
static int field_same(const schema_field *a, const schema_field *b, char *why, size_t len)
{
    const char *what = strcmp(a->name, b->name) ? "name"
                       : a->dtype != b->dtype ? "dtype"
                       : a->ndim != b->ndim || memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape)
                           ? "shape"
                       : a->placement != b->placement ? "placement"
                       : a->zone != b->zone ? "zone"
                       : !cons_same(&a->cons, &b->cons) ? "constraints" : NULL;
    if (what)
        snprintf(why, len, "field '%s' differs in its %s", b->name, what);
    return what == NULL;
}

static int schema_same(const theus_schema *have, const theus_schema *want, char *why, size_t len)
{
    if (strcmp(have->name, want->name) != 0) {
        snprintf(why, len, "its schema is named '%s', not '%s'", have->name, want->name);
        return 0;
    }
    if (have->nfields != want->nfields) {
        snprintf(why, len, "it has %zu fields, not %zu", have->nfields, want->nfields);
        return 0;
    }
    for (size_t i = 0; i < have->nfields; i++)
        if (!field_same(&have->fields[i], &want->fields[i], why, len))
            return 0;
    return 1;
}

/* Whether the field table says what the stored schema says. */
static int table_matches(const theus_schema *s, const field_desc *f, size_t nf)
{
    if (s->nfields != nf)
        return 0;
    for (size_t i = 0; i < nf; i++) {
        const schema_field *sf = &s->fields[i];
        if (strcmp(sf->name, f[i].name) != 0 || (uint32_t)sf->dtype != f[i].dtype ||
            (uint32_t)sf->ndim != f[i].ndim ||
            memcmp(sf->shape, f[i].shape, sizeof f[i].shape) != 0 ||
            (uint32_t)sf->placement != f[i].requested || (uint32_t)sf->zone != f[i].zone ||
            sf->nbytes != f[i].nbytes || !cons_same(&sf->cons, &f[i].cons))
            return 0;
    }
    return 1;
}

/* A handle on the mapping @m: its own schema and shadow, checked against @want. */
static int handle_new(shared_map *m, const char *name, const theus_schema *want,
                      theus_state **out)
{
    unsigned char *base = m->s.base;
    state_header *h = (state_header *)base;
    const shared_area *a = (const shared_area *)(base + h->off_shared);
    char why[512];
    theus_schema *schema = NULL;
    int rc = schema_parse((const char *)base + a->off_schema, &schema, why, sizeof why);
    if (rc == THEUS_ENOMEM)
        return err_set(NULL, rc, "out of memory reading the schema of shared state '%s'", name);
    if (rc != THEUS_OK)
        return err_set(NULL, THEUS_ECORRUPT, "the schema stored in shared state '%s' is "
                       "invalid: %s", name, why);
    if (!table_matches(schema, (const field_desc *)(base + h->off_fields), h->nfields)) {
        schema_free(schema);
        return err_set(NULL, THEUS_ECORRUPT, "shared state '%s': its field table does not match "
                       "its schema", name);
    }
    if (want && !schema_same(schema, want, why, sizeof why)) {
        schema_free(schema);
        return err_set(NULL, THEUS_ESCHEMA, "the schema differs from shared state '%s': %s",
                       name, why);
    }
    theus_state_options o = {.allow_fallback = (int)a->allow_fallback,
                             .commit_log_capacity = h->log.capacity,
                             .priority_lease_ms = a->priority_lease_ms};
    theus_state *st = state_shadow_new(schema, &o);
    if (!st) {
        schema_free(schema);
        return err_set(NULL, THEUS_ENOMEM, "out of memory opening shared state '%s'", name);
    }
    state_bind(st, h);
    st->shm = m;
    st->ops = &shared_state_ops;
    shared_bind_fields(st, m);
    *out = st;
    return THEUS_OK;
}

int theus_state_open_shared(const char *name, const char *schema_json, theus_state **out)
{
    return shared_open(name, schema_json, 0, out);
}

int shared_open(const char *name, const char *schema_json, int durable, theus_state **out)
{
    if (out)
        *out = NULL;
    if (!out)
        return err_set(NULL, THEUS_EINVAL, "theus_state_open_shared: NULL out");
    int rc = shared_check_name(name);
    if (rc != THEUS_OK)
        return rc;
    theus_schema *want = NULL;
    if (schema_json) {
        char why[512];
        rc = schema_parse(schema_json, &want, why, sizeof why);
        if (rc != THEUS_OK)
            return err_set(NULL, rc, "%s", why);
    }
    char segname[SEG_MAX];
    shared_seg_name(segname, name);
    for (int attempt = 0;; attempt++) {
        shared_map *m = NULL;
        theus_state *st = NULL;
        rc = shared_map_open(segname, name, &m);
        if (rc != THEUS_OK)
            break;
        rc = handle_new(m, name, want, &st);
        if (rc != THEUS_OK) {
            shared_map_release(m, 0);
            break;
        }
        shared_area *a = shared_area_of(st);
        if (!durable && a->durable.enabled) {
            rc = err_set(NULL, THEUS_EPERM, "shared state '%s' is durable (directory '%s'): open "
                         "it with theus_shared_open_durable, so that its commits are logged",
                         name, a->durable.dir);
            st->shm = NULL;
            st->ops = NULL;
            state_shadow_free(st);
            shared_map_release(m, 0);
            break;
        }
        int retry = 0, abandoned = 0;
        rc = shared_hold_lock((unsigned char *)st->hdr, name);
        if (rc != THEUS_OK) {
            st->shm = NULL;
            state_shadow_free(st);
            shared_map_release(m, 0);
            break;
        }
        if (atomic_load_explicit(&a->unlinked, memory_order_acquire)) {
            /* Its last user removed the name just now (or died doing so). */
            shared_unlink_if_same(segname, &m->s);
            retry = 1;
        } else if (shared_reap(st) == 0) {
            shared_seg_retire(segname, &m->s);
            abandoned = 1;
            rc = err_set(NULL, THEUS_ENOENT, "shared state '%s' was abandoned (all its processes "
                         "died); it has been removed", name);
        } else {
            rc = shared_lease_take(st);
        }
        state_hold_unlock(st->hdr);
        if (rc == THEUS_OK && !retry) {
            schema_free(want);
            *out = st;
            return THEUS_OK;
        }
        st->shm = NULL;
        st->ops = NULL;
        state_shadow_free(st);
        shared_map_release(m, abandoned);
        if (!retry)
            break;
        if (attempt + 1 >= OPEN_TRIES) {
            rc = err_set(NULL, THEUS_ENOENT, "no shared state '%s' (it is being removed)", name);
            break;
        }
    }
    schema_free(want);
    return rc;
}
