/* IP address text <-> struct tg_addr, prefixes, and longest-prefix-match
 * sets. The parsers are our own (strict, locale-free, no NUL-terminated
 * copies) rather than inet_pton, whose leniency differs between libcs. This
 * module does no I/O and never resolves names. */
#include "addr.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

/* ---- parsing and formatting --------------------------------------------- */

/* Dotted quad, exactly four decimal octets. A leading zero ("010") is
 * refused: some stacks read it as octal, so it means two different hosts. */
static int parse_v4(const char *s, size_t n, uint8_t ip[4])
{
    size_t i = 0;
    for (int octet = 0; octet < 4; octet++) {
        if (octet > 0) {
            if (i >= n || s[i] != '.')
                return -1;
            i++;
        }
        size_t start = i;
        unsigned v = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 3)
            v = v * 10 + (unsigned)(s[i++] - '0');
        size_t digits = i - start;
        if (digits == 0 || v > 255 || (digits > 1 && s[start] == '0'))
            return -1;
        ip[octet] = (uint8_t)v;
    }
    return i == n ? 0 : -1;
}

/* RFC 4291 2.2 text forms: eight groups of 1-4 hex digits, at most one "::"
 * standing for one or more zero groups, optionally ending in a dotted quad.
 * No zone id ("%eth0"): it names an interface, not an address. */
static int parse_v6(const char *s, size_t n, uint8_t ip[16])
{
    uint16_t words[8];
    int nw = 0, gap = -1;
    size_t i = 0;

    if (n < 2)
        return -1;
    if (s[0] == ':') {
        if (s[1] != ':')
            return -1;
        gap = 0;
        i = 2;
    }
    while (i < n) {
        size_t start = i;
        unsigned v = 0;
        while (i < n && tg_hex_digit(s[i]) >= 0 && i - start < 5)
            v = (v << 4) | (unsigned)tg_hex_digit(s[i++]);
        if (i == start)
            return -1;
        if (i < n && s[i] == '.') {
            uint8_t v4[4];
            if (nw > 6 || parse_v4(s + start, n - start, v4) < 0)
                return -1;
            words[nw++] = (uint16_t)(v4[0] << 8 | v4[1]);
            words[nw++] = (uint16_t)(v4[2] << 8 | v4[3]);
            i = n;
            break;
        }
        if (i - start > 4 || nw == 8)
            return -1;
        words[nw++] = (uint16_t)v;
        if (i == n)
            break;
        if (s[i] != ':')
            return -1;
        i++;
        if (i < n && s[i] == ':') {
            if (gap >= 0)
                return -1;
            gap = nw;
            i++;
        } else if (i == n) {
            return -1; /* "1::2:" */
        }
    }
    if (gap < 0 ? nw != 8 : nw > 7)
        return -1;

    int out = 0;
    for (int w = 0; w < 8; w++) {
        uint16_t v = 0;
        if (gap < 0 || w < gap)
            v = words[w];
        else if (w >= gap + (8 - nw))
            v = words[w - (8 - nw)];
        ip[out++] = (uint8_t)(v >> 8);
        ip[out++] = (uint8_t)v;
    }
    return 0;
}

static bool is_v4_mapped(const uint8_t ip[16])
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(ip, prefix, sizeof(prefix)) == 0;
}

/* ::ffff:a.b.c.d -> a.b.c.d, in place. */
static void fold_mapped(struct tg_addr *a)
{
    if (a->family == AF_INET6 && is_v4_mapped(a->ip)) {
        a->family = AF_INET;
        memmove(a->ip, a->ip + 12, 4);
        memset(a->ip + 4, 0, 12);
    }
}

/* Parses without folding, so tg_cidr_parse can check host bits against the
 * prefix as written before it turns ::ffff:0:0/96 into 0.0.0.0/0. */
