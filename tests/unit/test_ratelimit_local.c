/* The in-process store: take/peek/reset/refund, all-or-nothing batches,
 * two threads on one key with an injected clock, bounded memory under a
 * flood of keys, eviction order, locked keys surviving a flood and the
 * overflow buckets. Prints bytes per key and ns per take. */
#include "../../src/ratelimit_local.c"

#include <inttypes.h>
#include <stdio.h>

#include "test.h"

static const int64_t SEC = INT64_C(1000000000);
static const int64_t MS_NS = INT64_C(1000000);

/* Keys shaped like the policy layer's: a 4-byte policy id and a 16-byte
 * address. */
struct key {
    uint32_t policy;
    unsigned char addr[16];
};

static struct key mkkey(uint32_t policy, uint64_t n)
{
    struct key k;
    memset(&k, 0, sizeof(k));
    k.policy = policy;
    memcpy(k.addr, &n, sizeof(n));
    k.addr[15] = 0x5a;
    return k;
}

static struct tg_ratelimit_op mkop(const struct key *k, const struct tg_ratelimit_params *p,
                                   int64_t cost)
{
    struct tg_ratelimit_op op;
    memset(&op, 0, sizeof(op));
    op.key = k;
    op.keylen = sizeof(*k);
    op.params = p;
    op.cost = cost;
    return op;
}

static bool take1(struct tg_ratelimit_local *t, const struct key *k,
                  const struct tg_ratelimit_params *p, int64_t cost, int64_t now)
{
    struct tg_ratelimit_op op = mkop(k, p, cost);
    return tg_ratelimit_local_take(t, &op, 1, now);
}

static int64_t remaining(struct tg_ratelimit_local *t, const struct key *k,
                         const struct tg_ratelimit_params *p, int64_t now)
{
    struct tg_ratelimit_op op = mkop(k, p, 0);
    tg_ratelimit_local_peek(t, &op, 1, now);
    return op.result.remaining;
}

static uint32_t shard_index(struct tg_ratelimit_local *t, const void *key, size_t len)
{
    return (uint32_t)(tg_siphash13(key, len, t->k0, t->k1) >> 32) & t->smask;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

TEST(test_new_rejects_bad_args)
{
    CHECK(tg_ratelimit_local_new(0, 4) == NULL);
    CHECK(tg_ratelimit_local_new(100, 0) == NULL);
    CHECK(tg_ratelimit_local_new(100, 3) == NULL);
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(3, 16);
    CHECK(t != NULL);
    CHECK_EQ_INT(t->smask + 1, 2); /* fewer shards than keys */
    tg_ratelimit_local_free(t);
    tg_ratelimit_local_free(NULL);
}

TEST(test_take_peek_reset)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1000, 4);
    struct tg_ratelimit_params p = {SEC, 3, 0};
    struct key a = mkkey(1, 1), b = mkkey(1, 2);
    int64_t now = 100 * SEC;

    CHECK_EQ_INT(remaining(t, &a, &p, now), 3);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 0); /* peek stores nothing */
    for (int i = 0; i < 3; i++) {
        struct tg_ratelimit_op op = mkop(&a, &p, 1);
        CHECK(tg_ratelimit_local_take(t, &op, 1, now));
        CHECK(op.result.allowed);
        CHECK_EQ_INT(op.result.remaining, 2 - i);
    }
    struct tg_ratelimit_op op = mkop(&a, &p, 1);
    CHECK(!tg_ratelimit_local_take(t, &op, 1, now));
    CHECK_EQ_INT(op.result.retry_after_ns, SEC);
    CHECK_EQ_INT(op.result.reset_ns, 3 * SEC);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 1);
    /* Peek says what take would, and does not spend. */
    op = mkop(&a, &p, 1);
    tg_ratelimit_local_peek(t, &op, 1, now + SEC);
    CHECK(op.result.allowed);
    tg_ratelimit_local_peek(t, &op, 1, now + SEC);
    CHECK(op.result.allowed);
    CHECK(take1(t, &a, &p, 1, now + SEC));
    CHECK(!take1(t, &a, &p, 1, now + SEC));
    /* b is independent. */
    CHECK(take1(t, &b, &p, 3, now));
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 2);
    /* Reset forgets: full bucket again. */
    CHECK(tg_ratelimit_local_reset(t, &a, sizeof(a)));
    CHECK(!tg_ratelimit_local_reset(t, &a, sizeof(a)));
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 1);
    CHECK_EQ_INT(remaining(t, &a, &p, now + SEC), 3);
    CHECK_EQ_INT(remaining(t, &b, &p, now), 0);
    /* A refused new key and a cost-0 look are not stored. */
    struct key c = mkkey(1, 3);
    CHECK(!take1(t, &c, &p, 4, now));
    CHECK(take1(t, &c, &p, 0, now));
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 1);
    /* nops 0 is trivially allowed. */
    CHECK(tg_ratelimit_local_take(t, NULL, 0, now));
    tg_ratelimit_local_free(t);
}

TEST(test_keys_compared_as_bytes)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1000, 2);
    struct tg_ratelimit_params p = {SEC, 1, 0};
    int64_t now = SEC;
    /* Empty key, prefixes, inline/heap boundary, longest accepted. */
    static unsigned char big[TG_RATELIMIT_LOCAL_KEY_MAX + 1];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (unsigned char)(i * 7);
    size_t lens[] = {
        0, 1, 7, 8, 37, 38, 39, 45, 46, 47, 48, 64, 100, 511, TG_RATELIMIT_LOCAL_KEY_MAX};
    size_t n = sizeof(lens) / sizeof(lens[0]);
    for (size_t i = 0; i < n; i++) {
        struct tg_ratelimit_op op = {big, lens[i], &p, 1};
        CHECK(tg_ratelimit_local_take(t, &op, 1, now));
    }
    CHECK_EQ_INT(tg_ratelimit_local_count(t), n);
    size_t heap = 0;
    for (size_t i = 0; i < n; i++)
        heap += lens[i] > KEY_INLINE ? lens[i] : 0;
    size_t s = 0;
    for (uint32_t i = 0; i <= t->smask; i++)
        s += t->shards[i].heap_bytes;
    CHECK_EQ_INT(s, heap);
    for (size_t i = 0; i < n; i++) {
        struct tg_ratelimit_op op = {big, lens[i], &p, 1};
        CHECK(!tg_ratelimit_local_take(t, &op, 1, now));
    }
    /* Same length, last byte differs: another key. */
    static unsigned char other[100];
    memcpy(other, big, sizeof(other));
    other[99] ^= 1;
    struct tg_ratelimit_op op = {other, 100, &p, 1};
    CHECK(tg_ratelimit_local_take(t, &op, 1, now));
    /* Too long: refused, not stored, never spends. */
    struct tg_ratelimit_op toolong = {big, sizeof(big), &p, 1};
    CHECK(!tg_ratelimit_local_take(t, &toolong, 1, now));
    CHECK_EQ_INT(toolong.result.retry_after_ns, INT64_MAX);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), n + 1);
    for (size_t i = 0; i < n; i++)
        CHECK(tg_ratelimit_local_reset(t, big, lens[i]));
    CHECK(tg_ratelimit_local_reset(t, other, 100));
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 0);
    s = 0;
    for (uint32_t i = 0; i <= t->smask; i++)
        s += t->shards[i].heap_bytes;
    CHECK_EQ_INT(s, 0);
    tg_ratelimit_local_free(t);
}

