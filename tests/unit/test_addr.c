/* Unit tests for src/addr.c: text forms, masking, prefixes, presets and the
 * longest-prefix-match trie (checked against a brute-force scan). */
#include "../../src/addr.c"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>

#include "test.h"

/* Small deterministic PRNG (xorshift64*) so failures reproduce. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static int parse_s(const char *s, struct tg_addr *a)
{
    return tg_addr_parse(s, strlen(s), a);
}

/* Parses s and formats it back. */
static const char *roundtrip(const char *s)
{
    static char buf[TG_ADDR_STRLEN];
    struct tg_addr a;
    if (parse_s(s, &a) < 0)
        return "(reject)";
    tg_addr_format(&a, buf, sizeof(buf));
    return buf;
}

TEST(parse_and_format_canonical)
{
    static const struct {
        const char *in, *out;
        int family;
    } cases[] = {
        {"192.0.2.1", "192.0.2.1", AF_INET},
        {"0.0.0.0", "0.0.0.0", AF_INET},
        {"255.255.255.255", "255.255.255.255", AF_INET},
        {"10.0.0.1", "10.0.0.1", AF_INET},
        {"::", "::", AF_INET6},
        {"::1", "::1", AF_INET6},
        {"1::", "1::", AF_INET6},
        {"[::1]", "::1", AF_INET6},
        {"[2001:db8::1]", "2001:db8::1", AF_INET6},
        /* RFC 5952 4.1: no leading zeros. */
        {"2001:0db8::0001", "2001:db8::1", AF_INET6},
        /* 4.2.1: shorten as much as possible. */
        {"2001:db8:0:0:0:0:2:1", "2001:db8::2:1", AF_INET6},
        /* 4.2.2: a single zero group is not "::". */
        {"2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1", AF_INET6},
        /* 4.2.3: the longest run, the first on a tie. */
        {"2001:0:0:1:0:0:0:1", "2001:0:0:1::1", AF_INET6},
        {"2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1", AF_INET6},
        /* 4.3: lower case. */
        {"2001:DB8::AbCd", "2001:db8::abcd", AF_INET6},
        {"1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8", AF_INET6},
        {"1::2:3:4:5:6:7", "1:0:2:3:4:5:6:7", AF_INET6},
        {"1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0", AF_INET6},
        {"::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8", AF_INET6},
        {"0:0:0:0:0:0:0:0", "::", AF_INET6},
        {"fe80:0:0:0:1::", "fe80::1:0:0:0", AF_INET6},
        {"1:0:0:2:0:0:0:0", "1:0:0:2::", AF_INET6},
        /* IPv4-compatible (deprecated) prints as hex, not dotted. */
        {"::1.2.3.4", "::102:304", AF_INET6},
        {"64:ff9b::192.0.2.33", "64:ff9b::c000:221", AF_INET6},
        /* Mapped addresses are folded to IPv4. */
        {"::ffff:10.1.2.3", "10.1.2.3", AF_INET},
        {"::FFFF:a01:203", "10.1.2.3", AF_INET},
        {"[::ffff:192.0.2.1]", "192.0.2.1", AF_INET},
        {"0:0:0:0:0:ffff:7f00:1", "127.0.0.1", AF_INET},
        /* Not mapped: ::fffe:, ::1:ffff: */
        {"::fffe:1.2.3.4", "::fffe:102:304", AF_INET6},
        {"::1:ffff:1.2.3.4", "::1:ffff:102:304", AF_INET6},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        struct tg_addr a;
        CHECK_EQ_STR(roundtrip(cases[i].in), cases[i].out);
        if (parse_s(cases[i].in, &a) == 0)
            CHECK_EQ_INT(a.family, cases[i].family);
        /* The canonical form parses back to itself. */
        CHECK_EQ_STR(roundtrip(cases[i].out), cases[i].out);
    }
}

