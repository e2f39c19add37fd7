/* WebSocket frame boundaries (RFC 6455 section 5.2) in a byte stream that a
 * tunnel copies as it is: the 2-14 byte header of each frame is read, the
 * payload only counted, so a frame of our own (a close at a drain) can go
 * in between two frames without cutting one. It does not validate, unmask,
 * or reassemble messages; extensions (RSV bits) do not change the framing.
 * Pure functions, no allocation, any thread. */
#ifndef TG_WSFRAME_H
#define TG_WSFRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Where one direction of a WebSocket stream stands. Zeroed, it is at the
 * start of the stream (a frame boundary). */
struct tg_wsframe {
    uint64_t payload_left; /* payload bytes of the current frame still to come */
    uint8_t hdr[14];       /* header bytes of the current frame so far */
    uint8_t hlen;          /* how many (0: not inside a header) */
    uint8_t opcode;        /* of the frame whose payload is counted */
    bool closed;           /* a whole close frame (opcode 8) went by */
};

/* The status "going away" (RFC 6455 7.4.1): the server shuts down. */
#define TG_WSFRAME_GOING_AWAY 1001

/* The longest frame tg_wsframe_close writes. */
#define TG_WSFRAME_CLOSE_MAX 8

/* Whether the bytes fed so far end exactly at the end of a frame. */
static inline bool tg_wsframe_at_boundary(const struct tg_wsframe *f)
{
    return f->hlen == 0 && f->payload_left == 0;
}

/* Reads n bytes of the stream, in order. Returns how many it read: n, or
 * with `stop` no further than the end of the current frame (0 when at a
 * boundary already). On a copy of the state, `stop` tells how many bytes a
 * tunnel may pass before the next boundary. */
size_t tg_wsframe_feed(struct tg_wsframe *f, const void *p, size_t n, bool stop);

/* Writes a close frame with `code` and no reason into out (at least
 * TG_WSFRAME_CLOSE_MAX bytes): unmasked, 4 bytes, as a server sends it; or
 * masked with `key` (its 4 bytes as they go on the wire), 8 bytes, as a
 * client must (RFC 6455 5.3). Returns its length. */
size_t tg_wsframe_close(uint8_t *out, uint16_t code, bool masked, const uint8_t key[4]);

#endif
