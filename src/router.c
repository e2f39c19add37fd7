/* Routing primitives: path normalisation, route path patterns and the Host
 * index. All are pure: normalisation and matching write into the caller's
 * buffer or nothing and never allocate; patterns and the index allocate
 * only while they are built. Route tables, sites and tenants live
 * elsewhere; this module only answers "which pattern" and "which canonical
 * path". */
#include "router.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec.h"

/* ---- path normalisation ------------------------------------------------ */

static bool is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/* One pass, segment by segment: each segment is decoded straight into out,
 * then, if it turned out to be "." or ".." (however it was spelled), taken
 * back out again. Decoding happens exactly once, so "%252e" stays "%252E"
 * and never becomes a dot. The write cursor never passes the read cursor,
 * which is what bounds the output by the input and allows out == in. */
ssize_t tg_router_normalize_path(const char *in, size_t n, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i = 1, o = 1;

    if (n == 0 || in[0] != '/' || cap < n)
        return -1;
    out[0] = '/';
    for (;;) {
        while (i < n && in[i] == '/')
            i++;
        if (i == n)
            break;

        size_t seg = o;
        while (i < n && in[i] != '/') {
            unsigned char c = (unsigned char)in[i];
            if (c == '%') {
                int hi = i + 2 < n ? tg_hex_digit((unsigned char)in[i + 1]) : -1;
                int lo = i + 2 < n ? tg_hex_digit((unsigned char)in[i + 2]) : -1;
                if (hi < 0 || lo < 0)
                    return -1;
                unsigned char v = (unsigned char)(hi << 4 | lo);
                i += 3;
                if (is_unreserved(v)) {
                    out[o++] = (char)v;
                } else if (v == '/' || v == '\\' || v < 0x20 || v == 0x7f) {
                    return -1;
                } else {
                    out[o++] = '%';
                    out[o++] = hex[v >> 4];
                    out[o++] = hex[v & 0xf];
                }
            } else if (c <= 0x20 || c >= 0x7f || c == '\\' || c == '#') {
                return -1;
            } else {
                out[o++] = (char)c;
                i++;
            }
        }

        size_t len = o - seg;
        if (len == 1 && out[seg] == '.') {
            o = seg; /* "/a/./b" -> "/a/b"; a final "/." leaves "/a/" */
        } else if (len == 2 && out[seg] == '.' && out[seg + 1] == '.') {
            /* Drop the segment and its parent; out[seg - 1] is '/'. At the
             * root there is no parent: "/.." is "/". */
            o = seg > 1 ? seg - 1 : seg;
            while (out[o - 1] != '/')
                o--;
        } else if (i < n) {
            out[o++] = '/'; /* in[i] == '/' */
            i++;
        }
    }
    return (ssize_t)o;
}

/* ---- route patterns ----------------------------------------------------- */

/* A pattern is a list of tokens, one per segment of the normalised path,
 * plus the implicit tail of a prefix pattern. Matching runs the classic
 * "backtrack to the last star" glob algorithm twice over: over segments,
 * where '**' is the star and every other token takes exactly one segment,
 * and inside a segment, where '*' is the star. Each level only ever goes
 * back to its last star, so the cost is bounded by the product of the
 * lengths, never exponential. */
enum {
    TOK_LIT,  /* the segment, byte for byte */
    TOK_GLOB, /* a segment holding '*' */
    TOK_STAR, /* exactly "*": any one segment, also the implicit one */
    TOK_ANY,  /* "**": any run of whole segments, maybe none */
};

struct pattern_tok {
    uint16_t off, len; /* the segment's bytes in lit */
    uint8_t kind;
};

struct tg_route_pattern {
    const char *text; /* canonical: "= " if exact, the normalised path */
    const char *lit;  /* the normalised path, folded if ignore_case */
    size_t lit_len;
    /* A glob's leading literal segments: every path it matches starts with
     * lit[0..fixed_len) followed by '/' or its end, and matching goes on
     * with token first_tok. 0 when the first segment is a wildcard. */
    size_t fixed_len;
    size_t first_tok;
    bool exact;
    bool ignore_case;
    bool literal; /* no wildcard: the memcmp rule */
    size_t ntok;
    struct pattern_tok tok[TG_ROUTE_PATTERN_MAX_SEGMENTS + 2];
    /* text and lit follow, in the same allocation */
};

/* Fold sequences: percent-encoded UTF-8 of the non-ASCII letters that
 * Unicode simple case folding takes to ASCII (Go's strings.EqualFold). */
