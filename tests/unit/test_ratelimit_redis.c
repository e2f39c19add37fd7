/* The Redis rate-limit store against a real redis-server started here:
 * the Lua GCRA checked against the C core request by request (fed the TIME
 * the script used), all-or-nothing, peek, TTLs, key format and long keys,
 * pipelining, transparent reload after SCRIPT FLUSH, a stopped and a
 * restarted server (breaker open, then closed by itself), a slow server
 * (timeout, late reply ignored), a fake server's wrong replies, heartbeats,
 * cancel and free semantics, reset and configure; refunds (the stored TAT
 * given back on Redis' clock, missing and garbage keys, the script cache
 * flushed, Redis stopped, wrong replies). */
#include <stdlib.h>

/* Batch allocations that fail on demand (see batch_malloc). */
static int batch_allocs_fail;
static void *test_batch_malloc(size_t n)
{
    return batch_allocs_fail ? NULL : malloc(n);
}
static void *test_batch_calloc(size_t k, size_t n)
{
    return batch_allocs_fail ? NULL : calloc(k, n);
}
#define batch_malloc test_batch_malloc
#define batch_calloc test_batch_calloc

#include "../../src/ratelimit_redis.c"

#include <inttypes.h>

#include "test.h"
#include "redis_harness.h"

static struct h_redis srv;
static struct ev_loop *loop;
static redisContext *sc; /* blocking client for checks */

static const int64_t MS = 1000000; /* ns */

struct got {
    int calls, status;
    bool allowed;
    size_t n;
    struct tg_ratelimit_result res[16];
    int64_t now_us;
    unsigned iteration;
    double at;
    struct tg_ratelimit_redis *lim;
};

static void got_cb(void *arg, int status, bool allowed, const struct tg_ratelimit_result *res,
                   size_t n)
{
    struct got *g = arg;
    g->calls++;
    g->status = status;
    g->allowed = allowed;
    g->n = n;
    if (res != NULL)
        memcpy(g->res, res, n * sizeof(*res));
    CHECK(status == 0 || (res == NULL && n == 0));
    if (g->lim != NULL)
        g->now_us = g->lim->last_time_us;
    g->iteration = ev_iteration(loop);
    g->at = h_now();
}

static bool got_done(void *arg)
{
    return ((struct got *)arg)->calls > 0;
}

static bool lim_up(void *arg)
{
    return tg_ratelimit_redis_state(arg) == TG_REDIS_UP;
}

static bool lim_ready(void *arg)
{
    struct tg_ratelimit_redis *r = arg;
    return tg_ratelimit_redis_state(r) == TG_REDIS_UP && !r->loading;
}

static bool lim_open(void *arg)
{
    return tg_ratelimit_redis_state(arg) == TG_REDIS_CIRCUIT_OPEN;
}

/* The limiter's link counters (every node's, on a cluster). */
static void link_stats(const struct tg_ratelimit_redis *r, struct tg_redis_stats *out)
{
    struct tg_redis_cluster_stats cs;
    tg_redis_cluster_stats(r->link, &cs);
    *out = cs.links;
}

static char addr_buf[64];

static struct tg_config_redis cfg_port(int port)
{
    struct tg_config_redis c;
    memset(&c, 0, sizeof(c));
    snprintf(addr_buf, sizeof(addr_buf), "127.0.0.1:%d", port);
    c.address = addr_buf;
    c.timeout_ms = 50;
    c.key_prefix = "tg:";
    return c;
}

static struct tg_ratelimit_redis *up(const struct tg_config_redis *c, const char *id,
                                     bool heartbeat)
{
    struct tg_ratelimit_redis *r = tg_ratelimit_redis_new(loop, c, id, heartbeat);
    CHECK(r != NULL);
    /* Up, and the SCRIPT LOAD sent on connecting answered. */
    CHECK(h_run_until(loop, lim_ready, r, 3));
    return r;
}

static struct tg_ratelimit_redis_op op(const char *policy, const char *key, int64_t interval_ns,
                                       int64_t burst, int64_t delay, int64_t cost)
{
    struct tg_ratelimit_redis_op o;
    memset(&o, 0, sizeof(o));
    o.policy = policy;
    o.key = key;
    o.keylen = strlen(key);
    o.params.interval_ns = interval_ns;
    o.params.burst = burst;
    o.params.delay = delay;
    o.cost = cost;
    return o;
}

/* Takes and waits for the callback. */
static void take_wait(struct tg_ratelimit_redis *r, const struct tg_ratelimit_redis_op *ops,
                      size_t n, bool peek, struct got *g)
{
    memset(g, 0, sizeof(*g));
    g->lim = r;
    CHECK(tg_ratelimit_redis_take(r, ops, n, peek, got_cb, g) != NULL);
    CHECK_EQ_INT(g->calls, 0);
    CHECK(h_run_until(loop, got_done, g, 2));
}

static long long exists(const char *key, size_t len)
{
    return h_int(sc, "EXISTS %b", key, len);
}

/* Refunds and waits for the callback. */
static void refund_wait(struct tg_ratelimit_redis *r, const struct tg_ratelimit_redis_op *ops,
                        size_t n, struct got *g)
{
    memset(g, 0, sizeof(*g));
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, ops, n, got_cb, g), 0);
    CHECK_EQ_INT(g->calls, 0);
    CHECK(h_run_until(loop, got_done, g, 2));
}

static long long get_ll(const char *key)
{
    redisReply *v = h_cmd(sc, "GET %s", key);
    long long x = v != NULL && v->type == REDIS_REPLY_STRING ? strtoll(v->str, NULL, 10) : -1;
    if (v != NULL)
        freeReplyObject(v);
    return x;
}

/* Calls of a command so far, from INFO commandstats. */
static long long cmd_calls(const char *cmd)
{
    char field[64];
    snprintf(field, sizeof(field), "cmdstat_%s:calls=", cmd);
    redisReply *r = h_cmd(sc, "INFO commandstats");
    const char *p = r != NULL && r->type == REDIS_REPLY_STRING ? strstr(r->str, field) : NULL;
    long long v = p != NULL ? atoll(p + strlen(field)) : 0;
    if (r != NULL)
        freeReplyObject(r);
    return v;
}

/* ---- the C reference: take_many's semantics on a map of TATs ---------- */

struct ref_key {
    char name[32];
    int64_t tat; /* ns */
};
static struct ref_key ref_keys[16];
static size_t ref_n;

static int64_t *ref_tat(const char *policy, const char *key)
{
    char name[32];
    snprintf(name, sizeof(name), "%s:%s", policy, key);
    for (size_t i = 0; i < ref_n; i++)
        if (strcmp(ref_keys[i].name, name) == 0)
            return &ref_keys[i].tat;
    snprintf(ref_keys[ref_n].name, sizeof(ref_keys[0].name), "%s", name);
    ref_keys[ref_n].tat = 0;
    return &ref_keys[ref_n++].tat;
}

static bool ref_take(const struct tg_ratelimit_redis_op *ops, size_t n, bool peek, int64_t now_ns,
                     struct tg_ratelimit_result *res)
{
    int64_t tat[16];
    bool all = true;
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        while (j > 0 && !(strcmp(ops[j - 1].policy, ops[i].policy) == 0 &&
                          strcmp(ops[j - 1].key, ops[i].key) == 0))
            j--;
        tat[i] = j > 0 ? tat[j - 1] : *ref_tat(ops[i].policy, ops[i].key);
        /* The store rounds the interval up to whole microseconds. */
        struct tg_ratelimit_params p = ops[i].params;
        p.interval_ns = (p.interval_ns + 999) / 1000 * 1000;
        all &= tg_ratelimit_gcra(&tat[i], now_ns, &p, ops[i].cost, &res[i]);
    }
    if (all && !peek)
        for (size_t i = 0; i < n; i++)
            *ref_tat(ops[i].policy, ops[i].key) = tat[i];
    return all;
}

