"""Issue 21, item 5: the live dashboard on the admin listener. The page is
self-contained (no URL leaves the admin listener) under a strict CSP,
answers only on the admin listener, and the token, the session cookie and
admin.allow/deny guard it as they guard every admin path; /dashboard.json
moves with traffic (status classes, rate-limit outcomes, latency, open SSE
streams); a real headless Chromium draws it while traffic runs; the Grafana
dashboard in conf/ names only metrics /metrics exports."""

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time

from conftest import ROOT, SLOW, free_port, get, read_http_request
from test_admin import parse_exposition
from test_browser import self_signed, start_chromium

TOKEN = "dashboard-token-0123456789"
PAGE_FILE = os.path.join(ROOT, "src", "dashboard.html")
GRAFANA_FILE = os.path.join(ROOT, "conf", "grafana-dashboard.json")


# ---- the backend and the gateway ---------------------------------------------


def app_backend(sock, be):
    """/events: an SSE stream (an event every 100 ms; ?n=N ends after N);
    /missing: 404; /healthz and anything else: 200. Keep-alive."""
    for head, headers, body in _requests(sock):
        path = head.split("\r\n")[0].split(" ")[1]
        be.record(path)
        if path.startswith("/events"):
            m = re.search(r"[?&]n=(\d+)", path)
            n = int(m.group(1)) if m else None
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            i = 0
            while n is None or i < n:  # forever: until the gateway goes (OSError)
                ev = b"id: %d\ndata: tick %d\n\n" % (i, i)
                sock.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                i += 1
                time.sleep(0.1)
            sock.sendall(b"0\r\n\r\n")
            continue
        status, payload = (b"404 Not Found", b"not here\n") if path == "/missing" else \
            (b"200 OK", b"backend page\n")
        sock.sendall(b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                     % (status, len(payload)) + payload)


def _requests(sock):
    rest = b""
    while True:
        r = read_http_request(sock, rest)
        if r is None:
            return
        head, headers, body, rest = r
        yield head, headers, body


def gateway_config(port, aport, backend_port, admin_extra="", extra="", workers=2):
    return """
workers: %d
listen:
  - address: 127.0.0.1:%d
%s
admin: {listen: 127.0.0.1:%d%s}
upstreams:
  app: {servers: [127.0.0.1:%d]}
rate_limit:
  policies:
    tight: {rate: 1/m, burst: 1, key: [ip]}
sites:
  - hosts: [app.test]
    routes:
      - {path: /limited, upstream: app, rate_limit: tight}
      - {path: /, upstream: app}
""" % (workers, port, extra, aport, admin_extra, backend_port)


def admin(aport, path, method="GET", token=None, cookie=None, source=None, body=None):
    """(status, headers, body) of one admin request; `source`: the client
    address to connect from."""
    c = http.client.HTTPConnection("127.0.0.1", aport, timeout=10 * SLOW,
                                   source_address=(source, 0) if source else None)
    h = {"Host": "admin"}
    if token:
        h["Authorization"] = "Bearer " + token
    if cookie:
        h["Cookie"] = cookie
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


def snapshot(aport, token=None):
    status, headers, body = admin(aport, "/dashboard.json", token=token)
    assert status == 200, (status, body)
    assert headers["content-type"] == "application/json", headers
    assert headers["cache-control"] == "no-store", headers
    return json.loads(body)


def wait_for(what, check, timeout=10.0):
    """Polls check() until it returns a true value; fails with `what` and
    the last value."""
    deadline = time.time() + timeout * SLOW
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError("%s: still %r" % (what, last))


# ---- the page ------------------------------------------------------------------


def inline_block(page, tag):
    start = page.index(b"<%s>" % tag) + len(tag) + 2
    return page[start:page.index(b"</%s>" % tag, start)]


def csp_hash(block):
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(block).digest()).decode()