static bool fold_seq_at(const char *p, size_t n, const char *seq, size_t len)
{
    if (n < len)
        return false;
    for (size_t j = 0; j < len; j++) {
        if (tg_ascii_lower(p[j]) != tg_ascii_lower(seq[j]))
            return false;
    }
    return true;
}

/* Occurrences of the sequences cannot overlap (each '%' inside them is
 * followed by a byte no sequence starts with), so one left-to-right scan
 * finds them all, and folding again finds nothing new: the 's' and 'k'
 * written are not part of any sequence. */
size_t tg_router_fold_path(const char *in, size_t n, char *out, size_t cap)
{
    size_t i = 0, o = 0;

    if (cap < n)
        return 0;
    while (i < n) {
        if (in[i] == '%') {
            if (fold_seq_at(in + i, n - i, "%C5%BF", 6)) {
                out[o++] = 's'; /* U+017F LATIN SMALL LETTER LONG S */
                i += 6;
                continue;
            }
            if (fold_seq_at(in + i, n - i, "%E2%84%AA", 9)) {
                out[o++] = 'k'; /* U+212A KELVIN SIGN */
                i += 9;
                continue;
            }
        }
        out[o++] = tg_ascii_lower(in[i++]);
    }
    return o;
}

static struct tg_route_pattern *pattern_fail(char *err, size_t errlen, size_t *err_offset,
                                             size_t at, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    if (err_offset != NULL)
        *err_offset = at;
    return NULL;
}

/* What tg_router_normalize_path would refuse in t[from..n), and where; or
 * a raw '?'. The normaliser only says yes or no; this points at the byte. */
