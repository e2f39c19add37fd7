/* Worker threads: one libev loop each, with its own SO_REUSEPORT listening
 * sockets, connections, buffers and upstream pools. A connection never
 * leaves the worker that accepted it, so the request path takes no locks.
 *
 * Other threads talk to a worker only through its mailbox (a locked queue
 * plus ev_async): new config snapshots with the listening sockets to add,
 * drain, stop. */
#ifndef TG_WORKER_H
#define TG_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "context.h"

struct tg_config;
struct tg_config_listen;

/* One listening socket of this worker. */
struct tg_listener {
    struct tg_worker *w;
    int fd;
    ev_io io;
    char *key;                          /* canonical address, identity across reloads */
    const struct tg_config_listen *cfg; /* in the worker's current snapshot */
    struct tg_listener *next;
};

/* A message for a worker: the sockets given move into the worker. */
enum tg_worker_msg_type {
    TG_WORKER_MSG_CONFIG, /* swap to `config`; add `fds` for `keys` */
    TG_WORKER_MSG_DRAIN,  /* stop accepting, finish in-flight work */
    TG_WORKER_MSG_STOP,   /* close everything now and leave the loop */
    TG_WORKER_MSG_CERT,   /* a certificate arrived: waiting handshakes resume */
};

struct tg_worker_msg {
    enum tg_worker_msg_type type;
    struct tg_config *config; /* CONFIG: one reference, taken over */
    size_t nfds;
    int *fds;    /* CONFIG: new listening sockets (malloc'd) */
    char **keys; /* CONFIG: their canonical addresses */
    struct tg_worker_msg *next;
};

struct tg_worker {
    /* What the modules below the worker see of it (their only view). */
    struct tg_context ctx;
    pthread_t thread;
    struct tg_listener *listeners;

    pthread_mutex_t mbox_lock;
    struct tg_worker_msg *mbox_head, *mbox_tail;
    ev_async mbox;

    bool accept_paused; /* EMFILE or max_connections: accept off */
    ev_timer accept_retry;
    ev_timer housekeeping; /* four times a second: pools, free lists */
    unsigned housekeeping_ticks;
    void (*on_exit)(void);    /* called on the worker thread as it ends */
    void (*on_drained)(void); /* called once when a drain has finished here */
    bool drained;
};

/* Creates a worker with its loop; does not start the thread. Takes no
 * reference on `config` (the first CONFIG message delivers it). */
struct tg_worker *tg_worker_new(unsigned id, struct tg_runtime *rt);

/* Starts the worker thread. Returns 0 or -1. */
int tg_worker_start(struct tg_worker *w);

/* Queues a message (takes ownership of it and what it carries) and wakes
 * the worker. Any thread. */
void tg_worker_post(struct tg_worker *w, struct tg_worker_msg *msg);

/* Waits for the thread to end and frees the worker. */
void tg_worker_join_and_free(struct tg_worker *w);

/* Opens a listening socket for `l` with SO_REUSEPORT (so each worker has its
 * own and the kernel spreads connections). Returns the fd or -1 with a
 * message in err. Main thread. */
int tg_worker_open_listener(const struct tg_config_listen *l, char *err, size_t errlen);

/* Tells whether another socket listens on `l`'s address: binds (and closes
 * at once) a socket without SO_REUSEPORT, which any listener there makes
 * fail. Returns 0 when the address is free, or -1 with a message in err
 * ("address already in use (...)"; the caller names the address). Call it
 * before the first tg_worker_open_listener of an address this process does
 * not hold: our own listeners fail it too. Main thread. */
int tg_worker_probe_listener(const struct tg_config_listen *l, char *err, size_t errlen);

#endif
