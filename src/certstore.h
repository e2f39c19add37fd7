/* Server certificates, and the store SNI consults.
 *
 * A certificate (struct tg_cert) is a leaf with its chain and private key,
 * read, parsed and checked once, then immutable and reference-counted: the
 * same object serves every snapshot and connection that holds it.
 *
 * The store (struct tg_certstore) is the set of certificates the gateway
 * serves, published as an immutable snapshot: the certificates in order of
 * precedence and an index from DNS name to the certificate per key type.
 * Any thread takes a reference to the current snapshot (a handshake keeps
 * the one it started with until its SSL is freed); writers build a new
 * snapshot beside it and swap it in, so readers never wait for a writer's
 * work and never see half of a change.
 *
 * Two sources fill it: the configuration's tls.certificates, replaced as a
 * whole when a snapshot is installed (start, reload), and certificates put
 * under a name at run time (the ACME client), which stay across reloads.
 * Not here: TLS settings and contexts (tls_server.c), OCSP, ACME itself. */
#ifndef TG_CERTSTORE_H
#define TG_CERTSTORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

/* Key types a name can have one certificate of each; OpenSSL offers each
 * client the one its signature algorithms allow. */
enum tg_cert_kind {
    TG_CERT_RSA = 0,
    TG_CERT_ECDSA,
    TG_CERT_KINDS,
};

/* One certificate. Immutable once made; share it with tg_cert_ref. */
struct tg_cert {
    _Atomic unsigned refs;
    X509 *x509;             /* the leaf */
    STACK_OF(X509) * chain; /* what follows it in the file, in order */
    EVP_PKEY *pkey;
    enum tg_cert_kind kind;
    char **names; /* DNS names SNI selects it for: the SAN's, else
                                the last CN; lower case, no trailing dot,
                                wildcards as "*.example.com" */
    size_t nnames;
    char *label;      /* the certificate file, or the caller's label */
    bool self_issued; /* issuer == subject: self-signed (`make certs`), so
                         no browser trusts it without an exception */
};

/* Loads a certificate file (PEM: the certificate, then its chain) and its
 * unencrypted PEM key, and checks they belong together (same algorithm,
 * same key) and that the key is RSA or ECDSA. Names that SNI could never
 * select (a wildcard that is not a whole left-most label) are left out
 * with a warning; expired, not yet valid and soon expiring certificates
 * load with a warning. Returns the certificate with one reference, or NULL
 * with a message naming the file in `err` (the messages `tollgate -t`
 * prints, e.g. "key 'k.pem' does not match certificate 'c.pem'"). Either
 * path NULL is an error too. Any thread (it logs). */
