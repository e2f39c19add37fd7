/* The HTTP/2 front end (h2.h).
 *
 * Calls into nghttp2 never nest: while the session reads or writes
 * (in_session), what the requests ask for (a head to send, a window to
 * open, a stream to finish) is only submitted, and a prepare watcher
 * (`kick`) sends it before the loop sleeps. The one synchronous call is a
 * stream's send_body, which offers its bytes, lets the session frame as
 * many as the windows allow into the output buffer, and says how many it
 * took; the rest is offered again when the stream can take more (a
 * WINDOW_UPDATE, or the output buffer drained).
 *
 * Request bodies are copied out of the frames into a buffer per stream,
 * bounded by the stream's window (the window opens only as bytes are
 * consumed upstream); response bodies are copied from the upstream buffer
 * into the connection's output buffer as DATA frames, which leave in one
 * write. */
#include "h2.h"

#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "codec.h"
#include "config.h"
#include "conn.h"
#include "context.h"
#include "http.h"
#include "list.h"
#include "faultlog.h"
#include "log.h"
#include "metrics.h"
#include "pipeline.h"
#include "request.h"
#include "router.h"

#define MS(x) ((double)(x) / 1000.0)
/* The output buffer: frames are framed into it until it holds this much,
 * then the session waits for the socket. With the slack below it fits the
 * worker's large pooled buffer (TG_BUF_LARGE_MIN): a bigger one would be
 * mapped and unmapped at every drain. */
#define OUT_HIGH (48 * 1024)
/* Room for one DATA frame beyond OUT_HIGH (its header and a full frame). */
#define OUT_SLACK (16 * 1024 + 64)
_Static_assert(OUT_HIGH + OUT_SLACK <= TG_BUF_LARGE_MIN, "the output buffer is a pooled one");
/* An active stream whose owner sets no deadline is looked at again after
 * this long (a safety net). */
#define IDLE_RECHECK_S 3600.0
/* A header field's cost toward the header-list limit (RFC 9113 6.5.2). */
#define FIELD_OVERHEAD 32
/* Frames counted toward the flood limits, per this window. */
#define FLOOD_WINDOW_S 1.0
/* Fields a request head starts with room for (the vector grows). */
#define FIELDS_INITIAL 16
/* Sec-WebSocket-Key toward an HTTP/1.1 backend: 16 random bytes, base64. */
#define WS_KEY_BYTES 16
/* A WINDOW_UPDATE is not a control frame to the flood count when we sent
 * this much DATA since the last one and it opens at least as much. */
#define WINDOW_UPDATE_PAID 1024

struct h2 {
    struct tg_conn *c;
    nghttp2_session *session;
    struct tg_buf *out;     /* frames not yet written */
    struct tg_list streams; /* of tg_stream.link: requests running */
    unsigned nstreams;
    ev_prepare kick;    /* sends what was submitted, before the loop sleeps */
    ev_tstamp idle_at;  /* since when no stream runs */
    ev_tstamp write_at; /* last bytes written (or the start) */
    ev_tstamp flood_at; /* start of the current flood window */
    ev_tstamp started;
    bool got_frame;           /* the client preface came */
    unsigned resets, control; /* in the current flood window */
    size_t data_credit[2];    /* DATA bytes sent that no WINDOW_UPDATE answered
                                     yet: [0] the connection's, [1] the streams' */
    bool in_session;          /* inside nghttp2: submit only */
    bool goaway;              /* GOAWAY sent: no new streams */
    bool broken;              /* the socket failed: close at the next chance */
    bool writable_pass;       /* some stream wants to be told it can send */
};

/* One stream: the request's client stream (in the request's arena). */
struct tg_stream {
    struct h2 *h;
    struct tg_request *req;
    int32_t id;
    struct tg_list link; /* h->streams */
    ev_tstamp deadline;
    /* The head as it comes. */
    struct tg_str method, scheme, authority, path, protocol, host;
    struct tg_str *cookies; /* crumbs, joined for the backend */
    size_t ncookies, cookies_cap;
    size_t head_bytes;
    int bad_status; /* 400 or 431 found while reading the head */
    const char *bad_why;
    bool started; /* the pipeline has it */
    /* The request body. */
    struct tg_buf *in; /* DATA received, not yet consumed */
    bool in_end;       /* END_STREAM came */
    bool tunnel;       /* extended CONNECT answered: DATA both ways */
    /* The response. */
    bool data_open;            /* a data provider was submitted */
    bool ended;                /* END_STREAM submitted (or framed) */
    const struct iovec *offer; /* send_body's bytes, while it runs */
    int noffer;
    size_t offer_total, offer_taken;
    bool offer_end;
    bool deferred;      /* the session holds its DATA until resumed */
    bool want_writable; /* tell the request when it can send again */
    bool closed;        /* nghttp2 closed the stream */
};

static struct h2 *h2_of(struct tg_conn *c)
{
    return *(struct h2 **)(void *)c->proto_state;
}

static const struct tg_config *config_of(const struct h2 *h)
{
    return h->c->wcfg->config;
}

static void frame(struct h2 *h);
static void h2_send(struct h2 *h);
static void arm(struct h2 *h);
static void kick_soon(struct h2 *h);

/* ---- output ------------------------------------------------------------------------ */

