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

#include "ratelimit.h"

struct tg_request;
struct tg_ratelimit_redis_pending;
struct tg_config;
struct tg_config_route;
struct tg_config_policy;
struct tg_config_policy_list;
struct tg_config_rl_key_part;

/* At most this many policies apply to one request. */
#define TG_LIMITER_MAX_POLICIES 8

/* Where an item's tokens were spent (so a refund goes back there). */
enum tg_limiter_store_used {
    TG_LIMITER_SPENT_NONE = 0,
    TG_LIMITER_SPENT_LOCAL,
    TG_LIMITER_SPENT_REDIS,
    TG_LIMITER_SPENT_SHARE, /* the local share while Redis failed */
};

/* One policy's key and outcome for a request. */
struct tg_limiter_item {
    const struct tg_config_policy *policy;
    struct tg_ratelimit_params params; /* the policy's, or the tenant's quota */
    const char *store_key;       /* request arena: policy name, '\n', key */
    size_t store_keylen;
    const char *key;             /* within store_key: without the policy name */
    size_t keylen;
    bool key_pending;            /* a body part waits for the body */
    bool fallback;               /* some part was replaced by the client address */
    char **parts;                /* while pending: each head part's encoded value,
                                    NULL for body parts */
    size_t *part_lens;
    struct tg_ratelimit_result result;
    bool decided;
    bool reserved;               /* a failure token was taken before forwarding */
    uint8_t spent_in;            /* enum tg_limiter_store_used */
    struct tg_ratelimit_params spent_params; /* as spent (the share scales them) */
};

/* One Redis round trip of a request (its policies of one kind). */
struct tg_limiter_call {
    struct tg_request *req;
    struct tg_ratelimit_redis_pending *pending;
    uint8_t kind;                /* enforce (takes), peek, shadow */
    uint8_t idx[TG_LIMITER_MAX_POLICIES];
    uint8_t n;
};

struct tg_limiter_state {
    size_t n;
    bool active;                 /* policies apply and the client is not exempt */
    bool needs_body;             /* some key waits for the body */
    bool limited;                /* refused: answer 429 */
    bool shadow_limited;         /* a shadow policy would have refused */
    bool forwarded;              /* the request head went to the backend (set by
                                    the proxy): a reserved failure may have been
                                    tried */
    bool settled;                /* reserved failure tokens kept or refunded */
    const struct tg_limiter_item *report; /* what the headers describe */
    int64_t delay_ns;            /* hold the request this long (policy delay) */
    const char *outcome;         /* for the log: allowed/limited/shadow/exempt/unkeyed */
    bool store_error;            /* Redis failed and on_error is deny: 503 */
    bool redis_fallback;         /* Redis failed; decided by on_error */
    int refuse_status;           /* a body key could not be read: 400 or 413 */
    const char *refuse_reason;   /* ... and why (static text) */
    const char *content_type;    /* request arena copy, for body keys (NULL: none) */
    size_t content_type_len;
    bool content_type_repeated;  /* several Content-Type headers: ambiguous */
    unsigned pending;            /* Redis calls in flight */
    struct tg_limiter_call calls[3];
    /* Last: tg_limiter_prepare clears what is above and items[0..n). */
    struct tg_limiter_item items[TG_LIMITER_MAX_POLICIES];
};

/* The policies for a route: its own list, else its site's, else
 * rate_limit.global (an explicit empty list means none). */
const struct tg_config_policy_list *tg_limiter_policies(const struct tg_config *cfg,
                                                        const struct tg_config_route *r);

/* Builds the keys from the request head (views still valid) into the
 * request arena. Keys with a body part are completed later by
 * tg_limiter_take_body. Returns 0, or -1 when memory ran out. */
int tg_limiter_prepare(struct tg_request *req);

/* With the whole body (de-chunked) when `complete`, or the part of it that
 * fits the policies' max_peek otherwise: fills in the body parts. A part
 * that cannot be read unambiguously (absent, conflicting duplicates, a
 * Content-Type the part does not read, malformed, or the body larger than
 * max_peek) refuses the request: req->lim.refuse_status becomes 400 (413
 * for the size) with a reason, unless the policy says body_fallback: ip,
 * which charges the client address instead. */
void tg_limiter_take_body(struct tg_request *req, const char *body, size_t len, bool complete);

/* The largest max_peek of the policies still waiting for the body. */
size_t tg_limiter_peek_wanted(const struct tg_request *req);

/* The hash of one key part of the request (upstream balance: hash), built
 * like a rate-limit key part (a missing part falls back to the client
 * address). Head views must still be valid. Head parts only. */
uint64_t tg_limiter_hash_part(struct tg_request *req, const struct tg_config_rl_key_part *part);

/* Decides. Returns 0 when decided now (req->lim says how: limited,
 * store_error, delay_ns, report), or 1 when Redis-backed policies wait for a
 * reply: then tg_proxy_limiter_done(req) is called from the loop once
 * decided (never before this returns), unless tg_limiter_cancel came
 * first. Enforced count: failures policies take their token here (a
 * reservation). */
int tg_limiter_decide(struct tg_request *req);

/* The request goes away: Redis replies for it are dropped. */
void tg_limiter_cancel(struct tg_request *req);

/* After the response status is known: a reserved failure token is given
 * back unless `status` is one of the policy's failure_statuses; shadow
 * failure policies are charged when it is. */
void tg_limiter_after_response(struct tg_request *req, int status);

/* The request ends (any way). Reserved failure tokens of a request that
 * never reached the backend are given back; one that did and got no answer
 * keeps them (the password may have been tried). */
void tg_limiter_end(struct tg_request *req);

/* Writes the rate-limit response headers for req->lim into out (each line
 * ending in CRLF): on a refusal, Retry-After plus RateLimit-Policy and
 * RateLimit; on an allowed response only when rate_limit.headers is on.
 * Returns the length written (0 if none or no room). */
size_t tg_limiter_headers(const struct tg_request *req, char *out, size_t cap);

/* The 429 body: a small JSON object. Returns its length. */
size_t tg_limiter_body(const struct tg_request *req, char *out, size_t cap);

/* Writes the access log's view of the keys charged: a JSON array of
 * {"policy":NAME,"key":HASH[,"fallback":true]} where HASH is 16 hex
 * digits of a keyed hash of the key (stable for the life of the process,
 * never the key itself). Returns the length (0 if nothing or no room). */
size_t tg_limiter_log_keys(const struct tg_request *req, char *out, size_t cap);

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
                            const char *text, size_t n, char *out, size_t cap,
                            const char **why);

/* Monotonic nanoseconds, the clock every local decision uses. */
int64_t tg_limiter_now_ns(void);

#endif
