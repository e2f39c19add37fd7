/* Session ticket keys, shared by every worker, context and snapshot, and
 * optionally by a fleet of gateways.
 *
 * One process-wide ring of keys kept in an mlock'ed page left out of core
 * dumps, never written anywhere: a key encrypts for one rotation period
 * (the ticket_key_rotation of the snapshot whose context handles the
 * handshake, so a reload changes it) and decrypts for two periods more;
 * tickets it decrypts are renewed. Tickets survive reloads.
 *
 * Gateways behind one load balancer resume each other's sessions with
 * keys numbered by epoch (wall-clock ms / rotation period), derived from a
 * 32-byte material per epoch: from a secret file every gateway holds
 * (tls.ticket_key_file: the material is derived, so nobody talks to
 * anybody), or from what ticket_share.c agrees on in Redis. A shared key
 * encrypts during its epoch and decrypts from the epoch before it (clock
 * skew) to two epochs after; without the current epoch's material the
 * local ring encrypts, as it does with no shared source. */
#ifndef TG_TLS_TICKETS_H
#define TG_TLS_TICKETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>

/* Creates the ring with a first key. A second call does nothing. Main
 * thread, before any server context is built. Returns 0 or -1. */
int tg_tls_tickets_init(void);
/* Wipes the keys. Main thread, after every context and SSL is freed. */
void tg_tls_tickets_cleanup(void);

/* The bytes a shared epoch's keys are derived from. */
#define TG_TLS_TICKETS_MATERIAL 32

/* A secret read from tls.ticket_key_file: HKDF-SHA256 turns it into one
 * material per epoch, the same in every process that reads the same bytes.
 * Kept in an mlock'ed page left out of core dumps; reference-counted and
 * immutable, so any thread may use it. */
struct tg_tls_ticket_secret;

/* Reads `path`: a regular file of 32 to 4096 bytes (raw, used as they
 * are) that neither group nor others may read or write. Returns the
 * secret with one reference, or NULL with a message naming the file in
 * `err`. Any thread (config build: main). */
struct tg_tls_ticket_secret *tg_tls_tickets_secret_read(const char *path, char *err, size_t errlen);
/* Adds a reference; returns `s`. Any thread. */
struct tg_tls_ticket_secret *tg_tls_tickets_secret_ref(struct tg_tls_ticket_secret *s);
/* Drops a reference; the last wipes and unmaps it. NULL is a no-op. Any
 * thread. */
void tg_tls_tickets_secret_unref(struct tg_tls_ticket_secret *s);

/* The body of an OpenSSL ticket key callback
 * (SSL_CTX_set_tlsext_ticket_key_evp_cb), with the rotation period and the
 * secret (NULL: none) of the context that runs it. To encrypt it uses the
 * current epoch's shared key when one is known (from `secret`, else from
 * Redis material given to tg_tls_tickets_share_put), else the newest key
 * of the local ring (rotating first once it is `period_ms` old). To
 * decrypt, a ticket named by the shared key of epoch e is accepted while
 * the current epoch is e - 1 (the issuer's clock was ahead) to e + 2, if
 * that key derives from the same source here (a check in the name); any
 * other name is looked up in the ring, whose keys decrypt while younger
 * than three periods. Returns what
 * OpenSSL expects: 1 (use), 2 (use and renew: an older key or epoch, or
 * any TLS 1.3 resumption, whose tickets are single-use), 0 (no ticket /
 * full handshake), -1 (error). The connection's worker thread. */
int tg_tls_tickets_key(SSL *ssl, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                       EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc, int64_t period_ms,
                       const struct tg_tls_ticket_secret *secret);

/* The current epoch for a rotation period: wall-clock ms / period_ms (the
 * injected clock in tests). Any thread. */
int64_t tg_tls_tickets_epoch(int64_t period_ms);

/* Redis mode (ticket_share.c): the material all gateways agreed on for
 * `epoch`, copied. Replaces a different material known for that epoch
 * (Redis is the authority) and forgets derived keys made from it. Keeps
 * the few latest epochs. Returns 1 if it was new or changed, 0 if already
 * known, -1 before tg_tls_tickets_init. Any thread. */
int tg_tls_tickets_share_put(int64_t epoch, const unsigned char material[TG_TLS_TICKETS_MATERIAL]);
/* Copies the material known for `epoch` into `out`; false if none. Any
 * thread. */
bool tg_tls_tickets_share_get(int64_t epoch, unsigned char out[TG_TLS_TICKETS_MATERIAL]);
/* Forgets every Redis material and the keys derived from them: tickets
 * are encrypted with the local ring again. Any thread. */
void tg_tls_tickets_share_clear(void);

/* Tests: the ring's clock, to age keys and step through epochs without
 * waiting. It stands for both the monotonic clock that ages ring keys and
 * the wall clock that numbers epochs (milliseconds). Call before
 * tg_tls_tickets_init; NULL restores the real ones. */
void tg_tls_tickets_set_clock(int64_t (*now_ms)(void));

#endif
