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
 * served up to stale_ttl past their expiry.
 *
 * Redis data (written by the control plane; PREFIX = redis.key_prefix):
 *   HASH   PREFIX<id>           servers  "10.0.0.5:8080, [fd00::7]:8080, app.internal:8080"
 *                                        (a name is resolved by the resolver
 *                                        thread, never here: resolver.h)
 *                               status   active | suspended | placing |
 *                                        archived (missing: active)
 *                               rate     "100/s" (optional), burst "200"
 *   STRING PREFIXhost:<domain>  the tenant id of a custom domain
 *   PUBLISH PREFIXchanged <id> | host:<domain>   drops that entry at once
 * An entry that cannot be used (no servers unless suspended, a bad server,
 * status, rate or burst) is answered NOT_FOUND and logged once per fetch,
 * i.e. once per id per negative_ttl. An entry whose servers include a name
 * the resolver has not answered for yet waits for that answer (at most the
 * Redis timeout) before it is cached and handed out; its tenant's
 * upstream.resolve follows the name from then on. */
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
     * upstream.name is "$tenant:<id>"; upstream.index is unused. With
     * names among the servers, upstream.resolve is a resolver group: the
     * tenant's own reference for tenants from Redis, the snapshot's for
     * static ones. */
    struct tg_config_upstream upstream;
    unsigned rr_cursor;       /* round-robin position: worker-local for
                                    tenants from Redis; static ones are
                                    shared by all workers (refs == 0) and
                                    must not be written */
    int64_t rate_interval_ns; /* 0 = the policy's own rate */
    int64_t rate_count, rate_period_s;
    int64_t burst; /* 0 = the policy's own burst */
    unsigned refs; /* 0 for static tenants (never freed) */
};

/* ---- static entries (built at config load) ------------------------------ */

/* Builds cfg->tenants.index from cfg->tenants.tenants and domains (hash
 * tables with O(1) look-ups; 100,000 entries are fine). Each static tenant
 * gets upstream_defaults with its servers and the name "$tenant:<id>"; ids
 * and domains are stored lower case (one trailing dot of a domain
 * dropped). Tenants and strings come from cfg->arena; the tables are
 * malloc'd (tg_tenant_index_free, which config_free must call). Returns 0,
 * or -1 with a message in err ("FILE:LINE:COL: " first when the entry has a
 * mark): duplicate id or domain, invalid id or domain, or, with directory:
 * static, a domain whose tenant is not defined. Main thread, during config
 * load. */
int tg_tenant_index_build(struct tg_config *cfg, char *err, size_t errlen);
void tg_tenant_index_free(struct tg_tenant_index *ix);

/* Static look-ups; NULL when absent. Thread-safe (read-only). */
struct tg_tenant *tg_tenant_static(const struct tg_tenant_index *ix, const char *id, size_t n);
const char *tg_tenant_static_domain(const struct tg_tenant_index *ix, const char *host, size_t n);

/* ---- the per-worker directory -------------------------------------------- */

struct tg_redis;
struct tg_tenant_dir;
struct tg_tenant_wait;

enum tg_tenant_status {
    TG_TENANT_FOUND = 0,
    TG_TENANT_NOT_FOUND,   /* answer 404 */
    TG_TENANT_UNAVAILABLE, /* Redis down and nothing cached: answer 503 */
    TG_TENANT_INACTIVE,    /* placing or archived, not placed in time (or
                              activation is off): answer 503 + Retry-After */
};

/* Called once from the loop with the outcome. `t` (FOUND only) is
 * referenced for the caller: release it with tg_tenant_release. */
typedef void (*tg_tenant_cb)(void *arg, enum tg_tenant_status status, struct tg_tenant *t);

/* Creates a worker's directory. For directory: redis it connects (data
 * connection and a SUBSCRIBE connection) on `loop`. Copies the TTLs, bound
 * and Redis settings; borrows `cfg` itself (the tenants it builds copy its
 * upstream_defaults, whose TLS pointers live in the snapshot) until the
 * next tg_tenant_dir_configure or tg_tenant_dir_free: the worker keeps
 * that snapshot alive until then. Returns NULL on allocation failure.
 * Worker thread. */
struct tg_tenant_dir *tg_tenant_dir_new(struct ev_loop *loop, const struct tg_config_tenants *cfg);

struct tg_tenant_shared;

/* A tenant may have moved: a change message named it, or a fetch found
 * other servers than the cache had. Runs on the loop, from inside the
 * directory's handlers: it may look tenants up. */
typedef void (*tg_tenant_change_cb)(void *arg, const char *id);
void tg_tenant_dir_on_change(struct tg_tenant_dir *d, tg_tenant_change_cb cb, void *arg);

/* Joins the process-wide last-known entries (tenant_shared.h): what this
 * directory fetches goes there, and while Redis fails it falls back to
 * what other workers fetched when it has nothing of its own. `reader` is
 * this worker's number. Worker thread, before the first look-up. */
void tg_tenant_dir_share(struct tg_tenant_dir *d, struct tg_tenant_shared *shared, unsigned reader);

