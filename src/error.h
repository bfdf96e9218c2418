/* Per-thread error detail: every failing call records why, for theus_state_last_error and
 * theus_last_conflict. Thread-local, so concurrent threads never see each other's errors. */
#ifndef THEUS_SRC_ERROR_H
#define THEUS_SRC_ERROR_H
#include "theus/theus.h"

#if defined(__GNUC__)
#define THEUS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define THEUS_PRINTF(a, b)
#endif

/* Record @code with a message for state @st (NULL: no state); returns @code. */
int err_set(const theus_state *st, int code, const char *fmt, ...) THEUS_PRINTF(3, 4);
/* As err_set, but keep the conflict detail of the thread's last error on @st. */
int err_set_keep_conflict(const theus_state *st, int code, const char *fmt, ...) THEUS_PRINTF(3, 4);
/* As err_set, followed by ": " and the detail a lower layer recorded last for this same
 * code (a backend, which records with no state, or a lower layer of @st itself): the way
 * to add context to a callee's error. Never pass theus_last_error_message() to err_set:
 * it is the buffer being written. */
int err_wrap(const theus_state *st, int code, const char *fmt, ...) THEUS_PRINTF(3, 4);
/* The code of the thread's last recorded error (THEUS_OK after err_clear). */
int err_code(void);
/* Forget the thread's last error (before calling code that may or may not record one). */
void err_clear(void);
/* Record a THEUS_ECONFLICT described by @c; returns THEUS_ECONFLICT. */
int err_conflict(const theus_state *st, const theus_conflict *c);

#endif