def test_page_is_self_contained_under_a_strict_csp_on_the_admin_listener_only(tollgate, backend):
    b = backend(app_backend)
    port, aport = free_port(), free_port()
    tollgate(gateway_config(port, aport, b.port))
    with open(PAGE_FILE, "rb") as f:
        source = f.read()
    status, headers, page = admin(aport, "/dashboard")
    assert status == 200
    assert page == source  # the file, embedded byte for byte
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    # Nothing by URL: no scheme anywhere, and every src/href is in-page.
    text = page.decode()
    assert "http://" not in text and "https://" not in text
    refs = re.findall(r"""\b(?:src|href|action|poster|data)\s*=\s*["']?([^"'\s>]*)""", text)
    assert refs == ["data:,"], refs  # the favicon, so nothing asks for /favicon.ico
    assert "@import" not in text and "url(" not in text
    assert "<iframe" not in text and "<img" not in text and "<object" not in text
    # The policy: nothing from anywhere, the inline script and style by hash.
    csp = [d.strip() for d in headers["content-security-policy"].split(";")]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
    assert "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp, csp
    assert "script-src %s" % csp_hash(inline_block(page, b"script")) in csp, csp
    assert "style-src %s" % csp_hash(inline_block(page, b"style")) in csp, csp
    assert "unsafe-inline" not in headers["content-security-policy"]
    # "/" is the same page; HEAD has its head.
    assert admin(aport, "/")[2] == page
    # Without admin.token there is no session to make.
    assert admin(aport, "/dashboard/session", method="POST")[0] == 404
    status, headers_head, body = admin(aport, "/dashboard", method="HEAD")
    assert status == 200 and body == b"" and headers_head["content-length"] == str(len(page))
    # The public listener knows no dashboard: those paths go to the backend.
    for path in ("/dashboard", "/dashboard.json", "/dashboard/session"):
        status, h, body = get(port, path)
        assert status == 200 and body == b"backend page\n", (path, status, body)
        assert "content-security-policy" not in h
    assert "/dashboard.json" in b.requests


def test_token_and_session_cookie(tollgate, backend):
    b = backend(app_backend)
    port, aport = free_port(), free_port()
    tg = tollgate(gateway_config(port, aport, b.port, admin_extra=", token: " + TOKEN))
    paths = ("/", "/dashboard", "/dashboard.json")
    for path in paths:
        status, headers, body = admin(aport, path)
        assert status == 401, (path, status)
        assert headers["www-authenticate"] == "Bearer"
        assert b'"requests"' not in body  # the page asks for the token; no data
        assert admin(aport, path, token=TOKEN + "x")[0] == 401
        assert admin(aport, path, token=TOKEN)[0] == 200
    # The page that asks is the page, under its policy.
    status, headers, _ = admin(aport, "/dashboard")
    assert "script-src 'sha256-" in headers["content-security-policy"]

    # The token buys a session cookie, only in a header and only by POST.
    assert admin(aport, "/dashboard/session", method="POST")[0] == 401
    assert admin(aport, "/dashboard/session", method="POST", token="wrong" * 5)[0] == 401
    assert admin(aport, "/dashboard/session", token=TOKEN)[0] == 405
    status, headers, _ = admin(aport, "/dashboard/session", method="POST", token=TOKEN)
    assert status == 200
    set_cookie = headers["set-cookie"]
    attrs = [a.strip() for a in set_cookie.split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attrs), set_cookie
    cookie = attrs[0]
    name, _, value = cookie.partition("=")
    assert name == "tollgate_dashboard" and re.fullmatch(r"[0-9a-f]{64}", value), cookie
    assert TOKEN not in set_cookie

    # The cookie opens the dashboard's reads (among other cookies too) ...
    for path in paths:
        assert admin(aport, path, cookie=cookie)[0] == 200, path
    assert admin(aport, "/dashboard.json", cookie="a=b; " + cookie + "; c=d")[0] == 200
    # ... and nothing else: no other path, no write, no new session.
    assert admin(aport, "/metrics", cookie=cookie)[0] == 401
    assert admin(aport, "/status", cookie=cookie)[0] == 401
    assert admin(aport, "/ratelimit/tight/127.0.0.1", method="DELETE", cookie=cookie)[0] == 401
    assert admin(aport, "/dashboard/session", method="POST", cookie=cookie)[0] == 401
    # A cookie that is not the one, or a prefix of it, opens nothing.
    forged = "tollgate_dashboard=" + ("0" if value[0] != "0" else "1") + value[1:]
    assert admin(aport, "/dashboard.json", cookie=forged)[0] == 401
    assert admin(aport, "/dashboard.json", cookie=cookie[:-1])[0] == 401
    assert admin(aport, "/dashboard.json", cookie=cookie + "0")[0] == 401

    # A new token ends every session.
    tg.reload(gateway_config(port, aport, b.port, admin_extra=", token: " + TOKEN + "-new"))
    assert admin(aport, "/dashboard.json", cookie=cookie)[0] == 401
    assert admin(aport, "/dashboard.json", token=TOKEN + "-new")[0] == 200


