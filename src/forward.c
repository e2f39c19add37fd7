/* One request forwarded to an HTTP/1.1 backend. Two byte paths:
 *
 *   stream body (front end) -> upstream socket   (request body, or tunnel)
 *   upstream socket -> up->in -> stream           (response body, or tunnel)
 *
 * The request body is pulled from the stream as spans the front end holds
 * and written upstream from there (with chunk framing of our own when its
 * length is not known). Response bytes are "framed" as they arrive
 * (counted against Content-Length, or de-chunked in place) and offered to
 * the stream from up->in; what it takes is consumed, and reading stops
 * while up->in is full: backpressure both ways, no copy of body bytes but
 * the de-chunking.
 *
 * A WebSocket tunnel (after a 101) copies bytes as they are, but follows
 * the frame boundaries each way (wsframe.h), so that at a drain it can
 * close both ends politely: a close frame 1001 to each side between two
 * frames, then the connection ends once the client answered. */
#include "forward.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "cache.h"
#include "config.h"
#include "context.h"
#include "faultlog.h"
#include "headers.h"
#include "http1.h"
#include "iptable.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "resolver.h"
#include "tenant.h"
#include "upstream.h"
#include "wsframe.h"

#define MAX_TRAILER 16384
/* The backend's head: room for what we add to the client's fields, and the
 * most it may grow to (rules, a long client certificate subject). */
#define UP_HEAD_SLACK 512
#define UP_HEAD_MAX (1024 * 1024)
#define MS(x) ((double)(x) / 1000.0)
/* Spans of request body offered in one write. */
#define BODY_SPANS 8
/* client.min_body_rate: a body must average at least this many bytes per
 * second once it has been arriving for this long; checked each second, and
 * not while the backend itself holds the client back. */
#define MIN_RATE_GRACE_S 5.0
/* A response that takes no bytes and no events for this long, with no
 * other deadline, is looked at again (a safety net, never the rule). */
#define IDLE_RECHECK_S 3600.0
/* A WebSocket tunnel closing at a drain: how long the client has to answer
 * our close frame with its own (browsers do at once) before the connection
 * ends anyway; never past drain_timeout. */
#define WS_CLOSE_GRACE_S 2.0

struct tg_exchange {
    struct tg_request *req;
    struct tg_upconn *up;
    struct tg_buf *up_head; /* the request head for the backend */
    size_t up_head_sent;
    uint64_t tried; /* servers tried (bitmask) */
    unsigned attempts;
    /* The servers this request chooses from, fixed when it starts: the
     * upstream's own, or (names) the worker's set of their addresses then,
     * held until the request ends (a later change goes to later
     * requests). */
    const struct tg_config_server *servers;
    size_t nservers;
    struct tg_server_set *set;  /* the reference held, or NULL */
    int server;                 /* index in servers */
    struct tg_list upwait_link; /* queued for a connection slot */
    ev_tstamp upwait_until;     /* ... until then (connect_timeout) */
    bool connecting;            /* waiting for a connection (or a slot) */

    /* The last attempt that failed, for the request's own line in the
     * error log and for the note that another server takes it. */
    char fail_what[120];
    const char *fail_at; /* the server's address (pools and x->set outlive its use) */
    bool retry_noted;    /* a retry to note once the next server is picked */

    /* Request body toward the backend. */
    bool chunked_up;      /* framed by us as chunked */
    bool req_body_done;   /* the stream said the body ended */
    bool req_body_sent;   /* ... and all of it is written */
    bool sent_body_bytes; /* some body bytes left: not replayable */
    bool up_write_failed; /* the backend stopped taking the request */
    uint64_t chunk_left;  /* data bytes of the current chunk to write */
    char pend[32];        /* chunk framing not yet written */
    uint8_t pend_len, pend_off;
    uint64_t req_body_bytes;

    /* Response from the backend. */
    size_t resp_scanned;
    bool resp_head_done;
    int resp_framing; /* enum tg_http1_framing */
    uint64_t resp_remaining;
    struct tg_http1_chunked resp_chunked;
    size_t resp_ready; /* data bytes at up->in start, framing cut */
    bool resp_body_done;
    bool resp_keep_alive; /* the backend may be reused */
    bool end_sent;        /* the stream got the end of the body */
    bool tunnel;
    bool stream;         /* SSE or stream route: no read timeout */
    bool sse;            /* text/event-stream: heartbeats apply */
    bool sse_draining;   /* end the stream at the next boundary */
    bool stream_counted; /* holds a stream.max_per_ip slot */
    bool sse_counted;    /* counted in the worker's open SSE streams */
    char sse_tail[3];    /* last data bytes sent: event boundary */
    const char *inject;  /* bytes of our own still to give */
    size_t inject_left;
    bool inject_end; /* ... and they end the body */

    /* A WebSocket tunnel: where the frames end each way (bytes written to
     * the backend, bytes given to the client), and its close at a drain. */
    struct tg_wsframe ws_up, ws_down;
    bool drain_asked;       /* the gateway drains (maybe before the 101) */
    bool ws_closing;        /* close frames go out at the next boundaries */
    bool ws_down_closed;    /* the client got a close frame: no more data */
    bool ws_up_closed;      /* the backend got one (maybe still in pend) */
    bool ws_up_gone;        /* the backend takes nothing more */
    bool ws_finish;         /* the tunnel ends now, after our close frame */
    uint64_t ws_up_allow;   /* bytes the client had sent at the drain: they pass */
    uint64_t ws_down_allow; /* ... and the backend */
    ev_tstamp ws_close_by;  /* drain_timeout: boundaries waited for until */
    ev_tstamp ws_grace_by;  /* both close frames out: the client's answer until */
    ev_tstamp ws_end_at;    /* done: ends then (from on_timeout) */
    ev_tstamp up_read_at, up_write_at, rate_checked_at;
};

static void on_upstream_io(struct tg_upconn *uc, int revents);
static void connect_upstream(struct tg_exchange *x);
static void send_upstream(struct tg_exchange *x);
static void read_upstream(struct tg_exchange *x);
static void pump_response(struct tg_exchange *x);
static void update_watches(struct tg_exchange *x);
static void arm(struct tg_exchange *x);
static void ws_settle(struct tg_exchange *x);

static const struct tg_config *cfg_of(const struct tg_exchange *x)
{
    return x->req->wcfg->config;
}

static ev_tstamp now_of(const struct tg_exchange *x)
{
    return tg_context_now(x->req->ctx);
}

static struct tg_upstream_stats *upstream_stats(const struct tg_exchange *x)
{
    const struct tg_request *req = x->req;
    const struct tg_config_upstream *u = req->upstream;
    unsigned id = req->tenant_obj != NULL && u == &req->tenant_obj->upstream
                      ? cfg_of(x)->tenants.upstream_defaults.metrics_id
                      : u->metrics_id;
    return &req->ctx->metrics->upstreams[id];
}

/* ---- ending ------------------------------------------------------------------ */

static void upwait_unlink(struct tg_exchange *x)
{
    if (tg_list_linked(&x->upwait_link))
        tg_list_remove(&x->upwait_link);
}

static void drop_upstream(struct tg_exchange *x, bool reusable)
{
    struct tg_upconn *uc = x->up;
    if (uc == NULL)
        return;
    x->up = NULL;
    uc->owner = NULL;
    tg_upstream_release(uc, reusable, x->req->upstream);
}

static void release_stream_slot(struct tg_exchange *x)
{
    if (!x->stream_counted)
        return;
    x->stream_counted = false;
    struct tg_request *req = x->req;
    struct tg_addr group;
    tg_iptable_group(&req->client, cfg_of(x)->client.ipv6_prefix, &group);
    tg_iptable_release(req->ctx->rt->iptable, &group, TG_IPTABLE_STREAMS);
}

/* Gives back what the exchange holds; the request core does the rest. */
static void release(struct tg_exchange *x)
{
    upwait_unlink(x);
    drop_upstream(x, false);
    release_stream_slot(x);
    if (x->sse_counted) {
        x->sse_counted = false;
        TG_METRIC_ADD(x->req->ctx->metrics->sse_open, -1);
    }
    tg_server_set_unref(x->set);
    x->set = NULL;
}

static void end_exchange(struct tg_exchange *x, enum tg_stream_end how)
{
    release(x);
    tg_request_end(x->req, how);
}

/* The answer is broken: the client must not take what it got as
 * complete. `why`, when given, is the client's doing (it stopped reading,
 * or sending): logged at a bounded rate (faultlog.h). */
