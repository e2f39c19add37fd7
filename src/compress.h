/* One streaming encoder over zlib (gzip), zstd and brotli: feed bytes,
 * flush what was fed so far (a client can decode it all), finish. Output
 * goes into the caller's buffer, as much as fits; nothing is queued here
 * beyond the library's own state, so memory per stream is that state
 * (its window and tables, capped below) and no more.
 *
 * Per stream, at the caps chosen here (measured by tg_compress_memory and
 * stated in docs/configuration.md): gzip windowBits 14 / memLevel 7,
 * zstd windowLog 16 with hashLog and chainLog 14, brotli lgwin 16 with
 * its block-size log 16. Any thread; one stream per thread at a time. */
#ifndef TG_COMPRESS_H
#define TG_COMPRESS_H

#include <stdbool.h>
#include <stddef.h>

#include "encoding.h"

struct tg_compress;

/* What a step is for. */
enum tg_compress_op {
    TG_COMPRESS_RUN = 0, /* take input; output may lag behind it */
    TG_COMPRESS_FLUSH,   /* ... and make everything taken decodable now */
    TG_COMPRESS_FINISH,  /* ... and end the stream (trailer written) */
};

/* Output room a flush or finish needs to make progress (zlib's flush
 * marker is 5 bytes, and zlib asks for more than six). */
#define TG_COMPRESS_MIN_ROOM 8

/* Levels each coding accepts (config bounds). */
#define TG_COMPRESS_GZIP_MAX 9
#define TG_COMPRESS_ZSTD_MAX 19
#define TG_COMPRESS_BR_MAX 11

/* A new encoder for `enc` (not identity) at `level` (1..the coding's
 * max), or NULL when memory ran out. Caller owns it: tg_compress_free. */
struct tg_compress *tg_compress_new(enum tg_encoding enc, int level);

/* Done with an encoder: gzip and zstd ones are reset and kept for the
 * thread's next response (a pool of at most 16 per coding, trimmed by
 * tg_compress_trim), the rest freed. */
void tg_compress_free(struct tg_compress *c);

/* Frees the thread's idle encoders beyond as many as were taken since the
 * last call (a worker calls it from its housekeeping timer, as it trims
 * its buffers). */
void tg_compress_trim(void);

/* Frees every idle encoder of the calling thread (before it exits). */
void tg_compress_release_all(void);

/* Bytes the library holds for this stream now (its allocations). */
size_t tg_compress_memory(const struct tg_compress *c);

/* Compresses from `in` (in_len bytes; *in_used says how many it took) into
 * `out` (out_cap bytes; *out_used says how many it wrote). Returns 1 when
 * the op is complete: all input taken and, for FLUSH and FINISH, all its
 * output written; 0 when it needs more output room (a flush or finish
 * needs TG_COMPRESS_MIN_ROOM bytes to progress) (call again, with the
 * same op, after draining `out`: the untaken input offered again); -1 on
 * a library error. A flush or finish that could not complete is completed
 * first by the next call, whatever its op, before new input is taken (a
 * brotli stream may not change op half-way through a flush). FLUSH with
 * nothing fed since the last flush writes nothing. After FINISH returned 1
 * the encoder takes nothing more. */
int tg_compress_step(struct tg_compress *c, const void *in, size_t in_len, size_t *in_used,
                     void *out, size_t out_cap, size_t *out_used, enum tg_compress_op op);

/* Compresses all of `in` at once into a new malloc'd buffer (*out, its
 * length *out_len): for a body held whole (the response cache's copies).
 * Returns 0, or -1 when memory ran out or the library failed. */
int tg_compress_whole(enum tg_encoding enc, int level, const void *in, size_t len, char **out,
                      size_t *out_len);

#endif
