/* The ticket key ring: process-wide, so every worker, every context and
 * every snapshot encrypt and decrypt with the same keys and a reload keeps
 * tickets valid. Not here: the contexts that use it (tls_server.c).
 *
 * keys[0] is the newest and the only one that encrypts; rotation happens
 * lazily, at the first ticket operation once keys[0] is `period` old,
 * under the write lock (a few microseconds, a few times a day). Because
 * every encryption checks first, no key encrypts once it is a period old;
 * it then decrypts until it is three periods old (so "the previous one or
 * two"), and tickets it decrypts are renewed with the newest key. The keys
 * live in one mlock'ed page excluded from core dumps: never on disk, not
 * even in swap. */
#include "tls_tickets.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#include "log.h"

struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t created_ms; /* monotonic */
    bool set;
};

#define RING_KEYS 3
#define RING_PAGE 4096

static struct {
    pthread_rwlock_t lock;
    struct ticket_key *keys; /* [RING_KEYS], page-aligned */
    size_t map_len;
    EVP_CIPHER *cipher;
    bool ready;
} ring;

static int64_t clock_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The ring's clock; tests replace it to age keys without waiting. */
static int64_t (*tls_now_ms)(void) = clock_monotonic_ms;

void tg_tls_tickets_set_clock(int64_t (*now_ms)(void))
{
    tls_now_ms = now_ms != NULL ? now_ms : clock_monotonic_ms;
}

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

int tg_tls_tickets_key(SSL *ssl, unsigned char name[16],
                       unsigned char iv[EVP_MAX_IV_LENGTH], EVP_CIPHER_CTX *cctx,
                       EVP_MAC_CTX *hctx, int enc, int64_t period_ms)
{
    if (!ring.ready)
        return enc ? -1 : 0;
    struct ticket_key k;
    int rc = ring_get(enc ? NULL : name, period_ms, &k);
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

int tg_tls_tickets_init(void)
{
    if (ring.ready)
        return 0;
    ring.cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    if (ring.cipher == NULL)
        goto fail;
    ring.map_len = RING_PAGE;
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
    if (rc != 0)
        goto fail_page;
    if (ticket_key_new(&ring.keys[0], tls_now_ms()) < 0) {
        pthread_rwlock_destroy(&ring.lock);
        goto fail_page;
    }
    ring.ready = true;
    return 0;

fail_page:
    munmap(page, ring.map_len);
    ring.keys = NULL;
fail:
    EVP_CIPHER_free(ring.cipher);
    ring.cipher = NULL;
    ERR_clear_error();
    return -1;
}

void tg_tls_tickets_cleanup(void)
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
}
