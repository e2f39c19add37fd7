/* Config loader: defaults, every value parser, error positions, errors
 * collected, references resolved regardless of file order, and the split
 * between parsing (config.c) and building (config_build.c). */
#include "../../src/config.c"

#include <stdalign.h>
#include <stddef.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access.h"
#include "config_build.h"
#include "limiter.h"
#include "log.h"
#include "resolver.h"
#include "tenant.h"
#include "test.h"

static struct tg_config *load(const char *yaml, char *err, size_t errlen)
{
    return tg_config_load_buffer("t.yaml", yaml, strlen(yaml), err, errlen);
}

static const char *MINIMAL = "listen: [127.0.0.1:8080]\n"
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
    const char *y = "sites:\n"
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
    CHECK(r[0].methods == (1u << TG_HTTP_GET | 1u << TG_HTTP_HEAD | 1u << TG_HTTP_POST));
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
             "      - {path: /_/, upstream: app, allow: [private]}\n",
             head);
    expect_error(y, "t.yaml:7:9: ", "can never match: the route at line 6 (path '/')");
    /* A wildcard above the literal it covers; methods decide too. */
    snprintf(y, sizeof(y),
             "%ssites:\n"
             "  - hosts: [a.test]\n"
             "    routes:\n"
             "      - {path: /api/collections/*/auth-*, upstream: app}\n"
             "      - {path: /api/collections/users/auth-with-password, upstream: app}\n",
             head);
    expect_error(y, "t.yaml:7:9: ", "can never match");
    snprintf(y, sizeof(y),
             "%ssites:\n"
             "  - hosts: [a.test]\n"
             "    routes:\n"
             "      - {path: /api/, upstream: app, methods: [GET]}\n"
             "      - {path: /api/x, upstream: app}\n",
             head);
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
             "        upstream: app\n",
             head);
    expect_error(y, "t.yaml:6:21: ", "'**' must be a whole segment");
    snprintf(y, sizeof(y),
             "%ssites:\n"
             "  - hosts: [a.test]\n"
             "    routes:\n"
             "      - {path: /, upstream: app, methods: [GET, TRACE]}\n",
             head);
    expect_error(y, "t.yaml:6:49: ", "TRACE requests are refused");
    /* Body key parts. */
    snprintf(y, sizeof(y),
             "%srate_limit:\n"
             "  policies:\n"
             "    a: {rate: 1/s, key: [body:identity], body_fallback: ip}\n"
             "    b: {rate: 1/s, key: [form:user.email, json:identity]}\n"
             "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n",
             head);
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
             "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n",
             head);
    expect_error(y, "t.yaml:5:26: ", "body field name");
    /* PROXY protocol believes only trusted proxies. */
    expect_error("listen:\n  - {address: 127.0.0.1:8080, proxy_protocol: true}\n"
                 "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                 "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n",
                 "t.yaml:2:5: ", "proxy_protocol needs trusted_proxies");
    expect_error("client_ip_header: x-real-ip\n",
                 "t.yaml:1:19: ", "auto, x-forwarded-for, forwarded");
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
    expect_error("listen: [127.0.0.1:8080]\nsites: [{hosts: ['bad host'], routes: [{path: /, "
                 "upstream: x}]}]\n",
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
                      "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i,
                      i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
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

/* Every default, as the documentation states it (docs/configuration.md):
 * pinned before the defaults moved into the schema tables. */
TEST(every_default)
{
    char err[4096];
    const char *y = "listen: [127.0.0.1:8080]\n"
                    "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                    "rate_limit:\n"
                    "  redis: {address: '10.0.0.1:6380', db: 2}\n"
                    "  policies:\n"
                    "    p: {rate: 1/s}\n"
                    "    f: {rate: 1/s, count: failures}\n"
                    "tenants: {static: {t1: {servers: [127.0.0.1:9001]}}}\n"
                    "sites: [{hosts: ['{tenant}.a.test'], routes: [{path: /, upstream: app}]}]\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK_EQ_INT(c->workers, ncpu < 1 ? 1 : (ncpu > 256 ? 256 : ncpu));
    CHECK_EQ_INT(c->drain_timeout_ms, 30000);
    CHECK(c->user == NULL);
    CHECK_EQ_INT(c->client_ip_header, 0);
    CHECK(c->trusted_proxies == NULL);
    /* client */
    CHECK_EQ_INT(c->client.header_timeout_ms, 10000);
    CHECK_EQ_INT(c->client.keepalive_timeout_ms, 60000);
    CHECK_EQ_INT(c->client.body_timeout_ms, 60000);
    CHECK_EQ_INT(c->client.send_timeout_ms, 60000);
    CHECK_EQ_INT(c->client.min_body_rate, 0);
    CHECK_EQ_INT(c->client.max_request_line, 8192);
    CHECK_EQ_INT(c->client.max_head, 32768);
    CHECK_EQ_INT(c->client.max_headers, 100);
    CHECK_EQ_INT(c->client.max_body, 0);
    CHECK_EQ_INT(c->client.max_connections, 0);
    CHECK_EQ_INT(c->client.buffer_size, 16384);
    CHECK_EQ_INT(c->client.ipv6_prefix, 64);
    /* stream, log */
    CHECK_EQ_INT(c->stream.heartbeat_ms, 30000);
    CHECK_EQ_INT(c->stream.max_per_ip, 100);
    CHECK_EQ_INT(c->stream.idle_timeout_ms, 0);
    CHECK_EQ_INT(c->log.level, TG_LOG_INFO);
    CHECK(c->log.error == NULL);
    CHECK_EQ_STR(c->log.access, "stdout");
    CHECK_EQ_INT(c->log.access_flush_ms, 1000);
    CHECK_EQ_INT(c->log.access_buffer, 65536);
    CHECK(c->log.sample_2xx == 1.0);
    CHECK(c->sites[0].routes[0].access_log);
    CHECK(c->sites[0].routes[0].access_log_sample == 1.0);
    {
        /* Today's line, field for field (issue 21 item 4 kept it). */
        static const uint8_t today[] = {
            TG_LOG_FIELD_TIME,        TG_LOG_FIELD_CLIENT,     TG_LOG_FIELD_METHOD,
            TG_LOG_FIELD_HOST,        TG_LOG_FIELD_PATH,       TG_LOG_FIELD_PROTO,
            TG_LOG_FIELD_STATUS,      TG_LOG_FIELD_BYTES_IN,   TG_LOG_FIELD_BYTES_OUT,
            TG_LOG_FIELD_DURATION_MS, TG_LOG_FIELD_ENCODING,   TG_LOG_FIELD_UPSTREAM,
            TG_LOG_FIELD_UPSTREAM_MS, TG_LOG_FIELD_REQUEST_ID, TG_LOG_FIELD_TRACE_ID,
            TG_LOG_FIELD_SPAN_ID,     TG_LOG_FIELD_TLS,        TG_LOG_FIELD_TENANT,
            TG_LOG_FIELD_COUNTRY,     TG_LOG_FIELD_RATELIMIT,
        };
        CHECK_EQ_INT(c->log.nfields, TG_ARRAY_LEN(today));
        CHECK(memcmp(c->log.fields, today, sizeof(today)) == 0);
        CHECK(!(c->log.field_set & (1u << TG_LOG_FIELD_USER_AGENT)));
    }
    /* tls */
    CHECK_EQ_INT(c->tls.ncerts, 0);
    CHECK_EQ_INT(c->tls.min_version, TLS1_2_VERSION);
    CHECK(c->tls.ciphers == NULL && c->tls.ciphersuites == NULL);
    CHECK(c->tls.session_tickets);
    CHECK_EQ_INT(c->tls.ticket_key_rotation_ms, 3600000);
    CHECK_EQ_INT(c->tls.session_cache_size, 20480);
    CHECK_EQ_INT(c->tls.session_timeout_ms, 3600000);
    CHECK_EQ_INT(c->tls.handshake_timeout_ms, 10000);
    /* listeners: ours, then the admin listener */
    CHECK_EQ_INT(c->nlisteners, 2);
    CHECK_EQ_INT(c->listeners[0].backlog, 4096);
    CHECK(!c->listeners[0].tls && !c->listeners[0].admin);
    CHECK(!c->listeners[0].client_verify_optional);
    CHECK_EQ_INT(c->listeners[0].max_connections_per_ip, 0);
    CHECK_EQ_INT(c->listeners[0].redirect_to_https, 0);
    CHECK(c->listeners[1].admin);
    CHECK_EQ_STR(c->listeners[1].key, "127.0.0.1:9901");
    CHECK_EQ_INT(c->listeners[1].backlog, 128);
    CHECK(c->admin_token == NULL);
    CHECK_EQ_INT(c->tenant_series, 500);
    /* upstreams, and the pool settings of tenants */
    const struct tg_config_upstream *ups[] = {&c->upstreams[0], &c->tenants.upstream_defaults};
    for (size_t i = 0; i < 2; i++) {
        const struct tg_config_upstream *u = ups[i];
        CHECK(u->balance == TG_BALANCE_ROUND_ROBIN);
        CHECK_EQ_INT(u->keepalive, 32);
        CHECK_EQ_INT(u->keepalive_timeout_ms, 60000);
        CHECK_EQ_INT(u->keepalive_requests, 10000);
        CHECK_EQ_INT(u->connect_timeout_ms, 5000);
        CHECK_EQ_INT(u->read_timeout_ms, 60000);
        CHECK_EQ_INT(u->send_timeout_ms, 60000);
        CHECK_EQ_INT(u->retries, 1);
        CHECK_EQ_INT(u->max_connections, 0);
        CHECK_EQ_INT(u->max_response_head, 32768);
        CHECK(u->hash_key.kind == TG_RL_PART_IP);
        CHECK_EQ_INT(u->max_fails, 3);
        CHECK_EQ_INT(u->eject_ms, 1000);
        CHECK(!u->fail_on_5xx);
        CHECK(u->health_check.path == NULL);
        CHECK_EQ_INT(u->health_check.interval_ms, 5000);
        CHECK_EQ_INT(u->health_check.timeout_ms, 2000);
        CHECK_EQ_INT(u->health_check.fails, 2);
        CHECK_EQ_INT(u->health_check.passes, 2);
        CHECK(!u->tls && u->tls_verify && u->tls_ca == NULL && u->tls_server_name == NULL);
        CHECK_EQ_INT(u->resolve_interval_ms, 30000);
        CHECK(u->resolve == NULL); /* IP literals: no resolver */
    }
    /* rate limits */
    const struct tg_config_rate_limit *rl = &c->rate_limit;
    CHECK(rl->store == TG_RL_STORE_LOCAL);
    CHECK(!rl->headers && !rl->legacy_headers);
    CHECK(rl->exempt == NULL);
    CHECK_EQ_INT(rl->local_max_keys, 1000000);
    CHECK(rl->has_redis);
    CHECK_EQ_STR(rl->redis.address, "10.0.0.1:6380");
    CHECK_EQ_INT(rl->redis.db, 2);
    CHECK(rl->redis.password == NULL);
    CHECK_EQ_INT(rl->redis.timeout_ms, 50);
    CHECK_EQ_STR(rl->redis.key_prefix, "tollgate:rl:");
    CHECK(rl->on_error == TG_RL_ON_ERROR_LOCAL);
    CHECK_EQ_INT(rl->npolicies, 2);
    for (size_t i = 0; i < rl->npolicies; i++) {
        const struct tg_config_policy *p = &rl->policies[i];
        CHECK_EQ_INT(p->params.burst, 1);
        CHECK_EQ_INT(p->params.delay, 0);
        CHECK_EQ_INT(p->nparts, 1);
        CHECK(p->parts[0].kind == TG_RL_PART_IP);
        CHECK(!p->shadow && !p->needs_body && !p->body_fallback);
        CHECK(p->store == TG_RL_STORE_LOCAL);
        CHECK_EQ_INT(p->max_peek, 4096);
    }
    CHECK(!rl->policies[0].count_failures && rl->policies[1].count_failures);
    CHECK_EQ_INT(rl->policies[1].nfailure_statuses, 4);
    CHECK(rl->policies[1].failure_statuses[0] == 400 &&
          rl->policies[1].failure_statuses[1] == 401 &&
          rl->policies[1].failure_statuses[2] == 403 && rl->policies[1].failure_statuses[3] == 429);
    /* tenants: the directory inherits rate_limit.redis, with its own prefix */
    const struct tg_config_tenants *tn = &c->tenants;
    CHECK(tn->configured);
    CHECK(tn->directory == TG_TENANTS_STATIC);
    CHECK_EQ_INT(tn->cache_ttl_ms, 30000);
    CHECK_EQ_INT(tn->negative_ttl_ms, 2000);
    CHECK_EQ_INT(tn->stale_ttl_ms, 300000);
    CHECK_EQ_INT(tn->max_cached, 100000);
    CHECK_EQ_STR(tn->redis.address, "10.0.0.1:6380");
    CHECK_EQ_INT(tn->redis.db, 2);
    CHECK_EQ_INT(tn->redis.timeout_ms, 50);
    CHECK_EQ_STR(tn->redis.key_prefix, "tollgate:tenant:");
    CHECK_EQ_INT(tn->ntenants, 1);
    CHECK_EQ_INT(tn->tenants[0].burst, 0);
    CHECK(!tn->tenants[0].suspended);
    /* geoip off; default security headers */
    CHECK(c->geoip == NULL && c->geoip_asn == NULL && c->geoip_header == NULL);
    CHECK_EQ_INT(c->headers.nadd, 4);
    CHECK_EQ_INT(c->headers.nremove, 2);
    CHECK(!c->headers.override);
    /* routes inherit */
    const struct tg_config_route *r = &c->sites[0].routes[0];
    CHECK(!r->ignore_case && !r->stream);
    CHECK_EQ_INT(r->max_in_flight, 0);
    CHECK_EQ_INT(r->read_timeout_ms, 0);
    CHECK_EQ_INT(r->max_body, 0);
    CHECK(r->headers == &c->headers);
    tg_config_unref(c);

    /* Without rate_limit.redis the tenant directory has the same defaults. */
    c = load(MINIMAL, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL)
        return;
    CHECK(!c->rate_limit.has_redis && !c->tenants.configured);
    CHECK_EQ_STR(c->rate_limit.redis.address, "127.0.0.1:6379");
    CHECK_EQ_STR(c->tenants.redis.address, "127.0.0.1:6379");
    CHECK_EQ_INT(c->tenants.redis.timeout_ms, 50);
    CHECK_EQ_STR(c->tenants.redis.key_prefix, "tollgate:tenant:");
    CHECK_EQ_INT(c->tenants.cache_ttl_ms, 30000);
    tg_config_unref(c);
}

/* Issue 22: rate_limit.redis.cluster lists Redis Cluster seed nodes
 * instead of an address; tenants.redis inherits them unless it names an
 * address; TLS state (one server) is never put on a cluster. */
TEST(redis_cluster_seeds)
{
    char err[4096];
    const char *y = "listen: [127.0.0.1:8080]\n"
                    "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                    "rate_limit:\n"
                    "  redis: {cluster: [127.0.0.1:7000, '[::1]:7001'], timeout: 20ms}\n"
                    "  policies: {p: {rate: 1/s, store: redis}}\n"
                    "tenants: {directory: redis}\n"
                    "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    const struct tg_config_redis *r = &c->rate_limit.redis;
    CHECK_EQ_INT(r->ncluster, 2);
    CHECK_EQ_STR(r->cluster[0], "127.0.0.1:7000");
    CHECK_EQ_STR(r->cluster[1], "[::1]:7001");
    CHECK_EQ_INT(r->timeout_ms, 20);
    CHECK_EQ_INT(c->tenants.redis.ncluster, 2);
    CHECK_EQ_STR(c->tenants.redis.key_prefix, "tollgate:tenant:");
    CHECK(!c->tls.fleet); /* no implicit TLS fleet on a cluster */
    tg_config_unref(c);

    /* An address in tenants.redis replaces the inherited cluster. */
    y = "listen: [127.0.0.1:8080]\n"
        "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
        "rate_limit: {redis: {cluster: [127.0.0.1:7000]}}\n"
        "tenants: {directory: redis, redis: {address: 127.0.0.1:6390}}\n"
        "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_EQ_INT(c->tenants.redis.ncluster, 0);
        CHECK(c->tenants.redis.cluster == NULL);
        CHECK_EQ_STR(c->tenants.redis.address, "127.0.0.1:6390");
        tg_config_unref(c);
    }

    expect_error("rate_limit: {redis: {address: 127.0.0.1:6379, cluster: [127.0.0.1:7000]}}\n",
                 "t.yaml:1:56: ", "cluster, address and sentinels exclude each other");
    expect_error("rate_limit: {redis: {sentinels: ['127.0.0.1:26379'], master: m, "
                 "cluster: [127.0.0.1:7000]}}\n",
                 "t.yaml:1:", "cluster, address and sentinels exclude each other");
    expect_error("rate_limit: {redis: {cluster: []}}\n",
                 "t.yaml:1:31: ", "cluster needs 1 to 64 seed nodes");
    expect_error("rate_limit: {redis: {cluster: 127.0.0.1:7000}}\n",
                 "t.yaml:1:31: ", "cluster must be a list");
    expect_error("rate_limit:\n  redis:\n    cluster: [127.0.0.1:7000, 127.0.0.1]\n",
                 "t.yaml:3:31: ", "redis cluster node:");
    expect_error("rate_limit:\n  redis:\n    cluster: [127.0.0.1:99999]\n",
                 "t.yaml:3:15: ", "bad port");
    expect_error("rate_limit:\n  redis:\n    cluster: ['unix:/run/r.sock']\n",
                 "t.yaml:3:15: ", "redis cluster node:");
    expect_error("rate_limit:\n  redis:\n    cluster: [{a: 1}]\n",
                 "t.yaml:3:15: ", "must be a scalar");
    expect_error("rate_limit:\n  redis: {cluster: [127.0.0.1:7000], db: 3}\n",
                 "t.yaml:2:42: ", "Redis Cluster has only db 0");
    expect_error("tls:\n  redis: {cluster: [127.0.0.1:7000]}\n",
                 "t.yaml:2:20: ", "TLS state needs one Redis");
}

