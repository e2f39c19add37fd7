/* The Redis rate-limit store: builds keys and arguments, runs the GCRA Lua
 * script (EVALSHA; after a NOSCRIPT the same batch once more as EVAL, which
 * caches it again), checks the reply's shape and turns it into
 * tg_ratelimit_results; writes the gateway heartbeat. Connecting,
 * deadlines, the circuit breaker and reconnects are redis.c's, routing to
 * a Redis Cluster's nodes redis_cluster.c's; whether a failure lets a
 * request through (on_error) is the caller's.
 *
 * Batching: the takes asked for in one loop iteration go out as one
 * EVALSHA (flushed by an ev_prepare watcher just before the loop waits), so
 * under load one script run decides many requests: one round trip and one
 * script invocation for all of them. On a cluster a take is split into
 * parts, one per hash slot, and a batch carries the parts of one slot (of
 * one key, see take_batch); finish_take keeps the whole take
 * all-or-nothing across its parts.
 *
 * Redis is shared by every gateway, so the script does the least it can
 * per request: each distinct key of the batch is named, read and described
 * once, a request costs it three small arguments and one number back, and
 * the figures a response needs (remaining, reset, retry, delay) are
 * computed here by the C core from the TAT the script saw.
 *
 * The script. KEYS = the distinct keys of the batch (PREFIX{policy:key});
 * a batch never names one key under two bucket settings (after a reload,
 * the first take under the new ones starts the next batch).
 * ARGV[1] = G, the number of requests; then three per key, in KEYS order:
 * interval_us, burst, delay; then per request m (its number of keys,
 * negated for a peek) and m pairs (key index into KEYS, cost). All are
 * decimal integers. It reads TIME once (now, us since the epoch) and each
 * key once, then decides each request in turn, each of its keys with the C
 * core's rule (allowed when max(tat - now, 0) + cost * interval <= (burst +
 * delay) * interval), starting from the TAT that earlier requests of the
 * batch left (a key named twice, or by two requests, sees the first spend).
 * A request spends only if all its keys allow and it is not a peek. At the
 * end every key that was spent on is stored with SET ... PX ceil((tat -
 * now) / 1000) ms, so it vanishes when its bucket is full again (never
 * earlier: the expiry is rounded up); a TAT not after now is not stored. It
 * returns a flat array of integers: { now_us, then per request, per key,
 * the TAT (us) that key had when the request was decided }. A stored value
 * that is not a number in 0..2^53 reads as 0 (an empty bucket).
 * Every number the decision uses stays below 2^53, so Lua's doubles hold
 * it exactly: now ~ 2^50.6 us, tolerances are capped at 2^52 us (the C
 * side applies the same cap), and the excess is computed as debt + cost *
 * interval (each at most a tolerance when it matters), never as a TAT sum
 * minus now, which could pass 2^53 for a refused request on a long
 * interval. cost * interval is inexact only when cost > burst + delay,
 * where it only has to compare greater. Floor divisions are corrected by
 * one step where the double quotient rounded. Numbers passed back to Redis
 * commands are formatted with %.0f, never tostring (which would print 14
 * significant digits).
 *
 * Refunds (REFUND_LUA) are a second, smaller script, sent on their own
 * (nobody waits for them, and they do not share a batch's keys): KEYS =
 * the keys, ARGV = interval_us and cost per key. On Redis' clock, each key
 * holding a TAT after now gets max(tat - cost * interval, now), stored with
 * the take's expiry rule, or is deleted when that is not after now; keys
 * and values are the take script's, so gateways of either version share
 * them. It is sent as EVAL the first time on a connection (which caches
 * it), then as EVALSHA; a NOSCRIPT (cache flushed) resends it once as EVAL
 * within the same deadline. */
#include "ratelimit_redis.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include "codec.h"
#include "config.h"
#include "log.h"
#include "ratelimit.h"
#include "redis.h"
#include "redis_cluster.h"
#include "siphash.h"

/* A batch's memory. The unit test swaps in allocators that fail, to check
 * that every waiter is still answered. */
#ifndef batch_malloc
#define batch_malloc malloc
#define batch_calloc calloc
#endif

static const char GCRA_LUA[] =
    "-- tollgate GCRA v3 (batched, keys once): see src/ratelimit_redis.c\n"
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local floor = math.floor\n"
    "local MAXTOL = 4503599627370496\n"
    "local LIMIT = 9007199254740992\n"
    "local function bad()\n"
    "  return redis.error_reply('ERR tollgate gcra: bad arguments')\n"
    "end\n"
    "local function idiv(a, b)\n"
    "  local q = floor(a / b)\n"
    "  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end\n"
    "  return q\n"
    "end\n"
    "local G, K, NA = tonumber(ARGV[1]), #KEYS, #ARGV\n"
    "if not G or G < 1 or K < 1 or NA < 1 + 3 * K + 3 * G then\n"
    "  return bad()\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local iv, ttol, tat, start = {}, {}, {}, {}\n"
    "local a = 2\n"
    "for k = 1, K do\n"
    "  local i, burst = tonumber(ARGV[a]), tonumber(ARGV[a + 1])\n"
    "  local delay = tonumber(ARGV[a + 2])\n"
    "  a = a + 3\n"
    "  if not (i and burst and delay) or i < 1 or burst < 1 or delay < 0 then\n"
    "    return bad()\n"
    "  end\n"
    "  if (burst + delay) * i > MAXTOL then\n"
    "    local most = idiv(MAXTOL, i)\n"
    "    if burst > most then burst = most end\n"
    "    if delay > most - burst then delay = most - burst end\n"
    "  end\n"
    "  iv[k], ttol[k] = i, (burst + delay) * i\n"
    "  local v = tonumber(redis.call('GET', KEYS[k]))\n"
    "  if not v or v ~= v or v < 0 or v > LIMIT then v = 0 end\n"
    "  v = floor(v)\n"
    "  tat[k], start[k] = v, v\n"
    "end\n"
    "local out, o = {now}, 1\n"
    "for g = 1, G do\n"
    "  local m = tonumber(ARGV[a])\n"
    "  a = a + 1\n"
    "  if not m then return bad() end\n"
    "  local peek = m < 0\n"
    "  if peek then m = -m end\n"
    "  if m < 1 or a + 2 * m - 1 > NA then return bad() end\n"
    "  local tent, all = nil, true\n"
    "  if m > 1 then tent = {} end\n"
    "  for j = 1, m do\n"
    "    local k, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1])\n"
    "    a = a + 2\n"
    "    local before = k and ((tent and tent[k]) or tat[k])\n"
    "    if not before or not cost or cost < 0 then return bad() end\n"
    "    o = o + 1\n"
    "    out[o] = before\n"
    "    local excess = cost * iv[k]\n"
    "    if before > now then excess = excess + (before - now) end\n"
    "    if excess <= ttol[k] and now + excess < LIMIT then\n"
    "      if tent then tent[k] = now + excess\n"
    "      elseif not peek then tat[k] = now + excess end\n"
    "    else\n"
    "      all = false\n"
    "    end\n"
    "  end\n"
    "  if tent and all and not peek then\n"
    "    for k, v in pairs(tent) do tat[k] = v end\n"
    "  end\n"
    "end\n"
    "for k = 1, K do\n"
    "  local v = tat[k]\n"
    "  if v ~= start[k] and v > now then\n"
    "    redis.call('SET', KEYS[k], string.format('%.0f', v), 'PX',\n"
    "               string.format('%.0f', idiv(v - now + 999, 1000)))\n"
    "  end\n"
    "end\n"
    "return out\n";

