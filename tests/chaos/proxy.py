#!/usr/bin/env python3
"""The fault-injecting proxies of the chaos harness, in a process of their own (so the
client workload's GIL never throttles them): one asyncio loop serving every proxy,
controlled over stdin/stdout with one JSON object a line (a request, then its reply).

Two kinds of proxy:

- `tcp`: a raw TCP forwarder (the Raft / heartbeat traffic between two nodes). Modes:
    open       forward.
    refuse     new connections are accepted and reset at once (RST, SO_LINGER 0), and every
               existing connection is reset: the peer sees "connection refused/reset".
    blackhole  nothing moves: existing connections stop being read or written (the kernel
               buffers fill, as when packets are dropped), new connections are accepted but
               held silent. On heal both carry on where they stopped, as TCP does once a
               real partition heals (the data was "retransmitted").
- `http`: the same, HTTP/1.1-aware in the client->server direction (an S3 endpoint in front
  of moto). Besides the modes above, each request may (per-request random decisions):
    latency [lo, hi] ms  wait that long before forwarding it;
    fail p       answer `503 Service Unavailable` with an S3 `SlowDown` XML error and
                 `Connection: close`, without forwarding it (body read first);
    reset p      reset the connection instead of forwarding it;
    ambiguous p  forward it, then reset the connection before the response reaches the
                 client: the request took effect, the client cannot know.

Commands (JSON lines on stdin):
    {"cmd": "add", "name": N, "kind": "tcp"|"http", "listen": PORT, "target": PORT}
    {"cmd": "set", "name": N, "mode": "open"|"refuse"|"blackhole",
                   "latency": [lo, hi] | null, "fail": p, "reset": p, "ambiguous": p}
                   (fields omitted keep their value; "clear": true resets all faults)
    {"cmd": "stats"}  -> {"ok": true, "stats": {name: {...counters}}}
    {"cmd": "quit"}
Every reply is {"ok": true, ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import sys
import time

HOST = "127.0.0.1"
CHUNK = 65536

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
                 b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate."
                 b"</Message><RequestId>chaos</RequestId><HostId>chaos</HostId></Error>")
SLOWDOWN = (b"HTTP/1.1 503 Service Unavailable\r\n"
            b"Content-Type: application/xml\r\n"
            b"Content-Length: " + str(len(SLOWDOWN_BODY)).encode() + b"\r\n"
            b"x-amz-request-id: chaos\r\n"
            b"Connection: close\r\n\r\n" + SLOWDOWN_BODY)

METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def _abort(writer: asyncio.StreamWriter | None):
    """Close with an RST (SO_LINGER 0), not a FIN."""
    if writer is None:
        return
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        writer.transport.abort()
    except Exception:
        pass


class Conn:
    def __init__(self, proxy: "Proxy", cr, cw):
        self.proxy = proxy
        self.cr, self.cw = cr, cw
        self.ur = self.uw = None
        self.tasks: list[asyncio.Task] = []
        self.closed = False
        self.drop_response = False  # ambiguous: reset as soon as the response starts

    def abort(self):
        if self.closed:
            return
        self.closed = True
        _abort(self.cw)
        _abort(self.uw)
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self.proxy.conns.discard(self)


class Proxy:
    def __init__(self, name: str, kind: str, listen: int, target: int):
        self.name, self.kind, self.listen, self.target = name, kind, listen, target
        self.mode = "open"
        self.latency = None
        self.fail = self.reset = self.ambiguous = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.conns: set[Conn] = set()
        self.server = None
        self.stats = {"conns": 0, "refused": 0, "requests": 0, "delayed": 0, "failed_503": 0,
                      "reset": 0, "ambiguous": 0, "bytes": 0}

    async def start(self):
        self.server = await asyncio.start_server(self._accept, HOST, self.listen,
                                                 reuse_address=True, backlog=256)

    def configure(self, d: dict):
        if d.get("clear"):
            self.mode, self.latency = "open", None
            self.fail = self.reset = self.ambiguous = 0.0
        if "latency" in d:
            self.latency = d["latency"]
        for k in ("fail", "reset", "ambiguous"):
            if k in d:
                setattr(self, k, float(d[k]))
        mode = d.get("mode", self.mode if not d.get("clear") else "open")
        if mode not in ("open", "refuse", "blackhole"):
            raise ValueError(f"bad mode {mode}")
        self.mode = mode
        if mode == "refuse":
            for c in list(self.conns):
                self.stats["refused"] += 1
                c.abort()
        if mode == "blackhole":
            self.flowing.clear()
        else:
            self.flowing.set()

    async def _accept(self, cr, cw):
        self.stats["conns"] += 1
        if self.mode == "refuse":
            self.stats["refused"] += 1
            _abort(cw)
            return
        conn = Conn(self, cr, cw)
        self.conns.add(conn)
        try:
            await self.flowing.wait()  # blackhole: hold the new connection silent
            if self.mode == "refuse" or conn.closed:
                conn.abort()
                return
            try:
                conn.ur, conn.uw = await asyncio.open_connection(HOST, self.target)
            except OSError:
                conn.abort()
                return
            if conn.closed:
                _abort(conn.uw)
                return
            up = (self._pump_http_requests(conn) if self.kind == "http"
                  else self._pump(conn, conn.cr, conn.uw, False))
            t1 = asyncio.ensure_future(up)
            t2 = asyncio.ensure_future(self._pump(conn, conn.ur, conn.cw, True))
            conn.tasks = [t1, t2]
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # never let one connection take the loop down
            print(f"{self.name}: connection error {e!r}", file=sys.stderr, flush=True)
        finally:
            # Let the other direction finish what it has, briefly, then close.
            if not conn.closed:
                for t in conn.tasks:
                    if not t.done():
                        try:
                            await asyncio.wait_for(asyncio.shield(t), 1.0)
                        except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                            pass
                conn.closed = True
                for w in (conn.cw, conn.uw):
                    if w is not None:
                        try:
                            w.close()
                        except Exception:
                            pass
                for t in conn.tasks:
                    t.cancel()
            self.conns.discard(conn)

    async def _write(self, conn: Conn, w: asyncio.StreamWriter, data: bytes):
        await self.flowing.wait()
        if conn.closed:
            raise ConnectionResetError
        w.write(data)
        await w.drain()
        self.stats["bytes"] += len(data)

    async def _pump(self, conn: Conn, r: asyncio.StreamReader, w: asyncio.StreamWriter, response: bool):
        try:
            while True:
                await self.flowing.wait()
                data = await r.read(CHUNK)
                if not data:
                    try:
                        w.write_eof()
                    except (OSError, RuntimeError):
                        pass
                    return
                if response and conn.drop_response:
                    self.stats["ambiguous"] += 1
                    conn.abort()
                    return
                await self._write(conn, w, data)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            conn.abort()

    async def _pump_http_requests(self, conn: Conn):
        """Client -> server, one HTTP/1.1 request at a time, a decision for each."""
        r, w = conn.cr, conn.uw
        try:
            while True:
                await self.flowing.wait()
                try:
                    head = await r.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as e:
                    if e.partial:
                        await self._write(conn, w, e.partial)
                    try:
                        w.write_eof()
                    except (OSError, RuntimeError):
                        pass
                    return
                except asyncio.LimitOverrunError:
                    # Not something we understand: forward the rest raw.
                    return await self._pump(conn, r, w, False)
                if not head.startswith(METHODS):
                    await self._write(conn, w, head)
                    return await self._pump(conn, r, w, False)
                self.stats["requests"] += 1
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    k, sep, v = line.partition(b":")
                    if sep:
                        headers[k.strip().lower()] = v.strip()
                chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
                length = int(headers.get(b"content-length", b"0") or 0)
                expect = b"100-continue" in headers.get(b"expect", b"").lower()
                roll = random.random()
                if self.fail and roll < self.fail:
                    if not expect and not chunked and length:
                        await r.readexactly(length)
                    self.stats["failed_503"] += 1
                    conn.cw.write(SLOWDOWN)
                    try:
                        await asyncio.wait_for(conn.cw.drain(), 2)
                    except Exception:
                        pass
                    conn.abort()
                    return
                roll -= self.fail
                if self.reset and roll < self.reset:
                    self.stats["reset"] += 1
                    conn.abort()
                    return
                roll -= self.reset
                if self.latency:
                    lo, hi = self.latency
                    self.stats["delayed"] += 1
                    await asyncio.sleep(random.uniform(lo, hi) / 1000.0)
                if self.ambiguous and roll < self.ambiguous:
                    conn.drop_response = True
                await self._write(conn, w, head)
                if chunked:
                    # Rare for S3 clients; forward the rest of the connection raw.
                    return await self._pump(conn, r, w, False)
                remaining = length
                while remaining > 0:
                    data = await r.read(min(CHUNK, remaining))
                    if not data:
                        raise ConnectionResetError
                    remaining -= len(data)
                    await self._write(conn, w, data)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            conn.abort()


async def main():
    proxies: dict[str, Proxy] = {}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(d):
        sys.stdout.write(json.dumps(d) + "\n")
        sys.stdout.flush()

    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            d = json.loads(line)
            cmd = d.get("cmd")
            if cmd == "add":
                p = Proxy(d["name"], d.get("kind", "tcp"), int(d["listen"]), int(d["target"]))
                await p.start()
                proxies[p.name] = p
                reply({"ok": True})
            elif cmd == "set":
                names = d["name"] if isinstance(d["name"], list) else [d["name"]]
                for n in names:
                    proxies[n].configure(d)
                reply({"ok": True, "t": time.time()})
            elif cmd == "stats":
                reply({"ok": True, "stats": {n: dict(p.stats, mode=p.mode, open_conns=len(p.conns))
                                             for n, p in proxies.items()}})
            elif cmd == "quit":
                reply({"ok": True})
                break
            else:
                reply({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as e:
            reply({"ok": False, "error": repr(e)})
    for p in proxies.values():
        p.server.close()
        for c in list(p.conns):
            c.abort()


if __name__ == "__main__":
    asyncio.run(main())
