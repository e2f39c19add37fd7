"""The response cache (issue 20, part 2): hits after the first request,
freshness and expiry, Vary, what is never stored (private, no-store,
no-cache, Set-Cookie, requests with Authorization or Cookie), coalescing
(100 concurrent misses -> 1 upstream request), conditional requests
answered from the cache, HEAD, purge through the admin listener, metrics,
HTTP/2 hits, and bodies over max_entry_size passing through unstored."""

import http.client
import re
import subprocess
import threading
import time

from conftest import SLOW, free_port, get, requests_on

LM = "Sun, 06 Nov 1994 08:49:37 GMT"


class Origin:
    """A keep-alive backend whose answer per path is set by the test:
    (status, [header lines], body, delay s). Counts requests per path."""

    def __init__(self):
        self.routes = {}
        self.counts = {}
        self.seen = []
        self.lock = threading.Lock()

    def set(self, path, status=200, headers=(), body=b"payload", delay=0.0, chunked=False):
        self.routes[path] = (status, list(headers), body, delay, chunked)

    def count(self, path):
        with self.lock:
            return self.counts.get(path, 0)

    def handler(self, sock, backend):
        for head, headers, body in requests_on(sock):
            line = head.split("\r\n")[0]
            method, target = line.split(" ")[:2]
            path = target.split("?")[0]
            with self.lock:
                self.counts[path] = self.counts.get(path, 0) + 1
                self.seen.append((method, target, headers))
            status, extra, payload, delay, chunked = self.routes.get(
                path, (200, [], b"default " + target.encode(), 0.0, False))
            if delay:
                time.sleep(delay)
            reason = {200: "OK", 304: "Not Modified", 404: "Not Found"}.get(status, "X")
            out = b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())
            for h in extra:
                out += h.encode() + b"\r\n"
            if method == "HEAD":
                sock.sendall(out + b"Content-Length: %d\r\n\r\n" % len(payload))
                continue
            if chunked:
                out += b"Transfer-Encoding: chunked\r\n\r\n"
                for i in range(0, len(payload), 1000):
                    part = payload[i:i + 1000]
                    out += b"%x\r\n" % len(part) + part + b"\r\n"
                sock.sendall(out + b"0\r\n\r\n")
            else:
                sock.sendall(out + b"Content-Length: %d\r\n\r\n" % len(payload) + payload)


def config(port, admin_port, backend_port, cache="{ttl: 1d}", workers=1, extra=""):
    return """
workers: %d
listen:
  - address: 127.0.0.1:%d
    h2c: true
upstreams:
  app:
    servers: [127.0.0.1:%d]
sites:
  - hosts: [app.test]
    routes:
      - path: /nocache/
        upstream: app
      - path: /
        upstream: app
        cache: %s
admin: {listen: 127.0.0.1:%d}
%s
""" % (workers, port, backend_port, cache, admin_port, extra)


def start(tollgate, backend, cache="{ttl: 1d}", **kw):
    origin = Origin()
    b = backend(origin.handler)
    port, aport = free_port(), free_port()
    tg = tollgate(config(port, aport, b.port, cache=cache, **kw))
    return origin, port, aport, tg


