/* The ticket key ring: process-wide, so every worker, every context and
 * every snapshot encrypt and decrypt with the same keys and a reload keeps
 * tickets valid; and the keys a fleet shares, numbered by epoch. Not here:
 * the contexts that use them (tls_server.c), talking to Redis
 * (ticket_share.c).
 *
 * keys[0] is the newest and the only one that encrypts; rotation happens
 * lazily, at the first ticket operation once keys[0] is `period` old,
 * under the write lock (a few microseconds, a few times a day). Because
 * every encryption checks first, no key encrypts once it is a period old;
 * it then decrypts until it is three periods old (so "the previous one or
 * two"), and tickets it decrypts are renewed with the newest key. The keys
 * live in one mlock'ed page excluded from core dumps: never on disk, not
 * even in swap.
 *
 * Shared keys. Every gateway must derive the same keys for an epoch
 * without talking to the others, and find them again from the ticket
 * alone, so everything is HKDF-SHA256 over fixed labels:
 *
 *   file:    prk      = HKDF-Extract(salt FILE_SALT, the file's bytes)
 *            material = HKDF-Expand(prk, MATERIAL_INFO || be64(epoch), 32)
 *   Redis:   material = the 32 bytes stored under <prefix>ticket:<epoch>
 *   keys:    aes(32) || hmac(32) || check(4)
 *                     = HKDF(material, no salt, KEYS_INFO || be64(epoch), 68)
 *   name:    "tgk1" || be64(epoch) || check
 *
 * so a decrypting gateway reads the epoch from the name, derives (or finds
 * in a small cache under the ring's lock) that epoch's keys, and refuses
 * at once a name whose check differs: a ticket from another fleet, or from
 * a gateway that disagreed about an epoch's material. Ring key names never
 * start with the magic. The clock may differ between gateways by up to a
 * period: a ticket from the epoch after ours still decrypts. */
#include "tls_tickets.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include "log.h"

struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t created_ms; /* monotonic */
    bool set;
};

/* One epoch's material from Redis. */
struct shared_material {
    int64_t epoch;
    unsigned char bytes[TG_TLS_TICKETS_MATERIAL];
    bool set;
};

/* The keys of one epoch of one source, derived. */
struct shared_key {
    uint64_t source; /* SOURCE_REDIS, or the secret's id */
    int64_t epoch;
    unsigned char aes[32];
    unsigned char hmac[32];
    unsigned char check[4];
    bool set;
};

#define RING_KEYS 3
#define RING_PAGE 4096
/* Redis keeps cur-2 .. cur+1; two more for a period change or a slow
 * thread. */
#define MATERIAL_SLOTS 6
/* A few epochs of one or two sources (a reload that changes the file). */
#define CACHE_SLOTS 8

/* Everything secret, in one locked page. */
struct key_page {
    struct ticket_key ring[RING_KEYS];
    struct shared_material material[MATERIAL_SLOTS];
    struct shared_key cache[CACHE_SLOTS];
};
_Static_assert(sizeof(struct key_page) <= RING_PAGE, "the keys fit one page");

static const unsigned char NAME_MAGIC[4] = {'t', 'g', 'k', '1'};
#define SOURCE_REDIS 0
#define FILE_SALT "tollgate tls.ticket_key_file v1"
#define MATERIAL_INFO "tollgate ticket material v1"
#define KEYS_INFO "tollgate ticket keys v1"
#define SECRET_MIN 32
#define SECRET_MAX 4096
/* Shared tickets decrypt from the epoch before ours (a peer's clock is
 * ahead) to two epochs after their own (as ring keys do). */
#define EPOCHS_BEHIND 2
#define EPOCHS_AHEAD 1

static struct {
    pthread_rwlock_t lock;
    struct key_page *page;
    struct ticket_key *keys; /* page->ring: [RING_KEYS] */
    size_t map_len;
    EVP_CIPHER *cipher;
    EVP_KDF *kdf;
    /* Under the lock: bumped at every change of Redis material, so a key
     * derived from a copy taken before is not cached after it. */
    uint64_t material_gen;
    unsigned cache_next;       /* under the write lock: round robin */
    _Atomic bool any_material; /* a Redis material is known (no lock) */
    bool ready;
} ring;

struct tg_tls_ticket_secret {
    _Atomic unsigned refs;
    uint64_t id; /* names it in the derived-key cache; never reused */
    unsigned char prk[32];
};

/* Secret ids: 0 is Redis. */
static _Atomic uint64_t next_secret_id = 1;

