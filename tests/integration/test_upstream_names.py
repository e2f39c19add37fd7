"""Upstream servers given as names, resolved again while tollgate runs
(issue 22, item 5): a backend named by host name that changes address
keeps being served without a reload.

The names come from a hosts file of the test's own: tollgate runs in a
mount namespace of its own (unshare -m) where that file is bind-mounted
over /etc/hosts, so the real getaddrinfo reads it and the machine's
/etc/hosts is never touched. The file is rewritten in place (same inode)
to move a name. The backends listen on 127.0.0.2 and 127.0.0.3 and answer
with the address a request reached."""

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from conftest import (SLOW, Redis, free_port, get, requests_on, run_tollgate_check)
from test_tls import pki  # noqa: F401 (a fixture: a CA and leaf certificates)

NAME = "app.test.internal"


def _can_unshare_mounts():
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# Every test but the -t one needs a mount namespace of its own.
needs_mount_ns = pytest.mark.skipif(not _can_unshare_mounts(),
                                    reason="needs unshare -m (a mount namespace for /etc/hosts)")


class Hosts:
    """A hosts file (and a host.conf that lists every line of a name) that
    tollgate sees as /etc/hosts."""

    def __init__(self, tmp_path):
        self.path = os.path.join(str(tmp_path), "hosts")
        self.conf = os.path.join(str(tmp_path), "host.conf")
        with open(self.conf, "w") as f:
            f.write("multi on\n")
        self.set()

    SIZE = 1024

    def set(self, *lines):
        # Rewritten in place (the bind mount follows the inode), always the
        # same size and in one write: the resolver, reading it every 200 ms,
        # never sees it truncated or half written.
        text = "127.0.0.1 localhost\n" + "".join(l + "\n" for l in lines)
        text += "#" * (self.SIZE - 1 - len(text)) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            assert os.pwrite(fd, text.encode(), 0) == self.SIZE
        finally:
            os.close(fd)

    def wrap(self):
        return ["unshare", "-m", "sh", "-c",
                'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/host.conf && '
                'shift 2 && exec "$@"', "sh", self.path, self.conf]


def where_handler(sock, backend):
    """Answers each request with the address it reached; /slow waits first."""
    for head, headers, body in requests_on(sock):
        backend.record((head, headers, body))
        path = head.split(" ")[1]
        if path.startswith("/slow"):
            time.sleep(2.0 * SLOW)
        payload = sock.getsockname()[0].encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)


@pytest.fixture
def two_backends(backend):
    """The same port on 127.0.0.2 and 127.0.0.3."""
    port = free_port()
    return port, backend(where_handler, port=port, host="127.0.0.2"), \
        backend(where_handler, port=port, host="127.0.0.3")


def config(listen, port, extra="", upstream_extra="", workers=2):
    return """
workers: %d
listen: [127.0.0.1:%d]
upstreams:
  app:
    servers: [%s:%d]
    resolve_interval: 200ms
%s
sites:
  - hosts: [app.test]
    routes:
      - {path: /, upstream: app}
%s
""" % (workers, listen, NAME, port, upstream_extra, extra)


def where(port, path="/"):
    status, _, body = get(port, path)
    assert status == 200, (status, body)
    return body.decode()


