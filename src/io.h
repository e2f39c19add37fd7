/* One byte stream, plain or TLS, behind the same three calls, so the
 * connection and proxy code never ask "is this TLS?" on the data path.
 *
 * Results: > 0 bytes moved; 0 end of stream (read only); TG_IO_AGAIN when
 * the call would block (io->want_write tells whether the stream waits to be
 * writable rather than readable: TLS may need either for both directions);
 * TG_IO_ERROR on a failed connection (errno or the TLS error queue has the
 * reason). */
#ifndef TG_IO_H
#define TG_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <ev.h>
#include <openssl/ssl.h>

enum {
    TG_IO_AGAIN = -1,
    TG_IO_ERROR = -2,
};

struct tg_io {
    int fd;
    SSL *ssl;        /* NULL for plain TCP */
    bool want_write; /* set on TG_IO_AGAIN: wait for EV_WRITE, not EV_READ */
    /* TLS: the last read left input inside OpenSSL (plaintext that did not
     * fit, or records read ahead), where epoll cannot see it. */
    bool tls_buffered;
};

ssize_t tg_io_read(struct tg_io *io, void *buf, size_t n);

/* Writes as much of the vector as the socket takes. For TLS the pieces are
 * coalesced into records of up to 16 KiB through a small stack buffer, so a
 * response head and its first body bytes travel in one record. */
ssize_t tg_io_writev(struct tg_io *io, const struct iovec *iov, int iovcnt);

/* Whether the TLS layer holds input the last read did not return (false
 * for plain): a reader must come back for it before waiting for the socket
 * again. Records are read ahead, so one read syscall takes a record's
 * header and body, and often the next record too. */
static inline bool tg_io_buffered(const struct tg_io *io)
{
    return io->tls_buffered;
}

/* Arms `watcher` on the stream's descriptor for `events` (EV_READ |
 * EV_WRITE, 0 for none); `*watching` remembers what is armed, so a call
 * that changes nothing costs no epoll_ctl. Input OpenSSL already holds (a
 * record bigger than the room it was read into, or records read ahead) is
 * invisible to epoll: when the stream waits to read and some is there, the
 * watcher's handler runs at once instead of waiting for a socket event that
 * may never come. Its read sets the flag again if still more is left, so a
 * handler that does not read cannot make this spin. */
void tg_io_watch(struct tg_io *io, struct ev_loop *loop, ev_io *watcher, uint8_t *watching,
                 int events);

/* Frees the TLS state (no close_notify wait) and closes the descriptor. */
void tg_io_close(struct tg_io *io);

#endif
