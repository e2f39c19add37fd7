/* The resolver: a table of names (host + port) that groups of servers
 * use, one thread that resolves them with getaddrinfo when they are due,
 * and the copies workers take of a group's servers.
 *
 * Everything shared sits under one mutex: names, groups (by id), labels.
 * It is taken when a group is made or dropped (config load, a tenant
 * fetched or evicted), when the thread records an answer, and when a
 * worker copies a group's servers because the epoch moved, never per
 * request. The epoch is the one thing read without it: an atomic counter
 * on a cache line of its own, bumped under the mutex whenever a name's
 * addresses change.
 *
 * Not here: parsing server lists (config.c, tenant.c), pools and balancing
 * (upstream.c). getaddrinfo blocks, so one slow name delays the others
 * behind it; this is meant for tens to thousands of names, not millions. */
#include "resolver.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* Addresses kept per name, at most (the rest of a huge answer is dropped). */
#define MAX_ADDRS 64
/* Names due within this much of now are resolved in the same pass. */
#define BATCH_SLACK_S 0.05
#define BUCKETS_MIN 64
#define ADDR_TEXT_MAX 64 /* "[v6]:port" */
/* Addresses named in one log line. */
#define LOG_ADDRS 8

struct interval {
    int64_t ms;
    unsigned n; /* groups using the name with this interval */
};

struct rname {
    struct rname *hnext;
    char *host; /* lower case */
    uint16_t port;
    unsigned users; /* group items naming it */
    struct interval *ivls;
    size_t nivls;
    double due;                     /* monotonic seconds */
    struct sockaddr_storage *addrs; /* sorted, canonical, no duplicates */
    size_t naddrs;
    bool answered; /* had an answer (or a config's resolution) */
    bool failing;  /* the last resolution failed */
    bool busy;     /* the thread resolves it now, without the lock */
    char error[96];
};

struct label {
    struct label *next;
    char *name;
    uint64_t failures;
    uint64_t last_attempt; /* counted once per attempt */
};

struct item {
    struct tg_config_server lit; /* an IP literal: its address and text */
    struct rname *name;          /* or a name */
};

struct tg_resolver_group {
    unsigned refs;
    unsigned id;
    uint64_t serial;
    struct label *label;
    int64_t interval_ms;
    void (*notify)(void *arg);
    void *notify_arg;
    size_t n;
    struct item *items;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* CLOCK_MONOTONIC, made by tg_resolver_start */
    pthread_t thread;
    bool running, stop;
    struct rname **buckets;
    size_t nbuckets, nnames;
    struct tg_resolver_group **groups; /* by id */
    size_t ngroups_cap, ngroups;
    unsigned *free_ids;
    size_t nfree;
    uint64_t serials, attempts;
    struct label *labels;
} R = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Alone on its cache line: workers read it for every request to a group,
 * and nothing else written nearby should make them miss. */
static struct {
    _Alignas(64) _Atomic uint64_t v;
    char pad[64 - sizeof(uint64_t)];
} epoch_line;
#define epoch_now (epoch_line.v)

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

uint64_t tg_resolver_epoch(void)
{
    return atomic_load_explicit(&epoch_now, memory_order_relaxed);
}

/* ---- addresses ------------------------------------------------------------------ */

/* The same address always the same bytes: family, port and address only. */
static bool canon(const struct sockaddr *in, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    if (in->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)in;
        struct sockaddr_in *b = (struct sockaddr_in *)out;
        b->sin_family = AF_INET;
        b->sin_port = a->sin_port;
        b->sin_addr = a->sin_addr;
        return true;
    }
    if (in->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)in;
        struct sockaddr_in6 *b = (struct sockaddr_in6 *)out;
        b->sin6_family = AF_INET6;
        b->sin6_port = a->sin6_port;
        b->sin6_addr = a->sin6_addr;
        b->sin6_scope_id = a->sin6_scope_id;
        return true;
    }
    return false;
}

