/* Ticket key material agreed through a real redis-server (issue 19): the
 * rounds create the current and next epochs' keys once (SET NX: the first
 * gateway wins, the others read it), read what other gateways made, keep
 * what they know when Redis is down or answers garbage (logging once per
 * change), heal a flushed Redis with the keys in use; the thread follows
 * settings and forgets the material when stopped. Also the blocking
 * connection helper of redis.c it uses. The keys themselves are in
 * test_tls_tickets.c. */
#include "../../src/ticket_share.c"

#include "test.h"
#include "redis_harness.h"

static struct h_redis srv;
static const int64_t period = 60000;
static _Atomic int64_t fake_now;

static int64_t fake_clock(void)
{
    return fake_now;
}

static void at_epoch(int64_t epoch)
{
    fake_now = epoch * period + 500;
}

static struct share_cfg settings(int port, const char *prefix)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    struct tg_config_redis r = {.address = addr, .timeout_ms = 200};
    return (struct share_cfg){
        .server = tg_redis_config_dup(&r),
        .prefix = strdup(prefix),
        .period_ms = period,
    };
}

/* A gateway's thread state, without the thread. */
static struct share *gateway(int port, const char *prefix)
{
    struct share *sh = calloc(1, sizeof(*sh));
    sh->cfg = settings(port, prefix);
    return sh;
}

static void gateway_free(struct share *sh)
{
    if (sh->c != NULL)
        redisFree(sh->c);
    cfg_clear(&sh->cfg);
    free(sh);
}

static enum share_state round_of(struct share *sh)
{
    char why[WHY_MAX] = "";
    return sync_round(sh, why, sizeof(why));
}

/* GET <prefix>ticket:<epoch> on the test's own client: its length (-1 for
 * none), the bytes in `out` (32 at most). */
static long stored(redisContext *c, const char *prefix, int64_t epoch, unsigned char *out)
{
    redisReply *r = h_cmd(c, "GET %sticket:%lld", prefix, (long long)epoch);
    long n = -1;
    if (r != NULL && r->type == REDIS_REPLY_STRING) {
        n = (long)r->len;
        memcpy(out, r->str, r->len < 32 ? r->len : 32);
    }
    freeReplyObject(r);
    return n;
}

static long long ttl_of(redisContext *c, const char *prefix, int64_t epoch)
{
    return h_int(c, "TTL %sticket:%lld", prefix, (long long)epoch);
}

static bool known(int64_t epoch, unsigned char out[32])
{
    return tg_tls_tickets_share_get(epoch, out);
}

