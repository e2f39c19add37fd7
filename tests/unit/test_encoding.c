/* Accept-Encoding negotiation, Cache-Control no-transform, media types
 * (encoding.c), and the streaming encoders (compress.c): every coding
 * round-trips, a flush makes all input so far decodable, tiny output
 * buffers work, and the memory a stream holds stays under its cap. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <brotli/decode.h>
#include <zlib.h>
#include <zstd.h>

#include "compress.h"
#include "encoding.c" /* the test binary links every module but this one */
#include "str.h"
#include "test.h"

static const uint8_t default_order[] = {TG_ENC_ZSTD, TG_ENC_BR, TG_ENC_GZIP};

static enum tg_encoding choose(const char *ae)
{
    struct tg_encoding_accept a;
    tg_encoding_accept_init(&a);
    if (ae != NULL)
        tg_encoding_accept_parse(&a, ae, strlen(ae));
    return tg_encoding_choose(&a, default_order, sizeof(default_order));
}

TEST(negotiation)
{
    CHECK_EQ_INT(choose(NULL), TG_ENC_IDENTITY); /* no field: no compression */
    CHECK_EQ_INT(choose(""), TG_ENC_IDENTITY);
    CHECK_EQ_INT(choose("gzip"), TG_ENC_GZIP);
    CHECK_EQ_INT(choose("x-gzip"), TG_ENC_GZIP);
    CHECK_EQ_INT(choose("GZip"), TG_ENC_GZIP);
    CHECK_EQ_INT(choose("gzip, deflate, br"), TG_ENC_BR);
    CHECK_EQ_INT(choose("gzip, deflate, br, zstd"), TG_ENC_ZSTD);
    /* The client's q decides; the server's order breaks ties. */
    CHECK_EQ_INT(choose("zstd;q=0.5, gzip;q=0.8"), TG_ENC_GZIP);
    CHECK_EQ_INT(choose("zstd;q=0.8, gzip;q=0.8"), TG_ENC_ZSTD);
    CHECK_EQ_INT(choose("br;q=1.0, zstd;q=1"), TG_ENC_ZSTD);
    /* q=0: not acceptable. */
    CHECK_EQ_INT(choose("gzip;q=0"), TG_ENC_IDENTITY);
    CHECK_EQ_INT(choose("gzip;q=0.000, br"), TG_ENC_BR);
    CHECK_EQ_INT(choose("gzip; q=0 , br ;Q=0.1"), TG_ENC_BR);
    /* "*": every coding not named. */
    CHECK_EQ_INT(choose("*"), TG_ENC_ZSTD);
    CHECK_EQ_INT(choose("*;q=0"), TG_ENC_IDENTITY);
    CHECK_EQ_INT(choose("zstd;q=0, *"), TG_ENC_BR);
    CHECK_EQ_INT(choose("*;q=0, gzip"), TG_ENC_GZIP);
    CHECK_EQ_INT(choose("*;q=0.2, gzip;q=0.5"), TG_ENC_GZIP);
    /* identity alone, or refused: still no coding we would choose. */
    CHECK_EQ_INT(choose("identity"), TG_ENC_IDENTITY);
    CHECK_EQ_INT(choose("identity;q=0"), TG_ENC_IDENTITY);
    CHECK_EQ_INT(choose("identity;q=0, gzip"), TG_ENC_GZIP);
    /* Bad elements cost only themselves. */
    CHECK_EQ_INT(choose("gzip;q=2, br"), TG_ENC_BR);
    CHECK_EQ_INT(choose("gzip;q=0.5555"), TG_ENC_IDENTITY);
    CHECK_EQ_INT(choose("gzip;q=1.001"), TG_ENC_IDENTITY);
    CHECK_EQ_INT(choose("gzip;q=, br;q=0.1"), TG_ENC_BR);
    CHECK_EQ_INT(choose(",,, gzip ,,"), TG_ENC_GZIP);
    CHECK_EQ_INT(choose("gzip;level=9"), TG_ENC_GZIP);
    CHECK_EQ_INT(choose("compress, deflate"), TG_ENC_IDENTITY);
    /* Two fields combine; a coding named again keeps its last q. */
    struct tg_encoding_accept a;
    tg_encoding_accept_init(&a);
    tg_encoding_accept_parse(&a, "br;q=0.1", 8);
    tg_encoding_accept_parse(&a, "gzip", 4);
    CHECK_EQ_INT(tg_encoding_choose(&a, default_order, 3), TG_ENC_GZIP);
    /* Another order. */
    static const uint8_t gzip_first[] = {TG_ENC_GZIP, TG_ENC_BR};
    tg_encoding_accept_init(&a);
    tg_encoding_accept_parse(&a, "zstd, br, gzip", 14);
    CHECK_EQ_INT(tg_encoding_choose(&a, gzip_first, 2), TG_ENC_GZIP);
    static const uint8_t br_only[] = {TG_ENC_BR};
    CHECK_EQ_INT(tg_encoding_choose(&a, br_only, 1), TG_ENC_BR);
    tg_encoding_accept_init(&a);
    tg_encoding_accept_parse(&a, "zstd", 4);
    CHECK_EQ_INT(tg_encoding_choose(&a, br_only, 1), TG_ENC_IDENTITY);
}

