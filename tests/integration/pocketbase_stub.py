"""A stand-in PocketBase backend for the integration tests.

It answers like PocketBase v0.23+ (checked against v0.39, a Go 1.25/1.26 program) does at the
points where a gateway in front of it can be fooled: how the Go HTTP server parses a request,
how Go's http.ServeMux routes it, and how PocketBase's BindBody turns the body into the
fields its handlers validate. That lets an attacker test prove whether a password guess
really reached PocketBase's password check, rather than whether it looked like one to the
gateway.

Use:

    from pocketbase_stub import PocketBaseStub, pocketbase_stub   # the second is a fixture

    stub = PocketBaseStub()        # or the pocketbase_stub fixture: started, stopped after
    stub.start()                   # 127.0.0.1 on a free port: stub.port, stub.url("/api/...")
    ...
    stub.attempts                  # [PasswordCheck]: every password really compared
    stub.requests                  # [RequestRecord]: every request the Go server accepted
    stub.rejected                  # [RequestRecord]: requests the Go server itself refused
    stub.wait_attempts(n)          # waits (5 s) until n checks are recorded, returns them
    stub.token("admin@example.com")   # an auth token for Authorization: (no check recorded)
    stub.otps                      # [dict]: OTPs issued by request-otp (their "password")
    stub.reset()                   # forgets attempts, requests, OTPs, rate limits
    stub.stop()

A PasswordCheck (collection_id, collection_name, endpoint, identity, identity_field,
password, record_id, success, client_ip, request) is recorded only where PocketBase's
handler compares a password: auth-with-password once the body was bound and validated
(also when no record matched: PocketBase then runs a dummy bcrypt check), auth-with-otp
once the OTP was found, valid and not rate limited. A 400 from binding or validation, a
404 for the collection, a 403 because the method is off: no check, nothing recorded.

Accounts (PocketBase's default collections plus two of a typical app):

    users        _pb_users_auth_  auth  email (NOCASE) or username (exact)
                 alice@example.com / alice / "correct horse"
                 victim@example.com / victim / "s3cret-victim"
    _superusers  pbc_3142635823   auth  email: admin@example.com / "admin-pass"
    customers    pbc_1751747783   auth  email: carol@example.com / "carol-pass"
    posts        pbc_1125843985   base  (auth endpoints: 404 auth collection context)
    _otps, _mfas, _externalAuths, _authOrigins: PocketBase's base system collections

Collection ids are PocketBase's deterministic "pbc_" + crc32(type + name). OTP is enabled
on the three auth collections (PocketBase's default is off: a deployment that uses the
endpoint turns it on); OAuth2 and MFA are off as by default.

Reproduced from the Go sources (PocketBase file, or Go standard library package):
  * net/http server: request line, textproto header parsing (obs-fold, the space before
    the colon, invalid names and values), Host rules, Transfer-Encoding (only "chunked";
    it wins over and deletes Content-Length), Content-Length checks (no empty or
    conflicting values), chunked decoding (bare LF refused), Expect: 100-continue, the
    256 KiB post-handler drain, and the 400/431/501/505 replies.
  * net/http ServeMux (Go 1.22+ patterns): matching on the escaped path one segment at a
    time, each segment percent-decoded, literals case sensitive, {x} one segment,
    {x...} the rest, "GET" also HEAD; a path that is not clean is redirected (301, see
    redirect_status), as is /x to /x/ when only the latter is registered; 405 with Allow.
    PocketBase registers a method-less catch-all "/" (tools/router/router.go BuildMux), so
    a wrong method gets PocketBase's 404 JSON, not 405, and the prebuilt binary's
    "GET /{path...}" (pb_public, examples/base/main.go) answers GET "File not found.".
  * apis/*.go: the routes of base.go/serve.go and their middlewares in PocketBase's
    order (CORS, auth token, security headers, collectionPathRateLimit's collection
    look-up, 32 MiB BodyLimit, RequireSuperuserAuth, RequireSameCollectionContextAuth),
    the handlers' order of checks and their ApiError JSON.
  * core/collection_query.go FindCachedCollectionByNameOrId: strings.EqualFold on the
    name (Go simple case folding: U+017F is s, U+212A is k, U+0130/U+0131 match nothing
    ASCII) or an exact id.
  * tools/router/event.go BindBody: Content-Length 0 binds nothing; the first
    Content-Type, case-sensitive HasPrefix in the order json, multipart, urlencoded,
    xml; anything else 400. encoding/json Decoder.Decode (only the first value; exact
    then case-folded member names; the last member wins; null is a no-op; invalid UTF-8
    and lone surrogates become U+FFFD), ParseForm / ParseMultipartForm (body then query,
    query then multipart parts; ';' and bad escapes are errors; mime.ParseMediaType with
    RFC 2231; quoted-printable parts), tools/router/unmarshal_request_data.go
    (values[0] of the exact key, then every @jsonPayload through json.Unmarshal), and
    encoding/xml elements named after the Go fields (Identity, Password, OTPId, ...).

Stub conveniences, not PocketBase behaviour: GET /api/realtime sends a ": ping" comment
every sse_interval seconds after PB_CONNECT (PocketBase stays silent); GET /api/files/...
serves a few bytes for any record id; GET /api/backups lists one backup without a
superuser token (PocketBase: 401) and GET /api/backups/{key} streams ?size= bytes
(default 1 MiB) over ?seconds= (default 2) without a file token (PocketBase: 403).
"""

import base64
import codecs
import decimal
import email.utils
import hashlib
import hmac
import ipaddress
import json
import mimetypes
import re
import secrets
import socket
import socketserver
import threading
import time
import zlib

try:
    import pytest
except ImportError:  # the stub itself needs only the standard library
    pytest = None

USERS_ID = "_pb_users_auth_"
SUPERUSERS_ID = "pbc_3142635823"
CUSTOMERS_ID = "pbc_1751747783"
POSTS_ID = "pbc_1125843985"

MAX_BODY = 32 << 20            # apis/middlewares_body_limit.go DefaultMaxBodySize
MAX_HEADER_BYTES = (1 << 20) + 4096   # net/http DefaultMaxHeaderBytes + its slop
POST_HANDLER_DRAIN = 256 << 10        # net/http maxPostHandlerReadBytes


# ---------------------------------------------------------------------------------------
# Go strings. A Go string is bytes; here it is a str whose undecodable bytes are kept as
# surrogate escapes (U+DC80..U+DCFF), so str <-> bytes is lossless.

def _gb(s):
    return s.encode("utf-8", "surrogateescape")


def _gs(b):
    return bytes(b).decode("utf-8", "surrogateescape")


def _fffd_errors(err):
    return ("\ufffd" * (err.end - err.start), err.end)


codecs.register_error("pbstub_fffd", _fffd_errors)


def _utf8_fffd(b):
    """bytes -> str with every invalid byte as U+FFFD (Go's utf8.DecodeRune, byte by byte)."""
    return bytes(b).decode("utf-8", "pbstub_fffd")


def _runes(s):
    """The runes of a Go string as `for range` sees them: an invalid byte is U+FFFD."""
    return [0xFFFD if 0xDC80 <= ord(c) <= 0xDCFF else ord(c) for c in s]


def _clean_text(s):
    """A Go string as Go's JSON encoder writes it (invalid bytes as U+FFFD)."""
    return "".join(chr(r) for r in _runes(s))


_fold_table = None
_fold_lock = threading.Lock()


def _build_fold_table():
    """Go's case-folding orbits (unicode.SimpleFold), from Python's one-rune case
    mappings. U+0130 and U+0131 are singletons in Go (caseOrbit), so they stay apart."""
    parent = {}

    def find(x):
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for cp in range(0x41, 0x1F000):
        if 0xD800 <= cp <= 0xDFFF or cp in (0x130, 0x131):
            continue
        ch = chr(cp)
        for m in (ch.lower(), ch.upper(), ch.title()):
            if len(m) == 1 and m != ch and ord(m) not in (0x130, 0x131):
                a, b = find(cp), find(ord(m))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    table = {}
    for cp in list(parent):
        root = find(cp)
        if root != cp:
            table[cp] = root
    # the smallest member of each orbit is its root by construction
    return table


def _fold(r):
    """foldRune: the smallest rune of r's case-folding orbit."""
    if r < 0x80:
        return r - 32 if 0x61 <= r <= 0x7A else r
    global _fold_table
    if _fold_table is None:
        with _fold_lock:
            if _fold_table is None:
                _fold_table = _build_fold_table()
    return _fold_table.get(r, r)


def go_equal_fold(s, t):
    """strings.EqualFold: rune by rune under simple case folding."""
    a, b = _runes(s), _runes(t)
    if len(a) != len(b):
        return False
    return all(x == y or _fold(x) == _fold(y) for x, y in zip(a, b))


def _json_fold_name(s):
    """encoding/json foldName: ASCII upper-cased, other runes to their orbit's smallest."""
    return "".join(chr(_fold(r)) for r in _runes(s))


def _go_isspace(ch):
    return ch in "\t\n\v\f\r \x85\xa0" or (ord(ch) > 0xFF and ch.isspace()
                                            and not 0xDC80 <= ord(ch) <= 0xDCFF)


def _go_trim_space(s):
    i, j = 0, len(s)
    while i < j and _go_isspace(s[i]):
        i += 1
    while j > i and _go_isspace(s[j - 1]):
        j -= 1
    return s[i:j]


def _go_lower(s):
    out = []
    for r in _runes(s):
        if r < 0x80:
            out.append(chr(r + 32) if 0x41 <= r <= 0x5A else chr(r))
            continue
        m = chr(r).lower()
        out.append(m if len(m) == 1 else ("i" if r == 0x130 else chr(r)))
    return "".join(out)


