/* The ticket key ring (src/tls_tickets.c) on a fake clock: which key
 * encrypts, how long one decrypts, and rotation while other threads take
 * keys; and the keys a fleet shares (issue 19): derived from a secret file
 * or handed over from Redis, numbered by epoch. Handshakes that use the
 * ring are in test_tls.c; two real gateways in
 * tests/integration/test_tls_ticket_share.py. */
#include "../../src/tls_tickets.c"

#include <stdatomic.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

static _Atomic int64_t fake_now = 1000000;
static int64_t fake_clock(void)
{
    return fake_now;
}

TEST(keys_rotate_and_age_out)
{
    const int64_t period = 60000;
    struct ticket_key first, k;
    CHECK_EQ_INT(ring_get(NULL, period, &first), 1);
    /* Within the period the same key encrypts. */
    fake_now += period - 1;
    CHECK_EQ_INT(ring_get(NULL, period, &k), 1);
    CHECK(memcmp(k.name, first.name, sizeof(k.name)) == 0);
    /* A period old: a new key encrypts, the first still decrypts (renew). */
    fake_now += 1;
    CHECK_EQ_INT(ring_get(NULL, period, &k), 1);
    CHECK(memcmp(k.name, first.name, sizeof(k.name)) != 0);
    CHECK_EQ_INT(ring_get(first.name, period, &k), 2);
    CHECK(memcmp(k.aes, first.aes, sizeof(k.aes)) == 0);
    /* Until it is three periods old. */
    fake_now += 2 * period - 1;
    CHECK_EQ_INT(ring_get(first.name, period, &k), 2);
    fake_now += 1;
    CHECK_EQ_INT(ring_get(first.name, period, &k), 0);
    /* An unknown name never decrypts. */
    unsigned char stranger[16] = {1, 2, 3};
    CHECK_EQ_INT(ring_get(stranger, period, &k), 0);
}

/* Workers take keys while the main thread rotates the ring. */
static _Atomic bool ring_stop;
static _Atomic int ring_bad;
static const int64_t ring_period = 60000;

static void *ring_worker(void *arg)
{
    (void)arg;
    long renewals = 0;
    while (!atomic_load(&ring_stop)) {
        struct ticket_key enc, dec;
        int64_t t0 = fake_now;
        if (ring_get(NULL, ring_period, &enc) != 1)
            atomic_fetch_add(&ring_bad, 1);
        int rc = ring_get(enc.name, ring_period, &dec);
        int64_t t1 = fake_now;
        /* The encrypting key is less than a period old, and decrypts until
         * three: it can only be gone if two periods passed in between (a
         * preempted thread). */
        if (rc == 0 ? t1 - t0 < 2 * ring_period : memcmp(enc.aes, dec.aes, sizeof(enc.aes)) != 0)
            atomic_fetch_add(&ring_bad, 1);
        renewals += rc == 2;
    }
    return (void *)renewals;
}

TEST(ticket_ring_concurrent_rotation)
{
    pthread_t th[2];
    atomic_store(&ring_stop, false);
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, ring_worker, NULL);
    struct ticket_key before;
    ring_get(NULL, ring_period, &before);
    for (int i = 0; i < 50; i++) {
        fake_now += ring_period / 4;
        usleep(200);
    }
    atomic_store(&ring_stop, true);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ_INT(atomic_load(&ring_bad), 0);
    /* 12.5 periods later the first key is long gone. */
    struct ticket_key k;
    CHECK_EQ_INT(ring_get(before.name, ring_period, &k), 0);
    CHECK(ring_get(NULL, ring_period, &k) == 1 && memcmp(k.name, before.name, sizeof(k.name)) != 0);
}

/* ---- shared keys --------------------------------------------------------- */

static const int64_t period = 60000;
static char tmpdir[] = "/tmp/tg-test-tickets-XXXXXX";

/* Writes `n` bytes (seed, seed + 1, ...) to a file with `mode`; returns
 * its path (static, one per name). */
static const char *secret_file_seeded(const char *name, size_t n, mode_t mode, int seed)
{
    static char paths[8][256];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, 256, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    for (size_t i = 0; i < n; i++)
        fputc((int)((i + (size_t)seed) & 0xff), f);
    fclose(f);
    chmod(path, mode);
    return path;
}

