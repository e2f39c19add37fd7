/* The in-process rate-limit store: one table of GCRA TATs shared by every
 * worker, split into lock-striped shards, bounded to about max_keys keys.
 * It knows nothing of policies, key building or Redis: callers pass key
 * bytes and params, and get decisions.
 *
 * Layout of a shard. Entries live in one dense array, entries[0..count);
 * a bucket array of 32-bit indices heads chains threaded through
 * entry.next. Removing an entry moves the last one into its place, so the
 * array stays dense: the eviction sweep walks it like a clock, and growth
 * is a realloc (indices, not pointers, survive it).
 *
 * Memory per key: sizeof(struct entry) = 64 bytes (one cache line; keys up
 * to KEY_INLINE = 38 bytes are stored in it), plus 4 bytes of bucket per
 * power-of-two slot, nbuckets = next_pow2(per-shard cap), so 4..8 bytes per
 * key at capacity, plus keylen bytes of heap (and malloc's overhead, not
 * counted) for longer keys. ~68 bytes per key for short keys; the unit test
 * measures it with 1M keys. The entry array grows by doubling up to the
 * cap and never shrinks. Each shard also keeps 64 overflow TATs (512
 * bytes), for new keys that find only locked entries (see evict). */
#include "ratelimit.h"

#include <assert.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "siphash.h"

#define KEY_INLINE 38
#define NONE UINT32_MAX
#define NOVERFLOW TG_RATELIMIT_LOCAL_OVERFLOW_CLASSES
#define UNIT_SHIFT 20 /* entry.span_u and lock_u: 2^20 ns, ~1.05 ms */
/* Entries an eviction looks at: at least EVICT_SAMPLE, and on up to
 * EVICT_SCAN_MAX while none of them was idle. Bounds the work per insert. */
#define EVICT_SAMPLE 16
#define EVICT_SCAN_MAX 64
#define CACHE_LINE 64
/* Spins on a held shard lock before yielding the CPU: a holder that is
 * running lets go well within them, one that is not was preempted. */
#define SPINS_MAX 1024
#define SHARDS_MAX (1u << 16)
/* 64 GiB of entries per shard; indices stay 32 bit. */
#define SHARD_KEYS_MAX (1u << 30)
/* Entries a shard allocates at first; it grows by doubling up to its cap. */
#define ENTRIES_INITIAL 16

/* span_u and lock_u describe the bucket of the policy that last spent on
 * the entry, so that eviction can judge how full it is on its own terms
 * (a TAT alone compares absolute times across policies): span = burst *
 * interval, and lock = span - interval, the debt beyond which less than
 * one token is left (the entry is LOCKED). Two thresholds rather than
 * burst and interval make the sweep's lock test one compare. The unit is
 * 2^UNIT_SHIFT ns (about a millisecond: a shift, not a divide, on every
 * spend); 32 bits of it cover every rate a config can name (an interval is
 * at most a day) up to 52 days of span; beyond that both saturate, which
 * only makes such an entry look locked earlier (kept, never dropped
 * early). The span is rounded up and the lock down, so an entry may look
 * locked up to a unit early, never late; a bucket spanning less than a
 * unit (burst * interval under ~1 ms) then looks locked until it is full
 * again, within that unit. */
struct entry {
    int64_t tat;     /* ns, GCRA theoretical arrival time */
    uint32_t next;   /* next entry in this bucket's chain, or NONE */
    uint32_t hash;   /* low 32 bits of the key's hash: bucket, quick compare */
    uint32_t span_u; /* burst * interval, rounded up, saturating, >= 1 */
    uint32_t lock_u; /* (burst - 1) * interval, rounded down, saturating */
    uint16_t keylen; /* <= TG_RATELIMIT_LOCAL_KEY_MAX */
    /* The key if keylen <= KEY_INLINE, else a pointer to a heap copy
     * (memcpy'd in, so the struct needs no padding for it). */
    unsigned char key[KEY_INLINE];
};
_Static_assert(sizeof(struct entry) == CACHE_LINE, "one entry, one cache line");
_Static_assert(TG_RATELIMIT_LOCAL_KEY_MAX <= UINT16_MAX, "keylen is 16 bits");

