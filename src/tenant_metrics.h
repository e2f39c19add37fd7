/* Per-tenant metrics with a cardinality guard.
 *
 * A platform may host 100k tenants; one Prometheus series set per tenant
 * would make every scrape megabytes and every dashboard useless. Each
 * worker keeps full counters for at most `capacity` tenants, chosen by
 * traffic with the space-saving algorithm (Metwally et al. 2005) and its
 * random admission policy (Ben Basat et al. 2017): a tenant not tracked
 * takes the slot of the least busy one with probability 1 / (that one's
 * weight + 1), and that one's counts move to the worker's "other" sums;
 * otherwise the request counts under "other". So a long tail of tenants
 * that come once costs a hash look-up, not an eviction, per request. The scrape merges the workers' slots and
 * exports at most admin.tenant_series tenants by traffic; everything else
 * is summed as tenant="_other". The scrape's cost is bounded by the slots
 * (workers x capacity), never by the number of tenants.
 *
 * Exported counters never go down: the export set is sticky (a tenant
 * leaves it only when no worker tracks it any more, or when a newcomer has
 * twice its traffic), and every exported value, "_other" included, is kept
 * at least at the value the previous scrape showed. The sum of all tenant
 * series and "_other" may therefore exceed the true total by the counts of
 * a tenant that moved in or out of the export set, for as long as the true
 * total takes to catch up; rates stay right.
 *
 * The request path only touches its own worker's table (no locks); the
 * scrape reads it with relaxed loads and a sequence count per slot, so a
 * slot that changes hands during a scrape is skipped, never read torn. */
#ifndef TG_TENANT_METRICS_H
#define TG_TENANT_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"

/* Tenant ids longer than this are counted under "_other". */
#define TG_TENANT_METRICS_ID_MAX 63

/* One tenant's counters (and "_other"'s). */
struct tg_tenant_series {
    uint64_t requests[TG_METRICS_STATUS_CLASSES]; /* by status class: 0 = aborted, 1..5 */
    uint64_t limited;                             /* refused by a rate limit */
    uint64_t upstream_errors;
    uint64_t bytes_in, bytes_out;
    uint64_t duration[TG_METRICS_MAX_BUCKETS + 1]; /* per bucket, not cumulative */
    uint64_t duration_us;
    int64_t active; /* requests in flight (streams included) */
};

/* ---- main thread -------------------------------------------------------- */

/* Takes admin.tenant_series from the configuration: the first call sets
 * the limit and the workers' capacity (twice the limit); a later one that
 * names another limit keeps the first and warns (the counts belong to the
 * tables as they were sized). 0 turns per-tenant metrics off. */
void tg_tenant_metrics_configure(unsigned limit);

/* The export limit (0: off). */
unsigned tg_tenant_metrics_limit(void);

/* ---- per worker --------------------------------------------------------- */

struct tg_tenant_metrics;

/* A worker's table, sized by the configured limit; NULL when per-tenant
 * metrics are off or memory ran out (every call below takes NULL). */
struct tg_tenant_metrics *tg_tenant_metrics_new(void);
void tg_tenant_metrics_free(struct tg_tenant_metrics *tm);

/* Where a request's counts go: the slot taken when the tenant was known,
 * and that slot's generation then (a slot given to another tenant since
 * sends the counts to "_other"). Zero: "_other". */
struct tg_tenant_mark {
    uint32_t slot; /* 1-based; 0 = none */
    uint32_t gen;
};

/* A request for tenant `id` (NUL-terminated) begins: counts it as active
 * and as traffic for the choice of tenants. Worker thread. */
void tg_tenant_metrics_begin(struct tg_tenant_metrics *tm, const char *id,
                             struct tg_tenant_mark *mark);

/* What a finished request adds. */
struct tg_tenant_outcome {
    unsigned status_class; /* 0 = aborted, 1..5 */
    unsigned bucket;       /* tg_metrics_bucket of its duration */
    uint64_t duration_us;
    uint64_t bytes_in, bytes_out;
    bool limited, upstream_error;
};

/* A request of a tenant ends: its counts go to the marked slot, or to
 * "_other" (mark zero: the tenant was never known, e.g. not found).
 * `o` NULL: it ended unanswered and only leaves the in-flight count. */
void tg_tenant_metrics_end(struct tg_tenant_metrics *tm, const struct tg_tenant_mark *mark,
                           const struct tg_tenant_outcome *o);

/* ---- the scrape (any thread) ------------------------------------------------ */

struct tg_tenant_row {
    char id[TG_TENANT_METRICS_ID_MAX + 1];
    uint64_t weight; /* traffic estimate the choice is made on */
    struct tg_tenant_series s;
};

struct tg_tenant_report {
    struct tg_tenant_row *rows; /* the exported tenants, busiest first */
    size_t n;
    struct tg_tenant_series other;
    unsigned limit;     /* admin.tenant_series */
    size_t tracked;     /* slots in use, all workers */
    size_t capacity;    /* slots, all workers */
    uint64_t evictions; /* slots given to another tenant, all workers */
};

/* Merges the workers' tables (NULL entries skipped) into the export set.
 * Returns 0, or -1 when memory ran out. Serialised internally: two scrapes
 * at once see one consistent sequence of values. */
int tg_tenant_metrics_report(struct tg_tenant_metrics *const *workers, unsigned nworkers,
                             struct tg_tenant_report *out);
void tg_tenant_report_free(struct tg_tenant_report *r);

/* Forgets the export set (tests). */
void tg_tenant_metrics_reset_export(void);

#endif
