/* The access log: one JSON line per request, written without ever blocking
 * a worker. A line carries the fields log.access_fields lists, in their
 * order; 2xx lines may be sampled (log.sample_2xx, a route's
 * access_log_sample).
 *
 * Each worker formats lines into its own chunk; full chunks (and, on a
 * timer, partial ones) go to one writer thread that does the blocking
 * write(2). When the disk is slow or full and too many chunks wait, new
 * lines are dropped and counted instead of stalling traffic. */
#ifndef TG_ACCESS_LOG_H
#define TG_ACCESS_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>
#include <openssl/ssl.h>

struct tg_addr;
struct tg_config_log;
struct tg_config_route;
struct tg_limiter_state;

/* A line is at most this long (with its "}\n"): a field that would not
 * fit is left out whole and the line says "truncated":true. */
#define TG_ACCESS_LOG_MAX_LINE 8192

/* User-Agent and Referer: at most this many bytes of them are kept, and
 * their escaped text in the line is cut there too. */
#define TG_ACCESS_LOG_HEADER_MAX 512

/* One request's line. Strings may be NULL (written as "", or left out
 * where the field is optional). */
struct tg_access_record {
    double now; /* when it ended (wall clock, seconds) */
    const struct tg_addr *client;
    const char *method, *host, *path;
    const struct tg_config_route *route; /* the route matched, or NULL */
    const char *proto;                   /* "HTTP/1.1", "HTTP/2.0", or NULL */
    int status;
    uint64_t bytes_in, bytes_out;
    double duration_ms;
    const char *upstream;       /* server address */
    double upstream_connect_ms; /* a new connection's connect (+TLS); < 0: pooled or none */
    double upstream_ms;         /* to the response head; < 0: none */
    const char *user_agent;     /* NULL: none */
    const char *referer;        /* NULL: none */
    const char *request_id;
    SSL *ssl; /* TLS facts, or NULL */
    const char *tenant;
    const char *country;                /* "" or NULL: not written */
    const struct tg_limiter_state *lim; /* NULL: no policy applied */
    const char *encoding;           /* the body's content coding when we compressed it, else NULL */
    uint64_t bytes_plain;           /* ... and its body bytes before compression */
    uint64_t bytes_coded;           /* ... and after */
    const char *trace_id, *span_id; /* NULL: no gateway span */
};

/* ---- the writer (main thread) ------------------------------------------- */

/* Starts the writer thread. Returns 0 or -1. */
int tg_access_log_start(void);

/* Writes what is queued and stops the writer. */
void tg_access_log_stop(void);

/* Points the log at `target`: a file path (opened for append), "stdout", or
 * NULL for off. Returns 0, or -1 with a message in err (the old target is
 * kept). */
int tg_access_log_set_target(const char *target, char *err, size_t errlen);

/* Reopens the file (SIGUSR1 after logrotate renamed it). */
int tg_access_log_reopen(void);

/* Lines dropped because the writer could not keep up, and lines written. */
uint64_t tg_access_log_dropped(void);

/* ---- per worker ----------------------------------------------------------- */

struct tg_access_log *tg_access_log_new(struct ev_loop *loop);
void tg_access_log_free(struct tg_access_log *log);

/* Applies the log section of a new snapshot (enabled, flush interval,
 * chunk size, the fields of a line and the 2xx sample; copied, so the
 * snapshot may go). Worker thread. */
void tg_access_log_configure(struct tg_access_log *log, const struct tg_config_log *cfg);

/* Whether a finished request gets a line: the log is on, its route (NULL:
 * none matched) does not say access_log: off, and a 2xx answer is in the
 * sample (the route's access_log_sample, else log.sample_2xx; drawn from
 * the worker's own generator). Other statuses always do. Ask before
 * building the record: a line sampled out costs this call only. Worker
 * thread. */
bool tg_access_log_wanted(struct tg_access_log *log, const struct tg_config_route *route,
                          int status);

/* Appends the line for a finished request: the configured fields, in
 * their order. Worker thread; never blocks. */
void tg_access_log_write(struct tg_access_log *log, const struct tg_access_record *r);

/* Hands the current chunk to the writer. */
void tg_access_log_flush(struct tg_access_log *log);

#endif