static const char *path_problem(const char *t, size_t from, size_t n, size_t *at, char *buf,
                                size_t buflen)
{
    for (size_t i = from; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        *at = i;
        if (c == '%') {
            int hi = i + 2 < n ? tg_hex_digit((unsigned char)t[i + 1]) : -1;
            int lo = i + 2 < n ? tg_hex_digit((unsigned char)t[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return "'%' must be followed by two hex digits";
            int v = hi << 4 | lo;
            if (v == '/' || v == '\\' || v < 0x20 || v == 0x7f)
                return "an encoded '/', '\\' or control byte is not allowed "
                       "in a route path";
            i += 2;
        } else if (c == '?') {
            return "'?' would start the query and routes match the path "
                   "only; write %3F for a literal '?'";
        } else if (c == '\\') {
            return "'\\' is not allowed in a route path";
        } else if (c <= 0x20 || c >= 0x7f || c == '#') {
            snprintf(buf, buflen,
                     "byte 0x%02X is not allowed in a route path "
                     "(percent-encode spaces, '#' and non-ASCII bytes)",
                     c);
            return buf;
        }
    }
    return NULL;
}

/* Where in t[from..n) the k-th segment (0-based) starts, runs of '/'
 * counting as one: the normalised path never has more segments than this
 * counts, so the offset of an excess segment exists. */
static size_t raw_segment_at(const char *t, size_t from, size_t n, size_t k)
{
    size_t i = from;
    for (;;) {
        while (i < n && t[i] == '/')
            i++;
        if (k == 0 || i >= n)
            return i;
        while (i < n && t[i] != '/')
            i++;
        k--;
    }
}

static void push_tok(struct tg_route_pattern *p, uint8_t kind, size_t off, size_t len)
{
    if (kind == TOK_ANY && p->ntok > 0 && p->tok[p->ntok - 1].kind == TOK_ANY)
        return; /* "**" twice in a row is "**" once */
    p->tok[p->ntok].kind = kind;
    p->tok[p->ntok].off = (uint16_t)off;
    p->tok[p->ntok].len = (uint16_t)len;
    p->ntok++;
}

struct tg_route_pattern *tg_router_pattern_compile(const char *text, bool ignore_case, char *err,
                                                   size_t errlen, size_t *err_offset)
{
    size_t len = strlen(text), i = 0, at = 0;
    bool exact = false;
    char buf[160];

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (len > TG_ROUTE_PATTERN_MAX_LEN)
        return pattern_fail(err, errlen, err_offset, TG_ROUTE_PATTERN_MAX_LEN,
                            "route path longer than %d bytes", TG_ROUTE_PATTERN_MAX_LEN);
    if (text[0] == '=') {
        exact = true;
        i = 1;
        while (text[i] == ' ' || text[i] == '\t')
            i++;
    }
    if (text[i] != '/')
        return pattern_fail(err, errlen, err_offset, i,
                            exact ? "expected a path starting with '/' "
                                    "after '='"
                                  : "a route path must start with '/' "
                                    "(or '= /' for an exact match)");
    const char *why = path_problem(text, i, len, &at, buf, sizeof(buf));
    if (why != NULL)
        return pattern_fail(err, errlen, err_offset, at, "%s", why);

    /* '**' inside a longer segment, checked on the raw text so that the
     * offset is right: decoding never moves a '*' next to another. */
    size_t stars = 0, star_at = 0;
    for (size_t s = i; s < len;) {
        size_t e = s;
        while (e < len && text[e] != '/')
            e++;
        for (size_t j = s; j < e; j++) {
            if (text[j] != '*')
                continue;
            if (++stars == TG_ROUTE_PATTERN_MAX_STARS + 1)
                star_at = j;
            if (j + 1 < e && text[j + 1] == '*' && e - s != 2)
                return pattern_fail(err, errlen, err_offset, j,
                                    "'**' must be a whole segment, as in "
                                    "/a/**/b; use '*' within a segment");
        }
        s = e + 1;
    }

    size_t plen = len - i, prefix = exact ? 2 : 0;
    struct tg_route_pattern *p = malloc(sizeof(*p) + prefix + plen + 1 + plen + 1);
    if (p == NULL)
        return pattern_fail(err, errlen, err_offset, 0, "out of memory");
    memset(p, 0, sizeof(*p));
    char *t = (char *)(p + 1);
    memcpy(t, "= ", prefix);
    ssize_t m = tg_router_normalize_path(text + i, plen, t + prefix, plen);
    if (m < 0) { /* path_problem() let through what the normaliser refuses */
        free(p);
        return pattern_fail(err, errlen, err_offset, i, "not a valid URL path");
    }
    size_t n = (size_t)m;
    t[prefix + n] = '\0';
    char *lit = t + prefix + n + 1;
    if (ignore_case)
        n = tg_router_fold_path(t + prefix, n, lit, n);
    else
        memcpy(lit, t + prefix, n);
    lit[n] = '\0';
    p->text = t;
    p->lit = lit;
    p->lit_len = n;
    p->exact = exact;
    p->ignore_case = ignore_case;

    /* Limits count what was compiled; the offsets point into the text. */
    size_t nstars = 0;
    for (size_t j = 0; j < n; j++)
        nstars += lit[j] == '*';
    if (nstars > TG_ROUTE_PATTERN_MAX_STARS) {
        free(p);
        return pattern_fail(err, errlen, err_offset, star_at, "more than %d '*' in a route path",
                            TG_ROUTE_PATTERN_MAX_STARS);
    }
    p->literal = nstars == 0;

    size_t nseg = 0;
    for (size_t s = 1; s <= n;) {
        const char *slash = memchr(lit + s, '/', n - s);
        size_t e = slash != NULL ? (size_t)(slash - lit) : n, sl = e - s;
        if (++nseg > TG_ROUTE_PATTERN_MAX_SEGMENTS) {
            free(p);
            return pattern_fail(err, errlen, err_offset, raw_segment_at(text, i, len, nseg - 1),
                                "more than %d segments in a route path",
                                TG_ROUTE_PATTERN_MAX_SEGMENTS);
        }
        uint8_t kind = TOK_LIT;
        if (sl == 2 && lit[s] == '*' && lit[s + 1] == '*')
            kind = TOK_ANY;
        else if (sl == 1 && lit[s] == '*')
            kind = TOK_STAR;
        else if (memchr(lit + s, '*', sl) != NULL)
            kind = TOK_GLOB;
        push_tok(p, kind, s, sl);
        s = e + 1;
    }
    if (!exact) {
        /* A prefix is the pattern followed by a '**' segment; a last empty
         * segment ("/api/") asks for one more segment of any content:
         * [api, *, **]. */
        struct pattern_tok *last = &p->tok[p->ntok - 1];
        if (last->kind == TOK_LIT && last->len == 0)
            last->kind = TOK_STAR;
        push_tok(p, TOK_ANY, n, 0);
    }
    while (p->first_tok < p->ntok && p->tok[p->first_tok].kind == TOK_LIT)
        p->first_tok++;
    if (p->first_tok > 0) {
        const struct pattern_tok *k = &p->tok[p->first_tok - 1];
        p->fixed_len = (size_t)k->off + k->len;
    }
    return p;
}

void tg_router_pattern_free(struct tg_route_pattern *p)
{
    free(p);
}

/* Inside one segment: does glob g (its '*' any run of bytes) match s? With
 * '*' in s too, the answer is "is every segment s matches matched by g",
 * since a literal byte of g is never '*': only g's stars absorb s's. */
static bool glob_seg(const char *g, size_t gn, const char *s, size_t sn)
{
    size_t gi = 0, si = 0, star = SIZE_MAX, mark = 0;
    while (si < sn) {
        if (gi < gn && g[gi] == '*') {
            star = gi++;
            mark = si;
        } else if (gi < gn && g[gi] == s[si]) {
            gi++;
            si++;
        } else if (star != SIZE_MAX) {
            gi = star + 1;
            si = ++mark;
        } else {
            return false;
        }
    }
    while (gi < gn && g[gi] == '*')
        gi++;
    return gi == gn;
}

static bool tok_match(const struct tg_route_pattern *p, const struct pattern_tok *t,
                      const char *seg, size_t n)
{
    switch (t->kind) {
    case TOK_LIT:
        return n == t->len && memcmp(seg, p->lit + t->off, n) == 0;
    case TOK_GLOB:
        return glob_seg(p->lit + t->off, t->len, seg, n);
    default:
        return true; /* TOK_STAR; TOK_ANY never gets here */
    }
}

/* Segment level. A segment starts at si (after a '/') and ends at the next
 * '/' or at n; si == n + 1 means the segments are used up, so "/" has one
 * empty segment and "/a/" has "a" and "". */
static bool match_tokens(const struct tg_route_pattern *p, size_t ti, const char *path, size_t n,
                         size_t si)
{
    size_t star_t = SIZE_MAX, star_s = 0;
    while (si <= n) {
        const char *slash = memchr(path + si, '/', n - si);
        size_t e = slash != NULL ? (size_t)(slash - path) : n;
        if (ti < p->ntok && p->tok[ti].kind == TOK_ANY) {
            star_t = ti++;
            star_s = si;
        } else if (ti < p->ntok && tok_match(p, &p->tok[ti], path + si, e - si)) {
            ti++;
            si = e + 1;
        } else if (star_t != SIZE_MAX) {
            /* Let the last '**' take one more segment and retry. */
            slash = memchr(path + star_s, '/', n - star_s);
            star_s = slash != NULL ? (size_t)(slash - path) + 1 : n + 1;
            si = star_s;
            ti = star_t + 1;
        } else {
            return false;
        }
    }
    while (ti < p->ntok && p->tok[ti].kind == TOK_ANY)
        ti++;
    return ti == p->ntok;
}

bool tg_router_pattern_match(const struct tg_route_pattern *p, const char *path, size_t n)
{
    size_t len = p->lit_len, fixed = p->fixed_len;

    if (p->literal) {
        /* The rule routes always had: "/api" matches "/api" and "/api/x"
         * but not "/apix"; "/api/" matches whatever starts with it. */
        if (n < len || memcmp(path, p->lit, len) != 0)
            return false;
        if (p->exact)
            return n == len;
        return n == len || p->lit[len - 1] == '/' || path[len] == '/';
    }
    if (n == 0 || path[0] != '/')
        return false;
    if (fixed > 0 &&
        (n < fixed || memcmp(path, p->lit, fixed) != 0 || (n > fixed && path[fixed] != '/')))
        return false;
    return match_tokens(p, p->first_tok, path, n, fixed + 1);
}

bool tg_router_pattern_ignore_case(const struct tg_route_pattern *p)
{
    return p->ignore_case;
}

const char *tg_router_pattern_text(const struct tg_route_pattern *p)
{
    return p->text;
}

const char *tg_router_pattern_kind(const struct tg_route_pattern *p)
{
    if (p->literal)
        return p->exact ? "exact" : "prefix";
    return p->exact ? "pattern (exact)" : "pattern (prefix)";
}

/* Is every segment u (of b) matches also matched by t (of a)? */
static bool tok_includes(const struct tg_route_pattern *a, const struct pattern_tok *t,
                         const struct tg_route_pattern *b, const struct pattern_tok *u)
{
    const char *ub = b->lit + u->off;
    if (u->kind == TOK_ANY)
        return false; /* only a '**' of a absorbs a '**' of b */
    switch (t->kind) {
    case TOK_STAR:
        return true;
    case TOK_LIT:
        return u->kind == TOK_LIT && u->len == t->len && memcmp(ub, a->lit + t->off, u->len) == 0;
    case TOK_GLOB:
        if (u->kind == TOK_STAR)
            return glob_seg(a->lit + t->off, t->len, "*", 1);
        return glob_seg(a->lit + t->off, t->len, ub, u->len);
    default:
        return false;
    }
}

/* match_tokens() with b's tokens as the segments. Sound: an alignment it
 * finds maps any path b matches onto one a matches. */
static bool covers_tokens(const struct tg_route_pattern *a, const struct tg_route_pattern *b)
{
    size_t ti = 0, ui = 0, star_t = SIZE_MAX, star_u = 0;
    while (ui < b->ntok) {
        if (ti < a->ntok && a->tok[ti].kind == TOK_ANY) {
            star_t = ti++;
            star_u = ui;
        } else if (ti < a->ntok && tok_includes(a, &a->tok[ti], b, &b->tok[ui])) {
            ti++;
            ui++;
        } else if (star_t != SIZE_MAX) {
            ti = star_t + 1;
            ui = ++star_u;
        } else {
            return false;
        }
    }
    while (ti < a->ntok && a->tok[ti].kind == TOK_ANY)
        ti++;
    return ti == a->ntok;
}

static bool caseeq_n(const char *x, const char *y, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        if (tg_ascii_lower(x[j]) != tg_ascii_lower(y[j]))
            return false;
    }
    return true;
}

/* Could a fold sequence in a path b matches straddle one of b's '*' and
 * the literal piece l next to it (star_before: l follows a '*'; star_after:
 * a '*' follows l)? Then folding the path is not folding b piece by piece,
 * and comparing a with folded b would not be sound: a segment "*Abc"
 * matches "%E2%84%AAbc", whose fold "kbc" the folded "*abc" does not. */
static bool piece_may_straddle(const char *l, size_t n, bool star_before, bool star_after)
{
    static const char *const seqs[] = {"%C5%BF", "%E2%84%AA"};
    for (size_t q = 0; q < TG_ARRAY_LEN(seqs); q++) {
        const char *seq = seqs[q];
        size_t sl = strlen(seq);
        for (size_t cut = 1; cut < sl; cut++) {
            /* Starts in the star's run, ends in l (or runs through l into
             * the next star): l begins with seq[cut..], or is inside it. */
            const char *suf = seq + cut;
            size_t sufl = sl - cut;
            if (star_before && ((n >= sufl && caseeq_n(l, suf, sufl)) ||
                                (n < sufl && star_after && caseeq_n(l, suf, n))))
                return true;
            /* Starts in l, ends in the star's run: l ends with seq[..cut]. */
            if (star_after && ((n >= cut && caseeq_n(l + n - cut, seq, cut)) ||
                               (n < cut && star_before && caseeq_n(l, seq + cut - n, n))))
                return true;
        }
    }
    return false;
}

static bool fold_may_straddle(const struct tg_route_pattern *b)
{
    for (size_t k = 0; k < b->ntok; k++) {
        const struct pattern_tok *u = &b->tok[k];
        if (u->kind != TOK_GLOB)
            continue; /* whole segments: '/' is in no fold sequence */
        const char *s = b->lit + u->off, *end = s + u->len;
        bool star_before = false;
        while (s <= end) {
            const char *star = memchr(s, '*', (size_t)(end - s));
            const char *stop = star != NULL ? star : end;
            if (piece_may_straddle(s, (size_t)(stop - s), star_before, star != NULL))
                return true;
            if (star == NULL)
                break;
            star_before = true;
            s = star + 1;
        }
    }
    return false;
}

bool tg_router_pattern_covers(const struct tg_route_pattern *a, const struct tg_route_pattern *b)
{
    /* a made of '*' and '**' only takes any path with enough segments
     * ("/" any path at all: every path has at least one segment). Decided
     * exactly, case aside. */
    size_t stars = 0, bmin = 0;
    bool a_any = false, b_any = false, only_stars = true;
    for (size_t k = 0; k < a->ntok; k++) {
        if (a->tok[k].kind == TOK_ANY)
            a_any = true;
        else if (a->tok[k].kind == TOK_STAR)
            stars++;
        else
            only_stars = false;
    }
    if (only_stars) {
        for (size_t k = 0; k < b->ntok; k++) {
            if (b->tok[k].kind == TOK_ANY)
                b_any = true;
            else
                bmin++;
        }
        if (a_any)
            return (bmin > 0 ? bmin : 1) >= stars;
        return !b_any && bmin == stars;
    }

    if (a->ignore_case == b->ignore_case)
        return covers_tokens(a, b);
    if (!a->ignore_case) {
        /* b sees folded paths, a raw ones: b's literals must not care. */
        for (size_t j = 0; j < b->lit_len; j++) {
            if (b->lit[j] >= 'a' && b->lit[j] <= 'z')
                return false;
        }
        return covers_tokens(a, b);
    }
    if (fold_may_straddle(b))
        return false;
    struct tg_route_pattern *fb = tg_router_pattern_compile(b->text, true, NULL, 0, NULL);
    if (fb == NULL)
        return false;
    bool r = covers_tokens(a, fb);
    tg_router_pattern_free(fb);
    return r;
}

/* ---- host index --------------------------------------------------------- */

enum {
    SUFFIX_WILDCARD = 1, /* "*.name": one or more labels in front */
    SUFFIX_CAPTURE,      /* "{x}.name": exactly one label in front */
};

/* One slot per distinct name. A name can hold both an exact value
 * ("app.test") and a suffix value ("*.app.test" or "{t}.app.test"), so one
 * probe per label answers both questions. */
struct host_entry {
    char *name; /* lower case, owned; NULL = empty slot */
    size_t len;
    uint64_t hash;
    void *exact;
    void *suffix;
    int suffix_kind;
};

struct tg_host_index {
    struct host_entry *slots;
    size_t cap; /* power of two, at most half full */
    size_t used;
    size_t suffixes; /* entries with a '*.' or '{capture}.' pattern */
    void *any;       /* "*" */
};

#define HOST_MAX 253
#define LABEL_MAX 63

/* FNV-1a over the lower-cased bytes, so a lookup hashes the Host as it came
 * without copying it. The keys come from the config, not from clients, so
 * clients cannot build collisions into the table; they can at most probe
 * its longest run. */
static uint64_t hash_lower(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)tg_ascii_lower(p[i]);
        h *= 0x100000001b3ULL;
    }
    return h;
}

