/* The HTTP/1.x front end (h1.h).
 *
 * Input: one buffer per connection (c->in). A head is parsed in place;
 * the request's header views point into it until the pipeline says the
 * head is done, and no byte is read meanwhile (nothing may move them).
 * Then body bytes are framed as they arrive: counted against the length,
 * or de-chunked in place (the framing cut out, data moved down), so the
 * body is one span at the front of the buffer and the next pipelined
 * request follows it untouched.
 *
 * Output: the head and chunk framing go into a small buffer that leaves
 * in the same writev as the body bytes, which are written from the
 * caller's memory (no copy). Body bytes count as taken only once written;
 * framing already promised for bytes not yet taken is remembered
 * (chunk_left), so a partial write never breaks the chunked coding. */
#include "h1.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "conn.h"
#include "context.h"
#include "headers.h"
#include "h2.h"
#include "http1.h"
#include "faultlog.h"
#include "log.h"
#include "metrics.h"
#include "pipeline.h"
#include "request.h"

#define MS(x) ((double)(x) / 1000.0)
/* Trailers of a chunked request body are read and dropped, up to this. */
#define MAX_TRAILER 16384
/* Room asked for a response head beyond its fields. */
#define HEAD_SLACK 256
/* An active request whose owner sets no deadline is looked at again after
 * this long (a safety net, never the rule). */
#define IDLE_RECHECK_S 3600.0
/* The largest chunk header: 16 hex digits, CRLF, and the CRLF closing the
 * chunk before it. */
#define CHUNK_HEAD_MAX 20

enum h1_state {
    H1_IDLE = 0, /* keep-alive: waiting for a request */
    H1_HEAD,     /* part of a head is here */
    H1_ACTIVE,   /* a request runs */
    H1_FLUSHING, /* the request ended; its last bytes are being written */
};

/* How the response body is framed. */
enum out_mode {
    OUT_NONE = 0, /* no body (HEAD, 204, 304, bad heads) */
    OUT_LENGTH,   /* Content-Length */
    OUT_CHUNKED,  /* Transfer-Encoding: chunked */
    OUT_CLOSE,    /* until the connection closes (HTTP/1.0, unknown length) */
    OUT_TUNNEL,   /* after a 101: raw bytes */
};

/* The request's stream: what one request needs of the connection (in the
 * request's arena). */
struct tg_stream {
    struct tg_conn *c;
    struct tg_request *req;
    size_t head_len;
    uint64_t remaining; /* Content-Length body bytes not yet here */
    size_t ready;       /* data bytes at the front of the body area */
    struct tg_http1_chunked chunked;
    uint8_t framing;    /* enum tg_http1_framing */
    uint8_t minor;      /* HTTP/1.minor */
    bool keep_alive;    /* the client would reuse the connection */
    bool head_consumed; /* the head's bytes are gone from the buffer */
    bool body_done;     /* every body byte has been framed */
    bool tunnel;        /* after a 101: input is raw tunnel bytes */
    bool failed;        /* the body was refused (400/413) */
};

/* Per connection, in c->proto_state. */
struct h1 {
    struct tg_request *req;  /* the running request */
    struct tg_stream *st;    /* ... and its stream */
    struct tg_buf *out;      /* head and framing bytes not yet written */
    uint64_t chunk_left;     /* data bytes owed to the chunk already framed */
    uint64_t resp_left;      /* OUT_LENGTH: body bytes still to write */
    size_t scanned;          /* parser resume point in c->in */
    ev_tstamp head_started;  /* first byte of the current head */
    ev_tstamp write_at;      /* last bytes written (FLUSHING) */
    unsigned requests;       /* started on this connection */
    uint8_t state;           /* enum h1_state */
    uint8_t mode;            /* enum out_mode */
    bool end_queued;         /* the end of the body is written or in `out` */
    bool close;              /* the connection ends after this response */
    bool keep_after_flush;   /* FLUSHING: then serve the next request */
    bool unread_after_flush; /* FLUSHING: the client may still be sending */
    bool in_process;         /* inside process_input: no recursion */
    bool room_wanted;        /* a body write was cut short: tell the request at EV_WRITE */
};

_Static_assert(sizeof(struct h1) <= TG_CONN_PROTO_STATE, "struct h1 fits in the connection");

static struct h1 *h1_of(struct tg_conn *c)
{
    return (struct h1 *)c->proto_state;
}

static const struct tg_config *config_of(const struct tg_conn *c)
{
    return c->wcfg->config;
}

static void process_input(struct tg_conn *c);
static void update_watch(struct tg_conn *c);
static int flush(struct tg_conn *c);

/* ---- the request body ------------------------------------------------------------ */

