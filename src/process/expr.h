/* Workflow conditions: a small total expression language (comparisons of scalar fields,
 * elements and numbers; and, or, not). Parsed once against the state's fields, evaluated
 * on one committed version. No eval, no arithmetic, no loops: every condition ends. */
#ifndef THEUS_SRC_PROCESS_EXPR_H
#define THEUS_SRC_PROCESS_EXPR_H
#include "wf_parse.h"

typedef struct expr expr;

/* Parse condition @j (the current node of @c). THEUS_ESCHEMA with the path, line and
 * column for a malformed condition, an unknown field, a non-scalar field named without an
 * element, an element out of range; THEUS_ENOMEM. */
int expr_parse(wf_ctx *c, json_t *j, expr **out);
void expr_free(expr *e);
/* Evaluate on the committed state of @st (one version, no lock); *truth gets 0 or 1. */
int expr_eval(const expr *e, theus_state *st, int *truth);

#endif
