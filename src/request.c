/* The request core: request objects and their lifetime, the events a
 * front end reports (handed on to the request's current owner through its
 * hooks), local answers, and the end of a request (what it holds
 * released, its log line and counters written, its stream finished).
 *
 * Deliberately not here: deciding what to do with a request (pipeline.c),
 * talking to a backend (forward.c), or any protocol's wire format (the
 * front ends). */
#include "request.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access_log.h"
#include "buf.h"
#include "compress.h"
#include "cache.h"
#include "codec.h"
#include "config.h"
#include "context.h"
#include "encoding.h"
#include "faultlog.h"
#include "headers.h"
#include "http.h"
#include "metrics.h"
#include "router.h"
#include "tenant.h"
#include "tls.h"
#include "trace_export.h"

/* Request objects kept between two trims (tg_request_trim_free_list keeps
 * what the busiest moment needed): see TG_BUF_MAX_FREE. */
#define MAX_FREE_REQUESTS 4096
#define ARENA_CHUNK 4096

/* ---- request objects -------------------------------------------------------- */

struct tg_request *tg_request_new(struct tg_context *ctx, struct tg_wcfg *wcfg,
                                  const struct tg_stream_ops *ops, struct tg_stream *stream)
{
    struct tg_request *req = ctx->free_requests;
    struct tg_arena arena; /* a reused request keeps its arena's chunk */
    if (req != NULL) {
        ctx->free_requests = req->next_free;
        ctx->nfree_requests--;
        arena = req->arena;
    } else {
        req = tg_pages_alloc(sizeof(*req));
        if (req == NULL)
            return NULL;
        tg_arena_init(&arena, ARENA_CHUNK);
    }
    if (++ctx->requests_in_use > ctx->requests_high_water)
        ctx->requests_high_water = ctx->requests_in_use;
    memset(req, 0, sizeof(*req));
    req->arena = arena;
    req->ctx = ctx;
    req->wcfg = wcfg;
    wcfg->refs++;
    req->stream_ops = ops;
    req->stream = stream;
    req->refs = 1;
    req->body_length = 0;
    req->start = req->client_read_at = req->client_write_at = tg_context_now(ctx);
    return req;
}

static void request_free(struct tg_request *req)
{
    struct tg_context *ctx = req->ctx;
    tg_context_cfg_release(req->wcfg);
    ctx->requests_in_use--;
    if (ctx->nfree_requests < MAX_FREE_REQUESTS && !ctx->stopping) {
        tg_arena_clear(&req->arena); /* its chunk serves the next request */
        req->next_free = ctx->free_requests;
        ctx->free_requests = req;
        ctx->nfree_requests++;
    } else {
        tg_arena_reset(&req->arena);
        tg_pages_free(req, sizeof(*req));
    }
}

void tg_request_trim_free_list(struct tg_context *ctx, size_t reserve)
{
    size_t busy = ctx->requests_high_water > ctx->requests_in_use
                      ? ctx->requests_high_water - ctx->requests_in_use
                      : 0;
    size_t keep = busy > reserve ? busy : reserve;
    while (ctx->nfree_requests > keep) {
        struct tg_request *req = ctx->free_requests;
        ctx->free_requests = req->next_free;
        ctx->nfree_requests--;
        tg_arena_reset(&req->arena);
        tg_pages_free(req, sizeof(*req));
    }
    ctx->requests_high_water = ctx->requests_in_use;
}

void tg_request_free_all(struct tg_context *ctx)
{
    size_t high = ctx->requests_high_water;
    ctx->requests_high_water = 0;
    tg_request_trim_free_list(ctx, 0);
    ctx->requests_high_water = high;
}

void tg_request_ref(struct tg_request *req)
{
    req->refs++;
}

void tg_request_unref(struct tg_request *req)
{
    if (--req->refs == 0)
        request_free(req);
}

const char *tg_request_strdup(struct tg_request *req, const char *p, size_t n)
{
    char *dst = tg_arena_alloc(&req->arena, n + 1);
    if (dst == NULL)
        return NULL;
    memcpy(dst, p, n);
    dst[n] = '\0';
    return dst;
}

void tg_request_set_hooks(struct tg_request *req, const struct tg_request_hooks *hooks)
{
    req->hooks = hooks;
}

/* ---- events from the front end -------------------------------------------- */

/* The route's max_body once it is known (it defaults to client.max_body),
 * before that the global one. 0 = unlimited. */
static uint64_t max_body(const struct tg_request *req)
{
    return req->route != NULL ? req->route->max_body : req->wcfg->config->client.max_body;
}

static const struct tg_request_hooks local_hooks;

