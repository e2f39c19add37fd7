/* The response cache's store: keys, the Cache-Control rules, Vary,
 * LRU eviction by bytes, reference counts across eviction and purge,
 * coalescing waiters, the shared purge log. */
#include "../../src/cache.c"

#include <stdlib.h>

#include "test.h"

static struct tg_cache_stats stats;

/* Fields from "Name: value" strings (views into the literals). */
static struct tg_http_headers fields(struct tg_http_header *v, size_t cap, const char **lines)
{
    struct tg_http_headers h = {v, 0, cap};
    for (; *lines != NULL && h.n < cap; lines++) {
        const char *colon = strchr(*lines, ':');
        v[h.n].name = tg_str_make(*lines, (size_t)(colon - *lines));
        const char *val = colon + 1;
        while (*val == ' ')
            val++;
        v[h.n].value = tg_str_make(val, strlen(val));
        h.n++;
    }
    return h;
}

#define FIELDS(name, ...)                         \
    struct tg_http_header name##_v[16];           \
    const char *name##_l[] = {__VA_ARGS__, NULL}; \
    struct tg_http_headers name = fields(name##_v, 16, name##_l)

static struct tg_http_headers none = {NULL, 0, 0};

static struct tg_cache_verdict judge(int status, const struct tg_http_headers *h, double ttl)
{
    struct tg_cache_verdict v;
    tg_cache_judge(status, h, ttl, &v);
    return v;
}

TEST(keys)
{
    char k[64];
    size_t n = tg_cache_key(k, sizeof(k), "Example.COM.", 12, "/a/b?x=1", 8);
    CHECK_EQ_MEM(k, n, "example.com/a/b?x=1");
    CHECK_EQ_INT(tg_cache_key(k, 8, "example.com", 11, "/", 1), 0);
}

TEST(rules)
{
    FIELDS(plain, "Content-Type: image/png");
    struct tg_cache_verdict v = judge(200, &plain, 60);
    CHECK(v.storable);
    CHECK(v.lifetime == 60);
    CHECK(!judge(200, &plain, 0).storable);  /* no ttl, no max-age: not kept */
    CHECK(!judge(404, &plain, 60).storable); /* route ttl is for 200/203 only */
    CHECK(!judge(500, &plain, 60).storable);

    FIELDS(maxage, "Cache-Control: public, max-age=10");
    v = judge(200, &maxage, 60);
    CHECK(v.storable && v.lifetime == 10); /* the backend's wins over the route's */
    CHECK(judge(404, &maxage, 60).storable);
    FIELDS(smax, "Cache-Control: max-age=10", "cache-control: S-MAXAGE=\"30\"");
    v = judge(200, &smax, 60);
    CHECK(v.storable && v.lifetime == 30);
    FIELDS(zero, "Cache-Control: max-age=0");
    CHECK(!judge(200, &zero, 60).storable);
    FIELDS(bad, "Cache-Control: max-age=ten");
    CHECK(!judge(200, &bad, 60).storable);
    FIELDS(aged, "Cache-Control: max-age=10", "Age: 4");
    v = judge(200, &aged, 60);
    CHECK(v.storable && v.lifetime == 10 && v.age == 4);
    FIELDS(old, "Cache-Control: max-age=10", "Age: 10");
    CHECK(!judge(200, &old, 60).storable);

    FIELDS(priv, "Cache-Control: max-age=60, private");
    CHECK_EQ_STR(judge(200, &priv, 60).why, "private");
    FIELDS(privf, "Cache-Control: private=\"x-user\"");
    CHECK(!judge(200, &privf, 60).storable);
    FIELDS(nostore, "Cache-Control: no-store");
    CHECK_EQ_STR(judge(200, &nostore, 60).why, "no-store");
    FIELDS(nocache, "Cache-Control: no-cache");
    CHECK(!judge(200, &nocache, 60).storable);
    FIELDS(cookie, "Set-Cookie: a=b");
    CHECK_EQ_STR(judge(200, &cookie, 60).why, "Set-Cookie");
    FIELDS(star, "Vary: Accept-Encoding, *");
    CHECK(!judge(200, &star, 60).storable);
    /* A quoted comma is not a separator. */
    FIELDS(quoted, "Cache-Control: foo=\"a,no-store\", max-age=5");
    CHECK(judge(200, &quoted, 60).storable);
}

TEST(dates)
{
    int64_t t;
    CHECK(tg_cache_parse_date("Sun, 06 Nov 1994 08:49:37 GMT", 29, &t));
    CHECK_EQ_INT(t, 784111777);
    CHECK(!tg_cache_parse_date("Sun, 06 Nov 1994 08:49:37 UTC", 29, &t));
    CHECK(!tg_cache_parse_date("Sunday, 06-Nov-94 08:49:37 GMT", 30, &t));
    CHECK(!tg_cache_parse_date("Sun, 06 Foo 1994 08:49:37 GMT", 29, &t));
}

/* A complete entry of `body` under `key`. */
static struct tg_cache_entry *store(struct tg_cache *c, const char *key, const char *body,
                                    const struct tg_http_headers *h,
                                    const struct tg_http_headers *req, double now)
{
    struct tg_cache_entry *e = tg_cache_fill_begin(c, key, strlen(key));
    struct tg_cache_verdict v;
    tg_cache_judge(200, h, 60, &v);
    if (!tg_cache_fill_head(e, 200, h, (int64_t)strlen(body), req, &v, now) ||
        !tg_cache_fill_body(e, body, strlen(body))) {
        tg_cache_unref(e);
        return NULL;
    }
    tg_cache_fill_done(e);
    return e;
}

static struct tg_cache_entry *find(struct tg_cache *c, const char *key,
                                   const struct tg_http_headers *req, double now)
{
    bool filling;
    struct tg_cache_entry *e = tg_cache_lookup(c, key, strlen(key), req, now, &filling);
    if (e != NULL && filling) {
        tg_cache_unref(e);
        return NULL;
    }
    return e;
}

TEST(store_and_expire)
{
    memset(&stats, 0, sizeof(stats));
    struct tg_cache *c = tg_cache_new(1 << 20, 1 << 16, &stats, NULL);
    FIELDS(h, "Content-Type: text/plain", "Connection: close, X-Hop", "X-Hop: 1",
           "Content-Length: 5", "Cache-Control: max-age=10", "ETag: \"v1\"");
    tg_cache_unref(store(c, "h/a", "hello", &h, &none, 100));
    struct tg_cache_entry *e = find(c, "h/a", &none, 105);
    CHECK(e != NULL);
    if (e != NULL) {
        CHECK_EQ_MEM(e->body, e->body_len, "hello");
        CHECK_EQ_INT(e->head.n, 3); /* hop-by-hop and framing left out */
        CHECK_EQ_MEM(e->etag.p, e->etag.n, "\"v1\"");
        CHECK(tg_cache_age(e, 105) == 5);
        tg_cache_unref(e);
    }
    CHECK(find(c, "h/b", &none, 105) == NULL);
    CHECK(find(c, "h/a", &none, 110) == NULL); /* expired: dropped */
    CHECK_EQ_INT(tg_cache_count(c), 0);
    CHECK_EQ_INT(stats.entries, 0);
    CHECK_EQ_INT(stats.bytes, 0);
    CHECK_EQ_INT(stats.stores, 1);
    tg_cache_free(c);
}

TEST(vary)
{
    struct tg_cache *c = tg_cache_new(1 << 20, 1 << 16, &stats, NULL);
    FIELDS(h, "Vary: Accept-Encoding, X-Absent");
    FIELDS(gzip, "Accept-Encoding: gzip");
    FIELDS(br, "accept-encoding: br");
    FIELDS(gzip_absent_set, "Accept-Encoding: gzip", "X-Absent: ");
    tg_cache_unref(store(c, "h/v", "gz", &h, &gzip, 0));
    tg_cache_unref(store(c, "h/v", "none", &h, &none, 0));
    struct tg_cache_entry *e = find(c, "h/v", &gzip, 1);
    CHECK(e != NULL && e->body_len == 2);
    tg_cache_unref(e);
    e = find(c, "h/v", &none, 1);
    CHECK(e != NULL && e->body_len == 4);
    tg_cache_unref(e);
    CHECK(find(c, "h/v", &br, 1) == NULL);
    CHECK(find(c, "h/v", &gzip_absent_set, 1) == NULL); /* empty is not absent */
    CHECK_EQ_INT(tg_cache_purge(c, "h/v", 3), 2);       /* every variant */
    CHECK_EQ_INT(tg_cache_count(c), 0);
    tg_cache_free(c);
}

TEST(lru_by_bytes)
{
    memset(&stats, 0, sizeof(stats));
    char body[1000];
    memset(body, 'x', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    /* Room for about four entries of ~1.3 KB. */
    struct tg_cache *c = tg_cache_new(5500, 4096, &stats, NULL);
    char key[16];
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof(key), "h/%d", i);
        tg_cache_unref(store(c, key, body, &none, &none, 0));
    }
    CHECK_EQ_INT(tg_cache_count(c), 4);
    tg_cache_unref(find(c, "h/0", &none, 1)); /* 0 is now the most recent */
    tg_cache_unref(store(c, "h/4", body, &none, &none, 1));
    CHECK(tg_cache_bytes(c) <= 5500);
    CHECK_EQ_INT(stats.evictions, 1);
    struct tg_cache_entry *e0 = find(c, "h/0", &none, 1);
    CHECK(e0 != NULL);
    CHECK(find(c, "h/1", &none, 1) == NULL); /* the least recently used went */
    CHECK_EQ_INT((int64_t)tg_cache_bytes(c), stats.bytes);

    /* Evicted or purged while a reader holds it: the reader's copy stays. */
    tg_cache_purge(c, "h/0", 3);
    CHECK(find(c, "h/0", &none, 1) == NULL);
    CHECK(e0 != NULL && e0->body_len == 999 && e0->body[998] == 'x');
    tg_cache_unref(e0);

    /* Larger than max_entry: not stored, whether announced or streamed. */
    char big[5000];
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK(store(c, "h/big", big, &none, &none, 1) == NULL);
    struct tg_cache_entry *e = tg_cache_fill_begin(c, "h/big", 5);
    struct tg_cache_verdict v;
    tg_cache_judge(200, &none, 60, &v);
    CHECK(tg_cache_fill_head(e, 200, &none, -1, &none, &v, 1));
    CHECK(tg_cache_fill_body(e, big, 3000));
    CHECK(!tg_cache_fill_body(e, big, 3000));
    CHECK(e->state == TG_CACHE_ABANDONED);
    tg_cache_unref(e);
    CHECK(find(c, "h/big", &none, 1) == NULL);
    CHECK_EQ_INT((int64_t)tg_cache_bytes(c), stats.bytes);
    tg_cache_free(c);
    CHECK_EQ_INT(stats.bytes, 0);
    CHECK_EQ_INT(stats.entries, 0);
}

