/* Small encodings every layer needs, written once: hex digits and hex
 * strings, percent-decoding, JSON string escaping, and a growable string
 * buffer for text built piece by piece (JSON answers, the metrics
 * exposition). Pure functions, any thread. */
#ifndef TG_CODEC_H
#define TG_CODEC_H

#include <stdbool.h>
#include <stddef.h>

/* The value of a hex digit (either case), or -1. */
static inline int tg_hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Writes 2n hex digits for n bytes (lower case, or upper with `upper`),
 * no terminator. Returns 2n. */
size_t tg_hex_encode(char *out, const void *in, size_t n, bool upper);

/* Percent-decodes s[0..n) in place ("%XX" with two hex digits; anything
 * else stays as it is); a '+' becomes a space when `plus_is_space` (form
 * encoding, never a path). Returns the new length. */
size_t tg_percent_decode(char *s, size_t n, bool plus_is_space);

/* Escapes s[0..n) as the inside of a JSON string into out[0..cap): '"' and
 * '\' escaped, control bytes and bytes >= 0x7f as \u00XX (so the result is
 * ASCII whatever the input). Stops before a character that does not fit.
 * Returns the bytes written. */
size_t tg_json_escape(char *out, size_t cap, const char *s, size_t n);

/* The same, and *taken says how many input bytes went in (n when all
 * fitted). */
size_t tg_json_escape_some(char *out, size_t cap, const char *s, size_t n, size_t *taken);

/* A growable string. Failed growth sets `oom` and later appends do
 * nothing; the text is NUL-terminated while !oom. */
struct tg_strbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

void tg_strbuf_put(struct tg_strbuf *b, const char *s, size_t n);
void tg_strbuf_printf(struct tg_strbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s as a quoted JSON string. */
void tg_strbuf_json(struct tg_strbuf *b, const char *s);
/* Frees the text; the buffer is empty again. */
void tg_strbuf_free(struct tg_strbuf *b);

#endif
