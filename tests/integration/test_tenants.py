"""Multi-tenant routing against real backends and a real redis-server: the
issue's config as written, capture and labels, custom domains, unknown and
suspended tenants, live moves with pub/sub invalidation (and after a Redis
restart), stale serving while Redis is down, coalesced look-ups, passive
ejection and retries, active health checks, tenant quotas, consistent
hashing."""

import re
import socket
import time

import pytest

from conftest import (run_tollgate_check, SLOW, Redis, basic_config, free_port, get,
                      requests_on, status_of)

ISSUE_CONFIG = """
workers: 1
listen:
  - address: 127.0.0.1:%d
tenants:
  directory: redis
  redis: { address: 127.0.0.1:18379, key_prefix: "tollgate:tenant:" }
  cache_ttl: 30s
  negative_ttl: 2s
  static:
    demo: { servers: [127.0.0.1:18491] }
sites:
  - hosts: ["{tenant}.platform.test"]
    routes:
      - path: /
        upstream: $tenant
"""


def port_of(resp_headers):
    return int(resp_headers["x-backend"])


@pytest.fixture
def issue_setup(tollgate, backend, tmp_path):
    r = Redis(tmp_path, port=18379)
    backends = {p: backend(port=p) for p in (18491, 18492, 18493)}
    port = free_port()
    tg = tollgate(ISSUE_CONFIG % port)
    yield port, r, backends, tg
    r.stop()


def test_issue_config_moves_a_tenant_live(issue_setup):
    port, r, backends, tg = issue_setup
    r.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:18492", "status", "active")
    status, h, _ = get(port, "/", host="acme.platform.test")
    assert status == 200 and port_of(h) == 18492
    r.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:18493")
    r.cmd("PUBLISH", "tollgate:tenant:changed", "acme")
    time.sleep(0.2)
    status, h, _ = get(port, "/", host="acme.platform.test")
    assert status == 200 and port_of(h) == 18493
    # Static entries win over Redis for the same id.
    r.cmd("HSET", "tollgate:tenant:demo", "servers", "127.0.0.1:18493")
    status, h, _ = get(port, "/", host="demo.platform.test")
    assert port_of(h) == 18491
    # Unknown, suspended, invalid label.
    assert get(port, "/", host="nobody.platform.test")[0] == 404
    r.cmd("HSET", "tollgate:tenant:frozen", "servers", "127.0.0.1:18492", "status", "suspended")
    assert get(port, "/", host="frozen.platform.test")[0] == 403
    assert get(port, "/", host="bad_label.platform.test")[0] == 400
    assert get(port, "/", host="a.b.platform.test")[0] == 404  # one label only
    assert get(port, "/", host="platform.test")[0] == 404
    # Pub/sub survives a Redis restart.
    r.stop()
    r.start()
    time.sleep(1.5)
    r.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:18492", "status", "active")
    get(port, "/", host="acme.platform.test")
    r.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:18491")
    deadline = time.time() + 10
    while time.time() < deadline:
        r.cmd("PUBLISH", "tollgate:tenant:changed", "acme")
        time.sleep(0.3)
        if port_of(get(port, "/", host="acme.platform.test")[1]) == 18491:
            break
    assert port_of(get(port, "/", host="acme.platform.test")[1]) == 18491


def test_redis_down_serves_cached_and_refuses_new(issue_setup):
    port, r, backends, tg = issue_setup
    r.cmd("HSET", "tollgate:tenant:cached", "servers", "127.0.0.1:18492")
    assert get(port, "/", host="cached.platform.test")[0] == 200
    r.stop()
    t0 = time.time()
    assert get(port, "/", host="cached.platform.test")[0] == 200
    assert get(port, "/", host="fresh.platform.test")[0] == 503
    assert time.time() - t0 < 2 * SLOW


