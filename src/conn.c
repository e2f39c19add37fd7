/* Client connections: reading and parsing request heads, keep-alive,
 * pipelining, timeouts and closing. What happens to a request once its head
 * is parsed belongs to proxy.c.
 *
 * Timeouts: each connection has one ev_timer and a `deadline`. Progress only
 * moves the deadline (a store, no timer call); when the timer fires early it
 * re-arms itself for the deadline. */
#include "conn.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "http1.h"
#include "iptable.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "proxy_protocol.h"
#include "tls.h"
#include "worker.h"

#define LINGER_S 5.0
#define LINGER_BYTES (256 * 1024)

static void on_client_io(struct ev_loop *loop, ev_io *io, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *t, int revents);
static void process_input(struct tg_conn *c);
static void handshake(struct tg_conn *c);
static int start_session(struct tg_conn *c);

static const struct tg_config *conn_config(const struct tg_conn *c)
{
    return c->wcfg->config;
}

/* ---- lifetime ------------------------------------------------------------ */

void tg_conn_ref(struct tg_conn *c)
{
    c->refs++;
}

void tg_conn_unref(struct tg_conn *c)
{
    if (--c->refs == 0)
        free(c);
}

static void release_input(struct tg_conn *c)
{
    if (c->in != NULL && tg_buf_len(c->in) == 0) {
        tg_buf_put(&c->w->bufs, c->in);
        c->in = NULL;
    }
}

void tg_conn_close(struct tg_conn *c)
{
    if (c->state == TG_CONN_CLOSED)
        return;
    struct tg_worker *w = c->w;
    c->state = TG_CONN_CLOSED;
    if (c->req != NULL) {
        struct tg_request *req = c->req;
        c->req = NULL;
        tg_proxy_abort(req);
    }
    tg_worker_io_stop(w->loop, &c->watcher);
    ev_timer_stop(w->loop, &c->timer);
    tg_io_close(&c->io);
    if (c->in != NULL) {
        tg_buf_put(&w->bufs, c->in);
        c->in = NULL;
    }
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    w->nconns--;
    if (c->admin)
        w->nadmin_conns--;
    atomic_fetch_sub(&w->rt->nconns, 1);
    TG_METRIC_ADD(w->metrics->listeners[c->listener_metric].active, -1);
    if (c->ip_counted_prefix != 0) {
        struct tg_addr group;
        tg_iptable_group(&c->peer, c->ip_counted_prefix, &group);
        tg_iptable_release(w->rt->iptable, &group, TG_IPTABLE_CONNECTIONS);
    }
    tg_worker_cfg_release(c->wcfg);
    c->wcfg = NULL;
    tg_worker_conn_closed(w);
    tg_conn_unref(c);
}

/* Closes after the answer: with unread input still arriving, shut our side
 * and read (discarding) for a while, so the client sees the answer rather
 * than a reset. */
static void close_gracefully(struct tg_conn *c, bool input_pending)
{
    if (!input_pending) {
        tg_conn_close(c);
        return;
    }
    /* TLS first says goodbye in TLS (close_notify), so the client can tell a
     * complete answer from a cut connection. */
    if (c->io.ssl != NULL)
        tg_tls_shutdown(c->io.ssl);
    shutdown(c->io.fd, SHUT_WR);
    c->state = TG_CONN_LINGERING;
    if (c->in != NULL)
        c->in->start = c->in->end = 0;
    tg_conn_watch(c, EV_READ);
    tg_conn_set_deadline(c, ev_now(c->w->loop) + LINGER_S);
}

/* ---- watcher and timer ---------------------------------------------------- */

void tg_conn_watch(struct tg_conn *c, int events)
{
    if (c->state != TG_CONN_CLOSED)
        tg_io_watch(&c->io, c->w->loop, &c->watcher, &c->watching, events);
}

