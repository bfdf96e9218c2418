/* Where the process layer attaches to the commit path: audit before the replay, signals
 * and outbox entries after publish. One file, so that the attachment follows the commit
 * path's interface (publish listeners, publish.h). */
#ifndef THEUS_SRC_PROCESS_PUBLISH_HOOK_H
#define THEUS_SRC_PROCESS_PUBLISH_HOOK_H
#include "process.h"

/* THEUS_EBUSY when something else is attached to the state's commit path. */
int publish_hook_attach(theus_engine *e);
void publish_hook_detach(theus_engine *e);
/* Around a run's theus_tx_run on this thread: enter returns the run it was inside (runs
 * nest when an outbox entry runs a process), leave restores it. */
theus_run *publish_hook_enter(theus_run *run);
void publish_hook_leave(theus_run *prev);

#endif
