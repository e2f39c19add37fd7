/* The tenant directory: the config's static tenants and custom domains in
 * hash tables built at load, and per worker a bounded cache of what Redis
 * says (HGETALL PREFIX<id>, GET PREFIXhost:<domain>) with coalesced
 * fetches, negative caching, stale-while-error and invalidation by pub/sub.
 * It does not route (router.c finds the id in the Host) and does not pick
 * servers (upstream.c does, on t->upstream).
 *
 * Shapes. A cache entry is keyed by what follows PREFIX in Redis and in
 * the invalidation messages: "acme" for a tenant, "host:shop.example.com"
 * for a custom domain (ids cannot hold ':', so the two never collide). A
 * fetch is one Redis command in flight (or parked until the link is up)
 * for one key, with the look-ups waiting on it; an entry has at most one,
 * so concurrent look-ups share it. A fetch whose entry was invalidated or
 * cleared meanwhile is detached: its answer goes to its waiters but is not
 * cached, as it may predate the change.
 *
 * Lifetimes. Tenants from Redis are one malloc'd block each, refcounted:
 * the cache holds one reference, every request it is handed to another.
 * Their t->upstream borrows the TLS settings of the upstream_defaults of
 * the snapshot the directory was last configured with (d->cfg); a request
 * on another snapshot (a reload happened meanwhile) gets a private copy
 * built on its own snapshot, so no request ever holds a pointer into a
 * snapshot it does not hold. User callbacks run only from the loop (reply,
 * link state, the kick timer), inside a depth count: tg_tenant_dir_free
 * from inside one answers everyone at once and leaves the final free to
 * the outermost handler. */
#include "tenant.h"

#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <hiredis/hiredis.h>

#include "arena.h"
#include "list.h"
#include "log.h"
#include "ratelimit.h"
#include "redis.h"
#include "redis_cluster.h"
#include "redis_sub.h"
#include "router.h"
#include "siphash.h"
#include "str.h"
#include "tenant_shared.h"

#define ID_MAX 63
#define DOMAIN_MAX 253
#define HOST_TAG "host:"
#define HOST_TAG_LEN 5
#define KEY_MAX (HOST_TAG_LEN + DOMAIN_MAX)
#define NAME_TAG "$tenant:"
#define NAME_TAG_LEN 8
#define DEFAULT_PREFIX "tollgate:tenant:"
#define CHANNEL_SUFFIX "changed"
/* Bounds on what one Redis entry may hold: a peer's data is capped. */
#define SERVERS_MAX 256
#define SERVERS_TEXT_MAX 16384
#define BUCKETS_MIN 64
#define RATE_TEXT_MAX 32 /* "N/s": longer is malformed */
/* Digits a number field may have: 19 never overflow an int64 before the
 * bound is checked. */
#define DIGITS_MAX 19
/* Slots of the static tables at least (they are kept under half full). */
#define INDEX_MIN 16
/* A tenant block's servers start at this alignment, malloc's own. */
#define BLOCK_ALIGN 16

/* Knobs the unit test shortens; zero means the modules' defaults. */
static struct tg_redis_options link_tuning;
static struct tg_redis_sub_options sub_tuning;

/* ---- hashing -------------------------------------------------------------- */

/* FNV-1a over lower-cased bytes, for the static tables: their keys come
 * from the config, so clients cannot aim collisions at them. */
static uint64_t hash_lower(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)tg_ascii_lower(p[i]);
        h *= 0x100000001b3ULL;
    }
    return h;
}

static size_t pow2_at_least(size_t n, size_t min)
{
    size_t c = min;
    while (c < n)
        c *= 2;
    return c;
}

/* ---- names ---------------------------------------------------------------- */

/* Lower-cases an id into out (ID_MAX + 1 bytes). Returns false unless it
 * is a DNS label. */
static bool lower_id(const char *p, size_t n, char *out)
{
    if (!tg_router_valid_label(tg_str_make(p, n)))
        return false;
    for (size_t i = 0; i < n; i++)
        out[i] = tg_ascii_lower(p[i]);
    out[n] = '\0';
    return true;
}

/* Lower-cases a custom domain into out (DOMAIN_MAX + 1 bytes), one
 * trailing dot dropped. Returns its length, or 0 unless it is 1-253 bytes
 * of letters, digits, '-', '_' and '.' (no port: the caller strips it). */
static size_t lower_domain(const char *p, size_t n, char *out)
{
    if (n > 0 && p[n - 1] == '.')
        n--;
    if (n == 0 || n > DOMAIN_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = tg_ascii_lower(p[i]);
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return 0;
        out[i] = c;
    }
    out[n] = '\0';
    return n;
}

/* ---- tenant objects ------------------------------------------------------- */

/* What a tenant is made of, before it becomes one block. */
struct spec {
    const char *id;
    size_t idlen;
    bool suspended;
    const struct tg_config_server *servers; /* addr.text NUL-terminated */
    size_t nservers;
    int64_t rate_interval_ns, rate_count, rate_period_s, burst;
};

#define ALIGN_UP(n) (((n) + BLOCK_ALIGN - 1) & ~(size_t)(BLOCK_ALIGN - 1))

/* One block: the tenant, its servers, its strings. refs = 1. */
static struct tg_tenant *tenant_new(const struct spec *sp,
                                    const struct tg_config_upstream *defaults)
{
    size_t off_servers = ALIGN_UP(sizeof(struct tg_tenant));
    size_t off_strings = off_servers + sp->nservers * sizeof(struct tg_config_server);
    size_t size = off_strings + sp->idlen + 1 + NAME_TAG_LEN + sp->idlen + 1;
    for (size_t i = 0; i < sp->nservers; i++)
        size += strlen(sp->servers[i].addr.text) + 1;
    char *b = malloc(size);
    if (b == NULL)
        return NULL;
    struct tg_tenant *t = (struct tg_tenant *)b;
    memset(t, 0, sizeof(*t));
    struct tg_config_server *servers = (struct tg_config_server *)(b + off_servers);
    char *p = b + off_strings;

    memcpy(p, sp->id, sp->idlen);
    p[sp->idlen] = '\0';
    t->id = p;
    p += sp->idlen + 1;
    char *name = p;
    memcpy(p, NAME_TAG, NAME_TAG_LEN);
    memcpy(p + NAME_TAG_LEN, sp->id, sp->idlen);
    p[NAME_TAG_LEN + sp->idlen] = '\0';
    p += NAME_TAG_LEN + sp->idlen + 1;
    for (size_t i = 0; i < sp->nservers; i++) {
        servers[i] = sp->servers[i];
        size_t n = strlen(sp->servers[i].addr.text);
        memcpy(p, sp->servers[i].addr.text, n + 1);
        servers[i].addr.text = p;
        p += n + 1;
    }

    t->upstream = *defaults;
    t->upstream.name = name;
    t->upstream.index = 0;
    t->upstream.servers = sp->nservers > 0 ? servers : NULL;
    t->upstream.nservers = sp->nservers;
    t->suspended = sp->suspended;
    t->rate_interval_ns = sp->rate_interval_ns;
    t->rate_count = sp->rate_count;
    t->rate_period_s = sp->rate_period_s;
    t->burst = sp->burst;
    t->refs = 1;
    return t;
}

/* The same tenant on other upstream defaults (another config snapshot). */
static struct tg_tenant *tenant_clone(const struct tg_tenant *t,
                                      const struct tg_config_upstream *defaults)
{
    struct spec sp = {
        .id = t->id,
        .idlen = strlen(t->id),
        .suspended = t->suspended,
        .servers = t->upstream.servers,
        .nservers = t->upstream.nservers,
        .rate_interval_ns = t->rate_interval_ns,
        .rate_count = t->rate_count,
        .rate_period_s = t->rate_period_s,
        .burst = t->burst,
    };
    return tenant_new(&sp, defaults);
}

void tg_tenant_ref(struct tg_tenant *t)
{
    if (t != NULL && t->refs > 0)
        t->refs++;
}

void tg_tenant_release(struct tg_tenant *t)
{
    if (t == NULL || t->refs == 0)
        return; /* static: lives as long as its snapshot */
    if (--t->refs == 0)
        free(t);
}

