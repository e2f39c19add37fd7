/* One async Redis connection per owner and loop: connect, AUTH/SELECT,
 * per-command deadlines, circuit breaker, reconnect with backoff. It knows
 * nothing of what the commands mean: callers judge replies (a fault or
 * not) and the breaker counts. No Redis Cluster, TLS or subscribe mode
 * here. Also a blocking connect (AUTH, SELECT, deadlines, the reply-size
 * guard) for threads of their own that may wait.
 *
 * Sentinel. A link configured with sentinels asks them for the primary
 * (redis_sentinel.c) before each connect that follows a fault, connects
 * there and checks ROLE (a demoted primary answers "slave": a fault, ask
 * again); a -READONLY reply or the circuit opening drops the connection
 * so the next attempt asks again; and the sentinel watch's +switch-master
 * moves the link to the new primary at once. Owners see the same states
 * as for a plain address: DOWN while no primary answers.
 *
 * Lifetimes. hiredis owns each command's callback until it calls it, once:
 * with the reply, or with NULL when the context is freed (that includes
 * redisAsyncFree, even from our own code). So a tg_redis_cmd lives until
 * that call, whatever happened to it before (timed out, cancelled, its
 * link freed: then cmd->r is NULL and the call only frees it). Commands
 * are unlinked and freed only in on_reply, and on_reply only runs from
 * hiredis: from a read event, or from redisAsyncFree, which we call only
 * when no callback of ours is running (depth == 0). Dropping or freeing
 * asked for from inside a callback is deferred to settle(), the last thing
 * every entry point does, so no list walk ever sees a command vanish. */
#include "redis.h"

#include <arpa/inet.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libev.h>

#include "config.h"
#include "list.h"
#include "log.h"
#include "redis_sentinel.h"
#include "str.h"

#define DEFAULT_TIMEOUT_MS 50
#define DEFAULT_CONNECT_TIMEOUT_MS 1000
#define DEFAULT_BREAKER_FAULTS 5
#define DEFAULT_BACKOFF_MIN_MS 100
#define DEFAULT_BACKOFF_MAX_MS 5000
#define DEAD_MIN_MS 1000
/* Largest array a reply may announce. hiredis 0.14 callocs the element
 * array up front, so "*2000000000\r\n" from a broken server would be a
 * 16 GB allocation; no command of ours expects more than this. */
#define MAX_REPLY_ELEMENTS (1 << 20)
/* Deadlines this close count as passed, so the timer never re-arms for a
 * few microseconds. */
#define SLACK 1e-4
/* Reconnect backoff (next_backoff). The attempt count stops at
 * BACKOFF_ATTEMPTS_MAX: the delay reached backoff_max long before, and the
 * count never wraps. */
#define BACKOFF_FACTOR 2
#define BACKOFF_JITTER 0.25
#define BACKOFF_ATTEMPTS_MAX 64
/* No reply at all for this many command timeouts (and at least
 * DEAD_MIN_MS): the link is dead. */
#define DEAD_TIMEOUTS 10
/* A command this size or smaller is formatted on the stack. */
#define RESP_STACK_SIZE 4096
/* RESP framing: '*' or '$', a length of at most 20 digits (a uint64),
 * CRLF; and the CRLF after each argument. */
#define RESP_HEAD_MAX (1 + 20 + 2)
#define CRLF_LEN 2
/* Arguments of our own commands (AUTH password, SELECT db, PING). */
#define INTERNAL_ARGS_MAX 3
#define UNIX_PREFIX "unix:"
#define UNIX_PREFIX_LEN (sizeof(UNIX_PREFIX) - 1)
/* sizeof(sockaddr_un.sun_path) on Linux, the NUL included. */
#define UNIX_PATH_MAX 108
#define PORT_MAX 65535
#define LINK_NAME_MAX 32 /* longer names are cut in the logs */
#define HOST_MAX 256     /* longer host names (or paths) are refused */
#define ERROR_MAX 128    /* a reason for a fault, as logged */

enum link_state {
    LINK_DOWN = 0,  /* no context; the retry timer will connect */
    LINK_HANDSHAKE, /* context exists, AUTH/SELECT/PING in flight */
    LINK_UP,
};

enum cmd_kind {
    CMD_USER = 0,
    CMD_HANDSHAKE, /* AUTH, SELECT: +OK expected */
    CMD_HELLO,     /* the PING ending the handshake: +PONG brings us UP */
    CMD_PROBE,     /* PING while the circuit is open */
};

struct tg_redis_cmd {
    struct tg_list link; /* in r->cmds */
    struct tg_redis *r;  /* NULL once the link is freed: only free us */
    tg_redis_reply_cb cb;
    void *arg;
    ev_tstamp sent, deadline;
    uint64_t gen;       /* the connection it was sent on */
    unsigned char kind; /* enum cmd_kind */
    bool done;          /* no callback any more: delivered, timed out,
                               cancelled or failed */
};

struct tg_redis {
    struct ev_loop *loop;
    char name[LINK_NAME_MAX];

    /* config */
    struct tg_config_redis *target; /* a copy: address or sentinels, password, db */
    int64_t timeout_ms;
    char host[HOST_MAX]; /* path for unix sockets */
    char ip[INET6_ADDRSTRLEN];
    int port;
    bool is_unix, addr_ok, resolved;
    /* Sentinel: NULL for a plain address. ip:port is then the primary
     * the sentinels named last; primary_known until it fails us. */
    struct tg_redis_sentinel *sentinel;
    bool primary_known;
    char server[HOST_MAX + 8];   /* tg_redis_server's answer */
    char shown_at[HOST_MAX * 2]; /* where(), for the logs */

    /* options, defaults applied */
    int64_t connect_timeout_ms, backoff_min_ms, backoff_max_ms;
    int64_t dead_opt_ms; /* as given: 0 derives it from timeout_ms */
    unsigned breaker_faults;
    tg_redis_state_cb on_state;
    void *arg;

    redisAsyncContext *ac;
    uint64_t gen; /* bumped whenever ac is replaced or dropped */
    enum link_state link;
    bool settled; /* a connect attempt finished since config:
                               CONNECTING becomes DOWN */
    bool open;    /* circuit breaker */
    bool probing;
    unsigned faults;  /* consecutive */
    unsigned attempt; /* backoff exponent */
    enum tg_redis_state shown;
    char last_error[ERROR_MAX];

