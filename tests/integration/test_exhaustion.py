"""Resource exhaustion: the global connection cap pauses accept without
spinning, thousands of idle connections cost little memory each, the
upstream per-server connection cap holds, and running out of descriptors
(EMFILE) pauses accept, does not spin, and recovers when clients leave."""

import re
import resource
import socket
import threading
import time
import urllib.request

from conftest import SLOW, basic_config, free_port, requests_on
from hardening_util import Client, cpu_seconds, open_fds, raise_nofile, simple_get

REQ = b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"


def cpu_over(pid, seconds):
    """CPU seconds the process used over the next `seconds` of wall time."""
    c0 = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - c0


def connect_all(port, n, source=None):
    socks = []
    for _ in range(n):
        s = socket.socket()
        if source:
            s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def read_all(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def test_max_connections_pauses_accept_without_spinning(tollgate, backend):
    """At client.max_connections, 100 more clients wait in the backlog
    while tollgate sleeps (CPU time checked in /proc/PID/stat); when the
    held connections leave, every waiting client is served."""
    b = backend()
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], extra="""
client:
  max_connections: 20
  header_timeout: 30s
"""))
    time.sleep(0.3)
    held = connect_all(port, 20)
    time.sleep(0.3)
    waiting = connect_all(port, 100)  # the kernel completes these: backlog
    for s in waiting:
        s.sendall(REQ)
    time.sleep(0.3)
    used = cpu_over(tg.proc.pid, 2.0)
    print("CPU while 100 clients wait at max_connections: %.3f s over 2 s" % used)
    assert used < 0.25 * SLOW, "accept is spinning at the cap: %.2f s CPU in 2 s" % used
    for s in waiting[:10]:
        s.settimeout(0.05)
        try:
            assert s.recv(100) == b"", "served beyond max_connections"
        except socket.timeout:
            pass
    for s in held:
        s.close()
    t0 = time.time()
    results = []
    for s in waiting:  # each closes as soon as it has its answer, as clients do
        results.append(read_all(s, 10 * SLOW))
        s.close()
    print("100 backlogged clients served in %.2f s" % (time.time() - t0))
    served = sum(r.startswith(b"HTTP/1.1 200") for r in results)
    assert served == 100, "only %d of 100 waiting clients were served" % served


