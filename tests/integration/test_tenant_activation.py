"""Tenants placed on their first request (issue 22, item 3), with the
reference control plane (docs/examples/control_plane.py) as the control
plane: an archived tenant's first requests, on two gateways with two
workers each, wait (without blocking anything else) while one activation
message goes out, and are served once the tenant is placed; a tenant never
placed gets 503 with Retry-After after activation.timeout; max_waiting
bounds the parked requests; without activation, placing/archived is 503 at
once."""

import os
import re
import subprocess
import sys
import threading
import time

from conftest import ROOT, SLOW, free_port, get

CONTROL_PLANE = os.path.join(ROOT, "docs", "examples", "control_plane.py")


def config(port, redis_port, activation):
    return """
workers: 2
listen: [127.0.0.1:%d]
tenants:
  directory: redis
  redis: { address: "127.0.0.1:%d" }
  %s
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant}]
""" % (port, redis_port, activation)


def start_control_plane(redis, *args):
    p = subprocess.Popen([sys.executable, CONTROL_PLANE, "--redis", "127.0.0.1:%d" % redis.port]
                         + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    line = p.stdout.readline()
    assert b"reading" in line, line
    return p


def stream_entries(redis):
    return redis.cmd("XRANGE", "tollgate:tenant:activate", "-", "+")


def test_archived_tenant_activated_on_first_request(tollgate, backend, redis):
    b = backend()
    port1, port2 = free_port(), free_port()
    tollgate(config(port1, redis.port, "activation: { timeout: 8s }"))
    tollgate(config(port2, redis.port, "activation: { timeout: 8s }"))
    redis.cmd("HSET", "tollgate:tenant:arch", "status", "archived")
    redis.cmd("HSET", "tollgate:tenant:live", "servers", "127.0.0.1:%d" % b.port)
    cp = start_control_plane(redis, "--place", "arch=127.0.0.1:%d" % b.port, "--delay", "1.0")
    try:
        results = []

        def ask(port):
            t0 = time.monotonic()
            status, h, body = get(port, "/", host="arch.platform.test", timeout=15)
            results.append((status, time.monotonic() - t0, h.get("x-backend")))
        threads = [threading.Thread(target=ask, args=(p,)) for p in [port1, port2] * 4]
        for t in threads:
            t.start()
        # Meanwhile other tenants are served at once (nothing is blocked).
        time.sleep(0.3)
        t0 = time.monotonic()
        assert get(port1, "/", host="live.platform.test")[0] == 200
        assert get(port2, "/", host="live.platform.test")[0] == 200
        assert time.monotonic() - t0 < 0.5 * SLOW
        for t in threads:
            t.join(20 * SLOW)
        assert [r[0] for r in results] == [200] * 8, results
        assert all(r[2] == str(b.port) for r in results), results
        assert min(r[1] for r in results) >= 0.9, results  # they waited for the placement
        # One message for eight requests on two gateways (four workers).
        entries = stream_entries(redis)
        assert entries.startswith(b"*1\r\n") and b"\r\narch\r\n" in entries, entries
        assert b"arch.platform.test" in entries and b"gateway" in entries
        # Placed: the next requests go straight through.
        t0 = time.monotonic()
        assert get(port1, "/", host="arch.platform.test")[0] == 200
        assert time.monotonic() - t0 < 0.5 * SLOW
    finally:
        cp.terminate()
        cp.wait(timeout=10)


def test_never_placed_is_503_after_the_timeout_and_waiting_is_bounded(tollgate, backend, redis):
    port, admin = free_port(), free_port()
    tollgate(config(port, redis.port, "activation: { timeout: 1500ms, max_waiting: 2, "
                                      "unknown: true }")
             .replace("workers: 2", "workers: 1\nadmin: { listen: 127.0.0.1:%d }" % admin))
    redis.cmd("HSET", "tollgate:tenant:stuck", "status", "placing")
    results = []

    def ask(host):
        t0 = time.monotonic()
        status, h, _ = get(port, "/", host=host, timeout=15)
        results.append((host, status, time.monotonic() - t0, h.get("retry-after")))
    waiting = [threading.Thread(target=ask, args=(h,))
               for h in ("stuck.platform.test", "nobody.platform.test")]
    for t in waiting:
        t.start()
    time.sleep(0.4)
    # Two wait already: a third is refused at once.
    t0 = time.monotonic()
    status, h, _ = get(port, "/", host="stuck.platform.test")
    assert status == 503 and h.get("retry-after") == "5" and time.monotonic() - t0 < 0.5 * SLOW
    for t in waiting:
        t.join(10 * SLOW)
    assert sorted(r[:2] for r in results) == [("nobody.platform.test", 503),
                                              ("stuck.platform.test", 503)], results
    for _, _, took, retry_after in results:
        assert 1.3 < took < 4 * SLOW and retry_after == "5", results
    # Both asked for (unknown: true takes the unknown id too), once each.
    entries = stream_entries(redis)
    assert entries.startswith(b"*2\r\n"), entries
    assert entries.count(b"\r\nstuck\r\n") == 1 and entries.count(b"\r\nnobody\r\n") == 1, entries
    import urllib.request
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=10).read()
    m = dict(re.findall(rb'^tollgate_tenant_activation_requests_total\{result="(\w+)"\} (\d+)',
                        body, re.M))
    assert m == {b"placed": b"0", b"timeout": b"2", b"refused": b"1"}, m


def test_without_activation_placing_is_503_at_once(tollgate, redis):
    port = free_port()
    tollgate(config(port, redis.port, "cache_ttl: 30s"))
    redis.cmd("HSET", "tollgate:tenant:moving", "status", "placing")
    t0 = time.monotonic()
    status, h, body = get(port, "/", host="moving.platform.test")
    assert status == 503 and h.get("retry-after") == "5", (status, body)
    assert b"not placed yet" in body
    assert time.monotonic() - t0 < 0.5 * SLOW
    assert get(port, "/", host="nobody.platform.test")[0] == 404
    assert stream_entries(redis) == b"*0\r\n"