    struct tg_list cmds; /* of tg_redis_cmd.link, oldest first */
    ev_timer deadline_timer;
    ev_tstamp deadline_at;
    ev_timer retry_timer;

    int depth;    /* our callbacks running (user or internal) */
    bool closing; /* tg_redis_free called */
    bool want_free, want_drop, drop_fault;
    char drop_why[ERROR_MAX];

    uint64_t rng;
    struct tg_redis_stats st;
};

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);
static void settle(struct tg_redis *r);
static void drop_link(struct tg_redis *r, const char *why, bool is_fault);

/* ---- reply guard -------------------------------------------------------
 * hiredis 0.14 asserts (aborts the process) when a reply arrives with no
 * command waiting for it on a normal connection; 1.x ignores it. A broken
 * server or a proxy in the way must not take the gateway down, so the
 * reader's object constructors refuse a top-level reply nobody asked for:
 * the reader then fails ("out of memory" in hiredis' words, our reason in
 * unsolicited_reason) and hiredis drops the connection as for garbage. The
 * reader's privdata is its context, which outlives the reader. */

static redisReplyObjectFunctions default_fns, guard_fns;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static _Thread_local const char *guard_reason;

static bool refuse_task(const redisReadTask *t)
{
    if (t->parent != NULL)
        return false;
    const redisAsyncContext *ac = t->privdata;
    if (ac == NULL || ac->replies.head != NULL ||
        (ac->c.flags & (REDIS_SUBSCRIBED | REDIS_MONITORING)))
        return false;
    guard_reason = "unsolicited reply from the server";
    return true;
}

static void *guard_string(const redisReadTask *t, char *s, size_t n)
{
    return refuse_task(t) ? NULL : default_fns.createString(t, s, n);
}

static void *guard_array(const redisReadTask *t, int n)
{
    if (n > MAX_REPLY_ELEMENTS) {
        guard_reason = "reply array too large";
        return NULL;
    }
    return refuse_task(t) ? NULL : default_fns.createArray(t, n);
}

static void *guard_integer(const redisReadTask *t, long long v)
{
    return refuse_task(t) ? NULL : default_fns.createInteger(t, v);
}

static void *guard_nil(const redisReadTask *t)
{
    return refuse_task(t) ? NULL : default_fns.createNil(t);
}

static void guard_init(void)
{
    redisReader *rd = redisReaderCreate();
    if (rd == NULL)
        return;
    default_fns = *rd->fn;
    redisReaderFree(rd);
    guard_fns = default_fns;
    guard_fns.createString = guard_string;
    guard_fns.createArray = guard_array;
    guard_fns.createInteger = guard_integer;
    guard_fns.createNil = guard_nil;
}

/* A blocking context: its reader's privdata stays NULL, so only the
 * array bound applies (a blocking client reads exactly the replies it
 * waits for). */
static void install_guard_blocking(redisContext *c)
{
    pthread_once(&guard_once, guard_init);
    if (guard_fns.createString == NULL || c->reader == NULL)
        return;
    c->reader->fn = &guard_fns;
    c->reader->privdata = NULL;
}

static void install_guard(redisAsyncContext *ac)
{
    pthread_once(&guard_once, guard_init);
    if (guard_fns.createString == NULL || ac->c.reader == NULL)
        return;
    ac->c.reader->fn = &guard_fns;
    ac->c.reader->privdata = ac;
}

/* ---- small helpers ------------------------------------------------------ */

static void set_error(struct tg_redis *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_error(struct tg_redis *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->last_error, sizeof(r->last_error), fmt, ap);
    va_end(ap);
}

static uint64_t next_random(struct tg_redis *r)
{
    /* xorshift64*: jitter only, not security. */
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return r->rng * UINT64_C(2685821657736338717);
}

/* backoff_min doubling per attempt up to backoff_max, plus 0..25% jitter
 * so that workers (and gateways) do not reconnect in lockstep. */
static ev_tstamp next_backoff(struct tg_redis *r)
{
    int64_t ms = r->backoff_min_ms;
    for (unsigned i = 0; i < r->attempt && ms < r->backoff_max_ms; i++)
        ms *= BACKOFF_FACTOR;
    if (ms > r->backoff_max_ms)
        ms = r->backoff_max_ms;
    if (r->attempt < BACKOFF_ATTEMPTS_MAX)
        r->attempt++;
    /* 53 random bits as a double in [0, 1) */
    double jitter = (double)(next_random(r) >> 11) / 9007199254740992.0;
    return (double)ms / 1e3 * (1.0 + BACKOFF_JITTER * jitter);
}

static void arm_retry(struct tg_redis *r, ev_tstamp after)
{
    if (r->closing)
        return;
    ev_timer_stop(r->loop, &r->retry_timer);
    ev_timer_set(&r->retry_timer, after, 0.);
    ev_timer_start(r->loop, &r->retry_timer);
}

static void arm_deadline(struct tg_redis *r, ev_tstamp at)
{
    if (r->closing)
        return;
    if (ev_is_active(&r->deadline_timer)) {
        if (at >= r->deadline_at)
            return;
        ev_timer_stop(r->loop, &r->deadline_timer);
    }
    ev_tstamp after = at - ev_now(r->loop);
    r->deadline_at = at;
    ev_timer_set(&r->deadline_timer, after > 0 ? after : 0., 0.);
    ev_timer_start(r->loop, &r->deadline_timer);
}

static enum tg_redis_state visible(const struct tg_redis *r)
{
    if (r->open)
        return TG_REDIS_CIRCUIT_OPEN;
    if (r->link == LINK_UP)
        return TG_REDIS_UP;
    return r->settled ? TG_REDIS_DOWN : TG_REDIS_CONNECTING;
}

static const char *where(struct tg_redis *r)
{
    if (r->sentinel == NULL)
        return r->target->address != NULL ? r->target->address : "(no address)";
    if (r->server[0] != '\0')
        snprintf(r->shown_at, sizeof(r->shown_at), "%s (primary of %s)", r->server,
                 r->target->master);
    else
        snprintf(r->shown_at, sizeof(r->shown_at), "the primary of %s", r->target->master);
    return r->shown_at;
}