def admin(aport, method, path):
    c = http.client.HTTPConnection("127.0.0.1", aport, timeout=10 * SLOW)
    c.request(method, path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def metric(aport, name):
    _, data = admin(aport, "GET", "/metrics")
    m = re.search(r"^tollgate_%s (\d+)$" % name, data.decode(), re.M)
    return int(m.group(1)) if m else None


def test_second_request_is_a_hit(tollgate, backend):
    origin, port, aport, _ = start(tollgate, backend)
    origin.set("/api/files/c/r/thumb.png", headers=["Content-Type: image/png", "ETag: \"t1\""],
               body=b"\x89PNG" + b"x" * 5000)
    s1, h1, d1 = get(port, "/api/files/c/r/thumb.png?thumb=100x100")
    s2, h2, d2 = get(port, "/api/files/c/r/thumb.png?thumb=100x100")
    assert s1 == s2 == 200 and d1 == d2 and len(d2) == 5004
    assert h1["x-cache"] == "MISS" and h2["x-cache"] == "HIT"
    assert h2["content-type"] == "image/png" and h2["etag"] == "\"t1\""
    assert "age" in h2 and int(h2["age"]) >= 0
    assert h2["x-request-id"] != h1["x-request-id"]  # our fields are per answer
    assert origin.count("/api/files/c/r/thumb.png") == 1
    # The query is part of the key: another thumb size is another entry.
    get(port, "/api/files/c/r/thumb.png?thumb=50x50")
    assert origin.count("/api/files/c/r/thumb.png") == 2
    # So is the host, folded to lower case.
    s, h, _ = get(port, "/api/files/c/r/thumb.png?thumb=50x50", host="APP.test")
    assert h["x-cache"] == "HIT"
    assert metric(aport, "cache_hits_total") == 2
    assert metric(aport, "cache_misses_total") == 2
    assert metric(aport, "cache_entries") == 2
    assert metric(aport, "cache_bytes") > 10000
    # A route without cache: has no X-Cache and always goes to the backend.
    for _ in range(2):
        s, h, _ = get(port, "/nocache/x")
        assert "x-cache" not in h
    assert origin.count("/nocache/x") == 2


def test_freshness_and_expiry(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend, cache="{ttl: 1s}")
    origin.set("/short")
    origin.set("/backend-says", headers=["Cache-Control: max-age=1"])
    origin.set("/s-maxage", headers=["Cache-Control: max-age=100, s-maxage=1"])
    origin.set("/aged", headers=["Cache-Control: max-age=100", "Age: 40"])
    for p in ("/short", "/backend-says", "/s-maxage"):
        get(port, p)
        s, h, _ = get(port, p)
        assert h["x-cache"] == "HIT", p
    s, h, _ = get(port, "/aged")
    s, h, _ = get(port, "/aged")
    assert h["x-cache"] == "HIT" and int(h["age"]) >= 40
    time.sleep(1.6)
    for p in ("/short", "/backend-says", "/s-maxage"):
        s, h, _ = get(port, p)
        assert h["x-cache"] == "MISS", p
        assert origin.count(p) == 2, p
    s, h, _ = get(port, "/aged")
    assert h["x-cache"] == "HIT"  # still fresh: 100 - 40 s


def test_backend_max_age_wins_over_route_ttl(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend, cache="{ttl: 1d}")
    origin.set("/p", headers=["Cache-Control: public, max-age=1"])
    get(port, "/p")
    assert get(port, "/p")[1]["x-cache"] == "HIT"
    time.sleep(1.6)
    assert get(port, "/p")[1]["x-cache"] == "MISS"


def test_vary(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend)
    origin.set("/v", headers=["Vary: Accept-Encoding"], body=b"variant")
    gz = {"Accept-Encoding": "gzip"}
    br = {"Accept-Encoding": "br"}
    assert get(port, "/v", headers=gz)[1]["x-cache"] == "MISS"
    assert get(port, "/v", headers=gz)[1]["x-cache"] == "HIT"
    assert get(port, "/v", headers=br)[1]["x-cache"] == "MISS"
    assert get(port, "/v", headers=br)[1]["x-cache"] == "HIT"
    assert get(port, "/v")[1]["x-cache"] == "MISS"  # none is a value of its own
    assert get(port, "/v", headers=gz)[1]["x-cache"] == "HIT"
    assert origin.count("/v") == 3
    origin.set("/star", headers=["Vary: *"])
    get(port, "/star")
    get(port, "/star")
    assert origin.count("/star") == 2


def test_never_stored(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend)
    cases = {
        "/private": ["Cache-Control: private, max-age=60"],
        "/no-store": ["Cache-Control: no-store"],
        "/no-cache": ["Cache-Control: no-cache"],
        "/cookie": ["Set-Cookie: session=abc"],
        "/max-age-0": ["Cache-Control: max-age=0"],
    }
    for p, hdrs in cases.items():
        origin.set(p, headers=hdrs)
        for _ in range(3):
            s, h, _ = get(port, p)
            assert s == 200 and h["x-cache"] == "MISS", p
        assert origin.count(p) == 3, p
    # 500s are not stored; 404 only with the backend's own max-age.
    origin.set("/err", status=500)
    origin.set("/gone", status=404)
    origin.set("/gone-long", status=404, headers=["Cache-Control: max-age=60"])
    for _ in range(2):
        get(port, "/err")
        get(port, "/gone")
        get(port, "/gone-long")
    assert origin.count("/err") == 2 and origin.count("/gone") == 2
    assert origin.count("/gone-long") == 1


def test_credentials_bypass_the_cache(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend)
    origin.set("/f", body=b"public")
    # With credentials: neither stored nor answered from the cache.
    for hdrs in ({"Authorization": "Bearer x"}, {"Cookie": "pb_auth=y"}):
        s, h, _ = get(port, "/f", headers=hdrs)
        assert s == 200 and "x-cache" not in h
    assert origin.count("/f") == 2
    get(port, "/f")
    assert get(port, "/f")[1]["x-cache"] == "HIT"
    s, h, _ = get(port, "/f", headers={"Authorization": "Bearer x"})
    assert "x-cache" not in h
    assert origin.count("/f") == 4
    # A Range is passed through, never answered with the whole entry.
    s, h, _ = get(port, "/f", headers={"Range": "bytes=0-1"})
    assert "x-cache" not in h
    assert origin.count("/f") == 5


def test_cache_authorized_route_stores_them(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend, cache="{ttl: 1d, cache_authorized: true}")
    origin.set("/f")
    get(port, "/f", headers={"Authorization": "Bearer x"})
    assert get(port, "/f", headers={"Cookie": "a=b"})[1]["x-cache"] == "HIT"
    assert origin.count("/f") == 1


def test_bypass_query(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend, cache="{ttl: 1d, bypass_query: [token]}")
    origin.set("/f")
    for q in ("?token=a", "?thumb=1&token=a", "?%74oken=a", "?token"):
        for _ in range(2):
            s, h, _ = get(port, "/f" + q)
            assert s == 200 and "x-cache" not in h, q
    assert origin.count("/f") == 8
    get(port, "/f?tokens=a")
    assert get(port, "/f?tokens=a")[1]["x-cache"] == "HIT"


def test_coalescing_100_concurrent_misses(tollgate, backend):
    origin, port, aport, _ = start(tollgate, backend)
    body = b"z" * 20000
    origin.set("/burst", body=body, delay=1.0 * SLOW)
    results = []
    lock = threading.Lock()
    go = threading.Event()

    def one():
        go.wait()
        try:
            r = get(port, "/burst", timeout=30)
        except Exception as e:  # noqa: BLE001 - reported below
            r = (None, {}, repr(e).encode())
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(100)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(60 * SLOW)
    assert len(results) == 100
    bad = [r for r in results if r[0] != 200 or r[2] != body]
    assert not bad, bad[:3]
    assert origin.count("/burst") == 1
    assert metric(aport, "cache_coalesced_total") >= 1
    assert metric(aport, "cache_hits_total") + metric(aport, "cache_misses_total") == 100


def test_coalesced_requests_go_to_the_backend_when_not_stored(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend)
    origin.set("/priv", headers=["Cache-Control: private"], delay=0.5 * SLOW)
    results = []

    def one():
        results.append(get(port, "/priv", timeout=30)[0])

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30 * SLOW)
    assert results == [200] * 10
    assert origin.count("/priv") == 10


