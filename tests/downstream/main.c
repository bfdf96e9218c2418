/* A downstream program: only the installed public header and library. It creates a
 * state, commits a write and two adds, reads the result back and checks a conflict. */
#include <theus/theus.h>

#include <stdio.h>
#include <string.h>

static const char *schema =
    "{\"name\": \"downstream\", \"fields\": {"
    "  \"x\":    {\"dtype\": \"f32\", \"shape\": [4], \"constraints\": {\"finite\": true}},"
    "  \"step\": {\"dtype\": \"i64\", \"shape\": []}}}";

#define CHECK(call)                                                                      \
    do {                                                                                 \
        int rc_ = (call);                                                                \
        if (rc_ != THEUS_OK) {                                                           \
            fprintf(stderr, "downstream: %s: %s (%s)\n", #call, theus_strerror(rc_),     \
                    theus_last_error_message());                                         \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

int main(void)
{
    theus_state *st = NULL;
    CHECK(theus_state_create(schema, NULL, &st));

    const float init[4] = {1, 2, 3, 4}, delta[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    const int64_t one = 1;
    theus_tx *tx = NULL;
    CHECK(theus_tx_begin(st, NULL, &tx));
    CHECK(theus_tx_write(tx, "x", NULL, init, THEUS_MEM_HOST));
    CHECK(theus_tx_add(tx, "x", NULL, delta, THEUS_MEM_HOST));
    CHECK(theus_tx_add(tx, "step", NULL, &one, THEUS_MEM_HOST));
    uint64_t v = 0;
    CHECK(theus_tx_commit(tx, &v));

    /* Two transactions from the same base: the second one's write conflicts. */
    theus_tx *a = NULL, *b = NULL;
    CHECK(theus_tx_begin(st, NULL, &a));
    CHECK(theus_tx_begin(st, NULL, &b));
    CHECK(theus_tx_write(a, "x", NULL, init, THEUS_MEM_HOST));
    CHECK(theus_tx_write(b, "x", NULL, init, THEUS_MEM_HOST));
    CHECK(theus_tx_commit(a, NULL));
    int rc = theus_tx_commit(b, NULL);
    theus_conflict c;
    memset(&c, 0, sizeof c);
    if (rc != THEUS_ECONFLICT || theus_last_conflict(st, &c) != THEUS_OK ||
        c.kind != THEUS_CONFLICT_WRITE_WRITE || strcmp(c.field, "x") != 0) {
        fprintf(stderr, "downstream: expected a write-write conflict on x, got %s\n",
                theus_strerror(rc));
        return 1;
    }

    float x[4];
    int64_t step = 0;
    CHECK(theus_tx_begin(st, NULL, &tx));
    CHECK(theus_tx_read(tx, "x", NULL, x, THEUS_MEM_HOST));
    CHECK(theus_tx_read(tx, "step", NULL, &step, THEUS_MEM_HOST));
    theus_tx_abort(tx);
    int ok = v == 2 && theus_state_version(st) == 3 && step == 1 && x[0] == 1.0f && x[3] == 4.0f;
    printf("downstream: theus %d.%d.%d, version %llu, step %lld, x = [%g %g %g %g]: %s\n",
           THEUS_VERSION_MAJOR, THEUS_VERSION_MINOR, THEUS_VERSION_PATCH,
           (unsigned long long)theus_state_version(st), (long long)step, x[0], x[1], x[2], x[3],
           ok ? "OK" : "WRONG");
    theus_state_destroy(st);
    return ok ? 0 : 1;
}