static socklen_t sa_len(const struct sockaddr_storage *sa)
{
    return sa->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static int cmp_addr(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(struct sockaddr_storage));
}

/* Sorts and removes duplicates in place; returns the count left. DNS
 * servers rotate their answers: sorted, the same set compares equal. */
static size_t normalise(struct sockaddr_storage *v, size_t n)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_addr);
    size_t k = 1;
    for (size_t i = 1; i < n; i++)
        if (cmp_addr(&v[i], &v[k - 1]) != 0)
            v[k++] = v[i];
    return k;
}

/* "a, b, c" (at most LOG_ADDRS, then "and N more"), or "none". */
static void addr_list(const struct sockaddr_storage *v, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    if (n == 0) {
        snprintf(out, cap, "none");
        return;
    }
    for (size_t i = 0; i < n && i < LOG_ADDRS && o < cap; i++) {
        char t[ADDR_TEXT_MAX];
        tg_config_format_sockaddr((const struct sockaddr *)&v[i], t, sizeof(t));
        int w = snprintf(out + o, cap - o, "%s%s", i ? ", " : "", t);
        o += w > 0 ? (size_t)w : 0;
    }
    if (n > LOG_ADDRS && o < cap)
        snprintf(out + o, cap - o, " and %zu more", n - LOG_ADDRS);
}

/* ---- names ------------------------------------------------------------------------ */

