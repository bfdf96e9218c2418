/* Line and column of a node of JSON text, found by scanning the text along the node's path
 * (jansson records no positions); used to point schema errors at the offending value. */
#include "json_locate.h"
#include <limits.h>
#include <stdint.h>
#include <string.h>

typedef struct cursor {
    const char *p;
    int line, col;   /* position of *p, 1-based */
} cursor;

/* Step over one byte. Columns count UTF-8 lead bytes so that they agree with jansson's. */
static void adv(cursor *c)
{
    unsigned char ch = (unsigned char)*c->p;
    if (ch == '\0')
        return;
    c->p++;
    if (ch == '\n') {
        if (c->line < INT_MAX)
            c->line++;
        c->col = 1;
    } else if ((ch & 0xC0) != 0x80 && c->col < INT_MAX) {
        c->col++;
    }
}

static void skip_ws(cursor *c)
{
    while (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')
        adv(c);
}

/* At an opening quote: step past the closing one. -1 if the text ends first. */
static int skip_string(cursor *c)
{
    adv(c);
    for (;;) {
        char ch = *c->p;
        if (ch == '\0')
            return -1;
        if (ch == '"') {
            adv(c);
            return 0;
        }
        if (ch == '\\') {
            adv(c);
            if (*c->p == '\0')
                return -1;
        }
        adv(c);
    }
}

/* Step over one value of any kind. Brackets inside strings are skipped with the strings,
 * so a depth counter is enough and no recursion is needed however deep the nesting. */
static int skip_value(cursor *c)
{
    char ch = *c->p;
    if (ch == '"')
        return skip_string(c);
    if (ch == '{' || ch == '[') {
        size_t depth = 0;
        for (;;) {
            ch = *c->p;
            if (ch == '\0')
                return -1;
            if (ch == '"') {
                if (skip_string(c))
                    return -1;
                continue;
            }
            if (ch == '{' || ch == '[') {
                depth++;
            } else if (ch == '}' || ch == ']') {
                if (--depth == 0) {
                    adv(c);
                    return 0;
                }
            }
            adv(c);
        }
    }
    /* number, true, false or null */
    if (ch == '\0' || strchr(",:]}", ch))
        return -1;
    while (*c->p != '\0' && !strchr(" \t\r\n,:]}", *c->p))
        adv(c);
    return 0;
}

/* Streaming comparison of decoded key bytes against the wanted key: no buffer needed. */
typedef struct keycmp {
    const char *want;
    size_t m;
    int same;
} keycmp;

static void feed(keycmp *k, unsigned char b)
{
    if (!k->same)
        return;
    if (b != 0 && (unsigned char)k->want[k->m] == b)
        k->m++;
    else
        k->same = 0;
}

static void feed_codepoint(keycmp *k, uint32_t u)
{
    if (u < 0x80) {
        feed(k, (unsigned char)u);
    } else if (u < 0x800) {
        feed(k, (unsigned char)(0xC0 | (u >> 6)));
        feed(k, (unsigned char)(0x80 | (u & 0x3F)));
    } else if (u < 0x10000) {
        feed(k, (unsigned char)(0xE0 | (u >> 12)));
        feed(k, (unsigned char)(0x80 | ((u >> 6) & 0x3F)));
        feed(k, (unsigned char)(0x80 | (u & 0x3F)));
    } else {
        feed(k, (unsigned char)(0xF0 | (u >> 18)));
        feed(k, (unsigned char)(0x80 | ((u >> 12) & 0x3F)));
        feed(k, (unsigned char)(0x80 | ((u >> 6) & 0x3F)));
        feed(k, (unsigned char)(0x80 | (u & 0x3F)));
    }
}

/* Four hex digits at the cursor (after "\u"); -1 if malformed. */
static long hex4(cursor *c)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = *c->p;
        int d;
        if (ch >= '0' && ch <= '9')
            d = ch - '0';
        else if (ch >= 'a' && ch <= 'f')
            d = ch - 'a' + 10;
        else if (ch >= 'A' && ch <= 'F')
            d = ch - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
        adv(c);
    }
    return v;
}

/* At an opening quote: consume the string and tell whether its decoded value is @want.
 * 1 equal, 0 different, -1 malformed. */
static int read_key(cursor *c, const char *want)
{
    keycmp k = {want, 0, 1};
    adv(c);
    for (;;) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '\0')
            return -1;
        if (ch == '"') {
            adv(c);
            return k.same && want[k.m] == '\0';
        }
        if (ch != '\\') {
            feed(&k, ch);
            adv(c);
            continue;
        }
        adv(c);
        ch = (unsigned char)*c->p;
        switch (ch) {
        case '"': case '\\': case '/': feed(&k, ch); adv(c); break;
        case 'b': feed(&k, '\b'); adv(c); break;
        case 'f': feed(&k, '\f'); adv(c); break;
        case 'n': feed(&k, '\n'); adv(c); break;
        case 'r': feed(&k, '\r'); adv(c); break;
        case 't': feed(&k, '\t'); adv(c); break;
        case 'u': {
            adv(c);
            long u = hex4(c);
            if (u < 0)
                return -1;
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (c->p[0] != '\\' || c->p[1] != 'u')
                    return -1;
                adv(c);
                adv(c);
                long lo = hex4(c);
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            } else if (u >= 0xDC00 && u <= 0xDFFF) {
                return -1;
            }
            feed_codepoint(&k, (uint32_t)u);
            break;
        }
        default:
            return -1;
        }
    }
}

int jsonloc_find(const char *text, const jsonloc_step *path, size_t depth, int at_key,
                 int *line, int *column)
{
    if (!text || (!path && depth) || !line || !column)
        return -1;
    cursor c = {text, 1, 1};
    skip_ws(&c);
    for (size_t i = 0; i < depth; i++) {
        const jsonloc_step *s = &path[i];
        if (s->key) {
            if (*c.p != '{')
                return -1;
            adv(&c);
            for (;;) {
                skip_ws(&c);
                if (*c.p != '"')
                    return -1;   /* '}' (not found) or not JSON */
                cursor key = c;
                int r = read_key(&c, s->key);
                if (r < 0)
                    return -1;
                skip_ws(&c);
                if (*c.p != ':')
                    return -1;
                adv(&c);
                skip_ws(&c);
                if (r == 1) {
                    if (i + 1 == depth && at_key) {
                        *line = key.line;
                        *column = key.col;
                        return 0;
                    }
                    break;
                }
                if (skip_value(&c))
                    return -1;
                skip_ws(&c);
                if (*c.p != ',')
                    return -1;
                adv(&c);
            }
        } else {
            if (*c.p != '[')
                return -1;
            adv(&c);
            for (size_t k = 0;; k++) {
                skip_ws(&c);
                if (*c.p == ']' || *c.p == '\0')
                    return -1;
                if (k == s->index)
                    break;
                if (skip_value(&c))
                    return -1;
                skip_ws(&c);
                if (*c.p != ',')
                    return -1;
                adv(&c);
            }
        }
    }
    if (*c.p == '\0')
        return -1;
    *line = c.line;
    *column = c.col;
    return 0;
}
