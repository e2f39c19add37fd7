"""Slow clients: slowloris heads, stalled and trickled bodies, idle
keep-alive connections, clients that stop reading, 500 slowloris
connections from one address next to a normal client, and bounded runs of
Debian's slowhttptest in its three modes. Every wait here is bounded by a
timeout a few seconds long (stretched by SLOW under sanitizers)."""

import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import SLOW, basic_config, free_port, read_http_request, status_of
from hardening_util import Client, Recorder, open_fds, recording_handler, simple_get


def listen_opts(cfg, port, opts):
    """Adds listener options (indented lines) to a basic_config."""
    return cfg.replace("  - address: 127.0.0.1:%d\n" % port,
                       "  - address: 127.0.0.1:%d\n%s" % (port, opts))


def wait_closed_at(sock, timeout):
    """Reads until EOF/reset; returns (monotonic time of the end or None,
    bytes read)."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return time.monotonic(), data
        if not chunk:
            return time.monotonic(), data
        data += chunk
    return None, data


# ---- heads -------------------------------------------------------------------------


def test_slowloris_trickle_gets_408_at_header_timeout(tollgate, backend):
    """A head trickled one byte every 0.5 s never completes; each byte must
    not extend the deadline: 408 and close once header_timeout has passed
    since accept (first request) or since its first byte (later ones)."""
    rec = Recorder()
    b = backend(recording_handler(rec))
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="client:\n  header_timeout: 2s\n"))
    head = b"GET /slow HTTP/1.1\r\nHost: app.test\r\nX-Padding: " + b"a" * 100

    def trickle(s, t0):
        s.settimeout(0.5)
        got = b""
        for byte in head:
            try:
                s.send(bytes([byte]))
            except OSError:
                break
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got:
                break
        end, rest = wait_closed_at(s, 5 * SLOW)
        return got + rest, end - t0 if end else None

    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.monotonic()
    data, closed_after = trickle(s, t0)
    s.close()
    assert status_of(data) == 408, data
    assert closed_after is not None and 1.8 < closed_after < 2 + 1.5 * SLOW, closed_after

    # A later request on a kept-alive connection: timed from its first byte.
    c = Client(port)
    c.send(b"GET /first HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert c.read_response().status == 200
    time.sleep(1.0)  # idle time before the next head does not count against it
    t0 = time.monotonic()
    data, closed_after = trickle(c.sock, t0)
    c.close()
    assert status_of(data) == 408, data
    assert closed_after is not None and 1.8 < closed_after < 2 + 1.5 * SLOW, closed_after
    assert rec.targets() == ["/first"], "a trickled head reached the backend"


# ---- bodies ------------------------------------------------------------------------


def test_body_timeout_is_a_gap_timer(tollgate, backend):
    """body_timeout bounds the gap between two body reads: a body trickled
    faster than that lives on; once it stalls, 408 after body_timeout."""
    rec = Recorder()
    b = backend(recording_handler(rec))
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="client:\n  body_timeout: 1s\n"))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /body HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n")
    s.settimeout(0.6)
    t_end = time.monotonic() + 3.0
    while time.monotonic() < t_end:  # one byte every 0.6 s: gaps under 1 s
        s.sendall(b"x")
        last = time.monotonic()
        try:
            early = s.recv(4096)
            pytest.fail("answered while the body was still arriving: %r" % early)
        except socket.timeout:
            pass
    end, data = wait_closed_at(s, 5 * SLOW)
    s.close()
    assert status_of(data) == 408, data
    assert end is not None and 0.9 < end - last < 1 + 1.5 * SLOW, end - last
    assert rec.targets() == [], "an incomplete body was passed off as complete"


def test_min_body_rate_cuts_slow_bodies_not_fast_ones(tollgate, backend):
    """min_body_rate 1000 B/s: a body trickled in small pieces (each gap
    under body_timeout) is cut with 408 once the 5 s grace is over, while a
    body arriving at 2000 B/s over the same time completes."""
    rec = Recorder()
    b = backend(recording_handler(rec))
    port = free_port()
    tollgate(basic_config(port, [b.port],
                          extra="client:\n  body_timeout: 2s\n  min_body_rate: 1000\n"))
    results = {}

    def client(name, total, piece, pause):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /%s HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n"
                  % (name.encode(), total))
        t0 = time.monotonic()
        sent = 0
        s.settimeout(pause)
        data = b""
        try:
            while sent < total:
                s.sendall(b"y" * min(piece, total - sent))
                sent += min(piece, total - sent)
                try:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                    break
                except socket.timeout:
                    pass
            s.settimeout(10 * SLOW)
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        results[name] = (status_of(data), time.monotonic() - t0, sent)
        s.close()

    # 7 s of body at 2000 B/s vs 10 bytes every 0.25 s (40 B/s).
    fast = threading.Thread(target=client, args=("fast", 14000, 200, 0.1))
    slow = threading.Thread(target=client, args=("slow", 100000, 10, 0.25))
    fast.start()
    slow.start()
    fast.join(30 * SLOW)
    slow.join(30 * SLOW)
    assert results["slow"][0] == 408, results
    assert 4.5 < results["slow"][1] < 8 * SLOW, results
    assert results["fast"][0] == 200, results
    got = {t: body for _, t, _, body in rec.complete}
    assert got.get("/fast") == b"y" * 14000 and "/slow" not in got, list(got)


# ---- idle and slow readers ------------------------------------------------------------


def test_idle_keepalive_timeout(tollgate, backend):
    """An idle kept-alive connection is closed after keepalive_timeout,
    without a response; a request in time restarts the clock."""
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="client:\n  keepalive_timeout: 1s\n"))
    c = Client(port)
    c.send(b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert c.read_response().status == 200
    time.sleep(0.6)
    c.send(b"GET /b HTTP/1.1\r\nHost: app.test\r\n\r\n")  # still open: served
    assert c.read_response().status == 200
    t0 = time.monotonic()
    end, data = wait_closed_at(c.sock, 5 * SLOW)
    c.close()
    assert data == b"", "an idle close must not send anything: %r" % data
    assert end is not None and 0.9 < end - t0 < 1 + 1.5 * SLOW, end and end - t0


def test_slow_reader_closed_after_send_timeout_rss_bounded(tollgate, backend):
    """Clients that stop reading a 64 MiB download are dropped once
    send_timeout passes with no progress (and their upstream connections
    with them); meanwhile tollgate's memory does not grow with what it
    could not send."""
    size = 64 << 20
    closed_at = {}
    lock = threading.Lock()

    def big(sock, be):
        r = read_http_request(sock)
        if r is None:
            return
        name = r[0].split(" ")[1]
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"z" * 65536
        try:
            for _ in range(size // len(block)):
                sock.sendall(block)
        except OSError:
            with lock:
                closed_at[name] = time.monotonic()
    b = backend(big)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], extra="client:\n  send_timeout: 1s\n"))
    base = tg.rss_kb()
    clients = []
    for i in range(10):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /r%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i)
        s.settimeout(5 * SLOW)
        assert status_of(s.recv(1024)) == 200
        clients.append(s)
    stopped = time.monotonic()  # nobody reads from here on
    peak = base
    deadline = stopped + 6 * SLOW
    while time.monotonic() < deadline and len(closed_at) < 10:
        peak = max(peak, tg.rss_kb())
        time.sleep(0.1)
    print("slow readers: RSS base %d KiB, peak %d KiB; upstreams closed after %s s" % (
        base, peak, sorted(round(t - stopped, 2) for t in closed_at.values())))
    assert len(closed_at) == 10, "upstreams still sending to tollgate: %d of 10 closed" % len(closed_at)
    assert all(0.9 < t - stopped < 1 + 3 * SLOW for t in closed_at.values()), closed_at
    assert peak - base < 16 * 1024, (base, peak)
    for s in clients:
        end, data = wait_closed_at(s, 5 * SLOW)
        assert end is not None and len(data) < size, "the slow reader was not disconnected"
        s.close()


# ---- many slowloris connections ------------------------------------------------------------


def test_500_slowloris_do_not_starve_another_client(tollgate, backend):
    """500 slowloris connections from 127.0.0.1 with max_connections_per_ip
    50: all but 50 are closed at accept, the rest trickle on, and a client
    from 127.0.0.2 is still served with a p99 under 100 ms."""
    b = backend()
    port = free_port()
    cfg = listen_opts(basic_config(port, [b.port], extra="client:\n  header_timeout: 20s\n"),
                      port, "    max_connections_per_ip: 50\n")
    tollgate(cfg)
    time.sleep(0.3)  # the harness's readiness probe has gone
    attackers = []
    for _ in range(500):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
        except OSError:
            pass
        attackers.append(s)
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for s in attackers:
                try:
                    s.send(b"X")
                except OSError:
                    pass
            stop.wait(0.5)
    t = threading.Thread(target=trickle)
    t.start()
    try:
        time.sleep(0.5)
        lat = []
        for _ in range(20):
            status, took = simple_get(port, "/", source="127.0.0.2")
            assert status == 200
            lat.append(took)
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        print("latency next to 500 slowloris: p50 %.1f ms, p99 %.1f ms" % (
            lat[len(lat) // 2] * 1000, p99 * 1000))
        assert p99 < 0.1 * SLOW, lat
    finally:
        stop.set()
        t.join()
    alive = 0
    for s in attackers:
        s.setblocking(False)
        try:
            alive += s.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        s.close()
    assert alive <= 50, "%d slowloris connections from one address held open" % alive
    assert alive >= 40, "the per-address cap let too few through: %d" % alive


# ---- slowhttptest -----------------------------------------------------------------------

SLOWHTTPTEST = shutil.which("slowhttptest")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def big_response(sock, be):
    """Keep-alive backend answering every request with 256 KiB."""
    body = b"r" * (1 << 20)
    rest = b""
    while True:
        r = read_http_request(sock, rest)
        if r is None:
            return
        rest = r[3]
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.skipif(SLOWHTTPTEST is None, reason="slowhttptest is not installed (apt-get install slowhttptest)")
@pytest.mark.parametrize("mode", ["-H", "-B", "-X"], ids=["slowloris", "slow-body", "slow-read"])
def test_slowhttptest(tollgate, backend, tmp_path, mode):
    """slowhttptest for 10 s: a client from another address is served
    quickly all along and after; slowhttptest's own probe finds the service
    available; tollgate's timeouts close the slow connections."""
    b = backend(big_response)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], hosts='[app.test, "127.0.0.1"]', extra="""
client:
  header_timeout: 3s
  body_timeout: 3s
  min_body_rate: 200
  send_timeout: 2s
"""))
    stats = tmp_path / "stats"
    nconn = 60 if mode == "-X" else 300  # slow reads pin MiBs of kernel buffers each
    args = [SLOWHTTPTEST, mode, "-c", str(nconn), "-r", "100", "-l", "10", "-p", "3", "-g",
            "-o", str(stats), "-u", "http://127.0.0.1:%d/" % port]
    if mode == "-H":
        args += ["-i", "2", "-x", "10"]
    elif mode == "-B":
        args += ["-i", "2", "-x", "10", "-s", "100000"]
    else:
        args += ["-k", "3", "-n", "3", "-w", "512", "-y", "1024", "-z", "32"]
    out_path = tmp_path / "slowhttptest.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    probes = []
    fds = []  # tollgate's open descriptors along the way
    base_fds = open_fds(tg.proc.pid)
    try:
        time.sleep(1.0)
        while proc.poll() is None:
            probes.append(simple_get(port, "/", source="127.0.0.2", timeout=5))
            fds.append(open_fds(tg.proc.pid))
            time.sleep(0.5)
    finally:
        try:
            proc.wait(timeout=30 * SLOW)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    after = simple_get(port, "/", source="127.0.0.2")
    text = ANSI.sub("", out_path.read_text(errors="replace"))
    # Per-second statistics: Seconds,Closed,Pending,Connected,Service Available
    # (the last column is 0 while its probe fails).
    rows = []
    csv_path = tmp_path / "stats.csv"
    if csv_path.exists():
        for line in csv_path.read_text().splitlines()[1:]:
            parts = line.split(",")
            if len(parts) == 5 and all(p.strip().isdigit() for p in parts):
                rows.append([int(p) for p in parts])
    exit_status = re.findall(r"Exit status:\s*(.*)", text)
    print("slowhttptest %s: %d s, max connected %s, closed %s, service available %s, exit %s; "
          "our probes %d, worst %.0f ms; tollgate fds %d -> max %d -> %d, RSS %d KiB"
          % (mode, len(rows), max((r[3] for r in rows), default="?"),
             rows[-1][1] if rows else "?",
             "YES" if rows and all(r[4] > 0 for r in rows) else ("?" if not rows else "NO"),
             exit_status, len(probes), max(t for _, t in probes) * 1000 if probes else -1,
             base_fds, max(fds, default=-1), fds[-1] if fds else -1, tg.rss_kb()))
    assert len(probes) >= 10, "slowhttptest ended early:\n" + text[-2000:]
    bad = [p for p in probes if p[0] != 200 or p[1] > 1.0 * SLOW]
    assert not bad, "requests failed or were slow during the attack: %r" % bad
    assert after[0] == 200 and after[1] < 1.0 * SLOW, after
    # tollgate held the slow connections, then its timeouts (not the end of
    # the test) closed them.
    assert max(fds) > base_fds + nconn // 2, "the attack never reached tollgate: %r" % fds
    assert fds[-1] <= max(fds) // 2, "slow connections were not closed during the attack: %r" % fds
    if rows:
        assert max(r[3] for r in rows) >= nconn * 0.9, "the attack never got going: %r" % rows
        down = [r[0] for r in rows if r[4] == 0]
        assert not down, "slowhttptest found the service unavailable at seconds %r" % down
