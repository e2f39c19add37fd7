"""Forwarding: routing, header rewriting, keep-alive pools, balancing,
upstream failures (502/504), retries."""

import json
import os
import re
import socket
import threading
import time

from conftest import (ROOT, Blackhole, SLOW, basic_config, free_port, get, raw,
                      read_http_request, status_of, requests_on)


def body_json(data):
    return json.loads(data.decode())


def test_issue_example_config_as_written(tollgate, backend, tmp_path):
    """conf/examples/basic.yaml is the issue's example, byte for byte."""
    b1 = backend(port=18481)
    b2 = backend(port=18482)
    with open(os.path.join(ROOT, "conf/examples/basic.yaml")) as f:
        tollgate(f.read())
    seen = set()
    for host in ("app.test", "x.app.test", "APP.TEST:18480", "a.b.app.test"):
        for _ in range(2):
            status, headers, data = get(18480, "/hello", host=host)
            assert status == 200
            seen.add(body_json(data)["port"])
    assert seen == {b1.port, b2.port}  # round robin reaches both
    status, _, _ = get(18480, "/events", host="app.test")
    assert status == 200
    status, _, data = get(18480, "/", host="other.test")
    assert status == 404 and b"no site" in data
    status, _, _ = get(18480, "/", host="app.test.evil")
    assert status == 404