/* See the top. The arguments are checked before anything is written; a
 * stored value that is not a number in 0..2^53 reads as 0 (a full bucket:
 * nothing to give back), as in GCRA_LUA. cost * interval is exact below
 * 2^53 and otherwise far larger than any TAT, which then only has to come
 * out not after now. Returns how many keys it changed. */
static const char REFUND_LUA[] =
    "-- tollgate GCRA refund v1: see src/ratelimit_redis.c\n"
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local floor = math.floor\n"
    "local LIMIT = 9007199254740992\n"
    "local function idiv(a, b)\n"
    "  local q = floor(a / b)\n"
    "  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end\n"
    "  return q\n"
    "end\n"
    "local function bad()\n"
    "  return redis.error_reply('ERR tollgate refund: bad arguments')\n"
    "end\n"
    "local K = #KEYS\n"
    "if K < 1 or #ARGV ~= 2 * K then return bad() end\n"
    "local iv, cost = {}, {}\n"
    "for k = 1, K do\n"
    "  local i, c = tonumber(ARGV[2 * k - 1]), tonumber(ARGV[2 * k])\n"
    "  if not (i and c) or i < 1 or c < 0 then return bad() end\n"
    "  iv[k], cost[k] = i, c\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local n = 0\n"
    "for k = 1, K do\n"
    "  local v = tonumber(redis.call('GET', KEYS[k]))\n"
    "  if not v or v ~= v or v < 0 or v > LIMIT then v = 0 end\n"
    "  v = floor(v)\n"
    "  if v > now then\n"
    "    local back = v - cost[k] * iv[k]\n"
    "    if back > now then\n"
    "      redis.call('SET', KEYS[k], string.format('%.0f', back), 'PX',\n"
    "                 string.format('%.0f', idiv(back - now + 999, 1000)))\n"
    "    else\n"
    "      redis.call('DEL', KEYS[k])\n"
    "    end\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

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
#define NUM_MAX 21            /* digits of an int64, a sign and a NUL */
#define HASHED_KEY_LEN 65     /* '#' and 64 hex digits */
#define KEY_BRACES_LEN 3      /* '{', ':' and '}' around policy:key */
#define HEARTBEAT_KEY_MAX 512 /* PREFIX{gateways}: a longer prefix skips it */
#define SHA1_LEN 20           /* bytes: script digests (EVALSHA) */
#define SHA1_HEX_LEN 40
#define SHA256_LEN 32 /* bytes: digests of over-long keys */

/* Knobs the unit test shortens; the defaults are production's. */
static double heartbeat_interval_s = 2.0;
static struct tg_redis_options link_tuning; /* zero: redis.c's defaults */

static _Atomic unsigned gateways_seen = 1;

struct take_part;
struct batch;

struct tg_ratelimit_redis {
    struct ev_loop *loop;
    struct tg_redis_cluster *link; /* the one server, or the cluster's primaries */
    char *prefix;
    size_t prefix_len;
    char *gateway_id;
    bool heartbeat;
    ev_timer heartbeat_timer;
    struct tg_redis_cluster_cmd *heartbeat_cmd; /* in flight */
    bool loading;                               /* a SCRIPT LOAD in flight */
    char sha[SHA1_HEX_LEN + 1];                 /* of GCRA_LUA, hex */
    char refund_sha[SHA1_HEX_LEN + 1];          /* of REFUND_LUA, hex */
    bool refund_cached;                         /* this connection ran REFUND_LUA */

    int64_t last_time_us; /* Redis TIME of the last decision (tests) */
    uint64_t reloads;     /* NOSCRIPT retries (takes and refunds) */
    uint64_t requests, errors, short_circuited;
    uint64_t split, partial, slot_refunds; /* cluster: see the stats */

    /* Parts of takes asked for in this loop iteration, sent together by
     * `flush`; batches that could not be sent, answered there too. */
    struct take_part *queue_head, *queue_tail;
    size_t queued, queued_keys;
    struct batch *unsent;
    ev_prepare flush;
    uint64_t k0, k1; /* SipHash key of the batches' key tables */
};

/* At most this many parts (and keys) go in one EVALSHA. */
#define BATCH_MAX 64
#define BATCH_KEYS_MAX 512

/* One request's take, from tg_ratelimit_redis_take until its callback
 * (or cancel). Keys and numbers are kept as the command's arguments will
 * need them. */
struct take_op {
    const char *key; /* the full Redis key, in the pending's memory */
    size_t keylen;
    int64_t iv_us, burst, delay, cost;
    unsigned key_index; /* its place in the batch's KEYS, from 1 */
    unsigned slot;      /* its cluster hash slot (0: one server) */
    unsigned at;        /* its place in the request (results go there) */
};

/* What became of a part. */
enum part_outcome {
    PART_WAITING = 0,
    PART_ALLOWED, /* decided: every key allowed (and spent, unless a peek) */
    PART_REFUSED, /* decided: some key refused, nothing spent */
    PART_FAILED,  /* not decided: its node failed or could not be asked */
    PART_DROPPED, /* not sent: the take was cancelled while it was queued */
};

/* The keys of a take that share a hash slot: decided together by one
 * script run on that slot's node. One server: a take is one part. */
struct take_part {
    struct tg_ratelimit_redis_pending *p;
    struct take_part *next; /* in the queue, then in its batch */
    struct batch *batch;    /* NULL while queued */
    unsigned slot;
    unsigned first, n; /* p->ops[first .. first + n) */
    unsigned char outcome;
};

struct tg_ratelimit_redis_pending {
    struct tg_ratelimit_redis *r;
    tg_ratelimit_redis_cb cb;
    void *arg;
    bool peek;
    bool cancelled; /* its parts in batches end it */
    bool pooled;    /* PENDING_BLOCK bytes, from the free list */
    size_t nops;
    unsigned nparts, left;           /* parts, and those not answered yet */
    struct take_part *parts;         /* nparts, in its memory */
    struct tg_ratelimit_result *res; /* several parts: gathered by op.at */
    struct tg_ratelimit_redis_pending *free_next;
    struct take_op ops[]; /* nops, by slot; then parts, results, the keys' bytes */
};

/* One EVALSHA carrying the parts of several takes, all on one slot. Owns
 * the command's arguments until the reply (or the link's NULL on failure)
 * ends it; its parts until then. */
struct batch {
    struct tg_ratelimit_redis *r;
    struct tg_redis_cluster_cmd *cmd;
    struct take_part *head;
    struct batch *next_unsent;
    size_t n;
    unsigned slot;
    bool retried;
    ev_tstamp deadline;
    int argc;
    const char **argv;
    size_t *argvlen;
    char *numbuf; /* the decimal numbers, NUM_MAX each */
};

/* A reset (DEL): its own command, not batched. */
struct reset_cmd {
    struct tg_ratelimit_redis *r;
    tg_ratelimit_redis_cb cb;
    void *arg;
    char key[];
};

/* Several refund commands (keys on several slots) answering one caller:
 * the callback runs when the last one ends. */
