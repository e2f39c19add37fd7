"""Response compression (issue 20): Accept-Encoding negotiation, the
responses never compressed, streaming (each piece of a slow chunked JSON
response arrives before the next is written), what the client decodes
equals what the backend sent (HTTP/1.1 and HTTP/2, gzip, br and zstd),
a 1 GiB compressible download in flat memory, the access log and metrics."""

import gzip
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
import zlib

import brotli
import pytest

from conftest import SLOW, free_port, read_http_request, requests_on, status_of


def config(listen_port, backend_port, site_compress="true", route_extra="", extra=""):
    return """
workers: 1
listen:
  - address: 127.0.0.1:%d
    h2c: true
upstreams:
  app:
    servers: [127.0.0.1:%d]
sites:
  - hosts: [app.test]
    compress: %s
    routes:
      - path: /off/
        upstream: app
        compress: false
      - path: /gzip-only/
        upstream: app
        compress: {order: [gzip], min_length: 0}
%s
      - path: /
        upstream: app
log:
  access: stdout
  access_flush: 50ms
%s
""" % (listen_port, backend_port, site_compress, route_extra, extra)


def unzstd(data):
    p = subprocess.run(["zstd", "-d", "-c", "-q"], input=data, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def decode(encoding, data):
    if encoding is None:
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "br":
        return brotli.decompress(data)
    if encoding == "zstd":
        return unzstd(data)
    raise AssertionError("unexpected encoding %r" % encoding)


def read_response(sock, method="GET", timeout=10.0):
    """One HTTP/1.1 response: (status, {lower name: [values]}, body), the
    body de-chunked (or read to its length, or to the close)."""
    sock.settimeout(timeout * SLOW)
    data = b""
    while b"\r\n\r\n" not in data:
        c = sock.recv(65536)
        if not c:
            raise AssertionError("closed before a head: %r" % data)
        data += c
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        k, v = l.split(":", 1)
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    if method == "HEAD" or status in (204, 304) or status < 200:
        return status, headers, b""
    if "chunked" in ",".join(headers.get("transfer-encoding", [])):
        body = b""
        buf = rest
        while True:
            while b"\r\n" not in buf:
                buf += sock.recv(65536)
            size_line, buf = buf.split(b"\r\n", 1)
            n = int(size_line.split(b";")[0], 16)
            while len(buf) < n + 2:
                c = sock.recv(65536)
                if not c:
                    raise AssertionError("cut inside a chunk")
                buf += c
            if n == 0:
                return status, headers, body
            body += buf[:n]
            buf = buf[n + 2:]
    if "content-length" in headers:
        n = int(headers["content-length"][0])
        while len(rest) < n:
            c = sock.recv(65536)
            if not c:
                break
            rest += c
        return status, headers, rest
    while True:
        c = sock.recv(65536)
        if not c:
            return status, headers, rest
        rest += c


def fetch(port, path, ae=None, method="GET", extra=b""):
    s = socket.create_connection(("127.0.0.1", port))
    req = b"%s %s HTTP/1.1\r\nHost: app.test\r\n" % (method.encode(), path.encode())
    if ae is not None:
        req += b"Accept-Encoding: %s\r\n" % ae.encode()
    s.sendall(req + extra + b"\r\n")
    try:
        return read_response(s, method)
    finally:
        s.close()


JSON = json.dumps([{"id": "rec%05d" % i, "title": "hello world", "done": i % 2 == 0}
                   for i in range(400)]).encode()


def fixed_backend(status=200, headers=b"Content-Type: application/json\r\n", body=JSON,
                  chunked=False):
    def handler(sock, be):
        for head, hdrs, _ in requests_on(sock):
            be.record((head, hdrs))
            out = b"HTTP/1.1 %d X\r\n%s" % (status, headers)
            if status in (204, 304) or head.startswith("HEAD"):
                out += b"Content-Length: %d\r\n\r\n" % len(body) if status != 204 else b"\r\n"
            elif chunked:
                out += b"Transfer-Encoding: chunked\r\n\r\n"
                for i in range(0, len(body), 3000):
                    out += b"%x\r\n%s\r\n" % (len(body[i:i + 3000]), body[i:i + 3000])
                out += b"0\r\n\r\n"
            else:
                out += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            sock.sendall(out)
    return handler


@pytest.mark.parametrize("ae,expected", [
    (None, None),
    ("", None),
    ("gzip", "gzip"),
    ("x-gzip", "gzip"),
    ("br", "br"),
    ("zstd", "zstd"),
    ("gzip, deflate, br", "br"),
    ("gzip, deflate, br, zstd", "zstd"),
    ("zstd;q=0, br;q=0.5, gzip", "gzip"),
    ("zstd;q=0.5, br;q=0.5, gzip;q=0.4", "zstd"),
    ("gzip;q=0", None),
    ("*", "zstd"),
    ("*;q=0", None),
    ("zstd;q=0, *", "br"),
    ("identity", None),
    ("identity;q=0", None),
    ("identity;q=0, gzip", "gzip"),
    ("deflate, compress", None),
])
def test_negotiation(tollgate, backend, ae, expected):
    b = backend(fixed_backend(headers=b"Content-Type: application/json\r\nETag: \"v1\"\r\n"))
    port = free_port()
    tollgate(config(port, b.port))
    status, headers, body = fetch(port, "/api/list", ae)
    assert status == 200
    assert headers.get("content-encoding", [None])[0] == expected
    assert decode(expected, body) == JSON
    # Compressible either way: caches must keep the variants apart.
    assert "Accept-Encoding" in headers.get("vary", [])
    if expected is None:
        assert headers["content-length"] == [str(len(JSON))]
        assert headers["etag"] == ['"v1"']
    else:
        assert "content-length" not in headers
        assert headers["transfer-encoding"] == ["chunked"]
        assert headers["etag"] == ['W/"v1"']
        assert len(body) < len(JSON) / 3


def test_route_order_min_length_and_off(tollgate, backend):
    b = backend(fixed_backend(body=b"x" * 200))
    port = free_port()
    tollgate(config(port, b.port))
    # Site: below min_length (1000): as sent, no Vary.
    status, headers, body = fetch(port, "/small", "gzip")
    assert "content-encoding" not in headers and body == b"x" * 200
    assert "vary" not in headers
    # The route's min_length 0 and order [gzip]: gzip even for zstd first.
    status, headers, body = fetch(port, "/gzip-only/x", "zstd, br, gzip")
    assert headers["content-encoding"] == ["gzip"]
    assert gzip.decompress(body) == b"x" * 200
    status, headers, body = fetch(port, "/gzip-only/x", "zstd, br")
    assert "content-encoding" not in headers and body == b"x" * 200
    # compress: false on a route.
    status, headers, body = fetch(port, "/off/big", "gzip")
    assert "content-encoding" not in headers and "vary" not in headers


@pytest.mark.parametrize("encoding,low,high", [("gzip", 1, 9), ("br", 1, 9), ("zstd", 1, 15)])
def test_the_configured_level_is_the_level_used(tollgate, backend, encoding, low, high):
    """`levels` reaches the encoder: the higher level makes the same body
    smaller, and both decode to it."""
    body = corpus()["text"]
    sizes = []
    for level in (low, high):
        b = backend(fixed_backend(body=body))
        port = free_port()
        tollgate(config(port, b.port, site_compress="{order: [%s], levels: {%s: %d}}"
                        % (encoding, encoding, level)))
        status, headers, data = fetch(port, "/list", ae=encoding)
        assert status == 200 and headers["content-encoding"] == [encoding]
        assert decode(encoding, data) == body
        sizes.append(len(data))
    assert sizes[1] < sizes[0], sizes  # equal if the level were not applied


def test_off_by_default(tollgate, backend):
    b = backend(fixed_backend())
    port = free_port()
    tollgate(config(port, b.port, site_compress="false"))
    status, headers, body = fetch(port, "/api/list", "gzip, br, zstd")
    assert "content-encoding" not in headers and body == JSON
    assert headers["content-length"] == [str(len(JSON))]


@pytest.mark.parametrize("case", ["sse", "encoded", "no-transform", "head", "204", "304",
                                  "range", "type", "no-type", "content-range"])
def test_never_compressed(tollgate, backend, case):
    big = b"data: " + b"y" * 3000 + b"\n\n"
    hs = {
        "sse": (200, b"Content-Type: text/event-stream\r\n", big),
        "encoded": (200, b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n",
                    gzip.compress(JSON)),
        "no-transform": (200, b"Content-Type: application/json\r\n"
                         b"Cache-Control: public, No-Transform\r\n", JSON),
        "head": (200, b"Content-Type: application/json\r\n", JSON),
        "204": (204, b"Content-Type: application/json\r\n", b""),
        "304": (304, b"Content-Type: application/json\r\nETag: \"v1\"\r\n", JSON),
        "range": (206, b"Content-Type: application/json\r\n"
                  b"Content-Range: bytes 0-%d/99999\r\n" % (len(JSON) - 1), JSON),
        "content-range": (200, b"Content-Type: application/json\r\n"
                          b"Content-Range: bytes 0-%d/99999\r\n" % (len(JSON) - 1), JSON),
        "type": (200, b"Content-Type: image/png\r\n", JSON),
        "no-type": (200, b"", JSON),
    }
    status, hdrs, body = hs[case]
    b = backend(fixed_backend(status, hdrs, body))
    port = free_port()
    tollgate(config(port, b.port))
    method = "HEAD" if case == "head" else "GET"
    extra = b"Range: bytes=0-\r\n" if case == "range" else b""
    got_status, headers, got = fetch(port, "/x", "gzip, br, zstd", method=method, extra=extra)
    assert got_status == status
    assert headers.get("content-encoding") == (["gzip"] if case == "encoded" else None)
    if method == "GET" and status not in (204, 304):
        assert got == body  # byte for byte
    if case == "head":
        assert headers["content-length"] == [str(len(JSON))]
    if case == "304":
        assert headers["etag"] == ['"v1"']


def test_sse_stays_immediate(tollgate, backend):
    """Each event reaches the client before the backend writes the next,
    byte for byte, even when the client accepts every coding."""
    got_event = threading.Event()

    def handler(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(3):
            ev = b"data: event %d %s\n\n" % (i, b"z" * 2000)
            sock.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
            assert got_event.wait(5 * SLOW)
            got_event.clear()
        sock.sendall(b"0\r\n\r\n")
    b = backend(handler)
    port = free_port()
    tollgate(config(port, b.port))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /events HTTP/1.1\r\nHost: app.test\r\nAccept-Encoding: gzip, br, zstd\r\n\r\n")
    s.settimeout(5 * SLOW)
    data = b""
    for i in range(3):
        want = b"data: event %d %s\n\n" % (i, b"z" * 2000)
        while want not in data:
            c = s.recv(65536)
            assert c, data
            data += c
        got_event.set()
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"content-encoding" not in head
    s.close()


def test_websocket_tunnel_not_compressed(tollgate, backend):
    def handler(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nContent-Type: text/plain\r\n"
                     b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
        # An unmasked text frame from the server: raw bytes, as sent.
        payload = b"t" * 100
        sock.sendall(b"\x81" + bytes([len(payload)]) + payload)
        time.sleep(1 * SLOW)
    b = backend(handler)
    port = free_port()
    tollgate(config(port, b.port))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\nAccept-Encoding: gzip\r\n\r\n")
    s.settimeout(5 * SLOW)
    data = b""
    frame = b"\x81\x64" + b"t" * 100
    while frame not in data:
        c = s.recv(65536)
        assert c, data
        data += c
    assert status_of(data) == 101
    assert b"content-encoding" not in data.split(b"\r\n\r\n")[0].lower()
    s.close()


def slow_json_handler(pieces, arrived):
    def handler(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for p in pieces:
            sock.sendall(b"%x\r\n%s\r\n" % (len(p), p))
            if not arrived.wait(5 * SLOW):
                be.record("piece not decoded in time: %r" % p)
                return
            arrived.clear()
        sock.sendall(b"0\r\n\r\n")
    return handler


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_slow_json_stream_arrives_as_written(tollgate, backend, encoding):
    """Each piece of a slow chunked JSON response decodes at the client
    before the backend writes the next one."""
    pieces = [b'[{"id":%d,"name":"item %d","tags":["a","b","c"]}' % (i, i) if i == 0 else
              b',{"id":%d,"name":"item %d","tags":["a","b","c"]}' % (i, i) for i in range(6)]
    pieces.append(b"]")
    arrived = threading.Event()
    b = backend(slow_json_handler(pieces, arrived))
    port = free_port()
    tollgate(config(port, b.port))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /stream HTTP/1.1\r\nHost: app.test\r\nAccept-Encoding: %s\r\n\r\n"
              % encoding.encode())
    s.settimeout(5 * SLOW)
    dec = zlib.decompressobj(wbits=31) if encoding == "gzip" else brotli.Decompressor()
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert b"content-encoding: " + encoding.encode() in head.lower()
    plain = b""
    expected = b""
    for p in pieces:
        expected += p
        # De-chunk and decode what arrives until this piece is whole.
        while plain != expected:
            while True:
                if b"\r\n" in buf:
                    size_line, rest = buf.split(b"\r\n", 1)
                    n = int(size_line, 16)
                    if len(rest) >= n + 2:
                        data, buf = rest[:n], rest[n + 2:]
                        break
                c = s.recv(65536)
                assert c, "closed with %r decoded" % plain
                buf += c
            plain += dec.decompress(data) if encoding == "gzip" else dec.process(data)
            assert expected.startswith(plain), plain
        arrived.set()
    s.close()
    assert not b.requests, b.requests


def corpus():
    rnd = os.urandom(70000)
    return {
        "json": JSON * 20,
        "text": b"".join(b"line %d of some text\n" % i for i in range(20000)),
        "random": rnd,  # incompressible: it grows a little, still decodes
        "mixed": JSON + rnd[:5000] + JSON,
        "one-kb": b"a" * 1000,
        "big": b"0123456789abcdef" * 300000,  # 4.8 MB: many buffers, backpressure
    }


@pytest.mark.parametrize("chunked", [False, True])
def test_corpus_round_trips_http1(tollgate, backend, chunked):
    bodies = corpus()

    def handler(sock, be):
        for head, hdrs, _ in requests_on(sock):
            name = head.split(" ")[1].strip("/")
            body = bodies[name]
            out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            if chunked:
                out += b"Transfer-Encoding: chunked\r\n\r\n"
                for i in range(0, len(body), 7777):
                    out += b"%x\r\n%s\r\n" % (len(body[i:i + 7777]), body[i:i + 7777])
                out += b"0\r\n\r\n"
            else:
                out += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            sock.sendall(out)
    b = backend(handler)
    port = free_port()
    tollgate(config(port, b.port))
    for encoding in ("gzip", "br", "zstd"):
        for name, body in bodies.items():
            status, headers, got = fetch(port, "/" + name, encoding)
            assert status == 200
            assert headers["content-encoding"] == [encoding], name
            assert decode(encoding, got) == body, (encoding, name)


def test_corpus_round_trips_http2(tollgate, backend):
    bodies = corpus()

    def handler(sock, be):
        for head, hdrs, _ in requests_on(sock):
            body = bodies[head.split(" ")[1].strip("/")]
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    b = backend(handler)
    port = free_port()
    tollgate(config(port, b.port))
    for encoding in ("gzip", "br", "zstd"):
        for name, body in bodies.items():
            p = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "/dev/stderr",
                                "-H", "Accept-Encoding: " + encoding,
                                "--resolve", "app.test:%d:127.0.0.1" % port,
                                "http://app.test:%d/%s" % (port, name)],
                               capture_output=True, timeout=60 * SLOW)
            assert p.returncode == 0, p.stderr
            head = p.stderr.decode().lower()
            assert head.startswith("http/2 200"), head
            assert "content-encoding: " + encoding in head, head
            assert "content-length" not in head
            assert decode(encoding, p.stdout) == body, (encoding, name)


GIB = 1 << 30


def test_one_gib_compressible_download_in_flat_memory(tollgate, backend):
    block = (b"0123456789abcdef" * 65536)  # 1 MiB

    def handler(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\n\r\n" % GIB)
        for _ in range(GIB // len(block)):
            sock.sendall(block)
    b = backend(handler)
    port = free_port()
    tg = tollgate(config(port, b.port, site_compress="{levels: {gzip: 1}}"))
    base = tg.rss_kb()
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(tg.rss_kb())
            time.sleep(0.05)
    t = threading.Thread(target=sample)
    t.start()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /big HTTP/1.1\r\nHost: app.test\r\nAccept-Encoding: gzip\r\n\r\n")
    s.settimeout(60 * SLOW)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert b"content-encoding: gzip" in head.lower()
    dec = zlib.decompressobj(wbits=31)
    plain = 0
    wire = 0
    done = False
    while not done:
        # De-chunk incrementally.
        while True:
            if b"\r\n" in buf:
                size_line, rest = buf.split(b"\r\n", 1)
                n = int(size_line, 16)
                if n == 0:
                    done = True
                    break
                if len(rest) >= n + 2:
                    data, buf = rest[:n], rest[n + 2:]
                    break
            c = s.recv(1 << 20)
            assert c, "closed after %d bytes" % plain
            buf += c
        if done:
            break
        wire += len(data)
        out = dec.decompress(data)
        plain += len(out)
        while dec.unconsumed_tail:
            plain += len(dec.decompress(dec.unconsumed_tail))
    s.close()
    stop.set()
    t.join()
    assert plain == GIB
    assert wire < GIB / 50
    assert max(samples) - base < 32 * 1024, (base, max(samples))


def test_access_log_and_metrics(tollgate, backend):
    b = backend(fixed_backend())
    port = free_port()
    tg = tollgate(config(port, b.port))
    status, headers, body = fetch(port, "/a", "gzip")
    assert headers["content-encoding"] == ["gzip"]
    fetch(port, "/b", "br")
    fetch(port, "/c")
    lines = tg.access_lines(wait_for=3)
    byp = {l["path"]: l for l in lines}
    assert byp["/a"]["encoding"] == "gzip"
    assert byp["/a"]["bytes_uncompressed"] == len(JSON)
    assert byp["/a"]["bytes_compressed"] == len(body)
    assert byp["/a"]["bytes_out"] > len(body)  # the head and chunk framing too
    assert byp["/b"]["encoding"] == "br"
    assert "encoding" not in byp["/c"] and "bytes_uncompressed" not in byp["/c"]
    m = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % tg.admin_port,
                               timeout=5 * SLOW).read().decode()
    assert 'tollgate_compressed_responses_total{encoding="gzip"} 1' in m
    assert 'tollgate_compressed_responses_total{encoding="br"} 1' in m
    assert 'tollgate_compressed_responses_total{encoding="zstd"} 0' in m
    assert 'tollgate_compression_bytes_in_total{encoding="gzip"} %d' % len(JSON) in m
    assert 'tollgate_compression_bytes_out_total{encoding="gzip"} %d' % len(body) in m
    assert 'tollgate_compression_bytes_saved_total{encoding="gzip"} %d' % (
        len(JSON) - len(body)) in m


def test_shipped_config_compresses_pocketbase_lists_not_sse(tollgate, tmp_path):
    """Done-when of issue 20: through conf/tollgate.yaml (as shipped, ports
    moved) a PocketBase list response arrives compressed per
    Accept-Encoding, and the realtime SSE stream is untouched and
    immediate."""
    import ssl
    from test_login_limits import Gateway
    gw = Gateway(tollgate, tmp_path)
    try:
        # The stub keeps no created records: a customer list of 25 is put
        # in place (the customers collection lists for superusers only).
        from pocketbase_stub import _Record
        customers = next(c for c in gw.stub.collections if c.name == "customers")
        customers.records.extend(_Record("cust%011d" % i, "customer%d@example.com" % i, "pw",
                                         name="Customer %d" % i) for i in range(25))
        auth = {"Authorization": gw.stub.token("admin@example.com")}
        path = "/api/collections/customers/records?perPage=50"
        status, headers, plain = gw.request("GET", path, headers=auth)
        assert status == 200 and "content-encoding" not in headers
        assert len(json.loads(plain)["items"]) == 26
        for ae, enc in (("gzip", "gzip"), ("br", "br"), ("zstd", "zstd"),
                        ("gzip, deflate, br, zstd", "zstd"), ("gzip, br", "br")):
            status, headers, body = gw.request("GET", path, headers=dict(auth, **{
                "Accept-Encoding": ae}))
            assert status == 200
            assert headers.get("content-encoding") == enc, (ae, headers)
            assert "accept-encoding" in headers["vary"].lower()
            assert json.loads(decode(enc, body)) == json.loads(plain)
            assert len(body) < len(plain)
        # SSE: the connect event arrives at once, as sent.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.https)))
        start = time.time()
        s.sendall(b"GET /api/realtime HTTP/1.1\r\nHost: localhost\r\n"
                  b"Accept-Encoding: gzip, br, zstd\r\n\r\n")
        s.settimeout(5 * SLOW)
        data = b""
        while b"event:PB_CONNECT\ndata:{" not in data:
            c = s.recv(65536)
            assert c, data
            data += c
        took = time.time() - start
        head = data.split(b"\r\n\r\n")[0].lower()
        assert b"content-type: text/event-stream" in head
        assert b"content-encoding" not in head
        assert took < 1.0 * SLOW, took
        s.close()
    finally:
        gw.close()


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_slow_json_stream_arrives_as_written_http2(tollgate, backend, encoding):
    """The same over HTTP/2 (h2c, curl): DATA frames carry each flush."""
    pieces = [b'{"n":%d,"text":"piece %d of a slow stream"}\n' % (i, i) for i in range(5)]
    arrived = threading.Event()
    b = backend(slow_json_handler(pieces, arrived))
    port = free_port()
    tollgate(config(port, b.port))
    p = subprocess.Popen(["curl", "-sS", "-N", "--http2-prior-knowledge",
                          "-H", "Accept-Encoding: " + encoding,
                          "--resolve", "app.test:%d:127.0.0.1" % port,
                          "http://app.test:%d/stream" % port],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        dec = zlib.decompressobj(wbits=31) if encoding == "gzip" else brotli.Decompressor()
        plain, expected = b"", b""
        fd = p.stdout.fileno()
        for piece in pieces:
            expected += piece
            deadline = time.time() + 5 * SLOW
            while plain != expected:
                assert time.time() < deadline, plain
                data = os.read(fd, 65536)
                assert data, plain
                plain += dec.decompress(data) if encoding == "gzip" else dec.process(data)
                assert expected.startswith(plain), plain
            arrived.set()
        rest = p.stdout.read()
        plain += dec.decompress(rest) if encoding == "gzip" else dec.process(rest)
        assert plain == expected
        assert p.wait(10 * SLOW) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not b.requests, b.requests


def test_http10_client_gets_close_delimited_compressed_body(tollgate, backend):
    b = backend(fixed_backend(chunked=True))
    port = free_port()
    tollgate(config(port, b.port))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /x HTTP/1.0\r\nHost: app.test\r\nAccept-Encoding: gzip\r\n\r\n")
    status, headers, body = read_response(s)
    s.close()
    assert status == 200
    assert headers["content-encoding"] == ["gzip"]
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert gzip.decompress(body) == JSON


def test_slow_reader_backpressure_keeps_memory_flat(tollgate, backend):
    """An incompressible 64 MiB body to a client that reads slowly: the
    compressed output waits in one buffer, the backend is read no faster
    than the client takes bytes, and what arrives decodes to what was
    sent."""
    block = os.urandom(1 << 20)  # repeats lie beyond every window: incompressible
    total = 64 << 20

    def handler(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % total)
        try:
            for _ in range(total // len(block)):
                sock.sendall(block)
        except OSError:
            pass
    b = backend(handler)
    port = free_port()
    tg = tollgate(config(port, b.port, site_compress="{types: [application/octet-stream]}"))
    base = tg.rss_kb()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /blob HTTP/1.1\r\nHost: app.test\r\nAccept-Encoding: gzip\r\n\r\n")
    s.settimeout(30 * SLOW)
    # Stall: the gateway must stop reading the backend, not buffer it.
    time.sleep(1.0)
    stalled = tg.rss_kb()
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert b"content-encoding: gzip" in head.lower()
    dec = zlib.decompressobj(wbits=31)
    got = 0
    prefix_ok = True
    peak = stalled
    n = 0
    while True:
        if b"\r\n" in buf:
            size_line, rest = buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            if size == 0:
                break
            if len(rest) >= size + 2:
                out = dec.decompress(rest[:size])
                if got < len(block):
                    k = min(len(out), len(block) - got)
                    prefix_ok &= out[:k] == block[got:got + k]
                got += len(out)
                buf = rest[size + 2:]
                continue
        c = s.recv(1 << 16)
        assert c, "closed after %d bytes" % got
        buf += c
        n += 1
        if n % 200 == 0:
            peak = max(peak, tg.rss_kb())
            time.sleep(0.002)  # a slow reader
    s.close()
    assert got == total and prefix_ok
    assert stalled - base < 8 * 1024, (base, stalled)
    assert peak - base < 32 * 1024, (base, peak)
