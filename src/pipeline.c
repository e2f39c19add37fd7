/* The decision pipeline: one table of phases, one driver.
 *
 * A phase returns NEXT (go on), ANSWERED (a local answer was given, or a
 * handler or forward.c took the request over) or WAIT (a tenant look-up,
 * the body a rate-limit key reads, a store that answers later, a delay).
 * Whatever a phase waits for calls resume(), which runs the table again
 * from the phase after it. While the request waits, the pipeline owns its
 * hooks: the wait has a deadline of its own (nothing parks forever if a
 * store's own timer fails), and the client going away cancels it.
 *
 * A dry run (req->explain) runs the same phases: each says what it decided
 * through the explain listener, stores and the tenant directory are not
 * asked, and the last phase describes the forward instead of doing it. */
#include "pipeline.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "access.h"
#include "access_log.h"
#include "cache_serve.h"
#include "codec.h"
#include "config.h"
#include "context.h"
#include "forward.h"
#include "handlers.h"
#include "headers.h"
#include "faultlog.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "router.h"
#include "tenant.h"
#include "tls.h"
#include "trace.h"

#define MS(x) ((double)(x) / 1000.0)
/* A wait on a store or the tenant directory ends this long after their own
 * reply timeout would have (their timers should have answered first). */
#define WAIT_SLACK_S 1.0
#define RETRY_AFTER_1 "Retry-After: 1\r\n"

enum verdict { NEXT, ANSWERED, WAIT };

/* What a waiting request waits for (req->wait). */
enum wait_kind {
    WAIT_NONE = 0,
    WAIT_TENANT, /* the tenant directory (Redis) */
    WAIT_BODY,   /* request body for a rate-limit key */
    WAIT_DECIDE, /* a rate-limit store's answer */
    WAIT_DELAY,  /* a policy's delay */
};

/* Sub-steps of the limits phase (req->limits_step). */
enum limits_step { LIM_PREPARE = 0, LIM_BODY, LIM_DECIDE, LIM_DECIDED };

static void run(struct tg_request *req);
static void resume(struct tg_request *req);

static const struct tg_config *cfg_of(const struct tg_request *req)
{
    return req->wcfg->config;
}

static bool dry(const struct tg_request *req)
{
    return req->explain != NULL;
}

/* ---- the dry run's voice -------------------------------------------------------- */

