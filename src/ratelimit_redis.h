/* Shared rate limits in Redis.
 *
 * Each worker owns one async hiredis connection on its own libev loop, so a
 * request waiting for Redis parks on the loop and nothing blocks; commands
 * issued in one loop iteration leave in one write (pipelining). One Lua
 * script (EVALSHA, sent whole again after NOSCRIPT) runs GCRA on Redis' own clock for
 * every key of a request at once: all spend or none; a second, smaller
 * one gives spends back (refund). Keys are
 * PREFIX{policy:key} and expire when their bucket would be full again. A key
 * (the client part) longer than TG_RATELIMIT_REDIS_KEY_MAX bytes is stored
 * as "#" and the 64 hex digits of its SHA-256, so a Redis key is at most
 * prefix + policy + 203 bytes, and the same long key maps to the same
 * bucket in every gateway (a hash, not a truncation: long keys sharing a
 * prefix do not share a bucket).
 *
 * Time is Redis' own (TIME, in microseconds), so gateways with skewed
 * clocks agree. The decision is tg_ratelimit_gcra's, exactly, on that
 * microsecond clock: an interval is rounded up to whole microseconds
 * (rates above 1e6/s become 1e6/s, never faster), and (burst + delay) *
 * interval is capped at 2^52 us (142 years) where the C core caps at
 * 2^62 ns, so that every value stays exact in Lua's doubles.
 *
 * Redis Cluster (`cluster` in the config, redis_cluster.h): a key's slot is
 * the hash of its {policy:key} tag, so a bucket lives on the same slot
 * whichever request names it, and one request's keys are usually on
 * several slots. A take is split into parts, one per slot; each part is
 * decided all-or-nothing by the script on its slot's node (the parts of
 * many takes on one slot share a script run, as above), and the take as a
 * whole stays all-or-nothing by compensation: when a part refuses, the
 * parts that allowed get their spends back (the refund script, sent at
 * once). A part whose node fails is reported per key (store_failed) while
 * the others stand, so the caller's on_error applies to those keys only.
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
#include "redis.h"
#include "redis_cluster.h"

struct tg_config_redis;

/* Client keys longer than this are hashed (see above). */
#define TG_RATELIMIT_REDIS_KEY_MAX 200

/* One key of a request's decision. Keys are copied by take(). */
struct tg_ratelimit_redis_op {
    const char *policy; /* policy name (part of the Redis key): a
                                 config identifier, no ':', '{' or '}' */
    const char *key;    /* the key within the policy */
    size_t keylen;
    struct tg_ratelimit_params params;
    int64_t cost;
};

/* Called once per take(), from the worker's loop, never before take()
 * returns. status 0: `results[i]` holds each op's outcome and `allowed`
 * says whether all passed (and spent; a peek spends nothing). On a
 * cluster, some results may say store_failed (their slot's node failed):
 * `allowed` then says whether every other key passed (and spent), and
 * when one refused, nothing stays spent. status -1: Redis failed for
 * every key (timeout, error or malformed reply, disconnect, the limiter
 * being freed); results is NULL, n 0; the caller applies on_error.
 * `results` is borrowed for the call. The callback may take, cancel other
 * pendings and reset; it must not free the limiter (mark its owner closing
 * and free it afterwards). */
typedef void (*tg_ratelimit_redis_cb)(void *arg, int status, bool allowed,
                                      const struct tg_ratelimit_result *results, size_t n);

struct tg_ratelimit_redis;
struct tg_ratelimit_redis_pending;

/* The limiter's state is its connection's: enum tg_redis_state in redis.h
 * (TG_REDIS_CONNECTING, _UP, _DOWN: disconnected, reconnect scheduled,
 * _CIRCUIT_OPEN: connected or not, we are not sending). */

/* Creates the worker's limiter; it connects from the loop (AUTH and SELECT
 * first when configured, then SCRIPT LOAD; on a cluster, to each primary
 * the slot map names, each loading the script with its first batch), so
 * takes return NULL until the state is UP (a cluster: while it has no
 * map; then a take on a slot whose node is down fails that slot). The config and `gateway_id` are copied; timeout_ms <= 0
 * means 50. `gateway_id` identifies this process in heartbeats (unique per
 * process); only one limiter per process (worker 0's) should have
 * `heartbeat` set: it then writes this gateway's presence every 2 s
 * (ZADD PREFIX{gateways} <now_ms + 10000> <id>, expired members removed,
 * ZCARD, in one script on Redis' clock) and publishes the count for
 * tg_ratelimit_redis_gateways(). Returns NULL on allocation failure.
 * Worker thread (the loop's). */
struct tg_ratelimit_redis *tg_ratelimit_redis_new(struct ev_loop *loop,
                                                  const struct tg_config_redis *cfg,
                                                  const char *gateway_id, bool heartbeat);

/* Applies a new config (address/password/db/prefix/timeout may change:
 * reconnects only if address, password or db changed; pending requests then
 * get status -1). The config is copied; prefix and timeout apply to
 * requests made from now on. Loop thread. */
void tg_ratelimit_redis_configure(struct tg_ratelimit_redis *r, const struct tg_config_redis *cfg);

/* Disconnects; pending callbacks are called with status -1 first, before
 * this returns. Cancelled pendings are not called. NULL is a no-op. Loop
 * thread, not from this limiter's callbacks. */
void tg_ratelimit_redis_free(struct tg_ratelimit_redis *r);

