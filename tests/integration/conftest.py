"""Integration test harness: starts the real tollgate binary on free loopback
ports with a temporary YAML config, against backends written here (plain
sockets and http.server), and talks to it with raw sockets, http.client and
curl. Every tollgate started is stopped at the end of its test, and its
stderr is checked for sanitizer reports."""

import collections
import atexit
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("TOLLGATE_BIN", os.path.join(ROOT, "build", "tollgate"))
SANITIZED = "sanitize" in BIN
# Sanitized builds run slower: stretch timing margins.
SLOW = 3.0 if SANITIZED else 1.0
# The GeoIP test databases that tests/geoip/mmdb_writer.py writes: read from
# $TG_GEOIP_DIR if set (`make integration-run` writes them there), else
# written once a session into a temporary directory by the geoip_dbs
# fixture, which the tests that read them request.
GEOIP_WRITER = os.path.join(ROOT, "tests", "geoip", "mmdb_writer.py")
GEOIP_FROM_ENV = bool(os.environ.get("TG_GEOIP_DIR"))
if GEOIP_FROM_ENV:
    GEOIP_DIR = os.path.abspath(os.environ["TG_GEOIP_DIR"])
else:
    GEOIP_DIR = tempfile.mkdtemp(prefix="tollgate-geoip-")
    atexit.register(shutil.rmtree, GEOIP_DIR, True)
GEOIP_FILES = ("GeoLite2-Country-Test.mmdb", "GeoIP2-Country-Test.mmdb",
               "GeoLite2-City-Test.mmdb", "GeoLite2-ASN-Test.mmdb",
               "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
               "GeoIP2-City-Test-Broken-Double-Format.mmdb")