TEST(parse_rejects)
{
    static const char *const bad[] = {
        "",
        " ",
        "1.2.3",
        "1.2.3.4.",
        ".1.2.3.4",
        "1.2.3.4 ",
        " 1.2.3.4",
        "1..2.3",
        "256.0.0.1",
        "1.2.3.1000",
        "-1.2.3.4",
        "1.2.3.4/8",
        "1.2.3.4:80",
        "0x1.2.3.4",
        "1.2.3.a",
        /* leading zeros: octal to some parsers */
        "010.0.0.1",
        "1.02.3.4",
        "00.0.0.0",
        "1.2.3.04",
        "127.000.0.1",
        /* IPv6 */
        ":",
        ":::",
        "::::",
        "1:2",
        "1:2:3:4:5:6:7",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7:8::",
        "::1:2:3:4:5:6:7:8",
        "1::2::3",
        ":1::",
        "1::2:",
        "1:",
        ":1",
        "12345::",
        "00000::1",
        "g::1",
        "1:2:3:4:5:6:7:1.2.3.4",
        "::1.2.3",
        "::1.2.3.4.5",
        "::ffff:010.0.0.1",
        "::1.2.3.4:5",
        "1.2.3.4::",
        "::1 ",
        "::1\n",
        "::1]",
        /* zone ids */
        "fe80::1%eth0",
        "fe80::1%1",
        "[fe80::1%25eth0]",
        /* brackets */
        "[]",
        "[",
        "]",
        "[::1",
        "::1]",
        "[1.2.3.4]",
        "[[::1]]",
        "[::1]:80",
        "[ ::1]",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        struct tg_addr a = {.family = 99};
        if (parse_s(bad[i], &a) == 0)
            fprintf(stderr, "accepted: \"%s\"\n", bad[i]);
        CHECK(parse_s(bad[i], &a) == -1);
        CHECK_EQ_INT(a.family, 99); /* untouched on failure */
    }
    /* Exactly n bytes: an embedded NUL is not an end. */
    struct tg_addr a;
    CHECK(tg_addr_parse("1.2.3.4\0", 8, &a) == -1);
    CHECK(tg_addr_parse("1.2.3.4x", 7, &a) == 0);
    CHECK(tg_addr_parse("::1x", 3, &a) == 0);
}

/* Random strings over the address alphabet: we accept exactly what glibc's
 * inet_pton accepts (it also refuses leading-zero octets). */
TEST(parse_matches_inet_pton)
{
    static const char alphabet[] = "0123456789abcdefABCDEF:::...";
    int accepted = 0;
    for (int iter = 0; iter < 300000; iter++) {
        char s[48];
        size_t n = 1 + rnd() % 40;
        for (size_t i = 0; i < n; i++)
            s[i] = alphabet[rnd() % (sizeof(alphabet) - 1)];
        /* Bias towards plausible shapes: sometimes a v6 or v4 skeleton. */
        if (iter % 3 == 0 && n > 8) {
            s[0] = ':';
            s[1] = ':';
        }
        s[n] = '\0';
        struct tg_addr a;
        uint8_t ref[16];
        int ours = parse_raw(s, n, &a);
        int family = memchr(s, ':', n) != NULL ? AF_INET6 : AF_INET;
        int theirs = inet_pton(family, s, ref) == 1 ? 0 : -1;
        if (ours != theirs)
            fprintf(stderr, "differ on \"%s\": ours %d\n", s, ours);
        CHECK_EQ_INT(ours, theirs);
        if (ours == 0 && theirs == 0) {
            accepted++;
            CHECK_EQ_INT(a.family, family);
            CHECK(memcmp(a.ip, ref, family == AF_INET ? 4 : 16) == 0);
        }
    }
    CHECK(accepted > 1000);

    /* Dotted quads built from random octets, some with leading zeros. */
    for (int iter = 0; iter < 100000; iter++) {
        char s[32];
        int len = 0;
        for (int k = 0; k < 4; k++) {
            unsigned v = (unsigned)(rnd() % 300);
            const char *fmt = rnd() % 8 == 0 ? "%s%03u" : "%s%u";
            len += snprintf(s + len, sizeof(s) - (size_t)len, fmt, k ? "." : "", v);
        }
        struct tg_addr a;
        uint8_t ref[4];
        int ours = parse_raw(s, (size_t)len, &a);
        int theirs = inet_pton(AF_INET, s, ref) == 1 ? 0 : -1;
        CHECK_EQ_INT(ours, theirs);
        if (ours == 0 && theirs == 0)
            CHECK(memcmp(a.ip, ref, 4) == 0);
    }
}

/* Random IPv6 addresses, biased towards zero runs: our text equals glibc's
 * inet_ntop (RFC 5952 too) except where glibc prints a dotted tail, and it
 * parses back to the same bytes. */
