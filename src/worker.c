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
#include "conn.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
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
    c->rr_cursor = calloc(config->nupstreams ? config->nupstreams : 1,
                          sizeof(*c->rr_cursor));
    if (c->rr_cursor == NULL) {
        free(c);
        return NULL;
    }
    /* Spread workers over servers so they do not all start at server 0. */
    for (size_t i = 0; i < config->nupstreams; i++)
        c->rr_cursor[i] = w->id;
    c->config = config;
    c->worker = w;
    c->refs = 1;
    return c;
}

struct tg_wcfg *tg_worker_cfg_acquire(struct tg_worker *w)
{
    w->cfg->refs++;
    return w->cfg;
}

void tg_worker_cfg_release(struct tg_wcfg *c)
{
    if (c == NULL || --c->refs > 0)
        return;
    tg_config_unref(c->config);
    free(c->rr_cursor);
    free(c);
}

static const struct tg_config_listen *find_listen_cfg(const struct tg_config *cfg,
                                                      const char *key)
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
            ev_io_start(w->loop, &l->io);
        else
            ev_io_stop(w->loop, &l->io);
    }
}

static void pause_accept(struct tg_worker *w)
{
    if (w->accept_paused)
        return;
    w->accept_paused = true;
    set_accepting(w, false);
    ev_timer_set(&w->accept_retry, ACCEPT_RETRY_S, 0.);
    ev_timer_start(w->loop, &w->accept_retry);
}

static void resume_accept(struct tg_worker *w)
{
    if (!w->accept_paused || w->draining)
        return;
    w->accept_paused = false;
    ev_timer_stop(w->loop, &w->accept_retry);
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
    if (!w->draining || w->drained || w->nconns != w->nadmin_conns)
        return;
    w->drained = true;
    if (w->on_drained != NULL)
        w->on_drained();
    else
        ev_break(w->loop, EVBREAK_ALL);
}

void tg_worker_conn_closed(struct tg_worker *w)
{
    if (w->accept_paused && !w->draining)
        resume_accept(w);
    check_drained(w);
}

/* Accepts until the queue is empty (or a fairness bound). Returns false if
 * it had to pause for want of descriptors. */
static bool accept_pending(struct tg_worker *w, struct tg_listener *l,
                           int limit)
{
    unsigned max = w->cfg->config->client.max_connections;
    for (int i = 0; i < limit; i++) {
        if (max != 0 && atomic_load(&w->rt->nconns) >= max) {
            /* At the global cap: leave connections in the kernel backlog
             * and look again shortly, rather than accept and drop them. */
            pause_accept(w);
            return false;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                tg_log_warn("accept on %s: %s; pausing accept", l->key,
                            strerror(errno));
                pause_accept(w);
                return false;
            }
            tg_log_error("accept on %s: %s", l->key, strerror(errno));
            return true;
        }
        tg_conn_accept(w, fd, (struct sockaddr *)&ss, l->cfg);
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

int tg_worker_open_listener(const struct tg_config_listen *l, char *err,
                            size_t errlen)
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
    l->cfg = find_listen_cfg(w->cfg->config, key);
    ev_io_init(&l->io, on_accept, fd, EV_READ);
    l->io.data = l;
    if (!w->accept_paused && !w->draining)
        ev_io_start(w->loop, &l->io);
    l->next = w->listeners;
    w->listeners = l;
}

/* Closing a SO_REUSEPORT socket resets the connections still in its accept
 * queue; take them first so a reload or drain loses none. */
static void listener_close(struct tg_worker *w, struct tg_listener *l)
{
    if (!w->stopping)
        accept_pending(w, l, 1 << 20);
    ev_io_stop(w->loop, &l->io);
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
        bool keep_admin = keep == NULL && w->draining && !w->stopping && l->cfg != NULL &&
                          l->cfg->admin;
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
    if (w->rl_redis == NULL) {
        w->rl_redis = tg_ratelimit_redis_new(w->loop, &cfg->rate_limit.redis,
                                             w->rt->gateway_id, w->id == 0);
        if (w->rl_redis == NULL)
            tg_log_error("out of memory creating the Redis rate-limit client");
    } else {
        tg_ratelimit_redis_configure(w->rl_redis, &cfg->rate_limit.redis);
    }
    tg_ratelimit_store_redis(&w->limiter.stores[TG_RL_STORE_REDIS], w->rl_redis);
}

