/* Metrics registry, per-worker shards, Prometheus text rendering.
 *
 * Workers bump their own counters with relaxed atomic stores (a plain
 * load-add-store: one writer per counter, so no lock prefix is needed);
 * the renderer sums every worker's shard with relaxed loads. */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access_log.h"
#include "config.h"
#include "health.h"
#include "ratelimit_redis.h"
#include "redis.h"
#include "tenant.h"
#include "worker.h"

/* ---- registry of label values ---------------------------------------------- */

static const unsigned max_series[TG_METRICS_KINDS] = {
    TG_METRICS_MAX_ROUTES, TG_METRICS_MAX_UPSTREAMS, TG_METRICS_MAX_POLICIES,
    TG_METRICS_MAX_LISTENERS,
};

static struct {
    pthread_mutex_t lock;
    char **labels[TG_METRICS_KINDS];   /* escaped label sets, e.g. site="a",route="/" */
    _Atomic unsigned count[TG_METRICS_KINDS];
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

static _Atomic uint64_t reloads_ok, reloads_failed;
static _Atomic double last_reload;

/* Appends a label value escaped for the exposition format. */
static size_t escape_label(char *out, size_t cap, const char *v)
{
    size_t o = 0;
    for (; *v && o + 2 < cap; v++) {
        if (*v == '\\' || *v == '"') {
            out[o++] = '\\';
            out[o++] = *v;
        } else if (*v == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *v;
        }
    }
    out[o] = '\0';
    return o;
}

/* Returns the series id for a label set, registering it if new; the last
 * id of each kind is the shared overflow series. */
static unsigned series_id(enum tg_metrics_kind kind, const char *labels)
{
    pthread_mutex_lock(&reg.lock);
    unsigned n = atomic_load(&reg.count[kind]);
    for (unsigned i = 0; i < n; i++) {
        if (strcmp(reg.labels[kind][i], labels) == 0) {
            pthread_mutex_unlock(&reg.lock);
            return i;
        }
    }
    unsigned id = max_series[kind];
    if (reg.labels[kind] == NULL)
        reg.labels[kind] = calloc(max_series[kind], sizeof(char *));
    if (reg.labels[kind] != NULL && n < max_series[kind]) {
        reg.labels[kind][n] = strdup(labels);
        if (reg.labels[kind][n] != NULL) {
            id = n;
            atomic_store(&reg.count[kind], n + 1);
        }
    }
    pthread_mutex_unlock(&reg.lock);
    return id;
}

unsigned tg_metrics_no_route(void)
{
    static _Atomic unsigned id = UINT32_MAX;
    unsigned v = atomic_load(&id);
    if (v == UINT32_MAX) {
        v = series_id(TG_METRICS_ROUTE, "site=\"\",route=\"\"");
        atomic_store(&id, v);
    }
    return v;
}

void tg_metrics_assign(struct tg_config *cfg)
{
    char labels[1024], a[400], b[400];
    tg_metrics_no_route();
    for (size_t s = 0; s < cfg->nsites; s++) {
        struct tg_config_site *site = &cfg->sites[s];
        escape_label(a, sizeof(a), site->hosts[0]);
        for (size_t r = 0; r < site->nroutes; r++) {
            escape_label(b, sizeof(b), site->routes[r].path);
            snprintf(labels, sizeof(labels), "site=\"%s\",route=\"%s\"", a, b);
            site->routes[r].metrics_id = series_id(TG_METRICS_ROUTE, labels);
        }
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        escape_label(a, sizeof(a), cfg->upstreams[i].name);
        snprintf(labels, sizeof(labels), "upstream=\"%s\"", a);
        cfg->upstreams[i].metrics_id = series_id(TG_METRICS_UPSTREAM, labels);
    }
    /* All tenants share one upstream series: tenant ids are unbounded. */
    snprintf(labels, sizeof(labels), "upstream=\"$tenant\"");
    cfg->tenants.upstream_defaults.metrics_id = series_id(TG_METRICS_UPSTREAM, labels);
    for (size_t i = 0; i < cfg->rate_limit.npolicies; i++) {
        escape_label(a, sizeof(a), cfg->rate_limit.policies[i].name);
        snprintf(labels, sizeof(labels), "policy=\"%s\"", a);
        cfg->rate_limit.policies[i].metrics_id = series_id(TG_METRICS_POLICY, labels);
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        escape_label(a, sizeof(a), cfg->listeners[i].key);
        snprintf(labels, sizeof(labels), "listener=\"%s\"", a);
        cfg->listeners[i].metrics_id = series_id(TG_METRICS_LISTENER, labels);
    }
}

/* ---- shards --------------------------------------------------------------- */

struct tg_metrics_shard *tg_metrics_shard_new(void)
{
    struct tg_metrics_shard *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->routes = calloc(TG_METRICS_MAX_ROUTES + 1, sizeof(*s->routes));
    s->upstreams = calloc(TG_METRICS_MAX_UPSTREAMS + 1, sizeof(*s->upstreams));
    s->policies = calloc(TG_METRICS_MAX_POLICIES + 1, sizeof(*s->policies));
    s->listeners = calloc(TG_METRICS_MAX_LISTENERS + 1, sizeof(*s->listeners));
    if (s->routes == NULL || s->upstreams == NULL || s->policies == NULL ||
        s->listeners == NULL) {
        tg_metrics_shard_free(s);
        return NULL;
    }
    return s;
}

void tg_metrics_shard_free(struct tg_metrics_shard *s)
{
    if (s == NULL)
        return;
    free(s->routes);
    free(s->upstreams);
    free(s->policies);
    free(s->listeners);
    free(s);
}

static const char *const tls_reasons[TG_METRICS_TLS_REASONS] = {
    "protocol", "no_shared_cipher", "unknown_ca", "bad_cert", "cert_required",
    "eof", "syscall", "timeout", "other",
};

unsigned tg_metrics_tls_reason(const char *reason)
{
    for (unsigned i = 0; i < TG_METRICS_TLS_REASONS; i++)
        if (reason != NULL && strcmp(reason, tls_reasons[i]) == 0)
            return i;
    return TG_METRICS_TLS_REASONS - 1;
}

static const double buckets[TG_METRICS_NBUCKETS] = {
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

unsigned tg_metrics_bucket(double seconds)
{
    unsigned i = 0;
    while (i < TG_METRICS_NBUCKETS && seconds > buckets[i])
        i++;
    return i;
}

void tg_metrics_reload(bool ok, double when)
{
    if (ok) {
        atomic_fetch_add(&reloads_ok, 1);
        atomic_store(&last_reload, when);
    } else {
        atomic_fetch_add(&reloads_failed, 1);
    }
}

/* ---- rendering ------------------------------------------------------------- */

struct out {
    char *p;
    size_t n, cap;
    bool oom;
};

static void emit(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(struct out *o, const char *fmt, ...)
{
    if (o->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(o->p + o->n, o->cap - o->n, fmt, ap);
        va_end(ap);
        if (w < 0) {
            o->oom = true;
            return;
        }
        if ((size_t)w < o->cap - o->n) {
            o->n += (size_t)w;
            return;
        }
        size_t ncap = o->cap * 2 + (size_t)w;
        char *np = realloc(o->p, ncap);
        if (np == NULL) {
            o->oom = true;
            return;
        }
        o->p = np;
        o->cap = ncap;
    }
}

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

static void header(struct out *o, const char *name, const char *type, const char *help)
{
    emit(o, "# HELP tollgate_%s %s\n# TYPE tollgate_%s %s\n", name, help, name, type);
}

static const char *series_labels(enum tg_metrics_kind kind, unsigned id)
{
    if (id >= atomic_load(&reg.count[kind]))
        return kind == TG_METRICS_ROUTE ? "site=\"_other\",route=\"_other\"" : "_other=\"1\"";
    return reg.labels[kind][id];
}

static void histogram(struct out *o, const char *name, const char *labels,
                      const uint64_t *counts, uint64_t sum_us)
{
    uint64_t cum = 0;
    for (unsigned b = 0; b <= TG_METRICS_NBUCKETS; b++) {
        cum += counts[b];
        if (b < TG_METRICS_NBUCKETS)
            emit(o, "tollgate_%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, buckets[b],
                 (unsigned long long)cum);
        else
            emit(o, "tollgate_%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels,
                 (unsigned long long)cum);
    }
    emit(o, "tollgate_%s_sum{%s} %.6f\n", name, labels, (double)sum_us / 1e6);
    emit(o, "tollgate_%s_count{%s} %llu\n", name, labels, (unsigned long long)cum);
}

int tg_metrics_render(struct tg_runtime *rt, char **outp, size_t *lenp)
{
    struct out o = {malloc(65536), 0, 65536, false};
    if (o.p == NULL)
        return -1;
    unsigned nw = rt->nworkers;

    /* Routes: requests by status class, durations, bytes. */
    static const char *const classes[6] = {"aborted", "1xx", "2xx", "3xx", "4xx", "5xx"};
    unsigned nroutes = atomic_load(&reg.count[TG_METRICS_ROUTE]);
    header(&o, "requests_total", "counter", "Requests by site, route and status class.");
    for (unsigned id = 0; id < nroutes; id++) {
        for (int c = 0; c < 6; c++) {
            uint64_t v = 0;
            for (unsigned w = 0; w < nw; w++)
                v += LOAD(rt->workers[w]->metrics->routes[id].requests[c]);
            emit(&o, "tollgate_requests_total{%s,code=\"%s\"} %llu\n",
                 series_labels(TG_METRICS_ROUTE, id), classes[c], (unsigned long long)v);
        }
    }
    header(&o, "request_duration_seconds", "histogram",
           "Time from the first byte of the request head to the end of the answer.");
    for (unsigned id = 0; id < nroutes; id++) {
        uint64_t counts[TG_METRICS_NBUCKETS + 1] = {0}, sum = 0;
        for (unsigned w = 0; w < nw; w++) {
            struct tg_route_stats *s = &rt->workers[w]->metrics->routes[id];
            for (unsigned b = 0; b <= TG_METRICS_NBUCKETS; b++)
                counts[b] += LOAD(s->duration[b]);
            sum += LOAD(s->duration_us);
        }
        histogram(&o, "request_duration_seconds", series_labels(TG_METRICS_ROUTE, id), counts,
                  sum);
    }
    header(&o, "bytes_received_total", "counter", "Bytes received from clients, by route.");
    for (unsigned id = 0; id < nroutes; id++) {
        uint64_t v = 0;
        for (unsigned w = 0; w < nw; w++)
            v += LOAD(rt->workers[w]->metrics->routes[id].bytes_in);
        emit(&o, "tollgate_bytes_received_total{%s} %llu\n",
             series_labels(TG_METRICS_ROUTE, id), (unsigned long long)v);
    }
    header(&o, "bytes_sent_total", "counter", "Bytes sent to clients, by route.");
    for (unsigned id = 0; id < nroutes; id++) {
        uint64_t v = 0;
        for (unsigned w = 0; w < nw; w++)
            v += LOAD(rt->workers[w]->metrics->routes[id].bytes_out);
        emit(&o, "tollgate_bytes_sent_total{%s} %llu\n", series_labels(TG_METRICS_ROUTE, id),
             (unsigned long long)v);
    }

    /* Upstreams. */
    unsigned nup = atomic_load(&reg.count[TG_METRICS_UPSTREAM]);
    static const struct {
        const char *name, *help;
        size_t off;
    } upc[] = {
        {"upstream_requests_total", "Requests sent to an upstream.", offsetof(struct tg_upstream_stats, requests)},
        {"upstream_connect_errors_total", "Failed connections to upstream servers.", offsetof(struct tg_upstream_stats, connect_errors)},
        {"upstream_timeouts_total", "Upstream connect, send or read timeouts.", offsetof(struct tg_upstream_stats, timeouts)},
        {"upstream_retries_total", "Requests retried on another server.", offsetof(struct tg_upstream_stats, retries)},
        {"upstream_failures_total", "Failed attempts (any reason) counted by passive health.", offsetof(struct tg_upstream_stats, failures)},
        {"upstream_ejections_total", "Servers taken out of rotation by passive health.", offsetof(struct tg_upstream_stats, ejections)},
        {"upstream_queued_total", "Requests that waited because every server was at max_connections.", offsetof(struct tg_upstream_stats, queued)},
        {"upstream_queue_timeouts_total", "Queued requests answered 503 after connect_timeout.", offsetof(struct tg_upstream_stats, queue_timeouts)},
    };
    for (size_t k = 0; k < sizeof(upc) / sizeof(upc[0]); k++) {
        header(&o, upc[k].name, "counter", upc[k].help);
        for (unsigned id = 0; id < nup; id++) {
            uint64_t v = 0;
            for (unsigned w = 0; w < nw; w++) {
                uint64_t *f = (uint64_t *)((char *)&rt->workers[w]->metrics->upstreams[id] +
                                           upc[k].off);
                v += LOAD(*f);
            }
            emit(&o, "tollgate_%s{%s} %llu\n", upc[k].name,
                 series_labels(TG_METRICS_UPSTREAM, id), (unsigned long long)v);
        }
    }
    header(&o, "upstream_response_seconds", "histogram",
           "Time from sending the request to the upstream's response head.");
    for (unsigned id = 0; id < nup; id++) {
        uint64_t counts[TG_METRICS_NBUCKETS + 1] = {0}, sum = 0;
        for (unsigned w = 0; w < nw; w++) {
            struct tg_upstream_stats *s = &rt->workers[w]->metrics->upstreams[id];
            for (unsigned b = 0; b <= TG_METRICS_NBUCKETS; b++)
                counts[b] += LOAD(s->response[b]);
            sum += LOAD(s->response_us);
        }
        histogram(&o, "upstream_response_seconds", series_labels(TG_METRICS_UPSTREAM, id),
                  counts, sum);
    }

    /* Rate limiting. */
    static const char *const results[TG_RL_RESULTS] = {"allowed", "limited", "shadow", "error",
                                                       "near_limit"};
    unsigned npol = atomic_load(&reg.count[TG_METRICS_POLICY]);
    header(&o, "ratelimit_decisions_total", "counter",
           "Rate-limit decisions by policy and result (shadow: a shadow policy would have "
           "refused; near_limit: allowed with under 20% of the burst left).");
    for (unsigned id = 0; id < npol; id++) {
        for (int r = 0; r < TG_RL_RESULTS; r++) {
            uint64_t v = 0;
            for (unsigned w = 0; w < nw; w++)
                v += LOAD(rt->workers[w]->metrics->policies[id].results[r]);
            emit(&o, "tollgate_ratelimit_decisions_total{%s,result=\"%s\"} %llu\n",
                 series_labels(TG_METRICS_POLICY, id), results[r], (unsigned long long)v);
        }
    }
    uint64_t rtrips = 0, rreqs = 0, rerrs = 0, rtimeouts = 0, rdisc = 0, rshort = 0;
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
        up_workers += tg_ratelimit_redis_state(r) == TG_REDIS_UP;
    }
    header(&o, "redis_round_trips_total", "counter", "Replies received from Redis.");
    emit(&o, "tollgate_redis_round_trips_total %llu\n", (unsigned long long)rtrips);
    header(&o, "redis_ops_total", "counter", "Rate-limit keys decided in Redis.");
    emit(&o, "tollgate_redis_ops_total %llu\n", (unsigned long long)rreqs);
    header(&o, "redis_errors_total", "counter", "Redis faults by kind.");
    emit(&o, "tollgate_redis_errors_total{kind=\"error\"} %llu\n", (unsigned long long)rerrs);
    emit(&o, "tollgate_redis_errors_total{kind=\"timeout\"} %llu\n", (unsigned long long)rtimeouts);
    emit(&o, "tollgate_redis_errors_total{kind=\"disconnect\"} %llu\n", (unsigned long long)rdisc);
    emit(&o, "tollgate_redis_errors_total{kind=\"short_circuit\"} %llu\n", (unsigned long long)rshort);
    header(&o, "redis_up", "gauge", "Workers whose Redis connection is up (of those that use one).");
    emit(&o, "tollgate_redis_up %d\n", have_redis ? up_workers : 0);
    header(&o, "redis_gateways", "gauge", "Gateways sharing the rate-limit budget (heartbeats).");
    emit(&o, "tollgate_redis_gateways %u\n", tg_ratelimit_redis_gateways());

    /* Connections. */
    unsigned nl = atomic_load(&reg.count[TG_METRICS_LISTENER]);
    header(&o, "connections_accepted_total", "counter", "Client connections accepted, by listener.");
    for (unsigned id = 0; id < nl; id++) {
        uint64_t v = 0;
        for (unsigned w = 0; w < nw; w++)
            v += LOAD(rt->workers[w]->metrics->listeners[id].accepted);
        emit(&o, "tollgate_connections_accepted_total{%s} %llu\n",
             series_labels(TG_METRICS_LISTENER, id), (unsigned long long)v);
    }
    header(&o, "connections_active", "gauge", "Open client connections, by listener.");
    for (unsigned id = 0; id < nl; id++) {
        int64_t v = 0;
        for (unsigned w = 0; w < nw; w++)
            v += LOAD(rt->workers[w]->metrics->listeners[id].active);
        emit(&o, "tollgate_connections_active{%s} %lld\n", series_labels(TG_METRICS_LISTENER, id),
             (long long)v);
    }

    /* TLS. */
    uint64_t hs = 0, resumed = 0, fails[TG_METRICS_TLS_REASONS] = {0};
    uint64_t geo = 0, local = 0, unknown = 0;
    uint64_t fwd_conflict = 0, fwd_untrusted = 0, pp_refused = 0, unkeyed = 0, overflow = 0;
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
    }
    header(&o, "tls_handshakes_total", "counter", "Completed TLS handshakes with clients.");
    emit(&o, "tollgate_tls_handshakes_total{resumed=\"false\"} %llu\n",
         (unsigned long long)(hs - resumed));
    emit(&o, "tollgate_tls_handshakes_total{resumed=\"true\"} %llu\n", (unsigned long long)resumed);
    header(&o, "tls_handshake_failures_total", "counter", "Failed TLS handshakes by reason.");
    for (unsigned r = 0; r < TG_METRICS_TLS_REASONS; r++)
        emit(&o, "tollgate_tls_handshake_failures_total{reason=\"%s\"} %llu\n", tls_reasons[r],
             (unsigned long long)fails[r]);

    unsigned long hchecks, hdown;
    tg_health_counts(&hchecks, &hdown);
    header(&o, "health_checks_total", "counter", "Active health checks run.");
    emit(&o, "tollgate_health_checks_total %lu\n", hchecks);
    header(&o, "upstream_servers_down", "gauge", "Servers active health checks marked down.");
    emit(&o, "tollgate_upstream_servers_down %lu\n", hdown);
    header(&o, "geoip_lookups_total", "counter", "GeoIP database look-ups.");
    emit(&o, "tollgate_geoip_lookups_total %llu\n", (unsigned long long)geo);
    header(&o, "local_answers_total", "counter",
           "Answers made by the gateway itself (errors, refusals, redirects).");
    emit(&o, "tollgate_local_answers_total %llu\n", (unsigned long long)local);
    header(&o, "unknown_host_total", "counter", "Requests for a Host no site serves.");
    emit(&o, "tollgate_unknown_host_total %llu\n", (unsigned long long)unknown);
    header(&o, "forwarded_conflicts_total", "counter",
           "Requests refused because X-Forwarded-For and Forwarded name different clients.");
    emit(&o, "tollgate_forwarded_conflicts_total %llu\n", (unsigned long long)fwd_conflict);
    header(&o, "forwarded_untrusted_total", "counter",
           "Forwarded headers from a private peer not in trusted_proxies, on a route that "
           "allows only private addresses (set trusted_proxies if it is your proxy).");
    emit(&o, "tollgate_forwarded_untrusted_total %llu\n", (unsigned long long)fwd_untrusted);
    header(&o, "proxy_protocol_refused_total", "counter",
           "Connections refused on a PROXY protocol listener: the peer is not in "
           "trusted_proxies.");
    emit(&o, "tollgate_proxy_protocol_refused_total %llu\n", (unsigned long long)pp_refused);
    header(&o, "ratelimit_unkeyed_total", "counter",
           "Requests refused (400/413) because a rate-limit key could not be read from the "
           "body.");
    emit(&o, "tollgate_ratelimit_unkeyed_total %llu\n", (unsigned long long)unkeyed);
    header(&o, "ratelimit_overflow_total", "counter",
           "Decisions made on a policy's shared overflow bucket (the local table was full of "
           "locked keys).");
    emit(&o, "tollgate_ratelimit_overflow_total %llu\n", (unsigned long long)overflow);

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
        ts.redis_errors += one.redis_errors;
        ts.invalidations += one.invalidations;
        ts.cached += one.cached;
    }
    header(&o, "tenant_cache_total", "counter", "Tenant directory look-ups by outcome.");
    emit(&o, "tollgate_tenant_cache_total{result=\"hit\"} %llu\n", (unsigned long long)ts.hits);
    emit(&o, "tollgate_tenant_cache_total{result=\"miss\"} %llu\n", (unsigned long long)ts.misses);
    emit(&o, "tollgate_tenant_cache_total{result=\"negative\"} %llu\n",
         (unsigned long long)ts.negative_hits);
    emit(&o, "tollgate_tenant_cache_total{result=\"stale\"} %llu\n",
         (unsigned long long)ts.stale_served);
    header(&o, "tenant_cache_entries", "gauge", "Tenants cached, all workers.");
    emit(&o, "tollgate_tenant_cache_entries %zu\n", ts.cached);

    /* Process. */
    header(&o, "config_reloads_total", "counter", "Configuration reloads by result.");
    emit(&o, "tollgate_config_reloads_total{result=\"success\"} %llu\n",
         (unsigned long long)atomic_load(&reloads_ok));
    emit(&o, "tollgate_config_reloads_total{result=\"failure\"} %llu\n",
         (unsigned long long)atomic_load(&reloads_failed));
    header(&o, "config_last_reload_timestamp_seconds", "gauge",
           "When the running configuration was loaded (Unix time).");
    emit(&o, "tollgate_config_last_reload_timestamp_seconds %.3f\n", atomic_load(&last_reload));
    header(&o, "access_log_dropped_total", "counter",
           "Access-log lines dropped because the writer could not keep up.");
    emit(&o, "tollgate_access_log_dropped_total %llu\n",
         (unsigned long long)tg_access_log_dropped());
    header(&o, "workers", "gauge", "Worker threads.");
    emit(&o, "tollgate_workers %u\n", nw);

    if (o.oom) {
        free(o.p);
        return -1;
    }
    *outp = o.p;
    *lenp = o.n;
    return 0;
}
