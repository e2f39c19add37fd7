/* Where rate-limit buckets live, behind one interface: the in-process table
 * (ratelimit_local.c), Redis (ratelimit_redis.c), and the local share used
 * while Redis fails (the local table with each policy scaled to this
 * gateway's share of the fleet). The limiter calls these and never asks
 * which store it has; which store a policy uses, and what happens when a
 * store cannot answer, is decided in one place there (limiter.c). */
#ifndef TG_RATELIMIT_STORE_H
#define TG_RATELIMIT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ratelimit.h"

struct tg_ratelimit_local;
struct tg_ratelimit_redis;

/* One key of a decision. The limiter owns the memory; a store reads the
 * fields it needs and writes `result`. */
struct tg_ratelimit_key {
    const char *policy; /* policy name (part of a Redis key) */
    const char *key;    /* the key within the policy */
    size_t keylen;
    const char *store_key; /* policy, '\n', key: the local table's form */
    size_t store_keylen;
    struct tg_ratelimit_params params;
    int64_t cost;
    uint16_t cls;                      /* the policy's index: eviction class (local) */
    bool overflow;                     /* in: a refund of a take that was decided on the
                                  policy's overflow bucket (local) */
    struct tg_ratelimit_result result; /* out */
};

/* Asynchronous answer: status 0 with each key's result (results[i] for
 * keys[i], n of them) and whether all allowed (and spent, unless a peek);
 * status -1 when the store failed (nothing decided). Called from the
 * loop, never before the call that started it returns. */
typedef void (*tg_ratelimit_store_done)(void *arg, int status, bool allowed,
                                        const struct tg_ratelimit_result *results, size_t n);

enum tg_ratelimit_take {
    TG_RATELIMIT_DECIDED = 0, /* keys[i].result are set; the return of all-allowed in *allowed */
    TG_RATELIMIT_PENDING,     /* done() comes later; *pending is the handle for cancel */
    TG_RATELIMIT_FAULT,       /* the store cannot answer now: nothing was decided */
};

struct tg_ratelimit_store_ops {
    const char *name; /* "local", "redis", "share": for logs and the admin API */
    bool immediate;   /* take never answers PENDING */
    /* Decides keys together: all allowed and all spend, or none spends (a
     * peek spends nothing). A key named twice pays twice. */
    enum tg_ratelimit_take (*take)(void *impl, struct tg_ratelimit_key *keys, size_t n, bool peek,
                                   int64_t now_ns, bool *allowed, tg_ratelimit_store_done done,
                                   void *arg, void **pending);
    /* The request went away: done() is not called. */
    void (*cancel)(void *impl, void *pending);
    /* Gives back each key's cost (a reservation that did not count). Nobody
     * waits for it; a refund that cannot be made costs a token, never a lock. */
    void (*refund)(void *impl, struct tg_ratelimit_key *keys, size_t n, int64_t now_ns);
    /* Forgets a key (the bucket is full again). Returns TG_RATELIMIT_DECIDED with
     * *had set, TG_RATELIMIT_PENDING (done() with n = 0 later), or TG_RATELIMIT_FAULT. */
    enum tg_ratelimit_take (*reset)(void *impl, const struct tg_ratelimit_key *key, bool *had,
                                    tg_ratelimit_store_done done, void *arg);
};

struct tg_ratelimit_store {
    const struct tg_ratelimit_store_ops *ops;
    void *impl;
};

/* The three stores. `local` and `share` wrap the process-wide table,
 * `redis` a worker's Redis limiter (impl NULL when none: every take is then
 * a fault). The share store divides each policy's rate and burst by the
 * number of live gateways (tg_ratelimit_redis_gateways). Worker thread. */
void tg_ratelimit_store_local(struct tg_ratelimit_store *s, struct tg_ratelimit_local *t);
void tg_ratelimit_store_share(struct tg_ratelimit_store *s, struct tg_ratelimit_local *t);
void tg_ratelimit_store_redis(struct tg_ratelimit_store *s, struct tg_ratelimit_redis *r);

/* The share of a policy this gateway enforces alone: rate / N, burst / N
 * (rounded up) for N live gateways. */
struct tg_ratelimit_params tg_ratelimit_store_share_params(struct tg_ratelimit_params p);

#endif