static struct host_entry *find_slot(const struct tg_host_index *ix, const char *p, size_t n,
                                    uint64_t h)
{
    size_t mask = ix->cap - 1;
    for (size_t k = (size_t)h & mask;; k = (k + 1) & mask) {
        struct host_entry *e = &ix->slots[k];
        if (e->name == NULL)
            return e;
        if (e->hash == h && e->len == n) {
            size_t j = 0;
            while (j < n && tg_ascii_lower(p[j]) == e->name[j])
                j++;
            if (j == n)
                return e;
        }
    }
}

static const struct host_entry *find_name(const struct tg_host_index *ix, const char *p, size_t n)
{
    const struct host_entry *e = find_slot(ix, p, n, hash_lower(p, n));
    return e->name != NULL ? e : NULL;
}

static int grow(struct tg_host_index *ix)
{
    size_t ncap = ix->cap * 2;
    struct host_entry *old = ix->slots, *slots = calloc(ncap, sizeof(*slots));
    if (slots == NULL)
        return -1;
    size_t ocap = ix->cap;
    ix->slots = slots;
    ix->cap = ncap;
    for (size_t k = 0; k < ocap; k++) {
        if (old[k].name != NULL)
            *find_slot(ix, old[k].name, old[k].len, old[k].hash) = old[k];
    }
    free(old);
    return 0;
}

