/* The span exporter (trace_export.c) without its thread or sockets: the
 * OTLP JSON a span becomes, the endpoint split, and the bounded queue
 * (drops counted, a resize keeps what fits). */
#include "../../src/trace_export.c"

#include <jansson.h>

#include "str.h"
#include "test.h"
#include "trace.h"

#define TID "4bf92f3577b34da6a3ce929d0e0e4736"
#define PID "00f067aa0ba902b7"

static const char *attr(json_t *span, const char *key, const char *kind)
{
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(span, "attributes"), i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "key")), key) == 0)
            return json_string_value(json_object_get(json_object_get(a, "value"), kind));
    }
    return NULL;
}

TEST(otlp_json)
{
    struct tg_trace_span sp[2];
    memset(sp, 0, sizeof(sp));
    struct tg_trace_parent tp;
    CHECK(tg_trace_parse_parent("00-" TID "-" PID "-01", 55, &tp));
    memcpy(sp[0].trace_id, tp.trace_id, 16);
    memcpy(sp[0].parent_id, tp.parent_id, 8);
    memset(sp[0].span_id, 0xab, 8);
    sp[0].has_parent = true;
    sp[0].start_ns = 1700000000000000000ull;
    sp[0].end_ns = 1700000000002500000ull;
    sp[0].status = 503;
    sp[0].upstream_us = 1200;
    strcpy(sp[0].method, "POST");
    strcpy(sp[0].route, "/api/");
    strcpy(sp[0].path, "/api/x");
    strcpy(sp[0].client, "192.0.2.1");
    strcpy(sp[0].tenant, "acme");
    strcpy(sp[0].limit, "limited");
    strcpy(sp[0].upstream, "10.0.0.1:80");
    strcpy(sp[0].proto, "2");
    sp[1] = sp[0];
    sp[1].has_parent = false;
    sp[1].status = 200;
    sp[1].route[0] = '\0';
    sp[1].tenant[0] = '\0';
    sp[1].upstream_us = -1;
    strcpy(sp[1].path, "/a\"b\\c\x01");
    char *text = tg_trace_export_json(sp, 2, "svc \"x\"");
    CHECK(text != NULL);
    json_t *root = json_loads(text, 0, NULL);
    CHECK(root != NULL);
    json_t *rs = json_array_get(json_object_get(root, "resourceSpans"), 0);
    json_t *res = json_array_get(json_object_get(json_object_get(rs, "resource"), "attributes"), 0);
    CHECK_EQ_STR(json_string_value(json_object_get(json_object_get(res, "value"), "stringValue")),
                 "svc \"x\"");
    json_t *spans = json_object_get(json_array_get(json_object_get(rs, "scopeSpans"), 0), "spans");
    CHECK_EQ_INT(json_array_size(spans), 2);
    json_t *s0 = json_array_get(spans, 0), *s1 = json_array_get(spans, 1);
    CHECK_EQ_STR(json_string_value(json_object_get(s0, "traceId")), TID);
    CHECK_EQ_STR(json_string_value(json_object_get(s0, "spanId")), "abababababababab");
    CHECK_EQ_STR(json_string_value(json_object_get(s0, "parentSpanId")), PID);
    CHECK_EQ_STR(json_string_value(json_object_get(s0, "name")), "POST /api/");
    CHECK_EQ_INT(json_integer_value(json_object_get(s0, "kind")), 2);
    CHECK_EQ_STR(json_string_value(json_object_get(s0, "startTimeUnixNano")),
                 "1700000000000000000");
    CHECK_EQ_STR(json_string_value(json_object_get(s0, "endTimeUnixNano")), "1700000000002500000");
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(s0, "status"), "code")), 2);
    CHECK_EQ_STR(attr(s0, "http.request.method", "stringValue"), "POST");
    CHECK_EQ_STR(attr(s0, "http.route", "stringValue"), "/api/");
    CHECK_EQ_STR(attr(s0, "http.response.status_code", "intValue"), "503");
    CHECK_EQ_STR(attr(s0, "client.address", "stringValue"), "192.0.2.1");
    CHECK_EQ_STR(attr(s0, "tollgate.tenant", "stringValue"), "acme");
    CHECK_EQ_STR(attr(s0, "tollgate.ratelimit.decision", "stringValue"), "limited");
    CHECK_EQ_STR(attr(s0, "tollgate.upstream.address", "stringValue"), "10.0.0.1:80");
    CHECK_EQ_STR(attr(s0, "tollgate.upstream.header_time_us", "intValue"), "1200");
    CHECK_EQ_STR(attr(s0, "tollgate.duration_us", "intValue"), "2500");
    CHECK_EQ_STR(attr(s0, "network.protocol.version", "stringValue"), "2");
    /* No parent, no route, no tenant, no upstream answer: left out. */
    CHECK_EQ_STR(json_string_value(json_object_get(s1, "parentSpanId")), "");
    CHECK_EQ_STR(json_string_value(json_object_get(s1, "name")), "POST");
    CHECK(attr(s1, "http.route", "stringValue") == NULL);
    CHECK(attr(s1, "tollgate.tenant", "stringValue") == NULL);
    CHECK(attr(s1, "tollgate.upstream.header_time_us", "intValue") == NULL);
    CHECK(json_object_get(json_object_get(s1, "status"), "code") == NULL);
    /* Strings are escaped: quotes, backslashes and control bytes. */
    CHECK_EQ_STR(attr(s1, "url.path", "stringValue"), "/a\"b\\c\x01");
    json_decref(root);
    free(text);
}

