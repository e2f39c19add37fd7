/* Access log: per-worker chunks, one writer thread, bounded queue.
 *
 * Workers never call write(2) for the access log: a slow disk, a full disk
 * or a stalled pipe on stdout must not slow requests. The price is that
 * lines can be lost under such faults; they are counted. */
#include "access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
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
#include "trace.h"

#define MAX_QUEUED_BYTES (16u << 20)
#define MAX_LINE TG_ACCESS_LOG_MAX_LINE
/* Every line keeps room at its end for the mark of a field left out and
 * its closing "}\n": fields are written into what is before. */
static const char TRUNCATED[] = ",\"truncated\":true";
#define LINE_ROOM (MAX_LINE - (sizeof(TRUNCATED) - 1) - 2)
/* The most of a line one value's escaped text takes: a client's long
 * path or header stays a part of the line, never all of it. */
#define VALUE_MAX 256
#define LOG_PATH_MAX 2048
#define ROUTE_MAX 512
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
    uint8_t fields[TG_LOG_FIELD_COUNT]; /* enum tg_log_field, in line order */
    unsigned nfields;
    double sample_2xx; /* for requests without a route */
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
    log->sample_2xx = 1.0;
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
    log->nfields = cfg->nfields <= TG_LOG_FIELD_COUNT ? cfg->nfields : TG_LOG_FIELD_COUNT;
    memcpy(log->fields, cfg->fields, log->nfields);
    log->sample_2xx = cfg->sample_2xx;
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

bool tg_access_log_wanted(struct tg_access_log *log, const struct tg_config_route *route,
                          int status)
{
    if (log == NULL || !log->enabled)
        return false;
    double ratio = log->sample_2xx;
    if (route != NULL) {
        if (!route->access_log)
            return false;
        ratio = route->access_log_sample;
    }
    if (status < 200 || status > 299 || ratio >= 1.0)
        return true;
    return ratio > 0.0 && tg_trace_random() < ratio;
}

/* ---- one line ------------------------------------------------------------------ */

/* A line being written. A field that runs past LINE_ROOM sets `over`; the
 * caller then takes the whole field back. */
struct line {
    char *p;
    size_t o;
    bool over;
};

static void put_raw(struct line *l, const char *s, size_t n)
{
    if (l->over || n > LINE_ROOM - l->o) {
        l->over = true;
        return;
    }
    memcpy(l->p + l->o, s, n);
    l->o += n;
}

static void put_fmt(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put_fmt(struct line *l, const char *fmt, ...)
{
    if (l->over)
        return;
    size_t room = LINE_ROOM - l->o + 1; /* the terminator may take the byte after */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->p + l->o, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room) {
        l->over = true;
        return;
    }
    l->o += (size_t)n;
}

/* ,"key":"value", the value escaped and cut at `max` bytes of escaped
 * text (never inside an escape). A value the rest of the line cannot hold
 * sets `over` instead of being cut. */
static void put_str(struct line *l, const char *key, const char *val, size_t max)
{
    if (val == NULL)
        val = "";
    put_fmt(l, ",\"%s\":\"", key);
    if (l->over || l->o == LINE_ROOM) {
        l->over = true;
        return;
    }
    size_t room = LINE_ROOM - l->o - 1; /* and the closing quote */
    size_t n = strnlen(val, max);       /* an escaped byte takes one byte or more */
    size_t cap = max < room ? max : room, taken;
    size_t w = tg_json_escape_some(l->p + l->o, cap, val, n, &taken);
    if (taken < n && cap < max) {
        l->over = true;
        return;
    }
    l->o += w;
    l->p[l->o++] = '"';
}