struct refund_group {
    tg_ratelimit_redis_cb cb;
    void *arg;
    unsigned left;
    bool failed;
};

/* A refund of keys of one slot: its own command, not batched. One
 * allocation holds the command's arguments (kept for a NOSCRIPT resend)
 * until the reply. */
struct refund_cmd {
    struct tg_ratelimit_redis *r;
    tg_ratelimit_redis_cb cb; /* may be NULL */
    void *arg;
    struct refund_group *group; /* or NULL: cb is this command's own */
    bool retried;
    size_t nops;
    unsigned slot;
    ev_tstamp deadline;
    int argc;
    const char **argv;
    size_t *argvlen;
    /* then argv, argvlen, the keys and the numbers */
};

/* ---- pending takes: a free list per thread ------------------------------ */

/* A take with a key or two (almost all) fits one block; blocks come back to
 * a free list of the thread (the worker) that runs the limiter, so a take
 * costs no malloc under load. The list is a thread's, not a limiter's:
 * batch_end gives blocks back after callbacks that may have freed it. */
#define PENDING_BLOCK 512
#define PENDING_FREE_MAX 256

static __thread struct tg_ratelimit_redis_pending *pending_free;
static __thread unsigned pending_nfree;

static struct tg_ratelimit_redis_pending *pending_alloc(size_t size)
{
    struct tg_ratelimit_redis_pending *p;
    if (size > PENDING_BLOCK) {
        p = malloc(size);
        if (p != NULL)
            p->pooled = false;
        return p;
    }
    p = pending_free;
    if (p != NULL) {
        pending_free = p->free_next;
        pending_nfree--;
    } else {
        p = malloc(PENDING_BLOCK);
        if (p == NULL)
            return NULL;
    }
    p->pooled = true;
    return p;
}

static void pending_release(struct tg_ratelimit_redis_pending *p)
{
    if (p->pooled && pending_nfree < PENDING_FREE_MAX) {
        p->free_next = pending_free;
        pending_free = p;
        pending_nfree++;
        return;
    }
    free(p);
}

/* Empties this thread's free list (when a limiter goes). */
static void pending_drain(void)
{
    while (pending_free != NULL) {
        struct tg_ratelimit_redis_pending *p = pending_free;
        pending_free = p->free_next;
        free(p);
    }
    pending_nfree = 0;
}

/* ---- helpers ------------------------------------------------------------- */

static void hex(char *out, const unsigned char *md, size_t n)
{
    out[tg_hex_encode(out, md, n, false)] = '\0';
}

static int digest(const EVP_MD *md, const void *data, size_t len, unsigned char *out)
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, md, NULL) == 1 ? (int)n : -1;
}

/* Length of the Redis key for (policy, key). */
static size_t key_len(const struct tg_ratelimit_redis *r, const char *policy, size_t keylen)
{
    if (keylen > TG_RATELIMIT_REDIS_KEY_MAX)
        keylen = HASHED_KEY_LEN;
    return r->prefix_len + strlen(policy) + keylen + KEY_BRACES_LEN;
}

/* Writes PREFIX{policy:key} at out (key_len bytes, no NUL). Returns the
 * length, or 0 if hashing a long key failed. */
static size_t build_key(const struct tg_ratelimit_redis *r, char *out, const char *policy,
                        const char *key, size_t keylen)
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
        char h[2 * SHA256_LEN + 1];
        if (digest(EVP_sha256(), key, keylen, md) != SHA256_LEN)
            return 0;
        hex(h, md, SHA256_LEN);
        *p++ = '#';
        memcpy(p, h, 2 * SHA256_LEN);
        p += 2 * SHA256_LEN;
    } else if (keylen > 0) {
        memcpy(p, key, keylen);
        p += keylen;
    }
    *p++ = '}';
    return (size_t)(p - out);
}

/* What is left until `deadline`, in ms, at least 1. */
static int64_t ms_until(const struct tg_ratelimit_redis *r, ev_tstamp deadline)
{
    double left = (deadline - ev_now(r->loop)) * 1e3;
    return left >= 1. ? (int64_t)(left + 0.999) : 1;
}

static int64_t remaining_ms(const struct batch *b)
{
    return ms_until(b->r, b->deadline);
}

/* The interval on the scripts' microsecond clock, rounded up: never a
 * faster rate than configured. Takes and refunds share it, so a refund
 * subtracts exactly what its take added. */
static int64_t interval_us(const struct tg_ratelimit_params *p)
{
    return p->interval_ns / 1000 + (p->interval_ns % 1000 != 0);
}

/* Whether a command for `slot` would be sent now. */
static bool slot_up(const struct tg_ratelimit_redis *r, unsigned slot)
{
    return tg_redis_cluster_slot_state(r->link, slot) == TG_REDIS_UP;
}

/* Orders ops by slot, keeping the request's order within a slot (so a
 * key named twice is decided in order, and one server's ops stay as
 * they came). At most MAX_OPS: insertion sort. */
static void sort_by_slot(struct take_op *ops, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        struct take_op o = ops[i];
        size_t j = i;
        while (j > 0 && ops[j - 1].slot > o.slot) {
            ops[j] = ops[j - 1];
            j--;
        }
        ops[j] = o;
    }
}

/* ---- script loading -------------------------------------------------------- */

static int on_script_loaded(void *arg, const redisReply *reply)
{
    struct tg_ratelimit_redis *r = arg;
    r->loading = false;
    if (reply == NULL)
        return 0;
    if (reply->type == REDIS_REPLY_STRING && reply->len == SHA1_HEX_LEN &&
        memcmp(reply->str, r->sha, SHA1_HEX_LEN) == 0)
        return 0;
    r->errors++;
    if (reply->type == REDIS_REPLY_STRING)
        tg_log_error("redis ratelimit: SCRIPT LOAD returned %.*s, expected %s",
                     (int)(reply->len > SHA1_HEX_LEN ? SHA1_HEX_LEN : reply->len), reply->str,
                     r->sha);
    return -1;
}

/* Queues SCRIPT LOAD on the one server unless one is already in flight:
 * commands queued after it on this connection then find the script. A
 * cluster has no one server: each node gets the script from the first
 * batch it answers with NOSCRIPT (sent again as EVAL). */
static void load_script(struct tg_ratelimit_redis *r)
{
    if (r->loading || tg_redis_cluster_enabled(r->link))
        return;
    const char *argv[] = {"SCRIPT", "LOAD", GCRA_LUA};
    size_t len[] = {6, 4, sizeof(GCRA_LUA) - 1};
    if (tg_redis_cluster_command(r->link, 0, 3, argv, len, 0, on_script_loaded, r) != NULL)
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
    unsigned n = reply->integer > UINT32_MAX ? UINT32_MAX : (unsigned)reply->integer;
    atomic_store(&gateways_seen, n);
    return 0;
}

