/* Unit tests for src/tenant_shared.c: put, replace, forget, the bound
 * (oldest written goes first), and readers on other threads while a writer
 * replaces and drops entries all the time: every read is whole (no torn or
 * freed record: run under ASan by `make test`), and replaced records are
 * freed once no reader can see them. */
#include "../../src/tenant_shared.c"

#include <pthread.h>
#include <stdio.h>

#include "test.h"

static ssize_t get(struct tg_tenant_shared *s, const char *key, char *buf, size_t cap, double *when)
{
    return tg_tenant_shared_get(s, 0, key, strlen(key), buf, cap, when);
}

static void put(struct tg_tenant_shared *s, const char *key, const char *data, double when)
{
    tg_tenant_shared_put(s, key, strlen(key), data, strlen(data), when);
}

TEST(put_replace_forget)
{
    struct tg_tenant_shared *s = tg_tenant_shared_new(8, 1);
    char buf[64];
    double when = 0;
    CHECK_EQ_INT(get(s, "acme", buf, sizeof(buf), &when), -1);
    put(s, "acme", "10.0.0.1:80", 5.0);
    CHECK_EQ_INT(get(s, "acme", buf, sizeof(buf), &when), 11);
    CHECK(memcmp(buf, "10.0.0.1:80", 11) == 0 && when == 5.0);
    put(s, "acme", "10.0.0.2:80,10.0.0.3:80", 6.0);
    CHECK_EQ_INT(get(s, "acme", buf, sizeof(buf), &when), 23);
    CHECK(memcmp(buf, "10.0.0.2:80", 11) == 0 && when == 6.0);
    CHECK_EQ_INT(tg_tenant_shared_count(s), 1);
    /* Too small a buffer: no copy. */
    CHECK_EQ_INT(get(s, "acme", buf, 4, &when), -1);
    put(s, "host:shop.example.com", "acme", 7.0);
    CHECK_EQ_INT(tg_tenant_shared_count(s), 2);
    tg_tenant_shared_forget(s, "acme", 4);
    CHECK_EQ_INT(get(s, "acme", buf, sizeof(buf), &when), -1);
    CHECK_EQ_INT(get(s, "host:shop.example.com", buf, sizeof(buf), &when), 4);
    CHECK_EQ_INT(tg_tenant_shared_count(s), 1);
    tg_tenant_shared_forget(s, "nothing", 7);
    /* A reader number out of range reads nothing. */
    CHECK_EQ_INT(tg_tenant_shared_get(s, 1, "host:shop.example.com", 21, buf, sizeof(buf), &when),
                 -1);
    /* Nobody is reading: everything replaced or dropped is freed already. */
    CHECK(s->retired == NULL);
    tg_tenant_shared_free(s);
}

TEST(bound_drops_the_oldest_written)
{
    struct tg_tenant_shared *s = tg_tenant_shared_new(3, 1);
    char buf[16], key[16];
    double when;
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof(key), "t%d", i);
        put(s, key, "x", i);
    }
    CHECK_EQ_INT(tg_tenant_shared_count(s), 3);
    CHECK_EQ_INT(get(s, "t0", buf, sizeof(buf), &when), -1);
    CHECK_EQ_INT(get(s, "t1", buf, sizeof(buf), &when), -1);
    CHECK_EQ_INT(get(s, "t4", buf, sizeof(buf), &when), 1);
    /* Rewriting t2 makes it the newest: t3 goes next. */
    put(s, "t2", "y", 9);
    put(s, "t5", "z", 10);
    CHECK_EQ_INT(get(s, "t3", buf, sizeof(buf), &when), -1);
    CHECK_EQ_INT(get(s, "t2", buf, sizeof(buf), &when), 1);
    CHECK_EQ_INT(tg_tenant_shared_count(s), 3);
    tg_tenant_shared_free(s);
}

/* A writer keeps replacing and dropping 64 keys whose value is the key
 * repeated; three readers check every value they read is whole. */
struct race {
    struct tg_tenant_shared *s;
    unsigned reader;
    _Atomic bool stop;
    long reads, bad;
};

static void value_of(char *out, size_t cap, const char *key, int reps)
{
    size_t o = 0;
    for (int r = 0; r < reps && o + strlen(key) < cap; r++)
        o += (size_t)snprintf(out + o, cap - o, "%s", key);
}

static void *reader_run(void *arg)
{
    struct race *r = arg;
    char key[16], buf[4096], want[4096];
    for (unsigned i = 0; !atomic_load(&r->stop); i++) {
        snprintf(key, sizeof(key), "k%u", i % 64);
        double when;
        ssize_t n =
            tg_tenant_shared_get(r->s, r->reader, key, strlen(key), buf, sizeof(buf), &when);
        if (n < 0)
            continue;
        r->reads++;
        int reps = (int)when;
        value_of(want, sizeof(want), key, reps);
        if ((size_t)n != strlen(want) || memcmp(buf, want, (size_t)n) != 0)
            r->bad++;
    }
    return NULL;
}

TEST(readers_beside_a_writer)
{
    struct tg_tenant_shared *s = tg_tenant_shared_new(48, 3);
    struct race r[3];
    pthread_t t[3];
    for (unsigned i = 0; i < 3; i++) {
        r[i] = (struct race){.s = s, .reader = i};
        pthread_create(&t[i], NULL, reader_run, &r[i]);
    }
    char key[16], val[4096];
    for (int i = 0; i < 200000; i++) {
        snprintf(key, sizeof(key), "k%d", i % 64);
        if (i % 7 == 0) {
            tg_tenant_shared_forget(s, key, strlen(key));
            continue;
        }
        int reps = 1 + i % 100;
        value_of(val, sizeof(val), key, reps);
        tg_tenant_shared_put(s, key, strlen(key), val, strlen(val), reps);
    }
    for (unsigned i = 0; i < 3; i++)
        atomic_store(&r[i].stop, true);
    long reads = 0, bad = 0;
    for (unsigned i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        reads += r[i].reads;
        bad += r[i].bad;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(reads > 0);
    CHECK(tg_tenant_shared_count(s) <= 48);
    /* The readers are gone: the next write frees every retired record. */
    put(s, "last", "x", 1);
    CHECK(s->retired == NULL);
    tg_tenant_shared_free(s);
}

int main(void)
{
    RUN(put_replace_forget);
    RUN(bound_drops_the_oldest_written);
    RUN(readers_beside_a_writer);
    return TEST_SUMMARY();
}
