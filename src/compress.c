/* Streaming compression for responses: one small interface over zlib,
 * zstd and brotli, their state allocated through a counting allocator so
 * the memory a stream costs is measured, not guessed. Deliberately not
 * here: when to compress, buffers, or the stream it feeds (request.c). */
#include "compress.h"

#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>

#include <brotli/encode.h>
#include <zlib.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_customMem */
#include <zstd.h>

/* The caps: a window of 16 KiB (gzip), 64 KiB (zstd and brotli)
 * is where most of a JSON or HTML body's repeats are found, and keeps a
 * stream's state in the low hundreds of KiB whatever level is asked. */
#define GZIP_WINDOW_BITS 14
#define GZIP_MEM_LEVEL 7
#define ZSTD_WINDOW_LOG 16
#define ZSTD_TABLE_LOG 14
#define BR_LGWIN 16
#define BR_LGBLOCK 16

struct tg_compress {
    enum tg_encoding enc;
    int level;
    struct tg_compress *next; /* in its thread's pool while idle */
    size_t mem;               /* bytes the library holds now */
    size_t peak;              /* ... and at most */
    bool fed;                 /* input taken since the last completed flush */
    bool finished;
    enum tg_compress_op busy; /* a flush or finish under way (RUN: none) */
    union {
        z_stream z;
        ZSTD_CCtx *zs;
        BrotliEncoderState *br;
    } u;
};

/* The allocator every library gets: a size header before each block, so
 * a free (which zstd and brotli give without a size) can be counted. */
union mhdr {
    size_t n;
    max_align_t align;
};

static void *count_alloc(void *opaque, size_t n)
{
    struct tg_compress *c = opaque;
    if (n > SIZE_MAX - sizeof(union mhdr))
        return NULL;
    union mhdr *h = malloc(sizeof(*h) + n);
    if (h == NULL)
        return NULL;
    h->n = n;
    c->mem += n;
    if (c->mem > c->peak)
        c->peak = c->mem;
    return h + 1;
}

static void count_free(void *opaque, void *p)
{
    struct tg_compress *c = opaque;
    if (p == NULL)
        return;
    union mhdr *h = (union mhdr *)p - 1;
    c->mem -= h->n;
    free(h);
}

static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    if (size != 0 && items > SIZE_MAX / size)
        return NULL;
    return count_alloc(opaque, (size_t)items * size);
}

static void z_free(voidpf opaque, voidpf p)
{
    count_free(opaque, p);
}

/* Idle encoders, per thread and coding, reset and ready: a compressed
 * response takes one and gives it back, so its state (gzip's 133 KiB) is
 * neither allocated nor freed per response. Freeing it would hand the
 * pages back to the kernel (glibc trims a thread's heap) and the next
 * response would fault them in again: a measured 8% of the CPU of a
 * 10 KiB gzip response. tg_compress_trim bounds what stays. Brotli has no
 * reset: its encoders are not kept. */
#define POOL_MAX 16
static __thread struct {
    struct tg_compress *idle;
    unsigned n;     /* in `idle` */
    unsigned taken; /* since the last trim */
} pool[TG_ENC_COUNT];

static struct tg_compress *pool_take(enum tg_encoding enc, int level)
{
    struct tg_compress **pp = &pool[enc].idle;
    for (; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->level == level) {
            struct tg_compress *c = *pp;
            *pp = c->next;
            c->next = NULL;
            pool[enc].n--;
            pool[enc].taken++;
            return c;
        }
    }
    return NULL;
}

static void destroy(struct tg_compress *c);

/* Resets `c` and keeps it for the next response, or says it cannot. */
static bool pool_give(struct tg_compress *c)
{
    if (c->enc <= TG_ENC_IDENTITY || c->enc >= TG_ENC_COUNT || c->enc == TG_ENC_BR ||
        pool[c->enc].n >= POOL_MAX)
        return false;
    if (c->enc == TG_ENC_GZIP ? deflateReset(&c->u.z) != Z_OK
                              : ZSTD_isError(ZSTD_CCtx_reset(c->u.zs, ZSTD_reset_session_only)))
        return false;
    c->fed = c->finished = false;
    c->busy = TG_COMPRESS_RUN;
    c->next = pool[c->enc].idle;
    pool[c->enc].idle = c;
    pool[c->enc].n++;
    return true;
}