static uint64_t name_hash(const char *host, uint16_t port)
{
    uint64_t h = 1469598103934665603ull ^ port;
    for (const char *c = host; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    return h;
}

static int64_t name_interval(const struct rname *nm)
{
    int64_t ms = 0;
    for (size_t i = 0; i < nm->nivls; i++)
        if (ms == 0 || nm->ivls[i].ms < ms)
            ms = nm->ivls[i].ms;
    return ms > 0 ? ms : 30000;
}

static struct rname *name_find(const char *host, uint16_t port)
{
    if (R.buckets == NULL)
        return NULL;
    for (struct rname *nm = R.buckets[name_hash(host, port) & (R.nbuckets - 1)]; nm != NULL;
         nm = nm->hnext)
        if (nm->port == port && strcmp(nm->host, host) == 0)
            return nm;
    return NULL;
}

static void name_link(struct rname *nm)
{
    size_t i = name_hash(nm->host, nm->port) & (R.nbuckets - 1);
    nm->hnext = R.buckets[i];
    R.buckets[i] = nm;
}

static int grow_names(void)
{
    size_t nb = R.nbuckets ? R.nbuckets * 2 : BUCKETS_MIN;
    struct rname **b = calloc(nb, sizeof(*b));
    if (b == NULL)
        return -1;
    struct rname **old = R.buckets;
    size_t oldn = R.nbuckets;
    R.buckets = b;
    R.nbuckets = nb;
    for (size_t i = 0; i < oldn; i++) {
        for (struct rname *nm = old[i], *next; nm != NULL; nm = next) {
            next = nm->hnext;
            name_link(nm);
        }
    }
    free(old);
    return 0;
}

static struct rname *name_get(const char *host, uint16_t port)
{
    char lower[256];
    size_t n = strlen(host);
    if (n >= sizeof(lower))
        return NULL;
    for (size_t i = 0; i <= n; i++)
        lower[i] = (host[i] >= 'A' && host[i] <= 'Z') ? (char)(host[i] + 32) : host[i];
    struct rname *nm = name_find(lower, port);
    if (nm != NULL)
        return nm;
    if (R.nnames >= R.nbuckets && grow_names() < 0 && R.buckets == NULL)
        return NULL;
    nm = calloc(1, sizeof(*nm));
    if (nm == NULL || (nm->host = strdup(lower)) == NULL) {
        free(nm);
        return NULL;
    }
    nm->port = port;
    name_link(nm);
    R.nnames++;
    return nm;
}

static void name_free(struct rname *nm)
{
    struct rname **pp = &R.buckets[name_hash(nm->host, nm->port) & (R.nbuckets - 1)];
    while (*pp != nm)
        pp = &(*pp)->hnext;
    *pp = nm->hnext;
    R.nnames--;
    free(nm->host);
    free(nm->ivls);
    free(nm->addrs);
    free(nm);
}

static int ivl_add(struct rname *nm, int64_t ms)
{
    for (size_t i = 0; i < nm->nivls; i++)
        if (nm->ivls[i].ms == ms) {
            nm->ivls[i].n++;
            return 0;
        }
    struct interval *v = realloc(nm->ivls, (nm->nivls + 1) * sizeof(*v));
    if (v == NULL)
        return -1;
    nm->ivls = v;
    nm->ivls[nm->nivls++] = (struct interval){ms, 1};
    return 0;
}

static void ivl_remove(struct rname *nm, int64_t ms)
{
    for (size_t i = 0; i < nm->nivls; i++)
        if (nm->ivls[i].ms == ms) {
            if (--nm->ivls[i].n == 0)
                nm->ivls[i] = nm->ivls[--nm->nivls];
            return;
        }
}

/* One group item lets go of its name. */
static void name_release(struct rname *nm, int64_t interval_ms)
{
    ivl_remove(nm, interval_ms);
    if (--nm->users == 0 && !nm->busy)
        name_free(nm); /* a busy one is freed by the thread when it is back */
}

static bool group_ready(const struct tg_resolver_group *g)
{
    for (size_t i = 0; i < g->n; i++)
        if (g->items[i].name != NULL && !g->items[i].name->answered)
            return false;
    return true;
}

static bool group_uses(const struct tg_resolver_group *g, const struct rname *nm)
{
    for (size_t i = 0; i < g->n; i++)
        if (g->items[i].name == nm)
            return true;
    return false;
}

/* Records an answer for a name (under the lock): rc 0 with `n` addresses
 * (any order, duplicates allowed), or a failure `err`. `attempt` numbers
 * the resolution, so that a label is counted once however many of its
 * groups use the name (0: a config's own resolution at load). */
static void name_answered(struct rname *nm, int rc, const char *err, struct sockaddr_storage *v,
                          size_t n, uint64_t attempt, double now)
{
    bool first = !nm->answered;
    char was[512], now_s[512];
    if (rc == 0) {
        n = normalise(v, n);
        bool changed = nm->naddrs != n || (n > 0 && memcmp(nm->addrs, v, n * sizeof(*v)) != 0);
        if (changed) {
            struct sockaddr_storage *copy = malloc(n * sizeof(*copy));
            if (copy != NULL) {
                memcpy(copy, v, n * sizeof(*copy));
                addr_list(nm->addrs, nm->naddrs, was, sizeof(was));
                addr_list(copy, n, now_s, sizeof(now_s));
                free(nm->addrs);
                nm->addrs = copy;
                nm->naddrs = n;
                atomic_fetch_add_explicit(&epoch_now, 1, memory_order_relaxed);
                if (nm->failing)
                    tg_log_info("resolver: %s:%u resolves again, now to %s (was %s)", nm->host,
                                nm->port, now_s, was);
                else if (!first)
                    tg_log_info("resolver: %s:%u now resolves to %s (was %s)", nm->host, nm->port,
                                now_s, was);
                else
                    tg_log_debug("resolver: %s:%u resolves to %s", nm->host, nm->port, now_s);
            } else {
                tg_log_error("resolver: out of memory keeping the addresses of %s:%u", nm->host,
                             nm->port);
            }
        } else if (nm->failing) {
            addr_list(nm->addrs, nm->naddrs, now_s, sizeof(now_s));
            tg_log_info("resolver: %s:%u resolves again (still %s)", nm->host, nm->port, now_s);
        }
        nm->failing = false;
        nm->error[0] = '\0';
    } else {
        if (!nm->failing) {
            addr_list(nm->addrs, nm->naddrs, was, sizeof(was));
            if (nm->naddrs > 0)
                tg_log_warn("resolver: %s:%u does not resolve (%s); keeping its last addresses "
                            "(%s) until it does",
                            nm->host, nm->port, err, was);
            else
                tg_log_warn("resolver: %s:%u does not resolve (%s); it has no address to use "
                            "until it does",
                            nm->host, nm->port, err);
        }
        nm->failing = true;
        snprintf(nm->error, sizeof(nm->error), "%s", err);
        for (size_t i = 0; i < R.ngroups_cap; i++) {
            struct tg_resolver_group *g = R.groups[i];
            if (g == NULL || g->label->last_attempt == attempt || !group_uses(g, nm))
                continue;
            g->label->last_attempt = attempt;
            g->label->failures++;
        }
    }
    nm->answered = true;
    nm->due = now + (double)name_interval(nm) / 1000.0;
    if (!first)
        return;
    for (size_t i = 0; i < R.ngroups_cap; i++) {
        struct tg_resolver_group *g = R.groups[i];
        if (g == NULL || g->notify == NULL || !group_uses(g, nm) || !group_ready(g))
            continue;
        void (*fn)(void *) = g->notify;
        g->notify = NULL;
        fn(g->notify_arg);
    }
}

/* ---- labels ------------------------------------------------------------------------ */

static struct label *label_get(const char *name)
{
    for (struct label *l = R.labels; l != NULL; l = l->next)
        if (strcmp(l->name, name) == 0)
            return l;
    struct label *l = calloc(1, sizeof(*l));
    if (l == NULL || (l->name = strdup(name)) == NULL) {
        free(l);
        return NULL;
    }
    l->next = R.labels;
    R.labels = l;
    return l;
}

void tg_resolver_failures_each(void (*fn)(void *arg, const char *label, uint64_t failures),
                               void *arg)
{
    pthread_mutex_lock(&R.lock);
    for (struct label *l = R.labels; l != NULL; l = l->next)
        fn(arg, l->name, l->failures);
    pthread_mutex_unlock(&R.lock);
}

/* ---- groups ------------------------------------------------------------------------ */

static int take_id(unsigned *id)
{
    if (R.nfree > 0) {
        *id = R.free_ids[--R.nfree];
        return 0;
    }
    if (R.ngroups >= R.ngroups_cap) {
        size_t cap = R.ngroups_cap ? R.ngroups_cap * 2 : 16;
        struct tg_resolver_group **v = realloc(R.groups, cap * sizeof(*v));
        if (v == NULL)
            return -1;
        unsigned *f = realloc(R.free_ids, cap * sizeof(*f));
        if (f == NULL) {
            R.groups = v;
            return -1;
        }
        memset(v + R.ngroups_cap, 0, (cap - R.ngroups_cap) * sizeof(*v));
        R.groups = v;
        R.free_ids = f;
        R.ngroups_cap = cap;
    }
    *id = (unsigned)R.ngroups++;
    return 0;
}

/* Frees a group's own memory (the names were let go already). */
static void group_free_items(struct tg_resolver_group *g)
{
    for (size_t i = 0; i < g->n; i++)
        free((char *)g->items[i].lit.addr.text);
    free(g->items);
    free(g);
}

struct tg_resolver_group *tg_resolver_group_new(const char *label,
                                                const struct tg_config_server *servers, size_t n,
                                                int64_t interval_ms)
{
    struct tg_resolver_group *g = calloc(1, sizeof(*g));
    struct item *items = calloc(n ? n : 1, sizeof(*items));
    if (g == NULL || items == NULL) {
        free(g);
        free(items);
        return NULL;
    }
    g->items = items;
    g->refs = 1;
    g->interval_ms = interval_ms > 0 ? interval_ms : 30000;
    double now = mono();
    bool have_id = false;
    pthread_mutex_lock(&R.lock);
    g->label = label_get(label != NULL ? label : "-");
    if (g->label == NULL || take_id(&g->id) < 0)
        goto fail;
    have_id = true;
    for (size_t i = 0; i < n; i++) {
        const struct tg_config_server *s = &servers[i];
        struct item *it = &g->items[g->n];
        if (s->host == NULL) {
            it->lit = *s;
            it->lit.resolved = NULL;
            it->lit.nresolved = 0;
            it->lit.addr.text = strdup(s->addr.text != NULL ? s->addr.text : "");
            if (it->lit.addr.text == NULL)
                goto fail;
            g->n++;
            continue;
        }
        struct rname *nm = name_get(s->host, s->port);
        if (nm == NULL || ivl_add(nm, g->interval_ms) < 0) {
            if (nm != NULL && nm->users == 0 && !nm->busy)
                name_free(nm);
            goto fail;
        }
        nm->users++;
        it->name = nm;
        g->n++;
        if (s->nresolved > 0) {
            /* What the config's load just found: the freshest answer. */
            struct sockaddr_storage v[MAX_ADDRS];
            size_t k = 0;
            for (size_t j = 0; j < s->nresolved && k < MAX_ADDRS; j++)
                if (canon((const struct sockaddr *)&s->resolved[j], &v[k]))
                    k++;
            name_answered(nm, 0, NULL, v, k, 0, now);
        } else if (!nm->answered && !nm->busy) {
            nm->due = 0; /* at once */
        } else if (nm->due > now + (double)g->interval_ms / 1000.0) {
            nm->due = now + (double)g->interval_ms / 1000.0;
        }
    }
    g->serial = ++R.serials;
    R.groups[g->id] = g;
    if (R.running)
        pthread_cond_signal(&R.wake);
    pthread_mutex_unlock(&R.lock);
    return g;

fail:
    for (size_t i = 0; i < g->n; i++)
        if (g->items[i].name != NULL)
            name_release(g->items[i].name, g->interval_ms);
    if (have_id)
        R.free_ids[R.nfree++] = g->id;
    pthread_mutex_unlock(&R.lock);
    group_free_items(g);
    return NULL;
}

void tg_resolver_group_ref(struct tg_resolver_group *g)
{
    pthread_mutex_lock(&R.lock);
    g->refs++;
    pthread_mutex_unlock(&R.lock);
}

void tg_resolver_group_unref(struct tg_resolver_group *g)
{
    if (g == NULL)
        return;
    pthread_mutex_lock(&R.lock);
    if (--g->refs > 0) {
        pthread_mutex_unlock(&R.lock);
        return;
    }
    R.groups[g->id] = NULL;
    R.free_ids[R.nfree++] = g->id;
    for (size_t i = 0; i < g->n; i++)
        if (g->items[i].name != NULL)
            name_release(g->items[i].name, g->interval_ms);
    pthread_mutex_unlock(&R.lock);
    group_free_items(g);
}

bool tg_resolver_group_ready(struct tg_resolver_group *g)
{
    pthread_mutex_lock(&R.lock);
    bool ready = group_ready(g);
    pthread_mutex_unlock(&R.lock);
    return ready;
}

void tg_resolver_group_notify(struct tg_resolver_group *g, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&R.lock);
    g->notify = fn;
    g->notify_arg = arg;
    pthread_mutex_unlock(&R.lock);
}

