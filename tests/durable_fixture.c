/* Scratch directories for the durability tests and bench (tests/durable_fixture.h). */
#include "durable_fixture.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char dfx_root[256];
char dfx_dir[272];

int dfx_make(const char *base, const char *tag, int use_env)
{
    dfx_root[0] = dfx_dir[0] = '\0';
    const char *env = use_env ? getenv("THEUS_BENCH_DIR") : NULL;
    if (!base || !*base)
        base = env && *env ? env : "/tmp";
    char tmpl[sizeof dfx_root];
    int n = snprintf(tmpl, sizeof tmpl, "%s/theus-%s-XXXXXX", base, tag);
    if (n < 0 || (size_t)n >= sizeof tmpl) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (!mkdtemp(tmpl))
        return -1;
    memcpy(dfx_root, tmpl, (size_t)n + 1);
    snprintf(dfx_dir, sizeof dfx_dir, "%s/state", dfx_root);
    return 0;
}

void dfx_rm_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return;
    if (!S_ISDIR(sb.st_mode)) {
        unlink(path);
        return;
    }
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        char p[1024];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", path, e->d_name);
                dfx_rm_tree(p);
            }
        closedir(d);
    }
    rmdir(path);
}

void dfx_cleanup(void)
{
    if (dfx_root[0])
        dfx_rm_tree(dfx_root);
    dfx_root[0] = dfx_dir[0] = '\0';
}