/* Applies a reloaded config: new TTLs and max_cached apply at once (to
 * cached entries too). If the directory kind, Redis address, password, db
 * or key prefix changed, it reconnects and clears the cache; look-ups in
 * flight are asked again there (or answered, if Redis is off now). Cached
 * tenants are rebuilt on the new upstream_defaults. Borrows cfg as
 * tg_tenant_dir_new does. Never calls a look-up callback itself. Worker
 * thread. */
void tg_tenant_dir_configure(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg);

/* Pending look-ups are answered UNAVAILABLE first; then the connections
 * close and the cache goes (tenants still referenced by requests stay
 * until released). Safe from inside a look-up callback. Worker thread. */
void tg_tenant_dir_free(struct tg_tenant_dir *d);

/* Looks up a tenant id (already validated as a DNS label; compared in
 * lower case; an invalid one is NOT_FOUND). Static entries of `cfg` win.
 * Returns FOUND/NOT_FOUND/UNAVAILABLE at once (with *out referenced when
 * FOUND) when it can answer without waiting, or -1 when the answer will
 * come through `cb` (and *wait is set for tg_tenant_cancel). The callback
 * never runs before this returns. Concurrent look-ups of one id share one
 * Redis request. While Redis cannot answer (down, circuit open, timeout),
 * an entry found before is served up to stale_ttl past its expiry;
 * otherwise UNAVAILABLE. `cfg` is the request's snapshot and must stay
 * valid until the callback or cancel; the tenant handed out borrows only
 * from it. Worker thread. */
int tg_tenant_lookup(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg, const char *id,
                     size_t n, struct tg_tenant **out, tg_tenant_cb cb, void *arg,
                     struct tg_tenant_wait **wait);

/* The same for a request to `host` (borrowed until the callback or
 * cancel); tg_tenant_lookup never activates. With tenants.activation, a tenant the directory marks placing
 * or archived (or does not know, with activation.unknown) is activated:
 * one message on the activation stream per tenant (coalesced across
 * requests, workers and gateways), and the look-up waits, bounded by
 * activation.timeout and activation.max_waiting, until the directory
 * places the tenant (FOUND) or the time is up (INACTIVE). */
int tg_tenant_lookup_host(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                          const char *id, size_t n, const char *host, struct tg_tenant **out,
                          tg_tenant_cb cb, void *arg, struct tg_tenant_wait **wait);

/* Names this gateway in activation messages (borrowed for the directory's
 * life). */
void tg_tenant_dir_gateway(struct tg_tenant_dir *d, const char *gateway_id);

/* The same for a custom domain (a Host that matched no site pattern,
 * without its port; case and one trailing dot ignored): static domains,
 * then Redis STRING PREFIXhost:<domain> (cached, coalesced and negative
 * cached like ids), then the tenant by id. */
int tg_tenant_lookup_domain(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                            const char *host, size_t n, struct tg_tenant **out, tg_tenant_cb cb,
                            void *arg, struct tg_tenant_wait **wait);

/* The request went away: its callback will not be called. Any time
 * before the callback (not after: the handle is gone then). The Redis
 * request, if any, carries on for the cache and the other waiters. */
void tg_tenant_cancel(struct tg_tenant_wait *w);

/* References (no-ops on static tenants); the last release frees a tenant
 * from Redis, even after its directory is gone. Worker thread that got it. */
void tg_tenant_ref(struct tg_tenant *t);
void tg_tenant_release(struct tg_tenant *t);

/* Counters for metrics and /status (this worker). */
struct tg_tenant_stats {
    uint64_t hits;          /* FOUND from static entries or the cache */
    uint64_t misses;        /* needed Redis (asked, joined, or it was down) */
    uint64_t negative_hits; /* NOT_FOUND from the cache (or no such static) */
    uint64_t stale_served;  /* FOUND with an expired entry, Redis failing */
    uint64_t shared_taken;  /* entries taken from what other workers fetched (Redis failing) */
    uint64_t activations;   /* activation messages this worker asked for */
    uint64_t activated;     /* requests that waited for a placement and got it */
    uint64_t activation_timeouts; /* ... that waited activation.timeout in vain (503) */
    uint64_t activation_refused;  /* ... that found max_waiting requests waiting (503) */
    uint64_t redis_lookups;       /* HGETALL / GET sent */
    uint64_t redis_errors;        /* look-ups Redis failed to answer */
    uint64_t invalidations;       /* messages received on PREFIXchanged */
    size_t cached;                /* entries now (ids and domains, + and -) */
    size_t memory;                /* bytes held by the cache: entries, their
                                    tenants (malloc_usable_size), buckets */
};
void tg_tenant_dir_stats(const struct tg_tenant_dir *d, struct tg_tenant_stats *out);

/* The directory's command link, for reports (/status): NULL when the
 * directory is not in Redis. Borrowed; the directory's thread. */
const struct tg_redis *tg_tenant_dir_link(const struct tg_tenant_dir *d);

#endif
