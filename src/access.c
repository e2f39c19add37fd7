/* Who the client is (X-Forwarded-For / Forwarded behind trusted proxies),
 * where it is (GeoIP country and ASN over libmaxminddb), and whether it may
 * pass (allow/deny prefixes, countries, ASNs). It never resolves names,
 * downloads or reloads databases, or keeps per-client state; lookups and
 * checks are read-only, so every worker shares one snapshot. */
#include "access.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <maxminddb.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- client identity ----------------------------------------------------- */

/* The lists are written left to right, each proxy appending the address it
 * received from, so the walk the contract describes goes right to left and
 * stops at the first hop that is not a trusted address. Forwarded values
 * may hold quoted strings with commas, which cannot be split from the
 * right; so both lists are read left to right, and the outcome of the
 * right-to-left walk is kept as we go: it depends only on the last "stop"
 * (an untrusted address, or an element that is not an address) and on the
 * first trusted address after it. One pass, no allocation, no copy. */
struct hops {
    const struct tg_cidr_set *trusted;
    bool stopped;        /* a stop was seen */
    bool stop_is_addr;   /* the last stop is an untrusted address... */
    struct tg_addr stop; /* ...this one */
    bool have_first;     /* the left-most address, if none is a stop */
    struct tg_addr first;
    /* The trusted addresses after the last stop (or all of them, if none),
     * the last TG_ACCESS_HOPS_MAX + 1 of them in a ring; `ntrusted` counts
     * them all, `next` keeps the first (the ring may have lost it). */
    struct tg_addr ring[TG_ACCESS_HOPS_MAX + 1];
    size_t ntrusted;
    struct tg_addr next;
    size_t elements; /* list elements seen: a walk that saw none */
};

/* An element that is an address (addr != NULL) or anything else: "unknown",
 * an obfuscated identifier, a malformed value, a Forwarded element without
 * for=. None of those says who sent it, so the walk stops there and takes
 * the trusted hop to its right. */
