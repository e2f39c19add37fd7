/* The HTTP/1.x front end: request heads parsed from the connection's
 * input, one request at a time (pipelined ones wait in the buffer), each
 * handed to the pipeline as a protocol-neutral request whose client stream
 * this module implements: response heads serialised as HTTP/1.1 text
 * (Content-Length, chunked, or close-delimited for HTTP/1.0; interim
 * responses for 1.1 clients only; Connection fields), the request body
 * framed and de-chunked in place, the Upgrade tunnel, keep-alive, bad-head
 * answers (400, 408, 414, 431, 505) and the discard-or-linger of a body
 * nobody read. */
#ifndef TG_H1_H
#define TG_H1_H

struct tg_conn;

/* The connection speaks HTTP/1.x from now on (after accept, the PROXY
 * header and the TLS handshake). */
void tg_h1_start(struct tg_conn *c);

#endif
