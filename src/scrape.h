/* The admin listener's /metrics: the Prometheus text exposition of every
 * counter the workers keep (metrics.h) and of the process-wide parts. */
#ifndef TG_SCRAPE_H
#define TG_SCRAPE_H

#include <stddef.h>
#include <stdint.h>

struct tg_runtime;
struct tg_route_stats;
struct tg_policy_stats;

/* Renders the exposition into a malloc'd buffer (*out, *len). Returns 0,
 * or -1 when memory ran out. Any thread (reads with relaxed loads). */
int tg_scrape_render(struct tg_runtime *rt, char **out, size_t *len);

/* One series summed over every worker's shard into *out: a route's
 * (metrics.h, tg_route_stats: requests, durations, bytes) or a rate-limit
 * policy's decisions. Relaxed loads, so a sum may be a few increments
 * behind, never torn. Any thread. */
void tg_scrape_sum_route(struct tg_runtime *rt, unsigned id, struct tg_route_stats *out);
void tg_scrape_sum_policy(struct tg_runtime *rt, unsigned id, struct tg_policy_stats *out);

/* The per-tenant counters merged over the workers: the tenants exported
 * by name, busiest first, and "_other" (tenant_metrics.h). Returns 0, or
 * -1 when memory ran out; free with tg_tenant_report_free. */
struct tg_tenant_report;
int tg_scrape_tenant_report(struct tg_runtime *rt, struct tg_tenant_report *out);

/* Server-Sent Events answers streaming now, all workers. Any thread. */
int64_t tg_scrape_sse_open(struct tg_runtime *rt);

#endif
