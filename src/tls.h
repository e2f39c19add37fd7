/* TLS with OpenSSL 3, as the rest of the gateway sees it: this header
 * brings in the server side (tls_server.h: contexts per config snapshot,
 * SNI over the certificate store, client certificates), the client side
 * (tls_client.h: upstream TLS) and the ticket key ring (tls_tickets.h),
 * and declares what both sides share: process set-up, handshakes and
 * shutdown. Handshakes are non-blocking and driven by the caller's event
 * loop; tls_bio.c moves the records. */
#ifndef TG_TLS_H
#define TG_TLS_H

#include <stdbool.h>

#include <openssl/ssl.h>

#include "tls_client.h"
#include "tls_server.h"
#include "tls_tickets.h"

/* Initialises OpenSSL, the socket BIO, the ticket key ring (random keys in
 * an mlock'ed page left out of core dumps, never written anywhere; see
 * tls_tickets.h) and the server and client sides. Call once from main
 * before any context is built (a second call does nothing). Returns 0 or
 * -1. */
int tg_tls_global_init(void);
/* Wipes the keys. Main thread, after every context and SSL is freed. */
void tg_tls_global_cleanup(void);

/* Handshake progress, server or client side: 1 done, 0 in progress
 * (*want_write says whether to wait for EV_WRITE rather than EV_READ), 2
 * suspended until a certificate is obtained (call again when told), -1
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

#endif