static void reset_client(struct tg_exchange *x, const char *why)
{
    if (why != NULL)
        tg_faultlog_note(TG_LOG_INFO, "clients", "streams closed",
                         "request %s: %s; closing the client's stream", x->req->request_id, why);
    end_exchange(x, TG_STREAM_RESET);
}

/* "upstream NAME": what the log calls the request's upstream. */
static const char *upstream_subject(const struct tg_exchange *x, char *out, size_t cap)
{
    snprintf(out, cap, "upstream %s", x->req->upstream != NULL ? x->req->upstream->name : "-");
    return out;
}

/* The backend failed after its answer began: the client's stream is cut
 * (never passed off as complete). One line per upstream per interval; the
 * rest are counted (faultlog.h). */
static void upstream_broke(struct tg_exchange *x, const char *what)
{
    struct tg_request *req = x->req;
    char subject[TG_FAULTLOG_SUBJECT_MAX];
    tg_faultlog_note(TG_LOG_ERROR, upstream_subject(x, subject, sizeof(subject)), "requests failed",
                     "request %s: %s at %s (the client's stream is reset)", req->request_id, what,
                     req->up_name != NULL ? req->up_name : "-");
    end_exchange(x, TG_STREAM_RESET);
}

/* A local answer instead of the backend's (nothing was sent yet), or a
 * reset when something was. */
static void answer_locally(struct tg_exchange *x, int status, const char *extra, const char *body,
                           bool close)
{
    struct tg_request *req = x->req;
    release(x);
    if (req->head_sent) {
        tg_request_end(req, TG_STREAM_RESET);
        return;
    }
    req->extra_headers = extra;
    tg_request_respond_text(req, status, body, close);
}

/* Every attempt failed, or one failed in a way that cannot be retried:
 * `what` at the current server, or (NULL) the last attempt's failure when
 * no server is left to try. Logged at a bounded rate per upstream, every
 * one at level debug (faultlog.h); the servers' own down and up lines come
 * from passive health (tg_upstream_report). */
static void fail_upstream(struct tg_exchange *x, int status, const char *what)
{
    struct tg_request *req = x->req;
    char subject[TG_FAULTLOG_SUBJECT_MAX], tries[32] = "";
    upstream_subject(x, subject, sizeof(subject));
    if (x->attempts > 1)
        snprintf(tries, sizeof(tries), ", after %u attempts", x->attempts);
    const char *at = req->up_name;
    req->upstream_failed = true;
    if (what == NULL && x->fail_what[0] != '\0') {
        what = x->fail_what;
        at = x->fail_at;
    }
    if (what != NULL)
        tg_faultlog_note(TG_LOG_ERROR, subject, "requests failed",
                         "request %s: %s at %s (answered %d%s)", req->request_id, what,
                         at != NULL ? at : "-", status, tries);
    else
        tg_faultlog_note(TG_LOG_ERROR, subject, "requests failed",
                         "request %s: no server to try (answered %d)", req->request_id, status);
    answer_locally(x, status, NULL,
                   status == 504 ? "504 Gateway Timeout: the upstream did not answer in time\n"
                                 : "502 Bad Gateway: the upstream could not be reached\n",
                   false);
}

/* An attempt failed before any response byte. Retries on another server
 * when nothing was consumed that cannot be sent again. */
static void attempt_failed(struct tg_exchange *x, const char *what, bool timeout)
{
    struct tg_request *req = x->req;
    struct tg_upconn *uc = x->up;
    bool was_reused = uc != NULL && uc->reused;
    bool head_sent = x->up_head_sent > 0;
    if (uc != NULL && !(was_reused && !timeout) &&
        tg_upstream_report(uc, req->upstream, false, what))
        TG_METRIC_INC(upstream_stats(x)->ejections);
    drop_upstream(x, false);

    bool replayable = !x->sent_body_bytes && !x->resp_head_done && !req->head_sent;
    bool may_retry =
        replayable && (!head_sent || tg_http_method_idempotent(req->method_id) || was_reused);
    bool stale = may_retry && was_reused && !timeout;
    unsigned attempt = x->attempts;
    if (stale) {
        /* A pooled connection the backend had closed: not the server's
         * fault, try again without counting an attempt. */
        x->tried &= ~(x->server >= 0 && x->server < 64 ? 1ull << x->server : 0);
        x->attempts--;
    }
    snprintf(x->fail_what, sizeof(x->fail_what), "%s", what);
    x->fail_at = req->up_name;
    tg_log_debug("request %s: upstream %s %s at %s (attempt %u)", req->request_id,
                 req->upstream->name, what, req->up_name ? req->up_name : "-", attempt);
    TG_METRIC_INC(upstream_stats(x)->failures);
    if (timeout)
        TG_METRIC_INC(upstream_stats(x)->timeouts);
    if (may_retry && x->attempts <= req->upstream->retries) {
        TG_METRIC_INC(upstream_stats(x)->retries);
        x->retry_noted = !stale;
        x->up_head_sent = 0;
        x->up_write_failed = false;
        connect_upstream(x);
        return;
    }
    fail_upstream(x, timeout ? 504 : 502, what);
}

/* ---- choosing and connecting -------------------------------------------------- */

/* Round-robin position: per worker and snapshot for configured upstreams;
 * a tenant from Redis keeps its own (worker-local); static tenants are
 * shared by all workers, so they use one per-worker position. */
static unsigned *pick_cursor(struct tg_exchange *x)
{
    struct tg_request *req = x->req;
    struct tg_tenant *t = req->tenant_obj;
    if (t != NULL && req->upstream == &t->upstream)
        return t->refs > 0 ? &t->rr_cursor : &req->ctx->static_tenant_rr;
    return &req->wcfg->rr_cursor[req->upstream->index];
}

/* Every server that may take the request is at its connection cap: wait
 * (like HAProxy's queue) until one frees a slot, at most connect_timeout
 * from the first try; then 503. */
static void upwait_enqueue(struct tg_exchange *x)
{
    if (x->upwait_until == 0) {
        x->upwait_until = now_of(x) + MS(x->req->upstream->connect_timeout_ms);
        TG_METRIC_INC(upstream_stats(x)->queued);
    }
    x->connecting = true;
    tg_list_push_back(&x->req->ctx->upwait, &x->upwait_link);
    arm(x);
}

void tg_forward_upwait_kick(struct ev_loop *loop, ev_prepare *wp, int revents)
{
    (void)revents;
    ev_prepare_stop(loop, wp);
    struct tg_context *ctx = wp->data;
    struct tg_list waiting;
    tg_list_init(&waiting);
    /* Move them all out first: connect_upstream may queue one again. */
    struct tg_list *n;
    while ((n = tg_list_first(&ctx->upwait)) != NULL) {
        tg_list_remove(n);
        tg_list_push_back(&waiting, n);
    }
    while ((n = tg_list_first(&waiting)) != NULL) {
        tg_list_remove(n);
        struct tg_exchange *x = tg_list_entry(n, struct tg_exchange, upwait_link);
        struct tg_request *req = x->req;
        tg_request_ref(req);
        connect_upstream(x);
        if (!tg_request_over(req))
            update_watches(x), arm(x);
        tg_request_unref(req);
    }
}

static void connect_upstream(struct tg_exchange *x)
{
    struct tg_request *req = x->req;
    struct tg_context *ctx = req->ctx;
    uint64_t busy = 0; /* servers at their connection cap */
    for (;;) {
        int idx = tg_upstream_pick(ctx, pick_cursor(x), req->upstream, x->servers, x->nservers,
                                   x->tried | busy, req->balance_hash);
        if (idx < 0 && busy != 0) {
            upwait_enqueue(x);
            return;
        }
        if (idx < 0) {
            fail_upstream(x, 502, NULL);
            return;
        }
        if (x->retry_noted) {
            /* Another server takes it: a retry worth a (bounded) line. */
            char subject[TG_FAULTLOG_SUBJECT_MAX];
            x->retry_noted = false;
            tg_faultlog_note(TG_LOG_INFO, upstream_subject(x, subject, sizeof(subject)),
                             "requests retried", "request %s: %s at %s; retrying on %s",
                             req->request_id, x->fail_what, x->fail_at ? x->fail_at : "-",
                             x->servers[idx].addr.text);
        }
        x->tried |= idx < 64 ? 1ull << idx : 0;
        x->attempts++;
        x->server = idx;
        struct tg_upconn *uc = tg_upstream_acquire(ctx, req->upstream, &x->servers[idx], x);
        if (uc == NULL && errno == EBUSY && idx < 64) {
            /* At its cap: not a failure, and not an attempt. */
            x->tried &= ~(1ull << idx);
            x->attempts--;
            busy |= 1ull << idx;
            continue;
        }
        if (uc == NULL) {
            /* Out of descriptors or memory here: this gateway's fault. */
            snprintf(x->fail_what, sizeof(x->fail_what), "cannot open a connection (%s)",
                     strerror(errno));
            x->fail_at = x->servers[idx].addr.text; /* the set lives as long as x */
            tg_log_debug("request %s: upstream %s %s at %s (attempt %u)", req->request_id,
                         req->upstream->name, x->fail_what, x->fail_at, x->attempts);
            if (x->attempts > req->upstream->retries) {
                fail_upstream(x, 502, NULL);
                return;
            }
            x->retry_noted = true;
            continue;
        }
        x->up = uc;
        req->up_name = tg_upstream_name(uc);
        TG_METRIC_INC(upstream_stats(x)->requests);
        uc->on_io = on_upstream_io;
        req->up_start = now_of(x);
        req->up_connected_at = 0;
        x->up_read_at = x->up_write_at = req->up_start;
        if (uc->state != TG_UPCONN_ACTIVE) {
            x->connecting = true;
            return;
        }
        x->connecting = false;
        send_upstream(x);
        return;
    }
}