/* ---- locks ----------------------------------------------------------------
 * A test-and-test-and-set spinlock by default: a critical section is a
 * probe and a few integer ops (~20 ns). Measured on this 2-core machine
 * with the unit test's bench (best of 7, other jobs running), spinlock vs
 * pthread mutex, ns per take per thread: 1 thread 30 vs 35; 2 threads on
 * their own keys 70-76 vs 88-101; 2 threads on one key 44-55 vs 59-70.
 * A spinner whose lock holder was preempted yields after ~1000 pauses
 * rather than burning its time slice. -DTG_RATELIMIT_MUTEX builds the
 * mutex instead, to measure again. */
#ifndef TG_RATELIMIT_MUTEX
struct lock {
    atomic_int held;
};

static int lock_init(struct lock *l)
{
    atomic_init(&l->held, 0);
    return 0;
}

static void lock_destroy(struct lock *l)
{
    (void)l;
}

static void lock_acquire(struct lock *l)
{
    for (;;) {
        if (!atomic_exchange_explicit(&l->held, 1, memory_order_acquire))
            return;
        for (unsigned spins = 0; atomic_load_explicit(&l->held, memory_order_relaxed);) {
            if (++spins < SPINS_MAX) {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            } else {
                spins = 0;
                sched_yield(); /* the holder was probably preempted */
            }
        }
    }
}

static void lock_release(struct lock *l)
{
    atomic_store_explicit(&l->held, 0, memory_order_release);
}
#else
struct lock {
    pthread_mutex_t m;
};

static int lock_init(struct lock *l)
{
    return pthread_mutex_init(&l->m, NULL) == 0 ? 0 : -1;
}

static void lock_destroy(struct lock *l)
{
    pthread_mutex_destroy(&l->m);
}

static void lock_acquire(struct lock *l)
{
    pthread_mutex_lock(&l->m);
}

static void lock_release(struct lock *l)
{
    pthread_mutex_unlock(&l->m);
}
#endif

struct shard {
    _Alignas(CACHE_LINE) struct lock lock; /* own cache line(s): no false sharing */
    uint32_t count;                        /* entries in use: entries[0..count) */
    uint32_t alloc;                        /* entries allocated */
    uint32_t cap;                          /* most entries this shard may hold */
    uint32_t hand;                         /* eviction sweep position */
    uint32_t mask;                         /* nbuckets - 1 */
    uint32_t *buckets;
    struct entry *entries;
    size_t heap_bytes; /* copies of keys longer than KEY_INLINE */
    /* ns, GCRA TATs shared by the new keys of class cls % NOVERFLOW that
     * found no room (every swept entry locked): see evict. */
    int64_t overflow_tat[NOVERFLOW];
};

struct tg_ratelimit_local {
    uint64_t k0, k1; /* SipHash key, random per table */
    uint32_t smask;  /* nshards - 1 */
    struct shard *shards;
};

/* ---- hashing: tg_siphash13 (siphash.h) with a random key per table ---- */

/* ---- one shard; callers hold its lock -------------------------------------
 */

static const unsigned char *entry_key(const struct entry *e)
{
    if (e->keylen <= KEY_INLINE)
        return e->key;
    const unsigned char *p;
    memcpy(&p, e->key, sizeof(p));
    return p;
}

static uint32_t find(const struct shard *s, uint32_t h, const void *key, size_t len)
{
    for (uint32_t i = s->buckets[h & s->mask]; i != NONE;) {
        const struct entry *e = &s->entries[i];
        if (e->hash == h && e->keylen == len && (len == 0 || memcmp(entry_key(e), key, len) == 0))
            return i;
        i = e->next;
    }
    return NONE;
}

