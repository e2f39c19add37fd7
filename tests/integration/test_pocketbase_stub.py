"""Self-test of the stand-in PocketBase (pocketbase_stub.py), talking to it directly with
raw sockets: its Go routing and body binding, and that it records a password check only
where PocketBase compares a password."""

import json
import re
import socket
import time

import pytest

from pocketbase_stub import (CUSTOMERS_ID, SUPERUSERS_ID, USERS_ID, PocketBaseStub,
                             ServeMux, go_equal_fold, pocketbase_stub)  # noqa: F401

AUTH = "/api/collections/users/auth-with-password"
ALICE = {"identity": "alice@example.com", "password": "correct horse"}


# ---------------------------------------------------------------------------------------
# helpers

def read_response(f, method="GET"):
    """(status, {lower-case name: [values]}, body) of one response read from a file."""
    line = f.readline()
    if not line:
        return None
    status = int(line.split()[1])
    headers = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    if status == 100:
        return read_response(f, method)
    body = b""
    if method == "HEAD" or status in (204, 304):
        return status, headers, body
    if "content-length" in headers:
        body = f.read(int(headers["content-length"][0]))
    elif "chunked" in headers.get("transfer-encoding", [""])[0]:
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                break
            body += f.read(size)
            f.readline()
    else:
        body = f.read()
    return status, headers, body


def read_chunk(f):
    size = int(f.readline().split(b";")[0], 16)
    data = f.read(size)
    assert f.readline() == b"\r\n"
    return data


def send(stub, data, method=None):
    """Send raw bytes on a new connection and read one response."""
    with socket.create_connection(("127.0.0.1", stub.port), timeout=5) as c:
        c.sendall(data)
        with c.makefile("rb") as f:
            return read_response(f, method or data.split(b" ", 1)[0].decode())