/* The slot for a name, created if missing. */
static struct host_entry *intern(struct tg_host_index *ix, const char *p, size_t n)
{
    if ((ix->used + 1) * 2 > ix->cap && grow(ix) < 0)
        return NULL;
    uint64_t h = hash_lower(p, n);
    struct host_entry *e = find_slot(ix, p, n, h);
    if (e->name != NULL)
        return e;
    char *name = malloc(n + 1);
    if (name == NULL)
        return NULL;
    for (size_t j = 0; j < n; j++)
        name[j] = tg_ascii_lower(p[j]);
    name[n] = '\0';
    e->name = name;
    e->len = n;
    e->hash = h;
    ix->used++;
    return e;
}

struct tg_host_index *tg_router_hosts_new(void)
{
    struct tg_host_index *ix = calloc(1, sizeof(*ix));
    if (ix == NULL)
        return NULL;
    ix->cap = 16;
    ix->slots = calloc(ix->cap, sizeof(*ix->slots));
    if (ix->slots == NULL) {
        free(ix);
        return NULL;
    }
    return ix;
}

void tg_router_hosts_free(struct tg_host_index *ix)
{
    if (ix == NULL)
        return;
    for (size_t k = 0; k < ix->cap; k++)
        free(ix->slots[k].name);
    free(ix->slots);
    free(ix);
}