/* Unlinks entries[i] and moves the last entry into its place. */
static void remove_at(struct shard *s, uint32_t i)
{
    struct entry *e = &s->entries[i];
    uint32_t *pp = &s->buckets[e->hash & s->mask];
    while (*pp != i)
        pp = &s->entries[*pp].next;
    *pp = e->next;
    if (e->keylen > KEY_INLINE) {
        free((void *)entry_key(e));
        s->heap_bytes -= e->keylen;
    }
    uint32_t last = --s->count;
    if (i != last) {
        pp = &s->buckets[s->entries[last].hash & s->mask];
        while (*pp != last)
            pp = &s->entries[*pp].next;
        *pp = i;
        *e = s->entries[last];
    }
}

/* What an entry records of a policy (see struct entry). */
struct policy_units {
    uint32_t span_u, lock_u;
};

/* policy_units for a span beyond 32 bits of units (52 days). */
__attribute__((noinline, cold)) static struct policy_units policy_units_big(
    const struct tg_ratelimit_params *p)
{
    const uint64_t most = (uint64_t)UINT32_MAX << UNIT_SHIFT;
    uint64_t lock;
    bool big = __builtin_mul_overflow((uint64_t)p->burst - 1, (uint64_t)p->interval_ns, &lock);
    return (struct policy_units){UINT32_MAX,
                                 big || lock > most ? UINT32_MAX : (uint32_t)(lock >> UNIT_SHIFT)};
}

/* Computed for every spend (take_one does it before taking the lock), so
 * kept to a multiply and shifts. */
static struct policy_units policy_units(const struct tg_ratelimit_params *p)
{
    const uint64_t most = ((uint64_t)UINT32_MAX << UNIT_SHIFT) - ((UINT64_C(1) << UNIT_SHIFT) - 1);
    uint64_t iv = (uint64_t)p->interval_ns, span;
    if (__builtin_expect(__builtin_mul_overflow((uint64_t)p->burst, iv, &span) || span > most, 0))
        return policy_units_big(p);
    return (struct policy_units){(uint32_t)((span + (UINT64_C(1) << UNIT_SHIFT) - 1) >> UNIT_SHIFT),
                                 (uint32_t)((span - iv) >> UNIT_SHIFT)};
}

/* Records which bucket spent on an entry last. */
static void entry_set_policy(struct entry *e, struct policy_units u)
{
    e->span_u = u.span_u;
    e->lock_u = u.lock_u;
}

/* True when a non-idle entry (debt = tat - now > 0, ns) holds less than
 * one token of its own bucket. */
static bool entry_locked(const struct entry *e, int64_t debt)
{
    return debt > (int64_t)e->lock_u << UNIT_SHIFT;
}

/* True when entry a has a larger fraction of its tokens left than b, the
 * fraction being 1 - debt / span: debt_a / span_a < debt_b / span_b,
 * cross-multiplied (debts < 2^63, spans in units < 2^32: 128 bits). */
static bool fuller(int64_t debt_a, uint32_t span_a, int64_t debt_b, uint32_t span_b)
{
    return (__int128)debt_a * span_b < (__int128)debt_b * span_a;
}

/* A batch's own entries, which eviction must not drop while the batch is
 * being decided: the low 32 hash bits of its keys in the shard (a
 * collision only spares another entry). */
struct protect {
    const uint32_t *hash;
    size_t n;
};

static bool is_protected(const struct protect *pr, uint32_t h)
{
    for (size_t i = 0; pr != NULL && i < pr->n; i++)
        if (pr->hash[i] == h)
            return true;
    return false;
}

/* Makes room for one entry, or says it cannot. Sweeps entries from the
 * hand (EVICT_SAMPLE, or on up to EVICT_SCAN_MAX while none is idle) and
 * drops every idle one seen, whatever its policy (they carry no
 * information, and dropping a few at once pays for the next inserts). If
 * none was idle, drops the swept entry that is not locked and has the
 * largest fraction of its own tokens left, the nearest to full within its
 * own policy; a locked entry (less than one token) is never dropped, so a
 * flood of new keys cannot reset a lockout. (The rule used to be the
 * smallest TAT, which compares absolute times across policies: an hourly
 * lockout, TAT now + 1 h, looked nearer to full than a new key of a daily
 * policy with 9 of 10 tokens left, TAT now + 2.4 h, so a flood of such
 * keys evicted lockouts.) Across the table this is approximate
 * (as Redis's sampled LRU), which keeps an insert O(1). Returns false,
 * having dropped nothing, when every swept entry is locked (or protected):
 * the caller then decides the new key against its overflow bucket. */
