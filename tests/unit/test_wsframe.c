/* WebSocket frame boundaries (issue 23, item 9: a close frame at a drain
 * must go between two frames, never inside one). Every stream is also fed
 * split at every byte offset and byte by byte: the boundaries found must
 * not depend on how the bytes arrive. */
#include "../../src/wsframe.c"

#include <stdlib.h>

#include "test.h"

/* A test stream: frames back to back, and where each one ends. */
struct stream {
    uint8_t b[70000 + 512];
    size_t n;
    size_t ends[16];
    size_t nends;
    size_t close_end; /* where the close frame ends (0: none) */
};

static void add_frame(struct stream *s, uint8_t first, bool masked, uint64_t len)
{
    uint8_t *p = s->b + s->n;
    size_t o = 0;
    p[o++] = first;
    uint8_t m = masked ? 0x80 : 0;
    if (len < 126) {
        p[o++] = (uint8_t)(m | len);
    } else if (len <= 0xFFFF) {
        p[o++] = m | 126;
        p[o++] = (uint8_t)(len >> 8);
        p[o++] = (uint8_t)len;
    } else {
        p[o++] = m | 127;
        for (int i = 7; i >= 0; i--)
            p[o++] = (uint8_t)(len >> (8 * i));
    }
    if (masked) {
        memcpy(p + o, "\x11\x22\x33\x44", 4);
        o += 4;
    }
    /* Payload bytes that look like headers: only counting may skip them. */
    memset(p + o, 0x88, (size_t)len);
    s->n += o + (size_t)len;
    s->ends[s->nends++] = s->n;
    if ((first & 0x0F) == 0x8)
        s->close_end = s->n;
}

static void build(struct stream *s)
{
    memset(s, 0, sizeof(*s));
    add_frame(s, 0x81, false, 5);     /* text "hello", server style */
    add_frame(s, 0x01, true, 200);    /* first fragment, 16-bit length */
    add_frame(s, 0x89, true, 0);      /* ping between fragments, empty */
    add_frame(s, 0x80, true, 3);      /* last fragment */
    add_frame(s, 0xC2, false, 70000); /* binary, RSV1 (compressed), 64-bit length */
    add_frame(s, 0x88, true, 2);      /* close 1001, client style */
    add_frame(s, 0x81, false, 125);   /* longest 7-bit length */
    add_frame(s, 0x82, false, 126);   /* shortest 16-bit length */
}

static bool is_end(const struct stream *s, size_t at)
{
    for (size_t i = 0; i < s->nends; i++)
        if (s->ends[i] == at)
            return true;
    return at == 0;
}

static struct stream st;

TEST(whole_stream)
{
    build(&st);
    struct tg_wsframe f = {0};
    CHECK(tg_wsframe_at_boundary(&f));
    CHECK_EQ_INT(tg_wsframe_feed(&f, st.b, st.n, false), st.n);
    CHECK(tg_wsframe_at_boundary(&f));
    CHECK(f.closed);
}

/* Fed in two pieces split at every offset, the state at the split is a
 * boundary exactly where a frame ends, and the close is seen exactly once
 * its frame has ended. */
TEST(every_split)
{
    build(&st);
    for (size_t cut = 0; cut <= st.n; cut++) {
        struct tg_wsframe f = {0};
        tg_wsframe_feed(&f, st.b, cut, false);
        CHECK_EQ_INT(tg_wsframe_at_boundary(&f), is_end(&st, cut));
        CHECK_EQ_INT(f.closed, cut >= st.close_end);
        tg_wsframe_feed(&f, st.b + cut, st.n - cut, false);
        CHECK(tg_wsframe_at_boundary(&f));
    }
}

TEST(byte_by_byte)
{
    build(&st);
    struct tg_wsframe f = {0};
    size_t boundaries = 0;
    for (size_t i = 0; i < st.n; i++) {
        CHECK_EQ_INT(tg_wsframe_feed(&f, st.b + i, 1, false), 1);
        if (tg_wsframe_at_boundary(&f)) {
            CHECK(is_end(&st, i + 1));
            boundaries++;
        }
    }
    CHECK_EQ_INT(boundaries, st.nends);
}

/* With `stop`, on a copy, it tells how far the current frame goes: from any
 * offset, the bytes to the next frame end (0 at a boundary), or all of them
 * when the frame does not end in what is given. */
TEST(stop_at_the_frame_end)
{
    build(&st);
    for (size_t at = 0; at < st.n; at++) {
        struct tg_wsframe f = {0};
        tg_wsframe_feed(&f, st.b, at, false);
        size_t next = st.n;
        for (size_t i = 0; i < st.nends; i++)
            if (st.ends[i] > at && st.ends[i] < next)
                next = st.ends[i];
        if (is_end(&st, at))
            next = at;
        struct tg_wsframe copy = f;
        CHECK_EQ_INT(tg_wsframe_feed(&copy, st.b + at, st.n - at, true), next - at);
        CHECK(tg_wsframe_at_boundary(&copy));
        /* A piece that ends before the frame does: all of it. */
        if (next - at > 1) {
            copy = f;
            CHECK_EQ_INT(tg_wsframe_feed(&copy, st.b + at, next - at - 1, true), next - at - 1);
            CHECK(!tg_wsframe_at_boundary(&copy));
        }
    }
}

TEST(close_frames)
{
    uint8_t out[TG_WSFRAME_CLOSE_MAX];
    const uint8_t key[4] = {0x01, 0x02, 0x03, 0x04};
    CHECK_EQ_INT(tg_wsframe_close(out, TG_WSFRAME_GOING_AWAY, false, key), 4);
    CHECK(memcmp(out, "\x88\x02\x03\xE9", 4) == 0);
    CHECK_EQ_INT(tg_wsframe_close(out, TG_WSFRAME_GOING_AWAY, true, key), 8);
    CHECK(memcmp(out, "\x88\x82\x01\x02\x03\x04\x02\xEB", 8) == 0);
    /* What we write parses as one whole close frame. */
    struct tg_wsframe f = {0};
    CHECK_EQ_INT(tg_wsframe_feed(&f, out, 8, false), 8);
    CHECK(tg_wsframe_at_boundary(&f) && f.closed);
}

int main(void)
{
    RUN(whole_stream);
    RUN(every_split);
    RUN(byte_by_byte);
    RUN(stop_at_the_frame_end);
    RUN(close_frames);
    return TEST_SUMMARY();
}
