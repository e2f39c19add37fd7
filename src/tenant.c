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

#include <hiredis/hiredis.h>

#include "arena.h"
#include "list.h"
#include "log.h"
#include "ratelimit.h"
#include "redis.h"
#include "redis_cluster.h"
#include "redis_sub.h"
#include "resolver.h"
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
    const struct tg_config_server *servers; /* addr.text (and host) NUL-terminated */
    size_t nservers;
    struct tg_resolver_group *group; /* names among the servers: a reference
                                        the tenant takes over (NULL: none) */
    int64_t rate_interval_ns, rate_count, rate_period_s, burst;
};

#define ALIGN_UP(n) (((n) + BLOCK_ALIGN - 1) & ~(size_t)(BLOCK_ALIGN - 1))

/* One block: the tenant, its servers, its strings. refs = 1. Takes over
 * sp->group (released here if it fails). */
static struct tg_tenant *tenant_new(const struct spec *sp,
                                    const struct tg_config_upstream *defaults)
{
    size_t off_servers = ALIGN_UP(sizeof(struct tg_tenant));
    size_t off_strings = off_servers + sp->nservers * sizeof(struct tg_config_server);
    size_t size = off_strings + sp->idlen + 1 + NAME_TAG_LEN + sp->idlen + 1;
    for (size_t i = 0; i < sp->nservers; i++)
        size += strlen(sp->servers[i].addr.text) + 1 +
                (sp->servers[i].host != NULL ? strlen(sp->servers[i].host) + 1 : 0);
    char *b = malloc(size);
    if (b == NULL) {
        tg_resolver_group_unref(sp->group);
        return NULL;
    }
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
        if (sp->servers[i].host != NULL) {
            n = strlen(sp->servers[i].host);
            memcpy(p, sp->servers[i].host, n + 1);
            servers[i].host = p;
            p += n + 1;
        }
        servers[i].resolved = NULL;
        servers[i].nresolved = 0;
    }

    t->upstream = *defaults;
    t->upstream.name = name;
    t->upstream.index = 0;
    t->upstream.servers = sp->nservers > 0 ? servers : NULL;
    t->upstream.nservers = sp->nservers;
    t->upstream.resolve = sp->group;
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
        .group = t->upstream.resolve,
        .rate_interval_ns = t->rate_interval_ns,
        .rate_count = t->rate_count,
        .rate_period_s = t->rate_period_s,
        .burst = t->burst,
    };
    /* The same names, followed by the same group. */
    if (sp.group != NULL)
        tg_resolver_group_ref(sp.group);
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
    if (--t->refs == 0) {
        tg_resolver_group_unref(t->upstream.resolve);
        free(t);
    }
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
        t->upstream.resolve = e->resolve; /* the snapshot's (config_build.c) */
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
    E_INACTIVE,  /* status placing or archived: no servers yet */
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
    /* Redis answered with servers that are names the resolver has not
     * answered for yet: the tenant waits here (our reference) until it
     * has, or until names_by (the Redis timeout). */
    struct tg_tenant *names_t;
    ev_tstamp names_by;
    size_t klen;
    char key[];
};

struct activation;

struct tg_tenant_wait {
    struct tg_list link; /* in its fetch's (or activation's) waiters while it waits */
    tg_tenant_cb cb;
    void *arg;
    const struct tg_config_tenants *cfg; /* the request's snapshot */
    const char *host;                    /* the request's Host, for an activation */
    struct activation *act;              /* waiting for this tenant to be placed */
    bool domain;                         /* waiting for a domain's tenant id */
};

/* A tenant being activated: the requests waiting for its placement, until
 * `deadline`; `tick` looks it up again every second meanwhile (in case the
 * change message was lost). */
struct activation {
    struct tg_list link; /* in d->activations */
    struct tg_tenant_dir *d;
    struct tg_list waiters; /* of tg_tenant_wait.link */
    ev_timer tick;
    ev_tstamp deadline;
    size_t n;
    char id[];
};

struct tg_tenant_dir {
    struct ev_loop *loop;
    const struct tg_config_tenants *cfg; /* borrowed until reconfigured */

    /* copied config */
    bool redis;
    ev_tstamp ttl, negative_ttl, stale_ttl; /* s */
    size_t max_cached;
    struct tg_config_redis *server; /* a copy: where the directory is */
    char *prefix;
    size_t prefix_len;
    char *keybuf; /* prefix + KEY_MAX */

