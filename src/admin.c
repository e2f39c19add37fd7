/* Admin endpoints. Everything here answers from state the gateway already
 * keeps; nothing on the request path waits for it. */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "access.h"
#include "acme.h"
#include "cache.h"
#include "codec.h"
#include "config.h"
#include "context.h"
#include "dashboard.h"
#include "http.h"
#include "limiter.h"
#include "metrics.h"
#include "scrape.h"
#include "request.h"
#include "ratelimit.h"
#include "ratelimit_redis.h"
#include "redis.h"
#include "str.h"
#include "redis_cluster.h"
#include "tenant.h"
#include "version.h"

#define JSON_TYPE "application/json"
#define TEXT_TYPE "text/plain; charset=utf-8"
#define BEARER "Bearer "
#define BEARER_LEN (sizeof(BEARER) - 1)
#define RATELIMIT_PREFIX "/ratelimit/"
#define RATELIMIT_PREFIX_LEN (sizeof(RATELIMIT_PREFIX) - 1)
#define CACHE_PREFIX "/cache/"
#define CACHE_PREFIX_LEN (sizeof(CACHE_PREFIX) - 1)
#define KEY_QUERY "?key="
#define KEY_QUERY_LEN (sizeof(KEY_QUERY) - 1)
/* Bytes of a key shown back in a report; the buffer has room for its NUL. */
#define KEY_SHOWN_MAX 512
/* Of a store key's bytes, those left for the policy name before the key. */
#define POLICY_ROOM 80

static void respond_text(struct tg_request *req, int status, const char *body)
{
    tg_request_respond(req, status, TEXT_TYPE, body, strlen(body), false);
}

/* Constant-time check of "Authorization: Bearer <token>". */
static bool authorized(const struct tg_request *req, const char *token)
{
    if (token == NULL)
        return true;
    const struct tg_http_headers *h = &req->headers;
    size_t tn = strlen(token);
    for (size_t i = 0; i < h->n; i++) {
        if (!tg_http_name_eq(h->v[i].name, "authorization"))
            continue;
        struct tg_str v = h->v[i].value;
        if (v.n != BEARER_LEN + tn || strncasecmp(v.p, BEARER, BEARER_LEN) != 0)
            return false;
        return CRYPTO_memcmp(v.p + BEARER_LEN, token, tn) == 0;
    }
    return false;
}

static void handle_metrics(struct tg_request *req)
{
    char *body;
    size_t len;
    if (tg_scrape_render(req->ctx->rt, &body, &len) < 0) {
        respond_text(req, 503, "503 Service Unavailable: out of memory\n");
        return;
    }
    tg_request_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", body, len, false);
    free(body);
}

/* ---- /status ------------------------------------------------------------- */

static const char *redis_state_name(enum tg_redis_state s)
{
    switch (s) {
    case TG_REDIS_UP:
        return "up";
    case TG_REDIS_CONNECTING:
        return "connecting";
    case TG_REDIS_CIRCUIT_OPEN:
        return "circuit_open";
    default:
        return "down";
    }
}

/* A Redis Cluster's nodes as this worker sees them: each primary (and
 * seed) with its link's state and the slots the map gives it. */
static void cluster_json(struct tg_strbuf *b, const struct tg_ratelimit_redis *rl)
{
    const struct tg_redis_cluster *cl = rl != NULL ? tg_ratelimit_redis_cluster(rl) : NULL;
    if (cl == NULL || !tg_redis_cluster_enabled(cl))
        return;
    struct tg_redis_cluster_node nodes[64];
    size_t n = tg_redis_cluster_nodes(cl, nodes, TG_ARRAY_LEN(nodes));
    struct tg_ratelimit_redis_stats st;
    tg_ratelimit_redis_stats(rl, &st);
    tg_strbuf_printf(b,
                     ",\"cluster\":{\"redirects\":{\"moved\":%llu,\"ask\":%llu},"
                     "\"map_refreshes\":%llu,\"nodes\":[",
                     (unsigned long long)st.moved, (unsigned long long)st.asked,
                     (unsigned long long)st.refreshes);
    for (size_t i = 0; i < n && i < TG_ARRAY_LEN(nodes); i++) {
        tg_strbuf_printf(b, "%s{\"address\":", i ? "," : "");
        tg_strbuf_json(b, nodes[i].address);
        tg_strbuf_printf(b, ",\"state\":\"%s\",\"slots\":%u}", redis_state_name(nodes[i].state),
                         nodes[i].slots);
    }
    tg_strbuf_printf(b, "]%s}", n > TG_ARRAY_LEN(nodes) ? ",\"truncated\":true" : "");
}

