"""HTTP/2 conformance (RFC 9113, RFC 7541) of the h2 front end, written with
python3-h2 and hyperframe against the real binary, over TLS with ALPN h2 and
over h2c prior knowledge: the sections h2spec covers (preface, frame sizes,
stream states, flow control, HPACK, SETTINGS, PING, GOAWAY, RST_STREAM),
each asserting the exact frame or error code, then the request rules of
RFC 9113 §8 and what a stream becomes on its way to the HTTP/1.1 backend.

The helpers here (RawH2, H2Lib, the gateway config) are shared with
test_http2_attacks.py."""

import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, PriorityFrame, RstStreamFrame, SettingsFrame,
                              WindowUpdateFrame)

from conftest import (SLOW, Blackhole, RawBackend, Tollgate, free_port, raw, requests_on,
                      status_of)

E = h2.errors.ErrorCodes
S = h2.settings.SettingCodes
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types, for frames hyperframe will not build (bad lengths, flags).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20
EOF = "eof"
TIMEOUT = "timeout"


def frame(ftype, flags, sid, payload=b""):
    """A raw frame, exactly as given (no validation)."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, sid) + payload


def make_cert(d):
    crt, key = os.path.join(str(d), "h2.crt"), os.path.join(str(d), "h2.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,DNS:app.test,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def tls_socket(port, alpn=("h2",), timeout=5.0):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
    return ctx.wrap_socket(s, server_hostname="app.test")


# ---- a raw client: frames exactly as the test writes them --------------------------------


class RawH2:
    """One client connection. Sends frames as given (hyperframe objects or
    raw bytes); reads the server's frames one by one, decoding header
    blocks (f.headers) and acknowledging the server's SETTINGS."""

    def __init__(self, port, tls=False, preface=True, settings=None, timeout=5.0):
        self.timeout = timeout * SLOW
        if tls:
            self.sock = tls_socket(port, timeout=timeout)
            assert self.sock.selected_alpn_protocol() == "h2"
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        self.scheme = "https" if tls else "http"
        self.buf = b""
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.block = b""
        self.server_settings = {}
        self.settings_acked = 0
        self.next_sid = 1
        self.closed = False
        if preface:
            self.send(PREFACE + SettingsFrame(0, settings or {}).serialize())
            self.handshake()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if not isinstance(data, (bytes, bytearray)):
            data = data.serialize()
        self.sock.sendall(data)

    def try_send(self, data):
        """Sends, unless the server has closed already."""
        try:
            self.send(data)
        except OSError:
            pass

    def _recv(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.time()
            if left <= 0:
                return TIMEOUT
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return TIMEOUT
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                self.closed = True
                return EOF
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, timeout=None):
        """The next frame, or EOF, or TIMEOUT."""
        deadline = time.time() + (timeout * SLOW if timeout is not None else self.timeout)
        head = self._recv(9, deadline)
        if head in (EOF, TIMEOUT):
            return head
        f, length = Frame.parse_frame_header(memoryview(head))
        body = self._recv(length, deadline) if length else b""
        if body in (EOF, TIMEOUT):
            return EOF
        f.parse_body(memoryview(body))
        f.raw_length = length
        if isinstance(f, (HeadersFrame, ContinuationFrame)):
            self.block += f.data
            if "END_HEADERS" in f.flags:
                f.headers = [(k.decode(), v.decode("latin-1"))
                             for k, v in self.dec.decode(self.block, raw=True)]
                self.block = b""
        if isinstance(f, SettingsFrame):
            if "ACK" in f.flags:
                self.settings_acked += 1
            else:
                self.server_settings.update(f.settings)
                self.send(SettingsFrame(0, flags=["ACK"]))
        return f

    def handshake(self):
        """Waits for the server's SETTINGS (its ACK of ours may come later)."""
        while True:
            f = self.read_frame()
            assert f not in (EOF, TIMEOUT), "no SETTINGS from the server: %s" % f
            if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                return f

    def frames_until(self, pred, timeout=None):
        """Frames read until pred(frame) is true (that one included), or
        until EOF/TIMEOUT (the last item then)."""
        out = []
        deadline = time.time() + (timeout * SLOW if timeout is not None else self.timeout)
        while True:
            f = self.read_frame(max(deadline - time.time(), 0.001) / SLOW)
            out.append(f)
            if f in (EOF, TIMEOUT) or pred(f):
                return out

    def expect_goaway(self, code, timeout=None):
        """Reads to the GOAWAY; asserts its code, and that the connection
        then ends. Returns the GOAWAY."""
        seen = self.frames_until(lambda f: isinstance(f, GoAwayFrame), timeout)
        g = seen[-1]
        assert isinstance(g, GoAwayFrame), "no GOAWAY, got %s" % describe(seen)
        assert g.error_code == code, "GOAWAY %s, expected %s (%s)" % (
            name_of(g.error_code), name_of(code), g.additional_data)
        rest = self.frames_until(lambda f: False, timeout=5.0)
        assert rest[-1] == EOF, "connection still open after GOAWAY: %s" % describe(rest)
        return g

    def expect_rst(self, sid, code, timeout=None):
        seen = self.frames_until(lambda f: isinstance(f, (RstStreamFrame, GoAwayFrame)) and (
            isinstance(f, GoAwayFrame) or f.stream_id == sid), timeout)
        r = seen[-1]
        assert isinstance(r, RstStreamFrame), "no RST_STREAM on %d, got %s" % (sid, describe(seen))
        assert r.error_code == code, "RST_STREAM %s, expected %s" % (
            name_of(r.error_code), name_of(code))
        return r

    def expect_stream_error(self, sid, code, timeout=None):
        """RFC 9113 5.4.1: an endpoint may treat a stream error as a
        connection error. Returns the frame (RST_STREAM or GOAWAY)."""
        seen = self.frames_until(lambda f: isinstance(f, GoAwayFrame) or (
            isinstance(f, RstStreamFrame) and f.stream_id == sid), timeout)
        r = seen[-1]
        assert isinstance(r, (RstStreamFrame, GoAwayFrame)), \
            "no RST_STREAM or GOAWAY, got %s" % describe(seen)
        assert r.error_code == code, "%s %s, expected %s" % (
            type(r).__name__, name_of(r.error_code), name_of(code))
        return r

    def expect_eof(self, timeout=None):
        seen = self.frames_until(lambda f: False, timeout)
        assert seen[-1] == EOF, "connection not closed: %s" % describe(seen)
        return seen[:-1]

    def request_headers(self, path="/", method="GET", authority="app.test", extra=()):
        return [(":method", method), (":scheme", self.scheme), (":authority", authority),
                (":path", path)] + list(extra)

    def new_sid(self):
        sid = self.next_sid
        self.next_sid += 2
        return sid

    def headers(self, fields, sid=None, end_stream=True, end_headers=True):
        """Sends a HEADERS frame with `fields` HPACK-encoded. Returns the id."""
        sid = sid if sid is not None else self.new_sid()
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        self.send(frame(HEADERS, flags, sid, self.enc.encode(fields)))
        return sid

    def get(self, path="/", **kw):
        return self.headers(self.request_headers(path, **kw))

    def data(self, sid, payload, end_stream=False):
        self.send(frame(DATA, END_STREAM if end_stream else 0, sid, payload))

    def ping(self, payload=b"liveness"):
        """Asserts the connection is alive: a PING comes back acknowledged."""
        self.send(PingFrame(0, opaque_data=payload))
        seen = self.frames_until(lambda f: isinstance(f, PingFrame) and "ACK" in f.flags)
        assert isinstance(seen[-1], PingFrame), "no PING ACK: %s" % describe(seen)
        assert seen[-1].opaque_data == payload
        return seen

    def response(self, sid, window=True, timeout=None):
        """Reads frames to the end of stream `sid`: a Resp. With `window`,
        every DATA is given back at once (stream and connection)."""
        r = Resp()
        deadline = time.time() + (timeout * SLOW if timeout is not None else self.timeout)
        while True:
            f = self.read_frame(max(deadline - time.time(), 0.001) / SLOW)
            if f in (EOF, TIMEOUT):
                r.end = f
                return r
            r.frames.append(f)
            if isinstance(f, GoAwayFrame):
                r.goaway = f
                if f.last_stream_id < sid or f.error_code != 0:
                    return r
                continue
            if getattr(f, "stream_id", 0) != sid:
                continue
            if isinstance(f, RstStreamFrame):
                r.rst = f.error_code
                return r
            if isinstance(f, (HeadersFrame, ContinuationFrame)) and hasattr(f, "headers"):
                status = dict(f.headers).get(":status")
                if status is not None and int(status) < 200:
                    r.interim.append(f.headers)
                elif r.status is None:
                    r.status = int(status)
                    r.header_list = f.headers
                    r.headers = {}
                    for k, v in f.headers:
                        r.headers.setdefault(k, v)
                else:
                    r.trailers = f.headers
            if isinstance(f, DataFrame):
                r.body += f.data
                r.data_frames += 1
                if window and f.flow_controlled_length:
                    self.try_send(WindowUpdateFrame(0, f.flow_controlled_length).serialize() +
                              (WindowUpdateFrame(sid, f.flow_controlled_length).serialize()
                               if "END_STREAM" not in f.flags else b""))
            if "END_STREAM" in getattr(f, "flags", ()):
                r.ended = True
                return r


