/* The response cache on the request path: which requests it may answer,
 * answering them from the worker's store (hits, 304s to conditional
 * requests), parking identical misses on the first one's fetch
 * (coalescing), and starting the fetch that fills an entry (forward.c tees
 * the body into it). The store itself is cache.c. Worker thread. */
#ifndef TG_CACHE_SERVE_H
#define TG_CACHE_SERVE_H

struct tg_request;

/* Called by the pipeline while the request's header views are still valid,
 * after the route is known and before the head is dropped: a GET or HEAD
 * the route's cache may answer gets req->cache (its key and a copy of its
 * fields) and loses its If-None-Match and If-Modified-Since (so the
 * backend's answer can fill an entry: call it before tg_forward_prepare);
 * any other request is left alone. Returns 0, or -1 when memory ran out. */
int tg_cache_serve_prepare(struct tg_request *req);

/* In place of tg_forward_start for a request with req->cache: answers it
 * from the store, parks it on an identical request's fetch, or forwards it
 * (filling an entry on a GET miss). The request ends through
 * tg_request_end, possibly before this returns. */
void tg_cache_serve_start(struct tg_request *req);

#endif
