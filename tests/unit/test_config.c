/* Config loader: defaults, every value parser, error positions, errors
 * collected, references resolved regardless of file order. */
#include "../../src/config.c"

#include "test.h"

static struct tg_config *load(const char *yaml, char *err, size_t errlen)
{
    return tg_config_load_buffer("t.yaml", yaml, strlen(yaml), err, errlen);
}

static const char *MINIMAL =
    "listen: [127.0.0.1:8080]\n"
    "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
    "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";

TEST(durations)
{
    int64_t ms;
    CHECK(tg_config_parse_duration("250ms", &ms) == 0 && ms == 250);
    CHECK(tg_config_parse_duration("10s", &ms) == 0 && ms == 10000);
    CHECK(tg_config_parse_duration("5m", &ms) == 0 && ms == 300000);
    CHECK(tg_config_parse_duration("2h", &ms) == 0 && ms == 7200000);
    CHECK(tg_config_parse_duration("1d", &ms) == 0 && ms == 86400000);
    CHECK(tg_config_parse_duration("0", &ms) == 0 && ms == 0);
    CHECK(tg_config_parse_duration("10", &ms) < 0);
    CHECK(tg_config_parse_duration("1.5s", &ms) < 0);
    CHECK(tg_config_parse_duration("-1s", &ms) < 0);
    CHECK(tg_config_parse_duration("s", &ms) < 0);
    CHECK(tg_config_parse_duration("10 s", &ms) < 0);
    CHECK(tg_config_parse_duration("99999999999999999999s", &ms) < 0);
}

TEST(sizes)
{
    uint64_t b;
    CHECK(tg_config_parse_size("512", &b) == 0 && b == 512);
    CHECK(tg_config_parse_size("16KiB", &b) == 0 && b == 16384);
    CHECK(tg_config_parse_size("10MiB", &b) == 0 && b == 10485760);
    CHECK(tg_config_parse_size("1GiB", &b) == 0 && b == 1073741824);
    CHECK(tg_config_parse_size("2KB", &b) == 0 && b == 2000);
    CHECK(tg_config_parse_size("4K", &b) == 0 && b == 4096);
    CHECK(tg_config_parse_size("1.5MiB", &b) < 0);
    CHECK(tg_config_parse_size("MiB", &b) < 0);
    CHECK(tg_config_parse_size("10 MiB", &b) < 0);
    CHECK(tg_config_parse_size("99999999999TiB", &b) < 0);
}

TEST(sockaddrs)
{
    struct tg_config_sockaddr a;
    char err[200], text[80];
    CHECK(tg_config_parse_sockaddr("127.0.0.1:8080", &a, err, sizeof(err)) == 0);
    tg_config_format_sockaddr((struct sockaddr *)&a.sa, text, sizeof(text));
    CHECK_EQ_STR(text, "127.0.0.1:8080");
    CHECK(tg_config_parse_sockaddr("[::1]:443", &a, err, sizeof(err)) == 0);
    tg_config_format_sockaddr((struct sockaddr *)&a.sa, text, sizeof(text));
    CHECK_EQ_STR(text, "[::1]:443");
    CHECK(tg_config_parse_sockaddr(":80", &a, err, sizeof(err)) == 0);
    tg_config_format_sockaddr((struct sockaddr *)&a.sa, text, sizeof(text));
    CHECK_EQ_STR(text, "0.0.0.0:80");
    CHECK(tg_config_parse_sockaddr("127.0.0.1", &a, err, sizeof(err)) < 0);
    CHECK(tg_config_parse_sockaddr("127.0.0.1:0", &a, err, sizeof(err)) < 0);
    CHECK(tg_config_parse_sockaddr("127.0.0.1:65536", &a, err, sizeof(err)) < 0);
    CHECK(tg_config_parse_sockaddr("::1:80", &a, err, sizeof(err)) < 0);
    CHECK(tg_config_parse_sockaddr("[::1:80", &a, err, sizeof(err)) < 0);
}

TEST(minimal_and_defaults)
{
    char err[2048];
    struct tg_config *c = load(MINIMAL, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    CHECK(c->workers >= 1);
    CHECK_EQ_INT(c->drain_timeout_ms, 30000);
    CHECK_EQ_INT(c->client.header_timeout_ms, 10000);
    CHECK_EQ_INT(c->client.max_request_line, 8192);
    CHECK_EQ_INT(c->client.max_head, 32768);
    CHECK_EQ_INT(c->stream.heartbeat_ms, 30000);
    CHECK_EQ_INT(c->nupstreams, 1);
    CHECK_EQ_INT(c->upstreams[0].keepalive, 32);
    CHECK_EQ_INT(c->upstreams[0].retries, 1);
    CHECK_EQ_INT(c->nsites, 1);
    CHECK_EQ_INT(c->sites[0].nroutes, 1);
    CHECK(c->sites[0].routes[0].upstream == &c->upstreams[0]);
    CHECK_EQ_STR(c->listeners[0].key, "127.0.0.1:8080");
    CHECK_EQ_STR(c->log.access, "stdout");
    tg_config_unref(c);
}

TEST(sites_before_upstreams_resolve)
{
    char err[2048];
    const char *y =
        "sites:\n"
        "  - hosts: [a.test]\n"
        "    routes:\n"
        "      - {path: /x/../api, upstream: later}\n"
        "listen: [127.0.0.1:8080]\n"
        "upstreams:\n"
        "  later: {servers: ['127.0.0.1:9000'], balance: least_conn, keepalive: 0}\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_EQ_STR(c->sites[0].routes[0].path, "/api");
        CHECK(c->upstreams[0].balance == TG_BALANCE_LEAST_CONN);
        CHECK_EQ_INT(c->upstreams[0].keepalive, 0);
        tg_config_unref(c);
    }
}