/* Every split of a field into two fields gives the same answer as the
 * field whole only when the split is at a comma; at least nothing crashes
 * and no element is invented. */
TEST(negotiation_prefixes)
{
    const char *ae = "zstd;q=0.3, br;q=0.7, gzip;q=0.5, *;q=0";
    size_t n = strlen(ae);
    for (size_t i = 0; i <= n; i++) {
        struct tg_encoding_accept a;
        tg_encoding_accept_init(&a);
        tg_encoding_accept_parse(&a, ae, i);
        enum tg_encoding e = tg_encoding_choose(&a, default_order, 3);
        CHECK(e == TG_ENC_IDENTITY || e == TG_ENC_ZSTD || e == TG_ENC_BR || e == TG_ENC_GZIP);
    }
    CHECK_EQ_INT(choose(ae), TG_ENC_BR);
}

static bool nt(const char *cc)
{
    return tg_encoding_no_transform(cc, strlen(cc));
}

TEST(cache_control)
{
    CHECK(nt("no-transform"));
    CHECK(nt("No-Transform"));
    CHECK(nt("public, max-age=60, no-transform"));
    CHECK(nt("no-transform , private"));
    CHECK(nt("private=\"a, no-transform\", no-transform"));
    CHECK(!nt(""));
    CHECK(!nt("public, max-age=60"));
    CHECK(!nt("no-transformer"));
    CHECK(!nt("x-no-transform"));
    CHECK(!nt("private=\"no-transform\""));
    CHECK(!nt("private=\"a, no-transform\""));
    CHECK(!nt("private=\"a\\\", no-transform\""));
    CHECK(!nt("max-age=no-transform"));
}

TEST(media_types)
{
    static const char *const types[] = {"text/*", "application/json", "image/svg+xml"};
    CHECK(tg_encoding_type_matches("text/html; charset=utf-8", 24, types, 3));
    CHECK(tg_encoding_type_matches("TEXT/CSS", 8, types, 3));
    CHECK(tg_encoding_type_matches("application/json", 16, types, 3));
    CHECK(tg_encoding_type_matches(" application/json ;charset=utf-8", 33, types, 3));
    CHECK(tg_encoding_type_matches("image/svg+xml", 13, types, 3));
    CHECK(!tg_encoding_type_matches("image/png", 9, types, 3));
    CHECK(!tg_encoding_type_matches("application/jsonx", 17, types, 3));
    CHECK(!tg_encoding_type_matches("text", 4, types, 3));
    CHECK(!tg_encoding_type_matches("text/", 5, types, 3));
    CHECK(!tg_encoding_type_matches("", 0, types, 3));
    CHECK(tg_encoding_type_is("Text/Event-Stream; charset=utf-8", 32, "text/event-stream"));
    CHECK(!tg_encoding_type_is("text/event-streams", 18, "text/event-stream"));
}

/* ---- encoders ---- */

struct out {
    uint8_t *p;
    size_t n, cap;
};

static void out_put(struct out *o, const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    if (o->n + n > o->cap) {
        o->cap = (o->n + n) * 2;
        o->p = realloc(o->p, o->cap);
    }
    memcpy(o->p + o->n, p, n);
    o->n += n;
}