void tg_request_body(struct tg_request *req)
{
    req->client_read_at = tg_context_now(req->ctx);
    uint64_t max = max_body(req);
    if (max != 0 && req->body_received > max) {
        /* A local answer under way (that 413 itself, when the body came
         * with the head) wants no body: the front end drops it. */
        if (!(req->head_sent && req->hooks == &local_hooks))
            tg_request_fail(req, 413, "413 Content Too Large\n");
        return;
    }
    if (!tg_request_over(req) && req->hooks != NULL && req->hooks->on_body != NULL) {
        tg_request_ref(req);
        req->hooks->on_body(req);
        tg_request_unref(req);
    }
}

void tg_request_writable(struct tg_request *req)
{
    if (!tg_request_over(req) && req->hooks != NULL && req->hooks->on_writable != NULL) {
        tg_request_ref(req);
        req->hooks->on_writable(req);
        tg_request_unref(req);
    }
}

ev_tstamp tg_request_timeout(struct tg_request *req, ev_tstamp now)
{
    if (tg_request_over(req) || req->hooks == NULL || req->hooks->on_timeout == NULL)
        return 0;
    tg_request_ref(req);
    ev_tstamp next = req->hooks->on_timeout(req, now);
    if (tg_request_over(req))
        next = 0;
    tg_request_unref(req);
    return next;
}

void tg_request_drain(struct tg_request *req)
{
    if (!tg_request_over(req) && req->hooks != NULL && req->hooks->on_drain != NULL) {
        tg_request_ref(req);
        req->hooks->on_drain(req);
        tg_request_unref(req);
    }
}

void tg_request_move(struct tg_request *req, ev_tstamp by)
{
    if (tg_request_over(req) || req->drain_by != 0)
        return;
    req->drain_by = by;
    tg_request_drain(req);
}

void tg_request_arm(struct tg_request *req, ev_tstamp when)
{
    if (!tg_request_over(req))
        req->stream_ops->set_deadline(req->stream, when);
}

/* ---- ending ------------------------------------------------------------------ */

/* Stops what the request waits for (a delay, a store's answer, a tenant
 * look-up): nothing may resume it after this. */
static void cancel_waits(struct tg_request *req)
{
    if (ev_is_active(&req->delay_timer))
        ev_timer_stop(req->ctx->loop, &req->delay_timer);
    if (req->lim != NULL && req->lim->pending > 0)
        tg_limiter_cancel(req->lim);
    if (req->tenant_wait != NULL) {
        tg_tenant_cancel(req->tenant_wait);
        req->tenant_wait = NULL;
    }
}

/* The current owner lets go (it answers nothing). */
static void drop_owner(struct tg_request *req)
{
    const struct tg_request_hooks *hooks = req->hooks;
    req->hooks = NULL;
    if (hooks != NULL && hooks->on_abort != NULL)
        hooks->on_abort(req);
    cancel_waits(req);
}

static void enc_free(struct tg_request *req);

/* Gives back what the request holds, whoever took it: the owner's own
 * things first (an upstream connection), then what the decisions took. */
static void release(struct tg_request *req, bool aborted)
{
    if (aborted)
        drop_owner(req);
    enc_free(req);
    req->hooks = NULL;
    cancel_waits(req);
    if (req->in_flight_counted) {
        req->in_flight_counted = false;
        atomic_fetch_sub(&req->wcfg->config->route_in_flight[req->route->counter], 1);
    }
    if (req->lim != NULL)
        tg_limiter_end(req->lim);
    if (req->cache != NULL)
        tg_cache_req_release(req->cache);
    if (tg_list_linked(&req->tenant_stream_link))
        tg_list_remove(&req->tenant_stream_link);
}

/* After the log line: req->tenant is the tenant's own id, which may go
 * with its last reference. */
static void release_tenant(struct tg_request *req)
{
    if (req->tenant_obj != NULL) {
        tg_tenant_release(req->tenant_obj);
        req->tenant_obj = NULL;
    }
    req->tenant = NULL;
}

/* Copies `s` (NULL: "") into a fixed field, cut to fit. */
static void span_copy(char *dst, size_t cap, const char *s, size_t n)
{
    if (s == NULL)
        n = 0;
    if (n >= cap)
        n = cap - 1;
    if (n > 0)
        memcpy(dst, s, n);
    dst[n] = '\0';
}

static void span_copy_cstr(char *dst, size_t cap, const char *s)
{
    span_copy(dst, cap, s, s != NULL ? strnlen(s, cap) : 0);
}

#define SPAN_COPY(field, s) span_copy_cstr(field, sizeof(field), (s))

/* The gateway's span for a sampled request, to the exporter. `wall_end`
 * is the access log's clock; `dur` the request's length on the same. */
