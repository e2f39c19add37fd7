/* Access log: per-worker chunks, one writer thread, bounded queue.
 *
 * Workers never call write(2) for the access log: a slow disk, a full disk
 * or a stalled pipe on stdout must not slow requests. The price is that
 * lines can be lost under such faults; they are counted. */
#include "access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "addr.h"
#include "codec.h"
#include "config.h"
#include "limiter.h"
#include "log.h"
#include "tls.h"

#define MAX_QUEUED_BYTES (16u << 20)
#define MAX_LINE 4096
#define LINE_END 2 /* bytes of a line kept for its closing "}\n" */
/* A worker's chunk before the first configure sets access_buffer. */
#define CHUNK_DEFAULT 65536
#define FILE_MODE 0640

struct log_chunk {
    size_t len, cap;
    struct log_chunk *next;
    char data[];
};

/* ---- writer thread -------------------------------------------------------- */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    bool running, stop;
    struct log_chunk *head, *tail;
    size_t queued_bytes;
    int fd;     /* -1 = off */
    char *path; /* NULL for stdout/off */
    bool reopen;
} writer = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .fd = -1,
};

static _Atomic uint64_t lines_dropped, lines_written;

/* Returns false when the write failed (disk full, I/O error): the rest of
 * the chunk is lost. */
static bool write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static size_t count_lines(const struct log_chunk *c);

/* Disk trouble is logged when it starts and when it ends, not per chunk. */
static void write_chunk(int fd, const struct log_chunk *c)
{
    static bool failing;
    if (write_all(fd, c->data, c->len)) {
        atomic_fetch_add(&lines_written, count_lines(c));
        if (failing)
            tg_log_info("access log: writing again");
        failing = false;
        return;
    }
    atomic_fetch_add(&lines_dropped, count_lines(c));
    if (!failing)
        tg_log_error("access log: write failed (%s); dropping lines until it works again",
                     strerror(errno));
    failing = true;
}

static size_t count_lines(const struct log_chunk *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->len; i++)
        n += c->data[i] == '\n';
    return n;
}

static void *writer_main(void *arg)
{
    (void)arg;
    tg_log_set_thread_name("access-log");
    pthread_mutex_lock(&writer.lock);
    for (;;) {
        while (writer.head == NULL && !writer.stop && !writer.reopen)
            pthread_cond_wait(&writer.wake, &writer.lock);
        if (writer.reopen) {
            writer.reopen = false;
            if (writer.path != NULL) {
                int fd = open(writer.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, FILE_MODE);
                if (fd < 0) {
                    tg_log_error("access log: reopen %s: %s", writer.path, strerror(errno));
                } else {
                    if (writer.fd >= 0 && writer.fd != STDOUT_FILENO)
                        close(writer.fd);
                    writer.fd = fd;
                    tg_log_info("access log reopened: %s", writer.path);
                }
            }
        }
        struct log_chunk *c = writer.head;
        if (c == NULL) {
            if (writer.stop)
                break;
            continue;
        }
        writer.head = c->next;
        if (writer.head == NULL)
            writer.tail = NULL;
        writer.queued_bytes -= c->cap;
        int fd = writer.fd;
        pthread_mutex_unlock(&writer.lock);
        if (fd >= 0)
            write_chunk(fd, c);
        free(c);
        pthread_mutex_lock(&writer.lock);
    }
    pthread_mutex_unlock(&writer.lock);
    return NULL;
}

int tg_access_log_start(void)
{
    if (writer.running)
        return 0;
    writer.stop = false;
    if (pthread_create(&writer.thread, NULL, writer_main, NULL) != 0)
        return -1;
    writer.running = true;
    return 0;
}

void tg_access_log_stop(void)
{
    if (!writer.running)
        return;
    pthread_mutex_lock(&writer.lock);
    writer.stop = true;
    pthread_cond_signal(&writer.wake);
    pthread_mutex_unlock(&writer.lock);
    pthread_join(writer.thread, NULL);
    writer.running = false;
    if (writer.fd >= 0 && writer.fd != STDOUT_FILENO)
        close(writer.fd);
    writer.fd = -1;
    free(writer.path);
    writer.path = NULL;
}

