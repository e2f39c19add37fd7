/* TLS server side: one context per trust setting of a config snapshot
 * (no client certificates, or one listener's client CA), SNI over the
 * certificate store, ALPN, session tickets through the shared key ring,
 * and the questions the request path asks of a handshaken connection.
 *
 * Certificates are not part of the contexts: at each ClientHello the SSL
 * takes the store's current snapshot (kept until SSL_free) and gets the
 * certificates SNI picks there, so a certificate added or replaced in the
 * store serves the next handshake without a reload. Not here: certificate
 * files and the name index (certstore.c), client side (tls_client.c),
 * HTTP/2 (ALPN is ready for it), 0-RTT (deliberately off: replayable). */
#include "tls_server.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "acme_challenge.h"
#include "certstore.h"
#include "config.h"
#include "tls_bio.h"
#include "tls_tickets.h"

/* TLS 1.2: forward secrecy and AEAD only. AES-128 first (cheapest with
 * AES-NI); SSL_OP_PRIORITIZE_CHACHA moves ChaCha20 up for clients that list
 * it first (phones without AES instructions). */
#define TLS_DEFAULT_CIPHERS                                      \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS_DEFAULT_SUITES                           \
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:" \
    "TLS_CHACHA20_POLY1305_SHA256"
#define TLS_GROUPS "X25519:P-256:P-384"
#define MAX_NAME 253 /* DNS name without the trailing dot */
#define DEFAULT_TICKET_ROTATION_MS (3600 * 1000)

/* ALPN, in server preference order and wire format: h2 first on a
 * listener with http2 (the default), else HTTP/1.1 only. */
static const unsigned char alpn_http1[] = "\x08http/1.1";
static const unsigned char alpn_h2[] = "\x02h2\x08http/1.1";
/* RFC 8737: a client that offers only this wants the TLS-ALPN-01
 * challenge certificate. */
static const unsigned char alpn_acme[] = "\x0a" TG_ACME_TLS_ALPN;

/* Asked when a ClientHello names a host no certificate serves (ACME on
 * demand); NULL: the default certificate answers. */
static tg_tls_unknown_name_fn unknown_name_hook;

/* Session id contexts: a session (ticket or cache entry) only resumes where
 * its context matches. Listeners that ask for client certificates get a
 * context derived from their CA bundle and mode, so a session made without
 * a client certificate can never resume on a listener that requires one.
 * Both are made of the configuration alone, never of anything particular
 * to this process (pid, address, random bytes): gateways that share ticket
 * keys (tls.ticket_key_file, tls.redis) must resume each other's tickets. */
static const unsigned char sid_ctx_plain[] = "tollgate";

/* SSL ex-data slots of server SSLs. */
static struct {
    int server; /* the tg_tls_server kept alive */
    int snap;   /* the certificate store snapshot taken at the ClientHello */
    int choice; /* the tg_cert_choice installed (inside `snap`; not freed) */
    int covers; /* struct covers_memo */
    int h2;     /* non-NULL: the listener offers h2 */
    int acme;   /* non-NULL: a TLS-ALPN-01 challenge certificate was installed */
    bool ready;
} ex = {-1, -1, -1, -1, -1, -1, false};

/* The context of one trust setting: no client certificates, or one
 * listener's client CA. Its app data points back here. */
struct tls_ctxset {
    struct tg_tls_server *server;
    const struct tg_config_listen *listen; /* NULL: no client certificates */
    SSL_CTX *ctx;
};

struct tg_tls_server {
    _Atomic unsigned refs;      /* the owner's, plus one per SSL alive */
    struct tg_certstore *store; /* SNI looks names up here (a reference) */
    struct tg_cert **certs;     /* tls.certificates, loaded, for publish */
    size_t ncerts;
    struct tls_ctxset plain;
    struct tls_ctxset *mtls;
    size_t nmtls;
    int64_t ticket_rotation_ms;
    /* tls.ticket_key_file, read by the config build (a reference), or
     * NULL: the keys other gateways share come from Redis, or none do. */
    struct tg_tls_ticket_secret *ticket_secret;
};

