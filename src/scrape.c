/* The /metrics scrape (scrape.h): every worker's shard summed with relaxed
 * loads, plus what the process-wide parts report (Redis, tenants, health
 * checks, the access log, reloads), as Prometheus text. */
#include "scrape.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access_log.h"
#include "acme.h"
#include "codec.h"
#include "config.h"
#include "context.h"
#include "health.h"
#include "encoding.h"
#include "metrics.h"
#include "ratelimit_redis.h"
#include "redis.h"
#include "resolver.h"
#include "tenant.h"
#include "tenant_metrics.h"
#include "tenant_shared.h"
#include "trace_export.h"

/* ---- rendering ------------------------------------------------------------- */

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
/* One counter summed over the workers' shards into `v`: `field` is its
 * path below struct tg_metrics (routes[id].bytes_in). Needs `rt`, `nw`. */
#define SUM_WORKERS(v, field)                             \
    do {                                                  \
        for (unsigned w_ = 0; w_ < nw; w_++)              \
            (v) += LOAD(rt->workers[w_]->metrics->field); \
    } while (0)

void tg_scrape_sum_route(struct tg_runtime *rt, unsigned id, struct tg_route_stats *out)
{
    *out = (struct tg_route_stats){0};
    for (unsigned w = 0; w < rt->nworkers; w++) {
        const struct tg_route_stats *s = &rt->workers[w]->metrics->routes[id];
        for (unsigned c = 0; c < TG_METRICS_STATUS_CLASSES; c++)
            out->requests[c] += LOAD(s->requests[c]);
        for (unsigned b = 0; b <= TG_METRICS_MAX_BUCKETS; b++)
            out->duration[b] += LOAD(s->duration[b]);
        out->duration_us += LOAD(s->duration_us);
        out->bytes_in += LOAD(s->bytes_in);
        out->bytes_out += LOAD(s->bytes_out);
    }
}

void tg_scrape_sum_policy(struct tg_runtime *rt, unsigned id, struct tg_policy_stats *out)
{
    *out = (struct tg_policy_stats){0};
    for (unsigned w = 0; w < rt->nworkers; w++)
        for (unsigned r = 0; r < TG_RL_RESULTS; r++)
            out->results[r] += LOAD(rt->workers[w]->metrics->policies[id].results[r]);
}

int64_t tg_scrape_sse_open(struct tg_runtime *rt)
{
    int64_t v = 0;
    for (unsigned w = 0; w < rt->nworkers; w++)
        v += LOAD(rt->workers[w]->metrics->sse_open);
    return v;
}

/* One tollgate_upstream_resolve_failures_total line (resolver.h). */
static void resolve_failures_line(void *arg, const char *label, uint64_t failures)
{
    char esc[256];
    tg_metrics_escape_label(esc, sizeof(esc), label);
    tg_strbuf_printf(arg, "tollgate_upstream_resolve_failures_total{upstream=\"%s\"} %llu\n", esc,
                     (unsigned long long)failures);
}

static void header(struct tg_strbuf *o, const char *name, const char *type, const char *help)
{
    tg_strbuf_printf(o, "# HELP tollgate_%s %s\n# TYPE tollgate_%s %s\n", name, help, name, type);
}

/* The response cache, all workers and routes together. */
static void render_cache(struct tg_strbuf *o, struct tg_runtime *rt, unsigned nw)
{
    static const struct {
        const char *name, *type, *help;
        size_t off;
    } series[] = {
        {"cache_hits_total", "counter", "Answers from the response cache (304s included).",
         offsetof(struct tg_cache_stats, hits)},
        {"cache_misses_total", "counter",
         "Cacheable requests that went to the backend (hit ratio: hits / (hits + misses)).",
         offsetof(struct tg_cache_stats, misses)},
        {"cache_coalesced_total", "counter",
         "Misses that waited for an identical request's fetch instead of asking the backend.",
         offsetof(struct tg_cache_stats, coalesced)},
        {"cache_stores_total", "counter", "Responses stored in the cache.",
         offsetof(struct tg_cache_stats, stores)},
        {"cache_evictions_total", "counter", "Entries dropped to make room (least recently used).",
         offsetof(struct tg_cache_stats, evictions)},
        {"cache_purged_total", "counter", "Entries dropped by a purge.",
         offsetof(struct tg_cache_stats, purged)},
        {"cache_bytes", "gauge", "Bytes held by the response cache.",
         offsetof(struct tg_cache_stats, bytes)},
        {"cache_entries", "gauge", "Entries held by the response cache.",
         offsetof(struct tg_cache_stats, entries)},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(series); i++) {
        int64_t v = 0;
        for (unsigned w = 0; w < nw; w++) {
            const char *base = (const char *)&rt->workers[w]->metrics->cache;
            /* Counters and gauges are both 64-bit; gauges may dip below 0
             * in one worker's shard only transiently, never in the sum. */
            v += (int64_t)__atomic_load_n((const uint64_t *)(const void *)(base + series[i].off),
                                          __ATOMIC_RELAXED);
        }
        header(o, series[i].name, series[i].type, series[i].help);
        tg_strbuf_printf(o, "tollgate_%s %lld\n", series[i].name, (long long)v);
    }
}

