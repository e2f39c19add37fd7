"""Helpers shared by the hardening tests (smuggling, slow clients,
exhaustion, chaos): a buffered client connection that parses responses the
way a strict client would, a recording backend that parses requests the way
a lenient origin server would, and /proc readers (CPU time, descriptors)."""

import os
import re
import socket
import threading
import time

from conftest import SLOW

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- /proc -------------------------------------------------------------------


def cpu_seconds(pid):
    """User + system CPU seconds a process has used (all its threads)."""
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    # The command name may hold spaces: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def raise_nofile(want):
    """Raises this process's soft RLIMIT_NOFILE towards `want` (bounded by
    the hard limit); returns the soft limit now in force."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---- client side ----------------------------------------------------------------


class Response:
    def __init__(self, status, reason, headers, body, interim, complete, raw):
        self.status = status
        self.reason = reason
        self.headers = headers          # list of (lower name, value)
        self.body = body
        self.interim = interim          # 1xx heads seen before it
        self.complete = complete        # framing said it ended (not cut by EOF)
        self.raw = raw

    def header(self, name, default=None):
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def all(self, name):
        return [v for k, v in self.headers if k == name]

    @property
    def closes(self):
        return "close" in ",".join(self.all("connection")).lower()

    def __repr__(self):
        return "Response(%r, %r, body=%r, complete=%r)" % (
            self.status, self.headers, self.body[:80], self.complete)


class Malformed(Exception):
    """The gateway sent bytes that do not parse as an HTTP/1.1 response."""


STATUS_RE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\Z")


class Client:
    """A keep-alive client connection with its own input buffer, so that
    bytes after one response are kept for the next (and can be checked)."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, source=None):
        kw = {"source_address": (source, 0)} if source else {}
        self.sock = socket.create_connection((host, port), timeout=timeout * SLOW, **kw)
        self.buf = b""
        self.received = b""  # every byte the server sent, for marker checks
        self.eof = False
        self.reset = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        if self.eof:
            return False
        left = deadline - time.time()
        if left <= 0:
            raise socket.timeout("no more bytes in time")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
            self.reset = True
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        self.received += chunk
        return True

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                return None
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_response(self, method="GET", timeout=5.0):
        """Parses one response (1xx heads are collected on the way). Returns
        None when the connection ended before any byte of it; raises
        Malformed for bytes that are not a response."""
        deadline = time.time() + timeout * SLOW
        interim = []
        consumed = b""
        while True:
            if not self.buf and not self._fill(deadline):
                if interim:
                    raise Malformed("connection ended after interim responses %r" % interim)
                return None
            while b"\r\n\r\n" not in self.buf:
                if len(self.buf) > 65536:
                    raise Malformed("head too large: %r" % self.buf[:200])
                if not self._fill(deadline):
                    raise Malformed("connection ended inside a response head: %r" % self.buf[:300])
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            consumed += head + b"\r\n\r\n"
            lines = head.split(b"\r\n")
            m = STATUS_RE.match(lines[0])
            if not m:
                raise Malformed("not a status line: %r" % lines[0][:200])
            status = int(m.group(1))
            headers = []
            for line in lines[1:]:
                if b":" not in line or line[:1] in (b" ", b"\t"):
                    raise Malformed("bad header line %r" % line)
                k, _, v = line.partition(b":")
                if k != k.strip() or not k or any(c < 0x21 or c > 0x7e for c in k):
                    raise Malformed("bad header name %r" % k)
                if any(c < 0x20 and c != 9 or c == 0x7f for c in v):
                    raise Malformed("control byte in header value %r" % line)
                headers.append((k.decode("latin-1").lower(), v.strip(b" \t").decode("latin-1")))
            if 100 <= status < 200 and status != 101:
                interim.append((status, headers))
                continue
            break
        resp = Response(status, (m.group(2) or b"").decode("latin-1"), headers, b"", interim,
                        True, b"")
        te = ",".join(resp.all("transfer-encoding")).lower()
        cls = resp.all("content-length")
        if method == "HEAD" or status in (101, 204, 304):
            body, complete = b"", True
        elif te:
            if te.replace(" ", "") != "chunked":
                raise Malformed("transfer-encoding %r" % te)
            if cls:
                raise Malformed("both Content-Length and Transfer-Encoding")
            body, complete = self._chunked(deadline)
        elif cls:
            if len(cls) > 1 or not cls[0].isdigit():
                raise Malformed("content-length %r" % cls)
            n = int(cls[0])
            while len(self.buf) < n:
                if not self._fill(deadline):
                    break
            body, self.buf = self.buf[:n], self.buf[n:]
            complete = len(body) == n
        else:
            # Delimited by the end of the connection: read until it ends, or
            # until it has been quiet for a second (then it is not complete).
            try:
                while self._fill(min(deadline, time.time() + 1.0 * SLOW)):
                    pass
            except socket.timeout:
                pass
            body, self.buf, complete = self.buf, b"", self.eof
        resp.body = body
        resp.complete = complete
        resp.raw = consumed
        return resp

    def _chunked(self, deadline):
        body = b""
        while True:
            line = self._line(deadline)
            if line is None:
                return body, False
            size_s = line.split(b";", 1)[0]
            if not size_s or any(c not in b"0123456789abcdefABCDEF" for c in size_s):
                raise Malformed("bad chunk size line %r" % line)
            size = int(size_s, 16)
            if size == 0:
                while True:
                    t = self._line(deadline)
                    if t is None:
                        return body, False
                    if t == b"":
                        return body, True
            while len(self.buf) < size + 2:
                if not self._fill(deadline):
                    return body + self.buf[:size], False
            if self.buf[size:size + 2] != b"\r\n":
                raise Malformed("chunk data not followed by CRLF")
            body += self.buf[:size]
            self.buf = self.buf[size + 2:]

    def wait_closed(self, timeout=3.0):
        """True if the server closes the connection (EOF or reset) within
        the timeout; the bytes it sent meanwhile stay in self.buf."""
        deadline = time.time() + timeout * SLOW
        try:
            while self._fill(deadline):
                pass
        except socket.timeout:
            return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def simple_get(port, path="/", host="app.test", timeout=5.0, source=None):
    """One GET on a fresh connection; returns (status, seconds) or
    (None, seconds) on a connection error."""
    t0 = time.time()
    try:
        c = Client(port, timeout=timeout, source=source)
        c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
               % (path.encode(), host.encode()))
        r = c.read_response(timeout=timeout)
        c.close()
        return (r.status if r else None), time.time() - t0
    except (OSError, Malformed):
        return None, time.time() - t0


