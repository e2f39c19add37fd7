/* Per-tenant metrics with a cardinality guard (tenant_metrics.h). */
#include "tenant_metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "siphash.h"

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

#define ID_WORDS ((TG_TENANT_METRICS_ID_MAX + 1) / 8)
#define SERIES_WORDS (sizeof(struct tg_tenant_series) / sizeof(uint64_t))
_Static_assert(sizeof(struct tg_tenant_series) % sizeof(uint64_t) == 0,
               "the series is read as 64-bit words");
_Static_assert((TG_TENANT_METRICS_ID_MAX + 1) % 8 == 0, "ids are stored as 64-bit words");

/* A begun request counted under "_other" (its id was too long). */
#define MARK_OTHER UINT32_MAX

/* ---- settings (main thread, before the workers) ----------------------------- */

static unsigned limit;   /* admin.tenant_series */
static bool configured;  /* the first configuration was seen */
static uint64_t hkey[2]; /* one hash key for all workers: the scrape merges by hash */

void tg_tenant_metrics_configure(unsigned n)
{
    if (configured) {
        if (n != limit)
            tg_log_warn("admin.tenant_series changed: the new limit takes effect at the next "
                        "start (the workers' tables are sized by the old one)");
        return;
    }
    configured = true;
    limit = n;
    tg_siphash_random_key(hkey);
}

unsigned tg_tenant_metrics_limit(void)
{
    return limit;
}

/* ---- a worker's table -------------------------------------------------------- */

struct slot {
    uint32_t seq;    /* odd while the slot changes tenant (the scrape skips it) */
    uint32_t gen;    /* bumped at each change of tenant */
    uint32_t next;   /* hash chain, 1-based; 0 ends it */
    uint32_t heap;   /* position in the min-heap */
    uint64_t hash;   /* of the id */
    uint64_t weight; /* space-saving count: traffic since it came, plus the count it took over */
    uint64_t id[ID_WORDS];
    struct tg_tenant_series s;
};

struct tg_tenant_metrics {
    uint32_t capacity;
    uint32_t used; /* slots [0, used) hold tenants; published with release */
    uint32_t mask; /* chains - 1 */
    uint32_t *chains;
    uint32_t *heap; /* slot indices, least weight first */
    struct slot *slots;
    struct tg_tenant_series other;
    uint64_t evictions;
    uint64_t rng; /* xorshift state: which newcomers take a slot */
};

/* Tests make every newcomer take a slot (plain space-saving). */
static bool admit_always;

struct tg_tenant_metrics *tg_tenant_metrics_new(void)
{
    if (limit == 0)
        return NULL;
    struct tg_tenant_metrics *tm = calloc(1, sizeof(*tm));
    if (tm == NULL)
        return NULL;
    tm->capacity = limit * 2;
    tm->rng = (hkey[0] ^ (uint64_t)(uintptr_t)tm) | 1;
    uint32_t nchains = 1;
    while (nchains < tm->capacity * 2)
        nchains <<= 1;
    tm->mask = nchains - 1;
    tm->chains = calloc(nchains, sizeof(*tm->chains));
    tm->heap = calloc(tm->capacity, sizeof(*tm->heap));
    tm->slots = calloc(tm->capacity, sizeof(*tm->slots));
    if (tm->chains == NULL || tm->heap == NULL || tm->slots == NULL) {
        tg_tenant_metrics_free(tm);
        return NULL;
    }
    return tm;
}

void tg_tenant_metrics_free(struct tg_tenant_metrics *tm)
{
    if (tm == NULL)
        return;
    free(tm->chains);
    free(tm->heap);
    free(tm->slots);
    free(tm);
}

static void heap_swap(struct tg_tenant_metrics *tm, uint32_t a, uint32_t b)
{
    uint32_t sa = tm->heap[a], sb = tm->heap[b];
    tm->heap[a] = sb;
    tm->heap[b] = sa;
    tm->slots[sb].heap = a;
    tm->slots[sa].heap = b;
}

/* A slot's weight only grows: it moves towards the leaves. */
static void heap_down(struct tg_tenant_metrics *tm, uint32_t i)
{
    uint32_t n = tm->used;
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, least = i;
        if (l < n && tm->slots[tm->heap[l]].weight < tm->slots[tm->heap[least]].weight)
            least = l;
        if (r < n && tm->slots[tm->heap[r]].weight < tm->slots[tm->heap[least]].weight)
            least = r;
        if (least == i)
            return;
        heap_swap(tm, i, least);
        i = least;
    }
}

