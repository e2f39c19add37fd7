"""`tollgate explain` and the running gateway answer every request of one
case table alike: both run the same pipeline (explain as a dry run), so a
decision cannot drift between them. Each case is asked of both; the
gateway's status must be the one explain names (a proxied request gets the
backend's 200)."""

import re
import socket
import subprocess

import pytest

from conftest import BIN, SLOW, free_port, status_of

CONFIG = """
workers: 1
listen: [127.0.0.1:%(port)d]
trusted_proxies: [127.0.0.1/32]
upstreams: {app: {servers: [127.0.0.1:%(backend)d]}}
rate_limit:
  policies:
    per_ip: { rate: 100/m, burst: 100, key: [ip] }
tenants:
  static:
    acme: { servers: [127.0.0.1:%(backend)d] }
    frozen: { servers: [127.0.0.1:%(backend)d], status: suspended }
sites:
  - hosts: ["{tenant}.t.test"]
    routes: [{path: /, upstream: $tenant}]
  - hosts: [app.test]
    routes:
      - {path: /admin/, upstream: app, allow: [private]}
      - {path: /small, upstream: app, max_body: 10}
      - {path: /read-only, upstream: app, methods: [GET, HEAD]}
      - {path: /limited, upstream: app, rate_limit: per_ip}
      - {path: /, upstream: app}
"""

# (request line for explain, extra headers)
CASES = [
    ("GET http://app.test/", []),
    ("HEAD http://app.test/", []),
    ("TRACE http://app.test/", []),
    ("GET http://nobody.test/", []),
    ("GET http://app.test/admin/", []),
    ("GET http://app.test/admin/", ["X-Forwarded-For: 203.0.113.9"]),
    ("GET http://app.test/admin/", ["X-Forwarded-For: 10.1.2.3"]),
    ("GET http://app.test/a/%2e%2e/admin/", ["X-Forwarded-For: 203.0.113.9"]),
    ("GET http://app.test/ADMIN/", ["X-Forwarded-For: 203.0.113.9"]),
    ("GET http://app.test/../x", []),
    ("GET http://app.test/x%00y", []),
    ("GET http://app.test/", ["X-Forwarded-For: 203.0.113.9", "Forwarded: for=198.51.100.7"]),
    ("POST http://app.test/small", ["Content-Length: 100"]),
    ("POST http://app.test/small", ["Content-Length: 5"]),
    ("POST http://app.test/read-only", ["Content-Length: 0"]),
    ("GET http://app.test/read-only", []),
    ("GET http://app.test/limited", []),
    ("GET http://acme.t.test/x", []),
    ("GET http://ACME.t.test/x", []),
    ("GET http://frozen.t.test/x", []),
    ("GET http://nobody.t.test/x", []),
    ("GET http://bad_label.t.test/x", []),
]


def backend_200(port):
    """A backend that answers 200 to everything (keep-alive off)."""
    import threading
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                m = re.search(rb"content-length:\s*(\d+)", data, re.I)
                want = int(m.group(1)) if m else 0
                body = data.partition(b"\r\n\r\n")[2]
                while len(body) < want:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    threading.Thread(target=serve, daemon=True).start()
    return srv


def explain_status(cfg_path, line, headers):
    args = [BIN, "explain", "-c", cfg_path, line]
    for h in headers:
        args += ["-H", h]
    p = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    answers = re.findall(r"^answer:\s+(\d{3}|proxied)", p.stdout, re.M)
    assert len(answers) == 1, p.stdout
    return 200 if answers[0] == "proxied" else int(answers[0]), p.stdout


def gateway_status(port, line, headers):
    method, url = line.split(" ", 1)
    m = re.match(r"https?://([^/]+)(/.*)?$", url)
    host, path = m.group(1), m.group(2) or "/"
    body = b""
    for h in headers:
        if h.lower().startswith("content-length:"):
            body = b"x" * int(h.split(":", 1)[1])
    head = "%s %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n" % (
        method, path, host, "".join(h + "\r\n" for h in headers))
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    try:
        s.sendall(head.encode() + body)
        out = b""
        while b"\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    finally:
        s.close()
    return status_of(out)


@pytest.mark.parametrize("line,headers", CASES, ids=[" ".join([c[0]] + c[1]) for c in CASES])
def test_explain_and_gateway_agree(tollgate, tmp_path, line, headers):
    port, bport = free_port(), free_port()
    srv = backend_200(bport)
    try:
        cfg = CONFIG % {"port": port, "backend": bport}
        tg = tollgate(cfg)
        want, out = explain_status(tg.config_path, line, headers)
        got = gateway_status(port, line, headers)
        assert got == want, "explain said %s, the gateway answered %s:\n%s" % (want, got, out)
    finally:
        srv.close()
