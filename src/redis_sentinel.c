/* Redis Sentinel client: where is the primary (asked), where did it go
 * (watched). Nothing here sends a command to a Redis server or decides
 * what a link does with an answer: redis.c and redis_sub.c connect, check
 * ROLE, and choose when to ask again.
 *
 * Lifetimes, as in redis_sub.c: commands carry no privdata, callbacks
 * find us through ac->data, cleared before we let go of a context, so a
 * context hiredis frees later only reaches code that sees NULL. A context
 * is freed by us only outside its own connect and disconnect callbacks
 * (there hiredis frees it when they return; inside a reply callback
 * hiredis defers our free until the callback returns). Owner callbacks
 * are the last thing each handler does, so the owner may free us there. */
#include "redis_sentinel.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>

#include "config.h"
#include "log.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 1000
/* The watch's reconnect backoff (as redis.c's next_backoff). */
#define WATCH_BACKOFF_MIN_MS 100
#define WATCH_BACKOFF_MAX_MS 5000
#define BACKOFF_FACTOR 2
#define BACKOFF_JITTER 0.25
#define BACKOFF_ATTEMPTS_MAX 64
#define LINK_NAME_MAX 32 /* longer names are cut in the logs */
#define ERROR_MAX 200    /* a reason, as logged */
#define PORT_MAX 65535
#define SWITCH_CHANNEL "+switch-master"
/* A +switch-master message: NAME OLD-IP OLD-PORT NEW-IP NEW-PORT. */
enum { SW_NAME = 0, SW_OLD_IP, SW_OLD_PORT, SW_NEW_IP, SW_NEW_PORT, SW_FIELDS };
/* A pushed reply: ["subscribe", channel, count] or ["message", channel,
 * payload]. */
enum { PUSH_KIND = 0, PUSH_CHANNEL, PUSH_PAYLOAD, PUSH_ELEMENTS };

struct sentinel {
    char *text; /* as configured, for the logs */
    char ip[INET6_ADDRSTRLEN];
    int port;
    bool ok; /* resolved */
};

struct tg_redis_sentinel {
    struct ev_loop *loop;
    char name[LINK_NAME_MAX];
    char *master, *password;
    struct sentinel *sentinels;
    size_t n;
    int64_t connect_timeout_ms;
    tg_redis_sentinel_found_cb on_found;
    tg_redis_sentinel_switch_cb on_switch;
    void *arg;

    /* discovery */
    redisAsyncContext *ask; /* the sentinel asked now */
    size_t ask_at;          /* ... its index */
    size_t asked;           /* sentinels tried in this round */
    size_t prefer;          /* the one that answered last: asked first */
    bool asking;
    ev_timer ask_timer; /* the round's start, then each sentinel's deadline */
    char ask_why[ERROR_MAX];

    /* watch */
    redisAsyncContext *watch;
    size_t watch_at;
    bool subscribed;
    bool outage_logged; /* one warning per outage, not per attempt */
    unsigned attempt;   /* backoff exponent */
    uint64_t rng;
    ev_timer watch_timer; /* connect attempt, or the deadline for subscribing */
};

/* ---- replies -------------------------------------------------------------- */

static int parse_port(const char *s, size_t n)
{
    if (n == 0 || n > 5)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= PORT_MAX ? v : -1;
}

/* Copies an IP address literal (n bytes) into ip, or returns -1. */
static int copy_ip(const char *s, size_t n, char *ip)
{
    unsigned char tmp[sizeof(struct in6_addr)];
    if (n == 0 || n >= TG_REDIS_SENTINEL_IP_MAX)
        return -1;
    memcpy(ip, s, n);
    ip[n] = '\0';
    if (inet_pton(AF_INET, ip, tmp) != 1 && inet_pton(AF_INET6, ip, tmp) != 1)
        return -1;
    return 0;
}

/* The answer to SENTINEL get-master-addr-by-name: [ip, port], or nil when
 * the sentinel does not know the master. */
