/* HTTP/1.1 message heads and chunked bodies (RFC 9112), parsed strictly.
 *
 * Pure: no I/O, no allocation, no global state. The parsers read a buffer
 * that the caller owns and return views (struct tg_str) into it, valid as
 * long as the caller keeps those bytes in place. They are resumable: the
 * caller feeds the whole buffer again after more bytes arrive, together with
 * a `scanned` cursor that lets the parser skip what it already validated.
 *
 * Anything ambiguous is an error, never a guess: that is what keeps the
 * gateway and the backend from disagreeing about where a message ends. */
#ifndef TG_HTTP1_H
#define TG_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "http.h"
#include "str.h"

/* Upper bound on the header count a caller can ask for. */
#define TG_HTTP1_MAX_HEADERS 256

/* How a message body is delimited. */
enum tg_http1_framing {
    TG_HTTP1_BODY_NONE = 0, /* no body (or Content-Length: 0) */
    TG_HTTP1_BODY_LENGTH,   /* Content-Length bytes follow */
    TG_HTTP1_BODY_CHUNKED,  /* Transfer-Encoding: chunked */
    TG_HTTP1_BODY_CLOSE,    /* responses only: read until the peer closes */
};

/* Private: where the head scanner stopped, so that a re-call resumes there
 * instead of revalidating. It belongs to one buffer: the parser checks
 * `buf` and `pos` against the call and otherwise starts over from byte 0, so
 * a caller that does not keep the struct between calls is only slower. */
struct tg_http1_scan {
    const char *buf;   /* buffer this state describes; NULL: none */
    size_t pos;        /* bytes validated; equals *scanned while valid */
    size_t line_start; /* start of the field line being scanned */
    size_t mark1;      /* request: end of method; status: reason; field: ':' */
    size_t mark2;      /* request: end of target */
    int state;
};

/* A NULL limits pointer means 8 KiB request line, 32 KiB head, 100 fields.
 * max_headers is clamped to TG_HTTP1_MAX_HEADERS. */
struct tg_http1_limits {
    size_t max_request_line; /* bytes, request line incl. CRLF: over it 414 */
    size_t max_head;         /* bytes, whole head: over it 431 (502 for responses) */
    size_t max_headers;      /* header lines: over it 431; <= TG_HTTP1_MAX_HEADERS */
};

/* Result of parsing a request head. Every view points into the buffer given
 * to tg_http1_parse_request. */
struct tg_http1_request {
    enum tg_http_method method_id;
    struct tg_str method;
    struct tg_str target;    /* the request-target exactly as sent */
    struct tg_str path;      /* origin-form path (absolute-form: the path part,
                                or a static "/" when the target has none;
                                asterisk-form: "*"; authority-form (CONNECT):
                                the authority); never empty */
    struct tg_str query;     /* after '?', without it; p == NULL when absent */
    struct tg_str authority; /* absolute-form host[:port]; p == NULL otherwise */
    int minor_version;       /* 0 for HTTP/1.0, 1 for HTTP/1.1 */

    struct tg_http_header headers[TG_HTTP1_MAX_HEADERS];
    size_t nheaders;

    /* Derived from the headers while parsing. */
    struct tg_str host;            /* Host value (or authority); p == NULL if none.
                                         Always a valid authority: reg-name,
                                         IPv4 or [IPv6], optional :port */
    enum tg_http1_framing framing; /* NONE, LENGTH or CHUNKED */
    uint64_t content_length;       /* when framing == LENGTH */
    bool keep_alive;               /* version default adjusted by Connection */
    bool upgrade;                  /* Connection: upgrade + an Upgrade header
                                         (HTTP/1.1 only: 1.0 ignores Upgrade) */
    bool upgrade_websocket;        /* ... and Upgrade names websocket */
    size_t head_len;               /* bytes of the head, incl. the final CRLF */

    struct tg_http1_scan scan; /* private */
};

struct tg_http1_response {
    int status;           /* 100..999 */
    struct tg_str reason; /* may be empty ("HTTP/1.1 200\r\n" is accepted) */
    int minor_version;

    struct tg_http_header headers[TG_HTTP1_MAX_HEADERS];
    size_t nheaders;

    enum tg_http1_framing framing; /* given the request method (see below) */
    uint64_t content_length;
    bool keep_alive;        /* the backend is willing to reuse the connection */
    bool upgrade_websocket; /* 101 with Upgrade: websocket */
    size_t head_len;

    struct tg_http1_scan scan; /* private */
};

/* Parse result codes: a positive value is the head length. */
enum {
    TG_HTTP1_INCOMPLETE = 0, /* need more bytes */
    TG_HTTP1_ERROR = -1,     /* see *status and *reason */
};

