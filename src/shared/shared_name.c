/* Shared names: which names are valid, and the /dev/shm segment each one names (names are
 * per user: "theus-<uid>-<name>"). */
#include "shared_impl.h"
#include "error.h"
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
}

int shared_check_name(const char *name)
{
    if (!name)
        return err_set(NULL, THEUS_EINVAL, "shared state: NULL name");
    size_t n = strlen(name);
    if (n == 0 || n > THEUS_SHARED_NAME_MAX)
        return err_set(NULL, THEUS_EINVAL, "shared name '%.80s' must have 1 to %d characters",
                       name, THEUS_SHARED_NAME_MAX);
    if (name[0] == '.' || name[0] == '-')
        return err_set(NULL, THEUS_EINVAL, "shared name '%s' must not start with '%c'", name,
                       name[0]);
    for (size_t i = 0; i < n; i++)
        if (!name_char_ok(name[i]))
            return err_set(NULL, THEUS_EINVAL,
                           "shared name '%s': character %zu is not one of A-Z a-z 0-9 . _ -",
                           name, i);
    return THEUS_OK;
}

/* "/theus-<uid>-<name>": names are per user. */
void shared_seg_name(char *buf, const char *name)
{
    snprintf(buf, SEG_MAX, "/theus-%u-%s", (unsigned)geteuid(), name);
}

const char *shared_entry_name(const char *entry, const char *prefix, size_t plen)
{
    if (strncmp(entry, prefix, plen) != 0)
        return NULL;
    const char *name = entry + plen;
    return shared_check_name(name) == THEUS_OK ? name : NULL;
}
