/* Finds where a value (or an object key) sits in JSON text, as a 1-based line and column.
 * jansson keeps no positions for the nodes it builds, so error messages that name a line
 * and column (docs/schema.md) scan the text again along the path of the node. */
#ifndef THEUS_SRC_JSON_LOCATE_H
#define THEUS_SRC_JSON_LOCATE_H
#include <stddef.h>

/* One step of a path from the root: an object member, or an array element. */
typedef struct jsonloc_step {
    const char *key;   /* member name, decoded (UTF-8, escapes resolved); NULL: array step */
    size_t index;      /* element index when key is NULL */
} jsonloc_step;

/*
 * Locate the node reached from the root of @text by the @depth steps of @path
 * (depth 0: the root value itself).
 * @text     NUL-terminated JSON text that jansson has already accepted; borrowed. Text that
 *           is not valid JSON is scanned safely (never read past the NUL) but may not be
 *           found.
 * @at_key   when non-zero and the last step is an object member, report the position of the
 *           member's key (its opening quote) instead of its value.
 * @line, @column  receive the 1-based position of the first character of the value (or
 *           key). Lines are counted at '\n'; columns count Unicode characters (UTF-8 lead
 *           bytes), as jansson's own error positions do; a tab is one column.
 * Keys in the text are compared after decoding their escapes (\", \\, \/, \b, \f, \n, \r,
 * \t, \uXXXX including surrogate pairs), so "w\u0031" matches the step key "w1". When a
 * key occurs more than once in an object the first occurrence is found.
 * @return 0 when found, -1 when the path does not exist in @text (outputs untouched) or an
 *         argument is NULL. Allocates nothing; thread-safe.
 */
int jsonloc_find(const char *text, const jsonloc_step *path, size_t depth, int at_key,
                 int *line, int *column);

#endif