/* Connection set-up (connect, then TLS); once ready the head goes out. */
static void upstream_setup(struct tg_exchange *x, struct tg_upconn *uc)
{
    char what[120];
    const struct tg_config_upstream *u = x->req->upstream;
    if (uc->state == TG_UPCONN_CONNECTING) {
        if (tg_upstream_connected(uc, u) < 0) {
            snprintf(what, sizeof(what), "refused the connection (%s)", strerror(errno));
            TG_METRIC_INC(upstream_stats(x)->connect_errors);
            attempt_failed(x, what, false);
            return;
        }
    }
    if (uc->state == TG_UPCONN_HANDSHAKE) {
        const char *reason = "other";
        int rc = tg_upstream_handshake(uc, u, &reason);
        if (rc < 0) {
            snprintf(what, sizeof(what), "failed the TLS handshake (%s)", reason);
            attempt_failed(x, what, false);
            return;
        }
        if (rc == 0)
            return;
    }
    x->connecting = false;
    /* A new connection is ready: how long it took. */
    struct tg_upstream_stats *us = upstream_stats(x);
    x->req->up_connected_at = now_of(x);
    double took = x->req->up_connected_at - x->req->up_start;
    TG_METRIC_INC(us->connect[tg_metrics_bucket(took)]);
    TG_METRIC_ADD(us->connect_us, took > 0 ? (uint64_t)(took * 1e6) : 0);
    send_upstream(x);
}

/* ---- the request toward the backend ----------------------------------------- */

/* Queues chunk framing: "\r\n" closing the previous chunk when one is
 * open, then "HEX\r\n" for `n` more bytes, or the last chunk at the end. */
static void frame_chunk(struct tg_exchange *x, bool close_previous, uint64_t n, bool last)
{
    char *p = x->pend;
    size_t o = 0;
    if (close_previous) {
        p[o++] = '\r';
        p[o++] = '\n';
    }
    if (last) {
        memcpy(p + o, "0\r\n\r\n", 5);
        o += 5;
    } else {
        static const char hex[] = "0123456789abcdef";
        char digits[16];
        int nd = 0;
        do {
            digits[nd++] = hex[n & 15];
            n >>= 4;
        } while (n != 0);
        while (nd > 0)
            p[o++] = digits[--nd];
        p[o++] = '\r';
        p[o++] = '\n';
    }
    x->pend_len = (uint8_t)o;
    x->pend_off = 0;
}

/* ---- WebSocket close toward the backend --------------------------------------- */

/* How many of the bytes in `v` (one direction of a closing tunnel, `f`
 * where its frames stand) may pass before our close frame: the first
 * `allow` (they had arrived when the drain began), then up to the end of
 * the frame they leave open. Our close goes in when this is 0 at a
 * boundary. */
static size_t ws_pass(const struct tg_wsframe *f, uint64_t allow, const struct iovec *v, int n)
{
    struct tg_wsframe probe = *f;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const char *p = v[i].iov_base;
        size_t len = v[i].iov_len;
        if (allow > 0) {
            size_t a = len < allow ? len : (size_t)allow;
            tg_wsframe_feed(&probe, p, a, false);
            allow -= a;
            total += a;
            p += a;
            len -= a;
            if (len == 0)
                continue;
        }
        if (tg_wsframe_at_boundary(&probe))
            break;
        total += tg_wsframe_feed(&probe, p, len, true);
        if (tg_wsframe_at_boundary(&probe))
            break;
    }
    return total;
}

/* Bytes of one direction passed on: they count against its allowance. */
static void ws_passed(uint64_t *allow, size_t n)
{
    *allow -= n < *allow ? n : *allow;
}

/* What the client sends after the backend got a close frame is not passed
 * on (RFC 6455 5.5.1: no data after a close): read to see the client's own
 * close (its answer to ours), and dropped. */
static void ws_drop_client_bytes(struct tg_exchange *x)
{
    struct tg_request *req = x->req;
    struct iovec spans[BODY_SPANS];
    bool end = false;
    int ns;
    while ((ns = req->stream_ops->body_peek(req->stream, spans, BODY_SPANS, &end)) > 0) {
        size_t total = 0;
        for (int i = 0; i < ns; i++) {
            tg_wsframe_feed(&x->ws_up, spans[i].iov_base, spans[i].iov_len, false);
            total += spans[i].iov_len;
        }
        req->stream_ops->body_consume(req->stream, total);
    }
}

/* Queues a close frame 1001 for the backend where chunk framing would go
 * (a tunnel has none). A client's frames must be masked (RFC 6455 5.3),
 * with a key the payload cannot predict. */
static void ws_queue_close_up(struct tg_exchange *x)
{
    uint8_t key[4];
    if (getentropy(key, sizeof(key)) < 0)
        memcpy(key, &x, sizeof(key)); /* never fails for 4 bytes; still a key */
    x->pend_len = (uint8_t)tg_wsframe_close((uint8_t *)x->pend, TG_WSFRAME_GOING_AWAY, true, key);
    x->pend_off = 0;
    x->ws_up_closed = true;
}

/* Writes the head and the body bytes the stream holds until the socket is
 * full or nothing is left. */