class Resp:
    def __init__(self):
        self.status = None
        self.headers = {}
        self.header_list = []
        self.interim = []
        self.trailers = None
        self.body = b""
        self.data_frames = 0
        self.rst = None
        self.goaway = None
        self.ended = False
        self.end = None
        self.frames = []

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Resp(status=%s rst=%s goaway=%s ended=%s end=%s body=%r)" % (
            self.status, self.rst, self.goaway and name_of(self.goaway.error_code), self.ended,
            self.end, self.body[:200])


def name_of(code):
    try:
        return E(code).name
    except ValueError:
        return str(code)


def describe(frames):
    out = []
    for f in frames:
        if isinstance(f, str):
            out.append(f)
        elif isinstance(f, (GoAwayFrame, RstStreamFrame)):
            out.append("%s(%d, %s)" % (type(f).__name__, f.stream_id, name_of(f.error_code)))
        else:
            out.append("%s(%d%s)" % (type(f).__name__, f.stream_id,
                                     ", " + ",".join(sorted(f.flags)) if f.flags else ""))
    return " ".join(out)


# ---- a python-h2 client: the library's own state machine and flow control -----------------


class H2Lib:
    """A client on h2.connection.H2Connection: what a conforming client
    sends, and the events it makes of the answers."""

    def __init__(self, port, tls=False, settings=None, timeout=5.0):
        self.timeout = timeout * SLOW
        self.sock = (tls_socket(port, timeout=timeout) if tls else
                     socket.create_connection(("127.0.0.1", port), timeout=self.timeout))
        self.scheme = "https" if tls else "http"
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()
        self.events = []
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def close(self):
        self.sock.close()

    def pump(self, until, timeout=None):
        """Reads and handles events until until(events) is true."""
        deadline = time.time() + (timeout * SLOW if timeout is not None else self.timeout)
        while not until(self.events):
            left = deadline - time.time()
            assert left > 0, "timed out; events: %s" % self.events
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                self.closed = True
                return self.events
            for ev in self.conn.receive_data(data):
                self.events.append(ev)
                if isinstance(ev, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self.flush()
        return self.events

    def request(self, path="/", method="GET", headers=(), body=None, end=True):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", self.scheme), (":authority", "app.test"),
                (":path", path)] + list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=body is None and end)
        self.flush()
        if body is not None:
            self.send_body(sid, body, end)
        return sid

    def send_body(self, sid, body, end=True):
        off = 0
        while off < len(body) or (end and off == len(body) == 0):
            win = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if win == 0:
                self.pump(lambda evs: self.conn.local_flow_control_window(sid) > 0)
                continue
            piece = body[off:off + win]
            off += len(piece)
            self.conn.send_data(sid, piece, end_stream=end and off == len(body))
            self.flush()
            if not piece:
                break

    def stream_events(self, sid):
        return [e for e in self.events if getattr(e, "stream_id", None) == sid]

    def response(self, sid, timeout=None):
        """(status, headers dict, body, events of the stream)."""
        def done(evs):
            return any(getattr(e, "stream_id", None) == sid and
                       isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                       for e in evs) or any(isinstance(e, h2.events.ConnectionTerminated)
                                            for e in evs)
        self.pump(done, timeout)
        evs = self.stream_events(sid)
        status, headers, body = None, {}, b""
        for e in evs:
            if isinstance(e, h2.events.ResponseReceived):
                headers = dict(e.headers)
                status = int(headers[":status"])
            elif isinstance(e, h2.events.DataReceived):
                body += e.data
        return status, headers, body, evs


# ---- the backend ---------------------------------------------------------------------------


def pattern(n):
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def app_handler(sock, be):
    """A keep-alive HTTP/1.1 backend that answers by path:
    /big/N (N bytes, Content-Length), /chunked/N, /status/N (no body),
    /continue (100 Continue, then 200), /hold (waits for be.release),
    anything else: JSON of what it received (line, headers, body length
    and sha256)."""
    for head, headers, body in requests_on(sock):
        be.record((head, headers, body))
        line = head.split("\r\n")[0]
        method, target = line.split(" ")[:2]
        if target.startswith("/hold"):
            be.release.wait(20 * SLOW)
        if target.startswith("/big/"):
            n = int(target.split("/")[2])
            if method == "HEAD":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + pattern(n))
            continue
        if target.startswith("/chunked/"):
            n = int(target.split("/")[2])
            out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            data = pattern(n)
            for i in range(0, n, 10000):
                piece = data[i:i + 10000]
                out += b"%x\r\n%s\r\n" % (len(piece), piece)
            sock.sendall(out + b"0\r\n\r\n")
            continue
        if target.startswith("/status/"):
            code = int(target.split("/")[2])
            extra = b"ETag: \"x\"\r\n" if code == 304 else b""
            sock.sendall(b"HTTP/1.1 %d X\r\n%s\r\n" % (code, extra))
            continue
        if target.startswith("/continue"):
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            time.sleep(0.05)
        info = {"line": line, "headers": headers, "body_len": len(body),
                "sha": hashlib.sha256(body).hexdigest(), "port": be.port}
        payload = json.dumps(info).encode()
        if method == "HEAD":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(payload))
            continue
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Backend: %d\r\n"
                     b"Content-Length: %d\r\n\r\n" % (be.port, len(payload)) + payload)


