/* The metadata of a saved version: field versions as JSON, and the canonical schema text. */
#include "durable/snapshot.h"
#include "alloc.h"
#include "error.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

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