static bool evict(struct shard *s, int64_t now, const struct protect *pr)
{
    uint32_t victim = NONE, freed = 0, victim_span = 1;
    int64_t victim_debt = 0;
    for (unsigned n = 0; s->count > 0 && (n < EVICT_SAMPLE || (freed == 0 && n < EVICT_SCAN_MAX));
         n++) {
        if (s->hand >= s->count)
            s->hand = 0;
        uint32_t i = s->hand;
        const struct entry *e = &s->entries[i];
        if (pr != NULL && is_protected(pr, e->hash)) {
            s->hand = i + 1;
            continue;
        }
        /* tg_ratelimit_gcra_idle (tat <= now), inlined: this loop is the
         * cost of an insert into a full shard. */
        int64_t debt = e->tat - now;
        if (debt <= 0) {
            remove_at(s, i); /* the last entry moved to i: look at it next */
            freed++;
            continue;
        }
        if (!entry_locked(e, debt) &&
            (victim == NONE || fuller(debt, e->span_u, victim_debt, victim_span))) {
            victim = i;
            victim_debt = debt;
            victim_span = e->span_u;
        }
        s->hand = i + 1;
    }
    if (freed > 0)
        return true;
    /* With freed == 0 nothing moved, so `victim` still names its entry. */
    if (victim == NONE)
        return false;
    remove_at(s, victim);
    return true;
}

/* Whether evict would make room now, without changing anything (for peek:
 * it says what take would). */
static bool could_evict(const struct shard *s, int64_t now)
{
    uint32_t hand = s->hand;
    for (unsigned n = 0; n < EVICT_SCAN_MAX && n < s->count; n++, hand++) {
        if (hand >= s->count)
            hand = 0;
        const struct entry *e = &s->entries[hand];
        int64_t debt = e->tat - now;
        if (debt <= 0 || !entry_locked(e, debt))
            return true;
    }
    return false;
}

/* Makes sure `extra` + 1 more entries fit (extra: entries a batch has
 * reserved already and not inserted yet): evicts and grows the array as
 * needed. Returns false when it cannot (everything swept is locked, or no
 * memory and nothing to evict). */
static bool make_room(struct shard *s, uint32_t extra, int64_t now, const struct protect *pr)
{
    while (s->count + extra >= s->cap)
        if (!evict(s, now, pr))
            return false;
    while (s->count + extra >= s->alloc) {
        uint32_t want = s->alloc > s->cap / 2 ? s->cap : s->alloc * 2;
        struct entry *ne = realloc(s->entries, (size_t)want * sizeof(*ne));
        if (ne != NULL) {
            s->entries = ne;
            s->alloc = want;
        } else if (!evict(s, now, pr)) {
            return false;
        }
    }
    return true;
}

/* Whether a new key could get an entry now (peek's view of make_room). */
static bool has_room(const struct shard *s, int64_t now)
{
    return s->count < s->cap || could_evict(s, now);
}

/* Adds a key known to be absent, in room make_room made. Returns -1 only
 * when a long key's copy cannot be allocated; the key is then not
 * remembered, as if evicted at once (the header says so). */
static int insert(struct shard *s, uint32_t h, const void *key, size_t len, int64_t tat,
                  struct policy_units u)
{
    assert(s->count < s->cap && s->count < s->alloc);
    unsigned char *copy = NULL;
    if (len > KEY_INLINE) {
        copy = malloc(len);
        if (copy == NULL)
            return -1;
        memcpy(copy, key, len);
    }
    uint32_t i = s->count++;
    struct entry *e = &s->entries[i];
    e->tat = tat;
    e->hash = h;
    e->keylen = (uint16_t)len;
    entry_set_policy(e, u);
    if (copy != NULL) {
        memcpy(e->key, &copy, sizeof(copy));
        s->heap_bytes += len;
    } else if (len > 0) {
        memcpy(e->key, key, len);
    }
    e->next = s->buckets[h & s->mask];
    s->buckets[h & s->mask] = i;
    return 0;
}