def test_lock_timeout_sends_waiters_to_the_backend(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend, cache="{ttl: 1d, lock_timeout: 200ms}")
    origin.set("/slow", delay=1.5 * SLOW)
    results = []

    def one():
        t0 = time.time()
        s = get(port, "/slow", timeout=30)[0]
        results.append((s, time.time() - t0))

    first = threading.Thread(target=one)
    first.start()
    time.sleep(0.2)
    second = threading.Thread(target=one)
    second.start()
    first.join(30)
    second.join(30)
    assert [r[0] for r in results] == [200, 200]
    assert origin.count("/slow") == 2


def test_clients_that_leave_while_parked_or_mid_hit(tollgate, backend):
    """Lifetimes: parked requests whose clients go away, the filler's own
    client going away (the fill is abandoned, the parked ones fetch for
    themselves), and a client leaving in the middle of a large hit."""
    import socket
    origin, port, _, tg = start(tollgate, backend, cache="{ttl: 1d, max_entry_size: 16MiB}")
    origin.set("/p", body=b"p" * 1000, delay=0.8 * SLOW)
    socks = []
    for _ in range(6):
        s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        s.sendall(b"GET /p HTTP/1.1\r\nHost: app.test\r\n\r\n")
        socks.append(s)
        time.sleep(0.05)
    for s in socks[1:4]:  # three parked clients leave
        s.close()
    time.sleep(1.2 * SLOW)
    for s in socks[4:]:
        data = b""
        while b"p" * 1000 not in data:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        s.close()
    socks[0].close()
    assert origin.count("/p") == 1
    assert get(port, "/p")[1]["x-cache"] == "HIT"

    # The filler's client leaves before the answer: nothing is stored, and
    # the one parked behind it goes to the backend itself.
    origin.set("/q", body=b"q" * 1000, delay=0.8 * SLOW)
    first = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    first.sendall(b"GET /q HTTP/1.1\r\nHost: app.test\r\n\r\n")
    time.sleep(0.1)
    results = []
    t = threading.Thread(target=lambda: results.append(get(port, "/q", timeout=30)))
    t.start()
    time.sleep(0.1)
    first.close()
    t.join(30 * SLOW)
    assert results and results[0][0] == 200 and results[0][2] == b"q" * 1000
    assert origin.count("/q") == 2

    # A client leaves in the middle of a large hit.
    big = bytes(range(256)) * 32768
    origin.set("/big", body=big)
    get(port, "/big")
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
        s.recv(1000)
        s.close()
    s, h, d = get(port, "/big")
    assert h["x-cache"] == "HIT" and d == big
    assert origin.count("/big") == 1
    assert tg.proc.poll() is None


