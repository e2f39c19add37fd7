/* The tenant directory: the static index (ids, domains, duplicates,
 * invalid labels, 100,000 entries), and against a real redis-server
 * started here: found, suspended, missing with negative caching,
 * invalidation by PUBLISH (also after the server restarted), coalescing
 * of concurrent look-ups (counted by Redis itself), stale-while-error with
 * the server stopped or slow, static entries winning, custom domains,
 * cancel, malformed entries logged once, eviction, memory per entry,
 * reconfiguring, snapshots, and freeing with look-ups pending. */
#include "../../src/tenant.c"

#include "test.h"
#include "redis_harness.h"
#include "resolver.h"

static struct h_redis srv;
static struct ev_loop *loop;
static redisContext *sc; /* blocking client for setting data and checks */
static char addr_buf[64];
static char unix_buf[128];

static struct tg_config_server srv_a[2], srv_b[1];

/* A snapshot whose tenants section the test fills by hand, as the parser
 * would. */
static struct tg_config *new_config(const char *prefix)
{
    struct tg_config *c = calloc(1, sizeof(*c));
    tg_arena_init(&c->arena, 16384);
    c->path = "test.yaml";
    struct tg_config_tenants *t = &c->tenants;
    t->directory = TG_TENANTS_REDIS;
    snprintf(addr_buf, sizeof(addr_buf), "127.0.0.1:%d", srv.port);
    t->redis.address = addr_buf;
    t->redis.timeout_ms = 1000; /* roomy: sanitizers, a shared machine */
    t->redis.key_prefix = prefix;
    t->cache_ttl_ms = 10000;
    t->negative_ttl_ms = 5000;
    t->stale_ttl_ms = 60000;
    t->max_cached = 1000;
    t->upstream_defaults.balance = TG_BALANCE_ROUND_ROBIN;
    t->upstream_defaults.keepalive = 8;
    t->upstream_defaults.connect_timeout_ms = 1000;
    t->upstream_defaults.read_timeout_ms = 30000;
    t->upstream_defaults.retries = 1;
    t->configured = true;
    return c;
}

static void free_config(struct tg_config *c)
{
    tg_tenant_index_free(c->tenants.index);
    tg_arena_reset(&c->arena);
    free(c);
}

static void flushall(void)
{
    redisReply *r = h_cmd(sc, "FLUSHALL");
    freeReplyObject(r);
}

static void cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(sc, fmt, ap);
    va_end(ap);
    CHECK(r != NULL && r->type != REDIS_REPLY_ERROR);
    if (r != NULL)
        freeReplyObject(r);
}

/* Calls of a command as Redis counts them (INFO commandstats). */
static long long calls_of(const char *name)
{
    redisReply *r = redisCommand(sc, "INFO commandstats");
    long long v = 0;
    if (r != NULL && r->type == REDIS_REPLY_STRING) {
        char key[64];
        snprintf(key, sizeof(key), "cmdstat_%s:calls=", name);
        const char *p = strstr(r->str, key);
        if (p != NULL)
            v = atoll(p + strlen(key));
    }
    if (r != NULL)
        freeReplyObject(r);
    return v;
}

static bool dir_ready(void *arg)
{
    struct tg_tenant_dir *d = arg;
    return d->link != NULL && tg_redis_cluster_state(d->link) == TG_REDIS_UP && d->sub != NULL &&
           tg_redis_sub_subscribed(d->sub);
}

static struct tg_tenant_dir *ready_dir(const struct tg_config_tenants *tc)
{
    struct tg_tenant_dir *d = tg_tenant_dir_new(loop, tc);
    CHECK(d != NULL);
    CHECK(h_run_until(loop, dir_ready, d, 5));
    return d;
}

/* ---- look-up helpers --------------------------------------------------------- */

static bool inside_lookup; /* a callback now would be too early */

struct got {
    int calls;
    enum tg_tenant_status status;
    struct tg_tenant *t;
    struct tg_tenant_dir *free_dir; /* the callback frees this directory */
};

static void got_cb(void *arg, enum tg_tenant_status st, struct tg_tenant *t)
{
    struct got *g = arg;
    CHECK(!inside_lookup);
    g->calls++;
    g->status = st;
    g->t = t;
    CHECK((st == TG_TENANT_FOUND) == (t != NULL));
    if (g->free_dir != NULL) {
        struct tg_tenant_dir *d = g->free_dir;
        g->free_dir = NULL;
        tg_tenant_dir_free(d);
    }
}

static bool got_done(void *arg)
{
    return ((struct got *)arg)->calls > 0;
}

/* Looks up an id (or a domain), waiting for the callback if it must.
 * *waited says which way it came. */
static enum tg_tenant_status look_any(struct tg_tenant_dir *d, const struct tg_config_tenants *tc,
                                      bool domain, const char *name, struct tg_tenant **t,
                                      bool *waited)
{
    struct got g = {0};
    struct tg_tenant_wait *w = NULL;
    inside_lookup = true;
    int rc = domain ? tg_tenant_lookup_domain(d, tc, name, strlen(name), t, got_cb, &g, &w)
                    : tg_tenant_lookup(d, tc, name, strlen(name), t, got_cb, &g, &w);
    inside_lookup = false;
    if (waited != NULL)
        *waited = rc < 0;
    if (rc >= 0) {
        CHECK(w == NULL);
        CHECK((rc == TG_TENANT_FOUND) == (*t != NULL));
        return (enum tg_tenant_status)rc;
    }
    CHECK(w != NULL);
    CHECK(*t == NULL);
    CHECK_EQ_INT(g.calls, 0);
    CHECK(h_run_until(loop, got_done, &g, 5));
    CHECK_EQ_INT(g.calls, 1);
    *t = g.t;
    return g.status;
}

static enum tg_tenant_status look(struct tg_tenant_dir *d, const struct tg_config_tenants *tc,
                                  const char *id, struct tg_tenant **t, bool *waited)
{
    return look_any(d, tc, false, id, t, waited);
}

static uint64_t lookups_of(struct tg_tenant_dir *d)
{
    struct tg_tenant_stats st;
    tg_tenant_dir_stats(d, &st);
    return st.redis_lookups;
}

static int port_of(const struct tg_config_server *s)
{
    return ntohs(((const struct sockaddr_in *)&s->addr.sa)->sin_port);
}

/* ---- static index ------------------------------------------------------------ */

static void set_servers(void)
{
    char err[128];
    CHECK(tg_config_parse_sockaddr("127.0.0.1:7001", &srv_a[0].addr, err, sizeof(err)) == 0);
    srv_a[0].addr.text = "127.0.0.1:7001";
    CHECK(tg_config_parse_sockaddr("127.0.0.1:7002", &srv_a[1].addr, err, sizeof(err)) == 0);
    srv_a[1].addr.text = "127.0.0.1:7002";
    CHECK(tg_config_parse_sockaddr("127.0.0.1:7003", &srv_b[0].addr, err, sizeof(err)) == 0);
    srv_b[0].addr.text = "127.0.0.1:7003";
}