static const char *secret_file(const char *name, size_t n, mode_t mode)
{
    return secret_file_seeded(name, n, mode, 0);
}

/* Sets the clock to the start of `epoch` plus `ms`. */
static void at_epoch(int64_t epoch, int64_t ms)
{
    fake_now = epoch * period + ms;
}

static void hex(const unsigned char *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
}

/* A "process restart": the ring and every cache go, as in a new process. */
static void restart(void)
{
    tg_tls_tickets_cleanup();
    CHECK_EQ_INT(tg_tls_tickets_init(), 0);
}

TEST(secret_file_refused_unless_private_and_long_enough)
{
    char err[512];
    struct {
        const char *name;
        size_t n;
        mode_t mode;
        const char *says;
    } bad[] = {
        {"short", 31, 0600, "holds 31 bytes"},
        {"empty", 0, 0600, "holds 0 bytes"},
        {"huge", 4097, 0600, "holds more than 4096 bytes"},
        {"world", 32, 0644, "group or others"},
        {"group", 32, 0640, "group or others"},
        {"groupw", 32, 0620, "group or others"},
        {"unreadable", 32, 0000, "cannot read"},
    };
    bool root = geteuid() == 0;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (root && bad[i].mode == 0000)
            continue; /* root reads it anyway */
        const char *path = secret_file(bad[i].name, bad[i].n, bad[i].mode);
        err[0] = '\0';
        struct tg_tls_ticket_secret *sec = tg_tls_tickets_secret_read(path, err, sizeof(err));
        CHECK(sec == NULL);
        tg_tls_tickets_secret_unref(sec);
        /* The message names the file and says what is wrong. */
        CHECK(strstr(err, path) != NULL);
        if (strstr(err, bad[i].says) == NULL)
            fprintf(stderr, "  %s: %s\n", bad[i].name, err);
        CHECK(strstr(err, bad[i].says) != NULL);
    }
    char missing[300];
    snprintf(missing, sizeof(missing), "%s/missing", tmpdir);
    CHECK(tg_tls_tickets_secret_read(missing, err, sizeof(err)) == NULL);
    CHECK(strstr(err, missing) != NULL && strstr(err, "cannot read") != NULL);
    CHECK(tg_tls_tickets_secret_read(tmpdir, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "not a regular file") != NULL);
    /* The bounds themselves are fine; so is an owner-only 0400. */
    const char *ok[] = {secret_file("min", 32, 0600), secret_file("max", 4096, 0600),
                        secret_file("ro", 48, 0400)};
    for (size_t i = 0; i < 3; i++) {
        struct tg_tls_ticket_secret *sec = tg_tls_tickets_secret_read(ok[i], err, sizeof(err));
        CHECK(sec != NULL);
        tg_tls_tickets_secret_unref(sec);
    }
}

/* The derivation is pinned: gateways of different builds must agree. The
 * expected values come from a separate HKDF-SHA256 (Python's hmac) over
 * the labels in tls_tickets.c, for the secret 00 01 .. 1f. */
TEST(file_keys_match_known_answer)
{
    char err[512];
    struct tg_tls_ticket_secret *sec =
        tg_tls_tickets_secret_read(secret_file("kat", 32, 0600), err, sizeof(err));
    CHECK(sec != NULL);
    if (sec == NULL)
        return;
    unsigned char m[32];
    char h[200];
    CHECK_EQ_INT(secret_material(sec, 28333333, m), 0);
    hex(m, 32, h);
    CHECK_EQ_STR(h, "ee80f9f11a81e8913b84ebc5a779602d44ae1db9fe8a936eeee131359dce5110");
    at_epoch(28333333, 17);
    struct ticket_key k;
    CHECK_EQ_INT(key_get(NULL, period, sec, &k), 1);
    hex(k.name, 16, h);
    CHECK_EQ_STR(h, "74676b310000000001b0551504bcf030");
    hex(k.aes, 32, h);
    CHECK_EQ_STR(h, "6208053f8ec10bb1b13a111b86b9674a21b8bebca5ded0a637bd7278b6a4d1a5");
    hex(k.hmac, 32, h);
    CHECK_EQ_STR(h, "7d1de30bb30ece9339c62ac5e08df0f2c45e724afd2931fdf5f137b112801396");
    tg_tls_tickets_secret_unref(sec);
}

/* Encrypts a block as OpenSSL would with the key the callback picks, in
 * one "process"; returns 1 if tg_tls_tickets_key gave a key. */