/* Every schema table's defaults go through their own parsers cleanly,
 * within their bounds (a default that did not would fail every load). */
TEST(schema_defaults_parse)
{
    static const struct {
        const char *name;
        const struct cfg_key *keys;
    } tables[] = {
        {"top", top_keys},
        {"client", client_keys},
        {"stream", stream_keys},
        {"log", log_keys},
        {"listen", listen_keys},
        {"tls", tls_keys},
        {"certificate", certificate_keys},
        {"health_check", health_check_keys},
        {"upstream", upstream_keys},
        {"policy", policy_keys},
        {"rate_limit", rate_limit_keys},
        {"rate_limit.local", rl_local_keys},
        {"rate_limit.redis", rl_redis_keys},
        {"tenants.redis", tenant_redis_keys},
        {"tenants", tenants_keys},
        {"tenant", tenant_keys},
        {"geoip", geoip_keys},
        {"site", site_keys},
        {"route", route_keys},
        {"route.cache", cache_keys},
        {"admin", admin_keys},
        {"tracing", tracing_keys},
        {"tracing.otlp", otlp_keys},
    };
    static _Alignas(max_align_t) char scratch[65536];
    struct tg_config *cfg = calloc(1, sizeof(*cfg));
    tg_arena_init(&cfg->arena, 4096);
    struct tg_config_errors errs;
    tg_config_errors_init(&errs, "defaults");
    struct cfg_ctx ctx = {.cfg = cfg, .errs = &errs};
    for (size_t t = 0; t < TG_ARRAY_LEN(tables); t++) {
        int before = errs.n;
        memset(scratch, 0, sizeof(scratch));
        apply_defaults(&ctx, tables[t].keys, scratch);
        if (errs.n != before)
            fprintf(stderr, "defaults of %s: %s\n", tables[t].name, errs.list[before].msg);
        CHECK_EQ_INT(errs.n, before);
        /* Every key is a name once per table. */
        for (const struct cfg_key *a = tables[t].keys; a->name != NULL; a++)
            for (const struct cfg_key *b = a + 1; b->name != NULL; b++)
                CHECK(strcmp(a->name, b->name) != 0);
    }
    if (ctx.defaults_ready)
        yaml_document_delete(&ctx.defaults);
    tg_arena_reset(&cfg->arena);
    free(cfg);
}

/* Parsing alone reads nothing but the YAML and builds nothing; the build
 * then does, and reports at the marks the parser kept. */