TEST(blocking_connect)
{
    char err[256];
    struct tg_config_redis c = {.address = NULL, .timeout_ms = 200};
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", srv.port);
    c.address = addr;
    redisContext *rc = tg_redis_connect_blocking(&c, 1000, err, sizeof(err));
    CHECK(rc != NULL);
    if (rc != NULL) {
        redisReply *r = redisCommand(rc, "PING");
        CHECK(r != NULL && r->type == REDIS_REPLY_STATUS);
        freeReplyObject(r);
        redisFree(rc);
    }

    /* AUTH and SELECT; a wrong password is refused with a reason. */
    struct h_redis auth;
    memset(&auth, 0, sizeof(auth));
    snprintf(auth.extra, sizeof(auth.extra), "--requirepass sekret");
    h_redis_start(&auth);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", auth.port);
    c.password = "sekret";
    c.db = 3;
    rc = tg_redis_connect_blocking(&c, 1000, err, sizeof(err));
    CHECK(rc != NULL);
    if (rc != NULL) {
        freeReplyObject(redisCommand(rc, "SET where db3"));
        redisFree(rc);
    }
    redisContext *check = h_client(&auth);
    freeReplyObject(h_cmd(check, "AUTH sekret"));
    freeReplyObject(h_cmd(check, "SELECT 3"));
    redisReply *g = h_cmd(check, "GET where");
    CHECK(g != NULL && g->type == REDIS_REPLY_STRING && strcmp(g->str, "db3") == 0);
    freeReplyObject(g);
    redisFree(check);
    c.password = "wrong";
    CHECK(tg_redis_connect_blocking(&c, 1000, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "AUTH") != NULL);
    h_redis_stop(&auth);

    /* Nobody there; not an address. */
    c.password = NULL;
    c.db = 0;
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", h_free_port());
    CHECK(tg_redis_connect_blocking(&c, 1000, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "connect") != NULL);
    c.address = "nonsense";
    CHECK(tg_redis_connect_blocking(&c, 1000, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "bad address") != NULL);

    /* An absurd array announced by a broken server fails the reply (no
     * 16 GB calloc); the command's deadline holds. */
    struct h_fake f;
    h_fake_start(&f, "0000000000000000000000000000000000000000");
    h_fake_set(&f, "*2000000000\r\n");
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", f.port);
    c.address = addr;
    rc = tg_redis_connect_blocking(&c, 1000, err, sizeof(err));
    CHECK(rc != NULL);
    if (rc != NULL) {
        redisReply *r = redisCommand(rc, "GET x");
        CHECK(r == NULL && rc->err != 0);
        freeReplyObject(r);
        redisFree(rc);
        h_fake_set(&f, "$5\r\nab");
        rc = tg_redis_connect_blocking(&c, 1000, err, sizeof(err));
        double t0 = h_now();
        r = redisCommand(rc, "GET x");
        CHECK(r == NULL && h_now() - t0 < 1.0);
        freeReplyObject(r);
        redisFree(rc);
    }
    h_fake_stop(&f);
}

/* The first gateway creates cur and cur+1 (expiring after four periods),
 * not the past ones; a second gateway reads the same material. */
TEST(first_gateway_creates_others_agree)
{
    redisContext *c = h_client(&srv);
    freeReplyObject(h_cmd(c, "FLUSHALL"));
    tg_tls_tickets_share_clear();
    const int64_t e = 28500000;
    at_epoch(e);
    struct share *a = gateway(srv.port, "fleet:");
    CHECK_EQ_INT(round_of(a), SHARE_UP);
    unsigned char cur[32], next[32], mine[32];
    CHECK_EQ_INT(stored(c, "fleet:", e, cur), 32);
    CHECK_EQ_INT(stored(c, "fleet:", e + 1, next), 32);
    CHECK(memcmp(cur, next, 32) != 0);
    CHECK_EQ_INT(stored(c, "fleet:", e - 1, mine), -1);
    CHECK_EQ_INT(stored(c, "fleet:", e - 2, mine), -1);
    long long ttl = ttl_of(c, "fleet:", e);
    CHECK(ttl > 4 * 60 - 5 && ttl <= 4 * 60);
    CHECK(known(e, mine) && memcmp(mine, cur, 32) == 0);
    CHECK(known(e + 1, mine) && memcmp(mine, next, 32) == 0);
    CHECK(!known(e - 1, mine));

    /* Another process: nothing known, reads (does not overwrite). */
    tg_tls_tickets_share_clear();
    struct share *b = gateway(srv.port, "fleet:");
    CHECK_EQ_INT(round_of(b), SHARE_UP);
    CHECK(known(e, mine) && memcmp(mine, cur, 32) == 0);
    CHECK(known(e + 1, mine) && memcmp(mine, next, 32) == 0);
    unsigned char again[32];
    CHECK_EQ_INT(stored(c, "fleet:", e, again), 32);
    CHECK(memcmp(again, cur, 32) == 0);

    /* Another prefix is another fleet. */
    struct share *other = gateway(srv.port, "other:");
    tg_tls_tickets_share_clear();
    CHECK_EQ_INT(round_of(other), SHARE_UP);
    CHECK(known(e, mine) && memcmp(mine, cur, 32) != 0);
    gateway_free(other);

    /* Whatever another gateway set first for the next epoch is what we
     * take once the clock gets there. */
    unsigned char w[32];
    memset(w, 'W', sizeof(w));
    redisReply *r = redisCommand(c, "SET fleet:ticket:%lld %b", (long long)(e + 2), w, sizeof(w));
    freeReplyObject(r);
    at_epoch(e + 1);
    CHECK_EQ_INT(round_of(a), SHARE_UP);
    CHECK(known(e + 2, mine) && memcmp(mine, w, 32) == 0);
    CHECK(known(e, mine) && memcmp(mine, cur, 32) == 0); /* still decrypts */
    gateway_free(a);
    gateway_free(b);
    redisFree(c);
}

