/* The Redis rate-limit store: builds keys and arguments, runs the GCRA Lua
 * script (EVALSHA, reloaded once on NOSCRIPT), checks the reply's shape and
 * turns it into tg_ratelimit_results; writes the gateway heartbeat.
 * Connecting, deadlines, the circuit breaker and reconnects are redis.c's;
 * whether a failure lets a request through (on_error) is the caller's.
 *
 * The script. KEYS[i] = PREFIX{policy:key} for op i. ARGV[1] = "1" for a
 * peek, else "0"; then four per op: ARGV[2 + 4(i-1)] .. ARGV[5 + 4(i-1)] =
 * interval_us, burst, delay, cost (decimal integers). It reads TIME once
 * (now, us since the epoch), decides each op in order with the C core's
 * formulas (a key named twice starts from the TAT the earlier op left),
 * and, only if every op is allowed and this is not a peek, stores each
 * key's final TAT (us, decimal) with SET ... PX ceil((tat - now) / 1000)
 * ms, so the key vanishes when its bucket is full again (never earlier: the
 * expiry is rounded up); a TAT not after now is not stored. It returns a
 * flat array of integers, 2 + 5n long:
 *   { now_us, all_allowed (0/1),
 *     then per op: allowed (0/1), remaining, retry_after_us (-1: never),
 *                  reset_us, delay_us }.
 * Every number the decision uses stays below 2^53, so Lua's doubles hold
 * it exactly: now ~ 2^50.6 us, tolerances are capped at 2^52 us, and the
 * excess is computed as debt + cost * interval (each at most a tolerance
 * when it matters), never as a TAT sum minus now, which could pass 2^53
 * for a refused request on a long interval. cost * interval is inexact
 * only when cost > burst + delay, where it only has to compare greater.
 * Floor divisions are corrected by one step where the double quotient
 * rounded. Numbers passed
 * back to Redis commands are formatted with %.0f, never tostring (which
 * would print 14 significant digits). */
#include "ratelimit_redis.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include "config.h"
#include "log.h"
#include "redis.h"

static const char GCRA_LUA[] =
    "-- tollgate GCRA v1: see src/ratelimit_redis.c\n"
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local n = #KEYS\n"
    "if n == 0 or #ARGV ~= 1 + 4 * n then\n"
    "  return redis.error_reply('ERR tollgate gcra: bad arguments')\n"
    "end\n"
    "local floor = math.floor\n"
    "local MAXTOL = 4503599627370496\n"
    "local LIMIT = 9007199254740992\n"
    "local function idiv(a, b)\n"
    "  local q = floor(a / b)\n"
    "  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end\n"
    "  return q\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local out = {now, 1}\n"
    "local tat, last, all = {}, {}, true\n"
    "for i = 1, n do\n"
    "  local a = 2 + (i - 1) * 4\n"
    "  local iv, burst = tonumber(ARGV[a]), tonumber(ARGV[a + 1])\n"
    "  local delay, cost = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])\n"
    "  if not (iv and burst and delay and cost) or iv < 1 or burst < 1\n"
    "     or delay < 0 or cost < 0 then\n"
    "    return redis.error_reply('ERR tollgate gcra: bad arguments')\n"
    "  end\n"
    "  if (burst + delay) * iv > MAXTOL then\n"
    "    local most = idiv(MAXTOL, iv)\n"
    "    if burst > most then burst = most end\n"
    "    if delay > most - burst then delay = most - burst end\n"
    "  end\n"
    "  local btol, ttol = burst * iv, (burst + delay) * iv\n"
    "  local k = KEYS[i]\n"
    "  local before\n"
    "  if last[k] then\n"
    "    before = tat[last[k]]\n"
    "  else\n"
    "    before = floor(tonumber(redis.call('GET', k)) or 0)\n"
    "  end\n"
    "  last[k] = i\n"
    "  local debt = 0\n"
    "  if before > now then debt = before - now end\n"
    "  local excess = debt + cost * iv\n"
    "  local o = 2 + (i - 1) * 5\n"
    "  if excess <= ttol and now + excess < LIMIT then\n"
    "    tat[i] = now + excess\n"
    "    out[o + 1] = 1\n"
    "    if excess < btol then out[o + 2] = idiv(btol - excess, iv)\n"
    "    else out[o + 2] = 0 end\n"
    "    out[o + 3] = 0\n"
    "    out[o + 4] = excess\n"
    "    if excess > btol then out[o + 5] = excess - btol\n"
    "    else out[o + 5] = 0 end\n"
    "  else\n"
    "    tat[i] = before\n"
    "    all = false\n"
    "    out[o + 1] = 0\n"
    "    if debt < btol then out[o + 2] = idiv(btol - debt, iv)\n"
    "    else out[o + 2] = 0 end\n"
    "    if cost > burst + delay or excess <= ttol then out[o + 3] = -1\n"
    "    else out[o + 3] = excess - ttol end\n"
    "    out[o + 4] = debt\n"
    "    out[o + 5] = 0\n"
    "  end\n"
    "end\n"
    "if not all then out[2] = 0 end\n"
    "if all and ARGV[1] ~= '1' then\n"
    "  for i = 1, n do\n"
    "    local k = KEYS[i]\n"
    "    if last[k] == i and tat[i] > now then\n"
    "      redis.call('SET', k, string.format('%.0f', tat[i]), 'PX',\n"
    "                 string.format('%.0f', idiv(tat[i] - now + 999, 1000)))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

