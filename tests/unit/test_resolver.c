/* The resolver's state machine, driven by hand (its answers fed in as the
 * thread would record them): a group's servers in the order written, a
 * name's answer sorted so that DNS rotation is no change, the epoch moving
 * only on a change, a worker's view refreshed and told which addresses
 * went, failures keeping the last good addresses and logged once per change
 * of state, failures counted per label once per attempt, readiness and its
 * notification, intervals of the groups sharing a name, names forgotten
 * with their last group, views of groups gone or ids reused. Then the real
 * thread resolving "localhost". */
#include "../../src/resolver.c"

#include <arpa/inet.h>
#include <unistd.h>

#include "log.h"
#include "test.h"

static struct sockaddr_storage v4(const char *ip, int port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &a->sin_addr);
    return ss;
}

static struct tg_config_server literal(const char *text, const char *ip, int port)
{
    struct tg_config_server s;
    memset(&s, 0, sizeof(s));
    s.addr.sa = v4(ip, port);
    s.addr.salen = sizeof(struct sockaddr_in);
    s.addr.text = text;
    return s;
}

static struct tg_config_server named(const char *text, const char *host, int port)
{
    struct tg_config_server s;
    memset(&s, 0, sizeof(s));
    s.addr.text = text;
    s.host = host;
    s.port = (uint16_t)port;
    return s;
}

/* "a b c": the servers of a set. */
static const char *texts(const struct tg_server_set *set)
{
    static char out[1024];
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; set != NULL && i < set->n && o < sizeof(out); i++)
        o += (size_t)snprintf(out + o, sizeof(out) - o, "%s%s", i ? " " : "",
                              set->servers[i].addr.text);
    return out;
}

static struct rname *name_of(const char *host, int port)
{
    pthread_mutex_lock(&R.lock);
    struct rname *nm = name_find(host, (uint16_t)port);
    pthread_mutex_unlock(&R.lock);
    return nm;
}

/* Feeds an answer as the thread would record it. */
static void answer_ok(struct rname *nm, const char *const *ips, int port)
{
    struct sockaddr_storage v[8];
    size_t n = 0;
    for (; ips[n] != NULL; n++)
        v[n] = v4(ips[n], port);
    pthread_mutex_lock(&R.lock);
    name_answered(nm, 0, NULL, v, n, ++R.attempts, mono());
    pthread_mutex_unlock(&R.lock);
}

static void answer_fail(struct rname *nm, const char *why)
{
    pthread_mutex_lock(&R.lock);
    name_answered(nm, -1, why, NULL, 0, ++R.attempts, mono());
    pthread_mutex_unlock(&R.lock);
}

static int count_in_file(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    int n = 0;
    char line[2048];
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, needle) != NULL;
    if (f != NULL)
        fclose(f);
    return n;
}

static struct {
    int calls;
    char gone[8][64];
} removed_seen;

static void on_removed(void *arg, const struct tg_config_server *gone)
{
    (void)arg;
    if (removed_seen.calls < 8)
        snprintf(removed_seen.gone[removed_seen.calls], 64, "%s", gone->addr.text);
    removed_seen.calls++;
}

static uint64_t label_failures(const char *label)
{
    pthread_mutex_lock(&R.lock);
    uint64_t n = 0;
    for (struct label *l = R.labels; l != NULL; l = l->next)
        if (strcmp(l->name, label) == 0)
            n = l->failures;
    pthread_mutex_unlock(&R.lock);
    return n;
}

/* Literals and names in the order written; a name's addresses are those
 * the load found, sorted. */
TEST(group_from_a_loaded_config)
{
    struct sockaddr_storage loaded[2] = {v4("10.0.0.9", 80), v4("10.0.0.2", 80)};
    struct tg_config_server servers[3] = {literal("10.1.1.1:81", "10.1.1.1", 81),
                                          named("App.Internal:80", "App.Internal", 80),
                                          literal("10.1.1.2:82", "10.1.1.2", 82)};
    servers[1].resolved = loaded;
    servers[1].nresolved = 2;
    struct tg_resolver_group *g = tg_resolver_group_new("app", servers, 3, 30000);
    CHECK(g != NULL);
    CHECK(tg_resolver_group_ready(g));
    struct tg_server_set *set = tg_resolver_group_set(g);
    CHECK_EQ_STR(texts(set), "10.1.1.1:81 10.0.0.2:80 10.0.0.9:80 10.1.1.2:82");
    CHECK(set != NULL && set->servers[0].host == NULL);
    CHECK(set != NULL && set->servers[1].host != NULL &&
          strcmp(set->servers[1].host, "app.internal") == 0);
    CHECK(set != NULL && set->servers[1].port == 80);
    tg_server_set_unref(set);
    struct tg_resolver_name_state st[2];
    CHECK_EQ_INT(tg_resolver_group_names(g, st, 2), 1);
    CHECK_EQ_STR(st[0].name, "app.internal:80");
    CHECK_EQ_INT(st[0].addresses, 2);
    CHECK(st[0].answered && !st[0].failing);
    tg_resolver_group_unref(g);
    /* The last group gone, the name is forgotten. */
    CHECK(name_of("app.internal", 80) == NULL);
    CHECK_EQ_INT(R.nnames, 0);
}

