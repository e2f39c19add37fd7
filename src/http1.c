/* Strict RFC 9112 parsing: request heads, response heads, chunked bodies.
 * Each head is scanned once, byte classes from one table, long runs eight
 * bytes at a time; views point into the caller's buffer. It does not decode
 * percent-escapes, normalise paths or interpret fields beyond framing,
 * connection reuse, Host, Expect and Upgrade: that is the router's and
 * proxy's business. */
#include "http1.h"

#include <limits.h>
#include <string.h>

#define DEFAULT_MAX_REQUEST_LINE 8192
#define DEFAULT_MAX_HEAD 32768
#define DEFAULT_MAX_HEADERS 100
#define CHUNK_LINE_MAX 4096

/* Byte classes. */
#define C_TCHAR 0x01  /* token */
#define C_VALUE 0x02  /* field-vchar, obs-text, SP, HTAB (also reason-phrase) */
#define C_TARGET 0x04 /* request-target: 0x21-0x7E except '#' */
#define C_HEX 0x08
#define C_REG 0x10    /* Host names: unreserved (ALPHA DIGIT - . _ ~) */
#define C_QDTEXT 0x20 /* quoted-string text */
#define C_DIGIT 0x40

static const unsigned char cls[256] = {
    /* 00 */ 0,   0,   0,   0,   0,   0,   0,   0,   0,   34,  0,  0,  0,  0,  0,  0,
    /* 10 */ 0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,  0,  0,  0,  0,  0,
    /* 20 */ 34,  39,  6,   35,  39,  39,  39,  39,  38,  38,  39, 39, 38, 55, 55, 38,
    /* 30 */ 127, 127, 127, 127, 127, 127, 127, 127, 127, 127, 38, 38, 38, 38, 38, 38,
    /* 40 */ 38,  63,  63,  63,  63,  63,  63,  55,  55,  55,  55, 55, 55, 55, 55, 55,
    /* 50 */ 55,  55,  55,  55,  55,  55,  55,  55,  55,  55,  55, 38, 6,  38, 39, 55,
    /* 60 */ 39,  63,  63,  63,  63,  63,  63,  55,  55,  55,  55, 55, 55, 55, 55, 55,
    /* 70 */ 55,  55,  55,  55,  55,  55,  55,  55,  55,  55,  55, 38, 39, 38, 55, 0,
    /* 80 */ 34,  34,  34,  34,  34,  34,  34,  34,  34,  34,  34, 34, 34, 34, 34, 34,
    /* 90 */ 34,  34,  34,  34,  34,  34,  34,  34,  34,  34,  34, 34, 34, 34, 34, 34,
    /* a0 */ 34,  34,  34,  34,  34,  34,  34,  34,  34,  34,  34, 34, 34, 34, 34, 34,
    /* b0 */ 34,  34,  34,  34,  34,  34,  34,  34,  34,  34,  34, 34, 34, 34, 34, 34,
    /* c0 */ 34,  34,  34,  34,  34,  34,  34,  34,  34,  34,  34, 34, 34, 34, 34, 34,
    /* d0 */ 34,  34,  34,  34,  34,  34,  34,  34,  34,  34,  34, 34, 34, 34, 34, 34,
    /* e0 */ 34,  34,  34,  34,  34,  34,  34,  34,  34,  34,  34, 34, 34, 34, 34, 34,
    /* f0 */ 34,  34,  34,  34,  34,  34,  34,  34,  34,  34,  34, 34, 34, 34, 34, 34,
};

#define IS(c, k) (cls[(unsigned char)(c)] & (k))

/* Eight bytes at a time: any byte below n (n <= 128), any byte equal to v. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
#define HAS_LESS(x, n) (((x)-ONES * (n)) & ~(x)&HIGHS)
#define HAS_ZERO(x) (((x)-ONES) & ~(x)&HIGHS)
#define HAS_BYTE(x, v) HAS_ZERO((x) ^ (ONES * (v)))

static inline uint64_t load8(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* Index of the first flagged byte of a non-zero mask. The lowest flag of
 * HAS_LESS/HAS_ZERO is always exact (borrows only run upwards). */
#define FIRST_FLAGGED(m) ((size_t)__builtin_ctzll(m) >> 3)
#endif

/* Token bytes: eight table lookups folded together, then byte by byte. */
static inline size_t skip_token(const unsigned char *b, size_t i, size_t end)
{
    while (end - i >= 8) {
        unsigned t = cls[b[i]] & cls[b[i + 1]] & cls[b[i + 2]] & cls[b[i + 3]] & cls[b[i + 4]] &
                     cls[b[i + 5]] & cls[b[i + 6]] & cls[b[i + 7]];
        if (!(t & C_TCHAR))
            break;
        i += 8;
    }
    while (i < end && IS(b[i], C_TCHAR))
        i++;
    return i;
}