unsigned tg_resolver_group_id(const struct tg_resolver_group *g)
{
    return g->id;
}

uint64_t tg_resolver_group_failures(struct tg_resolver_group *g)
{
    pthread_mutex_lock(&R.lock);
    uint64_t n = g->label->failures;
    pthread_mutex_unlock(&R.lock);
    return n;
}

size_t tg_resolver_group_names(struct tg_resolver_group *g, struct tg_resolver_name_state *out,
                               size_t cap)
{
    size_t k = 0;
    pthread_mutex_lock(&R.lock);
    for (size_t i = 0; i < g->n; i++) {
        const struct rname *nm = g->items[i].name;
        if (nm == NULL)
            continue;
        if (k < cap) {
            struct tg_resolver_name_state *s = &out[k];
            snprintf(s->name, sizeof(s->name), "%s:%u", nm->host, nm->port);
            s->addresses = nm->naddrs;
            s->answered = nm->answered;
            s->failing = nm->failing;
            snprintf(s->error, sizeof(s->error), "%s", nm->error);
        }
        k++;
    }
    pthread_mutex_unlock(&R.lock);
    return k;
}

/* ---- server sets ---------------------------------------------------------------- */

void tg_server_set_ref(struct tg_server_set *s)
{
    s->refs++;
}

