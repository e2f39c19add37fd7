/* Request-level rate limiting: keys, combined decisions, headers.
 *
 * A key is the policy's parts joined with '|': "203.0.113.7",
 * "app.test/api/|Bearer%20abc". Every value is escaped ('%', '|', '~', '#',
 * space and control bytes become %XX), so no value can pose as a part
 * boundary, as the fallback below or as a hash; a value whose escaped form
 * is longer than 128 bytes is replaced by '#' and a hash, and a whole key
 * longer than MAX_STORED by '#' and a hash of it, so keys stay bounded
 * without two long values ever sharing a bucket by truncation.
 *
 * A head part the request lacks (no such header, query parameter or
 * cookie) is replaced by "~" and the client address, so leaving it out
 * never escapes the limit. A body part (json:, form:, body:) is read as
 * the backend reads it (bodykey.c); when that cannot be done without
 * ambiguity the request is refused with 400 (413 when the body is larger
 * than max_peek) unless the policy opts into the same fallback
 * (body_fallback: ip): re-keying a login to the address silently would turn
 * a per-account limit into a per-address one that a botnet escapes. */
#include "limiter.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>

#include "bodykey.h"
#include "config.h"
#include "conn.h"
#include "http1.h"
#include "metrics.h"
#include "proxy.h"
#include "ratelimit_redis.h"
#include "router.h"
#include "siphash.h"
#include "tenant.h"
#include "worker.h"

#define MAX_PART 128    /* escaped value bytes kept as they are; longer: hashed */
#define MAX_KEY 2048    /* key being built: 8 parts of at most MAX_PART + '|' */
#define MAX_STORED 400  /* longer keys are stored as a hash of themselves */
#define MAX_BODY_VALUE 1024 /* a body value longer than this is refused */

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

/* ---- key encoding ---------------------------------------------------------- */

struct keybuf {
    char *p;
    size_t n, cap;
    bool overflow;
};

static void kb_put(struct keybuf *k, const char *s, size_t n)
{
    if (k->n + n > k->cap) {
        n = k->cap - k->n;
        k->overflow = true;
    }
    memcpy(k->p + k->n, s, n);
    k->n += n;
}

static bool must_escape(unsigned char c)
{
    return c <= 0x20 || c == 0x7f || c == '%' || c == '|' || c == '~' || c == '#';
}

/* '#' and the first 16 bytes of SHA-256 in hex: 33 bytes. */
static void kb_hash(struct keybuf *k, const char *s, size_t n)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(s, n, md, &mdlen, EVP_sha256(), NULL);
    static const char hex[] = "0123456789abcdef";
    char out[33];
    out[0] = '#';
    for (int i = 0; i < 16; i++) {
        out[1 + 2 * i] = hex[md[i] >> 4];
        out[2 + 2 * i] = hex[md[i] & 15];
    }
    kb_put(k, out, sizeof(out));
}

/* Appends a part value, escaped, or hashed when the escaped form is long. */
static void kb_value(struct keybuf *k, const char *s, size_t n)
{
    size_t esc = 0;
    for (size_t i = 0; i < n && esc <= MAX_PART; i++)
        esc += must_escape((unsigned char)s[i]) ? 3 : 1;
    if (esc > MAX_PART) {
        kb_hash(k, s, n);
        return;
    }
    static const char hex[] = "0123456789ABCDEF";
    char out[MAX_PART];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (must_escape(c)) {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    kb_put(k, out, o);
}

static void kb_addr(struct keybuf *k, const struct tg_addr *a, unsigned ipv6_prefix)
{
    struct tg_addr group = *a;
    if (group.family == 10 /* AF_INET6 */ && ipv6_prefix < 128)
        tg_addr_mask(&group, ipv6_prefix);
    char text[TG_ADDR_STRLEN];
    size_t n = tg_addr_format(&group, text, sizeof(text));
    kb_put(k, text, n);
}

static void kb_client(struct keybuf *k, const struct tg_request *req)
{
    kb_addr(k, &req->client, req->wcfg->config->client.ipv6_prefix);
}

/* The client address in the fallback namespace: '~' never starts an
 * escaped value. */
static void kb_fallback(struct keybuf *k, const struct tg_request *req)
{
    kb_put(k, "~", 1);
    kb_client(k, req);
}

/* A body value as keys use it: ASCII white space trimmed, ASCII letters
 * lower-cased (account names are matched without case by PocketBase's
 * NOCASE e-mail index and most backends), then escaped. */
static void kb_body_value(struct keybuf *k, char *v, size_t n)
{
    while (n > 0 && (v[0] == ' ' || v[0] == '\t' || v[0] == '\r' || v[0] == '\n')) {
        v++;
        n--;
    }
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r' ||
                     v[n - 1] == '\n'))
        n--;
    for (size_t i = 0; i < n; i++)
        v[i] = tg_ascii_lower(v[i]);
    kb_value(k, v, n);
}