@pytest.fixture(scope="session")
def geoip_dbs():
    """GEOIP_DIR, with the GeoIP test databases in it."""
    if not GEOIP_FROM_ENV:
        p = subprocess.run([sys.executable, GEOIP_WRITER, GEOIP_DIR],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            pytest.fail("%s failed:\n%s%s" % (GEOIP_WRITER, p.stdout, p.stderr),
                        pytrace=False)
    missing = [n for n in GEOIP_FILES if not os.path.isfile(os.path.join(GEOIP_DIR, n))]
    if missing:
        pytest.fail("GeoIP test databases missing from %s: %s (write them with "
                    "python3 %s DIR, then TG_GEOIP_DIR=DIR)"
                    % (GEOIP_DIR, ", ".join(missing), GEOIP_WRITER), pytrace=False)
    return GEOIP_DIR


# Ports handed out lately: the kernel may offer a port again once the
# probe socket is closed, before the test that asked for it binds it (a
# config's listener and its admin port would then collide).
_recent_ports = collections.deque(maxlen=512)


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _recent_ports:
            _recent_ports.append(port)
            return port


def wait_port(port, host="127.0.0.1", timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class Blackhole:
    """A port whose connects hang: a listener that never accepts, with its
    accept queue filled, so further SYNs are dropped."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        time.sleep(0.05)

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ThreadSanitizer", "UndefinedBehaviorSanitizer")


class Tollgate:
    """One tollgate process with its config file and logs."""

    def __init__(self, tmp_path, config, wait=True, check_ports=None, env=None, wrap=None):
        self.dir = tmp_path
        self.config_path = os.path.join(str(tmp_path), "tollgate.yaml")
        self.stderr_path = os.path.join(str(tmp_path), "tollgate.err")
        self.stdout_path = os.path.join(str(tmp_path), "tollgate.out")
        self.admin_port = None
        self.write_config(config)
        e = dict(os.environ)
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1")
        e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        if env:
            e.update(env)
        self.err = open(self.stderr_path, "wb")
        self.out = open(self.stdout_path, "wb")
        # `wrap`: a command that execs tollgate in the end (the pid stays
        # tollgate's), e.g. unshare into a mount namespace of its own.
        self.proc = subprocess.Popen(list(wrap or []) + [BIN, "-c", self.config_path],
                                     stdout=self.out, stderr=self.err, env=e, cwd=ROOT)
        self.stopped = False
        if wait:
            for port in (check_ports if check_ports is not None else self.ports_in(config)):
                if not wait_port(port, timeout=15 * SLOW):
                    raise RuntimeError("tollgate did not listen on %d:\n%s" % (port, self.stderr()))

    @staticmethod
    def ports_in(config):
        """The first listening port of a config (to wait for it)."""
        i = config.find("listen:")
        m = re.search(r"(?:127\.0\.0\.1|\[::1\]|localhost|0\.0\.0\.0|^|\s):(\d+)", config[i:])
        return [int(m.group(1))] if i >= 0 and m else []

    def write_config(self, config):
        # The admin listener is on 127.0.0.1:9901 unless a config says
        # otherwise, and tollgate refuses an address another process
        # listens on (issue 23): a config without `admin:` gets a port of
        # its own, kept across reloads, so that tollgates of other tests
        # (or another run on this machine) never collide there.
        if not re.search(r"^admin\s*:", config, re.M):
            if self.admin_port is None:
                self.admin_port = free_port()
            config += "\nadmin: {listen: 127.0.0.1:%d}\n" % self.admin_port
        with open(self.config_path, "w") as f:
            f.write(config)

    def stderr(self):
        if not self.err.closed:
            self.err.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def access_lines(self, wait_for=1, timeout=5.0):
        """The JSON access-log lines written so far (waits for the flush)."""
        import json
        deadline = time.time() + timeout * SLOW
        while True:
            lines = [json.loads(l) for l in self.stdout().splitlines() if l.startswith("{")]
            if len(lines) >= wait_for or time.time() > deadline:
                return lines
            time.sleep(0.1)

    def kill(self, sig):
        self.proc.send_signal(sig)

    def reload(self, config=None, expect_ok=True, timeout=10.0):
        before = self.stderr().count("configuration reloaded") + self.stderr().count("reload refused")
        if config is not None:
            self.write_config(config)
        self.kill(signal.SIGHUP)
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            log = self.stderr()
            if log.count("configuration reloaded") + log.count("reload refused") > before:
                ok = "reload refused" not in log[len(log) - 4000:] or log.rfind(
                    "configuration reloaded") > log.rfind("reload refused")
                assert ok == expect_ok, log
                time.sleep(0.2)  # let the workers apply it
                return
            time.sleep(0.02)
        raise AssertionError("no reload outcome logged:\n" + self.stderr())

    def stop(self, sig=signal.SIGTERM, timeout=40.0):
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("tollgate did not stop:\n" + self.stderr())
        self.err.close()
        self.out.close()
        self.check_sanitizers()
        return self.proc.returncode

    def check_sanitizers(self):
        log = self.stderr()
        for marker in SANITIZER_MARKERS:
            assert marker not in log, "sanitizer report:\n" + log

    def rss_kb(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except FileNotFoundError:
            pass
        return 0


@pytest.fixture
def tollgate(tmp_path):
    """Factory: tollgate(config_text) starts one; all are stopped at teardown."""
    started = []

    def start(config, **kw):
        sub = tmp_path / ("tg%d" % len(started))
        sub.mkdir()
        tg = Tollgate(sub, config, **kw)
        started.append(tg)
        return tg

    yield start
    for tg in started:
        rc = tg.stop()
        assert rc in (0, None) or tg.proc.returncode == 0 or rc == -signal.SIGKILL, \
            "tollgate exited with %s:\n%s" % (rc, tg.stderr())


def run_tollgate_check(config_text, tmp_path):
    """Runs `tollgate -t` on a config; returns (exit code, output)."""
    path = os.path.join(str(tmp_path), "check.yaml")
    with open(path, "w") as f:
        f.write(config_text)
    p = subprocess.run([BIN, "-t", "-c", path], capture_output=True, text=True, cwd=ROOT,
                       timeout=30)
    return p.returncode, p.stdout + p.stderr, path


# ---- backends --------------------------------------------------------------


class RawBackend:
    """A TCP server that hands each accepted connection to `handler(sock,
    backend)` on its own thread. Counts connections; records what it read
    when the handler uses backend.read_request()."""

    def __init__(self, handler, port=None, host="127.0.0.1"):
        self.handler = handler
        self.port = port or free_port()
        self.connections = 0
        self.requests = []
        self.lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, self.port))
        self.sock.listen(512)
        self.running = True
        self.threads = []
        self.open_socks = set()
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self):
        while self.running:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.open_socks.add(s)
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            t.start()

    def _serve(self, s):
        try:
            self.handler(s, self)
        except (OSError, ValueError):
            pass
        finally:
            with self.lock:
                self.open_socks.discard(s)
            try:
                s.close()
            except OSError:
                pass

    def record(self, req):
        with self.lock:
            self.requests.append(req)

    def close(self):
        self.running = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            for s in list(self.open_socks):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass


def read_http_request(sock, buf=b""):
    """Reads one request (head + body by Content-Length or chunked) from a
    socket. Returns (head_text, headers_dict_lower, body_bytes, rest) or None
    at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    body = b""
    if "content-length" in headers:
        n = int(headers["content-length"][0])
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        body, buf = buf[:n], buf[n:]
    elif "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        raw = b""
        while True:
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return head.decode("latin-1"), headers, body, b""
                buf += chunk
            line, _, buf = buf.partition(b"\r\n")
            raw += line + b"\r\n"
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while not buf.startswith(b"\r\n") and b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                if buf.startswith(b"\r\n"):
                    buf = buf[2:]
                else:
                    _, _, buf = buf.partition(b"\r\n\r\n")
                break
            while len(buf) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
            body += buf[:size]
            buf = buf[size + 2:]
    return head.decode("latin-1"), headers, body, buf


def requests_on(sock):
    """Yields each request (head_text, headers_dict_lower, body) a backend
    connection carries, until the peer closes."""
    rest = b""
    while True:
        r = read_http_request(sock, rest)
        if r is None:
            return
        head, headers, body, rest = r
        yield head, headers, body


def echo_handler(sock, backend):
    """Keep-alive backend: answers each request with a JSON-ish description
    of what it received (method, path, headers) and echoes the body."""
    import json
    for head, headers, body in requests_on(sock):
        backend.record((head, headers, body))
        info = {"line": head.split("\r\n")[0], "headers": headers, "body_len": len(body),
                "port": backend.port}
        payload = json.dumps(info).encode()
        if head.startswith("HEAD "):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %d\r\n\r\n"
                         % (len(payload), backend.port))
            continue
        if body:
            payload = body
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"X-Backend: %d\r\nServer: backend/1.0\r\nX-Powered-By: test\r\n"
                     b"Content-Length: %d\r\n\r\n" % (backend.port, len(payload)) + payload)
        if "close" in ",".join(headers.get("connection", [])).lower():
            return


