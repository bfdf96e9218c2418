/* Element-level operations on every dtype: sizes, names, ADD with the semantics of
 * docs/guide.md (f16/bf16 through f32 with round-to-nearest-even, wrapping integers, bool
 * as logical or), and constraint checks for the schema gatekeeper. */
#ifndef THEUS_SRC_DTYPE_H
#define THEUS_SRC_DTYPE_H
#include "theus/theus.h"
#include <stddef.h>
#include <stdint.h>

/* A field's constraints (schema "constraints"), checked by dtype_check. */
typedef struct theus_constraints {
    int has_min, has_max, finite;
    double min, max;
} theus_constraints;

int dtype_is_float(theus_dtype dt);      /* f16, bf16, f32, f64 */
int dtype_from_name(const char *name, theus_dtype *out); /* 0 ok, -1 unknown */

float    theus_f16_to_f32(uint16_t h);
uint16_t theus_f32_to_f16(float f);      /* round to nearest even; NaN stays NaN */
float    theus_bf16_to_f32(uint16_t b);
uint16_t theus_f32_to_bf16(float f);     /* round to nearest even; NaN stays NaN */

/* dst[i] = dst[i] + src[i] for @n elements of @dt. dst and src do not overlap. */
void dtype_add(theus_dtype dt, void *dst, const void *src, size_t n);

/* Value of element @i of @buf as a double (for constraint checks and messages). */
double dtype_get(theus_dtype dt, const void *buf, size_t i);

/* Integer bounds as exact integer ranges (ceil of min, floor of max, clamped to the type's
 * width): 0 when no integer satisfies them (a NaN bound included), else 1 with [*lo, *hi]. */
int dtype_signed_range(const theus_constraints *c, int64_t *lo, int64_t *hi);
int dtype_unsigned_range(const theus_constraints *c, uint64_t *lo, uint64_t *hi);

/* Check @n elements against @c. Returns the index of the first violating element, or
 * SIZE_MAX when all pass. NaN fails `finite`, and fails min/max as well. */
size_t dtype_check(theus_dtype dt, const void *buf, size_t n, const theus_constraints *c);

#endif