static void export_span(struct tg_request *req, double wall_end, double dur)
{
    struct tg_trace_span sp;
    memcpy(sp.trace_id, req->trace.trace_id, 16);
    memcpy(sp.span_id, req->trace.span_id, 8);
    memcpy(sp.parent_id, req->trace.parent_id, 8);
    sp.has_parent = req->trace.has_parent;
    sp.end_ns = wall_end > 0 ? (uint64_t)(wall_end * 1e9) : 0;
    uint64_t dur_ns = dur > 0 ? (uint64_t)(dur * 1e9) : 0;
    sp.start_ns = sp.end_ns > dur_ns ? sp.end_ns - dur_ns : 0;
    sp.status = req->status;
    sp.upstream_us =
        req->up_header_at > 0 ? (int64_t)((req->up_header_at - req->up_start) * 1e6) : -1;
    sp.bytes_in = req->bytes_in;
    sp.bytes_out = req->bytes_out;
    SPAN_COPY(sp.method, req->method);
    SPAN_COPY(sp.scheme, req->https ? "https" : "http");
    const char *proto = req->proto != NULL && strlen(req->proto) > 5 ? req->proto + 5 : NULL;
    SPAN_COPY(sp.proto, proto != NULL && strcmp(proto, "2.0") == 0 ? "2" : proto);
    if (req->route != NULL)
        span_copy(sp.route, sizeof(sp.route), req->route->path, req->route->path_len);
    else
        sp.route[0] = '\0';
    span_copy(sp.path, sizeof(sp.path), req->path,
              req->route_path_len > 0 ? req->route_path_len : req->path_len);
    span_copy(sp.host, sizeof(sp.host), req->host, req->host_len);
    tg_addr_format(&req->client, sp.client, sizeof(sp.client));
    SPAN_COPY(sp.tenant, req->tenant);
    SPAN_COPY(sp.limit, req->lim != NULL && req->lim->active ? req->lim->outcome : NULL);
    SPAN_COPY(sp.upstream, req->up_name);
    tg_trace_export_push(&sp);
}

static void log_request(struct tg_request *req)
{
    struct tg_context *ctx = req->ctx;
    if (req->status == 0) {
        tg_tenant_metrics_end(ctx->tenant_metrics, &req->tenant_mark, NULL);
        return;
    }
    ev_tstamp now = tg_context_now(ctx);
    unsigned id = req->route != NULL                              ? req->route->metrics_id
                  : req->listener != NULL && req->listener->admin ? tg_metrics_admin_route()
                                                                  : tg_metrics_no_route();
    struct tg_route_stats *rs = &ctx->metrics->routes[id];
    int cls = req->status >= 100 && req->status < 600 && req->head_sent ? req->status / 100 : 0;
    TG_METRIC_INC(rs->requests[cls]);
    TG_METRIC_INC(ctx->metrics->requests_by_proto[req->proto != NULL && req->proto[5] == '2']);
    double dur = now - req->start;
    unsigned bucket = tg_metrics_bucket(dur);
    TG_METRIC_INC(rs->duration[bucket]);
    TG_METRIC_ADD(rs->duration_us, dur > 0 ? (uint64_t)(dur * 1e6) : 0);
    TG_METRIC_ADD(rs->bytes_in, req->bytes_in);
    TG_METRIC_ADD(rs->bytes_out, req->bytes_out);
    if (req->tenant != NULL) {
        struct tg_tenant_outcome o = {
            .status_class = (unsigned)cls,
            .bucket = bucket,
            .duration_us = dur > 0 ? (uint64_t)(dur * 1e6) : 0,
            .bytes_in = req->bytes_in,
            .bytes_out = req->bytes_out,
            .limited = req->lim != NULL && req->lim->limited,
            .upstream_error = req->upstream_failed,
        };
        tg_tenant_metrics_end(ctx->tenant_metrics, &req->tenant_mark, &o);
    }
    if (req->encoding != TG_ENC_IDENTITY) {
        TG_METRIC_INC(ctx->metrics->compressed[req->encoding]);
        TG_METRIC_ADD(ctx->metrics->compress_in[req->encoding], req->bytes_plain);
        TG_METRIC_ADD(ctx->metrics->compress_out[req->encoding], req->bytes_coded);
    }
    if (req->trace.span && req->trace.sampled && req->explain == NULL)
        export_span(req, now, dur);
    if (!tg_access_log_wanted(ctx->access_log, req->route, req->status))
        return;
    struct tg_access_record r = {
        .now = now,
        .client = &req->client,
        .method = req->method,
        .host = req->host,
        .path = req->path,
        .route = req->route,
        .proto = req->proto,
        .status = req->status,
        .bytes_in = req->bytes_in,
        .bytes_out = req->bytes_out,
        .duration_ms = dur * 1000.0,
        .upstream = req->up_name,
        .upstream_connect_ms =
            req->up_connected_at > 0 ? (req->up_connected_at - req->up_start) * 1000.0 : -1,
        .upstream_ms = req->up_header_at > 0 ? (req->up_header_at - req->up_start) * 1000.0 : -1,
        .user_agent = req->user_agent,
        .referer = req->referer,
        .request_id = req->request_id,
        .ssl = req->ssl,
        .tenant = req->tenant,
        .country = req->country,
        .lim = req->lim,
        .encoding = req->encoding != TG_ENC_IDENTITY ? tg_encoding_name(req->encoding) : NULL,
        .bytes_plain = req->bytes_plain,
        .bytes_coded = req->bytes_coded,
    };
    char trace_id[33], span_id[17];
    if (req->trace.span) {
        trace_id[tg_hex_encode(trace_id, req->trace.trace_id, 16, false)] = '\0';
        span_id[tg_hex_encode(span_id, req->trace.span_id, 8, false)] = '\0';
        r.trace_id = trace_id;
        r.span_id = span_id;
    }
    tg_access_log_write(ctx->access_log, &r);
}

