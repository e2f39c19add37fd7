/* sse_client.c — per-event delay of a Server-Sent Events stream.
 *
 * Connects (plain HTTP) to HOST:PORT, asks for /sse?n=N&interval_ms=I and, for
 * every event, subtracts the CLOCK_MONOTONIC ns the backend wrote into
 * "data:" from the CLOCK_MONOTONIC ns at which the event arrived here. Client
 * and backend run on the same machine, so the clocks are the same clock.
 * Decodes chunked framing, so a proxy may re-chunk the stream as it likes.
 * With "h2c" it speaks HTTP/2 with prior knowledge instead (libnghttp2) and
 * reads the events from DATA frames.
 *
 * Usage: sse_client HOST PORT [N [INTERVAL_MS [h2c]]]
 * Prints: events=N median_us=.. p99_us=.. max_us=.. min_us=..
 * Exits 1 if fewer than N events arrive within the time limit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Decoded body bytes wait here until a whole event ("\n\n") is in. */
static char body[1 << 16];
static size_t body_len;
static int64_t *delays;
static int nevents, want;

static void on_body(const char *p, size_t n, int64_t arrived)
{
    if (body_len + n > sizeof body) { fprintf(stderr, "event too large\n"); exit(1); }
    memcpy(body + body_len, p, n);
    body_len += n;
    char *start = body, *end;
    while ((end = memmem(start, (size_t)(body + body_len - start), "\n\n", 2))) {
        char *d = memmem(start, (size_t)(end - start), "data: ", 6);
        if (d && nevents < want) delays[nevents++] = arrived - strtoll(d + 6, NULL, 10);
        start = end + 2;
    }
    body_len = (size_t)(body + body_len - start);
    memmove(body, start, body_len);
}

/* ---- HTTP/2 with prior knowledge ---- */

static int64_t h2_arrived;   /* when the bytes being fed to the session came */
static int h2_status;
static bool h2_done;

static ssize_t h2_send(nghttp2_session *s, const uint8_t *data, size_t n, int flags, void *fdp)
{
    (void)s, (void)flags;
    ssize_t w = write(*(int *)fdp, data, n);
    return w < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : w;
}

static int h2_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *u)
{
    (void)s, (void)f, (void)flags, (void)u;
    if (nl == 7 && memcmp(name, ":status", 7) == 0) h2_status = atoi((const char *)value);
    (void)vl;
    return 0;
}

static int h2_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t n,
                   void *u)
{
    (void)flags, (void)u;
    on_body((const char *)data, n, h2_arrived);
    nghttp2_session_consume(s, id, n);
    return 0;
}

static int h2_close(nghttp2_session *s, int32_t id, uint32_t err, void *u)
{
    (void)s, (void)id, (void)err, (void)u;
    h2_done = true;
    return 0;
}

static void run_h2(int fd, const char *path)
{
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, h2_send);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_close);
    nghttp2_session *s;
    nghttp2_session_client_new(&s, cb, &fd);
    nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, NULL, 0);
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, 0},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
        {(uint8_t *)":authority", (uint8_t *)"bench.test", 10, 10, 0},
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
        {(uint8_t *)"accept", (uint8_t *)"text/event-stream", 6, 17, 0},
    };
    if (nghttp2_submit_request(s, NULL, nv, sizeof nv / sizeof nv[0], NULL, NULL) < 0 ||
        nghttp2_session_send(s) != 0) { fprintf(stderr, "h2: cannot send the request\n"); exit(1); }
    static uint8_t buf[1 << 16];
    while (nevents < want && !h2_done) {
        ssize_t r = read(fd, buf, sizeof buf);
        h2_arrived = now_ns();
        if (r <= 0) break;
        if (nghttp2_session_mem_recv(s, buf, (size_t)r) < 0 || nghttp2_session_send(s) != 0) {
            fprintf(stderr, "h2: session failed\n");
            exit(1);
        }
        if (h2_status != 0 && h2_status != 200) { fprintf(stderr, "bad status %d\n", h2_status); exit(1); }
    }
    nghttp2_session_del(s);
    nghttp2_session_callbacks_del(cb);
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: %s HOST PORT [N [INTERVAL_MS [h2c]]]\n", argv[0]); return 2; }
    want = argc > 3 ? atoi(argv[3]) : 200;
    int interval = argc > 4 ? atoi(argv[4]) : 5;
    delays = calloc((size_t)want, sizeof *delays);
    alarm((unsigned)(10 + want * interval / 1000 * 3));   /* bounded in time */

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2])) };
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (argc > 5 && strcmp(argv[5], "h2c") == 0) {
        char path[64];
        snprintf(path, sizeof path, "/sse?n=%d&interval_ms=%d", want, interval);
        run_h2(fd, path);
        goto done;
    }
    char req[256];
    int rl = snprintf(req, sizeof req, "GET /sse?n=%d&interval_ms=%d HTTP/1.1\r\n"
                      "Host: bench.test\r\nAccept: text/event-stream\r\n\r\n", want, interval);
    if (write(fd, req, (size_t)rl) != rl) { perror("write"); return 1; }

    /* Response head, then the body: chunked or raw until close. */
    static char buf[1 << 16];
    size_t len = 0;
    bool head_done = false, chunked = false;
    enum { SIZE, DATA, DATA_CRLF } st = SIZE;
    uint64_t chunk_left = 0;
    char sizeline[64];
    size_t sl = 0;
    while (nevents < want) {
        ssize_t r = read(fd, buf + len, sizeof buf - len);
        int64_t t = now_ns();
        if (r <= 0) break;
        len += (size_t)r;
        size_t off = 0;
        if (!head_done) {
            char *e = memmem(buf, len, "\r\n\r\n", 4);
            if (!e) continue;
            if (strncmp(buf, "HTTP/1.1 200", 12) && strncmp(buf, "HTTP/1.0 200", 12)) {
                fprintf(stderr, "bad status: %.*s\n", (int)(strchr(buf, '\r') - buf), buf);
                return 1;
            }
            *e = 0;
            chunked = strcasestr(buf, "transfer-encoding: chunked") != NULL;
            head_done = true;
            off = (size_t)(e - buf) + 4;
        }
        while (off < len) {
            if (!chunked) { on_body(buf + off, len - off, t); off = len; break; }
            if (st == SIZE) {
                char ch = buf[off++];
                if (ch == '\n') {
                    sizeline[sl] = 0;
                    chunk_left = strtoull(sizeline, NULL, 16);
                    sl = 0;
                    if (chunk_left == 0) goto done;
                    st = DATA;
                } else if (sl < sizeof sizeline - 1) sizeline[sl++] = ch;
            } else if (st == DATA) {
                size_t k = len - off < chunk_left ? len - off : (size_t)chunk_left;
                on_body(buf + off, k, t);
                off += k;
                chunk_left -= k;
                if (chunk_left == 0) { st = DATA_CRLF; chunk_left = 2; }
            } else {
                off++;
                if (--chunk_left == 0) st = SIZE;
            }
        }
        len = 0;
    }
done:
    if (nevents < want) { fprintf(stderr, "only %d of %d events\n", nevents, want); return 1; }
    qsort(delays, (size_t)nevents, sizeof *delays, cmp_i64);
    printf("events=%d median_us=%.1f p99_us=%.1f max_us=%.1f min_us=%.1f\n", nevents,
           delays[nevents / 2] / 1e3, delays[(nevents * 99) / 100] / 1e3,
           delays[nevents - 1] / 1e3, delays[0] / 1e3);
    return 0;
}