static bool is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* A DNS name as we route on it: 1-253 bytes, labels of 1-63 bytes of
 * [A-Za-z0-9-_]. Returns NULL, or what is wrong with it. */
static const char *check_name(const char *p, size_t n)
{
    size_t label = 0;
    if (n == 0)
        return "empty name";
    if (n > HOST_MAX)
        return "name longer than 253 bytes";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '.') {
            if (label == 0)
                return "empty label";
            label = 0;
        } else if (is_name_char(c)) {
            if (++label > LABEL_MAX)
                return "label longer than 63 bytes";
        } else if (c == '*' || c == '{' || c == '}') {
            return "'*' and '{...}' may only be the whole first label";
        } else {
            return "invalid character";
        }
    }
    return label == 0 ? "empty label" : NULL;
}

static bool is_identifier(const char *p, size_t n)
{
    if (n == 0 || n > LABEL_MAX || (p[0] >= '0' && p[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!is_name_char((unsigned char)p[i]) || p[i] == '-')
            return false;
    }
    return true;
}

static int fail(char *err, size_t errlen, const char *pattern, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "host pattern \"%.260s\": %s", pattern, msg);
    return -1;
}

int tg_router_hosts_add(struct tg_host_index *ix, const char *pattern, void *value, char *err,
                        size_t errlen)
{
    size_t n = strlen(pattern);
    const char *name = pattern;
    int kind = 0;

    if (value == NULL)
        return fail(err, errlen, pattern, "no value");
    if (n == 1 && pattern[0] == '*') {
        if (ix->any != NULL)
            return fail(err, errlen, pattern, "duplicate");
        ix->any = value;
        return 0;
    }
    if (n > 1 && pattern[n - 1] == '.')
        n--; /* "app.test." is the same name as "app.test" */

    if (n >= 2 && pattern[0] == '*' && pattern[1] == '.') {
        kind = SUFFIX_WILDCARD;
        name = pattern + 2;
    } else if (n >= 1 && pattern[0] == '{') {
        const char *close = memchr(pattern, '}', n);
        if (close == NULL)
            return fail(err, errlen, pattern, "unbalanced '{'");
        if (!is_identifier(pattern + 1, (size_t)(close - pattern - 1)))
            return fail(err, errlen, pattern, "capture name must be an identifier like {tenant}");
        if ((size_t)(close - pattern) + 1 >= n || close[1] != '.')
            return fail(err, errlen, pattern,
                        "a capture must be followed by a suffix: "
                        "{tenant}.example.com");
        kind = SUFFIX_CAPTURE;
        name = close + 2;
    }
    size_t len = n - (size_t)(name - pattern);
    const char *why = check_name(name, len);
    if (why != NULL)
        return fail(err, errlen, pattern, why);

    struct host_entry *e = intern(ix, name, len);
    if (e == NULL)
        return fail(err, errlen, pattern, "out of memory");
    if (kind == 0) {
        if (e->exact != NULL)
            return fail(err, errlen, pattern, "duplicate");
        e->exact = value;
    } else {
        if (e->suffix != NULL)
            return fail(err, errlen, pattern,
                        e->suffix_kind == kind ? "duplicate"
                                               : "duplicate: '*.' and '{...}.' on one suffix");
        e->suffix = value;
        e->suffix_kind = kind;
        ix->suffixes++;
    }
    return 0;
}