/* Decides op against its class's overflow bucket in shard s (spending if
 * `spend`), for a new key that found no room. */
static bool decide_overflow(struct shard *s, struct tg_ratelimit_op *op, int64_t now, bool spend)
{
    int64_t *tat = &s->overflow_tat[op->cls % NOVERFLOW];
    bool ok;
    if (spend) {
        ok = tg_ratelimit_gcra(tat, now, op->params, op->cost, &op->result);
    } else {
        tg_ratelimit_gcra_peek(*tat, now, op->params, op->cost, &op->result);
        ok = op->result.allowed;
    }
    op->result.overflow = true;
    return ok;
}

/* ---- table ----------------------------------------------------------------
 */

static uint32_t next_pow2(uint32_t v)
{
    uint32_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

struct tg_ratelimit_local *tg_ratelimit_local_new(size_t max_keys, unsigned shards)
{
    if (max_keys == 0 || shards == 0 || (shards & (shards - 1)) != 0 || shards > SHARDS_MAX)
        return NULL;
    /* Fewer keys than shards: fewer shards, so the total stays <= max. */
    while (shards > max_keys)
        shards >>= 1;
    size_t per = max_keys / shards;
    if (per > SHARD_KEYS_MAX)
        per = SHARD_KEYS_MAX;

    struct tg_ratelimit_local *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    uint64_t seed[2];
    tg_siphash_random_key(seed);
    t->k0 = seed[0];
    t->k1 = seed[1];
    t->smask = shards - 1;
    t->shards = aligned_alloc(_Alignof(struct shard), shards * sizeof(struct shard));
    if (t->shards == NULL)
        goto fail_table;
    memset(t->shards, 0, shards * sizeof(struct shard));

    unsigned made = 0;
    for (; made < shards; made++) {
        struct shard *s = &t->shards[made];
        s->cap = (uint32_t)per;
        uint32_t nb = next_pow2(s->cap);
        s->mask = nb - 1;
        s->alloc = s->cap < ENTRIES_INITIAL ? s->cap : ENTRIES_INITIAL;
        s->buckets = malloc((size_t)nb * sizeof(*s->buckets));
        s->entries = malloc((size_t)s->alloc * sizeof(*s->entries));
        if (s->buckets == NULL || s->entries == NULL || lock_init(&s->lock) != 0) {
            free(s->buckets);
            free(s->entries);
            goto fail_shards;
        }
        memset(s->buckets, 0xff, (size_t)nb * sizeof(*s->buckets)); /* NONE */
    }
    return t;

fail_shards:
    while (made-- > 0) {
        lock_destroy(&t->shards[made].lock);
        free(t->shards[made].buckets);
        free(t->shards[made].entries);
    }
    free(t->shards);
fail_table:
    free(t);
    return NULL;
}

void tg_ratelimit_local_free(struct tg_ratelimit_local *t)
{
    if (t == NULL)
        return;
    for (uint32_t i = 0; i <= t->smask; i++) {
        struct shard *s = &t->shards[i];
        for (uint32_t j = 0; j < s->count; j++)
            if (s->entries[j].keylen > KEY_INLINE)
                free((void *)entry_key(&s->entries[j]));
        lock_destroy(&s->lock);
        free(s->buckets);
        free(s->entries);
    }
    free(t->shards);
    free(t);
}

/* The hash's low 32 bits pick the bucket, its high bits the shard, so the
 * two are independent. */
static struct shard *shard_of(struct tg_ratelimit_local *t, uint64_t h)
{
    return &t->shards[(uint32_t)(h >> 32) & t->smask];
}

static void refuse(struct tg_ratelimit_op *op)
{
    memset(&op->result, 0, sizeof(op->result));
    op->result.retry_after_ns = INT64_MAX;
}

/* The common case, one op: hash, one lock, one probe, the GCRA. */
static bool take_one(struct tg_ratelimit_local *t, struct tg_ratelimit_op *op, int64_t now,
                     bool spend)
{
    if (op->keylen > TG_RATELIMIT_LOCAL_KEY_MAX) {
        refuse(op);
        return false;
    }
    uint64_t h = tg_siphash13(op->key, op->keylen, t->k0, t->k1);
    struct shard *s = shard_of(t, h);
    struct policy_units u = {0, 0};
    if (spend)
        u = policy_units(op->params); /* outside the lock */
    lock_acquire(&s->lock);
    uint32_t i = find(s, (uint32_t)h, op->key, op->keylen);
    bool ok;
    if (i != NONE) {
        struct entry *e = &s->entries[i];
        if (spend) {
            ok = tg_ratelimit_gcra(&e->tat, now, op->params, op->cost, &op->result);
            if (ok)
                entry_set_policy(e, u);
        } else {
            tg_ratelimit_gcra_peek(e->tat, now, op->params, op->cost, &op->result);
            ok = op->result.allowed;
        }
    } else {
        /* A new key: decided on a full bucket, and it needs an entry only
         * if that leaves the bucket not full (allowed, cost > 0). */
        int64_t tat = 0;
        ok = tg_ratelimit_gcra(&tat, now, op->params, op->cost, &op->result);
        if (ok && !tg_ratelimit_gcra_idle(tat, now)) {
            if (!(spend ? make_room(s, 0, now, NULL) : has_room(s, now)))
                ok = decide_overflow(s, op, now, spend);
            else if (spend)
                (void)insert(s, (uint32_t)h, op->key, op->keylen, tat, u); /* -1: see insert */
        }
    }
    lock_release(&s->lock);
    return ok;
}

/* The last op before ops[i] naming the same key, or i if none. */
static size_t earlier_same_key(const struct tg_ratelimit_op *ops, const uint64_t *hash, size_t i)
{
    for (size_t j = i; j > 0; j--) {
        const struct tg_ratelimit_op *a = &ops[j - 1], *b = &ops[i];
        if (hash[j - 1] == hash[i] && a->keylen == b->keylen &&
            (b->keylen == 0 || memcmp(a->key, b->key, b->keylen) == 0))
            return j - 1;
    }
    return i;
}

/* Where a batch op's key keeps its state. */
enum where {
    W_ENTRY,    /* an entry of the table */
    W_FRESH,    /* not held, and no entry needed so far (bucket full) */
    W_SLOT,     /* not held; room was made for its entry */
    W_OVERFLOW, /* not held, no room: its class's overflow bucket */
};

/* An overflow bucket a batch decides against, with the TAT the batch's
 * decisions have left it so far. */
struct batch_overflow {
    uint32_t shard, cls;
    int64_t tat;
};

/* Several ops, all or nothing. Shards are locked in ascending index order
 * (each once), so two batches never wait on each other in a cycle. Each
 * op's decision starts from the TAT the previous op on the same key left,
 * so a key named twice pays twice; likewise for an overflow bucket two new
 * keys of one class and shard share. A new key that needs an entry gets
 * its room while the batch is decided (make_room, counting what earlier
 * ops reserved in that shard, sparing the batch's own entries), so the
 * decision is the one that is stored: on a fresh bucket in an entry, or on
 * the overflow bucket. Room made for a batch that is then refused stays
 * free for the next insert. */
static bool take_many(struct tg_ratelimit_local *t, struct tg_ratelimit_op *ops, size_t nops,
                      int64_t now, bool spend)
{
    uint64_t hash[TG_RATELIMIT_LOCAL_MAX_OPS];
    int64_t tat[TG_RATELIMIT_LOCAL_MAX_OPS];     /* after op i's decision */
    bool superseded[TG_RATELIMIT_LOCAL_MAX_OPS]; /* a later op has the key */
    enum where where[TG_RATELIMIT_LOCAL_MAX_OPS];
    uint8_t ovi[TG_RATELIMIT_LOCAL_MAX_OPS]; /* into ov, if W_OVERFLOW */
    struct batch_overflow ov[TG_RATELIMIT_LOCAL_MAX_OPS];
    uint32_t order[TG_RATELIMIT_LOCAL_MAX_OPS];    /* shard indices, sorted */
    uint32_t reserved[TG_RATELIMIT_LOCAL_MAX_OPS]; /* W_SLOTs per order[k] */
    size_t nlocks = 0, nov = 0;

    bool bad = nops > TG_RATELIMIT_LOCAL_MAX_OPS;
    for (size_t i = 0; i < nops && !bad; i++)
        bad = ops[i].keylen > TG_RATELIMIT_LOCAL_KEY_MAX;
    if (bad) {
        for (size_t i = 0; i < nops; i++)
            refuse(&ops[i]);
        return false;
    }

    for (size_t i = 0; i < nops; i++) {
        hash[i] = tg_siphash13(ops[i].key, ops[i].keylen, t->k0, t->k1);
        superseded[i] = false;
        uint32_t si = (uint32_t)(hash[i] >> 32) & t->smask;
        size_t j = nlocks;
        while (j > 0 && order[j - 1] > si)
            j--;
        if (j > 0 && order[j - 1] == si)
            continue;
        memmove(&order[j + 1], &order[j], (nlocks - j) * sizeof(order[0]));
        order[j] = si;
        nlocks++;
    }
    memset(reserved, 0, nlocks * sizeof(reserved[0]));
    for (size_t k = 0; k < nlocks; k++)
        lock_acquire(&t->shards[order[k]].lock);

    bool all = true;
    for (size_t i = 0; i < nops; i++) {
        struct tg_ratelimit_op *op = &ops[i];
        uint32_t si = (uint32_t)(hash[i] >> 32) & t->smask;
        struct shard *s = &t->shards[si];
        size_t prev = earlier_same_key(ops, hash, i);
        if (prev < i) {
            superseded[prev] = true;
            where[i] = where[prev];
            ovi[i] = ovi[prev];
            tat[i] = where[i] == W_OVERFLOW ? ov[ovi[i]].tat : tat[prev];
        } else {
            uint32_t e = find(s, (uint32_t)hash[i], op->key, op->keylen);
            where[i] = e != NONE ? W_ENTRY : W_FRESH;
            tat[i] = e != NONE ? s->entries[e].tat : 0;
        }
        bool ok = tg_ratelimit_gcra(&tat[i], now, op->params, op->cost, &op->result);
        if (ok && where[i] == W_FRESH && !tg_ratelimit_gcra_idle(tat[i], now)) {
            /* This key needs an entry: room, or its overflow bucket. */
            size_t k = 0;
            while (order[k] != si)
                k++;
            bool room;
            if (spend) {
                uint32_t mine[TG_RATELIMIT_LOCAL_MAX_OPS];
                struct protect pr = {mine, 0};
                for (size_t j = 0; j < nops; j++)
                    if (((uint32_t)(hash[j] >> 32) & t->smask) == si)
                        mine[pr.n++] = (uint32_t)hash[j];
                room = make_room(s, reserved[k], now, &pr);
                reserved[k] += room;
            } else {
                room = has_room(s, now); /* approximate for a second key */
            }
            if (room) {
                where[i] = W_SLOT;
            } else {
                uint32_t cls = op->cls % NOVERFLOW;
                size_t v = 0;
                while (v < nov && !(ov[v].shard == si && ov[v].cls == cls))
                    v++;
                if (v == nov)
                    ov[nov++] = (struct batch_overflow){si, cls, s->overflow_tat[cls]};
                where[i] = W_OVERFLOW;
                ovi[i] = (uint8_t)v;
                tat[i] = ov[v].tat;
                ok = tg_ratelimit_gcra(&tat[i], now, op->params, op->cost, &op->result);
            }
        }
        if (where[i] == W_OVERFLOW) {
            op->result.overflow = true;
            ov[ovi[i]].tat = tat[i];
        }
        all &= ok;
    }

    if (all && spend) {
        for (size_t i = 0; i < nops; i++) {
            if (superseded[i])
                continue;
            struct shard *s = shard_of(t, hash[i]);
            uint32_t h = (uint32_t)hash[i];
            if (where[i] == W_ENTRY) {
                /* Spared by make_room (protect): still there. */
                uint32_t e = find(s, h, ops[i].key, ops[i].keylen);
                assert(e != NONE);
                s->entries[e].tat = tat[i];
                entry_set_policy(&s->entries[e], policy_units(ops[i].params));
            } else if (where[i] == W_SLOT) {
                (void)insert(s, h, ops[i].key, ops[i].keylen, tat[i],
                             policy_units(ops[i].params)); /* -1: see insert */
            }
        }
        for (size_t v = 0; v < nov; v++)
            t->shards[ov[v].shard].overflow_tat[ov[v].cls] = ov[v].tat;
    }

    for (size_t k = 0; k < nlocks; k++)
        lock_release(&t->shards[order[k]].lock);
    return all;
}

bool tg_ratelimit_local_take(struct tg_ratelimit_local *t, struct tg_ratelimit_op *ops, size_t nops,
                             int64_t now_ns)
{
    if (nops == 1)
        return take_one(t, ops, now_ns, true);
    return take_many(t, ops, nops, now_ns, true);
}

void tg_ratelimit_local_peek(struct tg_ratelimit_local *t, struct tg_ratelimit_op *ops, size_t nops,
                             int64_t now_ns)
{
    if (nops == 1)
        take_one(t, ops, now_ns, false);
    else
        take_many(t, ops, nops, now_ns, false);
}

void tg_ratelimit_local_refund(struct tg_ratelimit_local *t, struct tg_ratelimit_op *ops,
                               size_t nops, int64_t now_ns)
{
    for (size_t i = 0; i < nops; i++) {
        struct tg_ratelimit_op *op = &ops[i];
        if (op->keylen > TG_RATELIMIT_LOCAL_KEY_MAX)
            continue;
        uint64_t h = tg_siphash13(op->key, op->keylen, t->k0, t->k1);
        struct shard *s = shard_of(t, h);
        bool overflow = op->result.overflow;
        int64_t tat = 0;
        lock_acquire(&s->lock);
        if (overflow) {
            int64_t *ot = &s->overflow_tat[op->cls % NOVERFLOW];
            tg_ratelimit_gcra_refund(ot, now_ns, op->params, op->cost);
            tat = *ot;
        } else {
            uint32_t e = find(s, (uint32_t)h, op->key, op->keylen);
            if (e != NONE) {
                tg_ratelimit_gcra_refund(&s->entries[e].tat, now_ns, op->params, op->cost);
                tat = s->entries[e].tat;
                if (tg_ratelimit_gcra_idle(tat, now_ns))
                    remove_at(s, e);
            }
        }
        lock_release(&s->lock);
        tg_ratelimit_gcra_peek(tat, now_ns, op->params, 0, &op->result);
        op->result.overflow = overflow;
    }
}

bool tg_ratelimit_local_reset(struct tg_ratelimit_local *t, const void *key, size_t keylen)
{
    if (keylen > TG_RATELIMIT_LOCAL_KEY_MAX)
        return false;
    uint64_t h = tg_siphash13(key, keylen, t->k0, t->k1);
    struct shard *s = shard_of(t, h);
    lock_acquire(&s->lock);
    uint32_t i = find(s, (uint32_t)h, key, keylen);
    if (i != NONE)
        remove_at(s, i);
    lock_release(&s->lock);
    return i != NONE;
}

size_t tg_ratelimit_local_count(struct tg_ratelimit_local *t)
{
    size_t n = 0;
    for (uint32_t i = 0; i <= t->smask; i++) {
        struct shard *s = &t->shards[i];
        lock_acquire(&s->lock);
        n += s->count;
        lock_release(&s->lock);
    }
    return n;
}

size_t tg_ratelimit_local_memory(struct tg_ratelimit_local *t)
{
    size_t n = sizeof(*t) + ((size_t)t->smask + 1) * sizeof(struct shard);
    for (uint32_t i = 0; i <= t->smask; i++) {
        struct shard *s = &t->shards[i];
        lock_acquire(&s->lock);
        n += ((size_t)s->mask + 1) * sizeof(*s->buckets) + (size_t)s->alloc * sizeof(*s->entries) +
             s->heap_bytes;
        lock_release(&s->lock);
    }
    return n;
}
