/* A client stream in memory (memstream.h). */
#include "memstream.h"

#include <string.h>
#include <strings.h>

static struct tg_memstream *ms(struct tg_stream *s)
{
    return (struct tg_memstream *)(void *)s;
}

static int m_send_head(struct tg_stream *s, int status, const struct tg_http_headers *h,
                       int64_t length, unsigned flags)
{
    struct tg_memstream *m = ms(s);
    if (m->fail_writes)
        return -1;
    if (status < 200 && !(flags & TG_STREAM_TUNNEL)) {
        if (m->ninterim < sizeof(m->interim) / sizeof(m->interim[0]))
            m->interim[m->ninterim++] = status;
        return 0;
    }
    m->status = status;
    m->length = length;
    m->flags = flags;
    m->head.n = 0;
    for (size_t i = 0; h != NULL && i < h->n; i++) {
        tg_strbuf_put(&m->head, h->v[i].name.p, h->v[i].name.n);
        tg_strbuf_put(&m->head, ": ", 2);
        tg_strbuf_put(&m->head, h->v[i].value.p, h->v[i].value.n);
        tg_strbuf_put(&m->head, "\n", 1);
    }
    return m->head.oom ? -1 : 0;
}

static ssize_t m_send_body(struct tg_stream *s, const struct iovec *iov, int iovcnt, bool end)
{
    struct tg_memstream *m = ms(s);
    if (m->fail_writes)
        return -1;
    if (m->paused)
        return 0;
    size_t taken = 0;
    for (int i = 0; i < iovcnt; i++) {
        size_t n = iov[i].iov_len;
        if (m->take_max != 0 && n > m->take_max - taken)
            n = m->take_max - taken;
        tg_strbuf_put(&m->body, iov[i].iov_base, n);
        if (m->body.oom)
            return -1;
        taken += n;
        if (n < iov[i].iov_len)
            return (ssize_t)taken;
    }
    if (end)
        m->body_end = true;
    return (ssize_t)taken;
}

static int m_body_peek(struct tg_stream *s, struct iovec *iov, int max, bool *end)
{
    struct tg_memstream *m = ms(s);
    *end = m->in_end;
    if (m->in_off == m->in_len || max < 1)
        return 0;
    iov[0].iov_base = (void *)(m->in + m->in_off);
    iov[0].iov_len = m->in_len - m->in_off;
    return 1;
}

static void m_body_consume(struct tg_stream *s, size_t n)
{
    struct tg_memstream *m = ms(s);
    m->in_off += n;
}

static size_t m_body_room(struct tg_stream *s)
{
    (void)s;
    return SIZE_MAX; /* it holds whatever it was given */
}

static void m_head_done(struct tg_stream *s)
{
    ms(s)->head_done = true;
}

static void m_set_deadline(struct tg_stream *s, ev_tstamp when)
{
    ms(s)->deadline = when;
}

static void m_finish(struct tg_stream *s, enum tg_stream_end how)
{
    struct tg_memstream *m = ms(s);
    m->finished = true;
    m->how = how;
}

const struct tg_stream_ops tg_memstream_ops = {
    .send_head = m_send_head,
    .send_body = m_send_body,
    .body_peek = m_body_peek,
    .body_consume = m_body_consume,
    .body_room = m_body_room,
    .head_done = m_head_done,
    .set_deadline = m_set_deadline,
    .finish = m_finish,
};

void tg_memstream_set_body(struct tg_memstream *m, const char *body, size_t len, bool end)
{
    m->in = body;
    m->in_len = len;
    m->in_end = end;
}

const char *tg_memstream_field(const struct tg_memstream *m, const char *name, char *out,
                               size_t cap)
{
    size_t nl = strlen(name);
    const char *p = m->head.p;
    while (p != NULL && *p) {
        const char *eol = strchr(p, '\n');
        if (eol == NULL)
            break;
        if ((size_t)(eol - p) > nl + 1 && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 2;
            size_t n = (size_t)(eol - v);
            if (n >= cap)
                n = cap - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return out;
        }
        p = eol + 1;
    }
    return NULL;
}

void tg_memstream_free(struct tg_memstream *m)
{
    tg_strbuf_free(&m->head);
    tg_strbuf_free(&m->body);
}
