/* A Redis SUBSCRIBE connection: connect, AUTH, SUBSCRIBE, messages to the
 * owner, reconnect with backoff. No commands besides those, no patterns,
 * one channel; deadlines only for getting subscribed (an idle subscription
 * has nothing to time). With sentinels it subscribes on the primary they
 * name, asks them again after each loss, and moves when they announce a
 * new one (redis_sentinel.c); no ROLE check: a replica relays what is
 * published on its primary, so a subscription there misses nothing.
 *
 * Lifetimes. Nothing hiredis holds points at us: every command is sent
 * with NULL privdata and our callbacks find us through ac->data, which is
 * cleared before we let go of a context. So a context that hiredis frees
 * later (redisAsyncFree from inside its own callback is deferred) can only
 * call into code that sees NULL and returns. Owner callbacks are the last
 * thing each of our handlers does, so the owner may free us there. */
#include "redis_sub.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>

#include "config.h"
#include "log.h"
#include "redis.h"
#include "redis_sentinel.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 1000
#define DEFAULT_BACKOFF_MIN_MS 100
#define DEFAULT_BACKOFF_MAX_MS 5000
/* Reconnect backoff, as redis.c's (next_backoff). */
#define BACKOFF_FACTOR 2
#define BACKOFF_JITTER 0.25
#define BACKOFF_ATTEMPTS_MAX 64
#define LINK_NAME_MAX 32 /* longer names are cut in the logs */
#define HOST_MAX 256     /* longer host names (or paths) are refused */
#define ERROR_MAX 128    /* a reason for losing the link, as logged */

/* A pushed reply: ["subscribe", channel, count] or
 * ["message", channel, payload]. */
enum { PUSH_KIND = 0, PUSH_CHANNEL, PUSH_PAYLOAD, PUSH_ELEMENTS };

struct tg_redis_sub {
    struct ev_loop *loop;
    char name[LINK_NAME_MAX];

    struct tg_config_redis *target; /* a copy: address or sentinels, password */
    char *channel;
    size_t channel_len;
    char host[HOST_MAX]; /* path for unix sockets */
    char ip[INET6_ADDRSTRLEN];
    int port;
    bool is_unix, addr_ok, resolved;
    /* Sentinel (NULL: the address): ip:port is the primary they named,
     * primary_known until it fails us. */
    struct tg_redis_sentinel *sentinel;
    bool primary_known;
    char shown_at[HOST_MAX * 2]; /* where(), for the logs */

    int64_t connect_timeout_ms, backoff_min_ms, backoff_max_ms;
    tg_redis_sub_message_cb on_message;
    tg_redis_sub_state_cb on_state;
    void *arg;

    redisAsyncContext *ac;
    bool subscribed;
    bool outage_logged; /* one warning per outage, not per attempt */
    unsigned attempt;   /* backoff exponent */
    uint64_t rng;
    ev_timer retry_timer;   /* next connect attempt */
    ev_timer connect_timer; /* deadline for getting subscribed */
    struct tg_redis_sub_stats st;
};

static void start_connect(struct tg_redis_sub *s);

/* ---- helpers -------------------------------------------------------------- */

static uint64_t next_random(struct tg_redis_sub *s)
{
    /* xorshift64*: jitter only. */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * UINT64_C(2685821657736338717);
}

/* backoff_min doubling per attempt up to backoff_max, plus 0..25% jitter so
 * that workers do not reconnect in lockstep. */
static ev_tstamp next_backoff(struct tg_redis_sub *s)
{
    int64_t ms = s->backoff_min_ms;
    for (unsigned i = 0; i < s->attempt && ms < s->backoff_max_ms; i++)
        ms *= BACKOFF_FACTOR;
    if (ms > s->backoff_max_ms)
        ms = s->backoff_max_ms;
    if (s->attempt < BACKOFF_ATTEMPTS_MAX)
        s->attempt++;
    /* 53 random bits as a double in [0, 1) */
    double jitter = (double)(next_random(s) >> 11) / 9007199254740992.0;
    return (double)ms / 1e3 * (1.0 + BACKOFF_JITTER * jitter);
}

static void arm_retry(struct tg_redis_sub *s, ev_tstamp after)
{
    ev_timer_stop(s->loop, &s->retry_timer);
    ev_timer_set(&s->retry_timer, after, 0.);
    ev_timer_start(s->loop, &s->retry_timer);
}