/* One field's members (none when the request has no value for it). */
static void put_field(struct tg_access_log *log, struct line *l, enum tg_log_field f,
                      const struct tg_access_record *r)
{
    switch (f) {
    case TG_LOG_FIELD_TIME: {
        time_t sec = (time_t)r->now;
        if (sec != log->cached_sec) {
            struct tm tm;
            gmtime_r(&sec, &tm);
            strftime(log->cached_time, sizeof(log->cached_time), "%Y-%m-%dT%H:%M:%S.", &tm);
            log->cached_sec = sec;
        }
        int ms = (int)((r->now - (double)sec) * 1000);
        put_fmt(l, ",\"time\":\"%s%03dZ\"", log->cached_time, ms < 0 ? 0 : (ms > 999 ? 999 : ms));
        break;
    }
    case TG_LOG_FIELD_CLIENT: {
        char client[TG_ADDR_STRLEN];
        tg_addr_format(r->client, client, sizeof(client));
        put_fmt(l, ",\"client\":\"%s\"", client);
        break;
    }
    case TG_LOG_FIELD_METHOD:
        put_str(l, "method", r->method, VALUE_MAX);
        break;
    case TG_LOG_FIELD_HOST:
        put_str(l, "host", r->host, VALUE_MAX);
        break;
    case TG_LOG_FIELD_PATH:
        put_str(l, "path", r->path, LOG_PATH_MAX);
        break;
    case TG_LOG_FIELD_ROUTE:
        if (r->route != NULL)
            put_str(l, "route", r->route->path_source, ROUTE_MAX);
        break;
    case TG_LOG_FIELD_PROTO:
        if (r->proto != NULL)
            put_str(l, "proto", r->proto, VALUE_MAX);
        break;
    case TG_LOG_FIELD_STATUS:
        put_fmt(l, ",\"status\":%d", r->status);
        break;
    case TG_LOG_FIELD_BYTES_IN:
        put_fmt(l, ",\"bytes_in\":%llu", (unsigned long long)r->bytes_in);
        break;
    case TG_LOG_FIELD_BYTES_OUT:
        put_fmt(l, ",\"bytes_out\":%llu", (unsigned long long)r->bytes_out);
        break;
    case TG_LOG_FIELD_DURATION_MS:
        put_fmt(l, ",\"duration_ms\":%.3f", r->duration_ms < 0 ? 0 : r->duration_ms);
        break;
    case TG_LOG_FIELD_ENCODING:
        if (r->encoding == NULL)
            break;
        put_str(l, "encoding", r->encoding, VALUE_MAX);
        put_fmt(l, ",\"bytes_uncompressed\":%llu,\"bytes_compressed\":%llu",
                (unsigned long long)r->bytes_plain, (unsigned long long)r->bytes_coded);
        break;
    case TG_LOG_FIELD_UPSTREAM:
        put_str(l, "upstream", r->upstream, VALUE_MAX);
        break;
    case TG_LOG_FIELD_UPSTREAM_CONNECT_MS:
        if (r->upstream_connect_ms >= 0)
            put_fmt(l, ",\"upstream_connect_ms\":%.3f", r->upstream_connect_ms);
        break;
    case TG_LOG_FIELD_UPSTREAM_MS:
        if (r->upstream_ms >= 0)
            put_fmt(l, ",\"upstream_ms\":%.3f", r->upstream_ms);
        break;
    case TG_LOG_FIELD_REQUEST_ID:
        put_str(l, "request_id", r->request_id, VALUE_MAX);
        break;
    case TG_LOG_FIELD_TRACE_ID:
        if (r->trace_id != NULL)
            put_str(l, "trace_id", r->trace_id, VALUE_MAX);
        break;
    case TG_LOG_FIELD_SPAN_ID:
        if (r->span_id != NULL)
            put_str(l, "span_id", r->span_id, VALUE_MAX);
        break;
    case TG_LOG_FIELD_TLS: {
        if (r->ssl == NULL)
            break;
        struct tg_tls_info ti;
        tg_tls_info(r->ssl, &ti);
        put_str(l, "tls_version", ti.version, VALUE_MAX);
        put_str(l, "tls_cipher", ti.cipher, VALUE_MAX);
        if (ti.sni != NULL)
            put_str(l, "sni", ti.sni, VALUE_MAX);
        put_fmt(l, ",\"tls_resumed\":%s", ti.resumed ? "true" : "false");
        break;
    }
    case TG_LOG_FIELD_TENANT:
        if (r->tenant != NULL)
            put_str(l, "tenant", r->tenant, VALUE_MAX);
        break;
    case TG_LOG_FIELD_COUNTRY:
        if (r->country != NULL && r->country[0] != '\0')
            put_str(l, "country", r->country, VALUE_MAX);
        break;
    case TG_LOG_FIELD_RATELIMIT: {
        const struct tg_limiter_state *lim = r->lim;
        if (lim == NULL || !lim->active || lim->outcome == NULL)
            break;
        put_str(l, "ratelimit", lim->outcome, VALUE_MAX);
        if (lim->report != NULL)
            put_str(l, "ratelimit_policy", lim->report->policy->name, VALUE_MAX);
        if (lim->refuse_reason != NULL)
            put_str(l, "ratelimit_reason", lim->refuse_reason, VALUE_MAX);
        /* Which buckets were charged, as hashes: enough to follow one
         * account or address through the log without writing it down. */
        static const char name[] = ",\"ratelimit_keys\":";
        size_t mark = l->o;
        put_raw(l, name, sizeof(name) - 1);
        if (l->over)
            break;
        size_t room = LINE_ROOM - l->o;
        size_t n = tg_limiter_log_keys(lim, l->p + l->o, room);
        if (n == 0)
            l->o = mark; /* no key was charged */
        else if (n > room)
            l->over = true;
        else
            l->o += n;
        break;
    }
    case TG_LOG_FIELD_USER_AGENT:
        if (r->user_agent != NULL)
            put_str(l, "user_agent", r->user_agent, TG_ACCESS_LOG_HEADER_MAX);
        break;
    case TG_LOG_FIELD_REFERER:
        if (r->referer != NULL)
            put_str(l, "referer", r->referer, TG_ACCESS_LOG_HEADER_MAX);
        break;
    case TG_LOG_FIELD_COUNT:
        break;
    }
}

void tg_access_log_write(struct tg_access_log *log, const struct tg_access_record *r)
{
    if (log == NULL || !log->enabled)
        return;
    char buf[MAX_LINE];
    struct line l = {buf, 0, false};
    bool left_out = false;
    for (unsigned i = 0; i < log->nfields; i++) {
        size_t mark = l.o;
        put_field(log, &l, (enum tg_log_field)log->fields[i], r);
        if (l.over) {
            l.o = mark; /* whole fields or none: the line stays valid JSON */
            l.over = false;
            left_out = true;
        }
    }
    if (left_out) {
        memcpy(buf + l.o, TRUNCATED, sizeof(TRUNCATED) - 1);
        l.o += sizeof(TRUNCATED) - 1;
    }
    /* Every member was written with a leading comma: the first one's
     * becomes the brace. */
    if (l.o == 0)
        buf[l.o++] = '{';
    else
        buf[0] = '{';
    buf[l.o++] = '}';
    buf[l.o++] = '\n';
    size_t o = l.o;

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
    memcpy(log->chunk->data + log->chunk->len, buf, o);
    log->chunk->len += o;
}
