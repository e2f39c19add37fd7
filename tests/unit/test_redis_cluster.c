/* The Redis Cluster client: hash slots (CRC16 and hash tags, against
 * Redis' own examples), redirect parsing, one server passed straight
 * through (against a real redis-server), and, against fake cluster nodes
 * started here, the slot map read with CLUSTER SLOTS, MOVED (map updated,
 * the new node connected), ASK (ASKING first, map untouched), TRYAGAIN
 * (sent again within the deadline, then given up), and a node that goes
 * away (its slots refused at once). Real clusters, migrations and
 * failovers are in tests/integration/test_ratelimit_cluster.py. */
#include "../../src/redis_cluster.c"

#include "test.h"
#include "redis_harness.h"

static struct ev_loop *loop;

/* ---- slots ------------------------------------------------------------------ */

static uint16_t crc16_bitwise(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

static unsigned slot_of(const char *key)
{
    return tg_redis_cluster_key_slot(key, strlen(key));
}

TEST(hash_slots)
{
    /* The CRC of the cluster specification, and its table. */
    CHECK_EQ_INT(crc16("123456789", 9), 0x31c3);
    char buf[256];
    for (int i = 0; i < 256; i++)
        buf[i] = (char)(i * 7 + 3);
    for (size_t n = 0; n <= sizeof(buf); n += 17)
        CHECK_EQ_INT(crc16(buf, n), crc16_bitwise(buf, n));
    /* Slots as redis-cli CLUSTER KEYSLOT gives them. */
    CHECK_EQ_INT(slot_of("foo"), 12182);
    CHECK_EQ_INT(slot_of("bar"), 5061);
    CHECK_EQ_INT(slot_of("hello"), 866);
    CHECK_EQ_INT(slot_of(""), 0);
    /* Hash tags: the first {...} that is not empty. */
    CHECK_EQ_INT(slot_of("{user1000}.following"), slot_of("user1000"));
    CHECK_EQ_INT(slot_of("{user1000}.followers"), slot_of("user1000"));
    CHECK_EQ_INT(slot_of("foo{}{bar}"), crc16("foo{}{bar}", 10) & 16383);
    CHECK_EQ_INT(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    CHECK_EQ_INT(slot_of("foo{bar}{zap}"), slot_of("bar"));
    CHECK_EQ_INT(slot_of("no{close"), crc16("no{close", 8) & 16383);
    /* A rate-limit bucket: its {policy:key} tag, whatever the prefix. */
    CHECK_EQ_INT(slot_of("tollgate:rl:{login:1.2.3.4}"), slot_of("login:1.2.3.4"));
    CHECK_EQ_INT(slot_of("t:{login:1.2.3.4}"), slot_of("login:1.2.3.4"));
    /* Binary-safe: a NUL inside the key counts. */
    CHECK(tg_redis_cluster_key_slot("a\0b", 3) != tg_redis_cluster_key_slot("a", 1));
}

TEST(redirect_parsing)
{
    struct node from;
    memset(&from, 0, sizeof(from));
    snprintf(from.address, sizeof(from.address), "10.0.0.9:7000");
    unsigned slot = 0;
    char addr[ADDR_MAX];
    const char *s = "3999 127.0.0.1:6381";
    CHECK(parse_redirect(s, strlen(s), &from, &slot, addr));
    CHECK_EQ_INT(slot, 3999);
    CHECK_EQ_STR(addr, "127.0.0.1:6381");
    s = "12 ::1:7002"; /* Redis writes IPv6 hosts bare */
    CHECK(parse_redirect(s, strlen(s), &from, &slot, addr));
    CHECK_EQ_STR(addr, "[::1]:7002");
    s = "5 :7005"; /* unknown endpoint: the host we asked */
    CHECK(parse_redirect(s, strlen(s), &from, &slot, addr));
    CHECK_EQ_STR(addr, "10.0.0.9:7005");
    s = "5 ?:7005";
    CHECK(parse_redirect(s, strlen(s), &from, &slot, addr));
    CHECK_EQ_STR(addr, "10.0.0.9:7005");
    const char *bad[] = {"",
                         "3999",
                         "3999 127.0.0.1",
                         "16384 127.0.0.1:1",
                         "x 127.0.0.1:1",
                         "1 127.0.0.1:0",
                         "1 127.0.0.1:70000",
                         "1 127.0.0.1:1x"};
    for (size_t i = 0; i < TG_ARRAY_LEN(bad); i++)
        CHECK(!parse_redirect(bad[i], strlen(bad[i]), &from, &slot, addr));
}

/* ---- replies ---------------------------------------------------------------- */

struct rec {
    int calls, nulls;
    char str[64];
    double at;
};

static int rec_cb(void *arg, const redisReply *reply)
{
    struct rec *rc = arg;
    rc->calls++;
    rc->at = h_now();
    if (reply == NULL) {
        rc->nulls++;
        return 0;
    }
    snprintf(rc->str, sizeof(rc->str), "%.*s", (int)reply->len, reply->str ? reply->str : "");
    return 0;
}

static bool rec_done(void *arg)
{
    return ((struct rec *)arg)->calls > 0;
}

static bool cl_up(void *arg)
{
    return tg_redis_cluster_state(arg) == TG_REDIS_UP;
}

static struct tg_redis_cluster_cmd *get(struct tg_redis_cluster *cl, const char *key,
                                        int64_t timeout_ms, struct rec *rc)
{
    memset(rc, 0, sizeof(*rc));
    const char *argv[] = {"GET", key};
    size_t len[] = {3, strlen(key)};
    return tg_redis_cluster_command(cl, tg_redis_cluster_slot(cl, key, len[1]), 2, argv, len,
                                    timeout_ms, rec_cb, rc);
}

/* One server: no map, no hashing, the link's own commands. */
TEST(one_server_passes_through)
{
    struct h_redis srv;
    memset(&srv, 0, sizeof(srv));
    h_redis_start(&srv);
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", srv.port);
    struct tg_config_redis c = {.address = addr, .timeout_ms = 200};
    struct tg_redis_cluster *cl = tg_redis_cluster_new(loop, &c, NULL);
    CHECK(cl != NULL && !tg_redis_cluster_enabled(cl));
    CHECK(h_run_until(loop, cl_up, cl, 3));
    CHECK_EQ_INT(tg_redis_cluster_slot(cl, "foo", 3), 0);
    const char *argv[] = {"SET", "foo", "bar"};
    size_t len[] = {3, 3, 3};
    struct rec rc = {0};
    CHECK(tg_redis_cluster_command(cl, 0, 3, argv, len, 0, rec_cb, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "OK");
    CHECK(get(cl, "foo", 0, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "bar");
    struct tg_redis_cluster_node nodes[2];
    CHECK_EQ_INT(tg_redis_cluster_nodes(cl, nodes, 2), 1);
    CHECK_EQ_STR(nodes[0].address, addr);
    CHECK_EQ_INT(nodes[0].slots, TG_REDIS_CLUSTER_SLOTS);
    /* Cancelled: never called. */
    tg_redis_cluster_cancel(cl, get(cl, "foo", 0, &rc));
    h_run_for(loop, 0.05);
    CHECK_EQ_INT(rc.calls, 0);
    /* Freed with one in flight: called with NULL first. */
    CHECK(get(cl, "foo", 0, &rc) != NULL);
    tg_redis_cluster_free(cl);
    CHECK_EQ_INT(rc.nulls, 1);
    h_redis_stop(&srv);
}

/* ---- fake cluster nodes ------------------------------------------------------ */

/* A cluster node that answers CLUSTER SLOTS with `slots`, ASKING with +OK
 * (the next command then counts as asked), and GET with `get` -- or, when
 * `need_asking`, with `get` only right after ASKING and with `not_asked`
 * otherwise; `tryagain` GETs first answer -TRYAGAIN. One connection at a
 * time, as redis_harness.h's fake. */
struct fake_node {
    int listen_fd, port;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t lock;
    char slots[512], get[128], not_asked[128]; /* under lock */
    bool need_asking;
    int tryagain;
    atomic_int gets, askings, slot_reads;
};

static void fake_set(struct fake_node *f, const char *slots, const char *get_reply)
{
    pthread_mutex_lock(&f->lock);
    if (slots != NULL)
        snprintf(f->slots, sizeof(f->slots), "%s", slots);
    if (get_reply != NULL)
        snprintf(f->get, sizeof(f->get), "%s", get_reply);
    pthread_mutex_unlock(&f->lock);
}

static void fake_serve(struct fake_node *f, int fd)
{
    static __thread char buf[1 << 14];
    size_t len = 0;
    bool asked = false;
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, 20);
        if (atomic_load(&f->stop))
            return;
        if (pr <= 0)
            continue;
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n <= 0)
            return;
        len += (size_t)n;
        size_t used;
        char name[32];
        while ((used = h_parse_cmd(buf, len, name, sizeof(name))) > 0) {
            memmove(buf, buf + used, len - used);
            len -= used;
            char out[600];
            pthread_mutex_lock(&f->lock);
            if (strcmp(name, "PING") == 0) {
                snprintf(out, sizeof(out), "+PONG\r\n");
            } else if (strcmp(name, "ASKING") == 0) {
                atomic_fetch_add(&f->askings, 1);
                snprintf(out, sizeof(out), "+OK\r\n");
            } else if (strcmp(name, "CLUSTER") == 0) {
                atomic_fetch_add(&f->slot_reads, 1);
                snprintf(out, sizeof(out), "%s", f->slots);
            } else {
                atomic_fetch_add(&f->gets, 1);
                if (f->tryagain > 0) {
                    f->tryagain--;
                    snprintf(out, sizeof(out),
                             "-TRYAGAIN Multiple keys request during rehashing "
                             "of slot\r\n");
                } else {
                    snprintf(out, sizeof(out), "%s",
                             f->need_asking && !asked ? f->not_asked : f->get);
                }
            }
            asked = strcmp(name, "ASKING") == 0;
            pthread_mutex_unlock(&f->lock);
            if (!h_write_all(fd, out, strlen(out)))
                return;
        }
    }
}

static void *fake_main(void *arg)
{
    struct fake_node *f = arg;
    while (!atomic_load(&f->stop)) {
        struct pollfd pfd = {f->listen_fd, POLLIN, 0};
        if (poll(&pfd, 1, 20) <= 0)
            continue;
        int fd = accept(f->listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        fake_serve(f, fd);
        close(fd);
    }
    return NULL;
}

static void fake_start(struct fake_node *f)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->lock, NULL);
    f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    if (bind(f->listen_fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(f->listen_fd, 8) < 0 ||
        getsockname(f->listen_fd, (struct sockaddr *)&a, &alen) < 0) {
        perror("fake node");
        exit(2);
    }
    f->port = ntohs(a.sin_port);
    pthread_create(&f->thread, NULL, fake_main, f);
}

static void fake_stop(struct fake_node *f)
{
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    close(f->listen_fd);
    pthread_mutex_destroy(&f->lock);
}

/* A CLUSTER SLOTS reply: slots [0, split) on port a, [split, 16384) on b
 * (a alone when split is 16384). */
static void slots_reply(char *out, size_t cap, int a, int b, unsigned split)
{
    char pa[8], pb[8];
    snprintf(pa, sizeof(pa), "%d", a);
    snprintf(pb, sizeof(pb), "%d", b);
    if (split >= TG_REDIS_CLUSTER_SLOTS)
        snprintf(out, cap,
                 "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:%s\r\n$1\r\na\r\n", pa);
    else
        snprintf(out, cap,
                 "*2\r\n*3\r\n:0\r\n:%u\r\n*3\r\n$9\r\n127.0.0.1\r\n:%s\r\n$1\r\na\r\n"
                 "*3\r\n:%u\r\n:16383\r\n*3\r\n$0\r\n\r\n:%s\r\n$1\r\nb\r\n",
                 split - 1, pa, split, pb);
}

struct slot_up_arg {
    struct tg_redis_cluster *cl;
    unsigned slot;
    const char *address;
};

static bool slot_served_by(void *arg)
{
    struct slot_up_arg *a = arg;
    struct node *n = owner(a->cl, a->slot);
    return n != NULL && strcmp(n->address, a->address) == 0 &&
           tg_redis_cluster_slot_state(a->cl, a->slot) == TG_REDIS_UP;
}

static bool refreshed_twice(void *arg)
{
    struct tg_redis_cluster_stats st;
    tg_redis_cluster_stats(arg, &st);
    return st.refreshes >= 2;
}

TEST(map_and_redirects)
{
    struct fake_node a, b;
    fake_start(&a);
    fake_start(&b);
    char sa[512], sb[512], seed[32], addr_b[32], reply[128];
    snprintf(seed, sizeof(seed), "127.0.0.1:%d", a.port);
    snprintf(addr_b, sizeof(addr_b), "127.0.0.1:%d", b.port);
    slots_reply(sa, sizeof(sa), a.port, 0, TG_REDIS_CLUSTER_SLOTS);
    fake_set(&a, sa, "$1\r\na\r\n");
    fake_set(&b, sa, "$1\r\nb\r\n");
    const char *seeds[] = {seed};
    struct tg_config_redis c = {.cluster = seeds, .ncluster = 1, .timeout_ms = 200};
    struct tg_redis_cluster *cl = tg_redis_cluster_new(loop, &c, NULL);
    CHECK(cl != NULL && tg_redis_cluster_enabled(cl));
    CHECK(tg_redis_cluster_state(cl) == TG_REDIS_CONNECTING);
    CHECK(h_run_until(loop, cl_up, cl, 3));
    struct rec rc;
    CHECK(get(cl, "hello", 0, &rc) != NULL); /* slot 866 */
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "a");

    /* The map moves slots [8192, 16384) to b: "foo" (12182) there. A
     * MOVED names a node not connected yet: that command fails (NULL),
     * the map names b at once and b is connected; the next one goes
     * there. */
    slots_reply(sb, sizeof(sb), a.port, b.port, 8192);
    snprintf(reply, sizeof(reply), "-MOVED 12182 127.0.0.1:%d\r\n", b.port);
    fake_set(&a, sb, reply);
    fake_set(&b, sb, NULL);
    CHECK(get(cl, "foo", 0, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_INT(rc.nulls, 1);
    struct slot_up_arg su = {cl, 12182, addr_b};
    CHECK(h_run_until(loop, slot_served_by, &su, 3));
    CHECK(get(cl, "foo", 0, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "b");
    struct tg_redis_cluster_stats st;
    tg_redis_cluster_stats(cl, &st);
    CHECK_EQ_INT(st.moved, 1);
    /* The MOVED also had the whole map read again. */
    CHECK(h_run_until(loop, refreshed_twice, cl, 2));
    /* Both connected now: a MOVED to b is followed within the command. */
    CHECK(h_run_until(loop, cl_up, cl, 3));
    snprintf(reply, sizeof(reply), "-MOVED 866 127.0.0.1:%d\r\n", b.port);
    fake_set(&a, NULL, reply);
    CHECK(get(cl, "hello", 0, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "b");
    CHECK(owner(cl, 866) != NULL && owner(cl, 866)->index == owner(cl, 12182)->index);
    tg_redis_cluster_stats(cl, &st);
    CHECK_EQ_INT(st.moved, 2);
    /* /status' view: both nodes up, b with what the map and MOVED gave. */
    struct tg_redis_cluster_node nodes[4];
    CHECK_EQ_INT(tg_redis_cluster_nodes(cl, nodes, 4), 2);

    /* ASK: a points to b for this one command; b answers only after
     * ASKING; the map is not touched. */
    slots_reply(sa, sizeof(sa), a.port, 0, TG_REDIS_CLUSTER_SLOTS);
    fake_set(&a, sa, NULL);
    fake_set(&b, sa, NULL);
    struct slot_up_arg back = {cl, 5061, seed};
    cl->refresh_at = 0;
    schedule_refresh(cl, 0.);
    CHECK(h_run_until(loop, slot_served_by, &back, 3));
    snprintf(reply, sizeof(reply), "-ASK 5061 127.0.0.1:%d\r\n", b.port);
    fake_set(&a, NULL, reply);
    pthread_mutex_lock(&b.lock);
    b.need_asking = true;
    snprintf(b.not_asked, sizeof(b.not_asked), "-MOVED 5061 %s\r\n", seed);
    snprintf(b.get, sizeof(b.get), "$5\r\nasked\r\n");
    pthread_mutex_unlock(&b.lock);
    int askings = atomic_load(&b.askings);
    CHECK(get(cl, "bar", 0, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "asked");
    CHECK_EQ_INT(atomic_load(&b.askings), askings + 1);
    CHECK(strcmp(owner(cl, 5061)->address, seed) == 0);
    tg_redis_cluster_stats(cl, &st);
    CHECK_EQ_INT(st.asked, 1);

    /* TRYAGAIN: sent again a few ms later, within the deadline ... */
    fake_set(&a, NULL, "$5\r\nlater\r\n");
    pthread_mutex_lock(&a.lock);
    a.tryagain = 2;
    pthread_mutex_unlock(&a.lock);
    CHECK(get(cl, "bar", 0, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "later");
    tg_redis_cluster_stats(cl, &st);
    CHECK_EQ_INT(st.tryagain, 2);
    /* ... and given up (the error reply shown) when the deadline would
     * pass: the caller never waits longer than its timeout. */
    pthread_mutex_lock(&a.lock);
    a.tryagain = 1000;
    pthread_mutex_unlock(&a.lock);
    double t0 = h_now();
    CHECK(get(cl, "bar", 40, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK(strncmp(rc.str, "TRYAGAIN", 8) == 0);
    CHECK(rc.at - t0 < 0.040 + 0.020);
    /* A command cancelled while it waits to be sent again never calls. */
    CHECK(get(cl, "bar", 200, &rc) != NULL);
    struct tg_redis_cluster_cmd *cmd = get(cl, "bar", 200, &rc);
    h_run_for(loop, 0.012);
    tg_redis_cluster_cancel(cl, cmd);
    h_run_for(loop, 0.3);
    pthread_mutex_lock(&a.lock);
    a.tryagain = 0;
    pthread_mutex_unlock(&a.lock);

    /* b goes away while it serves 8192..16383: its slots are refused at
     * once (no waiting), a's still served. */
    slots_reply(sb, sizeof(sb), a.port, b.port, 8192);
    fake_set(&a, sb, "$1\r\na\r\n");
    cl->refresh_at = 0;
    schedule_refresh(cl, 0.);
    CHECK(h_run_until(loop, slot_served_by, &su, 3));
    fake_stop(&b);
    struct slot_up_arg gone = {cl, 12182, addr_b};
    double until = h_now() + 3;
    while (slot_served_by(&gone) && h_now() < until)
        h_run_for(loop, 0.01);
    CHECK(tg_redis_cluster_slot_state(cl, 12182) != TG_REDIS_UP);
    CHECK(tg_redis_cluster_state(cl) == TG_REDIS_DOWN);
    CHECK(get(cl, "foo", 0, &rc) == NULL);
    CHECK(get(cl, "hello", 0, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "a");

    /* Freed with a command in flight: it hears NULL first. */
    CHECK(get(cl, "hello", 0, &rc) != NULL);
    tg_redis_cluster_free(cl);
    CHECK_EQ_INT(rc.nulls, 1);
    fake_stop(&a);
}

/* A seed that is not a cluster node: no map, the state settles DOWN and
 * nothing is sent. */
TEST(seed_that_is_no_cluster)
{
    struct fake_node a;
    fake_start(&a);
    char seed[32];
    snprintf(seed, sizeof(seed), "127.0.0.1:%d", a.port);
    fake_set(&a, "-ERR This instance has cluster support disabled\r\n", "$1\r\na\r\n");
    const char *seeds[] = {seed};
    struct tg_config_redis c = {.cluster = seeds, .ncluster = 1, .timeout_ms = 100};
    struct tg_redis_cluster *cl = tg_redis_cluster_new(loop, &c, NULL);
    double until = h_now() + 2;
    while (tg_redis_cluster_state(cl) != TG_REDIS_DOWN && h_now() < until)
        h_run_for(loop, 0.01);
    CHECK(tg_redis_cluster_state(cl) == TG_REDIS_DOWN);
    struct rec rc;
    CHECK(get(cl, "foo", 0, &rc) == NULL);
    CHECK(cl->st.refresh_failures >= 1);
    tg_redis_cluster_free(cl);
    fake_stop(&a);
}

/* A reload may switch between one server and a cluster: the commands in
 * flight hear NULL before configure returns, and the client starts afresh
 * on the other kind; the same seeds again change nothing. */
TEST(reconfigured_between_one_server_and_a_cluster)
{
    struct fake_node a, one;
    fake_start(&a);
    fake_start(&one);
    char seed[32], addr[32], sa[512];
    snprintf(seed, sizeof(seed), "127.0.0.1:%d", a.port);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", one.port);
    slots_reply(sa, sizeof(sa), a.port, 0, TG_REDIS_CLUSTER_SLOTS);
    fake_set(&a, sa, "$7\r\ncluster\r\n");
    fake_set(&one, NULL, "$3\r\none\r\n");
    struct tg_config_redis single = {.address = addr, .timeout_ms = 200};
    const char *seeds[] = {seed};
    struct tg_config_redis multi = {.cluster = seeds, .ncluster = 1, .timeout_ms = 200};

    struct tg_redis_cluster *cl = tg_redis_cluster_new(loop, &single, NULL);
    CHECK(h_run_until(loop, cl_up, cl, 3));
    struct rec rc;
    CHECK(get(cl, "foo", 0, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "one");
    CHECK(get(cl, "foo", 0, &rc) != NULL);
    CHECK(tg_redis_cluster_configure(cl, &multi));
    CHECK_EQ_INT(rc.nulls, 1); /* before configure returned */
    CHECK(tg_redis_cluster_enabled(cl));
    CHECK(h_run_until(loop, cl_up, cl, 3));
    CHECK(get(cl, "foo", 0, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "cluster");
    multi.timeout_ms = 300; /* the same seeds: only the timeout */
    CHECK(!tg_redis_cluster_configure(cl, &multi));
    CHECK_EQ_INT(tg_redis_cluster_timeout_ms(cl), 300);
    CHECK(tg_redis_cluster_state(cl) == TG_REDIS_UP);
    CHECK(get(cl, "foo", 0, &rc) != NULL);
    CHECK(tg_redis_cluster_configure(cl, &single));
    CHECK_EQ_INT(rc.nulls, 1);
    CHECK(!tg_redis_cluster_enabled(cl));
    CHECK(h_run_until(loop, cl_up, cl, 3));
    CHECK(get(cl, "foo", 0, &rc) != NULL);
    CHECK(h_run_until(loop, rec_done, &rc, 2));
    CHECK_EQ_STR(rc.str, "one");
    tg_redis_cluster_free(cl);
    fake_stop(&a);
    fake_stop(&one);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    loop = ev_loop_new(EVFLAG_AUTO);
    RUN(hash_slots);
    RUN(redirect_parsing);
    RUN(one_server_passes_through);
    RUN(map_and_redirects);
    RUN(seed_that_is_no_cluster);
    RUN(reconfigured_between_one_server_and_a_cluster);
    ev_loop_destroy(loop);
    return TEST_SUMMARY();
}
