/* Active health checks.
 *
 * The verdicts live in a fixed-size, insert-only hash table readable by
 * every worker without locks: a slot's key is written before the slot is
 * published (release store of `used`), and `down` is an atomic flag. Only
 * the checking worker writes. The checks themselves are plain non-blocking
 * HTTP/1.1 GETs with Connection: close, at most TG_HEALTH_MAX_CONCURRENT at
 * a time. */
#include "health.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "resolver.h"

#define SLOTS 65536 /* servers checked at most; power of two */
#define TICK_S 0.1
#define ADDR_TEXT_MAX 80 /* "[v6]:port", as formatted for the logs */
#define REQUEST_MAX 512  /* the GET head, path and Host included */
/* What is read of the answer: the status line is all that counts, and
 * "HTTP/1.1 200" (STATUS_LINE_MIN bytes) or a line end is enough of it. */
#define RESPONSE_MAX 64
#define STATUS_LINE_MIN 12
/* The first checks of a configuration start in this many steps over one
 * interval, not all at once. */
#define SPREAD_STEPS 64

struct key {
    uint8_t family;
    uint8_t addr[sizeof(struct in6_addr)];
    uint16_t port;
};

struct slot {
    _Atomic int used;
    struct key key;
    _Atomic bool down;
    unsigned fails, passes;   /* checker only */
    double due;               /* checker only: the next check, kept when the
                                 targets are made again */
    char name[ADDR_TEXT_MAX]; /* checker only, for logs */
};

struct target {
    size_t slot;
    struct sockaddr_storage sa;
    socklen_t salen;
    const char *path;
    char host[ADDR_TEXT_MAX];
    double interval, timeout;
    unsigned fails, passes;
    double due;
    bool running;
};

struct check {
    bool busy;
    int fd;
    ev_io io;
    ev_timer timer;
    struct target *t;
    size_t sent;
    char req[REQUEST_MAX];
    size_t reqlen;
    char resp[RESPONSE_MAX];
    size_t got;
};

static struct {
    struct slot *slots; /* allocated on first configure */
    _Atomic bool any;   /* some server is checked */
    struct ev_loop *loop;
    ev_timer tick;
    struct target *targets;
    size_t ntargets, cursor;
    struct check checks[TG_HEALTH_MAX_CONCURRENT];
    unsigned running;
    _Atomic unsigned long nchecks, ndown;
    bool follows;   /* some checked list has names (resolver.h) */
    uint64_t epoch; /* the resolver's epoch the targets were made at */
} h;

static void key_of(const struct sockaddr_storage *sa, struct key *k)
{
    memset(k, 0, sizeof(*k));
    k->family = (uint8_t)sa->ss_family;
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(k->addr, &in->sin_addr, sizeof(in->sin_addr));
        k->port = in->sin_port;
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        memcpy(k->addr, &in6->sin6_addr, sizeof(in6->sin6_addr));
        k->port = in6->sin6_port;
    }
}

static size_t hash_key(const struct key *k)
{
    uint64_t x = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)k;
    for (size_t i = 0; i < sizeof(*k); i++)
        x = (x ^ p[i]) * 1099511628211ull;
    return (size_t)(x ^ (x >> 29));
}

/* Finds (or, for the checker, adds) a server's slot. SIZE_MAX if absent. */
static size_t find_slot(const struct key *k, bool add)
{
    if (h.slots == NULL)
        return SIZE_MAX;
    size_t i = hash_key(k) & (SLOTS - 1);
    for (size_t probe = 0; probe < SLOTS; probe++, i = (i + 1) & (SLOTS - 1)) {
        struct slot *s = &h.slots[i];
        if (!atomic_load_explicit(&s->used, memory_order_acquire)) {
            if (!add)
                return SIZE_MAX;
            s->key = *k;
            atomic_store_explicit(&s->used, 1, memory_order_release);
            return i;
        }
        if (memcmp(&s->key, k, sizeof(*k)) == 0)
            return i;
    }
    return SIZE_MAX;
}

bool tg_health_up(const struct tg_config_sockaddr *addr)
{
    if (!atomic_load_explicit(&h.any, memory_order_acquire))
        return true;
    struct key k;
    key_of(&addr->sa, &k);
    size_t i = find_slot(&k, false);
    return i == SIZE_MAX || !atomic_load_explicit(&h.slots[i].down, memory_order_relaxed);
}

void tg_health_counts(unsigned long *checks, unsigned long *down)
{
    *checks = atomic_load(&h.nchecks);
    *down = atomic_load(&h.ndown);
}

/* ---- one check --------------------------------------------------------------- */