/* The first OpenSSL error's reason, for messages; clears the queue. */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r != NULL ? r : "unknown error";
}

/* ---- callbacks ----------------------------------------------------------- */

/* Puts the certificates of `g` on the SSL (nothing to do when they are
 * there already: a second ClientHello after a HelloRetryRequest). */
static int install_choice(SSL *ssl, const struct tg_cert_choice *g)
{
    if (SSL_get_ex_data(ssl, ex.choice) == g)
        return 0;
    SSL_certs_clear(ssl);
    for (int k = 0; k < TG_CERT_KINDS; k++) {
        struct tg_cert *c = g->cert[k];
        if (c != NULL && SSL_use_cert_and_key(ssl, c->x509, c->pkey, c->chain, 1) != 1)
            return -1;
    }
    return SSL_set_ex_data(ssl, ex.choice, (void *)g) == 1 ? 0 : -1;
}

/* The client offers exactly one ALPN protocol, acme-tls/1. */
static bool offers_only_acme(SSL *ssl)
{
    const unsigned char *p;
    size_t len;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &p,
                                  &len) != 1 ||
        len < 2)
        return false;
    size_t list = (size_t)p[0] << 8 | p[1];
    return list + 2 == len && list == sizeof(alpn_acme) - 1 && memcmp(p + 2, alpn_acme, list) == 0;
}

void tg_tls_server_on_unknown_name(tg_tls_unknown_name_fn hook)
{
    unknown_name_hook = hook;
}

/* Runs first on every ClientHello: takes the store's current snapshot
 * (the connection keeps it) and installs the certificates that serve the
 * requested name. Sessions and tickets do not depend on them: a resumed
 * session keeps the context (cache, ticket callback, session id context)
 * of its trust setting. */
