/* Minimal JSON scanner: walks the top-level object, skipping values it does
 * not need, decoding only the string it was asked for. */
#include "json.h"

#include <stdint.h>
#include <string.h>

struct scan {
    const char *p, *end;
};

static void skip_ws(struct scan *s)
{
    while (s->p < s->end &&
           (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool read_hex4(struct scan *s, unsigned *v)
{
    if (s->end - s->p < 4)
        return false;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s->p[i]);
        if (h < 0)
            return false;
        *v = *v * 16 + (unsigned)h;
    }
    s->p += 4;
    return true;
}

static size_t put_utf8(char *out, unsigned cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Reads a string at s->p (which is on the opening quote). With out == NULL
 * it only skips it. Returns false on malformed or truncated input, or when
 * the decoded value does not fit. */
static bool read_string(struct scan *s, char *out, size_t cap, size_t *outlen)
{
    size_t o = 0;
    s->p++; /* opening quote */
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p++;
        if (c == '"') {
            if (outlen != NULL)
                *outlen = o;
            return true;
        }
        if (c < 0x20)
            return false;
        char buf[4];
        size_t n = 1;
        buf[0] = (char)c;
        if (c == '\\') {
            if (s->p >= s->end)
                return false;
            char e = *s->p++;
            switch (e) {
            case '"': case '\\': case '/':
                buf[0] = e;
                break;
            case 'b': buf[0] = '\b'; break;
            case 'f': buf[0] = '\f'; break;
            case 'n': buf[0] = '\n'; break;
            case 'r': buf[0] = '\r'; break;
            case 't': buf[0] = '\t'; break;
            case 'u': {
                unsigned cp;
                if (!read_hex4(s, &cp))
                    return false;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u')
                        return false;
                    s->p += 2;
                    if (!read_hex4(s, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return false;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return false;
                }
                n = put_utf8(buf, cp);
                break;
            }
            default:
                return false;
            }
        }
        if (out != NULL) {
            if (o + n > cap)
                return false;
            memcpy(out + o, buf, n);
        }
        o += n;
    }
    return false;
}

static bool skip_value(struct scan *s, int depth);

static bool skip_container(struct scan *s, int depth, char close, bool object)
{
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return true;
    }
    while (s->p < s->end) {
        if (object) {
            skip_ws(s);
            if (s->p >= s->end || *s->p != '"' || !read_string(s, NULL, 0, NULL))
                return false;
            skip_ws(s);
            if (s->p >= s->end || *s->p++ != ':')
                return false;
        }
        if (!skip_value(s, depth + 1))
            return false;
        skip_ws(s);
        if (s->p >= s->end)
            return false;
        char c = *s->p++;
        if (c == close)
            return true;
        if (c != ',')
            return false;
    }
    return false;
}

static bool skip_value(struct scan *s, int depth)
{
    if (depth > 64)
        return false;
    skip_ws(s);
    if (s->p >= s->end)
        return false;
    switch (*s->p) {
    case '"':
        return read_string(s, NULL, 0, NULL);
    case '{':
        return skip_container(s, depth, '}', true);
    case '[':
        return skip_container(s, depth, ']', false);
    default: {
        /* number, true, false, null: a run of these characters */
        const char *start = s->p;
        while (s->p < s->end && strchr("0123456789+-.eEtrufalsn", *s->p) != NULL)
            s->p++;
        return s->p > start && s->p < s->end;
    }
    }
}

bool tg_json_find_string(const char *buf, size_t len, const char *field,
                         size_t field_len, char *out, size_t cap,
                         size_t *outlen)
{
    struct scan s = {buf, buf + len};
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return false;
    s.p++;
    char name[256];
    for (;;) {
        skip_ws(&s);
        if (s.p >= s.end || *s.p != '"')
            return false;
        size_t nlen;
        bool fits = true;
        const char *name_start = s.p;
        if (!read_string(&s, name, sizeof(name), &nlen)) {
            /* A name too long for our buffer cannot be the field: skip it. */
            s.p = name_start;
            if (!read_string(&s, NULL, 0, NULL))
                return false;
            fits = false;
        }
        skip_ws(&s);
        if (s.p >= s.end || *s.p++ != ':')
            return false;
        skip_ws(&s);
        if (fits && nlen == field_len && memcmp(name, field, nlen) == 0) {
            if (s.p >= s.end || *s.p != '"')
                return false;
            return read_string(&s, out, cap, outlen);
        }
        if (!skip_value(&s, 1))
            return false;
        skip_ws(&s);
        if (s.p >= s.end || *s.p++ != ',')
            return false;
    }
}
