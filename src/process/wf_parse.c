/* The workflow parser's path stack and refusals (JSON path, line, column). */
#include "wf_parse.h"
#include "error.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int wfp_key(wf_ctx *c, const char *key)
{
    if (c->depth >= WF_MAX_DEPTH)
        return wfp_fail(c, 0, "nested more than %d levels deep", WF_MAX_DEPTH);
    c->path[c->depth++] = (jsonloc_step){.key = key, .index = 0};
    return THEUS_OK;
}

int wfp_index(wf_ctx *c, size_t i)
{
    if (c->depth >= WF_MAX_DEPTH)
        return wfp_fail(c, 0, "nested more than %d levels deep", WF_MAX_DEPTH);
    c->path[c->depth++] = (jsonloc_step){.key = NULL, .index = i};
    return THEUS_OK;
}

void wfp_pop(wf_ctx *c)
{
    if (c->depth)
        c->depth--;
}

static int plain(const char *k)
{
    if (!*k || strlen(k) > 64)
        return 0;
    for (; *k; k++)
        if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || (*k >= '0' && *k <= '9') ||
              *k == '_' || *k == '-'))
            return 0;
    return 1;
}

void wfp_path(const wf_ctx *c, char *buf, size_t cap)
{
    size_t len = 0;
    int n = snprintf(buf, cap, "$");
    len = n > 0 ? (size_t)n : 0;
    for (size_t i = 0; i < c->depth && len < cap; i++) {
        const jsonloc_step *s = &c->path[i];
        if (!s->key) {
            n = snprintf(buf + len, cap - len, "[%zu]", s->index);
        } else if (plain(s->key)) {
            n = snprintf(buf + len, cap - len, ".%s", s->key);
        } else {
            /* Quoted, with anything that is not printable ASCII (or a quote) shown as '?'. */
            char q[72];
            size_t k = 0;
            for (const char *p = s->key; *p && k < 64; p++, k++)
                q[k] = (*p < 0x20 || *p == 0x7f || *p == '"' || *p == '\\' || (*p & 0x80)) ? '?' : *p;
            q[k] = '\0';
            n = snprintf(buf + len, cap - len, "[\"%s%s\"]", q, strlen(s->key) > 64 ? "..." : "");
        }
        len += n > 0 ? (size_t)n : 0;
    }
}

int wfp_fail(wf_ctx *c, int at_key, const char *fmt, ...)
{
    char what[320], path[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    wfp_path(c, path, sizeof path);
    int line = 0, col = 0;
    if (jsonloc_find(c->text, c->path, c->depth, at_key, &line, &col) == 0)
        return err_set(c->st, THEUS_ESCHEMA, "workflow: %s: %s (line %d, column %d)", path, what,
                       line, col);
    return err_set(c->st, THEUS_ESCHEMA, "workflow: %s: %s", path, what);
}