static int out_put(struct h2 *h, const void *p, size_t n)
{
    struct tg_context *ctx = h->c->ctx;
    if (h->out == NULL) {
        h->out = tg_buf_get(&ctx->bufs, OUT_HIGH + OUT_SLACK);
        if (h->out == NULL)
            return -1;
    }
    if (tg_buf_room(h->out) < n) {
        tg_buf_compact(h->out);
        if (tg_buf_room(h->out) < n && tg_buf_grow(&ctx->bufs, &h->out, tg_buf_len(h->out) + n) < 0)
            return -1;
    }
    memcpy(h->out->data + h->out->end, p, n);
    h->out->end += n;
    return 0;
}

static size_t out_len(const struct h2 *h)
{
    return h->out != NULL ? tg_buf_len(h->out) : 0;
}

/* Writes what the output buffer holds. Returns -1 when the client is gone. */
static int flush(struct h2 *h)
{
    struct tg_conn *c = h->c;
    while (out_len(h) > 0) {
        struct iovec v = {h->out->data + h->out->start, tg_buf_len(h->out)};
        ssize_t w = tg_io_writev(&c->io, &v, 1);
        if (w == TG_IO_AGAIN)
            return 0;
        if (w < 0) {
            h->broken = true;
            return -1;
        }
        c->io.want_write = false;
        tg_buf_consume(h->out, (size_t)w);
        h->write_at = tg_context_now(c->ctx);
    }
    if (h->out != NULL) {
        tg_buf_put(&c->ctx->bufs, h->out);
        h->out = NULL;
    }
    return 0;
}

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                       void *user_data)
{
    (void)session, (void)flags;
    struct h2 *h = user_data;
    if (out_len(h) >= OUT_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK;
    if (out_put(h, data, length) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)length;
}

/* A DATA frame: its header, then `length` bytes of the stream's offer. */
static int on_send_data(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *user_data)
{
    (void)source;
    struct h2 *h = user_data;
    struct tg_stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st == NULL || st->offer == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (out_put(h, framehd, 9) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    h->data_credit[0] += length;
    h->data_credit[1] += length;
    size_t skip = st->offer_taken, left = length;
    for (int i = 0; i < st->noffer && left > 0; i++) {
        size_t n = st->offer[i].iov_len;
        if (skip >= n) {
            skip -= n;
            continue;
        }
        size_t k = n - skip < left ? n - skip : left;
        if (out_put(h, (const char *)st->offer[i].iov_base + skip, k) < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        skip = 0;
        left -= k;
    }
    st->offer_taken += length;
    st->req->bytes_out += 9;
    return 0;
}

/* The session wants DATA for a stream: what its send_body offers now, as
 * much as the output buffer has room for. */
static ssize_t on_read_data(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data)
{
    (void)buf, (void)source;
    struct h2 *h = user_data;
    /* By id, not by the source pointer: a stream whose request ended is
     * gone from the session's user data, and its memory with it. */
    struct tg_stream *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (st == NULL || st->offer == NULL || (out_len(h) >= OUT_HIGH && st->offer_total > 0)) {
        if (st != NULL)
            st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t left = st->offer_total - st->offer_taken;
    size_t n = left < length ? left : length;
    if (n == 0 && !st->offer_end) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (st->offer_end && n == left) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        st->ended = true;
    }
    return (ssize_t)n;
}

/* ---- the request head ------------------------------------------------------------------ */

static struct tg_stream *stream_of(nghttp2_session *session, int32_t id)
{
    return nghttp2_session_get_stream_user_data(session, id);
}

static const struct tg_stream_ops h2_stream_ops;

/* A new stream's request. */
static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct h2 *h = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct tg_conn *c = h->c;
    struct tg_context *ctx = c->ctx;
    if (!tg_conn_refresh_config(c))
        c->draining = true; /* its listener is gone: finish what runs */
    struct tg_request *req = tg_request_new(ctx, c->wcfg, &h2_stream_ops, NULL);
    struct tg_stream *st = req != NULL ? tg_arena_calloc(&req->arena, 1, sizeof(*st)) : NULL;
    struct tg_http_header *v =
        st != NULL ? tg_arena_alloc(&req->arena, FIELDS_INITIAL * sizeof(*v)) : NULL;
    if (v == NULL) {
        if (req != NULL)
            tg_request_abort(req);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM INTERNAL_ERROR */
    }
    st->h = h;
    st->req = req;
    st->id = frame->hd.stream_id;
    req->stream = st;
    req->headers = (struct tg_http_headers){v, 0, FIELDS_INITIAL};
    req->listener = c->lcfg;
    req->peer = c->peer;
    req->ssl = c->io.ssl;
    req->https = c->io.ssl != NULL;
    req->proto = "HTTP/2.0";
    tg_list_push_back(&h->streams, &st->link);
    h->nstreams++;
    TG_METRIC_INC(ctx->metrics->h2_streams);
    nghttp2_session_set_stream_user_data(session, st->id, st);
    return 0;
}

static struct tg_str arena_str(struct tg_request *req, const uint8_t *p, size_t n)
{
    const char *s = tg_request_strdup(req, (const char *)p, n);
    return tg_str_make(s, s != NULL ? n : 0);
}

static void head_error(struct tg_stream *st, int status, const char *why)
{
    if (st->bad_status == 0) {
        st->bad_status = status;
        st->bad_why = why;
    }
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    (void)flags, (void)user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers are read and dropped */
    struct tg_stream *st = stream_of(session, frame->hd.stream_id);
    if (st == NULL || st->bad_status != 0)
        return 0;
    struct tg_request *req = st->req;
    const struct tg_config_client *cc = &config_of(st->h)->client;
    /* Counted as decoded: a small HPACK block that expands (references to
     * a big table entry) is stopped here. */
    st->head_bytes += namelen + valuelen + FIELD_OVERHEAD;
    if (st->head_bytes > cc->max_request_line + cc->max_head) {
        head_error(st, 431, "the request head is too large");
        return 0;
    }
    req->bytes_in += namelen + valuelen;
    struct tg_str v = arena_str(req, value, valuelen);
    if (v.p == NULL) {
        head_error(st, 503, "out of memory");
        return 0;
    }
    if (namelen > 0 && name[0] == ':') {
        struct tg_str *slot = NULL;
        if (namelen == 7 && memcmp(name, ":method", 7) == 0)
            slot = &st->method;
        else if (namelen == 7 && memcmp(name, ":scheme", 7) == 0)
            slot = &st->scheme;
        else if (namelen == 10 && memcmp(name, ":authority", 10) == 0)
            slot = &st->authority;
        else if (namelen == 5 && memcmp(name, ":path", 5) == 0)
            slot = &st->path;
        else if (namelen == 9 && memcmp(name, ":protocol", 9) == 0)
            slot = &st->protocol;
        if (slot != NULL)
            *slot = v;
        return 0; /* nghttp2 refuses unknown and repeated pseudo-headers */
    }
    if (namelen == 6 && memcmp(name, "cookie", 6) == 0) {
        /* RFC 9113 8.2.3: crumbs, joined with "; " for HTTP/1.1. */
        if (st->ncookies == st->cookies_cap) {
            size_t cap = st->cookies_cap ? 2 * st->cookies_cap : 4;
            struct tg_str *nc = tg_arena_alloc(&req->arena, cap * sizeof(*nc));
            if (nc == NULL) {
                head_error(st, 503, "out of memory");
                return 0;
            }
            if (st->ncookies > 0)
                memcpy(nc, st->cookies, st->ncookies * sizeof(*nc));
            st->cookies = nc;
            st->cookies_cap = cap;
        }
        st->cookies[st->ncookies++] = v;
        return 0;
    }
    if (namelen == 4 && memcmp(name, "host", 4) == 0) {
        if (st->host.p != NULL) {
            head_error(st, 400, "more than one Host");
            return 0;
        }
        st->host = v;
    }
    struct tg_http_headers *hv = &req->headers;
    if (hv->n == hv->cap) {
        size_t cap = 2 * hv->cap;
        struct tg_http_header *nv = tg_arena_alloc(&req->arena, cap * sizeof(*nv));
        if (nv == NULL) {
            head_error(st, 503, "out of memory");
            return 0;
        }
        memcpy(nv, hv->v, hv->n * sizeof(*nv));
        hv->v = nv;
        hv->cap = cap;
    }
    hv->v[hv->n++] = (struct tg_http_header){arena_str(req, name, namelen), v};
    return 0;
}

/* The characters an authority may hold: reg-name, IPv4, [IPv6], port. */
static bool valid_authority(struct tg_str a)
{
    static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                             "-._~!$&'()*+,;=:[]%";
    if (a.n == 0)
        return false;
    for (size_t i = 0; i < a.n; i++)
        if (a.p[i] == '\0' || strchr(ok, a.p[i]) == NULL)
            return false;
    struct tg_str host;
    return tg_router_host_without_port(a, &host);
}

static int push_field(struct tg_request *req, struct tg_str name, struct tg_str value)
{
    struct tg_http_headers *hv = &req->headers;
    if (hv->n == hv->cap) {
        size_t cap = 2 * hv->cap + 2;
        struct tg_http_header *nv = tg_arena_alloc(&req->arena, cap * sizeof(*nv));
        if (nv == NULL)
            return -1;
        memcpy(nv, hv->v, hv->n * sizeof(*nv));
        hv->v = nv;
        hv->cap = cap;
    }
    hv->v[hv->n++] = (struct tg_http_header){name, value};
    return 0;
}

/* Extended CONNECT (RFC 8441) becomes the HTTP/1.1 WebSocket upgrade the
 * backend understands: GET with Upgrade and a Sec-WebSocket-Key of ours. */
static int bridge_websocket(struct tg_stream *st)
{
    struct tg_request *req = st->req;
    req->method_id = TG_HTTP_GET;
    req->method = "GET";
    req->upgrade_websocket = true;
    unsigned char raw[WS_KEY_BYTES];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -1;
    char *key = tg_arena_alloc(&req->arena, 4 * ((WS_KEY_BYTES + 2) / 3) + 1);
    if (key == NULL)
        return -1;
    int kn = EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw));
    bool have_version = false;
    for (size_t i = 0; i < req->headers.n; i++)
        have_version |= tg_str_caseeq(req->headers.v[i].name, "sec-websocket-version");
    if (push_field(req, TG_STR("upgrade"), TG_STR("websocket")) < 0 ||
        push_field(req, TG_STR("sec-websocket-key"), tg_str_make(key, (size_t)kn)) < 0 ||
        (!have_version && push_field(req, TG_STR("sec-websocket-version"), TG_STR("13")) < 0))
        return -1;
    return 0;
}