/* DNS rotates its answers: the same addresses in another order are no
 * change; another set is, and a view learns which addresses went. */
TEST(changes_move_the_epoch_and_views_follow)
{
    struct tg_config_server servers[1] = {named("svc:8080", "svc", 8080)};
    struct tg_resolver_group *g = tg_resolver_group_new("svc", servers, 1, 30000);
    CHECK(!tg_resolver_group_ready(g));
    struct rname *nm = name_of("svc", 8080);
    CHECK(nm != NULL && nm->due == 0); /* unknown: due at once */
    struct tg_resolver_view view = {0};
    struct tg_server_set *s0 = tg_resolver_view_get(&view, g, on_removed, NULL);
    CHECK(s0 != NULL && s0->n == 0); /* no answer yet: no address */

    uint64_t e0 = tg_resolver_epoch();
    answer_ok(nm, (const char *const[]){"127.0.0.2", "127.0.0.3", NULL}, 8080);
    CHECK(tg_resolver_group_ready(g));
    uint64_t e1 = tg_resolver_epoch();
    CHECK(e1 != e0);
    struct tg_server_set *s1 = tg_resolver_view_get(&view, g, on_removed, NULL);
    CHECK_EQ_STR(texts(s1), "127.0.0.2:8080 127.0.0.3:8080");
    CHECK_EQ_INT(removed_seen.calls, 0);
    /* A request holds the set it started with. */
    tg_server_set_ref(s1);

    answer_ok(nm, (const char *const[]){"127.0.0.3", "127.0.0.2", "127.0.0.3", NULL}, 8080);
    CHECK(tg_resolver_epoch() == e1);
    CHECK(tg_resolver_view_get(&view, g, on_removed, NULL) == s1); /* no copy taken */

    answer_ok(nm, (const char *const[]){"127.0.0.3", "127.0.0.4", NULL}, 8080);
    CHECK(tg_resolver_epoch() != e1);
    struct tg_server_set *s2 = tg_resolver_view_get(&view, g, on_removed, NULL);
    CHECK(s2 != s1);
    CHECK_EQ_STR(texts(s2), "127.0.0.3:8080 127.0.0.4:8080");
    CHECK_EQ_INT(removed_seen.calls, 1);
    CHECK_EQ_STR(removed_seen.gone[0], "127.0.0.2:8080");
    /* The request's set is still whole. */
    CHECK_EQ_STR(texts(s1), "127.0.0.2:8080 127.0.0.3:8080");
    tg_server_set_unref(s1);

    /* A change elsewhere moves the epoch: the view copies, finds the same
     * servers, and keeps its set. */
    struct tg_config_server other[1] = {named("other:1", "other", 1)};
    struct tg_resolver_group *g2 = tg_resolver_group_new("other", other, 1, 30000);
    answer_ok(name_of("other", 1), (const char *const[]){"127.0.0.9", NULL}, 1);
    CHECK(tg_resolver_view_get(&view, g, on_removed, NULL) == s2);
    CHECK(view.epoch == tg_resolver_epoch());
    CHECK_EQ_INT(removed_seen.calls, 1);
    tg_resolver_group_unref(g2);

    tg_server_set_unref(view.set);
    tg_resolver_group_unref(g);
    memset(&removed_seen, 0, sizeof(removed_seen));
}

/* A failed resolution keeps the last good addresses; it is logged when it
 * starts failing and when it resolves again, not per attempt; every
 * attempt counts once for the label, however many of its groups use the
 * name. */