@pytest.fixture
def backend():
    """Factory for RawBackend; closed at teardown."""
    made = []

    def make(handler=echo_handler, **kw):
        b = RawBackend(handler, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


# ---- redis -------------------------------------------------------------------


class Redis:
    """A real redis-server on a free loopback port, for one test."""

    def __init__(self, tmp_path, port=None):
        self.port = port or free_port()
        self.dir = str(tmp_path)
        self.proc = None
        self.start()

    def start(self):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(self.port, timeout=10):
            raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def cmd(self, *args):
        """Sends one command (RESP) and returns the raw reply."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        data = s.recv(65536)
        s.close()
        return data


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.stop()


# ---- clients ----------------------------------------------------------------


def raw(port, data, timeout=5.0, read_until_close=True, host="127.0.0.1"):
    """Sends bytes, returns everything read until the server closes (or the
    timeout passes)."""
    s = socket.create_connection((host, port), timeout=timeout * SLOW)
    try:
        s.sendall(data)
        out = b""
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
        return out
    finally:
        s.close()


def status_of(response_bytes):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", response_bytes)
    return int(m.group(1)) if m else None


def get(port, path="/", host="app.test", headers=None, method="GET", body=None, timeout=10.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * SLOW)
    h = {"Host": host}
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


def basic_config(listen_port, backend_ports, extra="", upstream_extra="", route_extra="",
                 hosts='[app.test, "*.app.test"]', workers=1):
    servers = ", ".join("127.0.0.1:%d" % p for p in backend_ports)
    return """
workers: %d
listen:
  - address: 127.0.0.1:%d
upstreams:
  app:
    servers: [%s]
%s
sites:
  - hosts: %s
    routes:
      - path: /
        upstream: app
%s
%s
""" % (workers, listen_port, servers, upstream_extra, hosts, route_extra, extra)
