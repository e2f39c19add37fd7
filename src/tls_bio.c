/* A socket BIO for TLS connections.
 *
 * OpenSSL's own socket BIO (SSL_set_fd) reads and writes with read(2) and
 * write(2); this one uses recv and send, which skip the file layer as io.c
 * does for plain sockets (a few percent of the kernel's time per call), and
 * answers the controls OpenSSL issues around every record (flush, kTLS
 * queries, pending bytes) with a short switch. The descriptor is stored in
 * the BIO's data pointer and never closed here. */
#include "tls_bio.h"

#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>

static BIO_METHOD *method;

static int fd_of(BIO *b)
{
    return (int)(intptr_t)BIO_get_data(b);
}

static int sock_read(BIO *b, char *out, int n)
{
    if (out == NULL || n <= 0)
        return 0;
    errno = 0; /* an EOF leaves errno 0: io.c tells it from an error so */
    ssize_t r = recv(fd_of(b), out, (size_t)n, 0);
    BIO_clear_retry_flags(b);
    if (r < 0 && BIO_sock_non_fatal_error(errno))
        BIO_set_retry_read(b);
    else if (r == 0)
        BIO_set_flags(b, BIO_FLAGS_IN_EOF);
    return (int)r;
}

static int sock_write(BIO *b, const char *in, int n)
{
    if (in == NULL || n <= 0)
        return 0;
    errno = 0;
    ssize_t r = send(fd_of(b), in, (size_t)n, MSG_NOSIGNAL);
    BIO_clear_retry_flags(b);
    if (r < 0 && BIO_sock_non_fatal_error(errno))
        BIO_set_retry_write(b);
    return (int)r;
}

static long sock_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    switch (cmd) {
    case BIO_CTRL_FLUSH: /* nothing is buffered here */
    case BIO_CTRL_DUP:
        return 1;
    case BIO_C_GET_FD:
        if (ptr != NULL)
            *(int *)ptr = fd_of(b);
        return fd_of(b);
    case BIO_CTRL_GET_CLOSE:
        return BIO_NOCLOSE;
    case BIO_CTRL_EOF:
        return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
    default:
        return 0; /* no kTLS, nothing pending, no other settings */
    }
}

int tg_tls_bio_init(void)
{
    if (method != NULL)
        return 0;
    int type = BIO_get_new_index();
    if (type == -1)
        return -1;
    method = BIO_meth_new(type | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR, "tollgate socket");
    if (method == NULL || BIO_meth_set_read(method, sock_read) != 1 ||
        BIO_meth_set_write(method, sock_write) != 1 || BIO_meth_set_ctrl(method, sock_ctrl) != 1) {
        tg_tls_bio_cleanup();
        return -1;
    }
    return 0;
}

void tg_tls_bio_cleanup(void)
{
    BIO_meth_free(method);
    method = NULL;
}

bool tg_tls_bio_attach(SSL *ssl, int fd)
{
    BIO *b = BIO_new(method);
    if (b == NULL)
        return false;
    BIO_set_data(b, (void *)(intptr_t)fd);
    BIO_set_init(b, 1);
    SSL_set_bio(ssl, b, b); /* one reference, for both directions */
    return true;
}