static int parse_raw(const char *s, size_t n, struct tg_addr *out)
{
    struct tg_addr a;
    memset(&a, 0, sizeof(a));
    if (n >= 2 && s[0] == '[') {
        if (s[n - 1] != ']' || parse_v6(s + 1, n - 2, a.ip) < 0)
            return -1;
        a.family = AF_INET6;
    } else if (memchr(s, ':', n) != NULL) {
        if (parse_v6(s, n, a.ip) < 0)
            return -1;
        a.family = AF_INET6;
    } else {
        if (parse_v4(s, n, a.ip) < 0)
            return -1;
        a.family = AF_INET;
    }
    *out = a;
    return 0;
}

int tg_addr_parse(const char *s, size_t n, struct tg_addr *out)
{
    if (parse_raw(s, n, out) < 0)
        return -1;
    fold_mapped(out);
    return 0;
}

/* RFC 5952 4: lower-case hex, no leading zeros, the longest run of two or
 * more zero groups (the first one on a tie) becomes "::". Mapped addresses
 * never reach here as IPv6, so there is no mixed dotted notation. */
static size_t format_v6(const uint8_t ip[16], char *buf)
{
    static const char hex[] = "0123456789abcdef";
    uint16_t w[8];
    int best = -1, best_len = 1;
    for (int i = 0; i < 8; i++)
        w[i] = (uint16_t)(ip[2 * i] << 8 | ip[2 * i + 1]);
    for (int i = 0; i < 8;) {
        if (w[i] != 0) {
            i++;
            continue;
        }
        int j = i;
        while (j < 8 && w[j] == 0)
            j++;
        if (j - i > best_len) {
            best = i;
            best_len = j - i;
        }
        i = j;
    }

    size_t o = 0;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            buf[o++] = ':';
            if (i == 0)
                buf[o++] = ':';
            i += best_len - 1;
            continue;
        }
        bool started = false;
        for (int shift = 12; shift >= 0; shift -= 4) {
            unsigned d = (w[i] >> shift) & 0xf;
            if (d != 0 || started || shift == 0) {
                buf[o++] = hex[d];
                started = true;
            }
        }
        if (i < 7)
            buf[o++] = ':';
    }
    buf[o] = '\0';
    return o;
}

/* "0" to "255", for formatting IPv4 without division: this runs for every
 * request (X-Forwarded-For, rate-limit keys, logs). */
static const char octet_text[256][4] = {
#define O1(n)                      \
    {                              \
        (char)('0' + (n)), 0, 0, 1 \
    }
#define O2(n)                                                \
    {                                                        \
        (char)('0' + (n) / 10), (char)('0' + (n) % 10), 0, 2 \
    }
#define O3(n)                                                                           \
    {                                                                                   \
        (char)('0' + (n) / 100), (char)('0' + (n) / 10 % 10), (char)('0' + (n) % 10), 3 \
    }
#define R10(f, b) \
    f(b), f(b + 1), f(b + 2), f(b + 3), f(b + 4), f(b + 5), f(b + 6), f(b + 7), f(b + 8), f(b + 9)
    R10(O1, 0),   R10(O2, 10),  R10(O2, 20),  R10(O2, 30),  R10(O2, 40),  R10(O2, 50),
    R10(O2, 60),  R10(O2, 70),  R10(O2, 80),  R10(O2, 90),  R10(O3, 100), R10(O3, 110),
    R10(O3, 120), R10(O3, 130), R10(O3, 140), R10(O3, 150), R10(O3, 160), R10(O3, 170),
    R10(O3, 180), R10(O3, 190), R10(O3, 200), R10(O3, 210), R10(O3, 220), R10(O3, 230),
    R10(O3, 240), O3(250),      O3(251),      O3(252),      O3(253),      O3(254),
    O3(255),
#undef R10
#undef O3
#undef O2
#undef O1
};

