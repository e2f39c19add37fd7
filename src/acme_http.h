/* The ACME client's HTTP: one HTTPS (or, for tests and `ask` endpoints on
 * loopback, HTTP) request at a time, blocking with a deadline, on the ACME
 * thread only: never on a worker's loop. A new connection per request
 * (the CA is asked a few times a day), TLS verified against the
 * configured bundle or the system's. */
#ifndef TG_ACME_HTTP_H
#define TG_ACME_HTTP_H

#include <stddef.h>

#include <openssl/ssl.h>

struct tg_acme_response {
    int status; /* 0 when no answer came (see `error`) */
    char *body; /* malloc'd, NUL-terminated (may be empty) */
    size_t body_len;
    char location[1024]; /* headers ACME reads, "" when absent */
    char nonce[256];     /* Replay-Nonce */
    char content_type[128];
    long retry_after; /* seconds, -1 when absent */
    char error[512];  /* why nothing came back */
};

/* An SSL_CTX that verifies servers against `ca_bundle` (a PEM file), or
 * the system's roots when NULL. NULL with a message in err. */
SSL_CTX *tg_acme_http_ctx(const char *ca_bundle, char *err, size_t errlen);

/* Sends METHOD url with `body` (content type `type`, may be NULL) and
 * waits at most `timeout_ms` for the whole answer (bodies up to 1 MiB).
 * Returns 0 with *r filled (any HTTP status), or -1 with r->error. Free
 * the body with tg_acme_response_free. */
int tg_acme_http(SSL_CTX *ctx, const char *method, const char *url, const char *type,
                 const char *body, size_t len, long timeout_ms, struct tg_acme_response *r);

void tg_acme_response_free(struct tg_acme_response *r);

#endif
