/* theus diff: which fields, and which regions of them, differ between two targets (shared
 * states, versions of a durable directory, safetensors files, in any pairing). */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

typedef struct side {
    cli_target t;
    size_t *idx;
    theus_region *r;
    void **buf;
    size_t n;
} side;

static void side_free(side *s)
{
    for (size_t k = 0; s->buf && k < s->n; k++)
        free(s->buf[k]);
    free(s->buf);
    free(s->idx);
    free(s->r);
    cli_target_close(&s->t);
}

static int same_layout(const cli_field *a, const cli_field *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim || strcmp(a->dtype_name, b->dtype_name))
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return 0;
    return 1;
}

static void unflatten(const cli_field *f, uint64_t i, int64_t *idx)
{
    for (int d = f->ndim - 1; d >= 0; d--) {
        idx[d] = f->shape[d] ? (int64_t)(i % (uint64_t)f->shape[d]) : 0;
        i = f->shape[d] ? i / (uint64_t)f->shape[d] : 0;
    }
}

/* Compare field @f's bytes in @a and @b; print what differs. Returns 1 when they differ. */
static int compare(const cli_field *f, const unsigned char *a, const unsigned char *b, int json,
                   int *first_json)
{
    size_t es = theus_dtype_size((theus_dtype)f->dtype);
    uint64_t n = es ? f->nbytes / es : 0, ndiff = 0, first = 0;
    int64_t lo[THEUS_MAX_DIMS], hi[THEUS_MAX_DIMS], idx[THEUS_MAX_DIMS];
    for (uint64_t i = 0; i < n; i++) {
        if (memcmp(a + i * es, b + i * es, es) == 0)
            continue;
        unflatten(f, i, idx);
        if (ndiff++ == 0) {
            first = i;
            memcpy(lo, idx, sizeof lo);
            memcpy(hi, idx, sizeof hi);
        }
        for (int d = 0; d < f->ndim; d++) {
            if (idx[d] < lo[d])
                lo[d] = idx[d];
            if (idx[d] > hi[d])
                hi[d] = idx[d];
        }
    }
    if (!ndiff)
        return 0;
    unflatten(f, first, idx);
    if (json) {
        printf("%s{\"field\": ", *first_json ? "" : ",\n ");
        cli_put_json_string(stdout, f->name);
        printf(", \"status\": \"values\", \"elements\": %llu, \"differ\": %llu, \"start\": [",
               (unsigned long long)n, (unsigned long long)ndiff);
        for (int d = 0; d < f->ndim; d++)
            printf(d ? ", %lld" : "%lld", (long long)lo[d]);
        printf("], \"stop\": [");
        for (int d = 0; d < f->ndim; d++)
            printf(d ? ", %lld" : "%lld", (long long)hi[d] + 1);
        printf("], \"first\": [");
        for (int d = 0; d < f->ndim; d++)
            printf(d ? ", %lld" : "%lld", (long long)idx[d]);
        printf("], \"a\": ");
        cli_put_value(stdout, f->dtype, a, (size_t)first, 1);
        printf(", \"b\": ");
        cli_put_value(stdout, f->dtype, b, (size_t)first, 1);
        printf("}");
        *first_json = 0;
        return 1;
    }
    printf("%s: %llu of %llu element%s differ", f->name, (unsigned long long)ndiff,
           (unsigned long long)n, n == 1 ? "" : "s");
    if (f->ndim) {
        printf(", within [");
        for (int d = 0; d < f->ndim; d++)
            printf(d ? ", %lld:%lld" : "%lld:%lld", (long long)lo[d], (long long)hi[d] + 1);
        printf("]; first at [");
        for (int d = 0; d < f->ndim; d++)
            printf(d ? ", %lld" : "%lld", (long long)idx[d]);
        printf("]");
    }
    printf(": ");
    cli_put_value(stdout, f->dtype, a, (size_t)first, 0);
    printf(" vs ");
    cli_put_value(stdout, f->dtype, b, (size_t)first, 0);
    printf("\n");
    return 1;
}

static int load(side *s, const char *const *names, size_t n, char *err, size_t errlen)
{
    s->n = n;
    s->idx = calloc(n ? n : 1, sizeof *s->idx);
    s->r = calloc(n ? n : 1, sizeof *s->r);
    s->buf = calloc(n ? n : 1, sizeof *s->buf);
    if (!s->idx || !s->r || !s->buf)
        return THEUS_ENOMEM;
    for (size_t k = 0; k < n; k++) {
        int i = cli_target_find(&s->t, names[k]);
        s->idx[k] = (size_t)i;
        const cli_field *f = &s->t.fields[i];
        s->r[k].ndim = f->ndim;
        for (int d = 0; d < f->ndim; d++)
            s->r[k].stop[d] = f->shape[d];
        s->buf[k] = malloc(f->nbytes ? f->nbytes : 1);
        if (!s->buf[k])
            return THEUS_ENOMEM;
    }
    return cli_target_read(&s->t, n, s->idx, s->r, s->buf, err, errlen);
}

