/* Unit tests for the rate-limit key encoder in src/limiter.c: escaping,
 * hashing of long values and keys, the fallback namespace, body values
 * trimmed and folded, and the admin API's normalisation agreeing with what
 * enforcement builds.
 *
 * Regression (issue 16): parts were joined with an unescaped '|' and the
 * fallback was "~" plus the address, so a JSON identity "~1.2.3.4" charged
 * client 1.2.3.4's bucket and "a|b" in one part equalled two parts. */
#include <stdbool.h>

#include "arena.h"

/* Key allocations that fail on demand (see key_alloc). */
static bool key_allocs_fail;
static void *test_key_alloc(struct tg_arena *a, size_t n)
{
    return key_allocs_fail ? NULL : tg_arena_alloc(a, n);
}
#define key_alloc test_key_alloc

#include "../../src/limiter.c"

#include "config_build.h"
#include "metrics.h"
#include "ratelimit_store.h"
#include "test.h"

/* Encodes one value as a head part does; returns a static string. */
static const char *enc(const char *s)
{
    static char buf[MAX_KEY + 1];
    struct keybuf k = {buf, 0, MAX_KEY, false};
    kb_value(&k, s, strlen(s));
    buf[k.n] = '\0';
    return buf;
}

static const char *enc_body(const char *s)
{
    static char buf[MAX_KEY + 1];
    char v[MAX_BODY_VALUE];
    size_t n = strlen(s);
    memcpy(v, s, n);
    struct keybuf k = {buf, 0, MAX_KEY, false};
    kb_body_value(&k, v, n);
    buf[k.n] = '\0';
    return buf;
}

TEST(escapes_separators_and_markers)
{
    CHECK_EQ_STR(enc("alice@example.com"), "alice@example.com");
    CHECK_EQ_STR(enc("a|b"), "a%7Cb");
    CHECK_EQ_STR(enc("~1.2.3.4"), "%7E1.2.3.4");
    CHECK_EQ_STR(enc("#abc"), "%23abc");
    CHECK_EQ_STR(enc("50%"), "50%25");
    CHECK_EQ_STR(enc("a b\tc\n"), "a%20b%09c%0A");
    CHECK_EQ_STR(enc("\x7f"), "%7F");
    /* UTF-8 stays as it is: it cannot pose as anything. */
    CHECK_EQ_STR(enc("j\xc3\xb6rg"), "j\xc3\xb6rg");
    CHECK_EQ_STR(enc(""), "");
}

TEST(no_value_collides_with_a_fallback_or_a_hash)
{
    /* Every escaped value starts with something other than '~' or '#':
     * the fallback and hash namespaces are out of reach. */
    static const char *const values[] = {"~", "~1.2.3.4", "#", "#0123", "%7E", "|", "||"};
    for (size_t i = 0; i < TG_ARRAY_LEN(values); i++) {
        const char *e = enc(values[i]);
        CHECK(e[0] != '~' && e[0] != '#');
        CHECK(strchr(e, '|') == NULL);
    }
    /* "%7E" itself encodes differently from "~". */
    char a[64];
    snprintf(a, sizeof(a), "%s", enc("%7E"));
    CHECK(strcmp(a, enc("~")) != 0);
}

TEST(long_values_are_hashed_not_cut)
{
    char a[300], b[300];
    memset(a, 'x', sizeof(a) - 1);
    a[sizeof(a) - 1] = '\0';
    memcpy(b, a, sizeof(b));
    b[sizeof(b) - 2] = 'y'; /* differs only at the very end */
    char ea[64], eb[64];
    snprintf(ea, sizeof(ea), "%s", enc(a));
    snprintf(eb, sizeof(eb), "%s", enc(b));
    CHECK_EQ_INT(strlen(ea), 33);
    CHECK_EQ_INT(ea[0], '#');
    CHECK(strcmp(ea, eb) != 0);
    /* The limit is on the escaped length: 43 bytes that each need escaping
     * (129 escaped) are hashed, 42 (126) are not. */
    char sp[64];
    memset(sp, ' ', 43);
    sp[43] = '\0';
    CHECK_EQ_INT(enc(sp)[0], '#');
    sp[42] = '\0';
    CHECK_EQ_INT(strlen(enc(sp)), 126);
}

