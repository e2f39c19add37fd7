/* Configuration: YAML file -> validated, immutable snapshot.
 *
 * Two steps. config.c parses the YAML into the plain structs below and
 * checks them: every key's type, bounds and default come from one schema
 * table per section, references between sections are resolved, and what a
 * route inherits (headers, rate-limit policies, ignore_case, max_body) is
 * merged in once. config_build.c then builds the runtime objects that live
 * beside the data (TLS contexts, GeoIP handles, the host index, compiled
 * route patterns, access rule sets, the tenant index): the fields marked
 * "built" below, NULL until then. tg_config_load (config_build.h) does both.
 *
 * A snapshot is built by the main thread, then shared read-only by every
 * worker and reference-counted; a reload builds a new one and swaps it in,
 * and requests in flight finish on the snapshot they started with. All the
 * snapshot's data lives in its arena. Errors carry FILE:LINE:COL, from the
 * marks kept in the structs, whichever step finds them. */
#ifndef TG_CONFIG_H
#define TG_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "addr.h"
#include "arena.h"
#include "encoding.h"
#include "ratelimit.h"
#include "str.h"

struct tg_host_index;
struct tg_route_entry;
struct tg_access_rules;
struct tg_geoip;
struct tg_tls_server;
struct tg_tls_client;
struct tg_tls_ticket_secret;
struct tg_certstore;
struct tg_resolver_group;

/* Where a value came from, for messages after parsing. */
struct tg_config_mark {
    int line; /* 1-based */
    int col;  /* 1-based */
    int file; /* 0: the main file; else an included one (tg_config_mark_file) */
};

/* Files one configuration may read: the main one and what it includes. */
#define TG_CONFIG_MAX_FILES 256

/* A socket address as written ("127.0.0.1:8080", "[::1]:8080", ":8080") and
 * resolved. */
struct tg_config_sockaddr {
    const char *text;
    struct sockaddr_storage sa;
    socklen_t salen;
};

struct tg_config_listen {
    struct tg_config_sockaddr addr;
    const char *key; /* canonical address: identity across reloads */
    bool tls;
    const char *client_ca;             /* PEM bundle: ask for client certificates */
    bool client_verify_optional;       /* client_verify: optional */
    const char *client_subject_header; /* forwards the verified subject */
    int redirect_to_https;             /* port for 308 redirects; 0 = off */
    bool proxy_protocol;
    int backlog;
    unsigned max_connections_per_ip; /* 0 = unlimited */
    bool http2;                      /* TLS: offer h2 by ALPN (before http/1.1) */
    bool h2c;                        /* plain: HTTP/2 with prior knowledge too */
    bool admin;                      /* the admin listener (admin.listen) */
    unsigned metrics_id;
    struct tg_config_mark mark;
};

struct tg_config_client {
    int64_t header_timeout_ms;    /* whole head must arrive within */
    int64_t keepalive_timeout_ms; /* idle between requests */
    int64_t body_timeout_ms;      /* max gap between body reads */
    int64_t send_timeout_ms;      /* max gap between successful writes */
    uint64_t min_body_rate;       /* bytes/s averaged; 0 = off */
    size_t max_request_line;
    size_t max_head;
    size_t max_headers;
    uint64_t max_body;        /* 0 = unlimited */
    unsigned max_connections; /* per worker process total; 0 = unlimited */
    size_t buffer_size;       /* bytes per direction */
    unsigned ipv6_prefix;     /* IPv6 clients counted per this prefix */
};

struct tg_config_certificate {
    const char *cert; /* PEM: certificate then its chain */
    const char *key;  /* PEM private key */
    struct tg_config_mark mark;
};