static void hop(struct hops *h, const struct tg_addr *addr)
{
    h->elements++;
    if (addr != NULL && tg_cidr_set_lookup(h->trusted, addr) > 0) {
        if (!h->stopped && !h->have_first) {
            h->first = *addr;
            h->have_first = true;
        }
        if (h->ntrusted == 0)
            h->next = *addr;
        h->ring[h->ntrusted % TG_ARRAY_LEN(h->ring)] = *addr;
        h->ntrusted++;
        return;
    }
    h->stopped = true;
    h->stop_is_addr = addr != NULL;
    if (addr != NULL)
        h->stop = *addr;
    h->ntrusted = 0;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* RFC 9110 tchar. */
static bool is_tchar(char c)
{
    return is_alpha(c) || is_digit(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

#define PORT_DIGITS_MAX 5
#define PORT_MAX 65535

/* RFC 7239 node-port: 1*5DIGIT (at most 65535) or an obfuscated port. */
static bool valid_port(const char *s, size_t n)
{
    if (n == 0)
        return false;
    if (s[0] == '_') {
        for (size_t i = 1; i < n; i++)
            if (!is_alpha(s[i]) && !is_digit(s[i]) && strchr("._-", s[i]) == NULL)
                return false;
        return n > 1;
    }
    if (n > PORT_DIGITS_MAX)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    return v <= PORT_MAX;
}

/* A node: "192.0.2.1", "192.0.2.1:8080", "[2001:db8::1]",
 * "[2001:db8::1]:8080", and with bare_v6 also "2001:db8::1" (which cannot
 * carry a port: the last group would read as one). Returns 0 with the
 * address, or -1 for anything else ("unknown", "_hidden", junk). */
static int parse_node(const char *s, size_t n, bool bare_v6, struct tg_addr *out)
{
    if (n == 0)
        return -1;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (close == NULL)
            return -1;
        size_t alen = (size_t)(close - s) + 1;
        /* The brackets must hold an IPv6 literal, not "[192.0.2.1]". */
        if (memchr(s + 1, ':', alen - 2) == NULL)
            return -1;
        if (alen < n && (s[alen] != ':' || !valid_port(s + alen + 1, n - alen - 1)))
            return -1;
        return tg_addr_parse(s, alen, out);
    }
    const char *colon = memchr(s, ':', n);
    if (colon == NULL)
        return tg_addr_parse(s, n, out);
    size_t hlen = (size_t)(colon - s);
    if (memchr(colon + 1, ':', n - hlen - 1) == NULL) {
        /* One colon: IPv4 and port. */
        if (!valid_port(colon + 1, n - hlen - 1))
            return -1;
        return tg_addr_parse(s, hlen, out);
    }
    return bare_v6 ? tg_addr_parse(s, n, out) : -1;
}

/* One X-Forwarded-For value: comma-separated nodes with optional
 * whitespace. Empty elements ("a, , b", a trailing comma) are skipped as
 * RFC 9110 5.6.1 says lists allow; they hold no hop to stop at. */
static void walk_xff(struct hops *h, const char *s, size_t n)
{
    size_t i = 0;
    while (i <= n) {
        size_t start = i;
        while (i < n && s[i] != ',')
            i++;
        size_t a = start, b = i;
        while (a < b && is_ows(s[a]))
            a++;
        while (b > a && is_ows(s[b - 1]))
            b--;
        if (b > a) {
            struct tg_addr addr;
            hop(h, parse_node(s + a, b - a, true, &addr) == 0 ? &addr : NULL);
        }
        i++;
    }
}

/* Longest for= value we look at once unquoted; longer ones are not
 * addresses ("[" 45 "]:" 5 is 53). */
#define NODE_MAX 64

/* A Forwarded parameter value at s[*i]: a token (plus ':' '[' ']', which
 * senders write unquoted in for=192.0.2.60:8080 although RFC 7239 wants
 * quotes) or a quoted-string. The unescaped text goes to buf (NODE_MAX;
 * *len set to NODE_MAX + 1 if longer). Returns -1 on a syntax error. */
static int forwarded_value(const char *s, size_t n, size_t *i, char *buf, size_t *len)
{
    size_t o = 0, j = *i;
    if (j < n && s[j] == '"') {
        j++;
        for (;;) {
            if (j == n)
                return -1; /* unterminated */
            unsigned char c = (unsigned char)s[j];
            if (c == '"')
                break;
            if (c == '\\') {
                if (++j == n)
                    return -1;
                c = (unsigned char)s[j];
                if (c != '\t' && (c < 0x20 || c == 0x7f))
                    return -1;
            } else if (c != '\t' && (c < 0x20 || c == 0x7f)) {
                return -1;
            }
            if (o < NODE_MAX)
                buf[o] = (char)c;
            o++;
            j++;
        }
        j++;
    } else {
        while (j < n && (is_tchar(s[j]) || s[j] == ':' || s[j] == '[' || s[j] == ']')) {
            if (o < NODE_MAX)
                buf[o] = s[j];
            o++;
            j++;
        }
        if (j == *i)
            return -1;
    }
    *len = o <= NODE_MAX ? o : NODE_MAX + 1;
    *i = j;
    return 0;
}

/* One Forwarded value (RFC 7239 4): elements separated by commas, each a
 * list of name=value pairs separated by semicolons, names case-insensitive.
 * An element's hop is its for= node; an element without for=, with two,
 * or with a value that is not an address is a stop. A syntax error makes
 * the rest of this value one stop: where its elements begin can no longer
 * be known, and the walk never looks left of a stop anyway. */
static void walk_forwarded(struct hops *h, const char *s, size_t n)
{
    size_t i = 0;
    for (;;) {
        while (i < n && is_ows(s[i]))
            i++;
        if (i == n)
            return;
        if (s[i] == ',') { /* empty element */
            i++;
            continue;
        }

        int nfor = 0;
        bool is_addr = false;
        struct tg_addr addr;
        for (;;) {
            while (i < n && is_ows(s[i]))
                i++;
            if (i == n || s[i] == ',')
                break;
            if (s[i] == ';') { /* empty pair */
                i++;
                continue;
            }
            size_t name = i;
            while (i < n && is_tchar(s[i]))
                i++;
            size_t name_len = i - name;
            if (name_len == 0 || i == n || s[i] != '=')
                goto syntax;
            i++;
            char buf[NODE_MAX];
            size_t len;
            if (forwarded_value(s, n, &i, buf, &len) < 0)
                goto syntax;
            if (name_len == 3 && strncasecmp(s + name, "for", 3) == 0) {
                nfor++;
                is_addr = len <= NODE_MAX && parse_node(buf, len, false, &addr) == 0;
            }
            while (i < n && is_ows(s[i]))
                i++;
            if (i < n && s[i] == ';')
                i++;
            else if (i < n && s[i] != ',')
                goto syntax;
        }
        hop(h, nfor == 1 && is_addr ? &addr : NULL);
        if (i == n)
            return;
        i++; /* ',' */
    }
syntax:
    hop(h, NULL);
}

/* The outcome of one walk: the client, and the trusted hops to its right
 * (the `skip` first trusted addresses after the last stop are the client
 * itself or before it). */
static void walk_result(const struct hops *h, const struct tg_addr *peer,
                        struct tg_client_chain *out)
{
    size_t skip = 0;
    if (h->stopped && h->stop_is_addr) {
        out->client = h->stop;
    } else if (h->ntrusted > 0) {
        /* After a stop that is not an address, or with every hop trusted:
         * the left-most trusted address is the client. */
        out->client = h->stopped ? h->next : h->first;
        skip = 1;
    } else {
        out->client = *peer;
    }
    size_t after = h->ntrusted > skip ? h->ntrusted - skip : 0;
    size_t keep = after < TG_ACCESS_HOPS_MAX ? after : TG_ACCESS_HOPS_MAX;
    out->hops_elided = after > keep;
    out->nhops = (uint8_t)keep;
    for (size_t i = 0; i < keep; i++) {
        size_t pos = h->ntrusted - keep + i; /* the last `keep` trusted */
        out->hops[i] = h->ring[pos % TG_ARRAY_LEN(h->ring)];
    }
}

/* Walks one header's lines; returns false when they hold no element at
 * all (absent, or only empty lines): such a header says nothing. */
static bool walk_list(const struct tg_cidr_set *trusted, const struct tg_addr *peer,
                      const struct tg_str *values, size_t n, bool forwarded,
                      struct tg_client_chain *out)
{
    struct hops h;
    memset(&h, 0, sizeof(h));
    h.trusted = trusted;
    for (size_t k = 0; k < n; k++) {
        if (forwarded)
            walk_forwarded(&h, values[k].p, values[k].n);
        else
            walk_xff(&h, values[k].p, values[k].n);
    }
    walk_result(&h, peer, out);
    return h.elements > 0;
}

int tg_access_client_chain(const struct tg_cidr_set *trusted, const struct tg_addr *peer,
                           enum tg_client_ip_header mode, const struct tg_str *xff, size_t nxff,
                           const struct tg_str *forwarded, size_t nforwarded,
                           struct tg_client_chain *out)
{
    struct tg_addr self = *peer;
    memset(out, 0, sizeof(*out));
    out->client = self;
    out->source = TG_CHAIN_PEER;
    if (trusted == NULL || tg_cidr_set_lookup(trusted, &self) == 0)
        return 0;
    bool use_xff = nxff > 0 && mode != TG_CLIENT_IP_FORWARDED &&
                   walk_list(trusted, &self, xff, nxff, false, out);
    if (use_xff)
        out->source = TG_CHAIN_XFF;
    struct tg_client_chain f;
    bool use_fwd = nforwarded > 0 && mode != TG_CLIENT_IP_XFF &&
                   walk_list(trusted, &self, forwarded, nforwarded, true, &f);
    if (use_fwd) {
        f.source = TG_CHAIN_FORWARDED;
        if (!use_xff) {
            *out = f;
        } else if (!tg_addr_equal(&f.client, &out->client)) {
            /* Both headers, two answers: one of them came from the client
             * unchanged by the proxies, and nothing says which. */
            out->client = self;
            out->nhops = 0;
            out->source = TG_CHAIN_PEER;
            return -1;
        }
    }
    return 0;
}

/* ---- GeoIP: MaxMind DB data format --------------------------------------- */

/* The data section decoder used to validate a database at open (and to
 * explain a refused metadata block). libmaxminddb decodes lazily, value by
 * value, and only what a lookup path touches; so a record that is broken
 * past the key we read (City-Test-Broken-Double-Format: location.latitude
 * is a 5-byte "double" holding text) fails only for some addresses and some
 * fields, at run time. Walking every record once here refuses the file
 * instead. The checks are those of the MaxMind DB 2.0 spec and of
 * libmaxminddb's decode_one, so anything accepted here decodes there. */
enum {
    T_EXTENDED = MMDB_DATA_TYPE_EXTENDED,
    T_POINTER = MMDB_DATA_TYPE_POINTER,
    T_STRING = MMDB_DATA_TYPE_UTF8_STRING,
    T_DOUBLE = MMDB_DATA_TYPE_DOUBLE,
    T_BYTES = MMDB_DATA_TYPE_BYTES,
    T_UINT16 = MMDB_DATA_TYPE_UINT16,
    T_UINT32 = MMDB_DATA_TYPE_UINT32,
    T_MAP = MMDB_DATA_TYPE_MAP,
    T_INT32 = MMDB_DATA_TYPE_INT32,
    T_UINT64 = MMDB_DATA_TYPE_UINT64,
    T_UINT128 = MMDB_DATA_TYPE_UINT128,
    T_ARRAY = MMDB_DATA_TYPE_ARRAY,
    T_CONTAINER = MMDB_DATA_TYPE_CONTAINER,
    T_END_MARKER = MMDB_DATA_TYPE_END_MARKER,
    T_BOOL = MMDB_DATA_TYPE_BOOLEAN,
    T_FLOAT = MMDB_DATA_TYPE_FLOAT,
};

/* Offsets the MaxMind DB format adds to longer pointers and sizes, so
 * that each length covers only what the shorter one cannot. */
#define MM_PTR_BASE2 2048   /* 2^11: past the 11-bit pointers */
#define MM_PTR_BASE3 526336 /* 2^11 + 2^19: past the 19-bit ones */
#define MM_SIZE_EXT 29      /* sizes 29..31 take 1..3 more bytes */
#define MM_SIZE_BASE2 285   /* 29 + 256 */
#define MM_SIZE_BASE3 65821 /* 285 + 65536 */

/* One decoded control block. */
struct mm_head {
    int type;
    uint32_t size;    /* payload bytes, entries (map, array), or bool value */
    uint32_t ptr;     /* pointer target */
    uint32_t payload; /* offset of the payload */
    uint32_t end;     /* offset after the payload (containers: the head) */
};

static const char *const type_names[16] = {
    "extended", "pointer", "utf8_string", "double", "bytes",     "uint16",     "uint32",  "map",
    "int32",    "uint64",  "uint128",     "array",  "container", "end_marker", "boolean", "float",
};

/* Decodes the control block at base[off] of a section len bytes long.
 * Returns NULL, or what is wrong (detail gets specifics). */
static const char *mm_decode(const uint8_t *base, uint32_t len, uint32_t off, struct mm_head *h,
                             char *detail, size_t dlen)
{
    uint64_t p = off;
    if (p >= len)
        return "offset past the end of the data section";
    uint8_t ctrl = base[p++];
    int type = ctrl >> 5;

    memset(h, 0, sizeof(*h));
    if (type == T_POINTER) {
        unsigned extra = ((ctrl >> 3) & 3) + 1;
        if (p + extra > len)
            return "pointer runs past the end of the data section";
        const uint8_t *b = base + p;
        uint64_t v;
        switch (extra) {
        case 1:
            v = (uint64_t)(ctrl & 7) << 8 | b[0];
            break;
        case 2:
            v = ((uint64_t)(ctrl & 7) << 16 | (uint64_t)b[0] << 8 | b[1]) + MM_PTR_BASE2;
            break;
        case 3:
            v = ((uint64_t)(ctrl & 7) << 24 | (uint64_t)b[0] << 16 | (uint64_t)b[1] << 8 | b[2]) +
                MM_PTR_BASE3;
            break;
        default:
            v = (uint64_t)b[0] << 24 | (uint64_t)b[1] << 16 | (uint64_t)b[2] << 8 | b[3];
            break;
        }
        if (v >= len) {
            snprintf(detail, dlen, "pointer to %llu, past the end (%u)", (unsigned long long)v,
                     (unsigned)len);
            return detail;
        }
        h->type = T_POINTER;
        h->ptr = (uint32_t)v;
        h->end = (uint32_t)(p + extra);
        return NULL;
    }
    if (type == T_EXTENDED) {
        if (p >= len)
            return "extended type runs past the end of the data section";
        type = 7 + base[p++];
        if (type < 8 || type > 15) {
            snprintf(detail, dlen, "unknown extended type %d", type);
            return detail;
        }
    }
    if (type == T_CONTAINER || type == T_END_MARKER) {
        snprintf(detail, dlen, "%s type in the data section", type_names[type]);
        return detail;
    }

    uint64_t size = ctrl & 0x1f;
    if (size >= MM_SIZE_EXT) {
        unsigned extra = (unsigned)size - (MM_SIZE_EXT - 1);
        if (p + extra > len)
            return "size runs past the end of the data section";
        const uint8_t *b = base + p;
        if (extra == 1)
            size = MM_SIZE_EXT + (uint64_t)b[0];
        else if (extra == 2)
            size = MM_SIZE_BASE2 + ((uint64_t)b[0] << 8 | b[1]);
        else
            size = MM_SIZE_BASE3 + ((uint64_t)b[0] << 16 | (uint64_t)b[1] << 8 | b[2]);
        p += extra;
    }

    uint64_t payload = size;
    switch (type) {
    case T_DOUBLE:
    case T_FLOAT:
        if (size != (type == T_DOUBLE ? 8u : 4u)) {
            snprintf(detail, dlen, "%s of %llu bytes (must be %u)", type_names[type],
                     (unsigned long long)size, type == T_DOUBLE ? 8u : 4u);
            return detail;
        }
        break;
    case T_UINT16:
    case T_UINT32:
    case T_INT32:
    case T_UINT64:
    case T_UINT128: {
        unsigned max = type == T_UINT16 ? 2 : type == T_UINT64 ? 8 : type == T_UINT128 ? 16 : 4;
        if (size > max) {
            snprintf(detail, dlen, "%s of %llu bytes (at most %u)", type_names[type],
                     (unsigned long long)size, max);
            return detail;
        }
        break;
    }
    case T_BOOL:
        if (size > 1) {
            snprintf(detail, dlen, "boolean of value %llu", (unsigned long long)size);
            return detail;
        }
        payload = 0;
        break;
    case T_MAP:
    case T_ARRAY:
        payload = 0;
        break;
    default: /* string, bytes */
        break;
    }
    if (p + payload > len) {
        snprintf(detail, dlen, "%s of %llu bytes runs past the end", type_names[type],
                 (unsigned long long)payload);
        return detail;
    }
    h->type = type;
    h->size = (uint32_t)size;
    h->payload = (uint32_t)p;
    h->end = (uint32_t)(p + payload);
    return NULL;
}

/* ---- GeoIP: validation --------------------------------------------------- */

/* Distinct data records decoded at open. Country and ASN databases have
 * a few thousand to a few hundred thousand, all checked; a huge City
 * database is checked up to here, its other records only for their offsets.
 * (On this project's test machine a synthetic 18 MB database of 2M nodes
 * and 60k records takes 0.4 s, nearly all of it the tree walk.) A record
 * broken past the cap still cannot crash a lookup, libmaxminddb
 * bounds-checks every read: that address just comes out unknown. */
#define MM_MAX_RECORDS (1u << 20)

/* Deeper than any GeoIP record (the deepest, City's subdivisions, is
 * record → array → map → names → string: 4 containers). */
#define MM_MAX_DEPTH 32

/* The zero bytes between the search tree and the data section; a record
 * value past the node count is a data offset plus this. */
#define MM_SEPARATOR 16
/* The metadata follows this marker, within MM_METADATA_MAX bytes of the
 * end of the file (the spec's bound). */
#define MM_MARKER "\xab\xcd\xefMaxMind.com"
#define MM_MARKER_LEN (sizeof(MM_MARKER) - 1)
#define MM_METADATA_MAX 131072
/* The metadata nests containers a level or two (description is a map,
 * languages an array): past this depth mm_skip gives up. */
#define MM_META_DEPTH_MAX 8
/* IPv4 networks of an IPv6 database: under ::/96. */
#define MM_V4_SUBTREE_BITS 96
/* Levels of the search tree: one per bit of an IPv6 address, and the root. */
#define MM_TREE_LEVELS (128 + 1)

struct mm_check {
    const MMDB_s *mmdb;
    const uint8_t *data;
    uint32_t size;
    /* Bitmaps over data section offsets: a pointer target (or record)
     * whose walk has started, finished; records whose fields we read. A
     * started but unfinished target reached again is a pointer cycle;
     * a finished one is not walked again, so the whole check is linear in
     * the file size however the records share data. */
    uint8_t *seen, *done, *record;
    /* Where we are inside a record, for the message. */
    const uint8_t *key[MM_MAX_DEPTH + 1];
    uint32_t keylen[MM_MAX_DEPTH + 1]; /* or an array index if key NULL */
    int depth;
    const char *problem;
    char detail[128];
    bool has_country, has_asn;
    uint32_t records; /* distinct records checked */
};

static bool bit_get(const uint8_t *map, uint32_t i)
{
    return (map[i / 8] >> (i % 8)) & 1;
}

static void bit_set(uint8_t *map, uint32_t i)
{
    map[i / 8] |= (uint8_t)(1u << (i % 8));
}

static int mm_fail(struct mm_check *c, const char *problem)
{
    if (c->problem == NULL)
        c->problem = problem;
    return -1;
}

static int mm_target(struct mm_check *c, uint32_t off, int depth);

/* Validates the value at off (following pointers) and sets *end to the
 * offset right after its inline bytes. */
static int mm_value(struct mm_check *c, uint32_t off, int depth, uint32_t *end)
{
    struct mm_head h;
    const char *bad = mm_decode(c->data, c->size, off, &h, c->detail, sizeof(c->detail));
    if (bad != NULL)
        return mm_fail(c, bad);
    if (h.type == T_POINTER) {
        if (mm_target(c, h.ptr, depth) < 0)
            return -1;
        *end = h.end;
        return 0;
    }
    if (h.type != T_MAP && h.type != T_ARRAY) {
        *end = h.end;
        return 0;
    }
    if (depth >= MM_MAX_DEPTH)
        return mm_fail(c, "maps and arrays nested too deep");

    uint32_t p = h.end;
    for (uint32_t i = 0; i < h.size; i++) {
        c->depth = depth + 1;
        c->key[depth] = NULL;
        c->keylen[depth] = i;
        if (h.type == T_MAP) {
            struct mm_head k, ks;
            bad = mm_decode(c->data, c->size, p, &k, c->detail, sizeof(c->detail));
            if (bad != NULL)
                return mm_fail(c, bad);
            ks = k;
            if (k.type == T_POINTER) {
                bad = mm_decode(c->data, c->size, k.ptr, &ks, c->detail, sizeof(c->detail));
                if (bad != NULL)
                    return mm_fail(c, bad);
            }
            if (ks.type != T_STRING) {
                snprintf(c->detail, sizeof(c->detail), "map key is a %s, not a string",
                         type_names[ks.type]);
                return mm_fail(c, c->detail);
            }
            c->key[depth] = c->data + ks.payload;
            c->keylen[depth] = ks.size;
            p = k.end;
        }
        if (mm_value(c, p, depth + 1, &p) < 0)
            return -1;
    }
    c->depth = depth;
    *end = p;
    return 0;
}

/* A pointer target: walked once, never re-entered while being walked. */
static int mm_target(struct mm_check *c, uint32_t off, int depth)
{
    if (off >= c->size)
        return mm_fail(c, "pointer past the end of the data section");
    if (bit_get(c->done, off))
        return 0;
    if (bit_get(c->seen, off))
        return mm_fail(c, "pointer cycle");
    bit_set(c->seen, off);
    struct mm_head h;
    const char *bad = mm_decode(c->data, c->size, off, &h, c->detail, sizeof(c->detail));
    if (bad != NULL)
        return mm_fail(c, bad);
    if (h.type == T_POINTER)
        return mm_fail(c, "pointer to a pointer");
    uint32_t end;
    if (mm_value(c, off, depth, &end) < 0)
        return -1;
    bit_set(c->done, off);
    return 0;
}

static bool two_letters(const MMDB_entry_data_s *d)
{
    return d->type == MMDB_DATA_TYPE_UTF8_STRING && d->data_size == 2 &&
           is_alpha(d->utf8_string[0]) && is_alpha(d->utf8_string[1]);
}

/* Where a country code may be, in the order tg_geoip_country tries them:
 * GeoIP2/GeoLite2 and DB-IP country and city databases, then the flat
 * layout of the ip-location-db databases. */
static const char *const *const country_paths[] = {
    (const char *const[]){"country", "iso_code", NULL},
    (const char *const[]){"registered_country", "iso_code", NULL},
    (const char *const[]){"country_code", NULL},
};

static const char *const asn_path[] = {"autonomous_system_number", NULL};

/* MMDB_aget_value with a missing path as success without data. */
static int mm_get(MMDB_entry_s *entry, MMDB_entry_data_s *d, const char *const *path)
{
    int rc = MMDB_aget_value(entry, d, path);
    if (rc == MMDB_LOOKUP_PATH_DOES_NOT_MATCH_DATA_ERROR) {
        memset(d, 0, sizeof(*d));
        rc = MMDB_SUCCESS;
    }
    return rc;
}

static int asn_value(const MMDB_entry_data_s *d, uint32_t *asn)
{
    uint64_t v;
    if (d->type == MMDB_DATA_TYPE_UINT16)
        v = d->uint16;
    else if (d->type == MMDB_DATA_TYPE_UINT32)
        v = d->uint32;
    else if (d->type == MMDB_DATA_TYPE_UINT64)
        v = d->uint64;
    else
        return -1;
    if (v > UINT32_MAX)
        return -1;
    *asn = (uint32_t)v;
    return 0;
}

/* A record a search tree leaf points at: a map (maybe behind a pointer)
 * whose every value decodes, and whose fields the lookups read have the
 * types they expect, asked through libmaxminddb itself. */
static int mm_record(struct mm_check *c, uint32_t off)
{
    if (bit_get(c->record, off) || c->records >= MM_MAX_RECORDS)
        return 0;
    bit_set(c->record, off);
    c->records++;
    c->depth = 0;

    struct mm_head h;
    const char *bad = mm_decode(c->data, c->size, off, &h, c->detail, sizeof(c->detail));
    if (bad != NULL)
        return mm_fail(c, bad);
    uint32_t at = off;
    if (h.type == T_POINTER) {
        at = h.ptr;
        bad = mm_decode(c->data, c->size, at, &h, c->detail, sizeof(c->detail));
        if (bad != NULL)
            return mm_fail(c, bad);
        if (h.type == T_POINTER)
            return mm_fail(c, "pointer to a pointer");
    }
    if (h.type != T_MAP) {
        snprintf(c->detail, sizeof(c->detail), "record is a %s, not a map", type_names[h.type]);
        return mm_fail(c, c->detail);
    }
    if (mm_target(c, at, 0) < 0)
        return -1;

    /* libmaxminddb 1.7 reports a missing key (or a path through a
     * non-map) as LOOKUP_PATH_DOES_NOT_MATCH_DATA: that is "absent" here,
     * as in the lookups, which then try the next place. */
    MMDB_entry_s entry = {.mmdb = c->mmdb, .offset = off};
    MMDB_entry_data_s d;
    for (size_t i = 0; i < TG_ARRAY_LEN(country_paths); i++) {
        int rc = mm_get(&entry, &d, country_paths[i]);
        const char *const *path = country_paths[i];
        if (rc != MMDB_SUCCESS || (d.has_data && !two_letters(&d))) {
            snprintf(c->detail, sizeof(c->detail), "%s%s%s: %s", path[0], path[1] ? "." : "",
                     path[1] ? path[1] : "",
                     rc != MMDB_SUCCESS ? MMDB_strerror(rc) : "not a two-letter code");
            return mm_fail(c, c->detail);
        }
        c->has_country |= d.has_data;
    }
    int rc = mm_get(&entry, &d, asn_path);
    uint32_t asn;
    if (rc != MMDB_SUCCESS || (d.has_data && asn_value(&d, &asn) < 0)) {
        snprintf(c->detail, sizeof(c->detail), "autonomous_system_number: %s",
                 rc != MMDB_SUCCESS ? MMDB_strerror(rc) : "not an unsigned 32-bit number");
        return mm_fail(c, c->detail);
    }
    c->has_asn |= d.has_data;
    return 0;
}

/* "81.2.69.142/31" for a search tree path of `bits` bits (key holds them
 * from the top). IPv4 networks of an IPv6 database live under ::/96 and are
 * shown as IPv4, as libmaxminddb looks them up. */
static void format_network(const MMDB_s *mmdb, const uint8_t key[16], unsigned bits, char *out,
                           size_t cap)
{
    struct tg_addr a;
    char text[TG_ADDR_STRLEN];
    static const uint8_t zero[MM_V4_SUBTREE_BITS / 8];
    memset(&a, 0, sizeof(a));
    if (mmdb->metadata.ip_version == 4) {
        a.family = AF_INET;
        memcpy(a.ip, key, 4);
    } else if (bits >= MM_V4_SUBTREE_BITS && memcmp(key, zero, sizeof(zero)) == 0) {
        a.family = AF_INET;
        memcpy(a.ip, key + sizeof(zero), 4);
        bits -= MM_V4_SUBTREE_BITS;
    } else {
        a.family = AF_INET6;
        memcpy(a.ip, key, 16);
    }
    tg_addr_format(&a, text, sizeof(text));
    snprintf(out, cap, "%s/%u", text, bits);
}

/* "location.latitude", "subdivisions[0].iso_code". */
static void format_path(const struct mm_check *c, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < c->depth && o + 1 < cap; i++) {
        int r;
        if (c->key[i] == NULL)
            r = snprintf(out + o, cap - o, "[%u]", (unsigned)c->keylen[i]);
        else
            r = snprintf(out + o, cap - o, "%s%.*s", i > 0 ? "." : "",
                         (int)(c->keylen[i] > 64 ? 64 : c->keylen[i]), (const char *)c->key[i]);
        if (r < 0)
            break;
        o += (size_t)r;
    }
}

struct mm_item {
    uint32_t node;
    uint32_t depth;
    uint8_t key[16];
};

/* Walks the search tree from the root, each node once: every record must
 * be a node, the empty marker, or a data offset inside the data section,
 * and no path may be longer than the address. Every data record reached is
 * checked by mm_record. Work and memory are linear in the file size. */
static int mm_validate(const MMDB_s *mmdb, char *msg, size_t msglen)
{
    const MMDB_metadata_s *md = &mmdb->metadata;
    uint32_t nodes = md->node_count;
    unsigned width = md->ip_version == 6 ? 128 : 32;
    int rc = -1;

    if (md->record_size != 24 && md->record_size != 28 && md->record_size != 32) {
        snprintf(msg, msglen, "record_size %u is not 24, 28 or 32", md->record_size);
        return -1;
    }
    if (md->ip_version != 4 && md->ip_version != 6) {
        snprintf(msg, msglen, "ip_version %u is not 4 or 6", md->ip_version);
        return -1;
    }
    if (nodes == 0) {
        snprintf(msg, msglen, "node_count is 0");
        return -1;
    }
    /* MMDB_open checked that tree + separator fit before the metadata. */
    const uint8_t *sep = mmdb->file_content + (size_t)nodes * mmdb->full_record_byte_size;
    for (int i = 0; i < MM_SEPARATOR; i++) {
        if (sep[i] != 0) {
            snprintf(msg, msglen,
                     "the 16 bytes after the search tree are not zero "
                     "(node_count %u does not match the file)",
                     (unsigned)nodes);
            return -1;
        }
    }

    /* libmaxminddb's data_section_size runs to the end of the file; the
     * data section proper ends where the metadata marker begins. */
    const uint8_t *meta = mmdb->metadata_section - MM_MARKER_LEN;
    if (meta < mmdb->data_section) {
        snprintf(msg, msglen, "the metadata overlaps the search tree");
        return -1;
    }

    struct mm_check c;
    memset(&c, 0, sizeof(c));
    c.mmdb = mmdb;
    c.data = mmdb->data_section;
    c.size = (uint32_t)(meta - mmdb->data_section);
    size_t dbytes = ((size_t)c.size + 7) / 8 + 1;
    c.seen = calloc(dbytes, 1);
    c.done = calloc(dbytes, 1);
    c.record = calloc(dbytes, 1);
    uint8_t *visited = calloc(((size_t)nodes + 7) / 8, 1);
    /* Depth-first with one pending sibling per level at most. */
    struct mm_item stack[2 * MM_TREE_LEVELS + 2];
    size_t top = 0;
    if (c.seen == NULL || c.done == NULL || c.record == NULL || visited == NULL) {
        snprintf(msg, msglen, "out of memory while checking");
        goto out_free;
    }

    memset(&stack[0], 0, sizeof(stack[0]));
    top = 1;
    while (top > 0) {
        struct mm_item it = stack[--top];
        if (bit_get(visited, it.node))
            continue;
        bit_set(visited, it.node);
        MMDB_search_node_s node;
        int mrc = MMDB_read_node(mmdb, it.node, &node);
        if (mrc != MMDB_SUCCESS) {
            snprintf(msg, msglen, "search tree node %u: %s", (unsigned)it.node, MMDB_strerror(mrc));
            goto out_free;
        }
        for (int side = 1; side >= 0; side--) {
            uint64_t r = side ? node.right_record : node.left_record;
            struct mm_item child = it;
            child.depth = it.depth + 1;
            if (side)
                child.key[it.depth / 8] |= (uint8_t)(0x80 >> (it.depth % 8));
            char net[64];
            if (r < nodes) {
                if (child.depth >= width) {
                    format_network(mmdb, child.key, child.depth, net, sizeof(net));
                    snprintf(msg, msglen, "search tree deeper than %u bits at %s", width, net);
                    goto out_free;
                }
                child.node = (uint32_t)r;
                stack[top++] = child;
                continue;
            }
            if (r == nodes)
                continue; /* no data for this network */
            format_network(mmdb, child.key, child.depth, net, sizeof(net));
            if (r - nodes < MM_SEPARATOR || r - nodes - MM_SEPARATOR >= c.size) {
                snprintf(msg, msglen,
                         "search tree record for %s points outside the data "
                         "section (%llu)",
                         net, (unsigned long long)r);
                goto out_free;
            }
            if (mm_record(&c, (uint32_t)(r - nodes - MM_SEPARATOR)) < 0) {
                char path[160];
                format_path(&c, path, sizeof(path));
                snprintf(msg, msglen, "corrupt data record for %s%s%s: %s", net,
                         path[0] ? " at " : "", path, c.problem);
                goto out_free;
            }
        }
    }
    if (!c.has_country && !c.has_asn) {
        snprintf(msg, msglen,
                 "no record has a country code (country.iso_code, "
                 "registered_country.iso_code, country_code) or an "
                 "autonomous_system_number");
        goto out_free;
    }
    rc = 0;
out_free:
    free(visited);
    free(c.record);
    free(c.done);
    free(c.seen);
    return rc;
}

/* Steps over the inline value at off (no pointers: metadata has none) and
 * sets *end after it. */
static int mm_skip(const uint8_t *base, uint32_t len, uint32_t off, int depth, uint32_t *end)
{
    struct mm_head h;
    char detail[128];
    if (depth > MM_META_DEPTH_MAX ||
        mm_decode(base, len, off, &h, detail, sizeof(detail)) != NULL || h.type == T_POINTER)
        return -1;
    uint32_t p = h.end;
    if (h.type == T_MAP || h.type == T_ARRAY) {
        uint32_t n = h.type == T_MAP ? 2 * h.size : h.size;
        for (uint32_t i = 0; i < n; i++)
            if (mm_skip(base, len, p, depth + 1, &p) < 0)
                return -1;
    }
    *end = p;
    return 0;
}

/* Why MMDB_open said "invalid metadata": reads the metadata block again
 * and names the field that does not fit. Returns 0 with msg set, or -1 if
 * nothing more specific is found. */
static int mm_explain_metadata(const char *path, char *msg, size_t msglen)
{
    static const uint8_t marker[] = MM_MARKER;
    const size_t mlen = MM_MARKER_LEN;
    int rc = -1;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || st.st_size <= 0) {
        fclose(f);
        return -1;
    }
    size_t fsize = (size_t)st.st_size;
    size_t tail = fsize < MM_METADATA_MAX ? fsize : MM_METADATA_MAX;
    uint8_t *buf = malloc(tail);
    if (buf == NULL || fseek(f, (long)(fsize - tail), SEEK_SET) != 0 ||
        fread(buf, 1, tail, f) != tail)
        goto out;

    size_t at = SIZE_MAX;
    for (size_t i = tail >= mlen ? tail - mlen + 1 : 0; i-- > 0;) {
        if (memcmp(buf + i, marker, mlen) == 0) {
            at = i;
            break;
        }
    }
    if (at == SIZE_MAX) {
        snprintf(msg, msglen,
                 "no MaxMind DB metadata marker in the last 128 KiB "
                 "(not a .mmdb file, or truncated)");
        rc = 0;
        goto out;
    }

    const uint8_t *meta = buf + at + mlen;
    uint32_t len = (uint32_t)(tail - at - mlen);
    uint64_t node_count = 0, record_size = 0;
    bool have_nodes = false, have_rs = false;
    struct mm_head m, k, v;
    char detail[128];
    if (mm_decode(meta, len, 0, &m, detail, sizeof(detail)) != NULL || m.type != T_MAP)
        goto out;
    uint32_t p = m.end;
    for (uint32_t i = 0; i < m.size; i++) {
        if (mm_decode(meta, len, p, &k, detail, sizeof(detail)) != NULL || k.type != T_STRING ||
            mm_decode(meta, len, k.end, &v, detail, sizeof(detail)) != NULL)
            goto out;
        if (v.type == T_POINTER)
            goto out;
        uint32_t vend;
        if (mm_skip(meta, len, k.end, 0, &vend) < 0)
            goto out; /* description, languages */
        uint64_t val = 0;
        if (v.type == T_UINT16 || v.type == T_UINT32 || v.type == T_UINT64)
            for (uint32_t j = 0; j < v.size; j++)
                val = val << 8 | meta[v.payload + j];
        const char *key = (const char *)meta + k.payload;
        if (k.size == 10 && memcmp(key, "node_count", 10) == 0) {
            node_count = val;
            have_nodes = true;
        } else if (k.size == 11 && memcmp(key, "record_size", 11) == 0) {
            record_size = val;
            have_rs = true;
        }
        p = vend;
        if (have_nodes && have_rs)
            break;
    }
    if (!have_nodes || !have_rs)
        goto out;
    if (record_size != 24 && record_size != 28 && record_size != 32) {
        snprintf(msg, msglen, "record_size %llu is not 24, 28 or 32",
                 (unsigned long long)record_size);
        rc = 0;
        goto out;
    }
    uint64_t tree = node_count * (record_size / 4);
    if (tree + MM_SEPARATOR > fsize) {
        snprintf(msg, msglen,
                 "node_count %llu needs a %llu-byte search tree, but the "
                 "file has %zu bytes",
                 (unsigned long long)node_count, (unsigned long long)tree, fsize);
        rc = 0;
    }
out:
    free(buf);
    fclose(f);
    return rc;
}

