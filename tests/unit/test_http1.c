/* Unit tests for src/http1.c: every accept/reject rule, views, split feeding
 * at every byte offset, pipelining, limits, response framing, chunked. */
#include "../../src/http1.c"

#include <stdlib.h>

#include "test.h"

#define S(lit) lit, sizeof(lit) - 1

static const struct tg_http1_limits lim_default = {8192, 32768, 100};

/* ---- Request helpers ---- */

struct req_result {
    ssize_t rc;
    int status;
    const char *reason;
    size_t first_at; /* shortest prefix that gave a final answer */
};

static bool str_same(struct tg_str a, struct tg_str b)
{
    return a.p == b.p && a.n == b.n;
}

static bool req_same(const struct tg_http1_request *a, const struct tg_http1_request *b)
{
    if (a->method_id != b->method_id || !str_same(a->method, b->method) ||
        !str_same(a->target, b->target) || !str_same(a->path, b->path) ||
        !str_same(a->query, b->query) || !str_same(a->authority, b->authority) ||
        a->minor_version != b->minor_version || a->nheaders != b->nheaders ||
        !str_same(a->host, b->host) || a->framing != b->framing ||
        a->content_length != b->content_length || a->keep_alive != b->keep_alive ||
        a->upgrade != b->upgrade || a->upgrade_websocket != b->upgrade_websocket ||
        a->head_len != b->head_len)
        return false;
    for (size_t i = 0; i < a->nheaders; i++)
        if (!str_same(a->headers[i].name, b->headers[i].name) ||
            !str_same(a->headers[i].value, b->headers[i].value))
            return false;
    return true;
}

static struct tg_http1_request one_req, split_req;
static char *last_buf;

static ssize_t parse_req_once(const char *buf, size_t n, const struct tg_http1_limits *lim,
                              struct tg_http1_request *req, int *status, const char **reason)
{
    size_t scanned = 0;
    *status = 0;
    *reason = NULL;
    return tg_http1_parse_request(buf, n, &scanned, lim, req, status, reason);
}

/* Parses `in` in one go, then fed byte by byte, then in two pieces at every
 * offset, then with a req that lost its resume state: all must agree. The
 * one-shot result is left in one_req. */
static struct req_result check_req(const char *in, size_t n, const struct tg_http1_limits *lim,
                                   int line)
{
    struct req_result r = {0, 0, NULL, 0};
    free(last_buf);
    char *buf = malloc(n ? n : 1);
    memcpy(buf, in, n);

    r.rc = parse_req_once(buf, n, lim, &one_req, &r.status, &r.reason);
    if (r.rc == 0)
        r.first_at = n;

    /* Byte by byte, same cursor; after INCOMPLETE every byte is validated. */
    size_t scanned = 0;
    ssize_t rc = 0;
    int status = 0;
    const char *reason = NULL;
    for (size_t k = 0; k <= n; k++) {
        rc = tg_http1_parse_request(buf, k, &scanned, lim, &split_req, &status, &reason);
        if (rc != TG_HTTP1_INCOMPLETE) {
            r.first_at = k;
            break;
        }
        if (scanned != k) {
            fprintf(stderr, "line %d: scanned %zu after prefix %zu\n", line, scanned, k);
            tg_test_failed_checks++;
        }
    }
    if (rc != r.rc || (rc < 0 && status != r.status) ||
        (rc > 0 && !req_same(&one_req, &split_req))) {
        fprintf(stderr, "line %d: byte-by-byte %zd/%d vs one-shot %zd/%d\n", line, rc, status, r.rc,
                r.status);
        tg_test_failed_checks++;
    }

    /* Two pieces at every offset. */
    for (size_t k = 0; k <= n; k++) {
        scanned = 0;
        rc = tg_http1_parse_request(buf, k, &scanned, lim, &split_req, &status, &reason);
        if (rc == TG_HTTP1_INCOMPLETE)
            rc = tg_http1_parse_request(buf, n, &scanned, lim, &split_req, &status, &reason);
        if (rc != r.rc || (rc < 0 && status != r.status) ||
            (rc > 0 && !req_same(&one_req, &split_req))) {
            fprintf(stderr, "line %d: split at %zu: %zd/%d vs %zd/%d\n", line, k, rc, status, r.rc,
                    r.status);
            tg_test_failed_checks++;
            break;
        }
    }

    /* The caller lost the req between calls: the parser starts over. */
    if (n > 1) {
        scanned = 0;
        rc = tg_http1_parse_request(buf, n / 2, &scanned, lim, &split_req, &status, &reason);
        if (rc == TG_HTTP1_INCOMPLETE) {
            memset(&split_req, 0, sizeof(split_req));
            rc = tg_http1_parse_request(buf, n, &scanned, lim, &split_req, &status, &reason);
        }
        if (rc != r.rc || (rc > 0 && !req_same(&one_req, &split_req))) {
            fprintf(stderr, "line %d: lost state: %zd vs %zd\n", line, rc, r.rc);
            tg_test_failed_checks++;
        }
    }

    /* Views stay inside the buffer. */
    if (r.rc > 0) {
        for (size_t i = 0; i < one_req.nheaders; i++) {
            CHECK(one_req.headers[i].name.p >= buf);
            CHECK(one_req.headers[i].value.p + one_req.headers[i].value.n <= buf + r.rc);
        }
    }
    last_buf = buf; /* one_req's views stay valid until the next check */
    return r;
}

#define REQ(in) check_req(S(in), &lim_default, __LINE__)

#define CHECK_VIEW(v, s) CHECK_EQ_MEM((v).p, (v).n, s)

/* ---- Table of accepted requests ---- */

struct req_case {
    const char *in;
    size_t n;
    int status; /* 0: accepted */
    int line;
};

#define OK(in)             \
    {                      \
        S(in), 0, __LINE__ \
    }
#define BAD(in)              \
    {                        \
        S(in), 400, __LINE__ \
    }
#define ST(in, st)          \
    {                       \
        S(in), st, __LINE__ \
    }

