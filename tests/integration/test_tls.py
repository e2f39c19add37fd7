"""HTTPS termination with real clients (openssl s_client, curl, Python ssl):
SNI among names and a wildcard, RSA vs ECDSA, old protocols refused,
resumption, hot certificate reload, 421, redirect, upstream TLS, client
certificates, stalled handshakes."""

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from conftest import SLOW, free_port, requests_on, status_of


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, **kw)


class PKI:
    """A test CA and leaf certificates made with the openssl CLI."""

    def __init__(self, d):
        self.d = str(d)
        self.ca_key = os.path.join(self.d, "ca.key")
        self.ca = os.path.join(self.d, "ca.pem")
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", self.ca_key, "-out", self.ca, "-days", "30", "-subj", "/CN=Test CA"])

    def leaf(self, name, sans, kind="ec", days=30, cn=None, serial=None, client=False):
        key = os.path.join(self.d, name + ".key")
        csr = os.path.join(self.d, name + ".csr")
        crt = os.path.join(self.d, name + ".pem")
        ext = os.path.join(self.d, name + ".ext")
        if kind == "ec":
            run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-out", key])
        else:
            run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", key])
        run(["openssl", "req", "-new", "-key", key, "-out", csr, "-subj", "/CN=%s" % (cn or sans[0])])
        with open(ext, "w") as f:
            f.write("subjectAltName=" + ",".join(
                ("IP:" if re.match(r"^[0-9.]+$", s) else "DNS:") + s for s in sans) + "\n")
            f.write("extendedKeyUsage=%s\n" % ("clientAuth" if client else "serverAuth"))
        args = ["openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                "-out", crt, "-days", str(days), "-extfile", ext]
        args += ["-set_serial", str(serial)] if serial else ["-CAcreateserial"]
        r = run(args)
        assert r.returncode == 0, r.stderr
        return crt, key


@pytest.fixture
def pki(tmp_path):
    return PKI(tmp_path)


def backend_ok(sock, be):
    for head, headers, body in requests_on(sock):
        be.record((head, headers, body))
        payload = json.dumps({k: v for k, v in headers.items()}).encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)


def tls_config(port, backend_port, certs, extra="", listener_extra="", sites=None):
    certs_yaml = "".join("    - cert: %s\n      key: %s\n" % c for c in certs)
    sites = sites or ["a.test", "b.test", "c.test", "x.w.test", "other.test", "localhost"]
    return """
workers: 1
listen:
  - address: 127.0.0.1:%d
    tls: true
%s
tls:
  handshake_timeout: 1s
  certificates:
%s
upstreams:
  app:
    servers: [127.0.0.1:%d]
sites:
  - hosts: [%s, "*.w.test"]
    routes:
      - path: /
        upstream: app
%s
""" % (port, listener_extra, certs_yaml, backend_port, ", ".join(sites), extra)


def s_client(port, *args, data=None):
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-brief"] + list(args)
    p = subprocess.run(cmd, input=data or "", capture_output=True, text=True, timeout=20)
    return p.returncode, p.stdout + p.stderr


def peer_subject(port, servername=None, extra=()):
    args = list(extra)
    if servername:
        args += ["-servername", servername]
    else:
        args += ["-noservername"]
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port] + args
    p = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=20)
    m = re.search(r"subject=.*CN\s*=\s*([^\s,/]+)", p.stdout)
    key = re.search(r"Peer signature type: (\S+)", p.stdout + p.stderr)
    return (m.group(1) if m else None), (key.group(1) if key else None), p.stdout + p.stderr


@pytest.fixture
def tls_gateway(tollgate, backend, pki):
    b = backend(backend_ok)
    port = free_port()
    certs = [pki.leaf("a", ["a.test"]), pki.leaf("b", ["b.test"]), pki.leaf("c", ["c.test"]),
             pki.leaf("w", ["*.w.test"])]
    tg = tollgate(tls_config(port, b.port, certs))
    return port, b, tg