static uint64_t rng; /* seeded in main, printed on failure */
static uint64_t seed;
static uint64_t rnd(uint64_t n)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (rng * 2685821657736338717ULL >> 11) % n;
}

/* Every result field, request by request, equals the C core's given the
 * microsecond TIME the script used (returned in its reply). */
TEST(gcra_matches_c_core)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    freeReplyObject(h_cmd(sc, "FLUSHALL"));
    ref_n = 0;

    static const char *const policies[] = {"p", "q", "r", "day"};
    static const char *const keys[] = {"a", "b", "c"};
    struct tg_ratelimit_params pp[4] = {
        {2 * MS, 3, 0},     /* 500/s, burst 3 */
        {3333333, 2, 2},    /* 300/s rounded to 3334 us, with delay */
        {5 * MS + 1, 1, 1}, /* burst 1 */
        /* 50000/d: tolerances near 2^52 us, the largest exact values */
        {86400 * 1000 * MS, 50000, 2},
    };
    int allowed = 0, refused = 0, delayed = 0, mismatches = 0, batches = 0;
    for (int iter = 0; iter < 400;) {
        /* Up to 6 requests in one EVALSHA: the script sees each key once,
         * shared by the requests that name it. */
        enum { MAXB = 6 };
        struct tg_ratelimit_redis_op ops[MAXB][3];
        size_t n[MAXB];
        bool peek[MAXB];
        struct got g[MAXB];
        size_t nb = 1 + rnd(MAXB);
        for (size_t b = 0; b < nb; b++) {
            n[b] = 1 + rnd(3);
            for (size_t i = 0; i < n[b]; i++) {
                size_t pi = rnd(4);
                int64_t cost = rnd(8) == 0 ? (int64_t)rnd(5) : 1;
                if (pi == 3 && rnd(4) == 0)
                    cost = (int64_t)rnd(60000); /* some beyond burst + delay */
                ops[b][i] = op(policies[pi], keys[rnd(3)], pp[pi].interval_ns, pp[pi].burst,
                               pp[pi].delay, cost);
            }
            peek[b] = rnd(10) == 0;
            memset(&g[b], 0, sizeof(g[b]));
            g[b].lim = r;
            CHECK(tg_ratelimit_redis_take(r, ops[b], n[b], peek[b], got_cb, &g[b]) != NULL);
        }
        CHECK(h_run_until(loop, got_done, &g[nb - 1], 2));
        batches++;
        for (size_t b = 0; b < nb; b++, iter++) {
            if (g[b].calls != 1 || g[b].status != 0) {
                CHECK_EQ_INT(g[b].calls, 1);
                CHECK_EQ_INT(g[b].status, 0);
                goto out;
            }
            /* One batch, one clock. */
            CHECK_EQ_INT(g[b].now_us, g[0].now_us);
            struct tg_ratelimit_result want[3];
            bool all = ref_take(ops[b], n[b], peek[b], g[b].now_us * 1000, want);
            CHECK_EQ_INT(g[b].allowed, all);
            CHECK_EQ_INT(g[b].n, n[b]);
            for (size_t i = 0; i < n[b]; i++) {
                const struct tg_ratelimit_result *x = &g[b].res[i], *y = &want[i];
                if (x->allowed != y->allowed || x->remaining != y->remaining ||
                    x->retry_after_ns != y->retry_after_ns || x->reset_ns != y->reset_ns ||
                    x->delay_ns != y->delay_ns) {
                    if (mismatches++ < 5)
                        fprintf(stderr,
                                "iter %d op %zu: redis %d %" PRId64 " %" PRId64 " %" PRId64
                                " %" PRId64 " vs C %d %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64
                                "\n",
                                iter, i, x->allowed, x->remaining, x->retry_after_ns, x->reset_ns,
                                x->delay_ns, y->allowed, y->remaining, y->retry_after_ns,
                                y->reset_ns, y->delay_ns);
                }
                delayed += x->delay_ns > 0;
            }
            if (g[b].allowed)
                allowed++;
            else
                refused++;
        }
        if (rnd(3) == 0)
            h_run_for(loop, (double)rnd(4000) / 1e6);
    }
out:
    if (mismatches > 0)
        fprintf(stderr, "seed %llu (TG_TEST_SEED to replay)\n", (unsigned long long)seed);
    CHECK_EQ_INT(mismatches, 0);
    /* The sequence exercised both outcomes and the delay band, in batches
     * (about 3.5 requests each). */
    CHECK(allowed > 50 && refused > 50 && delayed > 5);
    CHECK(batches < 200);
    tg_ratelimit_redis_free(r);
}

TEST(all_or_nothing)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    freeReplyObject(h_cmd(sc, "FLUSHALL"));
    struct tg_ratelimit_redis_op y = op("aon", "y", 1000 * MS, 2, 0, 1);
    struct got g;
    take_wait(r, &y, 1, false, &g);
    take_wait(r, &y, 1, false, &g);
    CHECK(g.allowed);
    CHECK_EQ_INT(g.res[0].remaining, 0);
    redisReply *before = h_cmd(sc, "GET tg:{aon:y}");

    struct tg_ratelimit_redis_op three[3] = {op("aon", "x", 1000 * MS, 2, 0, 1), y,
                                             op("aon", "z", 1000 * MS, 2, 0, 1)};
    take_wait(r, three, 3, false, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK(!g.allowed);
    CHECK(g.res[0].allowed && !g.res[1].allowed && g.res[2].allowed);
    CHECK(g.res[1].retry_after_ns > 0);
    CHECK_EQ_INT(exists("tg:{aon:x}", 10), 0);
    CHECK_EQ_INT(exists("tg:{aon:z}", 10), 0);
    redisReply *after = h_cmd(sc, "GET tg:{aon:y}");
    CHECK(before && after && before->type == REDIS_REPLY_STRING &&
          after->type == REDIS_REPLY_STRING && strcmp(before->str, after->str) == 0);
    freeReplyObject(before);
    freeReplyObject(after);

    /* Once y is reset, the same request passes and spends on all three. */
    struct got rs = {0};
    CHECK_EQ_INT(tg_ratelimit_redis_reset(r, "aon", "y", 1, got_cb, &rs), 0);
    CHECK(h_run_until(loop, got_done, &rs, 1));
    CHECK_EQ_INT(rs.status, 0);
    CHECK_EQ_INT(rs.n, 0);
    take_wait(r, three, 3, false, &g);
    CHECK(g.allowed);
    CHECK_EQ_INT(exists("tg:{aon:x}", 10), 1);
    CHECK_EQ_INT(exists("tg:{aon:y}", 10), 1);
    CHECK_EQ_INT(exists("tg:{aon:z}", 10), 1);

    /* A key named twice pays twice. */
    struct tg_ratelimit_redis_op twice[2] = {op("aon", "w", 1000 * MS, 2, 0, 1),
                                             op("aon", "w", 1000 * MS, 2, 0, 1)};
    take_wait(r, twice, 2, false, &g);
    CHECK(g.allowed);
    CHECK_EQ_INT(g.res[0].remaining, 1);
    CHECK_EQ_INT(g.res[1].remaining, 0);
    take_wait(r, twice, 1, false, &g);
    CHECK(!g.allowed);
    tg_ratelimit_redis_free(r);
}

