/* The ACME client's HTTP (acme_http.h). */
#include "acme_http.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "http1.h"

/* The largest answer read (a certificate chain is a few KiB). */
#define BODY_MAX (1024 * 1024)
#define HEAD_MAX (64 * 1024)
#define HOST_MAX 256
#define PATH_MAX_LEN 2048

SSL_CTX *tg_acme_http_ctx(const char *ca_bundle, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot make a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = ca_bundle != NULL ? SSL_CTX_load_verify_locations(ctx, ca_bundle, NULL)
                               : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        snprintf(err, errlen, "cannot read the CA bundle '%.80s'",
                 ca_bundle ? ca_bundle : "system");
        SSL_CTX_free(ctx);
        ERR_clear_error();
        return NULL;
    }
    return ctx;
}

void tg_acme_response_free(struct tg_acme_response *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

static long ms_left(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
    return ms > 0 ? ms : 0;
}

/* "https://host:port/path" into its parts. */
static int split_url(const char *url, bool *tls, char *host, char *port, char *path)
{
    const char *p;
    if (strncmp(url, "https://", 8) == 0) {
        *tls = true;
        p = url + 8;
        strcpy(port, "443");
    } else if (strncmp(url, "http://", 7) == 0) {
        *tls = false;
        p = url + 7;
        strcpy(port, "80");
    } else {
        return -1;
    }
    const char *slash = strchr(p, '/');
    size_t hl = slash != NULL ? (size_t)(slash - p) : strlen(p);
    if (hl == 0 || hl >= HOST_MAX)
        return -1;
    memcpy(host, p, hl);
    host[hl] = '\0';
    if (host[0] == '[') { /* [v6]:port */
        char *end = strchr(host, ']');
        if (end == NULL)
            return -1;
        if (end[1] == ':')
            snprintf(port, 8, "%s", end + 2);
        *end = '\0';
        memmove(host, host + 1, strlen(host + 1) + 1);
    } else {
        char *colon = strchr(host, ':');
        if (colon != NULL) {
            snprintf(port, 8, "%s", colon + 1);
            *colon = '\0';
        }
    }
    snprintf(path, PATH_MAX_LEN, "%s", slash != NULL ? slash : "/");
    return 0;
}

static int connect_deadline(const char *host, const char *port, const struct timespec *deadline,
                            char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %.80s: %.80s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = ai; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) < 0 && errno == EINPROGRESS) {
            struct pollfd pf = {fd, POLLOUT, 0};
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (poll(&pf, 1, (int)ms_left(deadline)) != 1 ||
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr != 0) {
                snprintf(err, errlen, "cannot connect to %.80s:%.80s: %.80s", host, port,
                         soerr ? strerror(soerr) : "timed out");
                close(fd);
                fd = -1;
            }
        } else if (errno != 0 && errno != EINPROGRESS) {
            snprintf(err, errlen, "cannot connect to %.80s:%.80s: %.80s", host, port,
                     strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return -1;
    /* Blocking from here, each call bounded by the time left. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

static void set_timeouts(int fd, const struct timespec *deadline)
{
    long ms = ms_left(deadline);
    if (ms == 0)
        ms = 1;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

struct conn {
    int fd;
    SSL *ssl;
};

static int io_write(struct conn *c, const char *p, size_t n, const struct timespec *deadline)
{
    while (n > 0) {
        set_timeouts(c->fd, deadline);
        ssize_t w = c->ssl != NULL ? SSL_write(c->ssl, p, (int)n) : write(c->fd, p, n);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static ssize_t io_read(struct conn *c, char *p, size_t n, const struct timespec *deadline)
{
    if (ms_left(deadline) == 0)
        return -1;
    set_timeouts(c->fd, deadline);
    if (c->ssl == NULL)
        return read(c->fd, p, n);
    int r = SSL_read(c->ssl, p, (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
}

/* Copies a header's value into out (cap bytes). */
static void header_value(const struct tg_http1_response *resp, const char *name, char *out,
                         size_t cap)
{
    out[0] = '\0';
    for (size_t i = 0; i < resp->nheaders; i++) {
        if (tg_str_caseeq(resp->headers[i].name, name)) {
            size_t n = resp->headers[i].value.n < cap - 1 ? resp->headers[i].value.n : cap - 1;
            memcpy(out, resp->headers[i].value.p, n);
            out[n] = '\0';
            return;
        }
    }
}

int tg_acme_http(SSL_CTX *ctx, const char *method, const char *url, const char *type,
                 const char *body, size_t len, long timeout_ms, struct tg_acme_response *r)
{
    memset(r, 0, sizeof(*r));
    r->retry_after = -1;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    bool tls;
    char host[HOST_MAX], port[8], path[PATH_MAX_LEN];
    if (split_url(url, &tls, host, port, path) < 0) {
        snprintf(r->error, sizeof(r->error), "not an http(s) URL: %.100s", url);
        return -1;
    }
    struct conn c = {-1, NULL};
    char *buf = NULL;
    struct tg_http1_response *resp = NULL;
    int rc = -1;
    c.fd = connect_deadline(host, port, &deadline, r->error, sizeof(r->error));
    if (c.fd < 0)
        return -1;
    if (tls) {
        c.ssl = SSL_new(ctx);
        if (c.ssl == NULL || SSL_set_fd(c.ssl, c.fd) != 1 ||
            SSL_set_tlsext_host_name(c.ssl, host) != 1 || SSL_set1_host(c.ssl, host) != 1) {
            snprintf(r->error, sizeof(r->error), "cannot start TLS");
            goto done;
        }
        set_timeouts(c.fd, &deadline);
        if (SSL_connect(c.ssl) != 1) {
            long v = SSL_get_verify_result(c.ssl);
            snprintf(r->error, sizeof(r->error), "TLS with %.80s failed: %.80s", host,
                     v != X509_V_OK ? X509_verify_cert_error_string(v) : "handshake error");
            goto done;
        }
    }
    /* Host names the port when it is not the scheme's (the CA builds its
     * URLs from it). */
    char authority[HOST_MAX + 16];
    bool v6 = strchr(host, ':') != NULL;
    bool default_port = strcmp(port, tls ? "443" : "80") == 0;
    snprintf(authority, sizeof(authority), "%s%s%s%s%s", v6 ? "[" : "", host, v6 ? "]" : "",
             default_port ? "" : ":", default_port ? "" : port);
    char head[PATH_MAX_LEN + HOST_MAX + 256];
    int hn = snprintf(head, sizeof(head),
                      "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tollgate-acme\r\n"
                      "Accept: */*\r\nConnection: close\r\n",
                      method, path, authority);
    if (type != NULL)
        hn += snprintf(head + hn, sizeof(head) - (size_t)hn, "Content-Type: %s\r\n", type);
    if (body != NULL || strcmp(method, "POST") == 0)
        hn += snprintf(head + hn, sizeof(head) - (size_t)hn, "Content-Length: %zu\r\n", len);
    hn += snprintf(head + hn, sizeof(head) - (size_t)hn, "\r\n");
    if (io_write(&c, head, (size_t)hn, &deadline) < 0 ||
        (len > 0 && io_write(&c, body, len, &deadline) < 0)) {
        snprintf(r->error, sizeof(r->error), "cannot send to %.80s", host);
        goto done;
    }
    /* Read until the head parses, then the body by its framing. */
    size_t cap = HEAD_MAX + BODY_MAX, have = 0, scanned = 0;
    buf = malloc(cap + 1);
    resp = calloc(1, sizeof(*resp));
    if (buf == NULL || resp == NULL)
        goto done;
    ssize_t head_len = 0;
    struct tg_http1_limits limits = {8192, HEAD_MAX, TG_HTTP1_MAX_HEADERS};
    const char *why = NULL;
    while (head_len == 0) {
        ssize_t n = io_read(&c, buf + have, cap - have, &deadline);
        if (n <= 0) {
            snprintf(r->error, sizeof(r->error), "%.80s did not answer", host);
            goto done;
        }
        have += (size_t)n;
        enum tg_http_method m = strcmp(method, "HEAD") == 0 ? TG_HTTP_HEAD : TG_HTTP_GET;
        head_len = tg_http1_parse_response(buf, have, &scanned, &limits, m, resp, &why);
        if (head_len < 0) {
            snprintf(r->error, sizeof(r->error), "%.80s sent an invalid answer (%.80s)", host,
                     why ? why : "?");
            goto done;
        }
        if (head_len == 0 && have == cap) {
            snprintf(r->error, sizeof(r->error), "%.80s sent a head too large", host);
            goto done;
        }
    }
    r->status = resp->status;
    header_value(resp, "location", r->location, sizeof(r->location));
    header_value(resp, "replay-nonce", r->nonce, sizeof(r->nonce));
    header_value(resp, "content-type", r->content_type, sizeof(r->content_type));
    char ra[32];
    header_value(resp, "retry-after", ra, sizeof(ra));
    if (ra[0] >= '0' && ra[0] <= '9')
        r->retry_after = strtol(ra, NULL, 10);
    int framing = resp->framing;
    uint64_t want = resp->content_length;
    /* The body: move it to the front, then read the rest. */
    size_t body_have = have - (size_t)head_len;
    memmove(buf, buf + head_len, body_have);
    have = body_have;
    bool eof = false;
    for (;;) {
        bool complete = framing == TG_HTTP1_BODY_NONE ||
                        (framing == TG_HTTP1_BODY_LENGTH && have >= want) ||
                        (framing == TG_HTTP1_BODY_CLOSE && eof);
        if (framing == TG_HTTP1_BODY_CHUNKED) {
            /* De-chunk what is here; done at the last chunk. */
            struct tg_http1_chunked ch;
            tg_http1_chunked_init(&ch, HEAD_MAX);
            size_t in = 0, out = 0;
            char *tmp = malloc(have + 1);
            if (tmp == NULL)
                goto done;
            while (in < have && !ch.done) {
                size_t dlen = 0;
                ssize_t k = tg_http1_chunked_next(&ch, buf + in, have - in, &dlen);
                if (k < 0) {
                    free(tmp);
                    snprintf(r->error, sizeof(r->error), "%.80s sent a bad chunked body", host);
                    goto done;
                }
                if (k == 0)
                    break;
                if (dlen > 0) {
                    memcpy(tmp + out, buf + in, dlen);
                    out += dlen;
                }
                in += (size_t)k;
            }
            if (ch.done) {
                r->body = tmp;
                r->body_len = out;
                r->body[out] = '\0';
                rc = 0;
                goto done;
            }
            free(tmp);
        } else if (complete) {
            size_t n = framing == TG_HTTP1_BODY_LENGTH ? (size_t)want : have;
            if (framing == TG_HTTP1_BODY_NONE)
                n = 0;
            r->body = malloc(n + 1);
            if (r->body == NULL)
                goto done;
            memcpy(r->body, buf, n);
            r->body[n] = '\0';
            r->body_len = n;
            rc = 0;
            goto done;
        }
        if (eof || have == cap) {
            snprintf(r->error, sizeof(r->error), "%.80s cut its answer short", host);
            goto done;
        }
        ssize_t n = io_read(&c, buf + have, cap - have, &deadline);
        if (n < 0) {
            snprintf(r->error, sizeof(r->error), "%.80s did not finish its answer in time", host);
            goto done;
        }
        if (n == 0)
            eof = true;
        have += (size_t)n;
    }
done:
    if (rc < 0 && r->status != 0 && r->error[0] == '\0')
        snprintf(r->error, sizeof(r->error), "%.80s: incomplete answer", host);
    free(resp);
    free(buf);
    if (c.ssl != NULL) {
        SSL_shutdown(c.ssl);
        SSL_free(c.ssl);
    }
    if (c.fd >= 0)
        close(c.fd);
    ERR_clear_error();
    return rc;
}