def https_get(port, host, servername=None, ca=None, path="/", headers=None, ctx=None, session=None):
    ctx = ctx or ssl.create_default_context(cafile=ca) if ca else ctx
    if ctx is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    ts = ctx.wrap_socket(s, server_hostname=servername, session=session)
    req = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (path, host)
    for k, v in (headers or {}).items():
        req += "%s: %s\r\n" % (k, v)
    try:
        ts.sendall((req + "\r\n").encode())
    except (ssl.SSLError, OSError):
        ts.close()
        return b"", None, False
    out = b""
    while True:
        try:
            chunk = ts.recv(65536)
        except (ssl.SSLError, OSError):
            break
        if not chunk:
            break
        out += chunk
    sess = ts.session
    reused = ts.session_reused
    ts.close()
    return out, sess, reused


def test_sni_picks_certificate(tls_gateway):
    port, _, _ = tls_gateway
    for name in ("a.test", "b.test", "c.test"):
        assert peer_subject(port, name)[0] == name
    assert peer_subject(port, "x.w.test")[0] == "*.w.test"
    assert peer_subject(port, "unknown.test")[0] == "a.test"  # the first is the default
    assert peer_subject(port, None)[0] == "a.test"


def test_https_request_and_headers(tls_gateway, pki):
    port, b, tg = tls_gateway
    out, _, _ = https_get(port, "b.test", servername="b.test", ca=pki.ca)
    assert status_of(out) == 200
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["x-forwarded-proto"] == ["https"]
    lines = tg.access_lines(1)
    assert lines[0]["tls_version"] in ("TLSv1.3", "TLSv1.2")
    assert lines[0]["sni"] == "b.test" and lines[0]["tls_resumed"] is False


def test_curl_with_ca(tls_gateway, pki):
    port, _, _ = tls_gateway
    p = run(["curl", "-sS", "--cacert", pki.ca, "--resolve", "c.test:%d:127.0.0.1" % port,
             "https://c.test:%d/hello" % port, "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}"])
    assert p.stdout == "200 0", p.stderr


def test_rsa_and_ecdsa_side_by_side(tollgate, backend, pki):
    b = backend(backend_ok)
    port = free_port()
    certs = [pki.leaf("dual-ec", ["dual.test"], kind="ec"),
             pki.leaf("dual-rsa", ["dual.test"], kind="rsa")]
    tollgate(tls_config(port, b.port, certs, sites=["dual.test"]))
    _, sig_ec, out = peer_subject(port, "dual.test", ["-tls1_2", "-sigalgs", "ECDSA+SHA256"])
    assert sig_ec == "ECDSA", out
    _, sig_rsa, out = peer_subject(port, "dual.test",
                                   ["-tls1_2", "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"])
    assert sig_rsa in ("RSA-PSS", "RSA"), out
    _, sig13, out = peer_subject(port, "dual.test", ["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256"])
    assert sig13 == "RSA-PSS", out


def test_old_protocols_refused(tls_gateway):
    port, _, _ = tls_gateway
    for flag in ("-tls1", "-tls1_1"):
        rc, out = s_client(port, flag, "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "a.test")
        assert rc != 0 and ("alert protocol version" in out or "no protocols available" in out
                            or "unsupported protocol" in out), out
    rc, out = s_client(port, "-tls1_2", "-servername", "a.test")
    assert rc == 0, out
    rc, out = s_client(port, "-tls1_2", "-cipher", "AES128-SHA", "-servername", "a.test")
    assert rc != 0  # no RSA key exchange, no CBC
    rc, out = s_client(port, "-tls1_3", "-servername", "a.test")
    assert rc == 0 and "TLSv1.3" in out, out


def test_resumption_with_tickets(tls_gateway, pki, tmp_path):
    port, _, _ = tls_gateway
    sess = str(tmp_path / "sess.pem")
    for proto in ("-tls1_2", "-tls1_3"):
        p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, proto,
                            "-servername", "a.test", "-ign_eof", "-sess_out", sess],
                           input="GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
                           capture_output=True, text=True, timeout=20)
        assert "New," in p.stdout, p.stdout
        p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, proto,
                            "-servername", "a.test", "-ign_eof", "-sess_in", sess],
                           input="GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
                           capture_output=True, text=True, timeout=20)
        assert "Reused," in p.stdout, (proto, p.stdout)
    # Python's client resumes too.
    ctx = ssl.create_default_context(cafile=pki.ca)
    _, session, reused = https_get(port, "a.test", servername="a.test", ctx=ctx)
    _, _, reused2 = https_get(port, "a.test", servername="a.test", ctx=ctx, session=session)
    assert not reused and reused2