/* Logs and reports a change of the visible state: once per change, so an
 * outage is one "down" line however many reconnects it takes. */
static void notify(struct tg_redis *r)
{
    enum tg_redis_state now = visible(r), old = r->shown;
    if (now == old)
        return;
    r->shown = now;
    switch (now) {
    case TG_REDIS_UP:
        if (old == TG_REDIS_CIRCUIT_OPEN)
            tg_log_info("redis %s: circuit closed, %s answers again", r->name, where(r));
        else
            tg_log_info("redis %s: connected to %s", r->name, where(r));
        break;
    case TG_REDIS_DOWN:
        tg_log_warn("redis %s: %s unreachable (%s), reconnecting", r->name, where(r),
                    r->last_error);
        break;
    case TG_REDIS_CIRCUIT_OPEN:
        tg_log_warn("redis %s: circuit open after %u consecutive faults "
                    "(last: %s)",
                    r->name, r->faults, r->last_error);
        break;
    case TG_REDIS_CONNECTING:
        break;
    }
    if (r->on_state != NULL) {
        r->depth++;
        r->on_state(r->arg, old, now);
        r->depth--;
    }
}

static void fault(struct tg_redis *r, const char *why)
{
    r->st.faults++;
    if (r->faults < UINT32_MAX)
        r->faults++;
    if (why != NULL)
        set_error(r, "%s", why);
    if (!r->open && r->faults >= r->breaker_faults) {
        r->open = true;
        r->probing = false;
        /* Down: the reconnect is already scheduled and its handshake is
         * the probe. Up: probe with PING after a backoff; or, with
         * sentinels, drop the connection, so that the reconnect asks them
         * where the primary is now. */
        if (r->link == LINK_UP && r->sentinel != NULL) {
            char last[ERROR_MAX];
            snprintf(last, sizeof(last), "%s", r->last_error);
            drop_link(r, last, true);
        } else if (r->link == LINK_UP)
            arm_retry(r, next_backoff(r));
    }
    notify(r);
}

/* A usable reply. `user`: from a user command, which also proves the link
 * carries real traffic again, so the backoff starts afresh. */
static void success(struct tg_redis *r, bool user)
{
    r->faults = 0;
    if (user)
        r->attempt = 0;
    if (r->open && r->link == LINK_UP) {
        r->open = false;
        r->probing = false;
        ev_timer_stop(r->loop, &r->retry_timer);
    }
    notify(r);
}

/* ---- commands ------------------------------------------------------------ */

/* The command in RESP (an array of bulk strings), written in one pass:
 * hiredis' own formatter (redisAsyncCommandArgv) builds it with
 * sdscatfmt, which cost more than the rest of a rate-limited request in
 * the Redis benchmark. Written into `stack` (cap bytes) when it fits, else
 * into a malloc'd buffer; returns the buffer, or NULL. */
static char *format_resp(int argc, const char *const *argv, const size_t *argvlen, char *stack,
                         size_t cap, size_t *out_len)
{
    size_t len = RESP_HEAD_MAX;
    for (int i = 0; i < argc; i++)
        len += RESP_HEAD_MAX + argvlen[i] + CRLF_LEN;
    char *buf = len <= cap ? stack : malloc(len);
    if (buf == NULL)
        return NULL;
    char *o = buf;
    *o++ = '*';
    o += tg_str_u64(o, (unsigned long long)argc);
    *o++ = '\r';
    *o++ = '\n';
    for (int i = 0; i < argc; i++) {
        *o++ = '$';
        o += tg_str_u64(o, argvlen[i]);
        *o++ = '\r';
        *o++ = '\n';
        memcpy(o, argv[i], argvlen[i]);
        o += argvlen[i];
        *o++ = '\r';
        *o++ = '\n';
    }
    *out_len = (size_t)(o - buf);
    return buf;
}

static struct tg_redis_cmd *send_cmd(struct tg_redis *r, enum cmd_kind kind, int argc,
                                     const char *const *argv, const size_t *argvlen,
                                     int64_t timeout_ms, tg_redis_reply_cb cb, void *arg)
{
    if (r->ac == NULL || r->closing)
        return NULL;
    struct tg_redis_cmd *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    c->kind = (unsigned char)kind;
    c->gen = r->gen;
    c->sent = ev_now(r->loop);
    c->deadline = c->sent + (double)timeout_ms / 1e3;
    /* hiredis copies the command into its output buffer and owns the
     * callback from here on. It refuses while its context is going away. */
    char stack[RESP_STACK_SIZE];
    size_t len;
    char *resp = format_resp(argc, argv, argvlen, stack, sizeof(stack), &len);
    bool sent =
        resp != NULL && redisAsyncFormattedCommand(r->ac, on_reply, c, resp, len) == REDIS_OK;
    if (resp != stack)
        free(resp);
    if (!sent) {
        free(c);
        return NULL;
    }
    tg_list_push_back(&r->cmds, &c->link);
    r->st.sent++;
    arm_deadline(r, c->deadline);
    return c;
}

static struct tg_redis_cmd *send_internal(struct tg_redis *r, enum cmd_kind kind, int argc,
                                          const char *const *argv, int64_t timeout_ms)
{
    size_t len[INTERNAL_ARGS_MAX];
    for (int i = 0; i < argc && i < INTERNAL_ARGS_MAX; i++)
        len[i] = strlen(argv[i]);
    return send_cmd(r, kind, argc, argv, len, timeout_ms, NULL, NULL);
}

/* Delivers NULL to every live user command of connection `gen` (every
 * generation if gen is UINT64_MAX). Faults counted if `is_fault`. */
static void fail_cmds(struct tg_redis *r, uint64_t gen, bool is_fault)
{
    r->depth++;
    struct tg_list *head = &r->cmds;
    for (struct tg_list *n = head->next, *next; n != head; n = next) {
        next = n->next;
        struct tg_redis_cmd *c = tg_list_entry(n, struct tg_redis_cmd, link);
        if (c->done || (gen != UINT64_MAX && c->gen != gen))
            continue;
        c->done = true;
        if (c->kind == CMD_USER && c->cb != NULL)
            c->cb(c->arg, NULL);
        if (is_fault && c->kind == CMD_USER)
            fault(r, NULL);
    }
    r->depth--;
}