static char *body_base(const struct tg_stream *st)
{
    struct tg_buf *in = st->c->in;
    return in->data + in->start + (st->head_consumed ? 0 : st->head_len);
}

/* Frames the bytes that arrived after the data already framed. Returns
 * the data bytes added, or -1 when the chunked coding is invalid. */
static ssize_t frame_body(struct tg_stream *st)
{
    struct tg_buf *in = st->c->in;
    if (in == NULL || st->body_done)
        return 0;
    char *base = body_base(st);
    char *p = base + st->ready;
    size_t avail = (size_t)(in->data + in->end - p);
    if (st->tunnel) {
        st->ready += avail;
        return (ssize_t)avail;
    }
    size_t added = 0;
    if (st->framing == TG_HTTP1_BODY_LENGTH) {
        added = avail < st->remaining ? avail : (size_t)st->remaining;
        st->ready += added;
        st->remaining -= added;
        st->body_done = st->remaining == 0;
        return (ssize_t)added;
    }
    if (st->framing != TG_HTTP1_BODY_CHUNKED) {
        st->body_done = true;
        return 0;
    }
    char *write = p;
    while (avail > 0 && !st->chunked.done) {
        size_t dlen = 0;
        ssize_t r = tg_http1_chunked_next(&st->chunked, p, avail, &dlen);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        if (dlen > 0) {
            if (write != p)
                memmove(write, p, dlen);
            write += dlen;
            added += dlen;
        }
        p += r;
        avail -= (size_t)r;
    }
    if (write != p) {
        /* Close the gap the framing left: what follows (more framing, or
         * the next request) moves down behind the data. */
        memmove(write, p, avail);
        in->end -= (size_t)(p - write);
    }
    st->ready += added;
    st->body_done = st->chunked.done;
    return (ssize_t)added;
}

/* Frames new input and tells the request. */
static void body_arrived(struct tg_stream *st)
{
    struct tg_request *req = st->req;
    bool was_done = st->body_done;
    ssize_t added = frame_body(st);
    if (added < 0) {
        st->failed = true;
        st->body_done = true;
        tg_request_fail(req, 400, "400 Bad Request: invalid chunked body\n");
        return;
    }
    req->body_received += (uint64_t)added;
    if (added > 0 || st->body_done != was_done || st->tunnel)
        tg_request_body(req);
}

static int s_body_peek(struct tg_stream *st, struct iovec *iov, int max, bool *end)
{
    *end = st->body_done && !st->tunnel;
    if (st->ready == 0 || max < 1 || st->c->in == NULL)
        return 0;
    iov[0].iov_base = body_base(st);
    iov[0].iov_len = st->ready;
    return 1;
}

static void s_body_consume(struct tg_stream *st, size_t n)
{
    struct tg_conn *c = st->c;
    assert(st->head_consumed && n <= st->ready);
    tg_buf_consume(c->in, n);
    st->ready -= n;
    update_watch(c); /* room again: read on */
}

static size_t s_body_room(struct tg_stream *st)
{
    struct tg_conn *c = st->c;
    if (c->in == NULL)
        return c->ctx->bufs.small_size;
    return tg_buf_room(c->in) + c->in->start;
}

static void s_head_done(struct tg_stream *st)
{
    struct tg_conn *c = st->c;
    if (st->head_consumed)
        return;
    st->head_consumed = true;
    tg_buf_consume(c->in, st->head_len);
    update_watch(c); /* body bytes may be read now */
}

/* ---- the response ------------------------------------------------------------------ */

static struct tg_buf *out_room(struct tg_conn *c, size_t need)
{
    struct h1 *h = h1_of(c);
    struct tg_context *ctx = c->ctx;
    if (h->out == NULL)
        return h->out = tg_buf_get(&ctx->bufs, need);
    if (tg_buf_room(h->out) < need) {
        tg_buf_compact(h->out);
        if (tg_buf_room(h->out) < need &&
            tg_buf_grow(&ctx->bufs, &h->out, tg_buf_len(h->out) + need) < 0)
            return NULL;
    }
    return h->out;
}

static void put(struct tg_buf *b, const char *p, size_t n)
{
    memcpy(b->data + b->end, p, n);
    b->end += n;
}

