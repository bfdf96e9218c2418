/* Full checkpoints taken while another thread commits, for the durability tests: as many as
 * it takes for commits to land during them. Criterion-free (returns codes; the caller
 * asserts). One caller per state. */
#ifndef THEUS_TESTS_CKPT_WHILE_H
#define THEUS_TESTS_CKPT_WHILE_H
#include "theus/theus.h"
#include <stdatomic.h>
#include <stdint.h>

/* The committing thread's side: its state, and counters it keeps (atomics: the test reads
 * them while it runs). */
typedef struct ckpt_writer {
    theus_state *st;
    _Atomic int stop;      /* set by the test; by the writer itself after many failures */
    _Atomic int failures;
    _Atomic uint64_t commits;
} ckpt_writer;

/* Once @w has committed @during times (or stopped): full checkpoints of its state until
 * @keep were taken and at least @during commits landed while they ran, or @max were
 * taken, whichever first. versions[0..keep) hold the versions of the last @keep (a ring:
 * which slot is the oldest does not matter to the callers); *@taken the checkpoints taken,
 * *@landed the commits that landed during them. THEUS_OK, or the first failing
 * checkpoint's code (the message is theus's). */
int ckpt_while_committing(ckpt_writer *w, int keep, uint64_t during, int max,
                          uint64_t *versions, int *taken, uint64_t *landed);

#endif
