/* theus_tx_run: retries on conflict with exponential backoff and full jitter, bounded in
 * attempts and time, with a priority lease for a transaction that keeps losing. */
#include "error.h"
#include "tx.h"
#include <stdint.h>
#include <time.h>

static _Thread_local uint64_t rng_state;

static uint64_t next_random(void)
{
    if (rng_state == 0)
        rng_state = state_now_ns() ^ (uint64_t)(uintptr_t)&rng_state ^ 0x9e3779b97f4a7c15ull;
    /* xorshift64*: cheap, per thread, good enough for jitter. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static void pause_us(uint64_t us)
{
    struct timespec ts = {.tv_sec = (time_t)(us / 1000000u), .tv_nsec = (long)(us % 1000000u) * 1000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

int theus_tx_run(theus_state *st, const theus_retry_options *opts, theus_tx_body body,
                 void *user, uint64_t *committed_version)
{
    if (!st || !body)
        return err_set(st, THEUS_EINVAL, "theus_tx_run: NULL state or body");
    theus_retry_options o = THEUS_RETRY_OPTIONS_INIT;
    if (opts)
        o = *opts;
    if (o.max_attempts == 0)
        o.max_attempts = 64;
    if (o.max_time_ms == 0)
        o.max_time_ms = 10000;
    if (o.backoff_min_us == 0)
        o.backoff_min_us = 2;
    if (o.backoff_max_us == 0)
        o.backoff_max_us = 2000;
    if (o.priority_after == 0)
        o.priority_after = 8;
    if (o.backoff_max_us < o.backoff_min_us)
        return err_set(st, THEUS_EINVAL, "theus_tx_run: backoff_max_us < backoff_min_us");

    const uint64_t deadline = state_now_ns() + (uint64_t)o.max_time_ms * 1000000ull;
    uint64_t backoff = o.backoff_min_us;
    uint32_t attempt = 0;
    for (;;) {
        uint64_t ticket = attempt >= o.priority_after ? state_priority_acquire(st) : 0;
        if (ticket)
            atomic_fetch_add(&st->hdr->stats.priority_runs, 1);
        theus_tx *tx = NULL;
        int rc = theus_tx_begin(st, &o.tx, &tx);
        if (rc == THEUS_OK) {
            tx->priority_ticket = ticket;
            rc = body(tx, user);
            if (rc == THEUS_OK) {
                rc = theus_tx_commit(tx, committed_version);
            } else {
                /* The body's own error detail (if any) stays as it is. */
                theus_tx_abort(tx);
            }
        }
        if (ticket)
            state_priority_release(st, ticket);
        if (rc != THEUS_ECONFLICT)
            return rc;
        attempt++;
        uint64_t now = state_now_ns();
        if (attempt >= o.max_attempts || now >= deadline)
            return err_set_keep_conflict(st, THEUS_EBUSY,
                                         "theus_tx_run: still conflicting after %u attempts", attempt);
        atomic_fetch_add(&st->hdr->stats.retries, 1);
        if (attempt < o.priority_after) {
            uint64_t wait = next_random() % (backoff + 1);
            if (now + wait * 1000u > deadline)
                wait = (deadline - now) / 1000u;
            pause_us(wait);
            backoff = backoff * 2 > o.backoff_max_us ? o.backoff_max_us : backoff * 2;
        }
    }
}