/* Runs one step to completion through an output buffer of `room` bytes. */
static bool step_all(struct tg_compress *c, const uint8_t *in, size_t n, enum tg_compress_op op,
                     size_t room, struct out *o)
{
    uint8_t buf[65536];
    size_t off = 0;
    for (int guard = 0; guard < 10000000; guard++) {
        size_t used, wrote;
        int r = tg_compress_step(c, in + off, n - off, &used, buf, room, &wrote, op);
        if (r < 0)
            return false;
        off += used;
        out_put(o, buf, wrote);
        if (r == 1)
            return off == n;
    }
    return false;
}

/* Decodes all of `in`; the stream need not be complete (a flushed prefix). */
static bool decode(enum tg_encoding e, const uint8_t *in, size_t n, struct out *o)
{
    uint8_t buf[65536];
    switch (e) {
    case TG_ENC_GZIP: {
        z_stream z = {0};
        if (inflateInit2(&z, 16 + 15) != Z_OK)
            return false;
        z.next_in = (Bytef *)in;
        z.avail_in = (uInt)n;
        int rc;
        do {
            z.next_out = buf;
            z.avail_out = sizeof(buf);
            rc = inflate(&z, Z_SYNC_FLUSH);
            out_put(o, buf, sizeof(buf) - z.avail_out);
        } while (rc == Z_OK && (z.avail_in > 0 || z.avail_out == 0));
        inflateEnd(&z);
        return rc == Z_OK || rc == Z_STREAM_END || rc == Z_BUF_ERROR;
    }
    case TG_ENC_ZSTD: {
        ZSTD_DCtx *d = ZSTD_createDCtx();
        ZSTD_inBuffer ib = {in, n, 0};
        bool ok = true;
        for (;;) {
            ZSTD_outBuffer ob = {buf, sizeof(buf), 0};
            size_t r = ZSTD_decompressStream(d, &ob, &ib);
            if (ZSTD_isError(r)) {
                ok = false;
                break;
            }
            out_put(o, buf, ob.pos);
            if (ib.pos == ib.size && ob.pos < ob.size)
                break;
        }
        ZSTD_freeDCtx(d);
        return ok;
    }
    case TG_ENC_BR: {
        BrotliDecoderState *d = BrotliDecoderCreateInstance(NULL, NULL, NULL);
        size_t avail_in = n;
        const uint8_t *next_in = in;
        BrotliDecoderResult r;
        do {
            size_t avail_out = sizeof(buf);
            uint8_t *next_out = buf;
            r = BrotliDecoderDecompressStream(d, &avail_in, &next_in, &avail_out, &next_out, NULL);
            out_put(o, buf, sizeof(buf) - avail_out);
        } while (r == BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT);
        BrotliDecoderDestroyInstance(d);
        return r != BROTLI_DECODER_RESULT_ERROR;
    }
    default:
        return false;
    }
}

static uint8_t *corpus(size_t n)
{
    uint8_t *p = malloc(n);
    uint32_t x = 12345;
    static const char words[] = "{\"id\":\"rec_0001\",\"title\":\"hello\",\"count\":42},";
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        /* Mostly JSON-like text, some noise. */
        p[i] = (x >> 24) % 7 == 0 ? (uint8_t)(x >> 16) : (uint8_t)words[i % (sizeof(words) - 1)];
    }
    return p;
}

static const int levels[TG_ENC_COUNT] = {0, 5, 3, 3}; /* the config's defaults */