def test_conditional_requests_answered_from_the_cache(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend)
    origin.set("/c", headers=["ETag: W/\"abc\"", "Last-Modified: " + LM], body=b"content")
    get(port, "/c")
    s, h, d = get(port, "/c", headers={"If-None-Match": "\"abc\""})
    assert s == 304 and d == b"" and h["x-cache"] == "HIT" and h["etag"] == "W/\"abc\""
    s, h, d = get(port, "/c", headers={"If-None-Match": "\"other\", W/\"abc\""})
    assert s == 304
    s, h, d = get(port, "/c", headers={"If-None-Match": "\"other\""})
    assert s == 200 and d == b"content"
    s, h, d = get(port, "/c", headers={"If-Modified-Since": LM})
    assert s == 304
    s, h, d = get(port, "/c", headers={"If-Modified-Since": "Sat, 05 Nov 1994 08:49:37 GMT"})
    assert s == 200 and d == b"content"
    assert origin.count("/c") == 1


def test_a_revalidating_client_still_fills_the_cache(tollgate, backend):
    """A browser that holds a copy sends its validators on the first
    request too: the backend is asked for the whole answer (a 304 would
    fill nothing), and the next revalidation gets its 304 from the cache."""
    origin, port, _, _ = start(tollgate, backend)
    origin.set("/r", headers=["ETag: \"e1\""], body=b"full")
    s, h, d = get(port, "/r", headers={"If-None-Match": "\"e1\"",
                                        "If-Modified-Since": LM})
    assert s == 200 and d == b"full" and h["x-cache"] == "MISS"
    method, target, seen = origin.seen[-1]
    assert "if-none-match" not in seen and "if-modified-since" not in seen
    s, h, d = get(port, "/r", headers={"If-None-Match": "\"e1\""})
    assert s == 304 and h["x-cache"] == "HIT"
    assert origin.count("/r") == 1
    # On a route without cache the validators go through.
    get(port, "/nocache/r", headers={"If-None-Match": "\"e1\""})
    assert origin.seen[-1][2]["if-none-match"] == ["\"e1\""]


def test_head_is_answered_from_a_get_entry(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend)
    origin.set("/h", body=b"x" * 1234)
    get(port, "/h")
    s, h, d = get(port, "/h", method="HEAD")
    assert s == 200 and d == b"" and h["x-cache"] == "HIT" and h["content-length"] == "1234"
    assert origin.count("/h") == 1
    # A HEAD miss goes to the backend and stores nothing.
    s, h, d = get(port, "/h2", method="HEAD")
    assert h["x-cache"] == "MISS"
    assert get(port, "/h2")[1]["x-cache"] == "MISS"