static void send_heartbeat(struct tg_ratelimit_redis *r)
{
    char key[HEARTBEAT_KEY_MAX], ttl[NUM_MAX];
    if (!r->heartbeat || r->heartbeat_cmd != NULL)
        return;
    int klen = snprintf(key, sizeof(key), "%s{gateways}", r->prefix);
    if (klen < 0 || (size_t)klen >= sizeof(key))
        return;
    unsigned slot = tg_redis_cluster_slot(r->link, key, (size_t)klen);
    if (!slot_up(r, slot))
        return;
    int tlen = snprintf(ttl, sizeof(ttl), "%d", HEARTBEAT_TTL_MS);
    const char *argv[] = {"EVAL", HEARTBEAT_LUA, "1", key, r->gateway_id, ttl};
    size_t len[] = {4,           sizeof(HEARTBEAT_LUA) - 1, 1, (size_t)klen, strlen(r->gateway_id),
                    (size_t)tlen};
    r->heartbeat_cmd = tg_redis_cluster_command(r->link, slot, 6, argv, len, 0, on_heartbeat, r);
}

static void on_heartbeat_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    send_heartbeat(w->data);
}

static void on_link_state(void *arg, enum tg_redis_state old, enum tg_redis_state state)
{
    (void)old;
    struct tg_ratelimit_redis *r = arg;
    if (state != TG_REDIS_UP)
        return;
    r->refund_cached = false;
    /* A new connection may be a new (or flushed) server. Queued first, so
     * every EVALSHA after it finds the script. */
    load_script(r);
    send_heartbeat(r);
}

/* ---- refund -------------------------------------------------------------- */

/* Frees the command, then tells its caller (who may do anything but free
 * the limiter). */
static void refund_end(struct refund_cmd *c, int status)
{
    tg_ratelimit_redis_cb cb = c->cb;
    void *arg = c->arg;
    struct refund_group *g = c->group;
    free(c);
    if (g != NULL) {
        g->failed |= status < 0;
        if (--g->left > 0)
            return;
        cb = g->cb;
        arg = g->arg;
        status = g->failed ? -1 : 0;
        free(g);
    }
    if (cb != NULL)
        cb(arg, status, status == 0, NULL, 0);
}

static bool is_error(const redisReply *rep, const char *code)
{
    size_t n = strlen(code);
    return rep->type == REDIS_REPLY_ERROR && rep->len >= n && memcmp(rep->str, code, n) == 0 &&
           (rep->len == n || rep->str[n] == ' ');
}

static int on_refund_reply(void *arg, const redisReply *reply)
{
    struct refund_cmd *c = arg;
    struct tg_ratelimit_redis *r = c->r;
    if (reply == NULL) {
        refund_end(c, -1);
        return 0; /* ignored: the link counted the fault */
    }
    if (!c->retried && is_error(reply, "NOSCRIPT")) {
        /* The script cache was flushed: send the script itself (which
         * caches it again), within what is left of the deadline. */
        c->retried = true;
        r->reloads++;
        r->refund_cached = false;
        c->argv[0] = "EVAL";
        c->argvlen[0] = 4;
        c->argv[1] = REFUND_LUA;
        c->argvlen[1] = sizeof(REFUND_LUA) - 1;
        if (tg_redis_cluster_command(r->link, c->slot, c->argc, c->argv, c->argvlen,
                                     ms_until(r, c->deadline), on_refund_reply, c) == NULL)
            refund_end(c, -1);
        return 0; /* Redis answered: not a fault */
    }
    if (reply->type != REDIS_REPLY_INTEGER || reply->integer < 0 ||
        (unsigned long long)reply->integer > c->nops) {
        r->errors++;
        refund_end(c, -1);
        return -1;
    }
    r->refund_cached = true;
    refund_end(c, 0);
    return 0;
}

/* Sends one refund command for ops (built keys, all on `slot`). Returns 0,
 * or -1 when it cannot be sent now (nothing is called back then). */
static int send_refund(struct tg_ratelimit_redis *r, unsigned slot, const struct take_op *ops,
                       size_t nops, tg_ratelimit_redis_cb cb, void *arg, struct refund_group *g)
{
    /* EVALSHA sha K key... (interval_us cost)... */
    int argc = 3 + 3 * (int)nops;
    size_t bytes = 0;
    for (size_t i = 0; i < nops; i++)
        bytes += ops[i].keylen;
    struct refund_cmd *c = malloc(sizeof(*c) + (size_t)argc * (sizeof(char *) + sizeof(size_t)) +
                                  bytes + (1 + 2 * nops) * NUM_MAX);
    if (c == NULL)
        return -1;
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    c->group = g;
    c->retried = false;
    c->nops = nops;
    c->slot = slot;
    c->deadline = ev_now(r->loop) + (double)tg_redis_cluster_timeout_ms(r->link) / 1e3;
    c->argc = argc;
    c->argv = (const char **)(c + 1);
    c->argvlen = (size_t *)(c->argv + argc);
    char *buf = (char *)(c->argvlen + argc);
    char *num = buf + bytes;

    int i = 0;
#define ARG(ptr, len) (c->argv[i] = (ptr), c->argvlen[i++] = (len))
#define NUM(v)                                     \
    do {                                           \
        ARG(num, tg_str_i64(num, (long long)(v))); \
        num += NUM_MAX;                            \
    } while (0)
    if (r->refund_cached) {
        ARG("EVALSHA", 7);
        ARG(r->refund_sha, SHA1_HEX_LEN);
    } else {
        ARG("EVAL", 4);
        ARG(REFUND_LUA, sizeof(REFUND_LUA) - 1);
    }
    NUM(nops);
    for (size_t k = 0; k < nops; k++) {
        memcpy(buf, ops[k].key, ops[k].keylen);
        ARG(buf, ops[k].keylen);
        buf += ops[k].keylen;
    }
    for (size_t k = 0; k < nops; k++) {
        NUM(ops[k].iv_us);
        NUM(ops[k].cost);
    }
#undef NUM
#undef ARG
    if (tg_redis_cluster_command(r->link, slot, c->argc, c->argv, c->argvlen, 0, on_refund_reply,
                                 c) == NULL) {
        free(c);
        r->short_circuited++;
        return -1;
    }
    return 0;
}

/* ---- take ---------------------------------------------------------------- */

/* The script's numbers are microseconds below 2^53 (see the top). */
#define US_LIMIT (INT64_C(1) << 53)
#define US_MAX_TOLERANCE (INT64_C(1) << 52)

/* One key's result for a request, from the TAT the script saw: the C core's
 * decision on the script's clock and with its tolerance cap, so it is the
 * one the script made. */
static void op_result(const struct take_op *op, int64_t tat_us, int64_t now_us,
                      struct tg_ratelimit_result *out)
{
    int64_t iv = op->iv_us, burst = op->burst, delay = op->delay;
    if ((__int128)(burst + delay) * iv > US_MAX_TOLERANCE) {
        int64_t most = US_MAX_TOLERANCE / iv;
        if (burst > most)
            burst = most;
        if (delay > most - burst)
            delay = most - burst;
    }
    struct tg_ratelimit_params p = {iv * 1000, burst, delay};
    tg_ratelimit_gcra_peek(tat_us * 1000, now_us * 1000, &p, op->cost, out);
}

/* Fills res[0..q->n) from the reply's elements at *at. Returns whether
 * every key allowed. */
static bool part_results(const struct take_part *q, const redisReply *rep, size_t *at,
                         struct tg_ratelimit_result *res)
{
    int64_t now = rep->element[0]->integer;
    bool all = true;
    for (unsigned k = 0; k < q->n; k++) {
        op_result(&q->p->ops[q->first + k], rep->element[(*at)++]->integer, now, &res[k]);
        all &= res[k].allowed;
    }
    return all;
}

