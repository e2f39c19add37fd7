/* HTTP semantics shared by every protocol (RFC 9110): method ids, reason
 * phrases, which methods are idempotent, header fields and header vectors.
 * Nothing here knows about HTTP/1.1 framing or HTTP/2 frames: a request or
 * response described with these types can come from, or go to, either. */
#ifndef TG_HTTP_H
#define TG_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "str.h"

enum tg_http_method {
    TG_HTTP_OTHER = 0, /* any other token: forwarded as is */
    TG_HTTP_GET,
    TG_HTTP_HEAD,
    TG_HTTP_POST,
    TG_HTTP_PUT,
    TG_HTTP_DELETE,
    TG_HTTP_OPTIONS,
    TG_HTTP_PATCH,
    TG_HTTP_CONNECT,
    TG_HTTP_TRACE,
};

/* One header field: views into memory its owner keeps (a parse buffer, a
 * request's arena, the configuration). */
struct tg_http_header {
    struct tg_str name;  /* token, as sent (case preserved) */
    struct tg_str value; /* leading and trailing OWS removed */
};

/* A list of header fields in order, sized to need. `v` is owned by whoever
 * made the vector (usually a request's arena). */
struct tg_http_headers {
    struct tg_http_header *v;
    size_t n, cap;
};

/* Returns the method id of a method token (TG_HTTP_OTHER if unknown). */
enum tg_http_method tg_http_method_id(struct tg_str method);

/* True for the methods RFC 9110 calls idempotent (GET, HEAD, PUT, DELETE,
 * OPTIONS, TRACE): those a proxy may retry on another server. */
bool tg_http_method_idempotent(enum tg_http_method m);

/* The standard reason phrase for a status code ("OK", "Not Found"), or
 * "Unknown" for codes it does not know. */
const char *tg_http_reason(int status);

/* Case-insensitive name comparison against a lower-case name; inline so a
 * literal's length is known at compile time and names of another length
 * cost one comparison. */
static inline bool tg_http_name_eq(struct tg_str name, const char *lower)
{
    size_t n = __builtin_strlen(lower);
    if (name.n != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (tg_ascii_lower(name.p[i]) != lower[i])
            return false;
    return true;
}

/* The first field named `lower` (a lower-case name), or NULL. */
const struct tg_http_header *tg_http_find(const struct tg_http_headers *h, const char *lower);

#endif
