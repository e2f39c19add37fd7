/* Access log lines (issue 21, item 4): the configured fields in their
 * order and nothing else, today's line unchanged by default, hostile
 * values escaped and bounded, a line that cannot hold every field leaving
 * whole fields out (and saying so) instead of breaking its JSON, and the
 * 2xx sample. Lines go through the real writer thread into a file. */
#include "../../src/access_log.c"

#include <jansson.h>

#include "test.h"

static char log_path[] = "/tmp/tg_test_access_log_XXXXXX";

static struct tg_config_log config_of(const uint8_t *fields, size_t n, double sample)
{
    struct tg_config_log c = {
        .access = "file",
        .access_flush_ms = 1000,
        .access_buffer = 65536,
        .sample_2xx = sample,
    };
    memcpy(c.fields, fields, n);
    c.nfields = (uint8_t)n;
    return c;
}

/* Writes the records through a worker log and the writer thread; returns
 * what reached the file (malloc'd), or NULL. */
static char *lines_of(const struct tg_config_log *cfg, const struct tg_access_record *r, size_t n)
{
    char err[256];
    int fd = mkstemp(log_path);
    if (fd < 0)
        return NULL;
    close(fd);
    if (tg_access_log_start() < 0 || tg_access_log_set_target(log_path, err, sizeof(err)) < 0)
        return NULL;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct tg_access_log *log = tg_access_log_new(loop);
    tg_access_log_configure(log, cfg);
    for (size_t i = 0; i < n; i++)
        tg_access_log_write(log, &r[i]);
    tg_access_log_free(log); /* hands over its chunk */
    ev_loop_destroy(loop);
    tg_access_log_stop(); /* writes what is queued */
    FILE *f = fopen(log_path, "rb");
    unlink(log_path);
    strcpy(log_path + strlen(log_path) - 6, "XXXXXX");
    if (f == NULL)
        return NULL;
    char *data = calloc(1, 1 << 20);
    size_t got = data != NULL ? fread(data, 1, (1 << 20) - 1, f) : 0;
    (void)got;
    fclose(f);
    return data;
}

static struct tg_addr client_addr(void)
{
    struct tg_addr a;
    tg_addr_parse("10.0.0.1", 8, &a);
    return a;
}

/* A plain proxied request, as request.c fills it. */
static struct tg_access_record plain_record(const struct tg_addr *client)
{
    return (struct tg_access_record){
        .now = 1764150000.25,
        .client = client,
        .method = "GET",
        .host = "a.test",
        .path = "/p?q=1",
        .proto = "HTTP/1.1",
        .status = 200,
        .bytes_in = 10,
        .bytes_out = 20,
        .duration_ms = 1.5,
        .upstream = "127.0.0.1:9000",
        .upstream_connect_ms = -1,
        .upstream_ms = 0.75,
        .request_id = "rid-1",
    };
}

TEST(default_line_is_todays)
{
    static const uint8_t fields[] = {
        TG_LOG_FIELD_TIME,        TG_LOG_FIELD_CLIENT,     TG_LOG_FIELD_METHOD,
        TG_LOG_FIELD_HOST,        TG_LOG_FIELD_PATH,       TG_LOG_FIELD_PROTO,
        TG_LOG_FIELD_STATUS,      TG_LOG_FIELD_BYTES_IN,   TG_LOG_FIELD_BYTES_OUT,
        TG_LOG_FIELD_DURATION_MS, TG_LOG_FIELD_ENCODING,   TG_LOG_FIELD_UPSTREAM,
        TG_LOG_FIELD_UPSTREAM_MS, TG_LOG_FIELD_REQUEST_ID, TG_LOG_FIELD_TRACE_ID,
        TG_LOG_FIELD_SPAN_ID,     TG_LOG_FIELD_TLS,        TG_LOG_FIELD_TENANT,
        TG_LOG_FIELD_COUNTRY,     TG_LOG_FIELD_RATELIMIT,
    };
    struct tg_config_log cfg = config_of(fields, sizeof(fields), 1.0);
    struct tg_addr a = client_addr();
    struct tg_access_record r = plain_record(&a);
    /* A user agent the default does not log, and a new connection. */
    r.user_agent = "curl/8";
    r.upstream_connect_ms = 0.5;
    char *out = lines_of(&cfg, &r, 1);
    CHECK(out != NULL);
    if (out == NULL)
        return;
    /* The line the module wrote before access_fields existed. */
    CHECK_EQ_STR(out, "{\"time\":\"2025-11-26T09:40:00.250Z\",\"client\":\"10.0.0.1\","
                      "\"method\":\"GET\",\"host\":\"a.test\",\"path\":\"/p?q=1\","
                      "\"proto\":\"HTTP/1.1\",\"status\":200,\"bytes_in\":10,\"bytes_out\":20,"
                      "\"duration_ms\":1.500,\"upstream\":\"127.0.0.1:9000\","
                      "\"upstream_ms\":0.750,\"request_id\":\"rid-1\"}\n");
    free(out);
}