/* Checks the whole reply's shape and values before anyone is told
 * anything: a malformed reply is one fault for the whole batch. */
static bool reply_valid(const struct batch *b, const redisReply *rep)
{
    size_t want = 1;
    for (const struct take_part *q = b->head; q != NULL; q = q->next)
        want += q->n;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != want)
        return false;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        if (e == NULL || e->type != REDIS_REPLY_INTEGER || e->integer < 0 || e->integer > US_LIMIT)
            return false;
    }
    return rep->element[0]->integer > 0 && rep->element[0]->integer < US_LIMIT;
}

/* Every part of a take of several slots has answered. All or nothing
 * across slots: when a slot refused, what the others spent is given back
 * (a refund on each, on Redis' clock; nobody waits for it). Keys of parts
 * that failed are flagged store_failed, for the caller's on_error. The
 * callback may free nothing of ours but may take again. */
static void finish_take(struct tg_ratelimit_redis *r, struct tg_ratelimit_redis_pending *p)
{
    bool refused = false, failed = false, decided = false;
    for (unsigned i = 0; i < p->nparts; i++) {
        unsigned char o = p->parts[i].outcome;
        refused |= o == PART_REFUSED;
        failed |= o == PART_FAILED || o == PART_DROPPED;
        decided |= o == PART_ALLOWED || o == PART_REFUSED;
    }
    if (refused && !p->peek) {
        for (unsigned i = 0; i < p->nparts; i++) {
            const struct take_part *q = &p->parts[i];
            if (q->outcome != PART_ALLOWED)
                continue;
            r->slot_refunds++;
            (void)send_refund(r, q->slot, &p->ops[q->first], q->n, NULL, NULL, NULL);
        }
    }
    if (failed && decided)
        r->partial++;
    struct tg_ratelimit_result res[MAX_OPS];
    size_t n = p->nops;
    memcpy(res, p->res, n * sizeof(res[0]));
    tg_ratelimit_redis_cb cb = p->cancelled ? NULL : p->cb;
    void *arg = p->arg;
    pending_release(p);
    if (cb == NULL)
        return;
    if (decided)
        cb(arg, 0, !refused, res, n);
    else
        cb(arg, -1, false, NULL, 0);
}

/* A part's outcome is known (res: its keys' results when decided). A take
 * of one part is answered at once; one of several when its last part is. */
static void part_done(struct tg_ratelimit_redis *r, struct take_part *q, enum part_outcome outcome,
                      const struct tg_ratelimit_result *res)
{
    struct tg_ratelimit_redis_pending *p = q->p;
    q->outcome = (unsigned char)outcome;
    q->batch = NULL;
    q->next = NULL;
    if (p->nparts == 1) {
        tg_ratelimit_redis_cb cb = p->cancelled ? NULL : p->cb;
        void *arg = p->arg;
        size_t n = p->nops;
        pending_release(p);
        if (cb == NULL)
            return;
        if (outcome == PART_ALLOWED || outcome == PART_REFUSED)
            cb(arg, 0, outcome == PART_ALLOWED, res, n);
        else
            cb(arg, -1, false, NULL, 0);
        return;
    }
    for (unsigned k = 0; k < q->n; k++) {
        const struct take_op *op = &p->ops[q->first + k];
        if (outcome == PART_ALLOWED || outcome == PART_REFUSED)
            p->res[op->at] = res[k];
        else
            p->res[op->at] = (struct tg_ratelimit_result){.store_failed = true};
    }
    if (--p->left == 0)
        finish_take(r, p);
}

/* Answers the parts of a batch: with the reply (which passed
 * reply_valid), or (rep NULL) that the store failed. The callbacks may
 * take again but not free the limiter. */
static void answer_parts(struct tg_ratelimit_redis *r, struct take_part *q, const redisReply *rep)
{
    size_t at = 1;
    if (rep != NULL)
        r->last_time_us = rep->element[0]->integer;
    while (q != NULL) {
        struct take_part *next = q->next;
        struct tg_ratelimit_result res[MAX_OPS];
        if (rep == NULL)
            part_done(r, q, PART_FAILED, NULL);
        else
            part_done(r, q, part_results(q, rep, &at, res) ? PART_ALLOWED : PART_REFUSED, res);
        q = next;
    }
}

static void batch_end(struct batch *b, const redisReply *rep)
{
    struct tg_ratelimit_redis *r = b->r;
    struct take_part *q = b->head;
    free(b->argv);
    free(b);
    answer_parts(r, q, rep);
}

static int on_batch_reply(void *arg, const redisReply *reply)
{
    struct batch *b = arg;
    struct tg_ratelimit_redis *r = b->r;
    if (reply == NULL) {
        batch_end(b, NULL);
        return 0; /* ignored: the link counted the fault */
    }
    if (!b->retried && is_error(reply, "NOSCRIPT")) {
        /* The script cache was flushed (SCRIPT FLUSH, a restart behind a
         * proxy, a failover, a cluster node's first batch): send the same
         * batch with the script itself, which caches it again, within
         * what is left of its deadline. */
        b->retried = true;
        r->reloads++;
        b->argv[0] = "EVAL";
        b->argvlen[0] = 4;
        b->argv[1] = GCRA_LUA;
        b->argvlen[1] = sizeof(GCRA_LUA) - 1;
        b->cmd = tg_redis_cluster_command(r->link, b->slot, b->argc, b->argv, b->argvlen,
                                          remaining_ms(b), on_batch_reply, b);
        if (b->cmd == NULL)
            batch_end(b, NULL);
        return 0; /* Redis answered: not a fault */
    }
    if (!reply_valid(b, reply)) {
        /* -READONLY, -LOADING, -BUSY, -CLUSTERDOWN, a second NOSCRIPT, a
         * wrong type or shape: a fault, reported once per state change by
         * the link. */
        r->errors++;
        batch_end(b, NULL);
        return -1;
    }
    for (const struct take_part *q = b->head; q != NULL; q = q->next)
        r->requests += q->n;
    batch_end(b, reply);
    return 0;
}

/* The distinct keys of the batch being built: each is named, read and
 * described once, and ops refer to it by index (op->key_index, from 1). */
#define KEY_INDEX_MIN 16 /* slots at least: small batches clear little */
struct key_index {
    uint64_t k0, k1; /* the limiter's SipHash key */
    size_t mask;     /* slots - 1, a power of two */
    size_t n;
    uint16_t slot[2 * BATCH_KEYS_MAX];         /* index + 1; 0: empty */
    const struct take_op *key[BATCH_KEYS_MAX]; /* in order of first use */
};

static void key_index_init(struct key_index *ix, const struct tg_ratelimit_redis *r, size_t keys)
{
    ix->k0 = r->k0;
    ix->k1 = r->k1;
    /* At least twice the keys the batch may take: half full at most. */
    if (keys > BATCH_KEYS_MAX)
        keys = BATCH_KEYS_MAX;
    ix->mask = KEY_INDEX_MIN - 1;
    while (ix->mask + 1 < 2 * keys)
        ix->mask = 2 * ix->mask + 1;
    ix->n = 0;
    memset(ix->slot, 0, (ix->mask + 1) * sizeof(ix->slot[0]));
}

