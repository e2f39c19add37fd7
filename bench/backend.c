/* backend.c — the origin server the benchmark proxies to.
 *
 * One thread, one epoll loop, level-triggered, non-blocking sockets. It must
 * never be the bottleneck, so every response that can be precomputed is, and
 * large bodies go out in 256 KiB writes. It speaks just enough HTTP/1.1 for
 * the benchmark (keep-alive, pipelining, Content-Length and chunked request
 * bodies) and nothing else: it is not a general server.
 *
 *   GET  /1k                         1024-byte body, Content-Length
 *   GET  /sse?n=200&interval_ms=5    text/event-stream, chunked; each event is
 *                                    "id: I\ndata: T\n\n", T = CLOCK_MONOTONIC
 *                                    ns taken just before the write
 *   GET  /big?bytes=N                N bytes, Content-Length, streamed
 *   GET  /json10k                    10 KiB of JSON shaped like a PocketBase list
 *                                    answer (gzip -1 makes it about 4x smaller)
 *   GET  /files/NAME                 8 KiB that do not compress (a thumbnail),
 *                                    Cache-Control: max-age=86400, an ETag and
 *                                    Last-Modified: what a cache may keep
 *   POST /upload                     body read and discarded; replies count
 *   POST /v1/traces                  the same: an OTLP sink for tollgate's spans
 *   anything else                    404
 *
 * Usage: backend [-a 127.0.0.1] [-p 18090]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IN_CAP      16384           /* request heads must fit */
#define SCRATCH_CAP (256 * 1024)    /* body discard / big-body source */
#define OUT_HIGH    (1024 * 1024)   /* stop reading while this much is queued */
#define MAX_EVENTS  512

enum body_mode { BODY_NONE, BODY_LENGTH, BODY_CHUNKED };
enum chunk_state { CH_SIZE, CH_SIZE_LF, CH_DATA, CH_DATA_CR, CH_DATA_LF,
                   CH_TRAILER, CH_TRAILER_LF, CH_DONE };

struct conn {
    int fd;
    bool want_out;              /* EPOLLOUT armed */
    bool close_after;           /* Connection: close seen */
    /* input */
    char in[IN_CAP];
    size_t in_len;
    /* queued output */
    char *out;
    size_t out_len, out_off, out_cap;
    /* request body being discarded (POST /upload) */
    enum body_mode body;
    uint64_t body_left;         /* BODY_LENGTH: bytes still to read */
    uint64_t body_count;        /* bytes of body seen */
    enum chunk_state ch;
    uint64_t ch_left;
    bool trailer_empty;
    /* streaming response: /big */
    uint64_t big_left;
    /* streaming response: /sse */
    int sse_left, sse_id;
    int64_t sse_next;           /* ns, CLOCK_MONOTONIC */
    int sse_interval;           /* ns */
    struct conn *sse_prev, *sse_next_conn;
};

static int ep;
static char scratch[SCRATCH_CAP];
static char resp_1k[256 + 1024], resp_1k_close[256 + 1024];
static size_t resp_1k_len, resp_1k_close_len;
#define JSON_BYTES 10240
#define FILE_BYTES 8192
static char resp_json[256 + JSON_BYTES], resp_file[512 + FILE_BYTES];
static size_t resp_json_len, resp_file_len;
static struct conn *sse_head;
static volatile sig_atomic_t stop;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void on_signal(int sig) { (void)sig; stop = 1; }

