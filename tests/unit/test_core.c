/* The request core, the decision pipeline and the upstream client, driven
 * without a client socket: requests come from a memory stream (a front
 * end in memory), a fake upstream answers from inside the test's loop, and
 * the context's clock is the test's, so every deadline is reached by
 * moving the clock, not by waiting.
 *
 * Regressions: a request parked on a rate-limit store or the tenant
 * directory had no deadline of its own (it waited for an hour when the
 * store's timer failed); an over-size chunked body after a forwarded
 * 100 Continue was reset instead of answered 413. */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "config_build.h"
#include "context.h"
#include "forward.h"
#include "iptable.h"
#include "memstream.h"
#include "metrics.h"
#include "pipeline.h"
#include "ratelimit.h"
#include "ratelimit_store.h"
#include "request.h"
#include "tenant.h"
#include "test.h"
#include "upstream.h"

/* ---- a fake upstream, served by the test's loop --------------------------------- */

struct fake_up {
    int lfd, cfd, port;
    ev_io accept_io, io;
    char in[65536];
    size_t in_len;
    int requests;      /* complete request heads seen */
    const char *reply; /* sent once a head is here (NULL: stay silent) */
    bool close_after;
};

static struct fake_up up;
static struct ev_loop *loop;

static void up_io(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l, (void)revents;
    ssize_t n = read(w->fd, up.in + up.in_len, sizeof(up.in) - 1 - up.in_len);
    if (n <= 0) {
        ev_io_stop(loop, w);
        close(w->fd);
        up.cfd = -1;
        return;
    }
    up.in_len += (size_t)n;
    up.in[up.in_len] = '\0';
    if (strstr(up.in, "\r\n\r\n") != NULL && up.requests == 0) {
        up.requests++;
        if (up.reply != NULL) {
            CHECK(write(w->fd, up.reply, strlen(up.reply)) == (ssize_t)strlen(up.reply));
            if (up.close_after) {
                ev_io_stop(loop, w);
                close(w->fd);
                up.cfd = -1;
            }
        }
    }
}

static void up_accept(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l, (void)revents;
    int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    up.cfd = fd;
    ev_io_init(&up.io, up_io, fd, EV_READ);
    ev_io_start(loop, &up.io);
}

static void up_start(void)
{
    memset(&up, 0, sizeof(up));
    up.cfd = -1;
    up.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    CHECK(bind(up.lfd, (struct sockaddr *)&a, sizeof(a)) == 0);
    socklen_t al = sizeof(a);
    getsockname(up.lfd, (struct sockaddr *)&a, &al);
    up.port = ntohs(a.sin_port);
    CHECK(listen(up.lfd, 16) == 0);
    ev_io_init(&up.accept_io, up_accept, up.lfd, EV_READ);
    ev_io_start(loop, &up.accept_io);
}

static void up_stop(void)
{
    ev_io_stop(loop, &up.accept_io);
    close(up.lfd);
    if (up.cfd >= 0) {
        ev_io_stop(loop, &up.io);
        close(up.cfd);
    }
}

/* ---- a store that never answers (a Redis whose timer failed) ----------------- */

static int silent_cancels;

static enum tg_ratelimit_take silent_take(void *impl, struct tg_ratelimit_key *keys, size_t n,
                                          bool peek, int64_t now, bool *allowed,
                                          tg_ratelimit_store_done done, void *arg, void **pending)
{
    (void)impl, (void)keys, (void)n, (void)peek, (void)now, (void)allowed, (void)done, (void)arg;
    *pending = &silent_cancels;
    return TG_RATELIMIT_PENDING;
}

static void silent_cancel(void *impl, void *pending)
{
    (void)impl, (void)pending;
    silent_cancels++;
}

static void silent_refund(void *impl, struct tg_ratelimit_key *keys, size_t n, int64_t now)
{
    (void)impl, (void)keys, (void)n, (void)now;
}

static enum tg_ratelimit_take silent_reset(void *impl, const struct tg_ratelimit_key *key,
                                           bool *had, tg_ratelimit_store_done done, void *arg)
{
    (void)impl, (void)key, (void)had, (void)done, (void)arg;
    return TG_RATELIMIT_FAULT;
}

