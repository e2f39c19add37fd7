/* The store interface's three implementations: thin adapters over the
 * local table and the Redis limiter, and the local share (the local table
 * with each policy scaled to this gateway's part of the fleet). */
#include "ratelimit_store.h"

#include <string.h>

#include "ratelimit_redis.h"

/* ---- local ------------------------------------------------------------------ */

static void to_local_ops(struct tg_ratelimit_key *keys, size_t n,
                         struct tg_ratelimit_params *params, struct tg_ratelimit_op *ops)
{
    for (size_t i = 0; i < n; i++)
        ops[i] = (struct tg_ratelimit_op){.key = keys[i].store_key,
                                          .keylen = keys[i].store_keylen,
                                          .params = &params[i],
                                          .cost = keys[i].cost,
                                          .result = {.overflow = keys[i].overflow},
                                          .cls = keys[i].cls};
}

static enum tg_ratelimit_take local_decide(struct tg_ratelimit_local *t,
                                           struct tg_ratelimit_key *keys, size_t n, bool peek,
                                           int64_t now, bool *allowed, bool share)
{
    struct tg_ratelimit_op ops[TG_RATELIMIT_LOCAL_MAX_OPS];
    struct tg_ratelimit_params params[TG_RATELIMIT_LOCAL_MAX_OPS];
    if (n > TG_RATELIMIT_LOCAL_MAX_OPS)
        return TG_RATELIMIT_FAULT;
    for (size_t i = 0; i < n; i++)
        params[i] = share ? tg_ratelimit_store_share_params(keys[i].params) : keys[i].params;
    to_local_ops(keys, n, params, ops);
    bool all = true;
    if (peek)
        tg_ratelimit_local_peek(t, ops, n, now);
    else
        all = tg_ratelimit_local_take(t, ops, n, now);
    for (size_t i = 0; i < n; i++) {
        keys[i].result = ops[i].result;
        all &= ops[i].result.allowed;
    }
    *allowed = all;
    return TG_RATELIMIT_DECIDED;
}

static void local_refund_keys(struct tg_ratelimit_local *t, struct tg_ratelimit_key *keys, size_t n,
                              int64_t now, bool share)
{
    struct tg_ratelimit_op ops[TG_RATELIMIT_LOCAL_MAX_OPS];
    struct tg_ratelimit_params params[TG_RATELIMIT_LOCAL_MAX_OPS];
    if (n > TG_RATELIMIT_LOCAL_MAX_OPS)
        n = TG_RATELIMIT_LOCAL_MAX_OPS;
    for (size_t i = 0; i < n; i++)
        params[i] = share ? tg_ratelimit_store_share_params(keys[i].params) : keys[i].params;
    to_local_ops(keys, n, params, ops);
    tg_ratelimit_local_refund(t, ops, n, now);
}

static enum tg_ratelimit_take local_take(void *impl, struct tg_ratelimit_key *keys, size_t n,
                                         bool peek, int64_t now, bool *allowed,
                                         tg_ratelimit_store_done done, void *arg, void **pending)
{
    (void)done, (void)arg, (void)pending;
    return local_decide(impl, keys, n, peek, now, allowed, false);
}

static enum tg_ratelimit_take share_take(void *impl, struct tg_ratelimit_key *keys, size_t n,
                                         bool peek, int64_t now, bool *allowed,
                                         tg_ratelimit_store_done done, void *arg, void **pending)
{
    (void)done, (void)arg, (void)pending;
    return local_decide(impl, keys, n, peek, now, allowed, true);
}

static void local_cancel(void *impl, void *pending)
{
    (void)impl, (void)pending; /* nothing is ever pending */
}

static void local_refund(void *impl, struct tg_ratelimit_key *keys, size_t n, int64_t now)
{
    local_refund_keys(impl, keys, n, now, false);
}

static void share_refund(void *impl, struct tg_ratelimit_key *keys, size_t n, int64_t now)
{
    local_refund_keys(impl, keys, n, now, true);
}