static void say(struct tg_request *req, const char *label, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(struct tg_request *req, const char *label, const char *fmt, ...)
{
    if (req->explain == NULL)
        return;
    char text[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    req->explain->say(req->explain, label, text);
}

/* ---- answers ---------------------------------------------------------------------- */

/* A local answer; `body` is "NNN Reason: why\n". A dry run says it too. */
static enum verdict answer_extra(struct tg_request *req, int status, const char *extra,
                                 const char *body, bool close)
{
    if (dry(req)) {
        const char *why = body;
        if (strlen(why) > 4 && why[3] == ' ')
            why += 4;
        size_t n = strlen(why);
        while (n > 0 && why[n - 1] == '\n')
            n--;
        say(req, "answer", "%d (%.*s)", status, (int)n, why);
    }
    req->extra_headers = extra;
    tg_request_respond_text(req, status, body, close);
    return ANSWERED;
}

static enum verdict answer(struct tg_request *req, int status, const char *body, bool close)
{
    return answer_extra(req, status, NULL, body, close);
}

/* Memory ran out: nothing sensible can be said; the stream is cut. */
static enum verdict out_of_memory(struct tg_request *req)
{
    tg_faultlog_note(TG_LOG_ERROR, "out of memory", "requests failed",
                     "request %s: closing the client's stream", req->request_id);
    tg_request_end(req, TG_STREAM_RESET);
    return ANSWERED;
}

/* ---- identify: who the client is --------------------------------------------------- */

static void take_request_id(struct tg_request *req)
{
    req->request_id_len = 0;
    for (size_t i = 0; i < req->headers.n; i++) {
        const struct tg_http_header *h = &req->headers.v[i];
        if (tg_http_name_eq(h->name, "x-request-id") && tg_headers_valid_request_id(h->value)) {
            memcpy(req->request_id, h->value.p, h->value.n);
            req->request_id[h->value.n] = '\0';
            req->request_id_len = h->value.n;
            return;
        }
    }
    req->request_id_len = tg_headers_new_request_id(req->request_id);
}

/* W3C Trace Context. A valid traceparent (exactly one) is the parent;
 * tracestate goes with it only when it is valid itself (its lines joined,
 * as a list split over lines means). Anything malformed is dropped here,
 * so the backend never sees it: with tracing enabled a new trace takes
 * its place, without it nothing does. With tracing enabled the gateway
 * has a span of its own, which the backend gets as its parent, sampled
 * as the parent says or, with no parent, by tracing.sample_ratio; without
 * it, a valid traceparent passes through as the client sent it (written
 * again as version 00). */
static void take_trace(struct tg_request *req)
{
    const struct tg_config_tracing *tc = &cfg_of(req)->tracing;
    const struct tg_http_header *tp = NULL;
    size_t ntp = 0, state_len = 0, nstate = 0;
    for (size_t i = 0; i < req->headers.n; i++) {
        const struct tg_http_header *h = &req->headers.v[i];
        if (tg_http_name_eq(h->name, "traceparent")) {
            tp = h;
            ntp++;
        } else if (tg_http_name_eq(h->name, "tracestate")) {
            state_len += h->value.n + 1;
            nstate++;
        }
    }
    struct tg_trace_parent parent;
    bool valid = ntp == 1 && tg_trace_parse_parent(tp->value.p, tp->value.n, &parent);
    req->trace.has_parent = valid;
    if (valid) {
        memcpy(req->trace.trace_id, parent.trace_id, 16);
        memcpy(req->trace.parent_id, parent.parent_id, 8);
    }
    if (valid && nstate > 0 && state_len <= TG_TRACE_STATE_MAX + nstate) {
        char *st = tg_arena_alloc(&req->arena, state_len);
        size_t n = 0;
        for (size_t i = 0; st != NULL && i < req->headers.n; i++) {
            const struct tg_http_header *h = &req->headers.v[i];
            if (!tg_http_name_eq(h->name, "tracestate") || h->value.n == 0)
                continue;
            if (n > 0)
                st[n++] = ',';
            memcpy(st + n, h->value.p, h->value.n);
            n += h->value.n;
        }
        if (st != NULL && n > 0 && tg_trace_valid_state(st, n)) {
            req->trace.state = st;
            req->trace.state_len = n;
        }
    }
    /* The admin listener's requests (scrapes, health checks) are the
     * operator's, not traffic: no spans for them. */
    if (!tc->enabled || (req->listener != NULL && req->listener->admin)) {
        if (valid)
            tg_trace_format_parent(req->trace.parent_out, parent.trace_id, parent.parent_id,
                                   parent.flags);
        return;
    }
    if (!valid)
        tg_trace_new_id(req->trace.trace_id, 16);
    tg_trace_new_id(req->trace.span_id, 8);
    req->trace.span = true;
    req->trace.sampled = tg_trace_decide(valid, valid ? parent.flags : 0, tc->sample_ratio,
                                         valid ? 0 : tg_trace_random());
    tg_trace_format_parent(req->trace.parent_out, req->trace.trace_id, req->trace.span_id,
                           req->trace.sampled ? TG_TRACE_FLAG_SAMPLED : 0);
    if (tc->request_id == TG_TRACE_RID_TRACE_ID) {
        req->request_id_len = tg_hex_encode(req->request_id, req->trace.trace_id, 16, false);
        req->request_id[req->request_id_len] = '\0';
    }
    if (dry(req))
        say(req, "trace", "%.32s, %s", req->trace.parent_out + 3,
            req->trace.sampled ? "sampled" : "not sampled");
}

/* A header's value, copied (at most TG_ACCESS_LOG_HEADER_MAX bytes) for
 * the access log; NULL when absent. */
static const char *log_header(struct tg_request *req, const char *name)
{
    const struct tg_http_header *h = tg_http_find(&req->headers, name);
    if (h == NULL)
        return NULL;
    size_t n = h->value.n < TG_ACCESS_LOG_HEADER_MAX ? h->value.n : TG_ACCESS_LOG_HEADER_MAX;
    return tg_request_strdup(req, h->value.p, n);
}

/* User-Agent and Referer outlive the header views only when the access
 * log writes them. */
static void take_log_headers(struct tg_request *req)
{
    uint32_t set = cfg_of(req)->log.field_set;
    if (set & (1u << TG_LOG_FIELD_USER_AGENT))
        req->user_agent = log_header(req, "user-agent");
    if (set & (1u << TG_LOG_FIELD_REFERER))
        req->referer = log_header(req, "referer");
}

/* The socket peer, or for a trusted proxy the right-most untrusted address
 * it forwards for (every X-Forwarded-For and Forwarded line is read); then
 * its country and AS when GeoIP is configured. */
static enum verdict identify(struct tg_request *req)
{
    const struct tg_config *cfg = cfg_of(req);
    struct tg_context *ctx = req->ctx;
    take_request_id(req);
    take_trace(req);
    take_log_headers(req);
    size_t nx = 0, nf = 0;
    for (size_t i = 0; i < req->headers.n; i++) {
        if (tg_http_name_eq(req->headers.v[i].name, "x-forwarded-for"))
            nx++;
        else if (tg_http_name_eq(req->headers.v[i].name, "forwarded"))
            nf++;
    }
    req->has_forwarded = nx + nf > 0;
    req->peer_trusted =
        cfg->trusted_proxies != NULL && tg_cidr_set_lookup(cfg->trusted_proxies, &req->peer) != 0;
    req->client = req->peer;
    if (req->peer_trusted && nx + nf > 0) {
        struct tg_str *xff = tg_arena_alloc(&req->arena, (nx + nf) * sizeof(*xff));
        struct tg_client_chain *chain = tg_arena_alloc(&req->arena, sizeof(*chain));
        if (xff == NULL || chain == NULL)
            return out_of_memory(req);
        struct tg_str *fwd = xff + nx;
        size_t ix = 0, jf = 0;
        for (size_t i = 0; i < req->headers.n; i++) {
            const struct tg_http_header *h = &req->headers.v[i];
            if (tg_http_name_eq(h->name, "x-forwarded-for"))
                xff[ix++] = h->value;
            else if (tg_http_name_eq(h->name, "forwarded"))
                fwd[jf++] = h->value;
        }
        int rc = tg_access_client_chain(cfg->trusted_proxies, &req->peer,
                                        (enum tg_client_ip_header)cfg->client_ip_header, xff, nx,
                                        fwd, nf, chain);
        if (rc < 0) {
            TG_METRIC_INC(ctx->metrics->forwarded_conflict);
            return answer(req, 400,
                          "400 Bad Request: X-Forwarded-For and Forwarded name "
                          "different clients\n",
                          true);
        }
        req->client = chain->client;
        req->chain = chain;
    }
    if (dry(req)) {
        char client[TG_ADDR_STRLEN], peer[TG_ADDR_STRLEN];
        tg_addr_format(&req->client, client, sizeof(client));
        tg_addr_format(&req->peer, peer, sizeof(peer));
        say(req, "client", "%s (peer %s%s)", client, peer,
            req->peer_trusted ? ", a trusted proxy" : ", not trusted: forwarded headers ignored");
    }
    if (cfg->geoip != NULL) {
        tg_geoip_country(cfg->geoip, &req->client, req->country);
        TG_METRIC_INC(ctx->metrics->geoip_lookups);
        say(req, "country", "%s (sent as %s)", req->country, cfg->geoip_header);
    }
    if (cfg->geoip_asn != NULL) {
        req->asn = tg_geoip_asn(cfg->geoip_asn, &req->client);
        TG_METRIC_INC(ctx->metrics->geoip_lookups);
        say(req, "asn", "AS%u", req->asn);
    }
    return NEXT;
}

/* ---- normalise: the path the rest of the table and the backend see ----------------- */

static enum verdict normalise(struct tg_request *req)
{
    /* The front end left the raw path (without the query) in path/path_len
     * and the raw query (without '?') in query. */
    const char *raw = req->path;
    size_t rn = req->path_len;
    const char *q = req->query;
    size_t qn = q != NULL ? req->query_len : 0;
    char *path = tg_arena_alloc(&req->arena, rn + (q != NULL ? qn + 1 : 0) + 1);
    if (path == NULL)
        return out_of_memory(req);
    ssize_t pn = rn > 0 && raw[0] == '/' ? tg_router_normalize_path(raw, rn, path, rn + 1) : -1;
    if (pn < 0) {
        req->path = tg_request_strdup(req, raw, rn > 200 ? 200 : rn);
        req->path_len = req->path != NULL ? strlen(req->path) : 0;
        req->query = NULL;
        if (req->path == NULL)
            req->path = "";
        return answer(req, 400, "400 Bad Request: invalid path\n", true);
    }
    req->route_path_len = (size_t)pn;
    if (q != NULL) {
        path[pn++] = '?';
        memcpy(path + pn, q, qn);
        req->query = path + pn;
        pn += (ssize_t)qn;
    }
    path[pn] = '\0';
    if (dry(req))
        say(req, "path", "%.*s -> %s (as the backend sees it)", (int)rn, raw, path);
    req->path = path;
    req->path_len = (size_t)pn;
    if (req->method_id == TG_HTTP_CONNECT || req->method_id == TG_HTTP_TRACE)
        return answer(req, 405, "405 Method Not Allowed\n", false);
    return NEXT;
}

/* ---- handlers: endpoints the gateway answers itself --------------------------------- */

static enum verdict handlers(struct tg_request *req)
{
    const struct tg_handler *h = tg_handlers_find(req);
    if (h == NULL)
        return NEXT;
    if (dry(req)) {
        say(req, "answer", "by the gateway (%s)", h->name);
        tg_request_end(req, TG_STREAM_DONE);
        return ANSWERED;
    }
    req->phase = TG_REQ_LOCAL;
    tg_request_set_hooks(req, NULL);
    h->handle(req);
    return ANSWERED;
}

/* ---- redirect: a plain listener that sends our names to HTTPS ----------------------- */

/* After the host phase: only a Host some site serves (a pattern, a
 * tenant's label, an active tenant's custom domain) is sent on; any other
 * got the 404 routing gives, so the redirect never points a client at a
 * name an attacker chose. */
static enum verdict redirect(struct tg_request *req)
{
    int port = req->listener->redirect_to_https;
    if (port == 0)
        return NEXT;
    struct tg_str host;
    if (!tg_router_host_without_port(tg_str_make(req->host, req->host_len), &host))
        return answer(req, 400, "400 Bad Request: a redirect needs a Host\n", true);
    /* Host and path were validated by the parser and the normaliser:
     * nothing here can split the Location header. */
    char loc[64 + 8192];
    int n = port == 443 ? snprintf(loc, sizeof(loc), "Location: https://%.*s%s\r\n", (int)host.n,
                                   host.p, req->path)
                        : snprintf(loc, sizeof(loc), "Location: https://%.*s:%d%s\r\n", (int)host.n,
                                   host.p, port, req->path);
    if (n < 0 || (size_t)n >= sizeof(loc))
        return answer(req, 414, "414 URI Too Long\n", true);
    const char *extra = tg_request_strdup(req, loc, (size_t)n);
    if (extra == NULL)
        return out_of_memory(req);
    say(req, "redirect", "%.*s", n - 2, loc);
    return answer_extra(req, 308, extra, "308 Permanent Redirect: use HTTPS\n", false);
}

/* ---- host: which site; a tenant's name or custom domain ----------------------------- */

static void domain_found(void *arg, enum tg_tenant_status status, struct tg_tenant *t);

/* The tenant is known (or not): its servers serve the request's routes. */
static enum verdict use_tenant(struct tg_request *req, enum tg_tenant_status status,
                               struct tg_tenant *t)
{
    if (status == TG_TENANT_NOT_FOUND)
        return answer(req, 404, "404 Not Found: no such tenant\n", false);
    if (status != TG_TENANT_FOUND || t == NULL)
        return answer_extra(req, 503, RETRY_AFTER_1,
                            "503 Service Unavailable: the tenant directory is unavailable\n",
                            false);
    req->tenant_obj = t;
    req->tenant = t->id;
    tg_tenant_metrics_begin(req->ctx->tenant_metrics, t->id, &req->tenant_mark);
    if (t->suspended)
        return answer(req, 403, "403 Forbidden: this tenant is suspended\n", false);
    return NEXT;
}

/* The directory asks Redis; its reply (or its own timeout) comes back
 * through the callback. */
static enum verdict wait_for_tenant(struct tg_request *req)
{
    req->wait = WAIT_TENANT;
    req->wait_until =
        tg_context_now(req->ctx) + 2 * MS(cfg_of(req)->tenants.redis.timeout_ms) + WAIT_SLACK_S;
    return WAIT;
}

/* A Host no site pattern matched may be a tenant's own domain. */
static enum verdict lookup_domain(struct tg_request *req)
{
    struct tg_context *ctx = req->ctx;
    const struct tg_config *cfg = cfg_of(req);
    struct tg_str host;
    if (req->host_len == 0 ||
        !tg_router_host_without_port(tg_str_make(req->host, req->host_len), &host)) {
        TG_METRIC_INC(ctx->metrics->unknown_host);
        return answer(req, 404, "404 Not Found: no site serves this host\n", false);
    }
    if (dry(req)) {
        say(req, "site",
            "none matches; %.*s is looked up as a tenant's custom domain at run "
            "time",
            (int)host.n, host.p);
        req->site = cfg->domain_site;
        return NEXT;
    }
    struct tg_tenant *t = NULL;
    int rc = tg_tenant_lookup_domain(ctx->tenants, &cfg->tenants, host.p, host.n, &t, domain_found,
                                     req, &req->tenant_wait);
    if (rc < 0)
        return wait_for_tenant(req);
    req->site = cfg->domain_site;
    if (rc == TG_TENANT_NOT_FOUND)
        TG_METRIC_INC(ctx->metrics->unknown_host);
    return use_tenant(req, (enum tg_tenant_status)rc, t);
}

static void domain_found(void *arg, enum tg_tenant_status status, struct tg_tenant *t)
{
    struct tg_request *req = arg;
    req->tenant_wait = NULL;
    req->wait = WAIT_NONE;
    req->site = cfg_of(req)->domain_site;
    if (status == TG_TENANT_NOT_FOUND)
        TG_METRIC_INC(req->ctx->metrics->unknown_host);
    tg_request_ref(req);
    if (use_tenant(req, status, t) == NEXT)
        resume(req);
    tg_request_unref(req);
}

/* The tenant a trusted peer names in the site's tenant_header (internal
 * tooling: `curl -H "X-Tenant-ID: t1"`). 1: *out is it; 0: none (no such
 * option, an untrusted peer, no field); -1: the field came twice. */
static int tenant_named(const struct tg_request *req, const struct tg_config_site *site,
                        struct tg_str *out)
{
    if (site == NULL || site->tenant_header == NULL || !req->peer_trusted)
        return 0;
    int found = 0;
    for (size_t i = 0; i < req->headers.n; i++) {
        struct tg_str n = req->headers.v[i].name;
        if (n.n == strlen(site->tenant_header) && strncasecmp(n.p, site->tenant_header, n.n) == 0) {
            if (found)
                return -1;
            *out = req->headers.v[i].value;
            found = 1;
        }
    }
    return found;
}

static enum verdict host(struct tg_request *req)
{
    const struct tg_config *cfg = cfg_of(req);
    struct tg_str capture, named;
    if (req->listener->redirect_to_https != 0 &&
        (req->host_len == 0 || !tg_router_valid_host(tg_str_make(req->host, req->host_len))))
        return answer(req, 400, "400 Bad Request: a redirect needs a Host\n", true);
    req->site = tg_router_hosts_match(cfg->hosts, tg_str_make(req->host, req->host_len), &capture);
    /* A tenant named by a trusted peer needs no Host of the site's: such
     * tools talk to localhost. */
    if (req->site == NULL && tenant_named(req, cfg->header_site, &named) != 0) {
        req->site = cfg->header_site;
        capture.p = NULL;
    }
    int by_header = tenant_named(req, req->site, &named);
    if (by_header < 0)
        return answer(req, 400, "400 Bad Request: the tenant is named twice\n", true);
    if (by_header > 0) {
        say(req, "tenant", "named by the trusted peer in %s", req->site->tenant_header);
        capture = named;
    }
    if (req->site == NULL) {
        if (cfg->domain_site != NULL)
            return lookup_domain(req);
        TG_METRIC_INC(req->ctx->metrics->unknown_host);
        return answer(req, 404, "404 Not Found: no site serves this host\n", false);
    }
    if (dry(req)) {
        char hosts[1024];
        size_t o = 0;
        for (size_t i = 0; i < req->site->nhosts && o < sizeof(hosts); i++)
            o += (size_t)snprintf(hosts + o, sizeof(hosts) - o, " %s", req->site->hosts[i]);
        say(req, "site", "#%zu (hosts%s)", req->site->index, hosts);
    }
    if (capture.p != NULL) {
        if (!tg_router_valid_label(capture))
            return answer(req, 400, "400 Bad Request: invalid tenant name\n", true);
        char *id = tg_arena_strndup(&req->arena, capture.p, capture.n);
        if (id == NULL)
            return out_of_memory(req);
        for (char *p = id; *p; p++)
            *p = tg_ascii_lower(*p);
        req->tenant = id;
    }
    return NEXT;
}

/* ---- route: which route of the site ------------------------------------------------- */

/* A client that sent SNI may only ask for names the certificate it got
 * covers (connection reuse across names is fine when it does). */
static bool covered_by_certificate(const struct tg_request *req)
{
    SSL *ssl = req->ssl;
    if (ssl == NULL || SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) == NULL)
        return true;
    return tg_tls_cert_covers(ssl, tg_str_make(req->host, req->host_len));
}

static void say_route(struct tg_request *req, const char *folded, size_t folded_n)
{
    const struct tg_config_route *rt = req->route;
    char extra[512] = "";
    size_t o = 0;
    if (rt->methods != 0 || rt->nother_methods != 0)
        o += (size_t)snprintf(extra + o, sizeof(extra) - o, ", methods include %s", req->method);
    if (rt->ignore_case && o < sizeof(extra) &&
        (folded_n != req->route_path_len || memcmp(folded, req->path, folded_n) != 0))
        snprintf(extra + o, sizeof(extra) - o, " (the path compares as %.*s)", (int)folded_n,
                 folded);
    /* Where it is written: the file too when there is more than one. */
    const struct tg_config *cfg = cfg_of(req);
    char where[600];
    snprintf(where, sizeof(where), "%s%sline %d",
             cfg->nfiles > 1 ? tg_config_mark_file(cfg, rt->mark) : "", cfg->nfiles > 1 ? " " : "",
             rt->mark.line);
    say(req, "route", "#%zu '%s' (%s): %s match%s%s", (size_t)(rt - req->site->routes) + 1,
        rt->path, where, tg_router_pattern_kind(rt->pattern),
        rt->ignore_case ? ", ignoring case" : "", extra);
    const struct tg_config_policy_list *list = tg_limiter_policies(cfg, rt);
    char names[512] = "";
    o = 0;
    for (size_t i = 0; i < list->n && o < sizeof(names); i++)
        o += (size_t)snprintf(names + o, sizeof(names) - o, "%s%s", i ? ", " : "",
                              list->items[i]->name);
    if (list->n > 0)
        say(req, "", "rate limits: %s", names);
}

static enum verdict route(struct tg_request *req)
{
    if (!covered_by_certificate(req))
        return answer(req, 421,
                      "421 Misdirected Request: the certificate for this "
                      "connection does not cover this host\n",
                      true);
    if (req->listener->client_subject_header != NULL && req->ssl != NULL) {
        char subject[1024];
        size_t n = tg_tls_client_subject(req->ssl, subject, sizeof(subject));
        req->client_subject = n > 0 ? tg_request_strdup(req, subject, n) : NULL;
    }
    const struct tg_config_site *site = req->site;
    char *folded = NULL;
    size_t folded_n = 0;
    if (site->any_ignore_case) {
        folded = tg_arena_alloc(&req->arena, req->route_path_len + 1);
        if (folded == NULL)
            return out_of_memory(req);
        folded_n =
            tg_router_fold_path(req->path, req->route_path_len, folded, req->route_path_len + 1);
    }
    ssize_t i = tg_router_match_route(site->route_table, site->nroutes, req->method_id, req->method,
                                      req->path, req->route_path_len, folded, folded_n);
    req->route = i >= 0 ? &site->routes[i] : NULL;
    if (req->route == NULL)
        return answer(req, 404, "404 Not Found: no route for this path\n", false);
    if (dry(req))
        say_route(req, folded, folded_n);
    return NEXT;
}

/* ---- access: who may use the route --------------------------------------------------- */

/* A private-only rule passed for a private peer that sent forwarding
 * headers, with no trusted_proxies: likely a reverse proxy in front whose
 * clients all look private. Said once per peer and process (a small ring
 * per worker before the process-wide list); counted every time. */
static void warn_untrusted_forwarder(struct tg_request *req)
{
    struct tg_context *ctx = req->ctx;
    const struct tg_addr *peer = &req->peer;
    TG_METRIC_INC(ctx->metrics->forwarded_untrusted);
    unsigned n = ctx->forwarded_nwarned < TG_ARRAY_LEN(ctx->forwarded_warned)
                     ? ctx->forwarded_nwarned
                     : (unsigned)TG_ARRAY_LEN(ctx->forwarded_warned);
    for (unsigned i = 0; i < n; i++)
        if (tg_addr_equal(&ctx->forwarded_warned[i], peer))
            return;
    ctx->forwarded_warned[ctx->forwarded_nwarned++ % TG_ARRAY_LEN(ctx->forwarded_warned)] = *peer;
    struct tg_runtime *rt = ctx->rt;
    bool seen = false;
    if (rt != NULL) {
        pthread_mutex_lock(&rt->warned_lock);
        unsigned m = rt->nwarned < TG_ARRAY_LEN(rt->warned) ? rt->nwarned
                                                            : (unsigned)TG_ARRAY_LEN(rt->warned);
        for (unsigned i = 0; i < m && !seen; i++)
            seen = tg_addr_equal(&rt->warned[i], peer);
        if (!seen)
            rt->warned[rt->nwarned++ % TG_ARRAY_LEN(rt->warned)] = *peer;
        pthread_mutex_unlock(&rt->warned_lock);
    }
    if (seen)
        return;
    char text[TG_ADDR_STRLEN];
    tg_addr_format(peer, text, sizeof(text));
    tg_log_warn("request %s: %s sent X-Forwarded-For/Forwarded to a route that allows only "
                "private addresses, and trusted_proxies is empty, so the headers are ignored "
                "and %s itself is the client: if %s is your reverse proxy, list it in "
                "trusted_proxies (counted in tollgate_forwarded_untrusted_total)",
                req->request_id, text, text, text);
}

static enum verdict access_rules(struct tg_request *req)
{
    const char *why = NULL;
    const char *country = req->country[0] ? req->country : TG_GEOIP_UNKNOWN;
    bool ok = (req->site->access == NULL ||
               tg_access_check(req->site->access, &req->client, country, req->asn, &why)) &&
              (req->route->access == NULL ||
               tg_access_check(req->route->access, &req->client, country, req->asn, &why));
    say(req, "access", "%s", ok ? "allowed" : why != NULL ? why : "denied");
    if (!ok)
        return answer(req, 403, "403 Forbidden\n", false);
    if (!dry(req) && req->has_forwarded && cfg_of(req)->trusted_proxies == NULL &&
        (tg_access_private_only(req->route->access) || tg_access_private_only(req->site->access)))
        warn_untrusted_forwarder(req);
    return NEXT;
}

/* ---- tenant: the servers of the tenant the host names -------------------------------- */

static void tenant_found(void *arg, enum tg_tenant_status status, struct tg_tenant *t)
{
    struct tg_request *req = arg;
    req->tenant_wait = NULL;
    req->wait = WAIT_NONE;
    tg_request_ref(req);
    if (use_tenant(req, status, t) == NEXT) {
        if (req->tenant_obj->upstream.nservers == 0) {
            answer(req, 502, "502 Bad Gateway: the tenant has no servers\n", false);
        } else {
            req->upstream = &req->tenant_obj->upstream;
            resume(req);
        }
    }
    tg_request_unref(req);
}

static void say_upstream(struct tg_request *req)
{
    if (!dry(req))
        return;
    const struct tg_config_upstream *u = req->upstream;
    static const char *const balance[] = {"round_robin", "least_conn", "hash"};
    char servers[1024] = "";
    size_t o = 0;
    for (size_t i = 0; u != NULL && i < u->nservers && o < sizeof(servers); i++)
        o += (size_t)snprintf(servers + o, sizeof(servers) - o, " %s", u->servers[i].addr.text);
    if (req->route->upstream_tenant)
        say(req, "upstream", "the tenant's servers:%s", servers);
    else
        say(req, "upstream", "%s (%s):%s%s", u->name, balance[u->balance], servers,
            req->route->stream ? "; streamed" : "");
}

/* Dry run: static tenants are known from the configuration; a directory
 * in Redis is only asked at run time. */
static enum verdict tenant_dry(struct tg_request *req)
{
    const struct tg_config *cfg = cfg_of(req);
    struct tg_tenant *t =
        cfg->tenants.index != NULL
            ? tg_tenant_static(cfg->tenants.index, req->tenant, strlen(req->tenant))
            : NULL;
    if (t != NULL) {
        say(req, "tenant", "%s (static%s)", req->tenant, t->suspended ? ", suspended" : "");
        if (t->suspended)
            return answer(req, 403, "403 Forbidden: this tenant is suspended\n", false);
        req->tenant_obj = t; /* static: owned by the snapshot; its quota shows */
        req->upstream = &t->upstream;
        say_upstream(req);
        return NEXT;
    }
    if (cfg->tenants.directory == TG_TENANTS_REDIS) {
        const struct tg_config_redis *rc = &cfg->tenants.redis;
        say(req, "tenant", "%s (looked up in Redis %s%s at run time)", req->tenant,
            rc->ncluster > 0 ? "Cluster via " : "",
            rc->ncluster > 0 ? rc->cluster[0] : rc->address);
        return NEXT;
    }
    say(req, "tenant", "%s (unknown)", req->tenant);
    return answer(req, 404, "404 Not Found: no such tenant\n", false);
}

static enum verdict tenant(struct tg_request *req)
{
    const struct tg_config_route *r = req->route;
    if (!r->upstream_tenant) {
        req->upstream = r->upstream;
        say_upstream(req);
        return NEXT;
    }
    if (req->tenant_obj != NULL) { /* found by its custom domain */
        req->upstream = &req->tenant_obj->upstream;
        say_upstream(req);
        return NEXT;
    }
    if (dry(req) && req->site == cfg_of(req)->domain_site) {
        say(req, "tenant", "the one whose custom domain this is (looked up at run time)");
        return NEXT;
    }
    if (req->tenant == NULL)
        return answer(req, 404, "404 Not Found: no tenant for this host\n", false);
    if (dry(req))
        return tenant_dry(req);
    const struct tg_config *cfg = cfg_of(req);
    struct tg_tenant *t = NULL;
    int rc = tg_tenant_lookup(req->ctx->tenants, &cfg->tenants, req->tenant, strlen(req->tenant),
                              &t, tenant_found, req, &req->tenant_wait);
    if (rc < 0)
        return wait_for_tenant(req);
    enum verdict v = use_tenant(req, (enum tg_tenant_status)rc, t);
    if (v != NEXT)
        return v;
    if (t->upstream.nservers == 0)
        return answer(req, 502, "502 Bad Gateway: the tenant has no servers\n", false);
    req->upstream = &t->upstream;
    return NEXT;
}

/* ---- limits: body size, requests in flight, rate limits ------------------------------ */

/* The quota an item enforces (the tenant's own, when it has one). */
static const char *policy_rate(const struct tg_limiter_item *it, char *buf, size_t cap)
{
    const struct tg_config_policy *p = it->policy;
    const char *unit = it->period_s == 1      ? "s"
                       : it->period_s == 60   ? "m"
                       : it->period_s == 3600 ? "h"
                                              : "d";
    bool own = it->count != p->count || it->period_s != p->period_s ||
               it->key.params.burst != p->params.burst;
    snprintf(buf, cap, "%lld/%s, burst %lld%s%s%s%s", (long long)it->count, unit,
             (long long)it->key.params.burst, own ? ", the tenant's own quota" : "",
             p->shadow ? ", shadow" : "", p->count_failures ? ", counts failures" : "",
             p->store == TG_RL_STORE_REDIS ? ", shared in Redis" : "");
    return buf;
}

static void say_limits(struct tg_request *req, bool exempt)
{
    if (!dry(req))
        return;
    if (req->lim == NULL) {
        say(req, "limits", "%s", exempt ? "none (the client is in rate_limit.exempt)" : "none");
        return;
    }
    for (size_t i = 0; i < req->lim->n; i++) {
        const struct tg_limiter_item *it = &req->lim->items[i];
        char rate[128];
        say(req, "limit", "%s (%s) key \"%.*s\"", it->policy->name,
            policy_rate(it, rate, sizeof(rate)), it->key_pending ? 0 : (int)it->key.keylen,
            it->key_pending ? "" : it->key.key);
        if (it->key_pending)
            say(req, "",
                "(part of the key is read from the body: JSON, form or multipart by "
                "Content-Type; a body that cannot be read is refused)");
    }
}

/* Sets up the rate limits that apply (req->lim stays NULL when none do). */
static enum verdict prepare_limits(struct tg_request *req)
{
    const struct tg_config *cfg = cfg_of(req);
    const struct tg_config_policy_list *list = tg_limiter_policies(cfg, req->route);
    struct tg_limiter_input in = {
        .cfg = cfg,
        .site = req->site,
        .route = req->route,
        .client = &req->client,
        .tenant = req->tenant,
        .tenant_interval_ns = req->tenant_obj != NULL ? req->tenant_obj->rate_interval_ns : 0,
        .tenant_count = req->tenant_obj != NULL ? req->tenant_obj->rate_count : 0,
        .tenant_period_s = req->tenant_obj != NULL ? req->tenant_obj->rate_period_s : 0,
        .tenant_burst = req->tenant_obj != NULL ? req->tenant_obj->burst : 0,
        .country = req->country,
        .asn = req->asn,
        .headers = &req->headers,
        .query = tg_str_make(req->query, req->query != NULL ? req->query_len : 0),
        .arena = &req->arena,
    };
    bool exempt = false;
    if (list->n > 0) {
        struct tg_limiter_state *lim = tg_arena_alloc(&req->arena, tg_limiter_state_size(list->n));
        if (lim == NULL || tg_limiter_prepare(lim, &in, &req->ctx->limiter) < 0) {
            /* Never let a request through unlimited because memory ran
             * short: the limit is the promise. */
            tg_faultlog_note(TG_LOG_ERROR, "out of memory", "requests failed",
                             "request %s: no room for its rate-limit keys (answered 503)",
                             req->request_id);
            return answer_extra(req, 503, RETRY_AFTER_1, "503 Service Unavailable: out of memory\n",
                                true);
        }
        if (lim->active)
            req->lim = lim;
        else
            exempt = true;
    }
    say_limits(req, exempt);
    if (req->upstream != NULL && req->upstream->balance == TG_BALANCE_HASH)
        req->balance_hash = tg_limiter_hash_part(&in, &req->upstream->hash_key);
    return NEXT;
}

/* The body a rate-limit key reads is here: all of it, more than the
 * largest max_peek (the key cannot be read: 413), or as much as the
 * stream will hold (the same). */
static bool peek_ready(struct tg_request *req, struct iovec *spans, int *nspans, bool *end,
                       size_t *avail)
{
    *nspans = req->stream_ops->body_peek(req->stream, spans, *nspans, end);
    *avail = 0;
    for (int i = 0; i < *nspans; i++)
        *avail += spans[i].iov_len;
    return *end || *avail > tg_limiter_peek_wanted(req->lim) ||
           req->stream_ops->body_room(req->stream) == 0;
}

#define PEEK_SPANS 16

/* Hands the body to the limiter (in one piece); refuses the request when
 * a key part cannot be read from it. */
static enum verdict take_body(struct tg_request *req)
{
    struct iovec spans[PEEK_SPANS];
    int n = PEEK_SPANS;
    bool end = false;
    size_t avail = 0;
    if (!peek_ready(req, spans, &n, &end, &avail)) {
        req->wait = WAIT_BODY;
        return WAIT;
    }
    req->wait = WAIT_NONE;
    struct tg_limiter_state *lim = req->lim;
    size_t want = tg_limiter_peek_wanted(lim);
    bool complete = end && avail <= want;
    size_t take = avail < want ? avail : want;
    const char *body = n > 0 ? spans[0].iov_base : "";
    if (n > 1 && spans[0].iov_len < take) {
        char *joined = tg_arena_alloc(&req->arena, take + 1);
        if (joined == NULL)
            return out_of_memory(req);
        size_t got = 0;
        for (int i = 0; i < n && got < take; i++) {
            size_t k = spans[i].iov_len < take - got ? spans[i].iov_len : take - got;
            memcpy(joined + got, spans[i].iov_base, k);
            got += k;
        }
        body = joined;
    }
    tg_limiter_take_body(lim, body, take, complete);
    if (lim->refuse_status != 0) {
        /* A per-account limit that cannot tell the account: refused,
         * never re-keyed behind the operator's back. */
        char text[256];
        snprintf(text, sizeof(text),
                 "%d %s: the rate limit on this route reads the request "
                 "body and cannot: %s\n",
                 lim->refuse_status, tg_http_reason(lim->refuse_status), lim->refuse_reason);
        return answer(req, lim->refuse_status, text, true);
    }
    return NEXT;
}

static void decided(void *arg);

static void on_delay(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    struct tg_request *req = t->data;
    req->wait = WAIT_NONE;
    tg_request_ref(req);
    resume(req);
    tg_request_unref(req);
}

/* The limiter decided: refuse, hold, or go on. */
static enum verdict after_decision(struct tg_request *req)
{
    struct tg_limiter_state *lim = req->lim;
    req->limits_step = LIM_DECIDED;
    if (lim->store_error)
        return answer_extra(req, 503, RETRY_AFTER_1,
                            "503 Service Unavailable: the rate-limit store is unavailable\n",
                            false);
    if (lim->shadow_limited)
        tg_log_info("request %s: a shadow rate-limit policy would have refused it",
                    req->request_id);
    if (lim->limited) {
        /* Written like the route's other errors (`errors:`); the JSON form
         * keeps the policy and retry_after members it always had. */
        int64_t retry;
        const char *policy = tg_limiter_refusal(lim, &retry);
        char why[160], extra[160];
        snprintf(why, sizeof(why), "rate limit '%s'; retry in %lld s", policy, (long long)retry);
        snprintf(extra, sizeof(extra), ",\"policy\":\"%s\",\"retry_after\":%lld", policy,
                 (long long)retry);
        tg_request_respond_error(req, 429, why, extra, false);
        return ANSWERED;
    }
    if (lim->delay_ns > 0) {
        ev_timer_init(&req->delay_timer, on_delay, (double)lim->delay_ns / 1e9, 0.);
        req->delay_timer.data = req;
        ev_timer_start(req->ctx->loop, &req->delay_timer);
        req->wait = WAIT_DELAY;
        req->wait_until = tg_context_now(req->ctx) + (double)lim->delay_ns / 1e9 + WAIT_SLACK_S;
        return WAIT;
    }
    return NEXT;
}

static void decided(void *arg)
{
    struct tg_request *req = arg;
    req->wait = WAIT_NONE;
    tg_request_ref(req);
    if (after_decision(req) == NEXT)
        resume(req);
    tg_request_unref(req);
}

static enum verdict limits(struct tg_request *req)
{
    const struct tg_config *cfg = cfg_of(req);
    enum verdict v;
    switch (req->limits_step) {
    case LIM_PREPARE: {
        const struct tg_config_route *r = req->route;
        if (r->max_body != 0 && req->body_length > 0 && (uint64_t)req->body_length > r->max_body)
            return answer(req, 413, "413 Content Too Large\n", true);
        if (r->max_in_flight != 0 && !dry(req)) {
            req->in_flight_counted = true;
            if (atomic_fetch_add(&cfg->route_in_flight[r->counter], 1) >= r->max_in_flight)
                return answer_extra(req, 503, RETRY_AFTER_1,
                                    "503 Service Unavailable: too many requests in flight\n",
                                    false);
        }
        if ((v = prepare_limits(req)) != NEXT)
            return v;
        if (dry(req))
            return NEXT;
        /* The backend's head is built while the header views are valid;
         * then the front end may drop the client's head. */
        if (tg_cache_serve_prepare(req) < 0 || tg_forward_prepare(req) < 0)
            return out_of_memory(req);
        tg_request_negotiate(req);
        req->headers_valid = false;
        req->headers.n = 0;
        req->stream_ops->head_done(req->stream);
        req->limits_step = LIM_BODY;
    }
    /* fall through */
    case LIM_BODY:
        if (req->lim != NULL && req->lim->needs_body) {
            if ((v = take_body(req)) != NEXT) {
                if (v == WAIT)
                    req->wait_until = req->client_read_at + MS(cfg->client.body_timeout_ms);
                return v;
            }
        }
        req->limits_step = LIM_DECIDE;
    /* fall through */
    case LIM_DECIDE:
        if (req->lim == NULL)
            return NEXT;
        if (tg_limiter_decide(req->lim, decided, req) == 1) {
            req->wait = WAIT_DECIDE;
            req->wait_until =
                tg_context_now(req->ctx) + 2 * MS(cfg->rate_limit.redis.timeout_ms) + WAIT_SLACK_S;
            return WAIT;
        }
        return after_decision(req);
    default:
        return NEXT; /* decided (a delay passed) */
    }
}

/* ---- forward --------------------------------------------------------------------------- */

static void say_forward(struct tg_request *req)
{
    const struct tg_config *cfg = cfg_of(req);
    const struct tg_config_headers *rules =
        req->route->headers != NULL ? req->route->headers : &cfg->headers;
    bool https = tg_request_hsts(req);
    char text[2048];
    size_t o = 0;
    for (size_t i = 0; i < rules->nadd && o < sizeof(text); i++)
        if (!rules->add[i].https_only || https)
            /* A value from the environment may be a secret: as written. */
            o += (size_t)snprintf(text + o, sizeof(text) - o, " %s: %s;", rules->add[i].name,
                                  rules->add[i].written != NULL ? rules->add[i].written
                                                                : rules->add[i].value);
    if (o < sizeof(text))
        snprintf(text + o, sizeof(text) - o, "%s",
                 rules->override ? " (replacing the backend's)" : " (unless the backend set them)");
    say(req, "adds", "%s", text + (text[0] == ' '));
    o = 0;
    text[0] = '\0';
    for (size_t i = 0; i < rules->nremove && o < sizeof(text); i++)
        o += (size_t)snprintf(text + o, sizeof(text) - o, "%s%.*s", i ? " " : "",
                              (int)rules->remove[i].n, rules->remove[i].p);
    say(req, "removes", "%s", text);
    say(req, "answer", "proxied%s", req->lim != NULL ? " if the limits above allow" : "");
}

static enum verdict forward(struct tg_request *req)
{
    if (dry(req)) {
        say_forward(req);
        tg_request_end(req, TG_STREAM_DONE);
        return ANSWERED;
    }
    /* A request the route's cache may answer goes through it; it forwards
     * what it cannot answer. */
    if (req->cache != NULL)
        tg_cache_serve_start(req);
    else
        tg_forward_start(req);
    return ANSWERED;
}

/* ---- the table and its driver --------------------------------------------------------- */

static const struct {
    const char *name;
    enum verdict (*run)(struct tg_request *req);
} phases[] = {
    {"identify", identify}, {"normalise", normalise}, {"handlers", handlers},   {"host", host},
    {"redirect", redirect}, {"route", route},         {"access", access_rules}, {"tenant", tenant},
    {"limits", limits},     {"forward", forward},
};

#define NPHASES (sizeof(phases) / sizeof(phases[0]))

/* While a request waits in the table: its deadline. */
static ev_tstamp waiting_timeout(struct tg_request *req, ev_tstamp now)
{
    if (now < req->wait_until)
        return req->wait_until;
    const struct tg_config *cfg = cfg_of(req);
    switch (req->wait) {
    case WAIT_TENANT:
        tg_tenant_cancel(req->tenant_wait);
        req->tenant_wait = NULL;
        req->wait = WAIT_NONE;
        tg_faultlog_note(TG_LOG_ERROR, "tenant directory", "requests failed",
                         "request %s: no answer in time (answered 503)", req->request_id);
        answer_extra(req, 503, RETRY_AFTER_1,
                     "503 Service Unavailable: the tenant directory is unavailable\n", false);
        return 0;
    case WAIT_BODY:
        req->wait = WAIT_NONE;
        answer(req, 408, "408 Request Timeout: the request body stopped arriving\n", true);
        return 0;
    case WAIT_DECIDE:
        tg_limiter_cancel(req->lim);
        req->wait = WAIT_NONE;
        tg_faultlog_note(TG_LOG_ERROR, "rate-limit store", "requests failed",
                         "request %s: no answer in time (answered 503)", req->request_id);
        answer_extra(req, 503, RETRY_AFTER_1,
                     "503 Service Unavailable: the rate-limit store is unavailable\n", false);
        return 0;
    case WAIT_DELAY:
        /* The delay timer should have fired: go on as it would have. */
        ev_timer_stop(req->ctx->loop, &req->delay_timer);
        req->wait = WAIT_NONE;
        resume(req);
        return 0;
    default:
        (void)cfg;
        return now + MS(cfg->client.send_timeout_ms);
    }
}

/* Body bytes arrived while a rate-limit key waits for them. */
static void waiting_body(struct tg_request *req)
{
    if (req->wait != WAIT_BODY)
        return;
    resume(req);
}

static const struct tg_request_hooks waiting_hooks = {
    .on_body = waiting_body,
    .on_timeout = waiting_timeout,
};

static void run(struct tg_request *req)
{
    while (req->step < NPHASES && !tg_request_over(req)) {
        enum verdict v = phases[req->step].run(req);
        if (v == ANSWERED)
            return;
        if (v == WAIT) {
            tg_request_set_hooks(req, &waiting_hooks);
            tg_request_arm(req, req->wait_until);
            return;
        }
        req->step++;
    }
}

/* What a phase waited for has come: its work is done, go on after it. */
static void resume(struct tg_request *req)
{
    if (tg_request_over(req))
        return;
    tg_request_set_hooks(req, NULL);
    /* The limits phase resumes within itself (body, then decision). */
    if (phases[req->step].run != limits || req->limits_step == LIM_DECIDED)
        req->step++;
    run(req);
}

void tg_pipeline_start(struct tg_request *req)
{
    tg_request_ref(req);
    req->phase = TG_REQ_DECIDING;
    req->step = 0;
    req->limits_step = LIM_PREPARE;
    run(req);
    tg_request_unref(req);
}