/* A Sentinel link's primary as `,"primary":"ip:port"` (null while none is
 * known); nothing for a link to a fixed address. */
static void primary_json(struct tg_strbuf *b, const struct tg_redis *link)
{
    if (link == NULL || !tg_redis_uses_sentinels(link))
        return;
    const char *p = tg_redis_server(link);
    tg_strbuf_printf(b, ",\"primary\":");
    if (*p == '\0')
        tg_strbuf_printf(b, "null");
    else
        tg_strbuf_json(b, p);
}

static void handle_status(struct tg_request *req)
{
    struct tg_context *w = req->ctx;
    struct tg_runtime *rt = w->rt;
    const struct tg_config *cfg = req->wcfg->config;
    struct tg_strbuf b = {0};
    char loaded[32];
    struct tm tm;
    gmtime_r(&cfg->loaded_at, &tm);
    strftime(loaded, sizeof(loaded), "%Y-%m-%dT%H:%M:%SZ", &tm);
    tg_strbuf_printf(&b, "{\"version\":\"%s\",\"config\":", TG_VERSION);
    tg_strbuf_json(&b, rt->config_path);
    tg_strbuf_printf(&b,
                     ",\"config_loaded_at\":\"%s\",\"workers\":%u,\"connections\":%lu,"
                     "\"draining\":%s,\"upstreams\":",
                     loaded, rt->nworkers, (unsigned long)atomic_load(&rt->nconns),
                     atomic_load(&rt->draining) ? "true" : "false");
    tg_dashboard_upstreams_json(&b, w, cfg);
    tg_strbuf_printf(&b, ",\"redis\":{\"state\":\"%s\",\"gateways\":%u",
                     w->rl_redis != NULL ? redis_state_name(tg_ratelimit_redis_state(w->rl_redis))
                                         : "unused",
                     tg_ratelimit_redis_gateways());
    primary_json(&b, w->rl_redis != NULL ? tg_ratelimit_redis_link(w->rl_redis) : NULL);
    cluster_json(&b, w->rl_redis);
    const struct tg_redis *tl = w->tenants != NULL ? tg_tenant_dir_link(w->tenants) : NULL;
    if (tl != NULL) {
        tg_strbuf_printf(&b, "},\"tenants_redis\":{\"state\":\"%s\"",
                         redis_state_name(tg_redis_state(tl)));
        primary_json(&b, tl);
    }
    tg_strbuf_printf(&b, "}");
    size_t cached = 0;
    for (unsigned i = 0; i < rt->nworkers; i++) {
        if (rt->workers[i]->tenants == NULL)
            continue;
        struct tg_tenant_stats ts;
        tg_tenant_dir_stats(rt->workers[i]->tenants, &ts);
        cached += ts.cached;
    }
    tg_strbuf_printf(&b, ",\"tenant_cache_size\":%zu,\"certificates\":", cached);
    tg_dashboard_certificates_json(&b, cfg->certstore, time(NULL));
    tg_strbuf_printf(&b, ",\"acme\":");
    tg_acme_status_json(&b);
    tg_strbuf_printf(&b, ",\"note\":\"upstream health is as seen by the worker that "
                         "answered\"}\n");
    if (b.oom) {
        tg_strbuf_free(&b);
        respond_text(req, 503, "503 Service Unavailable: out of memory\n");
        return;
    }
    tg_request_respond(req, 200, JSON_TYPE, b.p, b.n, false);
    tg_strbuf_free(&b);
}

/* ---- /ratelimit/POLICY/KEY ------------------------------------------------ */