/* KEYS[1] = PREFIX{gateways}; ARGV = gateway id, ttl_ms. Members are
 * scored by when they expire, on Redis' clock in ms. */
static const char HEARTBEAT_LUA[] =
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local ttl = tonumber(ARGV[2])\n"
    "redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[1])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', "
    "string.format('%.0f', now))\n"
    "redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ttl))\n"
    "return redis.call('ZCARD', KEYS[1])\n";

#define HEARTBEAT_TTL_MS 10000
#define MAX_OPS TG_RATELIMIT_LOCAL_MAX_OPS
#define NUM_MAX 21 /* digits of an int64, a sign and a NUL */
#define HASHED_KEY_LEN 65 /* '#' and 64 hex digits */

/* Knobs the unit test shortens; the defaults are production's. */
static double heartbeat_interval_s = 2.0;
static struct tg_redis_options link_tuning; /* zero: redis.c's defaults */

static _Atomic unsigned gateways_seen = 1;

struct tg_ratelimit_redis {
    struct ev_loop *loop;
    struct tg_redis *link;
    char *prefix;
    size_t prefix_len;
    char *gateway_id;
    bool heartbeat;
    ev_timer heartbeat_timer;
    struct tg_redis_cmd *heartbeat_cmd; /* in flight */
    bool loading;                       /* a SCRIPT LOAD in flight */
    char sha[41];                       /* of GCRA_LUA, hex */

    int64_t last_time_us; /* Redis TIME of the last decision (tests) */
    uint64_t reloads;     /* NOSCRIPT retries */
    uint64_t requests, errors, short_circuited;
};

enum pending_kind {
    PENDING_TAKE = 0,
    PENDING_RESET,
};

/* One take or reset until its callback (or cancel). Allocated in one piece
 * with its command's arguments, kept for a NOSCRIPT retry. Not owned by
 * the limiter: the link calls every pending back (with NULL when it is
 * freed), and a cancelled one is freed at once, its link command being
 * cancelled too. */
struct tg_ratelimit_redis_pending {
    struct tg_ratelimit_redis *r;
    struct tg_redis_cmd *cmd;
    tg_ratelimit_redis_cb cb;
    void *arg;
    ev_tstamp deadline;
    unsigned char kind;
    bool retried;
    size_t nops;
    int argc;
    const char **argv;
    size_t *argvlen;
};

/* ---- helpers ------------------------------------------------------------- */

static void hex(char *out, const unsigned char *md, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 15];
    }
    out[2 * n] = '\0';
}

static int digest(const EVP_MD *md, const void *data, size_t len,
                  unsigned char *out)
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, md, NULL) == 1 ? (int)n : -1;
}

/* Length of the Redis key for (policy, key). */
static size_t key_len(const struct tg_ratelimit_redis *r, const char *policy,
                      size_t keylen)
{
    if (keylen > TG_RATELIMIT_REDIS_KEY_MAX)
        keylen = HASHED_KEY_LEN;
    return r->prefix_len + strlen(policy) + keylen + 3;
}

/* Writes PREFIX{policy:key} at out (key_len bytes, no NUL). Returns the
 * length, or 0 if hashing a long key failed. */