def wait_for(pred, timeout):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def admin_json(tg, path):
    c = http.client.HTTPConnection("127.0.0.1", tg.admin_port, timeout=10 * SLOW)
    c.request("GET", path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return json.loads(data) if path == "/status" else data.decode()


def open_socks(b):
    with b.lock:
        return len(b.open_socks)


@needs_mount_ns
def test_a_name_that_moves_is_followed_without_reload(tollgate, two_backends, tmp_path):
    port, b2, b3 = two_backends
    hosts = Hosts(tmp_path)
    hosts.set("127.0.0.2 " + NAME)
    listen = free_port()
    tg = tollgate(config(listen, port, upstream_extra="    health_check: {path: /healthz, "
                         "interval: 200ms, timeout: 100ms}"), wrap=hosts.wrap())
    for _ in range(4):
        assert where(listen) == "127.0.0.2"
    st = admin_json(tg, "/status")
    app = [u for u in st["upstreams"] if u["name"] == "app"][0]
    assert app["addresses"] == 1
    assert [s["address"] for s in app["servers"]] == ["127.0.0.2:%d" % port]
    assert app["servers"][0]["name"] == NAME
    assert app["resolve"]["names"] == [{"name": "%s:%d" % (NAME, port), "addresses": 1,
                                        "state": "ok"}]

    # A long request holds a server on the old address while the name moves.
    slow = {}

    def long_request():
        slow["r"] = get(listen, "/slow", timeout=20)

    t = threading.Thread(target=long_request)
    t.start()
    assert wait_for(lambda: any(r[0].startswith("GET /slow") for r in b2.requests), 5)
    hosts.set("127.0.0.3 " + NAME)
    # Within a few resolve intervals, new requests go to the new address.
    assert wait_for(lambda: where(listen) == "127.0.0.3", 5), tg.stderr()
    for _ in range(6):
        assert where(listen) == "127.0.0.3"
    # The request under way finished on the server it had.
    t.join(20 * SLOW)
    assert slow["r"][0] == 200 and slow["r"][2] == b"127.0.0.2", slow
    # Connections to the address the name lost are closed: the idle ones
    # at once, the one the long request held when it ended.
    assert wait_for(lambda: open_socks(b2) == 0, 5), open_socks(b2)
    # Active checks follow the name.
    n3 = len([r for r in b3.requests if r[0].startswith("GET /healthz")])
    assert wait_for(lambda: len([r for r in b3.requests
                                 if r[0].startswith("GET /healthz")]) > n3 + 1, 5)
    log = tg.stderr()
    assert "configuration reloaded" not in log
    assert log.count("%s:%d now resolves to 127.0.0.3:%d (was 127.0.0.2:%d)"
                     % (NAME, port, port, port)) == 1, log
    st = admin_json(tg, "/status")
    app = [u for u in st["upstreams"] if u["name"] == "app"][0]
    assert [s["address"] for s in app["servers"]] == ["127.0.0.3:%d" % port]

    # A reload with a name that does not resolve is refused: the running
    # configuration (and its name) stays.
    bad = config(listen, port, extra="""
  - hosts: [other.test]
    routes: [{path: /, upstream: other}]
""").replace("upstreams:\n", "upstreams:\n  other: {servers: ['nowhere.test.internal:1']}\n")
    tg.reload(bad, expect_ok=False)
    assert "cannot resolve 'nowhere.test.internal'" in tg.stderr()
    assert where(listen) == "127.0.0.3"


@needs_mount_ns
def test_a_failed_resolution_keeps_the_last_addresses(tollgate, two_backends, tmp_path):
    port, b2, b3 = two_backends
    hosts = Hosts(tmp_path)
    hosts.set("127.0.0.2 " + NAME)
    listen = free_port()
    tg = tollgate(config(listen, port, workers=1), wrap=hosts.wrap())
    assert where(listen) == "127.0.0.2"
    hosts.set()  # the name is gone: NXDOMAIN from here on
    time.sleep(1.2)  # six resolve intervals
    for _ in range(5):
        assert where(listen) == "127.0.0.2"
    metrics = admin_json(tg, "/metrics")
    m = re.search(r'^tollgate_upstream_resolve_failures_total\{upstream="app"\} (\d+)$',
                  metrics, re.M)
    assert m and int(m.group(1)) >= 3, metrics
    if shutil.which("promtool"):
        p = subprocess.run(["promtool", "check", "metrics"], input=metrics, text=True,
                           capture_output=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
    st = admin_json(tg, "/status")
    app = [u for u in st["upstreams"] if u["name"] == "app"][0]
    assert app["addresses"] == 1
    assert app["resolve"]["names"][0]["state"] == "failing"
    assert app["resolve"]["failures"] >= 3
    log = tg.stderr()
    # Logged once when it started failing, not per attempt.
    assert log.count("%s:%d does not resolve" % (NAME, port)) == 1, log
    assert "keeping its last addresses (127.0.0.2:%d)" % port in log
    # Back, at another address.
    hosts.set("127.0.0.3 " + NAME)
    assert wait_for(lambda: where(listen) == "127.0.0.3", 5), tg.stderr()
    assert wait_for(lambda: "%s:%d resolves again, now to 127.0.0.3:%d" % (NAME, port, port)
                    in tg.stderr(), 2), tg.stderr()


@needs_mount_ns
def test_every_address_of_a_name_is_a_server(tollgate, two_backends, tmp_path):
    port, b2, b3 = two_backends
    hosts = Hosts(tmp_path)
    hosts.set("127.0.0.2 " + NAME, "127.0.0.3 " + NAME)
    listen = free_port()
    tollgate(config(listen, port, workers=1), wrap=hosts.wrap())
    seen = [where(listen) for _ in range(8)]
    # Round robin alternates over the two addresses.
    assert seen.count("127.0.0.2") == 4 and seen.count("127.0.0.3") == 4, seen
    # One address goes: only the other is used.
    hosts.set("127.0.0.3 " + NAME)
    assert wait_for(lambda: all(where(listen) == "127.0.0.3" for _ in range(4)), 5)


@needs_mount_ns
def test_a_tenant_in_redis_named_by_host_name(tollgate, two_backends, tmp_path):
    port, b2, b3 = two_backends
    r = Redis(tmp_path)
    try:
        hosts = Hosts(tmp_path)
        hosts.set("127.0.0.2 " + NAME)
        listen = free_port()
        tg = tollgate("""
workers: 2
listen: [127.0.0.1:%d]
tenants:
  directory: redis
  redis: {address: 127.0.0.1:%d}
  upstream_defaults: {resolve_interval: 200ms}
sites:
  - hosts: ["{tenant}.platform.test"]
    routes:
      - {path: /, upstream: $tenant}
""" % (listen, r.port), wrap=hosts.wrap())
        r.cmd("HSET", "tollgate:tenant:acme", "servers", "%s:%d" % (NAME, port))
        r.cmd("HSET", "tollgate:tenant:mixed", "servers",
              "127.0.0.3:%d, %s:%d" % (port, NAME, port))
        # The name is new to the resolver: the first request waits for it.
        for _ in range(4):
            status, _, body = get(listen, "/", host="acme.platform.test")
            assert status == 200 and body == b"127.0.0.2", (status, body)
        seen = set(get(listen, "/", host="mixed.platform.test")[2] for _ in range(6))
        assert seen == {b"127.0.0.2", b"127.0.0.3"}, seen
        # The cached tenant follows its name (no Redis change, no reload).
        hosts.set("127.0.0.3 " + NAME)
        assert wait_for(lambda: get(listen, "/", host="acme.platform.test")[2] == b"127.0.0.3",
                        5), tg.stderr()
        assert "configuration reloaded" not in tg.stderr()
        # A name that does not resolve: no address to send to.
        r.cmd("HSET", "tollgate:tenant:lost", "servers", "lost.test.internal:%d" % port)
        assert get(listen, "/", host="lost.platform.test")[0] == 502
    finally:
        r.stop()


@needs_mount_ns
def test_a_tls_upstream_is_verified_by_its_name(tollgate, backend, pki, tmp_path):
    """Without tls_server_name, each address of a name is reached with the
    name as SNI and verified against it, not against the address."""
    from test_tls import tls_backend
    port = free_port()
    good = backend(tls_backend(pki, "named", [NAME]), port=port, host="127.0.0.2")
    hosts = Hosts(tmp_path)
    hosts.set("127.0.0.2 " + NAME)
    listen = free_port()
    tollgate(config(listen, port, workers=1,
                    upstream_extra="    tls: true\n    tls_ca: %s" % pki.ca), wrap=hosts.wrap())
    for _ in range(3):
        assert get(listen, "/")[0] == 200
    assert good.connections == 1  # pooled, like any TLS upstream


def test_check_refuses_a_name_that_does_not_resolve(tmp_path):
    text = """listen: [127.0.0.1:%d]
upstreams:
  app:
    servers:
      - 127.0.0.1:9000
      - nowhere.test.invalid:9000
sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]
""" % free_port()
    rc, out, path = run_tollgate_check(text, tmp_path)
    assert rc == 1, out
    assert re.search(re.escape(path) + r":6:9: server: cannot resolve 'nowhere\.test\.invalid'",
                     out), out
    # An address of the machine's own hosts file passes.
    rc, out, path = run_tollgate_check(text.replace("nowhere.test.invalid", "localhost"),
                                       tmp_path)
    assert rc == 0, out
