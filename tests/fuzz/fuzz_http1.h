/* Shared checks for the http1 fuzz targets: result comparison, views in
 * bounds, and hiding the bytes past `len` from the parser under ASan so a
 * read beyond what it was given is caught even inside the buffer. */
#ifndef TG_FUZZ_HTTP1_H
#define TG_FUZZ_HTTP1_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http1.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#define FUZZ_POISON(p, n) __asan_poison_memory_region((p), (n))
#define FUZZ_UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#endif
#endif
#ifndef FUZZ_POISON
#define FUZZ_POISON(p, n) ((void)(p), (void)(n))
#define FUZZ_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define FUZZ_ASSERT(cond)                                                      \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__,    \
                    __LINE__, #cond);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

static inline int fuzz_str_same(struct tg_str a, struct tg_str b)
{
    return a.p == b.p && a.n == b.n;
}

/* Same bytes (for views into different buffers). */
static inline int fuzz_str_bytes_eq(struct tg_str a, struct tg_str b)
{
    if ((a.p == NULL) != (b.p == NULL) || a.n != b.n)
        return 0;
    return a.n == 0 || memcmp(a.p, b.p, a.n) == 0;
}

/* A view lies inside buf[0..len) (an absent view, p == NULL, is fine). */
static inline int fuzz_inside(struct tg_str s, const char *buf, size_t len)
{
    if (s.p == NULL)
        return s.n == 0;
    return s.p >= buf && s.n <= len && (size_t)(s.p - buf) <= len - s.n;
}

static inline int fuzz_req_same(const struct tg_http1_request *a,
                                const struct tg_http1_request *b)
{
    if (a->method_id != b->method_id || !fuzz_str_same(a->method, b->method) ||
        !fuzz_str_same(a->target, b->target) ||
        !fuzz_str_same(a->path, b->path) || !fuzz_str_same(a->query, b->query) ||
        !fuzz_str_same(a->authority, b->authority) ||
        a->minor_version != b->minor_version || a->nheaders != b->nheaders ||
        !fuzz_str_same(a->host, b->host) || a->framing != b->framing ||
        a->content_length != b->content_length ||
        a->keep_alive != b->keep_alive ||
        a->upgrade != b->upgrade ||
        a->upgrade_websocket != b->upgrade_websocket ||
        a->head_len != b->head_len)
        return 0;
    for (size_t i = 0; i < a->nheaders; i++)
        if (!fuzz_str_same(a->headers[i].name, b->headers[i].name) ||
            !fuzz_str_same(a->headers[i].value, b->headers[i].value))
            return 0;
    return 1;
}

static inline int fuzz_resp_same(const struct tg_http1_response *a,
                                 const struct tg_http1_response *b)
{
    if (a->status != b->status || !fuzz_str_same(a->reason, b->reason) ||
        a->minor_version != b->minor_version || a->nheaders != b->nheaders ||
        a->framing != b->framing || a->content_length != b->content_length ||
        a->keep_alive != b->keep_alive ||
        a->upgrade_websocket != b->upgrade_websocket ||
        a->head_len != b->head_len)
        return 0;
    for (size_t i = 0; i < a->nheaders; i++)
        if (!fuzz_str_same(a->headers[i].name, b->headers[i].name) ||
            !fuzz_str_same(a->headers[i].value, b->headers[i].value))
            return 0;
    return 1;
}

/* Field views: inside the head, names non-empty, values trimmed, and no
 * CR, LF or NUL anywhere. */
static inline void fuzz_check_fields(const struct tg_http_header *h, size_t n,
                                     const char *buf, size_t head_len)
{
    for (size_t i = 0; i < n; i++) {
        struct tg_str k = h[i].name, v = h[i].value;
        FUZZ_ASSERT(fuzz_inside(k, buf, head_len) && k.n > 0);
        FUZZ_ASSERT(fuzz_inside(v, buf, head_len) && v.p != NULL);
        for (size_t j = 0; j < k.n; j++)
            FUZZ_ASSERT(k.p[j] > 0x20 && k.p[j] < 0x7f && k.p[j] != ':');
        for (size_t j = 0; j < v.n; j++)
            FUZZ_ASSERT(v.p[j] != '\r' && v.p[j] != '\n' && v.p[j] != 0);
        if (v.n > 0) {
            FUZZ_ASSERT(v.p[0] != ' ' && v.p[0] != '\t');
            FUZZ_ASSERT(v.p[v.n - 1] != ' ' && v.p[v.n - 1] != '\t');
        }
    }
}

/* A private copy of exactly n bytes, so ASan sees any read past the end. */
static inline char *fuzz_copy(const uint8_t *data, size_t n)
{
    char *buf = malloc(n ? n : 1);
    if (n)
        memcpy(buf, data, n);
    return buf;
}

#endif