TEST(failures_keep_the_last_good_set)
{
    char path[] = "/tmp/tg-test-resolver-log-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    tg_log_open(path);
    tg_log_set_level(TG_LOG_INFO);

    struct tg_config_server servers[1] = {named("db:5432", "db", 5432)};
    struct tg_resolver_group *a = tg_resolver_group_new("pg", servers, 1, 30000);
    struct tg_resolver_group *b = tg_resolver_group_new("pg", servers, 1, 30000);
    struct rname *nm = name_of("db", 5432);
    CHECK_EQ_INT(nm->users, 2);
    answer_ok(nm, (const char *const[]){"10.0.0.5", NULL}, 5432);
    uint64_t e = tg_resolver_epoch();
    uint64_t before = label_failures("pg");
    for (int i = 0; i < 3; i++)
        answer_fail(nm, "Name or service not known");
    CHECK_EQ_INT(label_failures("pg") - before, 3);
    CHECK_EQ_INT(tg_resolver_group_failures(a), label_failures("pg"));
    CHECK(tg_resolver_epoch() == e); /* nothing changed for the workers */
    struct tg_server_set *set = tg_resolver_group_set(a);
    CHECK_EQ_STR(texts(set), "10.0.0.5:5432");
    tg_server_set_unref(set);
    struct tg_resolver_name_state st[1];
    tg_resolver_group_names(b, st, 1);
    CHECK(st[0].failing);
    CHECK_EQ_STR(st[0].error, "Name or service not known");
    CHECK_EQ_INT(st[0].addresses, 1);
    /* Back, with the same address and then another. */
    answer_ok(nm, (const char *const[]){"10.0.0.5", NULL}, 5432);
    answer_ok(nm, (const char *const[]){"10.0.0.6", NULL}, 5432);
    answer_fail(nm, "Temporary failure in name resolution");
    answer_fail(nm, "Temporary failure in name resolution");
    tg_log_set_level(TG_LOG_ERROR + 1);
    tg_log_open(NULL);
    CHECK_EQ_INT(count_in_file(path, "db:5432 does not resolve"), 2);
    CHECK_EQ_INT(count_in_file(path, "keeping its last addresses (10.0.0.5:5432)"), 1);
    CHECK_EQ_INT(count_in_file(path, "keeping its last addresses (10.0.0.6:5432)"), 1);
    CHECK_EQ_INT(count_in_file(path, "db:5432 resolves again (still 10.0.0.5:5432)"), 1);
    CHECK_EQ_INT(count_in_file(path, "db:5432 now resolves to 10.0.0.6:5432 (was 10.0.0.5:5432)"),
                 1);
    unlink(path);
    tg_resolver_group_unref(a);
    tg_resolver_group_unref(b);
}

/* A name that never resolved has no address, and a group is ready once
 * each of its names had an answer, good or not; the notification comes
 * once, not after it was cancelled. */
static int notified;
static void on_ready(void *arg)
{
    (void)arg;
    notified++;
}

TEST(ready_and_notify)
{
    struct tg_config_server servers[2] = {named("a:1", "a", 1), named("b:1", "b", 1)};
    struct tg_resolver_group *g = tg_resolver_group_new("t", servers, 2, 30000);
    tg_resolver_group_notify(g, on_ready, NULL);
    answer_fail(name_of("a", 1), "Name or service not known");
    CHECK_EQ_INT(notified, 0);
    CHECK(!tg_resolver_group_ready(g));
    answer_ok(name_of("b", 1), (const char *const[]){"10.0.0.1", NULL}, 1);
    CHECK_EQ_INT(notified, 1);
    CHECK(tg_resolver_group_ready(g));
    struct tg_server_set *set = tg_resolver_group_set(g);
    CHECK_EQ_STR(texts(set), "10.0.0.1:1");
    tg_server_set_unref(set);
    answer_ok(name_of("a", 1), (const char *const[]){"10.0.0.2", NULL}, 1);
    CHECK_EQ_INT(notified, 1);

    struct tg_config_server one[1] = {named("c:1", "c", 1)};
    struct tg_resolver_group *h = tg_resolver_group_new("t", one, 1, 30000);
    tg_resolver_group_notify(h, on_ready, NULL);
    tg_resolver_group_notify(h, NULL, NULL);
    answer_ok(name_of("c", 1), (const char *const[]){"10.0.0.3", NULL}, 1);
    CHECK_EQ_INT(notified, 1);
    tg_resolver_group_unref(h);
    tg_resolver_group_unref(g);
}

/* A name shared by groups is resolved at the shortest of their intervals,
 * and at the longer one again when the short one goes; a name the thread
 * is resolving when its last group goes is freed by the thread. */
