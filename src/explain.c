/* `tollgate explain`: what the configuration would do with one request,
 * without sending anything. The request runs through the gateway's own
 * pipeline in its dry-run mode (pipeline.h), on a memory stream: the same
 * parser, normaliser, host index, route match, client identity, access
 * rules, limits and header rules decide, and each phase says what it
 * decided. Stores and the tenant directory are not asked. */
#include "explain.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "config_build.h"
#include "context.h"
#include "http1.h"
#include "memstream.h"
#include "metrics.h"
#include "pipeline.h"
#include "request.h"

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: tollgate explain [-c FILE] [--peer ADDRESS] 'METHOD URL' [-H 'Name: value']...\n"
        "  e.g. tollgate explain -c conf/tollgate.yaml 'GET https://localhost/_/'\n"
        "       -H 'X-Forwarded-For: 203.0.113.7' --peer 10.0.0.2\n");
}

/* Prints each decision as "label:    text". */
static void print_line(struct tg_explain *ex, const char *label, const char *text)
{
    (void)ex;
    char tag[16];
    snprintf(tag, sizeof(tag), "%s%s", label, label[0] ? ":" : "");
    printf("%-11s%s\n", tag, text);
}

/* The request as it would arrive: parsed by the HTTP/1 parser, then
 * handed to the pipeline like a front end would. Returns the exit status. */
static int explain_request(struct tg_context *ctx, const struct tg_config_listen *listener,
                           const struct tg_addr *peer, bool https, const char *raw, size_t n)
{
    const struct tg_config *cfg = ctx->cfg->config;
    struct tg_http1_request *p = tg_context_h1_request(ctx);
    if (p == NULL)
        return 1;
    size_t scanned = 0;
    int status = 0;
    const char *reason = NULL;
    struct tg_http1_limits limits = {cfg->client.max_request_line,
                                     cfg->client.max_request_line + cfg->client.max_head,
                                     cfg->client.max_headers};
    ssize_t r = tg_http1_parse_request(raw, n, &scanned, &limits, p, &status, &reason);
    if (r <= 0) {
        printf("answer:    %d (%s)\n", status ? status : 400, reason ? reason : "incomplete");
        return 0;
    }
    struct tg_memstream m = {.in_end = true};
    struct tg_request *req =
        tg_request_new(ctx, ctx->cfg, &tg_memstream_ops, tg_memstream_stream(&m));
    if (req == NULL)
        return 1;
    struct tg_explain ex = {print_line};
    req->explain = &ex;
    req->method_id = p->method_id;
    req->method = tg_request_strdup(req, p->method.p, p->method.n);
    struct tg_str host = p->host.p != NULL ? p->host : tg_str_make("", 0);
    req->host = tg_request_strdup(req, host.p, host.n);
    req->host_len = host.n;
    req->path = p->path.p;
    req->path_len = p->path.n;
    req->query = p->query.p;
    req->query_len = p->query.p != NULL ? p->query.n : 0;
    req->proto = "HTTP/1.1";
    req->headers = (struct tg_http_headers){p->headers, p->nheaders, p->nheaders};
    req->headers_valid = true;
    req->body_length = p->framing == TG_HTTP1_BODY_LENGTH    ? (int64_t)p->content_length
                       : p->framing == TG_HTTP1_BODY_CHUNKED ? -1
                                                             : 0;
    req->listener = listener;
    req->peer = *peer;
    req->https = https;
    tg_pipeline_start(req);
    tg_memstream_free(&m);
    return 0;
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
    snprintf(host, sizeof(host), "%.*s",
             (int)(slash ? (size_t)(slash - authority) : strlen(authority)), authority);
    const char *target = slash ? slash : "/";

    char *errors = malloc(16384);
    struct tg_config *cfg = errors ? tg_config_load(path, errors, 16384) : NULL;
    if (cfg == NULL) {
        fputs(errors ? errors : "out of memory\n", stderr);
        free(errors);
        return 1;
    }
    free(errors);

    /* The listener the request would come in on: the first of its kind. */
    const struct tg_config_listen *listener = NULL;
    for (size_t i = 0; i < cfg->nlisteners && listener == NULL; i++)
        if (!cfg->listeners[i].admin && cfg->listeners[i].tls == https)
            listener = &cfg->listeners[i];
    if (listener == NULL)
        listener = &cfg->listeners[0];
    struct tg_addr peer;
    if (tg_addr_parse(peer_text, strlen(peer_text), &peer) < 0) {
        fprintf(stderr, "explain: --peer '%s' is not an address\n", peer_text);
        tg_config_unref(cfg);
        return 2;
    }

    /* The request as it would arrive. */
    char *raw = malloc(65536);
    int rc = 1;
    if (raw != NULL) {
        size_t n =
            (size_t)snprintf(raw, 65536, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, host);
        for (size_t i = 0; i < nhdrs && n < 60000; i++)
            n += (size_t)snprintf(raw + n, 65536 - n, "%s\r\n", hdrs[i]);
        n += (size_t)snprintf(raw + n, 65536 - n, "\r\n");
        printf("request:   %s %s\n", method, url);

        /* A context of its own, like a worker's, with nothing to talk to. */
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        struct tg_runtime rt = {.nworkers = 0};
        struct tg_context ctx = {0};
        struct tg_wcfg wc = {.config = cfg, .ctx = &ctx, .refs = 1};
        if (loop != NULL && tg_context_init(&ctx, 0, loop, &rt) == 0) {
            ctx.cfg = &wc;
            ctx.metrics = tg_metrics_shard_new();
            wc.rr_cursor = calloc(cfg->nupstreams + 1, sizeof(*wc.rr_cursor));
            if (ctx.metrics != NULL && wc.rr_cursor != NULL)
                rc = explain_request(&ctx, listener, &peer, https, raw, n);
            tg_request_free_all(&ctx);
            tg_metrics_shard_free(ctx.metrics);
            tg_context_fini(&ctx);
        }
        free(wc.rr_cursor);
        if (loop != NULL)
            ev_loop_destroy(loop);
    }
    free(raw);
    tg_config_unref(cfg);
    return rc;
}
