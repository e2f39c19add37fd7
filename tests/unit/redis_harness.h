/* Test helpers for the Redis modules: a real redis-server on a free
 * loopback port (killed with the test, even if the test dies), a blocking
 * hiredis client for checks (tests may block; the gateway may not), a
 * loop runner with a wall-clock bound, and a tiny fake server for replies
 * no real Redis sends. */
#ifndef TG_REDIS_HARNESS_H
#define TG_REDIS_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#define H_UNUSED __attribute__((unused))

static H_UNUSED double h_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static H_UNUSED int h_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        perror("free port");
        exit(2);
    }
    close(fd);
    return ntohs(a.sin_port);
}

static H_UNUSED bool h_have_redis_server(void)
{
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", path != NULL ? path : "/usr/bin:/bin");
    for (char *save = NULL, *d = strtok_r(buf, ":", &save); d != NULL;
         d = strtok_r(NULL, ":", &save)) {
        char f[4200];
        snprintf(f, sizeof(f), "%s/redis-server", d);
        if (access(f, X_OK) == 0)
            return true;
    }
    return false;
}

struct h_redis {
    pid_t pid;
    int port;
    char sock[108];
    char extra[128]; /* e.g. "--requirepass secret", split on spaces */
};

static H_UNUSED redisContext *h_client(const struct h_redis *s)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    if (c == NULL || c->err) {
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

/* Starts (or restarts, on the same port and socket) the server. */
static H_UNUSED void h_redis_start(struct h_redis *s)
{
    if (!h_have_redis_server()) {
        fprintf(stderr, "FATAL: redis-server not found in PATH; the Redis "
                        "unit tests need it (apt-get install redis-server)\n");
        exit(2);
    }
    if (s->port == 0)
        s->port = h_free_port();
    if (s->sock[0] == '\0')
        snprintf(s->sock, sizeof(s->sock), "/tmp/tg-test-redis-%d-%d.sock", (int)getpid(), s->port);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 1);
        if (getenv("TG_TEST_VERBOSE") == NULL)
            dup2(null, 2);
        char port[16];
        snprintf(port, sizeof(port), "%d", s->port);
        const char *argv[32] = {"redis-server", "--port",       port,    "--bind",
                                "127.0.0.1",    "--save",       "",      "--appendonly",
                                "no",           "--daemonize",  "no",    "--enable-debug-command",
                                "yes",          "--unixsocket", s->sock, "--unixsocketperm",
                                "700",          "--dir",        "/tmp",  "--loglevel",
                                "warning"};
        int n = 0;
        while (argv[n] != NULL)
            n++;
        char extra[128];
        snprintf(extra, sizeof(extra), "%s", s->extra);
        for (char *save = NULL, *w = strtok_r(extra, " ", &save); w != NULL && n < 30;
             w = strtok_r(NULL, " ", &save))
            argv[n++] = w;
        argv[n] = NULL;
        execvp("redis-server", (char **)argv);
        _exit(127);
    }
    s->pid = pid;
    double until = h_now() + 5;
    while (h_now() < until) {
        redisContext *c = h_client(s);
        if (c != NULL) {
            redisFree(c);
            return;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "FATAL: redis-server exited at start\n");
            exit(2);
        }
        usleep(5000);
    }
    fprintf(stderr, "FATAL: redis-server did not start on port %d\n", s->port);
    exit(2);
}

static H_UNUSED void h_redis_stop(struct h_redis *s)
{
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGCONT);
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
    unlink(s->sock);
}

/* A command on the blocking client; returns the reply (caller frees). */
static H_UNUSED redisReply *h_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    return r;
}

static H_UNUSED long long h_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    long long v = r != NULL && r->type == REDIS_REPLY_INTEGER ? r->integer : -99999;
    if (r != NULL)
        freeReplyObject(r);
    return v;
}

/* A field of INFO as an integer, -1 if missing. */
static H_UNUSED long long h_info(redisContext *c, const char *field)
{
    redisReply *r = redisCommand(c, "INFO all");
    long long v = -1;
    if (r != NULL && r->type == REDIS_REPLY_STRING) {
        char key[96];
        snprintf(key, sizeof(key), "\r\n%s:", field);
        const char *p = strstr(r->str, key);
        if (p != NULL)
            v = atoll(p + strlen(key));
    }
    if (r != NULL)
        freeReplyObject(r);
    return v;
}

/* ---- loop -------------------------------------------------------------- */

static void h_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

/* Runs the loop until cond(arg) or `seconds` pass; returns cond's value. */
static H_UNUSED bool h_run_until(struct ev_loop *loop, bool (*cond)(void *), void *arg,
                                 double seconds)
{
    ev_timer tick;
    ev_timer_init(&tick, h_tick, 0.002, 0.002);
    ev_timer_start(loop, &tick);
    double until = h_now() + seconds;
    bool ok;
    while (!(ok = cond(arg)) && h_now() < until)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &tick);
    return ok;
}

