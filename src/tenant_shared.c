/* The tenant directory's last-known entries, process-wide (tenant_shared.h).
 *
 * A hash table of chains whose links readers follow with atomic loads.
 * A writer (under the mutex) publishes a new record by one atomic store of
 * the link before it, and unlinks a replaced or evicted one the same way;
 * the unlinked record is retired with the current epoch and the epoch
 * moves on. A reader announces the epoch it starts in; a record retired in
 * epoch R is freed once every reader reading now started after R (all
 * orders are sequentially consistent: a reader that had not announced
 * itself when the writer looked cannot reach an unlinked record). */
#include "tenant_shared.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "siphash.h"

struct rec {
    _Atomic(struct rec *) next; /* chain: readers follow it */
    struct rec *older, *newer;  /* age list (writer only) */
    struct rec *retired_next;   /* retired, waiting to be freed */
    uint64_t retired_at;
    uint64_t hash;
    double when;
    size_t klen, len;
    char bytes[]; /* the key, then the data */
};

/* A reader's announcement on a cache line of its own. */
struct reader {
    _Atomic uint64_t epoch; /* 0: not reading */
    char pad[56];
};

struct tg_tenant_shared {
    pthread_mutex_t lock;
    size_t max, count, mask;
    uint64_t k0, k1;
    _Atomic(struct rec *) *buckets;
    struct rec *oldest, *newest;
    struct rec *retired;
    _Atomic uint64_t epoch;
    unsigned nreaders;
    struct reader *readers;
};

