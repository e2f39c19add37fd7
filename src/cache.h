/* The response cache's store: entries keyed on host + path + query (and
 * the request fields the response's Vary names), a hash table for look-up,
 * an LRU list and a byte count that keeps the store under its bound, and
 * the rules that say whether and for how long a response may be kept
 * (Cache-Control, Set-Cookie, Vary, status).
 *
 * One store per worker and cached route (the request path takes no lock);
 * only the purge log is shared between threads. It knows nothing of
 * requests or streams: cache_serve.c puts it on the request path and
 * forward.c fills entries as the backend's body streams to the client.
 *
 * Entries are reference-counted: the store holds one while an entry is in
 * its table, every reader (a hit being sent) and the filler hold one, so
 * an eviction or a purge while a hit is being written frees nothing under
 * the writer. Worker thread, except the purge log. */
#ifndef TG_CACHE_H
#define TG_CACHE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "list.h"
#include "metrics.h"

/* Longest key: host + path + query. A longer URL is not cached. */
#define TG_CACHE_KEY_MAX 4096

/* Compressed copies an entry can hold, by coding number (the caller's
 * numbering: cache_serve.c uses enum tg_encoding). */
#define TG_CACHE_CODINGS 4

/* ---- the shared purge log ------------------------------------------------ */

/* Purges recorded and not yet seen by every worker: a worker that falls
 * this many behind empties its stores instead (never serves a purged
 * entry). */
#define TG_CACHE_PURGE_RING 256

/* Purges posted by the admin listener (any worker's thread) and applied by
 * each worker to its own stores before its next look-up, so a purge takes
 * effect everywhere at once without a worker touching another's memory.
 * Lives in the runtime (process-wide). */
struct tg_cache_purges {
    pthread_mutex_t lock;
    _Atomic uint64_t seq; /* purges posted so far */
    struct {
        char key[TG_CACHE_KEY_MAX];
        size_t len;
    } ring[TG_CACHE_PURGE_RING]; /* purge n is ring[(n - 1) % RING] */
};

/* Sets up an empty log. Returns 0 or -1. */
int tg_cache_purges_init(struct tg_cache_purges *p);
void tg_cache_purges_fini(struct tg_cache_purges *p);
/* Records a purge of every entry (every Vary variant) under `key` (as
 * tg_cache_key makes it). Any thread. Returns 0, or -1 if the key is too
 * long. */
int tg_cache_purges_post(struct tg_cache_purges *p, const char *key, size_t len);

/* ---- keys and rules -------------------------------------------------------- */

/* The key of a request: the host folded to lower case without a trailing
 * dot, then the (normalised) path with its query, as "host/path?query".
 * Returns its length, or 0 when it does not fit `cap`. */
size_t tg_cache_key(char *out, size_t cap, const char *host, size_t host_len, const char *path,
                    size_t path_len);

/* What a response's fields say about storing it. */
struct tg_cache_verdict {
    bool storable;
    const char *why; /* when not: a short reason (tests, debug) */
    double lifetime; /* s: freshness lifetime (s-maxage, max-age, else the default) */
    double age;      /* s: the Age the backend sent (already used up) */
    bool any_vary;   /* Vary: * (never matches: not storable) */
};

/* Decides whether a response with `status` and `h` may be stored, and for
 * how long: never with Set-Cookie, Vary: *, Cache-Control no-store,
 * private or no-cache (we do not revalidate with the backend); s-maxage
 * wins over max-age; `default_ttl` (s, the route's) when neither is
 * given, and then only for 200 and 203 (other cacheable statuses, 301,
 * 404, 410, need the backend's own max-age). A lifetime of 0 is not
 * storable. Pure. */
void tg_cache_judge(int status, const struct tg_http_headers *h, double default_ttl,
                    struct tg_cache_verdict *out);

/* Parses an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") into seconds
 * since the epoch. Returns false when it is not one. */
