/* The listener list's own operations that need no state: its release at state destruction
 * (publish_listener.h). */
#include "publish_listener.h"

void publish_list_release(publish_list *p)
{
    while (p->n > 0) {
        p->n--;
        if (p->release[p->n])
            p->release[p->n](p->l[p->n].user);
    }
}
