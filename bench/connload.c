/* connload.c — connection-level load: TLS handshake rate, and idle holders.
 *
 * One thread, epoll, non-blocking sockets and OpenSSL. Every connection does
 * the same thing: connect, (TLS handshake), send "GET PATH", read the whole
 * response (Content-Length). What happens next depends on the mode:
 *
 *   -m new      close and open a new connection, never offering a session:
 *               every handshake is a full one (ECDHE + certificate signature)
 *   -m resume   close and open a new connection that offers the most recent
 *               session (TLS 1.3 ticket / TLS 1.2 ticket or id) received;
 *               the first CONCURRENCY connections have none to offer, so
 *               "offered" counts the handshakes that could resume
 *   -m hold     keep the connection open and idle; once all N are idle, print
 *               "ready" and wait until SIGTERM (or -w seconds)
 *
 * Why our own client rather than wrk -H 'Connection: close': wrk shuts each
 * TLS connection down cleanly and then reuses the same SSL object, which keeps
 * the session, so its "new connections" resume. Here "new" and "resume" are
 * decided explicitly, and every handshake is checked with
 * SSL_session_reused(), so the report can say how many really resumed.
 *
 * Source addresses rotate over 127.0.0.2 .. 127.0.0.(1+S) (-s S), so tens of
 * thousands of connections do not run out of ephemeral ports.
 *
 * -2 speaks HTTP/2 instead (with -t: ALPN h2, which the server must choose):
 * the client preface, an empty SETTINGS and the GET as one HEADERS frame go
 * out together; the server's SETTINGS is acknowledged as it comes. The
 * request is done once its response ended (:status 200, END_STREAM), the
 * server's SETTINGS came and our SETTINGS was acknowledged: in hold mode the
 * connection then sits idle with the SETTINGS exchange behind it.
 *
 * Usage: connload -p PORT [-a 127.0.0.1] [-t] [-2] [-m new|resume|hold]
 *                 [-c CONCURRENCY] [-d SECONDS] [-n CONNS] [-s SOURCES]
 *                 [-w HOLD_SECONDS] [-P PATH]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

#include <openssl/err.h>
#include <openssl/ssl.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum mode { MODE_NEW, MODE_RESUME, MODE_HOLD };
enum state { ST_CONNECTING, ST_HANDSHAKE, ST_WRITING, ST_READING, ST_IDLE };

struct slot {
    int fd;
    SSL *ssl;
    enum state st;
    size_t wrote;
    char head[4096];
    size_t head_len;
    long long body_left;        /* -1 until the head is parsed */
    bool offered;               /* a session was offered for resumption */
    /* HTTP/2: frames are parsed out of head[]; a frame too large for it is
     * skipped (skip_left bytes still to drop). */
    size_t skip_left;
    bool h2_settings, h2_acked, h2_ended;
};

static enum mode mode = MODE_NEW;
static bool use_tls, use_h2;
static struct sockaddr_in dst;
static int nsources = 50, next_source;
static SSL_CTX *ctx;
static SSL_SESSION *last_session;
static char request[512];
static size_t request_len;
static int ep;
static volatile sig_atomic_t stop;
static long long n_done, n_reused, n_full, n_offered, n_errors, n_started;
static char first_error[256];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_signal(int sig) { (void)sig; stop = 1; }

static void note_error(const char *what)
{
    n_errors++;
    if (!first_error[0]) {
        unsigned long e = ERR_peek_error();
        snprintf(first_error, sizeof first_error, "%s%s%s%s", what,
                 errno ? ": " : "", errno ? strerror(errno) : "",
                 e ? " (TLS error)" : "");
        if (e) {
            size_t l = strlen(first_error);
            ERR_error_string_n(e, first_error + l, sizeof first_error - l);
        }
    }
    ERR_clear_error();
}

static void watch(struct slot *s, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = s };
    if (epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev) < 0)
        epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
}

