/* The dashboard's snapshot and page policy (dashboard.h). It reads what
 * the workers and the process-wide parts already keep, summed the way
 * /metrics sums it (scrape.h); it keeps no state of its own beyond the
 * page's Content-Security-Policy, made once. */
#include "dashboard.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "certstore.h"
#include "codec.h"
#include "config.h"
#include "context.h"
#include "health.h"
#include "metrics.h"
#include "resolver.h"
#include "scrape.h"
#include "str.h"
#include "tenant_metrics.h"
#include "upstream.h"
#include "version.h"

/* ---- the page's Content-Security-Policy ------------------------------------- */

static pthread_once_t csp_once = PTHREAD_ONCE_INIT;
static char csp[512];
static bool csp_made;

/* "'sha256-BASE64'" of the bytes between `open` and `close` in the page
 * (the first such block), into out. False when the page has none. */
static bool block_hash(const char *open, const char *close, char *out, size_t cap)
{
    const char *page = (const char *)tg_dashboard_page;
    const char *start = memmem(page, tg_dashboard_page_len, open, strlen(open));
    if (start == NULL)
        return false;
    start += strlen(open);
    const char *end =
        memmem(start, tg_dashboard_page_len - (size_t)(start - page), close, strlen(close));
    if (end == NULL)
        return false;
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)start, (size_t)(end - start), md);
    unsigned char b64[4 * ((SHA256_DIGEST_LENGTH + 2) / 3) + 1];
    EVP_EncodeBlock(b64, md, SHA256_DIGEST_LENGTH);
    return (size_t)snprintf(out, cap, "'sha256-%s'", b64) < cap;
}

static void make_csp(void)
{
    char script[64], style[64];
    if (!block_hash("<script>", "</script>", script, sizeof(script)) ||
        !block_hash("<style>", "</style>", style, sizeof(style)))
        return;
    /* img-src data: is the favicon (href="data:,"), so the browser asks
     * the admin listener for no /favicon.ico. */
    snprintf(csp, sizeof(csp),
             "default-src 'none'; script-src %s; style-src %s; connect-src 'self'; "
             "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
             script, style);
    csp_made = true;
}

const char *tg_dashboard_csp(void)
{
    pthread_once(&csp_once, make_csp);
    return csp_made ? csp : NULL;
}

/* ---- parts shared with /status -------------------------------------------------- */

/* An upstream's names: ,"resolve":{"failures":N,"names":[...]} (the first 16). */
static void names_json(struct tg_strbuf *b, struct tg_resolver_group *g)
{
    struct tg_resolver_name_state st[16];
    size_t n = tg_resolver_group_names(g, st, 16);
    tg_strbuf_printf(b, ",\"resolve\":{\"failures\":%llu,\"names\":[",
                     (unsigned long long)tg_resolver_group_failures(g));
    for (size_t i = 0; i < n && i < 16; i++) {
        tg_strbuf_printf(b, "%s{\"name\":", i ? "," : "");
        tg_strbuf_json(b, st[i].name);
        tg_strbuf_printf(b, ",\"addresses\":%zu,\"state\":\"%s\"", st[i].addresses,
                         !st[i].answered ? "resolving"
                         : st[i].failing ? "failing"
                                         : "ok");
        if (st[i].failing) {
            tg_strbuf_printf(b, ",\"error\":");
            tg_strbuf_json(b, st[i].error);
        }
        tg_strbuf_printf(b, "}");
    }
    tg_strbuf_printf(b, "]}");
}

void tg_dashboard_upstreams_json(struct tg_strbuf *b, struct tg_context *w,
                                 const struct tg_config *cfg)
{
    tg_strbuf_put(b, "[", 1);
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct tg_config_upstream *u = &cfg->upstreams[i];
        tg_strbuf_printf(b, "%s{\"name\":", i ? "," : "");
        tg_strbuf_json(b, u->name);
        /* The servers requests choose from now (names: their addresses). */
        const struct tg_config_server *servers;
        size_t n;
        struct tg_server_set *set = tg_upstream_servers(w, u, &servers, &n);
        tg_strbuf_printf(b, ",\"addresses\":%zu,\"servers\":[", n);
        for (size_t s = 0; s < n; s++) {
            struct tg_upstream_server_state st;
            tg_upstream_server_state(w, u, &servers[s], &st);
            bool passing = tg_health_up(&servers[s].addr);
            tg_strbuf_printf(b, "%s{\"address\":", s ? "," : "");
            tg_strbuf_json(b, servers[s].addr.text);
            if (servers[s].host != NULL) {
                tg_strbuf_printf(b, ",\"name\":");
                tg_strbuf_json(b, servers[s].host);
            }
            tg_strbuf_printf(b,
                             ",\"healthy\":%s,\"ejected\":%s,\"check_passing\":%s,"
                             "\"failures_in_a_row\":%u,\"active\":%u,\"idle\":%u}",
                             st.ejected || !passing ? "false" : "true",
                             st.ejected ? "true" : "false", passing ? "true" : "false", st.fails,
                             st.active, st.idle);
        }
        tg_strbuf_printf(b, "]");
        tg_server_set_unref(set);
        if (u->resolve != NULL)
            names_json(b, u->resolve);
        tg_strbuf_printf(b, "}");
    }
    tg_strbuf_put(b, "]", 1);
}

