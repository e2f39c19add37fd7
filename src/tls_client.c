/* TLS client side, for upstreams with `tls: true`: one context per
 * upstream (verification, trust store, ALPN), and sessions remembered per
 * server so pooled reconnects resume.
 *
 * It does no I/O of its own (io.c reads and writes through the SSL). Not
 * here: the server side (tls_server.c), client certificates toward
 * backends, OCSP. */
#include "tls_client.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "certstore.h"
#include "config.h"
#include "log.h"
#include "tls_bio.h"

#define TLS_GROUPS "X25519:P-256:P-384"
#define CLIENT_SESSIONS_MAX 256

/* ALPN offered to backends, wire format. */
static const unsigned char alpn_http1[] = "\x08http/1.1";

/* SSL ex-data slot of client SSLs: struct client_ssl. */
static int client_idx = -1;

/* The first OpenSSL error's reason, for messages; clears the queue. */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r != NULL ? r : "unknown error";
}

/* One SSL_CTX per upstream. Sessions are remembered per server (the address
 * text given to connect), so each server of an upstream resumes its own;
 * TLS 1.3 tickets arrive after the handshake, while the connection is read,
 * and are caught by the new-session callback. */

struct client_session {
    char *host;
    SSL_SESSION *sess;
};

struct tg_tls_client {
    _Atomic unsigned refs; /* the owner's, plus one per SSL alive */
    SSL_CTX *ctx;
    char *server_name; /* tls_server_name, or NULL */
    bool verify;
    pthread_mutex_t lock;
    struct client_session sessions[CLIENT_SESSIONS_MAX];
    size_t nsessions;
    size_t evict; /* next slot to reuse when full */
};

/* SSL ex data of a client SSL: the client kept alive, and the cache key. */
struct client_ssl {
    struct tg_tls_client *c;
    char host[];
};

static void client_unref(struct tg_tls_client *c)
{
    if (c == NULL || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    for (size_t i = 0; i < c->nsessions; i++) {
        free(c->sessions[i].host);
        SSL_SESSION_free(c->sessions[i].sess);
    }
    pthread_mutex_destroy(&c->lock);
    SSL_CTX_free(c->ctx);
    free(c->server_name);
    free(c);
}

static void on_ssl_client_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                               void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    struct client_ssl *cs = ptr;
    if (cs != NULL) {
        client_unref(cs->c);
        free(cs);
    }
}

/* Takes ownership of `sess`. */
static void client_store(struct tg_tls_client *c, const char *host, SSL_SESSION *sess)
{
    SSL_SESSION *old = NULL;
    char *copy = NULL;
    pthread_mutex_lock(&c->lock);
    size_t i;
    for (i = 0; i < c->nsessions; i++)
        if (strcmp(c->sessions[i].host, host) == 0)
            break;
    if (i == c->nsessions) {
        if (c->nsessions < CLIENT_SESSIONS_MAX) {
            i = c->nsessions;
        } else {
            i = c->evict;
            c->evict = (c->evict + 1) % CLIENT_SESSIONS_MAX;
        }
        pthread_mutex_unlock(&c->lock);
        copy = strdup(host);
        if (copy == NULL) {
            SSL_SESSION_free(sess);
            return;
        }
        pthread_mutex_lock(&c->lock);
        /* Another thread may have filled the slot meanwhile: re-check. */
        size_t j;
        for (j = 0; j < c->nsessions; j++)
            if (strcmp(c->sessions[j].host, host) == 0)
                break;
        if (j < c->nsessions) {
            i = j;
        } else if (c->nsessions < CLIENT_SESSIONS_MAX) {
            i = c->nsessions++;
            c->sessions[i].host = copy;
            c->sessions[i].sess = NULL;
            copy = NULL;
        } else {
            free(c->sessions[i].host);
            c->sessions[i].host = copy;
            copy = NULL;
        }
    }
    old = c->sessions[i].sess;
    c->sessions[i].sess = sess;
    pthread_mutex_unlock(&c->lock);
    free(copy);
    SSL_SESSION_free(old);
}

static int on_client_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct client_ssl *cs = SSL_get_ex_data(ssl, client_idx);
    if (cs == NULL || SSL_SESSION_is_resumable(sess) != 1)
        return 0;
    client_store(cs->c, cs->host, sess);
    return 1; /* we keep the reference */
}

