/* TLS with OpenSSL 3: server contexts per config snapshot (SNI over any
 * number of certificates, RSA and ECDSA side by side, client certificates
 * per listener), session tickets from an in-memory key ring shared by every
 * context and snapshot, and client contexts for upstream TLS.
 *
 * It does no I/O of its own (io.c reads and writes through the SSL) and
 * owns no sockets. Not here: OCSP stapling, ACME, HTTP/2 (ALPN is ready
 * for it), 0-RTT (deliberately off: replayable). */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "log.h"
#include "tls_bio.h"

/* TLS 1.2: forward secrecy and AEAD only. AES-128 first (cheapest with
 * AES-NI); SSL_OP_PRIORITIZE_CHACHA moves ChaCha20 up for clients that list
 * it first (phones without AES instructions). */
#define TLS_DEFAULT_CIPHERS                                                  \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"             \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"             \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS_DEFAULT_SUITES                                                   \
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"                         \
    "TLS_CHACHA20_POLY1305_SHA256"
#define TLS_GROUPS "X25519:P-256:P-384"
#define TLS_MODES                                                            \
    (SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |              \
     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)

#define MAX_PEM_FILE (4 << 20) /* bytes: a CA bundle can be large */
#define MAX_NAME 253           /* DNS name without the trailing dot */
#define CLIENT_SESSIONS_MAX 256
#define EXPIRY_WARN_S (14 * 86400)

/* ALPN, in server preference order and wire format. Adding "\x02h2" in
 * front is all HTTP/2 needs here. */
static const unsigned char alpn_http1[] = "\x08http/1.1";

/* Session id contexts: a session (ticket or cache entry) only resumes where
 * its context matches. Listeners that ask for client certificates get a
 * context derived from their CA bundle and mode, so a session made without
 * a client certificate can never resume on a listener that requires one. */
static const unsigned char sid_ctx_plain[] = "tollgate";

/* Certificate slots: one of each per SSL_CTX; OpenSSL picks the one the
 * client's signature algorithms allow. */
enum { SLOT_RSA, SLOT_EC, NSLOTS };
static const char *const slot_names[NSLOTS] = {"RSA", "ECDSA"};

/* ---- ticket key ring ------------------------------------------------------
 *
 * Process-wide, so every worker, every context and every snapshot encrypt
 * and decrypt with the same keys: a reload keeps tickets valid. keys[0] is
 * the newest and the only one that encrypts; rotation happens lazily, at
 * the first ticket operation once keys[0] is `period` old, under the write
 * lock (a few microseconds, a few times a day). Because every encryption
 * checks first, no key encrypts once it is a period old; it then decrypts
 * until it is three periods old (so "the previous one or two"), and tickets
 * it decrypts are renewed with the newest key. The keys live in one
 * mlock'ed page excluded from core dumps: never on disk, not even in swap. */

struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t created_ms; /* monotonic */
    bool set;
};

#define RING_KEYS 3

static struct {
    pthread_rwlock_t lock;
    struct ticket_key *keys; /* [RING_KEYS], page-aligned */
    size_t map_len;
    EVP_CIPHER *cipher;
    int ssl_server_idx; /* SSL ex data: the tg_tls_server kept alive */
    int ssl_client_idx; /* SSL ex data: struct client_ssl */
    int ssl_covers_idx; /* SSL ex data: struct covers_memo */
    bool ready;
} ring = {.ssl_server_idx = -1, .ssl_client_idx = -1, .ssl_covers_idx = -1};

static int64_t clock_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The ring's clock; tests replace it to age keys without waiting. */
static int64_t (*tls_now_ms)(void) = clock_monotonic_ms;

static int ticket_key_new(struct ticket_key *k, int64_t now)
{
    if (RAND_bytes(k->name, sizeof(k->name)) != 1 ||
        RAND_bytes(k->aes, sizeof(k->aes)) != 1 ||
        RAND_bytes(k->hmac, sizeof(k->hmac)) != 1) {
        ERR_clear_error();
        return -1;
    }
    k->created_ms = now;
    k->set = true;
    return 0;
}

static void ring_rotate(int64_t now, int64_t period)
{
    struct ticket_key k;
    if (ticket_key_new(&k, now) < 0)
        return; /* keep the old key rather than issue no tickets */
    pthread_rwlock_wrlock(&ring.lock);
    if (!ring.keys[0].set || now - ring.keys[0].created_ms >= period) {
        memmove(&ring.keys[1], &ring.keys[0],
                (RING_KEYS - 1) * sizeof(ring.keys[0]));
        ring.keys[0] = k;
    }
    pthread_rwlock_unlock(&ring.lock);
    OPENSSL_cleanse(&k, sizeof(k));
}

/* Copies the key to use into *out: the newest (name NULL, to encrypt) or
 * the one called `name` (to decrypt). Returns 1 for the newest key, 2 for
 * an older one that still decrypts (renew the ticket), 0 for none. */
static int ring_get(const unsigned char *name, int64_t period,
                    struct ticket_key *out)
{
    int64_t now = tls_now_ms();
    for (int pass = 0;; pass++) {
        pthread_rwlock_rdlock(&ring.lock);
        if (pass == 0 && (!ring.keys[0].set ||
                          now - ring.keys[0].created_ms >= period)) {
            pthread_rwlock_unlock(&ring.lock);
            ring_rotate(now, period);
            continue;
        }
        int rc = 0;
        for (int i = 0; i < RING_KEYS; i++) {
            const struct ticket_key *k = &ring.keys[i];
            if (!k->set || now - k->created_ms >= 3 * period)
                break; /* older slots are older still */
            if (name == NULL || memcmp(k->name, name, sizeof(k->name)) == 0) {
                *out = *k;
                rc = i == 0 ? 1 : 2;
                break;
            }
        }
        pthread_rwlock_unlock(&ring.lock);
        return rc;
    }
}

/* ---- shared helpers ------------------------------------------------------ */

/* The first OpenSSL error's reason, for messages; clears the queue. */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r != NULL ? r : "unknown error";
}

static const char *key_type_name(const EVP_PKEY *k)
{
    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
        return "RSA";
    case EVP_PKEY_RSA_PSS:
        return "RSA-PSS";
    case EVP_PKEY_EC:
        return "ECDSA";
    case EVP_PKEY_ED25519:
        return "Ed25519";
    case EVP_PKEY_ED448:
        return "Ed448";
    case EVP_PKEY_DSA:
        return "DSA";
    default:
        return "unknown";
    }
}

static int key_slot(const EVP_PKEY *k)
{
    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
        return SLOT_RSA;
    case EVP_PKEY_EC:
        return SLOT_EC;
    default:
        return -1;
    }
}

struct file_data {
    char *p;
    size_t n;
};

/* Reads a whole (small) file; key material is wiped when freed. */
static int file_read(const char *path, const char *what, struct file_data *out,
                     char *err, size_t errlen)
{
    out->p = NULL;
    out->n = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot read %s '%s': %s", what, path,
                 strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode) ||
        st.st_size > MAX_PEM_FILE) {
        snprintf(err, errlen, "%s '%s' is not a regular file of at most %d MiB",
                 what, path, MAX_PEM_FILE >> 20);
        fclose(f);
        return -1;
    }
    size_t n = (size_t)st.st_size;
    out->p = malloc(n + 1);
    if (out->p == NULL || fread(out->p, 1, n, f) != n) {
        snprintf(err, errlen, "cannot read %s '%s': %s", what, path,
                 out->p == NULL ? "out of memory" : strerror(errno));
        free(out->p);
        out->p = NULL;
        fclose(f);
        return -1;
    }
    fclose(f);
    out->p[n] = '\0';
    out->n = n;
    return 0;
}