static void heap_up(struct tg_tenant_metrics *tm, uint32_t i)
{
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (tm->slots[tm->heap[parent]].weight <= tm->slots[tm->heap[i]].weight)
            return;
        heap_swap(tm, i, parent);
        i = parent;
    }
}

static bool same_id(const struct slot *sl, const uint64_t id[ID_WORDS])
{
    return memcmp(sl->id, id, sizeof(sl->id)) == 0;
}

static void chain_unlink(struct tg_tenant_metrics *tm, uint32_t idx)
{
    uint32_t *p = &tm->chains[tm->slots[idx].hash & tm->mask];
    while (*p != 0 && *p != idx + 1)
        p = &tm->slots[*p - 1].next;
    if (*p != 0)
        *p = tm->slots[idx].next;
}

static void chain_link(struct tg_tenant_metrics *tm, uint32_t idx)
{
    uint32_t *head = &tm->chains[tm->slots[idx].hash & tm->mask];
    tm->slots[idx].next = *head;
    *head = idx + 1;
}

static void series_add(struct tg_tenant_series *dst, const struct tg_tenant_series *src)
{
    uint64_t *d = (uint64_t *)dst;
    const uint64_t *s = (const uint64_t *)src;
    for (size_t i = 0; i < SERIES_WORDS; i++)
        STORE(d[i], LOAD(d[i]) + s[i]);
}

/* Gives the least busy slot to a new tenant: its counts (and its requests
 * still in flight) go to "_other"; the newcomer inherits its weight, as
 * space-saving says, so it must earn its place before it outranks others. */
static uint32_t take_least(struct tg_tenant_metrics *tm, uint64_t h, const uint64_t id[ID_WORDS])
{
    uint32_t idx = tm->heap[0];
    struct slot *sl = &tm->slots[idx];
    uint32_t seq = sl->seq;
    STORE(sl->seq, seq + 1);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    series_add(&tm->other, &sl->s);
    chain_unlink(tm, idx);
    uint64_t *words = (uint64_t *)&sl->s;
    for (size_t i = 0; i < SERIES_WORDS; i++)
        STORE(words[i], 0);
    for (size_t i = 0; i < ID_WORDS; i++)
        STORE(sl->id[i], id[i]);
    sl->hash = h;
    STORE(sl->weight, sl->weight + 1);
    sl->gen++;
    __atomic_store_n(&sl->seq, seq + 2, __ATOMIC_RELEASE);
    chain_link(tm, idx);
    STORE(tm->evictions, tm->evictions + 1);
    heap_down(tm, 0);
    return idx;
}

static uint32_t add_new(struct tg_tenant_metrics *tm, uint64_t h, const uint64_t id[ID_WORDS])
{
    uint32_t idx = tm->used;
    struct slot *sl = &tm->slots[idx];
    for (size_t i = 0; i < ID_WORDS; i++)
        STORE(sl->id[i], id[i]);
    sl->hash = h;
    sl->gen = 1;
    STORE(sl->weight, 1);
    chain_link(tm, idx);
    tm->heap[idx] = idx;
    sl->heap = idx;
    __atomic_store_n(&tm->used, idx + 1, __ATOMIC_RELEASE);
    heap_up(tm, idx);
    return idx;
}

/* A tenant not tracked, the table full: does it take the least busy
 * slot? With probability 1 / (that slot's weight + 1) (the random
 * admission policy of Ben Basat et al., 2017): a tenant with real traffic
 * gets in after about as many requests as the least busy one has had,
 * while a long tail of tenants that come once (100,000 round robin) does
 * not evict on every request. Not admitted, the request counts under
 * "_other". */
static bool admitted(struct tg_tenant_metrics *tm)
{
    if (admit_always)
        return true;
    uint64_t x = tm->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    tm->rng = x;
    uint64_t least = tm->slots[tm->heap[0]].weight;
    return x % (least + 1) == 0;
}