TEST(index_basics)
{
    struct tg_config *c = new_config("tg:");
    c->tenants.directory = TG_TENANTS_STATIC;
    struct tg_config_tenant ts[3] = {
        {.id = "Acme", .servers = srv_a, .nservers = 2, .burst = 7, .mark = {3, 5}},
        {.id = "beta-2", .servers = srv_b, .nservers = 1, .suspended = true},
        {.id = "0x", .servers = srv_b, .nservers = 1},
    };
    struct tg_config_domain ds[2] = {
        {.domain = "shop.example.com.", .tenant = "ACME"},
        {.domain = "beta.example.org", .tenant = "beta-2"},
    };
    c->tenants.tenants = ts;
    c->tenants.ntenants = 3;
    c->tenants.domains = ds;
    c->tenants.ndomains = 2;
    char err[256] = "";
    CHECK_EQ_INT(tg_tenant_index_build(c, err, sizeof(err)), 0);
    const struct tg_tenant_index *ix = c->tenants.index;
    CHECK(ix != NULL);

    struct tg_tenant *t = tg_tenant_static(ix, "ACME", 4);
    CHECK(t != NULL);
    CHECK_EQ_STR(t->id, "acme");
    CHECK_EQ_STR(t->upstream.name, "$tenant:acme");
    CHECK(t->upstream.servers == srv_a);
    CHECK_EQ_INT(t->upstream.nservers, 2);
    CHECK_EQ_INT(t->upstream.keepalive, 8);
    CHECK_EQ_INT(t->upstream.retries, 1);
    CHECK_EQ_INT(t->burst, 7);
    CHECK_EQ_INT(t->refs, 0);
    CHECK(!t->suspended);
    tg_tenant_ref(t); /* no-ops on static tenants */
    tg_tenant_release(t);
    CHECK_EQ_INT(t->refs, 0);
    CHECK(tg_tenant_static(ix, "beta-2", 6)->suspended);
    CHECK(tg_tenant_static(ix, "0x", 2) != NULL);
    CHECK(tg_tenant_static(ix, "acm", 3) == NULL);
    CHECK(tg_tenant_static(ix, "acmee", 5) == NULL);
    CHECK(tg_tenant_static(ix, "", 0) == NULL);

    CHECK_EQ_STR(tg_tenant_static_domain(ix, "Shop.Example.COM", 16), "acme");
    CHECK_EQ_STR(tg_tenant_static_domain(ix, "shop.example.com.", 17), "acme");
    CHECK_EQ_STR(tg_tenant_static_domain(ix, "beta.example.org", 16), "beta-2");
    CHECK(tg_tenant_static_domain(ix, "example.com", 11) == NULL);
    CHECK(tg_tenant_static_domain(NULL, "example.com", 11) == NULL);
    free_config(c);
}

static int build_with(struct tg_config_tenant *ts, size_t n, struct tg_config_domain *ds, size_t nd,
                      bool stat, char *err, size_t errlen)
{
    struct tg_config *c = new_config("tg:");
    c->tenants.directory = stat ? TG_TENANTS_STATIC : TG_TENANTS_REDIS;
    c->tenants.tenants = ts;
    c->tenants.ntenants = n;
    c->tenants.domains = ds;
    c->tenants.ndomains = nd;
    err[0] = '\0';
    int rc = tg_tenant_index_build(c, err, errlen);
    CHECK(rc == 0 || c->tenants.index == NULL);
    free_config(c);
    return rc;
}

TEST(index_errors)
{
    char err[256];
    struct tg_config_tenant dup[2] = {
        {.id = "acme", .servers = srv_a, .nservers = 2},
        {.id = "ACME", .servers = srv_b, .nservers = 1, .mark = {9, 7}},
    };
    CHECK_EQ_INT(build_with(dup, 2, NULL, 0, false, err, sizeof(err)), -1);
    CHECK(strstr(err, "test.yaml:9:7: ") == err);
    CHECK(strstr(err, "'acme' is defined twice") != NULL);

    char l63[64], l64[65];
    memset(l63, 'a', 63);
    l63[63] = '\0';
    memset(l64, 'b', 64);
    l64[64] = '\0';
    const char *bad[] = {"-acme", "acme-", "", "a_b", "a.b", "ac me", "caf\xc3\xa9", l64};
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        struct tg_config_tenant t = {.id = bad[i], .servers = srv_b, .nservers = 1};
        CHECK_EQ_INT(build_with(&t, 1, NULL, 0, false, err, sizeof(err)), -1);
        CHECK(strstr(err, "is not a DNS label") != NULL);
    }
    struct tg_config_tenant none = {.id = NULL};
    CHECK_EQ_INT(build_with(&none, 1, NULL, 0, false, err, sizeof(err)), -1);
    /* 63 bytes is the longest label */
    struct tg_config_tenant longest = {.id = l63};
    CHECK_EQ_INT(build_with(&longest, 1, NULL, 0, false, err, sizeof(err)), 0);

    struct tg_config_tenant one = {.id = "acme", .servers = srv_a, .nservers = 2};
    struct tg_config_domain dd[2] = {{"a.example.com", "acme"}, {"A.example.com.", "acme"}};
    CHECK_EQ_INT(build_with(&one, 1, dd, 2, false, err, sizeof(err)), -1);
    CHECK(strstr(err, "listed twice") != NULL);
    struct tg_config_domain badid = {"b.example.com", "not_a_label"};
    CHECK_EQ_INT(build_with(&one, 1, &badid, 1, false, err, sizeof(err)), -1);
    CHECK(strstr(err, "is not a DNS label") != NULL);
    struct tg_config_domain baddom = {"b example.com", "acme"};
    CHECK_EQ_INT(build_with(&one, 1, &baddom, 1, false, err, sizeof(err)), -1);
    CHECK(strstr(err, "is not a host name") != NULL);
    /* A domain may point at a tenant that lives in Redis... */
    struct tg_config_domain elsewhere = {"c.example.com", "in-redis"};
    CHECK_EQ_INT(build_with(&one, 1, &elsewhere, 1, false, err, sizeof(err)), 0);
    /* ...but not when there is no Redis. */
    CHECK_EQ_INT(build_with(&one, 1, &elsewhere, 1, true, err, sizeof(err)), -1);
    CHECK(strstr(err, "'in-redis' is not defined") != NULL);
}

TEST(index_100k)
{
    enum { N = 100000 };
    struct tg_config *c = new_config("tg:");
    struct tg_config_tenant *ts = calloc(N, sizeof(*ts));
    struct tg_config_domain *ds = calloc(N, sizeof(*ds));
    for (size_t i = 0; i < N; i++) {
        ts[i].id = tg_arena_printf(&c->arena, "t%zu", i);
        ts[i].servers = srv_b;
        ts[i].nservers = 1;
        ds[i].domain = tg_arena_printf(&c->arena, "www.t%zu.example", i);
        ds[i].tenant = ts[i].id;
    }
    c->tenants.tenants = ts;
    c->tenants.ntenants = N;
    c->tenants.domains = ds;
    c->tenants.ndomains = N;
    char err[256];
    double t0 = h_now();
    CHECK_EQ_INT(tg_tenant_index_build(c, err, sizeof(err)), 0);
    double built = h_now() - t0;
    const struct tg_tenant_index *ix = c->tenants.index;
    size_t found = 0;
    char buf[64];
    t0 = h_now();
    for (size_t i = 0; i < N; i++) {
        int n = snprintf(buf, sizeof(buf), "T%zu", i);
        struct tg_tenant *t = tg_tenant_static(ix, buf, (size_t)n);
        n = snprintf(buf, sizeof(buf), "www.t%zu.example", i);
        const char *id = tg_tenant_static_domain(ix, buf, (size_t)n);
        found += t != NULL && id != NULL && strcmp(t->id, id) == 0;
    }
    double looked = h_now() - t0;
    CHECK_EQ_INT(found, N);
    CHECK(tg_tenant_static(ix, "t100000", 7) == NULL);
    /* O(1): generous bounds for sanitizers and a shared machine. */
    CHECK(built < 3.0);
    CHECK(looked < 2.0);
    printf("index: 100000 tenants + 100000 domains built in %.0f ms, "
           "200000 look-ups in %.0f ms\n",
           built * 1e3, looked * 1e3);
    free(ts);
    free(ds);
    free_config(c);
}