# ---- backend side -----------------------------------------------------------------


class Recorder:
    """What a recording backend saw: complete requests in order, requests
    cut short by the gateway (partial), and bytes that did not parse as a
    request at all (anomalies)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.complete = []   # (method, target, headers dict lower -> [values], body)
        self.partial = []    # (head or b"", why)
        self.anomalies = []  # (why, bytes)
        self.connections = 0

    def reset(self):
        with self.lock:
            self.complete.clear()
            self.partial.clear()
            self.anomalies.clear()

    def targets(self):
        with self.lock:
            return [t for _, t, _, _ in self.complete]


class LenientReader:
    """Reads requests off a socket as a typical, lenient origin server
    would (so that anything the gateway lets through ambiguously shows up
    here as an extra request): CRLF or bare LF line ends, the last
    Content-Length, chunked when any Transfer-Encoding mentions it."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def _line(self):
        while b"\n" not in self.buf:
            if not self._fill():
                return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line[:-1] if line.endswith(b"\r") else line

    def read(self, on_expect=None):
        """Returns ("ok", method, target, headers, body), ("eof",),
        ("partial", why, head) or ("anomaly", why, bytes)."""
        while not self.buf:
            if not self._fill():
                return ("eof",)
        first = self._line()
        if first is None:
            return ("partial", "eof in request line", self.buf)
        parts = first.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return ("anomaly", "bad request line", first + b"\n" + self.buf[:200])
        method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
        headers = {}
        while True:
            line = self._line()
            if line is None:
                return ("partial", "eof in head", first)
            if line == b"":
                break
            k, sep, v = line.partition(b":")
            if not sep:
                return ("anomaly", "header without colon", line)
            headers.setdefault(k.strip().decode("latin-1").lower(), []).append(
                v.strip().decode("latin-1"))
        if on_expect and "100-continue" in ",".join(headers.get("expect", [])).lower():
            on_expect()
        body = b""
        te = ",".join(headers.get("transfer-encoding", [])).lower()
        if "chunked" in te:
            while True:
                line = self._line()
                if line is None:
                    return ("partial", "eof in chunk size", first)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    return ("anomaly", "bad chunk size", line)
                if size == 0:
                    while True:
                        t = self._line()
                        if t is None:
                            return ("partial", "eof in trailer", first)
                        if t == b"":
                            break
                    break
                while len(self.buf) < size:
                    if not self._fill():
                        return ("partial", "eof in chunk data", first)
                body += self.buf[:size]
                self.buf = self.buf[size:]
                if self._line() is None:
                    return ("partial", "eof after chunk data", first)
        elif "content-length" in headers:
            try:
                n = int(headers["content-length"][-1])
            except ValueError:
                return ("anomaly", "bad content-length", first)
            while len(self.buf) < n:
                if not self._fill():
                    return ("partial", "eof in body (%d of %d)" % (len(self.buf), n), first)
            body, self.buf = self.buf[:n], self.buf[n:]
        return ("ok", method, target, headers, body)


def recording_handler(rec):
    """Backend handler: keep-alive, records every request it parses with
    LenientReader and answers 200 naming the target and the body length:
    `X-Seen: TARGET`, `X-Seen-Body: N`, body `seen TARGET`."""

    def handler(sock, be):
        with rec.lock:
            rec.connections += 1
        reader = LenientReader(sock)
        while True:
            try:
                r = reader.read(on_expect=lambda: sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n"))
            except OSError:
                return
            if r[0] == "eof":
                return
            if r[0] == "partial":
                with rec.lock:
                    rec.partial.append((r[2], r[1]))
                return
            if r[0] == "anomaly":
                with rec.lock:
                    rec.anomalies.append((r[1], r[2]))
                return
            _, method, target, headers, body = r
            with rec.lock:
                rec.complete.append((method, target, headers, body))
            payload = b"seen " + target.encode("latin-1")
            sock.sendall(b"HTTP/1.1 200 OK\r\nX-Seen: %s\r\nX-Seen-Method: %s\r\n"
                         b"X-Seen-Body: %d\r\nContent-Length: %d\r\n\r\n%s"
                         % (target.encode("latin-1"), method.encode("latin-1"), len(body),
                            len(payload), payload))
    return handler