static const char *where(struct tg_redis_sub *s)
{
    if (s->sentinel == NULL)
        return s->target->address != NULL ? s->target->address : "(no address)";
    if (s->ip[0] != '\0')
        snprintf(s->shown_at, sizeof(s->shown_at),
                 strchr(s->ip, ':') != NULL ? "[%s]:%d (primary of %s)" : "%s:%d (primary of %s)",
                 s->ip, s->port, s->target->master);
    else
        snprintf(s->shown_at, sizeof(s->shown_at), "the primary of %s", s->target->master);
    return s->shown_at;
}

/* Forgets the context (already freed or being freed by hiredis, or freed
 * here when `free_it`), and schedules the next attempt. Returns whether we
 * were subscribed: the caller tells the owner, last. */
static bool lose(struct tg_redis_sub *s, const char *why, bool free_it)
{
    redisAsyncContext *ac = s->ac;
    s->ac = NULL;
    if (ac != NULL) {
        ac->data = NULL;
        if (free_it)
            redisAsyncFree(ac); /* deferred by hiredis inside its callback */
    }
    ev_timer_stop(s->loop, &s->connect_timer);
    bool was = s->subscribed;
    s->subscribed = false;
    s->primary_known = false; /* with sentinels: ask them before the next attempt */
    if (was)
        s->st.losses++;
    else
        s->st.failures++;
    if (!s->outage_logged) {
        s->outage_logged = true;
        if (was)
            tg_log_warn("redis %s: subscription on %s lost (%s), "
                        "resubscribing",
                        s->name, where(s), why);
        else
            tg_log_warn("redis %s: cannot subscribe on %s (%s), retrying", s->name, where(s), why);
    }
    arm_retry(s, next_backoff(s));
    return was;
}

static void drop(struct tg_redis_sub *s, const char *why)
{
    if (lose(s, why, true) && s->on_state != NULL)
        s->on_state(s->arg, false);
}

/* ---- hiredis callbacks ---------------------------------------------------- */

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct tg_redis_sub *s = ac->data;
    if (s == NULL || status == REDIS_OK)
        return; /* connected: the subscribe confirmation brings us up */
    char why[ERROR_MAX];
    snprintf(why, sizeof(why), "connect: %.100s", ac->c.err ? ac->c.errstr : "failed");
    /* hiredis frees the context after we return. */
    lose(s, why, false); /* never subscribed: no owner callback */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct tg_redis_sub *s = ac->data;
    if (s == NULL)
        return;
    char why[ERROR_MAX];
    snprintf(why, sizeof(why), "%.100s", ac->c.err ? ac->c.errstr : "connection closed");
    if (lose(s, why, false) && s->on_state != NULL)
        s->on_state(s->arg, false);
}

