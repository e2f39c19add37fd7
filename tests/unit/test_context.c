/* A context's event order: socket callbacks of one loop pass run in the
 * order epoll reported the sockets ready (libev alone runs them newest
 * first), a stopped watcher's noted event is dropped, and events fed while
 * serving run in the same pass. */
#include "../../src/context.c"

#include <sys/socket.h>

#include "test.h"

#define NSOCK 8

static struct {
    struct tg_context w;
    int pair[NSOCK][2];
    ev_io io[NSOCK];
    int order[NSOCK * 2];
    int n;
    int stop_after; /* serving this index stops the next watcher */
    int feed_from;  /* serving this index feeds the last watcher */
} t;

static void on_ready(struct ev_loop *loop, ev_io *io, int revents)
{
    if (tg_context_defer_io(&t.w, io, revents))
        return;
    int i = (int)(io - t.io);
    char b;
    if (revents & EV_READ)
        (void)!read(t.pair[i][0], &b, 1);
    t.order[t.n++] = i;
    if (i == t.stop_after)
        tg_context_io_stop(loop, &t.io[i + 1]);
    if (i == t.feed_from)
        ev_feed_event(loop, &t.io[NSOCK - 1], EV_CUSTOM);
}

static void setup(void)
{
    memset(&t, 0, sizeof(t));
    t.stop_after = t.feed_from = -1;
    CHECK(tg_context_init(&t.w, 0, ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV), NULL) == 0);
    for (int i = 0; i < NSOCK; i++) {
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, t.pair[i]) == 0);
        ev_io_init(&t.io[i], on_ready, t.pair[i][0], EV_READ);
        ev_io_start(t.w.loop, &t.io[i]);
    }
    ev_run(t.w.loop, EVRUN_NOWAIT); /* registers the watchers with epoll */
}

static void teardown(void)
{
    for (int i = 0; i < NSOCK; i++) {
        ev_io_stop(t.w.loop, &t.io[i]);
        close(t.pair[i][0]);
        close(t.pair[i][1]);
    }
    ev_loop_destroy(t.w.loop);
    tg_context_fini(&t.w);
}

/* Sockets become readable in the order 5, 2, 7, 0, ...: served so. */
static const int ready_order[NSOCK] = {5, 2, 7, 0, 3, 6, 1, 4};

static void make_ready(int upto)
{
    for (int k = 0; k < upto; k++)
        CHECK(write(t.pair[ready_order[k]][1], "x", 1) == 1);
}

TEST(served_in_the_order_epoll_reports)
{
    setup();
    make_ready(NSOCK);
    ev_run(t.w.loop, EVRUN_ONCE);
    CHECK_EQ_INT(t.n, NSOCK);
    for (int k = 0; k < NSOCK; k++)
        CHECK_EQ_INT(t.order[k], ready_order[k]);
    CHECK_EQ_INT(t.w.nready, 0);
    teardown();
}

TEST(stopped_watcher_is_not_served)
{
    setup();
    t.stop_after = 2; /* 2 is served before 3 and stops it */
    make_ready(NSOCK);
    ev_run(t.w.loop, EVRUN_ONCE);
    CHECK_EQ_INT(t.n, NSOCK - 1);
    for (int k = 0; k < t.n; k++)
        CHECK(t.order[k] != 3);
    teardown();
}

TEST(fed_event_runs_in_the_same_pass)
{
    setup();
    t.feed_from = 5;
    make_ready(1); /* only 5 is ready; it feeds 7, which is not */
    ev_run(t.w.loop, EVRUN_ONCE | EVRUN_NOWAIT);
    CHECK_EQ_INT(t.n, 2);
    CHECK_EQ_INT(t.order[0], 5);
    CHECK_EQ_INT(t.order[1], NSOCK - 1);
    teardown();
}

int main(void)
{
    RUN(served_in_the_order_epoll_reports);
    RUN(stopped_watcher_is_not_served);
    RUN(fed_event_runs_in_the_same_pass);
    return TEST_SUMMARY();
}
