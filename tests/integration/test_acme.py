"""Automatic HTTPS (issue 19) against a real ACME CA on loopback: Debian's
`pebble` (Let's Encrypt's test server) with `pebble-challtestsrv` as the DNS
that points every name at 127.0.0.1. Each test starts its own CA, whose
validation authority connects to tollgate's listeners (pebble's httpPort
and tlsPort are tollgate's ports). `openssl s_client` checks the chain
served against the CA's root after each step."""

import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import SLOW, Redis, free_port, run_tollgate_check, wait_port

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"


def make_tls_cert(d, name="pebble"):
    """A self-signed certificate for 127.0.0.1 (the CA's own HTTPS)."""
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=" + name, "-days", "2",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


class Pebble:
    """pebble and its DNS, for one test. `http_port`/`tls_port` are where
    its validation authority connects (tollgate's listeners)."""

    def __init__(self, d, http_port, tls_port, validity=None, eab=None):
        self.dir = str(d)
        os.makedirs(self.dir, exist_ok=True)
        self.ca_cert, key = make_tls_cert(self.dir)
        self.port, self.mgmt, dns = free_port(), free_port(), free_port()
        cfg = {"listenAddress": "127.0.0.1:%d" % self.port,
               "managementListenAddress": "127.0.0.1:%d" % self.mgmt,
               "certificate": self.ca_cert, "privateKey": key,
               "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
               "externalAccountBindingRequired": False}
        if validity:
            cfg["certificateValidityPeriod"] = validity
        if eab:
            cfg["externalAccountBindingRequired"] = True
            cfg["externalAccountMACKeys"] = eab
        path = os.path.join(self.dir, "pebble.json")
        with open(path, "w") as f:
            json.dump({"pebble": cfg}, f)
        self.logs = []
        self.procs = []
        self.dns = self._spawn([CHALLTESTSRV, "-dns01", "127.0.0.1:%d" % dns, "-http01", "",
                                "-https01", "", "-tlsalpn01", "", "-management",
                                "127.0.0.1:%d" % free_port(), "-defaultIPv4", "127.0.0.1",
                                "-defaultIPv6", ""], "challtestsrv.log")
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                   PEBBLE_AUTHZREUSE="0")
        self.cmd = [PEBBLE, "-config", path, "-dnsserver", "127.0.0.1:%d" % dns]
        self.env = env
        self.start()

    def _spawn(self, cmd, log, env=None):
        f = open(os.path.join(self.dir, log), "ab")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        self.logs.append(f)
        self.procs.append(p)
        return p

    def start(self):
        self.proc = self._spawn(self.cmd, "pebble.log", self.env)
        if not wait_port(self.port, timeout=15 * SLOW) or not wait_port(self.mgmt, timeout=15):
            raise RuntimeError("pebble did not start:\n" + self.log())

    def stop_ca(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    @property
    def directory(self):
        return "https://127.0.0.1:%d/dir" % self.port

    def log(self):
        with open(os.path.join(self.dir, "pebble.log"), errors="replace") as f:
            return f.read()

    def root(self):
        """The root its certificates chain to, as a PEM file."""
        ctx = ssl.create_default_context(cafile=self.ca_cert)
        pem = urllib.request.urlopen("https://127.0.0.1:%d/roots/0" % self.mgmt,
                                     context=ctx, timeout=10).read()
        path = os.path.join(self.dir, "root.pem")
        with open(path, "wb") as f:
            f.write(pem)
        return path

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in self.logs:
            f.close()


@pytest.fixture
def pebble(tmp_path):
    made = []

    def start(http_port, tls_port, **kw):
        p = Pebble(tmp_path / ("pebble%d" % len(made)), http_port, tls_port, **kw)
        made.append(p)
        return p
    yield start
    for p in made:
        p.close()


def s_client(port, name, root):
    """(verified, serial, notAfter, alert) of the chain served for `name`."""
    p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                        "-servername", name, "-CAfile", root, "-verify_hostname", name,
                        "-showcerts"], input=b"", capture_output=True, timeout=20)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    serial = not_after = None
    if m:
        x = subprocess.run(["openssl", "x509", "-noout", "-serial", "-enddate"],
                           input=m.group(0).encode(), capture_output=True, timeout=10)
        info = x.stdout.decode()
        serial = re.search(r"serial=(\w+)", info).group(1)
        not_after = re.search(r"notAfter=(.*)", info).group(1)
    verified = serial is not None and "Verify return code: 0 (ok)" in out
    alert = re.search(r"alert (unrecognized name|number \d+|[a-z ]+)", out)
    return verified, serial, not_after, alert.group(1) if alert else None