def request(stub, method, path, body=b"", headers=(), content_type="application/json",
            chunked=False):
    head = ["%s %s HTTP/1.1" % (method, path), "Host: pb.test"]
    if content_type is not None:
        head.append("Content-Type: " + content_type)
    if chunked:
        head.append("Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                        for i in range(0, len(body), 7)) + b"0\r\n\r\n"
    elif body or method in ("POST", "PUT", "PATCH"):
        head.append("Content-Length: %d" % len(body))
    head.extend(headers)
    data = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
    return send(stub, data, method)


def post_json(stub, path, obj, **kw):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return request(stub, "POST", path, body, **kw)


def js(resp):
    return json.loads(resp[2])


def multipart(parts, boundary="XbOuNdArY"):
    """parts: (header lines, value bytes)."""
    out = b""
    for headers, value in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        for h in headers:
            out += h.encode() + b"\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


def field(name, value, extra=()):
    return (['Content-Disposition: form-data; name="%s"' % name] + list(extra),
            value.encode() if isinstance(value, str) else value)


@pytest.fixture(scope="module")
def shared():
    stub = PocketBaseStub(sse_interval=0.2).start()
    yield stub
    stub.stop()


@pytest.fixture
def stub(shared):
    shared.reset()
    return shared


# ---------------------------------------------------------------------------------------
# net/http ServeMux routing

@pytest.mark.parametrize("path,location", [
    ("/api//collections/users/auth-with-password", "/api/collections/users/auth-with-password"),
    ("/api/./collections/users/auth-with-password", "/api/collections/users/auth-with-password"),
    ("/api/x/../collections/users/auth-with-password?a=b",
     "/api/collections/users/auth-with-password?a=b"),
    ("/api/collections/users/auth-with-password/.", "/api/collections/users/auth-with-password"),
    ("/api/collections/users/auth-with-password/x/..", "/api/collections/users/auth-with-password"),
    ("/api/collections/users/auth-with-password/..", "/api/collections/users"),
    ("/api/collections/users%2Fx/../y", "/api/collections/y"),
])
def test_unclean_paths_are_redirected_not_served(stub, path, location):
    status, headers, _ = post_json(stub, path, ALICE)
    assert status == 301
    assert headers["location"] == [location]
    assert stub.attempts == []
    assert [r.status for r in stub.requests] == [301]
    assert stub.requests[0].pattern is None


def test_redirect_location_escapes_like_go(stub):
    # Go puts the cleaned *escaped* path into url.URL.Path, so its '%' is escaped again
    status, headers, _ = request(stub, "GET", "/a%2Fb//c")
    assert status == 301 and headers["location"] == ["/a%252Fb/c"]


def test_redirect_status_can_be_307():
    with PocketBaseStub(redirect_status=307) as stub:
        assert request(stub, "POST", "/api//health")[0] == 307


def test_literals_are_case_sensitive(stub):
    for path in ("/API/collections/users/auth-with-password",
                 "/api/collections/users/Auth-With-Password",
                 "/api/Collections/users/auth-with-password"):
        status, _, body = post_json(stub, path, ALICE)
        assert status == 404, path
        assert json.loads(body)["message"] == "The requested resource wasn't found."
    assert stub.attempts == []


def test_segments_are_matched_percent_decoded(stub):
    assert post_json(stub, "/api/collections/users/auth%2Dwith%2dpassword", ALICE)[0] == 200
    assert post_json(stub, "/api/collections/us%65rs/auth-with-password", ALICE)[0] == 200
    # an encoded slash stays inside its segment: the collection is "users/x"
    status, _, body = post_json(stub, "/api/collections/users%2Fx/auth-with-password", ALICE)
    assert status == 404
    assert json.loads(body)["message"] == "Missing or invalid collection context."
    assert stub.requests[-1].path_values == {"collection": "users/x"}
    assert [a.success for a in stub.attempts] == [True, True]


def test_collection_by_id_and_by_equal_fold_name(stub):
    cases = [(SUPERUSERS_ID, "_superusers"), ("USERS", "users"),
             ("%C5%BFuperu%C5%BFer%C5%BF".join(["_", ""]), "_superusers"),   # U+017F
             ("U%C5%BFERS", "users"), (CUSTOMERS_ID, "customers")]
    for name, expected in cases:
        status, _, _ = post_json(stub, "/api/collections/%s/auth-with-password" % name,
                                 {"identity": "nobody@example.com", "password": "x"})
        assert status == 400, name
        assert stub.attempts[-1].collection_name == expected
    assert len(stub.attempts) == len(cases)
    # the id is compared exactly
    status, _, body = post_json(stub, "/api/collections/PBC_3142635823/auth-with-password",
                                ALICE)
    assert status == 404
    assert json.loads(body)["message"] == "Missing or invalid collection context."
    # dotless i (U+0131) does not fold to i: "_authOrigins" is not found at all ...
    status, _, body = post_json(
        stub, "/api/collections/_authOr%C4%B1g%C4%B1ns/auth-with-password", ALICE)
    assert json.loads(body)["message"] == "Missing or invalid collection context."
    # ... while an ASCII case change finds it, a base collection
    status, _, body = post_json(stub, "/api/collections/_AUTHORIGINS/auth-with-password",
                                ALICE)
    assert status == 404
    assert json.loads(body)["message"] == "Missing or invalid auth collection context."
    assert len(stub.attempts) == len(cases)


def test_go_equal_fold():
    assert go_equal_fold("\u212aelvin", "kelvin") and go_equal_fold("KELVIN", "\u212aelvin")
    assert go_equal_fold("\u017f", "S") and go_equal_fold("\u017f", "s")
    assert not go_equal_fold("\u0130", "i") and not go_equal_fold("\u0131", "I")
    assert not go_equal_fold("\u0130", "I") and not go_equal_fold("\u0131", "i")
    assert not go_equal_fold("users", "user")
    assert go_equal_fold("\u00df", "\u1e9e") and not go_equal_fold("\u00df", "ss")


def test_base_collection_has_no_auth_endpoints(stub):
    status, _, body = post_json(stub, "/api/collections/posts/auth-with-password", ALICE)
    assert status == 404
    assert js((status, None, body))["message"] == "Missing or invalid auth collection context."
    assert stub.attempts == []


def test_wrong_method_gets_pocketbase_404_not_405(stub):
    # PocketBase registers a method-less catch-all "/", so the mux never answers 405
    status, _, body = request(stub, "GET", AUTH)
    assert status == 404 and json.loads(body)["message"] == "File not found."
    status, _, body = request(stub, "PUT", AUTH, json.dumps(ALICE).encode())
    assert status == 404 and json.loads(body)["message"] == "The requested resource wasn't found."
    assert stub.attempts == []


def test_servemux_patterns():
    mux = ServeMux()
    mux.handle("POST /api/collections/{collection}/auth-with-password", "auth")
    mux.handle("GET /api/health", "health")
    mux.handle("GET /_/{path...}", "ui")
    mux.handle("/static/", "static")
    found = mux.find("POST", "/api/collections/a b/auth-with-password",
                     "/api/collections/a%20b/auth-with-password", "")
    assert found[0] == "route" and found[1].handler == "auth"
    assert found[2] == {"collection": "a b"}
    assert mux.find("GET", "/api/collections/x/auth-with-password",
                    "/api/collections/x/auth-with-password", "") == ("405", "POST")
    assert mux.find("HEAD", "/api/health", "/api/health", "")[0] == "route"
    assert mux.find("DELETE", "/api/health", "/api/health", "") == ("405", "GET, HEAD")
    assert mux.find("GET", "/nothing", "/nothing", "") == ("404", None)
    ui = mux.find("GET", "/_/a/b", "/_/a%2Fx/b", "")
    assert ui[2] == {"path": "a/x/b"}
    assert mux.find("GET", "/_", "/_", "q=1") == ("redirect", "/_/?q=1")
    assert mux.find("GET", "/static", "/static", "") == ("redirect", "/static/")
    assert mux.find("PATCH", "/static/x/y", "/static/x/y", "")[1].handler == "static"


def test_admin_ui_and_trailing_slash_redirect(stub):
    status, headers, _ = request(stub, "GET", "/_")
    assert status == 301 and headers["location"] == ["/_/"]
    status, headers, body = request(stub, "GET", "/_/")
    assert status == 200 and headers["content-type"] == ["text/html; charset=utf-8"]
    assert b"admin UI" in body
    assert request(stub, "GET", "/_/nope.js")[0] == 404


def test_other_endpoints(stub):
    status, headers, body = request(stub, "GET", "/api/health")
    assert status == 200 and json.loads(body)["message"] == "API is healthy."
    assert int(headers["content-length"][0]) == len(body)
    assert request(stub, "HEAD", "/api/health")[0] == 200
    status, _, body = request(stub, "GET", "/api/settings")
    assert status == 401
    assert json.loads(body) == {"data": {}, "status": 401, "message":
                                "The request requires valid record authorization token."}
    token = stub.token("admin@example.com")
    assert request(stub, "GET", "/api/settings", headers=["Authorization: " + token])[0] == 200
    user = stub.token("alice@example.com")
    assert request(stub, "GET", "/api/settings",
                   headers=["Authorization: Bearer " + user])[0] == 403
    status, headers, body = request(stub, "GET", "/api/files/users/abc/photo.png")
    assert status == 200 and headers["content-type"] == ["image/png"] and body
    assert request(stub, "GET", "/api/files/nope/abc/photo.png")[0] == 404
    assert request(stub, "GET", "/api/backups")[0] == 200
    assert request(stub, "GET", "/api/collections/users/records")[0] == 200
    assert request(stub, "GET", "/api/collections/customers/records")[0] == 403
    assert request(stub, "GET", "/api/collections/users/records/nope")[0] == 404
    status, _, body = post_json(stub, "/api/collections/posts/records", {"title": "hi"})
    assert status == 200 and json.loads(body)["title"] == "hi"
    assert request(stub, "DELETE", "/api/collections/posts/records/nope")[0] == 404
    # the answers PocketBase gives to these requests without auth
    assert post_json(stub, "/api/collections/users/auth-refresh", {})[0] == 401
    assert post_json(stub, "/api/collections/users/request-password-reset",
                     {"email": "alice@example.com"})[0] == 204
    assert post_json(stub, "/api/collections/users/confirm-password-reset",
                     {"token": "x", "password": "12345678", "passwordConfirm": "12345678"}
                     )[0] == 400
    assert post_json(stub, "/api/collections/users/request-verification",
                     {"email": "alice@example.com"})[0] == 204
    assert post_json(stub, "/api/collections/users/confirm-verification",
                     {"token": "x"})[0] == 400
    assert post_json(stub, "/api/collections/users/request-email-change",
                     {"newEmail": "a@example.com"})[0] == 401
    assert post_json(stub, "/api/collections/users/confirm-email-change",
                     {"token": "x", "password": "correct horse"})[0] == 400
    assert post_json(stub, "/api/collections/users/auth-with-oauth2",
                     {"provider": "google", "code": "x"})[0] == 403
    assert post_json(stub, "/api/collections/users/impersonate/alicerecord0001", {})[0] == 401
    assert request(stub, "GET", "/api/collections/users/auth-methods")[0] == 200
    assert stub.attempts == []


def test_cors_preflight(stub):
    status, headers, _ = request(stub, "OPTIONS", AUTH, content_type=None,
                                 headers=["Origin: https://a.test",
                                          "Access-Control-Request-Method: POST"])
    assert status == 204 and headers["access-control-allow-origin"] == ["*"]


def test_realtime_sse_and_subscribe(stub):
    with socket.create_connection(("127.0.0.1", stub.port), timeout=5) as c:
        c.sendall(b"GET /api/realtime HTTP/1.1\r\nHost: pb.test\r\n\r\n")
        f = c.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 200")
        headers = []
        while True:
            line = f.readline()
            if line == b"\r\n":
                break
            headers.append(line.decode().strip().lower())
        assert "content-type: text/event-stream" in headers
        assert "transfer-encoding: chunked" in headers
        event = read_chunk(f)
        m = re.fullmatch(rb'id:(\S+)\nevent:PB_CONNECT\ndata:\{"clientId":"(\S+)"\}\n\n', event)
        assert m and m.group(1) == m.group(2)
        client_id = m.group(1).decode()
        start = time.time()
        assert read_chunk(f) == b": ping\n\n" and time.time() - start < 2
        status = post_json(stub, "/api/realtime", {"clientId": client_id,
                                                   "subscriptions": ["posts"]})[0]
        assert status == 204
    assert post_json(stub, "/api/realtime", {"clientId": "nope"})[0] == 404


def test_backup_download_streams_slowly(stub):
    start = time.time()
    status, headers, body = request(stub, "GET", "/api/backups/b.zip?size=300000&seconds=0.6")
    assert status == 200 and headers["content-length"] == ["300000"] and len(body) == 300000
    assert time.time() - start > 0.4


# ---------------------------------------------------------------------------------------
# BindBody: JSON

def test_json_last_member_wins(stub):
    body = b'{"identity":"x@example.com","identity":"alice@example.com","password":"correct horse"}'
    assert post_json(stub, AUTH, body)[0] == 200
    body = b'{"identity":"alice@example.com","IDENTITY":"bob","password":"correct horse"}'
    assert post_json(stub, AUTH, body)[0] == 400
    assert [a.identity for a in stub.attempts] == ["alice@example.com", "bob"]


def test_json_member_names_fold_case(stub):
    body = '{"IDENTITY":"alice@example.com","Pa\u017f\u017fword":"correct horse"}'
    assert post_json(stub, AUTH, body.encode())[0] == 200
    # dotless i folds to nothing ASCII, so this binds no identity
    body = '{"\u0131dentity":"alice@example.com","password":"correct horse"}'
    status, _, out = post_json(stub, AUTH, body.encode())
    assert status == 400 and "identity" in json.loads(out)["data"]
    assert len(stub.attempts) == 1 and stub.attempts[0].success


def test_json_null_is_a_no_op(stub):
    body = b'{"identity":"alice@example.com","password":"correct horse","identity":null}'
    assert post_json(stub, AUTH, body)[0] == 200


def test_json_only_the_first_value_is_read(stub):
    body = b'{"identity":"alice@example.com","password":"correct horse"} trailing {{{ garbage'
    assert post_json(stub, AUTH, body)[0] == 200
    for bad in (b'{"identity":"alice@example.com","password":"correct horse",}',
                b'{"identity":"alice@example.com" "password":"correct horse"}',
                b'{"identity":"alice@example.com","password":"correct horse"',
                b'{"identity":"alice@example.com","password":123}',
                b'{"identity":"alice@example.com","password":["correct horse"]}',
                b'["alice@example.com","correct horse"]', b"   ",
                b'{"identity":"alice@example.com","password":"correct\x01horse"}'):
        status, _, out = post_json(stub, AUTH, bad)
        assert status == 400, bad
        assert json.loads(out)["message"] == "An error occurred while loading the submitted data."
    assert len(stub.attempts) == 1


def test_json_invalid_utf8_and_lone_surrogates_become_fffd(stub):
    body = b'{"identity":"alice@example.com","password":"a\\ud800b\xffc\\udc00\\ud83d\\ude00"}'
    assert post_json(stub, AUTH, body)[0] == 400
    assert stub.attempts[0].password == "a\ufffdb\ufffdc\ufffd\U0001F600"


def test_json_nested_and_unknown_members_are_ignored(stub):
    body = b'{"x":{"identity":"bob","y":[1,{"z":null}]},"identity":"alice@example.com",' \
           b'"password":"correct horse","identityField":"email"}'
    assert post_json(stub, AUTH, body)[0] == 200
    assert stub.attempts[0].identity_field == "email"


def test_content_type_rules(stub):
    body = json.dumps(ALICE).encode()
    # the first Content-Type header is the one
    assert request(stub, "POST", AUTH, body, content_type="text/plain",
                   headers=["Content-Type: application/json"])[0] == 400
    assert request(stub, "POST", AUTH, body, content_type="Application/JSON")[0] == 400
    assert request(stub, "POST", AUTH, body, content_type=None)[0] == 400
    assert stub.attempts == []
    # a prefix is enough
    assert request(stub, "POST", AUTH, body, content_type="application/json-whatever")[0] == 200
    assert request(stub, "POST", AUTH, body, content_type="application/jsonp; x")[0] == 200
    assert len(stub.attempts) == 2


def test_content_length_zero_binds_nothing(stub):
    status, _, out = request(stub, "POST", AUTH + "?identity=alice%40example.com"
                             "&password=correct+horse", b"",
                             content_type="application/x-www-form-urlencoded")
    assert status == 400 and set(json.loads(out)["data"]) == {"identity", "password"}
    assert stub.attempts == []


def test_chunked_body_is_bound(stub):
    status = request(stub, "POST", AUTH, json.dumps(ALICE).encode(), chunked=True)[0]
    assert status == 200 and stub.attempts[0].success
    assert stub.requests[0].body == json.dumps(ALICE).encode()


# ---------------------------------------------------------------------------------------
# BindBody: forms

FORM = "application/x-www-form-urlencoded"


def test_form_first_value_wins_then_query(stub):
    body = b"identity=alice%40example.com&identity=bob&password=correct+horse"
    assert request(stub, "POST", AUTH, body, content_type=FORM)[0] == 200
    # a key missing from the body is taken from the query
    body = b"identity=alice%40example.com"
    assert request(stub, "POST", AUTH + "?password=correct+horse", body,
                   content_type=FORM)[0] == 200
    # the body comes first
    body = b"identity=alice%40example.com&password=wrong"
    assert request(stub, "POST", AUTH + "?password=correct+horse", body,
                   content_type=FORM)[0] == 400
    assert [(a.identity, a.password) for a in stub.attempts] == [
        ("alice@example.com", "correct horse"), ("alice@example.com", "correct horse"),
        ("alice@example.com", "wrong")]


def test_form_keys_are_exact(stub):
    body = b"Identity=alice%40example.com&password=correct+horse"
    assert request(stub, "POST", AUTH, body, content_type=FORM)[0] == 400
    assert stub.attempts == []


def test_form_parse_errors(stub):
    for body, path in ((b"identity=alice%40example.com;x=1&password=correct+horse", AUTH),
                       (b"identity=alice%40example.com&password=correct+horse&x=%zz", AUTH),
                       (b"identity=alice%40example.com&password=correct+horse", AUTH + "?a;b"),
                       (b"identity=alice%40example.com&password=correct+horse", AUTH + "?%")):
        status, _, out = request(stub, "POST", path, body, content_type=FORM)
        assert status == 400, (body, path)
        assert json.loads(out)["message"] == "An error occurred while loading the submitted data."
    # a media type that only starts with the urlencoded one: the body is not parsed
    status, _, out = request(stub, "POST", AUTH + "?password=correct+horse",
                             b"identity=alice%40example.com", content_type=FORM + "x")
    assert status == 400 and set(json.loads(out)["data"]) == {"identity"}
    assert stub.attempts == []


def test_jsonpayload_overrides(stub):
    body = (b"identity=alice%40example.com&password=wrong&%40jsonPayload="
            b"%7B%22password%22%3A%22correct+horse%22%7D")
    assert request(stub, "POST", AUTH, body, content_type=FORM)[0] == 200
    body = b"identity=alice%40example.com&password=wrong&%40jsonPayload=%7B%7D+x"
    assert request(stub, "POST", AUTH, body, content_type=FORM)[0] == 400
    assert [a.password for a in stub.attempts] == ["correct horse"]


def test_multipart_query_comes_first(stub):
    ct = "multipart/form-data; boundary=XbOuNdArY"
    body = multipart([field("identity", "alice@example.com"),
                      field("password", "correct horse")])
    assert request(stub, "POST", AUTH, body, content_type=ct)[0] == 200
    assert request(stub, "POST", AUTH + "?password=guess", body, content_type=ct)[0] == 400
    assert [a.password for a in stub.attempts] == ["correct horse", "guess"]


def test_multipart_file_parts_are_not_values(stub):
    ct = "multipart/form-data; boundary=XbOuNdArY"
    body = multipart([field("identity", "alice@example.com"),
                      (['Content-Disposition: form-data; name="password"; filename="p.txt"'],
                       b"correct horse")])
    status, _, out = request(stub, "POST", AUTH, body, content_type=ct)
    assert status == 400 and set(json.loads(out)["data"]) == {"password"}
    assert stub.attempts == []


def test_multipart_quoted_printable_rfc2231_and_jsonpayload(stub):
    ct = 'multipart/form-data; boundary="XbOuNdArY"'
    body = multipart([
        (["Content-Disposition: form-data; name*=utf-8''%69dentity"], b"alice@example.com"),
        field("password", "correct=20h=\r\norse",
              ["Content-Transfer-Encoding: quoted-printable"]),
    ])
    assert request(stub, "POST", AUTH, body, content_type=ct)[0] == 200
    body = multipart([field("identity", "alice@example.com"), field("password", "x"),
                      field("@jsonPayload", '{"password":"correct horse"}')])
    assert request(stub, "POST", AUTH, body, content_type=ct)[0] == 200
    body = multipart([field("identity", "alice@example.com"),
                      field("password", "correct horse")])[:-6]   # no closing boundary
    assert request(stub, "POST", AUTH, body, content_type=ct)[0] == 400
    assert request(stub, "POST", AUTH, body, content_type="multipart/form-data")[0] == 400
    assert [a.password for a in stub.attempts] == ["correct horse", "correct horse"]


def test_xml(stub):
    ct = "application/xml"
    body = (b'<?xml version="1.0"?><auth><Identity>alice@example.com</Identity>'
            b"<Password>correct <![CDATA[h]]>&#111;rse</Password><extra>x</extra></auth>junk")
    assert request(stub, "POST", AUTH, body, content_type=ct)[0] == 200
    body = b"<auth><identity>alice@example.com</identity><password>x</password></auth>"
    assert request(stub, "POST", AUTH, body, content_type="text/xml")[0] == 400
    body = b"<auth><Identity>alice@example.com</Identity><Password>x</Passwd></auth>"
    assert request(stub, "POST", AUTH, body, content_type=ct)[0] == 400
    assert [a.password for a in stub.attempts] == ["correct horse"]


# ---------------------------------------------------------------------------------------
# What is recorded as a password check

def test_password_checks_only_when_compared(stub):
    # validation failures: no check
    assert post_json(stub, AUTH, {"identity": "alice@example.com"})[0] == 400
    assert post_json(stub, AUTH, {"identity": "a" * 256, "password": "x"})[0] == 400
    assert post_json(stub, AUTH, {"identity": "alice@example.com", "password": "x",
                                  "identityField": "name"})[0] == 400
    assert stub.attempts == []
    # an unknown identity is still checked (PocketBase's dummy bcrypt run)
    assert post_json(stub, AUTH, {"identity": "nobody", "password": "x"})[0] == 400
    # email NOCASE, username exact
    assert post_json(stub, AUTH, {"identity": "ALICE@Example.COM",
                                  "password": "correct horse"})[0] == 200
    assert post_json(stub, AUTH, {"identity": "alice", "password": "correct horse"})[0] == 200
    assert post_json(stub, AUTH, {"identity": "ALICE", "password": "correct horse"})[0] == 400
    got = [(a.identity, a.record_id, a.success, a.endpoint, a.collection_id)
           for a in stub.attempts]
    assert got == [("nobody", None, False, "auth-with-password", USERS_ID),
                   ("ALICE@Example.COM", "alicerecord0001", True, "auth-with-password",
                    USERS_ID),
                   ("alice", "alicerecord0001", True, "auth-with-password", USERS_ID),
                   ("ALICE", None, False, "auth-with-password", USERS_ID)]
    assert stub.attempts[0].request is stub.requests[3]
    status, _, out = post_json(stub, "/api/collections/_superusers/auth-with-password",
                               {"identity": "admin@example.com", "password": "admin-pass"})
    assert status == 200 and json.loads(out)["record"]["id"] == "adminrecord0001"


def test_forwarding_headers_are_recorded(stub):
    post_json(stub, AUTH, ALICE, headers=["X-Forwarded-For: 203.0.113.9, 10.0.0.1",
                                          "X-Real-IP: 203.0.113.9",
                                          "Forwarded: for=203.0.113.9"])
    req = stub.attempts[0].request
    assert req.header("x-forwarded-for") == "203.0.113.9, 10.0.0.1"
    assert req.header("X-Real-Ip") == "203.0.113.9"
    assert req.header("forwarded") == "for=203.0.113.9"
    assert stub.attempts[0].client_ip == "127.0.0.1"
    with PocketBaseStub(trusted_proxy_headers=["X-Forwarded-For"]) as trusting:
        post_json(trusting, AUTH, ALICE, headers=["X-Forwarded-For: 203.0.113.9, 10.0.0.1"])
        assert trusting.attempts[0].client_ip == "10.0.0.1"


def test_otp_flow(stub):
    path = "/api/collections/users/"
    status, _, out = post_json(stub, path + "request-otp", {"email": "victim@example.com"})
    assert status == 200
    otp_id = json.loads(out)["otpId"]
    (otp,) = stub.otps
    assert otp["id"] == otp_id and otp["record_id"] == "victimrecord001"
    # unknown OTP: no password compared
    assert post_json(stub, path + "auth-with-otp", {"otpId": "nope", "password": "1"})[0] == 400
    # the OTP of another collection
    assert post_json(stub, "/api/collections/customers/auth-with-otp",
                     {"otpId": otp_id, "password": otp["password"]})[0] == 400
    assert stub.attempts == []
    for _ in range(4):
        assert post_json(stub, path + "auth-with-otp",
                         {"otpId": otp_id, "password": "00000000"})[0] == 400
    assert post_json(stub, path + "auth-with-otp",
                     {"otpId": otp_id, "password": otp["password"]})[0] == 200
    assert [a.success for a in stub.attempts] == [False] * 4 + [True]
    assert stub.attempts[0].endpoint == "auth-with-otp" and stub.attempts[0].identity == otp_id
    # used: gone
    assert post_json(stub, path + "auth-with-otp",
                     {"otpId": otp_id, "password": otp["password"]})[0] == 400
    # 5 attempts per record and client in 180 s, then 429 before any comparison
    otp_id = json.loads(post_json(stub, path + "request-otp",
                                  {"email": "victim@example.com"})[2])["otpId"]
    status, _, out = post_json(stub, path + "auth-with-otp", {"otpId": otp_id, "password": "1"})
    assert status == 429
    assert len(stub.attempts) == 5
    # an unknown email gets an otpId too, but no OTP exists for it
    status, _, out = post_json(stub, path + "request-otp", {"email": "nobody@example.com"})
    assert status == 200 and len(json.loads(out)["otpId"]) == 15
    assert len(stub.otps) == 1


# ---------------------------------------------------------------------------------------
# The Go HTTP server

def test_keep_alive_and_content_length(stub):
    with socket.create_connection(("127.0.0.1", stub.port), timeout=5) as c:
        f = c.makefile("rb")
        for _ in range(3):
            body = json.dumps(ALICE).encode()
            c.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (AUTH.encode(), len(body), body))
            status, headers, out = read_response(f, "POST")
            assert status == 200 and int(headers["content-length"][0]) == len(out)
    assert len(stub.attempts) == 3


