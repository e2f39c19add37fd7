/* Request-level rate limiting: keys, combined decisions, headers.
 *
 * A key is the policy's parts joined with '|': "203.0.113.7",
 * "app.test/api/|Bearer abc". A part the request lacks (no such header,
 * query parameter, cookie or JSON field) is replaced by "~" and the client
 * address, so leaving it out never escapes the limit. Values longer than
 * 128 bytes are replaced by a hash so keys stay bounded. */
#include "limiter.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>

#include "config.h"
#include "conn.h"
#include "http1.h"
#include "json.h"
#include "metrics.h"
#include "proxy.h"
#include "ratelimit_redis.h"
#include "tenant.h"
#include "worker.h"

#define MAX_PART 128
#define MAX_KEY 1024

int64_t tg_limiter_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

const struct tg_config_policy_list *tg_limiter_policies(const struct tg_config *cfg,
                                                        const struct tg_config_route *r)
{
    if (r->rate_limit.set)
        return &r->rate_limit;
    if (r->site != NULL && r->site->rate_limit.set)
        return &r->site->rate_limit;
    return &cfg->rate_limit.global;
}

/* ---- key parts -------------------------------------------------------------- */

struct keybuf {
    char *p;
    size_t n, cap;
};

static void kb_put(struct keybuf *k, const char *s, size_t n)
{
    if (k->n + n > k->cap)
        n = k->cap - k->n;
    memcpy(k->p + k->n, s, n);
    k->n += n;
}

/* Appends a part value, hashed when long (SHA-256, first 16 bytes, hex). */
static void kb_value(struct keybuf *k, const char *s, size_t n)
{
    if (n <= MAX_PART) {
        kb_put(k, s, n);
        return;
    }
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(s, n, md, &mdlen, EVP_sha256(), NULL);
    static const char hex[] = "0123456789abcdef";
    char out[34];
    out[0] = '#';
    for (int i = 0; i < 16; i++) {
        out[1 + 2 * i] = hex[md[i] >> 4];
        out[2 + 2 * i] = hex[md[i] & 15];
    }
    kb_put(k, out, 33);
}

static void kb_client(struct keybuf *k, const struct tg_request *req)
{
    struct tg_addr group = req->client;
    unsigned prefix = req->wcfg->config->client.ipv6_prefix;
    if (group.family == 10 /* AF_INET6 */ && prefix < 128)
        tg_addr_mask(&group, prefix);
    char text[TG_ADDR_STRLEN];
    size_t n = tg_addr_format(&group, text, sizeof(text));
    kb_put(k, text, n);
}

static void kb_fallback(struct keybuf *k, const struct tg_request *req)
{
    kb_put(k, "~", 1);
    kb_client(k, req);
}

static bool find_header(const struct tg_http1_request *h, const char *name, size_t n,
                        struct tg_str *out)
{
    for (size_t i = 0; i < h->nheaders; i++) {
        if (h->headers[i].name.n == n && strncasecmp(h->headers[i].name.p, name, n) == 0) {
            *out = h->headers[i].value;
            return true;
        }
    }
    return false;
}

static int hexdigit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Appends the percent-decoded value of query parameter `name`. */
static bool kb_query(struct keybuf *k, struct tg_str q, const char *name, size_t n)
{
    const char *p = q.p, *end = q.p + q.n;
    while (p != NULL && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        const char *kend = eq ? eq : stop;
        if ((size_t)(kend - p) == n && memcmp(p, name, n) == 0) {
            char val[MAX_PART * 2];
            size_t vn = 0;
            for (const char *v = eq ? eq + 1 : stop; v < stop && vn < sizeof(val); v++) {
                if (*v == '%' && stop - v >= 3 && hexdigit(v[1]) >= 0 && hexdigit(v[2]) >= 0) {
                    val[vn++] = (char)(hexdigit(v[1]) * 16 + hexdigit(v[2]));
                    v += 2;
                } else {
                    val[vn++] = *v == '+' ? ' ' : *v;
                }
            }
            kb_value(k, val, vn);
            return true;
        }
        p = amp ? amp + 1 : NULL;
    }
    return false;
}