def test_purge_through_the_admin_listener(tollgate, backend):
    origin, port, aport, _ = start(tollgate, backend, workers=2)
    origin.set("/api/files/a/b/pic.jpg", headers=["Vary: Accept-Encoding"])
    # Fill every worker (connections spread over them) and both variants.
    for _ in range(8):
        get(port, "/api/files/a/b/pic.jpg?thumb=1")
        get(port, "/api/files/a/b/pic.jpg?thumb=1", headers={"Accept-Encoding": "gzip"})
    n = origin.count("/api/files/a/b/pic.jpg")
    assert n <= 4
    assert admin(aport, "GET", "/cache/app.test/api/files/a/b/pic.jpg?thumb=1")[0] == 405
    assert admin(aport, "DELETE", "/cache/")[0] == 400
    s, d = admin(aport, "DELETE", "/cache/APP.test/api/files/a/b/pic.jpg?thumb=1")
    assert s == 200, d
    s, h, _ = get(port, "/api/files/a/b/pic.jpg?thumb=1")
    assert h["x-cache"] == "MISS"
    s, h, _ = get(port, "/api/files/a/b/pic.jpg?thumb=1", headers={"Accept-Encoding": "gzip"})
    assert h["x-cache"] == "MISS"
    assert origin.count("/api/files/a/b/pic.jpg") == n + 2
    assert metric(aport, "cache_purged_total") >= 2


def test_large_and_chunked_bodies(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend, cache="{ttl: 1d, max_entry_size: 64KiB}")
    big = bytes(range(256)) * 1024  # 256 KiB
    origin.set("/big", body=big)
    origin.set("/big-chunked", body=big, chunked=True)
    origin.set("/small-chunked", body=b"c" * 30000, chunked=True)
    for p in ("/big", "/big-chunked"):
        for _ in range(2):
            s, h, d = get(port, p)
            assert s == 200 and d == big and h["x-cache"] == "MISS"
        assert origin.count(p) == 2
    get(port, "/small-chunked")
    s, h, d = get(port, "/small-chunked")
    assert h["x-cache"] == "HIT" and d == b"c" * 30000 and h["content-length"] == "30000"


def test_lru_keeps_the_cache_within_max_size(tollgate, backend):
    origin, port, aport, _ = start(tollgate, backend,
                                   cache="{ttl: 1d, max_size: 200KiB, max_entry_size: 64KiB}")
    for i in range(10):
        origin.set("/e%d" % i, body=b"e" * 50000)
        get(port, "/e%d" % i)
    assert metric(aport, "cache_bytes") <= 200 * 1024
    assert metric(aport, "cache_evictions_total") >= 6
    assert get(port, "/e9")[1]["x-cache"] == "HIT"
    assert get(port, "/e0")[1]["x-cache"] == "MISS"