    struct tg_redis_cluster *link; /* commands: one server, or a cluster's primaries */
    struct tg_redis_sub *sub;      /* invalidations */
    struct tg_redis_sub *sub_more; /* a cluster: also on the second seed (publishes reach
                                      every node), so one node's loss loses none */
    ev_timer kick;                 /* parked fetches, outside configure */
    /* Fetches waiting for names: the resolver thread wakes names_async;
     * names_timer ends the wait at names_by. Both run only while some
     * fetch waits. */
    ev_async names_async;
    ev_timer names_timer;
    unsigned names_waiting;

    /* cache */
    struct entry **buckets;
    size_t nbuckets, count;
    struct tg_list lru; /* of entry.lru, most recently used first */
    uint64_t k0, k1;
    size_t mem;

    tg_tenant_change_cb on_change; /* a tenant may have moved */
    void *change_arg;
    struct tg_tenant_shared *shared; /* every worker's last-known entries */
    unsigned reader;                 /* our number there */

    struct tg_list activations;  /* of activation.link */
    unsigned activation_waiting; /* requests in them, all tenants */
    const char *gateway;         /* in activation messages */

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
    if (f->names_t != NULL) {
        /* After this returns the resolver calls nothing for it. */
        tg_resolver_group_notify(f->names_t->upstream.resolve, NULL, NULL);
        tg_tenant_release(f->names_t);
        f->d->names_waiting--;
    }
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
/* Starts a fetch of `key` for entry `e` (made when NULL): sent when its
 * node's link is up, parked while it connects. Returns the entry, or NULL
 * when it cannot go (the link is down, memory ran out); an entry made
 * here is then gone again. */
static struct entry *start_fetch(struct tg_tenant_dir *d, struct entry *e, const char *key,
                                 size_t klen, uint64_t h, bool domain)
{
    enum tg_redis_state ls = slot_state(d, key_slot(d, key, klen));
    if (ls != TG_REDIS_UP && ls != TG_REDIS_CONNECTING)
        return NULL;
    bool created = e == NULL;
    if (created && (e = cache_insert(d, key, klen, h, domain)) == NULL)
        return NULL;
    struct fetch *f = fetch_new(d, e);
    if (f == NULL || (ls == TG_REDIS_UP && !fetch_send(d, f))) {
        if (f != NULL)
            fetch_free(f);
        if (created)
            cache_remove(d, e);
        return NULL;
    }
    return e;
}

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
            a->status = e->state == E_INACTIVE ? TG_TENANT_INACTIVE : TG_TENANT_NOT_FOUND;
        }
        return;
    }
    d->st.misses++;

    struct fetch *f = e != NULL ? e->fetch : NULL;
    if (f == NULL) {
        struct entry *fetched = start_fetch(d, e, key, klen, h, domain);
        if (fetched == NULL)
            goto offline; /* not sent: as if the link were down */
        e = fetched;
        f = e->fetch;
    }
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
static bool to_activate(const struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                        int status);
static int park(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg, const char *id,
                size_t n, const char *host, struct tg_tenant_wait **wp, tg_tenant_cb cb, void *arg);

static int lookup_id(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg, const char *id,
                     size_t n, const char *host, struct tg_tenant **out, struct tg_tenant_wait **wp,
                     tg_tenant_cb cb, void *arg)
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
    if (a.status < 0 && *wp != NULL && (*wp)->host == NULL)
        (*wp)->host = host;
    /* Only a request (it names a Host) activates a tenant. */
    if (host != NULL && to_activate(d, cfg, a.status) && (cb != NULL || *wp != NULL))
        return park(d, cfg, id, n, host, wp, cb, arg);
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
        return lookup_id(d, cfg, id, strlen(id), dom, out, wp, cb, arg);
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
    return lookup_id(d, cfg, a.target, strlen(a.target), dom, out, wp, cb, arg);
}