static void update_events(struct conn *c)
{
    struct epoll_event ev = { .events = EPOLLIN | (c->want_out ? EPOLLOUT : 0),
                              .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void sse_unlink(struct conn *c)
{
    if (c->sse_prev) c->sse_prev->sse_next_conn = c->sse_next_conn;
    else if (sse_head == c) sse_head = c->sse_next_conn;
    if (c->sse_next_conn) c->sse_next_conn->sse_prev = c->sse_prev;
    c->sse_prev = c->sse_next_conn = NULL;
}

static void conn_free(struct conn *c)
{
    if (c->sse_left > 0) sse_unlink(c);
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

static void out_append(struct conn *c, const void *p, size_t n)
{
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 4096;
            while (cap < c->out_len + n) cap *= 2;
            char *o = realloc(c->out, cap);
            if (!o) { perror("realloc"); exit(1); }
            c->out = o;
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

/* Writes queued output, then /big body bytes. Returns -1 if the connection
 * is dead. Arms EPOLLOUT only when the kernel buffer is full. */
static int flush_out(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0) {
            if (errno == EAGAIN) goto blocked;
            if (errno == EINTR) continue;
            return -1;
        }
        c->out_off += (size_t)w;
    }
    c->out_off = c->out_len = 0;
    while (c->big_left > 0) {
        size_t n = c->big_left < SCRATCH_CAP ? (size_t)c->big_left : SCRATCH_CAP;
        ssize_t w = write(c->fd, scratch, n);
        if (w < 0) {
            if (errno == EAGAIN) goto blocked;
            if (errno == EINTR) continue;
            return -1;
        }
        c->big_left -= (uint64_t)w;
    }
    if (c->want_out) { c->want_out = false; update_events(c); }
    return 0;
blocked:
    if (!c->want_out) { c->want_out = true; update_events(c); }
    return 0;
}

static bool busy(const struct conn *c)
{
    return c->body != BODY_NONE || c->big_left > 0 || c->sse_left > 0;
}

static uint64_t query_u64(const char *path, size_t plen, const char *key,
                          uint64_t dflt)
{
    size_t kl = strlen(key);
    const char *q = memchr(path, '?', plen);
    if (!q) return dflt;
    const char *end = path + plen;
    for (const char *p = q + 1; p < end; ) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        if (!amp) amp = end;
        if ((size_t)(amp - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == '=')
            return strtoull(p + kl + 1, NULL, 10);
        p = amp + 1;
    }
    return dflt;
}

static void reply_simple(struct conn *c, const char *status, const char *body)
{
    char h[256];
    int n = snprintf(h, sizeof h, "HTTP/1.1 %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n%s\r\n%s", status, strlen(body),
                     c->close_after ? "Connection: close\r\n" : "", body);
    out_append(c, h, (size_t)n);
}

static void upload_done(struct conn *c)
{
    char b[32];
    snprintf(b, sizeof b, "%llu\n", (unsigned long long)c->body_count);
    c->body = BODY_NONE;
    reply_simple(c, "200 OK", b);
}

/* Consumes request body bytes from p[0..n); returns how many it used. */
static size_t body_feed(struct conn *c, const char *p, size_t n)
{
    if (c->body == BODY_LENGTH) {
        size_t k = n < c->body_left ? n : (size_t)c->body_left;
        c->body_left -= k;
        c->body_count += k;
        if (c->body_left == 0) upload_done(c);
        return k;
    }
    size_t i = 0;
    while (i < n && c->ch != CH_DONE) {
        char ch = p[i];
        switch (c->ch) {
        case CH_SIZE:
            if (ch == '\r') { c->ch = CH_SIZE_LF; }
            else if (ch == ';') { /* extension: skip to CR */ }
            else {
                int v = (ch >= '0' && ch <= '9') ? ch - '0'
                      : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                      : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10 : -1;
                if (v >= 0) c->ch_left = c->ch_left * 16 + (uint64_t)v;
            }
            i++;
            break;
        case CH_SIZE_LF:
            i++;
            if (c->ch_left == 0) { c->ch = CH_TRAILER; c->trailer_empty = true; }
            else c->ch = CH_DATA;
            break;
        case CH_DATA: {
            size_t k = (n - i) < c->ch_left ? (n - i) : (size_t)c->ch_left;
            c->ch_left -= k;
            c->body_count += k;
            i += k;
            if (c->ch_left == 0) c->ch = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR: i++; c->ch = CH_DATA_LF; break;
        case CH_DATA_LF: i++; c->ch = CH_SIZE; c->ch_left = 0; break;
        case CH_TRAILER:
            i++;
            if (ch == '\r') c->ch = CH_TRAILER_LF;
            else c->trailer_empty = false;
            break;
        case CH_TRAILER_LF:
            i++;
            if (c->trailer_empty) c->ch = CH_DONE;
            else { c->ch = CH_TRAILER; c->trailer_empty = true; }
            break;
        case CH_DONE: break;
        }
    }
    if (c->ch == CH_DONE) upload_done(c);
    return i;
}

static bool header_is(const char *line, size_t len, const char *name,
                      const char **val, size_t *vlen)
{
    size_t nl = strlen(name);
    if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return false;
    const char *v = line + nl + 1, *e = line + len;
    while (v < e && (*v == ' ' || *v == '\t')) v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
    *val = v;
    *vlen = (size_t)(e - v);
    return true;
}

static void sse_write_event(struct conn *c)
{
    char ev[96], chunk[128];
    int n = snprintf(ev, sizeof ev, "id: %d\ndata: %lld\n\n", c->sse_id++,
                     (long long)now_ns());
    int m = snprintf(chunk, sizeof chunk, "%x\r\n%s\r\n", n, ev);
    out_append(c, chunk, (size_t)m);
    if (--c->sse_left == 0) {
        out_append(c, "0\r\n\r\n", 5);
        sse_unlink(c);
    } else {
        c->sse_next += c->sse_interval;
    }
}

/* The /json10k and /files/ answers, made once: a list of records whose ids,
 * dates and numbers vary as real ones do (so it compresses like real JSON,
 * not like one repeated string), and 8 KiB of xorshift noise. */
static void make_json_and_file(void)
{
    static const char *words[] = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot",
                                  "golf", "hotel", "india", "juliet", "kilo", "lima"};
    char body[JSON_BYTES];
    uint64_t x = 88172645463325252ull;
    size_t n = (size_t)snprintf(body, sizeof body,
                                "{\"page\":1,\"perPage\":30,\"totalItems\":1200,\"items\":[");
    for (int i = 0; n < JSON_BYTES - 300; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        n += (size_t)snprintf(body + n, sizeof body - n,
                              "%s{\"id\":\"%015llx\",\"collectionId\":\"pbc_3142635823\","
                              "\"created\":\"2026-11-%02d 10:%02d:%02d.%03dZ\",\"title\":\"%s %s\","
                              "\"views\":%llu,\"published\":%s}",
                              i ? "," : "", (unsigned long long)(x & 0xfffffffffffffffull),
                              1 + (int)(x % 28), (int)((x >> 8) % 60), (int)((x >> 16) % 60),
                              (int)((x >> 24) % 1000), words[x % 12], words[(x >> 4) % 12],
                              (unsigned long long)(x >> 40), (x & 1) ? "true" : "false");
    }
    n += (size_t)snprintf(body + n, sizeof body - n, "]}");
    while (n < JSON_BYTES) body[n++] = ' ';
    resp_json_len = (size_t)snprintf(resp_json, 256, "HTTP/1.1 200 OK\r\nContent-Type: "
                                     "application/json\r\nContent-Length: %d\r\n\r\n", JSON_BYTES);
    memcpy(resp_json + resp_json_len, body, JSON_BYTES);
    resp_json_len += JSON_BYTES;

    resp_file_len = (size_t)snprintf(resp_file, 512, "HTTP/1.1 200 OK\r\nContent-Type: image/webp\r\n"
                                     "Content-Length: %d\r\nCache-Control: max-age=86400\r\n"
                                     "ETag: \"f8k-1\"\r\nLast-Modified: Sun, 01 Nov 2026 10:00:00 GMT\r\n\r\n",
                                     FILE_BYTES);
    for (int i = 0; i < FILE_BYTES; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        resp_file[resp_file_len + (size_t)i] = (char)x;
    }
    resp_file_len += FILE_BYTES;
}

/* Answers one parsed request head (or starts its body / stream). */
static void handle_request(struct conn *c, const char *method, size_t mlen,
                           const char *path, size_t plen,
                           uint64_t clen, bool chunked)
{
    bool get = mlen == 3 && memcmp(method, "GET", 3) == 0;
    bool post = mlen == 4 && memcmp(method, "POST", 4) == 0;
#define PATH_IS(s) (plen >= sizeof(s) - 1 && memcmp(path, s, sizeof(s) - 1) == 0 \
                    && (plen == sizeof(s) - 1 || path[sizeof(s) - 1] == '?'))
    if (get && PATH_IS("/1k")) {
        if (c->close_after) out_append(c, resp_1k_close, resp_1k_close_len);
        else out_append(c, resp_1k, resp_1k_len);
    } else if (get && PATH_IS("/json10k")) {
        out_append(c, resp_json, resp_json_len);
    } else if (get && plen > 7 && memcmp(path, "/files/", 7) == 0) {
        out_append(c, resp_file, resp_file_len);
    } else if (get && PATH_IS("/big")) {
        uint64_t n = query_u64(path, plen, "bytes", 1 << 20);
        char h[160];
        int k = snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Type: "
                         "application/octet-stream\r\nContent-Length: %llu\r\n%s\r\n",
                         (unsigned long long)n,
                         c->close_after ? "Connection: close\r\n" : "");
        out_append(c, h, (size_t)k);
        c->big_left = n;
    } else if (get && PATH_IS("/sse")) {
        int n = (int)query_u64(path, plen, "n", 200);
        int iv = (int)query_u64(path, plen, "interval_ms", 5);
        static const char h[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
        out_append(c, h, sizeof h - 1);
        if (n <= 0) { out_append(c, "0\r\n\r\n", 5); return; }
        c->sse_left = n;
        c->sse_id = 0;
        c->sse_interval = iv * 1000000;
        c->sse_next = now_ns();     /* first event right away */
        c->sse_next_conn = sse_head;
        c->sse_prev = NULL;
        if (sse_head) sse_head->sse_prev = c;
        sse_head = c;
    } else if (post && (PATH_IS("/upload") || PATH_IS("/v1/traces"))) {
        c->body_count = 0;
        if (chunked) { c->body = BODY_CHUNKED; c->ch = CH_SIZE; c->ch_left = 0; }
        else if (clen > 0) { c->body = BODY_LENGTH; c->body_left = clen; }
        else upload_done(c);
    } else {
        reply_simple(c, "404 Not Found", "not found\n");
    }
#undef PATH_IS
}

/* Parses and answers every complete request in the input buffer, stopping
 * while a streaming response or a request body is in progress. Returns -1 on
 * a malformed request (we then close). */
static int process_input(struct conn *c)
{
    size_t off = 0;
    while (off < c->in_len) {
        if (c->body != BODY_NONE) {
            off += body_feed(c, c->in + off, c->in_len - off);
            continue;
        }
        if (c->big_left > 0 || c->sse_left > 0 || c->close_after) break;
        char *start = c->in + off;
        size_t avail = c->in_len - off;
        char *end = memmem(start, avail, "\r\n\r\n", 4);
        if (!end) break;
        size_t head_len = (size_t)(end - start) + 4;
        /* request line */
        char *eol = memmem(start, head_len, "\r\n", 2);
        char *sp1 = memchr(start, ' ', (size_t)(eol - start));
        if (!sp1) return -1;
        char *sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
        if (!sp2) return -1;
        bool http10 = (size_t)(eol - sp2 - 1) == 8 && memcmp(sp2 + 1, "HTTP/1.0", 8) == 0;
        uint64_t clen = 0;
        bool chunked = false, conn_close = http10, keep = false;
        for (char *line = eol + 2; line < end; ) {
            char *le = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
            size_t ll = (size_t)(le - line);
            const char *v; size_t vl;
            if (header_is(line, ll, "Content-Length", &v, &vl))
                clen = strtoull(v, NULL, 10);
            else if (header_is(line, ll, "Transfer-Encoding", &v, &vl))
                chunked = vl >= 7 && strncasecmp(v + vl - 7, "chunked", 7) == 0;
            else if (header_is(line, ll, "Connection", &v, &vl)) {
                if (memmem(v, vl, "close", 5) || memmem(v, vl, "Close", 5)) conn_close = true;
                if (memmem(v, vl, "keep-alive", 10) || memmem(v, vl, "Keep-Alive", 10)) keep = true;
            }
            line = le + 2;
        }
        if (http10 && keep) conn_close = false;
        c->close_after = conn_close;
        off += head_len;
        handle_request(c, start, (size_t)(sp1 - start), sp1 + 1,
                       (size_t)(sp2 - sp1 - 1), clen, chunked);
    }
    if (off > 0) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    if (c->in_len == IN_CAP && !busy(c)) return -1;   /* head too large */
    return 0;
}

/* A connection may close once nothing is queued, streaming or pending. */
static bool done_closing(const struct conn *c)
{
    return c->close_after && !busy(c) && c->out_len == c->out_off;
}

/* Flushes output and answers pipelined requests that waited behind a
 * streaming response, until nothing more can be done now. */
static int pump(struct conn *c)
{
    for (;;) {
        if (flush_out(c) < 0) return -1;
        if (busy(c) || c->in_len == 0 || c->close_after) return 0;
        size_t before = c->in_len;
        if (process_input(c) < 0) return -1;
        if (c->in_len == before) return 0;
    }
}

static void on_readable(struct conn *c)
{
    for (;;) {
        if (c->out_len - c->out_off > OUT_HIGH) break;   /* back-pressure */
        ssize_t r;
        if (c->body != BODY_NONE && c->in_len == 0) {
            /* Body bytes: read big, straight into the scratch buffer. */
            r = read(c->fd, scratch, SCRATCH_CAP);
            if (r > 0) {
                size_t used = body_feed(c, scratch, (size_t)r);
                if (used < (size_t)r) {
                    /* The next pipelined request started inside this read. */
                    size_t rest = (size_t)r - used;
                    if (rest > IN_CAP) { conn_free(c); return; }
                    memcpy(c->in, scratch + used, rest);
                    c->in_len = rest;
                    if (process_input(c) < 0) { conn_free(c); return; }
                }
                continue;
            }
        } else {
            if (c->in_len == IN_CAP) break;
            r = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
            if (r > 0) {
                c->in_len += (size_t)r;
                if (process_input(c) < 0) { conn_free(c); return; }
                if ((size_t)r < IN_CAP / 2) break;   /* drained, most likely */
                continue;
            }
        }
        if (r == 0) { conn_free(c); return; }
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        conn_free(c);
        return;
    }
    if (pump(c) < 0 || done_closing(c)) conn_free(c);
}

static void on_writable(struct conn *c)
{
    if (pump(c) < 0 || done_closing(c)) conn_free(c);
}

static void accept_all(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;   /* EAGAIN, or EMFILE: try again next time */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) { close(fd); return; }
        c->fd = fd;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
}