def test_keepalive_pool_reuses_backend_connections(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    for _ in range(50):
        status, _, _ = get(port, "/x")  # a new client connection each time
        assert status == 200
    assert len(b.requests) == 50
    assert b.connections <= 2, b.connections


def test_keepalive_pool_holds_bursts_above_its_size_then_trims(tollgate, backend):
    # keepalive: 2, but bursts of 8 concurrent requests: the 6 extra
    # connections stay while bursts keep needing them (no reconnect per
    # burst), and the pool shrinks back to 2 once the load is gone.
    def slow(sock, be):
        for head, headers, body in requests_on(sock):
            be.record(head)
            time.sleep(0.05)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    b = backend(slow)
    port = free_port()
    tollgate(basic_config(port, [b.port], upstream_extra="    keepalive: 2"))
    rounds, burst = 10, 8
    for _ in range(rounds):
        results = []
        threads = [threading.Thread(target=lambda: results.append(get(port, "/x")[0]))
                   for _ in range(burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * burst
    assert len(b.requests) == rounds * burst
    assert b.connections <= burst + 2, b.connections  # was ~burst + 6 per round
    deadline = time.time() + 5 * SLOW
    while len(b.open_socks) > 2 and time.time() < deadline:
        time.sleep(0.1)
    assert len(b.open_socks) == 2, len(b.open_socks)


def test_keepalive_zero_means_no_pooling(tollgate, backend):
    # Even under bursts: every request gets a connection of its own.
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port], upstream_extra="    keepalive: 0"))
    for _ in range(3):
        results = []
        threads = [threading.Thread(target=lambda: results.append(get(port, "/x")[0]))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 4
    assert b.connections == 12, b.connections


def test_request_headers_rewritten(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    req = (b"GET /a/./b/../c//d%7e?x=1&y=%2F HTTP/1.1\r\nHost: App.Test\r\n"
           b"X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n"
           b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n"
           b"Connection: keep-alive, X-Secret\r\nX-Secret: drop me\r\nKeep-Alive: 5\r\n"
           b"TE: trailers\r\nProxy-Connection: x\r\nX-Keep: yes\r\nConnection: close\r\n\r\n")
    resp = raw(port, req)
    assert status_of(resp) == 200, resp
    head, headers, _ = b.requests[0]
    line = head.split("\r\n")[0]
    assert line == "GET /a/c/d~?x=1&y=%2F HTTP/1.1"
    assert headers["host"] == ["App.Test"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-real-ip"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["App.Test"]
    assert "forwarded" not in headers
    for hop in ("x-secret", "keep-alive", "te", "proxy-connection", "connection"):
        assert hop not in headers, hop
    assert headers["x-keep"] == ["yes"]
    rid = headers["x-request-id"][0]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert ("X-Request-Id: %s" % rid).encode() in resp


def test_request_set_host_replaces_the_host_line(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate("""
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:%d]}}
headers:
  request:
    set: {Host: internal.backend, X-Env: prod}
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: app}]
""" % (port, b.port))
    assert get(port, "/", headers={"X-Env": "dev"})[0] == 200
    _, headers, _ = b.requests[0]
    assert headers["host"] == ["internal.backend"]
    assert headers["x-env"] == ["prod"]
    assert headers["x-forwarded-host"] == ["app.test"]


def test_header_rules_cannot_touch_framing(tmp_path):
    """Rules that would add or drop Content-Length, Transfer-Encoding or
    connection management are refused at load, with file:line:col."""
    from conftest import run_tollgate_check
    base = """
listen: [127.0.0.1:1]
upstreams: {app: {servers: [127.0.0.1:2]}}
headers:
  %s
sites:
  - hosts: [a.test]
    routes: [{path: /, upstream: app}]
"""
    for rule in ("remove: [Content-Length]", "add: {Transfer-Encoding: chunked}",
                 "request: {remove: [Host]}", "request: {set: {Connection: close}}",
                 "request: {remove: [te]}", "add: {Upgrade: h2c}"):
        rc, out, _ = run_tollgate_check(base % rule, tmp_path)
        assert rc == 1 and "is managed by tollgate" in out, (rule, out)
        assert re.search(r"check\.yaml:5:\d+: ", out), out


def test_request_id_kept_when_well_formed(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    _, headers, _ = get(port, "/", headers={"X-Request-Id": "abc-123.X"})
    assert headers["x-request-id"] == "abc-123.X"
    assert b.requests[0][1]["x-request-id"] == ["abc-123.X"]
    _, headers, _ = get(port, "/", headers={"X-Request-Id": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])


def test_response_headers_rewritten(tollgate, backend):
    def handler(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nServer: secret/1.2\r\nX-Powered-By: PHP\r\n"
                     b"Connection: X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\n"
                     b"X-App: yes\r\nContent-Length: 2\r\n\r\nok")
    b = backend(handler)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    resp = raw(port, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    head = resp.split(b"\r\n\r\n")[0].decode().lower()
    assert "x-app: yes" in head
    for gone in ("server:", "x-powered-by:", "x-internal:", "keep-alive:"):
        assert gone not in head, gone
    assert resp.endswith(b"\r\n\r\nok")


def test_unknown_host_and_missing_route(tollgate, backend, tmp_path):
    b = backend()
    port = free_port()
    cfg = basic_config(port, [b.port]).replace("      - path: /\n", "      - path: /api\n")
    tollgate(cfg)
    assert get(port, "/", host="nope.test")[0] == 404
    assert get(port, "/api/x")[0] == 200
    assert get(port, "/api")[0] == 200
    assert get(port, "/apix")[0] == 404
    assert get(port, "/other")[0] == 404
    assert len(b.requests) == 2


def test_catch_all_site_only_when_listed(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port], hosts='["*"]'))
    assert get(port, "/", host="anything.example")[0] == 200


def test_502_when_no_backend_answers(tollgate):
    dead = free_port()
    port = free_port()
    tg = tollgate(basic_config(port, [dead], upstream_extra="    connect_timeout: 1s"))
    status, _, data = get(port, "/")
    assert status == 502
    assert b"Bad Gateway" in data and len(data) < 200
    time.sleep(0.2)
    assert re.search(r"\[error\] .*upstream app: request \S+: refused the connection "
                     r"\(Connection refused\) at 127\.0\.0\.1:%d \(answered 502\)" % dead,
                     tg.stderr()), tg.stderr()


def test_504_on_read_timeout(tollgate, backend):
    def silent(sock, be):
        read_http_request(sock)
        time.sleep(5 * SLOW)
    b = backend(silent)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], upstream_extra="    read_timeout: 1s"))
    t0 = time.time()
    status, _, data = get(port, "/")
    took = time.time() - t0
    assert status == 504 and b"Gateway Timeout" in data
    assert 0.9 < took < 3 * SLOW, took
    assert re.search(r"\[error\] .*upstream app: request \S+: did not answer within read_timeout "
                     r"at 127\.0\.0\.1:%d \(answered 504\)" % b.port, tg.stderr()), tg.stderr()


def test_dead_server_skipped_for_the_next(tollgate, backend):
    b = backend()
    dead = free_port()
    port = free_port()
    tollgate(basic_config(port, [dead, b.port]))
    for _ in range(10):
        assert get(port, "/")[0] == 200


def test_connect_timeout_tries_next_server(tollgate, backend):
    b = backend()
    hole = Blackhole()
    port = free_port()
    tg = tollgate(basic_config(port, [hole.port, b.port],
                               upstream_extra="    connect_timeout: 300ms"))
    t0 = time.time()
    for _ in range(4):
        assert get(port, "/")[0] == 200
    assert time.time() - t0 < 5 * SLOW
    hole.close()
    assert re.search(r"\[info\] .*upstream app: request \S+: did not accept the connection in "
                     r"time at 127\.0\.0\.1:%d; retrying on 127\.0\.0\.1:%d" % (hole.port, b.port),
                     tg.stderr()), tg.stderr()


def test_backend_reset_mid_body_is_not_a_complete_response(tollgate, backend):
    def truncating(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    b = backend(truncating)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    resp = raw(port, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n", timeout=5)
    assert status_of(resp) == 200
    body = resp.split(b"\r\n\r\n", 1)[1]
    assert len(body) < 100000  # the client sees the connection close early


def test_backend_chunked_truncation_closes_client(tollgate, backend):
    def truncating(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.1)
    b = backend(truncating)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    resp = raw(port, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n", timeout=5)
    assert resp.endswith(b"5\r\nhello\r\n")  # no terminating 0-chunk: visibly incomplete


def test_least_conn_balancing(tollgate, backend):
    slow_started = threading.Event()

    def slow(sock, be):
        read_http_request(sock)
        slow_started.set()
        time.sleep(1.5 * SLOW)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
    b_slow = backend(slow)
    b_fast = backend()
    port = free_port()
    tollgate(basic_config(port, [b_slow.port, b_fast.port],
                          upstream_extra="    balance: least_conn"))
    t = threading.Thread(target=get, args=(port, "/"))
    t.start()
    assert slow_started.wait(5)
    # While the slow server holds one request, the others go to the fast one.
    for _ in range(6):
        status, headers, _ = get(port, "/")
        assert status == 200 and headers["x-backend"] == str(b_fast.port)
    t.join()


def test_head_204_304_have_no_body(tollgate, backend):
    def handler(sock, be):
        for head, headers, body in requests_on(sock):
            path = head.split(" ")[1]
            if path == "/204":
                sock.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif path == "/304":
                sock.sendall(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                             + (b"" if head.startswith("HEAD") else b"hello"))
    b = backend(handler)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"HEAD / HTTP/1.1\r\nHost: app.test\r\n\r\n"
              b"GET /204 HTTP/1.1\r\nHost: app.test\r\n\r\n"
              b"GET /304 HTTP/1.1\r\nHost: app.test\r\n\r\n"
              b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    out = b""
    s.settimeout(5 * SLOW)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3})", out)]
    assert statuses == [200, 204, 304, 200], out
    assert out.endswith(b"\r\n\r\nhello")
    assert out.count(b"hello") == 1


def test_ipv6_listener_and_backend(tollgate, backend):
    b = backend(host="::1")
    port = free_port()
    tollgate("""
listen:
  - address: "[::1]:%d"
upstreams: {app: {servers: ["[::1]:%d"]}}
sites: [{hosts: [app.test], routes: [{path: /, upstream: app}]}]
""" % (port, b.port), check_ports=[])
    from conftest import wait_port
    assert wait_port(port, host="::1")
    resp = raw(port, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n", host="::1")
    assert status_of(resp) == 200
    assert b.requests[-1][1]["x-forwarded-for"] == ["::1"]