/* Finds a key of policy `policy` in shard `want`. */
static struct key key_in_shard(struct tg_ratelimit_local *t, uint32_t policy, uint32_t want,
                               uint64_t *n)
{
    for (;; (*n)++) {
        struct key k = mkkey(policy, *n);
        if (shard_index(t, &k, sizeof(k)) == want) {
            (*n)++;
            return k;
        }
    }
}

TEST(test_batch_all_or_nothing)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1000, 8);
    struct tg_ratelimit_params p = {SEC, 3, 0};
    struct tg_ratelimit_params q = {SEC, 10, 0};
    int64_t now = 50 * SEC;
    uint64_t n = 0;
    /* Keys in shards 5, 2, 7: the batch names them out of lock order. */
    struct key a = key_in_shard(t, 1, 5, &n);
    struct key b = key_in_shard(t, 1, 2, &n);
    struct key c = key_in_shard(t, 2, 7, &n);
    CHECK(take1(t, &a, &p, 2, now)); /* a: 1 left */
    CHECK(take1(t, &b, &p, 3, now)); /* b: 0 left */

    struct tg_ratelimit_op ops[3] = {mkop(&a, &p, 1), mkop(&b, &p, 1), mkop(&c, &q, 4)};
    CHECK(!tg_ratelimit_local_take(t, ops, 3, now));
    CHECK(ops[0].result.allowed);
    CHECK(!ops[1].result.allowed);
    CHECK_EQ_INT(ops[1].result.retry_after_ns, SEC);
    CHECK(ops[2].result.allowed);
    CHECK_EQ_INT(ops[2].result.remaining, 6);
    /* Nothing spent. */
    CHECK_EQ_INT(remaining(t, &a, &p, now), 1);
    CHECK_EQ_INT(remaining(t, &c, &q, now), 10);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 2);

    /* One second later b has a token: all three pass and all spend. */
    now += SEC;
    CHECK(tg_ratelimit_local_take(t, ops, 3, now));
    CHECK_EQ_INT(remaining(t, &a, &p, now), 1);
    CHECK_EQ_INT(remaining(t, &b, &p, now), 0);
    CHECK_EQ_INT(remaining(t, &c, &q, now), 6);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 3);

    /* Batch peek: results as take, nothing spent. */
    tg_ratelimit_local_peek(t, ops, 3, now);
    CHECK(ops[0].result.allowed && !ops[1].result.allowed);
    CHECK_EQ_INT(remaining(t, &a, &p, now), 1);

    /* Too many ops: refused whole. */
    struct tg_ratelimit_op many[TG_RATELIMIT_LOCAL_MAX_OPS + 1];
    for (size_t i = 0; i < TG_RATELIMIT_LOCAL_MAX_OPS + 1; i++)
        many[i] = mkop(&c, &q, 0);
    CHECK(!tg_ratelimit_local_take(t, many, TG_RATELIMIT_LOCAL_MAX_OPS + 1, now));
    CHECK(tg_ratelimit_local_take(t, many, TG_RATELIMIT_LOCAL_MAX_OPS, now));
    tg_ratelimit_local_free(t);
}

TEST(test_batch_same_key_twice)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1000, 4);
    struct tg_ratelimit_params p = {SEC, 3, 0};
    struct tg_ratelimit_params p5 = {SEC, 5, 0};
    int64_t now = 10 * SEC;
    struct key k = mkkey(7, 1), other = mkkey(7, 2);

    /* 2 + 2 > 3: the second sees the first's spend; nothing is spent. */
    struct tg_ratelimit_op ops[3] = {mkop(&k, &p, 2), mkop(&k, &p, 2)};
    CHECK(!tg_ratelimit_local_take(t, ops, 2, now));
    CHECK(ops[0].result.allowed);
    CHECK_EQ_INT(ops[0].result.remaining, 1);
    CHECK(!ops[1].result.allowed);
    CHECK_EQ_INT(ops[1].result.remaining, 1);
    CHECK_EQ_INT(remaining(t, &k, &p, now), 3);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 0);

    /* 1 + 2 = 3 passes; both spends stick. */
    ops[0] = mkop(&k, &p, 1);
    ops[1] = mkop(&other, &p, 1);
    ops[2] = mkop(&k, &p, 2);
    CHECK(tg_ratelimit_local_take(t, ops, 3, now));
    CHECK_EQ_INT(ops[0].result.remaining, 2);
    CHECK_EQ_INT(ops[2].result.remaining, 0);
    CHECK_EQ_INT(remaining(t, &k, &p, now), 0);
    CHECK_EQ_INT(remaining(t, &other, &p, now), 2);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 2);

    /* Same key under two policies' params (one bucket, two views). */
    CHECK(tg_ratelimit_local_reset(t, &k, sizeof(k)));
    ops[0] = mkop(&k, &p, 3);
    ops[1] = mkop(&k, &p5, 2);
    CHECK(tg_ratelimit_local_take(t, ops, 2, now));
    CHECK_EQ_INT(ops[1].result.remaining, 0);
    tg_ratelimit_local_free(t);
}