/* A key holding something other than a TAT (written by hand, by another
 * program, or damaged) reads as an empty bucket, and the next spend
 * replaces it with a real TAT. */
TEST(garbage_values)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    freeReplyObject(h_cmd(sc, "FLUSHALL"));
    static const char *const junk[] = {"abc", "-5",  "1e300", "1e30",    "18014398509481984",
                                       "nan", "inf", "-inf",  "12.5xyz", ""};
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        freeReplyObject(h_cmd(sc, "SET tg:{junk:k} %s", junk[i]));
        struct tg_ratelimit_redis_op o = op("junk", "k", 1000 * MS, 3, 0, 1);
        struct got g;
        take_wait(r, &o, 1, false, &g);
        if (g.status != 0 || !g.allowed || g.res[0].remaining != 2)
            fprintf(stderr, "stored %s: status %d allowed %d remaining %" PRId64 "\n", junk[i],
                    g.status, g.allowed, g.res[0].remaining);
        CHECK_EQ_INT(g.status, 0);
        CHECK(g.allowed);
        CHECK_EQ_INT(g.res[0].remaining, 2);
        /* Now a number: one token's worth ahead of Redis' clock. */
        redisReply *v = h_cmd(sc, "GET tg:{junk:k}");
        long long tat = v != NULL && v->type == REDIS_REPLY_STRING ? atoll(v->str) : -1;
        freeReplyObject(v);
        if (!(tat > g.now_us && tat <= g.now_us + 1000000))
            fprintf(stderr, "stored %s: then %lld, now %lld\n", junk[i], tat, (long long)g.now_us);
        CHECK(tat > g.now_us && tat <= g.now_us + 1000000);
    }
    tg_ratelimit_redis_free(r);
}

TEST(peek_and_ttl)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    freeReplyObject(h_cmd(sc, "FLUSHALL"));
    struct tg_ratelimit_redis_op o = op("ttl", "k", 1000 * MS, 5, 0, 1);
    struct got g;
    take_wait(r, &o, 1, true, &g);
    CHECK(g.allowed);
    CHECK_EQ_INT(g.res[0].remaining, 4);
    CHECK_EQ_INT(exists("tg:{ttl:k}", 10), 0); /* peek never writes */

    take_wait(r, &o, 1, false, &g);
    CHECK(g.allowed);
    CHECK_EQ_INT(g.res[0].reset_ns, 1000 * MS);
    long long pttl = h_int(sc, "PTTL tg:{ttl:k}");
    CHECK(pttl > 900 && pttl <= 1000);
    redisReply *v = h_cmd(sc, "GET tg:{ttl:k}");
    CHECK(v != NULL && v->type == REDIS_REPLY_STRING &&
          strtoll(v->str, NULL, 10) == g.now_us + 1000000);
    freeReplyObject(v);

    /* Peeking a spent key: sees the spend, changes nothing. */
    take_wait(r, &o, 1, true, &g);
    CHECK_EQ_INT(g.res[0].remaining, 3);
    v = h_cmd(sc, "GET tg:{ttl:k}");
    take_wait(r, &o, 1, true, &g);
    redisReply *w = h_cmd(sc, "GET tg:{ttl:k}");
    CHECK(v && w && strcmp(v->str, w->str) == 0);
    freeReplyObject(v);
    freeReplyObject(w);

    /* A delay band: the sixth request passes with a delay. */
    struct tg_ratelimit_redis_op d = op("ttl", "d", 100 * MS, 1, 2, 1);
    take_wait(r, &d, 1, false, &g);
    CHECK(g.allowed && g.res[0].delay_ns == 0);
    take_wait(r, &d, 1, false, &g);
    CHECK(g.allowed);
    CHECK(g.res[0].delay_ns > 90 * MS && g.res[0].delay_ns <= 100 * MS);
    pttl = h_int(sc, "PTTL tg:{ttl:d}");
    CHECK(pttl > 190 && pttl <= 200);

    /* Tolerance beyond 2^52 us: capped there (52124 tokens at one per
     * day; the C core's 2^62 ns cap would give 53375). */
    struct tg_ratelimit_redis_op huge = op("ttl", "h", 86400 * 1000 * MS, 60000, 0, 1);
    take_wait(r, &huge, 1, true, &g);
    CHECK(g.allowed);
    CHECK_EQ_INT(g.res[0].remaining, 52124 - 1);

    /* A cost above burst + delay: never. */
    struct tg_ratelimit_redis_op big = op("ttl", "b", 100 * MS, 1, 2, 4);
    take_wait(r, &big, 1, false, &g);
    CHECK(!g.allowed);
    CHECK(g.res[0].retry_after_ns == INT64_MAX);
    tg_ratelimit_redis_free(r);
}

TEST(key_format)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    freeReplyObject(h_cmd(sc, "FLUSHALL"));
    struct got g;

    /* Binary bytes, kept as they are. */
    static const char bin[] = "a\0b\r\n}";
    struct tg_ratelimit_redis_op o = op("pol", "", 1000 * MS, 5, 0, 1);
    o.key = bin;
    o.keylen = sizeof(bin) - 1;
    take_wait(r, &o, 1, false, &g);
    CHECK(g.allowed);
    static const char full[] = "tg:{pol:a\0b\r\n}}";
    CHECK_EQ_INT(exists(full, sizeof(full) - 1), 1);

    /* 200 bytes: raw; 201: "#" + SHA-256 in hex. */
    char k[301];
    memset(k, 'k', 300);
    k[300] = '\0';
    o.key = k;
    o.keylen = TG_RATELIMIT_REDIS_KEY_MAX;
    take_wait(r, &o, 1, false, &g);
    char raw[260];
    int n = snprintf(raw, sizeof(raw), "tg:{pol:%.*s}", 200, k);
    CHECK_EQ_INT(exists(raw, (size_t)n), 1);

    o.keylen = 300;
    take_wait(r, &o, 1, false, &g);
    take_wait(r, &o, 1, false, &g); /* the same bucket: 3 left */
    CHECK_EQ_INT(g.res[0].remaining, 3);
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(k, 300, md, &mdlen, EVP_sha256(), NULL);
    char h[65];
    hex(h, md, 32);
    char hashed[128];
    n = snprintf(hashed, sizeof(hashed), "tg:{pol:#%s}", h);
    CHECK_EQ_INT(exists(hashed, (size_t)n), 1);
    CHECK_EQ_INT(h_int(sc, "DBSIZE"), 3);

    /* Another 300-byte key sharing the first 299 bytes: its own bucket. */
    k[299] = 'x';
    take_wait(r, &o, 1, false, &g);
    CHECK_EQ_INT(g.res[0].remaining, 4);
    tg_ratelimit_redis_free(r);
}

/* Calls of EVALSHA so far, from INFO commandstats. */
static long long evalsha_calls(void)
{
    redisReply *r = h_cmd(sc, "INFO commandstats");
    long long v = -1;
    const char *p = r != NULL && r->type == REDIS_REPLY_STRING
                        ? strstr(r->str, "cmdstat_evalsha:calls=")
                        : NULL;
    if (p != NULL)
        v = atoll(p + strlen("cmdstat_evalsha:calls="));
    if (r != NULL)
        freeReplyObject(r);
    return v;
}

/* Sixteen takes issued in one loop iteration reach Redis as one EVALSHA
 * (one batch, one read) and are all answered in one loop iteration: one
 * round trip and one script run for the lot. */