static int64_t clock_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The ring's clocks; tests replace both with one to age keys and step
 * through epochs without waiting. */
static int64_t (*tls_now_ms)(void) = clock_monotonic_ms;
static int64_t (*tls_wall_ms)(void) = clock_wall_ms;

void tg_tls_tickets_set_clock(int64_t (*now_ms)(void))
{
    tls_now_ms = now_ms != NULL ? now_ms : clock_monotonic_ms;
    tls_wall_ms = now_ms != NULL ? now_ms : clock_wall_ms;
}

int64_t tg_tls_tickets_epoch(int64_t period_ms)
{
    int64_t now = tls_wall_ms();
    if (period_ms <= 0)
        return 0;
    return now >= 0 ? now / period_ms : -((-now + period_ms - 1) / period_ms);
}

/* A page of its own: locked (best effort: no swap) and left out of core
 * dumps. NULL on failure. */
static void *locked_page(size_t len)
{
    void *page = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return NULL;
    if (mlock(page, len) != 0)
        tg_log_debug("tls: cannot lock ticket keys in memory: %s", strerror(errno));
    (void)madvise(page, len, MADV_DONTDUMP);
    return page;
}

static void locked_page_free(void *page, size_t len)
{
    OPENSSL_cleanse(page, len);
    munlock(page, len);
    munmap(page, len);
}

/* ---- HKDF ------------------------------------------------------------------ */

static void be64_put(unsigned char *p, int64_t v)
{
    uint64_t u = (uint64_t)v;
    for (int i = 7; i >= 0; i--, u >>= 8)
        p[i] = (unsigned char)u;
}

static int64_t be64_get(const unsigned char *p)
{
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u = u << 8 | p[i];
    return (int64_t)u;
}

/* HKDF-SHA256 in `mode` (EVP_KDF_HKDF_MODE_*): `key` is the input keying
 * material (EXTRACT_*) or the PRK (EXPAND_ONLY). Returns 0 or -1. */
static int hkdf(int mode, const unsigned char *key, size_t keylen, const char *salt,
                const unsigned char *info, size_t infolen, unsigned char *out, size_t outlen)
{
    EVP_KDF *kdf = ring.kdf != NULL ? ring.kdf : EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[6], *p = params;
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0);
    *p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, keylen);
    if (salt != NULL)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, strlen(salt));
    if (info != NULL)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
    *p = OSSL_PARAM_construct_end();
    int ok = kctx != NULL && EVP_KDF_derive(kctx, out, outlen, params) == 1;
    EVP_KDF_CTX_free(kctx);
    if (kdf != ring.kdf)
        EVP_KDF_free(kdf);
    if (!ok) {
        ERR_clear_error();
        OPENSSL_cleanse(out, outlen);
        return -1;
    }
    return 0;
}

/* An epoch's material from a file secret. */
static int secret_material(const struct tg_tls_ticket_secret *s, int64_t epoch,
                           unsigned char out[TG_TLS_TICKETS_MATERIAL])
{
    unsigned char info[sizeof(MATERIAL_INFO) - 1 + 8];
    memcpy(info, MATERIAL_INFO, sizeof(MATERIAL_INFO) - 1);
    be64_put(info + sizeof(MATERIAL_INFO) - 1, epoch);
    return hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, s->prk, sizeof(s->prk), NULL, info, sizeof(info),
                out, TG_TLS_TICKETS_MATERIAL);
}

/* An epoch's keys from its material. */
static int derive_keys(const unsigned char material[TG_TLS_TICKETS_MATERIAL], int64_t epoch,
                       struct shared_key *k)
{
    unsigned char info[sizeof(KEYS_INFO) - 1 + 8];
    memcpy(info, KEYS_INFO, sizeof(KEYS_INFO) - 1);
    be64_put(info + sizeof(KEYS_INFO) - 1, epoch);
    unsigned char okm[sizeof(k->aes) + sizeof(k->hmac) + sizeof(k->check)];
    if (hkdf(EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND, material, TG_TLS_TICKETS_MATERIAL, NULL, info,
             sizeof(info), okm, sizeof(okm)) < 0)
        return -1;
    memcpy(k->aes, okm, sizeof(k->aes));
    memcpy(k->hmac, okm + sizeof(k->aes), sizeof(k->hmac));
    memcpy(k->check, okm + sizeof(k->aes) + sizeof(k->hmac), sizeof(k->check));
    OPENSSL_cleanse(okm, sizeof(okm));
    k->epoch = epoch;
    k->set = true;
    return 0;
}

