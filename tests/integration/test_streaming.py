"""Bodies stream through fixed buffers: chunked both ways, 1 GiB with flat
RSS, SSE events one by one with heartbeats, WebSocket tunnels, 100-continue,
and the upstream connection closed soon after the client leaves."""

import base64
import hashlib
import os
import signal
import socket
import struct
import threading
import time

from conftest import (SLOW, basic_config, free_port, raw, read_http_request,
                      status_of, requests_on)


# The last chunk of a chunked body always follows a CRLF (the head's end or
# the previous chunk's). Without it, "0\r\n\r\n" also matches the end of a
# head whose last header ends in 0 (an X-Request-Id, one time in sixteen).
LAST_CHUNK = b"\r\n0\r\n\r\n"


def recv_until(sock, marker, timeout=5.0):
    sock.settimeout(timeout * SLOW)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_chunked_request_and_response(tollgate, backend):
    def handler(sock, be):
        for head, headers, body in requests_on(sock):
            be.record((head, headers, body))
            # Answer chunked, in three pieces.
            out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            for piece in (body[:3], body[3:10], body[10:]):
                if piece:
                    out += b"%x\r\n%s\r\n" % (len(piece), piece)
            sock.sendall(out + b"0\r\n\r\n")
    b = backend(handler)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    body = b"hello chunked world, " * 50
    req = b"POST /c HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), 100):
        piece = body[i:i + 100]
        req += b"%x;ext=1\r\n%s\r\n" % (len(piece), piece)
    req += b"0\r\nX-Trailer: t\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    resp = recv_until(s, LAST_CHUNK)
    assert status_of(resp) == 200
    assert b"transfer-encoding: chunked" in resp.lower()
    head, headers, got = b.requests[0]
    assert got == body
    assert headers["transfer-encoding"] == ["chunked"]
    # HTTP/1.0 client: the same chunked answer arrives de-chunked, then close.
    s.sendall(b"POST /c HTTP/1.0\r\nHost: app.test\r\nContent-Length: 12\r\n\r\nhello 1.0 !!")
    s.settimeout(5 * SLOW)
    resp10 = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        resp10 += chunk
    s.close()
    head10, _, payload = resp10.partition(b"\r\n\r\n")
    assert b"chunked" not in head10.lower()
    assert payload == b"hello 1.0 !!"


def test_expect_100_continue(tollgate, backend):
    def handler(sock, be):
        data = recv_until(sock, b"\r\n\r\n")
        assert b"100-continue" in data.lower()
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = data.split(b"\r\n\r\n", 1)[1]
        while len(body) < 5:
            body += sock.recv(100)
        sock.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\n" + body[:5])
    b = backend(handler)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"PUT /u HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    interim = recv_until(s, b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    s.sendall(b"abcde")
    final = recv_until(s, b"abcde")
    assert b"201 Created" in final and final.endswith(b"abcde")
    s.close()


def rss_sampler(tg, stop, out):
    while not stop.is_set():
        out.append(tg.rss_kb())
        time.sleep(0.05)


GIB = 1 << 30


def test_one_gib_download_keeps_rss_flat(tollgate, backend):
    block = b"x" * (1 << 20)

    def handler(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GIB)
        for _ in range(GIB // len(block)):
            sock.sendall(block)
    b = backend(handler)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port]))
    base = tg.rss_kb()
    samples, stop = [], threading.Event()
    t = threading.Thread(target=rss_sampler, args=(tg, stop, samples))
    t.start()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
    head = recv_until(s, b"\r\n\r\n")
    got = len(head.split(b"\r\n\r\n", 1)[1])
    s.settimeout(60 * SLOW)
    while got < GIB:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    s.close()
    stop.set()
    t.join()
    assert got == GIB
    assert max(samples) - base < 32 * 1024, (base, max(samples))


