/* Shared rate limits in Redis.
 *
 * Each worker owns one async hiredis connection on its own libev loop, so a
 * request waiting for Redis parks on the loop and nothing blocks; commands
 * issued in one loop iteration leave in one write (pipelining). One Lua
 * script (EVALSHA, reloaded on NOSCRIPT) runs GCRA on Redis' own clock for
 * every key of a request at once: all spend or none. Keys are
 * PREFIX{policy:key} (hash tags, so a future Redis Cluster keeps each key on
 * one shard) and expire when their bucket would be full again.
 *
 * Faults (timeouts, lost connection, error replies, wrong reply types,
 * -READONLY) are reported to the caller, which applies on_error; after
 * repeated faults a circuit breaker stops sending, so requests do not wait
 * at all, and a probe closes it again when Redis answers. Reconnects back
 * off exponentially with jitter. Each gateway process also writes a
 * heartbeat so every gateway knows how many share the budget (for the
 * rate/N local fallback). */
#ifndef TG_RATELIMIT_REDIS_H
#define TG_RATELIMIT_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "ratelimit.h"

struct tg_config_redis;

/* One key of a request's decision. Keys are copied by take(). */
struct tg_ratelimit_redis_op {
    const char *policy;       /* policy name (part of the Redis key) */
    const char *key;          /* the key within the policy */
    size_t keylen;
    struct tg_ratelimit_params params;
    int64_t cost;
};

/* Called once per take(), from the worker's loop, never before take()
 * returns. status 0: `results[i]` holds each op's outcome and `allowed`
 * says whether all passed (and spent). status -1: Redis failed (timeout,
 * error, disconnect); the caller applies on_error. */
typedef void (*tg_ratelimit_redis_cb)(void *arg, int status, bool allowed,
                                      const struct tg_ratelimit_result *results,
                                      size_t n);

struct tg_ratelimit_redis;
struct tg_ratelimit_redis_pending;

enum tg_ratelimit_redis_state {
    TG_REDIS_CONNECTING = 0,
    TG_REDIS_UP,
    TG_REDIS_DOWN,          /* disconnected, reconnect scheduled */
    TG_REDIS_CIRCUIT_OPEN,  /* connected or not, we are not sending */
};

/* Creates the worker's limiter and starts connecting. `gateway_id`
 * identifies this process in heartbeats (unique per process); only one
 * limiter per process (worker 0's) should have `heartbeat` set. Returns
 * NULL on allocation failure. Worker thread (the loop's). */
struct tg_ratelimit_redis *tg_ratelimit_redis_new(struct ev_loop *loop,
                                                  const struct tg_config_redis *cfg,
                                                  const char *gateway_id,
                                                  bool heartbeat);

/* Applies a new config (address/password/db/prefix/timeout may change:
 * reconnects if the connection parameters changed). The config is copied. */
void tg_ratelimit_redis_configure(struct tg_ratelimit_redis *r,
                                  const struct tg_config_redis *cfg);

/* Disconnects; pending callbacks are called with status -1 first. */
void tg_ratelimit_redis_free(struct tg_ratelimit_redis *r);

/* Decides `ops` atomically (peek: decide without spending). Returns a handle
 * for cancel, or NULL when the request cannot be sent right now (not
 * connected, circuit open): the caller applies on_error at once, without
 * waiting. At most TG_RATELIMIT_LOCAL_MAX_OPS ops. */
struct tg_ratelimit_redis_pending *tg_ratelimit_redis_take(
    struct tg_ratelimit_redis *r, const struct tg_ratelimit_redis_op *ops,
    size_t nops, bool peek, tg_ratelimit_redis_cb cb, void *arg);

/* The request went away: its callback will not be called. */
void tg_ratelimit_redis_cancel(struct tg_ratelimit_redis_pending *p);

/* Deletes a key (admin "unlock this customer"); cb as for take with n = 0. */
int tg_ratelimit_redis_reset(struct tg_ratelimit_redis *r, const char *policy,
                             const char *key, size_t keylen,
                             tg_ratelimit_redis_cb cb, void *arg);

enum tg_ratelimit_redis_state tg_ratelimit_redis_state(const struct tg_ratelimit_redis *r);

/* Gateways that wrote a heartbeat recently (this one included), >= 1.
 * Process-wide; any thread. */
unsigned tg_ratelimit_redis_gateways(void);

/* Counters for metrics (this limiter). */
struct tg_ratelimit_redis_stats {
    uint64_t round_trips;   /* replies received */
    uint64_t requests;      /* ops decided in Redis */
    uint64_t errors;        /* error replies, bad types */
    uint64_t timeouts;
    uint64_t disconnects;
    uint64_t short_circuited; /* takes refused while the breaker was open */
};
void tg_ratelimit_redis_stats(const struct tg_ratelimit_redis *r,
                              struct tg_ratelimit_redis_stats *out);

#endif
