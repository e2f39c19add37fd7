/* The upstream client: one request forwarded to an HTTP/1.1 backend.
 *
 * It picks a server (balance and health), takes a pooled keep-alive
 * connection or connects (TLS too), writes the head and streams the request
 * body it pulls from the request's stream (re-framed with Content-Length
 * or chunked), reads and checks the response head, hands the rewritten head
 * to the stream and streams the body as it arrives (de-chunked: the front
 * end frames it for its protocol), forwards 1xx, injects SSE heartbeats and
 * the drain hint at event boundaries, and after a 101 becomes a byte
 * tunnel. Nothing is buffered whole: one buffer per direction, reading
 * paused while the other side cannot take more. It keeps the request's
 * timeouts while it owns it (connect, send, read, body, minimum body rate,
 * heartbeat, idle stream).
 *
 * The request core and the stream are all it knows of the client, so the
 * same exchange serves HTTP/1.1 and HTTP/2 clients, `explain`, and the
 * gateway's own outbound calls. Worker thread. */
#ifndef TG_FORWARD_H
#define TG_FORWARD_H

#include <ev.h>

struct tg_request;

/* Builds the request head for the backend (into the request's arena)
 * while the request's header views are still valid; tg_forward_start sends
 * it. Returns 0, or -1 when memory ran out. */
int tg_forward_prepare(struct tg_request *req);

/* Takes the request over (its hooks) and starts the exchange with
 * req->upstream. The request ends through tg_request_end, possibly before
 * this returns. */
void tg_forward_start(struct tg_request *req);

/* The context's upwait_kick watcher: requests queued at an upstream's
 * max_connections try again (upstream.c starts it when a slot frees). */
void tg_forward_upwait_kick(struct ev_loop *loop, ev_prepare *w, int revents);

#endif