/* The key as stored: itself, or '#' and its hash when longer than
 * MAX_STORED (the stores bound key lengths). */
static size_t finish_key(char *buf, struct keybuf *k)
{
    if (k->n <= MAX_STORED && !k->overflow)
        return k->n;
    char copy[MAX_KEY];
    memcpy(copy, buf, k->n);
    struct keybuf h = {buf, 0, MAX_KEY, false};
    kb_hash(&h, copy, k->n);
    return h.n;
}

static bool is_body_part(enum tg_rl_part kind)
{
    return kind == TG_RL_PART_JSON || kind == TG_RL_PART_FORM || kind == TG_RL_PART_BODY;
}

/* ---- head parts ---------------------------------------------------------------- */

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
            char val[MAX_PART * 4];
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
        if (!tg_http_name_eq(h->headers[i].name, "cookie"))
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

/* Appends one head part's value to k; sets *fallback when the client
 * address stood in for it. Body parts are not handled here. */
static void build_head_part(struct tg_request *req, const struct tg_config_rl_key_part *part,
                            struct keybuf *k, bool *fallback)
{
    const struct tg_http1_request *h = &req->head;
    struct tg_str v;
    switch (part->kind) {
    case TG_RL_PART_IP:
        kb_client(k, req);
        break;
    case TG_RL_PART_ROUTE: {
        /* The route's pattern as configured, never the path as sent: every
         * spelling of a path that reaches the route shares its bucket. */
        const char *host = req->site->hosts[0];
        kb_value(k, host, strlen(host)); /* no '/' or '=': the pattern's start is clear */
        kb_value(k, req->route->path, req->route->path_len);
        break;
    }
    case TG_RL_PART_SITE:
        kb_value(k, req->site->hosts[0], strlen(req->site->hosts[0]));
        break;
    case TG_RL_PART_TENANT:
        if (req->tenant != NULL) {
            kb_value(k, req->tenant, strlen(req->tenant));
        } else {
            kb_fallback(k, req);
            *fallback = true;
        }
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
        if (find_header(h, part->name, part->name_len, &v) && v.n > 0) {
            kb_value(k, v.p, v.n);
        } else {
            kb_fallback(k, req);
            *fallback = true;
        }
        break;
    case TG_RL_PART_QUERY:
        if (h->query.p == NULL || !kb_query(k, h->query, part->name, part->name_len)) {
            kb_fallback(k, req);
            *fallback = true;
        }
        break;
    case TG_RL_PART_COOKIE:
        if (!kb_cookie(k, h, part->name, part->name_len)) {
            kb_fallback(k, req);
            *fallback = true;
        }
        break;
    case TG_RL_PART_JSON:
    case TG_RL_PART_FORM:
    case TG_RL_PART_BODY:
        break;
    }
}