void tg_tenant_metrics_begin(struct tg_tenant_metrics *tm, const char *id,
                             struct tg_tenant_mark *mark)
{
    if (tm == NULL)
        return;
    size_t n = strnlen(id, TG_TENANT_METRICS_ID_MAX + 1);
    if (n > TG_TENANT_METRICS_ID_MAX) {
        STORE(tm->other.active, tm->other.active + 1);
        mark->slot = MARK_OTHER;
        return;
    }
    uint64_t words[ID_WORDS] = {0};
    memcpy(words, id, n);
    uint64_t h = tg_siphash13(words, n, hkey[0], hkey[1]);
    uint32_t i = tm->chains[h & tm->mask];
    while (i != 0 && !(tm->slots[i - 1].hash == h && same_id(&tm->slots[i - 1], words)))
        i = tm->slots[i - 1].next;
    uint32_t idx;
    if (i != 0) {
        idx = i - 1;
        struct slot *sl = &tm->slots[idx];
        STORE(sl->weight, sl->weight + 1);
        heap_down(tm, sl->heap);
    } else {
        if (tm->used < tm->capacity) {
            idx = add_new(tm, h, words);
        } else if (admitted(tm)) {
            idx = take_least(tm, h, words);
        } else {
            STORE(tm->other.active, tm->other.active + 1);
            mark->slot = MARK_OTHER;
            return;
        }
    }
    struct slot *sl = &tm->slots[idx];
    STORE(sl->s.active, sl->s.active + 1);
    mark->slot = idx + 1;
    mark->gen = sl->gen;
}

void tg_tenant_metrics_end(struct tg_tenant_metrics *tm, const struct tg_tenant_mark *mark,
                           const struct tg_tenant_outcome *o)
{
    if (tm == NULL)
        return;
    struct tg_tenant_series *s = &tm->other;
    if (mark->slot != 0 && mark->slot != MARK_OTHER) {
        struct slot *sl = &tm->slots[mark->slot - 1];
        /* A slot given to another tenant since: its in-flight count went
         * to "_other" with the rest. */
        if (sl->gen == mark->gen)
            s = &sl->s;
    }
    if (mark->slot != 0)
        STORE(s->active, s->active - 1);
    if (o == NULL)
        return;
    STORE(s->requests[o->status_class], s->requests[o->status_class] + 1);
    if (o->limited)
        STORE(s->limited, s->limited + 1);
    if (o->upstream_error)
        STORE(s->upstream_errors, s->upstream_errors + 1);
    STORE(s->bytes_in, s->bytes_in + o->bytes_in);
    STORE(s->bytes_out, s->bytes_out + o->bytes_out);
    STORE(s->duration[o->bucket], s->duration[o->bucket] + 1);
    STORE(s->duration_us, s->duration_us + o->duration_us);
}

/* ---- the scrape ------------------------------------------------------------------ */

/* One tenant as the workers' tables have it, summed. */
struct merged {
    uint64_t hash;
    uint64_t id[ID_WORDS];
    uint64_t weight;
    struct tg_tenant_series s;
    bool exported;
};

/* What the previous scrape showed: the export set, and the values it gave
 * (nothing exported goes below them). */
struct shown {
    uint64_t hash;
    uint64_t id[ID_WORDS];
    struct tg_tenant_series last;
    struct merged *m; /* this scrape's merge, or NULL: no worker has it */
};

static struct {
    pthread_mutex_t lock;
    struct shown *set;
    size_t n, cap;
    struct tg_tenant_series other;
} ex = {.lock = PTHREAD_MUTEX_INITIALIZER};

void tg_tenant_metrics_reset_export(void)
{
    pthread_mutex_lock(&ex.lock);
    free(ex.set);
    ex.set = NULL;
    ex.n = ex.cap = 0;
    memset(&ex.other, 0, sizeof(ex.other));
    pthread_mutex_unlock(&ex.lock);
}

static void series_load(struct tg_tenant_series *dst, const struct tg_tenant_series *src)
{
    uint64_t *d = (uint64_t *)dst;
    const uint64_t *s = (const uint64_t *)src;
    for (size_t i = 0; i < SERIES_WORDS; i++)
        d[i] = LOAD(s[i]);
}