void tg_conn_set_deadline(struct tg_conn *c, ev_tstamp when)
{
    c->deadline = when;
    if (c->state == TG_CONN_CLOSED)
        return;
    if (ev_is_active(&c->timer) && when >= c->timer_at)
        return;
    struct ev_loop *loop = c->w->loop;
    ev_timer_stop(loop, &c->timer);
    double after = when - ev_now(loop);
    c->timer_at = when;
    ev_timer_set(&c->timer, after > 0 ? after : 0., 0.);
    ev_timer_start(loop, &c->timer);
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct tg_conn *c = t->data;
    ev_tstamp now = ev_now(loop);
    if (now < c->deadline) {
        tg_conn_set_deadline(c, c->deadline);
        return;
    }
    tg_conn_ref(c);
    switch (c->state) {
    case TG_CONN_READING_HEAD:
        if (c->req != NULL) {
            tg_log_debug("client %u: request head timed out", c->io.fd);
            tg_proxy_fail(c->req, 408, "request head timed out");
        } else {
            tg_conn_close(c);
        }
        break;
    case TG_CONN_ACTIVE: {
        ev_tstamp next = tg_proxy_on_timeout(c->req, now);
        if (next > now && c->state == TG_CONN_ACTIVE)
            tg_conn_set_deadline(c, next);
        break;
    }
    case TG_CONN_HANDSHAKE:
        if (c->io.ssl != NULL)
            TG_METRIC_INC(c->w->metrics->tls_failures[tg_metrics_tls_reason("timeout")]);
        tg_conn_close(c);
        break;
    default:
        /* Idle keep-alive, lingering: just close. */
        tg_conn_close(c);
        break;
    }
    tg_conn_unref(c);
}

/* ---- accept ---------------------------------------------------------------- */

/* Counts a connection refused on a PROXY protocol listener and says so in
 * the log at most every 10 s (an attacker may connect in a loop). */
static void refuse_untrusted_proxy(struct tg_worker *w, const struct tg_config_listen *lcfg,
                                   const struct tg_addr *peer)
{
    TG_METRIC_INC(w->metrics->proxy_protocol_refused);
    ev_tstamp now = ev_now(w->loop);
    if (w->proxy_refused_logged != 0 && now - w->proxy_refused_logged < 10.0)
        return;
    w->proxy_refused_logged = now;
    char text[TG_ADDR_STRLEN];
    tg_addr_format(peer, text, sizeof(text));
    tg_log_warn("refused a connection on %s from %s: PROXY protocol is only accepted from "
                "trusted_proxies (further refusals are counted in "
                "tollgate_proxy_protocol_refused_total)", lcfg->key, text);
}

int tg_conn_accept(struct tg_worker *w, int fd, const struct sockaddr *peer,
                   const struct tg_config_listen *lcfg)
{
    if (lcfg == NULL || w->cfg == NULL) {
        close(fd);
        return -1;
    }
    struct tg_addr peer_addr, group;
    tg_addr_from_sockaddr(peer, &peer_addr);
    const struct tg_config *cfg = w->cfg->config;
    unsigned prefix = cfg->client.ipv6_prefix;
    if (lcfg->proxy_protocol && (cfg->trusted_proxies == NULL ||
                                 tg_cidr_set_lookup(cfg->trusted_proxies, &peer_addr) == 0)) {
        /* A PROXY header names the client: only a listed load balancer
         * may do that, or anyone could choose its own address. */
        refuse_untrusted_proxy(w, lcfg, &peer_addr);
        close(fd);
        return -1;
    }
    /* Behind PROXY protocol the socket peer is the balancer: the client is
     * counted once its header names it. */
    bool count_now = lcfg->max_connections_per_ip != 0 && !lcfg->proxy_protocol;
    if (count_now) {
        tg_iptable_group(&peer_addr, prefix, &group);
        if (!tg_iptable_acquire(w->rt->iptable, &group, TG_IPTABLE_CONNECTIONS,
                                lcfg->max_connections_per_ip)) {
            /* Over the per-client cap: refuse before spending anything. */
            close(fd);
            return -1;
        }
    }
    struct tg_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        if (count_now)
            tg_iptable_release(w->rt->iptable, &group, TG_IPTABLE_CONNECTIONS);
        close(fd);
        return -1;
    }
    c->w = w;
    c->io.fd = fd;
    c->refs = 1;
    c->wcfg = tg_worker_cfg_acquire(w);
    c->lcfg = lcfg;
    c->peer = peer_addr;
    c->ip_counted_prefix = count_now ? (uint8_t)prefix : 0;
    atomic_fetch_add(&w->rt->nconns, 1);
    c->listener_metric = (uint16_t)lcfg->metrics_id;
    TG_METRIC_INC(w->metrics->listeners[c->listener_metric].accepted);
    TG_METRIC_INC(w->metrics->listeners[c->listener_metric].active);
    if (peer->sa_family == AF_INET)
        c->peer_port = ntohs(((const struct sockaddr_in *)peer)->sin_port);
    else if (peer->sa_family == AF_INET6)
        c->peer_port = ntohs(((const struct sockaddr_in6 *)peer)->sin6_port);
    c->next = w->conns;
    if (w->conns != NULL)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    c->admin = lcfg->admin;
    if (c->admin)
        w->nadmin_conns++;

    ev_io_init(&c->watcher, on_client_io, fd, EV_READ);
    c->watcher.data = c;
    ev_init(&c->timer, on_timer);
    c->timer.data = c;
    ev_tstamp now = ev_now(w->loop);
    c->head_started = now;
    if (lcfg->proxy_protocol) {
        c->awaiting_proxy = true;
        c->state = TG_CONN_HANDSHAKE;
        tg_conn_set_deadline(c, now + (double)conn_config(c)->client.header_timeout_ms / 1000.0);
        tg_conn_watch(c, EV_READ);
        return 0;
    }
    return start_session(c);
}