/* A Redis server (shared rate limits, tenant directory). */
struct tg_config_redis {
    const char *address;  /* "host:port" or "unix:/path"; NULL with sentinels */
    const char *password; /* AUTH, or NULL */
    unsigned db;          /* SELECT */
    int64_t timeout_ms;   /* a reply slower than this is a fault */
    const char *key_prefix;
    /* Redis Sentinel, instead of `address`: the sentinels ("host:port"
     * each) that know the primary of `master`. */
    const char *const *sentinels;
    size_t nsentinels; /* 0: `address` is the server */
    const char *master;
    const char *sentinel_password; /* AUTH to the sentinels, or NULL */
    const char **cluster;          /* Redis Cluster seed nodes ("host:port"), instead
                             of address; NULL: one server */
    size_t ncluster;
    struct tg_config_mark mark;
};
/* Automatic certificates (acme.c). */
enum tg_acme_key { TG_ACME_KEY_ECDSA = 0, TG_ACME_KEY_RSA };

struct tg_config_acme {
    bool enabled;                 /* tls.acme is present */
    const char *email;            /* contact; NULL = none */
    const char *directory;        /* the CA's directory URL */
    const char *ca_bundle;        /* PEM to verify the CA's HTTPS (NULL: the system's) */
    const char *eab_kid;          /* External Account Binding, when the CA needs it */
    const char *eab_hmac_key;     /* ... its MAC key, base64url */
    int key_type;                 /* enum tg_acme_key, for certificates */
    const char *state_dir;        /* account, keys and certificates */
    bool http01;                  /* validate by HTTP-01 (plain listeners) */
    bool tls_alpn01;              /* validate by TLS-ALPN-01 (TLS listeners) */
    bool on_demand;               /* a handshake for an unknown name may order one */
    const char *ask;              /* ... only if this URL answers 2xx for it */
    int64_t on_demand_timeout_ms; /* how long such a handshake waits */
    unsigned max_per_hour;        /* new orders per hour, all names */
    int64_t timeout_ms;           /* each request to the CA */
    struct tg_config_mark mark;
};

struct tg_config_tls {
    struct tg_config_certificate *certs;
    size_t ncerts;
    int min_version;          /* TLS1_2_VERSION or TLS1_3_VERSION */
    const char *ciphers;      /* TLS 1.2 list (OpenSSL syntax) */
    const char *ciphersuites; /* TLS 1.3 suites */
    bool session_tickets;
    int64_t ticket_key_rotation_ms;
    unsigned session_cache_size; /* sessions; 0 = no server-side cache */
    int64_t session_timeout_ms;
    int64_t handshake_timeout_ms;
    const char *ticket_key_file; /* a secret shared by gateways: tickets from
                                    one resume on all; NULL = keys of our own */
    struct tg_config_acme acme;
    /* Gateways that share a Redis (tls.redis, else rate_limit.redis) share
     * ACME accounts, certificates, locks, challenges and ticket keys. */
    bool fleet;
    struct tg_config_redis redis;
    struct tg_config_mark mark;
};

/* ---- rate limiting ---- */

enum tg_rl_store {
    TG_RL_STORE_DEFAULT = 0, /* policies: use rate_limit.store */
    TG_RL_STORE_LOCAL,
    TG_RL_STORE_REDIS,
};

enum tg_rl_on_error {
    TG_RL_ON_ERROR_LOCAL = 0, /* fall back to this gateway's share */
    TG_RL_ON_ERROR_ALLOW,
    TG_RL_ON_ERROR_DENY,
};

struct tg_config_policy {
    const char *name;
    size_t index; /* in config->rate_limit.policies */
    struct tg_ratelimit_params params;
    int64_t count;    /* N of "N/unit": RateLimit-Policy q= */
    int64_t period_s; /* unit in seconds: RateLimit-Policy w= */
    struct tg_config_rl_key_part *parts;
    size_t nparts;
    const char *key_kinds; /* the parts as written, joined with '|' ("ip|json:identity") */
    bool shadow;           /* mode: shadow */
    bool count_failures;   /* count: failures */
    int *failure_statuses;
    size_t nfailure_statuses;
    enum tg_rl_store store;
    size_t max_peek;    /* body parts: the largest body read */
    bool needs_body;    /* has a body part */
    bool body_fallback; /* body_fallback: ip (else unreadable bodies: 400) */
    unsigned metrics_id;
    struct tg_config_mark mark;
};

/* A list of policies that apply together (all must allow). `set` tells an
 * explicit empty list ("rate_limit: []", no limits) from no list at all. */
