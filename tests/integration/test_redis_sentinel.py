"""Redis Sentinel (issue 22, item 1): a primary, a replica and three
sentinels on loopback; gateways that know only the sentinels find the
primary, keep an exact shared budget, follow a failover (the primary
killed under load) without any request waiting longer than the Redis
timeout allows, and are exact again afterwards; the tenant directory
follows too, its invalidations included. And the config errors."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (SLOW, Redis, free_port, get, run_tollgate_check, wait_port)

MASTER = "mymaster"


def resp(port, *args, timeout=5.0):
    """One command to a Redis or Sentinel on loopback; the parsed reply
    (bytes, int, list, None; an error reply as a RuntimeError)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        f = s.makefile("rb")

        def read():
            line = f.readline()
            if not line:
                raise ConnectionError("closed")
            kind, rest = line[:1], line[1:-2]
            if kind == b"+":
                return rest
            if kind == b"-":
                raise RuntimeError(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                if n < 0:
                    return None
                data = f.read(n + 2)
                return data[:-2]
            if kind == b"*":
                n = int(rest)
                return None if n < 0 else [read() for _ in range(n)]
            raise ValueError(line)
        return read()
    finally:
        s.close()


def wait_for(what, predicate, timeout):
    deadline = time.time() + timeout * SLOW
    last = None
    while time.time() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (OSError, RuntimeError) as e:
            last = e
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


class Sentinels:
    """A primary, its replica and three sentinels (quorum 2) watching it."""

    def __init__(self, tmp_path):
        self.dir = str(tmp_path)
        self.primary = Redis(tmp_path)
        rdir = os.path.join(self.dir, "replica")
        os.mkdir(rdir)
        self.replica_port = free_port()
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.replica = subprocess.Popen(
            [exe, "--port", str(self.replica_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", rdir,
             "--replicaof", "127.0.0.1", str(self.primary.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_port(self.replica_port)
        wait_for("the replica in sync", lambda: b"master_link_status:up" in
                 resp(self.replica_port, "INFO", "replication"), 10)
        self.ports = [free_port() for _ in range(3)]
        self.procs = []
        sentinel = shutil.which("redis-sentinel")
        for i, p in enumerate(self.ports):
            conf = os.path.join(self.dir, "sentinel%d.conf" % i)
            with open(conf, "w") as f:
                f.write("port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\n"
                        "sentinel monitor %s 127.0.0.1 %d 2\n"
                        "sentinel down-after-milliseconds %s 1000\n"
                        "sentinel failover-timeout %s 3000\n"
                        "sentinel parallel-syncs %s 1\n"
                        % (p, self.dir, MASTER, self.primary.port, MASTER, MASTER, MASTER))
            cmd = [sentinel, conf] if sentinel else [exe, conf, "--sentinel"]
            log = open(os.path.join(self.dir, "sentinel%d.log" % i), "wb")
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))
            log.close()
        for p in self.ports:
            assert wait_port(p)
        # A failover needs the sentinels to know each other (hello messages
        # every 2 s) and the replica.
        for p in self.ports:
            wait_for("sentinel %d to know the others" % p,
                     lambda p=p: len(resp(p, "SENTINEL", "SENTINELS", MASTER)) == 2, 15)
            wait_for("sentinel %d to know the replica" % p,
                     lambda p=p: len(resp(p, "SENTINEL", "REPLICAS", MASTER)) == 1, 15)

    def yaml_list(self):
        return "[%s]" % ", ".join('"127.0.0.1:%d"' % p for p in self.ports)

    def named_primary(self):
        """The primary's port, as the first sentinel that answers names it."""
        for p in self.ports:
            try:
                a = resp(p, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
                return int(a[1])
            except (OSError, RuntimeError):
                continue
        return None

    def kill_primary(self):
        self.primary.proc.send_signal(signal.SIGKILL)
        self.primary.proc.wait()
        self.primary.proc = None

    def close(self):
        for p in self.procs + [self.replica]:
            if p.poll() is None:
                p.terminate()
        for p in self.procs + [self.replica]:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.primary.stop()


@pytest.fixture
def sentinels(tmp_path):
    s = Sentinels(tmp_path)
    yield s
    s.close()


def gateway_config(port, admin_port, backend_port, sentinels, burst=10):
    return """
workers: 2
listen: [127.0.0.1:%d]
admin: { listen: 127.0.0.1:%d }
upstreams: {app: {servers: [127.0.0.1:%d]}}
rate_limit:
  redis:
    sentinels: %s
    master: %s
    timeout: 50ms
    on_error: local
    key_prefix: "t:"
  policies:
    login: { rate: 1/h, burst: %d, key: [header:X-User], store: redis }
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: app, rate_limit: login}]
""" % (port, admin_port, backend_port, sentinels.yaml_list(), MASTER, burst)


def metric(admin_port, name):
    text = get(admin_port, "/metrics", host="admin")[2].decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else None


def status(admin_port):
    return json.loads(get(admin_port, "/status", host="admin")[2])


def all_workers_on(admin_port, primary_port):
    """Both workers' links up, and /status (whichever worker answers)
    names the primary."""
    want = "127.0.0.1:%d" % primary_port
    return metric(admin_port, "tollgate_redis_up") == 2 and all(
        status(admin_port)["redis"].get("primary") == want for _ in range(4))


def burst_across(ports, user, n):
    """n requests for `user` spread over the gateways, from 10 threads:
    the statuses."""
    results, lock = [], threading.Lock()

    def client(i):
        for k in range(n // 10):
            s = get(ports[(i + k) % len(ports)], "/login", headers={"X-User": user})[0]
            with lock:
                results.append(s)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_limiter_follows_a_failover(tollgate, backend, sentinels):
    b = backend()
    ports = [free_port() for _ in range(2)]
    admins = [free_port() for _ in range(2)]
    tgs = [tollgate(gateway_config(p, a, b.port, sentinels)) for p, a in zip(ports, admins)]
    old = sentinels.primary.port
    for a in admins:
        wait_for("the gateways on the primary", lambda a=a: all_workers_on(a, old), 10)

    # One budget across both gateways.
    results = burst_across(ports, "before", 40)
    assert results.count(200) == 10 and results.count(429) == 30, results
    assert resp(old, "EXISTS", "t:{login:before}") == 1

    # The primary dies under load: no request waits for it.
    stop = threading.Event()
    seen, lock = [], threading.Lock()

    def load(i):
        n = 0
        while not stop.is_set():
            t0 = time.time()
            s = get(ports[i % 2], "/login", headers={"X-User": "load%d-%d" % (i, n)})[0]
            with lock:
                seen.append((s, time.time() - t0))
            n += 1
            time.sleep(0.01)
    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t_kill = time.time()
    sentinels.kill_primary()
    try:
        new = wait_for("the sentinels to promote the replica",
                       lambda: sentinels.named_primary() == sentinels.replica_port and
                       sentinels.replica_port, 30)
        t_promoted = time.time()
        # Every gateway follows within a few seconds.
        for a in admins:
            wait_for("gateway (admin %d) on the new primary" % a,
                     lambda a=a: all_workers_on(a, new), 15)
        t_followed = time.time()
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = [s for s, _ in seen]
    slowest = max(took for _, took in seen)
    print("failover: promoted %.1f s after the kill, gateways followed %.1f s later; "
          "%d requests, slowest %.3f s" % (t_promoted - t_kill, t_followed - t_promoted,
                                          len(seen), slowest))
    assert len(seen) > 50
    assert set(statuses) <= {200}, statuses  # fresh keys, local share meanwhile
    assert slowest < 1.0 * SLOW, slowest  # timeout 50ms: nobody waits for a dead primary
    assert t_followed - t_promoted < 5 * SLOW

    # Exact again: a fresh key's budget across both gateways, kept on the
    # new primary.
    results = burst_across(ports, "after", 40)
    assert results.count(200) == 10 and results.count(429) == 30, results
    assert resp(new, "EXISTS", "t:{login:after}") == 1
    for tg in tgs:
        assert "moved from 127.0.0.1:%d to 127.0.0.1:%d" % (old, new) in tg.stderr()


def test_planned_failover_moves_live_links(tollgate, backend, sentinels):
    """SENTINEL FAILOVER: the old primary stays up (the sentinels make it a
    replica later), so nothing fails; the links, up, move on
    +switch-master alone."""
    b = backend()
    port, aport = free_port(), free_port()
    tg = tollgate(gateway_config(port, aport, b.port, sentinels, burst=5))
    old, new = sentinels.primary.port, sentinels.replica_port
    wait_for("the gateway on the primary", lambda: all_workers_on(aport, old), 10)
    assert resp(sentinels.ports[0], "SENTINEL", "FAILOVER", MASTER) == b"OK"
    wait_for("the gateway on the new primary", lambda: all_workers_on(aport, new), 15)
    log = tg.stderr()
    assert "moved from 127.0.0.1:%d to 127.0.0.1:%d" % (old, new) in log
    assert "unreachable" not in log and "circuit open" not in log, log
    codes = [get(port, "/login", headers={"X-User": "planned"})[0] for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2, codes
    assert resp(new, "EXISTS", "t:{login:planned}") == 1


class FakeSentinel:
    """A sentinel that names whichever server the test says (`named`, a
    port), to make the gateway meet a replica or a demoted primary; it
    confirms +switch-master subscriptions and then stays quiet."""

    def __init__(self, backend, named):
        self.named = named
        self.asked = 0
        self.backend = backend(self.handle)
        self.port = self.backend.port

    def handle(self, sock, _backend):
        f = sock.makefile("rb")
        while True:
            line = f.readline()
            if not line.startswith(b"*"):
                return
            args = []
            for _ in range(int(line[1:])):
                n = int(f.readline()[1:])
                args.append(f.read(n + 2)[:-2])
            cmd = [a.decode() for a in args]
            if cmd[0].upper() == "SENTINEL" and cmd[1].lower() == "get-master-addr-by-name":
                self.asked += 1
                if cmd[2] != MASTER or self.named is None:
                    sock.sendall(b"*-1\r\n")
                else:
                    port = str(self.named).encode()
                    sock.sendall(b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(port), port))
            elif cmd[0].upper() == "SUBSCRIBE":
                ch = args[1]
                sock.sendall(b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(ch), ch))
            else:
                sock.sendall(b"-ERR unknown command\r\n")

    def yaml_list(self):
        return '["127.0.0.1:%d"]' % self.port


def test_a_replica_or_demoted_primary_sends_the_link_back_to_the_sentinels(
        tollgate, backend, tmp_path):
    """ROLE must say master before the link is up; a -READONLY reply drops
    it; either way the next attempt asks the sentinels again."""
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    p = Redis(tmp_path / "p")
    r = Redis(tmp_path / "r")
    try:
        resp(r.port, "REPLICAOF", "127.0.0.1", p.port)
        fake = FakeSentinel(backend, named=r.port)  # names the replica
        b = backend()
        port, aport = free_port(), free_port()
        cfg = gateway_config(port, aport, b.port, fake).replace("workers: 2", "workers: 1")
        tg = tollgate(cfg)
        wait_for("the refusal logged", lambda: "is not the primary (ROLE says slave)" in
                 tg.stderr(), 10)
        asked = fake.asked
        wait_for("the sentinel asked again", lambda: fake.asked > asked + 1, 10)
        assert status(aport)["redis"]["state"] != "up"

        fake.named = p.port
        wait_for("the link on the primary", lambda: status(aport)["redis"] == {
            "state": "up", "gateways": 1, "primary": "127.0.0.1:%d" % p.port}, 10)
        assert get(port, "/login", headers={"X-User": "k1"})[0] == 200
        assert resp(p.port, "EXISTS", "t:{login:k1}") == 1

        # A failover the watch missed: the primary is a replica now.
        resp(r.port, "REPLICAOF", "NO", "ONE")
        resp(p.port, "REPLICAOF", "127.0.0.1", r.port)
        fake.named = r.port

        def moved():
            get(port, "/login", headers={"X-User": "k2"})
            return status(aport)["redis"].get("primary") == "127.0.0.1:%d" % r.port
        wait_for("the link on the new primary", moved, 10)
        assert "READONLY" in tg.stderr()
        wait_for("the link up", lambda: status(aport)["redis"]["state"] == "up", 5)
        assert get(port, "/login", headers={"X-User": "k3"})[0] == 200
        assert resp(r.port, "EXISTS", "t:{login:k3}") == 1
    finally:
        p.stop()
        r.stop()


TENANT_CONFIG = """
workers: 1
listen: [127.0.0.1:%d]
admin: { listen: 127.0.0.1:%d }
tenants:
  directory: redis
  redis: { sentinels: %s, master: %s, timeout: 100ms }
  cache_ttl: 30s
sites:
  - hosts: ["{tenant}.platform.test"]
    routes:
      - path: /
        upstream: $tenant
"""


def test_tenant_directory_follows_a_failover(tollgate, backend, sentinels):
    b1, b2 = backend(), backend()
    port, aport = free_port(), free_port()
    tollgate(TENANT_CONFIG % (port, aport, sentinels.yaml_list(), MASTER))
    old = sentinels.primary.port
    wait_for("the directory on the primary",
             lambda: status(aport).get("tenants_redis", {}).get("primary") ==
             "127.0.0.1:%d" % old, 10)
    resp(old, "HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:%d" % b1.port)
    st, h, _ = get(port, "/", host="acme.platform.test")
    assert st == 200 and int(h["x-backend"]) == b1.port

    sentinels.kill_primary()
    new = wait_for("the sentinels to promote the replica",
                   lambda: sentinels.named_primary() == sentinels.replica_port and
                   sentinels.replica_port, 30)
    # A tenant written on the new primary is served ...
    resp(new, "HSET", "tollgate:tenant:beta", "servers", "127.0.0.1:%d" % b2.port)
    wait_for("the new tenant served", lambda: get(port, "/", host="beta.platform.test")[0] == 200,
             15)
    doc = status(aport)["tenants_redis"]
    assert doc == {"state": "up", "primary": "127.0.0.1:%d" % new}, doc
    # ... and invalidations published there arrive (the subscription moved).
    resp(new, "HSET", "tollgate:tenant:acme", "servers", "127.0.0.1:%d" % b2.port)

    def moved():
        resp(new, "PUBLISH", "tollgate:tenant:changed", "acme")
        return int(get(port, "/", host="acme.platform.test")[1]["x-backend"]) == b2.port
    wait_for("the invalidation from the new primary", moved, 15)


def test_no_sentinel_answers_is_down_and_fail_soft(tollgate, backend):
    """Sentinels that are not there: the link is down, limits fall back to
    the local share at once, and the log says why."""
    b = backend()
    port, aport = free_port(), free_port()
    dead = [free_port() for _ in range(2)]

    class Dead:
        ports = dead

        def yaml_list(self):
            return "[%s]" % ", ".join('"127.0.0.1:%d"' % p for p in self.ports)
    tg = tollgate(gateway_config(port, aport, b.port, Dead(), burst=3))
    wait_for("the down state", lambda: status(aport)["redis"]["state"] == "down", 10)
    assert status(aport)["redis"]["primary"] is None
    t0 = time.time()
    codes = [get(port, "/login", headers={"X-User": "x"})[0] for _ in range(6)]
    assert 429 in codes and 200 in codes, codes
    assert time.time() - t0 < 1.0 * SLOW
    wait_for("the reason in the log",
             lambda: "no sentinel named the primary of %s" % MASTER in tg.stderr(), 5)


BASE = """
listen: [127.0.0.1:8080]
upstreams: {app: {servers: [127.0.0.1:9000]}}
sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]
"""


@pytest.mark.parametrize("redis_block,line_col,message", [
    ('{address: "127.0.0.1:6379", sentinels: ["127.0.0.1:26379"], master: m}', ":6:",
     "address and sentinels exclude each other"),
    ('{sentinels: ["127.0.0.1:26379"]}', ":6:", "sentinels need master"),
    ('{sentinels: ["127.0.0.1"], master: m}', ":6:", "has no port"),
    ('{sentinels: ["127.0.0.1:99999"], master: m}', ":6:", "bad port"),
    ('{sentinels: [], master: m}', ":6:", "must list 1 to"),
    ('{address: "127.0.0.1:6379", master: m}', ":6:", "master needs sentinels"),
])
def test_config_errors(tmp_path, redis_block, line_col, message):
    rc, out, path = run_tollgate_check(BASE + "rate_limit:\n  redis: %s\n" % redis_block,
                                       tmp_path)
    assert rc != 0, out
    assert re.search(re.escape(path + line_col) + r"\d+: .*" + re.escape(message), out), out


def test_config_tenants_override_inherited_sentinels(tmp_path):
    """tenants.redis inherits rate_limit.redis; an address written there
    replaces the inherited sentinels (and -t accepts it)."""
    y = BASE + """rate_limit:
  redis: {sentinels: ["127.0.0.1:26379"], master: m}
tenants:
  directory: redis
  redis: {address: "127.0.0.1:6390"}
"""
    rc, out, _ = run_tollgate_check(y, tmp_path)
    assert rc == 0, out
