"""Client identity (trusted proxies, Forwarded, PROXY protocol v1/v2),
security headers, IP and country access rules with the GeoIP test databases
tests/geoip/mmdb_writer.py writes (the geoip_dbs fixture), and the
encoded-path bypass matrix."""

import os
import re
import shutil
import socket
import struct
import time

import pytest

from conftest import (GEOIP_DIR, basic_config, free_port, get, raw, read_http_request,
                      run_tollgate_check, status_of, requests_on)

COUNTRY_DB = os.path.join(GEOIP_DIR, "GeoLite2-Country-Test.mmdb")
ASN_DB = os.path.join(GEOIP_DIR, "GeoLite2-ASN-Test.mmdb")
BROKEN_DBS = [os.path.join(GEOIP_DIR, n) for n in (
    "GeoIP2-City-Test-Invalid-Node-Count.mmdb", "GeoIP2-City-Test-Broken-Double-Format.mmdb")]


def headers_seen(b, i=-1):
    return b.requests[i][1]


# ---- client identity ----------------------------------------------------------


def test_untrusted_peer_cannot_spoof(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    get(port, "/", headers={"X-Forwarded-For": "1.2.3.4", "X-Real-IP": "1.2.3.4",
                            "Forwarded": "for=1.2.3.4"})
    h = headers_seen(b)
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-real-ip"] == ["127.0.0.1"]
    assert "forwarded" not in h


def test_trusted_peer_rightmost_untrusted(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="trusted_proxies: [127.0.0.0/8, 10.0.0.0/8]\n"))
    get(port, "/", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.1.2.3"})
    h = headers_seen(b)
    assert h["x-real-ip"] == ["203.0.113.9"]  # 10.1.2.3 is a trusted hop
    # The backend gets the chain from the client as identified: what was
    # written left of it (6.6.6.6, anyone's claim) is not passed on, so a
    # backend reading the left-most address sees the same client.
    assert h["x-forwarded-for"] == ["203.0.113.9, 10.1.2.3, 127.0.0.1"]
    get(port, "/", headers={"Forwarded": 'for="[2001:db8::7]:4711";proto=https, for=10.0.0.5'})
    h = headers_seen(b)
    assert h["x-real-ip"] == ["2001:db8::7"]
    assert h["x-forwarded-for"] == ["2001:db8::7, 10.0.0.5, 127.0.0.1"]
    assert "forwarded" not in h
    get(port, "/")
    assert headers_seen(b)["x-real-ip"] == ["127.0.0.1"]


def test_every_forwarded_line_is_read(tollgate, backend):
    """Regression: only the first 16 X-Forwarded-For lines were read, so 16 forged
    lines before the balancer's own chose the client."""
    b = backend()
    port = free_port()
    tollgate(basic_config(port, [b.port], extra="trusted_proxies: [127.0.0.0/8, 10.0.0.0/8]\n"))
    lines = b"".join(b"X-Forwarded-For: 10.0.0.%d\r\n" % i for i in range(1, 21))
    resp = raw(port, b"GET / HTTP/1.1\r\nHost: app.test\r\n" + lines +
               b"X-Forwarded-For: 198.51.100.60\r\nConnection: close\r\n\r\n")
    assert status_of(resp) == 200
    assert headers_seen(b)["x-real-ip"] == ["198.51.100.60"]


def test_xff_and_forwarded_follow_one_rule(tollgate, backend):
    b = backend()
    port = free_port()
    base = basic_config(port, [b.port], extra="trusted_proxies: [127.0.0.0/8]\n")
    tg = tollgate(base)
    # Both present and naming different clients: one is forged, nothing says which.
    status, _, _ = get(port, "/", headers={"X-Forwarded-For": "10.9.9.9",
                                            "Forwarded": "for=198.51.100.5"})
    assert status == 400
    # Both agreeing: fine.
    assert get(port, "/", headers={"X-Forwarded-For": "198.51.100.5",
                                   "Forwarded": "for=198.51.100.5"})[0] == 200
    # A balancer that writes only Forwarded: client_ip_header says so, and the
    # client's own X-Forwarded-For is neither believed nor passed on.
    tg.reload(base + "client_ip_header: forwarded\n")
    assert get(port, "/", headers={"X-Forwarded-For": "10.9.9.9",
                                   "Forwarded": "for=198.51.100.6"})[0] == 200
    h = headers_seen(b)
    assert h["x-real-ip"] == ["198.51.100.6"]
    assert h["x-forwarded-for"] == ["198.51.100.6, 127.0.0.1"]


def test_private_only_route_warns_about_an_unlisted_proxy(tollgate, backend):
    """A reverse proxy on a private address in front, trusted_proxies empty: the
    private-only rule sees the proxy, not the client. Said once per peer, counted."""
    b = backend()
    port = free_port()
    admin = free_port()
    tg = tollgate("""
listen: [127.0.0.1:%d]
admin: {listen: 127.0.0.1:%d}
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: [app.test]
    routes:
      - {path: /_/, upstream: app, allow: [private]}
      - {path: /, upstream: app}
""" % (port, admin, b.port))
    for _ in range(3):
        assert get(port, "/_/", headers={"X-Forwarded-For": "203.0.113.9"})[0] == 200
    get(port, "/", headers={"X-Forwarded-For": "203.0.113.9"})
    time.sleep(0.2)
    assert tg.stderr().count("list it in trusted_proxies") == 1
    metrics = get(admin, "/metrics")[2].decode()
    assert "tollgate_forwarded_untrusted_total 3" in metrics


def proxy_v2(src, dst, sport, dport, family=socket.AF_INET):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    if family == socket.AF_INET:
        addrs = socket.inet_pton(family, src) + socket.inet_pton(family, dst) + struct.pack("!HH", sport, dport)
        fam = 0x11
    else:
        addrs = socket.inet_pton(family, src) + socket.inet_pton(family, dst) + struct.pack("!HH", sport, dport)
        fam = 0x21
    return sig + bytes([0x21, fam]) + struct.pack("!H", len(addrs)) + addrs


def test_proxy_protocol_v1_and_v2(tollgate, backend):
    b = backend()
    port = free_port()
    cfg = basic_config(port, [b.port], extra="trusted_proxies: [127.0.0.1/32]\n").replace(
        "  - address: 127.0.0.1:%d\n" % port,
        "  - address: 127.0.0.1:%d\n    proxy_protocol: true\n" % port)
    tollgate(cfg)
    req = b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
    resp = raw(port, b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n" + req)
    assert status_of(resp) == 200
    assert headers_seen(b)["x-real-ip"] == ["198.51.100.7"]
    resp = raw(port, proxy_v2("2001:db8::99", "2001:db8::1", 5000, 443, socket.AF_INET6) + req)
    assert status_of(resp) == 200
    assert headers_seen(b)["x-real-ip"] == ["2001:db8::99"]
    # The header may arrive in pieces.
    s = socket.create_connection(("127.0.0.1", port))
    for piece in (b"PROXY TCP4 198.51.100", b".8 127.0.0.1 1 2\r", b"\n", req):
        s.sendall(piece)
        time.sleep(0.05)
    s.settimeout(5)
    assert status_of(s.recv(4096)) == 200
    s.close()
    assert headers_seen(b)["x-real-ip"] == ["198.51.100.8"]
    n = len(b.requests)
    for bad in (b"GET / HTTP/1.1\r\n\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
                b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c" + b"\x00" * 12):
        assert raw(port, bad + req) == b""
    assert len(b.requests) == n


def test_proxy_protocol_then_tls(tollgate, backend, tmp_path):
    import ssl
    import subprocess
    b = backend()
    port = free_port()
    key, crt = str(tmp_path / "k.pem"), str(tmp_path / "c.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", crt, "-subj", "/CN=app.test",
                    "-addext", "subjectAltName=DNS:app.test"], capture_output=True, check=True)
    tollgate("""
listen:
  - address: 127.0.0.1:%d
    proxy_protocol: true
    tls: true
tls: {certificates: [{cert: %s, key: %s}]}
trusted_proxies: [127.0.0.1/32]
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites: [{hosts: [app.test], routes: [{path: /, upstream: app}]}]
""" % (port, crt, key, b.port))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"PROXY TCP4 192.0.2.77 127.0.0.1 1234 443\r\n")
    ctx = ssl.create_default_context(cafile=crt)
    t = ctx.wrap_socket(s, server_hostname="app.test")
    t.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert status_of(t.recv(4096)) == 200
    t.close()
    assert headers_seen(b)["x-real-ip"] == ["192.0.2.77"]


# ---- security headers ------------------------------------------------------------


def backend_with_headers(extra):
    def handler(sock, be):
        for head, headers, body in requests_on(sock):
            be.record((head, headers, body))
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + extra + b"\r\nok")
    return handler