/* After accept (and the PROXY header, if any): TLS handshake or straight to
 * reading requests. */
static int start_session(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    const struct tg_config_listen *lcfg = c->lcfg;
    int fd = c->io.fd;
    ev_tstamp now = ev_now(w->loop);
    c->head_started = now;
    if (lcfg->tls) {
        c->io.ssl = tg_tls_server_accept(conn_config(c)->tls_server, lcfg, fd);
        if (c->io.ssl == NULL) {
            tg_log_error("cannot start TLS on a connection to %s", lcfg->key);
            c->state = TG_CONN_HANDSHAKE;
            tg_conn_close(c);
            return -1;
        }
        c->tls = true;
        c->state = TG_CONN_HANDSHAKE;
        tg_conn_set_deadline(c, now + (double)conn_config(c)->tls.handshake_timeout_ms / 1000.0);
        /* Most clients send their hello right after connecting: try now
         * rather than wait for the loop. */
        tg_conn_ref(c);
        handshake(c);
        tg_conn_unref(c);
        return 0;
    }
    c->state = TG_CONN_IDLE;
    /* The first request's head is timed from accept, so a client that
     * connects and says nothing is dropped after header_timeout. */
    tg_conn_set_deadline(c, now + (double)conn_config(c)->client.header_timeout_ms / 1000.0);
    tg_conn_watch(c, EV_READ);
    return 0;
}

/* ---- PROXY protocol ---------------------------------------------------------- */

/* Reads the PROXY header without taking a byte that follows it (the TLS
 * hello or the request): peek, and consume only what is header. */
static void read_proxy_header(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    if (c->in == NULL && (c->in = tg_buf_get(&w->bufs, TG_PROXY_PROTOCOL_MAX)) == NULL) {
        tg_conn_close(c);
        return;
    }
    size_t have = tg_buf_len(c->in);
    size_t room = TG_PROXY_PROTOCOL_MAX - have;
    if (room > tg_buf_room(c->in))
        room = tg_buf_room(c->in);
    ssize_t n = recv(c->io.fd, c->in->data + c->in->end, room, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        tg_conn_close(c);
        return;
    }
    struct tg_proxy_protocol pp;
    const char *reason = "malformed";
    ssize_t r = tg_proxy_protocol_parse(c->in->data + c->in->start, have + (size_t)n, &pp, &reason);
    size_t take = r > 0 ? (size_t)r - have : (size_t)n;
    if (r == TG_PROXY_PROTOCOL_ERROR) {
        tg_log_info("refused a connection on %s: bad PROXY protocol header (%s)", c->lcfg->key,
                    reason);
        tg_conn_close(c);
        return;
    }
    char sink[TG_PROXY_PROTOCOL_MAX];
    if (recv(c->io.fd, sink, take, 0) != (ssize_t)take) {
        tg_conn_close(c);
        return;
    }
    c->in->end += take;
    if (r == TG_PROXY_PROTOCOL_INCOMPLETE) {
        if (tg_buf_len(c->in) >= TG_PROXY_PROTOCOL_MAX)
            tg_conn_close(c);
        return;
    }
    tg_buf_put(&w->bufs, c->in);
    c->in = NULL;
    c->awaiting_proxy = false;
    if (!pp.local) {
        c->peer = pp.src;
        c->peer_port = pp.src_port;
    }
    unsigned limit = c->lcfg->max_connections_per_ip;
    if (limit != 0) {
        unsigned prefix = conn_config(c)->client.ipv6_prefix;
        struct tg_addr group;
        tg_iptable_group(&c->peer, prefix, &group);
        if (!tg_iptable_acquire(w->rt->iptable, &group, TG_IPTABLE_CONNECTIONS, limit)) {
            tg_conn_close(c);
            return;
        }
        c->ip_counted_prefix = (uint8_t)prefix;
    }
    start_session(c);
}

