/* A request, whatever protocol brought it: what the client asked for, who
 * the client is, what was decided, and where its answer stands.
 *
 * A front end (HTTP/1 today, HTTP/2 next, a memory stream for `explain`,
 * tests and outbound calls) makes a request, fills what was asked, and
 * implements the client-stream interface below: the response head and body
 * go out through it, the request body comes in through it, and it keeps
 * the request's deadline. The request core never knows which front end it
 * has. Whoever produces the answer (the pipeline while it decides,
 * forward.c while the upstream answers, a local answer) hands the request
 * its hooks, and the front end's events reach that owner through them.
 *
 * Requests are reference-counted: the front end holds one, and every
 * callback holds one while it runs, so a request that ends inside a
 * callback is freed only when the callback returns. Worker thread only. */
#ifndef TG_REQUEST_H
#define TG_REQUEST_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <ev.h>
#include <openssl/ssl.h>

#include "addr.h"
#include "arena.h"
#include "http.h"
#include "limiter.h"
#include "list.h"
#include "tenant_metrics.h"

struct tg_context;
struct tg_wcfg;
struct tg_request;
struct tg_stream;
struct tg_client_chain;
struct tg_config_listen;
struct tg_config_site;
struct tg_config_route;
struct tg_config_upstream;
struct tg_tenant;
struct tg_tenant_wait;
struct tg_exchange;
struct tg_explain;
struct tg_request_enc;
struct tg_cache_req;

/* ---- the client-stream interface (front ends implement it) ------------- */

/* How a request's stream ends. */
enum tg_stream_end {
    TG_STREAM_DONE = 0, /* answer complete, body read: the connection may go on */
    TG_STREAM_CLOSE,    /* answer complete: close after it (the client may still
                           be sending: linger) */
    TG_STREAM_RESET,    /* broken: the client must not take what it got as
                           complete (close at once / reset the stream) */
};

/* send_head flags. */
#define TG_STREAM_NO_BODY \
    1u                      /* HEAD, 204, 304: no body follows (a length is
                                the representation's) */
#define TG_STREAM_TUNNEL 2u /* a 101: raw bytes both ways follow */
#define TG_STREAM_CLOSE 4u  /* close the connection after this answer */

struct tg_stream_ops {
    /* The response head: a final status (or a 101 with TG_STREAM_TUNNEL),
     * or an interim one (status < 200, which a front end may drop). `h` holds end-to-end fields only; the
     * front end adds its framing and connection fields: `length` is the
     * body length, -1 when unknown. Copies what it needs before returning.
     * Returns 0, or -1 (the stream is gone or memory ran out). */
    int (*send_head)(struct tg_stream *s, int status, const struct tg_http_headers *h,
                     int64_t length, unsigned flags);
    /* Body bytes, in order; `end` once the last ones are given (iovcnt may
     * be 0 then). Returns how many bytes it took (the rest is offered
     * again later: it calls tg_request_writable when it can take more), or
     * -1. Bytes it took are its own: the caller may reuse the memory. */
    ssize_t (*send_body)(struct tg_stream *s, const struct iovec *iov, int iovcnt, bool end);
    /* The request body received and not yet consumed, as up to `max`
     * spans (data only, no framing; after a 101, the tunnel's bytes).
     * *end says the body is complete: nothing follows what is given.
     * Returns the number of spans. */
    int (*body_peek)(struct tg_stream *s, struct iovec *iov, int max, bool *end);
    /* The first n body bytes of those spans are used up. */
    void (*body_consume)(struct tg_stream *s, size_t n);
    /* How many more body bytes the stream will hold before it stops
     * reading (0: full until some are consumed). */
    size_t (*body_room)(struct tg_stream *s);
    /* The request's header views (req->headers) are not read any more:
     * the front end may drop what they point into. */
    void (*head_done)(struct tg_stream *s);
    /* The stream's deadline: tg_request_timeout is called at or after it. */
    void (*set_deadline)(struct tg_stream *s, ev_tstamp when);
    /* The request is over; the stream ends as `how` says (after sending
     * what it holds). The request's reference is the core's to drop. */
    void (*finish)(struct tg_stream *s, enum tg_stream_end how);
};

/* What the request's current owner answers to. Any hook may be NULL (the
 * event is then ignored). on_abort: the owner loses the request (the
 * client went away, or the front end failed it): it lets go of what it
 * holds and answers nothing. */
struct tg_request_hooks {
    void (*on_body)(struct tg_request *req);     /* request body arrived or ended */
    void (*on_writable)(struct tg_request *req); /* the stream takes bytes again */
    /* A deadline passed: handle it, return the next one (0: none). */
    ev_tstamp (*on_timeout)(struct tg_request *req, ev_tstamp now);
    void (*on_abort)(struct tg_request *req); /* the client is gone */
    void (*on_drain)(struct tg_request *req); /* the gateway is draining */
};