static void file_free(struct file_data *d)
{
    if (d->p != NULL) {
        OPENSSL_cleanse(d->p, d->n);
        free(d->p);
    }
    d->p = NULL;
    d->n = 0;
}

static bool contains(const struct file_data *d, const char *s)
{
    return memmem(d->p, d->n, s, strlen(s)) != NULL;
}

/* Every PEM certificate in `d`, in order. Returns the count, or -1 with err
 * set (a block that does not parse). */
static int pem_certs(const struct file_data *d, const char *what,
                     const char *path, STACK_OF(X509) *out, char *err,
                     size_t errlen)
{
    BIO *b = BIO_new_mem_buf(d->p, (int)d->n);
    if (b == NULL) {
        snprintf(err, errlen, "out of memory reading '%s'", path);
        return -1;
    }
    int n = 0;
    for (;;) {
        ERR_clear_error();
        X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
        if (x == NULL) {
            unsigned long e = ERR_peek_last_error();
            if (ERR_GET_LIB(e) == ERR_LIB_PEM &&
                ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                ERR_clear_error();
                break;
            }
            snprintf(err, errlen, "%s '%s': certificate %d does not parse: %s",
                     what, path, n + 1, ssl_reason());
            BIO_free(b);
            return -1;
        }
        if (!sk_X509_push(out, x)) {
            X509_free(x);
            snprintf(err, errlen, "out of memory reading '%s'", path);
            BIO_free(b);
            return -1;
        }
        n++;
    }
    BIO_free(b);
    return n;
}

/* A CA bundle as a trust store (and the subjects to advertise to clients
 * when `names` is given); `digest` gets a SHA-256 over the bundle. */
static X509_STORE *ca_store_load(const char *path, const char *what,
                                 STACK_OF(X509_NAME) **names,
                                 unsigned char digest[32], char *err,
                                 size_t errlen)
{
    struct file_data d;
    if (file_read(path, what, &d, err, errlen) < 0)
        return NULL;
    X509_STORE *store = NULL;
    STACK_OF(X509) *certs = sk_X509_new_null();
    if (names != NULL)
        *names = sk_X509_NAME_new_null();
    if (certs == NULL || (names != NULL && *names == NULL)) {
        snprintf(err, errlen, "out of memory reading '%s'", path);
        goto fail;
    }
    int n = pem_certs(&d, what, path, certs, err, errlen);
    if (n < 0)
        goto fail;
    if (n == 0) {
        snprintf(err, errlen, "%s '%s' holds no PEM certificate", what, path);
        goto fail;
    }
    if (digest != NULL) {
        unsigned int len = 32;
        if (EVP_Digest(d.p, d.n, digest, &len, EVP_sha256(), NULL) != 1) {
            snprintf(err, errlen, "cannot hash '%s': %s", path, ssl_reason());
            goto fail;
        }
    }
    store = X509_STORE_new();
    if (store == NULL) {
        snprintf(err, errlen, "out of memory reading '%s'", path);
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        X509 *x = sk_X509_value(certs, i);
        if (X509_STORE_add_cert(store, x) != 1) {
            snprintf(err, errlen, "%s '%s': cannot add certificate %d: %s",
                     what, path, i + 1, ssl_reason());
            goto fail;
        }
        if (names != NULL) {
            X509_NAME *nm = X509_NAME_dup(X509_get_subject_name(x));
            if (nm == NULL || !sk_X509_NAME_push(*names, nm)) {
                X509_NAME_free(nm);
                snprintf(err, errlen, "out of memory reading '%s'", path);
                goto fail;
            }
        }
    }
    sk_X509_pop_free(certs, X509_free);
    file_free(&d);
    return store;

fail:
    X509_STORE_free(store);
    if (names != NULL) {
        sk_X509_NAME_pop_free(*names, X509_NAME_free);
        *names = NULL;
    }
    sk_X509_pop_free(certs, X509_free);
    file_free(&d);
    return NULL;
}

/* "10.0.0.1", "::1" or "[::1]" -> the address text without brackets in
 * `buf`; false for a name. */
static bool ip_literal(const char *s, size_t n, char *buf, size_t cap)
{
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n == 0 || n >= cap)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    unsigned char tmp[16];
    return inet_pton(AF_INET, buf, tmp) == 1 || inet_pton(AF_INET6, buf, tmp) == 1;
}

static void format_time(const ASN1_TIME *t, char *out, size_t cap)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1 ||
        strftime(out, cap, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
        snprintf(out, cap, "(unreadable date)");
}

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

/* ---- server: certificates ------------------------------------------------ */

struct tls_cert {
    X509 *x509;
    STACK_OF(X509) *chain;
    EVP_PKEY *pkey;
    int slot;
    char **names; /* lower case, no trailing dot; "*.example.com" */
    size_t nnames;
    const char *file; /* borrowed from the config snapshot */
    bool used;
};

/* The certificate per slot serving some set of names: one SSL_CTX each. */
struct tls_group {
    int cert[NSLOTS]; /* index into certs, or -1 */
};

struct tls_name {
    const char *name;
    size_t group;
};

struct tls_ctxset;

/* SSL_CTX app data: which set and group the context belongs to. */
struct tls_ctx_info {
    struct tls_ctxset *set;
    size_t group;
};

/* The contexts of one trust setting: no client certificates, or one
 * listener's client CA. Each has one SSL_CTX per group. */
struct tls_ctxset {
    struct tg_tls_server *server;
    const struct tg_config_listen *listen; /* NULL: no client certificates */
    SSL_CTX **ctx;
    struct tls_ctx_info *info;
};

struct tg_tls_server {
    _Atomic unsigned refs; /* the owner's, plus one per SSL alive */
    struct tls_cert *certs;
    size_t ncerts;
    struct tls_group *groups;
    size_t ngroups;
    size_t default_group;
    struct tls_name *names; /* sorted by name */
    size_t nnames;
    struct tls_ctxset plain;
    struct tls_ctxset *mtls;
    size_t nmtls;
    int64_t ticket_rotation_ms;
    const unsigned char *alpn; /* server preference, wire format */
    size_t alpn_len;
};

static int pem_password_none(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag;
    *(bool *)u = true;
    return -1;
}

/* Lower-cases a DNS name into `out`; false when it is not one we index
 * (too long, empty, or bytes that no host name has). */
static bool name_normalise(const char *p, size_t n, char *out)
{
    if (n > 0 && p[n - 1] == '.')
        n--;
    if (n == 0 || n > MAX_NAME)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c >= 0x7f)
            return false;
        out[i] = tg_ascii_lower((char)c);
    }
    out[n] = '\0';
    return true;
}

static int cert_add_name(struct tls_cert *c, const char *p, size_t n)
{
    char buf[MAX_NAME + 1];
    if (!name_normalise(p, n, buf))
        return 0;
    if (strchr(buf, '*') != NULL) {
        /* Only a whole left-most label over at least two more labels, as
         * X509_check_host accepts: "*.example.com", not "*.com" or
         * "w*.example.com". */
        const char *rest = buf + 2;
        if (buf[0] != '*' || buf[1] != '.' || strchr(rest, '*') != NULL ||
            strchr(rest, '.') == NULL) {
            tg_log_warn("certificate %s: name '%s' is never selected by SNI "
                        "(a wildcard must be a whole left-most label)",
                        c->file, buf);
            return 0;
        }
    }
    for (size_t i = 0; i < c->nnames; i++)
        if (strcmp(c->names[i], buf) == 0)
            return 0;
    char **grown = realloc(c->names, (c->nnames + 1) * sizeof(*grown));
    if (grown == NULL)
        return -1;
    c->names = grown;
    if ((c->names[c->nnames] = strdup(buf)) == NULL)
        return -1;
    c->nnames++;
    return 0;
}

