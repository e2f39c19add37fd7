#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_h2 (corpus/h2/): what a client sends after
the preface and its SETTINGS, which the target sends itself. Frames and
HPACK blocks are built by hand (no dependency), so every seed says exactly
which bytes it holds. Run from anywhere; it rewrites corpus/h2/ beside it.

The paths name the stub backend's answers (fuzz_h2.c): /big, /chunked,
/continue, /echo, /nocontent, /sse, /slow; the routes' limits are at
/limited, /small and /get-only; the site is app.test. Frames of types
0xfb-0xfe are the harness's: time passes, the gateway drains, a reload,
the client stops (or starts) reading, frames go together (or one by one)."""

import os
import shutil
import struct

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


# ---- HPACK (RFC 7541), literal strings without Huffman ----------------------

def hint(value, prefix, first=0):
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hstr(s):
    b = s.encode() if isinstance(s, str) else s
    return hint(len(b), 7) + b


def indexed(i):
    return hint(i, 7, 0x80)


def lit(name, value, index=False):
    """A literal field; `name` an int is a table index for the name."""
    if isinstance(name, int):
        return hint(name, 6, 0x40) + hstr(value) if index else hint(name, 4) + hstr(value)
    return (b"\x40" if index else b"\x00") + hstr(name) + hstr(value)


GET, POST, PATH_ROOT, HTTP, HTTPS = indexed(2), indexed(3), indexed(4), indexed(6), indexed(7)
AUTHORITY, METHOD, PATH = 1, 2, 4


def head(method, path, authority="app.test", extra=()):
    m = {"GET": GET, "POST": POST}.get(method) or lit(METHOD, method)
    block = m + HTTPS + lit(AUTHORITY, authority) + (PATH_ROOT if path == "/" else
                                                    lit(PATH, path))
    for n, v in extra:
        block += lit(n, v)
    return block


def req(sid, method, path, end=True, **kw):
    return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, head(method, path, **kw))


def window_update(sid, inc):
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc))


def rst(sid, code=0x8):
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def tick(tenths):
    """The harness's clock moves on by tenths x 100 ms."""
    return frame(0xfe, 0, 0, b"\0" * tenths)


DRAIN, READING, BATCH = frame(0xfd, 0, 0), frame(0xfb, 0, 0), frame(0xfa, 0, 0)
RELOAD_KEEP, RELOAD_DROP = frame(0xfc, 0, 0), frame(0xfc, 0, 0, b"\0")