/* ---- the request ------------------------------------------------------- */

/* Where a request stands. */
enum tg_request_phase {
    TG_REQ_DECIDING = 0, /* the pipeline runs (it may wait) */
    TG_REQ_FORWARDING,   /* forward.c: upstream exchange */
    TG_REQ_LOCAL,        /* writing a locally made answer */
    TG_REQ_DONE,
};

struct tg_request {
    struct tg_context *ctx; /* the worker's; outlives the request */
    struct tg_wcfg *wcfg;   /* reference held for the request */
    struct tg_arena arena;  /* everything the request copies */
    unsigned refs;
    uint8_t phase; /* enum tg_request_phase */

    const struct tg_stream_ops *stream_ops;
    struct tg_stream *stream;
    const struct tg_request_hooks *hooks;

    /* What was asked. Strings are arena copies (NUL-terminated); header
     * views point at the front end's bytes and stay valid only while
     * headers_valid (until the head is forwarded). */
    enum tg_http_method method_id;
    const char *method;
    const char *host; /* Host / :authority, as sent ("" if none) */
    size_t host_len;
    const char *path; /* normalised, with "?query" */
    size_t path_len;
    size_t route_path_len; /* path without the query */
    const char *query;     /* within path, after '?', or NULL */
    size_t query_len;
    const char *proto; /* "HTTP/1.1", "HTTP/1.0", "HTTP/2.0" (logs) */
    struct tg_http_headers headers;
    bool headers_valid;
    int64_t body_length;    /* -1 unknown length; 0 none */
    uint64_t body_received; /* body bytes the stream has taken in */
    bool upgrade_websocket; /* the client asks for a WebSocket tunnel */
    bool close_after;       /* the client will not reuse the connection */

    /* Who asked: the transport's facts, then who the client is. */
    const struct tg_config_listen *listener;
    struct tg_addr peer;           /* socket peer (or PROXY protocol source) */
    SSL *ssl;                      /* the TLS session, or NULL */
    bool https;                    /* the scheme is https (the client came over TLS) */
    struct tg_addr client;         /* identified client address */
    bool peer_trusted;             /* the socket peer is a trusted proxy */
    bool has_forwarded;            /* the head has X-Forwarded-For or Forwarded */
    struct tg_client_chain *chain; /* from a trusted peer's headers, or NULL */
    char country[3];               /* GeoIP country ("XX" unknown), "" if unused */
    uint32_t asn;
    const char *client_subject; /* verified client certificate subject */
    char request_id[65];
    size_t request_id_len;
    /* Arena copies of User-Agent and Referer (at most
     * TG_ACCESS_LOG_HEADER_MAX bytes), taken only when the access log
     * writes them; NULL otherwise or when absent. */
    const char *user_agent, *referer;
    /* W3C trace context (pipeline.c's identify fills it). */
    struct {
        uint8_t trace_id[16];
        uint8_t span_id[8];   /* the gateway's span (tracing enabled) */
        uint8_t parent_id[8]; /* the client's span, if it sent one */
        bool has_parent;      /* a valid traceparent came in */
        bool span;            /* the gateway has a span (tracing enabled) */
        bool sampled;         /* ... and it is recorded and exported */
        char parent_out[56];  /* traceparent toward the backend; "" none */
        const char *state;    /* tracestate toward the backend (arena), or NULL */
        size_t state_len;
    } trace;

    /* What was decided. */
    const struct tg_config_site *site;
    const struct tg_config_route *route;
    const struct tg_config_upstream *upstream;
    const char *tenant;                 /* tenant id, when the site captures one */
    struct tg_tenant *tenant_obj;       /* the tenant found (referenced) */
    struct tg_tenant_wait *tenant_wait; /* a look-up in flight */
    struct tg_tenant_mark tenant_mark;  /* where its per-tenant counts go */
    struct tg_list tenant_stream_link;  /* in ctx->tenant_streams while it streams */
    ev_tstamp drain_by;                 /* a drain of this request alone (its tenant
                                           moved) ends it by then; 0: none */
    uint64_t balance_hash;              /* balance: hash, the request's key */
    bool in_flight_counted;             /* holds a route max_in_flight slot */
    struct tg_limiter_state *lim;       /* arena; NULL when no policy applies */
    uint8_t step;                       /* the pipeline's next phase */
    uint8_t limits_step;                /* ... and where its limits phase stands */
    uint8_t wait;                       /* ... what it waits for, if it does */
    ev_tstamp wait_until;               /* ... and until when */
    struct tg_explain *explain;         /* a dry run (`tollgate explain`), or NULL */
    ev_timer delay_timer;               /* rate-limit delay */