def test_transfer_encoding_wins_over_content_length(stub):
    body = json.dumps(ALICE).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    data = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" % AUTH.encode()) + chunked
    assert send(stub, data)[0] == 200
    assert stub.requests[0].body == body


@pytest.mark.parametrize("head,status", [
    (b"Transfer-Encoding: gzip\r\nContent-Length: 2\r\n", 501),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 501),
    (b"Content-Length: 2\r\nContent-Length: 3\r\n", 400),
    (b"Content-Length: \r\n", 400),
    (b"Content-Length: +2\r\n", 400),
    (b"Content-Type : application/json\r\nContent-Length: 2\r\n", 400),
    (b"X: a\rb\r\nContent-Length: 2\r\n", 400),
    (b"Expect: something\r\nContent-Length: 2\r\n", 417),
])
def test_go_server_refuses(stub, head, status):
    data = b"POST %s HTTP/1.1\r\nHost: x\r\n%s\r\n{}" % (AUTH.encode(), head)
    assert send(stub, data)[0] == status
    assert stub.requests == [] and len(stub.rejected) == 1 and stub.attempts == []


def test_go_server_host_and_request_line(stub):
    assert send(stub, b"GET /api/health HTTP/1.1\r\n\r\n")[0] == 400
    assert send(stub, b"GET /api/health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")[0] == 400
    assert send(stub, b"GET /api/health HTTP/1.0\r\n\r\n")[0] == 200
    assert send(stub, b"GET /api/health HTTP/2.0\r\nHost: a\r\n\r\n")[0] == 505
    assert send(stub, b"GET /api/%zz HTTP/1.1\r\nHost: a\r\n\r\n")[0] == 400
    assert send(stub, b"GET /api/health HTTP/1.1\r\nHost: a\r\nX: folded\r\n  line\r\n\r\n"
                )[0] == 200
    assert stub.requests[-1].header("X") == "folded line"
    bad = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
          b"Transfer-Encoding: chunked\r\n\r\n5\n{}{}{\r\n0\r\n\r\n" % AUTH.encode()
    assert send(stub, bad)[0] == 400   # bare LF in a chunk line: the body cannot be read
    assert stub.attempts == []


def test_expect_continue(stub):
    body = json.dumps(ALICE).encode()
    with socket.create_connection(("127.0.0.1", stub.port), timeout=5) as c:
        c.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                  % (AUTH.encode(), len(body)))
        f = c.makefile("rb")
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert f.readline() == b"\r\n"
        c.sendall(body)
        assert read_response(f, "POST")[0] == 200
    assert stub.attempts[0].success


def test_fixture_and_reset(pocketbase_stub):
    post_json(pocketbase_stub, AUTH, ALICE)
    assert len(pocketbase_stub.wait_attempts(1)) == 1
    pocketbase_stub.reset()
    assert pocketbase_stub.attempts == [] and pocketbase_stub.requests == []
