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
#include <stdint.h>
#include <sys/types.h>

#include "http.h"
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
int tg_router_hosts_add(struct tg_host_index *ix, const char *pattern, void *value, char *err,
                        size_t errlen);

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

/* True if `hostport` is a Host a site could be written for: a name of
 * labels of [A-Za-z0-9-_] (one trailing dot allowed) or an IPv4 or
 * bracketed IPv6 literal, with an optional port. "a..b" or "" are not. */
bool tg_router_valid_host(struct tg_str hostport);

/* True if `hostport` (a Host value; port and one trailing dot ignored,
 * case too) is a name a public CA could issue a certificate for, and so a
 * name HSTS may pin: at least two labels of [A-Za-z0-9-_], not "localhost"
 * or "*.localhost" (RFC 6761: always this machine), and not an address (a
 * bracketed IPv6 literal, or a last label that starts with a digit: no TLD
 * does, and URL parsers read "127.1" or "0x7f.1" as IPv4). */
bool tg_router_public_name(struct tg_str hostport);

/* Splits "host:port" / "[v6]:port" / "host" into the host part (a view
 * into hostport; brackets included for IPv6). Returns false if the value is
 * malformed: empty host, port not 1-5 digits up to 65535 (an empty port
 * "host:" is refused too), unbalanced brackets, anything but hex digits,
 * ':' and '.' inside brackets (so no zone ids), or a ':' in an unbracketed
 * host. Other characters of the host are not checked here. */
bool tg_router_host_without_port(struct tg_str hostport, struct tg_str *host);

/* ---- route patterns ----------------------------------------------------- */

// A route path as written in the config, compiled once and then matched
// against normalised request paths (no query).
//
//   /api            SEGMENT PREFIX: /api, /api/, /api/x; not /apix
//   /api/           /api/ and /api/x/y; not /api
//   /               every path
//   = /api/health   EXACT: the whole path, nothing below it
//   = /api/         only /api/ (the empty last segment is literal)
//   /api/collections/*/auth-*    '*' = any run (maybe empty) of bytes
//                                other than '/', within one segment
//   /static/*.css   (prefix: also /static/x.css/more)
//   /a/**/b         a segment that is exactly '**' = zero or more whole
//                   segments
//
// Text: an optional '=' (then optional spaces or tabs) makes the pattern
// exact; the rest must start with '/' and is normalised with
// tg_router_normalize_path first, so "%2A" stays a literal "%2A", "%5F" is
// "_", and dot segments are resolved; only a raw '*' is a wildcard. A path
// the normaliser refuses, a raw '?' (paths are matched without their
// query; write %3F), '**' inside a longer segment ("a**", "**b", "***"),
// more than TG_ROUTE_PATTERN_MAX_LEN bytes of text, more than
// TG_ROUTE_PATTERN_MAX_SEGMENTS segments or more than
// TG_ROUTE_PATTERN_MAX_STARS '*' are compile errors.
//
// Segments: the path between '/'s; "/" is one empty segment, "/a/" is
// ["a", ""]. A prefix pattern is the pattern followed by "/**", except that
// one ending in '/' needs one more segment of any content: "/api" is
// [api, **], "/api/" is [api, *, **], "/" is [*, **]. For patterns without
// a wildcard this is exactly the old rule: "path starts with the pattern,
// and either the pattern ends with '/' or the path ends or has a '/' right
// after it".
//
// Case: with ignore_case the pattern's literal bytes are folded
// (tg_router_fold_path) at compile time and the CALLER passes the folded
// path to tg_router_pattern_match; fold once per request and share the
// copy between all ignore_case patterns.
//
// Cost: a pattern without wildcards matches with one memcmp and a boundary
// check; a glob in O(path bytes x pattern bytes) at worst (no exponential
// backtracking), without allocating.
#define TG_ROUTE_PATTERN_MAX_LEN 1024
#define TG_ROUTE_PATTERN_MAX_SEGMENTS 64
#define TG_ROUTE_PATTERN_MAX_STARS 16

/* Immutable after compile: any number of threads may match, compare and
 * read it at once. */
struct tg_route_pattern;

/* Compiles `text` (NUL-terminated, borrowed for the call only; the pattern
 * keeps its own copy). Returns the pattern, owned by the caller (free with
 * tg_router_pattern_free), or NULL on error: then a message is written to
 * err (NUL-terminated, cut to errlen; err may be NULL) and the 0-based byte
 * offset in `text` of the problem to *err_offset (may be NULL); allocation
 * failure reports "out of memory" at offset 0. Any thread. */
