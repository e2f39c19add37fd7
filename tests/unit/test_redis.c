/* The generic Redis link against a real redis-server started here (and a
 * fake one for replies Redis never sends): connect, AUTH/SELECT, unix
 * sockets, binary-safe commands, deadlines and late replies, cancel, free
 * with commands pending (also from inside a callback), the circuit
 * breaker opening and closing by itself, reconnects after the server dies,
 * reconfiguring, and the guard against unsolicited replies. */
#include "../../src/redis.c"

#include "test.h"
#include "redis_harness.h"

static struct h_redis srv;
static struct ev_loop *loop;

struct rec {
    int calls, nulls;
    int type;
    long long integer;
    char str[64];
    size_t len;
    double at;
    int verdict; /* what the callback returns */
};

static int rec_cb(void *arg, const redisReply *reply)
{
    struct rec *rc = arg;
    rc->calls++;
    rc->at = h_now();
    if (reply == NULL) {
        rc->nulls++;
        return 0;
    }
    rc->type = reply->type;
    if (reply->type == REDIS_REPLY_INTEGER)
        rc->integer = reply->integer;
    if (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS ||
        reply->type == REDIS_REPLY_ERROR) {
        rc->len = reply->len < sizeof(rc->str) ? reply->len : sizeof(rc->str);
        memcpy(rc->str, reply->str, rc->len);
    }
    return rc->verdict;
}

static bool rec_done(void *arg)
{
    return ((struct rec *)arg)->calls > 0;
}

static bool is_up(void *arg)
{
    return tg_redis_state(arg) == TG_REDIS_UP;
}

static bool is_open(void *arg)
{
    return tg_redis_state(arg) == TG_REDIS_CIRCUIT_OPEN;
}

static bool is_down(void *arg)
{
    enum tg_redis_state s = tg_redis_state(arg);
    return s == TG_REDIS_DOWN || s == TG_REDIS_CIRCUIT_OPEN;
}

static char addr_buf[160];

static struct tg_config_redis cfg_tcp(int port)
{
    struct tg_config_redis c;
    memset(&c, 0, sizeof(c));
    snprintf(addr_buf, sizeof(addr_buf), "127.0.0.1:%d", port);
    c.address = addr_buf;
    c.timeout_ms = 50;
    c.key_prefix = "t:";
    return c;
}

static struct tg_redis_options fast(void)
{
    struct tg_redis_options o;
    memset(&o, 0, sizeof(o));
    o.name = "test";
    o.backoff_min_ms = 20;
    o.backoff_max_ms = 200;
    o.connect_timeout_ms = 300;
    return o;
}

static struct tg_redis *connect_up(const struct tg_config_redis *c,
                                   const struct tg_redis_options *o)
{
    struct tg_redis *r = tg_redis_new(loop, c, o);
    CHECK(r != NULL);
    CHECK(h_run_until(loop, is_up, r, 3));
    return r;
}

static struct tg_redis_cmd *cmd(struct tg_redis *r, struct rec *rc, const char *a0, const char *a1,
                                const char *a2)
{
    const char *argv[3] = {a0, a1, a2};
    size_t len[3] = {strlen(a0), a1 ? strlen(a1) : 0, a2 ? strlen(a2) : 0};
    int argc = a2 ? 3 : a1 ? 2 : 1;
    return tg_redis_command(r, argc, argv, len, 0, rec_cb, rc);
}

/* Sends DEBUG SLEEP on a blocking client without waiting for its reply,
 * and gives the server a moment to start sleeping. */
static redisContext *start_sleep(const char *seconds)
{
    redisContext *c = h_client(&srv);
    CHECK(c != NULL);
    redisAppendCommand(c, "DEBUG SLEEP %s", seconds);
    int done = 0;
    while (!done)
        redisBufferWrite(c, &done);
    usleep(20000);
    return c;
}

static void end_sleep(redisContext *c)
{
    void *reply = NULL;
    if (redisGetReply(c, &reply) == REDIS_OK && reply != NULL)
        freeReplyObject(reply);
    redisFree(c);
}

