/* A worker process for tests/test_shared.c, started with fork+exec so that it inherits
 * nothing but its arguments (as a GPU worker must: CUDA does not survive fork). It opens a
 * shared state by name and commits to it.
 *
 *   shared_worker incr NAME N     N read-modify-write increments of "rmw" (serializable,
 *                                 theus_tx_run) and N ADDs of 1 to "add"
 *   shared_worker add NAME N      N commits, each adding 1 to every element of "acc" and to
 *                                 "count" (N < 0: until killed); writes one byte to stdout
 *                                 after each commit that returned THEUS_OK
 *
 * Exit status 0 when every commit succeeded; the failure is printed on stderr otherwise. */
#include <theus/theus.h>
#include <theus/theus_shared.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(theus_state *st, const char *what, int rc)
{
    fprintf(stderr, "shared_worker %d: %s: %s: %s\n", (int)getpid(), what, theus_strerror(rc),
            st ? theus_state_last_error(st) : theus_last_error_message());
    return 1;
}

static int incr_body(theus_tx *tx, void *user)
{
    (void)user;
    int64_t v = 0;
    int rc = theus_tx_read(tx, "rmw", NULL, &v, THEUS_MEM_HOST);
    if (rc != THEUS_OK)
        return rc;
    v++;
    return theus_tx_write(tx, "rmw", NULL, &v, THEUS_MEM_HOST);
}

static int run_incr(theus_state *st, long n)
{
    theus_retry_options ro = THEUS_RETRY_OPTIONS_INIT;
    ro.max_attempts = 100000;
    ro.max_time_ms = 60000;
    const int64_t one = 1;
    for (long i = 0; i < n; i++) {
        int rc = theus_tx_run(st, &ro, incr_body, NULL, NULL);
        if (rc != THEUS_OK)
            return fail(st, "read-modify-write increment", rc);
        theus_tx *tx = NULL;
        if ((rc = theus_tx_begin(st, NULL, &tx)) == THEUS_OK &&
            (rc = theus_tx_add(tx, "add", NULL, &one, THEUS_MEM_HOST)) != THEUS_OK)
            theus_tx_abort(tx);
        if (rc == THEUS_OK)
            rc = theus_tx_commit(tx, NULL);
        if (rc != THEUS_OK)
            return fail(st, "ADD increment", rc);
    }
    return 0;
}

static int run_add(theus_state *st, long n)
{
    theus_field_info fi;
    int rc = theus_state_field_info(st, "acc", &fi);
    if (rc != THEUS_OK)
        return fail(st, "field_info(acc)", rc);
    size_t count = fi.nbytes / sizeof(float);
    float *ones = malloc(fi.nbytes);
    if (!ones)
        return fail(st, "malloc", THEUS_ENOMEM);
    for (size_t i = 0; i < count; i++)
        ones[i] = 1.0f;
    const int64_t one = 1;
    int status = 0;
    for (long i = 0; n < 0 || i < n; i++) {
        theus_tx *tx = NULL;
        if ((rc = theus_tx_begin(st, NULL, &tx)) == THEUS_OK &&
            ((rc = theus_tx_add(tx, "acc", NULL, ones, THEUS_MEM_HOST)) != THEUS_OK ||
             (rc = theus_tx_add(tx, "count", NULL, &one, THEUS_MEM_HOST)) != THEUS_OK))
            theus_tx_abort(tx);
        if (rc == THEUS_OK)
            rc = theus_tx_commit(tx, NULL);
        if (rc != THEUS_OK) {
            status = fail(st, "ADD commit", rc);
            break;
        }
        if (write(1, "c", 1) != 1) {
            status = fail(st, "reporting a commit", THEUS_EIO);
            break;
        }
    }
    free(ones);
    return status;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: shared_worker incr|add NAME N\n");
        return 2;
    }
    long n = strtol(argv[3], NULL, 10);
    theus_state *st = NULL;
    int rc = theus_state_open_shared(argv[2], NULL, &st);
    if (rc != THEUS_OK)
        return fail(NULL, "theus_state_open_shared", rc);
    int status = 2;
    if (strcmp(argv[1], "incr") == 0)
        status = run_incr(st, n);
    else if (strcmp(argv[1], "add") == 0)
        status = run_add(st, n);
    else
        fprintf(stderr, "shared_worker: unknown command '%s'\n", argv[1]);
    theus_state_destroy(st);
    return status;
}
