/* Metrics: per-worker counters, summed when /metrics is scraped.
 *
 * The request path only increments plain integers in its own worker's
 * shard: no locks, no atomic read-modify-write, no shared cache lines.
 * Labelled series (site/route, upstream, policy, listener) get a stable id
 * from a process-wide registry when a config snapshot is loaded (main
 * thread), so label cardinality is bounded by the configuration, never by
 * traffic (no per-IP or per-path labels). The scrape reads other workers'
 * counters with relaxed atomic loads: a scrape may be a few increments
 * behind, never torn. */
#ifndef TG_METRICS_H
#define TG_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "encoding.h"

struct tg_config;
struct tg_worker;
struct tg_runtime;

/* Bounds on labelled series; beyond them, series share an "_other" one. */
#define TG_METRICS_MAX_ROUTES 1024
#define TG_METRICS_MAX_UPSTREAMS 1024
#define TG_METRICS_MAX_POLICIES 256
#define TG_METRICS_MAX_LISTENERS 64

/* Histogram buckets for request and upstream times: at most this many
 * bounds (admin.histogram_buckets), then +Inf. */
#define TG_METRICS_MAX_BUCKETS 16

enum tg_metrics_kind {
    TG_METRICS_ROUTE = 0,
    TG_METRICS_UPSTREAM,
    TG_METRICS_POLICY,
    TG_METRICS_LISTENER,
    TG_METRICS_KINDS,
};

/* Status classes of requests[]: aborted, then 1xx to 5xx. */
#define TG_METRICS_STATUS_CLASSES 6

struct tg_route_stats {
    uint64_t requests[TG_METRICS_STATUS_CLASSES];  /* by status class: 0 = aborted, 1..5 */
    uint64_t duration[TG_METRICS_MAX_BUCKETS + 1]; /* cumulative at scrape */
    uint64_t duration_us;                          /* sum */
    uint64_t bytes_in, bytes_out;
};

struct tg_upstream_stats {
    uint64_t requests;
    uint64_t connect_errors, timeouts, retries, failures, ejections;
    uint64_t queued, queue_timeouts;               /* waited at max_connections; gave up */
    uint64_t response[TG_METRICS_MAX_BUCKETS + 1]; /* to the response head */
    uint64_t response_us;
    uint64_t connect[TG_METRICS_MAX_BUCKETS + 1]; /* new connections: TCP (+ TLS) */
    uint64_t connect_us;
};

enum tg_rl_result {
    TG_RL_ALLOWED = 0,
    TG_RL_LIMITED,
    TG_RL_SHADOW,     /* a shadow policy would have refused */
    TG_RL_ERROR,      /* the store failed; on_error applied */
    TG_RL_NEAR_LIMIT, /* allowed with < 20% of the burst left */
    TG_RL_RESULTS,
};

struct tg_policy_stats {
    uint64_t results[TG_RL_RESULTS];
};

struct tg_listener_stats {
    uint64_t accepted;
    int64_t active; /* +1/-1 per worker; summed */
};

/* The response cache (cache.c), per worker: counters, and two gauges that
 * move +/- and are summed at the scrape. hits / (hits + misses) is the hit
 * ratio. */
struct tg_cache_stats {
    uint64_t hits;      /* answered from an entry (304s included) */
    uint64_t misses;    /* went to the backend for a cacheable request */
    uint64_t coalesced; /* misses that waited for another's fetch */
    uint64_t stores;    /* entries completed */
    uint64_t evictions; /* entries dropped for room (LRU) */
    uint64_t purged;    /* entries dropped by a purge */
    int64_t bytes;      /* held now */
    int64_t entries;    /* held now */
};

/* TLS handshake failure reasons, as tg_tls_handshake reports them. */
#define TG_METRICS_TLS_REASONS 9