void *tg_router_hosts_match(const struct tg_host_index *ix, struct tg_str host,
                            struct tg_str *capture)
{
    struct tg_str h;

    capture->p = NULL;
    capture->n = 0;
    if (!tg_router_host_without_port(host, &h))
        return NULL;
    if (ix->used == 0)
        return ix->any; /* only "*" (or nothing) was configured */
    if (h.n > 1 && h.p[h.n - 1] == '.')
        h.n--;
    /* IP literals in brackets, empty labels, odd bytes: not a name any
     * pattern was written for, so only the catch-all may take it. */
    if (check_name(h.p, h.n) != NULL)
        return ix->any;

    const struct host_entry *e = find_name(ix, h.p, h.n);
    if (e != NULL && e->exact != NULL)
        return e->exact;
    if (ix->suffixes == 0)
        return ix->any;

    /* Longest suffix first: drop one leading label per probe. */
    size_t off = 0;
    for (int dropped = 1;; dropped++) {
        const char *dot = memchr(h.p + off, '.', h.n - off);
        if (dot == NULL)
            break;
        off = (size_t)(dot - h.p) + 1;
        e = find_name(ix, h.p + off, h.n - off);
        if (e == NULL || e->suffix == NULL)
            continue;
        if (e->suffix_kind == SUFFIX_WILDCARD)
            return e->suffix;
        if (dropped == 1) {
            capture->p = h.p;
            capture->n = off - 1;
            return e->suffix;
        }
    }
    return ix->any;
}

