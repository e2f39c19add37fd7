/* Header rules: the request head sent upstream (hop-by-hop fields out,
 * X-Forwarded-*, X-Real-IP, X-Request-Id in, the configured request rules)
 * and the response fields sent to the client (hop-by-hop out, Server and
 * X-Powered-By out, security and configured headers in).
 *
 * The response side produces a header vector, which each front end
 * serialises its own way (HTTP/1.1 text, HTTP/2 HPACK); framing and
 * connection fields are the front end's. The upstream side writes HTTP/1.1
 * text, the one protocol the upstream client speaks. Values were validated
 * by the parsers (no CR, LF or NUL), so nothing copied here can split a
 * header. Inputs are narrow structs: this module reads no request or
 * connection. */
#ifndef TG_HEADERS_H
#define TG_HEADERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"
#include "arena.h"
#include "http.h"
#include "str.h"

struct tg_buf;
struct tg_client_chain;
struct tg_config_headers;
struct tg_limiter_state;

/* What the upstream request head is made of. */
struct tg_headers_upstream {
    struct tg_str method;
    struct tg_str path;                   /* normalised, with "?query" */
    struct tg_str host;                   /* the client's Host */
    const struct tg_http_headers *fields; /* the client's fields */
    const struct tg_config_headers *rules;
    int64_t body_length;                 /* > 0 Content-Length, -1 chunked, 0 none */
    bool upgrade;                        /* forward the WebSocket Upgrade */
    bool tls;                            /* the client came over TLS */
    const struct tg_addr *peer;          /* the socket peer */
    const struct tg_addr *client;        /* the identified client */
    const struct tg_client_chain *chain; /* trusted hops, or NULL */
    struct tg_str request_id;
    /* Trace context to send (the client's own fields never go through:
     * the pipeline validated and rebuilt them); empty: none. */
    struct tg_str traceparent;
    struct tg_str tracestate;
    const char *subject_header; /* listener's client_subject_header, or NULL */
    const char *subject;        /* the verified subject, or NULL */
    const char *geo_header;     /* geoip.header, or NULL */
    const char *tenant_header;  /* the site's tenant_header, or NULL */
    const char *tenant;         /* ... and the request's tenant, or NULL */
    const char *country;        /* two letters ("XX" unknown) */
};

/* Appends the HTTP/1.1 request head for `in` to `b`. Returns 0, or -1 if
 * `b` is too small. */
int tg_headers_upstream_request(struct tg_buf *b, const struct tg_headers_upstream *in);

/* What a response's fields are made of. */
struct tg_headers_response {
    const struct tg_config_headers *rules;
    bool hsts;                          /* the HTTPS-only rule (Strict-Transport-Security) applies:
                  see tg_request_hsts */
    struct tg_str request_id;           /* sent as X-Request-Id */
    const struct tg_limiter_state *lim; /* rate-limit fields, or NULL */
    const char *extra;                  /* "Name: value\r\n" lines, or NULL */
    bool keep_upgrade;                  /* a 101: the Upgrade field stays */
};

/* Builds the fields to send for a response into `out` (its array from
 * `arena`): the backend's end-to-end fields (`backend`, NULL for a local
 * answer) minus hop-by-hop ones, those its Connection lists, framing,
 * headers.remove and (with override) the ones added here; then a Date
 * when `backend` has none (RFC 9110 6.6.1: a proxy adds the one an origin
 * left out, and our own answers need theirs), the configured and security
 * headers, X-Request-Id, the extra lines and the rate-limit fields. Views
 * point into `backend`'s bytes, the configuration and the arena. Returns
 * 0, or -1 when memory ran out. Worker thread (the Date is cached per
 * thread). */
int tg_headers_response_fields(struct tg_arena *arena, const struct tg_headers_response *in,
                               const struct tg_http_headers *backend, struct tg_http_headers *out);

/* Fields of an interim (1xx) response, forwarded as the backend sent them
 * minus hop-by-hop ones. */
int tg_headers_interim_fields(struct tg_arena *arena, const struct tg_http_headers *backend,
                              struct tg_http_headers *out);

/* The current time as an HTTP date ("Sun, 06 Nov 1994 08:49:37 GMT",
 * 29 bytes), formatted at most once a second per thread; the view is the
 * thread's cache: copy it before this thread may call again. */
struct tg_str tg_headers_date(void);

/* Fills `out` (at least 33 bytes) with a new request id: 32 hex digits,
 * unique per process run, NUL-terminated; returns its length. Worker thread
 * (per-thread generator state). */
size_t tg_headers_new_request_id(char *out);

/* True if a client-sent X-Request-Id is acceptable to keep: 1..64 bytes of
 * [A-Za-z0-9._:-]. */
bool tg_headers_valid_request_id(struct tg_str v);

#endif
