/* Batch replay grouped by backend (see batch_replay.h). */
#include "batch_replay.h"
#include <stdint.h>

static int run_default(void *run_user, const theus_backend *b, const replay_op *ops, size_t n)
{
    (void)run_user;
    return b->iface->replay(b->ctx, ops, n);
}

int batch_replay(size_t n, batch_op_fn get, void *user, replay_op *buf, size_t cap)
{
    return batch_replay_run(n, get, user, buf, cap, NULL, NULL);
}

int batch_replay_run(size_t n, batch_op_fn get, void *user, replay_op *buf, size_t cap,
                     batch_run_fn run, void *run_user)
{
    if (!run)
        run = run_default;
    if (n == 0)
        return THEUS_OK;
    /* The common batch: every op on one backend, up to @cap of them: one call. */
    const theus_backend *one = get(user, 0, &buf[0]);
    size_t same = 1;
    while (same < n && same < cap && get(user, same, &buf[same]) == one)
        same++;
    if (same == n)
        return run(run_user, one, buf, n);
    /* Otherwise one pass per backend, lowest address first: needs no memory and no bound on
     * how many backends a batch uses (in practice one or two). */
    uintptr_t prev = 0;
    for (;;) {
        uintptr_t cur = UINTPTR_MAX;
        int any = 0;
        for (size_t k = 0; k < n; k++) {
            uintptr_t b = (uintptr_t)get(user, k, NULL);
            if (b > prev && b <= cur) {
                cur = b;
                any = 1;
            }
        }
        if (!any)
            return THEUS_OK;
        const theus_backend *b = (const theus_backend *)cur;
        size_t m = 0;
        for (size_t k = 0; k < n; k++) {
            if ((uintptr_t)get(user, k, &buf[m]) != cur)
                continue;
            if (++m == cap) {
                int rc = run(run_user, b, buf, m);
                if (rc != THEUS_OK)
                    return rc;
                m = 0;
            }
        }
        if (m) {
            int rc = run(run_user, b, buf, m);
            if (rc != THEUS_OK)
                return rc;
        }
        prev = cur;
    }
}
