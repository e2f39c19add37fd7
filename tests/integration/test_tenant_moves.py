"""A moved tenant's streams end (issue 22, item 4): when the directory
moves a tenant to other servers (HSET + PUBLISH PREFIXchanged), its open
SSE streams get the retry hint and end, its WebSocket tunnels get a close
frame 1001, plain requests in flight finish, and other tenants' streams on
the same server stay; what does not end within tenants.move_grace is cut."""

import base64
import os
import socket
import threading
import time

from conftest import SLOW, free_port, read_http_request
from test_streaming import GOING_AWAY, recv_until, ws_accept, ws_frame, ws_read


def node_handler(sock, be):
    """One backend node: /events streams an event every 100 ms (forever,
    until the client goes), /ws echoes WebSocket frames and answers a
    close, /slow answers after 1.5 s, anything else at once."""
    head = recv_until(sock, b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0]
    be.record(line)
    if b" /ws " in line:
        key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
               if l.lower().startswith(b"sec-websocket-key:")][0]
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ws_accept(key) +
                     b"\r\n\r\n")
        buf = head.split(b"\r\n\r\n", 1)[1]
        sock.settimeout(30 * SLOW)
        while True:
            try:
                first, _, payload, _, buf = ws_read(sock, buf)
            except (EOFError, OSError):
                return
            if first & 0x0F == 8:
                sock.sendall(bytes([0x88, len(payload)]) + payload)
                return
            sock.sendall(ws_frame(payload, mask=False, opcode=first & 0x0F))
    if b" /events " in line:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for i in range(100000):
                ev = b"data: %d\n\n" % i
                sock.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                time.sleep(0.1)
        except OSError:
            return
    if b" /slow " in line:
        time.sleep(1.5)
    body = b"%d" % be.port
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(body), body))


def open_sse(port, tenant):
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    s.sendall(b"GET /events HTTP/1.1\r\nHost: %s.platform.test\r\n"
              b"Accept: text/event-stream\r\n\r\n" % tenant.encode())
    got = recv_until(s, b"data: 0\n")
    assert got.startswith(b"HTTP/1.1 200"), got
    return s


def read_to_end(s, timeout):
    """What arrives within `timeout` seconds in all, and whether the
    stream ended (EOF) by then."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return data, False
        if not chunk:
            return data, True
        data += chunk


def open_ws(port, tenant):
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: %s.platform.test\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " % tenant.encode() + key +
              b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = recv_until(s, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    buf = head.split(b"\r\n\r\n", 1)[1]
    s.sendall(ws_frame(b"hello"))
    first, _, payload, _, buf = ws_read(s, buf)
    assert payload == b"hello"
    return s, buf


CONFIG = """
workers: 2
listen: [127.0.0.1:%d]
tenants:
  directory: redis
  redis: { address: "127.0.0.1:%d" }
  move_grace: %s
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant, stream: true}]
"""


def test_moved_tenant_streams_end_plain_requests_finish(tollgate, backend, redis):
    old, new = backend(node_handler), backend(node_handler)
    port = free_port()
    tollgate(CONFIG % (port, redis.port, "5s"))
    redis.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:%d" % old.port)
    redis.cmd("HSET", "tollgate:tenant:other", "servers", "127.0.0.1:%d" % old.port)
    # Two streams of acme (so likely on both workers), a WebSocket, one
    # stream of another tenant on the same server, and a slow plain request.
    sse = [open_sse(port, "acme") for _ in range(3)]
    ws, wsbuf = open_ws(port, "acme")
    bystander = open_sse(port, "other")
    slow = {}

    def slow_request():
        c = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        c.sendall(b"GET /slow HTTP/1.1\r\nHost: acme.platform.test\r\n\r\n")
        slow["answer"] = read_to_end(c, 10 * SLOW)[0]
        c.close()
    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(0.3)
    # A change message that changes nothing ends nothing.
    redis.cmd("PUBLISH", "tollgate:tenant:changed", "acme")
    for s in sse:
        data, ended = read_to_end(s, 0.5)
        assert not ended and b"retry:" not in data
    # The move.
    redis.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:%d" % new.port)
    t0 = time.monotonic()
    redis.cmd("PUBLISH", "tollgate:tenant:changed", "acme")
    for s in sse:
        data, ended = read_to_end(s, 3 * SLOW)
        assert ended, data[-200:]
        assert data.endswith(b"retry: 1000\n\n\r\n0\r\n\r\n") or b"retry: 1000\n\n" in data, \
            data[-200:]
        s.close()
    assert time.monotonic() - t0 < 3 * SLOW
    first, _, payload, frame, wsbuf = ws_read(ws, wsbuf)
    assert frame == GOING_AWAY, (first, payload)
    ws.sendall(ws_frame(b"\x03\xe9", opcode=8))
    assert read_to_end(ws, 3 * SLOW)[1]
    ws.close()
    # The plain request on the old server finished.
    t.join(10 * SLOW)
    assert slow["answer"].startswith(b"HTTP/1.1 200"), slow
    assert slow["answer"].endswith(b"%d" % old.port)
    # The other tenant's stream is untouched.
    data, ended = read_to_end(bystander, 0.5)
    assert not ended and b"data: " in data and b"retry:" not in data
    bystander.close()
    # The clients reconnect, to the new place.
    s = open_sse(port, "acme")
    s.close()
    assert any(b"/events" in line for line in new.requests)


def test_a_stream_that_does_not_end_is_cut_after_move_grace(tollgate, backend, redis):
    """A backend stuck in the middle of an event: the hint cannot go
    between events, so the stream is cut when move_grace is over."""
    def stuck(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        part = b"data: 0\n\ndata: half"
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        time.sleep(8)
    old, new = backend(stuck), backend(node_handler)
    port = free_port()
    tollgate(CONFIG % (port, redis.port, "1s"))
    redis.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:%d" % old.port)
    s = open_sse(port, "acme")
    redis.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:%d" % new.port)
    t0 = time.monotonic()
    redis.cmd("PUBLISH", "tollgate:tenant:changed", "acme")
    data, ended = read_to_end(s, 5 * SLOW)
    took = time.monotonic() - t0
    assert ended and b"retry:" not in data
    assert 0.8 < took < 3 * SLOW, took
    s.close()