/* The DNS names in the subjectAltName; the last CN only when there is no
 * DNS name at all (RFC 6125). */
static int cert_collect_names(struct tls_cert *c)
{
    GENERAL_NAMES *sans = X509_get_ext_d2i(c->x509, NID_subject_alt_name, NULL, NULL);
    bool any_dns = false;
    int rc = 0;
    for (int i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type != GEN_DNS)
            continue;
        any_dns = true;
        const ASN1_IA5STRING *s = g->d.dNSName;
        if (cert_add_name(c, (const char *)ASN1_STRING_get0_data(s),
                          (size_t)ASN1_STRING_length(s)) < 0)
            rc = -1;
    }
    GENERAL_NAMES_free(sans);
    if (any_dns || rc < 0)
        return rc;
    const X509_NAME *subj = X509_get_subject_name(c->x509);
    int last = -1;
    for (int i = -1; (i = X509_NAME_get_index_by_NID(subj, NID_commonName, i)) >= 0;)
        last = i;
    if (last < 0)
        return 0;
    unsigned char *utf8 = NULL;
    int len = ASN1_STRING_to_UTF8(
        &utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, last)));
    if (len < 0) {
        ERR_clear_error();
        return 0;
    }
    rc = cert_add_name(c, (const char *)utf8, (size_t)len);
    OPENSSL_free(utf8);
    return rc;
}

static void cert_warn_dates(const struct tls_cert *c)
{
    char when[64];
    const ASN1_TIME *na = X509_get0_notAfter(c->x509);
    const ASN1_TIME *nb = X509_get0_notBefore(c->x509);
    time_t soon = time(NULL) + EXPIRY_WARN_S;
    if (X509_cmp_current_time(na) < 0) {
        format_time(na, when, sizeof(when));
        tg_log_warn("certificate %s expired on %s; serving it anyway, clients "
                    "will refuse it", c->file, when);
    } else if (X509_cmp_current_time(nb) > 0) {
        format_time(nb, when, sizeof(when));
        tg_log_warn("certificate %s is not valid before %s; serving it anyway, "
                    "clients will refuse it until then", c->file, when);
    } else if (X509_cmp_time(na, &soon) < 0) {
        format_time(na, when, sizeof(when));
        tg_log_warn("certificate %s expires on %s", c->file, when);
    }
    ERR_clear_error();
}

static void cert_clear(struct tls_cert *c)
{
    X509_free(c->x509);
    sk_X509_pop_free(c->chain, X509_free);
    EVP_PKEY_free(c->pkey);
    for (size_t i = 0; i < c->nnames; i++)
        free(c->names[i]);
    free(c->names);
    memset(c, 0, sizeof(*c));
}

/* Loads one certificate entry: leaf + chain, key, and checks they belong
 * together. */
static int cert_load(struct tls_cert *c, const struct tg_config_certificate *cc,
                     char *err, size_t errlen)
{
    struct file_data d = {0}, k = {0};
    STACK_OF(X509) *all = NULL;
    BIO *b = NULL;
    c->file = cc->cert;
    if (cc->cert == NULL) {
        snprintf(err, errlen, "key '%s' has no certificate: a certificate "
                 "entry needs cert as well as key",
                 cc->key != NULL ? cc->key : "");
        return -1;
    }
    if (cc->key == NULL) {
        snprintf(err, errlen, "certificate '%s' has no key", cc->cert);
        return -1;
    }
    if (file_read(cc->cert, "certificate file", &d, err, errlen) < 0)
        return -1;
    if ((all = sk_X509_new_null()) == NULL) {
        snprintf(err, errlen, "out of memory reading '%s'", cc->cert);
        goto fail;
    }
    int n = pem_certs(&d, "certificate file", cc->cert, all, err, errlen);
    if (n < 0)
        goto fail;
    if (n == 0) {
        if (contains(&d, "PRIVATE KEY-----"))
            snprintf(err, errlen, "'%s' holds a private key but no "
                     "certificate (cert must name the certificate file)",
                     cc->cert);
        else if (contains(&d, "-----BEGIN "))
            snprintf(err, errlen, "'%s' holds no PEM certificate", cc->cert);
        else
            snprintf(err, errlen, "'%s' is not a PEM file (no '-----BEGIN "
                     "CERTIFICATE-----' block)", cc->cert);
        goto fail;
    }
    c->x509 = sk_X509_shift(all);
    c->chain = all;
    all = NULL;

    if (file_read(cc->key, "key file", &k, err, errlen) < 0)
        goto fail;
    if ((b = BIO_new_mem_buf(k.p, (int)k.n)) == NULL) {
        snprintf(err, errlen, "out of memory reading '%s'", cc->key);
        goto fail;
    }
    bool encrypted = false;
    ERR_clear_error();
    c->pkey = PEM_read_bio_PrivateKey(b, NULL, pem_password_none, &encrypted);
    if (c->pkey == NULL) {
        if (encrypted)
            snprintf(err, errlen, "key '%s' is encrypted; tollgate reads "
                     "unencrypted keys only (protect the file with "
                     "permissions instead)", cc->key);
        else if (!contains(&k, "-----BEGIN "))
            snprintf(err, errlen, "'%s' is not a PEM file (no '-----BEGIN "
                     "PRIVATE KEY-----' block)", cc->key);
        else if (!contains(&k, "PRIVATE KEY-----"))
            snprintf(err, errlen, "'%s' holds no PEM private key", cc->key);
        else
            snprintf(err, errlen, "key '%s' does not parse: %s", cc->key,
                     ssl_reason());
        ERR_clear_error();
        goto fail;
    }
    const EVP_PKEY *pub = X509_get0_pubkey(c->x509);
    if (pub == NULL) {
        snprintf(err, errlen, "certificate '%s': unreadable public key: %s",
                 cc->cert, ssl_reason());
        goto fail;
    }
    if (EVP_PKEY_get_base_id(pub) != EVP_PKEY_get_base_id(c->pkey)) {
        snprintf(err, errlen, "mismatched algorithms: certificate '%s' has an "
                 "%s key but '%s' holds an %s key", cc->cert,
                 key_type_name(pub), cc->key, key_type_name(c->pkey));
        goto fail;
    }
    if (EVP_PKEY_eq(pub, c->pkey) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "key '%s' does not match certificate '%s'",
                 cc->key, cc->cert);
        goto fail;
    }
    if ((c->slot = key_slot(c->pkey)) < 0) {
        snprintf(err, errlen, "certificate '%s' has an %s key; RSA and ECDSA "
                 "certificates are supported", cc->cert, key_type_name(c->pkey));
        goto fail;
    }
    if (cert_collect_names(c) < 0) {
        snprintf(err, errlen, "out of memory reading '%s'", cc->cert);
        goto fail;
    }
    cert_warn_dates(c);
    BIO_free(b);
    file_free(&k);
    file_free(&d);
    return 0;

fail:
    BIO_free(b);
    sk_X509_pop_free(all, X509_free);
    file_free(&k);
    file_free(&d);
    return -1;
}

/* ---- server: name index -----------------------------------------------
 *
 * Every name of every certificate gets a group: per slot, the first
 * certificate (in config order) carrying exactly that name, else, for an
 * exact name, the first whose wildcard covers it. Names with the same
 * choice share a group, so certificates listed for the same names (RSA and
 * ECDSA) share one SSL_CTX. */

struct name_ref {
    const char *name;
    size_t cert;
};

static int cmp_name_ref(const void *a, const void *b)
{
    const struct name_ref *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c != 0)
        return c;
    return (x->cert > y->cert) - (x->cert < y->cert);
}