bool tg_cache_parse_date(const char *p, size_t n, int64_t *out);

/* ---- the store ----------------------------------------------------------------- */

struct tg_cache;
struct tg_cache_entry;

/* A request parked on an entry being filled (coalescing): `wake` runs when
 * the fill ends, with the entry (complete; a reference for the waiter) or
 * NULL (it was not stored: the waiter goes to the backend itself). The
 * waiter is unlinked before `wake` runs. Embedded in the waiter's memory. */
struct tg_cache_waiter {
    struct tg_list link;
    struct tg_cache_entry *entry; /* parked on, or NULL */
    void (*wake)(struct tg_cache_waiter *w, struct tg_cache_entry *e);
};

enum tg_cache_state {
    TG_CACHE_FILLING = 0, /* the backend's answer is streaming into it */
    TG_CACHE_READY,       /* complete */
    TG_CACHE_ABANDONED,   /* not storable, too large or cut: never served */
};

struct tg_cache_entry {
    struct tg_cache *cache; /* NULL once out of the table (evicted, purged) */
    struct tg_cache_entry *hnext;
    struct tg_list lru; /* most recently used first */
    uint64_t hash;
    unsigned refs;
    uint8_t state; /* enum tg_cache_state */
    char *key;
    size_t key_len;
    size_t charged; /* bytes counted against the store */

    /* The response: status, the backend's end-to-end fields (framing and
     * hop-by-hop ones left out), the identity body, and beside it the body
     * compressed for each coding a hit asked for, each made once
     * (cache_serve.c) and counted against the store like the rest. */
    int status;
    struct tg_http_headers head; /* views into head_bytes */
    char *head_bytes;
    char *body;
    size_t body_len, body_cap;
    char *coded[TG_CACHE_CODINGS]; /* by coding number (cache_serve.c's), or NULL */
    size_t coded_len[TG_CACHE_CODINGS];
    int64_t expect_len; /* the backend's Content-Length, -1 unknown */
    struct tg_str etag, last_modified;
    /* The request fields the response varies on, as the request that
     * filled it sent them: per name, "name\0" then "\1value\0" (values
     * of repeated fields joined with ", ") or "\0" when it sent none, so
     * an absent field and an empty one differ. Names lower case. */
    char *vary;
    size_t vary_len;

    double stored_at; /* context clock, when the head arrived */
    double expires;   /* context clock */
    double age0;      /* s: Age already used up when stored */

    struct tg_list waiters; /* of tg_cache_waiter.link, while FILLING */
    unsigned nwaiters;
};

/* A store holding at most `max_bytes` (entries, keys, heads and bodies),
 * each entry at most `max_entry` bytes of body. `stats` (a metrics shard's
 * counters) and `purges` (the shared log; may be NULL) outlive the store.
 * Returns NULL when memory ran out. */
struct tg_cache *tg_cache_new(size_t max_bytes, size_t max_entry, struct tg_cache_stats *stats,
                              struct tg_cache_purges *purges);
/* Drops every entry (readers keep theirs until they let go) and frees the
 * store. An entry still filling goes on outside it: its filler holds it
 * and wakes its waiters. */
void tg_cache_free(struct tg_cache *c);

/* Looks `key` up for a request whose fields are `req_fields`, at `now`:
 * a complete, fresh entry whose Vary fields match (*filling false), or an
 * entry being filled for the same key (*filling true: park on it, the
 * Vary match is checked when it completes), or NULL. The entry comes with
 * a reference for the caller. Expired entries found on the way are
 * dropped. Applies pending purges first. */
struct tg_cache_entry *tg_cache_lookup(struct tg_cache *c, const char *key, size_t len,
                                       const struct tg_http_headers *req_fields, double now,
                                       bool *filling);

/* A new entry for `key`, being filled, in the table (identical look-ups
 * find it and may wait), with a reference for the filler. NULL when memory
 * ran out. */
