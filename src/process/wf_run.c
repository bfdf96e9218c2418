/* Running a workflow on the caller's thread: called workflows and awaited signals checked
 * before anything runs, each condition evaluated on the committed state after the previous
 * step, per-step failure policies, the max_ops safety trip, and the resume at the position
 * the state keeps (wf_position.c). */
#include "workflow.h"
#include "alloc.h"
#include "error.h"
#include <stdio.h>
#include <string.h>

static theus_workflow *find_wf(theus_engine *e, const char *name)
{
    theus_workflow *w = NULL;
    pthread_mutex_lock(&e->wfs.mu);
    for (size_t i = 0; i < e->wfs.n; i++)
        if (strcmp(e->wfs.v[i]->name, name) == 0)
            w = e->wfs.v[i];
    pthread_mutex_unlock(&e->wfs.mu);
    return w;
}

/* Before anything runs: every called workflow is loaded, no call chain comes back to a
 * workflow already on it, and the signals of await steps get their starting counts. */
static int check_calls(wf_exec *x, const theus_workflow *wf, const wf_block *b)
{
    for (size_t i = 0; i < b->n; i++) {
        const wf_step *s = &b->v[i];
        int rc = THEUS_OK;
        if (s->kind == ST_CALL) {
            theus_workflow *callee = find_wf(x->e, s->name);
            if (!callee)
                return err_set(x->e->st, THEUS_ENOENT, "workflow '%s': %s calls '%s', which is "
                               "not loaded", wf->name, s->where, s->name);
            for (size_t d = 0; d < x->depth; d++)
                if (x->stack[d] == callee) {
                    char chain[512] = "";
                    size_t len = 0;
                    for (size_t k = d; k < x->depth; k++) {
                        int n = snprintf(chain + len, sizeof chain - len, "'%s' -> ",
                                         x->stack[k]->name);
                        if (n > 0 && (size_t)n < sizeof chain - len)
                            len += (size_t)n;
                    }
                    snprintf(chain + len, sizeof chain - len, "'%s'", callee->name);
                    return err_set(x->e->st, THEUS_EINVAL, "workflow: recursion through called "
                                   "workflows (%s) at %s of '%s'", chain, s->where, wf->name);
                }
            if (x->depth >= WF_MAX_CALL_DEPTH)
                return err_set(x->e->st, THEUS_EINVAL, "workflow: calls nested deeper than %d",
                               WF_MAX_CALL_DEPTH);
            x->stack[x->depth++] = callee;
            rc = check_calls(x, callee, &callee->body);
            x->depth--;
        } else if (s->kind == ST_AWAIT) {
            int known = 0;
            for (size_t k = 0; k < x->ncursors; k++)
                known |= strcmp(x->cursors[k].name, s->name) == 0;
            if (!known) {
                if (tx_grow((void **)&x->cursors, &x->cap_cursors, x->ncursors + 1,
                            sizeof *x->cursors))
                    return err_set(x->e->st, THEUS_ENOMEM, "workflow: out of memory");
                sig_cursor *cur = &x->cursors[x->ncursors++];
                memcpy(cur->name, s->name, sizeof cur->name);
                theus_engine_signal_count(x->e, s->name, &cur->seen);
            }
        }
        if (rc == THEUS_OK)
            rc = check_calls(x, wf, &s->then);
        if (rc == THEUS_OK)
            rc = check_calls(x, wf, &s->els);
        if (rc != THEUS_OK)
            return rc;
    }
    return THEUS_OK;
}

/* One op against max_ops; the engine's stop also ends every workflow. */
static int count_op(wf_exec *x, const theus_workflow *wf, const wf_step *s)
{
    if (atomic_load(&x->e->stopped))
        return fail_at(x, s, err_set(x->e->st, THEUS_EBUSY, "workflow '%s': the engine was "
                                     "stopped by a level-S audit rule (before %s)", wf->name,
                                     s->where));
    if (++x->rep->ops > x->max_ops)
        return fail_at(x, s, err_set(x->e->st, THEUS_EBUSY, "workflow '%s': max_ops (%llu) "
                                     "passed at %s: the safety trip stopped it", wf->name,
                                     (unsigned long long)x->max_ops, s->where));
    return THEUS_OK;
}

static int run_step(wf_exec *x, const theus_workflow *wf, const wf_step *s)
{
    int rc = THEUS_OK;
    run_extra extra, *ex = NULL;
    if (pos_kept(x, wf) && s->proc->kind == THEUS_PROCESS_EFFECT) {
        extra.field = wf->e->st->fields[wf->position].name;
        pos_encode(wf, s->next, extra.bytes);
        ex = &extra;
    }
    uint32_t tries = 1 + s->retries;
    for (uint32_t t = 0; t < tries; t++) {
        x->rep->runs++;
        rc = engine_run_proc(x->e, s->proc, ex, NULL);
        if (rc == THEUS_OK) {
            if (ex) {
                x->pos_last = s->next;   /* committed with the run */
                return THEUS_OK;
            }
            return pos_commit(x, wf, s, s->next);
        }
        x->rep->failures++;
        if (atomic_load(&x->e->stopped))
            break;
    }
    return s->on_error == ON_CONTINUE ? pos_commit(x, wf, s, s->next) : fail_at(x, s, rc);
}

static int exec_block(wf_exec *x, const theus_workflow *wf, const wf_block *b);

/* Whether step id @id is one of the steps of block @b (nested ones included). */
static int block_holds(const wf_block *b, uint32_t id)
{
    return b->n && id >= b->v[0].id && id < b->v[b->n - 1].end;
}

