/* PROXY protocol v1/v2 header parser (haproxy.org proxy-protocol.txt).
 * Strict: one spelling per header, nothing guessed, and every byte checked
 * as soon as it arrives so that a client that does not speak the protocol is
 * refused at once. It does not read sockets, keep state between calls, or
 * interpret TLVs (their framing is checked, their contents skipped). */
#include "proxy_protocol.h"

#include <netinet/in.h>
#include <string.h>

static const char v1_sig[] = "PROXY ";
#define V1_SIG_LEN 6
static const char v2_sig[12] = "\r\n\r\n\0\r\nQUIT\n";
#define V2_SIG_LEN 12
#define V2_HEAD_LEN 16
#define V1_MAX 107 /* the longest v1 line, CRLF included */

static ssize_t fail(const char **reason, const char *why)
{
    if (reason != NULL)
        *reason = why;
    return TG_PROXY_PROTOCOL_ERROR;
}

/* ---- v1 ------------------------------------------------------------------ */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Characters that can occur in the fields of a TCP4/TCP6 line. */
static bool is_v1_field_char(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == '.' ||
           c == ':' || c == ' ';
}

/* Decimal 0-65535, no sign, no leading zero except "0" itself. */
static int parse_port(const char *s, size_t n, uint16_t *out)
{
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

/* An address field of a TCP4 (v6 false) or TCP6 line: the bare literal of
 * that family, no brackets. A TCP6 line may carry ::ffff:a.b.c.d, which
 * tg_addr_parse folds to IPv4 like everywhere else. */
static int parse_v1_addr(const char *s, size_t n, bool v6, struct tg_addr *out)
{
    bool has_colon = memchr(s, ':', n) != NULL;
    if (n == 0 || has_colon != v6 || s[0] == '[')
        return -1;
    return tg_addr_parse(s, n, out);
}

/* The fields of a complete TCP4/TCP6 line: line[0..n) is what follows
 * "PROXY TCPx " up to (not including) the CRLF. */
static ssize_t parse_v1_fields(const char *line, size_t n, bool v6, struct tg_proxy_protocol *out,
                               const char **reason)
{
    const char *field[4];
    size_t flen[4];
    size_t nf = 0, start = 0;

    for (size_t i = 0; i <= n; i++) {
        if (i < n && line[i] != ' ')
            continue;
        if (nf == 4)
            return fail(reason, "v1: too many fields");
        if (i == start)
            return fail(reason, "v1: fields must be separated by one space");
        field[nf] = line + start;
        flen[nf] = i - start;
        nf++;
        start = i + 1;
    }
    if (nf != 4)
        return fail(reason, "v1: expected source, destination and two ports");

    struct tg_proxy_protocol r;
    memset(&r, 0, sizeof(r));
    r.version = 1;
    if (parse_v1_addr(field[0], flen[0], v6, &r.src) < 0)
        return fail(reason, v6 ? "v1: bad TCP6 source address" : "v1: bad TCP4 source address");
    if (parse_v1_addr(field[1], flen[1], v6, &r.dst) < 0)
        return fail(reason,
                    v6 ? "v1: bad TCP6 destination address" : "v1: bad TCP4 destination address");
    if (parse_port(field[2], flen[2], &r.src_port) < 0)
        return fail(reason, "v1: bad source port");
    if (parse_port(field[3], flen[3], &r.dst_port) < 0)
        return fail(reason, "v1: bad destination port");
    *out = r;
    return 0;
}

/* buf starts with as much of "PROXY " as len allows (checked by the
 * caller). Every byte that has arrived is checked against what a valid line
 * could hold there, so that junk is refused before the CRLF or the 107-byte
 * limit is reached; the fields themselves are parsed once the line ends. */
static ssize_t parse_v1(const char *buf, size_t len, struct tg_proxy_protocol *out,
                        const char **reason)
{
    static const char *const protos[] = {"TCP4 ", "TCP6 ", "UNKNOWN"};
    size_t avail = len < V1_MAX ? len : V1_MAX;
    size_t i = V1_SIG_LEN, pi;

    if (len <= V1_SIG_LEN)
        return TG_PROXY_PROTOCOL_INCOMPLETE;

    /* The protocol word. */
    for (pi = 0; pi < TG_ARRAY_LEN(protos); pi++) {
        size_t plen = strlen(protos[pi]);
        size_t have = avail - i < plen ? avail - i : plen;
        if (memcmp(buf + i, protos[pi], have) == 0)
            break;
    }
    if (pi == TG_ARRAY_LEN(protos))
        return fail(reason, "v1: protocol is not TCP4, TCP6 or UNKNOWN");
    size_t plen = strlen(protos[pi]);
    if (avail - i < plen)
        return TG_PROXY_PROTOCOL_INCOMPLETE;
    i += plen;

    bool unknown = pi == 2;
    if (unknown && i < avail && buf[i] != ' ' && buf[i] != '\r')
        return fail(reason, "v1: protocol is not TCP4, TCP6 or UNKNOWN");

    /* Up to the CR, then LF. An UNKNOWN line may carry anything after the
     * keyword (the spec says to ignore it), but never a bare CR or LF. */
    size_t field_start = i;
    for (; i < avail; i++) {
        char c = buf[i];
        if (c == '\r')
            break;
        if (c == '\n')
            return fail(reason, "v1: line ends in LF without CR");
        if (!unknown && !is_v1_field_char(c))
            return fail(reason, "v1: invalid character in address fields");
    }
    if (i == avail)
        return len >= V1_MAX ? fail(reason, "v1: line longer than 107 bytes")
                             : TG_PROXY_PROTOCOL_INCOMPLETE;
    if (i + 1 == avail)
        return len >= V1_MAX ? fail(reason, "v1: line longer than 107 bytes")
                             : TG_PROXY_PROTOCOL_INCOMPLETE;
    if (buf[i + 1] != '\n')
        return fail(reason, "v1: CR not followed by LF");

    struct tg_proxy_protocol r;
    if (unknown) {
        memset(&r, 0, sizeof(r));
        r.version = 1;
        r.local = true;
    } else if (parse_v1_fields(buf + field_start, i - field_start, pi == 1, &r, reason) < 0) {
        return TG_PROXY_PROTOCOL_ERROR;
    }
    *out = r;
    return (ssize_t)(i + 2);
}

/* ---- v2 ------------------------------------------------------------------ */

#define V2_VERSION 0x20
#define V2_CMD_LOCAL 0x0
#define V2_CMD_PROXY 0x1
#define V2_FAM_UNSPEC 0x00
#define V2_FAM_TCP4 0x11
#define V2_FAM_TCP6 0x21
#define V2_ADDR_LEN_TCP4 12
#define V2_ADDR_LEN_TCP6 36

static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* buf starts with as much of the 12-byte signature as len allows. Byte 12
 * (version, command), byte 13 (family) and bytes 14-15 (length) are each
 * checked as soon as they are there. */
static ssize_t parse_v2(const char *buf, size_t len, struct tg_proxy_protocol *out,
                        const char **reason)
{
    const unsigned char *u = (const unsigned char *)buf;

    if (len <= V2_SIG_LEN)
        return TG_PROXY_PROTOCOL_INCOMPLETE;
    unsigned ver_cmd = u[12];
    if ((ver_cmd & 0xf0) != V2_VERSION)
        return fail(reason, "v2: version is not 2");
    unsigned cmd = ver_cmd & 0x0f;
    if (cmd != V2_CMD_LOCAL && cmd != V2_CMD_PROXY)
        return fail(reason, "v2: command is not LOCAL or PROXY");
    if (len < 14)
        return TG_PROXY_PROTOCOL_INCOMPLETE;

    unsigned fam = u[13];
    size_t min_len;
    if (fam == V2_FAM_TCP4)
        min_len = V2_ADDR_LEN_TCP4;
    else if (fam == V2_FAM_TCP6)
        min_len = V2_ADDR_LEN_TCP6;
    else if (fam == V2_FAM_UNSPEC && cmd == V2_CMD_LOCAL)
        min_len = 0;
    else
        return fail(reason, cmd == V2_CMD_LOCAL ? "v2: family is not UNSPEC or TCP over IPv4/IPv6"
                                                : "v2: family is not TCP over IPv4/IPv6");
    if (len < V2_HEAD_LEN)
        return TG_PROXY_PROTOCOL_INCOMPLETE;

    size_t body = get16(u + 14);
    if (body < min_len)
        return fail(reason, "v2: length too short for the address family");
    if (body > TG_PROXY_PROTOCOL_MAX - V2_HEAD_LEN)
        return fail(reason, "v2: header longer than TG_PROXY_PROTOCOL_MAX");
    size_t total = V2_HEAD_LEN + body;
    if (len < total)
        return TG_PROXY_PROTOCOL_INCOMPLETE;

    /* TLVs after the addresses: type, 16-bit length, value; they must tile
     * the rest of the header exactly (as HAProxy requires). */
    size_t off = V2_HEAD_LEN + min_len;
    while (off < total) {
        if (total - off < 3)
            return fail(reason, "v2: truncated TLV");
        size_t vlen = get16(u + off + 1);
        if (vlen > total - off - 3)
            return fail(reason, "v2: TLV longer than the header");
        off += 3 + vlen;
    }

    struct tg_proxy_protocol r;
    memset(&r, 0, sizeof(r));
    r.version = 2;
    if (cmd == V2_CMD_LOCAL) {
        /* The spec: use the real connection endpoints, ignore the family
         * and addresses (health checks from the proxy itself). */
        r.local = true;
    } else if (fam == V2_FAM_TCP4) {
        struct sockaddr_in s, d;
        memset(&s, 0, sizeof(s));
        memset(&d, 0, sizeof(d));
        s.sin_family = d.sin_family = AF_INET;
        memcpy(&s.sin_addr, u + 16, 4);
        memcpy(&d.sin_addr, u + 20, 4);
        tg_addr_from_sockaddr((const struct sockaddr *)&s, &r.src);
        tg_addr_from_sockaddr((const struct sockaddr *)&d, &r.dst);
        r.src_port = get16(u + 24);
        r.dst_port = get16(u + 26);
    } else {
        struct sockaddr_in6 s, d;
        memset(&s, 0, sizeof(s));
        memset(&d, 0, sizeof(d));
        s.sin6_family = d.sin6_family = AF_INET6;
        memcpy(&s.sin6_addr, u + 16, 16);
        memcpy(&d.sin6_addr, u + 32, 16);
        tg_addr_from_sockaddr((const struct sockaddr *)&s, &r.src);
        tg_addr_from_sockaddr((const struct sockaddr *)&d, &r.dst);
        r.src_port = get16(u + 48);
        r.dst_port = get16(u + 50);
    }
    *out = r;
    return (ssize_t)total;
}

/* ---- entry --------------------------------------------------------------- */

ssize_t tg_proxy_protocol_parse(const char *buf, size_t len, struct tg_proxy_protocol *out,
                                const char **reason)
{
    if (len == 0)
        return TG_PROXY_PROTOCOL_INCOMPLETE;
    if (buf[0] == 'P') {
        size_t n = len < V1_SIG_LEN ? len : V1_SIG_LEN;
        if (memcmp(buf, v1_sig, n) != 0)
            return fail(reason, "not a PROXY protocol header");
        return parse_v1(buf, len, out, reason);
    }
    if (buf[0] == '\r') {
        size_t n = len < V2_SIG_LEN ? len : V2_SIG_LEN;
        if (memcmp(buf, v2_sig, n) != 0)
            return fail(reason, "not a PROXY protocol header");
        return parse_v2(buf, len, out, reason);
    }
    return fail(reason, "not a PROXY protocol header");
}
