/* Refusals of the workflow parser (wf_load.c, expr.c): the JSON path being read, and a
 * message with the line and column of that node (json_locate.c), like schema refusals. */
#ifndef THEUS_SRC_PROCESS_WF_PARSE_H
#define THEUS_SRC_PROCESS_WF_PARSE_H
#include "json_kind.h"
#include "json_locate.h"
#include "theus/theus.h"
#include <jansson.h>

/* Deepest path a refusal names; deeper nesting is refused as such. */
#define WF_MAX_DEPTH 48

typedef struct wf_ctx {
    const char *text;              /* the JSON text */
    const theus_state *st;         /* whose last error receives the message */
    jsonloc_step path[WF_MAX_DEPTH];
    size_t depth;
} wf_ctx;

/* Push / pop one path step; push refuses (THEUS_ESCHEMA) beyond WF_MAX_DEPTH. */
int wfp_key(wf_ctx *c, const char *key);
int wfp_index(wf_ctx *c, size_t i);
void wfp_pop(wf_ctx *c);
/* "$.steps[1].while" for the current path, into @buf. */
void wfp_path(const wf_ctx *c, char *buf, size_t cap);
/* Refuse at the current node (its key when @at_key): THEUS_ESCHEMA, message
 * "workflow: <path>: <what> (line L, column C)" set on the state. */
int wfp_fail(wf_ctx *c, int at_key, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#endif