TEST(parse_address)
{
    char host[64];
    int port;
    bool ux;
    CHECK_EQ_INT(tg_redis_parse_address("127.0.0.1:6379", host, sizeof(host), &port, &ux), 0);
    CHECK_EQ_STR(host, "127.0.0.1");
    CHECK_EQ_INT(port, 6379);
    CHECK(!ux);
    CHECK_EQ_INT(tg_redis_parse_address("[::1]:6380", host, sizeof(host), &port, &ux), 0);
    CHECK_EQ_STR(host, "::1");
    CHECK_EQ_INT(port, 6380);
    CHECK_EQ_INT(tg_redis_parse_address("redis.internal:1", host, sizeof(host), &port, &ux), 0);
    CHECK_EQ_STR(host, "redis.internal");
    CHECK_EQ_INT(tg_redis_parse_address("unix:/run/redis.sock", host, sizeof(host), &port, &ux), 0);
    CHECK_EQ_STR(host, "/run/redis.sock");
    CHECK(ux);
    static const char *const bad[] = {"",         "host",    "host:",    "host:0",    "host:65536",
                                      ":6379",    "unix:",   "::1:6379", "[::1]6379", "[::1]:",
                                      "host:12a", "host:-1", NULL};
    for (int i = 0; bad[i] != NULL; i++)
        CHECK_EQ_INT(tg_redis_parse_address(bad[i], host, sizeof(host), &port, &ux), -1);
    CHECK_EQ_INT(tg_redis_parse_address(NULL, host, sizeof(host), &port, &ux), -1);
}

/* Issue 22: links, the tenant directory and the ticket thread keep their
 * own copies of a redis block and compare them on reload; a change of
 * sentinels, master or sentinel password is another server. */
TEST(config_copies)
{
    const char *sentinels[] = {"127.0.0.1:26379", "127.0.0.1:26380"};
    struct tg_config_redis a = {.password = "pw",
                                .db = 2,
                                .timeout_ms = 80,
                                .key_prefix = "p:",
                                .sentinels = sentinels,
                                .nsentinels = 2,
                                .master = "main",
                                .sentinel_password = "spw"};
    struct tg_config_redis *c = tg_redis_config_dup(&a);
    CHECK(c != NULL);
    if (c == NULL)
        return;
    CHECK(c->address == NULL);
    CHECK(c->sentinels != sentinels && c->sentinels[1] != sentinels[1]);
    CHECK_EQ_STR(c->sentinels[1], "127.0.0.1:26380");
    CHECK_EQ_STR(c->master, "main");
    CHECK_EQ_STR(c->sentinel_password, "spw");
    CHECK_EQ_STR(c->key_prefix, "p:");
    CHECK_EQ_INT(c->timeout_ms, 80);
    CHECK(tg_redis_config_same_server(&a, c));
    struct tg_config_redis b = a;
    b.timeout_ms = 5;
    b.key_prefix = "q:";
    CHECK(tg_redis_config_same_server(&b, c)); /* neither is the server */
    b = a;
    b.master = "other";
    CHECK(!tg_redis_config_same_server(&b, c));
    b = a;
    b.nsentinels = 1;
    CHECK(!tg_redis_config_same_server(&b, c));
    b = a;
    b.sentinel_password = NULL;
    CHECK(!tg_redis_config_same_server(&b, c));
    const char *other[] = {"127.0.0.1:26379", "127.0.0.1:26381"};
    b = a;
    b.sentinels = other;
    CHECK(!tg_redis_config_same_server(&b, c));
    b = (struct tg_config_redis){.address = "127.0.0.1:6379", .password = "pw", .db = 2};
    CHECK(!tg_redis_config_same_server(&b, c));
    char buf[128];
    CHECK_EQ_STR(tg_redis_config_describe(c, buf, sizeof(buf)),
                 "the primary of main (via 2 sentinels)");
    CHECK_EQ_STR(tg_redis_config_describe(&b, buf, sizeof(buf)), "127.0.0.1:6379");
    tg_redis_config_free(c);
    tg_redis_config_free(NULL);
}

