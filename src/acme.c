/* The ACME client (acme.h).
 *
 * One thread, one loop. A timer runs whatever is due (the soonest name to
 * order, renew or retry); an async watcher wakes it for on-demand names
 * and reloads. An order is a sequence of blocking requests to the CA, each
 * bounded by tls.acme.timeout: directory, account (made once, kept in the
 * state directory or Redis), newOrder, the authorization's challenge
 * (published in acme_challenge.h first, and in Redis for a fleet), polling
 * until valid, a CSR to finalize, polling, and the chain. The result goes
 * to disk (and Redis), into the certificate store, and to the workers
 * through the notify callback.
 *
 * Names live in one table under a mutex, read by the workers' on-demand
 * calls and by /status and /metrics. */
#include "acme.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "acme_challenge.h"
#include "acme_http.h"
#include "certstore.h"
#include "codec.h"
#include "file.h"
#include "config.h"
#include "jws.h"
#include "log.h"
#include "redis.h"
#include "tenant.h"

/* Names at most (configured and on demand). */
#define MAX_NAMES 4096
#define NAME_MAX_LEN 254
/* Polling an authorization or an order: every POLL_S, at most POLL_TRIES. */
#define POLL_S 1
#define POLL_TRIES 60
/* Retry after a failure: RETRY_MIN_S doubling up to RETRY_MAX_S, or the
 * CA's Retry-After when longer. */
#define RETRY_MIN_S 60
#define RETRY_MAX_S (24 * 3600)
/* Renew at two thirds of the lifetime, minus up to this share as jitter. */
#define RENEW_JITTER 0.05
/* A challenge answer lives this long at most. */
#define CHALLENGE_TTL_S 600
/* A TLS-ALPN-01 certificate's validity (only its extension matters; long
 * enough not to be warned about). */
#define CHALLENGE_CERT_DAYS 365
/* A fleet's per-name order lock; the others wait for the result this long. */
#define LOCK_TTL_MS 180000
#define LOCK_WAIT_S 120
/* The OID of the acmeIdentifier extension (RFC 8737). */
#define OID_ACME_IDENTIFIER "1.3.6.1.5.5.7.1.31"
/* A fleet: how long the others get to mirror a challenge answer. */
#define FLEET_MIRROR_US (200 * 1000)
#define ERROR_MAX 256
#define URL_MAX 1024

enum name_state { NAME_NONE = 0, NAME_VALID, NAME_ORDERING, NAME_FAILED, NAME_REFUSED };

struct managed {
    char name[NAME_MAX_LEN + 1];
    bool configured;       /* from sites[].hosts (else on demand) */
    bool eligible_checked; /* on demand: the tenant directory or ask said yes */
    uint8_t state;         /* enum name_state */
    time_t not_before, not_after;
    time_t next_at; /* when to order, renew or retry */
    unsigned fails;
    time_t ari_at;     /* when to ask the CA's renewal information; 0: never */
    char cert_id[200]; /* the certificate's ARI id ("" when it has none) */
    char issuer[128];
    char error[ERROR_MAX];
};

/* Orders by result, for /metrics. */
enum order_result {
    R_ISSUED = 0,
    R_CA_UNREACHABLE,
    R_RATE_LIMITED,
    R_CHALLENGE_FAILED,
    R_REFUSED, /* on demand: not an active tenant's domain, or ask said no */
    R_OTHER,
    R_COUNT,
};
static const char *const result_names[R_COUNT] = {
    "issued", "ca_unreachable", "rate_limited", "challenge_failed", "refused", "other",
};

static struct {
    pthread_t thread;
    bool running;
    struct ev_loop *loop;
    ev_async wake;
    ev_timer tick;
    pthread_mutex_t lock; /* names, queue, cfg, stats */
    struct managed *names;
    size_t nnames;
    struct tg_config *cfg;      /* a reference: the settings in force */
    struct tg_config *next_cfg; /* a reload waiting for the thread */
    bool stop;
    struct tg_certstore *store;
    tg_acme_notify_fn notify;
    void *notify_arg;
    _Atomic unsigned long results[R_COUNT];
    time_t orders_at[256]; /* recent new orders, for max_per_hour */
    unsigned norders;
    /* The thread's own (no lock): the CA session. */
    SSL_CTX *http;
    char dir_new_nonce[URL_MAX], dir_new_account[URL_MAX], dir_new_order[URL_MAX];
    char dir_renewal_info[URL_MAX]; /* "" when the CA offers no ARI */
    bool have_directory;
    EVP_PKEY *account_key;
    char kid[URL_MAX];
    char thumbprint[48];
    char nonce[256];
    redisContext *redis; /* a fleet's, blocking */
    pthread_t sub_thread;
    bool sub_running;
} A = {.lock = PTHREAD_MUTEX_INITIALIZER};

static double now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the names table (lock held) -------------------------------------------------- */

static struct managed *find_name(const char *name, size_t n)
{
    for (size_t i = 0; i < A.nnames; i++)
        if (strlen(A.names[i].name) == n && strncasecmp(A.names[i].name, name, n) == 0)
            return &A.names[i];
    return NULL;
}

static struct managed *add_name(const char *name, size_t n, bool configured)
{
    if (n == 0 || n > NAME_MAX_LEN || A.nnames == MAX_NAMES)
        return NULL;
    struct managed *m = &A.names[A.nnames++];
    memset(m, 0, sizeof(*m));
    for (size_t i = 0; i < n; i++)
        m->name[i] = tg_ascii_lower(name[i]);
    m->configured = configured;
    m->eligible_checked = configured;
    return m;
}

/* The names a configuration orders: every non-wildcard host of a site
 * with acme (no "{tenant}" captures, no '*', no IP literals) that no
 * configured certificate serves. */
static bool wants_name(const struct tg_config *cfg, const char *host)
{
    if (strchr(host, '*') != NULL || strchr(host, '{') != NULL || strchr(host, ':') != NULL)
        return false;
    bool digits = true;
    for (const char *p = host; *p; p++)
        digits &= (*p >= '0' && *p <= '9') || *p == '.';
    if (digits || strchr(host, '.') == NULL)
        return false; /* an IP address, or a single label like localhost */
    if (cfg->certstore != NULL) {
        struct tg_certstore_snap *snap = tg_certstore_acquire(cfg->certstore);
        const struct tg_cert_choice *c = tg_certstore_lookup(snap, host, strlen(host));
        bool served = c != NULL;
        tg_certstore_release(snap);
        if (served) {
            /* Served by a configured certificate, or by one of ours. */
            pthread_mutex_lock(&A.lock);
            struct managed *m = find_name(host, strlen(host));
            bool ours = m != NULL && m->state == NAME_VALID;
            pthread_mutex_unlock(&A.lock);
            return ours;
        }
    }
    return true;
}

static void sync_names(const struct tg_config *cfg)
{
    pthread_mutex_lock(&A.lock);
    for (size_t i = 0; i < A.nnames; i++)
        A.names[i].configured = false;
    pthread_mutex_unlock(&A.lock);
    for (size_t s = 0; s < cfg->nsites; s++) {
        const struct tg_config_site *site = &cfg->sites[s];
        if (!site->acme)
            continue;
        for (size_t h = 0; h < site->nhosts; h++) {
            const char *host = site->hosts[h];
            if (!wants_name(cfg, host))
                continue;
            pthread_mutex_lock(&A.lock);
            struct managed *m = find_name(host, strlen(host));
            if (m == NULL)
                m = add_name(host, strlen(host), true);
            if (m != NULL) {
                m->configured = true;
                m->eligible_checked = true;
            }
            pthread_mutex_unlock(&A.lock);
        }
    }
}

/* ---- files --------------------------------------------------------------------------- */

