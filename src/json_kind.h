/* How refusal messages name the kind of a JSON value ("an object", "a string", ...), shared
 * by the parsers that read JSON with jansson (schema.c, src/process/wf_load.c). */
#ifndef THEUS_SRC_JSON_KIND_H
#define THEUS_SRC_JSON_KIND_H
#include <jansson.h>

/* "an object", "an array", "a string", "an integer", "a real number", "true", "false",
 * "null"; static storage. */
const char *json_kind_phrase(const json_t *v);

#endif