/* ---- GeoIP: open and look up --------------------------------------------- */

struct tg_geoip {
    MMDB_s mmdb;
};

struct tg_geoip *tg_geoip_open(const char *path, char *err, size_t errlen)
{
    char msg[384];
    struct stat st;

    if (stat(path, &st) < 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        return NULL;
    }
    struct tg_geoip *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    /* libmaxminddb 1.7.1 leaks a few KiB when it refuses some corrupt
     * metadata blocks (fixed upstream in maxmind/libmaxminddb#356): a
     * refused reload costs that much, once per attempt. */
    int rc = MMDB_open(path, MMDB_MODE_MMAP, &g->mmdb);
    if (rc != MMDB_SUCCESS) {
        int saved = errno;
        if (rc == MMDB_FILE_OPEN_ERROR || rc == MMDB_IO_ERROR)
            set_err(err, errlen, "%s: %s: %s", path, MMDB_strerror(rc), strerror(saved));
        else if (rc == MMDB_INVALID_METADATA_ERROR &&
                 mm_explain_metadata(path, msg, sizeof(msg)) == 0)
            set_err(err, errlen, "%s: invalid MaxMind DB metadata: %s", path, msg);
        else
            set_err(err, errlen, "%s: %s", path, MMDB_strerror(rc));
        free(g);
        return NULL;
    }
    if (mm_validate(&g->mmdb, msg, sizeof(msg)) < 0) {
        set_err(err, errlen, "%s: %s", path, msg);
        MMDB_close(&g->mmdb);
        free(g);
        return NULL;
    }
    return g;
}