static const struct tg_ratelimit_store_ops silent_ops = {
    "silent", false, silent_take, silent_cancel, silent_refund, silent_reset,
};

/* ---- the context ----------------------------------------------------------------- */

static struct tg_runtime rt;
static struct tg_context ctx;
static struct tg_wcfg *wcfg;
static ev_tstamp fake_now = 1000.0;

static ev_tstamp test_clock(const struct tg_context *c)
{
    (void)c;
    return fake_now;
}

/* The configuration: `yaml` with "%d" for the fake upstream's port. */
static bool setup(const char *yaml)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    up_start();
    char text[8192], err[4096];
    snprintf(text, sizeof(text), yaml, up.port, up.port, up.port);
    struct tg_config *cfg = tg_config_load_buffer("t.yaml", text, strlen(text), err, sizeof(err));
    if (cfg == NULL) {
        fprintf(stderr, "%s", err);
        CHECK(cfg != NULL);
        return false;
    }
    memset(&rt, 0, sizeof(rt));
    pthread_mutex_init(&rt.warned_lock, NULL);
    rt.iptable = tg_iptable_new();
    rt.rl_local = tg_ratelimit_local_new(1024, 1);
    memset(&ctx, 0, sizeof(ctx));
    tg_context_init(&ctx, 0, loop, &rt);
    ctx.clock = test_clock;
    wcfg = calloc(1, sizeof(*wcfg));
    wcfg->config = cfg;
    wcfg->ctx = &ctx;
    wcfg->refs = 1;
    wcfg->rr_cursor = calloc(cfg->nupstreams + 1, sizeof(unsigned));
    ctx.cfg = wcfg;
    ctx.metrics = tg_metrics_shard_new();
    ctx.pools = tg_upstream_pools_new();
    if (cfg->tenants.configured)
        ctx.tenants = tg_tenant_dir_new(loop, &cfg->tenants);
    tg_ratelimit_store_local(&ctx.limiter.stores[TG_RL_STORE_LOCAL], rt.rl_local);
    ctx.limiter.stores[TG_RL_STORE_REDIS] = (struct tg_ratelimit_store){&silent_ops, NULL};
    tg_ratelimit_store_share(&ctx.limiter.share, rt.rl_local);
    ctx.limiter.metrics = ctx.metrics;
    ev_prepare_init(&ctx.upwait_kick, tg_forward_upwait_kick);
    ctx.upwait_kick.data = &ctx;
    silent_cancels = 0;
    return true;
}

static void teardown(void)
{
    ctx.stopping = true;
    tg_upstream_close_idle(&ctx);
    tg_context_cfg_release(wcfg);
    tg_request_free_all(&ctx);
    tg_upstream_pools_free(ctx.pools);
    tg_tenant_dir_free(ctx.tenants);
    tg_metrics_shard_free(ctx.metrics);
    tg_context_fini(&ctx);
    tg_ratelimit_local_free(rt.rl_local);
    tg_iptable_free(rt.iptable);
    up_stop();
    ev_loop_destroy(loop);
}

/* ---- requests ---------------------------------------------------------------------- */

struct call {
    struct tg_memstream m;
    struct tg_request *req;
    struct tg_http_header hv[8];
    struct tg_explain ex;
    char said[4096];
    size_t said_len;
};

static void note(struct tg_explain *ex, const char *label, const char *text)
{
    struct call *c = (struct call *)((char *)ex - offsetof(struct call, ex));
    c->said_len += (size_t)snprintf(c->said + c->said_len, sizeof(c->said) - c->said_len,
                                    "%s: %s\n", label, text);
}

/* Starts METHOD HOST PATH with "Name: value" headers (NULL-terminated) and
 * a body length, from `peer`, as a front end would. */