struct sealed {
    unsigned char name[16], iv[EVP_MAX_IV_LENGTH];
    unsigned char ct[64], mac[32];
    int ctlen;
};

static const unsigned char plain[] = "a session, serialised: 32 bytes";

/* A server SSL for the callback to look at (its version: TLS 1.3 or "any"
 * before a handshake, so decryption always says renew; unseal takes the
 * 1-or-2 answer from key_get). */
static SSL *test_ssl(void)
{
    static SSL_CTX *ctx;
    static SSL *ssl;
    if (ssl == NULL) {
        ctx = SSL_CTX_new(TLS_server_method());
        ssl = SSL_new(ctx);
    }
    return ssl;
}

static void test_ssl_free(void)
{
    SSL *ssl = test_ssl();
    SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
}

static int seal(const struct tg_tls_ticket_secret *sec, struct sealed *out)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *h = EVP_MAC_CTX_new(mac);
    int rc = tg_tls_tickets_key(test_ssl(), out->name, out->iv, c, h, 1, period, sec);
    int n = 0, fin = 0;
    size_t maclen = 0;
    if (rc == 1) {
        EVP_EncryptUpdate(c, out->ct, &n, plain, sizeof(plain));
        EVP_EncryptFinal_ex(c, out->ct + n, &fin);
        out->ctlen = n + fin;
        EVP_MAC_init(h, NULL, 0, NULL);
        EVP_MAC_update(h, out->ct, (size_t)out->ctlen);
        EVP_MAC_final(h, out->mac, &maclen, sizeof(out->mac));
    }
    EVP_MAC_CTX_free(h);
    EVP_MAC_free(mac);
    EVP_CIPHER_CTX_free(c);
    return rc;
}

/* Decrypts what seal made; returns key_get's answer (1 use, 2 renew, 0
 * refused), and -9 if the callback disagrees about using it or the MAC or
 * the plaintext differ. */
static int unseal(const struct tg_tls_ticket_secret *sec, struct sealed *in)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *h = EVP_MAC_CTX_new(mac);
    struct ticket_key k;
    int rc = key_get(in->name, period, sec, &k);
    OPENSSL_cleanse(&k, sizeof(k));
    int cb = tg_tls_tickets_key(test_ssl(), in->name, in->iv, c, h, 0, period, sec);
    if ((cb > 0) != (rc > 0))
        rc = -9;
    if (rc > 0) {
        unsigned char out[80], m[32];
        int n = 0, fin = 0;
        size_t maclen = 0;
        EVP_MAC_init(h, NULL, 0, NULL);
        EVP_MAC_update(h, in->ct, (size_t)in->ctlen);
        EVP_MAC_final(h, m, &maclen, sizeof(m));
        if (memcmp(m, in->mac, sizeof(m)) != 0 ||
            EVP_DecryptUpdate(c, out, &n, in->ct, in->ctlen) != 1 ||
            EVP_DecryptFinal_ex(c, out + n, &fin) != 1 || (size_t)(n + fin) != sizeof(plain) ||
            memcmp(out, plain, sizeof(plain)) != 0)
            rc = -9;
    }
    EVP_MAC_CTX_free(h);
    EVP_MAC_free(mac);
    EVP_CIPHER_CTX_free(c);
    return rc;
}

/* Two processes that read the same file make and take each other's
 * tickets; a process with its ring alone, or another file, does not. */
TEST(file_keys_agree_across_processes)
{
    char err[512];
    const char *path = secret_file("shared", 64, 0600);
    struct tg_tls_ticket_secret *a = tg_tls_tickets_secret_read(path, err, sizeof(err));
    CHECK(a != NULL);
    at_epoch(29000000, 1234);
    struct sealed t;
    CHECK_EQ_INT(seal(a, &t), 1);
    CHECK(memcmp(t.name, NAME_MAGIC, 4) == 0);
    CHECK_EQ_INT(be64_get(t.name + 4), 29000000);
    tg_tls_tickets_secret_unref(a);

    restart();
    struct tg_tls_ticket_secret *b = tg_tls_tickets_secret_read(path, err, sizeof(err));
    CHECK(b != NULL);
    CHECK_EQ_INT(unseal(b, &t), 1);
    /* The same epoch's name again: the derivation has no per-process part. */
    struct sealed t2;
    CHECK_EQ_INT(seal(b, &t2), 1);
    CHECK(memcmp(t2.name, t.name, 16) == 0);
    /* Without the secret (the ring only) or with another file: refused. */
    CHECK_EQ_INT(unseal(NULL, &t), 0);
    struct tg_tls_ticket_secret *other =
        tg_tls_tickets_secret_read(secret_file_seeded("other", 64, 0600, 1), err, sizeof(err));
    CHECK(other != NULL);
    CHECK_EQ_INT(unseal(other, &t), 0);
    tg_tls_tickets_secret_unref(other);
    tg_tls_tickets_secret_unref(b);
}

