/* From accept to the first request byte (accept.h). */
#include "accept.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acme_challenge.h"
#include "buf.h"
#include "config.h"
#include "conn.h"
#include "context.h"
#include "h1.h"
#include "h2.h"
#include "headers.h"
#include "iptable.h"
#include "faultlog.h"
#include "log.h"
#include "metrics.h"
#include "proxy_protocol.h"
#include "router.h"
#include "tls.h"

/* PROXY protocol refusals are logged at most this often (an attacker may
 * connect in a loop); all are counted. */
#define REFUSAL_LOG_EVERY_S 10.0

/* What is read of a plain HTTP request sent to a TLS port, to find its
 * Host. */
#define PLAIN_HEAD_MAX 4096

/* The handshake's state, in the connection's protocol room. */
struct handshake {
    bool awaiting_proxy;      /* a PROXY protocol header comes first */
    bool sniffed;             /* the first byte was looked at: TLS */
    struct tg_list wait_link; /* in ctx->cert_waiters while the handshake
                                 waits for a certificate */
};

static struct handshake *hs_of(struct tg_conn *c)
{
    return (struct handshake *)c->proto_state;
}

static const struct tg_config *config_of(const struct tg_conn *c)
{
    return c->wcfg->config;
}

static int start_session(struct tg_conn *c);

/* ---- the handshake protocol ------------------------------------------------------- */

/* The first bytes are the client's: hand the connection to the front end
 * its TLS session chose (ALPN), or HTTP/1.1 (an h2c listener's HTTP/1
 * front end hands a client preface on to HTTP/2). */
static void start_front_end(struct tg_conn *c)
{
    const unsigned char *proto = NULL;
    unsigned int n = 0;
    if (c->io.ssl != NULL)
        SSL_get0_alpn_selected(c->io.ssl, &proto, &n);
    if (n == 2 && memcmp(proto, "h2", 2) == 0)
        tg_h2_start(c);
    else
        tg_h1_start(c);
}

/* The Host a plain request names, without its port, if it is a valid
 * one; else the address the client connected to. Then the port it
 * connected to, unless 443. */
