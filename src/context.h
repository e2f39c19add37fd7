/* What a worker lends the modules below it: its loop and clock, buffers,
 * counters, rate-limit stores, upstream pools, tenant directory, current
 * configuration snapshot and connection list. One per worker thread, and
 * only that thread touches it (the runtime part is process-wide and says
 * how each field is shared).
 *
 * The modules under the worker (connections, front ends, the request
 * pipeline, the upstream client) take a tg_context, never the worker: the
 * worker embeds one and lends it, so nothing down there calls back up into
 * worker.c. The loop's userdata is the context. */
#ifndef TG_CONTEXT_H
#define TG_CONTEXT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "addr.h"
#include "buf.h"
#include "limiter.h"
#include "list.h"

struct tg_config;
struct tg_context;
struct tg_conn;
struct tg_request;
struct tg_upstream_pools;
struct tg_access_log;
struct tg_ratelimit_local;
struct tg_ratelimit_redis;
struct tg_tenant_dir;
struct tg_metrics_shard;
struct tg_tenant_metrics;
struct tg_tenant_shared;
struct tg_iptable;
struct tg_http1_request;
struct tg_http1_response;
struct tg_cache;
struct tg_cache_purges;

/* State shared by all workers and the main thread that outlives config
 * snapshots. Read-only after start, or internally synchronised. */
struct tg_runtime {
    struct tg_context **workers; /* each worker's context (for scrapes) */
    unsigned nworkers;
    struct tg_iptable *iptable;          /* connections and streams per client */
    struct tg_ratelimit_local *rl_local; /* rate-limit buckets, all workers */
    _Atomic unsigned long nconns;        /* client connections, all workers */
    const char *config_path;
    _Atomic bool draining;
    struct tg_cache_purges *cache_purges;   /* response-cache purges from the admin
                                             listener, for every worker (cache.h) */
    struct tg_tenant_shared *tenant_shared; /* the tenant directory's last-known
                                               entries, all workers (tenant_shared.h) */
    char gateway_id[96];                    /* this process in Redis heartbeats */
    unsigned char request_id_seed[8];
    /* Peers warned about once per process (forwarding headers ignored on a
     * private-only route); each context's ring is a cache in front. */
    pthread_mutex_t warned_lock;
    struct tg_addr warned[64];
    unsigned nwarned;
};

/* A worker's view of one config snapshot. Requests hold a reference while
 * they run (a plain counter: only this worker touches it); the worker holds
 * one for as long as the snapshot is current. Per-worker state that belongs
 * to a snapshot (round-robin cursors) lives here. */
struct tg_wcfg {
    struct tg_config *config; /* one reference */
    struct tg_context *ctx;
    unsigned refs;
    unsigned *rr_cursor; /* per upstream: next server for round robin */
    /* Per route (by its counter): this worker's response cache, made on
     * first use (cache_serve.c). A reload starts empty ones: entries are
     * answers under the old routes' rules. */
    struct tg_cache **caches;
    size_t ncaches;
};

/* A socket event noted while libev runs a pass, served afterwards in the
 * order epoll reported it (tg_context_defer_io). */
struct tg_ready_io {
    ev_io *io; /* NULL once stopped (tg_context_io_stop) */
    int revents;
};

struct tg_context {
    unsigned id; /* the worker's number */
    struct ev_loop *loop;
    struct tg_runtime *rt;
    struct tg_wcfg *cfg; /* current snapshot */
    /* The clock every timeout reads; tests put their own here. */
    ev_tstamp (*clock)(const struct tg_context *ctx);

