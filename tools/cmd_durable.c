/* theus log, verify, checkpoint: durable state directories (theus/theus_durable.h). The
 * log is read with the library's own record decoder (src/durable/wal_record.h), so what
 * these commands call corrupt or torn is exactly what recovery would. */
#include "alloc.h"
#include "cli.h"
#include "durable/durable.h"
#include "durable/safetensors.h"
#include "durable/wal_record.h"
#include "schema.h"
#include "theus/theus_durable.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A directory's schema and file lists. */
typedef struct dur_dir {
    const char *dir;
    theus_schema *schema;
    dir_list files;
} dur_dir;

static int dur_dir_open(const char *cmd, const char *dir, dur_dir *d)
{
    memset(d, 0, sizeof *d);
    d->dir = dir;
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        cli_error(cmd, "%s: %s", dir, stat(dir, &sb) != 0 ? strerror(errno) : "not a directory");
        return errno == ENOENT ? CLI_NOENT : CLI_USAGE;
    }
    char *text = NULL;
    int rc = dur_read_schema(dir, &text);
    if (rc != THEUS_OK) {
        cli_error(cmd, "%s: not a durable state directory (%s)", dir, theus_last_error_message());
        return rc == THEUS_ENOENT ? CLI_NOENT : CLI_ERROR;
    }
    char err[512];
    rc = schema_parse(text, &d->schema, err, sizeof err);
    theus_xfree(text);
    if (rc != THEUS_OK) {
        cli_error(cmd, "%s/schema.json: %s", dir, err);
        return CLI_FAIL;
    }
    rc = dir_scan(NULL, dir, &d->files);
    if (rc != THEUS_OK) {
        cli_error(cmd, "%s: %s", dir, theus_last_error_message());
        schema_free(d->schema);
        d->schema = NULL;
        return cli_status_exit(rc);
    }
    return CLI_OK;
}

static void dur_dir_close(dur_dir *d)
{
    schema_free(d->schema);
    dir_list_free(&d->files);
}

static size_t esize_of(void *user, uint32_t field)
{
    const theus_schema *s = user;
    return field < s->nfields ? theus_dtype_size(s->fields[field].dtype) : 0;
}

typedef struct mapped {
    const unsigned char *p;
    size_t n;
} mapped;

static int map_file(const char *path, mapped *m)
{
    m->p = NULL;
    m->n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat sb;
    int rc = fstat(fd, &sb);
    if (rc == 0 && sb.st_size > 0) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            rc = -1;
        else {
            m->p = p;
            m->n = (size_t)sb.st_size;
        }
    }
    close(fd);
    return rc;
}

static void unmap_file(mapped *m)
{
    if (m->p)
        munmap((void *)m->p, m->n);
}

/* What walking the segments found. */
typedef struct walk {
    uint64_t segments, records, deltas, bytes, first, last;
    uint64_t audits, violations;  /* audit records (WAL_KIND_AUDIT) and their entries */
    int torn, corrupt;
    char problem[DUR_PATH_MAX + 512];
} walk;

typedef struct walk_out {
    int print, json;
    uint64_t from, to;
    int first_json;
} walk_out;

static void put_region(FILE *out, const theus_region *r, int json)
{
    if (json) {
        fputs("{\"start\": [", out);
        for (int k = 0; k < r->ndim; k++)
            fprintf(out, k ? ", %lld" : "%lld", (long long)r->start[k]);
        fputs("], \"stop\": [", out);
        for (int k = 0; k < r->ndim; k++)
            fprintf(out, k ? ", %lld" : "%lld", (long long)r->stop[k]);
        fputs("]}", out);
        return;
    }
    fputc('[', out);
    for (int k = 0; k < r->ndim; k++)
        fprintf(out, k ? ", %lld:%lld" : "%lld:%lld", (long long)r->start[k], (long long)r->stop[k]);
    fputc(']', out);
}

