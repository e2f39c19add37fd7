/* Client connections, the transport part (conn.h). */
#include "conn.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "context.h"
#include "iptable.h"
#include "metrics.h"
#include "tls.h"

/* A closing connection reads and drops what the client still sends for at
 * most this long, and at most this much, before it closes for good. */
#define LINGER_S 5.0
#define LINGER_BYTES (256 * 1024)
#define LINGER_READ 4096

static void on_io(struct ev_loop *loop, ev_io *io, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *t, int revents);

/* ---- lifetime ---------------------------------------------------------------- */

struct tg_conn *tg_conn_new(struct tg_context *ctx, int fd, const struct tg_addr *peer,
                            uint16_t peer_port, const struct tg_config_listen *lcfg)
{
    struct tg_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->ctx = ctx;
    c->io.fd = fd;
    c->refs = 1;
    c->wcfg = tg_context_cfg_acquire(ctx);
    c->lcfg = lcfg;
    c->peer = *peer;
    c->peer_port = peer_port;
    c->admin = lcfg->admin;
    c->listener_metric = (uint16_t)lcfg->metrics_id;
    atomic_fetch_add(&ctx->rt->nconns, 1);
    TG_METRIC_INC(ctx->metrics->listeners[c->listener_metric].accepted);
    TG_METRIC_INC(ctx->metrics->listeners[c->listener_metric].active);
    tg_list_push_front(&ctx->conns, &c->link);
    ctx->nconns++;
    if (c->admin)
        ctx->nadmin_conns++;
    ev_io_init(&c->watcher, on_io, fd, EV_READ);
    c->watcher.data = c;
    ev_init(&c->timer, on_timer);
    c->timer.data = c;
    return c;
}

void tg_conn_ref(struct tg_conn *c)
{
    c->refs++;
}

void tg_conn_unref(struct tg_conn *c)
{
    if (--c->refs == 0)
        free(c);
}

void tg_conn_release_input(struct tg_conn *c)
{
    if (c->in != NULL && tg_buf_len(c->in) == 0) {
        tg_buf_put(&c->ctx->bufs, c->in);
        c->in = NULL;
    }
}

void tg_conn_close(struct tg_conn *c)
{
    if (c->state == TG_CONN_CLOSED)
        return;
    struct tg_context *ctx = c->ctx;
    c->state = TG_CONN_CLOSED;
    if (c->proto != NULL && c->proto->on_close != NULL)
        c->proto->on_close(c);
    tg_context_io_stop(ctx->loop, &c->watcher);
    ev_timer_stop(ctx->loop, &c->timer);
    tg_io_close(&c->io);
    if (c->in != NULL) {
        tg_buf_put(&ctx->bufs, c->in);
        c->in = NULL;
    }
    tg_list_remove(&c->link);
    ctx->nconns--;
    if (c->admin)
        ctx->nadmin_conns--;
    atomic_fetch_sub(&ctx->rt->nconns, 1);
    TG_METRIC_ADD(ctx->metrics->listeners[c->listener_metric].active, -1);
    if (c->ip_counted_prefix != 0) {
        struct tg_addr group;
        tg_iptable_group(&c->peer, c->ip_counted_prefix, &group);
        tg_iptable_release(ctx->rt->iptable, &group, TG_IPTABLE_CONNECTIONS);
    }
    tg_context_cfg_release(c->wcfg);
    c->wcfg = NULL;
    if (ctx->conn_closed != NULL)
        ctx->conn_closed(ctx);
    tg_conn_unref(c); /* the protocol's: callers hold their own */
}

/* ---- lingering close ------------------------------------------------------------ */

void tg_conn_close_gracefully(struct tg_conn *c, bool input_pending)
{
    if (c->state == TG_CONN_CLOSED)
        return;
    if (!input_pending) {
        tg_conn_close(c);
        return;
    }
    /* TLS first says goodbye in TLS (close_notify), so the client can tell
     * a complete answer from a cut connection. */
    if (c->io.ssl != NULL)
        tg_tls_shutdown(c->io.ssl);
    shutdown(c->io.fd, SHUT_WR);
    if (c->proto != NULL && c->proto->on_close != NULL)
        c->proto->on_close(c);
    c->proto = NULL;
    c->state = TG_CONN_LINGERING;
    if (c->in != NULL) {
        tg_buf_put(&c->ctx->bufs, c->in);
        c->in = NULL;
    }
    c->lingered = 0;
    tg_conn_watch(c, EV_READ);
    tg_conn_set_deadline(c, tg_context_now(c->ctx) + LINGER_S);
}