static int on_client_hello(SSL *ssl, int *alert, void *arg)
{
    const struct tls_ctxset *set = arg;
    struct tg_certstore_snap *snap = SSL_get_ex_data(ssl, ex.snap);
    if (snap == NULL) {
        snap = tg_certstore_acquire(set->server->store);
        if (SSL_set_ex_data(ssl, ex.snap, snap) != 1) {
            tg_certstore_release(snap);
            *alert = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
    }
    const struct tg_cert_choice *want = NULL;
    const unsigned char *p;
    size_t len;
    const char *sni = NULL;
    size_t sni_len = 0;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) == 1 && len >= 5) {
        /* server_name_list: u16 length, then entries: u8 type, u16 len. */
        size_t list = (size_t)p[0] << 8 | p[1];
        size_t nlen = (size_t)p[3] << 8 | p[4];
        if (list + 2 == len && p[2] == TLSEXT_NAMETYPE_host_name && nlen + 5 <= len) {
            sni = (const char *)p + 5;
            sni_len = nlen;
            want = tg_certstore_lookup(snap, sni, nlen);
        }
    }
    if (sni != NULL && offers_only_acme(ssl)) {
        /* TLS-ALPN-01: the CA checks the challenge certificate, and
         * nothing else happens on this connection. */
        struct tg_cert *c = tg_acme_challenge_alpn_get(sni, sni_len);
        if (c == NULL) {
            *alert = SSL_AD_UNRECOGNIZED_NAME;
            return SSL_CLIENT_HELLO_ERROR;
        }
        SSL_certs_clear(ssl);
        bool ok = SSL_use_cert_and_key(ssl, c->x509, c->pkey, c->chain, 1) == 1 &&
                  SSL_set_ex_data(ssl, ex.acme, (void *)1) == 1;
        tg_cert_unref(c);
        if (!ok) {
            ERR_clear_error();
            *alert = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
        return SSL_CLIENT_HELLO_SUCCESS;
    }
    int demand = want == NULL && sni != NULL && unknown_name_hook != NULL
                     ? unknown_name_hook(sni, sni_len)
                     : 0;
    if (demand == 1) {
        /* Ordered on demand: the handshake waits (the worker does not)
         * and is resumed when the order ends, on a fresh snapshot. */
        SSL_set_ex_data(ssl, ex.snap, NULL);
        tg_certstore_release(snap);
        return SSL_CLIENT_HELLO_RETRY;
    }
    if (demand < 0) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (want == NULL)
        want = tg_certstore_default(snap);
    if (want == NULL) {
        /* An empty store: nothing to serve anyone. */
        *alert = SSL_AD_HANDSHAKE_FAILURE;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (install_choice(ssl, want) < 0) {
        ERR_clear_error();
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

/* Acknowledges SNI (so a TLS 1.2 session remembers its name); an unknown
 * name is served the default certificate rather than refused. */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
    (void)ssl, (void)alert, (void)arg;
    return SSL_TLSEXT_ERR_OK;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)arg;
    bool h2 = SSL_get_ex_data(ssl, ex.h2) != NULL;
    const unsigned char *alpn = h2 ? alpn_h2 : alpn_http1;
    size_t alpn_len = h2 ? sizeof(alpn_h2) - 1 : sizeof(alpn_http1) - 1;
    if (SSL_get_ex_data(ssl, ex.acme) != NULL) {
        alpn = alpn_acme;
        alpn_len = sizeof(alpn_acme) - 1;
    }
    /* Our preference order: the first of ours the client offers. */
    for (size_t i = 0; i < alpn_len; i += 1 + alpn[i]) {
        const unsigned char *ours = &alpn[i];
        for (unsigned int j = 0; j < inlen;) {
            unsigned int n = in[j];
            if (n == 0 || j + 1 + n > inlen)
                return SSL_TLSEXT_ERR_ALERT_FATAL;
            if (n == ours[0] && memcmp(&in[j + 1], ours + 1, n) == 0) {
                *out = &in[j + 1];
                *outlen = (unsigned char)n;
                return SSL_TLSEXT_ERR_OK;
            }
            j += 1 + n;
        }
    }
    /* RFC 7301: no protocol in common is a no_application_protocol alert. */
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static int on_ticket_key(SSL *ssl, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                         EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    const struct tls_ctxset *set = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    return tg_tls_tickets_key(ssl, name, iv, cctx, hctx, enc, set->server->ticket_rotation_ms,
                              set->server->ticket_secret);
}

/* ---- contexts ------------------------------------------------------------ */

/* Checks each entry of a cipher list on its own, because OpenSSL skips
 * names it does not know as long as one entry matches something. */
static int check_ciphers(SSL_CTX *scratch, const char *list, bool suites, char *err, size_t errlen)
{
    const char *key = suites ? "tls.ciphersuites" : "tls.ciphers";
    char tok[128];
    for (const char *p = list; *p != '\0';) {
        size_t n = strcspn(p, ":, ");
        if (n >= sizeof(tok)) {
            snprintf(err, errlen, "%s: entry '%.*s...' is too long", key, 40, p);
            return -1;
        }
        memcpy(tok, p, n);
        tok[n] = '\0';
        p += n;
        p += strspn(p, ":, ");
        /* Exclusions and directives remove or reorder; only what adds
         * ciphers must match something. */
        if (n == 0 || strchr("!-+@", tok[0]) != NULL)
            continue;
        if (suites) {
            int found = 0;
            if (SSL_CTX_set_ciphersuites(scratch, tok) == 1) {
                STACK_OF(SSL_CIPHER) *sk = SSL_CTX_get_ciphers(scratch);
                for (int i = 0; i < sk_SSL_CIPHER_num(sk); i++)
                    if (strcmp(SSL_CIPHER_get_version(sk_SSL_CIPHER_value(sk, i)), "TLSv1.3") == 0)
                        found++;
            }
            ERR_clear_error();
            if (found == 0) {
                snprintf(err, errlen,
                         "%s: '%s' is not a TLS 1.3 cipher suite "
                         "(TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, "
                         "TLS_CHACHA20_POLY1305_SHA256)",
                         key, tok);
                return -1;
            }
        } else if (SSL_CTX_set_cipher_list(scratch, tok) != 1) {
            ERR_clear_error();
            snprintf(err, errlen,
                     "%s: '%s' matches no TLS 1.2 cipher (TLS 1.3 "
                     "suites go in tls.ciphersuites)",
                     key, tok);
            return -1;
        }
    }
    return 0;
}

static int check_tls_settings(const struct tg_config_tls *t, char *err, size_t errlen)
{
    SSL_CTX *scratch = SSL_CTX_new(TLS_server_method());
    if (scratch == NULL) {
        snprintf(err, errlen, "cannot create a TLS context: %s", ssl_reason());
        return -1;
    }
    int rc = 0;
    bool only13 = t->min_version >= TLS1_3_VERSION;
    if (t->ciphers != NULL) {
        if (check_ciphers(scratch, t->ciphers, false, err, errlen) < 0) {
            rc = -1;
        } else if (SSL_CTX_set_cipher_list(scratch, t->ciphers) != 1 && !only13) {
            snprintf(err, errlen, "tls.ciphers: '%s' leaves no TLS 1.2 cipher", t->ciphers);
            rc = -1;
        }
    }
    if (rc == 0 && t->ciphersuites != NULL) {
        if (check_ciphers(scratch, t->ciphersuites, true, err, errlen) < 0) {
            rc = -1;
        } else if (t->ciphersuites[strspn(t->ciphersuites, ":, ")] == '\0' && only13) {
            snprintf(err, errlen,
                     "tls.ciphersuites is empty but "
                     "tls.min_version is 1.3: nothing could be negotiated");
            rc = -1;
        }
    }
    ERR_clear_error();
    SSL_CTX_free(scratch);
    return rc;
}

/* One trust setting's client CA (mTLS). */
struct mtls_ca {
    X509_STORE *store;
    STACK_OF(X509_NAME) * names;
    unsigned char sid_ctx[32];
};

/* A context with the snapshot's settings and callbacks, without
 * certificates (they come from the store at each ClientHello). */
static SSL_CTX *server_ctx_new(struct tg_tls_server *s, const struct tg_config_tls *t,
                               struct tls_ctxset *set, const struct mtls_ca *ca, bool optional,
                               char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        goto fail;
    SSL_CTX_set_app_data(ctx, set);
    if (SSL_CTX_set_min_proto_version(ctx, t->min_version) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, 0) != 1)
        goto fail;
    /* No renegotiation at all (SSL_OP_ALLOW_CLIENT_RENEGOTIATION stays
     * off); an EOF without close_notify is an end of stream, which is what
     * io.c expects. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_PRIORITIZE_CHACHA | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 (t->session_tickets ? 0 : SSL_OP_NO_TICKET));
    SSL_CTX_clear_options(ctx, SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
    /* Read ahead: one read syscall per record instead of two (header, then
     * body); io.c tracks what OpenSSL holds with SSL_has_pending. */
    SSL_CTX_set_mode(ctx, TG_TLS_SERVER_MODES);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (SSL_CTX_set_cipher_list(ctx, t->ciphers ? t->ciphers : TLS_DEFAULT_CIPHERS) != 1 &&
        t->min_version < TLS1_3_VERSION)
        goto fail;
    if (SSL_CTX_set_ciphersuites(ctx, t->ciphersuites ? t->ciphersuites : TLS_DEFAULT_SUITES) !=
            1 ||
        SSL_CTX_set1_groups_list(ctx, TLS_GROUPS) != 1)
        goto fail;
    ERR_clear_error();

    /* Resumption: the SSL keeps this context, whatever certificates SNI
     * installs, so its cache and ticket keys serve every name. */
    const unsigned char *sid = ca != NULL ? ca->sid_ctx : sid_ctx_plain;
    unsigned sid_len = ca != NULL ? sizeof(ca->sid_ctx) : sizeof(sid_ctx_plain) - 1;
    if (SSL_CTX_set_session_id_context(ctx, sid, sid_len) != 1)
        goto fail;
    if (t->session_cache_size > 0) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(ctx, (long)t->session_cache_size);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    SSL_CTX_set_timeout(ctx, (long)(t->session_timeout_ms / 1000));
    if (t->session_tickets) {
        if (SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key) != 1)
            goto fail;
    } else if (t->session_cache_size == 0) {
        /* TLS 1.3 would send stateful tickets nothing could resume. */
        SSL_CTX_set_num_tickets(ctx, 0);
    }

    SSL_CTX_set_client_hello_cb(ctx, on_client_hello, set);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, s);

    if (ca != NULL) {
        STACK_OF(X509_NAME) *names = SSL_dup_CA_list(ca->names);
        if (names == NULL)
            goto fail;
        SSL_CTX_set1_cert_store(ctx, ca->store);
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (optional ? 0 : SSL_VERIFY_FAIL_IF_NO_PEER_CERT),
                           NULL);
    }
    return ctx;

