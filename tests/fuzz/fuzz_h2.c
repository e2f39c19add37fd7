/* The HTTP/2 front end, through the server's own path: each input is what
 * a client sends after a valid preface and SETTINGS, on a real connection.
 *
 * One worker context for the process (loop, buffers, metrics, rate-limit
 * store, upstream pools), built the way worker.c builds one, on a
 * configuration with an h2c listener; a stub backend listens on loopback
 * and is served by the same loop. Per input: a socketpair; its server end
 * goes through tg_accept (the HTTP/1 front end sees the preface and hands
 * the connection to h2.c), its client end gets the preface, a SETTINGS
 * frame, then the input, one frame at a time as the 9-byte headers in it
 * delimit them (a length past the end takes the rest), with loop turns in
 * between so the backend's answers interleave with what the client still
 * sends. What the server writes back is read and dropped. Then the clock
 * jumps an hour and the connection's timer fires (idle, stalled and stream
 * deadlines), the client end closes, and the loop runs until the
 * connection and every backend connection are gone.
 *
 * Frames of the types 0xfb-0xfe are sent like any other (a server ignores
 * unknown types) and also act on the harness, so time, drain and reload
 * happen in the middle of a conversation:
 *   0xfe  the clock moves on by the frame's length x 100 ms, and the
 *         connection's timer fires (flood windows, timeouts);
 *   0xfd  the gateway drains (tg_conn_drain: GOAWAY, finish what runs);
 *   0xfc  a reload: a new snapshot that keeps the listener (even length)
 *         or drops it (odd length);
 *   0xfb  the client stops reading, or starts again (the server's output
 *         backs up; its socket sends at most 32 KiB at a time);
 *   0xfa  the frames up to the next 0xfa go with no loop turn between
 *         them, so the server reads them together.
 *
 * Invariants checked after each input: the connection closed, no client
 * connection is counted, no request is left in use, every backend
 * connection was closed. ASan, UBSan and LSan do the rest (requests kept
 * for reuse are freed after each input: they live in mmap'd pages, which
 * LSan does not scan).
 *
 * The backend answers by the request's path: /big 96 KiB (more than the
 * windows), /chunked a chunked body, /continue 100 then 200, /nocontent
 * 204, /sse an event stream left open, /slow nothing, /echo once the whole
 * body came (its length, in bytes), a WebSocket upgrade 101 then an echo,
 * anything else 200 with 1 KiB at once.
 *
 * Seeds: corpus/h2/, written by gen_h2_corpus.py (which says what each
 * holds). FUZZ_H2_LOG=1 shows the gateway's log; FUZZ_H2_DUMP=FILE appends
 * what the gateway wrote to the client (to check what a seed gets). */
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "accept.h"
#include "config.h"
#include "config_build.h"
#include "conn.h"
#include "context.h"
#include "forward.h"
#include "h2.h"
#include "iptable.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit.h"
#include "ratelimit_store.h"
#include "request.h"
#include "upstream.h"

#define FUZZ_ASSERT(cond)                                                                     \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

/* Loop turns after each frame, after the last one, and at most while the
 * connection and the backend connections wind down. */
#define TURNS_PER_FRAME 2
#define TURNS_AFTER_INPUT 16
#define TURNS_TO_CLOSE 64
/* More input than this is cut. */
#define INPUT_MAX (64 * 1024)

/* The harness frames (above). */
#define FRAME_TICK 0xfe
#define FRAME_DRAIN 0xfd
#define FRAME_RELOAD 0xfc
#define FRAME_READING 0xfb
#define FRAME_BATCH 0xfa
#define TICK_S 0.1

/* %s: the listener's address (a reload may drop it); %d: the backend. */
static const char CONFIG_YAML[] =
    "workers: 1\n"
    "listen:\n"
    "  - address: %s\n" /* never bound: the harness hands connections in */
    "    h2c: true\n"
    "admin: {listen: off}\n"
    "client: {max_request_line: 1KiB, max_head: 4KiB, body_timeout: 5s,\n"
    "         send_timeout: 5s, header_timeout: 5s, keepalive_timeout: 20s}\n"
    "http2:\n"
    "  max_concurrent_streams: 8\n"
    "  stream_window: 16KiB\n"
    "  connection_window: 64KiB\n"
    "  max_resets: 16\n"
    "  max_control_frames: 64\n"
    "upstreams:\n"
    "  app:\n"
    "    servers: [127.0.0.1:%d]\n"
    "    keepalive: 0\n"
    "    max_fails: 0\n"
    "    read_timeout: 10s\n"
    "rate_limit:\n"
    "  policies:\n"
    "    few: {rate: 3/m, burst: 3, key: [ip]}\n"
    "sites:\n"
    "  - hosts: [app.test, localhost, '127.0.0.1']\n"
    "    routes:\n"
    "      - {path: /limited, upstream: app, rate_limit: few}\n"
    "      - {path: /small, upstream: app, max_body: 16}\n"
    "      - {path: /get-only, upstream: app, methods: [GET]}\n"
    "      - {path: /sse, upstream: app, stream: true}\n"
    "      - {path: /, upstream: app}\n";