def wait_served(port, name, root, other_than=None, timeout=30.0):
    deadline = time.monotonic() + timeout * SLOW
    last = None
    while time.monotonic() < deadline:
        last = s_client(port, name, root)
        if last[0] and last[1] != other_than:
            return last
        time.sleep(0.3)
    raise AssertionError("no verified certificate for %s on %d: %r" % (name, port, last))


def metric(port, name, labels=""):
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read()
    m = re.search(r"^%s%s (\d+)" % (re.escape(name), re.escape(labels)), body.decode(), re.M)
    return int(m.group(1)) if m else None


def acme_status(port):
    body = urllib.request.urlopen("http://127.0.0.1:%d/status" % port, timeout=10).read()
    return json.loads(body)["acme"]


def gateway_config(http_port, tls_port, admin, ca, state, hosts=("app.test",), acme_extra="",
                   extra="", sites_extra=""):
    listen = []
    if http_port:
        listen.append("  - {address: 127.0.0.1:%d}" % http_port)
    if tls_port:
        listen.append("  - {address: 127.0.0.1:%d, tls: true}" % tls_port)
    return """workers: 1
listen:
%s
admin: {listen: 127.0.0.1:%d}
tls:
  acme: {email: ops@app.test, ca: "%s", ca_bundle: %s, state_dir: %s%s}
%s
upstreams: {app: {servers: [127.0.0.1:9]}}
sites:
  - hosts: [%s]
    routes: [{path: /, upstream: app}]
%s""" % ("\n".join(listen), admin, ca.directory, ca.ca_cert, state, acme_extra, extra,
         ", ".join(hosts), sites_extra)


def test_http01_issuance_at_start(tmp_path, pebble, tollgate):
    http_port, tls_port, admin = free_port(), free_port(), free_port()
    ca = pebble(http_port, tls_port)
    state = tmp_path / "state"
    tg = tollgate(gateway_config(http_port, tls_port, admin, ca, state,
                                 hosts=("app.test", "www.app.test"),
                                 acme_extra=", tls_alpn01: false"))
    root = ca.root()
    ok, serial, _, _ = wait_served(tls_port, "app.test", root, timeout=20)
    assert ok and serial
    assert wait_served(tls_port, "www.app.test", root)[0]
    st = {s["name"]: s for s in acme_status(admin)}
    assert st["app.test"]["state"] == "valid" and "Pebble" in st["app.test"]["issuer"], st
    assert metric(admin, "tollgate_acme_orders_total", '{result="issued"}') == 2
    # /status lists what SNI can choose, with names, issuer and expiry.
    certs = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/status" % admin,
                                              timeout=10).read())["certificates"]
    mine = [c for c in certs if c["names"] == ["app.test"]]
    assert mine and mine[0]["source"] == "acme" and "Pebble" in mine[0]["issuer"], certs
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", mine[0]["not_after"]), certs
    assert metric(admin, "tollgate_certificate_expiry_seconds", '{name="app.test"}') > 0
    # Keys are private, written whole.
    key = state / "certs" / "app.test.key"
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert "-----BEGIN" in (state / "certs" / "app.test.pem").read_text()
    assert "validate w/ HTTP" in ca.log()


