"""The admin listener: Prometheus metrics that move with traffic and parse,
health and readiness (503 while draining), status, rate-limit inspection
and reset, the bearer token."""

import json
import re
import signal
import socket
import threading
import time

from conftest import SLOW, free_port, get, read_http_request, status_of


def admin_get(port, path, method="GET", token=None):
    headers = {"Authorization": "Bearer " + token} if token else {}
    return get(port, path, host="admin", method=method, headers=headers)


def config(port, admin_port, backend_port, extra=""):
    return """
workers: 2
listen: [127.0.0.1:%d]
admin: { listen: 127.0.0.1:%d }
upstreams: {app: {servers: [127.0.0.1:%d]}}
rate_limit:
  policies:
    login: { rate: 5/m, burst: 3, key: [header:X-User] }
sites:
  - hosts: [app.test]
    routes:
      - {path: /login, upstream: app, rate_limit: login}
      - {path: /, upstream: app}
%s
""" % (port, admin_port, backend_port, extra)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)?\})? (-?[0-9.e+]+|NaN|\+Inf)$')


def parse_exposition(text):
    """Validates the Prometheus text format and returns {series: value}."""
    out = {}
    typed = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in typed, "TYPE twice: " + name
            typed[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, "bad sample line: %r" % line
        name = m.group(1)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, "sample before TYPE: " + line
        out[name + (m.group(2) or "")] = float(m.group(5))
    return out


def test_metrics_move_with_traffic(tollgate, backend):
    b = backend()
    port, aport = free_port(), free_port()
    tollgate(config(port, aport, b.port))
    status, headers, body = admin_get(aport, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    before = parse_exposition(body.decode())
    key = 'tollgate_requests_total{site="app.test",route="/",code="2xx"}'
    for _ in range(7):
        assert get(port, "/x")[0] == 200
    for _ in range(5):
        get(port, "/login", headers={"X-User": "m"})
    get(port, "/", host="nobody.test")
    time.sleep(0.1)
    after = parse_exposition(admin_get(aport, "/metrics")[2].decode())
    assert after[key] - before.get(key, 0) == 7
    assert after['tollgate_ratelimit_decisions_total{policy="login",result="limited"}'] == 2
    assert after['tollgate_ratelimit_decisions_total{policy="login",result="allowed"}'] == 3
    assert after['tollgate_upstream_requests_total{upstream="app"}'] >= 10
    assert after['tollgate_unknown_host_total'] >= 1
    assert after['tollgate_request_duration_seconds_count{site="app.test",route="/"}'] >= 7
    assert after['tollgate_connections_accepted_total{listener="127.0.0.1:%d"}' % port] >= 13
    # The first load is no reload (issue 23, item 8).
    assert after['tollgate_config_reloads_total{result="success"}'] == 0
    # Cardinality is bounded by the config: no label carries a path or an address.
    assert not any("/x" in k or "nobody" in k for k in after)


def test_histograms_connect_ttfb_total_with_configured_buckets(tollgate, backend, tmp_path):
    """Issue 21 (2): per route the total time, per upstream the time to a
    new connection and to the first byte, as Prometheus histograms with the
    configured bounds; the whole page passes promtool's own check."""
    import shutil
    import subprocess

    def slow(sock, be):
        while read_http_request(sock) is not None:
            time.sleep(0.03)  # every answer waits 30 ms: in (20ms, 200ms]
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    b = backend(slow)
    port, aport = free_port(), free_port()
    tg = tollgate(config(port, aport, b.port,
                         "admin: { listen: 127.0.0.1:%d, histogram_buckets: [2ms, 20ms, 200ms, 2s] }"
                         % aport).replace("admin: { listen: 127.0.0.1:%d }\n" % aport, ""))
    for _ in range(4):
        assert get(port, "/x")[0] == 200
    time.sleep(0.1)
    text = admin_get(aport, "/metrics")[2].decode()
    m = parse_exposition(text)
    up = 'upstream="app"'
    # Four answers of 30 ms: none under 20 ms, all under 200 ms.
    ttfb = "tollgate_upstream_response_seconds_bucket{%s,le=\"%s\"}"
    assert m[ttfb % (up, "0.02")] == 0 and m[ttfb % (up, "0.2")] == 4, text
    assert m[ttfb % (up, "+Inf")] == 4
    assert m["tollgate_upstream_response_seconds_sum{%s}" % up] >= 4 * 0.03
    assert not any('le="0.001"' in k for k in m)  # the built-in bounds are gone
    # One new connection (workers: 2 may open one each), pooled ones not counted.
    conns = m["tollgate_upstream_connect_seconds_count{%s}" % up]
    assert 1 <= conns <= 2 and conns == b.connections, (conns, b.connections)
    assert m["tollgate_upstream_connect_seconds_bucket{%s,le=\"0.2\"}" % up] == conns
    total = 'tollgate_request_duration_seconds_bucket{site="app.test",route="/",le="%s"}'
    assert m[total % "0.02"] == 0 and m[total % "+Inf"] == 4
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus, tools/packages) is missing"
    page = tmp_path / "metrics.txt"
    page.write_text(text)
    with open(page) as f:
        r = subprocess.run([promtool, "check", "metrics"], stdin=f, capture_output=True,
                           text=True, timeout=30)
    # Exit 1 for a parse error and for lint advice (names, units, help) alike.
    assert r.returncode == 0, r.stdout + r.stderr
    # A reload that names other bounds keeps these (the counts belong to them).
    tg.reload(config(port, aport, b.port,
                     "admin: { listen: 127.0.0.1:%d, histogram_buckets: [1s, 2s] }" % aport)
              .replace("admin: { listen: 127.0.0.1:%d }\n" % aport, ""))
    m = parse_exposition(admin_get(aport, "/metrics")[2].decode())
    assert m[ttfb % (up, "0.2")] == 4
    assert "histogram_buckets changed" in tg.stderr()


def test_histogram_buckets_must_go_up(tmp_path):
    from conftest import BIN
    import subprocess
    cfg = tmp_path / "t.yaml"
    cfg.write_text(config(free_port(), free_port(), 1, "")
                   .replace("admin: {", "admin: { histogram_buckets: [5ms, 5ms],"))
    p = subprocess.run([BIN, "-t", "-c", str(cfg)], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert re.search(r"t\.yaml:\d+:\d+: .*histogram_buckets must go up", p.stderr), p.stderr


def test_reload_metrics_count_reloads_only(tollgate, backend):
    """Issue 23 (8): the initial load counted as a successful reload. Only
    SIGHUP reloads count, by result; the load time is there from the
    start."""
    b = backend()
    port, aport = free_port(), free_port()
    cfg = config(port, aport, b.port)
    tg = tollgate(cfg)
    ok = 'tollgate_config_reloads_total{result="success"}'
    failed = 'tollgate_config_reloads_total{result="failure"}'
    stamp = "tollgate_config_last_reload_timestamp_seconds"
    m = parse_exposition(admin_get(aport, "/metrics")[2].decode())
    assert (m[ok], m[failed]) == (0, 0), m
    assert abs(m[stamp] - time.time()) < 60, m[stamp]
    tg.reload(cfg)
    m = parse_exposition(admin_get(aport, "/metrics")[2].decode())
    assert (m[ok], m[failed]) == (1, 0), m
    tg.reload(cfg + "bogus: true\n", expect_ok=False)
    m = parse_exposition(admin_get(aport, "/metrics")[2].decode())
    assert (m[ok], m[failed]) == (1, 1), m


def test_health_ready_status(tollgate, backend):
    b = backend()
    port, aport = free_port(), free_port()
    tollgate(config(port, aport, b.port))
    assert admin_get(aport, "/healthz")[:1] == (200,)
    assert admin_get(aport, "/readyz")[0] == 200
    status, headers, body = admin_get(aport, "/status")
    doc = json.loads(body)
    assert doc["workers"] == 2 and doc["upstreams"][0]["name"] == "app"
    assert doc["upstreams"][0]["servers"][0]["address"] == "127.0.0.1:%d" % b.port
    assert doc["version"] and doc["config"].endswith("tollgate.yaml")
    assert admin_get(aport, "/nope")[0] == 404
    assert admin_get(aport, "/metrics", method="POST")[0] == 405
    # The admin listener serves only the admin endpoints, never the sites.
    assert get(aport, "/x")[0] == 404


def test_readyz_turns_503_while_draining(tollgate, backend):
    def slow(sock, be):
        read_http_request(sock)
        time.sleep(1.5)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    b = backend(slow)
    port, aport = free_port(), free_port()
    tg = tollgate(config(port, aport, b.port, extra="admin_keep: 1\n").replace(
        "admin_keep: 1\n", ""))
    admin = socket.create_connection(("127.0.0.1", aport))  # kept alive across the drain
    t = threading.Thread(target=get, args=(port, "/slow"))
    t.start()
    time.sleep(0.3)
    tg.kill(signal.SIGTERM)
    time.sleep(0.2)
    admin.sendall(b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n")
    admin.settimeout(3 * SLOW)
    resp = admin.recv(4096)
    assert status_of(resp) == 503 and b"draining" in resp
    t.join()
    assert tg.proc.wait(timeout=10 * SLOW) == 0


def test_ratelimit_inspection_and_reset(tollgate, backend):
    b = backend()
    port, aport = free_port(), free_port()
    tollgate(config(port, aport, b.port))
    for _ in range(4):
        get(port, "/login", headers={"X-User": "locked@example.com"})
    status, _, body = admin_get(aport, "/ratelimit/login/locked@example.com")
    doc = json.loads(body)
    assert status == 200 and doc["remaining"] == 0 and doc["limited"] is True
    assert 0 < doc["retry_after_seconds"] <= 12
    assert get(port, "/login", headers={"X-User": "locked@example.com"})[0] == 429
    status, _, _ = admin_get(aport, "/ratelimit/login?key=locked%40example.com", method="DELETE")
    assert status == 200
    assert get(port, "/login", headers={"X-User": "locked@example.com"})[0] == 200
    assert json.loads(admin_get(aport, "/ratelimit/login/fresh")[2])["remaining"] == 3
    assert admin_get(aport, "/ratelimit/nosuch/x")[0] == 404


def test_bearer_token(tollgate, backend):
    b = backend()
    port, aport = free_port(), free_port()
    tollgate(config(port, aport, b.port).replace(
        "admin: { listen: 127.0.0.1:%d }" % aport,
        "admin: { listen: 127.0.0.1:%d, token: s3cret-admin-token-0123 }" % aport))
    status, headers, _ = admin_get(aport, "/metrics")
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert admin_get(aport, "/metrics", token="wrong-token-wrong-token")[0] == 401
    assert admin_get(aport, "/metrics", token="s3cret-admin-token-0123")[0] == 200
