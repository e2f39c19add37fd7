/* Worker threads: loop, mailbox, listeners and accept.
 *
 * The main thread opens listening sockets (so a bind failure can refuse a
 * reload before any worker changes) and posts them; the worker only watches
 * and accepts. Accept pauses instead of spinning when descriptors run out
 * (EMFILE) and resumes on a timer or when a connection closes. */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "access_log.h"
#include "accept.h"
#include "compress.h"
#include "conn.h"
#include "health.h"
#include "faultlog.h"
#include "log.h"
#include "metrics.h"
#include "tenant_metrics.h"
#include "tenant_moves.h"
#include "forward.h"
#include "request.h"
#include "ratelimit_redis.h"
#include "ratelimit_store.h"
#include "tenant.h"
#include "upstream.h"

#define ACCEPTS_PER_EVENT 64
#define ACCEPT_RETRY_S 0.1

static void listener_close(struct tg_worker *w, struct tg_listener *l);

/* ---- config snapshots ---------------------------------------------------- */

static struct tg_wcfg *wcfg_new(struct tg_worker *w, struct tg_config *config)
{
    struct tg_wcfg *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->rr_cursor = calloc(config->nupstreams ? config->nupstreams : 1, sizeof(*c->rr_cursor));
    if (c->rr_cursor == NULL) {
        free(c);
        return NULL;
    }
    /* Spread workers over servers so they do not all start at server 0. */
    for (size_t i = 0; i < config->nupstreams; i++)
        c->rr_cursor[i] = w->ctx.id;
    c->config = config;
    c->ctx = &w->ctx;
    c->refs = 1;
    return c;
}

static const struct tg_config_listen *find_listen_cfg(const struct tg_config *cfg, const char *key)
{
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (strcmp(cfg->listeners[i].key, key) == 0)
            return &cfg->listeners[i];
    return NULL;
}

/* ---- accept -------------------------------------------------------------- */

static void set_accepting(struct tg_worker *w, bool on)
{
    for (struct tg_listener *l = w->listeners; l != NULL; l = l->next) {
        if (on)
            ev_io_start(w->ctx.loop, &l->io);
        else
            ev_io_stop(w->ctx.loop, &l->io);
    }
}

static void pause_accept(struct tg_worker *w)
{
    if (w->accept_paused)
        return;
    w->accept_paused = true;
    set_accepting(w, false);
    ev_timer_set(&w->accept_retry, ACCEPT_RETRY_S, 0.);
    ev_timer_start(w->ctx.loop, &w->accept_retry);
}

static void resume_accept(struct tg_worker *w)
{
    if (!w->accept_paused || w->ctx.draining)
        return;
    w->accept_paused = false;
    ev_timer_stop(w->ctx.loop, &w->accept_retry);
    set_accepting(w, true);
}

static void on_accept_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    resume_accept(t->data);
}

/* A draining worker with nothing but admin connections left tells main;
 * main stops every worker once all have drained, so /readyz keeps
 * answering (503) until the whole process is done. */
static void check_drained(struct tg_worker *w)
{
    if (!w->ctx.draining || w->drained || w->ctx.nconns != w->ctx.nadmin_conns)
        return;
    w->drained = true;
    if (w->on_drained != NULL)
        w->on_drained();
    else
        ev_break(w->ctx.loop, EVBREAK_ALL);
}

/* A connection closed: accept may resume, a drain may be done. */
static void conn_closed(struct tg_context *ctx)
{
    struct tg_worker *w = (struct tg_worker *)ctx;
    if (w->accept_paused && !w->ctx.draining)
        resume_accept(w);
    check_drained(w);
}

/* Accepts until the queue is empty (or a fairness bound). Returns false if
 * it had to pause for want of descriptors. */
static bool accept_pending(struct tg_worker *w, struct tg_listener *l, int limit)
{
    unsigned max = w->ctx.cfg->config->client.max_connections;
    for (int i = 0; i < limit; i++) {
        if (max != 0 && atomic_load(&w->ctx.rt->nconns) >= max) {
            /* At the global cap: leave connections in the kernel backlog
             * and look again shortly, rather than accept and drop them. */
            pause_accept(w);
            return false;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            /* Repeats while it lasts: a line, then counts (faultlog.h). */
            char subject[TG_FAULTLOG_SUBJECT_MAX];
            snprintf(subject, sizeof(subject), "accept on %s", l->key);
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                tg_faultlog_note(TG_LOG_WARN, subject, "pauses", "%s; pausing accept",
                                 strerror(errno));
                pause_accept(w);
                return false;
            }
            tg_faultlog_note(TG_LOG_ERROR, subject, "errors", "%s", strerror(errno));
            return true;
        }
        tg_accept(&w->ctx, fd, (struct sockaddr *)&ss, l->cfg);
    }
    return true;
}

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop, (void)revents;
    struct tg_listener *l = io->data;
    accept_pending(l->w, l, ACCEPTS_PER_EVENT);
}

