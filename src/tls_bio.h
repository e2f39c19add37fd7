/* The socket BIO that TLS connections read and write through. */
#ifndef TG_TLS_BIO_H
#define TG_TLS_BIO_H

#include <stdbool.h>

#include <openssl/ssl.h>

/* Creates the BIO method (once per process, before any connection). */
int tg_tls_bio_init(void);
void tg_tls_bio_cleanup(void);

/* Makes `fd` both ends of `ssl` (SSL_set_fd's job; the descriptor stays
 * the caller's to close). False when out of memory. */
bool tg_tls_bio_attach(SSL *ssl, int fd);

#endif