def h2c_config(port, backend_port, extra="", http2="", client=""):
    """A small config: one h2c listener, one upstream."""
    return """
workers: 1
drain_timeout: 2s
admin: {listen: "off"}
listen:
  - address: 127.0.0.1:%d
    h2c: true
%s%s
log: {access_flush: 100ms}
upstreams:
  app: {servers: [127.0.0.1:%d]}
%s
sites:
  - hosts: [app.test]
    routes:
      - path: /
        upstream: app
""" % (port, "client:\n%s\n" % client if client else "",
       "http2:\n%s\n" % http2 if http2 else "", backend_port, extra)


def make_backend(handler=app_handler):
    b = RawBackend(handler)
    b.release = threading.Event()
    return b


def gateway_config(ports, crt, key, backend_port, other_port=None, blackhole_port=None,
                   http2="", client="", extra="", listen_extra="", routes=""):
    """A gateway with an h2c listener, a TLS listener (h2), a TLS listener
    with http2: false and a plain listener without h2c."""
    h2c, tls, tls_h1, plain = ports
    return """
workers: 1
listen:
  - address: 127.0.0.1:%d
    h2c: true
%s
  - address: 127.0.0.1:%d
    tls: true
  - address: 127.0.0.1:%d
    tls: true
    http2: false
  - address: 127.0.0.1:%d
tls:
  certificates:
    - cert: %s
      key: %s
client:
%s
  header_timeout: 10s
http2:
%s
  max_resets: 200
drain_timeout: 2s
admin: {listen: "off"}
log: {access_flush: 100ms}
upstreams:
  app: {servers: [127.0.0.1:%d]}
  other: {servers: [127.0.0.1:%d]}
  hole: {servers: [127.0.0.1:%d], connect_timeout: 30s, retries: 0}
rate_limit:
  policies:
    tight: { rate: 2/m, burst: 2, key: [ip] }
%s
sites:
  - hosts: [app.test, localhost]
    routes:
%s
      - path: /other
        upstream: other
      - path: /limited
        upstream: app
        rate_limit: tight
      - path: /hole
        upstream: hole
      - path: /
        upstream: app
""" % (h2c, listen_extra, tls, tls_h1, plain, crt, key, client, http2, backend_port,
       other_port or backend_port, blackhole_port or backend_port, extra, routes)


class Gateway:
    """A tollgate with its backends, shared by the tests of this module."""

    def __init__(self, d, http2="", client="", extra="", listen_extra="", routes=""):
        self.d = d
        self.be = make_backend()
        self.other = make_backend()
        self.hole = Blackhole()
        self.ports = [free_port() for _ in range(4)]
        self.h2c, self.tls, self.tls_h1, self.plain = self.ports
        crt, key = make_cert(d)
        self.tg = Tollgate(d, gateway_config(self.ports, crt, key, self.be.port, self.other.port,
                                             self.hole.port, http2, client, extra, listen_extra,
                                             routes), check_ports=self.ports)

    def port(self, tls):
        return self.tls if tls else self.h2c

    def stop(self):
        self.be.release.set()
        self.other.release.set()
        try:
            self.tg.stop()
        finally:
            self.be.close()
            self.other.close()
            self.hole.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("h2gw"))
    yield g
    g.stop()


@pytest.fixture(params=["h2c", "tls"])
def tls(request):
    return request.param == "tls"


def backend_saw(be, marker, timeout=5.0):
    """The backend's record of the request whose line contains marker."""
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        with be.lock:
            for head, headers, body in be.requests:
                if marker in head:
                    return head, headers, body
        time.sleep(0.02)
    return None


def never_reached(be, marker, wait=0.3):
    time.sleep(wait * SLOW)
    return backend_saw(be, marker, timeout=0) is None


# ===========================================================================================
# 3.4 / 3.5  Starting HTTP/2: ALPN and the connection preface
# ===========================================================================================


def test_alpn_h2_and_first_settings(gw):
    c = RawH2(gw.tls, tls=True)
    # The server's SETTINGS advertise its limits.
    assert c.server_settings[S.MAX_CONCURRENT_STREAMS] == 128
    assert c.server_settings[S.INITIAL_WINDOW_SIZE] == 256 * 1024
    assert c.server_settings[S.MAX_HEADER_LIST_SIZE] == 40 * 1024
    assert c.server_settings[S.ENABLE_CONNECT_PROTOCOL] == 1
    # Our SETTINGS are acknowledged.
    c.frames_until(lambda f: c.settings_acked > 0)
    assert c.settings_acked == 1
    r = c.response(c.get("/hello"))
    assert r.status == 200 and r.json()["line"] == "GET /hello HTTP/1.1"
    c.close()


def test_alpn_prefers_h2_over_http11(gw):
    s = tls_socket(gw.tls, alpn=("http/1.1", "h2"))
    assert s.selected_alpn_protocol() == "h2"
    s.close()
    s = tls_socket(gw.tls, alpn=("http/1.1",))
    assert s.selected_alpn_protocol() == "http/1.1"
    s.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    assert status_of(data) == 200
    s.close()