static size_t build_key(const struct tg_ratelimit_redis *r, char *out,
                        const char *policy, const char *key, size_t keylen)
{
    char *p = out;
    size_t plen = strlen(policy);
    memcpy(p, r->prefix, r->prefix_len);
    p += r->prefix_len;
    *p++ = '{';
    memcpy(p, policy, plen);
    p += plen;
    *p++ = ':';
    if (keylen > TG_RATELIMIT_REDIS_KEY_MAX) {
        unsigned char md[EVP_MAX_MD_SIZE];
        char h[2 * 32 + 1];
        if (digest(EVP_sha256(), key, keylen, md) != 32)
            return 0;
        hex(h, md, 32);
        *p++ = '#';
        memcpy(p, h, 64);
        p += 64;
    } else if (keylen > 0) {
        memcpy(p, key, keylen);
        p += keylen;
    }
    *p++ = '}';
    return (size_t)(p - out);
}

/* A pending with room for argc arguments of `bytes` bytes in total. */
static struct tg_ratelimit_redis_pending *
pending_new(struct tg_ratelimit_redis *r, int argc, size_t bytes, char **buf)
{
    size_t head = sizeof(struct tg_ratelimit_redis_pending);
    size_t size = head + (size_t)argc * (sizeof(char *) + sizeof(size_t)) +
                  bytes;
    struct tg_ratelimit_redis_pending *p = calloc(1, size);
    if (p == NULL)
        return NULL;
    p->r = r;
    p->argc = argc;
    p->argv = (const char **)((char *)p + head);
    p->argvlen = (size_t *)(p->argv + argc);
    *buf = (char *)(p->argvlen + argc);
    return p;
}

/* Appends an argument of n bytes copied from s at *buf. */
static void put_arg(struct tg_ratelimit_redis_pending *p, int *i, char **buf,
                    const void *s, size_t n)
{
    memcpy(*buf, s, n);
    p->argv[*i] = *buf;
    p->argvlen[*i] = n;
    *buf += n;
    (*i)++;
}

static void put_num(struct tg_ratelimit_redis_pending *p, int *i, char **buf,
                    int64_t v)
{
    char tmp[NUM_MAX];
    int n = snprintf(tmp, sizeof(tmp), "%lld", (long long)v);
    put_arg(p, i, buf, tmp, (size_t)n);
}

static int64_t us_to_ns(long long us)
{
    if (us > INT64_MAX / 1000)
        return INT64_MAX;
    return (int64_t)us * 1000;
}

static int64_t remaining_ms(const struct tg_ratelimit_redis_pending *p)
{
    double left = (p->deadline - ev_now(p->r->loop)) * 1e3;
    return left >= 1. ? (int64_t)(left + 0.999) : 1;
}

/* Calls the user back and frees the pending. Nothing of the limiter may be
 * touched afterwards: the callback may have freed it. */
static void finish(struct tg_ratelimit_redis_pending *p, int status,
                   bool allowed, const struct tg_ratelimit_result *res,
                   size_t n)
{
    tg_ratelimit_redis_cb cb = p->cb;
    void *arg = p->arg;
    free(p);
    cb(arg, status, allowed, res, n);
}

/* ---- script loading -------------------------------------------------------- */

static int on_script_loaded(void *arg, const redisReply *reply)
{
    struct tg_ratelimit_redis *r = arg;
    r->loading = false;
    if (reply == NULL)
        return 0;
    if (reply->type == REDIS_REPLY_STRING && reply->len == 40 &&
        memcmp(reply->str, r->sha, 40) == 0)
        return 0;
    r->errors++;
    if (reply->type == REDIS_REPLY_STRING)
        tg_log_error("redis ratelimit: SCRIPT LOAD returned %.*s, expected %s",
                     (int)(reply->len > 40 ? 40 : reply->len), reply->str,
                     r->sha);
    return -1;
}

/* Queues SCRIPT LOAD unless one is already in flight: commands queued after
 * it on this connection then find the script. */
static void load_script(struct tg_ratelimit_redis *r)
{
    if (r->loading)
        return;
    const char *argv[] = {"SCRIPT", "LOAD", GCRA_LUA};
    size_t len[] = {6, 4, sizeof(GCRA_LUA) - 1};
    if (tg_redis_command(r->link, 3, argv, len, 0, on_script_loaded, r) !=
        NULL)
        r->loading = true;
}

/* ---- heartbeat ----------------------------------------------------------- */

static int on_heartbeat(void *arg, const redisReply *reply)
{
    struct tg_ratelimit_redis *r = arg;
    r->heartbeat_cmd = NULL;
    if (reply == NULL)
        return 0; /* keep the last known count */
    if (reply->type != REDIS_REPLY_INTEGER || reply->integer < 1) {
        r->errors++;
        return -1;
    }
    unsigned n = reply->integer > UINT32_MAX ? UINT32_MAX
                                              : (unsigned)reply->integer;
    atomic_store(&gateways_seen, n);
    return 0;
}