TEST(format_matches_inet_ntop)
{
    for (int iter = 0; iter < 200000; iter++) {
        struct tg_addr a = {.family = AF_INET6};
        for (int w = 0; w < 8; w++) {
            uint16_t v = rnd() % 2 ? 0 : (uint16_t)rnd();
            if (rnd() % 4 == 0)
                v = (uint16_t)(rnd() % 16);
            a.ip[2 * w] = (uint8_t)(v >> 8);
            a.ip[2 * w + 1] = (uint8_t)v;
        }
        char ours[TG_ADDR_STRLEN], theirs[INET6_ADDRSTRLEN];
        size_t len = tg_addr_format(&a, ours, sizeof(ours));
        CHECK_EQ_INT(len, strlen(ours));
        inet_ntop(AF_INET6, a.ip, theirs, sizeof(theirs));
        if (is_v4_mapped(a.ip)) {
            CHECK(strchr(ours, ':') == NULL);
        } else if (strchr(theirs, '.') == NULL) {
            CHECK_EQ_STR(ours, theirs);
        }
        struct tg_addr back;
        CHECK(tg_addr_parse(ours, len, &back) == 0);
        struct tg_addr folded = a;
        fold_mapped(&folded);
        CHECK(tg_addr_equal(&back, &folded));
    }
}

/* Every octet value in every position of an IPv4 address. */
TEST(format_ipv4_every_octet)
{
    for (int v = 0; v < 256; v++) {
        for (int pos = 0; pos < 4; pos++) {
            struct tg_addr a = {.family = AF_INET, .ip = {1, 20, 255, 0}};
            a.ip[pos] = (uint8_t)v;
            char ours[TG_ADDR_STRLEN], theirs[INET_ADDRSTRLEN];
            size_t len = tg_addr_format(&a, ours, sizeof(ours));
            inet_ntop(AF_INET, a.ip, theirs, sizeof(theirs));
            CHECK_EQ_STR(ours, theirs);
            CHECK_EQ_INT(len, strlen(theirs));
        }
    }
}

TEST(format_truncation_and_unknown)
{
    struct tg_addr a;
    char buf[8];
    CHECK(parse_s("2001:db8::1", &a) == 0);
    CHECK_EQ_INT(tg_addr_format(&a, buf, sizeof(buf)), 11);
    CHECK_EQ_STR(buf, "2001:db");
    CHECK_EQ_INT(tg_addr_format(&a, buf, 0), 11);

    char full[TG_ADDR_STRLEN];
    CHECK(parse_s("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", &a) == 0);
    CHECK_EQ_INT(tg_addr_format(&a, full, sizeof(full)), 39);

    struct tg_addr unknown = {0};
    strcpy(full, "junk");
    CHECK_EQ_INT(tg_addr_format(&unknown, full, sizeof(full)), 0);
    CHECK_EQ_STR(full, "");

    /* A hand-built mapped IPv6 prints as IPv4. */
    struct tg_addr m = {.family = AF_INET6};
    m.ip[10] = m.ip[11] = 0xff;
    m.ip[12] = 192;
    m.ip[15] = 7;
    CHECK_EQ_INT(tg_addr_format(&m, full, sizeof(full)), 9);
    CHECK_EQ_STR(full, "192.0.0.7");
}

TEST(from_sockaddr)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
    struct tg_addr a, b;
    char buf[TG_ADDR_STRLEN];

    inet_pton(AF_INET, "198.51.100.7", &sin.sin_addr);
    tg_addr_from_sockaddr((struct sockaddr *)&sin, &a);
    CHECK_EQ_INT(a.family, AF_INET);
    tg_addr_format(&a, buf, sizeof(buf));
    CHECK_EQ_STR(buf, "198.51.100.7");

    inet_pton(AF_INET6, "::ffff:198.51.100.7", &sin6.sin6_addr);
    tg_addr_from_sockaddr((struct sockaddr *)&sin6, &b);
    CHECK(tg_addr_equal(&a, &b));

    inet_pton(AF_INET6, "2001:db8::7", &sin6.sin6_addr);
    tg_addr_from_sockaddr((struct sockaddr *)&sin6, &b);
    CHECK_EQ_INT(b.family, AF_INET6);
    tg_addr_format(&b, buf, sizeof(buf));
    CHECK_EQ_STR(buf, "2001:db8::7");

    struct sockaddr un = {.sa_family = AF_UNIX};
    tg_addr_from_sockaddr(&un, &b);
    CHECK_EQ_INT(b.family, 0);
    tg_addr_from_sockaddr(NULL, &b);
    CHECK_EQ_INT(b.family, 0);
}