TEST(chosen_fields_in_their_order)
{
    static const uint8_t fields[] = {TG_LOG_FIELD_STATUS,  TG_LOG_FIELD_USER_AGENT,
                                     TG_LOG_FIELD_ROUTE,   TG_LOG_FIELD_UPSTREAM_CONNECT_MS,
                                     TG_LOG_FIELD_REFERER, TG_LOG_FIELD_PATH};
    struct tg_config_log cfg = config_of(fields, sizeof(fields), 1.0);
    struct tg_addr a = client_addr();
    struct tg_config_route route = {.path_source = "/api/collections/*/auth-with-password",
                                    .access_log = true,
                                    .access_log_sample = 1.0};
    struct tg_access_record r[2] = {plain_record(&a), plain_record(&a)};
    r[0].user_agent = "Mozilla/5.0";
    r[0].route = &route;
    r[0].upstream_connect_ms = 1.25;
    r[0].referer = "https://a.test/";
    /* No route, pooled connection, no referer: those members are left out. */
    r[1].user_agent = "b";
    char *out = lines_of(&cfg, r, 2);
    CHECK(out != NULL);
    if (out == NULL)
        return;
    CHECK_EQ_STR(out, "{\"status\":200,\"user_agent\":\"Mozilla/5.0\","
                      "\"route\":\"/api/collections/*/auth-with-password\","
                      "\"upstream_connect_ms\":1.250,\"referer\":\"https://a.test/\","
                      "\"path\":\"/p?q=1\"}\n"
                      "{\"status\":200,\"user_agent\":\"b\",\"path\":\"/p?q=1\"}\n");
    free(out);
}

/* The raw text of a string member's value in a line ("" if none). */
static size_t raw_value_len(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *p = strstr(line, pat);
    if (p == NULL)
        return 0;
    p += strlen(pat);
    size_t n = 0;
    while (p[n] != '"')
        n += p[n] == '\\' ? 2 : 1;
    return n;
}