/* ---- refund ----------------------------------------------------------------
 */

static struct tg_ratelimit_op refund1(struct tg_ratelimit_local *t, const struct key *k,
                                      const struct tg_ratelimit_params *p, int64_t cost,
                                      int64_t now)
{
    struct tg_ratelimit_op op = mkop(k, p, cost);
    tg_ratelimit_local_refund(t, &op, 1, now);
    return op;
}

TEST(test_refund)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1000, 4);
    struct tg_ratelimit_params p = {SEC, 3, 0};
    struct key a = mkkey(1, 1), b = mkkey(1, 2), c = mkkey(1, 3);
    int64_t now = 100 * SEC;

    /* Reserve all three, give one back: one passes again, not two. */
    for (int i = 0; i < 3; i++)
        CHECK(take1(t, &a, &p, 1, now));
    CHECK(!take1(t, &a, &p, 1, now));
    struct tg_ratelimit_op op = refund1(t, &a, &p, 1, now);
    CHECK_EQ_INT(op.result.remaining, 1); /* a cost-0 peek after it */
    CHECK(!op.result.overflow);
    CHECK_EQ_INT(remaining(t, &a, &p, now), 1);
    CHECK(take1(t, &a, &p, 1, now));
    CHECK(!take1(t, &a, &p, 1, now));

    /* Given back to full: the entry goes (it carries nothing). */
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 1);
    op = refund1(t, &a, &p, 2, now);
    CHECK_EQ_INT(op.result.remaining, 2);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 1);
    op = refund1(t, &a, &p, 5, now); /* more than outstanding: full */
    CHECK_EQ_INT(op.result.remaining, 3);
    CHECK_EQ_INT(op.result.reset_ns, 0);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 0);
    CHECK_EQ_INT(remaining(t, &a, &p, now), 3);

    /* A key not held: nothing happens, nothing is stored. */
    op = refund1(t, &b, &p, 1, now);
    CHECK_EQ_INT(op.result.remaining, 3);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 0);

    /* Several ops: each on its own key, a key named twice twice; other
     * takes in between are kept. */
    CHECK(take1(t, &b, &p, 3, now));
    CHECK(take1(t, &c, &p, 2, now));
    CHECK(take1(t, &c, &p, 1, now + SEC / 2)); /* someone else's spend */
    struct tg_ratelimit_op ops[3] = {mkop(&b, &p, 1), mkop(&c, &p, 1), mkop(&b, &p, 1)};
    tg_ratelimit_local_refund(t, ops, 3, now + SEC / 2);
    CHECK_EQ_INT(ops[0].result.remaining, 1);
    CHECK_EQ_INT(ops[2].result.remaining, 2);
    /* c: 3 - 2 - 1 + 0.5 refilled + 1 back = 1.5 */
    CHECK_EQ_INT(ops[1].result.remaining, 1);
    CHECK_EQ_INT(ops[1].result.reset_ns, 3 * SEC / 2);

    /* Too long a key: skipped. */
    static unsigned char big[TG_RATELIMIT_LOCAL_KEY_MAX + 1];
    struct tg_ratelimit_op toolong = {big, sizeof(big), &p, 1, {0}, 0};
    tg_ratelimit_local_refund(t, &toolong, 1, now);
    tg_ratelimit_local_refund(t, NULL, 0, now);
    tg_ratelimit_local_free(t);
}

struct reserver {
    struct tg_ratelimit_local *t;
    const struct tg_ratelimit_params *p;
    const struct key *k, *own;
    int iters;
    int64_t now;
    int64_t failures; /* reservations kept */
};

/* Reserve, then give back all but every 7th (a "failure"), as the limiter
 * does around a forwarded request; half the reservations go in a batch
 * with the thread's own key. */
static void *reserver_run(void *arg)
{
    struct reserver *w = arg;
    for (int i = 0; i < w->iters; i++) {
        struct tg_ratelimit_op ops[2] = {mkop(w->k, w->p, 1), mkop(w->own, w->p, 1)};
        size_t n = i % 2 == 0 ? 1 : 2;
        if (!tg_ratelimit_local_take(w->t, ops, n, w->now))
            continue;
        if (i % 7 == 0) {
            w->failures++;
            /* The own key's reservation is still given back. */
            if (n == 2)
                tg_ratelimit_local_refund(w->t, &ops[1], 1, w->now);
            continue;
        }
        tg_ratelimit_local_refund(w->t, ops, n, w->now);
    }
    return NULL;
}

/* Two threads reserve and refund on one key at one instant: the refunds
 * are as atomic as the takes, so what is kept is exactly what was spent
 * and not refunded, never more than the budget, and the own keys (all
 * given back) end full and forgotten. */
