/* Accept-Encoding and Cache-Control parsing (encoding.c). Beyond "no
 * crash": the coding chosen is identity or one of the order given, with a
 * q above 0 (its own, else the "*" one); a field split at any comma parses
 * as the same list given as two fields; Cache-Control says no-transform
 * only if the bytes hold that word. Media-type matching runs on the same
 * bytes for crashes and reads past the end (ASan).
 *
 * Input: byte 0 picks the server order (bits 0-2), then the field bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "encoding.h"

static const uint8_t orders[8][3] = {
    {TG_ENC_ZSTD, TG_ENC_BR, TG_ENC_GZIP},
    {TG_ENC_GZIP, TG_ENC_BR, TG_ENC_ZSTD},
    {TG_ENC_BR, TG_ENC_GZIP, 0},
    {TG_ENC_GZIP, 0, 0},
    {TG_ENC_ZSTD, 0, 0},
    {TG_ENC_BR, TG_ENC_ZSTD, 0},
    {TG_ENC_GZIP, TG_ENC_ZSTD, 0},
    {TG_ENC_BR, 0, 0},
};
static const size_t order_len[8] = {3, 3, 2, 1, 1, 2, 2, 1};

static int contains_nocase(const char *p, size_t n, const char *w)
{
    size_t wn = strlen(w);
    for (size_t i = 0; i + wn <= n; i++)
        if (strncasecmp(p + i, w, wn) == 0)
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned pick = data[0] & 7;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    const uint8_t *order = orders[pick];
    size_t norder = order_len[pick];

    struct tg_encoding_accept a;
    tg_encoding_accept_init(&a);
    tg_encoding_accept_parse(&a, p, n);
    enum tg_encoding e = tg_encoding_choose(&a, order, norder);
    if (e != TG_ENC_IDENTITY) {
        int listed = 0;
        for (size_t i = 0; i < norder; i++)
            listed |= order[i] == e;
        int q = a.q[e] >= 0 ? a.q[e] : a.star;
        if (!listed || q <= 0 || q > 1000)
            abort();
    }
    for (int k = 0; k < TG_ENC_COUNT; k++)
        if (a.q[k] > 1000 || a.q[k] < -1)
            abort();

    /* Split at each comma: two fields, the same list. */
    for (size_t i = 0; i < n; i++) {
        if (p[i] != ',')
            continue;
        struct tg_encoding_accept b;
        tg_encoding_accept_init(&b);
        tg_encoding_accept_parse(&b, p, i);
        tg_encoding_accept_parse(&b, p + i + 1, n - i - 1);
        if (memcmp(b.q, a.q, sizeof(a.q)) != 0 || b.star != a.star)
            abort();
    }

    if (tg_encoding_no_transform(p, n) && !contains_nocase(p, n, "no-transform"))
        abort();

    /* The input as a Content-Type and as the configured list. */
    char *t = malloc(n + 1);
    if (t == NULL)
        return 0;
    memcpy(t, p, n);
    t[n] = '\0';
    const char *types[1] = {t};
    (void)tg_encoding_type_matches(p, n, types, 1);
    (void)tg_encoding_type_is(p, n, "text/event-stream");
    free(t);
    return 0;
}