static void shared_name(const struct shared_key *k, unsigned char name[16])
{
    memcpy(name, NAME_MAGIC, 4);
    be64_put(name + 4, k->epoch);
    memcpy(name + 12, k->check, 4);
}

/* ---- the file secret ------------------------------------------------------- */

struct tg_tls_ticket_secret *tg_tls_tickets_secret_read(const char *path, char *err, size_t errlen)
{
    struct tg_tls_ticket_secret *s = NULL;
    unsigned char buf[SECRET_MAX + 1];
    size_t len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(err, errlen, "cannot read '%s': %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "'%s' is not a regular file", path);
        goto done;
    }
    /* Whoever can read it can decrypt every ticket of the fleet, and
     * whoever can write it can choose the keys. */
    if ((st.st_mode & (S_IRWXG | S_IRWXO) & ~(S_IXGRP | S_IXOTH)) != 0) {
        snprintf(err, errlen,
                 "'%s' is readable or writable by group or others (mode "
                 "%04o): only its owner may have access (chmod 600)",
                 path, (unsigned)(st.st_mode & 07777));
        goto done;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot read '%s': %s", path, strerror(errno));
            goto done;
        }
        if (n == 0 || (len += (size_t)n) == sizeof(buf))
            break;
    }
    if (len < SECRET_MIN || len > SECRET_MAX) {
        snprintf(err, errlen,
                 "'%s' holds %s%zu bytes; a ticket key file holds %d to %d "
                 "random bytes (e.g. head -c 32 /dev/urandom)",
                 path, len > SECRET_MAX ? "more than " : "",
                 len > SECRET_MAX ? (size_t)SECRET_MAX : len, SECRET_MIN, SECRET_MAX);
        goto done;
    }
    s = locked_page(RING_PAGE);
    if (s == NULL) {
        snprintf(err, errlen, "out of memory reading '%s'", path);
        goto done;
    }
    if (hkdf(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, buf, len, FILE_SALT, NULL, 0, s->prk, sizeof(s->prk)) <
        0) {
        snprintf(err, errlen, "cannot derive ticket keys from '%s'", path);
        locked_page_free(s, RING_PAGE);
        s = NULL;
        goto done;
    }
    atomic_init(&s->refs, 1);
    s->id = atomic_fetch_add(&next_secret_id, 1);
done:
    OPENSSL_cleanse(buf, sizeof(buf));
    if (fd >= 0)
        close(fd);
    return s;
}

struct tg_tls_ticket_secret *tg_tls_tickets_secret_ref(struct tg_tls_ticket_secret *s)
{
    atomic_fetch_add(&s->refs, 1);
    return s;
}

void tg_tls_tickets_secret_unref(struct tg_tls_ticket_secret *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        locked_page_free(s, RING_PAGE);
}

/* ---- the local ring ----------------------------------------------------------- */

static int ticket_key_new(struct ticket_key *k, int64_t now)
{
    if (RAND_bytes(k->name, sizeof(k->name)) != 1 || RAND_bytes(k->aes, sizeof(k->aes)) != 1 ||
        RAND_bytes(k->hmac, sizeof(k->hmac)) != 1) {
        ERR_clear_error();
        return -1;
    }
    /* Names with the magic are shared keys'. */
    if (memcmp(k->name, NAME_MAGIC, sizeof(NAME_MAGIC)) == 0)
        k->name[0] ^= 0x80;
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
        memmove(&ring.keys[1], &ring.keys[0], (RING_KEYS - 1) * sizeof(ring.keys[0]));
        ring.keys[0] = k;
    }
    pthread_rwlock_unlock(&ring.lock);
    OPENSSL_cleanse(&k, sizeof(k));
}

/* Copies the key to use into *out: the newest (name NULL, to encrypt) or
 * the one called `name` (to decrypt). Returns 1 for the newest key, 2 for
 * an older one that still decrypts (renew the ticket), 0 for none. */
