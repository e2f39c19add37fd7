/* W3C Trace Context parsing and id generation. Everything a client sends
 * is validated byte by byte: a traceparent or tracestate we cannot vouch
 * for is never forwarded as it came. No allocation, no I/O. */
#include "trace.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "codec.h"

/* Lower-case hex only: the spec forbids upper case, and accepting it would
 * forward a second spelling of the same id. */
static int lhex(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes 2n lower-case hex digits into n bytes; false on a bad digit. */
static bool unhex(const char *p, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = lhex((unsigned char)p[2 * i]), lo = lhex((unsigned char)p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return false;
    return true;
}

bool tg_trace_parse_parent(const char *p, size_t n, struct tg_trace_parent *out)
{
    uint8_t version;
    if (n < TG_TRACE_PARENT_LEN || !unhex(p, &version, 1) || version == 0xff)
        return false;
    /* Version 00 is exactly its fields; a later version may append fields
     * after a '-', which we do not read. */
    if (version == 0 ? n != TG_TRACE_PARENT_LEN
                     : n > TG_TRACE_PARENT_LEN && p[TG_TRACE_PARENT_LEN] != '-')
        return false;
    if (p[2] != '-' || p[35] != '-' || p[52] != '-')
        return false;
    struct tg_trace_parent tp;
    if (!unhex(p + 3, tp.trace_id, 16) || !unhex(p + 36, tp.parent_id, 8) ||
        !unhex(p + 53, &tp.flags, 1))
        return false;
    if (all_zero(tp.trace_id, 16) || all_zero(tp.parent_id, 8))
        return false;
    *out = tp;
    return true;
}

/* ---- tracestate ------------------------------------------------------------------ */

static bool lcalpha(unsigned char c)
{
    return c >= 'a' && c <= 'z';
}

static bool key_char(unsigned char c)
{
    return lcalpha(c) || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' || c == '/';
}

/* key = simple-key / tenant-id "@" system-id
 * simple-key = lcalpha 0*255(key_char)
 * tenant-id = (lcalpha / DIGIT) 0*240(key_char)
 * system-id = lcalpha 0*13(key_char) */
static bool valid_key(const char *k, size_t n)
{
    const char *at = memchr(k, '@', n);
    if (at == NULL) {
        if (n < 1 || n > 256 || !lcalpha((unsigned char)k[0]))
            return false;
        for (size_t i = 1; i < n; i++)
            if (!key_char((unsigned char)k[i]))
                return false;
        return true;
    }
    size_t tn = (size_t)(at - k), sn = n - tn - 1;
    if (tn < 1 || tn > 241 || sn < 1 || sn > 14)
        return false;
    if (!lcalpha((unsigned char)k[0]) && !(k[0] >= '0' && k[0] <= '9'))
        return false;
    for (size_t i = 1; i < tn; i++)
        if (!key_char((unsigned char)k[i]))
            return false;
    if (!lcalpha((unsigned char)at[1]))
        return false;
    for (size_t i = 2; i <= sn; i++)
        if (!key_char((unsigned char)at[i]))
            return false;
    return true;
}

/* value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr;
 * nblk-chr = %x21-2B / %x2D-3C / %x3E-7E (no ',' and no '=') */
static bool valid_value(const char *v, size_t n)
{
    if (n < 1 || n > 256 || v[n - 1] == ' ')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=')
            return false;
    }
    return true;
}

static bool ows(char c)
{
    return c == ' ' || c == '\t';
}

bool tg_trace_valid_state(const char *p, size_t n)
{
    if (n > TG_TRACE_STATE_MAX)
        return false;
    struct {
        const char *p;
        size_t n;
    } keys[TG_TRACE_STATE_MEMBERS];
    size_t nkeys = 0;
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && p[j] != ',')
            j++;
        /* The member p[i..j), without the optional white space around it. */
        size_t a = i, b = j;
        while (a < b && ows(p[a]))
            a++;
        while (b > a && ows(p[b - 1]))
            b--;
        if (b > a) {
            const char *eq = memchr(p + a, '=', b - a);
            if (eq == NULL || nkeys == TG_TRACE_STATE_MEMBERS)
                return false;
            size_t kn = (size_t)(eq - (p + a));
            if (!valid_key(p + a, kn) || !valid_value(eq + 1, b - a - kn - 1))
                return false;
            for (size_t k = 0; k < nkeys; k++)
                if (keys[k].n == kn && memcmp(keys[k].p, p + a, kn) == 0)
                    return false;
            keys[nkeys].p = p + a;
            keys[nkeys].n = kn;
            nkeys++;
        }
        i = j + 1;
    }
    return true;
}

/* ---- ids and sampling ----------------------------------------------------------- */

/* xorshift128+ per thread, seeded from the kernel: fast enough to call for
 * every request, unpredictable enough that ids do not reveal traffic
 * volume, and no lock between workers. */
static _Thread_local uint64_t rng[2];

static uint64_t rng_next(void)
{
    if (rng[0] == 0 && rng[1] == 0) {
        if (getrandom(rng, sizeof(rng), 0) != (ssize_t)sizeof(rng)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            rng[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)&rng;
        }
        rng[1] |= 1; /* never the all-zero state */
    }
    uint64_t s1 = rng[0];
    const uint64_t s0 = rng[1];
    rng[0] = s0;
    s1 ^= s1 << 23;
    rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return rng[1] + s0;
}

void tg_trace_new_id(uint8_t *out, size_t n)
{
    do {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t v = rng_next();
            size_t k = n - i < 8 ? n - i : 8;
            memcpy(out + i, &v, k);
        }
    } while (all_zero(out, n));
}

double tg_trace_random(void)
{
    return (double)(rng_next() >> 11) * 0x1.0p-53;
}

bool tg_trace_decide(bool has_parent, uint8_t parent_flags, double ratio, double draw)
{
    if (has_parent)
        return (parent_flags & TG_TRACE_FLAG_SAMPLED) != 0;
    return ratio >= 1.0 || draw < ratio;
}

size_t tg_trace_format_parent(char *out, const uint8_t trace_id[16], const uint8_t span_id[8],
                              uint8_t flags)
{
    memcpy(out, "00-", 3);
    tg_hex_encode(out + 3, trace_id, 16, false);
    out[35] = '-';
    tg_hex_encode(out + 36, span_id, 8, false);
    out[52] = '-';
    tg_hex_encode(out + 53, &flags, 1, false);
    out[55] = '\0';
    return TG_TRACE_PARENT_LEN;
}
