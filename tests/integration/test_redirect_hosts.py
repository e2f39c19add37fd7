"""The HTTPS redirect only for the names we serve (issue 23, item 3): a
`redirect_to_https` listener reflected any Host into its Location
(`Host: evil.example` -> `https://evil.example:8443/x`). Now a Host is
matched as routing matches it (names, wildcards, `{tenant}` labels, "*",
an active tenant's custom domain, static or looked up in Redis); any other
gets the 404 routing gives, a missing or malformed one 400."""

import re

import pytest

from conftest import free_port, raw, status_of

CONFIG = """
workers: 1
listen:
  - address: 127.0.0.1:%(port)d
    redirect_to_https: 8443
admin: {listen: "off"}
upstreams: {app: {servers: [127.0.0.1:%(backend)d]}}
tenants:
%(directory)s
  static:
    acme: {servers: [127.0.0.1:%(backend)d]}
    gone: {servers: [127.0.0.1:%(backend)d], status: suspended}
  domains: {shop.example.net: acme, old.example.net: gone}
sites:
  - hosts: [app.example.com, "*.w.example.com", 127.0.0.1]
    routes: [{path: /, upstream: app}]
  - hosts: ["{tenant}.plat.test"]
    custom_domains: true
    routes: [{path: /, upstream: $tenant}]
"""


def ask(port, host, target=b"/x?y=1", version=b"1.1"):
    head = b"GET " + target + b" HTTP/" + version + b"\r\n"
    if host is not None:
        head += b"Host: " + host.encode() + b"\r\n"
    resp = raw(port, head + b"Connection: close\r\n\r\n")
    m = re.search(rb"\r\nLocation: ([^\r]*)\r\n", resp.split(b"\r\n\r\n", 1)[0])
    return status_of(resp), (m.group(1).decode() if m else None), resp


@pytest.fixture
def gateway(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate(CONFIG % {"port": port, "backend": b.port, "directory": ""})
    return port, b


@pytest.mark.parametrize("host,location", [
    ("app.example.com", "https://app.example.com:8443/x?y=1"),
    ("APP.example.com:%(port)d", "https://APP.example.com:8443/x?y=1"),
    ("app.example.com.", "https://app.example.com.:8443/x?y=1"),
    ("a.b.w.example.com", "https://a.b.w.example.com:8443/x?y=1"),
    ("127.0.0.1:%(port)d", "https://127.0.0.1:8443/x?y=1"),
    # A {tenant} label is a site's name, as routing takes it (whether the
    # tenant exists is the HTTPS side's question).
    ("acme.plat.test", "https://acme.plat.test:8443/x?y=1"),
    ("nobody.plat.test", "https://nobody.plat.test:8443/x?y=1"),
    # An active tenant's custom domain.
    ("shop.example.net", "https://shop.example.net:8443/x?y=1"),
])
def test_our_names_are_redirected(gateway, host, location):
    port, b = gateway
    status, loc, _ = ask(port, host % {"port": port})
    assert (status, loc) == (308, location)
    assert b.requests == []


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8443", "example.com",
                                  "w.example.com", "app.example.com.evil.example",
                                  "plat.test", "unknown.example.net", "[::1]"])
def test_other_hosts_get_404_and_no_location(gateway, host):
    # Issue 23: these were 308 with Location: https://<host>:8443/x?y=1.
    port, b = gateway
    status, loc, resp = ask(port, host)
    assert (status, loc) == (404, None), resp
    assert b"evil" not in resp.split(b"\r\n\r\n", 1)[1]
    assert b.requests == []


def test_suspended_tenant_domain_is_not_redirected(gateway):
    port, _ = gateway
    status, loc, _ = ask(port, "old.example.net")
    assert (status, loc) == (403, None)


@pytest.mark.parametrize("host,version", [
    (None, b"1.0"),            # no Host at all
    ("a..b", b"1.1"),          # not a name
    (".app.example.com", b"1.1"),
    ("bad_label.plat.test", b"1.1"),  # a tenant label must be a DNS label
])
def test_invalid_host_gets_400(gateway, host, version):
    port, _ = gateway
    status, loc, resp = ask(port, host, version=version)
    assert (status, loc) == (400, None), resp


def test_custom_domain_looked_up_in_redis(tollgate, backend, redis):
    """With tenants in Redis the custom-domain look-up is asynchronous: the
    redirect waits for it, as routing does."""
    b = backend()
    port = free_port()
    tollgate(CONFIG % {"port": port, "backend": b.port,
                       "directory": '  directory: redis\n  redis: {address: "127.0.0.1:%d"}'
                       % redis.port})
    redis.cmd("HSET", "tollgate:tenant:blog", "servers", "127.0.0.1:%d" % b.port)
    redis.cmd("SET", "tollgate:tenant:host:blog.example.org", "blog")
    status, loc, _ = ask(port, "blog.example.org")
    assert (status, loc) == (308, "https://blog.example.org:8443/x?y=1")
    status, loc, _ = ask(port, "nobody.example.org")
    assert (status, loc) == (404, None)
    # The static ones still win.
    assert ask(port, "shop.example.net")[:2] == (308, "https://shop.example.net:8443/x?y=1")


def test_catch_all_site_still_redirects_everything(tollgate, backend):
    b = backend()
    port = free_port()
    tollgate("""
listen:
  - address: 127.0.0.1:%d
    redirect_to_https: 443
admin: {listen: "off"}
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: ["*"]
    routes: [{path: /, upstream: app}]
""" % (port, b.port))
    assert ask(port, "anything.example")[:2] == (308, "https://anything.example/x?y=1")


def test_explain_says_no_redirect_for_other_hosts(tmp_path):
    """`tollgate explain` runs the same phases."""
    import subprocess
    from conftest import BIN
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""
listen:
  - address: 127.0.0.1:18680
    redirect_to_https: 8443
admin: {listen: "off"}
upstreams: {app: {servers: [127.0.0.1:18681]}}
sites:
  - hosts: [app.example.com]
    routes: [{path: /, upstream: app}]
""")
    p = subprocess.run([BIN, "explain", "-c", str(cfg), "GET http://evil.example/x"],
                       capture_output=True, text=True, timeout=30)
    assert "answer:    404" in p.stdout + p.stderr, p.stdout + p.stderr
    p = subprocess.run([BIN, "explain", "-c", str(cfg), "GET http://app.example.com/x"],
                       capture_output=True, text=True, timeout=30)
    assert "https://app.example.com:8443/x" in p.stdout + p.stderr, p.stdout + p.stderr
