/* theus info and theus dump: describe the fields of a shared state or a safetensors file,
 * and print their values as text or JSON. */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void shape_text(const cli_field *f, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < f->ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)f->shape[d]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
}

static void put_shape_json(FILE *out, int ndim, const int64_t *v)
{
    fputc('[', out);
    for (int d = 0; d < ndim; d++)
        fprintf(out, d ? ", %lld" : "%lld", (long long)v[d]);
    fputc(']', out);
}

static const char *kind_word(const cli_target *t)
{
    return t->kind == CLI_TARGET_SHARED ? "shared" : t->kind == CLI_TARGET_DURABLE ? "durable"
                                                                            : "safetensors";
}

static void info_json(const cli_target *t)
{
    printf("{\"target\": ");
    cli_put_json_string(stdout, t->label);
    printf(", \"kind\": \"%s\"", kind_word(t));
    if (t->kind == CLI_TARGET_SHARED) {
        const theus_shared_summary *s = &t->summary;
        printf(", \"schema\": ");
        cli_put_json_string(stdout, t->schema_name);
        printf(", \"version\": %llu, \"processes\": %u, \"max_processes\": %u, \"creator_pid\": %d,"
               " \"segment_bytes\": %llu, \"redo_bytes\": %llu, \"abandoned\": %s,"
               " \"recovered\": %llu, \"dropped\": %llu",
               (unsigned long long)t->version, s->processes, s->max_processes, (int)s->creator_pid,
               (unsigned long long)s->segment_bytes, (unsigned long long)s->redo_bytes,
               s->abandoned ? "true" : "false", (unsigned long long)s->recovered,
               (unsigned long long)s->dropped);
        if (!t->st)
            printf(", \"open_error\": \"%s\"", theus_strerror(t->open_status));
    } else if (t->kind == CLI_TARGET_DURABLE) {
        printf(", \"schema\": ");
        cli_put_json_string(stdout, t->schema_name);
        printf(", \"version\": %llu, \"oldest\": %llu, \"newest\": %llu",
               (unsigned long long)t->version, (unsigned long long)t->oldest,
               (unsigned long long)t->newest);
    } else {
        printf(", \"file_bytes\": %zu, \"header_bytes\": %llu, \"metadata\": %s", t->map_len,
               (unsigned long long)t->header_len, t->metadata_json ? t->metadata_json : "null");
        printf(", \"theus_loadable\": %s", t->load_problem ? "false" : "true");
        if (t->theus_file) {
            printf(", \"version\": %llu, \"schema\": ", (unsigned long long)t->version);
            cli_put_json_string(stdout, t->schema_name);
        }
        if (t->load_problem) {
            printf(", \"load_problem\": ");
            cli_put_json_string(stdout, t->load_problem);
        }
    }
    printf(", \"fields\": [");
    for (size_t i = 0; i < t->nfields; i++) {
        const cli_field *f = &t->fields[i];
        printf(i ? ",\n  {\"name\": " : "\n  {\"name\": ");
        cli_put_json_string(stdout, f->name);
        printf(", \"dtype\": \"%s\", \"shape\": ", f->dtype_name);
        put_shape_json(stdout, f->ndim, f->shape);
        printf(", \"bytes\": %llu, \"placement\": \"%s\"", (unsigned long long)f->nbytes, f->placement);
        if (f->requested)
            printf(", \"requested\": \"%s\"", f->requested);
        if (f->zone)
            printf(", \"zone\": \"%s\"", f->zone);
        if (f->version)
            printf(", \"version\": %llu", (unsigned long long)f->version);
        if (t->kind == CLI_TARGET_SAFETENSORS)
            printf(", \"offset\": %llu", (unsigned long long)f->offset);
        printf("}");
    }
    printf("]}\n");
}