static void key_report(struct tg_request *req, const struct tg_config_policy *p, const char *key,
                       size_t keylen, const struct tg_ratelimit_result *r, const char *store)
{
    struct tg_strbuf b = {0};
    tg_strbuf_printf(&b, "{\"policy\":");
    tg_strbuf_json(&b, p->name);
    char k[KEY_SHOWN_MAX + 8];
    snprintf(k, sizeof(k), "%.*s", (int)(keylen < KEY_SHOWN_MAX ? keylen : KEY_SHOWN_MAX), key);
    tg_strbuf_printf(&b, ",\"key\":");
    tg_strbuf_json(&b, k);
    /* The hash the access log prints for this key (ratelimit_keys). */
    char sk[TG_RATELIMIT_LOCAL_KEY_MAX];
    size_t skl = tg_limiter_store_key(p->name, key, keylen, sk, sizeof(sk));
    /* A peek with cost 0 shows the bucket as it is; a key whose bucket is
     * full holds no state (never seen, or refilled and forgotten). */
    bool empty = r->reset_ns <= 0;
    /* Until the next token: the debt beyond burst - 1 tokens. */
    double retry = 0;
    if (r->remaining < 1) {
        int64_t keep = (p->params.burst - 1) * p->params.interval_ns;
        retry = (double)(r->reset_ns - keep) / 1e9;
        if (retry < 0)
            retry = 0;
    }
    tg_strbuf_printf(&b,
                     ",\"log_key\":\"%016llx\",\"store\":\"%s\",\"state\":\"%s\",\"limit\":%lld,"
                     "\"window_seconds\":%lld,\"burst\":%lld,\"remaining\":%lld,\"limited\":%s,"
                     "\"retry_after_seconds\":%.3f,\"reset_seconds\":%.3f}\n",
                     (unsigned long long)tg_limiter_key_hash(sk, skl), store,
                     empty ? "none" : "held", (long long)p->count, (long long)p->period_s,
                     (long long)p->params.burst, (long long)r->remaining,
                     r->remaining < 1 ? "true" : "false", retry,
                     (double)(r->reset_ns > 0 ? r->reset_ns : 0) / 1e9);
    if (b.oom) {
        tg_strbuf_free(&b);
        respond_text(req, 503, "503 Service Unavailable: out of memory\n");
        return;
    }
    tg_request_respond(req, 200, JSON_TYPE, b.p, b.n, false);
    tg_strbuf_free(&b);
}

/* A store that answers later (Redis): the request's arena holds the
 * context, and the request is held (referenced) until the answer comes, so
 * a client that leaves meanwhile costs nothing but the reply. */
struct admin_call {
    struct tg_request *req;
    const struct tg_config_policy *policy;
    const char *key;
    size_t keylen;
    const char *store;
    bool reset;
};

static void on_store_answer(void *arg, int status, bool allowed,
                            const struct tg_ratelimit_result *results, size_t n)
{
    (void)allowed;
    struct admin_call *a = arg;
    struct tg_request *req = a->req;
    if (tg_request_over(req)) {
        tg_request_unref(req);
        return;
    }
    if (status < 0) {
        respond_text(req, 503, "503 Service Unavailable: the rate-limit store did not answer\n");
    } else if (a->reset) {
        respond_text(req, 200, "reset\n");
    } else if (n == 1) {
        key_report(req, a->policy, a->key, a->keylen, &results[0], a->store);
    } else {
        respond_text(req, 502, "502 Bad Gateway: unexpected answer from the store\n");
    }
    tg_request_unref(req);
}

