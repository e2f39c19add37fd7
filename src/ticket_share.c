/* The thread that agrees with the rest of the fleet, through Redis, on
 * each epoch's ticket key material, and hands it to tls_tickets.c. Not
 * here: keys, names, what decrypts when (tls_tickets.c); the asynchronous
 * Redis link the workers use (redis.c): this thread may block, so it has a
 * blocking connection of its own.
 *
 * Each round (at once, then every min(period / 4, 10 s), and when the
 * settings change) reads epochs cur-2 .. cur+1. For cur and cur+1 a missing
 * key is created with SET NX EX (four periods, so it outlives every
 * gateway's use of it) and read again: two gateways racing agree on the
 * one SET that won. The value set is the material this process already
 * knows for the epoch if any (Redis lost its keys: the fleet keeps the
 * keys its tickets use), else 32 random bytes. cur+1 is read a round
 * ahead, so the epoch change finds its material known. */
#include "ticket_share.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#include "config.h"
#include "log.h"
#include "redis.h"
#include "tls_tickets.h"

#define SYNC_MAX_MS 10000 /* a round at least this often */
#define CONNECT_TIMEOUT_MS 1000
#define EPOCHS_BEHIND 2 /* read: tickets of these still decrypt */
#define EPOCHS_AHEAD 1  /* read, and created when missing */
#define TTL_PERIODS 4   /* a key outlives its last use */
#define KEY_MAX 512
#define WHY_MAX 200

/* What the thread needs of a snapshot (copied: snapshots come and go). */
struct share_cfg {
    struct tg_config_redis *server; /* redis.c's copy */
    char *prefix;
    int64_t period_ms;
    char where[160]; /* the server, as the logs name it */
};

enum share_state {
    SHARE_STARTING = 0,
    SHARE_UP,   /* the last round read every epoch it wanted */
    SHARE_DOWN, /* cannot connect, or the connection failed */
    SHARE_BAD,  /* a reply that is not 32 bytes or nothing (kept the old) */
};

/* The thread's own state. */
struct share {
    struct share_cfg cfg;
    redisContext *c;
    enum share_state state; /* as last logged */
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* on the monotonic clock */
    bool cond_ready;
    bool stop;              /* under lock */
    struct share_cfg *next; /* under lock: settings to apply */
    pthread_t thread;
    bool running; /* main thread only */
} T = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* ---- settings ------------------------------------------------------------ */

static void cfg_clear(struct share_cfg *c)
{
    tg_redis_config_free(c->server);
    free(c->prefix);
    memset(c, 0, sizeof(*c));
}

static void cfg_free(struct share_cfg *c)
{
    if (c != NULL) {
        cfg_clear(c);
        free(c);
    }
}

static struct share_cfg *cfg_copy(const struct tg_config *cfg)
{
    const struct tg_config_redis *r = &cfg->tls.redis;
    struct share_cfg *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->server = tg_redis_config_dup(r);
    c->prefix = strdup(r->key_prefix != NULL ? r->key_prefix : "");
    tg_redis_config_describe(r, c->where, sizeof(c->where));
    c->period_ms =
        cfg->tls.ticket_key_rotation_ms > 0 ? cfg->tls.ticket_key_rotation_ms : 3600 * 1000;
    if (c->server == NULL || c->prefix == NULL) {
        cfg_free(c);
        return NULL;
    }
    return c;
}