static struct tg_request *start(struct call *c, const char *method, const char *host,
                                const char *path, const char *const *headers, int64_t body_length,
                                const char *peer, bool dry)
{
    memset(&c->m, 0, sizeof(c->m));
    c->m.in_end = body_length == 0;
    struct tg_request *req =
        tg_request_new(&ctx, ctx.cfg, &tg_memstream_ops, tg_memstream_stream(&c->m));
    CHECK(req != NULL);
    c->req = req;
    size_t n = 0;
    for (; headers != NULL && headers[n] != NULL && n < 8; n++) {
        const char *colon = strchr(headers[n], ':');
        c->hv[n].name = tg_str_make(headers[n], (size_t)(colon - headers[n]));
        c->hv[n].value = tg_str_make(colon + 2, strlen(colon + 2));
    }
    req->method_id = tg_http_method_id(tg_str_make(method, strlen(method)));
    req->method = method;
    req->host = host;
    req->host_len = strlen(host);
    const char *q = strchr(path, '?');
    req->path = path;
    req->path_len = q != NULL ? (size_t)(q - path) : strlen(path);
    req->query = q != NULL ? q + 1 : NULL;
    req->query_len = q != NULL ? strlen(q + 1) : 0;
    req->proto = "HTTP/1.1";
    req->headers = (struct tg_http_headers){c->hv, n, n};
    req->headers_valid = true;
    req->body_length = body_length;
    req->listener = &ctx.cfg->config->listeners[0];
    tg_addr_parse(peer, strlen(peer), &req->peer);
    if (dry) {
        c->ex.say = note;
        c->said_len = 0;
        req->explain = &c->ex;
    }
    tg_request_ref(req); /* the test looks at it after it ends */
    tg_pipeline_start(req);
    return req;
}

static void done_with(struct call *c)
{
    tg_request_unref(c->req);
    tg_memstream_free(&c->m);
}

/* Runs the loop until the call's stream finished (or `secs` of real time). */
static bool run_until_finished(struct call *c, double secs)
{
    ev_tstamp until = ev_time() + secs;
    while (!c->m.finished && ev_time() < until) {
        if (c->m.status != 0 && !c->m.finished)
            tg_request_writable(c->req);
        ev_run(loop, EVRUN_NOWAIT);
        usleep(1000);
    }
    return c->m.finished;
}

static bool run_until_upstream_has_request(double secs)
{
    ev_tstamp until = ev_time() + secs;
    while (up.requests == 0 && ev_time() < until) {
        ev_run(loop, EVRUN_NOWAIT);
        usleep(1000);
    }
    return up.requests > 0;
}

/* ---- the decision table ------------------------------------------------------------ */

static const char *const TABLE_YAML = "listen: [127.0.0.1:18080]\n"
                                      "admin: {listen: off}\n"
                                      "trusted_proxies: [127.0.0.1/32]\n"
                                      "upstreams: {app: {servers: [127.0.0.1:%d]}}\n"
                                      "rate_limit:\n"
                                      "  policies:\n"
                                      "    two: {rate: 2/h, burst: 2, key: [ip]}\n"
                                      "    login: {rate: 5/m, burst: 5, key: [ip, body:identity]}\n"
                                      "tenants:\n"
                                      "  static:\n"
                                      "    acme: {servers: [127.0.0.1:%d]}\n"
                                      "    frozen: {servers: [127.0.0.1:%d], status: suspended}\n"
                                      "sites:\n"
                                      "  - hosts: ['{tenant}.t.test']\n"
                                      "    routes: [{path: /, upstream: $tenant}]\n"
                                      "  - hosts: [app.test]\n"
                                      "    routes:\n"
                                      "      - {path: /admin/, upstream: app, allow: [private]}\n"
                                      "      - {path: /small, upstream: app, max_body: 10}\n"
                                      "      - {path: /get-only, upstream: app, methods: [GET]}\n"
                                      "      - {path: /two, upstream: app, rate_limit: two}\n"
                                      "      - {path: /login, upstream: app, rate_limit: login}\n"
                                      "      - {path: /page, upstream: app}\n";

struct table_case {
    const char *method, *host, *path, *header;
    int64_t body_length;
    int status; /* 0: forwarded */
};

