/* Server certificates and the swappable store SNI consults: certificates
 * are parsed once and shared by reference; the store publishes immutable
 * snapshots (certificates in precedence order plus a name index) that
 * readers hold by reference while writers build and swap the next one.
 *
 * It knows nothing of TLS settings, contexts or connections (tls_server.c
 * installs the chosen certificates on each handshake), and reads no
 * configuration: callers hand it certificates. */
#include "certstore.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "file.h"
#include "log.h"
#include "str.h"

#define MAX_PEM_FILE (4 << 20) /* bytes: a CA bundle can be large */
#define MAX_NAME 253           /* DNS name without the trailing dot */
#define EXPIRY_WARN_S (14 * 86400)

static const char *const kind_names[TG_CERT_KINDS] = {"RSA", "ECDSA"};

const char *tg_cert_kind_name(enum tg_cert_kind k)
{
    return (unsigned)k < TG_CERT_KINDS ? kind_names[k] : "unknown";
}

/* ---- helpers ---------------------------------------------------------------- */

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

static int key_kind(const EVP_PKEY *k)
{
    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
        return TG_CERT_RSA;
    case EVP_PKEY_EC:
        return TG_CERT_ECDSA;
    default:
        return -1;
    }
}

/* PEM text: read from a file (owned, wiped when freed) or the caller's. */
struct pem_data {
    char *p;
    size_t n;
    bool owned;
};

/* Reads a whole (small) file. */
static int file_read(const char *path, const char *what, struct pem_data *out, char *err,
                     size_t errlen)
{
    out->owned = true;
    switch (tg_file_read(path, MAX_PEM_FILE, &out->p, &out->n)) {
    case TG_FILE_OK:
        return 0;
    case TG_FILE_NOT_REGULAR:
        snprintf(err, errlen, "%s '%s' is not a regular file of at most %d MiB", what, path,
                 MAX_PEM_FILE >> 20);
        return -1;
    default:
        snprintf(err, errlen, "cannot read %s '%s': %s", what, path,
                 errno == ENOMEM ? "out of memory" : strerror(errno));
        return -1;
    }
}

static void pem_free(struct pem_data *d)
{
    if (d->owned && d->p != NULL) {
        OPENSSL_cleanse(d->p, d->n);
        free(d->p);
    }
    d->p = NULL;
    d->n = 0;
}

static bool contains(const struct pem_data *d, const char *s)
{
    return memmem(d->p, d->n, s, strlen(s)) != NULL;
}

/* Every PEM certificate in `d`, in order. Returns the count, or -1 with err
 * set (a block that does not parse). */
static int pem_certs(const struct pem_data *d, const char *what, const char *path,
                     STACK_OF(X509) * out, char *err, size_t errlen)
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
            if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                ERR_clear_error();
                break;
            }
            snprintf(err, errlen, "%s '%s': certificate %d does not parse: %s", what, path, n + 1,
                     ssl_reason());
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

X509_STORE *tg_cert_load_ca(const char *path, const char *what, STACK_OF(X509_NAME) * *names,
                            unsigned char digest[32], char *err, size_t errlen)
{
    struct pem_data d;
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
            snprintf(err, errlen, "%s '%s': cannot add certificate %d: %s", what, path, i + 1,
                     ssl_reason());
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
    pem_free(&d);
    return store;

fail:
    X509_STORE_free(store);
    if (names != NULL) {
        sk_X509_NAME_pop_free(*names, X509_NAME_free);
        *names = NULL;
    }
    sk_X509_pop_free(certs, X509_free);
    pem_free(&d);
    return NULL;
}

bool tg_cert_ip_literal(const char *s, size_t n, char *buf, size_t cap)
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
    if (ASN1_TIME_to_tm(t, &tm) != 1 || strftime(out, cap, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
        snprintf(out, cap, "(unreadable date)");
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

/* ---- certificates --------------------------------------------------------- */

static int pem_password_none(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag;
    *(bool *)u = true;
    return -1;
}

static int cert_add_name(struct tg_cert *c, const char *p, size_t n)
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
                        c->label, buf);
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
static int cert_collect_names(struct tg_cert *c)
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
    int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, last)));
    if (len < 0) {
        ERR_clear_error();
        return 0;
    }
    rc = cert_add_name(c, (const char *)utf8, (size_t)len);
    OPENSSL_free(utf8);
    return rc;
}

