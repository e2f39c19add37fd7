/* Unit tests for src/access.c: the client identity matrix (X-Forwarded-For
 * and Forwarded behind trusted proxies), GeoIP over the MaxMind test
 * databases tests/geoip/mmdb_writer.py generates and over small databases
 * written here to break one thing at a time, and access rules (checked
 * against a brute-force scan).
 *
 * The generated databases are read from $TG_GEOIP_DIR: `make unit-run`
 * writes them to $(BUILD)/geoip and sets it. Run alone, this test needs
 *     python3 tests/geoip/mmdb_writer.py DIR && TG_GEOIP_DIR=DIR ./test_access
 * and without them its GeoIP tests fail, they do not skip. */
#include "../../src/access.c"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "test.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static struct tg_addr addr_of(const char *s)
{
    struct tg_addr a;
    memset(&a, 0, sizeof(a));
    if (tg_addr_parse(s, strlen(s), &a) < 0)
        fprintf(stderr, "test bug: bad address %s\n", s);
    return a;
}

static const char *text(const struct tg_addr *a)
{
    static char buf[4][TG_ADDR_STRLEN];
    static int which;
    which = (which + 1) % 4;
    tg_addr_format(a, buf[which], sizeof(buf[which]));
    return buf[which];
}

/* ---- client identity ----------------------------------------------------- */

static struct tg_cidr_set *trusted_set(void)
{
    static const char *const list[] = {"10.0.0.0/8", "2001:db8:ffff::/48", "198.51.100.10"};
    struct tg_cidr_set *set = tg_cidr_set_new();
    for (size_t i = 0; i < TG_ARRAY_LEN(list); i++) {
        struct tg_cidr c;
        tg_cidr_parse(list[i], strlen(list[i]), &c, NULL, 0);
        tg_cidr_set_add(set, &c, 1);
    }
    return set;
}

/* The client alone, as the request path reads it (auto mode): `client`
 * may be `peer`; a conflict between the two headers leaves the peer. */
static void client_addr(const struct tg_cidr_set *set, const struct tg_addr *peer,
                        const struct tg_str *xff, size_t nx, const struct tg_str *fwd, size_t nf,
                        struct tg_addr *client)
{
    struct tg_client_chain chain;
    tg_access_client_chain(set, peer, TG_CLIENT_IP_AUTO, xff, nx, fwd, nf, &chain);
    *client = chain.client;
}

/* The client for `peer` with the given header values (NULL-terminated
 * lists; NULL for none). */
static const char *who_set(const struct tg_cidr_set *set, const char *peer, const char *const *xff,
                           const char *const *fwd)
{
    struct tg_str xs[8], fs[8];
    size_t nx = 0, nf = 0;
    for (; xff != NULL && xff[nx] != NULL; nx++)
        xs[nx] = tg_str_make(xff[nx], strlen(xff[nx]));
    for (; fwd != NULL && fwd[nf] != NULL; nf++)
        fs[nf] = tg_str_make(fwd[nf], strlen(fwd[nf]));
    struct tg_addr p = addr_of(peer), client;
    memset(&client, 0x5a, sizeof(client));
    client_addr(set, &p, xs, nx, fs, nf, &client);
    return text(&client);
}

static struct tg_cidr_set *g_trusted;

static const char *xff1(const char *peer, const char *value)
{
    const char *const v[] = {value, NULL};
    return who_set(g_trusted, peer, v, NULL);
}

static const char *fwd1(const char *peer, const char *value)
{
    const char *const v[] = {value, NULL};
    return who_set(g_trusted, peer, NULL, v);
}

TEST(client_untrusted_peer_ignores_headers)
{
    const char *const x[] = {"1.2.3.4", NULL};
    const char *const f[] = {"for=1.2.3.4", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "203.0.113.5", x, NULL), "203.0.113.5");
    CHECK_EQ_STR(who_set(g_trusted, "203.0.113.5", NULL, f), "203.0.113.5");
    CHECK_EQ_STR(who_set(g_trusted, "2001:db8::5", x, f), "2001:db8::5");
    /* No trusted list at all: the peer, always. */
    CHECK_EQ_STR(who_set(NULL, "10.0.0.1", x, f), "10.0.0.1");
    /* A peer next to a trusted one is not trusted. */
    CHECK_EQ_STR(xff1("198.51.100.11", "1.2.3.4"), "198.51.100.11");
    CHECK_EQ_STR(xff1("2001:db8:fffe::1", "1.2.3.4"), "2001:db8:fffe::1");
    /* No headers from a trusted peer: the peer. */
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", NULL, NULL), "10.0.0.1");
}

TEST(client_xff_rightmost_untrusted)
{
    CHECK_EQ_STR(xff1("10.0.0.1", "1.2.3.4"), "1.2.3.4");
    CHECK_EQ_STR(xff1("10.0.0.1", "1.1.1.1, 2.2.2.2"), "2.2.2.2");
    /* A chain of trusted proxies is skipped. */
    CHECK_EQ_STR(xff1("10.0.0.1", "1.1.1.1, 2.2.2.2, 10.0.0.2, 10.0.0.3"), "2.2.2.2");
    CHECK_EQ_STR(xff1("198.51.100.10", "2.2.2.2, 198.51.100.10, 10.9.9.9"), "2.2.2.2");
    CHECK_EQ_STR(xff1("2001:db8:ffff::1", "2.2.2.2, 2001:db8:ffff::9"), "2.2.2.2");
    /* Whatever the client wrote on the left is never believed, even a
     * trusted address: it arrived from an untrusted hop. */
    CHECK_EQ_STR(xff1("10.0.0.1", "10.0.0.9, 6.6.6.6"), "6.6.6.6");
    CHECK_EQ_STR(xff1("10.0.0.1", "1.1.1.1, 10.0.0.5, 7.7.7.7"), "7.7.7.7");
    CHECK_EQ_STR(xff1("10.0.0.1", "garbage, 1.1.1.1"), "1.1.1.1");
    CHECK_EQ_STR(xff1("10.0.0.1", "unknown, 1.1.1.1, 10.0.0.3"), "1.1.1.1");
    /* Every hop trusted: the left-most (an internal client). */
    CHECK_EQ_STR(xff1("10.0.0.1", "10.0.0.7, 10.0.0.8"), "10.0.0.7");
    /* Whitespace around elements and empty elements. */
    CHECK_EQ_STR(xff1("10.0.0.1", "  1.1.1.1 ,\t2.2.2.2  "), "2.2.2.2");
    CHECK_EQ_STR(xff1("10.0.0.1", "1.1.1.1, , 10.0.0.2,"), "1.1.1.1");
    CHECK_EQ_STR(xff1("10.0.0.1", ""), "10.0.0.1");
    CHECK_EQ_STR(xff1("10.0.0.1", " , ,"), "10.0.0.1");
}

