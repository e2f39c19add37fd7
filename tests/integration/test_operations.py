"""Operations: `tollgate explain`, `make install`, the systemd unit, dropping
root, the access log under a full disk, zero-drop reload under wrk."""

import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import BIN, ROOT, SLOW, basic_config, free_port, get

EXPLAIN_CFG = """
listen: [127.0.0.1:18600]
trusted_proxies: [10.0.0.0/8]
upstreams: {app: {servers: [127.0.0.1:18601, 127.0.0.1:18602]}}
rate_limit:
  policies:
    login: { rate: 5/m, burst: 5, key: [ip] }
    user: { rate: 100/m, burst: 100, key: [route, header:Authorization] }
tenants:
  static:
    acme: { servers: [10.1.1.1:8080] }
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant, rate_limit: login}]
  - hosts: [app.test]
    routes:
      - {path: /_/, upstream: app, allow: [private]}
      - {path: /api/, upstream: app, rate_limit: [login, user]}
"""


def explain(tmp_path, *args):
    cfg = tmp_path / "explain.yaml"
    cfg.write_text(EXPLAIN_CFG)
    p = subprocess.run([BIN, "explain", "-c", str(cfg)] + list(args), capture_output=True,
                       text=True, timeout=30)
    return p.returncode, p.stdout + p.stderr


def test_explain_tenant_route(tmp_path):
    rc, out = explain(tmp_path, "GET https://acme.platform.test/api/x",
                      "-H", "X-Forwarded-For: 203.0.113.9", "--peer", "10.0.0.2")
    assert rc == 0, out
    assert "client:    203.0.113.9" in out
    assert "tenant:    acme (static)" in out
    assert "10.1.1.1:8080" in out
    assert 'limit:     login (5/m, burst 5) key "203.0.113.9"' in out
    assert "Strict-Transport-Security" in out
    assert "answer:    proxied" in out


def test_explain_access_and_keys(tmp_path):
    rc, out = explain(tmp_path, "GET http://app.test/_/", "-H", "X-Forwarded-For: 203.0.113.9")
    assert "not trusted" in out and "client:    127.0.0.1" in out
    rc, out = explain(tmp_path, "GET http://app.test/_/", "--peer", "198.51.100.1")
    assert "answer:    403" in out
    rc, out = explain(tmp_path, "GET http://app.test/api/x", "-H", "Authorization: Bearer t")
    assert 'key "app.test/api/|Bearer%20t"' in out
    assert "Strict-Transport-Security" not in out  # plain HTTP
    rc, out = explain(tmp_path, "GET http://nobody.test/")
    assert "answer:    404" in out
    rc, out = explain(tmp_path, "GET http://app.test/a/%2e%2e/_/", "--peer", "198.51.100.1")
    assert "-> /_/" in out and "answer:    403" in out


def test_make_install(tmp_path):
    dest = tmp_path / "root"
    p = subprocess.run(["make", "-s", "install", "DESTDIR=%s" % dest, "PREFIX=/usr/local"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert os.access(dest / "usr/local/bin/tollgate", os.X_OK)
    assert (dest / "lib/systemd/system/tollgate.service").exists()
    assert (dest / "etc/tollgate/tollgate.yaml.example").exists()
    assert (dest / "usr/local/share/doc/tollgate/operations.md").exists()
    assert (dest / "usr/local/share/doc/tollgate/grafana-dashboard.json").exists()


def test_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    unit = open(os.path.join(ROOT, "conf/tollgate.service")).read()
    unit = unit.replace("/usr/local/bin/tollgate", BIN)
    path = tmp_path / "tollgate.service"
    path.write_text(unit)
    p = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                       timeout=60)
    problems = [l for l in (p.stdout + p.stderr).splitlines() if "tollgate.service" in l]
    assert problems == [], problems
    for need in ("AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "LimitNOFILE="):
        assert need in unit


def test_drops_root_after_binding(tollgate, backend):
    if os.geteuid() != 0:
        pytest.skip("needs root to test dropping it")
    b = backend()
    port = free_port()
    tg = tollgate(basic_config(port, [b.port], extra="user: nobody\n"))
    time.sleep(0.2)
    with open("/proc/%d/status" % tg.proc.pid) as f:
        uids = [l for l in f if l.startswith("Uid:")][0].split()[1:]
    assert set(uids) == {str(shutil.os.getpwnam("nobody").pw_uid) if hasattr(shutil.os, "getpwnam")
                         else __import__("pwd").getpwnam("nobody").pw_uid.__str__()}
    assert get(port, "/")[0] == 200
    assert "running as nobody" in tg.stderr()


def test_access_log_on_a_full_disk_does_not_stall(tollgate, backend, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount tmpfs here: " + r.stderr.strip())
    try:
        b = backend()
        port, aport = free_port(), free_port()
        tollgate(basic_config(port, [b.port], workers=1, extra=(
            "log: {access: %s/access.log, access_flush: 50ms, access_buffer: 4KiB}\n"
            "admin: {listen: 127.0.0.1:%d}\n") % (mnt, aport)))
        times = []
        for i in range(1500):
            s = time.time()
            assert get(port, "/%d?%s" % (i, "x" * 200))[0] == 200
            times.append(time.time() - s)
        assert max(times) < 0.5 * SLOW, max(times)
        time.sleep(0.3)
        metrics = get(aport, "/metrics", host="admin")[2].decode()
        dropped = int(re.search(r"tollgate_access_log_dropped_total (\d+)", metrics).group(1))
        assert os.path.getsize(mnt / "access.log") <= 64 * 1024
        assert dropped > 0  # lines that did not fit were counted, not waited for
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_zero_drop_reload_under_wrk(tollgate, backend, tmp_path):
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed")
    b1, b2 = backend(), backend()
    port = free_port()
    cfg1 = basic_config(port, [b1.port], workers=2)
    cfg2 = basic_config(port, [b1.port, b2.port], workers=2).replace(
        "      - path: /\n", "      - path: /v2\n        upstream: app\n      - path: /\n")
    tg = tollgate(cfg1)
    script = tmp_path / "count.lua"
    script.write_text("""
local non2xx = 0
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  io.write(string.format("NON2XX %d ERRORS %d %d %d %d %d REQUESTS %d\\n", non2xx,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout, summary.requests))
end
""")
    # Keep-alive connections from wrk, plus new connections from a loop.
    w = subprocess.Popen([wrk, "-t2", "-c20", "-d4s", "-s", str(script), "-H", "Host: app.test",
                          "http://127.0.0.1:%d/" % port], stdout=subprocess.PIPE, text=True)
    fresh = {"ok": 0, "bad": 0}
    for i in range(12):
        time.sleep(0.25)
        tg.reload(cfg2 if i % 2 == 0 else cfg1)
        status = get(port, "/x")[0]
        fresh["ok" if status == 200 else "bad"] += 1
    out, _ = w.communicate(timeout=30)
    m = re.search(r"NON2XX (\d+) ERRORS (\d+) (\d+) (\d+) (\d+) (\d+) REQUESTS (\d+)", out)
    assert m, out
    non2xx, *errors, requests = (int(x) for x in m.groups())
    assert requests > 1000, out
    assert non2xx == 0 and sum(errors) == 0, out
    assert fresh["bad"] == 0