/* Decides `ops` all-or-nothing (peek: decide without spending). As in the
 * local store, ops are decided in order and a key named twice pays twice.
 * One server: atomically, in one script run. A cluster: atomically per
 * slot, and across slots by giving back what the allowing slots spent
 * when another refused (docs/rate-limiting.md, "Redis Cluster", says what
 * a concurrent request may see meanwhile). Returns a handle for cancel,
 * valid until the callback runs; or NULL, without a callback, when the
 * request cannot be sent right now (not connected, circuit open, no node
 * of its slots up, out of memory) or is invalid (nops 0 or above
 * TG_RATELIMIT_LOCAL_MAX_OPS, params out of range): the caller applies
 * on_error at once, without waiting. The reply is awaited at most the
 * configured timeout (a transparent resend after a NOSCRIPT reply, and a
 * cluster's redirects, stay within it). Loop thread. */
struct tg_ratelimit_redis_pending *tg_ratelimit_redis_take(struct tg_ratelimit_redis *r,
                                                           const struct tg_ratelimit_redis_op *ops,
                                                           size_t nops, bool peek,
                                                           tg_ratelimit_redis_cb cb, void *arg);

/* The request went away: its callback will not be called, even if the
 * reply arrives later; the handle is invalid after this. Parts not sent
 * yet are dropped; parts in flight still end (and a refusal among them
 * still gives back the others' spends). Not from (or after) that
 * pending's own callback. NULL is a no-op. Loop thread. */
void tg_ratelimit_redis_cancel(struct tg_ratelimit_redis_pending *p);

/* Deletes a key (admin "unlock this customer"); cb as for take with
 * n = 0, results NULL and allowed true. Returns 0, or -1 when it cannot be
 * sent now (as take's NULL): cb is then not called. Loop thread. */
int tg_ratelimit_redis_reset(struct tg_ratelimit_redis *r, const char *policy, const char *key,
                             size_t keylen, tg_ratelimit_redis_cb cb, void *arg);

/* Gives back spends (the undo of allowed takes: a failure budget reserved
 * before forwarding and returned when the answer was not a failure). For
 * each op in turn, on Redis' clock, as tg_ratelimit_gcra_refund: a key
 * whose TAT is after now gets max(tat - cost * interval, now), stored with
 * the same expiry as a take's, or deleted when that is not after now; a
 * missing key, or one holding something other than a TAT, is left alone
 * (its bucket is full; a key of another type is an error reply, status
 * -1). The interval is rounded up to whole microseconds as take does, so
 * a refund subtracts exactly what its take added. One small script, sent
 * whole (EVAL) the first time on a connection and once more after a
 * NOSCRIPT, else as EVALSHA; keys and stored values are take's, so
 * gateways without refunds share them. Ops are independent (no
 * all-or-nothing); a key named twice is refunded twice; of the params
 * only interval_ns is used (all are validated as for take). cb may be
 * NULL (fire and forget: nothing leaks either way); otherwise it is called
 * once, as reset's (status 0: n = 0, results NULL, allowed true; status
 * -1: timeout, error reply, lost connection, limiter freed), never before
 * this returns. On a cluster, keys of several slots go as one command per
 * slot, and status is -1 if any of them failed. Returns 0, or -1 when
 * nothing can be sent now (not connected, circuit open, out of memory,
 * invalid ops; nops 0 or above TG_RATELIMIT_LOCAL_MAX_OPS): cb is then not
 * called. Subject to the configured timeout and the circuit breaker like
 * every command. Loop thread. */
int tg_ratelimit_redis_refund(struct tg_ratelimit_redis *r, const struct tg_ratelimit_redis_op *ops,
                              size_t nops, tg_ratelimit_redis_cb cb, void *arg);

/* The state of the whole (redis_cluster.h: a cluster is UP when every
 * slot is served by a node that is up). */
enum tg_redis_state tg_ratelimit_redis_state(const struct tg_ratelimit_redis *r);

/* The store's link, for reports (/status): borrowed, the store's thread. */
const struct tg_redis *tg_ratelimit_redis_link(const struct tg_ratelimit_redis *r);

/* Its Redis client, for /status (tg_redis_cluster_nodes). Loop thread. */
const struct tg_redis_cluster *tg_ratelimit_redis_cluster(const struct tg_ratelimit_redis *r);

/* Gateways that wrote a heartbeat recently (this one included), >= 1:
 * the last count a heartbeat read, kept while Redis is unreachable, 1 if
 * none was ever read. Process-wide; any thread. */
unsigned tg_ratelimit_redis_gateways(void);

/* Counters for metrics (this limiter). Loop thread. */
struct tg_ratelimit_redis_stats {
    uint64_t round_trips;     /* replies received on the connection */
    uint64_t requests;        /* ops decided in Redis */
    uint64_t errors;          /* error replies, bad types or shapes */
    uint64_t timeouts;        /* commands whose deadline passed */
    uint64_t disconnects;     /* connections lost after being up */
    uint64_t short_circuited; /* takes, resets and refunds refused without
                                 sending: circuit open or not connected */
    /* Redis Cluster (zero for one server) */
    uint64_t split;            /* takes whose keys were on several slots */
    uint64_t partial;          /* ... some of whose slots could not be decided */
    uint64_t slot_refunds;     /* slots' spends given back as another slot refused */
    uint64_t moved, asked;     /* redirects followed */
    uint64_t tryagain;         /* commands sent again after TRYAGAIN */
    uint64_t refreshes;        /* slot maps read */
    uint64_t refresh_failures; /* slot map reads that failed */
};
void tg_ratelimit_redis_stats(const struct tg_ratelimit_redis *r,
                              struct tg_ratelimit_redis_stats *out);

#endif
