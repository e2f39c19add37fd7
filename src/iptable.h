/* Per-client counters shared by all workers: open connections and open
 * streams per client address, for max_connections_per_ip and
 * stream.max_per_ip. Lock-striped; an entry exists only while its counts are
 * non-zero, so memory follows the number of open connections, not the
 * number of addresses ever seen. IPv6 clients are grouped by prefix (a /64
 * is one subscriber), as the rate limiter does. */
#ifndef TG_IPTABLE_H
#define TG_IPTABLE_H

#include <stdbool.h>
#include <stddef.h>

#include "addr.h"

enum tg_iptable_kind {
    TG_IPTABLE_CONNECTIONS = 0,
    TG_IPTABLE_STREAMS,
    TG_IPTABLE_KINDS,
};

struct tg_iptable;

/* Returns NULL on allocation failure. */
struct tg_iptable *tg_iptable_new(void);
void tg_iptable_free(struct tg_iptable *t);

/* Counts one more of `kind` for `a` unless that would exceed `limit`
 * (0 = no limit: always counts). Returns true if counted; false if over the
 * limit or out of memory (then nothing is counted). Any thread. */
bool tg_iptable_acquire(struct tg_iptable *t, const struct tg_addr *a, enum tg_iptable_kind kind,
                        unsigned limit);

/* Undoes one acquire. Any thread. */
void tg_iptable_release(struct tg_iptable *t, const struct tg_addr *a, enum tg_iptable_kind kind);

/* The key an address is counted under: IPv6 masked to `v6_prefix` bits. */
void tg_iptable_group(const struct tg_addr *a, unsigned v6_prefix, struct tg_addr *out);

#endif