static bool kb_cookie(struct keybuf *k, const struct tg_http1_request *h, const char *name,
                      size_t n)
{
    for (size_t i = 0; i < h->nheaders; i++) {
        if (!tg_http1_name_eq(h->headers[i].name, "cookie"))
            continue;
        const char *p = h->headers[i].value.p, *end = p + h->headers[i].value.n;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == ';'))
                p++;
            const char *semi = memchr(p, ';', (size_t)(end - p));
            const char *stop = semi ? semi : end;
            const char *eq = memchr(p, '=', (size_t)(stop - p));
            if (eq != NULL && (size_t)(eq - p) == n && memcmp(p, name, n) == 0) {
                const char *v = eq + 1;
                size_t vn = (size_t)(stop - v);
                if (vn >= 2 && v[0] == '"' && v[vn - 1] == '"') {
                    v++;
                    vn -= 2;
                }
                kb_value(k, v, vn);
                return true;
            }
            p = stop;
        }
    }
    return false;
}

/* Appends one part's value to k. json parts read `body` (NULL: not yet
 * known, returns false and appends nothing). */
static bool build_part(struct tg_request *req, const struct tg_config_rl_key_part *part,
                       struct keybuf *k, const char *json_body, size_t json_len, bool have_body)
{
    const struct tg_http1_request *h = &req->head;
    bool pending = false;
    {
        struct tg_str v;
        switch (part->kind) {
        case TG_RL_PART_IP:
            kb_client(k, req);
            break;
        case TG_RL_PART_ROUTE:
            kb_put(k, req->site->hosts[0], strlen(req->site->hosts[0]));
            kb_put(k, req->route->path, req->route->path_len);
            break;
        case TG_RL_PART_SITE:
            kb_put(k, req->site->hosts[0], strlen(req->site->hosts[0]));
            break;
        case TG_RL_PART_TENANT:
            if (req->tenant != NULL)
                kb_value(k, req->tenant, strlen(req->tenant));
            else
                kb_fallback(k, req);
            break;
        case TG_RL_PART_COUNTRY:
            kb_put(k, req->country[0] ? req->country : "XX", 2);
            break;
        case TG_RL_PART_ASN: {
            char asn[16];
            int n = snprintf(asn, sizeof(asn), "AS%u", req->asn);
            kb_put(k, asn, (size_t)n);
            break;
        }
        case TG_RL_PART_HEADER:
            if (find_header(h, part->name, part->name_len, &v) && v.n > 0)
                kb_value(k, v.p, v.n);
            else
                kb_fallback(k, req);
            break;
        case TG_RL_PART_QUERY:
            if (h->query.p == NULL || !kb_query(k, h->query, part->name, part->name_len))
                kb_fallback(k, req);
            break;
        case TG_RL_PART_COOKIE:
            if (!kb_cookie(k, h, part->name, part->name_len))
                kb_fallback(k, req);
            break;
        case TG_RL_PART_JSON: {
            if (!have_body) {
                pending = true;
                break;
            }
            char val[MAX_PART * 4];
            size_t vn;
            if (json_body != NULL &&
                tg_json_find_string(json_body, json_len, part->name, part->name_len, val,
                                    sizeof(val), &vn) && vn > 0) {
                /* Account names are matched without case (emails). */
                for (size_t c = 0; c < vn; c++)
                    val[c] = tg_ascii_lower(val[c]);
                kb_value(k, val, vn);
            } else {
                kb_fallback(k, req);
            }
            break;
        }
        }
    }
    return !pending;
}