TEST(client_xff_several_headers)
{
    const char *const a[] = {"1.1.1.1, 2.2.2.2", "10.0.0.4", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", a, NULL), "2.2.2.2");
    const char *const b[] = {"3.3.3.3", "4.4.4.4", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", b, NULL), "4.4.4.4");
    const char *const c[] = {"3.3.3.3", "", "10.0.0.5", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", c, NULL), "3.3.3.3");
    const char *const d[] = {"3.3.3.3, junk", "10.0.0.5", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", d, NULL), "10.0.0.5");
    /* Both headers: they must agree (a balancer that writes one passes the
     * other on from the client untouched); an empty one says nothing. */
    const char *const x[] = {"1.1.1.1", NULL};
    const char *const f[] = {"for=2.2.2.2", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", x, f), "10.0.0.1"); /* refused */
    const char *const same[] = {"for=1.1.1.1", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", x, same), "1.1.1.1");
    const char *const empty[] = {"", " , ", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", empty, f), "2.2.2.2");
}

/* The chain and the rules for the two headers (issue 16): every line is
 * read, the hops right of the client are kept for the backend, conflicts
 * are reported, and client_ip_header picks one header. */
static int chain_of(enum tg_client_ip_header mode, const char *peer, const char *const *xff,
                    const char *const *fwd, struct tg_client_chain *out)
{
    struct tg_str xs[64], fs[64];
    size_t nx = 0, nf = 0;
    for (; xff != NULL && xff[nx] != NULL; nx++)
        xs[nx] = tg_str_make(xff[nx], strlen(xff[nx]));
    for (; fwd != NULL && fwd[nf] != NULL; nf++)
        fs[nf] = tg_str_make(fwd[nf], strlen(fwd[nf]));
    struct tg_addr p = addr_of(peer);
    return tg_access_client_chain(g_trusted, &p, mode, xs, nx, fs, nf, out);
}

TEST(client_chain_hops_and_modes)
{
    struct tg_client_chain c;
    const char *const x[] = {"6.6.6.6, 203.0.113.9, 10.1.2.3", NULL};
    CHECK_EQ_INT(chain_of(TG_CLIENT_IP_AUTO, "10.0.0.1", x, NULL, &c), 0);
    CHECK_EQ_STR(text(&c.client), "203.0.113.9");
    CHECK_EQ_INT(c.nhops, 1);
    CHECK_EQ_STR(text(&c.hops[0]), "10.1.2.3");
    CHECK(c.source == TG_CHAIN_XFF && !c.hops_elided);

    /* Regression: only the first 16 lines were read, so 16 forged lines
     * put the balancer's own line out of sight. 40 lines now. */
    const char *many[42];
    char lines[40][24];
    for (int i = 0; i < 40; i++) {
        snprintf(lines[i], sizeof(lines[i]), "10.0.0.%d", i + 2);
        many[i] = lines[i];
    }
    many[40] = "203.0.113.77";
    many[41] = NULL;
    CHECK_EQ_INT(chain_of(TG_CLIENT_IP_AUTO, "10.0.0.1", many, NULL, &c), 0);
    CHECK_EQ_STR(text(&c.client), "203.0.113.77");
    CHECK_EQ_INT(c.nhops, 0);
    /* All trusted: the left-most is the client, the rest are hops, the
     * nearest TG_ACCESS_HOPS_MAX kept. */
    many[40] = NULL;
    CHECK_EQ_INT(chain_of(TG_CLIENT_IP_AUTO, "10.0.0.1", many, NULL, &c), 0);
    CHECK_EQ_STR(text(&c.client), "10.0.0.2");
    CHECK_EQ_INT(c.nhops, TG_ACCESS_HOPS_MAX);
    CHECK(c.hops_elided);
    CHECK_EQ_STR(text(&c.hops[TG_ACCESS_HOPS_MAX - 1]), "10.0.0.41");

    /* Forwarded alone; both agreeing; both disagreeing. */
    const char *const f[] = {"for=198.18.0.1;proto=https, for=10.0.0.9", NULL};
    CHECK_EQ_INT(chain_of(TG_CLIENT_IP_AUTO, "10.0.0.1", NULL, f, &c), 0);
    CHECK_EQ_STR(text(&c.client), "198.18.0.1");
    CHECK(c.source == TG_CHAIN_FORWARDED && c.nhops == 1);
    const char *const xa[] = {"198.18.0.1, 10.0.0.9", NULL};
    CHECK_EQ_INT(chain_of(TG_CLIENT_IP_AUTO, "10.0.0.1", xa, f, &c), 0);
    CHECK_EQ_STR(text(&c.client), "198.18.0.1");
    const char *const forged[] = {"10.0.0.50", NULL};
    CHECK_EQ_INT(chain_of(TG_CLIENT_IP_AUTO, "10.0.0.1", forged, f, &c), -1);
    CHECK_EQ_STR(text(&c.client), "10.0.0.1");
    /* A balancer that writes only Forwarded: the client's own
     * X-Forwarded-For is not read at all. */
    CHECK_EQ_INT(chain_of(TG_CLIENT_IP_FORWARDED, "10.0.0.1", forged, f, &c), 0);
    CHECK_EQ_STR(text(&c.client), "198.18.0.1");
    CHECK_EQ_INT(chain_of(TG_CLIENT_IP_XFF, "10.0.0.1", xa, f, &c), 0);
    CHECK(c.source == TG_CHAIN_XFF);
    CHECK_EQ_INT(chain_of(TG_CLIENT_IP_XFF, "10.0.0.1", NULL, f, &c), 0);
    CHECK_EQ_STR(text(&c.client), "10.0.0.1");
    /* An untrusted peer: nothing is read, whatever the mode. */
    CHECK_EQ_INT(chain_of(TG_CLIENT_IP_AUTO, "203.0.113.5", forged, f, &c), 0);
    CHECK_EQ_STR(text(&c.client), "203.0.113.5");
    CHECK(c.source == TG_CHAIN_PEER);
}

TEST(client_xff_address_forms)
{
    CHECK_EQ_STR(xff1("10.0.0.1", "2001:db8::1"), "2001:db8::1");
    CHECK_EQ_STR(xff1("10.0.0.1", "[2001:db8::1]"), "2001:db8::1");
    CHECK_EQ_STR(xff1("10.0.0.1", "[2001:db8::1]:443"), "2001:db8::1");
    CHECK_EQ_STR(xff1("10.0.0.1", "2001:DB8:0:0::1"), "2001:db8::1");
    CHECK_EQ_STR(xff1("10.0.0.1", "192.0.2.60:8080"), "192.0.2.60");
    /* A bare IPv6 address cannot carry a port: this is one address. */
    CHECK_EQ_STR(xff1("10.0.0.1", "2001:db8::1:80"), "2001:db8::1:80");
    /* Mapped addresses fold to IPv4, so trusted prefixes apply. */
    CHECK_EQ_STR(xff1("10.0.0.1", "::ffff:192.0.2.1"), "192.0.2.1");
    CHECK_EQ_STR(xff1("10.0.0.1", "1.1.1.1, ::ffff:10.0.0.2"), "1.1.1.1");
    /* IPv6 proxies and IPv6 clients behind IPv4 ones. */
    CHECK_EQ_STR(xff1("2001:db8:ffff::1", "2001:db8::77"), "2001:db8::77");
}

TEST(client_xff_malformed_stops_at_last_trusted_hop)
{
    static const char *const bad[] = {
        "garbage",      "unknown",       "UNKNOWN",        "_hidden",         "300.1.1.1",
        "010.0.0.1",    "1.2.3",         "1.2.3.4.5",      "fe80::1%eth0",    "[1.2.3.4]",
        "[2001:db8::1", "2001:db8::1]",  "[2001:db8::1]:", "[2001:db8::1]x",  "[2001:db8::1]:99999",
        "1.2.3.4:",     "1.2.3.4:65536", "1.2.3.4:8o",     "1.2.3.4 5.6.7.8", "\"1.2.3.4\"",
        "1.2.3.4;",     "2001:db8:::1",  "example.com",    "0x7f000001",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        char v[128];
        snprintf(v, sizeof(v), "6.6.6.6, %s", bad[i]);
        /* The peer: the malformed hop is the right-most one. */
        const char *got = xff1("10.0.0.1", v);
        if (strcmp(got, "10.0.0.1") != 0)
            fprintf(stderr, "XFF \"%s\" gave %s\n", v, got);
        CHECK_EQ_STR(got, "10.0.0.1");
        /* The trusted hop to its right. */
        snprintf(v, sizeof(v), "6.6.6.6, %s, 10.0.0.2, 10.0.0.3", bad[i]);
        CHECK_EQ_STR(xff1("10.0.0.1", v), "10.0.0.2");
    }
}

TEST(client_forwarded)
{
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=192.0.2.43"), "192.0.2.43");
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=\"[2001:db8:cafe::17]:4711\""), "2001:db8:cafe::17");
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=\"[2001:db8:cafe::17]\""), "2001:db8:cafe::17");
    CHECK_EQ_STR(fwd1("10.0.0.1", "For=\"[2001:db8::1]\""), "2001:db8::1");
    CHECK_EQ_STR(fwd1("10.0.0.1", "FOR=192.0.2.1"), "192.0.2.1");
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=192.0.2.60;proto=http;by=203.0.113.43"), "192.0.2.60");
    CHECK_EQ_STR(fwd1("10.0.0.1", "proto=https;for=1.2.3.4;host=a.example"), "1.2.3.4");
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=192.0.2.43, for=198.51.100.17"), "198.51.100.17");
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=192.0.2.43, for=10.0.0.5"), "192.0.2.43");
    /* Ports: quoted as RFC 7239 wants, and unquoted as senders write. */
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=\"192.0.2.60:8080\""), "192.0.2.60");
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=192.0.2.60:8080"), "192.0.2.60");
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=\"192.0.2.60:_port\""), "192.0.2.60");
    /* Quoted-pairs are unescaped. */
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=\"\\[2001:db8::9\\]\""), "2001:db8::9");
    /* Commas and semicolons inside quotes do not split. */
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=5.5.5.5;ext=\"a,b;c\", for=10.0.0.9"), "5.5.5.5");
    /* Whitespace around separators, empty elements and pairs. */
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=1.1.1.1 ; proto=http ,\tfor=2.2.2.2 "), "2.2.2.2");
    CHECK_EQ_STR(fwd1("10.0.0.1", ", ,for=1.1.1.1;;,"), "1.1.1.1");
    /* Trusted chain, IPv6 proxies. */
    CHECK_EQ_STR(fwd1("2001:db8:ffff::1", "for=3.3.3.3, "
                                          "for=\"[2001:db8:ffff::2]:1\""),
                 "3.3.3.3");
    /* Several header lines. */
    const char *const f[] = {"for=1.1.1.1", "for=2.2.2.2, for=10.0.0.3", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", NULL, f), "2.2.2.2");
}