uint64_t tg_limiter_hash_part(struct tg_request *req, const struct tg_config_rl_key_part *part)
{
    char buf[MAX_KEY];
    struct keybuf k = {buf, 0, sizeof(buf), false};
    bool fallback = false;
    build_head_part(req, part, &k, &fallback);
    /* 64-bit FNV-1a, then a final mix: spreads short keys (addresses) well.
     * Unkeyed on purpose: every gateway must send a client to the same
     * server. */
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
    if (sk == NULL)
        return -1;
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
        struct keybuf k = {buf, 0, sizeof(buf), false};
        if (pol->needs_body) {
            /* Keep each head part apart until the body is here: the head
             * views are gone by then. */
            it->key_pending = true;
            lim->needs_body = true;
            it->parts = tg_arena_calloc(&req->arena, pol->nparts, sizeof(char *));
            it->part_lens = tg_arena_calloc(&req->arena, pol->nparts, sizeof(size_t));
            if (it->parts == NULL || it->part_lens == NULL)
                return -1;
            for (size_t p = 0; p < pol->nparts; p++) {
                if (is_body_part(pol->parts[p].kind))
                    continue;
                k.n = 0;
                build_head_part(req, &pol->parts[p], &k, &it->fallback);
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
            build_head_part(req, &pol->parts[p], &k, &it->fallback);
        }
        if (set_key(req, it, buf, finish_key(buf, &k)) < 0)
            return -1;
    }
    if (lim->needs_body) {
        /* The body is read by its Content-Type: keep the one header (the
         * head views are gone when the body is here). */
        const struct tg_http1_request *h = &req->head;
        for (size_t i = 0; i < h->nheaders; i++) {
            if (!tg_http_name_eq(h->headers[i].name, "content-type"))
                continue;
            if (lim->content_type != NULL) {
                lim->content_type_repeated = true;
                break;
            }
            lim->content_type = tg_arena_strndup(&req->arena, h->headers[i].value.p,
                                                 h->headers[i].value.n);
            lim->content_type_len = h->headers[i].value.n;
            if (lim->content_type == NULL)
                return -1;
        }
    }
    return 0;
}

size_t tg_limiter_peek_wanted(const struct tg_request *req)
{
    size_t want = 0;
    for (size_t i = 0; i < req->lim.n; i++)
        if (req->lim.items[i].key_pending && req->lim.items[i].policy->max_peek > want)
            want = req->lim.items[i].policy->max_peek;
    return want;
}

/* What a body part reads (bodykey's mask). */
static unsigned body_reads(enum tg_rl_part kind)
{
    switch (kind) {
    case TG_RL_PART_JSON:
        return TG_BODYKEY_READ_JSON;
    case TG_RL_PART_FORM:
        return TG_BODYKEY_READ_FORM;
    default:
        return TG_BODYKEY_READ_JSON | TG_BODYKEY_READ_FORM;
    }
}

/* One body part: its value appended to k, or a refusal (status, reason). */
static int build_body_part(struct tg_request *req, const struct tg_config_rl_key_part *part,
                           struct keybuf *k, const char *body, size_t len, bool complete,
                           const char **why)
{
    const struct tg_limiter_state *lim = &req->lim;
    if (!complete) {
        *why = "the body is larger than the policy's max_peek";
        return 413;
    }
    if (lim->content_type_repeated) {
        *why = "more than one Content-Type";
        return 400;
    }
    const char *q = strchr(req->path, '?');
    struct tg_bodykey_input in = {
        .content_type = tg_str_make(lim->content_type, lim->content_type_len),
        .body = body,
        .len = len,
        .query = q != NULL ? tg_str_make(q + 1, strlen(q + 1)) : tg_str_make(NULL, 0),
        .read = body_reads(part->kind),
    };
    char val[MAX_BODY_VALUE];
    size_t vn = 0;
    enum tg_bodykey_status st =
        tg_bodykey_find(&in, part->name, part->name_len, val, sizeof(val), &vn, why);
    if (st != TG_BODYKEY_FOUND)
        return 400;
    kb_body_value(k, val, vn);
    return 0;
}

