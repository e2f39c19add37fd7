/* The certificate store (src/certstore.c): certificates parsed once, name
 * lookups with wildcards, the default certificate, certificates put and
 * replaced at run time next to the configured ones, snapshots that keep
 * what a reader took, and readers on many threads while writers swap.
 * Certificates are made in memory with OpenSSL. */
#include "../../src/certstore.c"

#include <stdlib.h>
#include <unistd.h>

#include <openssl/rsa.h>

#include "test.h"

/* ---- fixtures ------------------------------------------------------------ */

struct pem {
    char cert[8192];
    char key[8192];
};

static char logpath[128];
static char tmpdir[64];

static void add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (e == NULL) {
        fprintf(stderr, "bad extension %s\n", value);
        exit(2);
    }
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
}

static void bio_text(BIO *b, char *out, size_t cap)
{
    char *p;
    long n = BIO_get_mem_data(b, &p);
    if (n < 0 || (size_t)n >= cap) {
        fprintf(stderr, "PEM too large\n");
        exit(2);
    }
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
}

/* A self-signed certificate for `cn` with `san` ("DNS:a,DNS:b" or NULL),
 * and its key (`key`, or a new one of the kind). */
static void make_pem(struct pem *out, EVP_PKEY *key, const char *cn, const char *san)
{
    X509 *x = X509_new();
    static long serial = 1;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400 * 30);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, name);
    if (san != NULL)
        add_ext(x, NID_subject_alt_name, san);
    X509_sign(x, key, EVP_sha256());
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    bio_text(b, out->cert, sizeof(out->cert));
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL);
    bio_text(b, out->key, sizeof(out->key));
    BIO_free(b);
    X509_free(x);
}

static EVP_PKEY *ec_key, *ec_key2, *rsa_key;

static struct tg_cert *cert_of(EVP_PKEY *key, const char *cn, const char *san)
{
    struct pem p;
    char err[512];
    make_pem(&p, key, cn, san);
    struct tg_cert *c =
        tg_cert_from_pem(cn, p.cert, strlen(p.cert), p.key, strlen(p.key), err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "tg_cert_from_pem(%s): %s\n", cn, err);
        exit(2);
    }
    return c;
}

/* The label (the CN given to cert_of) of the certificate of `kind` that
 * serves `name` in the store's current snapshot, or "-" for none. */
static const char *served(struct tg_certstore *st, const char *name, enum tg_cert_kind kind)
{
    static char buf[128];
    struct tg_certstore_snap *s = tg_certstore_acquire(st);
    const struct tg_cert_choice *g =
        name != NULL ? tg_certstore_lookup(s, name, strlen(name)) : tg_certstore_default(s);
    snprintf(buf, sizeof(buf), "%s",
             g != NULL && g->cert[kind] != NULL ? g->cert[kind]->label : "-");
    tg_certstore_release(s);
    return buf;
}

