/* Automatic HTTPS: an ACME client (RFC 8555) inside the gateway.
 *
 * It runs on a thread of its own with its own loop (its requests to the CA
 * block that thread, never a worker's). It orders a certificate for every
 * host of the sites with `acme` (the default under `tls.acme`) that is not
 * a wildcard and has no configured certificate, and, on demand, for a name
 * a handshake asks for when that name is an active tenant's custom domain
 * or the `ask` URL approves it. Challenges are answered by HTTP-01 (the
 * handler table) or TLS-ALPN-01 (tls_server.c), through acme_challenge.h.
 * Certificates are kept in the state directory (keys 0600, atomic writes),
 * loaded at start, put into the certificate store SNI reads (no reload),
 * and renewed at two thirds of their life with jitter; a CA that fails or
 * answers 429 is retried with back-off while the old certificate serves.
 * With tls.acme.redis, gateways share the account, the certificates,
 * per-name locks and the challenges there, and order each name once. */
#ifndef TG_ACME_H
#define TG_ACME_H

#include <stddef.h>

struct tg_config;
struct tg_certstore;
struct tg_strbuf;

/* Told (from the ACME thread) that a certificate for `name` arrived, or
 * that an on-demand order for it ended without one: handshakes waiting
 * for it go on. */
typedef void (*tg_acme_notify_fn)(const char *name, void *arg);

/* Starts the client for `cfg` (tls.acme enabled), putting certificates
 * into `store`: what is stored (state directory, or a fleet's Redis) is in
 * the store when it returns; the rest is ordered by its thread. Returns 0,
 * or -1 with a message in err. Main thread. */
int tg_acme_start(const struct tg_config *cfg, struct tg_certstore *store, tg_acme_notify_fn notify,
                  void *arg, char *err, size_t errlen);
/* A reloaded configuration: the names to keep, the settings. Main thread. */
void tg_acme_configure(const struct tg_config *cfg);
/* Stops the thread (in-flight orders are abandoned). Main thread. */
void tg_acme_stop(void);

/* The answers of tg_acme_on_demand. */
enum tg_acme_demand {
    TG_ACME_NO = 0, /* nothing to do here: the default certificate answers */
    TG_ACME_WAIT,   /* ordered or being ordered: wait for the notice */
    TG_ACME_REFUSE, /* on demand, but not for this name (not eligible, backing
                        off, capped): the handshake fails (unrecognized_name) */
};

/* A handshake names `name`, which no certificate serves. Never blocks.
 * Any thread. */
enum tg_acme_demand tg_acme_on_demand(const char *name, size_t n);

/* For /status (a JSON array of the certificates it manages) and /metrics
 * (seconds to expiry per certificate, orders by result). Any thread. */
void tg_acme_status_json(struct tg_strbuf *b);
void tg_acme_metrics(struct tg_strbuf *b);

/* For the unit tests: builds a TLS-ALPN-01 certificate (RFC 8737) for
 * `name` and key authorization `key_auth` as PEM (cert and key,
 * malloc'd). Returns 0 or -1. */
int tg_acme_alpn_cert_pem(const char *name, const char *key_auth, char **cert_pem, char **key_pem);

#endif
