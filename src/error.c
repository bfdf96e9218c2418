/* Status names and the thread-local last-error record. */
#include "error.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct last_error {
    const theus_state *st;
    int code;
    char msg[512];
    theus_conflict conflict;
} last_error;

static _Thread_local last_error tls_err;

const char *theus_strerror(int status)
{
    switch (status) {
    case THEUS_OK: return "THEUS_OK: success";
    case THEUS_EINVAL: return "THEUS_EINVAL: invalid argument";
    case THEUS_ENOMEM: return "THEUS_ENOMEM: out of memory";
    case THEUS_ECONFLICT: return "THEUS_ECONFLICT: conflicting concurrent commit";
    case THEUS_ESCHEMA: return "THEUS_ESCHEMA: schema invalid or constraint violated";
    case THEUS_EPERM: return "THEUS_EPERM: access not permitted by contract or zone";
    case THEUS_ENOENT: return "THEUS_ENOENT: no such field or file";
    case THEUS_EIO: return "THEUS_EIO: input/output error";
    case THEUS_EDEVICE: return "THEUS_EDEVICE: GPU runtime error";
    case THEUS_ENODEV: return "THEUS_ENODEV: no usable GPU";
    case THEUS_EBUSY: return "THEUS_EBUSY: busy or retry budget exhausted";
    case THEUS_ECORRUPT: return "THEUS_ECORRUPT: corrupt or foreign data";
    /* The process layer's codes (theus/theus_process.h). */
    case -12: return "THEUS_EUNDECLARED: a process returned a status it did not declare";
    case -13: return "THEUS_ETIMEDOUT: the wait timed out";
    default: return "unknown theus status";
    }
}

int err_set(const theus_state *st, int code, const char *fmt, ...)
{
    tls_err.st = st;
    tls_err.code = code;
    memset(&tls_err.conflict, 0, sizeof tls_err.conflict);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_err.msg, sizeof tls_err.msg, fmt, ap);
    va_end(ap);
    return code;
}

int err_set_keep_conflict(const theus_state *st, int code, const char *fmt, ...)
{
    theus_conflict keep = tls_err.conflict;
    const theus_state *keep_st = tls_err.st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_err.msg, sizeof tls_err.msg, fmt, ap);
    va_end(ap);
    tls_err.st = st;
    tls_err.code = code;
    tls_err.conflict = keep_st == st ? keep : (theus_conflict){0};
    return code;
}

int err_wrap(const theus_state *st, int code, const char *fmt, ...)
{
    /* Only a detail a backend just recorded for this very code (backends record with no
     * state) is carried over; anything older would mislead. */
    char inner[sizeof tls_err.msg] = "";
    if ((tls_err.st == NULL || tls_err.st == st) && tls_err.code == code && code != THEUS_OK)
        memcpy(inner, tls_err.msg, sizeof inner);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tls_err.msg, sizeof tls_err.msg, fmt, ap);
    va_end(ap);
    if (inner[0] && n >= 0 && (size_t)n < sizeof tls_err.msg) {
        /* ": " and the inner detail, cut to what is left of the buffer (on purpose). */
        size_t room = sizeof tls_err.msg - 1 - (size_t)n;
        char *at = tls_err.msg + n;
        size_t len = strlen(inner);
        if (room >= 2) {
            memcpy(at, ": ", 2);
            at += 2;
            room -= 2;
            len = len < room ? len : room;
            memcpy(at, inner, len);
            at += len;
        }
        *at = '\0';
    }
    tls_err.st = st;
    tls_err.code = code;
    memset(&tls_err.conflict, 0, sizeof tls_err.conflict);
    return code;
}

int err_code(void)
{
    return tls_err.code;
}

void err_clear(void)
{
    tls_err.st = NULL;
    tls_err.code = THEUS_OK;
    tls_err.msg[0] = '\0';
    memset(&tls_err.conflict, 0, sizeof tls_err.conflict);
}

int err_conflict(const theus_state *st, const theus_conflict *c)
{
    static const char *kinds[] = {"none", "write-write", "read-write", "strict", "stale base"};
    const char *kind = (unsigned)c->kind < 5 ? kinds[c->kind] : "?";
    if (c->field[0])
        err_set(st, THEUS_ECONFLICT,
                "conflict (%s): field '%s' was written by version %llu after base %llu", kind,
                c->field, (unsigned long long)c->version, (unsigned long long)c->base);
    else
        err_set(st, THEUS_ECONFLICT, "conflict (%s): version %llu committed after base %llu",
                kind, (unsigned long long)c->version, (unsigned long long)c->base);
    tls_err.conflict = *c;
    return THEUS_ECONFLICT;
}

const char *theus_state_last_error(const theus_state *st)
{
    return tls_err.st == st ? tls_err.msg : "";
}

const char *theus_last_error_message(void)
{
    return tls_err.msg;
}

int theus_last_conflict(const theus_state *st, theus_conflict *out)
{
    if (!out)
        return THEUS_EINVAL;
    if (tls_err.st != st || tls_err.conflict.kind == THEUS_CONFLICT_NONE)
        return THEUS_ENOENT;
    *out = tls_err.conflict;
    return THEUS_OK;
}
