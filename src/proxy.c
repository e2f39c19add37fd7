/* One request through the gateway. The request owns two byte paths:
 *
 *   client -> conn->in -> upstream   (request body, or tunnel bytes)
 *   upstream -> up->in -> client     (response body, or tunnel bytes)
 *
 * Each path is one buffer. Bytes are "framed" (counted against
 * Content-Length or walked by the chunked decoder) as they arrive, written
 * from the buffer as they are framed, and the reader stops while the buffer
 * is full: backpressure both ways and no copy of body bytes. Heads are
 * rebuilt by headers.c into their own buffer and leave in the same writev
 * as the first body bytes.
 *
 * Requests are reference-counted: the connection holds one, and every
 * callback holds one while it runs, so a request that ends inside a
 * callback is freed only when the callback returns. */
#include "proxy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "access.h"
#include "access_log.h"
#include "admin.h"
#include "buf.h"
#include "config.h"
#include "conn.h"
#include "headers.h"
#include "iptable.h"
#include "log.h"
#include "metrics.h"
#include "router.h"
#include "tenant.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

/* Kept between two trims (tg_proxy_trim_free_list keeps what the busiest
 * moment needed): see TG_BUF_MAX_FREE. */
#define MAX_FREE_REQUESTS 4096
#define MAX_TRAILER 16384
#define MS(x) ((double)(x) / 1000.0)

static void on_upstream_io(struct tg_upconn *uc, int revents);
static void release_tenant(struct tg_request *req);
static void pump_client(struct tg_request *req);
static void send_upstream(struct tg_request *req);
static void read_upstream(struct tg_request *req);
static void connect_upstream(struct tg_request *req);
static void arm_deadline(struct tg_request *req);
static void update_watches(struct tg_request *req);

static struct tg_worker *req_worker(const struct tg_request *req)
{
    return req->conn->w;
}

static const struct tg_config *req_config(const struct tg_request *req)
{
    return req->wcfg->config;
}

/* The route's max_body once it is known (it defaults to client.max_body),
 * before that the global one. 0 = unlimited. */
static uint64_t req_max_body(const struct tg_request *req)
{
    return req->route != NULL ? req->route->max_body : req_config(req)->client.max_body;
}

static ev_tstamp req_now(const struct tg_request *req)
{
    return ev_now(req_worker(req)->loop);
}

/* ---- request objects -------------------------------------------------------- */

struct tg_request *tg_proxy_request_new(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    struct tg_request *req = w->free_requests;
    if (++w->requests_in_use > w->requests_high_water)
        w->requests_high_water = w->requests_in_use;
    struct tg_arena arena; /* a reused request keeps its arena's chunk */
    if (req != NULL) {
        w->free_requests = req->next_free;
        w->nfree_requests--;
        arena = req->arena;
    } else {
        req = tg_pages_alloc(sizeof(*req));
        if (req == NULL) {
            w->requests_in_use--;
            return NULL;
        }
        tg_arena_init(&arena, 2048);
    }
    /* Everything above the limiter state and the big parser structs; the
     * parsers fill those, and the limiter's needs only these fields. */
    memset(req, 0, offsetof(struct tg_request, lim));
    req->arena = arena;
    /* The only limiter fields read when no policy applies. */
    req->lim.active = false;
    req->lim.pending = 0;
    req->lim.needs_body = false;
    req->lim.limited = false;
    req->lim.report = NULL;
    req->head.nheaders = 0;
    req->resp.nheaders = 0;
    req->conn = c;
    req->w = w;
    req->refs = 1;
    req->server = -1;
    return req;
}

void tg_proxy_trim_free_list(struct tg_worker *w, size_t reserve)
{
    size_t busy = w->requests_high_water > w->requests_in_use
                      ? w->requests_high_water - w->requests_in_use : 0;
    size_t keep = busy > reserve ? busy : reserve;
    while (w->nfree_requests > keep) {
        struct tg_request *req = w->free_requests;
        w->free_requests = req->next_free;
        w->nfree_requests--;
        tg_arena_reset(&req->arena);
        tg_pages_free(req, sizeof(*req));
    }
    w->requests_high_water = w->requests_in_use;
}

void tg_proxy_request_free(struct tg_request *req)
{
    struct tg_worker *w = req->w;
    tg_buf_put(&w->bufs, req->up_head);
    tg_buf_put(&w->bufs, req->out);
    tg_worker_cfg_release(req->wcfg);
    w->requests_in_use--;
    if (w->nfree_requests < MAX_FREE_REQUESTS && !w->stopping) {
        tg_arena_clear(&req->arena); /* its chunk serves the next request */
        req->next_free = w->free_requests;
        w->free_requests = req;
        w->nfree_requests++;
    } else {
        tg_arena_reset(&req->arena);
        tg_pages_free(req, sizeof(*req));
    }
}

static void req_ref(struct tg_request *req)
{
    req->refs++;
}

static void req_unref(struct tg_request *req)
{
    if (--req->refs == 0)
        tg_proxy_request_free(req);
}

static bool req_over(const struct tg_request *req)
{
    return req->phase == TG_REQ_DONE;
}

void tg_proxy_request_ref(struct tg_request *req)
{
    req_ref(req);
}

void tg_proxy_request_unref(struct tg_request *req)
{
    req_unref(req);
}

bool tg_proxy_request_over(const struct tg_request *req)
{
    return req_over(req);
}

/* Copies a string that must outlive the head views. */
static const char *req_strdup(struct tg_request *req, const char *p, size_t n)
{
    char *dst;
    if (req->scratch_used + n + 1 <= sizeof(req->scratch)) {
        dst = req->scratch + req->scratch_used;
        req->scratch_used += n + 1;
    } else {
        dst = tg_arena_alloc(&req->arena, n + 1);
        if (dst == NULL)
            return NULL;
    }
    memcpy(dst, p, n);
    dst[n] = '\0';
    return dst;
}

/* ---- ending ------------------------------------------------------------------- */

static void upwait_unlink(struct tg_request *req);

static void release_slots(struct tg_request *req)
{
    upwait_unlink(req);
    if (req->in_flight_counted) {
        req->in_flight_counted = false;
        atomic_fetch_sub(&((struct tg_config_route *)req->route)->in_flight, 1);
    }
    if (ev_is_active(&req->delay_timer))
        ev_timer_stop(req_worker(req)->loop, &req->delay_timer);
    if (req->lim.pending > 0)
        tg_limiter_cancel(&req->lim);
    tg_limiter_end(&req->lim);
    release_tenant(req);
}

static void release_stream_slot(struct tg_request *req)
{
    if (!req->stream_counted)
        return;
    req->stream_counted = false;
    struct tg_addr group;
    tg_iptable_group(&req->client, req_config(req)->client.ipv6_prefix, &group);
    tg_iptable_release(req_worker(req)->rt->iptable, &group, TG_IPTABLE_STREAMS);
}

static void drop_upstream(struct tg_request *req, bool reusable)
{
    struct tg_upconn *uc = req->up;
    if (uc == NULL)
        return;
    req->up = NULL;
    uc->req = NULL;
    tg_upstream_release(uc, reusable, req->upstream);
}

static void log_request(struct tg_request *req)
{
    struct tg_worker *w = req_worker(req);
    if (req->status == 0)
        return;
    ev_tstamp now = ev_now(w->loop);
    unsigned id = req->route != NULL ? req->route->metrics_id : tg_metrics_no_route();
    struct tg_route_stats *rs = &w->metrics->routes[id];
    int cls = req->status >= 100 && req->status < 600 && req->resp_head_done ? req->status / 100 : 0;
    TG_METRIC_INC(rs->requests[cls]);
    double dur = now - req->start;
    TG_METRIC_INC(rs->duration[tg_metrics_bucket(dur)]);
    TG_METRIC_ADD(rs->duration_us, dur > 0 ? (uint64_t)(dur * 1e6) : 0);
    TG_METRIC_ADD(rs->bytes_in, req->bytes_in);
    TG_METRIC_ADD(rs->bytes_out, req->bytes_out);
    tg_access_log_request(w->access_log, req, now);
}

static struct tg_upstream_stats *upstream_stats(struct tg_request *req)
{
    const struct tg_config_upstream *u = req->upstream;
    unsigned id = req->tenant_obj != NULL && u == &req->tenant_obj->upstream
                      ? req_config(req)->tenants.upstream_defaults.metrics_id
                      : u->metrics_id;
    return &req_worker(req)->metrics->upstreams[id];
}

/* The request is over. Tells the connection, which may start the next one. */
static void end_request(struct tg_request *req, bool keep_alive)
{
    if (req_over(req))
        return;
    req->phase = TG_REQ_DONE;
    drop_upstream(req, false);
    release_stream_slot(req);
    release_slots(req);
    log_request(req);
    struct tg_conn *c = req->conn;
    bool unread = !req->req_body_done || !req->head_consumed || req->bad_head;
    tg_conn_request_done(c, keep_alive && !unread, unread);
    req_unref(req);
}

void tg_proxy_abort(struct tg_request *req)
{
    if (req_over(req))
        return;
    req->phase = TG_REQ_DONE;
    drop_upstream(req, false);
    release_stream_slot(req);
    release_slots(req);
    if (req->status == 0 || !req->resp_head_done)
        req->status = req->status ? req->status : 499;
    log_request(req);
    req_unref(req);
}

/* Ends the request and closes the client connection at once (the answer is
 * broken: the client must not take what it got as complete). */
static void abort_client(struct tg_request *req, const char *why)
{
    struct tg_conn *c = req->conn;
    if (why != NULL)
        tg_log_info("request %s: %s; closing client connection", req->request_id, why);
    tg_conn_ref(c);
    tg_conn_close(c); /* calls tg_proxy_abort */
    tg_conn_unref(c);
}

/* ---- local answers ------------------------------------------------------------- */

/* Drops the head (and, if it is all here, the body) from conn->in so the
 * connection can carry on; returns false when body bytes are still to come,
 * in which case the connection must close after the answer. */
static bool discard_request(struct tg_request *req);