/* Field value bytes: stops at a CTL (CR included) or DEL. */
static inline size_t skip_value(const unsigned char *b, size_t i, size_t end)
{
    while (end - i >= 8) {
        uint64_t x = load8(b + i);
        uint64_t m = HAS_LESS(x, 0x20) | HAS_BYTE(x, 0x7f);
        if (tg_likely(m == 0)) {
            i += 8;
            continue;
        }
#ifdef FIRST_FLAGGED
        i += FIRST_FLAGGED(m);
        if (b[i] != '\t')
            return i;
        i++;
#else
        size_t stop = i + 8;
        while (i < stop && IS(b[i], C_VALUE))
            i++;
        if (i < stop)
            return i;
#endif
    }
    while (i < end && IS(b[i], C_VALUE))
        i++;
    return i;
}

/* Request-target bytes: stops at SP, CTL, DEL, '#' or >= 0x80. */
static inline size_t skip_target(const unsigned char *b, size_t i, size_t end)
{
    while (end - i >= 8) {
        uint64_t x = load8(b + i);
        uint64_t m = HAS_LESS(x, 0x21) | (x & HIGHS) | HAS_BYTE(x, 0x7f) | HAS_BYTE(x, '#');
        if (m != 0) {
#ifdef FIRST_FLAGGED
            return i + FIRST_FLAGGED(m);
#else
            break;
#endif
        }
        i += 8;
    }
    while (i < end && IS(b[i], C_TARGET))
        i++;
    return i;
}

/* Scanner states (struct tg_http1_scan.state). */
enum {
    RL_METHOD = 0,
    RL_TARGET,
    RL_VERSION,
    RL_LF,
    SL_VERSION,
    SL_STATUS,
    SL_REASON,
    SL_LF,
    H_LINE, /* start of a field line, or of the final empty line */
    H_NAME,
    H_VALUE,
    H_LF,
    H_END_LF,
};

/* Scanner results. */
enum { R_MORE, R_NEXT, R_DONE, R_ERROR };

struct limits {
    size_t line, head, headers;
};

static void get_limits(const struct tg_http1_limits *l, struct limits *out)
{
    if (l == NULL) {
        out->line = DEFAULT_MAX_REQUEST_LINE;
        out->head = DEFAULT_MAX_HEAD;
        out->headers = DEFAULT_MAX_HEADERS;
        return;
    }
    out->line = l->max_request_line;
    out->head = l->max_head;
    out->headers = l->max_headers < TG_HTTP1_MAX_HEADERS ? l->max_headers : TG_HTTP1_MAX_HEADERS;
}

static inline bool lower_eq(const char *p, size_t n, const char *lower, size_t ln)
{
    if (n != ln)
        return false;
    for (size_t i = 0; i < n; i++)
        if (tg_ascii_lower(p[i]) != lower[i])
            return false;
    return true;
}

static bool case_eq(struct tg_str a, struct tg_str b)
{
    if (a.n != b.n)
        return false;
    for (size_t i = 0; i < a.n; i++)
        if (tg_ascii_lower(a.p[i]) != tg_ascii_lower(b.p[i]))
            return false;
    return true;
}

#define LOWER_EQ(s, lit) lower_eq((s).p, (s).n, lit, sizeof(lit) - 1)

static const char *bad_byte_reason(unsigned char c, const char *otherwise)
{
    if (c == '\n')
        return "bare LF";
    if (c == '\r')
        return "bare CR";
    if (c == 0)
        return "NUL byte";
    return otherwise;
}

/* Field lines and the empty line ending the head, shared by requests and
 * responses. Stops at the end of the head, the end of the bytes, or the
 * first error (*status 400 or 431). */