    /* The answer. */
    int status;
    bool head_sent;            /* a final head went to the stream */
    bool answer_done;          /* ... and the end of its body */
    const char *extra_headers; /* local answers: extra "Name: value\r\n" lines */
    const char *local_body;    /* local answer bytes not yet taken */
    size_t local_left;
    bool close_client;          /* end the connection after the answer */
    struct tg_exchange *x;      /* forward.c, while forwarding (arena) */
    struct tg_cache_req *cache; /* a cacheable request on a cached route (arena), or NULL */
    const char *up_name;        /* server address, for logs */
    bool upstream_failed;       /* answered 502/504: no server gave an answer */
    uint64_t bytes_in;          /* from the client (head and body) */
    uint64_t bytes_out;         /* to the client */

    /* Response compression (request.c). */
    uint8_t enc_choice;         /* enum tg_encoding the client takes (tg_request_negotiate) */
    bool enc_offered;           /* the route compresses: eligible answers vary on it */
    bool compress_local;        /* an answer the gateway makes (a cache hit) is compressed
                                   as a forwarded one would be */
    bool precoded;              /* the body sent was compressed before (cache copies) */
    uint8_t encoding;           /* enum tg_encoding the body went out in */
    struct tg_request_enc *enc; /* while a compressed body runs (arena), else NULL */
    uint64_t bytes_plain;       /* body bytes before compression */
    uint64_t bytes_coded;       /* ... and after (bytes_out also counts heads, framing) */

    /* Timing (the context's clock). */
    ev_tstamp start;
    ev_tstamp up_start;
    ev_tstamp up_connected_at; /* the attempt's new connection was ready (TCP, TLS);
                                  0: a pooled connection, or none */
    ev_tstamp up_header_at;
    ev_tstamp client_read_at;  /* last request body bytes */
    ev_tstamp client_write_at; /* last bytes the stream took */

    struct tg_request *next_free;
};

/* A new request on the snapshot `wcfg` (the object from ctx's free list),
 * or NULL when memory ran out. Its one reference is its life: the request
 * ends through tg_request_end or tg_request_abort, which drop it (a front
 * end keeps a plain pointer until the stream's finish, or until it calls
 * tg_request_abort). */
struct tg_request *tg_request_new(struct tg_context *ctx, struct tg_wcfg *wcfg,
                                  const struct tg_stream_ops *ops, struct tg_stream *stream);

void tg_request_ref(struct tg_request *req);
void tg_request_unref(struct tg_request *req);

/* True once the request has ended (answer sent and logged, or aborted). */
static inline bool tg_request_over(const struct tg_request *req)
{
    return req->phase == TG_REQ_DONE;
}

/* Hands the request to a new owner: its events go to `hooks` from now on. */
void tg_request_set_hooks(struct tg_request *req, const struct tg_request_hooks *hooks);

/* ---- what front ends call (events of the stream) ----------------------- */

/* Request body bytes arrived (req->body_received counts them), or the
 * body ended. A body over the route's max_body fails the request (413). */
void tg_request_body(struct tg_request *req);
/* The front end cannot take the request body (invalid framing): the
 * owner lets go, and the client gets `status` if nothing was answered
 * yet, or the stream is reset. */
void tg_request_fail(struct tg_request *req, int status, const char *body);
void tg_request_writable(struct tg_request *req);
/* Returns the next deadline, or 0 for none. */
ev_tstamp tg_request_timeout(struct tg_request *req, ev_tstamp now);
/* The client is gone: the request ends now (logged as 499 unless an answer
 * was complete). The stream's finish is not called. */
void tg_request_abort(struct tg_request *req);
void tg_request_drain(struct tg_request *req);
/* The same for one request whose tenant moved (a stream): it is ended by
 * `by` at the latest. */
void tg_request_move(struct tg_request *req, ev_tstamp by);

/* ---- what owners call --------------------------------------------------- */

/* Answers with a complete local response: `status`, a short body of `type`
 * (copied), the request id, the extra header lines in req->extra_headers,
 * rate-limit headers and the route's response header rules. `close` asks
 * for the connection to be closed after it. The request ends when the
 * stream has taken it all. Usable from any callback. */
void tg_request_respond(struct tg_request *req, int status, const char *type, const char *body,
                        size_t len, bool close);
/* The same with fields of the answer's own in `own` (Content-Type among
 * them): the rules treat them as a backend's, so a configured header of
 * the same name is not added unless the rules `override` (an admin page's
 * Content-Security-Policy wins over a site-wide one). Views; the stream
 * copies them before this returns. */
