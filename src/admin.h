/* The admin listener: /metrics (Prometheus), /healthz, /readyz, /status,
 * and rate-limit key inspection (GET/DELETE /ratelimit/POLICY/KEY).
 *
 * It rides on the normal connection machinery (parsing, timeouts,
 * keep-alive); only the request handling differs. It listens on loopback by
 * default and can require a bearer token. */
#ifndef TG_ADMIN_H
#define TG_ADMIN_H

struct tg_request;

/* Handles a request that arrived on the admin listener; answers through
 * tg_request_respond, possibly later (Redis look-ups). */
void tg_admin_handle(struct tg_request *req);

#endif
