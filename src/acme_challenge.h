/* ACME challenge answers, process-wide: HTTP-01 key authorizations by
 * token (the handler table answers /.well-known/acme-challenge/TOKEN on
 * plain listeners) and TLS-ALPN-01 certificates by name (a TLS listener
 * serves one to a client that offers only "acme-tls/1"). The ACME client
 * puts and removes them (for a fleet, every gateway mirrors them from
 * Redis); workers read them. Any thread; a mutex guards the few entries. */
#ifndef TG_ACME_CHALLENGE_H
#define TG_ACME_CHALLENGE_H

#include <stdbool.h>
#include <stddef.h>

struct tg_cert;

#define TG_ACME_TLS_ALPN "acme-tls/1"
#define TG_ACME_HTTP_PREFIX "/.well-known/acme-challenge/"

/* HTTP-01: the key authorization for `token`, until removed or
 * `expires` (wall-clock seconds). Returns 0 or -1 (no memory). */
int tg_acme_challenge_http_put(const char *token, const char *key_auth, double expires);
/* Copies the key authorization for token[0..n) into out; false if none. */
bool tg_acme_challenge_http_get(const char *token, size_t n, char *out, size_t cap);
void tg_acme_challenge_http_remove(const char *token);

/* TLS-ALPN-01: the self-signed challenge certificate for `name` (a
 * reference is taken). */
int tg_acme_challenge_alpn_put(const char *name, struct tg_cert *cert, double expires);
/* The certificate for name[0..n) with a reference for the caller, or NULL. */
struct tg_cert *tg_acme_challenge_alpn_get(const char *name, size_t n);
void tg_acme_challenge_alpn_remove(const char *name);

/* Drops everything (tests, shutdown). */
void tg_acme_challenge_clear(void);

#endif