static int scan_fields(const char *buf, size_t len, const struct limits *lim,
                       struct tg_http1_scan *s, struct tg_http_header *h, size_t *nh, int *status,
                       const char **reason)
{
    const unsigned char *b = (const unsigned char *)buf;
    size_t end = len < lim->head ? len : lim->head;
    size_t i = s->pos;
    unsigned char c;

    switch (s->state) {
    case H_NAME:
        goto name;
    case H_VALUE:
        goto value;
    case H_LF:
        goto value_lf;
    case H_END_LF:
        goto end_lf;
    default:
        break;
    }

line:
    if (i == end) {
        s->state = H_LINE;
        goto more;
    }
    c = b[i];
    if (tg_likely(IS(c, C_TCHAR))) {
        if (*nh >= lim->headers) {
            *status = 431;
            *reason = "too many header fields";
            goto error;
        }
        s->line_start = i++;
        goto name;
    }
    if (c == '\r') {
        i++;
        goto end_lf;
    }
    *status = 400;
    *reason = c == ' ' || c == '\t' ? "obs-fold or whitespace before field"
              : c == ':'            ? "empty field name"
                                    : bad_byte_reason(c, "invalid character in field name");
    goto error;

name:
    i = skip_token(b, i, end);
    if (i == end) {
        s->state = H_NAME;
        goto more;
    }
    c = b[i];
    if (c != ':') {
        *status = 400;
        *reason = c == ' ' || c == '\t'    ? "whitespace before colon"
                  : c == '\r' || c == '\n' ? "field line without colon"
                                           : bad_byte_reason(c, "invalid character in field name");
        goto error;
    }
    s->mark1 = i++;

value:
    i = skip_value(b, i, end);
    if (i == end) {
        s->state = H_VALUE;
        goto more;
    }
    if (b[i] != '\r') {
        *status = 400;
        *reason = bad_byte_reason(b[i], "control character in field value");
        goto error;
    }
    i++;

value_lf:
    if (i == end) {
        s->state = H_LF;
        goto more;
    }
    if (b[i] != '\n') {
        *status = 400;
        *reason = "bare CR";
        goto error;
    }
    {
        size_t vs = s->mark1 + 1, ve = i - 1;
        while (vs < ve && (b[vs] == ' ' || b[vs] == '\t'))
            vs++;
        while (ve > vs && (b[ve - 1] == ' ' || b[ve - 1] == '\t'))
            ve--;
        h[*nh].name = tg_str_make(buf + s->line_start, s->mark1 - s->line_start);
        h[*nh].value = tg_str_make(buf + vs, ve - vs);
        (*nh)++;
    }
    i++;
    goto line;

end_lf:
    if (i == end) {
        s->state = H_END_LF;
        goto more;
    }
    if (b[i] != '\n') {
        *status = 400;
        *reason = "bare CR";
        goto error;
    }
    s->pos = i + 1;
    return R_DONE;

more:
    s->pos = i;
    if (i == lim->head) {
        /* The head needs at least one more byte: it is over the limit. */
        *status = 431;
        *reason = "head too large";
        return R_ERROR;
    }
    return R_MORE;
error:
    s->pos = i;
    return R_ERROR;
}

static int scan_request_line(const char *buf, size_t len, const struct limits *lim,
                             struct tg_http1_request *req, int *status, const char **reason)
{
    struct tg_http1_scan *s = &req->scan;
    const unsigned char *b = (const unsigned char *)buf;
    size_t cap = lim->line < lim->head ? lim->line : lim->head;
    size_t end = len < cap ? len : cap;
    size_t i = s->pos;

    switch (s->state) {
    case RL_TARGET:
        goto target;
    case RL_VERSION:
        goto version;
    case RL_LF:
        goto lf;
    default:
        break;
    }

    i = skip_token(b, i, end);
    if (i == end) {
        s->state = RL_METHOD;
        goto more;
    }
    if (b[i] != ' ' || i == 0) {
        *status = 400;
        *reason = i == 0 && (b[0] == '\r' || b[0] == '\n') ? "empty line before request line"
                  : b[i] == '\r' || b[i] == '\n'           ? "request line without target"
                                                 : bad_byte_reason(b[i], "invalid method");
        goto error;
    }
    s->mark1 = i++;

target:
    i = skip_target(b, i, end);
    if (i == end) {
        s->state = RL_TARGET;
        goto more;
    }
    if (b[i] != ' ' || i == s->mark1 + 1) {
        *status = 400;
        *reason = i == s->mark1 + 1 ? "empty request-target"
                  : b[i] == '\r' || b[i] == '\n'
                      ? "request line without HTTP version"
                      : bad_byte_reason(b[i], "invalid character in request-target");
        goto error;
    }
    s->mark2 = i++;

version:
    for (; i < end; i++) {
        size_t k = i - s->mark2 - 1;
        unsigned char c = b[i];
        bool ok;
        if (k < 5)
            ok = c == (unsigned char)"HTTP/"[k];
        else if (k == 5 || k == 7)
            ok = IS(c, C_DIGIT) != 0;
        else if (k == 6)
            ok = c == '.';
        else
            ok = c == '\r';
        if (!ok) {
            *status = 400;
            *reason =
                c == '\n' && k == 8 ? "bare LF" : bad_byte_reason(c, "malformed HTTP version");
            goto error;
        }
        if (k == 8) {
            if (b[i - 3] != '1' || (b[i - 1] != '0' && b[i - 1] != '1')) {
                *status = 505;
                *reason = "unsupported HTTP version";
                goto error;
            }
            i++;
            goto lf;
        }
    }
    s->state = RL_VERSION;
    goto more;

lf:
    if (i == end) {
        s->state = RL_LF;
        goto more;
    }
    if (b[i] != '\n') {
        *status = 400;
        *reason = "bare CR";
        goto error;
    }
    i++;
    req->method = tg_str_make(buf, s->mark1);
    req->target = tg_str_make(buf + s->mark1 + 1, s->mark2 - s->mark1 - 1);
    req->minor_version = b[s->mark2 + 8] - '0';
    s->pos = i;
    s->state = H_LINE;
    return R_NEXT;

more:
    s->pos = i;
    if (i == cap) {
        if (cap == lim->line) {
            *status = 414;
            *reason = "request line too long";
        } else {
            *status = 431;
            *reason = "head too large";
        }
        return R_ERROR;
    }
    return R_MORE;
error:
    s->pos = i;
    return R_ERROR;
}

