"""Login limits tried as an attacker would (issue 16), against conf/tollgate.yaml's own
routes and a backend that routes and binds bodies as PocketBase does
(pocketbase_stub.py): every auth endpoint in every spelling PocketBase accepts gets the
login limits; the superuser routes and the admin UI stay private through forged
X-Forwarded-For chains; every wrong password for the victim that reaches PocketBase's
password check is charged to the victim's failure budget, whatever the body looks
like, or the body is refused; 50 guesses at once stop at the budget; a flood of new
keys cannot reset a lock.

The shipped file is used as it is, with only its addresses, certificate paths and (for
the tests that play the load balancer) the trusted_proxies line its own comment
suggests rewritten; a change to the file that breaks a rewrite fails here loudly."""

import http.client
import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import BIN, ROOT, SLOW, free_port, raw, wait_port
from pocketbase_stub import CUSTOMERS_ID, SUPERUSERS_ID, USERS_ID, PocketBaseStub

SHIPPED = os.path.join(ROOT, "conf", "tollgate.yaml")
VICTIM = "victim@example.com"


def make_cert(tmp_path):
    crt, key = str(tmp_path / "localhost.crt"), str(tmp_path / "localhost.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def shipped_config(tmp_path, stub_port, trusted=True, extra=None):
    """conf/tollgate.yaml with its addresses moved to free ports."""
    text = open(SHIPPED).read()
    https, http_port, admin = free_port(), free_port(), free_port()
    crt, key = make_cert(tmp_path)
    subs = [("127.0.0.1:8443", "127.0.0.1:%d" % https),
            ("redirect_to_https: 8443", "redirect_to_https: %d" % https),
            ("127.0.0.1:8080", "127.0.0.1:%d" % http_port),
            ("certs/localhost.crt", crt), ("certs/localhost.key", key),
            ("127.0.0.1:8090", "127.0.0.1:%d" % stub_port),
            ("127.0.0.1:9901", "127.0.0.1:%d" % admin),
            ("workers: auto", "workers: 2")]
    if trusted:
        # The test plays the load balancer in front: its own comment's line.
        subs.append(("# trusted_proxies: [10.0.0.0/8]", "trusted_proxies: [127.0.0.1/32]"))
    for old, new in subs:
        assert old in text, "conf/tollgate.yaml no longer has %r" % old
        text = text.replace(old, new)
    for old, new in (extra or []):
        assert old in text, old
        text = text.replace(old, new)
    return text, https, admin


class Gateway:
    def __init__(self, tollgate, tmp_path, trusted=True, extra=None):
        self.stub = PocketBaseStub().start()
        text, self.https, self.admin = shipped_config(tmp_path, self.stub.port, trusted, extra)
        text = text.replace("log:\n  level: info\n  access: stdout\n",
                            "log:\n  level: info\n  access: stdout\n  access_flush: 100ms\n")
        self.tg = tollgate(text, check_ports=[self.https])
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self._ip = 0

    def close(self):
        self.stub.stop()

    def fresh_ip(self):
        """A public address no other request of the test used."""
        self._ip += 1
        return "198.18.%d.%d" % (self._ip // 250, self._ip % 250 + 1)

    def request(self, method, path, body=None, headers=None, ip=None, xff_lines=None):
        h = {"Host": "localhost"}
        if ip is not None:
            h["X-Forwarded-For"] = ip
        h.update(headers or {})
        conn = http.client.HTTPSConnection("127.0.0.1", self.https, context=self.ctx,
                                           timeout=20 * SLOW)
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in h.items():
            conn.putheader(k, v)
        for line in xff_lines or []:
            conn.putheader("X-Forwarded-For", line)
        if body is not None:
            if "Transfer-Encoding" not in h:
                conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body is not None:
            conn.send(body)
        r = conn.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        conn.close()
        return r.status, hdrs, data

    def admin_get(self, path, method="GET"):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        conn.request(method, path)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, data

    def bucket(self, policy, key):
        status, data = self.admin_get("/ratelimit/%s/%s" % (policy, urllib.parse.quote(key, safe="@")))
        assert status == 200, data
        return json.loads(data)

    def settled_bucket(self, policy, key, state, timeout=2.0):
        """The bucket once it reaches `state`: a refund in Redis is its own
        command, so the admin API (another connection) may see it a moment
        after the answer that caused it."""
        deadline = time.time() + timeout * SLOW
        doc = self.bucket(policy, key)
        while doc["state"] != state and time.time() < deadline:
            time.sleep(0.02)
            doc = self.bucket(policy, key)
        return doc

    def reset(self, policy, key):
        status, data = self.admin_get("/ratelimit/%s/%s" % (policy, urllib.parse.quote(key, safe="@")),
                                      method="DELETE")
        assert status == 200, data


@pytest.fixture
def gateway(tollgate, tmp_path):
    g = Gateway(tollgate, tmp_path)
    yield g
    g.close()


def login_body(identity, password="wrong-password"):
    return json.dumps({"identity": identity, "password": password}).encode()


JSON = {"Content-Type": "application/json"}


# ---- the done-when lines, on the file as shipped ---------------------------------------


def shipped_with_own_cert(tmp_path):
    """conf/tollgate.yaml as shipped, but for the certificate `make run`
    would make (a clone has none): one made here."""
    text = open(SHIPPED).read()
    crt, key = make_cert(tmp_path)
    for old, new in (("certs/localhost.crt", crt), ("certs/localhost.key", key)):
        assert old in text, old
        text = text.replace(old, new)
    path = os.path.join(str(tmp_path), "shipped.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def test_explain_on_the_shipped_config(tmp_path):
    cfg = shipped_with_own_cert(tmp_path)

    def explain(*args):
        p = subprocess.run([BIN, "explain", "-c", cfg] + list(args), capture_output=True,
                           text=True, timeout=30, cwd=ROOT)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    out = explain("POST https://localhost/api/collections/USERS/auth-with-password")
    assert "'/api/collections/*/auth-with-password'" in out and "ignoring case" in out
    assert "limit:     auth (5/m" in out and "limit:     auth_failures (10/h" in out
    out = explain("POST https://localhost/api/collections/_superusers/auth-with-password",
                  "--peer", "203.0.113.9")
    assert "auth_failures" in out and "answer:    403" in out
    out = explain("POST https://localhost/api/collections/_superusers/auth-with-password")
    assert "access:    allowed" in out  # from loopback
    out = explain("POST https://localhost/api/collections/customers/auth-with-otp")
    assert "limit:     auth (5/m" in out and "otp_failures" in out
    out = explain("GET https://localhost/api/files/" + USERS_ID + "/abc/photo.png")
    assert "limits:    none" in out and "Cache-Control: public, max-age=86400, immutable" in out
    rc = subprocess.run([BIN, "-t", "-c", cfg], capture_output=True, text=True, cwd=ROOT)
    assert rc.returncode == 0, rc.stdout + rc.stderr


# ---- path spellings -------------------------------------------------------------------

# Collection spellings PocketBase resolves (EqualFold on the name, or the id) and path
# shapes a client may send: the shipped routes must give each the login limits.
COLLECTIONS = ["users", "USERS", "Users", USERS_ID, "%55SERS", "u%73ers", "customers",
               "CUSTOMERS", CUSTOMERS_ID]
SHAPES = [
    lambda c, e: "/api/collections/%s/%s" % (c, e),
    lambda c, e: "//api//collections/%s//%s" % (c, e),
    lambda c, e: "/api/./collections/%s/./%s" % (c, e),
    lambda c, e: "/api/collections/%s/%s/" % (c, e),
    lambda c, e: "/api/collections/x/../%s/%s" % (c, e),
    lambda c, e: "/api/collections/%s/%s;x=1" % (c, e),
    lambda c, e: "/api/collections/%s;v=2/%s" % (c, e),
    lambda c, e: "/API/Collections/%s/%s" % (c, e.upper()),
]
# endpoint -> (policy, requests allowed from one address, body)
ENDPOINTS = {
    "auth-with-password": ("auth", 5, lambda n: login_body("probe-%d@example.com" % n)),
    "auth-with-otp": ("auth", 5, lambda n: json.dumps({"otpId": "otp%d" % n,
                                                       "password": "12345678"}).encode()),
    "auth-with-oauth2": ("auth", 5, lambda n: b'{"provider":"google","code":"x"}'),
    "confirm-password-reset": ("auth", 5, lambda n: b'{"token":"x","password":"y"}'),
    "request-password-reset": ("auth_emails", 3, lambda n: b'{"email":"victim@example.com"}'),
    "request-otp": ("auth_emails", 3, lambda n: b'{"email":"victim@example.com"}'),
    "request-verification": ("auth_emails", 3, lambda n: b'{"email":"a@example.com"}'),
    "request-email-change": ("auth_emails", 3, lambda n: b'{"newEmail":"b@example.com"}'),
}


def test_every_auth_endpoint_in_every_spelling_gets_the_login_limits(gateway):
    g = gateway
    n = 0
    cases = 0
    for ei, (endpoint, (policy, budget, body)) in enumerate(ENDPOINTS.items()):
        for ci, coll in enumerate(COLLECTIONS):
            shape = SHAPES[(ei + ci) % len(SHAPES)]
            method = ("POST", "PUT", "GET")[(ei + ci) % 3]
            path = shape(coll, endpoint)
            ip = g.fresh_ip()
            codes = []
            for _ in range(budget + 1):
                n += 1
                status, headers, _ = g.request(method, path, body=body(n), headers=JSON, ip=ip)
                codes.append(status)
            assert 429 not in codes[:budget], (method, path, codes)
            assert codes[budget] == 429, (method, path, codes)
            cases += 1
    assert cases == len(ENDPOINTS) * len(COLLECTIONS)


def test_one_login_budget_for_all_spellings(gateway):
    """Five password guesses a minute from one address, however the path is spelled:
    at most five reach PocketBase's password check."""
    g = gateway
    ip = g.fresh_ip()
    paths = [f("users", "auth-with-password") for f in SHAPES] + \
            ["/api/collections/%s/auth-with-password" % c for c in COLLECTIONS]
    statuses = [g.request("POST", p, body=login_body(VICTIM), headers=JSON, ip=ip)[0]
                for p in paths]
    assert statuses.count(429) == len(paths) - 5, statuses
    assert len(g.stub.attempts) <= 5


# ---- private-only routes ----------------------------------------------------------------

SUPER_PATHS = ["/_/", "/_/#/login", "/%5F/", "/api/../_/",
               "/api/collections/_superusers/auth-with-password",
               "/api/collections/_SUPERUSERS/auth-with-password",
               "/api/collections/_%C5%BFuperusers/auth-with-password",
               "/api/collections/_%c5%bfuperu%C5%BFer%73/auth-with-otp",
               "/api/collections/%s/auth-with-password" % SUPERUSERS_ID,
               "/api/collections/_superusers/request-otp",
               "/api/collections/_superusers/records",
               "/api/collections/_superusers/impersonate/abc"]


def test_superuser_routes_refuse_a_public_client(gateway):
    g = gateway
    for path in SUPER_PATHS:
        if "#" in path:
            continue  # a fragment never reaches the server
        status, _, _ = g.request("POST", path, body=login_body("admin@example.com"),
                                 headers=JSON, ip="203.0.113.50")
        assert status == 403, path
    assert g.stub.attempts == []
    # The same from a private address behind the balancer passes.
    status, _, _ = g.request("POST", "/api/collections/_superusers/auth-with-password",
                             body=login_body("admin@example.com", "admin-pass"), headers=JSON,
                             ip="10.1.2.3")
    assert status == 200
    assert [a.identity for a in g.stub.attempts] == ["admin@example.com"]


def test_forged_forwarded_chains_cannot_choose_the_client(gateway):
    """16 and more forged X-Forwarded-For lines before the balancer's own: every line
    is read and the chain walked from the right, so the client stays the public
    address the balancer appended."""
    g = gateway
    for forged in (1, 16, 17, 40):
        lines = ["10.0.0.%d" % (i + 1) for i in range(forged)] + ["203.0.113.77"]
        status, _, _ = g.request("GET", "/_/", xff_lines=lines)
        assert status == 403, forged
        # One line with many elements, too.
        status, _, _ = g.request("GET", "/_/", xff_lines=[", ".join(lines)])
        assert status == 403, forged
    # What PocketBase receives starts with the client as identified.
    g.stub.reset()
    g.request("GET", "/api/health", xff_lines=["6.6.6.6", "10.9.9.9", "203.0.113.78"])
    seen = g.stub.requests[-1]
    assert seen.header("X-Forwarded-For") == "203.0.113.78, 127.0.0.1"
    assert seen.header("X-Real-IP") == "203.0.113.78"
    # Forwarded and X-Forwarded-For naming different clients: refused.
    status, _, _ = g.request("GET", "/api/health", headers={"Forwarded": "for=10.0.0.1"},
                             ip="203.0.113.79")
    assert status == 400


def test_untrusted_proxy_header_is_refused(tollgate, tmp_path):
    """A PROXY protocol listener believes only trusted_proxies; 127.0.0.1 is not one."""
    stub = PocketBaseStub().start()
    try:
        port = free_port()
        tg = tollgate("""
listen:
  - address: 127.0.0.1:%d
    proxy_protocol: true
trusted_proxies: [10.0.0.0/8]
upstreams: {pb: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: [localhost]
    routes:
      - {path: /_/, upstream: pb, allow: [private]}
      - {path: /, upstream: pb}
""" % (port, stub.port), check_ports=[port])
        out = raw(port, b"PROXY TCP4 10.0.0.5 127.0.0.1 5555 80\r\nGET /_/ HTTP/1.1\r\n"
                        b"Host: localhost\r\n\r\n", timeout=3)
        assert out == b""
        assert stub.requests == []
        assert "PROXY protocol is only accepted from trusted_proxies" in tg.stderr()
    finally:
        stub.stop()


# ---- body shapes --------------------------------------------------------------------------

MP_BOUNDARY = "----tgBoundary7MA4YWxkTrZu0gW"


def multipart(fields, boundary=MP_BOUNDARY, extra_part_headers=None):
    out = b""
    for name, value in fields:
        out += b"--" + boundary.encode() + b"\r\n"
        out += b'Content-Disposition: form-data; name="' + name.encode() + b'"\r\n'
        for h in (extra_part_headers or {}).get(name, []):
            out += h.encode() + b"\r\n"
        out += b"\r\n" + value.encode() + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


MP = {"Content-Type": "multipart/form-data; boundary=" + MP_BOUNDARY}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# (name, query, headers, body): each a wrong password aimed at the victim in a shape
# PocketBase accepts (or one that should be refused).
BODY_CASES = [
    ("json", "", JSON, login_body(VICTIM)),
    ("json key upper case", "", JSON, b'{"IDENTITY":"victim@example.com","password":"x"}'),
    ("json key mixed case", "", JSON, b'{"Identity":"victim@example.com","password":"x"}'),
    ("json escaped key", "", JSON, b'{"\\u0069dentity":"victim@example.com","password":"x"}'),
    ("json value case", "", JSON, b'{"identity":"VICTIM@Example.COM","password":"x"}'),
    ("json value spaces", "", JSON, b'{"identity":" victim@example.com ","password":"x"}'),
    ("json duplicate keys", "", JSON,
     b'{"identity":"decoy-1","identity":"victim@example.com","password":"x"}'),
    ("json duplicate key case", "", JSON,
     b'{"identity":"decoy-2","IDENTITY":"victim@example.com","password":"x"}'),
    ("json null override", "", JSON,
     b'{"identity":"victim@example.com","identity":null,"password":"x"}'),
    ("json padding", "", JSON,
     b'{"pad":"' + b"x" * 5000 + b'","identity":"victim@example.com","password":"x"}'),
    ("json whitespace padding", "", JSON,
     b"{" + b" " * 5000 + b'"identity":"victim@example.com","password":"x"}'),
    ("json lone surrogate", "", JSON, b'{"identity":"victim@example.com\\ud800","password":"x"}'),
    ("json deep nesting", "", JSON,
     b'{"a":' + b"[" * 70 + b"]" * 70 + b',"identity":"victim@example.com","password":"x"}'),
    ("json nested identity", "", JSON,
     b'{"user":{"identity":"decoy-3"},"identity":"victim@example.com","password":"x"}'),
    ("json trailing value", "", JSON,
     b'{"identity":"victim@example.com","password":"x"} {"identity":"decoy-4"}'),
    ("json charset", "", {"Content-Type": "application/json; charset=utf-8"}, login_body(VICTIM)),
    ("json upper-case type", "", {"Content-Type": "Application/JSON"}, login_body(VICTIM)),
    ("json as text/plain", "", {"Content-Type": "text/plain"}, login_body(VICTIM)),
    ("json without type", "", {}, login_body(VICTIM)),
    ("json chunked", "", dict(JSON, **{"Transfer-Encoding": "chunked"}), None),
    ("form", "", FORM, b"identity=victim%40example.com&password=x"),
    ("form plus", "", FORM, b"identity=victim%40example.com&password=x+y"),
    ("form encoded key", "", FORM, b"%69dentity=victim%40example.com&password=x"),
    ("form duplicate", "", FORM, b"identity=decoy-5&identity=victim%40example.com&password=x"),
    ("form key case", "", FORM, b"Identity=decoy-6&identity=victim%40example.com&password=x"),
    ("form identity in query", "?identity=victim%40example.com", FORM, b"password=x"),
    ("form query and body disagree", "?identity=decoy-7", FORM,
     b"identity=victim%40example.com&password=x"),
    ("form semicolon", "", FORM, b"identity=victim%40example.com;password=x"),
    ("form jsonPayload", "", FORM,
     b"%40jsonPayload=%7B%22identity%22%3A%22victim%40example.com%22%7D&password=x"),
    ("form jsonPayload override", "", FORM,
     b"identity=decoy-8&%40jsonPayload=%7B%22identity%22%3A%22victim%40example.com%22%7D"
     b"&password=x"),
    ("form that starts like json", "", FORM,
     b'{"identity":"decoy-9"}&identity=victim%40example.com&password=x'),
    ("form as json", "", JSON, b"identity=victim%40example.com&password=x"),
    ("multipart", "", MP, multipart([("identity", VICTIM), ("password", "x")])),
    ("multipart duplicate", "", MP,
     multipart([("identity", "decoy-10"), ("identity", VICTIM), ("password", "x")])),
    ("multipart query first", "?identity=decoy-11", MP,
     multipart([("identity", VICTIM), ("password", "x")])),
    ("multipart jsonPayload", "", MP,
     multipart([("@jsonPayload", '{"identity":"victim@example.com"}'), ("password", "x")])),
    ("multipart quoted-printable", "", MP,
     multipart([("identity", "victim=40example.com"), ("password", "x")],
               extra_part_headers={"identity": ["Content-Transfer-Encoding: quoted-printable"]})),
    ("multipart that starts like json", "", MP,
     b'{"identity":"decoy-12"}\r\n' + multipart([("identity", VICTIM), ("password", "x")])),
    ("xml", "", {"Content-Type": "application/xml"},
     b"<x><Identity>victim@example.com</Identity><Password>x</Password></x>"),
    ("two content types", "", dict(JSON, **{"content-type": "application/x-www-form-urlencoded"}),
     login_body(VICTIM)),
    ("empty", "", JSON, b""),
]


def chunked(body, size=7):
    out = b""
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


def send_case(g, query, headers, body, ip):
    if body is None:  # chunked JSON
        body = chunked(login_body(VICTIM))
    if "content-type" in headers and "Content-Type" in headers:
        # Two Content-Type lines: build by hand.
        h = dict(headers)
        second = h.pop("content-type")
        s = ssl.create_default_context()
        s.check_hostname = False
        s.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", g.https, context=s, timeout=10)
        conn.putrequest("POST", "/api/collections/users/auth-with-password" + query,
                        skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "localhost")
        conn.putheader("X-Forwarded-For", ip)
        conn.putheader("Content-Type", h["Content-Type"])
        conn.putheader("Content-Type", second)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body)
        r = conn.getresponse()
        r.read()
        conn.close()
        return r.status
    return g.request("POST", "/api/collections/users/auth-with-password" + query, body=body,
                     headers=headers, ip=ip)[0]


def folded(identity):
    return identity.strip(" \t\r\n").lower()


def test_every_wrong_password_for_the_victim_is_charged_to_the_victim_or_refused(gateway):
    g = gateway
    refused = charged = 0
    for name, query, headers, body in BODY_CASES:
        g.reset("auth_failures", VICTIM)
        g.stub.reset()
        status = send_case(g, query, headers, body, g.fresh_ip())
        checks = list(g.stub.attempts)
        if status in (400, 413) and not checks:
            refused += 1
            continue
        assert checks, (name, status)
        for c in checks:
            # Whatever identity PocketBase compared a password for, its bucket paid.
            left = g.bucket("auth_failures", folded(c.identity))
            assert left["remaining"] == 9, (name, c.identity, left)
            if folded(c.identity) == VICTIM:
                charged += 1
    # The matrix holds both kinds: both counts matter.
    assert charged >= 10 and refused >= 10, (charged, refused)


def test_json_identity_cannot_charge_an_address_fallback(gateway):
    """Key parts are escaped: an identity of "~ADDRESS" is its own bucket, never the
    address fallback of that client."""
    g = gateway
    ip = g.fresh_ip()
    g.request("POST", "/api/collections/users/auth-with-password",
              body=login_body("~" + ip), headers=JSON, ip=ip)
    assert g.bucket("auth_failures", "~" + ip)["state"] == "none"
    status, data = g.admin_get("/ratelimit/auth_failures?key=%7E" + ip)
    assert status == 200 and json.loads(data)["state"] == "none"


def test_ten_failures_lock_the_account_from_any_address_in_any_spelling(gateway):
    g = gateway
    spellings = [VICTIM, "Victim@Example.com", " VICTIM@example.com", "victim@EXAMPLE.com\t"]
    for i in range(10):
        body = login_body(spellings[i % len(spellings)])
        assert g.request("POST", "/api/collections/users/auth-with-password", body=body,
                         headers=JSON, ip=g.fresh_ip())[0] == 400
    status, headers, _ = g.request("POST", "/api/collections/USERS/auth-with-password",
                                   body=b"identity=victim%40example.com&password=s3cret-victim",
                                   headers=FORM, ip=g.fresh_ip())
    assert status == 429 and '"auth_failures"' in headers["ratelimit"]
    assert len([a for a in g.stub.attempts if folded(a.identity) == VICTIM]) == 10
    # The operator unlocks it with any spelling, as enforcement folds it.
    g.reset("auth_failures", "Victim@Example.COM")
    assert g.request("POST", "/api/collections/users/auth-with-password",
                     body=login_body(VICTIM, "s3cret-victim"), headers=JSON,
                     ip=g.fresh_ip())[0] == 200


def test_honest_logins_give_their_token_back(gateway):
    g = gateway
    for i in range(25):
        assert g.request("POST", "/api/collections/users/auth-with-password",
                         body=login_body("alice@example.com", "correct horse"), headers=JSON,
                         ip=g.fresh_ip())[0] == 200
    assert g.bucket("auth_failures", "alice@example.com")["state"] == "none"
    # Nine failures, a success, then one more failure is still allowed.
    for i in range(9):
        g.request("POST", "/api/collections/users/auth-with-password",
                  body=login_body("alice@example.com"), headers=JSON, ip=g.fresh_ip())
    assert g.request("POST", "/api/collections/users/auth-with-password",
                     body=login_body("alice@example.com", "correct horse"), headers=JSON,
                     ip=g.fresh_ip())[0] == 200
    assert g.request("POST", "/api/collections/users/auth-with-password",
                     body=login_body("alice@example.com"), headers=JSON,
                     ip=g.fresh_ip())[0] == 400
    assert g.bucket("auth_failures", "alice@example.com")["remaining"] == 0


def concurrent_guesses(g, n=50):
    barrier = threading.Barrier(n)
    results = [None] * n

    def guess(i):
        ip = "198.19.%d.%d" % (i // 200, i % 200 + 1)
        barrier.wait()
        results[i] = g.request("POST", "/api/collections/users/auth-with-password",
                               body=login_body(VICTIM), headers=JSON, ip=ip)[0]
    threads = [threading.Thread(target=guess, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_fifty_concurrent_guesses_stop_at_the_budget(gateway):
    g = gateway
    results = concurrent_guesses(g)
    reached = [a for a in g.stub.attempts if folded(a.identity) == VICTIM]
    assert len(reached) == 10, len(reached)
    assert results.count(429) == 40 and results.count(400) == 10, results


def test_fifty_concurrent_guesses_stop_at_the_budget_in_redis(tollgate, tmp_path, redis):
    extra = [("rate_limit:\n  headers: true\n",
              "rate_limit:\n  headers: true\n  store: redis\n  redis: {address: 127.0.0.1:%d, "
              "timeout: 500ms}\n" % redis.port)]
    g = Gateway(tollgate, tmp_path, extra=extra)
    try:
        assert wait_port(redis.port)
        results = concurrent_guesses(g)
        reached = [a for a in g.stub.attempts if folded(a.identity) == VICTIM]
        assert len(reached) == 10, (len(reached), results)
        assert results.count(429) == 40, results
        # A successful login gives its reserved token back in Redis too.
        g.stub.reset()
        assert g.request("POST", "/api/collections/users/auth-with-password",
                         body=login_body("alice@example.com", "correct horse"), headers=JSON,
                         ip=g.fresh_ip())[0] == 200
        assert g.settled_bucket("auth_failures", "alice@example.com", "none")["state"] == "none"
    finally:
        g.close()


def test_access_log_names_the_keys_charged_as_hashes(gateway):
    g = gateway
    ip = g.fresh_ip()
    g.request("POST", "/api/collections/users/auth-with-password", body=login_body(VICTIM),
              headers=JSON, ip=ip)
    lines = [l for l in g.tg.access_lines(wait_for=1) if "auth-with-password" in l.get("path", "")]
    assert lines, g.tg.stdout()
    keys = {k["policy"]: k for k in lines[-1]["ratelimit_keys"]}
    assert set(keys) == {"auth", "auth_failures"}
    assert VICTIM not in json.dumps(lines[-1]) and ip not in json.dumps(keys)
    assert keys["auth_failures"]["key"] == g.bucket("auth_failures", VICTIM)["log_key"]
    assert keys["auth"]["key"] == g.bucket("auth", ip)["log_key"]


def test_files_are_unlimited_and_cached(gateway):
    g = gateway
    ip = g.fresh_ip()
    for _ in range(40):
        status, headers, _ = g.request("GET", "/api/files/%s/abc/photo.png" % USERS_ID, ip=ip)
        assert status == 200
    assert headers["cache-control"] == "public, max-age=86400, immutable"
    assert "ratelimit" not in headers


def test_a_flood_of_new_keys_cannot_reset_a_lock(tollgate, tmp_path):
    """The smallest table, a locked account, then many new keys of a policy whose
    buckets stay long (a daily quota keyed on a client-chosen header)."""
    extra = [("  policies:\n", "  local: {max_keys: 1024}\n  policies:\n    flood: "
              "{ rate: 10/d, burst: 10, key: [header:X-Key] }\n"),
             ("      - path: /api/\n        upstream: pocketbase\n        rate_limit: api\n",
              "      - path: /api/health\n        upstream: pocketbase\n        rate_limit: flood\n"
              "      - path: /api/\n        upstream: pocketbase\n        rate_limit: api\n")]
    g = Gateway(tollgate, tmp_path, extra=extra)
    try:
        for i in range(10):
            g.request("POST", "/api/collections/users/auth-with-password",
                      body=login_body(VICTIM), headers=JSON, ip=g.fresh_ip())
        assert g.bucket("auth_failures", VICTIM)["remaining"] == 0
        conn = http.client.HTTPSConnection("127.0.0.1", g.https, context=g.ctx, timeout=20)
        for i in range(2500):
            conn.request("GET", "/api/health", headers={"Host": "localhost",
                                                         "X-Key": "k%d" % i,
                                                         "X-Forwarded-For": "198.51.100.1"})
            conn.getresponse().read()
        conn.close()
        assert g.bucket("auth_failures", VICTIM)["remaining"] == 0
        status, _, _ = g.request("POST", "/api/collections/users/auth-with-password",
                                 body=login_body(VICTIM, "s3cret-victim"), headers=JSON,
                                 ip=g.fresh_ip())
        assert status == 429
    finally:
        g.close()


def test_backups_get_a_long_read_timeout_and_no_body_cap(tollgate, tmp_path):
    extra = [("    read_timeout: 60s\n", "    read_timeout: 1s\n")]
    g = Gateway(tollgate, tmp_path, extra=extra)
    try:
        # Three 64 KiB pieces 1.5 s apart: each gap is past the upstream's 1 s,
        # within the route's hour.
        status, _, data = g.request("GET", "/api/backups/b.zip?size=196608&seconds=4.5",
                                    ip=g.fresh_ip())
        assert status == 200 and len(data) == 196608
        # client.max_body (32 MiB) holds elsewhere, not on /api/backups.
        def status_of_big_post(path):
            """The answer to a 33 MiB POST's head: a cap answers before the body."""
            conn = http.client.HTTPSConnection("127.0.0.1", g.https, context=g.ctx,
                                               timeout=20)
            conn.putrequest("POST", path, skip_host=True)
            conn.putheader("Host", "localhost")
            conn.putheader("Content-Length", str(33 << 20))
            conn.endheaders()
            r = conn.getresponse()
            conn.close()
            return r.status
        assert status_of_big_post("/api/collections/posts/records") == 413
        # Not on /api/backups: PocketBase itself answers (its superuser check).
        assert status_of_big_post("/api/backups/upload") == 401
        assert any(r.path == "/api/backups/upload" for r in g.stub.requests)
    finally:
        g.close()


def test_admin_api_reads_keys_as_enforcement_does(gateway):
    g = gateway
    for _ in range(3):
        g.request("POST", "/api/collections/users/auth-with-password",
                  body=login_body("a+b@example.com"), headers=JSON, ip=g.fresh_ip())
    # '+' in a path is a plus, not a space.
    status, data = g.admin_get("/ratelimit/auth_failures/a+b@example.com")
    assert status == 200 and json.loads(data)["remaining"] == 7
    status, data = g.admin_get("/ratelimit/auth_failures/A%2BB@Example.com")
    assert json.loads(data)["remaining"] == 7
    # A key that holds nothing says so, with a full bucket and nothing to wait for.
    status, data = g.admin_get("/ratelimit/auth_failures/nobody@example.com")
    doc = json.loads(data)
    assert doc["state"] == "none" and doc["remaining"] == 10 and doc["reset_seconds"] == 0
    status, data = g.admin_get("/ratelimit/auth/not-an-address")
    assert status == 400
    assert re.search(rb"address", data)