static void verdict(struct target *t, bool ok, const char *why)
{
    struct slot *s = &h.slots[t->slot];
    atomic_fetch_add(&h.nchecks, 1);
    bool down = atomic_load(&s->down);
    if (ok) {
        s->fails = 0;
        if (down && ++s->passes >= t->passes) {
            atomic_store(&s->down, false);
            atomic_fetch_sub(&h.ndown, 1);
            s->passes = 0;
            tg_log_info("health check: %s is up again", s->name);
        }
    } else {
        s->passes = 0;
        if (!down && ++s->fails >= t->fails) {
            atomic_store(&s->down, true);
            atomic_fetch_add(&h.ndown, 1);
            tg_log_warn("health check: %s is down (%s)", s->name, why);
        }
    }
}

static void finish(struct check *c, bool ok, const char *why)
{
    ev_io_stop(h.loop, &c->io);
    ev_timer_stop(h.loop, &c->timer);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->t != NULL) {
        c->t->running = false;
        verdict(c->t, ok, why);
    }
    c->t = NULL;
    c->busy = false;
    h.running--;
}

static void on_check_io(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    struct check *c = io->data;
    if (revents & EV_WRITE) {
        if (c->sent == 0) {
            int err = 0;
            socklen_t len = sizeof(err);
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) {
                finish(c, false, strerror(err));
                return;
            }
        }
        ssize_t n = send(c->fd, c->req + c->sent, c->reqlen - c->sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            finish(c, false, strerror(errno));
            return;
        }
        if (n > 0)
            c->sent += (size_t)n;
        if (c->sent == c->reqlen) {
            ev_io_stop(h.loop, &c->io);
            ev_io_set(&c->io, c->fd, EV_READ);
            ev_io_start(h.loop, &c->io);
        }
        return;
    }
    ssize_t n = recv(c->fd, c->resp + c->got, sizeof(c->resp) - 1 - c->got, 0);
    if (n < 0 && errno == EAGAIN)
        return;
    if (n <= 0) {
        finish(c, false, n == 0 ? "closed without an answer" : strerror(errno));
        return;
    }
    c->got += (size_t)n;
    c->resp[c->got] = '\0';
    if (c->got < STATUS_LINE_MIN && memchr(c->resp, '\n', c->got) == NULL)
        return;
    int status = 0;
    if (sscanf(c->resp, "HTTP/1.%*1[01] %3d", &status) != 1)
        finish(c, false, "not an HTTP answer");
    else if (status >= 200 && status < 400)
        finish(c, true, NULL);
    else
        finish(c, false, "bad status");
}

static void on_check_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    finish(t->data, false, "timed out");
}