void tg_geoip_close(struct tg_geoip *g)
{
    if (g == NULL)
        return;
    MMDB_close(&g->mmdb);
    free(g);
}

/* IPv4 in an IPv6 database goes through the ::/96 subtree libmaxminddb
 * found at open; IPv6 in an IPv4 database is simply not found. */
static bool geo_lookup(const struct tg_geoip *g, const struct tg_addr *a, MMDB_entry_s *entry)
{
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
    const struct sockaddr *sa;

    if (g == NULL || a == NULL)
        return false;
    if (a->family == AF_INET) {
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        memcpy(&sin.sin_addr, a->ip, 4);
        sa = (const struct sockaddr *)&sin;
    } else if (a->family == AF_INET6) {
        memset(&sin6, 0, sizeof(sin6));
        sin6.sin6_family = AF_INET6;
        memcpy(&sin6.sin6_addr, a->ip, 16);
        sa = (const struct sockaddr *)&sin6;
    } else {
        return false;
    }
    int mmerr = MMDB_SUCCESS;
    MMDB_lookup_result_s res = MMDB_lookup_sockaddr(&g->mmdb, sa, &mmerr);
    if (mmerr != MMDB_SUCCESS || !res.found_entry)
        return false;
    *entry = res.entry;
    return true;
}

