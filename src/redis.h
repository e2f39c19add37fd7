/* One asynchronous Redis connection on a worker's libev loop, shared by the
 * Redis users (rate-limit store, tenant directory).
 *
 * It connects (TCP or unix socket, or the primary that Redis Sentinel
 * names: see redis_sentinel.h), sends AUTH and SELECT when configured,
 * keeps a deadline per command (hiredis 0.14 has none), counts consecutive
 * faults into a circuit breaker, and reconnects with exponential backoff and
 * jitter. Users send a command as argv + lengths and get exactly one
 * callback. Commands sent in one loop iteration leave in one write: hiredis
 * buffers them until the socket's write event (pipelining).
 *
 * Everything here runs on the loop's thread; nothing blocks, except that a
 * host name (not an IP address) is resolved once, when the link is created
 * or reconfigured, never per reconnect or per command. The one exception
 * is tg_redis_connect_blocking, for threads of their own that may wait. */
#ifndef TG_REDIS_H
#define TG_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

struct redisReply;   /* <hiredis/hiredis.h>, for users that read replies */
struct redisContext; /* ... and a blocking connection's context */
struct tg_config_redis;
struct tg_redis;
struct tg_redis_cmd;

/* What users see. Reconnect attempts after a failure stay DOWN (so the
 * state, and the log, change once per outage, not once per attempt). */
enum tg_redis_state {
    TG_REDIS_CONNECTING = 0, /* first connection (or after reconfiguring,
                                or moving to a new Sentinel primary) */
    TG_REDIS_UP,             /* commands are sent */
    TG_REDIS_DOWN,           /* disconnected, reconnect scheduled */
    TG_REDIS_CIRCUIT_OPEN,   /* connected or not, we are not sending */
};

/* A command's one callback. `reply` is NULL when the command failed: its
 * deadline passed, the connection was lost or dropped, or the link is being
 * freed; the return value is then ignored. Otherwise `reply` is borrowed
 * for the call (hiredis frees it afterwards) and may be any type, error
 * replies included: the callback returns 0 if the reply was usable, -1 if
 * it is a fault (an error reply such as -READONLY or -LOADING, a wrong type
 * or shape), which counts towards the circuit breaker like a timeout.
 * Runs on the loop. It may send commands and cancel others; it must not
 * free or reconfigure this link (its owner's callback is running: mark the
 * owner closing and free it afterwards) -- tg_redis_free is nevertheless
 * safe there, as the free is deferred until the callback returns. */
typedef int (*tg_redis_reply_cb)(void *arg, const struct redisReply *reply);

/* The visible state changed (old != state). Runs on the loop, never from
 * inside tg_redis_command. May send commands (when UP: they go before any
 * other user's commands, e.g. SCRIPT LOAD). */
typedef void (*tg_redis_state_cb)(void *arg, enum tg_redis_state old, enum tg_redis_state state);

/* Zero fields take the default in brackets. */
struct tg_redis_options {
    const char *name;           /* in log lines ["redis"], borrowed for new() */
    int64_t connect_timeout_ms; /* TCP connect + AUTH/SELECT/PING [1000] */
    unsigned breaker_faults;    /* consecutive faults opening the circuit [5] */
    int64_t backoff_min_ms;     /* first reconnect / probe delay [100] */
    int64_t backoff_max_ms;     /* doubling up to this [5000] */
    int64_t dead_ms;            /* a command unanswered this long (even after
                                   its timeout) means the link is dead and is
                                   dropped [max(10 * timeout, 1000)] */
    tg_redis_state_cb on_state; /* may be NULL */
    void *arg;
};

/* Creates the link, CONNECTING: the first attempt starts on the loop's
 * next iteration, so the state callback never runs before the caller has
 * the pointer. Copies what it needs of `cfg` (address or sentinels and
 * master, password, db, timeout_ms: <= 0 means 50) and `opt`. A host
 * name (a sentinel's too) is resolved here (blocking, once; IPv4
 * preferred, as hiredis does); if that fails it is retried at each
 * reconnect attempt. Returns NULL on allocation failure. A malformed
 * address is logged and leaves the link DOWN until reconfigured.
 *
 * With sentinels, every connect after a fault first asks them where the
 * primary is, and the handshake checks ROLE is "master"; a -READONLY
 * reply and the circuit opening drop the connection (so the next attempt
 * asks again); a +switch-master from the sentinel the link watches moves
 * it to the new primary at once (commands in flight get NULL). While no
 * primary answers, the link is DOWN, as for an unreachable address.
 * Loop thread. */
struct tg_redis *tg_redis_new(struct ev_loop *loop, const struct tg_config_redis *cfg,
                              const struct tg_redis_options *opt);

/* Applies a new config, copied. The timeout applies to commands sent from
 * now on. If the server changed (tg_redis_config_same_server says not the
 * same), the connection is dropped
 * (pending callbacks get NULL first) and a new one started at once; the
 * circuit breaker and backoff start afresh. Returns true if it reconnected.
 * Loop thread; from inside this link's callbacks the drop waits until the
 * callback returns. */
bool tg_redis_configure(struct tg_redis *r, const struct tg_config_redis *cfg);

