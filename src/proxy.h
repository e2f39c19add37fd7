/* One request's way through the gateway: route it, pick an upstream
 * connection, rewrite and send the head, stream the body both ways with
 * backpressure, rewrite the response head, tunnel after an upgrade, and
 * log it. Nothing here buffers a whole body: each direction has one buffer
 * and reading stops while the other side cannot take more.
 *
 * Runs on the worker that owns the client connection. */
#ifndef TG_PROXY_H
#define TG_PROXY_H

#include <stdbool.h>
#include <stdint.h>

#include <ev.h>

#include "addr.h"
#include "arena.h"
#include "http1.h"
#include "limiter.h"
#include "list.h"

struct tg_conn;
struct tg_worker;
struct tg_wcfg;
struct tg_buf;
struct tg_upconn;
struct tg_config_site;
struct tg_config_route;
struct tg_config_upstream;
struct tg_tenant;
struct tg_tenant_wait;
struct tg_client_chain;

/* Where a request stands. */
enum tg_request_phase {
    TG_REQ_ROUTING = 0,   /* deciding site/route/access */
    TG_REQ_TENANT,        /* waiting for the tenant directory */
    TG_REQ_PEEKING,       /* waiting for body bytes a rate-limit key needs */
    TG_REQ_LIMITING,      /* waiting for a shared rate-limit decision */
    TG_REQ_DELAYED,       /* held back by a policy's delay */
    TG_REQ_CONNECTING,    /* waiting for an upstream connection */
    TG_REQ_FORWARDING,    /* head/body going up, waiting for response head */
    TG_REQ_RESPONDING,    /* response head sent or being sent, body flowing */
    TG_REQ_TUNNEL,        /* after 101: bytes both ways */
    TG_REQ_LOCAL,         /* writing a locally made answer */
    TG_REQ_DONE,
};

struct tg_request {
    struct tg_conn *conn;           /* valid while the request runs */
    struct tg_worker *w;            /* the owning worker (outlives conn) */
    struct tg_wcfg *wcfg;           /* reference held for the request */
    struct tg_arena arena;          /* strings that outlive the head views */
    uint8_t phase;

    bool head_consumed;             /* head bytes dropped from conn->in */

    /* Copies for the response phase and the access log. */
    const char *method;
    const char *host;
    const char *path;               /* normalised, with ?query */
    size_t host_len, path_len;
    size_t route_path_len;          /* path without the query */
    size_t request_id_len;
    enum tg_http_method method_id;
    int minor_version;
    bool client_keep_alive;
    char request_id[65];
    struct tg_addr client;          /* identified client address */
    bool peer_trusted;              /* the socket peer is a trusted proxy */
    bool has_forwarded;             /* the head has X-Forwarded-For or Forwarded */
    struct tg_client_chain *chain;  /* from a trusted peer's headers (arena), or NULL */
    bool upgrade;                   /* client asked for a WebSocket upgrade */
    bool expect_continue;
    unsigned refs;                  /* the connection's + running callbacks' */
    size_t scratch_used;

    const struct tg_config_site *site;
    const struct tg_config_route *route;
    const struct tg_config_upstream *upstream;
    const char *tenant;             /* tenant id, when the site captures one */
    struct tg_tenant *tenant_obj;   /* the tenant found (referenced) */
    struct tg_tenant_wait *tenant_wait; /* a look-up in flight */
    uint64_t balance_hash;          /* balance: hash, the request's key */
    char country[3];                /* GeoIP country ("XX" unknown), "" if unused */
    uint32_t asn;
    bool in_flight_counted;         /* holds a route max_in_flight slot */
    const char *extra_headers;      /* local answers: extra header lines */
    const char *client_subject;     /* verified client certificate subject */
    ev_timer delay_timer;           /* rate-limit delay */

    /* Request body, client -> upstream. */
    uint8_t req_framing;            /* enum tg_http1_framing */
    uint64_t req_remaining;         /* LENGTH: body bytes not yet framed */
    struct tg_http1_chunked req_chunked;
    size_t req_ready;               /* framed body bytes at conn->in start */
    bool req_body_done;             /* every body byte has been framed */
    bool req_body_sent;             /* ... and written upstream */
    uint64_t req_body_bytes;

    /* Upstream side. */
    struct tg_upconn *up;
    const char *up_name;            /* server address, for logs */
    struct tg_buf *up_head;         /* the rewritten request head */
    size_t up_head_sent;
    uint64_t tried;                 /* servers tried (bitmask) */
    unsigned attempts;
    int server;                     /* index in upstream->servers */
    bool sent_body_bytes;           /* some body bytes left our buffer */
    bool up_write_failed;           /* the backend stopped taking the request */
    bool bad_head;                  /* refused head: the client's stream is unknown */
    struct tg_list upwait_link;     /* queued for a connection slot (worker's upwait) */
    ev_tstamp upwait_until;         /* ... until then (connect_timeout) */