static void respond_local_typed(struct tg_request *req, int status, const char *type,
                                const char *body, size_t blen, bool close)
{
    struct tg_worker *w = req_worker(req);
    drop_upstream(req, false);
    req->status = status;
    req->phase = TG_REQ_LOCAL;
    TG_METRIC_INC(w->metrics->local_answers);
    if (!discard_request(req))
        close = true;
    if (req->conn->close_after || w->draining || !req->client_keep_alive)
        close = true;
    req->resp_close_client = close;
    if (req->out == NULL)
        req->out = tg_buf_get(&w->bufs, blen + 1024);
    if (req->out == NULL ||
        tg_headers_build_local(req, req->out, status, type, body, blen, close) < 0) {
        abort_client(req, "out of memory for a local answer");
        return;
    }
    req->resp_head_done = true;
    req->resp_body_done = true;
    pump_client(req);
}

void tg_proxy_respond(struct tg_request *req, int status, const char *type, const char *body,
                      size_t len)
{
    req_ref(req);
    respond_local_typed(req, status, type, body, len, false);
    if (!req_over(req)) {
        update_watches(req);
        arm_deadline(req);
    }
    req_unref(req);
}

static void respond_local(struct tg_request *req, int status, const char *body, bool close)
{
    respond_local_typed(req, status, "text/plain; charset=utf-8", body, strlen(body), close);
}

/* A local answer with extra header lines (each ending in CRLF). */
static void respond_local_extra(struct tg_request *req, int status, const char *extra,
                                const char *body)
{
    req->extra_headers = extra;
    respond_local(req, status, body, false);
}

void tg_proxy_fail(struct tg_request *req, int status, const char *reason)
{
    struct tg_conn *c = req->conn;
    if (req->wcfg == NULL)
        req->wcfg = tg_worker_cfg_acquire(c->w);
    req->start = req->start ? req->start : c->head_started;
    req->client = c->peer;
    req->minor_version = 1;
    req->client_keep_alive = false;
    req->head_consumed = true; /* nothing of an invalid head is used */
    req->req_body_done = true;
    req->bad_head = true;
    req->request_id_len = tg_headers_new_request_id(req->request_id);
    if (c->in != NULL)
        req->bytes_in = tg_buf_len(c->in);
    c->state = TG_CONN_ACTIVE;
    char body[160];
    snprintf(body, sizeof(body), "%d %s: %s\n", status, tg_http_reason(status), reason);
    req_ref(req);
    respond_local(req, status, body, true);
    if (!req_over(req))
        update_watches(req), arm_deadline(req);
    req_unref(req);
}

/* ---- request body framing ------------------------------------------------------- */

/* Frames newly arrived client bytes. Returns -1 if the request ended. */
static int frame_request_body(struct tg_request *req)
{
    struct tg_buf *in = req->conn->in;
    if (req->req_body_done || in == NULL)
        return 0;
    size_t avail = tg_buf_len(in) - req->req_ready;
    if (avail == 0)
        return 0;
    const char *p = in->data + in->start + req->req_ready;
    switch (req->req_framing) {
    case TG_HTTP1_BODY_LENGTH: {
        size_t take = avail < req->req_remaining ? avail : (size_t)req->req_remaining;
        req->req_ready += take;
        req->req_remaining -= take;
        req->req_body_bytes += take;
        if (req->req_remaining == 0)
            req->req_body_done = true;
        break;
    }
    case TG_HTTP1_BODY_CHUNKED:
        while (avail > 0 && !req->req_chunked.done) {
            size_t dlen = 0;
            ssize_t r = tg_http1_chunked_next(&req->req_chunked, p, avail, &dlen);
            if (r < 0) {
                req->req_body_done = true; /* nothing more will be read */
                if (!req->resp_head_done && req->out == NULL) {
                    respond_local(req, 400, "400 Bad Request: invalid chunked body\n", true);
                } else {
                    abort_client(req, "invalid chunked request body");
                }
                return -1;
            }
            p += r;
            avail -= (size_t)r;
            req->req_ready += (size_t)r;
            req->req_body_bytes += dlen;
            if (r == 0)
                break;
        }
        if (req->req_chunked.done)
            req->req_body_done = true;
        break;
    default:
        req->req_body_done = true;
        break;
    }
    uint64_t max = req_max_body(req);
    if (max != 0 && req->req_body_bytes > max) {
        req->req_body_done = true;
        if (!req->resp_head_done && req->out == NULL)
            respond_local(req, 413, "413 Content Too Large\n", true);
        else
            abort_client(req, "request body over max_body");
        return -1;
    }
    return 0;
}

static bool discard_request(struct tg_request *req)
{
    struct tg_buf *in = req->conn->in;
    if (!req->head_consumed) {
        req->head_consumed = true;
        if (in != NULL)
            tg_buf_consume(in, req->head.head_len);
        if (req->req_framing == TG_HTTP1_BODY_NONE)
            req->req_body_done = true;
    }
    if (req->phase == TG_REQ_TUNNEL)
        return false;
    if (!req->req_body_done && in != NULL) {
        size_t before = req->req_ready;
        (void)before;
        if (frame_request_body(req) < 0)
            return false;
    }
    if (req->req_body_done && in != NULL) {
        tg_buf_consume(in, req->req_ready);
        req->req_ready = 0;
    }
    return req->req_body_done;
}

/* ---- routing -------------------------------------------------------------------- */

static bool method_allowed(const struct tg_config_route *r, enum tg_http_method id,
                           struct tg_str method)
{
    if (r->methods == 0 && r->nother_methods == 0)
        return true;
    if (id != TG_HTTP_OTHER)
        return (r->methods & (1u << id)) != 0;
    for (size_t i = 0; i < r->nother_methods; i++)
        if (tg_str_eq(method, r->other_methods[i]))
            return true;
    return false;
}

const struct tg_config_route *tg_proxy_match_route(const struct tg_config_site *site,
                                                   enum tg_http_method id, struct tg_str method,
                                                   const char *path, size_t n,
                                                   const char *folded, size_t folded_n)
{
    for (size_t i = 0; i < site->nroutes; i++) {
        const struct tg_config_route *r = &site->routes[i];
        bool hit = r->ignore_case ? tg_router_pattern_match(r->pattern, folded, folded_n)
                                  : tg_router_pattern_match(r->pattern, path, n);
        if (hit && method_allowed(r, id, method))
            return r;
    }
    return NULL;
}

/* ---- rate limiting ------------------------------------------------------------ */

/* The body a rate-limit key reads is here: all of it, or more than the
 * largest max_peek (then the key cannot be read: 413), or as much as the
 * buffer holds (the same). */
static bool peek_ready(const struct tg_request *req)
{
    struct tg_buf *in = req->conn->in;
    return req->req_body_done || req->req_body_bytes > tg_limiter_peek_wanted(&req->lim) ||
           (in != NULL && tg_buf_room(in) == 0 && in->start == 0);
}

/* Hands the body (de-chunked) to the limiter: all of it when it is whole
 * and within max_peek. */
static void body_peek(struct tg_request *req)
{
    struct tg_buf *in = req->conn->in;
    size_t want = tg_limiter_peek_wanted(&req->lim);
    bool complete = req->req_body_done && req->req_body_bytes <= want;
    if (in == NULL || req->req_ready == 0) {
        tg_limiter_take_body(&req->lim, "", 0, complete);
        return;
    }
    const char *p = in->data + in->start;
    size_t avail = req->req_ready;
    if (req->req_framing != TG_HTTP1_BODY_CHUNKED) {
        tg_limiter_take_body(&req->lim, p, avail < want ? avail : want, complete);
        return;
    }
    char *tmp = tg_arena_alloc(&req->arena, want + 1);
    size_t got = 0;
    struct tg_http1_chunked dec;
    tg_http1_chunked_init(&dec, MAX_TRAILER);
    while (tmp != NULL && avail > 0 && got < want && !dec.done) {
        size_t dlen = 0;
        ssize_t r = tg_http1_chunked_next(&dec, p, avail, &dlen);
        if (r <= 0)
            break;
        if (dlen > 0) {
            size_t take = dlen < want - got ? dlen : want - got;
            memcpy(tmp + got, p, take);
            got += take;
        }
        p += r;
        avail -= (size_t)r;
    }
    tg_limiter_take_body(&req->lim, tmp != NULL ? tmp : "", got, complete && tmp != NULL);
}

static void on_delay(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    struct tg_request *req = t->data;
    req_ref(req);
    req->phase = TG_REQ_ROUTING;
    connect_upstream(req);
    if (!req_over(req)) {
        update_watches(req);
        arm_deadline(req);
    }
    req_unref(req);
}

static void after_decision(struct tg_request *req);
static void limiter_done(void *arg);

static void decide_and_forward(struct tg_request *req)
{
    if (req->lim.active && req->lim.needs_body) {
        body_peek(req);
        if (req->lim.refuse_status != 0) {
            /* A per-account limit that cannot tell the account: refused,
             * never re-keyed behind the operator's back. */
            char body[256];
            snprintf(body, sizeof(body), "%d %s: the rate limit on this route reads the "
                     "request body and cannot: %s\n", req->lim.refuse_status,
                     tg_http_reason(req->lim.refuse_status), req->lim.refuse_reason);
            respond_local(req, req->lim.refuse_status, body, true);
            return;
        }
    }
    if (tg_limiter_decide(&req->lim, limiter_done, req) == 1) {
        req->phase = TG_REQ_LIMITING; /* a Redis reply will call us back */
        return;
    }
    after_decision(req);
}

static void limiter_done(void *arg)
{
    struct tg_request *req = arg;
    req_ref(req);
    after_decision(req);
    if (!req_over(req)) {
        update_watches(req);
        arm_deadline(req);
    }
    req_unref(req);
}