static int read_master(const redisReply *r, const char *master, char *ip, int *port, char *why,
                       size_t whylen)
{
    if (r->type == REDIS_REPLY_NIL) {
        snprintf(why, whylen, "does not monitor a master named %s", master);
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, whylen, "%.120s", r->str);
        return -1;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        snprintf(why, whylen, "unexpected answer (type %d)", r->type);
        return -1;
    }
    if (copy_ip(r->element[0]->str, r->element[0]->len, ip) < 0) {
        snprintf(why, whylen, "named the primary by '%.60s', not an IP address",
                 r->element[0]->str);
        return -1;
    }
    if ((*port = parse_port(r->element[1]->str, r->element[1]->len)) < 0) {
        snprintf(why, whylen, "named a bad port '%.20s'", r->element[1]->str);
        return -1;
    }
    return 0;
}

int tg_redis_sentinel_parse_switch(const char *msg, size_t n, const char *master, char *ip,
                                   int *port)
{
    const char *f[SW_FIELDS];
    size_t len[SW_FIELDS];
    size_t i = 0, k = 0;
    while (k < SW_FIELDS) {
        while (i < n && msg[i] == ' ')
            i++;
        if (i == n)
            return -1;
        f[k] = msg + i;
        while (i < n && msg[i] != ' ')
            i++;
        len[k] = (size_t)(msg + i - f[k]);
        k++;
    }
    while (i < n && msg[i] == ' ')
        i++;
    if (i != n || len[SW_NAME] != strlen(master) || memcmp(f[SW_NAME], master, len[SW_NAME]) != 0)
        return -1;
    int p = parse_port(f[SW_NEW_PORT], len[SW_NEW_PORT]);
    if (p < 0 || copy_ip(f[SW_NEW_IP], len[SW_NEW_IP], ip) < 0)
        return -1;
    *port = p;
    return 0;
}

static bool is_ok(const redisReply *r)
{
    return r->type == REDIS_REPLY_STATUS && strcasecmp(r->str, "OK") == 0;
}

/* Lets go of a context: hiredis frees it (now, or when the callback it
 * runs returns) if `free_it`; it is freeing it already otherwise. */
static void release(redisAsyncContext *ac, bool free_it)
{
    if (ac == NULL)
        return;
    ac->data = NULL;
    if (free_it)
        redisAsyncFree(ac);
}

/* A context to sentinel e, attached to the loop, with our callbacks; or
 * NULL with the reason in why. */
