/* `tollgate explain`: what the configuration would do with one request,
 * without sending anything. The same functions as the request path decide
 * (parser, normaliser, host index, route match, client identity, access
 * rules, rate-limit keys, header rules); only the I/O is missing. Tenants
 * that live in Redis are reported as looked up at run time. */
#include "explain.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "config.h"
#include "conn.h"
#include "http1.h"
#include "limiter.h"
#include "proxy.h"
#include "router.h"
#include "tenant.h"
#include "worker.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: tollgate explain [-c FILE] [--peer ADDRESS] 'METHOD URL' [-H 'Name: value']...\n"
                 "  e.g. tollgate explain -c conf/tollgate.yaml 'GET https://localhost/_/'\n"
                 "       -H 'X-Forwarded-For: 203.0.113.7' --peer 10.0.0.2\n");
}

static const char *policy_rate(const struct tg_config_policy *p, char *buf, size_t cap)
{
    const char *unit = p->period_s == 1 ? "s" : p->period_s == 60 ? "m" : p->period_s == 3600 ? "h" : "d";
    snprintf(buf, cap, "%lld/%s, burst %lld%s%s%s", (long long)p->count, unit,
             (long long)p->params.burst, p->shadow ? ", shadow" : "",
             p->count_failures ? ", counts failures" : "",
             p->store == TG_RL_STORE_REDIS ? ", shared in Redis" : "");
    return buf;
}

/* Prints the decisions for one request; everything it allocates hangs off
 * `req` and `raw` (freed by the caller). */