/* The head is complete: make the request and run the pipeline on it. */
static void start_stream(struct h2 *h, struct tg_stream *st, bool end_stream)
{
    struct tg_request *req = st->req;
    st->started = true;
    st->in_end = end_stream;
    req->method_id = tg_http_method_id(st->method);
    req->method = st->method.p != NULL ? st->method.p : "";
    struct tg_str authority = st->authority.p != NULL ? st->authority : st->host;
    if (st->bad_status == 0 && st->authority.p != NULL && st->host.p != NULL &&
        !(st->host.n == st->authority.n &&
          strncasecmp(st->host.p, st->authority.p, st->host.n) == 0))
        head_error(st, 400, "Host and :authority name different hosts");
    if (st->bad_status == 0 && authority.p != NULL && !valid_authority(authority))
        head_error(st, 400, "invalid :authority");
    req->host = authority.p != NULL ? authority.p : "";
    req->host_len = authority.p != NULL ? authority.n : 0;
    /* :path splits at '?' as an HTTP/1.1 target does. */
    const char *path = st->path.p != NULL ? st->path.p : "";
    const char *q = memchr(path, '?', st->path.n);
    req->path = path;
    req->path_len = q != NULL ? (size_t)(q - path) : st->path.n;
    req->query = q != NULL ? q + 1 : NULL;
    req->query_len = q != NULL ? st->path.n - req->path_len - 1 : 0;
    if (st->ncookies > 0) {
        size_t n = 0;
        for (size_t i = 0; i < st->ncookies; i++)
            n += st->cookies[i].n + 2;
        char *joined = tg_arena_alloc(&req->arena, n);
        size_t o = 0;
        for (size_t i = 0; joined != NULL && i < st->ncookies; i++) {
            if (i > 0) {
                memcpy(joined + o, "; ", 2);
                o += 2;
            }
            memcpy(joined + o, st->cookies[i].p, st->cookies[i].n);
            o += st->cookies[i].n;
        }
        if (joined == NULL || push_field(req, TG_STR("cookie"), tg_str_make(joined, o)) < 0)
            head_error(st, 503, "out of memory");
    }
    req->body_length = end_stream ? 0 : -1;
    for (size_t i = 0; i < req->headers.n; i++) {
        const struct tg_http_header *f = &req->headers.v[i];
        if (!tg_str_caseeq(f->name, "content-length") || end_stream)
            continue;
        /* nghttp2 checked it is one number and will check it against the
         * DATA; an empty body declared is no body. */
        int64_t v = 0;
        for (size_t k = 0; k < f->value.n; k++)
            v = v * 10 + (f->value.p[k] - '0');
        req->body_length = v;
    }
    if (st->protocol.p != NULL) {
        /* Only WebSocket is bridged; nghttp2 took :protocol only with
         * CONNECT and only because we enabled it. */
        if (!tg_str_caseeq(st->protocol, "websocket"))
            head_error(st, 501, "only the websocket protocol can be bridged");
        else if (bridge_websocket(st) < 0)
            head_error(st, 503, "out of memory");
    }
    req->headers_valid = true;
    req->start = tg_context_now(h->c->ctx);
    if (st->bad_status != 0) {
        char body[160];
        snprintf(body, sizeof(body), "%d %s: %s\n", st->bad_status, tg_http_reason(st->bad_status),
                 st->bad_why);
        req->method = req->method[0] ? req->method : "-";
        tg_request_respond_text(req, st->bad_status, body, false);
        return;
    }
    tg_pipeline_start(req);
}