def test_slow_reader_gets_a_whole_hit(tollgate, backend):
    """A hit bigger than what the socket takes at once is written as the
    client reads (backpressure), then the next request on the connection
    works."""
    import socket
    origin, port, _, _ = start(tollgate, backend, cache="{ttl: 1d, max_entry_size: 16MiB}")
    body = bytes(range(256)) * 32768  # 8 MiB: more than the socket buffers hold
    origin.set("/large", body=body)
    get(port, "/large")
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    s.sendall(b"GET /large HTTP/1.1\r\nHost: app.test\r\n\r\n")
    time.sleep(0.5)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert b"X-Cache: HIT" in head
    while len(rest) < len(body):
        chunk = s.recv(65536)
        assert chunk
        rest += chunk
    assert rest == body
    s.sendall(b"GET /large HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(body)
    assert origin.count("/large") == 1


def test_http2_hit(tollgate, backend):
    origin, port, _, _ = start(tollgate, backend)
    origin.set("/h2", headers=["Content-Type: text/plain"], body=b"over h2 " * 1000)
    url = "http://127.0.0.1:%d/h2" % port
    outs = []
    for _ in range(2):
        p = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-H", "Host: app.test",
                            "-D", "-", url], capture_output=True, timeout=30 * SLOW)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout)
    assert outs[0].startswith(b"HTTP/2 200") and b"x-cache: miss" in outs[0].lower()
    assert b"x-cache: hit" in outs[1].lower()
    assert outs[1].endswith(b"over h2 " * 1000)
    assert origin.count("/h2") == 1
    # A hit larger than the stream's flow-control window waits for
    # WINDOW_UPDATEs (backpressure on HTTP/2).
    big = bytes(range(256)) * 4096  # 1 MiB
    origin.set("/h2big", body=big)
    for want in ("miss", "hit"):
        p = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-H", "Host: app.test",
                            "-D", "-", "http://127.0.0.1:%d/h2big" % port],
                           capture_output=True, timeout=30 * SLOW)
        assert p.returncode == 0, p.stderr
        assert ("x-cache: " + want).encode() in p.stdout.lower()
        assert p.stdout.endswith(big)
    # Several streams on one connection at once, all hits (python3-h2: curl
    # 7.88 fails reusing a prior-knowledge connection, cached or not).
    import socket

    import h2.config
    import h2.connection
    import h2.events
    sock = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    streams = {}
    for _ in range(5):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                (":authority", "app.test"), (":path", "/h2")], end_stream=True)
        streams[sid] = {"headers": None, "body": b"", "ended": False}
    sock.sendall(conn.data_to_send())
    while not all(st["ended"] for st in streams.values()):
        data = sock.recv(65536)
        assert data
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                streams[ev.stream_id]["headers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                streams[ev.stream_id]["body"] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                streams[ev.stream_id]["ended"] = True
        sock.sendall(conn.data_to_send())
    sock.close()
    for st in streams.values():
        assert st["headers"][b":status"] == b"200"
        assert st["headers"][b"x-cache"] == b"HIT"
        assert st["body"] == b"over h2 " * 1000
    assert origin.count("/h2") == 1


def test_reload_keeps_serving(tollgate, backend):
    origin, port, aport, tg = start(tollgate, backend)
    origin.set("/r")
    get(port, "/r")
    assert get(port, "/r")[1]["x-cache"] == "HIT"
    tg.reload(config(port, aport, 0, cache="{ttl: 1d}").replace(
        "127.0.0.1:0]", "127.0.0.1:%d]" % int(re.search(
            r"servers: \[127\.0\.0\.1:(\d+)\]", open(tg.config_path).read()).group(1))))
    # A reload starts with empty caches (entries were stored under the old
    # routes' rules); the next request fills it again.
    assert get(port, "/r")[1]["x-cache"] == "MISS"
    assert get(port, "/r")[1]["x-cache"] == "HIT"


def test_shipped_config_answers_thumbnails_from_the_cache(tollgate, tmp_path):
    """Done when: /api/files/ thumbnails are answered from the cache after
    the first request, with conf/tollgate.yaml as shipped (two workers: the
    requests of one connection stay on one worker) and the PocketBase stub."""
    from test_login_limits import USERS_ID, Gateway
    g = Gateway(tollgate, tmp_path)
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", g.https, context=g.ctx, timeout=20 * SLOW)
        path = "/api/files/%s/abc/thumb.png?thumb=100x100" % USERS_ID

        def fetch(p, headers=None):
            h = {"Host": "localhost"}
            h.update(headers or {})
            conn.request("GET", p, headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

        s1, h1, d1 = fetch(path)
        s2, h2, d2 = fetch(path)
        s3, h3, d3 = fetch(path)
        assert s1 == s2 == s3 == 200 and d1 == d2 == d3 and d1.startswith(b"stub file")
        assert h1["x-cache"] == "MISS" and h2["x-cache"] == "HIT" and h3["x-cache"] == "HIT"
        assert h2["cache-control"] == "public, max-age=86400, immutable"
        assert h2["content-type"] == "image/png"
        # Protected files and requests with credentials go to PocketBase.
        s, h, _ = fetch(path + "&token=abc")
        assert s == 200 and "x-cache" not in h
        s, h, _ = fetch(path, {"Authorization": "Bearer x"})
        assert "x-cache" not in h
        conn.close()
        _, m = g.admin_get("/metrics")
        hits = re.search(rb"^tollgate_cache_hits_total (\d+)$", m, re.M)
        assert hits and int(hits.group(1)) >= 2
    finally:
        g.close()


# ---- with compression (issue 20: "a cached compressible file is stored once
# and compressed per encoding once") --------------------------------------------


def test_a_cached_text_is_compressed_once_per_coding(tollgate, backend):
    import brotli
    import gzip
    origin, port, aport, _ = start(
        tollgate, backend, cache="{ttl: 1d}\n        compress: {order: [gzip, br, zstd]}")
    body = b'{"items":[' + b",".join(b'{"id":%d,"name":"record %d"}' % (i, i)
                                     for i in range(800)) + b"]}"
    origin.set("/api/list", headers=["Content-Type: application/json", "ETag: \"v1\""], body=body)
    s, h, d = get(port, "/api/list", headers={"Accept-Encoding": "gzip"})
    assert s == 200 and h["x-cache"] == "MISS" and h["content-encoding"] == "gzip"
    assert gzip.decompress(d) == body
    stored = metric(aport, "cache_bytes")
    # The first gzip hit makes the copy; the store grows by its size, once.
    s, h, d = get(port, "/api/list", headers={"Accept-Encoding": "gzip"})
    assert s == 200 and h["x-cache"] == "HIT" and h["content-encoding"] == "gzip"
    assert gzip.decompress(d) == body
    assert int(h["content-length"]) == len(d) < len(body) // 4  # a copy: its length is known
    assert h["vary"] == "Accept-Encoding" and h["etag"] == 'W/"v1"'
    with_gzip = metric(aport, "cache_bytes")
    assert with_gzip - stored == len(d), (stored, with_gzip, len(d))
    for _ in range(3):
        s, h, d2 = get(port, "/api/list", headers={"Accept-Encoding": "gzip"})
        assert d2 == d
    assert metric(aport, "cache_bytes") == with_gzip  # no second copy
    # Another coding: a copy of its own; identity: the stored body, with Vary.
    s, h, d = get(port, "/api/list", headers={"Accept-Encoding": "br"})
    assert h["x-cache"] == "HIT" and h["content-encoding"] == "br" and brotli.decompress(d) == body
    assert metric(aport, "cache_bytes") == with_gzip + len(d)
    s, h, d = get(port, "/api/list")
    assert h["x-cache"] == "HIT" and "content-encoding" not in h and d == body
    assert h["vary"] == "Accept-Encoding" and h["etag"] == '"v1"'
    assert origin.count("/api/list") == 1
    # A HEAD and a 304 from the entry carry no body, compressed or not.
    s, h, d = get(port, "/api/list", method="HEAD", headers={"Accept-Encoding": "gzip"})
    assert s == 200 and d == b""
    s, h, d = get(port, "/api/list", headers={"Accept-Encoding": "gzip", "If-None-Match": '"v1"'})
    assert s == 304 and d == b""


def test_a_large_cached_text_is_compressed_as_it_is_sent(tollgate, backend):
    """Over the copy limit (1 MiB) each hit compresses as it goes: chunked,
    and every byte intact."""
    import gzip
    origin, port, aport, _ = start(
        tollgate, backend, cache="{ttl: 1d, max_entry_size: 8MiB}\n        compress: {order: [gzip]}")
    body = b"".join(b"line %07d of a large export\n" % i for i in range(60000))  # ~1.7 MB
    origin.set("/export.txt", headers=["Content-Type: text/plain"], body=body)
    assert get(port, "/export.txt")[2] == body  # stored (identity client)
    before = metric(aport, "cache_bytes")
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20 * SLOW)
    c.request("GET", "/export.txt", headers={"Host": "app.test", "Accept-Encoding": "gzip"})
    r = c.getresponse()
    d = r.read()
    c.close()
    assert r.getheader("x-cache") == "HIT" and r.getheader("content-encoding") == "gzip"
    assert r.getheader("content-length") is None and gzip.decompress(d) == body
    assert metric(aport, "cache_bytes") == before  # no copy kept
    assert origin.count("/export.txt") == 1


def test_x_cache_header_off(tollgate, backend):
    origin, port, aport, _ = start(tollgate, backend, cache="{ttl: 1d, x_cache_header: false}")
    origin.set("/a.png", headers=["Content-Type: image/png"], body=b"x" * 100)
    s1, h1, _ = get(port, "/a.png")
    s2, h2, _ = get(port, "/a.png")
    assert s1 == s2 == 200 and "age" in h2  # the second is a hit
    assert "x-cache" not in h1 and "x-cache" not in h2
    assert origin.count("/a.png") == 1