TEST(client_forwarded_malformed)
{
    /* Each stops the walk at its element: the peer is the last trusted
     * hop. */
    static const char *const bad[] = {
        "for=unknown",
        "for=_hidden",
        "for=\"_gazonk\"",
        "for=\"unknown:1\"",
        "proto=https",             /* no for= */
        "for=1.1.1.1;for=2.2.2.2", /* for= twice */
        "for=2001:db8::1",         /* IPv6 without brackets... */
        "for=\"2001:db8::1\"",     /* ...even quoted */
        "for=\"[2001:db8::1]:99999\"",
        "for=\"[192.0.2.1]\"",
        "for=\"1.1.1.1,2.2.2.2\"",
        "for=\"1.1.1.1", /* unterminated */
        "for=1.1.1.1\"",
        "for = 1.1.1.1",
        "for=",
        "=1.1.1.1",
        "for",
        "for=1.1.1.1 2.2.2.2",
        "for=1.1.1.1;", /* fine, then ... */
        "for=010.0.0.1",
        "for=\"\\\"1.1.1.1\"",
        "for=\"1.1.1.1\x01\"",
        "for=1.1.1.1/8",
        "for=\"[2001:db8::1]:4711:1\"",
        "for=\"[fe80::1%25eth0]\"",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        if (strcmp(bad[i], "for=1.1.1.1;") == 0) {
            CHECK_EQ_STR(fwd1("10.0.0.1", bad[i]), "1.1.1.1");
            continue;
        }
        char v[160];
        snprintf(v, sizeof(v), "for=6.6.6.6, %s", bad[i]);
        const char *got = fwd1("10.0.0.1", v);
        if (strcmp(got, "10.0.0.1") != 0)
            fprintf(stderr, "Forwarded \"%s\" gave %s\n", v, got);
        CHECK_EQ_STR(got, "10.0.0.1");
    }
    /* Left of an untrusted hop, nothing matters. */
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=\"oops, for=3.3.3.3"), "10.0.0.1");
    CHECK_EQ_STR(fwd1("10.0.0.1", "for=junk, for=3.3.3.3"), "3.3.3.3");
    /* A syntax error spoils the rest of its header line only; the next
     * line's trusted hop is where the walk stops. */
    const char *const f[] = {"for=6.6.6.6, for=\"x", "for=10.0.0.7", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", NULL, f), "10.0.0.7");
    const char *const g[] = {"for=6.6.6.6, for=\"x", "for=5.5.5.5", NULL};
    CHECK_EQ_STR(who_set(g_trusted, "10.0.0.1", NULL, g), "5.5.5.5");
}

TEST(client_out_may_alias_peer)
{
    struct tg_addr p = addr_of("10.0.0.1");
    struct tg_str x = TG_STR("10.0.0.2, 9.9.9.9, 10.0.0.3");
    client_addr(g_trusted, &p, &x, 1, NULL, 0, &p);
    CHECK_EQ_STR(text(&p), "9.9.9.9");
    /* Family 0 (a unix socket peer) is never trusted. */
    struct tg_addr u;
    memset(&u, 0, sizeof(u));
    struct tg_addr out;
    client_addr(g_trusted, &u, &x, 1, NULL, 0, &out);
    CHECK_EQ_INT(out.family, 0);
}

/* Long hostile lists stay linear and never pick a spoofed entry. */
TEST(client_long_lists)
{
    size_t n = 64 * 1024;
    char *buf = malloc(n + 64);
    size_t o = 0;
    while (o + 16 < n)
        o += (size_t)sprintf(buf + o, "10.0.0.%u, ", (unsigned)(o % 200));
    o += (size_t)sprintf(buf + o, "8.8.4.4, 10.1.1.1");
    CHECK_EQ_STR(xff1("10.0.0.1", buf), "8.8.4.4");
    memset(buf, ',', n);
    buf[n] = '\0';
    CHECK_EQ_STR(xff1("10.0.0.1", buf), "10.0.0.1");
    CHECK_EQ_STR(fwd1("10.0.0.1", buf), "10.0.0.1");
    memset(buf, '"', n);
    CHECK_EQ_STR(fwd1("10.0.0.1", buf), "10.0.0.1");
    free(buf);
}

/* Random lists against the contract's walk done the obvious way: collect
 * the elements, then go right to left. Elements come from a pool of trusted
 * and untrusted addresses, forms with ports and brackets, non-addresses and
 * empties; Forwarded wraps each in for= with other pairs around it. */
static const char *const pool[] = {
    "10.0.0.2", "10.9.9.9",      "198.51.100.10",     "[2001:db8:ffff::1]", "1.1.1.1",
    "8.8.8.8",  "192.0.2.60:80", "[2001:db8::5]:443", "203.0.113.7",        "unknown",
    "_hidden",  "junk",          "300.0.0.1",         "::ffff:10.0.0.3",    "",
};

struct ref_elem {
    bool is_addr;
    struct tg_addr a;
};

static const char *reference(const char *peer, const struct ref_elem *e, size_t n)
{
    struct tg_addr cur = addr_of(peer);
    for (size_t i = n; i-- > 0;) {
        if (!e[i].is_addr)
            break;
        if (tg_cidr_set_lookup(g_trusted, &e[i].a) == 0)
            return text(&e[i].a);
        cur = e[i].a;
    }
    return text(&cur);
}

static void ref_add(struct ref_elem *e, size_t *n, const char *tok, bool xff)
{
    struct tg_addr a;
    e[*n].is_addr = parse_node(tok, strlen(tok), xff, &a) == 0;
    e[*n].a = a;
    (*n)++;
}

TEST(client_random_lists_match_reference)
{
    int bad = 0;
    for (int iter = 0; iter < 20000; iter++) {
        bool fwd = iter % 2;
        size_t nheaders = 1 + rnd() % 3;
        static char vals[3][512];
        const char *hv[4] = {NULL, NULL, NULL, NULL};
        struct ref_elem elems[64];
        size_t ne = 0;
        for (size_t h = 0; h < nheaders; h++) {
            size_t o = 0, count = rnd() % 6;
            vals[h][0] = '\0';
            for (size_t k = 0; k < count; k++) {
                const char *tok = pool[rnd() % TG_ARRAY_LEN(pool)];
                const char *sep = k == 0 ? "" : rnd() % 2 ? ", " : ",";
                if (!fwd) {
                    o += (size_t)snprintf(vals[h] + o, sizeof(vals[h]) - o, "%s%s", sep, tok);
                    if (*tok != '\0')
                        ref_add(elems, &ne, tok, true);
                    continue;
                }
                if (*tok == '\0') { /* an element without for= */
                    o += (size_t)snprintf(vals[h] + o, sizeof(vals[h]) - o, "%sproto=https", sep);
                    ref_add(elems, &ne, "", false);
                    continue;
                }
                bool quote = strchr(tok, ':') != NULL || rnd() % 2;
                o += (size_t)snprintf(vals[h] + o, sizeof(vals[h]) - o, "%s%s%sfor=%s%s%s%s", sep,
                                      rnd() % 2 ? "by=x;" : "", rnd() % 2 ? " " : "",
                                      quote ? "\"" : "", tok, quote ? "\"" : "",
                                      rnd() % 2 ? ";proto=http" : "");
                ref_add(elems, &ne, tok, false);
            }
            hv[h] = vals[h];
        }
        const char *peer = rnd() % 4 ? "10.0.0.1" : "203.0.113.99";
        const char *got =
            fwd ? who_set(g_trusted, peer, NULL, hv) : who_set(g_trusted, peer, hv, NULL);
        const char *want = strcmp(peer, "10.0.0.1") == 0 ? reference(peer, elems, ne) : peer;
        if (strcmp(got, want) != 0 && bad++ < 5) {
            fprintf(stderr, "%s from %s:", fwd ? "Forwarded" : "XFF", peer);
            for (size_t h = 0; h < nheaders; h++)
                fprintf(stderr, " [%s]", hv[h]);
            fprintf(stderr, ": got %s, want %s\n", got, want);
        }
    }
    CHECK_EQ_INT(bad, 0);
}