static void histogram(struct tg_strbuf *o, const char *name, const char *labels,
                      const uint64_t *counts, uint64_t sum_us)
{
    uint64_t cum = 0;
    unsigned nb = tg_metrics_nbuckets();
    for (unsigned b = 0; b <= nb; b++) {
        cum += counts[b];
        if (b < nb)
            tg_strbuf_printf(o, "tollgate_%s_bucket{%s,le=\"%g\"} %llu\n", name, labels,
                             tg_metrics_bucket_bound(b), (unsigned long long)cum);
        else
            tg_strbuf_printf(o, "tollgate_%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels,
                             (unsigned long long)cum);
    }
    tg_strbuf_printf(o, "tollgate_%s_sum{%s} %.6f\n", name, labels, (double)sum_us / 1e6);
    tg_strbuf_printf(o, "tollgate_%s_count{%s} %llu\n", name, labels, (unsigned long long)cum);
}

/* The span exporter's counters (process-wide: one exporter thread). */
static void put_trace_export(struct tg_strbuf *o)
{
    struct tg_trace_export_stats st;
    tg_trace_export_stats(&st);
    header(o, "trace_spans_exported_total", "counter", "Spans the OTLP collector accepted.");
    tg_strbuf_printf(o, "tollgate_trace_spans_exported_total %llu\n",
                     (unsigned long long)st.exported);
    header(o, "trace_spans_dropped_total", "counter",
           "Spans dropped because the export queue was full (or left at shutdown).");
    tg_strbuf_printf(o, "tollgate_trace_spans_dropped_total %llu\n",
                     (unsigned long long)st.dropped);
    header(o, "trace_spans_failed_total", "counter",
           "Spans in batches the collector did not accept (or could not be reached for).");
    tg_strbuf_printf(o, "tollgate_trace_spans_failed_total %llu\n",
                     (unsigned long long)st.failed_spans);
    header(o, "trace_export_failures_total", "counter", "Span batches whose POST failed.");
    tg_strbuf_printf(o, "tollgate_trace_export_failures_total %llu\n",
                     (unsigned long long)st.failed_posts);
}

/* A per-tenant label value, escaped: an id of at most
 * TG_TENANT_METRICS_ID_MAX bytes, each of which may double. */
typedef char tenant_label[2 * TG_TENANT_METRICS_ID_MAX + 2];

/* One per-tenant family: a line for every exported tenant, then "_other".
 * `off` is the 64-bit field of struct tg_tenant_series (the gauge is
 * signed; it never is below 0 in a report). */
static void tenant_family(struct tg_strbuf *o, const struct tg_tenant_report *rep,
                          const tenant_label *labels, const char *name, const char *type,
                          const char *help, size_t off)
{
    header(o, name, type, help);
    for (size_t i = 0; i <= rep->n; i++) {
        const struct tg_tenant_series *s = i < rep->n ? &rep->rows[i].s : &rep->other;
        uint64_t v;
        memcpy(&v, (const char *)s + off, sizeof(v));
        tg_strbuf_printf(o, "tollgate_%s{tenant=\"%s\"} %llu\n", name, labels[i],
                         (unsigned long long)v);
    }
}

/* Per-tenant series: the busiest admin.tenant_series tenants by name, the
 * rest as tenant="_other", and the guard's own counters. */
int tg_scrape_tenant_report(struct tg_runtime *rt, struct tg_tenant_report *out)
{
    unsigned nw = rt->nworkers;
    struct tg_tenant_metrics **tables = calloc(nw + 1, sizeof(*tables));
    if (tables == NULL)
        return -1;
    for (unsigned w = 0; w < nw; w++)
        tables[w] = rt->workers[w]->tenant_metrics;
    int rc = tg_tenant_metrics_report(tables, nw, out);
    free(tables);
    return rc;
}