static const char *const audit_rule_names[] = {"finite", "min", "max", "max_abs", "max_change"};

/* An audit record: decode (and with @show print) its entries. 0, or -1 with w->problem. */
static int walk_audit(const wal_rec *r, const char *path, int show, walk_out *oo, walk *w)
{
    char why[256];
    wal_cursor c;
    uint32_t n = 0;
    if (wal_audit_begin(r, &c, &n, why, sizeof why) != 0) {
        snprintf(w->problem, sizeof w->problem, "%s: offset %llu: %s", path,
                 (unsigned long long)r->offset, why);
        return -1;
    }
    w->audits++;
    if (show && oo->json) {
        printf("%s{\"version\": %llu, \"kind\": \"audit\", \"segment\": ",
               oo->first_json ? "" : ",\n ", (unsigned long long)r->version);
        cli_put_json_string(stdout, path);
        printf(", \"offset\": %llu, \"bytes\": %llu, \"violations\": [",
               (unsigned long long)r->offset, (unsigned long long)r->size);
        oo->first_json = 0;
    } else if (show) {
        printf("version %llu  audit   %u violation%s, %llu bytes  (%s, offset %llu)\n",
               (unsigned long long)r->version, n, n == 1 ? "" : "s", (unsigned long long)r->size,
               strrchr(path, '/') ? strrchr(path, '/') + 1 : path, (unsigned long long)r->offset);
    }
    wal_audit_entry e;
    int k = 0, got;
    while ((got = wal_audit_next(&c, &e, why, sizeof why)) == 1) {
        w->violations++;
        if (!show)
            continue;
        if (oo->json) {
            printf("%s{\"seq\": %llu, \"field\": ", k ? ", " : "", (unsigned long long)e.seq);
            cli_put_json_string(stdout, e.field);
            printf(", \"process\": ");
            cli_put_json_string(stdout, e.process);
            printf(", \"rule\": \"%s\", \"level\": \"%c\", \"refused\": %s, \"index\": %llu, "
                   "\"value\": ", audit_rule_names[e.rule], e.level, e.refused ? "true" : "false",
                   (unsigned long long)e.index);
            if (isfinite(e.value))
                printf("%.17g", e.value);
            else   /* JSON has no NaN or infinity */
                printf("\"%s\"", isnan(e.value) ? "nan" : e.value > 0 ? "inf" : "-inf");
            printf(", \"count\": %llu}", (unsigned long long)e.count);
        } else {
            printf("    %c %-8s %s [%llu] = %.17g  rule %s  seq %llu", e.level,
                   e.refused ? "refused" : "kept", e.field, (unsigned long long)e.index, e.value,
                   audit_rule_names[e.rule], (unsigned long long)e.seq);
            if (e.level == 'B')
                printf("  count %llu", (unsigned long long)e.count);
            printf("  process %s\n", e.process[0] ? e.process : "(outside the engine)");
        }
        k++;
    }
    if (show && oo->json)
        printf("]}");
    if (got < 0) {
        snprintf(w->problem, sizeof w->problem, "%s: record at offset %llu: %s", path,
                 (unsigned long long)r->offset, why);
        return -1;
    }
    return 0;
}