def test_one_gib_upload_keeps_rss_flat(tollgate, backend):
    def handler(sock, be):
        data = recv_until(sock, b"\r\n\r\n")
        head, _, body = data.partition(b"\r\n\r\n")
        got = len(body)
        sock.settimeout(60 * SLOW)
        while got < GIB:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(got)), got))
    b = backend(handler)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port]))
    base = tg.rss_kb()
    samples, stop = [], threading.Event()
    t = threading.Thread(target=rss_sampler, args=(tg, stop, samples))
    t.start()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % GIB)
    block = b"y" * (1 << 20)
    for _ in range(GIB // len(block)):
        s.sendall(block)
    resp = recv_until(s, b"%d" % GIB, timeout=60)
    s.close()
    stop.set()
    t.join()
    assert resp.endswith(b"%d" % GIB), resp[:200]
    assert max(samples) - base < 32 * 1024, (base, max(samples))


def sse_backend(events, interval, first_delay=0.0, tail=b"", chunked=True, hold=0.0):
    """Sends `events` SSE events every `interval` seconds, each carrying the
    monotonic time it was written; records when the client went away."""
    state = {"closed_at": None}

    def handler(sock, be):
        read_http_request(sock)
        te = b"Transfer-Encoding: chunked\r\n" if chunked else b""
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\n" + te + b"\r\n")
        time.sleep(first_delay)

        def send(payload):
            if chunked:
                sock.sendall(b"%x\r\n%s\r\n" % (len(payload), payload))
            else:
                sock.sendall(payload)
        try:
            for i in range(events):
                send(b"id: %d\ndata: %.6f\n\n" % (i, time.monotonic()))
                time.sleep(interval)
            if tail:
                send(tail)
            if hold:
                time.sleep(hold)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            state["closed_at"] = time.monotonic()
    return handler, state


def read_events(sock, n, timeout=10.0):
    """Reads n SSE events off a chunked stream, returning arrival delays."""
    sock.settimeout(timeout * SLOW)
    buf = b""
    delays = []
    while len(delays) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        now = time.monotonic()
        buf += chunk
        while b"data: " in buf:
            i = buf.index(b"data: ")
            j = buf.find(b"\n", i)
            if j < 0:
                break
            delays.append(now - float(buf[i + 6:j]))
            buf = buf[j:]
    return delays


def test_sse_events_arrive_one_by_one(tollgate, backend):
    handler, _ = sse_backend(events=20, interval=0.05)
    b = backend(handler)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /api/realtime HTTP/1.1\r\nHost: app.test\r\nAccept: text/event-stream\r\n\r\n")
    delays = read_events(s, 20)
    s.close()
    assert len(delays) == 20
    # Each event is forwarded as soon as it is written, not batched: the
    # backend's 50 ms spacing would show up as delay if anything buffered.
    assert max(delays) < 0.03 * SLOW, delays


def test_sse_outlives_read_timeout_and_gets_heartbeats(tollgate, backend):
    handler, _ = sse_backend(events=1, interval=0.0, hold=3.5 * SLOW)
    b = backend(handler)
    port = free_port()
    tollgate(basic_config(port, [b.port], upstream_extra="    read_timeout: 1s",
                          extra="stream:\n  heartbeat: 1s\n"))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: app.test\r\n\r\n")
    data = recv_until(s, LAST_CHUNK, timeout=10)
    s.close()
    assert data.endswith(LAST_CHUNK), data  # the stream ended normally
    assert data.count(b":\n\n") >= 2, data  # heartbeat comments, chunk-framed
    assert b"3\r\n:\n\n\r\n" in data


def test_sse_heartbeat_never_inside_an_event(tollgate, backend):
    handler, _ = sse_backend(events=1, interval=0.0, tail=b"data: partial",
                             hold=2.5 * SLOW)
    b = backend(handler)
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="stream:\n  heartbeat: 500ms\n"))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: app.test\r\n\r\n")
    data = recv_until(s, LAST_CHUNK, timeout=10)
    s.close()
    assert b"data: partial" in data, data
    after = data.split(b"data: partial", 1)[1]
    assert b":\n\n" not in after.split(LAST_CHUNK)[0]


def test_upstream_closed_soon_after_client_leaves(tollgate, backend):
    handler, state = sse_backend(events=100, interval=0.05)
    b = backend(handler)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: app.test\r\n\r\n")
    read_events(s, 3)
    left = time.monotonic()
    s.close()
    deadline = time.time() + 3 * SLOW
    while state["closed_at"] is None and time.time() < deadline:
        time.sleep(0.02)
    assert state["closed_at"] is not None
    assert state["closed_at"] - left < 1.0 * SLOW


def ws_accept(key):
    return base64.b64encode(hashlib.sha1(
        key + b"258EAFA5-E914-47DA-95CA-C5AB0DC11B5E").digest())


def ws_frame(payload, mask=True, opcode=1):
    head = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    return head + payload


def ws_read_frame(sock, buf):
    while len(buf) < 2:
        buf += sock.recv(65536)
    n = buf[1] & 0x7F
    masked = buf[1] & 0x80
    off = 2
    if n == 126:
        while len(buf) < 4:
            buf += sock.recv(65536)
        n = struct.unpack("!H", buf[2:4])[0]
        off = 4
    elif n == 127:
        while len(buf) < 10:
            buf += sock.recv(65536)
        n = struct.unpack("!Q", buf[2:10])[0]
        off = 10
    if masked:
        off += 4
    while len(buf) < off + n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    payload = buf[off:off + n]
    if masked:
        key = buf[off - 4:off]
        payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    return buf[0] & 0x0F, payload, buf[off + n:]