size_t tg_addr_format(const struct tg_addr *a, char *out, size_t cap)
{
    char buf[TG_ADDR_STRLEN + 4];
    size_t len = 0;

    if (a->family == AF_INET) {
        for (int i = 0; i < 4; i++) {
            const char *o = octet_text[a->ip[i]];
            memcpy(buf + len, o, 4); /* 4 bytes at once; the length is o[3] */
            len += (size_t)o[3];
            buf[len++] = '.';
        }
        len--; /* the last dot */
    } else if (a->family == AF_INET6) {
        struct tg_addr v = *a;
        fold_mapped(&v);
        if (v.family == AF_INET)
            return tg_addr_format(&v, out, cap);
        len = format_v6(a->ip, buf);
    }
    buf[len] = '\0';
    if (cap > len) {
        memcpy(out, buf, len + 1);
    } else if (cap > 0) {
        memcpy(out, buf, cap - 1);
        out[cap - 1] = '\0';
    }
    return len;
}

void tg_addr_from_sockaddr(const struct sockaddr *sa, struct tg_addr *out)
{
    memset(out, 0, sizeof(*out));
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        out->family = AF_INET;
        memcpy(out->ip, &sin->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        out->family = AF_INET6;
        memcpy(out->ip, &sin6->sin6_addr, 16);
        fold_mapped(out);
    }
}

static unsigned family_bits(uint8_t family)
{
    return family == AF_INET ? 32 : family == AF_INET6 ? 128 : 0;
}

bool tg_addr_equal(const struct tg_addr *a, const struct tg_addr *b)
{
    if (a->family != b->family)
        return false;
    return memcmp(a->ip, b->ip, family_bits(a->family) / 8) == 0;
}

void tg_addr_mask(struct tg_addr *a, unsigned bits)
{
    unsigned width = family_bits(a->family);
    if (bits >= width)
        return;
    unsigned byte = bits / 8;
    if (bits % 8 != 0) {
        a->ip[byte] &= (uint8_t)(0xff << (8 - bits % 8));
        byte++;
    }
    memset(a->ip + byte, 0, width / 8 - byte);
}

/* ---- prefixes ------------------------------------------------------------ */

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
}

int tg_cidr_parse(const char *s, size_t n, struct tg_cidr *out, char *err, size_t errlen)
{
    const char *slash = memchr(s, '/', n);
    size_t alen = slash != NULL ? (size_t)(slash - s) : n;
    struct tg_cidr c;

    if (parse_raw(s, alen, &c.addr) < 0) {
        set_err(err, errlen, "not an IP address");
        return -1;
    }
    unsigned width = family_bits(c.addr.family), bits = width;
    if (slash != NULL) {
        const char *p = slash + 1;
        size_t plen = n - alen - 1;
        if (plen == 0 || plen > 3 || (plen > 1 && p[0] == '0')) {
            set_err(err, errlen, "bad prefix length");
            return -1;
        }
        bits = 0;
        for (size_t i = 0; i < plen; i++) {
            if (p[i] < '0' || p[i] > '9') {
                set_err(err, errlen, "bad prefix length");
                return -1;
            }
            bits = bits * 10 + (unsigned)(p[i] - '0');
        }
        if (bits > width) {
            set_err(err, errlen,
                    c.addr.family == AF_INET ? "prefix length over 32" : "prefix length over 128");
            return -1;
        }
    }

    struct tg_addr masked = c.addr;
    tg_addr_mask(&masked, bits);
    if (!tg_addr_equal(&masked, &c.addr)) {
        if (err != NULL && errlen > 0) {
            char text[TG_ADDR_STRLEN];
            fold_mapped(&masked);
            tg_addr_format(&masked, text, sizeof(text));
            snprintf(err, errlen, "host bits set (did you mean %s/%u?)", text,
                     masked.family == AF_INET && c.addr.family == AF_INET6 ? bits - 96 : bits);
        }
        return -1;
    }
    /* A mapped prefix always has bits >= 96 here: below that its ffff
     * bits would be host bits. */
    if (c.addr.family == AF_INET6 && is_v4_mapped(c.addr.ip)) {
        fold_mapped(&c.addr);
        bits -= 96;
    }
    c.bits = (uint8_t)bits;
    *out = c;
    return 0;
}

