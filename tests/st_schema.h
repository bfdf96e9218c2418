/* The schema with one field of every dtype (and a signal field, which files leave out) that
 * tests/test_safetensors.c and tests/st_helper.c (the Python interop helper) both use.
 * @F64_PLACEMENT: "host", "pinned" or "device", so that each user covers a non-host path. */
#ifndef THEUS_TESTS_ST_SCHEMA_H
#define THEUS_TESTS_ST_SCHEMA_H

#define ST_ALL_DTYPES_SCHEMA(NAME, F64_PLACEMENT)                                             \
    "{\"name\": \"" NAME "\", \"fields\": {"                                                \
    "\"b\": {\"dtype\": \"bool\", \"shape\": [5]},"                                         \
    "\"u8\": {\"dtype\": \"u8\", \"shape\": [3, 2]},"                                       \
    "\"i8\": {\"dtype\": \"i8\", \"shape\": [4]},"                                          \
    "\"u16\": {\"dtype\": \"u16\", \"shape\": [3]},"                                        \
    "\"i16\": {\"dtype\": \"i16\", \"shape\": [2, 2]},"                                     \
    "\"u32\": {\"dtype\": \"u32\", \"shape\": [3]},"                                        \
    "\"i32\": {\"dtype\": \"i32\", \"shape\": [2, 1, 2]},"                                  \
    "\"u64\": {\"dtype\": \"u64\", \"shape\": [2]},"                                        \
    "\"i64\": {\"dtype\": \"i64\", \"shape\": []},"                                         \
    "\"f16\": {\"dtype\": \"f16\", \"shape\": [6]},"                                        \
    "\"bf16\": {\"dtype\": \"bf16\", \"shape\": [2, 3]},"                                   \
    "\"f32\": {\"dtype\": \"f32\", \"shape\": [2, 3]},"                                     \
    "\"f64\": {\"dtype\": \"f64\", \"shape\": [3], \"placement\": \"" F64_PLACEMENT "\"},"  \
    "\"sig\": {\"dtype\": \"f32\", \"shape\": [2], \"zone\": \"signal\"}}}"

#endif
