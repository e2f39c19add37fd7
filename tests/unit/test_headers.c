/* Header rules: the fields a response gets (the backend's minus hop-by-hop
 * ones, those its Connection names, framing and the removed ones; then the
 * security and configured headers, the request id, extra and rate-limit
 * lines), the head sent upstream (hop-by-hop out, the client chain as
 * identified, X-Real-IP, X-Forwarded-*, framing from the body length,
 * request rules), and request ids. */
#include "../../src/headers.c"

#include <inttypes.h>

#include "access.h"
#include "config_build.h"
#include "test.h"

static struct tg_config *load(const char *yaml)
{
    char err[4096];
    struct tg_config *c = tg_config_load_buffer("t.yaml", yaml, strlen(yaml), err, sizeof(err));
    if (c == NULL)
        fprintf(stderr, "%s", err);
    CHECK(c != NULL);
    return c;
}

/* The value of `name` in a vector, NUL-terminated into buf; NULL if none,
 * and the number of times it appears in *count. */
static const char *field(const struct tg_http_headers *h, const char *name, char *buf, size_t cap,
                         int *count)
{
    const char *found = NULL;
    *count = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (!tg_str_caseeq(h->v[i].name, name))
            continue;
        if ((*count)++ == 0) {
            snprintf(buf, cap, "%.*s", (int)h->v[i].value.n, h->v[i].value.p);
            found = buf;
        }
    }
    return found;
}

#define HDR(n, v)            \
    {                        \
        TG_STR(n), TG_STR(v) \
    }

TEST(response_fields_drop_hop_by_hop_and_add_ours)
{
    struct tg_config *cfg =
        load("listen: [127.0.0.1:18080]\n"
             "upstreams: {app: {servers: [127.0.0.1:1]}}\n"
             "headers: {add: {X-Added: yes}}\n"
             "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n");
    if (cfg == NULL)
        return;
    struct tg_http_header b[] = {
        HDR("Connection", "X-Hop, keep-alive"),
        HDR("X-Hop", "1"),
        HDR("Keep-Alive", "t=5"),
        HDR("Transfer-Encoding", "chunked"),
        HDR("Content-Length", "5"),
        HDR("Server", "x"),
        HDR("X-Powered-By", "php"),
        HDR("X-App", "1"),
        HDR("Upgrade", "h2c"),
        HDR("X-Frame-Options", "SAMEORIGIN"),
        HDR("X-Request-Id", "spoofed"),
        HDR("Set-Cookie", "a=1"),
        HDR("Set-Cookie", "b=2"),
    };
    struct tg_http_headers backend = {b, TG_ARRAY_LEN(b), TG_ARRAY_LEN(b)};
    struct tg_arena arena;
    tg_arena_init(&arena, 1024);
    struct tg_headers_response in = {.rules = &cfg->headers,
                                     .hsts = false,
                                     .request_id = TG_STR("rid1"),
                                     .extra = "Retry-After: 1\r\nX-Two: 2\r\n"};
    struct tg_http_headers out;
    CHECK(tg_headers_response_fields(&arena, &in, &backend, &out) == 0);
    char v[128];
    int n;
    CHECK(field(&out, "X-App", v, sizeof(v), &n) != NULL && n == 1);
    CHECK_EQ_INT((field(&out, "Set-Cookie", v, sizeof(v), &n), n), 2);
    const char *gone[] = {"Connection",        "X-Hop",          "Keep-Alive",
                          "Transfer-Encoding", "Content-Length", "Server",
                          "X-Powered-By",      "Upgrade",        "Strict-Transport-Security"};
    for (size_t i = 0; i < TG_ARRAY_LEN(gone); i++)
        if (field(&out, gone[i], v, sizeof(v), &n) != NULL) {
            fprintf(stderr, "%s should be gone\n", gone[i]);
            CHECK(false);
        }
    /* The backend's own X-Frame-Options stays (no override); ours are added. */
    CHECK_EQ_STR(field(&out, "X-Frame-Options", v, sizeof(v), &n), "SAMEORIGIN");
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_STR(field(&out, "X-Content-Type-Options", v, sizeof(v), &n), "nosniff");
    CHECK_EQ_STR(field(&out, "X-Added", v, sizeof(v), &n), "yes");
    CHECK_EQ_STR(field(&out, "X-Request-Id", v, sizeof(v), &n), "rid1");
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_STR(field(&out, "Retry-After", v, sizeof(v), &n), "1");
    CHECK_EQ_STR(field(&out, "X-Two", v, sizeof(v), &n), "2");

    /* The backend sent no Date: ours (issue 23). */
    CHECK(field(&out, "Date", v, sizeof(v), &n) != NULL);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(strlen(v), 29);
    CHECK(strcmp(v + 25, " GMT") == 0);

    /* Where HSTS may go, HSTS too, for the name only (issue 23); a 101
     * keeps its Upgrade. */
    in.hsts = true;
    in.keep_upgrade = true;
    CHECK(tg_headers_response_fields(&arena, &in, &backend, &out) == 0);
    CHECK_EQ_STR(field(&out, "Strict-Transport-Security", v, sizeof(v), &n), "max-age=31536000");
    CHECK_EQ_STR(field(&out, "Upgrade", v, sizeof(v), &n), "h2c");
    tg_arena_reset(&arena);
    tg_config_unref(cfg);
}