def test_concurrent_first_requests_make_one_lookup(issue_setup):
    port, r, backends, tg = issue_setup
    r.cmd("HSET", "tollgate:tenant:busy", "servers", "127.0.0.1:18492")
    before = r.cmd("INFO", "commandstats").decode()
    import re
    def calls(info):
        m = re.search(r"cmdstat_hgetall:calls=(\d+)", info)
        return int(m.group(1)) if m else 0
    # 100 requests whose heads all arrive before the first answer.
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    for s in socks:
        s.sendall(b"GET / HTTP/1.1\r\nHost: busy.platform.test\r\nConnection: close\r\n\r\n")
    codes = []
    for s in socks:
        s.settimeout(10)
        codes.append(status_of(s.recv(4096)))
        s.close()
    assert codes == [200] * 100
    after = r.cmd("INFO", "commandstats").decode()
    assert calls(after) - calls(before) == 1


def test_custom_domains_static_and_redis(tollgate, backend, redis):
    b1, b2 = backend(), backend()
    port = free_port()
    tollgate("""
workers: 1
listen: [127.0.0.1:%d]
tenants:
  directory: redis
  redis: { address: "127.0.0.1:%d" }
  static:
    shop: { servers: [127.0.0.1:%d] }
  domains:
    shop.example.com: shop
sites:
  - hosts: ["{tenant}.platform.test"]
    custom_domains: true
    routes: [{path: /, upstream: $tenant}]
""" % (port, redis.port, b1.port))
    status, h, _ = get(port, "/", host="Shop.Example.com:8080")
    assert status == 200 and port_of(h) == b1.port
    redis.cmd("HSET", "tollgate:tenant:blog", "servers", "127.0.0.1:%d" % b2.port)
    redis.cmd("SET", "tollgate:tenant:host:blog.example.org", "blog")
    status, h, _ = get(port, "/", host="blog.example.org")
    assert status == 200 and port_of(h) == b2.port
    assert get(port, "/", host="unknown.example.net")[0] == 404


def test_a_suspended_static_tenant_needs_no_servers(tollgate, tmp_path):
    """docs/multi-tenant.md: a suspended tenant needs no servers (nothing is
    forwarded for it); an active one without servers is refused."""
    cfg = """
listen: [127.0.0.1:%d]
tenants:
  static:
    old: { status: %s }
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant}]
"""
    port = free_port()
    rc, out, _ = run_tollgate_check(cfg % (port, "active"), tmp_path)
    assert rc != 0 and "tenant 'old' needs servers" in out, out
    tollgate(cfg % (port, "suspended"))
    assert get(port, "/", host="old.platform.test")[0] == 403
    assert get(port, "/", host="new.platform.test")[0] == 404


def test_tenant_cache_counters_are_exported(tollgate, backend, redis):
    """The per-worker counters the docs name reach /metrics: Redis
    look-ups, errors, invalidations, and the bytes the caches hold."""
    import re
    import urllib.request
    b = backend()
    port, admin = free_port(), free_port()
    tollgate("""
workers: 2
listen: [127.0.0.1:%d]
admin: {listen: 127.0.0.1:%d}
tenants:
  directory: redis
  redis: { address: "127.0.0.1:%d" }
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant}]
""" % (port, admin, redis.port))

    def metrics():
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin,
                                      timeout=10).read().decode()
        return dict((k, float(v)) for k, v in
                    re.findall(r"^(tollgate_tenant_[a-z_]+(?:\{[^}]*\})?) (\S+)$", body, re.M))
    before = metrics()
    assert before["tollgate_tenant_cache_memory_bytes"] >= 0
    redis.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:%d" % b.port)
    for i in range(4):
        assert get(port, "/", host="acme.platform.test")[0] == 200
        assert get(port, "/", host="nobody%d.platform.test" % i)[0] == 404
    redis.cmd("PUBLISH", "tollgate:tenant:changed", "acme")
    time.sleep(0.5 * SLOW)
    after = metrics()
    assert after["tollgate_tenant_redis_lookups_total"] >= 5, after
    assert after["tollgate_tenant_cache_memory_bytes"] > before["tollgate_tenant_cache_memory_bytes"]
    assert after["tollgate_tenant_invalidations_total"] >= 1, after
    assert after["tollgate_tenant_redis_errors_total"] == 0, after


