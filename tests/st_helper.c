/* Helper for tests/python/test_interop.py (not a suite): makes theus write and read
 * safetensors files so that Python's reference implementation can check them.
 *   st_helper save OUT        a state of every dtype, random contents, saved to OUT
 *   st_helper load IN         load IN into a fresh state of every dtype
 *   st_helper durable DIR     a durable state in DIR: 2 commits, full checkpoint, a commit of
 *                             one field, incremental checkpoint, one more commit
 * Each prints the state as JSON: {"version": v, "fields": {name: hex bytes}} (durable: one
 * line at each checkpoint). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <theus/theus.h>
#include <theus/theus_durable.h>

#include "st_schema.h"

static const char *schema = ST_ALL_DTYPES_SCHEMA("interop", "pinned");

static int die(const char *what, int rc)
{
    fprintf(stderr, "st_helper: %s: %s: %s\n", what, theus_strerror(rc), theus_last_error_message());
    return 1;
}

static int fill(theus_state *st, int only_u8)
{
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(st, NULL, &tx);
    if (rc)
        return die("begin", rc);
    for (size_t i = 0; i < theus_state_field_count(st); i++) {
        const char *name = theus_state_field_name(st, i);
        if (only_u8 && strcmp(name, "u8"))
            continue;
        theus_field_info fi;
        theus_state_field_info(st, name, &fi);
        unsigned char buf[256];
        for (size_t k = 0; k < fi.nbytes; k++)
            buf[k] = fi.dtype == THEUS_DTYPE_BOOL ? (unsigned char)(rand() & 1)
                                                  : (unsigned char)rand();
        if ((rc = theus_tx_write(tx, name, NULL, buf, THEUS_MEM_HOST)))
            return die("write", rc);
    }
    if ((rc = theus_tx_commit(tx, NULL)))
        return die("commit", rc);
    return 0;
}

static int dump(theus_state *st)
{
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(st, NULL, &tx);
    if (rc)
        return die("begin", rc);
    printf("{\"version\": %llu, \"fields\": {", (unsigned long long)theus_state_version(st));
    for (size_t i = 0; i < theus_state_field_count(st); i++) {
        const char *name = theus_state_field_name(st, i);
        theus_field_info fi;
        theus_state_field_info(st, name, &fi);
        unsigned char buf[256];
        if ((rc = theus_tx_read(tx, name, NULL, buf, THEUS_MEM_HOST)))
            return die("read", rc);
        printf("%s\"%s\": \"", i ? ", " : "", name);
        for (size_t k = 0; k < fi.nbytes; k++)
            printf("%02x", buf[k]);
        printf("\"");
    }
    printf("}}\n");
    theus_tx_abort(tx);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "save") && strcmp(argv[1], "load") &&
                      strcmp(argv[1], "durable"))) {
        fprintf(stderr, "usage: st_helper save|load|durable FILE\n");
        return 2;
    }
    theus_state *st = NULL;
    int rc;
    if (strcmp(argv[1], "durable") == 0) {
        srand(777);
        if ((rc = theus_state_open_durable(argv[2], schema, NULL, NULL, &st)))
            return die("open_durable", rc);
        if (fill(st, 0) || fill(st, 0))
            return 1;
        if ((rc = theus_state_checkpoint(st, 0, NULL)))
            return die("checkpoint", rc);
        if (dump(st) || fill(st, 1))
            return 1;
        if ((rc = theus_state_checkpoint(st, 1, NULL)))
            return die("checkpoint", rc);
        if (dump(st) || fill(st, 0))
            return 1;
        theus_state_destroy(st);
        return 0;
    }
    rc = theus_state_create(schema, NULL, &st);
    if (rc)
        return die("create", rc);
    if (strcmp(argv[1], "save") == 0) {
        srand(12345);
        if (fill(st, 0) || fill(st, 0))
            return 1;
        if ((rc = theus_state_save_safetensors(st, argv[2])))
            return die("save", rc);
    } else {
        theus_load_options o = THEUS_LOAD_OPTIONS_INIT;
        o.skip_unknown = 1;
        if ((rc = theus_state_load_safetensors_ex(st, argv[2], &o)))
            return die("load", rc);
    }
    rc = dump(st);
    theus_state_destroy(st);
    return rc;
}
