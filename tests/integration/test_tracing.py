"""W3C Trace Context and OTLP/HTTP span export (issue 21, item 3): the
backend gets the gateway's span as its parent, malformed trace headers
never reach it as sent, the sampling decision follows the parent or
tracing.sample_ratio, and sampled spans reach a recording collector with
the HTTP semantic-convention attributes, over HTTP/1.1 and HTTP/2 alike.
A collector that is down costs requests nothing: failures and drops are
counted."""

import http.server
import json
import re
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import SLOW, free_port, get, raw, status_of

TP_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$")
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP collector that records every POSTed body (JSON)."""

    def __init__(self, status=200):
        self.bodies = []
        self.paths = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with outer.lock:
                    outer.paths.append(self.path)
                    outer.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self):
        with self.lock:
            bodies = list(self.bodies)
        out = []
        for b in bodies:
            for rs in b["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    out.extend(ss["spans"])
        return out

    def wait_spans(self, n, timeout=5.0):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            s = self.spans()
            if len(s) >= n:
                return s
            time.sleep(0.05)
        return self.spans()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    made = []

    def make(**kw):
        c = Collector(**kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def tracing_block(endpoint_port, ratio="1", extra="", otlp_extra="", interval="50ms"):
    return """
tracing:
  enabled: true
  sample_ratio: %s
  service_name: gw-test
%s
  otlp:
    endpoint: http://127.0.0.1:%d/v1/traces
    interval: %s
    timeout: 1s
%s
""" % (ratio, extra, endpoint_port, interval, otlp_extra)


def config(port, backend_port, tracing="", h2c_port=None):
    h2c = "  - {address: 127.0.0.1:%d, h2c: true}\n" % h2c_port if h2c_port else ""
    return """
workers: 1
listen:
  - address: 127.0.0.1:%d
%s
upstreams: {app: {servers: [127.0.0.1:%d]}}
tenants:
  static:
    acme: {servers: [127.0.0.1:%d]}
rate_limit:
  policies:
    tok: {rate: 1000/s, burst: 1000}
sites:
  - hosts: ["{tenant}.platform.test"]
    rate_limit: tok
    routes: [{path: /api/, upstream: $tenant}]
  - hosts: [app.test, localhost]
    routes: [{path: /, upstream: app}]
