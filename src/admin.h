/* The admin listener: /metrics (Prometheus), /healthz, /readyz, /status,
 * rate-limit key inspection (GET/DELETE /ratelimit/POLICY/KEY), cache
 * purges, and the live dashboard (/ and /dashboard, its /dashboard.json,
 * and POST /dashboard/session, which trades the token for a cookie that
 * opens those reads only).
 *
 * It rides on the normal connection machinery (parsing, timeouts,
 * keep-alive); only the request handling differs. It listens on loopback by
 * default, can require a bearer token (admin.token) and can refuse client
 * addresses (admin.allow, admin.deny); both apply to every path. */
#ifndef TG_ADMIN_H
#define TG_ADMIN_H

struct tg_request;

/* Handles a request that arrived on the admin listener; answers through
 * tg_request_respond, possibly later (Redis look-ups). */
void tg_admin_handle(struct tg_request *req);

#endif
