/* libFuzzer target for tg_router_normalize_path. Beyond "no crash" it checks
 * what the access rules rely on: the output is never longer than the input,
 * is already normal (no "//", no "." or ".." segment, no escape that should
 * have been decoded, upper-case hex, no byte that would have been refused),
 * normalising it again changes nothing, and normalising in place gives the
 * same result. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1; /* lower case is not normal either */
}

static int unreserved(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static void check_normal(const char *p, size_t n)
{
    if (n == 0 || p[0] != '/')
        abort();
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c >= 0x7f || c == '\\' || c == '#')
            abort();
        if (c == '/') {
            /* The segment after this slash: not empty (unless the path
             * ends here), not ".", not "..". */
            size_t j = i + 1;
            while (j < n && p[j] != '/')
                j++;
            size_t len = j - i - 1;
            if (len == 0 && j < n)
                abort(); /* "//" */
            if (len == 1 && p[i + 1] == '.')
                abort();
            if (len == 2 && p[i + 1] == '.' && p[i + 2] == '.')
                abort();
        }
        if (c == '%') {
            if (i + 2 >= n)
                abort();
            int hi = hexval((unsigned char)p[i + 1]);
            int lo = hexval((unsigned char)p[i + 2]);
            if (hi < 0 || lo < 0)
                abort();
            int v = hi << 4 | lo;
            if (unreserved(v) || v < 0x20 || v == 0x7f || v == '/' || v == '\\')
                abort();
            i += 2;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Buffers of exactly `size` bytes, so ASan catches any read or write
     * past the input's length. */
    size_t alloc = size > 0 ? size : 1;
    char *in = malloc(alloc), *out = malloc(alloc), *again = malloc(alloc);
    if (in == NULL || out == NULL || again == NULL)
        abort();
    if (size > 0)
        memcpy(in, data, size);

    ssize_t r = tg_router_normalize_path(in, size, out, size);
    if (r >= 0) {
        if ((size_t)r > size)
            abort();
        check_normal(out, (size_t)r);

        ssize_t r2 = tg_router_normalize_path(out, (size_t)r, again, (size_t)r);
        if (r2 != r || memcmp(out, again, (size_t)r) != 0)
            abort();
    }

    /* In place gives the same answer. */
    ssize_t r3 = tg_router_normalize_path(in, size, in, size);
    if (r3 != r || (r >= 0 && memcmp(in, out, (size_t)r) != 0))
        abort();

    free(in);
    free(out);
    free(again);
    return 0;
}
