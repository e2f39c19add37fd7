/* Reads one named field from a request body the way the Go backend binds
 * it (rules in bodykey.h): a strict JSON reader, url.ParseQuery, and a
 * strict multipart/form-data reader, all feeding one "every occurrence
 * must agree" check. It does not read XML, files or RFC 2231 parameters,
 * and it never allocates: values are compared while they are decoded. */
#include "bodykey.h"

#include <stdint.h>
#include <string.h>

#include "codec.h"

#define JSON_MAX_DEPTH 64
#define BOUNDARY_MAX 70
#define FIELD_MAX 128

static const char JSON_PAYLOAD[] = "@jsonPayload";

/* ---- occurrences ---------------------------------------------------- */

/* The state of one call: the field, where the first occurrence went, and
 * what went wrong. */
struct find {
    const char *field;
    size_t field_len;
    char *out;
    size_t cap;
    size_t len;      /* length of the first occurrence, once `have` */
    bool have;       /* an occurrence is in out[0..len) */
    bool conflict;   /* a later occurrence differed */
    const char *why; /* the first reason for MALFORMED */
};

/* One occurrence being decoded: the first one is written to out, each
 * later one is compared with it byte by byte, so no second buffer. */
struct occ {
    size_t n;
    bool differs;
    bool toolong;
};

static bool bad(struct find *f, const char *why)
{
    if (f->why == NULL)
        f->why = why;
    return false;
}

static void occ_put(struct find *f, struct occ *o, const unsigned char *p, size_t n)
{
    if (o->toolong)
        return;
    if (n > f->cap - o->n) {
        o->toolong = true;
        return;
    }
    if (!f->have)
        memcpy(f->out + o->n, p, n);
    else if (!o->differs && (o->n + n > f->len || memcmp(f->out + o->n, p, n) != 0))
        o->differs = true;
    o->n += n;
}

static bool occ_end(struct find *f, const struct occ *o)
{
    if (o->toolong)
        return bad(f, "value longer than the key buffer");
    if (!f->have) {
        f->have = true;
        f->len = o->n;
    } else if (o->differs || o->n != f->len) {
        f->conflict = true;
    }
    return true;
}

static char lower(unsigned char c)
{
    return tg_ascii_lower((char)c);
}

/* ---- a byte source: raw, or a validated form component ---------------- */

/* Reads bytes one at a time; with `form` set, "+" is a space and %XX a
 * byte (the escapes were checked by pct_ok before). c is the current
 * decoded byte, -1 at the end; nx is the raw position after it. */
struct rd {
    const unsigned char *p, *end, *nx;
    int c;
    bool form;
};

static int rd_decode(const struct rd *r, const unsigned char *p, const unsigned char **nx)
{
    if (p >= r->end) {
        *nx = p;
        return -1;
    }
    if (r->form) {
        if (*p == '+') {
            *nx = p + 1;
            return ' ';
        }
        if (*p == '%') {
            if (r->end - p < 3 || tg_hex_digit(p[1]) < 0 || tg_hex_digit(p[2]) < 0) {
                *nx = r->end; /* not reached: validated */
                return -1;
            }
            *nx = p + 3;
            return tg_hex_digit(p[1]) * 16 + tg_hex_digit(p[2]);
        }
    }
    *nx = p + 1;
    return *p;
}

static void rd_init(struct rd *r, const unsigned char *p, const unsigned char *end, bool form)
{
    r->p = p;
    r->end = end;
    r->form = form;
    r->c = rd_decode(r, p, &r->nx);
}

static void rd_next(struct rd *r)
{
    r->p = r->nx;
    r->c = rd_decode(r, r->p, &r->nx);
}

/* The byte after the current one. */
static int rd_peek2(const struct rd *r)
{
    const unsigned char *nx;
    return rd_decode(r, r->nx, &nx);
}

/* True if [p, e) has only well-formed %-escapes (Go's QueryUnescape). */
static bool pct_ok(const unsigned char *p, const unsigned char *e)
{
    while ((p = memchr(p, '%', (size_t)(e - p))) != NULL) {
        if (e - p < 3 || tg_hex_digit(p[1]) < 0 || tg_hex_digit(p[2]) < 0)
            return false;
        p += 3;
    }
    return true;
}

