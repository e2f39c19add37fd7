/* libFuzzer target: the response-head parser.
 *
 * Input: one control byte (bits 0-3 the request method, bits 4-5 the
 * limits, bits 6-7 a split point), then the head. Checks as for requests:
 * one-shot, byte-by-byte (tail poisoned) and two-piece parses agree; views
 * in bounds; framing coherent with the status and method. */
#include <stdint.h>

#include "fuzz_http1.h"

static struct tg_http1_response r1, r2;

static const struct tg_http1_limits limit_modes[4] = {
    {8192, 32768, 100},
    {8192, 32768, TG_HTTP1_MAX_HEADERS},
    {64, 256, 8},
    {24, 64, 2},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    enum tg_http_method m = (enum tg_http_method)((data[0] & 15) % 10);
    const struct tg_http1_limits *lim = &limit_modes[(data[0] >> 4) & 3];
    size_t split_at = (size_t)(data[0] >> 6) * (size - 1) / 3;
    data++;
    size--;
    char *buf = fuzz_copy(data, size);

    size_t scanned = 0;
    const char *why1 = NULL, *why2 = NULL;
    ssize_t rc1 = tg_http1_parse_response(buf, size, &scanned, lim, m, &r1, &why1);
    if (rc1 > 0) {
        size_t hl = (size_t)rc1;
        FUZZ_ASSERT(r1.head_len == hl && hl <= lim->max_head);
        FUZZ_ASSERT(memcmp(buf + hl - 4, "\r\n\r\n", 4) == 0);
        FUZZ_ASSERT(memcmp(buf, "HTTP/1.", 7) == 0);
        FUZZ_ASSERT(r1.status >= 100 && r1.status <= 999);
        FUZZ_ASSERT(r1.minor_version == 0 || r1.minor_version == 1);
        FUZZ_ASSERT(fuzz_inside(r1.reason, buf, hl) && r1.reason.p != NULL);
        FUZZ_ASSERT(r1.nheaders <= lim->max_headers);
        fuzz_check_fields(r1.headers, r1.nheaders, buf, hl);
        bool bodiless =
            m == TG_HTTP_HEAD || r1.status < 200 || r1.status == 204 || r1.status == 304;
        if (bodiless)
            FUZZ_ASSERT(r1.framing == TG_HTTP1_BODY_NONE);
        if (r1.framing == TG_HTTP1_BODY_LENGTH)
            FUZZ_ASSERT(r1.content_length > 0 && r1.content_length <= INT64_MAX);
        if (r1.framing == TG_HTTP1_BODY_CLOSE)
            FUZZ_ASSERT(!r1.keep_alive);
        if (m == TG_HTTP_CONNECT)
            FUZZ_ASSERT(r1.status < 200 || r1.status >= 300);
        FUZZ_ASSERT(!r1.upgrade_websocket || r1.status == 101);
    } else if (rc1 == TG_HTTP1_ERROR) {
        FUZZ_ASSERT(why1 != NULL);
    } else {
        FUZZ_ASSERT(rc1 == 0 && scanned == size && size < lim->max_head);
    }

    ssize_t rc2 = 0;
    size_t k;
    scanned = 0;
    for (k = 0; k <= size; k++) {
        FUZZ_POISON(buf + k, size - k);
        rc2 = tg_http1_parse_response(buf, k, &scanned, lim, m, &r2, &why2);
        FUZZ_UNPOISON(buf, size);
        if (rc2 != TG_HTTP1_INCOMPLETE)
            break;
        FUZZ_ASSERT(scanned == k);
    }
    FUZZ_ASSERT(rc2 == rc1);
    if (rc1 > 0)
        FUZZ_ASSERT(k == (size_t)rc1 && fuzz_resp_same(&r1, &r2));
    else if (rc1 < 0)
        FUZZ_ASSERT(strcmp(why1, why2) == 0);

    scanned = 0;
    FUZZ_POISON(buf + split_at, size - split_at);
    rc2 = tg_http1_parse_response(buf, split_at, &scanned, lim, m, &r2, &why2);
    FUZZ_UNPOISON(buf, size);
    if (rc2 == TG_HTTP1_INCOMPLETE)
        rc2 = tg_http1_parse_response(buf, size, &scanned, lim, m, &r2, &why2);
    FUZZ_ASSERT(rc2 == rc1);
    if (rc1 > 0)
        FUZZ_ASSERT(fuzz_resp_same(&r1, &r2));

    free(buf);
    return 0;
}