fail:
    snprintf(err, errlen, "cannot set up a TLS context: %s", ssl_reason());
    SSL_CTX_free(ctx);
    return NULL;
}

static int ctxset_build(struct tg_tls_server *s, const struct tg_config_tls *t,
                        struct tls_ctxset *set, const struct tg_config_listen *l,
                        const struct mtls_ca *ca, char *err, size_t errlen)
{
    set->server = s;
    set->listen = l;
    set->ctx = server_ctx_new(s, t, set, ca, l != NULL && l->client_verify_optional, err, errlen);
    return set->ctx != NULL ? 0 : -1;
}

/* Every configured certificate must be one OpenSSL takes under these
 * settings (a key too weak for the security level is refused): tried on a
 * scratch context, so the error points at the entry. Returns the index of
 * the first refused, or -1. */
static ssize_t first_unusable(struct tg_tls_server *s, const struct tg_config_tls *t, char *err,
                              size_t errlen)
{
    struct tls_ctxset scratch = {s, NULL, NULL};
    SSL_CTX *ctx = server_ctx_new(s, t, &scratch, NULL, false, err, errlen);
    if (ctx == NULL)
        return -2;
    ssize_t bad = -1;
    for (size_t i = 0; i < s->ncerts && bad < 0; i++) {
        struct tg_cert *c = s->certs[i];
        if (SSL_CTX_use_cert_and_key(ctx, c->x509, c->pkey, c->chain, 1) != 1) {
            snprintf(err, errlen, "certificate '%s' cannot be used: %s", c->label, ssl_reason());
            bad = (ssize_t)i;
        }
    }
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return bad;
}