def test_http2_false_negotiates_http11_only(gw):
    s = tls_socket(gw.tls_h1, alpn=("h2", "http/1.1"))
    assert s.selected_alpn_protocol() == "http/1.1"
    s.sendall(b"GET /h1only HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    assert status_of(data) == 200
    s.close()
    # A client that offers only h2 gets no protocol (or no handshake), never h2.
    try:
        s = tls_socket(gw.tls_h1, alpn=("h2",))
        assert s.selected_alpn_protocol() in (None, "http/1.1")
        s.close()
    except ssl.SSLError:
        pass


def test_h2c_prior_knowledge_and_http11_on_the_same_listener(gw):
    c = RawH2(gw.h2c)
    r = c.response(c.get("/prior"))
    assert r.status == 200 and r.json()["line"] == "GET /prior HTTP/1.1"
    c.close()
    out = raw(gw.h2c, b"GET /plain HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert status_of(out) == 200


def test_plain_listener_without_h2c_does_not_speak_h2(gw):
    out = raw(gw.plain, PREFACE + SettingsFrame(0).serialize(), timeout=3)
    assert not out.startswith(b"\x00"), out[:40]
    assert status_of(out) in (400, 505), out[:80]


def test_bad_preface_over_tls_closes(gw):
    s = tls_socket(gw.tls)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize())
    c = RawH2.__new__(RawH2)
    c.sock, c.buf, c.timeout, c.dec, c.block, c.closed = s, b"", 5 * SLOW, hpack.Decoder(), b"", False
    c.server_settings, c.settings_acked = {}, 0
    seen = c.frames_until(lambda f: False)
    assert seen[-1] == EOF, describe(seen)
    # RFC 9113 3.4: PROTOCOL_ERROR, the GOAWAY may be omitted. Nothing but
    # what the server sent before it read the preface (its SETTINGS and
    # connection window) and maybe that GOAWAY.
    for f in seen[:-1]:
        assert isinstance(f, (SettingsFrame, WindowUpdateFrame, GoAwayFrame)), describe(seen)
        if isinstance(f, GoAwayFrame):
            assert f.error_code == E.PROTOCOL_ERROR


def test_bad_preface_on_h2c_is_not_http2(gw):
    # The h2c listener switches only on the whole preface: this is an
    # HTTP/1 request line with version 2.0.
    out = raw(gw.h2c, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", timeout=3)
    assert status_of(out) == 505, out[:80]


def test_first_frame_not_settings_is_protocol_error(gw, tls):
    c = RawH2(gw.port(tls), preface=False, tls=tls)
    c.send(PREFACE + PingFrame(0, opaque_data=b"12345678").serialize())
    c.expect_goaway(E.PROTOCOL_ERROR)


# ===========================================================================================
# 4.1 / 4.2  Frame format and size
# ===========================================================================================


def test_unknown_frame_type_is_ignored(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    c.send(frame(0x42, 0xff, 0, b"whatever"))
    c.send(frame(0x42, 0, 1, b"on an idle stream too"))
    c.ping()
    r = c.response(c.get("/after-unknown"))
    assert r.status == 200


def test_unknown_flags_are_ignored(gw):
    c = RawH2(gw.h2c)
    c.send(frame(PING, 0xfe, 0, b"flagsflg"))  # every flag but ACK
    seen = c.frames_until(lambda f: isinstance(f, PingFrame))
    assert "ACK" in seen[-1].flags and seen[-1].opaque_data == b"flagsflg"


def test_reserved_bit_in_stream_id_is_ignored(gw):
    c = RawH2(gw.h2c)
    fields = c.request_headers("/reserved-bit")
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 0x80000001, c.enc.encode(fields)))
    r = c.response(1)
    assert r.status == 200


def test_data_over_max_frame_size_is_frame_size_error(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    sid = c.headers(c.request_headers("/big-frame", method="POST"), end_stream=False)
    c.data(sid, b"x" * 16385)
    c.expect_goaway(E.FRAME_SIZE_ERROR)


def test_headers_over_max_frame_size_is_frame_size_error(gw):
    c = RawH2(gw.h2c)
    block = c.enc.encode(c.request_headers("/big-headers", extra=[("x-pad", "a" * 17000)]),
                         huffman=False)
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    c.expect_goaway(E.FRAME_SIZE_ERROR)


def test_max_frame_size_is_honoured_both_ways(gw):
    # The client raises its MAX_FRAME_SIZE: the server may then send bigger
    # DATA frames, and never bigger than that.
    c = RawH2(gw.h2c, settings={S.MAX_FRAME_SIZE: 16384, S.INITIAL_WINDOW_SIZE: 1 << 20})
    r = c.response(c.get("/big/100000"))
    assert r.status == 200 and r.body == pattern(100000)
    assert all(f.raw_length <= 16384 for f in r.frames)


# ===========================================================================================
# 5.1  Stream states
# ===========================================================================================


def test_data_on_idle_stream_is_protocol_error(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    c.data(1, b"hello", end_stream=True)
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_rst_stream_on_idle_stream_is_protocol_error(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    c.send(RstStreamFrame(5, error_code=E.CANCEL))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_window_update_on_idle_stream_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.send(WindowUpdateFrame(3, 100))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_continuation_on_idle_stream_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(CONTINUATION, END_HEADERS, 1, c.enc.encode([("x-a", "b")])))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_even_stream_id_from_client_is_protocol_error(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    c.headers(c.request_headers("/even"), sid=2)
    c.expect_goaway(E.PROTOCOL_ERROR)
    assert never_reached(gw.be, "/even")


def test_headers_on_half_closed_remote_stream_is_stream_closed(gw):
    c = RawH2(gw.h2c)
    sid = c.get("/hold/half-closed")
    assert backend_saw(gw.be, "/hold/half-closed")
    # The client ended its side: another HEADERS is a stream error
    # STREAM_CLOSED (RFC 9113 5.1, half-closed (remote)).
    c.headers([("x-late", "1")], sid=sid)
    c.expect_stream_error(sid, E.STREAM_CLOSED)


def test_data_on_half_closed_remote_stream_is_stream_closed(gw):
    c = RawH2(gw.h2c)
    sid = c.get("/hold/half-closed-data")
    assert backend_saw(gw.be, "/hold/half-closed-data")
    c.data(sid, b"late")
    c.expect_stream_error(sid, E.STREAM_CLOSED)


def test_data_on_closed_stream_is_stream_closed(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    sid = c.get("/closed")
    assert c.response(sid).status == 200
    c.data(sid, b"after the end")
    c.expect_stream_error(sid, E.STREAM_CLOSED)


def test_headers_on_closed_stream_is_stream_closed(gw):
    c = RawH2(gw.h2c)
    sid = c.get("/closed-headers")
    assert c.response(sid).status == 200
    c.headers(c.request_headers("/again"), sid=sid)
    c.expect_stream_error(sid, E.STREAM_CLOSED)
    assert never_reached(gw.be, "/again")


def test_frames_allowed_on_closed_stream(gw):
    # WINDOW_UPDATE, PRIORITY and RST_STREAM shortly after the close are
    # not errors (RFC 9113 5.1, closed).
    c = RawH2(gw.h2c)
    sid = c.get("/closed-ok")
    assert c.response(sid).status == 200
    c.send(WindowUpdateFrame(sid, 10))
    c.send(PriorityFrame(sid, depends_on=0, stream_weight=16))
    c.send(RstStreamFrame(sid, error_code=E.CANCEL))
    c.ping()
    assert c.response(c.get("/after-closed")).status == 200


def test_client_reset_of_open_stream_keeps_the_connection(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    sid = c.get("/hold/reset-me")
    assert backend_saw(gw.be, "/hold/reset-me")
    c.send(RstStreamFrame(sid, error_code=E.CANCEL))
    c.ping()
    r = c.response(c.get("/after-reset"))
    assert r.status == 200


# ===========================================================================================
# 6.1 - 6.10  Frame definitions
# ===========================================================================================


def test_data_on_stream_zero_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.data(0, b"zero")
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_data_padding_longer_than_payload_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    sid = c.headers(c.request_headers("/pad", method="POST"), end_stream=False)
    c.send(frame(DATA, PADDED | END_STREAM, sid, b"\x09abcd"))  # 9 bytes of padding, 4 there
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_padded_data_reaches_backend_without_padding(gw):
    c = RawH2(gw.h2c)
    sid = c.headers(c.request_headers("/padded", method="POST",
                                      extra=[("content-length", "5")]), end_stream=False)
    c.send(frame(DATA, PADDED | END_STREAM, sid, b"\x03hello\x00\x00\x00"))
    r = c.response(sid)
    assert r.status == 200
    assert r.json()["body_len"] == 5 and r.json()["sha"] == hashlib.sha256(b"hello").hexdigest()


def test_headers_on_stream_zero_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.headers(c.request_headers("/zero"), sid=0)
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_headers_padding_longer_than_payload_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    block = c.enc.encode(c.request_headers("/padh"))
    c.send(frame(HEADERS, PADDED | END_HEADERS | END_STREAM, 1, bytes([len(block) + 5]) + block))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_headers_depending_on_itself_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    block = c.enc.encode(c.request_headers("/self"))
    prio = struct.pack(">IB", 1, 15)  # depends on stream 1, itself
    c.send(frame(HEADERS, PRIO | END_HEADERS | END_STREAM, 1, prio + block))
    c.expect_stream_error(1, E.PROTOCOL_ERROR)


def test_priority_on_stream_zero_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(PRIORITY, 0, 0, struct.pack(">IB", 1, 15)))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_priority_wrong_length_is_frame_size_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(PRIORITY, 0, 1, b"\x00\x00\x00\x03"))
    c.expect_stream_error(1, E.FRAME_SIZE_ERROR)


def test_priority_on_idle_stream_is_allowed(gw):
    c = RawH2(gw.h2c)
    c.send(PriorityFrame(9, depends_on=0, stream_weight=200))
    c.ping()
    assert c.response(c.get("/after-priority")).status == 200


def test_rst_stream_on_stream_zero_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(RST_STREAM, 0, 0, struct.pack(">I", E.CANCEL)))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_rst_stream_wrong_length_is_frame_size_error(gw):
    c = RawH2(gw.h2c)
    sid = c.get("/hold/rst-len")
    c.send(frame(RST_STREAM, 0, sid, b"\x00\x00\x08"))
    c.expect_goaway(E.FRAME_SIZE_ERROR)


def test_settings_ack_with_payload_is_frame_size_error(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    c.send(frame(SETTINGS, ACK, 0, struct.pack(">HI", S.ENABLE_PUSH, 0)))
    c.expect_goaway(E.FRAME_SIZE_ERROR)


def test_settings_on_a_stream_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(SETTINGS, 0, 1, struct.pack(">HI", S.ENABLE_PUSH, 0)))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_settings_length_not_multiple_of_six_is_frame_size_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", S.ENABLE_PUSH, 0) + b"\x00\x01\x00"))
    c.expect_goaway(E.FRAME_SIZE_ERROR)


def test_settings_enable_push_invalid_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", S.ENABLE_PUSH, 2)))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_settings_initial_window_too_large_is_flow_control_error(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", S.INITIAL_WINDOW_SIZE, 1 << 31)))
    c.expect_goaway(E.FLOW_CONTROL_ERROR)