/* After a fault: with sentinels, the next attempt asks them first. */
static void schedule_reconnect(struct tg_redis *r)
{
    r->primary_known = false;
    arm_retry(r, next_backoff(r));
}

/* Drops the connection now: live commands fail, hiredis frees the context
 * (calling on_reply with NULL for each command, which only frees them). */
static void do_drop(struct tg_redis *r, const char *why, bool is_fault)
{
    redisAsyncContext *ac = r->ac;
    if (ac == NULL)
        return;
    bool was_up = r->link == LINK_UP;
    uint64_t gen = r->gen;
    r->ac = NULL;
    ac->data = NULL;
    r->gen++;
    r->link = LINK_DOWN;
    r->probing = false;
    if (was_up)
        r->st.disconnects++;
    if (is_fault)
        r->settled = true;
    fail_cmds(r, gen, is_fault);
    redisAsyncFree(ac);
    if (is_fault) {
        fault(r, why);
        schedule_reconnect(r);
    } else {
        arm_retry(r, 0.);
        notify(r);
    }
}

static void drop_link(struct tg_redis *r, const char *why, bool is_fault)
{
    if (r->depth > 0) {
        if (!r->want_drop || is_fault) {
            snprintf(r->drop_why, sizeof(r->drop_why), "%s", why);
            r->drop_fault = is_fault;
        }
        r->want_drop = true;
        return;
    }
    do_drop(r, why, is_fault);
}

static void destroy(struct tg_redis *r)
{
    ev_timer_stop(r->loop, &r->deadline_timer);
    ev_timer_stop(r->loop, &r->retry_timer);
    struct tg_list *head = &r->cmds;
    for (struct tg_list *n = head->next; n != head; n = n->next)
        tg_list_entry(n, struct tg_redis_cmd, link)->r = NULL;
    if (r->ac != NULL) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        ac->data = NULL;
        /* Calls on_reply(NULL) for every command: orphans, freed there.
         * Inside one of this context's callbacks hiredis defers it. */
        redisAsyncFree(ac);
    }
    tg_redis_sentinel_free(r->sentinel);
    tg_redis_config_free(r->target);
    free(r);
}

/* Runs what callbacks asked for; the last thing each entry point does, as
 * it may free r. */
static void settle(struct tg_redis *r)
{
    if (r->depth > 0)
        return;
    if (r->want_drop && !r->want_free) {
        r->want_drop = false;
        /* Its callbacks may ask for the free, so that is checked after. */
        do_drop(r, r->drop_why, r->drop_fault);
    }
    if (r->want_free)
        destroy(r);
}

static bool is_status(const redisReply *rep, const char *s)
{
    return rep != NULL && rep->type == REDIS_REPLY_STATUS && rep->len == strlen(s) &&
           strcasecmp(rep->str, s) == 0;
}

static bool is_readonly(const redisReply *rep)
{
    return rep != NULL && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "READONLY", 8) == 0;
}

/* ROLE's first element: "master", "slave" or "sentinel". */
static const char *role_of(const redisReply *rep)
{
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements == 0 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        return "?";
    return rep->element[0]->str;
}

static bool is_master_role(const redisReply *rep)
{
    return strcmp(role_of(rep), "master") == 0;
}

static void describe(char *buf, size_t size, const char *what, const redisReply *rep)
{
    if (rep == NULL)
        snprintf(buf, size, "%s: no reply", what);
    else if (rep->type == REDIS_REPLY_ERROR || rep->type == REDIS_REPLY_STATUS)
        snprintf(buf, size, "%s: %.*s", what, (int)(rep->len > 80 ? 80 : rep->len), rep->str);
    else
        snprintf(buf, size, "%s: unexpected reply type %d", what, rep->type);
}

static void link_up(struct tg_redis *r)
{
    r->link = LINK_UP;
    r->settled = true;
    r->st.connects++;
    success(r, false);
}

static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata)
{
    struct tg_redis_cmd *c = privdata;
    struct tg_redis *r = c->r;
    const redisReply *reply = reply_;
    if (r == NULL) {
        free(c);
        return;
    }
    tg_list_remove(&c->link);
    if (reply != NULL)
        r->st.replies++;
    /* Late (timed out), cancelled, or from a connection already dropped. */
    if (c->done || c->gen != r->gen) {
        free(c);
        return;
    }
    c->done = true;
    char why[ERROR_MAX];
    r->depth++;
    switch ((enum cmd_kind)c->kind) {
    case CMD_USER: {
        int verdict = c->cb != NULL ? c->cb(c->arg, reply) : 0;
        if (reply == NULL) {
            fault(r, ac->c.err ? ac->c.errstr : "connection closed");
        } else if (verdict < 0) {
            describe(why, sizeof(why), "bad reply", reply);
            fault(r, why);
        } else {
            success(r, true);
        }
        /* A write reached a demoted primary: ask the sentinels again. */
        if (r->sentinel != NULL && is_readonly(reply))
            drop_link(r, "READONLY: the primary became a replica", true);
        break;
    }
    case CMD_HANDSHAKE:
        if (reply != NULL && !is_status(reply, "OK")) {
            describe(why, sizeof(why), "handshake", reply);
            drop_link(r, why, true);
        }
        break;
    case CMD_HELLO:
        if (is_status(reply, "PONG") || is_master_role(reply)) {
            link_up(r);
        } else if (reply != NULL) {
            if (reply->type == REDIS_REPLY_ARRAY)
                snprintf(why, sizeof(why), "%.70s is not the primary (ROLE says %.20s)", r->server,
                         role_of(reply));
            else
                describe(why, sizeof(why), "handshake", reply);
            drop_link(r, why, true);
        }
        break;
    case CMD_PROBE:
        r->probing = false;
        if (is_status(reply, "PONG")) {
            success(r, false);
        } else if (reply != NULL) {
            describe(why, sizeof(why), "probe", reply);
            fault(r, why);
            if (r->open)
                arm_retry(r, next_backoff(r));
        }
        break;
    }
    r->depth--;
    free(c);
    settle(r);
}

