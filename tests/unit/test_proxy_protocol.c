/* Unit tests for src/proxy_protocol.c: valid v1/v2 headers of every kind,
 * each malformation, every input split at every byte offset, and the bytes
 * after the header left alone. */
#include "../../src/proxy_protocol.c"

#include <arpa/inet.h>
#include <stdlib.h>

#include "test.h"

struct pp_result {
    ssize_t rc;
    const char *reason;
    struct tg_proxy_protocol pp;
};

static struct pp_result parse(const char *buf, size_t len)
{
    struct pp_result r;
    memset(&r, 0, sizeof(r));
    /* A canary in out: it must be written only on success. */
    memset(&r.pp, 0xa5, sizeof(r.pp));
    r.rc = tg_proxy_protocol_parse(buf, len, &r.pp, &r.reason);
    return r;
}

static const char *addr_text(const struct tg_addr *a)
{
    static char buf[2][TG_ADDR_STRLEN];
    static int which;
    which ^= 1;
    tg_addr_format(a, buf[which], sizeof(buf[which]));
    return buf[which];
}

/* Parses buf[0..len) whole, then every prefix: each prefix shorter than the
 * header must be INCOMPLETE, and the complete input must give the same
 * result whichever prefix it was first seen in. Each call sees a fresh heap
 * copy of exactly the bytes it may read, so ASan catches a read past len.
 * Returns the whole-input result. */
static struct pp_result parse_split(const char *buf, size_t len)
{
    struct pp_result whole = parse(buf, len);
    for (size_t cut = 0; cut <= len; cut++) {
        char *copy = malloc(cut ? cut : 1);
        memcpy(copy, buf, cut);
        struct pp_result part = parse(copy, cut);
        free(copy);
        if (whole.rc > 0 && cut < (size_t)whole.rc) {
            if (part.rc != TG_PROXY_PROTOCOL_INCOMPLETE)
                fprintf(stderr, "prefix %zu of %zu: rc %zd (%s)\n", cut, len, part.rc,
                        part.reason ? part.reason : "");
            CHECK_EQ_INT(part.rc, TG_PROXY_PROTOCOL_INCOMPLETE);
        } else if (whole.rc > 0) {
            CHECK_EQ_INT(part.rc, whole.rc);
            CHECK(memcmp(&part.pp, &whole.pp, sizeof(part.pp)) == 0);
        } else if (whole.rc == TG_PROXY_PROTOCOL_ERROR) {
            /* Once refused, more bytes never make it acceptable. */
            CHECK(part.rc <= 0);
        } else {
            CHECK_EQ_INT(part.rc, TG_PROXY_PROTOCOL_INCOMPLETE);
        }
    }
    /* An error is final: every longer prefix is refused too. */
    bool refused = false;
    for (size_t cut = 0; cut <= len; cut++) {
        struct pp_result part = parse(buf, cut);
        if (refused)
            CHECK_EQ_INT(part.rc, TG_PROXY_PROTOCOL_ERROR);
        if (part.rc == TG_PROXY_PROTOCOL_ERROR) {
            refused = true;
            CHECK(part.reason != NULL);
        }
    }
    return whole;
}

static struct pp_result parse_s(const char *s)
{
    return parse_split(s, strlen(s));
}

/* ---- v1 ------------------------------------------------------------------ */

TEST(v1_tcp4)
{
    const char *h = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    struct pp_result r = parse_s(h);
    CHECK_EQ_INT(r.rc, strlen(h));
    CHECK_EQ_INT(r.pp.version, 1);
    CHECK(!r.pp.local);
    CHECK_EQ_INT(r.pp.src.family, AF_INET);
    CHECK_EQ_STR(addr_text(&r.pp.src), "192.0.2.1");
    CHECK_EQ_STR(addr_text(&r.pp.dst), "198.51.100.2");
    CHECK_EQ_INT(r.pp.src_port, 56324);
    CHECK_EQ_INT(r.pp.dst_port, 443);
}

