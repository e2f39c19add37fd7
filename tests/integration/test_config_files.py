"""Configuration files as a user lays them out (issue 23, item 7): paths
relative to the configuration file (not the working directory), `include:`
of other files with their own FILE:LINE:COL in `-t` and `explain`, reloads
that read the included files again, `${ENV}` values from the process's
environment (never echoed), quoted booleans, and the `-t` warnings."""

import json
import os
import shutil
import subprocess

from conftest import BIN, ROOT, free_port, get, wait_port


def run(args, cwd, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([BIN] + args, cwd=str(cwd), capture_output=True, text=True, timeout=30,
                       env=e)
    return p.returncode, p.stdout, p.stderr


def write(path, text):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), "w") as f:
        f.write(text)


def make_cert(directory):
    os.makedirs(str(directory), exist_ok=True)
    crt, key = os.path.join(str(directory), "localhost.crt"), os.path.join(str(directory),
                                                                           "localhost.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


MAIN = """\
workers: 1
listen: [127.0.0.1:%(port)d]
admin: {listen: 127.0.0.1:%(admin)d}
include: conf.d/*.yaml
upstreams:
  main: {servers: [127.0.0.1:%(backend)d]}
sites:
  - hosts: [main.test]
    routes: [{path: /, upstream: main}]
"""

APP = """\
# conf.d/app.yaml: one site of its own
upstreams:
  app: {servers: [127.0.0.1:%(backend)d]}

sites:
  - hosts: [app.test]
    routes:
      - path: /api/
        upstream: app
        stream: "true"
      - path: /
        upstream: app
        headers: {add: {X-From: %(tag)s}}
"""


def layout(tmp_path, backend_port, tag="first"):
    """main.yaml including conf.d/*.yaml; returns main.yaml's path."""
    v = {"port": free_port(), "admin": free_port(), "backend": backend_port, "tag": tag}
    write(tmp_path / "main.yaml", MAIN % v)
    write(tmp_path / "conf.d" / "app.yaml", APP % v)
    return str(tmp_path / "main.yaml")


def test_t_reports_errors_at_the_included_files_line(tmp_path):
    """An error in an included file is reported at that file's line and
    column (before: `include` was an unknown key)."""
    layout(tmp_path, 9)
    rc, out, err = run(["-t", "-c", "main.yaml"], tmp_path)
    assert rc == 0, out + err
    assert "main.yaml: configuration OK" in out
    # A mistake in the included file: at its own place.
    text = open(str(tmp_path / "conf.d" / "app.yaml")).read()
    write(tmp_path / "conf.d" / "app.yaml", text.replace("upstream: app\n        stream",
                                                         "upstream: nowhere\n        stream"))
    write(tmp_path / "conf.d" / "more.yaml", "upstreams:\n  main: {servers: [127.0.0.1:1]}\n")
    rc, out, err = run(["-t", "-c", "main.yaml"], tmp_path)
    assert rc == 1
    lines = err.splitlines()
    assert "conf.d/app.yaml:9:19: no upstream named 'nowhere'" in lines, err
    assert ("conf.d/more.yaml:2:3: upstream 'main' is defined twice: here and at "
            "main.yaml:6:3") in lines, err
    # From another directory: the names the user can open from there.
    rc, out, err = run(["-t", "-c", str(tmp_path / "main.yaml")], "/")
    assert "%s/conf.d/app.yaml:9:19: no upstream named 'nowhere'" % tmp_path in err, err


def test_explain_names_the_file_and_line_of_the_route(tmp_path):
    """explain says where the route it chose is written, the included file
    too: `route: #2 '/' (conf.d/app.yaml line 11)`."""
    layout(tmp_path, 9)
    rc, out, err = run(["explain", "-c", "main.yaml", "GET http://app.test/x"], tmp_path)
    assert rc == 0, out + err
    assert "route:     #2 '/' (conf.d/app.yaml line 11): prefix match" in out, out
    assert "adds:      " in out and "X-From: first" in out
    rc, out, err = run(["explain", "-c", "main.yaml", "GET http://main.test/"], tmp_path)
    assert "route:     #1 '/' (main.yaml line 9): prefix match" in out, out
    # A quoted boolean (stream: "true") was refused; the route is a stream.
    rc, out, err = run(["explain", "-c", "main.yaml", "GET http://app.test/api/x"], tmp_path)
    assert rc == 0 and "route:     #1 '/api/' (conf.d/app.yaml line 8)" in out, out + err


def test_reload_reads_the_included_files_again(tollgate, backend, tmp_path):
    """A change in an included file takes effect on SIGHUP; so does a new
    file the pattern now matches."""
    b = backend()
    port = free_port()
    conf = tmp_path / "tg-conf"
    config = """\
workers: 1
listen: [127.0.0.1:%d]
include: %s/*.yaml
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: [main.test]
    routes: [{path: /, upstream: app}]
""" % (port, conf, b.port)
    write(conf / "app.yaml", "sites:\n  - hosts: [app.test]\n    routes:\n"
          "      - {path: /, upstream: app, headers: {add: {X-Version: one}}}\n")
    tg = tollgate(config)
    status, h, _ = get(port, host="app.test")
    assert status == 200 and h.get("x-version") == "one"
    write(conf / "app.yaml", "sites:\n  - hosts: [app.test]\n    routes:\n"
          "      - {path: /, upstream: app, headers: {add: {X-Version: two}}}\n")
    write(conf / "new.yaml", "sites:\n  - hosts: [new.test]\n    routes:\n"
          "      - {path: /, upstream: app}\n")
    tg.reload()
    status, h, _ = get(port, host="app.test")
    assert status == 200 and h.get("x-version") == "two"
    assert get(port, host="new.test")[0] == 200
    # A mistake in an included file refuses the reload at its line; the
    # running configuration stays.
    write(conf / "new.yaml", "sites:\n  - hosts: [new.test]\n    routes:\n"
          "      - {path: /, upstream: gone}\n")
    tg.reload(expect_ok=False)
    assert "%s/new.yaml:4:29: no upstream named 'gone'" % conf in tg.stderr()
    assert get(port, host="new.test")[0] == 200


def test_env_values_from_the_process_environment(tollgate, backend, tmp_path):
    """${NAME} and ${NAME:-default} are read from tollgate's environment
    before the value is parsed; a secret reaches the backend but is never
    printed by -t or explain."""
    b = backend()
    port = free_port()
    config = """\
workers: ${TG_WORKERS:-1}
listen: ["127.0.0.1:${TG_PORT}"]
upstreams: {app: {servers: ["${TG_BACKEND_HOST:-127.0.0.1}:${TG_BACKEND_PORT}"]}}
sites:
  - hosts: [app.test]
    routes:
      - path: /
        upstream: app
        stream: ${TG_STREAM}
        headers: {request: {set: {X-Api-Key: "${TG_API_KEY}"}}, add: {X-Key: "k=${TG_API_KEY}"}}
"""
    env = {"TG_PORT": str(port), "TG_BACKEND_PORT": str(b.port), "TG_STREAM": "true",
           "TG_API_KEY": "s3cr3t-value-nobody-sees"}
    tollgate(config, env=env, check_ports=[port])
    status, h, data = get(port, host="app.test")
    assert status == 200
    seen = json.loads(data)["headers"]
    assert seen["x-api-key"] == ["s3cr3t-value-nobody-sees"]
    # -t and explain never print it.
    path = tmp_path / "env.yaml"
    write(path, config)
    rc, out, err = run(["-t", "-c", str(path)], tmp_path, env)
    assert rc == 0 and "configuration OK" in out, out + err
    assert "s3cr3t" not in out + err
    rc, out, err = run(["explain", "-c", str(path), "GET http://app.test/"], tmp_path, env)
    assert rc == 0, out + err
    assert "X-Key: k=${TG_API_KEY}" in out, out
    assert "s3cr3t" not in out + err
    # Unset, without a default: an error at the '$'.
    env.pop("TG_BACKEND_PORT")
    rc, out, err = run(["-t", "-c", str(path)], tmp_path, env)
    assert rc == 1
    col = config.splitlines()[2].index("${TG_BACKEND_PORT}") + 1
    assert err.startswith("%s:3:%d: ${TG_BACKEND_PORT}: the environment variable "
                          "TG_BACKEND_PORT is not set" % (path, col)), err


def test_runs_from_another_working_directory(tmp_path):
    """conf/tollgate.yaml names its certificate relative to itself, so it
    checks out from any directory: the shipped file, copied with a
    certificate of its own beside it."""
    conf = tmp_path / "etc" / "tollgate"
    os.makedirs(str(conf))
    shutil.copy(os.path.join(ROOT, "conf", "tollgate.yaml"), str(conf / "tollgate.yaml"))
    make_cert(conf / "certs")
    elsewhere = tmp_path / "var"
    os.makedirs(str(elsewhere))
    for cwd, path in ((elsewhere, str(conf / "tollgate.yaml")), ("/", str(conf / "tollgate.yaml")),
                      (tmp_path, "etc/tollgate/tollgate.yaml"), (conf, "tollgate.yaml")):
        rc, out, err = run(["-t", "-c", path], cwd)
        assert rc == 0 and "configuration OK" in out, (cwd, out + err)
    # The repository's own, as `make run` makes it (make certs).
    if os.path.exists(os.path.join(ROOT, "conf", "certs", "localhost.crt")):
        rc, out, err = run(["-t", "-c", os.path.join(ROOT, "conf", "tollgate.yaml")], "/tmp")
        assert rc == 0 and "configuration OK" in out, out + err
        rc, out, err = run(["-t", "-c", "conf/tollgate.yaml"], ROOT)
        assert rc == 0, out + err


def test_started_from_another_directory_serves_tls(tollgate, backend, tmp_path):
    """The whole gateway, not only -t: the fixture starts tollgate in the
    repository root with its configuration in a directory of its own, and
    the certificate is found relative to the configuration."""
    import http.client
    import ssl
    b = backend()
    https = free_port()
    make_cert(tmp_path / "certs")
    config = """\
workers: 1
listen: [{address: 127.0.0.1:%d, tls: true}]
tls: {certificates: [{cert: ../certs/localhost.crt, key: ../certs/localhost.key}]}
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites: [{hosts: [localhost], routes: [{path: /, upstream: app}]}]
""" % (https, b.port)
    tollgate(config)  # tmp_path/tg0/tollgate.yaml, run from the repository root
    ctx = ssl.create_default_context(cafile=str(tmp_path / "certs" / "localhost.crt"))
    c = http.client.HTTPSConnection("localhost", https, context=ctx, timeout=10)
    c.request("GET", "/")
    assert c.getresponse().status == 200
    c.close()


def test_warnings_of_t(tmp_path):
    """-t warns, and exits 0, about an admin listener open to the network
    without a token and a redirect to a port no TLS listener is on."""
    admin, http_port = free_port(), free_port()
    write(tmp_path / "w.yaml", """\
listen:
  - {address: 127.0.0.1:%d, redirect_to_https: 8443}
admin: {listen: "0.0.0.0:%d"}
upstreams: {app: {servers: [127.0.0.1:9]}}
sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]
""" % (http_port, admin))
    rc, out, err = run(["-t", "-c", "w.yaml"], tmp_path)
    assert rc == 0 and "w.yaml: configuration OK" in out, out + err
    assert ("w.yaml:2:5: warning: listener 127.0.0.1:%d: redirect_to_https: 8443, but no TLS "
            "listener here is on port 8443" % http_port) in err, err
    assert ("w.yaml:3:17: warning: admin.listen 0.0.0.0:%d is not a loopback address and "
            "admin.token is not set" % admin) in err, err
    # With a token and a TLS listener on the port: silent.
    crt, key = make_cert(tmp_path / "certs")
    write(tmp_path / "w.yaml", """\
listen:
  - {address: 127.0.0.1:%d, redirect_to_https: %d}
  - {address: 127.0.0.1:%d, tls: true}
tls: {certificates: [{cert: certs/localhost.crt, key: certs/localhost.key}]}
admin: {listen: "0.0.0.0:%d", token: "${TG_ADMIN_TOKEN}"}
upstreams: {app: {servers: [127.0.0.1:9]}}
sites: [{hosts: [a.test], routes: [{path: /, upstream: app}]}]
""" % (http_port, http_port + 1, http_port + 1, admin))
    rc, out, err = run(["-t", "-c", "w.yaml"], tmp_path, {"TG_ADMIN_TOKEN": "x" * 24})
    assert rc == 0 and "warning" not in err and "x" * 24 not in out + err, out + err


def test_quoted_boolean_is_a_boolean(tmp_path):
    """`stream: "true"` was refused with "must be true or false, not
    'true'"; YAML 1.2's booleans are accepted in any quoting, YAML 1.1's
    words are still refused."""
    config = """\
listen: [127.0.0.1:%d]
upstreams: {app: {servers: [127.0.0.1:9]}}
sites: [{hosts: [a.test], routes: [{path: /, upstream: app, stream: %s}]}]
"""
    for value in ('"true"', "'false'", "True", '"FALSE"'):
        write(tmp_path / "b.yaml", config % (free_port(), value))
        rc, out, err = run(["-t", "-c", "b.yaml"], tmp_path)
        assert rc == 0, (value, out + err)
    write(tmp_path / "b.yaml", config % (free_port(), '"yes"'))
    rc, out, err = run(["-t", "-c", "b.yaml"], tmp_path)
    assert rc == 1 and "b.yaml:3:69: stream must be true or false, not 'yes'" in err, err