static void expect_error(const char *yaml, const char *prefix, const char *fragment)
{
    char err[4096];
    struct tg_config *c = load(yaml, err, sizeof(err));
    CHECK(c == NULL);
    if (c != NULL) {
        tg_config_unref(c);
        return;
    }
    if (strncmp(err, prefix, strlen(prefix)) != 0 || strstr(err, fragment) == NULL)
        fprintf(stderr, "expected '%s' ... '%s', got: %s", prefix, fragment, err);
    CHECK(strncmp(err, prefix, strlen(prefix)) == 0);
    CHECK(strstr(err, fragment) != NULL);
}

/* Issue 16: route patterns, methods and case rules, per-route timeouts and
 * body sizes, body key parts, and the checks -t makes on them. */
TEST(routes_patterns_and_checks)
{
    char err[4096];
    const char *head = "listen: [127.0.0.1:8080]\n"
                       "upstreams: {app: {servers: [127.0.0.1:9000]}}\n";
    char y[4096];
    snprintf(y, sizeof(y),
             "%ssites:\n"
             "  - hosts: [a.test]\n"
             "    ignore_case: true\n"
             "    routes:\n"
             "      - {path: /api/collections/*/auth-*, upstream: app, methods: [GET, POST]}\n"
             "      - {path: '= /api/health', upstream: app, ignore_case: false}\n"
             "      - {path: /api/backups, upstream: app, read_timeout: 1h, max_body: 0}\n"
             "      - {path: /, upstream: app, methods: [PROPFIND]}\n",
             head);
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    const struct tg_config_route *r = c->sites[0].routes;
    CHECK_EQ_STR(r[0].path, "/api/collections/*/auth-*");
    CHECK(r[0].ignore_case && !r[1].ignore_case && c->sites[0].any_ignore_case);
    CHECK(r[0].methods == (1u << TG_HTTP1_GET | 1u << TG_HTTP1_HEAD | 1u << TG_HTTP1_POST));
    CHECK_EQ_STR(r[1].path, "= /api/health");
    CHECK_EQ_INT(r[2].read_timeout_ms, 3600000);
    CHECK_EQ_INT(r[2].max_body, 0);
    CHECK_EQ_INT(r[3].nother_methods, 1);
    CHECK_EQ_STR(r[3].other_methods[0], "PROPFIND");
    tg_config_unref(c);

    /* A catch-all before the allow-list: the later route can never match. */
    snprintf(y, sizeof(y),
             "%ssites:\n"
             "  - hosts: [a.test]\n"
             "    routes:\n"
             "      - {path: /, upstream: app}\n"
             "      - {path: /_/, upstream: app, allow: [private]}\n", head);
    expect_error(y, "t.yaml:7:9: ", "can never match: the route at line 6 (path '/')");
    /* A wildcard above the literal it covers; methods decide too. */
    snprintf(y, sizeof(y),
             "%ssites:\n"
             "  - hosts: [a.test]\n"
             "    routes:\n"
             "      - {path: /api/collections/*/auth-*, upstream: app}\n"
             "      - {path: /api/collections/users/auth-with-password, upstream: app}\n", head);
    expect_error(y, "t.yaml:7:9: ", "can never match");
    snprintf(y, sizeof(y),
             "%ssites:\n"
             "  - hosts: [a.test]\n"
             "    routes:\n"
             "      - {path: /api/, upstream: app, methods: [GET]}\n"
             "      - {path: /api/x, upstream: app}\n", head);
    c = load(y, err, sizeof(err));
    CHECK(c != NULL); /* POST /api/x still reaches the second */
    if (c != NULL)
        tg_config_unref(c);
    /* A pattern that cannot be parsed: the column points at the byte. */
    snprintf(y, sizeof(y),
             "%ssites:\n"
             "  - hosts: [a.test]\n"
             "    routes:\n"
             "      - path: /api/a**b\n"
             "        upstream: app\n", head);
    expect_error(y, "t.yaml:6:21: ", "'**' must be a whole segment");
    snprintf(y, sizeof(y),
             "%ssites:\n"
             "  - hosts: [a.test]\n"
             "    routes:\n"
             "      - {path: /, upstream: app, methods: [GET, TRACE]}\n", head);
    expect_error(y, "t.yaml:6:49: ", "TRACE requests are refused");
    /* Body key parts. */
    snprintf(y, sizeof(y),
             "%srate_limit:\n"
             "  policies:\n"
             "    a: {rate: 1/s, key: [body:identity], body_fallback: ip}\n"
             "    b: {rate: 1/s, key: [form:user.email, json:identity]}\n"
             "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n", head);
    c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK(c->rate_limit.policies[0].needs_body && c->rate_limit.policies[0].body_fallback);
        CHECK(c->rate_limit.policies[1].parts[0].kind == TG_RL_PART_FORM);
        CHECK(!c->rate_limit.policies[1].body_fallback);
        tg_config_unref(c);
    } else {
        fprintf(stderr, "%s", err);
    }
    snprintf(y, sizeof(y),
             "%srate_limit:\n"
             "  policies:\n"
             "    a: {rate: 1/s, key: [body:\"id|x\"]}\n"
             "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n", head);
    expect_error(y, "t.yaml:5:26: ", "body field name");
    /* PROXY protocol believes only trusted proxies. */
    expect_error("listen:\n  - {address: 127.0.0.1:8080, proxy_protocol: true}\n"
                 "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                 "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n",
                 "t.yaml:2:5: ", "proxy_protocol needs trusted_proxies");
    expect_error("client_ip_header: x-real-ip\n", "t.yaml:1:19: ",
                 "auto, x-forwarded-for, forwarded");
}