/* ---- TLS ------------------------------------------------------------------------ */

static void read_heads(struct tg_conn *c);

static void handshake(struct tg_conn *c)
{
    bool want_write = false;
    const char *reason = NULL;
    int rc = tg_tls_handshake(c->io.ssl, &want_write, &reason);
    if (rc == 0) {
        tg_conn_watch(c, want_write ? EV_WRITE : EV_READ);
        return;
    }
    if (rc < 0) {
        tg_log_debug("TLS handshake from a client failed: %s", reason);
        TG_METRIC_INC(c->w->metrics->tls_failures[tg_metrics_tls_reason(reason)]);
        tg_conn_close(c);
        return;
    }
    TG_METRIC_INC(c->w->metrics->tls_handshakes);
    if (SSL_session_reused(c->io.ssl))
        TG_METRIC_INC(c->w->metrics->tls_resumed);
    c->state = TG_CONN_IDLE;
    ev_tstamp now = ev_now(c->w->loop);
    c->head_started = now;
    tg_conn_set_deadline(c, now + (double)conn_config(c)->client.header_timeout_ms / 1000.0);
    tg_conn_watch(c, EV_READ);
    /* The request may have come with the last handshake flight. */
    read_heads(c);
}

/* ---- reading heads ---------------------------------------------------------- */

/* A new snapshot may have arrived since the last request on this
 * connection: use it for the next one. A listener that the new snapshot
 * dropped serves no more requests on its old connections. */
static void refresh_config(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    if (c->wcfg == w->cfg)
        return;
    const struct tg_config *nc = w->cfg->config;
    const struct tg_config_listen *nl = NULL;
    for (size_t i = 0; i < nc->nlisteners; i++)
        if (strcmp(nc->listeners[i].key, c->lcfg->key) == 0)
            nl = &nc->listeners[i];
    if (nl == NULL) {
        c->close_after = true;
        return;
    }
    tg_worker_cfg_release(c->wcfg);
    c->wcfg = tg_worker_cfg_acquire(w);
    c->lcfg = nl;
}

static void start_head(struct tg_conn *c)
{
    c->state = TG_CONN_READING_HEAD;
    c->scanned = 0;
    if (c->requests > 0) {
        /* Later requests are timed from their first byte. */
        c->head_started = ev_now(c->w->loop);
        tg_conn_set_deadline(c, c->head_started +
                                    (double)conn_config(c)->client.header_timeout_ms / 1000.0);
    }
}

static void process_input(struct tg_conn *c)
{
    if (c->in_process)
        return;
    c->in_process = true;
    tg_conn_ref(c);
    while ((c->state == TG_CONN_IDLE || c->state == TG_CONN_READING_HEAD) &&
           c->in != NULL && tg_buf_len(c->in) > 0) {
        if (c->state == TG_CONN_IDLE) {
            refresh_config(c);
            start_head(c);
        }
        if (c->req == NULL) {
            c->req = tg_proxy_request_new(c);
            if (c->req == NULL) {
                tg_log_error("out of memory for a request; closing connection");
                tg_conn_close(c);
                break;
            }
        }
        const struct tg_config_client *cc = &conn_config(c)->client;
        struct tg_http1_limits limits = {cc->max_request_line,
                                         cc->max_request_line + cc->max_head,
                                         cc->max_headers};
        int status = 400;
        const char *reason = "bad request";
        struct tg_request *req = c->req;
        ssize_t r = tg_http1_parse_request(c->in->data + c->in->start,
                                           tg_buf_len(c->in), &c->scanned,
                                           &limits, &req->head, &status, &reason);
        if (r == TG_HTTP1_INCOMPLETE)
            break;
        if (r == TG_HTTP1_ERROR) {
            tg_log_debug("client: %s (%d)", reason, status);
            tg_proxy_fail(req, status, reason);
            break;
        }
        c->state = TG_CONN_ACTIVE;
        c->requests++;
        tg_proxy_start(req);
        /* The request may already be over (a local answer): loop for
         * pipelined requests behind it. */
    }
    if (c->state == TG_CONN_IDLE)
        release_input(c);
    c->in_process = false;
    tg_conn_unref(c);
}