TEST(resp_formatting)
{
    const char *argv[] = {"SET", "k\r\n", "", "12345678901"};
    size_t len[] = {3, 3, 0, 11};
    size_t n = 0;
    static const char want[] = "*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n$11\r\n12345678901\r\n";
    char stack[256];
    char *resp = format_resp(4, argv, len, stack, sizeof(stack), &n);
    CHECK(resp == stack && n == sizeof(want) - 1 && memcmp(resp, want, n) == 0);
    resp = format_resp(4, argv, len, stack, 8, &n); /* too small: malloc'd */
    CHECK(resp != NULL && resp != stack && n == sizeof(want) - 1 && memcmp(resp, want, n) == 0);
    free(resp);
    /* The decimal writer the formatter and the rate limiter use. */
    char d[24];
    CHECK_EQ_MEM(d, tg_str_u64(d, 0), "0");
    CHECK_EQ_MEM(d, tg_str_u64(d, 18446744073709551615ull), "18446744073709551615");
    CHECK_EQ_MEM(d, tg_str_i64(d, -1), "-1");
    CHECK_EQ_MEM(d, tg_str_i64(d, -9223372036854775807ll - 1), "-9223372036854775808");
    CHECK_EQ_MEM(d, tg_str_i64(d, 1000000), "1000000");
}

TEST(binary_safe_commands)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    struct tg_redis_options o = fast();
    struct tg_redis *r = connect_up(&c, &o);

    const char key[] = "bin\0key\r\n", val[] = "v\0\r\n$3\r\n";
    const char *argv[] = {"SET", key, val};
    size_t len[] = {3, sizeof(key) - 1, sizeof(val) - 1};
    struct rec a = {0}, b = {0};
    CHECK(tg_redis_command(r, 3, argv, len, 0, rec_cb, &a) != NULL);
    const char *gv[] = {"GET", key};
    size_t gl[] = {3, sizeof(key) - 1};
    CHECK(tg_redis_command(r, 2, gv, gl, 0, rec_cb, &b) != NULL);
    CHECK_EQ_INT(a.calls + b.calls, 0); /* never before the call returns */
    CHECK(h_run_until(loop, rec_done, &b, 2));
    CHECK_EQ_INT(a.type, REDIS_REPLY_STATUS);
    CHECK_EQ_INT(b.type, REDIS_REPLY_STRING);
    CHECK_EQ_INT(b.len, sizeof(val) - 1);
    CHECK(memcmp(b.str, val, sizeof(val) - 1) == 0);

    struct tg_redis_stats st;
    tg_redis_stats(r, &st);
    CHECK_EQ_INT(st.connects, 1);
    CHECK(st.replies >= 3); /* PING of the handshake, SET, GET */
    CHECK_EQ_INT(st.faults, 0);
    tg_redis_free(r);
}

/* tg_redis_flush writes at once: the server has the command before the
 * loop runs again (the reply still comes through the loop). */
TEST(flush_writes_without_the_loop)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    struct tg_redis_options o = fast();
    struct tg_redis *r = connect_up(&c, &o);
    redisContext *check = h_client(&srv);
    CHECK(check != NULL);
    const char *argv[] = {"INCR", "flush:counter"};
    size_t len[] = {4, 13};
    struct rec a = {0}, b = {0};
    CHECK(tg_redis_command(r, 2, argv, len, 0, rec_cb, &a) != NULL);
    if (check != NULL)
        CHECK_EQ_INT(h_int(check, "EXISTS flush:counter"), 0); /* still in hiredis */
    tg_redis_flush(r);
    long long seen = 0;
    for (int i = 0; i < 200 && seen == 0 && check != NULL; i++) {
        seen = h_int(check, "EXISTS flush:counter");
        if (seen == 0)
            usleep(5000);
    }
    CHECK_EQ_INT(seen, 1);
    CHECK_EQ_INT(a.calls, 0); /* replies only come through the loop */
    tg_redis_flush(r);        /* nothing to write: harmless */
    CHECK(tg_redis_command(r, 2, argv, len, 0, rec_cb, &b) != NULL);
    CHECK(h_run_until(loop, rec_done, &b, 2));
    CHECK_EQ_INT(a.type, REDIS_REPLY_INTEGER);
    CHECK_EQ_INT(b.type, REDIS_REPLY_INTEGER);
    if (check != NULL)
        redisFree(check);
    tg_redis_free(r);
}

TEST(unix_socket)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    char a[160];
    snprintf(a, sizeof(a), "unix:%s", srv.sock);
    c.address = a;
    struct tg_redis_options o = fast();
    struct tg_redis *r = connect_up(&c, &o);
    struct rec p = {0};
    CHECK(cmd(r, &p, "PING", NULL, NULL) != NULL);
    CHECK(h_run_until(loop, rec_done, &p, 2));
    CHECK_EQ_MEM(p.str, p.len, "PONG");
    tg_redis_free(r);
}