static void cert_warn_dates(const struct tg_cert *c)
{
    char when[64];
    const ASN1_TIME *na = X509_get0_notAfter(c->x509);
    const ASN1_TIME *nb = X509_get0_notBefore(c->x509);
    time_t soon = time(NULL) + EXPIRY_WARN_S;
    if (X509_cmp_current_time(na) < 0) {
        format_time(na, when, sizeof(when));
        tg_log_warn("certificate %s expired on %s; serving it anyway, clients "
                    "will refuse it",
                    c->label, when);
    } else if (X509_cmp_current_time(nb) > 0) {
        format_time(nb, when, sizeof(when));
        tg_log_warn("certificate %s is not valid before %s; serving it anyway, "
                    "clients will refuse it until then",
                    c->label, when);
    } else if (X509_cmp_time(na, &soon) < 0) {
        format_time(na, when, sizeof(when));
        tg_log_warn("certificate %s expires on %s", c->label, when);
    }
    ERR_clear_error();
}

static void cert_free(struct tg_cert *c)
{
    if (c == NULL)
        return;
    X509_free(c->x509);
    sk_X509_pop_free(c->chain, X509_free);
    EVP_PKEY_free(c->pkey);
    for (size_t i = 0; i < c->nnames; i++)
        free(c->names[i]);
    free(c->names);
    free(c->label);
    free(c);
}

/* A new certificate named `label`, with the leaf and chain of `d`. */
static struct tg_cert *cert_parse_chain(const struct pem_data *d, const char *label, char *err,
                                        size_t errlen)
{
    struct tg_cert *c = calloc(1, sizeof(*c));
    STACK_OF(X509) *all = sk_X509_new_null();
    if (c == NULL || all == NULL || (c->label = strdup(label)) == NULL) {
        snprintf(err, errlen, "out of memory reading '%s'", label);
        goto fail;
    }
    atomic_init(&c->refs, 1);
    int n = pem_certs(d, "certificate file", label, all, err, errlen);
    if (n < 0)
        goto fail;
    if (n == 0) {
        if (contains(d, "PRIVATE KEY-----"))
            snprintf(err, errlen,
                     "'%s' holds a private key but no "
                     "certificate (cert must name the certificate file)",
                     label);
        else if (contains(d, "-----BEGIN "))
            snprintf(err, errlen, "'%s' holds no PEM certificate", label);
        else
            snprintf(err, errlen,
                     "'%s' is not a PEM file (no '-----BEGIN "
                     "CERTIFICATE-----' block)",
                     label);
        goto fail;
    }
    c->x509 = sk_X509_shift(all);
    c->chain = all;
    c->self_issued =
        X509_NAME_cmp(X509_get_issuer_name(c->x509), X509_get_subject_name(c->x509)) == 0;
    return c;

fail:
    sk_X509_pop_free(all, X509_free);
    cert_free(c);
    return NULL;
}

/* Adds the key of `k` (named `key_label`) to `c` and checks they belong
 * together; then the names and dates. Frees `c` on failure. */
