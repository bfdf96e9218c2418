/* The engine's worker pool: a FIFO of jobs (process runs) served by a fixed set of threads;
 * each job's handle is waited on by its submitter. Knows nothing of processes. */
#include "process.h"
#include "alloc.h"
#include "error.h"
#include <stdio.h>
#include <string.h>

struct theus_job {
    pool_fn fn;
    void *a, *b;
    const theus_state *st;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int rc;
    uint64_t version;
    char msg[512];        /* the run's error detail, handed to the waiting thread */
    struct theus_job *next;
};

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    theus_job *head, *tail;
    int stop;
    pthread_t *threads;
    uint32_t nthreads;
};

static void job_finish(theus_job *j, int rc, uint64_t version, const char *msg)
{
    pthread_mutex_lock(&j->mu);
    j->rc = rc;
    j->version = version;
    snprintf(j->msg, sizeof j->msg, "%s", msg ? msg : "");
    j->done = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void *worker(void *arg)
{
    pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stop)
            pthread_cond_wait(&p->cv, &p->mu);
        if (!p->head)
            break;
        theus_job *j = p->head;
        p->head = j->next;
        if (!p->head)
            p->tail = NULL;
        pthread_mutex_unlock(&p->mu);
        uint64_t v = 0;
        int rc = j->fn(j->a, j->b, &v);
        job_finish(j, rc, v, rc != THEUS_OK ? theus_state_last_error(j->st) : NULL);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

pool *pool_start(uint32_t threads)
{
    pool *p = theus_xcalloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->threads = theus_xcalloc(threads, sizeof *p->threads);
    if (!p->threads) {
        theus_xfree(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (uint32_t i = 0; i < threads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker, p) != 0)
            break;
        p->nthreads++;
    }
    if (p->nthreads == 0) {
        pool_destroy(p);
        return NULL;
    }
    return p;
}

void pool_destroy(pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    theus_job *left = p->head;
    p->head = p->tail = NULL;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (uint32_t i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    while (left) {
        theus_job *next = left->next;
        job_finish(left, THEUS_EBUSY, 0, "run: the engine was destroyed before this job ran");
        left = next;
    }
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    theus_xfree(p->threads);
    theus_xfree(p);
}

int pool_submit(pool *p, const theus_state *st, pool_fn fn, void *a, void *b, theus_job **job)
{
    theus_job *j = theus_xcalloc(1, sizeof *j);
    if (!j)
        return THEUS_ENOMEM;
    j->fn = fn;
    j->a = a;
    j->b = b;
    j->st = st;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    pthread_mutex_lock(&p->mu);
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    *job = j;
    return THEUS_OK;
}

int theus_job_wait(theus_job *j, uint64_t *committed_version)
{
    if (!j)
        return err_set(NULL, THEUS_EINVAL, "theus_job_wait: NULL job");
    pthread_mutex_lock(&j->mu);
    while (!j->done)
        pthread_cond_wait(&j->cv, &j->mu);
    pthread_mutex_unlock(&j->mu);
    int rc = j->rc;
    if (rc != THEUS_OK)
        err_set(j->st, rc, "%s", j->msg);
    else if (committed_version)
        *committed_version = j->version;
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    theus_xfree(j);
    return rc;
}