/* The worker's tenant directory (its cache and Redis connections). */
static void configure_tenants(struct tg_worker *w, const struct tg_config *cfg)
{
    if (!cfg->tenants.configured)
        return;
    if (w->tenants == NULL) {
        w->tenants = tg_tenant_dir_new(w->loop, &cfg->tenants);
        if (w->tenants == NULL)
            tg_log_error("out of memory creating the tenant directory");
    } else {
        tg_tenant_dir_configure(w->tenants, &cfg->tenants);
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
    struct tg_wcfg *old = w->cfg;
    w->cfg = nc;
    configure_tenants(w, nc->config); /* before the old snapshot can go */
    if (w->id == 0 && tg_health_configure(w->loop, nc->config) < 0)
        tg_log_error("out of memory configuring health checks");
    if (old != NULL) {
        close_listeners(w, nc->config);
        tg_worker_cfg_release(old);
    }
    for (struct tg_listener *l = w->listeners; l != NULL; l = l->next)
        l->cfg = find_listen_cfg(nc->config, l->key);
    size_t bs = nc->config->client.buffer_size;
    size_t large = nc->config->client.max_request_line + nc->config->client.max_head + 1024;
    struct tg_buf_pool probe;
    tg_buf_pool_init(&probe, bs, large, TG_BUF_MAX_FREE);
    if (w->bufs.small_size != probe.small_size || w->bufs.large_size != probe.large_size) {
        /* Buffers of the old sizes still in use are freed when returned. */
        tg_buf_pool_destroy(&w->bufs);
        size_t out = w->bufs.outstanding;
        tg_buf_pool_init(&w->bufs, bs, large, TG_BUF_MAX_FREE);
        w->bufs.outstanding = out;
    }
    for (size_t i = 0; i < m->nfds; i++)
        listener_add(w, m->fds[i], m->keys[i]);
    tg_access_log_configure(w->access_log, &nc->config->log);
    configure_redis(w, nc->config);
}

static void start_drain(struct tg_worker *w)
{
    if (w->draining)
        return;
    w->draining = true;
    close_listeners(w, NULL);
    ev_timer_stop(w->loop, &w->accept_retry);
    tg_upstream_close_idle(w);
    for (struct tg_conn *c = w->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (!c->admin)
            tg_conn_drain(c);
    }
    check_drained(w);
}

static void stop_now(struct tg_worker *w)
{
    w->stopping = true;
    w->draining = true;
    close_listeners(w, NULL);
    while (w->conns != NULL)
        tg_conn_close(w->conns);
    tg_upstream_close_idle(w);
    ev_break(w->loop, EVBREAK_ALL);
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
    ev_async_send(w->loop, &w->mbox);
}

/* ---- housekeeping -------------------------------------------------------- */

/* Four times a second: memory that a burst left in the free lists goes
 * back to the kernel; once a second: idle upstream connections expire. */
static void on_housekeeping(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct tg_worker *w = t->data;
    tg_buf_pool_trim(&w->bufs, 8);
    tg_proxy_trim_free_list(w, 8);
    if (++w->housekeeping_ticks % 4 == 0)
        tg_upstream_sweep(w, ev_now(loop));
}

/* ---- socket events in the order they came --------------------------------
 *
 * libev runs the callbacks of one poll last in, first out: the socket epoll
 * reported first is served last, so under load the one that has waited
 * longest waits for all the others again, which stretches the latency tail
 * (nginx and HAProxy serve in epoll's order). The worker's loop runs its
 * pending callbacks through invoke_pending: while libev runs them, client
 * and upstream socket callbacks only note their event (tg_worker_defer_io),
 * and the notes are then served oldest first. Timers and the mailbox run
 * as before. */

static void invoke_pending(struct ev_loop *loop)
{
    struct tg_worker *w = ev_userdata(loop);
    do {
        w->collecting_io = true;
        ev_invoke_pending(loop);
        w->collecting_io = false;
        /* Noted newest first: the oldest is at the end. */
        while (w->nready > 0) {
            struct tg_ready_io r = w->ready[--w->nready];
            if (r.io != NULL)
                ev_cb(r.io)(loop, r.io, r.revents);
        }
        /* What those callbacks fed (buffered TLS input) runs now too. */
    } while (ev_pending_count(loop) > 0);
}

bool tg_worker_note_io_grow(struct tg_worker *w, ev_io *io, int revents)
{
    size_t cap = w->ready_cap ? 2 * w->ready_cap : 64;
    struct tg_ready_io *r = realloc(w->ready, cap * sizeof(*r));
    if (r == NULL)
        return false; /* served at once, out of order: still served */
    w->ready = r;
    w->ready_cap = cap;
    w->ready[w->nready++] = (struct tg_ready_io){io, revents};
    return true;
}

void tg_worker_io_stop(struct ev_loop *loop, ev_io *io)
{
    ev_io_stop(loop, io);
    struct tg_worker *w = ev_userdata(loop);
    if (w == NULL)
        return;
    for (size_t i = 0; i < w->nready; i++)
        if (w->ready[i].io == io)
            w->ready[i].io = NULL;
}

/* ---- lifecycle ------------------------------------------------------------ */

struct tg_worker *tg_worker_new(unsigned id, struct tg_runtime *rt)
{
    struct tg_worker *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->id = id;
    w->rt = rt;
    w->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
    if (w->loop == NULL)
        w->loop = ev_loop_new(EVFLAG_AUTO);
    w->pools = tg_upstream_pools_new();
    w->access_log = tg_access_log_new(w);
    w->metrics = tg_metrics_shard_new();
    /* Where the limiter keeps buckets: the process-wide table, Redis once
     * a policy needs it (configure_redis), and this gateway's share of the
     * fleet's budget while Redis fails. */
    tg_ratelimit_store_local(&w->limiter.stores[TG_RL_STORE_LOCAL], rt->rl_local);
    tg_ratelimit_store_redis(&w->limiter.stores[TG_RL_STORE_REDIS], NULL);
    tg_ratelimit_store_share(&w->limiter.share, rt->rl_local);
    w->limiter.metrics = w->metrics;
    if (w->loop == NULL || w->pools == NULL || w->access_log == NULL || w->metrics == NULL) {
        tg_metrics_shard_free(w->metrics);
        if (w->loop != NULL)
            ev_loop_destroy(w->loop);
        tg_upstream_pools_free(w->pools);
        tg_access_log_free(w->access_log);
        free(w);
        return NULL;
    }
    ev_set_userdata(w->loop, w);
    ev_set_invoke_pending_cb(w->loop, invoke_pending);
    pthread_mutex_init(&w->mbox_lock, NULL);
    ev_async_init(&w->mbox, on_mailbox);
    w->mbox.data = w;
    ev_async_start(w->loop, &w->mbox);
    ev_init(&w->accept_retry, on_accept_retry);
    w->accept_retry.data = w;
    tg_list_init(&w->upwait);
    ev_prepare_init(&w->upwait_kick, tg_proxy_upwait_kick);
    w->upwait_kick.data = w;
    ev_timer_init(&w->housekeeping, on_housekeeping, 0.25, 0.25);
    w->housekeeping.data = w;
    ev_timer_start(w->loop, &w->housekeeping);
    tg_buf_pool_init(&w->bufs, 16384, 65536 + 1024, TG_BUF_MAX_FREE);
    return w;
}

static void *worker_main(void *arg)
{
    struct tg_worker *w = arg;
    char name[24];
    snprintf(name, sizeof(name), "worker %u", w->id);
    tg_log_set_thread_name(name);
    snprintf(name, sizeof(name), "tollgate-w%u", w->id);
    pthread_setname_np(pthread_self(), name);
    ev_run(w->loop, 0);
    /* Leaving the loop: everything still open is closed here, on the
     * worker's own thread. */
    w->stopping = true;
    close_listeners(w, NULL);
    while (w->conns != NULL)
        tg_conn_close(w->conns);
    tg_upstream_close_idle(w);
    tg_access_log_flush(w->access_log);
    if (w->rl_redis != NULL) {
        tg_ratelimit_redis_free(w->rl_redis);
        w->rl_redis = NULL;
        tg_ratelimit_store_redis(&w->limiter.stores[TG_RL_STORE_REDIS], NULL);
    }
    if (w->tenants != NULL) {
        tg_tenant_dir_free(w->tenants);
        w->tenants = NULL;
    }
    if (w->id == 0)
        tg_health_stop();
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
    struct tg_request *r = w->free_requests;
    while (r != NULL) {
        struct tg_request *next = r->next_free;
        tg_arena_reset(&r->arena);
        tg_pages_free(r, sizeof(*r));
        r = next;
    }
    tg_access_log_free(w->access_log);
    tg_upstream_pools_free(w->pools);
    tg_worker_cfg_release(w->cfg);
    tg_metrics_shard_free(w->metrics);
    tg_buf_pool_destroy(&w->bufs);
    ev_async_stop(w->loop, &w->mbox);
    ev_timer_stop(w->loop, &w->housekeeping);
    ev_loop_destroy(w->loop);
    pthread_mutex_destroy(&w->mbox_lock);
    free(w->ready);
    free(w);
}