struct tg_cache_entry *tg_cache_fill_begin(struct tg_cache *c, const char *key, size_t len);

/* The backend's head arrived: keeps status and fields if `v` says the
 * response is storable and its announced length (`length`, -1 unknown)
 * fits, with the Vary fields of the request that asked (`req_fields`).
 * Returns false when the entry is abandoned (waiters are woken with
 * NULL). */
bool tg_cache_fill_head(struct tg_cache_entry *e, int status, const struct tg_http_headers *h,
                        int64_t length, const struct tg_http_headers *req_fields,
                        const struct tg_cache_verdict *v, double now);

/* Body bytes, in order, as the client is sent them. Returns false when the
 * entry is abandoned (too large, out of memory). */
bool tg_cache_fill_body(struct tg_cache_entry *e, const void *p, size_t n);

/* The body is complete: the entry is served from now on, and its waiters
 * are woken with it. An entry whose body does not match its announced
 * length is abandoned instead. */
void tg_cache_fill_done(struct tg_cache_entry *e);

/* The fill failed (the response was cut, or the filler went away): the
 * entry leaves the table and its waiters are woken with NULL. Harmless on
 * an entry already complete or abandoned. */
void tg_cache_fill_abandon(struct tg_cache_entry *e);

/* Parks `w` on a filling entry, unless it already has `max` waiters
 * (returns false: the caller goes to the backend). */
bool tg_cache_wait(struct tg_cache_entry *e, struct tg_cache_waiter *w, unsigned max);
/* Unparks `w` (the waiter gave up or went away); `wake` will not run. */
void tg_cache_unwait(struct tg_cache_waiter *w);

/* Whether a complete entry's Vary fields match `req_fields`. */
bool tg_cache_vary_match(const struct tg_cache_entry *e, const struct tg_http_headers *req_fields);

/* Gives a complete entry its body compressed with coding `coding` (the
 * entry takes `data`, malloc'd, `len` bytes), counted against the store,
 * which makes room for it. Returns false (and frees `data`) when the entry
 * already has one, or is no longer in a store, or the copy would not fit. */
bool tg_cache_set_coded(struct tg_cache_entry *e, unsigned coding, char *data, size_t len);

/* Seconds the entry has been fresh-counted for at `now` (the Age to send). */
double tg_cache_age(const struct tg_cache_entry *e, double now);

void tg_cache_ref(struct tg_cache_entry *e);
void tg_cache_unref(struct tg_cache_entry *e);

/* Drops every entry under `key` (all Vary variants) from this store now.
 * Returns how many. */
size_t tg_cache_purge(struct tg_cache *c, const char *key, size_t len);

/* ---- a request's part ------------------------------------------------------------ */

/* What a request on a cached route carries (in its arena; cache_serve.c
 * fills it in, forward.c fills the entry, the request core lets go of it
 * when the request ends, however it ends). */
struct tg_cache_req {
    void *owner; /* the request (opaque here) */
    struct tg_cache *store;
    char *key;
    size_t key_len;
    struct tg_http_headers fields; /* the request's fields, copied: the client's
                                      head is gone by the time they are read */
    struct tg_cache_entry *fill;   /* the entry the backend's answer fills (GET miss) */
    struct tg_cache_entry *hit;    /* the entry being sent */
    const char *body;              /* what of it: its body, or a compressed copy */
    size_t body_len;
    size_t sent;                   /* bytes of `body` the stream took */
    struct tg_cache_waiter waiter; /* parked on another request's fill */
    double wait_until;
    bool x_cache; /* the route wants X-Cache on answers */
};

/* Lets go of the entries `cr` holds: an unfinished fill is abandoned (its
 * waiters go to the backend), a wait is given up. */
void tg_cache_req_release(struct tg_cache_req *cr);

/* Bytes and entries the store holds. */
size_t tg_cache_bytes(const struct tg_cache *c);
size_t tg_cache_count(const struct tg_cache *c);

#endif