/* Parses the request head at buf[0..len).
 *
 * `*scanned` must be 0 for a new message and is advanced to where the next
 * call may resume validation; pass the same variable back with the same
 * buffer start plus more bytes. Keep passing the same `req` too: it holds
 * the resume state (see struct tg_http1_scan); the views it holds are only
 * meaningful once the head is complete. Returns the head length (> 0) once
 * the empty line is seen, TG_HTTP1_INCOMPLETE if more bytes are needed (and
 * the limits are not yet exceeded), or TG_HTTP1_ERROR with `*status` set to
 * the answer the client should get (400, 414, 431, 505) and `*reason` to a
 * short static English phrase for the error log. Errors are reported as
 * soon as the offending byte arrives (a bare LF does not wait for the end
 * of the head), and the limits as soon as they are exceeded; the result
 * never depends on how the bytes were split. A line ending in a bare LF or a
 * bare CR, obs-fold, NUL/CTL in a field, whitespace before a colon,
 * Transfer-Encoding other than exactly one "chunked" (or on HTTP/1.0),
 * Transfer-Encoding with Content-Length, duplicate (even identical) or
 * malformed Content-Length, Content-Length or Transfer-Encoding spelt with
 * '_' for '-' (CGI-style backends fold the two), more than one Host, a
 * missing Host on HTTP/1.1, a Host that is not a valid authority (an empty
 * one included), an absolute-form target whose authority differs from Host,
 * a scheme other than http/https, "*" other than for OPTIONS, CONNECT
 * without authority-form host:port, and empty lines before the request line
 * are all 400. Only HTTP/1.0 and HTTP/1.1 are accepted (505 otherwise).
 * CONNECT is parsed (path = authority) for the caller to refuse.
 * Thread-safe; no allocation. */
ssize_t tg_http1_parse_request(const char *buf, size_t len, size_t *scanned,
                               const struct tg_http1_limits *limits, struct tg_http1_request *req,
                               int *status, const char **reason);

/* Parses a response head from a backend, the same way. `request_method`
 * decides the framing: HEAD, 1xx, 204 and 304 have no body; a 2xx answer to
 * CONNECT is refused. A response with neither Content-Length nor chunked is
 * TG_HTTP1_BODY_CLOSE (and keep_alive false). Transfer-Encoding must end
 * in "chunked" and name it once, else error (no close-delimited fallback).
 * The status line is bounded by limits->max_request_line. Errors (including
 * any ambiguity in framing, a bare CR or LF, CR/LF/NUL in values, an
 * over-large head) return TG_HTTP1_ERROR: the gateway answers 502. */
ssize_t tg_http1_parse_response(const char *buf, size_t len, size_t *scanned,
                                const struct tg_http1_limits *limits,
                                enum tg_http_method request_method, struct tg_http1_response *resp,
                                const char **reason);

/* Incremental decoder of a chunked body, used to find where the body ends
 * (so the bytes can be forwarded verbatim) or to extract the data bytes
 * (when the receiver cannot take chunked). Chunk sizes are at most 16 hex
 * digits and must fit in 63 bits; chunk extensions must be well-formed
 * `;token[=token|quoted-string]` with no whitespace, and the whole
 * size line is at most 4096 bytes; the trailer fields (not counting the
 * final empty line) are bounded by `max_trailer` bytes and well-formed. */
struct tg_http1_chunked {
    int state;          /* private */
    uint64_t remaining; /* private: data bytes left in the current chunk */
    size_t line_len;    /* private: bytes of the current size/ext/trailer line */
    size_t trailer_len; /* private: bytes of trailer section so far */
    size_t max_trailer; /* set by tg_http1_chunked_init */
    bool done;          /* the last chunk and trailers have been consumed */
};

void tg_http1_chunked_init(struct tg_http1_chunked *c, size_t max_trailer);

/* Consumes a prefix of p[0..n) and returns its length (>= 0), or -1 when the
 * input is not valid chunked coding. Each call consumes either only framing
 * (sizes, extensions, CRLFs, trailers), leaving `*data_len` 0, or only data
 * bytes, setting `*data_len` to the returned length. It never reads past the
 * end of the body: once `c->done` is set it returns 0 and the bytes after
 * are the next message. Returns 0 with done == false only when n == 0. */
ssize_t tg_http1_chunked_next(struct tg_http1_chunked *c, const char *p, size_t n,
                              size_t *data_len);

/* True when the bytes consumed so far end exactly between two chunks (or
 * before the first): a chunk of our own may be inserted here without
 * breaking the framing. False inside a chunk, its CRLF, or the trailers. */
bool tg_http1_chunked_at_boundary(const struct tg_http1_chunked *c);

/* True if the comma-separated header value lists `token` (case-insensitive,
 * OWS around elements ignored), e.g. Connection: keep-alive, Upgrade. */
bool tg_http1_list_has(struct tg_str value, const char *token);

#endif