static void server_destroy(struct tg_tls_server *s)
{
    SSL_CTX_free(s->plain.ctx);
    for (size_t i = 0; i < s->nmtls; i++)
        SSL_CTX_free(s->mtls[i].ctx);
    free(s->mtls);
    for (size_t i = 0; i < s->ncerts; i++)
        tg_cert_unref(s->certs[i]);
    free(s->certs);
    tg_certstore_unref(s->store);
    tg_tls_tickets_secret_unref(s->ticket_secret);
    free(s);
}

static void server_unref(struct tg_tls_server *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        server_destroy(s);
}

static int mtls_build(struct tg_tls_server *s, const struct tg_config *cfg,
                      const struct tg_config_listen *l, char *err, size_t errlen)
{
    struct mtls_ca ca = {0};
    unsigned char digest[32];
    ca.store = tg_cert_load_ca(l->client_ca, "client_ca", &ca.names, digest, err, errlen);
    if (ca.store == NULL)
        return -1;
    /* The session id context names the trust setting: the CA bundle and
     * whether a certificate is required. */
    unsigned char in[48];
    memcpy(in, "tollgate mtls ", 14);
    in[14] = l->client_verify_optional ? 'o' : 'r';
    memcpy(in + 15, digest, 32);
    unsigned int len = sizeof(ca.sid_ctx);
    int rc = -1;
    if (EVP_Digest(in, 47, ca.sid_ctx, &len, EVP_sha256(), NULL) != 1) {
        snprintf(err, errlen, "cannot hash '%s': %s", l->client_ca, ssl_reason());
        goto done;
    }
    struct tls_ctxset *set = &s->mtls[s->nmtls];
    rc = ctxset_build(s, &cfg->tls, set, l, &ca, err, errlen);
    if (rc == 0)
        s->nmtls++;
done:
    X509_STORE_free(ca.store);
    sk_X509_NAME_pop_free(ca.names, X509_NAME_free);
    return rc;
}