TEST(whole_keys_beyond_the_store_limit_are_hashed)
{
    char buf[MAX_KEY];
    struct keybuf k = {buf, 0, sizeof(buf), false};
    for (int i = 0; i < 8; i++) {
        if (i > 0)
            kb_put(&k, "|", 1);
        kb_value(&k, "0123456789012345678901234567890123456789012345678901234567890123", 64);
    }
    CHECK(k.n > MAX_STORED);
    size_t n = finish_key(buf, &k);
    CHECK_EQ_INT(n, 33);
    CHECK_EQ_INT(buf[0], '#');
    /* A short key is kept as it is. */
    struct keybuf s = {buf, 0, sizeof(buf), false};
    kb_put(&s, "203.0.113.7", 11);
    CHECK_EQ_INT(finish_key(buf, &s), 11);
}

TEST(body_values_are_trimmed_and_folded)
{
    CHECK_EQ_STR(enc_body("Victim@Example.COM"), "victim@example.com");
    CHECK_EQ_STR(enc_body("  victim@example.com\t\r\n"), "victim@example.com");
    /* Non-ASCII is not folded (SQLite's NOCASE folds ASCII only). */
    CHECK_EQ_STR(enc_body("\xc3\x96ZIL"), "\xc3\x96zil");
    /* Inner white space is kept, escaped. */
    CHECK_EQ_STR(enc_body("a b"), "a%20b");
    CHECK_EQ_STR(enc_body("~1.2.3.4"), "%7E1.2.3.4");
}

/* A config with a few policies, for the admin key checks. */
static struct tg_config *load(const char *yaml)
{
    char err[4096];
    struct tg_config *c = tg_config_load_buffer("t.yaml", yaml, strlen(yaml), err, sizeof(err));
    if (c == NULL)
        fprintf(stderr, "%s", err);
    return c;
}

static const struct tg_config_policy *policy(const struct tg_config *c, const char *name)
{
    for (size_t i = 0; i < c->rate_limit.npolicies; i++)
        if (strcmp(c->rate_limit.policies[i].name, name) == 0)
            return &c->rate_limit.policies[i];
    return NULL;
}

static const char *admin(const struct tg_config *c, const char *pol, const char *text)
{
    static char out[TG_RATELIMIT_LOCAL_KEY_MAX + 1];
    const char *why = NULL;
    size_t n = tg_limiter_admin_key(c, policy(c, pol), text, strlen(text), out,
                                    TG_RATELIMIT_LOCAL_KEY_MAX, &why);
    if (n == 0)
        return why != NULL ? why : "(no reason)";
    out[n] = '\0';
    return out;
}

TEST(admin_keys_match_enforcement)
{
    struct tg_config *c = load("listen: [{address: 127.0.0.1:18080}]\n"
                               "admin: {listen: off}\n"
                               "rate_limit:\n"
                               "  policies:\n"
                               "    ip: {rate: 1/s, key: [ip]}\n"
                               "    acct: {rate: 1/s, key: [body:identity], count: failures}\n"
                               "    both: {rate: 1/s, key: [ip, header:X-Key]}\n"
                               "upstreams: {app: {servers: [127.0.0.1:1]}}\n"
                               "sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]\n");
    CHECK(c != NULL);
    if (c == NULL)
        return;
    /* Addresses in canonical form, IPv6 grouped by /64. */
    CHECK_EQ_STR(admin(c, "ip", "203.0.113.7"), "203.0.113.7");
    CHECK_EQ_STR(admin(c, "ip", "2001:DB8::1:2:3:4"), "2001:db8::");
    CHECK_EQ_STR(admin(c, "ip", "::ffff:192.0.2.1"), "192.0.2.1");
    CHECK_EQ_STR(admin(c, "ip", "not-an-ip"), "an ip part must be an address");
    /* Body values as enforcement folds them: Carol@Example.com unlocks
     * the bucket carol@example.com. */
    CHECK_EQ_STR(admin(c, "acct", "Carol@Example.com"), "carol@example.com");
    CHECK_EQ_STR(admin(c, "acct", " carol@example.com "), "carol@example.com");
    CHECK_EQ_STR(admin(c, "acct", "a+b@example.com"), "a+b@example.com");
    /* The fallback namespace, reachable on purpose. */
    CHECK_EQ_STR(admin(c, "acct", "~10.0.0.1"), "~10.0.0.1");
    /* Several parts joined with '|'; the last takes the rest. */
    CHECK_EQ_STR(admin(c, "both", "10.0.0.1|k|1"), "10.0.0.1|k%7C1");
    CHECK(strstr(admin(c, "both", "10.0.0.1"), "several parts") != NULL);
    tg_config_unref(c);
}