/* ---- JSON ------------------------------------------------------------- */

/* Where the runes of a JSON string go. */
enum sink_mode { SINK_SKIP, SINK_NAME, SINK_VALUE };

struct sink {
    enum sink_mode mode;
    struct find *f;
    size_t pos;   /* SINK_NAME: field bytes matched so far */
    bool match;   /* SINK_NAME: still equal under Go's fold */
    struct occ o; /* SINK_VALUE */
};

/* Takes one whole decoded rune (1-4 bytes of valid UTF-8). */
static void sink_rune(struct sink *k, const unsigned char *b, size_t n)
{
    if (k->mode == SINK_VALUE) {
        occ_put(k->f, &k->o, b, n);
        return;
    }
    if (k->mode != SINK_NAME || !k->match)
        return;
    /* encoding/json matches a member to a field when the names are equal
     * under foldName: each rune maps to the smallest of its simple-fold
     * orbit. Only U+017F (-> 'S') and U+212A (-> 'K') reach ASCII. */
    unsigned char c;
    if (n == 1)
        c = b[0];
    else if (n == 2 && b[0] == 0xC5 && b[1] == 0xBF)
        c = 's';
    else if (n == 3 && b[0] == 0xE2 && b[1] == 0x84 && b[2] == 0xAA)
        c = 'k';
    else {
        k->match = false;
        return;
    }
    if (k->pos >= k->f->field_len || lower(c) != lower((unsigned char)k->f->field[k->pos]))
        k->match = false;
    else
        k->pos++;
}

static void sink_cp(struct sink *k, unsigned cp)
{
    unsigned char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | (cp >> 18));
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    sink_rune(k, b, n);
}

#define REPLACEMENT 0xFFFDu

static bool json_hex4(struct rd *r, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int h = tg_hex_digit(r->c);
        if (h < 0)
            return false;
        *v = *v * 16 + (unsigned)h;
        rd_next(r);
    }
    return true;
}

/* A \u escape, r->c just past the 'u'. Go's unquote: a surrogate pair is
 * one rune; any other surrogate is U+FFFD, and an escape after a high
 * surrogate that does not complete it is then read on its own. */
static bool json_unicode(struct rd *r, struct sink *k)
{
    unsigned u;
    if (!json_hex4(r, &u))
        return false;
    for (;;) {
        if (u < 0xD800 || u > 0xDFFF) {
            sink_cp(k, u);
            return true;
        }
        if (u >= 0xDC00 || r->c != '\\' || rd_peek2(r) != 'u') {
            sink_cp(k, REPLACEMENT);
            return true;
        }
        rd_next(r);
        rd_next(r);
        unsigned lo;
        if (!json_hex4(r, &lo))
            return false;
        if (lo >= 0xDC00 && lo <= 0xDFFF) {
            sink_cp(k, 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00));
            return true;
        }
        sink_cp(k, REPLACEMENT);
        u = lo;
    }
}

/* A byte >= 0x80, as Go's utf8.DecodeRune takes it: a valid sequence is
 * copied; otherwise the lead byte is U+FFFD and decoding restarts at the
 * next byte, so each byte of a broken sequence (all continuation bytes,
 * which are invalid on their own) becomes one U+FFFD. */
static void json_utf8(struct rd *r, struct sink *k)
{
    unsigned char b[4];
    size_t need, got = 0;
    int lo = 0x80, hi = 0xBF;
    int c = r->c;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* > U+10FFFF */
    } else
        need = 0;
    b[got++] = (unsigned char)c;
    rd_next(r);
    if (need == 0) {
        sink_cp(k, REPLACEMENT);
        return;
    }
    while (got < need && r->c >= lo && r->c <= hi) {
        b[got++] = (unsigned char)r->c;
        rd_next(r);
        lo = 0x80;
        hi = 0xBF;
    }
    if (got == need) {
        sink_rune(k, b, need);
        return;
    }
    while (got-- > 0)
        sink_cp(k, REPLACEMENT);
}

