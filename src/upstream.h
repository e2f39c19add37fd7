/* Upstream connections: per-worker keep-alive pools, one per backend
 * address, and server selection (round robin, least connections) with
 * passive health (a server that keeps failing is skipped for a while).
 *
 * Pools are keyed by address, not by config snapshot, so a reload keeps
 * every warm connection. Only the owning worker touches its pools. An
 * upstream whose servers include names takes them from the worker's view
 * of its resolver group (resolver.h): the addresses the names have now. */
#ifndef TG_UPSTREAM_H
#define TG_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <ev.h>

#include "io.h"
#include "list.h"

struct tg_context;
struct tg_wcfg;
struct tg_buf;
struct tg_config_upstream;
struct tg_config_server;
struct tg_server_set;

enum tg_upconn_state {
    TG_UPCONN_CONNECTING = 0,
    TG_UPCONN_HANDSHAKE, /* TLS to the server in progress */
    TG_UPCONN_ACTIVE,    /* owned by a request */
    TG_UPCONN_IDLE,      /* in its pool */
};

struct tg_pool;

struct tg_upconn {
    struct tg_io io;
    /* One watcher for the connection's whole life, in the pool and out of
     * it: moving between the two changes neither its callback nor (usually)
     * its events, so keep-alive reuse costs no epoll_ctl. */
    ev_io watcher;
    void (*on_io)(struct tg_upconn *uc, int revents); /* the owner's, while owned */
    uint8_t watching;                                 /* events armed */
    uint8_t state;                                    /* enum tg_upconn_state */
    bool reused;                                      /* came from the pool for this request */
    unsigned requests;                                /* requests sent on this connection */
    struct tg_pool *pool;
    void *owner;              /* the exchange using it while ACTIVE/CONNECTING */
    struct tg_buf *in;        /* response bytes; NULL while idle */
    ev_tstamp idle_expires;   /* while idle: when the pool closes it */
    struct tg_list idle_link; /* in the pool's idle list while idle */
};

/* Per-worker table of pools. */
struct tg_upstream_pools *tg_upstream_pools_new(void);
void tg_upstream_pools_free(struct tg_upstream_pools *p);

/* The servers a request to `u` chooses from, for as long as it runs: an
 * upstream of IP literals gives its own (*servers = u->servers; returns
 * NULL, nothing to release); one with names gives this worker's current
 * set of their addresses (refreshed when a name changed since; the idle
 * connections to addresses it lost are closed then) and returns it with a
 * reference for the caller (tg_server_set_unref). *n is 0 when out of
 * memory. Worker thread; no lock unless a name changed. */
struct tg_server_set *tg_upstream_servers(struct tg_context *w, const struct tg_config_upstream *u,
                                          const struct tg_config_server **servers, size_t *n);

/* Chooses one of `servers` (n, from tg_upstream_servers) of `u` for a new
 * attempt: skips servers whose bit is set
 * in `tried` (bit i = server i; servers past 64 are never skipped) and,
 * when others remain, servers ejected by passive health or marked down by
 * active checks. round_robin advances *cursor; least_conn takes the server
 * with the fewest connections in use here; hash takes the server with the
 * highest rendezvous score for `hash` (so a key stays on its server, and
 * only the keys of a server that goes away move). Returns the server
 * index, or -1 when none is left. */
int tg_upstream_pick(struct tg_context *w, unsigned *cursor, const struct tg_config_upstream *u,
                     const struct tg_config_server *servers, size_t n, uint64_t tried,
                     uint64_t hash);

/* Returns a connection to server `s` of `u` owned by `owner`: an idle
 * pooled one (state ACTIVE, reused = true) or a new non-blocking connect
 * in progress (state CONNECTING: wait for EV_WRITE, then call
 * tg_upstream_connected). The caller sets uc->on_io. Returns
 * NULL when the socket cannot be created or the server's connection cap is
 * reached (errno says which: EMFILE/ENFILE/ENOBUFS, or EBUSY for the cap). */
struct tg_upconn *tg_upstream_acquire(struct tg_context *w, const struct tg_config_upstream *u,
                                      const struct tg_config_server *s, void *owner);

/* Arms the connection's watcher for exactly `events`; does nothing when
 * they are already armed. */
void tg_upstream_watch(struct tg_upconn *uc, int events);

/* After EV_WRITE on a CONNECTING connection: returns 0 when connected (the
 * state becomes ACTIVE, or HANDSHAKE for a TLS upstream: then call
 * tg_upstream_handshake on each event), or -1 with errno set to the connect
 * error. */
int tg_upstream_connected(struct tg_upconn *uc, const struct tg_config_upstream *u);

/* Drives the TLS handshake with the server: 1 done (ACTIVE), 0 in progress
 * (uc->io.want_write says which event), -1 failed with *reason set. */
int tg_upstream_handshake(struct tg_upconn *uc, const struct tg_config_upstream *u,
                          const char **reason);

/* Gives a connection back. When `reusable` and the pool has room, it waits
 * idle in the pool for the next request (its buffer is returned); otherwise
 * it is closed. `u` supplies the pool limits. */
void tg_upstream_release(struct tg_upconn *uc, bool reusable, const struct tg_config_upstream *u);

/* Passive health: a failed attempt (connect error, timeout, reset before a
 * response, a 5xx with fail_on_5xx; `why` says which, for the log) or a
 * success for the connection's server. u->max_fails failures in a row
 * eject the server for u->eject_ms, doubling with each further failure up
 * to 30 s (max_fails 0: never). The error log gets one line when the
 * server goes down (max_fails failures in a row, 3 when max_fails is 0)
 * and one when it answers again, for the whole process (faultlog.h).
 * Returns true when this report ejected the server. */
bool tg_upstream_report(struct tg_upconn *uc, const struct tg_config_upstream *u, bool ok,
                        const char *why);

/* The address of the connection's server, for logs ("10.0.0.5:8080"). */
const char *tg_upstream_name(const struct tg_upconn *uc);

/* Closes idle connections older than their keep-alive timeout, and
 * brings the views of resolver groups up to date (dropping those of
 * groups gone). Called once a second by the worker. */
void tg_upstream_sweep(struct tg_context *w, ev_tstamp now);

/* Closes every idle connection (drain, stop). */
void tg_upstream_close_idle(struct tg_context *w);

/* What this worker knows of server `s` of `u`, for /status. */
struct tg_upstream_server_state {
    unsigned active, idle, fails;
    bool ejected;
};
void tg_upstream_server_state(struct tg_context *w, const struct tg_config_upstream *u,
                              const struct tg_config_server *s,
                              struct tg_upstream_server_state *out);

#endif