/* ---- Redis ---------------------------------------------------------------------- */

TEST(found_and_cached)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:acme servers %s rate 100/s burst 50 status active note x",
        " 127.0.0.1:8001 ,127.0.0.1:8002,[::1]:8003 ");
    long long before = calls_of("hgetall");

    struct tg_tenant *t = NULL;
    bool waited = false;
    CHECK_EQ_INT(look(d, &c->tenants, "Acme", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited);
    CHECK(t != NULL);
    if (t == NULL)
        goto out;
    CHECK_EQ_STR(t->id, "acme");
    CHECK_EQ_STR(t->upstream.name, "$tenant:acme");
    CHECK_EQ_INT(t->upstream.nservers, 3);
    CHECK_EQ_STR(t->upstream.servers[0].addr.text, "127.0.0.1:8001");
    CHECK_EQ_STR(t->upstream.servers[1].addr.text, "127.0.0.1:8002");
    CHECK_EQ_STR(t->upstream.servers[2].addr.text, "[::1]:8003");
    CHECK_EQ_INT(port_of(&t->upstream.servers[0]), 8001);
    CHECK_EQ_INT(port_of(&t->upstream.servers[1]), 8002);
    CHECK_EQ_INT(t->upstream.servers[2].addr.sa.ss_family, AF_INET6);
    CHECK_EQ_INT(t->upstream.keepalive, 8);
    CHECK_EQ_INT(t->upstream.read_timeout_ms, 30000);
    CHECK(!t->suspended);
    CHECK_EQ_INT(t->rate_count, 100);
    CHECK_EQ_INT(t->rate_period_s, 1);
    CHECK_EQ_INT(t->rate_interval_ns, 10000000);
    CHECK_EQ_INT(t->burst, 50);
    CHECK_EQ_INT(t->refs, 2); /* the cache's and ours */

    /* Cached: answered at once, the same object. */
    struct tg_tenant *t2 = NULL;
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t2, &waited), TG_TENANT_FOUND);
    CHECK(!waited);
    CHECK(t2 == t);
    CHECK_EQ_INT(t->refs, 3);
    CHECK_EQ_INT(calls_of("hgetall") - before, 1);
    struct tg_tenant_stats st;
    tg_tenant_dir_stats(d, &st);
    CHECK_EQ_INT(st.hits, 1);
    CHECK_EQ_INT(st.misses, 1);
    CHECK_EQ_INT(st.redis_lookups, 1);
    CHECK_EQ_INT(st.cached, 1);
    tg_tenant_release(t2);
    /* A tenant outlives its directory while a request holds it. */
    tg_tenant_dir_free(d);
    d = NULL;
    CHECK_EQ_INT(t->refs, 1);
    CHECK_EQ_STR(t->upstream.servers[1].addr.text, "127.0.0.1:8002");
    tg_tenant_release(t);
out:
    tg_tenant_dir_free(d);
    free_config(c);
}

/* The addresses a tenant's requests would use now (its resolver group's
 * servers): "a b c". */
static void servers_now(const struct tg_tenant *t, char *out, size_t cap)
{
    struct tg_server_set *set = tg_resolver_group_set(t->upstream.resolve);
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; set != NULL && i < set->n && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? " " : "", set->servers[i].addr.text);
    tg_server_set_unref(set);
}

/* Issue 22 item 5: servers in the directory may be names. The look-up
 * waits (no longer than the Redis timeout) for the resolver thread's first
 * answer, never resolving on the loop; a name the resolver does not know
 * yet keeps the tenant waiting; a known one does not. */
TEST(named_servers)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    c->tenants.upstream_defaults.resolve_interval_ms = 30000;
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:named servers %s", "localhost:8101, 127.0.0.1:8102");
    cmd("HSET tg:nowhere servers %s", "nonexistent.invalid:8103, 127.0.0.1:8104");
    cmd("HSET tg:later servers %s", "localhost:8105");
    cmd("HSET tg:alsolocal servers %s", "LOCALHOST:8101");
    char now[512];

    /* No resolver thread: the wait ends at the Redis timeout (1 s here),
     * and the tenant has no address for the name meanwhile. */
    tg_resolver_stop();
    struct tg_tenant *t = NULL;
    bool waited = false;
    ev_tstamp t0 = ev_time();
    CHECK_EQ_INT(look(d, &c->tenants, "later", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited);
    CHECK(ev_time() - t0 >= 0.9);
    CHECK(t != NULL && t->upstream.resolve != NULL);
    if (t != NULL) {
        CHECK_EQ_INT(t->upstream.nservers, 1);
        CHECK_EQ_STR(t->upstream.servers[0].host, "localhost");
        CHECK_EQ_INT(t->upstream.servers[0].port, 8105);
        servers_now(t, now, sizeof(now));
        CHECK_EQ_STR(now, "");
        tg_tenant_release(t);
    }
    /* A look-up waiting for names when its directory goes: answered, no
     * leak, and the resolver no longer calls it. */
    cmd("HSET tg:gone servers %s", "gone.example:80");
    struct got g = {0};
    struct tg_tenant_wait *w = NULL;
    t = NULL;
    CHECK_EQ_INT(tg_tenant_lookup(d, &c->tenants, "gone", 4, &t, got_cb, &g, &w), -1);
    h_run_for(loop, 0.3);
    CHECK_EQ_INT(g.calls, 0);
    CHECK_EQ_INT(d->names_waiting, 1);
    tg_tenant_dir_free(d);
    CHECK_EQ_INT(g.calls, 1);
    CHECK_EQ_INT(g.status, TG_TENANT_UNAVAILABLE);

    /* With the thread: found once the names have their first answer. */
    CHECK(tg_resolver_start() == 0);
    d = ready_dir(&c->tenants);
    t = NULL;
    CHECK_EQ_INT(look(d, &c->tenants, "named", &t, &waited), TG_TENANT_FOUND);
    CHECK(t != NULL && t->upstream.resolve != NULL);
    if (t != NULL) {
        CHECK(tg_resolver_group_ready(t->upstream.resolve));
        servers_now(t, now, sizeof(now));
        /* localhost's addresses (IPv4 at least; ::1 where the hosts file
         * has it), then the literal, in the order written. */
        CHECK(strncmp(now, "127.0.0.1:8101", 14) == 0 || strstr(now, "127.0.0.1:8101") != NULL);
        size_t len = strlen(now);
        CHECK(len >= 14 && strcmp(now + len - 14, "127.0.0.1:8102") == 0);
        /* Shared with the other workers through tenant_shared as written. */
        CHECK_EQ_STR(t->upstream.servers[0].addr.text, "localhost:8101");
    }
    /* The same name, known already: no wait for the resolver. */
    struct tg_tenant *t2 = NULL;
    CHECK_EQ_INT(look(d, &c->tenants, "alsolocal", &t2, &waited), TG_TENANT_FOUND);
    CHECK_EQ_INT(d->names_waiting, 0);
    if (t2 != NULL)
        CHECK(tg_resolver_group_ready(t2->upstream.resolve));
    tg_tenant_release(t2);
    /* A name that does not resolve: found, with its literal only. */
    struct tg_tenant *t3 = NULL;
    CHECK_EQ_INT(look(d, &c->tenants, "nowhere", &t3, &waited), TG_TENANT_FOUND);
    if (t3 != NULL) {
        servers_now(t3, now, sizeof(now));
        CHECK_EQ_STR(now, "127.0.0.1:8104");
    }
    tg_tenant_release(t3);
    /* A reload's copy follows the same names. */
    struct tg_config *c2 = new_config("tg:");
    c2->tenants.upstream_defaults.resolve_interval_ms = 30000;
    tg_tenant_dir_configure(d, &c2->tenants);
    struct tg_tenant *t4 = NULL;
    CHECK_EQ_INT(look(d, &c->tenants, "named", &t4, &waited), TG_TENANT_FOUND);
    CHECK(t4 != NULL && t != NULL && t4 != t && t4->upstream.resolve == t->upstream.resolve);
    tg_tenant_release(t4);
    tg_tenant_release(t);
    tg_tenant_dir_free(d);
    tg_resolver_stop();
    free_config(c2);
    free_config(c);
}