void tg_server_set_unref(struct tg_server_set *s)
{
    if (s != NULL && --s->refs == 0)
        free(s);
}

/* The group's servers now, in one block (under the lock). */
static struct tg_server_set *build_set(const struct tg_resolver_group *g)
{
    size_t n = 0, strings = 0;
    char t[ADDR_TEXT_MAX];
    for (size_t i = 0; i < g->n; i++) {
        const struct item *it = &g->items[i];
        if (it->name == NULL) {
            n++;
            strings += strlen(it->lit.addr.text) + 1;
            continue;
        }
        n += it->name->naddrs;
        strings += strlen(it->name->host) + 1;
        for (size_t j = 0; j < it->name->naddrs; j++)
            strings += tg_config_format_sockaddr((const struct sockaddr *)&it->name->addrs[j], t,
                                                 sizeof(t)) +
                       1;
    }
    size_t head = (sizeof(struct tg_server_set) + 15) & ~(size_t)15;
    struct tg_server_set *s = malloc(head + n * sizeof(struct tg_config_server) + strings);
    if (s == NULL)
        return NULL;
    s->refs = 1;
    s->n = n;
    s->servers = (struct tg_config_server *)((char *)s + head);
    char *p = (char *)(s->servers + n);
    size_t k = 0;
    for (size_t i = 0; i < g->n; i++) {
        const struct item *it = &g->items[i];
        if (it->name == NULL) {
            struct tg_config_server *o = &s->servers[k++];
            *o = it->lit;
            size_t len = strlen(it->lit.addr.text) + 1;
            memcpy(p, it->lit.addr.text, len);
            o->addr.text = p;
            p += len;
            continue;
        }
        const struct rname *nm = it->name;
        size_t hl = strlen(nm->host) + 1;
        char *host = p;
        memcpy(p, nm->host, hl);
        p += hl;
        for (size_t j = 0; j < nm->naddrs; j++) {
            struct tg_config_server *o = &s->servers[k++];
            memset(o, 0, sizeof(*o));
            o->addr.sa = nm->addrs[j];
            o->addr.salen = sa_len(&nm->addrs[j]);
            o->host = host;
            o->port = nm->port;
            size_t len = tg_config_format_sockaddr((const struct sockaddr *)&nm->addrs[j], p,
                                                   ADDR_TEXT_MAX) +
                         1;
            o->addr.text = p;
            p += len;
        }
    }
    return s;
}