/* ---- connection ---------------------------------------------------------- */

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct tg_redis *r = ac->data;
    if (r == NULL || status == REDIS_OK)
        return;
    /* hiredis frees the context after we return, calling on_reply(NULL)
     * for the handshake commands: the new generation makes them stale. */
    ((redisAsyncContext *)ac)->data = NULL;
    r->ac = NULL;
    r->gen++;
    r->link = LINK_DOWN;
    r->settled = true;
    char why[ERROR_MAX];
    snprintf(why, sizeof(why), "connect: %.100s", ac->c.err ? ac->c.errstr : "failed");
    r->depth++;
    fault(r, why);
    r->depth--;
    schedule_reconnect(r);
    settle(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct tg_redis *r = ac->data;
    if (r == NULL)
        return;
    /* hiredis lost the connection (EOF, reset, protocol error) and has
     * already called on_reply(NULL) for every command on it. */
    bool was_up = r->link == LINK_UP;
    r->ac = NULL;
    r->gen++;
    r->link = LINK_DOWN;
    r->settled = true;
    r->probing = false;
    if (was_up)
        r->st.disconnects++;
    char why[ERROR_MAX];
    const char *g = guard_reason;
    guard_reason = NULL;
    snprintf(why, sizeof(why), "%s",
             g != NULL   ? g
             : ac->c.err ? ac->c.errstr
                         : "connection closed");
    r->depth++;
    fault(r, why);
    r->depth--;
    schedule_reconnect(r);
    settle(r);
}

