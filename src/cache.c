/* The response cache's store: a hash table of refcounted entries, an LRU
 * list and a byte bound, the Cache-Control rules, and the shared purge
 * log. It does not see requests, streams or the loop: the caller passes
 * the fields and the time. */
#include "cache.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "siphash.h"
#include "str.h"

/* Buckets start at this many and double when the entries outnumber them. */
#define MIN_BUCKETS 64
/* Fixed cost counted for an entry besides its bytes (struct, vectors). */
#define ENTRY_OVERHEAD 256

struct tg_cache {
    struct tg_cache_entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    size_t bytes;
    size_t max_bytes, max_entry;
    struct tg_list lru;
    uint64_t k0, k1; /* the hash key: paths are the client's to choose */
    struct tg_cache_stats *stats;
    struct tg_cache_purges *purges;
    uint64_t purge_seq; /* purges of the shared log applied here */
};

/* ---- the purge log ------------------------------------------------------------ */

int tg_cache_purges_init(struct tg_cache_purges *p)
{
    memset(p, 0, sizeof(*p));
    return pthread_mutex_init(&p->lock, NULL) == 0 ? 0 : -1;
}

void tg_cache_purges_fini(struct tg_cache_purges *p)
{
    pthread_mutex_destroy(&p->lock);
}

