/* TLS server side: the contexts of one config snapshot (protocols, ciphers,
 * resumption, client certificates per listener), SNI over the certificate
 * store, ALPN, and what the request path asks of a handshaken connection.
 *
 * Contexts are immutable once built and safe to use from any worker thread
 * (OpenSSL's SSL_CTX is internally locked); the state of one connection
 * (SSL *) belongs to the worker that owns the connection. */
#ifndef TG_TLS_SERVER_H
#define TG_TLS_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "str.h"

struct tg_config;
struct tg_config_listen;
struct tg_config_mark;
struct tg_certstore;

/* The modes of every server-side SSL: an idle connection holds no record
 * buffers; io.c writes partially and from moving buffers. */
#define TG_TLS_SERVER_MODES \
    (SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)

struct tg_tls_server;

/* Builds the server contexts for a snapshot with a certificate store of
 * its own, filled at once with cfg->tls.certificates (tests, `-t`,
 * `explain`): see tg_tls_server_new_shared for the rest. Main thread. */
struct tg_tls_server *tg_tls_server_new(const struct tg_config *cfg, char *err, size_t errlen,
                                        struct tg_config_mark *where);

/* Builds the server contexts for a snapshot whose SNI consults `store`
 * (the server keeps a reference to it): loads every certificate in cfg->tls
 * (PEM, chain included) and checks that each key matches its certificate
 * and that OpenSSL accepts it, applies protocol/cipher settings (invalid
 * tls.ciphers or tls.ciphersuites entries are errors), and one context per
 * listener that has a client CA. The certificates enter the store only
 * with tg_tls_server_publish, so a snapshot that is built and then refused
 * (a listener that cannot be opened) changes nothing. On error returns
 * NULL with a message in `err` naming the file, and sets `*where` to the
 * config mark of the offending entry (certificate, listener or tls
 * section). Expired, not-yet-valid and soon-expiring certificates load
 * with a warning, as do certificates SNI would never choose. The session
 * cache (TLS 1.2 without tickets, TLS 1.3 with session_tickets: false)
 * belongs to this snapshot and starts empty. Session tickets use
 * cfg->ticket_secret (tls.ticket_key_file; the server keeps a reference)
 * when the build read one. Reads cfg only during the
 * call, except that tg_tls_server_accept compares listener pointers with
 * cfg->listeners. Requires tg_tls_global_init. Main thread. */
struct tg_tls_server *tg_tls_server_new_shared(const struct tg_config *cfg,
                                               struct tg_certstore *store, char *err, size_t errlen,
                                               struct tg_config_mark *where);

/* Makes the snapshot's certificates the configuration's certificates in
 * its store (tg_certstore_set_config); certificates put at run time stay.
 * Returns 0, or -1 on allocation failure (the store is unchanged). Main
 * thread, when the snapshot is installed. */
int tg_tls_server_publish(struct tg_tls_server *s);

/* The store SNI consults (borrowed; as long as `s`). */
struct tg_certstore *tg_tls_server_store(const struct tg_tls_server *s);

/* Drops the owner's reference. Every SSL made by tg_tls_server_accept holds
 * one too, so connections still open on an old snapshot keep working after
 * a reload frees it; the memory goes with the last SSL_free. Any thread. */
void tg_tls_server_free(struct tg_tls_server *s);

/* A new server-side SSL for an accepted connection on listener `l` (an
 * element of the cfg->listeners the server was built from), set to `fd`,
 * in accept state, with TG_TLS_SERVER_MODES (an idle connection holds no
 * record buffers: about 13 KiB of OpenSSL state remain). At its
 * ClientHello it takes the store's current snapshot, keeps it until
 * SSL_free, and installs the certificates SNI picks there (the default
 * ones for no or an unknown name; no certificate at all: the handshake
 * fails). The caller owns the SSL (tg_tls_shutdown, then SSL_free). NULL on
 * allocation failure, or when `l` has a client CA this server has no
 * context for (never a context that skips client certificates). Any
 * worker thread. */
SSL *tg_tls_server_accept(struct tg_tls_server *s, const struct tg_config_listen *l, int fd);

/* After the handshake: does the certificate that SNI chose cover `host`
 * (exact or wildcard SAN, port ignored, case-insensitive; an IP address
 * against IP SANs)? On a resumed session, where the server no longer knows
 * which of the name's RSA/ECDSA certificates the client saw, every one of
 * them must cover `host`. Used to answer 421 when a client reuses a
 * connection for a name the certificate does not cover. False for client
 * SSLs. The connection's worker thread. */
bool tg_tls_cert_covers(SSL *ssl, struct tg_str host);

/* Whether the certificate this server connection presented is
 * self-issued (issuer == subject, as `make certs` writes): one no browser
 * trusts without an exception, so HSTS would pin a name to an error page.
 * On a resumed session (the certificate was chosen in an earlier
 * handshake) true if any candidate for the name is. False for client SSLs
 * and before the ClientHello. The connection's worker thread. */
bool tg_tls_cert_self_signed(SSL *ssl);

/* After the handshake, for logs and headers. Strings are static or owned
 * by `ssl`. */
struct tg_tls_info {
    const char *version; /* "TLSv1.3" */
    const char *cipher;  /* "TLS_AES_128_GCM_SHA256" */
    const char *sni;     /* NULL when the client sent none */
    bool resumed;
};
void tg_tls_info(SSL *ssl, struct tg_tls_info *out);

/* The verified client certificate's subject as an RFC 2253 string written
 * to out (NUL-terminated; control and non-ASCII bytes escaped, so it is
 * safe in a header); returns its length, or 0 (and "") when the client sent
 * no certificate, it did not verify, or the subject does not fit in `cap`
 * (never truncated: a prefix could name someone else). */
size_t tg_tls_client_subject(SSL *ssl, char *out, size_t cap);

/* Process-wide set-up of the server side (SSL ex-data slots); called by
 * tg_tls_global_init. 0 or -1. */
int tg_tls_server_global_init(void);
void tg_tls_server_global_cleanup(void);

/* Asked (on the worker, in the handshake) about a name no certificate
 * serves: 1 = one is being obtained, suspend the handshake (it is resumed
 * with tg_tls_handshake, which returns 2 meanwhile); 0 = serve the default
 * certificate; -1 = refuse the handshake (unrecognized_name alert), for a
 * name on-demand issuance will not cover. Set once, before the workers start (ACME on demand). */
typedef int (*tg_tls_unknown_name_fn)(const char *name, size_t n);
void tg_tls_server_on_unknown_name(tg_tls_unknown_name_fn hook);

#endif