void tg_limiter_take_body(struct tg_request *req, const char *body, size_t len, bool complete)
{
    struct tg_limiter_state *lim = &req->lim;
    for (size_t i = 0; i < lim->n; i++) {
        struct tg_limiter_item *it = &lim->items[i];
        if (!it->key_pending)
            continue;
        const struct tg_config_policy *pol = it->policy;
        bool whole = complete && len <= pol->max_peek;
        char buf[MAX_KEY];
        struct keybuf k = {buf, 0, sizeof(buf), false};
        for (size_t p = 0; p < pol->nparts; p++) {
            if (p > 0)
                kb_put(&k, "|", 1);
            if (!is_body_part(pol->parts[p].kind)) {
                kb_put(&k, it->parts[p], it->part_lens[p]);
                continue;
            }
            const char *why = NULL;
            int status = build_body_part(req, &pol->parts[p], &k, body, len, whole, &why);
            if (status == 0)
                continue;
            if (pol->body_fallback) {
                kb_fallback(&k, req);
                it->fallback = true;
                continue;
            }
            if (lim->refuse_status == 0 || status == 413) {
                lim->refuse_status = status;
                lim->refuse_reason = why != NULL ? why : "the body cannot be read";
            }
        }
        it->key_pending = false;
        if (set_key(req, it, buf, finish_key(buf, &k)) < 0 && lim->refuse_status == 0) {
            lim->refuse_status = 503;
            lim->refuse_reason = "out of memory";
        }
    }
    lim->needs_body = false;
    if (lim->refuse_status != 0) {
        lim->outcome = "unkeyed";
        TG_METRIC_INC(req->conn->w->metrics->ratelimit_unkeyed);
    }
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

enum { CALL_ENFORCE = 0, CALL_PEEK, CALL_SHADOW };

static bool is_redis(const struct tg_limiter_item *it)
{
    return it->policy->store == TG_RL_STORE_REDIS;
}

/* Enforced failure counting: a token is reserved before forwarding. */
static bool reserves(const struct tg_limiter_item *it)
{
    return it->policy->count_failures && !it->policy->shadow;
}

/* Enforced policies and reservations take; shadow failure counting only
 * looks (it is charged after a failure); other shadow policies take on
 * their own. */
static int call_kind(const struct tg_limiter_item *it)
{
    if (it->policy->count_failures)
        return it->policy->shadow ? CALL_PEEK : CALL_ENFORCE;
    return it->policy->shadow ? CALL_SHADOW : CALL_ENFORCE;
}

static void decide_local(struct tg_request *req, struct tg_limiter_item **items, size_t n,
                         bool peek, int64_t now)
{
    struct tg_ratelimit_local *table = req->conn->w->rt->rl_local;
    struct tg_ratelimit_op ops[TG_LIMITER_MAX_POLICIES];
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++)
        ops[i] = (struct tg_ratelimit_op){.key = items[i]->store_key,
                                          .keylen = items[i]->store_keylen,
                                          .params = &items[i]->params,
                                          .cost = 1,
                                          .cls = (uint16_t)items[i]->policy->index};
    bool all = peek ? (tg_ratelimit_local_peek(table, ops, n, now), false)
                    : tg_ratelimit_local_take(table, ops, n, now);
    for (size_t i = 0; i < n; i++) {
        items[i]->result = ops[i].result;
        items[i]->decided = true;
        if (ops[i].result.overflow)
            TG_METRIC_INC(req->conn->w->metrics->ratelimit_overflow);
        if (all) {
            items[i]->spent_in = TG_LIMITER_SPENT_LOCAL;
            items[i]->spent_params = items[i]->params;
            items[i]->reserved = reserves(items[i]);
        }
    }
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
        ops[i] = (struct tg_ratelimit_op){.key = items[i]->store_key,
                                          .keylen = items[i]->store_keylen,
                                          .params = &scaled[i],
                                          .cost = 1,
                                          .cls = (uint16_t)items[i]->policy->index};
    }
    struct tg_ratelimit_local *table = req->conn->w->rt->rl_local;
    bool all = false;
    if (peek)
        tg_ratelimit_local_peek(table, ops, n, tg_limiter_now_ns());
    else
        all = tg_ratelimit_local_take(table, ops, n, tg_limiter_now_ns());
    for (size_t i = 0; i < n; i++) {
        items[i]->result = ops[i].result;
        items[i]->decided = true;
        if (all) {
            items[i]->spent_in = TG_LIMITER_SPENT_SHARE;
            items[i]->spent_params = scaled[i];
            items[i]->reserved = reserves(items[i]);
        }
    }
}