/* ---- GeoIP: the generated test databases -------------------------------- */

/* What tests/geoip/mmdb_writer.py writes into $TG_GEOIP_DIR. */
static const char *const geoip_files[] = {
    "GeoLite2-Country-Test.mmdb",
    "GeoIP2-Country-Test.mmdb",
    "GeoLite2-City-Test.mmdb",
    "GeoLite2-ASN-Test.mmdb",
    "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
    "GeoIP2-City-Test-Broken-Double-Format.mmdb",
    "LICENSE-MIT",
};

static char geoip_dir[1024];
static bool geoip_dir_set;

/* The first of geoip_files not readable in dir, or NULL. */
static const char *missing_db(const char *dir)
{
    for (size_t i = 0; i < TG_ARRAY_LEN(geoip_files); i++) {
        char p[1200];
        snprintf(p, sizeof(p), "%s/%s", dir, geoip_files[i]);
        if (access(p, R_OK) != 0)
            return geoip_files[i];
    }
    return NULL;
}

/* $TG_GEOIP_DIR, and no fallback: without it, a relative path that does
 * not exist, so that every GeoIP test fails. */
static void find_geoip_dir(void)
{
    const char *env = getenv("TG_GEOIP_DIR");
    geoip_dir_set = env != NULL && *env != '\0';
    snprintf(geoip_dir, sizeof(geoip_dir), "%s", geoip_dir_set ? env : "TG_GEOIP_DIR-is-not-set");
}

static struct tg_geoip *open_shared(const char *name, char *err, size_t elen)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", geoip_dir, name);
    return tg_geoip_open(path, err, elen);
}

static const char *country_of(const struct tg_geoip *g, const char *ip)
{
    static char out[4][3];
    static int which;
    which = (which + 1) % 4;
    struct tg_addr a = addr_of(ip);
    bool found = tg_geoip_country(g, &a, out[which]);
    if (found != (strcmp(out[which], TG_GEOIP_UNKNOWN) != 0))
        return "(found flag disagrees)";
    return out[which];
}

TEST(geoip_shared_dbs_present)
{
    const char *missing = missing_db(geoip_dir);
    if (!geoip_dir_set)
        fprintf(stderr, "TG_GEOIP_DIR is not set: the GeoIP tests need the databases "
                        "tests/geoip/mmdb_writer.py writes (`make unit-run` does it; "
                        "or python3 tests/geoip/mmdb_writer.py DIR, then "
                        "TG_GEOIP_DIR=DIR)\n");
    else if (missing != NULL)
        fprintf(stderr,
                "GeoIP test database %s/%s not found: write them with "
                "python3 tests/geoip/mmdb_writer.py %s\n",
                geoip_dir, missing, geoip_dir);
    CHECK(geoip_dir_set);
    CHECK(missing == NULL);
}

TEST(geoip_country)
{
    static const char *const dbs[] = {"GeoLite2-Country-Test.mmdb", "GeoIP2-Country-Test.mmdb",
                                      "GeoLite2-City-Test.mmdb"};
    static const struct {
        const char *ip, *cc;
    } table[] = {
        {"81.2.69.142", "GB"},  {"216.160.83.56", "US"},      {"89.160.20.112", "SE"},
        {"67.43.156.1", "BT"},  {"2001:218::1", "JP"},        {"127.0.0.1", "XX"},
        {"10.0.0.1", "XX"},     {"::ffff:81.2.69.142", "GB"}, {"::1", "XX"},
        {"2a02:d500::1", "XX"}, /* continent only */
    };
    for (size_t d = 0; d < TG_ARRAY_LEN(dbs); d++) {
        char err[512] = "";
        struct tg_geoip *g = open_shared(dbs[d], err, sizeof(err));
        if (g == NULL)
            fprintf(stderr, "%s\n", err);
        CHECK(g != NULL);
        if (g == NULL)
            continue;
        for (size_t i = 0; i < TG_ARRAY_LEN(table); i++) {
            const char *got = country_of(g, table[i].ip);
            if (strcmp(got, table[i].cc) != 0)
                fprintf(stderr, "%s %s: %s\n", dbs[d], table[i].ip, got);
            CHECK_EQ_STR(got, table[i].cc);
        }
        CHECK_EQ_INT(tg_geoip_asn(g, &(struct tg_addr){0}), 0);
        struct tg_addr a = addr_of("81.2.69.142");
        CHECK_EQ_INT(tg_geoip_asn(g, &a), 0);
        tg_geoip_close(g);
    }
}

TEST(geoip_asn)
{
    char err[512] = "";
    struct tg_geoip *g = open_shared("GeoLite2-ASN-Test.mmdb", err, sizeof(err));
    if (g == NULL)
        fprintf(stderr, "%s\n", err);
    CHECK(g != NULL);
    if (g == NULL)
        return;
    /* Found by walking the database (mmdblookup agrees). */
    static const struct {
        const char *ip;
        uint32_t asn;
    } table[] = {
        {"1.128.0.1", 1221},        {"216.160.83.56", 209}, {"89.160.20.112", 29518},
        {"67.43.156.1", 35908},     {"12.81.92.1", 7018},   {"2600:6000::1", 237},
        {"::ffff:1.128.0.1", 1221}, {"81.2.69.142", 0},     {"127.0.0.1", 0},
        {"2001:218::1", 0},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(table); i++) {
        struct tg_addr a = addr_of(table[i].ip);
        CHECK_EQ_INT(tg_geoip_asn(g, &a), table[i].asn);
    }
    /* No country in an ASN database. */
    CHECK_EQ_STR(country_of(g, "1.128.0.1"), "XX");
    tg_geoip_close(g);

    /* Nothing open: unknown. */
    struct tg_addr a = addr_of("1.128.0.1");
    char cc[3];
    CHECK(!tg_geoip_country(NULL, &a, cc));
    CHECK_EQ_STR(cc, "XX");
    CHECK_EQ_INT(tg_geoip_asn(NULL, &a), 0);
    tg_geoip_close(NULL);
}

static bool contains(const char *s, const char *needle)
{
    return strstr(s, needle) != NULL;
}

TEST(geoip_broken_dbs_refused)
{
    char err[512] = "";
    /* Its metadata says 100000 nodes: a 700000-byte tree in a file of
     * about 20 KB. */
    struct tg_geoip *g = open_shared("GeoIP2-City-Test-Invalid-Node-Count.mmdb", err, sizeof(err));
    CHECK(g == NULL);
    CHECK(contains(err, "GeoIP2-City-Test-Invalid-Node-Count.mmdb: "));
    CHECK(contains(err, "node_count 100000 needs a 700000-byte search tree"));
    fprintf(stderr, "(expected) %s\n", err);

    /* Its location.latitude/longitude are "doubles" of 4-7 bytes holding
     * text: libmaxminddb opens it and fails only lookups that touch them. */
    err[0] = '\0';
    g = open_shared("GeoIP2-City-Test-Broken-Double-Format.mmdb", err, sizeof(err));
    CHECK(g == NULL);
    CHECK(contains(err, "GeoIP2-City-Test-Broken-Double-Format.mmdb: "));
    CHECK(contains(err, "at location.latitude: double of"));
    CHECK(contains(err, "(must be 8)"));
    fprintf(stderr, "(expected) %s\n", err);

    err[0] = '\0';
    g = open_shared("no-such-file.mmdb", err, sizeof(err));
    CHECK(g == NULL);
    CHECK(contains(err, "no-such-file.mmdb: No such file or directory"));

    err[0] = '\0';
    g = open_shared("LICENSE-MIT", err, sizeof(err));
    CHECK(g == NULL);
    CHECK(contains(err, "no MaxMind DB metadata marker"));

    err[0] = '\0';
    g = tg_geoip_open(geoip_dir, err, sizeof(err));
    CHECK(g == NULL);
    CHECK(contains(err, "not a regular file"));
}

/* ---- GeoIP: small databases written here -------------------------------- */

struct mmw {
    uint8_t b[8192];
    size_t n;
};