/* ---- frames ------------------------------------------------------------------------------- */

/* Control frames and client resets, per second: past the limits the
 * connection is an attack (a flood, Rapid Reset) and goes away. */
static int count_flood(struct h2 *h, bool reset)
{
    const struct tg_config_http2 *cfg = &config_of(h)->http2;
    ev_tstamp now = tg_context_now(h->c->ctx);
    if (now - h->flood_at >= FLOOD_WINDOW_S) {
        h->flood_at = now;
        h->resets = h->control = 0;
    }
    bool over = reset ? ++h->resets > cfg->max_resets : ++h->control > cfg->max_control;
    if (!over)
        return 0;
    char peer[TG_ADDR_STRLEN];
    tg_addr_format(&h->c->peer, peer, sizeof(peer));
    tg_faultlog_note(TG_LOG_WARN, "HTTP/2", "connections sent away",
                     "client %s sent more than %u %s in a second; GOAWAY", peer,
                     reset ? cfg->max_resets : cfg->max_control,
                     reset ? "stream resets (Rapid Reset)" : "control frames (a flood)");
    TG_METRIC_INC(h->c->ctx->metrics->h2_floods);
    nghttp2_session_terminate_session(h->session, NGHTTP2_ENHANCE_YOUR_CALM);
    h->goaway = true;
    return 0;
}

