"""The error log under faults that repeat for every request (issue 23, item
6: a dead backend wrote two lines per request, "...; retrying" then "no
server left to try"). A fault is logged when a state changes (a server
goes down, comes back) and otherwise at a bounded rate: the first failure at
once, in full, then at most one line per subject every 10 s counting the
rest. At log level debug every request's failure is there too."""

import re
import threading
import time

from conftest import SLOW, basic_config, free_port, get, read_http_request

SUMMARY_EVERY_S = 10  # src/faultlog.c: TG_FAULTLOG_EVERY_S


def log_lines(tg):
    return tg.stderr().splitlines()


def about(tg, *needles):
    """The error-log lines that mention any of `needles`."""
    return [l for l in log_lines(tg) if any(n in l for n in needles)]


def wait_for_line(tg, pattern, timeout):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if re.search(pattern, tg.stderr()):
            return True
        time.sleep(0.2)
    return False


def failed_requests_logged(tg, upstream="app"):
    """Requests the log accounts for: each one logged on its own line
    ("(answered 502...)") plus the counts of the summaries."""
    alone = [l for l in log_lines(tg) if re.search(r"upstream %s: request \S+: .*\(answered \d{3}"
                                                   % re.escape(upstream), l)]
    counted = [int(m) for m in re.findall(r"upstream %s: (\d+) more requests failed in the last"
                                          % re.escape(upstream), tg.stderr())]
    return alone, counted


def test_dead_backend_logs_the_state_change_and_counts_not_every_request(tollgate):
    # Two workers: the count and the state are the process's, not a
    # worker's (one "down" line, one summary, not one per worker).
    dead = free_port()
    port = free_port()
    tg = tollgate(basic_config(port, [dead], workers=2))
    t0 = time.time()
    for _ in range(200):
        assert get(port, "/")[0] == 502
    took = time.time() - t0
    assert took < SUMMARY_EVERY_S - 2, "too slow to test: %.1f s" % took
    assert wait_for_line(tg, r"upstream app: \d+ more requests failed in the last",
                         SUMMARY_EVERY_S + 5), tg.stderr()[-3000:]
    lines = about(tg, "upstream app", "127.0.0.1:%d" % dead)
    # Was 400 lines (two per request).
    assert len(lines) <= 4, "\n".join(lines)
    downs = [l for l in lines if "is down" in l]
    assert len(downs) == 1, lines
    assert "[warn]" in downs[0] and "server 127.0.0.1:%d" % dead in downs[0], downs
    assert "failed 3 times in a row" in downs[0] and "refused the connection" in downs[0], downs
    alone, counted = failed_requests_logged(tg)
    assert len(alone) == 1 and "[error]" in alone[0], lines
    assert "127.0.0.1:%d" % dead in alone[0] and "refused the connection" in alone[0], alone
    assert len(alone) + sum(counted) == 200, lines
    summary = [l for l in lines if "more requests failed" in l][0]
    assert "[error]" in summary and "(last: request " in summary, summary
    assert "127.0.0.1:%d" % dead in summary, summary


def test_backend_coming_back_logs_one_recovery_line(tollgate, backend):
    dead = free_port()
    port = free_port()
    tg = tollgate(basic_config(port, [dead], workers=1))
    for _ in range(30):
        assert get(port, "/")[0] == 502
    time.sleep(0.3)
    b = backend(port=dead)
    for _ in range(20):
        assert get(port, "/")[0] == 200
    time.sleep(0.2)
    ups = about(tg, "is up again")
    assert len(ups) == 1, tg.stderr()[-3000:]
    m = re.search(r"\[info\] .*upstream app: server 127\.0\.0\.1:%d is up again after "
                  r"(\d+(?:\.\d+)?) ?s down; (\d+) requests to it failed meanwhile" % dead, ups[0])
    assert m, ups
    assert 0.2 <= float(m.group(1)) < 30, ups
    assert int(m.group(2)) == 30, ups  # every failure, from the first in a row
    assert len(about(tg, "upstream app", "127.0.0.1:%d" % dead)) <= 4, tg.stderr()[-3000:]
    b.close()