/* A string, r->c on its opening quote. False if malformed. */
static bool json_string(struct rd *r, struct sink *k)
{
    rd_next(r);
    for (;;) {
        int c = r->c;
        if (c < 0x20) /* the end (-1) or a raw control byte */
            return false;
        if (c == '"') {
            rd_next(r);
            return true;
        }
        if (c >= 0x80) {
            json_utf8(r, k);
            continue;
        }
        rd_next(r);
        if (c != '\\') {
            unsigned char b = (unsigned char)c;
            sink_rune(k, &b, 1);
            continue;
        }
        if (r->c == 'u') {
            rd_next(r);
            if (!json_unicode(r, k))
                return false;
            continue;
        }
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        const char *at = r->c > 0 ? strchr(from, r->c) : NULL;
        if (at == NULL)
            return false;
        unsigned char e = (unsigned char)to[at - from];
        rd_next(r);
        sink_rune(k, &e, 1);
    }
}

static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool json_digits(struct rd *r)
{
    if (!is_digit(r->c))
        return false;
    while (is_digit(r->c))
        rd_next(r);
    return true;
}

static bool json_number(struct rd *r)
{
    if (r->c == '-')
        rd_next(r);
    if (r->c == '0')
        rd_next(r);
    else if (!json_digits(r))
        return false;
    if (r->c == '.') {
        rd_next(r);
        if (!json_digits(r))
            return false;
    }
    if (r->c == 'e' || r->c == 'E') {
        rd_next(r);
        if (r->c == '+' || r->c == '-')
            rd_next(r);
        if (!json_digits(r))
            return false;
    }
    return true;
}

static bool json_literal(struct rd *r, const char *lit)
{
    for (; *lit != '\0'; lit++) {
        if (r->c != (unsigned char)*lit)
            return false;
        rd_next(r);
    }
    return true;
}

static void json_ws(struct rd *r)
{
    while (r->c == ' ' || r->c == '\t' || r->c == '\n' || r->c == '\r')
        rd_next(r);
}

/* One JSON document that must be an object followed only by whitespace;
 * its outer members named like the field are occurrences. Iterative, with
 * one bit per open container (1: object). False if malformed. */
static bool json_doc(struct find *f, struct rd *r)
{
    enum { VALUE, MEMBER, AFTER } st = VALUE;
    uint64_t objects = 0;
    unsigned depth = 0;
    bool match = false; /* the value ahead belongs to a matching member */

    json_ws(r);
    if (r->c != '{')
        return bad(f, "JSON body is not an object");
    for (;;) {
        switch (st) {
        case VALUE:
            json_ws(r);
            if (match) {
                struct sink k = {.mode = SINK_VALUE, .f = f};
                match = false;
                if (r->c != '"')
                    return bad(f, "field is not a JSON string");
                if (!json_string(r, &k))
                    return bad(f, "malformed JSON string");
                if (!occ_end(f, &k.o))
                    return false;
                st = AFTER;
                break;
            }
            switch (r->c) {
            case '{':
            case '[':
                if (depth == JSON_MAX_DEPTH)
                    return bad(f, "JSON nested deeper than 64");
                if (r->c == '{')
                    objects |= UINT64_C(1) << depth;
                else
                    objects &= ~(UINT64_C(1) << depth);
                depth++;
                rd_next(r);
                json_ws(r);
                if (r->c == ((objects >> (depth - 1) & 1) ? '}' : ']')) {
                    rd_next(r);
                    depth--;
                    st = AFTER;
                } else {
                    st = (objects >> (depth - 1) & 1) ? MEMBER : VALUE;
                }
                break;
            case '"': {
                struct sink k = {.mode = SINK_SKIP, .f = f};
                if (!json_string(r, &k))
                    return bad(f, "malformed JSON string");
                st = AFTER;
                break;
            }
            case 't':
            case 'f':
            case 'n':
                if (!json_literal(r, r->c == 't' ? "true" : r->c == 'f' ? "false" : "null"))
                    return bad(f, "malformed JSON literal");
                st = AFTER;
                break;
            default:
                if (r->c != '-' && !is_digit(r->c))
                    return bad(f, "malformed JSON value");
                if (!json_number(r))
                    return bad(f, "malformed JSON number");
                st = AFTER;
                break;
            }
            break;
        case MEMBER: {
            json_ws(r);
            if (r->c != '"')
                return bad(f, "malformed JSON object");
            struct sink k = {.mode = depth == 1 ? SINK_NAME : SINK_SKIP, .f = f, .match = true};
            if (!json_string(r, &k))
                return bad(f, "malformed JSON string");
            match = k.mode == SINK_NAME && k.match && k.pos == f->field_len;
            json_ws(r);
            if (r->c != ':')
                return bad(f, "malformed JSON object");
            rd_next(r);
            st = VALUE;
            break;
        }
        case AFTER:
            json_ws(r);
            if (depth == 0) {
                if (r->c != -1)
                    return bad(f, "data after the JSON object");
                return true;
            }
            if (r->c == ',') {
                rd_next(r);
                st = (objects >> (depth - 1) & 1) ? MEMBER : VALUE;
            } else if (r->c == ((objects >> (depth - 1) & 1) ? '}' : ']')) {
                rd_next(r);
                depth--;
            } else {
                return bad(f, "malformed JSON container");
            }
            break;
        }
    }
}