static int mkdirs(const char *path)
{
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(tmp, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

/* Writes a file whole or not at all: a temporary file, fsync, rename. */
static int write_atomic(const char *path, const char *data, size_t n, mode_t mode)
{
    char tmp[1100];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -1;
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        if (w <= 0) {
            close(fd);
            unlink(tmp);
            return -1;
        }
        off += (size_t)w;
    }
    if (fsync(fd) < 0 || close(fd) < 0 || rename(tmp, path) < 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* A state file (PEM, JSON): small. NULL when missing or unreadable. */
#define STATE_FILE_MAX (1 << 20)

static char *read_file(const char *path, size_t *n)
{
    char *data;
    size_t len;
    if (tg_file_read(path, STATE_FILE_MAX, &data, &len) != TG_FILE_OK)
        return NULL;
    if (n != NULL)
        *n = len;
    return data;
}

static void cert_paths(const struct tg_config_acme *a, const char *name, char *crt, char *key,
                       size_t cap)
{
    snprintf(crt, cap, "%s/certs/%s.pem", a->state_dir, name);
    snprintf(key, cap, "%s/certs/%s.key", a->state_dir, name);
}

/* ---- Redis (a fleet) ---------------------------------------------------------------- */

/* A blocking connection (redis.c's), with every command allowed a second
 * more than the configured timeout: orders, locks and the subscriber's
 * reads are not on any request's path. */
static redisContext *redis_connect(const struct tg_config_redis *r)
{
    char err[256];
    redisContext *c = tg_redis_connect_blocking(r, r->timeout_ms + 1000, err, sizeof(err));
    if (c == NULL) {
        char where[160];
        tg_log_debug("acme: redis %s: %s", tg_redis_config_describe(r, where, sizeof(where)), err);
        return NULL;
    }
    struct timeval tv = {r->timeout_ms / 1000 + 1, 0};
    redisSetTimeout(c, tv);
    return c;
}

/* A command on the fleet's connection, reconnecting once. */
static redisReply *fleet_cmd(const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (A.redis == NULL && (A.redis = redis_connect(&A.cfg->tls.redis)) == NULL)
            return NULL;
        va_list ap;
        va_start(ap, fmt);
        redisReply *rep = redisvCommand(A.redis, fmt, ap);
        va_end(ap);
        /* A replica now (a failover): reconnect, to the primary if
         * sentinels name it. */
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR &&
            strncmp(rep->str, "READONLY", 8) == 0 && attempt == 0) {
            freeReplyObject(rep);
            rep = NULL;
        }
        if (rep != NULL)
            return rep;
        redisFree(A.redis);
        A.redis = NULL;
    }
    return NULL;
}

static const char *prefix(void)
{
    return A.cfg->tls.redis.key_prefix != NULL ? A.cfg->tls.redis.key_prefix : "";
}

/* ---- loading a certificate ------------------------------------------------------------- */

static time_t asn1_time(const ASN1_TIME *t)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return timegm(&tm);
}

/* Puts a chain and key (PEM) into the store for `name` and records its
 * dates; schedules the renewal. Returns 0 or -1 (err). */
static int install(const char *name, const char *chain, size_t chain_len, const char *key,
                   size_t key_len, const char *label, char *err, size_t errlen)
{
    struct tg_cert *c = tg_cert_from_pem(label, chain, chain_len, key, key_len, err, errlen);
    if (c == NULL)
        return -1;
    if (!tg_cert_has_name(c, name)) {
        snprintf(err, errlen, "the certificate does not name %s", name);
        tg_cert_unref(c);
        return -1;
    }
    time_t nb = asn1_time(X509_get0_notBefore(c->x509));
    time_t na = asn1_time(X509_get0_notAfter(c->x509));
    char issuer[128] = "";
    X509_NAME_oneline(X509_get_issuer_name(c->x509), issuer, sizeof(issuer));
    char cert_id[200];
    if (tg_jws_ari_cert_id(c->x509, cert_id, sizeof(cert_id)) < 0)
        cert_id[0] = '\0';
    if (tg_certstore_put(A.store, name, c, err, errlen) < 0) {
        tg_cert_unref(c);
        return -1;
    }
    tg_cert_unref(c);
    pthread_mutex_lock(&A.lock);
    struct managed *m = find_name(name, strlen(name));
    if (m != NULL) {
        m->state = NAME_VALID;
        m->not_before = nb;
        m->not_after = na;
        m->fails = 0;
        m->error[0] = '\0';
        snprintf(m->issuer, sizeof(m->issuer), "%s", issuer);
        /* Two thirds of the lifetime, a little earlier at random so a
         * fleet's renewals spread out. */
        double life = (double)(na - nb);
        unsigned char r;
        RAND_bytes(&r, 1);
        m->next_at = nb + (time_t)(life * 2.0 / 3.0 - life * RENEW_JITTER * (r / 255.0));
        /* The CA may want it sooner (ARI): asked at the next pass. */
        snprintf(m->cert_id, sizeof(m->cert_id), "%s", cert_id);
        m->ari_at = cert_id[0] != '\0' ? time(NULL) : 0;
    }
    pthread_mutex_unlock(&A.lock);
    if (A.notify != NULL)
        A.notify(name, A.notify_arg);
    return 0;
}

/* A stored certificate (state directory, or Redis for a fleet). */
static bool load_stored(const char *name)
{
    const struct tg_config_acme *a = &A.cfg->tls.acme;
    char err[512];
    if (A.cfg->tls.fleet) {
        redisReply *rep = fleet_cmd("HMGET %scert:%s chain key", prefix(), name);
        bool ok = false;
        if (rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
            rep->element[0]->type == REDIS_REPLY_STRING &&
            rep->element[1]->type == REDIS_REPLY_STRING)
            ok = install(name, rep->element[0]->str, rep->element[0]->len, rep->element[1]->str,
                         rep->element[1]->len, name, err, sizeof(err)) == 0;
        freeReplyObject(rep);
        if (ok)
            return true;
    }
    char crt[1100], key[1100];
    cert_paths(a, name, crt, key, sizeof(crt));
    size_t cn = 0, kn = 0;
    char *chain = read_file(crt, &cn), *k = read_file(key, &kn);
    bool ok =
        chain != NULL && k != NULL && install(name, chain, cn, k, kn, crt, err, sizeof(err)) == 0;
    if (chain != NULL && k != NULL && !ok)
        tg_log_warn("the stored certificate for %s is not usable (%s); ordering a new one", name,
                    err);
    free(chain);
    if (k != NULL)
        OPENSSL_cleanse(k, kn);
    free(k);
    return ok;
}

/* ---- talking to the CA ------------------------------------------------------------------ */

struct order_error {
    enum order_result kind;
    long retry_after;
    char text[ERROR_MAX];
};

static void fail(struct order_error *e, enum order_result kind, long retry_after, const char *fmt,
                 ...) __attribute__((format(printf, 4, 5)));
static void fail(struct order_error *e, enum order_result kind, long retry_after, const char *fmt,
                 ...)
{
    e->kind = kind;
    e->retry_after = retry_after;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->text, sizeof(e->text), fmt, ap);
    va_end(ap);
}

/* What a CA answer says went wrong. */
static void ca_error(struct order_error *e, const char *what, const struct tg_acme_response *r)
{
    if (r->status == 0) {
        fail(e, R_CA_UNREACHABLE, -1, "%s: %s", what, r->error);
        return;
    }
    json_t *j = r->body != NULL ? json_loads(r->body, 0, NULL) : NULL;
    const char *type = j != NULL ? json_string_value(json_object_get(j, "type")) : NULL;
    const char *detail = j != NULL ? json_string_value(json_object_get(j, "detail")) : NULL;
    enum order_result kind = r->status == 429 || (type && strstr(type, "rateLimited"))
                                 ? R_RATE_LIMITED
                             : r->status >= 500 ? R_CA_UNREACHABLE
                                                : R_OTHER;
    fail(e, kind, r->retry_after, "%s: HTTP %d %s%s%s", what, r->status, type ? type : "",
         detail ? ": " : "", detail ? detail : "");
    json_decref(j);
}

static long timeout_ms(void)
{
    return (long)A.cfg->tls.acme.timeout_ms;
}