/* ---- the stub backend ------------------------------------------------------------------ */

#define BACKEND_CONNS 64
#define BIG_BODY (96 * 1024)

struct bconn {
    int fd;
    ev_io io;
    char in[8192];
    size_t in_len;
    bool head_seen;
    bool answered;
    bool websocket; /* upgraded: echo what follows */
    bool wait_body; /* /echo: answer once the body is complete */
    bool chunked;
    int64_t body_left; /* with a Content-Length */
    size_t body_seen;
    char tail[8]; /* the body's last bytes, for the chunked end */
    char *out;    /* what is still to write */
    size_t out_len, out_cap;
};

static struct ev_loop *loop;
static int backend_fd, backend_port;
static ev_io backend_accept;
static struct bconn bconns[BACKEND_CONNS];
static unsigned nbconns;
static char big_body[BIG_BODY];

static void bconn_close(struct bconn *b)
{
    ev_io_stop(loop, &b->io);
    close(b->fd);
    free(b->out);
    b->fd = -1;
    b->out = NULL;
    b->out_len = b->out_cap = 0;
    nbconns--;
}

static void bconn_queue(struct bconn *b, const void *p, size_t n)
{
    if (b->out_len + n > b->out_cap) {
        size_t cap = b->out_cap ? b->out_cap : 4096;
        while (cap < b->out_len + n)
            cap *= 2;
        char *o = realloc(b->out, cap);
        FUZZ_ASSERT(o != NULL);
        b->out = o;
        b->out_cap = cap;
    }
    memcpy(b->out + b->out_len, p, n);
    b->out_len += n;
}

static void bconn_qstr(struct bconn *b, const char *s)
{
    bconn_queue(b, s, strlen(s));
}

/* Writes what it can; returns -1 when the gateway closed. */
static int bconn_flush(struct bconn *b)
{
    while (b->out_len > 0) {
        ssize_t w = write(b->fd, b->out, b->out_len);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            return -1;
        }
        memmove(b->out, b->out + w, b->out_len - (size_t)w);
        b->out_len -= (size_t)w;
    }
    int ev = EV_READ | (b->out_len > 0 ? EV_WRITE : 0);
    if ((b->io.events & (EV_READ | EV_WRITE)) != ev) {
        ev_io_stop(loop, &b->io);
        ev_io_set(&b->io, b->fd, ev);
        ev_io_start(loop, &b->io);
    }
    return 0;
}

static void bconn_answer_echo(struct bconn *b)
{
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", b->body_seen);
    bconn_qstr(b, hdr);
    size_t n = b->body_seen < BIG_BODY ? b->body_seen : BIG_BODY;
    bconn_queue(b, big_body, n);
    b->answered = true;
}

/* Request body bytes (dropped; /echo counts them and answers at the end). */
static void bconn_body(struct bconn *b, const char *p, size_t n)
{
    if (!b->wait_body || b->answered || n == 0)
        return;
    b->body_seen += n;
    if (b->chunked) {
        /* The last chunk and the end of the trailers: "0\r\n...\r\n\r\n". */
        size_t keep = sizeof(b->tail) - 1, have = strlen(b->tail);
        char joined[sizeof(b->tail) * 2];
        size_t take = n < keep ? n : keep;
        memcpy(joined, b->tail, have);
        memcpy(joined + have, p + n - take, take);
        joined[have + take] = '\0';
        size_t jl = have + take;
        const char *t = jl > keep ? joined + jl - keep : joined;
        memmove(b->tail, t, strlen(t) + 1);
        if (b->body_seen >= 5 && strlen(b->tail) >= 4 &&
            strcmp(b->tail + strlen(b->tail) - 4, "\r\n\r\n") == 0)
            bconn_answer_echo(b);
    } else {
        b->body_left -= (int64_t)n;
        if (b->body_left <= 0)
            bconn_answer_echo(b);
    }
}

