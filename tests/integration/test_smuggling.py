"""Request smuggling and response desynchronisation matrix.

Request side: each case is raw bytes sent to tollgate in front of a backend
that parses what it gets the way a lenient origin server would
(hardening_util.LenientReader: bare LF accepted, the last Content-Length
wins, chunked when any Transfer-Encoding says so), so anything tollgate lets
through ambiguously shows up there as an extra or different request. For
each case either

  - the client gets the expected refusal (400, or 408/413/404/501/505 where
    that is the right answer), the connection closes when the framing was in
    doubt, and the backend never saw a complete request; or
  - exactly one request reached the backend, with the method, target and
    body tollgate framed, and nothing else;

and in no case does a request whose target contains "smuggled" reach the
backend. When the connection stays open, a follow-up request on it must get
its own response (the client is not desynchronised). Targets carry a tag
per case (/aa, /ab, ...), so a late arrival from one case cannot pass for
another's.

Response side: a hostile backend answers the first of two pipelined
requests with broken framing; the client must get a 502 or a visibly cut
response, and never the backend's leftover bytes as the next response: the
second response is the backend's real answer to the second request, or a
502. Test ids read as a table: side-group-case=expected."""

import socket
import time

import pytest

from conftest import SLOW, RawBackend, Tollgate, basic_config, free_port
from hardening_util import (Client, LenientReader, Malformed, Recorder,
                            recording_handler)

# ---- request side ------------------------------------------------------------------

H = b"Host: app.test\r\n"
SMUGGLE = b"GET {t}-smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"
NEXT = b"GET {t}-next HTTP/1.1\r\nHost: app.test\r\n\r\n"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"


def req(headers=b"", body=b"", method=b"POST", target=b"{t}", version=b"HTTP/1.1", host=H):
    return method + b" " + target + b" " + version + b"\r\n" + host + headers + b"\r\n" + body


def cl(n):
    return b"Content-Length: %d\r\n" % n


TE = b"Transfer-Encoding: chunked\r\n"


class Reject:
    """Refused with one of `statuses`; `close`: the connection must close
    after the answer; `partial_ok`: tollgate may have started streaming the
    request to the backend before the fault showed (the backend then sees
    an aborted request, never a complete one)."""

    def __init__(self, *statuses, close=True, partial_ok=False):
        self.statuses = statuses
        self.close = close
        self.partial_ok = partial_ok

    def __str__(self):
        return "/".join(str(s) for s in self.statuses)


class Forward:
    """Exactly one request reaches the backend with this method and body."""

    def __init__(self, body, method="POST", close=False):
        self.body = body
        self.method = method
        self.close = close

    def __str__(self):
        return "fwd"


class Pipeline:
    """Several well-framed requests in a row: each reaches the backend once,
    in order, and each gets its own response (suffixes of the case target)."""

    def __init__(self, *suffixes):
        self.suffixes = suffixes

    def __str__(self):
        return "pipe%d" % len(self.suffixes)


R400 = Reject(400)
R400_501 = Reject(400, 501)

