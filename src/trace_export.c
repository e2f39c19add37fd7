/* OTLP/HTTP span export: a bounded ring of span records filled by workers
 * under a mutex (held for one copy), drained by one thread that POSTs JSON
 * batches with blocking sockets and its own timeouts.
 *
 * It does not retry a failed batch (the next one is as likely to fail, and
 * retries would hold the queue up), speak TLS, or use protobuf: a local
 * collector or agent over plain HTTP is the deployment this serves. */
#include "trace_export.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "config.h"
#include "log.h"
#include "str.h"

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    bool running, stop;
    /* The ring: `count` spans from `head` on, `cap` slots. */
    struct tg_trace_span *ring;
    unsigned cap, head, count;
    /* Settings (copies: snapshots come and go). */
    char *host, *port, *path, *service;
    unsigned batch;
    int64_t interval_ms, timeout_ms;
} ex = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
};

static _Atomic uint64_t n_exported, n_dropped, n_failed_spans, n_failed_posts;

void tg_trace_export_stats(struct tg_trace_export_stats *out)
{
    out->exported = atomic_load(&n_exported);
    out->dropped = atomic_load(&n_dropped);
    out->failed_spans = atomic_load(&n_failed_spans);
    out->failed_posts = atomic_load(&n_failed_posts);
}

void tg_trace_export_push(const struct tg_trace_span *span)
{
    pthread_mutex_lock(&ex.lock);
    if (!ex.running || ex.stop || ex.count == ex.cap) {
        pthread_mutex_unlock(&ex.lock);
        atomic_fetch_add_explicit(&n_dropped, 1, memory_order_relaxed);
        return;
    }
    ex.ring[(ex.head + ex.count) % ex.cap] = *span;
    ex.count++;
    /* The thread sleeps until a batch is full or the interval passes:
     * waking it for every span would cost a syscall per request. */
    if (ex.count == ex.batch)
        pthread_cond_signal(&ex.wake);
    pthread_mutex_unlock(&ex.lock);
}

/* ---- the OTLP JSON body ---------------------------------------------------------- */

/* Written in one pass into a growing buffer rather than through a jansson
 * tree: with every request sampled, a tree of some forty nodes per span
 * cost as much CPU as proxying the request did. */

static void put_lit(struct tg_strbuf *b, const char *s)
{
    tg_strbuf_put(b, s, strlen(s));
}

/* The comma before a list element: none after the list's '['. */
static const char *sep(const struct tg_strbuf *b)
{
    return b->oom || b->n == 0 || b->p[b->n - 1] == '[' ? "" : ",";
}

/* {"key":"K","value":{"stringValue":"V"}} -- left out when V is empty. */
static void attr_str(struct tg_strbuf *b, const char *key, const char *v)
{
    if (v[0] == '\0')
        return;
    put_lit(b, sep(b));
    put_lit(b, "{\"key\":\"");
    put_lit(b, key);
    put_lit(b, "\",\"value\":{\"stringValue\":");
    tg_strbuf_json(b, v);
    put_lit(b, "}}");
}

static void put_i64(struct tg_strbuf *b, long long v)
{
    char d[24];
    if (v < 0) {
        put_lit(b, "-");
        tg_strbuf_put(b, d, tg_str_u64(d, (unsigned long long)0 - (unsigned long long)v));
    } else {
        tg_strbuf_put(b, d, tg_str_u64(d, (unsigned long long)v));
    }
}

/* OTLP/JSON writes 64-bit integers as strings (the protobuf JSON mapping).
 * No printf here or below: with every request sampled, formatting was the
 * exporter's main cost. */
static void attr_int(struct tg_strbuf *b, const char *key, long long v)
{
    put_lit(b, sep(b));
    put_lit(b, "{\"key\":\"");
    put_lit(b, key);
    put_lit(b, "\",\"value\":{\"intValue\":\"");
    put_i64(b, v);
    put_lit(b, "\"}}");
}