/* The table slot holding op's key (by its bytes), or the empty one it
 * would go in. */
static size_t key_slot(const struct key_index *ix, const struct take_op *op)
{
    /* Keyed: clients choose the keys (addresses, headers). */
    size_t at = (size_t)tg_siphash13(op->key, op->keylen, ix->k0, ix->k1) & ix->mask;
    for (;;) {
        unsigned s = ix->slot[at];
        if (s == 0)
            return at;
        const struct take_op *k = ix->key[s - 1];
        if (k->keylen == op->keylen && memcmp(k->key, op->key, op->keylen) == 0)
            return at;
        at = (at + 1) & ix->mask;
    }
}

/* True when q names a key of the batch under other bucket settings (a
 * reload changed the policy while takes under the old one were queued):
 * the script decides a key with one setting, so q waits for the next
 * batch, where it sees this one's spends. */
static bool key_index_conflicts(const struct key_index *ix, const struct take_part *q)
{
    for (unsigned k = 0; k < q->n; k++) {
        const struct take_op *op = &q->p->ops[q->first + k];
        unsigned s = ix->slot[key_slot(ix, op)];
        if (s != 0) {
            const struct take_op *o = ix->key[s - 1];
            if (o->iv_us != op->iv_us || o->burst != op->burst || o->delay != op->delay)
                return true;
        }
    }
    return false;
}

/* True when every key of q is already in the batch. */
static bool key_index_covers(const struct key_index *ix, const struct take_part *q)
{
    for (unsigned k = 0; k < q->n; k++)
        if (ix->slot[key_slot(ix, &q->p->ops[q->first + k])] == 0)
            return false;
    return true;
}

static void key_index_add(struct key_index *ix, struct take_part *q)
{
    for (unsigned k = 0; k < q->n; k++) {
        struct take_op *op = &q->p->ops[q->first + k];
        size_t at = key_slot(ix, op);
        if (ix->slot[at] == 0) {
            ix->key[ix->n++] = op;
            ix->slot[at] = (uint16_t)ix->n;
        }
        op->key_index = ix->slot[at];
    }
}

/* Takes the next batch's parts off the queue: the first queued part's
 * slot, and the parts after it on that slot, in order, as many as fit
 * (and none after one that conflicts, which starts the next batch).
 * Parts of other slots stay queued, in order. On a cluster a batch also
 * names no key beyond the first part's: while a slot migrates, a node
 * refuses (TRYAGAIN) a script whose keys are on both sides, and one key
 * never is; parts on one hot key still share a run. Returns the chain's
 * head; *n and *keys say how many parts and keys it holds. */
static struct take_part *take_batch(struct tg_ratelimit_redis *r, struct key_index *ix, size_t *n,
                                    size_t *keys)
{
    unsigned slot = r->queue_head->slot;
    bool first_keys_only = tg_redis_cluster_enabled(r->link);
    struct take_part *head = NULL, **tail = &head;
    struct take_part **pp = &r->queue_head, *prev = NULL;
    *n = *keys = 0;
    while (*pp != NULL) {
        struct take_part *q = *pp;
        if (q->slot != slot) {
            prev = q;
            pp = &q->next;
            continue;
        }
        if (*n >= BATCH_MAX || *keys + q->n > BATCH_KEYS_MAX ||
            (*n > 0 && key_index_conflicts(ix, q)) ||
            (*n > 0 && first_keys_only && !key_index_covers(ix, q)))
            break;
        *pp = q->next; /* off the queue */
        if (r->queue_tail == q)
            r->queue_tail = prev;
        q->next = NULL;
        *tail = q;
        tail = &q->next;
        key_index_add(ix, q);
        *keys += q->n;
        (*n)++;
    }
    r->queued -= *n;
    r->queued_keys -= *keys;
    return head;
}

/* Sends what is queued, one EVALSHA per batch (each on one slot):
 *   EVALSHA sha K key... G (interval_us burst delay)... (m (index cost)...)...
 * with m negated for a peek. A batch that cannot be sent waits on
 * r->unsent, answered by on_flush (never inside a take). */
static void flush_queue(struct tg_ratelimit_redis *r)
{
    struct key_index ix;
    while (r->queue_head != NULL) {
        key_index_init(&ix, r, r->queued_keys);
        size_t n, keys;
        unsigned slot = r->queue_head->slot;
        struct take_part *head = take_batch(r, &ix, &n, &keys);

        size_t nd = ix.n;
        const struct take_op *const *distinct = ix.key;
        int argc = 3 + 4 * (int)nd + 1 + (int)n + 2 * (int)keys;
        size_t nums = 2 + 3 * nd + n + 2 * keys;
        struct batch *b = batch_calloc(1, sizeof(*b));
        char *mem =
            b ? batch_malloc((size_t)argc * (sizeof(char *) + sizeof(size_t)) + nums * NUM_MAX)
              : NULL;
        if (b == NULL || mem == NULL) {
            free(b);
            free(mem);
            /* Out of memory: tell them at once (they get on_error), with
             * nothing more to allocate. */
            answer_parts(r, head, NULL);
            continue;
        }
        b->r = r;
        b->head = head;
        b->n = n;
        b->slot = slot;
        b->argc = argc;
        b->argv = (const char **)mem;
        b->argvlen = (size_t *)(b->argv + argc);
        b->numbuf = (char *)(b->argvlen + argc);
        b->deadline = ev_now(r->loop) + (double)tg_redis_cluster_timeout_ms(r->link) / 1e3;
        for (struct take_part *q = head; q != NULL; q = q->next)
            q->batch = b;

        int i = 0;
        char *num = b->numbuf;
#define ARG(ptr, len) (b->argv[i] = (ptr), b->argvlen[i++] = (len))
#define NUM(v)                                     \
    do {                                           \
        ARG(num, tg_str_i64(num, (long long)(v))); \
        num += NUM_MAX;                            \
    } while (0)
        ARG("EVALSHA", 7);
        ARG(r->sha, SHA1_HEX_LEN);
        NUM(nd);
        for (size_t d = 0; d < nd; d++)
            ARG(distinct[d]->key, distinct[d]->keylen);
        NUM(n);
        for (size_t d = 0; d < nd; d++) {
            NUM(distinct[d]->iv_us);
            NUM(distinct[d]->burst);
            NUM(distinct[d]->delay);
        }
        for (struct take_part *q = head; q != NULL; q = q->next) {
            NUM(q->p->peek ? -(long long)q->n : (long long)q->n);
            for (unsigned k = 0; k < q->n; k++) {
                NUM(q->p->ops[q->first + k].key_index);
                NUM(q->p->ops[q->first + k].cost);
            }
        }
#undef NUM
#undef ARG
        b->cmd = tg_redis_cluster_command(r->link, slot, b->argc, b->argv, b->argvlen, 0,
                                          on_batch_reply, b);
        if (b->cmd == NULL) {
            r->short_circuited += n;
            b->next_unsent = r->unsent;
            r->unsent = b;
        }
    }
}

/* Answers the batches that could not be sent (their parts fail). */
static void end_unsent(struct tg_ratelimit_redis *r)
{
    while (r->unsent != NULL) {
        struct batch *b = r->unsent;
        r->unsent = b->next_unsent;
        batch_end(b, NULL);
    }
}