static const struct table_case table[] = {
    {"GET", "nobody.test", "/", NULL, 0, 404},
    {"TRACE", "app.test", "/", NULL, 0, 405},
    {"CONNECT", "app.test", "/", NULL, 0, 405},
    {"GET", "app.test", "/x%00y", NULL, 0, 400},
    {"GET", "app.test", "/page/../x", NULL, 0, 404},
    {"GET", "app.test", "/x/../page", NULL, 0, 0},
    {"GET", "app.test", "/admin/", "X-Forwarded-For: 203.0.113.9", 0, 403},
    {"GET", "app.test", "/a/%2e%2e/admin/", "X-Forwarded-For: 203.0.113.9", 0, 403},
    {"GET", "app.test", "/admin/", "X-Forwarded-For: 10.0.0.9", 0, 0},
    {"POST", "app.test", "/small", NULL, 11, 413},
    {"POST", "app.test", "/small", NULL, 10, 0},
    {"POST", "app.test", "/get-only", NULL, 0, 404},
    {"GET", "app.test", "/get-only?x=1", NULL, 0, 0},
    {"GET", "frozen.t.test", "/", NULL, 0, 403},
    {"GET", "nobody.t.test", "/", NULL, 0, 404},
    {"GET", "bad_label.t.test", "/", NULL, 0, 400},
    {"GET", "acme.t.test", "/", NULL, 0, 0},
};

/* Each case twice: as a dry run (explain) and for real; both give the same
 * answer, the one expected. */
TEST(the_gateway_and_its_dry_run_agree)
{
    if (!setup(TABLE_YAML))
        return;
    up.reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    up.close_after = true;
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        const struct table_case *t = &table[i];
        const char *hdrs[2] = {t->header, NULL};
        struct call dry, real;
        start(&dry, t->method, t->host, t->path, hdrs, t->body_length, "127.0.0.1", true);
        CHECK(dry.m.finished);
        up.requests = 0;
        up.in_len = 0;
        start(&real, t->method, t->host, t->path, hdrs, t->body_length, "127.0.0.1", false);
        if (t->body_length > 0)
            tg_memstream_set_body(&real.m, "0123456789abcdef", (size_t)t->body_length, true),
                tg_request_body(real.req);
        run_until_finished(&real, 3);
        int want = t->status != 0 ? t->status : 200;
        if (real.m.status != want || (t->status == 0) != (strstr(dry.said, "proxied") != NULL) ||
            (t->status != 0 && dry.m.status != want)) {
            fprintf(stderr, "case %zu: %s %s%s: gateway %d, dry run %d, want %d:\n%s", i, t->method,
                    t->host, t->path, real.m.status, dry.m.status, want, dry.said);
            CHECK(false);
        }
        done_with(&dry);
        done_with(&real);
    }
    teardown();
}

/* ---- forwarding ------------------------------------------------------------------------ */

/* A chunked response is de-chunked for the stream (each front end frames
 * it its own way), the backend's hop-by-hop fields stay behind, ours are
 * added, and a stream that takes a few bytes at a time gets them all. */
TEST(forwarded_dechunked_and_paced)
{
    if (!setup(TABLE_YAML))
        return;
    up.reply = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n"
               "Keep-Alive: timeout=5\r\nX-App: yes\r\n\r\n"
               "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    struct call c;
    const char *hdrs[] = {"X-Forwarded-For: 198.51.100.4", NULL};
    start(&c, "GET", "app.test", "/page?q=1", hdrs, 0, "127.0.0.1", false);
    c.m.take_max = 3; /* the response comes later, a few bytes at a time */
    CHECK(run_until_finished(&c, 3));
    CHECK_EQ_INT(c.m.status, 200);
    CHECK_EQ_MEM(c.m.body.p, c.m.body.n, "hello world");
    CHECK(c.m.body_end);
    CHECK_EQ_INT(c.m.length, -1);
    char v[128];
    CHECK(tg_memstream_field(&c.m, "X-App", v, sizeof(v)) != NULL);
    CHECK(tg_memstream_field(&c.m, "X-Request-Id", v, sizeof(v)) != NULL);
    CHECK(tg_memstream_field(&c.m, "Transfer-Encoding", v, sizeof(v)) == NULL);
    CHECK(tg_memstream_field(&c.m, "Keep-Alive", v, sizeof(v)) == NULL);
    /* What the backend got: the path as sent, the client named. */
    CHECK(strstr(up.in, "GET /page?q=1 HTTP/1.1\r\n") == up.in);
    CHECK(strstr(up.in, "X-Forwarded-For: 198.51.100.4, 127.0.0.1\r\n") != NULL ||
          strstr(up.in, "X-Forwarded-For: 198.51.100.4\r\n") != NULL);
    done_with(&c);
    teardown();
}

