/* The parsed form of a state schema (docs/schema.md) and the parser that builds it from
 * JSON text with jansson, naming the JSON path, line and column of every refusal. */
#ifndef THEUS_SRC_SCHEMA_H
#define THEUS_SRC_SCHEMA_H
#include "dtype.h"
#include "theus/theus.h"

/* Audit rules of a field (docs/processes.md), evaluated by the process layer's engine.
 * rule: the values of theus_audit_rule (theus/theus_process.h), in that order. */
#define SCHEMA_AUDIT_MAX 8
enum { SCHEMA_AUDIT_FINITE = 0, SCHEMA_AUDIT_MIN, SCHEMA_AUDIT_MAX_VALUE, SCHEMA_AUDIT_MAX_ABS,
       SCHEMA_AUDIT_MAX_CHANGE };

typedef struct schema_audit {
    int rule;
    double value;                /* bound (unused by finite) */
    char level;                  /* 'S', 'A', 'B' or 'C' */
    uint32_t threshold;          /* level B: violations accepted before refusals */
    int reset;                   /* level B: a clean commit sets the count back to 0 */
} schema_audit;

typedef struct schema_field {
    char name[THEUS_NAME_MAX + 1];
    theus_dtype dtype;
    int ndim;
    int64_t shape[THEUS_MAX_DIMS];
    size_t nelems;               /* product of shape (1 for a scalar) */
    size_t nbytes;               /* nelems * dtype size; checked against overflow */
    theus_placement placement;   /* requested; default host */
    theus_zone zone;             /* default data */
    theus_constraints cons;
    size_t naudit;
    schema_audit audit[SCHEMA_AUDIT_MAX];
} schema_field;

typedef struct theus_schema {
    char name[THEUS_NAME_MAX + 1];
    size_t nfields;
    schema_field *fields;        /* in the order of the JSON text */
} theus_schema;

/* Parse @json. On success *out is a new schema (schema_free) and THEUS_OK is returned.
 * On failure *out is NULL, @err holds "schema: <path>: <what> (line L, column C)" and
 * THEUS_ESCHEMA (or THEUS_ENOMEM, THEUS_EINVAL for NULL arguments) is returned. */
int schema_parse(const char *json, theus_schema **out, char *err, size_t errlen);
void schema_free(theus_schema *s);

/* Index of the field called @name, or -1. */
int schema_find(const theus_schema *s, const char *name);

#endif