/* A worker's shard. */
struct tg_metrics_shard {
    struct tg_route_stats *routes;       /* [TG_METRICS_MAX_ROUTES + 1] */
    struct tg_upstream_stats *upstreams; /* [TG_METRICS_MAX_UPSTREAMS + 1] */
    struct tg_policy_stats *policies;    /* [TG_METRICS_MAX_POLICIES + 1] */
    struct tg_listener_stats *listeners; /* [TG_METRICS_MAX_LISTENERS + 1] */
    uint64_t tls_handshakes;
    uint64_t tls_resumed;
    uint64_t tls_failures[TG_METRICS_TLS_REASONS];
    uint64_t geoip_lookups;
    uint64_t local_answers; /* 4xx/5xx made by the gateway itself */
    struct tg_cache_stats cache;
    uint64_t unknown_host;
    uint64_t forwarded_conflict;     /* X-Forwarded-For and Forwarded disagree: 400 */
    uint64_t forwarded_untrusted;    /* forwarded headers from a private peer that is
                                        not in trusted_proxies, on a private-only route */
    uint64_t proxy_protocol_refused; /* PROXY header offered by an untrusted peer */
    uint64_t ratelimit_unkeyed;      /* a body key could not be read: 400/413 */
    uint64_t ratelimit_overflow;     /* new keys decided on a shared overflow bucket */
    uint64_t requests_by_proto[2];   /* HTTP/1.x, HTTP/2 */
    /* Responses we compressed, and their body bytes before and after, by
     * enum tg_encoding (index 0, identity, unused). */
    uint64_t compressed[TG_ENC_COUNT];
    uint64_t compress_in[TG_ENC_COUNT], compress_out[TG_ENC_COUNT];
    uint64_t h2_connections;
    uint64_t h2_streams;
    uint64_t h2_client_resets; /* RST_STREAM from clients */
    uint64_t h2_floods;        /* connections sent away for a flood or Rapid Reset */
    int64_t sse_open;          /* text/event-stream answers streaming now: +1/-1, summed */
};

/* Allocates a shard (zeroed). NULL on allocation failure. */
struct tg_metrics_shard *tg_metrics_shard_new(void);
void tg_metrics_shard_free(struct tg_metrics_shard *s);

/* Gives every route, upstream, policy and listener of `cfg` its series id
 * (stored in the config structs). Main thread, before the snapshot is
 * published. */
void tg_metrics_assign(struct tg_config *cfg);

/* A counter bump by its only writer (the owning worker): a relaxed load
 * and store, no locked instruction, never torn for the scraper. */
#define TG_METRIC_ADD(field, n) \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define TG_METRIC_INC(field) TG_METRIC_ADD(field, 1)

/* Writes label value `v` escaped for the exposition format into `out`
 * (cut to fit `cap`, NUL-terminated); returns its length. */
size_t tg_metrics_escape_label(char *out, size_t cap, const char *v);

/* The series for requests that matched no route (unknown host, bad head). */
unsigned tg_metrics_no_route(void);
/* The series for the admin listener's own requests (scrapes, the
 * dashboard's polls), apart from the traffic: site="_admin". */
unsigned tg_metrics_admin_route(void);

/* Index of a TLS failure reason token ("protocol", ...). */
unsigned tg_metrics_tls_reason(const char *reason);

/* Histogram bucket of a duration in seconds: 0 .. tg_metrics_nbuckets()
 * (the last is +Inf). */
unsigned tg_metrics_bucket(double seconds);
unsigned tg_metrics_nbuckets(void);

/* Process-wide values the main thread updates: a SIGHUP reload and its
 * result (a success also sets the load time), and the first load at start,
 * which is no reload (only the load time). */
void tg_metrics_reload(bool ok, double when);
void tg_metrics_loaded(double when);

/* For the scrape: how many series of a kind exist, the label set of one
 * (an "_other" set past the registry's end), a histogram bucket's upper
 * bound, and the reload counters. */
unsigned tg_metrics_series_count(enum tg_metrics_kind kind);
const char *tg_metrics_series_labels(enum tg_metrics_kind kind, unsigned id);
double tg_metrics_bucket_bound(unsigned b);
const char *tg_metrics_tls_reason_name(unsigned r);
/* "aborted", "1xx" ... "5xx"; "allowed", "limited", ... (the labels). */
const char *tg_metrics_status_class_name(unsigned c);
const char *tg_metrics_rl_result_name(unsigned r);
void tg_metrics_reloads(uint64_t *ok, uint64_t *failed, double *last);
/* When the process loaded its first configuration (Unix time; 0 before). */
double tg_metrics_started_at(void);

#endif