/* Just before the loop waits: everything asked for in this iteration goes
 * out together. */
static void on_flush(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    struct tg_ratelimit_redis *r = w->data;
    ev_prepare_stop(loop, w);
    flush_queue(r);
    end_unsent(r);
    /* Out now, not after the loop's next wait. Here, between loop passes,
     * the callbacks a failed write runs interrupt nothing of ours. */
    tg_redis_cluster_flush(r->link);
}

static bool valid_op(const struct tg_ratelimit_redis_op *op)
{
    return op->policy != NULL && (op->key != NULL || op->keylen == 0) &&
           op->params.interval_ns >= 1 && op->params.burst >= 1 && op->params.delay >= 0 &&
           op->cost >= 0;
}

/* Builds each op's key (into buf) and slot, in the request's order.
 * Returns the bytes used, or 0 if a key could not be built. */
static size_t build_ops(const struct tg_ratelimit_redis *r, const struct tg_ratelimit_redis_op *ops,
                        size_t nops, struct take_op *out, char *buf)
{
    char *start = buf;
    for (size_t k = 0; k < nops; k++) {
        size_t n = build_key(r, buf, ops[k].policy, ops[k].key, ops[k].keylen);
        if (n == 0)
            return 0;
        const struct tg_ratelimit_params *pp = &ops[k].params;
        out[k] = (struct take_op){buf,
                                  n,
                                  interval_us(pp),
                                  pp->burst,
                                  pp->delay,
                                  ops[k].cost,
                                  0,
                                  tg_redis_cluster_slot(r->link, buf, n),
                                  (unsigned)k};
        buf += n;
    }
    return (size_t)(buf - start);
}

struct tg_ratelimit_redis_pending *tg_ratelimit_redis_take(struct tg_ratelimit_redis *r,
                                                           const struct tg_ratelimit_redis_op *ops,
                                                           size_t nops, bool peek,
                                                           tg_ratelimit_redis_cb cb, void *arg)
{
    if (nops == 0 || nops > MAX_OPS || cb == NULL)
        return NULL;
    for (size_t i = 0; i < nops; i++)
        if (!valid_op(&ops[i]))
            return NULL;
    if (tg_redis_cluster_state(r->link) == TG_REDIS_CONNECTING ||
        (!tg_redis_cluster_enabled(r->link) && !slot_up(r, 0))) {
        r->short_circuited++;
        return NULL;
    }
    size_t bytes = 0;
    for (size_t i = 0; i < nops; i++)
        bytes += key_len(r, ops[i].policy, ops[i].keylen);
    /* One per request: from the free list, and not zeroed. On a cluster,
     * room for a part per key and, with several keys, their results; one
     * server's take is one part. */
    bool cluster = tg_redis_cluster_enabled(r->link);
    size_t nparts_max = cluster ? nops : 1;
    size_t res_bytes = cluster && nops > 1 ? nops * sizeof(struct tg_ratelimit_result) : 0;
    struct tg_ratelimit_redis_pending *p =
        pending_alloc(sizeof(*p) + nops * sizeof(p->ops[0]) +
                      nparts_max * sizeof(struct take_part) + res_bytes + bytes);
    if (p == NULL) {
        r->short_circuited++;
        return NULL;
    }
    p->r = r;
    p->cb = cb;
    p->arg = arg;
    p->peek = peek;
    p->cancelled = false;
    p->nops = nops;
    p->parts = (struct take_part *)(p->ops + nops);
    p->res = res_bytes > 0 ? (struct tg_ratelimit_result *)(p->parts + nparts_max) : NULL;
    char *buf = (char *)(p->parts + nparts_max) + res_bytes;
    if (build_ops(r, ops, nops, p->ops, buf) == 0) {
        pending_release(p);
        r->short_circuited++;
        return NULL;
    }
    if (cluster && nops > 1)
        sort_by_slot(p->ops, nops);
    /* Parts: runs of one slot. One whose node is not up now fails at once
     * (the others still go); when all do, the caller hears it now. */
    p->nparts = 0;
    for (size_t k = 0; k < nops; k++) {
        if (k == 0 || p->ops[k].slot != p->ops[k - 1].slot)
            p->parts[p->nparts++] =
                (struct take_part){p, NULL, NULL, p->ops[k].slot, (unsigned)k, 0, PART_WAITING};
        p->parts[p->nparts - 1].n++;
    }
    p->left = p->nparts;
    size_t sent = 0;
    for (unsigned i = 0; i < p->nparts; i++) {
        struct take_part *q = &p->parts[i];
        if (!slot_up(r, q->slot)) {
            q->outcome = PART_FAILED;
            p->left--;
            if (p->res != NULL)
                for (unsigned k = 0; k < q->n; k++)
                    p->res[p->ops[q->first + k].at] =
                        (struct tg_ratelimit_result){.store_failed = true};
            continue;
        }
        if (r->queue_tail != NULL)
            r->queue_tail->next = q;
        else
            r->queue_head = q;
        r->queue_tail = q;
        r->queued++;
        r->queued_keys += q->n;
        sent++;
    }
    if (sent == 0) {
        pending_release(p);
        r->short_circuited++;
        return NULL;
    }
    if (p->nparts > 1)
        r->split++;
    if (!ev_is_active(&r->flush))
        ev_prepare_start(r->loop, &r->flush);
    return p;
}

/* Takes q off the queue. */
static void unqueue(struct tg_ratelimit_redis *r, struct take_part *q)
{
    struct take_part **pp = &r->queue_head, *prev = NULL;
    while (*pp != NULL && *pp != q) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp != q)
        return;
    *pp = q->next;
    if (r->queue_tail == q)
        r->queue_tail = prev;
    q->next = NULL;
    r->queued--;
    r->queued_keys -= q->n;
}

void tg_ratelimit_redis_cancel(struct tg_ratelimit_redis_pending *p)
{
    if (p == NULL)
        return;
    struct tg_ratelimit_redis *r = p->r;
    p->cancelled = true; /* parts in batches end it */
    for (unsigned i = 0; i < p->nparts; i++) {
        struct take_part *q = &p->parts[i];
        if (q->outcome != PART_WAITING || q->batch != NULL)
            continue;
        unqueue(r, q);
        q->outcome = PART_DROPPED;
        p->left--;
    }
    if (p->left > 0)
        return;
    if (p->nparts == 1)
        pending_release(p);
    else
        finish_take(r, p); /* gives back what answered parts spent, if one refused */
}

/* ---- reset --------------------------------------------------------------- */

static int on_reset_reply(void *arg, const redisReply *reply)
{
    struct reset_cmd *c = arg;
    tg_ratelimit_redis_cb cb = c->cb;
    void *cbarg = c->arg;
    struct tg_ratelimit_redis *r = c->r;
    free(c);
    if (reply == NULL) {
        cb(cbarg, -1, false, NULL, 0);
        return 0;
    }
    if (reply->type != REDIS_REPLY_INTEGER) {
        r->errors++;
        cb(cbarg, -1, false, NULL, 0);
        return -1;
    }
    cb(cbarg, 0, true, NULL, 0);
    return 0;
}