void tg_request_end(struct tg_request *req, enum tg_stream_end how)
{
    if (tg_request_over(req))
        return;
    req->phase = TG_REQ_DONE;
    release(req, false);
    log_request(req);
    release_tenant(req);
    if (req->close_client && how == TG_STREAM_DONE)
        how = TG_STREAM_CLOSE;
    req->stream_ops->finish(req->stream, how);
    tg_request_unref(req);
}

void tg_request_abort(struct tg_request *req)
{
    if (tg_request_over(req))
        return;
    req->phase = TG_REQ_DONE;
    release(req, true);
    if (req->status == 0 || !req->answer_done)
        req->status = req->status != 0 && req->head_sent ? req->status : 499;
    log_request(req);
    release_tenant(req);
    tg_request_unref(req);
}

/* ---- sending ------------------------------------------------------------------ */

/* A compressed body under way: the encoder, and its output not yet taken
 * by the stream (one pool buffer: the bound on what waits here). */
struct tg_request_enc {
    struct tg_compress *c;
    struct tg_buf *out;
    bool end_asked; /* the body's end was given and all its bytes taken */
    bool finished;  /* the encoder wrote its last bytes */
    bool end_given; /* the stream took them and the end */
};

/* Returns the encoder's memory as soon as the body is over (or dropped). */
static void enc_free(struct tg_request *req)
{
    struct tg_request_enc *e = req->enc;
    if (e == NULL)
        return;
    tg_compress_free(e->c);
    e->c = NULL;
    tg_buf_put(&req->ctx->bufs, e->out);
    e->out = NULL;
}

void tg_request_negotiate(struct tg_request *req)
{
    if (req->route == NULL || !req->route->compress.enabled || req->method_id == TG_HTTP_HEAD ||
        req->upgrade_websocket)
        return;
    const struct tg_config_compress *cc = &req->route->compress;
    struct tg_encoding_accept a;
    tg_encoding_accept_init(&a);
    for (size_t i = 0; i < req->headers.n; i++)
        if (tg_http_name_eq(req->headers.v[i].name, "accept-encoding"))
            tg_encoding_accept_parse(&a, req->headers.v[i].value.p, req->headers.v[i].value.n);
    req->enc_offered = true;
    req->enc_choice = (uint8_t)tg_encoding_choose(&a, cc->order, cc->norder);
}

/* Whether a Vary field names Accept-Encoding, or is "*". */
static bool vary_covers(struct tg_str v)
{
    size_t i = 0;
    while (i < v.n) {
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
            i++;
        size_t s = i;
        while (i < v.n && v.p[i] != ',' && v.p[i] != ' ' && v.p[i] != '\t')
            i++;
        struct tg_str t = tg_str_make(v.p + s, i - s);
        if (tg_str_caseeq(t, "*") || tg_str_caseeq(t, "accept-encoding"))
            return true;
    }
    return false;
}

/* Whether the route compresses this answer (docs/configuration.md,
 * "Compression"): not for the statuses, fields and types it never
 * compresses, nor below min_length. *vary_done: its Vary already covers
 * Accept-Encoding. */
static bool enc_eligible(const struct tg_request *req, int status, const struct tg_http_headers *in,
                         int64_t length, bool *vary_done)
{
    const struct tg_config_compress *cc = &req->route->compress;
    *vary_done = false;
    if (status == 204 || status == 206 || status == 304)
        return false;
    bool typed = false;
    for (size_t i = 0; i < in->n; i++) {
        struct tg_str n = in->v[i].name, v = in->v[i].value;
        if (tg_http_name_eq(n, "content-encoding") || tg_http_name_eq(n, "content-range"))
            return false;
        if (tg_http_name_eq(n, "cache-control") && tg_encoding_no_transform(v.p, v.n))
            return false;
        if (tg_http_name_eq(n, "content-type")) {
            /* SSE stays byte for byte: never compressed, whatever types say. */
            if (tg_encoding_type_is(v.p, v.n, "text/event-stream") ||
                !tg_encoding_type_matches(v.p, v.n, cc->types, cc->ntypes))
                return false;
            typed = true;
        }
        if (tg_http_name_eq(n, "vary") && vary_covers(v))
            *vary_done = true;
    }
    return typed && !(length >= 0 && (uint64_t)length < cc->min_length);
}

