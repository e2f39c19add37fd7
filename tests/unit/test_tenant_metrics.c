/* Unit tests for src/tenant_metrics.c: the space-saving table keeps the
 * busiest tenants exactly, counts of evicted tenants land in "_other", the
 * export set is at most the limit, exported counters never go down across
 * scrapes (even when the set changes), workers' tables merge, and a scrape
 * running beside a busy worker never reads a torn slot. */
#include "../../src/tenant_metrics.c"

#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#include "test.h"

static void setup(unsigned n)
{
    admit_always = true; /* plain space-saving: deterministic */
    configured = false;
    tg_tenant_metrics_configure(n);
    tg_tenant_metrics_reset_export();
}

static const struct tg_tenant_outcome ok = {
    .status_class = 2, .bucket = 1, .duration_us = 1000, .bytes_in = 100, .bytes_out = 1000};

static void hit(struct tg_tenant_metrics *tm, const char *id, const struct tg_tenant_outcome *o)
{
    struct tg_tenant_mark mark = {0};
    tg_tenant_metrics_begin(tm, id, &mark);
    tg_tenant_metrics_end(tm, &mark, o);
}

static const struct tg_tenant_row *row_of(const struct tg_tenant_report *r, const char *id)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->rows[i].id, id) == 0)
            return &r->rows[i];
    return NULL;
}

static uint64_t requests(const struct tg_tenant_series *s)
{
    uint64_t n = 0;
    for (int c = 0; c < 6; c++)
        n += s->requests[c];
    return n;
}

static uint64_t total_requests(const struct tg_tenant_report *r)
{
    uint64_t n = requests(&r->other);
    for (size_t i = 0; i < r->n; i++)
        n += requests(&r->rows[i].s);
    return n;
}

TEST(off_when_limit_is_zero)
{
    setup(0);
    CHECK(tg_tenant_metrics_new() == NULL);
    struct tg_tenant_mark mark = {0};
    tg_tenant_metrics_begin(NULL, "a", &mark);
    tg_tenant_metrics_end(NULL, &mark, &ok);
    CHECK_EQ_INT(mark.slot, 0);
}

/* Five tenants far busier than 2,000 others that come once each: the five
 * are exported with exact counts; the rest is "_other", and nothing is lost. */
TEST(busiest_kept_exactly_rest_is_other)
{
    setup(5);
    struct tg_tenant_metrics *tm = tg_tenant_metrics_new();
    CHECK(tm != NULL);
    char id[32];
    int light = 0;
    for (int round = 0; round < 1000; round++) {
        for (int h = 0; h < 5; h++) {
            snprintf(id, sizeof(id), "heavy%d", h);
            hit(tm, id, &ok);
        }
        for (int k = 0; k < 2; k++) {
            snprintf(id, sizeof(id), "light%d", light++);
            struct tg_tenant_outcome o = ok;
            o.status_class = 5;
            o.upstream_error = true;
            hit(tm, id, &o);
        }
    }
    struct tg_tenant_report r;
    CHECK_EQ_INT(tg_tenant_metrics_report(&tm, 1, &r), 0);
    CHECK_EQ_INT(r.n, 5);
    CHECK_EQ_INT(r.limit, 5);
    CHECK_EQ_INT(r.capacity, 10);
    CHECK_EQ_INT(r.tracked, 10);
    CHECK(r.evictions > 1900);
    for (int h = 0; h < 5; h++) {
        snprintf(id, sizeof(id), "heavy%d", h);
        const struct tg_tenant_row *row = row_of(&r, id);
        CHECK(row != NULL);
        if (row == NULL)
            continue;
        CHECK_EQ_INT(row->s.requests[2], 1000);
        CHECK_EQ_INT(requests(&row->s), 1000);
        CHECK_EQ_INT(row->s.bytes_in, 100000);
        CHECK_EQ_INT(row->s.bytes_out, 1000000);
        CHECK_EQ_INT(row->s.duration[1], 1000);
        CHECK_EQ_INT(row->s.duration_us, 1000000);
        CHECK_EQ_INT(row->s.upstream_errors, 0);
        CHECK_EQ_INT(row->s.active, 0);
    }
    /* The light tenants: in "_other" or, for the few still in a slot but
     * not exported, summed there too. */
    CHECK_EQ_INT(r.other.requests[5], 2000);
    CHECK_EQ_INT(r.other.upstream_errors, 2000);
    CHECK_EQ_INT(total_requests(&r), 7000);
    tg_tenant_report_free(&r);
    tg_tenant_metrics_free(tm);
}

/* A request whose slot went to another tenant while it ran ends in
 * "_other"; the in-flight gauge stays right either way. */
