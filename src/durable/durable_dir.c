/* A durable directory's files: the names of checkpoints and log segments, the scan that
 * lists them by version (what recovery, checkpoint retention and the version queries start
 * from), and reading the schema file. */
#include "alloc.h"
#include "durable/durable.h"
#include "durable/fileio.h"
#include "error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the directory ------------------------------------------------------------------- */

void ckpt_path(const char *dir, uint64_t version, int kind, char *buf, size_t len)
{
    snprintf(buf, len, "%s/ckpt-%016llx%s.safetensors", dir, (unsigned long long)version,
             kind == DUR_INCREMENTAL ? ".inc" : "");
}

static int by_version(const void *a, const void *b)
{
    const dir_entry *x = a, *y = b;
    return x->version < y->version ? -1 : x->version > y->version;
}

/* "<prefix><16 hex digits><suffix>" exactly. */
static int parse_name(const char *name, const char *prefix, const char *suffix, uint64_t *v)
{
    size_t pl = strlen(prefix), sl = strlen(suffix), n = strlen(name);
    if (n != pl + 16 + sl || strncmp(name, prefix, pl) || strcmp(name + pl + 16, suffix))
        return 0;
    uint64_t x = 0;
    for (size_t i = pl; i < pl + 16; i++) {
        char c = name[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return 0;
        x = x << 4 | (uint64_t)d;
    }
    *v = x;
    return 1;
}

static int push(dir_entry **arr, size_t *n, size_t *cap, uint64_t v, int kind)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        dir_entry *a = theus_xmalloc(nc * sizeof *a);
        if (!a)
            return -1;
        if (*n)
            memcpy(a, *arr, *n * sizeof *a);
        theus_xfree(*arr);
        *arr = a;
        *cap = nc;
    }
    (*arr)[(*n)++] = (dir_entry){.version = v, .kind = kind};
    return 0;
}

int dir_scan(const theus_state *st, const char *dir, dir_list *out)
{
    memset(out, 0, sizeof *out);
    DIR *d = opendir(dir);
    if (!d)
        return err_set(st, errno == ENOENT ? THEUS_ENOENT : THEUS_EIO, "cannot list '%s': %s",
                       dir, strerror(errno));
    size_t cs = 0, cc = 0;
    struct dirent *e;
    int bad = 0;
    while (!bad && (e = readdir(d))) {
        uint64_t v;
        if (parse_name(e->d_name, "wal-", ".log", &v))
            bad = push(&out->seg, &out->nseg, &cs, v, DUR_SEGMENT);
        else if (parse_name(e->d_name, "ckpt-", ".safetensors", &v))
            bad = push(&out->ckpt, &out->nckpt, &cc, v, DUR_FULL);
        else if (parse_name(e->d_name, "ckpt-", ".inc.safetensors", &v))
            bad = push(&out->ckpt, &out->nckpt, &cc, v, DUR_INCREMENTAL);
    }
    closedir(d);
    if (bad) {
        dir_list_free(out);
        return err_set(st, THEUS_ENOMEM, "out of memory listing '%s'", dir);
    }
    if (out->nseg)
        qsort(out->seg, out->nseg, sizeof *out->seg, by_version);
    if (out->nckpt)
        qsort(out->ckpt, out->nckpt, sizeof *out->ckpt, by_version);
    /* A full and an incremental checkpoint of one version hold the same state: a full one
     * asked for right after an incremental one with no commit between (the checkpoint
     * removes the incremental file once the full one is durable; a crash may come first).
     * The full one is kept, the incremental one left out. */
    size_t kept = 0;
    for (size_t i = 0; i < out->nckpt; i++) {
        if (kept && out->ckpt[kept - 1].version == out->ckpt[i].version) {
            if (out->ckpt[i].kind == DUR_FULL)
                out->ckpt[kept - 1] = out->ckpt[i];
            continue;
        }
        out->ckpt[kept++] = out->ckpt[i];
    }
    out->nckpt = kept;
    return THEUS_OK;
}

void dir_list_free(dir_list *l)
{
    theus_xfree(l->seg);
    theus_xfree(l->ckpt);
    memset(l, 0, sizeof *l);
}

int dur_read_schema(const char *dir, char **out)
{
    *out = NULL;
    char p[DUR_PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, DUR_SCHEMA_FILE);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(NULL, errno == ENOENT ? THEUS_ENOENT : THEUS_EIO, "cannot open '%s': %s",
                       p, strerror(errno));
    struct stat sb;
    int rc = THEUS_OK;
    char *text = NULL;
    if (fstat(fd, &sb) != 0 || sb.st_size > (1 << 26)) {
        rc = err_set(NULL, THEUS_ECORRUPT, "'%s': not a schema file", p);
    } else if (!(text = theus_xmalloc((size_t)sb.st_size + 1))) {
        rc = err_set(NULL, THEUS_ENOMEM, "out of memory reading '%s'", p);
    } else if (fio_pread_all(fd, text, (size_t)sb.st_size, 0) != 0) {
        rc = err_set(NULL, THEUS_EIO, "cannot read '%s': %s", p, strerror(errno));
    } else {
        text[sb.st_size] = '\0';
        *out = text;
        text = NULL;
    }
    theus_xfree(text);
    close(fd);
    return rc;
}
