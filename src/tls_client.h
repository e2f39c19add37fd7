/* TLS client side: one context per upstream with `tls: true`, certificate
 * and name verification, and session resumption per server.
 *
 * A context is immutable once built (its session cache is locked) and
 * shared by every worker; an SSL belongs to the worker that owns the
 * upstream connection. */
#ifndef TG_TLS_CLIENT_H
#define TG_TLS_CLIENT_H

#include <openssl/ssl.h>

struct tg_config_upstream;
struct tg_config_mark;

/* The modes of every client-side SSL (as the server side's). */
#define TG_TLS_CLIENT_MODES \
    (SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)

struct tg_tls_client;

/* Builds a client context for an upstream with `tls: true`: verification
 * on unless tls_verify is false (a warning is logged), trust store =
 * tls_ca or the system store, TLS 1.2+, ALPN http/1.1. NULL with err/where
 * (the upstream's mark) on error (unreadable CA file, no certificate in
 * it). Requires tg_tls_global_init. Main thread. tg_tls_client_free drops
 * the owner's reference; each SSL from tg_tls_client_connect holds one
 * until SSL_free, so pooled connections may outlive the snapshot. */
struct tg_tls_client *tg_tls_client_new(const struct tg_config_upstream *u, char *err,
                                        size_t errlen, struct tg_config_mark *where);
void tg_tls_client_free(struct tg_tls_client *c);

/* A client SSL for a connected socket: SNI and hostname verification use
 * tls_server_name, else `host` (the server's address text without port;
 * an IP address is checked against IP SANs and sends no SNI). Reuses the
 * session cached under `host` when there is one. The caller owns the SSL
 * (drive it with tg_tls_handshake; tg_tls_shutdown, then SSL_free). NULL
 * on allocation failure. Any worker thread. */
SSL *tg_tls_client_connect(struct tg_tls_client *c, int fd, const char *host);

/* After a successful client handshake: remember its session for the next
 * connection to the same server (resumption). TLS 1.3 sessions arrive
 * later, with the first reads, and are remembered then without a call.
 * Worker thread. */
void tg_tls_client_save_session(struct tg_tls_client *c, SSL *ssl);

/* Process-wide set-up of the client side (SSL ex-data slot); called by
 * tg_tls_global_init. 0 or -1. */
int tg_tls_client_global_init(void);
void tg_tls_client_global_cleanup(void);

#endif
