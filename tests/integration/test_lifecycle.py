"""Configuration checking, reload under traffic, listener changes, drain on
SIGTERM, log reopening on SIGUSR1."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (BIN, ROOT, SLOW, basic_config, free_port, get, raw,
                      read_http_request, run_tollgate_check, status_of)

VALID = """
listen:
  - address: 127.0.0.1:18999
upstreams:
  app:
    servers: [127.0.0.1:18998]
sites:
  - hosts: [app.test]
    routes:
      - path: /
        upstream: app
"""

BAD_CONFIGS = [
    # (config, line, col, message fragment)
    (VALID + "bogus: 1\n", 12, 1, "unknown key 'bogus'"),
    (VALID.replace("servers: [127.0.0.1:18998]", "servers: [127.0.0.1:18998]\n    keepalive: lots"),
     7, 16, "whole number"),
    (VALID.replace("servers: [127.0.0.1:18998]", "servers: [127.0.0.1:18998]\n    read_timeout: 10 seconds"),
     7, 19, "duration"),
    ("client:\n  max_head: 12 parsecs\n" + VALID, 2, 13, "size"),
    (VALID.replace("upstream: app", "upstream: nope"), 11, 19, "no upstream named 'nope'"),
    (VALID.replace("path: /", "path: nope"), 10, 15, "must start with '/'"),
    (VALID.replace("address: 127.0.0.1:18999", "address: 127.0.0.1:99999"), 3, 14, "bad port"),
    (VALID + "workers: [1]\n", 12, 10, "must be a scalar"),
    (VALID.replace("  - hosts: [app.test]", "  - hosts: app.test"), 8, 12, "must be a list"),
    ("listen: [\n", 2, 1, "YAML syntax error"),
    ("", 1, 1, "empty"),
    (VALID + "listen:\n  - address: 127.0.0.1:1\n", 12, 1, "duplicate"),
    (VALID.replace("hosts: [app.test]", "hosts: [app.test, app.test]"), 8, 23, "duplicate"),
    (VALID.replace("  - address: 127.0.0.1:18999", "  - address: 127.0.0.1:18999\n  - address: 127.0.0.1:18999"),
     4, 5, "already listed"),
    (VALID + "log:\n  level: loud\n", 13, 10, "one of debug"),
]


@pytest.mark.parametrize("config,line,col,fragment", BAD_CONFIGS)
def test_bad_config_refused_with_position(tmp_path, config, line, col, fragment):
    rc, out, path = run_tollgate_check(config, tmp_path)
    assert rc == 1, out
    first = out.splitlines()[0]
    assert first.startswith("%s:%d:%d: " % (path, line, col)), out
    assert fragment in out, out


def test_all_errors_reported_at_once(tmp_path):
    cfg = VALID.replace("upstream: app", "upstream: nope") + "bogus: 1\nclient:\n  max_body: huge\n"
    rc, out, path = run_tollgate_check(cfg, tmp_path)
    assert rc == 1
    assert len(out.strip().splitlines()) == 3, out


def test_valid_config_and_shipped_examples(tmp_path):
    rc, out, _ = run_tollgate_check(VALID, tmp_path)
    assert rc == 0 and "configuration OK" in out
    for name in ["conf/examples/basic.yaml"]:
        p = subprocess.run([BIN, "-t", "-c", os.path.join(ROOT, name)], capture_output=True,
                           text=True, cwd=ROOT)
        assert p.returncode == 0, (name, p.stdout + p.stderr)


def test_cli_flags():
    p = subprocess.run([BIN, "-v"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("tollgate ")
    p = subprocess.run([BIN, "-h"], capture_output=True, text=True)
    assert p.returncode == 0 and "-c FILE" in p.stdout
    p = subprocess.run([BIN, "-x"], capture_output=True, text=True)
    assert p.returncode == 2
    p = subprocess.run([BIN, "-t", "-c", "/nonexistent.yaml"], capture_output=True, text=True)
    assert p.returncode == 1 and "/nonexistent.yaml:1:1:" in p.stderr


def test_gnu_long_options(tmp_path):
    """Issue 23 (8): --help and --version were refused (exit 2) like any
    unknown option. GNU style: both on stdout, exit 0; unknown options stay
    refused with the usage on stderr."""
    p = subprocess.run([BIN, "--help"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: tollgate") and "--config FILE" in p.stdout, p.stdout
    assert p.stderr == ""
    p = subprocess.run([BIN, "--version"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"tollgate \d+\.\d+\.\d+", p.stdout.splitlines()[0]), p.stdout
    assert subprocess.run([BIN, "-v"], capture_output=True, text=True).stdout == p.stdout
    for bad in (["--bogus"], ["--help=x"], ["-x"]):
        p = subprocess.run([BIN] + bad, capture_output=True, text=True)
        assert p.returncode == 2 and p.stdout == "", (bad, p.stdout)
        assert "usage: tollgate" in p.stderr, (bad, p.stderr)
    path = tmp_path / "ok.yaml"
    path.write_text(VALID)
    p = subprocess.run([BIN, "--test", "--config", str(path)], capture_output=True, text=True)
    assert p.returncode == 0 and "configuration OK" in p.stdout, p.stdout + p.stderr


class Load:
    """Steady traffic: keep-alive clients and new-connection clients, counting
    every answer that is not 2xx and every connection error."""

    def __init__(self, port, threads=4, path="/"):
        self.port = port
        self.path = path
        self.ok = 0
        self.bad = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i % 2 == 0,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, keepalive):
        import http.client
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None or not keepalive:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10 * SLOW)
                conn.request("GET", self.path, headers={"Host": "app.test"})
                r = conn.getresponse()
                r.read()
                with self.lock:
                    if 200 <= r.status < 300:
                        self.ok += 1
                    else:
                        self.bad.append(r.status)
                if not keepalive:
                    conn.close()
            except Exception as e:  # noqa: BLE001 - every failure counts
                with self.lock:
                    self.bad.append(repr(e))
                conn = None

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def test_reload_under_traffic_drops_nothing(tollgate, backend):
    b1 = backend()
    b2 = backend()
    port = free_port()
    cfg1 = basic_config(port, [b1.port])
    tg = tollgate(cfg1)
    load = Load(port)
    time.sleep(0.5)
    cfg2 = cfg1.replace("sites:", "  other:\n    servers: [127.0.0.1:%d]\nsites:" % b2.port).replace(
        "      - path: /\n", "      - path: /v2\n        upstream: other\n      - path: /\n")
    for i in range(5):
        tg.reload(cfg2 if i % 2 == 0 else cfg1)
        time.sleep(0.2)
    tg.reload(cfg2)
    time.sleep(0.3)
    load.finish()
    assert load.bad == [], load.bad[:10]
    assert load.ok > 50
    status, headers, _ = get(port, "/v2/x")
    assert status == 200 and headers["x-backend"] == str(b2.port)


def test_bad_reload_keeps_old_config(tollgate, backend):
    b = backend()
    port = free_port()
    cfg = basic_config(port, [b.port])
    tg = tollgate(cfg)
    tg.reload(cfg + "bogus: true\n", expect_ok=False)
    assert re.search(r"tollgate\.yaml:\d+:\d+: unknown key 'bogus'", tg.stderr())
    assert get(port, "/")[0] == 200
    # A listener that cannot be bound also refuses the reload.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = taken.getsockname()[1]
    tg.reload(cfg.replace("listen:\n", "listen:\n  - address: 127.0.0.1:%d\n" % busy), expect_ok=False)
    taken.close()
    assert get(port, "/")[0] == 200


def test_listeners_added_and_removed_on_reload(tollgate, backend):
    b = backend()
    p1, p2 = free_port(), free_port()
    cfg = basic_config(p1, [b.port])
    tg = tollgate(cfg)
    tg.reload(cfg.replace("listen:\n", "listen:\n  - address: 127.0.0.1:%d\n" % p2))
    assert get(p2, "/")[0] == 200
    assert get(p1, "/")[0] == 200
    tg.reload(cfg.replace("127.0.0.1:%d" % p1, "127.0.0.1:%d" % p2))
    assert get(p2, "/")[0] == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p1), timeout=1).close()


def test_sigterm_drains_in_flight_requests(tollgate, backend):
    def slow(sock, be):
        read_http_request(sock)
        time.sleep(1.0)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
    b = backend(slow)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port]))
    idle = socket.create_connection(("127.0.0.1", port))  # idle keep-alive
    result = {}

    def client():
        result["resp"] = raw(port, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n", timeout=10)
    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.3)
    tg.kill(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    idle.settimeout(2)
    assert idle.recv(10) == b""  # idle connections are closed at once
    t.join()
    assert status_of(result["resp"]) == 200 and result["resp"].endswith(b"done")
    assert tg.proc.wait(timeout=10 * SLOW) == 0
    assert tg.stop() == 0


def test_drain_timeout_bounds_shutdown(tollgate, backend):
    def hang(sock, be):
        read_http_request(sock)
        time.sleep(10)
    b = backend(hang)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], extra="drain_timeout: 1s\n"))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    time.sleep(0.3)
    t0 = time.time()
    tg.kill(signal.SIGTERM)
    assert tg.proc.wait(timeout=10 * SLOW) == 0
    assert time.time() - t0 < 3 * SLOW
    s.close()


def test_sse_stream_ends_with_retry_hint_on_drain(tollgate, backend):
    def sse(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            for i in range(100):
                ev = b"data: %d\n\n" % i
                sock.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                time.sleep(0.1)
        except OSError:
            pass
    b = backend(sse)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port]))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: app.test\r\n\r\n")
    s.settimeout(5 * SLOW)
    data = b""
    while b"data: 2" not in data:
        data += s.recv(4096)
    tg.kill(signal.SIGTERM)
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    assert b"retry: 1000\n\n" in data
    assert data.endswith(b"\r\n0\r\n\r\n")  # the last chunk, not a head
    assert tg.proc.wait(timeout=10 * SLOW) == 0


def test_sigusr1_reopens_access_log(tollgate, backend, tmp_path):
    b = backend()
    port = free_port()
    log = tmp_path / "access.log"
    tg = tollgate(basic_config(port, [b.port], extra="log:\n  access: %s\n  access_flush: 100ms\n" % log))
    assert get(port, "/one")[0] == 200
    time.sleep(0.5)
    os.rename(log, str(log) + ".1")
    tg.kill(signal.SIGUSR1)
    time.sleep(0.5)
    assert get(port, "/two")[0] == 200
    time.sleep(0.5)
    assert b"/one" in open(str(log) + ".1", "rb").read()
    assert b"/two" in open(log, "rb").read()
    assert b"/two" not in open(str(log) + ".1", "rb").read()


def test_access_log_line_fields(tollgate, backend):
    b = backend()
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], extra="log:\n  access_flush: 100ms\n"))
    get(port, "/p?q=1", headers={"X-Request-Id": "rid-1"})
    lines = tg.access_lines(1)
    rec = lines[0]
    for field in ("time", "client", "method", "host", "path", "status", "bytes_in", "bytes_out",
                  "duration_ms", "upstream", "upstream_ms", "request_id"):
        assert field in rec, field
    assert rec["path"] == "/p?q=1" and rec["status"] == 200 and rec["request_id"] == "rid-1"
    assert rec["upstream"] == "127.0.0.1:%d" % b.port


def test_sse_drain_waits_for_the_event_boundary(tollgate, backend):
    def sse(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            sock.sendall(b"7\r\ndata: a\r\n")      # half an event
            time.sleep(0.6)
            sock.sendall(b"2\r\n\n\n\r\n")          # its end
            for i in range(50):
                ev = b"data: %d\n\n" % i
                sock.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                time.sleep(0.1)
        except OSError:
            pass
    b = backend(sse)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port]))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: app.test\r\n\r\n")
    s.settimeout(5 * SLOW)
    data = b""
    while b"data: a" not in data:
        data += s.recv(4096)
    tg.kill(signal.SIGTERM)
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    body = data.split(b"\r\n\r\n", 1)[1]
    events = b"".join(re.findall(rb"[0-9a-f]+\r\n(.*?)\r\n", body, re.S))
    # The half event was completed first; the hint came at a boundary after
    # it (whole events may have passed in between), and nothing after it.
    assert re.fullmatch(rb"data: a\n\n(data: \d+\n\n)*retry: 1000\n\n", events), events
    assert data.endswith(b"\r\n0\r\n\r\n")  # the last chunk, not a head
    assert tg.proc.wait(timeout=10 * SLOW) == 0
