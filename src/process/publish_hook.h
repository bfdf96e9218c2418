/* Where the process layer attaches to the commit path: audit before the replay, signals
 * and outbox entries after publish. One file, so that the attachment follows the commit
 * path's interface (publish listeners, publish.h). */
#ifndef THEUS_SRC_PROCESS_PUBLISH_HOOK_H
#define THEUS_SRC_PROCESS_PUBLISH_HOOK_H
#include "process.h"

/* THEUS_EBUSY when something else is attached to the state's commit path. */
int publish_hook_attach(theus_engine *e);
void publish_hook_detach(theus_engine *e);

#endif