/* The answer to a request head (NUL-terminated in b->in). */
static void bconn_answer(struct bconn *b)
{
    const char *sp = strchr(b->in, ' ');
    const char *path = sp != NULL ? sp + 1 : "/";
    char hdr[256];
    b->answered = true;
    if (strcasestr(b->in, "\nupgrade: websocket") != NULL) {
        bconn_qstr(b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
        b->websocket = true;
    } else if (strncmp(path, "/echo", 5) == 0) {
        const char *cl = strcasestr(b->in, "\ncontent-length:");
        b->answered = false;
        b->wait_body = true;
        b->chunked = strcasestr(b->in, "\ntransfer-encoding: chunked") != NULL;
        b->body_left = cl != NULL ? strtoll(cl + 16, NULL, 10) : 0;
        if (!b->chunked && b->body_left <= 0)
            bconn_answer_echo(b);
    } else if (strncmp(path, "/big", 4) == 0) {
        snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", BIG_BODY);
        bconn_qstr(b, hdr);
        bconn_queue(b, big_body, BIG_BODY);
    } else if (strncmp(path, "/chunked", 8) == 0) {
        bconn_qstr(b, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld\n\r\n0\r\nX-Trailer: 1\r\n\r\n");
    } else if (strncmp(path, "/continue", 9) == 0) {
        bconn_qstr(b, "HTTP/1.1 100 Continue\r\n\r\n"
                      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    } else if (strncmp(path, "/nocontent", 10) == 0) {
        bconn_qstr(b, "HTTP/1.1 204 No Content\r\nX-Why: nothing\r\n\r\n");
    } else if (strncmp(path, "/sse", 4) == 0) {
        bconn_qstr(b, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                      "Cache-Control: no-cache\r\n\r\ndata: one\n\ndata: two\n\n");
    } else if (strncmp(path, "/slow", 5) == 0) {
        /* Silent: the gateway's timeouts answer. */
    } else {
        bconn_qstr(b, "HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nContent-Type: text/plain\r\n"
                      "Set-Cookie: a=1\r\nConnection: keep-alive\r\n\r\n");
        bconn_queue(b, big_body, 1024);
    }
}

static void bconn_io(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l;
    struct bconn *b = w->data;
    if (revents & EV_READ) {
        for (;;) {
            char scratch[16384];
            char *dst = scratch;
            size_t room = sizeof(scratch);
            if (!b->head_seen) {
                dst = b->in + b->in_len;
                room = sizeof(b->in) - 1 - b->in_len;
            }
            ssize_t n = room > 0 ? read(b->fd, dst, room) : 0;
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            if (n <= 0) {
                bconn_close(b);
                return;
            }
            if (b->websocket) {
                bconn_queue(b, dst, (size_t)n);
            } else if (!b->head_seen) {
                b->in_len += (size_t)n;
                b->in[b->in_len] = '\0';
                char *end = strstr(b->in, "\r\n\r\n");
                if (end != NULL) {
                    b->head_seen = true;
                    end += 4;
                    size_t extra = b->in_len - (size_t)(end - b->in);
                    *(end - 2) = '\0'; /* the head alone, for bconn_answer */
                    bconn_answer(b);
                    if (b->websocket)
                        bconn_queue(b, end, extra);
                    else
                        bconn_body(b, end, extra);
                }
            } else {
                bconn_body(b, dst, (size_t)n);
            }
        }
    }
    if (bconn_flush(b) < 0)
        bconn_close(b);
}

static void backend_on_accept(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l, (void)revents;
    for (;;) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct bconn *b = NULL;
        for (unsigned i = 0; i < BACKEND_CONNS && b == NULL; i++)
            if (bconns[i].fd < 0)
                b = &bconns[i];
        if (b == NULL) {
            close(fd);
            continue;
        }
        memset(b, 0, sizeof(*b));
        b->fd = fd;
        nbconns++;
        ev_io_init(&b->io, bconn_io, fd, EV_READ);
        b->io.data = b;
        ev_io_start(loop, &b->io);
    }
}

static void backend_start(void)
{
    for (unsigned i = 0; i < BACKEND_CONNS; i++)
        bconns[i].fd = -1;
    for (size_t i = 0; i < sizeof(big_body); i++)
        big_body[i] = (char)('a' + i % 26);
    backend_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    FUZZ_ASSERT(backend_fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    FUZZ_ASSERT(bind(backend_fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    socklen_t al = sizeof(a);
    FUZZ_ASSERT(getsockname(backend_fd, (struct sockaddr *)&a, &al) == 0);
    backend_port = ntohs(a.sin_port);
    FUZZ_ASSERT(listen(backend_fd, 128) == 0);
    ev_io_init(&backend_accept, backend_on_accept, backend_fd, EV_READ);
    ev_io_start(loop, &backend_accept);
}

/* ---- the worker context ---------------------------------------------------------------- */

static struct tg_runtime rt;
static struct tg_context ctx;
/* Snapshots: the first, a reload that keeps the listener, one that drops
 * it. The harness holds a reference to each for the whole run. */
static struct tg_wcfg *snapshots[3];
static ev_tstamp fake_now = 1000000.0;
static FILE *dump;

static ev_tstamp fuzz_clock(const struct tg_context *c)
{
    (void)c;
    return fake_now;
}

static struct tg_wcfg *snapshot(const char *listen)
{
    char text[4096], err[4096];
    snprintf(text, sizeof(text), CONFIG_YAML, listen, backend_port);
    struct tg_config *cfg =
        tg_config_load_buffer("fuzz_h2.yaml", text, strlen(text), err, sizeof(err));
    if (cfg == NULL) {
        fprintf(stderr, "fuzz_h2: the configuration does not load:\n%s", err);
        abort();
    }
    struct tg_wcfg *w = calloc(1, sizeof(*w));
    FUZZ_ASSERT(w != NULL);
    w->config = cfg;
    w->ctx = &ctx;
    w->refs = 1;
    w->rr_cursor = calloc(cfg->nupstreams + 1, sizeof(unsigned));
    FUZZ_ASSERT(w->rr_cursor != NULL);
    return w;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    tg_log_set_level(getenv("FUZZ_H2_LOG") != NULL ? TG_LOG_DEBUG : TG_LOG_ERROR + 1);
    if (getenv("FUZZ_H2_DUMP") != NULL)
        dump = fopen(getenv("FUZZ_H2_DUMP"), "ab");
    loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOENV);
    FUZZ_ASSERT(loop != NULL);
    backend_start();
    pthread_mutex_init(&rt.warned_lock, NULL);
    rt.iptable = tg_iptable_new();
    rt.rl_local = tg_ratelimit_local_new(1024, 1);
    FUZZ_ASSERT(rt.iptable != NULL && rt.rl_local != NULL);
    FUZZ_ASSERT(tg_context_init(&ctx, 0, loop, &rt) == 0);
    ctx.clock = fuzz_clock;
    snapshots[0] = snapshot("127.0.0.1:18443");
    snapshots[1] = snapshot("127.0.0.1:18443");
    snapshots[2] = snapshot("127.0.0.1:18444");
    FUZZ_ASSERT(snapshots[0]->config->listeners[0].h2c);
    ctx.cfg = snapshots[0];
    /* Buffer sizes as the worker sets them for this configuration. */
    const struct tg_config_client *cc = &snapshots[0]->config->client;
    tg_buf_pool_init(&ctx.bufs, cc->buffer_size, cc->max_request_line + cc->max_head + 1024,
                     TG_BUF_MAX_FREE);
    ctx.metrics = tg_metrics_shard_new();
    ctx.pools = tg_upstream_pools_new();
    FUZZ_ASSERT(ctx.metrics != NULL && ctx.pools != NULL);
    tg_ratelimit_store_local(&ctx.limiter.stores[TG_RL_STORE_LOCAL], rt.rl_local);
    tg_ratelimit_store_redis(&ctx.limiter.stores[TG_RL_STORE_REDIS], NULL);
    tg_ratelimit_store_share(&ctx.limiter.share, rt.rl_local);
    ctx.limiter.metrics = ctx.metrics;
    ev_prepare_init(&ctx.upwait_kick, tg_forward_upwait_kick);
    ctx.upwait_kick.data = &ctx;
    return 0;
}

/* ---- one input --------------------------------------------------------------------------- */

static int client_fd = -1;
static bool client_reading, batching;

/* Reads and drops what the gateway wrote to the client. */
static void client_drain(void)
{
    char scratch[65536];
    ssize_t n;
    while (client_fd >= 0 && client_reading && (n = read(client_fd, scratch, sizeof(scratch))) > 0)
        if (dump != NULL)
            fwrite(scratch, 1, (size_t)n, dump);
}

static void turns(int n)
{
    for (int i = 0; i < n; i++) {
        ev_run(loop, EVRUN_NOWAIT);
        client_drain();
    }
}

/* Writes all of p, turning the loop while the socket is full (a bounded
 * number of times: a gateway that stopped reading is left behind). */
static void client_send(const uint8_t *p, size_t n)
{
    int spins = 0;
    while (n > 0) {
        ssize_t w = write(client_fd, p, n);
        if (w < 0) {
            if (errno == EAGAIN && spins++ < 64) {
                turns(1);
                continue;
            }
            return; /* the gateway closed (EPIPE) or stopped reading */
        }
        p += w;
        n -= (size_t)w;
    }
}

static struct tg_conn *only_conn(void)
{
    struct tg_list *n = tg_list_first(&ctx.conns);
    return n != NULL ? tg_list_entry(n, struct tg_conn, link) : NULL;
}

static void fire_timer(struct tg_conn *c)
{
    if (c->state != TG_CONN_CLOSED)
        ev_feed_event(loop, &c->timer, EV_TIMER);
}

/* A harness frame (type, payload length) acts once it was sent. */
static void harness_frame(struct tg_conn *c, uint8_t type, size_t len)
{
    switch (type) {
    case FRAME_TICK:
        fake_now += (double)len * TICK_S;
        fire_timer(c);
        break;
    case FRAME_DRAIN:
        if (c->state == TG_CONN_OPEN)
            tg_conn_drain(c);
        break;
    case FRAME_RELOAD:
        ctx.cfg = snapshots[1 + (len & 1)];
        break;
    case FRAME_READING:
        client_reading = !client_reading;
        break;
    case FRAME_BATCH:
        batching = !batching;
        break;
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > INPUT_MAX)
        size = INPUT_MAX;
    /* Each input starts on the first snapshot, in a fresh flood window,
     * with rate-limit buckets refilled. */
    fake_now += 3600.0;
    ctx.cfg = snapshots[0];
    client_reading = true;
    batching = false;
    int sv[2];
    FUZZ_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    int big = 512 * 1024, small = 32 * 1024;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    client_fd = sv[1];
    struct sockaddr_in peer = {
        .sin_family = AF_INET, .sin_port = htons(40000), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    FUZZ_ASSERT(
        tg_accept(&ctx, sv[0], (struct sockaddr *)&peer, &snapshots[0]->config->listeners[0]) == 0);
    struct tg_conn *c = only_conn();
    FUZZ_ASSERT(c != NULL);
    tg_conn_ref(c);

    /* The preface, and SETTINGS: no push, a 64 KiB window. */
    static const uint8_t settings[] = {
        0x00, 0x00, 0x0c, 0x04, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, /* ENABLE_PUSH 0 */
        0x00, 0x04, 0x00, 0x00, 0xff, 0xff,       /* INITIAL_WINDOW_SIZE 65535 */
    };
    client_send((const uint8_t *)TG_H2_PREFACE, TG_H2_PREFACE_LEN);
    client_send(settings, sizeof(settings));
    turns(TURNS_PER_FRAME);

    /* The input, a frame at a time as its own headers delimit it. */
    size_t pos = 0;
    while (pos < size && c->state == TG_CONN_OPEN) {
        size_t end = size, len = 0;
        uint8_t type = 0;
        if (size - pos >= 9) {
            len = ((size_t)data[pos] << 16) | ((size_t)data[pos + 1] << 8) | data[pos + 2];
            type = data[pos + 3];
            if (len <= size - pos - 9)
                end = pos + 9 + len;
        }
        client_send(data + pos, end - pos);
        pos = end;
        harness_frame(c, type, len);
        if (!batching)
            turns(TURNS_PER_FRAME);
    }
    client_reading = true;
    turns(TURNS_AFTER_INPUT);

    /* An hour later: every deadline of the connection and its streams. */
    fake_now += 3600.0;
    fire_timer(c);
    turns(2);

    /* The client goes; everything winds down. */
    close(client_fd);
    client_fd = -1;
    for (int i = 0; i < TURNS_TO_CLOSE && (c->state != TG_CONN_CLOSED || nbconns > 0); i++)
        turns(1);
    FUZZ_ASSERT(c->state == TG_CONN_CLOSED);
    tg_conn_unref(c);
    FUZZ_ASSERT(ctx.nconns == 0);
    FUZZ_ASSERT(ctx.requests_in_use == 0);
    /* The gateway closes the backend connection of every request that
     * ended (keepalive: 0): one the stub still has open was kept. */
    FUZZ_ASSERT(nbconns == 0);
    tg_request_free_all(&ctx);
    if (dump != NULL)
        fflush(dump);
    return 0;
}