/* ---- listeners ----------------------------------------------------------- */

/* Why a probe: every worker has its own SO_REUSEPORT socket, and the kernel
 * lets any process of the same user join that group, so a bind with
 * SO_REUSEPORT succeeds while another tollgate (or anything listening with
 * SO_REUSEPORT) holds the address, and the two split the connections
 * between them. A socket bound WITHOUT SO_REUSEPORT conflicts with every
 * listening socket on the address (with or without SO_REUSEPORT, Linux
 * inet_csk_bind_conflict), so binding one first tells whether anyone
 * listens there. It has SO_REUSEADDR, so connections of an earlier run in
 * TIME_WAIT do not count; it never listens and is closed at once. (An eBPF
 * reuseport program or a lock file would not see a process that is not
 * tollgate.) A process that starts listening between the probe and our
 * bind is not caught: the window is a few system calls at start-up. */
int tg_worker_probe_listener(const struct tg_config_listen *l, char *err, size_t errlen)
{
    int family = l->addr.sa.ss_family;
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    int rc = bind(fd, (const struct sockaddr *)&l->addr.sa, l->addr.salen);
    int saved = errno;
    close(fd);
    if (rc == 0)
        return 0;
    if (saved == EADDRINUSE)
        snprintf(err, errlen,
                 "address already in use (another process listens there; "
                 "is another tollgate running?)");
    else
        snprintf(err, errlen, "bind %s: %s", l->key, strerror(saved));
    return -1;
}

