"""Shared rate limits on a real Redis Cluster (issue 22, item 2): three
primaries (three more as replicas for the failover) started here with
redis-server --cluster-enabled and joined by redis-cli --cluster create on
loopback ports. Several gateways share one exact budget whichever node a
key lives on; a request whose policies' keys sit on different slots is
all-or-nothing (a refusal on one slot gives back what the other spent); a
slot migrated under load keeps every request decided (MOVED and ASK
followed); a primary killed under load costs no request more than the
Redis timeout, keys on the other primaries stay decided in Redis, and once
its replica is promoted decisions are exact again."""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import SLOW, free_port, get, wait_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
SLOTS = 16384

def crc16(data):
    """CRC16-CCITT (XMODEM), Redis Cluster's key hash."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key):
    key = key.encode() if isinstance(key, str) else key
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1:e]
    return crc16(key) % SLOTS


def bucket_key(policy, value, prefix="t:"):
    """The Redis key tollgate keeps a policy's bucket under."""
    return "%s{%s:%s}" % (prefix, policy, value)


# ---- a RESP client (replies parsed, nested arrays included) -------------------


class RespError(Exception):
    pass


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RespError(rest.decode())
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
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ValueError("bad reply %r" % line)


def resp(port, *args, timeout=10):
    """One command to 127.0.0.1:port; returns the parsed reply (an error
    reply is returned as a RespError, not raised)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        with s.makefile("rb") as f:
            return _read_reply(f)


class Cluster:
    """A real Redis Cluster on loopback ports: `primaries` primaries and
    `replicas` replicas each, node timeout `node_timeout_ms`."""

    def __init__(self, tmp_path, primaries=3, replicas=0, node_timeout_ms=1000,
                 full_coverage=True):
        self.dir = str(tmp_path)
        self.nodes = []  # {port, bus, proc, dir}
        for i in range(primaries * (1 + replicas)):
            d = os.path.join(self.dir, "node%d" % i)
            os.makedirs(d)
            node = {"port": free_port(), "bus": free_port(), "dir": d}
            node["proc"] = subprocess.Popen(
                [REDIS_SERVER, "--port", str(node["port"]), "--cluster-port", str(node["bus"]),
                 "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", os.path.join(d, "nodes.conf"),
                 "--cluster-node-timeout", str(node_timeout_ms), "--save", "",
                 "--appendonly", "no", "--repl-diskless-sync-delay", "0",
                 "--cluster-require-full-coverage", "yes" if full_coverage else "no",
                 "--dir", d, "--logfile", os.path.join(d, "log"),
                 "--enable-debug-command", "local"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.nodes.append(node)
        for n in self.nodes:
            if not wait_port(n["port"], timeout=10):
                raise RuntimeError("redis-server did not start on %d" % n["port"])
        p = subprocess.run([REDIS_CLI, "--cluster", "create"] +
                           ["127.0.0.1:%d" % n["port"] for n in self.nodes] +
                           ["--cluster-replicas", str(replicas), "--cluster-yes"],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError("redis-cli --cluster create failed:\n%s%s" % (p.stdout, p.stderr))
        self.wait_ok()
        self.wait_synced()

    def wait_synced(self, timeout=30):
        """Until every replica has its primary's data (a replica that never
        synced does not take over)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            infos = [resp(n["port"], "INFO", "replication") for n in self.alive()]
            replicas = [i for i in infos if b"role:slave" in i]
            if all(b"master_link_status:up" in i for i in replicas):
                return
            time.sleep(0.1)
        raise AssertionError("replicas not in sync after %ds" % timeout)

    def alive(self):
        return [n for n in self.nodes if n["proc"] is not None and n["proc"].poll() is None]

    def wait_ok(self, timeout=30, without=None):
        """Until every live node says cluster_state:ok and sees one map (in
        which the primary on port `without` serves nothing)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                infos = [resp(n["port"], "CLUSTER", "INFO") for n in self.alive()]
                maps = set(str(self.slot_owners(n["port"])) for n in self.alive())
                if all(b"cluster_state:ok" in i for i in infos) and len(maps) == 1 and \
                        without not in self.primaries():
                    return
            except (OSError, ConnectionError):
                pass
            time.sleep(0.1)
        raise AssertionError("cluster not ok after %ds" % timeout)

    @staticmethod
    def slot_owners(port):
        """[(start, end, port of its primary)] as node `port` sees it."""
        return sorted((r[0], r[1], r[2][1]) for r in resp(port, "CLUSTER", "SLOTS"))

    def owner(self, slot):
        """The port of the primary serving `slot`, as a live node says."""
        for start, end, port in self.slot_owners(self.alive()[0]["port"]):
            if start <= slot <= end:
                return port
        return None

    def node_id(self, port):
        return resp(port, "CLUSTER", "MYID").decode()

    def primaries(self):
        return sorted(set(p for _, _, p in self.slot_owners(self.alive()[0]["port"])))

    def seeds(self):
        return ", ".join("127.0.0.1:%d" % n["port"] for n in self.nodes[:2])

    def get(self, key):
        """GET following MOVED/ASK."""
        port = self.owner(key_slot(key))
        r = resp(port, "GET", key)
        if isinstance(r, RespError) and str(r).startswith(("MOVED", "ASK")):
            port = int(str(r).split(":")[-1])
            if str(r).startswith("ASK"):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"*1\r\n$6\r\nASKING\r\n*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n"
                              % (len(key), key.encode()))
                    with s.makefile("rb") as f:
                        _read_reply(f)
                        return _read_reply(f)
            r = resp(port, "GET", key)
        return r

    def kill(self, port):
        for n in self.nodes:
            if n["port"] == port:
                n["proc"].send_signal(signal.SIGKILL)
                n["proc"].wait(timeout=10)
                n["proc"] = None

    def stop(self):
        for n in self.nodes:
            if n["proc"] is not None and n["proc"].poll() is None:
                n["proc"].terminate()
        for n in self.nodes:
            if n["proc"] is not None:
                try:
                    n["proc"].wait(timeout=10)
                except subprocess.TimeoutExpired:
                    n["proc"].kill()


@pytest.fixture
def cluster(tmp_path):
    made = []

    def make(**kw):
        c = Cluster(tmp_path / ("cluster%d" % len(made)), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


# ---- gateways -------------------------------------------------------------------


def config(port, backend_port, seeds, policies, route_limit, on_error="local",
           timeout="100ms", workers=2):
    return """