log: {access_flush: 50ms}
%s
""" % (port, h2c, backend_port, backend_port, tracing)


def backend_saw(b, i=-1):
    """The trace fields of the i-th request the backend received."""
    _, headers, _ = b.requests[i]
    return headers.get("traceparent", []), headers.get("tracestate", [])


def attrs(span):
    out = {}
    for a in span["attributes"]:
        v = a["value"]
        out[a["key"]] = v.get("stringValue", v.get("intValue"))
    return out


def metric(tg, name):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % tg.admin_port,
                                  timeout=5 * SLOW).read().decode()
    m = re.search(r"^%s (\d+)$" % name, text, re.M)
    assert m, name + " missing from /metrics"
    return int(m.group(1))


def test_valid_traceparent_reaches_backend_with_gateway_span_as_parent(
        tollgate, backend, collector):
    col = collector()
    b = backend()
    port = free_port()
    tg = tollgate(config(port, b.port, tracing_block(col.port, ratio="0")))
    st, h, _ = get(port, "/api/x?q=1", host="acme.platform.test", headers={
        "traceparent": "00-%s-%s-01" % (CLIENT_TRACE, CLIENT_SPAN),
        "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"})
    assert st == 200
    tps, states = backend_saw(b)
    assert len(tps) == 1, tps
    m = TP_RE.match(tps[0])
    assert m, tps
    # Same trace, the gateway's span as parent, the parent's decision kept
    # (sampled, although sample_ratio is 0: the parent decides).
    assert m.group(1) == CLIENT_TRACE
    assert m.group(2) != CLIENT_SPAN
    assert m.group(3) == "01"
    assert states == ["congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"]
    gw_span = m.group(2)

    spans = col.wait_spans(1)
    assert len(spans) == 1, spans
    s = spans[0]
    assert col.paths == ["/v1/traces"]
    assert s["traceId"] == CLIENT_TRACE
    assert s["spanId"] == gw_span
    assert s["parentSpanId"] == CLIENT_SPAN
    assert s["kind"] == 2
    assert int(s["endTimeUnixNano"]) >= int(s["startTimeUnixNano"]) > 0
    assert abs(int(s["startTimeUnixNano"]) / 1e9 - time.time()) < 60
    a = attrs(s)
    assert a["http.request.method"] == "GET"
    assert a["http.route"] == "/api/"
    assert s["name"] == "GET /api/"
    assert a["http.response.status_code"] == "200"
    assert a["url.path"] == "/api/x"
    assert a["client.address"] == "127.0.0.1"
    assert a["tollgate.tenant"] == "acme"
    assert a["tollgate.ratelimit.decision"] == "allowed"
    assert a["tollgate.upstream.address"] == "127.0.0.1:%d" % b.port
    assert int(a["tollgate.upstream.header_time_us"]) >= 0
    assert int(a["tollgate.duration_us"]) >= 0
    assert a["network.protocol.version"] == "1.1"
    res = col.bodies[0]["resourceSpans"][0]["resource"]["attributes"]
    assert {"key": "service.name", "value": {"stringValue": "gw-test"}} in res

    # The access log names the same trace and span.
    lines = tg.access_lines(1)
    assert lines[-1]["trace_id"] == CLIENT_TRACE
    assert lines[-1]["span_id"] == gw_span
    assert metric(tg, "tollgate_trace_spans_exported_total") == 1


MALFORMED = [
    "00-%s-%s-01" % (CLIENT_TRACE.upper(), CLIENT_SPAN),  # upper case
    "00-%s-%s-01" % ("0" * 32, CLIENT_SPAN),              # zero trace id
    "00-%s-%s-01" % (CLIENT_TRACE, "0" * 16),             # zero parent id
    "ff-%s-%s-01" % (CLIENT_TRACE, CLIENT_SPAN),          # version ff
    "00-%s-%s-01-extra" % (CLIENT_TRACE, CLIENT_SPAN),    # 00 with more
    "00-%s-%s-1" % (CLIENT_TRACE, CLIENT_SPAN),           # short flags
    "00_%s_%s_01" % (CLIENT_TRACE, CLIENT_SPAN),          # separators
    "garbage",
]


@pytest.mark.parametrize("enabled", [True, False])
def test_malformed_traceparent_is_never_forwarded(tollgate, backend, collector, enabled):
    col = collector()
    b = backend()
    port = free_port()
    tracing = tracing_block(col.port, ratio="1") if enabled else ""
    tollgate(config(port, b.port, tracing))
    for bad in MALFORMED:
        st, _, _ = get(port, "/", headers={"traceparent": bad, "tracestate": "a=b"})
        assert st == 200
        tps, states = backend_saw(b)
        assert bad not in tps
        assert states == []  # it belonged to the invalid parent
        if enabled:
            # Replaced: a new trace of the gateway's.
            assert len(tps) == 1 and TP_RE.match(tps[0]), (bad, tps)
            assert CLIENT_TRACE not in tps[0]
        else:
            assert tps == [], (bad, tps)
    # Two traceparent fields are one too many (the spec: invalid).
    good = "00-%s-%s-01" % (CLIENT_TRACE, CLIENT_SPAN)
    resp = raw(port, ("GET / HTTP/1.1\r\nHost: app.test\r\ntraceparent: %s\r\n"
                      "traceparent: %s\r\nConnection: close\r\n\r\n" % (good, good)).encode())
    assert status_of(resp) == 200
    tps, _ = backend_saw(b)
    assert all(CLIENT_TRACE not in t for t in tps), tps
    # An invalid tracestate is dropped; the valid traceparent stays.
    for bad_state in ["UPPER=x", "a=b,a=c", "a=" + "x" * 600, ",".join("k%d=v" % i for i in range(33))]:
        get(port, "/", headers={"traceparent": good, "tracestate": bad_state})
        tps, states = backend_saw(b)
        assert states == [], bad_state
        assert len(tps) == 1 and CLIENT_TRACE in tps[0]
    if not enabled:
        # Tracing off: a valid one passes as the client sent it.
        get(port, "/", headers={"traceparent": good, "tracestate": "x=1"})
        assert backend_saw(b) == ([good], ["x=1"])
        # A later version is read by its prefix, sent on as version 00.
        get(port, "/", headers={"traceparent": "cc" + good[2:] + "-what-the-future-holds"})
        assert backend_saw(b)[0] == [good]


def test_new_trace_with_ratio_one_and_none_with_ratio_zero(tollgate, backend, collector):
    col = collector()
    b = backend()
    port = free_port()
    tg = tollgate(config(port, b.port, tracing_block(col.port, ratio="1")))
    assert get(port, "/new")[0] == 200
    tps, _ = backend_saw(b)
    m = TP_RE.match(tps[0])
    assert m and m.group(3) == "01"
    spans = col.wait_spans(1)
    assert len(spans) == 1
    assert spans[0]["traceId"] == m.group(1) and spans[0]["spanId"] == m.group(2)
    assert spans[0]["parentSpanId"] == ""
    assert attrs(spans[0])["http.route"] == "/"

    # An unsampled parent is honoured even at ratio 1.
    get(port, "/", headers={"traceparent": "00-%s-%s-00" % (CLIENT_TRACE, CLIENT_SPAN)})
    tps, _ = backend_saw(b)
    m2 = TP_RE.match(tps[0])
    assert m2.group(1) == CLIENT_TRACE and m2.group(2) != CLIENT_SPAN and m2.group(3) == "00"

    # Ratio 0: new traces are started and forwarded, never exported.
    tg.reload(config(port, b.port, tracing_block(col.port, ratio="0")))
    for _ in range(5):
        assert get(port, "/zero")[0] == 200
        tps, _ = backend_saw(b)
        m3 = TP_RE.match(tps[0])
        assert m3 and m3.group(3) == "00"
    time.sleep(0.5 * SLOW)
    assert len(col.spans()) == 1


def test_request_id_is_the_trace_id_where_configured(tollgate, backend, collector):
    col = collector()
    b = backend()
    port = free_port()
    tollgate(config(port, b.port, tracing_block(col.port, extra="  request_id: trace_id")))
    st, h, _ = get(port, "/", headers={
        "traceparent": "00-%s-%s-01" % (CLIENT_TRACE, CLIENT_SPAN), "X-Request-Id": "mine"})
    assert st == 200
    assert h["x-request-id"] == CLIENT_TRACE
    _, headers, _ = b.requests[-1]
    assert headers["x-request-id"] == [CLIENT_TRACE]


def test_collector_down_costs_requests_nothing(tollgate, backend):
    b = backend()
    port = free_port()
    dead = free_port()  # nothing listens there
    tg = tollgate(config(port, b.port, tracing_block(dead, ratio="1", otlp_extra=(
        "    queue: 4\n    batch: 2"))))
    t0 = time.time()
    for _ in range(40):
        assert get(port, "/")[0] == 200
    assert time.time() - t0 < 10 * SLOW
    deadline = time.time() + 5 * SLOW
    while time.time() < deadline and metric(tg, "tollgate_trace_export_failures_total") == 0:
        time.sleep(0.05)
    assert metric(tg, "tollgate_trace_export_failures_total") > 0
    assert metric(tg, "tollgate_trace_spans_failed_total") > 0
    assert metric(tg, "tollgate_trace_spans_exported_total") == 0
    # Exported, failed and dropped account for every sampled request.
    deadline = time.time() + 5 * SLOW
    while time.time() < deadline:
        total = (metric(tg, "tollgate_trace_spans_failed_total") +
                 metric(tg, "tollgate_trace_spans_dropped_total"))
        if total == 40:
            break
        time.sleep(0.05)
    assert total == 40


def test_full_queue_drops_and_counts(tollgate, backend, collector):
    col = collector()
    b = backend()
    port = free_port()
    # A long interval and a batch larger than the queue: the spans wait,
    # and those beyond the queue are dropped.
    tg = tollgate(config(port, b.port, tracing_block(col.port, ratio="1", otlp_extra=(
        "    queue: 3\n    batch: 100"), interval="60s")))
    for _ in range(10):
        assert get(port, "/")[0] == 200
    assert metric(tg, "tollgate_trace_spans_dropped_total") == 7
    # Shutdown sends what is queued.
    tg.stop()
    assert len(col.spans()) == 3


def test_http2_request_is_traced(tollgate, backend, collector):
    col = collector()
    b = backend()
    port, h2c = free_port(), free_port()
    tollgate(config(port, b.port, tracing_block(col.port, ratio="0"), h2c_port=h2c))
    out = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "%d" % (20 * SLOW),
         "-H", "traceparent: 00-%s-%s-01" % (CLIENT_TRACE, CLIENT_SPAN),
         "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
         "http://localhost:%d/h2" % h2c], capture_output=True, text=True, timeout=30 * SLOW)
    assert out.stdout == "200 2", out
    tps, _ = backend_saw(b)
    m = TP_RE.match(tps[0])
    assert m and m.group(1) == CLIENT_TRACE and m.group(3) == "01"
    spans = col.wait_spans(1)
    assert len(spans) == 1
    assert spans[0]["spanId"] == m.group(2)
    assert spans[0]["parentSpanId"] == CLIENT_SPAN
    assert attrs(spans[0])["network.protocol.version"] == "2"


def test_reload_turns_tracing_on_and_off(tollgate, backend, collector):
    """The exporter thread starts at the reload that first enables tracing;
    a reload that disables it stops new spans and restores pass-through."""
    col = collector()
    b = backend()
    port = free_port()
    good = "00-%s-%s-01" % (CLIENT_TRACE, CLIENT_SPAN)
    tg = tollgate(config(port, b.port))
    get(port, "/", headers={"traceparent": good})
    assert backend_saw(b)[0] == [good]
    tg.reload(config(port, b.port, tracing_block(col.port, ratio="1")))
    get(port, "/", headers={"traceparent": good})
    tps, _ = backend_saw(b)
    assert tps != [good] and CLIENT_TRACE in tps[0]
    assert len(col.wait_spans(1)) == 1
    tg.reload(config(port, b.port))
    get(port, "/", headers={"traceparent": good})
    assert backend_saw(b)[0] == [good]
    time.sleep(0.3 * SLOW)
    assert len(col.spans()) == 1
    assert "trace_id" not in tg.access_lines(3)[-1]
