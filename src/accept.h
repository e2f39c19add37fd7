/* A new client connection, from accept to its first protocol byte: the
 * per-client and PROXY protocol checks, the PROXY header, the TLS
 * handshake, then the front end the connection speaks (ALPN: HTTP/1.1
 * today; HTTP/2 plugs in here). */
#ifndef TG_ACCEPT_H
#define TG_ACCEPT_H

#include <sys/socket.h>

struct tg_context;
struct tg_config_listen;

/* Takes over an accepted socket. Returns 0, or -1 (the fd is closed). */
int tg_accept(struct tg_context *ctx, int fd, const struct sockaddr *peer,
              const struct tg_config_listen *lcfg);

/* A certificate was obtained (or an order ended): handshakes of this
 * worker that wait for one try again. Worker thread. */
void tg_accept_cert_ready(struct tg_context *ctx);

#endif