TEST(test_refund_two_threads)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1000, 8);
    /* About 57,000 reservations are kept (one in 7 of 400,000): the budget
     * runs out late, so takes and refunds race for most of the run. */
    struct tg_ratelimit_params p = {3600 * SEC, 40000, 0};
    uint64_t n = 0;
    struct key shared = key_in_shard(t, 1, 3, &n);
    struct key own0 = key_in_shard(t, 2, 6, &n);
    struct key own1 = key_in_shard(t, 3, 1, &n);
    struct reserver w[2] = {{t, &p, &shared, &own0, 200000, 10 * SEC, 0},
                            {t, &p, &shared, &own1, 200000, 10 * SEC, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, reserver_run, &w[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    int64_t kept = w[0].failures + w[1].failures;
    CHECK_EQ_INT(kept, 40000); /* the budget, exactly: no more, none lost */
    CHECK_EQ_INT(remaining(t, &shared, &p, 10 * SEC), 0);
    CHECK(!tg_ratelimit_local_reset(t, &own0, sizeof(own0)));
    CHECK(!tg_ratelimit_local_reset(t, &own1, sizeof(own1)));
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 1);
    tg_ratelimit_local_free(t);
}

/* ---- two threads, one key, injected clock -------------------------------- */

struct phased {
    struct tg_ratelimit_local *t;
    const struct tg_ratelimit_params *p;
    pthread_barrier_t *bar;
    const int64_t *clock;
    int phases, per_phase;
    const struct key *shared, *own;
    bool batch, reversed;
    int64_t allowed;
};

static void *phased_run(void *arg)
{
    struct phased *w = arg;
    struct tg_ratelimit_params big = {3600 * SEC, 1000000, 0};
    for (int ph = 0; ph < w->phases; ph++) {
        pthread_barrier_wait(w->bar);
        int64_t now = w->clock[ph];
        for (int i = 0; i < w->per_phase; i++) {
            if (!w->batch) {
                w->allowed += take1(w->t, w->shared, w->p, 1, now);
                continue;
            }
            struct tg_ratelimit_op ops[2] = {mkop(w->shared, w->p, 1), mkop(w->own, &big, 1)};
            if (w->reversed) {
                struct tg_ratelimit_op tmp = ops[0];
                ops[0] = ops[1];
                ops[1] = tmp;
            }
            w->allowed += tg_ratelimit_local_take(w->t, ops, 2, now);
        }
    }
    return NULL;
}

/* Both threads take from one key at the same instants, phase by phase.
 * Every phase offers more attempts than tokens, whatever the interleaving,
 * so the total is exact: burst + (last instant - first) / interval. With
 * batches, each thread's own key (huge bucket, no refill) must have paid
 * exactly once per allowed batch: the all-or-nothing check under
 * concurrency, with the two threads naming the shards in opposite order. */
static void run_phased(bool batch)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1000, 8);
    struct tg_ratelimit_params p = {1000, 50, 0};
    enum { PHASES = 2000 };
    static int64_t clock[PHASES];
    uint64_t rng = 12345;
    clock[0] = 1000 * SEC;
    for (int i = 1; i < PHASES; i++) {
        rng = rng * 6364136223846793005u + 1442695040888963407u;
        clock[i] = clock[i - 1] + (int64_t)((rng >> 33) % 10000); /* <10 I */
    }
    uint64_t n = 0;
    struct key shared = key_in_shard(t, 1, 3, &n);
    struct key own0 = key_in_shard(t, 2, 6, &n);
    struct key own1 = key_in_shard(t, 3, 1, &n);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    struct phased w[2] = {
        {t, &p, &bar, clock, PHASES, 64, &shared, &own0, batch, false, 0},
        {t, &p, &bar, clock, PHASES, 64, &shared, &own1, batch, true, 0},
    };
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, phased_run, &w[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&bar);

    int64_t want = p.burst + (clock[PHASES - 1] - clock[0]) / p.interval_ns;
    CHECK_EQ_INT(w[0].allowed + w[1].allowed, want);
    CHECK(w[0].allowed > 0 && w[1].allowed > 0);
    if (batch) {
        struct tg_ratelimit_params big = {3600 * SEC, 1000000, 0};
        int64_t end = clock[PHASES - 1];
        CHECK_EQ_INT(remaining(t, &own0, &big, end), 1000000 - w[0].allowed);
        CHECK_EQ_INT(remaining(t, &own1, &big, end), 1000000 - w[1].allowed);
    }
    tg_ratelimit_local_free(t);
}

TEST(test_two_threads_one_key_exact)
{
    run_phased(false);
}

TEST(test_two_threads_batches_exact)
{
    run_phased(true);
}

struct freerun {
    struct tg_ratelimit_local *t;
    const struct tg_ratelimit_params *p;
    _Atomic int64_t *clock;
    const struct key *k;
    int iters;
    int64_t granted, lo, hi;
};

static void *freerun_run(void *arg)
{
    struct freerun *w = arg;
    w->lo = INT64_MAX;
    w->hi = 0;
    for (int i = 0; i < w->iters; i++) {
        int64_t now = atomic_fetch_add(w->clock, 37);
        int64_t cost = 1 + i % 3;
        if (now < w->lo)
            w->lo = now;
        if (now > w->hi)
            w->hi = now;
        if (take1(w->t, w->k, w->p, cost, now))
            w->granted += cost;
    }
    return NULL;
}

/* A clock read outside the lock reaches it out of order (a small backward
 * jump): still never more than burst + elapsed / interval. */