static int ring_get(const unsigned char *name, int64_t period, struct ticket_key *out)
{
    int64_t now = tls_now_ms();
    for (int pass = 0;; pass++) {
        pthread_rwlock_rdlock(&ring.lock);
        if (pass == 0 && (!ring.keys[0].set || now - ring.keys[0].created_ms >= period)) {
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

/* ---- shared keys ----------------------------------------------------------------- */

/* The Redis material slot of `epoch`, or NULL. Under the lock. */
static struct shared_material *material_find(int64_t epoch)
{
    for (int i = 0; i < MATERIAL_SLOTS; i++)
        if (ring.page->material[i].set && ring.page->material[i].epoch == epoch)
            return &ring.page->material[i];
    return NULL;
}

/* Forgets the keys derived from Redis material for `epoch` (all epochs if
 * `all`). Under the write lock. */
static void cache_forget_redis(int64_t epoch, bool all)
{
    for (int i = 0; i < CACHE_SLOTS; i++) {
        struct shared_key *k = &ring.page->cache[i];
        if (k->set && k->source == SOURCE_REDIS && (all || k->epoch == epoch))
            OPENSSL_cleanse(k, sizeof(*k));
    }
}

/* Copies the keys of `epoch` from `secret` (NULL: Redis material) into
 * *out: from the cache, else derived and cached. Returns 0, or -1 when
 * that epoch's material is unknown (Redis) or derivation failed. */
static int shared_get(const struct tg_tls_ticket_secret *secret, int64_t epoch,
                      struct shared_key *out)
{
    uint64_t source = secret != NULL ? secret->id : SOURCE_REDIS;
    pthread_rwlock_rdlock(&ring.lock);
    for (int i = 0; i < CACHE_SLOTS; i++) {
        const struct shared_key *k = &ring.page->cache[i];
        if (k->set && k->source == source && k->epoch == epoch) {
            *out = *k;
            pthread_rwlock_unlock(&ring.lock);
            return 0;
        }
    }
    unsigned char material[TG_TLS_TICKETS_MATERIAL];
    uint64_t gen = ring.material_gen;
    int rc = 0;
    if (secret == NULL) {
        const struct shared_material *m = material_find(epoch);
        if (m != NULL)
            memcpy(material, m->bytes, sizeof(material));
        else
            rc = -1;
    }
    pthread_rwlock_unlock(&ring.lock);
    if (rc == 0 && secret != NULL)
        rc = secret_material(secret, epoch, material);
    if (rc == 0)
        rc = derive_keys(material, epoch, out);
    OPENSSL_cleanse(material, sizeof(material));
    if (rc < 0)
        return -1;
    out->source = source;
    pthread_rwlock_wrlock(&ring.lock);
    bool present = false;
    for (int i = 0; i < CACHE_SLOTS && !present; i++) {
        const struct shared_key *k = &ring.page->cache[i];
        present = k->set && k->source == source && k->epoch == epoch;
    }
    /* Material that changed meanwhile: use these keys once, keep none. */
    if (!present && (secret != NULL || gen == ring.material_gen)) {
        ring.page->cache[ring.cache_next] = *out;
        ring.cache_next = (ring.cache_next + 1) % CACHE_SLOTS;
    }
    pthread_rwlock_unlock(&ring.lock);
    return 0;
}

int tg_tls_tickets_share_put(int64_t epoch, const unsigned char material[TG_TLS_TICKETS_MATERIAL])
{
    if (!ring.ready)
        return -1;
    int rc = 1;
    pthread_rwlock_wrlock(&ring.lock);
    struct shared_material *m = material_find(epoch);
    if (m != NULL && CRYPTO_memcmp(m->bytes, material, sizeof(m->bytes)) == 0) {
        rc = 0;
    } else {
        if (m == NULL) {
            /* A free slot, else the oldest epoch's. */
            m = &ring.page->material[0];
            for (int i = 0; i < MATERIAL_SLOTS; i++) {
                struct shared_material *c = &ring.page->material[i];
                if (!c->set) {
                    m = c;
                    break;
                }
                if (c->epoch < m->epoch)
                    m = c;
            }
            if (m->set)
                cache_forget_redis(m->epoch, false);
        }
        memcpy(m->bytes, material, sizeof(m->bytes));
        m->epoch = epoch;
        m->set = true;
        cache_forget_redis(epoch, false);
        ring.material_gen++;
        atomic_store(&ring.any_material, true);
    }
    pthread_rwlock_unlock(&ring.lock);
    return rc;
}

bool tg_tls_tickets_share_get(int64_t epoch, unsigned char out[TG_TLS_TICKETS_MATERIAL])
{
    if (!ring.ready)
        return false;
    pthread_rwlock_rdlock(&ring.lock);
    const struct shared_material *m = material_find(epoch);
    if (m != NULL)
        memcpy(out, m->bytes, TG_TLS_TICKETS_MATERIAL);
    pthread_rwlock_unlock(&ring.lock);
    return m != NULL;
}

void tg_tls_tickets_share_clear(void)
{
    if (!ring.ready)
        return;
    pthread_rwlock_wrlock(&ring.lock);
    OPENSSL_cleanse(ring.page->material, sizeof(ring.page->material));
    cache_forget_redis(0, true);
    ring.material_gen++;
    atomic_store(&ring.any_material, false);
    pthread_rwlock_unlock(&ring.lock);
}

/* Fills *out with the key that encrypts (name NULL) or the one `name`
 * calls for, the way ring_get does, shared keys first. Returns 1 (use), 2
 * (use, renew) or 0 (none). */
static int key_get(const unsigned char *name, int64_t period,
                   const struct tg_tls_ticket_secret *secret, struct ticket_key *out)
{
    bool shared = secret != NULL || atomic_load(&ring.any_material);
    if (name != NULL && memcmp(name, NAME_MAGIC, sizeof(NAME_MAGIC)) == 0) {
        if (!shared)
            return 0;
        int64_t cur = tg_tls_tickets_epoch(period), epoch = be64_get(name + 4);
        struct shared_key k;
        if (epoch < cur - EPOCHS_BEHIND || epoch > cur + EPOCHS_AHEAD ||
            shared_get(secret, epoch, &k) < 0)
            return 0;
        int rc = 0;
        if (CRYPTO_memcmp(k.check, name + 12, sizeof(k.check)) == 0) {
            memcpy(out->name, name, sizeof(out->name));
            memcpy(out->aes, k.aes, sizeof(out->aes));
            memcpy(out->hmac, k.hmac, sizeof(out->hmac));
            rc = epoch == cur ? 1 : 2;
        }
        OPENSSL_cleanse(&k, sizeof(k));
        return rc;
    }
    if (name == NULL && shared) {
        struct shared_key k;
        if (shared_get(secret, tg_tls_tickets_epoch(period), &k) == 0) {
            shared_name(&k, out->name);
            memcpy(out->aes, k.aes, sizeof(out->aes));
            memcpy(out->hmac, k.hmac, sizeof(out->hmac));
            OPENSSL_cleanse(&k, sizeof(k));
            return 1;
        }
        /* This epoch's material is not known (yet): our own keys. */
    }
    return ring_get(name, period, out);
}

int tg_tls_tickets_key(SSL *ssl, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                       EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc, int64_t period_ms,
                       const struct tg_tls_ticket_secret *secret)
{
    if (!ring.ready)
        return enc ? -1 : 0;
    struct ticket_key k;
    int rc = key_get(enc ? NULL : name, period_ms, secret, &k);
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
        ok = RAND_bytes(iv, 16) == 1 && EVP_EncryptInit_ex(cctx, ring.cipher, NULL, k.aes, iv) == 1;
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

int tg_tls_tickets_init(void)
{
    if (ring.ready)
        return 0;
    ring.cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    ring.kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    if (ring.cipher == NULL || ring.kdf == NULL)
        goto fail;
    ring.map_len = RING_PAGE;
    ring.page = locked_page(ring.map_len);
    if (ring.page == NULL)
        goto fail;
    ring.keys = ring.page->ring;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* Writers (rotation, rare) must not starve behind handshakes. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&ring.lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc != 0)
        goto fail_page;
    if (ticket_key_new(&ring.keys[0], tls_now_ms()) < 0) {
        pthread_rwlock_destroy(&ring.lock);
        goto fail_page;
    }
    ring.cache_next = 0;
    atomic_store(&ring.any_material, false);
    ring.ready = true;
    return 0;

fail_page:
    locked_page_free(ring.page, ring.map_len);
    ring.page = NULL;
    ring.keys = NULL;
fail:
    EVP_CIPHER_free(ring.cipher);
    ring.cipher = NULL;
    EVP_KDF_free(ring.kdf);
    ring.kdf = NULL;
    ERR_clear_error();
    return -1;
}

void tg_tls_tickets_cleanup(void)
{
    if (!ring.ready)
        return;
    ring.ready = false;
    atomic_store(&ring.any_material, false);
    locked_page_free(ring.page, ring.map_len);
    ring.page = NULL;
    ring.keys = NULL;
    pthread_rwlock_destroy(&ring.lock);
    EVP_CIPHER_free(ring.cipher);
    ring.cipher = NULL;
    EVP_KDF_free(ring.kdf);
    ring.kdf = NULL;
}
