/* Who is the client, and may it pass?
 *
 * Client identity: from a trusted peer (a load balancer or CDN listed in
 * trusted_proxies) the client is the right-most address in X-Forwarded-For
 * (or Forwarded: for=) that is not itself trusted; from anyone else the
 * socket peer is the client and what it claims is ignored.
 *
 * Access rules: allow/deny prefix lists decided by longest prefix match,
 * country and ASN lists from GeoIP.
 *
 * GeoIP: MaxMind DB files (libmaxminddb), mmap'd once per config snapshot,
 * validated at load, looked up lock-free by every worker. */
#ifndef TG_ACCESS_H
#define TG_ACCESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"
#include "str.h"

/* ---- client identity ----------------------------------------------------- */

/* Trusted hops kept in a client chain (the nearest ones when there are
 * more). */
#define TG_ACCESS_HOPS_MAX 8

/* Which forwarding header a trusted peer's client address is read from. */
enum tg_client_ip_header {
    TG_CLIENT_IP_AUTO = 0,  /* whichever is present; both must agree */
    TG_CLIENT_IP_XFF,       /* X-Forwarded-For only, Forwarded ignored */
    TG_CLIENT_IP_FORWARDED, /* Forwarded only, X-Forwarded-For ignored */
};

/* Who the client is, and the trusted proxies between it and the peer. */
struct tg_client_chain {
    struct tg_addr client;
    struct tg_addr hops[TG_ACCESS_HOPS_MAX]; /* left to right, the peer not included */
    uint8_t nhops;
    bool hops_elided; /* more trusted hops than fit: the left-most were dropped */
    enum { TG_CHAIN_PEER = 0, TG_CHAIN_XFF, TG_CHAIN_FORWARDED } source;
};

/* Finds the client behind `peer`. `xff` holds the values of every
 * X-Forwarded-For header in order (each a comma-separated list; every line
 * is read, none is cut), `forwarded` those of every Forwarded header
 * (RFC 7239; `for=` elements, quoted IPv6 "[2001:db8::1]:port" and ports
 * handled). If `peer` is not in `trusted` (or trusted is NULL) the client
 * is `peer` and nothing else is read. Otherwise the list is walked from the
 * right, skipping trusted addresses; the first untrusted one is the client,
 * and the trusted ones to its right are its hops. A malformed element stops
 * the walk and the first trusted hop to its right is the client (never an
 * address that arrived from an untrusted hop); so do "unknown", obfuscated
 * identifiers ("_hidden"), and Forwarded elements without exactly one for=.
 * A Forwarded syntax error (say an unterminated quote) is one such element
 * that runs to the end of its header line. If every hop is trusted, the
 * left-most is the client. Empty list elements are skipped. Address forms:
 * 192.0.2.1, 192.0.2.1:8080, [2001:db8::1], [2001:db8::1]:8080, and in
 * X-Forwarded-For also bare 2001:db8::1; mapped IPv6 folds to IPv4.
 *
 * `mode` says which header is read. TG_CLIENT_IP_AUTO reads the one that is
 * present (a header with no list element at all counts as absent); when
 * both are, each is walked and they must name the same
 * client: a proxy that writes only one of them passes the other on from the
 * client untouched, so two different answers mean one is forged and
 * nothing says which. Then the result is -1 (the caller refuses the
 * request) and out->client is `peer`. Returns 0 otherwise. Pure, linear in
 * the header bytes, no allocation; any thread. */
int tg_access_client_chain(const struct tg_cidr_set *trusted, const struct tg_addr *peer,
                           enum tg_client_ip_header mode, const struct tg_str *xff, size_t nxff,
                           const struct tg_str *forwarded, size_t nforwarded,
                           struct tg_client_chain *out);

/* ---- GeoIP --------------------------------------------------------------- */

struct tg_geoip;