static int get_directory(struct order_error *e)
{
    if (A.have_directory)
        return 0;
    struct tg_acme_response r;
    const char *url = A.cfg->tls.acme.directory;
    if (tg_acme_http(A.http, "GET", url, NULL, NULL, 0, timeout_ms(), &r) < 0 || r.status != 200) {
        ca_error(e, "the directory", &r);
        tg_acme_response_free(&r);
        return -1;
    }
    json_t *j = json_loads(r.body, 0, NULL);
    const char *nn = j ? json_string_value(json_object_get(j, "newNonce")) : NULL;
    const char *na = j ? json_string_value(json_object_get(j, "newAccount")) : NULL;
    const char *no = j ? json_string_value(json_object_get(j, "newOrder")) : NULL;
    const char *ri = j ? json_string_value(json_object_get(j, "renewalInfo")) : NULL;
    int rc = -1;
    if (nn && na && no) {
        snprintf(A.dir_renewal_info, sizeof(A.dir_renewal_info), "%s", ri ? ri : "");
        snprintf(A.dir_new_nonce, sizeof(A.dir_new_nonce), "%s", nn);
        snprintf(A.dir_new_account, sizeof(A.dir_new_account), "%s", na);
        snprintf(A.dir_new_order, sizeof(A.dir_new_order), "%s", no);
        A.have_directory = true;
        rc = 0;
    } else {
        fail(e, R_OTHER, -1, "the directory at %s is not an ACME directory", url);
    }
    json_decref(j);
    tg_acme_response_free(&r);
    return rc;
}

static int fresh_nonce(struct order_error *e)
{
    if (A.nonce[0] != '\0')
        return 0;
    struct tg_acme_response r;
    if (tg_acme_http(A.http, "HEAD", A.dir_new_nonce, NULL, NULL, 0, timeout_ms(), &r) < 0 ||
        r.nonce[0] == '\0') {
        ca_error(e, A.dir_new_nonce, &r);
        tg_acme_response_free(&r);
        return -1;
    }
    snprintf(A.nonce, sizeof(A.nonce), "%s", r.nonce);
    tg_acme_response_free(&r);
    return 0;
}

/* A signed POST (payload NULL: POST-as-GET). Retries once on badNonce.
 * Returns 0 with *r (any status; free it), or -1 (e set). */
static int post(const char *url, const char *payload, bool use_jwk, struct tg_acme_response *r,
                struct order_error *e)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (fresh_nonce(e) < 0)
            return -1;
        char *body = tg_jws_sign(A.account_key, use_jwk ? NULL : A.kid, A.nonce, url, payload);
        A.nonce[0] = '\0';
        if (body == NULL) {
            fail(e, R_OTHER, -1, "cannot sign a request");
            return -1;
        }
        int rc = tg_acme_http(A.http, "POST", url, "application/jose+json", body, strlen(body),
                              timeout_ms(), r);
        free(body);
        if (rc < 0) {
            ca_error(e, url, r);
            tg_acme_response_free(r);
            return -1;
        }
        if (r->nonce[0] != '\0')
            snprintf(A.nonce, sizeof(A.nonce), "%s", r->nonce);
        if (r->status == 400 && r->body != NULL && strstr(r->body, "badNonce") != NULL &&
            attempt == 0) {
            tg_acme_response_free(r);
            continue;
        }
        return 0;
    }
    return 0;
}

/* The account: stored (state directory or Redis), else made and stored. */
static int ensure_account(struct order_error *e)
{
    if (A.account_key != NULL && A.kid[0] != '\0')
        return 0;
    const struct tg_config_acme *a = &A.cfg->tls.acme;
    char path[1100];
    snprintf(path, sizeof(path), "%s/account.json", a->state_dir);
    char *stored = NULL;
    if (A.cfg->tls.fleet) {
        redisReply *rep = fleet_cmd("GET %saccount", prefix());
        if (rep != NULL && rep->type == REDIS_REPLY_STRING)
            stored = strdup(rep->str);
        freeReplyObject(rep);
    }
    if (stored == NULL)
        stored = read_file(path, NULL);
    if (stored != NULL) {
        json_t *j = json_loads(stored, 0, NULL);
        const char *key = j ? json_string_value(json_object_get(j, "key")) : NULL;
        const char *kid = j ? json_string_value(json_object_get(j, "kid")) : NULL;
        const char *dir = j ? json_string_value(json_object_get(j, "directory")) : NULL;
        if (key != NULL && kid != NULL && dir != NULL && strcmp(dir, a->directory) == 0) {
            A.account_key = tg_jws_key_from_pem(key, strlen(key));
            snprintf(A.kid, sizeof(A.kid), "%s", kid);
        }
        json_decref(j);
        OPENSSL_cleanse(stored, strlen(stored));
        free(stored);
        if (A.account_key != NULL && tg_jws_thumbprint(A.account_key, A.thumbprint) == 0)
            return 0;
        A.kid[0] = '\0';
    }
    /* A new account. */
    if (A.account_key == NULL && (A.account_key = tg_jws_key_new(TG_KEY_ECDSA_P256)) == NULL) {
        fail(e, R_OTHER, -1, "cannot make an account key");
        return -1;
    }
    tg_jws_thumbprint(A.account_key, A.thumbprint);
    json_t *p = json_object();
    json_object_set_new(p, "termsOfServiceAgreed", json_true());
    if (a->email != NULL) {
        char mail[300];
        snprintf(mail, sizeof(mail), "mailto:%s", a->email);
        json_object_set_new(p, "contact", json_pack("[s]", mail));
    }
    if (a->eab_kid != NULL) {
        char *eab = tg_jws_eab(a->eab_kid, a->eab_hmac_key, A.account_key, A.dir_new_account);
        json_t *ej = eab != NULL ? json_loads(eab, 0, NULL) : NULL;
        free(eab);
        if (ej == NULL) {
            json_decref(p);
            fail(e, R_OTHER, -1, "cannot make the external account binding");
            return -1;
        }
        json_object_set_new(p, "externalAccountBinding", ej);
    }
    char *payload = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    struct tg_acme_response r;
    int rc = payload != NULL ? post(A.dir_new_account, payload, true, &r, e) : -1;
    free(payload);
    if (rc < 0)
        return -1;
    if ((r.status != 200 && r.status != 201) || r.location[0] == '\0') {
        ca_error(e, "the account", &r);
        tg_acme_response_free(&r);
        return -1;
    }
    snprintf(A.kid, sizeof(A.kid), "%s", r.location);
    tg_acme_response_free(&r);
    char *pem = tg_jws_key_pem(A.account_key);
    json_t *doc = json_pack("{s:s, s:s, s:s}", "key", pem ? pem : "", "kid", A.kid, "directory",
                            a->directory);
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (pem != NULL) {
        OPENSSL_cleanse(pem, strlen(pem));
        free(pem);
    }
    if (text != NULL) {
        if (A.cfg->tls.fleet) {
            /* The first gateway's account wins; the others take it. */
            redisReply *rep = fleet_cmd("SET %saccount %s NX", prefix(), text);
            freeReplyObject(rep);
        }
        if (mkdirs(a->state_dir) < 0 || write_atomic(path, text, strlen(text), 0600) < 0)
            tg_log_warn("cannot write %s: %s", path, strerror(errno));
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    tg_log_info("account %s at %s", A.kid, a->directory);
    return 0;
}

/* ---- challenges ------------------------------------------------------------------------ */

int tg_acme_alpn_cert_pem(const char *name, const char *key_auth, char **cert_pem, char **key_pem)
{
    *cert_pem = *key_pem = NULL;
    EVP_PKEY *k = tg_jws_key_new(TG_KEY_ECDSA_P256);
    X509 *x = X509_new();
    int rc = -1;
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (k == NULL || x == NULL ||
        EVP_Digest(key_auth, strlen(key_auth), md, &mdlen, EVP_sha256(), NULL) != 1)
        goto done;
    X509_set_version(x, 2); /* v3: extensions (a v1 certificate's are ignored) */
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), CHALLENGE_CERT_DAYS * 24 * 3600);
    X509_set_pubkey(x, k);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, n);
    char san[300];
    snprintf(san, sizeof(san), "DNS:%s", name);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
    if (ext == NULL || X509_add_ext(x, ext, -1) != 1) {
        X509_EXTENSION_free(ext);
        goto done;
    }
    X509_EXTENSION_free(ext);
    /* acmeIdentifier: critical, an OCTET STRING of the key
     * authorization's SHA-256 (RFC 8737 3). */
    ASN1_OBJECT *oid = OBJ_txt2obj(OID_ACME_IDENTIFIER, 1);
    ASN1_OCTET_STRING *inner = ASN1_OCTET_STRING_new();
    unsigned char *der = NULL;
    int dn = -1;
    if (oid != NULL && inner != NULL && ASN1_OCTET_STRING_set(inner, md, (int)mdlen) == 1)
        dn = i2d_ASN1_OCTET_STRING(inner, &der);
    ASN1_OCTET_STRING *outer = dn > 0 ? ASN1_OCTET_STRING_new() : NULL;
    X509_EXTENSION *acme = NULL;
    if (outer != NULL && ASN1_OCTET_STRING_set(outer, der, dn) == 1)
        acme = X509_EXTENSION_create_by_OBJ(NULL, oid, 1, outer);
    bool ok = acme != NULL && X509_add_ext(x, acme, -1) == 1;
    X509_EXTENSION_free(acme);
    ASN1_OCTET_STRING_free(outer);
    ASN1_OCTET_STRING_free(inner);
    ASN1_OBJECT_free(oid);
    OPENSSL_free(der);
    if (!ok || X509_sign(x, k, EVP_sha256()) <= 0)
        goto done;
    BIO *b = BIO_new(BIO_s_mem());
    if (b != NULL && PEM_write_bio_X509(b, x) == 1) {
        char *p;
        long len = BIO_get_mem_data(b, &p);
        *cert_pem = malloc((size_t)len + 1);
        if (*cert_pem != NULL) {
            memcpy(*cert_pem, p, (size_t)len);
            (*cert_pem)[len] = '\0';
            *key_pem = tg_jws_key_pem(k);
            rc = *key_pem != NULL ? 0 : -1;
        }
    }
    BIO_free(b);