TEST(suspended)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:sleepy status suspended");
    cmd("HSET tg:paused status suspended servers 127.0.0.1:9000");
    struct tg_tenant *t = NULL;
    CHECK_EQ_INT(look(d, &c->tenants, "sleepy", &t, NULL), TG_TENANT_FOUND);
    CHECK(t != NULL && t->suspended && t->upstream.nservers == 0);
    tg_tenant_release(t);
    CHECK_EQ_INT(look(d, &c->tenants, "paused", &t, NULL), TG_TENANT_FOUND);
    CHECK(t != NULL && t->suspended && t->upstream.nservers == 1);
    tg_tenant_release(t);
    tg_tenant_dir_free(d);
    free_config(c);
}

TEST(missing_negative_cache)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    c->tenants.negative_ttl_ms = 1000; /* roomy: the machine is shared */
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    long long before = calls_of("hgetall");
    struct tg_tenant *t = NULL;
    bool waited;
    CHECK_EQ_INT(look(d, &c->tenants, "ghost", &t, &waited), TG_TENANT_NOT_FOUND);
    CHECK(waited);
    CHECK_EQ_INT(lookups_of(d), 1);
    /* Within negative_ttl: no Redis call at all. */
    for (int i = 0; i < 20; i++) {
        CHECK_EQ_INT(look(d, &c->tenants, "ghost", &t, &waited), TG_TENANT_NOT_FOUND);
        CHECK(!waited);
    }
    CHECK_EQ_INT(lookups_of(d), 1);
    CHECK_EQ_INT(calls_of("hgetall") - before, 1);
    struct tg_tenant_stats st;
    tg_tenant_dir_stats(d, &st);
    CHECK_EQ_INT(st.negative_hits, 20);
    /* Created meanwhile: still "absent" until the negative entry expires. */
    cmd("HSET tg:ghost servers 127.0.0.1:8100");
    CHECK_EQ_INT(look(d, &c->tenants, "ghost", &t, &waited), TG_TENANT_NOT_FOUND);
    h_run_for(loop, 1.05);
    CHECK_EQ_INT(look(d, &c->tenants, "ghost", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited);
    CHECK_EQ_INT(lookups_of(d), 2);
    CHECK_EQ_INT(calls_of("hgetall") - before, 2);
    tg_tenant_release(t);
    /* An id that is no DNS label never reaches Redis. */
    CHECK_EQ_INT(look(d, &c->tenants, "no_such", &t, &waited), TG_TENANT_NOT_FOUND);
    CHECK(!waited);
    CHECK_EQ_INT(lookups_of(d), 2);
    tg_tenant_dir_free(d);
    free_config(c);
}

static bool invalidations_reach(struct tg_tenant_dir *d, uint64_t n)
{
    struct tg_tenant_stats st;
    for (double until = h_now() + 3; h_now() < until;) {
        tg_tenant_dir_stats(d, &st);
        if (st.invalidations >= n)
            return true;
        ev_run(loop, EVRUN_ONCE | EVRUN_NOWAIT);
        usleep(1000);
    }
    return false;
}

TEST(publish_invalidates)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:acme servers 127.0.0.1:8001");
    cmd("SET tg:host:shop.example.com acme");
    struct tg_tenant *t = NULL;
    bool waited;
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t, NULL), TG_TENANT_FOUND);
    CHECK(t != NULL && port_of(&t->upstream.servers[0]) == 8001);
    tg_tenant_release(t);

    cmd("HSET tg:acme servers 127.0.0.1:8009");
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t, &waited), TG_TENANT_FOUND);
    CHECK(!waited); /* cached: still the old servers */
    CHECK(t != NULL && port_of(&t->upstream.servers[0]) == 8001);
    struct tg_tenant *old = t;

    cmd("PUBLISH tg:changed acme");
    CHECK(invalidations_reach(d, 1));
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited);
    CHECK(t != NULL && t != old && port_of(&t->upstream.servers[0]) == 8009);
    /* The request holding the old object still reads it. */
    CHECK_EQ_INT(port_of(&old->upstream.servers[0]), 8001);
    CHECK_EQ_INT(old->refs, 1);
    tg_tenant_release(old);
    tg_tenant_release(t);

    /* Domains: "host:<domain>". */
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "shop.example.com", &t, NULL), TG_TENANT_FOUND);
    CHECK(t != NULL && strcmp(t->id, "acme") == 0);
    tg_tenant_release(t);
    cmd("HSET tg:other servers 127.0.0.1:8300");
    cmd("SET tg:host:shop.example.com other");
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "shop.example.com", &t, &waited), TG_TENANT_FOUND);
    CHECK(!waited && t != NULL && strcmp(t->id, "acme") == 0);
    tg_tenant_release(t);
    cmd("PUBLISH tg:changed host:shop.example.com");
    CHECK(invalidations_reach(d, 2));
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "shop.example.com", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited && t != NULL && strcmp(t->id, "other") == 0);
    tg_tenant_release(t);
    tg_tenant_dir_free(d);
    free_config(c);
}

/* The subtle one: an invalidation that arrives while the fetch for that
 * id is in flight. Its reply may predate the change, so it answers the
 * look-ups already waiting but is not cached. */
TEST(invalidated_while_in_flight)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:acme servers 127.0.0.1:8001");
    struct got g = {0};
    struct tg_tenant *t = NULL;
    struct tg_tenant_wait *w = NULL;
    CHECK_EQ_INT(tg_tenant_lookup(d, &c->tenants, "acme", 4, &t, got_cb, &g, &w), -1);
    on_invalidate(d, "ACME", 4); /* as if published now */
    /* A look-up after the invalidation does not join the old fetch. */
    struct got g2 = {0};
    struct tg_tenant_wait *w2 = NULL;
    CHECK_EQ_INT(tg_tenant_lookup(d, &c->tenants, "acme", 4, &t, got_cb, &g2, &w2), -1);
    CHECK(h_run_until(loop, got_done, &g, 5));
    CHECK(h_run_until(loop, got_done, &g2, 5));
    CHECK_EQ_INT(g.status, TG_TENANT_FOUND);
    CHECK_EQ_INT(g2.status, TG_TENANT_FOUND);
    CHECK_EQ_INT(lookups_of(d), 2);
    CHECK(g.t != g2.t);
    tg_tenant_release(g.t);
    tg_tenant_release(g2.t);
    /* The second fetch's answer was cached. */
    bool waited;
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t, &waited), TG_TENANT_FOUND);
    CHECK(!waited);
    tg_tenant_release(t);
    tg_tenant_dir_free(d);
    free_config(c);
}