/* Reads into the input buffer. Returns bytes read, 0 at EOF, or TG_IO_*. */
static ssize_t read_some(struct tg_conn *c)
{
    struct tg_worker *w = c->w;
    if (c->in == NULL) {
        c->in = tg_buf_get(&w->bufs, w->bufs.small_size);
        if (c->in == NULL)
            return TG_IO_ERROR;
    }
    if (tg_buf_room(c->in) == 0) {
        tg_buf_compact(c->in);
        if (tg_buf_room(c->in) == 0) {
            /* A head bigger than a standard buffer: move to a large one.
             * The parser refuses heads over the limits long before the
             * large buffer could fill. */
            if (tg_buf_grow(&w->bufs, &c->in, w->bufs.large_size) < 0)
                return TG_IO_ERROR;
            if (tg_buf_room(c->in) == 0)
                return TG_IO_AGAIN;
        }
    }
    return tg_io_read(&c->io, c->in->data + c->in->end, tg_buf_room(c->in));
}

static void read_heads(struct tg_conn *c)
{
    for (;;) {
        ssize_t n = read_some(c);
        if (n > 0) {
            c->in->end += (size_t)n;
            process_input(c);
            if (c->state != TG_CONN_IDLE && c->state != TG_CONN_READING_HEAD)
                return;
            if (!tg_io_buffered(&c->io))
                return;
            continue;
        }
        if (n == TG_IO_AGAIN) {
            tg_conn_watch(c, c->io.want_write ? EV_WRITE : EV_READ);
            if (c->state == TG_CONN_IDLE)
                release_input(c);
            return;
        }
        /* EOF or error between or inside heads: nothing to answer. */
        tg_conn_close(c);
        return;
    }
}

static void linger(struct tg_conn *c)
{
    char scratch[4096];
    for (int i = 0; i < 16; i++) {
        ssize_t n = read(c->io.fd, scratch, sizeof(scratch));
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        break;
    }
    tg_conn_close(c);
}

static void on_client_io(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    struct tg_conn *c = io->data;
    if (tg_worker_defer_io(c->w, io, revents))
        return;
    tg_conn_ref(c);
    switch (c->state) {
    case TG_CONN_HANDSHAKE:
        if (c->awaiting_proxy)
            read_proxy_header(c);
        else
            handshake(c);
        break;
    case TG_CONN_IDLE:
    case TG_CONN_READING_HEAD:
        read_heads(c);
        break;
    case TG_CONN_ACTIVE:
        tg_proxy_on_client_io(c->req, revents);
        break;
    case TG_CONN_LINGERING:
        linger(c);
        break;
    default:
        break;
    }
    tg_conn_unref(c);
}

/* ---- end of a request -------------------------------------------------------- */

void tg_conn_request_done(struct tg_conn *c, bool keep_alive, bool unread)
{
    c->req = NULL;
    if (c->state == TG_CONN_CLOSED)
        return;
    if (!keep_alive || c->close_after || c->w->draining) {
        /* Linger only when the client may still be sending: bytes already
         * here, or a body not all read. Otherwise the slot frees now. */
        bool pending = c->in != NULL && tg_buf_len(c->in) > 0;
        close_gracefully(c, pending || unread);
        return;
    }
    c->state = TG_CONN_IDLE;
    c->scanned = 0;
    tg_conn_set_deadline(c, ev_now(c->w->loop) +
                                (double)conn_config(c)->client.keepalive_timeout_ms / 1000.0);
    tg_conn_watch(c, EV_READ);
    if (c->in != NULL && tg_buf_len(c->in) > 0) {
        /* Pipelined requests already buffered; when called from inside
         * process_input its loop picks them up. */
        if (!c->in_process)
            process_input(c);
    } else {
        release_input(c);
    }
}

void tg_conn_fail(struct tg_conn *c, int status, const char *reason)
{
    if (c->req == NULL)
        c->req = tg_proxy_request_new(c);
    if (c->req == NULL) {
        tg_conn_close(c);
        return;
    }
    tg_proxy_fail(c->req, status, reason);
}

void tg_conn_drain(struct tg_conn *c)
{
    c->close_after = true;
    switch (c->state) {
    case TG_CONN_IDLE:
        if (c->in == NULL || tg_buf_len(c->in) == 0)
            tg_conn_close(c);
        break;
    case TG_CONN_ACTIVE:
        tg_proxy_drain(c->req);
        break;
    default:
        break;
    }
}
