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

#include <pthread.h>

#include "bodykey.h"
#include "codec.h"
#include "config.h"
#include "metrics.h"
#include "siphash.h"

/* A key's memory. The unit test swaps in an allocator that fails, to
 * check that a key that cannot be stored refuses the request rather than
 * count it in an empty (shared) key. */
#ifndef key_alloc
#define key_alloc tg_arena_alloc
#endif

#define MAX_PART 128        /* escaped value bytes kept as they are; longer: hashed */
#define MAX_KEY 2048        /* key being built: 8 parts of at most MAX_PART + '|' */
#define MAX_STORED 400      /* longer keys are stored as a hash of themselves */
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
    (void)cfg; /* the route's list is resolved at load (config.c) */
    return &r->rate_limit;
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

/* The client address in the fallback namespace: '~' never starts an
 * escaped value. */
static void kb_fallback(struct keybuf *k, const struct tg_addr *client, unsigned ipv6_prefix)
{
    kb_put(k, "~", 1);
    kb_addr(k, client, ipv6_prefix);
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
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r' || v[n - 1] == '\n'))
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

static bool find_header(const struct tg_http_headers *h, const char *name, size_t n,
                        struct tg_str *out)
{
    for (size_t i = 0; h != NULL && i < h->n; i++) {
        if (h->v[i].name.n == n && strncasecmp(h->v[i].name.p, name, n) == 0) {
            *out = h->v[i].value;
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

static bool kb_cookie(struct keybuf *k, const struct tg_http_headers *h, const char *name, size_t n)
{
    for (size_t i = 0; h != NULL && i < h->n; i++) {
        if (!tg_http_name_eq(h->v[i].name, "cookie"))
            continue;
        const char *p = h->v[i].value.p, *end = p + h->v[i].value.n;
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

static unsigned ipv6_prefix(const struct tg_config *cfg)
{
    return cfg->client.ipv6_prefix;
}

/* Appends one head part's value to k; sets *fallback when the client
 * address stood in for it. Body parts are not handled here. */
static void build_head_part(const struct tg_limiter_input *in,
                            const struct tg_config_rl_key_part *part, struct keybuf *k,
                            bool *fallback)
{
    struct tg_str v;
    unsigned v6 = ipv6_prefix(in->cfg);
    switch (part->kind) {
    case TG_RL_PART_IP:
        kb_addr(k, in->client, v6);
        break;
    case TG_RL_PART_ROUTE: {
        /* The route's pattern as configured, never the path as sent: every
         * spelling of a path that reaches the route shares its bucket. */
        const char *host = in->site->hosts[0];
        kb_value(k, host, strlen(host)); /* no '/' or '=': the pattern's start is clear */
        kb_value(k, in->route->path, in->route->path_len);
        break;
    }
    case TG_RL_PART_SITE:
        kb_value(k, in->site->hosts[0], strlen(in->site->hosts[0]));
        break;
    case TG_RL_PART_TENANT:
        if (in->tenant != NULL) {
            kb_value(k, in->tenant, strlen(in->tenant));
        } else {
            kb_fallback(k, in->client, v6);
            *fallback = true;
        }
        break;
    case TG_RL_PART_COUNTRY:
        kb_put(k, in->country != NULL && in->country[0] ? in->country : "XX", 2);
        break;
    case TG_RL_PART_ASN: {
        char asn[16];
        int n = snprintf(asn, sizeof(asn), "AS%u", in->asn);
        kb_put(k, asn, (size_t)n);
        break;
    }
    case TG_RL_PART_HEADER:
        if (find_header(in->headers, part->name, part->name_len, &v) && v.n > 0) {
            kb_value(k, v.p, v.n);
        } else {
            kb_fallback(k, in->client, v6);
            *fallback = true;
        }
        break;
    case TG_RL_PART_QUERY:
        if (in->query.p == NULL || !kb_query(k, in->query, part->name, part->name_len)) {
            kb_fallback(k, in->client, v6);
            *fallback = true;
        }
        break;
    case TG_RL_PART_COOKIE:
        if (!kb_cookie(k, in->headers, part->name, part->name_len)) {
            kb_fallback(k, in->client, v6);
            *fallback = true;
        }
        break;
    case TG_RL_PART_JSON:
    case TG_RL_PART_FORM:
    case TG_RL_PART_BODY:
        break;
    }
}

uint64_t tg_limiter_hash_part(const struct tg_limiter_input *in,
                              const struct tg_config_rl_key_part *part)
{
    char buf[MAX_KEY];
    struct keybuf k = {buf, 0, sizeof(buf), false};
    bool fallback = false;
    build_head_part(in, part, &k, &fallback);
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

/* Keeps the item's key in the arena, as the local store wants it
 * (tg_limiter_store_key's form), the Redis form pointing into it. */
static int set_key(struct tg_arena *arena, struct tg_limiter_item *it, const char *key,
                   size_t keylen)
{
    size_t cap = strlen(it->policy->name) + 1 + keylen;
    char *sk = key_alloc(arena, cap + 1);
    if (sk == NULL)
        return -1;
    size_t n = tg_limiter_store_key(it->policy->name, key, keylen, sk, cap);
    sk[n] = '\0';
    it->key.store_key = sk;
    it->key.store_keylen = n;
    it->key.key = sk + (n - keylen);
    it->key.keylen = keylen;
    return 0;
}

int tg_limiter_prepare(struct tg_limiter_state *lim, const struct tg_limiter_input *in,
                       struct tg_limiter_env *env)
{
    const struct tg_config *cfg = in->cfg;
    const struct tg_config_policy_list *list = tg_limiter_policies(cfg, in->route);
    if (list->n == 0)
        return 0; /* the request start zeroed what is read then */
    memset(lim, 0, offsetof(struct tg_limiter_state, items));
    lim->cfg = cfg;
    lim->client = in->client;
    lim->arena = in->arena;
    lim->env = env;
    if (cfg->rate_limit.exempt != NULL &&
        tg_cidr_set_lookup(cfg->rate_limit.exempt, in->client) != 0) {
        lim->outcome = "exempt";
        return 0;
    }
    lim->active = true;
    for (size_t i = 0; i < list->n && lim->n < TG_LIMITER_MAX_POLICIES; i++) {
        struct tg_limiter_item *it = &lim->items[lim->n++];
        const struct tg_config_policy *pol = list->items[i];
        memset(it, 0, sizeof(*it));
        it->policy = pol;
        it->key.policy = pol->name;
        it->key.params = pol->params;
        it->key.cost = 1;
        it->key.cls = (uint16_t)pol->index;
        it->count = pol->count;
        it->period_s = pol->period_s;
        /* A tenant's own quota (from the directory) replaces the policy's
         * rate and burst for policies keyed by tenant. */
        for (size_t p = 0; in->tenant != NULL && p < pol->nparts; p++) {
            if (pol->parts[p].kind != TG_RL_PART_TENANT)
                continue;
            if (in->tenant_interval_ns > 0) {
                it->key.params.interval_ns = in->tenant_interval_ns;
                if (in->tenant_count > 0 && in->tenant_period_s > 0) {
                    it->count = in->tenant_count;
                    it->period_s = in->tenant_period_s;
                }
            }
            if (in->tenant_burst > 0)
                it->key.params.burst = in->tenant_burst;
        }
        char buf[MAX_KEY];
        struct keybuf k = {buf, 0, sizeof(buf), false};
        if (pol->needs_body) {
            /* Keep each head part apart until the body is here: the head
             * views are gone by then. */
            it->key_pending = true;
            lim->needs_body = true;
            it->parts = tg_arena_calloc(in->arena, pol->nparts, sizeof(char *));
            it->part_lens = tg_arena_calloc(in->arena, pol->nparts, sizeof(size_t));
            if (it->parts == NULL || it->part_lens == NULL)
                return -1;
            for (size_t p = 0; p < pol->nparts; p++) {
                if (is_body_part(pol->parts[p].kind))
                    continue;
                k.n = 0;
                build_head_part(in, &pol->parts[p], &k, &it->fallback);
                it->parts[p] = tg_arena_strndup(in->arena, buf, k.n);
                it->part_lens[p] = k.n;
                if (it->parts[p] == NULL)
                    return -1;
            }
            continue;
        }
        for (size_t p = 0; p < pol->nparts; p++) {
            if (p > 0)
                kb_put(&k, "|", 1);
            build_head_part(in, &pol->parts[p], &k, &it->fallback);
        }
        if (set_key(in->arena, it, buf, finish_key(buf, &k)) < 0)
            return -1;
    }
    if (lim->needs_body) {
        /* The body is read by its Content-Type, and forms by the query too:
         * keep copies (the head views are gone when the body is here). */
        for (size_t i = 0; in->headers != NULL && i < in->headers->n; i++) {
            const struct tg_http_header *h = &in->headers->v[i];
            if (!tg_http_name_eq(h->name, "content-type"))
                continue;
            if (lim->content_type != NULL) {
                lim->content_type_repeated = true;
                break;
            }
            lim->content_type = tg_arena_strndup(in->arena, h->value.p, h->value.n);
            lim->content_type_len = h->value.n;
            if (lim->content_type == NULL)
                return -1;
        }
        if (in->query.p != NULL) {
            char *q = tg_arena_strndup(in->arena, in->query.p, in->query.n);
            if (q == NULL)
                return -1;
            lim->query = tg_str_make(q, in->query.n);
        }
    }
    return 0;
}

size_t tg_limiter_peek_wanted(const struct tg_limiter_state *lim)
{
    size_t want = 0;
    for (size_t i = 0; i < lim->n; i++)
        if (lim->items[i].key_pending && lim->items[i].policy->max_peek > want)
            want = lim->items[i].policy->max_peek;
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
static int build_body_part(const struct tg_limiter_state *lim,
                           const struct tg_config_rl_key_part *part, struct keybuf *k,
                           const char *body, size_t len, bool complete, const char **why)
{
    if (!complete) {
        *why = "the body is larger than the policy's max_peek";
        return 413;
    }
    if (lim->content_type_repeated) {
        *why = "more than one Content-Type";
        return 400;
    }
    struct tg_bodykey_input bin = {
        .content_type = tg_str_make(lim->content_type, lim->content_type_len),
        .body = body,
        .len = len,
        .query = lim->query,
        .read = body_reads(part->kind),
    };
    char val[MAX_BODY_VALUE];
    size_t vn = 0;
    enum tg_bodykey_status st =
        tg_bodykey_find(&bin, part->name, part->name_len, val, sizeof(val), &vn, why);
    if (st != TG_BODYKEY_FOUND)
        return 400;
    kb_body_value(k, val, vn);
    return 0;
}

void tg_limiter_take_body(struct tg_limiter_state *lim, const char *body, size_t len, bool complete)
{
    unsigned v6 = ipv6_prefix(lim->cfg);
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
            int status = build_body_part(lim, &pol->parts[p], &k, body, len, whole, &why);
            if (status == 0)
                continue;
            if (pol->body_fallback) {
                kb_fallback(&k, lim->client, v6);
                it->fallback = true;
                continue;
            }
            if (lim->refuse_status == 0 || status == 413) {
                lim->refuse_status = status;
                lim->refuse_reason = why != NULL ? why : "the body cannot be read";
            }
        }
        it->key_pending = false;
        if (set_key(lim->arena, it, buf, finish_key(buf, &k)) < 0 && lim->refuse_status == 0) {
            lim->refuse_status = 503;
            lim->refuse_reason = "out of memory";
        }
    }
    lim->needs_body = false;
    if (lim->refuse_status != 0) {
        lim->outcome = "unkeyed";
        TG_METRIC_INC(lim->env->metrics->ratelimit_unkeyed);
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

/* How an item is decided before the answer: enforced policies and failure
 * reservations take together; shadow failure counting only looks (it is
 * charged after a failure); other shadow policies take on their own. */
enum { KIND_ENFORCE = 0, KIND_PEEK, KIND_SHADOW };

static int item_kind(const struct tg_limiter_item *it)
{
    if (it->policy->count_failures)
        return it->policy->shadow ? KIND_PEEK : KIND_ENFORCE;
    return it->policy->shadow ? KIND_SHADOW : KIND_ENFORCE;
}

/* Enforced failure counting: a token is reserved before forwarding. */
static bool reserves(const struct tg_limiter_item *it)
{
    return it->policy->count_failures && !it->policy->shadow;
}

static struct tg_ratelimit_store *store_of(struct tg_limiter_state *lim,
                                           const struct tg_limiter_item *it)
{
    return &lim->env->stores[it->policy->store];
}

/* Stores that decide at once are looked at first: a request they refuse
 * costs the others nothing. */
static bool answers_at_once(const struct tg_ratelimit_store *s)
{
    return s->ops->immediate;
}

/* Copies a batch's keys in, and results and spends out. */
static size_t gather(struct tg_limiter_state *lim, int store, int kind, uint8_t *idx,
                     struct tg_ratelimit_key *keys)
{
    size_t n = 0;
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        if (it->policy->store != (unsigned)store || item_kind(it) != kind)
            continue;
        idx[n] = (uint8_t)i;
        keys[n++] = it->key;
    }
    return n;
}

/* Results come in keys[i].result (a store that decided at once) or in
 * results[i] (an answer that came later; keys NULL). */
static void scatter(struct tg_limiter_state *lim, const uint8_t *idx,
                    const struct tg_ratelimit_key *keys, const struct tg_ratelimit_result *results,
                    size_t n, bool spent, uint8_t where)
{
    for (size_t i = 0; i < n; i++) {
        struct tg_limiter_item *it = &lim->items[idx[i]];
        it->key.result = keys != NULL ? keys[i].result : results[i];
        it->decided = true;
        if (it->key.result.overflow)
            TG_METRIC_INC(lim->env->metrics->ratelimit_overflow);
        if (spent) {
            it->spent = where;
            it->reserved = reserves(it);
        }
    }
}

/* A store failed for these items: rate_limit.redis.on_error decides. `local`
 * falls back to this gateway's share of the budget (rate / N and burst / N
 * for N live gateways), so the fleet as a whole stays near the shared
 * limit. */
static void apply_on_error(struct tg_limiter_state *lim, const uint8_t *idx, size_t n, bool peek)
{
    const struct tg_config_rate_limit *rl = &lim->cfg->rate_limit;
    if (n == 0)
        return;
    lim->store_fallback = true;
    lim->env->fallbacks++;
    if (rl->on_error == TG_RL_ON_ERROR_DENY) {
        lim->store_error = true;
        return;
    }
    if (rl->on_error == TG_RL_ON_ERROR_ALLOW) {
        for (size_t i = 0; i < n; i++) {
            struct tg_limiter_item *it = &lim->items[idx[i]];
            it->key.result =
                (struct tg_ratelimit_result){.allowed = true, .remaining = it->key.params.burst};
            it->decided = false; /* nothing to report */
        }
        return;
    }
    struct tg_ratelimit_key keys[TG_LIMITER_MAX_POLICIES];
    for (size_t i = 0; i < n; i++)
        keys[i] = lim->items[idx[i]].key;
    bool allowed = false;
    struct tg_ratelimit_store *share = &lim->env->share;
    share->ops->take(share->impl, keys, n, peek, tg_limiter_now_ns(), &allowed, NULL, NULL, NULL);
    scatter(lim, idx, keys, NULL, n, allowed && !peek, TG_LIMITER_SPENT_SHARE);
}

/* Gives a reserved (or, for a refused request, spent) token back to the
 * store that holds it. */
static void refund(struct tg_limiter_state *lim, struct tg_limiter_item *it)
{
    if (it->spent == TG_LIMITER_SPENT_NONE)
        return;
    struct tg_ratelimit_store *s =
        it->spent == TG_LIMITER_SPENT_SHARE ? &lim->env->share : store_of(lim, it);
    it->spent = TG_LIMITER_SPENT_NONE;
    it->reserved = false;
    struct tg_ratelimit_key k = it->key;
    k.overflow = it->key.result.overflow; /* a take decided on the overflow bucket */
    s->ops->refund(s->impl, &k, 1, tg_limiter_now_ns());
}

/* Everything is decided: work out the verdict and what the headers say. */
static void finalize(struct tg_limiter_state *lim)
{
    bool refused = false;
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        if (!it->decided)
            continue;
        if (!it->key.result.allowed) {
            if (it->policy->shadow)
                lim->shadow_limited = true;
            else
                refused = true;
        } else if (!it->policy->shadow && it->key.result.delay_ns > lim->delay_ns) {
            lim->delay_ns = it->key.result.delay_ns;
        }
    }
    lim->limited = refused;
    if (refused || lim->store_error) {
        lim->delay_ns = 0;
        /* Not forwarded: what was spent for it goes back (shadow policies
         * count what they saw, as they would have). */
        for (size_t i = 0; i < lim->n; i++)
            if (!lim->items[i].policy->shadow)
                refund(lim, &lim->items[i]);
    }
    /* Report: when refused, the refusing policy that frees up last; when
     * allowed, the enforced policy with the fewest tokens left. */
    const struct tg_limiter_item *best = NULL;
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        if (it->policy->shadow || !it->decided)
            continue;
        if (refused) {
            if (!it->key.result.allowed &&
                (best == NULL || it->key.result.retry_after_ns > best->key.result.retry_after_ns))
                best = it;
        } else if (best == NULL || it->key.result.remaining < best->key.result.remaining) {
            best = it;
        }
    }
    lim->report = best;
    struct tg_metrics_shard *m = lim->env->metrics;
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        struct tg_policy_stats *ps = &m->policies[it->policy->metrics_id];
        if (lim->store_fallback && !answers_at_once(store_of(lim, it)))
            TG_METRIC_INC(ps->results[TG_RL_ERROR]);
        if (!it->decided)
            continue;
        if (!it->key.result.allowed)
            TG_METRIC_INC(ps->results[it->policy->shadow ? TG_RL_SHADOW : TG_RL_LIMITED]);
        else if (!refused) {
            TG_METRIC_INC(ps->results[TG_RL_ALLOWED]);
            if (it->key.result.remaining * 5 < it->key.params.burst)
                TG_METRIC_INC(ps->results[TG_RL_NEAR_LIMIT]);
        }
    }
    lim->outcome = lim->store_error      ? "error"
                   : refused             ? "limited"
                   : lim->shadow_limited ? "shadow"
                                         : "allowed";
}

static bool any_refused(const struct tg_limiter_state *lim)
{
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        if (it->decided && !it->key.result.allowed && !it->policy->shadow)
            return true;
    }
    return false;
}

static void on_store_reply(void *arg, int status, bool allowed,
                           const struct tg_ratelimit_result *results, size_t n);

/* Decides one (store, kind) batch: at once, or by a call that answers
 * later. `peek` looks without spending. */
static void run_batch(struct tg_limiter_state *lim, int store, int kind, bool peek)
{
    struct tg_ratelimit_key keys[TG_LIMITER_MAX_POLICIES];
    struct tg_limiter_call *call = &lim->calls[store][kind];
    size_t n = gather(lim, store, kind, call->idx, keys);
    if (n == 0)
        return;
    call->lim = lim;
    call->store = (uint8_t)store;
    call->kind = (uint8_t)kind;
    call->n = (uint8_t)n;
    struct tg_ratelimit_store *s = &lim->env->stores[store];
    bool allowed = false;
    enum tg_ratelimit_take r = s->ops->take(s->impl, keys, n, peek, tg_limiter_now_ns(), &allowed,
                                            on_store_reply, call, &call->pending);
    if (r == TG_RATELIMIT_PENDING) {
        lim->pending++;
        return;
    }
    call->pending = NULL;
    if (r == TG_RATELIMIT_FAULT)
        apply_on_error(lim, call->idx, n, peek);
    else
        scatter(lim, call->idx, keys, NULL, n, allowed && !peek, TG_LIMITER_SPENT_STORE);
}

/* Every store that answers later has answered: stores that answer at once
 * spend now (or only look, when something refused), then the verdict. */
static void finish(struct tg_limiter_state *lim)
{
    bool refused = any_refused(lim) || lim->store_error;
    for (int s = 1; s < TG_LIMITER_NSTORES; s++) {
        if (!answers_at_once(&lim->env->stores[s]))
            continue;
        run_batch(lim, s, KIND_ENFORCE, refused);
        run_batch(lim, s, KIND_SHADOW, false);
    }
    finalize(lim);
}

static void on_store_reply(void *arg, int status, bool allowed,
                           const struct tg_ratelimit_result *results, size_t n)
{
    struct tg_limiter_call *call = arg;
    struct tg_limiter_state *lim = call->lim;
    call->pending = NULL;
    bool peek = call->kind == KIND_PEEK;
    if (status < 0 || n != call->n) {
        apply_on_error(lim, call->idx, call->n, peek);
    } else {
        /* A Redis Cluster may decide some keys and fail others (their
         * node is down): the decided ones stand, on_error takes the rest
         * -- unless a decided key refused the request, whose verdict
         * they could not change (the store gave the others' spends
         * back). */
        size_t nf = 0;
        for (size_t i = 0; i < n; i++)
            nf += results[i].store_failed;
        if (nf == 0) {
            scatter(lim, call->idx, NULL, results, n, allowed && !peek, TG_LIMITER_SPENT_STORE);
        } else {
            uint8_t decided[TG_LIMITER_MAX_POLICIES] = {0}, failed[TG_LIMITER_MAX_POLICIES] = {0};
            struct tg_ratelimit_result res[TG_LIMITER_MAX_POLICIES] = {0};
            size_t nd = 0;
            nf = 0;
            for (size_t i = 0; i < n && i < TG_LIMITER_MAX_POLICIES; i++) {
                if (results[i].store_failed) {
                    failed[nf++] = call->idx[i];
                } else {
                    decided[nd] = call->idx[i];
                    res[nd++] = results[i];
                }
            }
            scatter(lim, decided, NULL, res, nd, allowed && !peek, TG_LIMITER_SPENT_STORE);
            if (allowed || call->kind != KIND_ENFORCE)
                apply_on_error(lim, failed, nf, peek);
        }
    }
    if (--lim->pending == 0) {
        finish(lim);
        lim->done(lim->done_arg);
    }
}

int tg_limiter_decide(struct tg_limiter_state *lim, tg_limiter_done done, void *arg)
{
    if (!lim->active)
        return 0;
    lim->done = done;
    lim->done_arg = arg;
    /* Shadow failure counting only ever looks before the answer. */
    for (int s = 1; s < TG_LIMITER_NSTORES; s++)
        run_batch(lim, s, KIND_PEEK, true);
    /* Look in the stores that answer at once first; when they refuse, the
     * others are not asked. When they are the only ones, their take is the
     * decision (finish() below). */
    bool later = false;
    for (int s = 1; s < TG_LIMITER_NSTORES; s++) {
        struct tg_ratelimit_key keys[TG_LIMITER_MAX_POLICIES];
        uint8_t idx[TG_LIMITER_MAX_POLICIES];
        if (!answers_at_once(&lim->env->stores[s]) &&
            (gather(lim, s, KIND_ENFORCE, idx, keys) > 0 ||
             gather(lim, s, KIND_SHADOW, idx, keys) > 0))
            later = true;
    }
    if (later) {
        for (int s = 1; s < TG_LIMITER_NSTORES; s++)
            if (answers_at_once(&lim->env->stores[s]))
                run_batch(lim, s, KIND_ENFORCE, true);
        if (any_refused(lim)) {
            tg_limiter_cancel(lim);
            finalize(lim);
            return 0;
        }
        /* The calls go out in the same loop iteration: one pipelined
         * write, one round trip. */
        for (int s = 1; s < TG_LIMITER_NSTORES; s++) {
            if (answers_at_once(&lim->env->stores[s]))
                continue;
            run_batch(lim, s, KIND_ENFORCE, false);
            run_batch(lim, s, KIND_SHADOW, false);
        }
    }
    if (lim->pending > 0)
        return 1;
    finish(lim);
    return 0;
}

void tg_limiter_cancel(struct tg_limiter_state *lim)
{
    for (int s = 0; s < TG_LIMITER_NSTORES; s++) {
        for (int k = 0; k < 3; k++) {
            struct tg_limiter_call *call = &lim->calls[s][k];
            if (call->pending != NULL) {
                struct tg_ratelimit_store *st = &lim->env->stores[s];
                st->ops->cancel(st->impl, call->pending);
                call->pending = NULL;
            }
        }
    }
    lim->pending = 0;
}

static bool is_failure(const struct tg_config_policy *p, int status)
{
    for (size_t s = 0; s < p->nfailure_statuses; s++)
        if (p->failure_statuses[s] == status)
            return true;
    return false;
}

static void on_charge_reply(void *arg, int status, bool allowed,
                            const struct tg_ratelimit_result *results, size_t n)
{
    (void)arg, (void)status, (void)allowed, (void)results, (void)n;
}

void tg_limiter_after_response(struct tg_limiter_state *lim, int status)
{
    if (!lim->active || lim->limited || lim->settled)
        return;
    lim->settled = true;
    for (size_t i = 0; i < lim->n; i++) {
        struct tg_limiter_item *it = &lim->items[i];
        if (!it->policy->count_failures)
            continue;
        bool failed = is_failure(it->policy, status);
        if (reserves(it)) {
            if (!failed)
                refund(lim, it);
            it->reserved = false; /* kept: it was a failure */
            continue;
        }
        /* Shadow failure counting: charged after the fact; nobody waits, a
         * store that fails only loses one charge. */
        if (!failed)
            continue;
        struct tg_ratelimit_store *s = store_of(lim, it);
        struct tg_ratelimit_key k = it->key;
        bool allowed;
        void *pending = NULL;
        s->ops->take(s->impl, &k, 1, false, tg_limiter_now_ns(), &allowed, on_charge_reply, NULL,
                     &pending);
    }
}

void tg_limiter_end(struct tg_limiter_state *lim)
{
    if (!lim->active || lim->settled)
        return;
    lim->settled = true;
    if (lim->forwarded)
        return; /* sent, no answer: the password may have been tried */
    for (size_t i = 0; i < lim->n; i++)
        if (lim->items[i].reserved)
            refund(lim, &lim->items[i]);
}

/* ---- headers -------------------------------------------------------------------- */

static int64_t ceil_s(int64_t ns)
{
    if (ns <= 0)
        return 0;
    return (ns + 999999999) / 1000000000;
}

size_t tg_limiter_headers(const struct tg_limiter_state *lim, char *out, size_t cap)
{
    const struct tg_limiter_item *it = lim->report;
    if (!lim->active || it == NULL || (!lim->limited && !lim->cfg->rate_limit.headers))
        return 0;
    const struct tg_config_rate_limit *rl = &lim->cfg->rate_limit;
    const struct tg_config_policy *p = it->policy;
    const struct tg_ratelimit_result *res = &it->key.result;
    int64_t t = lim->limited ? ceil_s(res->retry_after_ns) : ceil_s(res->reset_ns);
    if (lim->limited && t < 1)
        t = 1;
    int64_t r = lim->limited ? 0 : res->remaining;
    int n = 0;
    if (lim->limited)
        n = snprintf(out, cap, "Retry-After: %lld\r\n", (long long)t);
    if (n < 0 || (size_t)n >= cap)
        return 0;
    int m = snprintf(
        out + n, cap - (size_t)n,
        "RateLimit-Policy: \"%s\";q=%lld;w=%lld\r\nRateLimit: \"%s\";r=%lld;t=%lld\r\n", p->name,
        (long long)it->count, (long long)it->period_s, p->name, (long long)r, (long long)t);
    if (m < 0 || (size_t)(n + m) >= cap)
        return 0;
    n += m;
    if (rl->legacy_headers) {
        m = snprintf(out + n, cap - (size_t)n,
                     "X-RateLimit-Limit: %lld\r\nX-RateLimit-Remaining: %lld\r\n"
                     "X-RateLimit-Reset: %lld\r\n",
                     (long long)it->count, (long long)r, (long long)t);
        if (m < 0 || (size_t)(n + m) >= cap)
            return 0;
        n += m;
    }
    return (size_t)n;
}

const char *tg_limiter_refusal(const struct tg_limiter_state *lim, int64_t *retry_after_s)
{
    const struct tg_limiter_item *it = lim->report;
    int64_t t = it != NULL ? ceil_s(it->key.result.retry_after_ns) : 1;
    *retry_after_s = t < 1 ? 1 : t;
    return it != NULL ? it->policy->name : "";
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

size_t tg_limiter_log_keys(const struct tg_limiter_state *lim, char *out, size_t cap)
{
    size_t o = 0; /* what the whole array needs; written while it fits */
    for (size_t i = 0; i < lim->n; i++) {
        const struct tg_limiter_item *it = &lim->items[i];
        if (it->key.store_key == NULL)
            continue;
        /* Policy names are [A-Za-z0-9_.-]; the kinds are as written, escaped. */
        char elem[160 + 6 * 256];
        const char *kinds = it->policy->key_kinds != NULL ? it->policy->key_kinds : "";
        int n = snprintf(
            elem, sizeof(elem), "%s{\"policy\":\"%s\",\"key\":\"%016llx\",\"kind\":\"",
            o == 0 ? "[" : ",", it->policy->name,
            (unsigned long long)tg_limiter_key_hash(it->key.store_key, it->key.store_keylen));
        if (n < 0 || (size_t)n >= sizeof(elem))
            continue;
        size_t e = (size_t)n;
        e += tg_json_escape(elem + e, sizeof(elem) - e - 24, kinds, strnlen(kinds, 256));
        n = snprintf(elem + e, sizeof(elem) - e, "\"%s}", it->fallback ? ",\"fallback\":true" : "");
        e += n > 0 ? (size_t)n : 0;
        if (o + e <= cap)
            memcpy(out + o, elem, e);
        o += e;
    }
    if (o == 0)
        return 0;
    if (o < cap)
        out[o] = ']';
    return o + 1;
}

size_t tg_limiter_admin_key(const struct tg_config *cfg, const struct tg_config_policy *p,
                            const char *text, size_t n, char *out, size_t cap, const char **why)
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