uint64_t tg_limiter_hash_part(struct tg_request *req, const struct tg_config_rl_key_part *part)
{
    char buf[MAX_KEY];
    struct keybuf k = {buf, 0, sizeof(buf)};
    build_part(req, part, &k, NULL, 0, false);
    /* 64-bit FNV-1a, then a final mix: spreads short keys (addresses) well. */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < k.n; i++)
        h = (h ^ (unsigned char)buf[i]) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* Keeps the item's key in the request arena, as the local store wants it
 * (tg_limiter_store_key's form), the Redis form pointing into it. */
static int set_key(struct tg_request *req, struct tg_limiter_item *it, const char *key,
                   size_t keylen)
{
    size_t cap = strlen(it->policy->name) + 1 + keylen;
    char *sk = tg_arena_alloc(&req->arena, cap + 1);
    if (sk == NULL) {
        /* Still usable: the policy's one shared bucket. */
        it->store_key = it->policy->name;
        it->store_keylen = strlen(it->policy->name);
        it->key = "";
        it->keylen = 0;
        return -1;
    }
    size_t n = tg_limiter_store_key(it->policy->name, key, keylen, sk, cap);
    sk[n] = '\0';
    it->store_key = sk;
    it->store_keylen = n;
    it->key = sk + (n - keylen);
    it->keylen = keylen;
    return 0;
}

int tg_limiter_prepare(struct tg_request *req)
{
    struct tg_limiter_state *lim = &req->lim;
    const struct tg_config *cfg = req->wcfg->config;
    const struct tg_config_policy_list *list = tg_limiter_policies(cfg, req->route);
    if (list->n == 0)
        return 0; /* the request start zeroed what is read then */
    memset(lim, 0, offsetof(struct tg_limiter_state, items));
    if (cfg->rate_limit.exempt != NULL &&
        tg_cidr_set_lookup(cfg->rate_limit.exempt, &req->client) != 0) {
        lim->outcome = "exempt";
        return 0;
    }
    lim->active = true;
    for (size_t i = 0; i < list->n && lim->n < TG_LIMITER_MAX_POLICIES; i++) {
        struct tg_limiter_item *it = &lim->items[lim->n++];
        const struct tg_config_policy *pol = list->items[i];
        memset(it, 0, sizeof(*it));
        it->policy = pol;
        it->params = pol->params;
        /* A tenant's own quota (from the directory) replaces the policy's
         * rate and burst for policies keyed by tenant. */
        const struct tg_tenant *t = req->tenant_obj;
        for (size_t p = 0; t != NULL && p < pol->nparts; p++) {
            if (pol->parts[p].kind != TG_RL_PART_TENANT)
                continue;
            if (t->rate_interval_ns > 0)
                it->params.interval_ns = t->rate_interval_ns;
            if (t->burst > 0)
                it->params.burst = t->burst;
        }
        char buf[MAX_KEY];
        struct keybuf k = {buf, 0, sizeof(buf)};
        if (pol->needs_body) {
            /* Keep each part apart until the body is here: the head views
             * are gone by then. */
            it->key_pending = true;
            lim->needs_body = true;
            it->parts = tg_arena_calloc(&req->arena, pol->nparts, sizeof(char *));
            it->part_lens = tg_arena_calloc(&req->arena, pol->nparts, sizeof(size_t));
            if (it->parts == NULL || it->part_lens == NULL)
                return -1;
            for (size_t p = 0; p < pol->nparts; p++) {
                k.n = 0;
                if (!build_part(req, &pol->parts[p], &k, NULL, 0, false))
                    continue;
                it->parts[p] = tg_arena_strndup(&req->arena, buf, k.n);
                it->part_lens[p] = k.n;
                if (it->parts[p] == NULL)
                    return -1;
            }
            continue;
        }
        for (size_t p = 0; p < pol->nparts; p++) {
            if (p > 0)
                kb_put(&k, "|", 1);
            build_part(req, &pol->parts[p], &k, NULL, 0, false);
        }
        if (set_key(req, it, buf, k.n) < 0)
            return -1;
    }
    return 0;
}

void tg_limiter_take_body(struct tg_request *req, const char *body, size_t len)
{
    struct tg_limiter_state *lim = &req->lim;
    for (size_t i = 0; i < lim->n; i++) {
        struct tg_limiter_item *it = &lim->items[i];
        if (!it->key_pending)
            continue;
        const struct tg_config_policy *pol = it->policy;
        size_t peek = len < pol->max_peek ? len : pol->max_peek;
        char buf[MAX_KEY];
        struct keybuf k = {buf, 0, sizeof(buf)};
        for (size_t p = 0; p < pol->nparts; p++) {
            if (p > 0)
                kb_put(&k, "|", 1);
            if (it->parts[p] != NULL)
                kb_put(&k, it->parts[p], it->part_lens[p]);
            else
                build_part(req, &pol->parts[p], &k, body, peek, true);
        }
        set_key(req, it, buf, k.n); /* out of memory: a shared bucket */
        it->key_pending = false;
    }
    lim->needs_body = false;
}

/* ---- decisions ---------------------------------------------------------------- */

/* The store key: policy name, a separator that cannot appear in names, the
 * key. */
size_t tg_limiter_store_key(const char *policy, const char *key, size_t keylen, char *out,
                            size_t cap)
{
    size_t nn = strlen(policy);
    if (nn + 1 + keylen > cap)
        return 0;
    memcpy(out, policy, nn);
    out[nn] = '\n';
    memcpy(out + nn + 1, key, keylen);
    return nn + 1 + keylen;
}

static void decide_local(struct tg_ratelimit_local *table, struct tg_limiter_item **items,
                         size_t n, bool peek, int64_t cost, int64_t now)
{
    struct tg_ratelimit_op ops[TG_LIMITER_MAX_POLICIES];
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++)
        ops[i] = (struct tg_ratelimit_op){items[i]->store_key, items[i]->store_keylen,
                                          &items[i]->params, cost, {0}};
    if (peek)
        tg_ratelimit_local_peek(table, ops, n, now);
    else
        tg_ratelimit_local_take(table, ops, n, now);
    for (size_t i = 0; i < n; i++) {
        items[i]->result = ops[i].result;
        items[i]->decided = true;
    }
}