def ws_echo_backend(sock, be):
    """Accepts a WebSocket upgrade (recording the request) and echoes every
    frame until a close, which it answers."""
    data = recv_until(sock, b"\r\n\r\n")
    key = [l.split(b":", 1)[1].strip() for l in data.split(b"\r\n")
           if l.lower().startswith(b"sec-websocket-key:")][0]
    be.record(data)
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ws_accept(key) + b"\r\n\r\n")
    buf = data.split(b"\r\n\r\n", 1)[1]
    while True:
        op, payload, buf = ws_read_frame(sock, buf)
        if op == 8:
            sock.sendall(ws_frame(b"", mask=False, opcode=8))
            return
        sock.sendall(ws_frame(payload, mask=False))


def test_websocket_echo_tunnel(tollgate, backend):
    b = backend(ws_echo_backend)
    port = free_port()
    tollgate(basic_config(port, [b.port], upstream_extra="    read_timeout: 1s"))
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = recv_until(s, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert ws_accept(key) in head
    assert b"upgrade" in b.requests[0].lower()
    buf = head.split(b"\r\n\r\n", 1)[1]
    for msg in (b"hello", b"x" * 70000, "ünïcode".encode()):
        s.sendall(ws_frame(msg))
        op, payload, buf = ws_read_frame(s, buf)
        assert payload == msg
    # Idle longer than the upstream read_timeout: tunnels are not cut by it.
    time.sleep(1.5)
    s.sendall(ws_frame(b"still there"))
    op, payload, buf = ws_read_frame(s, buf)
    assert payload == b"still there"
    s.sendall(ws_frame(b"", opcode=8))
    op, payload, buf = ws_read_frame(s, buf)
    assert op == 8
    s.close()


GOING_AWAY = b"\x88\x02\x03\xe9"  # close 1001, as a server sends it (unmasked)


def ws_read(sock, buf):
    """One whole frame off the socket: (first byte, masked, payload
    unmasked, the frame's bytes, rest). EOFError when the peer closes
    first."""
    def need(k):
        nonlocal buf
        while len(buf) < k:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("closed with %r buffered" % buf[:32])
            buf += chunk
    need(2)
    n, masked, off = buf[1] & 0x7F, bool(buf[1] & 0x80), 2
    if n == 126:
        need(4)
        n, off = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        need(10)
        n, off = struct.unpack("!Q", buf[2:10])[0], 10
    if masked:
        off += 4
    need(off + n)
    payload = buf[off:off + n]
    if masked:
        key = buf[off - 4:off]
        payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    return buf[0], masked, payload, buf[:off + n], buf[off + n:]


def ws_drain_backend(sock, be):
    """A WebSocket backend that records every frame it gets as (first byte,
    masked, payload) and echoes data frames. A close is answered with a
    close and ends it. "split" makes it send half of a 3000-byte binary
    frame, set be.split_sent, and the rest once be.release is set."""
    data = recv_until(sock, b"\r\n\r\n")
    key = [l.split(b":", 1)[1].strip() for l in data.split(b"\r\n")
           if l.lower().startswith(b"sec-websocket-key:")][0]
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ws_accept(key) + b"\r\n\r\n")
    buf = data.split(b"\r\n\r\n", 1)[1]
    sock.settimeout(30 * SLOW)
    while True:
        try:
            first, masked, payload, _, buf = ws_read(sock, buf)
        except EOFError:
            be.record(("eof",))
            return
        be.record((first, masked, payload))
        if first & 0x0F == 8:
            sock.sendall(bytes([0x88, len(payload)]) + payload)
            return
        if payload == b"split":
            big = ws_frame(b"y" * 3000, mask=False, opcode=2)
            sock.sendall(big[:1500])
            be.split_sent.set()
            be.release.wait(10 * SLOW)
            sock.sendall(big[1500:])
            continue
        sock.sendall(ws_frame(payload, mask=False, opcode=first & 0x0F))