static void send_upstream(struct tg_exchange *x)
{
    struct tg_request *req = x->req;
    struct tg_upconn *uc = x->up;
    if (x->ws_closing && x->ws_up_closed)
        ws_drop_client_bytes(x);
    if (x->up_write_failed) {
        if (uc != NULL)
            uc->io.want_write = false; /* only its answer is awaited now */
        return;
    }
    while (uc != NULL && uc->state == TG_UPCONN_ACTIVE && !tg_request_over(req)) {
        struct iovec iov[2 + BODY_SPANS + 1];
        int n = 0;
        size_t head_left = 0, pend_left = 0, data = 0;
        if (x->up_head != NULL && x->up_head_sent < tg_buf_len(x->up_head)) {
            head_left = tg_buf_len(x->up_head) - x->up_head_sent;
            iov[n].iov_base = x->up_head->data + x->up_head->start + x->up_head_sent;
            iov[n++].iov_len = head_left;
        }
        /* Body spans the stream holds (in a tunnel, the client's bytes). */
        bool end = false;
        struct iovec spans[BODY_SPANS];
        int ns = x->req_body_sent || (x->ws_closing && x->ws_up_closed)
                     ? 0
                     : req->stream_ops->body_peek(req->stream, spans, BODY_SPANS, &end);
        size_t avail = 0;
        for (int i = 0; i < ns; i++)
            avail += spans[i].iov_len;
        /* A closing WebSocket tunnel: what the client had sent goes on,
         * to the end of a frame, then our close frame, then nothing. */
        uint64_t ws_room = UINT64_MAX;
        if (x->tunnel && x->ws_closing && !x->ws_up_closed) {
            if (x->ws_up_allow == 0 && tg_wsframe_at_boundary(&x->ws_up) &&
                x->pend_off == x->pend_len) {
                ws_queue_close_up(x);
                ws_drop_client_bytes(x);
                continue;
            }
            ws_room = ws_pass(&x->ws_up, x->ws_up_allow, spans, ns);
        }
        if (x->chunked_up && !x->tunnel && x->pend_off == x->pend_len) {
            if (x->chunk_left == 0 && avail > 0) {
                frame_chunk(x, x->req_body_bytes > 0, avail, false);
                x->chunk_left = avail;
            } else if (x->chunk_left == 0 && end && !x->req_body_done) {
                frame_chunk(x, x->req_body_bytes > 0, 0, true);
            }
        }
        if (x->pend_off < x->pend_len) {
            pend_left = (size_t)(x->pend_len - x->pend_off);
            iov[n].iov_base = x->pend + x->pend_off;
            iov[n++].iov_len = pend_left;
        }
        /* Data may follow only what frames it. */
        uint64_t room = x->chunked_up && !x->tunnel ? x->chunk_left : ws_room;
        int first_data = n;
        if (pend_left == 0 || (x->chunked_up && x->chunk_left > 0)) {
            for (int i = 0; i < ns && data < room; i++) {
                size_t take = spans[i].iov_len;
                if (take > room - data)
                    take = (size_t)(room - data);
                iov[n].iov_base = spans[i].iov_base;
                iov[n++].iov_len = take;
                data += take;
            }
        }
        if (n == 0) {
            if (end && !x->tunnel) {
                x->req_body_done = true;
                x->req_body_sent = true;
            }
            uc->io.want_write = false;
            return;
        }
        ssize_t w = tg_io_writev(&uc->io, iov, n);
        if (w == TG_IO_AGAIN)
            return;
        if (w < 0) {
            if (x->tunnel && x->ws_closing) {
                /* The backend is gone: the client still gets its close. */
                x->ws_up_gone = x->ws_up_closed = true;
                x->up_write_failed = true;
                uc->io.want_write = false;
                return;
            }
            if (x->tunnel) {
                upstream_broke(x, "failed while the tunnel sent to it");
                return;
            }
            /* A backend may answer before the body is all there (413, 401)
             * and close: its answer waits in the socket. Read it rather
             * than call this a failure; when nothing usable is there, the
             * read path fails the attempt (and retries if it may). */
            x->up_write_failed = true;
            uc->io.want_write = false;
            if (!x->resp_head_done)
                read_upstream(x);
            return;
        }
        uc->io.want_write = false;
        x->up_write_at = now_of(x);
        size_t done = (size_t)w;
        size_t from_head = done < head_left ? done : head_left;
        x->up_head_sent += from_head;
        done -= from_head;
        if (from_head > 0 && req->lim != NULL)
            req->lim->forwarded = true; /* a reserved failure token may be spent now */
        size_t from_pend = done < pend_left ? done : pend_left;
        x->pend_off = (uint8_t)(x->pend_off + from_pend);
        done -= from_pend;
        if (done > 0 && x->tunnel) {
            size_t left = done;
            for (int i = first_data; i < n && left > 0; i++) {
                size_t k = iov[i].iov_len < left ? iov[i].iov_len : left;
                tg_wsframe_feed(&x->ws_up, iov[i].iov_base, k, false);
                left -= k;
            }
            ws_passed(&x->ws_up_allow, done);
        }
        if (done > 0) {
            req->stream_ops->body_consume(req->stream, done);
            x->sent_body_bytes = true;
            x->req_body_bytes += done;
            if (x->chunked_up && !x->tunnel)
                x->chunk_left -= done;
        }
        if (x->chunked_up && !x->tunnel && x->pend_off == x->pend_len && x->pend_len >= 5 &&
            memcmp(x->pend + x->pend_len - 5, "0\r\n\r\n", 5) == 0) {
            x->req_body_done = true;
            x->req_body_sent = true;
        }
    }
}

/* ---- the response toward the client ------------------------------------------ */

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

static void note_sse_data(struct tg_exchange *x, const char *p, size_t n)
{
    if (n >= 3) {
        memcpy(x->sse_tail, p + n - 3, 3);
    } else {
        memmove(x->sse_tail, x->sse_tail + n, 3 - n);
        memcpy(x->sse_tail + 3 - n, p, n);
    }
}

static bool at_event_boundary(const struct tg_exchange *x)
{
    const char *t = x->sse_tail;
    return (t[1] == '\n' && t[2] == '\n') || (t[1] == '\r' && t[2] == '\r') ||
           (t[0] == '\n' && t[1] == '\r' && t[2] == '\n');
}

/* Frames newly arrived response bytes: counts them against the length, or
 * cuts the chunk framing out in place, so up->in starts with resp_ready
 * data bytes. Returns -1 if the request ended. */
static int frame_response_body(struct tg_exchange *x)
{
    struct tg_buf *in = x->up->in;
    if (x->resp_body_done) {
        if (tg_buf_len(in) > x->resp_ready && !x->tunnel)
            x->resp_keep_alive = false; /* bytes after the end: not reusable */
        return 0;
    }
    size_t avail = tg_buf_len(in) - x->resp_ready;
    char *p = in->data + in->start + x->resp_ready;
    switch (x->resp_framing) {
    case TG_HTTP1_BODY_LENGTH: {
        size_t take = avail < x->resp_remaining ? avail : (size_t)x->resp_remaining;
        if (x->sse)
            note_sse_data(x, p, take);
        x->resp_ready += take;
        x->resp_remaining -= take;
        if (x->resp_remaining == 0)
            x->resp_body_done = true;
        break;
    }
    case TG_HTTP1_BODY_CHUNKED: {
        char *write = p;
        while (avail > 0 && !x->resp_chunked.done) {
            size_t dlen = 0;
            ssize_t r = tg_http1_chunked_next(&x->resp_chunked, p, avail, &dlen);
            if (r < 0) {
                upstream_broke(x, "sent an invalid chunked body");
                return -1;
            }
            if (dlen > 0) {
                if (x->sse)
                    note_sse_data(x, p, dlen);
                if (write != p)
                    memmove(write, p, dlen);
                write += dlen;
            }
            p += r;
            avail -= (size_t)r;
            if (r == 0)
                break;
        }
        if (write != p) {
            /* Close the gap left by the framing cut out. */
            size_t tail = (size_t)(in->data + in->end - p);
            memmove(write, p, tail);
            in->end -= (size_t)(p - write);
        }
        x->resp_ready = (size_t)(write - (in->data + in->start));
        if (x->resp_chunked.done) {
            x->resp_body_done = true;
            /* Trailers are not passed on: what follows the last chunk is
             * consumed with it. */
            in->end = in->start + x->resp_ready + (size_t)(in->end - (size_t)(p - in->data));
        }
        break;
    }
    case TG_HTTP1_BODY_CLOSE:
        if (x->sse)
            note_sse_data(x, p, avail);
        x->resp_ready += avail;
        break;
    default:
        x->resp_body_done = true;
        break;
    }
    if (x->resp_body_done && tg_buf_len(in) > x->resp_ready)
        x->resp_keep_alive = false;
    return 0;
}

/* ---- the response cache's tee (cache_serve.c starts it, cache.c stores) ---- */

/* The entry this exchange fills, while it still may. */
static struct tg_cache_entry *cache_fill(const struct tg_exchange *x)
{
    return x->req->cache != NULL ? x->req->cache->fill : NULL;
}

/* The backend's head: the entry keeps it if the response may be stored.
 * Streams (SSE, stream routes) never are: they do not end. */
static void cache_tee_head(struct tg_exchange *x, const struct tg_http1_response *r,
                           const struct tg_http_headers *backend)
{
    struct tg_cache_entry *e = cache_fill(x);
    if (e == NULL)
        return;
    struct tg_cache_verdict v;
    tg_cache_judge(r->status, backend, MS(x->req->route->cache.ttl_ms), &v);
    if (x->stream)
        v.storable = false;
    int64_t length = r->framing == TG_HTTP1_BODY_LENGTH ? (int64_t)r->content_length : -1;
    tg_cache_fill_head(e, r->status, backend, length, &x->req->cache->fields, &v, now_of(x));
}

/* Body bytes the stream took: the entry gets the same. */
static void cache_tee_body(struct tg_exchange *x, const char *p, size_t n)
{
    struct tg_cache_entry *e = cache_fill(x);
    if (e != NULL)
        tg_cache_fill_body(e, p, n);
}

/* The whole body went to the client: the entry is complete. */
static void cache_tee_done(struct tg_exchange *x)
{
    struct tg_cache_entry *e = cache_fill(x);
    if (e != NULL)
        tg_cache_fill_done(e);
}

/* X-Cache on an answer from the backend, when the route asks for it. */
static const char *cache_extra(const struct tg_exchange *x)
{
    const struct tg_cache_req *cr = x->req->cache;
    return cr != NULL && cr->x_cache ? "X-Cache: MISS\r\n" : NULL;
}