static const char *const preset_loopback[] = {"127.0.0.0/8", "::1/128"};
static const char *const preset_private[] = {
    "127.0.0.0/8",    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
    "169.254.0.0/16", "::1/128",    "fc00::/7",      "fe80::/10",
};
static const char *const preset_any[] = {"0.0.0.0/0", "::/0"};

int tg_cidr_preset(const char *name, struct tg_cidr *out, size_t cap)
{
    const char *const *list;
    size_t len;

    if (strcmp(name, "private") == 0) {
        list = preset_private;
        len = TG_ARRAY_LEN(preset_private);
    } else if (strcmp(name, "loopback") == 0) {
        list = preset_loopback;
        len = TG_ARRAY_LEN(preset_loopback);
    } else if (strcmp(name, "any") == 0) {
        list = preset_any;
        len = TG_ARRAY_LEN(preset_any);
    } else {
        return -1;
    }
    size_t k = 0;
    for (; k < len && k < cap; k++) {
        int rc = tg_cidr_parse(list[k], strlen(list[k]), &out[k], NULL, 0);
        (void)rc; /* the tables above are valid; test_addr checks them */
    }
    return (int)k;
}

/* ---- longest-prefix-match set -------------------------------------------- */

/* A path-compressed binary trie: every node is a prefix (key, bits); a child
 * extends its parent's prefix by at least one bit, and the bit right after
 * the parent's prefix picks the side. Nodes with value 0 are glue, made
 * where two prefixes diverge. So the depth is at most width + 1 nodes and
 * each step is two 64-bit compares: a lookup walks one path, no backtracking.
 *
 * Nodes live in one array addressed by index (0 = none), which makes free a
 * single call, keeps lookups cache-friendly, and needs no recursion. */
struct cidr_node {
    uint64_t key[2]; /* prefix, big-endian bit order, host bits zero */
    uint32_t child[2];
    uint8_t bits;
    int value; /* 0 = glue */
};

struct tg_cidr_set {
    struct cidr_node *nodes; /* nodes[0] unused so that 0 means "none" */
    uint32_t len, cap;
    uint32_t root[2]; /* [0] IPv4, [1] IPv6 */
    size_t count;
};

struct tg_cidr_set *tg_cidr_set_new(void)
{
    struct tg_cidr_set *set = calloc(1, sizeof(*set));
    if (set == NULL)
        return NULL;
    set->cap = 16;
    set->nodes = calloc(set->cap, sizeof(*set->nodes));
    if (set->nodes == NULL) {
        free(set);
        return NULL;
    }
    set->len = 1;
    return set;
}

void tg_cidr_set_free(struct tg_cidr_set *set)
{
    if (set == NULL)
        return;
    free(set->nodes);
    free(set);
}

static void addr_key(const struct tg_addr *a, uint64_t key[2])
{
    key[0] = key[1] = 0;
    unsigned nbytes = family_bits(a->family) / 8;
    for (unsigned i = 0; i < nbytes; i++)
        key[i / 8] |= (uint64_t)a->ip[i] << (56 - 8 * (i % 8));
}

static unsigned key_bit(const uint64_t key[2], unsigned i)
{
    return (unsigned)(key[i / 64] >> (63 - i % 64)) & 1;
}

/* Length of the common leading bits of a and b, at most `limit`. */
static unsigned common_bits(const uint64_t a[2], const uint64_t b[2], unsigned limit)
{
    uint64_t x = a[0] ^ b[0];
    unsigned c;
    if (x != 0) {
        c = (unsigned)__builtin_clzll(x);
    } else {
        x = a[1] ^ b[1];
        c = x != 0 ? 64 + (unsigned)__builtin_clzll(x) : 128;
    }
    return c < limit ? c : limit;
}