static void start_check(struct target *t)
{
    struct check *c = NULL;
    for (unsigned i = 0; i < TG_HEALTH_MAX_CONCURRENT && c == NULL; i++)
        if (!h.checks[i].busy)
            c = &h.checks[i];
    if (c == NULL)
        return;
    int fd = socket(t->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    c->busy = true;
    h.running++;
    c->fd = fd;
    c->t = t;
    t->running = true;
    c->sent = c->got = 0;
    int n = snprintf(c->req, sizeof(c->req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tollgate-health-check\r\n"
                     "Connection: close\r\n\r\n",
                     t->path, t->host);
    c->reqlen = n > 0 && (size_t)n < sizeof(c->req) ? (size_t)n : 0;
    ev_io_init(&c->io, on_check_io, fd, EV_WRITE);
    c->io.data = c;
    ev_timer_init(&c->timer, on_check_timeout, t->timeout, 0.);
    c->timer.data = c;
    if (connect(fd, (struct sockaddr *)&t->sa, t->salen) < 0 && errno != EINPROGRESS) {
        int e = errno;
        finish(c, false, strerror(e));
        return;
    }
    ev_io_start(h.loop, &c->io);
    ev_timer_start(h.loop, &c->timer);
}

/* Every tick: start the checks that are due, round robin over targets, as
 * far as the concurrency cap allows. */
static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w, (void)revents;
    double now = ev_now(loop);
    for (size_t scanned = 0; scanned < h.ntargets && h.running < TG_HEALTH_MAX_CONCURRENT;
         scanned++) {
        struct target *t = &h.targets[h.cursor];
        h.cursor = (h.cursor + 1) % h.ntargets;
        if (t->running || t->due > now)
            continue;
        t->due = now + t->interval;
        h.slots[t->slot].due = t->due;
        start_check(t);
    }
}

/* ---- configuration ------------------------------------------------------------ */

static void add_targets(struct target *out, size_t *n, size_t cap,
                        const struct tg_config_server *servers, size_t nservers,
                        const struct tg_config_health_check *hc)
{
    for (size_t i = 0; i < nservers && *n < cap; i++) {
        struct key k;
        key_of(&servers[i].addr.sa, &k);
        bool dup = false;
        for (size_t j = 0; j < *n && !dup; j++)
            dup = out[j].salen == servers[i].addr.salen &&
                  memcmp(&out[j].sa, &servers[i].addr.sa, out[j].salen) == 0;
        size_t slot = find_slot(&k, true);
        if (dup || slot == SIZE_MAX)
            continue;
        struct target *t = &out[(*n)++];
        memset(t, 0, sizeof(*t));
        t->slot = slot;
        memcpy(&t->sa, &servers[i].addr.sa, servers[i].addr.salen);
        t->salen = servers[i].addr.salen;
        t->path = hc->path;
        tg_config_format_sockaddr((struct sockaddr *)&t->sa, t->host, sizeof(t->host));
        snprintf(h.slots[slot].name, sizeof(h.slots[slot].name), "%s", t->host);
        t->interval = (double)hc->interval_ms / 1000.0;
        t->timeout = (double)hc->timeout_ms / 1000.0;
        t->fails = hc->fails;
        t->passes = hc->passes;
        /* A server checked before keeps its turn; the first round of new
         * ones is spread over one interval. */
        t->due = h.slots[slot].due > 0
                     ? h.slots[slot].due
                     : ev_now(h.loop) + t->interval * (double)(*n % SPREAD_STEPS) / SPREAD_STEPS;
    }
}

/* One list of servers to check: its own, or the current addresses of its
 * names (a copy, given back once the targets are made). */
struct source {
    const struct tg_config_server *servers;
    size_t n;
    struct tg_server_set *set;
    const struct tg_config_health_check *hc;
};

static void add_source(struct source *v, size_t *nv, const struct tg_config_server *servers,
                       size_t n, struct tg_resolver_group *g,
                       const struct tg_config_health_check *hc)
{
    struct source *s = &v[(*nv)++];
    s->hc = hc;
    s->set = NULL;
    s->servers = servers;
    s->n = n;
    if (g == NULL)
        return;
    h.follows = true;
    s->set = tg_resolver_group_set(g);
    s->servers = s->set != NULL ? s->set->servers : NULL;
    s->n = s->set != NULL ? s->set->n : 0;
}

int tg_health_configure(struct ev_loop *loop, const struct tg_config *cfg)
{
    /* Checks in flight refer to the old targets: stop them; their servers
     * keep their state and are checked again soon. */
    for (unsigned i = 0; i < TG_HEALTH_MAX_CONCURRENT; i++)
        if (h.checks[i].busy) {
            h.checks[i].t = NULL;
            finish(&h.checks[i], false, NULL);
        }
    free(h.targets);
    h.targets = NULL;
    h.ntargets = h.cursor = 0;
    h.loop = loop;
    h.follows = false;
    h.epoch = tg_resolver_epoch();
    size_t nsrc = 0, cap = 0;
    const struct tg_config_health_check *thc = &cfg->tenants.upstream_defaults.health_check;
    struct source *src = calloc(cfg->nupstreams + cfg->tenants.ntenants + 1, sizeof(*src));
    if (src == NULL)
        return -1;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct tg_config_upstream *u = &cfg->upstreams[i];
        if (u->health_check.path != NULL)
            add_source(src, &nsrc, u->servers, u->nservers, u->resolve, &u->health_check);
    }
    if (thc->path != NULL)
        for (size_t i = 0; i < cfg->tenants.ntenants; i++) {
            const struct tg_config_tenant *t = &cfg->tenants.tenants[i];
            add_source(src, &nsrc, t->servers, t->nservers, t->resolve, thc);
        }
    for (size_t i = 0; i < nsrc; i++)
        cap += src[i].n;
    int rc = 0;
    if (cap == 0) {
        if (h.slots != NULL)
            ev_timer_stop(loop, &h.tick);
        goto out;
    }
    if (h.slots == NULL) {
        h.slots = calloc(SLOTS, sizeof(*h.slots));
        if (h.slots == NULL) {
            rc = -1;
            goto out;
        }
        for (unsigned i = 0; i < TG_HEALTH_MAX_CONCURRENT; i++)
            h.checks[i].fd = -1;
        ev_init(&h.tick, on_tick);
    }
    h.targets = calloc(cap, sizeof(*h.targets));
    if (h.targets == NULL) {
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < nsrc; i++)
        add_targets(h.targets, &h.ntargets, cap, src[i].servers, src[i].n, src[i].hc);
    atomic_store_explicit(&h.any, h.ntargets > 0, memory_order_release);
    ev_timer_stop(loop, &h.tick);
    ev_timer_set(&h.tick, TICK_S, TICK_S);
    ev_timer_start(loop, &h.tick);
out:
    for (size_t i = 0; i < nsrc; i++)
        tg_server_set_unref(src[i].set);
    free(src);
    return rc;
}

int tg_health_follow(struct ev_loop *loop, const struct tg_config *cfg)
{
    if (!h.follows || h.epoch == tg_resolver_epoch())
        return 0;
    return tg_health_configure(loop, cfg);
}

void tg_health_stop(void)
{
    if (h.loop == NULL || h.slots == NULL)
        return;
    for (unsigned i = 0; i < TG_HEALTH_MAX_CONCURRENT; i++)
        if (h.checks[i].busy) {
            h.checks[i].t = NULL;
            finish(&h.checks[i], false, NULL);
        }
    ev_timer_stop(h.loop, &h.tick);
    free(h.targets);
    h.targets = NULL;
    h.ntargets = 0;
}
