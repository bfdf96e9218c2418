/* What info and dump look at: a shared state (opened by name, read through a transaction)
 * or a safetensors file (mapped read-only, read in place). */
#include "cli.h"
#include "theus/theus_durable.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int open_file(const char *path, cli_target *t, char *err, size_t errlen)
{
    t->kind = CLI_TARGET_SAFETENSORS;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT ? THEUS_ENOENT : THEUS_EIO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return THEUS_EINVAL;
    }
    t->map_len = (size_t)sb.st_size;
    if (t->map_len > 0) {
        void *m = mmap(NULL, t->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
            close(fd);
            return THEUS_EIO;
        }
        t->map = m;
    }
    close(fd);
    return cli_safetensors_parse(t, err, errlen);
}

static int fields_of_state(cli_target *t);

static int open_shared(const char *name, int need_values, cli_target *t, char *err, size_t errlen)
{
    t->kind = CLI_TARGET_SHARED;
    int rc = theus_shared_info(name, &t->summary);
    if (rc != THEUS_OK) {
        if (rc == THEUS_ENOENT)
            snprintf(err, errlen, "%s: no such file or shared state", name);
        else
            snprintf(err, errlen, "%s: %s", name, theus_last_error_message());
        return rc;
    }
    t->version = t->summary.version;
    snprintf(t->schema_name, sizeof t->schema_name, "%s", t->summary.schema_name);
    rc = theus_state_open_shared(name, NULL, &t->st);
    t->open_status = rc;
    if (rc != THEUS_OK) {
        snprintf(err, errlen, "%s: cannot open: %s", name, theus_last_error_message());
        return need_values ? rc : THEUS_OK;
    }
    return fields_of_state(t);
}

static int open_durable(const char *spec, const char *dir, cli_target *t, char *err, size_t errlen)
{
    t->kind = CLI_TARGET_DURABLE;
    snprintf(t->label, sizeof t->label, "%s", spec);
    int rc = theus_state_versions(dir, &t->oldest, &t->newest);
    if (rc != THEUS_OK) {
        snprintf(err, errlen, "%s: not a durable state directory: %s", dir,
                 theus_last_error_message());
        return rc;
    }
    uint64_t v = t->newest;
    const char *at = spec + strlen(dir);
    if (*at == '@') {
        char *end;
        v = strtoull(at + 1, &end, 10);
        if (end == at + 1 || *end) {
            snprintf(err, errlen, "%s: expected DIR@VERSION with a decimal version", spec);
            return THEUS_EINVAL;
        }
        if (v < t->oldest || v > t->newest) {
            snprintf(err, errlen, "%s: version %llu is outside what %s can rebuild (%llu..%llu)",
                     spec, (unsigned long long)v, dir, (unsigned long long)t->oldest,
                     (unsigned long long)t->newest);
            return THEUS_ENOENT;
        }
    }
    rc = theus_state_open_version(dir, v, &t->st);
    if (rc != THEUS_OK) {
        snprintf(err, errlen, "%s: cannot rebuild version %llu: %s", dir, (unsigned long long)v,
                 theus_last_error_message());
        return rc;
    }
    snprintf(t->schema_name, sizeof t->schema_name, "%s", theus_state_name(t->st));
    return fields_of_state(t);
}

/* The fields of an opened state (shared, or a durable version) into t->fields. */
static int fields_of_state(cli_target *t)
{
    t->version = theus_state_version(t->st);
    size_t n = theus_state_field_count(t->st);
    t->fields = calloc(n ? n : 1, sizeof *t->fields);
    if (!t->fields)
        return THEUS_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        cli_field *f = &t->fields[i];
        theus_field_info fi;
        const char *fname = theus_state_field_name(t->st, i);
        if (!fname || theus_state_field_info(t->st, fname, &fi) != THEUS_OK)
            continue;
        snprintf(f->name, sizeof f->name, "%s", fname);
        f->dtype = (int)fi.dtype;
        snprintf(f->dtype_name, sizeof f->dtype_name, "%s", theus_dtype_name(fi.dtype));
        f->ndim = fi.ndim;
        memcpy(f->shape, fi.shape, sizeof f->shape);
        f->nbytes = fi.nbytes;
        f->placement = theus_placement_name(fi.placement);
        f->requested = theus_placement_name(fi.requested);
        f->zone = theus_zone_name(fi.zone);
        f->version = fi.version;
        t->nfields++;
    }
    return THEUS_OK;
}