/* Gives a reserved token back to the store that holds it. */
static void refund(struct tg_request *req, struct tg_limiter_item *it)
{
    if (!it->reserved)
        return;
    it->reserved = false;
    struct tg_worker *w = req->conn->w;
    if (it->spent_in == TG_LIMITER_SPENT_REDIS) {
        struct tg_ratelimit_redis_op op = {it->policy->name, it->key, it->keylen,
                                           it->spent_params, 1};
        /* Nobody waits: a lost refund costs one token, never a lock. */
        if (w->rl_redis != NULL)
            tg_ratelimit_redis_refund(w->rl_redis, &op, 1, NULL, NULL);
        return;
    }
    /* A take decided on the policy's overflow bucket gives back there. */
    struct tg_ratelimit_op op = {.key = it->store_key,
                                 .keylen = it->store_keylen,
                                 .params = &it->spent_params,
                                 .cost = 1,
                                 .result = {.overflow = it->result.overflow},
                                 .cls = (uint16_t)it->policy->index};
    tg_ratelimit_local_refund(w->rt->rl_local, &op, 1, tg_limiter_now_ns());
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
    if (refused || lim->store_error) {
        lim->delay_ns = 0;
        /* Not forwarded: what one store reserved goes back. */
        for (size_t i = 0; i < lim->n; i++)
            refund(req, &lim->items[i]);
    }
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

static bool any_refused(const struct tg_limiter_state *lim)
{
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        if (it->decided && !it->result.allowed && !it->policy->shadow)
            return true;
    }
    return false;
}

/* Collects the local items of one call kind. */
static size_t local_items(struct tg_limiter_state *lim, int kind,
                          struct tg_limiter_item **out)
{
    size_t n = 0;
    for (size_t i = 0; i < lim->n; i++)
        if (!is_redis(&lim->items[i]) && call_kind(&lim->items[i]) == kind)
            out[n++] = &lim->items[i];
    return n;
}

/* Local enforced policies (and reservations) spend only once every store
 * has allowed: then one atomic take; a peek when something refused. */
static void spend_local(struct tg_request *req, bool refused_elsewhere)
{
    struct tg_limiter_state *lim = &req->lim;
    struct tg_limiter_item *items[TG_LIMITER_MAX_POLICIES];
    int64_t now = tg_limiter_now_ns();
    size_t n = local_items(lim, CALL_ENFORCE, items);
    decide_local(req, items, n, refused_elsewhere, now);
    n = local_items(lim, CALL_SHADOW, items);
    decide_local(req, items, n, false, now);
}

static void on_redis_reply(void *arg, int status, bool allowed,
                           const struct tg_ratelimit_result *results, size_t n);

/* Sends one kind of Redis-backed policies (on_error applied at once when it
 * cannot be sent). */
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
    call->pending = r != NULL ? tg_ratelimit_redis_take(r, ops, call->n, kind == CALL_PEEK,
                                                        on_redis_reply, call)
                              : NULL;
    if (call->pending == NULL) {
        apply_on_error(req, items, call->n, kind == CALL_PEEK);
        return;
    }
    lim->pending++;
}

static void finish(struct tg_request *req)
{
    struct tg_limiter_state *lim = &req->lim;
    spend_local(req, any_refused(lim) || lim->store_error);
    finalize(req);
}

