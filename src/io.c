/* Plain and TLS byte streams. TLS uses the socket descriptor directly
 * (tls_bio.c): OpenSSL reads and writes the non-blocking socket itself,
 * which saves a copy compared with memory BIOs. */
#include "io.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "tls.h"
#include "context.h"

/* Small pieces of a TLS write are joined up to one record's plaintext
 * (2^14 bytes), so that they go out as one record. */
#define TLS_RECORD_MAX 16384

static ssize_t tls_result(struct tg_io *io, int rc)
{
    switch (SSL_get_error(io->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        io->want_write = false;
        return TG_IO_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        io->want_write = true;
        return TG_IO_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        /* An EOF without close_notify: treat as end of stream, as every
         * browser and proxy does; errno 0 means exactly that. */
        ERR_clear_error();
        return errno == 0 ? 0 : TG_IO_ERROR;
    default:
        ERR_clear_error();
        return TG_IO_ERROR;
    }
}

ssize_t tg_io_read(struct tg_io *io, void *buf, size_t n)
{
    if (io->ssl == NULL) {
        for (;;) {
            ssize_t r = recv(io->fd, buf, n, 0);
            if (r >= 0)
                return r;
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                io->want_write = false;
                return TG_IO_AGAIN;
            }
            return TG_IO_ERROR;
        }
    }
    if (n > INT32_MAX)
        n = INT32_MAX;
    errno = 0;
    int r = SSL_read(io->ssl, buf, (int)n);
    if (r > 0) {
        io->tls_buffered = SSL_has_pending(io->ssl) == 1;
        return r;
    }
    /* Nothing more to return: what may be left is a partial record, whose
     * rest the socket will signal. */
    io->tls_buffered = false;
    return tls_result(io, r);
}

ssize_t tg_io_writev(struct tg_io *io, const struct iovec *iov, int iovcnt)
{
    if (io->ssl == NULL) {
        for (;;) {
            ssize_t r;
            if (iovcnt == 1) {
                r = send(io->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
            } else {
                struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
                r = sendmsg(io->fd, &msg, MSG_NOSIGNAL);
            }
            if (r >= 0)
                return r;
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                io->want_write = true;
                return TG_IO_AGAIN;
            }
            return TG_IO_ERROR;
        }
    }
    /* TLS: a single piece goes straight to SSL_write; several small ones
     * are joined so that they share a record. SSL_MODE_ENABLE_PARTIAL_WRITE
     * and ACCEPT_MOVING_WRITE_BUFFER are set on every context, so retrying
     * with different (re-coalesced) bytes after WANT_WRITE is allowed. */
    const void *data;
    size_t len;
    char joined[TLS_RECORD_MAX];
    if (iovcnt == 1 || iov[0].iov_len >= sizeof(joined)) {
        data = iov[0].iov_base;
        len = iov[0].iov_len;
    } else {
        len = 0;
        for (int i = 0; i < iovcnt && len < sizeof(joined); i++) {
            size_t take = iov[i].iov_len;
            if (take > sizeof(joined) - len)
                take = sizeof(joined) - len;
            memcpy(joined + len, iov[i].iov_base, take);
            len += take;
        }
        data = joined;
    }
    if (len > INT32_MAX)
        len = INT32_MAX;
    if (len == 0)
        return 0;
    errno = 0;
    int r = SSL_write(io->ssl, data, (int)len);
    if (r > 0)
        return r;
    ssize_t res = tls_result(io, r);
    return res == 0 ? TG_IO_ERROR : res;
}

void tg_io_watch(struct tg_io *io, struct ev_loop *loop, ev_io *watcher, uint8_t *watching,
                 int events)
{
    if (*watching != events) {
        tg_context_io_stop(loop, watcher);
        *watching = (uint8_t)events;
        if (events != 0) {
            ev_io_set(watcher, io->fd, events);
            ev_io_start(loop, watcher);
        }
    }
    if ((events & EV_READ) && io->tls_buffered) {
        io->tls_buffered = false;
        ev_feed_event(loop, watcher, EV_READ);
    }
}

void tg_io_close(struct tg_io *io)
{
    if (io->ssl != NULL) {
        tg_tls_shutdown(io->ssl);
        SSL_free(io->ssl);
        io->ssl = NULL;
    }
    if (io->fd >= 0) {
        close(io->fd);
        io->fd = -1;
    }
}