struct tg_tls_server *tg_tls_server_new_shared(const struct tg_config *cfg,
                                               struct tg_certstore *store, char *err, size_t errlen,
                                               struct tg_config_mark *where)
{
    const struct tg_config_tls *t = &cfg->tls;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    *where = t->mark;
    if (!ex.ready) {
        snprintf(err, errlen, "TLS is not initialised (tg_tls_global_init)");
        return NULL;
    }
    if (t->ncerts == 0 && !t->acme.enabled) {
        snprintf(err, errlen,
                 "TLS listeners need at least one entry in "
                 "tls.certificates");
        for (size_t i = 0; i < cfg->nlisteners; i++)
            if (cfg->listeners[i].tls) {
                *where = cfg->listeners[i].mark;
                break;
            }
        return NULL;
    }
    if (check_tls_settings(t, err, errlen) < 0)
        return NULL;

    struct tg_tls_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&s->refs, 1);
    tg_certstore_ref(store);
    s->store = store;
    s->ticket_rotation_ms =
        t->ticket_key_rotation_ms > 0 ? t->ticket_key_rotation_ms : DEFAULT_TICKET_ROTATION_MS;
    if (cfg->ticket_secret != NULL)
        s->ticket_secret = tg_tls_tickets_secret_ref(cfg->ticket_secret);
    s->certs = calloc(t->ncerts ? t->ncerts : 1, sizeof(*s->certs));
    size_t nmtls = 0;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (cfg->listeners[i].tls && cfg->listeners[i].client_ca != NULL)
            nmtls++;
    s->mtls = calloc(nmtls ? nmtls : 1, sizeof(*s->mtls));
    if (s->certs == NULL || s->mtls == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < t->ncerts; i++) {
        *where = t->certs[i].mark;
        s->certs[i] = tg_cert_load(t->certs[i].cert, t->certs[i].key, err, errlen);
        if (s->certs[i] == NULL)
            goto fail;
        s->ncerts++;
    }
    *where = t->mark;
    tg_certstore_warn_unserved(s->certs, s->ncerts);
    if (ctxset_build(s, t, &s->plain, NULL, NULL, err, errlen) < 0)
        goto fail;
    ssize_t bad = first_unusable(s, t, err, errlen);
    if (bad != -1) {
        if (bad >= 0)
            *where = t->certs[bad].mark;
        goto fail;
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct tg_config_listen *l = &cfg->listeners[i];
        if (!l->tls || l->client_ca == NULL)
            continue;
        *where = l->mark;
        if (mtls_build(s, cfg, l, err, errlen) < 0)
            goto fail;
    }
    *where = t->mark;
    return s;

fail:
    server_destroy(s);
    return NULL;
}

struct tg_tls_server *tg_tls_server_new(const struct tg_config *cfg, char *err, size_t errlen,
                                        struct tg_config_mark *where)
{
    *where = cfg->tls.mark;
    struct tg_certstore *own = tg_certstore_new();
    if (own == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    struct tg_tls_server *s = tg_tls_server_new_shared(cfg, own, err, errlen, where);
    tg_certstore_unref(own);
    if (s != NULL && tg_tls_server_publish(s) < 0) {
        snprintf(err, errlen, "out of memory");
        server_unref(s);
        return NULL;
    }
    return s;
}

int tg_tls_server_publish(struct tg_tls_server *s)
{
    return tg_certstore_set_config(s->store, s->certs, s->ncerts);
}

struct tg_certstore *tg_tls_server_store(const struct tg_tls_server *s)
{
    return s->store;
}

void tg_tls_server_free(struct tg_tls_server *s)
{
    server_unref(s);
}

static void on_ssl_server_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int index, long argl,
                               void *argp)
{
    (void)parent, (void)ad, (void)index, (void)argl, (void)argp;
    server_unref(ptr);
}

