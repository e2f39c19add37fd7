/* The response cache on the request path: look-up, hits (written through
 * the request's stream at the pace it takes them), conditional answers,
 * coalescing, and the start of the fetch that fills an entry. It does not
 * store or evict (cache.c) and does not read the backend (forward.c). */
#include "cache_serve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "codec.h"
#include "compress.h"
#include "config.h"
#include "context.h"
#include "forward.h"
#include "headers.h"
#include "http.h"
#include "metrics.h"
#include "request.h"

#define MS(x) ((double)(x) / 1000.0)
/* Requests parked on one fetch at most; the rest go to the backend. A
 * burst larger than this is rare, and each parked request holds memory. */
#define MAX_WAITERS 1024
/* Bodies up to this size keep a compressed copy per coding, made at the
 * first hit that asks for it (on the worker's loop: a few milliseconds at
 * most); larger ones are compressed as each hit is sent. */
#define CODED_COPY_MAX (1024 * 1024)

_Static_assert(TG_ENC_COUNT <= TG_CACHE_CODINGS, "a copy per coding");

static struct tg_cache_stats *stats_of(struct tg_request *req)
{
    return &req->ctx->metrics->cache;
}

/* ---- which requests ------------------------------------------------------------ */

/* Whether the query names one of `cc`'s bypass_query parameters (names
 * compared percent-decoded, as the backend reads them). */
static bool bypassed_by_query(const struct tg_config_cache *cc, const char *q, size_t n)
{
    char name[256];
    while (n > 0 && cc->nbypass_query > 0) {
        const char *amp = memchr(q, '&', n);
        size_t pn = amp != NULL ? (size_t)(amp - q) : n;
        const char *eq = memchr(q, '=', pn);
        size_t nn = eq != NULL ? (size_t)(eq - q) : pn;
        if (nn < sizeof(name)) {
            memcpy(name, q, nn);
            nn = tg_percent_decode(name, nn, true);
            for (size_t i = 0; i < cc->nbypass_query; i++)
                if (strlen(cc->bypass_query[i]) == nn && memcmp(cc->bypass_query[i], name, nn) == 0)
                    return true;
        }
        q += pn + (amp != NULL);
        n -= pn + (amp != NULL);
    }
    return false;
}

int tg_cache_serve_prepare(struct tg_request *req)
{
    const struct tg_config_cache *cc = &req->route->cache;
    if (!cc->enabled || (req->method_id != TG_HTTP_GET && req->method_id != TG_HTTP_HEAD) ||
        req->upgrade_websocket || req->body_length != 0)
        return 0;
    for (size_t i = 0; i < req->headers.n; i++) {
        struct tg_str name = req->headers.v[i].name;
        /* Credentials make an answer the client's own, unless the route
         * says its answers do not depend on them. A Range asks for part of
         * a representation: passed through, never stored or answered
         * whole. */
        if ((!cc->cache_authorized &&
             (tg_http_name_eq(name, "authorization") || tg_http_name_eq(name, "cookie"))) ||
            tg_http_name_eq(name, "range"))
            return 0;
    }
    if (req->query != NULL && bypassed_by_query(cc, req->query, req->query_len))
        return 0;
    struct tg_cache_req *cr = tg_arena_calloc(&req->arena, 1, sizeof(*cr));
    char *key = tg_arena_alloc(&req->arena, req->host_len + req->path_len + 1);
    struct tg_http_header *v = tg_arena_calloc(&req->arena, req->headers.n + 1, sizeof(*v));
    if (cr == NULL || key == NULL || v == NULL)
        return -1;
    cr->key_len = tg_cache_key(key, req->host_len + req->path_len + 1, req->host, req->host_len,
                               req->path, req->path_len);
    if (cr->key_len == 0 || cr->key_len > TG_CACHE_KEY_MAX)
        return 0;
    cr->key = key;
    for (size_t i = 0; i < req->headers.n; i++) {
        const struct tg_http_header *f = &req->headers.v[i];
        char *n = tg_arena_alloc(&req->arena, f->name.n + f->value.n + 1);
        if (n == NULL)
            return -1;
        memcpy(n, f->name.p, f->name.n);
        memcpy(n + f->name.n, f->value.p, f->value.n);
        v[i].name = tg_str_make(n, f->name.n);
        v[i].value = tg_str_make(n + f->name.n, f->value.n);
    }
    cr->fields = (struct tg_http_headers){v, req->headers.n, req->headers.n + 1};
    /* The backend is asked for the whole answer: a 304 to the client's
     * own validators would fill nothing, and every revalidating browser
     * would keep the entry from being stored. The copy keeps them; a hit
     * answers them (not_modified). */
    size_t kept = 0;
    for (size_t i = 0; i < req->headers.n; i++)
        if (!tg_http_name_eq(req->headers.v[i].name, "if-none-match") &&
            !tg_http_name_eq(req->headers.v[i].name, "if-modified-since"))
            req->headers.v[kept++] = req->headers.v[i];
    req->headers.n = kept;
    cr->x_cache = cc->x_cache_header;
    cr->owner = req;
    req->cache = cr;
    return 0;
}