void tg_dashboard_certificates_json(struct tg_strbuf *b, struct tg_certstore *store, time_t now)
{
    tg_strbuf_put(b, "[", 1);
    struct tg_certstore_snap *snap = store != NULL ? tg_certstore_acquire(store) : NULL;
    for (size_t i = 0; snap != NULL && i < tg_certstore_count(snap); i++) {
        const char *put_as = NULL;
        const struct tg_cert *c = tg_certstore_at(snap, i, &put_as);
        char issuer[256] = "", expires[32] = "", days[32] = "null";
        X509_NAME_oneline(X509_get_issuer_name(c->x509), issuer, sizeof(issuer));
        struct tm tm;
        if (ASN1_TIME_to_tm(X509_get0_notAfter(c->x509), &tm) == 1) {
            strftime(expires, sizeof(expires), "%Y-%m-%dT%H:%M:%SZ", &tm);
            snprintf(days, sizeof(days), "%.2f", difftime(timegm(&tm), now) / 86400.0);
        }
        tg_strbuf_printf(b, "%s{\"source\":\"%s\",\"label\":", i ? "," : "",
                         put_as != NULL ? "acme" : "config");
        tg_strbuf_json(b, c->label != NULL ? c->label : "");
        tg_strbuf_printf(b, ",\"kind\":\"%s\",\"names\":[", tg_cert_kind_name(c->kind));
        for (size_t n = 0; n < c->nnames; n++) {
            tg_strbuf_printf(b, "%s", n ? "," : "");
            tg_strbuf_json(b, c->names[n]);
        }
        tg_strbuf_printf(b, "],\"issuer\":");
        tg_strbuf_json(b, issuer);
        tg_strbuf_printf(b, ",\"not_after\":\"%s\",\"days_left\":%s}", expires, days);
    }
    if (snap != NULL)
        tg_certstore_release(snap);
    tg_strbuf_put(b, "]", 1);
}

/* ---- the snapshot ------------------------------------------------------------------ */

/* The busiest tenants, at most DASHBOARD_TENANTS of those /metrics names
 * (admin.tenant_series): [{"tenant": ID, "requests": N, "errors": N,
 * "in_flight": N, "rps": null}], requests and errors (5xx answers)
 * cumulative since the tenant got its series; the page differences
 * `requests` between two polls for req/s. Empty when per-tenant metrics
 * are off. */
#define DASHBOARD_TENANTS 10

static void dashboard_tenants_json(struct tg_strbuf *b, struct tg_runtime *rt)
{
    struct tg_tenant_report rep;
    if (tg_tenant_metrics_limit() == 0 || tg_scrape_tenant_report(rt, &rep) < 0) {
        tg_strbuf_put(b, "[]", 2);
        return;
    }
    tg_strbuf_put(b, "[", 1);
    for (size_t i = 0; i < rep.n && i < DASHBOARD_TENANTS; i++) {
        const struct tg_tenant_series *s = &rep.rows[i].s;
        uint64_t requests = 0;
        for (unsigned c = 0; c < TG_METRICS_STATUS_CLASSES; c++)
            requests += s->requests[c];
        tg_strbuf_printf(b, "%s{\"tenant\":", i ? "," : "");
        tg_strbuf_json(b, rep.rows[i].id);
        tg_strbuf_printf(b, ",\"requests\":%llu,\"errors\":%llu,\"in_flight\":%lld,\"rps\":null}",
                         (unsigned long long)requests, (unsigned long long)s->requests[5],
                         (long long)s->active);
    }
    tg_strbuf_put(b, "]", 1);
    tg_tenant_report_free(&rep);
}

/* Requests by status class, the latency histogram (per-bucket counts,
 * not cumulative) and bytes, over every route series but the admin
 * listener's own (counted apart: the dashboard's polls are no traffic). */