/* ---- static index --------------------------------------------------------- */

struct id_slot {
    uint64_t hash;
    struct tg_tenant *t; /* NULL: empty */
};

struct domain_slot {
    uint64_t hash;
    const char *domain; /* lower case, no trailing dot; NULL: empty */
    size_t len;
    const char *tenant; /* lower case */
};

struct tg_tenant_index {
    struct id_slot *ids;
    size_t ids_mask;
    struct domain_slot *domains;
    size_t domains_mask;
};

/* Matches p[0..n) case-insensitively against the lower-case NUL-terminated
 * s. */
static bool eq_lower(const char *p, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (tg_ascii_lower(p[i]) != s[i])
            return false;
    return s[n] == '\0';
}

static struct id_slot *id_slot(const struct tg_tenant_index *ix, const char *p, size_t n,
                               uint64_t h)
{
    for (size_t k = (size_t)h & ix->ids_mask;; k = (k + 1) & ix->ids_mask) {
        struct id_slot *s = &ix->ids[k];
        if (s->t == NULL || (s->hash == h && eq_lower(p, n, s->t->id)))
            return s;
    }
}

static struct domain_slot *domain_slot(const struct tg_tenant_index *ix, const char *p, size_t n,
                                       uint64_t h)
{
    for (size_t k = (size_t)h & ix->domains_mask;; k = (k + 1) & ix->domains_mask) {
        struct domain_slot *s = &ix->domains[k];
        if (s->domain == NULL || (s->hash == h && s->len == n && eq_lower(p, n, s->domain)))
            return s;
    }
}

void tg_tenant_index_free(struct tg_tenant_index *ix)
{
    if (ix == NULL)
        return;
    free(ix->ids);
    free(ix->domains);
    free(ix);
}