/* Run step @s. @inside: a resume goes to a step nested in @s (a while's body or an if's
 * branch): the condition is not evaluated again, the block that holds it runs. */
static int exec_step(wf_exec *x, const theus_workflow *wf, const wf_step *s, int inside)
{
    int rc = count_op(x, wf, s);
    if (rc)
        return rc;
    int truth = 0;
    switch (s->kind) {
    case ST_RUN:
        return run_step(x, wf, s);
    case ST_SUBMIT: {
        if (tx_grow((void **)&x->jobs, &x->cap_jobs, x->njobs + 1, sizeof *x->jobs))
            return fail_at(x, s, err_set(x->e->st, THEUS_ENOMEM, "workflow: out of memory"));
        theus_job *j = NULL;
        x->rep->runs++;
        rc = theus_engine_submit(x->e, s->proc->name, &j);
        if (rc != THEUS_OK) {
            x->rep->failures++;
            return s->on_error == ON_CONTINUE ? THEUS_OK : fail_at(x, s, rc);
        }
        x->jobs[x->njobs++] = (pending_job){.job = j, .step = s};
        return THEUS_OK;
    }
    case ST_AWAIT: {
        sig_cursor *cur = NULL;
        for (size_t k = 0; k < x->ncursors; k++)
            if (strcmp(x->cursors[k].name, s->name) == 0)
                cur = &x->cursors[k];
        uint64_t want = cur->seen + s->count, seen = 0;
        rc = theus_engine_wait_signal(x->e, s->name, want - 1, s->timeout_ms, &seen);
        if (rc != THEUS_OK)
            return fail_at(x, s, rc);
        cur->seen = want;
        return THEUS_OK;
    }
    case ST_IF:
        if (inside)
            truth = block_holds(&s->then, x->resume);
        else if ((rc = expr_eval(s->cond, x->e->st, &truth)))
            return fail_at(x, s, rc);
        return exec_block(x, wf, truth ? &s->then : &s->els);
    case ST_WHILE:
        for (;;) {
            if (!inside) {
                if ((rc = expr_eval(s->cond, x->e->st, &truth)))
                    return fail_at(x, s, rc);
                if (!truth)
                    return THEUS_OK;
            }
            inside = 0;
            if ((rc = exec_block(x, wf, &s->then)))
                return rc;
            if ((rc = count_op(x, wf, s)))   /* a loop turn */
                return rc;
        }
    default: {
        theus_workflow *callee = find_wf(x->e, s->name);
        if (!callee)
            return fail_at(x, s, err_set(x->e->st, THEUS_ENOENT, "workflow: '%s' is no longer "
                                         "loaded", s->name));
        if ((rc = exec_block(x, callee, &callee->body)))
            return rc;
        return pos_commit(x, wf, s, s->next);
    }
    }
}

/* Run block @b. While a resume is under way (x->resume), the steps before the one it goes
 * to are passed over, and the step that holds it is entered without its condition. */
static int exec_block(wf_exec *x, const theus_workflow *wf, const wf_block *b)
{
    for (size_t i = 0; i < b->n; i++) {
        const wf_step *s = &b->v[i];
        int inside = 0;
        if (x->resume != WF_NO_RESUME && x->top == wf) {
            if (x->resume < s->id || x->resume >= s->end)
                continue;
            if (x->resume == s->id)
                x->resume = WF_NO_RESUME;
            else
                inside = 1;
        }
        int rc = exec_step(x, wf, s, inside);
        if (rc)
            return rc;
    }
    return THEUS_OK;
}

int theus_workflow_run(theus_workflow *wf, theus_workflow_report *rep)
{
    theus_workflow_report local;
    if (!rep)
        rep = &local;
    memset(rep, 0, sizeof *rep);
    if (!wf)
        return rep->status = err_set(NULL, THEUS_EINVAL, "theus_workflow_run: NULL workflow");
    theus_engine *e = wf->e;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&wf->running, &expected, 1))
        return rep->status = err_set(e->st, THEUS_EBUSY, "workflow '%s' is already running",
                                     wf->name);
    wf_exec x = {.e = e, .max_ops = wf->max_ops, .rep = rep, .top = wf,
                 .resume = WF_NO_RESUME};
    x.stack[x.depth++] = wf;
    int rc = check_calls(&x, wf, &wf->body);
    uint64_t start = 0;
    if (rc == THEUS_OK && wf->position >= 0 && (rc = position_read(wf, &start)) == THEUS_OK) {
        x.pos_last = start;
        if (start >= wf->nsteps)
            start = 0;   /* not one of this workflow's steps: start over */
    }
    rep->resumed_at = start;
    if (start)
        x.resume = (uint32_t)start;
    if (rc == THEUS_OK)
        rc = exec_block(&x, wf, &wf->body);
    /* Submitted runs end before the workflow does; the first failure of one whose step
     * stops on error is the workflow's status if nothing failed before. */
    for (size_t i = 0; i < x.njobs; i++) {
        int jr = theus_job_wait(x.jobs[i].job, NULL);
        if (jr != THEUS_OK) {
            rep->failures++;
            if (rc == THEUS_OK && x.jobs[i].step->on_error != ON_CONTINUE)
                rc = fail_at(&x, x.jobs[i].step, jr);
        }
    }
    /* Done: the next run starts over. */
    if (rc == THEUS_OK)
        rc = pos_commit(&x, wf, NULL, 0);
    theus_xfree(x.jobs);
    theus_xfree(x.cursors);
    atomic_store(&wf->running, 0);
    rep->status = rc;
    return rc;
}
