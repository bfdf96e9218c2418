/* theus durability and interop: safetensors files (docs/durability.md). Nothing in this
 * header depends on CUDA or jansson. */
#ifndef THEUS_THEUS_DURABLE_H
#define THEUS_THEUS_DURABLE_H

#include "theus.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------
 * Standalone safetensors files
 * ------------------------------------------------------------------------------------ */

/**
 * @brief Write every field of the state except the `signal` zone to one safetensors file,
 *        as one committed version, atomically (a temporary file in the same directory,
 *        fsynced, renamed over @p path, directory fsynced).
 * @param[in] st   the state; commits wait only while the fields are copied (not while the
 *                 file is written).
 * @param[in] path destination; borrowed for the call.
 * @return THEUS_OK; THEUS_EINVAL (NULL argument); THEUS_ENOMEM (the copy needs as much host
 *         memory as the saved fields); THEUS_EIO (the file could not be written; no file is
 *         left behind, an existing @p path is untouched); THEUS_EDEVICE.
 * @note Thread-safe against commits on other threads. Must not be called by a thread that
 *       holds theus_state_hold_commits. The file's `__metadata__` holds "theus.format",
 *       "theus.version" (the state version saved), "theus.schema" and
 *       "theus.field_versions" (docs/durability.md).
 */
THEUS_API int theus_state_save_safetensors(theus_state *st, const char *path);

/** Which field a tensor of a loaded file goes to: return a field name (borrowed until the
 *  load returns), or NULL to skip the tensor. */
typedef const char *(*theus_tensor_map_fn)(const char *tensor, void *user);

/** Options of theus_state_load_safetensors_ex. Start from THEUS_LOAD_OPTIONS_INIT. */
typedef struct theus_load_options {
    /** 1: tensors that name no field (after @ref map) are skipped; 0 (default): an error. */
    int skip_unknown;
    /** NULL: a tensor loads into the field of the same name. Otherwise called once per
     *  tensor. */
    theus_tensor_map_fn map;
    void *map_user;
    /** 1: also load tensors into `signal` fields (default 0: skipped, as checkpoints do). */
    int load_signal;
} theus_load_options;

#define THEUS_LOAD_OPTIONS_INIT {0, NULL, NULL, 0}

/**
 * @brief Load a safetensors file (written by theus, Python `safetensors`, PyTorch ...) into
 *        the fields its tensors name, as one transaction.
 * @param[in] path the file; borrowed for the call.
 * @return THEUS_OK; THEUS_ENOENT (no such file); THEUS_ECORRUPT (the file is not a valid
 *         safetensors file: header length, JSON, dtype names, shapes, data_offsets — the
 *         message names the tensor and what is wrong); THEUS_ESCHEMA (a tensor's dtype or
 *         shape differs from its field's, or the values break a constraint; the message names
 *         the tensor); THEUS_ENOENT also for a tensor that names no field; THEUS_EPERM (a
 *         `const` field after the state's first commit); THEUS_ECONFLICT (a concurrent commit
 *         wrote a loaded field); THEUS_EIO; THEUS_ENOMEM. On any failure no field is changed.
 * @note Thread-safe. `const` fields are written with theus_state_init_field, so a file that
 *       holds one loads only while the state is at version 1. Fields the file does not name
 *       keep their values. Tensors of the `signal` zone are skipped (see the _ex options).
 */
THEUS_API int theus_state_load_safetensors(theus_state *st, const char *path);

/** @brief As theus_state_load_safetensors, with options (NULL: THEUS_LOAD_OPTIONS_INIT).
 *  @return as theus_state_load_safetensors; THEUS_EINVAL for bad options. */
THEUS_API int theus_state_load_safetensors_ex(theus_state *st, const char *path,
                                              const theus_load_options *opts);

#ifdef __cplusplus
}
#endif
#endif /* THEUS_THEUS_DURABLE_H */
