/* Routing primitives: path normalisation and the Host index. Both are pure:
 * normalisation writes into the caller's buffer and never allocates, the
 * index allocates only while it is built. Route tables, sites and tenants
 * live elsewhere; this module only answers "which pattern" and "which
 * canonical path". */
#include "router.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- path normalisation ------------------------------------------------ */

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

/* One pass, segment by segment: each segment is decoded straight into out,
 * then, if it turned out to be "." or ".." (however it was spelled), taken
 * back out again. Decoding happens exactly once, so "%252e" stays "%252E"
 * and never becomes a dot. The write cursor never passes the read cursor,
 * which is what bounds the output by the input and allows out == in. */
ssize_t tg_router_normalize_path(const char *in, size_t n, char *out,
                                 size_t cap)
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
                int hi = i + 2 < n ? hexval((unsigned char)in[i + 1]) : -1;
                int lo = i + 2 < n ? hexval((unsigned char)in[i + 2]) : -1;
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
    void *any; /* "*" */
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

static struct host_entry *find_slot(const struct tg_host_index *ix,
                                    const char *p, size_t n, uint64_t h)
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

static const struct host_entry *find_name(const struct tg_host_index *ix,
                                          const char *p, size_t n)
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
static struct host_entry *intern(struct tg_host_index *ix, const char *p,
                                 size_t n)
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
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '_';
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

int tg_router_hosts_add(struct tg_host_index *ix, const char *pattern,
                        void *value, char *err, size_t errlen)
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
            return fail(err, errlen, pattern,
                        "capture name must be an identifier like {tenant}");
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
                        e->suffix_kind == kind
                            ? "duplicate"
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
    if (label.n == 0 || label.n > LABEL_MAX || label.p[0] == '-' ||
        label.p[label.n - 1] == '-')
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
            else if (hexval(c) < 0 && c != '.')
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
