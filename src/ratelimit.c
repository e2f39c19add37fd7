/* The GCRA core and rate parsing: pure integer functions on a caller's clock,
 * no locks, no allocation, no I/O. Keys, policies and where TATs are kept
 * (ratelimit_local.c, Redis) are not here. */
#include "ratelimit.h"

#include <assert.h>

typedef __int128 i128;

static int64_t sat64(i128 v)
{
    if (v > INT64_MAX)
        return INT64_MAX;
    if (v < INT64_MIN)
        return INT64_MIN;
    return (int64_t)v;
}

/* a / b for 0 <= a, 1 <= b. A 64-bit divide is the slowest instruction on
 * the hot path; when both fit in 32 bits (a rate's interval and a small
 * burst usually do) a 32-bit one is several times faster. */
static int64_t div_nonneg(int64_t a, int64_t b)
{
    if (((uint64_t)a | (uint64_t)b) >> 32 == 0)
        return (int64_t)((uint32_t)a / (uint32_t)b);
    return a / b;
}

/* The decision for one request, shared by take and peek. Products and sums
 * are done in 128 bits: cost * interval alone can exceed int64 (a cost of
 * 2^31 at one per day is 1.9e23 ns). After the tolerance cap every value
 * that is stored or divided fits in int64. */
static bool decide(int64_t tat, int64_t now, const struct tg_ratelimit_params *p, int64_t cost,
                   struct tg_ratelimit_result *out, int64_t *tat_after)
{
    assert(p->interval_ns >= 1 && p->burst >= 1 && p->delay >= 0);
    assert(cost >= 0);

    int64_t iv = p->interval_ns;
    int64_t burst = p->burst, delay = p->delay;
    if (((i128)burst + delay) * iv > TG_RATELIMIT_MAX_TOLERANCE_NS) {
        /* Rare: see TG_RATELIMIT_MAX_TOLERANCE_NS. */
        int64_t most = TG_RATELIMIT_MAX_TOLERANCE_NS / iv;
        if (burst > most)
            burst = most;
        if (delay > most - burst)
            delay = most - burst;
    }
    int64_t burst_tol = burst * iv;           /* <= 2^62 */
    int64_t total_tol = (burst + delay) * iv; /* <= 2^62 */

    int64_t base = tat > now ? tat : now;
    i128 debt = (i128)base - now; /* >= 0: credit already used, in ns */
    i128 next = (i128)base + (i128)cost * iv;
    i128 excess = next - now;

    /* next <= INT64_MAX can only fail with a clock or TAT beyond 2^62 ns
     * (146 years of uptime); refusing then keeps the TAT representable. */
    if (excess <= total_tol && next <= INT64_MAX) {
        int64_t ex = (int64_t)excess; /* 0..2^62 */
        *tat_after = (int64_t)next;
        out->allowed = true;
        out->remaining = ex < burst_tol ? div_nonneg(burst_tol - ex, iv) : 0;
        out->retry_after_ns = 0;
        out->reset_ns = ex;
        out->delay_ns = ex > burst_tol ? ex - burst_tol : 0;
        out->overflow = false;
        out->store_failed = false;
        return true;
    }

    *tat_after = tat;
    out->allowed = false;
    out->remaining = debt < burst_tol ? div_nonneg(burst_tol - (int64_t)debt, iv) : 0;
    if (cost > burst + delay || excess <= total_tol)
        out->retry_after_ns = INT64_MAX; /* never, or not on this clock */
    else
        out->retry_after_ns = sat64(excess - total_tol);
    out->reset_ns = sat64(debt);
    out->delay_ns = 0;
    out->overflow = false;
    out->store_failed = false;
    return false;
}

bool tg_ratelimit_gcra(int64_t *tat, int64_t now_ns, const struct tg_ratelimit_params *p,
                       int64_t cost, struct tg_ratelimit_result *out)
{
    int64_t after;
    bool ok = decide(*tat, now_ns, p, cost, out, &after);
    *tat = after;
    return ok;
}

void tg_ratelimit_gcra_peek(int64_t tat, int64_t now_ns, const struct tg_ratelimit_params *p,
                            int64_t cost, struct tg_ratelimit_result *out)
{
    int64_t after;
    decide(tat, now_ns, p, cost, out, &after);
}

void tg_ratelimit_gcra_refund(int64_t *tat, int64_t now_ns, const struct tg_ratelimit_params *p,
                              int64_t cost)
{
    assert(p->interval_ns >= 1 && cost >= 0);
    if (*tat <= now_ns)
        return; /* full already: nothing was outstanding */
    /* In 128 bits: cost * interval may exceed int64; the result lies
     * between now and *tat, so it fits. */
    i128 back = (i128)*tat - (i128)cost * p->interval_ns;
    *tat = back > now_ns ? (int64_t)back : now_ns;
}

bool tg_ratelimit_gcra_idle(int64_t tat, int64_t now_ns)
{
    return tat <= now_ns;
}

int tg_ratelimit_parse_rate(const char *s, int64_t *interval_ns, int64_t *count, int64_t *period_s)
{
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    int64_t n = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        n = n * 10 + (*s - '0');
        if (n > TG_RATELIMIT_COUNT_MAX)
            return -1;
    }
    if (n < 1 || *s++ != '/')
        return -1;
    int64_t period;
    switch (*s++) {
    case 's':
        period = 1;
        break;
    case 'm':
        period = 60;
        break;
    case 'h':
        period = 3600;
        break;
    case 'd':
        period = 86400;
        break;
    default:
        return -1;
    }
    if (*s != '\0')
        return -1;
    /* Round up: a shorter interval would let more than n through per
     * period. */
    int64_t period_ns = period * INT64_C(1000000000);
    *interval_ns = period_ns / n + (period_ns % n != 0);
    *count = n;
    *period_s = period;
    return 0;
}
