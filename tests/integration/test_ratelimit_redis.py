"""Shared rate limits through a real redis-server: several gateways, one
budget; Redis stopped, slow, flushed or restarted: never blocking, fail-soft
as configured."""

import threading
import time

from conftest import SLOW, free_port, get


def redis_config(port, backend_port, redis_port, on_error="local", timeout="50ms",
                 policy="{ rate: 1/h, burst: 10, key: [header:X-User], store: redis }"):
    return """
workers: 2
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:%d]}}
rate_limit:
  redis: { address: "127.0.0.1:%d", timeout: %s, on_error: %s, key_prefix: "t:" }
  policies:
    login: %s
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: app, rate_limit: login}]
""" % (port, backend_port, redis_port, timeout, on_error, policy)


def hit(port, user="u1"):
    t0 = time.time()
    status = get(port, "/login", headers={"X-User": user})[0]
    return status, time.time() - t0


def test_three_gateways_share_one_budget(tollgate, backend, redis):
    b = backend()
    ports = [free_port() for _ in range(3)]
    for p in ports:
        tollgate(redis_config(p, b.port, redis.port))
    time.sleep(0.5)  # connected
    results = []
    lock = threading.Lock()

    def client(i):
        for k in range(4):
            s = hit(ports[(i + k) % 3])[0]
            with lock:
                results.append(s)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 10, results  # the burst, across all gateways
    assert results.count(429) == 110
    keys = redis.cmd("KEYS", "t:*")
    assert b"t:{login:u1}" in keys


def test_redis_down_local_fallback_then_recovery(tollgate, backend, redis):
    b = backend()
    port = free_port()
    tollgate(redis_config(port, b.port, redis.port, on_error="local",
                          policy="{ rate: 1/h, burst: 4, key: [header:X-User], store: redis }"))
    time.sleep(0.5)
    assert [hit(port, "a")[0] for _ in range(5)] == [200] * 4 + [429]
    redis.stop()
    # Local buckets take over: still limited, never slow.
    statuses, times = [], []
    for _ in range(8):
        s, took = hit(port, "b")
        statuses.append(s)
        times.append(took)
    assert statuses.count(200) <= 4 and 429 in statuses
    assert max(times) < 0.05 + 0.05 + 0.2 * SLOW, times
    # Redis back: shared limiting resumes by itself.
    redis.start()
    deadline = time.time() + 15
    while time.time() < deadline:
        if redis.cmd("EXISTS", "t:{login:c}") == b":0\r\n" and hit(port, "c")[0] == 200 and \
                redis.cmd("EXISTS", "t:{login:c}") == b":1\r\n":
            break
        time.sleep(0.3)
    assert redis.cmd("EXISTS", "t:{login:c}") == b":1\r\n"


def test_redis_down_deny_and_allow(tollgate, backend, redis):
    b = backend()
    p_deny, p_allow = free_port(), free_port()
    tollgate(redis_config(p_deny, b.port, redis.port, on_error="deny"))
    tollgate(redis_config(p_allow, b.port, redis.port, on_error="allow"))
    time.sleep(0.5)
    assert hit(p_deny)[0] == 200
    redis.stop()
    s, took = hit(p_deny)
    assert s == 503 and took < 0.5 * SLOW
    assert all(hit(p_allow, "z")[0] == 200 for _ in range(15))


def test_script_flush_is_transparent(tollgate, backend, redis):
    b = backend()
    port = free_port()
    tollgate(redis_config(port, b.port, redis.port))
    time.sleep(0.5)
    assert hit(port, "f")[0] == 200
    assert redis.cmd("SCRIPT", "FLUSH") == b"+OK\r\n"
    assert hit(port, "f")[0] == 200
    assert redis.cmd("EXISTS", "t:{login:f}") == b":1\r\n"


def test_slow_redis_times_out_without_stalling_others(tollgate, backend, redis):
    b = backend()
    port = free_port()
    tollgate(redis_config(port, b.port, redis.port, on_error="allow", timeout="100ms"))
    time.sleep(0.5)
    assert hit(port, "s")[0] == 200
    slow = threading.Thread(target=redis.cmd, args=("DEBUG", "SLEEP", "1"))
    slow.start()
    time.sleep(0.1)
    times = [hit(port, "s%d" % i)[1] for i in range(5)]
    slow.join()
    assert max(times) < 0.1 + 0.2 * SLOW, times  # the timeout, not Redis' second
    # Unlimited routes never wait for Redis at all.
    assert hit(port, "s")[0] == 200