TEST(hostile_values_stay_json)
{
    static const uint8_t fields[] = {TG_LOG_FIELD_PATH, TG_LOG_FIELD_USER_AGENT,
                                     TG_LOG_FIELD_REFERER, TG_LOG_FIELD_STATUS};
    struct tg_config_log cfg = config_of(fields, sizeof(fields), 1.0);
    struct tg_addr a = client_addr();
    /* Quotes, backslashes, control bytes, invalid UTF-8, 8 KiB of it. */
    static char ua[8192 + 1], path[8192 + 1];
    static const char piece[] = "\"\\\x01\n\r\t\xff\xc3(\x7f}";
    for (size_t i = 0; i < 8192; i++) {
        ua[i] = piece[i % (sizeof(piece) - 1)];
        path[i] = i == 0 ? '/' : (char)('a' + i % 26);
    }
    struct tg_access_record r = plain_record(&a);
    r.user_agent = ua;
    r.referer = ua + 1;
    r.path = path;
    char *out = lines_of(&cfg, &r, 1);
    CHECK(out != NULL);
    if (out == NULL)
        return;
    size_t len = strlen(out);
    CHECK(len <= TG_ACCESS_LOG_MAX_LINE && len > 2);
    CHECK(out[len - 1] == '\n' && out[len - 2] == '}');
    CHECK(memchr(out, '\n', len - 1) == NULL); /* one line */
    json_error_t jerr;
    json_t *obj = json_loads(out, JSON_REJECT_DUPLICATES, &jerr);
    CHECK(obj != NULL);
    if (obj == NULL)
        fprintf(stderr, "not JSON: %s\n%s", jerr.text, out);
    CHECK(obj != NULL && json_object_size(obj) == 4);
    CHECK(obj != NULL && json_integer_value(json_object_get(obj, "status")) == 200);
    /* Each value is cut at its bound, never inside an escape. */
    CHECK(raw_value_len(out, "user_agent") <= TG_ACCESS_LOG_HEADER_MAX);
    CHECK(raw_value_len(out, "user_agent") > TG_ACCESS_LOG_HEADER_MAX - 6);
    CHECK(raw_value_len(out, "referer") <= TG_ACCESS_LOG_HEADER_MAX);
    CHECK_EQ_INT(raw_value_len(out, "path"), LOG_PATH_MAX);
    CHECK(obj != NULL &&
          strncmp(json_string_value(json_object_get(obj, "path")), path, LOG_PATH_MAX) == 0);
    json_decref(obj);
    free(out);
}

TEST(a_full_line_leaves_whole_fields_out)
{
    /* Every field, the rate-limit one and then the status last. */
    uint8_t fields[TG_LOG_FIELD_COUNT];
    size_t nf = 0;
    for (unsigned f = 0; f < TG_LOG_FIELD_COUNT; f++)
        if (f != TG_LOG_FIELD_RATELIMIT && f != TG_LOG_FIELD_STATUS)
            fields[nf++] = (uint8_t)f;
    fields[nf++] = TG_LOG_FIELD_RATELIMIT;
    fields[nf++] = TG_LOG_FIELD_STATUS;
    struct tg_config_log cfg = config_of(fields, nf, 1.0);
    struct tg_addr a = client_addr();
    /* Eight policies whose key kinds escape to ~500 bytes each: with the
     * longest path, route, user agent and referer the line cannot hold
     * it all. */
    static char kinds[250 + 1], big[4096 + 1];
    memset(kinds, '"', 250);
    memset(big, 'x', 4096);
    big[0] = '/';
    struct tg_config_policy pol[8];
    memset(pol, 0, sizeof(pol));
    struct tg_limiter_state *lim = calloc(1, tg_limiter_state_size(8));
    CHECK(lim != NULL);
    if (lim == NULL)
        return;
    lim->n = 8;
    lim->active = true;
    lim->outcome = "limited";
    lim->report = &lim->items[0];
    for (int i = 0; i < 8; i++) {
        pol[i].name = "policy";
        pol[i].key_kinds = kinds;
        lim->items[i].policy = &pol[i];
        lim->items[i].key.store_key = "k";
        lim->items[i].key.store_keylen = 1;
    }
    struct tg_config_route route = {.path_source = big, .access_log = true};
    struct tg_access_record r = plain_record(&a);
    r.path = big;
    r.host = big;
    r.method = big;
    r.route = &route;
    r.user_agent = big;
    r.referer = big;
    r.tenant = big;
    r.lim = lim;
    char *out = lines_of(&cfg, &r, 1);
    CHECK(out != NULL);
    if (out == NULL) {
        free(lim);
        return;
    }
    size_t len = strlen(out);
    CHECK(len <= TG_ACCESS_LOG_MAX_LINE);
    CHECK(len > 2 && out[len - 1] == '\n' && out[len - 2] == '}');
    json_error_t jerr;
    json_t *obj = json_loads(out, JSON_REJECT_DUPLICATES, &jerr);
    CHECK(obj != NULL);
    if (obj == NULL)
        fprintf(stderr, "not JSON: %s\n%s", jerr.text, out);
    /* The rate-limit field did not fit: all of it is left out, the
     * field after it still comes, and the line says something is missing. */
    CHECK(obj != NULL && json_is_true(json_object_get(obj, "truncated")));
    CHECK(obj != NULL && json_object_get(obj, "ratelimit") == NULL);
    CHECK(obj != NULL && json_object_get(obj, "ratelimit_keys") == NULL);
    CHECK(obj != NULL && json_object_get(obj, "user_agent") != NULL);
    CHECK(obj != NULL && json_object_get(obj, "referer") != NULL);
    CHECK(obj != NULL && json_integer_value(json_object_get(obj, "status")) == 200);
    json_decref(obj);
    free(out);

    /* With room, the keys are written whole, with their kind. */
    static const uint8_t rl[] = {TG_LOG_FIELD_RATELIMIT};
    cfg = config_of(rl, sizeof(rl), 1.0);
    lim->n = 1;
    pol[0].name = "login";
    pol[0].key_kinds = "ip|json:identity";
    out = lines_of(&cfg, &r, 1);
    CHECK(out != NULL);
    if (out != NULL) {
        obj = json_loads(out, JSON_REJECT_DUPLICATES, &jerr);
        json_t *keys = obj != NULL ? json_object_get(obj, "ratelimit_keys") : NULL;
        CHECK(json_array_size(keys) == 1);
        json_t *k = json_array_get(keys, 0);
        CHECK(k != NULL &&
              strcmp(json_string_value(json_object_get(k, "kind")), "ip|json:identity") == 0);
        CHECK(k != NULL && strlen(json_string_value(json_object_get(k, "key"))) == 16);
        CHECK(obj != NULL &&
              strcmp(json_string_value(json_object_get(obj, "ratelimit_policy")), "login") == 0);
        json_decref(obj);
        free(out);
    }
    free(lim);
}