static void run_sse_timers(void)
{
    int64_t now = now_ns();
    struct conn *c = sse_head;
    while (c) {
        struct conn *next = c->sse_next_conn;
        if (c->sse_next <= now) {
            sse_write_event(c);
            if (pump(c) < 0 || done_closing(c)) conn_free(c);
        }
        c = next;
    }
}

/* How long epoll may sleep: until the next SSE event is due, in ns, so
 * events leave on time (epoll_pwait2 takes a timespec). */
static struct timespec next_timeout(void)
{
    struct timespec ts = { 1, 0 };
    if (!sse_head) return ts;
    int64_t soonest = INT64_MAX;
    for (struct conn *c = sse_head; c; c = c->sse_next_conn)
        if (c->sse_next < soonest) soonest = c->sse_next;
    int64_t wait = soonest - now_ns();
    if (wait < 0) wait = 0;
    ts.tv_sec = wait / 1000000000;
    ts.tv_nsec = wait % 1000000000;
    return ts;
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    int port = 18090, opt;
    while ((opt = getopt(argc, argv, "a:p:")) != -1) {
        if (opt == 'a') addr = optarg;
        else if (opt == 'p') port = atoi(optarg);
        else { fprintf(stderr, "usage: %s [-a addr] [-p port]\n", argv[0]); return 2; }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    for (size_t i = 0; i < SCRATCH_CAP; i++) scratch[i] = (char)('a' + i % 26);
    resp_1k_len = (size_t)snprintf(resp_1k, 256, "HTTP/1.1 200 OK\r\nContent-Type: "
                                   "text/plain\r\nContent-Length: 1024\r\n\r\n");
    memcpy(resp_1k + resp_1k_len, scratch, 1024);
    resp_1k_len += 1024;
    resp_1k_close_len = (size_t)snprintf(resp_1k_close, 256, "HTTP/1.1 200 OK\r\n"
                                         "Content-Type: text/plain\r\nContent-Length: 1024\r\n"
                                         "Connection: close\r\n\r\n");
    memcpy(resp_1k_close + resp_1k_close_len, scratch, 1024);
    resp_1k_close_len += 1024;

    make_json_and_file();

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, addr, &sa.sin_addr);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
        fprintf(stderr, "backend: %s:%d: %s\n", addr, port, strerror(errno));
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    static int lmark;   /* the listener's data.ptr: never a struct conn */
    struct epoll_event lev = { .events = EPOLLIN, .data.ptr = &lmark };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    fprintf(stderr, "backend: listening on %s:%d\n", addr, port);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop) {
        struct timespec timeout = next_timeout();
        int n = epoll_pwait2(ep, evs, MAX_EVENTS, &timeout, NULL);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &lmark) { accept_all(lfd); continue; }
            struct conn *c = evs[i].data.ptr;
            /* Only the connection being handled is ever freed, and epoll
             * reports each fd once per call, so c is still valid here. */
            if (evs[i].events & EPOLLOUT) on_writable(c);
            else on_readable(c);
        }
        if (sse_head) run_sse_timers();
    }
    return 0;
}