bool tg_geoip_country(const struct tg_geoip *g, const struct tg_addr *a, char out[3])
{
    MMDB_entry_s entry;
    memcpy(out, TG_GEOIP_UNKNOWN, 3);
    if (!geo_lookup(g, a, &entry))
        return false;
    for (size_t i = 0; i < TG_ARRAY_LEN(country_paths); i++) {
        MMDB_entry_data_s d;
        if (mm_get(&entry, &d, country_paths[i]) == MMDB_SUCCESS && d.has_data && two_letters(&d)) {
            out[0] = (char)(d.utf8_string[0] & ~0x20);
            out[1] = (char)(d.utf8_string[1] & ~0x20);
            out[2] = '\0';
            return true;
        }
    }
    return false;
}

uint32_t tg_geoip_asn(const struct tg_geoip *g, const struct tg_addr *a)
{
    MMDB_entry_s entry;
    MMDB_entry_data_s d;
    uint32_t asn;
    if (!geo_lookup(g, a, &entry))
        return 0;
    if (mm_get(&entry, &d, asn_path) != MMDB_SUCCESS || !d.has_data || asn_value(&d, &asn) < 0)
        return 0;
    return asn;
}

/* ---- access rules -------------------------------------------------------- */

/* Two tries, allow and deny, each mapping a prefix to its length + 1: one
 * lookup in each gives the longest matching allow and deny prefixes, so the
 * same prefix on both lists is a tie (deny wins) whatever the order they
 * were added in. Countries are bits over AA..ZZ; ASNs sorted arrays. */