static void w_bytes(struct mmw *w, const void *p, size_t n)
{
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

static void w_byte(struct mmw *w, unsigned v)
{
    w->b[w->n++] = (uint8_t)v;
}

static void w_ctrl(struct mmw *w, int type, size_t size)
{
    unsigned s = size < 29 ? (unsigned)size : size < 285 ? 29 : 30;
    if (type <= 7) {
        w_byte(w, (unsigned)type << 5 | s);
    } else {
        w_byte(w, s);
        w_byte(w, (unsigned)type - 7);
    }
    if (s == 29)
        w_byte(w, (unsigned)(size - 29));
    else if (s == 30) {
        w_byte(w, (unsigned)((size - 285) >> 8));
        w_byte(w, (unsigned)(size - 285));
    }
}

static void w_str(struct mmw *w, const char *s)
{
    w_ctrl(w, T_STRING, strlen(s));
    w_bytes(w, s, strlen(s));
}

static void w_uint(struct mmw *w, int type, uint64_t v)
{
    unsigned n = 0;
    for (uint64_t t = v; t != 0; t >>= 8)
        n++;
    w_ctrl(w, type, n);
    for (unsigned i = n; i-- > 0;)
        w_byte(w, (unsigned)(v >> (8 * i)));
}

static void w_ptr(struct mmw *w, uint32_t target)
{
    w_byte(w, 0x38); /* pointer, 4-byte form */
    w_byte(w, target >> 24);
    w_byte(w, target >> 16);
    w_byte(w, target >> 8);
    w_byte(w, target);
}

/* {"country": {"iso_code": code}} */
static void w_country(struct mmw *w, const char *key, const char *code)
{
    w_ctrl(w, T_MAP, 1);
    w_str(w, key);
    w_ctrl(w, T_MAP, 1);
    w_str(w, "iso_code");
    w_str(w, code);
}

struct testdb {
    uint32_t left[64], right[64]; /* records, as in the file */
    uint32_t nodes;
    struct mmw data;
    int record_size; /* 24 unless set */
    bool bad_separator;
    uint32_t node_count_override;
};

/* A record value for data offset off. */
static uint32_t data_rec(const struct testdb *db, uint32_t off)
{
    return db->nodes + 16 + off;
}

static char tmp_path[64];

/* Writes db as an IPv4 MaxMind DB to a temporary file and opens it. */
static struct tg_geoip *open_testdb(const struct testdb *db, char *err, size_t elen)
{
    static struct mmw f;
    memset(&f, 0, sizeof(f));
    int rs = db->record_size ? db->record_size : 24;
    for (uint32_t i = 0; i < db->nodes; i++) {
        uint32_t l = db->left[i], r = db->right[i];
        if (rs == 24) {
            w_byte(&f, l >> 16);
            w_byte(&f, l >> 8);
            w_byte(&f, l);
            w_byte(&f, r >> 16);
            w_byte(&f, r >> 8);
            w_byte(&f, r);
        } else { /* 32 */
            for (int k = 3; k >= 0; k--)
                w_byte(&f, l >> (8 * k));
            for (int k = 3; k >= 0; k--)
                w_byte(&f, r >> (8 * k));
        }
    }
    for (int i = 0; i < 16; i++)
        w_byte(&f, db->bad_separator && i == 7 ? 1 : 0);
    w_bytes(&f, db->data.b, db->data.n);
    w_bytes(&f, "\xab\xcd\xefMaxMind.com", 14);
    w_ctrl(&f, T_MAP, 9);
    w_str(&f, "binary_format_major_version");
    w_uint(&f, T_UINT16, 2);
    w_str(&f, "binary_format_minor_version");
    w_uint(&f, T_UINT16, 0);
    w_str(&f, "build_epoch");
    w_uint(&f, T_UINT64, 1700000000);
    w_str(&f, "database_type");
    w_str(&f, "tollgate-test");
    w_str(&f, "description");
    w_ctrl(&f, T_MAP, 1);
    w_str(&f, "en");
    w_str(&f, "written by test_access.c");
    w_str(&f, "ip_version");
    w_uint(&f, T_UINT16, 4);
    w_str(&f, "languages");
    w_ctrl(&f, T_ARRAY, 1);
    w_str(&f, "en");
    w_str(&f, "node_count");
    w_uint(&f, T_UINT32, db->node_count_override ? db->node_count_override : db->nodes);
    w_str(&f, "record_size");
    w_uint(&f, T_UINT16, (uint64_t)rs);

    snprintf(tmp_path, sizeof(tmp_path), "/tmp/tg_test_access_XXXXXX");
    int fd = mkstemp(tmp_path);
    if (fd < 0 || write(fd, f.b, f.n) != (ssize_t)f.n) {
        snprintf(err, elen, "cannot write %s", tmp_path);
        return NULL;
    }
    close(fd);
    struct tg_geoip *g = tg_geoip_open(tmp_path, err, elen);
    unlink(tmp_path);
    return g;
}

/* One node: 0.0.0.0/1 -> the record at offset 0, 128.0.0.0/1 -> `right`
 * (an offset, or UINT32_MAX for no data). */
static void one_node(struct testdb *db, uint32_t right)
{
    db->nodes = 1;
    db->left[0] = data_rec(db, 0);
    db->right[0] = right == UINT32_MAX ? db->nodes : data_rec(db, right);
}

TEST(geoip_written_db_fallbacks)
{
    static struct testdb db;
    memset(&db, 0, sizeof(db));
    /* Record 0: registered_country only. Record 1: ip-location-db's flat
     * country_code, in lower case. */
    w_country(&db.data, "registered_country", "FR");
    uint32_t second = (uint32_t)db.data.n;
    w_ctrl(&db.data, T_MAP, 2);
    w_str(&db.data, "country_code");
    w_str(&db.data, "de");
    w_str(&db.data, "autonomous_system_number");
    w_uint(&db.data, T_UINT32, 64500);
    one_node(&db, second);
    char err[512] = "";
    struct tg_geoip *g = open_testdb(&db, err, sizeof(err));
    if (g == NULL)
        fprintf(stderr, "%s\n", err);
    CHECK(g != NULL);
    if (g == NULL)
        return;
    CHECK_EQ_STR(country_of(g, "1.2.3.4"), "FR");
    CHECK_EQ_STR(country_of(g, "200.1.1.1"), "DE");
    struct tg_addr a = addr_of("200.1.1.1");
    CHECK_EQ_INT(tg_geoip_asn(g, &a), 64500);
    a = addr_of("1.2.3.4");
    CHECK_EQ_INT(tg_geoip_asn(g, &a), 0);
    /* IPv6 in an IPv4 database: not found. */
    CHECK_EQ_STR(country_of(g, "2001:db8::1"), "XX");
    tg_geoip_close(g);

    /* Shared values behind pointers, and 32-bit records. */
    memset(&db, 0, sizeof(db));
    w_country(&db.data, "country", "NZ");
    uint32_t p = (uint32_t)db.data.n;
    w_ptr(&db.data, 0);
    db.record_size = 32;
    one_node(&db, p);
    g = open_testdb(&db, err, sizeof(err));
    if (g == NULL)
        fprintf(stderr, "%s\n", err);
    CHECK(g != NULL);
    if (g != NULL) {
        CHECK_EQ_STR(country_of(g, "1.2.3.4"), "NZ");
        CHECK_EQ_STR(country_of(g, "200.1.1.1"), "NZ");
        tg_geoip_close(g);
    }
}

/* Builds a one-node database whose record 0 is written by `fill`, expects
 * open to refuse it with `want` in the message. */
static void expect_refused(struct testdb *db, const char *want)
{
    char err[512] = "";
    struct tg_geoip *g = open_testdb(db, err, sizeof(err));
    if (g != NULL || !contains(err, want))
        fprintf(stderr, "want \"%s\", got \"%s\"\n", want, g ? "(opened)" : err);
    CHECK(g == NULL);
    CHECK(contains(err, want));
    tg_geoip_close(g);
}

TEST(geoip_written_db_corruptions)
{
    static struct testdb db;

    /* A map holding a pointer to itself. */
    memset(&db, 0, sizeof(db));
    w_ctrl(&db.data, T_MAP, 2);
    w_str(&db.data, "country_code");
    w_str(&db.data, "GB");
    w_str(&db.data, "self");
    w_ptr(&db.data, 0);
    one_node(&db, UINT32_MAX);
    expect_refused(&db, "at self: pointer cycle");

    /* A pointer past the data section. */
    memset(&db, 0, sizeof(db));
    w_ctrl(&db.data, T_MAP, 2);
    w_str(&db.data, "country_code");
    w_str(&db.data, "GB");
    w_str(&db.data, "x");
    w_ptr(&db.data, 5000);
    one_node(&db, UINT32_MAX);
    expect_refused(&db, "pointer to 5000, past the end");

    /* A pointer to a pointer. */
    memset(&db, 0, sizeof(db));
    w_ctrl(&db.data, T_MAP, 2);
    w_str(&db.data, "country_code");
    w_str(&db.data, "GB");
    w_str(&db.data, "x");
    uint32_t here = (uint32_t)db.data.n;
    w_ptr(&db.data, here + 5);
    w_ptr(&db.data, 0);
    one_node(&db, UINT32_MAX);
    expect_refused(&db, "pointer to a pointer");

    /* Tree records into the separator and past the data. */
    memset(&db, 0, sizeof(db));
    w_country(&db.data, "country", "GB");
    one_node(&db, UINT32_MAX);
    db.right[0] = db.nodes + 3;
    expect_refused(&db, "record for 128.0.0.0/1 points outside the data");
    db.right[0] = data_rec(&db, (uint32_t)db.data.n);
    expect_refused(&db, "points outside the data section");

    /* Non-zero separator: the tree is not where node_count says. */
    db.right[0] = db.nodes;
    db.bad_separator = true;
    expect_refused(&db, "16 bytes after the search tree are not zero");

    /* node_count larger than the file. */
    db.bad_separator = false;
    db.node_count_override = 5000;
    expect_refused(&db, "node_count 5000 needs a 30000-byte search tree");
    db.node_count_override = 0;

    /* A path longer than 32 bits in an IPv4 database. */
    memset(&db, 0, sizeof(db));
    w_country(&db.data, "country", "GB");
    db.nodes = 34;
    for (uint32_t i = 0; i < 33; i++) {
        db.left[i] = i + 1;
        db.right[i] = db.nodes;
    }
    db.left[33] = db.right[33] = data_rec(&db, 0);
    expect_refused(&db, "search tree deeper than 32 bits");

    /* Bad scalar sizes, bad types. */
    static const struct {
        uint8_t bytes[8];
        size_t n;
        const char *want;
    } scalars[] = {
        {{0x65, '5', '1', '.', '7', '5'}, 6, "double of 5 bytes (must be 8)"},
        {{0x03, 0x08, 1, 2, 3}, 5, "float of 3 bytes (must be 4)"},
        {{0xa3, 1, 2, 3}, 4, "uint16 of 3 bytes (at most 2)"},
        {{0xc5, 1, 2, 3, 4, 5}, 6, "uint32 of 5 bytes (at most 4)"},
        {{0x02, 0x07, 0, 0}, 4, "boolean of value 2"},
        {{0x00, 0x05}, 2, "container type"},
        {{0x00, 0x06}, 2, "end_marker type"},
        {{0x00, 0x09}, 2, "unknown extended type 16"},
        {{0x00, 0x00}, 2, "unknown extended type 7"},
        {{0x5f, 0xff, 0xff, 0xff}, 4, "runs past the end"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(scalars); i++) {
        memset(&db, 0, sizeof(db));
        w_ctrl(&db.data, T_MAP, 2);
        w_str(&db.data, "country_code");
        w_str(&db.data, "GB");
        w_str(&db.data, "v");
        w_bytes(&db.data, scalars[i].bytes, scalars[i].n);
        one_node(&db, UINT32_MAX);
        expect_refused(&db, scalars[i].want);
    }

    /* A map key that is not a string. */
    memset(&db, 0, sizeof(db));
    w_ctrl(&db.data, T_MAP, 1);
    w_uint(&db.data, T_UINT32, 7);
    w_str(&db.data, "x");
    one_node(&db, UINT32_MAX);
    expect_refused(&db, "map key is a uint32, not a string");

    /* Nesting deeper than any GeoIP record. */
    memset(&db, 0, sizeof(db));
    w_ctrl(&db.data, T_MAP, 2);
    w_str(&db.data, "country_code");
    w_str(&db.data, "GB");
    w_str(&db.data, "deep");
    for (int i = 0; i < 40; i++)
        w_ctrl(&db.data, T_ARRAY, 1);
    w_str(&db.data, "bottom");
    one_node(&db, UINT32_MAX);
    expect_refused(&db, "nested too deep");

    /* Records that are not maps, wrong field types, no useful field. */
    memset(&db, 0, sizeof(db));
    w_str(&db.data, "GB");
    one_node(&db, UINT32_MAX);
    expect_refused(&db, "record is a utf8_string, not a map");

    memset(&db, 0, sizeof(db));
    w_country(&db.data, "country", "GBR");
    one_node(&db, UINT32_MAX);
    expect_refused(&db, "country.iso_code: not a two-letter code");

    memset(&db, 0, sizeof(db));
    w_ctrl(&db.data, T_MAP, 1);
    w_str(&db.data, "autonomous_system_number");
    w_str(&db.data, "AS15169");
    one_node(&db, UINT32_MAX);
    expect_refused(&db, "autonomous_system_number: not an unsigned");

    memset(&db, 0, sizeof(db));
    w_ctrl(&db.data, T_MAP, 1);
    w_str(&db.data, "city");
    w_str(&db.data, "London");
    one_node(&db, UINT32_MAX);
    expect_refused(&db, "no record has a country code");

    /* The message names the network and the path. */
    memset(&db, 0, sizeof(db));
    w_country(&db.data, "country", "GB");
    uint32_t bad = (uint32_t)db.data.n;
    w_ctrl(&db.data, T_MAP, 2);
    w_str(&db.data, "country_code");
    w_str(&db.data, "GB");
    w_str(&db.data, "subdivisions");
    w_ctrl(&db.data, T_ARRAY, 2);
    w_str(&db.data, "ok");
    w_ctrl(&db.data, T_MAP, 1);
    w_str(&db.data, "names");
    w_bytes(&db.data, "\x63\x08\x00", 3); /* double of 3 bytes */
    one_node(&db, bad);
    expect_refused(&db, "corrupt data record for 128.0.0.0/1 at "
                        "subdivisions[1].names: double of 3 bytes");
}

TEST(geoip_truncated_copies_refused)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/GeoLite2-Country-Test.mmdb", geoip_dir);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (f == NULL)
        return;
    static uint8_t buf[1 << 16];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    /* Cut anywhere: the metadata is gone, or the tree no longer fits. */
    size_t cuts[] = {0, 1, 100, n / 2, n - 300, n - 1};
    for (size_t i = 0; i < TG_ARRAY_LEN(cuts); i++) {
        char tmp[] = "/tmp/tg_test_access_XXXXXX";
        int fd = mkstemp(tmp);
        CHECK(fd >= 0);
        if (fd < 0)
            return;
        CHECK(write(fd, buf, cuts[i]) == (ssize_t)cuts[i]);
        close(fd);
        char err[512] = "";
        struct tg_geoip *g = tg_geoip_open(tmp, err, sizeof(err));
        unlink(tmp);
        CHECK(g == NULL);
        CHECK(contains(err, tmp));
        tg_geoip_close(g);
    }
    /* Flipped bytes in the data section are caught or harmless; never a
     * crash, and the lookups still answer. */
    MMDB_s mm;
    CHECK(MMDB_open(path, MMDB_MODE_MMAP, &mm) == MMDB_SUCCESS);
    size_t tree = (size_t)mm.metadata.node_count * mm.metadata.record_size / 4;
    MMDB_close(&mm);
    for (size_t off = tree + 16; off < n - 400; off += 37) {
        uint8_t save = buf[off];
        buf[off] ^= 0xff;
        char tmp[] = "/tmp/tg_test_access_XXXXXX";
        int fd = mkstemp(tmp);
        if (fd < 0 || write(fd, buf, n) != (ssize_t)n)
            CHECK(0);
        close(fd);
        char err[512] = "";
        struct tg_geoip *g = tg_geoip_open(tmp, err, sizeof(err));
        unlink(tmp);
        if (g != NULL) {
            country_of(g, "81.2.69.142");
            country_of(g, "2001:218::1");
            tg_geoip_close(g);
        }
        buf[off] = save;
    }
}

/* ---- access rules -------------------------------------------------------- */

static struct tg_access_rules *rules(const char *const *allow, const char *const *deny)
{
    struct tg_access_rules *r = tg_access_rules_new();
    char err[256];
    for (size_t i = 0; allow != NULL && allow[i] != NULL; i++)
        if (tg_access_rules_add_cidr(r, true, allow[i], err, sizeof(err)) < 0)
            fprintf(stderr, "test bug: %s\n", err);
    for (size_t i = 0; deny != NULL && deny[i] != NULL; i++)
        if (tg_access_rules_add_cidr(r, false, deny[i], err, sizeof(err)) < 0)
            fprintf(stderr, "test bug: %s\n", err);
    return r;
}

static bool ok(const struct tg_access_rules *r, const char *ip)
{
    struct tg_addr a = addr_of(ip);
    const char *why = "unset";
    bool pass = tg_access_check(r, &a, "GB", 1, &why);
    if (pass ? why != NULL : strcmp(why, "address") != 0)
        fprintf(stderr, "%s: why = %s\n", ip, why ? why : "(null)");
    return pass;
}

TEST(rules_empty_allows_all)
{
    struct tg_access_rules *r = tg_access_rules_new();
    CHECK(ok(r, "192.0.2.1"));
    CHECK(ok(r, "2001:db8::1"));
    CHECK(!tg_access_uses_country(r));
    CHECK(!tg_access_uses_asn(r));
    struct tg_addr none;
    memset(&none, 0, sizeof(none));
    CHECK(tg_access_check(r, &none, NULL, 0, NULL));
    tg_access_rules_free(r);
    tg_access_rules_free(NULL);
}

TEST(rules_longest_prefix)
{
    const char *const allow[] = {"10.1.0.0/16", "10.1.2.3", "2001:db8:1::/48", NULL};
    const char *const deny[] = {"10.0.0.0/8", "10.1.2.0/24", "2001:db8::/32", NULL};
    struct tg_access_rules *r = rules(allow, deny);
    CHECK(!ok(r, "10.0.0.1"));
    CHECK(ok(r, "10.1.0.1"));
    CHECK(ok(r, "10.1.255.255"));
    CHECK(!ok(r, "10.1.2.1"));
    CHECK(ok(r, "10.1.2.3"));
    CHECK(!ok(r, "10.1.2.4"));
    CHECK(ok(r, "::ffff:10.1.0.1")); /* mapped: same rules */
    CHECK(!ok(r, "::ffff:10.2.0.1"));
    CHECK(!ok(r, "2001:db8::1"));
    CHECK(ok(r, "2001:db8:1::1"));
    CHECK(ok(r, "2001:db8:1:ffff::1"));
    CHECK(!ok(r, "2001:db8:2::1"));
    /* No match while allow prefixes exist: refused. */
    CHECK(!ok(r, "192.0.2.1"));
    CHECK(!ok(r, "2001:db9::1"));
    tg_access_rules_free(r);

    /* Deny only: unmatched addresses pass. */
    const char *const deny2[] = {"192.0.2.0/24", NULL};
    r = rules(NULL, deny2);
    CHECK(!ok(r, "192.0.2.77"));
    CHECK(ok(r, "192.0.3.1"));
    CHECK(ok(r, "2001:db8::1"));
    tg_access_rules_free(r);
}

TEST(rules_tie_is_deny)
{
    const char *const p[] = {"192.0.2.0/24", "2001:db8::/64", NULL};
    struct tg_access_rules *r = rules(p, p);
    CHECK(!ok(r, "192.0.2.1"));
    CHECK(!ok(r, "2001:db8::1"));
    tg_access_rules_free(r);
    /* Deny added first, allow after: still deny. */
    r = tg_access_rules_new();
    tg_access_rules_add_cidr(r, false, "192.0.2.0/24", NULL, 0);
    tg_access_rules_add_cidr(r, true, "192.0.2.0/24", NULL, 0);
    CHECK(!ok(r, "192.0.2.1"));
    tg_access_rules_free(r);
}

TEST(rules_presets)
{
    const char *const deny[] = {"private", NULL};
    struct tg_access_rules *r = rules(NULL, deny);
    CHECK(!ok(r, "192.168.1.1"));
    CHECK(!ok(r, "10.9.9.9"));
    CHECK(!ok(r, "172.16.0.1"));
    CHECK(!ok(r, "127.0.0.1"));
    CHECK(!ok(r, "::1"));
    CHECK(!ok(r, "fe80::1"));
    CHECK(!ok(r, "fd00::1"));
    CHECK(ok(r, "8.8.8.8"));
    CHECK(ok(r, "172.32.0.1"));
    CHECK(ok(r, "2001:db8::1"));
    tg_access_rules_free(r);

    const char *const allow[] = {"loopback", NULL};
    r = rules(allow, NULL);
    CHECK(ok(r, "127.0.0.1"));
    CHECK(ok(r, "::1"));
    CHECK(!ok(r, "8.8.8.8"));
    CHECK(!ok(r, "::2"));
    tg_access_rules_free(r);

    /* Deny everything but one network. */
    const char *const allow3[] = {"203.0.113.0/24", NULL};
    const char *const deny3[] = {"any", NULL};
    r = rules(allow3, deny3);
    CHECK(ok(r, "203.0.113.9"));
    CHECK(!ok(r, "203.0.114.9"));
    CHECK(!ok(r, "2001:db8::1"));
    tg_access_rules_free(r);
}

TEST(rules_bad_prefixes)
{
    struct tg_access_rules *r = tg_access_rules_new();
    char err[256];
    CHECK(tg_access_rules_add_cidr(r, true, "10.0.0.1/8", err, sizeof(err)) < 0);
    CHECK_EQ_STR(err, "\"10.0.0.1/8\": host bits set (did you mean "
                      "10.0.0.0/8?)");
    CHECK(tg_access_rules_add_cidr(r, true, "privat", err, sizeof(err)) < 0);
    CHECK_EQ_STR(err, "\"privat\": not an IP prefix or a preset (private, "
                      "loopback, any)");
    CHECK(tg_access_rules_add_cidr(r, false, "", err, sizeof(err)) < 0);
    CHECK(tg_access_rules_add_cidr(r, false, "10.0.0.0/33", err, sizeof(err)) < 0);
    CHECK(contains(err, "prefix length over 32"));
    CHECK(tg_access_rules_add_cidr(r, false, "10.0.0.0/8 ", NULL, 0) < 0);
    /* Nothing was added. */
    CHECK(ok(r, "10.0.0.1"));
    tg_access_rules_free(r);
}

static const char *verdict(const struct tg_access_rules *r, const char *ip, const char *cc,
                           uint32_t asn)
{
    struct tg_addr a = addr_of(ip);
    const char *why = "unset";
    bool pass = tg_access_check(r, &a, cc, asn, &why);
    if (pass)
        return why == NULL ? "allow" : "(allowed with a reason)";
    return why;
}

TEST(rules_countries)
{
    struct tg_access_rules *r = tg_access_rules_new();
    char err[256];
    CHECK(tg_access_rules_add_country(r, true, "GB", err, sizeof(err)) == 0);
    CHECK(tg_access_rules_add_country(r, true, "us", err, sizeof(err)) == 0);
    CHECK(tg_access_uses_country(r));
    CHECK(!tg_access_uses_asn(r));
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 0), "allow");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "US", 0), "allow");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "FR", 0), "country");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "XX", 0), "country");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", NULL, 0), "country");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "gb", 0), "allow");
    tg_access_rules_free(r);

    r = tg_access_rules_new();
    CHECK(tg_access_rules_add_country(r, false, "xx", err, sizeof(err)) == 0);
    CHECK(tg_access_rules_add_country(r, false, "RU", err, sizeof(err)) == 0);
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 0), "allow");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "RU", 0), "country");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "XX", 0), "country");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", NULL, 0), "country");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "G?", 0), "country"); /* → XX */
    /* A country on both lists is denied. */
    CHECK(tg_access_rules_add_country(r, true, "RU", err, sizeof(err)) == 0);
    CHECK(tg_access_rules_add_country(r, true, "GB", err, sizeof(err)) == 0);
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "RU", 0), "country");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 0), "allow");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "FR", 0), "country");
    tg_access_rules_free(r);

    r = tg_access_rules_new();
    static const char *const bad[] = {"GBR", "G", "", "G1", "1G", "É"};
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        CHECK(tg_access_rules_add_country(r, true, bad[i], err, sizeof(err)) < 0);
        CHECK(contains(err, "not a two-letter ISO 3166-1 country code"));
    }
    CHECK(!tg_access_uses_country(r));
    tg_access_rules_free(r);
}

