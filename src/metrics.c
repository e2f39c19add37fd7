/* Metrics registry, per-worker shards, Prometheus text rendering.
 *
 * Workers bump their own counters with relaxed atomic stores (a plain
 * load-add-store: one writer per counter, so no lock prefix is needed);
 * the renderer sums every worker's shard with relaxed loads. */
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"

/* ---- registry of label values ---------------------------------------------- */

static const unsigned max_series[TG_METRICS_KINDS] = {
    TG_METRICS_MAX_ROUTES,
    TG_METRICS_MAX_UPSTREAMS,
    TG_METRICS_MAX_POLICIES,
    TG_METRICS_MAX_LISTENERS,
};

static struct {
    pthread_mutex_t lock;
    char **labels[TG_METRICS_KINDS]; /* escaped label sets, e.g. site="a",route="/" */
    _Atomic unsigned count[TG_METRICS_KINDS];
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER};

static _Atomic uint64_t reloads_ok, reloads_failed;
static _Atomic double last_reload;
static _Atomic double started_at; /* the first load, at start */

/* Appends a label value escaped for the exposition format. */
size_t tg_metrics_escape_label(char *out, size_t cap, const char *v)
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

/* The id of a fixed label set, registered on first use (any thread: two
 * first uses register the same set once). */
static unsigned fixed_series(_Atomic unsigned *id, const char *labels)
{
    unsigned v = atomic_load(id);
    if (v == UINT32_MAX) {
        v = series_id(TG_METRICS_ROUTE, labels);
        atomic_store(id, v);
    }
    return v;
}

unsigned tg_metrics_no_route(void)
{
    static _Atomic unsigned id = UINT32_MAX;
    return fixed_series(&id, "site=\"\",route=\"\"");
}

unsigned tg_metrics_admin_route(void)
{
    static _Atomic unsigned id = UINT32_MAX;
    return fixed_series(&id, "site=\"_admin\",route=\"\"");
}

static void assign_buckets(const struct tg_config *cfg);
static bool buckets_set; /* the first configuration was seen */

void tg_metrics_assign(struct tg_config *cfg)
{
    char labels[1024], a[400], b[400];
    assign_buckets(cfg);
    buckets_set = true;
    tg_metrics_no_route();
    tg_metrics_admin_route();
    for (size_t s = 0; s < cfg->nsites; s++) {
        struct tg_config_site *site = &cfg->sites[s];
        tg_metrics_escape_label(a, sizeof(a), site->hosts[0]);
        for (size_t r = 0; r < site->nroutes; r++) {
            tg_metrics_escape_label(b, sizeof(b), site->routes[r].path);
            snprintf(labels, sizeof(labels), "site=\"%s\",route=\"%s\"", a, b);
            site->routes[r].metrics_id = series_id(TG_METRICS_ROUTE, labels);
        }
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        tg_metrics_escape_label(a, sizeof(a), cfg->upstreams[i].name);
        snprintf(labels, sizeof(labels), "upstream=\"%s\"", a);
        cfg->upstreams[i].metrics_id = series_id(TG_METRICS_UPSTREAM, labels);
    }
    /* All tenants share one upstream series: tenant ids are unbounded. */
    snprintf(labels, sizeof(labels), "upstream=\"$tenant\"");
    cfg->tenants.upstream_defaults.metrics_id = series_id(TG_METRICS_UPSTREAM, labels);
    for (size_t i = 0; i < cfg->rate_limit.npolicies; i++) {
        tg_metrics_escape_label(a, sizeof(a), cfg->rate_limit.policies[i].name);
        snprintf(labels, sizeof(labels), "policy=\"%s\"", a);
        cfg->rate_limit.policies[i].metrics_id = series_id(TG_METRICS_POLICY, labels);
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        tg_metrics_escape_label(a, sizeof(a), cfg->listeners[i].key);
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
    if (s->routes == NULL || s->upstreams == NULL || s->policies == NULL || s->listeners == NULL) {
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
    "eof",      "syscall",          "timeout",    "other",
};

static const char *const status_classes[TG_METRICS_STATUS_CLASSES] = {
    "aborted", "1xx", "2xx", "3xx", "4xx", "5xx",
};

static const char *const rl_results[TG_RL_RESULTS] = {
    "allowed", "limited", "shadow", "error", "near_limit",
};

const char *tg_metrics_status_class_name(unsigned c)
{
    return status_classes[c];
}

const char *tg_metrics_rl_result_name(unsigned r)
{
    return rl_results[r];
}

unsigned tg_metrics_tls_reason(const char *reason)
{
    for (unsigned i = 0; i < TG_METRICS_TLS_REASONS; i++)
        if (reason != NULL && strcmp(reason, tls_reasons[i]) == 0)
            return i;
    return TG_METRICS_TLS_REASONS - 1;
}

/* Set by the first configuration (before any worker runs) and never
 * changed after: counts already taken belong to these bounds. */
static double buckets[TG_METRICS_MAX_BUCKETS] = {
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};
static unsigned nbuckets = 12;
_Static_assert(sizeof(((struct tg_config *)0)->histogram_buckets_ms) / sizeof(int64_t) <=
                   TG_METRICS_MAX_BUCKETS,
               "every configured bound has a counter");

/* The configuration's buckets: taken at the first load; a reload that
 * names others keeps these (the counts so far were taken with them). */
static void assign_buckets(const struct tg_config *cfg)
{
    if (cfg->nhistogram_buckets == 0)
        return;
    bool same = cfg->nhistogram_buckets == nbuckets;
    for (unsigned i = 0; same && i < nbuckets; i++)
        same = buckets[i] == (double)cfg->histogram_buckets_ms[i] / 1000.0;
    if (same)
        return;
    if (buckets_set) {
        tg_log_warn("admin.histogram_buckets changed: the new bounds take effect at the next "
                    "start (the histograms' counts so far use the old ones)");
        return;
    }
    for (unsigned i = 0; i < cfg->nhistogram_buckets; i++)
        buckets[i] = (double)cfg->histogram_buckets_ms[i] / 1000.0;
    nbuckets = cfg->nhistogram_buckets;
}

unsigned tg_metrics_bucket(double seconds)
{
    unsigned i = 0;
    while (i < nbuckets && seconds > buckets[i])
        i++;
    return i;
}

unsigned tg_metrics_nbuckets(void)
{
    return nbuckets;
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

void tg_metrics_loaded(double when)
{
    atomic_store(&last_reload, when);
    atomic_store(&started_at, when);
}

/* ---- what the scrape reads ---------------------------------------------------- */

unsigned tg_metrics_series_count(enum tg_metrics_kind kind)
{
    return atomic_load(&reg.count[kind]);
}

const char *tg_metrics_series_labels(enum tg_metrics_kind kind, unsigned id)
{
    if (id >= atomic_load(&reg.count[kind]))
        return kind == TG_METRICS_ROUTE ? "site=\"_other\",route=\"_other\"" : "_other=\"1\"";
    return reg.labels[kind][id];
}

const char *tg_metrics_tls_reason_name(unsigned r)
{
    return tls_reasons[r];
}

double tg_metrics_bucket_bound(unsigned b)
{
    return buckets[b];
}

void tg_metrics_reloads(uint64_t *ok, uint64_t *failed, double *last)
{
    *ok = atomic_load(&reloads_ok);
    *failed = atomic_load(&reloads_failed);
    *last = atomic_load(&last_reload);
}

double tg_metrics_started_at(void)
{
    return atomic_load(&started_at);
}