done:
    if (rc < 0) {
        free(*cert_pem);
        *cert_pem = NULL;
    }
    X509_free(x);
    EVP_PKEY_free(k);
    ERR_clear_error();
    return rc;
}

/* Makes an answer available here. */
static int publish_local(bool alpn, const char *name, const char *token, const char *key_auth)
{
    double expires = now_wall() + CHALLENGE_TTL_S;
    if (!alpn)
        return tg_acme_challenge_http_put(token, key_auth, expires);
    char *cp = NULL, *kp = NULL;
    if (tg_acme_alpn_cert_pem(name, key_auth, &cp, &kp) < 0)
        return -1;
    char err[256];
    struct tg_cert *c =
        tg_cert_from_pem(TG_ACME_TLS_ALPN, cp, strlen(cp), kp, strlen(kp), err, sizeof(err));
    free(cp);
    free(kp);
    if (c == NULL)
        return -1;
    int rc = tg_acme_challenge_alpn_put(name, c, expires);
    tg_cert_unref(c);
    return rc;
}

/* Makes an answer available (here, and to the fleet). */
static int publish_challenge(bool alpn, const char *name, const char *token, const char *key_auth)
{
    if (publish_local(alpn, name, token, key_auth) < 0)
        return -1;
    if (A.cfg->tls.fleet) {
        /* Any gateway may be the one the CA reaches: every gateway's
         * subscriber mirrors the answer before the CA is told. */
        redisReply *rep =
            fleet_cmd("SET %schallenge:%s:%s %s EX %d", prefix(), alpn ? "alpn" : "http",
                      alpn ? name : token, key_auth, CHALLENGE_TTL_S);
        freeReplyObject(rep);
        rep = fleet_cmd("PUBLISH %sevents challenge:%s:%s", prefix(), alpn ? "alpn" : "http",
                        alpn ? name : token);
        freeReplyObject(rep);
        usleep(FLEET_MIRROR_US); /* the others mirror it (a subscriber round trip) */
    }
    return 0;
}

static void withdraw_challenge(bool alpn, const char *name, const char *token)
{
    if (alpn)
        tg_acme_challenge_alpn_remove(name);
    else
        tg_acme_challenge_http_remove(token);
}

/* Polls a URL (POST-as-GET) until its status is neither pending nor
 * processing (or ready, for an order being finalised when `ready_ends`).
 * Returns the JSON document (decref it), or NULL (e set). */
static json_t *poll_status(const char *url, const char *what, bool ready_ends,
                           struct order_error *e)
{
    for (int i = 0; i < POLL_TRIES; i++) {
        struct tg_acme_response r;
        if (post(url, NULL, false, &r, e) < 0)
            return NULL;
        if (r.status != 200) {
            ca_error(e, what, &r);
            tg_acme_response_free(&r);
            return NULL;
        }
        json_t *j = json_loads(r.body, 0, NULL);
        long wait = r.retry_after > 0 ? r.retry_after : POLL_S;
        tg_acme_response_free(&r);
        const char *st = j ? json_string_value(json_object_get(j, "status")) : NULL;
        if (st == NULL) {
            json_decref(j);
            fail(e, R_OTHER, -1, "%s: no status", what);
            return NULL;
        }
        bool pending = strcmp(st, "pending") == 0 || strcmp(st, "processing") == 0 ||
                       (!ready_ends && strcmp(st, "ready") == 0 && strstr(what, "order"));
        if (!pending)
            return j;
        json_decref(j);
        sleep((unsigned)(wait < 10 ? wait : 10));
    }
    fail(e, R_OTHER, -1, "%s: still pending after %d tries", what, POLL_TRIES);
    return NULL;
}

/* Proves one authorization: picks a challenge, publishes the answer,
 * tells the CA, waits for the verdict. */
static int prove(const char *authz_url, const char *name, struct order_error *e)
{
    const struct tg_config_acme *a = &A.cfg->tls.acme;
    struct tg_acme_response r;
    if (post(authz_url, NULL, false, &r, e) < 0)
        return -1;
    if (r.status != 200) {
        ca_error(e, "the authorization", &r);
        tg_acme_response_free(&r);
        return -1;
    }
    json_t *authz = json_loads(r.body, 0, NULL);
    tg_acme_response_free(&r);
    const char *st = authz ? json_string_value(json_object_get(authz, "status")) : NULL;
    if (st != NULL && strcmp(st, "valid") == 0) {
        json_decref(authz);
        return 0; /* proven recently */
    }
    json_t *chs = authz ? json_object_get(authz, "challenges") : NULL;
    const char *token = NULL, *url = NULL;
    bool alpn = false;
    /* HTTP-01 first when a plain listener can answer it, else TLS-ALPN-01. */
    bool plain = false, tls = false;
    for (size_t i = 0; i < A.cfg->nlisteners; i++) {
        if (A.cfg->listeners[i].admin)
            continue;
        plain |= !A.cfg->listeners[i].tls;
        tls |= A.cfg->listeners[i].tls;
    }
    for (int pass = 0; pass < 2 && url == NULL; pass++) {
        const char *want = pass == 0 ? "http-01" : "tls-alpn-01";
        if ((pass == 0 && !(a->http01 && plain)) || (pass == 1 && !(a->tls_alpn01 && tls)))
            continue;
        for (size_t i = 0; chs != NULL && i < json_array_size(chs); i++) {
            json_t *c = json_array_get(chs, i);
            const char *type = json_string_value(json_object_get(c, "type"));
            if (type != NULL && strcmp(type, want) == 0) {
                token = json_string_value(json_object_get(c, "token"));
                url = json_string_value(json_object_get(c, "url"));
                alpn = pass == 1;
                break;
            }
        }
    }
    if (token == NULL || url == NULL) {
        json_decref(authz);
        fail(e, R_CHALLENGE_FAILED, -1, "%s: the CA offers no challenge tollgate can answer", name);
        return -1;
    }
    char key_auth[512];
    snprintf(key_auth, sizeof(key_auth), "%s.%s", token, A.thumbprint);
    char tok[256], curl[URL_MAX];
    snprintf(tok, sizeof(tok), "%s", token);
    snprintf(curl, sizeof(curl), "%s", url);
    json_decref(authz);
    if (publish_challenge(alpn, name, tok, key_auth) < 0) {
        fail(e, R_OTHER, -1, "%s: cannot publish the challenge answer", name);
        return -1;
    }
    int rc = -1;
    if (post(curl, "{}", false, &r, e) == 0) {
        bool ok = r.status == 200;
        if (!ok)
            ca_error(e, "the challenge", &r);
        tg_acme_response_free(&r);
        json_t *done = ok ? poll_status(authz_url, "the authorization", true, e) : NULL;
        const char *s = done ? json_string_value(json_object_get(done, "status")) : NULL;
        if (s != NULL && strcmp(s, "valid") == 0) {
            rc = 0;
        } else if (s != NULL) {
            /* The CA's own words: which challenge failed, and why. */
            const char *detail = NULL;
            json_t *cs = json_object_get(done, "challenges");
            for (size_t i = 0; cs != NULL && i < json_array_size(cs) && detail == NULL; i++)
                detail = json_string_value(
                    json_object_get(json_object_get(json_array_get(cs, i), "error"), "detail"));
            fail(e, R_CHALLENGE_FAILED, -1, "%s: %s validation failed%s%s", name,
                 alpn ? "tls-alpn-01" : "http-01", detail ? ": " : "", detail ? detail : "");
        }
        json_decref(done);
    }
    withdraw_challenge(alpn, name, tok);
    return rc;
}

