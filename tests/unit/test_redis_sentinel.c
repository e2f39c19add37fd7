/* Sentinel discovery against a fake sentinel (redis_harness.h's fake
 * server answers SENTINEL get-master-addr-by-name with what the test
 * says): the answer, the sentinels asked in turn past a dead one, the one
 * that answered asked first next time, nil and malformed answers, a
 * sentinel that never answers, freeing while asking and from inside the
 * answer, the blocking variant; and the +switch-master message parser.
 * The watch and the links that use all this are driven by real sentinels
 * in tests/integration/test_redis_sentinel.py. */
#include "../../src/redis_sentinel.c"

#include "test.h"
#include "redis_harness.h"

static struct ev_loop *loop;

struct answer {
    int calls;
    char ip[TG_REDIS_SENTINEL_IP_MAX];
    int port;
    char why[256];
    struct tg_redis_sentinel **free_me; /* freed from inside the callback */
};

static void on_answer(void *arg, const char *ip, int port, const char *why)
{
    struct answer *a = arg;
    a->calls++;
    snprintf(a->ip, sizeof(a->ip), "%s", ip != NULL ? ip : "");
    a->port = port;
    snprintf(a->why, sizeof(a->why), "%s", why != NULL ? why : "");
    if (a->free_me != NULL) {
        tg_redis_sentinel_free(*a->free_me);
        *a->free_me = NULL;
    }
}

static bool answered(void *arg)
{
    return ((struct answer *)arg)->calls > 0;
}

static struct tg_redis_sentinel *make(const char *const *addrs, size_t n, struct answer *a,
                                      int64_t timeout_ms)
{
    struct tg_config_redis cfg = {.sentinels = addrs, .nsentinels = n, .master = "main"};
    struct tg_redis_sentinel_options o = {
        .name = "test", .connect_timeout_ms = timeout_ms, .on_found = on_answer, .arg = a};
    return tg_redis_sentinel_new(loop, &cfg, &o);
}

static void master_reply(struct h_fake *f, int port)
{
    char r[128], p[16];
    snprintf(p, sizeof(p), "%d", port);
    snprintf(r, sizeof(r), "*2\r\n$9\r\n127.0.0.1\r\n$%zu\r\n%s\r\n", strlen(p), p);
    h_fake_set(f, r);
}

TEST(parse_switch)
{
    char ip[TG_REDIS_SENTINEL_IP_MAX];
    int port = 0;
    const char *m = "main 127.0.0.1 6379 127.0.0.2 6380";
    CHECK_EQ_INT(tg_redis_sentinel_parse_switch(m, strlen(m), "main", ip, &port), 0);
    CHECK_EQ_STR(ip, "127.0.0.2");
    CHECK_EQ_INT(port, 6380);
    m = "main ::1 6379 ::2 7000";
    CHECK_EQ_INT(tg_redis_sentinel_parse_switch(m, strlen(m), "main", ip, &port), 0);
    CHECK_EQ_STR(ip, "::2");
    CHECK_EQ_INT(port, 7000);
    static const char *const bad[] = {
        "other 127.0.0.1 6379 127.0.0.2 6380", /* another master */
        "mai 127.0.0.1 6379 127.0.0.2 6380",
        "main 127.0.0.1 6379 127.0.0.2",        /* short */
        "main 127.0.0.1 6379 127.0.0.2 6380 x", /* long */
        "main 127.0.0.1 6379 redis-b 6380",     /* a host name */
        "main 127.0.0.1 6379 127.0.0.2 0",
        "main 127.0.0.1 6379 127.0.0.2 65536",
        "main 127.0.0.1 6379 127.0.0.2 63a0",
        "",
        NULL,
    };
    for (int i = 0; bad[i] != NULL; i++)
        CHECK_EQ_INT(tg_redis_sentinel_parse_switch(bad[i], strlen(bad[i]), "main", ip, &port), -1);
    /* Not NUL-terminated: only n bytes count. */
    m = "main 127.0.0.1 6379 127.0.0.2 63801";
    CHECK_EQ_INT(tg_redis_sentinel_parse_switch(m, strlen(m) - 1, "main", ip, &port), 0);
    CHECK_EQ_INT(port, 6380);
}

TEST(asks_in_turn_and_prefers_who_answered)
{
    struct h_fake f;
    h_fake_start(&f, "");
    master_reply(&f, 6390);
    char dead[32], live[32];
    snprintf(dead, sizeof(dead), "127.0.0.1:%d", h_free_port());
    snprintf(live, sizeof(live), "127.0.0.1:%d", f.port);
    const char *addrs[] = {dead, live};
    struct answer a = {0};
    struct tg_redis_sentinel *s = make(addrs, 2, &a, 500);
    CHECK(s != NULL);
    tg_redis_sentinel_discover(s);
    CHECK_EQ_INT(a.calls, 0); /* never before discover returns */
    CHECK(tg_redis_sentinel_discovering(s));
    tg_redis_sentinel_discover(s); /* joins the one under way */
    CHECK(h_run_until(loop, answered, &a, 3.0));
    h_run_for(loop, 0.05);
    CHECK_EQ_INT(a.calls, 1);
    CHECK_EQ_STR(a.ip, "127.0.0.1");
    CHECK_EQ_INT(a.port, 6390);
    CHECK(!tg_redis_sentinel_discovering(s));
    CHECK_EQ_INT(s->prefer, 1);
    /* The next round starts with the one that answered. */
    a.calls = 0;
    tg_redis_sentinel_discover(s);
    CHECK(h_run_until(loop, answered, &a, 3.0));
    CHECK_EQ_INT(s->asked, 1);
    CHECK_EQ_INT(a.port, 6390);
    tg_redis_sentinel_free(s);
    h_fake_stop(&f);
}