/* Reads one slot as a whole, or not at all (false: it was changing). */
static bool read_slot(const struct slot *sl, struct merged *m)
{
    uint32_t seq = __atomic_load_n(&sl->seq, __ATOMIC_ACQUIRE);
    if (seq & 1)
        return false;
    for (size_t i = 0; i < ID_WORDS; i++)
        m->id[i] = LOAD(sl->id[i]);
    m->weight = LOAD(sl->weight);
    series_load(&m->s, &sl->s);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&sl->seq, __ATOMIC_RELAXED) != seq)
        return false;
    size_t n = strnlen((const char *)m->id, sizeof(m->id));
    m->hash = tg_siphash13(m->id, n, hkey[0], hkey[1]);
    m->exported = false;
    return true;
}

/* Open addressing over the merged tenants, by hash. */
struct index {
    struct merged **at;
    size_t mask;
};

static struct merged **index_find(struct index *ix, uint64_t h, const uint64_t id[ID_WORDS])
{
    size_t i = h & ix->mask;
    while (ix->at[i] != NULL &&
           !(ix->at[i]->hash == h && memcmp(ix->at[i]->id, id, sizeof(ix->at[i]->id)) == 0))
        i = (i + 1) & ix->mask;
    return &ix->at[i];
}

static int by_weight_desc(const void *a, const void *b)
{
    const struct merged *x = *(struct merged *const *)a, *y = *(struct merged *const *)b;
    return x->weight < y->weight ? 1 : x->weight > y->weight ? -1 : 0;
}

static int shown_by_weight_asc(const void *a, const void *b)
{
    const struct shown *x = a, *y = b;
    return x->m->weight < y->m->weight ? -1 : x->m->weight > y->m->weight ? 1 : 0;
}

static int rows_by_weight_desc(const void *a, const void *b)
{
    const struct tg_tenant_row *x = a, *y = b;
    return x->weight < y->weight ? 1 : x->weight > y->weight ? -1 : 0;
}

/* `v` raised to at least `floor`, counter by counter (the gauge as is). */
static void keep_monotonic(struct tg_tenant_series *v, const struct tg_tenant_series *floor)
{
    int64_t active = v->active;
    uint64_t *d = (uint64_t *)v;
    const uint64_t *f = (const uint64_t *)floor;
    for (size_t i = 0; i < SERIES_WORDS; i++)
        if (d[i] < f[i])
            d[i] = f[i];
    v->active = active;
}

static void series_sub_floor0(struct tg_tenant_series *total, const struct tg_tenant_series *part)
{
    int64_t active = total->active - part->active;
    uint64_t *d = (uint64_t *)total;
    const uint64_t *p = (const uint64_t *)part;
    for (size_t i = 0; i < SERIES_WORDS; i++)
        d[i] = d[i] > p[i] ? d[i] - p[i] : 0;
    total->active = active > 0 ? active : 0;
}

static void series_sum(struct tg_tenant_series *dst, const struct tg_tenant_series *src)
{
    uint64_t *d = (uint64_t *)dst;
    const uint64_t *s = (const uint64_t *)src;
    for (size_t i = 0; i < SERIES_WORDS; i++)
        d[i] += s[i];
}

/* Chooses the export set among the merged tenants: the previous set minus
 * those no worker has any more, then newcomers while there is room, then a
 * newcomer replaces the weakest member only with twice its weight. */
static int choose(struct merged *m, size_t nm, struct index *ix)
{
    size_t keep = 0;
    for (size_t i = 0; i < ex.n; i++) {
        struct merged **p = index_find(ix, ex.set[i].hash, ex.set[i].id);
        if (*p == NULL)
            continue;
        ex.set[keep] = ex.set[i];
        ex.set[keep].m = *p;
        (*p)->exported = true;
        keep++;
    }
    ex.n = keep;
    struct merged **cand = malloc((nm + 1) * sizeof(*cand));
    if (cand == NULL)
        return -1;
    size_t nc = 0;
    for (size_t i = 0; i < nm; i++)
        if (!m[i].exported)
            cand[nc++] = &m[i];
    qsort(cand, nc, sizeof(*cand), by_weight_desc);
    if (ex.cap < limit) {
        struct shown *set = realloc(ex.set, limit * sizeof(*set));
        if (set == NULL) {
            free(cand);
            return -1;
        }
        ex.set = set;
        ex.cap = limit;
    }
    size_t c = 0;
    for (; c < nc && ex.n < limit; c++) {
        struct shown *s = &ex.set[ex.n++];
        memset(s, 0, sizeof(*s));
        s->hash = cand[c]->hash;
        memcpy(s->id, cand[c]->id, sizeof(s->id));
        s->m = cand[c];
        cand[c]->exported = true;
    }
    if (c < nc && ex.n > 0) {
        qsort(ex.set, ex.n, sizeof(*ex.set), shown_by_weight_asc);
        for (size_t k = 0; c < nc && k < ex.n && cand[c]->weight > 2 * ex.set[k].m->weight;
             c++, k++) {
            struct shown *s = &ex.set[k];
            s->m->exported = false;
            memset(s, 0, sizeof(*s));
            s->hash = cand[c]->hash;
            memcpy(s->id, cand[c]->id, sizeof(s->id));
            s->m = cand[c];
            cand[c]->exported = true;
        }
    }
    free(cand);
    return 0;
}