static struct tg_cert *cert_parse_key(struct tg_cert *c, const struct pem_data *k,
                                      const char *key_label, char *err, size_t errlen)
{
    const char *cert_label = c->label;
    BIO *b = BIO_new_mem_buf(k->p, (int)k->n);
    if (b == NULL) {
        snprintf(err, errlen, "out of memory reading '%s'", key_label);
        goto fail;
    }
    bool encrypted = false;
    ERR_clear_error();
    c->pkey = PEM_read_bio_PrivateKey(b, NULL, pem_password_none, &encrypted);
    if (c->pkey == NULL) {
        if (encrypted)
            snprintf(err, errlen,
                     "key '%s' is encrypted; tollgate reads "
                     "unencrypted keys only (protect the file with "
                     "permissions instead)",
                     key_label);
        else if (!contains(k, "-----BEGIN "))
            snprintf(err, errlen,
                     "'%s' is not a PEM file (no '-----BEGIN "
                     "PRIVATE KEY-----' block)",
                     key_label);
        else if (!contains(k, "PRIVATE KEY-----"))
            snprintf(err, errlen, "'%s' holds no PEM private key", key_label);
        else
            snprintf(err, errlen, "key '%s' does not parse: %s", key_label, ssl_reason());
        ERR_clear_error();
        goto fail;
    }
    const EVP_PKEY *pub = X509_get0_pubkey(c->x509);
    if (pub == NULL) {
        snprintf(err, errlen, "certificate '%s': unreadable public key: %s", cert_label,
                 ssl_reason());
        goto fail;
    }
    if (EVP_PKEY_get_base_id(pub) != EVP_PKEY_get_base_id(c->pkey)) {
        snprintf(err, errlen,
                 "mismatched algorithms: certificate '%s' has an "
                 "%s key but '%s' holds an %s key",
                 cert_label, key_type_name(pub), key_label, key_type_name(c->pkey));
        goto fail;
    }
    if (EVP_PKEY_eq(pub, c->pkey) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "key '%s' does not match certificate '%s'", key_label, cert_label);
        goto fail;
    }
    int kind = key_kind(c->pkey);
    if (kind < 0) {
        snprintf(err, errlen,
                 "certificate '%s' has an %s key; RSA and ECDSA "
                 "certificates are supported",
                 cert_label, key_type_name(c->pkey));
        goto fail;
    }
    c->kind = (enum tg_cert_kind)kind;
    if (cert_collect_names(c) < 0) {
        snprintf(err, errlen, "out of memory reading '%s'", cert_label);
        goto fail;
    }
    cert_warn_dates(c);
    BIO_free(b);
    return c;

fail:
    BIO_free(b);
    cert_free(c);
    return NULL;
}

struct tg_cert *tg_cert_load(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (cert_file == NULL) {
        snprintf(err, errlen,
                 "key '%s' has no certificate: a certificate "
                 "entry needs cert as well as key",
                 key_file != NULL ? key_file : "");
        return NULL;
    }
    if (key_file == NULL) {
        snprintf(err, errlen, "certificate '%s' has no key", cert_file);
        return NULL;
    }
    /* The certificate first: with a bad one, the key does not matter. */
    struct pem_data d = {0}, k = {0};
    struct tg_cert *c = NULL;
    if (file_read(cert_file, "certificate file", &d, err, errlen) == 0 &&
        (c = cert_parse_chain(&d, cert_file, err, errlen)) != NULL) {
        if (file_read(key_file, "key file", &k, err, errlen) == 0) {
            c = cert_parse_key(c, &k, key_file, err, errlen);
        } else {
            cert_free(c);
            c = NULL;
        }
    }
    pem_free(&k);
    pem_free(&d);
    return c;
}

struct tg_cert *tg_cert_from_pem(const char *label, const char *cert_pem, size_t cert_len,
                                 const char *key_pem, size_t key_len, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (label == NULL || cert_pem == NULL || key_pem == NULL || cert_len > MAX_PEM_FILE ||
        key_len > MAX_PEM_FILE) {
        snprintf(err, errlen, "certificate '%s': no certificate or key, or too large",
                 label != NULL ? label : "");
        return NULL;
    }
    const struct pem_data d = {(char *)cert_pem, cert_len, false};
    const struct pem_data k = {(char *)key_pem, key_len, false};
    struct tg_cert *c = cert_parse_chain(&d, label, err, errlen);
    return c != NULL ? cert_parse_key(c, &k, label, err, errlen) : NULL;
}

int tg_cert_check_usable(const struct tg_cert *c, char *err, size_t errlen)
{
    SSL_CTX *scratch = SSL_CTX_new(TLS_server_method());
    int rc = 0;
    if (scratch == NULL || SSL_CTX_use_cert_and_key(scratch, c->x509, c->pkey, c->chain, 1) != 1) {
        snprintf(err, errlen, "certificate '%s' cannot be used: %s", c->label, ssl_reason());
        rc = -1;
    }
    SSL_CTX_free(scratch);
    ERR_clear_error();
    return rc;
}