/* Calls back (or moves on) one waiter of an answered fetch. */
static void answer_waiter(struct tg_tenant_dir *d, struct tg_tenant_wait *w, const char *key,
                          enum tg_tenant_status st, struct tg_tenant *t, const char *target,
                          bool stale)
{
    if (stale && st == TG_TENANT_FOUND)
        d->st.stale_served++;
    if (!w->domain && w->host != NULL && to_activate(d, w->cfg, st)) {
        /* Placing, archived (or unknown): wait for its placement. */
        int rc = park(d, w->cfg, key, strlen(key), w->host, &w, NULL, NULL);
        if (rc >= 0)
            finish_waiter(w, (enum tg_tenant_status)rc, NULL);
        return;
    }
    if (st != TG_TENANT_FOUND) {
        finish_waiter(w, st, NULL);
        return;
    }
    struct tg_tenant *out = NULL;
    int rc;
    if (w->domain) {
        /* The domain's tenant id is known: now the tenant. */
        w->domain = false;
        rc = lookup_id(d, w->cfg, target, strlen(target), w->host, &out, &w, NULL, NULL);
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
    OUT_INACTIVE,
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

/* Parses "a:1, b:2" (value v, len n) into servers (at most cap), with
 * texts pointing into buf and host names into hosts (n + 1 bytes each).
 * Names are not resolved here: the resolver does that, on its own thread.
 * Returns the count, or -1 with why set. */
static int parse_servers(const char *v, size_t n, char *buf, char *hosts,
                         struct tg_config_server *servers, size_t cap, char *why, size_t whylen)
{
    memcpy(buf, v, n);
    buf[n] = '\0';
    size_t count = 0;
    char *p = buf, *h = hosts;
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
        if (tg_config_parse_server(p, &servers[count], h, (size_t)(end - p) + 1, err, sizeof(err)) <
            0) {
            snprintf(why, whylen, "server: %.100s", err);
            return -1;
        }
        servers[count].addr.text = p;
        if (servers[count].host != NULL)
            h += strlen(h) + 1;
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
    char *buf = malloc(len + 1), *hosts = malloc(len + 1);
    struct tg_config_server *arr = calloc(cap, sizeof(*arr));
    enum outcome oc = OUT_ERROR;
    if (buf != NULL && hosts != NULL && arr != NULL) {
        int n = parse_servers(text, len, buf, hosts, arr, cap, why, whylen);
        bool names = false;
        for (int i = 0; i < n; i++)
            names |= arr[i].host != NULL;
        const struct tg_config_upstream *defs = &d->cfg->upstream_defaults;
        if (n < 0) {
            oc = OUT_MALFORMED;
        } else if (names && (sp->group = tg_resolver_group_new(
                                 "$tenant", arr, (size_t)n, defs->resolve_interval_ms)) == NULL) {
            oc = OUT_ERROR;
        } else {
            sp->servers = arr;
            sp->nservers = (size_t)n;
            *out = tenant_new(sp, defs);
            oc = *out != NULL ? OUT_FOUND : OUT_ERROR;
        }
    }
    free(buf);
    free(hosts);
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
    bool inactive = false;
    for (size_t i = 0; i < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (value_is(k, "servers")) {
            servers = v;
        } else if (value_is(k, "status")) {
            if (value_is(v, "suspended")) {
                sp.suspended = true;
            } else if (value_is(v, "placing") || value_is(v, "archived")) {
                inactive = true;
            } else if (!value_is(v, "active")) {
                snprintf(why, whylen,
                         "status '%.40s' is none of active, suspended, placing, "
                         "archived",
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
    if (inactive)
        return OUT_INACTIVE; /* its servers, if any, are not to be used yet */

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

/* Whether two tenants have the same servers, in any order. */
static bool same_servers(const struct tg_tenant *a, const struct tg_tenant *b)
{
    if (a == NULL || b == NULL || a->upstream.nservers != b->upstream.nservers)
        return false;
    for (size_t i = 0; i < a->upstream.nservers; i++) {
        bool found = false;
        for (size_t j = 0; j < b->upstream.nservers && !found; j++)
            found = strcmp(a->upstream.servers[i].addr.text, b->upstream.servers[j].addr.text) == 0;
        if (!found)
            return false;
    }
    return true;
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

/* ---- activation: tenants placed on their first request ----------------------------- */

/* The activation message, once per tenant for the whole fleet: the first
 * gateway to set PREFIXactivating:<id> (NX, for activation.timeout) then
 * appends {tenant, host, gateway} to the stream; the others only wait.
 * Two commands, not a script: on a Redis Cluster the flag and the stream
 * live in different slots. */
#define ACTIVATING_TAG "activating:"
#define ACTIVATE_STREAM "activate"
/* Looked up again this often while it waits, in case a message is lost. */
#define ACTIVATION_RECHECK_S 1.0

static bool to_activate(const struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                        int status)
{
    const struct tg_config_activation *a = &cfg->activation;
    return d->redis && a->enabled &&
           (status == TG_TENANT_INACTIVE || (status == TG_TENANT_NOT_FOUND && a->unknown));
}

static struct activation *activation_find(struct tg_tenant_dir *d, const char *id, size_t n)
{
    for (struct tg_list *l = d->activations.next; l != &d->activations; l = l->next) {
        struct activation *a = (struct activation *)((char *)l - offsetof(struct activation, link));
        if (a->n == n && memcmp(a->id, id, n) == 0)
            return a;
    }
    return NULL;
}

/* The message waiting for its flag: XADD's arguments. */
#define XADD_ARGS 12
struct activation_msg {
    struct tg_tenant_dir *d;
    size_t len[XADD_ARGS];
    char *argv[XADD_ARGS];
    char buf[];
};

static int on_xadd_reply(void *arg, const redisReply *reply)
{
    (void)arg;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        tg_log_warn("tenants: the activation message was refused: %.200s", reply->str);
        return -1;
    }
    return 0;
}

/* The flag was ours (OK): this gateway sends the message. */
static int on_flag_reply(void *arg, const redisReply *reply)
{
    struct activation_msg *m = arg;
    int rc = 0;
    if (reply != NULL && reply->type == REDIS_REPLY_STATUS) {
        struct tg_tenant_dir *d = m->d;
        unsigned slot = tg_redis_cluster_slot(d->link, m->argv[1], m->len[1]);
        if (tg_redis_cluster_command(d->link, slot, XADD_ARGS, (const char *const *)m->argv, m->len,
                                     0, on_xadd_reply, NULL) != NULL)
            d->st.activations++;
    } else if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        tg_log_warn("tenants: the activation flag was refused: %.200s", reply->str);
        rc = -1;
    }
    free(m);
    return rc;
}

static void activation_send(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                            const struct activation *a, const char *host)
{
    if (d->link == NULL || tg_redis_cluster_state(d->link) != TG_REDIS_UP)
        return; /* the next look-up after the timeout asks again */
    char flag[KEY_MAX + 64], stream[512], ms[24];
    int fn = snprintf(flag, sizeof(flag), "%s%s%.*s", d->prefix, ACTIVATING_TAG, (int)a->n, a->id);
    if (cfg->activation.stream != NULL)
        snprintf(stream, sizeof(stream), "%s", cfg->activation.stream);
    else
        snprintf(stream, sizeof(stream), "%s%s", d->prefix, ACTIVATE_STREAM);
    snprintf(ms, sizeof(ms), "%lld", (long long)cfg->activation.timeout_ms);
    const char *gw = d->gateway != NULL ? d->gateway : "tollgate";
    if (host == NULL)
        host = "";
    const char *xadd[XADD_ARGS] = {"XADD",   stream, "MAXLEN", "~",  "10000",   "*",
                                   "tenant", a->id,  "host",   host, "gateway", gw};
    size_t total = 0;
    for (int i = 0; i < XADD_ARGS; i++)
        total += (i == 7 ? a->n : strlen(xadd[i])) + 1;
    struct activation_msg *m = malloc(sizeof(*m) + total);
    if (m == NULL)
        return;
    m->d = d;
    char *p = m->buf;
    for (int i = 0; i < XADD_ARGS; i++) {
        size_t n = i == 7 ? a->n : strlen(xadd[i]);
        memcpy(p, xadd[i], n);
        p[n] = '\0';
        m->argv[i] = p;
        m->len[i] = n;
        p += n + 1;
    }
    const char *setv[] = {"SET", flag, gw, "NX", "PX", ms};
    size_t setl[] = {3, (size_t)fn, strlen(gw), 2, 2, strlen(ms)};
    unsigned slot = tg_redis_cluster_slot(d->link, flag, (size_t)fn);
    if (tg_redis_cluster_command(d->link, slot, 6, setv, setl, 0, on_flag_reply, m) == NULL)
        free(m);
}

/* Starts a fetch of `id` (the cached answer is due), unless one runs. */
static void refetch(struct tg_tenant_dir *d, const char *id, size_t n)
{
    uint64_t h = key_hash(d, id, n);
    struct entry *e = cache_find(d, id, n, h);
    if (e != NULL && e->fetch != NULL)
        return;
    if (e != NULL)
        e->due = true;
    start_fetch(d, e, id, n, h, false);
}

/* Answers every request waiting on `a` and forgets it. */
static void activation_answer(struct tg_tenant_dir *d, struct activation *a,
                              enum tg_tenant_status st, struct tg_tenant *t)
{
    tg_list_remove(&a->link);
    ev_timer_stop(d->loop, &a->tick);
    struct tg_list *n;
    while ((n = tg_list_first(&a->waiters)) != NULL) {
        tg_list_remove(n);
        struct tg_tenant_wait *w = wait_of(n);
        w->act = NULL;
        d->activation_waiting--;
        if (st != TG_TENANT_FOUND) {
            finish_waiter(w, st, NULL);
            continue;
        }
        d->st.activated++;
        struct tg_tenant *out = give(d, w->cfg, t);
        finish_waiter(w, out != NULL ? TG_TENANT_FOUND : TG_TENANT_UNAVAILABLE, out);
    }
    free(a);
}

static void settle(struct tg_tenant_dir *d);

static void on_activation_tick(struct ev_loop *loop, ev_timer *tm, int revents)
{
    (void)loop, (void)revents;
    struct activation *a = tm->data;
    struct tg_tenant_dir *d = a->d;
    ev_tstamp now = ev_now(d->loop);
    if (now < a->deadline) {
        refetch(d, a->id, a->n);
        ev_tstamp next = a->deadline - now;
        ev_timer_set(tm, next < ACTIVATION_RECHECK_S ? next : ACTIVATION_RECHECK_S, 0.);
        ev_timer_start(d->loop, tm);
        return;
    }
    for (struct tg_list *l = a->waiters.next; l != &a->waiters; l = l->next)
        d->st.activation_timeouts++;
    d->depth++;
    activation_answer(d, a, TG_TENANT_INACTIVE, NULL);
    d->depth--;
    settle(d);
}

/* A fetch of `id` came back: a placement ends its activation. */
static void activation_settle(struct tg_tenant_dir *d, const char *id, size_t n,
                              enum tg_tenant_status st, struct tg_tenant *t)
{
    struct activation *a = activation_find(d, id, n);
    if (a == NULL)
        return;
    if (st == TG_TENANT_FOUND)
        activation_answer(d, a, st, t);
    else if (st == TG_TENANT_NOT_FOUND && !d->cfg->activation.unknown)
        activation_answer(d, a, st, NULL); /* deleted while it waited */
}

/* Parks a look-up of `id` (placing, archived, or unknown) until the tenant
 * is placed: joins the tenant's activation, or starts one (and its
 * message). Returns -1 (the callback answers), or INACTIVE when it cannot
 * wait (max_waiting reached, no memory); *wp is then left as it was. */
static int park(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg, const char *id,
                size_t n, const char *host, struct tg_tenant_wait **wp, tg_tenant_cb cb, void *arg)
{
    if (d->activation_waiting >= cfg->activation.max_waiting) {
        d->st.activation_refused++;
        return TG_TENANT_INACTIVE;
    }
    struct activation *a = activation_find(d, id, n);
    bool created = a == NULL;
    if (created) {
        a = calloc(1, sizeof(*a) + n + 1);
        if (a == NULL)
            return TG_TENANT_INACTIVE;
        a->d = d;
        a->n = n;
        memcpy(a->id, id, n);
        tg_list_init(&a->waiters);
        a->deadline = ev_now(d->loop) + (double)cfg->activation.timeout_ms / 1000.0;
    }
    struct tg_tenant_wait *w = *wp;
    if (w == NULL && (w = calloc(1, sizeof(*w))) == NULL) {
        free(created ? a : NULL);
        return TG_TENANT_INACTIVE;
    }
    if (*wp == NULL) {
        w->cb = cb;
        w->arg = arg;
        w->cfg = cfg;
        w->host = host;
        *wp = w;
    }
    if (created) {
        tg_list_push_back(&d->activations, &a->link);
        ev_timer_init(&a->tick, on_activation_tick, ACTIVATION_RECHECK_S, 0.);
        a->tick.data = a;
        ev_timer_start(d->loop, &a->tick);
        activation_send(d, cfg, a, w->host);
    }
    w->domain = false;
    w->act = a;
    tg_list_push_back(&a->waiters, &w->link);
    d->activation_waiting++;
    return -1;
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
    bool stale = false, moved = false;

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
        st = oc == OUT_FOUND      ? TG_TENANT_FOUND
             : oc == OUT_INACTIVE ? TG_TENANT_INACTIVE
                                  : TG_TENANT_NOT_FOUND;
        ans_t = t;
        tg_tenant_ref(ans_t);
        if (target != NULL)
            snprintf(ans_target, sizeof(ans_target), "%s", target);
        if (e != NULL) {
            char *copy = NULL;
            moved = !e->domain && e->state == E_FOUND && st == TG_TENANT_FOUND &&
                    !same_servers(e->t, t);
            if (st == TG_TENANT_FOUND && e->domain && (copy = strdup(target)) == NULL) {
                drop_data(d, e); /* cannot cache it: answer anyway */
            } else {
                drop_data(d, e);
                e->state = st == TG_TENANT_FOUND      ? E_FOUND
                           : st == TG_TENANT_INACTIVE ? E_INACTIVE
                                                      : E_NOT_FOUND;
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
        answer_waiter(d, wait_of(n), f->key, st, ans_t, ans_target, stale);
    }
    if (!f->domain && oc != OUT_ERROR)
        activation_settle(d, f->key, f->klen, st, ans_t);
    if (moved && d->on_change != NULL && !d->closing)
        d->on_change(d->change_arg, f->key);
    tg_tenant_release(ans_t);
    fetch_free(f);
}

static void settle(struct tg_tenant_dir *d);
static ev_tstamp ms_to_s(int64_t ms);

/* ---- servers that are names ------------------------------------------------------ */

/* The resolver thread: some group is ready. Only wakes our loop. */
static void on_names_ready(void *arg)
{
    struct tg_tenant_dir *d = arg;
    ev_async_send(d->loop, &d->names_async);
}

/* Completes the fetches whose names are answered or whose wait is over
 * (the tenant as it is then: a name still unanswered has no address, and
 * the request gets 502 unless another server takes it). */
static void run_names(struct tg_tenant_dir *d)
{
    ev_tstamp now = ev_now(d->loop), next = 0;
    bool again = true;
    while (again && !d->closing) {
        again = false;
        next = 0;
        struct tg_list *head = &d->active;
        for (struct tg_list *n = head->next; n != head; n = n->next) {
            struct fetch *f = fetch_of(n);
            if (f->names_t == NULL || f->delivering)
                continue;
            if (now < f->names_by && !tg_resolver_group_ready(f->names_t->upstream.resolve)) {
                if (next == 0 || f->names_by < next)
                    next = f->names_by;
                continue;
            }
            struct tg_tenant *t = f->names_t;
            tg_resolver_group_notify(t->upstream.resolve, NULL, NULL);
            f->names_t = NULL;
            d->names_waiting--;
            complete(d, f, OUT_FOUND, t, NULL); /* frees f; callbacks may add fetches */
            tg_tenant_release(t);
            again = true;
            break;
        }
    }
    ev_timer_stop(d->loop, &d->names_timer);
    if (d->names_waiting == 0 || d->closing) {
        ev_async_stop(d->loop, &d->names_async);
        return;
    }
    ev_timer_set(&d->names_timer, next > now ? next - now : 0., 0.);
    ev_timer_start(d->loop, &d->names_timer);
}

static void on_names_async(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop, (void)revents;
    struct tg_tenant_dir *d = w->data;
    d->depth++;
    run_names(d);
    d->depth--;
    settle(d);
}

static void on_names_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct tg_tenant_dir *d = w->data;
    d->depth++;
    run_names(d);
    d->depth--;
    settle(d);
}

/* Redis answered fetch `f` with tenant `t` (referenced here for the
 * wait), whose names the resolver has not answered yet: the look-ups
 * wait for it, no longer than the Redis timeout. Inside a depth count. */
static void wait_for_names(struct tg_tenant_dir *d, struct fetch *f, struct tg_tenant *t)
{
    tg_tenant_ref(t);
    f->names_t = t;
    f->names_by = ev_now(d->loop) + ms_to_s(d->cfg->redis.timeout_ms);
    d->names_waiting++;
    if (!ev_is_active(&d->names_async))
        ev_async_start(d->loop, &d->names_async);
    /* Asked first, checked after: an answer in between is not lost. */
    tg_resolver_group_notify(t->upstream.resolve, on_names_ready, d);
    run_names(d);
}

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
    if (oc == OUT_FOUND && t != NULL && t->upstream.resolve != NULL &&
        !tg_resolver_group_ready(t->upstream.resolve)) {
        wait_for_names(d, f, t);
        tg_tenant_release(t);
        d->depth--;
        settle(d);
        return 0;
    }
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
    key[n] = '\0';
    struct entry *e = cache_find(d, key, n, key_hash(d, key, n));
    if (e != NULL)
        cache_remove(d, e); /* a fetch in flight is detached: may be old */
    bool domain = n > HOST_TAG_LEN && memcmp(key, HOST_TAG, HOST_TAG_LEN) == 0;
    if (!domain && activation_find(d, key, n) != NULL)
        refetch(d, key, n); /* placed, maybe: the waiting requests go on */
    if (!domain && d->on_change != NULL) {
        d->depth++;
        d->on_change(d->change_arg, key);
        d->depth--;
        settle(d);
    }
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

static ev_tstamp ms_to_s(int64_t ms)
{
    return ms > 0 ? (double)ms / 1e3 : 0.;
}

/* Copies what the directory keeps of cfg. Returns -1 on allocation
 * failure (nothing changed). */
static int copy_target(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg)
{
    const struct tg_config_redis *rc = &cfg->redis;
    const char *prefix = rc->key_prefix != NULL ? rc->key_prefix : DEFAULT_PREFIX;
    size_t plen = strlen(prefix);
    struct tg_config_redis *server = tg_redis_config_dup(rc);
    char *p = strdup(prefix);
    char *keybuf = malloc(plen + KEY_MAX + 1);
    if (server == NULL || p == NULL || keybuf == NULL) {
        tg_redis_config_free(server);
        free(p);
        free(keybuf);
        return -1;
    }
    tg_redis_config_free(d->server);
    free(d->prefix);
    free(d->keybuf);
    d->server = server;
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
        if (f->delivering || f->names_t != NULL) /* answered; waits for names only */
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
    tg_list_init(&d->activations);
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
    ev_async_init(&d->names_async, on_names_async);
    d->names_async.data = d;
    ev_timer_init(&d->names_timer, on_names_timer, 0., 0.);
    d->names_timer.data = d;
    copy_limits(d, cfg);
    d->redis = cfg->directory == TG_TENANTS_REDIS;
    if (d->buckets == NULL || copy_target(d, cfg) < 0 || (d->redis && start_links(d, cfg) < 0)) {
        stop_links(d);
        free(d->buckets);
        tg_redis_config_free(d->server);
        free(d->prefix);
        free(d->keybuf);
        free(d);
        return NULL;
    }
    return d;
}

void tg_tenant_dir_on_change(struct tg_tenant_dir *d, tg_tenant_change_cb cb, void *arg)
{
    d->on_change = cb;
    d->change_arg = arg;
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
    bool moved = redis != d->redis || !tg_redis_config_same_server(rc, d->server) ||
                 strcmp(prefix, d->prefix) != 0;
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
    tg_redis_config_free(d->server);
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
    ev_timer_stop(d->loop, &d->names_timer);
    ev_async_stop(d->loop, &d->names_async);
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
    struct tg_list *an;
    while ((an = tg_list_first(&d->activations)) != NULL)
        activation_answer(d, (struct activation *)((char *)an - offsetof(struct activation, link)),
                          TG_TENANT_UNAVAILABLE, NULL);
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
    return tg_tenant_lookup_host(d, cfg, id, n, NULL, out, cb, arg, wait);
}

int tg_tenant_lookup_host(struct tg_tenant_dir *d, const struct tg_config_tenants *cfg,
                          const char *id, size_t n, const char *host, struct tg_tenant **out,
                          tg_tenant_cb cb, void *arg, struct tg_tenant_wait **wait)
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
    int rc = lookup_id(d, cfg, buf, n, host, out, &w, cb, arg);
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
    if (w->act != NULL)
        w->act->d->activation_waiting--;
    free(w);
}

void tg_tenant_dir_gateway(struct tg_tenant_dir *d, const char *gateway_id)
{
    d->gateway = gateway_id;
}

const struct tg_redis *tg_tenant_dir_link(const struct tg_tenant_dir *d)
{
    return d->redis && d->link != NULL ? tg_redis_cluster_single(d->link) : NULL;
}

void tg_tenant_dir_stats(const struct tg_tenant_dir *d, struct tg_tenant_stats *out)
{
    *out = d->st;
    out->cached = d->count;
    out->memory = d->mem + usable(d->buckets);
}