def ws_connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
              b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = recv_until(s, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return s, head.split(b"\r\n\r\n", 1)[1]


def backend_frames(b, n, timeout=5.0):
    """The frames the backend recorded, once there are n of them."""
    deadline = time.time() + timeout * SLOW
    while len(b.requests) < n and time.time() < deadline:
        time.sleep(0.02)
    return list(b.requests)


def ws_close_politely(s, buf, t0, within):
    """Reads our close 1001, answers it as a browser does, and sees the
    connection end soon after (not at drain_timeout)."""
    first, masked, payload, frame, buf = ws_read(s, buf)
    assert frame == GOING_AWAY, (first, masked, payload[:40])
    assert buf == b""
    s.sendall(ws_frame(b"\x03\xe9", opcode=8))
    assert s.recv(100) == b""
    assert time.monotonic() - t0 < within


def test_websocket_gets_close_going_away_on_drain(tollgate, backend):
    """Issue 23 (9): at SIGTERM a WebSocket tunnel was cut with a bare TCP
    close after drain_timeout. Now the client gets a close frame 1001 at
    once, the backend a masked one, and the drain ends when the client has
    answered."""
    b = backend(ws_drain_backend)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], extra="drain_timeout: 4s\n"))
    s, buf = ws_connect(port)
    s.sendall(ws_frame(b"hello"))
    first, _, payload, _, buf = ws_read(s, buf)
    assert (first, payload) == (0x81, b"hello")
    t0 = time.monotonic()
    tg.kill(signal.SIGTERM)
    ws_close_politely(s, buf, t0, within=2.5 * SLOW)
    s.close()
    frames = backend_frames(b, 2)
    assert frames == [(0x81, True, b"hello"), (0x88, True, b"\x03\xe9")], frames
    assert tg.proc.wait(timeout=10 * SLOW) == 0
    assert time.monotonic() - t0 < 2.5 * SLOW


def test_websocket_close_waits_for_the_frames_in_flight(tollgate, backend):
    """A drain that comes in the middle of a frame, each way: that frame
    goes on whole, and only then the close frame (a frame of ours inside
    one would corrupt the stream)."""
    b = backend(ws_drain_backend)
    b.split_sent, b.release = threading.Event(), threading.Event()
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], extra="drain_timeout: 4s\n"))
    s, buf = ws_connect(port)
    s.sendall(ws_frame(b"split"))  # the backend sends half a frame
    assert b.split_sent.wait(5 * SLOW)
    up = ws_frame(b"z" * 3000, opcode=2)
    s.sendall(up[:1000])  # and so does the client
    time.sleep(0.3)
    t0 = time.monotonic()
    tg.kill(signal.SIGTERM)
    time.sleep(0.3)
    s.sendall(up[1000:])
    b.release.set()
    first, masked, payload, _, buf = ws_read(s, buf)
    assert (first, masked, payload) == (0x82, False, b"y" * 3000)
    ws_close_politely(s, buf, t0, within=2.5 * SLOW)
    s.close()
    frames = backend_frames(b, 3)
    assert frames == [(0x81, True, b"split"), (0x82, True, b"z" * 3000),
                      (0x88, True, b"\x03\xe9")], [f[:2] for f in frames]
    assert tg.proc.wait(timeout=10 * SLOW) == 0


def test_websocket_opened_during_a_drain_is_closed_after_what_was_sent(tollgate, backend):
    """The 101 comes after SIGTERM: the tunnel is closed at once, but the
    frame the client sent with its upgrade request still reaches the
    backend, before the close."""
    def slow(sock, be):
        time.sleep(0.6 * SLOW)
        ws_drain_backend(sock, be)
    b = backend(slow)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], extra="drain_timeout: 4s\n"))
    s = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) +
              b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + ws_frame(b"early"))
    time.sleep(0.2 * SLOW)
    t0 = time.monotonic()
    tg.kill(signal.SIGTERM)
    head = recv_until(s, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    ws_close_politely(s, head.split(b"\r\n\r\n", 1)[1], t0, within=2.5 * SLOW)
    s.close()
    frames = backend_frames(b, 2)
    assert frames == [(0x81, True, b"early"), (0x88, True, b"\x03\xe9")], frames
    assert tg.proc.wait(timeout=10 * SLOW) == 0


def test_websocket_on_a_listener_a_reload_removes_gets_close_going_away(tollgate, backend):
    b = backend(ws_drain_backend)
    p1, p2 = free_port(), free_port()
    cfg = basic_config(p1, [b.port])
    tg = tollgate(cfg.replace("listen:\n", "listen:\n  - address: 127.0.0.1:%d\n" % p2),
                  check_ports=[p1, p2])
    s, buf = ws_connect(p2)
    s.sendall(ws_frame(b"hello"))
    assert ws_read(s, buf)[2] == b"hello"
    buf = b""
    t0 = time.monotonic()
    tg.reload(cfg)
    ws_close_politely(s, buf, t0, within=3 * SLOW)
    s.close()
    assert backend_frames(b, 2)[1] == (0x88, True, b"\x03\xe9")
    # The listener that stays serves WebSocket as before.
    s, buf = ws_connect(p1)
    s.sendall(ws_frame(b"still here"))
    assert ws_read(s, buf)[2] == b"still here"
    s.close()


def test_upgrade_refused_by_backend_is_a_normal_response(tollgate, backend):
    def handler(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    b = backend(handler)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    resp = raw(port, b"GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n")
    assert status_of(resp) == 403 and resp.endswith(b"no")


def test_unrequested_101_is_502(tollgate, backend):
    def handler(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        time.sleep(0.5)
    b = backend(handler)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    resp = raw(port, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert status_of(resp) == 502
