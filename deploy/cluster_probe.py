#!/usr/bin/env python3
"""Readiness probe for deploy/local-cluster.sh: raw Kafka protocol over a socket (ApiVersions
v0 and Metadata v2, no client library needed), standard library only.

  cluster_probe.py ready --brokers N [--timeout S] ID=HOST:PORT[=PIDFILE] ...
      Until every node answers ApiVersions and its Metadata lists N brokers, including
      itself, all with one cluster id. Exit 0 when so; exit 1 (the failing node's id on the
      last line of stderr as `node ID`) after the timeout, as soon as a node's process
      (PIDFILE) has exited, or when a node's address answers for another cluster.
  cluster_probe.py metadata HOST:PORT
      One Metadata v2 request: prints `cluster ID` and `broker ID HOST:PORT` lines.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time
from collections import Counter

API_VERSIONS, METADATA = 18, 3


def _frame(api_key: int, version: int, corr: int, body: bytes) -> bytes:
    client = b"shale-local-cluster"
    header = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def _call(s: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    s.sendall(_frame(api_key, version, corr, body))
    (size,) = struct.unpack(">i", _recv_exact(s, 4))
    resp = _recv_exact(s, size)
    (got,) = struct.unpack(">i", resp[:4])
    if got != corr:
        raise ValueError(f"correlation id {got}, expected {corr}")
    return resp[4:]


class _R:
    def __init__(self, b: bytes):
        self.b, self.p = b, 0

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        if self.p + n > len(self.b):
            raise ValueError("short response")
        v = struct.unpack(fmt, self.b[self.p:self.p + n])
        self.p += n
        return v[0] if len(v) == 1 else v

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        v = self.b[self.p:self.p + n].decode()
        self.p += n
        return v


def probe(host: str, port: int, timeout: float = 3.0) -> tuple[list[tuple[int, str, int]], str | None]:
    """ApiVersions v0 then Metadata v2 (no topics): the brokers it lists, and the cluster id
    (which tells this cluster's node from another process that took its port)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        r = _R(_call(s, API_VERSIONS, 0, 1, b""))
        err = r.take(">h")
        if err != 0:
            raise ValueError(f"ApiVersions error {err}")
        keys = {r.take(">hhh")[0] for _ in range(r.take(">i"))}
        if METADATA not in keys:
            raise ValueError("ApiVersions lists no Metadata")
        r = _R(_call(s, METADATA, 2, 2, struct.pack(">i", 0)))  # no topics: brokers only
        brokers = []
        for _ in range(r.take(">i")):
            node = r.take(">i")
            h = r.string()
            p = r.take(">i")
            r.string()  # rack
            brokers.append((node, h, p))
        return brokers, r.string()


def _alive(pidfile: str | None) -> bool:
    if not pidfile:
        return True
    try:
        pid = int(open(pidfile).read().strip())
    except (OSError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _split_addr(a: str) -> tuple[str, int]:
    h, _, p = a.rpartition(":")
    return h, int(p)


def cmd_ready(args) -> int:
    nodes = []
    for spec in args.nodes:
        parts = spec.split("=")
        if len(parts) not in (2, 3):
            sys.exit(f"bad node spec {spec!r}: ID=HOST:PORT[=PIDFILE]")
        nodes.append((int(parts[0]), *_split_addr(parts[1]), parts[2] if len(parts) == 3 else None))
    deadline = time.monotonic() + args.timeout
    pending = list(nodes)
    last: dict[int, str] = {}
    cluster: dict[int, str | None] = {}
    while pending:
        for n in list(pending):
            node_id, host, port, pidfile = n
            if not _alive(pidfile):
                print(f"node {node_id} ({host}:{port}) exited while starting", file=sys.stderr)
                print(f"node {node_id}", file=sys.stderr)
                return 1
            try:
                brokers, cluster_id = probe(host, port)
                ids = sorted(b[0] for b in brokers)
                if node_id in ids and (args.brokers is None or len(ids) >= args.brokers):
                    cluster[node_id] = cluster_id
                    pending.remove(n)
                    continue
                last[node_id] = f"Metadata lists brokers {ids}"
            except (OSError, ValueError) as e:
                last[node_id] = f"{type(e).__name__}: {e}"
        if not pending:
            break
        if time.monotonic() > deadline:
            n = pending[0]
            print(f"node {n[0]} ({n[1]}:{n[2]}) not ready after {args.timeout:g} s: "
                  f"{last.get(n[0], 'no answer')}", file=sys.stderr)
            print(f"node {n[0]}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    # Still running (a node that answered and then exited, e.g. when it could not bind its
    # port, is not ready), and one cluster: a port that another process took answers too.
    for node_id, host, port, pidfile in nodes:
        if not _alive(pidfile):
            print(f"node {node_id} ({host}:{port}) exited while starting", file=sys.stderr)
            print(f"node {node_id}", file=sys.stderr)
            return 1
    ids = Counter(cluster.values())
    if len(ids) > 1:
        common = ids.most_common(1)[0][0]
        odd = next(i for i, c in cluster.items() if c != common)
        host, port = next((h, p) for i, h, p, _ in nodes if i == odd)
        print(f"{host}:{port} answers for cluster {cluster[odd]}, the other nodes for {common}: "
              f"another process holds node {odd}'s port", file=sys.stderr)
        print(f"node {odd}", file=sys.stderr)
        return 1
    return 0


def cmd_metadata(args) -> int:
    brokers, cluster_id = probe(*_split_addr(args.addr))
    print(f"cluster {cluster_id}")
    for node, h, p in sorted(brokers):
        print(f"broker {node} {h}:{p}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ready")
    r.add_argument("--brokers", type=int)
    r.add_argument("--timeout", type=float, default=90.0)
    r.add_argument("nodes", nargs="+")
    m = sub.add_parser("metadata")
    m.add_argument("addr")
    args = ap.parse_args()
    return cmd_ready(args) if args.cmd == "ready" else cmd_metadata(args)


if __name__ == "__main__":
    sys.exit(main())