bool tg_cert_has_name(const struct tg_cert *c, const char *name)
{
    char buf[MAX_NAME + 1];
    if (!name_normalise(name, strlen(name), buf))
        return false;
    const char *dot = strchr(buf, '.');
    for (size_t i = 0; i < c->nnames; i++) {
        const char *have = c->names[i];
        if (strcmp(have, buf) == 0)
            return true;
        /* "*.example.com" covers "a.example.com" (not a wildcard name). */
        if (have[0] == '*' && buf[0] != '*' && dot != NULL && dot != buf &&
            strcmp(have + 1, dot) == 0)
            return true;
    }
    return false;
}

void tg_cert_ref(struct tg_cert *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void tg_cert_unref(struct tg_cert *c)
{
    if (c != NULL && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        cert_free(c);
}

/* ---- snapshots ---------------------------------------------------------------
 *
 * Every name of every certificate gets a group: per key type, the first
 * certificate (in precedence order) carrying exactly that name, else, for
 * an exact name, the first whose wildcard covers it. Names with the same
 * choice share a group. The default group is the default certificate,
 * completed with the other key type for its first name. */

struct entry {
    struct tg_cert *cert; /* a reference */
    char *name;           /* put under this name; NULL: from the config */
};

struct snap_name {
    const char *name; /* owned by the certificate that carries it */
    size_t group;
};

struct tg_certstore_snap {
    _Atomic unsigned refs;
    uint64_t generation;
    struct entry *entries; /* run-time ones first, then the config's */
    size_t n;
    struct tg_cert_choice *groups;
    size_t ngroups;
    bool has_default;
    size_t default_group;
    struct snap_name *names; /* sorted by name */
    size_t nnames;
    bool *used; /* per entry: some group serves it */
};

struct name_ref {
    const char *name;
    size_t entry;
};

static int cmp_name_ref(const void *a, const void *b)
{
    const struct name_ref *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c != 0)
        return c;
    return (x->entry > y->entry) - (x->entry < y->entry);
}

static int cmp_snap_name(const void *a, const void *b)
{
    return strcmp(((const struct snap_name *)a)->name, ((const struct snap_name *)b)->name);
}

static int cmp_key_name(const void *key, const void *elem)
{
    return strcmp(key, ((const struct snap_name *)elem)->name);
}

/* The run of refs for `name` in the sorted refs array, as [*lo, *hi). */
static bool refs_find(const struct name_ref *refs, size_t n, const char *name, size_t *lo,
                      size_t *hi)
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

static void fill_kinds(const struct entry *entries, const struct name_ref *refs, size_t lo,
                       size_t hi, struct tg_cert_choice *g)
{
    for (size_t i = lo; i < hi; i++) {
        struct tg_cert *c = entries[refs[i].entry].cert;
        if (g->cert[c->kind] == NULL)
            g->cert[c->kind] = c;
    }
}

static struct tg_cert_choice select_group(const struct entry *entries, const struct name_ref *refs,
                                          size_t nrefs, const char *name)
{
    struct tg_cert_choice g = {{NULL}};
    size_t lo, hi;
    if (refs_find(refs, nrefs, name, &lo, &hi))
        fill_kinds(entries, refs, lo, hi, &g);
    const char *dot = strchr(name, '.');
    if (name[0] != '*' && dot != NULL && dot != name) {
        char wild[MAX_NAME + 2];
        snprintf(wild, sizeof(wild), "*%s", dot);
        if (refs_find(refs, nrefs, wild, &lo, &hi))
            fill_kinds(entries, refs, lo, hi, &g);
    }
    return g;
}

static size_t group_intern(struct tg_certstore_snap *s, const struct tg_cert_choice *g)
{
    for (size_t i = 0; i < s->ngroups; i++)
        if (memcmp(&s->groups[i], g, sizeof(*g)) == 0)
            return i;
    s->groups[s->ngroups] = *g;
    return s->ngroups++;
}

static void snap_free(struct tg_certstore_snap *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++) {
        tg_cert_unref(s->entries[i].cert);
        free(s->entries[i].name);
    }
    free(s->entries);
    free(s->groups);
    free(s->names);
    free(s->used);
    free(s);
}