struct tg_config_policy_list {
    const struct tg_config_policy **items;
    size_t n;
    bool set;
};

struct tg_config_rate_limit {
    enum tg_rl_store store;     /* LOCAL or REDIS */
    bool headers;               /* RateLimit on allowed responses too */
    bool legacy_headers;        /* X-RateLimit-* as well */
    struct tg_cidr_set *exempt; /* never limited; NULL if none */
    struct tg_config_policy_list global;
    struct tg_config_policy *policies;
    size_t npolicies;
    size_t local_max_keys;
    bool has_redis;
    struct tg_config_redis redis;
    enum tg_rl_on_error on_error;
};

/* HTTP/2 connections (h2.c). */
struct tg_config_http2 {
    unsigned max_concurrent_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS */
    size_t stream_window;            /* a stream's receive window: request body held */
    size_t connection_window;        /* the connection's receive window */
    unsigned max_resets;             /* client RST_STREAMs per second before GOAWAY */
    unsigned max_control;            /* PING/SETTINGS/PRIORITY/WINDOW_UPDATE/empty DATA
                                 frames per second before GOAWAY */
};

struct tg_config_stream {
    int64_t heartbeat_ms;    /* 0 = off */
    unsigned max_per_ip;     /* concurrent streams per client IP, 0 = off */
    int64_t idle_timeout_ms; /* tunnels and streams: 0 = none */
};

enum tg_rl_part {
    TG_RL_PART_IP = 0, /* client address (IPv6 per client.ipv6_prefix) */
    TG_RL_PART_ROUTE,
    TG_RL_PART_SITE,
    TG_RL_PART_TENANT,
    TG_RL_PART_COUNTRY,
    TG_RL_PART_ASN,
    TG_RL_PART_HEADER, /* header:NAME */
    TG_RL_PART_QUERY,  /* query:NAME */
    TG_RL_PART_COOKIE, /* cookie:NAME */
    TG_RL_PART_JSON,   /* json:FIELD, from a JSON body */
    TG_RL_PART_FORM,   /* form:FIELD, from a urlencoded or multipart body */
    TG_RL_PART_BODY,   /* body:FIELD, from any of those, by Content-Type */
};

struct tg_config_rl_key_part {
    enum tg_rl_part kind;
    const char *name; /* for header/query/cookie/json */
    size_t name_len;
};

enum tg_balance {
    TG_BALANCE_ROUND_ROBIN = 0,
    TG_BALANCE_LEAST_CONN,
    TG_BALANCE_HASH, /* consistent hashing on hash_key */
};

struct tg_config_health_check {
    const char *path; /* NULL = no active checks */
    int64_t interval_ms;
    int64_t timeout_ms;
    unsigned fails;  /* failed checks before a server is down */
    unsigned passes; /* passed checks before it is up again */
};

/* One server of a list. As written in the config (or a tenant's entry): an
 * IP literal (host NULL, addr resolved) or a name (host set, addr.text as
 * written, addr.sa unset: resolver.c resolves it). In a server set (the
 * addresses a list has now, resolver.h): one address each, addr.text
 * "ip:port", and host the name it came from (NULL for a literal). */
struct tg_config_server {
    struct tg_config_sockaddr addr;
    const char *host; /* a name's host part; NULL for an IP literal */
    uint16_t port;    /* a name's port */
    /* A name in a loaded config: every address it resolved to at load (the
     * resolver starts from these); NULL elsewhere. */
    const struct sockaddr_storage *resolved;
    size_t nresolved;
};