TEST(test_two_threads_free_running_bound)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1000, 4);
    struct tg_ratelimit_params p = {1000, 20, 0};
    _Atomic int64_t clock = 5 * SEC;
    struct key k = mkkey(9, 9);
    struct freerun w[2] = {{t, &p, &clock, &k, 300000, 0, 0, 0},
                           {t, &p, &clock, &k, 300000, 0, 0, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, freerun_run, &w[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    int64_t lo = w[0].lo < w[1].lo ? w[0].lo : w[1].lo;
    int64_t hi = w[0].hi > w[1].hi ? w[0].hi : w[1].hi;
    int64_t granted = w[0].granted + w[1].granted;
    int64_t bound = p.burst + (hi - lo) / p.interval_ns;
    CHECK(granted <= bound);
    /* And the limiter is not stingy either: within a few tokens. */
    CHECK(granted >= bound - 50);
    tg_ratelimit_local_free(t);
}

/* ---- bounds and eviction ---------------------------------------------------
 */

TEST(test_flood_stays_bounded)
{
    const size_t cap = 100000;
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(cap, 16);
    struct tg_ratelimit_params p = {SEC, 5, 0};
    int64_t now = SEC;
    size_t mem_at_cap = 0;
    for (uint64_t i = 0; i < 2000000; i++) {
        struct key k = mkkey(1, i);
        /* Half the flood at one instant (every key active), half with the
         * clock moving (older keys go idle). */
        if (i >= 1000000)
            now += 2000;
        CHECK(take1(t, &k, &p, 1, now));
        if (i % 100000 == 99999) {
            size_t c = tg_ratelimit_local_count(t);
            CHECK(c <= cap);
            CHECK(c >= cap * 9 / 10);
            size_t m = tg_ratelimit_local_memory(t);
            if (mem_at_cap == 0)
                mem_at_cap = m;
            CHECK(m == mem_at_cap); /* no growth past the cap */
        }
    }
    size_t m = tg_ratelimit_local_memory(t);
    CHECK(m <= cap * 72 + 16 * 1024);
    printf("flood: 2M keys into max_keys %zu: count %zu, %zu bytes\n", cap,
           tg_ratelimit_local_count(t), m);
    tg_ratelimit_local_free(t);
}

/* Keys whose bucket is full again go before keys still spending, and among
 * the active ones the closest to full goes first. */
TEST(test_idle_evicted_before_active)
{
    enum { CAP = 1000 };
    for (int layout = 0; layout < 2; layout++) {
        struct tg_ratelimit_local *t = tg_ratelimit_local_new(CAP, 1);
        struct tg_ratelimit_params fast = {SEC, 1, 0};        /* idle 1s */
        struct tg_ratelimit_params slow = {3600 * SEC, 1, 0}; /* 1 h */
        int64_t now = SEC;
        /* layout 0: interleaved; layout 1: random, 1 in 4 goes idle. */
        uint64_t rng = 99;
        bool active[CAP];
        for (int i = 0; i < CAP; i++) {
            rng = rng * 6364136223846793005u + 1442695040888963407u;
            active[i] = layout == 0 ? i % 2 == 0 : (rng >> 40) % 4 != 0;
            struct key k = mkkey(1, (uint64_t)i);
            CHECK(take1(t, &k, active[i] ? &slow : &fast, 1, now));
        }
        CHECK_EQ_INT(tg_ratelimit_local_count(t), CAP);
        int nidle = 0;
        for (int i = 0; i < CAP; i++)
            nidle += !active[i];
        now += 2 * SEC;
        for (int i = 0; i < nidle; i++) {
            struct key k = mkkey(2, (uint64_t)i);
            CHECK(take1(t, &k, &slow, 1, now));
        }
        CHECK(tg_ratelimit_local_count(t) <= CAP);
        int kept = 0;
        for (int i = 0; i < CAP; i++)
            if (active[i]) {
                struct key k = mkkey(1, (uint64_t)i);
                kept += remaining(t, &k, &slow, now) == 0;
            }
        CHECK_EQ_INT(kept, CAP - nidle);
        tg_ratelimit_local_free(t);
    }

    /* No idle key at all: the one closest to full goes. */
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(8, 1);
    struct tg_ratelimit_params p = {SEC, 100, 0};
    for (int i = 0; i < 8; i++) {
        struct key k = mkkey(3, (uint64_t)i);
        CHECK(take1(t, &k, &p, i == 5 ? 1 : 50, SEC));
    }
    struct key k = mkkey(4, 0);
    CHECK(take1(t, &k, &p, 1, SEC));
    struct key k5 = mkkey(3, 5);
    CHECK(!tg_ratelimit_local_reset(t, &k5, sizeof(k5)));
    for (int i = 0; i < 8; i++) {
        struct key ki = mkkey(3, (uint64_t)i);
        CHECK(i == 5 || remaining(t, &ki, &p, SEC) == 50);
    }
    tg_ratelimit_local_free(t);
}

/* Whether the table holds the key (an entry, whatever its state). */
static bool held(struct tg_ratelimit_local *t, const struct key *k)
{
    uint64_t h = tg_siphash13(k, sizeof(*k), t->k0, t->k1);
    struct shard *s = shard_of(t, h);
    lock_acquire(&s->lock);
    bool in = find(s, (uint32_t)h, k, sizeof(*k)) != NONE;
    lock_release(&s->lock);
    return in;
}

static struct tg_ratelimit_op mkop_cls(const struct key *k, const struct tg_ratelimit_params *p,
                                       int64_t cost, uint16_t cls)
{
    struct tg_ratelimit_op op = mkop(k, p, cost);
    op.cls = cls;
    return op;
}

/* Regression: when a shard was full, eviction dropped the swept key with
 * the smallest TAT, comparing absolute times across policies. A new key of
 * a policy whose one spend already lands past a lockout's TAT (a daily
 * quota: now + 2.4 h, with 9 tokens of 10 left) looked further from full
 * than a "10 failed logins per hour" key that had spent all 10 (now +
 * 1 h), so a flood of such keys evicted the lockouts and the guessing
 * started again. Now a locked key (less than one token) is never evicted.
 * A flood of a fast policy (here 100/s) could not do it before either; it
 * is kept as the plain case. In a 1-shard table (deterministic) and in
 * the default 64-shard split (16 keys a shard), by single takes and by
 * batches. */
TEST(test_flood_cannot_reset_lock)
{
    struct tg_ratelimit_params login = {360 * SEC, 10, 0};  /* 10/h */
    struct tg_ratelimit_params daily = {8640 * SEC, 10, 0}; /* 10/d */
    struct tg_ratelimit_params fast = {SEC / 100, 100, 0};  /* 100/s */
    const struct tg_ratelimit_params *floods[2] = {&daily, &fast};
    unsigned shard_counts[2] = {1, 64};
    for (int f = 0; f < 2; f++) {
        for (int sc = 0; sc < 2; sc++) {
            struct tg_ratelimit_local *t = tg_ratelimit_local_new(1024, shard_counts[sc]);
            int64_t now = 1000 * SEC;
            for (uint64_t i = 0; i < 10; i++) {
                struct key k = mkkey(1, i);
                struct tg_ratelimit_op op = mkop_cls(&k, &login, 10, 0);
                CHECK(tg_ratelimit_local_take(t, &op, 1, now));
                CHECK_EQ_INT(op.result.remaining, 0);
            }
            int overflowed = 0;
            for (uint64_t i = 0; i < 5000; i += 2) {
                now += 2 * SEC / 1000; /* 5,000 new keys in 5 s */
                struct key a = mkkey(2, i), b = mkkey(2, i + 1);
                struct tg_ratelimit_op ops[2] = {mkop_cls(&a, floods[f], 1, 1),
                                                 mkop_cls(&b, floods[f], 1, 1)};
                if (i % 4 == 0) {
                    CHECK(tg_ratelimit_local_take(t, ops, 2, now));
                } else {
                    CHECK(tg_ratelimit_local_take(t, &ops[0], 1, now));
                    CHECK(tg_ratelimit_local_take(t, &ops[1], 1, now));
                }
                overflowed += ops[0].result.overflow + ops[1].result.overflow;
            }
            /* The flood's keys are not locked: they were the ones to go. */
            CHECK_EQ_INT(overflowed, 0);
            CHECK(tg_ratelimit_local_count(t) <= 1024);
            int still = 0;
            for (uint64_t i = 0; i < 10; i++) {
                struct key k = mkkey(1, i);
                still += held(t, &k) && !take1(t, &k, &login, 1, now);
            }
            if (still != 10)
                fprintf(stderr, "flood %d, %u shard(s): %d of 10 locks left\n", f, shard_counts[sc],
                        still);
            CHECK_EQ_INT(still, 10);
            tg_ratelimit_local_free(t);
        }
    }
}

/* A table full of locked keys: nothing can be evicted, so new keys are
 * not stored and share their class's overflow bucket (per shard): the
 * (burst + 1)-th new key of a class is refused, another class has its
 * own, the locks stay, and result.overflow says so. */
TEST(test_overflow_bucket_when_all_locked)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1024, 1);
    struct tg_ratelimit_params lock = {3600 * SEC, 1, 0}; /* 1 spend locks */
    struct tg_ratelimit_params p = {12 * SEC, 5, 0};      /* 5/m */
    int64_t now = 1000 * SEC;
    for (uint64_t i = 0; i < 1024; i++) {
        struct key k = mkkey(1, i);
        CHECK(take1(t, &k, &lock, 1, now));
    }
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 1024);

    uint64_t n = 0;
    for (int i = 0; i < 5; i++) {
        struct key k = mkkey(3, n++);
        struct tg_ratelimit_op op = mkop_cls(&k, &p, 1, 3);
        CHECK(tg_ratelimit_local_take(t, &op, 1, now));
        CHECK(op.result.overflow);
        CHECK_EQ_INT(op.result.remaining, 4 - i);
        CHECK(!held(t, &k));
    }
    struct key k6 = mkkey(3, n++);
    struct tg_ratelimit_op op = mkop_cls(&k6, &p, 1, 3);
    CHECK(!tg_ratelimit_local_take(t, &op, 1, now));
    CHECK(op.result.overflow);
    CHECK_EQ_INT(op.result.retry_after_ns, 12 * SEC);
    /* Peek says the same, and spends nothing. */
    op = mkop_cls(&k6, &p, 1, 3);
    tg_ratelimit_local_peek(t, &op, 1, now + 12 * SEC);
    CHECK(op.result.allowed && op.result.overflow);
    tg_ratelimit_local_peek(t, &op, 1, now + 12 * SEC);
    CHECK(op.result.allowed);
    /* Class 67 is bucket 67 % 64 = 3: refused too; class 4 has its own. */
    op = mkop_cls(&k6, &p, 1, 67);
    CHECK(!tg_ratelimit_local_take(t, &op, 1, now));
    op = mkop_cls(&k6, &p, 1, 4);
    CHECK(tg_ratelimit_local_take(t, &op, 1, now));
    CHECK(op.result.overflow);
    CHECK_EQ_INT(op.result.remaining, 4);

    /* A reservation decided on the overflow bucket is refunded there when
     * the take's result comes back with it. */
    op = mkop_cls(&k6, &p, 1, 3);
    op.result.overflow = true;
    tg_ratelimit_local_refund(t, &op, 1, now);
    CHECK(op.result.overflow);
    CHECK_EQ_INT(op.result.remaining, 1);
    op = mkop_cls(&k6, &p, 1, 3);
    CHECK(tg_ratelimit_local_take(t, &op, 1, now));
    op = mkop_cls(&k6, &p, 1, 3);
    CHECK(!tg_ratelimit_local_take(t, &op, 1, now));

    /* A batch of two new keys of one class: the second sees the first's
     * spend on the shared bucket; refused together, nothing spent. */
    struct key b1 = mkkey(5, 1), b2 = mkkey(5, 2);
    struct tg_ratelimit_op ops[2] = {mkop_cls(&b1, &p, 3, 5), mkop_cls(&b2, &p, 3, 5)};
    CHECK(!tg_ratelimit_local_take(t, ops, 2, now));
    CHECK(ops[0].result.allowed && ops[0].result.overflow);
    CHECK(!ops[1].result.allowed && ops[1].result.overflow);
    CHECK_EQ_INT(ops[1].result.remaining, 2);
    ops[1] = mkop_cls(&b2, &p, 2, 5);
    CHECK(tg_ratelimit_local_take(t, ops, 2, now));
    ops[0] = mkop_cls(&b1, &p, 1, 5);
    CHECK(!tg_ratelimit_local_take(t, ops, 1, now)); /* 3 + 2 spent */

    /* The locks held throughout, and nothing new was stored. */
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 1024);
    int locked = 0;
    for (uint64_t i = 0; i < 1024; i++) {
        struct key k = mkkey(1, i);
        locked += remaining(t, &k, &lock, now) == 0;
    }
    CHECK_EQ_INT(locked, 1024);

    /* Once they unlock, new keys get entries again. */
    now += 3600 * SEC;
    struct key late = mkkey(3, n++);
    op = mkop_cls(&late, &p, 1, 3);
    CHECK(tg_ratelimit_local_take(t, &op, 1, now));
    CHECK(!op.result.overflow);
    CHECK(held(t, &late));
    tg_ratelimit_local_free(t);
}