@pytest.mark.parametrize("size", [16383, 1 << 24])
def test_settings_max_frame_size_out_of_range_is_protocol_error(gw, size):
    c = RawH2(gw.h2c)
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", S.MAX_FRAME_SIZE, size)))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_settings_unknown_identifier_is_ignored(gw):
    c = RawH2(gw.h2c)
    before = c.settings_acked
    c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4242, 7)))
    c.frames_until(lambda f: c.settings_acked > before + (0 if before else 1))
    c.ping()


def test_settings_are_acknowledged(gw):
    c = RawH2(gw.h2c)
    c.frames_until(lambda f: c.settings_acked >= 1)
    c.send(SettingsFrame(0, {S.HEADER_TABLE_SIZE: 1024}))
    seen = c.frames_until(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    assert isinstance(seen[-1], SettingsFrame) and seen[-1].raw_length == 0


def test_push_promise_from_client_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    sid = c.get("/hold/pp")
    block = c.enc.encode(c.request_headers("/pushed"))
    c.send(frame(PUSH_PROMISE, END_HEADERS, sid, struct.pack(">I", 2) + block))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_ping_is_echoed_with_its_payload(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    c.send(PingFrame(0, opaque_data=b"\x00\x01\x02\xfe\xffabc"))
    seen = c.frames_until(lambda f: isinstance(f, PingFrame))
    p = seen[-1]
    assert isinstance(p, PingFrame) and p.flags == {"ACK"}
    assert p.opaque_data == b"\x00\x01\x02\xfe\xffabc" and p.stream_id == 0


def test_ping_ack_from_client_is_not_answered(gw):
    c = RawH2(gw.h2c)
    c.send(PingFrame(0, opaque_data=b"ackackac", flags=["ACK"]))
    c.send(PingFrame(0, opaque_data=b"realping"))
    seen = c.frames_until(lambda f: isinstance(f, PingFrame))
    assert seen[-1].opaque_data == b"realping"


def test_ping_on_a_stream_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(PING, 0, 1, b"12345678"))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_ping_wrong_length_is_frame_size_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(PING, 0, 0, b"1234567"))
    c.expect_goaway(E.FRAME_SIZE_ERROR)


def test_goaway_on_a_stream_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(GOAWAY, 0, 1, struct.pack(">II", 0, 0)))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_client_goaway_lets_streams_finish_then_closes(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    sid = c.get("/big/50000")
    c.send(GoAwayFrame(0, last_stream_id=0, error_code=E.NO_ERROR))
    r = c.response(sid)
    assert r.status == 200 and r.body == pattern(50000)
    c.expect_eof()


def test_window_update_zero_on_connection_is_protocol_error(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_window_update_zero_on_stream_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    sid = c.get("/hold/wu-zero")
    c.send(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 0)))
    c.expect_stream_error(sid, E.PROTOCOL_ERROR)