struct tg_config_upstream {
    const char *name;
    size_t index;                     /* position in config->upstreams */
    struct tg_config_server *servers; /* as written */
    size_t nservers;
    int64_t resolve_interval_ms; /* names among the servers are resolved again this often */
    /* built: the names re-resolved and the addresses they have now
     * (resolver.h; one reference); NULL when every server is an IP
     * literal. Requests take their servers from tg_upstream_servers. */
    struct tg_resolver_group *resolve;
    enum tg_balance balance;
    unsigned keepalive; /* idle connections kept per server per worker */
    int64_t keepalive_timeout_ms;
    unsigned keepalive_requests; /* requests per connection, 0 = unlimited */
    int64_t connect_timeout_ms;
    int64_t read_timeout_ms;
    int64_t send_timeout_ms;
    unsigned retries;         /* extra servers tried after a failure */
    unsigned max_connections; /* per server per worker, 0 = unlimited */
    size_t max_response_head;
    struct tg_config_rl_key_part hash_key; /* balance: hash */
    unsigned max_fails;                    /* passive health: failures in a row */
    int64_t eject_ms;                      /* first ejection; doubles up to 30 s */
    bool fail_on_5xx;                      /* a 5xx answer counts as a failure */
    struct tg_config_health_check health_check;
    bool tls; /* speak HTTPS to the servers */
    bool tls_verify;
    const char *tls_ca;
    const char *tls_server_name;
    struct tg_tls_client *tls_client; /* built when tls is on */
    unsigned metrics_id;
    struct tg_config_mark mark;
};

/* ---- headers ---- */

struct tg_config_header {
    const char *name;
    const char *value;
    size_t name_len, value_len;
    bool https_only;     /* Strict-Transport-Security */
    const char *written; /* the value as written when it holds ${ENV}: what
                            explain shows (the value may be a secret); else NULL */
};

/* What a route does to headers, resolved from the global `headers`
 * block, then the site's, then the route's. */
struct tg_config_headers {
    struct tg_config_header *add; /* response headers */
    size_t nadd;
    struct tg_str *remove; /* response headers dropped */
    size_t nremove;
    bool override;                    /* replace what the backend set */
    struct tg_config_header *req_set; /* request headers toward the backend */
    size_t nreq_set;
    struct tg_str *req_remove;
    size_t nreq_remove;
    /* `add` rendered once ("Name: value\r\n" each) for plain [0] and TLS
     * [1] clients, and one bit per name length (mod 64): a backend header
     * whose length has no bit set cannot be one of them. */
    struct tg_str add_block[2];
    uint64_t add_name_lengths;
};

/* ---- access rules ---- */

enum tg_config_access_kind {
    TG_ACCESS_CIDR = 0, /* allow, deny: a prefix or preset */
    TG_ACCESS_COUNTRY,  /* allow_countries, deny_countries */
    TG_ACCESS_ASN,      /* allow_asns, deny_asns */
};

/* One entry of a site's or route's allow/deny lists, as written. */
struct tg_config_access_rule {
    enum tg_config_access_kind kind;
    bool allow;
    const char *key;  /* the list it came from ("deny_countries") */
    const char *text; /* the entry */
    uint32_t asn;     /* TG_ACCESS_ASN: parsed */
    struct tg_config_mark mark;
};

struct tg_config_access_list {
    struct tg_config_access_rule *rules; /* in file order */
    size_t n;
    bool set; /* some list was given, even an empty one */
};

/* geoip: the databases to open (config_build.c opens them). */
struct tg_config_geoip {
    const char *database;     /* countries (or cities), or NULL */
    const char *asn_database; /* AS numbers, or NULL */
    const char *header;       /* the country toward the backend */
    struct tg_config_mark database_mark, asn_database_mark;
};

/* ---- tenants ---- */

struct tg_config_tenant {
    const char *id;
    struct tg_config_server *servers; /* as written */
    size_t nservers;
    struct tg_resolver_group *resolve; /* built when a server is a name (one
                                          reference; the tenant object borrows it) */
    bool suspended;
    int64_t rate_interval_ns; /* 0 = policy's own */
    int64_t rate_count, rate_period_s;
    int64_t burst; /* 0 = policy's own */
    struct tg_config_mark mark;
};

struct tg_config_domain {
    const char *domain; /* lower case */
    const char *tenant;
};

enum tg_tenant_directory {
    TG_TENANTS_STATIC = 0,
    TG_TENANTS_REDIS,
};

struct tg_tenant_index;