enum { CALL_ENFORCE = 0, CALL_FAILURES, CALL_SHADOW };

static bool is_redis(const struct tg_limiter_item *it)
{
    return it->policy->store == TG_RL_STORE_REDIS;
}

static int call_kind(const struct tg_limiter_item *it)
{
    if (it->policy->count_failures)
        return CALL_FAILURES;
    return it->policy->shadow ? CALL_SHADOW : CALL_ENFORCE;
}

/* Redis is unreachable or failed for these items: rate_limit.redis.on_error
 * decides. `local` falls back to this gateway's share of the budget
 * (rate / N and burst / N for N live gateways), so the fleet as a whole
 * stays near the shared limit. */
static void apply_on_error(struct tg_request *req, struct tg_limiter_item **items, size_t n,
                           bool peek)
{
    struct tg_limiter_state *lim = &req->lim;
    const struct tg_config_rate_limit *rl = &req->wcfg->config->rate_limit;
    if (n == 0)
        return;
    lim->redis_fallback = true;
    req->conn->w->rl_redis_fallbacks++;
    if (rl->on_error == TG_RL_ON_ERROR_DENY) {
        lim->store_error = true;
        return;
    }
    if (rl->on_error == TG_RL_ON_ERROR_ALLOW) {
        for (size_t i = 0; i < n; i++) {
            items[i]->result = (struct tg_ratelimit_result){.allowed = true,
                                                           .remaining = items[i]->params.burst};
            items[i]->decided = false; /* nothing to report */
        }
        return;
    }
    int64_t share = tg_ratelimit_redis_gateways();
    if (share < 1)
        share = 1;
    struct tg_ratelimit_params scaled[TG_LIMITER_MAX_POLICIES];
    struct tg_ratelimit_op ops[TG_LIMITER_MAX_POLICIES];
    for (size_t i = 0; i < n; i++) {
        scaled[i] = items[i]->params;
        scaled[i].interval_ns = scaled[i].interval_ns > INT64_MAX / share
                                    ? INT64_MAX / 2 : scaled[i].interval_ns * share;
        scaled[i].burst = (scaled[i].burst + share - 1) / share;
        ops[i] = (struct tg_ratelimit_op){items[i]->store_key, items[i]->store_keylen,
                                          &scaled[i], 1, {0}};
    }
    struct tg_ratelimit_local *table = req->conn->w->rt->rl_local;
    if (peek)
        tg_ratelimit_local_peek(table, ops, n, tg_limiter_now_ns());
    else
        tg_ratelimit_local_take(table, ops, n, tg_limiter_now_ns());
    for (size_t i = 0; i < n; i++) {
        items[i]->result = ops[i].result;
        items[i]->decided = true;
    }
}