int tg_access_log_set_target(const char *target, char *err, size_t errlen)
{
    int fd = -1;
    char *path = NULL;
    if (target != NULL && strcmp(target, "stdout") == 0) {
        fd = STDOUT_FILENO;
    } else if (target != NULL) {
        fd = open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, FILE_MODE);
        if (fd < 0) {
            snprintf(err, errlen, "cannot open access log %s: %s", target, strerror(errno));
            return -1;
        }
        path = strdup(target);
    }
    pthread_mutex_lock(&writer.lock);
    int old = writer.fd;
    writer.fd = fd;
    free(writer.path);
    writer.path = path;
    pthread_mutex_unlock(&writer.lock);
    if (old >= 0 && old != STDOUT_FILENO)
        close(old);
    return 0;
}

int tg_access_log_reopen(void)
{
    pthread_mutex_lock(&writer.lock);
    writer.reopen = true;
    pthread_cond_signal(&writer.wake);
    pthread_mutex_unlock(&writer.lock);
    return 0;
}

uint64_t tg_access_log_dropped(void)
{
    return atomic_load(&lines_dropped);
}

/* Queues a chunk, or refuses it when the writer is too far behind. */
static bool submit(struct log_chunk *c)
{
    pthread_mutex_lock(&writer.lock);
    if (!writer.running || writer.queued_bytes + c->cap > MAX_QUEUED_BYTES) {
        pthread_mutex_unlock(&writer.lock);
        return false;
    }
    c->next = NULL;
    if (writer.tail != NULL)
        writer.tail->next = c;
    else
        writer.head = c;
    writer.tail = c;
    writer.queued_bytes += c->cap;
    pthread_cond_signal(&writer.wake);
    pthread_mutex_unlock(&writer.lock);
    return true;
}

/* ---- per worker ------------------------------------------------------------ */

struct tg_access_log {
    struct ev_loop *loop;
    bool enabled;
    size_t chunk_cap;
    struct log_chunk *chunk;
    ev_timer flush;
    time_t cached_sec;
    char cached_time[24]; /* "2026-11-26T10:00:00." */
};

static void on_flush(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    tg_access_log_flush(t->data);
}

struct tg_access_log *tg_access_log_new(struct ev_loop *loop)
{
    struct tg_access_log *log = calloc(1, sizeof(*log));
    if (log == NULL)
        return NULL;
    log->loop = loop;
    log->chunk_cap = CHUNK_DEFAULT;
    ev_init(&log->flush, on_flush);
    log->flush.data = log;
    return log;
}

void tg_access_log_free(struct tg_access_log *log)
{
    if (log == NULL)
        return;
    tg_access_log_flush(log);
    if (log->loop != NULL)
        ev_timer_stop(log->loop, &log->flush);
    free(log->chunk);
    free(log);
}

void tg_access_log_configure(struct tg_access_log *log, const struct tg_config_log *cfg)
{
    log->enabled = cfg->access != NULL;
    log->chunk_cap = cfg->access_buffer;
    ev_timer_stop(log->loop, &log->flush);
    if (log->enabled) {
        double every = (double)cfg->access_flush_ms / 1000.0;
        ev_timer_set(&log->flush, every, every);
        ev_timer_start(log->loop, &log->flush);
    } else {
        tg_access_log_flush(log);
    }
}

void tg_access_log_flush(struct tg_access_log *log)
{
    struct log_chunk *c = log->chunk;
    if (c == NULL || c->len == 0)
        return;
    log->chunk = NULL;
    if (!submit(c)) {
        atomic_fetch_add(&lines_dropped, count_lines(c));
        free(c);
    }
}

/* Appends "key":"escaped" to the line. */
static size_t put_str(char *line, size_t o, const char *key, const char *val)
{
    if (val == NULL)
        val = "";
    int n = snprintf(line + o, MAX_LINE - o, ",\"%s\":\"", key);
    if (n < 0 || (size_t)n >= MAX_LINE - o)
        return o;
    o += (size_t)n;
    o += tg_json_escape(line + o, MAX_LINE - o - LINE_END, val, strlen(val));
    line[o++] = '"';
    return o;
}