static int render_tenants(struct tg_strbuf *o, struct tg_runtime *rt)
{
    if (tg_tenant_metrics_limit() == 0)
        return 0;
    struct tg_tenant_report rep;
    if (tg_scrape_tenant_report(rt, &rep) < 0)
        return -1;
    /* Escaped once: every family names every tenant. */
    tenant_label *labels = calloc(rep.n + 1, sizeof(*labels));
    if (labels == NULL) {
        tg_tenant_report_free(&rep);
        return -1;
    }
    for (size_t i = 0; i < rep.n; i++)
        tg_metrics_escape_label(labels[i], sizeof(labels[i]), rep.rows[i].id);
    snprintf(labels[rep.n], sizeof(labels[rep.n]), "_other");

    header(o, "tenant_requests_total", "counter",
           "Requests by tenant and status class (classes with none are left out).");
    for (size_t i = 0; i <= rep.n; i++) {
        const struct tg_tenant_series *s = i < rep.n ? &rep.rows[i].s : &rep.other;
        for (unsigned c = 0; c < TG_METRICS_STATUS_CLASSES; c++)
            if (s->requests[c] > 0 || c == 2)
                tg_strbuf_printf(
                    o, "tollgate_tenant_requests_total{tenant=\"%s\",code=\"%s\"} %llu\n",
                    labels[i], tg_metrics_status_class_name(c), (unsigned long long)s->requests[c]);
    }
    tenant_family(o, &rep, labels, "tenant_ratelimited_total", "counter",
                  "Requests of a tenant refused by a rate limit.",
                  offsetof(struct tg_tenant_series, limited));
    tenant_family(o, &rep, labels, "tenant_upstream_errors_total", "counter",
                  "Requests of a tenant answered 502/504 because no server answered.",
                  offsetof(struct tg_tenant_series, upstream_errors));
    tenant_family(o, &rep, labels, "tenant_bytes_received_total", "counter",
                  "Bytes received from clients, by tenant.",
                  offsetof(struct tg_tenant_series, bytes_in));
    tenant_family(o, &rep, labels, "tenant_bytes_sent_total", "counter",
                  "Bytes sent to clients, by tenant.",
                  offsetof(struct tg_tenant_series, bytes_out));
    tenant_family(o, &rep, labels, "tenant_requests_in_flight", "gauge",
                  "Requests of a tenant under way, open streams included.",
                  offsetof(struct tg_tenant_series, active));
    header(o, "tenant_request_duration_seconds", "histogram",
           "Time from the first byte of the request head to the end of the answer, by tenant.");
    for (size_t i = 0; i <= rep.n; i++) {
        const struct tg_tenant_series *s = i < rep.n ? &rep.rows[i].s : &rep.other;
        char lbl[2 * TG_TENANT_METRICS_ID_MAX + 16];
        snprintf(lbl, sizeof(lbl), "tenant=\"%s\"", labels[i]);
        histogram(o, "tenant_request_duration_seconds", lbl, s->duration, s->duration_us);
    }
    header(
        o, "tenant_series_limit", "gauge",
        "Tenants exported by name at most (admin.tenant_series); the rest are tenant=\"_other\".");
    tg_strbuf_printf(o, "tollgate_tenant_series_limit %u\n", rep.limit);
    header(o, "tenant_series", "gauge", "Tenants exported by name in this scrape.");
    tg_strbuf_printf(o, "tollgate_tenant_series %zu\n", rep.n);
    header(o, "tenant_tracked", "gauge",
           "Tenant slots in use in the workers' tables (chosen by traffic), all workers.");
    tg_strbuf_printf(o, "tollgate_tenant_tracked %zu\n", rep.tracked);
    header(o, "tenant_slots", "gauge", "Tenant slots the workers' tables have, all workers.");
    tg_strbuf_printf(o, "tollgate_tenant_slots %zu\n", rep.capacity);
    header(o, "tenant_evictions_total", "counter",
           "Tenant slots given to a busier tenant (its counts went to tenant=\"_other\").");
    tg_strbuf_printf(o, "tollgate_tenant_evictions_total %llu\n",
                     (unsigned long long)rep.evictions);
    free(labels);
    tg_tenant_report_free(&rep);
    return 0;
}

