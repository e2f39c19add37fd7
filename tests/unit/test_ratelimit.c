/* GCRA core and rate parsing. The core is checked field by field against an
 * independent token-bucket model kept in exact integer arithmetic (tokens
 * scaled by the interval, so one token = interval_ns units); refunds
 * likewise, and against the budget they must keep. */
#include "../../src/ratelimit.c"

#include <inttypes.h>
#include <stdlib.h>

#include "test.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rnd(void)
{
    /* xorshift64*: deterministic, so a failure reproduces. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1du;
}

/* Uniform in [lo, hi]. */
static int64_t rnd_range(int64_t lo, int64_t hi)
{
    return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1));
}

static const int64_t SEC = INT64_C(1000000000);
static const int64_t DAY = INT64_C(86400) * INT64_C(1000000000);

/* ---- reference model ---------------------------------------------------- */

/* A plain token bucket: `level` tokens * interval, refilled by elapsed ns,
 * capped at burst * interval, allowed to go down to -delay * interval. */
struct model {
    i128 level;
    int64_t last;
    bool started;
    int64_t burst, delay, iv;
};

static void model_init(struct model *m, const struct tg_ratelimit_params *p)
{
    memset(m, 0, sizeof(*m));
    m->iv = p->interval_ns;
    m->burst = p->burst;
    m->delay = p->delay;
    /* The documented cap: credit beyond 2^62 ns is not kept. */
    int64_t most = TG_RATELIMIT_MAX_TOLERANCE_NS / m->iv;
    if (m->burst > most)
        m->burst = most;
    if (m->delay > most - m->burst)
        m->delay = most - m->burst;
}

/* Time must not go backwards here; the model has no opinion on that. */
static bool model_take(struct model *m, int64_t now, int64_t cost, struct tg_ratelimit_result *r)
{
    i128 cap = (i128)m->burst * m->iv;
    if (!m->started) {
        m->level = cap;
        m->started = true;
    } else {
        m->level += now - m->last;
        if (m->level > cap)
            m->level = cap;
    }
    m->last = now;
    i128 need = (i128)cost * m->iv;
    memset(r, 0, sizeof(*r));
    if (m->level + (i128)m->delay * m->iv >= need) {
        r->allowed = true;
        r->delay_ns = need > m->level ? (int64_t)(need - m->level) : 0;
        m->level -= need;
    } else {
        r->allowed = false;
        r->retry_after_ns = cost > m->burst + m->delay
                                ? INT64_MAX
                                : (int64_t)(need - (i128)m->delay * m->iv - m->level);
    }
    r->remaining = m->level > 0 ? (int64_t)(m->level / m->iv) : 0;
    r->reset_ns = (int64_t)(cap - m->level);
    return r->allowed;
}

/* Gives back `cost` tokens: refill to now, add, never beyond full. */
static void model_refund(struct model *m, int64_t now, int64_t cost)
{
    i128 cap = (i128)m->burst * m->iv;
    if (!m->started)
        return; /* a fresh bucket is full */
    m->level += now - m->last;
    if (m->level > cap)
        m->level = cap;
    m->last = now;
    m->level += (i128)cost * m->iv;
    if (m->level > cap)
        m->level = cap;
}

static bool same_result(const struct tg_ratelimit_result *a, const struct tg_ratelimit_result *b)
{
    return a->allowed == b->allowed && a->remaining == b->remaining &&
           a->retry_after_ns == b->retry_after_ns && a->reset_ns == b->reset_ns &&
           a->delay_ns == b->delay_ns;
}

static void print_result(const char *who, const struct tg_ratelimit_result *r)
{
    fprintf(stderr,
            "  %s: allowed=%d remaining=%" PRId64 " retry=%" PRId64 " reset=%" PRId64
            " delay=%" PRId64 "\n",
            who, r->allowed, r->remaining, r->retry_after_ns, r->reset_ns, r->delay_ns);
}

static void random_params(struct tg_ratelimit_params *p)
{
    switch (rnd() % 8) {
    case 0:
        p->interval_ns = 1;
        break;
    case 1:
        p->interval_ns = rnd_range(1, 1000);
        break;
    case 2:
    case 3:
        p->interval_ns = rnd_range(1, SEC);
        break;
    case 4:
        p->interval_ns = DAY;
        break;
    default:
        p->interval_ns = rnd_range(1, DAY);
        break;
    }
    switch (rnd() % 8) {
    case 0:
        p->burst = 1;
        break;
    case 1:
        p->burst = INT64_C(1) << 31;
        break;
    case 2:
        p->burst = rnd_range(1, INT64_C(1) << 31);
        break;
    default:
        p->burst = rnd_range(1, 20);
        break;
    }
    p->delay = rnd() % 3 == 0 ? rnd_range(0, 2 * p->burst) : 0;
}