TEST(parse_without_building)
{
    char err[4096];
    const char *y =
        "listen:\n"                                                   /* 1 */
        "  - {address: 127.0.0.1:18443, tls: true}\n"                 /* 2 */
        "tls:\n"                                                      /* 3 */
        "  certificates:\n"                                           /* 4 */
        "    - {cert: /nonexistent/c.pem, key: /nonexistent/k.pem}\n" /* 5 */
        "geoip: {database: /nonexistent/country.mmdb}\n"              /* 6 */
        "upstreams: {app: {servers: [127.0.0.1:9000], tls: true, tls_ca: /nonexistent/ca.pem}}\n"
        "sites:\n"                                                       /* 8 */
        "  - hosts: [a.test, '*.b.test']\n"                              /* 9 */
        "    allow_countries: [GB]\n"                                    /* 10 */
        "    routes:\n"                                                  /* 11 */
        "      - {path: /x/../api, upstream: app, deny: [10.0.0.0/8]}\n" /* 12 */
        "      - {path: /, upstream: app}\n";                            /* 13 */
    struct tg_config *c = tg_config_parse_buffer("t.yaml", y, strlen(y), err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    /* The data is there, with its marks. */
    CHECK_EQ_INT(c->tls.ncerts, 1);
    CHECK_EQ_INT(c->tls.certs[0].mark.line, 5);
    CHECK_EQ_INT(c->tls.certs[0].mark.col, 7);
    CHECK_EQ_STR(c->geoip_files.database, "/nonexistent/country.mmdb");
    CHECK_EQ_INT(c->geoip_files.database_mark.line, 6);
    CHECK_EQ_STR(c->geoip_header, "X-Geo-Country");
    const struct tg_config_site *s = &c->sites[0];
    CHECK_EQ_INT(s->nhosts, 2);
    CHECK_EQ_STR(s->hosts[1], "*.b.test");
    CHECK_EQ_INT(s->host_marks[1].line, 9);
    CHECK_EQ_INT(s->host_marks[1].col, 21);
    CHECK(s->access_list.set && s->access_list.n == 1);
    CHECK(s->access_list.rules[0].kind == TG_ACCESS_COUNTRY);
    const struct tg_config_route *r = &s->routes[0];
    CHECK_EQ_STR(r->path_source, "/x/../api");
    CHECK_EQ_INT(r->path_mark.line, 12);
    CHECK_EQ_INT(r->path_mark.col, 16);
    CHECK(r->access_list.n == 1 && !r->access_list.rules[0].allow);
    CHECK(r->upstream == &c->upstreams[0]);
    /* ... and nothing was built. */
    CHECK(c->tls_server == NULL && c->certstore == NULL && c->upstreams[0].tls_client == NULL);
    CHECK(c->geoip == NULL && c->hosts == NULL);
    CHECK(r->pattern == NULL && r->path == NULL && r->access == NULL && s->access == NULL);
    CHECK(c->unbuild == NULL);

    /* The build opens what the parse only named: the GeoIP file fails at
     * its mark; with that, TLS is not even tried. */
    struct tg_config_errors errs;
    tg_config_errors_init(&errs, "t.yaml");
    CHECK_EQ_INT(tg_config_build(c, NULL, &errs), -1);
    tg_config_errors_format(&errs, err, sizeof(err));
    CHECK(strncmp(err, "t.yaml:6:19: ", 13) == 0);
    CHECK(strstr(err, "/nonexistent/country.mmdb") != NULL);
    CHECK(strstr(err, "c.pem") == NULL);
    /* What could be built was, and goes with the snapshot. */
    CHECK(c->hosts != NULL && r->pattern != NULL && r->access != NULL);
    CHECK_EQ_STR(r->path, "/api");
    tg_config_unref(c);

    /* tg_config_load is the two in one. */
    CHECK(load(y, err, sizeof(err)) == NULL);
    CHECK(strncmp(err, "t.yaml:6:19: ", 13) == 0);
}

TEST(build_errors_carry_marks)
{
    const char *tls_head = "listen:\n  - {address: 127.0.0.1:18443, tls: true}\n"
                           "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                           "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    char y[2048];
    /* A certificate: at its entry. */
    snprintf(y, sizeof(y),
             "%stls:\n  certificates:\n"
             "    - {cert: /nonexistent/c.pem, key: /nonexistent/k.pem}\n",
             tls_head);
    expect_error(y, "t.yaml:7:7: ", "cannot read certificate file '/nonexistent/c.pem'");
    /* An upstream's CA: at the upstream. */
    expect_error(
        "listen: [127.0.0.1:8080]\n"
        "upstreams:\n  app: {servers: [127.0.0.1:9000], tls: true, tls_ca: /nonexistent/ca.pem}\n"
        "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n",
        "t.yaml:3:3: ", "/nonexistent/ca.pem");
    /* A host pattern, a path pattern (at the byte), an access entry. */
    expect_error("listen: [127.0.0.1:8080]\nupstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                 "sites: [{hosts: [a.test, 'x y'], routes: [{path: /, upstream: app}]}]\n",
                 "t.yaml:3:26: ", "host 'x y'");
    expect_error("listen: [127.0.0.1:8080]\nupstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                 "sites: [{hosts: [a.test], routes: [{path: '/a/b**', upstream: app}]}]\n",
                 "t.yaml:3:48: ", "'**' must be a whole segment");
    expect_error("listen: [127.0.0.1:8080]\nupstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                 "sites: [{hosts: [a.test], routes: [{path: /, upstream: app, "
                 "allow: [10.0.0.0/8, 10.1.2.3/8]}]}]\n",
                 "t.yaml:3:81: ", "host bits set");
}

/* Routes read one resolved list of policies: their own, else their
 * site's, else rate_limit.global (issue 17: resolved at load, not per
 * request). */
TEST(rate_limit_resolved_at_load)
{
    char err[4096];
    const char *y = "listen: [127.0.0.1:8080]\n"
                    "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                    "rate_limit:\n"
                    "  policies: {g: {rate: 10/s}, s: {rate: 5/s}, r: {rate: 1/s}}\n"
                    "  global: [g]\n"
                    "sites:\n"
                    "  - hosts: [a.test]\n"
                    "    rate_limit: s\n"
                    "    routes:\n"
                    "      - {path: /own, upstream: app, rate_limit: [r, g]}\n"
                    "      - {path: /none, upstream: app, rate_limit: []}\n"
                    "      - {path: /, upstream: app}\n"
                    "  - hosts: [b.test]\n"
                    "    routes: [{path: /, upstream: app}]\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    const struct tg_config_policy *g = &c->rate_limit.policies[0];
    const struct tg_config_policy *s = &c->rate_limit.policies[1];
    const struct tg_config_policy *r = &c->rate_limit.policies[2];
    const struct tg_config_route *own = &c->sites[0].routes[0];
    const struct tg_config_route *none = &c->sites[0].routes[1];
    const struct tg_config_route *site = &c->sites[0].routes[2];
    const struct tg_config_route *global = &c->sites[1].routes[0];
    CHECK(own->rate_limit.set && own->rate_limit.n == 2 && own->rate_limit.items[0] == r &&
          own->rate_limit.items[1] == g);
    CHECK(none->rate_limit.set && none->rate_limit.n == 0);
    CHECK(site->rate_limit.set && site->rate_limit.n == 1 && site->rate_limit.items[0] == s);
    CHECK(global->rate_limit.set && global->rate_limit.n == 1 && global->rate_limit.items[0] == g);
    /* The limiter reads the route's list as it is. */
    CHECK(tg_limiter_policies(c, site) == &site->rate_limit);
    CHECK(tg_limiter_policies(c, global) == &global->rate_limit);
    tg_config_unref(c);
    /* No global list: no limits, said explicitly. */
    c = load(MINIMAL, err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK(c->sites[0].routes[0].rate_limit.set && c->sites[0].routes[0].rate_limit.n == 0);
        tg_config_unref(c);
    }
}

/* docs/configuration.md lists every key the schema has (issue 23): each
 * key table's names appear there in backquotes. The tables are counted in
 * config.c itself, so a new table that this list misses fails too. */
static const struct {
    const char *name;
    const struct cfg_key *keys;
} schema_tables[] = {
    {"client_keys", client_keys},
    {"stream_keys", stream_keys},
    {"http2_keys", http2_keys},
    {"log_keys", log_keys},
    {"otlp_keys", otlp_keys},
    {"tracing_keys", tracing_keys},
    {"listen_keys", listen_keys},
    {"health_check_keys", health_check_keys},
    {"upstream_keys", upstream_keys},
    {"policy_keys", policy_keys},
    {"rl_redis_keys", rl_redis_keys},
    {"tenant_redis_keys", tenant_redis_keys},
    {"tls_redis_keys", tls_redis_keys},
    {"acme_keys", acme_keys},
    {"certificate_keys", certificate_keys},
    {"tls_keys", tls_keys},
    {"rl_local_keys", rl_local_keys},
    {"rate_limit_keys", rate_limit_keys},
    {"tenant_keys", tenant_keys},
    {"tenants_keys", tenants_keys},
    {"activation_keys", activation_keys},
    {"geoip_keys", geoip_keys},
    {"compress_levels_keys", compress_levels_keys},
    {"compress_keys", compress_keys},
    {"route_keys", route_keys},
    {"cache_keys", cache_keys},
    {"site_keys", site_keys},
    {"admin_keys", admin_keys},
    {"top_keys", top_keys},
};

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf != NULL && fread(buf, 1, (size_t)n, f) == (size_t)n)
        buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Issue 23: `errors:` picks the form of tollgate's own error answers; a
 * route takes its site's unless it says. */
TEST(error_bodies_key)
{
    char err[4096];
    const char *y = "listen: [127.0.0.1:8080]\n"
                    "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                    "sites:\n"
                    "  - hosts: [a.test]\n"
                    "    errors: json\n"
                    "    routes:\n"
                    "      - {path: /api/, upstream: app}\n"
                    "      - {path: /, upstream: app, errors: html}\n"
                    "  - hosts: [b.test]\n"
                    "    routes: [{path: /, upstream: app}]\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    CHECK_EQ_INT(c->sites[0].errors, TG_ERRORS_JSON);
    CHECK_EQ_INT(c->sites[0].routes[0].errors, TG_ERRORS_JSON);
    CHECK_EQ_INT(c->sites[0].routes[1].errors, TG_ERRORS_HTML);
    CHECK_EQ_INT(c->sites[1].errors, TG_ERRORS_TEXT);
    CHECK_EQ_INT(c->sites[1].routes[0].errors, TG_ERRORS_TEXT);
    tg_config_unref(c);
    expect_error("listen: [127.0.0.1:8080]\n"
                 "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                 "sites: [{hosts: [a.test], routes: [{path: /, upstream: app, errors: xml}]}]\n",
                 "t.yaml:3:69: ", "errors must be one of text, json, html; not 'xml'");
}

/* Issue 20: `compress:` on a site and a route; the route starts from its
 * site's settings and replaces what it writes. */
TEST(compress_key)
{
    char err[4096];
    const char *y =
        "listen: [127.0.0.1:8080]\n"
        "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
        "sites:\n"
        "  - hosts: [a.test]\n"
        "    compress: {min_length: 10, order: [gzip, br], levels: {gzip: 1}}\n"
        "    routes:\n"
        "      - {path: /api/, upstream: app, compress: {types: [Text/HTML]}}\n"
        "      - {path: /off/, upstream: app, compress: false}\n"
        "      - {path: /, upstream: app}\n"
        "  - hosts: [b.test]\n"
        "    routes: [{path: /c/, upstream: app, compress: true}, {path: /, upstream: app}]\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    const struct tg_config_compress *s0 = &c->sites[0].compress;
    CHECK(s0->enabled);
    CHECK_EQ_INT(s0->min_length, 10);
    CHECK_EQ_INT(s0->norder, 2);
    CHECK_EQ_INT(s0->order[0], TG_ENC_GZIP);
    CHECK_EQ_INT(s0->order[1], TG_ENC_BR);
    CHECK_EQ_INT(s0->levels[TG_ENC_GZIP], 1);
    CHECK_EQ_INT(s0->levels[TG_ENC_ZSTD], 3);
    CHECK_EQ_INT(s0->levels[TG_ENC_BR], 3);
    const struct tg_config_compress *r0 = &c->sites[0].routes[0].compress;
    CHECK(r0->enabled);
    CHECK_EQ_INT(r0->ntypes, 1);
    CHECK_EQ_STR(r0->types[0], "text/html");
    CHECK_EQ_INT(r0->min_length, 10);
    CHECK_EQ_INT(r0->levels[TG_ENC_GZIP], 1);
    CHECK(!c->sites[0].routes[1].compress.enabled);
    CHECK(c->sites[0].routes[2].compress.enabled);
    CHECK_EQ_INT(c->sites[0].routes[2].compress.ntypes, 10);
    /* Defaults: off, the documented list and order. */
    const struct tg_config_compress *s1 = &c->sites[1].compress;
    CHECK(!s1->enabled);
    CHECK(c->sites[1].routes[0].compress.enabled);
    CHECK(!c->sites[1].routes[1].compress.enabled);
    CHECK_EQ_INT(s1->min_length, 1000);
    CHECK_EQ_INT(s1->norder, 3);
    CHECK_EQ_INT(s1->order[0], TG_ENC_ZSTD);
    CHECK_EQ_INT(s1->order[1], TG_ENC_BR);
    CHECK_EQ_INT(s1->order[2], TG_ENC_GZIP);
    CHECK_EQ_STR(s1->types[0], "text/*");
    CHECK_EQ_INT(s1->levels[TG_ENC_GZIP], 5);
    tg_config_unref(c);
    const char *head = "listen: [127.0.0.1:8080]\n"
                       "upstreams: {app: {servers: [127.0.0.1:9000]}}\n";
    char yaml[1024];
    struct {
        const char *site, *at, *what;
    } bad[] = {
        {"compress: off", "t.yaml:3:37: ", "compress must be true or false, not 'off'"},
        {"compress: {order: [gzip, deflate]}",
         "t.yaml:3:52: ", "order: 'deflate' is not one of zstd, br, gzip"},
        {"compress: {order: [gzip, gzip]}", "t.yaml:3:52: ", "order: 'gzip' is listed twice"},
        {"compress: {order: []}", "t.yaml:3:45: ", "order needs at least one coding"},
        {"compress: {levels: {gzip: 10}}", "t.yaml:3:53: ", "gzip: '10' is out of range"},
        {"compress: {levels: {lz4: 1}}", "t.yaml:3:47: ", "unknown key 'lz4' in levels"},
        {"compress: {types: [json]}", "t.yaml:3:46: ", "'json' is not a media type"},
        {"compress: {types: [text/h*]}", "t.yaml:3:46: ", "is not a media type"},
        {"compress: {min_length: -1}", "t.yaml:3:50: ", "min_length"},
        {"compress: {zip: true}", "t.yaml:3:38: ", "unknown key 'zip' in compress"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        snprintf(yaml, sizeof(yaml),
                 "%ssites: [{hosts: [a.test], %s, routes: [{path: /, upstream: app}]}]\n", head,
                 bad[i].site);
        expect_error(yaml, bad[i].at, bad[i].what);
    }
}

/* Issue 20: a route's `cache:` turns the response cache on, with its
 * defaults; its errors point at the value. */
TEST(route_cache_key)
{
    char err[4096];
    const char *y =
        "listen: [127.0.0.1:8080]\n"
        "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
        "sites:\n"
        "  - hosts: [a.test]\n"
        "    routes:\n"
        "      - {path: /files/, upstream: app, cache: {ttl: 1d, bypass_query: [token]}}\n"
        "      - {path: /, upstream: app}\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    const struct tg_config_cache *cc = &c->sites[0].routes[0].cache;
    CHECK(cc->enabled);
    CHECK_EQ_INT(cc->ttl_ms, 86400000);
    CHECK_EQ_INT(cc->max_size, 64 << 20);
    CHECK_EQ_INT(cc->max_entry_size, 4 << 20);
    CHECK(!cc->cache_authorized && cc->x_cache_header);
    CHECK_EQ_INT(cc->lock_timeout_ms, 5000);
    CHECK_EQ_INT(cc->nbypass_query, 1);
    CHECK_EQ_STR(cc->bypass_query[0], "token");
    CHECK(!c->sites[0].routes[1].cache.enabled);
    tg_config_unref(c);
    expect_error("listen: [127.0.0.1:8080]\n"
                 "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                 "sites: [{hosts: [a.test], routes: [{path: /, upstream: app, cache: {ttl: "
                 "soon}}]}]\n",
                 "t.yaml:3:74: ", "ttl must be a duration");
    expect_error("listen: [127.0.0.1:8080]\n"
                 "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                 "sites: [{hosts: [a.test], routes: [{path: /, upstream: app, cache: "
                 "{max_size: 1MiB, max_entry_size: 2MiB}}]}]\n",
                 "t.yaml:3:68: ", "cache.max_entry_size (2097152) is larger than max_size");
    expect_error("listen: [127.0.0.1:8080]\n"
                 "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                 "sites: [{hosts: [a.test], routes: [{path: /, upstream: app, cache: "
                 "{ttl: 1s, size: 1}}]}]\n",
                 "t.yaml:3:78: ", "unknown key 'size' in cache");
}

/* Issue 21: the tracing section, its defaults and its checks. */
TEST(tenant_activation_keys)
{
    const char *base =
        "listen: [127.0.0.1:8080]\n"
        "sites: [{hosts: [\"{tenant}.a.test\"], routes: [{path: /, upstream: $tenant}]}]\n";
    char y[1024], err[4096];
    snprintf(y, sizeof(y), "%stenants: {directory: redis, activation: {}}\n", base);
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK(c->tenants.activation.enabled && !c->tenants.activation.unknown);
        CHECK_EQ_INT(c->tenants.activation.timeout_ms, 10000);
        CHECK_EQ_INT(c->tenants.activation.max_waiting, 1000);
        CHECK(c->tenants.activation.stream == NULL);
        CHECK_EQ_INT(c->tenants.move_grace_ms, 10000);
        tg_config_unref(c);
    }
    snprintf(y, sizeof(y), "%stenants: {directory: redis}\n", base);
    c = load(y, err, sizeof(err));
    CHECK(c != NULL && !c->tenants.activation.enabled);
    if (c != NULL)
        tg_config_unref(c);
    snprintf(y, sizeof(y), "%stenants: {static: {a: {servers: [127.0.0.1:1]}}, activation: {}}\n",
             base);
    expect_error(y, "t.yaml:3:", "tenants.activation needs directory: redis");
    snprintf(y, sizeof(y), "%stenants: {directory: redis, activation: {timeout: 1ms}}\n", base);
    expect_error(y, "t.yaml:3:", "timeout");
    snprintf(y, sizeof(y), "%stenants: {directory: redis, activation: {max_waiting: 0}}\n", base);
    expect_error(y, "t.yaml:3:", "max_waiting");
    snprintf(y, sizeof(y), "%stenants: {directory: redis, activation: {later: true}}\n", base);
    expect_error(y, "t.yaml:3:", "later");
}

TEST(admin_tenant_series)
{
    const char *base = "listen: [127.0.0.1:8080]\n"
                       "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                       "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    char y[1024], err[4096];
    snprintf(y, sizeof(y), "%sadmin: {tenant_series: 0}\n", base);
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL && c->tenant_series == 0);
    if (c != NULL)
        tg_config_unref(c);
    snprintf(y, sizeof(y), "%sadmin: {tenant_series: 100001}\n", base);
    expect_error(y, "t.yaml:4:24: ", "tenant_series");
    snprintf(y, sizeof(y), "%sadmin: {tenant_series: many}\n", base);
    expect_error(y, "t.yaml:4:24: ", "whole number");
}

TEST(tracing_section)
{
    char err[4096];
    const char *base = "listen: [127.0.0.1:8080]\n"
                       "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                       "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    struct tg_config *c = load(base, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL)
        return;
    CHECK(!c->tracing.enabled);
    CHECK(c->tracing.sample_ratio > 0.0099 && c->tracing.sample_ratio < 0.0101);
    CHECK_EQ_STR(c->tracing.service_name, "tollgate");
    CHECK_EQ_INT(c->tracing.request_id, TG_TRACE_RID_OWN);
    CHECK_EQ_STR(c->tracing.otlp.endpoint, "http://127.0.0.1:4318/v1/traces");
    CHECK_EQ_INT(c->tracing.otlp.timeout_ms, 2000);
    CHECK_EQ_INT(c->tracing.otlp.batch, 512);
    CHECK_EQ_INT(c->tracing.otlp.queue, 8192);
    CHECK_EQ_INT(c->tracing.otlp.interval_ms, 1000);
    tg_config_unref(c);

    char y[1024];
    snprintf(y, sizeof(y),
             "%stracing: {enabled: true, sample_ratio: 0.25, request_id: trace_id,\n"
             "  otlp: {endpoint: 'http://[::1]:4318/t', batch: 10, queue: 20}}\n",
             base);
    c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    CHECK(c->tracing.enabled);
    CHECK(c->tracing.sample_ratio == 0.25);
    CHECK_EQ_INT(c->tracing.request_id, TG_TRACE_RID_TRACE_ID);
    CHECK_EQ_INT(c->tracing.otlp.batch, 10);
    CHECK_EQ_INT(c->tracing.otlp.queue, 20);
    tg_config_unref(c);

    static const struct {
        const char *text, *fragment;
    } bad[] = {
        {"tracing: {sample_ratio: 1.5}\n", "sample_ratio must be a number from 0 to 1"},
        {"tracing: {sample_ratio: -0.1}\n", "sample_ratio must be a number from 0 to 1"},
        {"tracing: {sample_ratio: 1%}\n", "sample_ratio must be a number from 0 to 1"},
        {"tracing: {otlp: {endpoint: 'https://c:4318/v1/traces'}}\n",
         "endpoint must be an http://host[:port]/path URL"},
        {"tracing: {otlp: {endpoint: 'http://'}}\n", "endpoint must be an http://"},
        {"tracing: {request_id: client}\n", "request_id must be one of own, trace_id"},
        {"tracing: {otlp: {batch: 0}}\n", "batch: '0' is out of range"},
        {"tracing: {nope: 1}\n", "unknown key 'nope' in tracing"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        snprintf(y, sizeof(y), "%s%s", base, bad[i].text);
        expect_error(y, "t.yaml:4:", bad[i].fragment);
    }
}

/* Issue 21 item 4: log.access_fields, log.sample_2xx and the routes'
 * access_log / access_log_sample. */
TEST(access_log_keys)
{
    char err[4096];
    const char *y = "listen: [127.0.0.1:8080]\n"
                    "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                    "log:\n"
                    "  access_fields: [status, user_agent, time, route, ratelimit]\n"
                    "  sample_2xx: 0.25\n"
                    "sites: [{hosts: [a.test], routes: [\n"
                    "  {path: /a, upstream: app, access_log_sample: 0.01},\n"
                    "  {path: /b, upstream: app, access_log: off},\n"
                    "  {path: /, upstream: app}]}]\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    static const uint8_t want[] = {TG_LOG_FIELD_STATUS, TG_LOG_FIELD_USER_AGENT, TG_LOG_FIELD_TIME,
                                   TG_LOG_FIELD_ROUTE, TG_LOG_FIELD_RATELIMIT};
    CHECK_EQ_INT(c->log.nfields, TG_ARRAY_LEN(want));
    CHECK(memcmp(c->log.fields, want, sizeof(want)) == 0);
    CHECK(c->log.field_set == ((1u << TG_LOG_FIELD_STATUS) | (1u << TG_LOG_FIELD_USER_AGENT) |
                               (1u << TG_LOG_FIELD_TIME) | (1u << TG_LOG_FIELD_ROUTE) |
                               (1u << TG_LOG_FIELD_RATELIMIT)));
    CHECK(c->log.sample_2xx == 0.25);
    const struct tg_config_route *r = c->sites[0].routes;
    CHECK(r[0].access_log && r[0].access_log_sample == 0.01);
    CHECK(!r[1].access_log && r[1].access_log_sample == 0.25);
    CHECK(r[2].access_log && r[2].access_log_sample == 0.25); /* the log's */
    tg_config_unref(c);

    /* all: every field, in the enum's order; every name round-trips. */
    c = load("listen: [127.0.0.1:8080]\n"
             "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
             "log: {access_fields: all}\n"
             "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n",
             err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_EQ_INT(c->log.nfields, TG_LOG_FIELD_COUNT);
        for (unsigned f = 0; f < TG_LOG_FIELD_COUNT; f++) {
            CHECK_EQ_INT(c->log.fields[f], f);
            CHECK(tg_config_log_field_names[f] != NULL);
        }
        tg_config_unref(c);
    }

    static const struct {
        const char *text, *at, *fragment;
    } bad[] = {
        {"log:\n  access_fields: [time, agent]\n",
         "t.yaml:5:25: ", "access_fields: unknown field 'agent' (time, client,"},
        {"log:\n  access_fields: [time, status, time]\n",
         "t.yaml:5:33: ", "access_fields: 'time' is listed twice"},
        {"log:\n  access_fields: []\n", "t.yaml:5:18: ", "access_fields needs at least one field"},
        {"log:\n  access_fields: time\n",
         "t.yaml:5:18: ", "access_fields must be a list of field names, or all"},
        {"log:\n  access_fields: [all, time]\n", "t.yaml:5:19: ", "unknown field 'all'"},
        {"log:\n  access_fields: [{time: 1}]\n", "t.yaml:5:19: ", "a field name must be a scalar"},
        {"log:\n  sample_2xx: 1.5\n", "t.yaml:5:15: ", "sample_2xx must be a number from 0 to 1"},
        {"log:\n  sample_2xx: -0.1\n", "t.yaml:5:15: ", "sample_2xx must be a number from 0 to 1"},
        {"log:\n  sample_2xx: 10%\n", "t.yaml:5:15: ", "sample_2xx must be a number from 0 to 1"},
        {"sites: [{hosts: [a.test], routes: [{path: /, upstream: app, access_log_sample: 2}]}]\n",
         "t.yaml:4:", "access_log_sample must be a number from 0 to 1, not '2'"},
        {"sites: [{hosts: [a.test], routes: [{path: /, upstream: app, access_log: maybe}]}]\n",
         "t.yaml:4:", "access_log must be on or off, not 'maybe'"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        char text[1024];
        bool has_sites = strncmp(bad[i].text, "sites:", 6) == 0;
        snprintf(text, sizeof(text),
                 "listen: [127.0.0.1:8080]\n"
                 "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                 "%s"
                 "%s",
                 has_sites ? "\n"
                           : "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n",
                 bad[i].text);
        expect_error(text, bad[i].at, bad[i].fragment);
    }
    /* true and false are on and off too. */
    c = load("listen: [127.0.0.1:8080]\n"
             "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
             "sites: [{hosts: [a.test], routes: [{path: /a, upstream: app, access_log: false},\n"
             "                                   {path: /, upstream: app, access_log: on}]}]\n",
             err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK(!c->sites[0].routes[0].access_log && c->sites[0].routes[1].access_log);
        tg_config_unref(c);
    }
}

/* Issue 22: a redis block names its server by address, or by the
 * sentinels that know the primary of `master`; never both. Every redis
 * block has the keys (one table macro), and what a block writes replaces
 * what it inherits. */
TEST(redis_sentinel_keys)
{
    char err[4096];
    const char *y = "listen: [127.0.0.1:8080]\n"
                    "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                    "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n"
                    "rate_limit:\n"
                    "  redis: {sentinels: ['127.0.0.1:26379', '[::1]:26380'], master: main,\n"
                    "          sentinel_password: s3cret, password: p, db: 3}\n"
                    "tenants:\n"
                    "  directory: redis\n"
                    "  redis: {master: other}\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    const struct tg_config_redis *rl = &c->rate_limit.redis;
    CHECK(rl->address == NULL);
    CHECK_EQ_INT(rl->nsentinels, 2);
    CHECK_EQ_STR(rl->sentinels[0], "127.0.0.1:26379");
    CHECK_EQ_STR(rl->sentinels[1], "[::1]:26380");
    CHECK_EQ_STR(rl->master, "main");
    CHECK_EQ_STR(rl->sentinel_password, "s3cret");
    CHECK_EQ_INT(rl->db, 3);
    /* tenants.redis: the sentinels inherited, its own master */
    const struct tg_config_redis *tn = &c->tenants.redis;
    CHECK(tn->address == NULL);
    CHECK_EQ_INT(tn->nsentinels, 2);
    CHECK_EQ_STR(tn->master, "other");
    CHECK_EQ_STR(tn->key_prefix, "tollgate:tenant:");
    /* tls.redis (a fleet through rate_limit.redis) too */
    CHECK_EQ_INT(c->tls.redis.nsentinels, 2);
    CHECK_EQ_STR(c->tls.redis.master, "main");
    tg_config_unref(c);

    /* An address written in tenants.redis replaces the inherited sentinels. */
    y = "listen: [127.0.0.1:8080]\n"
        "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
        "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n"
        "rate_limit: {redis: {sentinels: ['127.0.0.1:26379'], master: main}}\n"
        "tenants: {directory: redis, redis: {address: '127.0.0.1:6390'}}\n";
    c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    CHECK_EQ_STR(c->tenants.redis.address, "127.0.0.1:6390");
    CHECK_EQ_INT(c->tenants.redis.nsentinels, 0);
    CHECK(c->tenants.redis.master == NULL);
    CHECK_EQ_INT(c->rate_limit.redis.nsentinels, 1);
    tg_config_unref(c);

    static const char *base = "listen: [127.0.0.1:8080]\n"
                              "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                              "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    static const struct {
        const char *text, *prefix, *fragment;
    } bad[] = {
        {"rate_limit: {redis: {address: '127.0.0.1:6379', sentinels: ['127.0.0.1:1'], "
         "master: m}}\n",
         "t.yaml:4:60: ", "rate_limit.redis: address and sentinels exclude each other"},
        {"rate_limit: {redis: {sentinels: ['127.0.0.1:1']}}\n",
         "t.yaml:4:33: ", "rate_limit.redis: sentinels need master"},
        {"rate_limit: {redis: {master: m}}\n",
         "t.yaml:4:30: ", "rate_limit.redis: master needs sentinels"},
        {"rate_limit: {redis: {sentinel_password: x}}\n",
         "t.yaml:4:41: ", "sentinel_password needs sentinels"},
        {"rate_limit: {redis: {sentinels: ['127.0.0.1'], master: m}}\n",
         "t.yaml:4:34: ", "sentinels: '127.0.0.1' has no port"},
        {"rate_limit: {redis: {sentinels: ['127.0.0.1:0'], master: m}}\n",
         "t.yaml:4:34: ", "has a bad port"},
        {"rate_limit: {redis: {sentinels: ['unix:/run/s.sock'], master: m}}\n",
         "t.yaml:4:34: ", "a sentinel is host:port, not a unix socket"},
        {"rate_limit: {redis: {sentinels: [], master: m}}\n",
         "t.yaml:4:33: ", "sentinels must list 1 to 16 host:port addresses"},
        {"rate_limit: {redis: {sentinels: '127.0.0.1:1', master: m}}\n",
         "t.yaml:4:33: ", "sentinels must be a list"},
        {"rate_limit: {redis: {sentinels: ['127.0.0.1:1'], master: ''}}\n",
         "t.yaml:4:58: ", "master must not be empty"},
        {"tenants: {directory: redis, redis: {address: '127.0.0.1:1', sentinels: ['127.0.0.1:2'], "
         "master: m}}\n",
         "t.yaml:4:72: ", "tenants.redis: address and sentinels exclude each other"},
        {"tls: {redis: {sentinels: ['127.0.0.1:2']}}\n",
         "t.yaml:4:26: ", "tls.redis: sentinels need master"},
    };
    char text[1024];
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        snprintf(text, sizeof(text), "%s%s", base, bad[i].text);
        expect_error(text, bad[i].prefix, bad[i].fragment);
    }
}

TEST(docs_list_every_key)
{
    char *doc = slurp("docs/configuration.md");
    char *src = slurp("src/config.c");
    CHECK(doc != NULL && src != NULL);
    if (doc == NULL || src == NULL) {
        free(doc);
        free(src);
        return;
    }
    size_t tables = 0;
    for (const char *p = src; (p = strstr(p, "\nstatic const struct cfg_key ")) != NULL; p++)
        tables++;
    CHECK_EQ_INT(tables, TG_ARRAY_LEN(schema_tables));
    for (size_t t = 0; t < TG_ARRAY_LEN(schema_tables); t++) {
        for (const struct cfg_key *k = schema_tables[t].keys; k->name != NULL; k++) {
            /* `name`, `section.name`, `name: value`, or a member of a
             * mapping written out: `{name: value, name, ...}` */
            static const char *const forms[] = {
                "`%s`", ".%s`", "`%s:", "{%s:", "{%s,", ", %s:", ", %s,", ", %s}"};
            bool found = false;
            for (size_t f = 0; f < TG_ARRAY_LEN(forms) && !found; f++) {
                char pat[128];
                snprintf(pat, sizeof(pat), forms[f], k->name);
                found = strstr(doc, pat) != NULL;
            }
            if (!found) {
                fprintf(stderr, "docs/configuration.md does not list %s (%s)\n", k->name,
                        schema_tables[t].name);
                CHECK(!"a key is missing from docs/configuration.md");
            }
        }
    }
    free(doc);
    free(src);
}

/* ---- issue 23, item 7: quoted booleans, ${ENV}, paths, include -------------------------- */

/* `stream: "true"` was refused with "must be true or false, not 'true'":
 * the YAML 1.2 core schema's booleans are accepted in any quoting. */
TEST(quoted_booleans)
{
    char err[4096];
    const char *y =
        "listen:\n"
        "  - {address: 127.0.0.1:8080, h2c: \"true\", http2: 'FALSE'}\n"
        "upstreams: {app: {servers: [127.0.0.1:9000], fail_on_5xx: True}}\n"
        "sites: [{hosts: [a.test], routes: [{path: /b, upstream: app, stream: 'false'},\n"
        "                                   {path: /, upstream: app, stream: \"true\"}]}]\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    CHECK(c->listeners[0].h2c && !c->listeners[0].http2);
    CHECK(c->upstreams[0].fail_on_5xx);
    CHECK(!c->sites[0].routes[0].stream && c->sites[0].routes[1].stream);
    tg_config_unref(c);
    /* YAML 1.1's words stay refused, quoted or not. */
    expect_error("listen:\n  - {address: 127.0.0.1:8080, tls: \"yes\"}\n",
                 "t.yaml:2:36: ", "tls must be true or false, not 'yes'");
    expect_error("listen:\n  - {address: 127.0.0.1:8080, tls: 'on'}\n",
                 "t.yaml:2:36: ", "tls must be true or false, not 'on'");
}

static void set_test_env(void)
{
    setenv("TG_T_PORT", "9000", 1);
    setenv("TG_T_EMPTY", "", 1);
    setenv("TG_T_SECRET", "hunter2-hunter2-hunter2", 1);
    setenv("TG_T_TRUE", "true", 1);
    unsetenv("TG_T_UNSET");
}

static const struct tg_config_header *find_add(const struct tg_config *c, const char *name)
{
    for (size_t i = 0; i < c->headers.nadd; i++)
        if (strcasecmp(c->headers.add[i].name, name) == 0)
            return &c->headers.add[i];
    return NULL;
}

/* ${NAME}, ${NAME:-default} and $$ in values, read before the value is
 * parsed (so a number or a boolean may come from the environment). */
TEST(env_substitution)
{
    set_test_env();
    char err[4096];
    const char *y = "listen: [\"127.0.0.1:${TG_T_PORT:-1}\"]\n"
                    "upstreams:\n"
                    "  app: {servers: [\"${TG_T_UNSET:-127.0.0.1}:${TG_T_PORT}\"]}\n"
                    "rate_limit: {redis: {password: \"${TG_T_SECRET}\"}}\n"
                    "admin: {token: \"${TG_T_SECRET}\"}\n"
                    "headers:\n"
                    "  add: {X-Price: \"$$5 for $tenant\", X-Empty: \"<${TG_T_EMPTY:-dflt}>\",\n"
                    "        X-Key: \"k=${TG_T_SECRET}\", X-Plain: 'no ${TG_T_UNSET:-} here'}\n"
                    "sites:\n"
                    "  - hosts: [a.test]\n"
                    "    routes:\n"
                    "      - path: /\n"
                    "        upstream: app\n"
                    "        stream: ${TG_T_TRUE}\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    CHECK_EQ_STR(c->listeners[0].key, "127.0.0.1:9000");
    char addr[80];
    tg_config_format_sockaddr((struct sockaddr *)&c->upstreams[0].servers[0].addr.sa, addr,
                              sizeof(addr));
    CHECK_EQ_STR(addr, "127.0.0.1:9000");
    CHECK_EQ_STR(c->rate_limit.redis.password, "hunter2-hunter2-hunter2");
    CHECK_EQ_STR(c->admin_token, "hunter2-hunter2-hunter2");
    const struct tg_config_header *h = find_add(c, "X-Price");
    CHECK(h != NULL && strcmp(h->value, "$5 for $tenant") == 0);
    h = find_add(c, "X-Empty");
    CHECK(h != NULL && strcmp(h->value, "<dflt>") == 0);
    h = find_add(c, "X-Key");
    CHECK(h != NULL && strcmp(h->value, "k=hunter2-hunter2-hunter2") == 0);
    h = find_add(c, "X-Plain");
    CHECK(h != NULL && strcmp(h->value, "no  here") == 0);
    CHECK(c->sites[0].routes[0].stream);
    tg_config_unref(c);
}

TEST(env_substitution_errors)
{
    set_test_env();
    /* retries' bound (100) refuses 9000, quoting the value as written. */
    expect_error("upstreams: {app: {servers: [127.0.0.1:9000], retries: \"${TG_T_PORT}\"}}\n",
                 "t.yaml:1:55: ", "not '${TG_T_PORT}'");
    /* Unset, without a default: an error at the '$'. */
    expect_error("listen: [127.0.0.1:8080]\nworkers: 1${TG_T_UNSET}\n",
                 "t.yaml:2:11: ", "${TG_T_UNSET}: the environment variable TG_T_UNSET is not set");
    expect_error("listen: [127.0.0.1:8080]\nclient_ip_header: ${1X}\n",
                 "t.yaml:2:19: ", "'${1X}' is not a variable");
    expect_error("listen: [127.0.0.1:8080]\nclient_ip_header: \"${TG_T_PORT\"\n",
                 "t.yaml:2:20: ", "is not a variable");
    /* Quoted: at the '$' too, unless escapes moved it (then at the value). */
    expect_error("listen: [127.0.0.1:8080]\nclient_ip_header: 'a-${TG_T_UNSET}'\n",
                 "t.yaml:2:22: ", "TG_T_UNSET is not set");
    expect_error("listen: [127.0.0.1:8080]\nclient_ip_header: \"\\ta${TG_T_UNSET}\"\n",
                 "t.yaml:2:19: ", "TG_T_UNSET is not set");
    /* Keys are not substituted. */
    expect_error("listen: [127.0.0.1:8080]\n\"${TG_T_PORT}\": 1\n",
                 "t.yaml:2:1: ", "unknown key '${TG_T_PORT}'");
    /* A secret is never echoed: messages quote it as written. */
    char err[4096];
    const char *y = "listen: [127.0.0.1:8080]\nworkers: ${TG_T_SECRET}\n"
                    "client_ip_header: \"${TG_T_SECRET}\"\n";
    CHECK(load(y, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "t.yaml:2:10: workers must be a whole number, not '${TG_T_SECRET}'") != NULL);
    CHECK(strstr(err, "t.yaml:3:19: ") != NULL && strstr(err, "not '${TG_T_SECRET}'") != NULL);
    CHECK(strstr(err, "hunter2") == NULL);
}

/* What explain shows of a header from the environment: the text as
 * written, never the value. */
TEST(env_values_keep_their_written_form)
{
    set_test_env();
    char err[4096];
    const char *y = "listen: [127.0.0.1:8080]\n"
                    "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                    "headers: {add: {X-Key: \"k=${TG_T_SECRET}\", X-Plain: v}}\n"
                    "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL)
        return;
    const struct tg_config_header *h = find_add(c, "X-Key");
    CHECK(h != NULL && h->written != NULL && strcmp(h->written, "k=${TG_T_SECRET}") == 0);
    h = find_add(c, "X-Plain");
    CHECK(h != NULL && h->written == NULL);
    tg_config_unref(c);
}

static struct tg_config *parse_named(const char *name, const char *yaml, char *err, size_t errlen)
{
    return tg_config_parse_buffer(name, yaml, strlen(yaml), err, errlen);
}

/* Relative file paths are relative to the configuration file's directory
 * (they were relative to the working directory, so conf/tollgate.yaml
 * worked only from the repository root). */
TEST(paths_relative_to_the_file)
{
    char err[4096];
    const char *y = "listen:\n"
                    "  - {address: 127.0.0.1:8443, tls: true, client_ca: ca/clients.pem}\n"
                    "  - 127.0.0.1:8080\n"
                    "tls:\n"
                    "  certificates: [{cert: certs/a.crt, key: /abs/a.key}]\n"
                    "  ticket_key_file: secrets/ticket.key\n"
                    "  acme: {state_dir: acme, ca_bundle: ../ca.pem}\n"
                    "geoip: {database: geo/country.mmdb, asn_database: geo/asn.mmdb}\n"
                    "log: {error: logs/error.log, access: logs/access.log}\n"
                    "rate_limit: {redis: {address: 'unix:run/redis.sock'}}\n"
                    "tenants: {static: {}}\n"
                    "upstreams: {app: {servers: [127.0.0.1:9000], tls: true, tls_ca: ca/b.pem}}\n"
                    "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    struct tg_config *c = parse_named("conf/main.yaml", y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    CHECK_EQ_STR(c->listeners[0].client_ca, "conf/ca/clients.pem");
    CHECK_EQ_STR(c->tls.certs[0].cert, "conf/certs/a.crt");
    CHECK_EQ_STR(c->tls.certs[0].key, "/abs/a.key");
    CHECK_EQ_STR(c->tls.ticket_key_file, "conf/secrets/ticket.key");
    CHECK_EQ_STR(c->tls.acme.state_dir, "conf/acme");
    CHECK_EQ_STR(c->tls.acme.ca_bundle, "conf/../ca.pem");
    CHECK_EQ_STR(c->geoip_files.database, "conf/geo/country.mmdb");
    CHECK_EQ_STR(c->geoip_files.asn_database, "conf/geo/asn.mmdb");
    CHECK_EQ_STR(c->log.error, "conf/logs/error.log");
    CHECK_EQ_STR(c->log.access, "conf/logs/access.log");
    CHECK_EQ_STR(c->rate_limit.redis.address, "unix:conf/run/redis.sock");
    /* Inherited, not resolved twice. */
    CHECK_EQ_STR(c->tenants.redis.address, "unix:conf/run/redis.sock");
    CHECK_EQ_STR(c->tls.redis.address, "unix:conf/run/redis.sock");
    CHECK_EQ_STR(c->upstreams[0].tls_ca, "conf/ca/b.pem");
    tg_config_unref(c);
    /* An absolute configuration path; a bare name (the working directory). */
    c = parse_named("/etc/tollgate/tollgate.yaml", y, err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_EQ_STR(c->tls.certs[0].cert, "/etc/tollgate/certs/a.crt");
        CHECK_EQ_STR(c->tls.certs[0].key, "/abs/a.key");
        tg_config_unref(c);
    }
    c = parse_named("main.yaml", y, err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_EQ_STR(c->tls.certs[0].cert, "certs/a.crt");
        tg_config_unref(c);
    }
    /* log.access's words are not files. */
    c = parse_named("conf/main.yaml",
                    "listen: [127.0.0.1:8080]\nlog: {access: stdout}\n"
                    "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                    "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n",
                    err, sizeof(err));
    CHECK(c != NULL && strcmp(c->log.access, "stdout") == 0 && c->log.error == NULL);
    tg_config_unref(c);
}

/* A directory of its own for the files the include tests write. */
static char inc_dir[64];

static void put_file(const char *rel, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", inc_dir, rel);
    for (char *p = path + strlen(inc_dir) + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f != NULL) {
        fputs(text, f);
        fclose(f);
    }
}

static void drop_file(const char *rel)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", inc_dir, rel);
    unlink(path);
}

static struct tg_config *load_main(bool build, char *err, size_t errlen)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/main.yaml", inc_dir);
    return build ? tg_config_load(path, err, errlen) : tg_config_parse(path, err, errlen);
}

/* Expects the include tree to fail with a line starting "<dir>/<file>:"
 * followed by `rest`, and holding `fragment`. */
static void expect_include_error(const char *file_pos, const char *fragment)
{
    char err[8192], want[512];
    struct tg_config *c = load_main(true, err, sizeof(err));
    CHECK(c == NULL);
    if (c != NULL) {
        fprintf(stderr, "expected '%s' ... '%s', but it loaded\n", file_pos, fragment);
        tg_config_unref(c);
        return;
    }
    snprintf(want, sizeof(want), "%s/%s", inc_dir, file_pos);
    const char *line = strstr(err, want);
    bool ok = line != NULL && (line == err || line[-1] == '\n') && strstr(line, fragment) != NULL;
    if (!ok)
        fprintf(stderr, "expected '%s' ... '%s', got: %s", want, fragment, err);
    CHECK(ok);
}

static const char *MAIN_YAML = "listen: [127.0.0.1:8080]\n"                /* 1 */
                               "include: [conf.d/*.yaml, extra.yaml]\n"    /* 2 */
                               "upstreams:\n"                              /* 3 */
                               "  app: {servers: [127.0.0.1:9000]}\n"      /* 4 */
                               "rate_limit:\n"                             /* 5 */
                               "  policies: {main: {rate: 1/s}}\n"         /* 6 */
                               "sites:\n"                                  /* 7 */
                               "  - hosts: [main.test]\n"                  /* 8 */
                               "    routes: [{path: /, upstream: app}]\n"; /* 9 */

static void put_include_tree(void)
{
    put_file("main.yaml", MAIN_YAML);
    put_file("conf.d/a.yaml", "upstreams:\n"
                              "  api: {servers: [127.0.0.1:9001]}\n"
                              "rate_limit:\n"
                              "  policies: {a: {rate: 2/s}}\n"
                              "tenants:\n"
                              "  static: {t1: {servers: [127.0.0.1:9101]}}\n"
                              "sites:\n"
                              "  - hosts: [a.test]\n"
                              "    routes: [{path: /, upstream: api, rate_limit: [a, main]}]\n"
                              "log: {access: logs/access.log}\n");
    put_file("conf.d/b.yaml", "include: sub/*.yaml\n"
                              "sites:\n"
                              "  - hosts: [b.test]\n"
                              "    routes: [{path: /, upstream: app}]\n");
    put_file("conf.d/sub/c.yaml", "tenants:\n"
                                  "  static: {t2: {status: suspended}}\n"
                                  "sites:\n"
                                  "  - hosts: [c.test]\n"
                                  "    routes: [{path: /, upstream: api}]\n");
    put_file("conf.d/notes.txt", "not: yaml: at all: [\n");
    put_file("extra.yaml", "# only a client section\nclient: {max_body: 1MiB}\n");
}

/* include: globs relative to the including file, merged in order (the
 * file's own keys, then each match, depth first). */
TEST(include_merges_files)
{
    CHECK(mkdtemp(strcpy(inc_dir, "/tmp/tg_config_test_XXXXXX")) != NULL);
    put_include_tree();
    char err[8192];
    struct tg_config *c = load_main(false, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    CHECK_EQ_INT(c->nsites, 4);
    if (c->nsites == 4) {
        CHECK_EQ_STR(c->sites[0].hosts[0], "main.test");
        CHECK_EQ_STR(c->sites[1].hosts[0], "a.test");
        CHECK_EQ_STR(c->sites[2].hosts[0], "b.test");
        CHECK_EQ_STR(c->sites[3].hosts[0], "c.test");
        CHECK(c->sites[3].routes[0].upstream == tg_config_find_upstream(c, "api", 3));
        CHECK_EQ_INT(c->sites[1].routes[0].rate_limit.n, 2);
        /* Positions are the included file's. */
        CHECK_EQ_INT(c->sites[1].routes[0].mark.line, 9);
        CHECK_EQ_INT(c->sites[1].routes[0].mark.col, 14);
    }
    CHECK_EQ_INT(c->nupstreams, 2);
    CHECK_EQ_INT(c->rate_limit.npolicies, 2);
    CHECK_EQ_INT(c->tenants.ntenants, 2);
    CHECK_EQ_INT(c->client.max_body, 1 << 20);
    /* A path in an included file is relative to that file. */
    char want[256];
    snprintf(want, sizeof(want), "%s/conf.d/logs/access.log", inc_dir);
    CHECK_EQ_STR(c->log.access, want);
    tg_config_unref(c);

    /* The same from the directory itself: names as the user reaches them. */
    char cwd[4096];
    CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
    CHECK(chdir(inc_dir) == 0);
    put_file("conf.d/sub/c.yaml",
             "sites:\n  - hosts: [c.test]\n    bogus: 1\n    routes: [{path: /, upstream: app}]\n");
    c = tg_config_parse("main.yaml", err, sizeof(err));
    CHECK(c == NULL);
    if (strncmp(err, "conf.d/sub/c.yaml:3:5: unknown key 'bogus' in a site", 52) != 0)
        fprintf(stderr, "got: %s", err);
    CHECK(strncmp(err, "conf.d/sub/c.yaml:3:5: unknown key 'bogus' in a site", 52) == 0);
    CHECK(chdir(cwd) == 0);
    put_include_tree();

    /* ${ENV} in include patterns; a wildcard may match nothing. */
    setenv("TG_T_CONF", "conf.d", 1);
    put_file("main.yaml", "listen: [127.0.0.1:8080]\n"
                          "include: [\"${TG_T_CONF}/*.yaml\", none.d/*.yaml]\n"
                          "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                          "rate_limit: {policies: {main: {rate: 1/s}}}\n");
    c = load_main(false, err, sizeof(err));
    CHECK(c != NULL && c->nsites == 3);
    if (c == NULL)
        fprintf(stderr, "%s", err);
    tg_config_unref(c);
    put_include_tree();
}

/* What cannot be merged says where both sides are; errors in an included
 * file are at its own FILE:LINE:COL, the build's too. */
TEST(include_errors)
{
    put_include_tree();
    /* A name in two files. */
    put_file("extra.yaml", "upstreams:\n  app: {servers: [127.0.0.1:9002]}\n");
    char both[512];
    snprintf(both, sizeof(both), "upstream 'app' is defined twice: here and at %s/main.yaml:4:3",
             inc_dir);
    expect_include_error("extra.yaml:2:3: ", both);
    put_file("extra.yaml", "rate_limit:\n  policies: {a: {rate: 5/s}}\n");
    expect_include_error("extra.yaml:2:14: ",
                         "rate-limit policy 'a' is defined twice: here and at");
    put_file("extra.yaml", "tenants: {static: {t2: {servers: [127.0.0.1:1]}}}\n");
    expect_include_error("extra.yaml:1:20: ", "tenant 't2' is defined twice");
    /* A key that does not combine. */
    put_file("extra.yaml", "\nlisten: [127.0.0.1:8081]\n");
    snprintf(both, sizeof(both), "'listen' is set here and at %s/main.yaml:1:1", inc_dir);
    expect_include_error("extra.yaml:2:1: ", both);
    /* Keys of rate_limit other than policies: in one file only. */
    put_file("conf.d/b.yaml", "rate_limit: {headers: true}\n");
    put_file("extra.yaml", "rate_limit: {headers: false}\n");
    snprintf(both, sizeof(both), "'rate_limit.headers' is set here and at %s/conf.d/b.yaml:1:14",
             inc_dir);
    expect_include_error("extra.yaml:1:14: ", both);
    put_include_tree();
    put_file("extra.yaml", "sites: {a: 1}\n");
    expect_include_error("extra.yaml:1:8: ", "sites must be a list, not a mapping");
    /* The parser's and the build's errors, in the included file. */
    put_file("extra.yaml", "client:\n  max_body: lots\n");
    expect_include_error("extra.yaml:2:13: ", "max_body must be a size");
    put_file("extra.yaml", "sites:\n  - hosts: [x.test]\n    routes:\n"
                           "      - {path: /, upstream: app}\n"
                           "      - {path: /x, upstream: app}\n");
    expect_include_error("extra.yaml:5:9: ", "can never match: the route at line 4");
    put_file("extra.yaml", "client: {max_body: 1MiB\n");
    expect_include_error("extra.yaml:2:1: ", "YAML syntax error");
    put_file("extra.yaml", "- a\n- b\n");
    expect_include_error("extra.yaml:1:1: ", "an included file must be a mapping");
    put_file("extra.yaml", "include: {a: b}\n");
    expect_include_error("extra.yaml:1:10: ", "include must be a file pattern or a list");
    /* Cycles and depth. */
    put_file("extra.yaml", "include: extra.yaml\n");
    expect_include_error("extra.yaml:1:10: ", "includes itself");
    put_file("extra.yaml", "include: conf.d/../main.yaml\n");
    expect_include_error("extra.yaml:1:10: ", "include cycle");
    char name[32], text[64];
    for (int i = 0; i < 10; i++) {
        snprintf(name, sizeof(name), "deep/d%d.yaml", i);
        snprintf(text, sizeof(text), "include: d%d.yaml\n", i + 1);
        put_file(name, text);
    }
    put_file("deep/d10.yaml", "client: {max_body: 1}\n");
    put_file("extra.yaml", "include: deep/d0.yaml\n");
    expect_include_error("deep/d6.yaml:1:10: ", "d7.yaml' is more than 8 files deep");
    /* A name without a wildcard must exist. */
    put_file("extra.yaml", "include: [nope.yaml]\n");
    char nope[512];
    snprintf(nope, sizeof(nope), "include: cannot open '%s/nope.yaml'", inc_dir);
    expect_include_error("extra.yaml:1:11: ", nope);
    /* The main file's errors come first. */
    put_file("extra.yaml", "client: {max_body: x}\n");
    put_file("main.yaml", "workers: none\ninclude: extra.yaml\nlisten: [127.0.0.1:8080]\n"
                          "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                          "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n");
    char err[8192];
    CHECK(load_main(true, err, sizeof(err)) == NULL);
    char first[512];
    snprintf(first, sizeof(first), "%s/main.yaml:1:10: ", inc_dir);
    CHECK(strncmp(err, first, strlen(first)) == 0);
    CHECK(strstr(err, "/extra.yaml:1:20: max_body") != NULL);

    /* Clean up. */
    put_include_tree();
    for (int i = 0; i <= 10; i++) {
        snprintf(name, sizeof(name), "deep/d%d.yaml", i);
        drop_file(name);
    }
    static const char *const files[] = {"main.yaml",     "extra.yaml",        "conf.d/a.yaml",
                                        "conf.d/b.yaml", "conf.d/sub/c.yaml", "conf.d/notes.txt"};
    for (size_t i = 0; i < TG_ARRAY_LEN(files); i++)
        drop_file(files[i]);
    static const char *const dirs[] = {"deep", "conf.d/sub", "conf.d", ""};
    for (size_t i = 0; i < TG_ARRAY_LEN(dirs); i++) {
        char path[256];
        snprintf(path, sizeof(path), "%s/%s", inc_dir, dirs[i]);
        rmdir(path);
    }
}

/* -t warns, and loads, about an admin listener open to the network without
 * a token, and a redirect to a port no TLS listener is on. */
TEST(warnings_of_valid_configs)
{
    char err[4096];
    const char *base = "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                       "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    char y[2048];
    snprintf(y, sizeof(y),
             "listen:\n  - {address: 127.0.0.1:8080, redirect_to_https: 8443}\n"
             "admin: {listen: '0.0.0.0:9901'}\n%s",
             base);
    struct tg_config *c = tg_config_parse_buffer("t.yaml", y, strlen(y), err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_EQ_INT(c->nwarnings, 2);
        CHECK(c->nwarnings == 2 && strncmp(c->warnings[0],
                                           "t.yaml:2:5: warning: listener 127.0.0.1:8080: "
                                           "redirect_to_https: 8443",
                                           60) == 0);
        CHECK(c->nwarnings == 2 &&
              strncmp(c->warnings[1], "t.yaml:3:17: warning: admin.listen 0.0.0.0:9901", 46) == 0);
        tg_config_unref(c);
    }
    /* A token, a loopback address, a TLS listener on the port: nothing. */
    snprintf(y, sizeof(y),
             "listen:\n  - {address: 127.0.0.1:8080, redirect_to_https: 8443}\n"
             "  - {address: '[::1]:8443', tls: true}\n"
             "admin: {listen: '0.0.0.0:9901', token: abcdefghijklmnopq}\n%s",
             base);
    c = tg_config_parse_buffer("t.yaml", y, strlen(y), err, sizeof(err));
    CHECK(c != NULL && c->nwarnings == 0);
    tg_config_unref(c);
    snprintf(y, sizeof(y), "listen: [127.0.0.1:8080]\nadmin: {listen: '[::1]:9901'}\n%s", base);
    c = tg_config_parse_buffer("t.yaml", y, strlen(y), err, sizeof(err));
    CHECK(c != NULL && c->nwarnings == 0);
    tg_config_unref(c);
}

/* Issue 21 (dashboard): admin.allow and admin.deny are prefix lists as a
 * site's are; a bad entry is an error at the entry, and the country and
 * ASN lists are not admin keys. */
TEST(admin_access_lists)
{
    char err[4096];
    const char *base = "listen: [127.0.0.1:8080]\n"
                       "upstreams: {app: {servers: [127.0.0.1:9000]}}\n"
                       "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    char y[2048];
    snprintf(y, sizeof(y),
             "%sadmin: {listen: 127.0.0.1:9901, allow: [10.0.0.0/8, loopback], "
             "deny: [10.1.0.0/16]}\n",
             base);
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL && c->admin_access != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    static const struct {
        const char *addr;
        bool allowed;
    } cases[] = {
        {"10.2.3.4", true},
        {"127.0.0.1", true},
        {"10.1.2.3", false},
        {"192.0.2.1", false},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        struct tg_addr a;
        CHECK(tg_addr_parse(cases[i].addr, strlen(cases[i].addr), &a) == 0);
        CHECK(tg_access_check(c->admin_access, &a, NULL, 0, NULL) == cases[i].allowed);
    }
    tg_config_unref(c);
    /* Without the lists: no rules, anyone who reaches the listener. */
    snprintf(y, sizeof(y), "%sadmin: {listen: 127.0.0.1:9901}\n", base);
    c = load(y, err, sizeof(err));
    CHECK(c != NULL && c->admin_access == NULL);
    tg_config_unref(c);

    snprintf(y, sizeof(y), "%sadmin: {listen: 127.0.0.1:9901, allow: [10.0.0.1/8]}\n", base);
    expect_error(y, "t.yaml:4:41: ", "allow: \"10.0.0.1/8\": host bits set");
    snprintf(y, sizeof(y), "%sadmin: {listen: 127.0.0.1:9901, deny: [nowhere]}\n", base);
    expect_error(y, "t.yaml:4:40: ", "not an IP prefix or a preset");
    snprintf(y, sizeof(y), "%sadmin: {listen: 127.0.0.1:9901, allow: 10.0.0.0/8}\n", base);
    expect_error(y, "t.yaml:4:40: ", "allow must be a list, not a scalar");
    snprintf(y, sizeof(y), "%sadmin: {listen: 127.0.0.1:9901, allow_countries: [GB]}\n", base);
    expect_error(y, "t.yaml:4:33: ", "unknown key 'allow_countries' in admin");
}

/* Issue 22 item 5: servers may be names. IP literals are parsed as they
 * always were (no resolver group); a name is resolved at load (every
 * address, A and AAAA) and becomes a resolver group; a name that does not
 * resolve now is an error at its position (-t, start and reload say so);
 * resolve_interval is checked like any duration. */
TEST(server_names)
{
    char err[4096];
    const char *y = "listen: [127.0.0.1:8080]\n"
                    "upstreams:\n"
                    "  lit: {servers: [127.0.0.1:9000, '[::1]:9001']}\n"
                    "  app:\n"
                    "    servers: [127.0.0.1:9000, localhost:9002]\n"
                    "    resolve_interval: 200ms\n"
                    "tenants:\n"
                    "  upstream_defaults: {resolve_interval: 5s}\n"
                    "  static: {t1: {servers: ['localhost:9003']}, t2: {servers: [127.0.0.1:1]}}\n"
                    "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    struct tg_config *c = load(y, err, sizeof(err));
    CHECK(c != NULL);
    if (c == NULL) {
        fprintf(stderr, "%s", err);
        return;
    }
    const struct tg_config_upstream *lit = tg_config_find_upstream(c, "lit", 3);
    const struct tg_config_upstream *app = tg_config_find_upstream(c, "app", 3);
    CHECK(lit != NULL && app != NULL);
    if (lit != NULL) {
        CHECK(lit->resolve == NULL);
        CHECK(lit->servers[0].host == NULL && lit->servers[1].host == NULL);
        CHECK_EQ_STR(lit->servers[1].addr.text, "[::1]:9001");
        CHECK_EQ_INT(lit->servers[1].addr.sa.ss_family, AF_INET6);
    }
    if (app != NULL) {
        CHECK_EQ_INT(app->resolve_interval_ms, 200);
        CHECK(app->resolve != NULL);
        CHECK_EQ_INT(app->nservers, 2);
        CHECK_EQ_STR(app->servers[1].host, "localhost");
        CHECK_EQ_STR(app->servers[1].addr.text, "localhost:9002");
        CHECK_EQ_INT(app->servers[1].port, 9002);
        CHECK(app->servers[1].nresolved >= 1);
        struct tg_server_set *set = tg_resolver_group_set(app->resolve);
        CHECK(set != NULL && set->n >= 2);
        if (set != NULL && set->n >= 2) {
            CHECK_EQ_STR(set->servers[0].addr.text, "127.0.0.1:9000");
            CHECK(set->servers[0].host == NULL);
            bool v4 = false;
            for (size_t i = 1; i < set->n; i++) {
                CHECK_EQ_STR(set->servers[i].host, "localhost");
                v4 |= strcmp(set->servers[i].addr.text, "127.0.0.1:9002") == 0;
            }
            CHECK(v4);
        }
        tg_server_set_unref(set);
    }
    CHECK_EQ_INT(c->tenants.upstream_defaults.resolve_interval_ms, 5000);
    CHECK(c->tenants.ntenants == 2);
    if (c->tenants.ntenants == 2) {
        CHECK(c->tenants.tenants[0].resolve != NULL);
        CHECK(c->tenants.tenants[1].resolve == NULL);
        struct tg_tenant *t = tg_tenant_static(c->tenants.index, "t1", 2);
        CHECK(t != NULL && t->upstream.resolve == c->tenants.tenants[0].resolve);
    }
    tg_config_unref(c);

    expect_error("upstreams:\n  app:\n    servers:\n      - 127.0.0.1:1\n"
                 "      - nonexistent.invalid:80\n",
                 "t.yaml:5:9: ", "server: cannot resolve 'nonexistent.invalid'");
    expect_error("tenants:\n  static:\n    t1: {servers: [nonexistent.invalid:80]}\n",
                 "t.yaml:3:20: ", "cannot resolve 'nonexistent.invalid'");
    expect_error("upstreams:\n  app: {servers: ['bad host!:80']}\n",
                 "t.yaml:2:19: ", "'bad host!:80' has a bad address");
    expect_error("upstreams:\n  app: {servers: ['[example.com]:80']}\n",
                 "t.yaml:2:19: ", "has a bad address");
    expect_error("upstreams:\n  app: {servers: [localhost]}\n", "t.yaml:2:19: ", "has no port");
    expect_error("upstreams:\n  app: {servers: [127.0.0.1:1], resolve_interval: 50ms}\n",
                 "t.yaml:2:51: ", "out of range");
    expect_error("upstreams:\n  app: {servers: [127.0.0.1:1], resolve_interval: often}\n",
                 "t.yaml:2:51: ", "duration");
    expect_error("upstreams:\n  app: {servers: [127.0.0.1:1], resolve_interval: 0}\n",
                 "t.yaml:2:51: ", "out of range");
    expect_error("tenants:\n  upstream_defaults: {resolve_interval: 2d}\n",
                 "t.yaml:2:41: ", "out of range");

    /* Parsing a server alone never resolves anything. */
    struct tg_config_server srv;
    char host[256];
    CHECK(tg_config_parse_server("nonexistent.invalid:8080", &srv, host, sizeof(host), err,
                                 sizeof(err)) == 0);
    CHECK(srv.host == host && strcmp(host, "nonexistent.invalid") == 0 && srv.port == 8080);
    CHECK(tg_config_parse_server("10.0.0.1:80", &srv, host, sizeof(host), err, sizeof(err)) == 0);
    CHECK(srv.host == NULL && srv.addr.sa.ss_family == AF_INET);
    CHECK(tg_config_parse_server("[fd00::7]:8080", &srv, host, sizeof(host), err, sizeof(err)) ==
          0);
    CHECK(srv.host == NULL && srv.addr.sa.ss_family == AF_INET6);
    CHECK(tg_config_parse_server("a_b-c.d:1", &srv, host, sizeof(host), err, sizeof(err)) == 0);
    CHECK(tg_config_parse_server("-a:1", &srv, host, sizeof(host), err, sizeof(err)) < 0);
    CHECK(tg_config_parse_server("a b:1", &srv, host, sizeof(host), err, sizeof(err)) < 0);
    CHECK(tg_config_parse_server("a:0", &srv, host, sizeof(host), err, sizeof(err)) < 0);
}

int main(void)
{
    RUN(schema_defaults_parse);
    RUN(redis_cluster_seeds);
    RUN(compress_key);
    RUN(tenant_activation_keys);
    RUN(admin_tenant_series);
    RUN(tracing_section);
    RUN(access_log_keys);
    RUN(docs_list_every_key);
    RUN(redis_sentinel_keys);
    RUN(route_cache_key);
    RUN(error_bodies_key);
    RUN(parse_without_building);
    RUN(build_errors_carry_marks);
    RUN(rate_limit_resolved_at_load);
    RUN(every_default);
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
    RUN(quoted_booleans);
    RUN(env_substitution);
    RUN(env_substitution_errors);
    RUN(env_values_keep_their_written_form);
    RUN(paths_relative_to_the_file);
    RUN(include_merges_files);
    RUN(include_errors);
    RUN(warnings_of_valid_configs);
    RUN(admin_access_lists);
    RUN(server_names);
    return TEST_SUMMARY();
}