/* "HTTP/1.x SP 3DIGIT [SP reason-phrase] CRLF". The SP before an empty
 * reason may be missing: unambiguous, and some servers omit it. */
static int scan_status_line(const char *buf, size_t len, const struct limits *lim,
                            struct tg_http1_response *resp, const char **reason)
{
    struct tg_http1_scan *s = &resp->scan;
    const unsigned char *b = (const unsigned char *)buf;
    size_t cap = lim->line < lim->head ? lim->line : lim->head;
    size_t end = len < cap ? len : cap;
    size_t i = s->pos;

    switch (s->state) {
    case SL_REASON:
        goto reason_phrase;
    case SL_LF:
        goto lf;
    default:
        break;
    }

    /* Version and status: fixed positions 0..12. */
    for (; i < end; i++) {
        unsigned char c = b[i];
        bool ok;
        if (i < 5)
            ok = c == (unsigned char)"HTTP/"[i];
        else if (i == 5 || i == 7 || i == 10 || i == 11)
            ok = IS(c, C_DIGIT) != 0;
        else if (i == 6)
            ok = c == '.';
        else if (i == 8)
            ok = c == ' ';
        else if (i == 9)
            ok = c >= '1' && c <= '9';
        else
            ok = c == ' ' || c == '\r';
        if (!ok) {
            *reason = i < 8 ? "malformed HTTP version in status line" : "malformed status line";
            goto error;
        }
        if (i == 8 && (b[5] != '1' || (b[7] != '0' && b[7] != '1'))) {
            *reason = "unsupported HTTP version in status line";
            goto error;
        }
        if (i == 12) {
            s->mark1 = ++i;
            if (c == '\r') {
                s->mark1--; /* empty reason, at the CR */
                goto lf;
            }
            goto reason_phrase;
        }
    }
    s->state = SL_VERSION;
    goto more;

reason_phrase:
    i = skip_value(b, i, end);
    if (i == end) {
        s->state = SL_REASON;
        goto more;
    }
    if (b[i] != '\r') {
        *reason = bad_byte_reason(b[i], "control character in reason phrase");
        goto error;
    }
    resp->reason = tg_str_make(buf + s->mark1, i - s->mark1);
    i++;

lf:
    if (i == end) {
        s->state = SL_LF;
        goto more;
    }
    if (b[i] != '\n') {
        *reason = "bare CR";
        goto error;
    }
    if (s->mark1 == 12)
        resp->reason = tg_str_make(buf + 12, 0);
    i++;
    resp->minor_version = b[7] - '0';
    resp->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    s->pos = i;
    s->state = H_LINE;
    return R_NEXT;

more:
    s->pos = i;
    if (i == cap) {
        *reason = cap == lim->line ? "status line too long" : "head too large";
        return R_ERROR;
    }
    return R_MORE;
error:
    s->pos = i;
    return R_ERROR;
}

/* ---- Field semantics, once the head is complete. ---- */

static bool valid_ipv4(const unsigned char *p, size_t n)
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i == n || p[i] != '.')
                return false;
            i++;
        }
        size_t s = i;
        unsigned v = 0;
        while (i < n && i - s < 3 && IS(p[i], C_DIGIT))
            v = v * 10 + (p[i++] - '0');
        if (i == s || v > 255 || (i - s > 1 && p[s] == '0'))
            return false;
    }
    return i == n;
}

/* RFC 3986 IPv6address (no zone identifier, no IPvFuture). */
static bool valid_ipv6(const unsigned char *p, size_t n)
{
    size_t i = 0;
    int groups = 0;
    bool elided = false;

    if (n < 2)
        return false;
    if (p[0] == ':') {
        if (p[1] != ':')
            return false;
        elided = true;
        i = 2;
        if (i == n)
            return true;
    }
    for (;;) {
        size_t s = i;
        while (i < n && i - s < 5 && IS(p[i], C_HEX))
            i++;
        if (i < n && p[i] == '.') {
            if (!valid_ipv4(p + s, n - s))
                return false;
            groups += 2;
            break;
        }
        if (i == s || i - s > 4)
            return false;
        groups++;
        if (i == n)
            break;
        if (p[i] != ':')
            return false;
        i++;
        if (i == n)
            return false;
        if (p[i] == ':') {
            if (elided)
                return false;
            elided = true;
            i++;
            if (i == n)
                break;
        }
        if (groups > 8)
            return false;
    }
    return elided ? groups <= 7 : groups == 8;
}

/* authority = host [ ":" port ], without userinfo. The port, when the colon
 * is there, is 1-5 digits up to 65535. A reg-name is limited to unreserved
 * characters: RFC 3986 also allows sub-delims and percent-escapes, but no
 * DNS name has them, they would let a Host dodge exact matching, and ',' or
 * ';' would split into two values in X-Forwarded-Host downstream. */