int tg_scrape_render(struct tg_runtime *rt, char **outp, size_t *lenp)
{
    struct tg_strbuf o = {0};
    unsigned nw = rt->nworkers;

    /* Routes: requests by status class, durations, bytes. */
    unsigned nroutes = tg_metrics_series_count(TG_METRICS_ROUTE);
    header(&o, "requests_total", "counter", "Requests by site, route and status class.");
    struct tg_route_stats rs;
    for (unsigned id = 0; id < nroutes; id++) {
        tg_scrape_sum_route(rt, id, &rs);
        for (unsigned c = 0; c < TG_METRICS_STATUS_CLASSES; c++)
            tg_strbuf_printf(&o, "tollgate_requests_total{%s,code=\"%s\"} %llu\n",
                             tg_metrics_series_labels(TG_METRICS_ROUTE, id),
                             tg_metrics_status_class_name(c), (unsigned long long)rs.requests[c]);
    }
    header(&o, "request_duration_seconds", "histogram",
           "Time from the first byte of the request head to the end of the answer.");
    for (unsigned id = 0; id < nroutes; id++) {
        tg_scrape_sum_route(rt, id, &rs);
        histogram(&o, "request_duration_seconds", tg_metrics_series_labels(TG_METRICS_ROUTE, id),
                  rs.duration, rs.duration_us);
    }
    header(&o, "bytes_received_total", "counter", "Bytes received from clients, by route.");
    for (unsigned id = 0; id < nroutes; id++) {
        tg_scrape_sum_route(rt, id, &rs);
        tg_strbuf_printf(&o, "tollgate_bytes_received_total{%s} %llu\n",
                         tg_metrics_series_labels(TG_METRICS_ROUTE, id),
                         (unsigned long long)rs.bytes_in);
    }
    header(&o, "bytes_sent_total", "counter", "Bytes sent to clients, by route.");
    for (unsigned id = 0; id < nroutes; id++) {
        tg_scrape_sum_route(rt, id, &rs);
        tg_strbuf_printf(&o, "tollgate_bytes_sent_total{%s} %llu\n",
                         tg_metrics_series_labels(TG_METRICS_ROUTE, id),
                         (unsigned long long)rs.bytes_out);
    }

    /* Upstreams. */
    unsigned nup = tg_metrics_series_count(TG_METRICS_UPSTREAM);
    static const struct {
        const char *name, *help;
        size_t off;
    } upc[] = {
        {"upstream_requests_total", "Requests sent to an upstream.",
         offsetof(struct tg_upstream_stats, requests)},
        {"upstream_connect_errors_total", "Failed connections to upstream servers.",
         offsetof(struct tg_upstream_stats, connect_errors)},
        {"upstream_timeouts_total", "Upstream connect, send or read timeouts.",
         offsetof(struct tg_upstream_stats, timeouts)},
        {"upstream_retries_total", "Requests retried on another server.",
         offsetof(struct tg_upstream_stats, retries)},
        {"upstream_failures_total", "Failed attempts (any reason) counted by passive health.",
         offsetof(struct tg_upstream_stats, failures)},
        {"upstream_ejections_total", "Servers taken out of rotation by passive health.",
         offsetof(struct tg_upstream_stats, ejections)},
        {"upstream_queued_total",
         "Requests that waited because every server was at max_connections.",
         offsetof(struct tg_upstream_stats, queued)},
        {"upstream_queue_timeouts_total", "Queued requests answered 503 after connect_timeout.",
         offsetof(struct tg_upstream_stats, queue_timeouts)},
    };
    for (size_t k = 0; k < sizeof(upc) / sizeof(upc[0]); k++) {
        header(&o, upc[k].name, "counter", upc[k].help);
        for (unsigned id = 0; id < nup; id++) {
            uint64_t v = 0;
            for (unsigned w = 0; w < nw; w++) {
                uint64_t *f =
                    (uint64_t *)((char *)&rt->workers[w]->metrics->upstreams[id] + upc[k].off);
                v += LOAD(*f);
            }
            tg_strbuf_printf(&o, "tollgate_%s{%s} %llu\n", upc[k].name,
                             tg_metrics_series_labels(TG_METRICS_UPSTREAM, id),
                             (unsigned long long)v);
        }
    }
    /* Upstream histograms: each a bucket array and a sum in microseconds. */
    static const struct {
        const char *name, *help;
        size_t counts, sum_us;
    } uph[] = {
        {"upstream_response_seconds",
         "Time to first byte: from the start of the upstream attempt (connect or pooled "
         "connection) to the upstream's response head.",
         offsetof(struct tg_upstream_stats, response),
         offsetof(struct tg_upstream_stats, response_us)},
        {"upstream_connect_seconds",
         "Time to open a new upstream connection (TCP connect, and the TLS handshake for a TLS "
         "upstream); pooled connections are not counted.",
         offsetof(struct tg_upstream_stats, connect),
         offsetof(struct tg_upstream_stats, connect_us)},
    };
    for (size_t k = 0; k < sizeof(uph) / sizeof(uph[0]); k++) {
        header(&o, uph[k].name, "histogram", uph[k].help);
        for (unsigned id = 0; id < nup; id++) {
            uint64_t counts[TG_METRICS_MAX_BUCKETS + 1] = {0}, sum = 0;
            for (unsigned w = 0; w < nw; w++) {
                const char *s = (const char *)&rt->workers[w]->metrics->upstreams[id];
                const uint64_t *c = (const uint64_t *)(s + uph[k].counts);
                for (unsigned b = 0; b <= TG_METRICS_MAX_BUCKETS; b++)
                    counts[b] += LOAD(c[b]);
                sum += LOAD(*(const uint64_t *)(s + uph[k].sum_us));
            }
            histogram(&o, uph[k].name, tg_metrics_series_labels(TG_METRICS_UPSTREAM, id), counts,
                      sum);
        }
    }
    header(&o, "upstream_resolve_failures_total", "counter",
           "Failed resolutions of upstream server names (NXDOMAIN, timeout, SERVFAIL), once per "
           "attempt; the last good addresses stay in use. Only upstreams with names "
           "(upstream=\"$tenant\": every tenant's).");
    tg_resolver_failures_each(resolve_failures_line, &o);

    /* Rate limiting. */
    unsigned npol = tg_metrics_series_count(TG_METRICS_POLICY);
    header(&o, "ratelimit_decisions_total", "counter",
           "Rate-limit decisions by policy and result (shadow: a shadow policy would have "
           "refused; near_limit: allowed with under 20% of the burst left).");
    for (unsigned id = 0; id < npol; id++) {
        struct tg_policy_stats ps;
        tg_scrape_sum_policy(rt, id, &ps);
        for (unsigned r = 0; r < TG_RL_RESULTS; r++)
            tg_strbuf_printf(&o, "tollgate_ratelimit_decisions_total{%s,result=\"%s\"} %llu\n",
                             tg_metrics_series_labels(TG_METRICS_POLICY, id),
                             tg_metrics_rl_result_name(r), (unsigned long long)ps.results[r]);
    }
    uint64_t rtrips = 0, rreqs = 0, rerrs = 0, rtimeouts = 0, rdisc = 0, rshort = 0;
    uint64_t moved = 0, asked = 0, tryagain = 0, maps = 0, map_fails = 0, split = 0, partial = 0,
             slot_refunds = 0;
    int up_workers = 0, have_redis = 0;
    for (unsigned w = 0; w < nw; w++) {
        struct tg_ratelimit_redis *r = rt->workers[w]->rl_redis;
        if (r == NULL)
            continue;
        have_redis = 1;
        struct tg_ratelimit_redis_stats st;
        tg_ratelimit_redis_stats(r, &st);
        rtrips += st.round_trips;
        rreqs += st.requests;
        rerrs += st.errors;
        rtimeouts += st.timeouts;
        rdisc += st.disconnects;
        rshort += st.short_circuited;
        moved += st.moved;
        asked += st.asked;
        tryagain += st.tryagain;
        maps += st.refreshes;
        map_fails += st.refresh_failures;
        split += st.split;
        partial += st.partial;
        slot_refunds += st.slot_refunds;
        up_workers += tg_ratelimit_redis_state(r) == TG_REDIS_UP;
    }
    header(&o, "redis_round_trips_total", "counter", "Replies received from Redis.");
    tg_strbuf_printf(&o, "tollgate_redis_round_trips_total %llu\n", (unsigned long long)rtrips);
    header(&o, "redis_ops_total", "counter", "Rate-limit keys decided in Redis.");
    tg_strbuf_printf(&o, "tollgate_redis_ops_total %llu\n", (unsigned long long)rreqs);
    header(&o, "redis_errors_total", "counter", "Redis faults by kind.");
    tg_strbuf_printf(&o, "tollgate_redis_errors_total{kind=\"error\"} %llu\n",
                     (unsigned long long)rerrs);
    tg_strbuf_printf(&o, "tollgate_redis_errors_total{kind=\"timeout\"} %llu\n",
                     (unsigned long long)rtimeouts);
    tg_strbuf_printf(&o, "tollgate_redis_errors_total{kind=\"disconnect\"} %llu\n",
                     (unsigned long long)rdisc);
    tg_strbuf_printf(&o, "tollgate_redis_errors_total{kind=\"short_circuit\"} %llu\n",
                     (unsigned long long)rshort);
    header(&o, "redis_up", "gauge",
           "Workers whose Redis connection is up (of those that use one).");
    tg_strbuf_printf(&o, "tollgate_redis_up %d\n", have_redis ? up_workers : 0);
    header(&o, "redis_gateways", "gauge", "Gateways sharing the rate-limit budget (heartbeats).");
    tg_strbuf_printf(&o, "tollgate_redis_gateways %u\n", tg_ratelimit_redis_gateways());
    header(&o, "redis_cluster_redirects_total", "counter",
           "Redis Cluster replies followed to another node or tried again (MOVED, ASK, "
           "TRYAGAIN).");
    tg_strbuf_printf(&o, "tollgate_redis_cluster_redirects_total{kind=\"moved\"} %llu\n",
                     (unsigned long long)moved);
    tg_strbuf_printf(&o, "tollgate_redis_cluster_redirects_total{kind=\"ask\"} %llu\n",
                     (unsigned long long)asked);
    tg_strbuf_printf(&o, "tollgate_redis_cluster_redirects_total{kind=\"tryagain\"} %llu\n",
                     (unsigned long long)tryagain);
    header(&o, "redis_cluster_map_refreshes_total", "counter",
           "Redis Cluster slot maps read (CLUSTER SLOTS), by result.");
    tg_strbuf_printf(&o, "tollgate_redis_cluster_map_refreshes_total{result=\"ok\"} %llu\n",
                     (unsigned long long)maps);
    tg_strbuf_printf(&o, "tollgate_redis_cluster_map_refreshes_total{result=\"error\"} %llu\n",
                     (unsigned long long)map_fails);
    header(&o, "redis_cluster_split_takes_total", "counter",
           "Rate-limit decisions whose keys were on several Redis Cluster slots.");
    tg_strbuf_printf(&o, "tollgate_redis_cluster_split_takes_total %llu\n",
                     (unsigned long long)split);
    header(&o, "redis_cluster_partial_takes_total", "counter",
           "Split decisions some of whose slots could not be decided (on_error took those).");
    tg_strbuf_printf(&o, "tollgate_redis_cluster_partial_takes_total %llu\n",
                     (unsigned long long)partial);
    header(&o, "redis_cluster_slot_refunds_total", "counter",
           "Slots whose spend was given back because another slot of the decision refused.");
    tg_strbuf_printf(&o, "tollgate_redis_cluster_slot_refunds_total %llu\n",
                     (unsigned long long)slot_refunds);

    /* Connections. */
    unsigned nl = tg_metrics_series_count(TG_METRICS_LISTENER);
    header(&o, "connections_accepted_total", "counter",
           "Client connections accepted, by listener.");
    for (unsigned id = 0; id < nl; id++) {
        uint64_t v = 0;
        SUM_WORKERS(v, listeners[id].accepted);
        tg_strbuf_printf(&o, "tollgate_connections_accepted_total{%s} %llu\n",
                         tg_metrics_series_labels(TG_METRICS_LISTENER, id), (unsigned long long)v);
    }
    header(&o, "connections_active", "gauge", "Open client connections, by listener.");
    for (unsigned id = 0; id < nl; id++) {
        int64_t v = 0;
        SUM_WORKERS(v, listeners[id].active);
        tg_strbuf_printf(&o, "tollgate_connections_active{%s} %lld\n",
                         tg_metrics_series_labels(TG_METRICS_LISTENER, id), (long long)v);
    }

    /* TLS. */
    uint64_t hs = 0, resumed = 0, fails[TG_METRICS_TLS_REASONS] = {0};
    uint64_t geo = 0, local = 0, unknown = 0;
    uint64_t fwd_conflict = 0, fwd_untrusted = 0, pp_refused = 0, unkeyed = 0, overflow = 0;
    uint64_t by_proto[2] = {0}, h2_conns = 0, h2_streams = 0, h2_resets = 0, h2_floods = 0;
    uint64_t zipped[TG_ENC_COUNT] = {0}, zip_in[TG_ENC_COUNT] = {0}, zip_out[TG_ENC_COUNT] = {0};
    for (unsigned w = 0; w < nw; w++) {
        struct tg_metrics_shard *s = rt->workers[w]->metrics;
        hs += LOAD(s->tls_handshakes);
        resumed += LOAD(s->tls_resumed);
        for (unsigned r = 0; r < TG_METRICS_TLS_REASONS; r++)
            fails[r] += LOAD(s->tls_failures[r]);
        geo += LOAD(s->geoip_lookups);
        local += LOAD(s->local_answers);
        unknown += LOAD(s->unknown_host);
        fwd_conflict += LOAD(s->forwarded_conflict);
        fwd_untrusted += LOAD(s->forwarded_untrusted);
        pp_refused += LOAD(s->proxy_protocol_refused);
        unkeyed += LOAD(s->ratelimit_unkeyed);
        overflow += LOAD(s->ratelimit_overflow);
        by_proto[0] += LOAD(s->requests_by_proto[0]);
        by_proto[1] += LOAD(s->requests_by_proto[1]);
        h2_conns += LOAD(s->h2_connections);
        h2_streams += LOAD(s->h2_streams);
        h2_resets += LOAD(s->h2_client_resets);
        h2_floods += LOAD(s->h2_floods);
        for (unsigned e = 0; e < TG_ENC_COUNT; e++) {
            zipped[e] += LOAD(s->compressed[e]);
            zip_in[e] += LOAD(s->compress_in[e]);
            zip_out[e] += LOAD(s->compress_out[e]);
        }
    }
    /* Per encoding: responses, body bytes before and after, and saved (in
     * minus out, never below 0: a body that did not shrink, or one cut
     * short, saved nothing rather than a negative amount). */
    uint64_t zip_saved[TG_ENC_COUNT];
    for (unsigned e = 0; e < TG_ENC_COUNT; e++)
        zip_saved[e] = zip_in[e] > zip_out[e] ? zip_in[e] - zip_out[e] : 0;
    static const struct {
        const char *name, *help;
    } zipc[] = {
        {"compressed_responses_total", "Responses compressed, by encoding."},
        {"compression_bytes_in_total",
         "Body bytes of compressed responses before compression, by encoding."},
        {"compression_bytes_out_total", "Body bytes of compressed responses sent, by encoding."},
        {"compression_bytes_saved_total", "Body bytes compression saved, by encoding."},
    };
    const uint64_t *zipv[] = {zipped, zip_in, zip_out, zip_saved};
    for (size_t k = 0; k < sizeof(zipc) / sizeof(zipc[0]); k++) {
        header(&o, zipc[k].name, "counter", zipc[k].help);
        for (unsigned e = TG_ENC_IDENTITY + 1; e < TG_ENC_COUNT; e++)
            tg_strbuf_printf(&o, "tollgate_%s{encoding=\"%s\"} %llu\n", zipc[k].name,
                             tg_encoding_name(e), (unsigned long long)zipv[k][e]);
    }
    header(&o, "requests_by_protocol_total", "counter", "Requests by client protocol.");
    tg_strbuf_printf(&o, "tollgate_requests_by_protocol_total{protocol=\"HTTP/1.1\"} %llu\n",
                     (unsigned long long)by_proto[0]);
    tg_strbuf_printf(&o, "tollgate_requests_by_protocol_total{protocol=\"HTTP/2\"} %llu\n",
                     (unsigned long long)by_proto[1]);
    header(&o, "http2_connections_total", "counter", "Client connections that spoke HTTP/2.");
    tg_strbuf_printf(&o, "tollgate_http2_connections_total %llu\n", (unsigned long long)h2_conns);
    header(&o, "http2_streams_total", "counter", "HTTP/2 request streams opened by clients.");
    tg_strbuf_printf(&o, "tollgate_http2_streams_total %llu\n", (unsigned long long)h2_streams);
    header(&o, "http2_client_resets_total", "counter", "RST_STREAM frames from HTTP/2 clients.");
    tg_strbuf_printf(&o, "tollgate_http2_client_resets_total %llu\n",
                     (unsigned long long)h2_resets);
    header(&o, "http2_floods_total", "counter",
           "HTTP/2 connections sent away (GOAWAY ENHANCE_YOUR_CALM) for a control-frame flood "
           "or Rapid Reset.");
    tg_strbuf_printf(&o, "tollgate_http2_floods_total %llu\n", (unsigned long long)h2_floods);
    header(&o, "sse_streams_open", "gauge",
           "Server-Sent Events answers (text/event-stream) streaming to clients now.");
    tg_strbuf_printf(&o, "tollgate_sse_streams_open %lld\n", (long long)tg_scrape_sse_open(rt));
    header(&o, "tls_handshakes_total", "counter", "Completed TLS handshakes with clients.");
    tg_strbuf_printf(&o, "tollgate_tls_handshakes_total{resumed=\"false\"} %llu\n",
                     (unsigned long long)(hs - resumed));
    tg_strbuf_printf(&o, "tollgate_tls_handshakes_total{resumed=\"true\"} %llu\n",
                     (unsigned long long)resumed);
    header(&o, "tls_handshake_failures_total", "counter", "Failed TLS handshakes by reason.");
    for (unsigned r = 0; r < TG_METRICS_TLS_REASONS; r++)
        tg_strbuf_printf(&o, "tollgate_tls_handshake_failures_total{reason=\"%s\"} %llu\n",
                         tg_metrics_tls_reason_name(r), (unsigned long long)fails[r]);

    unsigned long hchecks, hdown;
    tg_health_counts(&hchecks, &hdown);
    header(&o, "health_checks_total", "counter", "Active health checks run.");
    tg_strbuf_printf(&o, "tollgate_health_checks_total %lu\n", hchecks);
    header(&o, "upstream_servers_down", "gauge", "Servers active health checks marked down.");
    tg_strbuf_printf(&o, "tollgate_upstream_servers_down %lu\n", hdown);
    header(&o, "geoip_lookups_total", "counter", "GeoIP database look-ups.");
    tg_strbuf_printf(&o, "tollgate_geoip_lookups_total %llu\n", (unsigned long long)geo);
    render_cache(&o, rt, nw);
    header(&o, "local_answers_total", "counter",
           "Answers made by the gateway itself (errors, refusals, redirects).");
    tg_strbuf_printf(&o, "tollgate_local_answers_total %llu\n", (unsigned long long)local);
    header(&o, "unknown_host_total", "counter", "Requests for a Host no site serves.");
    tg_strbuf_printf(&o, "tollgate_unknown_host_total %llu\n", (unsigned long long)unknown);
    header(&o, "forwarded_conflicts_total", "counter",
           "Requests refused because X-Forwarded-For and Forwarded name different clients.");
    tg_strbuf_printf(&o, "tollgate_forwarded_conflicts_total %llu\n",
                     (unsigned long long)fwd_conflict);
    header(&o, "forwarded_untrusted_total", "counter",
           "Forwarded headers from a private peer not in trusted_proxies, on a route that "
           "allows only private addresses (set trusted_proxies if it is your proxy).");
    tg_strbuf_printf(&o, "tollgate_forwarded_untrusted_total %llu\n",
                     (unsigned long long)fwd_untrusted);
    header(&o, "proxy_protocol_refused_total", "counter",
           "Connections refused on a PROXY protocol listener: the peer is not in "
           "trusted_proxies.");
    tg_strbuf_printf(&o, "tollgate_proxy_protocol_refused_total %llu\n",
                     (unsigned long long)pp_refused);
    header(&o, "ratelimit_unkeyed_total", "counter",
           "Requests refused (400/413) because a rate-limit key could not be read from the "
           "body.");
    tg_strbuf_printf(&o, "tollgate_ratelimit_unkeyed_total %llu\n", (unsigned long long)unkeyed);
    header(&o, "ratelimit_overflow_total", "counter",
           "Decisions made on a policy's shared overflow bucket (the local table was full of "
           "locked keys).");
    tg_strbuf_printf(&o, "tollgate_ratelimit_overflow_total %llu\n", (unsigned long long)overflow);

    /* Tenant directory caches. */
    struct tg_tenant_stats ts = {0};
    for (unsigned w = 0; w < nw; w++) {
        if (rt->workers[w]->tenants == NULL)
            continue;
        struct tg_tenant_stats one;
        tg_tenant_dir_stats(rt->workers[w]->tenants, &one);
        ts.hits += one.hits;
        ts.misses += one.misses;
        ts.negative_hits += one.negative_hits;
        ts.stale_served += one.stale_served;
        ts.shared_taken += one.shared_taken;
        ts.activations += one.activations;
        ts.activated += one.activated;
        ts.activation_timeouts += one.activation_timeouts;
        ts.activation_refused += one.activation_refused;
        ts.redis_errors += one.redis_errors;
        ts.invalidations += one.invalidations;
        ts.redis_lookups += one.redis_lookups;
        ts.cached += one.cached;
        ts.memory += one.memory;
    }
    header(&o, "tenant_cache_total", "counter", "Tenant directory look-ups by outcome.");
    tg_strbuf_printf(&o, "tollgate_tenant_cache_total{result=\"hit\"} %llu\n",
                     (unsigned long long)ts.hits);
    tg_strbuf_printf(&o, "tollgate_tenant_cache_total{result=\"miss\"} %llu\n",
                     (unsigned long long)ts.misses);
    tg_strbuf_printf(&o, "tollgate_tenant_cache_total{result=\"negative\"} %llu\n",
                     (unsigned long long)ts.negative_hits);
    tg_strbuf_printf(&o, "tollgate_tenant_cache_total{result=\"stale\"} %llu\n",
                     (unsigned long long)ts.stale_served);
    header(&o, "tenant_shared_taken_total", "counter",
           "Tenants a worker had no usable entry for while Redis failed, taken from what "
           "another worker fetched.");
    tg_strbuf_printf(&o, "tollgate_tenant_shared_taken_total %llu\n",
                     (unsigned long long)ts.shared_taken);
    header(&o, "tenant_activation_messages_total", "counter",
           "Activation messages asked for (placing, archived or unknown tenants; the fleet sends "
           "one per tenant per activation.timeout).");
    tg_strbuf_printf(&o, "tollgate_tenant_activation_messages_total %llu\n",
                     (unsigned long long)ts.activations);
    header(&o, "tenant_activation_requests_total", "counter",
           "Requests that waited for their tenant's placement, by how it ended.");
    tg_strbuf_printf(&o, "tollgate_tenant_activation_requests_total{result=\"placed\"} %llu\n",
                     (unsigned long long)ts.activated);
    tg_strbuf_printf(&o, "tollgate_tenant_activation_requests_total{result=\"timeout\"} %llu\n",
                     (unsigned long long)ts.activation_timeouts);
    tg_strbuf_printf(&o, "tollgate_tenant_activation_requests_total{result=\"refused\"} %llu\n",
                     (unsigned long long)ts.activation_refused);
    header(&o, "tenant_shared_entries", "gauge",
           "Last-known tenant directory entries kept for all workers.");
    tg_strbuf_printf(&o, "tollgate_tenant_shared_entries %zu\n",
                     tg_tenant_shared_count(rt->tenant_shared));
    header(&o, "tenant_cache_entries", "gauge", "Tenants cached, all workers.");
    tg_strbuf_printf(&o, "tollgate_tenant_cache_entries %zu\n", ts.cached);
    header(&o, "tenant_cache_memory_bytes", "gauge",
           "Bytes the tenant caches hold (entries, tenants, buckets), all workers.");
    tg_strbuf_printf(&o, "tollgate_tenant_cache_memory_bytes %zu\n", ts.memory);
    header(&o, "tenant_redis_lookups_total", "counter", "Tenant look-ups sent to Redis.");
    tg_strbuf_printf(&o, "tollgate_tenant_redis_lookups_total %llu\n",
                     (unsigned long long)ts.redis_lookups);
    header(&o, "tenant_redis_errors_total", "counter", "Tenant look-ups Redis failed to answer.");
    tg_strbuf_printf(&o, "tollgate_tenant_redis_errors_total %llu\n",
                     (unsigned long long)ts.redis_errors);
    header(&o, "tenant_invalidations_total", "counter",
           "Tenant change messages received from Redis (each empties entries).");
    tg_strbuf_printf(&o, "tollgate_tenant_invalidations_total %llu\n",
                     (unsigned long long)ts.invalidations);

    if (render_tenants(&o, rt) < 0)
        o.oom = true;

    /* Certificates tls.acme manages. */
    tg_acme_metrics(&o);

    /* Process. */
    uint64_t reloads_ok, reloads_failed;
    double last_reload;
    tg_metrics_reloads(&reloads_ok, &reloads_failed, &last_reload);
    header(&o, "config_reloads_total", "counter", "Configuration reloads by result.");
    tg_strbuf_printf(&o, "tollgate_config_reloads_total{result=\"success\"} %llu\n",
                     (unsigned long long)reloads_ok);
    tg_strbuf_printf(&o, "tollgate_config_reloads_total{result=\"failure\"} %llu\n",
                     (unsigned long long)reloads_failed);
    header(&o, "config_last_reload_timestamp_seconds", "gauge",
           "When the running configuration was loaded (Unix time).");
    tg_strbuf_printf(&o, "tollgate_config_last_reload_timestamp_seconds %.3f\n", last_reload);
    header(&o, "access_log_dropped_total", "counter",
           "Access-log lines dropped because the writer could not keep up.");
    tg_strbuf_printf(&o, "tollgate_access_log_dropped_total %llu\n",
                     (unsigned long long)tg_access_log_dropped());
    put_trace_export(&o);
    header(&o, "workers", "gauge", "Worker threads.");
    tg_strbuf_printf(&o, "tollgate_workers %u\n", nw);

    if (o.oom) {
        tg_strbuf_free(&o);
        return -1;
    }
    *outp = o.p;
    *lenp = o.n;
    return 0;
}