def _b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _random_id(n=15):
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _go_json(obj):
    """json.NewEncoder(w).Encode(obj): compact, HTML-escaped, newline-terminated."""
    def clean(o):
        if isinstance(o, str):
            return _clean_text(o)
        if isinstance(o, dict):
            return {clean(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o
    s = json.dumps(clean(obj), ensure_ascii=False, separators=(",", ":"))
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                 ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(a, b)
    return (s + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------
# net/url

_HEXDIGITS = b"0123456789abcdefABCDEF"
_UNRESERVED = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def _should_escape_path(c):
    if c in _UNRESERVED:
        return False
    if c in b"$&+,/:;=?@":
        return c == 0x3F
    return True


def _go_escape_path(s):
    return "".join("%%%02X" % c if _should_escape_path(c) else chr(c) for c in _gb(s))


def _valid_encoded_path(s):
    return all(c in b"!$&'()*+,;=:@[]%" or not _should_escape_path(c) for c in _gb(s))


def _go_unescape(s, query=False):
    """url.unescape (PathUnescape, or QueryUnescape with query=True); ValueError if bad."""
    b = _gb(s)
    out = bytearray()
    i = 0
    while i < len(b):
        c = b[i]
        if c == 0x25:
            if i + 2 >= len(b) or b[i + 1] not in _HEXDIGITS or b[i + 2] not in _HEXDIGITS:
                raise ValueError("invalid URL escape %r" % bytes(b[i:i + 3]))
            out.append(int(b[i + 1:i + 3], 16))
            i += 3
        elif c == 0x2B and query:
            out.append(0x20)
            i += 1
        else:
            out.append(c)
            i += 1
    return _gs(out)


def _path_unescape_or_raw(s):
    """net/http pathUnescape: the decoded segment, or the raw one if badly escaped."""
    try:
        return _go_unescape(s)
    except ValueError:
        return s


def _go_path_clean(p):
    """path.Clean."""
    if p == "":
        return "."
    rooted = p.startswith("/")
    parts = []
    for seg in p.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(seg)
    out = "/".join(parts)
    if rooted:
        out = "/" + out
    return out or "."


def _http_clean_path(p):
    """net/http cleanPath: path.Clean that keeps a trailing slash."""
    if p == "":
        return "/"
    if p[0] != "/":
        p = "/" + p
    np = _go_path_clean(p)
    if p[-1] == "/" and np != "/":
        if len(p) == len(np) + 1 and p.startswith(np):
            np = p
        else:
            np += "/"
    return np


def go_parse_query(q, max_params=10000):
    """url.ParseQuery: (values dict key -> [values], first error or None)."""
    values = {}
    if max_params and q.count("&") + 1 > max_params:
        return values, "number of URL query parameters exceeded limit"
    err = None
    for key in q.split("&") if q else []:
        if ";" in key:
            err = "invalid semicolon separator in query"
            continue
        if key == "":
            continue
        k, _, v = key.partition("=")
        try:
            k = _go_unescape(k, query=True)
            v = _go_unescape(v, query=True)
        except ValueError as e:
            err = err or str(e)
            continue
        values.setdefault(k, []).append(v)
    return values, err


def _parse_request_uri(raw):
    """url.ParseRequestURI: dict(path, raw_path, query, host) or ValueError."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise ValueError("net/url: invalid control character in URL")
    if raw == "":
        raise ValueError("empty url")
    if raw == "*":
        return {"path": "*", "raw_path": "", "query": "", "host": "", "scheme": ""}
    scheme, rest = "", raw
    for i, c in enumerate(raw):
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and (c.isdigit() or c in "+-."):
            if i == 0:
                break
            continue
        if c == ":":
            if i == 0:
                raise ValueError("missing protocol scheme")
            scheme, rest = raw[:i].lower(), raw[i + 1:]
        break
    if rest.endswith("?") and rest.count("?") == 1:
        rest, query = rest[:-1], ""
    else:
        rest, _, query = rest.partition("?")
    host = ""
    if not rest.startswith("/"):
        if scheme:
            return {"path": "", "raw_path": "", "query": query, "host": "", "scheme": scheme}
        raise ValueError("invalid URI for request")
    if scheme and rest.startswith("//"):
        authority, rest = rest[2:], ""
        i = authority.find("/")
        if i >= 0:
            authority, rest = authority[:i], authority[i:]
        host = authority.rpartition("@")[2]
        if any(c in " <>\"{}|\\^`" for c in host):
            raise ValueError("invalid host")
        host = _go_unescape(host)
    path = _go_unescape(rest)
    raw_path = "" if _go_escape_path(path) == rest else rest
    return {"path": path, "raw_path": raw_path, "query": query, "host": host,
            "scheme": scheme}


def _escaped_path(path, raw_path):
    """url.URL.EscapedPath."""
    if raw_path and _valid_encoded_path(raw_path):
        try:
            if _go_unescape(raw_path) == path:
                return raw_path
        except ValueError:
            pass
    if path == "*":
        return "*"
    return _go_escape_path(path)


# ---------------------------------------------------------------------------------------
# mime

_TSPECIALS = set('()<>@,;:\\"/[]?=')


def _is_token_char(ch):
    return 0x20 < ord(ch) < 0x7F and ch not in _TSPECIALS


def _consume_token(v):
    i = 0
    while i < len(v) and _is_token_char(v[i]):
        i += 1
    return v[:i], v[i:]


def _consume_value(v):
    if v == "":
        return "", v
    if v[0] != '"':
        return _consume_token(v)
    buf = []
    i = 1
    while i < len(v):
        r = v[i]
        if r == '"':
            return "".join(buf), v[i + 1:]
        if r == "\\" and i + 1 < len(v) and v[i + 1] in _TSPECIALS:
            buf.append(v[i + 1])
            i += 2
            continue
        if r in "\r\n":
            return "", v
        buf.append(r)
        i += 1
    return "", v


def _lstrip_space(v):
    i = 0
    while i < len(v) and _go_isspace(v[i]):
        i += 1
    return v[i:]


def _consume_media_param(v):
    rest = _lstrip_space(v)
    if not rest.startswith(";"):
        return "", "", v
    rest = _lstrip_space(rest[1:])
    param, rest = _consume_token(rest)
    param = param.lower()
    if param == "":
        return "", "", v
    rest = _lstrip_space(rest)
    if not rest.startswith("="):
        return "", "", v
    rest = _lstrip_space(rest[1:])
    value, rest2 = _consume_value(rest)
    if value == "" and rest2 == rest:
        return "", "", v
    return param, value, rest2


def _percent_hex_unescape(s):
    return _go_unescape(s)   # same rules: '%' then two hex digits, no '+'


def _decode_2231(v):
    sv = v.split("'", 2)
    if len(sv) != 3:
        return None
    charset = sv[0].lower()
    if charset not in ("us-ascii", "utf-8"):
        return None
    try:
        return _percent_hex_unescape(sv[2])
    except ValueError:
        return None


def go_parse_media_type(v):
    """mime.ParseMediaType: (mediatype, params or None, error or None)."""
    base = v.split(";", 1)[0]
    mediatype = _go_trim_space(_go_lower(base))
    typ, rest = _consume_token(mediatype)
    if typ == "":
        return "", None, "mime: no media type"
    if rest != "":
        if not rest.startswith("/"):
            return "", None, "mime: expected slash after first token"
        sub, rest = _consume_token(rest[1:])
        if sub == "":
            return "", None, "mime: expected token after slash"
        if rest != "":
            return "", None, "mime: unexpected content after media subtype"
    params = {}
    continuation = {}
    v = v[len(base):]
    while v:
        v = _lstrip_space(v)
        if not v:
            break
        key, value, rest = _consume_media_param(v)
        if key == "":
            if _go_trim_space(rest) == ";":
                break
            return mediatype, None, "mime: invalid media parameter"
        pmap = params
        if "*" in key:
            pmap = continuation.setdefault(key.split("*", 1)[0], {})
        if key in pmap and pmap[key] != value:
            return "", None, "mime: duplicate parameter name"
        pmap[key] = value
        v = rest
    for key, pieces in continuation.items():
        if key + "*" in pieces:
            dec = _decode_2231(pieces[key + "*"])
            if dec is not None:
                params[key] = dec
            continue
        buf, valid, n = [], False, 0
        while True:
            simple = "%s*%d" % (key, n)
            if simple in pieces:
                valid = True
                buf.append(pieces[simple])
                n += 1
                continue
            if simple + "*" not in pieces:
                break
            valid = True
            enc = pieces[simple + "*"]
            if n == 0:
                dec = _decode_2231(enc)
                if dec is not None:
                    buf.append(dec)
            else:
                try:
                    buf.append(_percent_hex_unescape(enc))
                except ValueError:
                    pass
            n += 1
        if valid:
            params[key] = "".join(buf)
    return mediatype, params, None


def _qp_decode(data):
    """mime/quotedprintable.Reader; ValueError on the errors Go reports."""
    out = bytearray()
    lines = data.split(b"\n")
    for idx, line in enumerate(lines):
        last = idx == len(lines) - 1
        whole = line if last else line + b"\n"
        if last and whole == b"":
            break
        has_lf = whole.endswith(b"\n")
        has_crlf = whole.endswith(b"\r\n")
        stripped = whole.rstrip(b" \t\r\n")
        if stripped.endswith(b"="):
            right = whole[len(stripped):]
            stripped = stripped[:-1]
            if not (right.startswith(b"\n") or right.startswith(b"\r\n")
                    or (right == b"" and stripped and last)):
                raise ValueError("quotedprintable: invalid bytes after =")
        elif has_lf:
            stripped += b"\r\n" if has_crlf else b"\n"
        i = 0
        while i < len(stripped):
            b = stripped[i]
            if b == 0x3D:
                h = stripped[i + 1:i + 3]
                if len(h) == 2 and all(c in _HEXDIGITS for c in h):
                    out.append(int(h, 16))
                    i += 3
                    continue
                if len(stripped) - i >= 2 and stripped[i + 1] not in b"\r\n":
                    out.append(b)
                    i += 1
                    continue
                raise ValueError("quotedprintable: invalid hex byte")
            if b in b"\t\r\n" or b >= 0x80 or 0x20 <= b <= 0x7E:
                out.append(b)
                i += 1
                continue
            raise ValueError("quotedprintable: invalid unescaped byte 0x%02x in body" % b)
    return bytes(out)


# ---------------------------------------------------------------------------------------
# net/textproto headers

_TCHAR = set(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class _ProtoError(Exception):
    pass


def _canonical_key(k):
    """textproto canonicalMIMEHeaderKey: (key, ok)."""
    if not k:
        return "", False
    no_canon = False
    for c in k:
        if c in _TCHAR:
            continue
        if c == 0x20:
            no_canon = True
            continue
        return _gs(k), False
    if no_canon:
        return _gs(k), True
    out = bytearray()
    upper = True
    for c in k:
        if upper and 0x61 <= c <= 0x7A:
            c -= 32
        elif not upper and 0x41 <= c <= 0x5A:
            c += 32
        out.append(c)
        upper = c == 0x2D
    return out.decode("ascii"), True


def _valid_value_byte(c):
    return c == 0x09 or 0x20 <= c <= 0x7E or c >= 0x80


def _parse_header_lines(lines):
    """textproto.Reader.ReadMIMEHeader over lines (no line ends): [(canonical, raw, value)]."""
    out = []
    if lines and lines[0][:1] in (b" ", b"\t"):
        raise _ProtoError("malformed MIME header initial line")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if b":" not in line:
            raise _ProtoError("malformed MIME header: missing colon")
        kv = line.strip(b" \t")
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            kv = kv + b" " + lines[i].strip(b" \t")
            i += 1
        k, _, v = kv.partition(b":")
        key, ok = _canonical_key(k)
        if not ok or not all(_valid_value_byte(c) for c in v):
            raise _ProtoError("malformed MIME header line")
        out.append((key, _gs(k), _gs(v.lstrip(b" \t"))))
    return out


class _Header:
    """http.Header: canonical key -> values, in arrival order."""

    def __init__(self, items=()):
        self.map = {}
        for key, value in items:
            self.add(key, value)

    def add(self, key, value):
        self.map.setdefault(key, []).append(value)

    def set(self, key, value):
        self.map[key] = [value]

    def get(self, key):
        v = self.map.get(key)
        return v[0] if v else ""

    def values(self, key):
        return list(self.map.get(key, []))

    def delete(self, key):
        self.map.pop(key, None)

    def has(self, key):
        return key in self.map


def _has_token(values, token):
    for v in values:
        for part in v.split(","):
            if _gb(part.strip(" \t")).lower() == token.encode():   # ASCII-only fold
                return True
    return False


# ---------------------------------------------------------------------------------------
# encoding/json

class _JSONEOF(Exception):
    pass


class _JSONError(Exception):
    pass


_JSON_WS = b" \t\r\n"
_JSON_ESC = {0x22: b'"', 0x5C: b"\\", 0x2F: b"/", 0x62: b"\b", 0x66: b"\f", 0x6E: b"\n",
             0x72: b"\r", 0x74: b"\t"}


def _hex4(d, i):
    h = d[i:i + 4]
    if len(h) < 4:
        if all(c in _HEXDIGITS for c in h):
            raise _JSONEOF()
        raise _JSONError("invalid character in \\u hexadecimal character escape")
    if not all(c in _HEXDIGITS for c in h):
        raise _JSONError("invalid character in \\u hexadecimal character escape")
    return int(h, 16)


def _json_string(d, i):
    """A JSON string at d[i] == '"': (Go string, end). Unquoted as Go's unquoteBytes."""
    n = len(d)
    i += 1
    out = bytearray()
    while True:
        if i >= n:
            raise _JSONEOF()
        c = d[i]
        if c == 0x22:
            return _utf8_fffd(out), i + 1
        if c == 0x5C:
            if i + 1 >= n:
                raise _JSONEOF()
            e = d[i + 1]
            if e in _JSON_ESC:
                out += _JSON_ESC[e]
                i += 2
                continue
            if e != 0x75:
                raise _JSONError("invalid character in string escape code")
            r = _hex4(d, i + 2)
            i += 6
            if 0xD800 <= r < 0xE000:
                r2 = -1
                if d[i:i + 2] == b"\\u":
                    try:
                        r2 = _hex4(d, i + 2)
                    except (_JSONError, _JSONEOF):
                        r2 = -1
                if r < 0xDC00 and 0xDC00 <= r2 < 0xE000:
                    r = 0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00)
                    i += 6
                else:
                    r = 0xFFFD
            out += chr(r).encode("utf-8")
            continue
        if c < 0x20:
            raise _JSONError("invalid character in string literal")
        out.append(c)
        i += 1


def _json_number(d, i, final):
    n = len(d)
    start = i

    def need_digit(j):
        if j >= n:
            raise _JSONEOF()
        if not 0x30 <= d[j] <= 0x39:
            raise _JSONError("invalid character in numeric literal")

    if d[i] == 0x2D:
        i += 1
        need_digit(i)
    if d[i] == 0x30:
        i += 1
    else:
        while i < n and 0x30 <= d[i] <= 0x39:
            i += 1
    if i < n and d[i] == 0x2E:
        i += 1
        need_digit(i)
        while i < n and 0x30 <= d[i] <= 0x39:
            i += 1
    if i < n and d[i] in b"eE":
        i += 1
        if i < n and d[i] in b"+-":
            i += 1
        need_digit(i)
        while i < n and 0x30 <= d[i] <= 0x39:
            i += 1
    if i >= n and not final:
        raise _JSONEOF()   # the scanner needs the next byte to end a number
    return ("num", d[start:i].decode("ascii")), i


def _json_value(d, i, final=True, max_depth=10000):
    """One JSON value from d[i:] as Go's scanner reads it: ((kind, data), end).
    Objects are ("obj", [(key, value), ...]) in order, duplicates kept."""
    n = len(d)
    stack = []

    def skip(j):
        while j < n and d[j] in _JSON_WS:
            j += 1
        return j

    def key_at(j):
        j = skip(j)
        if j >= n:
            raise _JSONEOF()
        if d[j] != 0x22:
            raise _JSONError("invalid character looking for beginning of object key string")
        k, j = _json_string(d, j)
        j = skip(j)
        if j >= n:
            raise _JSONEOF()
        if d[j] != 0x3A:
            raise _JSONError("invalid character after object key")
        return k, j + 1

    while True:
        i = skip(i)
        if i >= n:
            raise _JSONEOF()
        c = d[i]
        if c == 0x7B:
            j = skip(i + 1)
            if j < n and d[j] == 0x7D:
                val, i = ("obj", []), j + 1
            else:
                if len(stack) >= max_depth:
                    raise _JSONError("exceeded max depth")
                k, i = key_at(i + 1)
                stack.append(["obj", [], k])
                continue
        elif c == 0x5B:
            j = skip(i + 1)
            if j < n and d[j] == 0x5D:
                val, i = ("arr", []), j + 1
            else:
                if len(stack) >= max_depth:
                    raise _JSONError("exceeded max depth")
                stack.append(["arr", []])
                i += 1
                continue
        elif c == 0x22:
            s, i = _json_string(d, i)
            val = ("str", s)
        elif c == 0x2D or 0x30 <= c <= 0x39:
            val, i = _json_number(d, i, final or bool(stack))
        else:
            for lit, v in ((b"true", ("bool", True)), (b"false", ("bool", False)),
                           (b"null", ("null", None))):
                if c == lit[0]:
                    got = d[i:i + len(lit)]
                    if got == lit:
                        val, i = v, i + len(lit)
                        break
                    if lit.startswith(got):
                        raise _JSONEOF()
                    raise _JSONError("invalid character in literal")
            else:
                raise _JSONError("invalid character looking for beginning of value")
        while True:
            if not stack:
                return val, i
            top = stack[-1]
            if top[0] == "obj":
                top[1].append((top[2], val))
            else:
                top[1].append(val)
            i = skip(i)
            if i >= n:
                raise _JSONEOF()
            c = d[i]
            if c == 0x2C:
                if top[0] == "obj":
                    top[2], i = key_at(i + 1)
                else:
                    i += 1
                break
            if c == (0x7D if top[0] == "obj" else 0x5D):
                stack.pop()
                val, i = (top[0], top[1]), i + 1
                continue
            raise _JSONError("invalid character after %s element" % top[0])


def go_json_unmarshal_value(data):
    """json.Unmarshal's input check: exactly one value and white space."""
    try:
        val, end = _json_value(data, 0, final=True)
    except _JSONEOF:
        raise _JSONError("unexpected end of JSON input")
    while end < len(data) and data[end] in _JSON_WS:
        end += 1
    if end != len(data):
        raise _JSONError("invalid character after top-level value")
    return val


# ---------------------------------------------------------------------------------------
# Binding targets: the Go structs the handlers bind into.

class _Field:
    def __init__(self, go, tag, kind="string"):
        self.go, self.tag, self.kind = go, tag, kind


class _Form:
    """A Go struct: its exported fields with their json and form tags (the same here)."""

    def __init__(self, *fields):
        self.fields = fields
        self.exact = {f.tag: f for f in fields}
        self.folded = {}
        for f in fields:  # "for historical reasons, first folded match takes precedence"
            self.folded.setdefault(_json_fold_name(f.tag), f)

    def json_field(self, key):
        return self.exact.get(key) or self.folded.get(_json_fold_name(key))

    def zero(self):
        return {f.go: {"string": "", "int": 0, "strings": None, "map": None}[f.kind]
                for f in self.fields}


class _BindError(Exception):
    pass


def _json_into(form, dst, val):
    """Decode a parsed JSON value into the struct (encoding/json decode.go semantics)."""
    if val[0] == "null":
        return
    if val[0] != "obj":
        raise _BindError("json: cannot unmarshal %s into Go value of type struct" % val[0])
    err = None
    for key, v in val[1]:
        f = form.json_field(key)
        if f is None:
            continue
        if v[0] == "null":
            if f.kind in ("strings", "map"):
                dst[f.go] = None
            continue
        if f.kind == "string" and v[0] == "str":
            dst[f.go] = v[1]
        elif f.kind == "int" and v[0] == "num" and re.fullmatch(r"-?\d+", v[1]) \
                and -(1 << 63) <= int(v[1]) < (1 << 63):
            dst[f.go] = int(v[1])
        elif f.kind == "strings" and v[0] == "arr":
            items = []
            for item in v[1]:
                if item[0] == "str":
                    items.append(item[1])
                elif item[0] == "null":
                    items.append("")
                else:
                    err = err or "json: cannot unmarshal into []string"
                    items.append("")
            dst[f.go] = items
        elif f.kind == "map" and v[0] == "obj":
            dst[f.go] = {k: x for k, x in v[1]}
        else:
            err = err or "json: cannot unmarshal %s into Go struct field %s" % (v[0], f.tag)
    if err:
        raise _BindError(err)


def _go_parse_int(s):
    """strconv.ParseInt(s, 0, 64)."""
    t = s.replace("_", "") if re.fullmatch(r"[+-]?0[xXbBoO]?[0-9a-fA-F_]+", s) else s
    sign = -1 if t.startswith("-") else 1
    body = t.lstrip("+-")
    if len(t) - len(body) > 1 or body == "":
        raise ValueError(s)
    if len(body) > 1 and body[0] == "0" and body[1].isdigit():
        v = int(body, 8)
    else:
        v = int(body, 0)
    v *= sign
    if not -(1 << 63) <= v < (1 << 63):
        raise ValueError(s)
    return v


def unmarshal_request_data(data, form, dst):
    """tools/router/unmarshal_request_data.go UnmarshalRequestData into a struct."""
    if not data:
        return
    for f in form.fields:
        values = data.get(f.tag)
        if not values:
            continue
        if f.kind == "string":
            dst[f.go] = values[0]
        elif f.kind == "int":
            try:
                dst[f.go] = _go_parse_int(values[0] or "0")
            except ValueError:
                raise _BindError("strconv.ParseInt: parsing %r: invalid syntax" % values[0])
        elif f.kind == "strings":
            dst[f.go] = list(values)
        else:
            raise _BindError("unknown value type map")
    for payload in data.get("@jsonPayload", []):
        try:
            val = go_json_unmarshal_value(_gb(payload))
        except _JSONError as e:
            raise _BindError(str(e))
        _json_into(form, dst, val)


FORM_AUTH_WITH_PASSWORD = _Form(_Field("Identity", "identity"), _Field("Password", "password"),
                                _Field("IdentityField", "identityField"))
FORM_AUTH_WITH_OTP = _Form(_Field("OTPId", "otpId"), _Field("Password", "password"))
FORM_EMAIL = _Form(_Field("Email", "email"))
FORM_CONFIRM_PASSWORD_RESET = _Form(_Field("Token", "token"), _Field("Password", "password"),
                                    _Field("PasswordConfirm", "passwordConfirm"))
FORM_TOKEN = _Form(_Field("Token", "token"))
FORM_NEW_EMAIL = _Form(_Field("NewEmail", "newEmail"))
FORM_CONFIRM_EMAIL_CHANGE = _Form(_Field("Token", "token"), _Field("Password", "password"))
FORM_IMPERSONATE = _Form(_Field("Duration", "duration", "int"))
FORM_REALTIME = _Form(_Field("ClientId", "clientId"),
                      _Field("Subscriptions", "subscriptions", "strings"))


# ---------------------------------------------------------------------------------------
# encoding/xml (the part Decoder.Decode into a flat struct uses)

class _XMLEOF(Exception):
    pass


class _XMLError(Exception):
    pass


_XML_NAME = re.compile(r"[^\s<>/=\"'!?&]+")
_XML_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "apos": "'", "quot": '"'}


def _xml_legal(s):
    for ch in s:
        r = ord(ch)
        if not (r in (0x09, 0x0A, 0x0D) or 0x20 <= r <= 0xD7FF or 0xE000 <= r <= 0xFFFD
                or 0x10000 <= r <= 0x10FFFF):
            raise _XMLError("illegal character code U+%04X" % r)


def _xml_text(s, complete=True):
    """Character data with its references decoded (strict mode)."""
    out = []
    i = 0
    while True:
        j = s.find("&", i)
        if j < 0:
            out.append(s[i:])
            break
        out.append(s[i:j])
        k = s.find(";", j)
        if k < 0:
            if not complete and re.fullmatch(r"&#?[xX]?[0-9A-Za-z_.:-]*", s[j:]):
                raise _XMLEOF()
            raise _XMLError("invalid character entity")
        name = s[j + 1:k]
        if name.startswith("#"):
            try:
                r = int(name[2:], 16) if name[1:2] in ("x", "X") else int(name[1:], 10)
                ch = chr(r)
                _xml_legal(ch)
            except (ValueError, OverflowError, _XMLError):
                raise _XMLError("invalid character entity &%s;" % name)
            out.append(ch)
        elif name in _XML_ENTITIES:
            out.append(_XML_ENTITIES[name])
        else:
            raise _XMLError("invalid character entity &%s;" % name)
        i = k + 1
    text = "".join(out)
    _xml_legal(text)
    return text


def _xml_local(name):
    if name.count(":") > 1:
        raise _XMLError("expected element name after <")
    space, colon, local = name.partition(":")
    return local if colon and space and local else name


def _xml_into(s, form, dst):
    """Decoder.Decode(&struct) on the text s: the first element is the struct; its child
    elements named like a field (Local name, exact case) set it to their own character
    data; the last one wins; anything after the root element is never read."""
    by_name = {f.go: f for f in form.fields}
    n = len(s)
    stack = []
    capture = None   # (field, depth, parts)
    i = 0
    while True:
        if stack == [] and capture == "done":
            return
        if i >= n:
            raise _XMLEOF()
        if s[i] != "<":
            j = s.find("<", i)
            if j < 0:
                _xml_text(s[i:], complete=False)  # check what is there, wait for more
                raise _XMLEOF()
            text = _xml_text(s[i:j])
            if capture not in (None, "done") and len(stack) == capture[1]:
                capture[2].append(text)
            i = j
            continue
        if s.startswith("<?", i):
            j = s.find("?>", i + 2)
            if j < 0:
                raise _XMLEOF()
            target, _, content = s[i + 2:j].partition(" ")
            if target == "xml":
                ver = re.search(r"version\s*=\s*(['\"])(.*?)\1", content)
                if ver and ver.group(2) != "1.0":
                    raise _XMLError("xml: unsupported version %r; only version 1.0 is supported"
                                    % ver.group(2))
                enc = re.search(r"encoding\s*=\s*(['\"])(.*?)\1", content)
                if enc and enc.group(2).lower() != "utf-8":
                    raise _XMLError("xml: encoding %r declared but Decoder.CharsetReader is nil"
                                    % enc.group(2))
            i = j + 2
            continue
        if s.startswith("<!--", i):
            j = s.find("-->", i + 4)
            if j < 0:
                raise _XMLEOF()
            i = j + 3
            continue
        if s.startswith("<![CDATA[", i):
            j = s.find("]]>", i + 9)
            if j < 0:
                raise _XMLEOF()
            text = s[i + 9:j]
            _xml_legal(text)
            if capture not in (None, "done") and len(stack) == capture[1]:
                capture[2].append(text)
            i = j + 3
            continue
        if s.startswith("<!", i):
            depth, j, quote = 0, i + 2, None
            while True:
                if j >= n:
                    raise _XMLEOF()
                ch = s[j]
                if quote:
                    if ch == quote:
                        quote = None
                elif ch in "'\"":
                    quote = ch
                elif ch == "<":
                    depth += 1
                elif ch == ">":
                    if depth == 0:
                        break
                    depth -= 1
                j += 1
            i = j + 1
            continue
        if s.startswith("</", i):
            m = _XML_NAME.match(s, i + 2)
            if not m:
                if i + 2 >= n:
                    raise _XMLEOF()
                raise _XMLError("expected element name after </")
            name = m.group(0)
            j = m.end()
            while j < n and s[j] in " \t\r\n":
                j += 1
            if j >= n:
                raise _XMLEOF()
            if s[j] != ">":
                raise _XMLError("invalid characters between </%s and >" % name)
            i = j + 1
            if not stack or stack[-1] != name:
                raise _XMLError("element <%s> closed by </%s>"
                                % (stack[-1] if stack else "", name))
            _xml_end(stack, capture, dst)
            if capture not in (None, "done") and len(stack) == capture[1]:
                capture = None
            stack.pop()
            if not stack:
                capture = "done"
            continue
        m = _XML_NAME.match(s, i + 1)
        if not m:
            if i + 1 >= n:
                raise _XMLEOF()
            raise _XMLError("expected element name after <")
        name = m.group(0)
        local = _xml_local(name)
        j = m.end()
        while True:
            while j < n and s[j] in " \t\r\n":
                j += 1
            if j >= n:
                raise _XMLEOF()
            if s[j] == ">" or s.startswith("/>", j):
                break
            if s[j] == "/":
                if j + 1 >= n:
                    raise _XMLEOF()
                raise _XMLError("expected /> in element")
            am = _XML_NAME.match(s, j)
            if not am:
                raise _XMLError("expected attribute name in element")
            j = am.end()
            while j < n and s[j] in " \t\r\n":
                j += 1
            if j >= n:
                raise _XMLEOF()
            if s[j] != "=":
                raise _XMLError("attribute name without = in element")
            j += 1
            while j < n and s[j] in " \t\r\n":
                j += 1
            if j >= n:
                raise _XMLEOF()
            if s[j] not in "'\"":
                raise _XMLError("unquoted or missing attribute value in element")
            k = s.find(s[j], j + 1)
            if k < 0:
                raise _XMLEOF()
            if "<" in s[j + 1:k]:
                raise _XMLError("unescaped < inside quoted string")
            _xml_text(s[j + 1:k])
            j = k + 1
        self_closing = s[j] == "/"
        i = j + (2 if self_closing else 1)
        stack.append(name)
        if len(stack) == 2 and capture is None and local in by_name:
            capture = (by_name[local], len(stack), [])
        if self_closing:
            _xml_end(stack, capture, dst)
            if capture not in (None, "done") and len(stack) == capture[1]:
                capture = None
            stack.pop()
            if not stack:
                capture = "done"


def _xml_end(stack, capture, dst):
    if capture in (None, "done") or len(stack) != capture[1]:
        return
    f, _, parts = capture
    data = "".join(parts)
    if f.kind == "string":
        dst[f.go] = data
    elif f.kind == "strings":
        dst[f.go] = (dst[f.go] or []) + [data]
    elif f.kind == "int":
        try:
            dst[f.go] = int(data.strip()) if data.strip() else 0
        except ValueError:
            raise _XMLError("strconv.ParseInt: invalid syntax")


# ---------------------------------------------------------------------------------------
# mime/multipart (Reader.ReadForm, the values part)

class _MPEOF(Exception):
    pass


class _MPError(Exception):
    pass


def _multipart_values(body, boundary, final, max_parts=1000):
    """[(name, value)] of the non-file parts, in order; _MPEOF if more data is needed."""
    if boundary == "":
        raise _MPError("multipart: boundary is empty")
    bnd = _gb(boundary)
    nl = b"\r\n"
    dash = b"--" + bnd
    dash_dash = dash + b"--"
    pos = 0
    parts_read = 0
    values = []

    def is_final(line):
        if not line.startswith(dash_dash):
            return False
        rest = line[len(dash_dash):].lstrip(b" \t")
        return rest == b"" or rest == nl

    while True:
        expect_new = False
        while True:
            j = body.find(b"\n", pos)
            if j < 0 or j - pos + 1 > 4096:
                if j < 0 and len(body) - pos < 4096 and not final:
                    raise _MPEOF()
                line = body[pos:]
                if j < 0 and is_final(line):
                    return values
                raise _MPError("multipart: NextPart: EOF" if j < 0 else
                               "multipart: NextPart: bufio: buffer full")
            line = body[pos:j + 1]
            pos = j + 1
            if line.startswith(dash):
                rest = line[len(dash):].lstrip(b" \t")
                if parts_read == 0 and rest == b"\n":
                    nl = b"\n"
                if rest == nl:
                    parts_read += 1
                    break
            if is_final(line):
                return values
            if expect_new:
                raise _MPError("multipart: expecting a new Part")
            if parts_read == 0:
                continue
            if line == nl:
                expect_new = True
                continue
            raise _MPError("multipart: unexpected line in Next()")
        if parts_read > max_parts:
            raise _MPError("multipart: message too large")
        lines = []
        while True:
            j = body.find(b"\n", pos)
            if j < 0:
                if not final:
                    raise _MPEOF()
                raise _MPError("multipart: unexpected EOF in part headers")
            line = body[pos:j]
            pos = j + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                break
            lines.append(line)
        try:
            header = _Header((k, v) for k, _, v in _parse_header_lines(lines))
        except _ProtoError as e:
            raise _MPError(str(e))
        nl_dash = nl + dash
        start, content_end, search = pos, None, pos
        if body.startswith(dash, pos):
            m = _match_after_prefix(body, pos, dash, final)
            if m == 1:
                content_end = pos
            else:
                search = pos + len(dash)
        while content_end is None:
            k = body.find(nl_dash, search)
            if k < 0:
                if not final:
                    raise _MPEOF()
                raise _MPError("unexpected EOF")
            m = _match_after_prefix(body, k, nl_dash, final)
            if m == 1:
                content_end = k
            else:
                search = k + len(nl_dash)
        content = body[start:content_end]
        pos = content_end
        if go_equal_fold(header.get("Content-Transfer-Encoding"), "quoted-printable"):
            header.delete("Content-Transfer-Encoding")
            try:
                content = _qp_decode(content)
            except ValueError as e:
                raise _MPError(str(e))
        disposition, params, err = go_parse_media_type(header.get("Content-Disposition"))
        if err or params is None:
            params = {}
        name = params.get("name", "") if disposition == "form-data" else ""
        if name == "":
            continue
        if params.get("filename", ""):
            continue   # a file part: r.MultipartForm.File, not r.Form
        values.append((name, _gs(content)))


def _match_after_prefix(body, at, prefix, final):
    after = at + len(prefix)
    if after >= len(body):
        if not final:
            raise _MPEOF()
        return 1
    c = body[after]
    if c in b" \t\r\n":
        return 1
    if c == 0x2D:
        if after + 1 >= len(body):
            if not final:
                raise _MPEOF()
            return -1
        if body[after + 1] == 0x2D:
            return 1
    return -1


# ---------------------------------------------------------------------------------------
# Records of what reached the backend

class RequestRecord:
    """One request as the Go server parsed it."""

    def __init__(self, method, target, version, header_items, client):
        self.method = method
        self.target = target              # the raw request-target (Go string)
        self.version = version
        self.headers = list(header_items)  # [(raw name, value)] as received
        self.client = client              # (ip, port)
        self.path = ""                    # r.URL.Path (percent-decoded)
        self.escaped_path = ""            # r.URL.EscapedPath(), what the mux matches
        self.query = ""                   # r.URL.RawQuery
        self.pattern = None               # the ServeMux pattern that matched
        self.path_values = {}
        self.status = None
        self.reason = None                # why the Go server refused it (stub.rejected)
        self.body_error = None
        self.complete = False
        self._body = None
        self.time = time.time()

    @property
    def body(self):
        """The decoded request body bytes read so far (the whole body once complete)."""
        return bytes(self._body.data) if self._body is not None else b""

    def header(self, name, default=None):
        """The first value of a header (name case-insensitive), or default."""
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return "<RequestRecord %s %s -> %s>" % (self.method, self.target, self.status)


class PasswordCheck:
    """A password PocketBase's handler really compared."""

    def __init__(self, collection, endpoint, identity, identity_field, password, record,
                 success, client_ip, request):
        self.collection_id = collection.id
        self.collection_name = collection.name
        self.endpoint = endpoint          # "auth-with-password" or "auth-with-otp"
        self.identity = identity          # as bound (for auth-with-otp: the otpId)
        self.identity_field = identity_field
        self.password = password
        self.record_id = record.id if record is not None else None
        self.success = success
        self.client_ip = client_ip        # PocketBase's RealIP()
        self.request = request
        self.time = time.time()

    def __repr__(self):
        return "<PasswordCheck %s %s %r ok=%s>" % (self.collection_name, self.endpoint,
                                                   self.identity, self.success)


# ---------------------------------------------------------------------------------------
# Collections

class _Record:
    def __init__(self, rid, email, password, username=None, name=""):
        self.id, self.email, self.password = rid, email, password
        self.username, self.name = username, name


class _Collection:
    def __init__(self, cid, name, ctype, records=(), identity_fields=("email",),
                 email_nocase=True, otp=True, list_rule=None, fields=()):
        self.id, self.name, self.type = cid, name, ctype
        self.records = list(records)
        self.identity_fields = list(identity_fields)
        self.email_nocase = email_nocase
        self.password_auth = ctype == "auth"
        self.otp = otp and ctype == "auth"
        self.otp_duration = 180
        self.otp_length = 8
        self.oauth2 = False
        self.mfa = False
        self.list_rule = list_rule
        self.fields = list(fields)

    def is_auth(self):
        return self.type == "auth"

    def find_by_field(self, field, value):
        """The lookup of findRecordByIdentityField: COLLATE NOCASE (ASCII) on email when
        its unique index says so, otherwise SQLite's binary comparison."""
        want = _gb(value)
        for rec in self.records:
            have = getattr(rec, field, None)
            if have is None:
                continue
            have = _gb(have)
            if field == "email" and self.email_nocase:
                if have.lower() == want.lower():   # bytes.lower() folds ASCII only
                    return rec
            elif have == want:
                return rec
        return None

    def find_by_id(self, rid):
        for rec in self.records:
            if rec.id == rid:
                return rec
        return None


def _default_collections():
    users = _Collection(USERS_ID, "users", "auth", [
        _Record("alicerecord0001", "alice@example.com", "correct horse", "alice", "Alice"),
        _Record("victimrecord001", "victim@example.com", "s3cret-victim", "victim", "Victim"),
    ], identity_fields=("email", "username"), list_rule="id = @request.auth.id",
        fields=("avatar", "name", "username"))
    superusers = _Collection(SUPERUSERS_ID, "_superusers", "auth", [
        _Record("adminrecord0001", "admin@example.com", "admin-pass"),
    ])
    customers = _Collection(CUSTOMERS_ID, "customers", "auth", [
        _Record("carolrecord0001", "carol@example.com", "carol-pass", name="Carol"),
    ], fields=("name",))
    posts = _Collection(POSTS_ID, "posts", "base", list_rule="")
    system = [_Collection("pbc_%d" % zlib.crc32(("base" + n).encode()), n, "base")
              for n in ("_mfas", "_otps", "_externalAuths", "_authOrigins")]
    return system + [superusers, users, customers, posts]


_EMAIL_RE = None


def _is_email(s):
    """ozzo-validation is.EmailFormat (govalidator.IsEmail's regular expression)."""
    global _EMAIL_RE
    if _EMAIL_RE is None:
        u = "\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef"
        atext = "[a-zA-Z0-9!#$%&'*+\\-/=?^_`{|}~" + u + "]"
        qtext = "[\x01-\x08\x0b\x0c\x0e-\x1f\x7f!\x23-\x5b\x5d-\x7e" + u + "]"
        qpair = "\\\\[\x01-\x09\x0b\x0c\x0d-\x7f" + u + "]"
        fws = "(?:(?:[ \t]*\r\n)?[ \t]+)"
        local = ("(?:%s+(?:\\.%s+)*|\"(?:%s?(?:%s|%s))*%s?\")"
                 % (atext, atext, fws, qtext, qpair, fws))
        label_char = "[a-zA-Z0-9" + u + "]"
        label_mid = "[a-zA-Z0-9\\-._~" + u + "]"
        alpha_char = "[a-zA-Z" + u + "]"
        domain = ("(?:(?:%s|%s%s*%s)\\.)+(?:%s|%s%s*%s)\\.?"
                  % (label_char, label_char, label_mid, label_char,
                     alpha_char, alpha_char, label_mid, alpha_char))
        _EMAIL_RE = re.compile(local + "@" + domain)
    return _EMAIL_RE.fullmatch(_clean_text(s)) is not None


# ---------------------------------------------------------------------------------------
# PocketBase errors, validation

class _ApiError(Exception):
    def __init__(self, status, message, data=None):
        Exception.__init__(self, message)
        self.status = status
        message = message.strip()
        if message and message[-1] not in ".?!":
            message += "."
        self.message = message[:1].upper() + message[1:]
        self.data = data or {}


def _bad_request(message="", data=None):
    return _ApiError(400, message or "Something went wrong while processing your request.",
                     data)


def _not_found(message="The requested resource wasn't found."):
    return _ApiError(404, message)


def _required(v):
    if v in ("", None, 0) or v == []:
        return {"code": "validation_required", "message": "Cannot be blank."}
    return None


def _length(lo, hi):
    def rule(v):
        if v in ("", None):
            return None
        n = len(_gb(v))
        if n < lo or n > hi:
            return {"code": "validation_length_out_of_range",
                    "message": "The length must be between %d and %d." % (lo, hi),
                    "params": {"max": hi, "min": lo}}
        return None
    return rule


def _email_format(v):
    if v in ("", None) or _is_email(v):
        return None
    return {"code": "validation_is_email", "message": "Must be a valid email address."}


def _in(allowed):
    def rule(v):
        if v in ("", None) or v in allowed:
            return None
        return {"code": "validation_in_invalid", "message": "Must be a valid value."}
    return rule


def _error_rule(code, message):
    return lambda v: None if v in ("", None) else {"code": code, "message": message}


def _validate(*fields):
    """ozzo-validation ValidateStruct: the first failing rule of each field."""
    errors = {}
    for name, value, rules in fields:
        for rule in rules:
            e = rule(value)
            if e:
                errors[name] = e
                break
    if errors:
        raise _bad_request("An error occurred while validating the submitted data.",
                           dict(sorted(errors.items())))


# ---------------------------------------------------------------------------------------
# net/http ServeMux (Go 1.22+)

class _Pattern:
    def __init__(self, text):
        self.text = text
        method, sep, rest = text.partition(" ")
        if not sep:
            method, rest = "", text
        self.method = method
        self.segments = []   # (name or literal, wild, multi)
        rest = rest.strip()
        while rest:
            rest = rest[1:]
            if rest == "":
                self.segments.append(("", True, True))
                break
            i = rest.find("/")
            if i < 0:
                i = len(rest)
            seg, rest = rest[:i], rest[i:]
            if not seg.startswith("{"):
                self.segments.append((_path_unescape_or_raw(seg), False, False))
                continue
            name = seg[1:-1]
            if name == "$":
                self.segments.append(("/", False, False))
                break
            multi = name.endswith("...")
            self.segments.append((name[:-3] if multi else name, True, multi))

    def last_multi(self):
        return bool(self.segments) and self.segments[-1][2]

    def wildcard_names(self):
        return [s for s, wild, _ in self.segments if wild and s]


class _Node:
    __slots__ = ("pattern", "handler", "children", "empty")

    def __init__(self):
        self.pattern = None
        self.handler = None
        self.children = {}
        self.empty = None

    def add_child(self, key):
        if key == "":
            if self.empty is None:
                self.empty = _Node()
            return self.empty
        return self.children.setdefault(key, _Node())

    def find_child(self, key):
        return self.empty if key == "" else self.children.get(key)


def _first_segment(path):
    if path == "/":
        return "/", ""
    path = path[1:]
    i = path.find("/")
    if i < 0:
        i = len(path)
    return _path_unescape_or_raw(path[:i]), path[i:]


def _match_path(n, path, matches):
    """routingNode.matchPath."""
    if n is None:
        return None, None
    if path == "":
        return (n, matches) if n.pattern is not None else (None, None)
    seg, rest = _first_segment(path)
    r = _match_path(n.find_child(seg), rest, matches)
    if r[0] is not None:
        return r
    if seg != "/":
        r = _match_path(n.empty, rest, matches + [seg])
        if r[0] is not None:
            return r
    c = n.children.get("*")
    if c is not None:
        if c.pattern.segments[-1][0] != "":
            matches = matches + [_path_unescape_or_raw(path[1:])]
        return c, matches
    return None, None


class ServeMux:
    """http.ServeMux with Go 1.22 patterns, without hosts."""

    def __init__(self, redirect_status=301):
        self.root = _Node()
        self.redirect_status = redirect_status

    def handle(self, pattern, handler):
        p = _Pattern(pattern)
        n = self.root.add_child(p.method)
        for seg, wild, multi in p.segments:
            if multi:
                n = n.add_child("*")
                break
            n = n.add_child("" if wild else seg)
        n.pattern, n.handler = p, handler

    def _match(self, method, path):
        m = self.root.children.get(method) if method else None
        n, matches = _match_path(m, path, [])
        if n is None and method == "HEAD":
            n, matches = _match_path(self.root.children.get("GET"), path, [])
        if n is None:
            n, matches = _match_path(self.root.empty, path, [])
        return n, matches

    @staticmethod
    def _exact(n, path):
        if n is None:
            return False
        if not n.pattern.last_multi():
            return True
        if path and path[-1] != "/":
            return False
        return len(n.pattern.segments) == path.count("/")

    def find(self, method, path, escaped_path, raw_query):
        """findHandler: ("route", node, path values) | ("redirect", location) |
        ("405", allow) | ("404", None)."""
        cleaned = _http_clean_path(escaped_path)
        n, matches = self._match(method, cleaned)
        if not self._exact(n, cleaned) and not cleaned.endswith("/"):
            n2, _ = self._match(method, cleaned + "/")
            if self._exact(n2, cleaned + "/"):
                return "redirect", self._location(_http_clean_path(path) + "/", raw_query)
        if cleaned != escaped_path:
            return "redirect", self._location(cleaned, raw_query)
        if n is None:
            allowed = set()
            for m, child in self.root.children.items():
                if _match_path(child, cleaned, [])[0] is not None:
                    allowed.add(m)
            if "GET" in allowed:
                allowed.add("HEAD")
            if allowed:
                return "405", ", ".join(sorted(allowed))
            return "404", None
        return "route", n, dict(zip(n.pattern.wildcard_names(), matches))

    @staticmethod
    def _location(path, raw_query):
        """url.URL{Path: path, RawQuery: q}.String(), then http.Redirect's clean-up."""
        url = _go_escape_path(path)
        trailing = url.endswith("/")
        url = _go_path_clean(url)
        if trailing and not url.endswith("/"):
            url += "/"
        return url + ("?" + raw_query if raw_query else "")


# ---------------------------------------------------------------------------------------
# The server side of a connection (net/http conn.serve)

class _BodyError(Exception):
    pass


class _Body:
    """A request body read from the connection on demand, as net/http's body reader:
    Content-Length or chunked; 100 Continue sent on the first read."""

    def __init__(self, conn, length, chunked, expect_continue):
        self.conn = conn
        self.length = -1 if chunked else length
        self.chunked = chunked
        self.left = 0 if chunked else length
        self.expect_continue = expect_continue
        self.sent_continue = False
        self.data = bytearray()
        self.eof = length == 0 and not chunked
        self.error = None
        self.chunk_left = 0
        self.need_crlf = False
        self.excess = 0

    def read_some(self, n=65536):
        """Some more bytes (b"" at the end); _BodyError when the body is broken."""
        if self.error:
            raise _BodyError(self.error)
        if self.eof:
            return b""
        if self.expect_continue and not self.sent_continue:
            self.sent_continue = True
            self.conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            b = self._read_chunked(n) if self.chunked else self._read_plain(n)
        except _BodyError as e:
            self.error = str(e)
            raise
        except OSError as e:
            self.error = "read: %s" % e
            raise _BodyError(self.error)
        self.data += b
        return b

    def read_all(self, limit=None):
        while not self.eof and (limit is None or len(self.data) <= limit):
            self.read_some()
        return bytes(self.data)

    def _read_plain(self, n):
        b = self.conn.rfile.read1(min(n, self.left))
        if not b:
            raise _BodyError("unexpected EOF")
        self.left -= len(b)
        if self.left == 0:
            self.eof = True
        return b

    def _read_chunked(self, n):
        rfile = self.conn.rfile
        while self.chunk_left == 0:
            if self.need_crlf:
                crlf = rfile.read(2)
                if len(crlf) < 2:
                    raise _BodyError("unexpected EOF")
                if crlf != b"\r\n":
                    raise _BodyError("malformed chunked encoding")
                self.need_crlf = False
            line = rfile.readline(4097)
            if not line.endswith(b"\n"):
                raise _BodyError("unexpected EOF" if len(line) < 4097 else "header line too long")
            idx = line.find(b"\r")
            if idx < 0:
                raise _BodyError("chunked line ends with bare LF")
            if idx != len(line) - 2:
                raise _BodyError("invalid CR in chunked line")
            line = line[:-2]
            if len(line) >= 4096:
                raise _BodyError("header line too long")
            self.excess += len(line) + 2
            line = line.rstrip(b" \t\r\n").split(b";", 1)[0]
            if not line:
                raise _BodyError("empty hex number for chunk length")
            if len(line) > 16:
                raise _BodyError("http chunk length too large")
            if not all(c in _HEXDIGITS for c in line):
                raise _BodyError("invalid byte in chunk length")
            size = int(line, 16)
            self.excess = max(self.excess - 16 - 2 * size, 0)
            if self.excess > 16 * 1024:
                raise _BodyError("chunked encoding contains too much non-data")
            if size == 0:
                self._read_trailer()
                self.eof = True
                return b""
            self.chunk_left = size
        b = rfile.read1(min(n, self.chunk_left))
        if not b:
            raise _BodyError("unexpected EOF")
        self.chunk_left -= len(b)
        if self.chunk_left == 0:
            self.need_crlf = True
        return b

    def _read_trailer(self):
        rfile = self.conn.rfile
        lines, used = [], 0
        while True:
            line = rfile.readline(4097)
            used += len(line)
            if not line.endswith(b"\n"):
                raise _BodyError("unexpected EOF reading trailer")
            if used > 4096:
                raise _BodyError("http: suspiciously long trailer after chunked body")
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                break
            lines.append(line)
        try:
            _parse_header_lines(lines)
        except _ProtoError as e:
            raise _BodyError(str(e))


class _Request:
    def __init__(self, record, method, version, header, url, content_length, body, close):
        self.record = record
        self.method = method
        self.version = version
        self.header = header
        self.url = url
        self.content_length = content_length
        self.body = body
        self.close = close


class _Response:
    def __init__(self, status, body=b"", content_type=None, headers=None):
        self.status = status
        self.body = body
        self.header = headers or _Header()
        if content_type and not self.header.get("Content-Type"):
            self.header.set("Content-Type", content_type)
        self.stream = None       # callable(writer) for a streamed body
        self.stream_length = None


_STATUS_TEXT = {
    100: "Continue", 200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found",
    303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 413: "Request Entity Too Large", 417: "Expectation Failed",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 505: "HTTP Version Not Supported",
}


class _Closed(Exception):
    pass


class _Conn:
    def __init__(self, stub, sock, client):
        self.stub = stub
        self.sock = sock
        self.client = client
        self.rfile = sock.makefile("rb", buffering=65536)
        self.lock = threading.Lock()

    def send(self, data):
        with self.lock:
            self.sock.sendall(data)

    def close(self):
        # shut down first: it wakes a thread blocked reading, which holds rfile's lock
        for f in (lambda: self.sock.shutdown(socket.SHUT_RDWR), self.rfile.close,
                  self.sock.close):
            try:
                f()
            except OSError:
                pass

    def serve(self):
        last_method = None
        while not self.stub._stopping.is_set():
            if last_method == "POST":
                peek = self.rfile.peek(4)[:4]
                k = 0
                while k < len(peek) and peek[k] in b"\r\n":
                    k += 1
                if k:
                    self.rfile.read(k)
            try:
                req = self._read_request()
            except _Closed:
                return
            if req is None:
                return
            last_method = req.method
            if not self._serve_request(req):
                return

    def _reject(self, lines, status, text, record=None):
        """conn.serve's replies to a request it could not read."""
        if status == 400 and text:
            line = "HTTP/1.1 400 Bad Request: %s" % text
            body = "400 Bad Request: %s" % text
        elif status == 501:
            line, body = "HTTP/1.1 501 Not Implemented", "Unsupported transfer encoding"
        elif status == 431:
            line = "HTTP/1.1 431 Request Header Fields Too Large"
            body = "431 Request Header Fields Too Large"
        elif status == 505:
            line = "HTTP/1.1 505 HTTP Version Not Supported: unsupported protocol version"
            body = "505 HTTP Version Not Supported: unsupported protocol version"
        elif status == 417:
            line, body = "HTTP/1.1 417 Expectation Failed", ""
        else:
            line, body = "HTTP/1.1 400 Bad Request", "400 Bad Request"
        if record is None:
            first = lines[0] if lines else b""
            parts = first.split(b" ", 2)
            record = RequestRecord(_gs(parts[0]), _gs(parts[1]) if len(parts) > 1 else "",
                                   _gs(parts[2]) if len(parts) > 2 else "", [], self.client)
        record.status = status
        record.reason = text or _STATUS_TEXT.get(status)
        record.complete = True
        self.stub._add_rejected(record)
        data = body.encode()
        try:
            self.send(("%s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                       "Content-Length: %d\r\n\r\n" % (line, len(data))).encode() + data)
        except OSError:
            pass
        raise _Closed()

    def _read_head(self):
        lines, used = [], 0
        while True:
            try:
                raw = self.rfile.readline(MAX_HEADER_BYTES - used + 1)
            except (OSError, ValueError):
                raise _Closed()
            if not raw:
                if not lines:
                    return None
                self._reject(lines, 400, None)
            used += len(raw)
            if used > MAX_HEADER_BYTES:
                self._reject(lines, 431, None)
            if not raw.endswith(b"\n"):
                if not lines:
                    lines.append(raw)
                self._reject(lines, 400, None)
            line = raw[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if lines and not line:
                return lines
            lines.append(line)

    def _read_request(self):
        lines = self._read_head()
        if lines is None:
            return None
        first = lines[0]
        method, sp1, rest = first.partition(b" ")
        target, sp2, proto = rest.partition(b" ")
        if not sp1 or not sp2:
            self._reject(lines, 400, None)
        method, target, proto = _gs(method), _gs(target), _gs(proto)
        if not method or not all(ord(c) < 0x80 and ord(c) in _TCHAR for c in method):
            self._reject(lines, 400, None)
        m = re.fullmatch(r"HTTP/([0-9])\.([0-9])", proto)
        if not m:
            self._reject(lines, 400, None)
        version = (int(m.group(1)), int(m.group(2)))
        try:
            url = _parse_request_uri(target)
        except ValueError:
            self._reject(lines, 400, None)
        try:
            items = _parse_header_lines(lines[1:])
        except _ProtoError:
            self._reject(lines, 400, None)
        record = RequestRecord(method, target, proto, [(raw, v) for _, raw, v in items],
                               self.client)
        record.path, record.query = url["path"], url["query"]
        record.escaped_path = _escaped_path(url["path"], url["raw_path"])
        header = _Header((k, v) for k, _, v in items)
        close = _should_close(version, header)

        # transfer.go readTransfer
        chunked = False
        if header.has("Transfer-Encoding"):
            te = header.values("Transfer-Encoding")
            header.delete("Transfer-Encoding")
            if version >= (1, 1):
                if len(te) != 1 or _gb(te[0]).lower() != b"chunked":   # ascii.EqualFold
                    self._reject(lines, 501, None, record)
                header.delete("Content-Length")
                chunked = True
        cls = header.values("Content-Length")
        if len(cls) > 1:
            first_cl = cls[0].strip(" \t")
            if any(c.strip(" \t") != first_cl for c in cls[1:]):
                self._reject(lines, 400, None, record)
            header.set("Content-Length", first_cl)
            cls = [first_cl]
        if chunked:
            length = -1
        elif cls:
            cl = cls[0].strip(" \t")
            if not re.fullmatch(r"[0-9]+", cl) or int(cl) >= (1 << 63):
                self._reject(lines, 400, None, record)
            length = int(cl)
        else:
            length = 0

        # server.go readRequest
        if version[0] != 1:
            self._reject(lines, 505, None, record)
        hosts = header.values("Host")
        if version >= (1, 1) and not hosts and method != "CONNECT":
            self._reject(lines, 400, "missing required Host header", record)
        if len(hosts) > 1:
            self._reject(lines, 400, "too many Host headers", record)
        if hosts and not all(c in _VALID_HOST_BYTES for c in _gb(hosts[0])):
            self._reject(lines, 400, "malformed Host header", record)
        for key, values in header.map.items():
            if not key or not all(ord(c) < 0x80 and ord(c) in _TCHAR for c in key):
                self._reject(lines, 400, "invalid header name", record)
            for v in values:
                if any(c < 0x20 and c != 0x09 or c == 0x7F for c in _gb(v)):
                    self._reject(lines, 400, "invalid header value", record)
        expect = header.get("Expect")
        expect_continue = _has_token([expect], "100-continue")
        if not expect_continue and expect:
            self._reject(lines, 417, None, record)
        body = _Body(self, length, chunked,
                     expect_continue and version >= (1, 1) and length != 0)
        record._body = body
        return _Request(record, method, version, header, url, length, body, close)

    def _serve_request(self, req):
        stub = self.stub
        stub._add_request(req.record)
        writer = _Writer(self, req)
        try:
            resp = stub._app.serve(req, writer)
            if resp is not None:
                writer.write_response(resp)
        except OSError:
            writer.closing = True
        finally:
            req.record.complete = True
            req.record.body_error = req.body.error
        return not writer.closing and not req.close


_VALID_HOST_BYTES = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                        b"!$%&'()*+,-.:;=[]_~")


def _should_close(version, header):
    conn = header.values("Connection")
    if version[0] < 1:
        return True
    if version == (1, 0):
        return _has_token(conn, "close") or not _has_token(conn, "keep-alive")
    return _has_token(conn, "close")


class _Writer:
    """Writes a response the way net/http's response/chunkWriter does."""

    def __init__(self, conn, req):
        self.conn = conn
        self.req = req
        self.closing = False
        self.wrote_header = False
        self.chunked = False

    def _finish_body(self):
        """The post-handler body handling of net/http (drain up to 256 KiB, else close)."""
        body = self.req.body
        if self.req.content_length == 0 or body.eof:
            if body.error:
                self.closing = True
            return
        if body.expect_continue and not body.eof:
            self.closing = True
            return
        if body.error:
            self.closing = True
            return
        if not body.chunked and body.left >= POST_HANDLER_DRAIN:
            self.closing = True
            return
        start = len(body.data)
        try:
            while not body.eof and len(body.data) - start <= POST_HANDLER_DRAIN:
                body.read_some()
        except _BodyError:
            self.closing = True
            return
        if not body.eof:
            self.closing = True

    def _head(self, resp, length):
        self._finish_body()
        req = self.req
        self.req.record.status = resp.status
        if _has_token(resp.header.values("Connection"), "close"):
            self.closing = True
        lines = ["HTTP/1.1 %d %s" % (resp.status, _STATUS_TEXT.get(resp.status, "Status"))]
        for key in sorted(resp.header.map):
            if key in ("Content-Length", "Connection", "Transfer-Encoding", "Date"):
                continue
            for v in resp.header.map[key]:
                lines.append("%s: %s" % (key, v))
        lines.append("Date: %s" % email.utils.formatdate(usegmt=True))
        no_body = resp.status in (204, 304) or 100 <= resp.status < 200
        if length is not None and not no_body:
            lines.append("Content-Length: %d" % length)
        elif length is None and not no_body:
            if req.version >= (1, 1):
                lines.append("Transfer-Encoding: chunked")
                self.chunked = True
            else:
                self.closing = True
        if self.closing or req.close:
            if req.version >= (1, 1) or self.closing:
                lines.append("Connection: close")
        elif req.version == (1, 0):
            lines.append("Connection: keep-alive")
        self.wrote_header = True
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def write_response(self, resp):
        if resp.stream is not None:
            head = self._head(resp, resp.stream_length)
            self.conn.send(head)
            if self.req.method != "HEAD":
                resp.stream(self)
                if self.chunked:
                    self.conn.send(b"0\r\n\r\n")
            return
        body = resp.body if resp.status not in (204, 304) else b""
        head = self._head(resp, len(body))
        self.conn.send(head + (b"" if self.req.method == "HEAD" else body))

    def write(self, data):
        """A piece of a streamed body, sent at once."""
        if not data:
            return
        if self.chunked:
            data = b"%x\r\n" % len(data) + data + b"\r\n"
        self.conn.send(data)


# ---------------------------------------------------------------------------------------
# PocketBase: middlewares, routes, handlers

class _Event:
    def __init__(self, app, req, writer, pattern, values):
        self.app = app
        self.req = req
        self.writer = writer
        self.pattern = pattern
        self.values = values
        self.header = _Header()
        self.auth = None
        self.body_limit = None

    def path_value(self, name):
        return self.values.get(name, "")


def _mw(mid, priority, func):
    return (mid, priority, func)


class _PocketBase:
    def __init__(self, stub, redirect_status, pb_public):
        self.stub = stub
        self.mux = ServeMux(redirect_status)
        self.global_mw = [
            _mw("pbCors", -1041, self.mw_cors),
            _mw("pbActivityLogger", -1040, None),
            _mw("pbPanicRecover", -1030, None),
            _mw("pbRateLimit", -1000, None),   # rate limits are off by default
            _mw("pbLoadAuthToken", -1020, self.mw_load_auth_token),
            _mw("pbSuperuserIPsWhitelist", -1015, None),
            _mw("pbSecurityHeaders", -1010, self.mw_security_headers),
            _mw("pbBodyLimit", -990, self.mw_body_limit(MAX_BODY)),
        ]
        self._register(pb_public)

    # -- registration (apis/base.go NewRouter, apis/serve.go Serve) ---------------------

    def route(self, pattern, handler, mws=(), unbind=()):
        chain = [m for m in self.global_mw if m[0] not in unbind]
        for m in mws:
            for i, existing in enumerate(chain):
                if m[0] and existing[0] == m[0]:
                    chain[i] = m
                    break
            else:
                chain.append(m)
        chain.sort(key=lambda m: m[1])
        self.mux.handle(pattern, (pattern, handler, [m for m in chain if m[2] is not None]))

    def _register(self, pb_public):
        su = _mw("pbRequireSuperuserAuth", 0, self.mw_require_superuser)
        same = _mw("pbRequireSameCollectionContextAuth", 0, self.mw_require_same_collection)
        auth = _mw("pbRequireAuth", 0, self.mw_require_auth)
        rate = _mw("pbRateLimit", -1000, self.mw_collection_lookup)
        dyn_limit = _mw("pbBodyLimit", -990, self.mw_dynamic_body_limit)
        r = self.route
        for p in ("GET /api/settings", "PATCH /api/settings", "POST /api/settings/test/s3",
                  "POST /api/settings/test/email",
                  "POST /api/settings/apple/generate-client-secret"):
            r(p, self.h_settings, [su])
        for p in ("GET /api/collections", "POST /api/collections",
                  "GET /api/collections/{collection}", "PATCH /api/collections/{collection}",
                  "DELETE /api/collections/{collection}",
                  "DELETE /api/collections/{collection}/truncate",
                  "PUT /api/collections/import", "GET /api/collections/meta/scaffolds",
                  "GET /api/collections/meta/oauth2-providers",
                  "POST /api/collections/meta/dry-run-view"):
            r(p, self.h_superuser_ok, [su])
        rec = "/api/collections/{collection}/records"
        r("GET " + rec, self.h_records_list, unbind={"pbRateLimit"})
        r("GET " + rec + "/{id}", self.h_record_view, unbind={"pbRateLimit"})
        r("POST " + rec, self.h_record_create, [dyn_limit], unbind={"pbRateLimit"})
        r("PATCH " + rec + "/{id}", self.h_record_missing, [dyn_limit], unbind={"pbRateLimit"})
        r("DELETE " + rec + "/{id}", self.h_record_missing, unbind={"pbRateLimit"})
        r("GET /api/oauth2-redirect", self.h_oauth2_redirect)
        r("POST /api/oauth2-redirect", self.h_oauth2_redirect)
        c = "/api/collections/{collection}/"
        r("GET " + c + "auth-methods", self.h_auth_methods, [rate])
        r("POST " + c + "auth-refresh", self.h_auth_refresh, [rate, same])
        r("POST " + c + "auth-with-password", self.h_auth_with_password, [rate])
        r("POST " + c + "auth-with-oauth2", self.h_auth_with_oauth2, [rate])
        r("POST " + c + "request-otp", self.h_request_otp, [rate])
        r("POST " + c + "auth-with-otp", self.h_auth_with_otp, [rate])
        r("POST " + c + "request-password-reset", self.h_request_email_action("reset"),
          [rate])
        r("POST " + c + "confirm-password-reset", self.h_confirm_password_reset, [rate])
        r("POST " + c + "request-verification", self.h_request_email_action("verify"),
          [rate])
        r("POST " + c + "confirm-verification", self.h_confirm_verification, [rate])
        r("POST " + c + "request-email-change", self.h_request_email_change, [rate, same])
        r("POST " + c + "confirm-email-change", self.h_confirm_email_change, [rate])
        r("POST " + c + "impersonate/{id}", self.h_impersonate, [su])
        for p in ("GET /api/logs", "GET /api/logs/stats", "GET /api/logs/{id}",
                  "GET /api/crons", "POST /api/crons/{id}", "POST /api/sql",
                  "POST /api/backups", "DELETE /api/backups/{key}",
                  "POST /api/backups/{key}/restore"):
            r(p, self.h_superuser_ok, [su])
        r("POST /api/backups/upload", self.h_superuser_ok,
          [_mw("pbBodyLimit", -990, self.mw_body_limit(0)), su])
        r("GET /api/backups", self.h_backups_list)
        r("GET /api/backups/{key}", self.h_backup_download)
        r("POST /api/files/token", self.h_file_token, [auth])
        r("GET /api/files/{collection}/{recordId}/{filename}", self.h_file, [rate])
        r("POST /api/batch", self.h_batch, unbind={"pbBodyLimit"})
        r("GET /api/realtime", self.h_realtime_connect)
        r("POST /api/realtime", self.h_realtime_subscribe)
        r("GET /api/health", self.h_health)
        r("GET /_/{path...}", self.h_admin_ui)
        if pb_public:
            r("GET /{path...}", self.h_pb_public)
        r("/", self.h_not_found)

    # -- dispatch -------------------------------------------------------------------------

    def serve(self, req, writer):
        rec = req.record
        if rec.target == "*":
            # serverHandler: "OPTIONS *" gets globalOptionsHandler, the mux refuses others
            if req.method == "OPTIONS":
                return _Response(200, b"")
            h = _Header()
            h.set("Connection", "close")
            return _Response(400, b"", headers=h)
        kind = self.mux.find(req.method, req.url["path"], rec.escaped_path, req.url["query"])
        if kind[0] == "redirect":
            h = _Header()
            h.set("Location", kind[1])
            body = b""
            if req.method in ("GET", "HEAD"):
                h.set("Content-Type", "text/html; charset=utf-8")
            if req.method == "GET":
                href = kind[1].replace("&", "&amp;").replace("<", "&lt;").replace(
                    ">", "&gt;").replace('"', "&#34;").replace("'", "&#39;")
                body = ('<a href="%s">%s</a>.\n\n'
                        % (href, _STATUS_TEXT[self.mux.redirect_status])).encode()
            return _Response(self.mux.redirect_status, body, headers=h)
        if kind[0] in ("405", "404"):
            h = _Header()
            h.set("X-Content-Type-Options", "nosniff")
            if kind[0] == "405":
                h.set("Allow", kind[1])
                return _Response(405, b"Method Not Allowed\n", "text/plain; charset=utf-8", h)
            return _Response(404, b"404 page not found\n", "text/plain; charset=utf-8", h)
        _, node, values = kind
        pattern, handler, chain = node.handler
        rec.pattern, rec.path_values = pattern, values
        ev = _Event(self, req, writer, pattern, values)

        def run(i):
            if i == len(chain):
                return handler(ev)
            return chain[i][2](ev, lambda: run(i + 1))

        try:
            resp = run(0)
        except _ApiError as e:
            resp = self.error_response(ev, e)
        for key, values in ev.header.map.items():
            if key not in resp.header.map:
                resp.header.map[key] = list(values)
        return resp

    def error_response(self, ev, err):
        """tools/router/router.go ErrorHandler."""
        body = b"" if ev.req.method == "HEAD" else _go_json(
            {"data": err.data, "message": err.message, "status": err.status})
        ct = ev.header.get("Content-Type") or "application/json"
        return _Response(err.status, body, ct)

    @staticmethod
    def json(status, obj):
        return _Response(status, _go_json(obj), "application/json")

    # -- middlewares ------------------------------------------------------------------------

    def mw_cors(self, ev, nxt):
        req = ev.req
        ev.header.add("Vary", "Origin")
        origin = req.header.get("Origin")
        preflight = req.method == "OPTIONS"
        if origin == "":
            return _Response(204) if preflight else nxt()
        ev.header.set("Access-Control-Allow-Origin", "*")
        if not preflight:
            return nxt()
        ev.header.add("Vary", "Access-Control-Request-Method")
        ev.header.add("Vary", "Access-Control-Request-Headers")
        ev.header.set("Access-Control-Allow-Methods", "GET,HEAD,PUT,PATCH,POST,DELETE")
        h = req.header.get("Access-Control-Request-Headers")
        if h:
            ev.header.set("Access-Control-Allow-Headers", h)
        return _Response(204)

    def mw_load_auth_token(self, ev, nxt):
        token = ev.req.header.get("Authorization")
        if len(token) > 7 and token[:7].lower() == "bearer ":
            token = token[7:]
        if token:
            ev.auth = self.stub._token_owner(token)
        return nxt()

    def mw_security_headers(self, ev, nxt):
        ev.header.set("X-XSS-Protection", "1; mode=block")
        ev.header.set("X-Content-Type-Options", "nosniff")
        ev.header.set("X-Frame-Options", "SAMEORIGIN")
        return nxt()

    def mw_body_limit(self, limit):
        def mw(ev, nxt):
            if limit > 0:
                if ev.req.content_length > limit:
                    raise _ApiError(413, "Request entity too large")
                ev.body_limit = limit
            else:
                ev.body_limit = None
            return nxt()
        return mw

    def mw_dynamic_body_limit(self, ev, nxt):
        col = self.stub._find_collection(ev.path_value("collection"))
        if col is None:
            raise _not_found("Missing or invalid collection context.")
        extra = (5 << 20) if "avatar" in col.fields else 0
        return self.mw_body_limit(MAX_BODY + extra)(ev, nxt)

    def mw_collection_lookup(self, ev, nxt):
        """collectionPathRateLimit: the collection must exist (the limits are off)."""
        if self.stub._find_collection(ev.path_value("collection")) is None:
            raise _not_found("Missing or invalid collection context.")
        return nxt()

    def mw_require_auth(self, ev, nxt):
        if ev.auth is None:
            raise _ApiError(401, "The request requires valid record authorization token.")
        return nxt()

    def mw_require_superuser(self, ev, nxt):
        if ev.auth is None:
            raise _ApiError(401, "The request requires valid record authorization token.")
        if ev.auth[0].name != "_superusers":
            raise _ApiError(403, "The authorized record is not allowed to perform this action.")
        return nxt()

    def mw_require_same_collection(self, ev, nxt):
        if ev.auth is None:
            raise _ApiError(401, "The request requires valid record authorization token.")
        col = self.stub._find_collection(ev.path_value("collection"))
        if col is None or ev.auth[0].id != col.id:
            raise _ApiError(403, "The request requires auth record from %s collection."
                            % ev.auth[0].name)
        return nxt()

    # -- BindBody ---------------------------------------------------------------------------

    def _read_limited(self, ev, parse):
        """Feed the body to parse(data, final) as it arrives, as Go's decoders read it;
        parse raises an *EOF exception to ask for more."""
        body = ev.req.body
        limit = ev.body_limit
        while True:
            data = bytes(body.data)
            final = body.eof or body.error is not None
            if limit is not None and len(data) > limit:
                data, final = data[:limit], True
            try:
                return parse(data, final)
            except (_JSONEOF, _XMLEOF, _MPEOF):
                if limit is not None and len(body.data) > limit:
                    raise _ApiError(413, "Request entity too large")
                if final:
                    raise _BindError("unexpected EOF")
            try:
                body.read_some()
            except _BodyError:
                pass

    def _read_all(self, ev, cap=None):
        body = ev.req.body
        limit = ev.body_limit
        stop = min(x for x in (limit, cap) if x is not None) if (limit or cap) else None
        try:
            body.read_all(stop)
        except _BodyError as e:
            raise _BindError(str(e))
        if limit is not None and len(body.data) > limit:
            raise _ApiError(413, "Request entity too large")
        return bytes(body.data)

    def parse_form(self, ev):
        """Request.ParseForm: (r.Form, error)."""
        req = ev.req
        post, err = {}, None
        if req.method in ("POST", "PUT", "PATCH"):
            ct = req.header.get("Content-Type") or "application/octet-stream"
            mediatype, _, err = go_parse_media_type(ct)
            if mediatype == "application/x-www-form-urlencoded":
                data = self._read_all(ev, 10 << 20)
                if len(data) > 10 << 20:
                    return {}, "http: POST too large"
                post, e = go_parse_query(_gs(data))
                err = err or e
        form = {k: list(v) for k, v in post.items()}
        query, e = go_parse_query(req.url["query"])
        err = err or e
        for k, v in query.items():
            form.setdefault(k, []).extend(v)
        return form, err

    def parse_multipart_form(self, ev):
        """Request.ParseMultipartForm: (r.Form, error)."""
        form, parse_err = self.parse_form(ev)
        ct = ev.req.header.get("Content-Type")
        mediatype, params, err = go_parse_media_type(ct)
        if err or mediatype != "multipart/form-data":
            return form, "request Content-Type isn't multipart/form-data"
        if "boundary" not in params:
            return form, "no multipart boundary param in Content-Type"
        try:
            values = self._read_limited(
                ev, lambda data, final: _multipart_values(data, params["boundary"], final))
        except _MPError as e:
            return form, str(e)
        except _BindError as e:
            return form, str(e)
        for k, v in values:
            form.setdefault(k, []).append(v)
        return form, parse_err

    def bind_body(self, ev, form):
        """tools/router/event.go BindBody into the struct form (a dict of its fields)."""
        dst = form.zero()
        req = ev.req
        if req.content_length == 0:
            return dst
        ct = req.header.get("Content-Type")
        if ct.startswith("application/json"):
            val = self._read_limited(ev, lambda d, final: _json_value(d, 0, final)[0])
            _json_into(form, dst, val)
        elif ct.startswith("multipart/form-data"):
            values, err = self.parse_multipart_form(ev)
            if err:
                raise _BindError(err)
            unmarshal_request_data(values, form, dst)
        elif ct.startswith("application/x-www-form-urlencoded"):
            values, err = self.parse_form(ev)
            if err:
                raise _BindError(err)
            unmarshal_request_data(values, form, dst)
        elif ct.startswith("text/xml") or ct.startswith("application/xml"):
            def parse(data, final):
                try:
                    text = codecs.getincrementaldecoder("utf-8")().decode(data, final)
                except UnicodeDecodeError:
                    raise _XMLError("invalid UTF-8")
                _xml_into(text, form, dst)
            self._read_limited(ev, parse)
        else:
            raise _BindError("unsupported Content-Type")
        return dst

    def bind(self, ev, form, message="An error occurred while loading the submitted data."):
        try:
            return self.bind_body(ev, form)
        except (_BindError, _JSONError, _XMLError, _MPError) as e:
            raise _bad_request(message) from e

    def map_body(self, ev):
        """BindBody into a map[string]any (the records API's request info body)."""
        req = ev.req
        if req.content_length == 0:
            return {}
        ct = req.header.get("Content-Type")
        try:
            if ct.startswith("application/json"):
                val = self._read_limited(ev, lambda d, final: _json_value(d, 0, final)[0])
                return _json_plain(val) if val[0] == "obj" else {}
            if ct.startswith("multipart/form-data") or ct.startswith(
                    "application/x-www-form-urlencoded"):
                values, err = (self.parse_multipart_form(ev) if ct.startswith("multipart")
                               else self.parse_form(ev))
                if err:
                    raise _BindError(err)
                out = {}
                for k, v in values.items():
                    if k == "@jsonPayload":
                        continue
                    out[k] = _infer(v[0]) if len(v) == 1 else [_infer(x) for x in v]
                for payload in values.get("@jsonPayload", []):
                    val = go_json_unmarshal_value(_gb(payload))
                    if val[0] == "obj":
                        out.update(_json_plain(val))
                return out
        except (_BindError, _JSONError, _MPError):
            raise _bad_request("Failed to load the submitted data due to invalid formatting.")
        return {}

    # -- helpers ----------------------------------------------------------------------------

    def real_ip(self, ev):
        return self.stub._real_ip(ev.req)

    def find_auth_collection(self, ev):
        col = self.stub._find_collection(ev.path_value("collection"))
        if col is None or not col.is_auth():
            raise _not_found("Missing or invalid auth collection context.")
        return col

    def record_json(self, col, rec):
        out = {"collectionId": col.id, "collectionName": col.name,
               "created": "2024-01-01 00:00:00.000Z", "email": rec.email,
               "emailVisibility": False, "id": rec.id,
               "updated": "2024-01-01 00:00:00.000Z", "verified": True}
        if "avatar" in col.fields:
            out["avatar"] = ""
        if "name" in col.fields:
            out["name"] = rec.name
        if "username" in col.fields:
            out["username"] = rec.username or ""
        return dict(sorted(out.items()))

    def auth_response(self, col, rec, token=None):
        token = token or self.stub._issue_token(col, rec)
        return self.json(200, {"record": self.record_json(col, rec), "token": token})

    # -- handlers -----------------------------------------------------------------------------

    def h_not_found(self, ev):
        raise _not_found()

    def h_pb_public(self, ev):
        raise _not_found("File not found")

    def h_admin_ui(self, ev):
        name = ev.path_value("path")
        name = _go_path_clean(name.lstrip("/"))
        if name == ".":
            ev.header.set("Content-Security-Policy", "default-src 'self'; style-src 'self' "
                          "'unsafe-inline'; img-src 'self' http://127.0.0.1:* https://tile."
                          "openstreetmap.org data: blob:; connect-src 'self' http://127.0.0.1:*"
                          " https://nominatim.openstreetmap.org; script-src 'self' "
                          "'sha256-GRUzBA7PzKYug7pqxv5rJaec5bwDCw1Vo6/IXwvD3Tc='")
            return _Response(200, b"<!DOCTYPE html><html><head><title>PocketBase</title>"
                             b"</head><body><div id=\"app\">admin UI</div></body></html>\n",
                             "text/html; charset=utf-8")
        if name == "index.html":
            h = _Header()
            h.set("Location", "/_/")
            return _Response(301, b"", headers=h)
        raise _not_found("File not found")

    def h_health(self, ev):
        data = {}
        if ev.auth is not None and ev.auth[0].name == "_superusers":
            data = {"canBackup": True, "possibleProxyHeader": "", "realIP": self.real_ip(ev)}
        return self.json(200, {"message": "API is healthy.", "code": 200, "data": data})

    def h_settings(self, ev):
        return self.json(200, {"meta": {"appName": "Acme", "appURL": "http://localhost:8090"},
                               "batch": {"enabled": False}})

    def h_superuser_ok(self, ev):
        return self.json(200, {})

    def h_batch(self, ev):
        raise _ApiError(403, "Batch requests are not allowed.")

    def h_oauth2_redirect(self, ev):
        h = _Header()
        h.set("Location", "../_/#/auth/oauth2-redirect-failure")
        return _Response(303 if ev.req.method == "POST" else 307, b"", headers=h)

    def h_file_token(self, ev):
        return self.json(200, {"token": self.stub._issue_token(*ev.auth, typ="file")})

    def h_file(self, ev):
        name = ev.path_value("filename")
        data = ("stub file %s/%s/%s\n" % (ev.path_value("collection"),
                                          ev.path_value("recordId"), name)).encode("utf-8",
                                                                                  "replace")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        ev.header.set("Content-Security-Policy",
                      "default-src 'none'; media-src 'self'; style-src 'unsafe-inline'; sandbox")
        ev.header.set("Cache-Control", "max-age=2592000, stale-while-revalidate=86400")
        return _Response(200, data, ctype)

    def h_backups_list(self, ev):
        return self.json(200, [{"key": "pb_backup_stub.zip", "modified":
                                "2024-01-01 00:00:00.000Z", "size": 1 << 20}])

    def h_backup_download(self, ev):
        q, _ = go_parse_query(ev.req.url["query"])
        try:
            size = int(q.get("size", ["1048576"])[0])
            seconds = float(q.get("seconds", ["2"])[0])
        except ValueError:
            raise _bad_request()
        key = ev.path_value("key")
        resp = _Response(200, content_type="application/zip" if key.endswith(".zip")
                         else "application/octet-stream")
        resp.header.set("Content-Disposition", 'attachment; filename="%s"'
                        % key.rsplit("/", 1)[-1].replace('"', ""))
        stopping = self.stub._stopping

        def stream(w):
            piece = 64 << 10
            pieces = max(1, (size + piece - 1) // piece)
            pause = seconds / pieces
            sent = 0
            while sent < size and not stopping.is_set():
                n = min(piece, size - sent)
                w.write(b"\x50" * n)
                sent += n
                if sent < size:
                    stopping.wait(pause)
            if sent < size:
                w.closing = True
                raise OSError("stub stopping")

        resp.stream, resp.stream_length = stream, size
        return resp

    def h_realtime_connect(self, ev):
        stub = self.stub
        client_id = secrets.token_urlsafe(30)[:40]
        resp = _Response(200, content_type="text/event-stream")
        resp.header.set("Cache-Control", "no-store")
        resp.header.set("X-Accel-Buffering", "no")
        ip = self.real_ip(ev)

        def stream(w):
            stub._realtime_clients[client_id] = ip
            try:
                w.write(("id:%s\nevent:PB_CONNECT\ndata:{\"clientId\":\"%s\"}\n\n"
                         % (client_id, client_id)).encode())
                while not stub._stopping.wait(stub.sse_interval):
                    w.write(b": ping\n\n")
            finally:
                stub._realtime_clients.pop(client_id, None)

        resp.stream = stream
        return resp

    def h_realtime_subscribe(self, ev):
        try:
            form = self.bind_body(ev, FORM_REALTIME)
        except (_BindError, _JSONError, _XMLError, _MPError):
            raise _bad_request()
        try:
            _validate(("clientId", form["ClientId"], [_required, _length(1, 255)]))
        except _ApiError as e:
            raise _bad_request("", e.data)
        ip = self.stub._realtime_clients.get(form["ClientId"])
        if ip is None:
            raise _not_found("Missing or invalid client id.")
        if ip != self.real_ip(ev):
            raise _bad_request("Invalid realtime client.")
        return _Response(204)

    def h_records_list(self, ev):
        col = self.stub._find_collection(ev.path_value("collection"))
        if col is None:
            raise _not_found("Missing collection context.")
        is_su = ev.auth is not None and ev.auth[0].name == "_superusers"
        if col.list_rule is None and not is_su:
            raise _ApiError(403, "Only superusers can perform this action.")
        items = []
        if is_su:
            items = [self.record_json(col, rec) for rec in col.records]
        elif col.list_rule and ev.auth is not None and ev.auth[0].id == col.id:
            items = [self.record_json(col, ev.auth[1])]
        return self.json(200, {"items": items, "page": 1, "perPage": 30,
                               "totalItems": len(items), "totalPages": 1 if items else 0})

    def h_record_view(self, ev):
        col = self.stub._find_collection(ev.path_value("collection"))
        if col is None:
            raise _not_found("Missing collection context.")
        rec = col.find_by_id(ev.path_value("id"))
        is_su = ev.auth is not None and ev.auth[0].name == "_superusers"
        own = ev.auth is not None and rec is not None and ev.auth[1] is rec
        if rec is None or not (is_su or own):
            raise _not_found()
        return self.json(200, self.record_json(col, rec))

    def h_record_create(self, ev):
        col = self.stub._find_collection(ev.path_value("collection"))
        is_su = ev.auth is not None and ev.auth[0].name == "_superusers"
        if col.name in ("_superusers", "customers") and not is_su:
            raise _ApiError(403, "Only superusers can perform this action.")
        data = self.map_body(ev)
        out = {k: v for k, v in data.items() if k not in ("password", "passwordConfirm")}
        out.update({"collectionId": col.id, "collectionName": col.name, "id": _random_id(),
                    "created": "2024-01-01 00:00:00.000Z",
                    "updated": "2024-01-01 00:00:00.000Z"})
        return self.json(200, dict(sorted(out.items())))

    def h_record_missing(self, ev):
        if self.stub._find_collection(ev.path_value("collection")) is None:
            raise _not_found("Missing collection context.")
        raise _not_found()

    def h_auth_methods(self, ev):
        col = self.find_auth_collection(ev)
        fields = col.identity_fields if col.password_auth else []
        return self.json(200, {
            "password": {"identityFields": fields, "enabled": col.password_auth},
            "oauth2": {"providers": [], "enabled": False},
            "mfa": {"enabled": col.mfa, "duration": 0},
            "otp": {"enabled": col.otp, "duration": col.otp_duration if col.otp else 0},
            "authProviders": None,
            "usernamePassword": col.password_auth and "username" in fields,
            "emailPassword": col.password_auth and "email" in fields})

    def h_auth_refresh(self, ev):
        col, rec = ev.auth
        return self.auth_response(col, rec)

    def h_auth_with_password(self, ev):
        """apis/record_auth_with_password.go recordAuthWithPassword."""
        col = self.find_auth_collection(ev)
        if not col.password_auth:
            raise _ApiError(403, "The collection is not configured to allow password "
                            "authentication.")
        form = self.bind(ev, FORM_AUTH_WITH_PASSWORD)
        identity, password, field = form["Identity"], form["Password"], form["IdentityField"]
        _validate(("identity", identity, [_required, _length(1, 255)]),
                  ("password", password, [_required, _length(1, 255)]),
                  ("identityField", field, [_length(1, 255), _in(col.identity_fields)]))
        record = None
        if field:
            record = col.find_by_field(field, identity)
        else:
            names = sorted(col.identity_fields, key=lambda n: n != "email") \
                if len(col.identity_fields) > 1 and col.identity_fields[0] != "email" \
                else col.identity_fields
            for name in names:
                if name == "email" and not _is_email(identity):
                    continue
                record = col.find_by_field(name, identity)
                if record is not None:
                    break
        ok = record is not None and _gb(record.password) == _gb(password)
        self.stub._add_attempt(PasswordCheck(col, "auth-with-password", identity, field,
                                             password, record, ok, self.real_ip(ev),
                                             ev.req.record))
        if not ok:
            raise _bad_request("Failed to authenticate.")
        return self.auth_response(col, record)

    def h_request_otp(self, ev):
        """apis/record_auth_otp_request.go recordRequestOTP."""
        col = self.find_auth_collection(ev)
        if not col.otp:
            raise _ApiError(403, "The collection is not configured to allow OTP "
                            "authentication.")
        form = self.bind(ev, FORM_EMAIL)
        _validate(("email", form["Email"], [_required, _length(1, 255), _email_format]))
        record = col.find_by_field("email", form["Email"])
        if record is None:
            return self.json(200, {"otpId": _random_id()})
        otp = self.stub._new_otp(col, record)
        return self.json(200, {"otpId": otp["id"]})

    def h_auth_with_otp(self, ev):
        """apis/record_auth_with_otp.go recordAuthWithOTP."""
        col = self.find_auth_collection(ev)
        if not col.otp:
            raise _ApiError(403, "The collection is not configured to allow OTP "
                            "authentication.")
        form = self.bind(ev, FORM_AUTH_WITH_OTP)
        _validate(("otpId", form["OTPId"], [_required, _length(1, 255)]),
                  ("password", form["Password"], [_required, _length(1, 71)]))
        stub = self.stub
        otp = stub._find_otp(form["OTPId"])
        if otp is None or otp["collection_id"] != col.id or \
                time.time() - otp["created"] > col.otp_duration:
            raise _bad_request("Invalid or expired OTP")
        record = col.find_by_id(otp["record_id"])
        if record is None:
            raise _bad_request("Invalid or expired OTP")
        ip = self.real_ip(ev)
        if not stub._consume_rate("@pb_otp_" + record.id, ip, 5, 180):
            raise _ApiError(429, "Too many attempts, please try again later with a new OTP.")
        ok = _gb(otp["password"]) == _gb(form["Password"])
        stub._add_attempt(PasswordCheck(col, "auth-with-otp", form["OTPId"], "",
                                        form["Password"], record, ok, ip, ev.req.record))
        if not ok:
            raise _bad_request("Invalid or expired OTP")
        stub._delete_otp(otp["id"])
        return self.auth_response(col, record)

    def h_auth_with_oauth2(self, ev):
        self.find_auth_collection(ev)
        raise _ApiError(403, "The collection is not configured to allow OAuth2 "
                        "authentication.")

    def h_request_email_action(self, kind):
        def handler(ev):
            col = self.find_auth_collection(ev)
            if kind == "reset" and not col.password_auth:
                raise _bad_request("The collection is not configured to allow password "
                                   "authentication.")
            if kind == "verify" and col.name == "_superusers":
                raise _bad_request("All superusers are verified by default.")
            form = self.bind(ev, FORM_EMAIL)
            _validate(("email", form["Email"], [_required, _length(1, 255), _email_format]))
            return _Response(204)
        return handler

    def h_confirm_password_reset(self, ev):
        self.find_auth_collection(ev)
        form = self.bind(ev, FORM_CONFIRM_PASSWORD_RESET)
        password = form["Password"]
        mismatch = _error_rule("validation_values_mismatch", "Values don't match.")
        _validate(("token", form["Token"], [_required, _error_rule(
                      "validation_invalid_token", "Invalid or expired token.")]),
                  ("password", password, [_required, _length(8, 255)]),
                  ("passwordConfirm", form["PasswordConfirm"],
                   [_required, lambda v: None if v == password else mismatch(v)]))
        raise _bad_request("Invalid or expired password reset token.")

    def h_confirm_verification(self, ev):
        col = self.find_auth_collection(ev)
        if col.name == "_superusers":
            raise _bad_request("All superusers are verified by default.")
        form = self.bind(ev, FORM_TOKEN)
        _validate(("token", form["Token"], [_required, _error_rule(
            "validation_invalid_token_claims", "Missing email token claim.")]))
        raise _bad_request("Invalid or expired verification token.")

    def h_request_email_change(self, ev):
        col = self.find_auth_collection(ev)
        if col.name == "_superusers":
            raise _bad_request("All superusers can change their emails directly.")
        form = self.bind(ev, FORM_NEW_EMAIL)
        _validate(("newEmail", form["NewEmail"], [_required, _length(1, 255),
                                                  _email_format]))
        return _Response(204)

    def h_confirm_email_change(self, ev):
        col = self.find_auth_collection(ev)
        if col.name == "_superusers":
            raise _bad_request("All superusers can change their emails directly.")
        form = self.bind(ev, FORM_CONFIRM_EMAIL_CHANGE)
        # no email-change token is ever valid here, so the password is never compared
        _validate(("token", form["Token"], [_required, _error_rule(
                      "validation_invalid_token_payload",
                      "Invalid token payload - newEmail must be set.")]),
                  ("password", form["Password"], [_required, _length(1, 100), _error_rule(
                      "validation_invalid_password",
                      "Missing or invalid auth record password.")]))
        raise _bad_request("Invalid or expired token.")

    def h_impersonate(self, ev):
        col = self.find_auth_collection(ev)
        rec = col.find_by_id(ev.path_value("id"))
        if rec is None:
            raise _not_found()
        form = self.bind(ev, FORM_IMPERSONATE)
        if form["Duration"] < 0:
            raise _bad_request("An error occurred while validating the submitted data.",
                               {"duration": {"code": "validation_min_greater_equal_than_"
                                             "required", "message": "Must be no less than 0.",
                                             "params": {"threshold": 0}}})
        return self.auth_response(col, rec, self.stub._issue_token(col, rec,
                                                                   refreshable=False))


def _json_plain(val):
    kind, data = val
    if kind == "obj":
        return {k: _json_plain(v) for k, v in data}
    if kind == "arr":
        return [_json_plain(v) for v in data]
    if kind == "num":
        v = float(data)
        return int(v) if v == int(v) and abs(v) < 1 << 53 else v
    return data


def _infer(raw):
    """unmarshal_request_data.go inferValue: "true"/"false", and numbers whose shortest
    'f' formatting is the raw string."""
    if raw in ("true", "false"):
        return raw == "true"
    if raw and (raw[0] == "-" or "0" <= raw[0] <= "9") and re.fullmatch(r"[-.0-9]+", raw):
        try:
            v = float(raw)
            s = format(decimal.Decimal(repr(v)), "f")
            if "." in s:
                s = s.rstrip("0").rstrip(".")
            if s == raw:
                return int(v) if v == int(v) else v
        except (ValueError, OverflowError, decimal.InvalidOperation):
            pass
    return raw


# ---------------------------------------------------------------------------------------
# The stub

class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, stub):
        self.stub = stub
        socketserver.ThreadingTCPServer.__init__(self, ("127.0.0.1", stub._want_port),
                                                 _Handler)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        stub = self.server.stub
        self.request.settimeout(stub.read_timeout)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(stub, self.request, self.client_address[:2])
        with stub._lock:
            stub._conns.add(conn)
        try:
            conn.serve()
        except (OSError, ValueError):
            pass
        finally:
            with stub._lock:
                stub._conns.discard(conn)
            conn.close()


class PocketBaseStub:
    """The stand-in PocketBase: see the module docstring."""

    def __init__(self, port=0, redirect_status=301, sse_interval=1.0, read_timeout=60.0,
                 trusted_proxy_headers=(), use_leftmost_ip=False, pb_public=True):
        """redirect_status: 301 is Go 1.22-1.25's ServeMux; Go 1.26 (PocketBase's current
        release builds) answers 307. trusted_proxy_headers: PocketBase's TrustedProxy
        setting (none by default: RealIP is the peer address)."""
        self._want_port = port
        self.port = None
        self.sse_interval = sse_interval
        self.read_timeout = read_timeout
        self.trusted_proxy_headers = list(trusted_proxy_headers)
        self.use_leftmost_ip = use_leftmost_ip
        self.collections = _default_collections()
        self._app = _PocketBase(self, redirect_status, pb_public)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns = set()
        self._server = None
        self._thread = None
        self._secret = secrets.token_bytes(32)
        self._tokens = {}
        self._realtime_clients = {}
        self.reset()

    # -- life cycle -------------------------------------------------------------------------

    def start(self):
        self._stopping.clear()
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="pocketbase-stub")
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def url(self, path=""):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    # -- what reached it --------------------------------------------------------------------

    def reset(self):
        with getattr(self, "_lock", threading.Lock()):
            self._attempts = []
            self._requests = []
            self._rejected = []
            self._otps = {}
            self._rates = {}

    @property
    def attempts(self):
        with self._lock:
            return list(self._attempts)

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    @property
    def rejected(self):
        with self._lock:
            return list(self._rejected)

    @property
    def otps(self):
        with self._lock:
            return [dict(o) for o in self._otps.values()]

    def wait_attempts(self, n, timeout=5.0):
        return self._wait(lambda: self.attempts, n, timeout)

    def wait_requests(self, n, timeout=5.0):
        return self._wait(lambda: [r for r in self.requests if r.complete], n, timeout)

    @staticmethod
    def _wait(get, n, timeout):
        deadline = time.time() + timeout
        while True:
            got = get()
            if len(got) >= n or time.time() > deadline:
                return got
            time.sleep(0.01)

    def _add_request(self, record):
        with self._lock:
            self._requests.append(record)

    def _add_rejected(self, record):
        with self._lock:
            self._rejected.append(record)

    def _add_attempt(self, check):
        with self._lock:
            self._attempts.append(check)

    # -- PocketBase state ---------------------------------------------------------------------

    def _find_collection(self, name_or_id):
        """core/collection_query.go FindCachedCollectionByNameOrId."""
        for c in self.collections:
            if go_equal_fold(c.name, name_or_id) or c.id == name_or_id:
                return c
        return None

    def collection(self, name):
        for c in self.collections:
            if c.name == name or c.id == name:
                return c
        raise KeyError(name)

    def token(self, email, collection="auto"):
        """An auth token for the account with this email (no password check recorded)."""
        for c in self.collections:
            if collection in ("auto", c.name, c.id):
                for rec in c.records:
                    if rec.email == email:
                        return self._issue_token(c, rec)
        raise KeyError(email)

    def _issue_token(self, col, rec, typ="auth", refreshable=True):
        head = _b64url(b'{"alg":"HS256","typ":"JWT"}')
        payload = _b64url(json.dumps({"collectionId": col.id, "exp": int(time.time()) + 86400,
                                      "id": rec.id, "refreshable": refreshable, "type": typ},
                                     separators=(",", ":")).encode())
        sig = _b64url(hmac.new(self._secret, ("%s.%s" % (head, payload)).encode(),
                               hashlib.sha256).digest())
        token = "%s.%s.%s" % (head, payload, sig)
        with self._lock:
            self._tokens[token] = (col, rec, typ)
        return token

    def _token_owner(self, token):
        with self._lock:
            owner = self._tokens.get(token)
        if owner is None or owner[2] != "auth":
            return None
        return owner[0], owner[1]

    def _new_otp(self, col, rec):
        with self._lock:
            now = time.time()
            recent = [o for o in self._otps.values()
                      if o["record_id"] == rec.id and now - o["created"] <= col.otp_duration]
            if len(recent) > 9:
                return max(recent, key=lambda o: o["created"])
            otp = {"id": _random_id(), "collection_id": col.id, "record_id": rec.id,
                   "password": "".join(secrets.choice("0123456789")
                                       for _ in range(col.otp_length)),
                   "sent_to": rec.email, "created": now}
            self._otps[otp["id"]] = otp
            return dict(otp)

    def _find_otp(self, otp_id):
        with self._lock:
            otp = self._otps.get(otp_id)
            return dict(otp) if otp else None

    def _delete_otp(self, otp_id):
        with self._lock:
            self._otps.pop(otp_id, None)

    def _consume_rate(self, key, client, max_requests, interval):
        """apis/middlewares_rate_limit.go rateClient.consume (fixed window)."""
        with self._lock:
            now = int(time.time())
            state = self._rates.setdefault((key, client), [0, 0])
            if now - state[1] >= interval:
                state[0], state[1] = max_requests, now
            if state[0] > 0:
                state[0] -= 1
                return True
            return False

    def _real_ip(self, req):
        """core/event_request.go RealIP."""
        for h in self.trusted_proxy_headers:
            values = req.header.values(_canonical_key(h.encode())[0])
            if not values or values[-1] == "":
                continue
            ips = values[-1].split(",")
            for ip in (ips if self.use_leftmost_ip else reversed(ips)):
                try:
                    return _expanded_ip(ip.strip())
                except ValueError:
                    continue
        return _expanded_ip(req.record.client[0])


def _expanded_ip(text):
    ip = ipaddress.ip_address(text)
    return ip.exploded if ip.version == 6 else str(ip)


if pytest is not None:
    @pytest.fixture
    def pocketbase_stub():
        """A started PocketBaseStub, stopped after the test."""
        stub = PocketBaseStub().start()
        try:
            yield stub
        finally:
            stub.stop()