void tg_compress_release_all(void)
{
    tg_compress_trim();
    tg_compress_trim(); /* nothing taken since the first: all of them */
}

void tg_compress_trim(void)
{
    for (int e = 0; e < TG_ENC_COUNT; e++) {
        /* Keep as many as were taken since the last trim: what the
         * busiest stretch needed comes back, the rest goes. */
        while (pool[e].n > pool[e].taken) {
            struct tg_compress *c = pool[e].idle;
            pool[e].idle = c->next;
            pool[e].n--;
            destroy(c);
        }
        pool[e].taken = 0;
    }
}

struct tg_compress *tg_compress_new(enum tg_encoding enc, int level)
{
    struct tg_compress *c =
        enc > TG_ENC_IDENTITY && enc < TG_ENC_COUNT ? pool_take(enc, level) : NULL;
    if (c != NULL)
        return c;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->enc = enc;
    c->level = level;
    switch (enc) {
    case TG_ENC_GZIP:
        c->u.z.zalloc = z_alloc;
        c->u.z.zfree = z_free;
        c->u.z.opaque = c;
        /* 16 + window bits: a gzip header and trailer, not a zlib one. */
        if (deflateInit2(&c->u.z, level, Z_DEFLATED, 16 + GZIP_WINDOW_BITS, GZIP_MEM_LEVEL,
                         Z_DEFAULT_STRATEGY) != Z_OK)
            goto fail;
        return c;
    case TG_ENC_ZSTD: {
        ZSTD_customMem cm = {count_alloc, count_free, c};
        c->u.zs = ZSTD_createCCtx_advanced(cm);
        if (c->u.zs == NULL)
            goto fail;
        /* The level's own parameters, with the window and the match tables
         * capped (a level above 3 would otherwise take megabytes). */
        ZSTD_compressionParameters p = ZSTD_getCParams(level, 0, 0);
        unsigned wlog = p.windowLog < ZSTD_WINDOW_LOG ? p.windowLog : ZSTD_WINDOW_LOG;
        unsigned hlog = p.hashLog < ZSTD_TABLE_LOG ? p.hashLog : ZSTD_TABLE_LOG;
        unsigned clog = p.chainLog < ZSTD_TABLE_LOG ? p.chainLog : ZSTD_TABLE_LOG;
        if (ZSTD_isError(ZSTD_CCtx_setParameter(c->u.zs, ZSTD_c_compressionLevel, level)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(c->u.zs, ZSTD_c_windowLog, (int)wlog)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(c->u.zs, ZSTD_c_hashLog, (int)hlog)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(c->u.zs, ZSTD_c_chainLog, (int)clog)))
            goto fail;
        return c;
    }
    case TG_ENC_BR:
        c->u.br = BrotliEncoderCreateInstance(count_alloc, count_free, c);
        if (c->u.br == NULL ||
            !BrotliEncoderSetParameter(c->u.br, BROTLI_PARAM_QUALITY, (uint32_t)level) ||
            !BrotliEncoderSetParameter(c->u.br, BROTLI_PARAM_LGWIN, BR_LGWIN) ||
            !BrotliEncoderSetParameter(c->u.br, BROTLI_PARAM_LGBLOCK, BR_LGBLOCK))
            goto fail;
        return c;
    default:
        break;
    }
fail:
    destroy(c);
    return NULL;
}

void tg_compress_free(struct tg_compress *c)
{
    if (c != NULL && !pool_give(c))
        destroy(c);
}