static int64_t random_cost(const struct tg_ratelimit_params *p)
{
    switch (rnd() % 10) {
    case 0:
        return p->burst;
    case 1:
        return p->burst + p->delay + rnd_range(0, 2);
    case 2:
        return rnd_range(0, p->burst + p->delay);
    case 3:
        return 0;
    default:
        return 1;
    }
}

static int64_t random_step(const struct tg_ratelimit_params *p)
{
    switch (rnd() % 6) {
    case 0:
    case 1:
        return 0; /* same instant */
    case 2:
        return rnd_range(0, 3);
    case 3:
        return rnd_range(0, p->interval_ns);
    case 4:
        return p->interval_ns * rnd_range(0, 3) + rnd_range(-1, 1) + 1;
    default:
        return rnd_range(0, p->interval_ns * 8);
    }
}

/* ---- tests ----------------------------------------------------------------
 */

/* Every field of every decision must equal the model's, and the
 * documented consistency properties must hold at each step. */
TEST(test_gcra_matches_model)
{
    int64_t total_allowed = 0, total_model = 0;
    for (int seq = 0; seq < 3000; seq++) {
        struct tg_ratelimit_params p;
        random_params(&p);
        struct model m;
        model_init(&m, &p);
        int64_t tat = 0;
        int64_t now = rnd_range(0, INT64_C(1) << 50);
        int steps = (int)rnd_range(1, 300);
        for (int i = 0; i < steps; i++) {
            now += random_step(&p);
            int64_t cost = random_cost(&p);
            struct tg_ratelimit_result got, want;
            int64_t before = tat;
            bool ok = tg_ratelimit_gcra(&tat, now, &p, cost, &got);
            bool mok = model_take(&m, now, cost, &want);
            total_allowed += ok;
            total_model += mok;
            if (ok != got.allowed || !same_result(&got, &want)) {
                fprintf(stderr,
                        "seq %d step %d: iv=%" PRId64 " burst=%" PRId64 " delay=%" PRId64
                        " cost=%" PRId64 " now=%" PRId64 " tat=%" PRId64 "\n",
                        seq, i, p.interval_ns, p.burst, p.delay, cost, now, before);
                print_result("gcra ", &got);
                print_result("model", &want);
                CHECK(false);
                return;
            }
            CHECK(got.remaining >= 0 && got.remaining <= p.burst);
            CHECK(got.reset_ns >= 0);
            if (!ok)
                CHECK_EQ_INT(tat, before); /* refused spends nothing */
            if (!ok && got.retry_after_ns != INT64_MAX) {
                /* Exactly retry_after later it passes, 1 ns earlier not. */
                struct tg_ratelimit_result r;
                CHECK(got.retry_after_ns > 0);
                tg_ratelimit_gcra_peek(tat, now + got.retry_after_ns, &p, cost, &r);
                CHECK(r.allowed);
                tg_ratelimit_gcra_peek(tat, now + got.retry_after_ns - 1, &p, cost, &r);
                CHECK(!r.allowed);
            }
            /* After reset_ns the bucket is full; 1 ns earlier it is not. */
            CHECK(tg_ratelimit_gcra_idle(tat, now + got.reset_ns));
            if (got.reset_ns > 0)
                CHECK(!tg_ratelimit_gcra_idle(tat, now + got.reset_ns - 1));
            /* `remaining` more tokens pass now without delay, one more
             * does not (0 also when the key is in delay debt). */
            struct tg_ratelimit_params nodelay = p;
            nodelay.delay = 0;
            struct tg_ratelimit_result r;
            tg_ratelimit_gcra_peek(tat, now, &nodelay, got.remaining, &r);
            CHECK(got.remaining == 0 || (r.allowed && r.delay_ns == 0));
            if (got.remaining < m.burst) {
                tg_ratelimit_gcra_peek(tat, now, &nodelay, got.remaining + 1, &r);
                CHECK(!r.allowed);
            }
        }
    }
    CHECK_EQ_INT(total_allowed, total_model);
    CHECK(total_allowed > 0);
}