static bool json_bytes(struct find *f, const unsigned char *p, const unsigned char *e, bool form)
{
    struct rd r;
    rd_init(&r, p, e, form);
    return json_doc(f, &r);
}

/* ---- application/x-www-form-urlencoded (url.ParseQuery) ---------------- */

/* Compares the %-decoded form component [p, e) with s[0..n): ASCII
 * case-insensitively (ci) or exactly. */
static bool form_eq(const unsigned char *p, const unsigned char *e, const char *s, size_t n,
                    bool ci)
{
    struct rd r;
    size_t i = 0;
    for (rd_init(&r, p, e, true); r.c != -1; rd_next(&r), i++) {
        if (i == n)
            return false;
        unsigned char a = (unsigned char)r.c, b = (unsigned char)s[i];
        if (ci ? lower(a) != lower(b) : a != b)
            return false;
    }
    return i == n;
}

static bool form_value(struct find *f, const unsigned char *p, const unsigned char *e)
{
    struct occ o = {0};
    struct rd r;
    for (rd_init(&r, p, e, true); r.c != -1; rd_next(&r)) {
        unsigned char b = (unsigned char)r.c;
        occ_put(f, &o, &b, 1);
    }
    return occ_end(f, &o);
}

static bool form_pairs(struct find *f, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        const unsigned char *amp = memchr(p, '&', (size_t)(end - p));
        if (amp == NULL)
            amp = end;
        if (amp > p) {
            if (memchr(p, ';', (size_t)(amp - p)) != NULL)
                return bad(f, "';' in form data");
            const unsigned char *eq = memchr(p, '=', (size_t)(amp - p));
            const unsigned char *ke = eq != NULL ? eq : amp;
            const unsigned char *v = eq != NULL ? eq + 1 : amp;
            if (!pct_ok(p, ke) || !pct_ok(v, amp))
                return bad(f, "bad %-escape in form data");
            if (form_eq(p, ke, f->field, f->field_len, true)) {
                if (!form_value(f, v, amp))
                    return false;
            } else if (form_eq(p, ke, JSON_PAYLOAD, sizeof(JSON_PAYLOAD) - 1, false)) {
                if (!json_bytes(f, v, amp, true))
                    return false;
            }
        }
        if (amp == end)
            break;
        p = amp + 1;
    }
    return true;
}

/* ---- MIME parameters (mime.ParseMediaType, strictly) -------------------- */

static bool is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static const unsigned char *skip_ows(const unsigned char *p, const unsigned char *e)
{
    while (p < e && is_ows(*p))
        p++;
    return p;
}

static bool is_tspecial(unsigned char c)
{
    return c != '\0' && strchr("()<>@,;:\\\"/[]?=", c) != NULL;
}

/* mime's token byte. */
static bool is_mime_token(unsigned char c)
{
    return c > 0x20 && c < 0x7F && !is_tspecial(c);
}

/* HTTP's tchar, for header names (textproto's validHeaderFieldByte). */
static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