struct tg_tls_client *tg_tls_client_new(const struct tg_config_upstream *u, char *err,
                                        size_t errlen, struct tg_config_mark *where)
{
    *where = u->mark;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (client_idx < 0) {
        snprintf(err, errlen, "TLS is not initialised (tg_tls_global_init)");
        return NULL;
    }
    struct tg_tls_client *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->lock, NULL);
    c->verify = u->tls_verify;
    if (u->tls_server_name != NULL && (c->server_name = strdup(u->tls_server_name)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    SSL_CTX *ctx = c->ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        goto fail_ssl;
    SSL_CTX_set_app_data(ctx, c);
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set1_groups_list(ctx, TLS_GROUPS) != 1 ||
        SSL_CTX_set_alpn_protos(ctx, alpn_http1, sizeof(alpn_http1) - 1) != 0)
        goto fail_ssl;
    /* No SSL_OP_IGNORE_UNEXPECTED_EOF here: a response whose end is the
     * connection's end must not be taken as complete when cut short. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, TG_TLS_CLIENT_MODES);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_client_new_session);
    if (u->tls_ca != NULL) {
        X509_STORE *store = tg_cert_load_ca(u->tls_ca, "tls_ca", NULL, NULL, err, errlen);
        if (store == NULL)
            goto fail;
        SSL_CTX_set_cert_store(ctx, store); /* takes ownership */
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(err, errlen,
                 "upstream %s: cannot load the system trust "
                 "store: %s",
                 u->name ? u->name : "", ssl_reason());
        goto fail;
    }
    SSL_CTX_set_verify(ctx, c->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    if (!c->verify)
        tg_log_warn("upstream %s: tls_verify is off: its certificates are not "
                    "checked",
                    u->name ? u->name : "");
    ERR_clear_error();
    return c;

fail_ssl:
    snprintf(err, errlen, "upstream %s: cannot set up a TLS context: %s", u->name ? u->name : "",
             ssl_reason());
fail:
    client_unref(c);
    return NULL;
}

void tg_tls_client_free(struct tg_tls_client *c)
{
    client_unref(c);
}

SSL *tg_tls_client_connect(struct tg_tls_client *c, int fd, const char *host)
{
    const char *name = c->server_name != NULL ? c->server_name : host;
    if (name == NULL || host == NULL)
        return NULL;
    size_t hlen = strlen(host);
    struct client_ssl *cs = malloc(sizeof(*cs) + hlen + 1);
    if (cs == NULL)
        return NULL;
    cs->c = c;
    memcpy(cs->host, host, hlen + 1);
    SSL *ssl = SSL_new(c->ctx);
    if (ssl == NULL) {
        free(cs);
        goto fail;
    }
    atomic_fetch_add(&c->refs, 1);
    if (SSL_set_ex_data(ssl, client_idx, cs) != 1) {
        client_unref(c);
        free(cs);
        goto fail;
    }
    if (!tg_tls_bio_attach(ssl, fd))
        goto fail;
    SSL_set_mode(ssl, TG_TLS_CLIENT_MODES);
    SSL_set_connect_state(ssl);
    char ip[INET6_ADDRSTRLEN + 1];
    bool is_ip = tg_cert_ip_literal(name, strlen(name), ip, sizeof(ip));
    /* SNI carries names only (RFC 6066). */
    if (!is_ip && SSL_set_tlsext_host_name(ssl, name) != 1)
        goto fail;
    if (c->verify) {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip)
                       : SSL_set1_host(ssl, name);
        if (ok != 1)
            goto fail;
    }
    SSL_SESSION *sess = NULL;
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->nsessions; i++)
        if (strcmp(c->sessions[i].host, host) == 0) {
            sess = c->sessions[i].sess;
            if (sess != NULL)
                SSL_SESSION_up_ref(sess);
            break;
        }
    pthread_mutex_unlock(&c->lock);
    if (sess != NULL) {
        SSL_set_session(ssl, sess); /* a failure only costs the resumption */
        SSL_SESSION_free(sess);
    }
    ERR_clear_error();
    return ssl;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

void tg_tls_client_save_session(struct tg_tls_client *c, SSL *ssl)
{
    struct client_ssl *cs = SSL_get_ex_data(ssl, client_idx);
    if (cs == NULL || cs->c != c)
        return;
    SSL_SESSION *sess = SSL_get1_session(ssl);
    if (sess == NULL)
        return;
    /* With TLS 1.3 the session resumes only once a ticket has arrived;
     * on_client_new_session stores it then. */
    if (SSL_SESSION_is_resumable(sess) != 1 || SSL_session_reused(ssl)) {
        SSL_SESSION_free(sess);
        return;
    }
    client_store(c, cs->host, sess);
}

/* ---- process-wide ---------------------------------------------------------- */

int tg_tls_client_global_init(void)
{
    if (client_idx >= 0)
        return 0;
    client_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, on_ssl_client_free);
    return client_idx >= 0 ? 0 : -1;
}

void tg_tls_client_global_cleanup(void)
{
    if (client_idx >= 0)
        CRYPTO_free_ex_index(CRYPTO_EX_INDEX_SSL, client_idx);
    client_idx = -1;
}