/* Orders, proves, finalises and downloads a certificate for `name`. */
static int order(const char *name, struct order_error *e)
{
    const struct tg_config_acme *a = &A.cfg->tls.acme;
    if (get_directory(e) < 0 || ensure_account(e) < 0)
        return -1;
    char payload[400];
    snprintf(payload, sizeof(payload), "{\"identifiers\":[{\"type\":\"dns\",\"value\":\"%s\"}]}",
             name);
    struct tg_acme_response r;
    if (post(A.dir_new_order, payload, false, &r, e) < 0)
        return -1;
    if (r.status != 201 || r.location[0] == '\0') {
        ca_error(e, "the order", &r);
        tg_acme_response_free(&r);
        return -1;
    }
    char order_url[URL_MAX];
    snprintf(order_url, sizeof(order_url), "%s", r.location);
    json_t *ord = json_loads(r.body, 0, NULL);
    tg_acme_response_free(&r);
    json_t *authzs = ord ? json_object_get(ord, "authorizations") : NULL;
    const char *fin = ord ? json_string_value(json_object_get(ord, "finalize")) : NULL;
    if (authzs == NULL || fin == NULL) {
        json_decref(ord);
        fail(e, R_OTHER, -1, "%s: the CA's order has no authorizations or finalize URL", name);
        return -1;
    }
    char finalize[URL_MAX];
    snprintf(finalize, sizeof(finalize), "%s", fin);
    for (size_t i = 0; i < json_array_size(authzs); i++) {
        const char *au = json_string_value(json_array_get(authzs, i));
        if (au == NULL || prove(au, name, e) < 0) {
            json_decref(ord);
            return -1;
        }
    }
    json_decref(ord);
    /* The key and the CSR. */
    EVP_PKEY *key =
        tg_jws_key_new(a->key_type == TG_ACME_KEY_RSA ? TG_KEY_RSA_2048 : TG_KEY_ECDSA_P256);
    char *csr = key != NULL ? tg_jws_csr(key, name) : NULL;
    if (csr == NULL) {
        EVP_PKEY_free(key);
        fail(e, R_OTHER, -1, "%s: cannot make a key and CSR", name);
        return -1;
    }
    char *fp = malloc(strlen(csr) + 16);
    int rc = -1;
    char *key_pem = NULL;
    json_t *done = NULL;
    if (fp == NULL)
        goto out;
    sprintf(fp, "{\"csr\":\"%s\"}", csr);
    if (post(finalize, fp, false, &r, e) < 0)
        goto out;
    if (r.status != 200) {
        ca_error(e, "finalize", &r);
        tg_acme_response_free(&r);
        goto out;
    }
    tg_acme_response_free(&r);
    done = poll_status(order_url, "the order", false, e);
    const char *st = done ? json_string_value(json_object_get(done, "status")) : NULL;
    const char *cu = done ? json_string_value(json_object_get(done, "certificate")) : NULL;
    if (st == NULL || strcmp(st, "valid") != 0 || cu == NULL) {
        if (done != NULL)
            fail(e, R_OTHER, -1, "%s: the order ended %s", name, st ? st : "without a status");
        goto out;
    }
    if (post(cu, NULL, false, &r, e) < 0)
        goto out;
    if (r.status != 200 || r.body_len == 0) {
        ca_error(e, "the certificate", &r);
        tg_acme_response_free(&r);
        goto out;
    }
    key_pem = tg_jws_key_pem(key);
    char err[512];
    if (key_pem == NULL ||
        install(name, r.body, r.body_len, key_pem, strlen(key_pem), name, err, sizeof(err)) < 0) {
        fail(e, R_OTHER, -1, "%s: the CA's certificate is not usable: %s", name, err);
        tg_acme_response_free(&r);
        goto out;
    }
    /* Kept: on disk (and in Redis for the fleet). */
    char crt_path[1100], key_path[1100], dir[1100];
    cert_paths(a, name, crt_path, key_path, sizeof(crt_path));
    snprintf(dir, sizeof(dir), "%s/certs", a->state_dir);
    if (mkdirs(dir) < 0 || write_atomic(key_path, key_pem, strlen(key_pem), 0600) < 0 ||
        write_atomic(crt_path, r.body, r.body_len, 0644) < 0)
        tg_log_warn("cannot store the certificate for %s in %s: %s (it serves, but is "
                    "ordered again after a restart)",
                    name, dir, strerror(errno));
    if (A.cfg->tls.fleet) {
        redisReply *rep = fleet_cmd("HSET %scert:%s chain %b key %b", prefix(), name, r.body,
                                    r.body_len, key_pem, strlen(key_pem));
        freeReplyObject(rep);
        rep = fleet_cmd("PUBLISH %sevents cert:%s", prefix(), name);
        freeReplyObject(rep);
    }
    tg_acme_response_free(&r);
    rc = 0;
out:
    json_decref(done);
    if (key_pem != NULL) {
        OPENSSL_cleanse(key_pem, strlen(key_pem));
        free(key_pem);
    }
    free(fp);
    free(csr);
    EVP_PKEY_free(key);
    return rc;
}

/* ---- on demand: who may have one ----------------------------------------------------------- */

/* An active tenant's custom domain (static, or in the tenant directory's
 * Redis), or the ask URL answers 2xx. */