TEST(no_sentinel_knows)
{
    struct h_fake f;
    h_fake_start(&f, "");
    char live[32];
    snprintf(live, sizeof(live), "127.0.0.1:%d", f.port);
    const char *addrs[] = {live};
    static const struct {
        const char *reply, *why;
    } cases[] = {
        {"*-1\r\n", "does not monitor a master named main"},
        {"-ERR No such master with that name\r\n", "No such master"},
        {"*2\r\n$7\r\nredis-b\r\n$4\r\n6379\r\n", "not an IP address"},
        {"*2\r\n$9\r\n127.0.0.1\r\n$1\r\n0\r\n", "a bad port"},
        {"+OK\r\n", "unexpected answer"},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        h_fake_set(&f, cases[i].reply);
        struct answer a = {0};
        struct tg_redis_sentinel *s = make(addrs, 1, &a, 500);
        tg_redis_sentinel_discover(s);
        CHECK(h_run_until(loop, answered, &a, 3.0));
        CHECK_EQ_STR(a.ip, "");
        if (strstr(a.why, cases[i].why) == NULL || strstr(a.why, "no sentinel named") == NULL)
            fprintf(stderr, "case %zu: %s\n", i, a.why);
        CHECK(strstr(a.why, cases[i].why) != NULL);
        CHECK(strstr(a.why, "no sentinel named the primary of main") != NULL);
        tg_redis_sentinel_free(s);
    }
    h_fake_stop(&f);
}

TEST(a_silent_sentinel_times_out)
{
    struct h_fake f;
    h_fake_start(&f, "");
    h_fake_set(&f, ""); /* reads, never answers */
    char live[32];
    snprintf(live, sizeof(live), "127.0.0.1:%d", f.port);
    const char *addrs[] = {live};
    struct answer a = {0};
    struct tg_redis_sentinel *s = make(addrs, 1, &a, 200);
    double t0 = h_now();
    tg_redis_sentinel_discover(s);
    CHECK(h_run_until(loop, answered, &a, 3.0));
    double took = h_now() - t0;
    CHECK(took >= 0.18 && took < 1.5);
    CHECK(strstr(a.why, "no answer within 200 ms") != NULL);
    tg_redis_sentinel_free(s);
    h_fake_stop(&f);
}

TEST(free_while_asking_and_from_the_answer)
{
    struct h_fake f;
    h_fake_start(&f, "");
    master_reply(&f, 6391);
    char live[32];
    snprintf(live, sizeof(live), "127.0.0.1:%d", f.port);
    const char *addrs[] = {live};
    /* Freed while the question is on the wire (the sentinel is slow to
     * answer): no callback, nothing leaks (ASan). */
    h_fake_set(&f, "");
    struct answer a = {0};
    struct tg_redis_sentinel *s = make(addrs, 1, &a, 500);
    tg_redis_sentinel_discover(s);
    h_run_for(loop, 0.05);
    CHECK(s->ask != NULL);
    tg_redis_sentinel_free(s);
    h_run_for(loop, 0.1);
    CHECK_EQ_INT(a.calls, 0);
    master_reply(&f, 6391);
    /* Freed by its owner from inside the answer (hiredis' reply callback). */
    struct answer b = {0};
    s = make(addrs, 1, &b, 500);
    b.free_me = &s;
    tg_redis_sentinel_discover(s);
    CHECK(h_run_until(loop, answered, &b, 3.0));
    CHECK(s == NULL);
    CHECK_EQ_INT(b.port, 6391);
    /* ... and from inside a failure (the connect callback). */
    char dead[32];
    snprintf(dead, sizeof(dead), "127.0.0.1:%d", h_free_port());
    const char *dead_addrs[] = {dead};
    struct answer c = {0};
    s = make(dead_addrs, 1, &c, 500);
    c.free_me = &s;
    tg_redis_sentinel_discover(s);
    CHECK(h_run_until(loop, answered, &c, 3.0));
    CHECK(s == NULL);
    CHECK(strstr(c.why, "connect") != NULL);
    h_run_for(loop, 0.05);
    h_fake_stop(&f);
}

TEST(blocking)
{
    struct h_fake f;
    h_fake_start(&f, "");
    master_reply(&f, 6392);
    char dead[32], live[32];
    snprintf(dead, sizeof(dead), "127.0.0.1:%d", h_free_port());
    snprintf(live, sizeof(live), "127.0.0.1:%d", f.port);
    const char *addrs[] = {dead, live};
    struct tg_config_redis cfg = {
        .sentinels = addrs, .nsentinels = 2, .master = "main", .sentinel_password = "pw"};
    char ip[TG_REDIS_SENTINEL_IP_MAX], err[256];
    int port = 0;
    CHECK_EQ_INT(tg_redis_sentinel_discover_blocking(&cfg, 500, ip, &port, err, sizeof(err)), 0);
    CHECK_EQ_STR(ip, "127.0.0.1");
    CHECK_EQ_INT(port, 6392);
    h_fake_set(&f, "*-1\r\n");
    CHECK_EQ_INT(tg_redis_sentinel_discover_blocking(&cfg, 500, ip, &port, err, sizeof(err)), -1);
    CHECK(strstr(err, "does not monitor a master named main") != NULL);
    h_fake_stop(&f);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("TG_TEST_VERBOSE") == NULL)
        tg_log_set_level(TG_LOG_ERROR + 1);
    loop = ev_loop_new(EVFLAG_AUTO);

    RUN(parse_switch);
    RUN(asks_in_turn_and_prefers_who_answered);
    RUN(no_sentinel_knows);
    RUN(a_silent_sentinel_times_out);
    RUN(free_while_asking_and_from_the_answer);
    RUN(blocking);

    ev_loop_destroy(loop);
    return TEST_SUMMARY();
}