static void explain_request(struct tg_config *cfg, struct tg_request *req, char *raw,
                            const char *method, const char *url, const char *host,
                            const char *target, const char **hdrs, size_t nhdrs, bool https,
                            const char *peer_text, struct tg_conn *cp)
{
    /* The request as it would arrive. */
    size_t n = (size_t)snprintf(raw, 65536, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, host);
    for (size_t i = 0; i < nhdrs && n < 60000; i++)
        n += (size_t)snprintf(raw + n, 65536 - n, "%s\r\n", hdrs[i]);
    n += (size_t)snprintf(raw + n, 65536 - n, "\r\n");

    const struct tg_conn *cn = cp;
    size_t scanned = 0;
    int status = 0;
    const char *reason = NULL;
    struct tg_http1_limits limits = {cfg->client.max_request_line,
                                     cfg->client.max_request_line + cfg->client.max_head,
                                     cfg->client.max_headers};
    ssize_t r = tg_http1_parse_request(raw, n, &scanned, &limits, &req->head, &status, &reason);
    printf("request:   %s %s%s\n", method, url, https ? "" : "");
    if (r <= 0) {
        printf("answer:    %d (%s)\n", status ? status : 400, reason ? reason : "incomplete");
        return;
    }
    const struct tg_http1_request *h = &req->head;

    /* Client identity, as identify_client does. */
    req->peer_trusted = cfg->trusted_proxies != NULL &&
                        tg_cidr_set_lookup(cfg->trusted_proxies, &cn->peer) != 0;
    req->client = cn->peer;
    if (req->peer_trusted) {
        struct tg_str *xff = calloc(h->nheaders + 1, sizeof(*xff));
        struct tg_str *fwd = calloc(h->nheaders + 1, sizeof(*fwd));
        size_t nx = 0, nf = 0;
        for (size_t i = 0; xff != NULL && fwd != NULL && i < h->nheaders; i++) {
            if (tg_http_name_eq(h->headers[i].name, "x-forwarded-for"))
                xff[nx++] = h->headers[i].value;
            else if (tg_http_name_eq(h->headers[i].name, "forwarded"))
                fwd[nf++] = h->headers[i].value;
        }
        struct tg_client_chain chain;
        int rc = tg_access_client_chain(cfg->trusted_proxies, &cn->peer,
                                        (enum tg_client_ip_header)cfg->client_ip_header, xff, nx,
                                        fwd, nf, &chain);
        free(xff);
        free(fwd);
        if (rc < 0) {
            printf("answer:    400 (X-Forwarded-For and Forwarded name different clients; "
                   "set client_ip_header to the one your proxy writes)\n");
            return;
        }
        req->client = chain.client;
    }
    char client[TG_ADDR_STRLEN];
    tg_addr_format(&req->client, client, sizeof(client));
    printf("client:    %s (peer %s%s)\n", client, peer_text,
           req->peer_trusted ? ", a trusted proxy" : ", not trusted: forwarded headers ignored");
    if (cfg->geoip != NULL) {
        tg_geoip_country(cfg->geoip, &req->client, req->country);
        printf("country:   %s (sent as %s)\n", req->country, cfg->geoip_header);
    }
    if (cfg->geoip_asn != NULL) {
        req->asn = tg_geoip_asn(cfg->geoip_asn, &req->client);
        printf("asn:       AS%u\n", req->asn);
    }

    char *norm = tg_arena_alloc(&req->arena, h->path.n + 1);
    ssize_t pn = tg_router_normalize_path(h->path.p, h->path.n, norm, h->path.n + 1);
    if (pn < 0) {
        printf("answer:    400 (the path is refused: %.*s)\n", (int)h->path.n, h->path.p);
        return;
    }
    printf("path:      %.*s -> %.*s%s%.*s (as the backend sees it)\n", (int)h->path.n, h->path.p,
           (int)pn, norm, h->query.p ? "?" : "", (int)(h->query.p ? h->query.n : 0),
           h->query.p ? h->query.p : "");
    if (cn->lcfg->redirect_to_https) {
        printf("answer:    308 to https://%s (listener %s redirects)\n", host, cn->lcfg->key);
        return;
    }
    struct tg_str capture;
    req->site = tg_router_hosts_match(cfg->hosts, h->host, &capture);
    if (req->site == NULL) {
        if (cfg->domain_site != NULL)
            printf("site:      none matches; %s is looked up as a tenant's custom domain\n", host);
        else
            printf("answer:    404 (no site serves %s)\n", host);
        if (cfg->domain_site == NULL)
            return;
        req->site = cfg->domain_site;
    } else {
        printf("site:      #%zu (hosts", req->site->index);
        for (size_t i = 0; i < req->site->nhosts; i++)
            printf(" %s", req->site->hosts[i]);
        printf(")\n");
    }
    if (capture.p != NULL) {
        if (!tg_router_valid_label(capture)) {
            printf("answer:    400 (tenant label '%.*s' is not a DNS label)\n", (int)capture.n,
                   capture.p);
            return;
        }
        char *id = tg_arena_strndup(&req->arena, capture.p, capture.n);
        for (char *p = id; *p; p++)
            *p = tg_ascii_lower(*p);
        req->tenant = id;
        req->tenant_obj = cfg->tenants.index ? tg_tenant_static(cfg->tenants.index, id, strlen(id)) : NULL;
        if (req->tenant_obj != NULL)
            printf("tenant:    %s (static%s)\n", id, req->tenant_obj->suspended ? ", suspended: 403" : "");
        else if (cfg->tenants.directory == TG_TENANTS_REDIS)
            printf("tenant:    %s (looked up in Redis %s at run time)\n", id, cfg->tenants.redis.address);
        else
            printf("tenant:    %s (unknown: 404)\n", id);
    }
    char *folded = tg_arena_alloc(&req->arena, (size_t)pn + 1);
    size_t folded_n = folded != NULL ? tg_router_fold_path(norm, (size_t)pn, folded, (size_t)pn + 1)
                                     : 0;
    req->route = tg_proxy_match_route(req->site, h->method_id, h->method, norm, (size_t)pn,
                                      folded, folded_n);
    if (req->route == NULL) {
        printf("answer:    404 (no route matches %s %.*s)\n", method, (int)pn, norm);
        return;
    }
    /* Which route, and why it took the request: its pattern, how it
     * matches, its methods and case rule, its place in the list. */
    const struct tg_config_route *rt = req->route;
    printf("route:     #%zu '%s' (line %d): %s match%s", (size_t)(rt - req->site->routes) + 1,
           rt->path, rt->mark.line, tg_router_pattern_kind(rt->pattern),
           rt->ignore_case ? ", ignoring case" : "");
    if (rt->methods != 0 || rt->nother_methods != 0)
        printf(", methods include %s", method);
    if (rt->ignore_case && (folded_n != (size_t)pn || memcmp(folded, norm, folded_n) != 0))
        printf(" (the path compares as %.*s)", (int)folded_n, folded);
    printf("\n           ");
    if (req->route->upstream_tenant) {
        printf(" -> the tenant's servers");
        if (req->tenant_obj != NULL) {
            printf(":");
            for (size_t i = 0; i < req->tenant_obj->upstream.nservers; i++)
                printf(" %s", req->tenant_obj->upstream.servers[i].addr.text);
        }
        printf("\n");
    } else {
        const struct tg_config_upstream *u = req->route->upstream;
        static const char *const bal[] = {"round_robin", "least_conn", "hash"};
        printf(" -> upstream %s (%s):", u->name, bal[u->balance]);
        for (size_t i = 0; i < u->nservers; i++)
            printf(" %s", u->servers[i].addr.text);
        printf("%s\n", req->route->stream ? "; streamed" : "");
    }
    const char *why = NULL;
    const char *country = req->country[0] ? req->country : "XX";
    bool ok = (req->site->access == NULL ||
               tg_access_check(req->site->access, &req->client, country, req->asn, &why)) &&
              (req->route->access == NULL ||
               tg_access_check(req->route->access, &req->client, country, req->asn, &why));
    printf("access:    %s\n", ok ? "allowed" : why ? why : "denied");
    if (!ok)
        printf("answer:    403 (access rules: %s)\n", why ? why : "denied");

    /* Rate limits: the policies and the keys this request counts under. */
    const struct tg_config_policy_list *list = tg_limiter_policies(cfg, req->route);
    if (list->n == 0) {
        printf("limits:    none\n");
    } else if (cfg->rate_limit.exempt != NULL &&
               tg_cidr_set_lookup(cfg->rate_limit.exempt, &req->client) != 0) {
        printf("limits:    none (the client is in rate_limit.exempt)\n");
    } else {
        struct tg_http_headers hv = {req->head.headers, req->head.nheaders, req->head.nheaders};
        struct tg_limiter_input lin = {
            .cfg = cfg, .site = req->site, .route = req->route, .client = &req->client,
            .tenant = req->tenant, .country = req->country, .asn = req->asn, .headers = &hv,
            .query = req->head.query, .arena = &req->arena,
        };
        static struct tg_limiter_env env;
        tg_limiter_prepare(&req->lim, &lin, &env);
        for (size_t i = 0; i < req->lim.n; i++) {
            const struct tg_limiter_item *it = &req->lim.items[i];
            char rate[128];
            printf("limit:     %s (%s) key \"%.*s\"\n", it->policy->name,
                   policy_rate(it->policy, rate, sizeof(rate)),
                   it->key_pending ? 0 : (int)it->key.keylen,
                   it->key_pending ? "" : it->key.key);
            if (it->key_pending)
                printf("           (part of the key is read from the body: JSON, form or multipart by "
                       "Content-Type; a body that cannot be read is refused)\n");
        }
    }
    const struct tg_config_headers *rules = req->route->headers;
    printf("adds:     ");
    for (size_t i = 0; i < rules->nadd; i++)
        if (!rules->add[i].https_only || https)
            printf(" %s: %s;", rules->add[i].name, rules->add[i].value);
    printf("%s\n", rules->override ? " (replacing the backend's)" : " (unless the backend set them)");
    printf("removes:  ");
    for (size_t i = 0; i < rules->nremove; i++)
        printf(" %.*s", (int)rules->remove[i].n, rules->remove[i].p);
    printf("\n");
    if (ok)
        printf("answer:    proxied%s\n", req->lim.n ? " if the limits above allow" : "");
}