static void entries_free(struct entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        tg_cert_unref(e[i].cert);
        free(e[i].name);
    }
    free(e);
}

/* Builds the index over `entries` (taking them over, freed on failure too).
 * `def` is the entry of the default certificate. */
static struct tg_certstore_snap *snap_build(struct entry *entries, size_t n, size_t def)
{
    struct tg_certstore_snap *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        entries_free(entries, n);
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->entries = entries;
    s->n = n;
    size_t nrefs = 0;
    for (size_t i = 0; i < n; i++)
        nrefs += entries[i].cert->nnames;
    struct name_ref *refs = calloc(nrefs ? nrefs : 1, sizeof(*refs));
    s->names = calloc(nrefs ? nrefs : 1, sizeof(*s->names));
    s->groups = calloc(nrefs + 1, sizeof(*s->groups));
    s->used = calloc(n ? n : 1, sizeof(*s->used));
    if (refs == NULL || s->names == NULL || s->groups == NULL || s->used == NULL) {
        free(refs);
        snap_free(s);
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < entries[i].cert->nnames; j++)
            refs[k++] = (struct name_ref){entries[i].cert->names[j], i};
    qsort(refs, nrefs, sizeof(*refs), cmp_name_ref);

    if (n > 0) {
        const struct tg_cert *first = entries[def].cert;
        struct tg_cert_choice g = {{NULL}};
        if (first->nnames > 0)
            g = select_group(entries, refs, nrefs, first->names[0]);
        g.cert[first->kind] = entries[def].cert;
        s->default_group = group_intern(s, &g);
        s->has_default = true;
    }
    /* refs is sorted by name, then by precedence; take each name once. */
    for (size_t i = 0; i < nrefs; i++) {
        if (i > 0 && strcmp(refs[i].name, refs[i - 1].name) == 0)
            continue;
        struct tg_cert_choice g = select_group(entries, refs, nrefs, refs[i].name);
        s->names[s->nnames].name = refs[i].name;
        s->names[s->nnames].group = group_intern(s, &g);
        s->nnames++;
    }
    free(refs);
    qsort(s->names, s->nnames, sizeof(*s->names), cmp_snap_name);
    for (size_t i = 0; i < n; i++)
        for (size_t g = 0; g < s->ngroups && !s->used[i]; g++)
            s->used[i] = s->groups[g].cert[entries[i].cert->kind] == entries[i].cert;
    return s;
}

const struct tg_cert_choice *tg_certstore_lookup(const struct tg_certstore_snap *s, const char *p,
                                                 size_t n)
{
    char buf[MAX_NAME + 2];
    if (s->nnames == 0 || !name_normalise(p, n, buf + 1) || strchr(buf + 1, '*') != NULL)
        return NULL;
    const struct snap_name *hit =
        bsearch(buf + 1, s->names, s->nnames, sizeof(*s->names), cmp_key_name);
    if (hit != NULL)
        return &s->groups[hit->group];
    char *dot = strchr(buf + 1, '.');
    if (dot == NULL || dot == buf + 1)
        return NULL;
    dot[-1] = '*';
    hit = bsearch(dot - 1, s->names, s->nnames, sizeof(*s->names), cmp_key_name);
    return hit != NULL ? &s->groups[hit->group] : NULL;
}

const struct tg_cert_choice *tg_certstore_default(const struct tg_certstore_snap *s)
{
    return s->has_default ? &s->groups[s->default_group] : NULL;
}

size_t tg_certstore_count(const struct tg_certstore_snap *s)
{
    return s->n;
}