TEST(rules_asns_and_order)
{
    struct tg_access_rules *r = tg_access_rules_new();
    CHECK(tg_access_rules_add_asn(r, false, 64496) == 0);
    CHECK(tg_access_uses_asn(r));
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 64496), "asn");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 64497), "allow");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 0), "allow");
    tg_access_rules_free(r);

    r = tg_access_rules_new();
    /* Added in descending order: 13 * (6, 13, ..., 1000). */
    for (int k = 142; k >= 0; k--)
        CHECK(tg_access_rules_add_asn(r, true, 13u * (6u + 7u * (unsigned)k)) == 0);
    CHECK(tg_access_rules_add_asn(r, true, 13 * 6) == 0); /* duplicate */
    CHECK_EQ_INT(r->asns[1].n, 143);
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 13 * 993), "allow");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 13 * 6), "allow");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 13 * 994), "asn");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 0), "asn");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", UINT32_MAX), "asn");
    for (size_t i = 1; i < r->asns[1].n; i++)
        CHECK(r->asns[1].v[i - 1] < r->asns[1].v[i]);

    /* Address first, then country, then ASN: the first failure is the
     * reason. */
    tg_access_rules_add_cidr(r, false, "198.51.100.0/24", NULL, 0);
    tg_access_rules_add_country(r, false, "FR", NULL, 0);
    CHECK_EQ_STR(verdict(r, "198.51.100.1", "FR", 1), "address");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "FR", 1), "country");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 1), "asn");
    CHECK_EQ_STR(verdict(r, "192.0.2.1", "GB", 13 * 6), "allow");
    tg_access_rules_free(r);
}