def test_admin_allow_and_deny_refuse_every_path(tollgate, backend):
    """admin.allow/deny apply to the dashboard as to every admin path: a
    refused address gets 403 even with the right token."""
    b = backend(app_backend)
    port, aport = free_port(), free_port()
    tollgate(gateway_config(port, aport, b.port, admin_extra=", allow: [127.0.0.1/32]"))
    paths = ("/", "/dashboard", "/dashboard.json", "/metrics", "/status")
    for path in paths:
        assert admin(aport, path, source="127.0.0.2")[0] == 403, path
        assert admin(aport, path)[0] == 200, path
    assert admin(aport, "/dashboard/session", method="POST", source="127.0.0.2")[0] == 403

    port2, aport2 = free_port(), free_port()
    tollgate(gateway_config(port2, aport2, b.port,
                            admin_extra=", token: %s, deny: [127.0.0.2/32]" % TOKEN))
    for path in paths:
        status, _, body = admin(aport2, path, token=TOKEN, source="127.0.0.2")
        assert status == 403 and body == b"403 Forbidden\n", (path, status, body)
        assert admin(aport2, path, token=TOKEN)[0] == 200, path
        assert admin(aport2, path)[0] == 401, path
    assert admin(aport2, "/dashboard/session", method="POST", token=TOKEN,
                 source="127.0.0.2")[0] == 403


# ---- the snapshot ----------------------------------------------------------------


def test_snapshot_counters_move_with_traffic(tollgate, backend):
    b = backend(app_backend)
    port, aport = free_port(), free_port()
    tollgate(gateway_config(port, aport, b.port))
    before = snapshot(aport)
    assert before["version"] and before["workers"] == 2 and before["uptime_seconds"] >= 0
    assert before["tenants"] == []
    bounds = before["latency"]["bounds"]
    assert bounds == sorted(bounds) and len(before["latency"]["counts"]) == len(bounds) + 1
    ok, missing, limited_route = 7, 4, 5
    for _ in range(ok):
        assert get(port, "/")[0] == 200
    for _ in range(missing):
        assert get(port, "/missing")[0] == 404
    statuses = [get(port, "/limited")[0] for _ in range(limited_route)]
    assert statuses == [200] + [429] * (limited_route - 1), statuses
    limited = limited_route - 1

    # The admin listener's own requests (these snapshots) are counted
    # apart: each one fetched before is there by the time the next is taken.
    fetched = [0]

    def moved():
        after = snapshot(aport)
        fetched[0] += 1
        d2xx = after["requests"]["2xx"] - before["requests"]["2xx"]
        dadmin = after["admin_requests"] - before["admin_requests"]
        return after if d2xx == ok + 1 and dadmin == fetched[0] else None
    after = wait_for("2xx moved by the traffic, admin_requests by the snapshots", moved)
    req_a, req_b = after["requests"], before["requests"]
    assert req_a["4xx"] - req_b["4xx"] == missing + limited
    assert req_a["5xx"] == req_b["5xx"] and req_a["aborted"] == req_b["aborted"]
    assert req_a["total"] - req_b["total"] == ok + 1 + missing + limited
    assert req_a["total"] == sum(req_a[c] for c in ("aborted", "1xx", "2xx", "3xx", "4xx", "5xx"))
    # Every request is in the latency histogram once.
    lat = sum(after["latency"]["counts"]) - sum(before["latency"]["counts"])
    assert lat == req_a["total"] - req_b["total"]
    assert after["latency"]["sum_seconds"] > before["latency"]["sum_seconds"]
    assert after["bytes"]["received"] > before["bytes"]["received"]
    assert after["bytes"]["sent"] > before["bytes"]["sent"]
    rl_a, rl_b = after["ratelimit"], before["ratelimit"]
    assert rl_a["limited"] - rl_b["limited"] == limited
    assert rl_a["allowed"] - rl_b["allowed"] == 1
    (pol,) = rl_a["policies"]
    assert pol["policy"] == "tight" and pol["limited"] == rl_a["limited"]
    assert pol["allowed"] == rl_a["allowed"]
    assert after["now"] > before["now"]
    (up,) = after["upstreams"]
    assert up["name"] == "app" and up["servers"][0]["healthy"] is True
    assert up["servers"][0]["address"] == "127.0.0.1:%d" % b.port
    assert after["certificates"] == [] and after["sse_open"] == 0
    # /metrics has the admin listener's requests as a series of their own.
    m = parse_exposition(admin(aport, "/metrics")[2].decode())
    assert m['tollgate_requests_total{site="_admin",route="",code="2xx"}'] >= fetched[0] + 1