@pytest.mark.parametrize("right_key", [True, False])
def test_external_account_binding(tmp_path, pebble, tollgate, right_key):
    """A CA that requires External Account Binding: the right MAC key gets
    an account and a certificate; a wrong one gets neither."""
    http_port, tls_port, admin = free_port(), free_port(), free_port()
    good = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    ca = pebble(http_port, tls_port, eab={"kid-1": good})
    key = good if right_key else good[::-1]
    tg = tollgate(gateway_config(http_port, tls_port, admin, ca, tmp_path / "state",
                                 acme_extra=", eab_kid: kid-1, eab_hmac_key: %s" % key))
    root = ca.root()
    if right_key:
        assert wait_served(tls_port, "app.test", root, timeout=20)[0]
        return
    deadline = time.monotonic() + 10 * SLOW
    while (metric(admin, "tollgate_acme_orders_total", '{result="other"}') or 0) < 1:
        assert time.monotonic() < deadline, tg.stderr()
        time.sleep(0.3)
    assert not s_client(tls_port, "app.test", root)[0]
    st = {s["name"]: s for s in acme_status(admin)}
    assert "externalAccount" in st["app.test"]["error"] or "binding" in \
        st["app.test"]["error"].lower(), st


def test_tls_alpn01_issuance_without_a_plain_listener(tmp_path, pebble, tollgate):
    tls_port, admin = free_port(), free_port()
    ca = pebble(free_port(), tls_port)
    tg = tollgate(gateway_config(None, tls_port, admin, ca, tmp_path / "state",
                                 acme_extra=", http01: false"))
    root = ca.root()
    assert wait_served(tls_port, "app.test", root, timeout=20)[0]
    assert "validate w/ HTTP" not in ca.log()  # TLS-ALPN-01: pebble logs no line
    # The ALPN challenge protocol is not something a client can speak.
    ctx = ssl.create_default_context(cafile=root)
    ctx.set_alpn_protocols(["acme-tls/1"])
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as s:
        with pytest.raises(ssl.SSLError):
            with ctx.wrap_socket(s, server_hostname="app.test") as t:
                t.recv(1)


def test_renewal_of_short_lived_certificates(tmp_path, pebble, tollgate):
    http_port, tls_port, admin = free_port(), free_port(), free_port()
    ca = pebble(http_port, tls_port, validity=12)
    tg = tollgate(gateway_config(http_port, tls_port, admin, ca, tmp_path / "state",
                                 acme_extra=", tls_alpn01: false"))
    root = ca.root()
    _, first, _, _ = wait_served(tls_port, "app.test", root, timeout=20)
    # A connection made before the swap is not dropped by it.
    ctx = ssl.create_default_context(cafile=root)
    live = ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_port), timeout=10),
                           server_hostname="app.test")
    # Two thirds of 12 s: a new one comes at ~8 s, before the first expires.
    _, second, _, _ = wait_served(tls_port, "app.test", root, other_than=first, timeout=20)
    assert second != first
    assert metric(admin, "tollgate_acme_orders_total", '{result="issued"}') >= 2
    live.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert live.recv(100).startswith(b"HTTP/1.1 502"), "the old connection was dropped"
    live.close()