static void body_event(struct tg_stream *st)
{
    if (st->started)
        tg_request_body(st->req);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct h2 *h = user_data;
    h->got_frame = true;
    struct tg_stream *st =
        frame->hd.stream_id != 0 ? stream_of(session, frame->hd.stream_id) : NULL;
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (st == NULL)
            break;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            start_stream(h, st, end);
        } else if (end) {
            st->in_end = true; /* after trailers */
            body_event(st);
        }
        break;
    case NGHTTP2_DATA:
        if (frame->hd.length == 0 && !end)
            return count_flood(h, false);
        if (st != NULL && end) {
            st->in_end = true;
            body_event(st);
        }
        break;
    case NGHTTP2_RST_STREAM:
        TG_METRIC_INC(h->c->ctx->metrics->h2_client_resets);
        return count_flood(h, true);
    case NGHTTP2_SETTINGS:
        h->writable_pass = true; /* the initial window may have grown */
        return count_flood(h, false);
    case NGHTTP2_PING:
    case NGHTTP2_PRIORITY:
        return count_flood(h, false);
    case NGHTTP2_WINDOW_UPDATE: {
        h->writable_pass = true; /* streams held by a window may go on */
        /* A client reading what we send answers with updates: those are
         * paid for by the data (one per KiB at most); the rest count. */
        size_t inc = (size_t)frame->window_update.window_size_increment;
        size_t *credit = &h->data_credit[frame->hd.stream_id != 0];
        if (*credit >= WINDOW_UPDATE_PAID && inc >= WINDOW_UPDATE_PAID) {
            *credit -= inc < *credit ? inc : *credit;
            return 0;
        }
        return count_flood(h, false);
    }
    default:
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data)
{
    (void)flags;
    struct h2 *h = user_data;
    struct tg_stream *st = stream_of(session, stream_id);
    if (st == NULL || !st->started || tg_request_over(st->req)) {
        /* Nobody reads it: the connection's window opens at once. */
        nghttp2_session_consume(session, stream_id, len);
        return 0;
    }
    struct tg_context *ctx = h->c->ctx;
    size_t window = config_of(h)->http2.stream_window;
    if (st->in == NULL)
        st->in = tg_buf_get(&ctx->bufs, len < ctx->bufs.small_size ? ctx->bufs.small_size : len);
    if (st->in != NULL && tg_buf_room(st->in) < len) {
        tg_buf_compact(st->in);
        if (tg_buf_room(st->in) < len) {
            size_t want = tg_buf_len(st->in) + len;
            if (want > window ||
                tg_buf_grow(&ctx->bufs, &st->in, want < window ? window : want) < 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    }
    if (st->in == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    memcpy(st->in->data + st->in->end, data, len);
    st->in->end += len;
    st->req->body_received += len;
    st->req->bytes_in += len;
    body_event(st); /* st may be gone after this */
    return 0;
}

/* Takes a stream off the connection's list (its request ends or ended). */
static void detach(struct tg_stream *st)
{
    struct h2 *h = st->h;
    if (tg_list_linked(&st->link)) {
        tg_list_remove(&st->link);
        h->nstreams--;
        if (h->nstreams == 0)
            h->idle_at = tg_context_now(h->c->ctx);
    }
    if (!st->closed)
        nghttp2_session_set_stream_user_data(h->session, st->id, NULL);
    if (st->in != NULL) {
        /* Bytes nobody will read: the connection's window gets them back. */
        if (!st->closed && tg_buf_len(st->in) > 0)
            nghttp2_session_consume(h->session, st->id, tg_buf_len(st->in));
        tg_buf_put(&h->c->ctx->bufs, st->in);
        st->in = NULL;
    }
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    (void)user_data;
    struct tg_stream *st = stream_of(session, stream_id);
    if (st == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    st->closed = true;
    struct tg_request *req = st->req;
    if (error_code == NGHTTP2_NO_ERROR && st->ended)
        return 0; /* answered in full: the request ends as it will */
    /* Reset (by the client, or a protocol error): the request goes, and
     * what it started upstream is cancelled with it. */
    detach(st);
    tg_request_abort(req);
    return 0;
}

/* ---- the client stream ------------------------------------------------------------------ */

/* Response field names in lower case (HTTP/2 requires it), without the
 * connection-specific ones a front end must not send. */
static bool connection_specific(struct tg_str n)
{
    return tg_str_caseeq(n, "connection") || tg_str_caseeq(n, "keep-alive") ||
           tg_str_caseeq(n, "proxy-connection") || tg_str_caseeq(n, "transfer-encoding") ||
           tg_str_caseeq(n, "upgrade") || tg_str_caseeq(n, "te");
}

static int s_send_head(struct tg_stream *st, int status, const struct tg_http_headers *fields,
                       int64_t length, unsigned flags)
{
    struct h2 *h = st->h;
    struct tg_request *req = st->req;
    if (st->closed || h->broken)
        return -1;
    bool tunnel = (flags & TG_STREAM_TUNNEL) != 0;
    bool interim = status < 200 && !tunnel;
    size_t n = fields != NULL ? fields->n : 0;
    nghttp2_nv *nva = tg_arena_alloc(&req->arena, (n + 2) * sizeof(*nva));
    char *status_text = tg_arena_alloc(&req->arena, 4);
    if (nva == NULL || status_text == NULL)
        return -1;
    /* An extended CONNECT is accepted with 200 (the backend's 101). */
    snprintf(status_text, 4, "%03d", tunnel ? 200 : status);
    size_t k = 0;
    nva[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status_text, 7, 3,
                            NGHTTP2_NV_FLAG_NO_COPY_NAME};
    for (size_t i = 0; i < n; i++) {
        struct tg_str name = fields->v[i].name;
        if (connection_specific(name) || (tunnel && tg_str_caseeq(name, "sec-websocket-accept")))
            continue;
        char *lower = tg_arena_alloc(&req->arena, name.n ? name.n : 1);
        if (lower == NULL)
            return -1;
        for (size_t j = 0; j < name.n; j++)
            lower[j] = tg_ascii_lower(name.p[j]);
        nva[k++] = (nghttp2_nv){(uint8_t *)lower, (uint8_t *)fields->v[i].value.p, name.n,
                                fields->v[i].value.n, NGHTTP2_NV_FLAG_NONE};
    }
    char len_text[24];
    bool has_length = !interim && !tunnel && length >= 0 && status != 204 && status != 304;
    if (has_length) {
        size_t ln = (size_t)snprintf(len_text, sizeof(len_text), "%lld", (long long)length);
        nva[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)len_text, 14, ln,
                                NGHTTP2_NV_FLAG_NO_COPY_NAME};
    }
    int rv;
    if (interim) {
        rv = nghttp2_submit_headers(h->session, NGHTTP2_FLAG_NONE, st->id, NULL, nva, k, NULL);
    } else if ((flags & TG_STREAM_NO_BODY) && !tunnel) {
        rv = nghttp2_submit_response(h->session, st->id, nva, k, NULL);
        st->ended = true;
    } else {
        nghttp2_data_provider prd = {.source.ptr = NULL, .read_callback = on_read_data};
        rv = nghttp2_submit_response(h->session, st->id, nva, k, &prd);
        st->data_open = true;
        st->deferred = false;
        if (tunnel) {
            st->tunnel = true;
            st->in_end = false;
        }
    }
    if (rv != 0)
        return -1;
    kick_soon(h);
    return 0;
}

static ssize_t s_send_body(struct tg_stream *st, const struct iovec *iov, int iovcnt, bool end)
{
    struct h2 *h = st->h;
    if (st->closed || h->broken)
        return -1;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (!st->data_open || st->ended)
        return (ssize_t)total; /* no body may follow (HEAD, 204, 304) */
    if (h->in_session) {
        /* Framing now would re-enter the session: the stream is told
         * when it can send. */
        st->want_writable = true;
        h->writable_pass = true;
        kick_soon(h);
        return 0;
    }
    st->offer = iov;
    st->noffer = iovcnt;
    st->offer_total = total;
    st->offer_taken = 0;
    st->offer_end = end;
    if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(h->session, st->id);
    }
    /* Framed now (the offer is the caller's only during this call), written
     * when the loop turn ends: the frames of every stream that answered in
     * this turn go out in one write. A full buffer goes out at once. */
    frame(h);
    if (out_len(h) >= OUT_HIGH && !h->broken && flush(h) == 0)
        frame(h);
    kick_soon(h);
    size_t taken = st->closed && !st->ended ? 0 : st->offer_taken;
    st->offer = NULL;
    st->noffer = 0;
    if (h->broken)
        return -1;
    if (taken < total || (end && !st->ended)) {
        st->want_writable = true;
        /* Held by the output buffer: the loop turn's write (the kick
         * above) makes room, and then it is told. Held by the client's
         * windows: its WINDOW_UPDATE (or SETTINGS) tells it. */
        if (nghttp2_session_get_stream_remote_window_size(h->session, st->id) > 0 &&
            nghttp2_session_get_remote_window_size(h->session) > 0)
            h->writable_pass = true;
    }
    return (ssize_t)taken;
}

static int s_body_peek(struct tg_stream *st, struct iovec *iov, int max, bool *end)
{
    *end = st->in_end && !st->tunnel;
    if (st->in == NULL || tg_buf_len(st->in) == 0 || max < 1)
        return 0;
    iov[0].iov_base = st->in->data + st->in->start;
    iov[0].iov_len = tg_buf_len(st->in);
    return 1;
}

static void s_body_consume(struct tg_stream *st, size_t n)
{
    struct h2 *h = st->h;
    if (st->in == NULL || n == 0)
        return;
    tg_buf_consume(st->in, n);
    /* The window opens as far as the body went upstream. */
    if (!st->closed)
        nghttp2_session_consume(h->session, st->id, n);
    kick_soon(h);
}

static size_t s_body_room(struct tg_stream *st)
{
    size_t window = config_of(st->h)->http2.stream_window;
    size_t held = st->in != NULL ? tg_buf_len(st->in) : 0;
    return held < window ? window - held : 0;
}

static void s_head_done(struct tg_stream *st)
{
    (void)st; /* the head was copied: nothing to let go */
}

static void s_set_deadline(struct tg_stream *st, ev_tstamp when)
{
    st->deadline = when;
    if (st->h->c->state == TG_CONN_OPEN && when < st->h->c->deadline)
        tg_conn_set_deadline(st->h->c, when);
}

static void s_finish(struct tg_stream *st, enum tg_stream_end how)
{
    struct h2 *h = st->h;
    bool closed = st->closed;
    bool body_unread = !st->in_end;
    detach(st);
    if (!closed && !h->broken) {
        if (how == TG_STREAM_RESET || !st->ended)
            nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, st->id,
                                      NGHTTP2_INTERNAL_ERROR);
        else if (body_unread)
            /* RFC 9113 8.1: the answer is complete; the rest of the body
             * is not wanted. */
            nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    }
    kick_soon(h);
}

static const struct tg_stream_ops h2_stream_ops = {
    .send_head = s_send_head,
    .send_body = s_send_body,
    .body_peek = s_body_peek,
    .body_consume = s_body_consume,
    .body_room = s_body_room,
    .head_done = s_head_done,
    .set_deadline = s_set_deadline,
    .finish = s_finish,
};

/* ---- driving the session ------------------------------------------------------------------ */

static void close_now(struct h2 *h)
{
    tg_conn_close(h->c); /* h2_close frees h */
}

/* Frames what the session has into the output buffer. */
static void frame(struct h2 *h)
{
    if (h->in_session || h->broken)
        return;
    h->in_session = true;
    int rv = nghttp2_session_send(h->session);
    h->in_session = false;
    if (rv != 0) {
        tg_log_debug("HTTP/2 session send: %s", nghttp2_strerror(rv));
        h->broken = true;
    }
}

/* Frames what the session has and writes it. */
static void h2_send(struct h2 *h)
{
    frame(h);
    if (!h->broken)
        flush(h);
}

/* Streams that could not send all they had are told they can go on. */
static void run_writable(struct h2 *h)
{
    if (!h->writable_pass || h->broken)
        return;
    h->writable_pass = false;
    struct tg_list *head = &h->streams;
    /* Each is told once; one that cannot send again asks again. */
    struct tg_list done;
    tg_list_init(&done);
    struct tg_list *n;
    while ((n = tg_list_first(head)) != NULL) {
        tg_list_remove(n);
        tg_list_push_back(&done, n);
        struct tg_stream *st = tg_list_entry(n, struct tg_stream, link);
        if (!st->want_writable)
            continue;
        if (out_len(h) >= OUT_HIGH) {
            h->writable_pass = true;
            continue;
        }
        st->want_writable = false;
        tg_request_writable(st->req); /* st may be detached (it moves off `done`) */
        if (h->broken)
            break;
    }
    while ((n = tg_list_first(&done)) != NULL) {
        tg_list_remove(n);
        tg_list_push_back(head, n);
    }
}

/* After each event: send, write, tell waiting streams, and close when the
 * session is over. */
static void settle(struct h2 *h)
{
    struct tg_conn *c = h->c;
    for (int round = 0; round < 4 && !h->broken; round++) {
        h2_send(h);
        run_writable(h);
        if (!h->writable_pass)
            break;
    }
    h2_send(h);
    if (h->broken) {
        close_now(h);
        return;
    }
    bool done = !nghttp2_session_want_read(h->session) && !nghttp2_session_want_write(h->session);
    if ((done || (h->goaway && h->nstreams == 0)) && out_len(h) == 0) {
        close_now(h);
        return;
    }
    int ev = EV_READ;
    if (out_len(h) > 0 || c->io.want_write)
        ev |= EV_WRITE;
    tg_conn_watch(c, ev);
    arm(h);
}

static void on_kick(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    ev_prepare_stop(loop, w);
    struct h2 *h = w->data;
    struct tg_conn *c = h->c;
    tg_conn_ref(c);
    settle(h);
    tg_conn_unref(c);
}

static void kick_soon(struct h2 *h)
{
    if (!ev_is_active(&h->kick))
        ev_prepare_start(h->c->ctx->loop, &h->kick);
}

static void read_frames(struct h2 *h)
{
    struct tg_conn *c = h->c;
    for (;;) {
        if (c->in != NULL && tg_buf_len(c->in) > 0) {
            h->in_session = true;
            ssize_t rv = nghttp2_session_mem_recv(
                h->session, (const uint8_t *)c->in->data + c->in->start, tg_buf_len(c->in));
            h->in_session = false;
            if (rv < 0) {
                tg_log_debug("HTTP/2 session: %s", nghttp2_strerror((int)rv));
                if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
                    h->broken = true;
                    return;
                }
                /* nghttp2 queued a GOAWAY: it goes out, then we close. */
                h->goaway = true;
                c->in->start = c->in->end = 0;
                return;
            }
            tg_buf_consume(c->in, (size_t)rv);
        }
        if (h->goaway && !nghttp2_session_want_read(h->session))
            return;
        ssize_t n = tg_conn_read(c);
        if (n == TG_IO_AGAIN) {
            tg_conn_release_input(c);
            return;
        }
        if (n <= 0) {
            h->broken = true; /* the client went away */
            return;
        }
    }
}