/* The fields of an eligible answer sent with `enc`: Vary added unless
 * `vary_done`; coded, no Content-Length (the caller gives the length, if
 * it knows it), Content-Encoding, and a strong ETag made weak. NULL when
 * memory ran out. */
static const struct tg_http_headers *enc_fields(struct tg_request *req,
                                                const struct tg_http_headers *in,
                                                enum tg_encoding enc, bool vary_done)
{
    struct tg_http_headers *out = tg_arena_alloc(&req->arena, sizeof(*out));
    struct tg_http_header *v = tg_arena_alloc(&req->arena, (in->n + 2) * sizeof(*v));
    if (out == NULL || v == NULL)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < in->n; i++) {
        struct tg_http_header f = in->v[i];
        if (enc != TG_ENC_IDENTITY) {
            if (tg_http_name_eq(f.name, "content-length"))
                continue;
            if (tg_http_name_eq(f.name, "etag") && f.value.n > 0 && f.value.p[0] == '"') {
                /* The bytes differ from the identity response's: a strong
                 * validator would claim they are the same. */
                char *w = tg_arena_alloc(&req->arena, f.value.n + 2);
                if (w == NULL)
                    return NULL;
                memcpy(w, "W/", 2);
                memcpy(w + 2, f.value.p, f.value.n);
                f.value = tg_str_make(w, f.value.n + 2);
            }
        }
        v[n++] = f;
    }
    if (!vary_done)
        v[n++] = (struct tg_http_header){TG_STR("Vary"), TG_STR("Accept-Encoding")};
    if (enc != TG_ENC_IDENTITY) {
        const char *name = tg_encoding_name(enc);
        v[n++] =
            (struct tg_http_header){TG_STR("Content-Encoding"), tg_str_make(name, strlen(name))};
    }
    out->v = v;
    out->n = out->cap = n;
    return out;
}

/* Decides whether this answer is compressed and rewrites its fields for
 * it: *h becomes an arena copy and *length -1, and the body goes through
 * an encoder. An answer that could have been compressed but is not (the
 * client takes no coding offered, or no memory for an encoder) only gets
 * Vary. */
static void enc_head(struct tg_request *req, int status, const struct tg_http_headers **h,
                     int64_t *length)
{
    const struct tg_config_compress *cc = &req->route->compress;
    bool vary_done;
    if (!enc_eligible(req, status, *h, *length, &vary_done))
        return;
    enum tg_encoding enc = (enum tg_encoding)req->enc_choice;
    struct tg_request_enc *e = NULL;
    if (enc != TG_ENC_IDENTITY) {
        e = tg_arena_calloc(&req->arena, 1, sizeof(*e));
        if (e != NULL) {
            e->c = tg_compress_new(enc, cc->levels[enc]);
            e->out = e->c != NULL ? tg_buf_get(&req->ctx->bufs, req->ctx->bufs.small_size) : NULL;
            if (e->out == NULL) {
                /* Sent as it is: compression is never worth failing for. */
                tg_compress_free(e->c);
                tg_faultlog_note(TG_LOG_WARN, "out of memory", "responses not compressed",
                                 "request %s: no memory for a compressor; sent uncompressed",
                                 req->request_id);
                e = NULL;
            }
        }
        if (e == NULL)
            enc = TG_ENC_IDENTITY;
    }
    if (enc == TG_ENC_IDENTITY && vary_done)
        return;
    const struct tg_http_headers *out = enc_fields(req, *h, enc, vary_done);
    if (out == NULL) {
        if (e != NULL) {
            tg_compress_free(e->c);
            tg_buf_put(&req->ctx->bufs, e->out);
        }
        return;
    }
    if (enc != TG_ENC_IDENTITY) {
        *length = -1;
        req->enc = e;
        req->encoding = (uint8_t)enc;
    }
    *h = out;
}

/* The head, as it is, through the stream; a final one counts as sent. */
static int put_head(struct tg_request *req, int status, const struct tg_http_headers *h,
                    int64_t length, unsigned flags)
{
    if (req->close_client)
        flags |= TG_STREAM_CLOSE;
    int rc = req->stream_ops->send_head(req->stream, status, h, length, flags);
    if (rc == 0 && (status >= 200 || (flags & TG_STREAM_TUNNEL)))
        req->head_sent = true;
    return rc;
}