static void on_sub_reply(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct tg_redis_sub *s = ac->data;
    const redisReply *r = reply_;
    if (s == NULL || r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < PUSH_ELEMENTS ||
        r->element[PUSH_KIND]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = r->element[PUSH_KIND]->str;
    if (strcasecmp(kind, "subscribe") == 0) {
        ev_timer_stop(s->loop, &s->connect_timer);
        s->subscribed = true;
        s->attempt = 0;
        s->st.subscribes++;
        if (s->outage_logged)
            tg_log_info("redis %s: subscribed again on %s", s->name, where(s));
        s->outage_logged = false;
        if (s->on_state != NULL)
            s->on_state(s->arg, true);
    } else if (strcasecmp(kind, "message") == 0 &&
               r->element[PUSH_PAYLOAD]->type == REDIS_REPLY_STRING) {
        const redisReply *payload = r->element[PUSH_PAYLOAD];
        s->st.messages++;
        s->on_message(s->arg, payload->str, payload->len);
    }
}

static void send_subscribe(struct tg_redis_sub *s)
{
    if (redisAsyncCommand(s->ac, on_sub_reply, NULL, "SUBSCRIBE %b", s->channel, s->channel_len) !=
        REDIS_OK)
        drop(s, "SUBSCRIBE not sent");
}

static void on_auth_reply(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct tg_redis_sub *s = ac->data;
    const redisReply *r = reply_;
    if (s == NULL || r == NULL)
        return;
    if (r->type == REDIS_REPLY_STATUS && strcasecmp(r->str, "OK") == 0) {
        send_subscribe(s);
        return;
    }
    char why[ERROR_MAX];
    snprintf(why, sizeof(why), "AUTH: %.80s",
             r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    drop(s, why);
}

/* ---- connecting ----------------------------------------------------------- */

static int resolve(struct tg_redis_sub *s)
{
    if (!s->addr_ok)
        return -1;
    if (s->is_unix) {
        s->resolved = true;
        return 0;
    }
    unsigned char tmp[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, s->host, tmp) == 1 || inet_pton(AF_INET6, s->host, tmp) == 1) {
        snprintf(s->ip, sizeof(s->ip), "%.*s", (int)sizeof(s->ip) - 1, s->host);
        s->resolved = true;
        return 0;
    }
    /* A name: resolved here, IPv4 first, as redis.c does. */
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(s->host, NULL, &hints, &res);
    if (rc != 0) {
        hints.ai_family = AF_UNSPEC;
        rc = getaddrinfo(s->host, NULL, &hints, &res);
    }
    if (rc != 0 || res == NULL)
        return -1;
    const void *a = res->ai_family == AF_INET6
                        ? (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
                        : (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    const char *ok = inet_ntop(res->ai_family, a, s->ip, sizeof(s->ip));
    freeaddrinfo(res);
    if (ok == NULL)
        return -1;
    s->resolved = true;
    return 0;
}

static void start_connect(struct tg_redis_sub *s)
{
    if (s->ac != NULL)
        return;
    if (s->sentinel != NULL && !s->primary_known) {
        tg_redis_sentinel_discover(s->sentinel); /* on_found goes on */
        return;
    }
    if (!s->resolved && resolve(s) < 0) {
        lose(s, s->addr_ok ? "cannot resolve" : "bad address", false);
        return;
    }
    redisAsyncContext *ac =
        s->is_unix ? redisAsyncConnectUnix(s->host) : redisAsyncConnect(s->ip, s->port);
    if (ac == NULL || ac->err) {
        char why[ERROR_MAX];
        snprintf(why, sizeof(why), "connect: %.100s", ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        lose(s, why, false);
        return;
    }
    if (redisLibevAttach(s->loop, ac) != REDIS_OK) {
        redisAsyncFree(ac);
        lose(s, "cannot attach to the loop", false);
        return;
    }
    if (!s->is_unix)
        (void)redisEnableKeepAlive(&ac->c); /* finds a silently dead peer */
    ac->data = s;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    s->ac = ac;
    ev_timer_stop(s->loop, &s->connect_timer);
    ev_timer_set(&s->connect_timer, (double)s->connect_timeout_ms / 1e3, 0.);
    ev_timer_start(s->loop, &s->connect_timer);
    /* Queued now, written once the socket connects. */
    if (s->target->password != NULL) {
        if (redisAsyncCommand(ac, on_auth_reply, NULL, "AUTH %s", s->target->password) != REDIS_OK)
            drop(s, "AUTH not sent");
    } else {
        send_subscribe(s);
    }
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    start_connect(w->data);
}

static void on_connect_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct tg_redis_sub *s = w->data;
    if (s->ac != NULL && !s->subscribed)
        drop(s, "timed out subscribing");
}

/* ---- sentinel ------------------------------------------------------------ */

static void set_primary(struct tg_redis_sub *s, const char *ip, int port)
{
    snprintf(s->ip, sizeof(s->ip), "%s", ip);
    snprintf(s->host, sizeof(s->host), "%s", ip);
    s->port = port;
    s->is_unix = false;
    s->addr_ok = true;
    s->resolved = true;
    s->primary_known = true;
}

static void on_found(void *arg, const char *ip, int port, const char *why)
{
    struct tg_redis_sub *s = arg;
    if (s->ac != NULL)
        return; /* a switch connected us meanwhile */
    if (ip == NULL) {
        lose(s, why, false); /* not subscribed: no owner callback */
        return;
    }
    set_primary(s, ip, port);
    start_connect(s);
}

/* Moves to the primary the sentinels announced, unless it is the one we
 * use (or that just failed us). */
static void on_switch(void *arg, const char *ip, int port)
{
    struct tg_redis_sub *s = arg;
    if ((strcmp(ip, s->ip) == 0 && port == s->port) || tg_redis_sentinel_discovering(s->sentinel))
        return;
    set_primary(s, ip, port);
    s->attempt = 0;
    redisAsyncContext *ac = s->ac;
    bool was = s->subscribed;
    s->ac = NULL;
    s->subscribed = false;
    ev_timer_stop(s->loop, &s->connect_timer);
    if (ac != NULL) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    arm_retry(s, 0.);
    if (was && s->on_state != NULL)
        s->on_state(s->arg, false);
}

/* ---- public --------------------------------------------------------------- */

static int set_target(struct tg_redis_sub *s, const struct tg_config_redis *cfg,
                      const char *channel)
{
    struct tg_config_redis *target = tg_redis_config_dup(cfg);
    char *ch = strdup(channel != NULL ? channel : "");
    struct tg_redis_sentinel *sentinel = NULL;
    if (target != NULL && ch != NULL && target->nsentinels > 0) {
        struct tg_redis_sentinel_options so = {
            .name = s->name,
            .connect_timeout_ms = s->connect_timeout_ms,
            .on_found = on_found,
            .on_switch = on_switch,
            .arg = s,
        };
        sentinel = tg_redis_sentinel_new(s->loop, target, &so);
    }
    if (target == NULL || ch == NULL || (target->nsentinels > 0 && sentinel == NULL)) {
        tg_redis_config_free(target);
        free(ch);
        return -1;
    }
    tg_redis_sentinel_free(s->sentinel);
    tg_redis_config_free(s->target);
    free(s->channel);
    s->target = target;
    s->sentinel = sentinel;
    s->channel = ch;
    s->channel_len = strlen(ch);
    s->resolved = false;
    s->primary_known = false;
    s->ip[0] = '\0';
    s->port = 0;
    if (sentinel != NULL) {
        s->addr_ok = false; /* until the sentinels name the primary */
        return 0;
    }
    s->addr_ok = tg_redis_parse_address(target->address, s->host, sizeof(s->host), &s->port,
                                        &s->is_unix) == 0;
    if (!s->addr_ok)
        tg_log_error("redis %s: bad address \"%s\"", s->name, where(s));
    else
        (void)resolve(s); /* retried at each attempt if it fails */
    return 0;
}

static int64_t or_default(int64_t v, int64_t dflt)
{
    return v > 0 ? v : dflt;
}

struct tg_redis_sub *tg_redis_sub_new(struct ev_loop *loop, const struct tg_config_redis *cfg,
                                      const char *channel, const struct tg_redis_sub_options *opt)
{
    if (opt == NULL || opt->on_message == NULL)
        return NULL;
    struct tg_redis_sub *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->loop = loop;
    snprintf(s->name, sizeof(s->name), "%s", opt->name != NULL ? opt->name : "sub");
    s->connect_timeout_ms = or_default(opt->connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
    s->backoff_min_ms = or_default(opt->backoff_min_ms, DEFAULT_BACKOFF_MIN_MS);
    s->backoff_max_ms = or_default(opt->backoff_max_ms, DEFAULT_BACKOFF_MAX_MS);
    if (s->backoff_max_ms < s->backoff_min_ms)
        s->backoff_max_ms = s->backoff_min_ms;
    s->on_message = opt->on_message;
    s->on_state = opt->on_state;
    s->arg = opt->arg;
    s->rng = (uint64_t)(uintptr_t)s ^ (uint64_t)(ev_time() * 1e6) ^ UINT64_C(0x9e3779b97f4a7c15);
    if (s->rng == 0)
        s->rng = 1;
    if (set_target(s, cfg, channel) < 0) {
        free(s);
        return NULL;
    }
    ev_timer_init(&s->retry_timer, on_retry, 0., 0.);
    s->retry_timer.data = s;
    ev_timer_init(&s->connect_timer, on_connect_timeout, 0., 0.);
    s->connect_timer.data = s;
    arm_retry(s, 0.);
    return s;
}

static bool same_str(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

bool tg_redis_sub_configure(struct tg_redis_sub *s, const struct tg_config_redis *cfg,
                            const char *channel)
{
    if (tg_redis_config_same_server(cfg, s->target) &&
        same_str(channel != NULL ? channel : "", s->channel))
        return false;
    if (set_target(s, cfg, channel) < 0) {
        tg_log_error("redis %s: out of memory applying the new config, "
                     "keeping the old one",
                     s->name);
        return false;
    }
    redisAsyncContext *ac = s->ac;
    bool was = s->subscribed;
    s->ac = NULL;
    s->subscribed = false;
    s->attempt = 0;
    s->outage_logged = false;
    ev_timer_stop(s->loop, &s->connect_timer);
    if (ac != NULL) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    arm_retry(s, 0.);
    if (was && s->on_state != NULL)
        s->on_state(s->arg, false);
    return true;
}

void tg_redis_sub_free(struct tg_redis_sub *s)
{
    if (s == NULL)
        return;
    ev_timer_stop(s->loop, &s->retry_timer);
    ev_timer_stop(s->loop, &s->connect_timer);
    if (s->ac != NULL) {
        redisAsyncContext *ac = s->ac;
        s->ac = NULL;
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    tg_redis_sentinel_free(s->sentinel);
    tg_redis_config_free(s->target);
    free(s->channel);
    free(s);
}

bool tg_redis_sub_subscribed(const struct tg_redis_sub *s)
{
    return s->subscribed;
}

void tg_redis_sub_stats(const struct tg_redis_sub *s, struct tg_redis_sub_stats *out)
{
    *out = s->st;
}
