/* The outbox: side effects queued by a run's transaction. The publish step moves them to
 * the engine queue under the commit lock, so the queue is in commit order; one thread at a
 * time drains it, outside every lock, so each entry runs once and in that order. Entries
 * of an attempt that does not commit are dropped and never run. */
#include "process.h"
#include "alloc.h"
#include <string.h>

/* Set while this thread drains: an entry that runs a process itself must not wait for
 * the drain it is part of (its own entries run after it, in order). */
static _Thread_local const outbox_queue *tls_draining;

int outbox_init(outbox_queue *q)
{
    memset(q, 0, sizeof *q);
    if (pthread_mutex_init(&q->mu, NULL) != 0)
        return THEUS_ENOMEM;
    if (pthread_cond_init(&q->cv, NULL) != 0) {
        pthread_mutex_destroy(&q->mu);
        return THEUS_ENOMEM;
    }
    q->next_seq = 1;
    return THEUS_OK;
}

static void drop_list(outbox_item *it)
{
    while (it) {
        outbox_item *next = it->next;
        if (it->drop)
            it->drop(it->arg);
        theus_xfree(it);
        it = next;
    }
}

void outbox_fini(outbox_queue *q)
{
    drop_list(q->head);
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
}

void outbox_drop_run(theus_run *run)
{
    drop_list(run->ob_head);
    run->ob_head = run->ob_tail = NULL;
}

void outbox_publish(theus_engine *e, theus_run *run, uint64_t version)
{
    if (!run->ob_head)
        return;
    outbox_queue *q = &e->ob;
    pthread_mutex_lock(&q->mu);
    for (outbox_item *it = run->ob_head; it; it = it->next) {
        it->version = version;
        it->seq = q->next_seq++;
        run->ob_seq = it->seq;
    }
    if (q->tail)
        q->tail->next = run->ob_head;
    else
        q->head = run->ob_head;
    q->tail = run->ob_tail;
    pthread_mutex_unlock(&q->mu);
    run->ob_head = run->ob_tail = NULL;
}

void outbox_drain(theus_engine *e, uint64_t seq)
{
    outbox_queue *q = &e->ob;
    if (tls_draining == q)
        return;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        if (q->done_seq >= seq || (seq == UINT64_MAX && !q->head && !q->draining))
            break;
        if (q->draining) {
            pthread_cond_wait(&q->cv, &q->mu);
            continue;
        }
        if (!q->head)
            break;   /* cannot happen for a seq that was queued */
        q->draining = 1;
        tls_draining = q;
        while (q->head) {
            outbox_item *it = q->head;
            q->head = it->next;
            if (!q->head)
                q->tail = NULL;
            pthread_mutex_unlock(&q->mu);
            it->fn(it->arg, it->version);
            pthread_mutex_lock(&q->mu);
            q->done_seq = it->seq;
            theus_xfree(it);
        }
        q->draining = 0;
        tls_draining = NULL;
        pthread_cond_broadcast(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
}
