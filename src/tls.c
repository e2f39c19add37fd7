/* What the server and client sides of TLS share: process-wide set-up
 * (OpenSSL, the socket BIO, the ticket key ring, each side's ex-data
 * slots), driving a handshake and reporting why one failed, and shutdown.
 *
 * It does no I/O of its own (io.c reads and writes through the SSL) and
 * owns no sockets. Not here: contexts and certificates (tls_server.c,
 * tls_client.c, certstore.c), OCSP stapling, ACME, 0-RTT (deliberately
 * off: replayable). */
#include "tls.h"

#include <errno.h>
#include <stdbool.h>

#include <openssl/err.h>

#include "tls_bio.h"

static bool ready;

/* ---- handshake results --------------------------------------------------- */

static const char *reason_of_error(unsigned long e, SSL *ssl)
{
    if (ERR_GET_LIB(e) != ERR_LIB_SSL)
        return NULL;
    switch (ERR_GET_REASON(e)) {
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_VERSION_TOO_LOW:
    case SSL_R_VERSION_TOO_HIGH:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_NO_PROTOCOLS_AVAILABLE:
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_INAPPROPRIATE_FALLBACK:
    case SSL_R_NO_APPLICATION_PROTOCOL:
    case SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL:
        return "protocol";
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_CIPHERS_AVAILABLE:
    case SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS:
    case SSL_R_NO_SUITABLE_KEY_SHARE:
    case SSL_R_NO_SHARED_GROUPS:
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
    case SSL_R_TLSV1_ALERT_INSUFFICIENT_SECURITY:
        return "no_shared_cipher";
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
        return "unknown_ca";
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
        return "cert_required";
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
        return "bad_cert";
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
        switch (SSL_get_verify_result(ssl)) {
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        case X509_V_ERR_CERT_UNTRUSTED:
            return "unknown_ca";
        default:
            return "bad_cert";
        }
    case SSL_R_UNEXPECTED_EOF_WHILE_READING:
        return "eof";
    default:
        return NULL;
    }
}

int tg_tls_handshake(SSL *ssl, bool *want_write, const char **reason)
{
    /* SSL_get_error reads the thread's error queue: it must hold nothing
     * older than this call. */
    ERR_clear_error();
    errno = 0;
    int rc = SSL_do_handshake(ssl);
    if (rc == 1)
        return 1;
    int e = SSL_get_error(ssl, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        *want_write = false;
        return 0;
    case SSL_ERROR_WANT_WRITE:
        *want_write = true;
        return 0;
    case SSL_ERROR_WANT_CLIENT_HELLO_CB:
        return 2; /* waiting for a certificate (tg_tls_server_on_unknown_name) */
    case SSL_ERROR_ZERO_RETURN:
        *reason = "eof";
        break;
    case SSL_ERROR_SYSCALL:
        *reason = errno == 0 ? "eof" : "syscall";
        break;
    case SSL_ERROR_SSL: {
        const char *r = NULL;
        unsigned long err;
        while (r == NULL && (err = ERR_get_error()) != 0)
            r = reason_of_error(err, ssl);
        *reason = r != NULL ? r : "other";
        break;
    }
    default:
        *reason = "other";
        break;
    }
    ERR_clear_error();
    return -1;
}

void tg_tls_shutdown(SSL *ssl)
{
    /* A fatal error leaves the state machine in init: nothing to keep. */
    if (ssl == NULL || !SSL_is_init_finished(ssl))
        return;
    ERR_clear_error();
    /* Sets SSL_SENT_SHUTDOWN before it writes, so the session survives
     * SSL_free even when the write fails (peer gone, socket full). */
    (void)SSL_shutdown(ssl);
    ERR_clear_error();
}

/* ---- process-wide ---------------------------------------------------------- */

int tg_tls_global_init(void)
{
    if (ready)
        return 0;
    if (OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL) !=
        1)
        return -1;
    if (tg_tls_bio_init() < 0)
        goto fail;
    if (tg_tls_tickets_init() < 0)
        goto fail_bio;
    if (tg_tls_server_global_init() < 0)
        goto fail_tickets;
    if (tg_tls_client_global_init() < 0)
        goto fail_server;
    ready = true;
    return 0;

fail_server:
    tg_tls_server_global_cleanup();
fail_tickets:
    tg_tls_tickets_cleanup();
fail_bio:
    tg_tls_bio_cleanup();
fail:
    ERR_clear_error();
    return -1;
}

void tg_tls_global_cleanup(void)
{
    if (!ready)
        return;
    ready = false;
    tg_tls_client_global_cleanup();
    tg_tls_server_global_cleanup();
    tg_tls_tickets_cleanup();
    tg_tls_bio_cleanup();
}
