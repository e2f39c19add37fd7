/* libFuzzer target, differential: a request head that parses is written
 * back in canonical form (method SP target SP HTTP/1.x CRLF, "name: value"
 * CRLF per field, CRLF) and parsed again. Both parses must agree on
 * everything a proxy acts on, and the canonical form must be a fixpoint.
 * A disagreement means two parsers (ours and whatever sits behind us, which
 * will see our canonical form) could frame the same message differently. */
#include <stdint.h>

#include "fuzz_http1.h"

static struct tg_http1_request r1, r2, r3;

static size_t canonical(const struct tg_http1_request *r, char *out)
{
    size_t n = 0;
    memcpy(out + n, r->method.p, r->method.n);
    n += r->method.n;
    out[n++] = ' ';
    memcpy(out + n, r->target.p, r->target.n);
    n += r->target.n;
    memcpy(out + n, " HTTP/1.", 8);
    n += 8;
    out[n++] = (char)('0' + r->minor_version);
    out[n++] = '\r';
    out[n++] = '\n';
    for (size_t i = 0; i < r->nheaders; i++) {
        memcpy(out + n, r->headers[i].name.p, r->headers[i].name.n);
        n += r->headers[i].name.n;
        out[n++] = ':';
        out[n++] = ' ';
        memcpy(out + n, r->headers[i].value.p, r->headers[i].value.n);
        n += r->headers[i].value.n;
        out[n++] = '\r';
        out[n++] = '\n';
    }
    out[n++] = '\r';
    out[n++] = '\n';
    return n;
}

static void same_meaning(const struct tg_http1_request *a, const struct tg_http1_request *b)
{
    FUZZ_ASSERT(a->method_id == b->method_id);
    FUZZ_ASSERT(fuzz_str_bytes_eq(a->method, b->method));
    FUZZ_ASSERT(fuzz_str_bytes_eq(a->target, b->target));
    FUZZ_ASSERT(fuzz_str_bytes_eq(a->path, b->path));
    FUZZ_ASSERT(fuzz_str_bytes_eq(a->query, b->query));
    FUZZ_ASSERT(fuzz_str_bytes_eq(a->authority, b->authority));
    FUZZ_ASSERT(fuzz_str_bytes_eq(a->host, b->host));
    FUZZ_ASSERT(a->minor_version == b->minor_version);
    FUZZ_ASSERT(a->nheaders == b->nheaders);
    for (size_t i = 0; i < a->nheaders; i++) {
        FUZZ_ASSERT(fuzz_str_bytes_eq(a->headers[i].name, b->headers[i].name));
        FUZZ_ASSERT(fuzz_str_bytes_eq(a->headers[i].value, b->headers[i].value));
    }
    FUZZ_ASSERT(a->framing == b->framing);
    FUZZ_ASSERT(a->content_length == b->content_length);
    FUZZ_ASSERT(a->keep_alive == b->keep_alive);
    FUZZ_ASSERT(a->upgrade == b->upgrade);
    FUZZ_ASSERT(a->upgrade_websocket == b->upgrade_websocket);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct tg_http1_limits lim = {8192, 32768, 100};
    char *buf = fuzz_copy(data, size);
    size_t scanned = 0;
    int status;
    const char *reason;

    ssize_t rc = tg_http1_parse_request(buf, size, &scanned, &lim, &r1, &status, &reason);
    if (rc <= 0) {
        free(buf);
        return 0;
    }
    /* Canonical form: at most 2 more bytes per field than the original
     * (the space after the colon, the CRLF is the same). */
    size_t cap = (size_t)rc + 2 * r1.nheaders + 16;
    char *c1 = malloc(cap), *c2 = malloc(cap);
    size_t n1 = canonical(&r1, c1);
    FUZZ_ASSERT(n1 <= cap);

    struct tg_http1_limits big = {lim.max_request_line, cap, lim.max_headers};
    scanned = 0;
    ssize_t rc2 = tg_http1_parse_request(c1, n1, &scanned, &big, &r2, &status, &reason);
    if (rc2 != (ssize_t)n1)
        fprintf(stderr, "canonical form rejected: %s\n", rc2 < 0 ? reason : "incomplete");
    FUZZ_ASSERT(rc2 == (ssize_t)n1);
    same_meaning(&r1, &r2);

    size_t n2 = canonical(&r2, c2);
    FUZZ_ASSERT(n2 == n1 && memcmp(c1, c2, n1) == 0);
    scanned = 0;
    FUZZ_ASSERT(tg_http1_parse_request(c2, n2, &scanned, &big, &r3, &status, &reason) ==
                (ssize_t)n2);
    same_meaning(&r2, &r3);

    free(c1);
    free(c2);
    free(buf);
    return 0;
}