/* The response has been given to the stream whole. */
static void finish_response(struct tg_exchange *x)
{
    struct tg_request *req = x->req;
    if (!x->tunnel)
        cache_tee_done(x);
    struct tg_upconn *uc = x->up;
    bool reusable = uc != NULL && x->resp_keep_alive && x->resp_framing != TG_HTTP1_BODY_CLOSE &&
                    x->req_body_sent && uc->in != NULL && tg_buf_len(uc->in) == 0 && !x->tunnel;
    if (uc != NULL) {
        bool failed = req->upstream->fail_on_5xx && req->status >= 500;
        char why[32] = "";
        if (failed)
            snprintf(why, sizeof(why), "answered %d", req->status);
        if (tg_upstream_report(uc, req->upstream, !failed, why))
            TG_METRIC_INC(upstream_stats(x)->ejections);
        drop_upstream(x, reusable);
    }
    req->answer_done = true;
    /* A request body the backend did not take (it answered early) is the
     * front end's to discard or to close on. */
    end_exchange(x, x->tunnel || req->close_client ? TG_STREAM_CLOSE : TG_STREAM_DONE);
}

static const uint8_t ws_going_away[4] = {0x88, 0x02, 0x03, 0xE9}; /* close 1001, unmasked */

/* Backend -> client in a closing WebSocket tunnel: what the backend had
 * sent goes on, to the end of a frame (*ready is cut there), then our close
 * frame (returns true: it is queued), then what the backend still sends is
 * dropped. */
static bool ws_close_down(struct tg_exchange *x, struct tg_buf *in, size_t *ready)
{
    char *p = in != NULL ? in->data + in->start : NULL;
    if (!x->ws_down_closed) {
        if (x->ws_down_allow > 0 || !tg_wsframe_at_boundary(&x->ws_down)) {
            struct iovec v = {p, *ready};
            *ready = ws_pass(&x->ws_down, x->ws_down_allow, &v, *ready > 0 ? 1 : 0);
            return false;
        }
        x->ws_down_closed = true;
        x->inject = (const char *)ws_going_away;
        x->inject_left = sizeof(ws_going_away);
        x->inject_end = false;
        return true;
    }
    if (*ready > 0) {
        tg_wsframe_feed(&x->ws_down, p, *ready, false);
        tg_buf_consume(in, *ready);
        x->resp_ready -= *ready;
        *ready = 0;
    }
    return false;
}

/* Offers the framed response bytes to the stream until it takes no more or
 * none are left; ends the exchange when all is given. Bytes of our own (an
 * SSE heartbeat, the drain hint, a WebSocket close) go first, whole,
 * between two events or frames. */
static void pump_response(struct tg_exchange *x)
{
    struct tg_request *req = x->req;
    while (!tg_request_over(req) && x->resp_head_done) {
        if (x->inject_left > 0) {
            struct iovec iov = {(void *)x->inject, x->inject_left};
            ssize_t w = tg_request_send_body(req, &iov, 1, x->inject_end);
            if (w < 0) {
                reset_client(x, NULL);
                return;
            }
            x->inject += w;
            x->inject_left -= (size_t)w;
            if (x->inject_left > 0)
                return; /* the stream is full: tg_request_writable comes back */
            if (x->inject_end) {
                x->end_sent = true;
                finish_response(x);
                return;
            }
            continue;
        }
        struct tg_buf *in = x->up != NULL ? x->up->in : NULL;
        size_t ready = in != NULL ? x->resp_ready : 0;
        bool end = x->resp_body_done;
        if (x->ws_closing) {
            if (ws_close_down(x, in, &ready))
                continue;
            /* The backend's end waits for the client's close (ws_settle). */
            end = end && x->ws_finish;
        }
        if (ready == 0 && !end) {
            if (x->sse_draining && at_event_boundary(x)) {
                /* The drain hint goes out between two events, and ends the
                 * stream: the client reconnects (elsewhere) after it. */
                static const char hint[] = "retry: 1000\n\n";
                x->inject = hint;
                x->inject_left = sizeof(hint) - 1;
                x->inject_end = true;
                x->resp_body_done = true;
                x->resp_keep_alive = false;
                req->close_client = true;
                drop_upstream(x, false);
                continue;
            }
            /* Nothing to give: let the stream write what it holds (the
             * head, for a response whose body comes later). */
            if (tg_request_send_body(req, NULL, 0, false) < 0)
                reset_client(x, NULL);
            return;
        }
        if (ready == 0 && x->end_sent) {
            finish_response(x);
            return;
        }
        struct iovec iov = {in != NULL ? in->data + in->start : NULL, ready};
        ssize_t w = tg_request_send_body(req, &iov, ready > 0 ? 1 : 0, end);
        if (w < 0) {
            reset_client(x, NULL);
            return;
        }
        if (w > 0) {
            if (x->tunnel) {
                tg_wsframe_feed(&x->ws_down, in->data + in->start, (size_t)w, false);
                ws_passed(&x->ws_down_allow, (size_t)w);
            } else {
                cache_tee_body(x, in->data + in->start, (size_t)w);
            }
            tg_buf_consume(in, (size_t)w);
            x->resp_ready -= (size_t)w;
        }
        /* A compressed body is complete once the stream took the encoder's
         * last bytes too. */
        if (x->resp_ready == 0 && end && !tg_request_body_pending(req)) {
            x->end_sent = true;
            finish_response(x);
            return;
        }
        if ((size_t)w < ready || w == 0)
            return; /* the stream is full: tg_request_writable comes back */
    }
}

/* A tenant's stream is listed for its worker: if the tenant moves, it
 * ends (tenant_moves.c). */
static void track_tenant_stream(struct tg_request *req)
{
    if (req->tenant_obj != NULL && !tg_list_linked(&req->tenant_stream_link))
        tg_list_push_back(&req->ctx->tenant_streams, &req->tenant_stream_link);
}

/* A drain reached a WebSocket tunnel (or the tunnel opened during one):
 * from now on close frames go out at the next frame boundary each way,
 * within drain_timeout. A close that already went one way counts. */
static void ws_begin_closing(struct tg_exchange *x)
{
    if (x->ws_closing)
        return;
    x->ws_closing = true;
    x->ws_close_by =
        x->req->drain_by != 0 ? x->req->drain_by : now_of(x) + MS(cfg_of(x)->drain_timeout_ms);
    x->ws_down_closed = x->ws_down.closed;
    x->ws_up_closed = x->ws_up.closed;
    /* What either side sent before the close is delivered, not dropped. */
    struct tg_request *req = x->req;
    struct iovec spans[BODY_SPANS];
    bool end = false;
    int ns = req->stream_ops->body_peek(req->stream, spans, BODY_SPANS, &end);
    for (int i = 0; i < ns; i++)
        x->ws_up_allow += spans[i].iov_len;
    x->ws_down_allow = x->up != NULL && x->up->in != NULL ? tg_buf_len(x->up->in) : 0;
}

/* Where a closing tunnel stands. It is done when our close frame is given
 * to the client, the backend told (or gone), and the client's own close
 * seen (RFC 6455 7.1.1: the server then closes the connection first), or
 * the grace for it is over; at drain_timeout it ends anyway, after our
 * close frame if it went, else cut as before. */
enum ws_end { WS_WAIT, WS_END, WS_CUT };

static enum ws_end ws_check(struct tg_exchange *x, ev_tstamp now)
{
    bool backend_done = x->resp_body_done && x->resp_ready == 0;
    if (backend_done && !x->ws_down_closed && !tg_wsframe_at_boundary(&x->ws_down))
        return WS_END; /* the backend hung up inside a frame: nothing can follow it */
    bool down = x->ws_down_closed && x->inject_left == 0;
    bool up = x->ws_up_gone || x->resp_body_done || (x->ws_up_closed && x->pend_off == x->pend_len);
    if (down && up && x->ws_grace_by == 0)
        x->ws_grace_by =
            now + WS_CLOSE_GRACE_S < x->ws_close_by ? now + WS_CLOSE_GRACE_S : x->ws_close_by;
    bool answered = x->ws_up.closed || (x->ws_grace_by != 0 && now >= x->ws_grace_by);
    if (down && ((up && answered) || now >= x->ws_close_by))
        return WS_END;
    return now >= x->ws_close_by ? WS_CUT : WS_WAIT;
}

/* After each event of a closing tunnel: once it is done, its end is due
 * now, and comes from on_timeout (ws_end). Not from here: this may run
 * inside the front end's input (an HTTP/2 DATA frame), where a stream
 * cannot end. */
static void ws_settle(struct tg_exchange *x)
{
    if (!x->ws_closing || x->ws_end_at != 0 || tg_request_over(x->req))
        return;
    ev_tstamp now = now_of(x);
    if (ws_check(x, now) != WS_WAIT)
        x->ws_end_at = now;
}