int tg_ratelimit_redis_reset(struct tg_ratelimit_redis *r, const char *policy, const char *key,
                             size_t keylen, tg_ratelimit_redis_cb cb, void *arg)
{
    if (policy == NULL || (key == NULL && keylen > 0) || cb == NULL)
        return -1;
    struct reset_cmd *c = calloc(1, sizeof(*c) + key_len(r, policy, keylen));
    if (c == NULL)
        return -1;
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    size_t n = build_key(r, c->key, policy, key, keylen);
    if (n == 0) {
        free(c);
        return -1;
    }
    const char *argv[] = {"DEL", c->key};
    size_t len[] = {3, n};
    unsigned slot = tg_redis_cluster_slot(r->link, c->key, n);
    if (!slot_up(r, slot) ||
        tg_redis_cluster_command(r->link, slot, 2, argv, len, 0, on_reset_reply, c) == NULL) {
        free(c);
        r->short_circuited++;
        return -1;
    }
    return 0;
}

/* ---- refund (public) -------------------------------------------------------- */

int tg_ratelimit_redis_refund(struct tg_ratelimit_redis *r, const struct tg_ratelimit_redis_op *ops,
                              size_t nops, tg_ratelimit_redis_cb cb, void *arg)
{
    if (nops == 0 || nops > MAX_OPS)
        return -1;
    for (size_t i = 0; i < nops; i++)
        if (!valid_op(&ops[i]))
            return -1;
    if (tg_redis_cluster_state(r->link) == TG_REDIS_CONNECTING ||
        (!tg_redis_cluster_enabled(r->link) && !slot_up(r, 0))) {
        r->short_circuited++;
        return -1;
    }
    /* The keys, built once and grouped by slot: one command per slot (a
     * cluster refuses a script whose keys span slots). */
    struct take_op built[MAX_OPS];
    size_t bytes = 0;
    for (size_t i = 0; i < nops; i++)
        bytes += key_len(r, ops[i].policy, ops[i].keylen);
    char *keys = malloc(bytes);
    if (keys == NULL || build_ops(r, ops, nops, built, keys) == 0) {
        free(keys);
        return -1;
    }
    sort_by_slot(built, nops);
    size_t groups = 1;
    for (size_t k = 1; k < nops; k++)
        groups += built[k].slot != built[k - 1].slot;
    struct refund_group *g = NULL;
    if (groups > 1 && cb != NULL) {
        if ((g = calloc(1, sizeof(*g))) == NULL) {
            free(keys);
            return -1;
        }
        *g = (struct refund_group){cb, arg, 1, false}; /* held until all are sent */
    }
    size_t sent = 0;
    for (size_t k = 0, run; k < nops; k += run) {
        for (run = 1; k + run < nops && built[k + run].slot == built[k].slot; run++)
            ;
        if (g != NULL)
            g->left++;
        if (send_refund(r, built[k].slot, &built[k], run, g != NULL ? NULL : cb, arg, g) == 0)
            sent++;
        else if (g != NULL)
            g->left--, g->failed = true;
    }
    free(keys);
    if (g != NULL && sent == 0)
        free(g);
    else if (g != NULL)
        g->left--; /* the hold: the commands sent answer later, never before this returns */
    return sent > 0 ? 0 : -1;
}

/* ---- lifetime ------------------------------------------------------------ */

static int set_prefix(struct tg_ratelimit_redis *r, const struct tg_config_redis *cfg)
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
                                                  const char *gateway_id, bool heartbeat)
{
    struct tg_ratelimit_redis *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->loop = loop;
    r->heartbeat = heartbeat;
    uint64_t key[2];
    tg_siphash_random_key(key);
    r->k0 = key[0];
    r->k1 = key[1];
    unsigned char md[EVP_MAX_MD_SIZE];
    if (digest(EVP_sha1(), GCRA_LUA, sizeof(GCRA_LUA) - 1, md) != SHA1_LEN)
        goto fail;
    hex(r->sha, md, SHA1_LEN);
    if (digest(EVP_sha1(), REFUND_LUA, sizeof(REFUND_LUA) - 1, md) != SHA1_LEN)
        goto fail;
    hex(r->refund_sha, md, SHA1_LEN);
    r->gateway_id = strdup(gateway_id != NULL ? gateway_id : "");
    if (r->gateway_id == NULL || set_prefix(r, cfg) < 0)
        goto fail;

    struct tg_redis_options opt = link_tuning;
    opt.name = "ratelimit";
    opt.on_state = on_link_state;
    opt.arg = r;
    r->link = tg_redis_cluster_new(loop, cfg, &opt);
    if (r->link == NULL)
        goto fail;

    ev_prepare_init(&r->flush, on_flush);
    r->flush.data = r;
    ev_timer_init(&r->heartbeat_timer, on_heartbeat_timer, heartbeat_interval_s,
                  heartbeat_interval_s);
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

void tg_ratelimit_redis_configure(struct tg_ratelimit_redis *r, const struct tg_config_redis *cfg)
{
    if (set_prefix(r, cfg) < 0)
        tg_log_error("redis ratelimit: out of memory, keeping the old "
                     "key prefix");
    tg_redis_cluster_configure(r->link, cfg);
}

void tg_ratelimit_redis_free(struct tg_ratelimit_redis *r)
{
    if (r == NULL)
        return;
    ev_timer_stop(r->loop, &r->heartbeat_timer);
    ev_prepare_stop(r->loop, &r->flush);
    /* Queued parts never left: they fail now. */
    struct take_part *q = r->queue_head;
    r->queue_head = r->queue_tail = NULL;
    r->queued = r->queued_keys = 0;
    while (q != NULL) {
        struct take_part *next = q->next;
        part_done(r, q, PART_FAILED, NULL);
        q = next;
    }
    end_unsent(r);
    /* Calls every batch in flight back with NULL (status -1) now. */
    tg_redis_cluster_free(r->link);
    free(r->gateway_id);
    free(r->prefix);
    free(r);
    pending_drain(); /* freed on its worker's thread, as it ran there */
}

enum tg_redis_state tg_ratelimit_redis_state(const struct tg_ratelimit_redis *r)
{
    return tg_redis_cluster_state(r->link);
}

const struct tg_redis_cluster *tg_ratelimit_redis_cluster(const struct tg_ratelimit_redis *r)
{
    return r->link;
}

const struct tg_redis *tg_ratelimit_redis_link(const struct tg_ratelimit_redis *r)
{
    return tg_redis_cluster_single(r->link);
}

unsigned tg_ratelimit_redis_gateways(void)
{
    unsigned n = atomic_load(&gateways_seen);
    return n >= 1 ? n : 1;
}

void tg_ratelimit_redis_stats(const struct tg_ratelimit_redis *r,
                              struct tg_ratelimit_redis_stats *out)
{
    struct tg_redis_cluster_stats cs;
    tg_redis_cluster_stats(r->link, &cs);
    memset(out, 0, sizeof(*out));
    out->round_trips = cs.links.replies;
    out->requests = r->requests;
    out->errors = r->errors;
    out->timeouts = cs.links.timeouts;
    out->disconnects = cs.links.disconnects;
    out->short_circuited = r->short_circuited;
    out->split = r->split;
    out->partial = r->partial;
    out->slot_refunds = r->slot_refunds;
    out->moved = cs.moved;
    out->asked = cs.asked;
    out->tryagain = cs.tryagain;
    out->refreshes = cs.refreshes;
    out->refresh_failures = cs.refresh_failures;
}
