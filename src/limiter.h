/* Request-level rate limiting: which policies apply to a request, the key
 * each one counts it under, the decision (all must allow), what is charged
 * after the response (count: failures), and the RateLimit headers.
 *
 * The maths is GCRA (ratelimit.c); the table is ratelimit_local.c (shared
 * by all workers) or Redis (ratelimit_redis.c); this module only decides
 * which keys and how the answers combine. */
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

/* One policy's key and outcome for a request. */
struct tg_limiter_item {
    const struct tg_config_policy *policy;
    struct tg_ratelimit_params params; /* the policy's, or the tenant's quota */
    const char *store_key;       /* request arena: policy name, '\n', key */
    size_t store_keylen;
    const char *key;             /* within store_key: without the policy name */
    size_t keylen;
    bool key_pending;            /* a json part waits for the body */
    char **parts;                /* while pending: each part's value, NULL for json */
    size_t *part_lens;
    struct tg_ratelimit_result result;
    bool decided;
};

/* One Redis round trip of a request (its policies of one kind). */
struct tg_limiter_call {
    struct tg_request *req;
    struct tg_ratelimit_redis_pending *pending;
    uint8_t kind;                /* enforce, failures (peek), shadow */
    uint8_t idx[TG_LIMITER_MAX_POLICIES];
    uint8_t n;
};

struct tg_limiter_state {
    size_t n;
    bool active;                 /* policies apply and the client is not exempt */
    bool needs_body;             /* some key waits for the body peek */
    bool limited;                /* refused: answer 429 */
    bool shadow_limited;         /* a shadow policy would have refused */
    const struct tg_limiter_item *report; /* what the headers describe */
    int64_t delay_ns;            /* hold the request this long (policy delay) */
    const char *outcome;         /* for the log: allowed/limited/shadow/exempt */
    bool store_error;            /* Redis failed and on_error is deny: 503 */
    bool redis_fallback;         /* Redis failed; decided by on_error */
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
 * request arena. Keys with a json part are completed later by
 * tg_limiter_take_body. Returns 0, or -1 when memory ran out. */
int tg_limiter_prepare(struct tg_request *req);

/* With the first body bytes (up to the largest max_peek, decoded): fills in
 * json parts (a missing field falls back to the client address). */
void tg_limiter_take_body(struct tg_request *req, const char *body, size_t len);

/* The hash of one key part of the request (upstream balance: hash), built
 * like a rate-limit key part (a missing part falls back to the client
 * address). Head views must still be valid. */
uint64_t tg_limiter_hash_part(struct tg_request *req, const struct tg_config_rl_key_part *part);

/* Decides. Returns 0 when decided now (req->lim says how: limited,
 * store_error, delay_ns, report), or 1 when Redis-backed policies wait for a
 * reply: then tg_proxy_limiter_done(req) is called from the loop once
 * decided (never before this returns), unless tg_limiter_cancel came
 * first. */
int tg_limiter_decide(struct tg_request *req);

/* The request goes away: Redis replies for it are dropped. */
void tg_limiter_cancel(struct tg_request *req);

/* After the response status is known: charges count: failures policies
 * whose failure_statuses include `status`. */
void tg_limiter_after_response(struct tg_request *req, int status);

/* Writes the rate-limit response headers for req->lim into out (each line
 * ending in CRLF): on a refusal, Retry-After plus RateLimit-Policy and
 * RateLimit; on an allowed response only when rate_limit.headers is on.
 * Returns the length written (0 if none or no room). */
size_t tg_limiter_headers(const struct tg_request *req, char *out, size_t cap);

/* The 429 body: a small JSON object. Returns its length. */
size_t tg_limiter_body(const struct tg_request *req, char *out, size_t cap);

/* The local table's key for a policy's key (also used by the admin API). */
size_t tg_limiter_store_key(const char *policy, const char *key, size_t keylen, char *out,
                            size_t cap);

/* Monotonic nanoseconds, the clock every local decision uses. */
int64_t tg_limiter_now_ns(void);

#endif