/* This worker's store for the request's route, made on first use. The
 * route's max_size is for the whole process: each worker keeps its share. */
static struct tg_cache *store_of(struct tg_request *req)
{
    struct tg_wcfg *wc = req->wcfg;
    const struct tg_config *cfg = wc->config;
    unsigned slot = req->route->counter;
    if (wc->caches == NULL) {
        wc->caches = calloc(cfg->nroute_slots, sizeof(*wc->caches));
        if (wc->caches == NULL)
            return NULL;
        wc->ncaches = cfg->nroute_slots;
    }
    if (slot >= wc->ncaches)
        return NULL;
    if (wc->caches[slot] == NULL) {
        const struct tg_config_cache *cc = &req->route->cache;
        unsigned nw =
            req->ctx->rt != NULL && req->ctx->rt->nworkers > 0 ? req->ctx->rt->nworkers : 1;
        size_t share = (size_t)(cc->max_size / nw);
        size_t max_entry = cc->max_entry_size < share ? (size_t)cc->max_entry_size : share;
        wc->caches[slot] = tg_cache_new(share, max_entry, stats_of(req),
                                        req->ctx->rt != NULL ? req->ctx->rt->cache_purges : NULL);
    }
    return wc->caches[slot];
}

/* ---- answering from an entry ------------------------------------------------- */

static void hit_writable(struct tg_request *req);
static ev_tstamp hit_timeout(struct tg_request *req, ev_tstamp now);

static const struct tg_request_hooks hit_hooks = {
    .on_writable = hit_writable,
    .on_timeout = hit_timeout,
};

/* Whether an entity tag in an If-None-Match list matches (weak
 * comparison, RFC 9110 13.1.2: W/ is ignored on both sides). */
static bool etag_listed(struct tg_str list, struct tg_str etag)
{
    if (etag.n >= 2 && etag.p[0] == 'W' && etag.p[1] == '/')
        etag = tg_str_make(etag.p + 2, etag.n - 2);
    const char *p = list.p, *end = list.p + list.n;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *s = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        struct tg_str t = tg_str_make(s, (size_t)(e - s));
        if (t.n == 1 && t.p[0] == '*')
            return true;
        if (t.n >= 2 && t.p[0] == 'W' && t.p[1] == '/')
            t = tg_str_make(t.p + 2, t.n - 2);
        if (t.n > 0 && t.n == etag.n && memcmp(t.p, etag.p, t.n) == 0)
            return true;
    }
    return false;
}

/* RFC 9110 13.2.2: If-None-Match decides when present; otherwise
 * If-Modified-Since against the entry's Last-Modified. */
static bool not_modified(const struct tg_cache_req *cr, const struct tg_cache_entry *e)
{
    if (e->status != 200)
        return false;
    const struct tg_http_header *inm = tg_http_find(&cr->fields, "if-none-match");
    if (inm != NULL)
        return e->etag.n > 0 && etag_listed(inm->value, e->etag);
    const struct tg_http_header *ims = tg_http_find(&cr->fields, "if-modified-since");
    int64_t since, modified;
    return ims != NULL && e->last_modified.n > 0 &&
           tg_cache_parse_date(ims->value.p, ims->value.n, &since) &&
           tg_cache_parse_date(e->last_modified.p, e->last_modified.n, &modified) &&
           modified <= since;
}