TEST(errors_have_positions)
{
    expect_error("listen: [127.0.0.1:8080]\nfoo: 1\n", "t.yaml:2:1: ", "unknown key 'foo'");
    expect_error("workers: many\n", "t.yaml:1:10: ", "whole number");
    expect_error("workers: 0\n", "t.yaml:1:10: ", "out of range");
    expect_error("client:\n  header_timeout: soon\n", "t.yaml:2:19: ", "duration");
    expect_error("client:\n  max_head: 1e9\n", "t.yaml:2:13: ", "size");
    expect_error("client:\n  max_head: 100\n", "t.yaml:2:13: ", "out of range");
    expect_error("client: [1]\n", "t.yaml:1:9: ", "must be a mapping");
    expect_error("listen: [ 127.0.0.1:8080\n", "t.yaml:2:1: ", "YAML syntax error");
    expect_error("", "t.yaml:1:1: ", "empty");
    expect_error("listen:\n  - {tls: yes}\n", "t.yaml:2:11: ", "true or false");
    expect_error("upstreams:\n  app: {servers: []}\n", "t.yaml:2:18: ", "at least one");
    expect_error("upstreams:\n  $x: {servers: [127.0.0.1:1]}\n", "t.yaml:2:3: ", "not allowed");
    expect_error("listen: [127.0.0.1:8080]\nsites: [{hosts: ['bad host'], routes: [{path: /, upstream: x}]}]\n",
                 "t.yaml:2:", "host 'bad host'");
    expect_error("listen:\n  - address: 127.0.0.1:1\n    redirect_to_https: 443\n    tls: true\n",
                 "t.yaml:2:5: ", "cannot both");
    expect_error("tls:\n  min_version: '1.1'\n", "t.yaml:2:16: ", "1.2 or 1.3");
    expect_error("tls:\n  certificates:\n    - cert: a.pem\n", "t.yaml:3:7: ", "both cert and key");
}

TEST(all_errors_collected)
{
    char err[4096];
    const char *y = "a: 1\nb: 2\nworkers: x\nclient: {max_body: big}\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c == NULL);
    int lines = 0;
    for (const char *p = err; *p; p++)
        lines += *p == '\n';
    CHECK(lines >= 4);
    CHECK(strstr(err, "t.yaml:1:1:") != NULL && strstr(err, "t.yaml:2:1:") != NULL);
}

TEST(alias_bomb_is_bounded)
{
    /* A billion-laughs document must fail fast, not exhaust memory. */
    char y[4096];
    int n = snprintf(y, sizeof(y), "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for (int i = 1; i < 9; i++)
        n += snprintf(y + n, sizeof(y) - (size_t)n,
                      "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n",
                      i, i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    n += snprintf(y + n, sizeof(y) - (size_t)n, "sites: *a8\n");
    char err[4096];
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c == NULL);
}

TEST(refcount)
{
    char err[2048];
    struct tg_config *c = load(MINIMAL, err, sizeof(err));
    CHECK(c != NULL);
    tg_config_ref(c);
    tg_config_unref(c);
    CHECK_EQ_INT(atomic_load(&c->refs), 1);
    tg_config_unref(c);
}

int main(void)
{
    RUN(durations);
    RUN(sizes);
    RUN(sockaddrs);
    RUN(minimal_and_defaults);
    RUN(sites_before_upstreams_resolve);
    RUN(errors_have_positions);
    RUN(all_errors_collected);
    RUN(alias_bomb_is_bounded);
    RUN(refcount);
    RUN(routes_patterns_and_checks);
    return TEST_SUMMARY();
}