static void check_split(const char *url, const char *host, const char *port, const char *path)
{
    char *h = NULL, *po = NULL, *pa = NULL;
    CHECK(split_endpoint(url, &h, &po, &pa) == 0);
    CHECK_EQ_STR(h, host);
    CHECK_EQ_STR(po, port);
    CHECK_EQ_STR(pa, path);
    free(h);
    free(po);
    free(pa);
}

TEST(endpoint_split)
{
    check_split("http://127.0.0.1:4318/v1/traces", "127.0.0.1", "4318", "/v1/traces");
    check_split("http://collector/v1/traces", "collector", "80", "/v1/traces");
    check_split("http://collector:9", "collector", "9", "/");
    check_split("http://[::1]:4318/t", "::1", "4318", "/t");
    check_split("http://[::1]/t", "::1", "80", "/t");
    char *h, *po, *pa;
    CHECK(split_endpoint("http://[::1/t", &h, &po, &pa) < 0);
}

static struct tg_config_tracing tracing(unsigned queue)
{
    struct tg_config_tracing t = {
        .enabled = true,
        .sample_ratio = 1,
        .service_name = "svc",
        .otlp = {.endpoint = "http://127.0.0.1:4318/v1/traces",
                 .timeout_ms = 1000,
                 .batch = 100,
                 .queue = queue,
                 .interval_ms = 1000},
    };
    return t;
}

TEST(queue_bounded)
{
    struct tg_trace_export_stats st0, st;
    tg_trace_export_stats(&st0);
    struct tg_trace_span sp;
    memset(&sp, 0, sizeof(sp));
    /* Not running: every span is dropped, and counted. */
    tg_trace_export_push(&sp);
    tg_trace_export_stats(&st);
    CHECK_EQ_INT(st.dropped - st0.dropped, 1);

    struct tg_config_tracing t = tracing(3);
    CHECK(tg_trace_export_configure(&t) == 0);
    /* As if the thread ran (it would take batches of 100 only after the
     * interval: nothing leaves the queue here). */
    ex.running = true;
    for (int i = 0; i < 5; i++) {
        sp.status = 200 + i;
        tg_trace_export_push(&sp);
    }
    tg_trace_export_stats(&st);
    CHECK_EQ_INT(ex.count, 3);
    CHECK_EQ_INT(st.dropped - st0.dropped, 3);
    /* The oldest stay, in order. */
    CHECK_EQ_INT(ex.ring[ex.head].status, 200);
    CHECK_EQ_INT(ex.ring[(ex.head + 2) % ex.cap].status, 202);
    /* A smaller queue keeps the oldest that fit and counts the rest. */
    t = tracing(2);
    CHECK(tg_trace_export_configure(&t) == 0);
    tg_trace_export_stats(&st);
    CHECK_EQ_INT(ex.cap, 2);
    CHECK_EQ_INT(ex.count, 2);
    CHECK_EQ_INT(st.dropped - st0.dropped, 4);
    CHECK_EQ_INT(ex.ring[ex.head].status, 200);
    /* A larger one keeps them all. */
    t = tracing(10);
    CHECK(tg_trace_export_configure(&t) == 0);
    CHECK_EQ_INT(ex.count, 2);
    tg_trace_export_push(&sp);
    CHECK_EQ_INT(ex.count, 3);
    ex.running = false;
    tg_trace_export_stop();
    CHECK(ex.ring == NULL && ex.count == 0);
}

int main(void)
{
    RUN(otlp_json);
    RUN(endpoint_split);
    RUN(queue_bounded);
    return TEST_SUMMARY();
}