/* Idle keys (any policy) go first; then, among the rest, the key with the
 * largest fraction of its own tokens left, not the smallest TAT; a locked
 * key never, even with the smallest TAT of all. */
TEST(test_evict_by_own_fullness)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(8, 1);
    struct tg_ratelimit_params one = {SEC, 1, 0};
    struct tg_ratelimit_params l = {1500 * MS_NS, 1, 0};
    struct tg_ratelimit_params big = {SEC, 100, 0};
    struct tg_ratelimit_params two = {SEC, 2, 0};
    struct tg_ratelimit_params ten = {SEC, 10, 0};
    int64_t t0 = 1000 * SEC;
    struct key f1 = mkkey(1, 1), f2 = mkkey(1, 2), lk = mkkey(2, 0), a = mkkey(3, 0),
               b = mkkey(4, 0), d[3];
    CHECK(take1(t, &f1, &one, 1, t0)); /* idle at t0 + 1 s */
    CHECK(take1(t, &f2, &one, 1, t0));
    CHECK(take1(t, &lk, &l, 1, t0));                /* locked, TAT t0 + 1.5 s */
    CHECK(take1(t, &a, &big, 10, t0));              /* TAT t0 + 10 s */
    CHECK(take1(t, &b, &two, 1, t0 + 600 * MS_NS)); /* TAT t0 + 1.6 s */
    for (int i = 0; i < 3; i++) {
        d[i] = mkkey(5, (uint64_t)i);
        CHECK(take1(t, &d[i], &ten, 8, t0)); /* TAT t0 + 8 s */
    }
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 8);

    /* At t0 + 1 s: both idle keys go for the first new key. */
    int64_t now = t0 + SEC;
    struct key nk[4];
    for (int i = 0; i < 4; i++)
        nk[i] = mkkey(6, (uint64_t)i);
    CHECK(take1(t, &nk[0], &ten, 5, now));
    CHECK(!held(t, &f1) && !held(t, &f2));
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 7);
    CHECK(take1(t, &nk[1], &ten, 5, now));
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 8);
    /* Full, nothing idle. Left: a 91%, b 70%, new ones 50%, d 30%, lk
     * locked (and the smallest TAT: the old rule took it first). */
    CHECK(take1(t, &nk[2], &ten, 5, now));
    CHECK(!held(t, &a));
    CHECK(held(t, &lk) && held(t, &b));
    CHECK(take1(t, &nk[3], &ten, 5, now));
    CHECK(!held(t, &b));
    CHECK(held(t, &lk));
    for (int i = 0; i < 3; i++)
        CHECK(held(t, &d[i]));
    CHECK_EQ_INT(remaining(t, &lk, &l, now), 0);
    tg_ratelimit_local_free(t);

    /* An entry is judged by the bucket of its last spend (a reload that
     * changes a policy takes effect at the key's next spend): x, locked
     * under 2/2h, then spent under 10000/10000s, is 64% full, not locked,
     * and goes for a new key, by a single take and by a batch. */
    struct tg_ratelimit_params slow = {3600 * SEC, 2, 0};
    struct tg_ratelimit_params wide = {SEC, 10000, 0};
    for (int batch = 0; batch < 2; batch++) {
        t = tg_ratelimit_local_new(8, 1);
        for (uint64_t i = 0; i < 7; i++) {
            struct key k = mkkey(7, i);
            CHECK(take1(t, &k, &slow, 2, t0));
        }
        struct key x = mkkey(8, 0), y = mkkey(8, 1), z = mkkey(9, 0);
        CHECK(take1(t, &x, &slow, 2, t0)); /* locked: TAT t0 + 2 h */
        struct tg_ratelimit_op ops[2] = {mkop(&x, &wide, 1), mkop(&y, &wide, 0)};
        CHECK(tg_ratelimit_local_take(t, ops, batch ? 2 : 1, t0));
        struct tg_ratelimit_op op = mkop(&z, &wide, 1);
        CHECK(tg_ratelimit_local_take(t, &op, 1, t0));
        CHECK(!op.result.overflow);
        CHECK(!held(t, &x) && held(t, &z));
        tg_ratelimit_local_free(t);
    }
}

