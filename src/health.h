/* Active health checks: a periodic HTTP GET to every server of every
 * upstream that asks for it (and of static tenants, through
 * tenants.upstream_defaults), run asynchronously on one worker's loop with
 * a cap on concurrent checks, so thousands of tenants do not flood their
 * backends. A server is marked down after `fails` failed checks in a row and
 * up again after `passes` good ones; every worker's server selection skips
 * servers marked down (while others remain). Passive health (ejection after
 * failed requests) is separate: see upstream.c. */
#ifndef TG_HEALTH_H
#define TG_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

struct tg_config;
struct tg_config_sockaddr;

/* At most this many checks run at once. */
#define TG_HEALTH_MAX_CONCURRENT 64

/* Starts (or, with a new snapshot, re-targets) the checker on `loop`.
 * Servers already known keep their state. Call from the checking worker's
 * thread only. Returns 0, or -1 on allocation failure. */
int tg_health_configure(struct ev_loop *loop, const struct tg_config *cfg);

/* Checked servers given as names follow their addresses: when some name
 * changed (the resolver's epoch moved), the targets are made again from
 * the current addresses (servers checked before keep their state and
 * their turn). Called once a second by the checking worker; cheap when
 * nothing changed. Returns 0, or -1 on allocation failure. */
int tg_health_follow(struct ev_loop *loop, const struct tg_config *cfg);

/* Stops the checker (the checking worker is leaving). */
void tg_health_stop(void);

/* False only when active checks marked the server down. Any thread;
 * lock-free. */
bool tg_health_up(const struct tg_config_sockaddr *addr);

/* Checks run and servers down, for metrics and tests. */
void tg_health_counts(unsigned long *checks, unsigned long *down);

#endif