static void send_heartbeat(struct tg_ratelimit_redis *r)
{
    if (!r->heartbeat || r->heartbeat_cmd != NULL ||
        tg_redis_state(r->link) != TG_REDIS_UP)
        return;
    char key[512], ttl[NUM_MAX];
    int klen = snprintf(key, sizeof(key), "%s{gateways}", r->prefix);
    if (klen < 0 || (size_t)klen >= sizeof(key))
        return;
    int tlen = snprintf(ttl, sizeof(ttl), "%d", HEARTBEAT_TTL_MS);
    const char *argv[] = {"EVAL", HEARTBEAT_LUA, "1", key, r->gateway_id, ttl};
    size_t len[] = {4, sizeof(HEARTBEAT_LUA) - 1, 1, (size_t)klen,
                    strlen(r->gateway_id), (size_t)tlen};
    r->heartbeat_cmd =
        tg_redis_command(r->link, 6, argv, len, 0, on_heartbeat, r);
}

static void on_heartbeat_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    send_heartbeat(w->data);
}

static void on_link_state(void *arg, enum tg_redis_state old,
                          enum tg_redis_state state)
{
    (void)old;
    struct tg_ratelimit_redis *r = arg;
    if (state != TG_REDIS_UP)
        return;
    /* A new connection may be a new (or flushed) server. Queued first, so
     * every EVALSHA after it finds the script. */
    load_script(r);
    send_heartbeat(r);
}

/* ---- take ---------------------------------------------------------------- */

/* Checks the script's reply and fills res[0..n). */
static bool parse_take(const redisReply *rep, size_t n,
                       struct tg_ratelimit_result *res, bool *all,
                       int64_t *now_us)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 + 5 * n)
        return false;
    for (size_t i = 0; i < rep->elements; i++)
        if (rep->element[i] == NULL ||
            rep->element[i]->type != REDIS_REPLY_INTEGER)
            return false;
    long long now = rep->element[0]->integer, a = rep->element[1]->integer;
    if (now <= 0 || (a != 0 && a != 1))
        return false;
    bool every = true;
    for (size_t k = 0; k < n; k++) {
        redisReply **e = rep->element + 2 + 5 * k;
        long long ok = e[0]->integer, remaining = e[1]->integer,
                  retry = e[2]->integer, reset = e[3]->integer,
                  delay = e[4]->integer;
        if ((ok != 0 && ok != 1) || remaining < 0 || retry < -1 ||
            reset < 0 || delay < 0 || (ok && retry != 0) || (!ok && delay))
            return false;
        res[k].allowed = ok == 1;
        res[k].remaining = remaining;
        res[k].retry_after_ns = retry < 0 ? INT64_MAX : us_to_ns(retry);
        res[k].reset_ns = us_to_ns(reset);
        res[k].delay_ns = us_to_ns(delay);
        every &= res[k].allowed;
    }
    if (every != (a == 1))
        return false;
    *all = every;
    *now_us = now;
    return true;
}

static bool is_error(const redisReply *rep, const char *code)
{
    size_t n = strlen(code);
    return rep->type == REDIS_REPLY_ERROR && rep->len >= n &&
           memcmp(rep->str, code, n) == 0 &&
           (rep->len == n || rep->str[n] == ' ');
}

static int on_take_reply(void *arg, const redisReply *reply)
{
    struct tg_ratelimit_redis_pending *p = arg;
    struct tg_ratelimit_redis *r = p->r;
    if (reply == NULL) {
        finish(p, -1, false, NULL, 0);
        return 0; /* ignored: the link counted the fault */
    }
    if (!p->retried && is_error(reply, "NOSCRIPT")) {
        /* The script cache was flushed (SCRIPT FLUSH, a restart behind a
         * proxy, a failover): load it again, and send the same request
         * behind the load, within what is left of its deadline. */
        p->retried = true;
        r->reloads++;
        load_script(r);
        p->cmd = tg_redis_command(r->link, p->argc, p->argv, p->argvlen,
                                  remaining_ms(p), on_take_reply, p);
        if (p->cmd == NULL)
            finish(p, -1, false, NULL, 0);
        return 0; /* Redis answered: not a fault */
    }
    struct tg_ratelimit_result res[MAX_OPS];
    bool all = false;
    int64_t now = 0;
    if (!parse_take(reply, p->nops, res, &all, &now)) {
        /* -READONLY, -LOADING, -BUSY, a second NOSCRIPT, a wrong type or
         * shape: a fault, reported once per state change by the link. */
        r->errors++;
        finish(p, -1, false, NULL, 0);
        return -1;
    }
    r->requests += p->nops;
    r->last_time_us = now;
    finish(p, 0, all, res, p->nops);
    return 0;
}

