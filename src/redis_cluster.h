/* Redis Cluster over redis.h's links, for the Redis users (rate-limit
 * store, tenant directory), on a worker's loop.
 *
 * With `cluster` in the config, it keeps a link (tg_redis: deadlines,
 * circuit breaker, reconnects) to every primary the slot map names and to
 * the seed nodes, and the map itself: 16384 hash slots, each served by
 * one primary, read with CLUSTER SLOTS from a node that answers (at
 * start, after MOVED, when a serving link goes down or a command on it
 * fails, and every few seconds). A command names the hash slot of its
 * keys (tg_redis_cluster_slot) and goes to the slot's primary; a MOVED
 * reply updates the map and sends it again to the node named, an ASK
 * sends ASKING and the command to the node named (once, without touching
 * the map), a TRYAGAIN sends it again a few ms later; all within the
 * command's one deadline and at most a few redirects, so a caller never
 * waits longer than the configured timeout.
 *
 * Without `cluster` it stands for the one server of `address`: one link,
 * every key in slot 0, commands handed straight to tg_redis_command (no
 * copy, no redirect handling), so users write one code path for both.
 *
 * Not here: commands whose keys span slots (callers split them: a
 * cluster refuses them), subscribe mode (redis_sub.h), replicas (reads
 * go to primaries). Loop thread only, like redis.h. */
#ifndef TG_REDIS_CLUSTER_H
#define TG_REDIS_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "redis.h"

#define TG_REDIS_CLUSTER_SLOTS 16384

struct tg_config_redis;
struct tg_redis_cluster;
struct tg_redis_cluster_cmd;

/* The hash slot Redis Cluster gives `key`: CRC16 (XMODEM) of the key, or
 * of its hash tag (what lies between the first '{' and the first '}'
 * after it, when that is not empty), modulo 16384. Pure; any thread. */
unsigned tg_redis_cluster_key_slot(const char *key, size_t len);

/* Creates the client. `opt` as for tg_redis_new: its tuning applies to
 * every node's link, `on_state` reports the visible state of the whole
 * (tg_redis_cluster_state), never from inside tg_redis_cluster_command.
 * Copies what it needs of `cfg` (cluster seeds or address, password, db,
 * timeout) and `opt`. Connecting starts on the loop's next iteration.
 * Returns NULL on allocation failure. Loop thread. */
struct tg_redis_cluster *tg_redis_cluster_new(struct ev_loop *loop,
                                              const struct tg_config_redis *cfg,
                                              const struct tg_redis_options *opt);

/* Applies a new config, copied. The timeout applies to commands sent from
 * now on. If the seeds (or address), password or db changed, or the
 * config switched between one server and a cluster, every link is
 * dropped (pending callbacks get NULL first, before this returns) and the
 * client starts afresh. Returns true if it did. Loop thread, not from
 * inside this client's callbacks. */
bool tg_redis_cluster_configure(struct tg_redis_cluster *cl, const struct tg_config_redis *cfg);

/* Calls every pending callback with NULL, then closes every link and
 * frees the client; no callback of it runs after it returns. From inside
 * one of its callbacks the final free waits until that callback returns.
 * NULL is a no-op. Loop thread. */
void tg_redis_cluster_free(struct tg_redis_cluster *cl);

/* One server's link (for reports: its Sentinel primary), NULL on a
 * cluster. */
const struct tg_redis *tg_redis_cluster_single(const struct tg_redis_cluster *cl);

/* True when configured with `cluster` (not one server). */
bool tg_redis_cluster_enabled(const struct tg_redis_cluster *cl);

/* The slot a command on `key` must name: tg_redis_cluster_key_slot on a
 * cluster, 0 for one server (whose keys need no hashing). */
unsigned tg_redis_cluster_slot(const struct tg_redis_cluster *cl, const char *key, size_t len);

/* Sends a command whose keys are all in `slot` to the node serving it;
 * argv, argvlen, timeout_ms, cb and arg as for tg_redis_command (the
 * arguments are copied before the call returns; timeout_ms <= 0 uses the
 * configured one, and bounds the whole exchange, redirects included). The
 * callback runs once, never before this returns: with the reply (MOVED,
 * ASK and TRYAGAIN are followed, not shown; other error replies are), or
 * with NULL when the command failed (deadline, lost connection, a
 * redirect to a node that is not connected, too many redirects, the
 * client freed). Its return value is as for tg_redis_reply_cb and counts
 * towards the serving link's circuit breaker. Returns a handle for
 * tg_redis_cluster_cancel, valid until the callback runs; or NULL, with
 * no callback, when it cannot be sent now: no node serves the slot, that
 * node's link is not UP (connecting, down, circuit open), the client is
 * being freed, or memory ran out. Loop thread. */
struct tg_redis_cluster_cmd *tg_redis_cluster_command(struct tg_redis_cluster *cl, unsigned slot,
                                                      int argc, const char *const *argv,
                                                      const size_t *argvlen, int64_t timeout_ms,
                                                      tg_redis_reply_cb cb, void *arg);

/* The caller lost interest: the callback will not run. Not from (or
 * after) that command's own callback. NULL is a no-op. Loop thread. */
void tg_redis_cluster_cancel(struct tg_redis_cluster *cl, struct tg_redis_cluster_cmd *c);

/* Writes what was sent so far on every link that has something to
 * write, as tg_redis_flush (callbacks of a link whose write fails run
 * with NULL before this returns). Loop thread. */
void tg_redis_cluster_flush(struct tg_redis_cluster *cl);

/* The whole: CONNECTING until the first slot map (or the one server's
 * first connection), UP when every slot is served by a link that is UP,
 * DOWN when some slot is not (a node unreachable, a map with holes),
 * CIRCUIT_OPEN for one server whose breaker is open. */
enum tg_redis_state tg_redis_cluster_state(const struct tg_redis_cluster *cl);

/* The state of the link that serves `slot` (DOWN when none does yet;
 * CONNECTING before the first map): whether a command for it would be
 * sent now. */
enum tg_redis_state tg_redis_cluster_slot_state(const struct tg_redis_cluster *cl, unsigned slot);

/* The default command timeout, in ms. */
int64_t tg_redis_cluster_timeout_ms(const struct tg_redis_cluster *cl);

struct tg_redis_cluster_stats {
    struct tg_redis_stats links; /* summed over every node's link */
    uint64_t moved;              /* MOVED replies followed */
    uint64_t asked;              /* ASK replies followed */
    uint64_t tryagain;           /* TRYAGAIN replies retried */
    uint64_t refreshes;          /* slot maps read */
    uint64_t refresh_failures;   /* CLUSTER SLOTS that failed or made no sense */
};
void tg_redis_cluster_stats(const struct tg_redis_cluster *cl, struct tg_redis_cluster_stats *out);

/* One node as /status shows it: `address` is borrowed until the client
 * next runs (a callback, a timer); `slots` is how many the map gives it
 * (a seed that serves none: 0). */
struct tg_redis_cluster_node {
    const char *address;
    enum tg_redis_state state;
    unsigned slots;
};

/* Fills up to `cap` nodes, returns how many there are (one for one
 * server, with all 16384 slots). Loop thread. */
size_t tg_redis_cluster_nodes(const struct tg_redis_cluster *cl, struct tg_redis_cluster_node *out,
                              size_t cap);

#endif
