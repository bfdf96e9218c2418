/* CRC32C: slicing-by-8 over tables built once, the SSE4.2 instruction on x86-64 (three
 * independent streams over long buffers, joined with a precomputed shift), and the GF(2)
 * shift operators that combine the CRCs of pieces. */
#include "durable/crc32c.h"
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void build_tables(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

uint32_t crc32c_portable(uint32_t crc, const void *buf, size_t n)
{
    pthread_once(&table_once, build_tables);
    const unsigned char *p = buf;
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc; /* little-endian hosts only (x86-64, aarch64): see the build's check */
        crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^
              table[4][lo >> 24] ^ table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
              table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}


/* ---- shift operators: a CRC register after zero bytes is a linear map of the register ---- */

static uint32_t mat_times(const uint32_t *m, uint32_t v)
{
    uint32_t r = 0;
    for (int i = 0; v; i++, v >>= 1)
        if (v & 1u)
            r ^= m[i];
    return r;
}

static void mat_square(uint32_t *sq, const uint32_t *m)
{
    for (int i = 0; i < 32; i++)
        sq[i] = mat_times(m, m[i]);
}

void crc32c_shift_init(crc32c_shift *op, uint64_t len)
{
    /* One zero bit, squared up to one byte, then square-and-multiply over @len's bits. */
    uint32_t bit[32], a[32], b[32];
    bit[0] = 0x82F63B78u;
    for (int i = 1; i < 32; i++)
        bit[i] = 1u << (i - 1);
    mat_square(a, bit); /* 2 bits */
    mat_square(b, a);   /* 4 bits */
    mat_square(a, b);   /* 8 bits: one byte */
    for (int i = 0; i < 32; i++)
        op->m[i] = 1u << i; /* identity */
    uint32_t *pow = a, *tmp = b;
    while (len) {
        if (len & 1u) {
            uint32_t r[32];
            for (int i = 0; i < 32; i++)
                r[i] = mat_times(pow, op->m[i]);
            memcpy(op->m, r, sizeof r);
        }
        len >>= 1;
        if (len) {
            mat_square(tmp, pow);
            uint32_t *t = pow;
            pow = tmp;
            tmp = t;
        }
    }
}

uint32_t crc32c_shift_apply(const crc32c_shift *op, uint32_t crc)
{
    return mat_times(op->m, crc);
}

uint32_t crc32c_combine_op(const crc32c_shift *op, uint32_t crc_a, uint32_t crc_b)
{
    return mat_times(op->m, crc_a) ^ crc_b;
}

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    crc32c_shift op;
    crc32c_shift_init(&op, len_b);
    return crc32c_combine_op(&op, crc_a, crc_b);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* Bytes per stream of one three-stream round; the shift over one stream is built once. */
#define CRC_LANE 8192u
static crc32c_shift lane_shift;
static pthread_once_t lane_once = PTHREAD_ONCE_INIT;

static void build_lane_shift(void)
{
    crc32c_shift_init(&lane_shift, CRC_LANE);
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const void *buf,
                                                                size_t n)
{
    const unsigned char *p = buf;
    uint64_t c = ~crc;
    if (n >= 3 * CRC_LANE) {
        /* The instruction's latency is three times its issue rate: three independent
         * registers over three consecutive lanes, joined as raw registers (no pre- or
         * post-inversion in between: register(a || b) = shift(register(a)) ^ register0(b)). */
        pthread_once(&lane_once, build_lane_shift);
        while (n >= 3 * CRC_LANE) {
            uint64_t c1 = 0, c2 = 0;
            for (size_t i = 0; i < CRC_LANE; i += 8) {
                uint64_t v0, v1, v2;
                memcpy(&v0, p + i, 8);
                memcpy(&v1, p + CRC_LANE + i, 8);
                memcpy(&v2, p + 2 * CRC_LANE + i, 8);
                c = __builtin_ia32_crc32di(c, v0);
                c1 = __builtin_ia32_crc32di(c1, v1);
                c2 = __builtin_ia32_crc32di(c2, v2);
            }
            uint32_t r = crc32c_shift_apply(&lane_shift, (uint32_t)c) ^ (uint32_t)c1;
            c = crc32c_shift_apply(&lane_shift, r) ^ (uint32_t)c2;
            p += 3 * CRC_LANE;
            n -= 3 * CRC_LANE;
        }
    }
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}

uint32_t crc32c(uint32_t crc, const void *buf, size_t n)
{
    static _Atomic int have = -1;
    int h = atomic_load_explicit(&have, memory_order_relaxed);
    if (h < 0) {
        __builtin_cpu_init();
        h = __builtin_cpu_supports("sse4.2") ? 1 : 0;
        atomic_store_explicit(&have, h, memory_order_relaxed);
    }
    return h ? crc32c_sse42(crc, buf, n) : crc32c_portable(crc, buf, n);
}
#else
uint32_t crc32c(uint32_t crc, const void *buf, size_t n)
{
    return crc32c_portable(crc, buf, n);
}
#endif

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "theus's file formats assume a little-endian host");