int tg_explain_main(int argc, char **argv, const char *default_config)
{
    const char *path = default_config, *line = NULL, *peer_text = "127.0.0.1";
    const char *hdrs[64];
    size_t nhdrs = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            path = argv[++i];
        } else if (strcmp(argv[i], "-H") == 0 && i + 1 < argc && nhdrs < 64) {
            hdrs[nhdrs++] = argv[++i];
        } else if (strcmp(argv[i], "--peer") == 0 && i + 1 < argc) {
            peer_text = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (line == NULL && argv[i][0] != '-') {
            line = argv[i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (line == NULL) {
        usage(stderr);
        return 2;
    }
    /* "GET https://host:port/path?q" */
    char method[32], url[8192];
    if (sscanf(line, "%31s %8191s", method, url) != 2) {
        fprintf(stderr, "explain: expected 'METHOD URL', got '%s'\n", line);
        return 2;
    }
    bool https = strncmp(url, "https://", 8) == 0;
    if (!https && strncmp(url, "http://", 7) != 0) {
        fprintf(stderr, "explain: the URL must start with http:// or https://\n");
        return 2;
    }
    const char *authority = url + (https ? 8 : 7);
    const char *slash = strchr(authority, '/');
    char host[512];
    snprintf(host, sizeof(host), "%.*s", (int)(slash ? (size_t)(slash - authority) : strlen(authority)),
             authority);
    const char *target = slash ? slash : "/";

    char *errors = malloc(16384);
    struct tg_config *cfg = errors ? tg_config_load(path, errors, 16384) : NULL;
    if (cfg == NULL) {
        fputs(errors ? errors : "out of memory\n", stderr);
        free(errors);
        return 1;
    }
    free(errors);

    char *raw = malloc(65536);
    struct tg_worker w = {0};
    struct tg_wcfg wc = {.config = cfg, .worker = &w, .refs = 1};
    struct tg_conn c = {0};
    c.w = &w;
    c.wcfg = &wc;
    c.tls = https;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (!cfg->listeners[i].admin && cfg->listeners[i].tls == https)
            c.lcfg = &cfg->listeners[i];
    if (c.lcfg == NULL)
        c.lcfg = &cfg->listeners[0];
    int rc = 0;
    struct tg_request *req = calloc(1, sizeof(*req));
    if (raw == NULL || req == NULL) {
        rc = 1;
    } else if (tg_addr_parse(peer_text, strlen(peer_text), &c.peer) < 0) {
        fprintf(stderr, "explain: --peer '%s' is not an address\n", peer_text);
        rc = 2;
    } else {
        req->conn = &c;
        req->wcfg = &wc;
        tg_arena_init(&req->arena, 2048);
        explain_request(cfg, req, raw, method, url, host, target, hdrs, nhdrs, https, peer_text,
                        &c);
        tg_arena_reset(&req->arena);
    }
    free(req);
    free(raw);
    tg_config_unref(cfg);
    return rc;
}