/* ---- decisions through the store interface, with fake stores ---------------- */

/* A store that answers later (as Redis does): takes are queued, the test
 * answers them. Keeps a bucket per key in a tiny table so answers are real
 * GCRA decisions on a clock the test sets. */
struct fake_store {
    int64_t tat[16];
    char key[16][64];
    int nkeys;
    bool fail;    /* take: fault at once */
    int fail_key; /* answer: this key of the call (index + 1) could not be
                     decided (a Redis Cluster node down); 0: none */
    int pending;  /* calls waiting for an answer */
    tg_ratelimit_store_done done;
    void *arg;
    struct tg_ratelimit_key keys[8];
    size_t n;
    bool peek;
    int refunds;
    int64_t now;
};

static int64_t *fake_tat(struct fake_store *f, const struct tg_ratelimit_key *k)
{
    for (int i = 0; i < f->nkeys; i++)
        if (strlen(f->key[i]) == k->store_keylen &&
            memcmp(f->key[i], k->store_key, k->store_keylen) == 0)
            return &f->tat[i];
    snprintf(f->key[f->nkeys], sizeof(f->key[0]), "%.*s", (int)k->store_keylen, k->store_key);
    f->tat[f->nkeys] = 0;
    return &f->tat[f->nkeys++];
}

static enum tg_ratelimit_take fake_take(void *impl, struct tg_ratelimit_key *keys, size_t n,
                                        bool peek, int64_t now, bool *allowed,
                                        tg_ratelimit_store_done done, void *arg, void **pending)
{
    (void)now, (void)allowed;
    struct fake_store *f = impl;
    if (f->fail)
        return TG_RATELIMIT_FAULT;
    f->pending++;
    f->done = done;
    f->arg = arg;
    memcpy(f->keys, keys, n * sizeof(*keys));
    f->n = n;
    f->peek = peek;
    *pending = f;
    return TG_RATELIMIT_PENDING;
}

/* Answers the queued call: all or nothing, on the fake's clock. */
static void fake_answer(struct fake_store *f)
{
    struct tg_ratelimit_result res[8];
    int64_t before[8];
    bool all = true;
    f->now = tg_limiter_now_ns(); /* the clock refunds use */
    for (size_t i = 0; i < f->n; i++) {
        int64_t *t = fake_tat(f, &f->keys[i]);
        before[i] = *t;
        if ((int)i + 1 == f->fail_key) {
            res[i] = (struct tg_ratelimit_result){.store_failed = true};
            continue;
        }
        all &= tg_ratelimit_gcra(t, f->now, &f->keys[i].params, f->keys[i].cost, &res[i]);
    }
    if (!all || f->peek)
        for (size_t i = 0; i < f->n; i++)
            *fake_tat(f, &f->keys[i]) = before[i];
    f->pending--;
    f->done(f->arg, 0, all, res, f->n);
}

static void fake_cancel(void *impl, void *pending)
{
    (void)pending;
    ((struct fake_store *)impl)->pending--;
}