/* A host name is resolved when the link is made; reconnects reuse it. */
TEST(host_name)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    char a[64];
    snprintf(a, sizeof(a), "localhost:%d", srv.port);
    c.address = a;
    struct tg_redis_options o = fast();
    struct tg_redis *r = connect_up(&c, &o);
    CHECK(r->resolved);
    CHECK_EQ_STR(r->ip, "127.0.0.1");
    tg_redis_free(r);
}

TEST(auth_select_and_configure)
{
    struct h_redis auth;
    memset(&auth, 0, sizeof(auth));
    snprintf(auth.extra, sizeof(auth.extra), "--requirepass sekret");
    h_redis_start(&auth);

    struct tg_config_redis c = cfg_tcp(auth.port);
    c.password = "sekret";
    c.db = 3;
    struct tg_redis_options o = fast();
    struct tg_redis *r = connect_up(&c, &o);
    struct rec s = {0};
    CHECK(cmd(r, &s, "SET", "where", "db3") != NULL);
    CHECK(h_run_until(loop, rec_done, &s, 2));
    redisContext *sc = h_client(&auth);
    freeReplyObject(h_cmd(sc, "AUTH sekret"));
    freeReplyObject(h_cmd(sc, "SELECT 3"));
    redisReply *g = h_cmd(sc, "GET where");
    CHECK(g != NULL && g->type == REDIS_REPLY_STRING && strcmp(g->str, "db3") == 0);
    freeReplyObject(g);

    /* Same parameters: no reconnect. */
    struct tg_config_redis same = c;
    same.timeout_ms = 80;
    CHECK(!tg_redis_configure(r, &same));
    CHECK_EQ_INT(tg_redis_timeout_ms(r), 80);
    CHECK(tg_redis_state(r) == TG_REDIS_UP);

    /* Another db: pending commands fail, then it reconnects by itself. */
    struct rec pend = {0};
    CHECK(cmd(r, &pend, "PING", NULL, NULL) != NULL);
    struct tg_config_redis db5 = c;
    db5.db = 5;
    CHECK(tg_redis_configure(r, &db5));
    CHECK_EQ_INT(pend.nulls, 1);
    CHECK(tg_redis_state(r) == TG_REDIS_CONNECTING);
    CHECK(h_run_until(loop, is_up, r, 3));
    struct rec s5 = {0};
    CHECK(cmd(r, &s5, "SET", "where", "db5") != NULL);
    CHECK(h_run_until(loop, rec_done, &s5, 2));
    freeReplyObject(h_cmd(sc, "SELECT 5"));
    g = h_cmd(sc, "GET where");
    CHECK(g != NULL && g->type == REDIS_REPLY_STRING && strcmp(g->str, "db5") == 0);
    freeReplyObject(g);
    tg_redis_free(r);

    /* A wrong password: DOWN after the first attempt, nothing sent, no
     * crash; a configure with the right one brings it up. */
    struct tg_config_redis bad = c;
    bad.password = "wrong";
    r = tg_redis_new(loop, &bad, &o);
    CHECK(h_run_until(loop, is_down, r, 2));
    struct rec n = {0};
    CHECK(cmd(r, &n, "PING", NULL, NULL) == NULL);
    h_run_for(loop, 0.1);
    struct tg_redis_stats st;
    tg_redis_stats(r, &st);
    CHECK_EQ_INT(st.connects, 0);
    CHECK(st.faults >= 1);
    CHECK(strstr(r->last_error, "WRONGPASS") != NULL || strstr(r->last_error, "invalid") != NULL);
    CHECK(tg_redis_configure(r, &c));
    CHECK(h_run_until(loop, is_up, r, 3));
    tg_redis_free(r);

    redisFree(sc);
    h_redis_stop(&auth);
}

/* The deadline fires within the timeout and a few ms; the reply that
 * comes after it is ignored (one callback only). */