TEST(v1_tcp6)
{
    const char *h = "PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 0 65535\r\n";
    struct pp_result r = parse_s(h);
    CHECK_EQ_INT(r.rc, strlen(h));
    CHECK_EQ_INT(r.pp.src.family, AF_INET6);
    CHECK_EQ_STR(addr_text(&r.pp.src), "2001:db8::1");
    CHECK_EQ_STR(addr_text(&r.pp.dst), "2001:db8::2");
    CHECK_EQ_INT(r.pp.src_port, 0);
    CHECK_EQ_INT(r.pp.dst_port, 65535);

    /* The longest TCP6 line the spec allows (104 bytes with CRLF). */
    const char *lng = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    CHECK_EQ_INT(strlen(lng), 104);
    r = parse_s(lng);
    CHECK_EQ_INT(r.rc, 104);

    /* A mapped address is folded to IPv4, as everywhere in tollgate. */
    r = parse_s("PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n");
    CHECK(r.rc > 0);
    CHECK_EQ_INT(r.pp.src.family, AF_INET);
    CHECK_EQ_STR(addr_text(&r.pp.src), "192.0.2.7");
}

TEST(v1_unknown)
{
    struct pp_result r = parse_s("PROXY UNKNOWN\r\n");
    CHECK_EQ_INT(r.rc, 15);
    CHECK_EQ_INT(r.pp.version, 1);
    CHECK(r.pp.local);
    CHECK_EQ_INT(r.pp.src.family, 0);
    CHECK_EQ_INT(r.pp.src_port, 0);

    /* The spec: anything after UNKNOWN up to the CRLF is ignored. */
    const char *h = "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    r = parse_s(h);
    CHECK_EQ_INT(r.rc, strlen(h));
    CHECK(r.pp.local);

    /* Exactly 107 bytes with the CRLF is the limit. */
    char line[200];
    memcpy(line, "PROXY UNKNOWN ", 14);
    memset(line + 14, 'x', 107 - 16);
    memcpy(line + 105, "\r\n", 3);
    CHECK_EQ_INT(strlen(line), 107);
    r = parse_s(line);
    CHECK_EQ_INT(r.rc, 107);
    /* One byte more is refused, before and after the CRLF arrives. */
    memset(line + 14, 'x', 108 - 16);
    memcpy(line + 106, "\r\n", 3);
    r = parse_s(line);
    CHECK_EQ_INT(r.rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse(line, 107).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse(line, 106).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
}

TEST(v1_malformed)
{
    static const char *const bad[] = {
        /* signature and protocol word */
        "proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY  TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY\tTCP4 192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY TCP 192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY UNKNOWNX\r\n",
        "PROXY UNKNOW\r\n",
        "PROXY \r\n",
        "PROXY TCP4\r\n",
        "PROXY TCP4 \r\n",
        /* spaces */
        "PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY TCP4 192.0.2.1  192.0.2.2 1 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1  2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n",
        "PROXY TCP4 192.0.2.1\t192.0.2.2 1 2\r\n",
        /* field count */
        "PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2\r\n",
        /* family mismatch */
        "PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n",
        "PROXY TCP4 192.0.2.1 ::1 1 2\r\n",
        "PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
        "PROXY TCP6 2001:db8::1 192.0.2.2 1 2\r\n",
        /* addresses */
        "PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n",
        "PROXY TCP4 192.0.2 192.0.2.2 1 2\r\n",
        "PROXY TCP4 192.0.2.256 192.0.2.2 1 2\r\n",
        "PROXY TCP4 192.0.2.1. 192.0.2.2 1 2\r\n",
        "PROXY TCP4 0x7f.0.0.1 192.0.2.2 1 2\r\n",
        "PROXY TCP4 example.com 192.0.2.2 1 2\r\n",
        "PROXY TCP6 [2001:db8::1] 2001:db8::2 1 2\r\n",
        "PROXY TCP6 2001:db8::1%eth0 2001:db8::2 1 2\r\n",
        "PROXY TCP6 2001:db8:::1 2001:db8::2 1 2\r\n",
        "PROXY TCP6 2001:db8::g 2001:db8::2 1 2\r\n",
        /* ports */
        "PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 00\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 99999\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 123456\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 +1 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 a 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 2.\r\n",
        /* line ends */
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\rx\n",
        "PROXY UNKNOWN x\ry\r\n",
        "PROXY UNKNOWN x\ny\r\n",
        "GET / HTTP/1.1\r\n",
        "PRI * HTTP/2.0\r\n",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        struct pp_result r = parse_s(bad[i]);
        if (r.rc != TG_PROXY_PROTOCOL_ERROR)
            fprintf(stderr, "accepted: %s", bad[i]);
        CHECK_EQ_INT(r.rc, TG_PROXY_PROTOCOL_ERROR);
        CHECK(r.reason != NULL);
    }
    /* A NUL inside the line. */
    const char nul[] = "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\0\r\n";
    CHECK_EQ_INT(parse_split(nul, sizeof(nul) - 1).rc, TG_PROXY_PROTOCOL_ERROR);
}

TEST(v1_too_long_without_crlf)
{
    char line[300];
    memcpy(line, "PROXY TCP6 ", 11);
    memset(line + 11, '1', sizeof(line) - 11);
    /* Digits could still be an address until the limit: INCOMPLETE, then
     * refused at 107 bytes whatever comes later. */
    CHECK_EQ_INT(parse(line, 106).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
    struct pp_result r = parse(line, 107);
    CHECK_EQ_INT(r.rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse(line, sizeof(line)).rc, TG_PROXY_PROTOCOL_ERROR);
}

TEST(early_rejection)
{
    /* One byte is enough to refuse a client that is not a proxy. */
    static const char *const first[] = {"G", "\x16", "\0", "p", "\n", " "};
    for (size_t i = 0; i < TG_ARRAY_LEN(first); i++) {
        struct pp_result r = parse(first[i], 1);
        CHECK_EQ_INT(r.rc, TG_PROXY_PROTOCOL_ERROR);
        CHECK_EQ_STR(r.reason, "not a PROXY protocol header");
    }
    CHECK_EQ_INT(parse("P", 1).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
    CHECK_EQ_INT(parse("\r", 1).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
    CHECK_EQ_INT(parse("PRI", 3).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("PROXX", 5).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("\r\n\r\n\0\r\nQUIT", 11).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
    CHECK_EQ_INT(parse("\r\n\r\n\0\r\nQUIX", 11).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("\r\n\r\nGET", 7).rc, TG_PROXY_PROTOCOL_ERROR);
    /* v1: the protocol word and field characters are checked as they
     * come. */
    CHECK_EQ_INT(parse("PROXY TCP", 9).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
    CHECK_EQ_INT(parse("PROXY TCPX", 10).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("PROXY UNK", 9).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
    CHECK_EQ_INT(parse("PROXY TCP4 1.2", 14).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
    CHECK_EQ_INT(parse("PROXY TCP4 1.2/", 15).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("PROXY TCP4 1.2\n", 15).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("PROXY TCP4 1.2\rx", 16).rc, TG_PROXY_PROTOCOL_ERROR);
    /* The v2 version, command and family are checked byte by byte. */
    CHECK_EQ_INT(parse("\r\n\r\n\0\r\nQUIT\n\x11", 13).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("\r\n\r\n\0\r\nQUIT\n\x22", 13).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("\r\n\r\n\0\r\nQUIT\n\x21", 13).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
    CHECK_EQ_INT(parse("\r\n\r\n\0\r\nQUIT\n\x21\x12", 14).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("\r\n\r\n\0\r\nQUIT\n\x21\x11", 14).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
    CHECK_EQ_INT(parse("\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0b", 16).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("\r\n\r\n\0\r\nQUIT\n\x21\x11\x10\x00", 16).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse("", 0).rc, TG_PROXY_PROTOCOL_INCOMPLETE);
}

/* ---- v2 ------------------------------------------------------------------ */

/* Writes a v2 header: signature, ver_cmd, fam, then `body` bytes of which
 * the caller fills the addresses; returns the total length. */
static size_t v2_head(unsigned char *out, unsigned ver_cmd, unsigned fam, size_t body)
{
    memcpy(out, "\r\n\r\n\0\r\nQUIT\n", 12);
    out[12] = (unsigned char)ver_cmd;
    out[13] = (unsigned char)fam;
    out[14] = (unsigned char)(body >> 8);
    out[15] = (unsigned char)body;
    memset(out + 16, 0, body);
    return 16 + body;
}

static size_t make_tcp4(unsigned char *out, const char *src, const char *dst, uint16_t sport,
                        uint16_t dport, size_t extra)
{
    size_t n = v2_head(out, 0x21, 0x11, 12 + extra);
    inet_pton(AF_INET, src, out + 16);
    inet_pton(AF_INET, dst, out + 20);
    out[24] = (unsigned char)(sport >> 8);
    out[25] = (unsigned char)sport;
    out[26] = (unsigned char)(dport >> 8);
    out[27] = (unsigned char)dport;
    return n;
}

static size_t make_tcp6(unsigned char *out, const char *src, const char *dst, uint16_t sport,
                        uint16_t dport, size_t extra)
{
    size_t n = v2_head(out, 0x21, 0x21, 36 + extra);
    inet_pton(AF_INET6, src, out + 16);
    inet_pton(AF_INET6, dst, out + 32);
    out[48] = (unsigned char)(sport >> 8);
    out[49] = (unsigned char)sport;
    out[50] = (unsigned char)(dport >> 8);
    out[51] = (unsigned char)dport;
    return n;
}

static struct pp_result parse_u(const unsigned char *b, size_t n)
{
    return parse_split((const char *)b, n);
}

TEST(v2_tcp4)
{
    unsigned char b[64];
    size_t n = make_tcp4(b, "203.0.113.9", "192.0.2.80", 40000, 443, 0);
    CHECK_EQ_INT(n, 28);
    struct pp_result r = parse_u(b, n);
    CHECK_EQ_INT(r.rc, 28);
    CHECK_EQ_INT(r.pp.version, 2);
    CHECK(!r.pp.local);
    CHECK_EQ_INT(r.pp.src.family, AF_INET);
    CHECK_EQ_STR(addr_text(&r.pp.src), "203.0.113.9");
    CHECK_EQ_STR(addr_text(&r.pp.dst), "192.0.2.80");
    CHECK_EQ_INT(r.pp.src_port, 40000);
    CHECK_EQ_INT(r.pp.dst_port, 443);
}

TEST(v2_tcp6)
{
    unsigned char b[128];
    size_t n = make_tcp6(b, "2001:db8::17", "2001:db8:1::1", 1, 65535, 0);
    CHECK_EQ_INT(n, 52);
    struct pp_result r = parse_u(b, n);
    CHECK_EQ_INT(r.rc, 52);
    CHECK_EQ_INT(r.pp.src.family, AF_INET6);
    CHECK_EQ_STR(addr_text(&r.pp.src), "2001:db8::17");
    CHECK_EQ_STR(addr_text(&r.pp.dst), "2001:db8:1::1");
    CHECK_EQ_INT(r.pp.src_port, 1);
    CHECK_EQ_INT(r.pp.dst_port, 65535);

    /* Mapped addresses fold to IPv4. */
    n = make_tcp6(b, "::ffff:192.0.2.5", "::1", 2, 3, 0);
    r = parse_u(b, n);
    CHECK_EQ_INT(r.rc, 52);
    CHECK_EQ_INT(r.pp.src.family, AF_INET);
    CHECK_EQ_STR(addr_text(&r.pp.src), "192.0.2.5");
}

TEST(v2_local)
{
    unsigned char b[128];
    /* LOCAL with UNSPEC and no body: a health check from the proxy. */
    size_t n = v2_head(b, 0x20, 0x00, 0);
    struct pp_result r = parse_u(b, n);
    CHECK_EQ_INT(r.rc, 16);
    CHECK_EQ_INT(r.pp.version, 2);
    CHECK(r.pp.local);
    CHECK_EQ_INT(r.pp.src.family, 0);

    /* LOCAL with addresses: they are ignored. */
    n = make_tcp4(b, "192.0.2.1", "192.0.2.2", 1, 2, 0);
    b[12] = 0x20;
    r = parse_u(b, n);
    CHECK_EQ_INT(r.rc, 28);
    CHECK(r.pp.local);
    CHECK_EQ_INT(r.pp.src.family, 0);
    CHECK_EQ_INT(r.pp.src_port, 0);

    n = make_tcp6(b, "::1", "::2", 1, 2, 0);
    b[12] = 0x20;
    r = parse_u(b, n);
    CHECK_EQ_INT(r.rc, 52);
    CHECK(r.pp.local);

    /* LOCAL with UNSPEC and a body (TLVs) is fine. */
    n = v2_head(b, 0x20, 0x00, 5);
    b[16] = 0x04; /* PP2_TYPE_NOOP */
    b[17] = 0;
    b[18] = 2;
    r = parse_u(b, n);
    CHECK_EQ_INT(r.rc, 21);
    CHECK(r.pp.local);
}

TEST(v2_tlvs)
{
    unsigned char b[TG_PROXY_PROTOCOL_MAX + 64];
    /* An AWS-like TLV (0xEA, VPC endpoint id) and a NOOP after the
     * addresses. */
    const char vpce[] = "\x01vpce-08d2bf15fac5001c9";
    size_t tlv = 3 + (sizeof(vpce) - 1) + 3;
    size_t n = make_tcp4(b, "192.0.2.1", "192.0.2.2", 1000, 80, tlv);
    size_t o = 28;
    b[o++] = 0xea;
    b[o++] = 0;
    b[o++] = (unsigned char)(sizeof(vpce) - 1);
    memcpy(b + o, vpce, sizeof(vpce) - 1);
    o += sizeof(vpce) - 1;
    b[o++] = 0x04;
    b[o++] = 0;
    b[o++] = 0;
    CHECK_EQ_INT(o, n);
    struct pp_result r = parse_u(b, n);
    CHECK_EQ_INT(r.rc, n);
    CHECK_EQ_STR(addr_text(&r.pp.src), "192.0.2.1");
    CHECK_EQ_INT(r.pp.src_port, 1000);

    /* A TLV that runs past the header, one cut short, stray bytes. */
    b[28 + 2] = (unsigned char)(sizeof(vpce));
    CHECK_EQ_INT(parse_u(b, n).rc, TG_PROXY_PROTOCOL_ERROR);
    n = make_tcp4(b, "192.0.2.1", "192.0.2.2", 1, 2, 2);
    b[28] = 0x04;
    CHECK_EQ_INT(parse_u(b, n).rc, TG_PROXY_PROTOCOL_ERROR);
    n = make_tcp4(b, "192.0.2.1", "192.0.2.2", 1, 2, 1);
    CHECK_EQ_INT(parse_u(b, n).rc, TG_PROXY_PROTOCOL_ERROR);

    /* The largest header accepted, and one byte more. */
    size_t body = TG_PROXY_PROTOCOL_MAX - 16;
    n = make_tcp4(b, "192.0.2.1", "192.0.2.2", 1, 2, body - 12);
    b[28] = 0x04;
    b[29] = (unsigned char)((body - 15) >> 8);
    b[30] = (unsigned char)(body - 15);
    CHECK_EQ_INT(n, TG_PROXY_PROTOCOL_MAX);
    CHECK_EQ_INT(parse((const char *)b, n).rc, TG_PROXY_PROTOCOL_MAX);
    n = make_tcp4(b, "192.0.2.1", "192.0.2.2", 1, 2, body - 11);
    b[28] = 0x04;
    b[29] = (unsigned char)((body - 14) >> 8);
    b[30] = (unsigned char)(body - 14);
    /* Refused from the length field alone, before the body arrives. */
    CHECK_EQ_INT(parse((const char *)b, 16).rc, TG_PROXY_PROTOCOL_ERROR);
    CHECK_EQ_INT(parse((const char *)b, n).rc, TG_PROXY_PROTOCOL_ERROR);
}

TEST(v2_malformed)
{
    unsigned char b[128];
    size_t n;
    struct pp_result r;

    /* Version 1 or 3 in the binary form. */
    n = make_tcp4(b, "192.0.2.1", "192.0.2.2", 1, 2, 0);
    b[12] = 0x11;
    CHECK_EQ_INT(parse_u(b, n).rc, TG_PROXY_PROTOCOL_ERROR);
    b[12] = 0x31;
    CHECK_EQ_INT(parse_u(b, n).rc, TG_PROXY_PROTOCOL_ERROR);
    /* Commands other than LOCAL/PROXY. */
    for (unsigned cmd = 2; cmd < 16; cmd++) {
        b[12] = (unsigned char)(0x20 | cmd);
        CHECK_EQ_INT(parse_u(b, n).rc, TG_PROXY_PROTOCOL_ERROR);
    }
    /* Families: UDP, UNIX, UNSPEC with PROXY, unknown nibbles. */
    static const unsigned char fams[] = {0x12, 0x22, 0x31, 0x32, 0x00, 0x10,
                                         0x01, 0x20, 0x41, 0x13, 0xff};
    for (size_t i = 0; i < sizeof(fams); i++) {
        n = v2_head(b, 0x21, fams[i], 36);
        r = parse_u(b, n);
        CHECK_EQ_INT(r.rc, TG_PROXY_PROTOCOL_ERROR);
        /* With LOCAL only UNSPEC is added to the TCP families. */
        b[12] = 0x20;
        r = parse_u(b, n);
        CHECK_EQ_INT(r.rc, fams[i] == 0x00 ? 52 : TG_PROXY_PROTOCOL_ERROR);
    }
    /* Lengths too short for the addresses. */
    n = v2_head(b, 0x21, 0x11, 11);
    CHECK_EQ_INT(parse_u(b, n).rc, TG_PROXY_PROTOCOL_ERROR);
    n = v2_head(b, 0x21, 0x21, 35);
    CHECK_EQ_INT(parse_u(b, n).rc, TG_PROXY_PROTOCOL_ERROR);
    n = v2_head(b, 0x21, 0x21, 12);
    CHECK_EQ_INT(parse_u(b, n).rc, TG_PROXY_PROTOCOL_ERROR);
    n = v2_head(b, 0x20, 0x11, 0);
    CHECK_EQ_INT(parse_u(b, n).rc, TG_PROXY_PROTOCOL_ERROR);
    /* A broken signature anywhere in its 12 bytes. */
    for (size_t i = 0; i < 12; i++) {
        n = make_tcp4(b, "192.0.2.1", "192.0.2.2", 1, 2, 0);
        b[i] ^= 0x40;
        r = parse_u(b, n);
        CHECK_EQ_INT(r.rc, TG_PROXY_PROTOCOL_ERROR);
        /* Refused as soon as the broken byte is there. */
        CHECK_EQ_INT(parse((const char *)b, i + 1).rc, TG_PROXY_PROTOCOL_ERROR);
    }
}

/* The header's length is what is returned whatever follows, and what
 * follows is never looked at (a v1 "\r\n" inside the client's bytes, a v2
 * header followed by another one, TLS, HTTP). */
TEST(trailing_bytes_untouched)
{
    const char *h = "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n";
    size_t hl = strlen(h);
    static const char *const tails[] = {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\x16\x03\x01\x02\x00",
                                        "PROXY TCP4 10.0.0.1 10.0.0.2 3 4\r\n", "\r\n", "\0\0\0"};
    char buf[256];
    for (size_t i = 0; i < TG_ARRAY_LEN(tails); i++) {
        size_t tl = strlen(tails[i]) + (i == 4 ? 3 : 0);
        memcpy(buf, h, hl);
        memcpy(buf + hl, tails[i], tl);
        char before[256];
        memcpy(before, buf, hl + tl);
        struct pp_result r = parse_split(buf, hl + tl);
        CHECK_EQ_INT(r.rc, hl);
        CHECK_EQ_STR(addr_text(&r.pp.src), "192.0.2.1");
        CHECK(memcmp(before, buf, hl + tl) == 0);
    }

    unsigned char b[128];
    size_t n = make_tcp6(b, "2001:db8::1", "2001:db8::2", 5, 6, 0);
    memcpy(b + n, "\x16\x03\x01", 3);
    memcpy(b + n + 3, b, n); /* a second header as payload */
    struct pp_result r = parse_u(b, 2 * n + 3);
    CHECK_EQ_INT(r.rc, n);
    CHECK_EQ_STR(addr_text(&r.pp.src), "2001:db8::1");
    CHECK_EQ_INT(r.pp.src_port, 5);
}

TEST(reason_optional)
{
    struct tg_proxy_protocol pp;
    CHECK_EQ_INT(tg_proxy_protocol_parse("GET", 3, &pp, NULL), TG_PROXY_PROTOCOL_ERROR);
}

int main(void)
{
    RUN(v1_tcp4);
    RUN(v1_tcp6);
    RUN(v1_unknown);
    RUN(v1_malformed);
    RUN(v1_too_long_without_crlf);
    RUN(early_rejection);
    RUN(v2_tcp4);
    RUN(v2_tcp6);
    RUN(v2_local);
    RUN(v2_tlvs);
    RUN(v2_malformed);
    RUN(trailing_bytes_untouched);
    RUN(reason_optional);
    return TEST_SUMMARY();
}