/* Thousands of random prefixes on both lists, against a brute-force scan
 * of the same rules. */
struct rule {
    struct tg_cidr c;
    bool allow;
};

static bool in_prefix(const struct tg_cidr *c, const struct tg_addr *a)
{
    if (c->addr.family != a->family)
        return false;
    struct tg_addr m = *a;
    tg_addr_mask(&m, c->bits);
    return tg_addr_equal(&m, &c->addr);
}

static bool brute(const struct rule *rs, size_t n, const struct tg_addr *a)
{
    int best_allow = -1, best_deny = -1, nallow = 0;
    for (size_t i = 0; i < n; i++) {
        nallow += rs[i].allow;
        if (!in_prefix(&rs[i].c, a))
            continue;
        int *best = rs[i].allow ? &best_allow : &best_deny;
        if (rs[i].c.bits > *best)
            *best = rs[i].c.bits;
    }
    if (best_deny >= 0 && best_deny >= best_allow)
        return false;
    if (best_allow < 0 && nallow > 0)
        return false;
    return true;
}

static void random_addr(struct tg_addr *a, bool v6)
{
    memset(a, 0, sizeof(*a));
    a->family = v6 ? AF_INET6 : AF_INET;
    uint64_t x = rnd(), y = rnd();
    /* Few distinct top bits, so that prefixes nest and collide. */
    x = (x & 0x0f0000000000ffffULL) | (v6 ? 0x2000000000000000ULL : 0);
    for (int i = 0; i < 8; i++) {
        a->ip[i] = (uint8_t)(x >> (56 - 8 * i));
        a->ip[8 + i] = (uint8_t)(y >> (56 - 8 * i));
    }
    if (!v6) {
        a->ip[0] = (uint8_t)(10 + (x & 3));
        memset(a->ip + 4, 0, 12);
    }
    if (v6 && a->ip[0] == 0)
        a->ip[0] = 0x20;
}