TEST(timeout_then_late_reply)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    struct tg_redis_options o = fast();
    struct tg_redis *r = connect_up(&c, &o);

    redisContext *sleeper = start_sleep("0.2");
    struct rec p = {0};
    ev_now_update(loop);
    double t0 = h_now();
    CHECK(cmd(r, &p, "PING", NULL, NULL) != NULL);
    CHECK(h_run_until(loop, rec_done, &p, 1));
    double waited = p.at - t0;
    CHECK_EQ_INT(p.nulls, 1);
    CHECK(waited >= 0.045 && waited < 0.050 + 0.015);
    h_run_for(loop, 0.25); /* the late PONG arrives now */
    CHECK_EQ_INT(p.calls, 1);
    struct tg_redis_stats st;
    tg_redis_stats(r, &st);
    CHECK_EQ_INT(st.timeouts, 1);
    CHECK(tg_redis_state(r) == TG_REDIS_UP); /* one fault does not open */
    end_sleep(sleeper);

    /* Still usable. */
    struct rec q = {0};
    CHECK(cmd(r, &q, "PING", NULL, NULL) != NULL);
    CHECK(h_run_until(loop, rec_done, &q, 1));
    CHECK_EQ_INT(q.nulls, 0);
    tg_redis_free(r);
}

TEST(cancel)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    struct tg_redis_options o = fast();
    struct tg_redis *r = connect_up(&c, &o);

    /* Cancelled before its reply: never called back. */
    struct rec a = {0}, b = {0};
    tg_redis_cancel(cmd(r, &a, "PING", NULL, NULL));
    CHECK(cmd(r, &b, "PING", NULL, NULL) != NULL);
    CHECK(h_run_until(loop, rec_done, &b, 1));
    CHECK_EQ_INT(a.calls, 0);

    /* Cancelled while the server sleeps: no callback at the deadline nor
     * at the late reply, and its deadline is no fault. */
    redisContext *sleeper = start_sleep("0.1");
    struct rec d = {0};
    tg_redis_cancel(cmd(r, &d, "PING", NULL, NULL));
    h_run_for(loop, 0.15);
    end_sleep(sleeper);
    h_run_for(loop, 0.02);
    CHECK_EQ_INT(d.calls, 0);
    struct tg_redis_stats st;
    tg_redis_stats(r, &st);
    CHECK_EQ_INT(st.timeouts, 0);
    CHECK_EQ_INT(st.faults, 0);
    tg_redis_free(r);
}

TEST(free_with_pending)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    struct tg_redis_options o = fast();
    struct tg_redis *r = connect_up(&c, &o);
    struct rec a = {0}, b = {0}, x = {0};
    CHECK(cmd(r, &a, "PING", NULL, NULL) != NULL);
    CHECK(cmd(r, &b, "PING", NULL, NULL) != NULL);
    tg_redis_cancel(cmd(r, &x, "PING", NULL, NULL));
    tg_redis_free(r);
    CHECK_EQ_INT(a.nulls, 1);
    CHECK_EQ_INT(b.nulls, 1);
    CHECK_EQ_INT(x.calls, 0);
    h_run_for(loop, 0.02);
    CHECK_EQ_INT(a.calls + b.calls, 2);
}

/* A reply callback that frees its link: the others get NULL, the free
 * completes after the callback returns (ASan watches). */
struct freer {
    struct tg_redis *r;
    int calls;
};

static int free_in_cb(void *arg, const redisReply *reply)
{
    struct freer *f = arg;
    f->calls++;
    (void)reply;
    tg_redis_free(f->r);
    return 0;
}

TEST(free_inside_callback)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    struct tg_redis_options o = fast();
    struct tg_redis *r = connect_up(&c, &o);
    struct freer f = {r, 0};
    const char *argv[] = {"PING"};
    size_t len[] = {4};
    struct rec after = {0};
    CHECK(tg_redis_command(r, 1, argv, len, 0, free_in_cb, &f) != NULL);
    CHECK(cmd(r, &after, "PING", NULL, NULL) != NULL);
    h_run_for(loop, 0.05);
    CHECK_EQ_INT(f.calls, 1);
    CHECK_EQ_INT(after.calls, 1);
    CHECK_EQ_INT(after.nulls, 1);
}

/* A reply callback reconfigures (the drop waits until it returns); the
 * drop fails the next command, whose callback frees the link: the free
 * must still happen (LeakSanitizer watches) and nothing run after it. */
static struct tg_config_redis other_db;

static int reconfigure_in_cb(void *arg, const redisReply *reply)
{
    struct freer *f = arg;
    f->calls++;
    CHECK(reply != NULL);
    CHECK(tg_redis_configure(f->r, &other_db));
    return 0;
}

