"""A real browser (headless Chromium through chromedriver and Selenium)
loads a page through tollgate over HTTPS that opens 12 EventSource streams
on one origin and, once they run, makes 5 fetches. Over HTTP/2 every stream gets its
events and every fetch answers; over an `http2: false` listener the same
page stalls on the browser's six connections per origin (issue 18: what
HTTP/2 fixes for PocketBase's realtime subscriptions)."""

import json
import os
import re
import subprocess
import time

import pytest

from conftest import SLOW, free_port, requests_on

STREAMS = 12
FETCHES = 5
# How long the page gets to show everything live over HTTP/2, and how long
# the HTTP/1.1 page is watched stalling.
WINDOW = 4.0 * SLOW

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>tollgate h2</title></head>
<body><pre id="state"></pre>
<script>
window.tg = {events: [], fetched: [], errors: [], proto: "", fetchesSent: false};
// The fetches go out once the streams run (as an app's calls follow its
// realtime subscriptions): a moment after the first event.
let fetching = false;
function fetchSoon() {
  if (fetching) return;
  fetching = true;
  setTimeout(() => {
    tg.fetchesSent = true;
    for (let n = 0; n < %(fetches)d; n++) {
      fetch('/api/' + n)
        .then(r => r.json())
        .then(j => { tg.fetched.push(j.n); })
        .catch(e => { tg.errors.push(String(e)); });
    }
  }, 300);
}
for (let i = 0; i < %(streams)d; i++) {
  tg.events.push(0);
  const es = new EventSource('/events');
  es.onmessage = () => { tg.events[i]++; fetchSoon(); };
}
const nav = performance.getEntriesByType('navigation')[0];
tg.proto = nav ? nav.nextHopProtocol : '';
setInterval(() => {
  document.getElementById('state').textContent = JSON.stringify(tg);
}, 100);
</script></body></html>
""" % {b"streams": STREAMS, b"fetches": FETCHES}


def site_backend(sock, be):
    """GET / (the page), /events (an event every 100 ms, forever), /api/N
    (a small JSON); anything else 404. Keep-alive."""
    for head, headers, body in requests_on(sock):
        line = head.split("\r\n")[0]
        be.record(line)
        path = line.split(" ")[1]
        if path == "/events":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            i = 0
            while True:  # until tollgate (the browser) goes away: OSError
                ev = b"id: %d\ndata: tick %d\n\n" % (i, i)
                sock.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                i += 1
                time.sleep(0.1)
        m = re.fullmatch(r"/api/(\d+)", path)
        if path == "/":
            ctype, payload, status = b"text/html; charset=utf-8", PAGE, b"200 OK"
        elif m:
            ctype, status = b"application/json", b"200 OK"
            payload = json.dumps({"n": int(m.group(1))}).encode()
        else:
            ctype, payload, status = b"text/plain", b"not here\n", b"404 Not Found"
        sock.sendall(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nCache-Control: no-store\r\n"
                     b"Content-Length: %d\r\n\r\n" % (status, ctype, len(payload)) + payload)


def self_signed(d):
    """A self-signed certificate for localhost (and 127.0.0.1)."""
    key, crt = os.path.join(str(d), "localhost.key"), os.path.join(str(d), "localhost.pem")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "2", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return crt, key


def gateway_config(h2_port, h1_port, backend_port, crt, key):
    return """
workers: 1
listen:
  - address: 127.0.0.1:%d
    tls: true
  - address: 127.0.0.1:%d
    tls: true
    http2: false
tls:
  certificates:
    - cert: %s
      key: %s
upstreams:
  app:
    servers: [127.0.0.1:%d]
sites:
  - hosts: [localhost]
    routes:
      - path: /
        upstream: app
log:
  access_flush: 100ms