static bool h_never(void *arg)
{
    (void)arg;
    return false;
}

/* Runs the loop for `seconds`. */
static H_UNUSED void h_run_for(struct ev_loop *loop, double seconds)
{
    h_run_until(loop, h_never, NULL, seconds);
}

/* ---- fake server --------------------------------------------------------
 * One thread, one connection at a time, blocking I/O. It parses RESP
 * commands and answers PING with +PONG, SCRIPT with a bulk string (the
 * sha it is told), AUTH/SELECT with +OK, and every other command with
 * `reply` (raw bytes, sent as they are, possibly several replies or
 * garbage); `close_after` closes the connection instead. */

struct h_fake {
    int listen_fd, port;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t lock;
    char reply[512]; /* under lock */
    char sha[41];
    atomic_int commands; /* other commands seen */
    atomic_int connections;
};

static H_UNUSED void h_fake_set(struct h_fake *f, const char *reply)
{
    pthread_mutex_lock(&f->lock);
    snprintf(f->reply, sizeof(f->reply), "%s", reply);
    pthread_mutex_unlock(&f->lock);
}

static bool h_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Parses one complete command at buf[0..len): returns its length and the
 * first argument (upper-cased, truncated), or 0 if incomplete. */
static size_t h_parse_cmd(const char *buf, size_t len, char *name, size_t nsz)
{
    const char *p = buf, *end = buf + len;
    if (len < 4 || *p != '*')
        return 0;
    char *e;
    long argc = strtol(p + 1, &e, 10);
    if (e + 2 > end || e[0] != '\r')
        return 0;
    p = e + 2;
    name[0] = '\0';
    for (long i = 0; i < argc; i++) {
        if (p >= end || *p != '$')
            return 0;
        long n = strtol(p + 1, &e, 10);
        if (e + 2 > end)
            return 0;
        p = e + 2;
        if (p + n + 2 > end)
            return 0;
        if (i == 0) {
            size_t k = (size_t)n < nsz - 1 ? (size_t)n : nsz - 1;
            for (size_t j = 0; j < k; j++)
                name[j] = (char)(p[j] >= 'a' && p[j] <= 'z' ? p[j] - 32 : p[j]);
            name[k] = '\0';
        }
        p += n + 2;
    }
    return (size_t)(p - buf);
}

static void h_fake_serve(struct h_fake *f, int fd)
{
    static char buf[1 << 16];
    size_t len = 0;
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
            if (strcmp(name, "PING") == 0) {
                snprintf(out, sizeof(out), "+PONG\r\n");
            } else if (strcmp(name, "AUTH") == 0 || strcmp(name, "SELECT") == 0) {
                snprintf(out, sizeof(out), "+OK\r\n");
            } else if (strcmp(name, "SCRIPT") == 0) {
                snprintf(out, sizeof(out), "$40\r\n%s\r\n", f->sha);
            } else {
                atomic_fetch_add(&f->commands, 1);
                pthread_mutex_lock(&f->lock);
                snprintf(out, sizeof(out), "%s", f->reply);
                pthread_mutex_unlock(&f->lock);
                if (strcmp(out, "CLOSE") == 0)
                    return;
            }
            if (!h_write_all(fd, out, strlen(out)))
                return;
        }
    }
}

static void *h_fake_main(void *arg)
{
    struct h_fake *f = arg;
    while (!atomic_load(&f->stop)) {
        struct pollfd pfd = {f->listen_fd, POLLIN, 0};
        if (poll(&pfd, 1, 20) <= 0)
            continue;
        int fd = accept(f->listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&f->connections, 1);
        h_fake_serve(f, fd);
        close(fd);
    }
    return NULL;
}

static H_UNUSED void h_fake_start(struct h_fake *f, const char *sha)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->lock, NULL);
    snprintf(f->sha, sizeof(f->sha), "%s", sha);
    snprintf(f->reply, sizeof(f->reply), "+OK\r\n");
    f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(f->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    if (bind(f->listen_fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(f->listen_fd, 8) < 0 ||
        getsockname(f->listen_fd, (struct sockaddr *)&a, &alen) < 0) {
        perror("fake server");
        exit(2);
    }
    f->port = ntohs(a.sin_port);
    pthread_create(&f->thread, NULL, h_fake_main, f);
}

static H_UNUSED void h_fake_stop(struct h_fake *f)
{
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    close(f->listen_fd);
    pthread_mutex_destroy(&f->lock);
}

#endif