TEST(coalescing)
{
    enum { N = 100 };
    flushall();
    struct tg_config *c = new_config("tg:");
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:busy servers 127.0.0.1:8001,127.0.0.1:8002");
    long long before = calls_of("hgetall");
    static struct got g[N];
    memset(g, 0, sizeof(g));
    unsigned iter = ev_iteration(loop);
    int queued = 0;
    for (int i = 0; i < N; i++) {
        struct tg_tenant *t = NULL;
        struct tg_tenant_wait *w = NULL;
        inside_lookup = true;
        queued += tg_tenant_lookup(d, &c->tenants, i % 2 ? "busy" : "BUSY", 4, &t, got_cb, &g[i],
                                   &w) == -1;
        inside_lookup = false;
    }
    CHECK_EQ_INT(ev_iteration(loop), iter); /* one loop iteration */
    CHECK_EQ_INT(queued, N);
    for (int i = 0; i < N; i++)
        CHECK(h_run_until(loop, got_done, &g[i], 5));
    CHECK_EQ_INT(calls_of("hgetall") - before, 1);
    CHECK_EQ_INT(lookups_of(d), 1);
    struct tg_tenant *t0 = g[0].t;
    int same = 0;
    for (int i = 0; i < N; i++)
        same += g[i].calls == 1 && g[i].status == TG_TENANT_FOUND && g[i].t == t0;
    CHECK_EQ_INT(same, N);
    CHECK(t0 != NULL && t0->refs == N + 1);
    for (int i = 0; i < N; i++)
        tg_tenant_release(g[i].t);
    CHECK(t0 != NULL && t0->refs == 1);
    tg_tenant_dir_free(d);
    free_config(c);
}

TEST(static_wins)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    struct tg_config_tenant ts[1] = {{.id = "fixed", .servers = srv_a, .nservers = 2}};
    struct tg_config_domain ds[1] = {{"fixed.example.com", "fixed"}};
    c->tenants.tenants = ts;
    c->tenants.ntenants = 1;
    c->tenants.domains = ds;
    c->tenants.ndomains = 1;
    char err[128];
    CHECK_EQ_INT(tg_tenant_index_build(c, err, sizeof(err)), 0);
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:fixed servers 127.0.0.1:9999");
    cmd("SET tg:host:fixed.example.com someone-else");
    cmd("SET tg:host:alias.example.com fixed");
    struct tg_tenant *t = NULL;
    bool waited;
    CHECK_EQ_INT(look(d, &c->tenants, "FIXED", &t, &waited), TG_TENANT_FOUND);
    CHECK(!waited && t == tg_tenant_static(c->tenants.index, "fixed", 5));
    CHECK(t != NULL && t->upstream.servers == srv_a && t->refs == 0);
    tg_tenant_release(t);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "fixed.example.com", &t, &waited), TG_TENANT_FOUND);
    CHECK(!waited && t != NULL && t->upstream.servers == srv_a);
    CHECK_EQ_INT(lookups_of(d), 0);
    /* A domain from Redis pointing at a static tenant gets the static one. */
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "alias.example.com", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited && t != NULL && t->upstream.servers == srv_a);
    CHECK_EQ_INT(lookups_of(d), 1);
    tg_tenant_dir_free(d);
    free_config(c);
}

TEST(domains)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:acme servers 127.0.0.1:8001");
    cmd("SET tg:host:shop.example.com acme");
    cmd("SET tg:host:bad.example.com %s", "not a label");
    cmd("SET tg:host:dangling.example.com nobody");
    cmd("HSET tg:host:hash.example.com x y");
    long long gets = calls_of("get"), hgetalls = calls_of("hgetall");

    /* Both steps missing: GET then HGETALL, for many waiters at once. */
    enum { N = 10 };
    struct got g[N];
    memset(g, 0, sizeof(g));
    for (int i = 0; i < N; i++) {
        struct tg_tenant *t = NULL;
        struct tg_tenant_wait *w = NULL;
        inside_lookup = true;
        CHECK_EQ_INT(
            tg_tenant_lookup_domain(d, &c->tenants, "Shop.Example.com.", 17, &t, got_cb, &g[i], &w),
            -1);
        inside_lookup = false;
    }
    for (int i = 0; i < N; i++) {
        CHECK(h_run_until(loop, got_done, &g[i], 5));
        CHECK_EQ_INT(g[i].status, TG_TENANT_FOUND);
        CHECK(g[i].t != NULL && strcmp(g[i].t->id, "acme") == 0);
        tg_tenant_release(g[i].t);
    }
    CHECK_EQ_INT(calls_of("get") - gets, 1);
    CHECK_EQ_INT(calls_of("hgetall") - hgetalls, 1);

    struct tg_tenant *t = NULL;
    bool waited;
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "shop.example.com", &t, &waited), TG_TENANT_FOUND);
    CHECK(!waited);
    tg_tenant_release(t);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "none.example.com", &t, &waited),
                 TG_TENANT_NOT_FOUND);
    CHECK(waited);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "none.example.com", &t, &waited),
                 TG_TENANT_NOT_FOUND);
    CHECK(!waited);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "bad.example.com", &t, NULL), TG_TENANT_NOT_FOUND);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "hash.example.com", &t, NULL), TG_TENANT_NOT_FOUND);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "dangling.example.com", &t, NULL),
                 TG_TENANT_NOT_FOUND);
    /* Not host names: refused without asking. */
    uint64_t n = lookups_of(d);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "a b", &t, &waited), TG_TENANT_NOT_FOUND);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "", &t, &waited), TG_TENANT_NOT_FOUND);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "x:80", &t, &waited), TG_TENANT_NOT_FOUND);
    CHECK_EQ_INT(lookups_of(d), n);
    tg_tenant_dir_free(d);
    free_config(c);
}

TEST(cancel)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:acme servers 127.0.0.1:8001");
    cmd("SET tg:host:shop.example.com acme");
    struct got g1 = {0}, g2 = {0}, g3 = {0};
    struct tg_tenant *t = NULL;
    struct tg_tenant_wait *w1 = NULL, *w2 = NULL, *w3 = NULL;
    CHECK_EQ_INT(tg_tenant_lookup(d, &c->tenants, "acme", 4, &t, got_cb, &g1, &w1), -1);
    CHECK_EQ_INT(tg_tenant_lookup(d, &c->tenants, "acme", 4, &t, got_cb, &g2, &w2), -1);
    CHECK_EQ_INT(
        tg_tenant_lookup_domain(d, &c->tenants, "shop.example.com", 16, &t, got_cb, &g3, &w3), -1);
    tg_tenant_cancel(w1);
    tg_tenant_cancel(w3);
    CHECK(h_run_until(loop, got_done, &g2, 5));
    h_run_for(loop, 0.05);
    CHECK_EQ_INT(g1.calls, 0);
    CHECK_EQ_INT(g3.calls, 0);
    CHECK_EQ_INT(g2.status, TG_TENANT_FOUND);
    tg_tenant_release(g2.t);

    /* Cancelled alone: the answer is still cached for the next one. */
    cmd("HSET tg:solo servers 127.0.0.1:8002");
    struct got g4 = {0};
    struct tg_tenant_wait *w4 = NULL;
    CHECK_EQ_INT(tg_tenant_lookup(d, &c->tenants, "solo", 4, &t, got_cb, &g4, &w4), -1);
    tg_tenant_cancel(w4);
    h_run_for(loop, 0.1);
    CHECK_EQ_INT(g4.calls, 0);
    bool waited;
    CHECK_EQ_INT(look(d, &c->tenants, "solo", &t, &waited), TG_TENANT_FOUND);
    CHECK(!waited);
    tg_tenant_release(t);

    /* A domain waiter cancelled while it waits on the tenant step. */
    cmd("HSET tg:late servers 127.0.0.1:8003");
    cmd("SET tg:host:late.example.com late");
    struct got g5 = {0};
    struct tg_tenant_wait *w5 = NULL;
    CHECK_EQ_INT(
        tg_tenant_lookup_domain(d, &c->tenants, "late.example.com", 16, &t, got_cb, &g5, &w5), -1);
    uint64_t n = lookups_of(d);
    /* until the GET is answered and the HGETALL sent */
    for (double until = h_now() + 5; lookups_of(d) == n && h_now() < until;)
        ev_run(loop, EVRUN_ONCE | EVRUN_NOWAIT);
    CHECK_EQ_INT(lookups_of(d), n + 1);
    tg_tenant_cancel(w5);
    h_run_for(loop, 0.1);
    CHECK_EQ_INT(g5.calls, 0);
    tg_tenant_dir_free(d);
    free_config(c);
}