TEST(intervals_and_lifetimes)
{
    struct tg_config_server s[1] = {named("Shared:9", "Shared", 9)};
    struct tg_config_server t[1] = {named("shared:9", "shared", 9)};
    struct tg_resolver_group *slow = tg_resolver_group_new("x", s, 1, 30000);
    struct tg_resolver_group *fast = tg_resolver_group_new("y", t, 1, 200);
    struct rname *nm = name_of("shared", 9);
    CHECK(nm != NULL);
    CHECK_EQ_INT(nm->users, 2);
    CHECK_EQ_INT(name_interval(nm), 200);
    double now = mono();
    answer_ok(nm, (const char *const[]){"10.0.0.1", NULL}, 9);
    CHECK(nm->due > now && nm->due < now + 1.0);
    tg_resolver_group_unref(fast);
    CHECK_EQ_INT(name_interval(nm), 30000);
    answer_ok(nm, (const char *const[]){"10.0.0.1", NULL}, 9);
    CHECK(nm->due > now + 29);
    /* Busy in the thread when its last group goes: left for the thread. */
    nm->busy = true;
    tg_resolver_group_unref(slow);
    CHECK(name_of("shared", 9) == nm);
    pthread_mutex_lock(&R.lock);
    nm->busy = false;
    if (nm->users == 0)
        name_free(nm);
    pthread_mutex_unlock(&R.lock);
    CHECK(name_of("shared", 9) == NULL);
}

/* Views of groups gone give their sets back at the sweep; a view whose id
 * another group took starts afresh (nothing reported removed). */
TEST(views_of_groups_gone)
{
    struct tg_config_server s[1] = {named("v:1", "v", 1)};
    struct tg_resolver_group *g = tg_resolver_group_new("v", s, 1, 30000);
    answer_ok(name_of("v", 1), (const char *const[]){"10.0.0.1", NULL}, 1);
    unsigned id = tg_resolver_group_id(g);
    struct tg_resolver_view views[64];
    memset(views, 0, sizeof(views));
    CHECK(id < 64);
    CHECK(tg_resolver_view_get(&views[id], g, on_removed, NULL) != NULL);
    tg_resolver_views_sweep(views, 64, on_removed, NULL);
    CHECK(views[id].set != NULL); /* alive, unchanged */
    tg_resolver_group_unref(g);

    /* The id goes to the next group. */
    struct tg_config_server s2[1] = {literal("10.9.9.9:9", "10.9.9.9", 9)};
    struct tg_config_server both[2] = {s2[0], named("w:1", "w", 1)};
    struct tg_resolver_group *g2 = tg_resolver_group_new("w", both, 2, 30000);
    CHECK_EQ_INT(tg_resolver_group_id(g2), id);
    struct tg_server_set *set = tg_resolver_view_get(&views[id], g2, on_removed, NULL);
    CHECK_EQ_STR(texts(set), "10.9.9.9:9");
    CHECK_EQ_INT(removed_seen.calls, 0);
    tg_resolver_group_unref(g2);
    tg_resolver_views_sweep(views, 64, on_removed, NULL);
    CHECK(views[id].set == NULL);
    CHECK_EQ_INT(removed_seen.calls, 0);
}

/* The real thread and getaddrinfo: localhost is in every hosts file. */
static bool localhost_ready(struct tg_resolver_group *g)
{
    for (int i = 0; i < 200; i++) {
        if (tg_resolver_group_ready(g))
            return true;
        usleep(10000);
    }
    return false;
}

TEST(thread_resolves_localhost)
{
    CHECK(tg_resolver_start() == 0);
    struct tg_config_server s[2] = {named("localhost:8099", "localhost", 8099),
                                    named("nonexistent.invalid:1", "nonexistent.invalid", 1)};
    struct tg_resolver_group *g = tg_resolver_group_new("local", s, 2, 30000);
    CHECK(localhost_ready(g));
    struct tg_server_set *set = tg_resolver_group_set(g);
    CHECK(strstr(texts(set), "127.0.0.1:8099") != NULL);
    for (size_t i = 0; set != NULL && i < set->n; i++)
        CHECK_EQ_STR(set->servers[i].host, "localhost");
    tg_server_set_unref(set);
    struct tg_resolver_name_state st[2];
    CHECK_EQ_INT(tg_resolver_group_names(g, st, 2), 2);
    CHECK(!st[0].failing && st[1].failing);
    tg_resolver_group_unref(g);
    tg_resolver_stop();
    CHECK(R.labels == NULL && R.groups == NULL && R.buckets == NULL);
}

int main(void)
{
    tg_log_set_level(TG_LOG_ERROR + 1);
    RUN(group_from_a_loaded_config);
    RUN(changes_move_the_epoch_and_views_follow);
    RUN(failures_keep_the_last_good_set);
    RUN(ready_and_notify);
    RUN(intervals_and_lifetimes);
    RUN(views_of_groups_gone);
    RUN(thread_resolves_localhost);
    return TEST_SUMMARY();
}