TEST(pipelining)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    enum { N = 16 };
    long long c1 = evalsha_calls();
    long long r0 = h_info(sc, "total_reads_processed");
    long long r1 = h_info(sc, "total_reads_processed");
    long long per_info = r1 - r0; /* the INFO's own read */
    struct got g[N];
    char key[N][16];
    struct tg_redis_stats before;
    link_stats(r, &before);
    for (int i = 0; i < N; i++) {
        snprintf(key[i], sizeof(key[i]), "p%d", i);
        struct tg_ratelimit_redis_op o = op("pipe", key[i], 10 * MS, 5, 0, 1);
        memset(&g[i], 0, sizeof(g[i]));
        CHECK(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &g[i]) != NULL);
    }
    CHECK(h_run_until(loop, got_done, &g[N - 1], 2));
    long long r2 = h_info(sc, "total_reads_processed");
    long long c2 = evalsha_calls();
    int same = 0;
    for (int i = 0; i < N; i++)
        same += g[i].calls == 1 && g[i].status == 0 && g[i].iteration == g[0].iteration;
    CHECK_EQ_INT(same, N);
    /* Server side: one EVALSHA in one read (beside the INFOs'). */
    CHECK_EQ_INT(c2 - c1, 1);
    CHECK_EQ_INT(r2 - r1 - per_info, 1);
    struct tg_redis_stats after;
    link_stats(r, &after);
    CHECK_EQ_INT(after.replies - before.replies, 1);
    /* Each take got its own key's answer: all five left of a burst of 5
     * minus the one taken. */
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(g[i].res[0].remaining, 4);
    struct tg_ratelimit_redis_stats st;
    tg_ratelimit_redis_stats(r, &st);
    CHECK_EQ_INT(st.requests, N);
    fprintf(stderr,
            "batching: %d takes, %lld EVALSHA(s), %lld server "
            "read(s), answered in %d loop iteration(s)\n",
            N, c2 - c1, r2 - r1 - per_info, same == N ? 1 : -1);
    /* Their memory went back to the thread's free list, and the next round
     * takes it from there: no malloc per take. */
    CHECK_EQ_INT(pending_nfree, N);
    for (int i = 0; i < N; i++) {
        struct tg_ratelimit_redis_op o = op("pipe", key[i], 10 * MS, 5, 0, 1);
        memset(&g[i], 0, sizeof(g[i]));
        CHECK(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &g[i]) != NULL);
    }
    CHECK_EQ_INT(pending_nfree, 0);
    CHECK(h_run_until(loop, got_done, &g[N - 1], 2));
    CHECK_EQ_INT(pending_nfree, N);
    tg_ratelimit_redis_free(r);
    CHECK_EQ_INT(pending_nfree, 0);
}

/* Takes queued together that name one key under two bucket settings (a
 * reload changed the policy in between) go out in two batches, and the
 * second sees the first's spend; the rest still share batches. */
TEST(settings_change_splits_batch)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    freeReplyObject(h_cmd(sc, "FLUSHALL"));
    long long c1 = evalsha_calls();
    struct tg_ratelimit_redis_op ops[4] = {
        op("cf", "k", 1000 * MS, 2, 0, 1), /* old settings */
        op("cf", "other", 1000 * MS, 2, 0, 1),
        op("cf", "k", 500 * MS, 1, 0, 1), /* new settings, same key */
        op("cf", "k", 500 * MS, 1, 0, 1),
    };
    struct got g[4];
    for (int i = 0; i < 4; i++) {
        memset(&g[i], 0, sizeof(g[i]));
        g[i].lim = r;
        CHECK(tg_ratelimit_redis_take(r, &ops[i], 1, false, got_cb, &g[i]) != NULL);
    }
    CHECK(h_run_until(loop, got_done, &g[3], 2));
    CHECK_EQ_INT(evalsha_calls() - c1, 2);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(g[i].status, 0);
    CHECK(g[0].allowed && g[1].allowed);
    CHECK_EQ_INT(g[0].res[0].remaining, 1);
    /* The key is 1 s ahead after the first: a 500 ms bucket of 1 refuses. */
    CHECK(!g[2].allowed && !g[3].allowed);
    CHECK_EQ_INT(g[2].now_us, g[3].now_us); /* one batch */
    tg_ratelimit_redis_free(r);
}

/* Takes batched together are decided in the order they were asked, each
 * seeing the ones before it; a take cancelled while queued is not sent,
 * one cancelled after its batch went out is not called. */
TEST(batch_order_and_cancel)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    struct tg_ratelimit_redis_op x = op("bo", "x", 1000 * MS, 1, 0, 1);
    struct tg_ratelimit_redis_op y = op("bo", "y", 1000 * MS, 5, 0, 1);
    struct tg_ratelimit_redis_op xy[2] = {x, y};
    struct got a = {0}, b = {0}, cc = {0}, d = {0}, e = {0}, f = {0}, g = {0};
    CHECK(tg_ratelimit_redis_take(r, xy, 2, false, got_cb, &a) != NULL);
    tg_ratelimit_redis_cancel(tg_ratelimit_redis_take(r, &y, 1, false, got_cb, &b));
    CHECK(tg_ratelimit_redis_take(r, &y, 1, false, got_cb, &cc) != NULL);
    CHECK(tg_ratelimit_redis_take(r, &x, 1, false, got_cb, &d) != NULL);
    CHECK(tg_ratelimit_redis_take(r, &y, 1, true, got_cb, &e) != NULL);
    CHECK(tg_ratelimit_redis_take(r, xy, 2, false, got_cb, &f) != NULL);
    CHECK(tg_ratelimit_redis_take(r, &y, 1, true, got_cb, &g) != NULL);
    CHECK(h_run_until(loop, got_done, &g, 2));
    CHECK(a.allowed && a.res[0].remaining == 0 && a.res[1].remaining == 4);
    CHECK_EQ_INT(b.calls, 0); /* cancelled: y not taken */
    CHECK(cc.allowed && cc.res[0].remaining == 3);
    CHECK(!d.allowed && d.res[0].retry_after_ns > 0);
    /* A peek reports what a take would leave, and takes nothing. */
    CHECK(e.allowed && e.res[0].remaining == 2);
    CHECK(!f.allowed && !f.res[0].allowed);      /* x refused ... */
    CHECK(g.allowed && g.res[0].remaining == 2); /* ... so y was not taken */
    int same = 0;
    struct got *all[] = {&a, &cc, &d, &e, &f, &g};
    for (size_t i = 0; i < 6; i++)
        same += all[i]->calls == 1 && all[i]->status == 0 && all[i]->iteration == a.iteration;
    CHECK_EQ_INT(same, 6);

    /* Cancelled after its batch was sent. */
    struct got h = {0}, i = {0};
    CHECK(tg_ratelimit_redis_take(r, &y, 1, false, got_cb, &h) != NULL);
    struct tg_ratelimit_redis_pending *ph = tg_ratelimit_redis_take(r, &y, 1, false, got_cb, &i);
    CHECK(ph != NULL);
    /* The batch goes out as the loop's prepare phase sends it; the reply
     * cannot have been read yet (the loop has not polled). */
    ev_prepare_stop(loop, &r->flush);
    on_flush(loop, &r->flush, EV_PREPARE);
    tg_ratelimit_redis_cancel(ph);
    CHECK(h_run_until(loop, got_done, &h, 2));
    h_run_for(loop, 0.02);
    CHECK_EQ_INT(h.calls, 1);
    CHECK_EQ_INT(i.calls, 0);
    CHECK_EQ_INT(h.res[0].remaining, 2);
    tg_ratelimit_redis_free(r);
}

