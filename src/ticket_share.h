/* Session ticket keys agreed through Redis by a fleet of gateways
 * (tls.redis, else rate_limit.redis), so a session made on one gateway
 * resumes on any other behind the same load balancer.
 *
 * One background thread with a blocking connection makes sure, every few
 * seconds, that the material of the epochs around now (tls_tickets.h) is
 * known: it reads <prefix>ticket:<epoch>, creates the current and the next
 * epoch's when missing (SET NX, so whichever gateway came first wins and
 * everybody reads that), and hands what it read to tls_tickets. Redis down
 * or a bad reply: logged once per change, what is known stays; tickets are
 * made with the local ring while the current epoch's material is unknown.
 * Workers never wait for it: they only read what it handed over. */
#ifndef TG_TICKET_SHARE_H
#define TG_TICKET_SHARE_H

#include <stdbool.h>

struct tg_config;

/* Whether `cfg` shares ticket keys through Redis: a fleet (tls.fleet),
 * session tickets on, a TLS listener (a built TLS server), and no
 * tls.ticket_key_file (the file wins: nothing to agree on). */
bool tg_ticket_share_wanted(const struct tg_config *cfg);

/* Makes the thread follow `cfg` (copied; not kept): starts it when
 * tg_ticket_share_wanted and it is not running (with every signal
 * blocked), hands it the new settings when it is (a new server or key
 * prefix or rotation period: it reconnects and forgets the material it
 * had), stops it when not wanted. Returns 0, or -1 when the thread could
 * not start (logged): tickets then use the local ring only. Main thread. */
int tg_ticket_share_follow(const struct tg_config *cfg);

/* Stops the thread and waits for it (at most the Redis command it is in:
 * the configured timeout, or the connect timeout), then forgets the
 * shared material. Does nothing when it is not running. Main thread,
 * before tg_tls_global_cleanup. */
void tg_ticket_share_stop(void);

#endif
