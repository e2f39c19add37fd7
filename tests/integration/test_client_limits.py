"""Connection and stream caps per client, the global connection cap, the
minimum body rate."""

import socket
import threading
import time

from conftest import SLOW, basic_config, free_port, get, raw, read_http_request, status_of


def test_max_connections_per_ip(tollgate, backend):
    b = backend()
    port = free_port()
    cfg = basic_config(port, [b.port]).replace(
        "  - address: 127.0.0.1:%d\n" % port,
        "  - address: 127.0.0.1:%d\n    max_connections_per_ip: 5\n" % port)
    tollgate(cfg)
    time.sleep(0.3)  # the harness's readiness probe must have closed first
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    time.sleep(0.2)
    extra = socket.create_connection(("127.0.0.1", port))
    extra.settimeout(3 * SLOW)
    extra.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    try:
        data = extra.recv(100)
    except ConnectionResetError:
        data = b""
    assert data == b""  # refused: closed without an answer
    # Another client address is not affected (127.0.0.2 is loopback too).
    s = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
    s.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    s.settimeout(3 * SLOW)
    assert status_of(s.recv(4096)) == 200
    s.close()
    for h in held:
        h.close()
    time.sleep(0.2)
    assert get(port, "/")[0] == 200  # slots come back when connections close


def test_global_max_connections_pauses_accept(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="client:\n  max_connections: 4\n"))
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    time.sleep(0.3)
    result = {}

    def waiting_client():
        result["resp"] = raw(port, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
                             timeout=10)
    t = threading.Thread(target=waiting_client)
    t.start()
    time.sleep(0.5)
    assert "resp" not in result  # waiting in the backlog, not refused
    held[0].close()
    t.join(10 * SLOW)
    assert status_of(result.get("resp", b"")) == 200
    for h in held[1:]:
        h.close()


def test_stream_max_per_ip(tollgate, backend):
    def sse(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata:\n\r\n")
        time.sleep(3 * SLOW)
    b = backend(sse)
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="stream:\n  max_per_ip: 2\n"))
    streams = []
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /sse HTTP/1.1\r\nHost: app.test\r\n\r\n")
        s.settimeout(3 * SLOW)
        assert status_of(s.recv(4096)) == 200
        streams.append(s)
    resp = raw(port, b"GET /sse HTTP/1.1\r\nHost: app.test\r\n\r\n", read_until_close=False)
    assert status_of(resp) == 429
    streams[0].close()
    time.sleep(0.3)
    resp = raw(port, b"GET /sse HTTP/1.1\r\nHost: app.test\r\n\r\n", read_until_close=False)
    assert status_of(resp) == 200
    streams[1].close()


def test_min_body_rate(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="client:\n  min_body_rate: 1000\n"))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\n")
    t0 = time.time()
    s.settimeout(0.5)
    data = b""
    while time.time() - t0 < 15 * SLOW:
        try:
            s.sendall(b"x" * 10)  # 20 bytes/s: far below 1000
            data += s.recv(4096)
            if data:
                break
        except socket.timeout:
            continue
        except OSError:
            break
    s.close()
    assert status_of(data) == 408, data
    assert 4.5 < time.time() - t0 < 9 * SLOW