static bool log_contains(const char *needle)
{
    FILE *f = fopen(logpath, "r");
    if (f == NULL)
        return false;
    char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* ---- certificates ------------------------------------------------------- */

TEST(certificate_names)
{
    struct tg_cert *c = cert_of(ec_key, "A",
                                "DNS:A.Example.COM,DNS:*.w.example.com,"
                                "DNS:*.com,DNS:x*.example.com,IP:10.0.0.1");
    /* Lower case; wildcards only as a whole left-most label over two more. */
    CHECK_EQ_INT(c->nnames, 2);
    CHECK_EQ_STR(c->names[0], "a.example.com");
    CHECK_EQ_STR(c->names[1], "*.w.example.com");
    CHECK(c->kind == TG_CERT_ECDSA);
    CHECK(tg_cert_has_name(c, "a.example.com"));
    CHECK(tg_cert_has_name(c, "A.EXAMPLE.com."));
    CHECK(tg_cert_has_name(c, "x.w.example.com"));
    CHECK(tg_cert_has_name(c, "*.w.example.com"));
    CHECK(!tg_cert_has_name(c, "w.example.com"));
    CHECK(!tg_cert_has_name(c, "y.x.w.example.com"));
    CHECK(!tg_cert_has_name(c, "b.example.com"));
    CHECK(log_contains("name '*.com' is never selected by SNI"));
    tg_cert_unref(c);
    /* No DNS name in the SAN: the CN is the name. */
    c = cert_of(rsa_key, "cn.example.com", NULL);
    CHECK_EQ_INT(c->nnames, 1);
    CHECK_EQ_STR(c->names[0], "cn.example.com");
    CHECK(c->kind == TG_CERT_RSA);
    CHECK_EQ_INT(tg_cert_check_usable(c, NULL, 0), 0);
    tg_cert_unref(c);
}

TEST(certificate_errors)
{
    struct pem a, b;
    char err[512];
    make_pem(&a, ec_key, "a", "DNS:a.test");
    make_pem(&b, ec_key2, "b", "DNS:b.test");
    /* Another key. */
    CHECK(tg_cert_from_pem("a.pem", a.cert, strlen(a.cert), b.key, strlen(b.key), err,
                           sizeof(err)) == NULL);
    CHECK(strstr(err, "does not match") != NULL);
    /* Another algorithm. */
    struct pem r;
    make_pem(&r, rsa_key, "r", "DNS:r.test");
    CHECK(tg_cert_from_pem("a.pem", a.cert, strlen(a.cert), r.key, strlen(r.key), err,
                           sizeof(err)) == NULL);
    CHECK(strstr(err, "mismatched algorithms") != NULL);
    /* No certificate; the key where the certificate goes. */
    CHECK(tg_cert_from_pem("x.pem", "nothing\n", 8, a.key, strlen(a.key), err, sizeof(err)) ==
          NULL);
    CHECK(strstr(err, "is not a PEM file") != NULL);
    CHECK(tg_cert_from_pem("x.pem", a.key, strlen(a.key), a.key, strlen(a.key), err, sizeof(err)) ==
          NULL);
    CHECK(strstr(err, "private key but no certificate") != NULL);
    CHECK(tg_cert_from_pem("x.pem", a.cert, strlen(a.cert), a.cert, strlen(a.cert), err,
                           sizeof(err)) == NULL);
    CHECK(strstr(err, "no PEM private key") != NULL);
    /* Files: messages name them. */
    char path[128];
    snprintf(path, sizeof(path), "%s/a.crt", tmpdir);
    FILE *f = fopen(path, "w");
    fputs(a.cert, f);
    fclose(f);
    CHECK(tg_cert_load(path, "/nonexistent/a.key", err, sizeof(err)) == NULL);
    CHECK(strstr(err, "cannot read key file '/nonexistent/a.key'") != NULL);
    CHECK(tg_cert_load("/nonexistent/a.crt", "/nonexistent/a.key", err, sizeof(err)) == NULL);
    CHECK(strstr(err, "cannot read certificate file '/nonexistent/a.crt'") != NULL);
    CHECK(tg_cert_load(NULL, "k.pem", err, sizeof(err)) == NULL);
    CHECK(strstr(err, "no certificate") != NULL);
    char kpath[128];
    snprintf(kpath, sizeof(kpath), "%s/a.key", tmpdir);
    f = fopen(kpath, "w");
    fputs(a.key, f);
    fclose(f);
    struct tg_cert *c = tg_cert_load(path, kpath, err, sizeof(err));
    CHECK(c != NULL);
    if (c != NULL)
        CHECK_EQ_STR(c->label, path);
    tg_cert_unref(c);
    unlink(path);
    unlink(kpath);
    /* A key OpenSSL will not serve with (1024-bit RSA at level 2). */
    EVP_PKEY *weak = EVP_RSA_gen(1024);
    struct tg_cert *w = cert_of(weak, "weak", "DNS:weak.test");
    CHECK_EQ_INT(tg_cert_check_usable(w, err, sizeof(err)), -1);
    CHECK(strstr(err, "certificate 'weak' cannot be used") != NULL);
    struct tg_certstore *st = tg_certstore_new();
    CHECK_EQ_INT(tg_certstore_put(st, "weak.test", w, err, sizeof(err)), -1);
    tg_certstore_unref(st);
    tg_cert_unref(w);
    EVP_PKEY_free(weak);
}

/* ---- lookups ------------------------------------------------------------------ */

TEST(empty_store)
{
    struct tg_certstore *st = tg_certstore_new();
    struct tg_certstore_snap *s = tg_certstore_acquire(st);
    CHECK(s != NULL);
    CHECK_EQ_INT(tg_certstore_count(s), 0);
    CHECK_EQ_INT(tg_certstore_generation(s), 0);
    CHECK(tg_certstore_default(s) == NULL);
    CHECK(tg_certstore_lookup(s, "a.test", 6) == NULL);
    tg_certstore_release(s);
    CHECK_EQ_INT(tg_certstore_set_config(st, NULL, 0), 0);
    CHECK_EQ_STR(served(st, NULL, TG_CERT_ECDSA), "-");
    tg_certstore_unref(st);
}

TEST(lookup_wildcards_and_default)
{
    struct tg_cert *certs[] = {
        cert_of(ec_key, "first", "DNS:a.example.com"),
        cert_of(ec_key, "b", "DNS:b.example.com,DNS:bb.example.com"),
        cert_of(ec_key, "wild", "DNS:*.w.example.com"),
        cert_of(rsa_key, "first-rsa", "DNS:a.example.com"),
        cert_of(rsa_key, "exact-rsa", "DNS:r.w.example.com"),
        cert_of(ec_key, "b-again", "DNS:b.example.com"),
    };
    struct tg_certstore *st = tg_certstore_new();
    CHECK_EQ_INT(tg_certstore_set_config(st, certs, TG_ARRAY_LEN(certs)), 0);
    CHECK_EQ_STR(served(st, "a.example.com", TG_CERT_ECDSA), "first");
    CHECK_EQ_STR(served(st, "a.example.com", TG_CERT_RSA), "first-rsa");
    CHECK_EQ_STR(served(st, "B.Example.COM.", TG_CERT_ECDSA), "b");
    CHECK_EQ_STR(served(st, "bb.example.com", TG_CERT_ECDSA), "b");
    /* A wildcard covers one label, no more, no less. */
    CHECK_EQ_STR(served(st, "x.w.example.com", TG_CERT_ECDSA), "wild");
    CHECK_EQ_STR(served(st, "x.w.example.com", TG_CERT_RSA), "-");
    CHECK_EQ_STR(served(st, "w.example.com", TG_CERT_ECDSA), "-");
    CHECK_EQ_STR(served(st, "y.x.w.example.com", TG_CERT_ECDSA), "-");
    /* An exact RSA name under an ECDSA wildcard: each type its own. */
    CHECK_EQ_STR(served(st, "r.w.example.com", TG_CERT_RSA), "exact-rsa");
    CHECK_EQ_STR(served(st, "r.w.example.com", TG_CERT_ECDSA), "wild");
    /* Not names: a wildcard asked for, bytes no host name has, nothing. */
    CHECK_EQ_STR(served(st, "*.w.example.com", TG_CERT_ECDSA), "-");
    CHECK_EQ_STR(served(st, "a.example.com\n", TG_CERT_ECDSA), "-");
    CHECK_EQ_STR(served(st, "", TG_CERT_ECDSA), "-");
    CHECK_EQ_STR(served(st, "unknown.test", TG_CERT_ECDSA), "-");
    /* The default: the first certificate, with the other type for its name. */
    CHECK_EQ_STR(served(st, NULL, TG_CERT_ECDSA), "first");
    CHECK_EQ_STR(served(st, NULL, TG_CERT_RSA), "first-rsa");
    struct tg_certstore_snap *s = tg_certstore_acquire(st);
    CHECK_EQ_INT(tg_certstore_count(s), TG_ARRAY_LEN(certs));
    CHECK_EQ_INT(tg_certstore_generation(s), 1);
    tg_certstore_release(s);
    /* The store holds its own references. */
    for (size_t i = 0; i < TG_ARRAY_LEN(certs); i++) {
        CHECK_EQ_INT(atomic_load(&certs[i]->refs), 2);
        tg_cert_unref(certs[i]);
    }
    tg_certstore_unref(st);
}

TEST(warns_about_unserved)
{
    struct tg_cert *certs[] = {
        cert_of(ec_key, "one", "DNS:u.example.com"),
        cert_of(ec_key, "shadowed-one", "DNS:u.example.com"),
        cert_of(rsa_key, "rsa-one", "DNS:u.example.com"),
    };
    tg_certstore_warn_unserved(certs, TG_ARRAY_LEN(certs));
    CHECK(log_contains("certificate shadowed-one is never served: an earlier ECDSA"));
    CHECK(!log_contains("certificate rsa-one is never served"));
    for (size_t i = 0; i < TG_ARRAY_LEN(certs); i++)
        tg_cert_unref(certs[i]);
}

/* ---- run-time certificates ------------------------------------------------------ */

TEST(put_replace_remove)
{
    char err[256];
    struct tg_cert *conf[] = {
        cert_of(ec_key, "conf-a", "DNS:a.example.com"),
        cert_of(ec_key, "conf-wild", "DNS:*.example.com"),
    };
    struct tg_certstore *st = tg_certstore_new();
    CHECK_EQ_INT(tg_certstore_set_config(st, conf, 2), 0);
    struct tg_cert *n1 = cert_of(ec_key, "new-1", "DNS:new.example.com");
    struct tg_cert *n2 = cert_of(ec_key2, "new-2", "DNS:new.example.com");
    struct tg_cert *n_rsa = cert_of(rsa_key, "new-rsa", "DNS:new.example.com");
    struct tg_cert *a_acme = cert_of(ec_key, "acme-a", "DNS:a.example.com");
    struct tg_cert *other = cert_of(ec_key, "other", "DNS:other.test");

    /* Before: the wildcard answers. */
    CHECK_EQ_STR(served(st, "new.example.com", TG_CERT_ECDSA), "conf-wild");
    /* Added: the exact name wins; replaced: the new one serves. */
    CHECK_EQ_INT(tg_certstore_put(st, "new.example.com", n1, err, sizeof(err)), 0);
    CHECK_EQ_STR(served(st, "new.example.com", TG_CERT_ECDSA), "new-1");
    CHECK_EQ_INT(tg_certstore_put(st, "NEW.example.com", n2, err, sizeof(err)), 0);
    CHECK_EQ_STR(served(st, "new.example.com", TG_CERT_ECDSA), "new-2");
    CHECK_EQ_INT(atomic_load(&n1->refs), 1); /* the store let go of it */
    /* The other key type is another entry under the same name. */
    CHECK_EQ_INT(tg_certstore_put(st, "new.example.com", n_rsa, err, sizeof(err)), 0);
    CHECK_EQ_STR(served(st, "new.example.com", TG_CERT_ECDSA), "new-2");
    CHECK_EQ_STR(served(st, "new.example.com", TG_CERT_RSA), "new-rsa");
    /* Run-time certificates come before the configuration's. */
    CHECK_EQ_INT(tg_certstore_put(st, "a.example.com", a_acme, err, sizeof(err)), 0);
    CHECK_EQ_STR(served(st, "a.example.com", TG_CERT_ECDSA), "acme-a");
    /* The default stays the first configured certificate. */
    CHECK_EQ_STR(served(st, NULL, TG_CERT_ECDSA), "conf-a");
    /* A certificate must carry the name it is put under. */
    CHECK_EQ_INT(tg_certstore_put(st, "new.example.com", other, err, sizeof(err)), -1);
    CHECK(strstr(err, "does not carry the name new.example.com") != NULL);
    CHECK_EQ_INT(tg_certstore_put(st, "bad name", other, err, sizeof(err)), -1);
    /* A reload replaces the configured certificates, keeps the others. */
    struct tg_cert *conf2[] = {cert_of(ec_key, "conf2-first", "DNS:z.example.com")};
    CHECK_EQ_INT(tg_certstore_set_config(st, conf2, 1), 0);
    CHECK_EQ_STR(served(st, NULL, TG_CERT_ECDSA), "conf2-first");
    CHECK_EQ_STR(served(st, "new.example.com", TG_CERT_ECDSA), "new-2");
    CHECK_EQ_STR(served(st, "a.example.com", TG_CERT_ECDSA), "acme-a");
    CHECK_EQ_STR(served(st, "x.example.com", TG_CERT_ECDSA), "-");
    /* Removed: both key types go. */
    CHECK_EQ_INT(tg_certstore_remove(st, "new.example.com"), 2);
    CHECK_EQ_INT(tg_certstore_remove(st, "new.example.com"), 0);
    CHECK_EQ_STR(served(st, "new.example.com", TG_CERT_ECDSA), "-");
    CHECK_EQ_STR(served(st, "new.example.com", TG_CERT_RSA), "-");
    /* Nothing configured: the first certificate put is the default. */
    CHECK_EQ_INT(tg_certstore_set_config(st, NULL, 0), 0);
    CHECK_EQ_STR(served(st, NULL, TG_CERT_ECDSA), "acme-a");
    struct tg_certstore_snap *s = tg_certstore_acquire(st);
    CHECK_EQ_INT(tg_certstore_count(s), 1);
    tg_certstore_release(s);
    tg_certstore_unref(st);
    struct tg_cert *all[] = {conf[0], conf[1], n1, n2, n_rsa, a_acme, other, conf2[0]};
    for (size_t i = 0; i < TG_ARRAY_LEN(all); i++) {
        CHECK_EQ_INT(atomic_load(&all[i]->refs), 1); /* nothing leaked */
        tg_cert_unref(all[i]);
    }
}

/* ---- snapshots ---------------------------------------------------------------------- */

TEST(snapshot_keeps_what_it_had)
{
    char err[256];
    struct tg_cert *v1 = cert_of(ec_key, "v1", "DNS:s.example.com");
    struct tg_cert *v2 = cert_of(ec_key2, "v2", "DNS:s.example.com");
    struct tg_certstore *st = tg_certstore_new();
    CHECK_EQ_INT(tg_certstore_put(st, "s.example.com", v1, err, sizeof(err)), 0);
    /* A handshake under way holds the snapshot it started with. */
    struct tg_certstore_snap *old = tg_certstore_acquire(st);
    uint64_t gen = tg_certstore_generation(old);
    CHECK_EQ_INT(tg_certstore_put(st, "s.example.com", v2, err, sizeof(err)), 0);
    struct tg_certstore_snap *cur = tg_certstore_acquire(st);
    CHECK(cur != old);
    CHECK_EQ_INT(tg_certstore_generation(cur), gen + 1);
    const struct tg_cert_choice *a = tg_certstore_lookup(old, "s.example.com", 13);
    const struct tg_cert_choice *b = tg_certstore_lookup(cur, "s.example.com", 13);
    CHECK(a != NULL && a->cert[TG_CERT_ECDSA] == v1);
    CHECK(b != NULL && b->cert[TG_CERT_ECDSA] == v2);
    /* v1: ours and the old snapshot's; that goes with its last reader. */
    CHECK_EQ_INT(atomic_load(&v1->refs), 2);
    CHECK_EQ_INT(atomic_load(&old->refs), 1);
    tg_certstore_release(old);
    CHECK_EQ_INT(atomic_load(&v1->refs), 1);
    /* The store's reference plus ours. */
    CHECK_EQ_INT(atomic_load(&cur->refs), 2);
    /* A snapshot outlives its store. */
    tg_certstore_unref(st);
    CHECK_EQ_INT(atomic_load(&cur->refs), 1);
    b = tg_certstore_lookup(cur, "s.example.com", 13);
    CHECK(b != NULL && b->cert[TG_CERT_ECDSA] == v2);
    tg_certstore_release(cur);
    CHECK_EQ_INT(atomic_load(&v2->refs), 1);
    tg_cert_unref(v1);
    tg_cert_unref(v2);
}

/* Readers on several threads while a writer keeps replacing: every lookup
 * sees a whole snapshot (one of the two certificates, the default always
 * there), and nothing is freed under a reader (ASan would see it). */
struct reader {
    struct tg_certstore *st;
    struct tg_cert *one, *two;
    _Atomic bool *stop;
    long lookups, bad;
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    while (!atomic_load(r->stop)) {
        struct tg_certstore_snap *s = tg_certstore_acquire(r->st);
        const struct tg_cert_choice *g = tg_certstore_lookup(s, "c.example.com", 13);
        const struct tg_cert_choice *d = tg_certstore_default(s);
        struct tg_cert *c = g != NULL ? g->cert[TG_CERT_ECDSA] : NULL;
        if ((c != r->one && c != r->two) || d == NULL || strcmp(c->names[0], "c.example.com") != 0)
            r->bad++;
        r->lookups++;
        tg_certstore_release(s);
    }
    return NULL;
}

TEST(concurrent_readers)
{
    enum { READERS = 4, SWAPS = 3000 };
    char err[256];
    struct tg_cert *one = cert_of(ec_key, "one", "DNS:c.example.com");
    struct tg_cert *two = cert_of(ec_key2, "two", "DNS:c.example.com");
    struct tg_cert *conf = cert_of(ec_key, "conf", "DNS:conf.example.com");
    struct tg_certstore *st = tg_certstore_new();
    CHECK_EQ_INT(tg_certstore_set_config(st, &conf, 1), 0);
    CHECK_EQ_INT(tg_certstore_put(st, "c.example.com", one, err, sizeof(err)), 0);
    _Atomic bool stop = false;
    struct reader rd[READERS];
    pthread_t th[READERS];
    for (int i = 0; i < READERS; i++) {
        rd[i] = (struct reader){st, one, two, &stop, 0, 0};
        pthread_create(&th[i], NULL, reader_main, &rd[i]);
    }
    int failed = 0;
    for (int i = 0; i < SWAPS; i++) {
        failed += tg_certstore_put(st, "c.example.com", i % 2 ? one : two, err, sizeof(err)) < 0;
        if (i % 100 == 0)
            failed += tg_certstore_set_config(st, &conf, 1) < 0;
    }
    atomic_store(&stop, true);
    long lookups = 0, bad = 0;
    for (int i = 0; i < READERS; i++) {
        pthread_join(th[i], NULL);
        lookups += rd[i].lookups;
        bad += rd[i].bad;
    }
    CHECK_EQ_INT(failed, 0);
    CHECK_EQ_INT(bad, 0);
    CHECK(lookups > 0);
    struct tg_certstore_snap *s = tg_certstore_acquire(st);
    CHECK_EQ_INT(tg_certstore_generation(s), 2 + SWAPS + SWAPS / 100);
    tg_certstore_release(s);
    tg_certstore_unref(st);
    CHECK_EQ_INT(atomic_load(&one->refs), 1);
    CHECK_EQ_INT(atomic_load(&two->refs), 1);
    CHECK_EQ_INT(atomic_load(&conf->refs), 1);
    tg_cert_unref(one);
    tg_cert_unref(two);
    tg_cert_unref(conf);
}

TEST(ip_literals)
{
    char buf[64];
    CHECK(tg_cert_ip_literal("10.0.0.1", 8, buf, sizeof(buf)) && strcmp(buf, "10.0.0.1") == 0);
    CHECK(tg_cert_ip_literal("[::1]", 5, buf, sizeof(buf)) && strcmp(buf, "::1") == 0);
    CHECK(tg_cert_ip_literal("::1", 3, buf, sizeof(buf)));
    CHECK(!tg_cert_ip_literal("a.test", 6, buf, sizeof(buf)));
    CHECK(!tg_cert_ip_literal("", 0, buf, sizeof(buf)));
    CHECK(!tg_cert_ip_literal("[]", 2, buf, sizeof(buf)));
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/tg-certstore-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(logpath, sizeof(logpath), "%s/log", tmpdir);
    if (tg_log_open(logpath) < 0) {
        perror("log");
        return 2;
    }
    ec_key = EVP_EC_gen("P-256");
    ec_key2 = EVP_EC_gen("P-256");
    rsa_key = EVP_RSA_gen(2048);

    RUN(certificate_names);
    RUN(certificate_errors);
    RUN(empty_store);
    RUN(lookup_wildcards_and_default);
    RUN(warns_about_unserved);
    RUN(put_replace_remove);
    RUN(snapshot_keeps_what_it_had);
    RUN(concurrent_readers);
    RUN(ip_literals);

    EVP_PKEY_free(ec_key);
    EVP_PKEY_free(ec_key2);
    EVP_PKEY_free(rsa_key);
    tg_log_open(NULL);
    unlink(logpath);
    rmdir(tmpdir);
    return TEST_SUMMARY();
}