static void slot_close(struct slot *s)
{
    if (s->ssl) {
        /* A quiet shutdown marks the session cleanly closed without a round
         * trip, so OpenSSL keeps it resumable. */
        SSL_set_quiet_shutdown(s->ssl, 1);
        SSL_shutdown(s->ssl);
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    if (s->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
}

static int slot_open(struct slot *s)
{
    memset(s, 0, sizeof *s);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) { note_error("socket"); return -1; }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (nsources > 0) {
        setsockopt(s->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = { .sin_family = AF_INET };
        src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(next_source++ % nsources));
        if (bind(s->fd, (struct sockaddr *)&src, sizeof src) < 0) {
            note_error("bind");
            close(s->fd);
            s->fd = -1;
            return -1;
        }
    }
    n_started++;
    s->body_left = -1;
    if (connect(s->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        note_error("connect");
        close(s->fd);
        s->fd = -1;
        return -1;
    }
    s->st = ST_CONNECTING;
    watch(s, EPOLLOUT);
    return 0;
}

/* Parses the response head once it is complete; -1 if it is not a 200. */
static int parse_head(struct slot *s, size_t *body_in_head)
{
    char *e = memmem(s->head, s->head_len, "\r\n\r\n", 4);
    if (!e) return 0;
    if (strncmp(s->head, "HTTP/1.1 200", 12) != 0 && strncmp(s->head, "HTTP/1.0 200", 12) != 0) {
        char what[64];
        size_t n = strcspn(s->head, "\r\n");
        snprintf(what, sizeof what, "non-200 response: %.*s", (int)(n < 40 ? n : 40), s->head);
        errno = 0;
        note_error(what);
        return -1;
    }
    *e = 0;
    char *cl = strcasestr(s->head, "\r\ncontent-length:");
    s->body_left = cl ? atoll(cl + 17) : 0;
    *body_in_head = s->head_len - (size_t)(e + 4 - s->head);
    return 1;
}

/* HTTP/2 frame types and flags used here. */
#define H2_DATA 0x0
#define H2_HEADERS 0x1
#define H2_RST_STREAM 0x3
#define H2_SETTINGS 0x4
#define H2_GOAWAY 0x7
#define H2_END_STREAM 0x1
#define H2_ACK 0x1
#define H2_PADDED 0x8
#define H2_PRIORITY 0x20

/* The request as HTTP/2: preface, empty SETTINGS, HEADERS (END_STREAM) on
 * stream 1 with a hand-made HPACK block (static-table :method GET and
 * :scheme, literal :authority and :path, no Huffman). */
static size_t h2_request(char *out, size_t cap, const char *path)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    unsigned char block[300];
    size_t b = 0, plen = strlen(path);
    if (plen > 200) plen = 200;
    block[b++] = 0x82;                               /* :method GET */
    block[b++] = use_tls ? 0x87 : 0x86;              /* :scheme https / http */
    block[b++] = 0x01;                               /* :authority, literal */
    block[b++] = 9;
    memcpy(block + b, "localhost", 9); b += 9;
    block[b++] = 0x04;                               /* :path, literal */
    block[b++] = (unsigned char)plen;
    memcpy(block + b, path, plen); b += plen;
    size_t n = 0;
    if (cap < 24 + 9 + 9 + b) return 0;
    memcpy(out, preface, 24); n += 24;
    memcpy(out + n, "\0\0\0\x04\0\0\0\0\0", 9); n += 9;  /* SETTINGS, empty */
    unsigned char hd[9] = {0, 0, (unsigned char)b, H2_HEADERS, 0x4 | H2_END_STREAM, 0, 0, 0, 1};
    memcpy(out + n, hd, 9); n += 9;
    memcpy(out + n, block, b); n += b;
    return n;
}

/* Sends a SETTINGS ACK (9 bytes: it goes out whole or the connection has
 * failed). */
static bool h2_ack(struct slot *s)
{
    static const char ack[9] = {0, 0, 0, H2_SETTINGS, H2_ACK, 0, 0, 0, 0};
    int w = s->ssl ? SSL_write(s->ssl, ack, 9) : (int)write(s->fd, ack, 9);
    if (w != 9) { errno = 0; note_error("cannot send the SETTINGS ACK"); return false; }
    return true;
}

/* One whole frame (or the first head[] bytes of one too large): -1 on a
 * failure, 1 when the request is done, 0 to go on. */
static int h2_frame(struct slot *s, const unsigned char *f, size_t have)
{
    size_t len = ((size_t)f[0] << 16) | ((size_t)f[1] << 8) | f[2];
    unsigned type = f[3], flags = f[4];
    uint32_t sid = ((uint32_t)(f[5] & 0x7f) << 24) | ((uint32_t)f[6] << 16) |
                   ((uint32_t)f[7] << 8) | f[8];
    const unsigned char *p = f + 9;
    size_t plen = have - 9 < len ? have - 9 : len;
    switch (type) {
    case H2_SETTINGS:
        if (flags & H2_ACK) {
            s->h2_acked = true;
        } else {
            s->h2_settings = true;
            if (!h2_ack(s)) return -1;
        }
        break;
    case H2_HEADERS:
        if (sid != 1) break;
        if (flags & H2_PADDED) { p++; plen = plen ? plen - 1 : 0; }
        if (flags & H2_PRIORITY) { p += 5; plen = plen > 5 ? plen - 5 : 0; }
        /* :status 200 is static-table entry 8, which every encoder uses. */
        if (s->body_left < 0 && (plen == 0 || p[0] != 0x88)) {
            errno = 0;
            note_error("HTTP/2 response without :status 200 first");
            return -1;
        }
        s->body_left = 0;
        if (flags & H2_END_STREAM) s->h2_ended = true;
        break;
    case H2_DATA:
        if (sid == 1 && (flags & H2_END_STREAM)) s->h2_ended = true;
        break;
    case H2_RST_STREAM:
        if (sid != 1) break;
        errno = 0; note_error("HTTP/2 stream reset"); return -1;
    case H2_GOAWAY:
        errno = 0; note_error("HTTP/2 GOAWAY"); return -1;
    default:
        break;
    }
    return s->h2_settings && s->h2_acked && s->h2_ended ? 1 : 0;
}

/* Takes `r` new bytes at head + head_len: parses what frames are complete.
 * -1 on a failure, 1 when the request is done, 0 for more. */
static int h2_input(struct slot *s, size_t r)
{
    unsigned char *h = (unsigned char *)s->head;
    size_t start = 0, end = s->head_len + r;
    if (s->skip_left > 0) {
        size_t k = s->skip_left < end ? s->skip_left : end;
        s->skip_left -= k;
        start = k;
    }
    int done = 0;
    while (done == 0 && end - start >= 9) {
        size_t len = ((size_t)h[start] << 16) | ((size_t)h[start + 1] << 8) | h[start + 2];
        if (end - start >= 9 + len) {
            done = h2_frame(s, h + start, 9 + len);
            start += 9 + len;
        } else if (9 + len > sizeof s->head - 1) {
            done = h2_frame(s, h + start, end - start);   /* its head is enough */
            s->skip_left = 9 + len - (end - start);
            start = end;
        } else {
            break;
        }
    }
    memmove(h, h + start, end - start);
    s->head_len = end - start;
    return done;
}

/* Connection finished its request: count it and decide what comes next. */
static void slot_finished(struct slot *s)
{
    n_done++;
    if (mode == MODE_HOLD) {
        s->st = ST_IDLE;
        watch(s, EPOLLIN);   /* to notice if the server closes it */
        return;
    }
    if (mode == MODE_RESUME && s->ssl) {
        SSL_SESSION *sess = SSL_get1_session(s->ssl);
        if (sess && SSL_SESSION_is_resumable(sess)) {
            if (last_session) SSL_SESSION_free(last_session);
            last_session = sess;
        } else if (sess) {
            SSL_SESSION_free(sess);
        }
    }
    slot_close(s);
}

/* Advances one connection as far as it can go without blocking. Returns
 * false if it failed (the caller closes it). */
static bool step(struct slot *s)
{
    if (s->st == ST_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) { errno = err; note_error("connect"); return false; }
        if (use_tls) {
            s->ssl = SSL_new(ctx);
            SSL_set_fd(s->ssl, s->fd);
            SSL_set_tlsext_host_name(s->ssl, "localhost");
            if (mode == MODE_RESUME && last_session) {
                SSL_set_session(s->ssl, last_session);
                s->offered = true;
            }
            SSL_set_connect_state(s->ssl);
            s->st = ST_HANDSHAKE;
        } else {
            s->st = ST_WRITING;
        }
    }
    if (s->st == ST_HANDSHAKE) {
        int r = SSL_do_handshake(s->ssl);
        if (r != 1) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ) { watch(s, EPOLLIN); return true; }
            if (e == SSL_ERROR_WANT_WRITE) { watch(s, EPOLLOUT); return true; }
            note_error("handshake");
            return false;
        }
        if (use_h2) {
            const unsigned char *alpn = NULL;
            unsigned alen = 0;
            SSL_get0_alpn_selected(s->ssl, &alpn, &alen);
            if (alen != 2 || memcmp(alpn, "h2", 2) != 0) {
                errno = 0; note_error("the server did not choose h2 (ALPN)"); return false;
            }
        }
        if (SSL_session_reused(s->ssl)) n_reused++;
        else n_full++;
        if (s->offered) n_offered++;
        s->st = ST_WRITING;
    }
    if (s->st == ST_WRITING) {
        while (s->wrote < request_len) {
            int w;
            if (s->ssl) {
                w = SSL_write(s->ssl, request + s->wrote, (int)(request_len - s->wrote));
                if (w <= 0) {
                    int e = SSL_get_error(s->ssl, w);
                    if (e == SSL_ERROR_WANT_READ) { watch(s, EPOLLIN); return true; }
                    if (e == SSL_ERROR_WANT_WRITE) { watch(s, EPOLLOUT); return true; }
                    note_error("write");
                    return false;
                }
            } else {
                w = (int)write(s->fd, request + s->wrote, request_len - s->wrote);
                if (w < 0) {
                    if (errno == EAGAIN) { watch(s, EPOLLOUT); return true; }
                    note_error("write");
                    return false;
                }
            }
            s->wrote += (size_t)w;
        }
        s->st = ST_READING;
    }
    if (s->st == ST_READING) {
        char buf[16384];
        for (;;) {
            int r;
            bool into_head = s->body_left < 0 || use_h2;
            char *into = into_head ? s->head + s->head_len : buf;
            int cap = into_head ? (int)(sizeof s->head - 1 - s->head_len) : (int)sizeof buf;
            if (cap <= 0) { errno = 0; note_error("response head too large"); return false; }
            if (s->ssl) {
                r = SSL_read(s->ssl, into, cap);
                if (r <= 0) {
                    int e = SSL_get_error(s->ssl, r);
                    if (e == SSL_ERROR_WANT_READ) { watch(s, EPOLLIN); return true; }
                    if (e == SSL_ERROR_WANT_WRITE) { watch(s, EPOLLOUT); return true; }
                    errno = 0;
                    note_error("connection closed before the response ended");
                    return false;
                }
            } else {
                r = (int)read(s->fd, into, (size_t)cap);
                if (r < 0 && errno == EAGAIN) { watch(s, EPOLLIN); return true; }
                if (r <= 0) {
                    if (r == 0) errno = 0;
                    note_error("connection closed before the response ended");
                    return false;
                }
            }
            if (use_h2) {
                int d = h2_input(s, (size_t)r);
                if (d < 0) return false;
                if (d > 0) { slot_finished(s); return true; }
                continue;
            }
            if (s->body_left < 0) {
                s->head_len += (size_t)r;
                size_t extra = 0;
                int h = parse_head(s, &extra);
                if (h < 0) return false;
                if (h == 0) continue;
                s->body_left -= (long long)extra;
            } else {
                s->body_left -= r;
            }
            if (s->body_left <= 0) { slot_finished(s); return true; }
        }
    }
    if (s->st == ST_IDLE) {
        /* Anything readable on an idle connection means the server closed it
         * (or sent something unexpected): either way it is no longer held. */
        char b[256];
        ssize_t r = recv(s->fd, b, sizeof b, MSG_DONTWAIT | MSG_PEEK);
        if (r == 0 || (r < 0 && errno != EAGAIN)) {
            errno = 0;
            note_error("server closed an idle connection");
            n_done--;
            return false;
        }
        watch(s, 0);   /* stop waking up for whatever it was */
    }
    return true;
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s -p PORT [-a ADDR] [-t] [-2] [-m new|resume|hold] [-c CONC] "
                    "[-d SECONDS] [-n CONNS] [-s SOURCES] [-w HOLD_SECONDS] [-P PATH]\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1", *path = "/1k";
    int port = 0, conc = 50, nconns = 10000, opt;
    double duration = 5, hold_for = 120;
    while ((opt = getopt(argc, argv, "a:p:t2m:c:d:n:s:w:P:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 't': use_tls = true; break;
        case '2': use_h2 = true; break;
        case 'm':
            if (!strcmp(optarg, "new")) mode = MODE_NEW;
            else if (!strcmp(optarg, "resume")) mode = MODE_RESUME;
            else if (!strcmp(optarg, "hold")) mode = MODE_HOLD;
            else usage(argv[0]);
            break;
        case 'c': conc = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'n': nconns = atoi(optarg); break;
        case 's': nsources = atoi(optarg); break;
        case 'w': hold_for = atof(optarg); break;
        case 'P': path = optarg; break;
        default: usage(argv[0]);
        }
    }
    if (!port) usage(argv[0]);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, addr, &dst.sin_addr);
    if (use_h2)
        request_len = h2_request(request, sizeof request, path);
    else
        request_len = (size_t)snprintf(request, sizeof request,
                                       "GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n", path,
                                       mode == MODE_HOLD ? "" : "Connection: close\r\n");
    if (use_tls) {
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);   /* self-signed; the
            signature over the handshake is still checked, as any client does */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);   /* we manage it */
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);           /* hold: small client */
        if (use_h2)
            SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x02h2", 3);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);

    int total = mode == MODE_HOLD ? nconns : conc;
    struct slot *slots = calloc((size_t)total, sizeof *slots);
    for (int i = 0; i < total; i++) slots[i].fd = -1;
    int opened = 0;      /* hold mode: how many slots have been started */
    double t0 = now_s(), deadline = t0 + duration;
    int max_events = 1024;
    struct epoll_event *evs = calloc((size_t)max_events, sizeof *evs);

    if (mode == MODE_HOLD) {
        /* Open in waves of `conc` in flight, so the listener's backlog and the
         * client's own TLS work stay bounded. */
        double give_up = t0 + duration + 60;
        int in_flight = 0;
        while (!stop && (opened < total || in_flight > 0) && now_s() < give_up) {
            while (opened < total && in_flight < conc) {
                if (slot_open(&slots[opened]) == 0) in_flight++;
                opened++;
            }
            int n = epoll_wait(ep, evs, max_events, 100);
            for (int i = 0; i < n; i++) {
                struct slot *s = evs[i].data.ptr;
                enum state before = s->st;
                if (!step(s)) { slot_close(s); if (before != ST_IDLE) in_flight--; continue; }
                if (before != ST_IDLE && s->st == ST_IDLE) in_flight--;
            }
        }
        printf("ready held=%lld errors=%lld%s%s\n", n_done, n_errors,
               first_error[0] ? " first_error=" : "", first_error);
        fflush(stdout);
        double until = now_s() + hold_for;
        while (!stop && now_s() < until) {
            int n = epoll_wait(ep, evs, max_events, 200);
            for (int i = 0; i < n; i++) {
                struct slot *s = evs[i].data.ptr;
                if (!step(s)) slot_close(s);
            }
        }
        printf("released held=%lld errors=%lld\n", n_done, n_errors);
        return 0;
    }

    for (int i = 0; i < total; i++) slot_open(&slots[i]);
    long long done_in_time = 0;
    while (!stop) {
        double now = now_s();
        if (now >= deadline) break;
        int n = epoll_wait(ep, evs, max_events, 50);
        for (int i = 0; i < n; i++) {
            struct slot *s = evs[i].data.ptr;
            if (!step(s)) slot_close(s);
            if (s->fd < 0 && now_s() < deadline) slot_open(s);
        }
        /* Slots whose open failed outright: retry (bounded by the deadline). */
        for (int i = 0; i < total; i++)
            if (slots[i].fd < 0 && now_s() < deadline) slot_open(&slots[i]);
        done_in_time = n_done;
    }
    double secs = now_s() - t0;
    printf("conns=%lld secs=%.3f rate=%.1f full=%lld reused=%lld offered=%lld errors=%lld%s%s\n",
           done_in_time, secs, done_in_time / secs, n_full, n_reused, n_offered, n_errors,
           first_error[0] ? " first_error=" : "", first_error);
    return 0;
}