/* Peek returns exactly what take would, and changes nothing. */
TEST(test_peek_equals_take)
{
    for (int i = 0; i < 20000; i++) {
        struct tg_ratelimit_params p;
        random_params(&p);
        int64_t now = rnd_range(0, INT64_C(1) << 50);
        int64_t tat = rnd() % 4 == 0 ? 0 : now + rnd_range(-SEC, 3 * SEC);
        if (tat < 0)
            tat = 0;
        int64_t cost = random_cost(&p);
        struct tg_ratelimit_result a, b;
        tg_ratelimit_gcra_peek(tat, now, &p, cost, &a);
        int64_t t2 = tat;
        bool ok = tg_ratelimit_gcra(&t2, now, &p, cost, &b);
        CHECK(same_result(&a, &b));
        CHECK(ok == b.allowed);
        CHECK(ok || t2 == tat);
    }
}

/* A clock that jumps backwards must never yield more than the bucket held:
 * over any prefix, tokens granted <= burst + delay + (latest clock value
 * seen - earliest) / interval. */
TEST(test_clock_backwards_bound)
{
    for (int seq = 0; seq < 2000; seq++) {
        struct tg_ratelimit_params p;
        random_params(&p);
        if (p.burst > 1000)
            p.burst = rnd_range(1, 1000);
        if (p.delay > 1000)
            p.delay = rnd_range(0, 1000);
        int64_t tat = 0;
        int64_t now = rnd_range(INT64_C(1) << 40, INT64_C(1) << 50);
        int64_t lo = now, hi = now;
        i128 granted = 0;
        for (int i = 0; i < 200; i++) {
            int64_t step = random_step(&p);
            if (rnd() % 4 == 0)
                step = -rnd_range(0, p.interval_ns * 10);
            now += step;
            if (now < lo)
                lo = now;
            if (now > hi)
                hi = now;
            int64_t cost = rnd() % 3 == 0 ? rnd_range(0, p.burst) : 1;
            struct tg_ratelimit_result r;
            if (tg_ratelimit_gcra(&tat, now, &p, cost, &r))
                granted += cost;
            CHECK(granted <= p.burst + p.delay + (i128)(hi - lo) / p.interval_ns);
            CHECK(r.remaining >= 0 && r.remaining <= p.burst);
        }
    }
}

TEST(test_clock_backwards_after_burst)
{
    struct tg_ratelimit_params p = {SEC, 5, 0};
    struct tg_ratelimit_result r;
    int64_t tat = 0, t = 1000 * SEC;
    for (int i = 0; i < 5; i++)
        CHECK(tg_ratelimit_gcra(&tat, t, &p, 1, &r));
    CHECK(!tg_ratelimit_gcra(&tat, t, &p, 1, &r));
    /* Back 1000 s: nothing more, and the state tells the truth about it. */
    CHECK(!tg_ratelimit_gcra(&tat, 0, &p, 1, &r));
    CHECK_EQ_INT(r.remaining, 0);
    CHECK(!tg_ratelimit_gcra(&tat, t - 1, &p, 1, &r));
    CHECK(!tg_ratelimit_gcra(&tat, t + SEC - 1, &p, 1, &r));
    CHECK(tg_ratelimit_gcra(&tat, t + SEC, &p, 1, &r));
    CHECK(!tg_ratelimit_gcra(&tat, t + SEC, &p, 1, &r));
    /* A stale TAT far in the past with the clock going back: still only a
     * full bucket. */
    tat = 10 * SEC;
    int n = 0;
    for (int i = 0; i < 100; i++)
        n += tg_ratelimit_gcra(&tat, 5 * SEC, &p, 1, &r);
    CHECK_EQ_INT(n, 0); /* tat 10 s at 5 s: 5 s of debt = the whole bucket */
}

