"""Listening ports are ours alone (issue 23, item 1): every listener uses
SO_REUSEPORT, which used to let a second tollgate (or any socket with
SO_REUSEPORT) join the same ports silently and take half the connections.
Now start-up refuses an address another process listens on, naming it, and
so does a reload that adds one; reloads that keep their listeners still hand
them over without dropping a connection."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BIN, ROOT, SLOW, free_port, get, wait_port


def config(port, admin_port, backend_port, workers=2, extra_listen=""):
    return """
workers: %d
listen:
  - address: 127.0.0.1:%d
%sadmin: { listen: 127.0.0.1:%d }
upstreams: {app: {servers: [127.0.0.1:%d]}}
sites:
  - hosts: [app.test]
    routes:
      - {path: /, upstream: app}
""" % (workers, port, extra_listen, admin_port, backend_port)


def start_second(tmp_path, text, timeout=10.0):
    """Runs a tollgate that is expected to refuse to start: returns (exit
    code, stderr), or (None, stderr) if it was still running (then stopped)."""
    path = os.path.join(str(tmp_path), "second.yaml")
    with open(path, "w") as f:
        f.write(text)
    p = subprocess.Popen([BIN, "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         cwd=ROOT)
    try:
        _, err = p.communicate(timeout=timeout * SLOW)
        return p.returncode, err.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGQUIT)
        _, err = p.communicate(timeout=30 * SLOW)
        return None, err.decode("utf-8", "replace")


def held_socket(port, reuseport=True):
    """A listening socket of this (other) process on 127.0.0.1:port."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def status_config(admin_port):
    """The config path the admin /status of whoever answers reports."""
    status, _, body = get(admin_port, "/status", host="admin")
    assert status == 200
    return json.loads(body)["config"]


def test_second_instance_refuses_to_start_and_first_keeps_all_traffic(tollgate, backend,
                                                                      tmp_path):
    b1, b2 = backend(), backend()
    port, aport = free_port(), free_port()
    first = tollgate(config(port, aport, b1.port))
    assert wait_port(aport)
    # The same addresses, another backend: any request it took would show.
    rc, err = start_second(tmp_path, config(port, aport, b2.port))
    assert rc is not None, "a second tollgate started on ports the first holds:\n" + err
    assert rc != 0, err
    assert "address already in use" in err, err
    assert "127.0.0.1:%d" % port in err and "127.0.0.1:%d" % aport in err, err
    # Every connection still lands on the first (new connections each: the
    # kernel spreads those over a shared port).
    for _ in range(30):
        status, headers, _ = get(port, "/")
        assert (status, headers.get("x-backend")) == (200, str(b1.port))
    for _ in range(10):
        assert status_config(aport) == first.config_path
    assert b2.connections == 0


def test_reuseport_socket_of_another_process_blocks_start(tollgate, backend, tmp_path):
    b = backend()
    port, aport = free_port(), free_port()
    holder = held_socket(port)
    try:
        rc, err = start_second(tmp_path, config(port, aport, b.port))
        assert rc is not None, "tollgate shared a port a SO_REUSEPORT socket holds:\n" + err
        assert rc == 1, err
        assert "cannot listen on 127.0.0.1:%d: address already in use" % port in err, err
        assert "cannot start" in err, err
    finally:
        holder.close()
    # The admin address is checked too, and a plain listener is refused the
    # same way.
    holder = held_socket(aport, reuseport=False)
    try:
        rc, err = start_second(tmp_path, config(port, aport, b.port))
        assert rc == 1, err
        assert ("cannot listen on 127.0.0.1:%d (admin.listen): address already in use" % aport
                in err), err
    finally:
        holder.close()
    # `-t` binds nothing: a held port does not make a check fail.
    holder = held_socket(port)
    try:
        path = os.path.join(str(tmp_path), "check.yaml")
        with open(path, "w") as f:
            f.write(config(port, aport, b.port))
        p = subprocess.run([BIN, "-t", "-c", path], capture_output=True, text=True, cwd=ROOT,
                           timeout=30)
        assert p.returncode == 0 and "configuration OK" in p.stdout, p.stdout + p.stderr
    finally:
        holder.close()


def test_reload_adding_a_held_port_is_refused_and_old_listeners_serve(tollgate, backend):
    b = backend()
    port, aport, p2 = free_port(), free_port(), free_port()
    cfg = config(port, aport, b.port)
    tg = tollgate(cfg)
    holder = held_socket(p2)
    try:
        tg.reload(config(port, aport, b.port, extra_listen="  - address: 127.0.0.1:%d\n" % p2),
                  expect_ok=False)
        log = tg.stderr()
        assert "cannot listen on 127.0.0.1:%d: address already in use" % p2 in log, log
        # The old configuration serves, and tollgate took no share of p2:
        # every connection there reaches the holder.
        for _ in range(10):
            assert get(port, "/")[0] == 200
        holder.settimeout(2 * SLOW)
        for _ in range(10):
            c = socket.create_connection(("127.0.0.1", p2), timeout=2 * SLOW)
            a, _ = holder.accept()
            a.close()
            c.close()
    finally:
        holder.close()
    # Once the port is free, the same reload goes through.
    tg.reload(config(port, aport, b.port, extra_listen="  - address: 127.0.0.1:%d\n" % p2))
    assert get(p2, "/")[0] == 200
    assert get(port, "/")[0] == 200


def test_reload_keeps_its_own_listeners_without_drops(tollgate, backend):
    """The probe never trips over our own sockets: a reload that keeps the
    listeners (and one that adds a free port) hands them over with every
    request answered; two listeners of one config on overlapping addresses
    (0.0.0.0 and 127.0.0.1, same port) start and reload too."""
    b = backend()
    port, aport, p2 = free_port(), free_port(), free_port()
    cfg = config(port, aport, b.port)
    tg = tollgate(cfg)
    bad, ok = [], [0]
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                status = get(port, "/")[0]
                if status == 200:
                    ok[0] += 1
                else:
                    bad.append(status)
            except OSError as e:
                bad.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(4):
            tg.reload(cfg if i % 2 else
                      config(port, aport, b.port, extra_listen="  - address: 127.0.0.1:%d\n" % p2))
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert bad == [] and ok[0] > 20, (bad[:5], ok[0])
    tg.stop()
    overlap = config(p2, aport, b.port, extra_listen="  - address: 0.0.0.0:%d\n" % p2)
    tg2 = tollgate(overlap, check_ports=[p2])
    assert get(p2, "/")[0] == 200
    tg2.reload(overlap + "\n")
    assert get(p2, "/")[0] == 200


def test_restart_right_after_stop_binds_again(tollgate, backend):
    """Connections of the previous run left in TIME_WAIT on the port do not
    count as another process listening."""
    b = backend()
    port, aport = free_port(), free_port()
    cfg = config(port, aport, b.port, workers=1)
    tg = tollgate(cfg)
    for _ in range(5):
        assert get(port, "/", headers={"Connection": "close"})[0] == 200
    assert tg.stop() == 0
    tg2 = tollgate(cfg)
    assert get(port, "/")[0] == 200
    assert tg2.proc.poll() is None