static void on_ssl_snap_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int index, long argl,
                             void *argp)
{
    (void)parent, (void)ad, (void)index, (void)argl, (void)argp;
    tg_certstore_release(ptr);
}

SSL *tg_tls_server_accept(struct tg_tls_server *s, const struct tg_config_listen *l, int fd)
{
    struct tls_ctxset *set = &s->plain;
    if (l != NULL && l->client_ca != NULL) {
        /* Never fall back to a context without client certificates. */
        set = NULL;
        for (size_t i = 0; i < s->nmtls; i++)
            if (s->mtls[i].listen == l)
                set = &s->mtls[i];
        if (set == NULL)
            return NULL;
    }
    SSL *ssl = SSL_new(set->ctx);
    if (ssl == NULL)
        goto fail;
    atomic_fetch_add(&s->refs, 1);
    if (SSL_set_ex_data(ssl, ex.server, s) != 1) {
        server_unref(s);
        goto fail;
    }
    if (l != NULL && l->http2 && SSL_set_ex_data(ssl, ex.h2, (void *)1) != 1)
        goto fail;
    if (!tg_tls_bio_attach(ssl, fd))
        goto fail;
    SSL_set_mode(ssl, TG_TLS_SERVER_MODES);
    SSL_set_accept_state(ssl);
    return ssl;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

/* ---- after the handshake ----------------------------------------- */

static bool cert_matches(X509 *x, const char *name, size_t n, bool ip)
{
    int rc = ip ? X509_check_ip_asc(x, name, 0)
                : X509_check_host(x, name, n, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL);
    ERR_clear_error();
    return rc == 1;
}

static bool check_cert_covers(SSL *ssl, struct tg_str host)
{
    const char *p = host.p;
    size_t n = host.n;
    /* Drop the port: "name:443", "[v6]:443". */
    if (n > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', n);
        if (close == NULL)
            return false;
        n = (size_t)(close - p) + 1;
    } else {
        const char *colon = memchr(p, ':', n);
        if (colon != NULL)
            n = (size_t)(colon - p);
    }
    if (n > 0 && p[n - 1] == '.')
        n--;
    if (n == 0 || n > MAX_NAME || memchr(p, '\0', n) != NULL)
        return false;
    char name[MAX_NAME + 1];
    bool ip = tg_cert_ip_literal(p, n, name, sizeof(name));
    if (!ip) {
        memcpy(name, p, n);
        name[n] = '\0';
    }

    /* Only a server SSL past its ClientHello has a choice. */
    if (!SSL_is_server(ssl))
        return false;
    const struct tg_cert_choice *g = SSL_get_ex_data(ssl, ex.choice);
    if (g == NULL)
        return false;
    X509 *served = SSL_get_certificate(ssl);
    if (!SSL_session_reused(ssl)) {
        for (int i = 0; i < TG_CERT_KINDS; i++)
            if (g->cert[i] != NULL && g->cert[i]->x509 == served)
                return cert_matches(served, name, strlen(name), ip);
    }
    /* A resumed session chose its certificate in an earlier handshake,
     * which the server does not remember: ask every candidate. */
    bool any = false;
    for (int i = 0; i < TG_CERT_KINDS; i++) {
        if (g->cert[i] == NULL)
            continue;
        if (!cert_matches(g->cert[i]->x509, name, strlen(name), ip))
            return false;
        any = true;
    }
    return any;
}

bool tg_tls_cert_self_signed(SSL *ssl)
{
    if (ssl == NULL || !SSL_is_server(ssl))
        return false;
    const struct tg_cert_choice *g = SSL_get_ex_data(ssl, ex.choice);
    if (g == NULL)
        return false;
    X509 *served = SSL_get_certificate(ssl);
    bool reused = SSL_session_reused(ssl);
    for (int i = 0; i < TG_CERT_KINDS; i++) {
        if (g->cert[i] == NULL)
            continue;
        if (!reused && g->cert[i]->x509 == served)
            return g->cert[i]->self_issued;
        if (reused && g->cert[i]->self_issued)
            return true;
    }
    return false;
}

/* The last Host a connection's certificate was checked against, and the
 * verdict. Keep-alive clients repeat their Host, and the check (decoding
 * the certificate's names in X509_check_host/_ip_asc) costs more than all
 * the rest of a request: some 17k instructions for an IP literal. The
 * certificate of a connection never changes (no renegotiation). */
struct covers_memo {
    bool covered;
    size_t n;
    char host[];
};

static void on_covers_memo_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                                void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    free(ptr);
}