static void after_decision(struct tg_request *req)
{
    /* The limiter state is only set up when policies apply (see
     * tg_proxy_request_new): read nothing else of it otherwise. */
    if (!req->lim.active) {
        connect_upstream(req);
        return;
    }
    if (req->lim.store_error) {
        respond_local_extra(req, 503, "Retry-After: 1\r\n",
                            "503 Service Unavailable: the rate-limit store is unavailable\n");
        return;
    }
    if (req->lim.shadow_limited)
        tg_log_info("request %s: a shadow rate-limit policy would have refused it",
                    req->request_id);
    if (req->lim.limited) {
        char body[256];
        size_t n = tg_limiter_body(&req->lim, body, sizeof(body));
        respond_local_typed(req, 429, "application/json", body, n, false);
        return;
    }
    if (req->lim.delay_ns > 0) {
        req->phase = TG_REQ_DELAYED;
        ev_timer_init(&req->delay_timer, on_delay, (double)req->lim.delay_ns / 1e9, 0.);
        req->delay_timer.data = req;
        ev_timer_start(req_worker(req)->loop, &req->delay_timer);
        return;
    }
    connect_upstream(req);
}

/* Who the client is: the socket peer, or for a trusted proxy the right-most
 * untrusted address it forwards for (every X-Forwarded-For and Forwarded
 * line is read). Then its country and AS when GeoIP is configured (for
 * rules, keys, the backend header and the log). Returns -1 when the two
 * forwarding headers name different clients (the request is refused). */
static int identify_client(struct tg_request *req)
{
    const struct tg_config *cfg = req_config(req);
    const struct tg_http1_request *h = &req->head;
    const struct tg_addr *peer = &req->conn->peer;
    size_t nx = 0, nf = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        if (tg_http_name_eq(h->headers[i].name, "x-forwarded-for"))
            nx++;
        else if (tg_http_name_eq(h->headers[i].name, "forwarded"))
            nf++;
    }
    req->has_forwarded = nx + nf > 0;
    req->peer_trusted = cfg->trusted_proxies != NULL &&
                        tg_cidr_set_lookup(cfg->trusted_proxies, peer) != 0;
    req->client = *peer;
    int rc = 0;
    if (req->peer_trusted && nx + nf > 0) {
        struct tg_str *xff = tg_arena_alloc(&req->arena, (nx + nf) * sizeof(*xff));
        struct tg_client_chain *chain = tg_arena_alloc(&req->arena, sizeof(*chain));
        if (xff == NULL || chain == NULL)
            return -2;
        struct tg_str *fwd = xff + nx;
        size_t ix = 0, jf = 0;
        for (size_t i = 0; i < h->nheaders; i++) {
            if (tg_http_name_eq(h->headers[i].name, "x-forwarded-for"))
                xff[ix++] = h->headers[i].value;
            else if (tg_http_name_eq(h->headers[i].name, "forwarded"))
                fwd[jf++] = h->headers[i].value;
        }
        rc = tg_access_client_chain(cfg->trusted_proxies, peer,
                                    (enum tg_client_ip_header)cfg->client_ip_header, xff, nx, fwd,
                                    nf, chain);
        req->client = chain->client;
        req->chain = chain;
    }
    struct tg_metrics_shard *m = req_worker(req)->metrics;
    if (cfg->geoip != NULL) {
        tg_geoip_country(cfg->geoip, &req->client, req->country);
        TG_METRIC_INC(m->geoip_lookups);
    }
    if (cfg->geoip_asn != NULL) {
        req->asn = tg_geoip_asn(cfg->geoip_asn, &req->client);
        TG_METRIC_INC(m->geoip_lookups);
    }
    return rc;
}

/* A private-only rule passed for a private peer that sent forwarding
 * headers, with no trusted_proxies: likely a reverse proxy in front whose
 * clients all look private. Say so once per peer (a small ring), and count
 * it every time. */
static void warn_untrusted_forwarder(struct tg_request *req)
{
    struct tg_worker *w = req_worker(req);
    const struct tg_addr *peer = &req->conn->peer;
    TG_METRIC_INC(w->metrics->forwarded_untrusted);
    unsigned n = w->forwarded_nwarned < TG_ARRAY_LEN(w->forwarded_warned)
                     ? w->forwarded_nwarned : (unsigned)TG_ARRAY_LEN(w->forwarded_warned);
    for (unsigned i = 0; i < n; i++)
        if (tg_addr_equal(&w->forwarded_warned[i], peer))
            return;
    w->forwarded_warned[w->forwarded_nwarned++ % TG_ARRAY_LEN(w->forwarded_warned)] = *peer;
    /* Once per process: the workers share a list (this worker asks it once
     * per peer, its own ring above answers after that). */
    struct tg_runtime *rt = w->rt;
    bool seen = false;
    pthread_mutex_lock(&rt->warned_lock);
    unsigned m = rt->nwarned < TG_ARRAY_LEN(rt->warned) ? rt->nwarned
                                                        : (unsigned)TG_ARRAY_LEN(rt->warned);
    for (unsigned i = 0; i < m && !seen; i++)
        seen = tg_addr_equal(&rt->warned[i], peer);
    if (!seen)
        rt->warned[rt->nwarned++ % TG_ARRAY_LEN(rt->warned)] = *peer;
    pthread_mutex_unlock(&rt->warned_lock);
    if (seen)
        return;
    char text[TG_ADDR_STRLEN];
    tg_addr_format(peer, text, sizeof(text));
    tg_log_warn("request %s: %s sent X-Forwarded-For/Forwarded to a route that allows only "
                "private addresses, and trusted_proxies is empty, so the headers are ignored "
                "and %s itself is the client: if %s is your reverse proxy, list it in "
                "trusted_proxies (counted in tollgate_forwarded_untrusted_total)",
                req->request_id, text, text, text);
}

static bool access_allowed(struct tg_request *req)
{
    const char *why = NULL;
    const char *country = req->country[0] ? req->country : TG_GEOIP_UNKNOWN;
    if (req->site->access != NULL &&
        !tg_access_check(req->site->access, &req->client, country, req->asn, &why))
        return false;
    if (req->route->access != NULL &&
        !tg_access_check(req->route->access, &req->client, country, req->asn, &why))
        return false;
    return true;
}

/* A plain listener with redirect_to_https: 308 to the same host and path
 * (with the query) on HTTPS. Host and path were validated by the parser and
 * the normaliser, so nothing here can split the Location header. */
static void redirect_to_https(struct tg_request *req, struct tg_str hostport)
{
    struct tg_str host;
    if (hostport.n == 0 || !tg_router_host_without_port(hostport, &host)) {
        respond_local(req, 400, "400 Bad Request: a redirect needs a Host\n", true);
        return;
    }
    int port = req->conn->lcfg->redirect_to_https;
    char loc[64 + 8192];
    int n = port == 443
                ? snprintf(loc, sizeof(loc), "Location: https://%.*s%s\r\n", (int)host.n,
                           host.p, req->path)
                : snprintf(loc, sizeof(loc), "Location: https://%.*s:%d%s\r\n", (int)host.n,
                           host.p, port, req->path);
    if (n < 0 || (size_t)n >= sizeof(loc)) {
        respond_local(req, 414, "414 URI Too Long\n", true);
        return;
    }
    req->extra_headers = req_strdup(req, loc, (size_t)n);
    respond_local(req, 308, "308 Permanent Redirect: use HTTPS\n", false);
}

/* A client that sent SNI may only ask for names the certificate it got
 * covers (connection reuse across names is fine when it does). */
static bool covered_by_certificate(struct tg_request *req, struct tg_str hostport)
{
    SSL *ssl = req->conn->io.ssl;
    if (ssl == NULL || SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) == NULL)
        return true;
    return tg_tls_cert_covers(ssl, hostport);
}

/* ---- stages after the head -------------------------------------------------------- */

static void forward_request(struct tg_request *req);

static void release_tenant(struct tg_request *req)
{
    if (req->tenant_wait != NULL) {
        tg_tenant_cancel(req->tenant_wait);
        req->tenant_wait = NULL;
    }
    if (req->tenant_obj != NULL) {
        tg_tenant_release(req->tenant_obj);
        req->tenant_obj = NULL;
    }
}

/* The tenant is known: its servers become the upstream. */
static void use_tenant(struct tg_request *req, enum tg_tenant_status status, struct tg_tenant *t)
{
    if (status == TG_TENANT_NOT_FOUND) {
        respond_local(req, 404, "404 Not Found: no such tenant\n", false);
        return;
    }
    if (status != TG_TENANT_FOUND || t == NULL) {
        respond_local_extra(req, 503, "Retry-After: 1\r\n",
                            "503 Service Unavailable: the tenant directory is unavailable\n");
        return;
    }
    req->tenant_obj = t;
    req->tenant = t->id;
    if (t->suspended) {
        respond_local(req, 403, "403 Forbidden: this tenant is suspended\n", false);
        return;
    }
    if (req->route != NULL && req->route->upstream_tenant) {
        if (t->upstream.nservers == 0) {
            respond_local(req, 502, "502 Bad Gateway: the tenant has no servers\n", false);
            return;
        }
        req->upstream = &t->upstream;
    }
}

static void route_request(struct tg_request *req);

static void on_tenant(void *arg, enum tg_tenant_status status, struct tg_tenant *t)
{
    struct tg_request *req = arg;
    req->tenant_wait = NULL;
    req_ref(req);
    bool domain = req->site == NULL;
    if (domain) {
        req->site = req_config(req)->domain_site;
        if (status == TG_TENANT_NOT_FOUND)
            TG_METRIC_INC(req_worker(req)->metrics->unknown_host);
    }
    use_tenant(req, status, t);
    if (!req_over(req))
        domain ? route_request(req) : forward_request(req);
    if (!req_over(req)) {
        update_watches(req);
        arm_deadline(req);
    }
    req_unref(req);
}

/* Looks the tenant up; continues with `then` now or from the callback. */
static void lookup_tenant(struct tg_request *req)
{
    struct tg_worker *w = req_worker(req);
    const struct tg_config *cfg = req_config(req);
    struct tg_tenant *t = NULL;
    int rc = tg_tenant_lookup(w->tenants, &cfg->tenants, req->tenant, strlen(req->tenant), &t,
                              on_tenant, req, &req->tenant_wait);
    if (rc < 0) {
        req->phase = TG_REQ_TENANT;
        return;
    }
    use_tenant(req, (enum tg_tenant_status)rc, t);
    if (!req_over(req))
        forward_request(req);
}