static bool same_str(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Takes over `next`: a different server means a new connection; a
 * different server, key prefix or period means other material. */
static void apply(struct share *sh, struct share_cfg *next)
{
    const struct share_cfg *o = &sh->cfg;
    bool server = o->server == NULL || !tg_redis_config_same_server(o->server, next->server) ||
                  o->server->timeout_ms != next->server->timeout_ms;
    bool material = server || !same_str(o->prefix, next->prefix) || o->period_ms != next->period_ms;
    if (server && sh->c != NULL) {
        redisFree(sh->c);
        sh->c = NULL;
    }
    if (material) {
        tg_tls_tickets_share_clear();
        sh->state = SHARE_STARTING;
    }
    cfg_clear(&sh->cfg);
    sh->cfg = *next;
    free(next);
}

/* ---- one round ------------------------------------------------------------- */

static void reply_free(redisReply *rep)
{
    if (rep == NULL)
        return;
    if (rep->type == REDIS_REPLY_STRING && rep->str != NULL)
        OPENSSL_cleanse(rep->str, rep->len);
    freeReplyObject(rep);
}

/* What a GET answered that is not material. */
static void describe(const redisReply *rep, const char *key, char *why, size_t whylen)
{
    if (rep->type == REDIS_REPLY_ERROR)
        snprintf(why, whylen, "%s: %.*s", key, 100, rep->str);
    else if (rep->type == REDIS_REPLY_NIL)
        snprintf(why, whylen, "%s is missing right after SET NX", key);
    else if (rep->type == REDIS_REPLY_STRING)
        snprintf(why, whylen, "%s holds %zu bytes, not %d", key, rep->len, TG_TLS_TICKETS_MATERIAL);
    else
        snprintf(why, whylen, "%s: a reply of type %d, not a string", key, rep->type);
}

static bool is_material(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_STRING && rep->len == TG_TLS_TICKETS_MATERIAL;
}

/* The connection failed: it is unusable (hiredis). */
static enum share_state lost(struct share *sh, const char *what, char *why, size_t whylen)
{
    snprintf(why, whylen, "%s: %s", what, sh->c->errstr[0] != '\0' ? sh->c->errstr : "failed");
    redisFree(sh->c);
    sh->c = NULL;
    return SHARE_DOWN;
}

/* Reads (and for `create`, makes sure there is) the material of `epoch`. */
static enum share_state sync_epoch(struct share *sh, int64_t epoch, bool create, char *why,
                                   size_t whylen)
{
    char key[KEY_MAX];
    int klen = snprintf(key, sizeof(key), "%sticket:%" PRId64, sh->cfg.prefix, epoch);
    if (klen < 0 || (size_t)klen >= sizeof(key)) {
        snprintf(why, whylen, "key prefix too long");
        return SHARE_BAD;
    }
    const char *get[] = {"GET", key};
    const size_t get_len[] = {3, (size_t)klen};
    redisReply *rep = redisCommandArgv(sh->c, 2, get, get_len);
    if (rep == NULL)
        return lost(sh, "GET", why, whylen);
    if (rep->type == REDIS_REPLY_NIL && create) {
        reply_free(rep);
        unsigned char m[TG_TLS_TICKETS_MATERIAL];
        if (!tg_tls_tickets_share_get(epoch, m) && RAND_bytes(m, sizeof(m)) != 1) {
            ERR_clear_error();
            snprintf(why, whylen, "no random bytes");
            return SHARE_BAD;
        }
        char ttl[24];
        int64_t secs = (TTL_PERIODS * sh->cfg.period_ms + 999) / 1000;
        snprintf(ttl, sizeof(ttl), "%" PRId64, secs);
        const char *set[] = {"SET", key, (const char *)m, "NX", "EX", ttl};
        const size_t set_len[] = {3, (size_t)klen, sizeof(m), 2, 2, strlen(ttl)};
        rep = redisCommandArgv(sh->c, 6, set, set_len);
        OPENSSL_cleanse(m, sizeof(m));
        if (rep == NULL)
            return lost(sh, "SET", why, whylen);
        /* +OK, or nil: another gateway's SET came first. */
        if (rep->type == REDIS_REPLY_ERROR) {
            describe(rep, key, why, whylen);
            /* A replica now (a failover): reconnect, to the primary if
             * sentinels name it. */
            bool demoted = strncmp(rep->str, "READONLY", 8) == 0;
            reply_free(rep);
            if (demoted) {
                redisFree(sh->c);
                sh->c = NULL;
                return SHARE_DOWN;
            }
            return SHARE_BAD;
        }
        reply_free(rep);
        rep = redisCommandArgv(sh->c, 2, get, get_len);
        if (rep == NULL)
            return lost(sh, "GET", why, whylen);
    }
    enum share_state st = SHARE_UP;
    if (is_material(rep))
        tg_tls_tickets_share_put(epoch, (const unsigned char *)rep->str);
    else if (rep->type != REDIS_REPLY_NIL || create) {
        /* Nil after our SET NX: the key went at once (another client). */
        describe(rep, key, why, whylen);
        st = SHARE_BAD;
    }
    reply_free(rep);
    return st;
}

/* One round: connects if needed, then reads every epoch it wants (a bad
 * reply for one does not stop the others). */
static enum share_state sync_round(struct share *sh, char *why, size_t whylen)
{
    if (sh->c == NULL) {
        const struct tg_config_redis *r = sh->cfg.server;
        char err[WHY_MAX];
        sh->c = tg_redis_connect_blocking(
            r, CONNECT_TIMEOUT_MS > r->timeout_ms ? CONNECT_TIMEOUT_MS : r->timeout_ms, err,
            sizeof(err));
        if (sh->c == NULL) {
            snprintf(why, whylen, "%s", err);
            return SHARE_DOWN;
        }
    }
    int64_t cur = tg_tls_tickets_epoch(sh->cfg.period_ms);
    enum share_state st = SHARE_UP;
    for (int64_t e = cur - EPOCHS_BEHIND; e <= cur + EPOCHS_AHEAD; e++) {
        char one[WHY_MAX];
        enum share_state s = sync_epoch(sh, e, e >= cur, one, sizeof(one));
        if (s == SHARE_DOWN) {
            snprintf(why, whylen, "%s", one);
            return SHARE_DOWN;
        }
        if (s == SHARE_BAD && st != SHARE_BAD) {
            snprintf(why, whylen, "%s", one);
            st = SHARE_BAD;
        }
    }
    return st;
}

/* Logs a change of state (once per change, not once per round). Returns
 * whether it logged. */
static bool report(struct share *sh, enum share_state st, const char *why)
{
    if (st == sh->state)
        return false;
    enum share_state was = sh->state;
    sh->state = st;
    const char *a = sh->cfg.where;
    switch (st) {
    case SHARE_UP:
        tg_log_info("tls: ticket keys shared through redis %s%s", a,
                    was == SHARE_STARTING ? "" : " again");
        break;
    case SHARE_DOWN:
        tg_log_warn("tls: ticket keys: redis %s unreachable (%s); keeping the keys known, "
                    "tickets of later epochs resume on this gateway only",
                    a, why);
        break;
    case SHARE_BAD:
        tg_log_warn("tls: ticket keys: bad reply from redis %s (%s); keeping the keys "
                    "known",
                    a, why);
        break;
    case SHARE_STARTING:
        break;
    }
    return true;
}

/* ---- the thread ---------------------------------------------------------------- */

static int64_t round_interval_ms(const struct share *sh)
{
    int64_t q = sh->cfg.period_ms / 4;
    return q < SYNC_MAX_MS ? (q > 0 ? q : 1) : SYNC_MAX_MS;
}

static void *share_main(void *arg)
{
    struct share *sh = arg;
    tg_log_set_thread_name("tickets");
    for (;;) {
        pthread_mutex_lock(&T.lock);
        bool stop = T.stop;
        struct share_cfg *next = T.next;
        T.next = NULL;
        pthread_mutex_unlock(&T.lock);
        if (stop) {
            cfg_free(next);
            break;
        }
        if (next != NULL)
            apply(sh, next);
        char why[WHY_MAX] = "";
        report(sh, sync_round(sh, why, sizeof(why)), why);

        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        int64_t ns = until.tv_nsec + round_interval_ms(sh) % 1000 * 1000000;
        until.tv_sec += round_interval_ms(sh) / 1000 + ns / 1000000000;
        until.tv_nsec = ns % 1000000000;
        pthread_mutex_lock(&T.lock);
        while (!T.stop && T.next == NULL &&
               pthread_cond_timedwait(&T.wake, &T.lock, &until) != ETIMEDOUT)
            ;
        pthread_mutex_unlock(&T.lock);
    }
    if (sh->c != NULL)
        redisFree(sh->c);
    cfg_clear(&sh->cfg);
    free(sh);
    return NULL;
}

/* Starts the thread on `c` (taken over). */
static int share_start(struct share_cfg *c)
{
    if (!T.cond_ready) {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        int rc = pthread_cond_init(&T.wake, &attr);
        pthread_condattr_destroy(&attr);
        if (rc != 0) {
            cfg_free(c);
            return -1;
        }
        T.cond_ready = true;
    }
    struct share *sh = calloc(1, sizeof(*sh));
    if (sh == NULL) {
        cfg_free(c);
        return -1;
    }
    sh->cfg = *c;
    free(c);
    T.stop = false;
    /* Signals are main's: the thread starts with all of them blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&T.thread, NULL, share_main, sh);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        cfg_clear(&sh->cfg);
        free(sh);
        return -1;
    }
    T.running = true;
    return 0;
}

bool tg_ticket_share_wanted(const struct tg_config *cfg)
{
    return cfg->tls.fleet && cfg->tls.session_tickets && cfg->tls.ticket_key_file == NULL &&
           cfg->tls_server != NULL;
}

int tg_ticket_share_follow(const struct tg_config *cfg)
{
    if (!tg_ticket_share_wanted(cfg)) {
        tg_ticket_share_stop();
        return 0;
    }
    struct share_cfg *c = cfg_copy(cfg);
    if (c == NULL) {
        tg_log_error("tls: ticket keys: out of memory; tickets resume on this gateway only");
        return -1;
    }
    if (T.running) {
        pthread_mutex_lock(&T.lock);
        cfg_free(T.next);
        T.next = c;
        pthread_cond_signal(&T.wake);
        pthread_mutex_unlock(&T.lock);
        return 0;
    }
    if (share_start(c) < 0) {
        tg_log_error("tls: ticket keys: cannot start the thread that shares them; tickets "
                     "resume on this gateway only");
        return -1;
    }
    return 0;
}

void tg_ticket_share_stop(void)
{
    if (!T.running)
        return;
    pthread_mutex_lock(&T.lock);
    T.stop = true;
    pthread_cond_signal(&T.wake);
    pthread_mutex_unlock(&T.lock);
    pthread_join(T.thread, NULL);
    T.running = false;
    pthread_mutex_lock(&T.lock);
    cfg_free(T.next);
    T.next = NULL;
    pthread_mutex_unlock(&T.lock);
    tg_tls_tickets_share_clear();
}