static const struct req_case req_cases[] = {
    /* Accepted. */
    OK("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    OK("GET / HTTP/1.0\r\n\r\n"),
    OK("GET /p?q=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"),
    OK("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
    OK("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
    OK("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n"),
    OK("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \t chunked \t\r\n\r\n"),
    OK("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
    OK("GET http://Example.COM/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    OK("GET HTTPS://a.b:443/ HTTP/1.1\r\nHost: a.b:443\r\n\r\n"),
    OK("GET http://a.b HTTP/1.1\r\nHost: a.b\r\n\r\n"),
    OK("GET http://a.b?x HTTP/1.0\r\n\r\n"),
    OK("CONNECT a.b:443 HTTP/1.1\r\nHost: a.b:443\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: [2001:db8::ffff:1.2.3.4]\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: my_host.example.\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nX: \x80\xff\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nX: a\tb c\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nX-Empty: \t \r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n"),
    OK("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    OK("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
    OK("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
       "Upgrade: websocket\r\n\r\n"),
    OK("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
       "Content-Length: 1\r\n\r\n"),
    OK("PROPFIND /dav HTTP/1.1\r\nHost: a\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nX-!#$%&'*+-.^_`|~09az: v\r\n\r\n"),
    OK("GET /a|b{c}^`\"<>\\[]@:;=,!$&'()*+~ HTTP/1.1\r\nHost: a\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nConnection:\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nhOsT: A\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a:0\r\n\r\n"),
    OK("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
       "5\r\nhello\r\n0\r\n\r\n"),

    /* Line endings and control bytes. */
    BAD("GET / HTTP/1.1\n\n"),
    BAD("GET / HTTP/1.1\nHost: a\n\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\n\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n"),
    BAD("GET / HTTP/1.1\rHost: a\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: \x0b\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[31m\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX\0: a\r\n\r\n"),
    /* obs-fold and whitespace. */
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX(y): a\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX@y: a\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\n\xc3\xa9: a\r\n\r\n"),
    /* Request line. */
    BAD("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET /  HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"),
    BAD(" GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET / http/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET / HTTP/1.10\r\nHost: a\r\n\r\n"),
    BAD("GET / HTTP/1\r\nHost: a\r\n\r\n"),
    BAD("GET / HTTP/1.1.1\r\nHost: a\r\n\r\n"),
    BAD("GET / HTTPS/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET / HTTP/a.1\r\nHost: a\r\n\r\n"),
    ST("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ST("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    ST("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
    ST("GET / HTTP/3.1\r\n", 505),
    BAD("GET /\r\n\r\n"),
    BAD("GET\r\n\r\n"),
    BAD("GE(T / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("G\x80T / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET /\t HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET foo HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("OPTIONS */x HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET http:/a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET http://u:p@a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n"),
    BAD("GET http://a/ HTTP/1.1\r\nHost: a:80\r\n\r\n"),
    BAD("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET http:// HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("GET http://a:x/ HTTP/1.1\r\nHost: a:x\r\n\r\n"),
    BAD("CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n"),
    BAD("CONNECT a.b HTTP/1.1\r\nHost: a.b\r\n\r\n"),
    BAD("CONNECT http://a.b:443/ HTTP/1.1\r\nHost: a.b\r\n\r\n"),
    /* Host. */
    BAD("GET / HTTP/1.1\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
    BAD("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost:\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a:\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: [zz::1]\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: [1:2:3:4:5:6:7:8:9]\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: ::1\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: %61\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a,b\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a;b=c\r\n\r\n"),
    BAD("GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n"),
    /* Content-Length. */
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00000000000000000005\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xd9\xa5\r\n\r\n"),
    /* Transfer-Encoding. */
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0b"
        "chunked\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunk ed\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        "Content-Length: 5\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"),
    BAD("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"),
    /* '_' spellings of the framing fields: CGI-style backends fold them. */
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n"
        "Content-Length: 5\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n"),
    BAD("POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5\r\nCONTENT_length: 6\r\n\r\n"),
    OK("POST / HTTP/1.1\r\nHost: a\r\nX_Content_Length: 5\r\nContent_Lengthy: 1\r\n\r\n"),
};

TEST(request_table)
{
    for (size_t i = 0; i < TG_ARRAY_LEN(req_cases); i++) {
        const struct req_case *c = &req_cases[i];
        struct req_result r = check_req(c->in, c->n, &lim_default, c->line);
        bool ok = c->status == 0 ? r.rc > 0 && (size_t)r.rc <= c->n
                                 : r.rc == TG_HTTP1_ERROR && r.status == c->status;
        if (!ok) {
            fprintf(stderr, "line %d: got rc %zd status %d (%s), want %d\n", c->line, r.rc,
                    r.status, r.reason ? r.reason : "-", c->status);
            tg_test_failed_checks++;
        }
        if (r.rc == TG_HTTP1_ERROR && (r.reason == NULL || r.reason[0] == 0)) {
            fprintf(stderr, "line %d: error without reason\n", c->line);
            tg_test_failed_checks++;
        }
    }
}

/* The eight-bytes-at-a-time paths: a forbidden byte at every position of
 * a long value or target, and allowed odd bytes (HTAB, obs-text) too. */
TEST(request_word_scan_positions)
{
    static const unsigned char bad_value[] = {0, 1, '\n', 0x0b, 0x1f, 0x7f};
    static const unsigned char ok_value[] = {'\t', 0x80, 0xff, ' ', '~', '!'};
    static const unsigned char bad_target[] = {0, '\t', 0x1f, 0x7f, 0x80, 0xff, '#'};
    char buf[128];
    for (size_t pos = 0; pos < 24; pos++) {
        for (size_t k = 0; k < sizeof(bad_value) + sizeof(ok_value); k++) {
            bool bad = k < sizeof(bad_value);
            unsigned char ch = bad ? bad_value[k] : ok_value[k - sizeof(bad_value)];
            size_t n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: a\r\nX: v");
            size_t v0 = n;
            memset(buf + n, 'v', 24);
            buf[v0 + pos] = (char)ch;
            n += 24;
            n += (size_t)sprintf(buf + n, "v\r\n\r\n");
            struct req_result r = check_req(buf, n, &lim_default, __LINE__);
            if (bad ? r.status != 400 || r.first_at != v0 + pos + 1 : r.rc <= 0) {
                fprintf(stderr, "value byte %#x at %zu: rc %zd at %zu\n", ch, pos, r.rc,
                        r.first_at);
                tg_test_failed_checks++;
            }
        }
        for (size_t k = 0; k < sizeof(bad_target); k++) {
            size_t n = (size_t)sprintf(buf, "GET /");
            size_t t0 = n;
            memset(buf + n, 'p', 24);
            buf[t0 + pos] = (char)bad_target[k];
            n += 24;
            n += (size_t)sprintf(buf + n, " HTTP/1.1\r\nHost: a\r\n\r\n");
            struct req_result r = check_req(buf, n, &lim_default, __LINE__);
            if (r.status != 400 || r.first_at != t0 + pos + 1) {
                fprintf(stderr, "target byte %#x at %zu: rc %zd at %zu\n", bad_target[k], pos, r.rc,
                        r.first_at);
                tg_test_failed_checks++;
            }
        }
    }
}

TEST(request_views)
{
    struct req_result r = REQ("GET /p/a?q=1&r=?2 HTTP/1.1\r\nHost:  Example.com:8080 \r\n"
                              "X-A: \t one two \t\r\nX-B:\r\n\r\nBODY");
    CHECK(r.rc > 0);
    CHECK_EQ_INT(r.rc, strlen("GET /p/a?q=1&r=?2 HTTP/1.1\r\nHost:  Example.com:8080 \r\n"
                              "X-A: \t one two \t\r\nX-B:\r\n\r\n"));
    CHECK_EQ_INT(one_req.head_len, r.rc);
    CHECK_EQ_INT(one_req.method_id, TG_HTTP_GET);
    CHECK_VIEW(one_req.method, "GET");
    CHECK_VIEW(one_req.target, "/p/a?q=1&r=?2");
    CHECK_VIEW(one_req.path, "/p/a");
    CHECK_VIEW(one_req.query, "q=1&r=?2");
    CHECK(one_req.authority.p == NULL);
    CHECK_EQ_INT(one_req.minor_version, 1);
    CHECK_EQ_INT(one_req.nheaders, 3);
    CHECK_VIEW(one_req.headers[0].name, "Host");
    CHECK_VIEW(one_req.headers[0].value, "Example.com:8080");
    CHECK_VIEW(one_req.headers[1].name, "X-A");
    CHECK_VIEW(one_req.headers[1].value, "one two");
    CHECK_VIEW(one_req.headers[2].name, "X-B");
    CHECK_VIEW(one_req.headers[2].value, "");
    CHECK_VIEW(one_req.host, "Example.com:8080");
    CHECK_EQ_INT(one_req.framing, TG_HTTP1_BODY_NONE);
    CHECK(one_req.keep_alive);
    CHECK(!one_req.upgrade);

    r = REQ("GET /? HTTP/1.0\r\n\r\n");
    CHECK(r.rc > 0);
    CHECK_VIEW(one_req.path, "/");
    CHECK(one_req.query.p != NULL && one_req.query.n == 0);
    CHECK(one_req.host.p == NULL);
    CHECK(!one_req.keep_alive);
    CHECK_EQ_INT(one_req.minor_version, 0);

    r = REQ("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK(one_req.query.p == NULL);
    CHECK_VIEW(one_req.path, "/x");
}

TEST(request_target_forms)
{
    REQ("GET http://Example.COM/x/y?z=1 HTTP/1.1\r\nHost: example.com\r\n\r\n");
    CHECK_VIEW(one_req.authority, "Example.COM");
    CHECK_VIEW(one_req.host, "Example.COM");
    CHECK_VIEW(one_req.path, "/x/y");
    CHECK_VIEW(one_req.query, "z=1");
    CHECK_VIEW(one_req.target, "http://Example.COM/x/y?z=1");

    REQ("GET https://[::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n");
    CHECK_VIEW(one_req.authority, "[::1]:8443");
    CHECK_VIEW(one_req.path, "/");
    CHECK(one_req.query.p == NULL);

    REQ("GET http://a?q HTTP/1.0\r\n\r\n");
    CHECK_VIEW(one_req.authority, "a");
    CHECK_VIEW(one_req.host, "a");
    CHECK_VIEW(one_req.path, "/");
    CHECK_VIEW(one_req.query, "q");

    REQ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK_EQ_INT(one_req.method_id, TG_HTTP_OPTIONS);
    CHECK_VIEW(one_req.path, "*");
    CHECK(one_req.query.p == NULL);

    struct req_result r = REQ("CONNECT a.b:443 HTTP/1.1\r\nHost: a.b:443\r\n\r\n");
    CHECK(r.rc > 0);
    CHECK_EQ_INT(one_req.method_id, TG_HTTP_CONNECT);
    CHECK_VIEW(one_req.path, "a.b:443");
    CHECK(one_req.authority.p == NULL);
}

TEST(request_framing_and_flags)
{
    REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n");
    CHECK_EQ_INT(one_req.framing, TG_HTTP1_BODY_LENGTH);
    CHECK_EQ_INT(one_req.content_length, 42);
    REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n");
    CHECK_EQ_INT(one_req.framing, TG_HTTP1_BODY_LENGTH);
    CHECK(one_req.content_length == (uint64_t)INT64_MAX);
    REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    CHECK_EQ_INT(one_req.framing, TG_HTTP1_BODY_NONE);
    REQ("POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: Chunked\r\n\r\n");
    CHECK_EQ_INT(one_req.framing, TG_HTTP1_BODY_CHUNKED);
    REQ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    CHECK_EQ_INT(one_req.framing, TG_HTTP1_BODY_LENGTH);
    CHECK_EQ_INT(one_req.content_length, 3);

    REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n");
    CHECK(!one_req.keep_alive);
    REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo\r\nConnection: CLOSE\r\n\r\n");
    CHECK(!one_req.keep_alive);
    REQ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    CHECK(one_req.keep_alive);
    REQ("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n");
    CHECK(!one_req.keep_alive);
    REQ("GET / HTTP/1.0\r\n\r\n");
    CHECK(!one_req.keep_alive);

    REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n");
    CHECK(one_req.upgrade);
    CHECK(one_req.upgrade_websocket);
    CHECK(one_req.keep_alive);
    REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n");
    CHECK(one_req.upgrade);
    CHECK(!one_req.upgrade_websocket);
    REQ("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    CHECK(!one_req.upgrade);
    CHECK(!one_req.upgrade_websocket);
    REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n");
    CHECK(!one_req.upgrade);
    REQ("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    CHECK(!one_req.upgrade);
    CHECK(!one_req.upgrade_websocket);
}

TEST(request_early_errors)
{
    /* A bare LF is an error the moment it arrives, not after the head. */
    struct req_result r = REQ("GET / HTTP/1.1\n\n");
    CHECK_EQ_INT(r.status, 400);
    CHECK_EQ_INT(r.first_at, 15);
    CHECK_EQ_STR(r.reason, "bare LF");
    r = REQ("GET / HTTP/1.1\r\nHost: a\nrest-of-a-long-head");
    CHECK_EQ_INT(r.first_at, 24);
    r = REQ("GET / HTTP/1.1\r\nHost: a\rX");
    CHECK_EQ_INT(r.first_at, 25);
    CHECK_EQ_STR(r.reason, "bare CR");
    r = REQ("GET / HTTP/1.1\r\nX: a\r\n b");
    CHECK_EQ_INT(r.first_at, 23);
    r = REQ("GET / HTTP/1.1\r\nX : a");
    CHECK_EQ_INT(r.first_at, 18);
    CHECK_EQ_STR(r.reason, "whitespace before colon");
    r = REQ("GET /\0");
    CHECK_EQ_INT(r.first_at, 6);
    r = REQ("GET / HTTP/2.0\r");
    CHECK_EQ_INT(r.status, 505);
    CHECK_EQ_INT(r.first_at, 15);
    r = REQ("GET / HTTP/1.1\r\nHost: a\r\nX: \x01");
    CHECK_EQ_INT(r.first_at, 29);
}

TEST(request_limits)
{
    struct tg_http1_limits lim = {32, 128, 4};
    struct req_result r;
    char buf[512];

    /* Request line of exactly the limit (CRLF included) is fine. */
    static const char line32[] = "GET /aaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char line33[] = "GET /aaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n";
    CHECK(strchr(line32, '\n') - line32 + 1 == 32);
    r = check_req(S(line32), &lim, __LINE__);
    CHECK(r.rc > 0);
    r = check_req(S(line33), &lim, __LINE__);
    CHECK_EQ_INT(r.status, 414);
    CHECK_EQ_INT(r.first_at, 32);
    /* Exceeded before any CRLF: 414 as soon as the 33rd byte is there. */
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "GET /", 5);
    r = check_req(buf, 200, &lim, __LINE__);
    CHECK_EQ_INT(r.status, 414);
    CHECK_EQ_INT(r.first_at, 32);
    r = check_req(buf, 31, &lim, __LINE__);
    CHECK_EQ_INT(r.rc, 0);

    /* Head over max_head: 431 once 128 bytes are in without the end. */
    size_t n = 0;
    n += (size_t)sprintf(buf + n, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    while (n < 300)
        buf[n++] = 'v';
    r = check_req(buf, n, &lim, __LINE__);
    CHECK_EQ_INT(r.status, 431);
    CHECK_EQ_INT(r.first_at, 128);
    CHECK_EQ_STR(r.reason, "head too large");
    /* A head of exactly max_head bytes is fine. */
    n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    while (n < 128 - 4)
        buf[n++] = 'v';
    memcpy(buf + n, "\r\n\r\n", 4);
    n += 4;
    r = check_req(buf, n, &lim, __LINE__);
    CHECK_EQ_INT(r.rc, 128);

    /* Header count: the fifth field line is refused at its first byte. */
    r = check_req(S("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), &lim, __LINE__);
    CHECK(r.rc > 0);
    r = check_req(S("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"), &lim,
                  __LINE__);
    CHECK_EQ_INT(r.status, 431);
    CHECK_EQ_INT(r.first_at, strlen("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD"));
    CHECK_EQ_STR(r.reason, "too many header fields");

    /* max_head below max_request_line: a long request line is 431. */
    struct tg_http1_limits small_head = {1000, 20, 4};
    r = check_req(S("GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n"), &small_head, __LINE__);
    CHECK_EQ_INT(r.status, 431);
    CHECK_EQ_INT(r.first_at, 20);

    /* NULL limits: defaults; max_headers is clamped to the array size. */
    int status;
    const char *reason;
    static struct tg_http1_request req;
    CHECK(parse_req_once(S("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), NULL, &req, &status, &reason) > 0);
    struct tg_http1_limits huge = {8192, 1 << 20, 100000};
    static char many[TG_HTTP1_MAX_HEADERS * 6 + 64];
    n = (size_t)sprintf(many, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < TG_HTTP1_MAX_HEADERS; i++)
        n += (size_t)sprintf(many + n, "a: b\r\n");
    n += (size_t)sprintf(many + n, "\r\n");
    CHECK_EQ_INT(parse_req_once(many, n, &huge, &req, &status, &reason), TG_HTTP1_ERROR);
    CHECK_EQ_INT(status, 431);
}

TEST(request_pipelined)
{
    const char in[] = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                      "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
                      "GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t n = sizeof(in) - 1, off = 0;
    const char *paths[] = {"/a", "/b", "/c"};
    static struct tg_http1_request req;
    for (int i = 0; i < 3; i++) {
        size_t scanned = 0;
        int status;
        const char *reason;
        ssize_t rc =
            tg_http1_parse_request(in + off, n - off, &scanned, NULL, &req, &status, &reason);
        CHECK(rc > 0);
        if (rc <= 0)
            return;
        CHECK_VIEW(req.path, paths[i]);
        CHECK_EQ_INT(req.head_len, rc);
        off += (size_t)rc + (size_t)req.content_length;
    }
    CHECK_EQ_INT(off, n);
    /* Every split of the whole pipeline gives the first head. */
    struct req_result r = check_req(in, n, &lim_default, __LINE__);
    CHECK_EQ_INT(r.rc, strlen("GET /a HTTP/1.1\r\nHost: a\r\n\r\n"));
}

/* The `scanned` cursor is the whole point of resuming: feeding a large head
 * one byte at a time must never revisit old bytes. */
TEST(request_resume_is_linear)
{
    static char buf[40000];
    static struct tg_http1_request req;
    struct tg_http1_limits lim = {8192, sizeof(buf), 10};
    size_t n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    while (n < sizeof(buf) - 4)
        buf[n++] = 'x';
    memcpy(buf + n, "\r\n\r\n", 4);
    n += 4;
    size_t scanned = 0;
    int status;
    const char *reason;
    ssize_t rc = 0;
    for (size_t k = 1; k <= n; k++) {
        size_t before = scanned;
        rc = tg_http1_parse_request(buf, k, &scanned, &lim, &req, &status, &reason);
        if (rc != 0)
            break;
        CHECK(scanned == before + 1);
    }
    CHECK_EQ_INT(rc, n);
    CHECK_EQ_INT(req.headers[1].value.n, n - 4 - strlen("GET / HTTP/1.1\r\nHost: a\r\nX: "));
}

TEST(authority_validation)
{
    /* inet_pton-like cases for the IPv6 validator. */
    struct {
        const char *s;
        bool ok;
    } v6[] = {
        {"::", true},
        {"::1", true},
        {"1::", true},
        {"1:2:3:4:5:6:7:8", true},
        {"1:2:3:4:5:6:7::", true},
        {"::ffff:1.2.3.4", true},
        {"1:2:3:4:5:6:1.2.3.4", true},
        {"1:2:3:4:5:6:7:1.2.3.4", false},
        {"1:2:3:4:5:6:7:8:9", false},
        {":1", false},
        {"1:", false},
        {"1::2::3", false},
        {"12345::", false},
        {"::1.2.3", false},
        {"::1.2.3.256", false},
        {"::01.2.3.4", false},
        {"g::", false},
        {"", false},
        {":", false},
        {":::", false},
        {"1:::2", false},
        {"1:2:3:4:5:6:7:8::", false},
        {"::1:2:3:4:5:6:7", true},
        {"::1:2:3:4:5:6:7:8", false},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(v6); i++) {
        bool got = valid_ipv6((const unsigned char *)v6[i].s, strlen(v6[i].s));
        if (got != v6[i].ok) {
            fprintf(stderr, "ipv6 %s: got %d\n", v6[i].s, got);
            tg_test_failed_checks++;
        }
    }
    CHECK(valid_authority(S("a.b:65535"), false));
    CHECK(!valid_authority(S("a.b:65536"), false));
    CHECK(valid_authority(S("[::1]:1"), true));
    CHECK(!valid_authority(S("[::1]"), true));
    CHECK(!valid_authority(S(":80"), false));
    CHECK(!valid_authority(S("[]"), false));
}

/* ---- Responses ---- */

static struct tg_http1_response one_resp, split_resp;

static bool resp_same(const struct tg_http1_response *a, const struct tg_http1_response *b)
{
    if (a->status != b->status || !str_same(a->reason, b->reason) ||
        a->minor_version != b->minor_version || a->nheaders != b->nheaders ||
        a->framing != b->framing || a->content_length != b->content_length ||
        a->keep_alive != b->keep_alive || a->upgrade_websocket != b->upgrade_websocket ||
        a->head_len != b->head_len)
        return false;
    for (size_t i = 0; i < a->nheaders; i++)
        if (!str_same(a->headers[i].name, b->headers[i].name) ||
            !str_same(a->headers[i].value, b->headers[i].value))
            return false;
    return true;
}

/* One-shot, byte by byte and two-piece parses must agree; the one-shot
 * result stays in one_resp (views into `in`). */
static ssize_t check_resp(const char *in, size_t n, enum tg_http_method m, int line)
{
    size_t scanned = 0;
    const char *reason = NULL;
    ssize_t rc1 = tg_http1_parse_response(in, n, &scanned, &lim_default, m, &one_resp, &reason);
    if (rc1 == TG_HTTP1_ERROR && reason == NULL) {
        fprintf(stderr, "line %d: error without reason\n", line);
        tg_test_failed_checks++;
    }
    ssize_t rc = 0;
    scanned = 0;
    for (size_t k = 0; k <= n; k++) {
        rc = tg_http1_parse_response(in, k, &scanned, &lim_default, m, &split_resp, &reason);
        if (rc != 0)
            break;
    }
    if (rc != rc1 || (rc > 0 && !resp_same(&one_resp, &split_resp))) {
        fprintf(stderr, "line %d: byte-by-byte %zd vs %zd\n", line, rc, rc1);
        tg_test_failed_checks++;
    }
    for (size_t k = 0; k <= n; k++) {
        scanned = 0;
        rc = tg_http1_parse_response(in, k, &scanned, &lim_default, m, &split_resp, &reason);
        if (rc == 0)
            rc = tg_http1_parse_response(in, n, &scanned, &lim_default, m, &split_resp, &reason);
        if (rc != rc1 || (rc > 0 && !resp_same(&one_resp, &split_resp))) {
            fprintf(stderr, "line %d: split at %zu: %zd vs %zd\n", line, k, rc, rc1);
            tg_test_failed_checks++;
            break;
        }
    }
    return rc1;
}

struct resp_case {
    const char *in;
    size_t n;
    enum tg_http_method method;
    int framing; /* -1: error */
    uint64_t cl;
    bool keep_alive;
    int line;
};

#define RESP(in, m, fr, cl, ka)        \
    {                                  \
        S(in), m, fr, cl, ka, __LINE__ \
    }
#define RBAD(in, m)                      \
    {                                    \
        S(in), m, -1, 0, false, __LINE__ \
    }
#define NONE TG_HTTP1_BODY_NONE
#define LEN TG_HTTP1_BODY_LENGTH
#define CHUNKED TG_HTTP1_BODY_CHUNKED
#define CLOSE TG_HTTP1_BODY_CLOSE
#define GET TG_HTTP_GET
#define HEAD TG_HTTP_HEAD

static const struct resp_case resp_cases[] = {
    RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", GET, LEN, 5, true),
    RESP("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", GET, NONE, 0, true),
    RESP("HTTP/1.1 200 OK\r\n\r\n", GET, CLOSE, 0, false),
    RESP("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n", GET, CLOSE, 0, false),
    RESP("HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n", GET, LEN, 1, true),
    RESP("HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\n", GET, LEN, 1, true),
    RESP("HTTP/1.1 404 Not  Found\t!\r\nContent-Length: 1\r\n\r\n", GET, LEN, 1, true),
    RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", GET, CHUNKED, 0, true),
    RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", GET, CHUNKED, 0, true),
    RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", GET,
         CHUNKED, 0, true),
    RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", GET, LEN, 5, false),
    RESP("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", GET, LEN, 5, false),
    RESP("HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n", GET, LEN, 5,
         true),
    RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", HEAD, NONE, 0, true),
    RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", HEAD, NONE, 0, true),
    RESP("HTTP/1.1 200 OK\r\n\r\n", HEAD, NONE, 0, true),
    RESP("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", GET, NONE, 0, true),
    RESP("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", GET, NONE, 0, true),
    RESP("HTTP/1.1 304 Not Modified\r\n\r\n", GET, NONE, 0, true),
    RESP("HTTP/1.1 100 Continue\r\n\r\n", TG_HTTP_POST, NONE, 0, true),
    RESP("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", GET, NONE, 0, true),
    RESP("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
         "Upgrade: websocket\r\n\r\n",
         GET, NONE, 0, true),
    RESP("HTTP/1.1 407 Proxy Auth\r\nContent-Length: 0\r\n\r\n", TG_HTTP_CONNECT, NONE, 0, true),
    RESP("HTTP/1.1 999 Whatever\r\nContent-Length: 1\r\n\r\n", GET, LEN, 1, true),
    RESP("HTTP/1.1 200 OK\r\nX: \x80\r\nContent-Length: 1\r\n\r\n", GET, LEN, 1, true),

    RBAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
         GET),
    RBAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", GET),
    RBAD("HTTP/1.1 304 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", GET),
    RBAD("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 Connection established\r\n\r\n", TG_HTTP_CONNECT),
    RBAD("HTTP/2.0 200 OK\r\n\r\n", GET),
    RBAD("HTTP/1.2 200 OK\r\n\r\n", GET),
    RBAD("HTTP/1.1 20 OK\r\n\r\n", GET),
    RBAD("HTTP/1.1 099 OK\r\n\r\n", GET),
    RBAD("HTTP/1.1 2000 OK\r\n\r\n", GET),
    RBAD("HTTP/1.1  200 OK\r\n\r\n", GET),
    RBAD("http/1.1 200 OK\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\n\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nX: a\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 O\0K\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\nX : a\r\n\r\n", GET),
    RBAD("HTTP/1.1 200 OK\r\n\r\r\n", GET),
    RBAD("HTTP/1.1 200 OK\rX", GET),
};

TEST(response_table)
{
    for (size_t i = 0; i < TG_ARRAY_LEN(resp_cases); i++) {
        const struct resp_case *c = &resp_cases[i];
        ssize_t rc = check_resp(c->in, c->n, c->method, c->line);
        bool ok;
        if (c->framing < 0)
            ok = rc == TG_HTTP1_ERROR;
        else
            ok = rc > 0 && (int)one_resp.framing == c->framing &&
                 one_resp.content_length == c->cl && one_resp.keep_alive == c->keep_alive;
        if (!ok) {
            fprintf(stderr, "line %d: rc %zd framing %d cl %llu ka %d\n", c->line, rc,
                    (int)one_resp.framing, (unsigned long long)one_resp.content_length,
                    one_resp.keep_alive);
            tg_test_failed_checks++;
        }
    }
}

TEST(response_views)
{
    const char in[] = "HTTP/1.1 404 Not Found\r\nServer: x\r\nContent-Length: 3\r\n\r\nabc";
    ssize_t rc = check_resp(S(in), GET, __LINE__);
    CHECK_EQ_INT(rc, sizeof(in) - 1 - 3);
    CHECK_EQ_INT(one_resp.head_len, rc);
    CHECK_EQ_INT(one_resp.status, 404);
    CHECK_VIEW(one_resp.reason, "Not Found");
    CHECK_EQ_INT(one_resp.minor_version, 1);
    CHECK_EQ_INT(one_resp.nheaders, 2);
    CHECK_VIEW(one_resp.headers[0].name, "Server");
    CHECK_VIEW(one_resp.headers[1].value, "3");

    rc = check_resp(S("HTTP/1.0 200\r\n\r\n"), GET, __LINE__);
    CHECK(rc > 0);
    CHECK_EQ_INT(one_resp.reason.n, 0);
    CHECK(one_resp.reason.p != NULL);
    CHECK_EQ_INT(one_resp.minor_version, 0);
    CHECK_EQ_INT(one_resp.framing, TG_HTTP1_BODY_CLOSE);

    rc = check_resp(S("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                      "Upgrade: websocket\r\n\r\n"),
                    GET, __LINE__);
    CHECK(rc > 0);
    CHECK(one_resp.upgrade_websocket);
    rc = check_resp(S("HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n"), GET,
                    __LINE__);
    CHECK(!one_resp.upgrade_websocket);

    /* Limits: a huge status line, a huge head. */
    struct tg_http1_limits lim = {32, 64, 2};
    static struct tg_http1_response resp;
    size_t scanned = 0;
    const char *reason;
    CHECK_EQ_INT(tg_http1_parse_response(S("HTTP/1.1 200 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                                         &scanned, &lim, GET, &resp, &reason),
                 TG_HTTP1_ERROR);
    scanned = 0;
    CHECK_EQ_INT(tg_http1_parse_response(S("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC"), &scanned, &lim,
                                         GET, &resp, &reason),
                 TG_HTTP1_ERROR);
    CHECK_EQ_STR(reason, "too many header fields");
}

/* ---- Chunked ---- */

struct chunk_out {
    ssize_t consumed; /* total bytes consumed, or -1 */
    bool done;
    char data[4096];
    size_t ndata;
    int calls_returning_zero;
};

/* Feeds `in` in pieces of `step` bytes (0: all at once), looping each piece
 * until consumed; collects the data bytes. */
static struct chunk_out run_chunked(const char *in, size_t n, size_t step, size_t max_trailer)
{
    struct chunk_out o;
    struct tg_http1_chunked c;
    memset(&o, 0, sizeof(o));
    tg_http1_chunked_init(&c, max_trailer);
    size_t off = 0, avail = step ? 0 : n;
    for (;;) {
        if (step && avail < n)
            avail = avail + step > n ? n : avail + step;
        while (off < avail && !c.done) {
            size_t dl;
            ssize_t r = tg_http1_chunked_next(&c, in + off, avail - off, &dl);
            if (r < 0) {
                o.consumed = -1;
                return o;
            }
            if (r == 0) {
                o.calls_returning_zero++;
                break;
            }
            if (dl) {
                if (dl != (size_t)r || o.ndata + dl > sizeof(o.data)) {
                    o.consumed = -2;
                    return o;
                }
                memcpy(o.data + o.ndata, in + off, dl);
                o.ndata += dl;
            }
            off += (size_t)r;
        }
        if (c.done || avail == n)
            break;
    }
    size_t dl = 1;
    if (c.done && (tg_http1_chunked_next(&c, in + off, n - off, &dl) != 0 || dl != 0))
        o.consumed = -3;
    else
        o.consumed = (ssize_t)off;
    o.done = c.done;
    return o;
}

/* Every piece size gives the same answer as all at once. */
static struct chunk_out check_chunked(const char *in, size_t n, size_t max_trailer, int line)
{
    struct chunk_out all = run_chunked(in, n, 0, max_trailer);
    CHECK(all.calls_returning_zero == 0);
    for (size_t step = 1; step <= n; step++) {
        struct chunk_out o = run_chunked(in, n, step, max_trailer);
        bool same = o.consumed == all.consumed && o.done == all.done && o.ndata == all.ndata &&
                    memcmp(o.data, all.data, o.ndata) == 0;
        /* An error may be found earlier by nobody: the decoder is
         * byte-exact, so it must match exactly. */
        if (!same || o.calls_returning_zero != 0) {
            fprintf(stderr, "line %d: step %zu: consumed %zd/%zd done %d/%d\n", line, step,
                    o.consumed, all.consumed, o.done, all.done);
            tg_test_failed_checks++;
            break;
        }
    }
    /* Two pieces at every offset. */
    for (size_t k = 0; k <= n; k++) {
        struct tg_http1_chunked c;
        tg_http1_chunked_init(&c, max_trailer);
        size_t off = 0, nd = 0;
        ssize_t bad = 0;
        for (int piece = 0; piece < 2 && !bad; piece++) {
            size_t lim = piece == 0 ? k : n;
            while (off < lim && !c.done) {
                size_t dl;
                ssize_t r = tg_http1_chunked_next(&c, in + off, lim - off, &dl);
                if (r <= 0) {
                    bad = r < 0 ? -1 : -4;
                    break;
                }
                nd += dl;
                off += (size_t)r;
            }
        }
        ssize_t consumed = bad ? -1 : (ssize_t)off;
        if (bad == -4 || consumed != all.consumed ||
            (consumed >= 0 && (nd != all.ndata || c.done != all.done))) {
            fprintf(stderr, "line %d: split %zu: consumed %zd vs %zd\n", line, k, consumed,
                    all.consumed);
            tg_test_failed_checks++;
            break;
        }
    }
    return all;
}

#define CHUNKED_CHECK(in, maxt) check_chunked(S(in), maxt, __LINE__)

TEST(chunked_basic)
{
    struct chunk_out o = CHUNKED_CHECK("5\r\nhello\r\n0\r\n\r\n", 1024);
    CHECK(o.done);
    CHECK_EQ_INT(o.consumed, 15);
    CHECK_EQ_MEM(o.data, o.ndata, "hello");

    o = CHUNKED_CHECK("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n", 1024);
    CHECK(o.done);
    CHECK_EQ_INT(o.consumed, strlen("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"));
    CHECK_EQ_MEM(o.data, o.ndata, "hello world");

    o = CHUNKED_CHECK("A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", 1024);
    CHECK(o.done);
    CHECK_EQ_MEM(o.data, o.ndata, "0123456789abcdefghij");

    o = CHUNKED_CHECK("0000000000000003\r\nabc\r\n00\r\n\r\n", 1024);
    CHECK(o.done);
    CHECK_EQ_MEM(o.data, o.ndata, "abc");

    o = CHUNKED_CHECK("0\r\n\r\n", 0);
    CHECK(o.done);
    CHECK_EQ_INT(o.consumed, 5);

    /* Incomplete input: not done, no error. */
    o = CHUNKED_CHECK("5\r\nhel", 1024);
    CHECK(!o.done);
    CHECK_EQ_INT(o.consumed, 6);
    CHECK_EQ_MEM(o.data, o.ndata, "hel");
    o = CHUNKED_CHECK("5\r\nhello\r\n0\r\n", 1024);
    CHECK(!o.done);
    CHECK_EQ_INT(o.consumed, 13);

    /* The contract: data and framing never in one call; 0 only for n == 0. */
    struct tg_http1_chunked c;
    size_t dl = 99;
    tg_http1_chunked_init(&c, 0);
    CHECK_EQ_INT(tg_http1_chunked_next(&c, "", 0, &dl), 0);
    CHECK_EQ_INT(dl, 0);
    CHECK_EQ_INT(tg_http1_chunked_next(&c, "3\r\nabc\r\n0\r\n\r\n", 14, &dl), 3);
    CHECK_EQ_INT(dl, 0);
    CHECK_EQ_INT(tg_http1_chunked_next(&c, "abc\r\n0\r\n\r\n", 11, &dl), 3);
    CHECK_EQ_INT(dl, 3);
    CHECK_EQ_INT(tg_http1_chunked_next(&c, "\r\n0\r\n\r\nX", 8, &dl), 7);
    CHECK_EQ_INT(dl, 0);
    CHECK(c.done);
    CHECK_EQ_INT(tg_http1_chunked_next(&c, "X", 1, &dl), 0);
}

TEST(chunked_extensions)
{
    struct chunk_out o;
    o = CHUNKED_CHECK("5;a\r\nhello\r\n0;b=c\r\n\r\n", 1024);
    CHECK(o.done);
    o = CHUNKED_CHECK("5;a=b;c;d=\"q \\\"x\\\\ \t\x80\"\r\nhello\r\n0\r\n\r\n", 1024);
    CHECK(o.done);
    CHECK_EQ_MEM(o.data, o.ndata, "hello");
    o = CHUNKED_CHECK("5;a=\"\"\r\nhello\r\n0\r\n\r\n", 1024);
    CHECK(o.done);

    const char *bad[] = {
        "5 \r\nhello\r\n0\r\n\r\n",
        "5 ;a\r\nhello\r\n0\r\n\r\n",
        "5; a\r\nhello\r\n0\r\n\r\n",
        "5;a =b\r\nhello\r\n0\r\n\r\n",
        "5;a= b\r\nhello\r\n0\r\n\r\n",
        "5;\r\nhello\r\n0\r\n\r\n",
        "5;=b\r\nhello\r\n0\r\n\r\n",
        "5;a=\r\nhello\r\n0\r\n\r\n",
        "5;a=b=c\r\nhello\r\n0\r\n\r\n",
        "5;a=\"b\r\nhello\r\n0\r\n\r\n",
        "5;a=\"b\"c\r\nhello\r\n0\r\n\r\n",
        "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n",
        "5;a=\"\\\x01\"\r\nhello\r\n0\r\n\r\n",
        "5;a(b)\r\nhello\r\n0\r\n\r\n",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        o = check_chunked(bad[i], strlen(bad[i]), 1024, __LINE__);
        if (o.consumed != -1) {
            fprintf(stderr, "accepted %s\n", bad[i]);
            tg_test_failed_checks++;
        }
    }

    /* The size line, extensions and CRLF included, is at most 4096 bytes. */
    static char buf[8192];
    size_t n = (size_t)sprintf(buf, "1;a=");
    while (n < 4094)
        buf[n++] = 'x';
    n += (size_t)sprintf(buf + n, "\r\nx\r\n0\r\n\r\n");
    o = run_chunked(buf, n, 0, 0);
    CHECK(o.done);
    n = (size_t)sprintf(buf, "1;a=");
    while (n < 4095)
        buf[n++] = 'x';
    n += (size_t)sprintf(buf + n, "\r\nx\r\n0\r\n\r\n");
    o = run_chunked(buf, n, 0, 0);
    CHECK_EQ_INT(o.consumed, -1);
    o = run_chunked(buf, n, 7, 0);
    CHECK_EQ_INT(o.consumed, -1);
}

TEST(chunked_errors_and_overflow)
{
    struct {
        const char *s;
        size_t n;
    } bad[] = {
        {S("\r\n\r\n")},
        {S("g\r\n")},
        {S("-5\r\nhello\r\n0\r\n\r\n")},
        {S("+5\r\nhello\r\n0\r\n\r\n")},
        {S("0x5\r\nhello\r\n0\r\n\r\n")},
        {S(" 5\r\nhello\r\n0\r\n\r\n")},
        {S("5\nhello\r\n0\r\n\r\n")},
        {S("5\rhello\r\n0\r\n\r\n")},
        {S("5\r\nhelloX\r\n0\r\n\r\n")},
        {S("5\r\nhello\n0\r\n\r\n")},
        {S("5\r\nhello\r\r\n0\r\n\r\n")},
        {S("5\r\nhello0\r\n\r\n")},
        {S("0\r\n\n")},
        {S("0\r\n\r\r")},
        {S("00000000000000001\r\n")}, /* 17 digits */
        {S("10000000000000000\r\n")}, /* 2^64 */
        {S("8000000000000000\r\n")},  /* 2^63 */
        {S("ffffffffffffffff\r\n")},
        {S("0\r\nX: a\n\r\n")},
        {S("0\r\nX: a\r\n b\r\n\r\n")}, /* obs-fold in trailer */
        {S("0\r\n X: a\r\n\r\n")},
        {S("0\r\nX : a\r\n\r\n")},
        {S("0\r\nNoColon\r\n\r\n")},
        {S("0\r\nX: a\0\r\n\r\n")},
        {S("0\r\nX: a\x7f\r\n\r\n")},
        {S("5\r\nhello\r\n\r\n")},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++) {
        struct chunk_out o = check_chunked(bad[i].s, bad[i].n, 1024, __LINE__);
        if (o.consumed != -1) {
            fprintf(stderr, "accepted chunked case %zu\n", i);
            tg_test_failed_checks++;
        }
    }
    /* 16 digits up to INT64_MAX are fine (the data just has not come). */
    struct chunk_out o = CHUNKED_CHECK("7fffffffffffffff\r\nab", 0);
    CHECK_EQ_INT(o.consumed, 20);
    CHECK_EQ_INT(o.ndata, 2);
    CHECK(!o.done);
    o = CHUNKED_CHECK("000000000000000F\r\n", 0);
    CHECK_EQ_INT(o.consumed, 18);
}

TEST(chunked_trailers)
{
    struct chunk_out o = CHUNKED_CHECK("3\r\nabc\r\n0\r\nX-Sum: 1\r\nY:\r\n\r\nNEXT", 64);
    CHECK(o.done);
    CHECK_EQ_INT(o.consumed, strlen("3\r\nabc\r\n0\r\nX-Sum: 1\r\nY:\r\n\r\n"));
    CHECK_EQ_MEM(o.data, o.ndata, "abc");
    /* The bound counts field lines (CRLF included), not the final CRLF. */
    o = CHUNKED_CHECK("0\r\nX: 12\r\n\r\n", 7);
    CHECK(o.done);
    o = CHUNKED_CHECK("0\r\nX: 123\r\n\r\n", 7);
    CHECK_EQ_INT(o.consumed, -1);
    o = CHUNKED_CHECK("0\r\nX: 1\r\n\r\n", 0);
    CHECK_EQ_INT(o.consumed, -1);
}

TEST(chunked_large_sizes_stream)
{
    /* Data-only extraction from a body with many chunks of varied sizes. */
    static char in[20000];
    static char want[8000];
    size_t n = 0, nw = 0;
    for (int i = 1; nw + (size_t)i < 3000; i += 37) {
        n += (size_t)sprintf(in + n, "%x\r\n", i);
        for (int j = 0; j < i; j++) {
            char ch = (char)('a' + (nw % 26));
            in[n++] = ch;
            want[nw++] = ch;
        }
        in[n++] = '\r';
        in[n++] = '\n';
    }
    n += (size_t)sprintf(in + n, "0\r\n\r\n");
    for (size_t step = 1; step < 300; step += 13) {
        struct chunk_out o = run_chunked(in, n, step, 0);
        CHECK(o.done);
        CHECK_EQ_INT(o.consumed, n);
        CHECK(o.ndata == nw && memcmp(o.data, want, nw) == 0);
    }
}

/* ---- Helpers ---- */

TEST(helpers)
{
    CHECK_EQ_STR(tg_http_reason(200), "OK");
    CHECK_EQ_STR(tg_http_reason(404), "Not Found");
    CHECK_EQ_STR(tg_http_reason(431), "Request Header Fields Too Large");
    CHECK_EQ_STR(tg_http_reason(505), "HTTP Version Not Supported");
    CHECK_EQ_STR(tg_http_reason(299), "Unknown");
    CHECK_EQ_STR(tg_http_reason(-1), "Unknown");

    CHECK_EQ_INT(tg_http_method_id(TG_STR("GET")), TG_HTTP_GET);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("HEAD")), TG_HTTP_HEAD);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("POST")), TG_HTTP_POST);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("PUT")), TG_HTTP_PUT);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("DELETE")), TG_HTTP_DELETE);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("OPTIONS")), TG_HTTP_OPTIONS);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("PATCH")), TG_HTTP_PATCH);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("CONNECT")), TG_HTTP_CONNECT);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("TRACE")), TG_HTTP_TRACE);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("get")), TG_HTTP_OTHER);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("GETS")), TG_HTTP_OTHER);
    CHECK_EQ_INT(tg_http_method_id(TG_STR("")), TG_HTTP_OTHER);

    CHECK(tg_http_method_idempotent(TG_HTTP_GET));
    CHECK(tg_http_method_idempotent(TG_HTTP_PUT));
    CHECK(tg_http_method_idempotent(TG_HTTP_DELETE));
    CHECK(tg_http_method_idempotent(TG_HTTP_TRACE));
    CHECK(!tg_http_method_idempotent(TG_HTTP_POST));
    CHECK(!tg_http_method_idempotent(TG_HTTP_PATCH));
    CHECK(!tg_http_method_idempotent(TG_HTTP_CONNECT));
    CHECK(!tg_http_method_idempotent(TG_HTTP_OTHER));

    CHECK(tg_http_name_eq(TG_STR("Content-Length"), "content-length"));
    CHECK(tg_http_name_eq(TG_STR("HOST"), "host"));
    CHECK(!tg_http_name_eq(TG_STR("Hos"), "host"));
    CHECK(!tg_http_name_eq(TG_STR("Hosts"), "host"));
    CHECK(tg_http_name_eq(TG_STR(""), ""));

    CHECK(tg_http1_list_has(TG_STR("keep-alive, Upgrade"), "upgrade"));
    CHECK(tg_http1_list_has(TG_STR(" close "), "close"));
    CHECK(tg_http1_list_has(TG_STR(",,\tclose\t,"), "close"));
    CHECK(tg_http1_list_has(TG_STR("a,close"), "close"));
    CHECK(!tg_http1_list_has(TG_STR("closed"), "close"));
    CHECK(!tg_http1_list_has(TG_STR("x-close"), "close"));
    CHECK(!tg_http1_list_has(TG_STR("clo se"), "close"));
    CHECK(!tg_http1_list_has(TG_STR(""), "close"));
    CHECK(!tg_http1_list_has(TG_STR(", ,"), ""));
}

int main(void)
{
    RUN(request_table);
    RUN(request_word_scan_positions);
    RUN(request_views);
    RUN(request_target_forms);
    RUN(request_framing_and_flags);
    RUN(request_early_errors);
    RUN(request_limits);
    RUN(request_pipelined);
    RUN(request_resume_is_linear);
    RUN(authority_validation);
    RUN(response_table);
    RUN(response_views);
    RUN(chunked_basic);
    RUN(chunked_extensions);
    RUN(chunked_errors_and_overflow);
    RUN(chunked_trailers);
    RUN(chunked_large_sizes_stream);
    RUN(helpers);
    return TEST_SUMMARY();
}
