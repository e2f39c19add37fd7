/* Finding a Redis primary through Sentinel, for the links of redis.h and
 * redis_sub.h (and their blocking connect).
 *
 * Discovery asks the configured sentinels in turn, each within the
 * connect timeout, `SENTINEL get-master-addr-by-name MASTER`, starting
 * with the one that answered last. The watch keeps one subscription to a
 * sentinel's `+switch-master` channel (the next sentinel after a loss),
 * so that its owner moves to a promoted replica within a round trip of
 * the sentinels' decision, without waiting for a fault. Each watch is one
 * idle TCP connection; a link has its own, on its own loop, so nothing
 * here is shared between threads.
 *
 * Sentinel addresses (host names too) are resolved when the object is
 * made, never later; the primary a sentinel names must be an IP address
 * (`announce-hostnames` is not followed: it would need a resolve per
 * failover on the loop). */
#ifndef TG_REDIS_SENTINEL_H
#define TG_REDIS_SENTINEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

struct tg_config_redis;
struct tg_redis_sentinel;

#define TG_REDIS_SENTINEL_IP_MAX 46 /* INET6_ADDRSTRLEN */

/* The answer to tg_redis_sentinel_discover: the primary's `ip` and
 * `port`, or ip NULL and `why` (no sentinel answered, or none knows the
 * master). Strings are borrowed for the call. Runs on the loop, never
 * from inside tg_redis_sentinel_discover; it may call
 * tg_redis_sentinel_discover again or tg_redis_sentinel_free. */
typedef void (*tg_redis_sentinel_found_cb)(void *arg, const char *ip, int port, const char *why);

/* The watch heard where the primary is: a +switch-master for our master,
 * or the sentinel's answer sent with each (re)subscription (so a switch
 * missed while the watch was down is caught up). Often the address the
 * owner already uses: it compares. Same rules as the found callback. */
typedef void (*tg_redis_sentinel_switch_cb)(void *arg, const char *ip, int port);

/* Zero fields take the default in brackets. */
struct tg_redis_sentinel_options {
    const char *name;                      /* in log lines ["sentinel"], borrowed */
    int64_t connect_timeout_ms;            /* per sentinel asked or watched [1000] */
    tg_redis_sentinel_found_cb on_found;   /* required */
    tg_redis_sentinel_switch_cb on_switch; /* NULL: no watch */
    void *arg;
};

/* Creates the object for cfg's sentinels, master and sentinel_password
 * (copied; cfg->nsentinels > 0), resolving the sentinels' host names
 * (blocking, once). The watch, if wanted, starts on the loop's next
 * iteration. Returns NULL on allocation failure or without sentinels.
 * Loop thread. */
struct tg_redis_sentinel *tg_redis_sentinel_new(struct ev_loop *loop,
                                                const struct tg_config_redis *cfg,
                                                const struct tg_redis_sentinel_options *opt);

/* Asks the sentinels where the primary is; exactly one on_found answers,
 * never before this returns. A call while a discovery is under way joins
 * it (one answer for both). Loop thread. */
void tg_redis_sentinel_discover(struct tg_redis_sentinel *s);

/* Whether a discovery is under way. */
bool tg_redis_sentinel_discovering(const struct tg_redis_sentinel *s);

/* Whether the watch is subscribed now. */
bool tg_redis_sentinel_watching(const struct tg_redis_sentinel *s);

/* Closes the connections and frees everything; no callback runs after it
 * returns. NULL is a no-op. Loop thread, also from inside its callbacks. */
void tg_redis_sentinel_free(struct tg_redis_sentinel *s);

/* Reads a +switch-master message, "NAME OLD-IP OLD-PORT NEW-IP NEW-PORT"
 * (`n` bytes): if NAME is `master` and the new address is an IP address
 * and a port, writes them (ip: TG_REDIS_SENTINEL_IP_MAX bytes) and
 * returns 0; else -1. */
int tg_redis_sentinel_parse_switch(const char *msg, size_t n, const char *master, char *ip,
                                   int *port);

/* The blocking discovery, for threads of their own that may wait (never a
 * loop's): asks cfg's sentinels in turn, each within connect_timeout_ms
 * (<= 0: 1000) for connecting and answering. Writes the primary's address
 * into ip (TG_REDIS_SENTINEL_IP_MAX bytes) and *port and returns 0, or -1
 * with the reason in err. Any such thread. */
int tg_redis_sentinel_discover_blocking(const struct tg_config_redis *cfg,
                                        int64_t connect_timeout_ms, char *ip, int *port, char *err,
                                        size_t errlen);

#endif