struct tg_tenant_shared *tg_tenant_shared_new(size_t max, unsigned readers)
{
    struct tg_tenant_shared *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    size_t n = 16;
    while (n < max)
        n <<= 1;
    s->max = max > 0 ? max : 1;
    s->mask = n - 1;
    s->buckets = calloc(n, sizeof(*s->buckets));
    s->nreaders = readers;
    s->readers = calloc(readers ? readers : 1, sizeof(*s->readers));
    if (s->buckets == NULL || s->readers == NULL) {
        free(s->buckets);
        free(s->readers);
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    atomic_init(&s->epoch, 1);
    uint64_t key[2];
    tg_siphash_random_key(key);
    s->k0 = key[0];
    s->k1 = key[1];
    return s;
}

void tg_tenant_shared_free(struct tg_tenant_shared *s)
{
    if (s == NULL)
        return;
    for (struct rec *r = s->oldest, *next; r != NULL; r = next) {
        next = r->newer;
        free(r);
    }
    for (struct rec *r = s->retired, *next; r != NULL; r = next) {
        next = r->retired_next;
        free(r);
    }
    pthread_mutex_destroy(&s->lock);
    free(s->buckets);
    free(s->readers);
    free(s);
}

static uint64_t hash_of(const struct tg_tenant_shared *s, const char *key, size_t klen)
{
    return tg_siphash13(key, klen, s->k0, s->k1);
}

static bool rec_is(const struct rec *r, uint64_t h, const char *key, size_t klen)
{
    return r->hash == h && r->klen == klen && memcmp(r->bytes, key, klen) == 0;
}

/* The link that points at the record for `key` (its chain's head or its
 * predecessor's next); it points at NULL when there is none. Writer. */
static _Atomic(struct rec *) *link_to(struct tg_tenant_shared *s, uint64_t h, const char *key,
                                      size_t klen)
{
    _Atomic(struct rec *) *link = &s->buckets[h & s->mask];
    struct rec *r;
    while ((r = atomic_load(link)) != NULL && !rec_is(r, h, key, klen))
        link = &r->next;
    return link;
}

static void age_unlink(struct tg_tenant_shared *s, struct rec *r)
{
    if (r->older != NULL)
        r->older->newer = r->newer;
    else
        s->oldest = r->newer;
    if (r->newer != NULL)
        r->newer->older = r->older;
    else
        s->newest = r->older;
}

static void retire(struct tg_tenant_shared *s, struct rec *r)
{
    age_unlink(s, r);
    r->retired_at = atomic_load(&s->epoch);
    r->retired_next = s->retired;
    s->retired = r;
}

/* Frees what no reader can reach any more. Writer, after the epoch moved. */
static void reclaim(struct tg_tenant_shared *s)
{
    uint64_t oldest_reading = UINT64_MAX;
    for (unsigned i = 0; i < s->nreaders; i++) {
        uint64_t e = atomic_load(&s->readers[i].epoch);
        if (e != 0 && e < oldest_reading)
            oldest_reading = e;
    }
    struct rec **p = &s->retired;
    while (*p != NULL) {
        struct rec *r = *p;
        if (r->retired_at < oldest_reading) {
            *p = r->retired_next;
            free(r);
        } else {
            p = &r->retired_next;
        }
    }
}

/* Unlinks the oldest entries past the bound. */
static void trim(struct tg_tenant_shared *s)
{
    while (s->count > s->max && s->oldest != NULL) {
        struct rec *old = s->oldest;
        _Atomic(struct rec *) *link = link_to(s, old->hash, old->bytes, old->klen);
        atomic_store(link, atomic_load(&old->next));
        retire(s, old);
        s->count--;
    }
}

void tg_tenant_shared_put(struct tg_tenant_shared *s, const char *key, size_t klen,
                          const void *data, size_t len, double when)
{
    if (s == NULL)
        return;
    struct rec *r = malloc(sizeof(*r) + klen + len);
    if (r == NULL)
        return; /* a fallback only: the worker's own cache has it */
    r->hash = hash_of(s, key, klen);
    r->when = when;
    r->klen = klen;
    r->len = len;
    memcpy(r->bytes, key, klen);
    memcpy(r->bytes + klen, data, len);
    r->retired_next = NULL;
    pthread_mutex_lock(&s->lock);
    _Atomic(struct rec *) *link = link_to(s, r->hash, key, klen);
    struct rec *old = atomic_load(link);
    if (old != NULL) {
        atomic_init(&r->next, atomic_load(&old->next));
        atomic_store(link, r);
        retire(s, old);
    } else {
        atomic_init(&r->next, NULL);
        atomic_store(link, r);
        s->count++;
    }
    r->older = s->newest;
    r->newer = NULL;
    if (s->newest != NULL)
        s->newest->newer = r;
    else
        s->oldest = r;
    s->newest = r;
    trim(s);
    atomic_fetch_add(&s->epoch, 1);
    reclaim(s);
    pthread_mutex_unlock(&s->lock);
}

void tg_tenant_shared_forget(struct tg_tenant_shared *s, const char *key, size_t klen)
{
    if (s == NULL)
        return;
    uint64_t h = hash_of(s, key, klen);
    pthread_mutex_lock(&s->lock);
    _Atomic(struct rec *) *link = link_to(s, h, key, klen);
    struct rec *old = atomic_load(link);
    if (old != NULL) {
        atomic_store(link, atomic_load(&old->next));
        retire(s, old);
        s->count--;
        atomic_fetch_add(&s->epoch, 1);
        reclaim(s);
    }
    pthread_mutex_unlock(&s->lock);
}

ssize_t tg_tenant_shared_get(struct tg_tenant_shared *s, unsigned reader, const char *key,
                             size_t klen, void *buf, size_t cap, double *when)
{
    if (s == NULL || reader >= s->nreaders)
        return -1;
    uint64_t h = hash_of(s, key, klen);
    struct reader *me = &s->readers[reader];
    atomic_store(&me->epoch, atomic_load(&s->epoch));
    ssize_t n = -1;
    for (struct rec *r = atomic_load(&s->buckets[h & s->mask]); r != NULL;
         r = atomic_load(&r->next)) {
        if (!rec_is(r, h, key, klen))
            continue;
        if (r->len <= cap) {
            memcpy(buf, r->bytes + r->klen, r->len);
            *when = r->when;
            n = (ssize_t)r->len;
        }
        break;
    }
    atomic_store(&me->epoch, 0);
    return n;
}

size_t tg_tenant_shared_count(struct tg_tenant_shared *s)
{
    if (s == NULL)
        return 0;
    pthread_mutex_lock(&s->lock);
    size_t n = s->count;
    pthread_mutex_unlock(&s->lock);
    return n;
}
