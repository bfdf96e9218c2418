/* Test fixture of tests/cli/cli_test.sh: makes the things `theus` inspects.
 *   fixture hold NAME     create shared state NAME with known values, print "ready", and
 *                         keep it open until standard input reaches end of file
 *   fixture abandon NAME  create it and exit without detaching (as if killed): the state
 *                         is left abandoned
 *   fixture file PATH     write a safetensors file with known values (f16, bf16, NaN, ...)
 *   fixture save PATH     save a private state with the values of `hold` as a safetensors
 *                         file (theus_state_save_safetensors)
 *   fixture durable DIR   a durable state in DIR: the values of `hold` (version 2), a full
 *                         checkpoint, then step += 1 twice (versions 3 and 4)
 * Only the installed public API. */
#include <theus/theus.h>
#include <theus/theus_durable.h>
#include <theus/theus_shared.h>

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *schema =
    "{\"name\": \"cli-fixture\", \"fields\": {"
    "  \"w\":    {\"dtype\": \"f32\", \"shape\": [2, 3]},"
    "  \"h\":    {\"dtype\": \"f16\", \"shape\": [2]},"
    "  \"step\": {\"dtype\": \"i64\", \"shape\": []},"
    "  \"flag\": {\"dtype\": \"bool\", \"shape\": [2], \"zone\": \"meta\"},"
    "  \"dev\":  {\"dtype\": \"f32\", \"shape\": [1], \"placement\": \"pinned\"}}}";

static int fill(theus_state *st)
{
    const float w[6] = {1, 2.5f, -3, 4, 0.1f, NAN};
    const unsigned short h[2] = {0x3c00, 0x7c00};   /* 1.0, +inf */
    const int64_t step = 42;
    const unsigned char flag[2] = {1, 0};
    theus_tx *tx = NULL;
    int rc = theus_tx_begin(st, NULL, &tx);
    if (rc == THEUS_OK)
        rc = theus_tx_write(tx, "w", NULL, w, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = theus_tx_write(tx, "h", NULL, h, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = theus_tx_write(tx, "step", NULL, &step, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        rc = theus_tx_write(tx, "flag", NULL, flag, THEUS_MEM_HOST);
    if (rc == THEUS_OK)
        return theus_tx_commit(tx, NULL);
    theus_tx_abort(tx);
    return rc;
}

static void put_le64(unsigned char *p, unsigned long long v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static int write_file(const char *path)
{
    /* a: f32 [2,2]; b: bf16 [3] = 1.5, -inf, nan; c: u64 [] = 2^63+1; d: F8_E4M3 [1] */
    const char *hdr_fmt =
        "{\"__metadata__\": {\"format\": \"pt\"},"
        "\"a\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]},"
        "\"b\": {\"dtype\": \"BF16\", \"shape\": [3], \"data_offsets\": [16, 22]},"
        "\"c\": {\"dtype\": \"U64\", \"shape\": [], \"data_offsets\": [22, 30]},"
        "\"d\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], \"data_offsets\": [30, 31]}}";
    unsigned char data[31];
    const float a[4] = {0.5f, -1, 3.25f, 1e30f};
    const unsigned short b[3] = {0x3fc0, 0xff80, 0x7fc0};
    const unsigned long long c = 9223372036854775809ull;
    memcpy(data, a, 16);
    memcpy(data + 16, b, 6);
    memcpy(data + 22, &c, 8);
    data[30] = 0x38;
    size_t hlen = strlen(hdr_fmt);
    unsigned char len8[8];
    put_le64(len8, hlen);
    FILE *f = fopen(path, "wb");
    if (!f)
        return 1;
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr_fmt, 1, hlen, f) == hlen &&
             fwrite(data, 1, sizeof data, f) == sizeof data;
    return fclose(f) == 0 && ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: fixture hold|abandon NAME | fixture file|save PATH | fixture durable DIR\n");
        return 2;
    }
    if (strcmp(argv[1], "file") == 0)
        return write_file(argv[2]);
    theus_state *st = NULL;
    if (strcmp(argv[1], "durable") == 0) {
        int rc = theus_state_open_durable(argv[2], schema, NULL, NULL, &st);
        if (rc == THEUS_OK)
            rc = fill(st);
        if (rc == THEUS_OK)
            rc = theus_state_checkpoint(st, 0, NULL);
        for (int k = 0; k < 2 && rc == THEUS_OK; k++) {
            const int64_t one = 1;
            theus_tx *tx = NULL;
            rc = theus_tx_begin(st, NULL, &tx);
            if (rc == THEUS_OK && (rc = theus_tx_add(tx, "step", NULL, &one, THEUS_MEM_HOST)) != THEUS_OK)
                theus_tx_abort(tx);
            else if (rc == THEUS_OK)
                rc = theus_tx_commit(tx, NULL);
        }
        if (rc != THEUS_OK)
            fprintf(stderr, "fixture: %s: %s\n", theus_strerror(rc), theus_last_error_message());
        theus_state_destroy(st);
        return rc == THEUS_OK ? 0 : 1;
    }
    if (strcmp(argv[1], "save") == 0) {
        int rc = theus_state_create(schema, NULL, &st);
        if (rc == THEUS_OK)
            rc = fill(st);
        if (rc == THEUS_OK)
            rc = theus_state_save_safetensors(st, argv[2]);
        if (rc != THEUS_OK)
            fprintf(stderr, "fixture: %s: %s\n", theus_strerror(rc), theus_last_error_message());
        theus_state_destroy(st);
        return rc == THEUS_OK ? 0 : 1;
    }
    int rc = theus_state_create_shared(argv[2], schema, NULL, NULL, &st);
    if (rc == THEUS_OK)
        rc = fill(st);
    if (rc != THEUS_OK) {
        fprintf(stderr, "fixture: %s: %s\n", theus_strerror(rc), theus_last_error_message());
        return 1;
    }
    if (strcmp(argv[1], "abandon") == 0)
        _exit(0);   /* no theus_state_destroy: the lease stays with a dead pid */
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (fread(buf, 1, sizeof buf, stdin) > 0) {
    }
    theus_state_destroy(st);
    return 0;
}
