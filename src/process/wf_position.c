/* A workflow's position: the id of the next step, kept in a field of the state so that a
 * run resumes where the last one stopped, after a crash too. */
#include "workflow.h"
#include <string.h>

/* ---- the position ------------------------------------------------------------------------
 * With "position", the state holds the id of the next step to run (number_block). A run
 * step commits the id that follows it in its own transaction (run_extra), so a step's
 * writes and the position move together: a state recovered after any crash resumes at the
 * first step whose commit it does not hold, and no committed step runs twice. Steps that
 * commit nothing of their own (a pure run, a failed run passed over by "continue", a call)
 * move the position with a commit of its own; submit and await steps do not move it (their
 * runs commit on the pool), so a resume repeats them from the last run step's commit. */

/* The one element of the position field holding @v. */
void pos_encode(const theus_workflow *wf, uint64_t v, unsigned char out[8])
{
    theus_field_info fi;
    theus_state_field_info(wf->e->st, wf->e->st->fields[wf->position].name, &fi);
    memset(out, 0, 8);
    if (fi.dtype == THEUS_DTYPE_I32 || fi.dtype == THEUS_DTYPE_U32) {
        uint32_t w = (uint32_t)v;
        memcpy(out, &w, 4);
    } else {
        memcpy(out, &v, 8);
    }
}

typedef struct pos_io {
    const char *field;
    int write;
    uint64_t value;
    unsigned char bytes[8];
} pos_io;

static int pos_body(theus_tx *tx, void *user)
{
    pos_io *p = user;
    if (p->write)
        return theus_tx_write(tx, p->field, NULL, p->bytes, THEUS_MEM_HOST);
    unsigned char buf[8];
    theus_field_info fi;
    theus_state_field_info(tx->st, p->field, &fi);
    int rc = theus_tx_read(tx, p->field, NULL, buf, THEUS_MEM_HOST);
    if (rc == THEUS_OK) {
        if (fi.dtype == THEUS_DTYPE_I32 || fi.dtype == THEUS_DTYPE_U32) {
            int32_t v;
            memcpy(&v, buf, 4);
            p->value = fi.dtype == THEUS_DTYPE_I32 && v < 0 ? 0 : (uint64_t)(uint32_t)v;
        } else {
            int64_t v;
            memcpy(&v, buf, 8);
            p->value = fi.dtype == THEUS_DTYPE_I64 && v < 0 ? 0 : (uint64_t)v;
        }
    }
    return rc;
}

int position_read(const theus_workflow *wf, uint64_t *value)
{
    theus_state *st = wf->e->st;
    pos_io p = {.field = st->fields[wf->position].name};
    int rc = theus_tx_run(st, NULL, pos_body, &p, NULL);
    *value = p.value;
    return rc;
}

/* Whether the position of @x's workflow is kept and @wf is that workflow (the steps of a
 * called workflow do not move the caller's position). */
int pos_kept(const wf_exec *x, const theus_workflow *wf)
{
    return x->top == wf && wf->position >= 0;
}

/* Commit position @v on its own (nothing when the state holds it already). */
int pos_commit(wf_exec *x, const theus_workflow *wf, const wf_step *s, uint64_t v)
{
    if (!pos_kept(x, wf) || v == x->pos_last)
        return THEUS_OK;
    theus_state *st = wf->e->st;
    pos_io p = {.field = st->fields[wf->position].name, .write = 1};
    pos_encode(wf, v, p.bytes);
    int rc = theus_tx_run(st, NULL, pos_body, &p, NULL);
    if (rc != THEUS_OK)
        return s ? fail_at(x, s, rc) : rc;
    x->pos_last = v;
    return THEUS_OK;
}