static int count_in_file(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    int n = 0;
    char line[2048];
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, needle) != NULL;
    if (f != NULL)
        fclose(f);
    return n;
}

TEST(malformed)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    c->tenants.negative_ttl_ms = 1500;
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:noservers rate 5/s");
    cmd("HSET tg:emptyservers servers %s", "");
    cmd("HSET tg:garbage servers nonsense");
    cmd("HSET tg:named servers bad!host:8080");
    cmd("HSET tg:badport servers 127.0.0.1:99999");
    cmd("HSET tg:emptyitem servers %s", "127.0.0.1:1,,127.0.0.1:2");
    cmd("HSET tg:badrate servers 127.0.0.1:1 rate fast");
    cmd("HSET tg:badburst servers 127.0.0.1:1 burst -1");
    cmd("HSET tg:badstatus servers 127.0.0.1:1 status deleted");
    cmd("SET tg:astring 127.0.0.1:1");
    const char *ids[] = {"noservers", "emptyservers", "garbage",  "named",     "badport",
                         "emptyitem", "badrate",      "badburst", "badstatus", "astring"};
    char path[] = "/tmp/tg-test-tenant-log-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    tg_log_open(path);
    tg_log_set_level(TG_LOG_WARN);
    for (int round = 0; round < 25; round++)
        for (size_t i = 0; i < TG_ARRAY_LEN(ids); i++) {
            struct tg_tenant *t = NULL;
            CHECK_EQ_INT(look(d, &c->tenants, ids[i], &t, NULL), TG_TENANT_NOT_FOUND);
        }
    /* Logged once per id (per negative_ttl), not per request. */
    CHECK_EQ_INT(count_in_file(path, "is malformed"), TG_ARRAY_LEN(ids));
    CHECK_EQ_INT(count_in_file(path, "tg:garbage in Redis is malformed"), 1);
    CHECK_EQ_INT(count_in_file(path, "'bad!host:8080' has a bad address"), 1);
    CHECK_EQ_INT(lookups_of(d), TG_ARRAY_LEN(ids));
    h_run_for(loop, 1.55);
    struct tg_tenant *t = NULL;
    CHECK_EQ_INT(look(d, &c->tenants, "garbage", &t, NULL), TG_TENANT_NOT_FOUND);
    CHECK_EQ_INT(count_in_file(path, "tg:garbage in Redis is malformed"), 2);
    tg_log_set_level(TG_LOG_ERROR + 1);
    tg_log_open(NULL);
    unlink(path);
    /* Fixed by the control plane: found once the negative entry goes. */
    cmd("HSET tg:badrate rate 10/m");
    cmd("PUBLISH tg:changed badrate");
    CHECK(invalidations_reach(d, 1));
    CHECK_EQ_INT(look(d, &c->tenants, "badrate", &t, NULL), TG_TENANT_FOUND);
    CHECK(t != NULL && t->rate_count == 10 && t->rate_period_s == 60);
    tg_tenant_release(t);
    tg_tenant_dir_free(d);
    free_config(c);
}

