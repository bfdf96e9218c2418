/* theus validate: check schema files with the library's own parser (nothing is allocated
 * for the fields) and report each refusal as FILE:LINE:COLUMN with its JSON path. */
#include "cli.h"
#include "schema.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static char *read_file(const char *path, char *err, size_t errlen, int *status)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        *status = errno == ENOENT ? THEUS_ENOENT : THEUS_EIO;
        snprintf(err, errlen, "%s", strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (len + 1 < cap)
            break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    if (f != stdin)
        fclose(f);
    if (!buf || bad) {
        free(buf);
        *status = buf ? THEUS_EIO : THEUS_ENOMEM;
        snprintf(err, errlen, "%s", buf ? "read error" : "out of memory");
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

/* Split the parser's "schema: PATH: WHAT (line L, column C)" into its parts. */
static void split_message(const char *msg, char *path, size_t pathlen, char *what,
                          size_t whatlen, int *line, int *col)
{
    *line = *col = 0;
    if (strncmp(msg, "schema: ", 8) == 0)
        msg += 8;
    const char *sep = strstr(msg, ": ");
    const char *end = msg + strlen(msg);
    const char *loc = strstr(msg, " (line ");
    if (loc && sscanf(loc, " (line %d, column %d)", line, col) == 2)
        end = loc;
    else
        *line = *col = 0;
    if (sep && sep < end) {
        snprintf(path, pathlen, "%.*s", (int)(sep - msg), msg);
        msg = sep + 2;
    } else {
        snprintf(path, pathlen, "$");
    }
    snprintf(what, whatlen, "%.*s", (int)(end - msg), msg);
}

static int validate_one(const char *file, int quiet, int json, int *first)
{
    char err[1024] = "";
    int status = THEUS_OK;
    char *text = read_file(file, err, sizeof err, &status);
    const char *shown = strcmp(file, "-") == 0 ? "<stdin>" : file;
    if (!text) {
        if (json) {
            printf("%s{\"file\": ", *first ? "" : ",\n ");
            cli_put_json_string(stdout, shown);
            printf(", \"valid\": false, \"error\": ");
            cli_put_json_string(stdout, err);
            printf("}");
            *first = 0;
        }
        cli_error("validate", "%s: %s", shown, err);
        return cli_status_exit(status);
    }
    theus_schema *s = NULL;
    status = schema_parse(text, &s, err, sizeof err);
    free(text);
    if (json) {
        printf("%s{\"file\": ", *first ? "" : ",\n ");
        cli_put_json_string(stdout, shown);
        *first = 0;
    }
    if (status != THEUS_OK) {
        char path[512], what[1024];
        int line, col;
        split_message(err, path, sizeof path, what, sizeof what, &line, &col);
        if (json) {
            printf(", \"valid\": false, \"path\": ");
            cli_put_json_string(stdout, path);
            printf(", \"line\": %d, \"column\": %d, \"message\": ", line, col);
            cli_put_json_string(stdout, what);
            printf("}");
        } else if (line > 0) {
            fprintf(stderr, "%s:%d:%d: error: %s: %s\n", shown, line, col, path, what);
        } else {
            fprintf(stderr, "%s: error: %s: %s\n", shown, path, what);
        }
        return status == THEUS_ESCHEMA ? CLI_FAIL : cli_status_exit(status);
    }
    uint64_t bytes = 0;
    for (size_t i = 0; i < s->nfields; i++)
        bytes += s->fields[i].nbytes;
    if (json) {
        printf(", \"valid\": true, \"name\": ");
        cli_put_json_string(stdout, s->name);
        printf(", \"fields\": %zu, \"bytes\": %llu}", s->nfields, (unsigned long long)bytes);
    } else if (!quiet) {
        printf("%s: valid: schema '%s', %zu field%s, %llu bytes\n", shown, s->name, s->nfields,
               s->nfields == 1 ? "" : "s", (unsigned long long)bytes);
    }
    schema_free(s);
    return CLI_OK;
}

static int run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"quiet", no_argument, NULL, 'q'}, {"json", no_argument, NULL, 'j'}, {0, 0, 0, 0}};
    int quiet = 0, json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "qj", opts, NULL)) != -1) {
        if (c == 'q')
            quiet = 1;
        else if (c == 'j')
            json = 1;
        else
            return cli_usage(&cli_validate, CLI_USAGE);
    }
    if (optind >= argc)
        return cli_usage(&cli_validate, CLI_USAGE);
    int rc = CLI_OK, first = 1;
    if (json)
        printf("[");
    for (int i = optind; i < argc; i++) {
        int r = validate_one(argv[i], quiet, json, &first);
        if (r > rc)
            rc = r;
    }
    if (json)
        printf("]\n");
    return rc;
}

const cli_command cli_validate = {
    .name = "validate",
    .summary = "check schema files: JSON path, line and column of each problem",
    .usage =
        "usage: theus validate [-q|--quiet] [--json] SCHEMA...\n"
        "\n"
        "Check each SCHEMA file ('-': standard input) as theus_state_create would, without\n"
        "allocating its fields. A refusal is printed on stderr as\n"
        "  FILE:LINE:COLUMN: error: JSON-PATH: MESSAGE\n"
        "A valid schema prints its name, field count and total bytes (not with --quiet).\n"
        "\n"
        "  -q, --quiet  print nothing for valid schemas\n"
        "  --json       one JSON array on stdout: per file {\"file\", \"valid\", and \"name\",\n"
        "               \"fields\", \"bytes\" or \"path\", \"line\", \"column\", \"message\"}\n"
        "\n"
        "Exit status: 0 all valid, 1 some schema is invalid, 3 a file does not exist,\n"
        "4 a file could not be read.\n",
    .run = run,
};