static void h2_io(struct tg_conn *c, int revents)
{
    struct h2 *h = h2_of(c);
    if ((revents & EV_WRITE) || (c->io.ssl != NULL && c->io.want_write)) {
        if (flush(h) == 0 && out_len(h) == 0)
            h->writable_pass = true;
    }
    if ((revents & EV_READ) && !h->broken)
        read_frames(h);
    settle(h);
}

/* ---- time ----------------------------------------------------------------------------------- */

/* The connection's deadline: the soonest of its streams', and its own (the
 * client preface and idle time while no stream runs; a client that stops
 * reading). */
static void arm(struct h2 *h)
{
    struct tg_conn *c = h->c;
    const struct tg_config *cfg = config_of(h);
    ev_tstamp now = tg_context_now(c->ctx);
    ev_tstamp when = now + IDLE_RECHECK_S;
    struct tg_list *head = &h->streams;
    for (struct tg_list *n = head->next; n != head; n = n->next) {
        struct tg_stream *st = tg_list_entry(n, struct tg_stream, link);
        if (st->deadline > 0 && st->deadline < when)
            when = st->deadline;
    }
    if (h->nstreams == 0) {
        ev_tstamp idle = h->idle_at + MS(cfg->client.keepalive_timeout_ms);
        if (idle < when)
            when = idle;
    }
    if (out_len(h) > 0) {
        ev_tstamp stall = h->write_at + MS(cfg->client.send_timeout_ms);
        if (stall < when)
            when = stall;
    }
    if (!h->got_frame) {
        ev_tstamp preface = h->started + MS(cfg->client.header_timeout_ms);
        if (preface < when)
            when = preface;
    }
    tg_conn_set_deadline(c, when);
}