/* tenants.activation: tenants placed on their first request (tenant.c). */
struct tg_config_activation {
    bool enabled;         /* the section is present */
    bool unknown;         /* ids the directory does not know are activated too */
    int64_t timeout_ms;   /* a request waits this long for the placement */
    unsigned max_waiting; /* requests parked per worker at most */
    const char *stream;   /* the Redis stream the control plane reads (NULL:
                             key_prefix + "activate") */
    struct tg_config_mark mark;
};

struct tg_config_tenants {
    enum tg_tenant_directory directory;
    struct tg_config_redis redis; /* defaults to rate_limit.redis */
    int64_t cache_ttl_ms;
    int64_t negative_ttl_ms;
    int64_t stale_ttl_ms;
    int64_t move_grace_ms; /* a moved tenant's streams are cut after this */
    struct tg_config_activation activation;
    size_t max_cached;                /* per worker */
    struct tg_config_tenant *tenants; /* static entries (win over Redis) */
    size_t ntenants;
    struct tg_config_domain *domains; /* static custom domains */
    size_t ndomains;
    struct tg_config_upstream upstream_defaults; /* pool settings for tenants */
    struct tg_tenant_index *index;               /* built from the above */
    bool configured;                             /* the section exists */
};

struct tg_route_pattern;

/* How tollgate's own error answers (4xx/5xx it makes itself) are written:
 * `errors:` on a site or route. */
enum tg_config_error_body {
    TG_ERRORS_TEXT = 0, /* text/plain "404 Not Found: why" */
    TG_ERRORS_JSON,     /* application/json {"status":404,"error":...} */
    TG_ERRORS_HTML,     /* a small text/html page */
};

/* Response compression for a site or a route (`compress:`); a route
 * starts from its site's and changes what it writes. */
struct tg_config_compress {
    bool enabled;
    const char **types; /* lower-case media types, "type/\*" for any subtype */
    size_t ntypes;
    uint64_t min_length;         /* bytes; a body of unknown length always qualifies */
    uint8_t order[TG_ENC_COUNT]; /* enum tg_encoding, the preferred first */
    size_t norder;
    int levels[TG_ENC_COUNT]; /* per enum tg_encoding */
};

/* A route's response cache (`cache:`; cache_serve.c, cache.c). */
struct tg_config_cache {
    bool enabled;              /* the route has a cache: section */
    int64_t ttl_ms;            /* freshness when the backend gives no max-age */
    uint64_t max_size;         /* bytes, the whole process (split over workers) */
    uint64_t max_entry_size;   /* bytes of one body */
    bool cache_authorized;     /* store/serve requests with Authorization or Cookie */
    bool x_cache_header;       /* X-Cache: HIT | MISS on answers */
    int64_t lock_timeout_ms;   /* how long identical misses wait for the first */
    const char **bypass_query; /* query parameter names that send a request past it */
    size_t nbypass_query;
};

struct tg_config_route {
    const char *path_source;         /* the pattern as written */
    struct tg_config_mark path_mark; /* of its first character */
    const char *path;                /* built: the pattern's canonical text (router.h) */
    size_t path_len;
    struct tg_route_pattern *pattern; /* built: compiled; owned by the snapshot */
    bool ignore_case;                 /* the route's, else its site's */
    uint32_t methods;                 /* bit 1 << enum tg_http_method; 0 with no
                                     other_methods = any method */
    const char **other_methods;       /* methods without an id, as written */
    size_t nother_methods;
    const struct tg_config_upstream *upstream; /* NULL when upstream_tenant */
    bool upstream_tenant;                      /* upstream: $tenant */
    const struct tg_config_headers *headers;   /* resolved */
    struct tg_config_access_list access_list;  /* as written */
    struct tg_access_rules *access;            /* built from access_list; NULL = none */
    bool stream;                               /* long-lived responses: no read timeout */
    int errors; /* enum tg_config_error_body: the route's, else its site's */
    struct tg_config_compress compress; /* the site's, changed by the route's */
    /* Resolved at load: the route's own list, else its site's, else
     * rate_limit.global; `set` is always true. */
    struct tg_config_policy_list rate_limit;
    unsigned max_in_flight;  /* 0 = unlimited */
    int64_t read_timeout_ms; /* 0 = the upstream's read_timeout */
    uint64_t max_body;       /* resolved: the route's, else client.max_body; 0 = unlimited */
    struct tg_config_cache cache;
    unsigned counter;         /* built: its slot in route_in_flight */
    double access_log_sample; /* share of 2xx lines logged: the route's, else log.sample_2xx */
    bool access_log;          /* false: no access-log line at all for this route */
    const struct tg_config_site *site;
    unsigned metrics_id;
    struct tg_config_mark mark;
};