static void mask_key(uint64_t key[2], unsigned bits)
{
    for (int w = 0; w < 2; w++) {
        unsigned keep = bits > 64u * w ? bits - 64u * w : 0;
        if (keep == 0)
            key[w] = 0;
        else if (keep < 64)
            key[w] &= ~(~0ULL >> keep);
    }
}

static uint32_t new_node(struct tg_cidr_set *set, const uint64_t key[2], unsigned bits, int value)
{
    uint32_t id = set->len++;
    struct cidr_node *nd = &set->nodes[id];
    nd->key[0] = key[0];
    nd->key[1] = key[1];
    mask_key(nd->key, bits);
    nd->bits = (uint8_t)bits;
    nd->value = value;
    nd->child[0] = nd->child[1] = 0;
    return id;
}

int tg_cidr_set_add(struct tg_cidr_set *set, const struct tg_cidr *prefix, int value)
{
    struct tg_addr a = prefix->addr;
    unsigned bits = prefix->bits;
    if (a.family == AF_INET6 && is_v4_mapped(a.ip) && bits >= 96) {
        fold_mapped(&a);
        bits -= 96;
    }
    unsigned width = family_bits(a.family);
    if (value <= 0 || width == 0 || bits > width)
        return -1;

    /* An insert makes at most two nodes; grow first so that `link` below
     * stays valid. */
    if (set->cap - set->len < 2) {
        if (set->cap > UINT32_MAX / 2)
            return -1;
        uint32_t ncap = set->cap * 2;
        struct cidr_node *n = realloc(set->nodes, ncap * sizeof(*n));
        if (n == NULL)
            return -1;
        set->nodes = n;
        set->cap = ncap;
    }

    uint64_t key[2];
    addr_key(&a, key);
    mask_key(key, bits);
    uint32_t *link = &set->root[a.family == AF_INET6];
    while (*link != 0) {
        struct cidr_node *nd = &set->nodes[*link];
        unsigned limit = nd->bits < bits ? nd->bits : bits;
        unsigned common = common_bits(nd->key, key, limit);
        if (common < nd->bits) {
            uint32_t old = *link;
            unsigned old_side = key_bit(nd->key, common);
            uint32_t id;
            if (common == bits) {
                /* The new prefix contains the node: it becomes its parent. */
                id = new_node(set, key, bits, value);
                set->nodes[id].child[old_side] = old;
            } else {
                /* They diverge at bit `common`: a glue node holds both. */
                id = new_node(set, key, common, 0);
                uint32_t leaf = new_node(set, key, bits, value);
                set->nodes[id].child[old_side] = old;
                set->nodes[id].child[!old_side] = leaf;
            }
            *link = id;
            set->count++;
            return 0;
        }
        if (nd->bits == bits) {
            if (nd->value == 0)
                set->count++;
            nd->value = value;
            return 0;
        }
        link = &nd->child[key_bit(key, nd->bits)];
    }
    *link = new_node(set, key, bits, value);
    set->count++;
    return 0;
}

int tg_cidr_set_lookup(const struct tg_cidr_set *set, const struct tg_addr *a)
{
    struct tg_addr v = *a;
    fold_mapped(&v);
    unsigned width = family_bits(v.family);
    if (width == 0)
        return 0;

    uint64_t key[2];
    addr_key(&v, key);
    int best = 0;
    uint32_t id = set->root[v.family == AF_INET6];
    while (id != 0) {
        const struct cidr_node *nd = &set->nodes[id];
        if (common_bits(nd->key, key, nd->bits) < nd->bits)
            break;
        if (nd->value != 0)
            best = nd->value;
        if (nd->bits == width)
            break;
        id = nd->child[key_bit(key, nd->bits)];
    }
    return best;
}

size_t tg_cidr_set_count(const struct tg_cidr_set *set)
{
    return set->count;
}