/* A Host that no site pattern matched may be a tenant's own domain. */
static void lookup_domain(struct tg_request *req, struct tg_str hostport)
{
    struct tg_worker *w = req_worker(req);
    const struct tg_config *cfg = req_config(req);
    struct tg_str host;
    if (hostport.n == 0 || !tg_router_host_without_port(hostport, &host)) {
        TG_METRIC_INC(w->metrics->unknown_host);
        respond_local(req, 404, "404 Not Found: no site serves this host\n", false);
        return;
    }
    char *lower = tg_arena_strndup(&req->arena, host.p, host.n);
    for (char *p = lower; p != NULL && *p; p++)
        *p = tg_ascii_lower(*p);
    if (lower != NULL && lower[host.n - 1] == '.')
        lower[--host.n] = '\0';
    struct tg_tenant *t = NULL;
    int rc = lower == NULL ? TG_TENANT_UNAVAILABLE
                           : tg_tenant_lookup_domain(w->tenants, &cfg->tenants, lower, host.n, &t,
                                                     on_tenant, req, &req->tenant_wait);
    if (rc < 0) {
        req->phase = TG_REQ_TENANT;
        return;
    }
    req->site = cfg->domain_site;
    if (rc == TG_TENANT_NOT_FOUND)
        TG_METRIC_INC(w->metrics->unknown_host);
    use_tenant(req, (enum tg_tenant_status)rc, t);
    if (!req_over(req))
        route_request(req);
}

/* The site is known: pick the route, check access, find the upstream. */
static void route_request(struct tg_request *req)
{
    struct tg_conn *c = req->conn;
    struct tg_str host = tg_str_make(req->host, req->host_len);
    if (c->tls && !covered_by_certificate(req, host)) {
        respond_local(req, 421, "421 Misdirected Request: the certificate for this "
                                "connection does not cover this host\n", true);
        return;
    }
    if (c->lcfg->client_subject_header != NULL && c->io.ssl != NULL) {
        char subject[1024];
        size_t n = tg_tls_client_subject(c->io.ssl, subject, sizeof(subject));
        req->client_subject = n > 0 ? req_strdup(req, subject, n) : NULL;
    }
    size_t folded_n = 0;
    char *folded = NULL;
    if (req->site->any_ignore_case) {
        folded = tg_arena_alloc(&req->arena, req->route_path_len + 1);
        if (folded == NULL) {
            abort_client(req, "out of memory");
            return;
        }
        folded_n = tg_router_fold_path(req->path, req->route_path_len, folded,
                                       req->route_path_len + 1);
    }
    req->route = tg_proxy_match_route(req->site, req->method_id,
                                      tg_str_make(req->method, strlen(req->method)), req->path,
                                      req->route_path_len, folded, folded_n);
    if (req->route == NULL) {
        respond_local(req, 404, "404 Not Found: no route for this path\n", false);
        return;
    }
    if (!access_allowed(req)) {
        respond_local(req, 403, "403 Forbidden\n", false);
        return;
    }
    if (req->has_forwarded && req_config(req)->trusted_proxies == NULL &&
        (tg_access_private_only(req->route->access) ||
         tg_access_private_only(req->site->access)))
        warn_untrusted_forwarder(req);
    req->stream = req->route->stream;
    if (req->route->upstream_tenant) {
        if (req->tenant_obj != NULL) {
            req->upstream = &req->tenant_obj->upstream; /* found by its domain */
        } else if (req->tenant == NULL) {
            respond_local(req, 404, "404 Not Found: no tenant for this host\n", false);
            return;
        } else {
            lookup_tenant(req);
            return;
        }
    } else {
        req->upstream = req->route->upstream;
    }
    forward_request(req);
}

/* Everything is decided but limits: rewrite the head and go. */
static void forward_request(struct tg_request *req)
{
    struct tg_conn *c = req->conn;
    struct tg_worker *w = c->w;
    const struct tg_http1_request *h = &req->head;
    req->phase = TG_REQ_ROUTING;
    if (req_max_body(req) != 0 && req->req_framing == TG_HTTP1_BODY_LENGTH &&
        req->req_remaining > req_max_body(req)) {
        respond_local(req, 413, "413 Content Too Large\n", true);
        return;
    }
    if (req->route->max_in_flight != 0) {
        struct tg_config_route *r = (struct tg_config_route *)req->route;
        req->in_flight_counted = true;
        if (atomic_fetch_add(&r->in_flight, 1) >= req->route->max_in_flight) {
            respond_local_extra(req, 503, "Retry-After: 1\r\n",
                                "503 Service Unavailable: too many requests in flight\n");
            return;
        }
    }
    struct tg_http_headers hv = {req->head.headers, req->head.nheaders, req->head.nheaders};
    struct tg_limiter_input lin = {
        .cfg = req_config(req),
        .site = req->site,
        .route = req->route,
        .client = &req->client,
        .tenant = req->tenant,
        .tenant_interval_ns = req->tenant_obj != NULL ? req->tenant_obj->rate_interval_ns : 0,
        .tenant_burst = req->tenant_obj != NULL ? req->tenant_obj->burst : 0,
        .country = req->country,
        .asn = req->asn,
        .headers = &hv,
        .query = req->head.query,
        .arena = &req->arena,
    };
    if (tg_limiter_prepare(&req->lim, &lin, &w->limiter) < 0) {
        respond_local(req, 503, "503 Service Unavailable\n", true);
        return;
    }
    if (req->upstream->balance == TG_BALANCE_HASH)
        req->balance_hash = tg_limiter_hash_part(&lin, &req->upstream->hash_key);

    /* Rebuild the head for the upstream, then drop the original: from here
     * on conn->in starts with body bytes. */
    req->up_head = tg_buf_get(&w->bufs, h->head_len + 1024);
    if (req->up_head == NULL || tg_headers_build_request(req, req->up_head) < 0) {
        respond_local(req, 503, "503 Service Unavailable\n", true);
        return;
    }
    req->head_consumed = true;
    tg_buf_consume(c->in, h->head_len);
    if (req->req_framing == TG_HTTP1_BODY_NONE)
        req->req_body_done = true;
    if (frame_request_body(req) < 0)
        return;
    if (req->lim.needs_body && !peek_ready(req)) {
        req->phase = TG_REQ_PEEKING;
        return;
    }
    decide_and_forward(req);
}

void tg_proxy_start(struct tg_request *req)
{
    struct tg_conn *c = req->conn;
    struct tg_worker *w = c->w;
    const struct tg_http1_request *h = &req->head;

    req_ref(req);
    req->wcfg = tg_worker_cfg_acquire(w);
    if (req->wcfg != c->wcfg) {
        /* The connection refreshed its snapshot at the start of the head;
         * use exactly that one. */
        tg_worker_cfg_release(req->wcfg);
        req->wcfg = c->wcfg;
        req->wcfg->refs++;
    }
    const struct tg_config *cfg = req_config(req);
    req->start = c->head_started;
    req->client_read_at = req->client_write_at = ev_now(w->loop);
    req->phase = TG_REQ_ROUTING;
    req->method_id = h->method_id;
    req->minor_version = h->minor_version;
    req->client_keep_alive = h->keep_alive;
    req->upgrade = h->upgrade_websocket;
    req->expect_continue = h->expect_continue;
    int identified = identify_client(req);
    req->req_framing = (uint8_t)h->framing;
    req->req_remaining = h->content_length;
    req->bytes_in = h->head_len;
    tg_http1_chunked_init(&req->req_chunked, MAX_TRAILER);
    req->method = req_strdup(req, h->method.p, h->method.n);

    /* Request id: the client's if well-formed, else ours. */
    req->request_id_len = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        if (tg_http_name_eq(h->headers[i].name, "x-request-id") &&
            tg_headers_valid_request_id(h->headers[i].value)) {
            memcpy(req->request_id, h->headers[i].value.p, h->headers[i].value.n);
            req->request_id[h->headers[i].value.n] = '\0';
            req->request_id_len = h->headers[i].value.n;
            break;
        }
    }
    if (req->request_id_len == 0)
        req->request_id_len = tg_headers_new_request_id(req->request_id);

    struct tg_str host = h->host;
    if (host.p == NULL)
        host = tg_str_make("", 0);
    req->host = req_strdup(req, host.p, host.n);
    req->host_len = host.n;

    /* Normalised path plus the query, as the backend will see it. */
    size_t qn = h->query.p != NULL ? h->query.n + 1 : 0;
    char *path = tg_arena_alloc(&req->arena, h->path.n + qn + 1);
    ssize_t pn = -1;
    if (path != NULL && h->path.n > 0 && h->path.p[0] == '/')
        pn = tg_router_normalize_path(h->path.p, h->path.n, path, h->path.n + 1);
    if (path == NULL || req->method == NULL || req->host == NULL) {
        abort_client(req, "out of memory");
        goto out;
    }
    if (pn < 0) {
        req->path = req_strdup(req, h->target.p, h->target.n > 200 ? 200 : h->target.n);
        respond_local(req, 400, "400 Bad Request: invalid path\n", true);
        goto out;
    }
    req->route_path_len = (size_t)pn;
    if (qn > 0) {
        path[pn++] = '?';
        memcpy(path + pn, h->query.p, h->query.n);
        pn += (ssize_t)h->query.n;
    }
    path[pn] = '\0';
    req->path = path;
    req->path_len = (size_t)pn;

    if (identified == -2) {
        abort_client(req, "out of memory");
        goto out;
    }
    if (identified < 0) {
        TG_METRIC_INC(w->metrics->forwarded_conflict);
        respond_local(req, 400, "400 Bad Request: X-Forwarded-For and Forwarded name different "
                                "clients\n", true);
        goto out;
    }
    if (req->method_id == TG_HTTP_CONNECT || req->method_id == TG_HTTP_TRACE) {
        respond_local(req, 405, "405 Method Not Allowed\n", false);
        goto out;
    }
    if (c->lcfg->redirect_to_https) {
        redirect_to_https(req, host);
        goto out;
    }
    if (c->lcfg->admin) {
        req->phase = TG_REQ_LOCAL;
        tg_admin_handle(req);
        goto out;
    }

    struct tg_str capture;
    req->site = tg_router_hosts_match(cfg->hosts, host, &capture);
    if (req->site == NULL) {
        if (cfg->domain_site != NULL) {
            lookup_domain(req, host);
            goto out;
        }
        TG_METRIC_INC(w->metrics->unknown_host);
        respond_local(req, 404, "404 Not Found: no site serves this host\n", false);
        goto out;
    }
    if (capture.p != NULL) {
        if (!tg_router_valid_label(capture)) {
            respond_local(req, 400, "400 Bad Request: invalid tenant name\n", true);
            goto out;
        }
        char *id = tg_arena_strndup(&req->arena, capture.p, capture.n);
        for (char *p = id; p != NULL && *p; p++)
            *p = tg_ascii_lower(*p);
        req->tenant = id;
    }
    route_request(req);