/* Walk every segment of @d, decoding every record and delta; print them per @o. */
static void walk_log(const dur_dir *d, walk *w, const walk_out *o, cli_progress *p)
{
    memset(w, 0, sizeof *w);
    walk_out oo = *o;
    for (size_t i = 0; i < d->files.nseg && !w->corrupt; i++) {
        char path[DUR_PATH_MAX], why[256];
        wal_segment_path(d->dir, d->files.seg[i].version, path, sizeof path);
        mapped m;
        if (map_file(path, &m) != 0) {
            snprintf(w->problem, sizeof w->problem, "%s: %s", path, strerror(errno));
            w->corrupt = 1;
            break;
        }
        w->segments++;
        uint64_t start;
        if (wal_seg_head_decode(m.p, m.n, &start, why, sizeof why) != 0) {
            snprintf(w->problem, sizeof w->problem, "%s: offset 0: %s", path, why);
            w->corrupt = 1;
            unmap_file(&m);
            break;
        }
        uint64_t off = WAL_SEG_HEAD, base = start;
        for (;;) {
            wal_rec r;
            wal_scan sc = wal_next(m.p, m.n, off, base, &r, why, sizeof why);
            if (sc == WAL_SCAN_END)
                break;
            if (sc == WAL_SCAN_TORN || sc == WAL_SCAN_CORRUPT) {
                int last = i + 1 == d->files.nseg;
                snprintf(w->problem, sizeof w->problem, "%s: offset %llu: %s%s", path,
                         (unsigned long long)off, why,
                         sc == WAL_SCAN_TORN && last ? " (a torn last record: recovery drops it)"
                         : sc == WAL_SCAN_TORN       ? " (torn, but not in the newest segment)"
                                                     : "");
                if (sc == WAL_SCAN_TORN && last)
                    w->torn = 1;
                else
                    w->corrupt = 1;
                break;
            }
            int show = oo.print && r.version >= oo.from && r.version <= oo.to;
            if (r.kind == WAL_KIND_AUDIT) {
                if (walk_audit(&r, path, show, &oo, w) != 0) {
                    w->corrupt = 1;
                    break;
                }
                cli_progress_add(p, r.size);
                off += r.size;
                continue;
            }
            w->records++;
            if (r.kind == WAL_KIND_COMMIT)
                base = r.version;
            if (!w->first)
                w->first = r.version;
            w->last = r.version;
            wal_cursor c;
            uint32_t nd = 0;
            if (wal_deltas_begin(&r, &c, &nd, why, sizeof why) != 0) {
                snprintf(w->problem, sizeof w->problem, "%s: offset %llu: %s", path,
                         (unsigned long long)off, why);
                w->corrupt = 1;
                break;
            }
            if (show && oo.json) {
                printf("%s{\"version\": %llu, \"kind\": \"%s\", \"segment\": ", oo.first_json ? "" : ",\n ",
                       (unsigned long long)r.version, r.kind == WAL_KIND_INIT ? "init" : "commit");
                cli_put_json_string(stdout, path);
                printf(", \"offset\": %llu, \"bytes\": %llu, \"deltas\": [",
                       (unsigned long long)r.offset, (unsigned long long)r.size);
                oo.first_json = 0;
            } else if (show) {
                printf("version %llu  %s  %u delta%s, %llu bytes  (%s, offset %llu)\n",
                       (unsigned long long)r.version, r.kind == WAL_KIND_INIT ? "init  " : "commit",
                       nd, nd == 1 ? "" : "s", (unsigned long long)r.size,
                       strrchr(path, '/') ? strrchr(path, '/') + 1 : path,
                       (unsigned long long)r.offset);
            }
            wal_delta dl;
            int k = 0, dr;
            while ((dr = wal_delta_next(&c, esize_of, d->schema, &dl, why, sizeof why)) == 1) {
                w->deltas++;
                w->bytes += dl.nbytes;
                if (!show)
                    continue;
                const char *fname = d->schema->fields[dl.field].name;
                if (oo.json) {
                    printf(k ? ", {\"field\": " : "{\"field\": ");
                    cli_put_json_string(stdout, fname);
                    printf(", \"op\": \"%s\", \"region\": ", dl.op ? "add" : "assign");
                    put_region(stdout, &dl.r, 1);
                    printf(", \"bytes\": %llu}", (unsigned long long)dl.nbytes);
                } else {
                    printf("    %-6s %s ", dl.op ? "add" : "assign", fname);
                    put_region(stdout, &dl.r, 0);
                    printf("  %llu bytes\n", (unsigned long long)dl.nbytes);
                }
                k++;
            }
            if (show && oo.json)
                printf("]}");
            if (dr < 0) {
                snprintf(w->problem, sizeof w->problem, "%s: record at offset %llu: %s", path,
                         (unsigned long long)off, why);
                w->corrupt = 1;
                break;
            }
            cli_progress_add(p, r.size);
            off += r.size;
        }
        unmap_file(&m);
    }
}