/* "FILE:LINE:COL: " for an entry with a mark, else nothing. */
static void entry_error(const struct tg_config *cfg, const struct tg_config_mark *mark, char *err,
                        size_t errlen, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void entry_error(const struct tg_config *cfg, const struct tg_config_mark *mark, char *err,
                        size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    int k = 0;
    if (mark != NULL && mark->line > 0)
        k = snprintf(err, errlen, "%s:%d:%d: ", tg_config_mark_file(cfg, *mark), mark->line,
                     mark->col);
    if (k < 0 || (size_t)k >= errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
    va_end(ap);
}

int tg_tenant_index_build(struct tg_config *cfg, char *err, size_t errlen)
{
    struct tg_config_tenants *tc = &cfg->tenants;
    struct tg_arena *a = &cfg->arena;
    struct tg_tenant_index *ix = calloc(1, sizeof(*ix));
    if (ix == NULL)
        goto oom;
    size_t icap = pow2_at_least(tc->ntenants * 2, INDEX_MIN);
    size_t dcap = pow2_at_least(tc->ndomains * 2, INDEX_MIN);
    ix->ids = calloc(icap, sizeof(*ix->ids));
    ix->domains = calloc(dcap, sizeof(*ix->domains));
    if (ix->ids == NULL || ix->domains == NULL)
        goto oom;
    ix->ids_mask = icap - 1;
    ix->domains_mask = dcap - 1;

    for (size_t i = 0; i < tc->ntenants; i++) {
        const struct tg_config_tenant *e = &tc->tenants[i];
        size_t n = e->id != NULL ? strlen(e->id) : 0;
        char id[ID_MAX + 1];
        if (n > ID_MAX || !lower_id(e->id, n, id)) {
            entry_error(cfg, &e->mark, err, errlen,
                        "tenant id '%.80s' is not a DNS label (1-63 letters, "
                        "digits and '-', not starting or ending with '-')",
                        e->id != NULL ? e->id : "");
            goto fail;
        }
        uint64_t h = hash_lower(id, n);
        struct id_slot *s = id_slot(ix, id, n, h);
        if (s->t != NULL) {
            entry_error(cfg, &e->mark, err, errlen, "tenant '%s' is defined twice", id);
            goto fail;
        }
        struct tg_tenant *t = tg_arena_calloc(a, 1, sizeof(*t));
        char *copy = tg_arena_strdup(a, id);
        char *name = tg_arena_printf(a, NAME_TAG "%s", id);
        if (t == NULL || copy == NULL || name == NULL)
            goto oom;
        t->id = copy;
        t->suspended = e->suspended;
        t->upstream = tc->upstream_defaults;
        t->upstream.name = name;
        t->upstream.index = 0;
        t->upstream.servers = e->servers;
        t->upstream.nservers = e->nservers;
        t->upstream.mark = e->mark;
        t->rate_interval_ns = e->rate_interval_ns;
        t->rate_count = e->rate_count;
        t->rate_period_s = e->rate_period_s;
        t->burst = e->burst;
        t->refs = 0; /* static: never freed before the snapshot */
        s->hash = h;
        s->t = t;
    }

    for (size_t i = 0; i < tc->ndomains; i++) {
        const struct tg_config_domain *e = &tc->domains[i];
        const char *dn = e->domain != NULL ? e->domain : "";
        char dom[DOMAIN_MAX + 1], id[ID_MAX + 1];
        size_t n = lower_domain(dn, strlen(dn), dom);
        if (n == 0) {
            entry_error(cfg, NULL, err, errlen, "custom domain '%.80s' is not a host name", dn);
            goto fail;
        }
        size_t idn = e->tenant != NULL ? strlen(e->tenant) : 0;
        if (idn > ID_MAX || !lower_id(e->tenant, idn, id)) {
            entry_error(cfg, NULL, err, errlen,
                        "custom domain '%s': tenant id '%.80s' is not a DNS "
                        "label",
                        dom, e->tenant != NULL ? e->tenant : "");
            goto fail;
        }
        if (tc->directory == TG_TENANTS_STATIC &&
            id_slot(ix, id, idn, hash_lower(id, idn))->t == NULL) {
            entry_error(cfg, NULL, err, errlen,
                        "custom domain '%s': tenant '%s' is not defined "
                        "(the directory is static)",
                        dom, id);
            goto fail;
        }
        uint64_t h = hash_lower(dom, n);
        struct domain_slot *s = domain_slot(ix, dom, n, h);
        if (s->domain != NULL) {
            entry_error(cfg, NULL, err, errlen, "custom domain '%s' is listed twice", dom);
            goto fail;
        }
        const char *dcopy = tg_arena_strdup(a, dom);
        const char *icopy = tg_arena_strdup(a, id);
        if (dcopy == NULL || icopy == NULL)
            goto oom;
        s->hash = h;
        s->domain = dcopy;
        s->len = n;
        s->tenant = icopy;
    }

    tg_tenant_index_free(tc->index);
    tc->index = ix;
    return 0;

oom:
    entry_error(cfg, NULL, err, errlen, "tenants: out of memory");
fail:
    tg_tenant_index_free(ix);
    return -1;
}

struct tg_tenant *tg_tenant_static(const struct tg_tenant_index *ix, const char *id, size_t n)
{
    if (ix == NULL || n == 0 || n > ID_MAX)
        return NULL;
    return id_slot(ix, id, n, hash_lower(id, n))->t;
}

const char *tg_tenant_static_domain(const struct tg_tenant_index *ix, const char *host, size_t n)
{
    if (n > 0 && host[n - 1] == '.')
        n--;
    if (ix == NULL || n == 0 || n > DOMAIN_MAX)
        return NULL;
    return domain_slot(ix, host, n, hash_lower(host, n))->tenant;
}

/* ---- the per-worker directory ---------------------------------------------- */

enum entry_state {
    E_EMPTY = 0, /* nothing known yet (its fetch is in flight) */
    E_FOUND,
    E_NOT_FOUND, /* absent, or malformed */
};

struct fetch;

struct entry {
    struct entry *hnext; /* bucket chain */
    struct tg_list lru;  /* in d->lru */
    uint64_t hash;
    struct tg_tenant *t; /* E_FOUND tenant: the cache's reference */
    char *target;        /* E_FOUND domain: its tenant id */
    struct fetch *fetch; /* in flight for this key, or NULL */
    ev_tstamp fetched;   /* when the data came */
    size_t mem;          /* bytes accounted in d->mem */
    unsigned char state; /* enum entry_state */
    bool domain;
    bool due; /* refetch at next use (a gap in pub/sub) */
    size_t klen;
    char key[]; /* "acme" / "host:shop.example.com" */
};

struct fetch {
    struct tg_list link; /* in d->parked or d->active, by `parked` */
    struct tg_tenant_dir *d;
    struct entry *e;                  /* NULL once detached */
    struct tg_redis_cluster_cmd *cmd; /* NULL while parked */
    struct tg_list waiters;           /* of tg_tenant_wait.link, first come first */
    bool parked;
    bool delivering; /* answered; its waiters are being called */
    bool domain;
    size_t klen;
    char key[];
};

struct tg_tenant_wait {
    struct tg_list link; /* in its fetch's waiters while it waits */
    tg_tenant_cb cb;
    void *arg;
    const struct tg_config_tenants *cfg; /* the request's snapshot */
    bool domain;                         /* waiting for a domain's tenant id */
};

struct tg_tenant_dir {
    struct ev_loop *loop;
    const struct tg_config_tenants *cfg; /* borrowed until reconfigured */

    /* copied config */
    bool redis;
    ev_tstamp ttl, negative_ttl, stale_ttl; /* s */
    size_t max_cached;
    char *address, *password;
    unsigned db;
    char *prefix;
    size_t prefix_len;
    char *keybuf; /* prefix + KEY_MAX */

    struct tg_redis_cluster *link; /* commands: one server, or a cluster's primaries */
    struct tg_redis_sub *sub;      /* invalidations */
    struct tg_redis_sub *sub_more; /* a cluster: also on the second seed (publishes reach
                                      every node), so one node's loss loses none */
    ev_timer kick;                 /* parked fetches, outside configure */

    /* cache */
    struct entry **buckets;
    size_t nbuckets, count;
    struct tg_list lru; /* of entry.lru, most recently used first */
    uint64_t k0, k1;
    size_t mem;

    struct tg_tenant_shared *shared; /* every worker's last-known entries */
    unsigned reader;                 /* our number there */

    struct tg_list parked, active; /* of fetch.link, oldest first */
    int depth;                     /* our handlers running user callbacks */
    bool closing;
    struct tg_tenant_stats st;
};

static size_t usable(const void *p)
{
    return p != NULL ? malloc_usable_size((void *)p) : 0;
}

/* ---- lists ---------------------------------------------------------------- */

static struct entry *entry_of(struct tg_list *n)
{
    return tg_list_entry(n, struct entry, lru);
}

static struct fetch *fetch_of(struct tg_list *n)
{
    return tg_list_entry(n, struct fetch, link);
}

static struct tg_tenant_wait *wait_of(struct tg_list *n)
{
    return tg_list_entry(n, struct tg_tenant_wait, link);
}

static struct tg_list *fl_of(struct tg_tenant_dir *d, const struct fetch *f)
{
    return f->parked ? &d->parked : &d->active;
}

/* Moves a fetch to the end of the list its `parked` flag names. */
static void fl_move(struct tg_tenant_dir *d, struct fetch *f, bool parked)
{
    tg_list_remove(&f->link);
    f->parked = parked;
    tg_list_push_back(fl_of(d, f), &f->link);
}

/* The most recently used entry, or NULL. */
static struct entry *lru_newest(const struct tg_tenant_dir *d)
{
    struct tg_list *n = tg_list_first(&d->lru);
    return n != NULL ? entry_of(n) : NULL;
}

/* ---- cache ---------------------------------------------------------------- */

static uint64_t key_hash(const struct tg_tenant_dir *d, const char *k, size_t n)
{
    return tg_siphash13(k, n, d->k0, d->k1);
}

static struct entry *cache_find(const struct tg_tenant_dir *d, const char *k, size_t n, uint64_t h)
{
    for (struct entry *e = d->buckets[h & (d->nbuckets - 1)]; e != NULL; e = e->hnext)
        if (e->hash == h && e->klen == n && memcmp(e->key, k, n) == 0)
            return e;
    return NULL;
}

static void touch(struct tg_tenant_dir *d, struct entry *e)
{
    if (lru_newest(d) != e) {
        tg_list_remove(&e->lru);
        tg_list_push_front(&d->lru, &e->lru);
    }
}

/* Bytes an entry holds, its data included. */
static void account(struct tg_tenant_dir *d, struct entry *e)
{
    d->mem -= e->mem;
    e->mem = usable(e) + usable(e->t) + usable(e->target);
    d->mem += e->mem;
}

static void drop_data(struct tg_tenant_dir *d, struct entry *e)
{
    tg_tenant_release(e->t);
    e->t = NULL;
    free(e->target);
    e->target = NULL;
    e->state = E_EMPTY;
    account(d, e);
}

static void grow(struct tg_tenant_dir *d)
{
    size_t n = d->nbuckets * 2;
    struct entry **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < d->nbuckets; i++) {
        struct entry *e = d->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(d->buckets);
    d->buckets = b;
    d->nbuckets = n;
}

static struct entry *cache_insert(struct tg_tenant_dir *d, const char *k, size_t n, uint64_t h,
                                  bool domain)
{
    struct entry *e = calloc(1, sizeof(*e) + n + 1);
    if (e == NULL)
        return NULL;
    e->hash = h;
    e->domain = domain;
    e->klen = n;
    memcpy(e->key, k, n);
    e->key[n] = '\0';
    if (d->count >= d->nbuckets)
        grow(d);
    struct entry **b = &d->buckets[h & (d->nbuckets - 1)];
    e->hnext = *b;
    *b = e;
    tg_list_push_front(&d->lru, &e->lru);
    d->count++;
    account(d, e);
    return e;
}

/* A fetch still running for the entry is detached: it answers its waiters
 * without caching. */
static void cache_remove(struct tg_tenant_dir *d, struct entry *e)
{
    struct entry **p = &d->buckets[e->hash & (d->nbuckets - 1)];
    while (*p != e)
        p = &(*p)->hnext;
    *p = e->hnext;
    tg_list_remove(&e->lru);
    if (e->fetch != NULL) {
        e->fetch->e = NULL;
        e->fetch = NULL;
    }
    tg_tenant_release(e->t);
    free(e->target);
    d->mem -= e->mem;
    d->count--;
    free(e);
}

/* Evicts least recently used entries down to max_cached. Entries with a
 * fetch in flight stay (their waiters need them); only they can hold the
 * count above the bound, and only while they run. */
static void evict(struct tg_tenant_dir *d)
{
    struct tg_list *head = &d->lru;
    for (struct tg_list *n = head->prev, *newer; d->count > d->max_cached && n != head; n = newer) {
        newer = n->prev;
        struct entry *e = entry_of(n);
        if (e->fetch == NULL)
            cache_remove(d, e);
    }
}

static void cache_clear(struct tg_tenant_dir *d)
{
    struct tg_list *n;
    while ((n = tg_list_last(&d->lru)) != NULL)
        cache_remove(d, entry_of(n));
}

static ev_tstamp entry_ttl(const struct tg_tenant_dir *d, const struct entry *e)
{
    return e->state == E_FOUND ? d->ttl : d->negative_ttl;
}

static bool fresh(const struct tg_tenant_dir *d, const struct entry *e, ev_tstamp now)
{
    return e->state != E_EMPTY && !e->due && now < e->fetched + entry_ttl(d, e);
}

/* Expired but still good enough when Redis cannot answer. Only what was
 * found: "it did not exist a while ago" is no reason to answer 404 now. */
static bool stale_ok(const struct tg_tenant_dir *d, const struct entry *e, ev_tstamp now)
{
    return e->state == E_FOUND && now < e->fetched + d->ttl + d->stale_ttl;
}

/* ---- answering -------------------------------------------------------------- */

/* The tenant as handed to a request on snapshot `cfg`, referenced for it;
 * NULL if out of memory. */
static struct tg_tenant *give(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                              struct tg_tenant *t)
{
    if (t->refs == 0 || cfg == d->cfg) {
        tg_tenant_ref(t);
        return t;
    }
    /* Built on the directory's snapshot, the request is on another (a
     * reload in between): its own copy, borrowing only from its own. */
    return tenant_clone(t, &cfg->upstream_defaults);
}

static void finish_waiter(struct tg_tenant_wait *w, enum tg_tenant_status st, struct tg_tenant *t)
{
    tg_tenant_cb cb = w->cb;
    void *arg = w->arg;
    free(w);
    cb(arg, st, t);
}

/* What the cache or the link could say without waiting. */
struct answer {
    int status;              /* enum tg_tenant_status, or -1: queued */
    struct tg_tenant *t;     /* tenant, FOUND: borrowed from the cache */
    char target[ID_MAX + 1]; /* domain, FOUND: the tenant id */
    bool stale;
};

static void answer_entry(struct entry *e, struct answer *a)
{
    a->status = TG_TENANT_FOUND;
    if (e->domain)
        snprintf(a->target, sizeof(a->target), "%s", e->target);
    else
        a->t = e->t;
}

static struct fetch *fetch_new(struct tg_tenant_dir *d, struct entry *e)
{
    struct fetch *f = calloc(1, sizeof(*f) + e->klen + 1);
    if (f == NULL)
        return NULL;
    f->d = d;
    f->e = e;
    f->domain = e->domain;
    f->klen = e->klen;
    memcpy(f->key, e->key, e->klen + 1);
    tg_list_init(&f->waiters);
    f->parked = true;
    tg_list_push_back(&d->parked, &f->link);
    e->fetch = f;
    return f;
}

static void fetch_free(struct fetch *f)
{
    tg_list_remove(&f->link);
    if (f->e != NULL)
        f->e->fetch = NULL;
    if (f->cmd != NULL)
        tg_redis_cluster_cancel(f->d->link, f->cmd);
    free(f);
}

static int on_fetch_reply(void *arg, const redisReply *reply);

/* Writes PREFIX<key> into d->keybuf; returns the slot it hashes to (0 on
 * one server). */
static unsigned key_slot(struct tg_tenant_dir *d, const char *key, size_t klen)
{
    memcpy(d->keybuf, d->prefix, d->prefix_len);
    memcpy(d->keybuf + d->prefix_len, key, klen);
    return d->link != NULL ? tg_redis_cluster_slot(d->link, d->keybuf, d->prefix_len + klen) : 0;
}

/* Whether a fetch for `slot` is sent now (UP), waits for the first
 * connection (CONNECTING: no server, or no cluster slot map, yet), or is
 * answered without Redis (anything else: a cluster node connecting after
 * a failover counts as down, its keys served stale meanwhile). */
static enum tg_redis_state slot_state(const struct tg_tenant_dir *d, unsigned slot)
{
    if (d->link == NULL)
        return TG_REDIS_DOWN;
    if (tg_redis_cluster_state(d->link) == TG_REDIS_CONNECTING)
        return TG_REDIS_CONNECTING;
    enum tg_redis_state s = tg_redis_cluster_slot_state(d->link, slot);
    return s == TG_REDIS_CONNECTING ? TG_REDIS_DOWN : s;
}

/* Sends a parked fetch. Returns false if the link refused it. */
static bool fetch_send(struct tg_tenant_dir *d, struct fetch *f)
{
    if (d->link == NULL)
        return false;
    unsigned slot = key_slot(d, f->key, f->klen);
    const char *argv[2] = {f->domain ? "GET" : "HGETALL", d->keybuf};
    size_t len[2] = {f->domain ? 3 : 7, d->prefix_len + f->klen};
    f->cmd = tg_redis_cluster_command(d->link, slot, 2, argv, len, 0, on_fetch_reply, f);
    if (f->cmd == NULL)
        return false;
    d->st.redis_lookups++;
    fl_move(d, f, false);
    return true;
}

static struct entry *from_shared(struct tg_tenant_dir *d, struct entry *e, bool domain,
                                 const char *key, size_t klen, uint64_t h, ev_tstamp now);

/* Answers `key` from the cache or the state of the link, or queues a
 * waiter (*wp, allocated here if NULL) on the fetch for it. */
static void resolve_key(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg, bool domain,
                        const char *key, size_t klen, struct tg_tenant_wait **wp, tg_tenant_cb cb,
                        void *arg, struct answer *a)
{
    ev_tstamp now = ev_now(d->loop);
    uint64_t h = key_hash(d, key, klen);
    struct entry *e = cache_find(d, key, klen, h);
    a->status = TG_TENANT_UNAVAILABLE;
    a->t = NULL;
    a->stale = false;
    if (e != NULL && fresh(d, e, now)) {
        touch(d, e);
        if (e->state == E_FOUND) {
            d->st.hits++;
            answer_entry(e, a);
        } else {
            d->st.negative_hits++;
            a->status = TG_TENANT_NOT_FOUND;
        }
        return;
    }
    d->st.misses++;

    struct fetch *f = e != NULL ? e->fetch : NULL;
    enum tg_redis_state ls = slot_state(d, key_slot(d, key, klen));
    if (f == NULL && (ls == TG_REDIS_UP || ls == TG_REDIS_CONNECTING)) {
        bool created = e == NULL;
        if (created && (e = cache_insert(d, key, klen, h, domain)) == NULL)
            goto offline;
        if ((f = fetch_new(d, e)) == NULL || (ls == TG_REDIS_UP && !fetch_send(d, f))) {
            /* Not sent: as if the link were down. */
            if (f != NULL)
                fetch_free(f);
            f = NULL;
            if (created) {
                cache_remove(d, e);
                e = NULL;
            }
            goto offline;
        }
        /* CONNECTING: parked until the link is up or down. */
    }
    if (f != NULL) {
        struct tg_tenant_wait *w = *wp;
        if (w == NULL) {
            if (cb == NULL || (w = calloc(1, sizeof(*w))) == NULL)
                goto offline; /* the fetch carries on for the cache */
            w->cb = cb;
            w->arg = arg;
            w->cfg = cfg;
            *wp = w;
        }
        w->domain = domain;
        tg_list_push_back(&f->waiters, &w->link);
        touch(d, e);
        evict(d);
        a->status = -1;
        return;
    }

offline:
    d->st.redis_errors++;
    if ((e != NULL && stale_ok(d, e, now)) ||
        (e = from_shared(d, e, domain, key, klen, h, now)) != NULL) {
        touch(d, e);
        answer_entry(e, a);
        a->stale = true;
        evict(d);
    }
}

/* Looks up a lower-case, valid id for a request on `cfg`: static, cache,
 * else queues *wp. Returns a status (*out referenced when FOUND) or -1. */
static int lookup_id(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg, const char *id,
                     size_t n, struct tg_tenant **out, struct tg_tenant_wait **wp, tg_tenant_cb cb,
                     void *arg)
{
    struct tg_tenant *t = tg_tenant_static(cfg->index, id, n);
    if (t != NULL) {
        d->st.hits++;
        *out = t;
        return TG_TENANT_FOUND;
    }
    if (!d->redis) {
        d->st.negative_hits++;
        return TG_TENANT_NOT_FOUND;
    }
    struct answer a;
    resolve_key(d, cfg, false, id, n, wp, cb, arg, &a);
    if (a.status != TG_TENANT_FOUND)
        return a.status;
    if (a.stale)
        d->st.stale_served++;
    if ((*out = give(d, cfg, a.t)) == NULL)
        return TG_TENANT_UNAVAILABLE;
    return TG_TENANT_FOUND;
}

/* Looks up a lower-case domain (dom, n) the same way. */
static int lookup_domain(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                         const char *dom, size_t n, struct tg_tenant **out,
                         struct tg_tenant_wait **wp, tg_tenant_cb cb, void *arg)
{
    const char *id = tg_tenant_static_domain(cfg->index, dom, n);
    if (id != NULL)
        return lookup_id(d, cfg, id, strlen(id), out, wp, cb, arg);
    if (!d->redis) {
        d->st.negative_hits++;
        return TG_TENANT_NOT_FOUND;
    }
    char key[KEY_MAX + 1];
    memcpy(key, HOST_TAG, HOST_TAG_LEN);
    memcpy(key + HOST_TAG_LEN, dom, n);
    struct answer a;
    resolve_key(d, cfg, true, key, HOST_TAG_LEN + n, wp, cb, arg, &a);
    if (a.status != TG_TENANT_FOUND)
        return a.status;
    if (a.stale)
        d->st.stale_served++;
    return lookup_id(d, cfg, a.target, strlen(a.target), out, wp, cb, arg);
}

/* Calls back (or moves on) one waiter of an answered fetch. */
static void answer_waiter(struct tg_tenant_dir *d, struct tg_tenant_wait *w,
                          enum tg_tenant_status st, struct tg_tenant *t, const char *target,
                          bool stale)
{
    if (stale && st == TG_TENANT_FOUND)
        d->st.stale_served++;
    if (st != TG_TENANT_FOUND) {
        finish_waiter(w, st, NULL);
        return;
    }
    struct tg_tenant *out = NULL;
    int rc;
    if (w->domain) {
        /* The domain's tenant id is known: now the tenant. */
        w->domain = false;
        rc = lookup_id(d, w->cfg, target, strlen(target), &out, &w, NULL, NULL);
        if (rc < 0)
            return; /* queued on that id's fetch */
    } else {
        out = give(d, w->cfg, t);
        rc = out != NULL ? TG_TENANT_FOUND : TG_TENANT_UNAVAILABLE;
    }
    finish_waiter(w, (enum tg_tenant_status)rc, out);
}

/* ---- Redis replies ---------------------------------------------------------- */

enum outcome {
    OUT_FOUND = 0,
    OUT_NOT_FOUND,
    OUT_MALFORMED,
    OUT_ERROR,
};

static bool is_error(const redisReply *r, const char *code)
{
    size_t n = strlen(code);
    return r->type == REDIS_REPLY_ERROR && r->len >= n && memcmp(r->str, code, n) == 0;
}

static bool value_is(const redisReply *v, const char *s)
{
    return v->len == strlen(s) && memcmp(v->str, s, v->len) == 0;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Is the host of "host:port" / "[v6]:port" an IP address? Names are not
 * resolved on the request path (that would block the loop). */
static bool numeric_host(const char *s)
{
    char host[INET6_ADDRSTRLEN + 1];
    unsigned char buf[sizeof(struct in6_addr)];
    const char *end;
    int family = AF_INET;
    if (s[0] == '[') {
        s++;
        end = strchr(s, ']');
        family = AF_INET6;
    } else {
        end = strrchr(s, ':');
    }
    if (end == NULL || end == s || (size_t)(end - s) >= sizeof(host))
        return false;
    memcpy(host, s, (size_t)(end - s));
    host[end - s] = '\0';
    return inet_pton(family, host, buf) == 1;
}

/* Parses "a:1, b:2" (value v, len n) into servers (at most cap), with
 * texts pointing into buf (n + 1 bytes). Returns the count, or -1 with why
 * set. */
static int parse_servers(const char *v, size_t n, char *buf, struct tg_config_server *servers,
                         size_t cap, char *why, size_t whylen)
{
    memcpy(buf, v, n);
    buf[n] = '\0';
    size_t count = 0;
    char *p = buf;
    for (;;) {
        char *comma = strchr(p, ',');
        char *end = comma != NULL ? comma : p + strlen(p);
        while (p < end && is_space(*p))
            p++;
        while (end > p && is_space(end[-1]))
            end--;
        *end = '\0';
        if (p == end) {
            snprintf(why, whylen, "an empty item in servers");
            return -1;
        }
        if (count == cap) {
            snprintf(why, whylen, "more than %zu servers", cap);
            return -1;
        }
        char err[128];
        if (!numeric_host(p)) {
            snprintf(why, whylen, "server '%.60s' is not IP:port (names are not resolved)", p);
            return -1;
        }
        memset(&servers[count], 0, sizeof(servers[count]));
        if (tg_config_parse_sockaddr(p, &servers[count].addr, err, sizeof(err)) < 0) {
            snprintf(why, whylen, "server: %.100s", err);
            return -1;
        }
        servers[count].addr.text = p;
        count++;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    return (int)count;
}

/* A decimal in [0, max] (v, n bytes). */
static bool parse_uint(const char *v, size_t n, int64_t max, int64_t *out)
{
    int64_t x = 0;
    if (n == 0 || n > DIGITS_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        x = x * 10 + (v[i] - '0');
        if (x > max)
            return false;
    }
    *out = x;
    return true;
}

/* Builds the tenant `id` from an HGETALL reply. */
/* The tenant `sp` describes with the servers listed in `text` ("ip:port,
 * ..."; none for a suspended tenant). */
static enum outcome tenant_of(struct tg_tenant_dir *d, struct spec *sp, const char *text,
                              size_t len, struct tg_tenant **out, char *why, size_t whylen)
{
    if (len == 0) {
        if (!sp->suspended) {
            snprintf(why, whylen, "no servers");
            return OUT_MALFORMED;
        }
        /* Suspended tenants need none: nothing is forwarded for them. */
        *out = tenant_new(sp, &d->cfg->upstream_defaults);
        return *out != NULL ? OUT_FOUND : OUT_ERROR;
    }
    if (len > SERVERS_TEXT_MAX) {
        snprintf(why, whylen, "servers is longer than %d bytes", SERVERS_TEXT_MAX);
        return OUT_MALFORMED;
    }
    size_t cap = 1;
    for (size_t i = 0; i < len; i++)
        cap += text[i] == ',';
    if (cap > SERVERS_MAX) {
        snprintf(why, whylen, "more than %d servers", SERVERS_MAX);
        return OUT_MALFORMED;
    }
    char *buf = malloc(len + 1);
    struct tg_config_server *arr = calloc(cap, sizeof(*arr));
    enum outcome oc = OUT_ERROR;
    if (buf != NULL && arr != NULL) {
        int n = parse_servers(text, len, buf, arr, cap, why, whylen);
        if (n < 0) {
            oc = OUT_MALFORMED;
        } else {
            sp->servers = arr;
            sp->nservers = (size_t)n;
            *out = tenant_new(sp, &d->cfg->upstream_defaults);
            oc = *out != NULL ? OUT_FOUND : OUT_ERROR;
        }
    }
    free(buf);
    free(arr);
    return oc;
}

static enum outcome parse_tenant(struct tg_tenant_dir *d, const char *id, size_t idlen,
                                 const redisReply *r, struct tg_tenant **out, char *why,
                                 size_t whylen)
{
    if (is_error(r, "WRONGTYPE")) {
        snprintf(why, whylen, "not a hash");
        return OUT_MALFORMED;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0)
        return OUT_ERROR;
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type != REDIS_REPLY_STRING)
            return OUT_ERROR;
    if (r->elements == 0)
        return OUT_NOT_FOUND;

    struct spec sp = {.id = id, .idlen = idlen};
    const redisReply *servers = NULL;
    for (size_t i = 0; i < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (value_is(k, "servers")) {
            servers = v;
        } else if (value_is(k, "status")) {
            if (value_is(v, "suspended")) {
                sp.suspended = true;
            } else if (!value_is(v, "active")) {
                snprintf(why, whylen,
                         "status '%.40s' is neither active nor "
                         "suspended",
                         v->str);
                return OUT_MALFORMED;
            }
        } else if (value_is(k, "rate") && v->len > 0) {
            char rate[RATE_TEXT_MAX];
            if (v->len >= sizeof(rate)) {
                snprintf(why, whylen, "rate is too long");
                return OUT_MALFORMED;
            }
            memcpy(rate, v->str, v->len);
            rate[v->len] = '\0';
            if (tg_ratelimit_parse_rate(rate, &sp.rate_interval_ns, &sp.rate_count,
                                        &sp.rate_period_s) < 0) {
                snprintf(why, whylen,
                         "rate '%s' is not N/s, N/m, N/h or "
                         "N/d",
                         rate);
                return OUT_MALFORMED;
            }
        } else if (value_is(k, "burst") && v->len > 0) {
            if (!parse_uint(v->str, v->len, INT32_MAX, &sp.burst)) {
                snprintf(why, whylen, "burst '%.40s' is not a count", v->str);
                return OUT_MALFORMED;
            }
        }
        /* Other fields belong to the control plane. */
    }

    return tenant_of(d, &sp, servers != NULL ? servers->str : NULL,
                     servers != NULL ? servers->len : 0, out, why, whylen);
}

/* Reads a GET PREFIXhost:<domain> reply into target (ID_MAX + 1). */
static enum outcome parse_domain(const redisReply *r, char *target, char *why, size_t whylen)
{
    if (r->type == REDIS_REPLY_NIL)
        return OUT_NOT_FOUND;
    if (is_error(r, "WRONGTYPE")) {
        snprintf(why, whylen, "not a string");
        return OUT_MALFORMED;
    }
    if (r->type != REDIS_REPLY_STRING)
        return OUT_ERROR;
    const char *p = r->str, *end = r->str + r->len;
    while (p < end && is_space(*p))
        p++;
    while (end > p && is_space(end[-1]))
        end--;
    size_t n = (size_t)(end - p);
    if (n > ID_MAX || !lower_id(p, n, target)) {
        snprintf(why, whylen, "'%.63s' is not a tenant id", r->str);
        return OUT_MALFORMED;
    }
    return OUT_FOUND;
}

/* ---- every worker's last-known entries (tenant_shared.h) ------------------------ */

/* A tenant as kept there: these, then its servers as Redis lists them. */
struct shared_tenant {
    int64_t rate_interval_ns, rate_count, rate_period_s, burst;
    uint8_t suspended;
};

/* What this worker just fetched, for the others to fall back to. */
static void to_shared(struct tg_tenant_dir *d, const struct entry *e)
{
    if (d->shared == NULL)
        return;
    if (e->state != E_FOUND) {
        tg_tenant_shared_forget(d->shared, e->key, e->klen);
        return;
    }
    if (e->domain) {
        tg_tenant_shared_put(d->shared, e->key, e->klen, e->target, strlen(e->target), e->fetched);
        return;
    }
    const struct tg_tenant *t = e->t;
    size_t len = sizeof(struct shared_tenant);
    for (size_t i = 0; i < t->upstream.nservers; i++)
        len += strlen(t->upstream.servers[i].addr.text) + 1;
    char *rec = malloc(len);
    if (rec == NULL)
        return;
    struct shared_tenant h = {t->rate_interval_ns, t->rate_count, t->rate_period_s, t->burst,
                              t->suspended};
    memcpy(rec, &h, sizeof(h));
    size_t o = sizeof(h);
    for (size_t i = 0; i < t->upstream.nservers; i++) {
        size_t n = strlen(t->upstream.servers[i].addr.text);
        if (i > 0)
            rec[o++] = ',';
        memcpy(rec + o, t->upstream.servers[i].addr.text, n);
        o += n;
    }
    tg_tenant_shared_put(d->shared, e->key, e->klen, rec, o, e->fetched);
    free(rec);
}

/* Nothing of our own to serve while Redis fails: what another worker
 * fetched last, if it is no older than ours could be (cache_ttl +
 * stale_ttl). It becomes our entry `e` (made when NULL), fetched when the
 * other worker fetched it. Returns the entry, or NULL. */
static struct entry *from_shared(struct tg_tenant_dir *d, struct entry *e, bool domain,
                                 const char *key, size_t klen, uint64_t h, ev_tstamp now)
{
    if (d->shared == NULL)
        return NULL;
    char rec[sizeof(struct shared_tenant) + SERVERS_TEXT_MAX];
    double when;
    ssize_t n = tg_tenant_shared_get(d->shared, d->reader, key, klen, rec, sizeof(rec), &when);
    if (n < 0 || now >= when + d->ttl + d->stale_ttl)
        return NULL;
    struct tg_tenant *t = NULL;
    char *target = NULL;
    char why[160];
    if (domain) {
        target = strndup(rec, (size_t)n);
        if (target == NULL)
            return NULL;
    } else {
        struct shared_tenant sh;
        if ((size_t)n < sizeof(sh))
            return NULL;
        memcpy(&sh, rec, sizeof(sh));
        struct spec sp = {.id = key,
                          .idlen = klen,
                          .suspended = sh.suspended,
                          .rate_interval_ns = sh.rate_interval_ns,
                          .rate_count = sh.rate_count,
                          .rate_period_s = sh.rate_period_s,
                          .burst = sh.burst};
        if (tenant_of(d, &sp, rec + sizeof(sh), (size_t)n - sizeof(sh), &t, why, sizeof(why)) !=
            OUT_FOUND)
            return NULL;
    }
    if (e == NULL && (e = cache_insert(d, key, klen, h, domain)) == NULL) {
        tg_tenant_release(t);
        free(target);
        return NULL;
    }
    drop_data(d, e);
    e->state = E_FOUND;
    e->t = t;
    e->target = target;
    e->fetched = when;
    account(d, e);
    d->st.shared_taken++;
    return e;
}

/* Settles a fetch: updates its entry (unless detached), then answers its
 * waiters. The entry is not touched once user callbacks start. */
static void complete(struct tg_tenant_dir *d, struct fetch *f, enum outcome oc, struct tg_tenant *t,
                     const char *target)
{
    ev_tstamp now = ev_now(d->loop);
    struct entry *e = f->e;
    enum tg_tenant_status st;
    struct tg_tenant *ans_t = NULL; /* our reference, released at the end */
    char ans_target[ID_MAX + 1] = "";
    bool stale = false;

    if (oc == OUT_ERROR) {
        d->st.redis_errors++;
        if (e != NULL && (stale_ok(d, e, now) ||
                          from_shared(d, e, e->domain, e->key, e->klen, e->hash, now) != NULL)) {
            st = TG_TENANT_FOUND;
            stale = true;
            if (e->domain) {
                snprintf(ans_target, sizeof(ans_target), "%s", e->target);
            } else {
                ans_t = e->t;
                tg_tenant_ref(ans_t);
            }
        } else {
            st = TG_TENANT_UNAVAILABLE;
            if (e != NULL)
                drop_data(d, e);
        }
    } else {
        st = oc == OUT_FOUND ? TG_TENANT_FOUND : TG_TENANT_NOT_FOUND;
        ans_t = t;
        tg_tenant_ref(ans_t);
        if (target != NULL)
            snprintf(ans_target, sizeof(ans_target), "%s", target);
        if (e != NULL) {
            char *copy = NULL;
            if (st == TG_TENANT_FOUND && e->domain && (copy = strdup(target)) == NULL) {
                drop_data(d, e); /* cannot cache it: answer anyway */
            } else {
                drop_data(d, e);
                e->state = st == TG_TENANT_FOUND ? E_FOUND : E_NOT_FOUND;
                e->target = copy;
                if (st == TG_TENANT_FOUND && !e->domain) {
                    e->t = t;
                    tg_tenant_ref(t);
                }
                e->fetched = now;
                e->due = false;
                account(d, e);
                to_shared(d, e);
            }
        }
    }

    /* Detach from the entry: look-ups from the callbacks start afresh. */
    if (e != NULL) {
        e->fetch = NULL;
        f->e = NULL;
        if (e->state == E_EMPTY)
            cache_remove(d, e);
    }
    evict(d);

    f->delivering = true;
    struct tg_list *n;
    while ((n = tg_list_first(&f->waiters)) != NULL) {
        tg_list_remove(n);
        answer_waiter(d, wait_of(n), st, ans_t, ans_target, stale);
    }
    tg_tenant_release(ans_t);
    fetch_free(f);
}

static void settle(struct tg_tenant_dir *d);

static int on_fetch_reply(void *arg, const redisReply *reply)
{
    struct fetch *f = arg;
    struct tg_tenant_dir *d = f->d;
    f->cmd = NULL;
    struct tg_tenant *t = NULL;
    char target[ID_MAX + 1] = "", why[160] = "";
    enum outcome oc;
    if (reply == NULL)
        oc = OUT_ERROR;
    else if (f->domain)
        oc = parse_domain(reply, target, why, sizeof(why));
    else
        oc = parse_tenant(d, f->key, f->klen, reply, &t, why, sizeof(why));
    if (oc == OUT_MALFORMED) {
        /* Cached as absent for negative_ttl: logged once per fetch, so
         * once per key per negative_ttl, whatever the request rate. */
        tg_log_warn("tenants: %s%s in Redis is malformed (%s); treated as "
                    "absent for %.0f ms",
                    d->prefix, f->key, why, d->negative_ttl * 1e3);
        oc = OUT_NOT_FOUND;
    }
    d->depth++;
    complete(d, f, oc, t, oc == OUT_FOUND && f->domain ? target : NULL);
    tg_tenant_release(t);
    d->depth--;
    settle(d);
    /* A reply we could not use is a fault for the link's breaker; a
     * malformed entry is the data's fault, not the link's. */
    return reply != NULL && oc == OUT_ERROR ? -1 : 0;
}

/* ---- parked fetches, link and subscription state ------------------------------ */

/* Sends the parked fetches when the link is up, answers them (stale or
 * UNAVAILABLE) when it is down or gone, leaves them while it connects. */
static void run_parked(struct tg_tenant_dir *d)
{
    if (d->link != NULL && tg_redis_cluster_state(d->link) == TG_REDIS_CONNECTING)
        return;
    struct tg_list *n;
    while (!d->closing && (n = tg_list_first(&d->parked)) != NULL) {
        struct fetch *f = fetch_of(n);
        if (slot_state(d, key_slot(d, f->key, f->klen)) == TG_REDIS_UP && fetch_send(d, f))
            continue;
        fl_move(d, f, false);
        complete(d, f, OUT_ERROR, NULL, NULL);
    }
}

static void on_link_state(void *arg, enum tg_redis_state old, enum tg_redis_state state)
{
    (void)old;
    (void)state;
    struct tg_tenant_dir *d = arg;
    d->depth++;
    run_parked(d);
    d->depth--;
    settle(d);
}

static void on_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct tg_tenant_dir *d = w->data;
    d->depth++;
    run_parked(d);
    d->depth--;
    settle(d);
}

static void kick(struct tg_tenant_dir *d)
{
    if (!ev_is_active(&d->kick)) {
        ev_timer_set(&d->kick, 0., 0.);
        ev_timer_start(d->loop, &d->kick);
    }
}

/* PUBLISH PREFIXchanged <id> | host:<domain>: forget it now. */
static void on_invalidate(void *arg, const char *msg, size_t n)
{
    struct tg_tenant_dir *d = arg;
    d->st.invalidations++;
    char key[KEY_MAX + 1];
    if (n == 0 || n > KEY_MAX)
        return;
    for (size_t i = 0; i < n; i++)
        key[i] = tg_ascii_lower(msg[i]);
    struct entry *e = cache_find(d, key, n, key_hash(d, key, n));
    if (e != NULL)
        cache_remove(d, e); /* a fetch in flight is detached: may be old */
}

/* Subscribed (again): messages published while we were not are lost, so
 * everything cached is due for a refetch; kept meanwhile for stale use. */
static void on_sub_state(void *arg, bool subscribed)
{
    struct tg_tenant_dir *d = arg;
    if (!subscribed)
        return; /* entries stay bounded by cache_ttl */
    struct tg_list *head = &d->lru;
    for (struct tg_list *n = head->next; n != head; n = n->next)
        entry_of(n)->due = true;
}

/* ---- life cycle --------------------------------------------------------------- */

static bool same_str(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

static ev_tstamp ms_to_s(int64_t ms)
{
    return ms > 0 ? (double)ms / 1e3 : 0.;
}

/* Where the directory's Redis is, as one string to compare configs by:
 * the address, or "cluster:" and the seeds. malloc'd; NULL when out of
 * memory. */
static char *target_of(const struct tg_config_redis *rc)
{
    size_t n = sizeof("cluster:") + (rc->address != NULL ? strlen(rc->address) : 0);
    for (size_t i = 0; i < rc->ncluster; i++)
        n += strlen(rc->cluster[i]) + 1;
    char *t = malloc(n);
    if (t == NULL)
        return NULL;
    if (rc->ncluster == 0) {
        snprintf(t, n, "%s", rc->address != NULL ? rc->address : "");
        return t;
    }
    size_t at = (size_t)snprintf(t, n, "cluster:");
    for (size_t i = 0; i < rc->ncluster; i++)
        at += (size_t)snprintf(t + at, n - at, "%s%s", i ? "," : "", rc->cluster[i]);
    return t;
}

/* Copies what the directory keeps of cfg. Returns -1 on allocation
 * failure (nothing changed). */
static int copy_target(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg)
{
    const struct tg_config_redis *rc = &cfg->redis;
    const char *prefix = rc->key_prefix != NULL ? rc->key_prefix : DEFAULT_PREFIX;
    size_t plen = strlen(prefix);
    char *address = target_of(rc);
    char *password = rc->password != NULL ? strdup(rc->password) : NULL;
    char *p = strdup(prefix);
    char *keybuf = malloc(plen + KEY_MAX + 1);
    if (address == NULL || (rc->password != NULL && password == NULL) || p == NULL ||
        keybuf == NULL) {
        free(address);
        free(password);
        free(p);
        free(keybuf);
        return -1;
    }
    free(d->address);
    free(d->password);
    free(d->prefix);
    free(d->keybuf);
    d->address = address;
    d->password = password;
    d->db = rc->db;
    d->prefix = p;
    d->prefix_len = plen;
    d->keybuf = keybuf;
    return 0;
}

static void copy_limits(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg)
{
    d->ttl = ms_to_s(cfg->cache_ttl_ms);
    d->negative_ttl = ms_to_s(cfg->negative_ttl_ms);
    d->stale_ttl = ms_to_s(cfg->stale_ttl_ms);
    d->max_cached = cfg->max_cached;
}

static char *channel_name(const struct tg_tenant_dir *d)
{
    size_t n = d->prefix_len + sizeof(CHANNEL_SUFFIX);
    char *c = malloc(n);
    if (c != NULL)
        snprintf(c, n, "%s" CHANNEL_SUFFIX, d->prefix);
    return c;
}

static int start_links(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg)
{
    struct tg_redis_options opt = link_tuning;
    opt.name = "tenants";
    opt.on_state = on_link_state;
    opt.arg = d;
    d->link = tg_redis_cluster_new(d->loop, &cfg->redis, &opt);
    char *channel = channel_name(d);
    struct tg_redis_sub_options sopt = sub_tuning;
    sopt.name = "tenants-sub";
    sopt.on_message = on_invalidate;
    sopt.on_state = on_sub_state;
    sopt.arg = d;
    /* A cluster's publishes reach every node: subscribed on its first two
     * seeds, a message lost with one node arrives through the other (an
     * invalidation twice is harmless). */
    struct tg_config_redis on = cfg->redis;
    on.cluster = NULL;
    on.ncluster = 0;
    if (cfg->redis.ncluster > 0)
        on.address = cfg->redis.cluster[0];
    if (channel != NULL)
        d->sub = tg_redis_sub_new(d->loop, &on, channel, &sopt);
    bool more = cfg->redis.ncluster > 1;
    if (channel != NULL && more) {
        on.address = cfg->redis.cluster[1];
        d->sub_more = tg_redis_sub_new(d->loop, &on, channel, &sopt);
    }
    free(channel);
    return d->link != NULL && d->sub != NULL && (!more || d->sub_more != NULL) ? 0 : -1;
}

static void stop_links(struct tg_tenant_dir *d)
{
    tg_redis_cluster_free(d->link);
    d->link = NULL;
    tg_redis_sub_free(d->sub);
    d->sub = NULL;
    tg_redis_sub_free(d->sub_more);
    d->sub_more = NULL;
}

/* Takes every fetch off the link (its command cancelled) and parks it, to
 * be sent again (new address, new prefix) or answered by run_parked. Its
 * entry is gone with the cache; an answer is not cached. */
static void repark_all(struct tg_tenant_dir *d)
{
    struct tg_list *head = &d->active;
    for (struct tg_list *n = head->next, *next; n != head; n = next) {
        next = n->next;
        struct fetch *f = fetch_of(n);
        if (f->delivering)
            continue;
        if (f->cmd != NULL) {
            tg_redis_cluster_cancel(d->link, f->cmd);
            f->cmd = NULL;
        }
        fl_move(d, f, true);
    }
}

struct tg_tenant_dir *tg_tenant_dir_new(struct ev_loop *loop, const struct tg_config_tenants *cfg)
{
    struct tg_tenant_dir *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->loop = loop;
    d->cfg = cfg;
    tg_list_init(&d->lru);
    tg_list_init(&d->parked);
    tg_list_init(&d->active);
    uint64_t seed[2];
    tg_siphash_random_key(seed);
    d->k0 = seed[0];
    d->k1 = seed[1];
    d->nbuckets = BUCKETS_MIN;
    d->buckets = calloc(d->nbuckets, sizeof(*d->buckets));
    ev_timer_init(&d->kick, on_kick, 0., 0.);
    d->kick.data = d;
    copy_limits(d, cfg);
    d->redis = cfg->directory == TG_TENANTS_REDIS;
    if (d->buckets == NULL || copy_target(d, cfg) < 0 || (d->redis && start_links(d, cfg) < 0)) {
        stop_links(d);
        free(d->buckets);
        free(d->address);
        free(d->password);
        free(d->prefix);
        free(d->keybuf);
        free(d);
        return NULL;
    }
    return d;
}

void tg_tenant_dir_share(struct tg_tenant_dir *d, struct tg_tenant_shared *shared, unsigned reader)
{
    d->shared = shared;
    d->reader = reader;
}

void tg_tenant_dir_configure(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg)
{
    if (d->closing)
        return;
    const struct tg_config_redis *rc = &cfg->redis;
    const char *prefix = rc->key_prefix != NULL ? rc->key_prefix : DEFAULT_PREFIX;
    bool redis = cfg->directory == TG_TENANTS_REDIS;
    char *target = target_of(rc);
    bool moved = redis != d->redis || target == NULL || !same_str(target, d->address) ||
                 !same_str(rc->password, d->password) || rc->db != d->db ||
                 strcmp(prefix, d->prefix) != 0;
    free(target);
    copy_limits(d, cfg);

    if (moved) {
        /* Another Redis, db or key space: nothing cached holds, and what
         * is in flight is asked again there (or answered, if Redis is
         * off now). */
        if (copy_target(d, cfg) < 0) {
            tg_log_error("tenants: out of memory applying the new config; "
                         "keeping the old Redis settings");
        } else {
            repark_all(d);
            cache_clear(d);
            d->redis = redis;
            if (!redis) {
                stop_links(d);
            } else {
                /* New links (their commands were cancelled above). */
                stop_links(d);
                if (start_links(d, cfg) < 0)
                    tg_log_error("tenants: out of memory starting the "
                                 "Redis links");
            }
            kick(d);
        }
    } else if (d->link != NULL) {
        tg_redis_cluster_configure(d->link, rc); /* the command timeout */
    }

    if (cfg != d->cfg) {
        /* Cached tenants borrow the old snapshot's upstream defaults:
         * rebuild them on the new ones (requests keep the old objects,
         * and their own snapshot, alive). */
        d->cfg = cfg;
        struct tg_list *head = &d->lru;
        for (struct tg_list *n = head->next, *older; n != head; n = older) {
            older = n->next;
            struct entry *e = entry_of(n);
            if (e->t == NULL)
                continue;
            struct tg_tenant *nt = tenant_clone(e->t, &cfg->upstream_defaults);
            tg_tenant_release(e->t);
            e->t = nt;
            if (nt == NULL) {
                e->state = E_EMPTY;
                if (e->fetch == NULL) {
                    cache_remove(d, e);
                    continue;
                }
            }
            account(d, e);
        }
    }
    evict(d);
}

static void destroy(struct tg_tenant_dir *d)
{
    struct tg_list *n;
    while ((n = tg_list_first(&d->active)) != NULL)
        fetch_free(fetch_of(n));
    while ((n = tg_list_first(&d->parked)) != NULL)
        fetch_free(fetch_of(n));
    free(d->buckets);
    free(d->address);
    free(d->password);
    free(d->prefix);
    free(d->keybuf);
    free(d);
}

static void settle(struct tg_tenant_dir *d)
{
    if (d->closing && d->depth == 0)
        destroy(d);
}

void tg_tenant_dir_free(struct tg_tenant_dir *d)
{
    if (d == NULL || d->closing)
        return;
    d->closing = true;
    ev_timer_stop(d->loop, &d->kick);
    struct tg_list *lists[2] = {&d->active, &d->parked};
    for (int i = 0; i < 2; i++)
        for (struct tg_list *n = lists[i]->next; n != lists[i]; n = n->next) {
            struct fetch *f = fetch_of(n);
            if (f->cmd != NULL) {
                tg_redis_cluster_cancel(d->link, f->cmd);
                f->cmd = NULL;
            }
        }
    /* Callbacks may cancel other waits or look up (answered UNAVAILABLE):
     * neither adds nor frees fetches, so the walk is safe. */
    d->depth++;
    for (int i = 0; i < 2; i++)
        for (struct tg_list *n = lists[i]->next; n != lists[i]; n = n->next) {
            struct fetch *f = fetch_of(n);
            struct tg_list *wn;
            while ((wn = tg_list_first(&f->waiters)) != NULL) {
                tg_list_remove(wn);
                finish_waiter(wait_of(wn), TG_TENANT_UNAVAILABLE, NULL);
            }
        }
    d->depth--;
    stop_links(d);
    cache_clear(d);
    /* Fetches being answered further up the stack free themselves. */
    for (int i = 0; i < 2; i++)
        for (struct tg_list *n = lists[i]->next, *next; n != lists[i]; n = next) {
            next = n->next;
            struct fetch *f = fetch_of(n);
            if (!f->delivering)
                fetch_free(f);
        }
    settle(d);
}

/* ---- look-ups ------------------------------------------------------------------ */

int tg_tenant_lookup(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg, const char *id,
                     size_t n, struct tg_tenant **out, tg_tenant_cb cb, void *arg,
                     struct tg_tenant_wait **wait)
{
    char buf[ID_MAX + 1];
    struct tg_tenant_wait *w = NULL;
    *out = NULL;
    if (wait != NULL)
        *wait = NULL;
    if (d->closing)
        return TG_TENANT_UNAVAILABLE;
    if (n > ID_MAX || !lower_id(id, n, buf))
        return TG_TENANT_NOT_FOUND;
    int rc = lookup_id(d, cfg, buf, n, out, &w, cb, arg);
    if (rc < 0 && wait != NULL)
        *wait = w;
    return rc;
}

int tg_tenant_lookup_domain(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                            const char *host, size_t n, struct tg_tenant **out, tg_tenant_cb cb,
                            void *arg, struct tg_tenant_wait **wait)
{
    char buf[DOMAIN_MAX + 1];
    struct tg_tenant_wait *w = NULL;
    *out = NULL;
    if (wait != NULL)
        *wait = NULL;
    if (d->closing)
        return TG_TENANT_UNAVAILABLE;
    size_t len = lower_domain(host, n, buf);
    if (len == 0)
        return TG_TENANT_NOT_FOUND;
    int rc = lookup_domain(d, cfg, buf, len, out, &w, cb, arg);
    if (rc < 0 && wait != NULL)
        *wait = w;
    return rc;
}

void tg_tenant_cancel(struct tg_tenant_wait *w)
{
    if (w == NULL)
        return;
    if (tg_list_linked(&w->link))
        tg_list_remove(&w->link);
    free(w);
}

void tg_tenant_dir_stats(const struct tg_tenant_dir *d, struct tg_tenant_stats *out)
{
    *out = d->st;
    out->cached = d->count;
    out->memory = d->mem + usable(d->buckets);
}