static void span_json(struct tg_strbuf *b, const struct tg_trace_span *s)
{
    char tid[33], sid[17], pid[17];
    tid[tg_hex_encode(tid, s->trace_id, 16, false)] = '\0';
    sid[tg_hex_encode(sid, s->span_id, 8, false)] = '\0';
    pid[tg_hex_encode(pid, s->parent_id, 8, false)] = '\0';
    put_lit(b, "{\"traceId\":\"");
    tg_strbuf_put(b, tid, 32);
    put_lit(b, "\",\"spanId\":\"");
    tg_strbuf_put(b, sid, 16);
    put_lit(b, "\",\"parentSpanId\":\"");
    if (s->has_parent)
        tg_strbuf_put(b, pid, 16);
    put_lit(b, "\",\"name\":");
    /* Semantic conventions: "{method} {route}", or the method alone when
     * no route matched (a path would make names unbounded). */
    char name[160];
    size_t mn = strnlen(s->method, sizeof(name) - 1), o = mn;
    memcpy(name, s->method, mn);
    if (s->route[0] != '\0' && o + 1 < sizeof(name)) {
        name[o++] = ' ';
        size_t rn = strnlen(s->route, sizeof(name) - 1 - o);
        memcpy(name + o, s->route, rn);
        o += rn;
    }
    name[o] = '\0';
    tg_strbuf_json(b, name);
    put_lit(b, ",\"kind\":2,\"startTimeUnixNano\":\"");
    put_i64(b, (long long)s->start_ns);
    put_lit(b, "\",\"endTimeUnixNano\":\"");
    put_i64(b, (long long)s->end_ns);
    put_lit(b, "\",\"attributes\":[");
    attr_str(b, "http.request.method", s->method);
    attr_str(b, "http.route", s->route);
    attr_int(b, "http.response.status_code", s->status);
    attr_str(b, "url.path", s->path);
    attr_str(b, "url.scheme", s->scheme);
    attr_str(b, "server.address", s->host);
    attr_str(b, "client.address", s->client);
    attr_str(b, "network.protocol.name", "http");
    attr_str(b, "network.protocol.version", s->proto);
    attr_int(b, "http.request.body.size", (long long)s->bytes_in);
    attr_int(b, "http.response.body.size", (long long)s->bytes_out);
    attr_str(b, "tollgate.tenant", s->tenant);
    attr_str(b, "tollgate.ratelimit.decision", s->limit);
    attr_str(b, "tollgate.upstream.address", s->upstream);
    if (s->upstream_us >= 0)
        attr_int(b, "tollgate.upstream.header_time_us", s->upstream_us);
    attr_int(b, "tollgate.duration_us", (long long)((s->end_ns - s->start_ns) / 1000));
    /* A server span is an error only for 5xx (the semantic conventions:
     * a 4xx is the client's fault, not the server's). */
    put_lit(b, s->status >= 500 ? "],\"status\":{\"code\":2}}" : "],\"status\":{}}");
}

char *tg_trace_export_json(const struct tg_trace_span *spans, unsigned n, const char *service_name)
{
    struct tg_strbuf b = {0};
    put_lit(&b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    attr_str(&b, "service.name", service_name);
    put_lit(&b, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"tollgate\"},\"spans\":[");
    for (unsigned i = 0; i < n && !b.oom; i++) {
        if (i > 0)
            put_lit(&b, ",");
        span_json(&b, &spans[i]);
    }
    put_lit(&b, "]}]}]}");
    if (b.oom) {
        tg_strbuf_free(&b);
        return NULL;
    }
    return b.p;
}

/* ---- POST ------------------------------------------------------------------------ */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for `events` on fd until `deadline` (mono_ms). */
static bool wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            return false;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r > 0)
            return true;
        if (r < 0 && errno != EINTR)
            return false;
    }
}

static int connect_to(const char *host, const char *port, int64_t deadline)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return -1;
    int fd = -1;
    for (struct addrinfo *a = res; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        int err = 0;
        socklen_t len = sizeof(err);
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) &&
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static bool send_all(int fd, const char *p, size_t n, int64_t deadline)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_fd(fd, POLLOUT, deadline))
                return false;
        } else {
            return false;
        }
    }
    return true;
}

/* POSTs `body`; true when the collector answered 2xx within the timeout.
 * One connection per batch (Connection: close): a batch goes at most once
 * an interval, so a kept-alive connection would save little and add the
 * cases of a collector closing it between batches. */