workers: %d
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:%d]}}
rate_limit:
  redis: { cluster: [%s], timeout: %s, on_error: %s, key_prefix: "t:" }
  policies:
%s
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: app, rate_limit: %s}]
""" % (workers, port, backend_port, seeds, timeout, on_error, policies, route_limit)


def hit(port, headers):
    t0 = time.time()
    status = get(port, "/x", headers=headers)[0]
    return status, time.time() - t0


def metrics(tg):
    return get(tg.admin_port, "/metrics", host="admin")[2].decode()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no %s in /metrics" % name)


def status(tg):
    return json.loads(get(tg.admin_port, "/status", host="admin")[2])


def wait_cluster_up(tgs, timeout=15):
    """Until each gateway's answering worker has the map and every primary
    link up (several probes: each may land on another worker)."""
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if all(all(status(tg)["redis"]["state"] == "up" for _ in range(4)) for tg in tgs):
            return
        time.sleep(0.1)
    raise AssertionError("gateways never saw the cluster up: %s" % [status(t) for t in tgs])


def values_by_node(cluster, policy, count_per_node, exclude=()):
    """Key values for `policy` whose buckets are served by each primary:
    {primary port: [value, ...]}."""
    want = {p: [] for p in cluster.primaries()}
    owners = cluster.slot_owners(cluster.alive()[0]["port"])
    i = 0
    while any(len(v) < count_per_node for v in want.values()):
        value = "v%d" % i
        i += 1
        if value in exclude:
            continue
        slot = key_slot(bucket_key(policy, value))
        port = next(p for s, e, p in owners if s <= slot <= e)
        if len(want[port]) < count_per_node:
            want[port].append(value)
    return want


# ---- tests -------------------------------------------------------------------------


def test_three_gateways_share_exact_budgets_on_every_node(tollgate, backend, cluster):
    c = cluster()
    b = backend()
    burst = 8
    ports = [free_port() for _ in range(3)]
    tgs = [tollgate(config(p, b.port, c.seeds(),
                           "    login: { rate: 1/h, burst: %d, key: [header:X-User], "
                           "store: redis }" % burst, "login")) for p in ports]
    wait_cluster_up(tgs)
    users = [u for us in values_by_node(c, "login", 2).values() for u in us]  # 6 keys, 3 nodes
    results = {u: [] for u in users}
    lock = threading.Lock()

    def client(i):
        for k in range(len(users) * 3):
            u = users[(i + k) % len(users)]
            s = hit(ports[(i + k) % 3], {"X-User": u})[0]
            with lock:
                results[u].append(s)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for u in users:
        # Each bucket's burst exactly, across all gateways and workers.
        assert results[u].count(200) == burst, (u, results[u])
        assert results[u].count(429) == len(results[u]) - burst, (u, results[u])
        assert c.get(bucket_key("login", u)) is not None
    # Every worker's links saw the map; nothing was redirected here.
    m = metrics(tgs[0])
    assert metric(m, "tollgate_redis_up") == 2
    assert metric(m, 'tollgate_redis_cluster_map_refreshes_total{result="ok"}') >= 2
    st = status(tgs[0])["redis"]["cluster"]
    assert sorted(n["slots"] for n in st["nodes"] if n["slots"]) == [5461, 5461, 5462], st
    assert all(n["state"] == "up" for n in st["nodes"] if n["slots"]), st


def test_request_on_two_slots_is_all_or_nothing(tollgate, backend, cluster):
    """Two policies whose keys live on different primaries: when the second
    refuses, the first's spend is given back (its bucket shows it), and the
    first refusing never charges the second."""
    c = cluster()
    b = backend()
    port = free_port()
    tg = tollgate(config(port, b.port, c.seeds(),
                         "    user: { rate: 1/h, burst: 5, key: [header:X-User], store: redis }\n"
                         "    team: { rate: 1/h, burst: 2, key: [header:X-Team], store: redis }",
                         "[user, team]"))
    wait_cluster_up([tg])
    by_user = values_by_node(c, "user", 1)
    by_team = values_by_node(c, "team", 1)
    nodes = sorted(by_user)
    user, team = by_user[nodes[0]][0], by_team[nodes[1]][0]
    assert c.owner(key_slot(bucket_key("user", user))) != \
        c.owner(key_slot(bucket_key("team", team)))
    h = {"X-User": user, "X-Team": team}
    assert [hit(port, h)[0] for _ in range(5)] == [200, 200, 429, 429, 429]

    def remaining(policy, value):
        r = get(tg.admin_port, "/ratelimit/%s/%s" % (policy, value), host="admin")
        assert r[0] == 200, r
        return json.loads(r[2])["remaining"]

    def settles(policy, value, want):
        """The refunds are sent as the refusals are answered: a look from
        another worker (connection) may see one still in flight."""
        deadline = time.time() + 2 * SLOW
        while remaining(policy, value) != want and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        return remaining(policy, value)

    # Two spent on "user" by the two allowed requests; the three refused by
    # "team" gave theirs back.
    assert settles("user", user, 3) == 3
    assert remaining("team", team) == 0
    # The admin reset reaches the bucket's node: the team's burst again.
    r = get(tg.admin_port, "/ratelimit/team/%s" % team, host="admin", method="DELETE")
    assert r[0] == 200, r
    assert c.get(bucket_key("team", team)) is None
    assert remaining("team", team) == 2
    m = metrics(tg)
    assert metric(m, "tollgate_redis_cluster_split_takes_total") >= 5
    assert metric(m, "tollgate_redis_cluster_slot_refunds_total") == 3
    # The other way round: "user" exhausted first never charges "team".
    user2, team2 = by_user[nodes[1]][0], by_team[nodes[2]][0]
    h2 = {"X-User": user2, "X-Team": team2}
    for _ in range(5):
        assert hit(port, {"X-User": user2, "X-Team": "other-%d" % _})[0] == 200
    assert hit(port, h2)[0] == 429
    assert settles("team", team2, 2) == 2


def migrate_slot(c, slot, src, dst, keys_per_step=1, pause=0.05):
    """Moves `slot` from primary port src to dst as redis-cli --cluster
    reshard does: IMPORTING/MIGRATING, MIGRATE keys a few at a time (so
    clients meet ASK meanwhile), then the new owner everywhere."""
    src_id, dst_id = c.node_id(src), c.node_id(dst)
    assert resp(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id) == "OK"
    assert resp(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id) == "OK"
    while True:
        keys = resp(src, "CLUSTER", "GETKEYSINSLOT", slot, keys_per_step)
        if not keys:
            break
        r = resp(src, "MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
        assert r in ("OK", "NOKEY"), r
        time.sleep(pause)
    for n in c.alive():
        if n["port"] in c.primaries():
            resp(n["port"], "CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def test_slot_migration_under_load_keeps_decisions(tollgate, backend, cluster):
    """on_error: deny, so a request Redis did not decide would be a 503:
    none is, while the slot's keys move (ASK) and after (MOVED); the
    budgets are exact across the move."""
    c = cluster()
    b = backend()
    ports = [free_port(), free_port()]
    burst = 40
    tgs = [tollgate(config(p, b.port, c.seeds(),
                           "    login: { rate: 1/h, burst: %d, key: [header:X-User], "
                           "store: redis }" % burst, "login", on_error="deny",
                           timeout="%dms" % int(200 * SLOW))) for p in ports]
    wait_cluster_up(tgs)
    # Users whose buckets share one slot: the slot is moved with its keys.
    slot = key_slot(bucket_key("login", "m0"))
    users = ["m0"]
    i = 1
    while len(users) < 4:
        if key_slot(bucket_key("login", "m%d" % i)) == slot:
            users.append("m%d" % i)
        i += 1
    src = c.owner(slot)
    dst = next(p for p in c.primaries() if p != src)
    results = {u: [] for u in users}
    lock = threading.Lock()
    stop = threading.Event()

    def client(i):
        k, until = 0, time.time() + 20
        while not stop.is_set() and time.time() < until:
            u = users[(i + k) % len(users)]
            s = hit(ports[(i + k) % 2], {"X-User": u})[0]
            with lock:
                results[u].append(s)
            k += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # some spent on the old owner
    migrate_slot(c, slot, src, dst, pause=0.1)
    time.sleep(0.5)  # and some after, on the new one
    stop.set()
    for t in threads:
        t.join()
    assert c.owner(slot) == dst
    for u in users:
        assert len(results[u]) > 4 * burst, (u, len(results[u]))
        if 503 in results[u]:
            print([tg.stderr() for tg in tgs])
            print("\n".join(l for l in metrics(tgs[0]).splitlines() if "redis" in l and not l.startswith("#")))
        assert 503 not in results[u], (u, results[u].count(503))
        assert results[u].count(200) == burst, (u, results[u].count(200), len(results[u]))
        assert resp(dst, "EXISTS", bucket_key("login", u)) == 1
    m = [metrics(tg) for tg in tgs]
    redirects = sum(metric(x, 'tollgate_redis_cluster_redirects_total{kind="moved"}') +
                    metric(x, 'tollgate_redis_cluster_redirects_total{kind="ask"}') for x in m)
    assert redirects > 0
    # Fresh keys on the moved slot are decided exactly on the new owner.
    fresh = [hit(ports[k % 2], {"X-User": users[0] + "x"})[0] for k in range(3)]
    assert fresh.count(200) == 3


def test_primary_failover_under_load(tollgate, backend, cluster):
    """A primary is killed under load. Its keys follow on_error (allow
    here) and no request waits longer than the Redis timeout plus a
    margin; a request whose other key lives on a healthy primary is still
    decided there (exactly its burst passes); keys on healthy primaries
    never fall back (their buckets pass exactly their burst throughout).
    Once its replica is promoted, decisions on its slots are exact
    again."""
    # Without full coverage the healthy primaries keep serving while a
    # failed one's slots have no primary (Redis' default refuses every
    # command, CLUSTERDOWN, until the replica takes over).
    c = cluster(replicas=1, node_timeout_ms=1000, full_coverage=False)
    b = backend()
    timeout_ms = int(100 * SLOW)
    burst = 4
    ports = [free_port(), free_port()]
    tgs = [tollgate(config(p, b.port, c.seeds(),
                           "    user: { rate: 1/h, burst: %d, key: [header:X-User], "
                           "store: redis }\n"
                           "    team: { rate: 1/h, burst: 100000, key: [header:X-Team], "
                           "store: redis }" % burst, "[user, team]", on_error="allow",
                           timeout="%dms" % timeout_ms)) for p in ports]
    wait_cluster_up(tgs)
    primaries = c.primaries()
    victim, healthy = primaries[0], primaries[1:]
    users = values_by_node(c, "user", 5)
    teams = values_by_node(c, "team", 5)
    # Load on keys of the healthy primaries only: a request Redis did not
    # decide would pass (on_error: allow) beyond its user's burst.
    load_users = users[healthy[0]][:3] + users[healthy[1]][:3]
    load_teams = teams[healthy[0]][:2] + teams[healthy[1]][:2]
    seen = {u: [] for u in load_users}
    latencies, errors = [], []
    lock = threading.Lock()
    stop = threading.Event()

    def load(i):
        k = 0
        while not stop.is_set():
            u = load_users[(i + k) % len(load_users)]
            h = {"X-User": u, "X-Team": load_teams[(i + k) % len(load_teams)]}
            try:
                s, took = hit(ports[k % 2], h)
            except OSError as e:
                s, took = str(e), 0
            with lock:
                latencies.append(took)
                seen[u].append(s)
                if s not in (200, 429):
                    errors.append(s)
            k += 1

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    c.kill(victim)
    t_kill = time.time()
    # During the outage: the user's key on a healthy primary is decided
    # there (exactly its burst), the team's key on the dead one is allowed
    # (on_error), and nobody waits.
    u, t = users[healthy[0]][3], teams[victim][0]
    outage = [hit(ports[k % 2], {"X-User": u, "X-Team": t}) for k in range(8)]
    assert [s for s, _ in outage] == [200] * burst + [429] * (8 - burst), outage
    assert max(took for _, took in outage) < timeout_ms / 1000.0 + 0.25 * SLOW, outage
    # The replica takes over; the gateways find it by themselves.
    c.wait_ok(timeout=30, without=victim)
    new_owner = c.owner(key_slot(bucket_key("team", t)))
    assert new_owner not in (victim, None)
    on_new = values_by_node(c, "team", 40)[new_owner][5:]
    decided_at = None
    deadline = time.time() + 15 * SLOW
    for probe in on_new:
        s, _ = hit(ports[0], {"X-User": "probe-" + probe, "X-Team": probe})
        if s == 200 and c.get(bucket_key("team", probe)) is not None:
            decided_at = time.time()
            break
        if time.time() > deadline:
            break
        time.sleep(0.2)
    assert decided_at is not None, "decisions never reached the promoted replica"
    time.sleep(0.3)
    stop.set()
    for t_ in threads:
        t_.join()
    assert not errors, errors[:20]
    assert max(latencies) < timeout_ms / 1000.0 + 0.25 * SLOW, max(latencies)
    for user in load_users:
        if seen[user].count(200) != burst:
            for tg in tgs:
                print(tg.stderr())
                print("\n".join(l for l in metrics(tg).splitlines() if "redis" in l and not l.startswith("#")))
                print("\n".join(l for l in metrics(tg).splitlines() if "ratelimit_dec" in l and not l.startswith("#")))
            print(user, "".join("A" if x == 200 else "." for x in seen[user]))
        assert seen[user].count(200) == burst, (user, seen[user][:20], len(seen[user]))
    # Exact again on the promoted primary: a user key served there gets
    # exactly its burst across both gateways.
    u2 = values_by_node(c, "user", 8)[new_owner][7]
    after = [hit(ports[k % 2], {"X-User": u2, "X-Team": load_teams[0]})[0] for k in range(7)]
    assert after == [200] * burst + [429] * 3, after
    assert sum(metric(metrics(tg), "tollgate_redis_cluster_partial_takes_total")
               for tg in tgs) >= 1
    print("failover: decided on the promoted replica %.1f s after the kill; %d requests "
          "under load, slowest %.0f ms" % (decided_at - t_kill, len(latencies),
                                            1000 * max(latencies)))


def test_tenant_directory_on_the_cluster(tollgate, backend, cluster):
    """tenants.redis inherits the cluster: each tenant's HGETALL goes to
    the primary of its key's slot, and an invalidation published on any
    node (Redis Cluster broadcasts publishes) reaches the gateway."""
    c = cluster()
    b1, b2 = backend(), backend()
    port = free_port()
    tg = tollgate("""
