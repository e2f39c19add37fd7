/* SipHash-1-3, keyed, for hash tables whose keys clients choose (client
 * addresses, header values, Host names): a random key per table keeps an
 * attacker from aiming every key at one chain (hash flooding). 1-3 rounds
 * are what Rust's and Python's tables use; the full strength of SipHash-2-4
 * is not needed for a table, and a 20-byte key hashes in ~10 ns. Inline:
 * it sits on the rate limiter's per-request path. */
#ifndef TG_SIPHASH_H
#define TG_SIPHASH_H

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* A random key for one table. Without kernel randomness at all (seccomp,
 * no /dev) a weak key still differs per process and per table. */
static inline void tg_siphash_random_key(uint64_t key[2])
{
    key[0] = key[1] = 0;
    if (getrandom(key, 16, GRND_NONBLOCK) == 16)
        return;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, key, 16);
        close(fd);
        if (n == 16)
            return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    key[0] ^= (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)key;
    key[1] ^= (uint64_t)ts.tv_sec * 0xc2b2ae3d27d4eb4fULL ^ (uint64_t)getpid();
}

#define TG_SIP_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define TG_SIPROUND               \
    do {                          \
        v0 += v1;                 \
        v1 = TG_SIP_ROTL(v1, 13); \
        v1 ^= v0;                 \
        v0 = TG_SIP_ROTL(v0, 32); \
        v2 += v3;                 \
        v3 = TG_SIP_ROTL(v3, 16); \
        v3 ^= v2;                 \
        v0 += v3;                 \
        v3 = TG_SIP_ROTL(v3, 21); \
        v3 ^= v0;                 \
        v2 += v1;                 \
        v1 = TG_SIP_ROTL(v1, 17); \
        v1 ^= v2;                 \
        v2 = TG_SIP_ROTL(v2, 32); \
    } while (0)

static inline uint64_t tg_siphash13(const void *data, size_t len, uint64_t k0, uint64_t k1)
{
    const unsigned char *in = data;
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0;
    uint64_t v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0;
    uint64_t v3 = 0x7465646279746573ULL ^ k1;
    uint64_t b = (uint64_t)len << 56;
    const unsigned char *end = in + (len & ~(size_t)7);
    for (; in != end; in += 8) {
        uint64_t m;
        memcpy(&m, in, 8); /* host order: the hash only lives in memory */
        v3 ^= m;
        TG_SIPROUND;
        v0 ^= m;
    }
    for (size_t i = 0; i < (len & 7); i++)
        b |= (uint64_t)in[i] << (8 * i);
    v3 ^= b;
    TG_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    TG_SIPROUND;
    TG_SIPROUND;
    TG_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

#undef TG_SIPROUND
#undef TG_SIP_ROTL

#endif