static bool valid_authority(const char *cp, size_t n, bool need_port)
{
    const unsigned char *p = (const unsigned char *)cp;
    size_t i = 0;

    if (n == 0)
        return false;
    if (p[0] == '[') {
        const unsigned char *close = memchr(p, ']', n);
        if (close == NULL || !valid_ipv6(p + 1, (size_t)(close - p) - 1))
            return false;
        i = (size_t)(close - p) + 1;
    } else {
        while (i < n && IS(p[i], C_REG))
            i++;
        if (i == 0)
            return false;
    }
    if (i == n)
        return !need_port;
    if (p[i] != ':')
        return false;
    i++;
    if (n - i == 0 || n - i > 5)
        return false;
    unsigned port = 0;
    for (; i < n; i++) {
        if (!IS(p[i], C_DIGIT))
            return false;
        port = port * 10 + (p[i] - '0');
    }
    return port <= 65535;
}

/* 1*19 DIGIT, at most INT64_MAX. */
static bool parse_content_length(struct tg_str v, uint64_t *out)
{
    uint64_t x = 0;
    if (v.n == 0 || v.n > 19)
        return false;
    for (size_t i = 0; i < v.n; i++) {
        if (!IS(v.p[i], C_DIGIT))
            return false;
        x = x * 10 + (uint64_t)(v.p[i] - '0'); /* < 10^19 < 2^64 */
    }
    if (x > (uint64_t)INT64_MAX)
        return false;
    *out = x;
    return true;
}

struct te_list {
    size_t count;   /* codings over all Transfer-Encoding fields */
    size_t chunked; /* how many of them are "chunked" */
    bool last_chunked;
};

/* Transfer-Encoding: codings are bare tokens separated by commas with
 * optional whitespace; empty elements and parameters are refused. */
static bool scan_te(struct tg_str v, struct te_list *te)
{
    size_t i = 0;
    for (;;) {
        size_t s = i;
        while (i < v.n && IS(v.p[i], C_TCHAR))
            i++;
        if (i == s)
            return false;
        te->count++;
        te->last_chunked = lower_eq(v.p + s, i - s, "chunked", 7);
        te->chunked += te->last_chunked;
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t'))
            i++;
        if (i == v.n)
            return true;
        if (v.p[i] != ',')
            return false;
        i++;
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t'))
            i++;
    }
}

/* What the fields common to requests and responses say. */
struct fields {
    size_t ncl, nhost, nte, nupgrade;
    uint64_t cl;
    struct tg_str host;
    struct te_list te;
    bool conn_close, conn_keep_alive, conn_upgrade;
    bool upgrade_websocket;
};

/* Next element of a comma-separated list from *pos: OWS around it removed,
 * empty elements skipped. False at the end of the list. */
static bool next_element(struct tg_str v, size_t *pos, struct tg_str *e)
{
    size_t i = *pos;
    for (;;) {
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
            i++;
        if (i == v.n) {
            *pos = i;
            return false;
        }
        size_t s = i;
        while (i < v.n && v.p[i] != ',')
            i++;
        size_t end = i;
        while (end > s && (v.p[end - 1] == ' ' || v.p[end - 1] == '\t'))
            end--;
        *pos = i;
        *e = tg_str_make(v.p + s, end - s);
        return true;
    }
}

static bool list_has(struct tg_str v, const char *token, size_t tn)
{
    size_t pos = 0;
    struct tg_str e;
    while (next_element(v, &pos, &e))
        if (lower_eq(e.p, e.n, token, tn))
            return true;
    return false;
}

static void read_connection(struct tg_str v, struct fields *f)
{
    size_t pos = 0;
    struct tg_str e;
    while (next_element(v, &pos, &e)) {
        if (LOWER_EQ(e, "close"))
            f->conn_close = true;
        else if (LOWER_EQ(e, "keep-alive"))
            f->conn_keep_alive = true;
        else if (LOWER_EQ(e, "upgrade"))
            f->conn_upgrade = true;
    }
}

/* "content_length" and the like: backends that map fields to CGI-style
 * variables fold '_' and '-' together, so such a field would frame the body
 * there while we ignore it. Refused rather than forwarded. */
static bool framing_alias(struct tg_str name)
{
    static const char *const names[] = {"content-length", "transfer-encoding"};
    for (size_t k = 0; k < TG_ARRAY_LEN(names); k++) {
        const char *lit = names[k];
        size_t i = 0;
        if (name.n != strlen(lit) || memchr(name.p, '_', name.n) == NULL)
            continue;
        while (i < name.n &&
               (tg_ascii_lower(name.p[i]) == lit[i] || (name.p[i] == '_' && lit[i] == '-')))
            i++;
        if (i == name.n)
            return true;
    }
    return false;
}