workers: 2
listen: [127.0.0.1:%d]
rate_limit:
  redis: { cluster: [%s] }
tenants:
  directory: redis
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant}]
""" % (port, c.seeds()))
    # Tenants whose keys live on each primary.
    ids = {}
    i = 0
    while len(set(ids.values())) < 3 or len(ids) < 6:
        key = "tollgate:tenant:t%d" % i
        ids["t%d" % i] = c.owner(key_slot(key))
        i += 1
    for tid, owner in ids.items():
        assert resp(owner, "HSET", "tollgate:tenant:" + tid, "servers",
                    "127.0.0.1:%d" % b1.port) == 1
    deadline = time.time() + 10 * SLOW
    while time.time() < deadline and get(port, "/", host="t0.platform.test")[0] != 200:
        time.sleep(0.1)
    for tid in ids:
        status, h, _ = get(port, "/", host="%s.platform.test" % tid)
        assert status == 200 and int(h["x-backend"]) == b1.port, (tid, status)
    assert get(port, "/", host="nobody.platform.test")[0] == 404
    # Moved, and said so on a node that is not a seed the gateway
    # subscribed on.
    moved = next(t for t in ids if ids[t] == c.primaries()[-1])
    resp(ids[moved], "HSET", "tollgate:tenant:" + moved, "servers", "127.0.0.1:%d" % b2.port)
    seeds = [n["port"] for n in c.nodes[:2]]
    other = next(n["port"] for n in c.nodes if n["port"] not in seeds)
    assert resp(other, "PUBLISH", "tollgate:tenant:changed", moved) >= 0
    deadline = time.time() + 5 * SLOW
    seen = None
    while time.time() < deadline:
        # Both workers must have dropped their copy.
        seen = [int(get(port, "/", host="%s.platform.test" % moved)[1]["x-backend"])
                for _ in range(4)]
        if seen == [b2.port] * 4:
            break
        time.sleep(0.1)
    assert seen == [b2.port] * 4, seen
    m = get(tg.admin_port, "/metrics", host="admin")[2].decode()
    assert metric(m, "tollgate_tenant_invalidations_total") >= 2  # each worker's copy
    assert metric(m, "tollgate_tenant_redis_errors_total") == 0