out:
    if (!req_over(req)) {
        update_watches(req);
        arm_deadline(req);
    }
    req_unref(req);
}

/* ---- upstream connection ----------------------------------------------------------- */

/* Every attempt failed, or one failed in a way that cannot be retried. */
static void fail_upstream(struct tg_request *req, int status, const char *what)
{
    tg_log_error("request %s: upstream %s %s%s%s", req->request_id,
                 req->upstream ? req->upstream->name : "-", what,
                 req->up_name ? " at " : "", req->up_name ? req->up_name : "");
    if (req->resp_head_done || (req->out != NULL && tg_buf_len(req->out) > 0)) {
        abort_client(req, NULL);
        return;
    }
    respond_local(req, status,
                  status == 504 ? "504 Gateway Timeout: the upstream did not answer in time\n"
                                : "502 Bad Gateway: the upstream could not be reached\n",
                  false);
}

/* An attempt failed before any response byte. Retries on another server
 * when nothing was consumed that cannot be sent again. */
static void attempt_failed(struct tg_request *req, const char *what, bool timeout)
{
    struct tg_upconn *uc = req->up;
    bool was_reused = uc != NULL && uc->reused;
    bool head_sent = req->up_head_sent > 0;
    if (uc != NULL && !(was_reused && !timeout) && tg_upstream_report(uc, req->upstream, false))
        TG_METRIC_INC(upstream_stats(req)->ejections);
    drop_upstream(req, false);

    bool replayable = !req->sent_body_bytes && !req->resp_head_done &&
                      (req->out == NULL || tg_buf_len(req->out) == 0);
    bool may_retry = replayable &&
                     (!head_sent || tg_http_method_idempotent(req->method_id) || was_reused);
    if (may_retry && was_reused && !timeout) {
        /* A pooled connection the backend had closed: not the server's
         * fault, try again without counting an attempt. */
        req->tried &= ~(req->server >= 0 && req->server < 64 ? 1ull << req->server : 0);
        req->attempts--;
    }
    TG_METRIC_INC(upstream_stats(req)->failures);
    if (timeout)
        TG_METRIC_INC(upstream_stats(req)->timeouts);
    if (may_retry && req->attempts <= req->upstream->retries) {
        TG_METRIC_INC(upstream_stats(req)->retries);
        tg_log_info("request %s: upstream %s %s at %s; retrying", req->request_id,
                    req->upstream->name, what, req->up_name ? req->up_name : "-");
        req->up_head_sent = 0;
        req->up_write_failed = false;
        connect_upstream(req);
        return;
    }
    fail_upstream(req, timeout ? 504 : 502, what);
}

/* Round-robin position: per worker and snapshot for configured upstreams;
 * a tenant from Redis keeps its own (worker-local); static tenants are
 * shared by all workers, so they use one per-worker position. */
static unsigned *pick_cursor(struct tg_request *req)
{
    struct tg_tenant *t = req->tenant_obj;
    if (t != NULL && req->upstream == &t->upstream)
        return t->refs > 0 ? &t->rr_cursor : &req_worker(req)->static_tenant_rr;
    return &req->wcfg->rr_cursor[req->upstream->index];
}

/* ---- waiting for a connection slot (upstreams.max_connections) ------------ */

static void upwait_unlink(struct tg_request *req)
{
    if (tg_list_linked(&req->upwait_link))
        tg_list_remove(&req->upwait_link);
}

/* Every server that may take the request is at its connection cap: wait
 * (like HAProxy's queue) until one frees a slot, at most connect_timeout
 * from the first try; then 503. */
static void upwait_enqueue(struct tg_request *req)
{
    if (req->upwait_until == 0) {
        req->upwait_until = req_now(req) + MS(req->upstream->connect_timeout_ms);
        TG_METRIC_INC(upstream_stats(req)->queued);
    }
    req->phase = TG_REQ_CONNECTING;
    tg_list_push_back(&req_worker(req)->upwait, &req->upwait_link);
    arm_deadline(req);
}

/* A slot freed somewhere (upstream.c started this watcher): each waiting
 * request tries again, oldest first; those still without a slot queue up
 * again in the same order. */
void tg_proxy_upwait_kick(struct ev_loop *loop, ev_prepare *wp, int revents)
{
    (void)revents;
    ev_prepare_stop(loop, wp);
    struct tg_worker *w = wp->data;
    struct tg_list waiting;
    tg_list_init(&waiting);
    /* Move them all out first: connect_upstream may queue a request again. */
    struct tg_list *n;
    while ((n = tg_list_first(&w->upwait)) != NULL) {
        tg_list_remove(n);
        tg_list_push_back(&waiting, n);
    }
    while ((n = tg_list_first(&waiting)) != NULL) {
        tg_list_remove(n);
        struct tg_request *req = tg_list_entry(n, struct tg_request, upwait_link);
        struct tg_conn *c = req->conn;
        tg_conn_ref(c);
        req_ref(req);
        connect_upstream(req);
        if (!req_over(req))
            update_watches(req), arm_deadline(req);
        req_unref(req);
        tg_conn_unref(c);
    }
}

static void connect_upstream(struct tg_request *req)
{
    struct tg_worker *w = req_worker(req);
    uint64_t busy = 0; /* servers at their connection cap */
    for (;;) {
        int idx = tg_upstream_pick(w, pick_cursor(req), req->upstream, req->tried | busy,
                                   req->balance_hash);
        if (idx < 0 && busy != 0) {
            upwait_enqueue(req);
            return;
        }
        if (idx < 0) {
            fail_upstream(req, 502, "has no server left to try");
            return;
        }
        req->tried |= idx < 64 ? 1ull << idx : 0;
        req->attempts++;
        req->server = idx;
        struct tg_upconn *uc = tg_upstream_acquire(w, req->upstream, idx, req);
        if (uc == NULL && errno == EBUSY && idx < 64) {
            /* At its cap: not a failure, and not an attempt. */
            req->tried &= ~(1ull << idx);
            req->attempts--;
            busy |= 1ull << idx;
            continue;
        }
        if (uc == NULL) {
            tg_log_error("request %s: cannot open a connection to %s: %s", req->request_id,
                         req->upstream->servers[idx].addr.text, strerror(errno));
            if (req->attempts > req->upstream->retries) {
                fail_upstream(req, 502, "is unreachable");
                return;
            }
            continue;
        }
        req->up = uc;
        req->up_name = tg_upstream_name(uc);
        TG_METRIC_INC(upstream_stats(req)->requests);
        uc->on_io = on_upstream_io;
        req->up_start = req_now(req);
        req->up_read_at = req->up_write_at = req->up_start;
        if (uc->state != TG_UPCONN_ACTIVE) {
            req->phase = TG_REQ_CONNECTING;
            return;
        }
        req->phase = TG_REQ_FORWARDING;
        send_upstream(req);
        return;
    }
}

/* Writes the head and framed body bytes upstream until the socket is full. */
static void send_upstream(struct tg_request *req)
{
    struct tg_upconn *uc = req->up;
    struct tg_buf *in = req->conn->in;
    if (req->up_write_failed) {
        if (uc != NULL)
            uc->io.want_write = false; /* only its answer is awaited now */
        return;
    }
    while (uc != NULL && uc->state == TG_UPCONN_ACTIVE) {
        struct iovec iov[2];
        int n = 0;
        size_t head_left = 0;
        if (req->up_head != NULL && req->up_head_sent < tg_buf_len(req->up_head)) {
            head_left = tg_buf_len(req->up_head) - req->up_head_sent;
            iov[n].iov_base = req->up_head->data + req->up_head->start + req->up_head_sent;
            iov[n++].iov_len = head_left;
        }
        if (req->req_ready > 0 && in != NULL) {
            iov[n].iov_base = in->data + in->start;
            iov[n++].iov_len = req->req_ready;
        }
        if (n == 0) {
            if (req->req_body_done && req->phase != TG_REQ_TUNNEL)
                req->req_body_sent = true;
            uc->io.want_write = false;
            return;
        }
        ssize_t w = tg_io_writev(&uc->io, iov, n);
        if (w == TG_IO_AGAIN)
            return;
        if (w < 0) {
            if (req->phase == TG_REQ_TUNNEL) {
                abort_client(req, "upstream connection failed while sending");
                return;
            }
            /* A backend may answer before the body is all there (413, 401)
             * and close: its answer waits in the socket. Read it rather
             * than call this a failure; when nothing usable is there, the
             * read path fails the attempt (and retries if it may). */
            req->up_write_failed = true;
            uc->io.want_write = false;
            if (!req->resp_head_done)
                read_upstream(req);
            return;
        }
        uc->io.want_write = false;
        req->up_write_at = req_now(req);
        size_t done = (size_t)w;
        size_t from_head = done < head_left ? done : head_left;
        req->up_head_sent += from_head;
        req->lim.forwarded = true; /* a reserved failure token may now be spent */
        done -= from_head;
        if (done > 0) {
            tg_buf_consume(in, done);
            req->req_ready -= done;
            req->sent_body_bytes = true;
        }
    }
}