int tg_worker_open_listener(const struct tg_config_listen *l, char *err, size_t errlen)
{
    int family = l->addr.sa.ss_family;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        snprintf(err, errlen, "SO_REUSEPORT: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&l->addr.sa, l->addr.salen) < 0) {
        snprintf(err, errlen, "bind %s: %s", l->key, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, l->backlog) < 0) {
        snprintf(err, errlen, "listen %s: %s", l->key, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void listener_add(struct tg_worker *w, int fd, char *key)
{
    struct tg_listener *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        tg_log_error("out of memory adding listener %s", key);
        close(fd);
        free(key);
        return;
    }
    l->w = w;
    l->fd = fd;
    l->key = key;
    l->cfg = find_listen_cfg(w->ctx.cfg->config, key);
    ev_io_init(&l->io, on_accept, fd, EV_READ);
    l->io.data = l;
    if (!w->accept_paused && !w->ctx.draining)
        ev_io_start(w->ctx.loop, &l->io);
    l->next = w->listeners;
    w->listeners = l;
}

/* Closing a SO_REUSEPORT socket resets the connections still in its accept
 * queue; take them first so a reload or drain loses none. */
static void listener_close(struct tg_worker *w, struct tg_listener *l)
{
    if (!w->ctx.stopping)
        accept_pending(w, l, 1 << 20);
    ev_io_stop(w->ctx.loop, &l->io);
    close(l->fd);
    free(l->key);
    free(l);
}

/* Closes the listeners `keep` does not list (all of them when keep is
 * NULL). During a drain the admin listener stays, so health checkers can
 * see /readyz turn 503. */
static void close_listeners(struct tg_worker *w, const struct tg_config *keep)
{
    struct tg_listener **pp = &w->listeners;
    while (*pp != NULL) {
        struct tg_listener *l = *pp;
        bool keep_admin =
            keep == NULL && w->ctx.draining && !w->ctx.stopping && l->cfg != NULL && l->cfg->admin;
        if (keep_admin || (keep != NULL && find_listen_cfg(keep, l->key) != NULL)) {
            pp = &l->next;
            continue;
        }
        *pp = l->next;
        if (keep != NULL)
            tg_log_info("stopped listening on %s", l->key);
        listener_close(w, l);
    }
}

/* ---- mailbox -------------------------------------------------------------- */

/* The worker's Redis connection for shared limits: made when a policy
 * first needs it, reconfigured on reload, kept (idle) when none does. */
static void configure_redis(struct tg_worker *w, const struct tg_config *cfg)
{
    bool needed = false;
    for (size_t i = 0; i < cfg->rate_limit.npolicies; i++)
        needed |= cfg->rate_limit.policies[i].store == TG_RL_STORE_REDIS;
    if (!needed)
        return;
    if (w->ctx.rl_redis == NULL) {
        w->ctx.rl_redis = tg_ratelimit_redis_new(w->ctx.loop, &cfg->rate_limit.redis,
                                                 w->ctx.rt->gateway_id, w->ctx.id == 0);
        if (w->ctx.rl_redis == NULL)
            tg_log_error("out of memory creating the Redis rate-limit client");
    } else {
        tg_ratelimit_redis_configure(w->ctx.rl_redis, &cfg->rate_limit.redis);
    }
    tg_ratelimit_store_redis(&w->ctx.limiter.stores[TG_RL_STORE_REDIS], w->ctx.rl_redis);
}

/* The worker's tenant directory (its cache and Redis connections). */
static void configure_tenants(struct tg_worker *w, const struct tg_config *cfg)
{
    if (!cfg->tenants.configured)
        return;
    if (w->ctx.tenants == NULL) {
        w->ctx.tenants = tg_tenant_dir_new(w->ctx.loop, &cfg->tenants);
        if (w->ctx.tenants == NULL)
            tg_log_error("out of memory creating the tenant directory");
        else {
            tg_tenant_dir_share(w->ctx.tenants, w->ctx.rt->tenant_shared, w->ctx.id);
            tg_tenant_dir_on_change(w->ctx.tenants, tg_tenant_moves_changed, &w->ctx);
            tg_tenant_dir_gateway(w->ctx.tenants, w->ctx.rt->gateway_id);
        }
    } else {
        tg_tenant_dir_configure(w->ctx.tenants, &cfg->tenants);
    }
}

/* Connections that came in on a listener the new snapshot drops drain now,
 * as at a stop (idle ones close, requests finish, WebSocket tunnels get
 * their close frame), rather than live on with the old snapshot. */
static void drain_orphans(struct tg_worker *w, const struct tg_config *cfg)
{
    struct tg_list *head = &w->ctx.conns;
    for (struct tg_list *n = head->next, *next; n != head; n = next) {
        next = n->next; /* draining may close it */
        struct tg_conn *c = tg_list_entry(n, struct tg_conn, link);
        if (!c->admin && c->lcfg != NULL && find_listen_cfg(cfg, c->lcfg->key) == NULL)
            tg_conn_drain(c);
    }
}

static void apply_config(struct tg_worker *w, struct tg_worker_msg *m)
{
    struct tg_wcfg *nc = wcfg_new(w, m->config);
    if (nc == NULL) {
        tg_log_error("out of memory applying a new configuration; keeping the old one");
        tg_config_unref(m->config);
        for (size_t i = 0; i < m->nfds; i++) {
            close(m->fds[i]);
            free(m->keys[i]);
        }
        return;
    }
    struct tg_wcfg *old = w->ctx.cfg;
    w->ctx.cfg = nc;
    configure_tenants(w, nc->config); /* before the old snapshot can go */
    if (w->ctx.id == 0 && tg_health_configure(w->ctx.loop, nc->config) < 0)
        tg_log_error("out of memory configuring health checks");
    if (old != NULL) {
        close_listeners(w, nc->config);
        drain_orphans(w, nc->config);
        tg_context_cfg_release(old);
    }
    for (struct tg_listener *l = w->listeners; l != NULL; l = l->next)
        l->cfg = find_listen_cfg(nc->config, l->key);
    size_t bs = nc->config->client.buffer_size;
    size_t large = nc->config->client.max_request_line + nc->config->client.max_head + 1024;
    struct tg_buf_pool probe;
    tg_buf_pool_init(&probe, bs, large, TG_BUF_MAX_FREE);
    if (w->ctx.bufs.small_size != probe.small_size || w->ctx.bufs.large_size != probe.large_size) {
        /* Buffers of the old sizes still in use are freed when returned. */
        tg_buf_pool_destroy(&w->ctx.bufs);
        size_t out = w->ctx.bufs.outstanding;
        tg_buf_pool_init(&w->ctx.bufs, bs, large, TG_BUF_MAX_FREE);
        w->ctx.bufs.outstanding = out;
    }
    for (size_t i = 0; i < m->nfds; i++)
        listener_add(w, m->fds[i], m->keys[i]);
    tg_access_log_configure(w->ctx.access_log, &nc->config->log);
    configure_redis(w, nc->config);
}

static void start_drain(struct tg_worker *w)
{
    if (w->ctx.draining)
        return;
    w->ctx.draining = true;
    close_listeners(w, NULL);
    ev_timer_stop(w->ctx.loop, &w->accept_retry);
    tg_upstream_close_idle(&w->ctx);
    struct tg_list *head = &w->ctx.conns;
    for (struct tg_list *n = head->next, *next; n != head; n = next) {
        next = n->next; /* draining may close it */
        struct tg_conn *c = tg_list_entry(n, struct tg_conn, link);
        if (!c->admin)
            tg_conn_drain(c);
    }
    check_drained(w);
}

/* Closes every client connection now. */
static void close_all(struct tg_worker *w)
{
    struct tg_list *n;
    while ((n = tg_list_first(&w->ctx.conns)) != NULL)
        tg_conn_close(tg_list_entry(n, struct tg_conn, link));
}

static void stop_now(struct tg_worker *w)
{
    w->ctx.stopping = true;
    w->ctx.draining = true;
    close_listeners(w, NULL);
    close_all(w);
    tg_upstream_close_idle(&w->ctx);
    ev_break(w->ctx.loop, EVBREAK_ALL);
}

static void on_mailbox(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop, (void)revents;
    struct tg_worker *w = a->data;
    pthread_mutex_lock(&w->mbox_lock);
    struct tg_worker_msg *m = w->mbox_head;
    w->mbox_head = w->mbox_tail = NULL;
    pthread_mutex_unlock(&w->mbox_lock);
    while (m != NULL) {
        struct tg_worker_msg *next = m->next;
        switch (m->type) {
        case TG_WORKER_MSG_CONFIG:
            apply_config(w, m);
            break;
        case TG_WORKER_MSG_DRAIN:
            start_drain(w);
            break;
        case TG_WORKER_MSG_STOP:
            stop_now(w);
            break;
        case TG_WORKER_MSG_CERT:
            tg_accept_cert_ready(&w->ctx);
            break;
        }
        free(m->fds);
        free(m->keys);
        free(m);
        m = next;
    }
}

void tg_worker_post(struct tg_worker *w, struct tg_worker_msg *msg)
{
    msg->next = NULL;
    pthread_mutex_lock(&w->mbox_lock);
    if (w->mbox_tail != NULL)
        w->mbox_tail->next = msg;
    else
        w->mbox_head = msg;
    w->mbox_tail = msg;
    pthread_mutex_unlock(&w->mbox_lock);
    ev_async_send(w->ctx.loop, &w->mbox);
}

/* ---- housekeeping -------------------------------------------------------- */

/* Four times a second: memory that a burst left in the free lists goes
 * back to the kernel; once a second: idle upstream connections expire. */
static void on_housekeeping(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct tg_worker *w = t->data;
    tg_buf_pool_trim(&w->ctx.bufs, 8);
    tg_request_trim_free_list(&w->ctx, 8);
    tg_compress_trim();
    if (++w->housekeeping_ticks % 4 == 0) {
        tg_upstream_sweep(&w->ctx, ev_now(loop));
        tg_faultlog_tick(false);
        /* Checked servers that are names follow their addresses. */
        if (w->ctx.id == 0 && w->ctx.cfg != NULL && tg_health_follow(loop, w->ctx.cfg->config) < 0)
            tg_log_error("out of memory following the health-checked names");
    }
}

/* ---- lifecycle ------------------------------------------------------------ */

struct tg_worker *tg_worker_new(unsigned id, struct tg_runtime *rt)
{
    struct tg_worker *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
    if (loop == NULL)
        loop = ev_loop_new(EVFLAG_AUTO);
    if (loop == NULL) {
        free(w);
        return NULL;
    }
    struct tg_context *ctx = &w->ctx;
    tg_context_init(ctx, id, loop, rt);
    ctx->pools = tg_upstream_pools_new();
    ctx->access_log = tg_access_log_new(loop);
    ctx->metrics = tg_metrics_shard_new();
    ctx->tenant_metrics = tg_tenant_metrics_new();
    ctx->conn_closed = conn_closed;
    /* Where the limiter keeps buckets: the process-wide table, Redis once
     * a policy needs it (configure_redis), and this gateway's share of the
     * fleet's budget while Redis fails. */
    tg_ratelimit_store_local(&ctx->limiter.stores[TG_RL_STORE_LOCAL], rt->rl_local);
    tg_ratelimit_store_redis(&ctx->limiter.stores[TG_RL_STORE_REDIS], NULL);
    tg_ratelimit_store_share(&ctx->limiter.share, rt->rl_local);
    ctx->limiter.metrics = ctx->metrics;
    if (ctx->pools == NULL || ctx->access_log == NULL || ctx->metrics == NULL ||
        (tg_tenant_metrics_limit() > 0 && ctx->tenant_metrics == NULL)) {
        tg_metrics_shard_free(ctx->metrics);
        tg_tenant_metrics_free(ctx->tenant_metrics);
        tg_upstream_pools_free(ctx->pools);
        tg_access_log_free(ctx->access_log);
        tg_context_fini(ctx);
        ev_loop_destroy(loop);
        free(w);
        return NULL;
    }
    pthread_mutex_init(&w->mbox_lock, NULL);
    ev_async_init(&w->mbox, on_mailbox);
    w->mbox.data = w;
    ev_async_start(loop, &w->mbox);
    ev_init(&w->accept_retry, on_accept_retry);
    w->accept_retry.data = w;
    ev_prepare_init(&ctx->upwait_kick, tg_forward_upwait_kick);
    ctx->upwait_kick.data = ctx;
    ev_timer_init(&w->housekeeping, on_housekeeping, 0.25, 0.25);
    w->housekeeping.data = w;
    ev_timer_start(loop, &w->housekeeping);
    return w;
}

static void *worker_main(void *arg)
{
    struct tg_worker *w = arg;
    char name[24];
    snprintf(name, sizeof(name), "worker %u", w->ctx.id);
    tg_log_set_thread_name(name);
    snprintf(name, sizeof(name), "tollgate-w%u", w->ctx.id);
    pthread_setname_np(pthread_self(), name);
    ev_run(w->ctx.loop, 0);
    /* Leaving the loop: everything still open is closed here, on the
     * worker's own thread. */
    w->ctx.stopping = true;
    close_listeners(w, NULL);
    close_all(w);
    tg_upstream_close_idle(&w->ctx);
    tg_faultlog_tick(true); /* what was only counted so far */
    tg_access_log_flush(w->ctx.access_log);
    if (w->ctx.rl_redis != NULL) {
        tg_ratelimit_redis_free(w->ctx.rl_redis);
        w->ctx.rl_redis = NULL;
        tg_ratelimit_store_redis(&w->ctx.limiter.stores[TG_RL_STORE_REDIS], NULL);
    }
    if (w->ctx.tenants != NULL) {
        tg_tenant_dir_free(w->ctx.tenants);
        w->ctx.tenants = NULL;
    }
    if (w->ctx.id == 0)
        tg_health_stop();
    tg_compress_release_all(); /* the encoders this thread kept for reuse */
    if (w->on_exit != NULL)
        w->on_exit();
    return NULL;
}

int tg_worker_start(struct tg_worker *w)
{
    return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? 0 : -1;
}

void tg_worker_join_and_free(struct tg_worker *w)
{
    pthread_join(w->thread, NULL);
    /* Messages that arrived after the loop ended. */
    struct tg_worker_msg *m = w->mbox_head;
    while (m != NULL) {
        struct tg_worker_msg *next = m->next;
        if (m->config != NULL)
            tg_config_unref(m->config);
        for (size_t i = 0; i < m->nfds; i++) {
            close(m->fds[i]);
            free(m->keys[i]);
        }
        free(m->fds);
        free(m->keys);
        free(m);
        m = next;
    }
    tg_request_free_all(&w->ctx);
    tg_access_log_free(w->ctx.access_log);
    tg_upstream_pools_free(w->ctx.pools);
    tg_context_cfg_release(w->ctx.cfg);
    tg_metrics_shard_free(w->ctx.metrics);
    tg_tenant_metrics_free(w->ctx.tenant_metrics);
    tg_buf_pool_destroy(&w->ctx.bufs);
    ev_async_stop(w->ctx.loop, &w->mbox);
    ev_timer_stop(w->ctx.loop, &w->housekeeping);
    tg_context_fini(&w->ctx);
    ev_loop_destroy(w->ctx.loop);
    pthread_mutex_destroy(&w->mbox_lock);
    free(w);
}