static uint64_t segments_bytes(const dur_dir *d)
{
    uint64_t total = 0;
    for (size_t i = 0; i < d->files.nseg; i++) {
        char path[DUR_PATH_MAX];
        struct stat sb;
        wal_segment_path(d->dir, d->files.seg[i].version, path, sizeof path);
        if (stat(path, &sb) == 0)
            total += (uint64_t)sb.st_size;
    }
    return total;
}

static int run_log(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"from", required_argument, NULL, 'f'},
                                         {"to", required_argument, NULL, 't'},
                                         {0, 0, 0, 0}};
    walk_out o = {.print = 1, .from = 0, .to = UINT64_MAX, .first_json = 1};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "j", opts, NULL)) != -1) {
        char *end;
        if (c == 'j') {
            o.json = 1;
        } else if (c == 'f' || c == 't') {
            unsigned long long v = strtoull(optarg, &end, 10);
            if (end == optarg || *end)
                return cli_usage(&cli_log, CLI_USAGE);
            if (c == 'f')
                o.from = v;
            else
                o.to = v;
        } else {
            return cli_usage(&cli_log, CLI_USAGE);
        }
    }
    if (optind + 1 != argc)
        return cli_usage(&cli_log, CLI_USAGE);
    dur_dir d;
    int rc = dur_dir_open("log", argv[optind], &d);
    if (rc != CLI_OK)
        return rc;
    walk w;
    cli_progress p;
    cli_progress_start(&p, isatty(STDOUT_FILENO) ? -1 : 0, "log", segments_bytes(&d));
    if (o.json) {
        printf("{\"dir\": ");
        cli_put_json_string(stdout, argv[optind]);
        printf(", \"records\": [");
    }
    walk_log(&d, &w, &o, &p);
    cli_progress_end(&p);
    if (o.json) {
        printf("], \"segments\": %llu, \"audit_records\": %llu, \"torn\": %s, \"corrupt\": %s}\n",
               (unsigned long long)w.segments, (unsigned long long)w.audits, w.torn ? "true" : "false",
               w.corrupt ? "true" : "false");
    } else {
        printf("%llu record%s", (unsigned long long)w.records, w.records == 1 ? "" : "s");
        if (w.audits)
            printf(" and %llu audit record%s (%llu violation%s)", (unsigned long long)w.audits,
                   w.audits == 1 ? "" : "s", (unsigned long long)w.violations,
                   w.violations == 1 ? "" : "s");
        printf(" in %llu segment%s", (unsigned long long)w.segments, w.segments == 1 ? "" : "s");
        if (w.records)
            printf(", versions %llu..%llu", (unsigned long long)w.first, (unsigned long long)w.last);
        printf("\n");
    }
    if (w.torn || w.corrupt)
        cli_error("log", "%s", w.problem);
    dur_dir_close(&d);
    return w.corrupt ? CLI_FAIL : CLI_OK;
}