static void linger(struct tg_conn *c)
{
    char scratch[LINGER_READ];
    while (c->lingered < LINGER_BYTES) {
        ssize_t n = read(c->io.fd, scratch, sizeof(scratch));
        if (n > 0) {
            c->lingered += (uint32_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        break;
    }
    /* EOF, an error, or LINGER_BYTES dropped: enough. */
    tg_conn_close(c);
}

/* ---- watcher and timer ------------------------------------------------------------ */

void tg_conn_watch(struct tg_conn *c, int events)
{
    if (c->state != TG_CONN_CLOSED)
        tg_io_watch(&c->io, c->ctx->loop, &c->watcher, &c->watching, events);
}

void tg_conn_set_deadline(struct tg_conn *c, ev_tstamp when)
{
    c->deadline = when;
    if (c->state == TG_CONN_CLOSED)
        return;
    if (ev_is_active(&c->timer) && when >= c->timer_at)
        return;
    struct ev_loop *loop = c->ctx->loop;
    ev_timer_stop(loop, &c->timer);
    double after = when - tg_context_now(c->ctx);
    c->timer_at = when;
    ev_timer_set(&c->timer, after > 0 ? after : 0., 0.);
    ev_timer_start(loop, &c->timer);
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    struct tg_conn *c = t->data;
    ev_tstamp now = tg_context_now(c->ctx);
    if (now < c->deadline) {
        tg_conn_set_deadline(c, c->deadline);
        return;
    }
    tg_conn_ref(c);
    if (c->state == TG_CONN_OPEN && c->proto != NULL && c->proto->on_timeout != NULL)
        c->proto->on_timeout(c, now);
    else
        tg_conn_close(c);
    tg_conn_unref(c);
}

static void on_io(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    struct tg_conn *c = io->data;
    if (tg_context_defer_io(c->ctx, io, revents))
        return;
    tg_conn_ref(c);
    if (c->state == TG_CONN_LINGERING)
        linger(c);
    else if (c->state == TG_CONN_OPEN && c->proto != NULL)
        c->proto->on_io(c, revents);
    tg_conn_unref(c);
}

/* ---- input ------------------------------------------------------------------------- */

ssize_t tg_conn_read(struct tg_conn *c)
{
    struct tg_context *ctx = c->ctx;
    if (c->in == NULL) {
        c->in = tg_buf_get(&ctx->bufs, ctx->bufs.small_size);
        if (c->in == NULL)
            return TG_IO_ERROR;
    }
    if (tg_buf_room(c->in) == 0) {
        tg_buf_compact(c->in);
        if (tg_buf_room(c->in) == 0) {
            /* A head bigger than a standard buffer: move to a large one.
             * The parser refuses heads over the limits long before the
             * large buffer could fill. */
            if (c->in->cap < ctx->bufs.large_size &&
                tg_buf_grow(&ctx->bufs, &c->in, ctx->bufs.large_size) < 0)
                return TG_IO_ERROR;
            if (tg_buf_room(c->in) == 0)
                return TG_IO_AGAIN;
        }
    }
    ssize_t n = tg_io_read(&c->io, c->in->data + c->in->end, tg_buf_room(c->in));
    if (n > 0)
        c->in->end += (size_t)n;
    return n;
}

/* ---- configuration and drain ---------------------------------------------------- */

bool tg_conn_refresh_config(struct tg_conn *c)
{
    struct tg_context *ctx = c->ctx;
    if (c->wcfg == ctx->cfg)
        return true;
    const struct tg_config *nc = ctx->cfg->config;
    const struct tg_config_listen *nl = NULL;
    for (size_t i = 0; i < nc->nlisteners && nl == NULL; i++)
        if (strcmp(nc->listeners[i].key, c->lcfg->key) == 0)
            nl = &nc->listeners[i];
    if (nl == NULL)
        return false;
    tg_context_cfg_release(c->wcfg);
    c->wcfg = tg_context_cfg_acquire(ctx);
    c->lcfg = nl;
    return true;
}

void tg_conn_drain(struct tg_conn *c)
{
    c->draining = true;
    if (c->state == TG_CONN_OPEN && c->proto != NULL && c->proto->on_drain != NULL)
        c->proto->on_drain(c);
}
