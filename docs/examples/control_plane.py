#!/usr/bin/python3
"""A reference control plane for tollgate's tenant activation
(docs/multi-tenant.md, "Tenants placed on their first request").

It reads the activation stream tollgate appends to, "places" each tenant
it is asked for (here: looks its servers up in --place, or uses
--default; a real control plane would pick a node and load the tenant
there), then writes the placement and announces it, which is the whole
contract:

    XREADGROUP GROUP placer NAME BLOCK ... STREAMS PREFIXactivate >
        -> entries {tenant, host, gateway}
    HSET PREFIX<tenant> servers "ip:port,..." status active
    PUBLISH PREFIXchanged <tenant>
    XACK PREFIXactivate placer <entry id>

Usage:
    control_plane.py --redis 127.0.0.1:6379 [--prefix tollgate:tenant:]
                     [--place ID=IP:PORT[,IP:PORT]]... [--default IP:PORT]
                     [--delay SECONDS] [--once]

Python's standard library only (a small RESP client below), so it runs
anywhere tollgate's tests run. The test suite
(tests/integration/test_tenant_activation.py) uses it as the control plane.
"""

import argparse
import socket
import sys
import time


class Resp:
    """A minimal blocking Redis client: one command, one reply."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self._reply()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", required=True, help="host:port of the directory's Redis")
    ap.add_argument("--prefix", default="tollgate:tenant:", help="tenants.redis.key_prefix")
    ap.add_argument("--place", action="append", default=[],
                    help="ID=IP:PORT[,IP:PORT]: where a tenant goes")
    ap.add_argument("--default", help="IP:PORT[,...] for tenants --place does not name")
    ap.add_argument("--delay", type=float, default=0.0,
                    help="seconds a placement takes (loading the tenant)")
    ap.add_argument("--once", action="store_true", help="exit after the first placement")
    args = ap.parse_args()
    places = dict(p.split("=", 1) for p in args.place)
    stream, group = args.prefix + "activate", "placer"
    r = Resp(args.redis)
    try:
        r.cmd("XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
    except RuntimeError as e:
        if "BUSYGROUP" not in str(e):
            raise
    print("control plane: reading %s" % stream, flush=True)
    while True:
        reply = r.cmd("XREADGROUP", "GROUP", group, "placer-1", "COUNT", "16", "BLOCK", "1000",
                      "STREAMS", stream, ">")
        for _, entries in reply or []:
            for entry_id, fields in entries:
                f = dict(zip(fields[::2], fields[1::2]))
                tenant = f.get("tenant", "")
                servers = places.get(tenant, args.default)
                if not servers:
                    print("control plane: no place for %r (from %s, host %s): left waiting"
                          % (tenant, f.get("gateway"), f.get("host")), flush=True)
                    r.cmd("XACK", stream, group, entry_id)
                    continue
                time.sleep(args.delay)
                r.cmd("HSET", args.prefix + tenant, "servers", servers, "status", "active")
                r.cmd("PUBLISH", args.prefix + "changed", tenant)
                r.cmd("XACK", stream, group, entry_id)
                print("control plane: placed %s on %s (asked by %s for %s)"
                      % (tenant, servers, f.get("gateway"), f.get("host")), flush=True)
                if args.once:
                    return 0


if __name__ == "__main__":
    sys.exit(main())