def test_flapping_backend_logs_each_change_but_not_each_request(tollgate, backend):
    dead_port = free_port()
    port = free_port()
    tg = tollgate(basic_config(port, [dead_port], workers=1))
    cycles = 3
    for _ in range(cycles):
        for _ in range(10):
            assert get(port, "/")[0] == 502
        b = backend(port=dead_port)
        for _ in range(5):
            assert get(port, "/")[0] == 200
        b.close()
        time.sleep(0.2)  # the pooled connections see the close
    log = tg.stderr()
    downs = re.findall(r"upstream app: server 127\.0\.0\.1:%d is down" % dead_port, log)
    ups = re.findall(r"upstream app: server 127\.0\.0\.1:%d is up again" % dead_port, log)
    assert len(downs) == cycles and len(ups) == cycles, log[-4000:]
    lines = about(tg, "upstream app", "127.0.0.1:%d" % dead_port)
    # The changes, the first failure, at most a summary: not 30 failures.
    assert len(lines) <= 2 * cycles + 3, "\n".join(lines)


def test_debug_level_keeps_every_request_failure(tollgate):
    dead = free_port()
    port = free_port()
    tg = tollgate(basic_config(port, [dead], workers=1, extra="log: {level: debug}"))
    for _ in range(20):
        assert get(port, "/")[0] == 502
    time.sleep(0.3)
    alone, _ = failed_requests_logged(tg)
    assert len(alone) == 20, "\n".join(alone)
    assert len({re.search(r"request (\S+):", l).group(1) for l in alone}) == 20
    assert sum("[debug]" in l for l in alone) == 19, alone
    # The attempt each of them made is there too.
    assert len(about(tg, "[debug]")) >= 19


def test_timeouts_are_counted_not_logged_per_request(tollgate, backend):
    def silent(sock, be):
        read_http_request(sock)
        time.sleep(3 * SLOW)
    b = backend(silent)
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], workers=1,
                               upstream_extra="    read_timeout: 300ms\n    max_fails: 0"))
    codes = []

    def one():
        codes.append(get(port, "/")[0])
    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [504] * 20
    time.sleep(0.2)
    lines = about(tg, "read_timeout")
    assert len(lines) == 1, "\n".join(lines)  # was 20
    assert "(answered 504)" in lines[0] and "127.0.0.1:%d" % b.port in lines[0], lines


def test_upstream_tls_verify_failures_are_not_logged_per_request(tollgate, backend, tmp_path):
    from test_tls import PKI, tls_backend, upstream_tls_config
    pki = PKI(tmp_path)
    bad = backend(tls_backend(pki, "up", ["someone-else.test"]))
    port = free_port()
    tg = tollgate(upstream_tls_config(port, bad.port, pki.ca, upstream_extra="    retries: 0"))
    for _ in range(40):
        assert get(port, "/")[0] == 502
    time.sleep(0.2)
    lines = about(tg, "TLS handshake")
    # The first failure and the server going down: was one per request.
    assert 1 <= len(lines) <= 2, "\n".join(lines)
    assert any("is down" in l for l in lines), lines


def test_tenant_backend_down_is_one_line_per_change(tollgate):
    dead = free_port()
    port = free_port()
    tg = tollgate("""
workers: 1
listen: [127.0.0.1:%d]
tenants:
  static:
    acme: { servers: [127.0.0.1:%d] }
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant}]
""" % (port, dead))
    for _ in range(50):
        assert get(port, "/", host="acme.platform.test")[0] == 502
    time.sleep(0.2)
    lines = about(tg, "127.0.0.1:%d" % dead)
    assert len(lines) <= 2, "\n".join(lines)
    assert any("acme" in l and "is down" in l for l in lines), lines


def redis_limited_config(port, backend_port, redis_port):
    return """
workers: 2
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:%d]}}
rate_limit:
  redis: { address: "127.0.0.1:%d", timeout: 50ms, on_error: deny }
  policies:
    login: { rate: 100/s, burst: 100, key: [header:X-User], store: redis }
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: app, rate_limit: login}]
""" % (port, backend_port, redis_port)


def test_redis_down_is_logged_per_change_not_per_request(tollgate, backend, redis):
    b = backend()
    port = free_port()
    tg = tollgate(redis_limited_config(port, b.port, redis.port))
    time.sleep(0.5)
    assert get(port, "/", headers={"X-User": "a"})[0] == 200
    redis.stop()
    for _ in range(100):
        assert get(port, "/", headers={"X-User": "a"})[0] == 503
    time.sleep(0.3)
    lines = about(tg, "redis", "rate-limit store")
    # A state change per worker's connection at most: not per request.
    assert len(lines) <= 4, "\n".join(lines)
