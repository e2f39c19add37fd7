/* One Redis SUBSCRIBE connection on a worker's loop: connects (TCP or unix
 * socket), sends AUTH when configured, subscribes to one channel and hands
 * every message to its owner; after any loss it reconnects with backoff
 * and subscribes again.
 *
 * A subscribed connection takes no other commands (hiredis 0.14 routes
 * replies by mode), so this is separate from the command link of redis.h.
 * Messages are lost while the connection is down: owners must cope (the
 * subscribed callback tells them when a gap may have happened). A dead
 * peer that sends nothing is found by TCP keep-alive (hiredis: about 15 s
 * idle, then probes), not by pings on the idle connection. */
#ifndef TG_REDIS_SUB_H
#define TG_REDIS_SUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

struct tg_config_redis;
struct tg_redis_sub;

/* A message on the channel: `msg` (n bytes, not NUL-terminated) is
 * borrowed for the call. Runs on the loop. It may call
 * tg_redis_sub_free. */
typedef void (*tg_redis_sub_message_cb)(void *arg, const char *msg, size_t n);

/* The subscription is confirmed (true: messages flow from now on), or was
 * lost (false). Runs on the loop, never before tg_redis_sub_new returns.
 * It may call tg_redis_sub_free. */
typedef void (*tg_redis_sub_state_cb)(void *arg, bool subscribed);

/* Zero fields take the default in brackets. */
struct tg_redis_sub_options {
    const char *name;                   /* in log lines ["sub"], borrowed for new() */
    int64_t connect_timeout_ms;         /* TCP connect + AUTH + SUBSCRIBE [1000] */
    int64_t backoff_min_ms;             /* first reconnect delay [100] */
    int64_t backoff_max_ms;             /* doubling up to this [5000] */
    tg_redis_sub_message_cb on_message; /* required */
    tg_redis_sub_state_cb on_state;     /* may be NULL */
    void *arg;
};

/* Creates the connection and starts connecting on the loop's next
 * iteration. Copies what it needs of `cfg` (address, password; db does not
 * matter to pub/sub), `channel` and `opt`. A host name is resolved here
 * (blocking, once), as redis.h does. Returns NULL on allocation failure.
 * Loop thread. */
struct tg_redis_sub *tg_redis_sub_new(struct ev_loop *loop, const struct tg_config_redis *cfg,
                                      const char *channel, const struct tg_redis_sub_options *opt);

/* Applies a new address, password or channel: if any changed, the
 * connection is dropped (the state callback says false if it was
 * subscribed) and a new one started at once. Returns true if it
 * reconnected. Loop thread, not from inside this connection's callbacks. */
bool tg_redis_sub_configure(struct tg_redis_sub *s, const struct tg_config_redis *cfg,
                            const char *channel);

/* Closes the connection and frees everything; no callback runs after it
 * returns. NULL is a no-op. Loop thread (also from inside its callbacks). */
void tg_redis_sub_free(struct tg_redis_sub *s);

bool tg_redis_sub_subscribed(const struct tg_redis_sub *s);

struct tg_redis_sub_stats {
    uint64_t messages;   /* delivered to on_message */
    uint64_t subscribes; /* subscriptions confirmed */
    uint64_t losses;     /* subscriptions lost */
    uint64_t failures;   /* connect/AUTH/subscribe attempts that failed */
};
void tg_redis_sub_stats(const struct tg_redis_sub *s, struct tg_redis_sub_stats *out);

#endif