static bool read_fields(const struct tg_http_header *h, size_t n, struct fields *f,
                        const char **reason)
{
    memset(f, 0, sizeof(*f));
    for (size_t k = 0; k < n; k++) {
        struct tg_str name = h[k].name, v = h[k].value;
        switch (name.n) {
        case 4:
            if (LOWER_EQ(name, "host")) {
                f->nhost++;
                f->host = v;
            }
            break;
        case 7:
            if (LOWER_EQ(name, "upgrade")) {
                f->nupgrade++;
                if (list_has(v, "websocket", 9))
                    f->upgrade_websocket = true;
            }
            break;
        case 10:
            if (LOWER_EQ(name, "connection"))
                read_connection(v, f);
            break;
        case 14:
            if (LOWER_EQ(name, "content-length")) {
                if (++f->ncl > 1) {
                    *reason = "duplicate Content-Length";
                    return false;
                }
                if (!parse_content_length(v, &f->cl)) {
                    *reason = "invalid Content-Length";
                    return false;
                }
            } else if (framing_alias(name)) {
                *reason = "Content-Length spelt with '_'";
                return false;
            }
            break;
        case 17:
            if (LOWER_EQ(name, "transfer-encoding")) {
                f->nte++;
                if (!scan_te(v, &f->te)) {
                    *reason = "invalid Transfer-Encoding";
                    return false;
                }
            } else if (framing_alias(name)) {
                *reason = "Transfer-Encoding spelt with '_'";
                return false;
            }
            break;
        default:
            break;
        }
    }
    if (f->nte > 0 && f->ncl > 0) {
        *reason = "both Transfer-Encoding and Content-Length";
        return false;
    }
    return true;
}

static const struct tg_str slash = {"/", 1};

/* Splits req->target into path, query and authority by its form. */
static bool split_target(struct tg_http1_request *req, const char **reason)
{
    const char *t = req->target.p;
    size_t n = req->target.n, i = 0;

    req->authority = tg_str_make(NULL, 0);
    req->query = tg_str_make(NULL, 0);
    if (req->method_id == TG_HTTP_CONNECT) {
        if (!valid_authority(t, n, true)) {
            *reason = "CONNECT needs authority-form host:port";
            return false;
        }
        req->path = req->target;
        return true;
    }
    if (t[0] == '/') {
        /* origin-form */
    } else if (n == 1 && t[0] == '*') {
        if (req->method_id != TG_HTTP_OPTIONS) {
            *reason = "asterisk-form other than OPTIONS";
            return false;
        }
        req->path = req->target;
        return true;
    } else {
        /* absolute-form: http or https, always with an authority. */
        if (n > 7 && lower_eq(t, 7, "http://", 7))
            i = 7;
        else if (n > 8 && lower_eq(t, 8, "https://", 8))
            i = 8;
        else {
            *reason = "invalid request-target";
            return false;
        }
        size_t a = i;
        while (i < n && t[i] != '/' && t[i] != '?')
            i++;
        if (!valid_authority(t + a, i - a, false)) {
            *reason = "invalid authority in request-target";
            return false;
        }
        req->authority = tg_str_make(t + a, i - a);
    }
    size_t ps = i;
    const char *q = memchr(t + i, '?', n - i);
    size_t pe = q ? (size_t)(q - t) : n;
    req->path = pe > ps ? tg_str_make(t + ps, pe - ps) : slash;
    if (q)
        req->query = tg_str_make(q + 1, n - pe - 1);
    return true;
}

static int finish_request(struct tg_http1_request *req, int *status, const char **reason)
{
    struct fields f;

    *status = 400;
    req->method_id = tg_http_method_id(req->method);
    if (!split_target(req, reason))
        return -1;
    if (!read_fields(req->headers, req->nheaders, &f, reason))
        return -1;

    if (f.nhost > 1) {
        *reason = "duplicate Host";
        return -1;
    }
    if (f.nhost == 0 && req->minor_version == 1) {
        *reason = "missing Host";
        return -1;
    }
    if (f.nhost == 1 && !valid_authority(f.host.p, f.host.n, false)) {
        *reason = "invalid Host";
        return -1;
    }
    if (req->authority.p != NULL) {
        if (f.nhost == 1 && !case_eq(f.host, req->authority)) {
            *reason = "Host differs from request-target authority";
            return -1;
        }
        req->host = req->authority;
    } else {
        req->host = f.nhost ? f.host : tg_str_make(NULL, 0);
    }

    req->content_length = 0;
    if (f.nte > 0) {
        if (req->minor_version == 0) {
            *reason = "Transfer-Encoding in HTTP/1.0";
            return -1;
        }
        if (f.te.count != 1 || f.te.chunked != 1) {
            *reason = "Transfer-Encoding other than chunked";
            return -1;
        }
        req->framing = TG_HTTP1_BODY_CHUNKED;
    } else if (f.ncl > 0 && f.cl > 0) {
        req->framing = TG_HTTP1_BODY_LENGTH;
        req->content_length = f.cl;
    } else {
        req->framing = TG_HTTP1_BODY_NONE;
    }

    if (req->minor_version == 1) {
        req->keep_alive = !f.conn_close;
        req->upgrade = f.conn_upgrade && f.nupgrade > 0;
    } else {
        req->keep_alive = f.conn_keep_alive && !f.conn_close;
        req->upgrade = false;
    }
    req->upgrade_websocket = req->upgrade && f.upgrade_websocket;
    return 0;
}