static void destroy(struct tg_compress *c)
{
    switch (c->enc) {
    case TG_ENC_GZIP:
        if (c->u.z.state != NULL)
            deflateEnd(&c->u.z);
        break;
    case TG_ENC_ZSTD:
        ZSTD_freeCCtx(c->u.zs);
        break;
    case TG_ENC_BR:
        if (c->u.br != NULL)
            BrotliEncoderDestroyInstance(c->u.br);
        break;
    default:
        break;
    }
    free(c);
}

size_t tg_compress_memory(const struct tg_compress *c)
{
    return c->peak;
}

/* Takes input without flushing. 1: all taken; 0: output full; -1. */
static int codec_run(struct tg_compress *c, const uint8_t *in, size_t len, size_t *used,
                     uint8_t *out, size_t cap, size_t *wrote)
{
    *used = *wrote = 0;
    if (cap == 0)
        return 0;
    switch (c->enc) {
    case TG_ENC_GZIP: {
        z_stream *z = &c->u.z;
        /* zlib counts in uInt: a huge span goes in parts. */
        size_t in_n = len > UINT32_MAX ? UINT32_MAX : len;
        size_t out_n = cap > UINT32_MAX ? UINT32_MAX : cap;
        z->next_in = (Bytef *)in;
        z->avail_in = (uInt)in_n;
        z->next_out = out;
        z->avail_out = (uInt)out_n;
        if (deflate(z, Z_NO_FLUSH) == Z_STREAM_ERROR)
            return -1;
        *used = in_n - z->avail_in;
        *wrote = out_n - z->avail_out;
        break;
    }
    case TG_ENC_ZSTD: {
        ZSTD_inBuffer ib = {in, len, 0};
        ZSTD_outBuffer ob = {out, cap, 0};
        if (ZSTD_isError(ZSTD_compressStream2(c->u.zs, &ob, &ib, ZSTD_e_continue)))
            return -1;
        *used = ib.pos;
        *wrote = ob.pos;
        break;
    }
    case TG_ENC_BR: {
        size_t avail_in = len, avail_out = cap;
        const uint8_t *next_in = in;
        uint8_t *next_out = out;
        if (!BrotliEncoderCompressStream(c->u.br, BROTLI_OPERATION_PROCESS, &avail_in, &next_in,
                                         &avail_out, &next_out, NULL))
            return -1;
        *used = len - avail_in;
        *wrote = cap - avail_out;
        break;
    }
    default:
        return -1;
    }
    return *used == len ? 1 : 0;
}

/* A flush or finish with no new input. 1: complete; 0: output full; -1. */
static int codec_op(struct tg_compress *c, enum tg_compress_op op, uint8_t *out, size_t cap,
                    size_t *wrote)
{
    *wrote = 0;
    /* zlib starts a flush afresh when the last call filled the output
     * exactly: with less room than a flush marker it would never end. */
    if (cap < TG_COMPRESS_MIN_ROOM)
        return 0;
    switch (c->enc) {
    case TG_ENC_GZIP: {
        z_stream *z = &c->u.z;
        size_t out_n = cap > UINT32_MAX ? UINT32_MAX : cap;
        z->next_in = NULL;
        z->avail_in = 0;
        z->next_out = out;
        z->avail_out = (uInt)out_n;
        int rc = deflate(z, op == TG_COMPRESS_FINISH ? Z_FINISH : Z_SYNC_FLUSH);
        *wrote = out_n - z->avail_out;
        if (rc == Z_STREAM_ERROR)
            return -1;
        if (op == TG_COMPRESS_FINISH)
            return rc == Z_STREAM_END ? 1 : 0;
        /* zlib: a flush is done when it left output room unused. */
        return z->avail_out > 0 ? 1 : 0;
    }
    case TG_ENC_ZSTD: {
        ZSTD_inBuffer ib = {NULL, 0, 0};
        ZSTD_outBuffer ob = {out, cap, 0};
        size_t left = ZSTD_compressStream2(c->u.zs, &ob, &ib,
                                           op == TG_COMPRESS_FINISH ? ZSTD_e_end : ZSTD_e_flush);
        *wrote = ob.pos;
        if (ZSTD_isError(left))
            return -1;
        return left == 0 ? 1 : 0;
    }
    case TG_ENC_BR: {
        BrotliEncoderOperation bop =
            op == TG_COMPRESS_FINISH ? BROTLI_OPERATION_FINISH : BROTLI_OPERATION_FLUSH;
        size_t avail_in = 0, avail_out = cap;
        const uint8_t *next_in = NULL;
        uint8_t *next_out = out;
        while (avail_out > 0) {
            if (!BrotliEncoderCompressStream(c->u.br, bop, &avail_in, &next_in, &avail_out,
                                             &next_out, NULL))
                return -1;
            bool done = op == TG_COMPRESS_FINISH ? BrotliEncoderIsFinished(c->u.br)
                                                 : !BrotliEncoderHasMoreOutput(c->u.br);
            if (done) {
                *wrote = cap - avail_out;
                return 1;
            }
        }
        *wrote = cap;
        return 0;
    }
    default:
        return -1;
    }
}

