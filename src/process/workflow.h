/* A workflow's internal form, shared by the files that load one (wf_load.c), run it
 * (wf_run.c) and keep its position in the state (wf_position.c): the steps as parsed, the
 * context of one run, and the position's entry points. */
#ifndef THEUS_SRC_PROCESS_WORKFLOW_H
#define THEUS_SRC_PROCESS_WORKFLOW_H
#include "process.h"
#include "expr.h"
#include <stdint.h>
#include <stdio.h>

/* ---- the workflow as loaded (wf_load.c) --------------------------------------------------- */
enum { ST_RUN, ST_IF, ST_WHILE, ST_CALL, ST_SUBMIT, ST_AWAIT };
enum { ON_STOP, ON_CONTINUE, ON_RETRY };

#define WF_DEFAULT_MAX_OPS 100000u
#define WF_MAX_CALL_DEPTH 32
#define WF_NO_RESUME UINT32_MAX

typedef struct wf_step wf_step;
typedef struct wf_block {
    wf_step *v;
    size_t n;
} wf_block;

struct wf_step {
    int kind;
    uint32_t id;               /* pre-order index in its workflow: a value of the position */
    uint32_t end;              /* one past the last id of its nested steps */
    uint32_t next;             /* the id that follows it when it succeeds; 0: the end */
    char where[128];           /* JSON path, for reports */
    proc_entry *proc;          /* run, submit */
    int on_error;
    uint32_t retries;
    expr *cond;                /* if, while */
    wf_block then, els;        /* if: then/else; while: then is "do" */
    char name[THEUS_NAME_MAX + 1]; /* call: the workflow; await: the signal */
    uint64_t count;            /* await */
    uint32_t timeout_ms;       /* await */
};

struct theus_workflow {
    theus_engine *e;
    char name[THEUS_NAME_MAX + 1];
    uint64_t max_ops;
    int position;              /* field that keeps the id of the next step; -1: none */
    uint32_t nsteps;           /* steps, nested ones included */
    wf_block body;
    _Atomic int running;
};

/* ---- one run (wf_run.c) ------------------------------------------------------------------- */

typedef struct pending_job {
    theus_job *job;
    const wf_step *step;
} pending_job;

typedef struct sig_cursor {
    char name[THEUS_NAME_MAX + 1];
    uint64_t seen;
} sig_cursor;

typedef struct wf_exec {
    theus_engine *e;
    uint64_t max_ops;
    theus_workflow_report *rep;
    pending_job *jobs;
    size_t njobs, cap_jobs;
    sig_cursor *cursors;
    size_t ncursors, cap_cursors;
    const theus_workflow *stack[WF_MAX_CALL_DEPTH];
    size_t depth;
    const theus_workflow *top;   /* the workflow run: its position is kept */
    uint32_t resume;             /* the step a resume goes to; WF_NO_RESUME: none (or done) */
    uint64_t pos_last;           /* the position the state holds */
} wf_exec;

/* Inline so that wf_run.c and wf_position.c share it without calling each other. */
static inline int fail_at(wf_exec *x, const wf_step *s, int rc)
{
    if (x->rep && !x->rep->where[0])
        snprintf(x->rep->where, sizeof x->rep->where, "%s", s->where);
    return rc;
}

/* ---- the position (wf_position.c) --------------------------------------------------------- */
/* The one element of the position field holding @v. */
void pos_encode(const theus_workflow *wf, uint64_t v, unsigned char out[8]);
int position_read(const theus_workflow *wf, uint64_t *value);
/* Whether the position of @x's workflow is kept and @wf is that workflow (the steps of a
 * called workflow do not move the caller's position). */
int pos_kept(const wf_exec *x, const theus_workflow *wf);
/* Commit position @v on its own (nothing when the state holds it already). */
int pos_commit(wf_exec *x, const theus_workflow *wf, const wf_step *s, uint64_t v);

#endif