struct tg_config_site {
    const char **hosts;
    struct tg_config_mark *host_marks; /* one per host */
    size_t nhosts;
    struct tg_config_route *routes;
    size_t nroutes;
    size_t index;
    struct tg_config_policy_list rate_limit;  /* as written; routes resolve it */
    bool has_capture;                         /* a "{tenant}.x" host */
    struct tg_config_access_list access_list; /* as written */
    struct tg_access_rules *access;           /* built from access_list; NULL = none */
    bool custom_domains;                      /* unmatched hosts are looked up as tenant domains */
    const char *tenant_header;                /* a trusted peer names the tenant in this field */
    bool ignore_case;                         /* routes' default */
    int errors;                               /* enum tg_config_error_body; routes' default */
    struct tg_config_compress compress;       /* routes' default */
    bool acme;                                /* tls.acme orders certificates for its hosts */
    bool any_ignore_case;                     /* some route matches a folded path */
    struct tg_route_entry *route_table;       /* built: the routes as the router
                                           matches them, in order */
};

/* What an access-log line can carry (log.access_fields); `all` is this
 * order. Names: tg_config_log_field_names. */
enum tg_log_field {
    TG_LOG_FIELD_TIME = 0,
    TG_LOG_FIELD_CLIENT,
    TG_LOG_FIELD_METHOD,
    TG_LOG_FIELD_HOST,
    TG_LOG_FIELD_PATH,
    TG_LOG_FIELD_ROUTE, /* the route's pattern as written */
    TG_LOG_FIELD_PROTO,
    TG_LOG_FIELD_STATUS,
    TG_LOG_FIELD_BYTES_IN,
    TG_LOG_FIELD_BYTES_OUT,
    TG_LOG_FIELD_DURATION_MS,
    TG_LOG_FIELD_ENCODING, /* + bytes_uncompressed, bytes_compressed */
    TG_LOG_FIELD_UPSTREAM,
    TG_LOG_FIELD_UPSTREAM_CONNECT_MS,
    TG_LOG_FIELD_UPSTREAM_MS,
    TG_LOG_FIELD_REQUEST_ID,
    TG_LOG_FIELD_TRACE_ID,
    TG_LOG_FIELD_SPAN_ID,
    TG_LOG_FIELD_TLS, /* tls_version, tls_cipher, sni, tls_resumed */
    TG_LOG_FIELD_TENANT,
    TG_LOG_FIELD_COUNTRY,
    TG_LOG_FIELD_RATELIMIT, /* + ratelimit_policy, _reason, _keys */
    TG_LOG_FIELD_USER_AGENT,
    TG_LOG_FIELD_REFERER,
    TG_LOG_FIELD_COUNT
};

/* The names log.access_fields takes, by enum tg_log_field. */
extern const char *const tg_config_log_field_names[TG_LOG_FIELD_COUNT];

struct tg_config_log {
    int level;          /* enum tg_log_level */
    const char *error;  /* path, or NULL for stderr */
    const char *access; /* path, "stdout", or NULL for off */
    int64_t access_flush_ms;
    size_t access_buffer;
    /* access_fields: enum tg_log_field, in the order written (each once) */
    uint8_t fields[TG_LOG_FIELD_COUNT];
    uint8_t nfields;
    uint32_t field_set; /* bit 1u << field for each of them */
    double sample_2xx;  /* share of 2xx lines written, 0..1 (routes may say) */
};

/* tracing.request_id */
enum tg_trace_request_id { TG_TRACE_RID_OWN = 0, TG_TRACE_RID_TRACE_ID };

