/* Per-client counters: 64 lock stripes, each a small chained hash table. */
#include "iptable.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* The hash's low STRIPE_BITS pick the stripe, the bits above the bucket. */
#define STRIPE_BITS 6
#define STRIPES (1 << STRIPE_BITS)
#define BUCKETS_PER_STRIPE 256
#define V6_BITS 128

struct entry {
    struct tg_addr addr;
    unsigned count[TG_IPTABLE_KINDS];
    struct entry *next;
};

struct stripe {
    pthread_mutex_t lock;
    struct entry *buckets[BUCKETS_PER_STRIPE];
};

struct tg_iptable {
    struct stripe stripes[STRIPES];
    uint64_t seed;
};

struct tg_iptable *tg_iptable_new(void)
{
    struct tg_iptable *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&t->stripes[i].lock, NULL);
    t->seed = (uint64_t)(uintptr_t)t * 0x9e3779b97f4a7c15ull;
    return t;
}

void tg_iptable_free(struct tg_iptable *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < STRIPES; i++) {
        for (int b = 0; b < BUCKETS_PER_STRIPE; b++) {
            struct entry *e = t->stripes[i].buckets[b];
            while (e != NULL) {
                struct entry *next = e->next;
                free(e);
                e = next;
            }
        }
        pthread_mutex_destroy(&t->stripes[i].lock);
    }
    free(t);
}

void tg_iptable_group(const struct tg_addr *a, unsigned v6_prefix, struct tg_addr *out)
{
    *out = *a;
    if (a->family == AF_INET6 && v6_prefix < V6_BITS)
        tg_addr_mask(out, v6_prefix);
}

static uint64_t hash_addr(const struct tg_iptable *t, const struct tg_addr *a)
{
    uint64_t h = t->seed ^ a->family;
    for (int i = 0; i < 16; i += 8) {
        uint64_t w;
        memcpy(&w, a->ip + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 33;
    }
    return h;
}

static struct entry **find(struct stripe *s, const struct tg_addr *a, uint64_t h)
{
    struct entry **pp = &s->buckets[(h >> STRIPE_BITS) % BUCKETS_PER_STRIPE];
    while (*pp != NULL && !tg_addr_equal(&(*pp)->addr, a))
        pp = &(*pp)->next;
    return pp;
}

bool tg_iptable_acquire(struct tg_iptable *t, const struct tg_addr *a, enum tg_iptable_kind kind,
                        unsigned limit)
{
    uint64_t h = hash_addr(t, a);
    struct stripe *s = &t->stripes[h % STRIPES];
    bool ok = true;
    pthread_mutex_lock(&s->lock);
    struct entry **pp = find(s, a, h);
    if (*pp == NULL) {
        struct entry *e = calloc(1, sizeof(*e));
        if (e == NULL) {
            ok = false;
        } else {
            e->addr = *a;
            *pp = e;
        }
    }
    if (ok && limit != 0 && (*pp)->count[kind] >= limit)
        ok = false;
    if (ok)
        (*pp)->count[kind]++;
    if (*pp != NULL) {
        bool empty = true;
        for (int k = 0; k < TG_IPTABLE_KINDS; k++)
            empty &= (*pp)->count[k] == 0;
        if (empty) {
            struct entry *e = *pp;
            *pp = e->next;
            free(e);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ok;
}

void tg_iptable_release(struct tg_iptable *t, const struct tg_addr *a, enum tg_iptable_kind kind)
{
    uint64_t h = hash_addr(t, a);
    struct stripe *s = &t->stripes[h % STRIPES];
    pthread_mutex_lock(&s->lock);
    struct entry **pp = find(s, a, h);
    if (*pp != NULL && (*pp)->count[kind] > 0) {
        (*pp)->count[kind]--;
        bool empty = true;
        for (int k = 0; k < TG_IPTABLE_KINDS; k++)
            empty &= (*pp)->count[k] == 0;
        if (empty) {
            struct entry *e = *pp;
            *pp = e->next;
            free(e);
        }
    }
    pthread_mutex_unlock(&s->lock);
}
