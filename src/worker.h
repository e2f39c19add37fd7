/* Worker threads: one libev loop each, with its own SO_REUSEPORT listening
 * sockets, connections, buffers and upstream pools. A connection never
 * leaves the worker that accepted it, so the request path takes no locks.
 *
 * Other threads talk to a worker only through its mailbox (a locked queue
 * plus ev_async): new config snapshots with the listening sockets to add,
 * drain, stop. */
#ifndef TG_WORKER_H
#define TG_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "list.h"

#include <stdatomic.h>

#include "addr.h"
#include "buf.h"
#include "config.h"
#include "limiter.h"

struct tg_conn;
struct tg_upstream_pools;
struct tg_runtime;
struct tg_access_log;
struct tg_ratelimit_local;
struct tg_ratelimit_redis;
struct tg_tenant_dir;
struct tg_metrics_shard;

/* A worker's view of one config snapshot. Requests hold a reference while
 * they run (a plain counter: only this worker touches it); the worker holds
 * one for as long as the snapshot is current. Per-worker state that belongs
 * to a snapshot (round-robin cursors) lives here. */
struct tg_wcfg {
    struct tg_config *config;  /* one reference */
    struct tg_worker *worker;
    unsigned refs;
    unsigned *rr_cursor;       /* per upstream: next server for round robin */
};

/* One listening socket of this worker. */
struct tg_listener {
    struct tg_worker *w;
    int fd;
    ev_io io;
    char *key;                 /* canonical address, identity across reloads */
    const struct tg_config_listen *cfg; /* in the worker's current snapshot */
    struct tg_listener *next;
};

/* A message for a worker: the sockets given move into the worker. */
enum tg_worker_msg_type {
    TG_WORKER_MSG_CONFIG, /* swap to `config`; add `fds` for `keys` */
    TG_WORKER_MSG_DRAIN,  /* stop accepting, finish in-flight work */
    TG_WORKER_MSG_STOP,   /* close everything now and leave the loop */
};

struct tg_worker_msg {
    enum tg_worker_msg_type type;
    struct tg_config *config;  /* CONFIG: one reference, taken over */
    size_t nfds;
    int *fds;                  /* CONFIG: new listening sockets (malloc'd) */
    char **keys;               /* CONFIG: their canonical addresses */
    struct tg_worker_msg *next;
};

struct tg_worker {
    unsigned id;
    pthread_t thread;
    struct ev_loop *loop;
    struct tg_runtime *rt;

    struct tg_wcfg *cfg;       /* current snapshot */
    struct tg_listener *listeners;

    pthread_mutex_t mbox_lock;
    struct tg_worker_msg *mbox_head, *mbox_tail;
    ev_async mbox;

    struct tg_conn *conns;     /* all client connections (for drain) */
    size_t nconns;
    size_t nadmin_conns;       /* of which on the admin listener */
    bool draining;
    bool stopping;
    bool accept_paused;        /* EMFILE or max_connections: accept off */
    ev_timer accept_retry;
    ev_timer housekeeping;     /* once a second: pools, drain progress */

    struct tg_buf_pool bufs;
    struct tg_request *free_requests;
    size_t nfree_requests;
    size_t requests_in_use, requests_high_water; /* since the last trim */
    unsigned housekeeping_ticks;
    struct tg_upstream_pools *pools;
    struct tg_access_log *access_log;
    void (*on_exit)(void);     /* called on the worker thread as it ends */
    void (*on_drained)(void);  /* called once when a drain has finished here */
    bool drained;
    struct tg_ratelimit_redis *rl_redis; /* when a policy uses Redis */
    struct tg_tenant_dir *tenants;       /* when tenants use Redis */
    struct tg_metrics_shard *metrics;
    unsigned static_tenant_rr;           /* round robin for static tenants */
    struct tg_limiter_env limiter;       /* stores and counts for rate limits */
    /* Peers already warned about (once each): forwarded headers from a
     * private peer that trusted_proxies does not list; a small ring. */
    struct tg_addr forwarded_warned[32];
    unsigned forwarded_nwarned;
    ev_tstamp proxy_refused_logged;      /* last "PROXY from untrusted" line */
    /* Requests waiting for a connection slot (upstreams.max_connections),
     * oldest first; retried when a slot frees (proxy.c). */
    struct tg_list upwait;               /* of tg_request.upwait_link */
    ev_prepare upwait_kick;
    /* Socket events of the current loop pass, noted while libev runs its
     * callbacks and then served oldest first (tg_worker_defer_io). */
    bool collecting_io;
    struct tg_ready_io *ready;
    size_t nready, ready_cap;
};

struct tg_ready_io {
    ev_io *io;      /* NULL once stopped (tg_worker_io_stop) */
    int revents;
};

/* State shared by all workers and the main thread that outlives config
 * snapshots. Read-only after start, or internally synchronised. */
struct tg_runtime {
    struct tg_worker **workers;
    unsigned nworkers;
    struct tg_iptable *iptable;    /* connections and streams per client */
    struct tg_ratelimit_local *rl_local; /* rate-limit buckets, all workers */
    _Atomic unsigned long nconns;  /* client connections, all workers */
    const char *config_path;
    _Atomic bool draining;
    char gateway_id[96];           /* this process in Redis heartbeats */
    /* Peers warned about once per process (see worker.forwarded_warned, the
     * per-worker cache in front of it). */
    pthread_mutex_t warned_lock;
    struct tg_addr warned[64];
    unsigned nwarned;
    unsigned char request_id_seed[8];
};

/* Creates a worker with its loop; does not start the thread. Takes no
 * reference on `config` (the first CONFIG message delivers it). */
struct tg_worker *tg_worker_new(unsigned id, struct tg_runtime *rt);

/* Starts the worker thread. Returns 0 or -1. */
int tg_worker_start(struct tg_worker *w);

/* Queues a message (takes ownership of it and what it carries) and wakes
 * the worker. Any thread. */
void tg_worker_post(struct tg_worker *w, struct tg_worker_msg *msg);

/* Waits for the thread to end and frees the worker. */
void tg_worker_join_and_free(struct tg_worker *w);

/* Opens a listening socket for `l` with SO_REUSEPORT (so each worker has its
 * own and the kernel spreads connections). Returns the fd or -1 with a
 * message in err. Main thread. */
int tg_worker_open_listener(const struct tg_config_listen *l, char *err,
                            size_t errlen);

/* The worker's current snapshot, with a reference for the caller. */
struct tg_wcfg *tg_worker_cfg_acquire(struct tg_worker *w);
void tg_worker_cfg_release(struct tg_wcfg *c);

/* Called by a connection when it closes, so accept can resume if it was
 * paused for want of descriptors and drain can finish. */
void tg_worker_conn_closed(struct tg_worker *w);

/* tg_worker_defer_io's slow path: grows the list, then notes the event. */
bool tg_worker_note_io_grow(struct tg_worker *w, ev_io *io, int revents);

/* Called first thing by the callbacks of client and upstream sockets: true
 * when the event was noted, to be served (the callback run again) in the
 * order epoll reported the sockets ready, once libev has run the pass. */
static inline bool tg_worker_defer_io(struct tg_worker *w, ev_io *io, int revents)
{
    if (!w->collecting_io)
        return false;
    if (w->nready == w->ready_cap)
        return tg_worker_note_io_grow(w, io, revents);
    w->ready[w->nready++] = (struct tg_ready_io){io, revents};
    return true;
}

/* ev_io_stop, and forgets an event of `io` still waiting to be served. */
void tg_worker_io_stop(struct ev_loop *loop, ev_io *io);

#endif
