/* Body field reader: any Content-Type, query and body. The answer may
 * depend on the value buffer only through the cap rule (a longer value is
 * MALFORMED); a FOUND JSON value is valid UTF-8.
 *
 * Input: byte 0 picks the read mask (bits 0-1), the Content-Type (bits
 * 2-4: a fixed one, or 6-7: taken from the input) and the field (bits
 * 5-6); byte 1 is the Content-Type's length when taken from the input,
 * byte 2 the query's (255: no query); then the Content-Type, the query
 * and the body. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "bodykey.h"

static const char *const content_types[8] = {
    NULL,
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data; boundary=\"XyZ\"",
    "application/x-www-form-urlencoded; charset=UTF-8",
    NULL, /* 6, 7: from the input */
    NULL,
};

static const char *const fields[4] = {"identity", "kid", "pass", "identity"};

static bool valid_utf8(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        } else
            return false;
        if (n - i - 1 < need)
            return false;
        for (size_t k = 1; k <= need; k++) {
            unsigned char d = p[i + k];
            if (d < lo || d > hi)
                return false;
            lo = 0x80;
            hi = 0xBF;
        }
        i += need + 1;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    unsigned sel = data[0];
    unsigned ctsel = (sel >> 2) & 7;
    const char *field = fields[(sel >> 5) & 3];
    const char *rest = (const char *)data + 3;
    size_t left = size - 3;

    struct tg_bodykey_input in = {.read = sel & 3};
    if (ctsel >= 6) {
        size_t n = data[1] < left ? data[1] : left;
        in.content_type = (struct tg_str){rest, n};
        rest += n;
        left -= n;
    } else if (content_types[ctsel] != NULL) {
        in.content_type = (struct tg_str){content_types[ctsel], strlen(content_types[ctsel])};
    }
    if (data[2] != 255) {
        size_t n = data[2] < left ? data[2] : left;
        in.query = (struct tg_str){rest, n};
        rest += n;
        left -= n;
    }
    in.body = rest;
    in.len = left;

    char small[8], big[256];
    size_t ns = 99, nb = 99;
    const char *why_s = NULL, *why_b = NULL;
    enum tg_bodykey_status s =
        tg_bodykey_find(&in, field, strlen(field), small, sizeof(small), &ns, &why_s);
    enum tg_bodykey_status b =
        tg_bodykey_find(&in, field, strlen(field), big, sizeof(big), &nb, &why_b);

    if (why_s == NULL || why_b == NULL || ns > sizeof(small) || nb > sizeof(big))
        __builtin_trap();
    if ((s != TG_BODYKEY_FOUND && ns != 0) || (b != TG_BODYKEY_FOUND && nb != 0))
        __builtin_trap();
    switch (b) {
    case TG_BODYKEY_FOUND:
        if (nb <= sizeof(small)) {
            if (s != TG_BODYKEY_FOUND || ns != nb || memcmp(small, big, nb) != 0)
                __builtin_trap();
        } else if (s != TG_BODYKEY_MALFORMED) {
            __builtin_trap();
        }
        if (tg_bodykey_classify(in.content_type) == TG_BODYKEY_JSON &&
            !valid_utf8((const unsigned char *)big, nb))
            __builtin_trap();
        break;
    case TG_BODYKEY_CONFLICT:
        if (s != TG_BODYKEY_CONFLICT && s != TG_BODYKEY_MALFORMED)
            __builtin_trap();
        break;
    default: /* MISSING, UNREADABLE, MALFORMED do not depend on the cap */
        if (s != b)
            __builtin_trap();
        break;
    }
    if (s == TG_BODYKEY_FOUND && b != TG_BODYKEY_FOUND)
        __builtin_trap();
    return 0;
}