/* Everything is decided: work out the verdict and what the headers say. */
static void finalize(struct tg_request *req)
{
    struct tg_limiter_state *lim = &req->lim;
    bool refused = false;
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        if (!it->decided)
            continue;
        if (!it->result.allowed) {
            if (it->policy->shadow)
                lim->shadow_limited = true;
            else
                refused = true;
        } else if (!it->policy->shadow && it->result.delay_ns > lim->delay_ns) {
            lim->delay_ns = it->result.delay_ns;
        }
    }
    lim->limited = refused;
    if (refused || lim->store_error)
        lim->delay_ns = 0;
    /* Report: when refused, the refusing policy that frees up last; when
     * allowed, the enforced policy with the fewest tokens left. */
    const struct tg_limiter_item *best = NULL;
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        if (it->policy->shadow || !it->decided)
            continue;
        if (refused) {
            if (!it->result.allowed &&
                (best == NULL || it->result.retry_after_ns > best->result.retry_after_ns))
                best = it;
        } else if (best == NULL || it->result.remaining < best->result.remaining) {
            best = it;
        }
    }
    lim->report = best;
    struct tg_metrics_shard *m = req->conn->w->metrics;
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        struct tg_policy_stats *ps = &m->policies[it->policy->metrics_id];
        if (lim->redis_fallback && is_redis(it))
            TG_METRIC_INC(ps->results[TG_RL_ERROR]);
        if (!it->decided)
            continue;
        if (!it->result.allowed)
            TG_METRIC_INC(ps->results[it->policy->shadow ? TG_RL_SHADOW : TG_RL_LIMITED]);
        else if (!refused) {
            TG_METRIC_INC(ps->results[TG_RL_ALLOWED]);
            if (it->result.remaining * 5 < it->params.burst)
                TG_METRIC_INC(ps->results[TG_RL_NEAR_LIMIT]);
        }
    }
    lim->outcome = lim->store_error ? "error"
                   : refused       ? "limited"
                   : lim->shadow_limited ? "shadow" : "allowed";
}

/* Local enforced policies spend only once every store has allowed. */
static void spend_local(struct tg_request *req, bool refused_elsewhere)
{
    struct tg_limiter_state *lim = &req->lim;
    struct tg_ratelimit_local *table = req->conn->w->rt->rl_local;
    struct tg_limiter_item *enforce[TG_LIMITER_MAX_POLICIES], *shadow[TG_LIMITER_MAX_POLICIES];
    size_t ne = 0, ns = 0;
    for (size_t i = 0; i < lim->n; i++) {
        struct tg_limiter_item *it = &lim->items[i];
        if (is_redis(it))
            continue;
        if (call_kind(it) == CALL_ENFORCE)
            enforce[ne++] = it;
        else if (call_kind(it) == CALL_SHADOW)
            shadow[ns++] = it;
    }
    int64_t now = tg_limiter_now_ns();
    decide_local(table, enforce, ne, refused_elsewhere, 1, now);
    decide_local(table, shadow, ns, false, 1, now);
}

static bool any_refused(const struct tg_limiter_state *lim, bool redis_only)
{
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        if (it->decided && !it->result.allowed && !it->policy->shadow &&
            (!redis_only || is_redis(it)))
            return true;
    }
    return false;
}

static void on_redis_reply(void *arg, int status, bool allowed,
                           const struct tg_ratelimit_result *results, size_t n);

/* Sends one kind of Redis-backed policies. Returns false when it could not
 * be sent (on_error has then been applied). */
static void send_redis(struct tg_request *req, int kind)
{
    struct tg_limiter_state *lim = &req->lim;
    struct tg_limiter_call *call = &lim->calls[kind];
    struct tg_limiter_item *items[TG_LIMITER_MAX_POLICIES];
    struct tg_ratelimit_redis_op ops[TG_LIMITER_MAX_POLICIES];
    call->req = req;
    call->kind = (uint8_t)kind;
    call->n = 0;
    for (size_t i = 0; i < lim->n; i++) {
        struct tg_limiter_item *it = &lim->items[i];
        if (!is_redis(it) || call_kind(it) != kind)
            continue;
        ops[call->n] = (struct tg_ratelimit_redis_op){it->policy->name, it->key, it->keylen,
                                                     it->params, 1};
        items[call->n] = it;
        call->idx[call->n++] = (uint8_t)i;
    }
    if (call->n == 0)
        return;
    struct tg_ratelimit_redis *r = req->conn->w->rl_redis;
    call->pending = r != NULL ? tg_ratelimit_redis_take(r, ops, call->n, kind == CALL_FAILURES,
                                                        on_redis_reply, call)
                              : NULL;
    if (call->pending == NULL) {
        apply_on_error(req, items, call->n, kind == CALL_FAILURES);
        return;
    }
    lim->pending++;
}

