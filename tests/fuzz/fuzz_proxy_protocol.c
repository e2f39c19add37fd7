/* libFuzzer target: tg_proxy_protocol_parse.
 *
 * Input: the bytes as a client would send them. Each call sees a heap copy
 * of exactly the bytes it may read, so ASan catches any read past len.
 * Checks: an accepted header's length is within the input and at most
 * TG_PROXY_PROTOCOL_MAX, its fields are consistent (version 1 or 2, local
 * headers carry no addresses, others carry the family of an address);
 * every prefix shorter than an accepted header is INCOMPLETE and every
 * longer one gives the same header; an error is final (no longer prefix is
 * accepted or incomplete); TG_PROXY_PROTOCOL_MAX bytes always decide. The
 * parser keeps no state, so "fed in two pieces" is a prefix call followed
 * by a whole call, which the prefix loop covers at every split point.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE
 *   -Isrc tests/fuzz/fuzz_proxy_protocol.c src/proxy_protocol.c src/addr.c */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_protocol.h"

#define FUZZ_ASSERT(c)                                                                \
    do {                                                                              \
        if (!(c)) {                                                                   \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

struct res {
    ssize_t rc;
    struct tg_proxy_protocol pp;
};

static struct res run(const uint8_t *data, size_t len)
{
    struct res r;
    const char *reason = NULL;
    char *copy = malloc(len ? len : 1);
    if (copy == NULL)
        abort();
    memcpy(copy, data, len);
    memset(&r, 0, sizeof(r));
    r.rc = tg_proxy_protocol_parse(copy, len, &r.pp, &reason);
    free(copy);
    FUZZ_ASSERT(r.rc >= TG_PROXY_PROTOCOL_ERROR);
    FUZZ_ASSERT(r.rc != TG_PROXY_PROTOCOL_ERROR || reason != NULL);
    if (r.rc > 0) {
        FUZZ_ASSERT((size_t)r.rc <= len);
        FUZZ_ASSERT(r.rc <= TG_PROXY_PROTOCOL_MAX);
        FUZZ_ASSERT(r.pp.version == 1 || r.pp.version == 2);
        FUZZ_ASSERT(r.pp.version != 1 || r.rc <= 107);
        if (r.pp.local) {
            FUZZ_ASSERT(r.pp.src.family == 0 && r.pp.dst.family == 0);
            FUZZ_ASSERT(r.pp.src_port == 0 && r.pp.dst_port == 0);
        } else {
            FUZZ_ASSERT(r.pp.src.family == AF_INET || r.pp.src.family == AF_INET6);
            FUZZ_ASSERT(r.pp.dst.family == AF_INET || r.pp.dst.family == AF_INET6);
        }
    }
    return r;
}

static bool same(const struct res *a, const struct res *b)
{
    if (a->rc != b->rc)
        return false;
    if (a->rc <= 0)
        return true;
    return a->pp.version == b->pp.version && a->pp.local == b->pp.local &&
           tg_addr_equal(&a->pp.src, &b->pp.src) && tg_addr_equal(&a->pp.dst, &b->pp.dst) &&
           a->pp.src_port == b->pp.src_port && a->pp.dst_port == b->pp.dst_port;
}

/* Whether to try the prefix of length `cut`: every one for short inputs;
 * for long ones (big v2 TLV blocks) the first bytes, an even spread, and the
 * edges of the header, so that each input stays cheap. */
static bool try_cut(size_t cut, size_t size, ssize_t rc)
{
    if (size <= 512 || cut < 32 || cut == size)
        return true;
    if (rc > 0 && cut + 1 >= (size_t)rc && cut <= (size_t)rc + 1)
        return true;
    return cut % (size / 64 + 1) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Nothing past the longest header matters; keep runs fast. */
    if (size > TG_PROXY_PROTOCOL_MAX + 64)
        size = TG_PROXY_PROTOCOL_MAX + 64;
    struct res whole = run(data, size);

    bool refused = false;
    for (size_t cut = 0; cut <= size; cut++) {
        if (!try_cut(cut, size, whole.rc))
            continue;
        struct res part = run(data, cut);
        /* A prefix of an accepted header is INCOMPLETE: the caller waits
         * for more and retries from the start of its buffer. */
        if (whole.rc > 0 && cut < (size_t)whole.rc)
            FUZZ_ASSERT(part.rc == TG_PROXY_PROTOCOL_INCOMPLETE);
        /* Whatever a prefix decided stands once more bytes arrive. */
        if (part.rc != TG_PROXY_PROTOCOL_INCOMPLETE)
            FUZZ_ASSERT(same(&part, &whole));
        if (refused)
            FUZZ_ASSERT(part.rc == TG_PROXY_PROTOCOL_ERROR);
        if (part.rc == TG_PROXY_PROTOCOL_ERROR)
            refused = true;
    }
    /* A caller that has buffered TG_PROXY_PROTOCOL_MAX bytes has an
     * answer. */
    if (whole.rc == TG_PROXY_PROTOCOL_INCOMPLETE)
        FUZZ_ASSERT(size < TG_PROXY_PROTOCOL_MAX);
    return 0;
}