static void https_origin(struct tg_conn *c, const char *head, size_t n, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    unsigned port = 0;
    struct tg_addr local = {0};
    if (getsockname(c->io.fd, (struct sockaddr *)&ss, &sl) == 0) {
        tg_addr_from_sockaddr((struct sockaddr *)&ss, &local);
        port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                        : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    struct tg_str host = {NULL, 0};
    for (const char *p = head; p != NULL && p < head + n;) {
        const char *eol = memchr(p, '\n', (size_t)(head + n - p));
        if (eol == NULL)
            break;
        const char *line = eol + 1;
        if ((size_t)(head + n - line) > 5 && strncasecmp(line, "host:", 5) == 0) {
            const char *v = line + 5, *e = memchr(v, '\n', (size_t)(head + n - v));
            if (e == NULL)
                break;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            while (e > v && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
                e--;
            struct tg_str hp = tg_str_make(v, (size_t)(e - v)), h;
            if (tg_router_valid_host(hp) && tg_router_host_without_port(hp, &h))
                host = h;
            break;
        }
        p = line;
    }
    char addr[TG_ADDR_STRLEN];
    if (host.n == 0) {
        size_t an = tg_addr_format(&local, addr, sizeof(addr));
        bool v6 = memchr(addr, ':', an) != NULL;
        snprintf(out, cap, "%s%s%s", v6 ? "[" : "", addr, v6 ? "]" : "");
    } else {
        snprintf(out, cap, "%.*s", (int)host.n, host.p);
    }
    size_t used = strlen(out);
    if (port != 0 && port != 443)
        snprintf(out + used, cap - used, ":%u", port);
}

/* Plain HTTP on a TLS port (http:// typed for an https:// one): a TLS
 * record never starts with a letter, an HTTP method always does. Answered
 * as nginx does, with a 400 that says what to use instead, and closed;
 * the client's bytes are read first and afterwards lingered over, so it
 * gets the answer rather than a reset. */
static void answer_plain_http(struct tg_conn *c)
{
    char head[PLAIN_HEAD_MAX];
    ssize_t n = recv(c->io.fd, head, sizeof(head), 0);
    char origin[300];
    https_origin(c, head, n > 0 ? (size_t)n : 0, origin, sizeof(origin));
    char body[400], resp[800];
    int bn = snprintf(body, sizeof(body), "This port speaks HTTPS: use https://%s/\n", origin);
    struct tg_str date = tg_headers_date();
    int rn = snprintf(resp, sizeof(resp),
                      "HTTP/1.1 400 Bad Request\r\nDate: %.*s\r\n"
                      "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
                      "Connection: close\r\nX-Content-Type-Options: nosniff\r\n\r\n%s",
                      (int)date.n, date.p, bn, body);
    if (rn > 0 && (size_t)rn < sizeof(resp))
        (void)send(c->io.fd, resp, (size_t)rn, MSG_NOSIGNAL);
    tg_log_debug("plain HTTP on the TLS listener %s: answered 400", c->lcfg->key);
    TG_METRIC_INC(c->ctx->metrics->tls_failures[tg_metrics_tls_reason("protocol")]);
    tg_conn_close_gracefully(c, true);
}

/* Looks at the first byte without taking it. Returns 1 when the handshake
 * may go on (0x16, a ClientHello, or anything that is not a letter: the
 * handshake judges it), 0 when nothing came yet, -1 when it was plain HTTP
 * (answered; the connection is closing). */
static int sniff_first_byte(struct tg_conn *c)
{
    unsigned char first;
    ssize_t n = recv(c->io.fd, &first, 1, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    if (n == 1 && first >= 'A' && first <= 'Z') {
        answer_plain_http(c);
        return -1;
    }
    return 1; /* a hello, or an EOF or error the handshake reports */
}

static void tls_handshake(struct tg_conn *c)
{
    struct tg_context *ctx = c->ctx;
    bool want_write = false;
    const char *reason = NULL;
    struct handshake *hs = hs_of(c);
    if (tg_list_linked(&hs->wait_link))
        tg_list_remove(&hs->wait_link);
    if (!hs->sniffed) {
        int s = sniff_first_byte(c);
        if (s == 0) {
            tg_conn_watch(c, EV_READ);
            return;
        }
        if (s < 0)
            return;
        hs->sniffed = true;
    }
    int rc = tg_tls_handshake(c->io.ssl, &want_write, &reason);
    if (rc == 0) {
        tg_conn_watch(c, want_write ? EV_WRITE : EV_READ);
        return;
    }
    if (rc == 2) {
        /* A certificate is being obtained for its name: the connection
         * waits, quiet, until tg_accept_cert_ready (or its deadline). */
        tg_conn_watch(c, 0);
        tg_list_push_back(&ctx->cert_waiters, &hs->wait_link);
        const struct tg_config *cfg = config_of(c);
        tg_conn_set_deadline(c, tg_context_now(ctx) +
                                    (double)cfg->tls.acme.on_demand_timeout_ms / 1000.0);
        return;
    }
    if (rc < 0) {
        tg_log_debug("TLS handshake from a client failed: %s", reason);
        TG_METRIC_INC(ctx->metrics->tls_failures[tg_metrics_tls_reason(reason)]);
        tg_conn_close(c);
        return;
    }
    TG_METRIC_INC(ctx->metrics->tls_handshakes);
    if (SSL_session_reused(c->io.ssl))
        TG_METRIC_INC(ctx->metrics->tls_resumed);
    const unsigned char *proto = NULL;
    unsigned int plen = 0;
    SSL_get0_alpn_selected(c->io.ssl, &proto, &plen);
    if (plen == sizeof(TG_ACME_TLS_ALPN) - 1 && memcmp(proto, TG_ACME_TLS_ALPN, plen) == 0) {
        /* RFC 8737: the CA saw the challenge certificate; nothing else is
         * said on this connection. */
        tg_conn_close(c);
        return;
    }
    start_front_end(c);
}

/* Reads the PROXY header without taking a byte that follows it (the TLS
 * hello or the request): peek, and consume only what is header. */
static void read_proxy_header(struct tg_conn *c)
{
    struct tg_context *ctx = c->ctx;
    if (c->in == NULL && (c->in = tg_buf_get(&ctx->bufs, TG_PROXY_PROTOCOL_MAX)) == NULL) {
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
        tg_faultlog_note(TG_LOG_INFO, "PROXY protocol", "connections refused",
                         "refused a connection on %s: bad header (%s)", c->lcfg->key, reason);
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
    tg_buf_put(&ctx->bufs, c->in);
    c->in = NULL;
    hs_of(c)->awaiting_proxy = false;
    if (!pp.local) {
        c->peer = pp.src;
        c->peer_port = pp.src_port;
    }
    /* Behind PROXY protocol the client is counted once its header names
     * it. */
    unsigned limit = c->lcfg->max_connections_per_ip;
    if (limit != 0) {
        unsigned prefix = config_of(c)->client.ipv6_prefix;
        struct tg_addr group;
        tg_iptable_group(&c->peer, prefix, &group);
        if (!tg_iptable_acquire(ctx->rt->iptable, &group, TG_IPTABLE_CONNECTIONS, limit)) {
            tg_conn_close(c);
            return;
        }
        c->ip_counted_prefix = (uint8_t)prefix;
    }
    start_session(c);
}

static void handshake_io(struct tg_conn *c, int revents)
{
    (void)revents;
    if (hs_of(c)->awaiting_proxy)
        read_proxy_header(c);
    else
        tls_handshake(c);
}

static void handshake_timeout(struct tg_conn *c, ev_tstamp now)
{
    (void)now;
    struct handshake *hs = hs_of(c);
    if (tg_list_linked(&hs->wait_link))
        tg_list_remove(&hs->wait_link);
    if (c->io.ssl != NULL)
        TG_METRIC_INC(c->ctx->metrics->tls_failures[tg_metrics_tls_reason("timeout")]);
    tg_conn_close(c);
}

static void handshake_drain(struct tg_conn *c)
{
    (void)c; /* a session not yet started closes after its first answer */
}

static void handshake_close(struct tg_conn *c)
{
    struct handshake *hs = hs_of(c);
    if (tg_list_linked(&hs->wait_link))
        tg_list_remove(&hs->wait_link);
}

static const struct tg_conn_proto handshake_proto = {
    .name = "handshake",
    .on_io = handshake_io,
    .on_timeout = handshake_timeout,
    .on_close = handshake_close,
    .on_drain = handshake_drain,
};

void tg_accept_cert_ready(struct tg_context *ctx)
{
    /* Every waiting handshake tries again: those whose name is still
     * being ordered wait again. */
    struct tg_list ready;
    tg_list_init(&ready);
    struct tg_list *n;
    while ((n = tg_list_first(&ctx->cert_waiters)) != NULL) {
        tg_list_remove(n);
        tg_list_push_back(&ready, n);
    }
    while ((n = tg_list_first(&ready)) != NULL) {
        tg_list_remove(n);
        struct handshake *hs = tg_list_entry(n, struct handshake, wait_link);
        struct tg_conn *c =
            (struct tg_conn *)(void *)((char *)hs - offsetof(struct tg_conn, proto_state));
        tg_conn_ref(c);
        tls_handshake(c);
        tg_conn_unref(c);
    }
}

/* ---- accept ------------------------------------------------------------------------ */

/* After accept (and the PROXY header, if any): the TLS handshake, or
 * straight to the front end. */
static int start_session(struct tg_conn *c)
{
    const struct tg_config_listen *lcfg = c->lcfg;
    if (!lcfg->tls) {
        start_front_end(c);
        return 0;
    }
    c->io.ssl = tg_tls_server_accept(config_of(c)->tls_server, lcfg, c->io.fd);
    if (c->io.ssl == NULL) {
        tg_log_error("cannot start TLS on a connection to %s", lcfg->key);
        tg_conn_close(c);
        return -1;
    }
    c->tls = true;
    tg_conn_set_proto(c, &handshake_proto);
    tg_conn_set_deadline(c, tg_context_now(c->ctx) +
                                (double)config_of(c)->tls.handshake_timeout_ms / 1000.0);
    /* Most clients send their hello right after connecting: try now rather
     * than wait for the loop. */
    tg_conn_ref(c);
    tls_handshake(c);
    tg_conn_unref(c);
    return 0;
}

/* Counts a connection refused on a PROXY protocol listener; says so in the
 * log at most every REFUSAL_LOG_EVERY_S. */
static void refuse_untrusted_proxy(struct tg_context *ctx, const struct tg_config_listen *lcfg,
                                   const struct tg_addr *peer)
{
    TG_METRIC_INC(ctx->metrics->proxy_protocol_refused);
    ev_tstamp now = tg_context_now(ctx);
    if (ctx->proxy_refused_logged != 0 && now - ctx->proxy_refused_logged < REFUSAL_LOG_EVERY_S)
        return;
    ctx->proxy_refused_logged = now;
    char text[TG_ADDR_STRLEN];
    tg_addr_format(peer, text, sizeof(text));
    tg_log_warn("refused a connection on %s from %s: PROXY protocol is only accepted from "
                "trusted_proxies (further refusals are counted in "
                "tollgate_proxy_protocol_refused_total)",
                lcfg->key, text);
}

int tg_accept(struct tg_context *ctx, int fd, const struct sockaddr *peer,
              const struct tg_config_listen *lcfg)
{
    if (lcfg == NULL || ctx->cfg == NULL) {
        close(fd);
        return -1;
    }
    struct tg_addr peer_addr, group;
    tg_addr_from_sockaddr(peer, &peer_addr);
    const struct tg_config *cfg = ctx->cfg->config;
    unsigned prefix = cfg->client.ipv6_prefix;
    if (lcfg->proxy_protocol && (cfg->trusted_proxies == NULL ||
                                 tg_cidr_set_lookup(cfg->trusted_proxies, &peer_addr) == 0)) {
        /* A PROXY header names the client: only a listed load balancer may
         * do that, or anyone could choose its own address. */
        refuse_untrusted_proxy(ctx, lcfg, &peer_addr);
        close(fd);
        return -1;
    }
    bool count_now = lcfg->max_connections_per_ip != 0 && !lcfg->proxy_protocol;
    if (count_now) {
        tg_iptable_group(&peer_addr, prefix, &group);
        if (!tg_iptable_acquire(ctx->rt->iptable, &group, TG_IPTABLE_CONNECTIONS,
                                lcfg->max_connections_per_ip)) {
            /* Over the per-client cap: refuse before spending anything. */
            close(fd);
            return -1;
        }
    }
    uint16_t port = 0;
    if (peer->sa_family == AF_INET)
        port = ntohs(((const struct sockaddr_in *)peer)->sin_port);
    else if (peer->sa_family == AF_INET6)
        port = ntohs(((const struct sockaddr_in6 *)peer)->sin6_port);
    struct tg_conn *c = tg_conn_new(ctx, fd, &peer_addr, port, lcfg);
    if (c == NULL) {
        if (count_now)
            tg_iptable_release(ctx->rt->iptable, &group, TG_IPTABLE_CONNECTIONS);
        close(fd);
        return -1;
    }
    c->ip_counted_prefix = count_now ? (uint8_t)prefix : 0;
    if (lcfg->proxy_protocol) {
        hs_of(c)->awaiting_proxy = true;
        tg_conn_set_proto(c, &handshake_proto);
        tg_conn_set_deadline(c,
                             tg_context_now(ctx) + (double)cfg->client.header_timeout_ms / 1000.0);
        tg_conn_watch(c, EV_READ);
        return 0;
    }
    return start_session(c);
}
