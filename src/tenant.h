/* The tenant directory: tenant id -> that tenant's backend servers, status
 * and quotas, from the config (static) or live from Redis.
 *
 * Each worker has its own directory cache and its own Redis connection (no
 * locks on the request path). A look-up answers from the config's static
 * entries first, then the cache, then asks Redis asynchronously: the
 * request parks on the loop, and concurrent look-ups of the same id share
 * one Redis request. Entries are cached for cache_ttl, misses for
 * negative_ttl; the control plane can drop an entry at once by publishing
 * the id on PREFIXchanged. When Redis fails, cached entries keep being
 * served up to stale_ttl past their expiry. */
#ifndef TG_TENANT_H
#define TG_TENANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "config.h"

/* A tenant as the request path uses it. Immutable once made; reference
 * counted (non-atomic: one worker's objects, or static ones in the config
 * snapshot that are never freed before the snapshot). */
struct tg_tenant {
    const char *id;
    bool suspended;
    /* The tenant's servers with tenants.upstream_defaults applied: used
     * with the tg_upstream_* functions like any configured upstream.
     * upstream.name is "$tenant:<id>"; upstream.index is unused. */
    struct tg_config_upstream upstream;
    unsigned rr_cursor;          /* round-robin position (worker-local) */
    int64_t rate_interval_ns;    /* 0 = the policy's own rate */
    int64_t rate_count, rate_period_s;
    int64_t burst;               /* 0 = the policy's own burst */
    unsigned refs;               /* 0 for static tenants (never freed) */
};

/* ---- static entries (built at config load) ------------------------------ */

/* Builds cfg->tenants.index from cfg->tenants.tenants and domains (hash
 * tables with O(1) look-ups; 100,000 entries are fine). Returns 0, or -1
 * with a message in err (duplicate id or domain, invalid id). Main thread,
 * during config load. */
int tg_tenant_index_build(struct tg_config *cfg, char *err, size_t errlen);
void tg_tenant_index_free(struct tg_tenant_index *ix);

/* Static look-ups; NULL when absent. Thread-safe (read-only). */
struct tg_tenant *tg_tenant_static(const struct tg_tenant_index *ix, const char *id, size_t n);
const char *tg_tenant_static_domain(const struct tg_tenant_index *ix, const char *host,
                                    size_t n);

/* ---- the per-worker directory -------------------------------------------- */

struct tg_tenant_dir;
struct tg_tenant_wait;

enum tg_tenant_status {
    TG_TENANT_FOUND = 0,
    TG_TENANT_NOT_FOUND,     /* answer 404 */
    TG_TENANT_UNAVAILABLE,   /* Redis down and nothing cached: answer 503 */
};

/* Called once from the loop with the outcome. `t` (FOUND only) is
 * referenced for the caller: release it with tg_tenant_release. */
typedef void (*tg_tenant_cb)(void *arg, enum tg_tenant_status status, struct tg_tenant *t);

/* Creates a worker's directory. For directory: redis it connects (data
 * connection and a SUBSCRIBE connection) on `loop`. Returns NULL on
 * allocation failure. Worker thread. */
struct tg_tenant_dir *tg_tenant_dir_new(struct ev_loop *loop, const struct tg_config_tenants *cfg);

/* Applies a reloaded config (TTLs, Redis address, prefix; the cache is kept
 * unless the Redis address or prefix changed). Worker thread. */
void tg_tenant_dir_configure(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg);

/* Pending look-ups are answered UNAVAILABLE first. */
void tg_tenant_dir_free(struct tg_tenant_dir *d);

/* Looks up a tenant id (already validated as a DNS label; compared in
 * lower case). Static entries of `cfg` win. Returns FOUND/NOT_FOUND/
 * UNAVAILABLE at once (with *out referenced when FOUND) when it can answer
 * without waiting, or -1 when the answer will come through `cb` (and
 * *wait is set for tg_tenant_cancel). Worker thread. */
int tg_tenant_lookup(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                     const char *id, size_t n, struct tg_tenant **out, tg_tenant_cb cb,
                     void *arg, struct tg_tenant_wait **wait);

/* The same for a custom domain (a Host that matched no site pattern):
 * static domains, then Redis STRING PREFIXhost:<domain>, then the tenant. */
int tg_tenant_lookup_domain(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                            const char *host, size_t n, struct tg_tenant **out,
                            tg_tenant_cb cb, void *arg, struct tg_tenant_wait **wait);

/* The request went away: its callback will not be called. */
void tg_tenant_cancel(struct tg_tenant_wait *w);

void tg_tenant_ref(struct tg_tenant *t);
void tg_tenant_release(struct tg_tenant *t);

/* Counters for metrics and /status (this worker). */
struct tg_tenant_stats {
    uint64_t hits, misses, negative_hits, stale_served, redis_lookups, redis_errors,
        invalidations;
    size_t cached;               /* entries now */
    size_t memory;               /* bytes held by cached entries */
};
void tg_tenant_dir_stats(const struct tg_tenant_dir *d, struct tg_tenant_stats *out);

#endif