TEST(rules_thousands_of_prefixes)
{
    enum { NRULES = 4000, NQUERIES = 4000 };
    static struct rule rs[NRULES];
    struct tg_access_rules *r = tg_access_rules_new();
    for (size_t i = 0; i < NRULES; i++) {
        bool v6 = rnd() % 3 == 0;
        random_addr(&rs[i].c.addr, v6);
        unsigned width = v6 ? 128 : 32;
        rs[i].c.bits = (uint8_t)(v6 ? 8 + rnd() % (width - 7) : 6 + rnd() % (width - 5));
        tg_addr_mask(&rs[i].c.addr, rs[i].c.bits);
        rs[i].allow = rnd() % 2;
        char buf[TG_ADDR_STRLEN + 8];
        snprintf(buf, sizeof(buf), "%s/%u", text(&rs[i].c.addr), rs[i].c.bits);
        char err[128];
        if (tg_access_rules_add_cidr(r, rs[i].allow, buf, err, sizeof(err)) < 0)
            fprintf(stderr, "%s: %s\n", buf, err);
    }
    int mismatches = 0, passed = 0;
    for (size_t q = 0; q < NQUERIES; q++) {
        struct tg_addr a;
        if (q % 2 == 0) {
            /* Inside a rule's prefix, at a random spot. */
            const struct rule *base = &rs[rnd() % NRULES];
            random_addr(&a, base->c.addr.family == AF_INET6);
            struct tg_addr hi = base->c.addr;
            unsigned bytes = base->c.addr.family == AF_INET6 ? 16 : 4;
            for (unsigned b = 0; b < bytes * 8; b++) {
                uint8_t bit = (uint8_t)(0x80 >> (b % 8));
                uint8_t *dst = &hi.ip[b / 8];
                if (b >= base->c.bits)
                    *dst = (uint8_t)((*dst & ~bit) | (a.ip[b / 8] & bit));
            }
            a = hi;
        } else {
            random_addr(&a, rnd() % 3 == 0);
        }
        bool want = brute(rs, NRULES, &a);
        bool got = tg_access_check(r, &a, "GB", 1, NULL);
        passed += got;
        if (want != got && mismatches++ < 5)
            fprintf(stderr, "%s: want %d got %d\n", text(&a), want, got);
    }
    CHECK_EQ_INT(mismatches, 0);
    /* Both outcomes were exercised. */
    CHECK(passed > NQUERIES / 20);
    CHECK(passed < NQUERIES - NQUERIES / 20);
    tg_access_rules_free(r);
}

/* ---- all together -------------------------------------------------------- */

TEST(identity_geoip_and_rules)
{
    char err[512];
    struct tg_geoip *g = open_shared("GeoLite2-Country-Test.mmdb", err, sizeof(err));
    CHECK(g != NULL);
    if (g == NULL)
        return;
    struct tg_access_rules *r = tg_access_rules_new();
    tg_access_rules_add_country(r, true, "GB", NULL, 0);
    tg_access_rules_add_country(r, true, "SE", NULL, 0);
    tg_access_rules_add_cidr(r, true, "private", NULL, 0);
    tg_access_rules_add_cidr(r, true, "any", NULL, 0);

    static const struct {
        const char *peer, *xff, *want;
    } cases[] = {
        /* Behind the load balancer, a British client passes... */
        {"10.0.0.1", "203.0.113.1, 81.2.69.142", "allow"},
        /* ...a spoofed British entry from an American one does not. */
        {"10.0.0.1", "81.2.69.142, 216.160.83.56", "country"},
        /* Claims from an untrusted peer are ignored. */
        {"216.160.83.56", "81.2.69.142", "country"},
        {"89.160.20.112", "216.160.83.56", "allow"},
        /* Unknown places are XX, not on the list. */
        {"10.0.0.1", "127.0.0.1", "country"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        struct tg_addr peer = addr_of(cases[i].peer), client;
        struct tg_str x = tg_str_make(cases[i].xff, strlen(cases[i].xff));
        client_addr(g_trusted, &peer, &x, 1, NULL, 0, &client);
        char cc[3];
        tg_geoip_country(g, &client, cc);
        const char *why = NULL;
        bool pass = tg_access_check(r, &client, cc, 0, &why);
        CHECK_EQ_STR(pass ? "allow" : why, cases[i].want);
    }
    tg_access_rules_free(r);
    tg_geoip_close(g);
}

int main(void)
{
    g_trusted = trusted_set();
    find_geoip_dir();

    RUN(client_untrusted_peer_ignores_headers);
    RUN(client_xff_rightmost_untrusted);
    RUN(client_xff_several_headers);
    RUN(client_chain_hops_and_modes);
    RUN(client_xff_address_forms);
    RUN(client_xff_malformed_stops_at_last_trusted_hop);
    RUN(client_forwarded);
    RUN(client_forwarded_malformed);
    RUN(client_out_may_alias_peer);
    RUN(client_long_lists);
    RUN(client_random_lists_match_reference);
    RUN(geoip_shared_dbs_present);
    RUN(geoip_country);
    RUN(geoip_asn);
    RUN(geoip_broken_dbs_refused);
    RUN(geoip_written_db_fallbacks);
    RUN(geoip_written_db_corruptions);
    RUN(geoip_truncated_copies_refused);
    RUN(rules_empty_allows_all);
    RUN(rules_longest_prefix);
    RUN(rules_tie_is_deny);
    RUN(rules_presets);
    RUN(rules_bad_prefixes);
    RUN(rules_countries);
    RUN(rules_asns_and_order);
    RUN(rules_thousands_of_prefixes);
    RUN(identity_geoip_and_rules);

    tg_cidr_set_free(g_trusted);
    return TEST_SUMMARY();
}
