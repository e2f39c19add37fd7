/* Small encodings (codec.h). */
#include "codec.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t tg_hex_encode(char *out, const void *in, size_t n, bool upper)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    const unsigned char *p = in;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    return 2 * n;
}

size_t tg_percent_decode(char *s, size_t n, bool plus_is_space)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi = s[i] == '%' && i + 2 < n ? tg_hex_digit(s[i + 1]) : -1;
        int lo = hi >= 0 ? tg_hex_digit(s[i + 2]) : -1;
        if (lo >= 0) {
            s[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            s[o++] = s[i] == '+' && plus_is_space ? ' ' : s[i];
        }
    }
    return o;
}

size_t tg_json_escape(char *out, size_t cap, const char *s, size_t n)
{
    size_t taken;
    return tg_json_escape_some(out, cap, s, n, &taken);
}

size_t tg_json_escape_some(char *out, size_t cap, const char *s, size_t n, size_t *taken)
{
    size_t o = 0, i;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') {
            if (o + 1 > cap)
                break;
            out[o++] = (char)ch;
        } else if (ch == '"' || ch == '\\') {
            if (o + 2 > cap)
                break;
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else {
            if (o + 6 > cap)
                break;
            memcpy(out + o, "\\u00", 4);
            tg_hex_encode(out + o + 4, &ch, 1, false);
            o += 6;
        }
    }
    *taken = i;
    return o;
}

/* Makes room for `more` bytes and the terminator. */
static bool reserve(struct tg_strbuf *b, size_t more)
{
    if (b->oom)
        return false;
    if (b->n + more + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void tg_strbuf_put(struct tg_strbuf *b, const char *s, size_t n)
{
    if (!reserve(b, n))
        return;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void tg_strbuf_printf(struct tg_strbuf *b, const char *fmt, ...)
{
    for (size_t want = 64;;) {
        if (!reserve(b, want))
            return;
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (w < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)w < b->cap - b->n) {
            b->n += (size_t)w;
            return;
        }
        want = (size_t)w;
    }
}

void tg_strbuf_json(struct tg_strbuf *b, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    if (!reserve(b, 6 * n + 2))
        return;
    b->p[b->n++] = '"';
    b->n += tg_json_escape(b->p + b->n, 6 * n, s != NULL ? s : "", n);
    b->p[b->n++] = '"';
    b->p[b->n] = '\0';
}

void tg_strbuf_free(struct tg_strbuf *b)
{
    free(b->p);
    *b = (struct tg_strbuf){0};
}