/* A wrong length or a wrong type is a bad reply: the known material stays,
 * the log says so once; fixed, the keys in use are written back. */
TEST(bad_replies_keep_what_is_known)
{
    redisContext *c = h_client(&srv);
    freeReplyObject(h_cmd(c, "FLUSHALL"));
    tg_tls_tickets_share_clear();
    const int64_t e = 28600000;
    at_epoch(e);
    struct share *a = gateway(srv.port, "tg:");
    CHECK_EQ_INT(round_of(a), SHARE_UP);
    CHECK(report(a, SHARE_UP, ""));
    unsigned char before[32], now[32];
    CHECK(known(e, before));

    freeReplyObject(h_cmd(c, "SET tg:ticket:%lld short", (long long)e));
    CHECK_EQ_INT(round_of(a), SHARE_BAD);
    CHECK(known(e, now) && memcmp(now, before, 32) == 0);
    CHECK(report(a, SHARE_BAD, "x"));
    CHECK_EQ_INT(round_of(a), SHARE_BAD);
    CHECK(!report(a, SHARE_BAD, "x")); /* once per change */

    freeReplyObject(h_cmd(c, "DEL tg:ticket:%lld", (long long)e));
    freeReplyObject(h_cmd(c, "RPUSH tg:ticket:%lld a b", (long long)e));
    char why[WHY_MAX] = "";
    CHECK_EQ_INT(sync_round(a, why, sizeof(why)), SHARE_BAD);
    CHECK(strstr(why, "WRONGTYPE") != NULL);
    CHECK(known(e, now) && memcmp(now, before, 32) == 0);

    /* A flushed Redis gets the keys the fleet uses back, not new ones. */
    freeReplyObject(h_cmd(c, "FLUSHALL"));
    CHECK_EQ_INT(round_of(a), SHARE_UP);
    CHECK(report(a, SHARE_UP, ""));
    unsigned char back[32];
    CHECK_EQ_INT(stored(c, "tg:", e, back), 32);
    CHECK(memcmp(back, before, 32) == 0);
    gateway_free(a);
    redisFree(c);
}

/* Redis stops: DOWN (logged once), the known material stays and the
 * connection is dropped; back: UP again. */
TEST(redis_down_keeps_what_is_known)
{
    tg_tls_tickets_share_clear();
    const int64_t e = 28700000;
    at_epoch(e);
    struct share *a = gateway(srv.port, "down:");
    CHECK_EQ_INT(round_of(a), SHARE_UP);
    CHECK(report(a, SHARE_UP, ""));
    unsigned char before[32], now[32];
    CHECK(known(e, before));
    h_redis_stop(&srv);
    CHECK_EQ_INT(round_of(a), SHARE_DOWN);
    CHECK(a->c == NULL);
    CHECK(report(a, SHARE_DOWN, "gone"));
    CHECK_EQ_INT(round_of(a), SHARE_DOWN);
    CHECK(!report(a, SHARE_DOWN, "gone"));
    CHECK(known(e, now) && memcmp(now, before, 32) == 0);
    h_redis_start(&srv);
    CHECK_EQ_INT(round_of(a), SHARE_UP);
    CHECK(report(a, SHARE_UP, ""));
    /* Redis restarted empty: it got our keys back. */
    redisContext *c = h_client(&srv);
    unsigned char back[32];
    CHECK_EQ_INT(stored(c, "down:", e, back), 32);
    CHECK(memcmp(back, before, 32) == 0);
    redisFree(c);
    gateway_free(a);
}