TEST(free_during_deferred_drop)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    struct tg_redis_options o = fast();
    struct tg_redis *r = connect_up(&c, &o);
    other_db = c;
    other_db.db = 7;
    struct freer a = {r, 0}, b = {r, 0};
    const char *argv[] = {"PING"};
    size_t len[] = {4};
    CHECK(tg_redis_command(r, 1, argv, len, 0, reconfigure_in_cb, &a) != NULL);
    CHECK(tg_redis_command(r, 1, argv, len, 0, free_in_cb, &b) != NULL);
    h_run_for(loop, 0.05);
    CHECK_EQ_INT(a.calls, 1);
    CHECK_EQ_INT(b.calls, 1);
}

struct transitions {
    int n;
    enum tg_redis_state seen[16];
};

static void on_transition(void *arg, enum tg_redis_state old, enum tg_redis_state state)
{
    struct transitions *t = arg;
    (void)old;
    if (t->n < 16)
        t->seen[t->n++] = state;
}

/* A stopped server: commands time out, the breaker opens after five,
 * then refuses at once; the server resumes and a probe closes it. */
TEST(breaker_opens_and_closes)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    struct tg_redis_options o = fast();
    struct transitions tr = {0};
    o.on_state = on_transition;
    o.arg = &tr;
    struct tg_redis *r = connect_up(&c, &o);

    kill(srv.pid, SIGSTOP);
    struct rec p[5];
    memset(p, 0, sizeof(p));
    for (int i = 0; i < 5; i++)
        CHECK(cmd(r, &p[i], "PING", NULL, NULL) != NULL);
    CHECK(h_run_until(loop, is_open, r, 1));
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(p[i].nulls, 1);
    double t0 = h_now();
    struct rec q = {0};
    CHECK(cmd(r, &q, "PING", NULL, NULL) == NULL);
    CHECK(h_now() - t0 < 0.001);
    h_run_for(loop, 0.15); /* failed probes back off */
    CHECK(tg_redis_state(r) == TG_REDIS_CIRCUIT_OPEN);
    kill(srv.pid, SIGCONT);
    CHECK(h_run_until(loop, is_up, r, 2));
    struct tg_redis_stats st;
    tg_redis_stats(r, &st);
    CHECK(st.refused >= 1);
    CHECK(st.timeouts >= 5);
    CHECK_EQ_INT(st.disconnects, 0); /* the connection survived */
    /* UP (start), CIRCUIT_OPEN, UP: one report per change. */
    CHECK_EQ_INT(tr.n, 3);
    CHECK(tr.seen[0] == TG_REDIS_UP);
    CHECK(tr.seen[1] == TG_REDIS_CIRCUIT_OPEN);
    CHECK(tr.seen[2] == TG_REDIS_UP);
    tg_redis_free(r);
}

/* The server dies: pending commands fail at once (no waiting for the
 * deadline), commands are refused while down, and the link comes back by
 * itself when the server does. */
TEST(server_dies_and_returns)
{
    struct tg_config_redis c = cfg_tcp(srv.port);
    struct tg_redis_options o = fast();
    struct transitions tr = {0};
    o.on_state = on_transition;
    o.arg = &tr;
    struct tg_redis *r = connect_up(&c, &o);

    redisContext *sleeper = start_sleep("1");
    struct rec p = {0};
    c.timeout_ms = 1000;
    tg_redis_configure(r, &c); /* a long deadline: the EOF must beat it */
    CHECK(cmd(r, &p, "PING", NULL, NULL) != NULL);
    h_run_for(loop, 0.01);
    double t0 = h_now();
    h_redis_stop(&srv);
    redisFree(sleeper);
    CHECK(h_run_until(loop, rec_done, &p, 1));
    CHECK_EQ_INT(p.nulls, 1);
    CHECK(p.at - t0 < 0.1);
    CHECK(h_run_until(loop, is_down, r, 1));
    struct rec q = {0};
    CHECK(cmd(r, &q, "PING", NULL, NULL) == NULL);
    h_run_for(loop, 0.3); /* a few failed reconnects: no new state */
    int before = tr.n;
    h_redis_start(&srv);
    CHECK(h_run_until(loop, is_up, r, 3));
    CHECK_EQ_INT(tr.n, before + 1);
    struct rec s = {0};
    CHECK(cmd(r, &s, "PING", NULL, NULL) != NULL);
    CHECK(h_run_until(loop, rec_done, &s, 1));
    CHECK_EQ_INT(s.nulls, 0);
    struct tg_redis_stats st;
    tg_redis_stats(r, &st);
    CHECK_EQ_INT(st.disconnects, 1);
    CHECK_EQ_INT(st.connects, 2);
    tg_redis_free(r);
}