struct param {
    const unsigned char *name, *name_end;
    const unsigned char *val, *val_end; /* a token, or inside the quotes */
    bool quoted;
};

/* The next `; name=value` at *p. 1: a parameter; 0: the end (a single
 * trailing ';' allowed, as Go); -1: anything Go might read otherwise. */
static int param_next(const unsigned char **pp, const unsigned char *e, struct param *pa)
{
    const unsigned char *p = skip_ows(*pp, e);
    if (p == e)
        return 0;
    if (*p != ';')
        return -1;
    p = skip_ows(p + 1, e);
    if (p == e) {
        *pp = p;
        return 0;
    }
    pa->name = p;
    while (p < e && is_mime_token(*p))
        p++;
    pa->name_end = p;
    if (p == pa->name)
        return -1;
    p = skip_ows(p, e);
    if (p == e || *p != '=')
        return -1;
    p = skip_ows(p + 1, e);
    if (p < e && *p == '"') {
        /* Go's consumeValue: a backslash escapes a tspecial, and is a
         * literal backslash before anything else. */
        pa->quoted = true;
        pa->val = ++p;
        for (;;) {
            if (p == e)
                return -1;
            if (*p == '"')
                break;
            if (*p == '\\' && e - p > 1 && is_tspecial(p[1]))
                p++;
            p++;
        }
        pa->val_end = p++;
    } else {
        pa->quoted = false;
        pa->val = p;
        while (p < e && is_mime_token(*p))
            p++;
        pa->val_end = p;
        if (p == pa->val)
            return -1;
    }
    *pp = p;
    return 1;
}

static bool name_is(const struct param *pa, const char *lit)
{
    size_t n = strlen(lit);
    return (size_t)(pa->name_end - pa->name) == n &&
           strncasecmp((const char *)pa->name, lit, n) == 0;
}

/* Name of a parameter up to its '*', for RFC 2231 `name*`, `name*0`... */
static bool star_base_is(const struct param *pa, const char *lit)
{
    const unsigned char *star = memchr(pa->name, '*', (size_t)(pa->name_end - pa->name));
    size_t n = strlen(lit);
    return star != NULL && (size_t)(star - pa->name) == n &&
           strncasecmp((const char *)pa->name, lit, n) == 0;
}

/* Decodes a parameter value byte by byte. */
static int pval_next(const struct param *pa, const unsigned char **p)
{
    if (*p >= pa->val_end)
        return -1;
    if (pa->quoted && **p == '\\' && pa->val_end - *p > 1 && is_tspecial((*p)[1]))
        (*p)++;
    return *(*p)++;
}

static bool pval_eq(const struct param *pa, const char *s, size_t n, bool ci)
{
    const unsigned char *p = pa->val;
    size_t i = 0;
    int c;
    while ((c = pval_next(pa, &p)) != -1) {
        if (i == n)
            return false;
        unsigned char a = (unsigned char)c, b = (unsigned char)s[i++];
        if (ci ? lower(a) != lower(b) : a != b)
            return false;
    }
    return i == n;
}

/* ---- multipart/form-data (mime/multipart, strictly) --------------------- */

/* RFC 2046 bchars. */
static bool is_bchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != '\0' && strchr("'()+_,-./:=? ", c) != NULL);
}

/* Reads the boundary from the parameters after "multipart/form-data" into
 * b[BOUNDARY_MAX] and returns its length, 0 if refused. */
static size_t mp_boundary(struct find *f, const unsigned char *p, const unsigned char *e,
                          unsigned char *b)
{
    struct param pa;
    size_t n = 0;
    bool seen = false;
    int rc;
    while ((rc = param_next(&p, e, &pa)) == 1) {
        if (memchr(pa.name, '*', (size_t)(pa.name_end - pa.name)) != NULL)
            return bad(f, "RFC 2231 parameter in Content-Type"), 0;
        if (!name_is(&pa, "boundary"))
            continue;
        if (seen)
            return bad(f, "duplicate boundary parameter"), 0;
        seen = true;
        const unsigned char *v = pa.val;
        int c;
        while ((c = pval_next(&pa, &v)) != -1) {
            if (n == BOUNDARY_MAX || !is_bchar((unsigned char)c))
                return bad(f, "multipart boundary too long or invalid"), 0;
            b[n++] = (unsigned char)c;
        }
    }
    if (rc < 0)
        return bad(f, "malformed Content-Type parameters"), 0;
    if (n == 0 || b[n - 1] == ' ')
        return bad(f, "multipart boundary missing or invalid"), 0;
    return n;
}