TEST(eviction)
{
    enum { MAX = 10, N = 30 };
    flushall();
    struct tg_config *c = new_config("tg:");
    c->tenants.max_cached = MAX;
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    for (int i = 0; i < N; i++)
        cmd("HSET tg:t%d servers 127.0.0.1:%d", i, 8000 + i);
    struct tg_tenant *first = NULL, *t = NULL;
    bool waited;
    char id[16];
    CHECK_EQ_INT(look(d, &c->tenants, "t0", &first, NULL), TG_TENANT_FOUND);
    for (int i = 1; i < N; i++) {
        snprintf(id, sizeof(id), "t%d", i);
        CHECK_EQ_INT(look(d, &c->tenants, id, &t, NULL), TG_TENANT_FOUND);
        tg_tenant_release(t);
        /* t1 stays in use, so it stays cached */
        CHECK_EQ_INT(look(d, &c->tenants, "t1", &t, &waited), TG_TENANT_FOUND);
        CHECK(!waited);
        tg_tenant_release(t);
        struct tg_tenant_stats st;
        tg_tenant_dir_stats(d, &st);
        CHECK(st.cached <= MAX);
    }
    /* t0 was evicted, and still belongs to the request holding it. */
    CHECK_EQ_INT(first->refs, 1);
    CHECK_EQ_STR(first->upstream.servers[0].addr.text, "127.0.0.1:8000");
    tg_tenant_release(first);
    CHECK_EQ_INT(look(d, &c->tenants, "t0", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited);
    tg_tenant_release(t);
    CHECK_EQ_INT(look(d, &c->tenants, "t29", &t, &waited), TG_TENANT_FOUND);
    CHECK(!waited);
    tg_tenant_release(t);
    /* A smaller bound on reload applies at once. */
    c->tenants.max_cached = 3;
    tg_tenant_dir_configure(d, &c->tenants);
    struct tg_tenant_stats st;
    tg_tenant_dir_stats(d, &st);
    CHECK_EQ_INT(st.cached, 3);
    tg_tenant_dir_free(d);
    free_config(c);
}

TEST(memory_per_entry)
{
    enum { N = 1000 };
    flushall();
    struct tg_config *c = new_config("tg:");
    /* 1000 commands in one pipeline: give a sanitized build on a busy
     * machine time to read them all. */
    c->tenants.redis.timeout_ms = 5000;
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    for (int i = 0; i < N; i++)
        cmd("HSET tg:tenant-%d servers 10.1.%d.%d:8080,10.2.%d.%d:8080 "
            "rate 100/s burst 200",
            i, i / 250, i % 250, i / 250, i % 250);
    struct tg_tenant_stats st0, st;
    tg_tenant_dir_stats(d, &st0);
    static struct got g[N];
    memset(g, 0, sizeof(g));
    char id[32];
    for (int i = 0; i < N; i++) {
        struct tg_tenant *t = NULL;
        struct tg_tenant_wait *w = NULL;
        int n = snprintf(id, sizeof(id), "tenant-%d", i);
        CHECK_EQ_INT(tg_tenant_lookup(d, &c->tenants, id, (size_t)n, &t, got_cb, &g[i], &w), -1);
    }
    int found = 0;
    for (int i = 0; i < N; i++) {
        CHECK(h_run_until(loop, got_done, &g[i], 10));
        found += g[i].status == TG_TENANT_FOUND;
        tg_tenant_release(g[i].t);
    }
    CHECK_EQ_INT(found, N);
    tg_tenant_dir_stats(d, &st);
    CHECK_EQ_INT(st.cached, N);
    struct entry *newest = lru_newest(d);
    if (newest == NULL || newest->t == NULL) {
        CHECK(!"a cached tenant");
        goto out;
    }
    double per = (double)(st.memory - st0.memory) / N;
    size_t one = malloc_usable_size(newest) + malloc_usable_size(newest->t);
    printf("memory per cached tenant (2 servers): %.0f bytes in the stats "
           "(entry %zu + tenant %zu bytes, sizeof tenant %zu, server %zu)\n",
           per, malloc_usable_size(newest), malloc_usable_size(newest->t), sizeof(struct tg_tenant),
           sizeof(struct tg_config_server));
    CHECK(per >= (double)one && per < 2000);
out:
    tg_tenant_dir_free(d);
    free_config(c);
}

TEST(snapshots_and_reconfigure)
{
    flushall();
    struct tg_config *c1 = new_config("tg:");
    struct tg_tenant_dir *d = ready_dir(&c1->tenants);
    cmd("HSET tg:acme servers 127.0.0.1:8001");
    cmd("HSET other:acme servers 127.0.0.1:8777");
    struct tg_tenant *t = NULL, *t2 = NULL;
    bool waited;
    CHECK_EQ_INT(look(d, &c1->tenants, "acme", &t, NULL), TG_TENANT_FOUND);

    /* A reload: new snapshot, new defaults, same Redis. */
    struct tg_config *c2 = new_config("tg:");
    c2->tenants.upstream_defaults.keepalive = 99;
    /* A request still on the old snapshot gets a tenant on its defaults. */
    tg_tenant_dir_configure(d, &c2->tenants);
    CHECK_EQ_INT(look(d, &c1->tenants, "acme", &t2, &waited), TG_TENANT_FOUND);
    CHECK(!waited && t2 != NULL && t2->upstream.keepalive == 8);
    CHECK(t2 != NULL && t2->refs == 1); /* its own copy */
    tg_tenant_release(t2);
    CHECK_EQ_INT(look(d, &c2->tenants, "acme", &t2, &waited), TG_TENANT_FOUND);
    CHECK(!waited && t2 != NULL && t2->upstream.keepalive == 99);
    CHECK(t2 != t && t2->refs == 2);
    CHECK_EQ_INT(t->upstream.keepalive, 8); /* held: unchanged */
    CHECK_EQ_INT(lookups_of(d), 1);         /* the cache was kept */
    tg_tenant_release(t2);
    tg_tenant_release(t);
    free_config(c1);

    /* New TTLs apply to what is cached. */
    c2->tenants.cache_ttl_ms = 1;
    tg_tenant_dir_configure(d, &c2->tenants);
    h_run_for(loop, 0.01);
    CHECK_EQ_INT(look(d, &c2->tenants, "acme", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited);
    tg_tenant_release(t);
    c2->tenants.cache_ttl_ms = 10000;

    /* Another prefix: the cache goes, the new keys are read. */
    struct tg_config *c3 = new_config("other:");
    tg_tenant_dir_configure(d, &c3->tenants);
    struct tg_tenant_stats st;
    tg_tenant_dir_stats(d, &st);
    CHECK_EQ_INT(st.cached, 0);
    CHECK(h_run_until(loop, dir_ready, d, 5));
    CHECK_EQ_INT(look(d, &c3->tenants, "acme", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited && t != NULL && port_of(&t->upstream.servers[0]) == 8777);
    tg_tenant_release(t);
    cmd("HSET other:acme servers 127.0.0.1:8778");
    cmd("PUBLISH other:changed acme"); /* the channel moved too */
    CHECK(invalidations_reach(d, 1));
    CHECK_EQ_INT(look(d, &c3->tenants, "acme", &t, NULL), TG_TENANT_FOUND);
    CHECK(t != NULL && port_of(&t->upstream.servers[0]) == 8778);
    tg_tenant_release(t);

    /* Another address (the same server, over its unix socket), with a
     * look-up in flight: reconnects, asks again there. */
    struct tg_config *c4 = new_config("other:");
    snprintf(unix_buf, sizeof(unix_buf), "unix:%s", srv.sock);
    c4->tenants.redis.address = unix_buf;
    cmd("HSET other:moving servers 127.0.0.1:8123");
    struct got g = {0};
    struct tg_tenant_wait *w = NULL;
    CHECK_EQ_INT(tg_tenant_lookup(d, &c3->tenants, "moving", 6, &t, got_cb, &g, &w), -1);
    tg_tenant_dir_configure(d, &c4->tenants);
    CHECK_EQ_INT(g.calls, 0); /* never from inside configure */
    CHECK(h_run_until(loop, got_done, &g, 5));
    CHECK_EQ_INT(g.status, TG_TENANT_FOUND);
    CHECK(g.t != NULL && port_of(&g.t->upstream.servers[0]) == 8123);
    tg_tenant_release(g.t);
    CHECK(h_run_until(loop, dir_ready, d, 5));

    /* Redis off: only static entries. */
    struct tg_config *c5 = new_config("other:");
    c5->tenants.directory = TG_TENANTS_STATIC;
    tg_tenant_dir_configure(d, &c5->tenants);
    CHECK(d->link == NULL && d->sub == NULL);
    CHECK_EQ_INT(look(d, &c5->tenants, "acme", &t, &waited), TG_TENANT_NOT_FOUND);
    CHECK(!waited);
    /* And on again. */
    tg_tenant_dir_configure(d, &c4->tenants);
    CHECK_EQ_INT(look(d, &c4->tenants, "acme", &t, NULL), TG_TENANT_FOUND);
    tg_tenant_release(t);
    tg_tenant_dir_free(d);
    free_config(c2);
    free_config(c3);
    free_config(c4);
    free_config(c5);
}

TEST(static_directory)
{
    struct tg_config *c = new_config("tg:");
    c->tenants.directory = TG_TENANTS_STATIC;
    struct tg_config_tenant ts[1] = {{.id = "acme", .servers = srv_a, .nservers = 2}};
    c->tenants.tenants = ts;
    c->tenants.ntenants = 1;
    char err[128];
    CHECK_EQ_INT(tg_tenant_index_build(c, err, sizeof(err)), 0);
    struct tg_tenant_dir *d = tg_tenant_dir_new(loop, &c->tenants);
    CHECK(d != NULL && d->link == NULL);
    struct tg_tenant *t = NULL;
    bool waited;
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t, &waited), TG_TENANT_FOUND);
    CHECK_EQ_INT(look(d, &c->tenants, "nobody", &t, &waited), TG_TENANT_NOT_FOUND);
    CHECK(!waited);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "x.example.com", &t, &waited), TG_TENANT_NOT_FOUND);
    tg_tenant_dir_free(d);
    free_config(c);
}

TEST(while_connecting)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    cmd("HSET tg:early servers 127.0.0.1:8001");
    struct tg_tenant_dir *d = tg_tenant_dir_new(loop, &c->tenants);
    /* The link is not up yet: the look-up waits for it. */
    CHECK(tg_redis_cluster_state(d->link) == TG_REDIS_CONNECTING);
    struct tg_tenant *t = NULL;
    bool waited;
    CHECK_EQ_INT(look(d, &c->tenants, "early", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited);
    tg_tenant_release(t);
    tg_tenant_dir_free(d);

    /* Nothing listening: answered UNAVAILABLE once the attempt fails. */
    struct tg_config *c2 = new_config("tg:");
    static char dead[64];
    snprintf(dead, sizeof(dead), "127.0.0.1:%d", h_free_port());
    c2->tenants.redis.address = dead;
    d = tg_tenant_dir_new(loop, &c2->tenants);
    CHECK_EQ_INT(look(d, &c2->tenants, "early", &t, &waited), TG_TENANT_UNAVAILABLE);
    CHECK(waited);
    CHECK_EQ_INT(look(d, &c2->tenants, "early", &t, &waited), TG_TENANT_UNAVAILABLE);
    CHECK(!waited); /* known down: at once */
    tg_tenant_dir_free(d);
    free_config(c);
    free_config(c2);
}

