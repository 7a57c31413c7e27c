"""The system under test of the chaos harness: a moto S3 server, a process of fault
proxies (proxy.py), and N `shale serve` nodes (tests/e2e/harness.py) wired through them.

Wiring, for nodes i, j:
- node i's `controller.quorum.voters` lists its own entry at its real CONTROLLER address and
  every other voter j at a proxy P(i->j) that forwards to j's CONTROLLER port (each node
  reaches its peers through its own voters entries), so cutting node i off its peers is
  P(i->*) and P(*->i) failing;
- node i's `s3.endpoint` is its own HTTP-aware proxy S(i) in front of moto: object-store
  outages, latency, 503 SlowDown, resets and ambiguous writes, per node.
Clients reach the Kafka listeners directly (a partition here cuts a node off its peers and
the store, not off its clients: a deposed owner stays reachable and must stop serving).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))

import harness  # noqa: E402


class Proxies:
    """The proxy process (proxy.py), driven over its stdin/stdout."""

    def __init__(self, workdir: Path):
        self.log = Path(workdir) / "proxy.log"
        err = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen([sys.executable, str(HERE / "proxy.py")], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                         start_new_session=True)
        finally:
            err.close()
        harness._LIVE.add(self.proc)
        self.lock = threading.Lock()

    def call(self, **d) -> dict:
        with self.lock:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy process exited ({self.proc.returncode}):\n{harness.tail(self.log)}")
            self.proc.stdin.write(json.dumps(d) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"proxy process gone:\n{harness.tail(self.log)}")
        r = json.loads(line)
        if not r.get("ok"):
            raise RuntimeError(f"proxy command {d} failed: {r.get('error')}")
        return r

    def add(self, name: str, kind: str, listen: int, target: int):
        self.call(cmd="add", name=name, kind=kind, listen=listen, target=target)

    def set(self, names, **kw):
        self.call(cmd="set", name=list(names) if not isinstance(names, str) else names, **kw)

    def stats(self) -> dict:
        return self.call(cmd="stats")["stats"]

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.call(cmd="quit")
                self.proc.wait(5)
            except Exception:
                pass
        harness._stop(self.proc)


def admin_http_supported(workdir: Path) -> bool:
    """Whether this binary knows `admin.http.listener` (an unknown setting makes `shale
    serve` exit at start): one throwaway single-node start with local objects."""
    d = Path(workdir) / "probe-admin-http"
    probe = harness.Shale(d, moto=None, name="probe",
                          settings={"admin.http.listener": f"127.0.0.1:{harness.free_port()}"})
    probe.start(wait=False)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and probe.running():
            time.sleep(0.1)
    finally:
        probe.stop()
    text = probe.log.read_text(errors="replace") if probe.log.exists() else ""
    supported = "unknown setting admin.http.listener" not in text
    shutil.rmtree(d, ignore_errors=True)
    return supported


_COMMITTED_VOTE = re.compile(rb"<T(\d+)-N(\d+):Q>")


class Cluster:
    def __init__(self, workdir: Path, moto: harness.MotoServer, nodes: int = 3, log=print):
        self.workdir = Path(workdir)
        self.moto = moto
        self.n = nodes
        self.log = log
        self.bucket = moto.create_bucket()
        self.proxies = Proxies(self.workdir)
        self.admin_http = admin_http_supported(self.workdir)
        self.ctrl = [harness.free_port() for _ in range(nodes)]
        self.admin_ports = [harness.free_port() for _ in range(nodes)]
        # P(i->j) and S(i)
        self.peer_proxy = {}
        for i in range(nodes):
            for j in range(nodes):
                if i != j:
                    port = harness.free_port()
                    self.peer_proxy[(i, j)] = port
                    self.proxies.add(self.pname(i, j), "tcp", port, self.ctrl[j])
        self.store_proxy = {}
        for i in range(nodes):
            port = harness.free_port()
            self.store_proxy[i] = port
            self.proxies.add(self.sname(i), "http", port, moto.port)
        self.nodes: list[harness.Shale] = []
        for i in range(nodes):
            voters = ",".join(
                f"{j + 1}@127.0.0.1:{self.ctrl[j] if j == i else self.peer_proxy[(i, j)]}"
                for j in range(nodes))
            settings = {"node.id": i + 1, "controller.quorum.voters": voters}
            if self.admin_http:
                settings["admin.http.listener"] = f"127.0.0.1:{self.admin_ports[i]}"
            node = harness.Shale(self.workdir / f"n{i + 1}", moto=moto, bucket=self.bucket,
                                 name=f"shale{i + 1}", settings=settings)
            node.settings["listeners"] = (f"PLAINTEXT://127.0.0.1:{node.port},"
                                          f"CONTROLLER://127.0.0.1:{self.ctrl[i]}")
            node.settings["s3.endpoint"] = f"http://127.0.0.1:{self.store_proxy[i]}"
            self.nodes.append(node)
        # Where each node's log has been scanned up to, and the highest committed vote seen.
        self._log_pos = [0] * nodes
        self._best_vote = (0, None)  # (term, leader id)
        # Processes we killed / stopped on purpose: any other exit is a crash.
        self.expected_down: set[int] = set()
        self.paused: set[int] = set()

    @staticmethod
    def pname(i, j):
        return f"P{i + 1}-{j + 1}"

    @staticmethod
    def sname(i):
        return f"S{i + 1}"

    def peer_links(self, i) -> list[str]:
        return [self.pname(a, b) for (a, b) in self.peer_proxy if a == i or b == i]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def start(self, timeout: float = 90):
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready(timeout)

    def stop(self):
        for i, n in enumerate(self.nodes):
            if i in self.paused and n.running():
                try:
                    os.kill(n.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
            n.stop()
        self.proxies.stop()

    # -- faults on processes ---------------------------------------------------------

    def kill9(self, i):
        self.expected_down.add(i)
        if i in self.paused:
            self.paused.discard(i)
        self.nodes[i].kill9()

    def restart(self, i, timeout: float = 60, attempts: int = 3) -> tuple[bool, str]:
        """Starts node i again (same config, data dir, port); (ok, what happened)."""
        what = []
        for a in range(attempts):
            n = self.nodes[i]
            if n.running():
                break
            try:
                n.start(wait=True, timeout=timeout)
                self.expected_down.discard(i)
                return True, "; ".join(what) or "ok"
            except Exception as e:  # exited while starting, or not ready in time
                what.append(f"attempt {a + 1}: {str(e).splitlines()[0][:300]}")
                if n.running():
                    n.stop()
                time.sleep(1)
        self.expected_down.discard(i)
        return self.nodes[i].running(), "; ".join(what)

    def pause(self, i):
        os.kill(self.nodes[i].proc.pid, signal.SIGSTOP)
        self.paused.add(i)

    def resume(self, i):
        if i in self.paused:
            self.paused.discard(i)
            if self.nodes[i].running():
                os.kill(self.nodes[i].proc.pid, signal.SIGCONT)

    def crashed(self) -> list[int]:
        """Nodes whose process exited without us killing it."""
        return [i for i, n in enumerate(self.nodes)
                if i not in self.expected_down and n.proc is not None and n.proc.poll() is not None]

    # -- the metadata leader ---------------------------------------------------------

    def leader(self) -> tuple[int | None, str]:
        """Index of the node leading the metadata quorum, and how that was found."""
        if self.admin_http:
            votes = {}
            for i, n in enumerate(self.nodes):
                if not n.running() or i in self.paused:
                    continue
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_ports[i]}/metrics",
                                                timeout=1) as r:
                        text = r.read().decode(errors="replace")
                except OSError:
                    continue
                for line in text.splitlines():
                    if line.startswith("shale_metadata_is_leader") and line.split()[-1] in ("1", "1.0"):
                        return i, "admin-http is_leader"
                    if line.startswith("shale_metadata_leader_id"):
                        try:
                            lid = int(float(line.split()[-1]))
                        except ValueError:
                            continue
                        if lid > 0:
                            votes[lid] = votes.get(lid, 0) + 1
            if votes:
                lid = max(votes, key=votes.get)
                return lid - 1, "admin-http leader_id"
        # Fallback: the highest-term committed vote (`<T{term}-N{id}:Q>`) in the node logs.
        for i, n in enumerate(self.nodes):
            try:
                with open(n.log, "rb") as f:
                    f.seek(self._log_pos[i])
                    data = f.read()
                    # Stop at the last full line.
                    cut = data.rfind(b"\n") + 1
                    self._log_pos[i] += cut
                    data = data[:cut]
            except FileNotFoundError:
                continue
            for m in _COMMITTED_VOTE.finditer(data):
                term, lid = int(m.group(1)), int(m.group(2))
                if term > self._best_vote[0]:
                    self._best_vote = (term, lid)
        if self._best_vote[1] is not None:
            return self._best_vote[1] - 1, f"log committed vote T{self._best_vote[0]}"
        return 0, "lowest id (no leader known)"