static int run_verify(int argc, char **argv)
{
    static const struct option opts[] = {{"quiet", no_argument, NULL, 'q'}, {0, 0, 0, 0}};
    int quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "q", opts, NULL)) != -1) {
        if (c != 'q')
            return cli_usage(&cli_verify, CLI_USAGE);
        quiet = 1;
    }
    if (optind + 1 != argc)
        return cli_usage(&cli_verify, CLI_USAGE);
    const char *dir = argv[optind];
    dur_dir d;
    int rc = dur_dir_open("verify", dir, &d);
    if (rc != CLI_OK)
        return rc;
    int bad = 0;
    walk w;
    walk_out o = {0};
    cli_progress p;
    cli_progress_start(&p, 0, "verify", segments_bytes(&d));
    walk_log(&d, &w, &o, &p);
    cli_progress_end(&p);
    if (w.corrupt) {
        cli_error("verify", "log: %s", w.problem);
        bad = 1;
    } else if (w.torn && !quiet) {
        printf("note: %s\n", w.problem);
    }
    if (!quiet)
        printf("log: %llu segment%s, %llu record%s, %llu deltas, %llu payload bytes, %llu audit "
               "record%s%s\n",
               (unsigned long long)w.segments, w.segments == 1 ? "" : "s",
               (unsigned long long)w.records, w.records == 1 ? "" : "s",
               (unsigned long long)w.deltas, (unsigned long long)w.bytes,
               (unsigned long long)w.audits, w.audits == 1 ? "" : "s",
               w.corrupt ? ": CORRUPT" : "");
    /* Every checkpoint: a safetensors file the library's strict reader accepts. */
    for (size_t i = 0; i < d.files.nckpt; i++) {
        char path[DUR_PATH_MAX], err[DUR_PATH_MAX + 1024];
        ckpt_path(dir, d.files.ckpt[i].version, d.files.ckpt[i].kind, path, sizeof path);
        cli_target t;
        rc = cli_target_open(path, 0, &t, err, sizeof err);
        if (rc == THEUS_OK && t.load_problem) {
            snprintf(err, sizeof err, "%s: %s", path, t.load_problem);
            rc = THEUS_ECORRUPT;
        }
        if (rc != THEUS_OK) {
            cli_error("verify", "checkpoint %s", err);
            bad = 1;
        } else if (!quiet) {
            printf("checkpoint %s (%s, version %llu): ok\n",
                   strrchr(path, '/') ? strrchr(path, '/') + 1 : path,
                   d.files.ckpt[i].kind == DUR_INCREMENTAL ? "incremental" : "full",
                   (unsigned long long)d.files.ckpt[i].version);
        }
        cli_target_close(&t);
    }
    /* And the whole chain: the oldest and the newest version rebuild. */
    uint64_t oldest = 0, newest = 0;
    rc = theus_state_versions(dir, &oldest, &newest);
    if (rc != THEUS_OK) {
        cli_error("verify", "%s", theus_last_error_message());
        bad = 1;
    }
    uint64_t probe[2] = {oldest, newest};
    for (int k = 0; rc == THEUS_OK && k < 2; k++) {
        if (k == 1 && newest == oldest)
            break;
        theus_state *st = NULL;
        int r2 = theus_state_open_version(dir, probe[k], &st);
        if (r2 != THEUS_OK) {
            cli_error("verify", "rebuilding version %llu: %s", (unsigned long long)probe[k],
                      theus_last_error_message());
            bad = 1;
        } else if (!quiet) {
            printf("version %llu rebuilds\n", (unsigned long long)probe[k]);
        }
        theus_state_destroy(st);
    }
    if (!quiet)
        printf("%s: %s\n", dir, bad ? "FAILED" : "ok");
    dur_dir_close(&d);
    return bad ? CLI_FAIL : CLI_OK;
}