/* A fake server answering with bytes no real Redis sends after a single
 * command: the extra reply trips hiredis 0.14's assert unless the guard
 * refuses it; garbage and absurd sizes are protocol errors. */
TEST(hostile_server)
{
    struct h_fake f;
    h_fake_start(&f, "0000000000000000000000000000000000000000");
    struct tg_config_redis c = cfg_tcp(f.port);
    struct tg_redis_options o = fast();
    o.breaker_faults = 100;
    static const struct {
        const char *reply;
        bool fails, drops;
    } cases[] = {
        {"+OK\r\n+OK\r\n", false, true},     /* one reply too many */
        {":1\r\n*1\r\n:2\r\n", false, true}, /* a second one, an array */
        {"$-1\r\n-ERR spontaneous\r\n", false, true},
        {"?garbage\r\n", true, true},    /* not RESP */
        {"*2000000000\r\n", true, true}, /* absurd array */
        {"$5\r\nab", true, false},       /* cut short: timeout */
        {"CLOSE", true, true},           /* closed */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        h_fake_set(&f, cases[i].reply);
        struct tg_redis *r = connect_up(&c, &o);
        struct rec p = {0};
        CHECK(cmd(r, &p, "GET", "x", NULL) != NULL);
        CHECK(h_run_until(loop, rec_done, &p, 1));
        h_run_for(loop, 0.03);
        CHECK_EQ_INT(p.calls, 1);
        CHECK_EQ_INT(p.nulls, cases[i].fails);
        struct tg_redis_stats st;
        tg_redis_stats(r, &st);
        CHECK_EQ_INT(st.disconnects, cases[i].drops);
        if (i < 2)
            CHECK(strstr(r->last_error, "unsolicited") != NULL);
        tg_redis_free(r);
    }
    h_fake_stop(&f);
}

/* Unreachable from the start: DOWN, refusals, bounded backoff, and no
 * logging or state report per attempt. */
TEST(never_reachable)
{
    struct tg_config_redis c = cfg_tcp(h_free_port());
    struct tg_redis_options o = fast();
    struct transitions tr = {0};
    o.on_state = on_transition;
    o.arg = &tr;
    struct tg_redis *r = tg_redis_new(loop, &c, &o);
    CHECK(tg_redis_state(r) == TG_REDIS_CONNECTING);
    h_run_for(loop, 0.5);
    CHECK(is_down(r));
    /* DOWN once, then CIRCUIT_OPEN after five failed attempts. */
    CHECK(tr.n >= 1 && tr.n <= 2);
    CHECK(tr.seen[0] == TG_REDIS_DOWN);
    struct tg_redis_stats st;
    tg_redis_stats(r, &st);
    CHECK(st.faults >= 3 && st.faults <= 12);
    tg_redis_free(r);

    struct tg_config_redis b = c;
    b.address = "not an address";
    r = tg_redis_new(loop, &b, &o);
    h_run_for(loop, 0.05);
    CHECK(is_down(r));
    tg_redis_free(r);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("TG_TEST_VERBOSE") == NULL)
        tg_log_set_level(TG_LOG_ERROR + 1);
    loop = ev_loop_new(EVFLAG_AUTO);
    h_redis_start(&srv);

    RUN(parse_address);
    RUN(config_copies);
    RUN(resp_formatting);
    RUN(binary_safe_commands);
    RUN(flush_writes_without_the_loop);
    RUN(unix_socket);
    RUN(host_name);
    RUN(auth_select_and_configure);
    RUN(timeout_then_late_reply);
    RUN(cancel);
    RUN(free_with_pending);
    RUN(free_inside_callback);
    RUN(free_during_deferred_drop);
    RUN(breaker_opens_and_closes);
    RUN(server_dies_and_returns);
    RUN(hostile_server);
    RUN(never_reachable);

    h_redis_stop(&srv);
    ev_loop_destroy(loop);
    return TEST_SUMMARY();
}