/* ---- client side -------------------------------------------------------------- */

static void read_client(struct tg_request *req)
{
    struct tg_conn *c = req->conn;
    struct tg_worker *w = c->w;
    if (c->in == NULL) {
        c->in = tg_buf_get(&w->bufs, w->bufs.small_size);
        if (c->in == NULL) {
            abort_client(req, "out of memory");
            return;
        }
    }
    if (tg_buf_room(c->in) == 0)
        tg_buf_compact(c->in);
    if (tg_buf_room(c->in) == 0)
        return; /* full: wait until the upstream takes bytes */
    ssize_t n = tg_io_read(&c->io, c->in->data + c->in->end, tg_buf_room(c->in));
    if (n == TG_IO_AGAIN)
        return;
    if (n <= 0) {
        /* The client went away (or reset). In a tunnel that ends it after
         * what the other side has in flight. */
        abort_client(req, n == 0 && !req->req_body_done ? "client closed during the request body"
                                                        : NULL);
        return;
    }
    c->in->end += (size_t)n;
    req->client_read_at = ev_now(w->loop);
    if (req->phase == TG_REQ_TUNNEL) {
        req->req_ready = tg_buf_len(c->in);
        req->bytes_in += (uint64_t)n;
    } else if (!req->req_body_done) {
        size_t before = req->req_ready;
        if (frame_request_body(req) < 0)
            return;
        req->bytes_in += req->req_ready - before;
    }
    if (req->phase == TG_REQ_PEEKING) {
        if (peek_ready(req))
            decide_and_forward(req);
        return;
    }
    send_upstream(req);
}

/* Writes the response head and framed body bytes to the client until done
 * or the socket is full. */
static void finish_response(struct tg_request *req);
static bool sse_inject(struct tg_request *req, const char *text, bool end_stream);

static void pump_client(struct tg_request *req)
{
    struct tg_conn *c = req->conn;
    for (;;) {
        struct iovec iov[2];
        int n = 0;
        size_t out_left = 0;
        if (req->out != NULL && tg_buf_len(req->out) > 0) {
            out_left = tg_buf_len(req->out);
            iov[n].iov_base = req->out->data + req->out->start;
            iov[n++].iov_len = out_left;
        }
        struct tg_buf *upin = req->up != NULL ? req->up->in : NULL;
        if (req->resp_ready > 0 && upin != NULL) {
            iov[n].iov_base = upin->data + upin->start;
            iov[n++].iov_len = req->resp_ready;
        }
        if (n == 0) {
            c->io.want_write = false;
            if (req->resp_head_done && req->resp_body_done) {
                finish_response(req);
            } else if (req->sse_draining && sse_inject(req, "retry: 1000\n\n", true)) {
                req->sse_draining = false;
            }
            return;
        }
        ssize_t w = tg_io_writev(&c->io, iov, n);
        if (w == TG_IO_AGAIN)
            return;
        if (w < 0) {
            abort_client(req, NULL);
            return;
        }
        c->io.want_write = false;
        req->client_write_at = req_now(req);
        req->bytes_out += (uint64_t)w;
        size_t done = (size_t)w;
        size_t from_out = done < out_left ? done : out_left;
        if (from_out > 0)
            tg_buf_consume(req->out, from_out);
        done -= from_out;
        if (done > 0) {
            tg_buf_consume(upin, done);
            req->resp_ready -= done;
        }
    }
}

/* The response has been written whole. */
static void finish_response(struct tg_request *req)
{
    struct tg_upconn *uc = req->up;
    if (req->phase == TG_REQ_LOCAL) {
        end_request(req, !req->resp_close_client);
        return;
    }
    bool reusable = uc != NULL && req->resp.keep_alive &&
                    req->resp_framing != TG_HTTP1_BODY_CLOSE && req->req_body_sent &&
                    uc->in != NULL && tg_buf_len(uc->in) == 0 && req->phase != TG_REQ_TUNNEL;
    if (uc != NULL) {
        bool failed = req->upstream->fail_on_5xx && req->status >= 500;
        if (tg_upstream_report(uc, req->upstream, !failed))
            TG_METRIC_INC(upstream_stats(req)->ejections);
        drop_upstream(req, reusable);
    }
    end_request(req, !req->resp_close_client);
}

/* ---- response side ----------------------------------------------------------------- */

static bool is_event_stream(const struct tg_http1_response *r)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        if (!tg_http_name_eq(r->headers[i].name, "content-type"))
            continue;
        struct tg_str v = r->headers[i].value;
        return v.n >= 17 && strncasecmp(v.p, "text/event-stream", 17) == 0;
    }
    return false;
}

static void note_sse_data(struct tg_request *req, const char *p, size_t n)
{
    if (n >= 3) {
        memcpy(req->sse_tail, p + n - 3, 3);
    } else {
        memmove(req->sse_tail, req->sse_tail + n, 3 - n);
        memcpy(req->sse_tail + 3 - n, p, n);
    }
}

/* Frames newly arrived response bytes. Returns -1 if the request ended. */
static int frame_response_body(struct tg_request *req)
{
    struct tg_buf *in = req->up->in;
    if (req->resp_body_done) {
        if (tg_buf_len(in) > req->resp_ready && req->phase != TG_REQ_TUNNEL)
            req->resp.keep_alive = false; /* bytes after the end: not reusable */
        return 0;
    }
    size_t avail = tg_buf_len(in) - req->resp_ready;
    char *p = in->data + in->start + req->resp_ready;
    switch (req->resp_framing) {
    case TG_HTTP1_BODY_LENGTH: {
        size_t take = avail < req->resp_remaining ? avail : (size_t)req->resp_remaining;
        if (req->sse)
            note_sse_data(req, p, take);
        req->resp_ready += take;
        req->resp_remaining -= take;
        if (req->resp_remaining == 0)
            req->resp_body_done = true;
        break;
    }
    case TG_HTTP1_BODY_CHUNKED: {
        /* Verbatim, or with the framing cut out in place for HTTP/1.0. */
        char *write = p;
        while (avail > 0 && !req->resp_chunked.done) {
            size_t dlen = 0;
            ssize_t r = tg_http1_chunked_next(&req->resp_chunked, p, avail, &dlen);
            if (r < 0) {
                tg_log_error("request %s: upstream %s sent an invalid chunked body",
                             req->request_id, req->up_name);
                abort_client(req, NULL);
                return -1;
            }
            if (dlen > 0 && req->sse)
                note_sse_data(req, p, dlen);
            if (req->resp_dechunk) {
                if (dlen > 0 && write != p)
                    memmove(write, p, dlen);
                write += dlen;
            } else {
                write += r;
            }
            p += r;
            avail -= (size_t)r;
            if (r == 0)
                break;
        }
        if (req->resp_dechunk && write != p) {
            /* Close the gap left by the framing we dropped. */
            size_t tail = (size_t)(in->data + in->end - p);
            memmove(write, p, tail);
            in->end -= (size_t)(p - write);
        }
        req->resp_ready = (size_t)(write - (in->data + in->start));
        if (req->resp_chunked.done)
            req->resp_body_done = true;
        break;
    }
    case TG_HTTP1_BODY_CLOSE:
        if (req->sse)
            note_sse_data(req, p, avail);
        req->resp_ready += avail;
        break;
    default:
        req->resp_body_done = true;
        break;
    }
    if (req->resp_body_done && tg_buf_len(in) > req->resp_ready)
        req->resp.keep_alive = false;
    return 0;
}

static void enter_tunnel(struct tg_request *req)
{
    struct tg_conn *c = req->conn;
    req->phase = TG_REQ_TUNNEL;
    req->resp_framing = TG_HTTP1_BODY_CLOSE;
    req->req_body_done = true;
    req->resp_body_done = false;
    req->resp_close_client = true;
    /* Whatever the client sent after the upgrade request is tunnel data. */
    req->req_ready = c->in != NULL ? tg_buf_len(c->in) : 0;
}

static void on_response_head(struct tg_request *req, size_t head_len)
{
    struct tg_worker *w = req_worker(req);
    const struct tg_http1_response *r = &req->resp;
    struct tg_conn *c = req->conn;

    req->status = r->status;
    req->up_header_at = req_now(req);
    struct tg_upstream_stats *us = upstream_stats(req);
    double took = req->up_header_at - req->up_start;
    TG_METRIC_INC(us->response[tg_metrics_bucket(took)]);
    TG_METRIC_ADD(us->response_us, took > 0 ? (uint64_t)(took * 1e6) : 0);
    tg_limiter_after_response(&req->lim, r->status);
    req->resp_framing = (uint8_t)r->framing;
    req->resp_remaining = r->content_length;
    tg_http1_chunked_init(&req->resp_chunked, MAX_TRAILER);
    req->resp_dechunk = r->framing == TG_HTTP1_BODY_CHUNKED && req->minor_version == 0;
    req->sse = is_event_stream(r);
    if (req->sse)
        req->stream = true;
    unsigned max_streams = req_config(req)->stream.max_per_ip;
    if (req->stream && max_streams != 0 && r->status < 300) {
        struct tg_addr group;
        tg_iptable_group(&req->client, req_config(req)->client.ipv6_prefix, &group);
        if (!tg_iptable_acquire(w->rt->iptable, &group, TG_IPTABLE_STREAMS, max_streams)) {
            drop_upstream(req, false);
            respond_local(req, 429, "429 Too Many Requests: too many open streams from "
                                    "this client\n", false);
            return;
        }
        req->stream_counted = true;
    }
    memcpy(req->sse_tail, "\n\n\n", 3); /* the start is an event boundary */
    req->resp_close_client = r->framing == TG_HTTP1_BODY_CLOSE || req->resp_dechunk ||
                             !req->client_keep_alive || c->close_after || w->draining ||
                             !req->req_body_done;
    if (r->status == 101)
        req->resp_close_client = true;

    size_t need = head_len + 512;
    if (req->out == NULL)
        req->out = tg_buf_get(&w->bufs, need);
    else if (tg_buf_room(req->out) < need)
        tg_buf_grow(&w->bufs, &req->out, tg_buf_len(req->out) + need);
    if (req->out == NULL || tg_headers_build_response(req, req->out) < 0) {
        fail_upstream(req, 502, "sent a response head we could not rewrite");
        return;
    }
    tg_buf_consume(req->up->in, head_len);
    req->resp_head_done = true;
    if (r->status == 101)
        enter_tunnel(req);
    else
        req->phase = TG_REQ_RESPONDING;
}