TEST(sampling_2xx)
{
    static const uint8_t fields[] = {TG_LOG_FIELD_STATUS};
    struct tg_config_log cfg = config_of(fields, sizeof(fields), 0.1);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct tg_access_log *log = tg_access_log_new(loop);
    CHECK(!tg_access_log_wanted(log, NULL, 200)); /* not configured: off */
    tg_access_log_configure(log, &cfg);
    unsigned kept = 0;
    for (int i = 0; i < 100000; i++)
        kept += tg_access_log_wanted(log, NULL, 200 + i % 100);
    CHECK(kept > 9000 && kept < 11000);
    for (int s = 100; s < 600; s++)
        if (s < 200 || s > 299)
            CHECK(tg_access_log_wanted(log, NULL, s));
    struct tg_config_route quiet = {.access_log = true, .access_log_sample = 0.0};
    struct tg_config_route all = {.access_log = true, .access_log_sample = 1.0};
    struct tg_config_route off = {.access_log = false, .access_log_sample = 1.0};
    for (int i = 0; i < 1000; i++) {
        CHECK(!tg_access_log_wanted(log, &quiet, 204));
        CHECK(tg_access_log_wanted(log, &quiet, 429));
        CHECK(tg_access_log_wanted(log, &all, 200));
        CHECK(!tg_access_log_wanted(log, &off, 500));
    }
    /* A reload to another sample applies to the next line. */
    cfg.sample_2xx = 1.0;
    tg_access_log_configure(log, &cfg);
    for (int i = 0; i < 1000; i++)
        CHECK(tg_access_log_wanted(log, NULL, 200));
    cfg.access = NULL;
    tg_access_log_configure(log, &cfg);
    CHECK(!tg_access_log_wanted(log, NULL, 500));
    tg_access_log_free(log);
    ev_loop_destroy(loop);
}

int main(void)
{
    RUN(default_line_is_todays);
    RUN(chosen_fields_in_their_order);
    RUN(hostile_values_stay_json);
    RUN(a_full_line_leaves_whole_fields_out);
    RUN(sampling_2xx);
    return TEST_SUMMARY();
}