static int woke_ok, woke_fail;

static void on_wake(struct tg_cache_waiter *w, struct tg_cache_entry *e)
{
    (void)w;
    if (e != NULL) {
        woke_ok++;
        tg_cache_unref(e);
    } else {
        woke_fail++;
    }
}

TEST(coalescing)
{
    struct tg_cache *c = tg_cache_new(1 << 20, 1 << 16, &stats, NULL);
    struct tg_cache_entry *filler = tg_cache_fill_begin(c, "h/c", 3);
    struct tg_cache_waiter w[5];
    for (int i = 0; i < 5; i++) {
        bool filling;
        struct tg_cache_entry *e = tg_cache_lookup(c, "h/c", 3, &none, 0, &filling);
        CHECK(e == filler && filling);
        w[i].wake = on_wake;
        CHECK_EQ_INT(tg_cache_wait(e, &w[i], 4), i < 4);
        tg_cache_unref(e);
    }
    tg_cache_unwait(&w[1]); /* gave up */
    struct tg_cache_verdict v;
    tg_cache_judge(200, &none, 60, &v);
    woke_ok = woke_fail = 0;
    CHECK(tg_cache_fill_head(filler, 200, &none, 2, &none, &v, 0));
    CHECK(tg_cache_fill_body(filler, "ok", 2));
    tg_cache_fill_done(filler);
    CHECK_EQ_INT(woke_ok, 3);
    tg_cache_unref(filler);

    /* A cut response: waiters go to the backend themselves. */
    filler = tg_cache_fill_begin(c, "h/d", 3);
    struct tg_cache_waiter w2 = {.wake = on_wake};
    CHECK(tg_cache_wait(filler, &w2, 4));
    CHECK(tg_cache_fill_head(filler, 200, &none, 10, &none, &v, 0));
    CHECK(tg_cache_fill_body(filler, "part", 4));
    tg_cache_fill_done(filler); /* 4 of 10 bytes: abandoned */
    CHECK_EQ_INT(woke_fail, 1);
    CHECK(find(c, "h/d", &none, 0) == NULL);
    tg_cache_unref(filler);

    /* Not storable: the same. */
    filler = tg_cache_fill_begin(c, "h/e", 3);
    CHECK(tg_cache_wait(filler, &w2, 4));
    FIELDS(priv, "Cache-Control: private");
    tg_cache_judge(200, &priv, 60, &v);
    CHECK(!tg_cache_fill_head(filler, 200, &priv, 2, &none, &v, 0));
    CHECK_EQ_INT(woke_fail, 2);
    tg_cache_unref(filler);
    CHECK_EQ_INT(tg_cache_count(c), 1);
    tg_cache_free(c);
}

