/* The admin listener's live dashboard: one self-contained page
 * (src/dashboard.html, turned into a C array at build time by tools/embed)
 * and the JSON snapshot it polls every second (GET /dashboard.json).
 *
 * The snapshot holds cumulative counters summed over the workers' shards
 * (the sums /metrics makes, scrape.h), a latency histogram summed over
 * routes, gauges, upstream health and certificates; the page computes
 * rates and quantiles by differencing two snapshots. Nothing here is on
 * the request path. The upstream and certificate parts are /status's too. */
#ifndef TG_DASHBOARD_H
#define TG_DASHBOARD_H

#include <stddef.h>
#include <time.h>

struct tg_strbuf;
struct tg_context;
struct tg_config;
struct tg_certstore;

/* The page's bytes (not NUL-terminated in the count; a NUL follows). */
extern const unsigned char tg_dashboard_page[];
extern const size_t tg_dashboard_page_len;

/* The page's Content-Security-Policy: nothing from anywhere (no CDN, font
 * or image by URL), its one inline script and its one inline style by
 * their SHA-256, fetches to its own origin only, no framing, no form
 * posts. Made once, on first use; any thread. NULL when the page lacks
 * its <script> or <style> block (a broken build: the caller answers 500). */
const char *tg_dashboard_csp(void);

/* Writes the snapshot (docs/operations.md, "Dashboard", lists its members)
 * into b, as `w` sees it: counters from every worker, upstream health as
 * this worker's pools and the health checks see it. Any worker thread;
 * b->oom tells whether memory ran out. */
void tg_dashboard_json(struct tg_strbuf *b, struct tg_context *w, const struct tg_config *cfg);

/* [{"name":..., "addresses": N, "servers":[{"address", "name" (when it came
 * from a name), "healthy", "ejected",
 * "check_passing", "failures_in_a_row", "active", "idle"}]}] for the
 * configured upstreams, as worker `w` sees them. */
void tg_dashboard_upstreams_json(struct tg_strbuf *b, struct tg_context *w,
                                 const struct tg_config *cfg);

/* Every certificate SNI can choose: [{"source", "label", "kind", "names",
 * "issuer", "not_after", "days_left"}]; days_left is fractional, negative
 * once expired, counted from `now`. `store` may be NULL (an empty list). */
void tg_dashboard_certificates_json(struct tg_strbuf *b, struct tg_certstore *store, time_t now);

#endif
