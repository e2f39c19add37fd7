"""Strict-Transport-Security by default (issue 23, item 2): one year, for the
name only (no includeSubDomains), on HTTPS for public names served with a
certificate that is not self-signed; never for localhost, *.localhost, IP
literals, single-label names or the self-signed `make certs` pair. Over
HTTP/1.1 and HTTP/2, on proxied responses and on tollgate's own answers."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import free_port, status_of
from test_tls import PKI, backend_ok, https_get, run

HSTS = "max-age=31536000"


@pytest.fixture
def pki(tmp_path):
    return PKI(tmp_path)


def self_signed(tmp_path, name, sans):
    crt, key = str(tmp_path / (name + ".crt")), str(tmp_path / (name + ".key"))
    r = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=%s" % sans[0],
             "-addext", "subjectAltName=" + ",".join("DNS:" + s for s in sans)])
    assert r.returncode == 0, r.stderr
    return crt, key


def config(port, backend_port, certs, headers=""):
    certs_yaml = "".join("    - cert: %s\n      key: %s\n" % c for c in certs)
    return """
workers: 1
listen:
  - address: 127.0.0.1:%d
    tls: true
tls:
  certificates:
%s
admin: {listen: "off"}
upstreams:
  app: {servers: [127.0.0.1:%d]}
%s
sites:
  - hosts: ["*"]
    routes:
      - {path: /local/, upstream: app, allow: [10.0.0.0/8]}
      - {path: /, upstream: app}
""" % (port, certs_yaml, backend_port, headers)


def hsts_of(out):
    head = out.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    found = re.findall(r"(?im)^strict-transport-security:\s*(.*?)\s*$", head)
    assert len(found) <= 1, head
    return found[0] if found else None


@pytest.fixture
def ca_gateway(tollgate, backend, pki):
    """A certificate from a CA for a public name (and the others, so SNI
    finds it), and a catch-all site."""
    b = backend(backend_ok)
    port = free_port()
    crt = pki.leaf("app", ["app.example.com", "localhost", "app.localhost", "intranet",
                           "127.0.0.1"])
    tollgate(config(port, b.port, [crt]))
    return port


def test_public_name_gets_one_year_without_subdomains(ca_gateway, pki):
    # Issue 23: the default was "max-age=63072000; includeSubDomains".
    port = ca_gateway
    out, _, _ = https_get(port, "app.example.com", servername="app.example.com", ca=pki.ca)
    assert status_of(out) == 200
    assert hsts_of(out) == HSTS
    # tollgate's own answers too (403 from the access rule).
    out, _, _ = https_get(port, "app.example.com", servername="app.example.com", ca=pki.ca,
                          path="/local/x")
    assert status_of(out) == 403
    assert hsts_of(out) == HSTS
    # The port in Host does not matter.
    out, _, _ = https_get(port, "app.example.com:%d" % port, servername="app.example.com",
                          ca=pki.ca)
    assert hsts_of(out) == HSTS


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:%(port)d", "app.localhost",
                                  "127.0.0.1", "127.0.0.1:%(port)d", "[::1]", "intranet"])
def test_never_for_local_names_and_addresses(ca_gateway, pki, host):
    # Issue 23: HSTS went out for localhost and IP literals (make run).
    port = ca_gateway
    out, _, _ = https_get(port, host % {"port": port}, servername=None)
    assert status_of(out) == 200, out[:200]
    assert hsts_of(out) is None
    out, _, _ = https_get(port, host % {"port": port}, servername=None, path="/local/")
    assert status_of(out) == 403
    assert hsts_of(out) is None


def test_never_with_a_self_signed_certificate(tollgate, backend, tmp_path):
    # Issue 23: a self-signed pair (as `make certs` writes) got HSTS too.
    b = backend(backend_ok)
    port = free_port()
    tollgate(config(port, b.port, [self_signed(tmp_path, "ss", ["app.example.com"])]))
    for path, status in (("/", 200), ("/local/", 403)):
        out, _, _ = https_get(port, "app.example.com", servername="app.example.com", path=path)
        assert status_of(out) == status
        assert hsts_of(out) is None


def test_make_certs_pair_on_localhost(tollgate, backend):
    """The shipped `make run` setup: no HSTS at all."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    crt = os.path.join(root, "conf/certs/localhost.crt")
    key = os.path.join(root, "conf/certs/localhost.key")
    assert os.path.exists(crt), "no conf/certs/localhost.crt: `make integration-run` makes it"
    b = backend(backend_ok)
    port = free_port()
    tollgate(config(port, b.port, [(crt, key)]))
    for host in ("localhost", "127.0.0.1"):
        out, _, _ = https_get(port, host, servername="localhost")
        assert status_of(out) == 200
        assert hsts_of(out) is None


def test_configured_value_is_sent_as_written(tollgate, backend, pki):
    b = backend(backend_ok)
    port = free_port()
    crt = pki.leaf("app", ["app.example.com"])
    tollgate(config(port, b.port, [crt],
                    headers='headers: {hsts: "max-age=600; includeSubDomains"}'))
    out, _, _ = https_get(port, "app.example.com", servername="app.example.com", ca=pki.ca)
    assert hsts_of(out) == "max-age=600; includeSubDomains"
    out, _, _ = https_get(port, "localhost", servername=None)
    assert hsts_of(out) is None


def test_http2_follows_the_same_rule(ca_gateway, pki):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    port = ca_gateway
    for host, want in (("app.example.com", HSTS), ("localhost", None)):
        p = subprocess.run(["curl", "-s", "-i", "--http2", "--cacert", pki.ca, "--resolve",
                            "%s:%d:127.0.0.1" % (host, port), "https://%s:%d/" % (host, port)],
                           capture_output=True, timeout=30)
        out = p.stdout
        assert out.startswith(b"HTTP/2 200"), out[:200]
        assert hsts_of(out) == want


def test_resumed_session_keeps_the_verdict(tollgate, backend, pki, tmp_path):
    """A resumed session does not say which certificate it was made with:
    HSTS still follows the name's certificates."""
    import ssl
    b = backend(backend_ok)
    port = free_port()
    crt = pki.leaf("app", ["app.example.com"])
    ss = self_signed(tmp_path, "lab", ["lab.example.com"])
    tollgate(config(port, b.port, [crt, ss]))
    for name, want in (("app.example.com", HSTS), ("lab.example.com", None)):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        out, sess, reused = https_get(port, name, servername=name, ctx=ctx)
        assert hsts_of(out) == want and not reused
        out, _, reused = https_get(port, name, servername=name, ctx=ctx, session=sess)
        assert reused, "the session was not resumed"
        assert status_of(out) == 200 and hsts_of(out) == want