static redisAsyncContext *connect_to(struct tg_redis_sentinel *s, const struct sentinel *e,
                                     redisConnectCallback *on_conn,
                                     redisDisconnectCallback *on_disc, char *why, size_t whylen)
{
    if (!e->ok) {
        snprintf(why, whylen, "%s: cannot resolve", e->text);
        return NULL;
    }
    redisAsyncContext *ac = redisAsyncConnect(e->ip, e->port);
    if (ac == NULL || ac->err) {
        snprintf(why, whylen, "%s: connect: %.100s", e->text,
                 ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        return NULL;
    }
    if (redisLibevAttach(s->loop, ac) != REDIS_OK) {
        redisAsyncFree(ac);
        snprintf(why, whylen, "%s: cannot attach to the loop", e->text);
        return NULL;
    }
    ac->data = s;
    redisAsyncSetConnectCallback(ac, on_conn);
    redisAsyncSetDisconnectCallback(ac, on_disc);
    return ac;
}

/* ---- discovery ------------------------------------------------------------ */

static void ask_next(struct tg_redis_sentinel *s);

/* This sentinel failed us: note why, let go, ask the next. */
static void ask_failed(struct tg_redis_sentinel *s, bool free_it, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ask_failed(struct tg_redis_sentinel *s, bool free_it, const char *fmt, ...)
{
    char why[ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    snprintf(s->ask_why, sizeof(s->ask_why), "%.60s: %.130s", s->sentinels[s->ask_at].text, why);
    release(s->ask, free_it);
    s->ask = NULL;
    ev_timer_stop(s->loop, &s->ask_timer);
    ask_next(s);
}

static void on_ask_connect(const redisAsyncContext *ac, int status)
{
    struct tg_redis_sentinel *s = ac->data;
    if (s == NULL || status == REDIS_OK)
        return;
    ask_failed(s, false, "connect: %.100s", ac->c.err ? ac->c.errstr : "failed");
}

static void on_ask_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct tg_redis_sentinel *s = ac->data;
    if (s == NULL)
        return;
    ask_failed(s, false, "%.100s", ac->c.err ? ac->c.errstr : "connection closed");
}

static void on_ask_auth(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct tg_redis_sentinel *s = ac->data;
    const redisReply *r = reply_;
    if (s == NULL || r == NULL || is_ok(r))
        return;
    ask_failed(s, true, "AUTH: %.100s", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
}

static void on_ask_reply(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct tg_redis_sentinel *s = ac->data;
    const redisReply *r = reply_;
    if (s == NULL || r == NULL)
        return;
    char ip[TG_REDIS_SENTINEL_IP_MAX], why[ERROR_MAX];
    int port;
    if (read_master(r, s->master, ip, &port, why, sizeof(why)) < 0) {
        ask_failed(s, true, "%s", why);
        return;
    }
    s->prefer = s->ask_at;
    release(s->ask, true);
    s->ask = NULL;
    ev_timer_stop(s->loop, &s->ask_timer);
    s->asking = false;
    s->on_found(s->arg, ip, port, NULL);
}

static int ask_start(struct tg_redis_sentinel *s, size_t i)
{
    char why[ERROR_MAX];
    redisAsyncContext *ac =
        connect_to(s, &s->sentinels[i], on_ask_connect, on_ask_disconnect, why, sizeof(why));
    if (ac == NULL) {
        snprintf(s->ask_why, sizeof(s->ask_why), "%s", why);
        return -1;
    }
    s->ask = ac;
    s->ask_at = i;
    /* Queued now, written once the socket connects. */
    bool sent = (s->password == NULL ||
                 redisAsyncCommand(ac, on_ask_auth, NULL, "AUTH %s", s->password) == REDIS_OK) &&
                redisAsyncCommand(ac, on_ask_reply, NULL, "SENTINEL get-master-addr-by-name %s",
                                  s->master) == REDIS_OK;
    if (!sent) {
        snprintf(s->ask_why, sizeof(s->ask_why), "%s: command not sent", s->sentinels[i].text);
        release(ac, true);
        s->ask = NULL;
        return -1;
    }
    ev_timer_stop(s->loop, &s->ask_timer);
    ev_timer_set(&s->ask_timer, (double)s->connect_timeout_ms / 1e3, 0.);
    ev_timer_start(s->loop, &s->ask_timer);
    return 0;
}

/* Asks the next sentinel of this round, or answers that none knew. */
static void ask_next(struct tg_redis_sentinel *s)
{
    while (s->asked < s->n) {
        size_t i = (s->prefer + s->asked) % s->n;
        s->asked++;
        if (ask_start(s, i) == 0)
            return;
    }
    char why[ERROR_MAX + 120];
    snprintf(why, sizeof(why), "no sentinel named the primary of %.60s (last: %s)", s->master,
             s->ask_why);
    ev_timer_stop(s->loop, &s->ask_timer);
    s->asking = false;
    s->on_found(s->arg, NULL, 0, why);
}

static void on_ask_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct tg_redis_sentinel *s = w->data;
    if (s->ask != NULL)
        ask_failed(s, true, "no answer within %lld ms", (long long)s->connect_timeout_ms);
    else
        ask_next(s);
}

void tg_redis_sentinel_discover(struct tg_redis_sentinel *s)
{
    if (s->asking)
        return;
    s->asking = true;
    s->asked = 0;
    snprintf(s->ask_why, sizeof(s->ask_why), "none asked");
    /* From the loop, so that the answer never comes before we return. */
    ev_timer_stop(s->loop, &s->ask_timer);
    ev_timer_set(&s->ask_timer, 0., 0.);
    ev_timer_start(s->loop, &s->ask_timer);
}

bool tg_redis_sentinel_discovering(const struct tg_redis_sentinel *s)
{
    return s->asking;
}

/* ---- watch ---------------------------------------------------------------- */

static uint64_t next_random(struct tg_redis_sentinel *s)
{
    /* xorshift64*: jitter only. */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * UINT64_C(2685821657736338717);
}

static ev_tstamp next_backoff(struct tg_redis_sentinel *s)
{
    int64_t ms = WATCH_BACKOFF_MIN_MS;
    for (unsigned i = 0; i < s->attempt && ms < WATCH_BACKOFF_MAX_MS; i++)
        ms *= BACKOFF_FACTOR;
    if (ms > WATCH_BACKOFF_MAX_MS)
        ms = WATCH_BACKOFF_MAX_MS;
    if (s->attempt < BACKOFF_ATTEMPTS_MAX)
        s->attempt++;
    double jitter = (double)(next_random(s) >> 11) / 9007199254740992.0;
    return (double)ms / 1e3 * (1.0 + BACKOFF_JITTER * jitter);
}

static void arm_watch(struct tg_redis_sentinel *s, ev_tstamp after)
{
    ev_timer_stop(s->loop, &s->watch_timer);
    ev_timer_set(&s->watch_timer, after, 0.);
    ev_timer_start(s->loop, &s->watch_timer);
}

/* The watch is gone: the next sentinel is tried after a backoff. */
static void watch_lost(struct tg_redis_sentinel *s, bool free_it, const char *why)
{
    const char *text = s->sentinels[s->watch_at].text;
    release(s->watch, free_it);
    s->watch = NULL;
    if (!s->outage_logged) {
        s->outage_logged = true;
        tg_log_warn("redis %s: %s on sentinel %s (%s); trying the next sentinel", s->name,
                    s->subscribed ? "lost the +switch-master subscription"
                                  : "cannot subscribe to +switch-master",
                    text, why);
    }
    s->subscribed = false;
    s->watch_at = (s->watch_at + 1) % s->n;
    arm_watch(s, next_backoff(s));
}

static void on_watch_connect(const redisAsyncContext *ac, int status)
{
    struct tg_redis_sentinel *s = ac->data;
    if (s == NULL || status == REDIS_OK)
        return;
    char why[ERROR_MAX];
    snprintf(why, sizeof(why), "connect: %.100s", ac->c.err ? ac->c.errstr : "failed");
    watch_lost(s, false, why);
}

static void on_watch_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct tg_redis_sentinel *s = ac->data;
    if (s == NULL)
        return;
    watch_lost(s, false, ac->c.err ? ac->c.errstr : "connection closed");
}

static void on_watch_auth(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct tg_redis_sentinel *s = ac->data;
    const redisReply *r = reply_;
    if (s == NULL || r == NULL || is_ok(r))
        return;
    char why[ERROR_MAX];
    snprintf(why, sizeof(why), "AUTH: %.100s",
             r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    watch_lost(s, true, why);
}

/* The answer queued before SUBSCRIBE: where the primary is as the
 * subscription starts, so nothing between two subscriptions is missed. */
static void on_watch_master(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct tg_redis_sentinel *s = ac->data;
    const redisReply *r = reply_;
    char ip[TG_REDIS_SENTINEL_IP_MAX], why[ERROR_MAX];
    int port;
    if (s == NULL || r == NULL || read_master(r, s->master, ip, &port, why, sizeof(why)) < 0)
        return;
    s->on_switch(s->arg, ip, port);
}

static void on_watch_push(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct tg_redis_sentinel *s = ac->data;
    const redisReply *r = reply_;
    if (s == NULL || r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < PUSH_ELEMENTS ||
        r->element[PUSH_KIND]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = r->element[PUSH_KIND]->str;
    if (strcasecmp(kind, "subscribe") == 0) {
        ev_timer_stop(s->loop, &s->watch_timer);
        s->subscribed = true;
        s->attempt = 0;
        if (s->outage_logged)
            tg_log_info("redis %s: following +switch-master again on sentinel %s", s->name,
                        s->sentinels[s->watch_at].text);
        s->outage_logged = false;
    } else if (strcasecmp(kind, "message") == 0 &&
               r->element[PUSH_PAYLOAD]->type == REDIS_REPLY_STRING) {
        const redisReply *m = r->element[PUSH_PAYLOAD];
        char ip[TG_REDIS_SENTINEL_IP_MAX];
        int port;
        if (tg_redis_sentinel_parse_switch(m->str, m->len, s->master, ip, &port) < 0)
            return; /* another master's, or not one we can follow */
        tg_log_info("redis %s: sentinel %s: the primary of %s is now %s:%d", s->name,
                    s->sentinels[s->watch_at].text, s->master, ip, port);
        s->on_switch(s->arg, ip, port);
    }
}

static void watch_start(struct tg_redis_sentinel *s)
{
    char why[ERROR_MAX];
    redisAsyncContext *ac = connect_to(s, &s->sentinels[s->watch_at], on_watch_connect,
                                       on_watch_disconnect, why, sizeof(why));
    if (ac == NULL) {
        watch_lost(s, false, why);
        return;
    }
    (void)redisEnableKeepAlive(&ac->c); /* finds a silently dead sentinel */
    s->watch = ac;
    bool sent = (s->password == NULL ||
                 redisAsyncCommand(ac, on_watch_auth, NULL, "AUTH %s", s->password) == REDIS_OK) &&
                redisAsyncCommand(ac, on_watch_master, NULL, "SENTINEL get-master-addr-by-name %s",
                                  s->master) == REDIS_OK &&
                redisAsyncCommand(ac, on_watch_push, NULL, "SUBSCRIBE " SWITCH_CHANNEL) == REDIS_OK;
    if (!sent) {
        watch_lost(s, true, "commands not sent");
        return;
    }
    arm_watch(s, (double)s->connect_timeout_ms / 1e3);
}

static void on_watch_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct tg_redis_sentinel *s = w->data;
    if (s->watch == NULL)
        watch_start(s);
    else if (!s->subscribed)
        watch_lost(s, true, "timed out subscribing");
}

bool tg_redis_sentinel_watching(const struct tg_redis_sentinel *s)
{
    return s->subscribed;
}

/* ---- public --------------------------------------------------------------- */

static int64_t or_default(int64_t v, int64_t dflt)
{
    return v > 0 ? v : dflt;
}

/* Resolves "host:port" as the config does; ok stays false on failure. */
static void resolve(struct sentinel *e)
{
    struct tg_config_sockaddr sa;
    char err[300];
    if (tg_config_parse_sockaddr(e->text, &sa, err, sizeof(err)) < 0)
        return;
    const struct sockaddr *a = (const struct sockaddr *)&sa.sa;
    const void *bytes = a->sa_family == AF_INET6
                            ? (const void *)&((const struct sockaddr_in6 *)a)->sin6_addr
                            : (const void *)&((const struct sockaddr_in *)a)->sin_addr;
    if (inet_ntop(a->sa_family, bytes, e->ip, sizeof(e->ip)) == NULL)
        return;
    e->port = ntohs(a->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)a)->sin6_port
                                             : ((const struct sockaddr_in *)a)->sin_port);
    e->ok = true;
}