/* tracing.otlp: where and how spans are sent (trace_export.c). */
struct tg_config_otlp {
    const char *endpoint; /* "http://host[:port]/path" */
    int64_t timeout_ms;   /* connect, send and answer, each */
    unsigned batch;       /* spans per POST, at most */
    unsigned queue;       /* spans waiting, at most; more are dropped */
    int64_t interval_ms;  /* a partial batch waits at most this long */
};

struct tg_config_tracing {
    bool enabled;
    double sample_ratio;      /* 0..1, for requests without a parent */
    const char *service_name; /* resource attribute service.name */
    int request_id;           /* enum tg_trace_request_id */
    struct tg_config_otlp otlp;
};

struct tg_config {
    _Atomic int refs;
    struct tg_arena arena;
    /* Built: requests running now per route (max_in_flight), shared by all
     * workers. Mutable state lives here, beside the snapshot's data, so
     * the data itself is never written after it is built. */
    _Atomic unsigned *route_in_flight;
    size_t nroute_slots; /* built: entries of route_in_flight (every route's counter) */
    const char *path;
    /* The files read, as messages name them: [0] is `path`, then each
     * included file in the order read (a mark's `file`). */
    const char **files;
    size_t nfiles;
    /* What `-t` prints and a start or reload logs, but loads anyway:
     * "FILE:LINE:COL: warning: ..." each. */
    const char **warnings;
    size_t nwarnings;
    time_t loaded_at;

    unsigned workers;
    int64_t drain_timeout_ms;
    const char *user; /* run as this user ("user" or "user:group") */
    struct tg_config_listen *listeners;
    size_t nlisteners;
    struct tg_config_client client;
    struct tg_config_tls tls;
    struct tg_config_stream stream;
    struct tg_config_http2 http2;
    struct tg_config_upstream *upstreams;
    size_t nupstreams;
    struct tg_config_site *sites;
    size_t nsites;
    struct tg_config_log log;
    struct tg_config_tracing tracing;
    struct tg_config_rate_limit rate_limit;
    struct tg_config_tenants tenants;
    const struct tg_config_site *domain_site;       /* the site with custom_domains */
    const struct tg_config_site *header_site;       /* the first site with tenant_header */
    const char *admin_token;                        /* bearer token for the admin listener */
    struct tg_config_access_list admin_access_list; /* admin.allow, admin.deny as written */
    struct tg_access_rules *admin_access;           /* built from it; NULL = anyone */
    /* Histogram bucket bounds (admin.histogram_buckets), ascending; none:
     * the built-in ones. */
    int64_t histogram_buckets_ms[16];
    unsigned nhistogram_buckets;
    unsigned tenant_series;              /* admin.tenant_series: tenants with series of their own */
    struct tg_cidr_set *trusted_proxies; /* NULL = trust no peer */
    int client_ip_header;                /* enum tg_client_ip_header */
    struct tg_config_geoip geoip_files;
    struct tg_geoip *geoip;           /* built: country database, or NULL */
    struct tg_geoip *geoip_asn;       /* built: ASN database, or NULL */
    const char *geoip_header;         /* country toward the backend, or NULL */
    struct tg_config_headers headers; /* the global block, resolved */

    struct tg_host_index *hosts;      /* built: Host -> site */
    struct tg_tls_server *tls_server; /* built when a listener has tls */
    /* built: tls.ticket_key_file read (tls_tickets.h), or NULL */
    struct tg_tls_ticket_secret *ticket_secret;
    struct tg_certstore *certstore; /* built: the store SNI consults (a reference) */
    /* Set by config_build.c: frees what it built, before the arena goes. */
    void (*unbuild)(struct tg_config *c);
};

/* ---- errors ---- */

#define TG_CONFIG_MAX_ERRORS 50