TEST(test_burst_one)
{
    struct tg_ratelimit_params p = {100, 1, 0};
    struct tg_ratelimit_result r;
    int64_t tat = 0;
    CHECK(tg_ratelimit_gcra(&tat, 1000, &p, 1, &r));
    CHECK_EQ_INT(r.remaining, 0);
    CHECK_EQ_INT(r.reset_ns, 100);
    CHECK(!tg_ratelimit_gcra(&tat, 1000, &p, 1, &r));
    CHECK_EQ_INT(r.retry_after_ns, 100);
    CHECK(!tg_ratelimit_gcra(&tat, 1099, &p, 1, &r));
    CHECK_EQ_INT(r.retry_after_ns, 1);
    CHECK(tg_ratelimit_gcra(&tat, 1100, &p, 1, &r));
    CHECK(!tg_ratelimit_gcra(&tat, 1100, &p, 2, &r));
    CHECK_EQ_INT(r.retry_after_ns, INT64_MAX); /* cost 2 > burst 1 */
}

TEST(test_first_burst_pass_at_one_instant)
{
    struct tg_ratelimit_params p = {SEC, 7, 0};
    struct tg_ratelimit_result r;
    int64_t tat = 0;
    for (int i = 0; i < 7; i++) {
        CHECK(tg_ratelimit_gcra(&tat, 42, &p, 1, &r));
        CHECK_EQ_INT(r.remaining, 6 - i);
        CHECK_EQ_INT(r.reset_ns, (i + 1) * SEC);
        CHECK_EQ_INT(r.delay_ns, 0);
    }
    CHECK(!tg_ratelimit_gcra(&tat, 42, &p, 1, &r));
    CHECK_EQ_INT(r.retry_after_ns, SEC);
    CHECK_EQ_INT(r.reset_ns, 7 * SEC);
}

TEST(test_interval_one_ns_burst_2_31)
{
    int64_t b = INT64_C(1) << 31;
    struct tg_ratelimit_params p = {1, b, 0};
    struct tg_ratelimit_result r;
    int64_t tat = 0, now = 5;
    CHECK(tg_ratelimit_gcra(&tat, now, &p, b, &r)); /* cost = burst */
    CHECK_EQ_INT(r.remaining, 0);
    CHECK_EQ_INT(r.reset_ns, b);
    CHECK(!tg_ratelimit_gcra(&tat, now, &p, 1, &r));
    CHECK_EQ_INT(r.retry_after_ns, 1);
    CHECK(tg_ratelimit_gcra(&tat, now + 1, &p, 1, &r));
    CHECK(!tg_ratelimit_gcra(&tat, now + 1, &p, b + 1, &r));
    CHECK_EQ_INT(r.retry_after_ns, INT64_MAX);
}

TEST(test_interval_one_day)
{
    struct tg_ratelimit_params p = {DAY, 10, 0};
    struct tg_ratelimit_result r;
    int64_t tat = 0, now = 7 * DAY;
    CHECK(tg_ratelimit_gcra(&tat, now, &p, 10, &r));
    CHECK_EQ_INT(r.reset_ns, 10 * DAY);
    CHECK(!tg_ratelimit_gcra(&tat, now, &p, 1, &r));
    CHECK_EQ_INT(r.retry_after_ns, DAY);
    CHECK(tg_ratelimit_gcra(&tat, now + DAY, &p, 1, &r));
    CHECK_EQ_INT(r.remaining, 0);
}

/* 2^31 tokens at one per day is more credit than int64 ns can hold: the
 * burst is capped (documented), without overflow and never granting more. */
TEST(test_burst_2_31_one_day_capped)
{
    int64_t b = INT64_C(1) << 31;
    int64_t most = TG_RATELIMIT_MAX_TOLERANCE_NS / DAY;
    struct tg_ratelimit_params p = {DAY, b, 0};
    struct tg_ratelimit_result r;
    int64_t tat = 0, now = 3 * DAY;
    CHECK(tg_ratelimit_gcra(&tat, now, &p, 1, &r));
    CHECK_EQ_INT(r.remaining, most - 1);
    CHECK(!tg_ratelimit_gcra(&tat, now, &p, b, &r));
    CHECK_EQ_INT(r.retry_after_ns, INT64_MAX);
    CHECK(tg_ratelimit_gcra(&tat, now, &p, most - 1, &r));
    CHECK_EQ_INT(r.remaining, 0);
    CHECK(tat > now && tat - now <= TG_RATELIMIT_MAX_TOLERANCE_NS);
    CHECK(!tg_ratelimit_gcra(&tat, now, &p, 1, &r));
    CHECK_EQ_INT(r.retry_after_ns, DAY);
    /* With delay on top: still capped, still no overflow. */
    struct tg_ratelimit_params pd = {DAY, b, b};
    tat = 0;
    CHECK(tg_ratelimit_gcra(&tat, now, &pd, most, &r));
    CHECK(!tg_ratelimit_gcra(&tat, now, &pd, 1, &r));
    /* Products that overflow int64 by far: huge cost on a huge interval. */
    struct tg_ratelimit_params pz = {DAY, 1, INT64_MAX / 2};
    tat = 0;
    CHECK(!tg_ratelimit_gcra(&tat, now, &pz, INT64_MAX, &r));
    CHECK_EQ_INT(r.retry_after_ns, INT64_MAX);
    CHECK_EQ_INT(tat, 0);
}