enum mp_line { LINE_OTHER, LINE_DELIM, LINE_CLOSE, LINE_LF_DELIM };

/* Classifies the line [p, e) (e is past its LF, or the end of the body
 * if it has none) as Go's isBoundaryDelimiterLine / isFinalBoundary do;
 * dash is "--" boundary. */
static enum mp_line mp_line(const unsigned char *p, const unsigned char *e,
                            const unsigned char *dash, size_t dlen)
{
    if ((size_t)(e - p) < dlen || memcmp(p, dash, dlen) != 0)
        return LINE_OTHER;
    const unsigned char *q = p + dlen;
    const unsigned char *r = skip_ows(q, e);
    if (e - r == 2 && r[0] == '\r' && r[1] == '\n')
        return LINE_DELIM;
    if (e - r == 1 && r[0] == '\n')
        return LINE_LF_DELIM;
    if (e - q >= 2 && q[0] == '-' && q[1] == '-') {
        r = skip_ows(q + 2, e);
        if (r == e || (e - r == 2 && r[0] == '\r' && r[1] == '\n'))
            return LINE_CLOSE;
    }
    return LINE_OTHER;
}

/* The line starting at p: returns its end (past the LF, or e). */
static const unsigned char *line_end(const unsigned char *p, const unsigned char *e)
{
    const unsigned char *nl = memchr(p, '\n', (size_t)(e - p));
    return nl != NULL ? nl + 1 : e;
}

struct part {
    bool disposition; /* a form-data Content-Disposition was seen */
    bool has_name;
    bool has_filename;
    bool file; /* filename or filename*... */
    bool cte;  /* a Content-Transfer-Encoding header */
    struct param name;
};

static bool mp_disposition(struct find *f, struct part *pt, const unsigned char *v,
                           const unsigned char *e)
{
    static const char fd[] = "form-data";
    size_t n = sizeof(fd) - 1;
    if (pt->disposition)
        return bad(f, "duplicate Content-Disposition");
    pt->disposition = true;
    if ((size_t)(e - v) < n || strncasecmp((const char *)v, fd, n) != 0)
        return bad(f, "part is not form-data");
    const unsigned char *p = v + n;
    struct param pa;
    int rc;
    if (p < e && !is_ows(*p) && *p != ';')
        return bad(f, "part is not form-data");
    while ((rc = param_next(&p, e, &pa)) == 1) {
        if (star_base_is(&pa, "name"))
            return bad(f, "RFC 2231 name* parameter");
        if (star_base_is(&pa, "filename")) {
            pt->file = true;
        } else if (name_is(&pa, "name")) {
            if (pt->has_name)
                return bad(f, "duplicate name parameter");
            pt->has_name = true;
            pt->name = pa;
        } else if (name_is(&pa, "filename")) {
            if (pt->has_filename)
                return bad(f, "duplicate filename parameter");
            pt->has_filename = true;
            pt->file = true;
        }
    }
    if (rc < 0)
        return bad(f, "malformed Content-Disposition parameters");
    return true;
}

