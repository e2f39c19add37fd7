/* TLS with OpenSSL 3: server contexts built per config snapshot (SNI picks
 * among any number of certificates, RSA and ECDSA side by side), session
 * tickets whose keys are shared by all workers and rotated in memory,
 * a session cache, client certificates, and client contexts for upstream
 * TLS. Handshakes are non-blocking and driven by the caller's event loop.
 *
 * Everything built here is immutable once built and safe to use from any
 * worker thread (OpenSSL's SSL_CTX is internally locked); the state of one
 * connection (SSL *) belongs to the worker that owns the connection. */
#ifndef TG_TLS_H
#define TG_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "str.h"

struct tg_config;
struct tg_config_tls;
struct tg_config_listen;
struct tg_config_upstream;
struct tg_config_mark;

/* ---- process-wide ------------------------------------------------------ */

/* Initialises OpenSSL and the ticket key ring (random keys in an mlock'ed
 * page left out of core dumps, never written anywhere). The ring rotates
 * by itself: a key encrypts for tls.ticket_key_rotation (taken from the
 * snapshot whose context handles the handshake, so a reload changes it)
 * and decrypts for two periods more; tickets it decrypts are renewed.
 * Tickets survive reloads. Call once from main before any context is
 * built (a second call does nothing). Returns 0 or -1. */
int tg_tls_global_init(void);
/* Wipes the keys. Main thread, after every context and SSL is freed. */
void tg_tls_global_cleanup(void);

/* ---- server side (one per config snapshot) ------------------------------ */

struct tg_tls_server;

/* Builds the server contexts for a snapshot: loads every certificate in
 * cfg->tls (PEM, chain included), checks that each key matches its
 * certificate, applies protocol/cipher settings (invalid tls.ciphers or
 * tls.ciphersuites entries are errors), and one set of contexts per
 * listener that has a client CA. On error returns NULL with a message in
 * `err` naming the file, and sets `*where` to the config mark of the
 * offending entry (certificate, listener or tls section). Expired,
 * not-yet-valid and soon-expiring certificates are loaded but a warning is
 * logged. The session cache (TLS 1.2 without tickets, TLS 1.3 with
 * session_tickets: false) belongs to this snapshot and starts empty. Reads
 * cfg only during the call, except that tg_tls_server_accept compares
 * listener pointers with cfg->listeners. Main thread. */
struct tg_tls_server *tg_tls_server_new(const struct tg_config *cfg, char *err,
                                        size_t errlen,
                                        struct tg_config_mark *where);
/* Drops the owner's reference. Every SSL made by tg_tls_server_accept holds
 * one too, so connections still open on an old snapshot keep working after
 * a reload frees it; the memory goes with the last SSL_free. Any thread. */
void tg_tls_server_free(struct tg_tls_server *s);

/* A new server-side SSL for an accepted connection on listener `l` (an
 * element of the cfg->listeners the server was built from), set to `fd`,
 * in accept state, with SSL_MODE_RELEASE_BUFFERS (an idle connection holds
 * no record buffers: about 13 KiB of OpenSSL state remain),
 * ENABLE_PARTIAL_WRITE and ACCEPT_MOVING_WRITE_BUFFER. The caller owns the
 * SSL (tg_tls_shutdown, then SSL_free). NULL on allocation failure, or when
 * `l` has a client CA this server has no contexts for (never a context
 * that skips client certificates). Any worker thread. */
SSL *tg_tls_server_accept(struct tg_tls_server *s,
                          const struct tg_config_listen *l, int fd);

/* Handshake progress, server or client side: 1 done, 0 in progress
 * (*want_write says whether to wait for EV_WRITE rather than EV_READ), -1
 * failed with `*reason` set to a short stable token for metrics
 * ("protocol", "no_shared_cipher", "unknown_ca", "bad_cert" (a certificate
 * that is expired, for another name, or otherwise refused),
 * "cert_required", "eof", "syscall", "other"). Clears the thread's OpenSSL
 * error queue. The connection's worker thread. */
int tg_tls_handshake(SSL *ssl, bool *want_write, const char **reason);

/* Call right before SSL_free on every close, server or client side: sends
 * close_notify if the socket takes it at once (never waits for the peer's;
 * one short write at most) and keeps the session resumable. OpenSSL
 * removes from the session cache, and marks unresumable, the session of an
 * SSL freed without it, which would defeat the session cache and upstream
 * resumption. Does nothing after a fatal TLS error or mid-handshake (those
 * sessions should go). The connection's worker thread. */
void tg_tls_shutdown(SSL *ssl);

/* After the handshake: does the certificate that SNI chose cover `host`
 * (exact or wildcard SAN, port ignored, case-insensitive; an IP address
 * against IP SANs)? On a resumed session, where the server no longer knows
 * which of the name's RSA/ECDSA certificates the client saw, every one of
 * them must cover `host`. Used to answer 421 when a client reuses a
 * connection for a name the certificate does not cover. The connection's
 * worker thread. */
bool tg_tls_cert_covers(SSL *ssl, struct tg_str host);

/* After the handshake, for logs and headers. Strings are static or owned
 * by `ssl`. */
struct tg_tls_info {
    const char *version;   /* "TLSv1.3" */
    const char *cipher;    /* "TLS_AES_128_GCM_SHA256" */
    const char *sni;       /* NULL when the client sent none */
    bool resumed;
};
void tg_tls_info(SSL *ssl, struct tg_tls_info *out);

/* The verified client certificate's subject as an RFC 2253 string written
 * to out (NUL-terminated; control and non-ASCII bytes escaped, so it is
 * safe in a header); returns its length, or 0 (and "") when the client sent
 * no certificate, it did not verify, or the subject does not fit in `cap`
 * (never truncated: a prefix could name someone else). */
size_t tg_tls_client_subject(SSL *ssl, char *out, size_t cap);

/* ---- client side (upstream TLS) ------------------------------------------ */

struct tg_tls_client;

/* Builds a client context for an upstream with `tls: true`: verification
 * on unless tls_verify is false (a warning is logged), trust store =
 * tls_ca or the system store, TLS 1.2+, ALPN http/1.1. NULL with err/where
 * (the upstream's mark) on error (unreadable CA file, no certificate in
 * it). Main thread. tg_tls_client_free drops the owner's reference; each
 * SSL from tg_tls_client_connect holds one until SSL_free, so pooled
 * connections may outlive the snapshot. */
struct tg_tls_client *tg_tls_client_new(const struct tg_config_upstream *u,
                                        char *err, size_t errlen,
                                        struct tg_config_mark *where);
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

#endif
