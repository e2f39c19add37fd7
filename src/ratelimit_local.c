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
 * to KEY_INLINE = 46 bytes are stored in it), plus 4 bytes of bucket per
 * power-of-two slot, nbuckets = next_pow2(per-shard cap), so 4..8 bytes per
 * key at capacity, plus keylen bytes of heap (and malloc's overhead, not
 * counted) for longer keys. ~68 bytes per key for short keys; the unit test
 * measures it with 1M keys. The entry array grows by doubling up to the
 * cap and never shrinks. */
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

#define KEY_INLINE 46
#define NONE UINT32_MAX
/* Entries an eviction looks at: at least EVICT_SAMPLE, and on up to
 * EVICT_SCAN_MAX while none of them was idle. Bounds the work per insert. */
#define EVICT_SAMPLE 16
#define EVICT_SCAN_MAX 64

struct entry {
    int64_t tat;     /* ns, GCRA theoretical arrival time */
    uint32_t next;   /* next entry in this bucket's chain, or NONE */
    uint32_t hash;   /* low 32 bits of the key's hash: bucket, quick compare */
    uint16_t keylen; /* <= TG_RATELIMIT_LOCAL_KEY_MAX */
    /* The key if keylen <= KEY_INLINE, else a pointer to a heap copy
     * (memcpy'd in, so the struct needs no padding for it). */
    unsigned char key[KEY_INLINE];
};
_Static_assert(sizeof(struct entry) == 64, "one entry, one cache line");
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
        for (unsigned spins = 0;
             atomic_load_explicit(&l->held, memory_order_relaxed);) {
            if (++spins < 1024) {
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
    _Alignas(64) struct lock lock; /* own cache line(s): no false sharing */
    uint32_t count;                /* entries in use: entries[0..count) */
    uint32_t alloc;                /* entries allocated */
    uint32_t cap;                  /* most entries this shard may hold */
    uint32_t hand;                 /* eviction sweep position */
    uint32_t mask;                 /* nbuckets - 1 */
    uint32_t *buckets;
    struct entry *entries;
    size_t heap_bytes; /* copies of keys longer than KEY_INLINE */
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

static uint32_t find(const struct shard *s, uint32_t h, const void *key,
                     size_t len)
{
    for (uint32_t i = s->buckets[h & s->mask]; i != NONE;) {
        const struct entry *e = &s->entries[i];
        if (e->hash == h && e->keylen == len &&
            (len == 0 || memcmp(entry_key(e), key, len) == 0))
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

/* Makes room for one entry. Sweeps entries from the hand (EVICT_SAMPLE,
 * or up to EVICT_SCAN_MAX while none is idle) and drops every idle one seen
 * (they carry no information, and dropping a few at once pays for the next
 * inserts); if none was idle, drops the one with the smallest TAT, the
 * closest to full. Idle entries have the smallest TATs of all, so within
 * the scan "idle first, then closest to full" holds exactly; across the
 * table it is approximate (as Redis's sampled LRU), which keeps an insert
 * O(1). */
static void evict(struct shard *s, int64_t now)
{
    uint32_t victim = NONE, freed = 0;
    int64_t victim_tat = 0;
    for (unsigned n = 0; s->count > 0 && (n < EVICT_SAMPLE ||
                                          (freed == 0 && n < EVICT_SCAN_MAX));
         n++) {
        if (s->hand >= s->count)
            s->hand = 0;
        uint32_t i = s->hand;
        if (tg_ratelimit_gcra_idle(s->entries[i].tat, now)) {
            remove_at(s, i); /* the last entry moved to i: look at it next */
            freed++;
            continue;
        }
        if (victim == NONE || s->entries[i].tat < victim_tat) {
            victim = i;
            victim_tat = s->entries[i].tat;
        }
        s->hand = i + 1;
    }
    /* With freed == 0 nothing moved, so `victim` still names its entry. */
    if (freed == 0 && victim != NONE)
        remove_at(s, victim);
}

/* Adds a key known to be absent. Never fails for short keys: if the entry
 * array cannot grow, it evicts within what it has. Returns -1 only when a
 * long key's copy cannot be allocated; the key is then not remembered, as
 * if evicted at once (the header says so). */
static int insert(struct shard *s, uint32_t h, const void *key, size_t len,
                  int64_t tat, int64_t now)
{
    unsigned char *copy = NULL;
    if (len > KEY_INLINE) {
        copy = malloc(len);
        if (copy == NULL)
            return -1;
        memcpy(copy, key, len);
    }
    if (s->count >= s->cap)
        evict(s, now);
    if (s->count == s->alloc) {
        uint32_t want = s->alloc > s->cap / 2 ? s->cap : s->alloc * 2;
        struct entry *ne = realloc(s->entries, (size_t)want * sizeof(*ne));
        if (ne != NULL) {
            s->entries = ne;
            s->alloc = want;
        } else {
            evict(s, now);
        }
    }
    uint32_t i = s->count++;
    struct entry *e = &s->entries[i];
    e->tat = tat;
    e->hash = h;
    e->keylen = (uint16_t)len;
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

/* Stores a decided TAT. A key absent and idle needs no entry. */
static void store(struct shard *s, uint32_t h, const void *key, size_t len,
                  int64_t tat, int64_t now)
{
    uint32_t i = find(s, h, key, len);
    if (i != NONE)
        s->entries[i].tat = tat;
    else if (!tg_ratelimit_gcra_idle(tat, now))
        (void)insert(s, h, key, len, tat, now); /* -1: see insert */
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

struct tg_ratelimit_local *tg_ratelimit_local_new(size_t max_keys,
                                                  unsigned shards)
{
    if (max_keys == 0 || shards == 0 || (shards & (shards - 1)) != 0 ||
        shards > (1u << 16))
        return NULL;
    /* Fewer keys than shards: fewer shards, so the total stays <= max. */
    while (shards > max_keys)
        shards >>= 1;
    size_t per = max_keys / shards;
    if (per > (1u << 30))
        per = 1u << 30; /* 64 GiB of entries per shard; indices stay 32 bit */

    struct tg_ratelimit_local *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    uint64_t seed[2];
    tg_siphash_random_key(seed);
    t->k0 = seed[0];
    t->k1 = seed[1];
    t->smask = shards - 1;
    t->shards =
        aligned_alloc(_Alignof(struct shard), shards * sizeof(struct shard));
    if (t->shards == NULL)
        goto fail_table;
    memset(t->shards, 0, shards * sizeof(struct shard));

    unsigned made = 0;
    for (; made < shards; made++) {
        struct shard *s = &t->shards[made];
        s->cap = (uint32_t)per;
        uint32_t nb = next_pow2(s->cap);
        s->mask = nb - 1;
        s->alloc = s->cap < 16 ? s->cap : 16;
        s->buckets = malloc((size_t)nb * sizeof(*s->buckets));
        s->entries = malloc((size_t)s->alloc * sizeof(*s->entries));
        if (s->buckets == NULL || s->entries == NULL ||
            lock_init(&s->lock) != 0) {
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
static bool take_one(struct tg_ratelimit_local *t, struct tg_ratelimit_op *op,
                     int64_t now, bool spend)
{
    if (op->keylen > TG_RATELIMIT_LOCAL_KEY_MAX) {
        refuse(op);
        return false;
    }
    uint64_t h = tg_siphash13(op->key, op->keylen, t->k0, t->k1);
    struct shard *s = shard_of(t, h);
    lock_acquire(&s->lock);
    uint32_t i = find(s, (uint32_t)h, op->key, op->keylen);
    bool ok;
    if (!spend) {
        tg_ratelimit_gcra_peek(i != NONE ? s->entries[i].tat : 0, now,
                               op->params, op->cost, &op->result);
        ok = op->result.allowed;
    } else if (i != NONE) {
        ok = tg_ratelimit_gcra(&s->entries[i].tat, now, op->params, op->cost,
                               &op->result);
    } else {
        int64_t tat = 0;
        ok = tg_ratelimit_gcra(&tat, now, op->params, op->cost, &op->result);
        if (ok && !tg_ratelimit_gcra_idle(tat, now))
            (void)insert(s, (uint32_t)h, op->key, op->keylen, tat, now);
    }
    lock_release(&s->lock);
    return ok;
}

/* The last op before ops[i] naming the same key, or i if none. */
static size_t earlier_same_key(const struct tg_ratelimit_op *ops,
                               const uint64_t *hash, size_t i)
{
    for (size_t j = i; j > 0; j--) {
        const struct tg_ratelimit_op *a = &ops[j - 1], *b = &ops[i];
        if (hash[j - 1] == hash[i] && a->keylen == b->keylen &&
            (b->keylen == 0 || memcmp(a->key, b->key, b->keylen) == 0))
            return j - 1;
    }
    return i;
}

/* Several ops, all or nothing. Shards are locked in ascending index order
 * (each once), so two batches never wait on each other in a cycle. Each
 * op's decision starts from the TAT the previous op on the same key left,
 * so a key named twice pays twice. */
static bool take_many(struct tg_ratelimit_local *t, struct tg_ratelimit_op *ops,
                      size_t nops, int64_t now, bool spend)
{
    uint64_t hash[TG_RATELIMIT_LOCAL_MAX_OPS];
    int64_t tat[TG_RATELIMIT_LOCAL_MAX_OPS];     /* after op i's decision */
    bool superseded[TG_RATELIMIT_LOCAL_MAX_OPS]; /* a later op has the key */
    uint32_t order[TG_RATELIMIT_LOCAL_MAX_OPS];  /* shard indices, sorted */
    size_t nlocks = 0;

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
    for (size_t k = 0; k < nlocks; k++)
        lock_acquire(&t->shards[order[k]].lock);

    bool all = true;
    for (size_t i = 0; i < nops; i++) {
        struct tg_ratelimit_op *op = &ops[i];
        size_t prev = earlier_same_key(ops, hash, i);
        int64_t before;
        if (prev < i) {
            before = tat[prev];
            superseded[prev] = true;
        } else {
            struct shard *s = shard_of(t, hash[i]);
            uint32_t e = find(s, (uint32_t)hash[i], op->key, op->keylen);
            before = e != NONE ? s->entries[e].tat : 0;
        }
        tat[i] = before;
        all &=
            tg_ratelimit_gcra(&tat[i], now, op->params, op->cost, &op->result);
    }

    if (all && spend) {
        for (size_t i = 0; i < nops; i++)
            if (!superseded[i])
                store(shard_of(t, hash[i]), (uint32_t)hash[i], ops[i].key,
                      ops[i].keylen, tat[i], now);
    }

    for (size_t k = 0; k < nlocks; k++)
        lock_release(&t->shards[order[k]].lock);
    return all;
}

bool tg_ratelimit_local_take(struct tg_ratelimit_local *t,
                             struct tg_ratelimit_op *ops, size_t nops,
                             int64_t now_ns)
{
    if (nops == 1)
        return take_one(t, ops, now_ns, true);
    return take_many(t, ops, nops, now_ns, true);
}

void tg_ratelimit_local_peek(struct tg_ratelimit_local *t,
                             struct tg_ratelimit_op *ops, size_t nops,
                             int64_t now_ns)
{
    if (nops == 1)
        take_one(t, ops, now_ns, false);
    else
        take_many(t, ops, nops, now_ns, false);
}

bool tg_ratelimit_local_reset(struct tg_ratelimit_local *t, const void *key,
                              size_t keylen)
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
        n += ((size_t)s->mask + 1) * sizeof(*s->buckets) +
             (size_t)s->alloc * sizeof(*s->entries) + s->heap_bytes;
        lock_release(&s->lock);
    }
    return n;
}
