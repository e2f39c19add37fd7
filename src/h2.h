/* The HTTP/2 front end (RFC 9113), on libnghttp2: one session per client
 * connection on the worker's loop, fed from the connection's input buffer
 * and written through its TLS or plain stream. Each stream is a request
 * through the same pipeline as HTTP/1.1 (its client stream is implemented
 * here): HEADERS become a protocol-neutral request, DATA its body (the
 * stream's window opens only as the body is taken upstream), the response
 * head goes out as HEADERS and the body as DATA as the client's windows
 * allow. WebSocket rides on extended CONNECT (RFC 8441), bridged to an
 * HTTP/1.1 Upgrade toward the backend.
 *
 * Defences: stream and header-list limits, HPACK bombs (header bytes
 * counted as decoded), Rapid Reset (client resets counted per second),
 * CONTINUATION, PING, SETTINGS, PRIORITY, WINDOW_UPDATE and empty-DATA
 * floods (control frames counted per second), idle and stalled
 * connections (timeouts): an abuser gets GOAWAY ENHANCE_YOUR_CALM. */
#ifndef TG_H2_H
#define TG_H2_H

#include <stdbool.h>

struct tg_conn;

/* The connection speaks HTTP/2 from now on (ALPN chose h2, or an h2c
 * listener saw the client preface). Bytes already read (the preface, maybe
 * more) are in c->in. */
void tg_h2_start(struct tg_conn *c);

/* The first bytes of an HTTP/2 client preface, as an h2c listener sees
 * them (24 bytes). */
#define TG_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define TG_H2_PREFACE_LEN 24

#endif