bool tg_router_valid_label(struct tg_str label)
{
    if (label.n == 0 || label.n > LABEL_MAX || label.p[0] == '-' || label.p[label.n - 1] == '-')
        return false;
    for (size_t i = 0; i < label.n; i++) {
        unsigned char c = (unsigned char)label.p[i];
        if (!is_name_char(c) || c == '_')
            return false;
    }
    return true;
}

bool tg_router_host_without_port(struct tg_str hostport, struct tg_str *host)
{
    const char *p = hostport.p;
    size_t n = hostport.n, hlen;

    if (n == 0)
        return false;
    if (p[0] == '[') {
        /* An IPv6 literal: hex digits, ':' and '.', at least one ':'. The
         * brackets stay part of the host. */
        const char *close = memchr(p, ']', n);
        if (close == NULL)
            return false;
        hlen = (size_t)(close - p) + 1;
        bool colon = false;
        for (size_t i = 1; i + 1 < hlen; i++) {
            unsigned char c = (unsigned char)p[i];
            if (c == ':')
                colon = true;
            else if (tg_hex_digit(c) < 0 && c != '.')
                return false;
        }
        if (!colon)
            return false;
    } else {
        const char *colon = memchr(p, ':', n);
        hlen = colon != NULL ? (size_t)(colon - p) : n;
        if (hlen == 0 || memchr(p, '[', hlen) || memchr(p, ']', hlen))
            return false;
    }
    if (hlen < n) {
        /* ":" then 1-5 digits up to 65535. An empty port is legal in
         * RFC 3986 but no client sends it; refusing it is simpler. */
        const char *port = p + hlen + 1;
        size_t plen = n - hlen - 1;
        unsigned v = 0;
        if (p[hlen] != ':' || plen == 0 || plen > 5)
            return false;
        for (size_t i = 0; i < plen; i++) {
            if (port[i] < '0' || port[i] > '9')
                return false;
            v = v * 10 + (unsigned)(port[i] - '0');
        }
        if (v > 65535)
            return false;
    }
    host->p = p;
    host->n = hlen;
    return true;
}

bool tg_router_valid_host(struct tg_str hostport)
{
    struct tg_str h;
    if (!tg_router_host_without_port(hostport, &h))
        return false;
    if (h.p[0] == '[')
        return true; /* checked by tg_router_host_without_port */
    if (h.n > 1 && h.p[h.n - 1] == '.')
        h.n--;
    return check_name(h.p, h.n) == NULL;
}

bool tg_router_public_name(struct tg_str hostport)
{
    struct tg_str h;
    if (!tg_router_host_without_port(hostport, &h))
        return false;
    if (h.n > 1 && h.p[h.n - 1] == '.')
        h.n--;
    if (check_name(h.p, h.n) != NULL) /* brackets (IPv6), odd bytes */
        return false;
    const char *dot = memrchr(h.p, '.', h.n);
    if (dot == NULL)
        return false; /* one label: "localhost", "intranet" */
    const char *last = dot + 1;
    if (*last >= '0' && *last <= '9')
        return false;
    size_t tail = (size_t)(h.p + h.n - last);
    return !(tail == 9 && strncasecmp(last, "localhost", 9) == 0);
}

/* ---- route tables ---------------------------------------------------------- */

static bool method_taken(const struct tg_route_entry *r, enum tg_http_method id, const char *method)
{
    if (r->methods == 0 && r->nother_methods == 0)
        return true;
    if (id != TG_HTTP_OTHER)
        return (r->methods & (1u << id)) != 0;
    for (size_t i = 0; i < r->nother_methods; i++)
        if (strcmp(method, r->other_methods[i]) == 0)
            return true;
    return false;
}

ssize_t tg_router_match_route(const struct tg_route_entry *routes, size_t n, enum tg_http_method id,
                              const char *method, const char *path, size_t path_len,
                              const char *folded, size_t folded_len)
{
    for (size_t i = 0; i < n; i++) {
        const struct tg_route_entry *r = &routes[i];
        bool hit = r->ignore_case
                       ? folded != NULL && tg_router_pattern_match(r->pattern, folded, folded_len)
                       : tg_router_pattern_match(r->pattern, path, path_len);
        if (hit && method_taken(r, id, method))
            return (ssize_t)i;
    }
    return -1;
}
