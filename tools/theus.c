/* theus: the command-line tool for theus states (tools/theus.1). This file holds main, the
 * subcommand table and what every subcommand shares; each subcommand group has its file. */
#include "cli.h"

#include <stdarg.h>
#include <string.h>

static const cli_command *const commands[] = {
    &cli_validate, &cli_ls, &cli_info, &cli_dump, &cli_diff, &cli_rm, &cli_cleanup,
    &cli_log, &cli_verify, &cli_checkpoint,
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

void cli_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "theus %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_status_exit(int status)
{
    switch (status) {
    case THEUS_OK: return CLI_OK;
    case THEUS_ENOENT: return CLI_NOENT;
    case THEUS_EINVAL: return CLI_USAGE;
    case THEUS_ESCHEMA: case THEUS_ECORRUPT: case THEUS_EBUSY: return CLI_FAIL;
    default: return CLI_ERROR;
    }
}

int cli_is_help(const char *arg)
{
    return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0;
}

int cli_usage(const cli_command *c, int rc)
{
    fputs(c->usage, rc == 0 ? stdout : stderr);
    return rc;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: theus [--version] [--help] COMMAND [ARGS]\n"
            "\n"
            "Inspect and manage theus states: schemas, shared states, durable state directories,\n"
            "safetensors files.\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(out, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
    fprintf(out,
            "\n"
            "'theus COMMAND --help' describes a command; man theus(1) has them all.\n"
            "Exit status: 0 done, 1 the answer is no (invalid, in use, corrupt), 2 bad usage,\n"
            "3 no such state, file or field, 4 any other error.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *name = argv[1];
    if (cli_is_help(name) || strcmp(name, "help") == 0) {
        if (strcmp(name, "help") == 0 && argc > 2) {
            for (size_t i = 0; i < NCOMMANDS; i++)
                if (strcmp(commands[i]->name, argv[2]) == 0)
                    return cli_usage(commands[i], CLI_OK);
            fprintf(stderr, "theus: no command '%s' (see theus --help)\n", argv[2]);
            return CLI_USAGE;
        }
        usage(stdout);
        return CLI_OK;
    }
    if (strcmp(name, "--version") == 0) {
        printf("theus %d.%d.%d\n", THEUS_VERSION_MAJOR, THEUS_VERSION_MINOR, THEUS_VERSION_PATCH);
        return CLI_OK;
    }
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strcmp(commands[i]->name, name) != 0)
            continue;
        for (int k = 2; k < argc; k++) {
            if (strcmp(argv[k], "--") == 0)
                break;
            if (cli_is_help(argv[k]))
                return cli_usage(commands[i], CLI_OK);
        }
        return commands[i]->run(argc - 1, argv + 1);
    }
    fprintf(stderr, "theus: no command '%s' (see theus --help)\n", name);
    return CLI_USAGE;
}
