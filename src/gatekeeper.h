/* The schema gatekeeper of the commit path: constraints (finite, min, max) on the values a
 * batch will write, checked on the backend that holds them, and the values themselves for
 * the audit and the redo record (gate_final_values). */
#ifndef THEUS_SRC_GATEKEEPER_H
#define THEUS_SRC_GATEKEEPER_H
#include "tx.h"
#include <stddef.h>

/* What the gatekeeper must do for one batch: opaque, made by gate_begin, freed by gate_end. */
typedef struct gate_plan gate_plan;

/* Before the commit lock: plan the checks of @tx's batch (*out stays NULL when no
 * constrained field is touched) and check what can be checked without the committed state
 * (ASSIGN payloads of constrained fields the batch does not also add to). THEUS_OK,
 * THEUS_ESCHEMA (the refusal recorded, counted in the stats) or THEUS_ENOMEM; on failure
 * *out is NULL. */
int gate_begin(theus_state *st, const theus_tx *tx, gate_plan **out);
/* Under the commit lock: check the values the fields that receive ADDs will hold after the
 * commit (committed bytes + the batch). THEUS_OK, THEUS_ESCHEMA, THEUS_ENOMEM, or a backend
 * error (message set). @plan may be NULL (nothing to check). */
int gate_finish(theus_state *st, const theus_tx *tx, const gate_plan *plan);
void gate_end(gate_plan *plan);

/* The values delta @k's region will hold after the commit, on the host, laid out as the
 * region (C-contiguous, the field's dtype): the committed bytes (or the delta's payload for
 * an ASSIGN) with this batch's overlapping deltas applied in staging order. Valid under the
 * commit lock (the committed bytes cannot change). @host_out holds nelems elements.
 * THEUS_OK or the backend's error (its detail recorded, no state message). */
int gate_final_values(theus_state *st, const struct theus_tx *tx, size_t k, void *host_out);
/* As gate_final_values, into @out in @mem: THEUS_MEM_DEVICE keeps the values in the field
 * backend's device memory (a buffer from its stage entry; the audit of device fields). */
int gate_final_values_mem(theus_state *st, const struct theus_tx *tx, size_t k, void *out,
                          theus_mem mem);

#endif