def test_window_update_wrong_length_is_frame_size_error(gw):
    c = RawH2(gw.h2c)
    c.send(frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"))
    c.expect_goaway(E.FRAME_SIZE_ERROR)


def test_connection_window_overflow_is_flow_control_error(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    c.send(WindowUpdateFrame(0, (1 << 31) - 1))
    c.expect_goaway(E.FLOW_CONTROL_ERROR)


def test_stream_window_overflow_is_flow_control_error(gw):
    c = RawH2(gw.h2c)
    sid = c.get("/hold/wu-overflow")
    c.send(WindowUpdateFrame(sid, (1 << 31) - 1))
    c.expect_rst(sid, E.FLOW_CONTROL_ERROR)
    c.ping()


def test_initial_window_change_overflowing_a_stream_is_flow_control_error(gw):
    c = RawH2(gw.h2c)
    sid = c.get("/hold/iws-overflow")
    assert backend_saw(gw.be, "/hold/iws-overflow")
    c.send(WindowUpdateFrame(sid, (1 << 31) - 1 - 65535))  # the stream at 2^31-1
    c.send(SettingsFrame(0, {S.INITIAL_WINDOW_SIZE: 65536}))  # one more: overflow
    # RFC 9113 6.9.2 says connection error; nghttp2 resets the streams whose
    # window overflowed (and only those): FLOW_CONTROL_ERROR either way.
    c.expect_rst(sid, E.FLOW_CONTROL_ERROR)
    c.ping()


def test_data_beyond_stream_window_is_flow_control_error(gw):
    # The upstream never connects (a black hole), so nothing of the body is
    # taken and the window does not open: byte 256 KiB + 1 is one too many.
    c = RawH2(gw.h2c)
    c.frames_until(lambda f: c.settings_acked >= 1)
    sid = c.headers(c.request_headers("/hole/upload", method="POST"), end_stream=False)
    window = c.server_settings[S.INITIAL_WINDOW_SIZE]
    sent = 0
    while sent < window:
        n = min(16384, window - sent)
        c.data(sid, b"w" * n)
        sent += n
    c.data(sid, b"!")
    c.expect_stream_error(sid, E.FLOW_CONTROL_ERROR)


def test_continuation_after_end_headers_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    sid = c.headers(c.request_headers("/hold/cont"), end_stream=True)
    c.send(frame(CONTINUATION, END_HEADERS, sid, c.enc.encode([("x-more", "1")])))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_other_frame_inside_header_block_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.headers(c.request_headers("/split"), end_headers=False)
    c.send(PingFrame(0, opaque_data=b"between!"))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_continuation_on_another_stream_is_protocol_error(gw):
    c = RawH2(gw.h2c)
    c.headers(c.request_headers("/split"), sid=1, end_headers=False)
    c.send(frame(CONTINUATION, END_HEADERS, 3, c.enc.encode([("x-more", "1")])))
    c.expect_goaway(E.PROTOCOL_ERROR)


def test_headers_split_over_continuation_frames(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    block = c.enc.encode(c.request_headers("/continued", extra=[("x-long", "v" * 3000)]))
    c.send(frame(HEADERS, END_STREAM, 1, block[:10]) + frame(CONTINUATION, 0, 1, block[10:1000]) +
           frame(CONTINUATION, END_HEADERS, 1, block[1000:]))
    r = c.response(1)
    assert r.status == 200
    assert r.json()["headers"]["x-long"] == ["v" * 3000]


# ===========================================================================================
# HPACK (RFC 7541)
# ===========================================================================================


@pytest.mark.parametrize("block", [b"\xbe", b"\x80", b"\xff\xff\x7f"],
                         ids=["dynamic-index-empty-table", "index-zero", "huge-index"])
def test_hpack_invalid_index_is_compression_error(gw, block):
    c = RawH2(gw.h2c)
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\x82\x86\x84" + block))
    c.expect_goaway(E.COMPRESSION_ERROR)


def test_hpack_table_size_update_beyond_limit_is_compression_error(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    # Dynamic table size update to 8192: the server allows 4096.
    upd = b"\x3f\xe1\x3f"
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, upd + c.enc.encode(c.request_headers())))
    c.expect_goaway(E.COMPRESSION_ERROR)


def test_hpack_table_size_update_after_a_field_is_compression_error(gw):
    c = RawH2(gw.h2c)
    block = c.enc.encode(c.request_headers("/late-update")) + b"\x20"  # update to 0, last
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    c.expect_goaway(E.COMPRESSION_ERROR)


def test_hpack_table_size_update_within_limit_is_fine(gw):
    c = RawH2(gw.h2c)
    block = b"\x20" + c.enc.encode(c.request_headers("/update-ok"))  # to 0, first
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    assert c.response(1).status == 200


def test_hpack_huffman_with_eos_is_compression_error(gw):
    c = RawH2(gw.h2c)
    # A literal value, Huffman-coded, holding the EOS symbol (30 one-bits).
    bad = b"\x40\x03x-a\x84\xff\xff\xff\xff"
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, c.enc.encode(c.request_headers()) + bad))
    c.expect_goaway(E.COMPRESSION_ERROR)


def test_hpack_dynamic_table_persists_across_streams(gw):
    c = H2Lib(gw.h2c)
    for i in range(3):
        sid = c.request("/table/%d" % i, headers=[("x-repeated", "same value each time")])
        status, _, body, _ = c.response(sid)
        assert status == 200
        assert json.loads(body)["headers"]["x-repeated"] == ["same value each time"]
    c.close()


# ===========================================================================================
# 8.1 - 8.3  HTTP semantics: the request rules
# ===========================================================================================


def bad_request(gw, fields, path_marker, tls=False, end_stream=True, body=None):
    c = RawH2(gw.port(tls), tls=tls)
    sid = c.headers(fields, end_stream=end_stream and body is None)
    if body is not None:
        c.data(sid, body, end_stream=True)
    c.expect_rst(sid, E.PROTOCOL_ERROR)
    c.ping()  # a stream error: the connection goes on
    assert never_reached(gw.be, path_marker)
    return c


def base(path, method="GET", scheme="http"):
    return [(":method", method), (":scheme", scheme), (":authority", "app.test"), (":path", path)]


def test_missing_method_is_refused(gw, tls):
    fields = [f for f in base("/r/no-method") if f[0] != ":method"]
    bad_request(gw, fields, "/r/no-method", tls=tls)


def test_missing_path_is_refused(gw):
    bad_request(gw, [f for f in base("/x") if f[0] != ":path"] + [("x-m", "no-path")],
                "x-m: no-path")


def test_missing_scheme_is_refused(gw):
    bad_request(gw, [f for f in base("/r/no-scheme") if f[0] != ":scheme"], "/r/no-scheme")


def test_empty_path_is_refused(gw):
    bad_request(gw, base("/x")[:3] + [(":path", ""), ("x-m", "empty-path")], "x-m: empty-path")


def test_duplicated_pseudo_header_is_refused(gw):
    bad_request(gw, base("/r/dup") + [(":path", "/r/dup2")], "/r/dup")


def test_unknown_pseudo_header_is_refused(gw):
    bad_request(gw, base("/r/unknown-pseudo") + [(":foo", "bar")], "/r/unknown-pseudo")


def test_response_pseudo_header_in_request_is_refused(gw):
    bad_request(gw, base("/r/status") + [(":status", "200")], "/r/status")


def test_pseudo_header_after_regular_is_refused(gw):
    f = base("/r/order")
    bad_request(gw, f[:3] + [("x-a", "1"), f[3]], "/r/order")


def test_uppercase_header_name_is_refused(gw, tls):
    bad_request(gw, base("/r/upper") + [("X-Upper", "1")], "/r/upper", tls=tls)


@pytest.mark.parametrize("name,value", [("connection", "keep-alive"), ("keep-alive", "5"),
                                        ("proxy-connection", "keep-alive"),
                                        ("transfer-encoding", "chunked"), ("upgrade", "h2c")])
def test_connection_specific_header_is_refused(gw, name, value):
    bad_request(gw, base("/r/conn-" + name, method="POST") + [(name, value)],
                "/r/conn-" + name, body=b"0\r\n\r\n")


def test_te_other_than_trailers_is_refused(gw):
    bad_request(gw, base("/r/te-gzip") + [("te", "gzip")], "/r/te-gzip")


def test_te_trailers_is_allowed(gw):
    c = RawH2(gw.h2c)
    r = c.response(c.headers(base("/r/te-trailers") + [("te", "trailers")]))
    assert r.status == 200


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\x00b", "a\r\nx-injected: 1"],
                         ids=["CR", "LF", "NUL", "CRLF"])