static void ws_end(struct tg_exchange *x, ev_tstamp now)
{
    switch (ws_check(x, now)) {
    case WS_WAIT:
        x->ws_end_at = 0;
        break;
    case WS_END:
        /* What the backend still holds for the client is dropped; the
         * connection (h1) or stream (h2) ends after our close frame. */
        x->ws_finish = true;
        x->resp_body_done = true;
        if (x->up != NULL && x->up->in != NULL && x->resp_ready > 0)
            tg_buf_consume(x->up->in, x->resp_ready);
        x->resp_ready = 0;
        pump_response(x);
        break;
    case WS_CUT:
        tg_faultlog_note(TG_LOG_INFO, "drain", "tunnels cut",
                         "request %s: WebSocket frame still in flight at drain_timeout; closing "
                         "the client's stream",
                         x->req->request_id);
        reset_client(x, NULL);
        break;
    }
}

/* Queues an SSE heartbeat comment between two events. Returns false when
 * not at a boundary now. */
static bool sse_heartbeat(struct tg_exchange *x)
{
    if (!x->sse || x->resp_ready > 0 || x->inject_left > 0 || !at_event_boundary(x))
        return false;
    static const char beat[] = ":\n\n";
    x->inject = beat;
    x->inject_left = sizeof(beat) - 1;
    x->inject_end = false;
    pump_response(x);
    return true;
}

static void on_response_head(struct tg_exchange *x, const struct tg_http1_response *r,
                             size_t head_len)
{
    struct tg_request *req = x->req;
    struct tg_context *ctx = req->ctx;
    const struct tg_config *cfg = cfg_of(x);
    req->status = r->status;
    req->up_header_at = now_of(x);
    struct tg_upstream_stats *us = upstream_stats(x);
    double took = req->up_header_at - req->up_start;
    TG_METRIC_INC(us->response[tg_metrics_bucket(took)]);
    TG_METRIC_ADD(us->response_us, took > 0 ? (uint64_t)(took * 1e6) : 0);
    if (req->lim != NULL)
        tg_limiter_after_response(req->lim, r->status);
    x->resp_framing = r->framing;
    x->resp_remaining = r->content_length;
    x->resp_keep_alive = r->keep_alive;
    tg_http1_chunked_init(&x->resp_chunked, MAX_TRAILER);
    x->sse = is_event_stream(r);
    if (x->sse)
        x->stream = true;
    if (x->sse && r->status < 300)
        track_tenant_stream(req);
    unsigned max_streams = cfg->stream.max_per_ip;
    if (x->stream && max_streams != 0 && r->status < 300) {
        struct tg_addr group;
        tg_iptable_group(&req->client, cfg->client.ipv6_prefix, &group);
        if (!tg_iptable_acquire(ctx->rt->iptable, &group, TG_IPTABLE_STREAMS, max_streams)) {
            answer_locally(x, 429, NULL,
                           "429 Too Many Requests: too many open streams from "
                           "this client\n",
                           false);
            return;
        }
        x->stream_counted = true;
    }
    /* Every way the exchange ends goes through release(), which counts it
     * out again. */
    if (x->sse) {
        TG_METRIC_ADD(ctx->metrics->sse_open, 1);
        x->sse_counted = true;
    }
    memcpy(x->sse_tail, "\n\n\n", 3); /* the start is an event boundary */
    bool upgrade = r->status == 101;
    if (upgrade || r->framing == TG_HTTP1_BODY_CLOSE || !x->req_body_sent)
        req->close_client = true;

    /* The fields to send: the backend's, rewritten (views into up->in,
     * serialised by the stream before the head bytes are consumed). */
    struct tg_http_headers backend = {(struct tg_http_header *)r->headers, r->nheaders,
                                      r->nheaders};
    const struct tg_config_headers *rules =
        req->route != NULL && req->route->headers != NULL ? req->route->headers : &cfg->headers;
    struct tg_headers_response hin = {
        .rules = rules,
        .hsts = tg_request_hsts(req),
        .request_id = tg_str_make(req->request_id, req->request_id_len),
        .lim = req->lim,
        .extra = cache_extra(x),
        .keep_upgrade = upgrade,
    };
    struct tg_http_headers fields;
    int64_t length = r->framing == TG_HTTP1_BODY_LENGTH ? (int64_t)r->content_length : -1;
    unsigned flags = 0;
    if (upgrade)
        flags |= TG_STREAM_TUNNEL;
    if (r->framing == TG_HTTP1_BODY_NONE && !upgrade) {
        flags |= TG_STREAM_NO_BODY;
        /* HEAD, 204, 304: a Content-Length the backend sent describes the
         * representation; it stays. */
        for (size_t i = 0; i < r->nheaders; i++) {
            if (tg_http_name_eq(r->headers[i].name, "content-length")) {
                length = 0;
                for (size_t k = 0; k < r->headers[i].value.n; k++)
                    length = length * 10 + (r->headers[i].value.p[k] - '0');
                break;
            }
        }
        if (r->status == 204 || r->status == 304 || length < 0)
            length = r->status == 204 ? -1 : length;
    }
    cache_tee_head(x, r, &backend);
    if (tg_headers_response_fields(&req->arena, &hin, &backend, &fields) < 0 ||
        tg_request_send_head(req, r->status, &fields, length, flags) < 0) {
        fail_upstream(x, 502, "sent a response head we could not pass on");
        return;
    }
    tg_buf_consume(x->up->in, head_len);
    x->resp_head_done = true;
    if (upgrade) {
        x->tunnel = true;
        track_tenant_stream(req);
        x->resp_framing = TG_HTTP1_BODY_CLOSE;
        x->req_body_done = true;
        x->req_body_sent = false; /* tunnel bytes flow from now on */
        if (x->drain_asked)
            ws_begin_closing(x); /* opened during a drain: closed at once */
    }
}

/* Parses response heads (several when 1xx come first) and frames body
 * bytes. */
static void handle_response(struct tg_exchange *x)
{
    struct tg_request *req = x->req;
    struct tg_upconn *uc = x->up;
    while (!x->resp_head_done) {
        struct tg_http1_response *r = tg_context_h1_response(req->ctx);
        if (r == NULL) {
            fail_upstream(x, 502, "could not be read (out of memory)");
            return;
        }
        struct tg_http1_limits limits = {8192, req->upstream->max_response_head,
                                         TG_HTTP1_MAX_HEADERS};
        const char *reason = "invalid";
        ssize_t n = tg_http1_parse_response(uc->in->data + uc->in->start, tg_buf_len(uc->in),
                                            &x->resp_scanned, &limits, req->method_id, r, &reason);
        if (n == TG_HTTP1_INCOMPLETE)
            return;
        if (n == TG_HTTP1_ERROR) {
            char what[120];
            snprintf(what, sizeof(what), "sent an invalid response (%s)", reason);
            tg_upstream_report(uc, req->upstream, false, what);
            drop_upstream(x, false);
            fail_upstream(x, 502, what);
            return;
        }
        x->resp_scanned = 0;
        int status = r->status;
        if (status == 101) {
            if (!req->upgrade_websocket || !r->upgrade_websocket) {
                drop_upstream(x, false);
                fail_upstream(x, 502, "switched protocols without being asked");
                return;
            }
        } else if (status < 200) {
            /* Interim answers (100 Continue, 103 Early Hints) go to the
             * client as they come (a front end that cannot take them drops
             * them). */
            struct tg_http_headers backend = {r->headers, r->nheaders, r->nheaders}, fields;
            if (tg_headers_interim_fields(&req->arena, &backend, &fields) < 0 ||
                tg_request_send_head(req, status, &fields, -1, TG_STREAM_NO_BODY) < 0) {
                fail_upstream(x, 502, "sent an interim response we could not pass on");
                return;
            }
            tg_buf_consume(uc->in, (size_t)n);
            continue;
        }
        on_response_head(x, r, (size_t)n);
        if (tg_request_over(req))
            return;
    }
    if (x->tunnel) {
        x->resp_ready = tg_buf_len(uc->in);
    } else if (frame_response_body(x) < 0) {
        return;
    }
    pump_response(x);
    if (!tg_request_over(req) && x->tunnel)
        send_upstream(x); /* client bytes that came with the upgrade */
}