static bool eligible(const char *name, char *why, size_t cap)
{
    const struct tg_config *cfg = A.cfg;
    const struct tg_config_acme *a = &cfg->tls.acme;
    if (cfg->tenants.index != NULL) {
        const char *id = tg_tenant_static_domain(cfg->tenants.index, name, strlen(name));
        struct tg_tenant *t =
            id != NULL ? tg_tenant_static(cfg->tenants.index, id, strlen(id)) : NULL;
        if (t != NULL && !t->suspended)
            return true;
    }
    if (cfg->tenants.directory == TG_TENANTS_REDIS) {
        redisContext *c = redis_connect(&cfg->tenants.redis);
        bool ok = false;
        if (c != NULL) {
            const char *p = cfg->tenants.redis.key_prefix ? cfg->tenants.redis.key_prefix : "";
            redisReply *rep = redisCommand(c, "GET %shost:%s", p, name);
            if (rep != NULL && rep->type == REDIS_REPLY_STRING) {
                redisReply *st = redisCommand(c, "HGET %s%s status", p, rep->str);
                ok = st != NULL &&
                     (st->type == REDIS_REPLY_NIL ||
                      (st->type == REDIS_REPLY_STRING && strcmp(st->str, "suspended") != 0));
                freeReplyObject(st);
            }
            freeReplyObject(rep);
            redisFree(c);
        }
        if (ok)
            return true;
    }
    if (a->ask != NULL) {
        char url[URL_MAX + 300];
        snprintf(url, sizeof(url), "%s%sdomain=%s", a->ask, strchr(a->ask, '?') ? "&" : "?", name);
        struct tg_acme_response r;
        int rc = tg_acme_http(A.http, "GET", url, NULL, NULL, 0, timeout_ms(), &r);
        bool ok = rc == 0 && r.status >= 200 && r.status < 300;
        tg_acme_response_free(&r);
        if (ok)
            return true;
        snprintf(why, cap, "the ask endpoint said no");
        return false;
    }
    snprintf(why, cap, "not an active tenant's custom domain");
    return false;
}

/* ---- the schedule ------------------------------------------------------------------------- */

static bool under_cap(time_t now)
{
    unsigned recent = 0;
    size_t cap = sizeof(A.orders_at) / sizeof(A.orders_at[0]);
    for (unsigned i = 0; i < A.norders && i < cap; i++)
        recent += now - A.orders_at[i] < 3600;
    return recent < A.cfg->tls.acme.max_per_hour;
}

static void note_order(time_t now)
{
    size_t cap = sizeof(A.orders_at) / sizeof(A.orders_at[0]);
    A.orders_at[A.norders++ % cap] = now;
}

/* A fleet: another gateway may be ordering it; take the lock or wait for
 * its result. Returns 1 when we hold the lock, 0 when the certificate
 * came from another gateway, -1 when neither (try later). */
static int fleet_lock(const char *name)
{
    if (!A.cfg->tls.fleet)
        return 1;
    for (int waited = 0; waited <= LOCK_WAIT_S; waited++) {
        redisReply *rep = fleet_cmd("SET %slock:%s 1 NX PX %d", prefix(), name, LOCK_TTL_MS);
        bool got = rep != NULL && rep->type == REDIS_REPLY_STATUS;
        bool err = rep == NULL;
        freeReplyObject(rep);
        if (got)
            return 1;
        if (err)
            return 1; /* Redis is down: order alone rather than not at all */
        pthread_mutex_lock(&A.lock);
        struct managed *m = find_name(name, strlen(name));
        time_t before = m != NULL ? m->not_after : 0;
        pthread_mutex_unlock(&A.lock);
        if (load_stored(name)) {
            pthread_mutex_lock(&A.lock);
            m = find_name(name, strlen(name));
            bool fresh = m != NULL && m->not_after > before && m->next_at > time(NULL);
            pthread_mutex_unlock(&A.lock);
            if (fresh)
                return 0;
        }
        sleep(1);
    }
    return -1;
}

static void fleet_unlock(const char *name)
{
    if (!A.cfg->tls.fleet)
        return;
    redisReply *rep = fleet_cmd("DEL %slock:%s", prefix(), name);
    freeReplyObject(rep);
}

/* Orders (or renews) one name now, and records the outcome. */
static void run_name(char *name)
{
    time_t now = time(NULL);
    pthread_mutex_lock(&A.lock);
    struct managed *m = find_name(name, strlen(name));
    bool need_check = m != NULL && !m->eligible_checked;
    if (m != NULL)
        m->state = m->state == NAME_VALID ? NAME_VALID : NAME_ORDERING;
    bool capped = !under_cap(now);
    pthread_mutex_unlock(&A.lock);
    if (m == NULL)
        return;
    struct order_error e = {R_OTHER, -1, ""};
    int rc = -1;
    char why[200] = "";
    if (need_check && !eligible(name, why, sizeof(why))) {
        fail(&e, R_REFUSED, -1, "%s: %s", name, why);
    } else if (capped) {
        fail(&e, R_RATE_LIMITED, 600, "tls.acme.max_per_hour reached");
    } else {
        pthread_mutex_lock(&A.lock);
        if ((m = find_name(name, strlen(name))) != NULL)
            m->eligible_checked = true;
        pthread_mutex_unlock(&A.lock);
        int lock = fleet_lock(name);
        if (lock == 0) {
            return; /* another gateway ordered it: loaded, scheduled, notified */
        } else if (lock < 0) {
            fail(&e, R_OTHER, -1, "%s: another gateway holds the order lock", name);
        } else {
            pthread_mutex_lock(&A.lock);
            note_order(now);
            pthread_mutex_unlock(&A.lock);
            tg_log_info("ordering a certificate for %s from %s", name, A.cfg->tls.acme.directory);
            rc = order(name, &e);
            fleet_unlock(name);
        }
    }
    atomic_fetch_add(&A.results[rc == 0 ? R_ISSUED : e.kind], 1);
    if (rc == 0) {
        tg_log_info("certificate for %s issued", name);
        return; /* install scheduled the renewal and notified */
    }
    long backoff = RETRY_MIN_S;
    pthread_mutex_lock(&A.lock);
    if ((m = find_name(name, strlen(name))) != NULL) {
        m->fails++;
        for (unsigned i = 1; i < m->fails && backoff < RETRY_MAX_S; i++)
            backoff *= 2;
        if (backoff > RETRY_MAX_S)
            backoff = RETRY_MAX_S;
        if (e.retry_after > backoff)
            backoff = e.retry_after;
        m->next_at = now + backoff;
        if (e.kind == R_REFUSED)
            m->state = NAME_REFUSED;
        else if (m->state != NAME_VALID || m->not_after <= now)
            m->state = NAME_FAILED; /* a valid one keeps serving meanwhile */
        snprintf(m->error, sizeof(m->error), "%s", e.text);
    }
    pthread_mutex_unlock(&A.lock);
    if (e.kind == R_REFUSED)
        tg_log_info("no certificate for %s: %s", name, e.text);
    else
        tg_log_error("%s (next try in %lds)", e.text, backoff);
    if (A.notify != NULL)
        A.notify(name, A.notify_arg); /* waiting handshakes go on without one */
}

/* The next name due, copied out; false when none is due. */
static bool next_due(char *out, time_t *next)
{
    time_t now = time(NULL);
    bool found = false;
    *next = now + 3600;
    pthread_mutex_lock(&A.lock);
    for (size_t i = 0; i < A.nnames; i++) {
        struct managed *m = &A.names[i];
        if (!m->configured &&
            !(m->state == NAME_ORDERING || m->state == NAME_VALID || m->state == NAME_NONE))
            continue;
        if (m->next_at <= now && !found) {
            snprintf(out, NAME_MAX_LEN + 1, "%s", m->name);
            found = true;
        } else if (m->next_at < *next) {
            *next = m->next_at;
        }
    }
    pthread_mutex_unlock(&A.lock);
    return found;
}

/* RFC 3339 (as ARI writes it: "2025-01-02T04:00:00Z", maybe with
 * fractions or an offset) to a time_t; 0 when it is not one. */
static time_t rfc3339(const char *s)
{
    struct tm tm = {0};
    const char *p = s != NULL ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
    if (p == NULL)
        return 0;
    time_t t = timegm(&tm);
    if (*p == '.')
        while (*++p >= '0' && *p <= '9')
            ;
    if ((*p == '+' || *p == '-') && strlen(p) >= 6) {
        long off = strtol(p + 1, NULL, 10) * 3600 + strtol(p + 4, NULL, 10) * 60;
        t += *p == '+' ? -off : off;
    }
    return t;
}

/* Asks the CA's renewal information (ACME ARI, RFC 9773) for the
 * certificate of one name: a suggested window earlier than our own
 * schedule (a revocation, a CA incident) moves the renewal into it. */