def test_default_security_headers(tollgate, backend):
    b = backend(backend_with_headers(b"Server: gunicorn\r\nX-Powered-By: PHP\r\n"))
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    status, h, _ = get(port, "/")
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "strict-origin-when-cross-origin"
    assert "strict-transport-security" not in h  # plain HTTP: no HSTS
    assert "server" not in h and "x-powered-by" not in h
    assert "content-security-policy" not in h
    # Local answers carry them too.
    status, h, _ = get(port, "/", host="nowhere.test")
    assert status == 404 and h["x-frame-options"] == "DENY"


def test_headers_configured_overridden_removed(tollgate, backend):
    b = backend(backend_with_headers(b"X-Frame-Options: SAMEORIGIN\r\nX-App: 1\r\n"))
    port = free_port()
    tollgate("""
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:%d]}}
headers:
  content_security_policy: "default-src 'self'"
  permissions_policy: "camera=()"
  add: {X-Gateway: tollgate}
  remove: [X-App]
  request:
    set: {X-Env: prod}
    remove: [X-Debug]
sites:
  - hosts: [app.test]
    headers:
      referrer_policy: false
    routes:
      - path: /strict
        upstream: app
        headers: {override: true, frame_options: DENY}
      - path: /
        upstream: app
""" % (port, b.port))
    status, h, _ = get(port, "/", headers={"X-Debug": "1", "X-Env": "dev"})
    assert h["content-security-policy"] == "default-src 'self'"
    assert h["permissions-policy"] == "camera=()"
    assert h["x-gateway"] == "tollgate"
    assert "x-app" not in h
    assert "referrer-policy" not in h  # removed for this site
    assert h["x-frame-options"] == "SAMEORIGIN"  # the backend's value is kept...
    seen = headers_seen(b)
    assert seen["x-env"] == ["prod"] and "x-debug" not in seen
    status, h, _ = get(port, "/strict")
    assert h["x-frame-options"] == "DENY"  # ... unless the config says override