SEEDS = {
    # A plain GET, and one after the SETTINGS ACK.
    "get": req(1, "GET", "/"),
    "get_after_ack": SETTINGS_ACK + req(1, "GET", "/index.html?q=1"),
    # Two requests sharing the dynamic table: the second names the first's
    # :authority and a header by index (62 is the newest entry).
    "get_dynamic_table": SETTINGS_ACK +
        frame(HEADERS, END_HEADERS | END_STREAM, 1,
              GET + HTTPS + lit(AUTHORITY, "app.test", index=True) + PATH_ROOT +
              lit("user-agent", "fuzz", index=True)) +
        frame(HEADERS, END_HEADERS | END_STREAM, 3,
              GET + HTTPS + indexed(63) + lit(PATH, "/a") + indexed(62)),
    # POST with a length and two DATA frames.
    "post_data": SETTINGS_ACK +
        req(1, "POST", "/echo", end=False,
            extra=[("content-length", "11"), ("content-type", "text/plain")]) +
        frame(DATA, 0, 1, b"hello ") + frame(DATA, END_STREAM, 1, b"world"),
    # POST without a length, a padded DATA frame, then trailers.
    "post_trailers": SETTINGS_ACK +
        req(1, "POST", "/echo", end=False) +
        frame(DATA, PADDED, 1, b"\x04body" + b"\0" * 4) +
        frame(DATA, 0, 1, b"more") +
        frame(HEADERS, END_HEADERS | END_STREAM, 1, lit("x-checksum", "abc")),
    # A body over the route's max_body, and one past the stream window.
    "post_too_big": SETTINGS_ACK +
        req(1, "POST", "/small", end=False, extra=[("content-length", "20")]) +
        frame(DATA, END_STREAM, 1, b"x" * 20) +
        req(3, "POST", "/", end=False) +
        frame(DATA, 0, 3, b"y" * 16384) + frame(DATA, 0, 3, b"z" * 4096) +
        frame(DATA, END_STREAM, 3, b""),
    "post_expect_continue": SETTINGS_ACK +
        req(1, "POST", "/continue", end=False,
            extra=[("content-length", "3"), ("expect", "100-continue")]) +
        frame(DATA, END_STREAM, 1, b"abc"),
    # A header block in three pieces: HEADERS, CONTINUATION, CONTINUATION.
    "continuation": SETTINGS_ACK +
        frame(HEADERS, END_STREAM, 1, GET + HTTPS + lit(AUTHORITY, "app.test")) +
        frame(CONTINUATION, 0, 1, lit(PATH, "/continued") + lit("x-a", "1")) +
        frame(CONTINUATION, END_HEADERS, 1, lit("x-b", "2" * 100)),
    # Streams reset by the client: one waiting on a silent backend, one
    # with its body half sent, one at once.
    "rst_stream": SETTINGS_ACK +
        req(1, "GET", "/slow") + rst(1) +
        req(3, "POST", "/upload", end=False) + frame(DATA, 0, 3, b"part") + rst(3, 0x0) +
        req(5, "GET", "/big") + rst(5, 0x2) + req(7, "GET", "/"),
    # A response larger than the windows, opened by WINDOW_UPDATE, and the
    # initial window changed by SETTINGS while it flows.
    "window_update": SETTINGS_ACK +
        req(1, "GET", "/big") + window_update(0, 1 << 20) + window_update(1, 1 << 16) +
        frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 1 << 20)) +
        window_update(1, 1 << 20) + req(3, "GET", "/big") + window_update(3, 100),
    # Zero windows: the response waits, then one byte at a time.
    "window_zero": frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 0)) +
        req(1, "GET", "/") + window_update(1, 1) + window_update(1, 1) +
        window_update(0, 1),
    # PING, PRIORITY (a frame and a HEADERS flag), SETTINGS with values.
    "control": SETTINGS_ACK + frame(PING, 0, 0, b"12345678") +
        frame(PRIORITY, 0, 3, struct.pack(">IB", 1, 15)) +
        frame(HEADERS, END_HEADERS | END_STREAM | PRIO, 1,
              struct.pack(">IB", 0, 200) + head("GET", "/")) +
        frame(SETTINGS, 0, 0, struct.pack(">HIHIHI", 0x1, 4096, 0x3, 10, 0x5, 32768)) +
        frame(PING, ACK, 0, b"87654321"),
    # Extended CONNECT (RFC 8441): a WebSocket bridged to HTTP/1.1.
    "websocket": SETTINGS_ACK +
        frame(HEADERS, END_HEADERS, 1,
              lit(METHOD, "CONNECT") + lit(":protocol", "websocket") + HTTPS +
              lit(AUTHORITY, "app.test") + lit(PATH, "/chat") +
              lit("sec-websocket-version", "13")) +
        frame(DATA, 0, 1, b"\x81\x02hi") + frame(DATA, END_STREAM, 1, b""),
    # The stub's other answers, several streams at once.
    "answers": SETTINGS_ACK + req(1, "GET", "/chunked") + req(3, "GET", "/nocontent") +
        req(5, "HEAD", "/big") + req(7, "GET", "/sse") + req(9, "GET", "/continue") +
        req(11, "DELETE", "/") + req(13, "OPTIONS", "/"),
    # Route limits: a rate limit (3 a minute), a method the route refuses,
    # an unknown host.
    "limits": SETTINGS_ACK + b"".join(req(s, "GET", "/limited") for s in (1, 3, 5, 7, 9)) +
        req(11, "POST", "/get-only") + req(13, "GET", "/", authority="nobody.test"),
    # Cookie crumbs joined, a Host that agrees, one that does not.
    "cookies_host": SETTINGS_ACK +
        req(1, "GET", "/", extra=[("cookie", "a=1"), ("cookie", "b=2"), ("host", "app.test")]) +
        req(3, "GET", "/", extra=[("host", "other.test")]) +
        req(7, "GET", "/", extra=[("host", "app.test"), ("host", "app.test")]) +
        frame(HEADERS, END_HEADERS | END_STREAM, 5,
              GET + HTTPS + PATH_ROOT + lit("host", "app.test:8443")),
    # Malformed requests nghttp2 or tollgate refuse: an upper-case name, a
    # connection-specific field, no :path, a bad :authority, a bad length.
    "malformed": SETTINGS_ACK +
        req(1, "GET", "/", extra=[("X-Upper", "1")]) +
        req(3, "GET", "/", extra=[("connection", "close")]) +
        frame(HEADERS, END_HEADERS | END_STREAM, 5, GET + HTTPS + lit(AUTHORITY, "app.test")) +
        req(7, "GET", "/", authority="app test") +
        req(9, "POST", "/", end=False, extra=[("content-length", "5")]) +
        frame(DATA, END_STREAM, 9, b"abc"),
    # The client says goodbye with a request in flight.
    "goaway": SETTINGS_ACK + req(1, "GET", "/big") +
        frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0) + b"bye"),
    # A large header list (431) and a header block past the stream limit.
    "big_head": SETTINGS_ACK +
        req(1, "GET", "/", extra=[("x-big%d" % i, "v" * 2000) for i in range(3)]) +
        b"".join(req(s, "GET", "/slow") for s in range(3, 25, 2)),
    # Past the flood limits: 70 PINGs, 20 resets, in one second.
    "ping_flood": SETTINGS_ACK + b"".join(frame(PING, 0, 0, b"%08d" % i) for i in range(70)),
    "rapid_reset": SETTINGS_ACK +
        b"".join(req(s, "GET", "/slow") + rst(s) for s in range(1, 41, 2)),
    # The same, spread over seconds: each second is a new flood window.
    "ping_paced": SETTINGS_ACK +
        b"".join(frame(PING, 0, 0, b"%08d" % i) + (tick(10) if i % 40 == 39 else b"")
                 for i in range(120)),
    # Time passes mid-conversation: a backend that does not answer, a body
    # that stops coming, then an idle connection.
    "timeouts": SETTINGS_ACK + req(1, "GET", "/slow") +
        req(3, "POST", "/echo", end=False, extra=[("content-length", "10")]) +
        frame(DATA, 0, 3, b"12345") + tick(60) + tick(60) + req(5, "GET", "/") + tick(250),
    # The gateway drains with responses running, and is asked for more.
    "drain": SETTINGS_ACK + req(1, "GET", "/big") + req(3, "GET", "/slow") + DRAIN +
        req(5, "GET", "/") + window_update(0, 1 << 20) + window_update(1, 1 << 20),
    # Reloads: one that keeps the listener, one that drops it.
    "reload": SETTINGS_ACK + req(1, "GET", "/") + RELOAD_KEEP + req(3, "GET", "/") +
        RELOAD_DROP + req(5, "GET", "/") + req(7, "GET", "/slow"),
    # A client that stops reading while large answers flow, then reads.
    "backpressure": SETTINGS_ACK + READING +
        frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 1 << 20)) + window_update(0, 1 << 24) +
        b"".join(req(s, "GET", "/big") for s in (1, 3, 5, 7)) + tick(20) + READING +
        tick(20),
    # Frames read together: a body in several DATA frames while the
    # first are still held; DATA for a stream already answered (413).
    "batched": SETTINGS_ACK + BATCH +
        req(1, "POST", "/echo", end=False, extra=[("content-length", "12000")]) +
        b"".join(frame(DATA, 0, 1, b"d" * 4000) for _ in range(2)) +
        frame(DATA, END_STREAM, 1, b"d" * 4000) +
        req(3, "POST", "/small", end=False, extra=[("content-length", "20")]) +
        frame(DATA, 0, 3, b"x" * 10) + frame(DATA, END_STREAM, 3, b"x" * 10) + BATCH +
        req(5, "GET", "/"),
}


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "h2")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(SEEDS), out))


if __name__ == "__main__":
    main()