TEST(script_flush_reloads)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    struct tg_ratelimit_redis_op o = op("fl", "k", 1 * MS, 100, 0, 1);
    struct got g;
    take_wait(r, &o, 1, false, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK_EQ_INT(r->reloads, 0);

    freeReplyObject(h_cmd(sc, "SCRIPT FLUSH"));
    take_wait(r, &o, 1, false, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK(g.allowed);
    CHECK_EQ_INT(r->reloads, 1);

    /* Several in flight when the cache goes: they travel as one batch,
     * which retries once behind one SCRIPT LOAD. */
    freeReplyObject(h_cmd(sc, "SCRIPT FLUSH"));
    struct got m[4];
    memset(m, 0, sizeof(m));
    for (int i = 0; i < 4; i++)
        CHECK(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &m[i]) != NULL);
    CHECK(h_run_until(loop, got_done, &m[3], 2));
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(m[i].status, 0);
    CHECK_EQ_INT(r->reloads, 2);
    struct tg_ratelimit_redis_stats st;
    tg_ratelimit_redis_stats(r, &st);
    CHECK_EQ_INT(st.errors, 0);
    CHECK_EQ_INT(st.timeouts, 0);
    tg_ratelimit_redis_free(r);
}

/* The server stops answering: callbacks with -1 within the timeout and a
 * few ms, the breaker opens, takes return NULL at once. It is replaced by
 * a fresh server: the limiter reconnects, reloads its script and closes
 * the breaker by itself. */
TEST(stopped_then_restarted)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    struct tg_ratelimit_redis_op o = op("st", "k", 1 * MS, 100, 0, 1);

    kill(srv.pid, SIGSTOP);
    struct got g[6];
    double worst = 0;
    for (int i = 0; i < 6; i++) {
        memset(&g[i], 0, sizeof(g[i]));
        ev_now_update(loop);
        double t0 = h_now();
        CHECK(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &g[i]) != NULL);
        CHECK(h_run_until(loop, got_done, &g[i], 1));
        CHECK_EQ_INT(g[i].status, -1);
        if (g[i].at - t0 > worst)
            worst = g[i].at - t0;
        if (i == 4)
            break; /* the fifth fault opens the circuit */
    }
    CHECK(worst < 0.050 + 0.015);
    CHECK(lim_open(r));
    double t0 = h_now();
    struct got n = {0};
    CHECK(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &n) == NULL);
    CHECK(h_now() - t0 < 0.001);
    struct tg_ratelimit_redis_stats st;
    tg_ratelimit_redis_stats(r, &st);
    CHECK(st.short_circuited >= 1);
    CHECK_EQ_INT(st.timeouts, 5);

    h_redis_stop(&srv);
    h_redis_start(&srv);
    CHECK(h_run_until(loop, lim_up, r, 3));
    struct got ok;
    take_wait(r, &o, 1, false, &ok);
    CHECK_EQ_INT(ok.status, 0);
    CHECK_EQ_INT(r->reloads, 0); /* loaded on connect, not on NOSCRIPT */
    tg_ratelimit_redis_stats(r, &st);
    CHECK_EQ_INT(st.disconnects, 1);
    tg_ratelimit_redis_free(r);
    redisFree(sc);
    sc = h_client(&srv);
}

/* DEBUG SLEEP from another client: the take times out, and its late
 * reply (the script did run) is ignored. */
TEST(slow_redis)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    redisContext *sleeper = h_client(&srv);
    redisAppendCommand(sleeper, "DEBUG SLEEP 0.2");
    int done = 0;
    while (!done)
        redisBufferWrite(sleeper, &done);
    usleep(20000);

    struct tg_ratelimit_redis_op o = op("slow", "k", 1 * MS, 10, 0, 1);
    struct got g = {0};
    ev_now_update(loop);
    double t0 = h_now();
    CHECK(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &g) != NULL);
    CHECK(h_run_until(loop, got_done, &g, 1));
    CHECK_EQ_INT(g.status, -1);
    CHECK(g.at - t0 >= 0.045 && g.at - t0 < 0.065);
    h_run_for(loop, 0.25);
    CHECK_EQ_INT(g.calls, 1);
    struct tg_ratelimit_redis_stats st;
    tg_ratelimit_redis_stats(r, &st);
    CHECK_EQ_INT(st.timeouts, 1);
    CHECK(tg_ratelimit_redis_state(r) == TG_REDIS_UP);
    void *rep = NULL;
    redisGetReply(sleeper, &rep);
    if (rep != NULL)
        freeReplyObject(rep);
    redisFree(sleeper);
    tg_ratelimit_redis_free(r);
}

/* Replies a real Redis would not give this script, from a fake server:
 * each is a fault (status -1), none a crash. */
TEST(wrong_replies)
{
    struct tg_ratelimit_redis *probe = tg_ratelimit_redis_new(
        loop,
        &(struct tg_config_redis){.address = "127.0.0.1:1", .timeout_ms = 50, .key_prefix = "tg:"},
        "x", false);
    struct h_fake f;
    h_fake_start(&f, probe->sha);
    tg_ratelimit_redis_free(probe);
    link_tuning.breaker_faults = 1000;

    static const struct {
        const char *reply;
        bool reply_error; /* counted in stats.errors */
    } cases[] = {
        {":1\r\n", true},
        {"$-1\r\n", true},
        {"+OK\r\n", true},
        {"$3\r\nabc\r\n", true},
        {"*3\r\n:1700000000000000\r\n:1\r\n:1\r\n", true}, /* one too many */
        {"*1\r\n:1700000000000000\r\n", true},             /* one too few */
        /* a negative TAT */
        {"*2\r\n:1700000000000000\r\n:-5\r\n", true},
        /* a TAT beyond 2^53 us */
        {"*2\r\n:1700000000000000\r\n:9007199254740993\r\n", true},
        /* no clock */
        {"*2\r\n:0\r\n:0\r\n", true},
        /* strings for integers */
        {"*2\r\n$16\r\n1700000000000000\r\n$1\r\n0\r\n", true},
        /* nested */
        {"*2\r\n*1\r\n:1\r\n:1\r\n", true},
        {"*-1\r\n", true},
        {"-READONLY You can't write against a read only replica.\r\n", true},
        {"-LOADING Redis is loading the dataset in memory\r\n", true},
        {"-BUSY Redis is busy running a script.\r\n", true},
        {"-NOSCRIPT No matching script.\r\n", true}, /* twice: a fault */
        {"-ERR tollgate gcra: bad arguments\r\n", true},
        {"?garbage\r\n", false},
        {"+OK\r\n+OK\r\n", true}, /* a wrong reply, then an extra one */
        {"CLOSE", false},
    };
    struct tg_config_redis c = cfg_port(f.port);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        h_fake_set(&f, cases[i].reply);
        struct tg_ratelimit_redis *r = up(&c, "gw", false);
        struct tg_ratelimit_redis_op o = op("f", "k", 1 * MS, 10, 0, 1);
        struct got g;
        take_wait(r, &o, 1, false, &g);
        h_run_for(loop, 0.01);
        CHECK_EQ_INT(g.calls, 1);
        if (g.status != -1)
            fprintf(stderr, "case %zu: status %d\n", i, g.status);
        CHECK_EQ_INT(g.status, -1);
        struct tg_ratelimit_redis_stats st;
        tg_ratelimit_redis_stats(r, &st);
        if (st.errors != (cases[i].reply_error ? 1u : 0u))
            fprintf(stderr, "case %zu: %llu errors\n", i, (unsigned long long)st.errors);
        CHECK_EQ_INT(st.errors, cases[i].reply_error ? 1 : 0);
        tg_ratelimit_redis_free(r);
    }

    /* And a well-formed one, to show the fake is heard. */
    /* The key's TAT 5 ms ahead: this request makes it 6 ms of a 10 ms
     * bucket, 4 tokens left. */
    h_fake_set(&f, "*2\r\n:1700000000000000\r\n:1700000000005000\r\n");
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    struct tg_ratelimit_redis_op o = op("f", "k", 1 * MS, 10, 0, 1);
    struct got g;
    take_wait(r, &o, 1, false, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK(g.allowed);
    CHECK_EQ_INT(g.res[0].remaining, 4);
    CHECK_EQ_INT(g.res[0].reset_ns, 6 * MS);
    CHECK_EQ_INT(g.now_us, 1700000000000000LL);
    tg_ratelimit_redis_free(r);

    /* Refunds: anything but an integer from 0 to the number of keys is a
     * fault (status -1, counted); a well-formed one is heard. */
    static const char *const refund_cases[] = {
        ":2\r\n",
        ":-1\r\n",
        "+OK\r\n",
        "$1\r\n1\r\n",
        "*1\r\n:1\r\n",
        "-ERR tollgate refund: bad arguments\r\n",
        "-READONLY You can't write against a read only replica.\r\n",
    };
    for (size_t i = 0; i < sizeof(refund_cases) / sizeof(refund_cases[0]); i++) {
        h_fake_set(&f, refund_cases[i]);
        r = up(&c, "gw", false);
        refund_wait(r, &o, 1, &g);
        h_run_for(loop, 0.01);
        CHECK_EQ_INT(g.calls, 1);
        if (g.status != -1)
            fprintf(stderr, "refund case %zu: status %d\n", i, g.status);
        CHECK_EQ_INT(g.status, -1);
        struct tg_ratelimit_redis_stats st;
        tg_ratelimit_redis_stats(r, &st);
        CHECK_EQ_INT(st.errors, 1);
        tg_ratelimit_redis_free(r);
    }
    h_fake_set(&f, ":1\r\n");
    r = up(&c, "gw", false);
    refund_wait(r, &o, 1, &g);
    CHECK_EQ_INT(g.status, 0);
    tg_ratelimit_redis_free(r);

    link_tuning.breaker_faults = 0;
    h_fake_stop(&f);
}

