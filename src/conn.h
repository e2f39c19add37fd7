/* Client connections, the transport part: the socket (plain or TLS), its
 * watcher and one timer, the input buffer, per-client and per-listener
 * counts, lingering close. What the bytes mean belongs to the protocol
 * running on the connection (accept.c's handshake, then a front end:
 * h1.c today, HTTP/2 next), reached through the ops it installs.
 *
 * The connection is reference-counted: closing marks it and stops its
 * watchers, and the memory goes when the last reference drops, so no
 * callback ever frees the object it runs on.
 *
 * Timeouts: progress only moves `deadline` (a store, no timer call); when
 * the timer fires early it re-arms itself for the deadline. */
#ifndef TG_CONN_H
#define TG_CONN_H

#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <ev.h>

#include "addr.h"
#include "io.h"
#include "list.h"

struct tg_context;
struct tg_conn;
struct tg_wcfg;
struct tg_buf;
struct tg_config_listen;

/* What the protocol on a connection answers to. */
struct tg_conn_proto {
    const char *name;
    /* The socket is ready (EV_READ / EV_WRITE). */
    void (*on_io)(struct tg_conn *c, int revents);
    /* The deadline passed: handle it (set a new one, or close). */
    void (*on_timeout)(struct tg_conn *c, ev_tstamp now);
    /* The connection closes: end what runs on it (no I/O any more). */
    void (*on_close)(struct tg_conn *c);
    /* The gateway drains: finish what runs, take nothing new. */
    void (*on_drain)(struct tg_conn *c);
};

enum tg_conn_state {
    TG_CONN_OPEN = 0,  /* the protocol runs */
    TG_CONN_LINGERING, /* answer sent, discarding input before close */
    TG_CONN_CLOSED,
};

/* Room for the protocol's per-connection state, inside the connection so
 * an idle keep-alive connection is one allocation (HTTP/1's fits; a
 * protocol with more keeps a pointer here). */
#define TG_CONN_PROTO_STATE 112

struct tg_conn {
    struct tg_context *ctx;
    struct tg_io io;
    ev_io watcher;
    ev_timer timer;
    ev_tstamp deadline; /* when the current phase times out */
    ev_tstamp timer_at; /* when the timer is set to fire */
    uint8_t state;      /* enum tg_conn_state */
    uint8_t watching;   /* EV_READ | EV_WRITE currently armed */
    bool tls;
    bool admin;                /* came in on the admin listener */
    bool draining;             /* serve what runs, then close */
    uint8_t ip_counted_prefix; /* counted in the per-IP table (0 = not) */
    struct tg_addr peer;       /* socket peer (or PROXY protocol source) */
    uint16_t listener_metric;  /* series of the listener it came in on */
    uint16_t peer_port;
    unsigned refs;
    uint32_t lingered; /* bytes dropped while lingering */

    struct tg_wcfg *wcfg; /* snapshot the connection currently uses */
    const struct tg_config_listen *lcfg;

    struct tg_buf *in; /* bytes from the client not yet consumed */
    const struct tg_conn_proto *proto;

    struct tg_list link; /* in the context's list */
    alignas(max_align_t) unsigned char proto_state[TG_CONN_PROTO_STATE];
};

/* A connection for an accepted socket on `ctx`, linked and counted, with
 * a reference for the caller's protocol (closing drops it). NULL when
 * memory ran out (the fd is then the caller's to close). */
struct tg_conn *tg_conn_new(struct tg_context *ctx, int fd, const struct tg_addr *peer,
                            uint16_t peer_port, const struct tg_config_listen *lcfg);

void tg_conn_ref(struct tg_conn *c);
void tg_conn_unref(struct tg_conn *c);

/* Closes now: watchers stop, the protocol's on_close runs, the socket
 * closes. Memory goes with the last reference. */
void tg_conn_close(struct tg_conn *c);

/* Closes after an answer: when the client may still be sending
 * (`input_pending`), our side shuts and input is read and dropped for a
 * while, so the client sees the answer rather than a reset. */
void tg_conn_close_gracefully(struct tg_conn *c, bool input_pending);

/* Arms the socket watcher for exactly `events` (EV_READ, EV_WRITE, both or
 * 0). Cheap when nothing changes. */
void tg_conn_watch(struct tg_conn *c, int events);

/* Makes the connection time out at `when` (the context's clock) unless
 * moved again. Extending is free; shortening re-arms the timer. */
void tg_conn_set_deadline(struct tg_conn *c, ev_tstamp when);

/* Reads what the socket has into c->in (allocated, compacted, or grown
 * to a large buffer when full). Returns bytes read, 0 at EOF, TG_IO_AGAIN
 * (also when the buffer is at its largest and full), or TG_IO_ERROR. */
ssize_t tg_conn_read(struct tg_conn *c);

/* Gives the input buffer back to the pool when it holds nothing. */
void tg_conn_release_input(struct tg_conn *c);

/* Moves the connection to the worker's current snapshot, between two
 * requests. Returns false when the new snapshot dropped its listener: the
 * connection serves nothing more. */
bool tg_conn_refresh_config(struct tg_conn *c);

/* Hands the connection to a protocol (its state in c->proto_state). */
static inline void tg_conn_set_proto(struct tg_conn *c, const struct tg_conn_proto *p)
{
    c->proto = p;
}

/* The gateway drains: idle connections close, others after what runs. */
void tg_conn_drain(struct tg_conn *c);

#endif
