"""Strict request parsing at the front door: every malformed head gets the
right 4xx and the backend sees nothing; limits give 414/431; a slow head
gives 408; pipelined requests are answered in order."""

import socket
import time

import pytest

from conftest import SLOW, basic_config, free_port, raw, status_of

H = b"Host: app.test\r\n"

BAD_400 = [
    ("te_and_cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("te_not_chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n"),
    ("te_chunked_not_final", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n"),
    ("te_identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n"),
    ("cl_differing", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("cl_duplicate_same", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
    ("cl_signed", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello"),
    ("cl_negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n"),
    ("cl_list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello"),
    ("cl_hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello"),
    ("obs_fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n c\r\n\r\n"),
    ("bare_cr_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rc\r\n\r\n"),
    ("bare_lf_line", b"GET / HTTP/1.1\n" + H + b"\r\n"),
    ("bare_lf_end", b"GET / HTTP/1.1\r\nHost: app.test\n\n"),
    ("nul_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n"),
    ("ctl_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x01c\r\n\r\n"),
    ("space_before_colon", b"GET / HTTP/1.1\r\n" + H + b"X-A : b\r\n\r\n"),
    ("tab_before_colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\t: b\r\n\r\n"),
    ("two_hosts", b"GET / HTTP/1.1\r\n" + H + b"Host: other.test\r\n\r\n"),
    ("no_host_11", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n"),
    ("absolute_form_host_differs", b"GET http://other.test/ HTTP/1.1\r\n" + H + b"\r\n"),
    ("bad_chunk_size", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("chunk_size_overflow", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n"),
    ("double_space_request_line", b"GET  / HTTP/1.1\r\n" + H + b"\r\n"),
    ("lowercase_version", b"GET / http/1.1\r\n" + H + b"\r\n"),
    ("bad_escape_in_path", b"GET /a%zz HTTP/1.1\r\n" + H + b"\r\n"),
    ("encoded_slash", b"GET /_%2F HTTP/1.1\r\n" + H + b"\r\n"),
    ("encoded_nul", b"GET /a%00b HTTP/1.1\r\n" + H + b"\r\n"),
    ("te_on_http10", b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
]


@pytest.fixture
def gateway(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="""
client:
  header_timeout: 1s
  max_request_line: 1KiB
  max_head: 4KiB
  max_headers: 20
"""))
    return port, b


@pytest.mark.parametrize("name,data", BAD_400, ids=[n for n, _ in BAD_400])
def test_malformed_request_gets_400(gateway, name, data):
    port, b = gateway
    resp = raw(port, data)
    assert status_of(resp) == 400, (name, resp)
    assert b"Connection: close" in resp
    assert b.requests == [], "the backend must not see a malformed request"


def test_unsupported_version_505(gateway):
    port, b = gateway
    assert status_of(raw(port, b"GET / HTTP/2.0\r\n" + H + b"\r\n")) == 505
    assert b.requests == []


def test_long_request_line_414(gateway):
    port, b = gateway
    resp = raw(port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n" + H + b"\r\n")
    assert status_of(resp) == 414
    # Detected before the line ends: no need to send the rest.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /" + b"a" * 1500)
    s.settimeout(3 * SLOW)
    assert status_of(s.recv(4096)) == 414
    s.close()


def test_large_head_431(gateway):
    port, b = gateway
    big = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 400) for i in range(15))
    assert status_of(raw(port, b"GET / HTTP/1.1\r\n" + H + big + b"\r\n")) == 431
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    assert status_of(raw(port, b"GET / HTTP/1.1\r\n" + H + many + b"\r\n")) == 431
    assert b.requests == []


def test_slow_head_408(gateway):
    port, b = gateway
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: app")
    t0 = time.time()
    s.settimeout(5 * SLOW)
    data = s.recv(4096)
    assert status_of(data) == 408
    assert 0.8 < time.time() - t0 < 3 * SLOW
    s.close()
    # A connection that never sends a byte is closed after the same time.
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5 * SLOW)
    t0 = time.time()
    assert s.recv(4096) in (b"",) or status_of(s.recv(4096)) == 408
    assert time.time() - t0 < 3 * SLOW
    s.close()


def test_other_connections_unaffected_by_bad_ones(gateway):
    port, b = gateway
    bad = socket.create_connection(("127.0.0.1", port))
    bad.sendall(b"GET / HTTP/1.1\r\nHost: app")  # stalls
    for _ in range(5):
        resp = raw(port, b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        assert status_of(resp) == 200
    bad.close()


def test_pipelined_requests_answered_in_order(gateway):
    port, b = gateway
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\n%s\r\n" % (i, H) for i in range(20))
    reqs += b"GET /last HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    resp = raw(port, reqs, timeout=10)
    assert resp.count(b"HTTP/1.1 200 OK") == 21
    order = [line.split(" ")[1] for line in
             (h.split("\r\n")[0] for h, _, _ in b.requests)]
    assert order == ["/p%d" % i for i in range(20)] + ["/last"]
    # Each response carries the backend's echo of its own request line.
    positions = [resp.find(b"GET /p%d HTTP" % i) for i in range(20)]
    assert positions == sorted(positions) and -1 not in positions


def test_pipelined_error_after_good_request(gateway):
    port, b = gateway
    resp = raw(port, b"GET /ok HTTP/1.1\r\n" + H + b"\r\n" + b"GET / HTTP/1.1\r\nX-A : b\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 400" in resp


def test_connect_and_trace_refused(gateway):
    port, b = gateway
    assert status_of(raw(port, b"TRACE / HTTP/1.1\r\n" + H + b"\r\n")) == 405
    assert status_of(raw(port, b"CONNECT app.test:443 HTTP/1.1\r\n" + H + b"\r\n")) in (400, 405)
    assert b.requests == []


def test_absolute_form_uses_its_authority(gateway):
    port, b = gateway
    resp = raw(port, b"GET http://app.test/abs?x=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert status_of(resp) == 200
    assert b.requests[0][0].split("\r\n")[0] == "GET /abs?x=1 HTTP/1.1"


def test_http10_keepalive_and_close(gateway):
    port, b = gateway
    resp = raw(port, b"GET / HTTP/1.0\r\nHost: app.test\r\n\r\n")
    assert status_of(resp) == 200 and b"Connection: close" in resp
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(3 * SLOW)
    s.sendall(b"GET / HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n")
    first = s.recv(65536)
    assert b"Connection: keep-alive" in first
    s.sendall(b"GET / HTTP/1.0\r\nHost: app.test\r\n\r\n")
    second = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        second += chunk
    assert status_of(second) == 200
    s.close()