def test_421_when_certificate_does_not_cover_host(tls_gateway):
    port, b, _ = tls_gateway
    out, _, _ = https_get(port, "b.test", servername="a.test")
    assert status_of(out) == 421
    out, _, _ = https_get(port, "a.test", servername="a.test")
    assert status_of(out) == 200
    out, _, _ = https_get(port, "x.w.test", servername="y.w.test")  # same wildcard cert
    assert status_of(out) == 200


def test_421_checked_per_request_on_one_connection(tls_gateway):
    # The verdict for a connection's Host is remembered; another Host on the
    # same connection is checked again.
    port, _, _ = tls_gateway
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.sock = ctx.wrap_socket(s, server_hostname="a.test")
    statuses = []
    for host in ["a.test", "a.test", "a.test:%d" % port, "b.test"]:
        conn.request("GET", "/", headers={"Host": host})
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
    conn.close()
    assert statuses == [200, 200, 200, 421]


def test_hot_reload_of_renewed_certificate(tollgate, backend, pki):
    b = backend(backend_ok)
    port = free_port()
    crt, key = pki.leaf("site", ["site.test"], serial=1001)
    tg = tollgate(tls_config(port, b.port, [(crt, key)], sites=["site.test"]))
    ctx = ssl.create_default_context(cafile=pki.ca)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="site.test")
    assert int(s.getpeercert()["serialNumber"], 16) == 1001

    def one(sock):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        n = int(re.search(rb"Content-Length: (\d+)", data).group(1))
        while len(data.split(b"\r\n\r\n", 1)[1]) < n:
            data += sock.recv(65536)
        return status_of(data)
    assert one(s) == 200
    # Renew in place and reload: the open connection carries on.
    new_crt, new_key = pki.leaf("site2", ["site.test"], serial=2002)
    shutil.copy(new_crt, crt)
    shutil.copy(new_key, key)
    tg.reload()
    assert one(s) == 200
    s2 = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="site.test")
    assert int(s2.getpeercert()["serialNumber"], 16) == 2002
    s2.close()
    # A broken certificate is refused; the renewed one keeps serving.
    with open(crt, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    tg.reload(expect_ok=False)
    assert re.search(r"tollgate\.yaml:\d+:\d+: .*%s" % re.escape(crt), tg.stderr())
    s3 = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="site.test")
    assert int(s3.getpeercert()["serialNumber"], 16) == 2002
    assert one(s3) == 200 and one(s) == 200
    s3.close()
    s.close()


def test_bad_certificates_refused_at_check(tmp_path, pki):
    from conftest import run_tollgate_check
    crt, key = pki.leaf("k1", ["k1.test"])
    _, other_key = pki.leaf("k2", ["k2.test"])
    base = tls_config(18443, 18444, [(crt, other_key)])
    rc, out, path = run_tollgate_check(base, tmp_path)
    assert rc == 1 and re.search(r"check\.yaml:\d+:\d+: ", out) and (crt in out or other_key in out), out
    rc, out, _ = run_tollgate_check(tls_config(18443, 18444, [(crt, "/nonexistent.key")]), tmp_path)
    assert rc == 1 and "/nonexistent.key" in out
    rc, out, _ = run_tollgate_check(tls_config(18443, 18444, []).replace("  certificates:\n", ""),
                                    tmp_path)
    assert rc == 1 and "certificates" in out