static bool post(const char *host, const char *port, const char *path, const char *body,
                 int64_t timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    int fd = connect_to(host, port, deadline);
    if (fd < 0)
        return false;
    size_t blen = strlen(body);
    char head[1024];
    bool v6 = strchr(host, ':') != NULL; /* an IPv6 literal goes in brackets */
    int hn = snprintf(head, sizeof(head),
                      "POST %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\nUser-Agent: tollgate\r\n\r\n",
                      path, v6 ? "[" : "", host, v6 ? "]" : "", port, blen);
    bool ok = hn > 0 && (size_t)hn < sizeof(head) && send_all(fd, head, (size_t)hn, deadline) &&
              send_all(fd, body, blen, deadline);
    /* The status line is all we read: "HTTP/1.1 200 ...". */
    char resp[64];
    size_t got = 0;
    while (ok && got < 12) {
        ssize_t r = recv(fd, resp + got, sizeof(resp) - 1 - got, 0);
        if (r > 0)
            got += (size_t)r;
        else if (r < 0 && errno == EINTR)
            continue;
        else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            ok = wait_fd(fd, POLLIN, deadline);
        else
            ok = false;
    }
    close(fd);
    return ok && memcmp(resp, "HTTP/1.", 7) == 0 && resp[9] == '2';
}

/* ---- the thread ------------------------------------------------------------------- */

static void export_batch(struct tg_trace_span *batch, unsigned n, const char *host,
                         const char *port, const char *path, const char *service,
                         int64_t timeout_ms)
{
    /* Trouble is logged when it starts and when it ends, not per batch. */
    static bool failing;
    char *body = tg_trace_export_json(batch, n, service);
    bool ok = body != NULL && post(host, port, path, body, timeout_ms);
    free(body);
    if (ok) {
        atomic_fetch_add(&n_exported, n);
        if (failing)
            tg_log_info("tracing: the collector at %s:%s takes spans again", host, port);
        failing = false;
        return;
    }
    atomic_fetch_add(&n_failed_spans, n);
    atomic_fetch_add(&n_failed_posts, 1);
    if (!failing)
        tg_log_warn("tracing: export to http://%s:%s%s failed; spans are lost until it works", host,
                    port, path);
    failing = true;
}

static void *exporter_main(void *arg)
{
    (void)arg;
    tg_log_set_thread_name("trace-export");
    struct tg_trace_span *batch = NULL;
    unsigned batch_cap = 0;
    int64_t stop_deadline = 0;
    pthread_mutex_lock(&ex.lock);
    for (;;) {
        if (!ex.stop && ex.count < ex.batch) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            int64_t ns = until.tv_nsec + (ex.interval_ms % 1000) * 1000000;
            until.tv_sec += (time_t)(ex.interval_ms / 1000 + ns / 1000000000);
            until.tv_nsec = (long)(ns % 1000000000);
            while (!ex.stop && ex.count < ex.batch &&
                   pthread_cond_timedwait(&ex.wake, &ex.lock, &until) == 0) {
            }
        }
        if (ex.stop && stop_deadline == 0)
            stop_deadline = mono_ms() + ex.timeout_ms;
        if (ex.stop && (ex.count == 0 || mono_ms() >= stop_deadline))
            break;
        unsigned n = ex.count < ex.batch ? ex.count : ex.batch;
        if (n == 0)
            continue;
        if (n > batch_cap) {
            struct tg_trace_span *nb = realloc(batch, n * sizeof(*batch));
            if (nb == NULL)
                continue; /* try again after the next wait */
            batch = nb;
            batch_cap = n;
        }
        for (unsigned i = 0; i < n; i++)
            batch[i] = ex.ring[(ex.head + i) % ex.cap];
        ex.head = (ex.head + n) % ex.cap;
        ex.count -= n;
        /* Copies: configure may replace the settings while we post. */
        char host[256], port[16], path[512], service[128];
        snprintf(host, sizeof(host), "%s", ex.host);
        snprintf(port, sizeof(port), "%s", ex.port);
        snprintf(path, sizeof(path), "%s", ex.path);
        snprintf(service, sizeof(service), "%s", ex.service);
        int64_t timeout_ms = ex.timeout_ms;
        pthread_mutex_unlock(&ex.lock);
        export_batch(batch, n, host, port, path, service, timeout_ms);
        pthread_mutex_lock(&ex.lock);
    }
    /* What the bound left behind is lost: counted. */
    atomic_fetch_add(&n_dropped, ex.count);
    ex.count = 0;
    pthread_mutex_unlock(&ex.lock);
    free(batch);
    return NULL;
}