TEST(test_cost_edges)
{
    struct tg_ratelimit_params p = {1000, 4, 0};
    struct tg_ratelimit_result r;
    int64_t tat = 0;
    CHECK(tg_ratelimit_gcra(&tat, 10, &p, 0, &r)); /* cost 0: a look */
    CHECK_EQ_INT(r.remaining, 4);
    CHECK(tg_ratelimit_gcra(&tat, 10, &p, 4, &r)); /* cost = burst */
    CHECK(tg_ratelimit_gcra(&tat, 10, &p, 0, &r));
    CHECK_EQ_INT(r.remaining, 0);
    tat = 0;
    CHECK(!tg_ratelimit_gcra(&tat, 10, &p, 5, &r)); /* cost > burst */
    CHECK_EQ_INT(r.retry_after_ns, INT64_MAX);
    CHECK_EQ_INT(r.remaining, 4);
    CHECK_EQ_INT(r.reset_ns, 0);
    CHECK_EQ_INT(tat, 0);
    /* Refused for lack of tokens: remaining tells what is there. */
    CHECK(tg_ratelimit_gcra(&tat, 10, &p, 3, &r));
    CHECK(!tg_ratelimit_gcra(&tat, 10, &p, 2, &r));
    CHECK_EQ_INT(r.remaining, 1);
    CHECK_EQ_INT(r.retry_after_ns, 1000);
}

TEST(test_delay_semantics)
{
    /* burst 2, delay 3, 100 ns per token: at one instant two pass at once,
     * three more pass held 100, 200, 300 ns, the sixth is refused. */
    struct tg_ratelimit_params p = {100, 2, 3};
    struct tg_ratelimit_result r;
    int64_t tat = 0, now = 1000;
    int64_t want[5] = {0, 0, 100, 200, 300};
    for (int i = 0; i < 5; i++) {
        CHECK(tg_ratelimit_gcra(&tat, now, &p, 1, &r));
        CHECK_EQ_INT(r.delay_ns, want[i]);
        CHECK_EQ_INT(r.remaining, i == 0 ? 1 : 0);
    }
    CHECK(!tg_ratelimit_gcra(&tat, now, &p, 1, &r));
    CHECK_EQ_INT(r.retry_after_ns, 100);
    CHECK_EQ_INT(r.reset_ns, 500);
    /* After the retry it passes, held the full 300 ns again. */
    CHECK(tg_ratelimit_gcra(&tat, now + 100, &p, 1, &r));
    CHECK_EQ_INT(r.delay_ns, 300);
    /* 300 ns on, three tokens came back: the next is held only 100 ns. */
    CHECK(tg_ratelimit_gcra(&tat, now + 400, &p, 1, &r));
    CHECK_EQ_INT(r.delay_ns, 100);
    /* Cost up to burst + delay passes on a full bucket, delayed. */
    tat = 0;
    CHECK(tg_ratelimit_gcra(&tat, now, &p, 5, &r));
    CHECK_EQ_INT(r.delay_ns, 300);
    tat = 0;
    CHECK(!tg_ratelimit_gcra(&tat, now, &p, 6, &r));
    CHECK_EQ_INT(r.retry_after_ns, INT64_MAX);
}

TEST(test_idle)
{
    struct tg_ratelimit_params p = {SEC, 3, 0};
    struct tg_ratelimit_result r;
    int64_t tat = 0;
    CHECK(tg_ratelimit_gcra_idle(tat, 0));
    CHECK(tg_ratelimit_gcra(&tat, 10 * SEC, &p, 2, &r));
    CHECK(!tg_ratelimit_gcra_idle(tat, 10 * SEC));
    CHECK(!tg_ratelimit_gcra_idle(tat, 12 * SEC - 1));
    CHECK(tg_ratelimit_gcra_idle(tat, 12 * SEC));
    CHECK_EQ_INT(r.reset_ns, 2 * SEC);
}