static int cmp_tls_name(const void *a, const void *b)
{
    return strcmp(((const struct tls_name *)a)->name,
                  ((const struct tls_name *)b)->name);
}

static int cmp_key_name(const void *key, const void *elem)
{
    return strcmp(key, ((const struct tls_name *)elem)->name);
}

/* The run of refs for `name` in the sorted refs array, as [*lo, *hi). */
static bool refs_find(const struct name_ref *refs, size_t n, const char *name,
                      size_t *lo, size_t *hi)
{
    size_t a = 0, b = n;
    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (strcmp(refs[m].name, name) < 0)
            a = m + 1;
        else
            b = m;
    }
    if (a == n || strcmp(refs[a].name, name) != 0)
        return false;
    *lo = a;
    for (b = a; b < n && strcmp(refs[b].name, name) == 0; b++)
        ;
    *hi = b;
    return true;
}

static void fill_slots(const struct tg_tls_server *s, const struct name_ref *refs,
                       size_t lo, size_t hi, struct tls_group *g)
{
    for (size_t i = lo; i < hi; i++) {
        int slot = s->certs[refs[i].cert].slot;
        if (g->cert[slot] < 0)
            g->cert[slot] = (int)refs[i].cert;
    }
}

static struct tls_group select_group(const struct tg_tls_server *s,
                                     const struct name_ref *refs, size_t nrefs,
                                     const char *name)
{
    struct tls_group g;
    for (int i = 0; i < NSLOTS; i++)
        g.cert[i] = -1;
    size_t lo, hi;
    if (refs_find(refs, nrefs, name, &lo, &hi))
        fill_slots(s, refs, lo, hi, &g);
    const char *dot = strchr(name, '.');
    if (name[0] != '*' && dot != NULL && dot != name) {
        char wild[MAX_NAME + 2];
        snprintf(wild, sizeof(wild), "*%s", dot);
        if (refs_find(refs, nrefs, wild, &lo, &hi))
            fill_slots(s, refs, lo, hi, &g);
    }
    return g;
}

static size_t group_intern(struct tg_tls_server *s, const struct tls_group *g)
{
    for (size_t i = 0; i < s->ngroups; i++)
        if (memcmp(&s->groups[i], g, sizeof(*g)) == 0)
            return i;
    s->groups[s->ngroups] = *g;
    return s->ngroups++;
}

static int build_index(struct tg_tls_server *s, char *err, size_t errlen)
{
    size_t nrefs = 0;
    for (size_t i = 0; i < s->ncerts; i++)
        nrefs += s->certs[i].nnames;
    struct name_ref *refs = calloc(nrefs ? nrefs : 1, sizeof(*refs));
    s->names = calloc(nrefs ? nrefs : 1, sizeof(*s->names));
    s->groups = calloc(nrefs + 1, sizeof(*s->groups));
    if (refs == NULL || s->names == NULL || s->groups == NULL) {
        free(refs);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t k = 0;
    for (size_t i = 0; i < s->ncerts; i++)
        for (size_t j = 0; j < s->certs[i].nnames; j++)
            refs[k++] = (struct name_ref){s->certs[i].names[j], i};
    qsort(refs, nrefs, sizeof(*refs), cmp_name_ref);

    /* The default group first: the first certificate, completed with the
     * other key type for its first name. */
    struct tls_group def;
    const struct tls_cert *first = &s->certs[0];
    if (first->nnames > 0) {
        def = select_group(s, refs, nrefs, first->names[0]);
    } else {
        for (int i = 0; i < NSLOTS; i++)
            def.cert[i] = -1;
    }
    def.cert[first->slot] = 0;
    s->default_group = group_intern(s, &def);

    /* refs is sorted by name, then by config order; take each name once. */
    for (size_t i = 0; i < nrefs; i++) {
        if (i > 0 && strcmp(refs[i].name, refs[i - 1].name) == 0)
            continue;
        struct tls_group g = select_group(s, refs, nrefs, refs[i].name);
        /* The string belongs to the certificate that carries the name. */
        s->names[s->nnames].name = refs[i].name;
        s->names[s->nnames].group = group_intern(s, &g);
        s->nnames++;
    }
    free(refs);
    qsort(s->names, s->nnames, sizeof(*s->names), cmp_tls_name);

    for (size_t i = 0; i < s->ngroups; i++)
        for (int j = 0; j < NSLOTS; j++)
            if (s->groups[i].cert[j] >= 0)
                s->certs[s->groups[i].cert[j]].used = true;
    for (size_t i = 0; i < s->ncerts; i++)
        if (!s->certs[i].used)
            tg_log_warn("certificate %s is never served: an earlier %s "
                        "certificate covers each of its names",
                        s->certs[i].file, slot_names[s->certs[i].slot]);
    return 0;
}

/* The group for a server name, or -1. */
static ssize_t lookup_group(const struct tg_tls_server *s, const char *p, size_t n)
{
    char buf[MAX_NAME + 2];
    if (!name_normalise(p, n, buf + 1) || strchr(buf + 1, '*') != NULL)
        return -1;
    const struct tls_name *hit =
        bsearch(buf + 1, s->names, s->nnames, sizeof(*s->names), cmp_key_name);
    if (hit != NULL)
        return (ssize_t)hit->group;
    char *dot = strchr(buf + 1, '.');
    if (dot == NULL || dot == buf + 1)
        return -1;
    dot[-1] = '*';
    hit = bsearch(dot - 1, s->names, s->nnames, sizeof(*s->names), cmp_key_name);
    return hit != NULL ? (ssize_t)hit->group : -1;
}

/* ---- server: callbacks --------------------------------------------------- */

/* Runs first on every ClientHello: switches the SSL to the context whose
 * certificates serve the requested name. Sessions and tickets are not
 * affected by the switch: OpenSSL keeps using the context the SSL was made
 * from (same cache, same ticket callback, same session id context). */
static int on_client_hello(SSL *ssl, int *alert, void *arg)
{
    struct tls_ctxset *set = arg;
    const struct tg_tls_server *s = set->server;
    const unsigned char *p;
    size_t len;
    SSL_CTX *want = set->ctx[s->default_group];
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) == 1 &&
        len >= 5) {
        /* server_name_list: u16 length, then entries: u8 type, u16 len. */
        size_t list = (size_t)p[0] << 8 | p[1];
        size_t nlen = (size_t)p[3] << 8 | p[4];
        if (list + 2 == len && p[2] == TLSEXT_NAMETYPE_host_name &&
            nlen + 5 <= len) {
            ssize_t g = lookup_group(s, (const char *)p + 5, nlen);
            if (g >= 0)
                want = set->ctx[g];
        }
    }
    if (want != SSL_get_SSL_CTX(ssl) && SSL_set_SSL_CTX(ssl, want) == NULL) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

