/* bulk.c — one large request or response body, as fast as the path allows.
 *
 *   bulk up   HOST PORT BYTES   POST /upload with Content-Length BYTES, sent
 *                               from memory in 256 KiB writes; the backend
 *                               replies with the byte count it read
 *   bulk down HOST PORT BYTES   GET /big?bytes=BYTES, read in 256 KiB reads
 *
 * Plain HTTP/1.1 over TCP, blocking sockets: one stream, nothing to overlap.
 * The clock runs from connect to the last byte of the response.
 * Prints: bytes=N secs=S mbps=M   (MB/s, 10^6 bytes)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF (256 * 1024)
static char buf[BUF];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *m) { perror(m); exit(1); }

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) die("write");
        p += w;
        n -= (size_t)w;
    }
}

/* Reads a response head into buf; returns its length and the number of body
 * bytes that came with it in *extra. Exits unless the status is 200. */
static size_t read_head(int fd, size_t *extra, long long *clen)
{
    size_t len = 0;
    char *e;
    for (;;) {
        ssize_t r = read(fd, buf + len, 65536 - len);
        if (r <= 0) { fprintf(stderr, "closed before the response head\n"); exit(1); }
        len += (size_t)r;
        buf[len] = 0;
        if ((e = strstr(buf, "\r\n\r\n"))) break;
        if (len >= 65536) { fprintf(stderr, "response head too large\n"); exit(1); }
    }
    if (strncmp(buf, "HTTP/1.1 200", 12) && strncmp(buf, "HTTP/1.0 200", 12)) {
        fprintf(stderr, "bad status: %.*s\n", (int)(strchr(buf, '\r') - buf), buf);
        exit(1);
    }
    size_t head = (size_t)(e + 4 - buf);
    *e = 0;
    char *cl = strcasestr(buf, "\r\ncontent-length:");
    *clen = cl ? atoll(cl + 17) : -1;
    *extra = len - head;
    return head;
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[1], "up") && strcmp(argv[1], "down"))) {
        fprintf(stderr, "usage: %s up|down HOST PORT BYTES\n", argv[0]);
        return 2;
    }
    long long bytes = atoll(argv[4]);
    alarm(120);   /* bounded in time, whatever the proxy does */
    memset(buf, 'x', sizeof buf);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3])) };
    inet_pton(AF_INET, argv[2], &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    double t0 = now_s();
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    char req[256];
    size_t extra;
    long long clen;
    if (!strcmp(argv[1], "up")) {
        int n = snprintf(req, sizeof req, "POST /upload HTTP/1.1\r\nHost: localhost\r\n"
                         "Content-Type: application/octet-stream\r\n"
                         "Content-Length: %lld\r\n\r\n", bytes);
        write_all(fd, req, (size_t)n);
        memset(buf, 'x', sizeof buf);
        for (long long left = bytes; left > 0; ) {
            size_t k = left < BUF ? (size_t)left : BUF;
            write_all(fd, buf, k);
            left -= (long long)k;
        }
        size_t head = read_head(fd, &extra, &clen);
        long long got = atoll(buf + head);
        if (got != bytes) {
            fprintf(stderr, "backend counted %lld bytes, sent %lld\n", got, bytes);
            return 1;
        }
    } else {
        int n = snprintf(req, sizeof req, "GET /big?bytes=%lld HTTP/1.1\r\nHost: localhost\r\n\r\n",
                         bytes);
        write_all(fd, req, (size_t)n);
        read_head(fd, &extra, &clen);
        if (clen != bytes && clen != -1) {
            fprintf(stderr, "Content-Length %lld, asked for %lld\n", clen, bytes);
            return 1;
        }
        long long got = (long long)extra;
        while (got < bytes) {
            ssize_t r = read(fd, buf, BUF);
            if (r <= 0) { fprintf(stderr, "closed after %lld of %lld bytes\n", got, bytes); return 1; }
            got += r;
        }
    }
    double secs = now_s() - t0;
    close(fd);
    printf("bytes=%lld secs=%.3f mbps=%.1f\n", bytes, secs, bytes / secs / 1e6);
    return 0;
}