static void h2_timeout(struct tg_conn *c, ev_tstamp now)
{
    struct h2 *h = h2_of(c);
    const struct tg_config *cfg = config_of(h);
    if (!h->got_frame && now >= h->started + MS(cfg->client.header_timeout_ms)) {
        close_now(h); /* no preface in time */
        return;
    }
    if (out_len(h) > 0 && now >= h->write_at + MS(cfg->client.send_timeout_ms)) {
        close_now(h); /* the client stopped reading */
        return;
    }
    if (h->nstreams == 0 && now >= h->idle_at + MS(cfg->client.keepalive_timeout_ms)) {
        if (!h->goaway) {
            nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(h->session),
                                  NGHTTP2_NO_ERROR, NULL, 0);
            h->goaway = true;
        }
        settle(h);
        if (c->state == TG_CONN_OPEN)
            close_now(h);
        return;
    }
    /* Streams whose deadline passed: their owners decide. */
    struct tg_list due;
    tg_list_init(&due);
    struct tg_list *head = &h->streams, *n;
    for (n = head->next; n != head;) {
        struct tg_list *next = n->next;
        struct tg_stream *st = tg_list_entry(n, struct tg_stream, link);
        if (st->deadline > 0 && st->deadline <= now) {
            tg_list_remove(n);
            tg_list_push_back(&due, n);
        }
        n = next;
    }
    while ((n = tg_list_first(&due)) != NULL) {
        tg_list_remove(n);
        tg_list_push_back(head, n);
        struct tg_stream *st = tg_list_entry(n, struct tg_stream, link);
        struct tg_request *req = st->req;
        tg_request_ref(req);
        ev_tstamp next = tg_request_timeout(req, now);
        if (!tg_request_over(req))
            st->deadline = next > now ? next : now + IDLE_RECHECK_S;
        tg_request_unref(req);
    }
    settle(h);
}