/* Acknowledges SNI (so a TLS 1.2 session remembers its name); an unknown
 * name is served the default certificate rather than refused. */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
    (void)ssl, (void)alert, (void)arg;
    return SSL_TLSEXT_ERR_OK;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    const struct tg_tls_server *s = arg;
    /* Our preference order: the first of ours the client offers. */
    for (size_t i = 0; i < s->alpn_len; i += 1 + s->alpn[i]) {
        const unsigned char *ours = &s->alpn[i];
        for (unsigned int j = 0; j < inlen;) {
            unsigned int n = in[j];
            if (n == 0 || j + 1 + n > inlen)
                return SSL_TLSEXT_ERR_ALERT_FATAL;
            if (n == ours[0] && memcmp(&in[j + 1], ours + 1, n) == 0) {
                *out = &in[j + 1];
                *outlen = (unsigned char)n;
                return SSL_TLSEXT_ERR_OK;
            }
            j += 1 + n;
        }
    }
    /* RFC 7301: no protocol in common is a no_application_protocol alert. */
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static int on_ticket_key(SSL *ssl, unsigned char name[16],
                         unsigned char iv[EVP_MAX_IV_LENGTH],
                         EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    const struct tls_ctx_info *info = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    struct ticket_key k;
    int rc = ring_get(enc ? NULL : name, info->set->server->ticket_rotation_ms, &k);
    if (rc <= 0)
        return 0; /* encrypt: no ticket; decrypt: full handshake */
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    int ok;
    if (enc) {
        memcpy(name, k.name, sizeof(k.name));
        ok = RAND_bytes(iv, 16) == 1 &&
             EVP_EncryptInit_ex(cctx, ring.cipher, NULL, k.aes, iv) == 1;
    } else {
        ok = EVP_DecryptInit_ex(cctx, ring.cipher, NULL, k.aes, iv) == 1;
    }
    ok = ok && EVP_MAC_CTX_set_params(hctx, params) == 1;
    OPENSSL_cleanse(&k, sizeof(k));
    if (!ok) {
        ERR_clear_error();
        return enc ? -1 : 0;
    }
    /* TLS 1.3 clients use a ticket once (RFC 8446, appendix C.4) and
     * OpenSSL sends a new one after a resumption only when asked to renew:
     * without this every other connection would be a full handshake. */
    if (!enc && SSL_version(ssl) >= TLS1_3_VERSION)
        return 2;
    return enc ? 1 : rc;
}

/* ---- server: contexts ---------------------------------------------------- */

/* Checks each entry of a cipher list on its own, because OpenSSL skips
 * names it does not know as long as one entry matches something. */
static int check_ciphers(SSL_CTX *scratch, const char *list, bool suites,
                         char *err, size_t errlen)
{
    const char *key = suites ? "tls.ciphersuites" : "tls.ciphers";
    char tok[128];
    for (const char *p = list; *p != '\0';) {
        size_t n = strcspn(p, ":, ");
        if (n >= sizeof(tok)) {
            snprintf(err, errlen, "%s: entry '%.*s...' is too long", key, 40, p);
            return -1;
        }
        memcpy(tok, p, n);
        tok[n] = '\0';
        p += n;
        p += strspn(p, ":, ");
        /* Exclusions and directives remove or reorder; only what adds
         * ciphers must match something. */
        if (n == 0 || strchr("!-+@", tok[0]) != NULL)
            continue;
        if (suites) {
            int found = 0;
            if (SSL_CTX_set_ciphersuites(scratch, tok) == 1) {
                STACK_OF(SSL_CIPHER) *sk = SSL_CTX_get_ciphers(scratch);
                for (int i = 0; i < sk_SSL_CIPHER_num(sk); i++)
                    if (strcmp(SSL_CIPHER_get_version(sk_SSL_CIPHER_value(sk, i)),
                               "TLSv1.3") == 0)
                        found++;
            }
            ERR_clear_error();
            if (found == 0) {
                snprintf(err, errlen, "%s: '%s' is not a TLS 1.3 cipher suite "
                         "(TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, "
                         "TLS_CHACHA20_POLY1305_SHA256)", key, tok);
                return -1;
            }
        } else if (SSL_CTX_set_cipher_list(scratch, tok) != 1) {
            ERR_clear_error();
            snprintf(err, errlen, "%s: '%s' matches no TLS 1.2 cipher (TLS 1.3 "
                     "suites go in tls.ciphersuites)", key, tok);
            return -1;
        }
    }
    return 0;
}

static int check_tls_settings(const struct tg_config_tls *t, char *err,
                              size_t errlen)
{
    SSL_CTX *scratch = SSL_CTX_new(TLS_server_method());
    if (scratch == NULL) {
        snprintf(err, errlen, "cannot create a TLS context: %s", ssl_reason());
        return -1;
    }
    int rc = 0;
    bool only13 = t->min_version >= TLS1_3_VERSION;
    if (t->ciphers != NULL) {
        if (check_ciphers(scratch, t->ciphers, false, err, errlen) < 0) {
            rc = -1;
        } else if (SSL_CTX_set_cipher_list(scratch, t->ciphers) != 1 && !only13) {
            snprintf(err, errlen, "tls.ciphers: '%s' leaves no TLS 1.2 cipher",
                     t->ciphers);
            rc = -1;
        }
    }
    if (rc == 0 && t->ciphersuites != NULL) {
        if (check_ciphers(scratch, t->ciphersuites, true, err, errlen) < 0) {
            rc = -1;
        } else if (t->ciphersuites[strspn(t->ciphersuites, ":, ")] == '\0' &&
                   only13) {
            snprintf(err, errlen, "tls.ciphersuites is empty but "
                     "tls.min_version is 1.3: nothing could be negotiated");
            rc = -1;
        }
    }
    ERR_clear_error();
    SSL_CTX_free(scratch);
    return rc;
}

/* One trust setting's client CA (mTLS), shared by its contexts. */
struct mtls_ca {
    X509_STORE *store;
    STACK_OF(X509_NAME) *names;
    unsigned char sid_ctx[32];
};

static SSL_CTX *server_ctx_new(struct tg_tls_server *s,
                               const struct tg_config_tls *t,
                               struct tls_ctxset *set, size_t group,
                               const struct mtls_ca *ca, bool optional,
                               int *bad_cert, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        goto fail;
    SSL_CTX_set_app_data(ctx, &set->info[group]);
    if (SSL_CTX_set_min_proto_version(ctx, t->min_version) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, 0) != 1)
        goto fail;
    /* No renegotiation at all (SSL_OP_ALLOW_CLIENT_RENEGOTIATION stays
     * off); an EOF without close_notify is an end of stream, which is what
     * io.c expects. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_PRIORITIZE_CHACHA |
                                 SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 (t->session_tickets ? 0 : SSL_OP_NO_TICKET));
    SSL_CTX_clear_options(ctx, SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
    /* Read ahead: one read syscall per record instead of two (header, then
     * body); io.c tracks what OpenSSL holds with SSL_has_pending. */
    SSL_CTX_set_mode(ctx, TLS_MODES);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (SSL_CTX_set_cipher_list(ctx, t->ciphers ? t->ciphers : TLS_DEFAULT_CIPHERS) != 1 &&
        t->min_version < TLS1_3_VERSION)
        goto fail;
    if (SSL_CTX_set_ciphersuites(ctx, t->ciphersuites ? t->ciphersuites
                                                      : TLS_DEFAULT_SUITES) != 1 ||
        SSL_CTX_set1_groups_list(ctx, TLS_GROUPS) != 1)
        goto fail;
    ERR_clear_error();

    /* Resumption. OpenSSL looks sessions up in the cache of, and asks for
     * ticket keys through, the context the SSL was created from, whatever
     * SNI switched to; every context gets the same settings anyway. */
    const unsigned char *sid = ca != NULL ? ca->sid_ctx : sid_ctx_plain;
    unsigned sid_len = ca != NULL ? sizeof(ca->sid_ctx) : sizeof(sid_ctx_plain) - 1;
    if (SSL_CTX_set_session_id_context(ctx, sid, sid_len) != 1)
        goto fail;
    if (t->session_cache_size > 0) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(ctx, (long)t->session_cache_size);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    SSL_CTX_set_timeout(ctx, (long)(t->session_timeout_ms / 1000));
    if (t->session_tickets) {
        if (SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key) != 1)
            goto fail;
    } else if (t->session_cache_size == 0) {
        /* TLS 1.3 would send stateful tickets nothing could resume. */
        SSL_CTX_set_num_tickets(ctx, 0);
    }

    SSL_CTX_set_client_hello_cb(ctx, on_client_hello, set);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, s);

    for (int slot = 0; slot < NSLOTS; slot++) {
        int i = s->groups[group].cert[slot];
        if (i < 0)
            continue;
        struct tls_cert *c = &s->certs[i];
        if (SSL_CTX_use_cert_and_key(ctx, c->x509, c->pkey, c->chain, 1) != 1) {
            snprintf(err, errlen, "certificate '%s' cannot be used: %s", c->file,
                     ssl_reason());
            *bad_cert = i;
            SSL_CTX_free(ctx);
            return NULL;
        }
    }

    if (ca != NULL) {
        STACK_OF(X509_NAME) *names = SSL_dup_CA_list(ca->names);
        if (names == NULL)
            goto fail;
        SSL_CTX_set1_cert_store(ctx, ca->store);
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER |
                                    (optional ? 0 : SSL_VERIFY_FAIL_IF_NO_PEER_CERT),
                           NULL);
    }
    return ctx;

