/* Upstream pools and server selection.
 *
 * One pool per backend address per worker: idle keep-alive connections
 * (most recently used first, so the warmest one is reused and the coldest
 * ages out), the count of connections in use, and passive health. A pooled
 * connection is watched for readability while idle: a backend that closes
 * it is noticed at once instead of on the next request. */
#include "upstream.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "buf.h"
#include "config.h"
#include "faultlog.h"
#include "health.h"
#include "log.h"
#include "resolver.h"
#include "tls.h"
#include "context.h"

#define EJECT_AFTER_FAILS 3
#define EJECT_MAX_S 30.0
/* An ejection lasts eject_ms (EJECT_DEFAULT_S without an upstream's
 * settings), times EJECT_BACKOFF_FACTOR for each failure after the one
 * that ejected, up to EJECT_MAX_S. */
#define EJECT_DEFAULT_S 1.0
#define EJECT_BACKOFF_FACTOR 2
/* A server its health check calls down ranks as one ejected for this
 * long: when every server is out, an ejected one (EJECT_MAX_S at most) is
 * tried first. */
#define DOWN_RANK_S 3600
/* Bits of a request's `tried` mask: servers past it are never skipped. */
#define TRIED_MAX 64
#define TLS_NAME_MAX 256 /* a DNS name (253) and its NUL */
#define POOL_NAME_MAX 64 /* the address, as logged */
#define FAULT_KEY_MAX (POOL_NAME_MAX + TLS_NAME_MAX + 16)
#define BUCKETS_MIN 64

/* A pool is one way of reaching one server: its address, and for TLS the
 * name it is verified against (the same address reached with other TLS
 * settings is another pool). */
struct tg_pool {
    struct tg_context *w;
    struct sockaddr_storage sa;
    socklen_t salen;
    bool tls;
    char tls_name[TLS_NAME_MAX]; /* SNI and verified name; "" for plain */
    char name[POOL_NAME_MAX];
    struct tg_list idle; /* of tg_upconn.idle_link; front = most recently used */
    unsigned nidle;
    unsigned active;      /* connections owned by requests */
    unsigned active_high; /* most owned at once since the last sweep */
    unsigned keepalive;   /* the upstream's `keepalive`, last seen */
    unsigned fails;       /* consecutive failures */
    bool retired;         /* a name lost this address: connections given back
                             close instead of waiting idle (until a request
                             picks the address again) */
    ev_tstamp ejected_until;
    unsigned long down_gen; /* tg_faultlog_down_gen() at the last success */
    struct tg_pool *hnext;
};

/* Plain-TCP pools by the config address they were last found for: the
 * common look-up (every request) skips formatting and hashing the key.
 * Entries are checked against the pool's own address, so a config freed
 * by a reload, its memory reused, can never yield the wrong pool; pools
 * live as long as the table. */
#define POOL_CACHE 64

struct tg_upstream_pools {
    struct tg_pool **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    struct {
        const struct tg_config_sockaddr *addr;
        struct tg_pool *pool;
    } cache[POOL_CACHE];
    /* This worker's copy of each resolver group's servers, by group id. */
    struct tg_resolver_view *views;
    size_t nviews;
};

/* ---- pool table --------------------------------------------------------------- */