/* Issue 23: answers carried no Date. A backend's Date is its own clock's
 * and stays (one); a response without one gets ours. */
TEST(response_fields_date)
{
    struct tg_config *cfg =
        load("listen: [127.0.0.1:18080]\n"
             "upstreams: {app: {servers: [127.0.0.1:1]}}\n"
             "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n");
    if (cfg == NULL)
        return;
    struct tg_http_header b[] = {HDR("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                                 HDR("Date", "Mon, 07 Nov 1994 08:49:37 GMT")};
    struct tg_http_headers backend = {b, TG_ARRAY_LEN(b), TG_ARRAY_LEN(b)};
    struct tg_arena arena;
    tg_arena_init(&arena, 1024);
    struct tg_headers_response in = {.rules = &cfg->headers};
    struct tg_http_headers out;
    char v[128];
    int n;
    CHECK(tg_headers_response_fields(&arena, &in, &backend, &out) == 0);
    CHECK_EQ_STR(field(&out, "Date", v, sizeof(v), &n), "Sun, 06 Nov 1994 08:49:37 GMT");
    CHECK_EQ_INT(n, 1);
    CHECK(tg_headers_response_fields(&arena, &in, NULL, &out) == 0);
    CHECK(field(&out, "Date", v, sizeof(v), &n) != NULL);
    CHECK_EQ_INT(n, 1);
    /* The format, against the C library's for the same second. */
    struct tg_str d = tg_headers_date();
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char want[64];
    strftime(want, sizeof(want), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (d.n == strlen(want) && memcmp(d.p, want, d.n) != 0) { /* a second may have passed */
        d = tg_headers_date();
        now = time(NULL);
        gmtime_r(&now, &tm);
        strftime(want, sizeof(want), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    }
    CHECK_EQ_MEM(d.p, d.n, want);
    /* A rule cannot add a second one. */
    char err[4096];
    const char *bad = "listen: [127.0.0.1:18080]\n"
                      "upstreams: {app: {servers: [127.0.0.1:1]}}\n"
                      "headers: {add: {Date: x}}\n"
                      "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n";
    CHECK(tg_config_load_buffer("t.yaml", bad, strlen(bad), err, sizeof(err)) == NULL);
    CHECK(strstr(err, "managed by tollgate") != NULL);
    tg_arena_reset(&arena);
    tg_config_unref(cfg);
}

TEST(response_fields_override_replaces_the_backends)
{
    struct tg_config *cfg = load("listen: [127.0.0.1:18080]\n"
                                 "upstreams: {app: {servers: [127.0.0.1:1]}}\n"
                                 "sites: [{hosts: [a.test], routes: [{path: /, upstream: app,"
                                 " headers: {override: true, remove: [X-Secret],"
                                 " add: {Cache-Control: no-store}}}]}]\n");
    if (cfg == NULL)
        return;
    struct tg_http_header b[] = {HDR("Cache-Control", "public"), HDR("X-Frame-Options", "ALLOW"),
                                 HDR("X-Secret", "s"), HDR("X-Keep", "k")};
    struct tg_http_headers backend = {b, TG_ARRAY_LEN(b), TG_ARRAY_LEN(b)};
    struct tg_arena arena;
    tg_arena_init(&arena, 1024);
    struct tg_headers_response in = {.rules = cfg->sites[0].routes[0].headers};
    struct tg_http_headers out;
    CHECK(tg_headers_response_fields(&arena, &in, &backend, &out) == 0);
    char v[128];
    int n;
    CHECK_EQ_STR(field(&out, "Cache-Control", v, sizeof(v), &n), "no-store");
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_STR(field(&out, "X-Frame-Options", v, sizeof(v), &n), "DENY");
    CHECK_EQ_INT(n, 1);
    CHECK(field(&out, "X-Secret", v, sizeof(v), &n) == NULL);
    CHECK(field(&out, "X-Keep", v, sizeof(v), &n) != NULL);
    tg_arena_reset(&arena);
    tg_config_unref(cfg);
}

/* The head toward the backend, as text. */
static const char *upstream_head(const struct tg_headers_upstream *in, char *text, size_t cap)
{
    struct {
        struct tg_buf b;
        char data[4096];
    } u;
    u.b.start = u.b.end = 0;
    u.b.cap = sizeof(u.data);
    u.b.next = NULL;
    if (tg_headers_upstream_request(&u.b, in) < 0)
        return NULL;
    snprintf(text, cap, "%.*s", (int)(u.b.end - u.b.start), u.b.data + u.b.start);
    return text;
}

TEST(upstream_head_carries_the_identified_client)
{
    struct tg_config *cfg =
        load("listen: [127.0.0.1:18080]\n"
             "trusted_proxies: [10.0.0.0/8]\n"
             "upstreams: {app: {servers: [127.0.0.1:1]}}\n"
             "headers: {request: {set: {X-Env: prod}, remove: [Cookie2]}}\n"
             "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n");
    if (cfg == NULL)
        return;
    struct tg_http_header c[] = {
        HDR("Connection", "X-Hop"),
        HDR("X-Hop", "1"),
        HDR("Transfer-Encoding", "chunked"),
        HDR("X-Forwarded-For", "1.2.3.4, 203.0.113.9"),
        HDR("Forwarded", "for=5.6.7.8"),
        HDR("X-Real-IP", "6.6.6.6"),
        HDR("X-Env", "dev"),
        HDR("Cookie2", "c"),
        HDR("Accept", "*/*"),
        HDR("X-Request-Id", "client-id"),
    };
    struct tg_http_headers fields = {c, TG_ARRAY_LEN(c), TG_ARRAY_LEN(c)};
    struct tg_addr peer, client;
    tg_addr_parse("10.0.0.2", 8, &peer);
    struct tg_str xff[1] = {TG_STR("1.2.3.4, 203.0.113.9")};
    struct tg_client_chain chain;
    CHECK(tg_access_client_chain(cfg->trusted_proxies, &peer, TG_CLIENT_IP_XFF, xff, 1, NULL, 0,
                                 &chain) == 0);
    client = chain.client;
    struct tg_headers_upstream in = {
        .method = TG_STR("POST"),
        .path = TG_STR("/x?y=1"),
        .host = TG_STR("a.test"),
        .fields = &fields,
        .rules = &cfg->headers,
        .body_length = -1,
        .tls = true,
        .peer = &peer,
        .client = &client,
        .chain = &chain,
        .request_id = TG_STR("rid"),
    };
    char text[4096];
    const char *h = upstream_head(&in, text, sizeof(text));
    CHECK(h != NULL);
    if (h == NULL)
        return;
    static const char first[] = "POST /x?y=1 HTTP/1.1\r\nHost: a.test\r\n";
    CHECK(strncmp(h, first, sizeof(first) - 1) == 0);
    CHECK(strstr(h, "\r\nAccept: */*\r\n") != NULL);
    CHECK(strstr(h, "X-Hop") == NULL && strstr(h, "Forwarded: ") == NULL);
    CHECK(strstr(h, "Cookie2") == NULL && strstr(h, "X-Env: dev") == NULL);
    CHECK(strstr(h, "\r\nX-Env: prod\r\n") != NULL);
    CHECK(strstr(h, "\r\nTransfer-Encoding: chunked\r\n") != NULL);
    CHECK(strstr(h, "\r\nX-Forwarded-For: 203.0.113.9, 10.0.0.2\r\n") != NULL);
    CHECK(strstr(h, "\r\nX-Real-IP: 203.0.113.9\r\n") != NULL);
    CHECK(strstr(h, "6.6.6.6") == NULL && strstr(h, "1.2.3.4") == NULL);
    CHECK(strstr(h, "\r\nX-Forwarded-Proto: https\r\n") != NULL);
    CHECK(strstr(h, "\r\nX-Request-Id: rid\r\n") != NULL && strstr(h, "client-id") == NULL);
    CHECK(strcmp(h + strlen(h) - 4, "\r\n\r\n") == 0);

    /* A known length; a head too big for the buffer is refused, not cut. */
    in.body_length = 12;
    h = upstream_head(&in, text, sizeof(text));
    CHECK(h != NULL && strstr(h, "\r\nContent-Length: 12\r\n") != NULL);
    struct tg_buf small = {0, 0, 0, NULL};
    CHECK(tg_headers_upstream_request(&small, &in) < 0);
    tg_config_unref(cfg);
}

/* Issue 21: the client's traceparent and tracestate never go through as
 * sent (any case of the name); the ones the pipeline made do, or none. */
TEST(upstream_head_trace_fields_are_ours)
{
    struct tg_config *cfg =
        load("listen: [127.0.0.1:18080]\n"
             "upstreams: {app: {servers: [127.0.0.1:1]}}\n"
             "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n");
    if (cfg == NULL)
        return;
    struct tg_http_header c[] = {
        HDR("TraceParent", "00-client-bad"),
        HDR("tracestate", "client=1"),
        HDR("Accept", "*/*"),
    };
    struct tg_http_headers fields = {c, TG_ARRAY_LEN(c), TG_ARRAY_LEN(c)};
    struct tg_addr peer;
    tg_addr_parse("192.0.2.1", 9, &peer);
    struct tg_headers_upstream in = {
        .method = TG_STR("GET"),
        .path = TG_STR("/"),
        .host = TG_STR("a.test"),
        .fields = &fields,
        .rules = &cfg->headers,
        .peer = &peer,
        .client = &peer,
        .request_id = TG_STR("rid"),
    };
    char text[4096];
    const char *h = upstream_head(&in, text, sizeof(text));
    CHECK(h != NULL && strstr(h, "client") == NULL && strcasestr(h, "traceparent") == NULL &&
          strcasestr(h, "tracestate") == NULL);
    in.traceparent = TG_STR("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    in.tracestate = TG_STR("rojo=1");
    h = upstream_head(&in, text, sizeof(text));
    CHECK(h != NULL && strstr(h, "client") == NULL);
    CHECK(h != NULL &&
          strstr(h, "\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
                    "tracestate: rojo=1\r\n") != NULL);
    tg_config_unref(cfg);
}

TEST(hex_matches_printf)
{
    uint64_t v = 0x0123456789abcdefull;
    for (int i = 0; i < 10000; i++) {
        char got[17], want[17];
        hex64(got, v);
        got[16] = '\0';
        snprintf(want, sizeof(want), "%016" PRIx64, v);
        CHECK_EQ_STR(got, want);
        v = v * 6364136223846793005ull + 1442695040888963407ull;
    }
    char edge[17] = {0};
    hex64(edge, 0);
    CHECK_EQ_STR(edge, "0000000000000000");
    hex64(edge, UINT64_MAX);
    CHECK_EQ_STR(edge, "ffffffffffffffff");
    hex64(edge, 0x9a9a9a9a0f0f0f0full);
    CHECK_EQ_STR(edge, "9a9a9a9a0f0f0f0f");
}

TEST(new_ids_are_32_hex_digits_and_differ)
{
    char a[65], b[65];
    tg_headers_new_request_id(a);
    tg_headers_new_request_id(b);
    CHECK_EQ_INT(strlen(a), 32);
    CHECK(strspn(a, "0123456789abcdef") == 32);
    CHECK(strcmp(a, b) != 0);
    CHECK(tg_headers_valid_request_id(tg_str_make(a, 32)));
}

int main(void)
{
    RUN(hex_matches_printf);
    RUN(new_ids_are_32_hex_digits_and_differ);
    RUN(response_fields_drop_hop_by_hop_and_add_ours);
    RUN(response_fields_date);
    RUN(response_fields_override_replaces_the_backends);
    RUN(upstream_head_carries_the_identified_client);
    RUN(upstream_head_trace_fields_are_ours);
    return TEST_SUMMARY();
}