fail:
    snprintf(err, errlen, "cannot set up a TLS context: %s", ssl_reason());
    SSL_CTX_free(ctx);
    return NULL;
}

static int ctxset_build(struct tg_tls_server *s, const struct tg_config_tls *t,
                        struct tls_ctxset *set, const struct tg_config_listen *l,
                        const struct mtls_ca *ca, int *bad_cert, char *err,
                        size_t errlen)
{
    set->server = s;
    set->listen = l;
    set->ctx = calloc(s->ngroups, sizeof(*set->ctx));
    set->info = calloc(s->ngroups, sizeof(*set->info));
    if (set->ctx == NULL || set->info == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t g = 0; g < s->ngroups; g++) {
        set->info[g] = (struct tls_ctx_info){set, g};
        set->ctx[g] = server_ctx_new(s, t, set, g, ca,
                                     l != NULL && l->client_verify_optional,
                                     bad_cert, err, errlen);
        if (set->ctx[g] == NULL)
            return -1;
    }
    return 0;
}

static void ctxset_clear(struct tls_ctxset *set, size_t ngroups)
{
    for (size_t g = 0; set->ctx != NULL && g < ngroups; g++)
        SSL_CTX_free(set->ctx[g]);
    free(set->ctx);
    free(set->info);
    set->ctx = NULL;
    set->info = NULL;
}

static void server_destroy(struct tg_tls_server *s)
{
    ctxset_clear(&s->plain, s->ngroups);
    for (size_t i = 0; i < s->nmtls; i++)
        ctxset_clear(&s->mtls[i], s->ngroups);
    free(s->mtls);
    for (size_t i = 0; i < s->ncerts; i++)
        cert_clear(&s->certs[i]);
    free(s->certs);
    free(s->groups);
    free(s->names);
    free(s);
}

static void server_unref(struct tg_tls_server *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        server_destroy(s);
}

static int mtls_build(struct tg_tls_server *s, const struct tg_config *cfg,
                      const struct tg_config_listen *l, char *err, size_t errlen)
{
    struct mtls_ca ca = {0};
    unsigned char digest[32];
    ca.store = ca_store_load(l->client_ca, "client_ca", &ca.names, digest, err,
                             errlen);
    if (ca.store == NULL)
        return -1;
    /* The session id context names the trust setting: the CA bundle and
     * whether a certificate is required. */
    unsigned char in[48];
    memcpy(in, "tollgate mtls ", 14);
    in[14] = l->client_verify_optional ? 'o' : 'r';
    memcpy(in + 15, digest, 32);
    unsigned int len = sizeof(ca.sid_ctx);
    int rc = -1;
    if (EVP_Digest(in, 47, ca.sid_ctx, &len, EVP_sha256(), NULL) != 1) {
        snprintf(err, errlen, "cannot hash '%s': %s", l->client_ca, ssl_reason());
        goto done;
    }
    struct tls_ctxset *set = &s->mtls[s->nmtls++];
    int bad = -1;
    rc = ctxset_build(s, &cfg->tls, set, l, &ca, &bad, err, errlen);
done:
    X509_STORE_free(ca.store);
    sk_X509_NAME_pop_free(ca.names, X509_NAME_free);
    return rc;
}

struct tg_tls_server *tg_tls_server_new(const struct tg_config *cfg, char *err,
                                        size_t errlen,
                                        struct tg_config_mark *where)
{
    const struct tg_config_tls *t = &cfg->tls;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    *where = t->mark;
    if (!ring.ready) {
        snprintf(err, errlen, "TLS is not initialised (tg_tls_global_init)");
        return NULL;
    }
    if (t->ncerts == 0) {
        snprintf(err, errlen, "TLS listeners need at least one entry in "
                 "tls.certificates");
        for (size_t i = 0; i < cfg->nlisteners; i++)
            if (cfg->listeners[i].tls) {
                *where = cfg->listeners[i].mark;
                break;
            }
        return NULL;
    }
    if (check_tls_settings(t, err, errlen) < 0)
        return NULL;

    struct tg_tls_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->ticket_rotation_ms = t->ticket_key_rotation_ms > 0 ? t->ticket_key_rotation_ms
                                                          : 3600 * 1000;
    s->alpn = alpn_http1;
    s->alpn_len = sizeof(alpn_http1) - 1;
    s->certs = calloc(t->ncerts, sizeof(*s->certs));
    size_t nmtls = 0;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (cfg->listeners[i].tls && cfg->listeners[i].client_ca != NULL)
            nmtls++;
    s->mtls = calloc(nmtls ? nmtls : 1, sizeof(*s->mtls));
    if (s->certs == NULL || s->mtls == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < t->ncerts; i++) {
        *where = t->certs[i].mark;
        if (cert_load(&s->certs[i], &t->certs[i], err, errlen) < 0) {
            cert_clear(&s->certs[i]);
            goto fail;
        }
        s->ncerts++;
    }
    *where = t->mark;
    if (build_index(s, err, errlen) < 0)
        goto fail;
    int bad = -1;
    if (ctxset_build(s, t, &s->plain, NULL, NULL, &bad, err, errlen) < 0) {
        /* Usually a certificate OpenSSL refuses (a key too weak for the
         * security level): point at it. */
        if (bad >= 0)
            *where = t->certs[bad].mark;
        goto fail;
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct tg_config_listen *l = &cfg->listeners[i];
        if (!l->tls || l->client_ca == NULL)
            continue;
        *where = l->mark;
        if (mtls_build(s, cfg, l, err, errlen) < 0)
            goto fail;
    }
    *where = t->mark;
    return s;

fail:
    server_destroy(s);
    return NULL;
}

void tg_tls_server_free(struct tg_tls_server *s)
{
    server_unref(s);
}

static void on_ssl_server_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad,
                               int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    server_unref(ptr);
}