bool tg_tls_cert_covers(SSL *ssl, struct tg_str host)
{
    struct covers_memo *m = SSL_get_ex_data(ssl, ex.covers);
    if (m != NULL && m->n == host.n && memcmp(m->host, host.p, host.n) == 0)
        return m->covered;
    bool covered = check_cert_covers(ssl, host);
    if (host.n <= MAX_NAME + 8) { /* name, ":port", brackets: else not kept */
        struct covers_memo *fresh = malloc(sizeof(*fresh) + host.n);
        if (fresh != NULL) {
            fresh->covered = covered;
            fresh->n = host.n;
            memcpy(fresh->host, host.p, host.n);
            if (SSL_set_ex_data(ssl, ex.covers, fresh) == 1)
                free(m);
            else
                free(fresh);
        }
    }
    return covered;
}

void tg_tls_info(SSL *ssl, struct tg_tls_info *out)
{
    out->version = SSL_get_version(ssl);
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    out->cipher = c != NULL ? SSL_CIPHER_get_name(c) : "";
    out->sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    out->resumed = SSL_session_reused(ssl) == 1;
}

size_t tg_tls_client_subject(SSL *ssl, char *out, size_t cap)
{
    if (cap > 0)
        out[0] = '\0';
    X509 *x = SSL_get0_peer_certificate(ssl);
    if (x == NULL || SSL_get_verify_result(ssl) != X509_V_OK || cap == 0)
        return 0;
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL)
        return 0;
    size_t len = 0;
    char *p;
    /* RFC 2253 escaping turns control and non-ASCII bytes into \XX, so the
     * result is safe in a header value. */
    if (X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0) {
        long n = BIO_get_mem_data(b, &p);
        /* Never cut a name short: a prefix can be another identity. */
        if (n > 0 && (size_t)n < cap) {
            len = (size_t)n;
            for (size_t i = 0; i < len; i++)
                if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] == 0x7f)
                    len = 0;
            memcpy(out, p, len);
            out[len] = '\0';
        }
    }
    BIO_free(b);
    ERR_clear_error();
    return len;
}

/* ---- process-wide ---------------------------------------------------------- */

int tg_tls_server_global_init(void)
{
    if (ex.ready)
        return 0;
    ex.server = SSL_get_ex_new_index(0, NULL, NULL, NULL, on_ssl_server_free);
    ex.snap = SSL_get_ex_new_index(0, NULL, NULL, NULL, on_ssl_snap_free);
    ex.choice = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    ex.covers = SSL_get_ex_new_index(0, NULL, NULL, NULL, on_covers_memo_free);
    ex.h2 = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    ex.acme = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (ex.server < 0 || ex.snap < 0 || ex.choice < 0 || ex.covers < 0 || ex.h2 < 0 ||
        ex.acme < 0) {
        tg_tls_server_global_cleanup();
        return -1;
    }
    ex.ready = true;
    return 0;
}

void tg_tls_server_global_cleanup(void)
{
    int *slots[] = {&ex.server, &ex.snap, &ex.choice, &ex.covers, &ex.h2, &ex.acme};
    for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
        if (*slots[i] >= 0)
            CRYPTO_free_ex_index(CRYPTO_EX_INDEX_SSL, *slots[i]);
        *slots[i] = -1;
    }
    ex.ready = false;
}