/* ---- refund ---------------------------------------------------------------- */

/* Take, take, refund: the next peek shows one more token, the stored TAT
 * went back by exactly one interval (same key, same format: gateways of
 * the previous version read it), and its expiry follows. */
TEST(refund_gives_back)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    freeReplyObject(h_cmd(sc, "FLUSHALL"));
    struct tg_ratelimit_redis_op o = op("rf", "k", 1000 * MS, 3, 0, 1);
    struct got g, first;
    take_wait(r, &o, 1, false, &first);
    take_wait(r, &o, 1, false, &g);
    CHECK_EQ_INT(g.res[0].remaining, 1);
    long long tat = get_ll("tg:{rf:k}");
    CHECK_EQ_INT(tat, first.now_us + 2000000);
    struct tg_ratelimit_redis_op look = op("rf", "k", 1000 * MS, 3, 0, 0);
    take_wait(r, &look, 1, true, &g);
    CHECK_EQ_INT(g.res[0].remaining, 1);

    refund_wait(r, &o, 1, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK(g.allowed);
    CHECK_EQ_INT(g.n, 0);
    CHECK_EQ_INT(get_ll("tg:{rf:k}"), tat - 1000000);
    long long pttl = h_int(sc, "PTTL tg:{rf:k}");
    CHECK(pttl > 900 && pttl <= 1000);
    take_wait(r, &look, 1, true, &g);
    CHECK_EQ_INT(g.res[0].remaining, 2); /* one more than before */
    take_wait(r, &o, 1, false, &g);
    take_wait(r, &o, 1, false, &g);
    CHECK(g.allowed);
    take_wait(r, &o, 1, false, &g);
    CHECK(!g.allowed);

    /* Given back past full: the key goes (as an expired one would). */
    struct tg_ratelimit_redis_op all3 = op("rf", "k", 1000 * MS, 3, 0, 5);
    refund_wait(r, &all3, 1, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK_EQ_INT(exists("tg:{rf:k}", 9), 0);
    take_wait(r, &look, 1, true, &g);
    CHECK_EQ_INT(g.res[0].remaining, 3);

    /* A missing key: nothing happens, nothing is created. */
    struct tg_ratelimit_redis_op m = op("rf", "missing", 1000 * MS, 3, 0, 1);
    refund_wait(r, &m, 1, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK_EQ_INT(exists("tg:{rf:missing}", 15), 0);

    /* Several keys, one named twice (refunded twice); the interval rounded
     * up to whole microseconds as the take does (1500 ns is 2 us), so a
     * refund undoes its take exactly. */
    struct tg_ratelimit_redis_op a = op("rf", "a", 1500, 1000, 0, 300);
    struct tg_ratelimit_redis_op b = op("rf", "b", 1000 * MS, 3, 0, 3);
    take_wait(r, &a, 1, false, &g);
    long long a0 = get_ll("tg:{rf:a}");
    CHECK_EQ_INT(a0, g.now_us + 600);
    take_wait(r, &b, 1, false, &g);
    long long b0 = get_ll("tg:{rf:b}");
    struct tg_ratelimit_redis_op three[3] = {op("rf", "b", 1000 * MS, 3, 0, 1),
                                             op("rf", "a", 1500, 1000, 0, 100),
                                             op("rf", "b", 1000 * MS, 3, 0, 1)};
    refund_wait(r, three, 3, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK_EQ_INT(get_ll("tg:{rf:b}"), b0 - 2000000);
    long long a1 = get_ll("tg:{rf:a}");
    CHECK(a1 == a0 - 200 || a1 == -1); /* -1: Redis' clock passed it */

    /* Fire and forget: no callback, nothing leaks (ASan), it happens. */
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, &b, 1, NULL, NULL), 0);
    h_run_for(loop, 0.05);
    CHECK_EQ_INT(exists("tg:{rf:b}", 9), 0);
    tg_ratelimit_redis_free(r);
}

/* A key holding something other than a TAT reads as a full bucket, as
 * the take script reads it: nothing to give back, and it is left as it
 * is (the next take replaces it). */
TEST(refund_garbage_values)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    freeReplyObject(h_cmd(sc, "FLUSHALL"));
    static const char *const junk[] = {"abc",     "-5", "1e300", "nan", "inf", "18014398509481984",
                                       "12.5xyz", ""};
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        freeReplyObject(h_cmd(sc, "SET tg:{junk:k} %s", junk[i]));
        struct tg_ratelimit_redis_op o = op("junk", "k", 1000 * MS, 3, 0, 1);
        struct got g;
        refund_wait(r, &o, 1, &g);
        CHECK_EQ_INT(g.status, 0);
        redisReply *v = h_cmd(sc, "GET tg:{junk:k}");
        CHECK(v != NULL && v->type == REDIS_REPLY_STRING && strcmp(v->str, junk[i]) == 0);
        freeReplyObject(v);
        CHECK_EQ_INT(h_int(sc, "PTTL tg:{junk:k}"), -1);
    }
    /* A TAT in the past (bucket full again, key not yet expired): also
     * nothing. */
    freeReplyObject(h_cmd(sc, "SET tg:{junk:k} 1000"));
    struct tg_ratelimit_redis_op o = op("junk", "k", 1000 * MS, 3, 0, 1);
    struct got g;
    refund_wait(r, &o, 1, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK_EQ_INT(get_ll("tg:{junk:k}"), 1000);
    /* Another type: an error reply, a fault, reported as -1. */
    freeReplyObject(h_cmd(sc, "DEL tg:{junk:k}"));
    freeReplyObject(h_cmd(sc, "LPUSH tg:{junk:k} x"));
    refund_wait(r, &o, 1, &g);
    CHECK_EQ_INT(g.status, -1);
    tg_ratelimit_redis_free(r);
}