SSL *tg_tls_server_accept(struct tg_tls_server *s,
                          const struct tg_config_listen *l, int fd)
{
    struct tls_ctxset *set = &s->plain;
    if (l != NULL && l->client_ca != NULL) {
        /* Never fall back to a context without client certificates. */
        set = NULL;
        for (size_t i = 0; i < s->nmtls; i++)
            if (s->mtls[i].listen == l)
                set = &s->mtls[i];
        if (set == NULL)
            return NULL;
    }
    SSL *ssl = SSL_new(set->ctx[s->default_group]);
    if (ssl == NULL)
        goto fail;
    atomic_fetch_add(&s->refs, 1);
    if (SSL_set_ex_data(ssl, ring.ssl_server_idx, s) != 1) {
        server_unref(s);
        goto fail;
    }
    if (!tg_tls_bio_attach(ssl, fd))
        goto fail;
    SSL_set_mode(ssl, TLS_MODES);
    SSL_set_accept_state(ssl);
    return ssl;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

/* ---- server: after the handshake ----------------------------------------- */

static bool cert_matches(X509 *x, const char *name, size_t n, bool ip)
{
    int rc = ip ? X509_check_ip_asc(x, name, 0)
                : X509_check_host(x, name, n, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
                                  NULL);
    ERR_clear_error();
    return rc == 1;
}

static bool check_cert_covers(SSL *ssl, struct tg_str host)
{
    const char *p = host.p;
    size_t n = host.n;
    /* Drop the port: "name:443", "[v6]:443". */
    if (n > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', n);
        if (close == NULL)
            return false;
        n = (size_t)(close - p) + 1;
    } else {
        const char *colon = memchr(p, ':', n);
        if (colon != NULL)
            n = (size_t)(colon - p);
    }
    if (n > 0 && p[n - 1] == '.')
        n--;
    if (n == 0 || n > MAX_NAME || memchr(p, '\0', n) != NULL)
        return false;
    char name[MAX_NAME + 1];
    bool ip = ip_literal(p, n, name, sizeof(name));
    if (!ip) {
        memcpy(name, p, n);
        name[n] = '\0';
    }

    /* Client contexts keep a struct tg_tls_client as app data. */
    if (!SSL_is_server(ssl))
        return false;
    const struct tls_ctx_info *info = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (info == NULL)
        return false;
    const struct tg_tls_server *s = info->set->server;
    const struct tls_group *g = &s->groups[info->group];
    X509 *served = SSL_get_certificate(ssl);
    if (!SSL_session_reused(ssl)) {
        for (int i = 0; i < NSLOTS; i++)
            if (g->cert[i] >= 0 && s->certs[g->cert[i]].x509 == served)
                return cert_matches(served, name, strlen(name), ip);
    }
    /* A resumed session chose its certificate in an earlier handshake,
     * which the server does not remember: ask every candidate. */
    bool any = false;
    for (int i = 0; i < NSLOTS; i++) {
        if (g->cert[i] < 0)
            continue;
        if (!cert_matches(s->certs[g->cert[i]].x509, name, strlen(name), ip))
            return false;
        any = true;
    }
    return any;
}

/* The last Host a connection's certificate was checked against, and the
 * verdict. Keep-alive clients repeat their Host, and the check (decoding
 * the certificate's names in X509_check_host/_ip_asc) costs more than all
 * the rest of a request: some 17k instructions for an IP literal. The
 * certificate of a connection never changes (no renegotiation). */
struct covers_memo {
    bool covered;
    size_t n;
    char host[];
};

static void on_covers_memo_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
                                long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    free(ptr);
}

bool tg_tls_cert_covers(SSL *ssl, struct tg_str host)
{
    struct covers_memo *m = SSL_get_ex_data(ssl, ring.ssl_covers_idx);
    if (m != NULL && m->n == host.n && memcmp(m->host, host.p, host.n) == 0)
        return m->covered;
    bool covered = check_cert_covers(ssl, host);
    if (host.n <= MAX_NAME + 8) { /* name, ":port", brackets: else not kept */
        struct covers_memo *fresh = malloc(sizeof(*fresh) + host.n);
        if (fresh != NULL) {
            fresh->covered = covered;
            fresh->n = host.n;
            memcpy(fresh->host, host.p, host.n);
            if (SSL_set_ex_data(ssl, ring.ssl_covers_idx, fresh) == 1)
                free(m);
            else
                free(fresh);
        }
    }
    return covered;
}

void tg_tls_info(SSL *ssl, struct tg_tls_info *out)
{
    out->version = SSL_get_version(ssl);
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    out->cipher = c != NULL ? SSL_CIPHER_get_name(c) : "";
    out->sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    out->resumed = SSL_session_reused(ssl) == 1;
}

size_t tg_tls_client_subject(SSL *ssl, char *out, size_t cap)
{
    if (cap > 0)
        out[0] = '\0';
    X509 *x = SSL_get0_peer_certificate(ssl);
    if (x == NULL || SSL_get_verify_result(ssl) != X509_V_OK || cap == 0)
        return 0;
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL)
        return 0;
    size_t len = 0;
    char *p;
    /* RFC 2253 escaping turns control and non-ASCII bytes into \XX, so the
     * result is safe in a header value. */
    if (X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0) {
        long n = BIO_get_mem_data(b, &p);
        /* Never cut a name short: a prefix can be another identity. */
        if (n > 0 && (size_t)n < cap) {
            len = (size_t)n;
            for (size_t i = 0; i < len; i++)
                if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] == 0x7f)
                    len = 0;
            memcpy(out, p, len);
            out[len] = '\0';
        }
    }
    BIO_free(b);
    ERR_clear_error();
    return len;
}

/* ---- client side ----------------------------------------------------------
 *
 * One SSL_CTX per upstream. Sessions are remembered per server (the address
 * text given to connect), so each server of an upstream resumes its own;
 * TLS 1.3 tickets arrive after the handshake, while the connection is read,
 * and are caught by the new-session callback. */

struct client_session {
    char *host;
    SSL_SESSION *sess;
};

struct tg_tls_client {
    _Atomic unsigned refs; /* the owner's, plus one per SSL alive */
    SSL_CTX *ctx;
    char *server_name; /* tls_server_name, or NULL */
    bool verify;
    pthread_mutex_t lock;
    struct client_session sessions[CLIENT_SESSIONS_MAX];
    size_t nsessions;
    size_t evict; /* next slot to reuse when full */
};

/* SSL ex data of a client SSL: the client kept alive, and the cache key. */
struct client_ssl {
    struct tg_tls_client *c;
    char host[];
};

static void client_unref(struct tg_tls_client *c)
{
    if (c == NULL || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    for (size_t i = 0; i < c->nsessions; i++) {
        free(c->sessions[i].host);
        SSL_SESSION_free(c->sessions[i].sess);
    }
    pthread_mutex_destroy(&c->lock);
    SSL_CTX_free(c->ctx);
    free(c->server_name);
    free(c);
}

static void on_ssl_client_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad,
                               int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    struct client_ssl *cs = ptr;
    if (cs != NULL) {
        client_unref(cs->c);
        free(cs);
    }
}

/* Takes ownership of `sess`. */
static void client_store(struct tg_tls_client *c, const char *host,
                         SSL_SESSION *sess)
{
    SSL_SESSION *old = NULL;
    char *copy = NULL;
    pthread_mutex_lock(&c->lock);
    size_t i;
    for (i = 0; i < c->nsessions; i++)
        if (strcmp(c->sessions[i].host, host) == 0)
            break;
    if (i == c->nsessions) {
        if (c->nsessions < CLIENT_SESSIONS_MAX) {
            i = c->nsessions;
        } else {
            i = c->evict;
            c->evict = (c->evict + 1) % CLIENT_SESSIONS_MAX;
        }
        pthread_mutex_unlock(&c->lock);
        copy = strdup(host);
        if (copy == NULL) {
            SSL_SESSION_free(sess);
            return;
        }
        pthread_mutex_lock(&c->lock);
        /* Another thread may have filled the slot meanwhile: re-check. */
        size_t j;
        for (j = 0; j < c->nsessions; j++)
            if (strcmp(c->sessions[j].host, host) == 0)
                break;
        if (j < c->nsessions) {
            i = j;
        } else if (c->nsessions < CLIENT_SESSIONS_MAX) {
            i = c->nsessions++;
            c->sessions[i].host = copy;
            c->sessions[i].sess = NULL;
            copy = NULL;
        } else {
            free(c->sessions[i].host);
            c->sessions[i].host = copy;
            copy = NULL;
        }
    }
    old = c->sessions[i].sess;
    c->sessions[i].sess = sess;
    pthread_mutex_unlock(&c->lock);
    free(copy);
    SSL_SESSION_free(old);
}