/* The backend does not answer: 504 after read_timeout, reached by moving
 * the clock. */
TEST(upstream_read_timeout_on_the_injected_clock)
{
    if (!setup("listen: [127.0.0.1:18080]\nadmin: {listen: off}\n"
               "upstreams: {app: {servers: [127.0.0.1:%d], read_timeout: 30s}}\n"
               "sites: [{hosts: [app.test], routes: [{path: /, upstream: app}]}]\n"))
        return;
    struct call c;
    start(&c, "GET", "app.test", "/", NULL, 0, "127.0.0.1", false);
    CHECK(run_until_upstream_has_request(3));
    CHECK(!c.m.finished);
    CHECK(c.m.deadline > fake_now && c.m.deadline <= fake_now + 30.0 + 0.001);
    fake_now += 29.0;
    tg_request_timeout(c.req, fake_now);
    CHECK(!c.m.finished);
    fake_now += 1.5;
    tg_request_timeout(c.req, fake_now);
    CHECK(c.m.finished);
    CHECK_EQ_INT(c.m.status, 504);
    done_with(&c);
    teardown();
}

/* ---- waits and their deadlines ------------------------------------------------------- */

/* A login limit keyed on a body field waits for the body, with the body
 * timeout as its deadline; the body then completes the key. */
TEST(a_body_key_waits_for_the_body)
{
    if (!setup(TABLE_YAML))
        return;
    up.reply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    const char *hdrs[] = {"Content-Type: application/json", NULL};
    const char *body = "{\"identity\":\"alice\"}";
    struct call c;
    start(&c, "POST", "app.test", "/login", hdrs, (int64_t)strlen(body), "127.0.0.1", false);
    CHECK(!c.m.finished);
    CHECK(c.m.head_done);
    int64_t body_timeout = ctx.cfg->config->client.body_timeout_ms;
    CHECK(c.m.deadline > fake_now && c.m.deadline <= fake_now + (double)body_timeout / 1000.0);
    tg_memstream_set_body(&c.m, body, 10, false); /* half of it */
    tg_request_body(c.req);
    CHECK(!c.m.finished);
    tg_memstream_set_body(&c.m, body, strlen(body), true);
    tg_request_body(c.req);
    CHECK(run_until_finished(&c, 3));
    CHECK_EQ_INT(c.m.status, 200);
    CHECK(strstr(up.in, body) != NULL);
    done_with(&c);

    /* The body never comes: 408 at the deadline. */
    struct call d;
    start(&d, "POST", "app.test", "/login", hdrs, (int64_t)strlen(body), "127.0.0.2", false);
    CHECK(!d.m.finished);
    fake_now = d.m.deadline + 0.001;
    tg_request_timeout(d.req, fake_now);
    CHECK(d.m.finished);
    CHECK_EQ_INT(d.m.status, 408);
    done_with(&d);
    teardown();
}

/* A store that never answers (its own timer failed): the request's own
 * deadline answers 503 and cancels the call. */
TEST(a_silent_store_cannot_park_a_request)
{
    if (!setup("listen: [127.0.0.1:18080]\nadmin: {listen: off}\n"
               "upstreams: {app: {servers: [127.0.0.1:%d]}}\n"
               "rate_limit:\n  redis: {address: 127.0.0.1:1, timeout: 200ms}\n"
               "  policies:\n    shared: {rate: 5/m, burst: 5, key: [ip], store: redis}\n"
               "sites: [{hosts: [app.test], routes: [{path: /, upstream: app, "
               "rate_limit: shared}]}]\n"))
        return;
    struct call c;
    start(&c, "GET", "app.test", "/", NULL, 0, "127.0.0.1", false);
    CHECK(!c.m.finished);
    CHECK(c.m.deadline > fake_now && c.m.deadline <= fake_now + 2 * 0.2 + 1.0 + 0.001);
    fake_now = c.m.deadline + 0.001;
    tg_request_timeout(c.req, fake_now);
    CHECK(c.m.finished);
    CHECK_EQ_INT(c.m.status, 503);
    CHECK_EQ_INT(silent_cancels, 1);
    done_with(&c);
    teardown();
}