def test_on_demand_for_a_tenant_domain_and_refusal_of_others(tmp_path, pebble, tollgate):
    tls_port, admin = free_port(), free_port()
    ca = pebble(free_port(), tls_port)
    cfg = gateway_config(None, tls_port, admin, ca, tmp_path / "state",
                         acme_extra=", http01: false, on_demand: true",
                         extra="""tenants:
  static:
    shop: {servers: [127.0.0.1:9]}
  domains: {shop.example: shop}""",
                         sites_extra="""  - hosts: ["{tenant}.t.test"]
    custom_domains: true
    routes: [{path: /, upstream: $tenant}]""")
    tg = tollgate(cfg)
    root = ca.root()
    wait_served(tls_port, "app.test", root, timeout=20)
    # The first handshake for the custom domain waits for its certificate.
    ok, serial, _, _ = s_client(tls_port, "shop.example", root)
    assert ok and serial, "the first handshake did not get a certificate"
    # An unknown name: refused, and the CA is never asked.
    before = ca.log().count("order-plz")
    ok, serial, _, alert = s_client(tls_port, "random-%d.example" % os.getpid(), root)
    assert not ok and serial is None, (serial, alert)
    assert alert in ("unrecognized name", "number 112"), alert  # RFC 8446: 112
    assert metric(admin, "tollgate_acme_orders_total", '{result="refused"}') >= 1
    assert ca.log().count("order-plz") == before
    st = {s["name"]: s for s in acme_status(admin)}
    assert st["shop.example"]["on_demand"] is True and st["shop.example"]["state"] == "valid"


def test_restart_loads_the_stored_certificate_without_the_ca(tmp_path, pebble, tollgate):
    http_port, tls_port, admin = free_port(), free_port(), free_port()
    ca = pebble(http_port, tls_port)
    cfg = gateway_config(http_port, tls_port, admin, ca, tmp_path / "state")
    tg = tollgate(cfg)
    root = ca.root()
    _, serial, _, _ = wait_served(tls_port, "app.test", root, timeout=20)
    tg.stop()
    ca.stop_ca()
    tg2 = tollgate(cfg)
    ok, again, _, _ = s_client(tls_port, "app.test", root)
    assert ok and again == serial
    assert metric(admin, "tollgate_acme_orders_total", '{result="issued"}') == 0
    assert metric(admin, "tollgate_acme_orders_total", '{result="ca_unreachable"}') == 0


def test_ca_outage_keeps_the_old_certificate_serving(tmp_path, pebble, tollgate):
    http_port, tls_port, admin = free_port(), free_port(), free_port()
    ca = pebble(http_port, tls_port, validity=20)
    tg = tollgate(gateway_config(http_port, tls_port, admin, ca, tmp_path / "state",
                                 acme_extra=", tls_alpn01: false, timeout: 2s"))
    root = ca.root()
    _, serial, _, _ = wait_served(tls_port, "app.test", root, timeout=20)
    ca.stop_ca()
    # Renewal is due at ~13 s and fails: the certificate in hand serves on.
    deadline = time.monotonic() + 25 * SLOW
    while time.monotonic() < deadline:
        if (metric(admin, "tollgate_acme_orders_total", '{result="ca_unreachable"}') or 0) >= 1:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("no failed renewal recorded:\n" + tg.stderr())
    ok, still, _, _ = s_client(tls_port, "app.test", root)
    assert ok and still == serial
    st = {s["name"]: s for s in acme_status(admin)}
    assert st["app.test"]["state"] == "valid" and st["app.test"]["error"], st
    # Back-off: the next try is at least a minute away, not a hammering loop.
    assert st["app.test"]["renew_at"] - time.time() >= 50, st
    assert "next try in" in tg.stderr()