/* The first refund on a connection sends the script (EVAL), the next ones
 * its SHA; after SCRIPT FLUSH the NOSCRIPT reply is answered by sending
 * the script again, within the deadline, and the refund still happens. */
TEST(refund_script_flush)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    freeReplyObject(h_cmd(sc, "FLUSHALL"));
    struct tg_ratelimit_redis_op o = op("rs", "k", 1000 * MS, 10, 0, 1);
    struct got g;
    take_wait(r, &o, 1, false, &g);
    take_wait(r, &o, 1, false, &g);
    take_wait(r, &o, 1, false, &g);
    long long e0 = cmd_calls("eval"), s0 = cmd_calls("evalsha");
    refund_wait(r, &o, 1, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK_EQ_INT(cmd_calls("eval") - e0, 1);
    refund_wait(r, &o, 1, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK_EQ_INT(cmd_calls("eval") - e0, 1);
    CHECK_EQ_INT(cmd_calls("evalsha") - s0, 1);
    struct tg_ratelimit_redis_op look = op("rs", "k", 1000 * MS, 10, 0, 0);
    take_wait(r, &look, 1, true, &g);
    CHECK_EQ_INT(g.res[0].remaining, 9);

    freeReplyObject(h_cmd(sc, "SCRIPT FLUSH"));
    uint64_t reloads = r->reloads;
    refund_wait(r, &o, 1, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK_EQ_INT(r->reloads, reloads + 1);
    CHECK_EQ_INT(cmd_calls("eval") - e0, 2);
    take_wait(r, &look, 1, true, &g);
    CHECK_EQ_INT(g.res[0].remaining, 10);
    struct tg_ratelimit_redis_stats st;
    tg_ratelimit_redis_stats(r, &st);
    CHECK_EQ_INT(st.errors, 0);
    tg_ratelimit_redis_free(r);
}

/* Redis stops answering: a refund in flight reports -1 at its deadline
 * (and counts towards the breaker); once the circuit is open a refund is
 * refused at once (-1, no callback); free calls pending ones back with -1;
 * fire-and-forget ones vanish without a trace (ASan: no leak). */
TEST(refund_redis_down)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    struct tg_ratelimit_redis_op o = op("rd", "k", 1000 * MS, 10, 0, 1);
    struct got g;
    take_wait(r, &o, 1, false, &g);

    kill(srv.pid, SIGSTOP);
    ev_now_update(loop);
    double t0 = h_now();
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, &o, 1, NULL, NULL), 0);
    refund_wait(r, &o, 1, &g);
    CHECK_EQ_INT(g.status, -1);
    CHECK(!g.allowed);
    CHECK(g.at - t0 < 0.050 + 0.015);
    struct tg_ratelimit_redis_stats st;
    tg_ratelimit_redis_stats(r, &st);
    CHECK_EQ_INT(st.timeouts, 2);
    for (int i = 0; i < 3 && !lim_open(r); i++) {
        refund_wait(r, &o, 1, &g);
        CHECK_EQ_INT(g.status, -1);
    }
    CHECK(lim_open(r));
    memset(&g, 0, sizeof(g));
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, &o, 1, got_cb, &g), -1);
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, &o, 1, NULL, NULL), -1);
    h_run_for(loop, 0.01);
    CHECK_EQ_INT(g.calls, 0);
    tg_ratelimit_redis_stats(r, &st);
    CHECK(st.short_circuited >= 2);
    tg_ratelimit_redis_free(r);
    kill(srv.pid, SIGCONT);

    /* In flight when the limiter is freed: called back with -1 first. */
    r = up(&c, "gw", false);
    struct got p1 = {0};
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, &o, 1, got_cb, &p1), 0);
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, &o, 1, NULL, NULL), 0);
    tg_ratelimit_redis_free(r);
    CHECK_EQ_INT(p1.calls, 1);
    CHECK_EQ_INT(p1.status, -1);
    h_run_for(loop, 0.02);
    CHECK_EQ_INT(p1.calls, 1);
}

TEST(refund_invalid)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    struct tg_ratelimit_redis_op ops[17];
    for (int i = 0; i < 17; i++)
        ops[i] = op("ri", "k", 1 * MS, 1, 0, 1);
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, ops, 0, NULL, NULL), -1);
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, ops, 17, NULL, NULL), -1);
    ops[0].params.interval_ns = 0;
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, ops, 1, NULL, NULL), -1);
    ops[0] = op("ri", "k", 1 * MS, 1, 0, -1);
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, ops, 1, NULL, NULL), -1);
    ops[0].cost = 1;
    ops[0].policy = NULL;
    CHECK_EQ_INT(tg_ratelimit_redis_refund(r, ops, 1, NULL, NULL), -1);
    ops[0] = op("ri", "k", 1 * MS, 1, 0, 1);
    struct got g;
    refund_wait(r, ops, 16, &g); /* sixteen is the most */
    CHECK_EQ_INT(g.status, 0);
    tg_ratelimit_redis_free(r);
}

static bool two_gateways(void *arg)
{
    (void)arg;
    return tg_ratelimit_redis_gateways() == 2;
}

/* Memory for a batch runs out (and used to leave its requests waiting
 * forever when a second allocation failed too): each is answered at once
 * that the store failed, and the next batch works again. */
TEST(batch_out_of_memory_answers_everyone)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    enum { N = 4 };
    struct got g[N];
    char key[N][16];
    batch_allocs_fail = 1;
    for (int i = 0; i < N; i++) {
        snprintf(key[i], sizeof(key[i]), "oom%d", i);
        struct tg_ratelimit_redis_op o = op("oom", key[i], 10 * MS, 5, 0, 1);
        memset(&g[i], 0, sizeof(g[i]));
        CHECK(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &g[i]) != NULL);
    }
    CHECK(h_run_until(loop, got_done, &g[N - 1], 1));
    batch_allocs_fail = 0;
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(g[i].calls, 1);
        CHECK_EQ_INT(g[i].status, -1);
    }
    struct tg_ratelimit_redis_op o = op("oom", key[0], 10 * MS, 5, 0, 1);
    take_wait(r, &o, 1, false, &g[0]);
    CHECK_EQ_INT(g[0].status, 0);
    CHECK(g[0].allowed);
    tg_ratelimit_redis_free(r);
}

TEST(heartbeats)
{
    CHECK_EQ_INT(tg_ratelimit_redis_gateways(), 1);
    heartbeat_interval_s = 0.05;
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *a = up(&c, "gw-a", true);
    struct tg_ratelimit_redis *b = up(&c, "gw-b", true);
    CHECK(h_run_until(loop, two_gateways, NULL, 1));
    h_run_for(loop, 0.12); /* both have beaten again since */
    CHECK_EQ_INT(tg_ratelimit_redis_gateways(), 2);
    CHECK_EQ_INT(h_int(sc, "ZCARD tg:{gateways}"), 2);
    long long pttl = h_int(sc, "PTTL tg:{gateways}");
    CHECK(pttl > 9000 && pttl <= 10000);
    redisReply *s = h_cmd(sc, "ZSCORE tg:{gateways} gw-a");
    redisReply *t = h_cmd(sc, "TIME");
    CHECK(s && t && s->type == REDIS_REPLY_STRING);
    if (s && t && s->type == REDIS_REPLY_STRING) {
        long long now_ms = atoll(t->element[0]->str) * 1000 + atoll(t->element[1]->str) / 1000;
        long long exp = atoll(s->str) - now_ms;
        CHECK(exp > 9000 && exp <= 10000);
    }
    freeReplyObject(s);
    freeReplyObject(t);

    /* Unreachable: the last count stays. */
    kill(srv.pid, SIGSTOP);
    h_run_for(loop, 0.2);
    CHECK_EQ_INT(tg_ratelimit_redis_gateways(), 2);
    kill(srv.pid, SIGCONT);
    tg_ratelimit_redis_free(a);
    tg_ratelimit_redis_free(b);
    heartbeat_interval_s = 2.0;
}