/* Compresses the entry's body for `coding` once; the copy serves every
 * later hit that takes that coding. Left undone when memory or room runs
 * out (that hit compresses as it sends). */
static void make_coded(struct tg_request *req, struct tg_cache_entry *e, int coding)
{
    const struct tg_config_compress *cc = &req->route->compress;
    char *out;
    size_t n;
    if (tg_compress_whole((enum tg_encoding)coding, cc->levels[coding], e->body, e->body_len, &out,
                          &n) == 0)
        tg_cache_set_coded(e, (unsigned)coding, out, n);
}

/* Answers the request from `e` (takes the caller's reference). */
static void serve(struct tg_request *req, struct tg_cache_entry *e)
{
    struct tg_cache_req *cr = req->cache;
    const struct tg_config *cfg = req->wcfg->config;
    cr->hit = e;
    cr->sent = 0;
    TG_METRIC_INC(stats_of(req)->hits);
    req->phase = TG_REQ_LOCAL;
    tg_request_set_hooks(req, &hit_hooks);
    bool nm = not_modified(cr, e);
    req->status = nm ? 304 : e->status;
    /* Age: how long the answer has been held (RFC 9111 5.1), including
     * what it had when it came. */
    char *extra = tg_arena_alloc(&req->arena, 64);
    if (extra == NULL) {
        tg_request_end(req, TG_STREAM_RESET);
        return;
    }
    snprintf(extra, 64, "Age: %llu\r\n%s",
             (unsigned long long)tg_cache_age(e, tg_context_now(req->ctx)),
             cr->x_cache ? "X-Cache: HIT\r\n" : "");
    const struct tg_config_headers *rules =
        req->route->headers != NULL ? req->route->headers : &cfg->headers;
    struct tg_headers_response in = {
        .rules = rules,
        .hsts = tg_request_hsts(req),
        .request_id = tg_str_make(req->request_id, req->request_id_len),
        .lim = req->lim,
        .extra = extra,
    };
    struct tg_http_headers fields;
    bool no_body = nm || req->method_id == TG_HTTP_HEAD;
    if (tg_headers_response_fields(&req->arena, &in, &e->head, &fields) < 0) {
        tg_request_end(req, TG_STREAM_RESET);
        return;
    }
    cr->body = e->body;
    cr->body_len = e->body_len;
    /* Compressed as the route says, from the entry's copy for the coding
     * the client takes (made now if this is the first such hit). */
    int coding =
        no_body ? -1 : tg_request_coding_for(req, req->status, &fields, (int64_t)e->body_len);
    if (coding > TG_ENC_IDENTITY && e->coded[coding] == NULL && e->body_len <= CODED_COPY_MAX)
        make_coded(req, e, coding);
    int rc;
    if (coding == TG_ENC_IDENTITY || (coding > TG_ENC_IDENTITY && e->coded[coding] != NULL)) {
        if (coding != TG_ENC_IDENTITY) {
            cr->body = e->coded[coding];
            cr->body_len = e->coded_len[coding];
        }
        rc = tg_request_send_coded_head(req, req->status, &fields, coding, (int64_t)cr->body_len,
                                        e->body_len, 0);
    } else {
        /* Not compressed, or too large for a copy: as a forwarded answer
         * would be (compressed as it goes when it qualifies). */
        req->compress_local = true;
        rc = tg_request_send_head(req, req->status, &fields, nm ? -1 : (int64_t)e->body_len,
                                  no_body ? TG_STREAM_NO_BODY : 0);
    }
    if (rc < 0) {
        tg_request_end(req, TG_STREAM_RESET);
        return;
    }
    if (no_body)
        cr->sent = cr->body_len;
    hit_writable(req);
}

/* Writes what is left of the entry's body; ends the request once the
 * stream took it all. The stream may take part: it calls back. */