/* In a batch, room for a new key is never made by dropping an entry the
 * same batch names (its decision would then be stored nowhere); and two
 * new keys of one batch in one full shard both get room. */
TEST(test_batch_room_spares_own_entries)
{
    struct tg_ratelimit_params lock = {3600 * SEC, 1, 0};
    struct tg_ratelimit_params p = {SEC, 10, 0};
    int64_t now = 1000 * SEC;

    /* 15 locked keys and k, the only one that could go. */
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(16, 1);
    for (uint64_t i = 0; i < 15; i++) {
        struct key x = mkkey(1, i);
        CHECK(take1(t, &x, &lock, 1, now));
    }
    struct key k = mkkey(2, 0), nk = mkkey(3, 0);
    CHECK(take1(t, &k, &p, 1, now));
    struct tg_ratelimit_op ops[2] = {mkop_cls(&k, &p, 1, 0), mkop_cls(&nk, &p, 1, 2)};
    CHECK(tg_ratelimit_local_take(t, ops, 2, now));
    CHECK(!ops[0].result.overflow);
    CHECK(ops[1].result.overflow);
    CHECK(held(t, &k) && !held(t, &nk));
    CHECK_EQ_INT(remaining(t, &k, &p, now), 8);
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 16);
    tg_ratelimit_local_free(t);

    /* 16 evictable keys, a batch of two new ones: both stored. */
    t = tg_ratelimit_local_new(16, 1);
    for (uint64_t i = 0; i < 16; i++) {
        struct key x = mkkey(1, i);
        CHECK(take1(t, &x, &p, 1, now));
    }
    struct key n1 = mkkey(4, 1), n2 = mkkey(4, 2);
    ops[0] = mkop(&n1, &p, 2);
    ops[1] = mkop(&n2, &p, 2);
    CHECK(tg_ratelimit_local_take(t, ops, 2, now));
    CHECK(!ops[0].result.overflow && !ops[1].result.overflow);
    CHECK(held(t, &n1) && held(t, &n2));
    CHECK_EQ_INT(tg_ratelimit_local_count(t), 16);
    tg_ratelimit_local_free(t);
}

/* Bytes per key with 1M keys (the figure the docs quote). */
TEST(test_bytes_per_key)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1000000, 16);
    struct tg_ratelimit_params p = {SEC, 10, 0};
    for (uint64_t i = 0; i < 1000000; i++) {
        struct key k = mkkey(1, i);
        take1(t, &k, &p, 1, SEC);
    }
    size_t c = tg_ratelimit_local_count(t);
    size_t m = tg_ratelimit_local_memory(t);
    double per = (double)m / (double)c;
    printf("memory: %zu keys of %zu bytes, %zu bytes, %.1f bytes/key\n", c, sizeof(struct key), m,
           per);
    CHECK(c >= 990000);
    CHECK(per <= 70.0);
    tg_ratelimit_local_free(t);
}

/* ---- speed -----------------------------------------------------------------
 */