int tg_request_coding_for(struct tg_request *req, int status, const struct tg_http_headers *h,
                          int64_t length)
{
    bool vary_done;
    if (!req->enc_offered || !enc_eligible(req, status, h, length, &vary_done))
        return -1;
    return req->enc_choice;
}

int tg_request_send_coded_head(struct tg_request *req, int status, const struct tg_http_headers *h,
                               int coding, int64_t length, uint64_t plain_len, unsigned flags)
{
    bool vary_done;
    enc_eligible(req, status, h, -1, &vary_done);
    const struct tg_http_headers *out = enc_fields(req, h, (enum tg_encoding)coding, vary_done);
    if (out == NULL)
        return -1;
    if (coding != TG_ENC_IDENTITY) {
        req->encoding = (uint8_t)coding;
        req->precoded = true;
        req->bytes_plain = plain_len;
    }
    return put_head(req, status, out, length, flags);
}

int tg_request_send_head(struct tg_request *req, int status, const struct tg_http_headers *h,
                         int64_t length, unsigned flags)
{
    if (req->enc_offered && (req->phase == TG_REQ_FORWARDING || req->compress_local) &&
        status >= 200 && !(flags & (TG_STREAM_NO_BODY | TG_STREAM_TUNNEL)) && req->enc == NULL)
        enc_head(req, status, &h, &length);
    return put_head(req, status, h, length, flags);
}

/* Gives the stream what the encoder wrote. Returns 1 when all of it (and
 * the end, once finished) was taken, 0 when the stream is full, -1. */
static int enc_push(struct tg_request *req, struct tg_request_enc *e)
{
    size_t pending = tg_buf_len(e->out);
    if (pending == 0 && !e->finished)
        return 1;
    struct iovec o = {e->out->data + e->out->start, pending};
    ssize_t w = req->stream_ops->send_body(req->stream, &o, pending > 0 ? 1 : 0, e->finished);
    if (w < 0)
        return -1;
    if (w > 0) {
        req->bytes_out += (uint64_t)w;
        req->bytes_coded += (uint64_t)w;
        req->client_write_at = tg_context_now(req->ctx);
        tg_buf_consume(e->out, (size_t)w);
    }
    if ((size_t)w < pending)
        return 0;
    if (e->finished) {
        e->end_given = true;
        enc_free(req);
    }
    return 1;
}

static ssize_t enc_send_body(struct tg_request *req, const struct iovec *iov, int iovcnt, bool end)
{
    struct tg_request_enc *e = req->enc;
    size_t taken = 0, off = 0;
    int i = 0;
    if (e->out == NULL)
        return e->end_given ? 0 : -1; /* over (or dropped): nothing more goes */
    /* Output goes to the stream when a flush or the end made it whole, or
     * when the buffer is full, not after every step: a small body leaves
     * in one write with its head. First, what an earlier call left. */
    bool push = true;
    for (;;) {
        if (push || e->finished) {
            int pr = enc_push(req, e);
            if (pr < 0)
                return -1;
            if (pr == 0 || e->end_given)
                return (ssize_t)taken; /* full: tg_request_writable comes back */
        }
        push = false;
        while (i < iovcnt && off == iov[i].iov_len) {
            i++;
            off = 0;
        }
        bool more = i < iovcnt;
        /* All given is taken: flush (the caller has no more now, so the
         * backend paused), or finish at the body's end. */
        enum tg_compress_op op = more  ? TG_COMPRESS_RUN
                                 : end ? TG_COMPRESS_FINISH
                                       : TG_COMPRESS_FLUSH;
        if (!more && end)
            e->end_asked = true;
        size_t used = 0, wrote = 0;
        int r = tg_compress_step(e->c, more ? (const char *)iov[i].iov_base + off : NULL,
                                 more ? iov[i].iov_len - off : 0, &used, e->out->data + e->out->end,
                                 tg_buf_room(e->out), &wrote, op);
        if (r < 0) {
            tg_faultlog_note(TG_LOG_ERROR, "compression", "responses cut",
                             "request %s: the %s encoder failed; closing the client's stream",
                             req->request_id, tg_encoding_name(req->encoding));
            return -1;
        }
        e->out->end += wrote;
        off += used;
        taken += used;
        req->bytes_plain += used;
        if (r == 0)
            push = true; /* the buffer is full */
        if (r == 1 && !more) {
            if (op == TG_COMPRESS_FINISH) {
                e->finished = true;
            } else if (tg_buf_len(e->out) == 0) {
                /* Flushed, nothing new: the stream writes what it holds. */
                return req->stream_ops->send_body(req->stream, NULL, 0, false) < 0 ? -1
                                                                                   : (ssize_t)taken;
            } else {
                push = true; /* flushed: decodable now, so it goes now */
            }
        }
    }
}