static void info_text(const cli_target *t)
{
    if (t->kind == CLI_TARGET_SHARED) {
        const theus_shared_summary *s = &t->summary;
        printf("shared state '%s': schema '%s', version %llu%s\n", t->label, t->schema_name,
               (unsigned long long)t->version, s->abandoned ? " (abandoned)" : "");
        printf("  processes %u of %u, creator pid %d, segment %llu bytes, redo area %llu bytes,\n"
               "  commits recovered %llu, dropped %llu\n",
               s->processes, s->max_processes, (int)s->creator_pid,
               (unsigned long long)s->segment_bytes, (unsigned long long)s->redo_bytes,
               (unsigned long long)s->recovered, (unsigned long long)s->dropped);
        if (!t->st) {
            printf("  fields: not shown (%s: %s)\n", theus_strerror(t->open_status),
                   theus_last_error_message());
            return;
        }
    } else if (t->kind == CLI_TARGET_DURABLE) {
        printf("durable state '%s': schema '%s', version %llu (the directory can rebuild "
               "versions %llu to %llu)\n", t->label, t->schema_name,
               (unsigned long long)t->version, (unsigned long long)t->oldest,
               (unsigned long long)t->newest);
    } else {
        printf("safetensors file '%s': %zu tensor%s, %zu bytes (header %llu)\n", t->label,
               t->nfields, t->nfields == 1 ? "" : "s", t->map_len, (unsigned long long)t->header_len);
        if (t->theus_file)
            printf("  written by theus: state version %llu, schema '%s'\n",
                   (unsigned long long)t->version, t->schema_name);
        else if (t->metadata_json)
            printf("  metadata: %s\n", t->metadata_json);
        if (t->load_problem)
            printf("  theus_state_load_safetensors would refuse it: %s\n", t->load_problem);
        else
            printf("  theus_state_load_safetensors accepts it\n");
    }
    const int shared = t->kind != CLI_TARGET_SAFETENSORS;   /* a state's fields */
    size_t wname = shared ? 5 : 6, wshape = 5, wplace = 9;
    char shape[160], place[64];
    for (size_t i = 0; i < t->nfields; i++) {
        const cli_field *f = &t->fields[i];
        shape_text(f, shape, sizeof shape);
        if (f->requested && strcmp(f->requested, f->placement) != 0)
            snprintf(place, sizeof place, "%s (asked %s)", f->placement, f->requested);
        else
            snprintf(place, sizeof place, "%s", f->placement);
        if (strlen(f->name) > wname)
            wname = strlen(f->name);
        if (strlen(shape) > wshape)
            wshape = strlen(shape);
        if (strlen(place) > wplace)
            wplace = strlen(place);
    }
    if (shared)
        printf("%-*s  %-5s  %-*s  %12s  %-*s  %-6s  %s\n", (int)wname, "FIELD", "DTYPE",
               (int)wshape, "SHAPE", "BYTES", (int)wplace, "PLACEMENT", "ZONE", "VERSION");
    else
        printf("%-*s  %-7s  %-*s  %12s  %10s%s\n", (int)wname, "TENSOR", "DTYPE", (int)wshape,
               "SHAPE", "BYTES", "OFFSET", t->theus_file ? "  ZONE    VERSION" : "");
    for (size_t i = 0; i < t->nfields; i++) {
        const cli_field *f = &t->fields[i];
        shape_text(f, shape, sizeof shape);
        if (shared) {
            if (f->requested && strcmp(f->requested, f->placement) != 0)
                snprintf(place, sizeof place, "%s (asked %s)", f->placement, f->requested);
            else
                snprintf(place, sizeof place, "%s", f->placement);
            printf("%-*s  %-5s  %-*s  %12llu  %-*s  %-6s  %llu\n", (int)wname, f->name,
                   f->dtype_name, (int)wshape, shape, (unsigned long long)f->nbytes, (int)wplace,
                   place, f->zone, (unsigned long long)f->version);
        } else {
            printf("%-*s  %-7s  %-*s  %12llu  %10llu", (int)wname, f->name, f->dtype_name,
                   (int)wshape, shape, (unsigned long long)f->nbytes, (unsigned long long)f->offset);
            if (t->theus_file)
                printf("  %-6s  %llu", f->zone ? f->zone : "-", (unsigned long long)f->version);
            printf("\n");
        }
    }
}