/* Clocks and TATs beyond 2^62 ns are outside the contract, but must not
 * overflow (UBSan watches) and must not grant more than burst. */
TEST(test_extreme_values_no_overflow)
{
    struct tg_ratelimit_params p = {DAY, 1 << 20, 1 << 20};
    struct tg_ratelimit_result r;
    int64_t nows[] = {0, 1, INT64_C(1) << 62, INT64_MAX - DAY, INT64_MAX - 1, INT64_MAX};
    int64_t tats[] = {0, 1, INT64_MAX / 2, INT64_MAX - 1, INT64_MAX};
    for (size_t i = 0; i < N_ELEMS(nows); i++) {
        for (size_t j = 0; j < N_ELEMS(tats); j++) {
            int64_t tat = tats[j];
            tg_ratelimit_gcra(&tat, nows[i], &p, 1, &r);
            CHECK(r.remaining >= 0 && r.remaining <= p.burst);
            CHECK(r.reset_ns >= 0 && r.retry_after_ns >= 0);
            CHECK(tat >= tats[j]);
        }
    }
}

/* ---- refund ---------------------------------------------------------------
 * Failure budgets reserve a token before forwarding and refund it when the
 * answer was not a failure. */

/* A take then its refund at the same instant restore the bucket exactly:
 * the TAT (as seen from now) and every field a peek reports. */
TEST(test_refund_restores_take)
{
    int restored = 0;
    for (int i = 0; i < 20000; i++) {
        struct tg_ratelimit_params p;
        random_params(&p);
        int64_t now = rnd_range(0, INT64_C(1) << 50);
        int64_t tat = rnd() % 4 == 0 ? 0 : now + rnd_range(-SEC, 3 * SEC);
        if (tat < 0)
            tat = 0;
        int64_t cost = random_cost(&p);
        struct tg_ratelimit_result before, after, r;
        tg_ratelimit_gcra_peek(tat, now, &p, 1, &before);
        int64_t t2 = tat;
        if (!tg_ratelimit_gcra(&t2, now, &p, cost, &r))
            continue;
        tg_ratelimit_gcra_refund(&t2, now, &p, cost);
        CHECK_EQ_INT(t2, tat > now ? tat : now);
        tg_ratelimit_gcra_peek(t2, now, &p, 1, &after);
        CHECK(same_result(&before, &after));
        restored++;
    }
    CHECK(restored > 10000);

    /* The plain case, by hand: 3 of 5 spent, one given back. */
    struct tg_ratelimit_params p = {SEC, 5, 0};
    struct tg_ratelimit_result r;
    int64_t tat = 0, now = 100 * SEC;
    CHECK(tg_ratelimit_gcra(&tat, now, &p, 3, &r));
    CHECK_EQ_INT(r.remaining, 2);
    tg_ratelimit_gcra_refund(&tat, now, &p, 1);
    tg_ratelimit_gcra_peek(tat, now, &p, 0, &r);
    CHECK_EQ_INT(r.remaining, 3);
    CHECK_EQ_INT(r.reset_ns, 2 * SEC);
    /* Half a second on, the refund still gives back a whole token. */
    CHECK(tg_ratelimit_gcra(&tat, now, &p, 1, &r));
    tg_ratelimit_gcra_refund(&tat, now + SEC / 2, &p, 1);
    CHECK_EQ_INT(tat, now + 2 * SEC);
}

/* A refund never makes the bucket more than full: on a full bucket it
 * does nothing (not even move a TAT in the past), and a cost larger than
 * what was spent stops at full; no overflow at the extremes. */