struct tg_redis_sentinel *tg_redis_sentinel_new(struct ev_loop *loop,
                                                const struct tg_config_redis *cfg,
                                                const struct tg_redis_sentinel_options *opt)
{
    if (cfg->nsentinels == 0 || cfg->master == NULL || opt == NULL || opt->on_found == NULL)
        return NULL;
    struct tg_redis_sentinel *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->loop = loop;
    ev_timer_init(&s->ask_timer, on_ask_timer, 0., 0.);
    s->ask_timer.data = s;
    ev_timer_init(&s->watch_timer, on_watch_timer, 0., 0.);
    s->watch_timer.data = s;
    snprintf(s->name, sizeof(s->name), "%s", opt->name != NULL ? opt->name : "sentinel");
    s->connect_timeout_ms = or_default(opt->connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
    s->on_found = opt->on_found;
    s->on_switch = opt->on_switch;
    s->arg = opt->arg;
    s->n = cfg->nsentinels;
    s->sentinels = calloc(s->n, sizeof(*s->sentinels));
    s->master = strdup(cfg->master);
    s->password = cfg->sentinel_password != NULL ? strdup(cfg->sentinel_password) : NULL;
    bool ok = s->sentinels != NULL && s->master != NULL &&
              (cfg->sentinel_password == NULL || s->password != NULL);
    for (size_t i = 0; ok && i < s->n; i++) {
        s->sentinels[i].text = strdup(cfg->sentinels[i]);
        ok = s->sentinels[i].text != NULL;
        if (ok) {
            resolve(&s->sentinels[i]);
            if (!s->sentinels[i].ok)
                tg_log_error("redis %s: cannot resolve sentinel %s; asking the others", s->name,
                             s->sentinels[i].text);
        }
    }
    if (!ok) {
        tg_redis_sentinel_free(s);
        return NULL;
    }
    s->rng = (uint64_t)(uintptr_t)s ^ (uint64_t)(ev_time() * 1e6) ^ UINT64_C(0x9e3779b97f4a7c15);
    if (s->rng == 0)
        s->rng = 1;
    if (s->on_switch != NULL)
        arm_watch(s, 0.);
    return s;
}

void tg_redis_sentinel_free(struct tg_redis_sentinel *s)
{
    if (s == NULL)
        return;
    ev_timer_stop(s->loop, &s->ask_timer);
    ev_timer_stop(s->loop, &s->watch_timer);
    release(s->ask, true);
    release(s->watch, true);
    for (size_t i = 0; s->sentinels != NULL && i < s->n; i++)
        free(s->sentinels[i].text);
    free(s->sentinels);
    free(s->master);
    free(s->password);
    free(s);
}

/* ---- blocking ------------------------------------------------------------- */

static struct timeval ms_timeval(int64_t ms)
{
    return (struct timeval){(time_t)(ms / 1000), (suseconds_t)(ms % 1000 * 1000)};
}

/* Asks one sentinel. Returns 0 with the address, or -1 with why. */
static int ask_blocking(const struct sentinel *e, const struct tg_config_redis *cfg,
                        struct timeval tv, char *ip, int *port, char *why, size_t whylen)
{
    redisContext *c = redisConnectWithTimeout(e->ip, e->port, tv);
    if (c == NULL || c->err) {
        snprintf(why, whylen, "connect: %.100s", c != NULL ? c->errstr : "out of memory");
        if (c != NULL)
            redisFree(c);
        return -1;
    }
    int rc = -1;
    redisReply *r = NULL;
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(why, whylen, "cannot set the timeout");
        goto out;
    }
    if (cfg->sentinel_password != NULL) {
        r = redisCommand(c, "AUTH %s", cfg->sentinel_password);
        if (r == NULL || !is_ok(r)) {
            snprintf(why, whylen, "AUTH: %.100s",
                     r == NULL                      ? c->errstr
                     : r->type == REDIS_REPLY_ERROR ? r->str
                                                    : "unexpected reply");
            goto out;
        }
        freeReplyObject(r);
    }
    r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", cfg->master);
    if (r == NULL)
        snprintf(why, whylen, "%.100s", c->errstr);
    else
        rc = read_master(r, cfg->master, ip, port, why, whylen);
out:
    if (r != NULL)
        freeReplyObject(r);
    redisFree(c);
    return rc;
}

int tg_redis_sentinel_discover_blocking(const struct tg_config_redis *cfg,
                                        int64_t connect_timeout_ms, char *ip, int *port, char *err,
                                        size_t errlen)
{
    if (cfg->nsentinels == 0 || cfg->master == NULL) {
        snprintf(err, errlen, "no sentinels configured");
        return -1;
    }
    struct timeval tv = ms_timeval(or_default(connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS));
    char last[ERROR_MAX] = "none asked";
    for (size_t i = 0; i < cfg->nsentinels; i++) {
        struct sentinel e = {.text = (char *)cfg->sentinels[i]};
        char why[ERROR_MAX];
        resolve(&e);
        if (!e.ok)
            snprintf(why, sizeof(why), "cannot resolve");
        else if (ask_blocking(&e, cfg, tv, ip, port, why, sizeof(why)) == 0)
            return 0;
        snprintf(last, sizeof(last), "%.60s: %.130s", e.text, why);
    }
    snprintf(err, errlen, "no sentinel named the primary of %s (last: %s)", cfg->master, last);
    return -1;
}