struct tg_server_set *tg_resolver_group_set(struct tg_resolver_group *g)
{
    pthread_mutex_lock(&R.lock);
    struct tg_server_set *s = build_set(g);
    pthread_mutex_unlock(&R.lock);
    return s;
}

static bool same_server(const struct tg_config_server *a, const struct tg_config_server *b)
{
    if (a->addr.salen != b->addr.salen || memcmp(&a->addr.sa, &b->addr.sa, a->addr.salen) != 0)
        return false;
    if (a->host == NULL || b->host == NULL)
        return a->host == b->host;
    return strcmp(a->host, b->host) == 0;
}

static bool same_set(const struct tg_server_set *a, const struct tg_server_set *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (!same_server(&a->servers[i], &b->servers[i]))
            return false;
    return true;
}

/* Puts `s` (built at `epoch` for group `serial`) into the view; the
 * addresses the view's old set had and `s` has not are reported gone. */
static void install(struct tg_resolver_view *v, uint64_t serial, uint64_t epoch,
                    struct tg_server_set *s, tg_resolver_removed_fn removed, void *arg)
{
    struct tg_server_set *old = v->set;
    if (old != NULL && v->serial == serial) {
        if (same_set(old, s)) {
            tg_server_set_unref(s);
            v->epoch = epoch;
            return;
        }
        for (size_t i = 0; removed != NULL && i < old->n; i++) {
            bool kept = false;
            for (size_t j = 0; j < s->n && !kept; j++)
                kept = old->servers[i].addr.salen == s->servers[j].addr.salen &&
                       memcmp(&old->servers[i].addr.sa, &s->servers[j].addr.sa,
                              old->servers[i].addr.salen) == 0;
            if (!kept)
                removed(arg, &old->servers[i]);
        }
    }
    v->set = s;
    v->serial = serial;
    v->epoch = epoch;
    tg_server_set_unref(old);
}