/* Part headers from *pp up to and past the blank line. */
static bool mp_headers(struct find *f, struct part *pt, const unsigned char **pp,
                       const unsigned char *end)
{
    const unsigned char *p = *pp;
    for (;;) {
        const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            return bad(f, "multipart body ends in part headers");
        if (nl == p || nl[-1] != '\r')
            return bad(f, "multipart header line not ended by CRLF");
        const unsigned char *le = nl - 1;
        if (le == p) {
            *pp = nl + 1;
            return true;
        }
        const unsigned char *c = p;
        while (c < le && is_tchar(*c))
            c++;
        if (c == p || c == le || *c != ':')
            return bad(f, "malformed multipart header line");
        const unsigned char *n_end = c, *v = c + 1;
        for (const unsigned char *q = v; q < le; q++)
            if ((*q < 0x20 && *q != '\t') || *q == 0x7F)
                return bad(f, "control byte in multipart header");
        v = skip_ows(v, le);
        const unsigned char *ve = le;
        while (ve > v && is_ows(ve[-1]))
            ve--;
        size_t nlen = (size_t)(n_end - p);
        if (nlen == 19 && strncasecmp((const char *)p, "Content-Disposition", 19) == 0) {
            if (!mp_disposition(f, pt, v, ve))
                return false;
        } else if (nlen == 25 &&
                   strncasecmp((const char *)p, "Content-Transfer-Encoding", 25) == 0) {
            pt->cte = true;
        }
        p = nl + 1;
    }
}

static bool mp_part(struct find *f, const struct part *pt, const unsigned char *c,
                    const unsigned char *ce)
{
    if (!pt->disposition || !pt->has_name)
        return bad(f, "part without form-data name");
    bool field = pval_eq(&pt->name, f->field, f->field_len, true);
    bool payload = pval_eq(&pt->name, JSON_PAYLOAD, sizeof(JSON_PAYLOAD) - 1, false);
    if (!field && !payload)
        return true;
    if (pt->file)
        return bad(f, "file part named like the field");
    if (pt->cte)
        return bad(f, "Content-Transfer-Encoding on the field's part");
    if (payload)
        return json_bytes(f, c, ce, false);
    struct occ o = {0};
    occ_put(f, &o, c, (size_t)(ce - c));
    return occ_end(f, &o);
}

static bool multipart(struct find *f, const unsigned char *ct, const unsigned char *cte,
                      const unsigned char *body, size_t len)
{
    /* "\r\n--" boundary: dash starts at +2. */
    unsigned char delim[4 + BOUNDARY_MAX];
    size_t bn = mp_boundary(f, ct, cte, delim + 4);
    if (bn == 0)
        return false;
    memcpy(delim, "\r\n--", 4);
    const unsigned char *dash = delim + 2;
    size_t dlen = bn + 2;
    const unsigned char *p = body, *end = body + len;

    /* The preamble, line by line as Go reads it. */
    for (;;) {
        if (p == end)
            return bad(f, "multipart body ends before its close delimiter");
        const unsigned char *e = line_end(p, end);
        enum mp_line k = mp_line(p, e, dash, dlen);
        if (k == LINE_CLOSE)
            return true;
        if (k == LINE_LF_DELIM)
            return bad(f, "multipart delimiter line ends in LF only");
        p = e;
        if (k == LINE_DELIM)
            break;
    }
    for (;;) {
        struct part pt = {0};
        if (!mp_headers(f, &pt, &p, end))
            return false;
        /* Go ends a part whose content starts with "--boundary". */
        if ((size_t)(end - p) >= dlen && memcmp(p, dash, dlen) == 0)
            return bad(f, "part content starts with the boundary");
        const unsigned char *q = p, *i;
        for (;;) {
            i = memmem(q, (size_t)(end - q), delim, dlen + 2);
            if (i == NULL)
                return bad(f, "multipart body ends before its close delimiter");
            const unsigned char *a = i + dlen + 2;
            if (a == end || *a == ' ' || *a == '\t' || *a == '\r' || *a == '\n' ||
                (*a == '-' && end - a > 1 && a[1] == '-'))
                break;
            q = i + 1;
        }
        if (!mp_part(f, &pt, p, i))
            return false;
        p = i + 2;
        const unsigned char *e = line_end(p, end);
        enum mp_line k = mp_line(p, e, dash, dlen);
        if (k == LINE_CLOSE)
            return true;
        if (k != LINE_DELIM)
            return bad(f, "malformed multipart delimiter line");
        p = e;
    }
}

/* ---- the API ------------------------------------------------------------ */

static bool ci_prefix(const unsigned char *p, const unsigned char *e, const char *lit, size_t n)
{
    return (size_t)(e - p) >= n && strncasecmp((const char *)p, lit, n) == 0;
}

static const char CT_JSON[] = "application/json";
static const char CT_FORM[] = "application/x-www-form-urlencoded";
static const char CT_MULTIPART[] = "multipart/form-data";