static void finish(struct tg_request *req)
{
    struct tg_limiter_state *lim = &req->lim;
    spend_local(req, any_refused(lim, false) || lim->store_error);
    finalize(req);
}

static void on_redis_reply(void *arg, int status, bool allowed,
                           const struct tg_ratelimit_result *results, size_t n)
{
    (void)allowed;
    struct tg_limiter_call *call = arg;
    struct tg_request *req = call->req;
    struct tg_limiter_state *lim = &req->lim;
    call->pending = NULL;
    if (status < 0 || n != call->n) {
        struct tg_limiter_item *items[TG_LIMITER_MAX_POLICIES];
        for (size_t i = 0; i < call->n; i++)
            items[i] = &lim->items[call->idx[i]];
        apply_on_error(req, items, call->n, call->kind == CALL_FAILURES);
    } else {
        for (size_t i = 0; i < n; i++) {
            lim->items[call->idx[i]].result = results[i];
            lim->items[call->idx[i]].decided = true;
        }
    }
    if (--lim->pending == 0) {
        finish(req);
        tg_proxy_limiter_done(req);
    }
}

int tg_limiter_decide(struct tg_request *req)
{
    struct tg_limiter_state *lim = &req->lim;
    if (!lim->active)
        return 0;
    struct tg_ratelimit_local *table = req->conn->w->rt->rl_local;
    int64_t now = tg_limiter_now_ns();
    struct tg_limiter_item *enforce[TG_LIMITER_MAX_POLICIES], *failures[TG_LIMITER_MAX_POLICIES];
    size_t ne = 0, nf = 0, nredis = 0;
    for (size_t i = 0; i < lim->n; i++) {
        struct tg_limiter_item *it = &lim->items[i];
        if (is_redis(it)) {
            nredis++;
            continue;
        }
        if (call_kind(it) == CALL_FAILURES)
            failures[nf++] = it;
        else if (call_kind(it) == CALL_ENFORCE)
            enforce[ne++] = it;
    }
    /* Failure-counting policies only ever look. */
    decide_local(table, failures, nf, true, 1, now);
    if (nredis == 0) {
        /* All local: one atomic take decides and spends (a peek if a
         * failure policy already refused), no second pass. */
        bool refused = any_refused(lim, false);
        decide_local(table, enforce, ne, refused, 1, now);
        struct tg_limiter_item *shadow[TG_LIMITER_MAX_POLICIES];
        size_t ns = 0;
        for (size_t i = 0; i < lim->n; i++)
            if (call_kind(&lim->items[i]) == CALL_SHADOW)
                shadow[ns++] = &lim->items[i];
        decide_local(table, shadow, ns, false, 1, now);
        finalize(req);
        return 0;
    }
    /* Look locally first: a request already refused here costs Redis
     * nothing. */
    decide_local(table, enforce, ne, true, 1, now);
    if (any_refused(lim, false)) {
        finish(req);
        return 0;
    }
    /* The kinds go out in the same loop iteration: one pipelined write,
     * one round trip. */
    send_redis(req, CALL_ENFORCE);
    send_redis(req, CALL_FAILURES);
    send_redis(req, CALL_SHADOW);
    if (lim->pending > 0)
        return 1;
    finish(req);
    return 0;
}

void tg_limiter_cancel(struct tg_request *req)
{
    struct tg_limiter_state *lim = &req->lim;
    for (size_t k = 0; k < TG_ARRAY_LEN(lim->calls); k++) {
        if (lim->calls[k].pending != NULL) {
            tg_ratelimit_redis_cancel(lim->calls[k].pending);
            lim->calls[k].pending = NULL;
        }
    }
    lim->pending = 0;
}

