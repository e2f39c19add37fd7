/* Client connections: accept, (TLS handshake), read and parse request heads,
 * keep-alive and pipelining, timeouts, local error answers, lingering close.
 *
 * A connection runs one request at a time; while it does, proxy.c drives the
 * socket (body streaming, response writing) through the hooks below. The
 * connection is reference-counted: closing marks it and stops its watchers,
 * and the memory goes when the last reference drops, so no callback ever
 * frees the object it runs on. */
#ifndef TG_CONN_H
#define TG_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <ev.h>

#include "addr.h"
#include "io.h"

struct tg_worker;
struct tg_wcfg;
struct tg_buf;
struct tg_request;
struct tg_config_listen;

enum tg_conn_state {
    TG_CONN_HANDSHAKE = 0, /* TLS handshake or PROXY protocol header */
    TG_CONN_IDLE,          /* keep-alive: waiting for the next request */
    TG_CONN_READING_HEAD,
    TG_CONN_ACTIVE,        /* a request runs: proxy.c owns the socket */
    TG_CONN_LINGERING,     /* answer sent, discarding input before close */
    TG_CONN_CLOSED,
};

struct tg_conn {
    struct tg_worker *w;
    struct tg_io io;
    ev_io watcher;
    ev_timer timer;
    ev_tstamp deadline;       /* when the current phase times out */
    ev_tstamp timer_at;       /* when the timer is set to fire */
    ev_tstamp head_started;   /* first byte of the current head */
    uint8_t state;            /* enum tg_conn_state */
    uint8_t watching;         /* EV_READ | EV_WRITE currently armed */
    bool in_process;          /* inside conn_process_input: no recursion */
    bool close_after;         /* close once the current request ends */
    bool tls;
    bool admin;               /* came in on the admin listener */
    bool awaiting_proxy;      /* a PROXY protocol header comes first */
    uint8_t ip_counted_prefix; /* counted in the per-IP table (0 = not) */
    /* Byte-aligned, so it packs after the flags: one idle connection is a
     * 256-byte malloc chunk, not 272. */
    struct tg_addr peer;      /* socket peer (or PROXY protocol source) */
    uint16_t listener_metric;  /* series of the listener it came in on */
    uint16_t peer_port;
    uint16_t local_port;
    unsigned refs;
    unsigned requests;        /* requests started on this connection */

    struct tg_wcfg *wcfg;     /* snapshot the connection currently uses */
    const struct tg_config_listen *lcfg;

    struct tg_buf *in;        /* bytes from the client not yet consumed */
    size_t scanned;           /* parser resume point within `in` */
    struct tg_request *req;   /* the running request, or NULL */

    struct tg_conn *prev, *next; /* worker's list */
};

/* Takes over an accepted socket. Returns 0, or -1 (the fd is closed). */
int tg_conn_accept(struct tg_worker *w, int fd, const struct sockaddr *peer,
                   const struct tg_config_listen *lcfg);

void tg_conn_ref(struct tg_conn *c);
void tg_conn_unref(struct tg_conn *c);

/* Closes now: watchers stop, the socket closes, a running request is
 * aborted. Memory goes with the last reference. */
void tg_conn_close(struct tg_conn *c);

/* Arms the socket watcher for exactly `events` (EV_READ, EV_WRITE, both or
 * 0). Cheap when nothing changes. */
void tg_conn_watch(struct tg_conn *c, int events);

/* Makes the connection time out at `when` (absolute ev_now time) unless
 * moved again. Extending is free; shortening re-arms the timer. */
void tg_conn_set_deadline(struct tg_conn *c, ev_tstamp when);

/* Called by proxy.c when the request is over and its answer fully written.
 * keep_alive says whether the connection may serve another request;
 * unread says the client may still be sending this request (its body was
 * not all read), so closing lingers. The request object has been released
 * by then. */
void tg_conn_request_done(struct tg_conn *c, bool keep_alive, bool unread);

/* Sends a short local answer (status line, small body) and closes the
 * connection afterwards (lingering, so the client reads it). Used for
 * errors found before a request exists (400, 408, 414, 431). */
void tg_conn_fail(struct tg_conn *c, int status, const char *reason_for_log);

/* Called at drain: idle connections close now, others after their request. */
void tg_conn_drain(struct tg_conn *c);

#endif