const struct tg_cert *tg_certstore_at(const struct tg_certstore_snap *s, size_t i,
                                      const char **put_as)
{
    if (i >= s->n)
        return NULL;
    if (put_as != NULL)
        *put_as = s->entries[i].name;
    return s->entries[i].cert;
}

uint64_t tg_certstore_generation(const struct tg_certstore_snap *s)
{
    return s->generation;
}

void tg_certstore_release(struct tg_certstore_snap *s)
{
    if (s != NULL && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        snap_free(s);
}

void tg_certstore_warn_unserved(struct tg_cert *const *certs, size_t n)
{
    struct entry *e = calloc(n ? n : 1, sizeof(*e));
    if (e == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        tg_cert_ref(certs[i]);
        e[i].cert = certs[i];
    }
    struct tg_certstore_snap *s = snap_build(e, n, 0);
    for (size_t i = 0; s != NULL && i < s->n; i++)
        if (!s->used[i])
            tg_log_warn("certificate %s is never served: an earlier %s "
                        "certificate covers each of its names",
                        s->entries[i].cert->label, tg_cert_kind_name(s->entries[i].cert->kind));
    snap_free(s);
}

/* ---- the store -----------------------------------------------------------------
 *
 * Readers take `lock` shared for as long as it takes to load `current` and
 * count a reference; a writer (one at a time, `write`) builds the next
 * snapshot without any lock readers wait on, then takes `lock` exclusive
 * for the pointer swap alone, and drops the store's reference to the old
 * snapshot, which goes when its last reader releases it. */

struct tg_certstore {
    _Atomic unsigned refs;
    pthread_mutex_t write; /* serialises writers */
    pthread_rwlock_t lock; /* guards `current` against a swap mid-acquire */
    struct tg_certstore_snap *current;
    uint64_t generation; /* under `write` */
};

struct tg_certstore *tg_certstore_new(void)
{
    struct tg_certstore *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    atomic_init(&st->refs, 1);
    st->current = snap_build(NULL, 0, 0);
    if (st->current == NULL) {
        free(st);
        return NULL;
    }
    pthread_mutex_init(&st->write, NULL);
    pthread_rwlock_init(&st->lock, NULL);
    return st;
}

void tg_certstore_ref(struct tg_certstore *st)
{
    atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed);
}

void tg_certstore_unref(struct tg_certstore *st)
{
    if (st == NULL || atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel) != 1)
        return;
    tg_certstore_release(st->current);
    pthread_rwlock_destroy(&st->lock);
    pthread_mutex_destroy(&st->write);
    free(st);
}

struct tg_certstore_snap *tg_certstore_acquire(struct tg_certstore *st)
{
    pthread_rwlock_rdlock(&st->lock);
    struct tg_certstore_snap *s = st->current;
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    pthread_rwlock_unlock(&st->lock);
    return s;
}

/* Publishes a snapshot of `entries` (taken over). Caller holds `write`. */
static int store_swap(struct tg_certstore *st, struct entry *entries, size_t n)
{
    /* Default: the first config certificate, else the first put. */
    size_t def = 0;
    while (def < n && entries[def].name != NULL)
        def++;
    if (def == n)
        def = 0;
    struct tg_certstore_snap *next = snap_build(entries, n, def);
    if (next == NULL)
        return -1;
    next->generation = ++st->generation;
    pthread_rwlock_wrlock(&st->lock);
    struct tg_certstore_snap *old = st->current;
    st->current = next;
    pthread_rwlock_unlock(&st->lock);
    tg_certstore_release(old);
    return 0;
}

/* A copy of the current entries (with references) that pass `keep`, plus
 * room for `extra` more. */
static struct entry *entries_copy(const struct tg_certstore_snap *cur, size_t extra,
                                  bool (*keep)(const struct entry *, const void *), const void *arg,
                                  size_t *n_out)
{
    struct entry *e = calloc(cur->n + extra + 1, sizeof(*e));
    if (e == NULL)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < cur->n; i++) {
        if (!keep(&cur->entries[i], arg))
            continue;
        e[n].cert = cur->entries[i].cert;
        if (cur->entries[i].name != NULL && (e[n].name = strdup(cur->entries[i].name)) == NULL) {
            entries_free(e, n);
            return NULL;
        }
        tg_cert_ref(e[n].cert);
        n++;
    }
    *n_out = n;
    return e;
}