/* Calls every pending callback with NULL (commands sent from those
 * callbacks are refused), then closes the connection and frees the link.
 * No callback of this link runs after it returns, the state callback
 * included. From inside one of its reply callbacks the final free waits
 * until that callback returns. NULL is a no-op. Loop thread. */
void tg_redis_free(struct tg_redis *r);

/* Sends one command: argv[i] has argvlen[i] bytes (binary-safe), copied
 * before the call returns. timeout_ms <= 0 uses the link's. Returns a
 * handle for tg_redis_cancel, valid until the callback runs or cancel is
 * called; or NULL, without calling back, when the command cannot be sent
 * now: the state is not UP (circuit open: no waiting at all), the link is
 * being freed, or memory ran out. The callback never runs before this
 * returns. Subscribe-mode commands (SUBSCRIBE, MONITOR) are not supported:
 * they reply more than once. Loop thread. */
struct tg_redis_cmd *tg_redis_command(struct tg_redis *r, int argc, const char *const *argv,
                                      const size_t *argvlen, int64_t timeout_ms,
                                      tg_redis_reply_cb cb, void *arg);

/* The caller lost interest: the callback will not run, even if the reply
 * arrives later. The command stays accounted (its memory is freed when its
 * reply arrives or the connection closes); its deadline passing no longer
 * counts as a fault. Loop thread. */
void tg_redis_cancel(struct tg_redis_cmd *c);

/* Writes the commands sent so far to the server now, rather than when
 * the loop next finds the socket writable: a batch goes out a loop
 * iteration sooner, and hiredis' write watcher is started and stopped
 * within one iteration (no epoll_ctl). If the write fails, the callbacks
 * of the link's commands run (with NULL) before this returns, so call it
 * when nothing of the caller's is half done. Loop thread. */
void tg_redis_flush(struct tg_redis *r);

enum tg_redis_state tg_redis_state(const struct tg_redis *r);

/* The default command timeout, in ms. */
int64_t tg_redis_timeout_ms(const struct tg_redis *r);

/* Where commands go: the configured address; with sentinels, the primary
 * they named last ("ip:port", "[v6]:port"; "" before any). Borrowed
 * until the link's next callback or call. Loop thread. */
const char *tg_redis_server(const struct tg_redis *r);

/* Whether the link finds its server through sentinels. */
bool tg_redis_uses_sentinels(const struct tg_redis *r);

struct tg_redis_stats {
    uint64_t sent;        /* commands handed to hiredis, internal included */
    uint64_t replies;     /* replies received, late ones included */
    uint64_t faults;      /* timeouts, lost replies, failed connects, replies
                              the callback called a fault */
    uint64_t timeouts;    /* commands whose deadline passed */
    uint64_t disconnects; /* connections lost or dropped after being up */
    uint64_t refused;     /* tg_redis_command calls refused (not UP) */
    uint64_t connects;    /* connections that completed the handshake */
};
void tg_redis_stats(const struct tg_redis *r, struct tg_redis_stats *out);

/* Parses "host:port", "[v6]:port" or "unix:/path" (what config accepts).
 * Writes the host (without brackets) or path into `host` and returns 0,
 * or -1 if malformed or too long; *port is 0 for unix paths. */
int tg_redis_parse_address(const char *address, char *host, size_t hostsize, int *port,
                           bool *is_unix);

/* A blocking connection, for a thread of its own that may wait (never a
 * loop's, never a worker's): connects to cfg's address (TCP or unix
 * socket; a host name is resolved, blocking), or to the primary cfg's
 * sentinels name (asked in turn, each within connect_timeout_ms; ROLE
 * must say "master" once connected), within connect_timeout_ms
 * (<= 0: 1000), makes cfg->timeout_ms (<= 0: 50) every command's deadline,
 * sends AUTH and SELECT when configured, and refuses reply arrays larger
 * than the async link accepts. A command that fails (NULL reply, c->err
 * set) leaves the context unusable: redisFree it and connect again.
 * Returns the context (the caller redisFrees it), or NULL with the reason
 * in `err`. Any such thread. */
struct redisContext *tg_redis_connect_blocking(const struct tg_config_redis *cfg,
                                               int64_t connect_timeout_ms, char *err,
                                               size_t errlen);

/* Copies of a redis config for what outlives its snapshot (a link, a
 * thread of its own): every string and the sentinel list malloc'd.
 * Returns NULL when memory ran out. tg_redis_config_free wipes the
 * passwords; NULL is a no-op. Any thread. */
struct tg_config_redis *tg_redis_config_dup(const struct tg_config_redis *cfg);
void tg_redis_config_free(struct tg_config_redis *c);

/* Whether a and b reach the same server the same way: address, or the
 * same sentinels (in order), master and sentinel password; password and
 * db. The timeout and key prefix do not count. */
bool tg_redis_config_same_server(const struct tg_config_redis *a, const struct tg_config_redis *b);

/* How log lines name cfg's server: its address, or "the primary of NAME
 * (via N sentinels)". Written into buf (n bytes), which it returns. */
const char *tg_redis_config_describe(const struct tg_config_redis *cfg, char *buf, size_t n);

#endif