ssize_t tg_request_send_body(struct tg_request *req, const struct iovec *iov, int iovcnt, bool end)
{
    if (req->enc != NULL)
        return enc_send_body(req, iov, iovcnt, end);
    ssize_t n = req->stream_ops->send_body(req->stream, iov, iovcnt, end);
    if (n > 0) {
        req->bytes_out += (uint64_t)n;
        if (req->precoded)
            req->bytes_coded += (uint64_t)n;
        else
            req->bytes_plain += (uint64_t)n;
        req->client_write_at = tg_context_now(req->ctx);
    }
    return n;
}

bool tg_request_body_pending(const struct tg_request *req)
{
    const struct tg_request_enc *e = req->enc;
    return e != NULL && e->out != NULL && !e->end_given && (e->end_asked || tg_buf_len(e->out) > 0);
}

/* ---- local answers ------------------------------------------------------------ */

static void local_writable(struct tg_request *req);
static ev_tstamp local_timeout(struct tg_request *req, ev_tstamp now);

static const struct tg_request_hooks local_hooks = {
    .on_writable = local_writable,
    .on_timeout = local_timeout,
};

/* Writes what is left of a local answer's body; ends the request once the
 * stream took it all. */
static void local_writable(struct tg_request *req)
{
    struct iovec iov = {(void *)req->local_body, req->local_left};
    ssize_t n = tg_request_send_body(req, &iov, req->local_left > 0 ? 1 : 0, true);
    if (n < 0) {
        tg_request_end(req, TG_STREAM_RESET);
        return;
    }
    req->local_body += n;
    req->local_left -= (size_t)n;
    if (req->local_left > 0) {
        const struct tg_config *cfg = req->wcfg->config;
        tg_request_arm(req, req->client_write_at + (double)cfg->client.send_timeout_ms / 1000.0);
        return;
    }
    req->answer_done = true;
    tg_request_end(req, req->close_client ? TG_STREAM_CLOSE : TG_STREAM_DONE);
}

/* A client that stops taking a local answer is dropped after send_timeout. */
static ev_tstamp local_timeout(struct tg_request *req, ev_tstamp now)
{
    const struct tg_config *cfg = req->wcfg->config;
    ev_tstamp when = req->client_write_at + (double)cfg->client.send_timeout_ms / 1000.0;
    if (now < when)
        return when;
    tg_request_end(req, TG_STREAM_RESET);
    return 0;
}

void tg_request_fail(struct tg_request *req, int status, const char *body)
{
    if (tg_request_over(req))
        return;
    tg_request_ref(req);
    drop_owner(req);
    tg_request_respond_text(req, status, body, true);
    tg_request_unref(req);
}

void tg_request_respond(struct tg_request *req, int status, const char *type, const char *body,
                        size_t len, bool close)
{
    struct tg_http_header ct = {TG_STR("Content-Type"), tg_str_make(type, strlen(type))};
    struct tg_http_headers own = {&ct, 1, 1};
    tg_request_respond_fields(req, status, &own, body, len, close);
}

void tg_request_respond_fields(struct tg_request *req, int status,
                               const struct tg_http_headers *own, const char *body, size_t len,
                               bool close)
{
    if (tg_request_over(req))
        return;
    tg_request_ref(req);
    cancel_waits(req);
    if (req->head_sent) {
        /* Too late for an answer of our own: the client must not take what
         * it got as complete. */
        tg_request_end(req, TG_STREAM_RESET);
        goto out;
    }
    struct tg_context *ctx = req->ctx;
    const struct tg_config *cfg = req->wcfg->config;
    req->phase = TG_REQ_LOCAL;
    req->status = status;
    req->close_client |= close;
    req->hooks = &local_hooks;
    TG_METRIC_INC(ctx->metrics->local_answers);

    const struct tg_config_headers *rules =
        req->route != NULL && req->route->headers != NULL ? req->route->headers : &cfg->headers;
    struct tg_headers_response in = {
        .rules = rules,
        .hsts = tg_request_hsts(req),
        .request_id = tg_str_make(req->request_id, req->request_id_len),
        .lim = req->lim,
        .extra = req->extra_headers,
    };
    struct tg_http_headers fields;
    char *copy = len > 0 ? tg_arena_alloc(&req->arena, len) : NULL;
    if (tg_headers_response_fields(&req->arena, &in, own, &fields) < 0 ||
        (len > 0 && copy == NULL)) {
        tg_request_end(req, TG_STREAM_RESET);
        goto out;
    }
    /* Our own fields (Content-Type, ...) are treated like a backend's. */
    if (len > 0)
        memcpy(copy, body, len);
    bool no_body = req->method_id == TG_HTTP_HEAD;
    if (tg_request_send_head(req, status, &fields, (int64_t)len, no_body ? TG_STREAM_NO_BODY : 0) <
        0) {
        tg_request_end(req, TG_STREAM_RESET);
        goto out;
    }
    req->local_body = copy;
    req->local_left = no_body ? 0 : len;
    local_writable(req);
out:
    tg_request_unref(req);
}