static bool wait_known(int64_t epoch, double seconds)
{
    unsigned char m[32];
    double until = h_now() + seconds;
    while (h_now() < until) {
        if (known(epoch, m))
            return true;
        usleep(10000);
    }
    return false;
}

/* The thread, through the calls main makes: started for a fleet, told of
 * a new key prefix, stopped when the fleet goes, material forgotten. */
TEST(thread_follows_the_config)
{
    redisContext *c = h_client(&srv);
    freeReplyObject(h_cmd(c, "FLUSHALL"));
    tg_tls_tickets_share_clear();
    const int64_t e = 28800000;
    at_epoch(e);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", srv.port);
    struct tg_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.tls.fleet = true;
    cfg.tls.session_tickets = true;
    cfg.tls.ticket_key_rotation_ms = period;
    cfg.tls.redis.address = addr;
    cfg.tls.redis.timeout_ms = 200;
    cfg.tls.redis.key_prefix = "one:";
    cfg.tls_server = (struct tg_tls_server *)&cfg; /* only tested for NULL */
    CHECK(tg_ticket_share_wanted(&cfg));
    CHECK_EQ_INT(tg_ticket_share_follow(&cfg), 0);
    CHECK(T.running);
    CHECK(wait_known(e, 3));
    unsigned char m[32], s[32];
    CHECK_EQ_INT(stored(c, "one:", e, s), 32);
    CHECK(known(e, m) && memcmp(m, s, 32) == 0);

    /* A new prefix: the old material is dropped, the new fleet's read. */
    cfg.tls.redis.key_prefix = "two:";
    CHECK_EQ_INT(tg_ticket_share_follow(&cfg), 0);
    double until = h_now() + 3;
    while (h_now() < until && stored(c, "two:", e, s) != 32)
        usleep(10000);
    CHECK_EQ_INT(stored(c, "two:", e, s), 32);
    CHECK(wait_known(e, 3));
    until = h_now() + 3;
    while (h_now() < until && !(known(e, m) && memcmp(m, s, 32) == 0))
        usleep(10000);
    CHECK(known(e, m) && memcmp(m, s, 32) == 0);

    /* The file wins; without a fleet, or tickets, nothing to share. */
    struct tg_config f = cfg;
    f.tls.ticket_key_file = "/some/file";
    CHECK(!tg_ticket_share_wanted(&f));
    f = cfg;
    f.tls.session_tickets = false;
    CHECK(!tg_ticket_share_wanted(&f));
    f = cfg;
    f.tls_server = NULL;
    CHECK(!tg_ticket_share_wanted(&f));
    f = cfg;
    f.tls.fleet = false;
    CHECK_EQ_INT(tg_ticket_share_follow(&f), 0);
    CHECK(!T.running);
    CHECK(!known(e, m));

    /* Started again, stopped as at shutdown. */
    CHECK_EQ_INT(tg_ticket_share_follow(&cfg), 0);
    CHECK(wait_known(e, 3));
    tg_ticket_share_stop();
    CHECK(!T.running);
    CHECK(!known(e, m));
    tg_ticket_share_stop(); /* twice: nothing */
    redisFree(c);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("TG_TEST_VERBOSE") == NULL)
        tg_log_set_level(TG_LOG_ERROR + 1);
    tg_tls_tickets_set_clock(fake_clock);
    if (tg_tls_tickets_init() < 0) {
        fprintf(stderr, "tg_tls_tickets_init failed\n");
        return 2;
    }
    h_redis_start(&srv);

    RUN(blocking_connect);
    RUN(first_gateway_creates_others_agree);
    RUN(bad_replies_keep_what_is_known);
    RUN(redis_down_keeps_what_is_known);
    RUN(thread_follows_the_config);

    h_redis_stop(&srv);
    tg_tls_tickets_cleanup();
    tg_tls_tickets_set_clock(NULL);
    return TEST_SUMMARY();
}