# ---- access rules and GeoIP ---------------------------------------------------------


def test_admin_path_private_only_and_bypass_matrix(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate("""
listen: [127.0.0.1:%d]
trusted_proxies: [127.0.0.1/32]
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: [app.test]
    routes:
      - path: /_/
        upstream: app
        allow: [private]
      - path: /
        upstream: app
""" % (port, b.port))
    public = {"X-Forwarded-For": "203.0.113.50"}
    assert get(port, "/_/", headers={"X-Forwarded-For": "10.2.3.4"})[0] == 200
    assert get(port, "/_/", headers={"X-Forwarded-For": "192.168.1.1"})[0] == 200
    assert get(port, "/_/", headers={"X-Forwarded-For": "fd00::1"})[0] == 200
    assert get(port, "/_/")[0] == 200  # loopback
    n = len(b.requests)
    for path in ("/_/", "/%5F/", "/%5f/", "/./_/", "/api/../_/", "//_/", "/_/./", "/x/..//_/",
                 "/%2e/_/", "/%2E%2E/_/", "/_/%2e%2e/_/", "/_/a/../b"):
        status = get(port, path, headers=public)[0]
        assert status == 403, path
    for path in ("/_%2F", "/_%2f", "/%5F%2F", "/_/%00", "/_\\"):
        status = status_of(raw(port, b"GET %s HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: "
                                     b"203.0.113.50\r\nConnection: close\r\n\r\n" % path.encode()))
        assert status == 400, path
    assert len(b.requests) == n  # nothing reached the backend as an admin path
    assert get(port, "/_", headers=public)[0] == 200  # not the admin prefix


def test_deny_rules_ipv4_ipv6(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate("""
listen: [127.0.0.1:%d]
trusted_proxies: [127.0.0.1/32]
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: [app.test]
    deny: [198.51.100.0/24, "2001:db8:bad::/48"]
    routes:
      - path: /
        upstream: app
        allow: [198.51.100.7/32, 0.0.0.0/0, "::/0"]
""" % (port, b.port))
    xff = lambda ip: {"X-Forwarded-For": ip}
    assert get(port, "/", headers=xff("198.51.100.9"))[0] == 403
    assert get(port, "/", headers=xff("198.51.100.7"))[0] == 403  # the site denies first
    assert get(port, "/", headers=xff("2001:db8:bad::1"))[0] == 403
    assert get(port, "/", headers=xff("2001:db8:900d::1"))[0] == 200
    status, _, body = get(port, "/", headers=xff("198.51.100.1"))
    assert status == 403 and len(body) < 40


@pytest.mark.usefixtures("geoip_dbs")
def test_geoip_header_and_country_rules(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate("""
listen: [127.0.0.1:%d]
trusted_proxies: [127.0.0.1/32]
geoip: {database: %s, asn_database: %s}
log: {access_flush: 100ms}
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: [app.test]
    routes:
      - path: /eu
        upstream: app
        allow_countries: [GB, se]
      - path: /nobt
        upstream: app
        deny_countries: [BT]
        deny_asns: [AS209]
      - path: /
        upstream: app
""" % (port, COUNTRY_DB, ASN_DB, b.port))
    cases = {"81.2.69.142": "GB", "216.160.83.56": "US", "89.160.20.112": "SE",
             "67.43.156.1": "BT", "2001:218::1": "JP", "10.0.0.1": "XX"}
    for ip, cc in cases.items():
        assert get(port, "/", headers={"X-Forwarded-For": ip, "X-Geo-Country": "ZZ"})[0] == 200
        assert headers_seen(b)["x-geo-country"] == [cc], ip
        expect_eu = 200 if cc in ("GB", "SE") else 403
        assert get(port, "/eu", headers={"X-Forwarded-For": ip})[0] == expect_eu, ip
    assert get(port, "/nobt", headers={"X-Forwarded-For": "67.43.156.1"})[0] == 403
    assert get(port, "/nobt", headers={"X-Forwarded-For": "216.160.83.56"})[0] == 403  # AS209
    assert get(port, "/nobt", headers={"X-Forwarded-For": "81.2.69.142"})[0] == 200


@pytest.mark.usefixtures("geoip_dbs")
def test_broken_geoip_refused_at_start_and_reload(tollgate, backend, tmp_path):
    for db in BROKEN_DBS:
        rc, out, _ = run_tollgate_check(basic_config(18, [19], extra="geoip: {database: %s}\n" % db),
                                        tmp_path)
        assert rc == 1 and os.path.basename(db) in out and re.search(r"check\.yaml:\d+:\d+:", out)
    b = backend()
    port = free_port()
    live = str(tmp_path / "country.mmdb")
    shutil.copy(COUNTRY_DB, live)
    cfg = basic_config(port, [b.port], extra="trusted_proxies: [127.0.0.1/32]\ngeoip: {database: %s}\n" % live)
    tg = tollgate(cfg)
    # Replaced the way geoipupdate does it: a new file renamed over the old.
    shutil.copy(BROKEN_DBS[0], live + ".new")
    os.replace(live + ".new", live)
    tg.reload(expect_ok=False)
    assert "invalid MaxMind DB" in tg.stderr() or "country.mmdb" in tg.stderr()
    get(port, "/", headers={"X-Forwarded-For": "81.2.69.142"})
    assert headers_seen(b)["x-geo-country"] == ["GB"]  # the old database serves on


def test_response_splitting_from_backend_is_502(tollgate, backend):
    def evil(sock, be):
        read_http_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok")
    b = backend(evil)
    port = free_port()
    tollgate(basic_config(port, [b.port]))
    assert get(port, "/")[0] == 502