static bool keep_put(const struct entry *e, const void *arg)
{
    (void)arg;
    return e->name != NULL;
}

int tg_certstore_set_config(struct tg_certstore *st, struct tg_cert *const *certs, size_t n)
{
    pthread_mutex_lock(&st->write);
    size_t have;
    struct entry *e = entries_copy(st->current, n, keep_put, NULL, &have);
    int rc = -1;
    if (e != NULL) {
        for (size_t i = 0; i < n; i++) {
            tg_cert_ref(certs[i]);
            e[have++].cert = certs[i];
        }
        rc = store_swap(st, e, have);
    }
    pthread_mutex_unlock(&st->write);
    return rc;
}

/* Keeps what was not put under the name `arg`. */
static bool keep_other(const struct entry *e, const void *arg)
{
    return e->name == NULL || strcmp(e->name, arg) != 0;
}

int tg_certstore_put(struct tg_certstore *st, const char *name, struct tg_cert *cert, char *err,
                     size_t errlen)
{
    char key[MAX_NAME + 1];
    if (name == NULL || !name_normalise(name, strlen(name), key)) {
        snprintf(err, errlen, "'%s' is not a DNS name", name != NULL ? name : "");
        return -1;
    }
    if (!tg_cert_has_name(cert, key)) {
        snprintf(err, errlen, "certificate %s does not carry the name %s", cert->label, key);
        return -1;
    }
    if (tg_cert_check_usable(cert, err, errlen) < 0)
        return -1;
    pthread_mutex_lock(&st->write);
    const struct tg_certstore_snap *cur = st->current;
    /* Replaced in place, so its precedence stays; new ones go after the
     * other run-time certificates (before the config's). */
    size_t n = 0, at = 0;
    struct entry *e = calloc(cur->n + 2, sizeof(*e));
    bool placed = false;
    int rc = -1;
    if (e == NULL)
        goto out;
    for (size_t i = 0; i <= cur->n; i++) {
        const struct entry *o = i < cur->n ? &cur->entries[i] : NULL;
        bool same = o != NULL && o->name != NULL && strcmp(o->name, key) == 0 &&
                    o->cert->kind == cert->kind;
        bool end_of_put = o == NULL || o->name == NULL;
        if (!placed && (same || end_of_put)) {
            e[n].name = strdup(key);
            if (e[n].name == NULL)
                goto nomem;
            tg_cert_ref(cert);
            e[n].cert = cert;
            at = n++;
            placed = true;
            if (same)
                continue;
        }
        if (o == NULL)
            break;
        e[n].cert = o->cert;
        if (o->name != NULL && (e[n].name = strdup(o->name)) == NULL)
            goto nomem;
        tg_cert_ref(o->cert);
        n++;
    }
    rc = store_swap(st, e, n);
    if (rc == 0 && !st->current->used[at])
        tg_log_warn("certificate %s put for %s is never served: an earlier %s "
                    "certificate covers each of its names",
                    cert->label, key, tg_cert_kind_name(cert->kind));
    e = NULL;
nomem:
    if (e != NULL)
        entries_free(e, n);
    if (rc < 0)
        snprintf(err, errlen, "out of memory");
out:
    pthread_mutex_unlock(&st->write);
    return rc;
}

size_t tg_certstore_remove(struct tg_certstore *st, const char *name)
{
    char key[MAX_NAME + 1];
    if (name == NULL || !name_normalise(name, strlen(name), key))
        return 0;
    pthread_mutex_lock(&st->write);
    size_t n, removed = 0;
    struct entry *e = entries_copy(st->current, 0, keep_other, key, &n);
    if (e != NULL) {
        removed = st->current->n - n;
        if (removed == 0)
            entries_free(e, n);
        else if (store_swap(st, e, n) < 0)
            removed = 0;
    }
    pthread_mutex_unlock(&st->write);
    return removed;
}