static void fake_refund(void *impl, struct tg_ratelimit_key *keys, size_t n, int64_t now)
{
    struct fake_store *f = impl;
    for (size_t i = 0; i < n; i++)
        tg_ratelimit_gcra_refund(fake_tat(f, &keys[i]), now, &keys[i].params, keys[i].cost);
    f->refunds++;
}

static enum tg_ratelimit_take fake_reset(void *impl, const struct tg_ratelimit_key *key, bool *had,
                                         tg_ratelimit_store_done done, void *arg)
{
    (void)impl, (void)key, (void)had, (void)done, (void)arg;
    return TG_RATELIMIT_FAULT;
}

static const struct tg_ratelimit_store_ops fake_ops = {
    "fake", false, fake_take, fake_cancel, fake_refund, fake_reset,
};

static int done_calls;
static void on_done(void *arg)
{
    (void)arg;
    done_calls++;
}

struct harness {
    struct tg_config *cfg;
    struct tg_ratelimit_local *table;
    struct fake_store fake;
    struct tg_limiter_env env;
    struct tg_metrics_shard *metrics;
    struct tg_arena arena;
    struct tg_limiter_state lim;
    struct tg_addr client;
};

static bool harness_init(struct harness *h, const char *policies, const char *route_limits)
{
    char yaml[4096], err[4096];
    snprintf(yaml, sizeof(yaml),
             "listen: [127.0.0.1:18080]\nadmin: {listen: off}\n"
             "rate_limit:\n  redis: {address: 127.0.0.1:1, on_error: local}\n  policies:\n%s"
             "upstreams: {app: {servers: [127.0.0.1:1]}}\n"
             "sites: [{hosts: [a.test], routes: [{path: /, upstream: app, rate_limit: %s}]}]\n",
             policies, route_limits);
    memset(h, 0, sizeof(*h));
    h->cfg = tg_config_load_buffer("t.yaml", yaml, strlen(yaml), err, sizeof(err));
    if (h->cfg == NULL) {
        fprintf(stderr, "%s", err);
        return false;
    }
    h->table = tg_ratelimit_local_new(1024, 1);
    h->metrics = tg_metrics_shard_new();
    tg_ratelimit_store_local(&h->env.stores[TG_RL_STORE_LOCAL], h->table);
    h->env.stores[TG_RL_STORE_REDIS] = (struct tg_ratelimit_store){&fake_ops, &h->fake};
    tg_ratelimit_store_share(&h->env.share, h->table);
    h->env.metrics = h->metrics;
    tg_arena_init(&h->arena, 2048);
    tg_addr_parse("203.0.113.7", 11, &h->client);
    return true;
}

static void harness_free(struct harness *h)
{
    tg_arena_reset(&h->arena);
    tg_metrics_shard_free(h->metrics);
    tg_ratelimit_local_free(h->table);
    tg_config_unref(h->cfg);
}

/* Prepares and decides one request; answers pending calls when asked. */
static int decide(struct harness *h, const char *body)
{
    const struct tg_config_site *site = &h->cfg->sites[0];
    struct tg_http_header hdr[1] = {{TG_STR("Content-Type"), TG_STR("application/json")}};
    struct tg_http_headers hv = {hdr, 1, 1};
    struct tg_limiter_input in = {.cfg = h->cfg,
                                  .site = site,
                                  .route = &site->routes[0],
                                  .client = &h->client,
                                  .headers = &hv,
                                  .arena = &h->arena};
    CHECK(tg_limiter_prepare(&h->lim, &in, &h->env) == 0);
    if (h->lim.needs_body)
        tg_limiter_take_body(&h->lim, body, strlen(body), true);
    return tg_limiter_decide(&h->lim, on_done, NULL);
}

/* A body key that cannot be stored (memory ran out) refuses the request
 * with 503; it used to be counted under an empty key, one bucket shared
 * by every account. */