static bool valid_op(const struct tg_ratelimit_redis_op *op)
{
    return op->policy != NULL && (op->key != NULL || op->keylen == 0) &&
           op->params.interval_ns >= 1 && op->params.burst >= 1 &&
           op->params.delay >= 0 && op->cost >= 0;
}

struct tg_ratelimit_redis_pending *tg_ratelimit_redis_take(
    struct tg_ratelimit_redis *r, const struct tg_ratelimit_redis_op *ops,
    size_t nops, bool peek, tg_ratelimit_redis_cb cb, void *arg)
{
    if (nops == 0 || nops > MAX_OPS || cb == NULL)
        return NULL;
    for (size_t i = 0; i < nops; i++)
        if (!valid_op(&ops[i]))
            return NULL;
    if (tg_redis_state(r->link) != TG_REDIS_UP) {
        r->short_circuited++;
        return NULL;
    }

    /* EVALSHA sha numkeys key... peek (interval_us burst delay cost)... */
    int argc = 3 + (int)nops + 1 + 4 * (int)nops;
    size_t bytes = 7 + 40 + NUM_MAX + 1 + 4 * nops * NUM_MAX;
    for (size_t i = 0; i < nops; i++)
        bytes += key_len(r, ops[i].policy, ops[i].keylen);
    char *buf;
    struct tg_ratelimit_redis_pending *p = pending_new(r, argc, bytes, &buf);
    if (p == NULL) {
        r->short_circuited++;
        return NULL;
    }
    p->kind = PENDING_TAKE;
    p->cb = cb;
    p->arg = arg;
    p->nops = nops;
    p->deadline = ev_now(r->loop) + (double)tg_redis_timeout_ms(r->link) / 1e3;

    int i = 0;
    put_arg(p, &i, &buf, "EVALSHA", 7);
    put_arg(p, &i, &buf, r->sha, 40);
    put_num(p, &i, &buf, (int64_t)nops);
    for (size_t k = 0; k < nops; k++) {
        size_t n = build_key(r, buf, ops[k].policy, ops[k].key, ops[k].keylen);
        if (n == 0) {
            free(p);
            r->short_circuited++;
            return NULL;
        }
        p->argv[i] = buf;
        p->argvlen[i++] = n;
        buf += n;
    }
    put_arg(p, &i, &buf, peek ? "1" : "0", 1);
    for (size_t k = 0; k < nops; k++) {
        const struct tg_ratelimit_params *pp = &ops[k].params;
        /* Round up: never a faster rate than configured. */
        int64_t iv_us = pp->interval_ns / 1000 + (pp->interval_ns % 1000 != 0);
        put_num(p, &i, &buf, iv_us);
        put_num(p, &i, &buf, pp->burst);
        put_num(p, &i, &buf, pp->delay);
        put_num(p, &i, &buf, ops[k].cost);
    }

    p->cmd = tg_redis_command(r->link, p->argc, p->argv, p->argvlen, 0,
                              on_take_reply, p);
    if (p->cmd == NULL) {
        free(p);
        r->short_circuited++;
        return NULL;
    }
    return p;
}

void tg_ratelimit_redis_cancel(struct tg_ratelimit_redis_pending *p)
{
    if (p == NULL)
        return;
    tg_redis_cancel(p->cmd);
    free(p);
}

/* ---- reset --------------------------------------------------------------- */

static int on_reset_reply(void *arg, const redisReply *reply)
{
    struct tg_ratelimit_redis_pending *p = arg;
    if (reply == NULL) {
        finish(p, -1, false, NULL, 0);
        return 0;
    }
    if (reply->type != REDIS_REPLY_INTEGER) {
        p->r->errors++;
        finish(p, -1, false, NULL, 0);
        return -1;
    }
    finish(p, 0, true, NULL, 0);
    return 0;
}