static int on_client_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct client_ssl *cs = SSL_get_ex_data(ssl, ring.ssl_client_idx);
    if (cs == NULL || SSL_SESSION_is_resumable(sess) != 1)
        return 0;
    client_store(cs->c, cs->host, sess);
    return 1; /* we keep the reference */
}

struct tg_tls_client *tg_tls_client_new(const struct tg_config_upstream *u,
                                        char *err, size_t errlen,
                                        struct tg_config_mark *where)
{
    *where = u->mark;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (!ring.ready) {
        snprintf(err, errlen, "TLS is not initialised (tg_tls_global_init)");
        return NULL;
    }
    struct tg_tls_client *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->lock, NULL);
    c->verify = u->tls_verify;
    if (u->tls_server_name != NULL &&
        (c->server_name = strdup(u->tls_server_name)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    SSL_CTX *ctx = c->ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        goto fail_ssl;
    SSL_CTX_set_app_data(ctx, c);
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set1_groups_list(ctx, TLS_GROUPS) != 1 ||
        SSL_CTX_set_alpn_protos(ctx, alpn_http1, sizeof(alpn_http1) - 1) != 0)
        goto fail_ssl;
    /* No SSL_OP_IGNORE_UNEXPECTED_EOF here: a response whose end is the
     * connection's end must not be taken as complete when cut short. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, TLS_MODES);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
                                            SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_client_new_session);
    if (u->tls_ca != NULL) {
        X509_STORE *store = ca_store_load(u->tls_ca, "tls_ca", NULL, NULL, err,
                                          errlen);
        if (store == NULL)
            goto fail;
        SSL_CTX_set_cert_store(ctx, store); /* takes ownership */
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(err, errlen, "upstream %s: cannot load the system trust "
                 "store: %s", u->name ? u->name : "", ssl_reason());
        goto fail;
    }
    SSL_CTX_set_verify(ctx, c->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    if (!c->verify)
        tg_log_warn("upstream %s: tls_verify is off: its certificates are not "
                    "checked", u->name ? u->name : "");
    ERR_clear_error();
    return c;

fail_ssl:
    snprintf(err, errlen, "upstream %s: cannot set up a TLS context: %s",
             u->name ? u->name : "", ssl_reason());
fail:
    client_unref(c);
    return NULL;
}

void tg_tls_client_free(struct tg_tls_client *c)
{
    client_unref(c);
}

SSL *tg_tls_client_connect(struct tg_tls_client *c, int fd, const char *host)
{
    const char *name = c->server_name != NULL ? c->server_name : host;
    if (name == NULL || host == NULL)
        return NULL;
    size_t hlen = strlen(host);
    struct client_ssl *cs = malloc(sizeof(*cs) + hlen + 1);
    if (cs == NULL)
        return NULL;
    cs->c = c;
    memcpy(cs->host, host, hlen + 1);
    SSL *ssl = SSL_new(c->ctx);
    if (ssl == NULL) {
        free(cs);
        goto fail;
    }
    atomic_fetch_add(&c->refs, 1);
    if (SSL_set_ex_data(ssl, ring.ssl_client_idx, cs) != 1) {
        client_unref(c);
        free(cs);
        goto fail;
    }
    if (!tg_tls_bio_attach(ssl, fd))
        goto fail;
    SSL_set_mode(ssl, TLS_MODES);
    SSL_set_connect_state(ssl);
    char ip[INET6_ADDRSTRLEN + 1];
    bool is_ip = ip_literal(name, strlen(name), ip, sizeof(ip));
    /* SNI carries names only (RFC 6066). */
    if (!is_ip && SSL_set_tlsext_host_name(ssl, name) != 1)
        goto fail;
    if (c->verify) {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip)
                       : SSL_set1_host(ssl, name);
        if (ok != 1)
            goto fail;
    }
    SSL_SESSION *sess = NULL;
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->nsessions; i++)
        if (strcmp(c->sessions[i].host, host) == 0) {
            sess = c->sessions[i].sess;
            if (sess != NULL)
                SSL_SESSION_up_ref(sess);
            break;
        }
    pthread_mutex_unlock(&c->lock);
    if (sess != NULL) {
        SSL_set_session(ssl, sess); /* a failure only costs the resumption */
        SSL_SESSION_free(sess);
    }
    ERR_clear_error();
    return ssl;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

void tg_tls_client_save_session(struct tg_tls_client *c, SSL *ssl)
{
    struct client_ssl *cs = SSL_get_ex_data(ssl, ring.ssl_client_idx);
    if (cs == NULL || cs->c != c)
        return;
    SSL_SESSION *sess = SSL_get1_session(ssl);
    if (sess == NULL)
        return;
    /* With TLS 1.3 the session resumes only once a ticket has arrived;
     * on_client_new_session stores it then. */
    if (SSL_SESSION_is_resumable(sess) != 1 || SSL_session_reused(ssl)) {
        SSL_SESSION_free(sess);
        return;
    }
    client_store(c, cs->host, sess);
}

/* ---- process-wide ---------------------------------------------------------- */

int tg_tls_global_init(void)
{
    if (ring.ready)
        return 0;
    if (OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS |
                             OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL) != 1)
        return -1;
    if (tg_tls_bio_init() < 0)
        goto fail;
    ring.cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    if (ring.cipher == NULL)
        goto fail;
    ring.ssl_server_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL,
                                               on_ssl_server_free);
    ring.ssl_client_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL,
                                               on_ssl_client_free);
    ring.ssl_covers_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, on_covers_memo_free);
    if (ring.ssl_server_idx < 0 || ring.ssl_client_idx < 0 || ring.ssl_covers_idx < 0)
        goto fail;
    ring.map_len = 4096;
    void *page = mmap(NULL, ring.map_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        goto fail;
    ring.keys = page;
    /* Best effort: no swap, no core dump. */
    if (mlock(page, ring.map_len) != 0)
        tg_log_debug("tls: cannot lock the ticket keys in memory: %s",
                     strerror(errno));
    (void)madvise(page, ring.map_len, MADV_DONTDUMP);
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* Writers (rotation, rare) must not starve behind handshakes. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&ring.lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc != 0) {
        munmap(page, ring.map_len);
        ring.keys = NULL;
        goto fail;
    }
    if (ticket_key_new(&ring.keys[0], tls_now_ms()) < 0) {
        pthread_rwlock_destroy(&ring.lock);
        munmap(page, ring.map_len);
        ring.keys = NULL;
        goto fail;
    }
    ring.ready = true;
    return 0;
fail:
    EVP_CIPHER_free(ring.cipher);
    ring.cipher = NULL;
    ERR_clear_error();
    return -1;
}

void tg_tls_global_cleanup(void)
{
    if (!ring.ready)
        return;
    ring.ready = false;
    OPENSSL_cleanse(ring.keys, ring.map_len);
    munlock(ring.keys, ring.map_len);
    munmap(ring.keys, ring.map_len);
    ring.keys = NULL;
    pthread_rwlock_destroy(&ring.lock);
    EVP_CIPHER_free(ring.cipher);
    ring.cipher = NULL;
    CRYPTO_free_ex_index(CRYPTO_EX_INDEX_SSL, ring.ssl_server_idx);
    CRYPTO_free_ex_index(CRYPTO_EX_INDEX_SSL, ring.ssl_client_idx);
    CRYPTO_free_ex_index(CRYPTO_EX_INDEX_SSL, ring.ssl_covers_idx);
    ring.ssl_server_idx = ring.ssl_client_idx = ring.ssl_covers_idx = -1;
    tg_tls_bio_cleanup();
}
