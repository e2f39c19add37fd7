/* Names of upstream servers, resolved again while tollgate runs.
 *
 * A server list (an upstream's `servers`, a tenant's) that holds a name
 * becomes a group here. One thread of our own resolves every name some
 * group uses (getaddrinfo: /etc/hosts and DNS, A and AAAA), at the
 * shortest resolve_interval among the groups that use it, and keeps the
 * last good answer when a resolution fails. A name's addresses are each a
 * server: the group's current servers are its IP literals and every
 * address of each of its names, in the order written.
 *
 * Workers never resolve and never wait for the resolver. Each keeps a
 * copy of a group's current servers (a server set, worker-local and
 * reference-counted without atomics, so a request holds one for free) and
 * takes a new copy only when the process-wide epoch moved, which happens
 * only when some name's addresses changed. A request keeps the set it
 * started with; the next request gets the new one. */
#ifndef TG_RESOLVER_H
#define TG_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"

struct tg_resolver_group;

/* The servers a group has at one moment: one block, owned by the thread
 * that made it (a worker), reference-counted without atomics. */
struct tg_server_set {
    unsigned refs;
    size_t n;
    struct tg_config_server *servers; /* n of them, in this block */
};

/* ---- groups (any thread) ---------------------------------------------- */

/* Makes a group of `servers` as written (tg_config_server: literals and
 * names; at least one name). `label` names it in metrics and /status
 * ("app", "$tenant"). A name's `resolved` addresses, when given (a config
 * just loaded), become its current ones; a name not known yet is resolved
 * at once by the resolver thread (tg_resolver_group_ready says when).
 * Returns the group with one reference, or NULL when out of memory. */
struct tg_resolver_group *tg_resolver_group_new(const char *label,
                                                const struct tg_config_server *servers, size_t n,
                                                int64_t interval_ms);
void tg_resolver_group_ref(struct tg_resolver_group *g);
/* Drops a reference; the last one forgets the group (and the names no
 * other group uses). NULL is fine. */
void tg_resolver_group_unref(struct tg_resolver_group *g);

/* True once every name of the group has had an answer (good or failed). */
bool tg_resolver_group_ready(struct tg_resolver_group *g);

/* Calls fn(arg) once, from the resolver thread and under its lock, when
 * the group becomes ready: fn must only wake a loop (ev_async_send). Not
 * called when the group is ready already (check first). fn NULL cancels;
 * after that returns, fn is not called any more. */
void tg_resolver_group_notify(struct tg_resolver_group *g, void (*fn)(void *arg), void *arg);

/* A fresh server set of the group's current servers (refs = 1), or NULL
 * when out of memory. For the calling thread only. */
struct tg_server_set *tg_resolver_group_set(struct tg_resolver_group *g);

/* What /status shows of a group's names. */
struct tg_resolver_name_state {
    char name[272];   /* "host:port" */
    size_t addresses; /* current addresses */
    bool answered;    /* it had an answer at all */
    bool failing;     /* the last resolution failed (the addresses are the
                         last good ones) */
    char error[96];   /* why, when failing */
};
/* Fills at most cap states; returns the number of names of the group. */
size_t tg_resolver_group_names(struct tg_resolver_group *g, struct tg_resolver_name_state *out,
                               size_t cap);

/* Failed resolutions counted for the group's label, since start. */
uint64_t tg_resolver_group_failures(struct tg_resolver_group *g);

/* Every label a group ever had, with its failed resolutions (names of
 * that label's groups that did not resolve, once per attempt), for
 * /metrics. Labels stay once seen, so the counts never go down. */
void tg_resolver_failures_each(void (*fn)(void *arg, const char *label, uint64_t failures),
                               void *arg);

/* ---- server sets ----------------------------------------------------------- */

void tg_server_set_ref(struct tg_server_set *s);
/* The last reference frees it. NULL is fine. */
void tg_server_set_unref(struct tg_server_set *s);

/* ---- a worker's view of a group ------------------------------------------- */

/* The set a worker uses for a group, and which epoch it reflects. Zeroed
 * is empty. Only its worker touches it. */
struct tg_resolver_view {
    uint64_t serial; /* the group's (never reused) */
    uint64_t epoch;
    struct tg_server_set *set; /* the view's reference */
};

/* Called for each address a view's set loses when it is refreshed (the
 * worker closes idle connections to it). */
typedef void (*tg_resolver_removed_fn)(void *arg, const struct tg_config_server *gone);

/* The process-wide epoch: it moves whenever some name's addresses change.
 * One relaxed atomic load. */
uint64_t tg_resolver_epoch(void);

/* A small number naming the group while it lives (a worker's views are an
 * array by it); another group may get it once this one is gone. */
unsigned tg_resolver_group_id(const struct tg_resolver_group *g);

/* Brings the view of group `g` (alive: the caller holds it) up to date:
 * cheap when the epoch did not move. A view that held another group's set
 * (the id was reused) starts afresh. Returns the view's set (NULL when out
 * of memory and it had none). */
struct tg_server_set *tg_resolver_view_get(struct tg_resolver_view *v,
                                           const struct tg_resolver_group *g,
                                           tg_resolver_removed_fn removed, void *arg);

/* Once a second per worker, over its views (an array by group id, as
 * tg_resolver_group_id gives): views whose group is gone give their set
 * back; the others are refreshed when the epoch moved (so idle
 * connections to a vanished address close even without traffic). */
void tg_resolver_views_sweep(struct tg_resolver_view *views, size_t n,
                             tg_resolver_removed_fn removed, void *arg);

/* ---- the thread ---------------------------------------------------------------- */

/* Starts the resolver thread (main, once). Returns 0 or -1. */
int tg_resolver_start(void);
/* Stops and joins it, then frees what no group holds. Main, at exit. */
void tg_resolver_stop(void);

#endif