static uint64_t hash_key(const struct sockaddr_storage *sa, socklen_t len, const char *name)
{
    /* FNV-1a: addresses come from our own config, not from clients. */
    const unsigned char *p = (const unsigned char *)sa;
    uint64_t h = 1469598103934665603ull;
    for (socklen_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    for (const char *c = name; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    return h;
}

/* The name a TLS server is reached and verified by: tls_server_name, else
 * the name the address came from, else the host part of the server's
 * address as written. */
static void tls_name_of(const struct tg_config_upstream *u, const struct tg_config_server *s,
                        char *out, size_t cap)
{
    out[0] = '\0';
    if (u == NULL || !u->tls)
        return;
    if (u->tls_server_name != NULL) {
        snprintf(out, cap, "%s", u->tls_server_name);
        return;
    }
    if (s->host != NULL) {
        snprintf(out, cap, "%s", s->host);
        return;
    }
    const char *t = s->addr.text;
    const char *end = strrchr(t, ':');
    size_t n = end ? (size_t)(end - t) : strlen(t);
    if (n >= 2 && t[0] == '[' && t[n - 1] == ']') {
        t++;
        n -= 2;
    }
    snprintf(out, cap, "%.*s", (int)n, t);
}

struct tg_upstream_pools *tg_upstream_pools_new(void)
{
    struct tg_upstream_pools *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->nbuckets = BUCKETS_MIN;
    t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
    if (t->buckets == NULL) {
        free(t);
        return NULL;
    }
    return t;
}

static void close_upconn(struct tg_upconn *uc);

/* The most recently used idle connection, or NULL. */
static struct tg_upconn *idle_first(const struct tg_pool *p)
{
    struct tg_list *n = tg_list_first(&p->idle);
    return n != NULL ? tg_list_entry(n, struct tg_upconn, idle_link) : NULL;
}

static void idle_unlink(struct tg_pool *p, struct tg_upconn *uc);

void tg_upstream_pools_free(struct tg_upstream_pools *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct tg_pool *p = t->buckets[i];
        while (p != NULL) {
            struct tg_pool *next = p->hnext;
            struct tg_upconn *uc;
            while ((uc = idle_first(p)) != NULL) {
                idle_unlink(p, uc);
                close_upconn(uc);
            }
            free(p);
            p = next;
        }
    }
    for (size_t i = 0; i < t->nviews; i++)
        tg_server_set_unref(t->views[i].set);
    free(t->views);
    free(t->buckets);
    free(t);
}

static int grow(struct tg_upstream_pools *t)
{
    size_t nb = t->nbuckets * 2;
    struct tg_pool **b = calloc(nb, sizeof(*b));
    if (b == NULL)
        return -1;
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct tg_pool *p = t->buckets[i];
        while (p != NULL) {
            struct tg_pool *next = p->hnext;
            size_t j = hash_key(&p->sa, p->salen, p->tls_name) & (nb - 1);
            p->hnext = b[j];
            b[j] = p;
            p = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = nb;
    return 0;
}

static struct tg_pool *pool_get(struct tg_context *w, const struct tg_config_upstream *u,
                                const struct tg_config_server *s)
{
    const struct tg_config_sockaddr *a = &s->addr;
    struct tg_upstream_pools *t = w->pools;
    bool tls = u != NULL && u->tls;
    size_t slot = ((uintptr_t)a >> 4) & (POOL_CACHE - 1);
    struct tg_pool *hit = t->cache[slot].pool;
    if (!tls && t->cache[slot].addr == a && !hit->tls && hit->salen == a->salen &&
        memcmp(&hit->sa, &a->sa, a->salen) == 0)
        return hit;
    char name[TLS_NAME_MAX];
    tls_name_of(u, s, name, sizeof(name));
    size_t i = hash_key(&a->sa, a->salen, name) & (t->nbuckets - 1);
    for (struct tg_pool *p = t->buckets[i]; p != NULL; p = p->hnext) {
        if (p->salen == a->salen && memcmp(&p->sa, &a->sa, a->salen) == 0 && p->tls == tls &&
            strcmp(p->tls_name, name) == 0) {
            if (!tls) {
                t->cache[slot].addr = a;
                t->cache[slot].pool = p;
            }
            return p;
        }
    }
    if (t->count >= t->nbuckets && grow(t) == 0)
        i = hash_key(&a->sa, a->salen, name) & (t->nbuckets - 1);
    struct tg_pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->w = w;
    tg_list_init(&p->idle);
    memcpy(&p->sa, &a->sa, a->salen);
    p->salen = a->salen;
    p->tls = tls;
    snprintf(p->tls_name, sizeof(p->tls_name), "%s", name);
    tg_config_format_sockaddr((const struct sockaddr *)&a->sa, p->name, sizeof(p->name));
    p->hnext = t->buckets[i];
    t->buckets[i] = p;
    t->count++;
    return p;
}

/* ---- servers of names -------------------------------------------------------------- */

/* A name no longer has this address: its idle connections close now, and
 * those in use close when their requests give them back. Every pool of
 * the address (under any TLS name) is retired: another upstream listing
 * the same address only reconnects. */
static void retire(void *arg, const struct tg_config_server *gone)
{
    struct tg_context *w = arg;
    struct tg_upstream_pools *t = w->pools;
    for (size_t i = 0; i < t->nbuckets; i++)
        for (struct tg_pool *p = t->buckets[i]; p != NULL; p = p->hnext) {
            if (p->salen != gone->addr.salen || memcmp(&p->sa, &gone->addr.sa, p->salen) != 0)
                continue;
            p->retired = true;
            struct tg_upconn *uc;
            while ((uc = idle_first(p)) != NULL) {
                idle_unlink(p, uc);
                close_upconn(uc);
            }
        }
}

struct tg_server_set *tg_upstream_servers(struct tg_context *w, const struct tg_config_upstream *u,
                                          const struct tg_config_server **servers, size_t *n)
{
    if (u->resolve == NULL) {
        *servers = u->servers;
        *n = u->nservers;
        return NULL;
    }
    *servers = NULL;
    *n = 0;
    struct tg_upstream_pools *t = w->pools;
    size_t id = tg_resolver_group_id(u->resolve);
    if (id >= t->nviews) {
        size_t nv = t->nviews ? t->nviews : 16;
        while (nv <= id)
            nv *= 2;
        struct tg_resolver_view *v = realloc(t->views, nv * sizeof(*v));
        if (v == NULL)
            return NULL;
        memset(v + t->nviews, 0, (nv - t->nviews) * sizeof(*v));
        t->views = v;
        t->nviews = nv;
    }
    struct tg_server_set *set = tg_resolver_view_get(&t->views[id], u->resolve, retire, w);
    if (set == NULL)
        return NULL;
    tg_server_set_ref(set);
    *servers = set->servers;
    *n = set->n;
    return set;
}

/* ---- selection ------------------------------------------------------------------ */

static bool is_ejected(const struct tg_pool *p, ev_tstamp now)
{
    return p != NULL && p->ejected_until > now;
}

/* Rendezvous (highest random weight) score of a server for a key. */
static uint64_t rendezvous(uint64_t key, const struct tg_config_sockaddr *a)
{
    uint64_t h = key ^ 0x9e3779b97f4a7c15ull;
    const unsigned char *p = (const unsigned char *)&a->sa;
    for (socklen_t i = 0; i < a->salen; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    return h;
}

int tg_upstream_pick(struct tg_context *w, unsigned *cursor, const struct tg_config_upstream *u,
                     const struct tg_config_server *servers, size_t n, uint64_t tried,
                     uint64_t hash)
{
    if (n == 0)
        return -1;
    ev_tstamp now = tg_context_now(w);
    unsigned start = u->balance == TG_BALANCE_ROUND_ROBIN ? (*cursor)++ : 0;
    int best = -1, fallback = -1;
    unsigned best_active = 0;
    uint64_t best_score = 0;
    ev_tstamp fallback_until = 0;
    for (size_t k = 0; k < n; k++) {
        size_t idx = (start + k) % n;
        if (idx < TRIED_MAX && (tried & (1ull << idx)))
            continue;
        struct tg_pool *p = pool_get(w, u, &servers[idx]);
        bool down = !tg_health_up(&servers[idx].addr);
        if (down || is_ejected(p, now)) {
            ev_tstamp until = down ? now + DOWN_RANK_S : p->ejected_until;
            if (fallback < 0 || until < fallback_until) {
                fallback = (int)idx;
                fallback_until = until;
            }
            continue;
        }
        if (u->balance == TG_BALANCE_ROUND_ROBIN)
            return (int)idx;
        if (u->balance == TG_BALANCE_HASH) {
            uint64_t score = rendezvous(hash, &servers[idx].addr);
            if (best < 0 || score > best_score) {
                best = (int)idx;
                best_score = score;
            }
            continue;
        }
        unsigned active = p != NULL ? p->active : 0;
        if (best < 0 || active < best_active) {
            best = (int)idx;
            best_active = active;
        }
    }
    /* Only ejected servers left: trying one beats failing outright. */
    return best >= 0 ? best : fallback;
}

/* ---- connections ------------------------------------------------------------------ */

static void close_upconn(struct tg_upconn *uc)
{
    struct tg_context *w = uc->pool->w;
    tg_context_io_stop(w->loop, &uc->watcher);
    tg_io_close(&uc->io);
    tg_buf_put(&w->bufs, uc->in);
    free(uc);
}

static void idle_unlink(struct tg_pool *p, struct tg_upconn *uc)
{
    tg_list_remove(&uc->idle_link);
    p->nidle--;
}

void tg_upstream_watch(struct tg_upconn *uc, int events)
{
    tg_io_watch(&uc->io, uc->pool->w->loop, &uc->watcher, &uc->watching, events);
}

/* A pooled connection became readable: the backend closed it (or sent
 * bytes nobody asked for). Either way it is no longer usable. */
static void idle_io(struct tg_upconn *uc)
{
    if (uc->io.ssl != NULL) {
        /* TLS servers send records that are not data (session tickets):
         * read them; only data or the end of the stream retires it. */
        char b;
        ERR_clear_error();
        int r = SSL_read(uc->io.ssl, &b, 1);
        if (r <= 0 && SSL_get_error(uc->io.ssl, r) == SSL_ERROR_WANT_READ)
            return;
    }
    idle_unlink(uc->pool, uc);
    close_upconn(uc);
}

static void on_upconn_io(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    struct tg_upconn *uc = io->data;
    if (tg_context_defer_io(uc->pool->w, io, revents))
        return;
    if (uc->state == TG_UPCONN_IDLE)
        idle_io(uc);
    else if (uc->on_io != NULL)
        uc->on_io(uc, revents);
}

struct tg_upconn *tg_upstream_acquire(struct tg_context *w, const struct tg_config_upstream *u,
                                      const struct tg_config_server *s, void *owner)
{
    struct tg_pool *p = pool_get(w, u, s);
    if (p == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    p->retired = false; /* a current set has it (again) */
    struct tg_upconn *uc = idle_first(p);
    if (uc != NULL) {
        idle_unlink(p, uc);
        uc->state = TG_UPCONN_ACTIVE; /* the watcher stays as it is */
        uc->reused = true;
    } else {
        if (u->max_connections != 0 && p->active >= u->max_connections) {
            errno = EBUSY;
            return NULL;
        }
        int fd = socket(p->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return NULL;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int rc = connect(fd, (const struct sockaddr *)&p->sa, p->salen);
        if (rc < 0 && errno != EINPROGRESS) {
            int e = errno;
            close(fd);
            errno = e;
            return NULL;
        }
        uc = calloc(1, sizeof(*uc));
        if (uc == NULL) {
            close(fd);
            errno = ENOMEM;
            return NULL;
        }
        uc->io.fd = fd;
        uc->pool = p;
        uc->state = TG_UPCONN_CONNECTING; /* even if connect() finished: see connected() */
        ev_io_init(&uc->watcher, on_upconn_io, fd, EV_WRITE);
        uc->watcher.data = uc;
    }
    uc->owner = owner;
    uc->requests++;
    if (++p->active > p->active_high)
        p->active_high = p->active;
    return uc;
}

int tg_upstream_connected(struct tg_upconn *uc, const struct tg_config_upstream *u)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(uc->io.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err != 0) {
        errno = err;
        return -1;
    }
    if (uc->pool->tls) {
        if (u->tls_client == NULL || (uc->io.ssl = tg_tls_client_connect(
                                          u->tls_client, uc->io.fd, uc->pool->tls_name)) == NULL) {
            errno = ENOMEM;
            return -1;
        }
        uc->state = TG_UPCONN_HANDSHAKE;
        return 0;
    }
    uc->state = TG_UPCONN_ACTIVE;
    return 0;
}

int tg_upstream_handshake(struct tg_upconn *uc, const struct tg_config_upstream *u,
                          const char **reason)
{
    bool want_write = false;
    int rc = tg_tls_handshake(uc->io.ssl, &want_write, reason);
    uc->io.want_write = want_write;
    if (rc == 1) {
        uc->state = TG_UPCONN_ACTIVE;
        if (u->tls_client != NULL)
            tg_tls_client_save_session(u->tls_client, uc->io.ssl);
    }
    return rc;
}

void tg_upstream_release(struct tg_upconn *uc, bool reusable, const struct tg_config_upstream *u)
{
    struct tg_pool *p = uc->pool;
    struct tg_context *w = p->w;
    p->active--;
    uc->owner = NULL;
    /* A slot freed: requests queued at max_connections try again before
     * the loop next waits. */
    if (!tg_list_empty(&w->upwait))
        ev_prepare_start(w->loop, &w->upwait_kick);
    /* Idle connections beyond `keepalive` stay while the last second's
     * busiest moment needed that many at once (the sweep trims them when
     * it no longer does): closing them at once would make every burst
     * above `keepalive` reconnect. */
    if (u != NULL)
        p->keepalive = u->keepalive;
    bool room =
        p->nidle < p->keepalive || (p->keepalive > 0 && p->active + p->nidle < p->active_high);
    bool keep = reusable && u != NULL && !w->draining && room && !p->retired &&
                (u->keepalive_requests == 0 || uc->requests < u->keepalive_requests) &&
                (uc->in == NULL || tg_buf_len(uc->in) == 0);
    if (!keep) {
        close_upconn(uc);
        return;
    }
    tg_buf_put(&w->bufs, uc->in);
    uc->in = NULL;
    uc->state = TG_UPCONN_IDLE;
    uc->reused = false;
    uc->idle_expires = tg_context_now(w) + (double)u->keepalive_timeout_ms / 1000.0;
    uc->on_io = NULL;
    tg_upstream_watch(uc, EV_READ); /* usually already so: no syscall */
    tg_list_push_front(&p->idle, &uc->idle_link);
    p->nidle++;
}

/* The log's name of a server, as faultlog.h keys its state: one per
 * pool, so the same address behind two upstreams is one server (faultlog
 * cuts it, but tells long ones apart by their hash). */
static void fault_key(const struct tg_pool *p, char *out, size_t cap)
{
    snprintf(out, cap, "server %s%s%s", p->name, p->tls ? " tls " : "", p->tls_name);
}

/* The server answered after being down (in any worker): one line, the
 * first success anywhere. */
static void note_up(struct tg_pool *p, const struct tg_config_upstream *u)
{
    char key[FAULT_KEY_MAX];
    fault_key(p, key, sizeof(key));
    double down_s;
    unsigned long failed;
    if (tg_faultlog_set_up(key, &down_s, &failed))
        tg_log_info("upstream %s: server %s is up again after %.1fs down; %lu requests to it "
                    "failed meanwhile",
                    u != NULL ? u->name : "-", p->name, down_s, failed);
}

/* A failure: the server goes down for the log at `down_after` failures
 * in a row here (the first worker to get there logs it), and each failure
 * while it is down is counted for the line that says it is back. */
static void note_failure(struct tg_pool *p, const struct tg_config_upstream *u, unsigned down_after,
                         const char *why, double backoff)
{
    if (p->fails < down_after && !tg_faultlog_any_down())
        return;
    char key[FAULT_KEY_MAX];
    fault_key(p, key, sizeof(key));
    if (p->fails != down_after) {
        tg_faultlog_count_down(key);
        return;
    }
    if (!tg_faultlog_set_down(key, p->fails))
        return;
    char then[64];
    if (backoff > 0)
        snprintf(then, sizeof(then), "skipping it for %.0fs", backoff);
    else
        snprintf(then, sizeof(then), "still trying it (max_fails: 0)");
    tg_log_warn("upstream %s: server %s is down: failed %u times in a row (last: %s); %s",
                u != NULL ? u->name : "-", p->name, p->fails, why != NULL ? why : "-", then);
}

bool tg_upstream_report(struct tg_upconn *uc, const struct tg_config_upstream *u, bool ok,
                        const char *why)
{
    struct tg_pool *p = uc->pool;
    unsigned max_fails = u != NULL ? u->max_fails : EJECT_AFTER_FAILS;
    /* Down for the log even when max_fails 0 never ejects it. */
    unsigned down_after = max_fails > 0 ? max_fails : EJECT_AFTER_FAILS;
    if (ok) {
        /* Lock-free unless this worker saw the server fail, or something
         * went down since its last success here (maybe this server, seen
         * failing by another worker). */
        unsigned long gen = tg_faultlog_down_gen();
        if (p->fails >= down_after || p->down_gen != gen) {
            p->down_gen = gen;
            note_up(p, u);
        }
        p->fails = 0;
        p->ejected_until = 0;
        return false;
    }
    p->fails++;
    double backoff = 0;
    if (max_fails > 0 && p->fails >= max_fails) {
        backoff = u != NULL ? (double)u->eject_ms / 1000.0 : EJECT_DEFAULT_S;
        for (unsigned i = max_fails; i < p->fails && backoff < EJECT_MAX_S; i++)
            backoff *= EJECT_BACKOFF_FACTOR;
        if (backoff > EJECT_MAX_S)
            backoff = EJECT_MAX_S;
        p->ejected_until = tg_context_now(p->w) + backoff;
    }
    note_failure(p, u, down_after, why, backoff);
    return max_fails > 0 && p->fails == max_fails;
}

const char *tg_upstream_name(const struct tg_upconn *uc)
{
    return uc->pool->name;
}

/* idle_expires holds the time the idle connection expires. */
void tg_upstream_sweep(struct tg_context *w, ev_tstamp now)
{
    struct tg_upstream_pools *t = w->pools;
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct tg_pool *p = t->buckets[i]; p != NULL; p = p->hnext) {
            struct tg_list *n;
            /* Idle longest first: those past keepalive_timeout, then
             * those beyond what the last second's peak needed. */
            unsigned peak_extra = p->active_high > p->active ? p->active_high - p->active : 0;
            unsigned want = p->keepalive == 0           ? 0 /* no pooling */
                            : p->keepalive > peak_extra ? p->keepalive
                                                        : peak_extra;
            while ((n = tg_list_last(&p->idle)) != NULL) {
                struct tg_upconn *uc = tg_list_entry(n, struct tg_upconn, idle_link);
                if (uc->idle_expires > now && p->nidle <= want)
                    break;
                idle_unlink(p, uc);
                close_upconn(uc);
            }
            p->active_high = p->active;
        }
    }
    tg_resolver_views_sweep(t->views, t->nviews, retire, w);
}

void tg_upstream_close_idle(struct tg_context *w)
{
    struct tg_upstream_pools *t = w->pools;
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct tg_pool *p = t->buckets[i]; p != NULL; p = p->hnext) {
            struct tg_upconn *uc;
            while ((uc = idle_first(p)) != NULL) {
                idle_unlink(p, uc);
                close_upconn(uc);
            }
        }
    }
}

void tg_upstream_server_state(struct tg_context *w, const struct tg_config_upstream *u,
                              const struct tg_config_server *s,
                              struct tg_upstream_server_state *out)
{
    struct tg_pool *p = pool_get(w, u, s);
    *out = (struct tg_upstream_server_state){0};
    if (p == NULL)
        return;
    out->active = p->active;
    out->idle = p->nidle;
    out->fails = p->fails;
    out->ejected = is_ejected(p, tg_context_now(w));
}