static int run_info(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {0, 0, 0, 0}};
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "j", opts, NULL)) != -1) {
        if (c != 'j')
            return cli_usage(&cli_info, CLI_USAGE);
        json = 1;
    }
    if (optind + 1 != argc)
        return cli_usage(&cli_info, CLI_USAGE);
    cli_target t;
    char err[1024] = "";
    int rc = cli_target_open(argv[optind], 0, &t, err, sizeof err);
    if (rc != THEUS_OK) {
        cli_error("info", "%s", err);
        cli_target_close(&t);
        return cli_status_exit(rc);
    }
    if (json)
        info_json(&t);
    else
        info_text(&t);
    cli_target_close(&t);
    return CLI_OK;
}

/* ---- dump ---------------------------------------------------------------------------- */
typedef struct dump_item {
    size_t field;
    theus_region r;
    int64_t shape[THEUS_MAX_DIMS];  /* the region's shape */
    uint64_t count;
    unsigned char *buf;
} dump_item;

static void put_nd(FILE *out, const cli_field *f, const dump_item *it, int d, uint64_t *pos,
                   int indent, int json, cli_progress *p)
{
    int nd = f->ndim;
    if (nd == 0) {
        cli_put_value(out, f->dtype, it->buf, 0, json);
        return;
    }
    fputc('[', out);
    for (int64_t k = 0; k < it->shape[d]; k++) {
        if (d == nd - 1) {
            if (k)
                fputs(", ", out);
            cli_put_value(out, f->dtype, it->buf, (size_t)(*pos)++, json);
        } else {
            if (k)
                fprintf(out, ",\n%*s", indent + d + 1, "");
            put_nd(out, f, it, d + 1, pos, indent, json, p);
        }
    }
    if (d == nd - 1)
        cli_progress_add(p, (uint64_t)it->shape[d]);
    fputc(']', out);
}