bool tg_request_hsts(const struct tg_request *req)
{
    return req->https && req->host != NULL &&
           tg_router_public_name(tg_str_make(req->host, req->host_len)) &&
           !tg_tls_cert_self_signed(req->ssl);
}

/* ---- error bodies --------------------------------------------------------------- */

#define TEXT_TYPE "text/plain; charset=utf-8"
/* Room for an error body; `why` is cut to fit (ours are one short line). */
#define ERROR_BODY_MAX 4096
#define WHY_MAX 256

static enum tg_config_error_body errors_of(const struct tg_request *req)
{
    if (req->route != NULL)
        return (enum tg_config_error_body)req->route->errors;
    if (req->site != NULL)
        return (enum tg_config_error_body)req->site->errors;
    return TG_ERRORS_TEXT;
}

struct body {
    char p[ERROR_BODY_MAX];
    size_t n;
};

static void add(struct body *b, const char *s, size_t n)
{
    if (n > sizeof(b->p) - b->n)
        n = sizeof(b->p) - b->n;
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void adds(struct body *b, const char *s)
{
    add(b, s, strlen(s));
}

/* `s` as JSON string content, or as HTML text. */
static void add_escaped(struct body *b, const char *s, bool html)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (html && (c == '<' || c == '>' || c == '&' || c == '"' || c == '\'')) {
            snprintf(esc, sizeof(esc), "&#%u;", c);
            adds(b, esc);
        } else if (!html && (c == '"' || c == '\\')) {
            add(b, "\\", 1);
            add(b, (const char *)&c, 1);
        } else if (!html && c < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            adds(b, esc);
        } else {
            add(b, (const char *)&c, 1);
        }
    }
}

void tg_request_respond_error(struct tg_request *req, int status, const char *why,
                              const char *json_extra, bool close)
{
    const char *reason = tg_http_reason(status);
    char num[8];
    snprintf(num, sizeof(num), "%d", status);
    struct body b = {.n = 0};
    const char *type = TEXT_TYPE;
    switch (errors_of(req)) {
    case TG_ERRORS_JSON:
        type = "application/json";
        adds(&b, "{\"status\":");
        adds(&b, num);
        adds(&b, ",\"error\":\"");
        add_escaped(&b, reason, false);
        if (why != NULL) {
            adds(&b, "\",\"reason\":\"");
            add_escaped(&b, why, false);
        }
        adds(&b, "\"");
        if (json_extra != NULL)
            adds(&b, json_extra);
        adds(&b, ",\"message\":\"");
        add_escaped(&b, reason, false);
        if (why != NULL) {
            adds(&b, ": ");
            add_escaped(&b, why, false);
        }
        adds(&b, ".\",\"data\":{}}\n");
        break;
    case TG_ERRORS_HTML:
        type = "text/html; charset=utf-8";
        adds(&b, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>");
        adds(&b, num);
        adds(&b, " ");
        add_escaped(&b, reason, true);
        adds(&b, "</title></head>\n<body><h1>");
        adds(&b, num);
        adds(&b, " ");
        add_escaped(&b, reason, true);
        adds(&b, "</h1>\n");
        if (why != NULL) {
            adds(&b, "<p>");
            add_escaped(&b, why, true);
            adds(&b, "</p>\n");
        }
        adds(&b, "</body></html>\n");
        break;
    default:
        adds(&b, num);
        adds(&b, " ");
        adds(&b, reason);
        if (why != NULL) {
            adds(&b, ": ");
            adds(&b, why);
        }
        adds(&b, "\n");
        break;
    }
    tg_request_respond(req, status, type, b.p, b.n, close);
}

void tg_request_respond_text(struct tg_request *req, int status, const char *body, bool close)
{
    if (status < 400 || errors_of(req) == TG_ERRORS_TEXT) {
        tg_request_respond(req, status, TEXT_TYPE, body, strlen(body), close);
        return;
    }
    /* "NNN Reason: why\n": the why, if the head is the status's own. */
    const char *reason = tg_http_reason(status);
    size_t rn = strlen(reason);
    char why[WHY_MAX + 1];
    const char *p = body;
    if (strlen(p) > 4 && p[0] == '0' + status / 100 % 10 && p[1] == '0' + status / 10 % 10 &&
        p[2] == '0' + status % 10 && p[3] == ' ' && strncmp(p + 4, reason, rn) == 0)
        p += 4 + rn;
    if (p[0] == ':')
        p++;
    while (*p == ' ')
        p++;
    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == ' '))
        n--;
    if (n > WHY_MAX)
        n = WHY_MAX;
    memcpy(why, p, n);
    why[n] = '\0';
    tg_request_respond_error(req, status, n > 0 ? why : NULL, NULL, close);
}
