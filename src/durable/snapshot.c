/* Snapshots of committed fields under a commit hold, and the canonical schema text. */
#include "durable/snapshot.h"
#include "alloc.h"
#include "error.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void snapshot_free(snapshot *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        theus_xfree(s->f[i].bytes);
    theus_xfree(s->f);
    memset(s, 0, sizeof *s);
}

int snapshot_take(theus_state *st, const unsigned char *only, snapshot *out)
{
    memset(out, 0, sizeof *out);
    size_t nf = st->hdr->nfields, n = 0;
    for (size_t i = 0; i < nf; i++)
        n += st->fields[i].zone != THEUS_ZONE_SIGNAL;
    if (n > 0 && !(out->f = theus_xcalloc(n, sizeof *out->f)))
        return err_set(st, THEUS_ENOMEM, "out of memory taking a snapshot");
    for (size_t i = 0; i < nf; i++) {
        const field_desc *f = &st->fields[i];
        if (f->zone == THEUS_ZONE_SIGNAL)
            continue;
        snap_field *s = &out->f[out->n++];
        s->index = (uint32_t)i;
        s->nbytes = f->nbytes;
        if (f->nbytes == 0 || (only && !only[i]))
            continue;
        if (!(s->bytes = theus_xmalloc(f->nbytes))) {
            snapshot_free(out);
            return err_set(st, THEUS_ENOMEM, "out of memory copying field '%s' (%llu bytes)",
                           f->name, (unsigned long long)f->nbytes);
        }
        theus_advise_huge(s->bytes, f->nbytes);
    }
    int rc = theus_state_hold_commits(st);
    if (rc != THEUS_OK) {
        snapshot_free(out);
        return rc;
    }
    /* While held no replay runs, and the version and field versions were published together
     * with the last replay: what is copied now is exactly out->version. */
    out->version = atomic_load_explicit(&st->hdr->version, memory_order_acquire);
    for (size_t k = 0; k < out->n && rc == THEUS_OK; k++) {
        snap_field *s = &out->f[k];
        const field_desc *f = &st->fields[s->index];
        s->version = atomic_load_explicit(&f->version, memory_order_acquire);
        if (!s->bytes)
            continue;
        const theus_backend *b = st->backend[s->index];
        if (f->placement == THEUS_PLACEMENT_HOST) {
            memcpy(s->bytes, st->data[s->index], f->nbytes);
        } else {
            /* Device and pinned fields through the backend (a device-to-host copy). */
            rc = b->iface->read(b->ctx, st->data[s->index], &st->frames[s->index],
                                (theus_dtype)f->dtype, &st->frames[s->index], s->bytes,
                                THEUS_MEM_HOST);
            if (rc != THEUS_OK)
                rc = err_wrap(st, rc, "cannot copy field '%s' to the host", f->name);
        }
    }
    theus_state_release_commits(st);
    if (rc != THEUS_OK)
        snapshot_free(out);
    return rc;
}

static char *dup_jansson(char *text)
{
    if (!text)
        return NULL;
    char *c = theus_xstrdup(text);
    free(text);
    return c;
}

char *schema_canonical(const theus_schema *s)
{
    json_t *root = json_object(), *fields = json_object();
    if (!root || !fields) {
        json_decref(root);
        json_decref(fields);
        return NULL;
    }
    json_object_set_new(root, "name", json_string(s->name));
    json_object_set_new(root, "fields", fields);
    for (size_t i = 0; i < s->nfields; i++) {
        const schema_field *f = &s->fields[i];
        json_t *o = json_object(), *sh = json_array();
        if (!o || !sh) {
            json_decref(o);
            json_decref(sh);
            json_decref(root);
            return NULL;
        }
        for (int d = 0; d < f->ndim; d++)
            json_array_append_new(sh, json_integer((json_int_t)f->shape[d]));
        json_object_set_new(o, "dtype", json_string(theus_dtype_name(f->dtype)));
        json_object_set_new(o, "shape", sh);
        json_object_set_new(o, "placement", json_string(theus_placement_name(f->placement)));
        json_object_set_new(o, "zone", json_string(theus_zone_name(f->zone)));
        if (f->cons.finite || f->cons.has_min || f->cons.has_max) {
            json_t *c = json_object();
            if (f->cons.finite)
                json_object_set_new(c, "finite", json_true());
            if (f->cons.has_min)
                json_object_set_new(c, "min", json_real(f->cons.min));
            if (f->cons.has_max)
                json_object_set_new(c, "max", json_real(f->cons.max));
            json_object_set_new(o, "constraints", c);
        }
        json_object_set_new(fields, f->name, o);
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    return dup_jansson(text);
}

char *snapshot_versions_json(const theus_state *st, const snapshot *s)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    for (size_t k = 0; k < s->n; k++)
        json_object_set_new(o, st->fields[s->f[k].index].name,
                            json_integer((json_int_t)s->f[k].version));
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return dup_jansson(text);
}