enum tg_bodykey_kind tg_bodykey_classify(struct tg_str content_type)
{
    if (content_type.p == NULL)
        return TG_BODYKEY_OTHER;
    const unsigned char *p = (const unsigned char *)content_type.p;
    const unsigned char *e = p + content_type.n;
    p = skip_ows(p, e);
    if (ci_prefix(p, e, CT_JSON, sizeof(CT_JSON) - 1))
        return TG_BODYKEY_JSON;
    if (ci_prefix(p, e, CT_FORM, sizeof(CT_FORM) - 1))
        return TG_BODYKEY_URLENCODED;
    if (ci_prefix(p, e, CT_MULTIPART, sizeof(CT_MULTIPART) - 1))
        return TG_BODYKEY_MULTIPART;
    return TG_BODYKEY_OTHER;
}

bool tg_bodykey_field_ok(const char *field, size_t field_len)
{
    if (field == NULL || field_len == 0 || field_len > FIELD_MAX)
        return false;
    for (size_t i = 0; i < field_len; i++) {
        unsigned char c = (unsigned char)field[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

enum tg_bodykey_status tg_bodykey_find(const struct tg_bodykey_input *in, const char *field,
                                       size_t field_len, char *out, size_t cap, size_t *outlen,
                                       const char **why)
{
    struct find f = {.field = field, .field_len = field_len, .out = out, .cap = cap};
    enum tg_bodykey_status st;
    const char *reason;
    enum tg_bodykey_kind kind = tg_bodykey_classify(in->content_type);
    const unsigned char *body = (const unsigned char *)in->body;
    bool ok = true;

    *outlen = 0;
    if (!tg_bodykey_field_ok(field, field_len)) {
        st = TG_BODYKEY_UNREADABLE;
        reason = "invalid field name";
        goto done;
    }
    if (kind == TG_BODYKEY_OTHER ||
        (kind == TG_BODYKEY_JSON && !(in->read & TG_BODYKEY_READ_JSON)) ||
        (kind != TG_BODYKEY_JSON && !(in->read & TG_BODYKEY_READ_FORM))) {
        st = TG_BODYKEY_UNREADABLE;
        reason =
            kind == TG_BODYKEY_OTHER ? "unsupported Content-Type" : "Content-Type not read here";
        goto done;
    }
    if (in->len > 0) {
        if (kind == TG_BODYKEY_JSON) {
            ok = json_bytes(&f, body, body + in->len, false);
        } else if (kind == TG_BODYKEY_URLENCODED) {
            ok = form_pairs(&f, in->body, in->len);
        } else {
            const unsigned char *ct = (const unsigned char *)in->content_type.p;
            const unsigned char *cte = ct + in->content_type.n;
            ct = skip_ows(ct, cte) + sizeof(CT_MULTIPART) - 1;
            ok = multipart(&f, ct, cte, body, in->len);
        }
    }
    if (ok && kind != TG_BODYKEY_JSON && in->query.p != NULL)
        ok = form_pairs(&f, in->query.p, in->query.n);

    if (!ok) {
        st = TG_BODYKEY_MALFORMED;
        reason = f.why != NULL ? f.why : "malformed";
    } else if (f.conflict) {
        st = TG_BODYKEY_CONFLICT;
        reason = "field given more than once with different values";
    } else if (f.have) {
        st = TG_BODYKEY_FOUND;
        reason = "found";
        *outlen = f.len;
    } else {
        st = TG_BODYKEY_MISSING;
        reason = in->len == 0 ? "empty body" : "field absent";
    }
done:
    if (why != NULL)
        *why = reason;
    return st;
}

const char *tg_bodykey_status_name(enum tg_bodykey_status s)
{
    switch (s) {
    case TG_BODYKEY_FOUND:
        return "found";
    case TG_BODYKEY_MISSING:
        return "missing";
    case TG_BODYKEY_UNREADABLE:
        return "unreadable";
    case TG_BODYKEY_MALFORMED:
        return "malformed";
    case TG_BODYKEY_CONFLICT:
        return "conflict";
    }
    return "?";
}
