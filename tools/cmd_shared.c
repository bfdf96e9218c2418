/* theus ls, rm, cleanup: this user's shared states (theus/theus_shared.h). */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static int list_all(theus_shared_summary **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    size_t cap = 16;
    for (;;) {
        theus_shared_summary *v = calloc(cap, sizeof *v);
        if (!v)
            return THEUS_ENOMEM;
        size_t count = 0;
        int rc = theus_shared_list(v, cap, &count);
        if (rc != THEUS_OK) {
            free(v);
            return rc;
        }
        if (count <= cap) {
            *out = v;
            *n = count;
            return THEUS_OK;
        }
        free(v);
        cap = count + 16;   /* more appeared meanwhile: try again with room to spare */
    }
}

static const char *status_word(int status)
{
    switch (status) {
    case THEUS_OK: return "ok";
    case THEUS_ECORRUPT: return "corrupt";
    case THEUS_EPERM: return "foreign";
    case THEUS_ENOENT: return "gone";
    default: return "unusable";
    }
}

static void put_summary_json(FILE *out, const theus_shared_summary *s)
{
    fprintf(out, "{\"name\": ");
    cli_put_json_string(out, s->name);
    fprintf(out, ", \"status\": \"%s\"", status_word(s->status));
    if (s->status == THEUS_OK) {
        fprintf(out, ", \"schema\": ");
        cli_put_json_string(out, s->schema_name);
        fprintf(out,
                ", \"version\": %llu, \"fields\": %u, \"processes\": %u, \"max_processes\": %u, "
                "\"creator_pid\": %d, \"segment_bytes\": %llu, \"redo_bytes\": %llu, "
                "\"abandoned\": %s, \"recovered\": %llu, \"dropped\": %llu",
                (unsigned long long)s->version, s->nfields, s->processes, s->max_processes,
                (int)s->creator_pid, (unsigned long long)s->segment_bytes,
                (unsigned long long)s->redo_bytes, s->abandoned ? "true" : "false",
                (unsigned long long)s->recovered, (unsigned long long)s->dropped);
    }
    fprintf(out, "}");
}

static void human_bytes(uint64_t b, char *buf, size_t n)
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, n, "%llu B", (unsigned long long)b);
    else
        snprintf(buf, n, "%.1f %s", v, unit[u]);
}

static int run_ls(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {0, 0, 0, 0}};
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "j", opts, NULL)) != -1) {
        if (c != 'j')
            return cli_usage(&cli_ls, CLI_USAGE);
        json = 1;
    }
    if (optind != argc)
        return cli_usage(&cli_ls, CLI_USAGE);
    theus_shared_summary *v;
    size_t n;
    int rc = list_all(&v, &n);
    if (rc != THEUS_OK) {
        cli_error("ls", "%s (%s)", theus_strerror(rc), theus_last_error_message());
        return cli_status_exit(rc);
    }
    if (json) {
        printf("[");
        for (size_t i = 0; i < n; i++) {
            printf(i ? ",\n " : "");
            put_summary_json(stdout, &v[i]);
        }
        printf("]\n");
    } else if (n == 0) {
        printf("no shared states\n");
    } else {
        int wn = 4, ws = 6;   /* columns as wide as the longest name and schema name */
        for (size_t i = 0; i < n; i++) {
            if ((int)strlen(v[i].name) > wn)
                wn = (int)strlen(v[i].name);
            if (v[i].status == THEUS_OK && (int)strlen(v[i].schema_name) > ws)
                ws = (int)strlen(v[i].schema_name);
        }
        printf("%-*s  %-*s  %8s  %9s  %6s  %10s  %s\n", wn, "NAME", ws, "SCHEMA", "VERSION",
               "PROCESSES", "FIELDS", "SIZE", "STATUS");
        for (size_t i = 0; i < n; i++) {
            const theus_shared_summary *s = &v[i];
            if (s->status != THEUS_OK) {
                printf("%-*s  %-*s  %8s  %9s  %6s  %10s  %s\n", wn, s->name, ws, "-", "-", "-",
                       "-", "-", status_word(s->status));
                continue;
            }
            char size[32], procs[32];
            human_bytes(s->segment_bytes, size, sizeof size);
            snprintf(procs, sizeof procs, "%u/%u", s->processes, s->max_processes);
            printf("%-*s  %-*s  %8llu  %9s  %6u  %10s  %s\n", wn, s->name, ws, s->schema_name,
                   (unsigned long long)s->version, procs, s->nfields, size,
                   s->abandoned ? "abandoned" : "live");
        }
    }
    free(v);
    return CLI_OK;
}

