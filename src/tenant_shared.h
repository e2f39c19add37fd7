/* The tenant directory's last-known entries, shared by every worker.
 *
 * Each worker caches the tenants it has looked up (tenant.c); when Redis
 * fails, a worker that never looked a tenant up would have nothing to
 * serve. So every entry a worker fetches is also kept here, process-wide,
 * as opaque bytes with the time it was fetched, and a worker with nothing
 * of its own falls back to it during an outage.
 *
 * Bounded: at most `max` entries; the one written longest ago goes first.
 * Reads are lock-free (they run on workers' loops while Redis is down):
 * readers announce an epoch, and a replaced entry is freed only once no
 * reader can still be looking at it (epoch-based reclamation). Writes take
 * a mutex; they happen once per fetch, i.e. at most once per tenant per
 * worker per cache_ttl. */
#ifndef TG_TENANT_SHARED_H
#define TG_TENANT_SHARED_H

#include <stddef.h>
#include <sys/types.h>

struct tg_tenant_shared;

/* A table for at most `max` entries read by `readers` threads (numbered
 * 0 .. readers - 1, each reading from one thread at a time). NULL when
 * memory ran out. */
struct tg_tenant_shared *tg_tenant_shared_new(size_t max, unsigned readers);
void tg_tenant_shared_free(struct tg_tenant_shared *s);

/* Keeps `data` (copied) for `key`, fetched at `when` (the writer loop's
 * ev_now), replacing what was there. Any thread. */
void tg_tenant_shared_put(struct tg_tenant_shared *s, const char *key, size_t klen,
                          const void *data, size_t len, double when);

/* Drops the entry for `key` (it is known to be gone). Any thread. */
void tg_tenant_shared_forget(struct tg_tenant_shared *s, const char *key, size_t klen);

/* Copies the entry for `key` into buf (cap bytes) and its time into
 * *when. Returns its length, or -1 when there is none or it does not fit.
 * Lock-free; `reader` is the caller's number. */
ssize_t tg_tenant_shared_get(struct tg_tenant_shared *s, unsigned reader, const char *key,
                             size_t klen, void *buf, size_t cap, double *when);

/* Entries held now (for /metrics). */
size_t tg_tenant_shared_count(struct tg_tenant_shared *s);

#endif