/* A chunked body over max_body after the backend's 100 Continue went to
 * the client: the client still gets a 413 (a final answer may follow an
 * interim one), not a reset. */
TEST(over_size_body_after_100_continue_is_413)
{
    if (!setup("listen: [127.0.0.1:18080]\nadmin: {listen: off}\n"
               "upstreams: {app: {servers: [127.0.0.1:%d]}}\n"
               "sites: [{hosts: [app.test], routes: [{path: /, upstream: app, "
               "max_body: 10}]}]\n"))
        return;
    up.reply = "HTTP/1.1 100 Continue\r\n\r\n";
    const char *hdrs[] = {"Expect: 100-continue", NULL};
    struct call c;
    start(&c, "POST", "app.test", "/", hdrs, -1, "127.0.0.1", false);
    CHECK(run_until_upstream_has_request(3));
    ev_tstamp until = ev_time() + 3;
    while (c.m.ninterim == 0 && ev_time() < until) {
        ev_run(loop, EVRUN_NOWAIT);
        usleep(1000);
    }
    CHECK_EQ_INT(c.m.ninterim, 1);
    CHECK_EQ_INT(c.m.interim[0], 100);
    tg_memstream_set_body(&c.m, "0123456789abcdefghij", 20, false);
    c.req->body_received = 20;
    tg_request_body(c.req);
    CHECK(c.m.finished);
    CHECK_EQ_INT(c.m.status, 413);
    CHECK_EQ_INT(c.m.how, TG_STREAM_CLOSE);
    done_with(&c);
    teardown();
}

/* ---- the request core ------------------------------------------------------------------- */

/* What one ordinary request costs: the object and what its arena holds
 * (the figure the closing note quotes; the old object was 19.7 KB). */
TEST(per_request_memory)
{
    if (!setup(TABLE_YAML))
        return;
    up.reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    const char *hdrs[] = {"User-Agent: curl/8.0", "Accept: */*", NULL};
    const char *paths[] = {"/page", "/two"};
    for (int i = 0; i < 2; i++) {
        struct call c;
        up.requests = 0;
        start(&c, "GET", "app.test", paths[i], hdrs, 0, "127.0.0.1", false);
        CHECK(run_until_finished(&c, 3));
        CHECK_EQ_INT(c.m.status, 200);
        size_t used = c.req->arena.total - (size_t)(c.req->arena.end - c.req->arena.pos);
        fprintf(stderr,
                "per-request memory: struct tg_request %zu bytes + arena %zu bytes in "
                "use (%s)\n",
                sizeof(struct tg_request), used, i == 0 ? "a plain route" : "a rate-limited route");
        CHECK(sizeof(struct tg_request) + used < 8192);
        done_with(&c);
    }
    teardown();
}

/* An answer of our own after the backend's head went out cannot be: the
 * stream is reset, so the client never takes a cut answer as whole. */
TEST(a_late_local_answer_resets)
{
    if (!setup(TABLE_YAML))
        return;
    struct call c;
    memset(&c, 0, sizeof(c));
    struct tg_request *req =
        tg_request_new(&ctx, ctx.cfg, &tg_memstream_ops, tg_memstream_stream(&c.m));
    req->method = "GET";
    req->path = req->host = "";
    tg_request_ref(req);
    c.req = req;
    CHECK(tg_request_send_head(req, 200, NULL, 10, 0) == 0);
    tg_request_respond_text(req, 503, "503 Service Unavailable\n", false);
    CHECK(c.m.finished);
    CHECK_EQ_INT(c.m.how, TG_STREAM_RESET);
    CHECK_EQ_INT(c.m.status, 200);
    done_with(&c);
    teardown();
}

int main(void)
{
    RUN(the_gateway_and_its_dry_run_agree);
    RUN(forwarded_dechunked_and_paced);
    RUN(upstream_read_timeout_on_the_injected_clock);
    RUN(a_body_key_waits_for_the_body);
    RUN(a_silent_store_cannot_park_a_request);
    RUN(over_size_body_after_100_continue_is_413);
    RUN(per_request_memory);
    RUN(a_late_local_answer_resets);
    return TEST_SUMMARY();
}
