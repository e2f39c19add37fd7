/* WebSocket frame boundaries: header parsing and payload counting for a
 * tunnel that copies bytes, so it knows where it may put a frame of its
 * own. No validation and no unmasking: the endpoints do that. */
#include "wsframe.h"

#include <string.h>

/* The header's full length, known from its second byte on: the 7-bit
 * length may announce a 16 or 64-bit one, and a mask key may follow. */
static size_t header_len(const struct tg_wsframe *f)
{
    uint8_t b = f->hdr[1];
    size_t n = 2;
    if ((b & 0x7F) == 126)
        n += 2;
    else if ((b & 0x7F) == 127)
        n += 8;
    if (b & 0x80)
        n += 4;
    return n;
}

static uint64_t payload_len(const struct tg_wsframe *f)
{
    uint8_t b = f->hdr[1] & 0x7F;
    if (b < 126)
        return b;
    size_t k = b == 126 ? 2 : 8;
    uint64_t v = 0;
    for (size_t i = 0; i < k; i++)
        v = v << 8 | f->hdr[2 + i];
    return v;
}

/* The current frame has ended. */
static void frame_end(struct tg_wsframe *f)
{
    if (f->opcode == 0x8)
        f->closed = true;
}

size_t tg_wsframe_feed(struct tg_wsframe *f, const void *p, size_t n, bool stop)
{
    const uint8_t *b = p;
    size_t i = 0;
    if (stop && tg_wsframe_at_boundary(f))
        return 0;
    while (i < n) {
        if (f->payload_left > 0) {
            size_t take = n - i;
            if (take > f->payload_left)
                take = (size_t)f->payload_left;
            i += take;
            f->payload_left -= take;
            if (f->payload_left > 0)
                continue;
        } else {
            f->hdr[f->hlen++] = b[i++];
            if (f->hlen < 2 || f->hlen < header_len(f))
                continue;
            /* The header is whole: its payload follows (maybe none). */
            f->opcode = f->hdr[0] & 0x0F;
            f->payload_left = payload_len(f);
            f->hlen = 0;
            if (f->payload_left > 0)
                continue;
        }
        frame_end(f);
        if (stop)
            return i;
    }
    return i;
}

size_t tg_wsframe_close(uint8_t *out, uint16_t code, bool masked, const uint8_t key[4])
{
    out[0] = 0x88; /* FIN, close */
    out[1] = (uint8_t)(masked ? 0x82 : 0x02);
    uint8_t status[2] = {(uint8_t)(code >> 8), (uint8_t)(code & 0xFF)};
    if (!masked) {
        memcpy(out + 2, status, 2);
        return 4;
    }
    memcpy(out + 2, key, 4);
    out[6] = status[0] ^ key[0];
    out[7] = status[1] ^ key[1];
    return 8;
}