REQUEST_CASES = [
    # CL.TE and TE.CL: both framings present.
    ("cl.te", "cl-then-te", req(cl(6) + TE, b"0\r\n\r\nG"), R400),
    ("cl.te", "cl-then-te-hidden-get", req(cl(5 + len(SMUGGLE)) + TE, b"0\r\n\r\n" + SMUGGLE), R400),
    ("te.cl", "te-then-cl", req(TE + cl(3), b"8\r\nSMUGGLED\r\n0\r\n\r\n"), R400),
    ("te.cl", "te-then-cl-zero", req(TE + cl(0), b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLE), SMUGGLE)), R400),
    # TE.TE: Transfer-Encoding obfuscated so that one parser sees it and another does not.
    ("te.te", "leading-spaces", req(b"Transfer-Encoding:   chunked\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "trailing-spaces", req(b"Transfer-Encoding: chunked   \r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "tab-before-value", req(b"Transfer-Encoding:\tchunked\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "vtab-before-value", req(b"Transfer-Encoding:\x0bchunked\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "vtab-after-value", req(b"Transfer-Encoding: chunked\x0b\r\n", CHUNKED_HELLO), R400),
    ("te.te", "formfeed", req(b"Transfer-Encoding:\x0cchunked\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "upper-case-with-cl", req(b"TRANSFER-ENCODING: CHUNKED\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "chunked-identity", req(b"Transfer-Encoding: chunked, identity\r\n", CHUNKED_HELLO), R400_501),
    ("te.te", "identity-chunked", req(b"Transfer-Encoding: identity, chunked\r\n", CHUNKED_HELLO), R400_501),
    ("te.te", "duplicate-te", req(TE + TE, CHUNKED_HELLO), R400_501),
    ("te.te", "chunked-then-identity", req(TE + b"Transfer-Encoding: identity\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "obs-fold-value", req(b"Transfer-Encoding:\r\n chunked\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "obs-fold-split-token", req(b"Transfer-Encoding: chun\r\n ked\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "quoted-chunked", req(b'Transfer-Encoding: "chunked"\r\n' + cl(4), CHUNKED_HELLO), R400_501),
    ("te.te", "x-chunked", req(b"Transfer-Encoding: x-chunked\r\n" + cl(4), CHUNKED_HELLO), R400_501),
    ("te.te", "underscore-name", req(b"Transfer_Encoding: chunked\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "space-before-colon", req(b"Transfer-Encoding : chunked\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "empty-value", req(b"Transfer-Encoding: \r\n" + cl(5), b"hello"), R400),
    ("te.te", "trailing-comma", req(b"Transfer-Encoding: chunked,\r\n", CHUNKED_HELLO), R400_501),
    ("te.te", "parameter", req(b"Transfer-Encoding: chunked;q=1\r\n", CHUNKED_HELLO), R400_501),
    ("te.te", "nul-after-value", req(b"Transfer-Encoding: chunked\x00\r\n" + cl(4), CHUNKED_HELLO), R400),
    ("te.te", "mixed-case-alone", req(b"Transfer-Encoding: ChUnKeD\r\n", CHUNKED_HELLO), Forward(b"hello")),
    ("te.te", "ows-alone", req(b"Transfer-Encoding: \t chunked \t\r\n", CHUNKED_HELLO), Forward(b"hello")),
    ("te.te", "connection-lists-te", req(b"Connection: Transfer-Encoding\r\n" + TE, CHUNKED_HELLO), Forward(b"hello")),
    # Content-Length variants.
    ("cl", "duplicate-other-case", req(cl(5) + b"content-length: 5\r\n", b"hello"), R400),
    ("cl", "zero-then-more", req(cl(0) + cl(len(SMUGGLE)), SMUGGLE), R400),
    ("cl", "signed-plus", req(b"Content-Length: +5\r\n", b"hello"), R400),
    ("cl", "signed-minus-zero", req(b"Content-Length: -0\r\n" + cl(len(SMUGGLE)), SMUGGLE), R400),
    ("cl", "space-inside", req(b"Content-Length: 1 0\r\n", b"0123456789"), R400),
    ("cl", "hex-0x", req(b"Content-Length: 0x0a\r\n", b"0123456789"), R400),
    ("cl", "decimal", req(b"Content-Length: 5.0\r\n", b"hello"), R400),
    ("cl", "hex-letters", req(b"Content-Length: a\r\n", b"0123456789"), R400),
    ("cl", "empty", req(b"Content-Length: \r\n", b"hello"), R400),
    ("cl", "2^64", req(b"Content-Length: 18446744073709551616\r\n", b"hello"), R400),
    ("cl", "int64-max+1", req(b"Content-Length: 9223372036854775808\r\n", b"hello"), R400),
    ("cl", "20-digits", req(b"Content-Length: 00000000000000000005\r\n", b"hello"), R400),
    ("cl", "huge-valid-over-max-body", req(b"Content-Length: 9223372036854775807\r\n", b"hello"), Reject(413)),
    ("cl", "underscore-name", req(b"Content_Length: %d\r\n" % len(SMUGGLE), SMUGGLE), R400),
    ("cl", "nul-in-value", req(b"Content-Length: 5\x00\r\n", b"hello"), R400),
    ("cl", "leading-zeros", req(b"Content-Length: 00005\r\n", b"hello"), Forward(b"hello")),
    ("cl", "ows-around", req(b"Content-Length: \t5 \t\r\n", b"hello"), Forward(b"hello")),
    ("cl", "connection-lists-cl",
     req(b"Connection: Content-Length\r\n" + cl(len(SMUGGLE)), SMUGGLE), Forward(SMUGGLE)),
    # Chunk sizes, extensions and data.
    ("chunk", "17-hex-digits", req(TE, b"00000000000000005\r\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "2^64", req(TE, b"10000000000000000\r\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "2^64-1", req(TE, b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "2^64+5-wraps-to-5", req(TE, b"10000000000000005\r\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "0x-prefix", req(TE, b"0x5\r\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "negative", req(TE, b"-5\r\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "leading-space", req(TE, b" 5\r\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "trailing-space", req(TE, b"5 \r\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "ext-valid", req(TE, b"5;name=value\r\nhello\r\n0;last\r\n\r\n"), Forward(b"hello")),
    ("chunk", "ext-quoted", req(TE, b'5;a="b;c\\"d"\r\nhello\r\n0\r\n\r\n'), Forward(b"hello")),
    ("chunk", "ext-bare-semicolon", req(TE, b"5;\r\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "ext-spaces", req(TE, b"5 ; a = b\r\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "ext-quoted-cr", req(TE, b'5;a="x\ry"\r\nhello\r\n0\r\n\r\n'), R400),
    ("chunk", "ext-bare-lf", req(TE, b"5;a=b\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "data-shorter", req(TE, b"5\r\nabc\r\n0\r\n\r\n"), Reject(400, partial_ok=True)),
    ("chunk", "data-longer", req(TE, b"3\r\nabcde\r\n0\r\n\r\n"), Reject(400, partial_ok=True)),
    ("chunk", "no-final-crlf-then-get", req(TE, b"5\r\nhello\r\n0\r\n" + SMUGGLE), Reject(400, partial_ok=True)),
    ("chunk", "no-final-crlf-stall", req(TE, b"5\r\nhello\r\n0\r\n"), Reject(408, partial_ok=True)),
    ("chunk", "bare-lf-after-size", req(TE, b"5\nhello\r\n0\r\n\r\n"), R400),
    ("chunk", "bare-lf-after-data", req(TE, b"5\r\nhello\n0\r\n\r\n"), Reject(400, partial_ok=True)),
    ("chunk", "bare-cr-after-size", req(TE, b"5\rhello\r\n0\r\n\r\n"), R400),
    ("chunk", "last-chunk-bare-lfs", req(TE, b"5\r\nhello\r\n0\n\n"), Reject(400, partial_ok=True)),
    ("chunk", "trailer-field", req(TE, b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"), Forward(b"hello")),
    ("chunk", "upper-hex-leading-zeros", req(TE, b"000A\r\n0123456789\r\n0\r\n\r\n"), Forward(b"0123456789")),
    ("chunk", "hidden-request-in-data",
     req(TE, b"%x\r\n0\r\n\r\n%s\r\n0\r\n\r\n" % (5 + len(SMUGGLE), SMUGGLE)), Forward(b"0\r\n\r\n" + SMUGGLE)),
    # Line endings in the head.
    ("eol", "bare-lf-between-fields", req(b"X-A: b\nX-B: c\r\n", method=b"GET"), R400),
    ("eol", "bare-cr-after-request-line", b"GET {t} HTTP/1.1\rHost: app.test\r\n\r\n", R400),
    ("eol", "cr-cr-lf", b"GET {t} HTTP/1.1\r\r\nHost: app.test\r\n\r\n", R400),
    ("eol", "bare-lf-ends-head", b"GET {t} HTTP/1.1\r\nHost: app.test\r\n\n", R400),
    ("eol", "all-bare-lf-with-cl", b"POST {t} HTTP/1.1\nHost: app.test\nContent-Length: 0\n\n" + SMUGGLE, R400),
    # NUL bytes.
    ("nul", "header-name", req(b"X-A\x00B: c\r\n", method=b"GET"), R400),
    ("nul", "request-target", b"GET {t}\x00x HTTP/1.1\r\n" + H + b"\r\n", R400),
    ("nul", "method", b"G\x00ET {t} HTTP/1.1\r\n" + H + b"\r\n", R400),
    ("nul", "version", b"GET {t} HTTP/1.1\x00\r\n" + H + b"\r\n", R400),
    # Request-line oddities.
    ("line", "two-spaces-before-version", b"GET {t}  HTTP/1.1\r\n" + H + b"\r\n", R400),
    ("line", "tab-separator", b"GET\t{t} HTTP/1.1\r\n" + H + b"\r\n", R400),
    ("line", "leading-space", b" GET {t} HTTP/1.1\r\n" + H + b"\r\n", R400),
    ("line", "http/1.2", b"GET {t} HTTP/1.2\r\n" + H + b"\r\n", Reject(505)),
    ("line", "http/1.10", b"GET {t} HTTP/1.10\r\n" + H + b"\r\n", Reject(400, 505)),
    ("line", "http/0.9", b"GET {t}\r\n\r\n", Reject(400, 505)),
    ("line", "lowercase-method", req(method=b"get"), Forward(b"", method="get")),
    ("line", "absolute-form-unknown-host", b"GET http://evil.test{t} HTTP/1.1\r\nHost: evil.test\r\n\r\n",
     Reject(404, close=False)),
    ("line", "absolute-form-other-host", b"GET http://evil.test{t} HTTP/1.1\r\n" + H + b"\r\n", R400),
    ("line", "at-in-absolute-authority", b"GET http://app.test@evil.test{t} HTTP/1.1\r\n" + H + b"\r\n", R400),
    ("line", "at-in-host-header", req(method=b"GET", host=b"Host: evil.test@app.test\r\n"), R400),
    ("line", "fragment", b"GET {t}#frag HTTP/1.1\r\n" + H + b"\r\n", R400),
    # HTTP/1.0.
    ("http10", "keep-alive-with-body",
     req(b"Connection: keep-alive\r\n" + cl(5), b"hello", version=b"HTTP/1.0"), Forward(b"hello")),
    ("http10", "body-without-length", req(b"", SMUGGLE, version=b"HTTP/1.0"), Forward(b"", close=True)),
    # Expect: 100-continue with a Content-Length that does not match.
    ("expect", "cl-longer-than-body", req(b"Expect: 100-continue\r\n" + cl(10), b"hello"),
     Reject(408, partial_ok=True)),
    ("expect", "cl-shorter-than-body", req(b"Expect: 100-continue\r\n" + cl(5), b"hello" + NEXT),
     Pipeline("", "-next")),
    # Bodies that hide a request, GET with a body, pipelining.
    ("body", "get-with-body", req(cl(5), b"hello", method=b"GET"), Forward(b"hello", method="GET")),
    ("body", "get-hiding-request", req(cl(len(SMUGGLE)), SMUGGLE, method=b"GET"), Forward(SMUGGLE, method="GET")),
    ("body", "post-hiding-request", req(cl(len(SMUGGLE)), SMUGGLE), Forward(SMUGGLE)),
    ("body", "cl-zero-then-pipelined", req(cl(0)) + NEXT, Pipeline("", "-next")),
    ("body", "chunked-then-pipelined", req(TE, CHUNKED_HELLO) + NEXT, Pipeline("", "-next")),
    ("body", "pipelined-after-connection-close", req(b"Connection: close\r\n" + cl(5), b"hello") + SMUGGLE,
     Forward(b"hello", close=True)),
    ("body", "h2c-upgrade-with-body",
     req(b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
         + cl(5), b"hello"), Forward(b"hello")),
    ("body", "websocket-upgrade-with-body",
     req(b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
         b"Sec-WebSocket-Version: 13\r\n" + cl(5), b"hello", method=b"GET"), Forward(b"hello", method="GET")),
    # Field lines without a name.
    ("field", "colon-only", req(b":\r\n", method=b"GET"), R400),
    ("field", "colon-value", req(b": value\r\n", method=b"GET"), R400),
    ("field", "no-colon", req(b"X-A\r\n", method=b"GET"), R400),
    ("field", "space-in-name", req(b"X A: b\r\n", method=b"GET"), R400),
]

# Known tollgate bugs, pinned until fixed: "group/name" -> diagnosis.
REQUEST_BUGS = {
    # Fixed: Content-Length listed in Connection was dropped while the body
    # was still forwarded by it (a smuggled second request).
}


def _case_params(cases, bugs, side):
    params = []
    for i, (group, name, data, expect) in enumerate(cases):
        cid = "%s-%03d-%s-%s=%s" % (side, i, group, name, expect)
        marks = []
        if group + "/" + name in bugs:
            marks.append(pytest.mark.xfail(strict=True, reason="BUG: " + bugs[group + "/" + name]))
        params.append(pytest.param(i, group, name, data, expect, id=cid, marks=marks))
    return params


CLIENT = """
client:
  header_timeout: 3s
  body_timeout: 1s
  max_body: 1MiB
"""


@pytest.fixture(scope="module")
def request_gateway(tmp_path_factory):
    rec = Recorder()
    be = RawBackend(recording_handler(rec))
    port = free_port()
    tg = Tollgate(tmp_path_factory.mktemp("smuggling-req"),
                  basic_config(port, [be.port], extra=CLIENT,
                               upstream_extra="    read_timeout: 3s"))
    yield port, rec, tg
    rc = tg.stop()
    be.close()
    assert rc == 0, tg.stderr()


def test_request_matrix_size():
    assert len(REQUEST_CASES) >= 40
    assert len(set((g, n) for g, n, _, _ in REQUEST_CASES)) == len(REQUEST_CASES)


@pytest.mark.parametrize("idx,group,name,data,expect", _case_params(REQUEST_CASES, REQUEST_BUGS, "req"))
def test_request_framing(request_gateway, idx, group, name, data, expect):
    port, rec, tg = request_gateway
    assert tg.proc.poll() is None, "tollgate died:\n" + tg.stderr()[-3000:]
    # Three characters, like the "{t}" it replaces, so lengths computed
    # over the template stay right.
    tag = "/" + chr(97 + idx // 26) + chr(97 + idx % 26)
    data = data.replace(b"{t}", tag.encode())
    rec.reset()
    c = Client(port, timeout=8)
    try:
        c.send(data)
        resps = []
        n_expected = len(expect.suffixes) if isinstance(expect, Pipeline) else 1
        for _ in range(n_expected):
            r = c.read_response(timeout=8)
            assert r is not None, "connection closed without an answer (%r)" % c.received[:300]
            resps.append(r)
            if r.closes:
                break
        first = resps[0]
        ours = lambda: [x for x in rec.complete if x[1].startswith(tag)]  # noqa: E731

        if isinstance(expect, Reject):
            assert first.status in expect.statuses, first
            assert first.header("x-seen") is None, "a backend answer came back: %r" % first
        elif isinstance(expect, Forward):
            assert first.status == 200, first
            assert first.header("x-seen") == tag, first
            assert first.header("x-seen-method") == expect.method
            assert int(first.header("x-seen-body")) == len(expect.body), first
        else:
            assert [r.status for r in resps] == [200] * n_expected, resps
            assert [r.header("x-seen") for r in resps] == [tag + s for s in expect.suffixes], resps

        # The connection: closed when it must be, never left with stray bytes,
        # and when open, a follow-up request gets its own answer.
        must_close = getattr(expect, "close", False)
        if must_close:
            assert resps[-1].closes, resps[-1]
        if resps[-1].closes:
            assert c.wait_closed(timeout=3), "Connection: close but the connection stayed open"
            assert c.buf == b"", "bytes after a final response: %r" % c.buf[:200]
        else:
            follow = "/followup%02d" % idx
            c.send(b"GET %s HTTP/1.1\r\nHost: app.test\r\n\r\n" % follow.encode())
            r = c.read_response(timeout=8)
            assert r is not None and r.status == 200 and r.header("x-seen") == follow, \
                "desynchronised: follow-up got %r" % (r,)

        time.sleep(0.05)
        with rec.lock:
            complete = list(rec.complete)
            partial = list(rec.partial)
            anomalies = list(rec.anomalies)
        assert not anomalies, "backend got bytes that are not a request: %r" % anomalies
        assert not [x for x in complete if "smuggled" in x[1]], \
            "a smuggled request reached the backend: %r" % complete
        assert not [x for x in complete if not x[1].startswith((tag, "/followup%02d" % idx))], \
            "the backend saw requests of no one's: %r" % complete
        mine = ours()
        if isinstance(expect, Reject):
            assert mine == [], "refused, yet the backend saw: %r" % mine
            if not expect.partial_ok:
                assert not [p for p in partial if tag.encode() in p[0]], partial
        elif isinstance(expect, Forward):
            assert len(mine) == 1, "expected exactly one request, backend saw %r" % mine
            method, target, headers, body = mine[0]
            want = expect.body.replace(b"{t}", tag.encode())
            assert (method, target, body) == (expect.method, tag, want), mine[0]
            # The framing the backend was given is unambiguous.
            assert not ("content-length" in headers and "transfer-encoding" in headers), headers
            assert len(headers.get("content-length", [])) <= 1, headers
            assert len(headers.get("transfer-encoding", [])) <= 1, headers
        else:
            assert [t for _, t, _, _ in mine] == [tag + s for s in expect.suffixes], mine
    finally:
        c.close()


# ---- response side -----------------------------------------------------------------

FAKE = b"HTTP/1.1 200 OK\r\nX-Fake: 1\r\nContent-Length: 4\r\n\r\nevil"
REAL_SECOND = b"HTTP/1.1 200 OK\r\nX-Real: second\r\nContent-Length: 11\r\n\r\nreal-second"


def resp(head_fields=b"", body=b"", status_line=b"HTTP/1.1 200 OK"):
    return status_line + b"\r\n" + head_fields + b"\r\n" + body


class Bad:
    """The first response must be a 502 from tollgate."""
    def __str__(self):
        return "502"


class Cut:
    """The head may have gone out, but the client must see the connection
    close before anything that looks like a complete response."""
    def __str__(self):
        return "cut"


class Passed:
    """Forwarded as the backend framed it: this status and body."""

    def __init__(self, status, body, interim=()):
        self.status = status
        self.body = body
        self.interim = interim

    def __str__(self):
        return str(self.status)


class Either:
    """A 502 or a cut connection, both safe."""
    def __str__(self):
        return "502|cut"


# (group, name, chunks [(bytes, pause after)], expectation, options)
RESPONSE_CASES = [
    ("cl", "duplicate-same", [(resp(b"Content-Length: 4\r\nContent-Length: 4\r\n", b"evil"), 0)], Bad(), {}),
    ("cl", "duplicate-differing", [(resp(b"Content-Length: 4\r\nContent-Length: 40\r\n", b"evil"), 0)], Bad(), {}),
    ("cl", "signed", [(resp(b"Content-Length: +4\r\n", b"evil"), 0)], Bad(), {}),
    ("cl", "underscore-name", [(resp(b"Content_Length: 4\r\n", b"evil"), 0)], Bad(), {}),
    ("cl", "space-before-colon", [(resp(b"Content-Length : 4\r\n", b"evil"), 0)], Bad(), {}),
    ("te", "cl-and-te", [(resp(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"4\r\nevil\r\n0\r\n\r\n"), 0)],
     Bad(), {}),
    ("te", "not-chunked", [(resp(b"Transfer-Encoding: gzip\r\n", b"evil"), 0)], Bad(), {"close": True}),
    ("te", "chunked-not-last", [(resp(b"Transfer-Encoding: chunked, gzip\r\n", b"4\r\nevil\r\n0\r\n\r\n"), 0)],
     Bad(), {}),
    ("te", "connection-lists-te", [(resp(b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n",
                                          b"2\r\nok\r\n0\r\n\r\n"), 0)], Passed(200, b"ok"), {}),
    ("te", "chunked-in-http/1.0", [(resp(b"Transfer-Encoding: chunked\r\n", b"4\r\nevil\r\n0\r\n\r\n",
                                         status_line=b"HTTP/1.0 200 OK"), 0)], Bad(), {}),
    ("chunk", "invalid-size", [(resp(b"Transfer-Encoding: chunked\r\n", b"zz\r\nevil\r\n0\r\n\r\n"), 0)], Cut(), {}),
    ("chunk", "size-overflow", [(resp(b"Transfer-Encoding: chunked\r\n", b"10000000000000004\r\nevil\r\n0\r\n\r\n"), 0)],
     Cut(), {}),
    ("chunk", "data-longer", [(resp(b"Transfer-Encoding: chunked\r\n", b"2\r\nevil\r\n0\r\n\r\n"), 0)], Cut(), {}),
    ("chunk", "bare-lf-size", [(resp(b"Transfer-Encoding: chunked\r\n", b"4\nevil\r\n0\r\n\r\n"), 0)], Cut(), {}),
    ("chunk", "invalid-size-after-good-chunk",
     [(resp(b"Transfer-Encoding: chunked\r\n", b"2\r\nok\r\n"), 0.2), (b"zz\r\nevil\r\n0\r\n\r\n", 0)], Cut(), {}),
    ("head", "bare-lf-status-line", [(b"HTTP/1.1 200 OK\nContent-Length: 4\r\n\r\nevil", 0)], Bad(), {}),
    ("head", "nul-in-value", [(resp(b"X-A: a\x00b\r\nContent-Length: 4\r\n", b"evil"), 0)], Bad(), {}),
    ("head", "nul-in-name", [(resp(b"X-\x00A: b\r\nContent-Length: 4\r\n", b"evil"), 0)], Bad(), {}),
    ("head", "obs-fold", [(resp(b"X-A: a\r\n b\r\nContent-Length: 4\r\n", b"evil"), 0)], Bad(), {}),
    ("head", "two-digit-status", [(resp(b"Content-Length: 4\r\n", b"evil", status_line=b"HTTP/1.1 20 OK"), 0)],
     Bad(), {}),
    ("head", "http/2-status-line", [(resp(b"Content-Length: 4\r\n", b"evil", status_line=b"HTTP/2 200"), 0)],
     Bad(), {}),
    ("1xx", "100-with-body", [(resp(b"Content-Length: 4\r\n", b"evil", status_line=b"HTTP/1.1 100 Continue")
                               + resp(b"Content-Length: 2\r\n", b"ok"), 0)], Either(), {}),
    ("1xx", "103-then-200", [(resp(b"Link: </s.css>; rel=preload\r\n", status_line=b"HTTP/1.1 103 Early Hints")
                              + resp(b"Content-Length: 2\r\n", b"ok"), 0)], Passed(200, b"ok", (103,)), {}),
    ("extra", "204-with-body", [(resp(b"Content-Length: %d\r\n" % len(FAKE), FAKE,
                                      status_line=b"HTTP/1.1 204 No Content"), 0)], Passed(204, b""), {}),
    ("extra", "304-with-body", [(resp(b"Content-Length: %d\r\n" % len(FAKE), FAKE,
                                      status_line=b"HTTP/1.1 304 Not Modified"), 0)], Passed(304, b""), {}),
    ("extra", "more-than-cl", [(resp(b"Content-Length: 2\r\n", b"ok" + FAKE), 0)], Passed(200, b"ok"), {}),
    ("extra", "more-than-cl-chunked", [(resp(b"Transfer-Encoding: chunked\r\n", b"2\r\nok\r\n0\r\n\r\n" + FAKE), 0)],
     Passed(200, b"ok"), {}),
    ("extra", "more-than-cl-later", [(resp(b"Content-Length: 2\r\n", b"ok"), 0.3), (FAKE, 0)], Passed(200, b"ok"),
     {"sequential": 0.8}),
    ("extra", "head-response-with-body", [(resp(b"Content-Length: %d\r\n" % len(FAKE), FAKE), 0)],
     Passed(200, b""), {"method": "HEAD"}),
    ("extra", "connection-lists-cl", [(resp(b"Connection: Content-Length\r\nContent-Length: 2\r\n", b"ok"), 0)],
     Passed(200, b"ok"), {}),
    ("101", "not-requested", [(resp(b"Upgrade: websocket\r\nConnection: Upgrade\r\n", FAKE,
                                    status_line=b"HTTP/1.1 101 Switching Protocols"), 0)], Bad(), {}),
    ("101", "upgrade-header-missing", [(resp(b"Connection: Upgrade\r\n", FAKE,
                                             status_line=b"HTTP/1.1 101 Switching Protocols"), 0)], Bad(),
     {"upgrade": True}),
]

RESPONSE_BUGS = {
    # Fixed: the backend's Content-Length listed in its Connection header
    # was dropped while the body was still forwarded (a desync).
}


class HostileBackend:
    """Answers /r/NN with case NN's bytes, /second with REAL_SECOND; keeps
    reading the connection after a hostile answer (so a reused connection
    would carry the next request here, behind the leftovers)."""

    def __init__(self):
        self.cases = {}
        self.rec = Recorder()
        self.be = RawBackend(self.handler)
        self.port = self.be.port

    def handler(self, sock, be):
        reader = LenientReader(sock)
        while True:
            r = reader.read()
            if r[0] != "ok":
                return
            target = r[2]
            with self.rec.lock:
                self.rec.complete.append(r[1:])
            if target.startswith("/second"):
                sock.sendall(REAL_SECOND)
                continue
            idx = int(target.rsplit("/", 1)[1])
            for chunk, pause in self.cases[idx][2]:
                sock.sendall(chunk)
                if pause:
                    time.sleep(pause)
            if self.cases[idx][4].get("close"):
                return


@pytest.fixture(scope="module")
def response_gateway(tmp_path_factory):
    hb = HostileBackend()
    hb.cases = dict(enumerate(RESPONSE_CASES))
    port = free_port()
    tg = Tollgate(tmp_path_factory.mktemp("smuggling-resp"),
                  basic_config(port, [hb.port], extra=CLIENT,
                               upstream_extra="    read_timeout: 2s\n    max_fails: 0"))
    yield port, hb, tg
    rc = tg.stop()
    hb.be.close()
    assert rc == 0, tg.stderr()


def test_response_matrix_size():
    assert len(RESPONSE_CASES) >= 12


def _read_or_none(c, timeout=5):
    try:
        return c.read_response(timeout=timeout)
    except socket.timeout:
        return "timeout"


@pytest.mark.parametrize("idx,group,name,chunks,expect", [
    pytest.param(i, g, n, ch, e, id="resp-%02d-%s-%s=%s" % (i, g, n, e),
                 marks=[pytest.mark.xfail(strict=True, reason="BUG: " + RESPONSE_BUGS[g + "/" + n])]
                 if g + "/" + n in RESPONSE_BUGS else [])
    for i, (g, n, ch, e, _) in enumerate(RESPONSE_CASES)])
def test_response_framing(response_gateway, idx, group, name, chunks, expect):
    port, hb, tg = response_gateway
    assert tg.proc.poll() is None, "tollgate died:\n" + tg.stderr()[-3000:]
    opts = RESPONSE_CASES[idx][4]
    method = opts.get("method", "GET")
    first_req = b"%s /r/%d HTTP/1.1\r\nHost: app.test\r\n" % (method.encode(), idx)
    if opts.get("upgrade"):
        first_req += (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    first_req += b"\r\n"
    second_req = b"GET /second/%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % idx
    c = Client(port, timeout=8)
    try:
        if opts.get("sequential") or opts.get("upgrade"):
            c.send(first_req)
        else:
            c.send(first_req + second_req)  # pipelined
        try:
            first = c.read_response(method=method, timeout=8)
        except Malformed as e:
            pytest.fail("the client got bytes that are not a response: %s" % e)

        if isinstance(expect, Bad):
            assert first is not None and first.status == 502, first
        elif isinstance(expect, Cut):
            assert first is None or not first.complete, \
                "a broken response reached the client looking complete: %r" % first
            assert c.wait_closed(timeout=3), "the cut connection stayed open"
        elif isinstance(expect, Either):
            assert first is None or first.status == 502 or not first.complete, first
        else:
            assert first is not None and first.status == expect.status, first
            assert first.body == expect.body, first
            assert tuple(s for s, _ in first.interim) == expect.interim, first.interim

        # What follows on the connection: the real second answer, a 502, or
        # the end; never the backend's leftovers.
        if first is not None and first.complete and not first.closes and not c.eof:
            if opts.get("sequential"):
                time.sleep(opts["sequential"] * SLOW)
                c.send(second_req)
            elif opts.get("upgrade"):
                c.send(second_req)
            try:
                second = c.read_response(timeout=8)
            except Malformed as e:
                pytest.fail("desynchronised: %s" % e)
            assert second is not None, "no answer to the second request"
            assert second.status == 502 or (second.status == 200 and second.header("x-real") == "second"
                                             and second.body == b"real-second"), \
                "desynchronised: the second request got %r" % second
        assert b"X-Fake" not in c.received and b"evil" not in c.received, \
            "backend leftovers reached the client: %r" % c.received[-400:]
    finally:
        c.close()


# ---- upgrades and early answers ------------------------------------------------------


def _deny_admin_config(port, backend_port):
    return basic_config(port, [backend_port], extra=CLIENT).replace(
        "    routes:\n", "    routes:\n      - path: /admin\n        upstream: app\n"
                        "        deny: [\"0.0.0.0/0\", \"::/0\"]\n", 1)


@pytest.mark.parametrize("answer", [b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
                         ids=["426", "200"])
def test_refused_upgrade_opens_no_tunnel(tollgate, backend, answer):
    """The backend declines a WebSocket upgrade: the connection must stay
    HTTP, so a request sent next on it is parsed and checked by tollgate
    (here: denied with 403), never piped to the backend as tunnel bytes."""
    rec = Recorder()

    def handler(sock, be):
        reader = LenientReader(sock)
        while True:
            r = reader.read()
            if r[0] != "ok":
                return
            with rec.lock:
                rec.complete.append(r[1:])
            sock.sendall(answer)
    b = backend(handler)
    port = free_port()
    tollgate(_deny_admin_config(port, b.port))
    c = Client(port, timeout=8)
    c.send(b"GET /chat HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    r = c.read_response(timeout=8)
    assert r is not None and r.status == int(answer[9:12]), r
    print("refused upgrade answered %d, connection %s" % (r.status, "closes" if r.closes else "kept"))
    if not r.closes:
        c.send(b"GET /admin/secret HTTP/1.1\r\nHost: app.test\r\n\r\n")
        r2 = c.read_response(timeout=8)
        assert r2 is not None and r2.status == 403, r2
    c.close()
    time.sleep(0.1)
    assert [x[1] for x in rec.complete] == ["/chat"], rec.complete


def test_early_answer_then_body_is_never_parsed_as_requests(tollgate, backend):
    """The backend answers (413) before the body has arrived, without
    reading it; the body then sent by the client is full of requests. None
    of them may reach the backend, and the client is not left reading the
    answers to requests it never meant to send."""
    rec = Recorder()

    def handler(sock, be):
        reader = LenientReader(sock)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
        with rec.lock:
            rec.complete.append(("POST", buf.split(b" ")[1].decode(), {}, b""))
        sock.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        # Whatever else arrives on this connection is parsed like requests.
        reader.buf = buf.split(b"\r\n\r\n", 1)[1]
        while True:
            r = reader.read()
            if r[0] != "ok":
                return
            with rec.lock:
                rec.complete.append(r[1:])
    b = backend(handler)
    port = free_port()
    tollgate(_deny_admin_config(port, b.port))
    hidden = b"GET /admin/smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n" * 20
    c = Client(port, timeout=8)
    c.send(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % len(hidden))
    r = c.read_response(timeout=8)
    assert r is not None and r.status == 413, r
    print("early answer: connection %s" % ("closes" if r.closes else "kept"))
    try:
        c.send(hidden)
    except OSError:
        pass
    if not r.closes:
        c.send(b"GET /after HTTP/1.1\r\nHost: app.test\r\n\r\n")
        r2 = c.read_response(timeout=8)
        assert r2 is not None and r2.status == 413 and c.buf == b"", (r2, c.buf)
    else:
        assert c.wait_closed(timeout=6), "Connection: close but the connection stayed open"
    c.close()
    time.sleep(0.2)
    seen = [x[1] for x in rec.complete]
    assert not [t for t in seen if "smuggled" in t], "hidden requests reached the backend: %r" % seen