static void traffic_json(struct tg_strbuf *b, struct tg_runtime *rt)
{
    struct tg_route_stats all = {0}, one;
    uint64_t admin = 0;
    unsigned nroutes = tg_metrics_series_count(TG_METRICS_ROUTE);
    for (unsigned id = 0; id < nroutes; id++) {
        tg_scrape_sum_route(rt, id, &one);
        if (id == tg_metrics_admin_route()) {
            for (unsigned c = 0; c < TG_METRICS_STATUS_CLASSES; c++)
                admin += one.requests[c];
            continue;
        }
        for (unsigned c = 0; c < TG_METRICS_STATUS_CLASSES; c++)
            all.requests[c] += one.requests[c];
        for (unsigned k = 0; k <= TG_METRICS_MAX_BUCKETS; k++)
            all.duration[k] += one.duration[k];
        all.duration_us += one.duration_us;
        all.bytes_in += one.bytes_in;
        all.bytes_out += one.bytes_out;
    }
    uint64_t total = 0;
    for (unsigned c = 0; c < TG_METRICS_STATUS_CLASSES; c++)
        total += all.requests[c];
    tg_strbuf_printf(b, ",\"requests\":{\"total\":%llu", (unsigned long long)total);
    for (unsigned c = 0; c < TG_METRICS_STATUS_CLASSES; c++)
        tg_strbuf_printf(b, ",\"%s\":%llu", tg_metrics_status_class_name(c),
                         (unsigned long long)all.requests[c]);
    tg_strbuf_printf(b, "},\"admin_requests\":%llu,\"bytes\":{\"received\":%llu,\"sent\":%llu}",
                     (unsigned long long)admin, (unsigned long long)all.bytes_in,
                     (unsigned long long)all.bytes_out);
    unsigned nb = tg_metrics_nbuckets();
    tg_strbuf_printf(b, ",\"latency\":{\"bounds\":[");
    for (unsigned k = 0; k < nb; k++)
        tg_strbuf_printf(b, "%s%g", k ? "," : "", tg_metrics_bucket_bound(k));
    tg_strbuf_printf(b, "],\"counts\":[");
    for (unsigned k = 0; k <= nb; k++)
        tg_strbuf_printf(b, "%s%llu", k ? "," : "", (unsigned long long)all.duration[k]);
    tg_strbuf_printf(b, "],\"sum_seconds\":%.6f}", (double)all.duration_us / 1e6);
}

static void put_results(struct tg_strbuf *b, const struct tg_policy_stats *s)
{
    for (unsigned r = 0; r < TG_RL_RESULTS; r++)
        tg_strbuf_printf(b, "%s\"%s\":%llu", r ? "," : "", tg_metrics_rl_result_name(r),
                         (unsigned long long)s->results[r]);
}

/* Rate-limit decisions: summed over every policy series (those a reload
 * removed too), then per policy of the running configuration. */
static void ratelimit_json(struct tg_strbuf *b, struct tg_runtime *rt, const struct tg_config *cfg)
{
    struct tg_policy_stats all = {0}, one;
    unsigned npol = tg_metrics_series_count(TG_METRICS_POLICY);
    for (unsigned id = 0; id < npol; id++) {
        tg_scrape_sum_policy(rt, id, &one);
        for (unsigned r = 0; r < TG_RL_RESULTS; r++)
            all.results[r] += one.results[r];
    }
    tg_strbuf_printf(b, ",\"ratelimit\":{");
    put_results(b, &all);
    tg_strbuf_printf(b, ",\"policies\":[");
    for (size_t i = 0; i < cfg->rate_limit.npolicies; i++) {
        const struct tg_config_policy *p = &cfg->rate_limit.policies[i];
        tg_scrape_sum_policy(rt, p->metrics_id, &one);
        tg_strbuf_printf(b, "%s{\"policy\":", i ? "," : "");
        tg_strbuf_json(b, p->name);
        tg_strbuf_put(b, ",", 1);
        put_results(b, &one);
        tg_strbuf_put(b, "}", 1);
    }
    tg_strbuf_printf(b, "]}");
}

void tg_dashboard_json(struct tg_strbuf *b, struct tg_context *w, const struct tg_config *cfg)
{
    struct tg_runtime *rt = w->rt;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    double started = tg_metrics_started_at();
    tg_strbuf_printf(b,
                     "{\"version\":\"%s\",\"now\":%.3f,\"uptime_seconds\":%.3f,\"workers\":%u,"
                     "\"connections\":%lu,\"sse_open\":%lld",
                     TG_VERSION, now, started > 0 ? now - started : 0.0, rt->nworkers,
                     (unsigned long)atomic_load(&rt->nconns), (long long)tg_scrape_sse_open(rt));
    traffic_json(b, rt);
    ratelimit_json(b, rt, cfg);
    tg_strbuf_printf(b, ",\"upstreams\":");
    tg_dashboard_upstreams_json(b, w, cfg);
    tg_strbuf_printf(b, ",\"certificates\":");
    tg_dashboard_certificates_json(b, cfg->certstore, ts.tv_sec);
    tg_strbuf_printf(b, ",\"tenants\":");
    dashboard_tenants_json(b, rt);
    tg_strbuf_printf(b, ",\"note\":\"counters are cumulative since start; requests, bytes "
                        "and latency leave out the admin listener's own requests "
                        "(admin_requests); upstream health is as seen by the worker that "
                        "answered\"}\n");
}