TEST(cancel_and_free)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    struct tg_ratelimit_redis_op o = op("cx", "k", 1 * MS, 100, 0, 1);

    /* Cancelled: never called, even though its reply arrives. */
    struct got x = {0}, y = {0};
    tg_ratelimit_redis_cancel(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &x));
    CHECK(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &y) != NULL);
    CHECK(h_run_until(loop, got_done, &y, 1));
    CHECK_EQ_INT(x.calls, 0);

    /* Cancelled while Redis sleeps: not called at the deadline either. */
    redisContext *sleeper = h_client(&srv);
    redisAppendCommand(sleeper, "DEBUG SLEEP 0.1");
    int done = 0;
    while (!done)
        redisBufferWrite(sleeper, &done);
    usleep(20000);
    struct got z = {0};
    tg_ratelimit_redis_cancel(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &z));
    h_run_for(loop, 0.15);
    CHECK_EQ_INT(z.calls, 0);
    void *rep = NULL;
    redisGetReply(sleeper, &rep);
    if (rep != NULL)
        freeReplyObject(rep);
    redisFree(sleeper);
    struct tg_ratelimit_redis_stats st;
    tg_ratelimit_redis_stats(r, &st);
    CHECK_EQ_INT(st.timeouts, 0);

    /* Free: pending ones get -1 before free returns, cancelled ones
     * nothing. */
    struct got p1 = {0}, p2 = {0}, p3 = {0};
    CHECK(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &p1) != NULL);
    CHECK(tg_ratelimit_redis_take(r, &o, 1, true, got_cb, &p2) != NULL);
    tg_ratelimit_redis_cancel(tg_ratelimit_redis_take(r, &o, 1, false, got_cb, &p3));
    tg_ratelimit_redis_free(r);
    CHECK_EQ_INT(p1.calls, 1);
    CHECK_EQ_INT(p1.status, -1);
    CHECK_EQ_INT(p2.calls, 1);
    CHECK_EQ_INT(p2.status, -1);
    CHECK_EQ_INT(p3.calls, 0);
    h_run_for(loop, 0.02);
    CHECK_EQ_INT(p1.calls + p2.calls + p3.calls, 2);
}

TEST(invalid_requests)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    struct tg_ratelimit_redis_op ops[17];
    for (int i = 0; i < 17; i++)
        ops[i] = op("inv", "k", 1 * MS, 1, 0, 1);
    struct got g = {0};
    CHECK(tg_ratelimit_redis_take(r, ops, 0, false, got_cb, &g) == NULL);
    CHECK(tg_ratelimit_redis_take(r, ops, 17, false, got_cb, &g) == NULL);
    ops[0].params.burst = 0;
    CHECK(tg_ratelimit_redis_take(r, ops, 1, false, got_cb, &g) == NULL);
    ops[0] = op("inv", "k", 0, 1, 0, 1);
    CHECK(tg_ratelimit_redis_take(r, ops, 1, false, got_cb, &g) == NULL);
    ops[0] = op("inv", "k", 1, 1, 0, -1);
    CHECK(tg_ratelimit_redis_take(r, ops, 1, false, got_cb, &g) == NULL);
    ops[0].policy = NULL;
    ops[0].cost = 1;
    CHECK(tg_ratelimit_redis_take(r, ops, 1, false, got_cb, &g) == NULL);
    /* Sixteen is the most. */
    for (int i = 0; i < 16; i++)
        ops[i] = op("inv", "k", 1 * MS, 20, 0, 1);
    take_wait(r, ops, 16, false, &g);
    CHECK(g.allowed);
    CHECK_EQ_INT(g.res[15].remaining, 4);
    /* A rate finer than a microsecond: at most one per microsecond. */
    ops[0] = op("inv", "fast", 1, 1000, 0, 1000);
    take_wait(r, ops, 1, false, &g);
    CHECK_EQ_INT(g.res[0].reset_ns, 1000 * 1000);
    CHECK_EQ_INT(g.calls, 1);
    tg_ratelimit_redis_free(r);
}

TEST(configure)
{
    struct tg_config_redis c = cfg_port(srv.port);
    struct tg_ratelimit_redis *r = up(&c, "gw", false);
    freeReplyObject(h_cmd(sc, "FLUSHALL"));
    struct tg_redis_stats ls;
    link_stats(r, &ls);
    uint64_t connects = ls.connects;

    struct tg_config_redis c2 = c;
    c2.key_prefix = "tg2:";
    c2.timeout_ms = 70;
    tg_ratelimit_redis_configure(r, &c2);
    CHECK(tg_ratelimit_redis_state(r) == TG_REDIS_UP);
    struct tg_ratelimit_redis_op o = op("cf", "k", 1 * MS, 5, 0, 1);
    struct got g;
    take_wait(r, &o, 1, false, &g);
    CHECK_EQ_INT(exists("tg2:{cf:k}", 10), 1);
    link_stats(r, &ls);
    CHECK_EQ_INT(ls.connects, connects);

    struct tg_config_redis c3 = c2;
    c3.db = 2;
    tg_ratelimit_redis_configure(r, &c3);
    CHECK(h_run_until(loop, lim_up, r, 2));
    take_wait(r, &o, 1, false, &g);
    CHECK_EQ_INT(g.status, 0);
    CHECK_EQ_INT(g.res[0].remaining, 4); /* a fresh bucket in db 2 */
    link_stats(r, &ls);
    CHECK_EQ_INT(ls.connects, connects + 1);
    tg_ratelimit_redis_free(r);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("TG_TEST_VERBOSE") == NULL)
        tg_log_set_level(TG_LOG_ERROR + 1);
    const char *env = getenv("TG_TEST_SEED");
    seed = env != NULL ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    rng = seed * 2654435761u + 1;
    link_tuning.backoff_min_ms = 20;
    link_tuning.backoff_max_ms = 200;
    link_tuning.connect_timeout_ms = 300;
    loop = ev_loop_new(EVFLAG_AUTO);
    h_redis_start(&srv);
    sc = h_client(&srv);

    RUN(gcra_matches_c_core);
    RUN(all_or_nothing);
    RUN(garbage_values);
    RUN(peek_and_ttl);
    RUN(key_format);
    RUN(pipelining);
    RUN(settings_change_splits_batch);
    RUN(batch_order_and_cancel);
    RUN(script_flush_reloads);
    RUN(stopped_then_restarted);
    RUN(slow_redis);
    RUN(wrong_replies);
    RUN(batch_out_of_memory_answers_everyone);
    RUN(heartbeats);
    RUN(cancel_and_free);
    RUN(invalid_requests);
    RUN(configure);
    RUN(refund_gives_back);
    RUN(refund_garbage_values);
    RUN(refund_script_flush);
    RUN(refund_redis_down);
    RUN(refund_invalid);

    redisFree(sc);
    h_redis_stop(&srv);
    ev_loop_destroy(loop);
    return TEST_SUMMARY();
}