/* Parses response heads (several when 1xx come first) and frames body bytes. */
static void handle_response(struct tg_request *req)
{
    struct tg_upconn *uc = req->up;
    struct tg_worker *w = req_worker(req);
    while (!req->resp_head_done) {
        struct tg_http1_limits limits = {8192, req->upstream->max_response_head, TG_HTTP1_MAX_HEADERS};
        const char *reason = "invalid";
        ssize_t r = tg_http1_parse_response(uc->in->data + uc->in->start, tg_buf_len(uc->in),
                                            &req->resp_scanned, &limits, req->method_id,
                                            &req->resp, &reason);
        if (r == TG_HTTP1_INCOMPLETE)
            return;
        if (r == TG_HTTP1_ERROR) {
            tg_upstream_report(uc, req->upstream, false);
            char what[120];
            snprintf(what, sizeof(what), "sent an invalid response (%s)", reason);
            drop_upstream(req, false);
            fail_upstream(req, 502, what);
            return;
        }
        req->resp_scanned = 0;
        int status = req->resp.status;
        if (status == 101) {
            if (!req->upgrade || !req->resp.upgrade_websocket) {
                drop_upstream(req, false);
                fail_upstream(req, 502, "switched protocols without being asked");
                return;
            }
        } else if (status < 200) {
            /* Interim answers (100 Continue, 103 Early Hints) go to HTTP/1.1
             * clients as they come; HTTP/1.0 cannot take them. */
            if (req->minor_version == 1) {
                if (req->out == NULL)
                    req->out = tg_buf_get(&w->bufs, (size_t)r + 256);
                if (req->out == NULL || tg_headers_build_interim(req, req->out) < 0) {
                    fail_upstream(req, 502, "sent an interim response we could not rewrite");
                    return;
                }
            }
            tg_buf_consume(uc->in, (size_t)r);
            continue;
        }
        on_response_head(req, (size_t)r);
        if (req_over(req))
            return;
    }
    if (req->phase == TG_REQ_TUNNEL) {
        req->resp_ready = tg_buf_len(uc->in);
    } else if (frame_response_body(req) < 0) {
        return;
    }
    pump_client(req);
    if (!req_over(req) && req->phase == TG_REQ_TUNNEL)
        send_upstream(req); /* client bytes that came with the upgrade */
}

static void upstream_eof(struct tg_request *req)
{
    if (req->phase == TG_REQ_TUNNEL) {
        req->resp_body_done = true;
        pump_client(req); /* flush, then finish_response ends it */
        return;
    }
    if (!req->resp_head_done) {
        if (req->up->in != NULL && tg_buf_len(req->up->in) > 0) {
            drop_upstream(req, false);
            fail_upstream(req, 502, "closed the connection in the middle of a response head");
            return;
        }
        attempt_failed(req, "closed the connection without answering", false);
        return;
    }
    if (req->resp_framing == TG_HTTP1_BODY_CLOSE) {
        req->resp_body_done = true;
        pump_client(req);
        return;
    }
    /* Truncated: never let the client take it as complete. */
    tg_log_error("request %s: upstream %s closed the connection in the middle of the body",
                 req->request_id, req->up_name);
    abort_client(req, NULL);
}

static void read_upstream(struct tg_request *req)
{
    struct tg_upconn *uc = req->up;
    struct tg_worker *w = req_worker(req);
    if (req->resp_body_done && req->phase != TG_REQ_TUNNEL) {
        /* The response is whole and still being written to the client; the
         * backend spoke again (closed, or sent bytes nobody asked for):
         * this connection will not be reused. */
        req->resp.keep_alive = false;
        return;
    }
    if (uc->in == NULL) {
        uc->in = tg_buf_get(&w->bufs, w->bufs.small_size);
        if (uc->in == NULL) {
            abort_client(req, "out of memory");
            return;
        }
    }
    if (tg_buf_room(uc->in) == 0)
        tg_buf_compact(uc->in);
    if (tg_buf_room(uc->in) == 0) {
        if (req->resp_head_done)
            return; /* full: wait for the client to take bytes */
        if (uc->in->cap >= req->upstream->max_response_head ||
            tg_buf_grow(&w->bufs, &uc->in, req->upstream->max_response_head) < 0) {
            drop_upstream(req, false);
            fail_upstream(req, 502, "sent a response head over max_response_head");
            return;
        }
    }
    ssize_t n = tg_io_read(&uc->io, uc->in->data + uc->in->end, tg_buf_room(uc->in));
    if (n == TG_IO_AGAIN)
        return;
    if (n == 0) {
        upstream_eof(req);
        return;
    }
    if (n < 0) {
        if (req->phase == TG_REQ_TUNNEL) {
            upstream_eof(req);
        } else if (!req->resp_head_done) {
            attempt_failed(req, "reset the connection", false);
        } else {
            tg_log_error("request %s: upstream %s reset the connection mid-body",
                         req->request_id, req->up_name);
            abort_client(req, NULL);
        }
        return;
    }
    uc->in->end += (size_t)n;
    req->up_read_at = ev_now(w->loop);
    handle_response(req);
}

/* ---- events ------------------------------------------------------------------- */

/* Connection set-up (connect, then TLS) for the request's upstream
 * connection; once it is ready the request head goes out. */
static void upstream_setup(struct tg_request *req, struct tg_upconn *uc)
{
    char what[120];
    if (uc->state == TG_UPCONN_CONNECTING) {
        if (tg_upstream_connected(uc, req->upstream) < 0) {
            snprintf(what, sizeof(what), "refused the connection (%s)", strerror(errno));
            TG_METRIC_INC(upstream_stats(req)->connect_errors);
            attempt_failed(req, what, false);
            return;
        }
    }
    if (uc->state == TG_UPCONN_HANDSHAKE) {
        const char *reason = "other";
        int rc = tg_upstream_handshake(uc, req->upstream, &reason);
        if (rc < 0) {
            snprintf(what, sizeof(what), "failed the TLS handshake (%s)", reason);
            attempt_failed(req, what, false);
            return;
        }
        if (rc == 0)
            return;
    }
    req->phase = TG_REQ_FORWARDING;
    send_upstream(req);
}

static void on_upstream_io(struct tg_upconn *uc, int revents)
{
    struct tg_request *req = uc->req;
    if (req == NULL)
        return;
    struct tg_conn *c = req->conn;
    tg_conn_ref(c);
    req_ref(req);
    if (uc->state == TG_UPCONN_CONNECTING || uc->state == TG_UPCONN_HANDSHAKE) {
        upstream_setup(req, uc);
    } else {
        if ((revents & EV_WRITE) && !req_over(req) && req->up == uc)
            send_upstream(req);
        if ((revents & EV_READ) && !req_over(req) && req->up == uc)
            read_upstream(req);
    }
    if (!req_over(req)) {
        update_watches(req);
        arm_deadline(req);
    }
    req_unref(req);
    tg_conn_unref(c);
}

void tg_proxy_on_client_io(struct tg_request *req, int revents)
{
    req_ref(req);
    if ((revents & EV_WRITE) || (req->conn->io.ssl != NULL && req->conn->io.want_write))
        pump_client(req);
    if ((revents & EV_READ) && !req_over(req)) {
        if (req->phase == TG_REQ_LOCAL || req->phase == TG_REQ_TENANT) {
            /* Input waits: until the answer is out, or the tenant known. */
        } else {
            read_client(req);
        }
    }
    if (!req_over(req)) {
        update_watches(req);
        arm_deadline(req);
    }
    req_unref(req);
}

/* Arms each socket for what the request waits for, given buffer space. */
static void update_watches(struct tg_request *req)
{
    struct tg_conn *c = req->conn;
    int cev = 0;
    bool out_pending = (req->out != NULL && tg_buf_len(req->out) > 0) || req->resp_ready > 0;
    if (out_pending)
        cev |= EV_WRITE;
    /* While the tenant directory answers, the head must stay where it is:
     * read nothing more until then. */
    if (req->phase != TG_REQ_LOCAL && req->phase != TG_REQ_TENANT &&
        (c->in == NULL || tg_buf_room(c->in) > 0 || c->in->start > 0))
        cev |= EV_READ;
    if (c->io.ssl != NULL && c->io.want_write)
        cev |= EV_WRITE;
    tg_conn_watch(c, cev);

    struct tg_upconn *uc = req->up;
    if (uc == NULL)
        return;
    int uev = 0;
    if (uc->state == TG_UPCONN_CONNECTING) {
        uev = EV_WRITE;
    } else if (uc->state == TG_UPCONN_HANDSHAKE) {
        uev = uc->io.want_write ? EV_WRITE : EV_READ;
    } else {
        bool head_left = req->up_head != NULL && req->up_head_sent < tg_buf_len(req->up_head);
        if (head_left || req->req_ready > 0)
            uev |= EV_WRITE;
        /* Keep reading even once the response is complete: the connection
         * goes back to the pool watching for EV_READ anyway, and leaving the
         * events as they are saves epoll_ctl calls. Only a full buffer
         * (backpressure) stops it. */
        bool room = uc->in == NULL || tg_buf_room(uc->in) > 0 || uc->in->start > 0 ||
                    !req->resp_head_done;
        if (room && !(req->resp_body_done && !req->resp.keep_alive))
            uev |= EV_READ;
        if (uc->io.ssl != NULL && uc->io.want_write)
            uev |= EV_WRITE;
    }
    tg_upstream_watch(uc, uev);
}

/* ---- timeouts ------------------------------------------------------------------- */