int tg_compress_step(struct tg_compress *c, const void *in, size_t in_len, size_t *in_used,
                     void *out, size_t out_cap, size_t *out_used, enum tg_compress_op op)
{
    uint8_t *o = out;
    size_t done = 0, w = 0;
    int r;
    *in_used = *out_used = 0;
    if (c->finished)
        return in_len == 0 ? 1 : -1;
    /* A flush or finish left half-way is completed before anything else. */
    if (c->busy != TG_COMPRESS_RUN) {
        r = codec_op(c, c->busy, o, out_cap, &w);
        done += w;
        if (r <= 0) {
            *out_used = done;
            return r;
        }
        c->finished = c->busy == TG_COMPRESS_FINISH;
        c->busy = TG_COMPRESS_RUN;
        c->fed = false;
        if (c->finished) {
            *out_used = done;
            return in_len == 0 ? 1 : -1;
        }
    }
    /* Input is always taken by a plain run and flushed after, with none
     * given: brotli wants a flush's input left unchanged until it is done,
     * and this way no library ever sees input and a flush together. */
    if (in_len > 0) {
        r = codec_run(c, in, in_len, in_used, o + done, out_cap - done, &w);
        done += w;
        if (*in_used > 0)
            c->fed = true;
        if (r <= 0) {
            *out_used = done;
            return r;
        }
    }
    if (op == TG_COMPRESS_RUN || (op == TG_COMPRESS_FLUSH && !c->fed)) {
        *out_used = done;
        return 1;
    }
    c->busy = op;
    r = codec_op(c, op, o + done, out_cap - done, &w);
    done += w;
    *out_used = done;
    if (r <= 0)
        return r;
    c->finished = op == TG_COMPRESS_FINISH;
    c->busy = TG_COMPRESS_RUN;
    c->fed = false;
    return 1;
}

int tg_compress_whole(enum tg_encoding enc, int level, const void *in, size_t len, char **out,
                      size_t *out_len)
{
    struct tg_compress *c = tg_compress_new(enc, level);
    /* Most text ends up well under half its size; grown when it does not. */
    size_t cap = len / 2 + 64, used_out = 0, off = 0;
    char *buf = c != NULL ? malloc(cap) : NULL;
    if (buf == NULL)
        goto fail;
    for (;;) {
        size_t used = 0, wrote = 0;
        int r = tg_compress_step(c, (const char *)in + off, len - off, &used, buf + used_out,
                                 cap - used_out, &wrote, TG_COMPRESS_FINISH);
        if (r < 0)
            goto fail;
        off += used;
        used_out += wrote;
        if (r == 1)
            break;
        char *bigger = realloc(buf, cap * 2);
        if (bigger == NULL)
            goto fail;
        buf = bigger;
        cap *= 2;
    }
    tg_compress_free(c);
    *out = buf;
    *out_len = used_out;
    return 0;
fail:
    free(buf);
    tg_compress_free(c);
    return -1;
}