int tg_cache_purges_post(struct tg_cache_purges *p, const char *key, size_t len)
{
    if (len == 0 || len > TG_CACHE_KEY_MAX)
        return -1;
    pthread_mutex_lock(&p->lock);
    uint64_t n = atomic_load(&p->seq) + 1;
    memcpy(p->ring[(n - 1) % TG_CACHE_PURGE_RING].key, key, len);
    p->ring[(n - 1) % TG_CACHE_PURGE_RING].len = len;
    /* Published after the slot is written: a worker that sees the new
     * count reads the slot under the lock anyway. */
    atomic_store(&p->seq, n);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

/* ---- keys and rules ---------------------------------------------------------- */

size_t tg_cache_key(char *out, size_t cap, const char *host, size_t host_len, const char *path,
                    size_t path_len)
{
    while (host_len > 0 && host[host_len - 1] == '.')
        host_len--;
    if (host_len + path_len + 1 > cap)
        return 0;
    for (size_t i = 0; i < host_len; i++)
        out[i] = tg_ascii_lower(host[i]);
    memcpy(out + host_len, path, path_len);
    out[host_len + path_len] = '\0';
    return host_len + path_len;
}

/* The next comma-separated element of a list field value, trimmed;
 * false at the end. */
static bool next_item(const char **p, const char *end, struct tg_str *item)
{
    const char *s = *p;
    while (s < end && (*s == ',' || *s == ' ' || *s == '\t'))
        s++;
    if (s >= end)
        return false;
    const char *e = s;
    bool quoted = false;
    while (e < end && (quoted || *e != ',')) {
        if (*e == '"')
            quoted = !quoted;
        e++;
    }
    *p = e;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *item = tg_str_make(s, (size_t)(e - s));
    return true;
}

/* A directive's name is `lit` (case-insensitive), up to '=' or the end. */
static bool directive_is(struct tg_str d, const char *lit, struct tg_str *arg)
{
    size_t n = strlen(lit);
    if (d.n < n || !tg_str_caseeq(tg_str_make(d.p, n), lit))
        return false;
    if (d.n == n) {
        *arg = tg_str_make(NULL, 0);
        return true;
    }
    if (d.p[n] != '=')
        return false;
    *arg = tg_str_make(d.p + n + 1, d.n - n - 1);
    if (arg->n >= 2 && arg->p[0] == '"' && arg->p[arg->n - 1] == '"')
        *arg = tg_str_make(arg->p + 1, arg->n - 2);
    return true;
}

/* Delta-seconds: digits only; -1 when invalid. Large values are capped
 * (RFC 9111 1.2.2: 2^31). */
static double delta_seconds(struct tg_str a)
{
    if (a.n == 0)
        return -1;
    double v = 0;
    for (size_t i = 0; i < a.n; i++) {
        if (a.p[i] < '0' || a.p[i] > '9')
            return -1;
        if (v < 2147483648.0)
            v = v * 10 + (a.p[i] - '0');
    }
    return v < 2147483648.0 ? v : 2147483648.0;
}

void tg_cache_judge(int status, const struct tg_http_headers *h, double default_ttl,
                    struct tg_cache_verdict *out)
{
    memset(out, 0, sizeof(*out));
    double max_age = -1, s_maxage = -1;
    bool explicit_given = false;
    for (size_t i = 0; i < h->n; i++) {
        const struct tg_http_header *f = &h->v[i];
        if (tg_http_name_eq(f->name, "set-cookie")) {
            out->why = "Set-Cookie";
            return;
        }
        if (tg_http_name_eq(f->name, "age")) {
            double a = delta_seconds(f->value);
            if (a > 0)
                out->age = a;
            continue;
        }
        const char *p = f->value.p, *end = f->value.p + f->value.n;
        struct tg_str item, arg;
        if (tg_http_name_eq(f->name, "vary")) {
            while (next_item(&p, end, &item))
                if (tg_str_eq(item, "*")) {
                    out->any_vary = true;
                    out->why = "Vary: *";
                    return;
                }
            continue;
        }
        if (!tg_http_name_eq(f->name, "cache-control"))
            continue;
        while (next_item(&p, end, &item)) {
            if (directive_is(item, "no-store", &arg)) {
                out->why = "no-store";
                return;
            }
            /* private="field" keeps the rest storable in a private cache;
             * a shared cache treats every form as private. */
            if (directive_is(item, "private", &arg)) {
                out->why = "private";
                return;
            }
            /* no-cache means "revalidate before each use"; we do not
             * revalidate, so such a response is not kept at all. */
            if (directive_is(item, "no-cache", &arg)) {
                out->why = "no-cache";
                return;
            }
            if (directive_is(item, "s-maxage", &arg)) {
                s_maxage = delta_seconds(arg);
                explicit_given = true;
            } else if (directive_is(item, "max-age", &arg)) {
                max_age = delta_seconds(arg);
                explicit_given = true;
            }
        }
    }
    bool by_default = status == 200 || status == 203;
    bool by_explicit = by_default || status == 301 || status == 404 || status == 410;
    if (!by_explicit) {
        out->why = "status";
        return;
    }
    if (s_maxage >= 0)
        out->lifetime = s_maxage;
    else if (max_age >= 0)
        out->lifetime = max_age;
    else if (explicit_given) /* an invalid max-age: stale (RFC 9111 4.2.1) */
        out->lifetime = 0;
    else if (by_default)
        out->lifetime = default_ttl;
    else {
        out->why = "status without max-age";
        return;
    }
    if (out->lifetime - out->age <= 0) {
        out->why = "not fresh";
        return;
    }
    out->storable = true;
}

bool tg_cache_parse_date(const char *p, size_t n, int64_t *out)
{
    /* "Sun, 06 Nov 1994 08:49:37 GMT": 29 bytes, fixed positions. */
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    if (n != 29 || p[3] != ',' || p[4] != ' ' || p[7] != ' ' || p[11] != ' ' || p[16] != ' ' ||
        p[19] != ':' || p[22] != ':' || memcmp(p + 25, " GMT", 4) != 0)
        return false;
    static const int digits[] = {5, 6, 12, 13, 14, 15, 17, 18, 20, 21, 23, 24};
    for (size_t i = 0; i < TG_ARRAY_LEN(digits); i++)
        if (p[digits[i]] < '0' || p[digits[i]] > '9')
            return false;
    int mon = -1;
    for (int m = 0; m < 12; m++)
        if (memcmp(p + 8, months + 3 * m, 3) == 0)
            mon = m;
    if (mon < 0)
        return false;
#define D2(i) ((p[i] - '0') * 10 + (p[(i) + 1] - '0'))
    struct tm tm = {
        .tm_mday = D2(5),
        .tm_mon = mon,
        .tm_year = D2(12) * 100 + D2(14) - 1900,
        .tm_hour = D2(17),
        .tm_min = D2(20),
        .tm_sec = D2(23),
    };
#undef D2
    if (tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
        return false;
    *out = (int64_t)timegm(&tm);
    return true;
}

/* ---- entries ------------------------------------------------------------------- */

static void stat_add(struct tg_cache *c, int64_t bytes, int64_t entries)
{
    TG_METRIC_ADD(c->stats->bytes, bytes);
    TG_METRIC_ADD(c->stats->entries, entries);
}

static void entry_free(struct tg_cache_entry *e)
{
    free(e->key);
    free(e->head.v);
    free(e->head_bytes);
    free(e->body);
    for (unsigned i = 0; i < TG_CACHE_CODINGS; i++)
        free(e->coded[i]);
    free(e->vary);
    free(e);
}

void tg_cache_ref(struct tg_cache_entry *e)
{
    e->refs++;
}

void tg_cache_unref(struct tg_cache_entry *e)
{
    if (e != NULL && --e->refs == 0)
        entry_free(e);
}

/* Counts `n` more bytes of `e` against its store (when it is in one). */
static void charge(struct tg_cache_entry *e, size_t n)
{
    e->charged += n;
    if (e->cache != NULL) {
        e->cache->bytes += n;
        stat_add(e->cache, (int64_t)n, 0);
    }
}

/* Takes `e` out of its store's table and LRU list and drops the store's
 * reference; waiters of an entry still filling keep waiting for it (the
 * filler still has its reference and will wake them). */
static void unlink_entry(struct tg_cache_entry *e)
{
    struct tg_cache *c = e->cache;
    if (c == NULL)
        return;
    struct tg_cache_entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    e->hnext = NULL;
    tg_list_remove(&e->lru);
    c->count--;
    c->bytes -= e->charged;
    stat_add(c, -(int64_t)e->charged, -1);
    e->cache = NULL;
    tg_cache_unref(e);
}

/* Evicts least recently used complete entries until `need` more bytes fit.
 * Entries being filled are passed over: they are bounded by max_entry and
 * their filler is streaming them now. */
static void make_room(struct tg_cache *c, size_t need)
{
    struct tg_list *n = tg_list_last(&c->lru);
    while (n != NULL && n != &c->lru && c->bytes + need > c->max_bytes) {
        struct tg_cache_entry *e = tg_list_entry(n, struct tg_cache_entry, lru);
        n = n->prev;
        if (e->state == TG_CACHE_FILLING)
            continue;
        unlink_entry(e);
        TG_METRIC_INC(c->stats->evictions);
    }
}

static void wake_all(struct tg_cache_entry *e, bool ok)
{
    struct tg_list *n;
    /* A woken waiter may end its request, which unparks nothing (it is
     * already unlinked) and may drop references: keep one meanwhile. */
    tg_cache_ref(e);
    while ((n = tg_list_first(&e->waiters)) != NULL) {
        struct tg_cache_waiter *w = tg_list_entry(n, struct tg_cache_waiter, link);
        tg_list_remove(n);
        w->entry = NULL;
        e->nwaiters--;
        if (ok) {
            tg_cache_ref(e);
            w->wake(w, e);
        } else {
            w->wake(w, NULL);
        }
    }
    tg_cache_unref(e);
}

/* ---- the store ----------------------------------------------------------------- */

struct tg_cache *tg_cache_new(size_t max_bytes, size_t max_entry, struct tg_cache_stats *stats,
                              struct tg_cache_purges *purges)
{
    struct tg_cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->buckets = calloc(MIN_BUCKETS, sizeof(*c->buckets));
    if (c->buckets == NULL) {
        free(c);
        return NULL;
    }
    c->nbuckets = MIN_BUCKETS;
    c->max_bytes = max_bytes;
    c->max_entry = max_entry;
    c->stats = stats;
    c->purges = purges;
    c->purge_seq = purges != NULL ? atomic_load(&purges->seq) : 0;
    tg_list_init(&c->lru);
    uint64_t k[2];
    tg_siphash_random_key(k);
    c->k0 = k[0];
    c->k1 = k[1];
    return c;
}

static void drop_all(struct tg_cache *c, uint64_t *counter)
{
    struct tg_list *n;
    while ((n = tg_list_first(&c->lru)) != NULL) {
        unlink_entry(tg_list_entry(n, struct tg_cache_entry, lru));
        if (counter != NULL)
            TG_METRIC_INC(*counter);
    }
}

void tg_cache_free(struct tg_cache *c)
{
    if (c == NULL)
        return;
    drop_all(c, NULL);
    free(c->buckets);
    free(c);
}

size_t tg_cache_bytes(const struct tg_cache *c)
{
    return c->bytes;
}

size_t tg_cache_count(const struct tg_cache *c)
{
    return c->count;
}

static uint64_t hash_of(const struct tg_cache *c, const char *key, size_t len)
{
    return tg_siphash13(key, len, c->k0, c->k1);
}

size_t tg_cache_purge(struct tg_cache *c, const char *key, size_t len)
{
    uint64_t h = hash_of(c, key, len);
    size_t n = 0;
    struct tg_cache_entry *e = c->buckets[h & (c->nbuckets - 1)];
    while (e != NULL) {
        struct tg_cache_entry *next = e->hnext;
        if (e->hash == h && e->key_len == len && memcmp(e->key, key, len) == 0) {
            /* A fill under way goes on for its waiters (it answers the
             * requests made before the purge) but is no longer found. */
            unlink_entry(e);
            TG_METRIC_INC(c->stats->purged);
            n++;
        }
        e = next;
    }
    return n;
}

/* Applies the purges posted since this store last looked. */
static void apply_purges(struct tg_cache *c)
{
    struct tg_cache_purges *p = c->purges;
    if (p == NULL || atomic_load_explicit(&p->seq, memory_order_relaxed) == c->purge_seq)
        return;
    pthread_mutex_lock(&p->lock);
    uint64_t seq = atomic_load(&p->seq);
    if (seq - c->purge_seq > TG_CACHE_PURGE_RING) {
        drop_all(c, &c->stats->purged); /* fell behind: the ring lost some */
    } else {
        for (uint64_t s = c->purge_seq + 1; s <= seq; s++)
            tg_cache_purge(c, p->ring[(s - 1) % TG_CACHE_PURGE_RING].key,
                           p->ring[(s - 1) % TG_CACHE_PURGE_RING].len);
    }
    c->purge_seq = seq;
    pthread_mutex_unlock(&p->lock);
}

/* The values of field `lower` in `h`, joined with ", " into `out`; false
 * when `h` has none. */
static bool field_values(const struct tg_http_headers *h, const char *lower, char *out, size_t cap,
                         size_t *len)
{
    bool found = false;
    size_t o = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (!tg_http_name_eq(h->v[i].name, lower))
            continue;
        size_t need = h->v[i].value.n + (found ? 2 : 0);
        if (o + need > cap)
            need = cap - o; /* cut: a longer value compares on its prefix */
        if (found && need >= 2) {
            memcpy(out + o, ", ", 2);
            o += 2;
            need -= 2;
        }
        memcpy(out + o, h->v[i].value.p, need);
        o += need;
        found = true;
    }
    *len = o;
    return found;
}

#define VARY_VALUE_MAX 1024

bool tg_cache_vary_match(const struct tg_cache_entry *e, const struct tg_http_headers *req_fields)
{
    const char *p = e->vary, *end = e->vary + e->vary_len;
    char buf[VARY_VALUE_MAX];
    while (p < end) {
        const char *name = p;
        p += strlen(p) + 1;
        size_t n;
        bool present = field_values(req_fields, name, buf, sizeof(buf), &n);
        if (*p == '\1') {
            p++;
            size_t vn = strlen(p);
            if (!present || vn != n || memcmp(p, buf, n) != 0)
                return false;
            p += vn + 1;
        } else {
            if (present)
                return false;
            p++;
        }
    }
    return true;
}

struct tg_cache_entry *tg_cache_lookup(struct tg_cache *c, const char *key, size_t len,
                                       const struct tg_http_headers *req_fields, double now,
                                       bool *filling)
{
    apply_purges(c);
    *filling = false;
    uint64_t h = hash_of(c, key, len);
    struct tg_cache_entry *e = c->buckets[h & (c->nbuckets - 1)], *pending = NULL;
    while (e != NULL) {
        struct tg_cache_entry *next = e->hnext;
        if (e->hash == h && e->key_len == len && memcmp(e->key, key, len) == 0) {
            if (e->state == TG_CACHE_FILLING) {
                pending = e;
            } else if (now >= e->expires) {
                unlink_entry(e);
            } else if (tg_cache_vary_match(e, req_fields)) {
                tg_list_remove(&e->lru);
                tg_list_push_front(&c->lru, &e->lru);
                tg_cache_ref(e);
                return e;
            }
        }
        e = next;
    }
    if (pending != NULL) {
        *filling = true;
        tg_cache_ref(pending);
    }
    return pending;
}

static void grow_table(struct tg_cache *c)
{
    size_t nb = c->nbuckets * 2;
    struct tg_cache_entry **b = calloc(nb, sizeof(*b));
    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < c->nbuckets; i++) {
        struct tg_cache_entry *e = c->buckets[i];
        while (e != NULL) {
            struct tg_cache_entry *next = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

struct tg_cache_entry *tg_cache_fill_begin(struct tg_cache *c, const char *key, size_t len)
{
    struct tg_cache_entry *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->key = malloc(len + 1)) == NULL) {
        free(e);
        return NULL;
    }
    memcpy(e->key, key, len);
    e->key[len] = '\0';
    e->key_len = len;
    e->hash = hash_of(c, key, len);
    e->refs = 2; /* the table's and the filler's */
    e->expect_len = -1;
    tg_list_init(&e->waiters);
    if (c->count >= c->nbuckets)
        grow_table(c);
    size_t b = e->hash & (c->nbuckets - 1);
    e->hnext = c->buckets[b];
    c->buckets[b] = e;
    tg_list_push_front(&c->lru, &e->lru);
    c->count++;
    e->cache = c;
    stat_add(c, 0, 1);
    size_t base = ENTRY_OVERHEAD + len;
    make_room(c, base);
    charge(e, base);
    return e;
}

void tg_cache_fill_abandon(struct tg_cache_entry *e)
{
    if (e == NULL || e->state != TG_CACHE_FILLING)
        return;
    e->state = TG_CACHE_ABANDONED;
    unlink_entry(e);
    wake_all(e, false);
}

/* Hop-by-hop and framing fields are the front end's and ours to write for
 * each answer; Age is computed per hit. */
static bool stored_field(struct tg_str name, const struct tg_http_headers *h)
{
    static const char *const skip[] = {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "proxy-connection",
        "te",
        "trailer",
        "age",
        "proxy-authenticate",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(skip); i++)
        if (tg_http_name_eq(name, skip[i]))
            return false;
    /* Fields the backend's Connection names are hop-by-hop too. */
    for (size_t i = 0; i < h->n; i++) {
        if (!tg_http_name_eq(h->v[i].name, "connection"))
            continue;
        const char *p = h->v[i].value.p, *end = p + h->v[i].value.n;
        struct tg_str item;
        while (next_item(&p, end, &item))
            if (item.n == name.n && strncasecmp(item.p, name.p, name.n) == 0)
                return false;
    }
    return true;
}

/* Records the request's values of the fields `h`'s Vary names. */
static int keep_vary(struct tg_cache_entry *e, const struct tg_http_headers *h,
                     const struct tg_http_headers *req_fields)
{
    size_t cap = 0;
    for (size_t i = 0; i < h->n; i++)
        if (tg_http_name_eq(h->v[i].name, "vary"))
            cap += h->v[i].value.n * 2 + 8 * (VARY_VALUE_MAX + 3);
    if (cap == 0)
        return 0;
    /* Room for every name, lower-cased, and a value of up to
     * VARY_VALUE_MAX for each of up to 8 names per field. */
    char *out = malloc(cap);
    if (out == NULL)
        return -1;
    size_t o = 0;
    char buf[VARY_VALUE_MAX];
    for (size_t i = 0; i < h->n; i++) {
        if (!tg_http_name_eq(h->v[i].name, "vary"))
            continue;
        const char *p = h->v[i].value.p, *end = p + h->v[i].value.n;
        struct tg_str item;
        while (next_item(&p, end, &item)) {
            if (o + item.n + VARY_VALUE_MAX + 3 > cap) {
                free(out);
                return -1; /* more than 8 names in one Vary field: not stored */
            }
            for (size_t k = 0; k < item.n; k++)
                out[o++] = tg_ascii_lower(item.p[k]);
            out[o++] = '\0';
            out[o] = '\0';
            size_t n;
            if (field_values(req_fields, out + o - item.n - 1, buf, sizeof(buf), &n)) {
                out[o++] = '\1';
                memcpy(out + o, buf, n);
                o += n;
            }
            out[o++] = '\0';
        }
    }
    /* Kept at its size: the room reserved above is not held or counted. */
    char *fit = realloc(out, o > 0 ? o : 1);
    e->vary = fit != NULL ? fit : out;
    e->vary_len = o;
    return 0;
}

bool tg_cache_fill_head(struct tg_cache_entry *e, int status, const struct tg_http_headers *h,
                        int64_t length, const struct tg_http_headers *req_fields,
                        const struct tg_cache_verdict *v, double now)
{
    struct tg_cache *c = e->cache;
    if (e->state != TG_CACHE_FILLING)
        return false;
    if (!v->storable || c == NULL || (length >= 0 && (uint64_t)length > c->max_entry))
        goto abandon;
    size_t bytes = 0, n = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (!stored_field(h->v[i].name, h))
            continue;
        bytes += h->v[i].name.n + h->v[i].value.n;
        n++;
    }
    e->head.v = calloc(n + 1, sizeof(*e->head.v));
    e->head_bytes = malloc(bytes + 1);
    if (e->head.v == NULL || e->head_bytes == NULL || keep_vary(e, h, req_fields) < 0)
        goto abandon;
    char *o = e->head_bytes;
    for (size_t i = 0; i < h->n; i++) {
        const struct tg_http_header *f = &h->v[i];
        if (!stored_field(f->name, h))
            continue;
        struct tg_http_header *t = &e->head.v[e->head.n++];
        memcpy(o, f->name.p, f->name.n);
        t->name = tg_str_make(o, f->name.n);
        o += f->name.n;
        memcpy(o, f->value.p, f->value.n);
        t->value = tg_str_make(o, f->value.n);
        o += f->value.n;
        if (tg_http_name_eq(f->name, "etag"))
            e->etag = t->value;
        else if (tg_http_name_eq(f->name, "last-modified"))
            e->last_modified = t->value;
    }
    e->head.cap = n + 1;
    e->status = status;
    e->expect_len = length;
    e->stored_at = now;
    e->age0 = v->age;
    e->expires = now + v->lifetime - v->age;
    if (length > 0) {
        e->body = malloc((size_t)length);
        if (e->body == NULL)
            goto abandon;
        e->body_cap = (size_t)length;
    }
    size_t more = bytes + n * sizeof(*e->head.v) + e->vary_len + e->body_cap;
    make_room(c, more);
    charge(e, more);
    return true;
abandon:
    tg_cache_fill_abandon(e);
    return false;
}