TEST(purge_log)
{
    static struct tg_cache_purges p;
    CHECK_EQ_INT(tg_cache_purges_init(&p), 0);
    struct tg_cache *c = tg_cache_new(1 << 20, 1 << 16, &stats, &p);
    tg_cache_unref(store(c, "h/a", "a", &none, &none, 0));
    tg_cache_unref(store(c, "h/b", "b", &none, &none, 0));
    CHECK_EQ_INT(tg_cache_purges_post(&p, "h/a", 3), 0);
    CHECK(find(c, "h/a", &none, 0) == NULL);
    struct tg_cache_entry *e = find(c, "h/b", &none, 0);
    CHECK(e != NULL);
    tg_cache_unref(e);
    /* Further behind than the ring holds: everything goes. */
    for (int i = 0; i < TG_CACHE_PURGE_RING + 1; i++)
        tg_cache_purges_post(&p, "h/x", 3);
    CHECK(find(c, "h/b", &none, 0) == NULL);
    CHECK_EQ_INT(tg_cache_count(c), 0);
    tg_cache_free(c);
    tg_cache_purges_fini(&p);
}

int main(void)
{
    RUN(keys);
    RUN(rules);
    RUN(dates);
    RUN(store_and_expire);
    RUN(vary);
    RUN(lru_by_bytes);
    RUN(coalescing);
    RUN(purge_log);
    return TEST_SUMMARY();
}