TEST(test_refund_never_overfull)
{
    struct tg_ratelimit_params p = {SEC, 5, 0};
    struct tg_ratelimit_result r;
    int64_t now = 100 * SEC;
    int64_t tat = 0;
    tg_ratelimit_gcra_refund(&tat, now, &p, 3);
    CHECK_EQ_INT(tat, 0); /* never seen: full, untouched */
    tat = now - 7;
    tg_ratelimit_gcra_refund(&tat, now, &p, 1);
    CHECK_EQ_INT(tat, now - 7);
    tat = now;
    tg_ratelimit_gcra_refund(&tat, now, &p, 1);
    CHECK_EQ_INT(tat, now);

    CHECK(tg_ratelimit_gcra(&tat, now, &p, 2, &r));
    tg_ratelimit_gcra_refund(&tat, now, &p, 5); /* more than was taken */
    CHECK_EQ_INT(tat, now);
    CHECK(tg_ratelimit_gcra_idle(tat, now));
    tg_ratelimit_gcra_peek(tat, now, &p, 0, &r);
    CHECK_EQ_INT(r.remaining, 5);
    /* So five, not more, pass next. */
    int n = 0;
    for (int i = 0; i < 10; i++)
        n += tg_ratelimit_gcra(&tat, now, &p, 1, &r);
    CHECK_EQ_INT(n, 5);

    /* Extremes: a day per token, costs up to 2^62, TATs up to INT64_MAX
     * (UBSan watches the products). */
    struct tg_ratelimit_params day = {DAY, INT64_C(1) << 31, 0};
    int64_t tats[] = {1, INT64_C(1) << 62, INT64_MAX - 1, INT64_MAX};
    int64_t costs[] = {0, 1, INT64_C(1) << 31, INT64_C(1) << 62};
    for (size_t i = 0; i < N_ELEMS(tats); i++) {
        for (size_t j = 0; j < N_ELEMS(costs); j++) {
            int64_t t = tats[i];
            tg_ratelimit_gcra_refund(&t, 0, &day, costs[j]);
            CHECK(t >= 0 && t <= tats[i]);
            CHECK(costs[j] != 0 || t == tats[i]);
            i128 want = (i128)tats[i] - (i128)costs[j] * DAY;
            CHECK_EQ_INT(t, want > 0 ? (int64_t)want : 0);
        }
    }
}

/* Takes and refunds interleaved at random, each refund giving back an
 * earlier allowed take (sometimes a cost never taken): every decision
 * equals the token-bucket model's (whose refund adds tokens up to full),
 * and what was taken minus what was refunded stays within the GCRA budget,
 * burst + delay + elapsed / interval: reserved guesses that are never
 * refunded cannot exceed it however the refunds interleave. */
TEST(test_refund_interleaved_with_takes)
{
    int64_t refunds = 0;
    for (int seq = 0; seq < 2000; seq++) {
        struct tg_ratelimit_params p;
        random_params(&p);
        if (p.burst > 1000)
            p.burst = rnd_range(1, 1000);
        struct model m;
        model_init(&m, &p);
        int64_t tat = 0;
        int64_t start = rnd_range(0, INT64_C(1) << 50), now = start;
        int64_t outstanding[64], nout = 0;
        i128 kept = 0; /* allowed and never refunded */
        for (int i = 0; i < 200; i++) {
            now += rnd() % 3 == 0 ? random_step(&p) : 0;
            struct tg_ratelimit_result got, want;
            if (nout > 0 && rnd() % 2 == 0) {
                size_t k = (size_t)(rnd() % (uint64_t)nout);
                int64_t cost = outstanding[k];
                outstanding[k] = outstanding[--nout];
                tg_ratelimit_gcra_refund(&tat, now, &p, cost);
                model_refund(&m, now, cost);
                kept -= cost;
                refunds++;
            } else if (rnd() % 16 == 0) {
                /* Never taken: a gift, counted as refunds are; the
                 * model says it fills at most up to full. */
                int64_t cost = rnd_range(0, 3);
                tg_ratelimit_gcra_refund(&tat, now, &p, cost);
                model_refund(&m, now, cost);
                kept -= cost;
            } else {
                int64_t cost = rnd() % 4 == 0 ? random_cost(&p) : 1;
                bool ok = tg_ratelimit_gcra(&tat, now, &p, cost, &got);
                bool mok = model_take(&m, now, cost, &want);
                if (ok != mok || !same_result(&got, &want)) {
                    fprintf(stderr,
                            "seq %d step %d: iv=%" PRId64 " burst=%" PRId64 " delay=%" PRId64
                            " cost=%" PRId64 "\n",
                            seq, i, p.interval_ns, p.burst, p.delay, cost);
                    print_result("gcra ", &got);
                    print_result("model", &want);
                    CHECK(false);
                    return;
                }
                if (ok) {
                    kept += cost;
                    if (nout < 64)
                        outstanding[nout++] = cost;
                }
            }
            CHECK(kept <= (i128)m.burst + m.delay + (now - start) / p.interval_ns);
            /* Never more than full. */
            struct tg_ratelimit_result r;
            tg_ratelimit_gcra_peek(tat, now, &p, 0, &r);
            CHECK(r.remaining >= 0 && r.remaining <= m.burst);
        }
    }
    CHECK(refunds > 50000);
}