def open_stream(port, path="/events"):
    """An SSE request through the gateway, read up to its first event."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: app.test\r\nAccept: text/event-stream\r\n\r\n"
              % path.encode())
    buf = b""
    while b"data: tick" not in buf:
        chunk = s.recv(65536)
        assert chunk, buf
        buf += chunk
    assert b"text/event-stream" in buf.split(b"\r\n\r\n")[0]
    return s, buf


def sse_gauge(aport):
    m = parse_exposition(admin(aport, "/metrics")[2].decode())
    return m["tollgate_sse_streams_open"]


def test_open_sse_streams_counted_while_open(tollgate, backend):
    b = backend(app_backend)
    port, aport = free_port(), free_port()
    tollgate(gateway_config(port, aport, b.port))
    assert snapshot(aport)["sse_open"] == 0 and sse_gauge(aport) == 0
    # One held open: 1, in the snapshot and in /metrics.
    s1, _ = open_stream(port)
    wait_for("one open stream", lambda: snapshot(aport)["sse_open"] == 1)
    assert sse_gauge(aport) == 1
    # Two (on whichever workers took them: the sums agree).
    s2, _ = open_stream(port)
    wait_for("two open streams", lambda: snapshot(aport)["sse_open"] == 2)
    assert sse_gauge(aport) == 2
    # The client goes: counted out.
    s1.close()
    wait_for("one left", lambda: snapshot(aport)["sse_open"] == 1)
    s2.close()
    wait_for("none left", lambda: snapshot(aport)["sse_open"] == 0)
    assert sse_gauge(aport) == 0
    # A stream the backend ends: counted in, then out.
    s3, buf = open_stream(port, "/events?n=3")
    while not buf.endswith(b"0\r\n\r\n"):
        chunk = s3.recv(65536)
        assert chunk, buf
        buf += chunk
    wait_for("the ended stream counted out", lambda: snapshot(aport)["sse_open"] == 0)
    s3.close()
    # A plain answer is no stream.
    assert get(port, "/")[0] == 200
    assert snapshot(aport)["sse_open"] == 0


# ---- in a browser ------------------------------------------------------------------


def with_tenants(config, backend_port):
    """The config with two static tenants on the backend, routed by Host."""
    return config.replace("sites:\n", """tenants:
  static:
    acme: {servers: [127.0.0.1:%d]}
    globex: {servers: [127.0.0.1:%d]}
sites:
  - hosts: ["{tenant}.platform.test"]
    routes: [{path: /, upstream: $tenant}]
""" % (backend_port, backend_port))


def test_snapshot_lists_the_busiest_tenants(tollgate, backend):
    """Issue 21 (5): the top tenants come from the per-tenant counters."""
    b = backend(app_backend)
    port, aport = free_port(), free_port()
    tollgate(with_tenants(gateway_config(port, aport, b.port), b.port))
    for _ in range(5):
        assert get(port, "/", host="acme.platform.test")[0] == 200
    for _ in range(2):
        assert get(port, "/missing", host="globex.platform.test")[0] == 404
    snap = wait_for("both tenants listed",
                    lambda: (lambda s: s if len(s["tenants"]) == 2 else None)(snapshot(aport)))
    acme, globex = snap["tenants"]
    assert acme["tenant"] == "acme" and acme["requests"] == 5 and acme["errors"] == 0
    assert globex["tenant"] == "globex" and globex["requests"] == 2
    assert acme["in_flight"] == 0 and acme["rps"] is None


def browser_config(port, tls_port, aport, backend_port, dead_port, crt, key, admin_extra=""):
    return gateway_config(
        port, aport, backend_port, admin_extra=admin_extra,
        extra="""  - address: 127.0.0.1:%d
    tls: true
tls:
  certificates:
    - {cert: %s, key: %s}
""" % (tls_port, crt, key)).replace(
        "upstreams:\n", """upstreams:
  gone:
    servers: [127.0.0.1:%d]
    health_check: {path: /healthz, interval: 200ms, timeout: 100ms, fails: 1, passes: 1}