#define LETTERS 26
#define COUNTRY_BITS (LETTERS * LETTERS)
#define ASN_LIST_MIN 16

struct asn_list {
    uint32_t *v; /* sorted, no duplicates */
    size_t n, cap;
};

struct tg_access_rules {
    struct tg_cidr_set *prefixes[2]; /* [0] deny, [1] allow */
    uint8_t countries[2][(COUNTRY_BITS + 7) / 8];
    size_t ncountries[2];
    struct asn_list asns[2];
    size_t allow_public; /* allow prefixes reaching past the private preset */
};

struct tg_access_rules *tg_access_rules_new(void)
{
    struct tg_access_rules *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->prefixes[0] = tg_cidr_set_new();
    r->prefixes[1] = tg_cidr_set_new();
    if (r->prefixes[0] == NULL || r->prefixes[1] == NULL) {
        tg_access_rules_free(r);
        return NULL;
    }
    return r;
}

void tg_access_rules_free(struct tg_access_rules *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        tg_cidr_set_free(r->prefixes[i]);
        free(r->asns[i].v);
    }
    free(r);
}

/* Whether every address of `c` is in the "private" preset (loopback,
 * RFC 1918, link-local, unique local). */
static bool within_private(const struct tg_cidr *c)
{
    struct tg_cidr list[TG_CIDR_PRESET_MAX];
    int n = tg_cidr_preset("private", list, TG_ARRAY_LEN(list));
    for (int i = 0; i < n; i++) {
        if (list[i].addr.family != c->addr.family || c->bits < list[i].bits)
            continue;
        struct tg_addr a = c->addr;
        tg_addr_mask(&a, list[i].bits);
        if (tg_addr_equal(&a, &list[i].addr))
            return true;
    }
    return false;
}