void tg_access_log_write(struct tg_access_log *log, const struct tg_access_record *r)
{
    if (log == NULL || !log->enabled)
        return;
    char line[MAX_LINE];
    double now = r->now;
    time_t sec = (time_t)now;
    if (sec != log->cached_sec) {
        struct tm tm;
        gmtime_r(&sec, &tm);
        strftime(log->cached_time, sizeof(log->cached_time), "%Y-%m-%dT%H:%M:%S.", &tm);
        log->cached_sec = sec;
    }
    char client[TG_ADDR_STRLEN];
    tg_addr_format(r->client, client, sizeof(client));
    int ms = (int)((now - (double)sec) * 1000);
    int n = snprintf(line, sizeof(line), "{\"time\":\"%s%03dZ\",\"client\":\"%s\"",
                     log->cached_time, ms < 0 ? 0 : (ms > 999 ? 999 : ms), client);
    size_t o = (size_t)n;
    o = put_str(line, o, "method", r->method);
    o = put_str(line, o, "host", r->host);
    o = put_str(line, o, "path", r->path);
    if (r->proto != NULL)
        o = put_str(line, o, "proto", r->proto);
    n = snprintf(line + o, MAX_LINE - o,
                 ",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu,"
                 "\"duration_ms\":%.3f",
                 r->status, (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out,
                 r->duration_ms < 0 ? 0 : r->duration_ms);
    if (n > 0 && (size_t)n < MAX_LINE - o)
        o += (size_t)n;
    if (r->encoding != NULL) {
        o = put_str(line, o, "encoding", r->encoding);
        n = snprintf(line + o, MAX_LINE - o,
                     ",\"bytes_uncompressed\":%llu,\"bytes_compressed\":%llu",
                     (unsigned long long)r->bytes_plain, (unsigned long long)r->bytes_coded);
        if (n > 0 && (size_t)n < MAX_LINE - o)
            o += (size_t)n;
    }
    o = put_str(line, o, "upstream", r->upstream);
    if (r->upstream_ms >= 0) {
        n = snprintf(line + o, MAX_LINE - o, ",\"upstream_ms\":%.3f", r->upstream_ms);
        if (n > 0 && (size_t)n < MAX_LINE - o)
            o += (size_t)n;
    }
    o = put_str(line, o, "request_id", r->request_id);
    if (r->trace_id != NULL) {
        o = put_str(line, o, "trace_id", r->trace_id);
        o = put_str(line, o, "span_id", r->span_id);
    }
    if (r->ssl != NULL) {
        struct tg_tls_info ti;
        tg_tls_info(r->ssl, &ti);
        o = put_str(line, o, "tls_version", ti.version);
        o = put_str(line, o, "tls_cipher", ti.cipher);
        if (ti.sni != NULL)
            o = put_str(line, o, "sni", ti.sni);
        n = snprintf(line + o, MAX_LINE - o, ",\"tls_resumed\":%s", ti.resumed ? "true" : "false");
        if (n > 0 && (size_t)n < MAX_LINE - o)
            o += (size_t)n;
    }
    if (r->tenant != NULL)
        o = put_str(line, o, "tenant", r->tenant);
    if (r->country != NULL && r->country[0] != '\0')
        o = put_str(line, o, "country", r->country);
    const struct tg_limiter_state *lim = r->lim;
    if (lim != NULL && lim->active && lim->outcome != NULL) {
        o = put_str(line, o, "ratelimit", lim->outcome);
        if (lim->report != NULL)
            o = put_str(line, o, "ratelimit_policy", lim->report->policy->name);
        if (lim->refuse_reason != NULL)
            o = put_str(line, o, "ratelimit_reason", lim->refuse_reason);
        /* Which buckets were charged, as hashes: enough to follow one
         * account or address through the log without writing it down. */
        static const char name[] = ",\"ratelimit_keys\":";
        if (o + sizeof(name) < MAX_LINE - LINE_END) {
            size_t n2 = tg_limiter_log_keys(lim, line + o + sizeof(name) - 1,
                                            MAX_LINE - LINE_END - o - (sizeof(name) - 1));
            if (n2 > 0) {
                memcpy(line + o, name, sizeof(name) - 1);
                o += sizeof(name) - 1 + n2;
            }
        }
    }
    if (o > MAX_LINE - LINE_END)
        o = MAX_LINE - LINE_END;
    line[o++] = '}';
    line[o++] = '\n';

    if (log->chunk != NULL && log->chunk->cap - log->chunk->len < o)
        tg_access_log_flush(log);
    if (log->chunk == NULL) {
        size_t cap = log->chunk_cap > o ? log->chunk_cap : o;
        log->chunk = malloc(sizeof(*log->chunk) + cap);
        if (log->chunk == NULL) {
            atomic_fetch_add(&lines_dropped, 1);
            return;
        }
        log->chunk->len = 0;
        log->chunk->cap = cap;
    }
    memcpy(log->chunk->data + log->chunk->len, line, o);
    log->chunk->len += o;
}