    /* Response, upstream -> client. */
    size_t resp_scanned;
    bool resp_head_done;
    int status;
    struct tg_buf *out;             /* response head (or whole local answer) */
    size_t out_sent;
    uint8_t resp_framing;
    uint64_t resp_remaining;
    struct tg_http1_chunked resp_chunked;
    size_t resp_ready;              /* framed body bytes at up->in start */
    bool resp_body_done;
    bool resp_dechunk;              /* client is HTTP/1.0: strip chunking */
    bool resp_close_client;         /* client must be closed afterwards */
    bool stream;                    /* SSE or stream route: no read timeout */
    bool sse;                       /* text/event-stream: heartbeats apply */
    bool sse_draining;              /* end the stream at the next boundary */
    bool stream_counted;            /* holds a stream.max_per_ip slot */
    ev_tstamp rate_checked_at;      /* client.min_body_rate: last check */
    char sse_tail[3];               /* last data bytes sent, event boundary */
    uint64_t bytes_out;             /* to the client */
    uint64_t bytes_in;              /* from the client */

    /* Timing (ev_now). */
    ev_tstamp start;
    ev_tstamp up_start;
    ev_tstamp up_header_at;
    ev_tstamp client_write_at;      /* last successful write to client */
    ev_tstamp client_read_at;       /* last body read from client */
    ev_tstamp up_read_at;           /* last read from upstream */
    ev_tstamp up_write_at;

    struct tg_request *next_free;

    /* Not zeroed for a new request (see tg_proxy_request_new): the limiter
     * state is set up by tg_limiter_prepare when policies apply, and
     * scratch is used from scratch_used up. */
    struct tg_limiter_state lim;
    char scratch[1024];             /* small copies; the arena takes the rest */

    /* Large parser outputs last: a new request zeroes only what is above.
     * head: views into conn->in, valid until head_consumed. resp: views into
     * up->in, valid until the response head is consumed. */
    struct tg_http1_request head;
    struct tg_http1_response resp;
};

/* Starts proxying the request whose head was just parsed into req->head.
 * The connection has attached `req` (conn->req) and holds a reference to
 * it; the request ends with tg_conn_request_done, possibly before this
 * returns. */
void tg_proxy_start(struct tg_request *req);

/* The client socket is ready (revents EV_READ/EV_WRITE) while a request
 * runs. */
void tg_proxy_on_client_io(struct tg_request *req, int revents);

/* The connection's deadline passed while a request runs; the proxy decides
 * which of its timeouts it was, or returns a later deadline to wait for
 * (> now), or 0 when it handled the timeout. */
ev_tstamp tg_proxy_on_timeout(struct tg_request *req, ev_tstamp now);

/* The worker's upwait_kick watcher: requests queued at an upstream's
 * max_connections try again (upstream.c starts it when a slot frees). */
void tg_proxy_upwait_kick(struct ev_loop *loop, ev_prepare *w, int revents);

/* Answers a request whose head could not be accepted (400, 408, 414, 431,
 * ...) with a short body and Connection: close, logs it, and ends it. The
 * head may be incomplete or invalid: nothing of it is trusted. */
void tg_proxy_fail(struct tg_request *req, int status, const char *reason);

/* Answers the request with a complete local response (any thread-safe
 * content; the body is copied). Usable from callbacks. */
void tg_proxy_respond(struct tg_request *req, int status, const char *type, const char *body,
                      size_t len);

/* Aborts the request (client gone or connection closing): closes its
 * upstream connection and releases everything. Logs the request. */
void tg_proxy_abort(struct tg_request *req);

/* Drain started: streams end at the next event boundary after a retry hint. */
void tg_proxy_drain(struct tg_request *req);

/* Holding a request across an asynchronous call: the memory stays valid
 * until the matching unref even if the request ends meanwhile (check
 * tg_proxy_request_over before touching the connection). Worker thread. */
void tg_proxy_request_ref(struct tg_request *req);
void tg_proxy_request_unref(struct tg_request *req);
bool tg_proxy_request_over(const struct tg_request *req);

/* The first route of `site` whose pattern matches the normalised path
 * path[0..n) (without the query) and whose methods take the request's.
 * `folded` is tg_router_fold_path of the path when the site has an
 * ignore_case route (site->any_ignore_case), else NULL. */
const struct tg_config_route *tg_proxy_match_route(const struct tg_config_site *site,
                                                   enum tg_http_method id, struct tg_str method,
                                                   const char *path, size_t n,
                                                   const char *folded, size_t folded_n);

/* Gives back to the kernel the free request objects beyond the busiest
 * moment since the last call (and `reserve`). Worker thread. */
void tg_proxy_trim_free_list(struct tg_worker *w, size_t reserve);

/* Request objects come from a per-worker free list. */
struct tg_request *tg_proxy_request_new(struct tg_conn *c);
void tg_proxy_request_free(struct tg_request *req);

#endif