TEST(round_trip)
{
    size_t n = 1 << 20;
    uint8_t *in = corpus(n);
    static const size_t rooms[] = {TG_COMPRESS_MIN_ROOM, 13, 512, 65536};
    for (int e = TG_ENC_GZIP; e < TG_ENC_COUNT; e++) {
        for (size_t r = 0; r < TG_ARRAY_LEN(rooms); r++) {
            size_t len = rooms[r] < 64 ? 20000 : n; /* tiny steps: a shorter body */
            struct tg_compress *c = tg_compress_new((enum tg_encoding)e, levels[e]);
            CHECK(c != NULL);
            struct out o = {0}, d = {0};
            /* In pieces of varied size, flushed now and then. */
            size_t off = 0, piece = 1;
            while (off < len) {
                size_t k = piece < len - off ? piece : len - off;
                CHECK(step_all(c, in + off, k, piece % 3 == 0 ? TG_COMPRESS_FLUSH : TG_COMPRESS_RUN,
                               rooms[r], &o));
                off += k;
                piece = piece * 7 % 40000 + 1;
            }
            CHECK(step_all(c, NULL, 0, TG_COMPRESS_FINISH, rooms[r], &o));
            /* Finished: more input is refused. */
            size_t used, wrote;
            uint8_t b[8];
            CHECK_EQ_INT(tg_compress_step(c, in, 1, &used, b, 8, &wrote, TG_COMPRESS_RUN), -1);
            CHECK(decode((enum tg_encoding)e, o.p, o.n, &d));
            if (d.n != len)
                fprintf(stderr, "  %s room %zu: %zu of %zu\n",
                        tg_encoding_name((enum tg_encoding)e), rooms[r], d.n, len);
            CHECK(d.n == len && memcmp(d.p, in, len) == 0);
            if (rooms[r] == 65536)
                CHECK(o.n < len / 2);
            tg_compress_free(c);
            free(o.p);
            free(d.p);
        }
    }
    free(in);
}

/* After a flush, everything fed so far decodes from what was written:
 * what a slow stream relies on. */
TEST(flush_makes_prefix_decodable)
{
    const char *pieces[] = {"[{\"a\":1}", ",{\"b\":2}", ",{\"c\":3}]"};
    for (int e = TG_ENC_GZIP; e < TG_ENC_COUNT; e++) {
        struct tg_compress *c = tg_compress_new((enum tg_encoding)e, levels[e]);
        struct out o = {0};
        size_t fed = 0;
        char all[64] = "";
        for (size_t i = 0; i < 3; i++) {
            size_t k = strlen(pieces[i]);
            CHECK(step_all(c, (const uint8_t *)pieces[i], k, TG_COMPRESS_FLUSH, 4096, &o));
            strcat(all, pieces[i]);
            fed += k;
            struct out d = {0};
            CHECK(decode((enum tg_encoding)e, o.p, o.n, &d));
            CHECK(d.n == fed && memcmp(d.p, all, fed) == 0);
            free(d.p);
            /* A second flush with nothing new writes nothing. */
            size_t before = o.n;
            CHECK(step_all(c, NULL, 0, TG_COMPRESS_FLUSH, 4096, &o));
            CHECK_EQ_INT(o.n, before);
        }
        CHECK(step_all(c, NULL, 0, TG_COMPRESS_FINISH, 4096, &o));
        tg_compress_free(c);
        free(o.p);
    }
}

/* The memory a stream holds, at the lowest and highest levels: the figures
 * docs/configuration.md states. */
TEST(memory_bounded)
{
    size_t n = 4 << 20;
    uint8_t *in = corpus(n);
    static const int lo[TG_ENC_COUNT] = {0, 1, 1, 1};
    static const int hi[TG_ENC_COUNT] = {0, TG_COMPRESS_GZIP_MAX, TG_COMPRESS_ZSTD_MAX,
                                         TG_COMPRESS_BR_MAX};
    for (int e = TG_ENC_GZIP; e < TG_ENC_COUNT; e++) {
        int ls[] = {lo[e], levels[e], hi[e]};
        for (int l = 0; l < 3; l++) {
            struct tg_compress *c = tg_compress_new((enum tg_encoding)e, ls[l]);
            struct out o = {0};
            CHECK(step_all(c, in, n, TG_COMPRESS_RUN, 16384, &o));
            CHECK(step_all(c, NULL, 0, TG_COMPRESS_FINISH, 16384, &o));
            size_t mem = tg_compress_memory(c);
            printf("  %s level %d: %zu KiB per stream, %zu -> %zu bytes\n",
                   tg_encoding_name((enum tg_encoding)e), ls[l], mem / 1024, n, o.n);
            /* The caps hold at the default levels (docs state the rest). */
            if (ls[l] == levels[e])
                CHECK(mem > 0 && mem <= 720 * 1024);
            tg_compress_free(c);
            free(o.p);
        }
    }
    free(in);
}

int main(void)
{
    RUN(negotiation);
    RUN(negotiation_prefixes);
    RUN(cache_control);
    RUN(media_types);
    RUN(round_trip);
    RUN(flush_makes_prefix_decodable);
    RUN(memory_bounded);
    tg_compress_release_all();
    return TEST_SUMMARY();
}