/* ---- the connection -------------------------------------------------------------------------- */

static void h2_close(struct tg_conn *c)
{
    struct h2 *h = h2_of(c);
    if (h == NULL)
        return;
    struct tg_list *n;
    while ((n = tg_list_first(&h->streams)) != NULL) {
        struct tg_stream *st = tg_list_entry(n, struct tg_stream, link);
        struct tg_request *req = st->req;
        detach(st);
        tg_request_abort(req);
    }
    ev_prepare_stop(c->ctx->loop, &h->kick);
    nghttp2_session_del(h->session);
    tg_buf_put(&c->ctx->bufs, h->out);
    free(h);
    *(struct h2 **)(void *)c->proto_state = NULL;
}

static void h2_drain(struct tg_conn *c)
{
    struct h2 *h = h2_of(c);
    if (!h->goaway) {
        nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h->session), NGHTTP2_NO_ERROR,
                              NULL, 0);
        h->goaway = true;
    }
    struct tg_list *head = &h->streams;
    for (struct tg_list *n = head->next, *next; n != head; n = next) {
        next = n->next;
        struct tg_stream *st = tg_list_entry(n, struct tg_stream, link);
        tg_request_drain(st->req);
    }
    kick_soon(h);
}

static const struct tg_conn_proto h2_proto = {
    .name = "h2",
    .on_io = h2_io,
    .on_timeout = h2_timeout,
    .on_close = h2_close,
    .on_drain = h2_drain,
};

/* One callback table for the process, read-only once built: a per-thread
 * table would be lost (and leak) when a worker thread ends. */
static nghttp2_session_callbacks *shared_callbacks;
static pthread_once_t callbacks_once = PTHREAD_ONCE_INIT;

static void build_callbacks(void)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return;
    nghttp2_session_callbacks_set_send_callback(cbs, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cbs, on_send_data);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    shared_callbacks = cbs;
}

static nghttp2_session_callbacks *callbacks(void)
{
    pthread_once(&callbacks_once, build_callbacks);
    return shared_callbacks;
}

void tg_h2_start(struct tg_conn *c)
{
    struct tg_context *ctx = c->ctx;
    const struct tg_config *cfg = c->wcfg->config;
    struct h2 *h = calloc(1, sizeof(*h));
    nghttp2_session_callbacks *cbs = callbacks();
    nghttp2_option *opt = NULL;
    if (h == NULL || cbs == NULL || nghttp2_option_new(&opt) != 0) {
        free(h);
        tg_conn_close(c);
        return;
    }
    /* Windows open as the body goes upstream, not as it arrives. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_outbound_ack(opt, cfg->http2.max_control);
    nghttp2_option_set_stream_reset_rate_limit(opt, cfg->http2.max_resets, cfg->http2.max_resets);
    int rv = nghttp2_session_server_new2(&h->session, cbs, h, opt);
    nghttp2_option_del(opt);
    if (rv != 0) {
        free(h);
        tg_conn_close(c);
        return;
    }
    h->c = c;
    tg_list_init(&h->streams);
    ev_prepare_init(&h->kick, on_kick);
    h->kick.data = h;
    h->idle_at = h->write_at = h->flood_at = h->started = tg_context_now(ctx);
    *(struct h2 **)(void *)c->proto_state = h;
    tg_conn_set_proto(c, &h2_proto);
    TG_METRIC_INC(ctx->metrics->h2_connections);

    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->http2.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)cfg->http2.stream_window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
         (uint32_t)(cfg->client.max_request_line + cfg->client.max_head)},
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
    };
    nghttp2_submit_settings(h->session, NGHTTP2_FLAG_NONE, iv, TG_ARRAY_LEN(iv));
    nghttp2_session_set_local_window_size(h->session, NGHTTP2_FLAG_NONE, 0,
                                          (int32_t)cfg->http2.connection_window);
    /* The preface must come within header_timeout, like a first head. */
    tg_conn_set_deadline(c, tg_context_now(ctx) + MS(cfg->client.header_timeout_ms));
    tg_conn_ref(c);
    read_frames(h); /* the preface (and more) may be here already */
    if (c->state == TG_CONN_OPEN)
        settle(h);
    tg_conn_unref(c);
}
