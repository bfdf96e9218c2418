/* A read-only safetensors header reader for the CLI: 8-byte little-endian header length,
 * a JSON header naming each tensor's dtype, shape and data offsets (relative to the end of
 * the header), and an optional "__metadata__" object of strings. Every offset is checked
 * against the file before anything reads it. Lenient where the library's loader
 * (src/durable/safetensors.c) is strict — dtypes theus lacks are listed, not refused — and
 * that loader's verdict is reported beside (t->load_problem). */
#include "cli.h"
#include "dtype.h"
#include "durable/safetensors.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* The safetensors dtype name's theus dtype, or -1 for one theus lacks (F8_E4M3 ...). */
static int dtype_from_st(const char *s)
{
    theus_dtype dt;
    return st_dtype_from_name(s, &dt) == 0 ? (int)dt : -1;
}

static int bad(char *err, size_t errlen, const char *fmt, const char *a)
{
    snprintf(err, errlen, fmt, a);
    return THEUS_ECORRUPT;
}

/* Files theus wrote (theus_state_save_safetensors, checkpoints) carry their state version,
 * schema and field versions in "__metadata__" (docs/durability.md): show them. */
static void read_theus_metadata(cli_target *t, json_t *meta)
{
    json_t *v = json_object_get(meta, "theus.version");
    if (json_is_string(v)) {
        t->version = strtoull(json_string_value(v), NULL, 10);
        t->theus_file = 1;
    }
    json_t *fv = NULL, *schema = NULL;
    v = json_object_get(meta, "theus.field_versions");
    if (json_is_string(v))
        fv = json_loads(json_string_value(v), 0, NULL);
    v = json_object_get(meta, "theus.schema");
    if (json_is_string(v))
        schema = json_loads(json_string_value(v), 0, NULL);
    json_t *name = json_object_get(schema, "name");
    if (json_is_string(name))
        snprintf(t->schema_name, sizeof t->schema_name, "%s", json_string_value(name));
    json_t *fields = json_object_get(schema, "fields");
    for (size_t i = 0; i < t->nfields; i++) {
        cli_field *f = &t->fields[i];
        json_t *ver = json_object_get(fv, f->name);
        if (json_is_integer(ver) && json_integer_value(ver) > 0)
            f->version = (uint64_t)json_integer_value(ver);
        json_t *sf = json_object_get(fields, f->name);
        json_t *zone = json_object_get(sf, "zone"), *place = json_object_get(sf, "placement");
        static const char *const zones[] = {"data", "signal", "meta", "const"};
        static const char *const places[] = {"device", "pinned", "host"};
        for (size_t k = 0; json_is_string(zone) && k < 4; k++)
            if (strcmp(json_string_value(zone), zones[k]) == 0)
                f->zone = zones[k];
        for (size_t k = 0; json_is_string(place) && k < 3; k++)
            if (strcmp(json_string_value(place), places[k]) == 0)
                f->requested = places[k];
    }
    json_decref(fv);
    json_decref(schema);
}

int cli_safetensors_parse(cli_target *t, char *err, size_t errlen)
{
    if (t->map_len < 8)
        return bad(err, errlen, "%s: too short for a safetensors file", t->label);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | t->map[i];
    if (hlen > t->map_len - 8 || hlen > 100u << 20)
        return bad(err, errlen, "%s: header length runs past the end of the file", t->label);
    t->header_len = hlen;
    json_error_t je;
    json_t *root = json_loadb((const char *)t->map + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root || !json_is_object(root)) {
        snprintf(err, errlen, "%s: header is not a JSON object: %s (line %d, column %d)",
                 t->label, root ? "not an object" : je.text, je.line, je.column);
        json_decref(root);
        return THEUS_ECORRUPT;
    }
    size_t n = json_object_size(root);
    t->fields = calloc(n ? n : 1, sizeof *t->fields);
    if (!t->fields) {
        json_decref(root);
        return THEUS_ENOMEM;
    }
    uint64_t data_len = t->map_len - 8 - hlen;
    const char *key;
    json_t *v, *meta = NULL;
    int rc = THEUS_OK;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            t->metadata_json = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
            meta = v;
            continue;
        }
        cli_field *f = &t->fields[t->nfields];
        snprintf(f->name, sizeof f->name, "%s", key);
        json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
               *off = json_object_get(v, "data_offsets");
        if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(off) ||
            json_array_size(off) != 2 || json_array_size(sh) > THEUS_MAX_DIMS) {
            rc = bad(err, errlen, "%s: tensor entry without a valid dtype, shape (at most 8 "
                     "dimensions) and data_offsets", key);
            break;
        }
        snprintf(f->dtype_name, sizeof f->dtype_name, "%s", json_string_value(dt));
        f->dtype = dtype_from_st(f->dtype_name);
        if (f->dtype >= 0)
            snprintf(f->dtype_name, sizeof f->dtype_name, "%s", theus_dtype_name((theus_dtype)f->dtype));
        f->ndim = (int)json_array_size(sh);
        uint64_t elems = 1;
        for (int d = 0; d < f->ndim && rc == THEUS_OK; d++) {
            json_t *e = json_array_get(sh, (size_t)d);
            if (!json_is_integer(e) || json_integer_value(e) < 0)
                rc = bad(err, errlen, "%s: shape entries must be non-negative integers", key);
            else {
                f->shape[d] = json_integer_value(e);
                if (f->shape[d] && elems > UINT64_MAX / (uint64_t)f->shape[d])
                    rc = bad(err, errlen, "%s: shape overflows", key);
                else
                    elems *= (uint64_t)f->shape[d];
            }
        }
        if (rc != THEUS_OK)
            break;
        json_t *b = json_array_get(off, 0), *e = json_array_get(off, 1);
        if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
            json_integer_value(e) < json_integer_value(b) ||
            (uint64_t)json_integer_value(e) > data_len) {
            rc = bad(err, errlen, "%s: data_offsets outside the file's data", key);
            break;
        }
        f->offset = 8 + hlen + (uint64_t)json_integer_value(b);
        f->nbytes = (uint64_t)(json_integer_value(e) - json_integer_value(b));
        if (f->dtype >= 0 && f->nbytes != elems * theus_dtype_size((theus_dtype)f->dtype)) {
            rc = bad(err, errlen, "%s: data_offsets do not span shape x dtype size", key);
            break;
        }
        f->placement = "file";
        t->nfields++;
    }
    if (rc == THEUS_OK && json_is_object(meta))
        read_theus_metadata(t, meta);
    json_decref(root);
    if (rc == THEUS_OK) {
        st_header h;
        char why[512] = "";
        if (st_header_parse((const char *)t->map + 8, (size_t)hlen, data_len, &h, why,
                            sizeof why) == THEUS_OK)
            st_header_free(&h);
        else
            t->load_problem = strdup(why[0] ? why : "refused");
    }
    return rc;
}