""" % (h2_port, h1_port, crt, key, backend_port)


def start_chromium(log_path, console=False):
    """Headless Chromium on loopback only, through Debian's chromedriver;
    with `console`, the page's console messages are kept for
    driver.get_log("browser")."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.remote.remote_connection import RemoteConnection

    # A hung chromedriver fails the test instead of hanging it.
    RemoteConnection.set_timeout(60 * SLOW)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--ignore-certificate-errors",
              "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update",
              "--disable-default-apps", "--disable-extensions", "--disable-sync",
              "--user-data-dir=" + os.path.join(os.path.dirname(log_path), "profile"),
              # Loopback only: every other name fails to resolve.
              "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"):
        opts.add_argument(a)
    if console:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service("/usr/bin/chromedriver", log_path=log_path)
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(15 * SLOW)
    driver.set_script_timeout(10 * SLOW)
    return driver


def page_state(driver):
    return driver.execute_script("return window.tg || null")


def test_twelve_event_streams_and_five_fetches_h2_versus_http11(tollgate, backend, tmp_path):
    b = backend(site_backend)
    crt, key = self_signed(tmp_path)
    h2_port, h1_port = free_port(), free_port()
    tg = tollgate(gateway_config(h2_port, h1_port, b.port, crt, key))
    driver = start_chromium(str(tmp_path / "chromedriver.log"))
    try:
        # HTTP/2: all 12 streams share one connection with the fetches.
        t0 = time.monotonic()
        driver.get("https://localhost:%d/" % h2_port)
        st = None
        while time.monotonic() - t0 < WINDOW:
            st = page_state(driver)
            if st and all(n > 0 for n in st["events"]) and len(st["fetched"]) == FETCHES:
                break
            time.sleep(0.1)
        assert st is not None, "the page did not run"
        assert st["proto"] == "h2", st
        assert len(st["events"]) == STREAMS and all(n > 0 for n in st["events"]), st
        assert sorted(st["fetched"]) == list(range(FETCHES)), st
        assert st["errors"] == [], st
        h2_resources = driver.execute_script(
            "return performance.getEntriesByType('resource')"
            ".map(e => [e.name, e.nextHopProtocol])")
        apis = [p for name, p in h2_resources if "/api/" in name]
        assert apis == ["h2"] * FETCHES, h2_resources

        # HTTP/1.1: the same page, six connections per origin. The first
        # streams take them all; the rest of the streams and every fetch
        # wait behind them for as long as we watch.
        driver.get("about:blank")
        driver.get("https://localhost:%d/" % h1_port)
        t1 = time.monotonic()
        while time.monotonic() - t1 < WINDOW:
            time.sleep(0.2)
        st1 = page_state(driver)
        assert st1 is not None, "the page did not run"
        assert st1["proto"] == "http/1.1", st1
        live = sum(1 for n in st1["events"] if n > 0)
        assert 1 <= live <= 6, st1  # some streams run, at most six
        assert live < STREAMS, st1
        assert st1["fetchesSent"], st1
        assert st1["fetched"] == [], st1  # and no fetch answers
        driver.get("about:blank")
    finally:
        driver.quit()

    # The access log agrees: everything on the h2 listener was HTTP/2.0,
    # everything on the other HTTP/1.1 (stream lines come when they end).
    h2_host, h1_host = "localhost:%d" % h2_port, "localhost:%d" % h1_port
    deadline = time.time() + 5 * SLOW
    while True:
        lines = tg.access_lines(1)
        h2_lines = [l for l in lines if l.get("host") == h2_host]
        h2_paths = [l["path"] for l in h2_lines]
        if (h2_paths.count("/events") >= STREAMS and "/" in h2_paths) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert "/" in h2_paths and h2_paths.count("/events") >= STREAMS, h2_paths
    assert all("/api/%d" % n in h2_paths for n in range(FETCHES)), h2_paths
    assert {l["proto"] for l in h2_lines} == {"HTTP/2.0"}, h2_lines
    h1_lines = [l for l in lines if l.get("host") == h1_host]
    assert h1_lines and {l["proto"] for l in h1_lines} == {"HTTP/1.1"}, h1_lines
