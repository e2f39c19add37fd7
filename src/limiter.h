/* Request-level rate limiting: which policies apply to a request, the key
 * each one counts it under, the decision (all must allow), the failure
 * budgets reserved before forwarding and given back after a success
 * (count: failures), and the RateLimit headers.
 *
 * The maths is GCRA (ratelimit.c); the table is ratelimit_local.c (shared
 * by all workers) or Redis (ratelimit_redis.c); body key parts are read by
 * bodykey.c; this module only decides which keys and how the answers
 * combine. */
#ifndef TG_LIMITER_H
#define TG_LIMITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"
#include "arena.h"
#include "http.h"
#include "ratelimit.h"
#include "ratelimit_store.h"

struct tg_config;
struct tg_config_site;
struct tg_config_route;
struct tg_config_policy;
struct tg_config_policy_list;
struct tg_config_rl_key_part;
struct tg_metrics_shard;

/* At most this many policies apply to one request. */
#define TG_LIMITER_MAX_POLICIES 8

/* Stores, by enum tg_rl_store (config.h): 0 unused, local, redis. */
#define TG_LIMITER_NSTORES 3

/* Where buckets live and where counts go: one per worker. */
struct tg_limiter_env {
    struct tg_ratelimit_store stores[TG_LIMITER_NSTORES];
    struct tg_ratelimit_store share; /* a failed store's stand-in (on_error: local) */
    struct tg_metrics_shard *metrics;
    unsigned long fallbacks; /* decisions on_error made */
};

/* What the limiter may know of a request: the narrow view the key parts
 * read. Views are borrowed for tg_limiter_prepare only. */
struct tg_limiter_input {
    const struct tg_config *cfg;
    const struct tg_config_site *site;
    const struct tg_config_route *route;
    const struct tg_addr *client;
    const char *tenant;                    /* NULL when none */
    int64_t tenant_interval_ns;            /* the tenant's own quota, 0 = the policy's */
    int64_t tenant_count, tenant_period_s; /* ... as written: count per period */
    int64_t tenant_burst;
    const char *country; /* "XX" unknown, NULL when GeoIP is off */
    uint32_t asn;
    const struct tg_http_headers *headers;
    struct tg_str query;    /* raw, without '?'; p == NULL: none */
    struct tg_arena *arena; /* the request's: keys live there */
};

/* Where an item's tokens were spent (so a refund goes back there). */
enum tg_limiter_spent {
    TG_LIMITER_SPENT_NONE = 0,
    TG_LIMITER_SPENT_STORE, /* in the policy's store */
    TG_LIMITER_SPENT_SHARE, /* in the share, while the store failed */
};

/* One policy's key and outcome for a request. */
struct tg_limiter_item {
    const struct tg_config_policy *policy;
    /* The quota enforced: the policy's, or the tenant's own (directory)
     * for a policy keyed by tenant; headers and explain report this. */
    int64_t count, period_s;
    struct tg_ratelimit_key key; /* store_key lives in the request arena */
    bool key_pending;            /* a body part waits for the body */
    bool fallback;               /* some part was replaced by the client address */
    char **parts;                /* while pending: each head part's encoded value,
                                    NULL for body parts */
    size_t *part_lens;
    bool decided;
    bool reserved; /* a failure token was taken before forwarding */
    uint8_t spent; /* enum tg_limiter_spent */
};

/* One asynchronous store call of a request. */
struct tg_limiter_call {
    struct tg_limiter_state *lim;
    void *pending;
    uint8_t store, kind;
    uint8_t idx[TG_LIMITER_MAX_POLICIES];
    uint8_t n;
};

/* Called once a decision that waited for a store is made; never before
 * tg_limiter_decide returns. */
typedef void (*tg_limiter_done)(void *arg);

struct tg_limiter_state {
    size_t n;
    bool active;                          /* policies apply and the client is not exempt */
    bool needs_body;                      /* some key waits for the body */
    bool limited;                         /* refused: answer 429 */
    bool shadow_limited;                  /* a shadow policy would have refused */
    bool forwarded;                       /* the request went to the backend: a reserved
                                    failure may have been tried */
    bool settled;                         /* reserved failure tokens kept or refunded */
    const struct tg_limiter_item *report; /* what the headers describe */
    int64_t delay_ns;                     /* hold the request this long (policy delay) */
    const char *outcome;                  /* for the log: allowed/limited/shadow/exempt/unkeyed */
    bool store_error;                     /* a store failed and on_error is deny: 503 */
    bool store_fallback;                  /* a store failed; on_error decided */
    int refuse_status;                    /* a body key could not be read: 400 or 413 */
    const char *refuse_reason;            /* ... and why (static text) */
    const char *content_type;             /* arena copy, for body keys (NULL: none) */
    size_t content_type_len;
    bool content_type_repeated; /* several Content-Type headers: ambiguous */
    struct tg_str query;        /* arena copy of the raw query, for form keys */
    const struct tg_config *cfg;
    const struct tg_addr *client;
    struct tg_arena *arena; /* the request's: body keys are kept there */
    struct tg_limiter_env *env;
    tg_limiter_done done;
    void *done_arg;
    unsigned pending; /* store calls in flight */
    struct tg_limiter_call calls[TG_LIMITER_NSTORES][3];
    /* Last: tg_limiter_prepare clears what is above and items[0..n). */
    struct tg_limiter_item items[TG_LIMITER_MAX_POLICIES];
};