struct tg_server_set *tg_resolver_view_get(struct tg_resolver_view *v,
                                           const struct tg_resolver_group *g,
                                           tg_resolver_removed_fn removed, void *arg)
{
    uint64_t e = atomic_load_explicit(&epoch_now, memory_order_relaxed);
    if (v->set != NULL && v->serial == g->serial && v->epoch == e)
        return v->set;
    pthread_mutex_lock(&R.lock);
    struct tg_server_set *s = build_set(g);
    e = atomic_load_explicit(&epoch_now, memory_order_relaxed);
    pthread_mutex_unlock(&R.lock);
    if (s == NULL) {
        if (v->serial != g->serial) { /* another group's: never for this one */
            tg_server_set_unref(v->set);
            v->set = NULL;
        }
        return v->set;
    }
    install(v, g->serial, e, s, removed, arg);
    return v->set;
}

void tg_resolver_views_sweep(struct tg_resolver_view *views, size_t n,
                             tg_resolver_removed_fn removed, void *arg)
{
    uint64_t e = atomic_load_explicit(&epoch_now, memory_order_relaxed);
    bool any = false;
    for (size_t i = 0; i < n && !any; i++)
        any = views[i].set != NULL;
    if (!any)
        return;
    /* Look under the lock, build what moved; install after it. */
    struct tg_server_set **fresh = NULL;
    bool *dead = calloc(n, sizeof(*dead));
    if (dead == NULL)
        return;
    pthread_mutex_lock(&R.lock);
    for (size_t i = 0; i < n; i++) {
        struct tg_resolver_view *v = &views[i];
        if (v->set == NULL)
            continue;
        struct tg_resolver_group *g = i < R.ngroups_cap ? R.groups[i] : NULL;
        if (g == NULL || g->serial != v->serial) {
            dead[i] = true;
            continue;
        }
        if (v->epoch == e)
            continue;
        if (fresh == NULL && (fresh = calloc(n, sizeof(*fresh))) == NULL)
            break;
        fresh[i] = build_set(g);
    }
    e = atomic_load_explicit(&epoch_now, memory_order_relaxed);
    pthread_mutex_unlock(&R.lock);
    for (size_t i = 0; i < n; i++) {
        struct tg_resolver_view *v = &views[i];
        if (dead[i]) {
            tg_server_set_unref(v->set);
            memset(v, 0, sizeof(*v));
        } else if (fresh != NULL && fresh[i] != NULL) {
            install(v, v->serial, e, fresh[i], removed, arg);
        }
    }
    free(fresh);
    free(dead);
}

/* ---- the thread ---------------------------------------------------------------------- */

/* getaddrinfo for one name, without the lock: A and AAAA records (or
 * /etc/hosts lines), each with the name's port. */