/* Opens a MaxMind DB (country, city or ASN flavour; mmap'd) and validates
 * it fully: metadata (record size, IP version, a search tree that fits the
 * file, zero separator), the whole search tree (every record a node, empty,
 * or inside the data section; no path longer than the address), and every
 * distinct data record it reaches, up to about a million (each value
 * decoded once: sizes, types, pointers, cycles, nesting; the country and
 * ASN fields of the right types), so a truncated or corrupt file is refused
 * here rather than failing at lookup time. A database with no country code
 * and no ASN in any record is refused too. Returns NULL with a message in
 * err naming the file and the problem, e.g. "FILE: corrupt data record for
 * 2.125.160.216/29 at location.latitude: double of 5 bytes (must be 8)".
 * Work is linear in the file size. Main thread. */
struct tg_geoip *tg_geoip_open(const char *path, char *err, size_t errlen);
/* NULL is fine. Only once no thread can look up in it any more. */
void tg_geoip_close(struct tg_geoip *g);

/* ISO 3166-1 alpha-2 country of `a` into out[0..2] (NUL-terminated, upper
 * case): country.iso_code, else registered_country.iso_code, else a
 * top-level country_code (the layout of the ip-location-db databases).
 * Returns false and writes TG_GEOIP_UNKNOWN ("XX") when the address is not
 * in the database (IPv6 in an IPv4 database included), the record has no
 * country, or g is NULL. IPv4 addresses are found in IPv6 databases.
 * Thread-safe. */
#define TG_GEOIP_UNKNOWN "XX"
bool tg_geoip_country(const struct tg_geoip *g, const struct tg_addr *a, char out[3]);

/* autonomous_system_number of `a` from an ASN database; 0 if unknown (or g
 * NULL). Thread-safe. */
uint32_t tg_geoip_asn(const struct tg_geoip *g, const struct tg_addr *a);

/* ---- access rules -------------------------------------------------------- */

/* A compiled set of rules for a site or route. Country codes are two
 * upper-case letters ("XX" matches unknown addresses). */
struct tg_access_rules;

/* Returns empty rules (everything allowed), or NULL on allocation failure.
 * Built on one thread, then read-only. Free with tg_access_rules_free (NULL
 * is fine). */
struct tg_access_rules *tg_access_rules_new(void);
void tg_access_rules_free(struct tg_access_rules *r);

/* Adds a prefix or preset name ("private", "loopback", "any") to the allow
 * or deny list. Returns 0, or -1 with a message in err (e.g. "\"10.0.0.1/8\":
 * host bits set (did you mean 10.0.0.0/8?)"); err may be NULL. */
int tg_access_rules_add_cidr(struct tg_access_rules *r, bool allow, const char *text, char *err,
                             size_t errlen);
/* Adds a country code (case-insensitive "gb" ok) or an ASN (0 stands for
 * unknown, as "XX" does for countries). Returns 0, or -1 (bad code with a
 * message in err; out of memory for an ASN). */
int tg_access_rules_add_country(struct tg_access_rules *r, bool allow, const char *code, char *err,
                                size_t errlen);
int tg_access_rules_add_asn(struct tg_access_rules *r, bool allow, uint32_t asn);

/* Decides for a client. Address rules: the longest matching prefix wins
 * (deny on a tie); with no match, the request is allowed only if there is
 * no allow prefix. Then countries: denied if listed in deny, or if an
 * allow list exists and the country is not on it (a NULL or malformed
 * country counts as "XX"). Then ASNs the same way. All three must pass.
 * Returns true to allow; `why` (may be NULL) gets a static reason for the
 * log ("address", "country", "asn"), or NULL when allowed. Thread-safe. */
bool tg_access_check(const struct tg_access_rules *r, const struct tg_addr *a, const char *country,
                     uint32_t asn, const char **why);

/* Whether the rules need GeoIP country or ASN data at all. */
bool tg_access_uses_country(const struct tg_access_rules *r);
bool tg_access_uses_asn(const struct tg_access_rules *r);

/* True when the rules allow addresses and every allowed prefix is private
 * (loopback, RFC 1918, link-local, unique local): an admin-only rule. NULL
 * is false. */
bool tg_access_private_only(const struct tg_access_rules *r);

#endif