enum deadline_kind {
    DL_NONE = 0,
    DL_CONNECT,
    DL_UP_SEND,
    DL_UP_READ,
    DL_CLIENT_BODY,
    DL_CLIENT_SEND,
    DL_HEARTBEAT,
    DL_TUNNEL_IDLE,
    DL_CLIENT_RATE,
    DL_QUEUE,
};

/* client.min_body_rate: a body must average at least this many bytes per
 * second once it has been arriving for this long; checked each second, and
 * not while the gateway itself holds the client back (buffer full). */
#define MIN_RATE_GRACE_S 5.0

static void consider(ev_tstamp *best, enum deadline_kind *kind, ev_tstamp when,
                     enum deadline_kind k)
{
    if (*kind == DL_NONE || when < *best) {
        *best = when;
        *kind = k;
    }
}

static enum deadline_kind next_deadline(const struct tg_request *req, ev_tstamp *when)
{
    const struct tg_config *cfg = req_config(req);
    const struct tg_config_upstream *u = req->upstream;
    const struct tg_conn *c = req->conn;
    enum deadline_kind kind = DL_NONE;
    ev_tstamp best = 0;
    bool out_pending = (req->out != NULL && tg_buf_len(req->out) > 0) || req->resp_ready > 0;

    if (out_pending)
        consider(&best, &kind, req->client_write_at + MS(cfg->client.send_timeout_ms),
                 DL_CLIENT_SEND);
    switch (req->phase) {
    case TG_REQ_CONNECTING:
        if (tg_list_linked(&req->upwait_link))
            consider(&best, &kind, req->upwait_until, DL_QUEUE);
        else
            consider(&best, &kind, req->up_start + MS(u->connect_timeout_ms), DL_CONNECT);
        break;
    case TG_REQ_PEEKING:
    case TG_REQ_FORWARDING:
    case TG_REQ_RESPONDING: {
        if (!req->req_body_done && req->req_ready == 0)
            consider(&best, &kind, req->client_read_at + MS(cfg->client.body_timeout_ms),
                     DL_CLIENT_BODY);
        if (!req->req_body_done && cfg->client.min_body_rate > 0) {
            ev_tstamp first = req->start + MIN_RATE_GRACE_S;
            ev_tstamp next = req->rate_checked_at + 1.0;
            consider(&best, &kind, next > first ? next : first, DL_CLIENT_RATE);
        }
        if (req->up != NULL && req->up->watching & EV_WRITE)
            consider(&best, &kind, req->up_write_at + MS(u->send_timeout_ms), DL_UP_SEND);
        bool waiting_upstream = req->up != NULL && !req->resp_body_done && !out_pending;
        if (waiting_upstream && (!req->stream || !req->resp_head_done)) {
            ev_tstamp last = req->up_read_at > req->up_write_at ? req->up_read_at : req->up_write_at;
            int64_t rt = req->route != NULL && req->route->read_timeout_ms > 0
                             ? req->route->read_timeout_ms : u->read_timeout_ms;
            consider(&best, &kind, last + MS(rt), DL_UP_READ);
        }
        if (req->sse && req->resp_head_done && cfg->stream.heartbeat_ms > 0 && !out_pending)
            consider(&best, &kind, req->client_write_at + MS(cfg->stream.heartbeat_ms),
                     DL_HEARTBEAT);
        if (req->stream && req->resp_head_done && cfg->stream.idle_timeout_ms > 0) {
            ev_tstamp last = req->up_read_at > req->client_write_at ? req->up_read_at : req->client_write_at;
            consider(&best, &kind, last + MS(cfg->stream.idle_timeout_ms), DL_TUNNEL_IDLE);
        }
        break;
    }
    case TG_REQ_TUNNEL:
        if (cfg->stream.idle_timeout_ms > 0) {
            ev_tstamp last = req->client_read_at > req->up_read_at ? req->client_read_at : req->up_read_at;
            consider(&best, &kind, last + MS(cfg->stream.idle_timeout_ms), DL_TUNNEL_IDLE);
        }
        break;
    default:
        break;
    }
    (void)c;
    *when = best;
    return kind;
}

static void arm_deadline(struct tg_request *req)
{
    ev_tstamp when;
    if (next_deadline(req, &when) != DL_NONE)
        tg_conn_set_deadline(req->conn, when);
    else
        tg_conn_set_deadline(req->conn, req_now(req) + 3600.0);
}

static bool chunk_boundary(const struct tg_request *req)
{
    return req->resp_framing == TG_HTTP1_BODY_CLOSE || req->resp_dechunk ||
           (req->resp_framing == TG_HTTP1_BODY_CHUNKED &&
            tg_http1_chunked_at_boundary(&req->resp_chunked));
}

static bool at_event_boundary(const struct tg_request *req)
{
    const char *t = req->sse_tail;
    return (t[1] == '\n' && t[2] == '\n') || (t[1] == '\r' && t[2] == '\r') ||
           (t[0] == '\n' && t[1] == '\r' && t[2] == '\n');
}

/* Writes SSE bytes of our own between two events: a heartbeat comment, or
 * the retry hint at drain. Returns false when not at a boundary now. */
static bool sse_inject(struct tg_request *req, const char *text, bool end_stream)
{
    struct tg_worker *w = req_worker(req);
    bool out_pending = (req->out != NULL && tg_buf_len(req->out) > 0) || req->resp_ready > 0;
    if (!req->sse || req->resp_framing == TG_HTTP1_BODY_LENGTH || out_pending ||
        !chunk_boundary(req) || !at_event_boundary(req))
        return false;
    size_t n = strlen(text);
    if (req->out == NULL)
        req->out = tg_buf_get(&w->bufs, n + 64);
    if (req->out == NULL)
        return false;
    bool chunked = req->resp_framing == TG_HTTP1_BODY_CHUNKED && !req->resp_dechunk;
    char *p = req->out->data + req->out->end;
    int len = chunked ? snprintf(p, tg_buf_room(req->out), "%zx\r\n%s\r\n%s", n, text,
                                 end_stream ? "0\r\n\r\n" : "")
                      : snprintf(p, tg_buf_room(req->out), "%s", text);
    if (len < 0 || (size_t)len >= tg_buf_room(req->out))
        return false;
    req->out->end += (size_t)len;
    if (end_stream) {
        /* The rest of the upstream stream is dropped: the client reconnects
         * (to another gateway) after `retry`. */
        req->resp_body_done = true;
        req->resp_close_client = true;
        req->resp_ready = 0;
        drop_upstream(req, false);
    }
    pump_client(req);
    return true;
}

ev_tstamp tg_proxy_on_timeout(struct tg_request *req, ev_tstamp now)
{
    ev_tstamp when;
    enum deadline_kind kind = next_deadline(req, &when);
    if (kind == DL_NONE)
        return now + 3600.0;
    if (when > now)
        return when;
    ev_tstamp next = 0;
    req_ref(req);
    switch (kind) {
    case DL_CONNECT:
        TG_METRIC_INC(upstream_stats(req)->connect_errors);
        TG_METRIC_INC(upstream_stats(req)->timeouts);
        attempt_failed(req, "did not accept the connection in time", false);
        break;
    case DL_UP_SEND:
        attempt_failed(req, "did not take the request in time", true);
        break;
    case DL_QUEUE:
        upwait_unlink(req);
        TG_METRIC_INC(upstream_stats(req)->queue_timeouts);
        tg_log_info("request %s: upstream %s: every server at max_connections for "
                    "connect_timeout", req->request_id, req->upstream->name);
        respond_local_extra(req, 503, "Retry-After: 1\r\n",
                            "503 Service Unavailable: every backend server is busy\n");
        break;
    case DL_UP_READ:
        TG_METRIC_INC(upstream_stats(req)->timeouts);
        if (req->resp_head_done)
            abort_client(req, "upstream stopped sending mid-response (read_timeout)");
        else
            fail_upstream(req, 504, "did not answer within read_timeout");
        break;
    case DL_CLIENT_BODY:
        if (!req->resp_head_done && (req->out == NULL || tg_buf_len(req->out) == 0)) {
            req->req_body_done = true;
            respond_local(req, 408, "408 Request Timeout: the request body stopped arriving\n", true);
        } else {
            abort_client(req, "client stopped sending the request body");
        }
        break;
    case DL_CLIENT_SEND:
        abort_client(req, "client stopped reading (send_timeout)");
        break;
    case DL_CLIENT_RATE: {
        req->rate_checked_at = now;
        struct tg_buf *in = req->conn->in;
        bool held_back = in != NULL && tg_buf_room(in) == 0 && in->start == 0;
        double avg = (double)req->req_body_bytes / (now - req->start);
        if (!held_back && avg < (double)req_config(req)->client.min_body_rate) {
            if (!req->resp_head_done && (req->out == NULL || tg_buf_len(req->out) == 0)) {
                req->req_body_done = true;
                respond_local(req, 408, "408 Request Timeout: the request body arrives too "
                                        "slowly\n", true);
            } else {
                abort_client(req, "request body below client.min_body_rate");
            }
        }
        break;
    }
    case DL_HEARTBEAT:
        if (!sse_inject(req, ":\n\n", false))
            req->client_write_at = now; /* mid-event: look again later */
        break;
    case DL_TUNNEL_IDLE:
        abort_client(req, NULL);
        break;
    default:
        break;
    }
    if (!req_over(req)) {
        update_watches(req);
        ev_tstamp w2;
        if (next_deadline(req, &w2) != DL_NONE)
            next = w2 > now ? w2 : now + 0.001;
        else
            next = now + 3600.0;
    }
    req_unref(req);
    return next;
}

void tg_proxy_drain(struct tg_request *req)
{
    if (req_over(req) || !req->sse || !req->resp_head_done)
        return;
    req_ref(req);
    /* Mid-event now: the hint goes out at the next boundary (pump_client
     * looks again each time everything framed has been written). */
    req->sse_draining = !sse_inject(req, "retry: 1000\n\n", true);
    if (!req_over(req))
        update_watches(req);
    req_unref(req);
}
