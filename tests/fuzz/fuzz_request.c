/* libFuzzer target: the request-head parser.
 *
 * Input: one control byte (bits 0-1 pick the limits, bits 2-7 a split
 * point), then the bytes of the head. Checks: the one-shot parse, the
 * byte-by-byte parse (bytes past `len` poisoned) and a two-piece parse agree
 * exactly; every view lies inside the head; derived fields are coherent. */
#include <stdint.h>

#include "fuzz_http1.h"

static struct tg_http1_request r1, r2;

static const struct tg_http1_limits limit_modes[4] = {
    {8192, 32768, 100},
    {8192, 32768, TG_HTTP1_MAX_HEADERS},
    {64, 256, 8},
    {24, 64, 2},
};

static void check_ok(const struct tg_http1_request *r, const char *buf, size_t size, ssize_t rc,
                     const struct tg_http1_limits *lim)
{
    size_t hl = (size_t)rc;
    FUZZ_ASSERT(r->head_len == hl && hl <= size && hl <= lim->max_head);
    FUZZ_ASSERT(hl >= 4 && memcmp(buf + hl - 4, "\r\n\r\n", 4) == 0);
    FUZZ_ASSERT(fuzz_inside(r->method, buf, hl) && r->method.p == buf && r->method.n > 0);
    FUZZ_ASSERT(fuzz_inside(r->target, buf, hl) && r->target.n > 0);
    FUZZ_ASSERT(r->target.p == buf + r->method.n + 1);
    /* request line, CRLF included, within its limit */
    FUZZ_ASSERT(r->method.n + 1 + r->target.n + 1 + 8 + 2 <= lim->max_request_line);
    FUZZ_ASSERT(r->path.n > 0);
    if (!fuzz_inside(r->path, buf, hl))
        FUZZ_ASSERT(r->path.n == 1 && r->path.p[0] == '/' && r->authority.p != NULL);
    FUZZ_ASSERT(fuzz_inside(r->query, buf, hl));
    FUZZ_ASSERT(fuzz_inside(r->authority, buf, hl));
    FUZZ_ASSERT(fuzz_inside(r->host, buf, hl));
    FUZZ_ASSERT(r->minor_version == 0 || r->minor_version == 1);
    if (r->minor_version == 1)
        FUZZ_ASSERT(r->host.p != NULL && r->host.n > 0);
    FUZZ_ASSERT(r->nheaders <= lim->max_headers && r->nheaders <= TG_HTTP1_MAX_HEADERS);
    fuzz_check_fields(r->headers, r->nheaders, buf, hl);
    switch (r->framing) {
    case TG_HTTP1_BODY_NONE:
    case TG_HTTP1_BODY_CHUNKED:
        FUZZ_ASSERT(r->content_length == 0);
        break;
    case TG_HTTP1_BODY_LENGTH:
        FUZZ_ASSERT(r->content_length > 0 && r->content_length <= INT64_MAX);
        break;
    default:
        FUZZ_ASSERT(0);
    }
    if (r->framing == TG_HTTP1_BODY_CHUNKED)
        FUZZ_ASSERT(r->minor_version == 1);
    FUZZ_ASSERT(!r->upgrade_websocket || r->upgrade);
    FUZZ_ASSERT(!r->upgrade || r->minor_version == 1);
    FUZZ_ASSERT(r->method_id == tg_http_method_id(r->method));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const struct tg_http1_limits *lim = &limit_modes[data[0] & 3];
    size_t split_at = (size_t)(data[0] >> 2) * (size - 1) / 63;
    data++;
    size--;
    char *buf = fuzz_copy(data, size);

    size_t scanned = 0;
    int st1 = 0, st2 = 0;
    const char *why1 = NULL, *why2 = NULL;
    ssize_t rc1 = tg_http1_parse_request(buf, size, &scanned, lim, &r1, &st1, &why1);
    if (rc1 > 0) {
        check_ok(&r1, buf, size, rc1, lim);
        FUZZ_ASSERT(scanned == (size_t)rc1);
    } else if (rc1 == TG_HTTP1_ERROR) {
        FUZZ_ASSERT(why1 != NULL);
        FUZZ_ASSERT(st1 == 400 || st1 == 414 || st1 == 431 || st1 == 505);
    } else {
        FUZZ_ASSERT(rc1 == TG_HTTP1_INCOMPLETE);
        FUZZ_ASSERT(scanned == size && size < lim->max_head);
    }

    /* Byte by byte: the answer comes exactly when its byte arrives. */
    ssize_t rc2 = 0;
    size_t k;
    scanned = 0;
    for (k = 0; k <= size; k++) {
        FUZZ_POISON(buf + k, size - k);
        rc2 = tg_http1_parse_request(buf, k, &scanned, lim, &r2, &st2, &why2);
        FUZZ_UNPOISON(buf, size);
        if (rc2 != TG_HTTP1_INCOMPLETE)
            break;
        FUZZ_ASSERT(scanned == k);
    }
    FUZZ_ASSERT(rc2 == rc1);
    if (rc1 > 0) {
        FUZZ_ASSERT(k == (size_t)rc1);
        FUZZ_ASSERT(fuzz_req_same(&r1, &r2));
    } else if (rc1 < 0) {
        FUZZ_ASSERT(st2 == st1 && strcmp(why1, why2) == 0);
    }

    /* Two pieces. */
    scanned = 0;
    FUZZ_POISON(buf + split_at, size - split_at);
    rc2 = tg_http1_parse_request(buf, split_at, &scanned, lim, &r2, &st2, &why2);
    FUZZ_UNPOISON(buf, size);
    if (rc2 == TG_HTTP1_INCOMPLETE)
        rc2 = tg_http1_parse_request(buf, size, &scanned, lim, &r2, &st2, &why2);
    FUZZ_ASSERT(rc2 == rc1);
    if (rc1 > 0)
        FUZZ_ASSERT(fuzz_req_same(&r1, &r2));
    else if (rc1 < 0)
        FUZZ_ASSERT(st2 == st1);

    /* The caller lost the req between calls: same answer, from scratch. */
    scanned = 0;
    rc2 = tg_http1_parse_request(buf, split_at, &scanned, lim, &r2, &st2, &why2);
    if (rc2 == TG_HTTP1_INCOMPLETE) {
        memset(&r2, 0xa5, sizeof(r2));
        rc2 = tg_http1_parse_request(buf, size, &scanned, lim, &r2, &st2, &why2);
    }
    FUZZ_ASSERT(rc2 == rc1);
    if (rc1 > 0)
        FUZZ_ASSERT(fuzz_req_same(&r1, &r2));

    free(buf);
    return 0;
}