static void handle_ratelimit(struct tg_request *req, const char *rest, size_t n)
{
    const struct tg_config *cfg = req->wcfg->config;
    struct tg_context *w = req->ctx;
    bool del = req->method_id == TG_HTTP_DELETE;
    if (req->method_id != TG_HTTP_GET && !del) {
        respond_text(req, 405, "405 Method Not Allowed: GET or DELETE\n");
        return;
    }
    /* rest = POLICY[/KEY][?key=KEY] */
    const char *q = memchr(rest, '?', n);
    size_t pathlen = q ? (size_t)(q - rest) : n;
    const char *slash = memchr(rest, '/', pathlen);
    size_t pn = slash ? (size_t)(slash - rest) : pathlen;
    const struct tg_config_policy *p = NULL;
    for (size_t i = 0; i < cfg->rate_limit.npolicies; i++)
        if (strlen(cfg->rate_limit.policies[i].name) == pn &&
            memcmp(cfg->rate_limit.policies[i].name, rest, pn) == 0)
            p = &cfg->rate_limit.policies[i];
    if (p == NULL) {
        respond_text(req, 404, "404 Not Found: no such policy\n");
        return;
    }
    char *raw = tg_arena_alloc(&req->arena, n + 1);
    size_t rawlen = 0;
    if (raw == NULL) {
        respond_text(req, 503, "503 Service Unavailable\n");
        return;
    }
    if (slash != NULL) {
        rawlen = pathlen - pn - 1;
        memcpy(raw, slash + 1, rawlen);
        rawlen = tg_percent_decode(raw, rawlen, false);
    } else if (q != NULL && n - (size_t)(q - rest) > KEY_QUERY_LEN &&
               strncmp(q, KEY_QUERY, KEY_QUERY_LEN) == 0) {
        rawlen = n - (size_t)(q - rest) - KEY_QUERY_LEN;
        memcpy(raw, q + KEY_QUERY_LEN, rawlen);
        rawlen = tg_percent_decode(raw, rawlen, true);
    }
    if (rawlen == 0) {
        respond_text(req, 400,
                     "400 Bad Request: /ratelimit/POLICY/KEY or "
                     "/ratelimit/POLICY?key=KEY\n");
        return;
    }
    /* The key as enforcement builds it: canonical addresses, body values
     * trimmed and case-folded, escaped, long ones hashed. */
    char *key = tg_arena_alloc(&req->arena, TG_RATELIMIT_LOCAL_KEY_MAX);
    const char *why = "invalid key";
    size_t keylen = key != NULL
                        ? tg_limiter_admin_key(cfg, p, raw, rawlen, key,
                                               TG_RATELIMIT_LOCAL_KEY_MAX - POLICY_ROOM, &why)
                        : 0;
    if (keylen == 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "400 Bad Request: %s\n", why);
        respond_text(req, 400, msg);
        return;
    }
    char *sk = tg_arena_alloc(&req->arena, TG_RATELIMIT_LOCAL_KEY_MAX);
    size_t skl =
        sk != NULL ? tg_limiter_store_key(p->name, key, keylen, sk, TG_RATELIMIT_LOCAL_KEY_MAX) : 0;
    struct admin_call *a = tg_arena_alloc(&req->arena, sizeof(*a));
    if (skl == 0 || a == NULL) {
        respond_text(req, 400, "400 Bad Request: key too long\n");
        return;
    }
    /* The policy's store, whichever it is: a peek (cost 0) shows the bucket
     * as it is; a reset forgets the key. */
    struct tg_ratelimit_store *st = &w->limiter.stores[p->store];
    struct tg_ratelimit_key k = {.policy = p->name,
                                 .key = key,
                                 .keylen = keylen,
                                 .store_key = sk,
                                 .store_keylen = skl,
                                 .params = p->params,
                                 .cost = 0,
                                 .cls = (uint16_t)p->index};
    *a = (struct admin_call){req, p, key, keylen, st->ops->name, del};
    bool had = false, allowed = false;
    void *pending = NULL;
    enum tg_ratelimit_take r = del ? st->ops->reset(st->impl, &k, &had, on_store_answer, a)
                                   : st->ops->take(st->impl, &k, 1, true, tg_limiter_now_ns(),
                                                   &allowed, on_store_answer, a, &pending);
    if (r == TG_RATELIMIT_FAULT) {
        respond_text(req, 503, "503 Service Unavailable: the rate-limit store is unavailable\n");
    } else if (r == TG_RATELIMIT_PENDING) {
        tg_request_ref(req);
    } else if (del) {
        respond_text(req, 200, had ? "reset\n" : "reset (the key held no state)\n");
    } else {
        key_report(req, p, key, keylen, &k.result, st->ops->name);
    }
}

/* DELETE /cache/KEY: KEY is what the response cache keys on, "host/path"
 * or "host/path?query" (the host without a port when the client sent
 * none). Every worker drops its entries under it (all Vary variants)
 * before its next look-up; the answer does not wait for them. */
static void handle_cache_purge(struct tg_request *req, const char *key, size_t n)
{
    if (req->method_id != TG_HTTP_DELETE) {
        respond_text(req, 405, "405 Method Not Allowed: DELETE /cache/HOST/PATH[?QUERY]\n");
        return;
    }
    struct tg_cache_purges *p = req->ctx->rt != NULL ? req->ctx->rt->cache_purges : NULL;
    /* The key as the cache makes it: the host folded to lower case. */
    char *k = tg_arena_alloc(&req->arena, n + 1);
    const char *slash = memchr(key, '/', n);
    size_t kn = k != NULL && slash != NULL ? tg_cache_key(k, n + 1, key, (size_t)(slash - key),
                                                          slash, n - (size_t)(slash - key))
                                           : 0;
    if (kn == 0 || slash == key) {
        respond_text(req, 400, "400 Bad Request: DELETE /cache/HOST/PATH[?QUERY]\n");
        return;
    }
    if (p == NULL || tg_cache_purges_post(p, k, kn) < 0) {
        respond_text(req, 503, "503 Service Unavailable: the purge could not be recorded\n");
        return;
    }
    respond_text(req, 200, "purged\n");
}

/* ---- the dashboard ---------------------------------------------------------- */