TEST(a_body_key_without_memory_refuses)
{
    struct harness h;
    if (!harness_init(&h, "    a: {rate: 1/h, burst: 2, store: local, key: [body:identity]}\n",
                      "a"))
        return;
    const struct tg_config_site *site = &h.cfg->sites[0];
    struct tg_http_header hdr[1] = {{TG_STR("Content-Type"), TG_STR("application/json")}};
    struct tg_http_headers hv = {hdr, 1, 1};
    struct tg_limiter_input in = {.cfg = h.cfg,
                                  .site = site,
                                  .route = &site->routes[0],
                                  .client = &h.client,
                                  .headers = &hv,
                                  .arena = &h.arena};
    CHECK(tg_limiter_prepare(&h.lim, &in, &h.env) == 0);
    CHECK(h.lim.needs_body);
    key_allocs_fail = true;
    const char *body = "{\"identity\":\"alice@example.com\"}";
    tg_limiter_take_body(&h.lim, body, strlen(body), true);
    key_allocs_fail = false;
    CHECK_EQ_INT(h.lim.refuse_status, 503);
    CHECK_EQ_INT(h.metrics->ratelimit_unkeyed, 1);
    harness_free(&h);
}

TEST(all_local_takes_at_once)
{
    struct harness h;
    if (!harness_init(&h, "    a: {rate: 1/h, burst: 2, store: local}\n", "a"))
        return;
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(decide(&h, ""), 0);
        CHECK(!h.lim.limited);
    }
    CHECK_EQ_INT(decide(&h, ""), 0);
    CHECK(h.lim.limited);
    CHECK_EQ_STR(h.lim.outcome, "limited");
    harness_free(&h);
}

/* A store that answers later is asked only when the ones that answer at
 * once allow; their spend waits for its answer; a refusal there gives back
 * what the other store spent. */
TEST(stores_that_answer_later)
{
    struct harness h;
    if (!harness_init(&h,
                      "    loc: {rate: 1/h, burst: 1, store: local}\n"
                      "    far: {rate: 1/h, burst: 5, store: redis}\n",
                      "[loc, far]"))
        return;
    done_calls = 0;
    CHECK_EQ_INT(decide(&h, ""), 1); /* waits for "far" */
    CHECK_EQ_INT(h.fake.pending, 1);
    fake_answer(&h.fake);
    CHECK_EQ_INT(done_calls, 1);
    CHECK(!h.lim.limited);
    /* "loc" is spent now: the next request is refused there, and "far" is
     * never asked. */
    CHECK_EQ_INT(decide(&h, ""), 0);
    CHECK(h.lim.limited);
    CHECK_EQ_INT(h.fake.pending, 0);
    harness_free(&h);
}

/* Regression (issue 16): a failure budget is reserved before forwarding,
 * so 3 guesses at once against a budget of 2 let only 2 through, in a store
 * that answers later as in one that answers at once. */
TEST(failure_reservations_in_a_far_store)
{
    struct harness h;
    if (!harness_init(&h,
                      "    acct: {rate: 1/h, burst: 2, key: [body:identity], count: failures, "
                      "store: redis}\n",
                      "acct"))
        return;
    struct tg_limiter_state lims[3];
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(decide(&h, "{\"identity\":\"Victim@Example.com\"}"), 1);
        fake_answer(&h.fake);
        lims[i] = h.lim;
    }
    CHECK(!lims[0].limited && !lims[1].limited && lims[2].limited);
    /* A success gives its token back; a failure keeps it. */
    h.lim = lims[0];
    h.lim.forwarded = true;
    tg_limiter_after_response(&h.lim, 200);
    CHECK_EQ_INT(h.fake.refunds, 1);
    h.lim = lims[1];
    h.lim.forwarded = true;
    tg_limiter_after_response(&h.lim, 400);
    CHECK_EQ_INT(h.fake.refunds, 1);
    CHECK_EQ_INT(decide(&h, "{\"identity\":\"victim@example.com\"}"), 1);
    fake_answer(&h.fake);
    CHECK(!h.lim.limited); /* the refunded token */
    /* Never sent: given back at the end. */
    tg_limiter_end(&h.lim);
    CHECK_EQ_INT(h.fake.refunds, 2);
    harness_free(&h);
}

/* A store that cannot answer: on_error local decides on this gateway's
 * share, in the local table. */