def expired_certificate(pki, tmp_path):
    """A certificate valid only in January 2020, signed with `openssl ca`
    (the one openssl command that sets explicit dates)."""
    d = tmp_path / "ca"
    d.mkdir()
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    conf = d / "ca.cnf"
    conf.write_text("""[ca]
default_ca = test
[test]
dir = %s
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir
default_md = sha256
policy = anything
copy_extensions = copy
[anything]
commonName = supplied
""" % d)
    key = str(tmp_path / "old.key")
    csr = str(tmp_path / "old.csr")
    crt = str(tmp_path / "old.pem")
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=old.test",
         "-addext", "subjectAltName=DNS:old.test"])
    r = run(["openssl", "ca", "-batch", "-config", str(conf), "-cert", pki.ca, "-keyfile", pki.ca_key,
             "-in", csr, "-out", crt, "-startdate", "200101000000Z", "-enddate", "200201000000Z"])
    assert r.returncode == 0, r.stderr
    return crt, key


def test_expired_certificate_warns(tollgate, backend, pki, tmp_path):
    crt, key = expired_certificate(pki, tmp_path)
    b = backend(backend_ok)
    port = free_port()
    tg = tollgate(tls_config(port, b.port, [(crt, key)], sites=["old.test"]))
    time.sleep(0.2)
    assert "old.pem" in tg.stderr() and "expire" in tg.stderr().lower()


def test_redirect_listener(tollgate, backend):
    b = backend(backend_ok)
    port = free_port()
    tollgate("""
listen:
  - address: 127.0.0.1:%d
    redirect_to_https: 8443
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: ["*"]
    routes: [{path: /, upstream: app}]
""" % (port, b.port))
    from conftest import raw
    resp = raw(port, b"GET /a/b?q=1&r=2 HTTP/1.1\r\nHost: example.test:%d\r\nConnection: close\r\n\r\n" % port)
    assert status_of(resp) == 308
    assert b"Location: https://example.test:8443/a/b?q=1&r=2\r\n" in resp
    assert b.requests == []


def test_stalled_handshake_times_out_others_served(tls_gateway):
    port, _, _ = tls_gateway
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(b"\x16\x03\x01\x00\x50")  # a ClientHello header, then nothing
    t0 = time.time()
    for _ in range(5):
        out, _, _ = https_get(port, "a.test", servername="a.test")
        assert status_of(out) == 200
    stalled.settimeout(5 * SLOW)
    assert stalled.recv(100) == b""
    assert time.time() - t0 < 3 * SLOW
    stalled.close()


def test_client_certificates(tollgate, backend, pki):
    b = backend(backend_ok)
    port = free_port()
    server = pki.leaf("srv", ["mtls.test"])
    client_crt, client_key = pki.leaf("client", ["client.test"], cn="alice", client=True)
    tollgate(tls_config(port, b.port, [server], sites=["mtls.test"], listener_extra=(
        "    client_ca: %s\n    client_subject_header: X-Client-Subject\n" % pki.ca)))
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.load_cert_chain(client_crt, client_key)
    out, _, _ = https_get(port, "mtls.test", servername="mtls.test", ctx=ctx,
                          headers={"X-Client-Subject": "CN=mallory"})
    assert status_of(out) == 200
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["x-client-subject"] == ["CN=alice"]
    # Without a client certificate the handshake is refused.
    ctx2 = ssl.create_default_context(cafile=pki.ca)
    out, _, _ = https_get(port, "mtls.test", servername="mtls.test", ctx=ctx2)
    assert status_of(out) is None


def tls_backend(pki, name, sans, serve=backend_ok):
    crt, key = pki.leaf(name, sans)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)

    def handler(sock, be):
        try:
            ts = ctx.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError):
            be.record("handshake failed")
            return
        serve(ts, be)
    return handler