struct bench {
    struct tg_ratelimit_local *t;
    const struct tg_ratelimit_params *p;
    uint32_t policy;
    uint64_t nkeys;
    long iters;
    double secs, cpu; /* wall and this thread's CPU time */
};

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *bench_run(void *arg)
{
    struct bench *b = arg;
    struct key k = mkkey(b->policy, 0);
    struct tg_ratelimit_op op = mkop(&k, b->p, 1);
    int64_t now = SEC;
    int sink = 0;
    uint64_t j = 0;
    double t0 = now_s(), c0 = cpu_s();
    for (long i = 0; i < b->iters; i++) {
        memcpy(k.addr, &j, sizeof(j)); /* as mkkey */
        j = j + 1 == b->nkeys ? 0 : j + 1;
        sink += tg_ratelimit_local_take(b->t, &op, 1, now + i);
    }
    b->secs = now_s() - t0;
    b->cpu = cpu_s() - c0;
    return sink < 0 ? b : NULL;
}

/* ns per take, per thread: the best of `reps` rounds (the machine may be
 * shared; the best round is the least disturbed one), in wall time and in
 * the thread's CPU time (which leaves out time preempted). */
static void bench_threads(const char *what, int nthreads, bool same_keys, uint64_t nkeys,
                          long iters, int reps)
{
    struct tg_ratelimit_local *t = tg_ratelimit_local_new(1 << 20, 64);
    struct tg_ratelimit_params p = {1, 1000000, 0};
    struct bench b[2];
    for (int i = 0; i < nthreads; i++) {
        b[i] = (struct bench){t, &p, same_keys ? 1 : 1 + (uint32_t)i, nkeys, iters, 0};
        /* warm: the keys exist before timing */
        for (uint64_t j = 0; j < nkeys; j++) {
            struct key k = mkkey(b[i].policy, j);
            take1(t, &k, &p, 1, SEC);
        }
    }
    double best = 1e9, best_cpu = 1e9;
    for (int r = 0; r < reps; r++) {
        pthread_t th[2];
        for (int i = 0; i < nthreads; i++)
            pthread_create(&th[i], NULL, bench_run, &b[i]);
        double worst = 0, worst_cpu = 0;
        for (int i = 0; i < nthreads; i++) {
            pthread_join(th[i], NULL);
            if (b[i].secs > worst)
                worst = b[i].secs;
            if (b[i].cpu > worst_cpu)
                worst_cpu = b[i].cpu;
        }
        if (worst < best)
            best = worst;
        if (worst_cpu < best_cpu)
            best_cpu = worst_cpu;
    }
    tg_ratelimit_local_free(t);
#ifdef TG_RATELIMIT_MUTEX
    const char *lk = "mutex";
#else
    const char *lk = "spinlock";
#endif
    printf("bench (%s, best of %d): %s: %.1f ns/take wall, %.1f cpu\n", lk, reps, what,
           best * 1e9 / (double)iters, best_cpu * 1e9 / (double)iters);
}

/* The worst case of an insert: new keys into a table full of locked keys.
 * Each sweeps EVICT_SCAN_MAX entries, finds nothing to drop and is decided
 * on its overflow bucket: bounded work, no growth. And the same flood into
 * a table full of unlocked keys (one eviction per insert). */
static void bench_full_of_locks(long iters, int reps)
{
    struct tg_ratelimit_params lock = {3600 * SEC, 1, 0};
    struct tg_ratelimit_params open = {3600 * SEC, 1000000, 0};
    for (int locked = 1; locked >= 0; locked--) {
        const struct tg_ratelimit_params *fill = locked ? &lock : &open;
        struct tg_ratelimit_local *t = tg_ratelimit_local_new(1 << 16, 64);
        for (uint64_t j = 0; j < (1 << 17); j++) {
            struct key k = mkkey(1, j);
            take1(t, &k, fill, 1, SEC);
        }
        struct tg_ratelimit_params p = {1, 1000000000, 0};
        double best = 1e9;
        uint64_t j = 0;
        for (int r = 0; r < reps; r++) {
            double t0 = now_s();
            for (long i = 0; i < iters; i++) {
                struct key k = mkkey(2, j++);
                take1(t, &k, &p, 1, SEC);
            }
            double d = now_s() - t0;
            best = d < best ? d : best;
        }
        CHECK(tg_ratelimit_local_count(t) <= 1 << 16);
        tg_ratelimit_local_free(t);
        printf("bench (best of %d): new keys into a full table of %s keys: "
               "%.1f ns/take\n",
               reps, locked ? "locked (overflow)" : "unlocked (evicting)",
               best * 1e9 / (double)iters);
    }
}

TEST(test_bench)
{
#ifdef __SANITIZE_ADDRESS__
    long n = 20000; /* the figures mean nothing here; just run the code */
    int reps = 1;
#else
    long n = 300000;
    int reps = 7;
#endif
    bench_threads("1 thread, 1 key", 1, false, 1, n, reps);
    bench_threads("1 thread, 1k keys", 1, false, 1000, n, reps);
    bench_threads("1 thread, 1M keys", 1, false, 1000000, n, reps);
    bench_threads("2 threads, own 1k keys each", 2, false, 1000, n, reps);
    bench_threads("2 threads, same 1 key", 2, true, 1, n, reps);
    bench_full_of_locks(n, reps);
    double best = 1e9;
    uint64_t h = 0;
    struct key k = mkkey(1, 1);
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        for (long i = 0; i < n; i++) {
            k.addr[0] = (unsigned char)i;
            h += tg_siphash13(&k, sizeof(k), 1, 2);
        }
        double d = now_s() - t0;
        best = d < best ? d : best;
    }
    printf("bench: siphash13 of a %zu-byte key: %.1f ns%s\n", sizeof(k), best * 1e9 / (double)n,
           h == 42 ? " " : "");
}

int main(void)
{
    RUN(test_new_rejects_bad_args);
    RUN(test_take_peek_reset);
    RUN(test_keys_compared_as_bytes);
    RUN(test_batch_all_or_nothing);
    RUN(test_batch_same_key_twice);
    RUN(test_refund);
    RUN(test_refund_two_threads);
    RUN(test_two_threads_one_key_exact);
    RUN(test_two_threads_batches_exact);
    RUN(test_two_threads_free_running_bound);
    RUN(test_flood_stays_bounded);
    RUN(test_idle_evicted_before_active);
    RUN(test_flood_cannot_reset_lock);
    RUN(test_overflow_bucket_when_all_locked);
    RUN(test_evict_by_own_fullness);
    RUN(test_batch_room_spares_own_entries);
    RUN(test_bytes_per_key);
    RUN(test_bench);
    return TEST_SUMMARY();
}