bool tg_cache_fill_body(struct tg_cache_entry *e, const void *p, size_t n)
{
    if (e->state != TG_CACHE_FILLING)
        return false;
    if (n == 0)
        return true;
    size_t max = e->cache != NULL ? e->cache->max_entry : e->body_cap;
    if (e->body_len + n > max || (e->expect_len >= 0 && e->body_len + n > (size_t)e->expect_len))
        goto abandon;
    if (e->body_len + n > e->body_cap) {
        /* Unknown length: grow by doubling, within max_entry. */
        size_t cap = e->body_cap != 0 ? e->body_cap : 4096;
        while (cap < e->body_len + n)
            cap *= 2;
        if (cap > max)
            cap = max;
        char *b = realloc(e->body, cap);
        if (b == NULL)
            goto abandon;
        e->body = b;
        if (e->cache != NULL)
            make_room(e->cache, cap - e->body_cap);
        charge(e, cap - e->body_cap);
        e->body_cap = cap;
    }
    memcpy(e->body + e->body_len, p, n);
    e->body_len += n;
    return true;
abandon:
    tg_cache_fill_abandon(e);
    return false;
}

void tg_cache_fill_done(struct tg_cache_entry *e)
{
    if (e->state != TG_CACHE_FILLING)
        return;
    if (e->head.v == NULL || (e->expect_len >= 0 && e->body_len != (size_t)e->expect_len)) {
        tg_cache_fill_abandon(e);
        return;
    }
    e->state = TG_CACHE_READY;
    if (e->cache != NULL)
        TG_METRIC_INC(e->cache->stats->stores);
    wake_all(e, true);
}