static int run_checkpoint(int argc, char **argv)
{
    static const struct option opts[] = {{"incremental", no_argument, NULL, 'i'}, {0, 0, 0, 0}};
    int inc = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "i", opts, NULL)) != -1) {
        if (c != 'i')
            return cli_usage(&cli_checkpoint, CLI_USAGE);
        inc = 1;
    }
    if (optind + 1 != argc)
        return cli_usage(&cli_checkpoint, CLI_USAGE);
    const char *dir = argv[optind];
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        cli_error("checkpoint", "%s: not a directory", dir);
        return stat(dir, &sb) != 0 ? CLI_NOENT : CLI_USAGE;
    }
    char *schema = NULL;
    if (dur_read_schema(dir, &schema) != THEUS_OK) {
        cli_error("checkpoint", "%s: not a durable state directory", dir);
        return CLI_NOENT;
    }
    theus_xfree(schema);
    theus_state *st = NULL;
    int rc = theus_state_open_durable(dir, NULL, NULL, NULL, &st);
    if (rc == THEUS_EBUSY) {
        cli_error("checkpoint", "%s: open in another process (that process can call "
                  "theus_state_checkpoint)", dir);
        return CLI_FAIL;
    }
    if (rc != THEUS_OK) {
        cli_error("checkpoint", "%s: %s", dir, theus_last_error_message());
        return cli_status_exit(rc);
    }
    uint64_t v = 0;
    rc = theus_state_checkpoint(st, inc, &v);
    if (rc != THEUS_OK)
        cli_error("checkpoint", "%s: %s", dir, theus_last_error_message());
    else
        printf("%s: %s checkpoint of version %llu written\n", dir, inc ? "incremental" : "full",
               (unsigned long long)v);
    theus_state_destroy(st);
    return cli_status_exit(rc);
}

const cli_command cli_log = {
    .name = "log",
    .summary = "list the write-ahead log records of a durable state directory",
    .usage =
        "usage: theus log [--json] [--from V] [--to V] DIR\n"
        "\n"
        "List the records of DIR's write-ahead log in order: version, kind (commit, init or\n"
        "audit), size, segment and offset, and per delta the op (assign or add), field, region\n"
        "and payload bytes; per audit violation the level, kept or refused, field, first bad\n"
        "element and value, rule, seq, level-B count and process. --from/--to keep the\n"
        "records of versions V..V (inclusive). A torn last record (recovery drops it) is\n"
        "reported on stderr; any other damage too.\n"
        "\n"
        "  --json  {\"records\": [{\"version\", \"kind\", \"segment\", \"offset\", \"bytes\",\n"
        "          \"deltas\": [{\"field\", \"op\", \"region\", \"bytes\"}]} or, for kind\n"
        "          \"audit\", \"violations\": [{\"seq\", \"field\", \"process\", \"rule\",\n"
        "          \"level\", \"refused\", \"index\", \"value\", \"count\"}]], \"segments\",\n"
        "          \"audit_records\", \"torn\", \"corrupt\"}\n"
        "\n"
        "Exit status: 0 (a torn last record included); 1 a record or segment is corrupt;\n"
        "3 no such directory or not a durable state directory.\n",
    .run = run_log,
};

const cli_command cli_verify = {
    .name = "verify",
    .summary = "check every log record and checkpoint of a durable state directory",
    .usage =
        "usage: theus verify [-q|--quiet] DIR\n"
        "\n"
        "Check DIR as recovery would: every log segment head, record checksum and delta\n"
        "encoding; every checkpoint file against the library's strict safetensors reader;\n"
        "then rebuild the oldest and the newest version DIR can reach. A torn last record\n"
        "is a note, not a failure (recovery drops it). Reads only (no lock): it may run\n"
        "while a process has the state open.\n"
        "\n"
        "Exit status: 0 everything checks; 1 something is corrupt (named with file and\n"
        "offset); 3 no such directory or not a durable state directory.\n",
    .run = run_verify,
};

const cli_command cli_checkpoint = {
    .name = "checkpoint",
    .summary = "write a checkpoint of a durable state that no process has open",
    .usage =
        "usage: theus checkpoint [-i|--incremental] DIR\n"
        "\n"
        "Open the durable state in DIR (recovering it), write a full checkpoint (or an\n"
        "incremental one: the blocks written since the previous checkpoint), apply the\n"
        "retention (older checkpoints and the log segments only they needed go), close it.\n"
        "A state another process has open is refused: that process must checkpoint.\n"
        "\n"
        "Exit status: 0; 1 the state is open elsewhere, or recovery found corruption;\n"
        "3 no such directory or not a durable state directory; 4 another error.\n",
    .run = run_checkpoint,
};