def upstream_tls_config(port, up_port, ca, upstream_extra="", top_extra=""):
    """A plain listener in front of one TLS upstream verified against `ca`
    under the name backend.test."""
    return """
workers: 1
listen: [127.0.0.1:%d]
%s
upstreams:
  secure:
    servers: [127.0.0.1:%d]
    tls: true
    tls_ca: %s
    tls_server_name: backend.test
%s
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: secure}]
""" % (port, top_extra, up_port, ca, upstream_extra)


def test_upstream_tls_verified(tollgate, backend, pki):
    good = backend(tls_backend(pki, "up", ["backend.test"]))
    port = free_port()
    tollgate(upstream_tls_config(port, good.port, pki.ca))
    from conftest import get
    for _ in range(5):
        assert get(port, "/")[0] == 200
    assert good.connections == 1  # TLS connections are pooled too


def test_upstream_tls_wrong_name_refused(tollgate, backend, pki):
    bad = backend(tls_backend(pki, "up2", ["someone-else.test"]))
    port = free_port()
    tg = tollgate(upstream_tls_config(port, bad.port, pki.ca, upstream_extra="    retries: 0"))
    from conftest import get
    assert get(port, "/")[0] == 502
    time.sleep(0.2)
    assert "TLS handshake" in tg.stderr()


def slow_sink(sock, be):
    """Reads a Content-Length body in small pieces with pauses (its receive
    buffer is small), so the gateway's upstream writes keep meeting a full
    socket, then answers with the byte count and digest."""
    import hashlib
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    n = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    digest = hashlib.sha256(body)
    got = len(body)
    while got < n:
        time.sleep(0.001)
        chunk = sock.recv(min(16384, n - got))
        if not chunk:
            return
        digest.update(chunk)
        got += len(chunk)
    payload = ("%d %s" % (got, digest.hexdigest())).encode()
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)


@pytest.mark.parametrize("size", [16384 * 20, 16384 * 366])
def test_upload_through_tls_never_stalls_on_buffered_plaintext(tollgate, backend, pki, size):
    """A TLS record decrypts into whatever room the client buffer has left;
    the rest stays inside OpenSSL where epoll cannot see it. The gateway must
    come back for it when room frees up, or the end of the body waits for a
    socket event that never comes."""
    import hashlib
    b = backend(slow_sink)
    b.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = free_port()
    # The access log (every field, flushed at once) says, when the rare
    # wrong answer comes, whether this gateway served it and from where.
    tg = tollgate(tls_config(port, b.port, [pki.leaf("a", ["a.test"])],
                             extra="client:\n  body_timeout: 30s\n  buffer_size: 4KiB\n"
                                   "log:\n  access: stdout\n  access_fields: all\n"
                                   "  access_flush: 100ms\n"))
    body = os.urandom(size)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=15 * SLOW)
        ts = ctx.wrap_socket(s, server_hostname="a.test")
        start = time.monotonic()
        ts.sendall(b"POST /up HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n"
                   b"Content-Length: %d\r\n\r\n" % size)
        ts.sendall(body)  # whole 16 KiB records, the last one too
        out = b""
        while True:
            chunk = ts.recv(65536)
            if not chunk:
                break
            out += chunk
        elapsed = time.monotonic() - start
        ts.close()
        # Seen rarely on a loaded machine: a 502, or a 200 whose body is not
        # slow_sink's: the whole answer, the backend's connection count and
        # the gateway's log say which.
        why = (out[:1200], b.connections, tg.stderr()[-3000:])
        # Printed whole (an assertion message is cut): shown with a failure.
        time.sleep(0.2)  # the access line is written within access_flush
        print("answer:", out[:1200], "\nbackend connections:", b.connections,
              "\ngateway port:", port, "backend port:", b.port, "\nlog:", why[2],
              "\naccess log:", tg.stdout()[-4000:])
        assert status_of(out) == 200, why
        assert out.split(b"\r\n\r\n", 1)[1] == ("%d %s" % (size, hashlib.sha256(body).hexdigest())).encode(), why
        assert elapsed < 10 * SLOW, elapsed