static void check_renewal_info(const char *name)
{
    char id[200];
    time_t now = time(NULL);
    pthread_mutex_lock(&A.lock);
    struct managed *m = find_name(name, strlen(name));
    snprintf(id, sizeof(id), "%s", m != NULL ? m->cert_id : "");
    if (m != NULL)
        m->ari_at = 0;
    pthread_mutex_unlock(&A.lock);
    struct order_error e;
    if (id[0] == '\0' || get_directory(&e) < 0 || A.dir_renewal_info[0] == '\0')
        return; /* no ARI: our own schedule stands */
    char url[URL_MAX + 200];
    snprintf(url, sizeof(url), "%s%s%s", A.dir_renewal_info,
             A.dir_renewal_info[strlen(A.dir_renewal_info) - 1] == '/' ? "" : "/", id);
    struct tg_acme_response r;
    time_t start = 0, end = 0;
    long again = 6 * 3600;
    if (tg_acme_http(A.http, "GET", url, NULL, NULL, 0, timeout_ms(), &r) == 0 && r.status == 200) {
        json_t *j = json_loads(r.body, 0, NULL);
        json_t *w = j ? json_object_get(j, "suggestedWindow") : NULL;
        start = rfc3339(json_string_value(json_object_get(w, "start")));
        end = rfc3339(json_string_value(json_object_get(w, "end")));
        json_decref(j);
        if (r.retry_after > 0)
            again = r.retry_after < 3600 ? 3600 : r.retry_after > 86400 ? 86400 : r.retry_after;
    } else {
        again = 3600; /* the CA is away: ask again later */
    }
    tg_acme_response_free(&r);
    pthread_mutex_lock(&A.lock);
    if ((m = find_name(name, strlen(name))) != NULL && strcmp(m->cert_id, id) == 0) {
        m->ari_at = now + again;
        if (start > 0 && end >= start) {
            unsigned char rnd;
            RAND_bytes(&rnd, 1);
            time_t at = start + (time_t)((double)(end - start) * (rnd / 255.0));
            if (at < m->next_at) {
                m->next_at = at > now ? at : now;
                tg_log_info("the CA's renewal information moves the renewal of %s forward", name);
            }
        }
    }
    pthread_mutex_unlock(&A.lock);
}

/* The next name whose renewal information is due, copied out. */
static bool next_ari(char *out, time_t *next)
{
    time_t now = time(NULL);
    bool found = false;
    pthread_mutex_lock(&A.lock);
    for (size_t i = 0; i < A.nnames; i++) {
        const struct managed *m = &A.names[i];
        if (m->ari_at == 0 || m->state != NAME_VALID)
            continue;
        if (m->ari_at <= now && !found) {
            snprintf(out, NAME_MAX_LEN + 1, "%s", m->name);
            found = true;
        } else if (m->ari_at > now && m->ari_at < *next) {
            *next = m->ari_at;
        }
    }
    pthread_mutex_unlock(&A.lock);
    return found;
}

static void schedule(void)
{
    char name[NAME_MAX_LEN + 1];
    time_t next = time(NULL) + 3600;
    while (!A.stop && next_ari(name, &next))
        check_renewal_info(name);
    while (!A.stop && next_due(name, &next))
        run_name(name);
    time_t ari_next = next;
    if (next_ari(name, &ari_next))
        ari_next = time(NULL);
    if (ari_next < next)
        next = ari_next;
    time_t now = time(NULL);
    ev_timer_stop(A.loop, &A.tick);
    ev_timer_set(&A.tick, next > now ? (double)(next - now) : 1.0, 0.);
    ev_timer_start(A.loop, &A.tick);
}

/* The names of the configuration in force; what is stored serves at
 * once, the rest is ordered. */
static void load_names(void)
{
    sync_names(A.cfg);
    pthread_mutex_lock(&A.lock);
    size_t n = A.nnames;
    pthread_mutex_unlock(&A.lock);
    for (size_t i = 0; i < n; i++) {
        char name[NAME_MAX_LEN + 1];
        pthread_mutex_lock(&A.lock);
        bool fresh = A.names[i].configured && A.names[i].state == NAME_NONE;
        snprintf(name, sizeof(name), "%s", A.names[i].name);
        pthread_mutex_unlock(&A.lock);
        if (fresh)
            load_stored(name);
    }
}

static void apply_config(struct tg_config *cfg)
{
    struct tg_config *old = A.cfg;
    A.cfg = cfg;
    tg_config_unref(old);
    load_names();
}

static void on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)w, (void)revents;
    pthread_mutex_lock(&A.lock);
    bool stop = A.stop;
    struct tg_config *next = A.next_cfg;
    A.next_cfg = NULL;
    pthread_mutex_unlock(&A.lock);
    if (stop) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    if (next != NULL)
        apply_config(next);
    schedule();
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)w, (void)revents;
    schedule();
}

/* ---- a fleet's events --------------------------------------------------------------------- */

/* Mirrors what other gateways publish: certificates they obtained and
 * challenge answers the CA may ask any gateway for. Its own blocking
 * connection, in SUBSCRIBE mode. */
static void *subscriber_main(void *arg)
{
    (void)arg;
    tg_log_set_thread_name("acme-sub");
    char channel[300];
    snprintf(channel, sizeof(channel), "%sevents", prefix());
    while (A.sub_running) {
        redisContext *sub = redis_connect(&A.cfg->tls.redis);
        redisContext *get = sub != NULL ? redis_connect(&A.cfg->tls.redis) : NULL;
        redisReply *rep =
            sub != NULL && get != NULL ? redisCommand(sub, "SUBSCRIBE %s", channel) : NULL;
        freeReplyObject(rep);
        if (sub != NULL) {
            struct timeval forever = {0, 0};
            redisSetTimeout(sub, forever);
        }
        while (A.sub_running && sub != NULL && get != NULL && !sub->err) {
            redisReply *msg = NULL;
            if (redisGetReply(sub, (void **)&msg) != REDIS_OK || msg == NULL)
                break;
            if (msg->type == REDIS_REPLY_ARRAY && msg->elements == 3 &&
                msg->element[2]->type == REDIS_REPLY_STRING) {
                const char *ev = msg->element[2]->str;
                if (strncmp(ev, "challenge:http:", 15) == 0 ||
                    strncmp(ev, "challenge:alpn:", 15) == 0) {
                    bool alpn = ev[10] == 'a';
                    const char *id = ev + 15;
                    redisReply *v = redisCommand(get, "GET %s%s", prefix(), ev);
                    if (v != NULL && v->type == REDIS_REPLY_STRING) {
                        publish_local(alpn, id, id, v->str);
                    }
                    freeReplyObject(v);
                } else if (strncmp(ev, "cert:", 5) == 0) {
                    redisReply *v =
                        redisCommand(get, "HMGET %scert:%s chain key", prefix(), ev + 5);
                    char err[256];
                    if (v != NULL && v->type == REDIS_REPLY_ARRAY && v->elements == 2 &&
                        v->element[0]->type == REDIS_REPLY_STRING &&
                        v->element[1]->type == REDIS_REPLY_STRING) {
                        pthread_mutex_lock(&A.lock);
                        struct managed *m = find_name(ev + 5, strlen(ev + 5));
                        if (m == NULL)
                            m = add_name(ev + 5, strlen(ev + 5), false);
                        if (m != NULL)
                            m->eligible_checked = true;
                        pthread_mutex_unlock(&A.lock);
                        if (install(ev + 5, v->element[0]->str, v->element[0]->len,
                                    v->element[1]->str, v->element[1]->len, ev + 5, err,
                                    sizeof(err)) < 0)
                            tg_log_warn("a certificate for %s from another gateway is "
                                        "not usable: %s",
                                        ev + 5, err);
                    }
                    freeReplyObject(v);
                }
            }
            freeReplyObject(msg);
        }
        if (sub != NULL)
            redisFree(sub);
        if (get != NULL)
            redisFree(get);
        for (int i = 0; i < 10 && A.sub_running; i++)
            usleep(100 * 1000);
    }
    return NULL;
}

