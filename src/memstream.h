/* A client stream in memory: the request body is given up front, and the
 * response (status, fields, body, how it ended) is collected. It lets a
 * request run through the pipeline, the upstream client or a handler with
 * no client socket: `tollgate explain`'s dry run, unit tests, and the
 * gateway's own calls. It can hold the response back (take at most
 * `take_max` body bytes per call, or none while `paused`) to exercise
 * backpressure. */
#ifndef TG_MEMSTREAM_H
#define TG_MEMSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "codec.h"
#include "request.h"

struct tg_memstream {
    /* The request body (not copied: it must outlive the request). */
    const char *in;
    size_t in_len, in_off;
    bool in_end; /* false: more may be added (tg_memstream_feed) */

    /* The response. */
    int status;     /* the final status, 0 until the head */
    int interim[8]; /* 1xx statuses seen, in order */
    size_t ninterim;
    struct tg_strbuf head; /* "Name: value\n" lines of the final head */
    int64_t length;        /* the head's length (-1 unknown) */
    unsigned flags;        /* the head's TG_STREAM_* flags */
    struct tg_strbuf body;
    bool body_end;          /* the last body bytes came */
    bool finished;          /* finish was called ... */
    enum tg_stream_end how; /* ... so */
    bool head_done;         /* the request's header views were released */
    ev_tstamp deadline;     /* the last set_deadline */

    /* Holding back. */
    size_t take_max;  /* 0: take everything */
    bool paused;      /* take nothing */
    bool fail_writes; /* send_* fail (the client is gone) */
};

extern const struct tg_stream_ops tg_memstream_ops;

/* The memory stream as a request's stream. */
static inline struct tg_stream *tg_memstream_stream(struct tg_memstream *m)
{
    return (struct tg_stream *)(void *)m;
}

/* Sets the request body: `len` bytes at `body`; `end` says it is whole. */
void tg_memstream_set_body(struct tg_memstream *m, const char *body, size_t len, bool end);

/* The value of response field `name` (case-insensitive), NUL-terminated
 * into `out`; NULL when absent. */
const char *tg_memstream_field(const struct tg_memstream *m, const char *name, char *out,
                               size_t cap);

/* Frees what the stream collected. */
void tg_memstream_free(struct tg_memstream *m);

#endif