static void upstream_eof(struct tg_exchange *x)
{
    if (x->tunnel) {
        x->resp_body_done = true;
        x->resp_keep_alive = false; /* read no more (a closing tunnel waits on) */
        pump_response(x);           /* flush, then finish_response ends it */
        return;
    }
    if (!x->resp_head_done) {
        if (x->up->in != NULL && tg_buf_len(x->up->in) > 0) {
            drop_upstream(x, false);
            fail_upstream(x, 502, "closed the connection in the middle of a response head");
            return;
        }
        attempt_failed(x, "closed the connection without answering", false);
        return;
    }
    if (x->resp_framing == TG_HTTP1_BODY_CLOSE) {
        x->resp_body_done = true;
        pump_response(x);
        return;
    }
    /* Truncated: never let the client take it as complete. */
    upstream_broke(x, "closed the connection in the middle of the body");
}

static void read_upstream(struct tg_exchange *x)
{
    struct tg_request *req = x->req;
    struct tg_upconn *uc = x->up;
    struct tg_context *ctx = req->ctx;
    if (x->resp_body_done && !x->tunnel) {
        /* The response is whole and still being given to the client; the
         * backend spoke again (closed, or sent bytes nobody asked for):
         * this connection will not be reused. */
        x->resp_keep_alive = false;
        return;
    }
    if (uc->in == NULL) {
        uc->in = tg_buf_get(&ctx->bufs, ctx->bufs.small_size);
        if (uc->in == NULL) {
            tg_faultlog_note(TG_LOG_ERROR, "out of memory", "requests failed",
                             "request %s: no buffer for the response; closing the client's stream",
                             req->request_id);
            reset_client(x, NULL);
            return;
        }
    }
    if (tg_buf_room(uc->in) == 0)
        tg_buf_compact(uc->in);
    if (tg_buf_room(uc->in) == 0) {
        if (x->resp_head_done)
            return; /* full: wait for the client to take bytes */
        if (uc->in->cap >= req->upstream->max_response_head ||
            tg_buf_grow(&ctx->bufs, &uc->in, req->upstream->max_response_head) < 0) {
            drop_upstream(x, false);
            fail_upstream(x, 502, "sent a response head over max_response_head");
            return;
        }
    }
    ssize_t n = tg_io_read(&uc->io, uc->in->data + uc->in->end, tg_buf_room(uc->in));
    if (n == TG_IO_AGAIN)
        return;
    if (n == 0) {
        upstream_eof(x);
        return;
    }
    if (n < 0) {
        if (x->tunnel) {
            upstream_eof(x);
        } else if (!x->resp_head_done) {
            attempt_failed(x, "reset the connection", false);
        } else {
            upstream_broke(x, "reset the connection mid-body");
        }
        return;
    }
    uc->in->end += (size_t)n;
    x->up_read_at = now_of(x);
    handle_response(x);
}

/* ---- events -------------------------------------------------------------------- */

static void on_upstream_io(struct tg_upconn *uc, int revents)
{
    struct tg_exchange *x = uc->owner;
    if (x == NULL)
        return;
    struct tg_request *req = x->req;
    tg_request_ref(req);
    if (uc->state == TG_UPCONN_CONNECTING || uc->state == TG_UPCONN_HANDSHAKE) {
        upstream_setup(x, uc);
    } else {
        if ((revents & EV_WRITE) && !tg_request_over(req) && x->up == uc)
            send_upstream(x);
        if ((revents & EV_READ) && !tg_request_over(req) && x->up == uc)
            read_upstream(x);
    }
    ws_settle(x);
    if (!tg_request_over(req)) {
        update_watches(x);
        arm(x);
    }
    tg_request_unref(req);
}

/* Request body arrived (or ended): write it upstream. */
static void on_body(struct tg_request *req)
{
    struct tg_exchange *x = req->x;
    if (x->up != NULL && !x->connecting)
        send_upstream(x);
    ws_settle(x);
    if (!tg_request_over(req)) {
        update_watches(x);
        arm(x);
    }
}

/* The stream takes bytes again. */
static void on_writable(struct tg_request *req)
{
    struct tg_exchange *x = req->x;
    pump_response(x);
    ws_settle(x);
    if (!tg_request_over(req)) {
        update_watches(x);
        arm(x);
    }
}

static void on_abort(struct tg_request *req)
{
    release(req->x);
}

/* Drain started: streams end at the next event boundary after a retry
 * hint; WebSocket tunnels get a close frame (1001) each way at the next
 * frame boundary, then end when the client answers. */
static void on_drain(struct tg_request *req)
{
    struct tg_exchange *x = req->x;
    x->drain_asked = true;
    if (x->tunnel) {
        ws_begin_closing(x);
        pump_response(x);
        if (!tg_request_over(req))
            send_upstream(x);
        ws_settle(x);
        if (!tg_request_over(req)) {
            update_watches(x);
            arm(x);
        }
        return;
    }
    if (!x->sse || !x->resp_head_done)
        return;
    x->sse_draining = true;
    pump_response(x);
    if (!tg_request_over(req) && req->drain_by != 0)
        arm(x); /* the move's grace is a deadline */
}

/* Arms the upstream socket for what the exchange waits for, given buffer
 * space. */