static int run_dump(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"progress", no_argument, NULL, 'p'},
                                         {"no-progress", no_argument, NULL, 'P'},
                                         {0, 0, 0, 0}};
    int json = 0, progress = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "j", opts, NULL)) != -1) {
        if (c == 'j')
            json = 1;
        else if (c == 'p')
            progress = 1;
        else if (c == 'P')
            progress = -1;
        else
            return cli_usage(&cli_dump, CLI_USAGE);
    }
    if (optind >= argc)
        return cli_usage(&cli_dump, CLI_USAGE);
    /* The values are the output: progress on the same terminal would garble them. */
    if (progress == 0 && isatty(STDOUT_FILENO))
        progress = -1;
    cli_target t;
    char err[1024] = "";
    int rc = cli_target_open(argv[optind], 1, &t, err, sizeof err);
    int exit_rc = CLI_OK;
    size_t n = (size_t)(argc - optind - 1), all = n == 0;
    if (all)
        for (size_t i = 0; i < t.nfields; i++)
            n += t.fields[i].dtype >= 0;
    dump_item *items = rc == THEUS_OK ? calloc(n ? n : 1, sizeof *items) : NULL;
    size_t *idx = items ? calloc(n ? n : 1, sizeof *idx) : NULL;
    theus_region *regions = idx ? calloc(n ? n : 1, sizeof *regions) : NULL;
    void **bufs = regions ? calloc(n ? n : 1, sizeof *bufs) : NULL;
    if (rc != THEUS_OK) {
        cli_error("dump", "%s", err);
        exit_rc = cli_status_exit(rc);
        goto done;
    }
    if (!bufs) {
        cli_error("dump", "out of memory");
        exit_rc = CLI_ERROR;
        goto done;
    }
    uint64_t total = 0;
    for (size_t i = 0; all && i < t.nfields; i++)
        if (t.fields[i].dtype < 0)
            fprintf(stderr, "theus dump: %s: dtype %s skipped (no theus equivalent)\n",
                    t.fields[i].name, t.fields[i].dtype_name);
    for (size_t k = 0; k < n; k++) {
        dump_item *it = &items[k];
        char field[256], region[1024];
        if (!all) {
            const char *sel = argv[optind + 1 + (int)k];
            if (cli_parse_selector(sel, field, sizeof field, region, sizeof region) != THEUS_OK) {
                cli_error("dump", "%s: expected FIELD or FIELD[REGION]", sel);
                exit_rc = CLI_USAGE;
                goto done;
            }
            int i = cli_target_find(&t, field);
            if (i < 0) {
                cli_error("dump", "%s: no field '%s'", t.label, field);
                exit_rc = CLI_NOENT;
                goto done;
            }
            it->field = (size_t)i;
        } else {   /* every field theus can show, in order */
            size_t next = k ? items[k - 1].field + 1 : 0;
            while (t.fields[next].dtype < 0)
                next++;
            it->field = next;
            region[0] = '\0';
        }
        const cli_field *f = &t.fields[it->field];
        if (cli_parse_region(region, f, &it->r, err, sizeof err) != THEUS_OK) {
            cli_error("dump", "%s: %s", f->name, err);
            exit_rc = CLI_USAGE;
            goto done;
        }
        it->count = 1;
        for (int d = 0; d < f->ndim; d++) {
            it->shape[d] = it->r.stop[d] - it->r.start[d];
            it->count *= (uint64_t)it->shape[d];
        }
        size_t esize = f->dtype >= 0 ? theus_dtype_size((theus_dtype)f->dtype) : 1;
        it->buf = malloc(it->count ? it->count * esize : 1);
        if (!it->buf) {
            cli_error("dump", "%s: out of memory for %llu values", f->name,
                      (unsigned long long)it->count);
            exit_rc = CLI_ERROR;
            goto done;
        }
        idx[k] = it->field;
        regions[k] = it->r;
        bufs[k] = it->buf;
        total += it->count;
    }
    rc = cli_target_read(&t, n, idx, regions, bufs, err, sizeof err);
    if (rc != THEUS_OK) {
        cli_error("dump", "%s: %s", t.label, err);
        exit_rc = rc == THEUS_EINVAL ? CLI_ERROR : cli_status_exit(rc);  /* a dtype theus lacks */
        goto done;
    }
    cli_progress p;
    cli_progress_start(&p, progress, "dump", total);
    if (json) {
        printf("{\"target\": ");
        cli_put_json_string(stdout, t.label);
        printf(", \"kind\": \"%s\"", kind_word(&t));
        if (t.version)
            printf(", \"version\": %llu", (unsigned long long)t.version);
        printf(", \"fields\": {");
    }
    for (size_t k = 0; k < n; k++) {
        const dump_item *it = &items[k];
        const cli_field *f = &t.fields[it->field];
        uint64_t pos = 0;
        if (json) {
            printf(k ? ",\n  " : "\n  ");
            cli_put_json_string(stdout, f->name);
            printf(": {\"dtype\": \"%s\", \"shape\": ", f->dtype_name);
            put_shape_json(stdout, f->ndim, f->shape);
            printf(", \"start\": ");
            put_shape_json(stdout, f->ndim, it->r.start);
            printf(", \"stop\": ");
            put_shape_json(stdout, f->ndim, it->r.stop);
            printf(",\n   \"values\": ");
            put_nd(stdout, f, it, 0, &pos, 14, 1, &p);
            printf("}");
        } else {
            char shape[160];
            shape_text(f, shape, sizeof shape);
            printf("%s: %s %s", f->name, f->dtype_name, shape);
            if (f->ndim) {
                printf(" [");
                for (int d = 0; d < f->ndim; d++)
                    printf(d ? ", %lld:%lld" : "%lld:%lld", (long long)it->r.start[d],
                           (long long)it->r.stop[d]);
                printf("]");
            }
            if (f->version)
                printf(" (field version %llu)", (unsigned long long)f->version);
            printf("\n");
            put_nd(stdout, f, it, 0, &pos, 0, 0, &p);
            printf("\n");
        }
    }
    if (json)
        printf("}}\n");
    cli_progress_end(&p);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        cli_error("dump", "writing the output failed");
        exit_rc = CLI_ERROR;
    }
