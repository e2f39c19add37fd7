"""Answers tollgate makes itself (issue 23, item 5):

(a) plain HTTP sent to a TLS port got an empty reply (curl error 52); now a
    400 that names the https:// URL, as nginx answers, and TLS handshakes
    (prompt, late or split) are untouched;
(b) tollgate's own answers (308, 400, 403, 404, 405, 413, 421, 429, 502,
    503, 504, the admin listener's) carried no Date; now every answer has
    exactly one (a backend's own is kept);
(c) error bodies in the form a site or route asks for (`errors: text`,
    `json`, `html`), the 429 included (it was JSON while 403/404/502 were
    text/plain), and conf/tollgate.yaml's API routes answer JSON."""

import email.utils
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import SLOW, free_port, get, raw, requests_on, status_of
from test_tls import PKI, backend_ok, https_get


@pytest.fixture
def pki(tmp_path):
    return PKI(tmp_path)


def head_of(resp):
    """(status, {lower name: [values]}, body) of a raw HTTP/1.1 answer."""
    head, _, body = resp.partition(b"\r\n\r\n")
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        k, _, v = line.partition(":")
        fields.setdefault(k.strip().lower(), []).append(v.strip())
    return status_of(resp), fields, body


def tls_config(port, backend_port, cert, extra=""):
    return """
workers: 1
listen:
  - address: 127.0.0.1:%d
    tls: true
tls:
  handshake_timeout: 2s
  certificates:
    - {cert: %s, key: %s}
admin: {listen: "off"}
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: [a.test, b.test, localhost]
    routes: [{path: /, upstream: app}]
%s
""" % (port, cert[0], cert[1], backend_port, extra)


# ---- (a) plain HTTP on a TLS port ----------------------------------------------


@pytest.fixture
def tls_gateway(tollgate, backend, pki):
    b = backend(backend_ok)
    port = free_port()
    tollgate(tls_config(port, b.port, pki.leaf("a", ["a.test", "localhost"])))
    return port, pki


def test_plain_http_to_tls_port_gets_400_naming_https(tls_gateway):
    # Issue 23: the answer was empty (the handshake failed, the socket closed).
    port, _ = tls_gateway
    resp = raw(port, b"GET /x HTTP/1.1\r\nHost: localhost:%d\r\nUser-Agent: t\r\n\r\n" % port)
    status, h, body = head_of(resp)
    assert status == 400, resp
    assert resp.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert h["connection"] == ["close"]
    assert h["content-type"] == ["text/plain; charset=utf-8"]
    assert len(h["date"]) == 1
    assert body == b"This port speaks HTTPS: use https://localhost:%d/\n" % port
    assert int(h["content-length"][0]) == len(body)


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.0\r\n\r\n",                                  # no Host
    b"POST /api HTTP/1.1\r\nHost: <script>\r\nContent-Length: 2\r\n\r\nhi",  # a Host that is no name
    b"OPTIONS * HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
])
def test_plain_http_without_a_usable_host_names_the_address(tls_gateway, request_bytes):
    port, _ = tls_gateway
    status, h, body = head_of(raw(port, request_bytes))
    assert status == 400
    assert body == b"This port speaks HTTPS: use https://127.0.0.1:%d/\n" % port