TEST(in_flight_follows_eviction)
{
    setup(1); /* two slots */
    struct tg_tenant_metrics *tm = tg_tenant_metrics_new();
    struct tg_tenant_mark a = {0}, b = {0};
    tg_tenant_metrics_begin(tm, "a", &a);
    tg_tenant_metrics_begin(tm, "b", &b);
    struct tg_tenant_report r;
    CHECK_EQ_INT(tg_tenant_metrics_report(&tm, 1, &r), 0);
    int64_t in_flight = r.other.active;
    for (size_t i = 0; i < r.n; i++)
        in_flight += r.rows[i].s.active;
    CHECK_EQ_INT(in_flight, 2);
    tg_tenant_report_free(&r);
    /* "c" and "d" take both slots from "a" and "b" (each weighs 1). */
    hit(tm, "c", &ok);
    hit(tm, "d", &ok);
    hit(tm, "d", &ok);
    tg_tenant_metrics_end(tm, &a, &ok);
    CHECK_EQ_INT(tm->other.active, 1);
    tg_tenant_metrics_end(tm, &b, NULL); /* unanswered: only the gauge */
    CHECK_EQ_INT(tm->other.active, 0);
    CHECK_EQ_INT(requests(&tm->other), 1); /* "a"; not "b" */
    /* Never begun (the tenant was not found): counted, no gauge. */
    struct tg_tenant_mark none = {0};
    tg_tenant_metrics_end(tm, &none, &ok);
    CHECK_EQ_INT(tm->other.active, 0);
    CHECK_EQ_INT(requests(&tm->other), 2);
    /* An id too long for a slot is "_other" from the start. */
    char longid[100];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    struct tg_tenant_mark l = {0};
    tg_tenant_metrics_begin(tm, longid, &l);
    CHECK_EQ_INT(tm->other.active, 1);
    tg_tenant_metrics_end(tm, &l, &ok);
    CHECK_EQ_INT(tm->other.active, 0);
    tg_tenant_metrics_free(tm);
}

static bool series_ge(const struct tg_tenant_series *a, const struct tg_tenant_series *b)
{
    const uint64_t *x = (const uint64_t *)a, *y = (const uint64_t *)b;
    for (size_t i = 0; i < SERIES_WORDS; i++)
        if (i != offsetof(struct tg_tenant_series, active) / 8 && x[i] < y[i])
            return false;
    return true;
}

/* The export set changes (a newcomer with more than twice the weakest's
 * traffic; a tenant no worker holds any more), and still no exported
 * value goes down. */
TEST(exported_counters_never_go_down)
{
    setup(2); /* four slots */
    struct tg_tenant_metrics *tm = tg_tenant_metrics_new();
    for (int i = 0; i < 50; i++) {
        hit(tm, "a", &ok);
        hit(tm, "b", &ok);
    }
    for (int i = 0; i < 10; i++)
        hit(tm, "c", &ok);
    struct tg_tenant_report r1, r2, r3;
    CHECK_EQ_INT(tg_tenant_metrics_report(&tm, 1, &r1), 0);
    CHECK_EQ_INT(r1.n, 2);
    CHECK(row_of(&r1, "a") != NULL && row_of(&r1, "b") != NULL);
    CHECK_EQ_INT(requests(&r1.other), 10);
    /* "c" grows past twice "b": it replaces the weakest. */
    for (int i = 0; i < 200; i++)
        hit(tm, "c", &ok);
    for (int i = 0; i < 10; i++)
        hit(tm, "a", &ok);
    CHECK_EQ_INT(tg_tenant_metrics_report(&tm, 1, &r2), 0);
    CHECK_EQ_INT(r2.n, 2);
    CHECK(row_of(&r2, "c") != NULL && row_of(&r2, "a") != NULL && row_of(&r2, "b") == NULL);
    CHECK(series_ge(&r2.other, &r1.other));
    CHECK(series_ge(&row_of(&r2, "a")->s, &row_of(&r1, "a")->s));
    /* Churn through new tenants until "a" loses its slot. */
    char id[16];
    for (int i = 0; i < 400; i++) {
        snprintf(id, sizeof(id), "n%d", i);
        hit(tm, id, &ok);
        hit(tm, "c", &ok);
    }
    CHECK_EQ_INT(tg_tenant_metrics_report(&tm, 1, &r3), 0);
    CHECK(r3.n <= 2);
    CHECK(row_of(&r3, "c") != NULL);
    CHECK(series_ge(&r3.other, &r2.other));
    CHECK(series_ge(&row_of(&r3, "c")->s, &row_of(&r2, "c")->s));
    /* Nothing counted twice in the end: the true total is reached. */
    CHECK(total_requests(&r3) >= 50 + 50 + 210 + 10 + 400 + 400);
    tg_tenant_report_free(&r1);
    tg_tenant_report_free(&r2);
    tg_tenant_report_free(&r3);
    tg_tenant_metrics_free(tm);
}

/* A tenant seen by two workers is one series with both counts; a worker
 * without a table (NULL) is skipped. */