TEST(free_with_pending)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    cmd("HSET tg:acme servers 127.0.0.1:8001");
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    struct got g[3];
    memset(g, 0, sizeof(g));
    struct tg_tenant *t = NULL;
    struct tg_tenant_wait *w = NULL;
    CHECK_EQ_INT(tg_tenant_lookup(d, &c->tenants, "acme", 4, &t, got_cb, &g[0], &w), -1);
    CHECK_EQ_INT(
        tg_tenant_lookup_domain(d, &c->tenants, "x.example.com", 13, &t, got_cb, &g[1], &w), -1);
    tg_tenant_dir_free(d);
    CHECK_EQ_INT(g[0].calls, 1);
    CHECK_EQ_INT(g[0].status, TG_TENANT_UNAVAILABLE);
    CHECK_EQ_INT(g[1].calls, 1);
    CHECK_EQ_INT(g[1].status, TG_TENANT_UNAVAILABLE);
    h_run_for(loop, 0.05);

    /* Freed from inside a callback, with other waiters behind it. */
    d = ready_dir(&c->tenants);
    memset(g, 0, sizeof(g));
    g[0].free_dir = d;
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(tg_tenant_lookup(d, &c->tenants, "acme", 4, &t, got_cb, &g[i], &w), -1);
    CHECK(h_run_until(loop, got_done, &g[2], 5));
    CHECK_EQ_INT(g[0].status, TG_TENANT_FOUND);
    CHECK_EQ_INT(g[1].status, TG_TENANT_UNAVAILABLE);
    CHECK_EQ_INT(g[2].status, TG_TENANT_UNAVAILABLE);
    CHECK(g[0].t != NULL && g[0].t->refs == 1); /* the cache is gone */
    tg_tenant_release(g[0].t);
    h_run_for(loop, 0.05);
    free_config(c);
}

TEST(slow_redis)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    c->tenants.cache_ttl_ms = 100;
    c->tenants.redis.timeout_ms = 200;
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:acme servers 127.0.0.1:8001");
    struct tg_tenant *t = NULL;
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t, NULL), TG_TENANT_FOUND);
    struct tg_tenant *held = t;
    h_run_for(loop, 0.15);
    /* Redis stalls for 1 s, five times the 200 ms timeout, so both
     * look-ups below time out even on a loaded machine. */
    redisAppendCommand(sc, "DEBUG SLEEP 1");
    int done = 0;
    while (!done)
        redisBufferWrite(sc, &done);
    usleep(20000);
    bool waited;
    struct tg_tenant_stats st0, st;
    tg_tenant_dir_stats(d, &st0);
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited && t == held);
    tg_tenant_release(t);
    CHECK_EQ_INT(look(d, &c->tenants, "unknown", &t, &waited), TG_TENANT_UNAVAILABLE);
    tg_tenant_dir_stats(d, &st);
    CHECK_EQ_INT(st.stale_served - st0.stale_served, 1);
    CHECK(st.redis_errors - st0.redis_errors >= 2);
    redisReply *r = NULL;
    redisGetReply(sc, (void **)&r);
    if (r != NULL)
        freeReplyObject(r);
    tg_tenant_release(held);
    tg_tenant_dir_free(d);
    free_config(c);
}

static bool link_down(void *arg)
{
    struct tg_tenant_dir *d = arg;
    return tg_redis_cluster_state(d->link) != TG_REDIS_UP && !tg_redis_sub_subscribed(d->sub);
}

TEST(redis_stopped_then_restarted)
{
    flushall();
    struct tg_config *c = new_config("tg:");
    c->tenants.cache_ttl_ms = 150;
    c->tenants.stale_ttl_ms = 60000;
    struct tg_tenant_dir *d = ready_dir(&c->tenants);
    cmd("HSET tg:acme servers 127.0.0.1:8001");
    cmd("SET tg:host:shop.example.com acme");
    struct tg_tenant *t = NULL;
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "shop.example.com", &t, NULL), TG_TENANT_FOUND);
    tg_tenant_release(t);

    redisFree(sc);
    sc = NULL;
    h_redis_stop(&srv);
    CHECK(h_run_until(loop, link_down, d, 5));
    h_run_for(loop, 0.2); /* the entries expire */
    bool waited;
    struct tg_tenant_stats st0, st;
    tg_tenant_dir_stats(d, &st0);
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t, &waited), TG_TENANT_FOUND);
    CHECK(t != NULL && port_of(&t->upstream.servers[0]) == 8001);
    tg_tenant_release(t);
    CHECK_EQ_INT(look_any(d, &c->tenants, true, "shop.example.com", &t, &waited), TG_TENANT_FOUND);
    tg_tenant_release(t);
    CHECK_EQ_INT(look(d, &c->tenants, "nobody", &t, &waited), TG_TENANT_UNAVAILABLE);
    CHECK(!waited);
    tg_tenant_dir_stats(d, &st);
    CHECK(st.stale_served - st0.stale_served >= 2);

    /* Back (empty: no persistence). The subscription comes back by
     * itself, and everything cached is due for a refetch. */
    h_redis_start(&srv);
    sc = h_client(&srv);
    c->tenants.cache_ttl_ms = 10000;
    tg_tenant_dir_configure(d, &c->tenants);
    CHECK(h_run_until(loop, dir_ready, d, 10));
    cmd("HSET tg:acme servers 127.0.0.1:8002");
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited && t != NULL && port_of(&t->upstream.servers[0]) == 8002);
    tg_tenant_release(t);
    /* Invalidation works on the new connection. */
    cmd("HSET tg:acme servers 127.0.0.1:8003");
    uint64_t inv = (tg_tenant_dir_stats(d, &st), st.invalidations);
    cmd("PUBLISH tg:changed acme");
    CHECK(invalidations_reach(d, inv + 1));
    CHECK_EQ_INT(look(d, &c->tenants, "acme", &t, &waited), TG_TENANT_FOUND);
    CHECK(waited && t != NULL && port_of(&t->upstream.servers[0]) == 8003);
    tg_tenant_release(t);
    struct tg_redis_sub_stats ss;
    tg_redis_sub_stats(d->sub, &ss);
    CHECK(ss.subscribes >= 2 && ss.losses >= 1);
    tg_tenant_dir_free(d);
    free_config(c);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (getenv("TG_TEST_VERBOSE") == NULL)
        tg_log_set_level(TG_LOG_ERROR + 1);
    link_tuning.backoff_min_ms = 20;
    link_tuning.backoff_max_ms = 200;
    link_tuning.connect_timeout_ms = 300;
    sub_tuning.backoff_min_ms = 20;
    sub_tuning.backoff_max_ms = 200;
    sub_tuning.connect_timeout_ms = 300;
    loop = ev_loop_new(EVFLAG_AUTO);
    set_servers();

    RUN(index_basics);
    RUN(index_errors);
    RUN(index_100k);

    h_redis_start(&srv);
    sc = h_client(&srv);
    RUN(found_and_cached);
    RUN(suspended);
    RUN(missing_negative_cache);
    RUN(publish_invalidates);
    RUN(invalidated_while_in_flight);
    RUN(coalescing);
    RUN(static_wins);
    RUN(domains);
    RUN(cancel);
    RUN(malformed);
    RUN(eviction);
    RUN(memory_per_entry);
    RUN(snapshots_and_reconfigure);
    RUN(static_directory);
    RUN(while_connecting);
    RUN(free_with_pending);
    RUN(slow_redis);
    RUN(redis_stopped_then_restarted);
    RUN(named_servers);

    if (sc != NULL)
        redisFree(sc);
    h_redis_stop(&srv);
    ev_loop_destroy(loop);
    return TEST_SUMMARY();
}