def test_thousands_of_idle_connections_cost_little(tollgate, backend):
    """2,000 idle connections (half never said anything, half after one
    keep-alive request): RSS per connection is reported and bounded, and
    they all still work."""
    n = 2000
    have = raise_nofile(n + 500)
    assert have >= n + 200, "cannot open %d sockets here (RLIMIT_NOFILE %d)" % (n, have)
    b = backend()
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], extra="""
client:
  header_timeout: 60s
  keepalive_timeout: 60s
"""))
    hard = resource.prlimit(tg.proc.pid, resource.RLIMIT_NOFILE)[0]
    assert hard >= n + 100, "tollgate's RLIMIT_NOFILE %d is too low for this test" % hard
    # Warm up buffer pools and the upstream pool first, so they do not
    # count against the connections.
    for _ in range(20):
        assert simple_get(port)[0] == 200
    time.sleep(0.3)
    base = tg.rss_kb()
    silent = connect_all(port, n // 2)
    used = []
    for _ in range(n // 2):
        c = Client(port, timeout=10)
        c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        r = c.read_response(timeout=10)
        assert r is not None and r.status == 200
        used.append(c)
    time.sleep(0.5)
    rss = tg.rss_kb()
    fds = open_fds(tg.proc.pid)
    per_conn = (rss - base) * 1024.0 / n
    print("%d idle connections: RSS %d -> %d KiB, %.0f bytes per connection, %d fds"
          % (n, base, rss, per_conn, fds))
    assert fds >= n, "tollgate does not hold the connections (%d fds)" % fds
    assert per_conn < 4096 * SLOW, "%.0f bytes of RSS per idle connection" % per_conn
    # They all still work: a request on every 50th of each kind.
    for c in used[::50]:
        c.send(b"GET /again HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert c.read_response(timeout=10).status == 200
    for s in silent[::50]:
        s.sendall(REQ)
        assert read_all(s, 10 * SLOW).startswith(b"HTTP/1.1 200")
    assert simple_get(port)[0] == 200
    for c in used:
        c.close()
    for s in silent:
        s.close()


def test_connection_close_frees_the_slot_at_once(tollgate, backend):
    """A client that asked for Connection: close and got its whole answer
    holds no slot while it dawdles before closing: with max_connections 1
    the next client is served at once, not after the lingering time."""
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="""
client:
  max_connections: 1
"""))
    time.sleep(0.3)
    first = socket.create_connection(("127.0.0.1", port))
    first.sendall(REQ)
    got = read_all(first, 2)  # tollgate closes: EOF ends the read
    assert got.startswith(b"HTTP/1.1 200"), got
    t0 = time.time()
    status, _ = simple_get(port, "/", timeout=10)
    took = time.time() - t0
    first.close()
    assert status == 200
    assert took < 1.0 * SLOW, "the closed request's slot was held %.1f s" % took


def test_upstream_max_connections_per_server(tollgate, backend):
    """upstreams.max_connections 4 (one worker): 30 concurrent requests
    never open more than 4 connections at once to the server (counted at
    the backend); the others wait in tollgate's queue for a free slot and
    are all served (30 x 0.3 s / 4 = 2.3 s, within connect_timeout)."""
    lock = threading.Lock()
    state = {"open": 0, "peak": 0, "total": 0}

    def slow(sock, be):
        with lock:
            state["open"] += 1
            state["total"] += 1
            state["peak"] = max(state["peak"], state["open"])
        try:
            for _ in requests_on(sock):
                time.sleep(0.3)
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        finally:
            with lock:
                state["open"] -= 1
    b = backend(slow)
    port = free_port()
    tollgate(basic_config(port, [b.port], upstream_extra="    max_connections: 4\n    max_fails: 0"))
    results = []

    def one():
        results.append(simple_get(port, "/", timeout=10))
    threads = [threading.Thread(target=one) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30 * SLOW)
    statuses = sorted(s for s, _ in results)
    print("upstream cap 4: backend peak %d concurrent, %d connections in all; statuses %s"
          % (state["peak"], state["total"], {s: statuses.count(s) for s in set(statuses)}))
    assert len(results) == 30
    assert state["peak"] <= 4, "the backend saw %d connections at once" % state["peak"]
    assert state["peak"] == 4, "the cap was never reached; the test proves nothing"
    assert statuses == [200] * 30, statuses
    assert max(t for _, t in results) < 5 * SLOW


def test_upstream_queue_gives_up_after_connect_timeout(tollgate, backend):
    """max_connections 1 and a backend that takes 3 s: the second request
    waits connect_timeout (1 s) for the slot, then gets 503 with
    Retry-After, and the queue counters say so."""
    def slow(sock, be):
        for _ in requests_on(sock):
            time.sleep(3)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    b = backend(slow)
    port = free_port()
    admin = free_port()
    tollgate(basic_config(port, [b.port], upstream_extra="    max_connections: 1\n"
                          "    connect_timeout: 1s\n    read_timeout: 10s",
                          extra="admin: {listen: 127.0.0.1:%d}\n" % admin))
    first = threading.Thread(target=simple_get, args=(port, "/"), kwargs={"timeout": 10})
    first.start()
    time.sleep(0.3)
    t0 = time.time()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(REQ)
    resp = read_all(s, 10)
    took = time.time() - t0
    s.close()
    first.join(10)
    assert resp.startswith(b"HTTP/1.1 503"), resp[:200]
    assert b"Retry-After: 1" in resp
    assert 0.8 < took < 2.5 * SLOW, took
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=5).read().decode()
    assert re.search(r'tollgate_upstream_queued_total\{[^}]*\} 1\b', text), text
    assert re.search(r'tollgate_upstream_queue_timeouts_total\{[^}]*\} 1\b', text)


def test_emfile_pauses_accept_and_recovers(tollgate, backend):
    """tollgate's RLIMIT_NOFILE lowered to 64 while it runs: 150 clients
    exhaust its descriptors; accept pauses (no spinning: CPU checked), and
    once the clients leave, new ones are served again."""
    b = backend()
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], extra="""
client:
  header_timeout: 30s
"""))
    time.sleep(0.3)
    assert simple_get(port)[0] == 200
    resource.prlimit(tg.proc.pid, resource.RLIMIT_NOFILE, (64, 64))
    base_fds = open_fds(tg.proc.pid)
    hogs = connect_all(port, 150)
    time.sleep(0.5)
    fds = open_fds(tg.proc.pid)
    assert fds >= 60, "tollgate did not run out of descriptors (%d open)" % fds
    used = cpu_over(tg.proc.pid, 2.0)
    print("EMFILE: %d -> %d fds; CPU %.3f s over 2 s while out of descriptors" % (base_fds, fds, used))
    assert used < 0.25 * SLOW, "spinning on EMFILE: %.2f s CPU in 2 s" % used
    assert tg.proc.poll() is None
    for s in hogs:
        s.close()
    # Once they are gone (the backlogged ones are accepted and see EOF),
    # a new client is served promptly.
    deadline = time.time() + 10 * SLOW
    ok = None
    while time.time() < deadline:
        status, took = simple_get(port, timeout=3)
        if status == 200:
            ok = took
            break
        time.sleep(0.1)
    assert ok is not None, "not serving after the descriptors came back:\n" + tg.stderr()[-2000:]
    assert "pausing accept" in tg.stderr()
    lat = [simple_get(port)[1] for _ in range(10)]
    assert max(lat) < 1.0 * SLOW, lat
    assert cpu_over(tg.proc.pid, 1.0) < 0.2 * SLOW