void tg_request_respond_fields(struct tg_request *req, int status,
                               const struct tg_http_headers *own, const char *body, size_t len,
                               bool close);

/* A text/plain local answer. An error (status >= 400) whose body is
 * "NNN Reason: why\n" (or "NNN Reason\n") is written as the route's, else
 * the site's, `errors:` setting asks (tg_request_respond_error); before a
 * site is known, and for other bodies, as given. */
void tg_request_respond_text(struct tg_request *req, int status, const char *body, bool close);

/* An error answer of ours in the route's (else the site's, else text)
 * form: text "NNN Reason: why\n", JSON {"status":NNN,"error":"Reason",
 * "reason":"why",...,"message":"Reason: why.","data":{}} (message and
 * data: the shape PocketBase's SDKs read), or a small HTML page. `why`
 * may be NULL; `json_extra` (NULL for none) is ",\"name\":value" members
 * added to the JSON object. */
void tg_request_respond_error(struct tg_request *req, int status, const char *why,
                              const char *json_extra, bool close);

/* Whether a response to `req` may carry Strict-Transport-Security: it came
 * over TLS, its Host is a public DNS name (tg_router_public_name: never
 * localhost or an address), and the certificate the connection got is not
 * self-signed. Browsers ignore HSTS in the cases left out, or (localhost)
 * would pin every local service to HTTPS. */
bool tg_request_hsts(const struct tg_request *req);

/* Ends the request after its answer: the stream finishes as `how` says,
 * the request is logged, and its reference is dropped. */
void tg_request_end(struct tg_request *req, enum tg_stream_end how);

/* Re-arms the stream's deadline: the owner's next one (on_timeout's
 * answer for `now`, read again). */
void tg_request_arm(struct tg_request *req, ev_tstamp when);

/* Reads the client's Accept-Encoding for the route's `compress` settings
 * (req->route set, header views still valid): what tg_request_send_head
 * compresses with later. A no-op when the route does not compress. */
void tg_request_negotiate(struct tg_request *req);

/* Writes `status`'s head through the stream, with `h` and this request's
 * own fields (request id, rate-limit headers) appended by the caller. A
 * thin wrapper that keeps head_sent true. While forwarding, a final
 * answer the route compresses (tg_request_negotiate, docs/configuration.md
 * "Compression" for which) is sent compressed: its head gets
 * Content-Encoding and Vary, loses the length (sent as unknown) and a
 * strong ETag turns weak, and tg_request_send_body compresses the body. */
int tg_request_send_head(struct tg_request *req, int status, const struct tg_http_headers *h,
                         int64_t length, unsigned flags);

/* For an answer whose compressed bytes are made elsewhere (the response
 * cache keeps a copy per coding): the coding (enum tg_encoding) the client
 * gets for it, TG_ENC_IDENTITY when it takes none the route offers, or -1
 * when the route does not compress this answer (sent as it is). */
int tg_request_coding_for(struct tg_request *req, int status, const struct tg_http_headers *h,
                          int64_t length);

/* Sends the head of such an answer, whose `length` bytes (the coded ones,
 * or the identity ones for TG_ENC_IDENTITY) follow through
 * tg_request_send_body: with Vary, and when coded with Content-Encoding and
 * a weak ETag. `plain_len` is logged as the bytes before compression. */
int tg_request_send_coded_head(struct tg_request *req, int status, const struct tg_http_headers *h,
                               int coding, int64_t length, uint64_t plain_len, unsigned flags);

/* Sends body bytes through the stream; counts them. Returns how many of
 * the given bytes were taken (the rest is offered again after
 * tg_request_writable), or -1. A compressed body is compressed here: the
 * bytes taken are those the encoder took; its output waits in a buffer of
 * the request's until the stream takes it, and each call that takes all
 * it is given flushes the encoder (the caller had no more: the backend
 * paused), so what was given reaches the client now. */
ssize_t tg_request_send_body(struct tg_request *req, const struct iovec *iov, int iovcnt, bool end);

/* True while the body transform (compression) holds bytes the stream has
 * not taken, or has not given the stream the body's end that it was given:
 * the body is not complete yet, and tg_request_writable comes when the
 * stream takes more. Always false for a body sent as it is. */
bool tg_request_body_pending(const struct tg_request *req);

/* Copies a string into the request arena (NUL-terminated); NULL when
 * memory ran out. */
const char *tg_request_strdup(struct tg_request *req, const char *p, size_t n);

/* Frees request objects on the free list beyond the busiest moment since
 * the last call (and `reserve`). */
void tg_request_trim_free_list(struct tg_context *ctx, size_t reserve);
/* Frees every object on the free list (the worker stops). */
void tg_request_free_all(struct tg_context *ctx);

#endif
