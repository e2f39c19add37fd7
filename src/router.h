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
 * holds a raw control byte, space, '\' or '#'. out must have room for n
 * bytes (the result is never longer than the input). */
ssize_t tg_router_normalize_path(const char *in, size_t n, char *out, size_t cap);

/* ---- host index --------------------------------------------------------- */

/* Maps host patterns to caller values (sites). Patterns:
 *   "app.test"             exact (case-insensitive)
 *   "*.app.test"           any name with at least one more label in front
 *   "{tenant}.app.test"    one label in front, captured (the name inside the
 *                          braces is the caller's business)
 *   "*"                    anything not matched otherwise
 * Precedence: exact, then the longest wildcard or capture suffix, then "*".
 * A pattern may appear once per index. */
struct tg_host_index;

struct tg_host_index *tg_router_hosts_new(void);
void tg_router_hosts_free(struct tg_host_index *ix);

/* Adds a pattern. Returns 0, or -1 with a message in err (malformed pattern,
 * duplicate, allocation failure). Not thread-safe: build before sharing. */
int tg_router_hosts_add(struct tg_host_index *ix, const char *pattern,
                        void *value, char *err, size_t errlen);

/* Finds the value for a Host header value. The port (":8080") and one
 * trailing dot are ignored, case is ignored. For a capture pattern,
 * `*capture` is set to the captured label (a view into `host`); otherwise
 * capture->p is NULL. Returns NULL when nothing matches. Lookups cost
 * O(number of labels) hash probes. Thread-safe. */
void *tg_router_hosts_match(const struct tg_host_index *ix, struct tg_str host,
                            struct tg_str *capture);

/* True if `label` is a valid DNS label for a tenant id: 1-63 bytes of
 * [a-z0-9-] (ASCII letters of either case), not starting or ending with '-'. */
bool tg_router_valid_label(struct tg_str label);

/* Splits "host:port" / "[v6]:port" / "host" into the host part. Returns
 * false if the value is malformed (empty, bad port, unbalanced brackets). */
bool tg_router_host_without_port(struct tg_str hostport, struct tg_str *host);

#endif