static int run_diff(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {0, 0, 0, 0}};
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "j", opts, NULL)) != -1) {
        if (c != 'j')
            return cli_usage(&cli_diff, CLI_USAGE);
        json = 1;
    }
    if (argc - optind < 2)
        return cli_usage(&cli_diff, CLI_USAGE);
    side s[2];
    memset(s, 0, sizeof s);
    char err[1024];
    int rc = CLI_OK;
    for (int k = 0; k < 2 && rc == CLI_OK; k++) {
        int r = cli_target_open(argv[optind + k], 1, &s[k].t, err, sizeof err);
        if (r != THEUS_OK) {
            cli_error("diff", "%s", err);
            rc = cli_status_exit(r);
        }
    }
    const char **common = calloc(s[0].t.nfields + s[1].t.nfields + 1, sizeof *common);
    size_t ncommon = 0;
    int differ = 0, first_json = 1;
    if (rc != CLI_OK || !common)
        goto done;
    if (json)
        printf("[");
    /* The fields to compare: those named, or every field of either side. */
    int named = argc - optind > 2;
    size_t nwant = named ? (size_t)(argc - optind - 2) : s[0].t.nfields + s[1].t.nfields;
    for (size_t w = 0; w < nwant; w++) {
        const char *name = named ? argv[optind + 2 + w]
                           : w < s[0].t.nfields ? s[0].t.fields[w].name
                                                : s[1].t.fields[w - s[0].t.nfields].name;
        if (!named && w >= s[0].t.nfields && cli_target_find(&s[0].t, name) >= 0)
            continue;   /* seen from side A */
        int ia = cli_target_find(&s[0].t, name), ib = cli_target_find(&s[1].t, name);
        const char *what = NULL;
        if (ia < 0 && ib < 0) {
            cli_error("diff", "no field '%s' in either", name);
            rc = CLI_NOENT;
            goto done;
        } else if (ia < 0) {
            what = "only in B";
        } else if (ib < 0) {
            what = "only in A";
        } else if (!same_layout(&s[0].t.fields[ia], &s[1].t.fields[ib])) {
            what = "dtype or shape differs";
        } else if (s[0].t.fields[ia].dtype < 0) {
            what = "dtype theus lacks: not compared";
        }
        if (what) {
            differ |= strcmp(what, "dtype theus lacks: not compared") != 0;
            if (json) {
                printf("%s{\"field\": ", first_json ? "" : ",\n ");
                cli_put_json_string(stdout, name);
                printf(", \"status\": \"%s\"}", what);
                first_json = 0;
            } else {
                printf("%s: %s\n", name, what);
            }
            continue;
        }
        common[ncommon++] = name;
    }
    for (int k = 0; k < 2 && rc == CLI_OK; k++) {
        int r = load(&s[k], common, ncommon, err, sizeof err);
        if (r != THEUS_OK) {
            cli_error("diff", "%s: %s", s[k].t.label, r == THEUS_ENOMEM ? "out of memory" : err);
            rc = CLI_ERROR;
        }
    }
    for (size_t k = 0; rc == CLI_OK && k < ncommon; k++)
        differ |= compare(&s[0].t.fields[s[0].idx[k]], s[0].buf[k], s[1].buf[k], json, &first_json);
    if (json)
        printf("]\n");
    else if (rc == CLI_OK && !differ)
        printf("no differences (%zu field%s compared)\n", ncommon, ncommon == 1 ? "" : "s");
done:
    free(common);
    side_free(&s[0]);
    side_free(&s[1]);
    return rc != CLI_OK ? rc : differ ? CLI_FAIL : CLI_OK;
}

const cli_command cli_diff = {
    .name = "diff",
    .summary = "fields and regions that differ between two states, versions or files",
    .usage =
        "usage: theus diff [--json] A B [FIELD...]\n"
        "\n"
        "Compare A and B, each a shared state NAME, a durable directory DIR (its newest\n"
        "version) or DIR@VERSION, or a safetensors FILE, field by field (default: every\n"
        "field of either). For each field that differs: only in A, only in B, dtype or\n"
        "shape differs, or how many elements differ, the region that holds them all, and\n"
        "the first one with both values. Elements are compared bit for bit (a NaN equals\n"
        "the same NaN; 0.0 and -0.0 differ).\n"
        "\n"
        "  --json  a JSON array, one object per differing field: {\"field\", \"status\", and\n"
        "          for values \"elements\", \"differ\", \"start\", \"stop\", \"first\", \"a\", \"b\"}\n"
        "\n"
        "Exit status: 0 no differences; 1 some field differs (as diff(1)); 2 bad usage;\n"
        "3 no such state, directory, file or field; 4 another error.\n",
    .run = run_diff,
};