def test_download_from_tls_upstream_never_stalls_on_buffered_plaintext(tollgate, backend, pki):
    """The same on the upstream side: the backend's 16 KiB records land in a
    4 KiB buffer, the rest waits inside OpenSSL; the last record must still
    reach the client, and the connection go back to the pool."""
    import hashlib
    body = os.urandom(16384 * 40)

    def big(ts, be):
        for _ in requests_on(ts):
            ts.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            ts.sendall(body)  # whole records, the last one too

    up = backend(tls_backend(pki, "up3", ["backend.test"], serve=big))
    port = free_port()
    tollgate(upstream_tls_config(port, up.port, pki.ca, upstream_extra="    read_timeout: 30s",
                                 top_extra="client: {buffer_size: 4KiB}"))
    s = socket.create_connection(("127.0.0.1", port), timeout=15 * SLOW)
    for _ in range(3):
        start = time.monotonic()
        s.sendall(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
        out = b""
        while b"\r\n\r\n" not in out or len(out.split(b"\r\n\r\n", 1)[1]) < len(body):
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            out += chunk
        assert status_of(out) == 200
        assert hashlib.sha256(out.split(b"\r\n\r\n", 1)[1]).digest() == hashlib.sha256(body).digest()
        assert time.monotonic() - start < 10 * SLOW
    s.close()
    assert up.connections == 1


def test_pipelined_records_read_ahead_are_all_answered(tls_gateway):
    """Records read ahead sit inside OpenSSL, invisible to epoll: requests
    sent as separate records in one burst (a body in its own record too)
    must each be answered, in order, without waiting for more input."""
    port, b, _ = tls_gateway
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    ts = ctx.wrap_socket(s, server_hostname="a.test")
    for i in range(4):
        ts.send(b"GET /p%d HTTP/1.1\r\nHost: a.test\r\n\r\n" % i)  # one record each
    ts.send(b"POST /p4 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\n")
    ts.send(b"hello")
    ts.send(b"GET /p5 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    out = b""
    deadline = time.monotonic() + 5 * SLOW
    while out.count(b"HTTP/1.1 200") < 6 and time.monotonic() < deadline:
        chunk = ts.recv(65536)
        if not chunk:
            break
        out += chunk
    ts.close()
    assert out.count(b"HTTP/1.1 200") == 6, out
    paths = [r[0].split()[1] for r in b.requests]
    assert paths == ["/p%d" % i for i in range(6)]
    assert b.requests[4][2] == b"hello"


def test_websocket_over_tls_with_small_buffers(tollgate, backend, pki):
    """A tunnel reads the same way as a body: a frame whose last TLS record
    is bigger than the buffer leaves that record's tail inside OpenSSL, and
    the backend waits for it before it echoes."""
    import base64
    from test_streaming import recv_until, ws_echo_backend, ws_frame, ws_read_frame

    b = backend(ws_echo_backend)
    port = free_port()
    tollgate(tls_config(port, b.port, [pki.leaf("a", ["a.test"])],
                        extra="client:\n  buffer_size: 4KiB\n"))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW),
                        server_hostname="a.test")
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = recv_until(s, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    buf = head.split(b"\r\n\r\n", 1)[1]
    # 16384 * 5 - 14: the frame (14-byte header) ends with a whole record,
    # bigger than the buffer, so its tail stays inside OpenSSL.
    for size in (16384 * 5 - 14, 70000, 5000, 1):
        msg = os.urandom(size)
        start = time.monotonic()
        s.sendall(ws_frame(msg))
        op, payload, buf = ws_read_frame(s, buf)
        assert payload == msg
        assert time.monotonic() - start < 5 * SLOW
    s.close()
