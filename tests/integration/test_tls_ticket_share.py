"""Session tickets shared by a fleet of gateways (issue 19): two tollgate
processes behind one load balancer must resume each other's TLS sessions,
with keys derived from a shared tls.ticket_key_file or agreed in Redis, for
TLS 1.2 and 1.3. Negative controls: without a shared source (or with
another file, or another Redis key prefix) a session from gateway A does
not resume on gateway B, though it does on A. A ticket key file that is too
short or readable by others is refused by `tollgate -t` and by a reload,
which keeps the running keys."""

import os
import re
import socket
import ssl
import subprocess
import time

import pytest

from conftest import SLOW, free_port, requests_on, run_tollgate_check

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.fixture
def cert(tmp_path):
    """A self-signed ECDSA certificate for a.test: (cert, key)."""
    crt, key = str(tmp_path / "a.pem"), str(tmp_path / "a.key")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "30", "-subj", "/CN=a.test", "-addext",
                        "subjectAltName=DNS:a.test"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return crt, key


def backend_ok(sock, be):
    for head, headers, body in requests_on(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def secret_file(path, data=None, mode=0o600):
    with open(path, "wb") as f:
        f.write(os.urandom(32) if data is None else data)
    os.chmod(path, mode)
    return str(path)


def gateway_config(port, backend_port, cert, tls_extra="", extra=""):
    return """
workers: 2
listen:
  - address: 127.0.0.1:%d
    tls: true
tls:
  handshake_timeout: 2s
  certificates:
    - cert: %s
      key: %s
%s
upstreams:
  app:
    servers: [127.0.0.1:%d]
sites:
  - hosts: [a.test]
    routes:
      - path: /
        upstream: app
%s
""" % (port, cert[0], cert[1], tls_extra, backend_port, extra)


def client_ctx(cert, version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cert[0])
    ctx.minimum_version = version
    ctx.maximum_version = version
    return ctx


def fetch(port, ctx, session=None):
    """One HTTPS request; returns (session, reused, version). The whole
    response is read, so a TLS 1.3 ticket (sent after the handshake) has
    arrived when the session is taken."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    ts = ctx.wrap_socket(s, server_hostname="a.test", session=session)
    try:
        ts.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        out = b""
        while True:
            chunk = ts.recv(65536)
            if not chunk:
                break
            out += chunk
        assert out.startswith(b"HTTP/1.1 200"), out
        return ts.session, ts.session_reused, ts.version()
    finally:
        ts.close()


def resumes(port_a, port_b, ctx, expect_version):
    """A session made on A, offered to B: whether B resumed it."""
    session, reused, version = fetch(port_a, ctx)
    assert not reused and version == expect_version
    assert session is not None and session.has_ticket
    _, reused, _ = fetch(port_b, ctx, session=session)
    return reused


def resumes_on_a(port_a, ctx):
    session, _, _ = fetch(port_a, ctx)
    _, reused, _ = fetch(port_a, ctx, session=session)
    return reused


def two_gateways(tollgate, backend, cert, tls_a="", tls_b=None, extra=""):
    b = backend(backend_ok)
    ports = free_port(), free_port()
    gws = [tollgate(gateway_config(p, b.port, cert, t, extra))
           for p, t in zip(ports, (tls_a, tls_a if tls_b is None else tls_b))]
    return ports, gws


VERSION_NAMES = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}


# ---- file mode --------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS, ids=["tls12", "tls13"])
def test_shared_file_resumes_across_gateways(tollgate, backend, cert, tmp_path, version):
    key = secret_file(tmp_path / "tickets.key")
    (a, b), _ = two_gateways(tollgate, backend, cert, "  ticket_key_file: %s" % key)
    ctx = client_ctx(cert, version)
    assert resumes(a, b, ctx, VERSION_NAMES[version])
    assert resumes(b, a, ctx, VERSION_NAMES[version])
    # A resumed TLS 1.3 session came with a fresh ticket, which resumes too.
    session, _, _ = fetch(a, ctx)
    session, reused, _ = fetch(b, ctx, session=session)
    assert reused
    _, reused, _ = fetch(a, ctx, session=session)
    assert reused


@pytest.mark.parametrize("version", VERSIONS, ids=["tls12", "tls13"])
def test_without_shared_keys_no_resumption_elsewhere(tollgate, backend, cert, tmp_path,
                                                     version):
    """The negative control: each gateway's own ring, or another file."""
    (a, b), _ = two_gateways(tollgate, backend, cert)
    ctx = client_ctx(cert, version)
    assert resumes_on_a(a, ctx)
    assert not resumes(a, b, ctx, VERSION_NAMES[version])

    k1 = secret_file(tmp_path / "one.key")
    k2 = secret_file(tmp_path / "two.key")
    (c, d), _ = two_gateways(tollgate, backend, cert, "  ticket_key_file: %s" % k1,
                             "  ticket_key_file: %s" % k2)
    assert resumes_on_a(c, ctx)
    assert not resumes(c, d, ctx, VERSION_NAMES[version])


def test_bad_ticket_key_file_refused_by_check(cert, tmp_path):
    short = secret_file(tmp_path / "short.key", os.urandom(31))
    public = secret_file(tmp_path / "public.key", os.urandom(32), 0o644)
    group = secret_file(tmp_path / "group.key", os.urandom(48), 0o640)
    missing = str(tmp_path / "missing.key")
    good = secret_file(tmp_path / "good.key", os.urandom(32), 0o400)
    port = free_port()
    for path, says in ((short, "31 bytes"), (public, "group or others"),
                       (group, "group or others"), (missing, "cannot read")):
        rc, out, _ = run_tollgate_check(
            gateway_config(port, 1, cert, "  ticket_key_file: %s" % path), tmp_path)
        assert rc != 0, out
        assert path in out and says in out and "tls.ticket_key_file" in out, out
        # FILE:LINE:COL, as every config error.
        assert re.search(r"check\.yaml:\d+:\d+: tls\.ticket_key_file", out), out
    rc, out, _ = run_tollgate_check(
        gateway_config(port, 1, cert, "  ticket_key_file: %s" % good), tmp_path)
    assert rc == 0, out


def test_reload_with_bad_file_keeps_keys(tollgate, backend, cert, tmp_path):
    key = secret_file(tmp_path / "tickets.key")
    (a, b), (ga, _) = two_gateways(tollgate, backend, cert, "  ticket_key_file: %s" % key)
    short = secret_file(tmp_path / "short.key", os.urandom(8))
    be = re.search(r"servers: \[127\.0\.0\.1:(\d+)\]", open(ga.config_path).read()).group(1)
    ga.reload(gateway_config(a, int(be), cert, "  ticket_key_file: %s" % short),
              expect_ok=False)
    assert short in ga.stderr()
    ctx = client_ctx(cert, ssl.TLSVersion.TLSv1_3)
    assert resumes(a, b, ctx, "TLSv1.3")
    assert resumes(b, a, ctx, "TLSv1.3")
    # A good reload to another file: B's tickets no longer resume on A.
    other = secret_file(tmp_path / "other.key")
    ga.reload(gateway_config(a, int(be), cert, "  ticket_key_file: %s" % other))
    assert resumes_on_a(a, ctx)
    assert not resumes(b, a, ctx, "TLSv1.3")


# ---- Redis mode ----------------------------------------------------------------


def wait_shared(gw):
    deadline = time.time() + 10 * SLOW
    while time.time() < deadline:
        if "ticket keys shared through redis" in gw.stderr():
            return
        time.sleep(0.05)
    raise AssertionError("ticket keys never shared:\n" + gw.stderr())


@pytest.mark.parametrize("version", VERSIONS, ids=["tls12", "tls13"])
def test_redis_shared_keys_resume_across_gateways(tollgate, backend, cert, redis, version):
    tls = "  redis: { address: \"127.0.0.1:%d\", timeout: 200ms }" % redis.port
    (a, b), gws = two_gateways(tollgate, backend, cert, tls)
    for gw in gws:
        wait_shared(gw)
    ctx = client_ctx(cert, version)
    assert resumes(a, b, ctx, VERSION_NAMES[version])
    assert resumes(b, a, ctx, VERSION_NAMES[version])
    # What they agreed on: 32 bytes per epoch, the current and the next.
    keys = redis.cmd("KEYS", "tollgate:tls:ticket:*").decode("latin-1")
    epochs = sorted(int(e) for e in re.findall(r"tollgate:tls:ticket:(\d+)", keys))
    assert len(epochs) == 2 and epochs[1] == epochs[0] + 1, keys
    now = int(time.time() * 1000) // 3600000
    assert epochs[0] in (now - 1, now), (epochs, now)
    assert redis.cmd("STRLEN", "tollgate:tls:ticket:%d" % epochs[0]) == b":32\r\n"


def test_redis_from_rate_limit_and_other_prefix(tollgate, backend, cert, redis):
    """rate_limit.redis makes a fleet too (prefix tollgate:tls:); a gateway
    on another tls.redis key_prefix is another fleet: no resumption."""
    rl = "rate_limit:\n  redis: { address: \"127.0.0.1:%d\", timeout: 200ms }\n" % redis.port
    other = "  redis: { address: \"127.0.0.1:%d\", timeout: 200ms, key_prefix: \"x:\" }" % \
        redis.port
    b = backend(backend_ok)
    pa, pb, pc = free_port(), free_port(), free_port()
    ga = tollgate(gateway_config(pa, b.port, cert, "", rl))
    gb = tollgate(gateway_config(pb, b.port, cert, "", rl))
    gc = tollgate(gateway_config(pc, b.port, cert, other))
    for gw in (ga, gb, gc):
        wait_shared(gw)
    ctx = client_ctx(cert, ssl.TLSVersion.TLSv1_3)
    assert resumes(pa, pb, ctx, "TLSv1.3")
    assert resumes_on_a(pc, ctx)
    assert not resumes(pa, pc, ctx, "TLSv1.3")
    assert b"tollgate:tls:ticket:" in redis.cmd("KEYS", "tollgate:tls:ticket:*")
    assert b"x:ticket:" in redis.cmd("KEYS", "x:ticket:*")


def test_redis_down_at_start_then_shared(tollgate, backend, cert, redis):
    """No Redis at start: tickets still resume on the gateway itself (its
    own ring), the outage is logged once; once Redis is up they are shared."""
    redis.stop()
    tls = "  redis: { address: \"127.0.0.1:%d\", timeout: 200ms }" % redis.port
    (a, b), gws = two_gateways(tollgate, backend, cert, tls)
    ctx = client_ctx(cert, ssl.TLSVersion.TLSv1_2)
    deadline = time.time() + 10 * SLOW
    while time.time() < deadline and "unreachable" not in gws[0].stderr():
        time.sleep(0.05)
    assert resumes_on_a(a, ctx)
    assert not resumes(a, b, ctx, "TLSv1.2")
    redis.start()
    # The thread retries every 10 s (rotation 1h: min(period / 4, 10 s)).
    for gw in gws:
        deadline = time.time() + 25 * SLOW
        while time.time() < deadline and "ticket keys shared" not in gw.stderr():
            time.sleep(0.1)
        assert "ticket keys shared through redis" in gw.stderr(), gw.stderr()
        assert gw.stderr().count("unreachable") == 1, gw.stderr()
    assert resumes(a, b, ctx, "TLSv1.2")