def test_cr_lf_nul_in_values_are_refused(gw, value):
    bad_request(gw, base("/r/ctl") + [("x-bad", value)], "/r/ctl")


@pytest.mark.parametrize("name", ["x bad", "x:bad", "x\tbad", ""], ids=["space", "colon", "tab",
                                                                       "empty"])
def test_invalid_header_names_are_refused(gw, name):
    bad_request(gw, base("/r/name") + [(name, "v")], "/r/name")


def test_content_length_above_data_is_refused(gw, tls):
    bad_request(gw, base("/r/cl-short", method="POST") + [("content-length", "10")],
                "/r/cl-short", tls=tls, body=b"12345")


def test_content_length_below_data_is_refused(gw):
    c = RawH2(gw.h2c)
    sid = c.headers(base("/hole/cl-long", method="POST") + [("content-length", "2")],
                    end_stream=False)
    c.data(sid, b"12345", end_stream=True)
    c.expect_rst(sid, E.PROTOCOL_ERROR)
    c.ping()


def test_authority_and_host_must_agree(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    r = c.response(c.headers(base("/r/host-mismatch", scheme=c.scheme) +
                             [("host", "other.test")]))
    assert r.status == 400
    assert never_reached(gw.be, "/r/host-mismatch")
    # The same name (another case, a port is another name) is fine.
    r = c.response(c.headers(base("/r/host-same", scheme=c.scheme) + [("host", "APP.test")]))
    assert r.status == 200


def test_host_without_authority_is_used(gw):
    c = RawH2(gw.h2c)
    fields = [(":method", "GET"), (":scheme", "http"), (":path", "/r/host-only"),
              ("host", "app.test")]
    r = c.response(c.headers(fields))
    assert r.status == 200
    head, headers, _ = backend_saw(gw.be, "/r/host-only")
    assert headers["host"] == ["app.test"]


def test_neither_authority_nor_host_is_refused(gw):
    bad_request(gw, [(":method", "GET"), (":scheme", "http"), (":path", "/r/no-host")],
                "/r/no-host")


def test_authority_with_invalid_characters_is_refused(gw):
    bad_request(gw, [(":method", "GET"), (":scheme", "http"), (":authority", "app.test/evil"),
                     (":path", "/r/bad-authority")], "/r/bad-authority")


@pytest.mark.parametrize("authority", ["user@app.test", "app.test:99999", "[::1"])
def test_authority_with_userinfo_or_bad_port_is_400(gw, authority):
    # RFC 9113 8.3.1: no userinfo in an http(s) :authority; nghttp2 lets
    # these characters through, the gateway refuses the request.
    c = RawH2(gw.h2c)
    fields = [(":method", "GET"), (":scheme", "http"), (":authority", authority),
              (":path", "/r/userinfo")]
    r = c.response(c.headers(fields))
    assert r.status == 400 and r.ended
    assert never_reached(gw.be, "/r/userinfo")
    c.ping()


def test_trailers_with_pseudo_header_are_refused(gw):
    c = RawH2(gw.h2c)
    sid = c.headers(base("/hole/trailer-pseudo", method="POST"), end_stream=False)
    c.data(sid, b"abc")
    c.headers([(":path", "/evil")], sid=sid, end_stream=True)
    c.expect_stream_error(sid, E.PROTOCOL_ERROR)


def test_trailers_without_end_stream_are_refused(gw):
    c = RawH2(gw.h2c)
    sid = c.headers(base("/hole/trailer-noend", method="POST"), end_stream=False)
    c.data(sid, b"abc")
    c.headers([("x-trailer", "1")], sid=sid, end_stream=False)
    c.expect_stream_error(sid, E.PROTOCOL_ERROR)


# ===========================================================================================
# What a stream becomes toward the HTTP/1.1 backend
# ===========================================================================================


def test_request_reaches_backend_as_http11(gw, tls):
    c = H2Lib(gw.port(tls), tls=tls)
    sid = c.request("/as-h1?q=1&r=2", headers=[("x-custom", "yes"), ("accept", "*/*")])
    status, headers, body, _ = c.response(sid)
    assert status == 200
    info = json.loads(body)
    assert info["line"] == "GET /as-h1?q=1&r=2 HTTP/1.1"
    assert info["headers"]["host"] == ["app.test"]
    assert info["headers"]["x-custom"] == ["yes"]
    assert "x-forwarded-for" in info["headers"]
    assert info["headers"].get("x-forwarded-proto") == [("https" if tls else "http")]
    # The response is HTTP/2: lower-case names, no connection fields.
    assert headers["x-backend"] == str(gw.be.port)
    assert "connection" not in headers and "transfer-encoding" not in headers
    c.close()


def test_cookie_crumbs_joined_for_backend(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    fields = base("/cookies", scheme=c.scheme) + [("cookie", "a=1"), ("x-mid", "m"),
                                                  ("cookie", "b=2"), ("cookie", "c=3")]
    r = c.response(c.headers(fields))
    assert r.status == 200
    _, headers, _ = backend_saw(gw.be, "/cookies")
    assert headers["cookie"] == ["a=1; b=2; c=3"]


def test_upgrade_h2c_from_http11_is_neither_honoured_nor_forwarded(gw):
    req = (b"GET /upgrade-h2c HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    for port in (gw.plain, gw.h2c):
        out = raw(port, req, timeout=3, read_until_close=False)
        assert status_of(out) == 200, out[:100]
        assert b"101" not in out.split(b"\r\n")[0]
        _, headers, _ = backend_saw(gw.be, "/upgrade-h2c")
        assert "upgrade" not in headers and "http2-settings" not in headers
        assert "upgrade" not in ",".join(headers.get("connection", [])).lower()
        with gw.be.lock:
            gw.be.requests = [r for r in gw.be.requests if "/upgrade-h2c" not in r[0]]


def test_each_stream_is_routed(gw):
    c = H2Lib(gw.h2c)
    a = c.request("/route-a")
    b = c.request("/other/route-b")
    sa, ha, _, _ = c.response(a)
    sb, hb, _, _ = c.response(b)
    assert (sa, sb) == (200, 200)
    assert ha["x-backend"] == str(gw.be.port) and hb["x-backend"] == str(gw.other.port)
    c.close()


def test_unknown_host_stream_is_404(gw):
    c = RawH2(gw.h2c)
    r = c.response(c.headers(base("/nowhere")[:2] + [(":authority", "nobody.test"),
                                                     (":path", "/nowhere")]))
    assert r.status == 404
    c.ping()


def test_rate_limit_429_ends_only_that_stream(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    statuses = [c.response(c.get("/limited/%d" % i)).status for i in range(3)]
    # the policy allows 2 a minute per address (the other transport's run may
    # have used them already)
    assert statuses[-1] == 429 and set(statuses) <= {200, 429}
    c.ping()
    r = c.response(c.get("/after-429"))
    assert r.status == 200


def test_access_log_says_http2(gw):
    c = RawH2(gw.h2c)
    assert c.response(c.get("/logged-as-h2")).status == 200
    deadline = time.time() + 5 * SLOW
    line = None
    while line is None and time.time() < deadline:
        for l in gw.tg.access_lines(wait_for=1, timeout=1):
            if l.get("path", "").startswith("/logged-as-h2"):
                line = l
        time.sleep(0.1)
    assert line is not None
    assert line["proto"] == "HTTP/2.0" and line["status"] == 200 and line["method"] == "GET"


def test_request_body_with_content_length(gw, tls):
    c = H2Lib(gw.port(tls), tls=tls)
    body = os.urandom(300000)
    sid = c.request("/upload-cl", method="POST", headers=[("content-length", str(len(body)))],
                    body=body)
    status, _, got, _ = c.response(sid, timeout=15)
    assert status == 200
    info = json.loads(got)
    assert info["body_len"] == len(body) and info["sha"] == hashlib.sha256(body).hexdigest()
    assert info["headers"]["content-length"] == [str(len(body))]
    assert "transfer-encoding" not in info["headers"]
    c.close()


def test_request_body_without_content_length_is_chunked(gw, tls):
    c = H2Lib(gw.port(tls), tls=tls)
    body = os.urandom(700000)
    sid = c.request("/upload-chunked", method="POST", body=body)
    status, _, got, _ = c.response(sid, timeout=15)
    assert status == 200
    info = json.loads(got)
    assert info["body_len"] == len(body) and info["sha"] == hashlib.sha256(body).hexdigest()
    assert info["headers"]["transfer-encoding"] == ["chunked"]
    assert "content-length" not in info["headers"]
    c.close()


def test_empty_body_with_end_stream_on_data(gw):
    c = RawH2(gw.h2c)
    sid = c.headers(base("/empty-data", method="POST"), end_stream=False)
    c.data(sid, b"", end_stream=True)
    r = c.response(sid)
    assert r.status == 200 and r.json()["body_len"] == 0


def test_client_trailers_are_dropped_safely(tollgate, backend):
    seen = []

    def capture(sock, be):
        # The raw bytes of a chunked request, to the last chunk and the
        # trailer section.
        data = b""
        while not data.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        seen.append(data)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    b = backend(capture)
    port = free_port()
    tollgate(h2c_config(port, b.port))
    c = RawH2(port)
    sid = c.headers(base("/trailers", method="POST"), end_stream=False)
    c.data(sid, b"body before trailers")
    c.headers([("x-trailer", "t"), ("x-second", "u")], sid=sid, end_stream=True)
    r = c.response(sid)
    assert r.status == 200 and r.body == b"ok"
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    # The body, then an empty trailer section: the client's trailers are not
    # passed on.
    assert body == b"14\r\nbody before trailers\r\n0\r\n\r\n"
    c.ping()


def test_100_continue_reaches_client_as_informational_headers(gw, tls):
    c = H2Lib(gw.port(tls), tls=tls)
    # (The backend sends its 100 once it has the body.)
    sid = c.request("/continue", method="POST", headers=[("expect", "100-continue"),
                                                          ("content-length", "5")],
                    body=b"hello")
    status, headers, body, evs = c.response(sid)
    info = [e for e in evs if isinstance(e, h2.events.InformationalResponseReceived)]
    assert len(info) == 1 and dict(info[0].headers)[":status"] == "100"
    kinds = [type(e) for e in evs]
    assert kinds.index(h2.events.InformationalResponseReceived) < kinds.index(
        h2.events.ResponseReceived)
    assert status == 200 and json.loads(body)["body_len"] == 5
    c.close()


def test_head_response_has_no_data(gw, tls):
    c = RawH2(gw.port(tls), tls=tls)
    r = c.response(c.get("/big/12345", method="HEAD"))
    assert r.status == 200 and r.ended
    assert r.headers["content-length"] == "12345"
    assert r.data_frames == 0 and r.body == b""
    # The HEADERS frame itself ends the stream.
    heads = [f for f in r.frames if isinstance(f, HeadersFrame)]
    assert "END_STREAM" in heads[-1].flags


@pytest.mark.parametrize("code", [204, 304])
def test_bodyless_statuses_have_no_data(gw, code):
    c = RawH2(gw.h2c)
    r = c.response(c.get("/status/%d" % code))
    assert r.status == code and r.ended
    assert r.data_frames == 0
    assert "content-length" not in r.headers or code == 304
    heads = [f for f in r.frames if isinstance(f, HeadersFrame)]
    assert "END_STREAM" in heads[-1].flags


def test_chunked_response_becomes_data(gw):
    c = RawH2(gw.h2c)
    r = c.response(c.get("/chunked/100000"))
    assert r.status == 200 and r.body == pattern(100000)
    assert "transfer-encoding" not in r.headers


def test_large_response_under_a_small_window(gw, tls):
    # The client allows 1000 bytes per stream and opens the windows by 3000
    # only after it has taken what came: every byte arrives, and never more
    # than the window allowed.
    c = RawH2(gw.port(tls), tls=tls, settings={S.INITIAL_WINDOW_SIZE: 1000})
    c.frames_until(lambda f: c.settings_acked >= 1)
    n = 200000
    sid = c.get("/big/%d" % n)
    stream_win, conn_win = 1000, 65535
    body = b""
    status = None
    while True:
        f = c.read_frame(timeout=10)
        assert f not in (EOF, TIMEOUT), "stalled at %d of %d bytes" % (len(body), n)
        if isinstance(f, HeadersFrame) and f.stream_id == sid:
            status = int(dict(f.headers)[":status"])
        if isinstance(f, (RstStreamFrame, GoAwayFrame)):
            pytest.fail("%s" % describe([f]))
        if isinstance(f, DataFrame) and f.stream_id == sid:
            size = f.flow_controlled_length
            assert size <= stream_win and size <= conn_win, \
                "DATA of %d with windows %d/%d" % (size, stream_win, conn_win)
            stream_win -= size
            conn_win -= size
            body += f.data
            if "END_STREAM" in f.flags:
                break
            if stream_win == 0:
                time.sleep(0.002)
                c.send(WindowUpdateFrame(sid, 3000))
                stream_win += 3000
            if conn_win < 10000:
                c.send(WindowUpdateFrame(0, 60000))
                conn_win += 60000
    assert status == 200
    assert body == pattern(n)


def test_large_response_through_python_h2_flow_control(gw):
    c = H2Lib(gw.h2c, settings={S.INITIAL_WINDOW_SIZE: 4096})
    sid = c.request("/big/1000000")
    status, headers, body, evs = c.response(sid, timeout=30)
    assert status == 200 and headers["content-length"] == "1000000"
    assert body == pattern(1000000)
    c.close()


def test_many_concurrent_streams_each_answered(gw, tls):
    c = H2Lib(gw.port(tls), tls=tls)
    sids = [c.request("/many/%d" % i) for i in range(40)]
    for i, sid in enumerate(sids):
        status, _, body, _ = c.response(sid)
        assert status == 200 and json.loads(body)["line"] == "GET /many/%d HTTP/1.1" % i
    c.close()