def test_curl_gets_an_answer_not_error_52(tls_gateway):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    port, _ = tls_gateway
    p = subprocess.run(["curl", "-s", "-i", "http://localhost:%d/" % port],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.returncode  # was 52: empty reply from server
    assert p.stdout.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"use https://localhost:%d/" % port in p.stdout


def test_tls_handshakes_are_not_disturbed(tls_gateway):
    port, pki = tls_gateway
    ctx = ssl.create_default_context(cafile=pki.ca)
    # Prompt.
    out, _, _ = https_get(port, "a.test", servername="a.test", ctx=ctx)
    assert status_of(out) == 200
    # A client that waits before its hello (the peek finds nothing at first).
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    time.sleep(0.3)
    ts = ctx.wrap_socket(s, server_hostname="a.test")
    ts.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    assert status_of(ts.recv(4096)) == 200
    ts.close()

    # A hello that arrives one byte first, then the rest.
    class Split(ssl.SSLObject):
        pass
    inc, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, outgoing, server_hostname="a.test")
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16"
    s.sendall(hello[:1])
    time.sleep(0.2)
    s.sendall(hello[1:])
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = outgoing.read()
            if data:
                s.sendall(data)
            chunk = s.recv(65536)
            assert chunk, "closed during the handshake"
            inc.write(chunk)
    s.sendall(outgoing.read())
    obj.write(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    s.sendall(outgoing.read())
    got = b""
    while b"\r\n\r\n" not in got:
        try:
            got += obj.read(65536)
        except ssl.SSLWantReadError:
            chunk = s.recv(65536)
            assert chunk
            inc.write(chunk)
    assert status_of(got) == 200
    s.close()


def test_plain_http_behind_proxy_protocol(tollgate, backend, pki):
    """After a PROXY header, the first byte of what follows is looked at."""
    b = backend(backend_ok)
    port = free_port()
    tollgate(tls_config(port, b.port, pki.leaf("a", ["a.test"]),
                        extra="trusted_proxies: [127.0.0.1/32]\n").replace(
        "    tls: true\n", "    tls: true\n    proxy_protocol: true\n", 1))
    resp = raw(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 443\r\n"
                     b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    status, _, body = head_of(resp)
    assert status == 400 and body == b"This port speaks HTTPS: use https://a.test:%d/\n" % port


# ---- (b) Date on every answer ---------------------------------------------------


def silent_handler(sock, be):
    """Reads a request and never answers."""
    for head, headers, body in requests_on(sock):
        be.record(head)
        time.sleep(3)
        return


def dated_handler(sock, be):
    for head, headers, body in requests_on(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                     b"Content-Length: 2\r\n\r\nok")


def undated_handler(sock, be):
    for head, headers, body in requests_on(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


DATE_CONFIG = """
workers: 1
listen:
  - address: 127.0.0.1:%(port)d
  - address: 127.0.0.1:%(redirect)d
    redirect_to_https: 8443
admin: {listen: "127.0.0.1:%(admin)d"}
upstreams:
  app: {servers: [127.0.0.1:%(app)d]}
  dated: {servers: [127.0.0.1:%(dated)d]}
  dead: {servers: [127.0.0.1:%(dead)d]}
  silent: {servers: [127.0.0.1:%(silent)d]}
rate_limit:
  policies:
    one: {rate: 1/m, burst: 1, key: [ip]}
sites:
  - hosts: [app.test]
    routes:
      - {path: /ok/, upstream: app}
      - {path: /dated/, upstream: dated}
      - {path: /dead/, upstream: dead}
      - {path: /slow/, upstream: silent, read_timeout: 400ms}
      - {path: /busy/, upstream: silent, read_timeout: 2s, max_in_flight: 1}
      - {path: /limited/, upstream: app, rate_limit: one}
      - {path: /private/, upstream: app, allow: [10.0.0.0/8]}
      - {path: /small/, upstream: app, max_body: 4}
"""


def assert_dated(resp, what):
    status, h, _ = head_of(resp)
    dates = h.get("date", [])
    assert len(dates) == 1, "%s: %r" % (what, resp[:400])
    when = email.utils.parsedate_to_datetime(dates[0]).timestamp()
    assert abs(when - time.time()) < 30, (what, dates)
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", dates[0])
    return status


def test_every_answer_carries_a_date(tollgate, backend):
    # Issue 23: 308/400/403/404/405/413/429/502/503/504 and the admin
    # listener's answers had no Date.
    app, dated = backend(undated_handler), backend(dated_handler)
    silent = backend(silent_handler)
    ports = {"port": free_port(), "redirect": free_port(), "admin": free_port(),
             "app": app.port, "dated": dated.port, "dead": free_port(), "silent": silent.port}
    tollgate(DATE_CONFIG % ports, check_ports=[ports["port"], ports["redirect"], ports["admin"]])
    port = ports["port"]

    def ask(data, p=port):
        return raw(p, data)

    def req(method, path, host="app.test", extra=b""):
        return (b"%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (
            method.encode(), path.encode(), host.encode())) + extra + b"\r\n"

    cases = [
        ("proxied, the backend sent none", ask(req("GET", "/ok/")), 200),
        ("404 no site", ask(req("GET", "/ok/", host="other.test")), 404),
        ("404 no route", ask(req("GET", "/nothing")), 404),
        ("400 bad head", ask(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400),
        ("405", ask(req("TRACE", "/ok/")), 405),
        ("403", ask(req("GET", "/private/")), 403),
        ("413", ask(req("POST", "/small/", extra=b"Content-Length: 10\r\n") + b"0123456789"), 413),
        ("502", ask(req("GET", "/dead/")), 502),
        ("504", ask(req("GET", "/slow/")), 504),
        ("308", ask(req("GET", "/x"), p=ports["redirect"]), 308),
        ("admin 200", ask(req("GET", "/healthz"), p=ports["admin"]), 200),
        ("admin metrics", ask(req("GET", "/metrics"), p=ports["admin"]), 200),
        ("admin 404", ask(req("GET", "/nope"), p=ports["admin"]), 404),
    ]
    ask(req("GET", "/limited/"))
    cases.append(("429", ask(req("GET", "/limited/")), 429))
    # 503: max_in_flight taken by a request the backend holds.
    # (the 504 above reached the same backend: wait for one more request)
    seen = len(silent.requests)
    holder = threading.Thread(target=ask, args=(req("GET", "/busy/"),))
    holder.start()
    deadline = time.time() + 5 * SLOW
    while len(silent.requests) <= seen and time.time() < deadline:
        time.sleep(0.02)
    cases.append(("503", ask(req("GET", "/busy/")), 503))
    for what, resp, want in cases:
        assert assert_dated(resp, what) == want, (what, resp[:300])
    holder.join()
    # A backend's own Date is its clock's: kept, and the only one.
    status, h, _ = head_of(ask(req("GET", "/dated/")))
    assert status == 200 and h["date"] == ["Sun, 06 Nov 1994 08:49:37 GMT"]


def test_421_and_http2_answers_are_dated(tollgate, backend, pki):
    b = backend(undated_handler)
    port = free_port()
    tollgate(tls_config(port, b.port, pki.leaf("a", ["a.test"])))
    out, _, _ = https_get(port, "b.test", servername="a.test")  # SNI a.test, Host b.test
    assert assert_dated(out, "421") == 421
    out, _, _ = https_get(port, "a.test", servername="a.test")
    assert assert_dated(out, "proxied over TLS") == 200
    if shutil.which("curl") is None:
        return
    p = subprocess.run(["curl", "-s", "-k", "-i", "--http2", "--resolve",
                        "a.test:%d:127.0.0.1" % port, "https://a.test:%d/" % port],
                       capture_output=True, timeout=30)
    assert p.stdout.startswith(b"HTTP/2 200")
    assert len(re.findall(rb"(?im)^date: ", p.stdout)) == 1


# ---- (c) error bodies: text, json, html ----------------------------------------------


ERRORS_CONFIG = """
workers: 1
listen: [127.0.0.1:%(port)d]
admin: {listen: "off"}
upstreams:
  app: {servers: [127.0.0.1:%(app)d]}
  dead: {servers: [127.0.0.1:%(dead)d]}
rate_limit:
  policies:
    one: {rate: 1/m, burst: 1, key: [ip]}
sites:
  - hosts: [api.test]
    errors: json
    routes:
      - {path: /api/private/, upstream: app, allow: [10.0.0.0/8]}
      - {path: /api/limited/, upstream: app, rate_limit: one}
      - {path: /api/dead/, upstream: dead}
      - {path: /page/, upstream: dead, errors: html}
      - {path: /text/, upstream: app, allow: [10.0.0.0/8], errors: text}
"""

# The same without any `errors` key: the default.
PLAIN_CONFIG = """
workers: 1
listen: [127.0.0.1:%(port)d]
admin: {listen: "off"}
upstreams:
  app: {servers: [127.0.0.1:%(app)d]}
rate_limit:
  policies:
    one: {rate: 1/m, burst: 1, key: [ip]}
sites:
  - hosts: [plain.test]
    routes:
      - {path: /limited/, upstream: app, rate_limit: one}
      - {path: /private/, upstream: app, allow: [10.0.0.0/8]}
"""


@pytest.fixture
def errors_gateway(tollgate, backend):
    app = backend(undated_handler)
    port = free_port()
    tollgate(ERRORS_CONFIG % {"port": port, "app": app.port, "dead": free_port()})
    return port


def test_json_errors(errors_gateway):
    # Issue 23: these were text/plain on API routes.
    port = errors_gateway
    status, h, data = get(port, "/api/private/", host="api.test")
    assert status == 403 and h["content-type"] == "application/json"
    assert json.loads(data) == {"status": 403, "error": "Forbidden", "message": "Forbidden.",
                                "data": {}}
    status, h, data = get(port, "/nothing", host="api.test")  # the site's form
    assert status == 404 and h["content-type"] == "application/json"
    assert json.loads(data) == {"status": 404, "error": "Not Found",
                                "reason": "no route for this path",
                                "message": "Not Found: no route for this path.", "data": {}}
    status, h, data = get(port, "/api/dead/", host="api.test")
    doc = json.loads(data)
    assert status == 502 and doc["status"] == 502 and doc["error"] == "Bad Gateway"
    assert doc["reason"] == "the upstream could not be reached"
    # PocketBase's shape: status, message, data.
    assert isinstance(doc["message"], str) and doc["data"] == {}


def test_json_429_is_shaped_like_the_other_errors(errors_gateway):
    port = errors_gateway
    assert get(port, "/api/limited/", host="api.test")[0] == 200
    status, h, data = get(port, "/api/limited/", host="api.test")
    assert status == 429 and h["content-type"] == "application/json"
    doc = json.loads(data)
    retry = int(h["retry-after"])
    assert doc["status"] == 429 and doc["error"] == "Too Many Requests"
    assert doc["policy"] == "one" and doc["retry_after"] == retry
    assert doc["reason"] == "rate limit 'one'; retry in %d s" % retry
    assert doc["data"] == {} and doc["message"].startswith("Too Many Requests: ")


def test_text_is_the_default_and_the_429_follows_it(tollgate, backend):
    # Issue 23: the 429 was JSON where every other error was text/plain.
    app = backend(undated_handler)
    port = free_port()
    tollgate(PLAIN_CONFIG % {"port": port, "app": app.port})
    status, h, data = get(port, "/private/", host="plain.test")
    assert (status, h["content-type"], data) == (403, "text/plain; charset=utf-8",
                                                 b"403 Forbidden\n")
    assert get(port, "/limited/", host="plain.test")[0] == 200
    status, h, data = get(port, "/limited/", host="plain.test")
    assert status == 429 and h["content-type"] == "text/plain; charset=utf-8"
    assert data == b"429 Too Many Requests: rate limit 'one'; retry in %d s\n" % int(
        h["retry-after"])


def test_route_and_unknown_host_forms(errors_gateway):
    """A route may say text on a json site; an unknown Host is always text."""
    port = errors_gateway
    status, h, data = get(port, "/text/", host="api.test")
    assert (status, h["content-type"], data) == (403, "text/plain; charset=utf-8",
                                                 b"403 Forbidden\n")
    status, h, data = get(port, "/", host="nobody.test")
    assert (status, h["content-type"]) == (404, "text/plain; charset=utf-8")


def test_html_errors(errors_gateway):
    port = errors_gateway
    status, h, data = get(port, "/page/x", host="api.test")
    assert status == 502 and h["content-type"] == "text/html; charset=utf-8"
    page = data.decode()
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>502 Bad Gateway</title>" in page and "<h1>502 Bad Gateway</h1>" in page
    assert "<p>the upstream could not be reached</p>" in page


def test_shipped_config_answers_api_errors_as_json(tollgate, tmp_path):
    """conf/tollgate.yaml: `errors: json` on its API, HTML for the admin UI
    and public files; `tollgate -t` accepts it."""
    from conftest import BIN, ROOT
    p = subprocess.run([BIN, "-t", "-c", "conf/tollgate.yaml"], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and "configuration OK" in p.stdout + p.stderr, p.stdout + p.stderr
    from test_login_limits import Gateway
    gw = Gateway(tollgate, tmp_path)
    try:
        ip = "203.0.113.50"  # public: the superuser routes are private only
        status, h, data = gw.request("GET", "/api/collections/_superusers/records", ip=ip)
        assert status == 403 and h["content-type"] == "application/json"
        doc = json.loads(data)
        assert doc["status"] == 403 and doc["message"] and doc["data"] == {}
        status, h, data = gw.request("GET", "/_/", ip=ip)
        assert status == 403 and h["content-type"] == "text/html; charset=utf-8"
        gw.stub.stop()
        status, h, data = gw.request("GET", "/api/health", ip=ip)
        assert status == 502 and json.loads(data)["status"] == 502
    finally:
        gw.close()
