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
#include "codec.h"
#include "config.h"
#include "context.h"
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

/* Gives back what the request holds, whoever took it: the owner's own
 * things first (an upstream connection), then what the decisions took. */
static void release(struct tg_request *req, bool aborted)
{
    if (aborted)
        drop_owner(req);
    req->hooks = NULL;
    cancel_waits(req);
    if (req->in_flight_counted) {
        req->in_flight_counted = false;
        atomic_fetch_sub(&req->wcfg->config->route_in_flight[req->route->counter], 1);
    }
    if (req->lim != NULL)
        tg_limiter_end(req->lim);
    if (req->tenant_obj != NULL) {
        tg_tenant_release(req->tenant_obj);
        req->tenant_obj = NULL;
    }
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
    if (req->status == 0)
        return;
    ev_tstamp now = tg_context_now(ctx);
    unsigned id = req->route != NULL ? req->route->metrics_id : tg_metrics_no_route();
    struct tg_route_stats *rs = &ctx->metrics->routes[id];
    int cls = req->status >= 100 && req->status < 600 && req->head_sent ? req->status / 100 : 0;
    TG_METRIC_INC(rs->requests[cls]);
    TG_METRIC_INC(ctx->metrics->requests_by_proto[req->proto != NULL && req->proto[5] == '2']);
    double dur = now - req->start;
    TG_METRIC_INC(rs->duration[tg_metrics_bucket(dur)]);
    TG_METRIC_ADD(rs->duration_us, dur > 0 ? (uint64_t)(dur * 1e6) : 0);
    TG_METRIC_ADD(rs->bytes_in, req->bytes_in);
    TG_METRIC_ADD(rs->bytes_out, req->bytes_out);
    struct tg_access_record r = {
        .now = now,
        .client = &req->client,
        .method = req->method,
        .host = req->host,
        .path = req->path,
        .proto = req->proto,
        .status = req->status,
        .bytes_in = req->bytes_in,
        .bytes_out = req->bytes_out,
        .duration_ms = dur * 1000.0,
        .upstream = req->up_name,
        .upstream_ms = req->up_header_at > 0 ? (req->up_header_at - req->up_start) * 1000.0 : -1,
        .request_id = req->request_id,
        .ssl = req->ssl,
        .tenant = req->tenant,
        .country = req->country,
        .lim = req->lim,
    };
    char trace_id[33], span_id[17];
    if (req->trace.span) {
        trace_id[tg_hex_encode(trace_id, req->trace.trace_id, 16, false)] = '\0';
        span_id[tg_hex_encode(span_id, req->trace.span_id, 8, false)] = '\0';
        r.trace_id = trace_id;
        r.span_id = span_id;
        if (req->trace.sampled && req->explain == NULL)
            export_span(req, now, dur);
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
    tg_request_unref(req);
}

/* ---- sending ------------------------------------------------------------------ */

int tg_request_send_head(struct tg_request *req, int status, const struct tg_http_headers *h,
                         int64_t length, unsigned flags)
{
    if (req->close_client)
        flags |= TG_STREAM_CLOSE;
    int rc = req->stream_ops->send_head(req->stream, status, h, length, flags);
    if (rc == 0 && (status >= 200 || (flags & TG_STREAM_TUNNEL)))
        req->head_sent = true;
    return rc;
}

ssize_t tg_request_send_body(struct tg_request *req, const struct iovec *iov, int iovcnt, bool end)
{
    ssize_t n = req->stream_ops->send_body(req->stream, iov, iovcnt, end);
    if (n > 0) {
        req->bytes_out += (uint64_t)n;
        req->client_write_at = tg_context_now(req->ctx);
    }
    return n;
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
    struct tg_http_header ct = {TG_STR("Content-Type"), tg_str_make(type, strlen(type))};
    struct tg_http_headers own = {&ct, 1, 1}, fields;
    char *copy = len > 0 ? tg_arena_alloc(&req->arena, len) : NULL;
    if (tg_headers_response_fields(&req->arena, &in, &own, &fields) < 0 ||
        (len > 0 && copy == NULL)) {
        tg_request_end(req, TG_STREAM_RESET);
        goto out;
    }
    /* Content-Type is a field of ours the rules treat like the backend's. */
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