static void puts_(struct tg_buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Formatting by hand: snprintf was a tenth of the instructions of a
 * request (measured with callgrind). */
static void put_status_line(struct tg_buf *b, int status)
{
    char line[13] = "HTTP/1.1 000 ";
    line[9] = (char)('0' + status / 100 % 10);
    line[10] = (char)('0' + status / 10 % 10);
    line[11] = (char)('0' + status % 10);
    put(b, line, sizeof(line));
    puts_(b, tg_http_reason(status));
    put(b, "\r\n", 2);
}

static void put_u64(struct tg_buf *b, uint64_t v)
{
    b->end += tg_str_u64(b->data + b->end, (unsigned long long)v);
}

static size_t fields_size(const struct tg_http_headers *h)
{
    size_t n = 0;
    for (size_t i = 0; h != NULL && i < h->n; i++)
        n += h->v[i].name.n + h->v[i].value.n + 4;
    return n;
}

static void put_fields(struct tg_buf *b, const struct tg_http_headers *h)
{
    for (size_t i = 0; h != NULL && i < h->n; i++) {
        put(b, h->v[i].name.p, h->v[i].name.n);
        put(b, ": ", 2);
        put(b, h->v[i].value.p, h->v[i].value.n);
        put(b, "\r\n", 2);
    }
}

static int s_send_head(struct tg_stream *st, int status, const struct tg_http_headers *fields,
                       int64_t length, unsigned flags)
{
    struct tg_conn *c = st->c;
    struct h1 *h = h1_of(c);
    if (c->state != TG_CONN_OPEN)
        return -1;
    if (status < 200 && !(flags & TG_STREAM_TUNNEL)) {
        /* Interim answers mean nothing to an HTTP/1.0 client. They go out
         * now: the client may be waiting for one (100 Continue). */
        if (st->minor == 0)
            return 0;
        struct tg_buf *b = out_room(c, fields_size(fields) + HEAD_SLACK);
        if (b == NULL)
            return -1;
        put_status_line(b, status);
        put_fields(b, fields);
        put(b, "\r\n", 2);
        if (flush(c) < 0)
            return -1;
        update_watch(c);
        return 0;
    }
    enum out_mode mode;
    if (flags & TG_STREAM_TUNNEL)
        mode = OUT_TUNNEL;
    else if (flags & TG_STREAM_NO_BODY)
        mode = OUT_NONE;
    else if (length >= 0)
        mode = OUT_LENGTH;
    else if (st->minor >= 1)
        mode = OUT_CHUNKED;
    else
        mode = OUT_CLOSE;
    /* A body the client is still sending and nobody will read, a client
     * that will not reuse the connection, or a body only the close can
     * end: the connection goes after this answer. */
    bool close = (flags & TG_STREAM_CLOSE) || !st->keep_alive || c->draining || mode == OUT_CLOSE ||
                 mode == OUT_TUNNEL || !st->body_done;
    struct tg_buf *b = out_room(c, fields_size(fields) + HEAD_SLACK);
    if (b == NULL)
        return -1;
    put_status_line(b, status);
    put_fields(b, fields);
    bool has_length = length >= 0 && status != 204 && status != 101 &&
                      !(mode == OUT_NONE && status == 304 && length < 0);
    if (has_length) {
        puts_(b, "Content-Length: ");
        put_u64(b, (uint64_t)length);
        put(b, "\r\n", 2);
    }
    if (mode == OUT_CHUNKED)
        puts_(b, "Transfer-Encoding: chunked\r\n");
    if (mode == OUT_TUNNEL)
        puts_(b, "Connection: upgrade\r\n");
    else if (close)
        puts_(b, "Connection: close\r\n");
    else if (st->minor == 0)
        puts_(b, "Connection: keep-alive\r\n");
    put(b, "\r\n", 2);
    h->mode = (uint8_t)mode;
    h->resp_left = mode == OUT_LENGTH ? (uint64_t)length : 0;
    h->chunk_left = 0;
    h->end_queued = mode == OUT_NONE;
    h->close = close;
    if (mode == OUT_TUNNEL) {
        /* What the client sent after the upgrade request is tunnel data. */
        st->tunnel = true;
        st->body_done = false;
        frame_body(st);
    }
    return 0;
}

/* Appends a chunk header for `n` data bytes, or the last chunk when n ==
 * 0 (the CRLF that closes a chunk goes out right behind its data). */
static int frame_chunk(struct tg_conn *c, uint64_t n)
{
    struct h1 *h = h1_of(c);
    struct tg_buf *b = out_room(c, CHUNK_HEAD_MAX + 5);
    if (b == NULL)
        return -1;
    if (n == 0) {
        put(b, "0\r\n\r\n", 5);
        h->end_queued = true;
        return 0;
    }
    h->chunk_left = n;
    char hex[16];
    int k = 0;
    do {
        hex[k++] = "0123456789abcdef"[n & 15];
        n >>= 4;
    } while (n != 0);
    while (k > 0)
        b->data[b->end++] = hex[--k];
    put(b, "\r\n", 2);
    return 0;
}

static ssize_t s_send_body(struct tg_stream *st, const struct iovec *iov, int iovcnt, bool end)
{
    static const char crlf_end[] = "\r\n0\r\n\r\n"; /* a chunk's CRLF, then the last */
    struct tg_conn *c = st->c;
    struct h1 *h = h1_of(c);
    if (c->state != TG_CONN_OPEN)
        return -1;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (h->mode == OUT_NONE) {
        /* A body that must not be sent is dropped; the head goes. */
        if (flush(c) < 0)
            return -1;
        update_watch(c);
        return (ssize_t)total;
    }
    size_t taken = 0;
    int first = 0; /* iov[first] + skip is the next byte to offer */
    size_t skip = 0;
    for (;;) {
        size_t avail = total - taken;
        bool chunked = h->mode == OUT_CHUNKED;
        if (chunked && h->chunk_left == 0 && avail > 0 && frame_chunk(c, avail) < 0)
            return -1;
        if (chunked && end && avail == 0 && h->chunk_left == 0 && !h->end_queued &&
            frame_chunk(c, 0) < 0)
            return -1;
        struct iovec v[2 + 16];
        int n = 0;
        size_t out_len = h->out != NULL ? tg_buf_len(h->out) : 0;
        if (out_len > 0) {
            v[n].iov_base = h->out->data + h->out->start;
            v[n++].iov_len = out_len;
        }
        uint64_t cap = chunked ? h->chunk_left : h->mode == OUT_LENGTH ? h->resp_left : UINT64_MAX;
        size_t data = 0;
        for (int i = first; i < iovcnt && n < (int)TG_ARRAY_LEN(v) - 1 && data < cap; i++) {
            size_t off = i == first ? skip : 0;
            size_t len = iov[i].iov_len - off;
            if (len == 0)
                continue;
            if (len > cap - data)
                len = (size_t)(cap - data);
            v[n].iov_base = (char *)iov[i].iov_base + off;
            v[n++].iov_len = len;
            data += len;
        }
        /* The data completes its chunk: the chunk's CRLF (and the last
         * chunk, when this is the end) ride along. */
        size_t tail = 0;
        if (chunked && data > 0 && data == h->chunk_left)
            tail = end && data == avail ? sizeof(crlf_end) - 1 : 2;
        if (tail > 0) {
            v[n].iov_base = (void *)crlf_end;
            v[n++].iov_len = tail;
        }
        if (n == 0)
            break;
        ssize_t w = tg_io_writev(&c->io, v, n);
        if (w == TG_IO_AGAIN)
            break;
        if (w < 0)
            return -1;
        c->io.want_write = false;
        size_t done = (size_t)w;
        size_t from_out = done < out_len ? done : out_len;
        if (from_out > 0) {
            tg_buf_consume(h->out, from_out);
            st->req->bytes_out += from_out;
        }
        done -= from_out;
        size_t from_data = done < data ? done : data;
        done -= from_data;
        /* Data bytes written: advance through the caller's vector. */
        taken += from_data;
        if (chunked)
            h->chunk_left -= from_data;
        else if (h->mode == OUT_LENGTH)
            h->resp_left -= from_data;
        for (size_t left_to_skip = from_data; left_to_skip > 0 && first < iovcnt;) {
            size_t left = iov[first].iov_len - skip;
            if (left_to_skip < left) {
                skip += left_to_skip;
                left_to_skip = 0;
            } else {
                left_to_skip -= left;
                first++;
                skip = 0;
            }
        }
        if (tail > 0 && from_data == data) {
            /* What the socket did not take of the tail waits in `out`. */
            st->req->bytes_out += done;
            if (done < tail) {
                struct tg_buf *b = out_room(c, tail - done);
                if (b == NULL)
                    return -1;
                put(b, crlf_end + done, tail - done);
            }
            if (tail > 2)
                h->end_queued = true;
        }
        if ((size_t)w < out_len + data + tail) {
            /* The socket is full (without an EAGAIN yet): the request is
             * told when it has room again, whoever its owner is. */
            h->room_wanted = taken < total;
            break;
        }
    }
    if (h->out != NULL && tg_buf_len(h->out) == 0) {
        tg_buf_put(&c->ctx->bufs, h->out);
        h->out = NULL;
    }
    if (end && taken == total && h->mode != OUT_CHUNKED)
        h->end_queued = true;
    h->write_at = tg_context_now(c->ctx);
    update_watch(c);
    return (ssize_t)taken;
}

/* Writes what `out` holds. Returns 0 (all written, or the socket is full:
 * EV_WRITE comes back), or -1 when the client is gone. */
static int flush(struct tg_conn *c)
{
    struct h1 *h = h1_of(c);
    while (h->out != NULL && tg_buf_len(h->out) > 0) {
        struct iovec v = {h->out->data + h->out->start, tg_buf_len(h->out)};
        ssize_t w = tg_io_writev(&c->io, &v, 1);
        if (w == TG_IO_AGAIN)
            return 0;
        if (w < 0)
            return -1;
        c->io.want_write = false;
        tg_buf_consume(h->out, (size_t)w);
        if (h->req != NULL)
            h->req->bytes_out += (uint64_t)w;
        h->write_at = tg_context_now(c->ctx);
    }
    if (h->out != NULL) {
        tg_buf_put(&c->ctx->bufs, h->out);
        h->out = NULL;
    }
    return 0;
}

static void s_set_deadline(struct tg_stream *st, ev_tstamp when)
{
    tg_conn_set_deadline(st->c, when);
}

/* ---- between requests -------------------------------------------------------------- */

static void start_idle(struct tg_conn *c)
{
    struct h1 *h = h1_of(c);
    h->state = H1_IDLE;
    h->scanned = 0;
    tg_conn_set_deadline(c, tg_context_now(c->ctx) + MS(config_of(c)->client.keepalive_timeout_ms));
    update_watch(c);
    if (c->in != NULL && tg_buf_len(c->in) > 0) {
        /* Pipelined requests already here; from inside process_input its
         * loop takes them. */
        if (!h->in_process)
            process_input(c);
    } else {
        tg_conn_release_input(c);
    }
}

/* The response is all written: the next request, or the end. */
static void after_response(struct tg_conn *c, bool keep, bool unread)
{
    if (!keep) {
        bool pending = c->in != NULL && tg_buf_len(c->in) > 0;
        tg_conn_close_gracefully(c, pending || unread);
        return;
    }
    start_idle(c);
}

static void s_finish(struct tg_stream *st, enum tg_stream_end how)
{
    struct tg_conn *c = st->c;
    struct h1 *h = h1_of(c);
    h->req = NULL;
    h->st = NULL;
    h->room_wanted = false; /* nobody left to tell */
    if (c->state != TG_CONN_OPEN)
        return;
    if (how == TG_STREAM_RESET) {
        tg_conn_close(c);
        return;
    }
    /* What the client sent of this request and nobody read: drop it when
     * it is all here (the connection goes on), else close after the
     * answer, reading and dropping for a while. */
    if (!st->head_consumed) {
        st->head_consumed = true;
        tg_buf_consume(c->in, st->head_len);
    }
    if (!st->failed && !st->tunnel && frame_body(st) < 0)
        st->failed = true;
    bool unread = !st->body_done || st->failed || st->tunnel;
    if (!unread && st->ready > 0) {
        tg_buf_consume(c->in, st->ready);
        st->ready = 0;
    }
    bool keep = how == TG_STREAM_DONE && !h->close && !unread && h->end_queued && !c->draining &&
                h->mode != OUT_CLOSE && h->mode != OUT_TUNNEL;
    if (h->out != NULL && tg_buf_len(h->out) > 0) {
        h->state = H1_FLUSHING;
        h->keep_after_flush = keep;
        h->unread_after_flush = unread;
        tg_conn_set_deadline(c, h->write_at + MS(config_of(c)->client.send_timeout_ms));
        update_watch(c);
        return;
    }
    after_response(c, keep, unread);
}

static const struct tg_stream_ops h1_stream_ops = {
    .send_head = s_send_head,
    .send_body = s_send_body,
    .body_peek = s_body_peek,
    .body_consume = s_body_consume,
    .body_room = s_body_room,
    .head_done = s_head_done,
    .set_deadline = s_set_deadline,
    .finish = s_finish,
};

/* ---- watching the socket ------------------------------------------------------------ */

/* Reads are wanted while a head may come, or while the running request's
 * head is gone and its body (or tunnel) may still bring bytes; a full
 * buffer pauses them (backpressure). Writes while bytes wait. */
static void update_watch(struct tg_conn *c)
{
    struct h1 *h = h1_of(c);
    if (c->state != TG_CONN_OPEN)
        return;
    int ev = 0;
    bool room = c->in == NULL || tg_buf_room(c->in) > 0 || c->in->start > 0;
    switch (h->state) {
    case H1_IDLE:
    case H1_HEAD:
        ev = EV_READ;
        break;
    case H1_ACTIVE:
        if (h->st != NULL && h->st->head_consumed && !h->st->failed && room && h->req != NULL &&
            h->req->phase != TG_REQ_LOCAL)
            ev = EV_READ;
        break;
    default:
        break;
    }
    if ((h->out != NULL && tg_buf_len(h->out) > 0) || c->io.want_write || h->room_wanted)
        ev |= EV_WRITE;
    tg_conn_watch(c, ev);
}

/* ---- heads ----------------------------------------------------------------------------- */

/* A head that cannot be accepted: answered (400, 408, 414, 431, 505) as
 * a request of its own, then the connection closes. */
static void bad_head(struct tg_conn *c, int status, const char *reason)
{
    struct h1 *h = h1_of(c);
    struct tg_context *ctx = c->ctx;
    struct tg_request *req = tg_request_new(ctx, c->wcfg, &h1_stream_ops, NULL);
    struct tg_stream *st = req != NULL ? tg_arena_calloc(&req->arena, 1, sizeof(*st)) : NULL;
    if (st == NULL) {
        if (req != NULL)
            tg_request_abort(req);
        tg_conn_close(c);
        return;
    }
    req->stream = st;
    st->c = c;
    st->req = req;
    st->head_consumed = true; /* nothing of an invalid head is used */
    st->body_done = true;
    st->failed = true;
    st->minor = 1;
    req->start = h->head_started;
    req->listener = c->lcfg;
    req->peer = req->client = c->peer;
    req->ssl = c->io.ssl;
    req->https = c->io.ssl != NULL;
    req->method = "";
    req->host = "";
    req->path = "";
    req->proto = "HTTP/1.1";
    req->bytes_in = c->in != NULL ? tg_buf_len(c->in) : 0;
    req->request_id_len = tg_headers_new_request_id(req->request_id);
    if (c->in != NULL)
        c->in->start = c->in->end = 0;
    h->req = req;
    h->st = st;
    h->state = H1_ACTIVE;
    char body[160];
    snprintf(body, sizeof(body), "%d %s: %s\n", status, tg_http_reason(status), reason);
    tg_request_respond_text(req, status, body, true);
}

/* Fills a request from a parsed head (views into c->in). */
static int fill_request(struct tg_request *req, struct tg_stream *st,
                        const struct tg_http1_request *p)
{
    struct tg_conn *c = st->c;
    req->method_id = p->method_id;
    req->method = tg_request_strdup(req, p->method.p, p->method.n);
    struct tg_str host = p->host.p != NULL ? p->host : tg_str_make("", 0);
    req->host = tg_request_strdup(req, host.p, host.n);
    req->host_len = host.n;
    req->path = p->path.p;
    req->path_len = p->path.n;
    req->query = p->query.p;
    req->query_len = p->query.p != NULL ? p->query.n : 0;
    req->proto = p->minor_version == 0 ? "HTTP/1.0" : "HTTP/1.1";
    req->headers.v = tg_arena_alloc(&req->arena, (p->nheaders ? p->nheaders : 1) *
                                                     sizeof(struct tg_http_header));
    if (req->method == NULL || req->host == NULL || req->headers.v == NULL)
        return -1;
    memcpy(req->headers.v, p->headers, p->nheaders * sizeof(struct tg_http_header));
    req->headers.n = req->headers.cap = p->nheaders;
    req->headers_valid = true;
    req->body_length = p->framing == TG_HTTP1_BODY_LENGTH    ? (int64_t)p->content_length
                       : p->framing == TG_HTTP1_BODY_CHUNKED ? -1
                                                             : 0;
    req->upgrade_websocket = p->upgrade_websocket;
    req->close_after = !p->keep_alive;
    req->listener = c->lcfg;
    req->peer = c->peer;
    req->ssl = c->io.ssl;
    req->https = c->io.ssl != NULL;
    req->bytes_in = p->head_len;
    st->head_len = p->head_len;
    st->framing = (uint8_t)p->framing;
    st->remaining = p->content_length;
    st->minor = (uint8_t)p->minor_version;
    st->keep_alive = p->keep_alive;
    st->body_done = p->framing == TG_HTTP1_BODY_NONE ||
                    (p->framing == TG_HTTP1_BODY_LENGTH && p->content_length == 0);
    tg_http1_chunked_init(&st->chunked, MAX_TRAILER);
    return 0;
}

/* A head is complete: make its request and run the pipeline on it. */
static void start_request(struct tg_conn *c, const struct tg_http1_request *p)
{
    struct h1 *h = h1_of(c);
    struct tg_context *ctx = c->ctx;
    struct tg_request *req = tg_request_new(ctx, c->wcfg, &h1_stream_ops, NULL);
    struct tg_stream *st = req != NULL ? tg_arena_calloc(&req->arena, 1, sizeof(*st)) : NULL;
    if (st != NULL) {
        st->c = c;
        st->req = req;
        req->stream = st;
    }
    if (st == NULL || fill_request(req, st, p) < 0) {
        tg_log_error("out of memory for a request; closing the connection");
        if (req != NULL)
            tg_request_abort(req);
        tg_conn_close(c);
        return;
    }
    req->start = h->head_started;
    h->req = req;
    h->st = st;
    h->state = H1_ACTIVE;
    h->requests++;
    /* The head's body bytes that came with it are framed now. */
    if (!st->body_done) {
        ssize_t added = frame_body(st);
        if (added < 0) {
            st->failed = true;
            st->body_done = true;
        } else {
            req->body_received = (uint64_t)added;
        }
    }
    if (st->failed) {
        tg_request_respond_text(req, 400, "400 Bad Request: invalid chunked body\n", true);
        return;
    }
    tg_pipeline_start(req); /* the request ends through the core, now or later */
}

static void start_head(struct tg_conn *c)
{
    struct h1 *h = h1_of(c);
    h->state = H1_HEAD;
    h->scanned = 0;
    if (h->requests > 0) {
        /* Later requests are timed from their first byte (the first from
         * the start of the connection). */
        h->head_started = tg_context_now(c->ctx);
        tg_conn_set_deadline(c, h->head_started + MS(config_of(c)->client.header_timeout_ms));
    }
}

static void process_input(struct tg_conn *c)
{
    struct h1 *h = h1_of(c);
    if (h->in_process)
        return;
    h->in_process = true;
    tg_conn_ref(c);
    while (c->state == TG_CONN_OPEN && (h->state == H1_IDLE || h->state == H1_HEAD) &&
           c->in != NULL && tg_buf_len(c->in) > 0) {
        if (h->state == H1_IDLE && h->requests == 0 && c->lcfg->h2c && c->io.ssl == NULL) {
            /* An h2c listener: a client preface switches to HTTP/2 (prior
             * knowledge); anything else is HTTP/1. */
            size_t n = tg_buf_len(c->in);
            size_t k = n < TG_H2_PREFACE_LEN ? n : TG_H2_PREFACE_LEN;
            if (memcmp(c->in->data + c->in->start, TG_H2_PREFACE, k) == 0) {
                if (n < TG_H2_PREFACE_LEN)
                    break; /* more of it to come */
                h->in_process = false;
                tg_h2_start(c);
                tg_conn_unref(c);
                return;
            }
        }
        if (h->state == H1_IDLE) {
            if (!tg_conn_refresh_config(c))
                c->draining = true; /* its listener is gone: this one is the last */
            start_head(c);
        }
        struct tg_http1_request *p = tg_context_h1_request(c->ctx);
        if (p == NULL) {
            tg_conn_close(c);
            break;
        }
        const struct tg_config_client *cc = &config_of(c)->client;
        struct tg_http1_limits limits = {cc->max_request_line, cc->max_request_line + cc->max_head,
                                         cc->max_headers};
        int status = 400;
        const char *reason = "bad request";
        ssize_t r = tg_http1_parse_request(c->in->data + c->in->start, tg_buf_len(c->in),
                                           &h->scanned, &limits, p, &status, &reason);
        if (r == TG_HTTP1_INCOMPLETE)
            break;
        if (r == TG_HTTP1_ERROR) {
            tg_log_debug("client: %s (%d)", reason, status);
            bad_head(c, status, reason);
            break;
        }
        start_request(c, p);
        /* The request may be over already (a local answer): loop for
         * pipelined requests behind it. */
    }
    if (c->state == TG_CONN_OPEN && h->state == H1_IDLE)
        tg_conn_release_input(c);
    h->in_process = false;
    tg_conn_unref(c);
}

static void read_heads(struct tg_conn *c)
{
    struct h1 *h = h1_of(c);
    for (;;) {
        ssize_t n = tg_conn_read(c);
        if (n > 0) {
            process_input(c);
            if (c->state != TG_CONN_OPEN || (h->state != H1_IDLE && h->state != H1_HEAD))
                return;
            if (!tg_io_buffered(&c->io))
                return;
            continue;
        }
        if (n == TG_IO_AGAIN) {
            if (h->state == H1_IDLE)
                tg_conn_release_input(c);
            update_watch(c);
            return;
        }
        /* EOF or an error between or inside heads: nothing to answer. */
        tg_conn_close(c);
        return;
    }
}

/* ---- the running request's socket events ------------------------------------------- */

static void read_body(struct tg_conn *c)
{
    struct h1 *h = h1_of(c);
    struct tg_stream *st = h->st;
    for (;;) {
        if (st == NULL || !st->head_consumed || st->failed)
            return;
        if (c->in != NULL && tg_buf_room(c->in) == 0 && c->in->start == 0)
            return; /* full: wait until the body is taken */
        if (c->in != NULL && tg_buf_room(c->in) == 0)
            tg_buf_compact(c->in);
        ssize_t n = c->in == NULL || tg_buf_room(c->in) > 0 ? tg_conn_read(c) : TG_IO_AGAIN;
        if (n == TG_IO_AGAIN)
            return;
        if (n <= 0) {
            /* The client went away (or reset): in a tunnel that ends it. */
            struct tg_request *req = h->req;
            if (n == 0 && !st->body_done)
                tg_faultlog_note(TG_LOG_INFO, "clients", "requests abandoned",
                                 "request %s: client closed during the request body",
                                 req->request_id);
            tg_request_abort(req);
            h->req = NULL;
            h->st = NULL;
            tg_conn_close(c);
            return;
        }
        h->req->bytes_in += (uint64_t)n;
        body_arrived(st);
        st = h->st; /* the request may have ended */
        if (!tg_io_buffered(&c->io))
            return;
    }
}

static void h1_io(struct tg_conn *c, int revents)
{
    struct h1 *h = h1_of(c);
    switch (h->state) {
    case H1_IDLE:
    case H1_HEAD:
        read_heads(c);
        break;
    case H1_ACTIVE: {
        struct tg_request *req = h->req;
        tg_request_ref(req);
        if ((revents & EV_WRITE) || (c->io.ssl != NULL && c->io.want_write)) {
            h->room_wanted = false;
            if (flush(c) < 0) {
                tg_request_abort(req);
                h->req = NULL;
                h->st = NULL;
                tg_conn_close(c);
            } else if (h->out == NULL && h->req == req) {
                tg_request_writable(req);
            }
        }
        if ((revents & EV_READ) && h->req == req && c->state == TG_CONN_OPEN)
            read_body(c);
        tg_request_unref(req);
        break;
    }
    case H1_FLUSHING:
        if (flush(c) < 0) {
            tg_conn_close(c);
            return;
        }
        if (h->out == NULL)
            after_response(c, h->keep_after_flush, h->unread_after_flush);
        break;
    }
    if (c->state == TG_CONN_OPEN)
        update_watch(c);
}

static void h1_timeout(struct tg_conn *c, ev_tstamp now)
{
    struct h1 *h = h1_of(c);
    switch (h->state) {
    case H1_HEAD:
        tg_log_debug("client: request head timed out");
        bad_head(c, 408, "request head timed out");
        break;
    case H1_ACTIVE: {
        struct tg_request *req = h->req;
        tg_request_ref(req);
        ev_tstamp next = tg_request_timeout(req, now);
        if (h->req == req && c->state == TG_CONN_OPEN)
            tg_conn_set_deadline(c, next > now ? next : now + IDLE_RECHECK_S);
        tg_request_unref(req);
        break;
    }
    default:
        /* Idle keep-alive, or a client that stopped reading the end of an
         * answer: close. */
        tg_conn_close(c);
        break;
    }
}

static void h1_close(struct tg_conn *c)
{
    struct h1 *h = h1_of(c);
    struct tg_request *req = h->req;
    h->req = NULL;
    h->st = NULL;
    if (req != NULL)
        tg_request_abort(req);
    if (h->out != NULL) {
        tg_buf_put(&c->ctx->bufs, h->out);
        h->out = NULL;
    }
}

static void h1_drain(struct tg_conn *c)
{
    struct h1 *h = h1_of(c);
    if (h->state == H1_IDLE && (c->in == NULL || tg_buf_len(c->in) == 0)) {
        tg_conn_close(c);
        return;
    }
    if (h->state == H1_ACTIVE && h->req != NULL)
        tg_request_drain(h->req);
}

static const struct tg_conn_proto h1_proto = {
    .name = "http/1.1",
    .on_io = h1_io,
    .on_timeout = h1_timeout,
    .on_close = h1_close,
    .on_drain = h1_drain,
};

void tg_h1_start(struct tg_conn *c)
{
    struct h1 *h = h1_of(c);
    memset(h, 0, sizeof(*h));
    tg_conn_set_proto(c, &h1_proto);
    h->state = H1_IDLE;
    /* The first request's head is timed from here (accept, or the end of
     * the handshake), so a client that connects and says nothing is
     * dropped after header_timeout. */
    h->head_started = tg_context_now(c->ctx);
    tg_conn_set_deadline(c, h->head_started + MS(config_of(c)->client.header_timeout_ms));
    tg_conn_watch(c, EV_READ);
    /* The request may have come with the last handshake flight. */
    if (c->io.ssl != NULL)
        read_heads(c);
}