static int resolve(struct tg_redis *r)
{
    if (!r->addr_ok)
        return -1;
    if (r->is_unix) {
        r->resolved = true;
        return 0;
    }
    unsigned char tmp[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, r->host, tmp) == 1 || inet_pton(AF_INET6, r->host, tmp) == 1) {
        snprintf(r->ip, sizeof(r->ip), "%.*s", (int)sizeof(r->ip) - 1, r->host);
        r->resolved = true;
        return 0;
    }
    /* A name: resolved here, once (blocking), so reconnects never are. */
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_INET; /* first, as hiredis does: Redis often
                                  listens on IPv4 only */
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(r->host, NULL, &hints, &res);
    if (rc != 0) {
        hints.ai_family = AF_UNSPEC;
        rc = getaddrinfo(r->host, NULL, &hints, &res);
    }
    if (rc != 0 || res == NULL) {
        set_error(r, "cannot resolve %s: %s", r->host, gai_strerror(rc));
        return -1;
    }
    const void *a = res->ai_family == AF_INET6
                        ? (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
                        : (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    const char *ok = inet_ntop(res->ai_family, a, r->ip, sizeof(r->ip));
    freeaddrinfo(res);
    if (ok == NULL)
        return -1;
    r->resolved = true;
    return 0;
}

static void start_connect(struct tg_redis *r)
{
    if (r->ac != NULL || r->closing)
        return;
    r->link = LINK_DOWN;
    if (r->sentinel != NULL && !r->primary_known) {
        tg_redis_sentinel_discover(r->sentinel); /* on_found goes on */
        return;
    }
    if (!r->resolved && resolve(r) < 0) {
        r->settled = true;
        if (!r->addr_ok)
            set_error(r, "bad address \"%s\"", where(r));
        fault(r, NULL);
        schedule_reconnect(r);
        return;
    }
    redisAsyncContext *ac =
        r->is_unix ? redisAsyncConnectUnix(r->host) : redisAsyncConnect(r->ip, r->port);
    if (ac == NULL || ac->err) {
        set_error(r, "connect: %s", ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        r->settled = true;
        fault(r, NULL);
        schedule_reconnect(r);
        return;
    }
    if (redisLibevAttach(r->loop, ac) != REDIS_OK) {
        redisAsyncFree(ac);
        r->settled = true;
        set_error(r, "cannot attach to the loop");
        fault(r, NULL);
        schedule_reconnect(r);
        return;
    }
    ac->data = r;
    install_guard(ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    r->gen++;
    r->link = LINK_HANDSHAKE;

    /* Pipelined: hiredis writes them once the socket connects. The PING
     * also makes sure there is something to write, which is how hiredis
     * notices the connect completing. */
    int64_t t = r->connect_timeout_ms;
    bool ok = true;
    if (r->target->password != NULL) {
        const char *a[] = {"AUTH", r->target->password};
        ok = send_internal(r, CMD_HANDSHAKE, 2, a, t) != NULL;
    }
    if (ok && r->target->db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%u", r->target->db);
        const char *a[] = {"SELECT", db};
        ok = send_internal(r, CMD_HANDSHAKE, 2, a, t) != NULL;
    }
    if (ok) {
        /* The primary the sentinels named must still be one. */
        const char *a[] = {r->sentinel != NULL ? "ROLE" : "PING"};
        ok = send_internal(r, CMD_HELLO, 1, a, t) != NULL;
    }
    if (!ok)
        drop_link(r, "out of memory", true);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct tg_redis *r = w->data;
    if (r->ac == NULL) {
        start_connect(r);
    } else if (r->open && r->link == LINK_UP && !r->probing) {
        const char *a[] = {"PING"};
        if (send_internal(r, CMD_PROBE, 1, a, r->timeout_ms) != NULL) {
            r->probing = true;
        } else {
            fault(r, "probe not sent");
            arm_retry(r, next_backoff(r));
        }
    }
    settle(r);
}

/* How long the oldest command may stay unanswered before the link counts
 * as dead. */
static int64_t dead_ms(const struct tg_redis *r, int64_t configured)
{
    if (configured > 0)
        return configured;
    int64_t ms = r->timeout_ms * DEAD_TIMEOUTS;
    return ms > DEAD_MIN_MS ? ms : DEAD_MIN_MS;
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct tg_redis *r = w->data;
    ev_tstamp now = ev_now(loop), next = 0.;
    bool oldest = true;
    char why[ERROR_MAX];

    r->depth++;
    struct tg_list *head = &r->cmds;
    for (struct tg_list *n = head->next, *after; n != head; n = after) {
        after = n->next;
        struct tg_redis_cmd *c = tg_list_entry(n, struct tg_redis_cmd, link);
        if (c->gen != r->gen)
            continue;
        /* The oldest unanswered command on this connection, timed out or
         * not: with no reply at all for dead_ms the link is dead (a
         * blackholed peer never sends the RST that would tell us). */
        if (oldest && r->link == LINK_UP) {
            oldest = false;
            int64_t ms = dead_ms(r, r->dead_opt_ms);
            ev_tstamp dead = c->sent + (double)ms / 1e3;
            if (dead <= now + SLACK) {
                snprintf(why, sizeof(why), "no reply for %lld ms", (long long)ms);
                drop_link(r, why, true);
                break;
            }
            next = dead;
        }
        if (c->done)
            continue;
        if (c->deadline > now + SLACK) {
            if (c->deadline < next)
                next = c->deadline;
            continue;
        }
        c->done = true;
        r->st.timeouts++;
        switch ((enum cmd_kind)c->kind) {
        case CMD_USER:
            if (c->cb != NULL)
                c->cb(c->arg, NULL);
            fault(r, "timeout");
            break;
        case CMD_HANDSHAKE:
        case CMD_HELLO:
            drop_link(r, "connect timeout", true);
            break;
        case CMD_PROBE:
            r->probing = false;
            fault(r, "probe timeout");
            if (r->open)
                arm_retry(r, next_backoff(r));
            break;
        }
    }
    r->depth--;
    if (next > 0. && !r->want_drop && !r->want_free)
        arm_deadline(r, next);
    settle(r);
}

/* ---- public -------------------------------------------------------------- */

int tg_redis_parse_address(const char *address, char *host, size_t hostsize, int *port,
                           bool *is_unix)
{
    if (address == NULL || *address == '\0')
        return -1;
    if (strncmp(address, UNIX_PREFIX, UNIX_PREFIX_LEN) == 0) {
        const char *p = address + UNIX_PREFIX_LEN;
        if (*p == '\0' || strlen(p) >= hostsize || strlen(p) >= UNIX_PATH_MAX)
            return -1;
        snprintf(host, hostsize, "%s", p);
        *port = 0;
        *is_unix = true;
        return 0;
    }
    const char *colon, *h = address;
    size_t hlen;
    if (*address == '[') {
        const char *end = strchr(address, ']');
        if (end == NULL || end[1] != ':')
            return -1;
        h = address + 1;
        hlen = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(address, ':');
        if (colon == NULL || memchr(address, ':', (size_t)(colon - address)))
            return -1; /* no port, or a bare IPv6 literal */
        hlen = (size_t)(colon - address);
    }
    if (hlen == 0 || hlen >= hostsize)
        return -1;
    const char *p = colon + 1;
    long v = 0;
    if (*p == '\0')
        return -1;
    for (; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
        if (v > PORT_MAX)
            return -1;
    }
    if (v == 0)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)v;
    *is_unix = false;
    return 0;
}

/* ---- sentinel ------------------------------------------------------------ */

/* The primary the sentinels named: where the next connect goes. */
static void set_primary(struct tg_redis *r, const char *ip, int port)
{
    snprintf(r->ip, sizeof(r->ip), "%s", ip);
    snprintf(r->host, sizeof(r->host), "%s", ip);
    r->port = port;
    r->is_unix = false;
    r->addr_ok = true;
    r->resolved = true;
    r->primary_known = true;
    snprintf(r->server, sizeof(r->server), strchr(ip, ':') != NULL ? "[%s]:%d" : "%s:%d", ip, port);
}

/* The answer to the discovery start_connect asked for. */
static void on_found(void *arg, const char *ip, int port, const char *why)
{
    struct tg_redis *r = arg;
    if (r->closing || r->ac != NULL)
        return; /* a switch connected us meanwhile */
    r->depth++;
    if (ip == NULL) {
        r->settled = true;
        set_error(r, "%s", why);
        fault(r, NULL);
        schedule_reconnect(r);
    } else {
        set_primary(r, ip, port);
        start_connect(r);
    }
    r->depth--;
    settle(r);
}

/* The watch heard where the primary is. Only news moves the link: the
 * address it uses (or that just failed it) is no news. */
static void on_switch(void *arg, const char *ip, int port)
{
    struct tg_redis *r = arg;
    if (r->closing || (strcmp(ip, r->ip) == 0 && port == r->port) ||
        tg_redis_sentinel_discovering(r->sentinel))
        return;
    r->depth++;
    char was[sizeof(r->server)];
    snprintf(was, sizeof(was), "%s", r->server[0] != '\0' ? r->server : "none");
    set_primary(r, ip, port);
    tg_log_info("redis %s: the primary of %s moved from %s to %s", r->name, r->target->master, was,
                r->server);
    r->attempt = 0;
    if (r->ac != NULL) {
        /* Not a fault: CONNECTING, as after reconfiguring, until the new
         * primary answers. */
        r->settled = false;
        drop_link(r, "the primary moved", false); /* reconnects at once */
    } else {
        arm_retry(r, 0.);
    }
    r->depth--;
    settle(r);
}

/* Copies the connection parameters (and makes the sentinel client they
 * call for). Returns 0, or -1 on allocation failure (r unchanged). */
static int set_target(struct tg_redis *r, const struct tg_config_redis *cfg)
{
    struct tg_config_redis *target = tg_redis_config_dup(cfg);
    if (target == NULL)
        return -1;
    struct tg_redis_sentinel *sentinel = NULL;
    if (target->nsentinels > 0) {
        struct tg_redis_sentinel_options so = {
            .name = r->name,
            .connect_timeout_ms = r->connect_timeout_ms,
            .on_found = on_found,
            .on_switch = on_switch,
            .arg = r,
        };
        if ((sentinel = tg_redis_sentinel_new(r->loop, target, &so)) == NULL) {
            tg_redis_config_free(target);
            return -1;
        }
    }
    tg_redis_sentinel_free(r->sentinel);
    tg_redis_config_free(r->target);
    r->target = target;
    r->sentinel = sentinel;
    r->resolved = false;
    r->primary_known = false;
    r->ip[0] = '\0';
    r->port = 0;
    r->server[0] = '\0';
    if (sentinel != NULL) {
        r->addr_ok = false; /* until the sentinels name the primary */
        return 0;
    }
    r->addr_ok = tg_redis_parse_address(target->address, r->host, sizeof(r->host), &r->port,
                                        &r->is_unix) == 0;
    if (!r->addr_ok) {
        tg_log_error("redis %s: bad address \"%s\" (expected host:port, "
                     "[v6]:port or unix:/path)",
                     r->name, where(r));
    } else {
        snprintf(r->server, sizeof(r->server), "%s", target->address);
        (void)resolve(r); /* a failure is retried at each connect attempt */
    }
    return 0;
}

static int64_t or_default(int64_t v, int64_t dflt)
{
    return v > 0 ? v : dflt;
}

static struct timeval ms_timeval(int64_t ms)
{
    return (struct timeval){(time_t)(ms / 1000), (suseconds_t)(ms % 1000 * 1000)};
}

/* A handshake command that must answer +OK. */
static bool blocking_ok(redisContext *c, int argc, const char **argv, const char *what, char *err,
                        size_t errlen)
{
    redisReply *rep = redisCommandArgv(c, argc, argv, NULL);
    bool ok = rep != NULL && is_status(rep, "OK");
    if (!ok)
        snprintf(err, errlen, "%s: %s", what,
                 rep == NULL                      ? c->errstr
                 : rep->type == REDIS_REPLY_ERROR ? rep->str
                                                  : "unexpected reply");
    if (rep != NULL)
        freeReplyObject(rep);
    return ok;
}

redisContext *tg_redis_connect_blocking(const struct tg_config_redis *cfg,
                                        int64_t connect_timeout_ms, char *err, size_t errlen)
{
    char host[HOST_MAX];
    int port;
    bool is_unix = false;
    if (cfg->nsentinels > 0) {
        char ip[TG_REDIS_SENTINEL_IP_MAX];
        if (tg_redis_sentinel_discover_blocking(cfg, connect_timeout_ms, ip, &port, err, errlen) <
            0)
            return NULL;
        snprintf(host, sizeof(host), "%s", ip);
    } else if (tg_redis_parse_address(cfg->address, host, sizeof(host), &port, &is_unix) < 0) {
        snprintf(err, errlen,
                 "bad address \"%s\" (expected host:port, [v6]:port or "
                 "unix:/path)",
                 cfg->address != NULL ? cfg->address : "");
        return NULL;
    }
    struct timeval ctv = ms_timeval(or_default(connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS));
    redisContext *c =
        is_unix ? redisConnectUnixWithTimeout(host, ctv) : redisConnectWithTimeout(host, port, ctv);
    if (c == NULL || c->err) {
        snprintf(err, errlen, "connect: %s", c != NULL ? c->errstr : "out of memory");
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    install_guard_blocking(c);
    if (redisSetTimeout(c, ms_timeval(or_default(cfg->timeout_ms, DEFAULT_TIMEOUT_MS))) !=
        REDIS_OK) {
        snprintf(err, errlen, "cannot set the timeout: %s", c->errstr);
        redisFree(c);
        return NULL;
    }
    if (cfg->password != NULL) {
        const char *a[] = {"AUTH", cfg->password};
        if (!blocking_ok(c, 2, a, "AUTH", err, errlen)) {
            redisFree(c);
            return NULL;
        }
    }
    if (cfg->db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%u", cfg->db);
        const char *a[] = {"SELECT", db};
        if (!blocking_ok(c, 2, a, "SELECT", err, errlen)) {
            redisFree(c);
            return NULL;
        }
    }
    if (cfg->nsentinels > 0) {
        /* The sentinels may be behind a failover: the primary must be one. */
        redisReply *rep = redisCommand(c, "ROLE");
        bool master = is_master_role(rep);
        if (!master)
            snprintf(err, errlen, "%s:%d is not the primary (ROLE says %.20s)", host, port,
                     rep == NULL ? c->errstr : role_of(rep));
        if (rep != NULL)
            freeReplyObject(rep);
        if (!master) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

struct tg_redis *tg_redis_new(struct ev_loop *loop, const struct tg_config_redis *cfg,
                              const struct tg_redis_options *opt)
{
    struct tg_redis *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->loop = loop;
    tg_list_init(&r->cmds);
    snprintf(r->name, sizeof(r->name), "%s",
             opt != NULL && opt->name != NULL ? opt->name : "redis");
    r->timeout_ms = or_default(cfg->timeout_ms, DEFAULT_TIMEOUT_MS);
    struct tg_redis_options o;
    memset(&o, 0, sizeof(o));
    if (opt != NULL)
        o = *opt;
    r->connect_timeout_ms = or_default(o.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
    r->breaker_faults = o.breaker_faults > 0 ? o.breaker_faults : DEFAULT_BREAKER_FAULTS;
    r->backoff_min_ms = or_default(o.backoff_min_ms, DEFAULT_BACKOFF_MIN_MS);
    r->backoff_max_ms = or_default(o.backoff_max_ms, DEFAULT_BACKOFF_MAX_MS);
    if (r->backoff_max_ms < r->backoff_min_ms)
        r->backoff_max_ms = r->backoff_min_ms;
    r->dead_opt_ms = o.dead_ms;
    r->on_state = o.on_state;
    r->arg = o.arg;
    r->shown = TG_REDIS_CONNECTING;
    r->rng = (uint64_t)(uintptr_t)r ^ (uint64_t)(ev_time() * 1e6) ^ UINT64_C(0x9e3779b97f4a7c15);
    if (r->rng == 0)
        r->rng = 1;
    if (set_target(r, cfg) < 0) {
        free(r);
        return NULL;
    }
    ev_timer_init(&r->deadline_timer, on_deadline, 0., 0.);
    r->deadline_timer.data = r;
    ev_timer_init(&r->retry_timer, on_retry, 0., 0.);
    r->retry_timer.data = r;
    /* Connect from the loop, so that the state callback never runs before
     * the owner has its pointer. */
    arm_retry(r, 0.);
    return r;
}

static bool same_str(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

bool tg_redis_configure(struct tg_redis *r, const struct tg_config_redis *cfg)
{
    if (r->closing)
        return false;
    r->timeout_ms = or_default(cfg->timeout_ms, DEFAULT_TIMEOUT_MS);
    if (tg_redis_config_same_server(cfg, r->target))
        return false;
    if (set_target(r, cfg) < 0) {
        tg_log_error("redis %s: out of memory applying the new config, "
                     "keeping the old one",
                     r->name);
        return false;
    }
    r->open = false;
    r->probing = false;
    r->faults = 0;
    r->attempt = 0;
    r->settled = false;
    r->last_error[0] = '\0';
    if (r->ac != NULL) {
        drop_link(r, "reconfigured", false);
    } else {
        r->link = LINK_DOWN;
        arm_retry(r, 0.);
        notify(r);
    }
    settle(r);
    return true;
}

void tg_redis_free(struct tg_redis *r)
{
    if (r == NULL || r->closing)
        return;
    r->closing = true;
    r->on_state = NULL;
    ev_timer_stop(r->loop, &r->deadline_timer);
    ev_timer_stop(r->loop, &r->retry_timer);
    fail_cmds(r, UINT64_MAX, false);
    if (r->depth > 0) {
        r->want_free = true;
        return;
    }
    destroy(r);
}

void tg_redis_flush(struct tg_redis *r)
{
    if (r == NULL || r->ac == NULL || r->closing || r->link != LINK_UP)
        return;
    r->depth++;
    redisAsyncHandleWrite(r->ac);
    r->depth--;
    settle(r);
}

struct tg_redis_cmd *tg_redis_command(struct tg_redis *r, int argc, const char *const *argv,
                                      const size_t *argvlen, int64_t timeout_ms,
                                      tg_redis_reply_cb cb, void *arg)
{
    if (r->closing || visible(r) != TG_REDIS_UP || argc < 1 || cb == NULL) {
        r->st.refused++;
        return NULL;
    }
    struct tg_redis_cmd *c = send_cmd(r, CMD_USER, argc, argv, argvlen,
                                      timeout_ms > 0 ? timeout_ms : r->timeout_ms, cb, arg);
    if (c == NULL)
        r->st.refused++;
    return c;
}

void tg_redis_cancel(struct tg_redis_cmd *c)
{
    if (c == NULL)
        return;
    c->done = true;
    c->cb = NULL;
    c->arg = NULL;
}

enum tg_redis_state tg_redis_state(const struct tg_redis *r)
{
    return visible(r);
}

int64_t tg_redis_timeout_ms(const struct tg_redis *r)
{
    return r->timeout_ms;
}

void tg_redis_stats(const struct tg_redis *r, struct tg_redis_stats *out)
{
    *out = r->st;
}

const char *tg_redis_server(const struct tg_redis *r)
{
    return r->server;
}

bool tg_redis_uses_sentinels(const struct tg_redis *r)
{
    return r->sentinel != NULL;
}

/* ---- config copies --------------------------------------------------------- */

static void wipe_free(const char *secret)
{
    if (secret != NULL) {
        explicit_bzero((char *)secret, strlen(secret));
        free((char *)secret);
    }
}

void tg_redis_config_free(struct tg_config_redis *c)
{
    if (c == NULL)
        return;
    free((char *)c->address);
    wipe_free(c->password);
    free((char *)c->key_prefix);
    for (size_t i = 0; c->sentinels != NULL && i < c->nsentinels; i++)
        free((char *)c->sentinels[i]);
    free((void *)c->sentinels);
    for (size_t i = 0; c->cluster != NULL && i < c->ncluster; i++)
        free((char *)c->cluster[i]);
    free((void *)c->cluster);
    free((char *)c->master);
    wipe_free(c->sentinel_password);
    free(c);
}

/* strdup of an optional string: false only when memory ran out. */
static bool dup_opt(const char **dst, const char *src)
{
    *dst = src != NULL ? strdup(src) : NULL;
    return src == NULL || *dst != NULL;
}

struct tg_config_redis *tg_redis_config_dup(const struct tg_config_redis *cfg)
{
    struct tg_config_redis *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->db = cfg->db;
    c->timeout_ms = cfg->timeout_ms;
    c->mark = cfg->mark;
    bool ok = dup_opt(&c->address, cfg->address) && dup_opt(&c->password, cfg->password) &&
              dup_opt(&c->key_prefix, cfg->key_prefix) && dup_opt(&c->master, cfg->master) &&
              dup_opt(&c->sentinel_password, cfg->sentinel_password);
    if (ok && cfg->nsentinels > 0) {
        const char **v = calloc(cfg->nsentinels, sizeof(*v));
        c->sentinels = v;
        ok = v != NULL;
        for (size_t i = 0; ok && i < cfg->nsentinels; i++, c->nsentinels++)
            ok = dup_opt(&v[i], cfg->sentinels[i]) && v[i] != NULL;
    }
    if (ok && cfg->ncluster > 0) {
        const char **v = calloc(cfg->ncluster, sizeof(*v));
        c->cluster = v;
        ok = v != NULL;
        for (size_t i = 0; ok && i < cfg->ncluster; i++, c->ncluster++)
            ok = dup_opt(&v[i], cfg->cluster[i]) && v[i] != NULL;
    }
    if (!ok) {
        tg_redis_config_free(c);
        return NULL;
    }
    return c;
}

bool tg_redis_config_same_server(const struct tg_config_redis *a, const struct tg_config_redis *b)
{
    if (!same_str(a->address, b->address) || !same_str(a->password, b->password) ||
        a->db != b->db || a->nsentinels != b->nsentinels || !same_str(a->master, b->master) ||
        !same_str(a->sentinel_password, b->sentinel_password) || a->ncluster != b->ncluster)
        return false;
    for (size_t i = 0; i < a->nsentinels; i++)
        if (!same_str(a->sentinels[i], b->sentinels[i]))
            return false;
    for (size_t i = 0; i < a->ncluster; i++)
        if (!same_str(a->cluster[i], b->cluster[i]))
            return false;
    return true;
}

const char *tg_redis_config_describe(const struct tg_config_redis *cfg, char *buf, size_t n)
{
    if (cfg->nsentinels > 0)
        snprintf(buf, n, "the primary of %s (via %zu sentinel%s)",
                 cfg->master != NULL ? cfg->master : "?", cfg->nsentinels,
                 cfg->nsentinels == 1 ? "" : "s");
    else if (cfg->ncluster > 0)
        snprintf(buf, n, "Cluster via %s", cfg->cluster[0]);
    else
        snprintf(buf, n, "%s", cfg->address != NULL ? cfg->address : "(no address)");
    return buf;
}