static int run_rm(int argc, char **argv)
{
    static const struct option opts[] = {{"force", no_argument, NULL, 'f'}, {0, 0, 0, 0}};
    int force = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "f", opts, NULL)) != -1) {
        if (c != 'f')
            return cli_usage(&cli_rm, CLI_USAGE);
        force = 1;
    }
    if (optind >= argc)
        return cli_usage(&cli_rm, CLI_USAGE);
    int worst = CLI_OK;
    for (int i = optind; i < argc; i++) {
        const char *name = argv[i];
        theus_shared_summary s;
        int rc = theus_shared_info(name, &s);
        if (rc == THEUS_OK && s.processes > 0 && !s.abandoned && !force) {
            cli_error("rm", "%s: in use by %u process%s (--force removes the name anyway)",
                      name, s.processes, s.processes == 1 ? "" : "es");
            if (worst < CLI_FAIL)
                worst = CLI_FAIL;
            continue;
        }
        rc = theus_shared_remove(name);
        if (rc != THEUS_OK) {
            cli_error("rm", "%s: %s", name, rc == THEUS_ENOENT ? "no such shared state"
                                                               : theus_last_error_message());
            int e = cli_status_exit(rc);
            if (e > worst)
                worst = e;
        }
    }
    return worst;
}

static int run_cleanup(int argc, char **argv)
{
    static const struct option opts[] = {{"dry-run", no_argument, NULL, 'n'},
                                         {"quiet", no_argument, NULL, 'q'}, {0, 0, 0, 0}};
    int dry = 0, quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "nq", opts, NULL)) != -1) {
        if (c == 'n')
            dry = 1;
        else if (c == 'q')
            quiet = 1;
        else
            return cli_usage(&cli_cleanup, CLI_USAGE);
    }
    if (optind != argc)
        return cli_usage(&cli_cleanup, CLI_USAGE);
    theus_shared_summary *v;
    size_t n;
    int rc = list_all(&v, &n);
    if (rc != THEUS_OK) {
        cli_error("cleanup", "%s (%s)", theus_strerror(rc), theus_last_error_message());
        return cli_status_exit(rc);
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i].status == THEUS_OK && v[i].abandoned) {
            if (!quiet)
                printf("%s %s\n", dry ? "would remove" : "removing", v[i].name);
        }
    }
    free(v);
    if (dry)
        return CLI_OK;
    size_t removed = 0;
    rc = theus_shared_cleanup(&removed);
    if (rc != THEUS_OK) {
        cli_error("cleanup", "%s (%s)", theus_strerror(rc), theus_last_error_message());
        return cli_status_exit(rc);
    }
    if (!quiet)
        printf("removed %zu segment%s\n", removed, removed == 1 ? "" : "s");
    return CLI_OK;
}

const cli_command cli_ls = {
    .name = "ls",
    .summary = "list this user's shared states",
    .usage =
        "usage: theus ls [--json]\n"
        "\n"
        "List this user's shared states (/dev/shm/theus-<uid>-*), sorted by name: name,\n"
        "schema name, version, live processes / lease slots, fields, segment size, and\n"
        "status: live, abandoned (no live process holds it: 'theus cleanup' removes it),\n"
        "or corrupt/foreign/unusable for segments that are not usable theus states.\n"
        "\n"
        "  --json  a JSON array of objects: name, status, schema, version, fields, processes,\n"
        "          max_processes, creator_pid, segment_bytes, redo_bytes, abandoned,\n"
        "          recovered, dropped\n"
        "\n"
        "Exit status: 0, or 4 when the shared memory directory cannot be read.\n",
    .run = run_ls,
};

const cli_command cli_rm = {
    .name = "rm",
    .summary = "remove shared states by name",
    .usage =
        "usage: theus rm [-f|--force] NAME...\n"
        "\n"
        "Remove the shared state NAME (theus_shared_remove). A state that live processes\n"
        "hold is refused unless --force: then the name goes at once, the processes keep\n"
        "working on their mapping and the memory goes with the last of them.\n"
        "\n"
        "Exit status: 0 all removed, 1 some state is in use (without --force), 3 no such\n"
        "state, 4 another error (another user's segment).\n",
    .run = run_rm,
};

const cli_command cli_cleanup = {
    .name = "cleanup",
    .summary = "remove shared states whose processes all died",
    .usage =
        "usage: theus cleanup [-n|--dry-run] [-q|--quiet]\n"
        "\n"
        "Remove every shared state of this user whose processes all died, and segments\n"
        "left by creators killed during creation (theus_shared_cleanup). States in use and\n"
        "unusable segments are left alone ('theus rm' removes those).\n"
        "\n"
        "  -n, --dry-run  only list what would be removed\n"
        "  -q, --quiet    print nothing\n"
        "\n"
        "Exit status: 0, or 4 when the shared memory directory cannot be read.\n",
    .run = run_cleanup,
};
