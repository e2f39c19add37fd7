/* IP addresses and CIDR sets.
 *
 * struct tg_addr holds an IPv4 or IPv6 address in one shape, so the rest of
 * the gateway (rate-limit keys, access rules, GeoIP, logs) never branches on
 * the family. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are folded to IPv4
 * at every entry point, so a rule for 10.0.0.0/8 also covers them.
 *
 * A tg_cidr_set maps prefixes to small integer values and answers
 * longest-prefix-match queries in O(prefix length): a path-compressed binary
 * trie per family. Built once (config load), then read-only, so any number
 * of threads may look up concurrently. */
#ifndef TG_ADDR_H
#define TG_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "str.h"

struct tg_addr {
    uint8_t family; /* AF_INET or AF_INET6; 0 = unknown (e.g. unix socket) */
    uint8_t ip[16]; /* network order; IPv4 uses ip[0..3], the rest zero */
};

/* Longest text tg_addr_format writes, NUL included. */
#define TG_ADDR_STRLEN 46

/* Parses "192.0.2.1", "2001:db8::1" or "[2001:db8::1]" (exactly n bytes, no
 * port, s need not be NUL-terminated). Strict: IPv4 is exactly four decimal
 * octets without leading zeros ("010.0.0.1" could be octal to someone else);
 * brackets only around IPv6; no zone id ("fe80::1%eth0"); nothing trailing.
 * ::ffff:a.b.c.d comes out as IPv4. Returns 0, or -1 if it is not an
 * address (out is then untouched). */
int tg_addr_parse(const char *s, size_t n, struct tg_addr *out);

/* Writes the canonical text (RFC 5952 for IPv6: lower case, shortest form,
 * no dotted tail since mapped addresses print as IPv4) NUL-terminated into
 * out and returns its length. Like snprintf, a result >= cap means the text
 * was cut to cap - 1 bytes; cap = TG_ADDR_STRLEN always suffices. Family 0
 * writes "" and returns 0. */
size_t tg_addr_format(const struct tg_addr *a, char *out, size_t cap);

/* From a socket address (AF_INET, AF_INET6; anything else gives family 0). */
void tg_addr_from_sockaddr(const struct sockaddr *sa, struct tg_addr *out);

bool tg_addr_equal(const struct tg_addr *a, const struct tg_addr *b);

/* Zeroes all bits after the first `bits` (used to group IPv6 by /64);
 * bits >= the family's width leaves the address unchanged. */
void tg_addr_mask(struct tg_addr *a, unsigned bits);

/* A prefix as parsed from "10.0.0.0/8", "2001:db8::/32" or a bare address
 * (a /32 or /128). Host bits set beyond the prefix are an error, so a typo
 * like 10.0.0.1/8 is caught at config load. */
struct tg_cidr {
    struct tg_addr addr;
    uint8_t bits;
};

/* Returns 0, or -1 with a short message in err (NUL-terminated, cut to
 * errlen; err may be NULL), e.g. "host bits set (did you mean 10.0.0.0/8?)".
 * The prefix length is decimal without leading zeros. A mapped prefix
 * (::ffff:10.0.0.0/104) becomes its IPv4 form (10.0.0.0/8). */
int tg_cidr_parse(const char *s, size_t n, struct tg_cidr *out, char *err, size_t errlen);

/* Named presets usable wherever a CIDR list is:
 *   "private"   127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,
 *               169.254.0.0/16, ::1/128, fc00::/7, fe80::/10
 *   "loopback"  127.0.0.0/8, ::1/128
 *   "any"       0.0.0.0/0, ::/0
 * Returns the number of prefixes written to out (at most cap, so give it
 * TG_CIDR_PRESET_MAX to get them all), or -1 if `name` is not a preset. */
#define TG_CIDR_PRESET_MAX 8
int tg_cidr_preset(const char *name, struct tg_cidr *out, size_t cap);

struct tg_cidr_set;

/* Returns an empty set, or NULL on allocation failure. Free with
 * tg_cidr_set_free (NULL is fine). */
struct tg_cidr_set *tg_cidr_set_new(void);
void tg_cidr_set_free(struct tg_cidr_set *set);

/* Adds a prefix with a value (> 0). Adding the same prefix twice keeps the
 * last value. Host bits beyond the prefix are ignored. Returns 0, or -1 on
 * allocation failure or invalid input (value <= 0, family 0, bits over the
 * width). Not thread-safe: build the set before sharing it. */
int tg_cidr_set_add(struct tg_cidr_set *set, const struct tg_cidr *prefix, int value);

/* Returns the value of the longest prefix that contains `a`, or 0 if none
 * (always 0 for family 0). Thread-safe once the set is built. */
int tg_cidr_set_lookup(const struct tg_cidr_set *set, const struct tg_addr *a);

/* Number of prefixes in the set. */
size_t tg_cidr_set_count(const struct tg_cidr_set *set);

#endif