bool tg_cache_wait(struct tg_cache_entry *e, struct tg_cache_waiter *w, unsigned max)
{
    if (e->state != TG_CACHE_FILLING || e->nwaiters >= max)
        return false;
    tg_list_push_back(&e->waiters, &w->link);
    w->entry = e;
    e->nwaiters++;
    return true;
}

void tg_cache_unwait(struct tg_cache_waiter *w)
{
    if (w->entry == NULL)
        return;
    tg_list_remove(&w->link);
    w->entry->nwaiters--;
    w->entry = NULL;
}

bool tg_cache_set_coded(struct tg_cache_entry *e, unsigned coding, char *data, size_t len)
{
    struct tg_cache *c = e->cache;
    if (coding >= TG_CACHE_CODINGS || e->coded[coding] != NULL || e->state != TG_CACHE_READY ||
        c == NULL || e->charged + len > c->max_bytes) {
        free(data);
        return false;
    }
    /* The entry being read is the most recently used: make_room starts
     * from the other end, and passes over it if it comes to it. */
    tg_list_remove(&e->lru);
    make_room(c, len);
    tg_list_push_front(&c->lru, &e->lru);
    if (c->bytes + len > c->max_bytes) {
        free(data); /* what is left is being filled now */
        return false;
    }
    e->coded[coding] = data;
    e->coded_len[coding] = len;
    charge(e, len);
    return true;
}

double tg_cache_age(const struct tg_cache_entry *e, double now)
{
    double a = e->age0 + (now - e->stored_at);
    return a > 0 ? a : 0;
}

void tg_cache_req_release(struct tg_cache_req *cr)
{
    tg_cache_unwait(&cr->waiter);
    if (cr->fill != NULL) {
        tg_cache_fill_abandon(cr->fill);
        tg_cache_unref(cr->fill);
        cr->fill = NULL;
    }
    tg_cache_unref(cr->hit);
    cr->hit = NULL;
}
