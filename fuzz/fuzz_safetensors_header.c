/* libFuzzer target: the safetensors header reader (src/durable/safetensors.c) on arbitrary
 * bytes taken as a whole file. Built by fuzz/build.sh. */
#include "durable/safetensors.h"
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[512];
    uint64_t len;
    if (size < 8 || st_header_length(data, size, &len, why, sizeof why) != 0)
        return 0;
    st_header h;
    if (st_header_parse((const char *)data + 8, (size_t)len, size - 8 - len, &h, why,
                        sizeof why) == 0) {
        for (size_t i = 0; i < h.ntensors; i++)
            if (h.tensors[i].end > size - 8 - len || h.tensors[i].end < h.tensors[i].begin)
                __builtin_trap(); /* a checked header never points outside the file */
        st_header_free(&h);
    }
    return 0;
}
