/* Request routing: Host -> site, normalised path -> route.
 *
 * The host index is compiled once per config snapshot and then read-only,
 * so all workers share it. Path normalisation is pure and bounded: it is
 * what makes rules like "/_/ only from private networks" impossible to
 * bypass by encoding the path differently. */
#ifndef TG_ROUTER_H
#define TG_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "str.h"

/* ---- path normalisation ------------------------------------------------ */

/* Normalises the path of an origin-form request target (without the query)
 * into out[0..cap): percent-encoded unreserved characters (ALPHA DIGIT - . _
 * ~) are decoded, other escapes keep their byte but get upper-case hex, dot
 * segments are removed (RFC 3986 5.2.4, never climbing above the root) and
 * runs of '/' are merged. The result always starts with '/'.
 *
 * Returns the length written, or -1 when the path must be refused with 400:
 * it does not start with '/', a '%' is not followed by two hex digits, an
 * escape decodes to '/', '\', NUL or another control byte (%2F, %5C, %00 —
 * they would let "/_%2F" mean "/_/" to one server and not to another), or it
 * holds a raw control byte (DEL included), space, '\', '#' or a byte >= 0x80.
 *
 * Escapes are decoded once: "%252e" stays "%252E", never a dot; "%2e" and
 * ".%2E" are dots and take part in dot-segment removal. A final "." or ".."
 * segment leaves a trailing slash ("/a/b/.." -> "/a/"). The result is a
 * fixed point: normalising it again returns it unchanged.
 *
 * out must have room for n bytes (the result is never longer than the
 * input); -1 if cap < n. out may be the same buffer as in. Pure, no
 * allocation, any thread. */
ssize_t tg_router_normalize_path(const char *in, size_t n, char *out, size_t cap);

/* ---- host index --------------------------------------------------------- */

/* Maps host patterns to caller values (sites). Patterns:
 *   "app.test"             exact (case-insensitive)
 *   "*.app.test"           any name with at least one more label in front
 *   "{tenant}.app.test"    one label in front, captured (the name inside the
 *                          braces is the caller's business)
 *   "*"                    anything not matched otherwise
 * Precedence: exact, then the longest wildcard or capture suffix, then "*".
 * A pattern may appear once per index, and a suffix may carry either "*."
 * or "{...}." but not both ("*.x" with "{t}.x" is a duplicate).
 *
 * Names (the exact name, the suffix after "*." or "{...}.") are 1-253
 * bytes of labels of 1-63 bytes of [A-Za-z0-9-_]; '*' and "{identifier}"
 * only as the whole first label; one trailing dot is ignored. So IPv4
 * literals can be exact patterns, IPv6 literals cannot. */
struct tg_host_index;

/* Returns an empty index, or NULL on allocation failure. Free with
 * tg_router_hosts_free (NULL is fine); the values are not freed. */
struct tg_host_index *tg_router_hosts_new(void);
void tg_router_hosts_free(struct tg_host_index *ix);

/* Adds a pattern (NUL-terminated, copied: the index owns a lower-cased
 * copy) with a non-NULL value (borrowed; the caller keeps it alive as long
 * as the index). Returns 0, or -1 with a message in err, NUL-terminated and
 * cut to errlen (malformed pattern, duplicate, NULL value, allocation
 * failure). Not thread-safe: build before sharing. */
int tg_router_hosts_add(struct tg_host_index *ix, const char *pattern,
                        void *value, char *err, size_t errlen);

/* Finds the value for a Host header value. The port (":8080") and one
 * trailing dot are ignored, case is ignored; nothing is allocated or copied.
 * For a capture pattern, `*capture` is set to the captured label (a view
 * into `host`, in its original case); otherwise capture->p is NULL and
 * capture->n 0.
 *
 * The capture is only known to be 1-63 bytes of [A-Za-z0-9-_]: the CALLER
 * must check it with tg_router_valid_label (and lower-case it if it keys on
 * it) before using it as a tenant id, and answer 404 if it fails. This keeps
 * the index free of tenant policy.
 *
 * Returns NULL when nothing matches, or when tg_router_host_without_port
 * finds the value malformed (a caller that answers 400 for that calls it
 * first). A host that is not a name as
 * described above ("[::1]", "a..b", "a b") can only match "*". Lookups cost
 * O(number of labels) hash probes. Thread-safe. */
void *tg_router_hosts_match(const struct tg_host_index *ix, struct tg_str host,
                            struct tg_str *capture);

/* True if `label` is a valid DNS label for a tenant id: 1-63 bytes of
 * [a-z0-9-] (ASCII letters of either case), not starting or ending with '-'. */
bool tg_router_valid_label(struct tg_str label);

/* Splits "host:port" / "[v6]:port" / "host" into the host part (a view
 * into hostport; brackets included for IPv6). Returns false if the value is
 * malformed: empty host, port not 1-5 digits up to 65535 (an empty port
 * "host:" is refused too), unbalanced brackets, anything but hex digits,
 * ':' and '.' inside brackets (so no zone ids), or a ':' in an unbracketed
 * host. Other characters of the host are not checked here. */
bool tg_router_host_without_port(struct tg_str hostport, struct tg_str *host);

#endif
