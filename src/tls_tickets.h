/* Session ticket keys, shared by every worker, context and snapshot.
 *
 * One process-wide ring of keys kept in an mlock'ed page left out of core
 * dumps, never written anywhere: a key encrypts for one rotation period
 * (the ticket_key_rotation of the snapshot whose context handles the
 * handshake, so a reload changes it) and decrypts for two periods more;
 * tickets it decrypts are renewed. Tickets survive reloads. */
#ifndef TG_TLS_TICKETS_H
#define TG_TLS_TICKETS_H

#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>

/* Creates the ring with a first key. A second call does nothing. Main
 * thread, before any server context is built. Returns 0 or -1. */
int tg_tls_tickets_init(void);
/* Wipes the keys. Main thread, after every context and SSL is freed. */
void tg_tls_tickets_cleanup(void);

/* The body of an OpenSSL ticket key callback
 * (SSL_CTX_set_tlsext_ticket_key_evp_cb), with the rotation period of the
 * context that runs it: encrypts with the newest key (rotating first once
 * it is `period_ms` old), decrypts with the key the ticket names while it
 * is younger than three periods. Returns what OpenSSL expects: 1 (use), 2
 * (use and renew: an older key, or any TLS 1.3 resumption, whose tickets
 * are single-use), 0 (no ticket / full handshake), -1 (error). The
 * connection's worker thread. */
int tg_tls_tickets_key(SSL *ssl, unsigned char name[16],
                       unsigned char iv[EVP_MAX_IV_LENGTH], EVP_CIPHER_CTX *cctx,
                       EVP_MAC_CTX *hctx, int enc, int64_t period_ms);

/* Tests: the ring's clock (monotonic milliseconds), to age keys without
 * waiting. Call before tg_tls_tickets_init; NULL restores the real one. */
void tg_tls_tickets_set_clock(int64_t (*now_ms)(void));

#endif
