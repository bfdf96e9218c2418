/* The `theus` command-line tool: what its subcommands share (exit codes, the objects it
 * inspects, value formatting, progress). Internal to tools/; see tools/theus.1. */
#ifndef THEUS_TOOLS_CLI_H
#define THEUS_TOOLS_CLI_H

#include "theus/theus.h"
#include "theus/theus_shared.h"

#include <stdint.h>
#include <stdio.h>

/* Exit statuses (tools/theus.1, EXIT STATUS). */
enum {
    CLI_OK = 0,        /* done; validate: the schema is valid */
    CLI_FAIL = 1,      /* the answer is "no": invalid schema, state in use, corrupt file */
    CLI_USAGE = 2,     /* bad command line */
    CLI_NOENT = 3,     /* no such shared state, file or field */
    CLI_ERROR = 4      /* anything else went wrong (I/O, memory, permissions, GPU) */
};

/* One subcommand: its name, a line for `theus --help`, its usage text and its body. */
typedef struct cli_command {
    const char *name;
    const char *summary;
    const char *usage;   /* full --help text */
    int (*run)(int argc, char **argv);   /* argv[0] is the subcommand's name */
} cli_command;

extern const cli_command cli_validate, cli_ls, cli_info, cli_dump, cli_diff, cli_rm, cli_cleanup,
    cli_log, cli_verify, cli_checkpoint;

/* Messages: "theus <cmd>: ..." on stderr. */
void cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Map a THEUS_* status to an exit status. */
int cli_status_exit(int status);
/* Standard option handling: 1 when argv[i] is -h/--help (the usage was printed). */
int cli_is_help(const char *arg);
int cli_usage(const cli_command *c, int rc);   /* prints usage (stdout for 0, else stderr) */

/* ---- what info and dump look at: a shared state or a safetensors file ---------------- */
typedef enum cli_kind { CLI_TARGET_SHARED = 0, CLI_TARGET_SAFETENSORS, CLI_TARGET_DURABLE } cli_kind;

typedef struct cli_field {
    char name[256];
    int dtype;                    /* a theus_dtype, or -1 for a dtype theus lacks */
    char dtype_name[16];          /* as stored ("f32", or the file's "F8_E4M3") */
    int ndim;
    int64_t shape[THEUS_MAX_DIMS];
    uint64_t nbytes;
    const char *placement;        /* where it lives now: device/pinned/host, or "file" */
    const char *requested;        /* the schema's placement, or NULL */
    const char *zone;             /* NULL for files */
    uint64_t version;             /* last version that wrote it; 0: not known */
    uint64_t offset;              /* files: byte offset of the data in the file */
} cli_field;

typedef struct cli_target {
    cli_kind kind;
    char label[4096];             /* the name or path as given */
    size_t nfields;
    cli_field *fields;
    uint64_t version;             /* the state version; 0 when not known */
    char schema_name[THEUS_NAME_MAX + 1];
    /* shared states, durable directories (a read-only rebuild of one version) */
    theus_state *st;              /* NULL when it could not be opened (summary only) */
    uint64_t oldest, newest;      /* durable: the versions the directory can rebuild */
    theus_shared_summary summary;
    int open_status;              /* why st is NULL */
    /* safetensors files */
    const unsigned char *map;     /* the whole file, mapped read-only */
    size_t map_len;
    uint64_t header_len;
    char *metadata_json;          /* the "__metadata__" object as JSON text, or NULL */
    int theus_file;               /* its metadata says theus wrote it */
    char *load_problem;           /* why theus_state_load_safetensors would refuse the file,
                                     or NULL when it would accept it */
} cli_target;

/* Open @spec: a durable state directory (DIR, or DIR@VERSION for an older version), an
 * existing file (safetensors), else a shared state name. @need_values: open a shared
 * state's fields (info can do with the summary alone). Returns a THEUS_* status and writes
 * a message into @err. */
int cli_target_open(const char *spec, int need_values, cli_target *t, char *err, size_t errlen);
void cli_target_close(cli_target *t);
int cli_target_find(const cli_target *t, const char *field);
/* Read region r[k] of field idx[k] into dst[k] (C-contiguous, the field's dtype), for k
 * in [0, n), all from one version of a shared state (t->version is set to it). */
int cli_target_read(cli_target *t, size_t n, const size_t *idx, const theus_region *r,
                    void *const *dst, char *err, size_t errlen);

/* ---- safetensors (tools/safetensors_file.c) ------------------------------------------ */
/* Parse the header of the mapped file @map/@len into t->fields etc. */
int cli_safetensors_parse(cli_target *t, char *err, size_t errlen);

/* ---- values (tools/values.c) --------------------------------------------------------- */
/* "FIELD" or "FIELD[REGION]" with REGION a comma-separated list of i, a:b, a:, :b, : per
 * leading dimension (missing dimensions: whole). Negative indices count from the end. */
int cli_parse_selector(const char *sel, char *field, size_t fieldlen, char *region, size_t regionlen);
int cli_parse_region(const char *text, const cli_field *f, theus_region *r, char *err, size_t errlen);
/* Write element @i of @buf as text (json: JSON, with NaN/Infinity as strings). */
void cli_put_value(FILE *out, int dtype, const void *buf, size_t i, int json);
/* Write a string as a JSON string literal. */
void cli_put_json_string(FILE *out, const char *s);

/* ---- progress on stderr (tools/progress.c) ------------------------------------------- */
typedef struct cli_progress {
    int on;
    const char *what;
    uint64_t total, done;
    double t0, last;
} cli_progress;
/* Progress lines on stderr, at most a few a second, erased at the end. @mode: -1 never,
 * 1 always, 0 when stderr is a terminal. Nothing is shown for operations that end within
 * about half a second. */
void cli_progress_start(cli_progress *p, int mode, const char *what, uint64_t total);
void cli_progress_add(cli_progress *p, uint64_t n);
void cli_progress_end(cli_progress *p);

#endif