static enum tg_ratelimit_take local_reset(void *impl, const struct tg_ratelimit_key *key, bool *had,
                                          tg_ratelimit_store_done done, void *arg)
{
    (void)done, (void)arg;
    *had = tg_ratelimit_local_reset(impl, key->store_key, key->store_keylen);
    return TG_RATELIMIT_DECIDED;
}

static const struct tg_ratelimit_store_ops local_ops = {
    "local", true, local_take, local_cancel, local_refund, local_reset,
};

/* The share is a fallback: what it decides is remembered in the same table
 * under the same keys (at the scaled rate), so a reset there resets both. */
static const struct tg_ratelimit_store_ops share_ops = {
    "share", true, share_take, local_cancel, share_refund, local_reset,
};

void tg_ratelimit_store_local(struct tg_ratelimit_store *s, struct tg_ratelimit_local *t)
{
    s->ops = &local_ops;
    s->impl = t;
}

void tg_ratelimit_store_share(struct tg_ratelimit_store *s, struct tg_ratelimit_local *t)
{
    s->ops = &share_ops;
    s->impl = t;
}

struct tg_ratelimit_params tg_ratelimit_store_share_params(struct tg_ratelimit_params p)
{
    int64_t share = tg_ratelimit_redis_gateways();
    if (share < 1)
        share = 1;
    p.interval_ns = p.interval_ns > INT64_MAX / share ? INT64_MAX / 2 : p.interval_ns * share;
    p.burst = (p.burst + share - 1) / share;
    return p;
}

/* ---- redis ------------------------------------------------------------------ */

static void to_redis_ops(const struct tg_ratelimit_key *keys, size_t n,
                         struct tg_ratelimit_redis_op *ops)
{
    for (size_t i = 0; i < n; i++)
        ops[i] = (struct tg_ratelimit_redis_op){keys[i].policy, keys[i].key, keys[i].keylen,
                                                keys[i].params, keys[i].cost};
}

static enum tg_ratelimit_take redis_take(void *impl, struct tg_ratelimit_key *keys, size_t n,
                                         bool peek, int64_t now, bool *allowed,
                                         tg_ratelimit_store_done done, void *arg, void **pending)
{
    (void)now, (void)allowed;
    struct tg_ratelimit_redis_op ops[TG_RATELIMIT_LOCAL_MAX_OPS];
    if (impl == NULL || n > TG_RATELIMIT_LOCAL_MAX_OPS)
        return TG_RATELIMIT_FAULT;
    to_redis_ops(keys, n, ops);
    struct tg_ratelimit_redis_pending *p = tg_ratelimit_redis_take(impl, ops, n, peek, done, arg);
    if (p == NULL)
        return TG_RATELIMIT_FAULT;
    *pending = p;
    return TG_RATELIMIT_PENDING;
}

static void redis_cancel(void *impl, void *pending)
{
    (void)impl;
    tg_ratelimit_redis_cancel(pending);
}

static void redis_refund(void *impl, struct tg_ratelimit_key *keys, size_t n, int64_t now)
{
    (void)now;
    struct tg_ratelimit_redis_op ops[TG_RATELIMIT_LOCAL_MAX_OPS];
    if (impl == NULL || n == 0 || n > TG_RATELIMIT_LOCAL_MAX_OPS)
        return;
    to_redis_ops(keys, n, ops);
    tg_ratelimit_redis_refund(impl, ops, n, NULL, NULL);
}

static enum tg_ratelimit_take redis_reset(void *impl, const struct tg_ratelimit_key *key, bool *had,
                                          tg_ratelimit_store_done done, void *arg)
{
    (void)had;
    if (impl == NULL ||
        tg_ratelimit_redis_reset(impl, key->policy, key->key, key->keylen, done, arg) < 0)
        return TG_RATELIMIT_FAULT;
    return TG_RATELIMIT_PENDING;
}

static const struct tg_ratelimit_store_ops redis_ops = {
    "redis", false, redis_take, redis_cancel, redis_refund, redis_reset,
};

void tg_ratelimit_store_redis(struct tg_ratelimit_store *s, struct tg_ratelimit_redis *r)
{
    s->ops = &redis_ops;
    s->impl = r;
}