TEST(a_failed_store_falls_back_to_the_share)
{
    struct harness h;
    if (!harness_init(&h, "    far: {rate: 1/h, burst: 2, store: redis}\n", "far"))
        return;
    h.fake.fail = true;
    CHECK_EQ_INT(decide(&h, ""), 0);
    CHECK(!h.lim.limited && h.lim.store_fallback);
    CHECK_EQ_INT(decide(&h, ""), 0);
    CHECK_EQ_INT(decide(&h, ""), 0);
    CHECK(h.lim.limited); /* 2 in the share (one gateway) */
    CHECK_EQ_INT(h.env.fallbacks, 3);
    harness_free(&h);
}

/* Issue 22: a Redis Cluster decides some keys of a request and cannot
 * reach the node of another. The decided ones stand; on_error (local)
 * decides the other alone, and when it refuses, what the decided ones
 * spent is given back. */
TEST(a_partial_answer_falls_back_for_the_failed_keys_only)
{
    struct harness h;
    if (!harness_init(&h,
                      "    u: {rate: 1/h, burst: 5, store: redis}\n"
                      "    t: {rate: 1/h, burst: 2, store: redis}\n",
                      "[u, t]"))
        return;
    h.fake.fail_key = 2; /* t's node is down */
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(decide(&h, ""), 1);
        fake_answer(&h.fake);
        CHECK(h.lim.store_fallback);
        CHECK_EQ_INT(h.lim.limited, i == 2); /* t's share: 2 */
        CHECK_EQ_STR(h.lim.outcome, i == 2 ? "limited" : "allowed");
    }
    CHECK_EQ_INT(h.env.fallbacks, 3);
    CHECK_EQ_INT(h.fake.refunds, 1); /* the third one's spend on u */
    /* u was decided by the store all along: 2 spent, 3 left. */
    h.fake.fail_key = 0;
    CHECK_EQ_INT(decide(&h, ""), 1);
    fake_answer(&h.fake);
    CHECK(!h.lim.limited && !h.lim.store_fallback);
    CHECK_EQ_INT(h.lim.items[0].key.result.remaining, 2);
    harness_free(&h);
}

/* A decided key that refuses settles it: the failed one's on_error is not
 * asked (it could not change the answer), and the answer is a 429, not
 * the 503 on_error: deny would give. */
TEST(a_partial_refusal_needs_no_fallback)
{
    struct harness h;
    if (!harness_init(&h,
                      "    u: {rate: 1/h, burst: 1, store: redis}\n"
                      "    t: {rate: 1/h, burst: 5, store: redis}\n",
                      "[u, t]"))
        return;
    h.fake.fail_key = 2;
    CHECK_EQ_INT(decide(&h, ""), 1);
    fake_answer(&h.fake);
    CHECK(!h.lim.limited);
    CHECK_EQ_INT(h.env.fallbacks, 1);
    CHECK_EQ_INT(decide(&h, ""), 1);
    fake_answer(&h.fake);
    CHECK(h.lim.limited && !h.lim.store_error);
    CHECK_EQ_STR(h.lim.outcome, "limited");
    CHECK_EQ_INT(h.env.fallbacks, 1);
    harness_free(&h);
}

int main(void)
{
    RUN(escapes_separators_and_markers);
    RUN(no_value_collides_with_a_fallback_or_a_hash);
    RUN(long_values_are_hashed_not_cut);
    RUN(whole_keys_beyond_the_store_limit_are_hashed);
    RUN(body_values_are_trimmed_and_folded);
    RUN(admin_keys_match_enforcement);
    RUN(a_body_key_without_memory_refuses);
    RUN(all_local_takes_at_once);
    RUN(stores_that_answer_later);
    RUN(failure_reservations_in_a_far_store);
    RUN(a_failed_store_falls_back_to_the_share);
    RUN(a_partial_answer_falls_back_for_the_failed_keys_only);
    RUN(a_partial_refusal_needs_no_fallback);
    return TEST_SUMMARY();
}