def test_tenant_quotas_from_the_directory(tollgate, backend, redis):
    b = backend()
    port = free_port()
    tollgate("""
workers: 1
listen: [127.0.0.1:%d]
rate_limit:
  policies:
    per_tenant: { rate: 1000/s, burst: 1000, key: [tenant] }
tenants:
  directory: redis
  redis: { address: "127.0.0.1:%d" }
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant, rate_limit: per_tenant}]
""" % (port, redis.port))
    redis.cmd("HSET", "tollgate:tenant:free", "servers", "127.0.0.1:%d" % b.port, "rate", "1/m",
              "burst", "3")
    redis.cmd("HSET", "tollgate:tenant:pro", "servers", "127.0.0.1:%d" % b.port)
    codes = [get(port, "/", host="free.platform.test")[0] for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert all(get(port, "/", host="pro.platform.test")[0] == 200 for _ in range(10))


def test_rate_limit_reports_the_tenant_quota_it_enforces(tollgate, backend, tmp_path):
    """A tenant's own quota (2/s) under a 100/s policy: RateLimit-Policy,
    RateLimit, X-RateLimit-Limit and explain say 2/s, as enforcement does
    (they said 100/s)."""
    import subprocess
    from conftest import BIN
    b = backend()
    port = free_port()
    cfg = """
workers: 1
listen: [127.0.0.1:%d]
rate_limit:
  headers: true
  legacy_headers: true
  policies:
    per_tenant: { rate: 100/s, burst: 100, key: [tenant] }
tenants:
  static:
    free: { servers: [127.0.0.1:%d], rate: 2/s, burst: 2 }
    pro: { servers: [127.0.0.1:%d] }
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant, rate_limit: per_tenant}]
""" % (port, b.port, b.port)
    tollgate(cfg)
    answers = [get(port, "/", host="free.platform.test") for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 429]
    for status, h, _ in answers:
        assert h["ratelimit-policy"] == '"per_tenant";q=2;w=1', h
        assert h["x-ratelimit-limit"] == "2", h
    status, h, _ = get(port, "/", host="pro.platform.test")
    assert status == 200 and h["ratelimit-policy"] == '"per_tenant";q=100;w=1', h
    path = tmp_path / "q.yaml"
    path.write_text(cfg)
    out = subprocess.run([BIN, "explain", "-c", str(path), "GET http://free.platform.test/"],
                         capture_output=True, text=True, timeout=30).stdout
    assert "2/s, burst 2, the tenant's own quota" in out, out


def test_passive_ejection_and_retries(tollgate, backend):
    good = backend()
    dead_port = free_port()
    port = free_port()
    tg = tollgate(basic_config(port, [dead_port, good.port], workers=1,
                               upstream_extra="    retries: 1\n    max_fails: 2\n    eject_time: 5s"))
    for _ in range(10):
        assert get(port, "/")[0] == 200  # GETs retried on the good server
    time.sleep(0.2)
    # One line when the server goes down (issue 23: not one per request).
    log = tg.stderr()
    assert len(re.findall(r"upstream app: server 127\.0\.0\.1:%d is down: failed 2 times in a row "
                          r"\(last: refused the connection" % dead_port, log)) == 1, log


def test_post_not_retried_after_bytes_sent(tollgate, backend):
    attempts = []

    def resetting(sock, be):
        data = sock.recv(65536)
        attempts.append(data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    b1 = backend(resetting)
    b2 = backend(resetting)
    port = free_port()
    tollgate(basic_config(port, [b1.port, b2.port], workers=1, upstream_extra="    retries: 1"))
    status, _, _ = get(port, "/submit", method="POST", body=b"x" * 1000)
    assert status == 502
    assert len(attempts) == 1  # the POST went to one server only
    attempts.clear()
    assert get(port, "/idempotent")[0] == 502
    assert len(attempts) == 2  # a GET tries the other server


def health_backend(state):
    def handler(sock, be):
        for head, headers, body in requests_on(sock):
            if head.startswith("GET /health"):
                code = b"200 OK" if state["healthy"] else b"503 Service Unavailable"
                sock.sendall(b"HTTP/1.1 " + code + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            sock.sendall(b"HTTP/1.1 200 OK\r\nX-Backend: %d\r\nContent-Length: 0\r\n\r\n" % be.port)
    return handler


def test_active_health_checks(tollgate, backend):
    s1, s2 = {"healthy": True}, {"healthy": True}
    b1, b2 = backend(health_backend(s1)), backend(health_backend(s2))
    port = free_port()
    tg = tollgate(basic_config(port, [b1.port, b2.port], workers=2, upstream_extra="""
    health_check: { path: /health, interval: 200ms, timeout: 100ms, fails: 2, passes: 2 }"""))
    seen = {port_of(get(port, "/")[1]) for _ in range(6)}
    assert seen == {b1.port, b2.port}
    s2["healthy"] = False
    time.sleep(1.0)
    assert {port_of(get(port, "/")[1]) for _ in range(8)} == {b1.port}
    assert "health check: 127.0.0.1:%d is down" % b2.port in tg.stderr()
    s2["healthy"] = True
    time.sleep(1.0)
    assert {port_of(get(port, "/")[1]) for _ in range(8)} == {b1.port, b2.port}
    assert "health check: 127.0.0.1:%d is up again" % b2.port in tg.stderr()


def test_consistent_hashing_minimal_movement(tollgate, backend):
    bs = [backend() for _ in range(4)]
    port = free_port()
    cfg = basic_config(port, [b.port for b in bs], workers=2,
                       upstream_extra="    balance: hash\n    hash_key: header:X-User")
    tg = tollgate(cfg)
    users = ["user%d" % i for i in range(60)]
    first = {u: port_of(get(port, "/", headers={"X-User": u})[1]) for u in users}
    again = {u: port_of(get(port, "/", headers={"X-User": u})[1]) for u in users}
    assert first == again  # sticky
    assert len(set(first.values())) >= 3  # spread
    # Take one server away: only its users move.
    gone = bs[1].port
    tg.reload(basic_config(port, [b.port for b in bs if b.port != gone], workers=2,
                           upstream_extra="    balance: hash\n    hash_key: header:X-User"))
    after = {u: port_of(get(port, "/", headers={"X-User": u})[1]) for u in users}
    moved = [u for u in users if after[u] != first[u]]
    assert all(first[u] == gone for u in moved)
    assert all(after[u] != gone for u in users)


def _ask(port, host, headers=None, source="127.0.0.1"):
    """GET / from a chosen loopback address: (status, the backend's view)."""
    import http.client
    import json
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10 * SLOW,
                                   source_address=(source, 0))
    c.putrequest("GET", "/", skip_host=True)
    c.putheader("Host", host)
    for k, v in (headers or []):
        c.putheader(k, v)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    c.close()
    seen = json.loads(body) if r.status == 200 else None
    return r.status, seen


def test_tenant_header_from_trusted_peers_only(tollgate, backend, tmp_path):
    """Issue 22 (7): a site's tenant_header lets a trusted peer (internal
    tooling, `curl -H "X-Tenant-ID: t1" localhost`) name the tenant, Host
    or not; any other peer's copy is ignored and never reaches the backend,
    which always gets the gateway's own."""
    b1, b2 = backend(), backend()
    port = free_port()
    tollgate("""
listen: [127.0.0.1:%d]
trusted_proxies: [127.0.0.1/32]
tenants:
  static:
    t1: { servers: [127.0.0.1:%d] }
    t2: { servers: [127.0.0.1:%d] }
sites:
  - hosts: ["{tenant}.platform.test"]
    tenant_header: X-Tenant-ID
    routes: [{path: /, upstream: $tenant}]
""" % (port, b1.port, b2.port))
    # Trusted (127.0.0.1): the field names the tenant, with any Host.
    st, seen = _ask(port, "localhost:%d" % port, [("X-Tenant-ID", "t1")])
    assert st == 200 and seen["port"] == b1.port
    assert seen["headers"]["x-tenant-id"] == ["t1"]
    st, seen = _ask(port, "t2.platform.test", [("x-tenant-id", "T1")])
    assert st == 200 and seen["port"] == b1.port, "the field wins over the Host"
    assert seen["headers"]["x-tenant-id"] == ["t1"]
    assert _ask(port, "localhost", [("X-Tenant-ID", "t1"), ("X-Tenant-ID", "t2")])[0] == 400
    assert _ask(port, "localhost", [("X-Tenant-ID", "../t1")])[0] == 400
    assert _ask(port, "localhost", [("X-Tenant-ID", "nosuch")])[0] == 404
    # Untrusted (127.0.0.2): the field is ignored and removed; the backend
    # learns the tenant from the gateway.
    st, seen = _ask(port, "t2.platform.test", [("X-Tenant-ID", "t1")], source="127.0.0.2")
    assert st == 200 and seen["port"] == b2.port
    assert seen["headers"]["x-tenant-id"] == ["t2"]
    assert _ask(port, "localhost", [("X-Tenant-ID", "t1")], source="127.0.0.2")[0] == 404
    # Without the field, the Host as always.
    st, seen = _ask(port, "t2.platform.test")
    assert st == 200 and seen["port"] == b2.port and seen["headers"]["x-tenant-id"] == ["t2"]


def test_tenant_header_needs_trusted_proxies(tmp_path):
    port = free_port()
    rc, out, _ = run_tollgate_check("""
listen: [127.0.0.1:%d]
tenants:
  static:
    t1: { servers: [127.0.0.1:9] }
sites:
  - hosts: [localhost]
    tenant_header: X-Tenant-ID
    routes: [{path: /, upstream: $tenant}]
""" % port, tmp_path)
    assert rc != 0 and re.search(r":8:20: tenant_header needs trusted_proxies", out), out


def test_redis_down_every_worker_serves_what_one_fetched(tollgate, backend, redis):
    """Issue 22 (6): the stale-while-error fallback is process-wide. With
    four workers, a tenant moved by pub/sub and looked up again on one
    connection (one worker), then Redis stopped: new connections land on
    every worker, and each serves the tenant at its new place (before, the
    workers that had not looked it up answered 503)."""
    import re as _re
    import urllib.request
    b1, b2 = backend(), backend()
    port, admin = free_port(), free_port()
    tollgate("""
workers: 4
listen: [127.0.0.1:%d]
admin: { listen: 127.0.0.1:%d }
tenants:
  directory: redis
  redis: { address: "127.0.0.1:%d" }
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant}]
""" % (port, admin, redis.port))
    redis.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:%d" % b1.port)
    assert get(port, "/", host="acme.platform.test")[0] == 200
    redis.cmd("HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:%d" % b2.port)
    redis.cmd("PUBLISH", "tollgate:tenant:changed", "acme")
    time.sleep(0.3)
    status, h, _ = get(port, "/", host="acme.platform.test")
    assert status == 200 and port_of(h) == b2.port
    redis.stop()
    answers = [get(port, "/", host="acme.platform.test") for _ in range(24)]
    assert [s for s, _, _ in answers] == [200] * 24, [s for s, _, _ in answers]
    assert {port_of(h) for _, h, _ in answers} == {b2.port}
    # A tenant nobody fetched is still unknown: 503, not a guess.
    assert get(port, "/", host="other.platform.test")[0] == 503
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=10).read().decode()
    taken = float(_re.search(r"^tollgate_tenant_shared_taken_total (\S+)$", body, _re.M).group(1))
    # Each connection is new: with four workers, some landed on workers
    # that had never fetched acme, and took the shared entry.
    assert taken >= 1
    assert float(_re.search(r"^tollgate_tenant_shared_entries (\S+)$", body, _re.M).group(1)) == 1