static int lookup(const char *host, uint16_t port, struct sockaddr_storage *v, size_t *n, char *err,
                  size_t errlen)
{
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", (unsigned)port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(host, ps, &hints, &res);
    *n = 0;
    if (rc != 0 || res == NULL) {
        snprintf(err, errlen, "%s", rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        return -1;
    }
    for (struct addrinfo *ai = res; ai != NULL && *n < MAX_ADDRS; ai = ai->ai_next)
        if (canon(ai->ai_addr, &v[*n]))
            (*n)++;
    freeaddrinfo(res);
    if (*n == 0) {
        snprintf(err, errlen, "no IPv4 or IPv6 address");
        return -1;
    }
    return 0;
}

/* Resolves one due name: the lock is let go around getaddrinfo. */
static void resolve_one(struct rname *nm)
{
    char host[256], err[96] = "";
    snprintf(host, sizeof(host), "%s", nm->host);
    uint16_t port = nm->port;
    uint64_t attempt = ++R.attempts;
    nm->busy = true;
    pthread_mutex_unlock(&R.lock);
    struct sockaddr_storage v[MAX_ADDRS];
    size_t n = 0;
    int rc = lookup(host, port, v, &n, err, sizeof(err));
    pthread_mutex_lock(&R.lock);
    nm->busy = false;
    if (nm->users == 0)
        name_free(nm); /* every group let go meanwhile */
    else
        name_answered(nm, rc, err, v, n, attempt, mono());
}

static void *resolver_main(void *arg)
{
    (void)arg;
    tg_log_set_thread_name("resolver");
    pthread_mutex_lock(&R.lock);
    while (!R.stop) {
        double now = mono(), soonest = INFINITY;
        struct rname *pick = NULL;
        for (size_t b = 0; b < R.nbuckets && pick == NULL; b++)
            for (struct rname *nm = R.buckets[b]; nm != NULL && pick == NULL; nm = nm->hnext) {
                if (nm->busy || nm->users == 0)
                    continue;
                if (nm->due <= now + BATCH_SLACK_S)
                    pick = nm;
                else if (nm->due < soonest)
                    soonest = nm->due;
            }
        if (pick != NULL) {
            resolve_one(pick);
            continue;
        }
        if (soonest == INFINITY) {
            pthread_cond_wait(&R.wake, &R.lock);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double wait = soonest - now;
        ts.tv_sec += (time_t)wait;
        ts.tv_nsec += (long)((wait - (double)(time_t)wait) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&R.wake, &R.lock, &ts);
    }
    pthread_mutex_unlock(&R.lock);
    return NULL;
}

int tg_resolver_start(void)
{
    pthread_mutex_lock(&R.lock);
    if (R.running) {
        pthread_mutex_unlock(&R.lock);
        return 0;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&R.wake, &ca);
    pthread_condattr_destroy(&ca);
    R.stop = false;
    if (pthread_create(&R.thread, NULL, resolver_main, NULL) != 0) {
        pthread_cond_destroy(&R.wake);
        pthread_mutex_unlock(&R.lock);
        return -1;
    }
    R.running = true;
    pthread_mutex_unlock(&R.lock);
    return 0;
}

void tg_resolver_stop(void)
{
    pthread_mutex_lock(&R.lock);
    bool running = R.running;
    R.stop = true;
    if (running)
        pthread_cond_signal(&R.wake);
    pthread_mutex_unlock(&R.lock);
    if (running) {
        /* A getaddrinfo under way finishes first (resolv.conf bounds it). */
        pthread_join(R.thread, NULL);
        pthread_cond_destroy(&R.wake);
    }
    pthread_mutex_lock(&R.lock);
    R.running = false;
    if (R.ngroups_cap == 0 || R.nfree == R.ngroups) {
        /* No group left: nothing refers to the tables or the labels. */
        while (R.labels != NULL) {
            struct label *l = R.labels;
            R.labels = l->next;
            free(l->name);
            free(l);
        }
        free(R.groups);
        free(R.free_ids);
        R.groups = NULL;
        R.free_ids = NULL;
        R.ngroups = R.ngroups_cap = R.nfree = 0;
        if (R.nnames == 0) {
            free(R.buckets);
            R.buckets = NULL;
            R.nbuckets = 0;
        }
    }
    pthread_mutex_unlock(&R.lock);
}