/* Errors collected while loading, reported together in file order. */
struct tg_config_errors {
    const char *file; /* names the main file in messages */
    /* Names marks of included files (file > 0) in messages: borrowed from
     * the snapshot being loaded (its `files`), so errors are formatted
     * before it is freed. NULL until the parser sets it. */
    const char *const *files;
    size_t nfiles;
    int n; /* found (more than are kept: see max) */
    struct {
        struct tg_config_mark mark;
        char msg[300];
    } list[TG_CONFIG_MAX_ERRORS];
};

void tg_config_errors_init(struct tg_config_errors *e, const char *file);
/* Adds one error at `m`. */
void tg_config_error_at(struct tg_config_errors *e, struct tg_config_mark m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Writes the errors sorted by position (the main file first, then the
 * included ones in the order read), one "FILE:LINE:COL: message" line
 * each, NUL-terminated (cut at `cap`). */
void tg_config_errors_format(struct tg_config_errors *e, char *out, size_t cap);

/* Parses and validates without building anything (no file but the YAML is
 * read, and the files its `include:` names: certificates, GeoIP databases,
 * host and path patterns are checked by the build). `${NAME}` in values
 * is read from the environment. Relative file paths in values (and
 * include patterns) are resolved against the directory of the file they
 * are written in: `name`'s for the main one (the working directory when
 * it has no '/'). Returns a snapshot with one reference whose built fields
 * are NULL (tg_config_build can build them), or NULL with `errors` filled
 * as tg_config_load does. */
struct tg_config *tg_config_parse(const char *path, char *errors, size_t errlen);
struct tg_config *tg_config_parse_buffer(const char *name, const char *data, size_t len,
                                         char *errors, size_t errlen);

/* The parser's own step, for config_build.c: parses `data` collecting
 * errors into `errs`. Returns the snapshot even when errors were found (so
 * the build can report its own at the same time), or NULL when nothing
 * could be parsed (YAML syntax, an empty document, no memory). */
struct tg_config *tg_config_parse_collect(const char *name, const char *data, size_t len,
                                          struct tg_config_errors *errs);

/* Reads a configuration file whole (NUL-terminated; free it). Returns 0,
 * or -1 with "FILE:1:1: cannot open: ..." in errors. */
int tg_config_read_file(const char *path, char **data, size_t *len, char *errors, size_t errlen);

/* The name of the file a mark of `c` is in, as messages show it (the
 * main file's path as given, an included file's joined to the directory
 * of the file that included it). Borrowed from `c`. */
const char *tg_config_mark_file(const struct tg_config *c, struct tg_config_mark m);

void tg_config_ref(struct tg_config *c);
/* Drops a reference; the last one frees the snapshot (what was built
 * first). Any thread. */
void tg_config_unref(struct tg_config *c);

/* Looks up an upstream by name; NULL if none. */
const struct tg_config_upstream *tg_config_find_upstream(const struct tg_config *c,
                                                         const char *name, size_t n);

/* Parses "250ms", "10s", "5m", "1h", "2d" (and "0") into milliseconds. */
int tg_config_parse_duration(const char *s, int64_t *ms);

/* Parses "512", "16KiB", "10MiB", "1GiB" (also KB/MB/GB as powers of 1000,
 * and K/M/G as powers of 1024) into bytes. */
int tg_config_parse_size(const char *s, uint64_t *bytes);

/* Parses "host:port", "[v6]:port" or ":port" (all interfaces) into a socket
 * address; names are resolved once, here. Returns 0 or -1 with err set. */
int tg_config_parse_sockaddr(const char *s, struct tg_config_sockaddr *out, char *err,
                             size_t errlen);

/* Parses a server "host:port" / "[v6]:port" without resolving anything:
 * an IP literal fills out->addr (text not set) and leaves out->host NULL;
 * a name (letters, digits, '-', '_' and dots, at most 253) is copied into
 * `host` (hostcap bytes) and out->host points there, with out->port set.
 * Returns 0, or -1 with err set. Any thread. */
int tg_config_parse_server(const char *s, struct tg_config_server *out, char *host, size_t hostcap,
                           char *err, size_t errlen);

/* Formats a socket address as "ip:port" / "[ip]:port". */
size_t tg_config_format_sockaddr(const struct sockaddr *sa, char *out, size_t cap);

#endif