/* ---- the thread and its callers --------------------------------------------------------- */

static void *acme_main(void *arg)
{
    (void)arg;
    tg_log_set_thread_name("acme");
    schedule();
    ev_run(A.loop, 0);
    return NULL;
}

int tg_acme_start(const struct tg_config *cfg, struct tg_certstore *store, tg_acme_notify_fn notify,
                  void *arg, char *err, size_t errlen)
{
    const struct tg_config_acme *a = &cfg->tls.acme;
    if (A.running)
        return 0;
    if (mkdirs(a->state_dir) < 0) {
        snprintf(err, errlen, "tls.acme.state_dir %s: %s", a->state_dir, strerror(errno));
        return -1;
    }
    A.http = tg_acme_http_ctx(a->ca_bundle, err, errlen);
    if (A.http == NULL)
        return -1;
    A.names = calloc(MAX_NAMES, sizeof(*A.names));
    A.loop = ev_loop_new(EVFLAG_AUTO);
    if (A.names == NULL || A.loop == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    tg_config_ref((struct tg_config *)cfg);
    A.cfg = (struct tg_config *)cfg;
    A.store = store;
    tg_certstore_ref(store);
    A.notify = notify;
    A.notify_arg = arg;
    A.stop = false;
    ev_async_init(&A.wake, on_wake);
    ev_async_start(A.loop, &A.wake);
    ev_timer_init(&A.tick, on_tick, 0., 0.);
    /* What is stored serves from the first handshake: loaded before any
     * worker accepts (the caller starts them after this). */
    load_names();
    /* Signals are the main thread's, whenever this runs (start or a
     * reload that turns ACME on): the threads start with all blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    if (A.cfg->tls.fleet) {
        A.sub_running = true;
        if (pthread_create(&A.sub_thread, NULL, subscriber_main, NULL) != 0)
            A.sub_running = false;
    }
    int rc = pthread_create(&A.thread, NULL, acme_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the ACME thread");
        return -1;
    }
    A.running = true;
    return 0;
}

void tg_acme_configure(const struct tg_config *cfg)
{
    if (!A.running)
        return;
    tg_config_ref((struct tg_config *)cfg);
    pthread_mutex_lock(&A.lock);
    struct tg_config *old = A.next_cfg;
    A.next_cfg = (struct tg_config *)cfg;
    pthread_mutex_unlock(&A.lock);
    if (old != NULL)
        tg_config_unref(old);
    ev_async_send(A.loop, &A.wake);
}

void tg_acme_stop(void)
{
    if (!A.running)
        return;
    pthread_mutex_lock(&A.lock);
    A.stop = true;
    pthread_mutex_unlock(&A.lock);
    ev_async_send(A.loop, &A.wake);
    pthread_join(A.thread, NULL);
    if (A.sub_running) {
        A.sub_running = false;
        /* The subscriber sits in a blocking read: it ends with the
         * process (detached), its connection closed by the exit. */
        pthread_detach(A.sub_thread);
    }
    ev_loop_destroy(A.loop);
    A.loop = NULL;
    if (A.redis != NULL)
        redisFree(A.redis);
    A.redis = NULL;
    EVP_PKEY_free(A.account_key);
    A.account_key = NULL;
    SSL_CTX_free(A.http);
    A.http = NULL;
    tg_certstore_unref(A.store);
    A.store = NULL;
    tg_config_unref(A.cfg);
    A.cfg = NULL;
    if (A.next_cfg != NULL)
        tg_config_unref(A.next_cfg);
    A.next_cfg = NULL;
    free(A.names);
    A.names = NULL;
    A.nnames = 0;
    A.have_directory = false;
    A.kid[0] = A.nonce[0] = '\0';
    A.running = false;
}

enum tg_acme_demand tg_acme_on_demand(const char *name, size_t n)
{
    if (!A.running || n == 0 || n > NAME_MAX_LEN)
        return TG_ACME_NO;
    bool on_demand = false;
    time_t now = time(NULL);
    enum tg_acme_demand answer = TG_ACME_NO;
    pthread_mutex_lock(&A.lock);
    on_demand = A.cfg != NULL && A.cfg->tls.acme.on_demand;
    if (on_demand && memchr(name, '*', n) == NULL) {
        struct managed *m = find_name(name, n);
        if (m == NULL && (m = add_name(name, n, false)) != NULL) {
            m->next_at = now; /* ordered at the next pass */
            answer = TG_ACME_WAIT;
        } else if (m != NULL) {
            if (m->state == NAME_VALID || m->state == NAME_ORDERING)
                answer = TG_ACME_WAIT; /* the store has it, or soon will */
            else if (m->next_at <= now && m->state != NAME_REFUSED)
                answer = TG_ACME_WAIT;
            else if (m->state == NAME_REFUSED && m->next_at <= now) {
                m->eligible_checked = false; /* ask again */
                answer = TG_ACME_WAIT;
            }
            if (answer == TG_ACME_WAIT && m->state != NAME_VALID)
                m->state = NAME_ORDERING;
        }
    }
    pthread_mutex_unlock(&A.lock);
    if (answer == TG_ACME_WAIT)
        ev_async_send(A.loop, &A.wake);
    /* With on-demand certificates, a name that gets none is refused
     * rather than shown another name's certificate. */
    return answer == TG_ACME_NO && on_demand ? TG_ACME_REFUSE : answer;
}

static const char *state_name(uint8_t s)
{
    switch (s) {
    case NAME_VALID:
        return "valid";
    case NAME_ORDERING:
        return "ordering";
    case NAME_FAILED:
        return "failed";
    case NAME_REFUSED:
        return "refused";
    default:
        return "none";
    }
}

void tg_acme_status_json(struct tg_strbuf *b)
{
    tg_strbuf_put(b, "[", 1);
    if (A.running) {
        pthread_mutex_lock(&A.lock);
        for (size_t i = 0; i < A.nnames; i++) {
            const struct managed *m = &A.names[i];
            tg_strbuf_printf(b, "%s{\"name\":", i ? "," : "");
            tg_strbuf_json(b, m->name);
            tg_strbuf_printf(b,
                             ",\"state\":\"%s\",\"on_demand\":%s,\"not_after\":%lld,"
                             "\"renew_at\":%lld,\"issuer\":",
                             state_name(m->state), m->configured ? "false" : "true",
                             (long long)m->not_after, (long long)m->next_at);
            tg_strbuf_json(b, m->issuer);
            tg_strbuf_put(b, ",\"error\":", 9);
            tg_strbuf_json(b, m->error);
            tg_strbuf_put(b, "}", 1);
        }
        pthread_mutex_unlock(&A.lock);
    }
    tg_strbuf_put(b, "]", 1);
}

void tg_acme_metrics(struct tg_strbuf *b)
{
    tg_strbuf_printf(b, "# HELP tollgate_acme_orders_total Certificate orders by result.\n"
                        "# TYPE tollgate_acme_orders_total counter\n");
    for (int r = 0; r < R_COUNT; r++)
        tg_strbuf_printf(b, "tollgate_acme_orders_total{result=\"%s\"} %lu\n", result_names[r],
                         atomic_load(&A.results[r]));
    tg_strbuf_printf(b, "# HELP tollgate_certificate_expiry_seconds Seconds until a certificate "
                        "tls.acme manages expires.\n"
                        "# TYPE tollgate_certificate_expiry_seconds gauge\n");
    if (!A.running)
        return;
    time_t now = time(NULL);
    pthread_mutex_lock(&A.lock);
    for (size_t i = 0; i < A.nnames; i++) {
        const struct managed *m = &A.names[i];
        if (m->not_after == 0)
            continue;
        tg_strbuf_printf(b, "tollgate_certificate_expiry_seconds{name=\"%s\"} %lld\n", m->name,
                         (long long)(m->not_after - now));
    }
    pthread_mutex_unlock(&A.lock);
}