struct tg_cert *tg_cert_load(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* The same from PEM text in memory (what an ACME client holds); `label`
 * names it in messages and logs. The buffers are only read. */
struct tg_cert *tg_cert_from_pem(const char *label, const char *cert_pem, size_t cert_len,
                                 const char *key_pem, size_t key_len, char *err, size_t errlen);

/* Whether OpenSSL accepts the certificate for a server at the default
 * security level (a 1024-bit RSA key is refused, say). 0, or -1 with
 * "certificate 'FILE' cannot be used: REASON" in err. */
int tg_cert_check_usable(const struct tg_cert *c, char *err, size_t errlen);

/* Whether SNI for `name` (a DNS name, or a "*.example.com" wildcard) can
 * select this certificate: one of its names is `name`, or a wildcard of
 * its covers it. Case-insensitive. */
bool tg_cert_has_name(const struct tg_cert *c, const char *name);

void tg_cert_ref(struct tg_cert *c);
/* Drops a reference; the last frees the certificate (the key is wiped by
 * OpenSSL). NULL is fine. Any thread. */
void tg_cert_unref(struct tg_cert *c);

/* "RSA" or "ECDSA". */
const char *tg_cert_kind_name(enum tg_cert_kind k);

/* ---- the store ------------------------------------------------------------ */

struct tg_certstore;
struct tg_certstore_snap;

/* The certificates serving one name: one per key type, or NULL. Lives as
 * long as the snapshot it came from. */
struct tg_cert_choice {
    struct tg_cert *cert[TG_CERT_KINDS];
};

/* A new, empty store with one reference. NULL on allocation failure. */
struct tg_certstore *tg_certstore_new(void);
void tg_certstore_ref(struct tg_certstore *st);
/* Drops a reference; the last frees the store and drops its snapshot
 * (snapshots readers still hold stay valid until released). Any thread. */
void tg_certstore_unref(struct tg_certstore *st);

/* Replaces the certificates that came from the configuration with
 * `certs` (in config order; the store takes its own references), keeping
 * those put at run time. The first of them is the default certificate:
 * it serves clients that send no SNI or a name nothing matches (with the
 * other key type for its first name, when there is one). Returns 0, or -1
 * on allocation failure with the store unchanged. Any thread; writers are
 * serialised. */
int tg_certstore_set_config(struct tg_certstore *st, struct tg_cert *const *certs, size_t n);

/* Adds the certificate stored under `name` (a DNS name or "*.domain") for
 * cert's key type, or replaces the one already there: an RSA and an ECDSA
 * certificate for a name are two entries. The certificate must carry
 * `name` (tg_cert_has_name) and be usable (tg_cert_check_usable). Run-time
 * certificates come before the configuration's: for a name both carry
 * exactly, the run-time one is served (so a renewed ACME certificate
 * replaces a placeholder listed in the config); exact names still beat
 * wildcards. When there is no configured certificate, the first one put
 * is the default. Connections already in their handshake keep the
 * snapshot they started with; the next handshake sees the change. Takes
 * its own reference to `cert`. Returns 0, or -1 with a message in err
 * (may be NULL). Any thread. */
int tg_certstore_put(struct tg_certstore *st, const char *name, struct tg_cert *cert, char *err,
                     size_t errlen);

/* Removes what tg_certstore_put stored under `name` (both key types).
 * Returns how many certificates went; 0 also when the store could not
 * allocate the new snapshot (nothing changed then). Any thread. */
size_t tg_certstore_remove(struct tg_certstore *st, const char *name);

/* The current snapshot, with a reference for the caller. Never NULL once
 * the store exists (an empty store has an empty snapshot). Any thread:
 * a read lock held for a pointer load and an increment. */
struct tg_certstore_snap *tg_certstore_acquire(struct tg_certstore *st);
/* Drops a snapshot reference; the last frees it (and its certificate
 * references). NULL is fine. Any thread. */
void tg_certstore_release(struct tg_certstore_snap *s);

/* The certificates for a server name as sent in SNI (`n` bytes, any case,
 * a trailing dot ignored): the exact name first, else a wildcard for its
 * first label ("*.example.com" covers "a.example.com", not
 * "a.b.example.com" nor "example.com"); per key type, the first in order
 * of precedence. NULL when nothing matches. Pure; any thread. */
const struct tg_cert_choice *tg_certstore_lookup(const struct tg_certstore_snap *s,
                                                 const char *name, size_t n);
/* The default certificates, NULL when the snapshot is empty. */
const struct tg_cert_choice *tg_certstore_default(const struct tg_certstore_snap *s);
/* How many certificates the snapshot holds, and which swap made it (1 for
 * the first change of a new store, then counting up). */
size_t tg_certstore_count(const struct tg_certstore_snap *s);
/* The i-th certificate (run-time ones first, then the configuration's),
 * valid while the snapshot is held; *put_as (when asked) is the name it
 * was put under, NULL for a configured one. NULL past the end. */
const struct tg_cert *tg_certstore_at(const struct tg_certstore_snap *s, size_t i,
                                      const char **put_as);
uint64_t tg_certstore_generation(const struct tg_certstore_snap *s);

/* Warns (log) about each of `certs` that SNI would never choose if they
 * were the configuration's certificates: an earlier certificate of the
 * same key type covers each of its names. Load time, for `-t` and
 * reloads. */
void tg_certstore_warn_unserved(struct tg_cert *const *certs, size_t n);

/* ---- for the TLS modules ---------------------------------------------------- */

/* Loads a PEM bundle of CA certificates as a trust store; `what` names the
 * key in messages ("client_ca", "tls_ca"). With `names`, also the subjects
 * to advertise to clients; with `digest`, a SHA-256 over the file. NULL
 * with a message naming the file in err. */
X509_STORE *tg_cert_load_ca(const char *path, const char *what, STACK_OF(X509_NAME) * *names,
                            unsigned char digest[32], char *err, size_t errlen);

/* "10.0.0.1", "::1" or "[::1]" (n bytes) -> the address without brackets,
 * NUL-terminated in buf; false for anything else (a name). */
bool tg_cert_ip_literal(const char *s, size_t n, char *buf, size_t cap);

#endif
