/* The scratch directories of the durability tests and of bench/scn_durable.c: a fresh
 * directory made with mkdtemp, the durable state's directory inside it, and removal of the
 * whole tree. Free of Criterion, so that theus-bench compiles it too. Not thread-safe (one
 * fixture per process, set up and torn down by the main thread). */
#ifndef THEUS_TESTS_DURABLE_FIXTURE_H
#define THEUS_TESTS_DURABLE_FIXTURE_H
#include <stddef.h>

/* The scratch root ("<base>/theus-<tag>-XXXXXX" made unique) and "<root>/state" (not
 * created: theus_state_open_durable makes it). Empty strings until dfx_make succeeds. */
extern char dfx_root[256];
extern char dfx_dir[272];

/* Make the scratch root under @base (NULL or "": $THEUS_BENCH_DIR when @use_env and set,
 * else /tmp). 0, or -1 with errno set (the names are left empty). */
int dfx_make(const char *base, const char *tag, int use_env);

/* Remove @path and everything below it (no error if it is missing). Does not follow
 * symbolic links into other trees: a link is unlinked. */
void dfx_rm_tree(const char *path);

/* Remove the scratch root (if any) and forget its name. */
void dfx_cleanup(void);

#endif