TEST(workers_merge)
{
    setup(3);
    struct tg_tenant_metrics *tm[3] = {tg_tenant_metrics_new(), NULL, tg_tenant_metrics_new()};
    for (int i = 0; i < 7; i++)
        hit(tm[0], "shared", &ok);
    for (int i = 0; i < 5; i++)
        hit(tm[2], "shared", &ok);
    hit(tm[2], "only2", &ok);
    struct tg_tenant_report r;
    CHECK_EQ_INT(tg_tenant_metrics_report(tm, 3, &r), 0);
    CHECK_EQ_INT(r.n, 2);
    CHECK_EQ_STR(r.rows[0].id, "shared"); /* busiest first */
    CHECK_EQ_INT(r.rows[0].s.requests[2], 12);
    CHECK_EQ_INT(r.rows[0].weight, 12);
    CHECK_EQ_INT(r.rows[1].s.requests[2], 1);
    CHECK_EQ_INT(r.capacity, 12);
    tg_tenant_report_free(&r);
    tg_tenant_metrics_free(tm[0]);
    tg_tenant_metrics_free(tm[2]);
}

/* A worker churns its slots while scrapes run beside it: every id read is
 * one that was written (no torn slot), and values only go up. */
struct churn {
    struct tg_tenant_metrics *tm;
    volatile bool stop;
};

static void *churn_run(void *arg)
{
    struct churn *c = arg;
    char id[40];
    for (unsigned i = 0; !c->stop; i++) {
        snprintf(id, sizeof(id), "tenant-%u-with-a-longer-name-%u", i % 997, i % 997);
        hit(c->tm, id, &ok);
        hit(c->tm, "steady", &ok);
    }
    return NULL;
}

TEST(scrape_beside_a_busy_worker)
{
    setup(4);
    struct churn c = {tg_tenant_metrics_new(), false};
    pthread_t t;
    pthread_create(&t, NULL, churn_run, &c);
    while (__atomic_load_n(&c.tm->evictions, __ATOMIC_RELAXED) < 1000)
        usleep(1000);
    struct tg_tenant_series prev_other = {0};
    uint64_t prev_steady = 0;
    int torn = 0, down = 0;
    for (int k = 0; k < 300; k++) {
        struct tg_tenant_report r;
        if (tg_tenant_metrics_report(&c.tm, 1, &r) < 0)
            continue;
        for (size_t i = 0; i < r.n; i++) {
            unsigned a, b;
            const char *id = r.rows[i].id;
            if (strcmp(id, "steady") == 0) {
                down += r.rows[i].s.requests[2] < prev_steady;
                prev_steady = r.rows[i].s.requests[2];
            } else if (sscanf(id, "tenant-%u-with-a-longer-name-%u", &a, &b) != 2 || a != b) {
                torn++;
            }
        }
        down += !series_ge(&r.other, &prev_other);
        prev_other = r.other;
        tg_tenant_report_free(&r);
        usleep(200);
    }
    c.stop = true;
    pthread_join(t, NULL);
    CHECK_EQ_INT(torn, 0);
    CHECK_EQ_INT(down, 0);
    CHECK(prev_steady > 0);
    tg_tenant_metrics_free(c.tm);
}

/* The random admission: 5,000 tenants that come once do not evict on
 * every request (a few do), while a tenant with steady traffic still gets
 * a slot, and keeps it; nothing counted is lost. */
TEST(random_admission_spares_the_long_tail)
{
    setup(5); /* ten slots */
    admit_always = false;
    struct tg_tenant_metrics *tm = tg_tenant_metrics_new();
    char id[32];
    for (int round = 0; round < 500; round++) {
        for (int k = 0; k < 10; k++) {
            snprintf(id, sizeof(id), "tail%d", round * 10 + k);
            hit(tm, id, &ok);
        }
        hit(tm, "steady", &ok);
    }
    struct tg_tenant_report r;
    CHECK_EQ_INT(tg_tenant_metrics_report(&tm, 1, &r), 0);
    CHECK(r.evictions < 2500); /* plain space-saving: one per newcomer, 4990 */
    const struct tg_tenant_row *steady = row_of(&r, "steady");
    CHECK(steady != NULL);
    CHECK(steady != NULL && steady->s.requests[2] > 300);
    CHECK_EQ_INT(total_requests(&r), 5500);
    CHECK_EQ_INT(r.other.active, 0);
    tg_tenant_report_free(&r);
    tg_tenant_metrics_free(tm);
    admit_always = true;
}

int main(void)
{
    RUN(off_when_limit_is_zero);
    RUN(busiest_kept_exactly_rest_is_other);
    RUN(in_flight_follows_eviction);
    RUN(exported_counters_never_go_down);
    RUN(workers_merge);
    RUN(scrape_beside_a_busy_worker);
    RUN(random_admission_spares_the_long_tail);
    return TEST_SUMMARY();
}