/* A ticket of epoch e decrypts at e-1 (a peer's clock ahead), e (use),
 * e+1 and e+2 (use, renew), and no longer at e+3; a check or an epoch
 * changed in the name is refused. */
TEST(file_ticket_lifetime_and_tampering)
{
    char err[512];
    struct tg_tls_ticket_secret *sec =
        tg_tls_tickets_secret_read(secret_file("life", 32, 0600), err, sizeof(err));
    CHECK(sec != NULL);
    const int64_t e = 29100000;
    at_epoch(e, period - 1);
    struct sealed t;
    CHECK_EQ_INT(seal(sec, &t), 1);
    CHECK_EQ_INT(be64_get(t.name + 4), e);
    CHECK_EQ_INT(unseal(sec, &t), 1);
    at_epoch(e + 1, 0);
    CHECK_EQ_INT(unseal(sec, &t), 2);
    at_epoch(e + 2, period - 1);
    CHECK_EQ_INT(unseal(sec, &t), 2);
    at_epoch(e + 3, 0);
    CHECK_EQ_INT(unseal(sec, &t), 0);
    at_epoch(e - 1, 0);
    CHECK_EQ_INT(unseal(sec, &t), 2);
    at_epoch(e - 2, period - 1);
    CHECK_EQ_INT(unseal(sec, &t), 0);
    /* The key of each new epoch encrypts: names differ, epochs follow. */
    at_epoch(e + 1, 5);
    struct sealed next;
    CHECK_EQ_INT(seal(sec, &next), 1);
    CHECK_EQ_INT(be64_get(next.name + 4), e + 1);
    CHECK(memcmp(next.name + 12, t.name + 12, 4) != 0);

    at_epoch(e, 10);
    struct sealed bad = t;
    bad.name[15] ^= 1; /* the check */
    CHECK_EQ_INT(unseal(sec, &bad), 0);
    bad = t;
    bad.name[11] ^= 1; /* the epoch: e+1's keys have another check */
    CHECK_EQ_INT(be64_get(bad.name + 4), e + 1);
    CHECK_EQ_INT(unseal(sec, &bad), 0);
    bad = t;
    bad.name[0] = 'T'; /* no longer a shared name: not in the ring either */
    CHECK_EQ_INT(unseal(sec, &bad), 0);
    /* The MAC still protects the rest: a flipped ciphertext byte fails
     * after the name passed. */
    bad = t;
    bad.ct[3] ^= 1;
    CHECK_EQ_INT(unseal(sec, &bad), -9);
    tg_tls_tickets_secret_unref(sec);
}

/* Redis mode: until the current epoch's material is handed over, tickets
 * come from the local ring (and still resume here); then from the shared
 * key, with ring tickets still taken. */