    struct tg_buf_pool bufs;
    struct tg_metrics_shard *metrics;
    struct tg_tenant_metrics *tenant_metrics; /* NULL: per-tenant metrics are off */
    struct tg_access_log *access_log;
    struct tg_limiter_env limiter;       /* stores and counts for rate limits */
    struct tg_ratelimit_redis *rl_redis; /* when a policy uses Redis */
    struct tg_tenant_dir *tenants;       /* when tenants use Redis */
    struct tg_upstream_pools *pools;
    unsigned static_tenant_rr; /* round robin for static tenants */
    /* Requests waiting for a connection slot (upstreams.max_connections),
     * oldest first; retried when a slot frees (forward.c). */
    struct tg_list upwait;
    /* Requests of a tenant that stream (SSE, WebSocket): a move of their
     * tenant ends them (tenant_moves.c). */
    struct tg_list tenant_streams;
    ev_prepare upwait_kick;

    bool draining;
    bool stopping;

    /* Client connections, for drain and counts; conn.c links them, and
     * calls conn_closed (the worker's) when one goes. */
    struct tg_list conns; /* of tg_conn.link */
    /* TLS handshakes suspended until ACME obtains their certificate
     * (accept.c's). */
    struct tg_list cert_waiters;
    size_t nconns;
    size_t nadmin_conns;
    void (*conn_closed)(struct tg_context *ctx);

    /* Request objects come from a free list (request.c). */
    struct tg_request *free_requests;
    size_t nfree_requests;
    size_t requests_in_use, requests_high_water; /* since the last trim */

    /* One parse result per worker: parsing is synchronous, and a request
     * keeps only the fields it uses (allocated on first use). */
    struct tg_http1_request *h1_request;
    struct tg_http1_response *h1_response;

    /* Warnings said once: forwarding headers from an unlisted private
     * proxy (a ring, before the process-wide list); PROXY headers from
     * untrusted peers (at most every 10 s). */
    struct tg_addr forwarded_warned[32];
    unsigned forwarded_nwarned;
    ev_tstamp proxy_refused_logged;

    /* Socket events of the current loop pass, noted while libev runs its
     * callbacks and then served oldest first (tg_context_defer_io). */
    bool collecting_io;
    struct tg_ready_io *ready;
    size_t nready, ready_cap;
};

/* Sets up the parts every context has (loop userdata, event order, buffer
 * pool, upwait list; the owner fills the rest). Returns 0 or -1. */
int tg_context_init(struct tg_context *ctx, unsigned id, struct ev_loop *loop,
                    struct tg_runtime *rt);
/* Frees what tg_context_init and the lazy parts allocated. */
void tg_context_fini(struct tg_context *ctx);

/* The context of a loop (its userdata). */
static inline struct tg_context *tg_context_of(struct ev_loop *loop)
{
    return (struct tg_context *)ev_userdata(loop);
}

/* Now, on the context's clock (ev_now unless a test set one). */
static inline ev_tstamp tg_context_now(const struct tg_context *ctx)
{
    return ctx->clock != NULL ? ctx->clock(ctx) : ev_now(ctx->loop);
}

/* The current snapshot, with a reference for the caller. */
struct tg_wcfg *tg_context_cfg_acquire(struct tg_context *ctx);
void tg_context_cfg_release(struct tg_wcfg *c);

/* The worker's parse results (allocated on first use; NULL when memory
 * ran out). */
struct tg_http1_request *tg_context_h1_request(struct tg_context *ctx);
struct tg_http1_response *tg_context_h1_response(struct tg_context *ctx);

/* tg_context_defer_io's slow path: grows the list, then notes the event. */
bool tg_context_note_io_grow(struct tg_context *ctx, ev_io *io, int revents);

/* Called first thing by the callbacks of client and upstream sockets: true
 * when the event was noted, to be served (the callback run again) in the
 * order epoll reported the sockets ready, once libev has run the pass. */
static inline bool tg_context_defer_io(struct tg_context *ctx, ev_io *io, int revents)
{
    if (!ctx->collecting_io)
        return false;
    if (ctx->nready == ctx->ready_cap)
        return tg_context_note_io_grow(ctx, io, revents);
    ctx->ready[ctx->nready++] = (struct tg_ready_io){io, revents};
    return true;
}

/* ev_io_stop, and forgets an event of `io` still waiting to be served. */
void tg_context_io_stop(struct ev_loop *loop, ev_io *io);

#endif