/* Splits "http://host[:port]/path" (validated by the config parser). */
static int split_endpoint(const char *url, char **host, char **port, char **path)
{
    const char *h = url + 7; /* after "http://" */
    const char *slash = strchr(h, '/');
    size_t hostport = slash != NULL ? (size_t)(slash - h) : strlen(h);
    const char *hp_end = h + hostport;
    const char *colon = NULL;
    const char *hs = h, *he;
    if (*h == '[') { /* [v6]:port */
        const char *rb = memchr(h, ']', hostport);
        if (rb == NULL)
            return -1;
        hs = h + 1;
        he = rb;
        colon = rb + 1 < hp_end && rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = memchr(h, ':', hostport);
        he = colon != NULL ? colon : hp_end;
    }
    *host = strndup(hs, (size_t)(he - hs));
    *port = colon != NULL ? strndup(colon + 1, (size_t)(hp_end - colon - 1)) : strdup("80");
    *path = strdup(slash != NULL ? slash : "/");
    if (*host == NULL || *port == NULL || *path == NULL) {
        free(*host);
        free(*port);
        free(*path);
        return -1;
    }
    return 0;
}

int tg_trace_export_configure(const struct tg_config_tracing *cfg)
{
    char *host, *port, *path;
    if (split_endpoint(cfg->otlp.endpoint, &host, &port, &path) < 0)
        return -1;
    char *service = strdup(cfg->service_name);
    struct tg_trace_span *ring = NULL;
    pthread_mutex_lock(&ex.lock);
    bool resize = ex.cap != cfg->otlp.queue;
    pthread_mutex_unlock(&ex.lock);
    if (resize)
        ring = calloc(cfg->otlp.queue, sizeof(*ring));
    if (service == NULL || (resize && ring == NULL)) {
        free(host);
        free(port);
        free(path);
        free(service);
        free(ring);
        return -1;
    }
    pthread_mutex_lock(&ex.lock);
    if (resize) {
        unsigned keep = ex.count < cfg->otlp.queue ? ex.count : cfg->otlp.queue;
        for (unsigned i = 0; i < keep; i++)
            ring[i] = ex.ring[(ex.head + i) % ex.cap];
        atomic_fetch_add(&n_dropped, ex.count - keep);
        free(ex.ring);
        ex.ring = ring;
        ex.cap = cfg->otlp.queue;
        ex.head = 0;
        ex.count = keep;
    }
    free(ex.host);
    free(ex.port);
    free(ex.path);
    free(ex.service);
    ex.host = host;
    ex.port = port;
    ex.path = path;
    ex.service = service;
    ex.batch = cfg->otlp.batch;
    ex.interval_ms = cfg->otlp.interval_ms;
    ex.timeout_ms = cfg->otlp.timeout_ms;
    pthread_cond_signal(&ex.wake);
    pthread_mutex_unlock(&ex.lock);
    return 0;
}

int tg_trace_export_start(void)
{
    pthread_mutex_lock(&ex.lock);
    /* Started once; configure must have given it a queue first. */
    int rc = ex.running ? 0 : ex.ring == NULL ? -1 : 1;
    if (rc == 1) {
        ex.stop = false;
        rc = pthread_create(&ex.thread, NULL, exporter_main, NULL) == 0 ? 0 : -1;
        ex.running = rc == 0;
    }
    pthread_mutex_unlock(&ex.lock);
    return rc;
}

void tg_trace_export_stop(void)
{
    pthread_mutex_lock(&ex.lock);
    bool running = ex.running;
    ex.stop = true;
    pthread_cond_signal(&ex.wake);
    pthread_mutex_unlock(&ex.lock);
    if (running)
        pthread_join(ex.thread, NULL);
    pthread_mutex_lock(&ex.lock);
    ex.running = false;
    free(ex.ring);
    free(ex.host);
    free(ex.port);
    free(ex.path);
    free(ex.service);
    ex.ring = NULL;
    ex.host = ex.port = ex.path = ex.service = NULL;
    ex.cap = ex.head = ex.count = 0;
    pthread_mutex_unlock(&ex.lock);
}