struct tg_route_pattern *tg_router_pattern_compile(const char *text, bool ignore_case, char *err,
                                                   size_t errlen, size_t *err_offset);

/* Frees a compiled pattern; NULL is fine. No match may be running on it. */
void tg_router_pattern_free(struct tg_route_pattern *p);

/* True if `path` (n bytes, normalised, without query) matches. When p is
 * ignore_case, `path` must be the output of tg_router_fold_path. Any bytes
 * are safe (a path not starting with '/' never matches). Pure, allocates
 * nothing, any thread. */
bool tg_router_pattern_match(const struct tg_route_pattern *p, const char *path, size_t n);

/* Whether p was compiled with ignore_case (its caller must fold paths). */
bool tg_router_pattern_ignore_case(const struct tg_route_pattern *p);

// True only if every path b matches is also matched by a (each given the
// path as it expects it: folded for an ignore_case pattern). Sound, not
// complete: false means "not shown". It lines a's segments up with b's:
// a's '**' absorbs any run of b's segments, b's '**' can only be absorbed
// by a's '**', and a's other segments must each include b's (a literal, or
// a glob over b's text with b's '*' only absorbed by a's '*'). A pattern
// made only of '*' and '**' segments ("/", "/*/**") is decided exactly, so
// "/" covers everything. Case: when only a is ignore_case, b is compared
// folded, and the answer is false if a fold sequence in a path could be
// split between one of b's '*' and the literal next to it (b's segment
// "*Abc" matches "%E2%84%AAbc", which folds to "kbc"); when only b is,
// true needs b's literals to hold no letter. Meant for config checks
// ("this route is shadowed by an earlier one"): may allocate, says false
// if it cannot. Any thread.
bool tg_router_pattern_covers(const struct tg_route_pattern *a, const struct tg_route_pattern *b);

// The canonical text: "= " for an exact pattern, then the normalised path
// (not folded): "= /api/health", "/api/collections/*/auth-*". Compiling it
// again gives the same pattern. Borrowed, valid as long as p.
const char *tg_router_pattern_text(const struct tg_route_pattern *p);

/* A short description for `explain`: "prefix", "exact" (no wildcard),
 * "pattern (prefix)" or "pattern (exact)". A static string. */
const char *tg_router_pattern_kind(const struct tg_route_pattern *p);

/* Case folding for ignore_case patterns: ASCII A-Z to a-z, and the
 * percent-encoded UTF-8 of the two non-ASCII letters whose Unicode simple
 * case folding is ASCII, "%C5%BF" (U+017F LONG S) -> "s" and "%E2%84%AA"
 * (U+212A KELVIN SIGN) -> "k", hex digits of either case. That is what
 * Go's strings.EqualFold does, so a backend that finds names with it
 * (PocketBase collections: "_%C5%BFuperusers" is "_superusers") cannot be
 * reached under a spelling the route misses. Other escapes only have their
 * hex lower-cased.
 *
 * Writes into out[0..cap) and returns the length, never more than n; out
 * needs room for n bytes, otherwise nothing is written and 0 is returned.
 * out may be the same buffer as in. Folding twice changes nothing. Pure,
 * any thread. */
size_t tg_router_fold_path(const char *in, size_t n, char *out, size_t cap);

/* ---- route tables --------------------------------------------------------- */

/* One route of a site, as the router sees it: its pattern and the methods
 * it takes. `value` is the caller's (the configuration's route). */
struct tg_route_entry {
    const struct tg_route_pattern *pattern;
    uint32_t methods;                 /* bit 1 << enum tg_http_method; 0 with no
                                         others: any method */
    const char *const *other_methods; /* methods without an id, as written */
    size_t nother_methods;
    bool ignore_case; /* matches the folded path */
};

/* The first route, in order, whose pattern matches the normalised path
 * (`path`, without the query; `folded` is the same path through
 * tg_router_fold_path, for ignore_case routes, and may be NULL when none
 * is) and whose methods take the request's. Returns its index, or -1. */
ssize_t tg_router_match_route(const struct tg_route_entry *routes, size_t n, enum tg_http_method id,
                              const char *method, const char *path, size_t path_len,
                              const char *folded, size_t folded_len);

#endif