TEST(test_parse_rate_accepts)
{
    struct {
        const char *s;
        int64_t iv, n, period;
    } ok[] = {
        {"10/s", 100000000, 10, 1},
        {"5/m", 12 * SEC, 5, 60},
        {"1000/h", 3600000000, 1000, 3600},
        {"86400/d", SEC, 86400, 86400},
        {"1/s", SEC, 1, 1},
        {"1/d", DAY, 1, 86400},
        {"3/s", 333333334, 3, 1},
        {"7/d", 12342857142858, 7, 86400},
        {"1000000000/s", 1, 1000000000, 1},
        {"1000000000/d", 86400, 1000000000, 86400},
        {"007/m", 8571428572, 7, 60},
    };
    for (size_t i = 0; i < N_ELEMS(ok); i++) {
        int64_t iv = -1, n = -1, period = -1;
        CHECK_EQ_INT(tg_ratelimit_parse_rate(ok[i].s, &iv, &n, &period), 0);
        CHECK_EQ_INT(iv, ok[i].iv);
        CHECK_EQ_INT(n, ok[i].n);
        CHECK_EQ_INT(period, ok[i].period);
    }
}

TEST(test_parse_rate_rejects)
{
    const char *bad[] = {
        "",       "/s",    "0/s",          "-1/s", "+1/s",
        " 1/s",   "1/s ",  "1/x",          "1/",   "1",
        "1//s",   "1/sec", "1000000001/s", "1/S",  "1.5/s",
        "1 / s",  "s/1",   "1/s\n",        "1/ss", "99999999999999999999/s",
        "0x10/s", "1/min", "10/s/",        "١/s",
    };
    for (size_t i = 0; i < N_ELEMS(bad); i++) {
        int64_t iv = -7, n = -7, period = -7;
        if (tg_ratelimit_parse_rate(bad[i], &iv, &n, &period) != -1)
            fprintf(stderr, "accepted \"%s\"\n", bad[i]);
        CHECK(iv == -7 && n == -7 && period == -7);
    }
    int64_t iv, n, period;
    CHECK_EQ_INT(tg_ratelimit_parse_rate(NULL, &iv, &n, &period), -1);
}

/* Rounding up: never more than count tokens per period in steady state,
 * and the interval is the smallest that guarantees it. */
TEST(test_parse_rate_rounding)
{
    const char *units = "smhd";
    int64_t periods[] = {1, 60, 3600, 86400};
    for (int u = 0; u < 4; u++) {
        for (int i = 0; i < 2000; i++) {
            int64_t n = i < 1000 ? i + 1 : rnd_range(1, TG_RATELIMIT_COUNT_MAX);
            char buf[32];
            snprintf(buf, sizeof(buf), "%" PRId64 "/%c", n, units[u]);
            int64_t iv, cnt, period;
            CHECK_EQ_INT(tg_ratelimit_parse_rate(buf, &iv, &cnt, &period), 0);
            i128 pns = (i128)periods[u] * SEC;
            CHECK((i128)iv * n >= pns);
            CHECK((i128)(iv - 1) * n < pns);
            CHECK(iv >= 1 && iv <= DAY);
        }
    }
}

int main(void)
{
    RUN(test_gcra_matches_model);
    RUN(test_peek_equals_take);
    RUN(test_clock_backwards_bound);
    RUN(test_clock_backwards_after_burst);
    RUN(test_burst_one);
    RUN(test_first_burst_pass_at_one_instant);
    RUN(test_interval_one_ns_burst_2_31);
    RUN(test_interval_one_day);
    RUN(test_burst_2_31_one_day_capped);
    RUN(test_cost_edges);
    RUN(test_delay_semantics);
    RUN(test_idle);
    RUN(test_extreme_values_no_overflow);
    RUN(test_refund_restores_take);
    RUN(test_refund_never_overfull);
    RUN(test_refund_interleaved_with_takes);
    RUN(test_parse_rate_accepts);
    RUN(test_parse_rate_rejects);
    RUN(test_parse_rate_rounding);
    return TEST_SUMMARY();
}