def self_signed(cert_path, key_path, name, not_before, not_after, serial=None, aki=None):
    """A certificate with chosen dates (openssl 3.0's req cannot backdate)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    utc = datetime.timezone.utc
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(not_before, utc))
            .not_valid_after(datetime.datetime.fromtimestamp(not_after, utc))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False))
    if aki:
        cert = cert.add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
    cert = cert.sign(key, hashes.SHA256())
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


class RateLimitedCA:
    """An ACME server that answers every new account with 429 and a
    Retry-After (as Let's Encrypt does past its limits); with `window`, it
    offers renewal information (ARI) suggesting that window for every
    certificate."""

    def __init__(self, d, window=None):
        cert, key = make_tls_cert(str(d), "fakeca")
        self.ca_cert = cert
        self.port = free_port()
        self.hits = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, body=b"", headers=()):
                self.send_response(code)
                self.send_header("Replay-Nonce", "n%d" % len(outer.hits))
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self):
                outer.hits.append(("HEAD", self.path))
                self.reply(200)

            def do_GET(self):
                outer.hits.append(("GET", self.path))
                base = "https://127.0.0.1:%d" % outer.port
                if self.path == "/dir":
                    d = {"newNonce": base + "/nonce", "newAccount": base + "/acct",
                         "newOrder": base + "/order"}
                    if window:
                        d["renewalInfo"] = base + "/renewal-info"
                    self.reply(200, json.dumps(d).encode(),
                               [("Content-Type", "application/json")])
                elif self.path.startswith("/renewal-info/") and window:
                    fmt = "%Y-%m-%dT%H:%M:%SZ"
                    self.reply(200, json.dumps({"suggestedWindow": {
                        "start": time.strftime(fmt, time.gmtime(window[0])),
                        "end": time.strftime(fmt, time.gmtime(window[1]))}}).encode(),
                        [("Content-Type", "application/json"), ("Retry-After", "21600")])
                else:
                    self.reply(200)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                self.rfile.read(n)
                outer.hits.append(("POST", self.path))
                self.reply(429, json.dumps({
                    "type": "urn:ietf:params:acme:error:rateLimited",
                    "detail": "too many new accounts"}).encode(),
                    [("Content-Type", "application/problem+json"), ("Retry-After", "7200")])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def directory(self):
        return "https://127.0.0.1:%d/dir" % self.port

    def close(self):
        self.httpd.shutdown()


def test_rate_limited_ca_gets_retry_after_and_the_old_certificate_serves(tmp_path, tollgate):
    ca = RateLimitedCA(tmp_path)
    try:
        state = tmp_path / "state"
        (state / "certs").mkdir(parents=True)
        # A certificate in hand, past two thirds of its life: renewal is due.
        self_signed(state / "certs" / "app.test.pem", state / "certs" / "app.test.key",
                    "app.test", time.time() - 20 * 86400, time.time() + 86400)
        os.chmod(state / "certs" / "app.test.key", 0o600)
        tls_port, admin = free_port(), free_port()
        tg = tollgate(gateway_config(None, tls_port, admin, ca, state,
                                     acme_extra=", http01: false"))
        deadline = time.monotonic() + 15 * SLOW
        while (metric(admin, "tollgate_acme_orders_total", '{result="rate_limited"}') or 0) < 1:
            assert time.monotonic() < deadline, tg.stderr()
            time.sleep(0.3)
        ok, _, _, _ = s_client(tls_port, "app.test", str(state / "certs" / "app.test.pem"))
        assert ok, "the certificate in hand is not served"
        st = {s["name"]: s for s in acme_status(admin)}
        assert "rateLimited" in st["app.test"]["error"], st
        assert st["app.test"]["renew_at"] - time.time() >= 7000, st  # Retry-After: 7200
        posts = len([h for h in ca.hits if h[0] == "POST"])
        time.sleep(2)
        assert len([h for h in ca.hits if h[0] == "POST"]) == posts  # no retry loop
    finally:
        ca.close()


@pytest.mark.parametrize("window_in_past", [True, False])
def test_renewal_information_moves_the_renewal_forward(tmp_path, tollgate, window_in_past):
    """ACME ARI (RFC 9773): a fresh certificate (renewal weeks away) is
    renewed at once when the CA's suggested window has begun (a revocation,
    an incident), and not otherwise. The CA is asked under the id RFC 9773
    derives from the authority key id and the serial."""
    now = time.time()
    # Not in the past: later than our own schedule, which then stands.
    window = (now - 3600, now - 60) if window_in_past else (now + 70 * 86400, now + 71 * 86400)
    ca = RateLimitedCA(tmp_path, window=window)
    try:
        state = tmp_path / "state"
        (state / "certs").mkdir(parents=True)
        self_signed(state / "certs" / "app.test.pem", state / "certs" / "app.test.key",
                    "app.test", now - 86400, now + 89 * 86400, serial=0x87654321,
                    aki=bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"))
        os.chmod(state / "certs" / "app.test.key", 0o600)
        tls_port, admin = free_port(), free_port()
        tg = tollgate(gateway_config(None, tls_port, admin, ca, state,
                                     acme_extra=", http01: false"))
        deadline = time.monotonic() + 10 * SLOW
        while ("GET", "/renewal-info/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE") not in ca.hits:
            assert time.monotonic() < deadline, (ca.hits, tg.stderr())
            time.sleep(0.2)
        time.sleep(2)
        posts = [h for h in ca.hits if h[0] == "POST"]
        st = {s["name"]: s for s in acme_status(admin)}
        if window_in_past:
            assert posts, "no renewal after the CA's window began: %r" % ca.hits
            assert "moves the renewal of app.test forward" in tg.stderr()
        else:
            assert not posts, ca.hits
            # Our own: two thirds of 90 days, less up to 5 % jitter.
            assert now + 50 * 86400 < st["app.test"]["renew_at"] < now + 60 * 86400, st
    finally:
        ca.close()


def test_two_gateways_on_one_redis_order_once_and_both_serve(tmp_path, pebble, tollgate):
    r = Redis(tmp_path)
    try:
        http_a, tls_a, admin_a = free_port(), free_port(), free_port()
        http_b, tls_b, admin_b = free_port(), free_port(), free_port()
        # The CA validates through gateway A's port only: whichever gateway
        # orders, the answer must be visible to A (Redis).
        ca = pebble(http_a, free_port())
        fleet = "  redis: {address: 127.0.0.1:%d}" % r.port
        cfg_a = gateway_config(http_a, tls_a, admin_a, ca, tmp_path / "a",
                               acme_extra=", tls_alpn01: false").replace(
            "tls:\n", "tls:\n" + fleet + "\n")
        cfg_b = gateway_config(http_b, tls_b, admin_b, ca, tmp_path / "b",
                               acme_extra=", tls_alpn01: false").replace(
            "tls:\n", "tls:\n" + fleet + "\n")
        a = tollgate(cfg_a, wait=False)
        b = tollgate(cfg_b, wait=False)
        root = ca.root()
        _, sa, _, _ = wait_served(tls_a, "app.test", root, timeout=30)
        _, sb, _, _ = wait_served(tls_b, "app.test", root, timeout=30)
        assert sa == sb, "the two gateways serve different certificates"
        issued = [metric(p, "tollgate_acme_orders_total", '{result="issued"}')
                  for p in (admin_a, admin_b)]
        assert sorted(issued) == [0, 1], issued
        assert b"tollgate:tls:cert:app.test" in r.cmd("KEYS", "tollgate:tls:*")
    finally:
        r.stop()


@pytest.mark.parametrize("case,acme,listen,message", [
    ("no way to validate", "{ca: https://127.0.0.1:1/dir, http01: false}",
     "  - {address: 127.0.0.1:18180}", "no way to prove"),
    ("ask without on demand", "{ca: https://127.0.0.1:1/dir, ask: http://127.0.0.1:1/ok}",
     "  - {address: 127.0.0.1:18180}", "ask is for on_demand"),
])
def test_check_refuses_acme_configs_that_cannot_work(tmp_path, case, acme, listen, message):
    cfg = """listen:
%s
tls:
  acme: %s
upstreams: {app: {servers: [127.0.0.1:9]}}
sites:
  - hosts: [app.test]
    routes: [{path: /, upstream: app}]
""" % (listen, acme)
    rc, out, path = run_tollgate_check(cfg, tmp_path)
    assert rc != 0 and message in out and re.search(r"check\.yaml:\d+:\d+", out), (case, out)