int tg_ratelimit_redis_reset(struct tg_ratelimit_redis *r, const char *policy,
                             const char *key, size_t keylen,
                             tg_ratelimit_redis_cb cb, void *arg)
{
    if (policy == NULL || (key == NULL && keylen > 0) || cb == NULL)
        return -1;
    if (tg_redis_state(r->link) != TG_REDIS_UP) {
        r->short_circuited++;
        return -1;
    }
    char *buf;
    struct tg_ratelimit_redis_pending *p =
        pending_new(r, 2, 3 + key_len(r, policy, keylen), &buf);
    if (p == NULL)
        return -1;
    p->kind = PENDING_RESET;
    p->cb = cb;
    p->arg = arg;
    int i = 0;
    put_arg(p, &i, &buf, "DEL", 3);
    size_t n = build_key(r, buf, policy, key, keylen);
    if (n == 0) {
        free(p);
        return -1;
    }
    p->argv[i] = buf;
    p->argvlen[i++] = n;
    p->cmd = tg_redis_command(r->link, 2, p->argv, p->argvlen, 0,
                              on_reset_reply, p);
    if (p->cmd == NULL) {
        free(p);
        r->short_circuited++;
        return -1;
    }
    return 0;
}

/* ---- lifetime ------------------------------------------------------------ */

static int set_prefix(struct tg_ratelimit_redis *r,
                      const struct tg_config_redis *cfg)
{
    char *prefix = strdup(cfg->key_prefix != NULL ? cfg->key_prefix : "");
    if (prefix == NULL)
        return -1;
    free(r->prefix);
    r->prefix = prefix;
    r->prefix_len = strlen(prefix);
    return 0;
}

struct tg_ratelimit_redis *tg_ratelimit_redis_new(struct ev_loop *loop,
                                                  const struct tg_config_redis *cfg,
                                                  const char *gateway_id,
                                                  bool heartbeat)
{
    struct tg_ratelimit_redis *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->loop = loop;
    r->heartbeat = heartbeat;
    unsigned char md[EVP_MAX_MD_SIZE];
    if (digest(EVP_sha1(), GCRA_LUA, sizeof(GCRA_LUA) - 1, md) != 20)
        goto fail;
    hex(r->sha, md, 20);
    r->gateway_id = strdup(gateway_id != NULL ? gateway_id : "");
    if (r->gateway_id == NULL || set_prefix(r, cfg) < 0)
        goto fail;

    struct tg_redis_options opt = link_tuning;
    opt.name = "ratelimit";
    opt.on_state = on_link_state;
    opt.arg = r;
    r->link = tg_redis_new(loop, cfg, &opt);
    if (r->link == NULL)
        goto fail;

    ev_timer_init(&r->heartbeat_timer, on_heartbeat_timer,
                  heartbeat_interval_s, heartbeat_interval_s);
    r->heartbeat_timer.data = r;
    if (heartbeat)
        ev_timer_start(loop, &r->heartbeat_timer);
    return r;

fail:
    free(r->gateway_id);
    free(r->prefix);
    free(r);
    return NULL;
}

void tg_ratelimit_redis_configure(struct tg_ratelimit_redis *r,
                                  const struct tg_config_redis *cfg)
{
    if (set_prefix(r, cfg) < 0)
        tg_log_error("redis ratelimit: out of memory, keeping the old "
                     "key prefix");
    tg_redis_configure(r->link, cfg);
}

void tg_ratelimit_redis_free(struct tg_ratelimit_redis *r)
{
    if (r == NULL)
        return;
    ev_timer_stop(r->loop, &r->heartbeat_timer);
    /* Calls every live pending back with NULL (status -1) now. */
    tg_redis_free(r->link);
    free(r->gateway_id);
    free(r->prefix);
    free(r);
}

enum tg_redis_state tg_ratelimit_redis_state(const struct tg_ratelimit_redis *r)
{
    return tg_redis_state(r->link);
}

unsigned tg_ratelimit_redis_gateways(void)
{
    unsigned n = atomic_load(&gateways_seen);
    return n >= 1 ? n : 1;
}

void tg_ratelimit_redis_stats(const struct tg_ratelimit_redis *r,
                              struct tg_ratelimit_redis_stats *out)
{
    struct tg_redis_stats ls;
    tg_redis_stats(r->link, &ls);
    memset(out, 0, sizeof(*out));
    out->round_trips = ls.replies;
    out->requests = r->requests;
    out->errors = r->errors;
    out->timeouts = ls.timeouts;
    out->disconnects = ls.disconnects;
    out->short_circuited = r->short_circuited;
}