int tg_access_rules_add_cidr(struct tg_access_rules *r, bool allow, const char *text, char *err,
                             size_t errlen)
{
    struct tg_cidr list[TG_CIDR_PRESET_MAX];
    char why[128];
    int n = tg_cidr_preset(text, list, TG_ARRAY_LEN(list));
    if (n < 0) {
        if (tg_cidr_parse(text, strlen(text), &list[0], why, sizeof(why)) < 0) {
            if (strcmp(why, "not an IP address") == 0)
                set_err(err, errlen,
                        "\"%s\": not an IP prefix or a preset (private, "
                        "loopback, any)",
                        text);
            else
                set_err(err, errlen, "\"%s\": %s", text, why);
            return -1;
        }
        n = 1;
    }
    for (int i = 0; i < n; i++) {
        if (tg_cidr_set_add(r->prefixes[allow], &list[i], list[i].bits + 1) < 0) {
            set_err(err, errlen, "\"%s\": out of memory", text);
            return -1;
        }
        if (allow && !within_private(&list[i]))
            r->allow_public++;
    }
    return 0;
}

static int country_index(const char *code)
{
    if (code == NULL || !is_alpha(code[0]) || !is_alpha(code[1]) || code[2] != '\0')
        return -1;
    return ((code[0] & ~0x20) - 'A') * LETTERS + ((code[1] & ~0x20) - 'A');
}