static void update_watches(struct tg_exchange *x)
{
    struct tg_upconn *uc = x->up;
    if (uc == NULL)
        return;
    int uev = 0;
    if (uc->state == TG_UPCONN_CONNECTING) {
        uev = EV_WRITE;
    } else if (uc->state == TG_UPCONN_HANDSHAKE) {
        uev = uc->io.want_write ? EV_WRITE : EV_READ;
    } else {
        bool head_left = x->up_head != NULL && x->up_head_sent < tg_buf_len(x->up_head);
        if (head_left || x->pend_off < x->pend_len || (uc->io.want_write && !x->up_write_failed))
            uev |= EV_WRITE;
        /* Keep reading even once the response is complete: the connection
         * goes back to the pool watching for EV_READ anyway, and leaving the
         * events as they are saves epoll_ctl calls. Only a full buffer
         * (backpressure) stops it. */
        bool room =
            uc->in == NULL || tg_buf_room(uc->in) > 0 || uc->in->start > 0 || !x->resp_head_done;
        if (room && !(x->resp_body_done && !x->resp_keep_alive))
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
    DL_STREAM_IDLE,
    DL_CLIENT_RATE,
    DL_QUEUE,
    DL_WS_CLOSE,
    DL_MOVED, /* its tenant moved: the stream's grace is over */
};

static void consider(ev_tstamp *best, enum deadline_kind *kind, ev_tstamp when,
                     enum deadline_kind k)
{
    if (*kind == DL_NONE || when < *best) {
        *best = when;
        *kind = k;
    }
}

/* Body bytes the stream holds for us and that we have not written. */
static bool body_waiting(const struct tg_exchange *x)
{
    struct tg_request *req = x->req;
    struct iovec spans[1];
    bool end = false;
    return req->stream_ops->body_peek(req->stream, spans, 1, &end) > 0;
}

static enum deadline_kind next_deadline(const struct tg_exchange *x, ev_tstamp *when)
{
    const struct tg_request *req = x->req;
    const struct tg_config *cfg = cfg_of(x);
    const struct tg_config_upstream *u = req->upstream;
    enum deadline_kind kind = DL_NONE;
    ev_tstamp best = 0;
    bool out_pending = x->resp_head_done &&
                       (x->resp_ready > 0 || x->inject_left > 0 || tg_request_body_pending(req));

    if (out_pending)
        consider(&best, &kind, req->client_write_at + MS(cfg->client.send_timeout_ms),
                 DL_CLIENT_SEND);
    if (x->connecting) {
        if (tg_list_linked(&x->upwait_link))
            consider(&best, &kind, x->upwait_until, DL_QUEUE);
        else
            consider(&best, &kind, req->up_start + MS(u->connect_timeout_ms), DL_CONNECT);
        *when = best;
        return kind;
    }
    if (x->tunnel) {
        if (cfg->stream.idle_timeout_ms > 0) {
            ev_tstamp last =
                req->client_read_at > x->up_read_at ? req->client_read_at : x->up_read_at;
            consider(&best, &kind, last + MS(cfg->stream.idle_timeout_ms), DL_STREAM_IDLE);
        }
        if (x->ws_closing && x->ws_end_at != 0) {
            consider(&best, &kind, x->ws_end_at, DL_WS_CLOSE);
        } else if (x->ws_closing) {
            consider(&best, &kind, x->ws_close_by, DL_WS_CLOSE);
            if (x->ws_grace_by != 0)
                consider(&best, &kind, x->ws_grace_by, DL_WS_CLOSE);
        }
        *when = best;
        return kind;
    }
    if (!x->req_body_done && !body_waiting(x))
        consider(&best, &kind, req->client_read_at + MS(cfg->client.body_timeout_ms),
                 DL_CLIENT_BODY);
    if (!x->req_body_done && cfg->client.min_body_rate > 0) {
        ev_tstamp first = req->start + MIN_RATE_GRACE_S;
        ev_tstamp next = x->rate_checked_at + 1.0;
        consider(&best, &kind, next > first ? next : first, DL_CLIENT_RATE);
    }
    if (x->up != NULL && (x->up->watching & EV_WRITE))
        consider(&best, &kind, x->up_write_at + MS(u->send_timeout_ms), DL_UP_SEND);
    bool waiting_upstream = x->up != NULL && !x->resp_body_done && !out_pending;
    if (waiting_upstream && (!x->stream || !x->resp_head_done)) {
        ev_tstamp last = x->up_read_at > x->up_write_at ? x->up_read_at : x->up_write_at;
        int64_t rt = req->route != NULL && req->route->read_timeout_ms > 0
                         ? req->route->read_timeout_ms
                         : u->read_timeout_ms;
        consider(&best, &kind, last + MS(rt), DL_UP_READ);
    }
    if (x->sse && x->resp_head_done && cfg->stream.heartbeat_ms > 0 && !out_pending)
        consider(&best, &kind, req->client_write_at + MS(cfg->stream.heartbeat_ms), DL_HEARTBEAT);
    if (x->sse_draining && req->drain_by != 0)
        consider(&best, &kind, req->drain_by, DL_MOVED);
    if (x->stream && x->resp_head_done && cfg->stream.idle_timeout_ms > 0) {
        ev_tstamp last =
            x->up_read_at > req->client_write_at ? x->up_read_at : req->client_write_at;
        consider(&best, &kind, last + MS(cfg->stream.idle_timeout_ms), DL_STREAM_IDLE);
    }
    *when = best;
    return kind;
}

static void arm(struct tg_exchange *x)
{
    ev_tstamp when;
    if (next_deadline(x, &when) == DL_NONE)
        when = now_of(x) + IDLE_RECHECK_S;
    tg_request_arm(x->req, when);
}

/* The body stopped coming, or comes too slowly: 408 when nothing of the
 * answer went out yet, else the stream is cut. */
static void body_too_slow(struct tg_exchange *x, const char *body, const char *why)
{
    x->req_body_done = true;
    if (!x->req->head_sent)
        answer_locally(x, 408, NULL, body, true);
    else
        reset_client(x, why);
}

static ev_tstamp on_timeout(struct tg_request *req, ev_tstamp now)
{
    struct tg_exchange *x = req->x;
    ev_tstamp when;
    enum deadline_kind kind = next_deadline(x, &when);
    if (kind == DL_NONE)
        return now + IDLE_RECHECK_S;
    if (when > now)
        return when;
    const struct tg_config *cfg = cfg_of(x);
    switch (kind) {
    case DL_CONNECT:
        TG_METRIC_INC(upstream_stats(x)->connect_errors);
        TG_METRIC_INC(upstream_stats(x)->timeouts);
        attempt_failed(x, "did not accept the connection in time", false);
        break;
    case DL_UP_SEND:
        attempt_failed(x, "did not take the request in time", true);
        break;
    case DL_QUEUE: {
        upwait_unlink(x);
        TG_METRIC_INC(upstream_stats(x)->queue_timeouts);
        char subject[TG_FAULTLOG_SUBJECT_MAX];
        tg_faultlog_note(TG_LOG_INFO, upstream_subject(x, subject, sizeof(subject)),
                         "requests found every server busy",
                         "request %s: every server at max_connections for connect_timeout "
                         "(answered 503)",
                         req->request_id);
        answer_locally(x, 503, "Retry-After: 1\r\n",
                       "503 Service Unavailable: every backend server is busy\n", false);
        break;
    }
    case DL_UP_READ:
        TG_METRIC_INC(upstream_stats(x)->timeouts);
        if (x->resp_head_done)
            upstream_broke(x, "stopped sending mid-response (read_timeout)");
        else
            fail_upstream(x, 504, "did not answer within read_timeout");
        break;
    case DL_CLIENT_BODY:
        body_too_slow(x, "408 Request Timeout: the request body stopped arriving\n",
                      "client stopped sending the request body");
        break;
    case DL_CLIENT_SEND:
        reset_client(x, "client stopped reading (send_timeout)");
        break;
    case DL_CLIENT_RATE: {
        x->rate_checked_at = now;
        bool held_back = x->up != NULL && (x->up->watching & EV_WRITE);
        double avg = (double)x->req_body_bytes / (now - req->start);
        if (!held_back && avg < (double)cfg->client.min_body_rate)
            body_too_slow(x, "408 Request Timeout: the request body arrives too slowly\n",
                          "request body below client.min_body_rate");
        break;
    }
    case DL_HEARTBEAT:
        if (!sse_heartbeat(x))
            req->client_write_at = now; /* mid-event: look again later */
        break;
    case DL_STREAM_IDLE:
        reset_client(x, NULL);
        break;
    case DL_WS_CLOSE:
        ws_end(x, now);
        break;
    case DL_MOVED:
        reset_client(x, "its tenant moved and the stream did not end within tenants.move_grace");
        break;
    default:
        break;
    }
    if (tg_request_over(req))
        return 0;
    update_watches(x);
    ev_tstamp w2;
    if (next_deadline(x, &w2) == DL_NONE)
        return now + IDLE_RECHECK_S;
    return w2 > now ? w2 : now + 0.001;
}

static const struct tg_request_hooks forward_hooks = {
    .on_body = on_body,
    .on_writable = on_writable,
    .on_timeout = on_timeout,
    .on_abort = on_abort,
    .on_drain = on_drain,
};

/* ---- start ----------------------------------------------------------------------- */

int tg_forward_prepare(struct tg_request *req)
{
    struct tg_exchange *x = tg_arena_calloc(&req->arena, 1, sizeof(*x));
    if (x == NULL)
        return -1;
    x->req = req;
    req->x = x;
    const struct tg_config *cfg = req->wcfg->config;
    size_t fields = 0;
    for (size_t i = 0; i < req->headers.n; i++)
        fields += req->headers.v[i].name.n + req->headers.v[i].value.n + 4;
    const struct tg_config_headers *rules =
        req->route->headers != NULL ? req->route->headers : &cfg->headers;
    struct tg_headers_upstream in = {
        .method = tg_str_make(req->method, strlen(req->method)),
        .path = tg_str_make(req->path, req->path_len),
        .host = tg_str_make(req->host, req->host_len),
        .fields = &req->headers,
        .rules = rules,
        .body_length = req->body_length,
        .upgrade = req->upgrade_websocket,
        .tls = req->https,
        .peer = &req->peer,
        .client = &req->client,
        .chain = req->chain,
        .request_id = tg_str_make(req->request_id, req->request_id_len),
        .traceparent = tg_str_make(req->trace.parent_out, strlen(req->trace.parent_out)),
        .tracestate = tg_str_make(req->trace.state, req->trace.state_len),
        .subject_header = req->listener->client_subject_header,
        .subject = req->client_subject,
        .geo_header = cfg->geoip_header,
        .tenant_header = req->site->tenant_header,
        .tenant = req->tenant,
        .country = req->country,
    };
    /* The head is rebuilt once, into the request's arena: room for the
     * client's fields, the path and what we usually add; a head that needs
     * more (long rules, a client certificate subject) is built again in a
     * larger buffer. */
    size_t cap = fields + req->path_len + req->host_len * 2 + UP_HEAD_SLACK;
    struct tg_buf *b;
    for (;;) {
        b = tg_arena_alloc(&req->arena, sizeof(*b) + cap);
        if (b == NULL)
            return -1;
        b->start = b->end = 0;
        b->cap = cap;
        b->next = NULL;
        if (tg_headers_upstream_request(b, &in) == 0)
            break;
        if (cap > UP_HEAD_MAX)
            return -1;
        cap = 2 * cap + UP_HEAD_SLACK;
    }
    x->up_head = b;
    return 0;
}

void tg_forward_start(struct tg_request *req)
{
    struct tg_exchange *x = req->x;
    tg_request_ref(req);
    req->phase = TG_REQ_FORWARDING;
    tg_request_set_hooks(req, &forward_hooks);
    x->server = -1;
    x->chunked_up = req->body_length < 0;
    x->set = tg_upstream_servers(req->ctx, req->upstream, &x->servers, &x->nservers);
    connect_upstream(x);
    if (!tg_request_over(req)) {
        update_watches(x);
        arm(x);
    }
    tg_request_unref(req);
}
