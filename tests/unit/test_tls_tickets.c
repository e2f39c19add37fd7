/* The ticket key ring (src/tls_tickets.c) on a fake clock: which key
 * encrypts, how long one decrypts, and rotation while other threads take
 * keys. Handshakes that use the ring are in test_tls.c. */
#include "../../src/tls_tickets.c"

#include <stdatomic.h>
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
        if (rc == 0 ? t1 - t0 < 2 * ring_period
                    : memcmp(enc.aes, dec.aes, sizeof(enc.aes)) != 0)
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
    CHECK(ring_get(NULL, ring_period, &k) == 1 &&
          memcmp(k.name, before.name, sizeof(k.name)) != 0);
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
    tg_tls_tickets_cleanup();
    tg_tls_tickets_set_clock(NULL);
    return TEST_SUMMARY();
}