int tg_tenant_metrics_report(struct tg_tenant_metrics *const *workers, unsigned nworkers,
                             struct tg_tenant_report *out)
{
    memset(out, 0, sizeof(*out));
    out->limit = limit;
    size_t total = 0;
    for (unsigned w = 0; w < nworkers; w++)
        if (workers[w] != NULL)
            total += __atomic_load_n(&workers[w]->used, __ATOMIC_ACQUIRE);
    struct merged *m = calloc(total + 1, sizeof(*m));
    size_t nslots = 1;
    while (nslots < 2 * (total + 1))
        nslots <<= 1;
    struct index ix = {calloc(nslots, sizeof(*ix.at)), nslots - 1};
    if (m == NULL || ix.at == NULL) {
        free(m);
        free(ix.at);
        return -1;
    }
    /* Everything counted: the tenants the workers hold, and their "_other". */
    struct tg_tenant_series all = {0};
    size_t nm = 0;
    for (unsigned w = 0; w < nworkers; w++) {
        struct tg_tenant_metrics *tm = workers[w];
        if (tm == NULL)
            continue;
        struct tg_tenant_series other;
        series_load(&other, &tm->other);
        series_sum(&all, &other);
        out->evictions += LOAD(tm->evictions);
        out->capacity += tm->capacity;
        uint32_t used = __atomic_load_n(&tm->used, __ATOMIC_ACQUIRE);
        out->tracked += used;
        for (uint32_t i = 0; i < used && nm < total; i++) {
            struct merged tmp;
            if (!read_slot(&tm->slots[i], &tmp))
                continue;
            series_sum(&all, &tmp.s);
            struct merged **p = index_find(&ix, tmp.hash, tmp.id);
            if (*p == NULL) {
                m[nm] = tmp;
                *p = &m[nm++];
            } else {
                (*p)->weight += tmp.weight;
                series_sum(&(*p)->s, &tmp.s);
            }
        }
    }
    pthread_mutex_lock(&ex.lock);
    int rc = choose(m, nm, &ix);
    if (rc == 0 && ex.n > 0) {
        out->rows = calloc(ex.n, sizeof(*out->rows));
        if (out->rows == NULL)
            rc = -1;
    }
    if (rc == 0) {
        struct tg_tenant_series shown = {0};
        for (size_t i = 0; i < ex.n; i++) {
            struct shown *s = &ex.set[i];
            struct tg_tenant_row *row = &out->rows[i];
            row->s = s->m->s;
            keep_monotonic(&row->s, &s->last);
            s->last = row->s;
            row->weight = s->m->weight;
            memcpy(row->id, s->id, sizeof(row->id));
            series_sum(&shown, &row->s);
        }
        out->n = ex.n;
        out->other = all;
        series_sub_floor0(&out->other, &shown);
        keep_monotonic(&out->other, &ex.other);
        ex.other = out->other;
        if (out->n > 1)
            qsort(out->rows, out->n, sizeof(*out->rows), rows_by_weight_desc);
    }
    pthread_mutex_unlock(&ex.lock);
    free(m);
    free(ix.at);
    if (rc < 0)
        tg_tenant_report_free(out);
    return rc;
}

void tg_tenant_report_free(struct tg_tenant_report *r)
{
    free(r->rows);
    r->rows = NULL;
    r->n = 0;
}