static int finish_response(struct tg_http1_response *resp, enum tg_http_method method,
                           const char **reason)
{
    struct fields f;
    int st = resp->status;

    if (!read_fields(resp->headers, resp->nheaders, &f, reason))
        return -1;
    if (f.nte > 0) {
        if (resp->minor_version == 0) {
            *reason = "Transfer-Encoding in HTTP/1.0 response";
            return -1;
        }
        if (f.te.chunked != 1 || !f.te.last_chunked) {
            *reason = "Transfer-Encoding not ending in a single chunked";
            return -1;
        }
    }
    if (method == TG_HTTP_CONNECT && st >= 200 && st < 300) {
        *reason = "2xx response to CONNECT";
        return -1;
    }

    resp->content_length = 0;
    if (method == TG_HTTP_HEAD || st < 200 || st == 204 || st == 304)
        resp->framing = TG_HTTP1_BODY_NONE;
    else if (f.nte > 0)
        resp->framing = TG_HTTP1_BODY_CHUNKED;
    else if (f.ncl > 0) {
        resp->framing = f.cl > 0 ? TG_HTTP1_BODY_LENGTH : TG_HTTP1_BODY_NONE;
        resp->content_length = f.cl;
    } else
        resp->framing = TG_HTTP1_BODY_CLOSE;

    if (resp->minor_version == 1)
        resp->keep_alive = !f.conn_close;
    else
        resp->keep_alive = f.conn_keep_alive && !f.conn_close;
    if (resp->framing == TG_HTTP1_BODY_CLOSE)
        resp->keep_alive = false;
    resp->upgrade_websocket = st == 101 && f.upgrade_websocket;
    return 0;
}

/* ---- Public entry points. ---- */

ssize_t tg_http1_parse_request(const char *buf, size_t len, size_t *scanned,
                               const struct tg_http1_limits *limits, struct tg_http1_request *req,
                               int *status, const char **reason)
{
    struct tg_http1_scan *s = &req->scan;
    struct limits lim;
    int st = 0, rc;
    const char *why = NULL;

    get_limits(limits, &lim);
    if (*scanned == 0 || s->buf != buf || s->pos != *scanned || s->pos > len) {
        s->buf = buf;
        s->pos = 0;
        s->state = RL_METHOD;
        req->nheaders = 0;
    }

    rc = R_NEXT;
    if (s->state < H_LINE)
        rc = scan_request_line(buf, len, &lim, req, &st, &why);
    if (rc == R_NEXT)
        rc = scan_fields(buf, len, &lim, s, req->headers, &req->nheaders, &st, &why);
    *scanned = s->pos;
    if (rc == R_MORE)
        return TG_HTTP1_INCOMPLETE;
    s->buf = NULL;
    if (rc == R_DONE && finish_request(req, &st, &why) == 0) {
        req->head_len = s->pos;
        return (ssize_t)s->pos;
    }
    if (status)
        *status = st;
    if (reason)
        *reason = why;
    return TG_HTTP1_ERROR;
}

ssize_t tg_http1_parse_response(const char *buf, size_t len, size_t *scanned,
                                const struct tg_http1_limits *limits,
                                enum tg_http_method request_method, struct tg_http1_response *resp,
                                const char **reason)
{
    struct tg_http1_scan *s = &resp->scan;
    struct limits lim;
    int st = 0, rc;
    const char *why = NULL;

    get_limits(limits, &lim);
    if (*scanned == 0 || s->buf != buf || s->pos != *scanned || s->pos > len) {
        s->buf = buf;
        s->pos = 0;
        s->state = SL_VERSION;
        resp->nheaders = 0;
    }

    rc = R_NEXT;
    if (s->state < H_LINE)
        rc = scan_status_line(buf, len, &lim, resp, &why);
    if (rc == R_NEXT)
        rc = scan_fields(buf, len, &lim, s, resp->headers, &resp->nheaders, &st, &why);
    *scanned = s->pos;
    if (rc == R_MORE)
        return TG_HTTP1_INCOMPLETE;
    s->buf = NULL;
    if (rc == R_DONE && finish_response(resp, request_method, &why) == 0) {
        resp->head_len = s->pos;
        return (ssize_t)s->pos;
    }
    if (reason)
        *reason = why;
    return TG_HTTP1_ERROR;
}

/* ---- Chunked decoder. ---- */

enum {
    CK_SIZE_FIRST = 0,
    CK_SIZE,
    CK_EXT_NAME_FIRST,
    CK_EXT_NAME,
    CK_EXT_VALUE_FIRST,
    CK_EXT_TOKEN,
    CK_EXT_QUOTED,
    CK_EXT_QPAIR,
    CK_EXT_QUOTED_END,
    CK_SIZE_LF,
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TR_LINE,
    CK_TR_NAME,
    CK_TR_VALUE,
    CK_TR_LF,
    CK_END_LF,
};

void tg_http1_chunked_init(struct tg_http1_chunked *c, size_t max_trailer)
{
    memset(c, 0, sizeof(*c));
    c->state = CK_SIZE_FIRST;
    c->max_trailer = max_trailer;
}