int tg_access_rules_add_country(struct tg_access_rules *r, bool allow, const char *code, char *err,
                                size_t errlen)
{
    int i = country_index(code);
    if (i < 0) {
        set_err(err, errlen,
                "\"%s\": not a two-letter ISO 3166-1 country code "
                "(XX for unknown)",
                code != NULL ? code : "");
        return -1;
    }
    uint8_t *bits = r->countries[allow];
    if (!bit_get(bits, (uint32_t)i)) {
        bit_set(bits, (uint32_t)i);
        r->ncountries[allow]++;
    }
    return 0;
}

static bool asn_find(const struct asn_list *l, uint32_t asn, size_t *pos)
{
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->v[mid] < asn)
            lo = mid + 1;
        else
            hi = mid;
    }
    *pos = lo;
    return lo < l->n && l->v[lo] == asn;
}

int tg_access_rules_add_asn(struct tg_access_rules *r, bool allow, uint32_t asn)
{
    struct asn_list *l = &r->asns[allow];
    size_t pos;
    if (asn_find(l, asn, &pos))
        return 0;
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : ASN_LIST_MIN;
        uint32_t *v = realloc(l->v, ncap * sizeof(*v));
        if (v == NULL)
            return -1;
        l->v = v;
        l->cap = ncap;
    }
    memmove(l->v + pos + 1, l->v + pos, (l->n - pos) * sizeof(*l->v));
    l->v[pos] = asn;
    l->n++;
    return 0;
}

bool tg_access_check(const struct tg_access_rules *r, const struct tg_addr *a, const char *country,
                     uint32_t asn, const char **why)
{
    const char *reason = NULL;
    int deny = tg_cidr_set_lookup(r->prefixes[0], a);
    int allow = tg_cidr_set_lookup(r->prefixes[1], a);
    if (deny > 0 && deny >= allow)
        reason = "address";
    else if (allow == 0 && tg_cidr_set_count(r->prefixes[1]) > 0)
        reason = "address";

    if (reason == NULL && (r->ncountries[0] > 0 || r->ncountries[1] > 0)) {
        int i = country_index(country);
        if (i < 0)
            i = country_index(TG_GEOIP_UNKNOWN);
        if (bit_get(r->countries[0], (uint32_t)i) ||
            (r->ncountries[1] > 0 && !bit_get(r->countries[1], (uint32_t)i)))
            reason = "country";
    }

    if (reason == NULL && (r->asns[0].n > 0 || r->asns[1].n > 0)) {
        size_t pos;
        if (asn_find(&r->asns[0], asn, &pos) ||
            (r->asns[1].n > 0 && !asn_find(&r->asns[1], asn, &pos)))
            reason = "asn";
    }

    if (why != NULL)
        *why = reason;
    return reason == NULL;
}

bool tg_access_uses_country(const struct tg_access_rules *r)
{
    return r->ncountries[0] > 0 || r->ncountries[1] > 0;
}

bool tg_access_private_only(const struct tg_access_rules *r)
{
    return r != NULL && tg_cidr_set_count(r->prefixes[1]) > 0 && r->allow_public == 0;
}

bool tg_access_uses_asn(const struct tg_access_rules *r)
{
    return r->asns[0].n > 0 || r->asns[1].n > 0;
}