static void on_redis_reply(void *arg, int status, bool allowed,
                           const struct tg_ratelimit_result *results, size_t n)
{
    struct tg_limiter_call *call = arg;
    struct tg_request *req = call->req;
    struct tg_limiter_state *lim = &req->lim;
    call->pending = NULL;
    if (status < 0 || n != call->n) {
        struct tg_limiter_item *items[TG_LIMITER_MAX_POLICIES];
        for (size_t i = 0; i < call->n; i++)
            items[i] = &lim->items[call->idx[i]];
        apply_on_error(req, items, call->n, call->kind == CALL_PEEK);
    } else {
        for (size_t i = 0; i < n; i++) {
            struct tg_limiter_item *it = &lim->items[call->idx[i]];
            it->result = results[i];
            it->decided = true;
            if (allowed && call->kind != CALL_PEEK) {
                it->spent_in = TG_LIMITER_SPENT_REDIS;
                it->spent_params = it->params;
                it->reserved = reserves(it);
            }
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
    int64_t now = tg_limiter_now_ns();
    struct tg_limiter_item *items[TG_LIMITER_MAX_POLICIES];
    size_t nredis = 0;
    for (size_t i = 0; i < lim->n; i++)
        nredis += is_redis(&lim->items[i]);
    /* Shadow failure counting only ever looks before the answer. */
    decide_local(req, items, local_items(lim, CALL_PEEK, items), true, now);
    if (nredis == 0) {
        /* All local: one atomic take decides and spends (enforced policies
         * and failure reservations together, all or nothing), no second
         * pass. */
        spend_local(req, false);
        finalize(req);
        return 0;
    }
    /* Look locally first: a request already refused here costs Redis
     * nothing. */
    decide_local(req, items, local_items(lim, CALL_ENFORCE, items), true, now);
    if (any_refused(lim)) {
        finish(req);
        return 0;
    }
    /* The kinds go out in the same loop iteration: one pipelined write,
     * one round trip. */
    send_redis(req, CALL_ENFORCE);
    send_redis(req, CALL_PEEK);
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

static bool is_failure(const struct tg_config_policy *p, int status)
{
    for (size_t s = 0; s < p->nfailure_statuses; s++)
        if (p->failure_statuses[s] == status)
            return true;
    return false;
}

void tg_limiter_after_response(struct tg_request *req, int status)
{
    struct tg_limiter_state *lim = &req->lim;
    if (!lim->active || lim->limited || lim->settled)
        return;
    lim->settled = true;
    struct tg_limiter_item *charge[TG_LIMITER_MAX_POLICIES];
    struct tg_ratelimit_redis_op ops[TG_LIMITER_MAX_POLICIES];
    size_t n = 0, nr = 0;
    for (size_t i = 0; i < lim->n; i++) {
        struct tg_limiter_item *it = &lim->items[i];
        if (!it->policy->count_failures)
            continue;
        bool failed = is_failure(it->policy, status);
        if (reserves(it)) {
            if (!failed)
                refund(req, it);
            it->reserved = false; /* kept: it was a failure */
            continue;
        }
        /* Shadow failure counting: charged after the fact. */
        if (!failed)
            continue;
        if (is_redis(it))
            ops[nr++] = (struct tg_ratelimit_redis_op){it->policy->name, it->key, it->keylen,
                                                      it->params, 1};
        else
            charge[n++] = it;
    }
    if (n > 0) {
        struct tg_ratelimit_local *table = req->conn->w->rt->rl_local;
        struct tg_ratelimit_op lops[TG_LIMITER_MAX_POLICIES];
        for (size_t i = 0; i < n; i++)
            lops[i] = (struct tg_ratelimit_op){.key = charge[i]->store_key,
                                               .keylen = charge[i]->store_keylen,
                                               .params = &charge[i]->params,
                                               .cost = 1,
                                               .cls = (uint16_t)charge[i]->policy->index};
        tg_ratelimit_local_take(table, lops, n, tg_limiter_now_ns());
    }
    /* Redis: nobody waits for this one; a failure only loses one charge. */
    if (nr > 0 && req->conn->w->rl_redis != NULL)
        tg_ratelimit_redis_take(req->conn->w->rl_redis, ops, nr, false, on_charge_reply, NULL);
}

void tg_limiter_end(struct tg_request *req)
{
    struct tg_limiter_state *lim = &req->lim;
    if (!lim->active || lim->settled)
        return;
    lim->settled = true;
    if (lim->forwarded)
        return; /* sent, no answer: the password may have been tried */
    for (size_t i = 0; i < lim->n; i++)
        refund(req, &lim->items[i]);
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

/* ---- what the log and the admin API see --------------------------------------- */

static uint64_t log_key[2];
static pthread_once_t log_key_once = PTHREAD_ONCE_INIT;

static void log_key_init(void)
{
    tg_siphash_random_key(log_key);
}

uint64_t tg_limiter_key_hash(const char *store_key, size_t n)
{
    pthread_once(&log_key_once, log_key_init);
    return tg_siphash13(store_key, n, log_key[0], log_key[1]);
}

size_t tg_limiter_log_keys(const struct tg_request *req, char *out, size_t cap)
{
    const struct tg_limiter_state *lim = &req->lim;
    size_t o = 0;
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        if (it->store_key == NULL)
            continue;
        int n = snprintf(out + o, cap - o, "%s{\"policy\":\"%s\",\"key\":\"%016llx\"%s}",
                         o == 0 ? "[" : ",", it->policy->name,
                         (unsigned long long)tg_limiter_key_hash(it->store_key,
                                                                it->store_keylen),
                         it->fallback ? ",\"fallback\":true" : "");
        if (n < 0 || (size_t)n >= cap - o)
            return 0;
        o += (size_t)n;
    }
    if (o == 0 || o + 1 >= cap)
        return 0;
    out[o++] = ']';
    return o;
}

size_t tg_limiter_admin_key(const struct tg_config *cfg, const struct tg_config_policy *p,
                            const char *text, size_t n, char *out, size_t cap,
                            const char **why)
{
    char buf[MAX_KEY];
    struct keybuf k = {buf, 0, sizeof(buf), false};
    const char *s = text, *end = text + n;
    for (size_t i = 0; i < p->nparts; i++) {
        /* The last part takes the rest: a value may hold '|'. */
        const char *bar = i + 1 < p->nparts ? memchr(s, '|', (size_t)(end - s)) : NULL;
        if (i + 1 < p->nparts && bar == NULL) {
            *why = "this policy's key has several parts: give them joined with '|'";
            return 0;
        }
        const char *stop = bar != NULL ? bar : end;
        size_t vn = (size_t)(stop - s);
        if (i > 0)
            kb_put(&k, "|", 1);
        enum tg_rl_part kind = p->parts[i].kind;
        if (vn > 0 && s[0] == '~' && kind != TG_RL_PART_IP) {
            /* A part that fell back to the client's address. */
            struct tg_addr a;
            if (tg_addr_parse(s + 1, vn - 1, &a) < 0) {
                *why = "'~' must be followed by an address";
                return 0;
            }
            kb_put(&k, "~", 1);
            kb_addr(&k, &a, cfg->client.ipv6_prefix);
        } else if (kind == TG_RL_PART_IP) {
            struct tg_addr a;
            if (tg_addr_parse(s, vn, &a) < 0) {
                *why = "an ip part must be an address";
                return 0;
            }
            kb_addr(&k, &a, cfg->client.ipv6_prefix);
        } else if (is_body_part(kind)) {
            char v[MAX_BODY_VALUE];
            if (vn > sizeof(v)) {
                *why = "value too long";
                return 0;
            }
            memcpy(v, s, vn);
            kb_body_value(&k, v, vn);
        } else if (kind == TG_RL_PART_COUNTRY || kind == TG_RL_PART_ASN) {
            kb_put(&k, s, vn);
        } else {
            kb_value(&k, s, vn);
        }
        s = stop + (bar != NULL);
    }
    size_t len = finish_key(buf, &k);
    if (len > cap) {
        *why = "key too long";
        return 0;
    }
    memcpy(out, buf, len);
    return len;
}