static inline unsigned hexval(unsigned char ch)
{
    return ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10;
}

ssize_t tg_http1_chunked_next(struct tg_http1_chunked *c, const char *p, size_t n, size_t *data_len)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t i;

    *data_len = 0;
    if (c->done)
        return 0;
    if (c->state == CK_DATA) {
        size_t take = n < c->remaining ? n : (size_t)c->remaining;
        c->remaining -= take;
        if (c->remaining == 0)
            c->state = CK_DATA_CR;
        *data_len = take;
        return (ssize_t)take;
    }

    for (i = 0; i < n; i++) {
        unsigned char ch = b[i];
        int st = c->state;

        if (st <= CK_SIZE_LF) {
            if (++c->line_len > CHUNK_LINE_MAX)
                return -1;
        } else if ((st >= CK_TR_NAME && st <= CK_TR_LF) || (st == CK_TR_LINE && ch != '\r')) {
            if (++c->trailer_len > c->max_trailer)
                return -1;
        }

        switch (st) {
        case CK_SIZE_FIRST:
        case CK_SIZE:
            if (IS(ch, C_HEX)) {
                /* line_len counts the digits so far, this one included. */
                if (c->line_len > 16 || c->remaining > ((uint64_t)INT64_MAX >> 4))
                    return -1;
                c->remaining = (c->remaining << 4) | hexval(ch);
                c->state = CK_SIZE;
            } else if (st == CK_SIZE_FIRST) {
                return -1;
            } else if (ch == ';') {
                c->state = CK_EXT_NAME_FIRST;
            } else if (ch == '\r') {
                c->state = CK_SIZE_LF;
            } else {
                return -1;
            }
            break;
        case CK_EXT_NAME_FIRST:
            if (!IS(ch, C_TCHAR))
                return -1;
            c->state = CK_EXT_NAME;
            break;
        case CK_EXT_NAME:
        case CK_EXT_TOKEN:
            if (IS(ch, C_TCHAR))
                break;
            if (ch == '=' && st == CK_EXT_NAME)
                c->state = CK_EXT_VALUE_FIRST;
            else if (ch == ';')
                c->state = CK_EXT_NAME_FIRST;
            else if (ch == '\r')
                c->state = CK_SIZE_LF;
            else
                return -1;
            break;
        case CK_EXT_VALUE_FIRST:
            if (ch == '"')
                c->state = CK_EXT_QUOTED;
            else if (IS(ch, C_TCHAR))
                c->state = CK_EXT_TOKEN;
            else
                return -1;
            break;
        case CK_EXT_QUOTED:
            if (ch == '"')
                c->state = CK_EXT_QUOTED_END;
            else if (ch == '\\')
                c->state = CK_EXT_QPAIR;
            else if (!IS(ch, C_QDTEXT))
                return -1;
            break;
        case CK_EXT_QPAIR:
            if (!IS(ch, C_VALUE))
                return -1;
            c->state = CK_EXT_QUOTED;
            break;
        case CK_EXT_QUOTED_END:
            if (ch == ';')
                c->state = CK_EXT_NAME_FIRST;
            else if (ch == '\r')
                c->state = CK_SIZE_LF;
            else
                return -1;
            break;
        case CK_SIZE_LF:
            if (ch != '\n')
                return -1;
            c->line_len = 0;
            if (c->remaining == 0) {
                c->state = CK_TR_LINE;
            } else {
                c->state = CK_DATA;
                return (ssize_t)(i + 1);
            }
            break;
        case CK_DATA_CR:
            if (ch != '\r')
                return -1;
            c->state = CK_DATA_LF;
            break;
        case CK_DATA_LF:
            if (ch != '\n')
                return -1;
            c->state = CK_SIZE_FIRST;
            break;
        case CK_TR_LINE:
            if (ch == '\r')
                c->state = CK_END_LF;
            else if (IS(ch, C_TCHAR))
                c->state = CK_TR_NAME;
            else
                return -1;
            break;
        case CK_TR_NAME:
            if (ch == ':')
                c->state = CK_TR_VALUE;
            else if (!IS(ch, C_TCHAR))
                return -1;
            break;
        case CK_TR_VALUE:
            if (ch == '\r')
                c->state = CK_TR_LF;
            else if (!IS(ch, C_VALUE))
                return -1;
            break;
        case CK_TR_LF:
            if (ch != '\n')
                return -1;
            c->state = CK_TR_LINE;
            break;
        case CK_END_LF:
            if (ch != '\n')
                return -1;
            c->done = true;
            return (ssize_t)(i + 1);
        default:
            return -1;
        }
    }
    return (ssize_t)i;
}

/* ---- Helpers. ---- */

bool tg_http1_list_has(struct tg_str v, const char *token)
{
    return list_has(v, token, strlen(token));
}

bool tg_http1_chunked_at_boundary(const struct tg_http1_chunked *c)
{
    return !c->done && c->state == CK_SIZE_FIRST && c->line_len == 0;
}