static void hit_writable(struct tg_request *req)
{
    struct tg_cache_req *cr = req->cache;
    size_t left = cr->body_len - cr->sent;
    struct iovec iov = {(void *)(cr->body + cr->sent), left};
    ssize_t n = tg_request_send_body(req, &iov, left > 0 ? 1 : 0, true);
    if (n < 0) {
        tg_request_end(req, TG_STREAM_RESET);
        return;
    }
    cr->sent += (size_t)n;
    /* All taken, but an encoder (a large hit compressed as it goes) may
     * still hold the end of it. */
    if (cr->sent < cr->body_len || tg_request_body_pending(req)) {
        const struct tg_config *cfg = req->wcfg->config;
        tg_request_arm(req, req->client_write_at + MS(cfg->client.send_timeout_ms));
        return;
    }
    req->answer_done = true;
    tg_request_end(req, req->close_client ? TG_STREAM_CLOSE : TG_STREAM_DONE);
}

/* A client that stops taking a hit is dropped after send_timeout, as for
 * any answer. */
static ev_tstamp hit_timeout(struct tg_request *req, ev_tstamp now)
{
    const struct tg_config *cfg = req->wcfg->config;
    ev_tstamp when = req->client_write_at + MS(cfg->client.send_timeout_ms);
    if (now < when)
        return when;
    tg_request_end(req, TG_STREAM_RESET);
    return 0;
}

/* ---- misses ------------------------------------------------------------------------ */

/* To the backend; a GET fills an entry on the way (forward.c tees it). */
static void fetch(struct tg_request *req, bool fill)
{
    struct tg_cache_req *cr = req->cache;
    TG_METRIC_INC(stats_of(req)->misses);
    if (fill && req->method_id == TG_HTTP_GET && cr->store != NULL)
        cr->fill = tg_cache_fill_begin(cr->store, cr->key, cr->key_len);
    tg_forward_start(req);
}

/* The fetch this request waited for ended: answer from its entry, or (it
 * was not stored, or varies differently) go to the backend. */
static void on_wake(struct tg_cache_waiter *w, struct tg_cache_entry *e)
{
    struct tg_cache_req *cr =
        (struct tg_cache_req *)(void *)((char *)w - offsetof(struct tg_cache_req, waiter));
    struct tg_request *req = cr->owner;
    tg_request_ref(req);
    tg_request_set_hooks(req, NULL);
    if (e != NULL && tg_cache_vary_match(e, &cr->fields)) {
        serve(req, e);
    } else {
        tg_cache_unref(e);
        fetch(req, false);
    }
    tg_request_unref(req);
}

/* Parked too long (the first fetch is slow): go to the backend. */
static ev_tstamp wait_timeout(struct tg_request *req, ev_tstamp now)
{
    struct tg_cache_req *cr = req->cache;
    if (now < cr->wait_until)
        return cr->wait_until;
    tg_cache_unwait(&cr->waiter);
    tg_request_set_hooks(req, NULL);
    fetch(req, false);
    /* The exchange armed its own deadline; a moment from now its
     * on_timeout says which (returning 0 here would replace it). */
    return tg_request_over(req) ? 0 : now + 0.001;
}

static const struct tg_request_hooks wait_hooks = {
    .on_timeout = wait_timeout,
};

void tg_cache_serve_start(struct tg_request *req)
{
    struct tg_cache_req *cr = req->cache;
    tg_request_ref(req);
    cr->store = store_of(req);
    if (cr->store == NULL) {
        fetch(req, false);
        goto out;
    }
    bool filling;
    ev_tstamp now = tg_context_now(req->ctx);
    struct tg_cache_entry *e =
        tg_cache_lookup(cr->store, cr->key, cr->key_len, &cr->fields, now, &filling);
    if (e != NULL && !filling) {
        serve(req, e);
        goto out;
    }
    if (e != NULL) {
        /* The same URL is being fetched: wait for it rather than ask the
         * backend again (the filler holds the entry until it wakes us). */
        cr->waiter.wake = on_wake;
        bool parked = tg_cache_wait(e, &cr->waiter, MAX_WAITERS);
        tg_cache_unref(e);
        if (parked) {
            TG_METRIC_INC(stats_of(req)->coalesced);
            cr->wait_until = now + MS(req->route->cache.lock_timeout_ms);
            tg_request_set_hooks(req, &wait_hooks);
            tg_request_arm(req, cr->wait_until);
            goto out;
        }
        fetch(req, false);
        goto out;
    }
    fetch(req, true);
out:
    tg_request_unref(req);
}