/* The policies for a route: its own list, else its site's, else
 * rate_limit.global (an explicit empty list means none). */
const struct tg_config_policy_list *tg_limiter_policies(const struct tg_config *cfg,
                                                        const struct tg_config_route *r);

/* Sets up `lim` for a request: which policies apply, and the keys built
 * from `in` (views read now, keys kept in in->arena). Keys with a body part
 * are completed later by tg_limiter_take_body. `env` must outlive the
 * request. Returns 0, or -1 when memory ran out. */
/* The bytes a state needs for a list of `npolicies` policies (the items
 * array sized to them, not to the maximum). */
static inline size_t tg_limiter_state_size(size_t npolicies)
{
    if (npolicies > TG_LIMITER_MAX_POLICIES)
        npolicies = TG_LIMITER_MAX_POLICIES;
    return offsetof(struct tg_limiter_state, items) + npolicies * sizeof(struct tg_limiter_item);
}

int tg_limiter_prepare(struct tg_limiter_state *lim, const struct tg_limiter_input *in,
                       struct tg_limiter_env *env);

/* With the whole body (de-chunked) when `complete`, or the part of it that
 * fits the policies' max_peek otherwise: fills in the body parts. A part
 * that cannot be read unambiguously (absent, conflicting duplicates, a
 * Content-Type the part does not read, malformed, or the body larger than
 * max_peek) refuses the request: req->lim.refuse_status becomes 400 (413
 * for the size) with a reason, unless the policy says body_fallback: ip,
 * which charges the client address instead. */
void tg_limiter_take_body(struct tg_limiter_state *lim, const char *body, size_t len,
                          bool complete);

/* The largest max_peek of the policies still waiting for the body. */
size_t tg_limiter_peek_wanted(const struct tg_limiter_state *lim);

/* The hash of one key part of the request (upstream balance: hash), built
 * like a rate-limit key part (a missing part falls back to the client
 * address). Head parts only. */
uint64_t tg_limiter_hash_part(const struct tg_limiter_input *in,
                              const struct tg_config_rl_key_part *part);

/* Decides. Returns 0 when decided now (lim says how: limited, store_error,
 * delay_ns, report), or 1 when a store answers later: then done(arg) is
 * called from the loop once decided (never before this returns), unless
 * tg_limiter_cancel came first. Stores that answer at once are looked at
 * first, so a request they refuse costs the others nothing. Enforced
 * count: failures policies take their token here (a reservation). */
int tg_limiter_decide(struct tg_limiter_state *lim, tg_limiter_done done, void *arg);

/* The request goes away: store answers for it are dropped. */
void tg_limiter_cancel(struct tg_limiter_state *lim);

/* After the response status is known: a reserved failure token is given
 * back unless `status` is one of the policy's failure_statuses; shadow
 * failure policies are charged when it is. */
void tg_limiter_after_response(struct tg_limiter_state *lim, int status);

/* The request ends (any way). Reserved failure tokens of a request that
 * never reached the backend are given back; one that did and got no answer
 * keeps them (the password may have been tried). */
void tg_limiter_end(struct tg_limiter_state *lim);

/* Writes the rate-limit response headers for `lim` into out (each line
 * ending in CRLF): on a refusal, Retry-After plus RateLimit-Policy and
 * RateLimit; on an allowed response only when rate_limit.headers is on.
 * Returns the length written (0 if none or no room). */
size_t tg_limiter_headers(const struct tg_limiter_state *lim, char *out, size_t cap);

/* What a 429 says: the refusing policy's name ("" if none is known) and
 * the whole seconds until a request would pass (at least 1, the number
 * Retry-After carries). The name is the configuration's. */
const char *tg_limiter_refusal(const struct tg_limiter_state *lim, int64_t *retry_after_s);

/* Writes the access log's view of the keys charged: a JSON array of
 * {"policy":NAME,"key":HASH,"kind":KINDS[,"fallback":true]} where HASH is
 * 16 hex digits of a keyed hash of the key (stable for the life of the
 * process, never the key itself) and KINDS the policy's key parts as
 * written, joined with '|' ("ip", "ip|json:identity"). Returns the length
 * the array needs, as snprintf does (no terminator): 0 if no key was
 * charged; more than `cap` when it did not fit (then `out` holds part of
 * it). */
size_t tg_limiter_log_keys(const struct tg_limiter_state *lim, char *out, size_t cap);

/* The log hash of a store key (as tg_limiter_log_keys prints it). */
uint64_t tg_limiter_key_hash(const char *store_key, size_t n);

/* The local table's key for a policy's key (also used by the admin API). */
size_t tg_limiter_store_key(const char *policy, const char *key, size_t keylen, char *out,
                            size_t cap);

/* The admin API's look-up: turns what an operator types for a policy's key
 * (the value for a one-part key, the parts joined with '|' otherwise; an
 * address for ip parts; "~ADDRESS" for a part that fell back to the client)
 * into the key enforcement uses: addresses in canonical form and grouped
 * by client.ipv6_prefix, body values trimmed and case-folded, every value
 * escaped and long ones hashed. Returns the length, or 0 with a message in
 * `why` when the text cannot be a key of this policy. */
size_t tg_limiter_admin_key(const struct tg_config *cfg, const struct tg_config_policy *p,
                            const char *text, size_t n, char *out, size_t cap, const char **why);

/* Monotonic nanoseconds, the clock every local decision uses. */
int64_t tg_limiter_now_ns(void);

#endif