done:
    for (size_t k = 0; items && k < n; k++)
        free(items[k].buf);
    free(items);
    free(idx);
    free(regions);
    free(bufs);
    cli_target_close(&t);
    return exit_rc;
}

const cli_command cli_info = {
    .name = "info",
    .summary = "describe a shared state or a safetensors file: fields, dtypes, shapes",
    .usage =
        "usage: theus info [--json] NAME|DIR[@VERSION]|FILE\n"
        "\n"
        "Describe a shared state (by NAME), a durable state directory (its newest version,\n"
        "or VERSION, rebuilt read-only), or a safetensors FILE (an existing path, or any\n"
        "argument containing '/'). A state: schema name, version (a durable directory: the\n"
        "versions it can rebuild; a shared state: processes, sizes), and per field dtype,\n"
        "shape, bytes, placement (where it lives, and what the schema asked for when they\n"
        "differ), zone and the version of the last commit that wrote it. A file: its\n"
        "metadata (for files theus wrote: state version, schema, zones, field versions),\n"
        "whether theus_state_load_safetensors accepts it, and per tensor dtype, shape,\n"
        "bytes and data offset.\n"
        "\n"
        "  --json  the same as one JSON object\n"
        "\n"
        "Exit status: 0; 1 a corrupt file; 2 a bad DIR@VERSION; 3 no such state, file or\n"
        "version, or a directory that holds no durable state; 4 another error.\n",
    .run = run_info,
};

const cli_command cli_dump = {
    .name = "dump",
    .summary = "print field values as text or JSON",
    .usage =
        "usage: theus dump [--json] [--progress|--no-progress] NAME|DIR[@VERSION]|FILE\n"
        "                  [FIELD[REGION]...]\n"
        "\n"
        "Print the values of the given fields (default: all) of a shared state, a version of\n"
        "a durable state directory or a safetensors file, read from one version.\n"
        "REGION selects per leading dimension with i, a:b, a:, :b or : (negative numbers\n"
        "count from the end; missing dimensions are whole): 'theus dump run-42 w[0:2,1:]'\n"
        "or 'loss[0]'. Quote it for the shell. An index i keeps its dimension (size 1).\n"
        "The selected values are read into memory (one version) before they are printed.\n"
        "\n"
        "Values: integers exact; f16, bf16, f32, f64 as decimal numbers in the shortest\n"
        "form that reads back to the same value; bool as true/false. In text, NaN and\n"
        "infinities are nan, inf, -inf; in JSON (not a JSON number) the strings \"NaN\",\n"
        "\"Infinity\" and \"-Infinity\".\n"
        "\n"
        "  --json         one JSON object: {\"target\", \"kind\", \"version\", \"fields\": {NAME:\n"
        "                 {\"dtype\", \"shape\", \"start\", \"stop\", \"values\"}}}, values nested\n"
        "                 in the region's shape (a scalar field: a bare value)\n"
        "  --progress     progress on stderr even when it is not a terminal\n"
        "  --no-progress  no progress (default: shown on stderr when it is a terminal and\n"
        "                 stdout is not)\n"
        "\n"
        "Exit status: 0; 2 a bad selector or region; 3 no such state, file or field;\n"
        "4 another error (a dtype theus lacks, memory, I/O).\n",
    .run = run_dump,
};