/* A browser cannot send a bearer token by itself: with admin.token set,
 * the page asks for it once and posts it in the Authorization header to
 * /dashboard/session (never in a URL, which would reach the access log and
 * the history), which answers with this cookie: HttpOnly (no script reads
 * it), SameSite=Strict (no other site's page sends it). Its value is
 * HMAC-SHA256(admin.token, SESSION_LABEL), not the token: it opens only
 * the dashboard's read-only GETs, and a new token ends every session. */
#define SESSION_COOKIE "tollgate_dashboard"
#define SESSION_LABEL "tollgate dashboard session v1"
#define SESSION_HEX (2 * SHA256_DIGEST_LENGTH)

static void session_value(const char *token, char out[SESSION_HEX + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (HMAC(EVP_sha256(), token, (int)strlen(token), (const unsigned char *)SESSION_LABEL,
             sizeof(SESSION_LABEL) - 1, md, &n) == NULL ||
        n != SHA256_DIGEST_LENGTH) {
        out[0] = '\0'; /* matches no cookie: only the header opens */
        return;
    }
    out[tg_hex_encode(out, md, n, false)] = '\0';
}

/* Whether a Cookie header carries the session cookie for `token`. */
static bool session_cookie_ok(const struct tg_request *req, const char *token)
{
    char want[SESSION_HEX + 1];
    session_value(token, want);
    if (want[0] == '\0')
        return false;
    const size_t nn = sizeof(SESSION_COOKIE) - 1;
    const struct tg_http_headers *h = &req->headers;
    for (size_t i = 0; i < h->n; i++) {
        if (!tg_http_name_eq(h->v[i].name, "cookie"))
            continue;
        /* name=value pairs separated by "; " (RFC 6265 5.4). */
        const char *p = h->v[i].value.p, *end = p + h->v[i].value.n;
        while (p < end) {
            const char *semi = memchr(p, ';', (size_t)(end - p));
            const char *stop = semi != NULL ? semi : end;
            while (p < stop && *p == ' ')
                p++;
            if ((size_t)(stop - p) == nn + 1 + SESSION_HEX && memcmp(p, SESSION_COOKIE, nn) == 0 &&
                p[nn] == '=' && CRYPTO_memcmp(p + nn + 1, want, SESSION_HEX) == 0)
                return true;
            if (semi == NULL)
                break;
            p = semi + 1;
        }
    }
    return false;
}

/* The page (its own policy: dashboard.h), with `status` 200, or 401 when
 * the client has neither token nor session: the same page then asks for
 * the token, and holds no data (that comes from /dashboard.json). */
static void handle_dashboard_page(struct tg_request *req, int status)
{
    const char *policy = tg_dashboard_csp();
    if (policy == NULL) {
        respond_text(req, 500, "500 Internal Server Error: the dashboard page is incomplete\n");
        return;
    }
    struct tg_http_header f[] = {
        {TG_STR("Content-Type"), TG_STR("text/html; charset=utf-8")},
        {TG_STR("Content-Security-Policy"), tg_str_make(policy, strlen(policy))},
        {TG_STR("Cache-Control"), TG_STR("no-store")},
        {TG_STR("Referrer-Policy"), TG_STR("no-referrer")},
    };
    struct tg_http_headers own = {f, TG_ARRAY_LEN(f), TG_ARRAY_LEN(f)};
    tg_request_respond_fields(req, status, &own, (const char *)tg_dashboard_page,
                              tg_dashboard_page_len, false);
}

static void handle_dashboard_json(struct tg_request *req)
{
    struct tg_strbuf b = {0};
    tg_dashboard_json(&b, req->ctx, req->wcfg->config);
    if (b.oom) {
        tg_strbuf_free(&b);
        respond_text(req, 503, "503 Service Unavailable: out of memory\n");
        return;
    }
    struct tg_http_header f[] = {
        {TG_STR("Content-Type"), TG_STR(JSON_TYPE)},
        {TG_STR("Cache-Control"), TG_STR("no-store")},
    };
    struct tg_http_headers own = {f, TG_ARRAY_LEN(f), TG_ARRAY_LEN(f)};
    tg_request_respond_fields(req, 200, &own, b.p, b.n, false);
    tg_strbuf_free(&b);
}

/* POST /dashboard/session, with the bearer token: the session cookie. */
static void handle_dashboard_session(struct tg_request *req)
{
    const char *token = req->wcfg->config->admin_token;
    if (req->method_id != TG_HTTP_POST) {
        respond_text(req, 405, "405 Method Not Allowed: POST\n");
        return;
    }
    if (token == NULL) {
        respond_text(req, 404,
                     "404 Not Found: admin.token is not set, the dashboard needs no "
                     "session\n");
        return;
    }
    char value[SESSION_HEX + 1];
    session_value(token, value);
    char *cookie = tg_arena_alloc(&req->arena, 128);
    if (cookie == NULL || value[0] == '\0') {
        respond_text(req, 503, "503 Service Unavailable\n");
        return;
    }
    int n =
        snprintf(cookie, 128, "%s=%s; Path=/; HttpOnly; SameSite=Strict", SESSION_COOKIE, value);
    struct tg_http_header f[] = {
        {TG_STR("Content-Type"), TG_STR(TEXT_TYPE)},
        {TG_STR("Set-Cookie"), tg_str_make(cookie, (size_t)n)},
        {TG_STR("Cache-Control"), TG_STR("no-store")},
    };
    struct tg_http_headers own = {f, TG_ARRAY_LEN(f), TG_ARRAY_LEN(f)};
    tg_request_respond_fields(req, 200, &own, "session\n", 8, false);
}

void tg_admin_handle(struct tg_request *req)
{
    const struct tg_config *cfg = req->wcfg->config;
    /* admin.allow/deny first: a denied address learns nothing, not even
     * that a token is asked for. The client as identify found it (the
     * peer, or behind trusted_proxies the forwarded address). */
    if (cfg->admin_access != NULL &&
        !tg_access_check(cfg->admin_access, &req->client, NULL, 0, NULL)) {
        respond_text(req, 403, "403 Forbidden\n");
        return;
    }
    const char *path = req->path;
    size_t n = strlen(path);
    const char *q = strchr(path, '?');
    size_t pn = q ? (size_t)(q - path) : n;
    bool get = req->method_id == TG_HTTP_GET || req->method_id == TG_HTTP_HEAD;
#define IS(p) (pn == sizeof(p) - 1 && memcmp(path, p, pn) == 0)
    bool page = get && (IS("/") || IS("/dashboard"));
    bool dashboard = page || (get && IS("/dashboard.json"));
    /* The session cookie opens the dashboard's reads, nothing else. */
    if (!authorized(req, cfg->admin_token) &&
        !(dashboard && session_cookie_ok(req, cfg->admin_token))) {
        req->extra_headers = "WWW-Authenticate: Bearer\r\n";
        if (page)
            handle_dashboard_page(req, 401);
        else
            respond_text(req, 401, "401 Unauthorized\n");
        return;
    }
    if (page) {
        handle_dashboard_page(req, 200);
        return;
    }
    if (dashboard) {
        handle_dashboard_json(req);
        return;
    }
    if (IS("/dashboard/session")) {
        handle_dashboard_session(req);
        return;
    }
    if (IS("/cache") ||
        (pn >= CACHE_PREFIX_LEN && memcmp(path, CACHE_PREFIX, CACHE_PREFIX_LEN) == 0)) {
        size_t skip = pn >= CACHE_PREFIX_LEN ? CACHE_PREFIX_LEN : pn;
        handle_cache_purge(req, path + skip, n - skip);
        return;
    }
    if (IS("/ratelimit") ||
        (pn > RATELIMIT_PREFIX_LEN && memcmp(path, RATELIMIT_PREFIX, RATELIMIT_PREFIX_LEN) == 0)) {
        if (pn <= RATELIMIT_PREFIX_LEN) {
            respond_text(req, 400, "400 Bad Request: /ratelimit/POLICY/KEY\n");
            return;
        }
        handle_ratelimit(req, path + RATELIMIT_PREFIX_LEN, n - RATELIMIT_PREFIX_LEN);
        return;
    }
    if (!get) {
        respond_text(req, 405, "405 Method Not Allowed\n");
        return;
    }
    if (IS("/healthz")) {
        respond_text(req, 200, "ok\n");
    } else if (IS("/readyz")) {
        bool draining = atomic_load(&req->ctx->rt->draining) || req->ctx->draining;
        respond_text(req, draining ? 503 : 200, draining ? "draining\n" : "ready\n");
    } else if (IS("/metrics")) {
        handle_metrics(req);
    } else if (IS("/status")) {
        handle_status(req);
    } else {
        respond_text(req, 404,
                     "404 Not Found: /dashboard /dashboard.json /metrics /healthz /readyz "
                     "/status /ratelimit/POLICY/KEY /cache/HOST/PATH\n");
    }
#undef IS
}