""" % dead_port)


def chromium_with_console(log_path):
    assert shutil.which("chromium") or os.path.exists("/usr/bin/chromium"), \
        "chromium (tools/packages: chromium, chromium-driver, python3-selenium) is missing"
    return start_chromium(log_path, console=True)


def severe_console_entries(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


# What the page shows, read in one script: the page redraws its tables on
# every poll, and a script runs between two redraws, never during one.
READ_PAGE = """
const text = (id) => document.getElementById(id).textContent;
const rows = (id) => Array.from(document.querySelectorAll('#' + id + ' tr')).map((tr) => ({
  cls: tr.className, text: tr.textContent, data: Object.assign({}, tr.dataset),
  cells: Array.from(tr.children).map((td) => td.textContent)}));
const ids = ['state', 'version', 'rps', 'rl-limited', 'rl-limited-total', 'rate-4xx',
             'sse-open', 'connections', 'p50', 'p99'];
const out = {rows: {upstreams: rows('upstreams'), certs: rows('certs'), tenants: rows('tenants')},
             spark: document.getElementById('rps-line').getAttribute('points').split(' ')
                      .filter((p) => p).length};
for (const id of ids) out[id] = text(id);
return out;
"""


def read_page(driver):
    return driver.execute_script(READ_PAGE)


def number(page, element_id):
    try:
        return float(page[element_id].replace(",", ""))
    except ValueError:
        return None


def test_dashboard_in_headless_chromium(tollgate, backend, tmp_path):
    b = backend(app_backend)
    crt, key = self_signed(tmp_path)  # two days left: the page warns
    port, tls_port, aport, dead_port = free_port(), free_port(), free_port(), free_port()
    tollgate(with_tenants(browser_config(port, tls_port, aport, b.port, dead_port, crt, key),
                          b.port))
    driver = chromium_with_console(str(tmp_path / "chromedriver.log"))
    stop = threading.Event()
    sent = {"n": 0}

    def traffic():
        # Bounded: stops when the test is done, or after 60 s at most.
        end = time.time() + 60
        while not stop.is_set() and time.time() < end:
            for path, host in (("/", "app.test"), ("/", "app.test"), ("/missing", "app.test"),
                               ("/limited", "app.test"), ("/", "acme.platform.test"),
                               ("/", "acme.platform.test"), ("/", "globex.platform.test")):
                try:
                    get(port, path, host=host, timeout=5)
                    sent["n"] += 1
                except OSError:
                    pass
            time.sleep(0.02)

    def shown(page):
        health = {(r["data"].get("upstream"), r["data"].get("healthy"), r["cls"])
                  for r in page["rows"]["upstreams"]}
        certs = page["rows"]["certs"]
        return (page["state"] == "live" and (number(page, "rps") or 0) >= 5
                and (number(page, "rl-limited-total") or 0) > 0
                and (number(page, "rate-4xx") or 0) > 0
                and ("app", "true", "up") in health and ("gone", "false", "down") in health
                and len(certs) == 1 and "warn" in certs[0]["cls"].split()
                and number(page, "sse-open") == 1 and page["p99"].endswith("ms")
                and page["spark"] >= 3
                and [r["cells"][0] for r in page["rows"]["tenants"]][:2] == ["acme", "globex"])

    t = threading.Thread(target=traffic, daemon=True)
    stream = None
    try:
        driver.get("http://localhost:%d/dashboard" % aport)  # the only name it resolves
        t.start()
        stream, _ = open_stream(port)
        deadline = time.time() + 30 * SLOW
        page = read_page(driver)
        while not shown(page) and time.time() < deadline:
            time.sleep(0.25)
            page = read_page(driver)
        driver.set_window_size(1280, 1500)  # the whole page in the picture
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        assert shown(page), "the page did not show the traffic: %r" % (page,)
        assert os.path.getsize(str(tmp_path / "dashboard.png")) > 10000

        cert = page["rows"]["certs"][0]
        assert 0 < float(cert["data"]["daysLeft"]) <= 2.01, cert
        assert "localhost" in cert["text"]
        assert number(page, "rl-limited") is not None and number(page, "connections") >= 1
        assert page["version"] == snapshot(aport)["version"]
        top = page["rows"]["tenants"][0]["cells"]  # tenant, req/s, requests, errors
        assert top[0] == "acme" and float(top[1]) > 0, top
        # The stream goes: the page follows.
        stream.close()
        stream = None
        deadline = time.time() + 10 * SLOW
        while number(read_page(driver), "sse-open") != 0 and time.time() < deadline:
            time.sleep(0.2)
        assert number(read_page(driver), "sse-open") == 0
        assert severe_console_entries(driver) == []
    finally:
        stop.set()
        if stream is not None:
            stream.close()
        driver.quit()
        if t.ident is not None:
            t.join(timeout=10)
    assert sent["n"] > 20


def test_token_login_in_headless_chromium(tollgate, backend, tmp_path):
    """With admin.token, the page asks for it, trades it for the session
    cookie (which script cannot read) and then shows the snapshot."""
    b = backend(app_backend)
    port, aport = free_port(), free_port()
    tollgate(gateway_config(port, aport, b.port, admin_extra=", token: " + TOKEN))
    driver = chromium_with_console(str(tmp_path / "chromedriver.log"))
    try:
        driver.get("http://localhost:%d/" % aport)
        login = driver.find_element("id", "login")
        wait_for("the token form", lambda: login.is_displayed())
        assert not driver.find_element("id", "main").is_displayed()
        field = driver.find_element("id", "token")
        field.send_keys("not-the-token-at-all")
        button = driver.find_element("css selector", "#login-form button")
        button.click()
        wait_for("the refusal", lambda: driver.find_element("id", "login-error").text == "wrong token")
        field.clear()
        field.send_keys(TOKEN)
        button.click()
        wait_for("the live page", lambda: driver.find_element("id", "state").text == "live")
        assert not login.is_displayed()
        wait_for("a rate", lambda: number(read_page(driver), "rps") is not None)
        assert driver.execute_script("return document.cookie") == ""
        driver.set_window_size(1280, 1500)
        driver.save_screenshot(str(tmp_path / "dashboard-login.png"))
        # The only errors are the 401s before the token was given (the page,
        # its first poll, the wrong token).
        for e in severe_console_entries(driver):
            assert "401" in e["message"], e
    finally:
        driver.quit()


# ---- Grafana ---------------------------------------------------------------------------


def grafana_expressions(node):
    """Every PromQL expression in a dashboard: targets' expr and the
    template variables' queries."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "definition") and isinstance(v, str):
                out.append(v)
            else:
                out.extend(grafana_expressions(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(grafana_expressions(v))
    return out


def test_grafana_dashboard_names_only_exported_metrics(tollgate, backend, tmp_path):
    with open(GRAFANA_FILE) as f:
        dash = json.load(f)
    assert 36 <= dash["schemaVersion"] <= 41
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
    exprs = grafana_expressions(dash)
    names = set()
    for e in exprs:
        names.update(re.findall(r"\b(tollgate_[a-zA-Z0-9_]+)", e))
    # The list: status classes, latency quantiles, rate limits,
    # upstream errors, cache hit ratio, TLS handshakes.
    for wanted in ("tollgate_requests_total", "tollgate_request_duration_seconds_bucket",
                   "tollgate_ratelimit_decisions_total", "tollgate_upstream_connect_errors_total",
                   "tollgate_cache_hits_total", "tollgate_cache_misses_total",
                   "tollgate_tls_handshakes_total", "tollgate_sse_streams_open"):
        assert wanted in names, wanted

    # A running gateway's /metrics has every family (by its TYPE line).
    b = backend(app_backend)
    port, aport = free_port(), free_port()
    tollgate(gateway_config(port, aport, b.port))
    get(port, "/")
    text = admin(aport, "/metrics")[2].decode()
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    kinds = dict(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    for name in sorted(names):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in families or (base != name and kinds.get(base) == "histogram"), \
            "%s is not in /metrics" % name

    # Every expression parses as PromQL (promtool, with Grafana's
    # variables replaced by what they expand to).
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus, tools/packages) is missing"
    rules = tmp_path / "rules.yml"
    lines = ["groups:", "  - name: grafana", "    rules:"]
    for i, e in enumerate(x for x in exprs if not x.startswith("label_values(")):
        e = e.replace("$__rate_interval", "1m").replace("$instance", ".*")
        lines.append("      - record: grafana:expr_%d" % i)
        lines.append("        expr: %s" % json.dumps(e))
    rules.write_text("\n".join(lines) + "\n")
    r = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