TEST(equal_and_mask)
{
    struct tg_addr a, b;
    char buf[TG_ADDR_STRLEN];

    CHECK(parse_s("10.1.2.3", &a) == 0);
    CHECK(parse_s("::ffff:10.1.2.3", &b) == 0);
    CHECK(tg_addr_equal(&a, &b));
    CHECK(parse_s("::a01:203", &b) == 0);
    CHECK(!tg_addr_equal(&a, &b)); /* same low bytes, other family */

    static const struct {
        const char *in;
        unsigned bits;
        const char *out;
    } cases[] = {
        {"10.1.2.3", 0, "0.0.0.0"},
        {"10.1.2.3", 8, "10.0.0.0"},
        {"172.31.255.255", 12, "172.16.0.0"},
        {"10.1.2.3", 31, "10.1.2.2"},
        {"10.1.2.3", 32, "10.1.2.3"},
        {"10.1.2.3", 200, "10.1.2.3"},
        {"2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::"},
        {"2001:db8:1:2:3:4:5:7", 127, "2001:db8:1:2:3:4:5:6"},
        {"2001:db8:1:2:3:4:5:7", 128, "2001:db8:1:2:3:4:5:7"},
        {"ffff::1", 1, "8000::"},
        {"ffff::1", 0, "::"},
        {"2001:db8:ffff::", 36, "2001:db8:f000::"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        CHECK(parse_s(cases[i].in, &a) == 0);
        tg_addr_mask(&a, cases[i].bits);
        tg_addr_format(&a, buf, sizeof(buf));
        CHECK_EQ_STR(buf, cases[i].out);
    }
}

static const char *cidr_text(const char *s, char *err, size_t errlen)
{
    static char buf[64];
    struct tg_cidr c;
    err[0] = '\0';
    if (tg_cidr_parse(s, strlen(s), &c, err, errlen) < 0)
        return "(error)";
    char a[TG_ADDR_STRLEN];
    tg_addr_format(&c.addr, a, sizeof(a));
    snprintf(buf, sizeof(buf), "%s/%u", a, c.bits);
    return buf;
}

TEST(cidr_parse)
{
    char err[128];
    static const struct {
        const char *in, *out;
    } ok[] = {
        {"10.0.0.0/8", "10.0.0.0/8"},
        {"0.0.0.0/0", "0.0.0.0/0"},
        {"192.0.2.1", "192.0.2.1/32"},
        {"192.0.2.1/32", "192.0.2.1/32"},
        {"172.16.0.0/12", "172.16.0.0/12"},
        {"2001:db8::/32", "2001:db8::/32"},
        {"::/0", "::/0"},
        {"::1", "::1/128"},
        {"[2001:db8::]/48", "2001:db8::/48"},
        {"fc00::/7", "fc00::/7"},
        {"::ffff:10.0.0.0/104", "10.0.0.0/8"},
        {"::ffff:0:0/96", "0.0.0.0/0"},
        {"::ffff:1.2.3.4", "1.2.3.4/32"},
        {"::ffff:1.2.3.4/128", "1.2.3.4/32"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(ok); i++) {
        CHECK_EQ_STR(cidr_text(ok[i].in, err, sizeof(err)), ok[i].out);
        CHECK_EQ_STR(err, "");
    }

    static const struct {
        const char *in, *err;
    } bad[] = {
        {"10.0.0.1/8", "host bits set (did you mean 10.0.0.0/8?)"},
        {"192.168.1.0/16", "host bits set (did you mean 192.168.0.0/16?)"},
        {"2001:db8::1/32", "host bits set (did you mean 2001:db8::/32?)"},
        {"::ffff:10.0.0.1/104", "host bits set (did you mean 10.0.0.0/8?)"},
        {"::ffff:0:0/95", "host bits set (did you mean ::fffe:0:0/95?)"},
        {"::ffff:0:0/80", "host bits set (did you mean ::/80?)"},
        {"10.0.0.0/33", "prefix length over 32"},
        {"::/129", "prefix length over 128"},
        {"10.0.0.0/", "bad prefix length"},
        {"10.0.0.0/08", "bad prefix length"},
        {"10.0.0.0/8/8", "bad prefix length"},
        {"10.0.0.0/-8", "bad prefix length"},
        {"10.0.0.0/+8", "bad prefix length"},
        {"10.0.0.0/ 8", "bad prefix length"},
        {"10.0.0.0/1000", "bad prefix length"},
        {"10.0.0.0/8 ", "bad prefix length"},
        {"/8", "not an IP address"},
        {"", "not an IP address"},
        {"10/8", "not an IP address"},
        {"010.0.0.0/8", "not an IP address"},
        {"fe80::%eth0/64", "not an IP address"},
        {"private", "not an IP address"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        CHECK_EQ_STR(cidr_text(bad[i].in, err, sizeof(err)), "(error)");
        CHECK_EQ_STR(err, bad[i].err);
    }

    /* A short error buffer is cut, not overrun; NULL is allowed. */
    struct tg_cidr c;
    char small[5];
    CHECK(tg_cidr_parse("10.0.0.1/8", 10, &c, small, sizeof(small)) == -1);
    CHECK_EQ_STR(small, "host");
    CHECK(tg_cidr_parse("10.0.0.1/8", 10, &c, NULL, 0) == -1);
    CHECK(tg_cidr_parse("10.0.0.1/33", 11, &c, NULL, 0) == -1);
}

static bool preset_contains(const char *preset, const char *addr)
{
    struct tg_cidr list[TG_CIDR_PRESET_MAX];
    struct tg_addr a;
    int n = tg_cidr_preset(preset, list, TG_ARRAY_LEN(list));
    if (n < 0 || parse_s(addr, &a) < 0)
        return false;
    for (int i = 0; i < n; i++) {
        struct tg_addr m = a;
        if (m.family != list[i].addr.family)
            continue;
        tg_addr_mask(&m, list[i].bits);
        if (tg_addr_equal(&m, &list[i].addr))
            return true;
    }
    return false;
}

TEST(presets)
{
    struct tg_cidr list[16];
    char text[TG_ADDR_STRLEN], all[512];
    static const struct {
        const char *name, *list;
    } cases[] = {
        {"private", "127.0.0.0/8 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 "
                    "169.254.0.0/16 ::1/128 fc00::/7 fe80::/10 "},
        {"loopback", "127.0.0.0/8 ::1/128 "},
        {"any", "0.0.0.0/0 ::/0 "},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        int n = tg_cidr_preset(cases[i].name, list, TG_ARRAY_LEN(list));
        CHECK(n > 0 && n <= TG_CIDR_PRESET_MAX);
        size_t len = 0;
        all[0] = '\0';
        for (int k = 0; k < n; k++) {
            tg_addr_format(&list[k].addr, text, sizeof(text));
            len += (size_t)snprintf(all + len, sizeof(all) - len, "%s/%u ", text, list[k].bits);
        }
        CHECK_EQ_STR(all, cases[i].list);
    }
    CHECK_EQ_INT(tg_cidr_preset("private", list, 3), 3);
    CHECK_EQ_INT(tg_cidr_preset("private", list, 0), 0);
    CHECK_EQ_INT(tg_cidr_preset("Private", list, 16), -1);
    CHECK_EQ_INT(tg_cidr_preset("", list, 16), -1);
    CHECK_EQ_INT(tg_cidr_preset("public", list, 16), -1);

    CHECK(preset_contains("private", "10.255.0.1"));
    CHECK(preset_contains("private", "172.31.255.255"));
    CHECK(!preset_contains("private", "172.32.0.0"));
    CHECK(preset_contains("private", "192.168.77.1"));
    CHECK(preset_contains("private", "169.254.169.254"));
    CHECK(preset_contains("private", "127.0.0.1"));
    CHECK(preset_contains("private", "::ffff:192.168.1.1"));
    CHECK(preset_contains("private", "::1"));
    CHECK(preset_contains("private", "fd12:3456::1"));
    CHECK(preset_contains("private", "fe80::1"));
    CHECK(preset_contains("private", "febf::1"));
    CHECK(!preset_contains("private", "fec0::1"));
    CHECK(!preset_contains("private", "8.8.8.8"));
    CHECK(!preset_contains("private", "2001:db8::1"));
    CHECK(!preset_contains("private", "::2"));
    CHECK(preset_contains("loopback", "127.1.2.3"));
    CHECK(!preset_contains("loopback", "10.0.0.1"));
    CHECK(preset_contains("any", "8.8.8.8"));
    CHECK(preset_contains("any", "2001:db8::1"));
}

static struct tg_cidr cidr(const char *s)
{
    struct tg_cidr c;
    memset(&c, 0, sizeof(c));
    if (tg_cidr_parse(s, strlen(s), &c, NULL, 0) < 0)
        fprintf(stderr, "bad test cidr %s\n", s);
    return c;
}

static int lookup_s(const struct tg_cidr_set *set, const char *s)
{
    struct tg_addr a;
    if (parse_s(s, &a) < 0)
        return -100;
    return tg_cidr_set_lookup(set, &a);
}

TEST(cidr_set_basics)
{
    struct tg_cidr_set *set = tg_cidr_set_new();
    CHECK(set != NULL);
    CHECK_EQ_INT(tg_cidr_set_count(set), 0);
    CHECK_EQ_INT(lookup_s(set, "10.0.0.1"), 0);
    CHECK_EQ_INT(lookup_s(set, "::1"), 0);

    struct tg_cidr c;
    CHECK(tg_cidr_set_add(set, (c = cidr("10.0.0.0/8"), &c), 1) == 0);
    CHECK(tg_cidr_set_add(set, (c = cidr("10.1.0.0/16"), &c), 2) == 0);
    CHECK(tg_cidr_set_add(set, (c = cidr("10.1.2.3"), &c), 3) == 0);
    CHECK(tg_cidr_set_add(set, (c = cidr("10.1.2.0/24"), &c), 4) == 0);
    CHECK(tg_cidr_set_add(set, (c = cidr("2001:db8::/32"), &c), 5) == 0);
    CHECK(tg_cidr_set_add(set, (c = cidr("::/0"), &c), 6) == 0);
    CHECK(tg_cidr_set_add(set, (c = cidr("2001:db8::1"), &c), 7) == 0);
    CHECK_EQ_INT(tg_cidr_set_count(set), 7);

    CHECK_EQ_INT(lookup_s(set, "10.9.9.9"), 1);
    CHECK_EQ_INT(lookup_s(set, "10.1.9.9"), 2);
    CHECK_EQ_INT(lookup_s(set, "10.1.2.3"), 3);
    CHECK_EQ_INT(lookup_s(set, "10.1.2.4"), 4);
    CHECK_EQ_INT(lookup_s(set, "11.0.0.0"), 0);
    CHECK_EQ_INT(lookup_s(set, "::ffff:10.1.2.3"), 3);
    CHECK_EQ_INT(lookup_s(set, "2001:db8:1::"), 5);
    CHECK_EQ_INT(lookup_s(set, "2001:db8::1"), 7);
    CHECK_EQ_INT(lookup_s(set, "2001:db9::"), 6);
    /* ::/0 does not cover IPv4: the families are separate trees. */
    CHECK_EQ_INT(lookup_s(set, "192.0.2.1"), 0);

    /* Same prefix again keeps the last value and the count. */
    CHECK(tg_cidr_set_add(set, (c = cidr("10.1.0.0/16"), &c), 9) == 0);
    CHECK_EQ_INT(tg_cidr_set_count(set), 7);
    CHECK_EQ_INT(lookup_s(set, "10.1.9.9"), 9);

    /* A hand-built mapped prefix and address land in the IPv4 tree. */
    struct tg_cidr m = {.addr = {.family = AF_INET6}, .bits = 120};
    m.addr.ip[10] = m.addr.ip[11] = 0xff;
    m.addr.ip[12] = 192;
    m.addr.ip[14] = 2;
    CHECK(tg_cidr_set_add(set, &m, 11) == 0);
    CHECK_EQ_INT(lookup_s(set, "192.0.2.200"), 11);
    struct tg_addr raw = m.addr;
    raw.ip[15] = 9;
    CHECK_EQ_INT(tg_cidr_set_lookup(set, &raw), 11);

    /* Host bits beyond the prefix are ignored on add. */
    struct tg_cidr sloppy = cidr("172.16.0.0/12");
    sloppy.addr.ip[3] = 77;
    CHECK(tg_cidr_set_add(set, &sloppy, 12) == 0);
    CHECK_EQ_INT(lookup_s(set, "172.20.0.1"), 12);

    /* Invalid input. */
    CHECK(tg_cidr_set_add(set, (c = cidr("1.0.0.0/8"), &c), 0) == -1);
    CHECK(tg_cidr_set_add(set, (c = cidr("1.0.0.0/8"), &c), -3) == -1);
    c.bits = 33;
    CHECK(tg_cidr_set_add(set, &c, 1) == -1);
    struct tg_cidr none = {0};
    CHECK(tg_cidr_set_add(set, &none, 1) == -1);
    struct tg_addr unknown = {0};
    CHECK_EQ_INT(tg_cidr_set_lookup(set, &unknown), 0);
    CHECK_EQ_INT(tg_cidr_set_count(set), 9);

    tg_cidr_set_free(set);
    tg_cidr_set_free(NULL);
}

TEST(cidr_set_default_routes)
{
    struct tg_cidr_set *set = tg_cidr_set_new();
    struct tg_cidr c;
    CHECK(tg_cidr_set_add(set, (c = cidr("255.255.255.255"), &c), 2) == 0);
    CHECK(tg_cidr_set_add(set, (c = cidr("0.0.0.0/0"), &c), 1) == 0);
    CHECK(tg_cidr_set_add(set, (c = cidr("0.0.0.0"), &c), 3) == 0);
    CHECK(tg_cidr_set_add(set, (c = cidr("128.0.0.0/1"), &c), 4) == 0);
    CHECK(tg_cidr_set_add(set,
                          (c = cidr("ffff:ffff:ffff:ffff:ffff:ffff:"
                                    "ffff:ffff"),
                           &c),
                          5) == 0);
    CHECK(tg_cidr_set_add(set, (c = cidr("8000::/1"), &c), 6) == 0);
    CHECK_EQ_INT(lookup_s(set, "255.255.255.255"), 2);
    CHECK_EQ_INT(lookup_s(set, "255.255.255.254"), 4);
    CHECK_EQ_INT(lookup_s(set, "0.0.0.0"), 3);
    CHECK_EQ_INT(lookup_s(set, "0.0.0.1"), 1);
    CHECK_EQ_INT(lookup_s(set, "127.255.255.255"), 1);
    CHECK_EQ_INT(lookup_s(set, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 5);
    CHECK_EQ_INT(lookup_s(set, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"), 6);
    CHECK_EQ_INT(lookup_s(set, "7fff::"), 0);
    tg_cidr_set_free(set);
}

/* Brute-force reference: the last-added value of the longest prefix. */
struct ref_prefix {
    struct tg_cidr c;
    int value;
};

static int ref_lookup(const struct ref_prefix *list, size_t n, const struct tg_addr *a)
{
    int best = 0, best_bits = -1;
    for (size_t i = 0; i < n; i++) {
        if (list[i].c.addr.family != a->family)
            continue;
        struct tg_addr m = *a;
        tg_addr_mask(&m, list[i].c.bits);
        if (tg_addr_equal(&m, &list[i].c.addr) && (int)list[i].c.bits >= best_bits) {
            best = list[i].value;
            best_bits = list[i].c.bits;
        }
    }
    return best;
}

static void random_addr(struct tg_addr *a, int family, const struct tg_addr *bases, size_t nbases)
{
    /* Start from a base and flip a few bits, so prefixes nest and share
     * long common runs, which is where a radix trie goes wrong. */
    *a = bases[rnd() % nbases];
    unsigned width = family == AF_INET ? 32 : 128;
    int flips = (int)(rnd() % 4);
    for (int k = 0; k < flips; k++) {
        unsigned bit = (unsigned)(rnd() % width);
        a->ip[bit / 8] ^= (uint8_t)(0x80 >> (bit % 8));
    }
    if (family == AF_INET6 && is_v4_mapped(a->ip))
        a->ip[0] = 0x20; /* keep the family honest */
}

static void trie_vs_bruteforce(int family, size_t nprefixes, size_t nlookups)
{
    unsigned width = family == AF_INET ? 32 : 128;
    struct tg_addr bases[16];
    for (size_t i = 0; i < TG_ARRAY_LEN(bases); i++) {
        memset(&bases[i], 0, sizeof(bases[i]));
        bases[i].family = (uint8_t)family;
        for (unsigned b = 0; b < width / 8; b++)
            bases[i].ip[b] = (uint8_t)rnd();
        if (i == 0)
            memset(bases[i].ip, 0, 16); /* near :: / 0.0.0.0 */
        if (i == 1)
            memset(bases[i].ip, 0xff, width / 8);
        if (family == AF_INET6 && is_v4_mapped(bases[i].ip))
            bases[i].ip[0] = 0x20;
    }

    struct ref_prefix *list = calloc(nprefixes, sizeof(*list));
    struct tg_cidr_set *set = tg_cidr_set_new();
    CHECK(list != NULL && set != NULL);
    for (size_t i = 0; i < nprefixes; i++) {
        struct tg_addr a;
        random_addr(&a, family, bases, TG_ARRAY_LEN(bases));
        unsigned bits;
        switch (rnd() % 4) {
        case 0:
            bits = (unsigned)(rnd() % (width + 1));
            break;
        case 1:
            bits = width - (unsigned)(rnd() % 4);
            break;
        default:
            bits = (unsigned)(rnd() % 25) * width / 24;
            break;
        }
        tg_addr_mask(&a, bits);
        list[i].c.addr = a;
        list[i].c.bits = (uint8_t)bits;
        list[i].value = 1 + (int)(rnd() % 1000000);
        CHECK(tg_cidr_set_add(set, &list[i].c, list[i].value) == 0);
    }

    /* Count distinct prefixes the slow way. */
    size_t distinct = 0;
    for (size_t i = 0; i < nprefixes; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen =
                list[j].c.bits == list[i].c.bits && tg_addr_equal(&list[j].c.addr, &list[i].c.addr);
        distinct += !seen;
    }
    CHECK_EQ_INT(tg_cidr_set_count(set), distinct);

    size_t hits = 0;
    for (size_t i = 0; i < nlookups; i++) {
        struct tg_addr a;
        if (i % 2 == 0) {
            random_addr(&a, family, bases, TG_ARRAY_LEN(bases));
        } else {
            /* Exactly at, or just past, a stored prefix's edges. */
            a = list[rnd() % nprefixes].c.addr;
            if (rnd() % 2)
                a.ip[width / 8 - 1] ^= (uint8_t)(1u << (rnd() % 8));
        }
        int want = ref_lookup(list, nprefixes, &a);
        int got = tg_cidr_set_lookup(set, &a);
        if (want != got) {
            char buf[TG_ADDR_STRLEN];
            tg_addr_format(&a, buf, sizeof(buf));
            fprintf(stderr, "lookup %s: want %d got %d\n", buf, want, got);
        }
        CHECK_EQ_INT(got, want);
        hits += want != 0;
    }
    CHECK(hits > nlookups / 4); /* the test exercised matches */
    tg_cidr_set_free(set);
    free(list);
}

TEST(cidr_set_matches_bruteforce_v4)
{
    trie_vs_bruteforce(AF_INET, 4000, 20000);
}

TEST(cidr_set_matches_bruteforce_v6)
{
    trie_vs_bruteforce(AF_INET6, 4000, 20000);
}

/* The deepest possible trie: one prefix per length on one path. Lookups and
 * free must not care (no recursion). */
TEST(cidr_set_deep_chain)
{
    struct tg_cidr_set *set = tg_cidr_set_new();
    struct tg_cidr c = cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    for (unsigned bits = 0; bits <= 128; bits++) {
        struct tg_cidr p = c;
        tg_addr_mask(&p.addr, bits);
        p.bits = (uint8_t)bits;
        CHECK(tg_cidr_set_add(set, &p, (int)bits + 1) == 0);
    }
    CHECK_EQ_INT(tg_cidr_set_count(set), 129);
    struct tg_addr a = c.addr;
    for (unsigned bit = 0; bit < 128; bit++) {
        a = c.addr;
        a.ip[bit / 8] ^= (uint8_t)(0x80 >> (bit % 8));
        CHECK_EQ_INT(tg_cidr_set_lookup(set, &a), (int)bit + 1);
    }
    CHECK_EQ_INT(tg_cidr_set_lookup(set, &c.addr), 129);
    tg_cidr_set_free(set);
}

int main(void)
{
    RUN(parse_and_format_canonical);
    RUN(parse_rejects);
    RUN(parse_matches_inet_pton);
    RUN(format_matches_inet_ntop);
    RUN(format_ipv4_every_octet);
    RUN(format_truncation_and_unknown);
    RUN(from_sockaddr);
    RUN(equal_and_mask);
    RUN(cidr_parse);
    RUN(presets);
    RUN(cidr_set_basics);
    RUN(cidr_set_default_routes);
    RUN(cidr_set_matches_bruteforce_v4);
    RUN(cidr_set_matches_bruteforce_v6);
    RUN(cidr_set_deep_chain);
    return TEST_SUMMARY();
}