int cli_target_open(const char *spec, int need_values, cli_target *t, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    snprintf(t->label, sizeof t->label, "%s", spec);
    struct stat sb;
    /* DIR@VERSION: the part before the last '@' is a directory. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", spec);
    char *at = strrchr(dir, '@');
    if (at && stat(spec, &sb) != 0) {
        *at = '\0';
        if (stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode))
            return open_durable(spec, dir, t, err, errlen);
        snprintf(dir, sizeof dir, "%s", spec);
    }
    if (stat(spec, &sb) == 0 && S_ISDIR(sb.st_mode))
        return open_durable(spec, spec, t, err, errlen);
    if (strchr(spec, '/') || stat(spec, &sb) == 0)
        return open_file(spec, t, err, errlen);
    return open_shared(spec, need_values, t, err, errlen);
}

void cli_target_close(cli_target *t)
{
    if (t->st)
        theus_state_destroy(t->st);
    if (t->map)
        munmap((void *)t->map, t->map_len);
    free(t->fields);
    free(t->metadata_json);
    free(t->load_problem);
    memset(t, 0, sizeof *t);
}

int cli_target_find(const cli_target *t, const char *field)
{
    for (size_t i = 0; i < t->nfields; i++)
        if (strcmp(t->fields[i].name, field) == 0)
            return (int)i;
    return -1;
}

/* Copy region @r of a C-contiguous tensor at @src into @dst, one innermost run at a time. */
static void gather(const unsigned char *src, const cli_field *f, const theus_region *r,
                   size_t esize, unsigned char *dst)
{
    if (f->ndim == 0) {
        memcpy(dst, src, esize);
        return;
    }
    int64_t idx[THEUS_MAX_DIMS];
    int nd = f->ndim;
    for (int d = 0; d < nd; d++) {
        idx[d] = r->start[d];
        if (r->stop[d] <= r->start[d])
            return;
    }
    size_t run = (size_t)(r->stop[nd - 1] - r->start[nd - 1]) * esize;
    for (;;) {
        uint64_t off = 0;
        for (int d = 0; d < nd; d++)
            off = off * (uint64_t)f->shape[d] + (uint64_t)idx[d];
        memcpy(dst, src + off * esize, run);
        dst += run;
        int d = nd - 2;
        while (d >= 0 && ++idx[d] == r->stop[d]) {
            idx[d] = r->start[d];
            d--;
        }
        if (d < 0)
            return;
    }
}

int cli_target_read(cli_target *t, size_t n, const size_t *idx, const theus_region *r,
                    void *const *dst, char *err, size_t errlen)
{
    for (size_t k = 0; k < n; k++) {
        const cli_field *f = &t->fields[idx[k]];
        if (f->dtype < 0) {
            snprintf(err, errlen, "%s: dtype %s has no theus equivalent: values cannot be shown",
                     f->name, f->dtype_name);
            return THEUS_EINVAL;
        }
    }
    if (t->kind == CLI_TARGET_SAFETENSORS) {
        for (size_t k = 0; k < n; k++) {
            const cli_field *f = &t->fields[idx[k]];
            gather(t->map + f->offset, f, &r[k], theus_dtype_size((theus_dtype)f->dtype), dst[k]);
        }
        return THEUS_OK;
    }
    /* One transaction for all of them: one version. A commit of another process that
     * lands on a region being read makes that read fail with THEUS_ECONFLICT: start again
     * at the newer version. */
    int rc = THEUS_ECONFLICT;
    for (int attempt = 0; attempt < 100 && rc == THEUS_ECONFLICT; attempt++) {
        theus_tx *tx = NULL;
        rc = theus_tx_begin(t->st, NULL, &tx);
        for (size_t k = 0; k < n && rc == THEUS_OK; k++) {
            const cli_field *f = &t->fields[idx[k]];
            rc = theus_tx_read(tx, f->name, f->ndim ? &r[k] : NULL, dst[k], THEUS_MEM_HOST);
        }
        if (rc == THEUS_OK)
            t->version = theus_tx_base(tx);
        else
            snprintf(err, errlen, "%s", theus_last_error_message());
        theus_tx_abort(tx);
    }
    return rc;
}