TEST(redis_material_and_ring_fallback)
{
    restart();
    const int64_t e = 29200000;
    at_epoch(e, 100);
    struct sealed local;
    CHECK_EQ_INT(seal(NULL, &local), 1);
    CHECK(memcmp(local.name, NAME_MAGIC, 4) != 0);
    CHECK_EQ_INT(unseal(NULL, &local), 1);

    unsigned char m[32], got[32];
    memset(m, 0x5a, sizeof(m));
    CHECK(!tg_tls_tickets_share_get(e, got));
    CHECK_EQ_INT(tg_tls_tickets_share_put(e, m), 1);
    CHECK_EQ_INT(tg_tls_tickets_share_put(e, m), 0);
    CHECK(tg_tls_tickets_share_get(e, got) && memcmp(got, m, 32) == 0);
    struct sealed shared;
    CHECK_EQ_INT(seal(NULL, &shared), 1);
    CHECK(memcmp(shared.name, NAME_MAGIC, 4) == 0);
    CHECK_EQ_INT(be64_get(shared.name + 4), e);
    CHECK_EQ_INT(unseal(NULL, &shared), 1);
    CHECK_EQ_INT(unseal(NULL, &local), 1); /* the ring still decrypts */

    /* Another process given the same material takes the ticket. */
    restart();
    CHECK_EQ_INT(unseal(NULL, &shared), 0); /* nothing known yet */
    CHECK_EQ_INT(tg_tls_tickets_share_put(e, m), 1);
    CHECK_EQ_INT(unseal(NULL, &shared), 1);

    /* Next epoch, its material unknown: the ring encrypts, the shared
     * ticket of e still decrypts (renewed). */
    at_epoch(e + 1, 0);
    struct sealed fallback;
    CHECK_EQ_INT(seal(NULL, &fallback), 1);
    CHECK(memcmp(fallback.name, NAME_MAGIC, 4) != 0);
    CHECK_EQ_INT(unseal(NULL, &shared), 2);
    unsigned char m2[32];
    memset(m2, 0xa5, sizeof(m2));
    CHECK_EQ_INT(tg_tls_tickets_share_put(e + 1, m2), 1);
    CHECK_EQ_INT(seal(NULL, &fallback), 1);
    CHECK_EQ_INT(be64_get(fallback.name + 4), e + 1);

    /* Redis changed its mind about e (another SET won after a flush):
     * the keys derived from the old material are forgotten. */
    at_epoch(e, 0);
    unsigned char m3[32];
    memset(m3, 0x33, sizeof(m3));
    CHECK_EQ_INT(tg_tls_tickets_share_put(e, m3), 1);
    CHECK_EQ_INT(unseal(NULL, &shared), 0);
    CHECK_EQ_INT(tg_tls_tickets_share_put(e, m), 1);
    CHECK_EQ_INT(unseal(NULL, &shared), 1);

    /* Only the latest epochs are kept. */
    for (int64_t x = e + 2; x < e + 2 + MATERIAL_SLOTS; x++)
        CHECK_EQ_INT(tg_tls_tickets_share_put(x, m), 1);
    CHECK(!tg_tls_tickets_share_get(e, got));
    CHECK(tg_tls_tickets_share_get(e + 2 + MATERIAL_SLOTS - 1, got));

    /* Cleared (sharing stopped): the ring again, shared names refused. */
    at_epoch(e + 3, 0);
    tg_tls_tickets_share_clear();
    CHECK(!tg_tls_tickets_share_get(e + 3, got));
    struct sealed after;
    CHECK_EQ_INT(seal(NULL, &after), 1);
    CHECK(memcmp(after.name, NAME_MAGIC, 4) != 0);
    CHECK_EQ_INT(unseal(NULL, &shared), 0);
}

/* The injected clock numbers epochs too, and ring names never look
 * shared. */
TEST(epoch_clock_and_ring_names)
{
    fake_now = 5 * period - 1;
    CHECK_EQ_INT(tg_tls_tickets_epoch(period), 4);
    fake_now = 5 * period;
    CHECK_EQ_INT(tg_tls_tickets_epoch(period), 5);
    for (int i = 0; i < 2000; i++) {
        struct ticket_key k;
        CHECK_EQ_INT(ticket_key_new(&k, 0), 0);
        if (memcmp(k.name, NAME_MAGIC, 4) == 0) {
            CHECK(!"a ring key named like a shared one");
            break;
        }
    }
}

int main(void)
{
    tg_tls_tickets_set_clock(fake_clock);
    if (tg_tls_tickets_init() < 0 || tg_tls_tickets_init() < 0) {
        fprintf(stderr, "tg_tls_tickets_init failed\n");
        return 2;
    }
    RUN(keys_rotate_and_age_out);
    RUN(ticket_ring_concurrent_rotation);
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    RUN(secret_file_refused_unless_private_and_long_enough);
    RUN(file_keys_match_known_answer);
    RUN(file_keys_agree_across_processes);
    RUN(file_ticket_lifetime_and_tampering);
    RUN(redis_material_and_ring_fallback);
    RUN(epoch_clock_and_ring_names);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmpdir);
    test_ssl_free();
    tg_tls_tickets_cleanup();
    tg_tls_tickets_set_clock(NULL);
    return TEST_SUMMARY();
}