static void on_charge_reply(void *arg, int status, bool allowed,
                            const struct tg_ratelimit_result *results, size_t n)
{
    (void)arg, (void)status, (void)allowed, (void)results, (void)n;
}

void tg_limiter_after_response(struct tg_request *req, int status)
{
    struct tg_limiter_state *lim = &req->lim;
    if (!lim->active || lim->limited)
        return;
    struct tg_limiter_item *charge[TG_LIMITER_MAX_POLICIES];
    struct tg_ratelimit_redis_op ops[TG_LIMITER_MAX_POLICIES];
    size_t n = 0, nr = 0;
    for (size_t i = 0; i < lim->n; i++) {
        struct tg_limiter_item *it = &lim->items[i];
        if (!it->policy->count_failures)
            continue;
        for (size_t s = 0; s < it->policy->nfailure_statuses; s++) {
            if (it->policy->failure_statuses[s] != status)
                continue;
            if (is_redis(it))
                ops[nr++] = (struct tg_ratelimit_redis_op){it->policy->name, it->key, it->keylen,
                                                          it->params, 1};
            else
                charge[n++] = it;
        }
    }
    if (n > 0)
        decide_local(req->conn->w->rt->rl_local, charge, n, false, 1, tg_limiter_now_ns());
    /* Redis: nobody waits for this one; a failure only loses one charge. */
    if (nr > 0 && req->conn->w->rl_redis != NULL)
        tg_ratelimit_redis_take(req->conn->w->rl_redis, ops, nr, false, on_charge_reply, NULL);
}

/* ---- headers -------------------------------------------------------------------- */

static int64_t ceil_s(int64_t ns)
{
    if (ns <= 0)
        return 0;
    return (ns + 999999999) / 1000000000;
}

size_t tg_limiter_headers(const struct tg_request *req, char *out, size_t cap)
{
    const struct tg_limiter_state *lim = &req->lim;
    const struct tg_config_rate_limit *rl = &req->wcfg->config->rate_limit;
    const struct tg_limiter_item *it = lim->report;
    if (it == NULL || (!lim->limited && !rl->headers))
        return 0;
    const struct tg_config_policy *p = it->policy;
    int64_t t = lim->limited ? ceil_s(it->result.retry_after_ns) : ceil_s(it->result.reset_ns);
    if (lim->limited && t < 1)
        t = 1;
    int64_t r = lim->limited ? 0 : it->result.remaining;
    int n = 0;
    if (lim->limited)
        n = snprintf(out, cap, "Retry-After: %lld\r\n", (long long)t);
    if (n < 0 || (size_t)n >= cap)
        return 0;
    int m = snprintf(out + n, cap - (size_t)n,
                     "RateLimit-Policy: \"%s\";q=%lld;w=%lld\r\nRateLimit: \"%s\";r=%lld;t=%lld\r\n",
                     p->name, (long long)p->count, (long long)p->period_s, p->name,
                     (long long)r, (long long)t);
    if (m < 0 || (size_t)(n + m) >= cap)
        return 0;
    n += m;
    if (rl->legacy_headers) {
        m = snprintf(out + n, cap - (size_t)n,
                     "X-RateLimit-Limit: %lld\r\nX-RateLimit-Remaining: %lld\r\n"
                     "X-RateLimit-Reset: %lld\r\n",
                     (long long)p->count, (long long)r, (long long)t);
        if (m < 0 || (size_t)(n + m) >= cap)
            return 0;
        n += m;
    }
    return (size_t)n;
}

size_t tg_limiter_body(const struct tg_request *req, char *out, size_t cap)
{
    const struct tg_limiter_item *it = req->lim.report;
    int64_t t = it != NULL ? ceil_s(it->result.retry_after_ns) : 1;
    int n = snprintf(out, cap, "{\"error\":\"too_many_requests\",\"policy\":\"%s\","
                               "\"retry_after\":%lld}\n",
                     it != NULL ? it->policy->name : "", (long long)(t < 1 ? 1 : t));
    return n < 0 ? 0 : ((size_t)n < cap ? (size_t)n : cap - 1);
}
