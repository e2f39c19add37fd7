/* libFuzzer target: the chunked decoder.
 *
 * Input: two control bytes (max_trailer / 4, split point), then the body.
 * Checks: the contract of each call (data or framing, never both; 0 only
 * for n == 0 or after done; nothing consumed after done), decoded data no
 * longer than the input, and all-at-once, byte-by-byte and two-piece
 * feeding agree on consumed length, data bytes and where it ends. */
#include <stdint.h>

#include "fuzz_http1.h"

struct run {
    ssize_t consumed; /* -1: invalid */
    bool done;
    size_t ndata;
};

/* Feeds buf[0..size) with at most `step` new bytes visible per round (the
 * rest poisoned); step 0 = all at once, else pieces, split at `split` if
 * step == SIZE_MAX. Data bytes are copied to out. */
static struct run feed(char *buf, size_t size, size_t max_trailer, size_t step, size_t split,
                       char *out)
{
    struct tg_http1_chunked c;
    struct run r = {0, false, 0};
    size_t off = 0, avail = 0;

    tg_http1_chunked_init(&c, max_trailer);
    while (!c.done) {
        if (step == 0)
            avail = size;
        else if (step == SIZE_MAX)
            avail = avail < split ? split : size;
        else
            avail = avail + step > size ? size : avail + step;
        FUZZ_POISON(buf + avail, size - avail);
        while (off < avail && !c.done) {
            size_t dl = 12345;
            ssize_t n = tg_http1_chunked_next(&c, buf + off, avail - off, &dl);
            if (n < 0) {
                FUZZ_UNPOISON(buf, size);
                r.consumed = -1;
                return r;
            }
            FUZZ_ASSERT(n > 0); /* 0 only when n == 0 or done */
            FUZZ_ASSERT((size_t)n <= avail - off);
            FUZZ_ASSERT(dl == 0 || dl == (size_t)n);
            memcpy(out + r.ndata, buf + off, dl);
            r.ndata += dl;
            off += (size_t)n;
        }
        FUZZ_UNPOISON(buf, size);
        if (avail == size)
            break;
    }
    if (c.done) {
        size_t dl = 1;
        FUZZ_ASSERT(tg_http1_chunked_next(&c, buf + off, size - off, &dl) == 0);
        FUZZ_ASSERT(dl == 0);
    } else {
        FUZZ_ASSERT(off == size);
    }
    FUZZ_ASSERT(r.ndata <= off && off <= size);
    r.consumed = (ssize_t)off;
    r.done = c.done;
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t max_trailer = (size_t)data[0] * 4;
    size_t split = (size_t)data[1] * (size - 2) / 255;
    data += 2;
    size -= 2;
    char *buf = fuzz_copy(data, size);
    char *d1 = malloc(size + 1), *d2 = malloc(size + 1);

    struct run a = feed(buf, size, max_trailer, 0, 0, d1);
    struct run b = feed(buf, size, max_trailer, 1, 0, d2);
    FUZZ_ASSERT(a.consumed == b.consumed && a.done == b.done);
    if (a.consumed >= 0)
        FUZZ_ASSERT(a.ndata == b.ndata && memcmp(d1, d2, a.ndata) == 0);
    b = feed(buf, size, max_trailer, SIZE_MAX, split, d2);
    FUZZ_ASSERT(a.consumed == b.consumed && a.done == b.done);
    if (a.consumed >= 0)
        FUZZ_ASSERT(a.ndata == b.ndata && memcmp(d1, d2, a.ndata) == 0);

    free(d1);
    free(d2);
    free(buf);
    return 0;
}
