/* Header rewriting: the request head sent upstream (hop-by-hop headers out,
 * X-Forwarded-*, X-Request-Id in) and the response head sent to the client
 * (hop-by-hop out, framing and connection headers set by us).
 *
 * Each head is rebuilt once, in one pass over the parsed header views, into
 * a buffer that is then written with the first body bytes in one writev.
 * Values were validated by the parser (no CR, LF or NUL), so nothing copied
 * here can split a header. */
#ifndef TG_HEADERS_H
#define TG_HEADERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "str.h"

struct tg_buf;
struct tg_request;

/* Appends the upstream request head for `req` (whose head views are still
 * valid) to `b`. Returns 0, or -1 if `b` is too small. */
int tg_headers_build_request(struct tg_request *req, struct tg_buf *b);

/* Appends the client response head for req->resp to `b`. Returns 0, or -1
 * if `b` is too small. */
int tg_headers_build_response(struct tg_request *req, struct tg_buf *b);

/* Appends an interim (1xx) response head, forwarded as the backend sent it
 * minus hop-by-hop headers. */
int tg_headers_build_interim(struct tg_request *req, struct tg_buf *b);

/* Appends a complete local answer: status line, our headers, a short
 * text/plain (or given type) body. `close` adds Connection: close. */
int tg_headers_build_local(struct tg_request *req, struct tg_buf *b, int status,
                           const char *content_type, const char *body,
                           size_t body_len, bool close);

/* Fills `out` (at least 33 bytes) with a new request id: 32 hex digits,
 * unique per process run, NUL-terminated; returns its length. Worker thread
 * (per-thread generator state). */
size_t tg_headers_new_request_id(char *out);

/* True if a client-sent X-Request-Id is acceptable to keep: 1..64 bytes of
 * [A-Za-z0-9._:-]. */
bool tg_headers_valid_request_id(struct tg_str v);

#endif
